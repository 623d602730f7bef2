#!/usr/bin/env python3
"""`zcio get` against real servers: `python3 -m http.server` and nginx (started here on
loopback from tests/e2e/nginx/nginx.conf.in), byte-identical downloads, redirects and
chunked bodies; and against scripted peers for the failures: 404, refused connections,
short bodies, stalls and interrupts leave no FILE and no FILE.part (unless the server
takes ranges: then FILE.part stays for -c). OutputSafety, Hardening and Resume back the
claims of docs/RELIABILITY.md ("get: threat model"): FIFOs and devices written in
place, planted .part links not followed, derived names made safe and never replacing a
file, --max-size/--max-time/--timeout, -H, and -c against a Range server written here
and against `zcio serve`.

Run: python3 tests/e2e/test_get.py --zcio build/tools/zcio/zcio
"""

import os
import pty
import re
import select
import shutil
import signal
import socket
import stat
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


def header_of(request, name):
    """The value of the first header `name` (case-insensitive) in a raw request, or None."""
    for line in request.decode("latin-1").split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            return v.strip()
    return None


def ranged(blob, etag='"v1"', cut_first=None, accept_ranges=True, hold_first=False,
           honour_if_range=True):
    """A handler serving `blob` the way a file server does: ETag, Accept-Ranges, one
    "bytes=N-" Range honoured (206) when If-Range is absent or matches, 416 past the
    end. With `cut_first`, the first connection closes after that many body bytes (or,
    with `hold_first`, stalls there until the client goes). Without `honour_if_range`
    the Range is served whatever If-Range says (a server RFC 9110 only asks to honour it)."""
    state = {"n": 0}
    lock = threading.Lock()

    def handler(conn, rec):
        rec.request = read_request(conn)
        with lock:
            state["n"] += 1
            first = state["n"] == 1
        rng = header_of(rec.request, "Range")
        if_range = header_of(rec.request, "If-Range")
        common = b"ETag: " + etag.encode() + b"\r\n" + (b"Accept-Ranges: bytes\r\n" if accept_ranges else b"")
        start = 0
        if rng and (if_range is None or if_range == etag or not honour_if_range):
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(blob):
                conn.sendall(b"HTTP/1.1 416 Range Not Satisfiable\r\n" + common +
                             b"Content-Range: bytes */%d\r\nContent-Length: 0\r\n\r\n" % len(blob))
                return
            head = (b"HTTP/1.1 206 Partial Content\r\n" + common +
                    b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(blob) - 1, len(blob)))
        else:
            head = b"HTTP/1.1 200 OK\r\n" + common
        body = blob[start:]
        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        if first and cut_first is not None:
            body = body[:cut_first]
        conn.sendall(body)
        if first and hold_first:
            conn.recv(1)  # until the client closes
    return handler


