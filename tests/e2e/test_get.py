#!/usr/bin/env python3
"""`zcio get` against real servers: `python3 -m http.server` and nginx (started here on
loopback from tests/e2e/nginx/nginx.conf.in), byte-identical downloads, redirects and
chunked bodies; and against scripted peers for the failures: 404, refused connections,
short bodies, stalls and interrupts leave no FILE and no FILE.part.

Run: python3 tests/e2e/test_get.py --zcio build/tools/zcio/zcio
"""

import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import IO_TIMEOUT, SHORT, E2ETestCase, Proc, file_sha, sha  # noqa: E402

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
NGINX_CONF = os.path.join(HERE, "nginx", "nginx.conf.in")


def write_files(root, sizes):
    """Random files named by size; returns {name: bytes}."""
    os.makedirs(root, exist_ok=True)
    out = {}
    for name, n in sizes.items():
        data = os.urandom(n)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        out[name] = data
    return out


def start_nginx(prefix, root):
    """nginx in the foreground on an ephemeral loopback port; returns (Proc, port)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx is None:
        raise unittest.SkipTest("nginx is not installed (Debian package nginx)")
    os.makedirs(prefix, exist_ok=True)
    with open(NGINX_CONF) as f:
        conf = f.read()
    last = None
    for _ in range(5):  # the port was free a moment ago; retry if someone took it
        port = e2e.free_port()
        text = (conf.replace("@USER@", "user root;" if os.geteuid() == 0 else "")
                .replace("@WORKERS@", "1").replace("@PREFIX@", prefix)
                .replace("@PORT@", str(port)).replace("@ROOT@", root))
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(text)
        p = Proc([nginx, "-p", prefix, "-c", path, "-e", os.path.join(prefix, "error.log")])
        try:
            e2e.wait_tcp_listening(port, proc=p)
            return p, port
        except AssertionError as e:
            last = e
            p.kill()
    raise AssertionError("nginx did not start: %s" % last)


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def scripted(*parts, hold=0.0):
    """A handler that reads the request, sends each part (bytes), then holds the
    connection open for `hold` seconds (a stall) and closes."""
    def handler(conn, rec):
        rec.request = read_request(conn)
        for p in parts:
            conn.sendall(p)
        if hold:
            rec.hold = threading.Event()
            rec.hold.wait(hold)
    return handler


class GetCase(E2ETestCase):
    def get(self, url, out, *args, timeout=IO_TIMEOUT):
        return e2e.run_zcio(["get", url, "-o", out] + list(args), timeout=timeout)

    def assertNoOutput(self, out):
        self.assertFalse(os.path.exists(out), "%s was left behind" % out)
        self.assertFalse(os.path.exists(out + ".part"), "%s.part was left behind" % out)

    def assertDownloaded(self, url, out, data, *args, path=None):
        rc, _, err = self.get(url, out, "--verbose", *args)
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.path.getsize(out), len(data))
        self.assertEqual(file_sha(out), sha(data), "%s came down changed" % url)
        self.assertFalse(os.path.exists(out + ".part"))
        m = re.search(r"zcio get: 2\d\d .* bytes .* to .* via (.+) in ", err)
        self.assertIsNotNone(m, err)
        if path is not None:
            self.assertEqual(m.group(1), path, err)
        return err


class FromPythonHttpServer(GetCase):
    def setUp(self):
        super().setUp()
        self.www = self.path("www")
        self.files = write_files(self.www, {"empty.bin": 0, "one.bin": 1, "blob.bin": 8 * MiB + 7})
        self.port = e2e.free_port()
        self.http = self.spawn([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                "--directory", self.www], cwd=self.www)
        e2e.wait_tcp_listening(self.port, proc=self.http)

    def url(self, name):
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def test_sizes_byte_identical(self):
        self.assertDownloaded(self.url("empty.bin"), self.path("e"), b"")
        self.assertDownloaded(self.url("one.bin"), self.path("o"), self.files["one.bin"])
        self.assertDownloaded(self.url("blob.bin"), self.path("b"), self.files["blob.bin"], path="splice")

    def test_404_leaves_no_file(self):
        out = self.path("missing")
        rc, _, err = self.get(self.url("nope.bin"), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "404")
        self.assertNoOutput(out)


class FromNginx(GetCase):
    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="zcio-get-nginx-")
        cls.www = os.path.join(cls.base, "www")
        cls.files = write_files(cls.www, {"empty.bin": 0, "one.bin": 1, "blob.bin": 64 * MiB})
        cls.nginx = None
        try:
            cls.nginx, cls.port = start_nginx(os.path.join(cls.base, "nginx"), cls.www)
        except BaseException:
            shutil.rmtree(cls.base, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.nginx is not None:
            cls.nginx.kill()
        shutil.rmtree(cls.base, ignore_errors=True)

    def url(self, name):
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def test_sizes_byte_identical(self):
        self.assertDownloaded(self.url("empty.bin"), self.path("e"), b"")
        self.assertDownloaded(self.url("one.bin"), self.path("o"), self.files["one.bin"])
        self.assertDownloaded(self.url("blob.bin"), self.path("b"), self.files["blob.bin"], path="splice")

    def test_chunked(self):
        self.assertDownloaded(self.url("chunked/blob.bin"), self.path("c"), self.files["blob.bin"],
                              path="buffer (chunked)")
        self.assertDownloaded(self.url("chunked/one.bin"), self.path("c1"), self.files["one.bin"])

    def test_redirects(self):
        err = self.assertDownloaded(self.url("redirect2"), self.path("r"), self.files["blob.bin"])
        self.assertEqual(len(re.findall(r"zcio get: 30[12] ", err)), 2, err)
        out = self.path("loop")
        rc, _, err = self.get(self.url("loop"), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "too many redirects")
        self.assertNoOutput(out)
        # --max-redirects 1 is not enough for a chain of two.
        rc, _, err = self.get(self.url("redirect2"), out, "--max-redirects", "1")
        self.assertEqual(rc, 1)
        self.assertNoOutput(out)

    def test_404_leaves_no_file(self):
        out = self.path("missing")
        rc, _, err = self.get(self.url("nope.bin"), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "HTTP 404 Not Found")
        self.assertNoOutput(out)

    def test_stdout_and_default_name(self):
        p = subprocess.run([e2e.ZCIO, "get", self.url("blob.bin"), "-o", "-"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=IO_TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(sha(p.stdout), sha(self.files["blob.bin"]))
        rc, _, err = e2e.run_zcio(["get", self.url("one.bin")], cwd=self.tmp)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(self.path("one.bin")), sha(self.files["one.bin"]))

    def test_progress_bar_on_a_terminal(self):
        master, slave = pty.openpty()
        out = self.path("tty")
        p = subprocess.Popen([e2e.ZCIO, "get", self.url("blob.bin"), "-o", out], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=slave, start_new_session=True)
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + IO_TIMEOUT
        try:
            while time.monotonic() < deadline:
                r, _, _ = select.select([master], [], [], 0.5)
                if r:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:
                        break  # EIO: the child closed its end
                    if not chunk:
                        break
                    seen += chunk
                elif p.poll() is not None:
                    break
            self.assertEqual(p.wait(SHORT), 0, seen)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(SHORT)
            os.close(master)
        text = seen.decode("utf-8", "replace")
        self.assertIn("100.0%", text)
        self.assertIn("ETA", text)
        self.assertIn("64.00 MiB", text)
        self.assertEqual(file_sha(out), sha(self.files["blob.bin"]))

    def test_quiet_when_not_a_terminal(self):
        out = self.path("quiet")
        rc, stdout, err = self.get(self.url("one.bin"), out)
        self.assertEqual((rc, stdout, err), (0, b"", ""))


class Failures(GetCase):
    def url(self, up, path="/f.bin"):
        return "http://127.0.0.1:%d%s" % (up.port, path)

    def test_refused_connection_leaves_no_file(self):
        out = self.path("refused")
        port = e2e.free_port()
        rc, _, err = self.get("http://127.0.0.1:%d/x" % port, out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "Connection refused")
        self.assertNoOutput(out)

    def test_https_and_bad_urls_are_usage_errors(self):
        for url, needle in (("https://127.0.0.1/x", "https"), ("ftp://h/x", "scheme"),
                            ("127.0.0.1/x", "not a URL"), ("http://", "not a valid"),
                            ("http://[2.%0089]:8/", "not a valid")):
            out = self.path("u")
            rc, _, err = self.get(url, out)
            self.assertEqual(rc, 2, err)
            self.assertOneLine(err, needle)
            self.assertNoOutput(out)

    def test_redirect_to_https_fails(self):
        up = self.upstream(scripted(b"HTTP/1.1 302 Found\r\nLocation: https://example.invalid/x\r\n"
                                    b"Content-Length: 0\r\n\r\n"))
        out = self.path("r")
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "https")
        self.assertNoOutput(out)

    def test_short_body_leaves_no_file(self):
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", os.urandom(40000)))
        out = self.path("short")
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "short body", "40000 of 100000")
        self.assertNoOutput(out)

    def test_short_chunked_body_leaves_no_file(self):
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"))
        out = self.path("short")
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "short body")
        self.assertNoOutput(out)

    def test_garbage_answer_is_named_plainly(self):
        # A peer that is not a web server (an SSH port, say) or a broken one: one line
        # in plain words, not http-parser's ("invalid constant string"), exit 1, no file.
        for i, (answer, words) in enumerate((
                (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "not an HTTP/1.x response"),
                (b"Hello, this is not HTTP\r\n\r\n", "not an HTTP/1.x response"),
                (b"HTTP/1.1 200 OK\r\nthis line has no colon\r\n\r\n", "malformed header line"),
                (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                 "bad chunk size"))):
            with self.subTest(answer=answer):
                up = self.upstream(scripted(answer))
                out = self.path("garbage%d" % i)
                rc, _, err = self.get(self.url(up), out)
                self.assertEqual(rc, 1, err)
                line = self.assertOneLine(err, words, "127.0.0.1:%d" % up.port)
                self.assertNotIn("invalid", line)
                self.assertNotIn("constant", line)
                self.assertNoOutput(out)

    def test_existing_file_untouched_by_a_failure(self):
        out = self.path("keep")
        with open(out, "wb") as f:
            f.write(b"old")
        up = self.upstream(scripted(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"))
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "500")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertFalse(os.path.exists(out + ".part"))

    def test_interim_1xx_eof_delimited_and_request(self):
        body = os.urandom(300000)
        up = self.upstream(scripted(b"HTTP/1.1 100 Continue\r\n\r\n",
                                    b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n" + body))
        out = self.path("eof")
        self.assertDownloaded(self.url(up, "/a%20b?q=1"), out, body)
        rec = up.records[0]
        head = rec.request.decode("latin-1")
        self.assertTrue(head.startswith("GET /a%20b?q=1 HTTP/1.1\r\n"), head)
        self.assertIn("\r\nHost: 127.0.0.1:%d\r\n" % up.port, head)

    def test_relative_redirect(self):
        body = os.urandom(1000)
        target = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + body))
        first = self.upstream(scripted(("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:%d/d/x"
                                        "\r\nContent-Length: 0\r\n\r\n" % target.port).encode()))
        out = self.path("rel")
        self.assertDownloaded(self.url(first), out, body)
        self.assertTrue(target.records[0].request.startswith(b"GET /d/x HTTP/1.1"))

    def test_relative_redirect_with_spaces(self):
        # Found by tests/fuzz (fuzz_get_response): a relative Location went into the
        # request line as it was, spaces and all ("GET /d/a b HTTP/1.1").
        body = os.urandom(1000)

        def handler(conn, rec):
            rec.request = read_request(conn)
            if rec.request.startswith(b"GET /x/y "):
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: ../d/a b\xc3\xa9?q=x y\r\n"
                             b"Content-Length: 0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + body)
        up = self.upstream(handler)
        out = self.path("spaces")
        self.assertDownloaded(self.url(up, "/x/y"), out, body)
        second = up.wait_connections(2)[1].request
        self.assertTrue(second.startswith(b"GET /d/a%20b%C3%A9?q=x%20y HTTP/1.1\r\n"), second)

    def test_stall_times_out(self):
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"x" * 1000,
                                    hold=SHORT))
        out = self.path("stall")
        start = time.monotonic()
        rc, _, err = self.get(self.url(up), out, "--timeout", "1s")
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "no data")
        self.assertLess(time.monotonic() - start, SHORT)
        self.assertNoOutput(out)

    def test_interrupt_removes_part(self):
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n", os.urandom(500000),
                                    hold=IO_TIMEOUT))
        out = self.path("int")
        p = self.spawn([e2e.ZCIO, "get", self.url(up), "-o", out])
        e2e.wait_until(lambda: os.path.exists(out + ".part") and os.path.getsize(out + ".part") >= 500000,
                       SHORT, "the partial download")
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(SHORT), 130, p.stderr_text())
        self.assertIn("interrupted", p.stderr_text())
        self.assertNoOutput(out)


class AgainstZcioServe(GetCase):
    def test_get_from_serve(self):
        www = self.path("www")
        files = write_files(www, {"blob.bin": 16 * MiB + 3})
        p = self.spawn([e2e.ZCIO, "serve", www, "--listen", "127.0.0.1:0", "--threads", "1"])
        port = int(p.wait_for(r"serving .* on http://127\.0\.0\.1:(\d+)/")[0].group(1))
        self.assertDownloaded("http://127.0.0.1:%d/blob.bin" % port, self.path("b"), files["blob.bin"],
                              path="splice")
        p.wait_for(r'"GET /blob\.bin HTTP/1\.1" 200 %d sendfile' % (16 * MiB + 3))


class LocalhostTests(E2ETestCase):
    """`http://localhost:PORT/` where localhost names ::1 first (Debian's default
    /etc/hosts) and the server listens on 127.0.0.1 only: the ::1 attempt is refused and
    the 127.0.0.1 one carries the download, where trying only the first address failed."""

    def test_get_from_an_ipv4_only_server_named_localhost(self):
        prefix = e2e.localhost_v6_first_prefix(self.tmp)
        if prefix is None:
            self.skipTest("cannot make localhost resolve to ::1 first here (no unshare?)")
        root = self.path("www")
        files = write_files(root, {"blob.bin": 3 * MiB + 1})
        port = e2e.free_port()
        http = self.spawn([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                           "--directory", root])
        e2e.wait_tcp_listening(port, proc=http)
        out = self.path("blob.bin")
        rc, _, err = e2e.run_zcio(["get", "http://localhost:%d/blob.bin" % port, "-o", out],
                                  timeout=IO_TIMEOUT, prefix=prefix)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), sha(files["blob.bin"]))


if __name__ == "__main__":
    e2e.main()