def fifo_reader(path, out):
    """Reads the FIFO at `path` to its end in a thread; out["sha"], out["n"] when done."""
    def run():
        h = __import__("hashlib").sha256()
        n = 0
        with open(path, "rb") as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        out["sha"] = h.hexdigest()
        out["n"] = n
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class OutputSafety(GetCase):
    """Item 1 of the threat model (docs/RELIABILITY.md, "get"): what -o names is written
    in place when it is not a regular file, and FILE.part is never a link followed."""

    def url(self, up, path="/f.bin"):
        return "http://127.0.0.1:%d%s" % (up.port, path)

    def test_fifo_target_is_written_not_replaced(self):
        body = os.urandom(3 * MiB + 5)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        got = {}
        t = fifo_reader(fifo, got)
        rc, _, err = self.get(self.url(up), fifo)
        t.join(SHORT)
        self.assertEqual(rc, 0, err)
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced")
        self.assertEqual(got.get("sha"), sha(body))
        self.assertFalse(os.path.exists(fifo + ".part"))

    def test_char_device_target_is_written_not_replaced(self):
        dev = self.path("mynull")
        try:
            os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except (PermissionError, OSError) as e:
            self.skipTest("mknod of a /dev/null twin needs root (CAP_MKNOD): %s" % e)
        body = os.urandom(MiB)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        rc, _, err = self.get(self.url(up), dev)
        self.assertEqual(rc, 0, err)
        st = os.lstat(dev)
        self.assertTrue(stat.S_ISCHR(st.st_mode), "the device node was replaced by a file")
        self.assertEqual(st.st_rdev, os.makedev(1, 3))
        self.assertFalse(os.path.exists(dev + ".part"))

    def plant_link(self, out):
        victim = self.path("victim")
        secret = os.urandom(4096)
        with open(victim, "wb") as f:
            f.write(secret)
        os.symlink(victim, out + ".part")
        return victim, secret

    def test_planted_part_symlink_is_not_followed(self):
        body = os.urandom(MiB + 3)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        out = self.path("out")
        victim, secret = self.plant_link(out)
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(victim), sha(secret), "the link's target was written")
        self.assertTrue(stat.S_ISREG(os.lstat(out).st_mode), "FILE is not a regular file")
        self.assertEqual(file_sha(out), sha(body))
        self.assertFalse(os.path.lexists(out + ".part"))

    def test_planted_part_link_refused_by_continue(self):
        body = os.urandom(10000)
        up = self.upstream(ranged(body))
        out = self.path("out")
        victim, secret = self.plant_link(out)
        rc, _, err = self.get(self.url(up), out, "-c")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "symbolic link")
        self.assertEqual(up.connections(), 0)
        self.assertEqual(file_sha(victim), sha(secret))
        self.assertFalse(os.path.exists(out))
        # A hard link is refused too: appending would write the other name's file.
        os.unlink(out + ".part")
        os.link(victim, out + ".part")
        rc, _, err = self.get(self.url(up), out, "-c")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "hard links")
        self.assertEqual(file_sha(victim), sha(secret))

    @unittest.skipUnless(os.geteuid() == 0, "needs root to plant a file of another user")
    def test_part_of_another_user_refused_by_continue(self):
        # Someone who can write a shared directory plants FILE.part, a regular file of
        # theirs made writable for all: -c would make their bytes the head of FILE.
        body = os.urandom(10000)
        up = self.upstream(ranged(body))
        out = self.path("shared")
        with open(out + ".part", "wb") as f:
            f.write(b"#!/bin/sh\nrm -rf ~\n")
        os.chmod(out + ".part", 0o666)
        os.chown(out + ".part", 65534, 65534)
        rc, _, err = self.get(self.url(up), out, "-c")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "another user")
        self.assertEqual(up.connections(), 0)
        self.assertFalse(os.path.exists(out))

    def test_descriptor_names_write_the_descriptor(self):
        # -o /dev/stdout with stdout redirected to a file: the name is a link to a
        # descriptor, not a file to replace. FILE.part was made next to the link (in
        # /dev, as root) and renamed over it, replacing the link and leaving the file
        # empty. The test uses a link of its own, made as /dev/stdout is, so that a zcio
        # with the bug cannot replace the system's /dev/stdout when the test runs as
        # root; /proc/self/fd/1 is named directly too.
        body = os.urandom(300000)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        fakedev = self.path("dev")
        os.mkdir(fakedev)
        link = os.path.join(fakedev, "stdout")
        os.symlink("/proc/self/fd/1", link)
        for name in (link, "/proc/self/fd/1"):
            with self.subTest(o=name):
                dest = self.path("redirected")
                with open(dest, "wb") as f:
                    f.write(b"kept\n")
                with open(dest, "ab") as f:  # `>>`: O_APPEND must be kept
                    p = subprocess.run([e2e.ZCIO, "get", self.url(up), "-o", name], stdout=f,
                                       stderr=subprocess.PIPE, timeout=IO_TIMEOUT)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertTrue(os.path.islink(link), "the link was replaced")
                self.assertEqual(os.listdir(fakedev), ["stdout"])
                self.assertEqual(file_sha(dest), sha(b"kept\n" + body))

    def test_terminal_needs_explicit_dash(self):
        body = os.urandom(4096)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        # The terminal is named through a link in the test's own directory, not as
        # /dev/stdout: a zcio that replaces what -o names (a6b10cd did) must not be
        # able to replace a system file when the test runs as root.
        for case, want in (("link", 2), ("-", 0)):
            with self.subTest(out=case):
                master, slave = pty.openpty()
                out = "-"
                if case == "link":
                    out = self.path("term")
                    os.symlink(os.ttyname(slave), out)
                try:
                    p = subprocess.run([e2e.ZCIO, "get", self.url(up), "-o", out], stdin=subprocess.DEVNULL,
                                       stdout=slave, stderr=subprocess.PIPE, timeout=SHORT, start_new_session=True)
                    err = p.stderr.decode("utf-8", "replace")
                    self.assertEqual(p.returncode, want, err)
                    if want == 2:
                        self.assertOneLine(err, "terminal", "-o -")
                        self.assertTrue(os.path.islink(out), "the link to the terminal was replaced")
                    else:
                        r, _, _ = select.select([master], [], [], SHORT)
                        self.assertTrue(r and os.read(master, 65536), "nothing reached the terminal")
                finally:
                    os.close(slave)
                    os.close(master)


class Hardening(GetCase):
    def url(self, up, path="/f.bin"):
        return "http://127.0.0.1:%d%s" % (up.port, path)

    def test_url_ending_in_dash_does_not_write_stdout(self):
        body = os.urandom(5000)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        rc, out, err = e2e.run_zcio(["get", self.url(up, "/dir/-")], cwd=self.tmp)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"", "the body went to standard output")
        self.assertEqual(file_sha(self.path("index.html")), sha(body))

    def test_derived_names_are_safe_and_never_replace(self):
        body = os.urandom(5000)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        rc, _, err = e2e.run_zcio(["get", self.url(up, "/x/a%0Ab%2Fc%1B")], cwd=self.tmp)
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(self.path("a_b_c_")), sha(body))
        # Again: the name came from the URL, so the file there is not replaced.
        old = os.urandom(100)
        with open(self.path("a_b_c_"), "wb") as f:
            f.write(old)
        rc, _, err = e2e.run_zcio(["get", self.url(up, "/x/a%0Ab%2Fc%1B")], cwd=self.tmp)
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "exists", "not replacing")
        self.assertEqual(file_sha(self.path("a_b_c_")), sha(old))
        self.assertEqual(up.connections(), 1, "it connected although it could not write")

    def test_derived_name_taken_during_the_download(self):
        # The check before connecting is not the last word: the rename at the end
        # does not replace a file that appeared meanwhile (RENAME_NOREPLACE).
        body = os.urandom(100000)
        go = threading.Event()

        def handler(conn, rec):
            rec.request = read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + body[:50000])
            go.wait(SHORT)
            conn.sendall(body[50000:])
        up = self.upstream(handler)
        name = self.path("late.bin")
        p = self.spawn([e2e.ZCIO, "get", self.url(up, "/late.bin")], cwd=self.tmp)
        e2e.wait_until(lambda: os.path.exists(name + ".part") and os.path.getsize(name + ".part") >= 50000,
                       SHORT, "the first half")
        theirs = os.urandom(10)
        with open(name, "wb") as f:
            f.write(theirs)
        go.set()
        self.assertEqual(p.wait(SHORT), 1, p.stderr_text())
        self.assertIn("appeared during the download", p.stderr_text())
        self.assertEqual(file_sha(name), sha(theirs))
        self.assertEqual(file_sha(name + ".part"), sha(body))

    def test_derived_name_is_the_typed_url_not_the_redirect(self):
        body = os.urandom(1000)

        def handler(conn, rec):
            rec.request = read_request(conn)
            if rec.request.startswith(b"GET /first.bin "):
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /..%2F..%2Fetc%2Fevil\r\n"
                             b"Content-Disposition: attachment; filename=\"../evil\"\r\nContent-Length: 0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename=\"../evil\"\r\n"
                             b"Content-Length: 1000\r\n\r\n" + body)
        up = self.upstream(handler)
        work = self.path("work")
        os.mkdir(work)
        rc, _, err = e2e.run_zcio(["get", self.url(up, "/first.bin")], cwd=work)
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.listdir(work), ["first.bin"])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["work"])
        self.assertEqual(file_sha(os.path.join(work, "first.bin")), sha(body))

    def test_output_directory(self):
        body = os.urandom(70000)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
        d = self.path("d")
        os.mkdir(d)
        for i, out in enumerate((d, d + "/")):
            with self.subTest(out=out):
                rc, _, err = self.get(self.url(up, "/p/name%d.bin" % i), out)
                self.assertEqual(rc, 0, err)
                self.assertEqual(sorted(os.listdir(d))[-1], "name%d.bin" % i)
                self.assertEqual(file_sha(os.path.join(d, "name%d.bin" % i)), sha(body))
        self.assertEqual(sorted(os.listdir(d)), ["name0.bin", "name1.bin"])
        rc, _, err = self.get(self.url(up), self.path("missing") + "/")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "no such directory")

    def test_chunk_size_overflow_is_a_chunk_error(self):
        for i, size in enumerate((b"ffffffffffffffffff", b"10000000000000000")):
            with self.subTest(size=size):
                up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size +
                                            b"\r\nhello\r\n0\r\n\r\n"))
                out = self.path("ov%d" % i)
                rc, _, err = self.get(self.url(up), out)
                self.assertEqual(rc, 1, err)
                line = self.assertOneLine(err, "chunk size")
                self.assertNotIn("Content-Length", line)
                self.assertNoOutput(out)

    def test_bad_trailer_is_a_trailer_error(self):
        # http-parser checks trailer fields like the head's: a repeated Content-Length
        # after the last chunk fails, and the line must blame the trailer, not the head.
        body = b"5\r\nhello\r\n0\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body))
        out = self.path("trailer")
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1, err)
        line = self.assertOneLine(err, "trailer")
        self.assertNotIn("conflicting", line)
        self.assertNoOutput(out)

    def test_max_time_is_an_overall_deadline(self):
        def drip(conn, rec):
            rec.request = read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            for _ in range(int(IO_TIMEOUT / 0.1)):  # never idle for --timeout
                conn.sendall(b"x")
                time.sleep(0.1)
        up = self.upstream(drip)
        out = self.path("slow")
        start = time.monotonic()
        rc, _, err = self.get(self.url(up), out, "--max-time", "1s", "--timeout", "5s")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "--max-time 1s")
        self.assertLess(time.monotonic() - start, SHORT)
        self.assertNoOutput(out)

    def test_max_size(self):
        body = os.urandom(5000)
        cases = (
            ("length", b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + body),
            ("eof", b"HTTP/1.0 200 OK\r\n\r\n" + body),
            ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
             b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 999]), body[i:i + 999]) for i in range(0, 5000, 999)) +
             b"0\r\n\r\n"),
        )
        for name, answer in cases:
            with self.subTest(body=name):
                # Too large: fails, and a FIFO reader sees no byte past the limit.
                up = self.upstream(scripted(answer))
                fifo = self.path("fifo-" + name)
                os.mkfifo(fifo)
                got = {}
                t = fifo_reader(fifo, got)
                rc, _, err = self.get(self.url(up), fifo, "--max-size", "4096")
                t.join(SHORT)
                self.assertEqual(rc, 1, err)
                self.assertOneLine(err, "--max-size")
                self.assertLessEqual(got.get("n", 0), 4096)
                out = self.path("file-" + name)
                up = self.upstream(scripted(answer))
                rc, _, err = self.get(self.url(up), out, "--max-size", "4K")
                self.assertEqual(rc, 1, err)
                self.assertNoOutput(out)
                # Exactly the limit is fine.
                up = self.upstream(scripted(answer))
                rc, _, err = self.get(self.url(up), out, "--max-size", "5000")
                self.assertEqual(rc, 0, err)
                self.assertEqual(file_sha(out), sha(body))

    def test_max_size_through_splice(self):
        # A close-delimited body too large to come with the head: copy() stops at the
        # limit and one more byte read says whether the body was larger.
        body = os.urandom(3 * MiB)
        for limit, want in ((2 * MiB + 1, 1), (3 * MiB, 0)):
            with self.subTest(limit=limit):
                up = self.upstream(scripted(b"HTTP/1.0 200 OK\r\n\r\n", body))
                fifo = self.path("fifo%d" % limit)
                os.mkfifo(fifo)
                got = {}
                t = fifo_reader(fifo, got)
                rc, _, err = self.get(self.url(up), fifo, "--max-size", str(limit))
                t.join(SHORT)
                self.assertEqual(rc, want, err)
                self.assertLessEqual(got.get("n", 0), limit)
                if want == 0:
                    self.assertEqual(got.get("sha"), sha(body))

    def test_timeout_2s_fires_at_about_2s(self):
        # The watchdog sampled progress once a second and counted the idle time from
        # its own wake-up: a 2 s --timeout fired 3 s after the last byte.
        def stall(conn, rec):
            rec.request = read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            rec.stalled_at = time.monotonic()
            rec.hold = threading.Event()
            rec.hold.wait(SHORT)
        up = self.upstream(stall)
        out = self.path("stall2")
        rc, _, err = self.get(self.url(up), out, "--timeout", "2s")
        ended = time.monotonic()
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "no data from the server for 2s")
        self.assertLess(ended - up.records[0].stalled_at, 2.6)
        self.assertNoOutput(out)

    def test_extra_headers(self):
        body = os.urandom(100)
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body))
        out = self.path("h")
        # -H before the URL too: one value per -H, the URL stays the positional.
        rc, _, err = e2e.run_zcio(["get", "-H", "X-One: 1", "-H", "user-agent:  me/2 ", self.url(up), "-o", out,
                                   "--header", "X-Empty:"])
        self.assertEqual(rc, 0, err)
        req = up.records[0].request
        self.assertEqual(header_of(req, "X-One"), "1")
        self.assertEqual(header_of(req, "User-Agent"), "me/2")
        self.assertEqual(req.lower().count(b"user-agent:"), 1, req)
        self.assertIn(b"\r\nX-Empty: \r\n", req)
        self.assertEqual(file_sha(out), sha(body))

    def test_credentials_do_not_follow_a_redirect_to_another_host(self):
        body = os.urandom(100)
        target = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body))
        first = self.upstream(scripted(("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/x\r\n"
                                        "Content-Length: 0\r\n\r\n" % target.port).encode()))
        out = self.path("cred")
        rc, _, err = self.get(self.url(first), out, "-H", "Authorization: Bearer s3cret", "-H", "Cookie: a=b",
                              "-H", "X-Keep: 1")
        self.assertEqual(rc, 0, err)
        self.assertEqual(header_of(first.records[0].request, "Authorization"), "Bearer s3cret")
        second = target.records[0].request
        self.assertIsNone(header_of(second, "Authorization"), second)
        self.assertIsNone(header_of(second, "Cookie"), second)
        self.assertEqual(header_of(second, "X-Keep"), "1")
        self.assertEqual(file_sha(out), sha(body))

    def test_bad_headers_are_refused(self):
        up = self.upstream(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        for h, words in (("X: a\r\nEvil: 1", "CR, LF"), ("X: a\nEvil: 1", "CR, LF"), ("NoColon", "Name: value"),
                         ("Bad Name: x", "Name: value"), ("Connection: keep-alive", "itself")):
            with self.subTest(h=h):
                out = self.path("bad")
                rc, _, err = self.get(self.url(up), out, "-H", h)
                self.assertEqual(rc, 2, err)
                self.assertOneLine(err, words)
                self.assertNoOutput(out)
        self.assertEqual(up.connections(), 0)


class Resume(GetCase):
    def url(self, up, path="/f.bin"):
        return "http://127.0.0.1:%d%s" % (up.port, path)

    def test_resume_after_a_cut(self):
        blob = os.urandom(4 * MiB)
        up = self.upstream(ranged(blob, cut_first=2 * MiB + 1234))
        out = self.path("big")
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "short body", "kept")
        self.assertFalse(os.path.exists(out))
        have = os.path.getsize(out + ".part")
        self.assertEqual(have, 2 * MiB + 1234)
        rc, _, err = self.get(self.url(up), out, "-c", "-v")
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), sha(blob))
        self.assertFalse(os.path.exists(out + ".part"))
        second = up.wait_connections(2)[1].request
        self.assertEqual(header_of(second, "Range"), "bytes=%d-" % have)
        self.assertEqual(header_of(second, "If-Range"), '"v1"')
        self.assertIn("206 Partial Content, %d bytes" % (len(blob) - have), err)

    def test_resume_starts_over_on_200(self):
        old = os.urandom(3 * MiB)
        new = os.urandom(3 * MiB + 17)
        out = self.path("changed")
        up = self.upstream(ranged(old, etag='"old"', cut_first=MiB))
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1, err)
        self.assertTrue(os.path.exists(out + ".part"))
        # The file changed on the server: If-Range does not match, the answer is a 200.
        up2 = self.upstream(ranged(new, etag='"new"'))
        rc, _, err = self.get(self.url(up2), out, "-c")
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), sha(new))
        self.assertEqual(header_of(up2.records[0].request, "If-Range"), '"old"')

    def test_resume_of_a_complete_part(self):
        blob = os.urandom(100000)
        out = self.path("done")
        with open(out + ".part", "wb") as f:
            f.write(blob)
        up = self.upstream(ranged(blob))
        rc, _, err = self.get(self.url(up), out, "-c")
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), sha(blob))
        self.assertEqual(header_of(up.records[0].request, "Range"), "bytes=100000-")
        self.assertIsNone(header_of(up.records[0].request, "If-Range"))  # no validator kept

    def test_no_part_kept_without_ranges(self):
        blob = os.urandom(MiB)
        up = self.upstream(ranged(blob, cut_first=1000, accept_ranges=False))
        out = self.path("noranges")
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1, err)
        self.assertNoOutput(out)

    def test_resume_after_sigterm(self):
        blob = os.urandom(4 * MiB)
        up = self.upstream(ranged(blob, cut_first=2 * MiB, hold_first=True))
        out = self.path("killed")
        p = self.spawn([e2e.ZCIO, "get", self.url(up), "-o", out])
        e2e.wait_until(lambda: os.path.exists(out + ".part") and os.path.getsize(out + ".part") >= 2 * MiB,
                       SHORT, "the first half")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(SHORT), 143, p.stderr_text())
        self.assertIn("kept", p.stderr_text())
        self.assertEqual(os.path.getsize(out + ".part"), 2 * MiB)
        rc, _, err = self.get(self.url(up), out, "--continue")
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), sha(blob))
        self.assertEqual(header_of(up.wait_connections(2)[1].request, "Range"), "bytes=%d-" % (2 * MiB))

    def test_resume_refuses_a_wrong_range(self):
        have = os.urandom(1000)
        out = self.path("wrong")
        for i, answer in enumerate((
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/2000\r\nContent-Length: 100\r\n\r\n",
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1000-1999/2000\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\n\r\n")):
            with self.subTest(i=i):
                with open(out + ".part", "wb") as f:
                    f.write(have)
                up = self.upstream(scripted(answer + os.urandom(1000)))
                rc, _, err = self.get(self.url(up), out, "-c")
                self.assertEqual(rc, 1, err)
                self.assertOneLine(err, "206")
                self.assertEqual(file_sha(out + ".part"), sha(have), "FILE.part was changed")
                self.assertFalse(os.path.exists(out))

    def test_resume_refuses_a_206_of_another_version(self):
        # A server that answers the Range whatever If-Range says: its 206 carries the
        # new version's ETag, and appending it to the old head would make a file that
        # is neither. Refused; FILE.part is left as it was.
        old = os.urandom(2 * MiB)
        new = os.urandom(2 * MiB)
        out = self.path("version")
        up = self.upstream(ranged(old, etag='"old"', cut_first=MiB))
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1, err)
        have = file_sha(out + ".part")
        up2 = self.upstream(ranged(new, etag='"new"', honour_if_range=False))
        rc, _, err = self.get(self.url(up2), out, "-c")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "another version", '"new"', '"old"')
        self.assertEqual(header_of(up2.records[0].request, "If-Range"), '"old"')
        self.assertEqual(file_sha(out + ".part"), have, "FILE.part was changed")
        self.assertFalse(os.path.exists(out))
        # By date: the validator kept is a Last-Modified, the 206 has another one.
        with open(out + ".part", "wb") as f:
            f.write(os.urandom(1000))
        have = file_sha(out + ".part")
        os.setxattr(out + ".part", "user.zcio.validator", b"Sun, 06 Nov 1994 08:49:37 GMT")
        up3 = self.upstream(scripted(
            b"HTTP/1.1 206 Partial Content\r\nLast-Modified: Mon, 07 Nov 1994 08:49:37 GMT\r\n"
            b"Content-Range: bytes 1000-1999/2000\r\nContent-Length: 1000\r\n\r\n" + os.urandom(1000)))
        rc, _, err = self.get(self.url(up3), out, "-c")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "another version", "Last-Modified")
        self.assertEqual(file_sha(out + ".part"), have, "FILE.part was changed")
        # The same date in another form is the same version: appended.
        up4 = self.upstream(scripted(
            b"HTTP/1.1 206 Partial Content\r\nLast-Modified: Sunday, 06-Nov-94 08:49:37 GMT\r\n"
            b"Content-Range: bytes 1000-1999/2000\r\nContent-Length: 1000\r\n\r\n" + os.urandom(1000)))
        rc, _, err = self.get(self.url(up4), out, "-c")
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.path.getsize(out), 2000)

    def test_416_of_another_version_is_not_complete(self):
        # 416 "bytes */1000" for a 1000-byte FILE.part means it is complete only if it
        # is of the same version: with another ETag, FILE.part stays and no FILE.
        out = self.path("same-size")
        with open(out + ".part", "wb") as f:
            f.write(os.urandom(1000))
        have = file_sha(out + ".part")
        os.setxattr(out + ".part", "user.zcio.validator", b'"old"')
        up = self.upstream(scripted(b'HTTP/1.1 416 Range Not Satisfiable\r\nETag: "new"\r\n'
                                    b"Content-Range: bytes */1000\r\nContent-Length: 0\r\n\r\n"))
        rc, _, err = self.get(self.url(up), out, "-c")
        self.assertEqual(rc, 1, err)
        self.assertOneLine(err, "416")
        self.assertFalse(os.path.exists(out))
        self.assertEqual(file_sha(out + ".part"), have)
        # The same ETag: complete, renamed.
        up = self.upstream(scripted(b'HTTP/1.1 416 Range Not Satisfiable\r\nETag: "old"\r\n'
                                    b"Content-Range: bytes */1000\r\nContent-Length: 0\r\n\r\n"))
        rc, _, err = self.get(self.url(up), out, "-c")
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), have)

    def test_resume_keeps_a_long_etag(self):
        # A 600-byte ETag (legal; some servers hash long keys into it) is kept on
        # FILE.part and sent back as If-Range, so a changed file starts over instead of
        # having its new tail appended to the old head.
        old = os.urandom(2 * MiB)
        new = os.urandom(2 * MiB)
        tag_old = '"' + "o" * 600 + '"'
        out = self.path("longtag")
        up = self.upstream(ranged(old, etag=tag_old, cut_first=MiB))
        rc, _, err = self.get(self.url(up), out)
        self.assertEqual(rc, 1, err)
        up2 = self.upstream(ranged(new, etag='"' + "n" * 600 + '"'))
        rc, _, err = self.get(self.url(up2), out, "-c")
        self.assertEqual(rc, 0, err)
        self.assertEqual(header_of(up2.records[0].request, "If-Range"), tag_old)
        self.assertEqual(file_sha(out), sha(new))

    def test_max_size_keeps_a_part_it_did_not_write(self):
        # -c --max-size where the file would be too large: refused before a byte is
        # written, so the FILE.part of an earlier run stays (a larger limit resumes it).
        blob = os.urandom(4000)
        out = self.path("limited")
        for limit in ("1500", "500"):  # the rest too large; FILE.part itself too large
            with self.subTest(limit=limit):
                with open(out + ".part", "wb") as f:
                    f.write(blob[:1000])
                up = self.upstream(ranged(blob))
                rc, _, err = self.get(self.url(up), out, "-c", "--max-size", limit)
                self.assertEqual(rc, 1, err)
                self.assertOneLine(err, "--max-size", "kept")
                self.assertEqual(file_sha(out + ".part"), sha(blob[:1000]))
                self.assertFalse(os.path.exists(out))
        up = self.upstream(ranged(blob))
        rc, _, err = self.get(self.url(up), out, "-c", "--max-size", "4000")
        self.assertEqual(rc, 0, err)
        self.assertEqual(file_sha(out), sha(blob))

    def test_resume_against_zcio_serve(self):
        www = self.path("www")
        files = write_files(www, {"blob.bin": 4 * MiB})
        p = self.spawn([e2e.ZCIO, "serve", www, "--listen", "127.0.0.1:0", "--threads", "1"])
        port = int(p.wait_for(r"serving .* on http://127\.0\.0\.1:(\d+)/")[0].group(1))
        url = "http://127.0.0.1:%d/blob.bin" % port
        out = self.path("b")
        # The first part of the file, as an interrupted download leaves it.
        with open(out + ".part", "wb") as f:
            f.write(files["blob.bin"][:2 * MiB + 99])
        rc, _, err = self.get(url, out, "-c", "-v")
        self.assertEqual(rc, 0, err)
        self.assertIn("206", err)
        self.assertEqual(file_sha(out), sha(files["blob.bin"]))
        p.wait_for(r'"GET /blob\.bin HTTP/1\.1" 206 %d' % (2 * MiB - 99))


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
