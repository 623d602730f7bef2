#!/usr/bin/env python3
"""`zcio serve` with real clients: curl and wget fetch files of 0 B, 1 B and 64 MiB,
a range, two requests on one connection, 304, 404, 405, 416; traversal and symlink
escapes are refused (with openat2 and with the realpath fallback); garbage gets 400
and a closed connection; limits and timeouts hold.

Run: python3 tests/e2e/test_serve.py --zcio build/tools/zcio/zcio
"""

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import IO_TIMEOUT, SHORT, E2ETestCase, Proc, file_sha, sha  # noqa: E402

MiB = 1 << 20
BIG = 64 * MiB


# Run inside the namespace of test_port_0_on_two_addresses_picks_again_when_taken:
# holds 127.0.0.1:40000-40001, then starts `zcio serve --listen zcio-dual:0` six times,
# printing "started" or "failed" for each.
PORT_PICK_STARTER = r"""
import socket, subprocess, sys
held = []
for port in (40000, 40001):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        sys.stderr.write("cannot hold %d: %s\\n" % (port, e))
        sys.exit(3)
    s.listen()
    held.append(s)
for _ in range(6):
    p = subprocess.Popen([sys.argv[1], "serve", sys.argv[2], "--listen", "zcio-dual:0"],
                         stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    p.kill()
    rest = p.communicate(timeout=10)[1]
    ok = "serving" in line
    print("started" if ok else "failed", flush=True)
    if not ok:
        sys.stderr.write(line + rest)
"""


def run_bounded(args, timeout):
    """Runs a client in its own session; its group is killed whatever happens."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("%r hung (no exit within %.1fs)" % (args, timeout))
    finally:
        try:
            os.killpg(p.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(SHORT)
    return p.returncode, out, err.decode("utf-8", "replace")


def make_tree(root, outside):
    """The served tree, and a secret file outside it. Returns {name: bytes}."""
    os.makedirs(os.path.join(root, "sub"))
    os.makedirs(os.path.join(root, "list"))
    files = {
        "empty.bin": b"",
        "one.bin": b"\x7f",
        "big.bin": os.urandom(BIG),
        "hello.txt": b"hello, world\n",
        "sub/index.html": b"<h1>index of sub</h1>\n",
        "list/a<b>&\"q'.txt": b"x",
        "list/plain.txt": b"p",
    }
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    with open(outside, "wb") as f:
        f.write(b"SECRET outside the root\n")
    os.symlink(outside, os.path.join(root, "abs-escape"))  # absolute, out of the root
    os.symlink(os.path.join("..", os.path.basename(outside)), os.path.join(root, "rel-escape"))
    os.symlink("hello.txt", os.path.join(root, "inside-link"))  # stays inside: allowed
    os.symlink("../..", os.path.join(root, "sub", "up"))  # a directory link climbing out
    return files


def start_serve(spawn, root, *args, env=None):
    """Starts `zcio serve` on an ephemeral port; returns (proc, port)."""
    argv = [e2e.ZCIO, "serve", root, "--listen", "127.0.0.1:0"] + [str(a) for a in args]
    if "--threads" not in argv:
        argv += ["--threads", "2"]
    p = spawn(argv, env=env)
    m = p.wait_for(r"serving .* on http://127\.0\.0\.1:(\d+)/")[0]
    return p, int(m.group(1))


class Reader:
    """Reads HTTP/1.1 responses from a socket, keeping bytes that belong to the next one."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""

    def _more(self, n=65536):
        chunk = self.sock.recv(n)
        if not chunk:
            raise AssertionError("connection closed mid-response (have %r)" % self.pending[:200])
        self.pending += chunk

    def response(self, head_only=False):
        """(status, {lowercase header: value}, body)."""
        while b"\r\n\r\n" not in self.pending:
            self._more()
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only or status == 304 else int(headers.get("content-length", "0"))
        while len(self.pending) < n:
            self._more(max(65536, n - len(self.pending)))
        body, self.pending = self.pending[:n], self.pending[n:]
        return status, headers, body


def assert_orderly_eof(test, sock, timeout=SHORT):
    """After a final answer the server closes with a FIN: the next read is the end of
    the stream, not ECONNRESET (a close with the client's bytes unread sends RST, which
    can destroy the answer before the client has read it)."""
    sock.settimeout(timeout)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        test.fail("the connection was reset after the answer (no graceful close)")
    test.assertEqual(rest, b"", "bytes after the answer")


def read_response(sock, head_only=False):
    return Reader(sock).response(head_only)


class ServeFixture(E2ETestCase):
    """One tree and one server for the whole class (the 64 MiB file is made once)."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="zcio-serve-")
        cls.root = os.path.join(cls.base, "www")
        cls.files = make_tree(cls.root, os.path.join(cls.base, "secret.txt"))
        cls.server = None
        cls.server = Proc([e2e.ZCIO, "serve", cls.root, "--listen", "127.0.0.1:0", "--threads", "2"])
        m = cls.server.wait_for(r"serving .* on http://127\.0\.0\.1:(\d+)/")[0]
        cls.port = int(m.group(1))

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            cls.server.kill()
        shutil.rmtree(cls.base, ignore_errors=True)

    def url(self, path, port=None):
        return "http://127.0.0.1:%d%s" % (port or self.port, path)

    def raw(self, request, port=None):
        """Sends `request` bytes on a new connection; returns the socket."""
        s = self.connect("127.0.0.1:%d" % (port or self.port))
        s.sendall(request)
        return s

    def get_raw(self, path, extra="", port=None, method="GET"):
        s = self.raw(("%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, path, extra)).encode(), port)
        return read_response(s, head_only=method == "HEAD")

    def access_lines(self, proc, pattern, count=1):
        return proc.wait_for(pattern, count=count, timeout=SHORT)


class CurlAndWget(ServeFixture):
    def setUp(self):
        super().setUp()
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")

    def curl(self, *args, timeout=IO_TIMEOUT):
        rc, out, err = run_bounded(["curl", "--silent", "--show-error", "--noproxy", "*",
                                    "--max-time", str(int(timeout))] + list(args), timeout + 5)
        return rc, out, err

    def test_curl_sizes(self):
        for name in ("empty.bin", "one.bin", "big.bin"):
            out = self.path("curl-" + name)
            rc, code, err = self.curl("--fail", "-o", out, "-w", "%{http_code}", self.url("/" + name))
            self.assertEqual(rc, 0, err)
            self.assertEqual(code, b"200")
            self.assertEqual(os.path.getsize(out), len(self.files[name]))
            self.assertEqual(file_sha(out), sha(self.files[name]), name)
        # The 64 MiB body left by sendfile (the access log names the path).
        self.access_lines(self.server, r'"GET /big\.bin HTTP/1\.1" 200 %d sendfile' % BIG)

    def test_wget_sizes(self):
        if shutil.which("wget") is None:
            self.skipTest("wget is not installed (Debian package wget)")
        for name in ("empty.bin", "one.bin", "big.bin"):
            out = self.path("wget-" + name)
            rc, _, err = run_bounded(["wget", "--quiet", "--no-proxy", "--tries=1",
                                      "--timeout=%d" % IO_TIMEOUT, "-O", out, self.url("/" + name)],
                                     IO_TIMEOUT + 5)
            self.assertEqual(rc, 0, err)
            self.assertEqual(file_sha(out), sha(self.files[name]), name)
        # wget of a directory gets its index.html.
        out = self.path("wget-index")
        rc, _, err = run_bounded(["wget", "--quiet", "--no-proxy", "-O", out, self.url("/sub/")], SHORT)
        self.assertEqual(rc, 0, err)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), self.files["sub/index.html"])

    def test_curl_range(self):
        out = self.path("range")
        rc, code, err = self.curl("-r", "1000-1999999", "-o", out, "-w", "%{http_code}", self.url("/big.bin"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(code, b"206")
        self.assertEqual(file_sha(out), sha(self.files["big.bin"][1000:2000000]))
        self.access_lines(self.server, r'"GET /big\.bin HTTP/1\.1" 206 1999000 sendfile')

    def test_curl_keep_alive_two_requests(self):
        a, b = self.path("ka1"), self.path("ka2")
        rc, out, err = self.curl("--fail", "-o", a, "-o", b, "-w", "%{num_connects}\\n",
                                 self.url("/hello.txt"), self.url("/big.bin"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.split(), [b"1", b"0"], "the second request opened a new connection")
        self.assertEqual(file_sha(b), sha(self.files["big.bin"]))
        # Both requests came from the same client port.
        self.access_lines(self.server, r'"GET /big\.bin HTTP/1\.1" 200 ', count=1)
        ports = {}
        for line in self.server.lines():
            m = re.search(r'127\.0\.0\.1:(\d+) "GET (/hello\.txt|/big\.bin) HTTP/1\.1" 200 ', line)
            if m:
                ports[m.group(2)] = m.group(1)  # the last one of each wins
        self.assertEqual(ports["/hello.txt"], ports["/big.bin"])

    def test_curl_304_404_405_416(self):
        # 304: If-Modified-Since equal to the file's Last-Modified.
        status, headers, _ = self.get_raw("/hello.txt", method="HEAD")
        self.assertEqual(status, 200)
        lm = headers["last-modified"]
        rc, code, err = self.curl("-o", os.devnull, "-w", "%{http_code}", "-H", "If-Modified-Since: " + lm,
                                  self.url("/hello.txt"))
        self.assertEqual((rc, code), (0, b"304"), err)
        # An older date: modified since, so 200.
        rc, code, err = self.curl("-o", os.devnull, "-w", "%{http_code}", "-H",
                                  "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT", self.url("/hello.txt"))
        self.assertEqual((rc, code), (0, b"200"), err)
        rc, code, err = self.curl("-o", os.devnull, "-w", "%{http_code}", self.url("/no/such/file"))
        self.assertEqual((rc, code), (0, b"404"), err)
        rc, out, err = self.curl("-i", "-X", "DELETE", self.url("/hello.txt"))
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 405 "), out[:100])
        self.assertIn(b"Allow: GET, HEAD", out)
        rc, out, err = self.curl("-i", "-r", "5000-6000", self.url("/hello.txt"))
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 416 "), out[:100])
        self.assertIn(b"Content-Range: bytes */13", out)


class Protocol(ServeFixture):
    def test_head_and_headers(self):
        status, h, body = self.get_raw("/big.bin", method="HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(int(h["content-length"]), BIG)
        self.assertEqual(h["accept-ranges"], "bytes")
        self.assertEqual(body, b"")
        status, h, body = self.get_raw("/hello.txt")
        self.assertEqual(h["content-type"], "text/plain; charset=utf-8")
        self.assertTrue(h["last-modified"].endswith(" GMT"))
        self.assertEqual(body, self.files["hello.txt"])
        status, h, body = self.get_raw("/sub/index.html")
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")

    def test_ranges(self):
        data = self.files["big.bin"]
        for spec, first, last in (("0-0", 0, 0), ("100-199", 100, 199), ("-10", BIG - 10, BIG - 1),
                                  ("%d-" % (BIG - 5), BIG - 5, BIG - 1), ("10-%d" % (BIG * 2), 10, BIG - 1)):
            status, h, body = self.get_raw("/big.bin", "Range: bytes=%s\r\n" % spec)
            self.assertEqual(status, 206, spec)
            self.assertEqual(h["content-range"], "bytes %d-%d/%d" % (first, last, BIG), spec)
            self.assertEqual(sha(body), sha(data[first:last + 1]), spec)
        for spec in ("%d-" % BIG, "-0"):
            status, h, _ = self.get_raw("/big.bin", "Range: bytes=%s\r\n" % spec)
            self.assertEqual(status, 416, spec)
        # Several ranges, or nonsense: ignored, the whole file with 200.
        status, h, _ = self.get_raw("/hello.txt", "Range: bytes=0-1,3-4\r\n")
        self.assertEqual((status, h["content-length"]), (200, "13"))
        status, _, _ = self.get_raw("/hello.txt", "Range: lines=1-2\r\n")
        self.assertEqual(status, 200)

    def test_pipelined_requests_on_one_connection(self):
        s = self.raw(b"GET /one.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        r = Reader(s)
        st1, _, b1 = r.response()
        st2, h2, b2 = r.response(head_only=True)
        st3, h3, b3 = r.response()
        self.assertEqual((st1, b1), (200, b"\x7f"))
        self.assertEqual((st2, b2, h2["content-length"]), (200, b"", "13"))
        self.assertEqual((st3, b3), (200, self.files["hello.txt"]))
        self.assertEqual(h3.get("connection"), "close")
        self.assertEqual(r.pending, b"")
        e2e.wait_closed(s)

    def test_head_and_body_in_one_segment(self):
        """MSG_MORE on the head: head and a small body leave as one TCP segment, so a
        kept-alive client never waits on Nagle plus a delayed ACK between the two."""
        s = self.connect("127.0.0.1:%d" % self.port)

        def data_segs_in():
            # struct tcp_info: tcpi_data_segs_in (Linux 4.6+) is the u32 at offset 152.
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            if len(info) < 156:
                self.skipTest("tcp_info has no tcpi_data_segs_in (kernel older than 4.6)")
            return struct.unpack_from("I", info, 152)[0]

        r = Reader(s)
        for _ in range(5):
            before = data_segs_in()
            s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = r.response()
            self.assertEqual((status, body), (200, self.files["hello.txt"]))
            self.assertEqual(data_segs_in() - before, 1, "the head and the body came in separate segments")

    def test_http10_closes_unless_keep_alive(self):
        s = self.raw(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        status, h, body = read_response(s)
        self.assertEqual((status, body), (200, self.files["hello.txt"]))
        e2e.wait_closed(s)
        s = self.raw(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = Reader(s)
        status, h, _ = r.response()
        self.assertEqual(h.get("connection"), "keep-alive")
        s.sendall(b"GET /one.bin HTTP/1.0\r\n\r\n")
        status, _, body = r.response()
        self.assertEqual((status, body), (200, b"\x7f"))
        e2e.wait_closed(s)

    def test_directory_redirect_index_and_listing(self):
        status, h, _ = self.get_raw("/sub?x=1")
        self.assertEqual((status, h["location"]), (301, "/sub/?x=1"))
        status, _, body = self.get_raw("/sub/")
        self.assertEqual(body, self.files["sub/index.html"])
        status, h, body = self.get_raw("/list/")
        self.assertEqual(status, 200)
        page = body.decode()
        self.assertIn("a&lt;b&gt;&amp;&quot;q&#39;.txt", page)  # the name, escaped
        self.assertIn('href="a%3Cb%3E%26%22q%27.txt"', page)
        self.assertNotIn("<b>", page)
        self.assertIn('href="plain.txt"', page)
        self.assertIn('href="../"', page)
        # The listing's link leads to the file.
        status, _, body = self.get_raw("/list/a%3Cb%3E%26%22q%27.txt")
        self.assertEqual((status, body), (200, b"x"))

    def test_garbage_gets_400_and_close(self):
        for junk in (b"garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost t\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
                     b"GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n"):
            s = self.raw(junk)
            status, h, _ = read_response(s)
            self.assertEqual(status, 400, junk)
            self.assertEqual(h.get("connection"), "close")
            e2e.wait_closed(s)
        s = self.raw(b"GET /x HTTP/1.1\r\n\r\n")  # HTTP/1.1 without Host
        self.assertEqual(read_response(s)[0], 400)
        s = self.raw(b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n")
        self.assertEqual(read_response(s)[0], 505)
        # A body on a GET: 413, closed (we never read request bodies).
        s = self.raw(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(read_response(s)[0], 413)
        e2e.wait_closed(s)
        self.access_lines(self.server, r'"-" 400 ')

    def test_header_size_and_count_bounded(self):
        s = self.raw(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        status, h, _ = read_response(s)
        self.assertEqual(status, 431)
        e2e.wait_closed(s)
        many = "".join("X-H%d: v\r\n" % i for i in range(150))
        s = self.raw(("GET / HTTP/1.1\r\nHost: t\r\n%s\r\n" % many).encode())
        self.assertEqual(read_response(s)[0], 431)
        e2e.wait_closed(s)


class NginxLike(ServeFixture):
    """What users of nginx expect: entity tags and preconditions, no file under a
    trailing slash, no dotfiles, listings with sizes and dates, safe redirects."""

    def test_redirect_collapses_leading_slashes(self):
        # "//sub/" in a Location is a network-path reference: a browser would go to
        # http://sub/ (an open redirect). The target is rebuilt from the path beneath
        # the root instead.
        for path, want in (("//sub", "/sub/"), ("/%2Fsub", "/sub/"), ("///sub?x=1", "/sub/?x=1"),
                           ("/%2F%2Fsub", "/sub/"), ("/sub", "/sub/"), ("/./sub", "/sub/")):
            status, h, _ = self.get_raw(path)
            self.assertEqual((status, h.get("location")), (301, want), path)

    def test_redirect_escapes_the_query(self):
        # The query went into Location as sent: a backslash (read as '/' by browsers),
        # bytes above 0x7f and quotes reached the header raw (found by fuzz_serve_request).
        s = self.raw(b"GET /sub?a\\b\xc3\xa9\"<x> HTTP/1.1\r\nHost: t\r\n\r\n")
        status, h, _ = read_response(s)
        self.assertEqual((status, h.get("location")), (301, "/sub/?a%5Cb%C3%A9%22%3Cx%3E"))

    def test_duplicate_host_is_400(self):
        s = self.raw(b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        status, h, body = read_response(s)
        self.assertEqual((status, body), (400, b"400 Bad Request\n"))
        self.assertEqual(h.get("connection"), "close")
        e2e.wait_closed(s)
        s = self.raw(b"GET /hello.txt HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n")  # 1.0 too
        self.assertEqual(read_response(s)[0], 400)
        self.access_lines(self.server, r'"GET /hello\.txt HTTP/1\.1" 400 ')

    def test_etag_and_preconditions(self):
        status, h, body = self.get_raw("/hello.txt")
        self.assertEqual((status, body), (200, self.files["hello.txt"]))
        etag, lm = h["etag"], h["last-modified"]
        self.assertRegex(etag, r'^"[0-9a-f]+\.[0-9a-f]+-d"$')  # 13 bytes: size d
        cases = [
            ("If-None-Match: %s" % etag, 304),
            ("If-None-Match: W/%s" % etag, 304),  # weak comparison
            ('If-None-Match: "x", %s' % etag, 304),
            ("If-None-Match: *", 304),
            ('If-None-Match: "other"', 200),
            # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3).
            ('If-None-Match: "other"\r\nIf-Modified-Since: %s' % lm, 200),
            ("If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT", 412),
            ("If-Unmodified-Since: %s" % lm, 200),
            ("If-Unmodified-Since: not a date", 200),
            ("If-Match: %s" % etag, 200),
            ('If-Match: "other"', 412),
            ("If-Match: W/%s" % etag, 412),  # strong comparison
            ("If-Match: *", 200),
        ]
        for extra, want in cases:
            status, h, body = self.get_raw("/hello.txt", extra + "\r\n")
            self.assertEqual(status, want, extra)
            if want == 200:
                self.assertEqual(body, self.files["hello.txt"], extra)
            elif want == 304:
                self.assertEqual((h["etag"], body), (etag, b""), extra)
            else:
                self.assertEqual(body, b"412 Precondition Failed\n", extra)
        # If-Range with the entity tag keeps the range; another tag gets the whole file.
        status, _, body = self.get_raw("/hello.txt", "Range: bytes=0-4\r\nIf-Range: %s\r\n" % etag)
        self.assertEqual((status, body), (206, b"hello"))
        status, _, body = self.get_raw("/hello.txt", 'Range: bytes=0-4\r\nIf-Range: "x"\r\n')
        self.assertEqual((status, body), (200, self.files["hello.txt"]))
        # The tag changes when the file does, even within the same second and size.
        name = os.path.join(self.root, "etag.txt")
        with open(name, "wb") as f:
            f.write(b"one")
        os.utime(name, ns=(1700000000 * 10**9, 1700000000 * 10**9 + 1))
        _, h1, b1 = self.get_raw("/etag.txt")
        with open(name, "wb") as f:
            f.write(b"two")
        os.utime(name, ns=(1700000000 * 10**9, 1700000000 * 10**9 + 2))
        status, h2, b2 = self.get_raw("/etag.txt", "If-None-Match: %s\r\n" % h1["etag"])
        self.assertNotEqual(h1["etag"], h2["etag"])
        self.assertEqual((b1, status, b2), (b"one", 200, b"two"))

    def test_trailing_slash_on_a_file_is_404(self):
        for path in ("/hello.txt/", "/inside-link/", "/sub/index.html/"):
            status, _, body = self.get_raw(path)
            self.assertEqual((status, body), (404, b"404 Not Found\n"), path)
        self.assertEqual(self.get_raw("/hello.txt")[0], 200)

    def test_listing_shows_sizes_and_dates(self):
        name = os.path.join(self.root, "list", "sized.bin")
        with open(name, "wb") as f:
            f.write(os.urandom(12345))
        os.utime(name, (1700000000, 1700000000))  # 2023-11-14 22:13:20 UTC
        os.makedirs(os.path.join(self.root, "list", "dir"), exist_ok=True)
        status, _, body = self.get_raw("/list/")
        self.assertEqual(status, 200)
        page = body.decode()
        self.assertIn('<a href="sized.bin">sized.bin</a></td><td>12345</td><td>2023-11-14 22:13:20</td>', page)
        self.assertRegex(page, r'<a href="dir/">dir/</a></td><td>-</td><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>')
        self.assertIn('<a href="plain.txt">plain.txt</a></td><td>1</td>', page)
        # A link that leads out shows its own size (its target's length), never the
        # size of the file outside.
        status, _, body = self.get_raw("/")
        link_size = len(os.readlink(os.path.join(self.root, "abs-escape")))
        self.assertIn('<a href="abs-escape">abs-escape</a></td><td>%d</td>' % link_size, body.decode())


class Dotfiles(E2ETestCase):
    def setUp(self):
        super().setUp()
        self.root = self.path("www")
        for d in ("sub", ".git"):
            os.makedirs(os.path.join(self.root, d))
        self.files = {".secret": b"S1", ".git/config": b"S2", "sub/.env": b"S3", "visible.txt": b"v",
                      "sub/a.txt": b"a"}
        for name, data in self.files.items():
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(data)

    def get(self, port, path):
        s = self.connect("127.0.0.1:%d" % port)
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
        return read_response(s)

    def test_hidden_by_default(self):
        proc, port = start_serve(self.spawn, self.root)
        for path in ("/.secret", "/.git/config", "/.git/", "/.git", "/sub/.env", "/%2esecret",
                     "/sub/%2Eenv"):
            status, _, body = self.get(port, path)
            self.assertEqual((status, body), (404, b"404 Not Found\n"), path)
        for path in ("/", "/sub/"):
            status, _, body = self.get(port, path)
            self.assertEqual(status, 200)
            for hidden in (b".secret", b".git", b".env"):
                self.assertNotIn(hidden, body, path)
        self.assertIn(b'href="visible.txt"', self.get(port, "/")[2])
        self.assertEqual(self.get(port, "/sub/a.txt")[2], b"a")
        self.assertEqual(self.get(port, "/./visible.txt")[2], b"v")  # "." is no dotfile

    def test_served_with_dotfiles_flag(self):
        proc, port = start_serve(self.spawn, self.root, "--dotfiles")
        for name, data in self.files.items():
            status, _, body = self.get(port, "/" + name)
            self.assertEqual((status, body), (200, data), name)
        page = self.get(port, "/")[2]
        self.assertIn(b'href=".secret"', page)
        self.assertIn(b'href=".git/"', page)


class Escapes(E2ETestCase):
    """Nothing outside the root, through openat2 (RESOLVE_BENEATH) and the fallback."""

    def check(self, env, label):
        root = self.path("www")
        files = {}
        os.makedirs(os.path.join(root, "sub"))
        with open(os.path.join(root, "hello.txt"), "wb") as f:
            f.write(b"hello\n")
        with open(self.path("secret.txt"), "wb") as f:
            f.write(b"SECRET\n")
        os.symlink(self.path("secret.txt"), os.path.join(root, "abs-escape"))
        os.symlink("../secret.txt", os.path.join(root, "rel-escape"))
        os.symlink("..", os.path.join(root, "sub", "up"))  # the root itself: fine
        os.symlink("../..", os.path.join(root, "sub", "upup"))  # above the root
        os.symlink("hello.txt", os.path.join(root, "inside-link"))
        os.symlink("../hello.txt", os.path.join(root, "sub", "back-inside"))
        del files
        proc, port = start_serve(self.spawn, root, env=env)
        cases = {
            "/../secret.txt": 403,
            "/sub/../../secret.txt": 403,
            "/%2e%2e/secret.txt": 403,
            "/%2E%2E/secret.txt": 403,
            "/sub/%2e%2e/%2e%2e/secret.txt": 403,
            "/.%2e/secret.txt": 403,
            "/sub/..%2f..%2fsecret.txt": 403,
            "/abs-escape": 403,
            "/rel-escape": 403,
            "/sub/upup/secret.txt": 403,
            "/sub/upup/": 403,
            "/sub/up/hello.txt": 200,
            "/%00": 400,
            "/%zz": 400,
            "/inside-link": 200,
            "/sub/back-inside": 200,
            "/./hello.txt": 200,
        }
        for path, want in cases.items():
            s = self.raw_to(port, ("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
            status, _, body = read_response(s)
            self.assertEqual(status, want, "%s (%s)" % (path, label))
            self.assertNotIn(b"SECRET", body, path)
            if want == 200:
                self.assertEqual(body, b"hello\n", path)

    def raw_to(self, port, data):
        s = self.connect("127.0.0.1:%d" % port)
        s.sendall(data)
        return s

    def test_openat2(self):
        self.check(None, "openat2")

    def test_walk_fallback(self):
        env = dict(os.environ, ZCIO_SERVE_NO_OPENAT2="1")
        self.check(env, "openat walk fallback")

    def race_swapped_symlink(self, env):
        """A local user who can write the tree swaps a directory and a symlink to a
        directory outside it (renameat2 RENAME_EXCHANGE, in a loop) while a client asks
        for a file beneath the directory: no answer may carry the outside file."""
        secret = os.urandom(16).hex().encode()
        root = self.path("www")
        outside = self.path("outside")
        os.makedirs(os.path.join(root, "d"))
        os.makedirs(outside)
        with open(os.path.join(root, "d", "f"), "wb") as f:
            f.write(b"inside\n")
        with open(os.path.join(outside, "f"), "wb") as f:
            f.write(secret)
        os.symlink(outside, os.path.join(root, "s"))  # absolute
        os.symlink("../outside", os.path.join(root, "r"))  # relative, climbing out
        proc, port = start_serve(self.spawn, root, "--threads", "1", env=env)
        # The swapper: a separate process (no GIL between it and our requests),
        # bounded in time, killed at teardown anyway.
        swapper = self.spawn([sys.executable, "-c", SWAPPER, os.path.join(root, "d"),
                              os.path.join(root, "s"), os.path.join(root, "r"), "6"])
        swapper.wait_for(r"swapping")
        counts = {}
        deadline = time.monotonic() + 3.0
        batch = b"".join(b"GET /d/f HTTP/1.1\r\nHost: t\r\n\r\n" for _ in range(50))
        total = 0
        while time.monotonic() < deadline and total < 100000:
            s = self.connect("127.0.0.1:%d" % port)
            s.sendall(batch)
            r = Reader(s)
            for _ in range(50):
                status, _, body = r.response()
                self.assertNotIn(secret, body, "served the file outside the root")
                counts[status] = counts.get(status, 0) + 1
                total += 1
            s.close()
        # The race was real: the swap was seen (some answers were not the inside file).
        self.assertGreater(counts.get(200, 0), 0, counts)
        self.assertGreater(sum(v for k, v in counts.items() if k != 200), 0, counts)
        return counts

    def test_swapped_symlink_race_walk_fallback(self):
        self.race_swapped_symlink(dict(os.environ, ZCIO_SERVE_NO_OPENAT2="1"))

    def test_swapped_symlink_race_openat2(self):
        self.race_swapped_symlink(None)


# Swaps argv[1] with argv[2], then with argv[3], in a loop for argv[4] seconds.
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
d, links, until = sys.argv[1], sys.argv[2:4], time.monotonic() + float(sys.argv[4])
def exchange(a, b):
    if hasattr(libc, "renameat2"):
        return libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE)
    return libc.syscall(316, AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE)
print("swapping", file=sys.stderr, flush=True)
i = 0
while time.monotonic() < until:
    link = links[(i // 2) % 2]
    if exchange(d, link) != 0:
        sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    i += 1
"""


class LimitsAndTimeouts(E2ETestCase):
    def setUp(self):
        super().setUp()
        self.root = self.path("www")
        os.makedirs(self.root)
        with open(os.path.join(self.root, "a.txt"), "wb") as f:
            f.write(b"a\n")

    def test_slow_head_times_out(self):
        proc, port = start_serve(self.spawn, self.root, "--header-timeout", "1s")
        s = self.connect("127.0.0.1:%d" % port)
        s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n")  # never finishes the head
        took = e2e.wait_closed(s, timeout=SHORT)
        self.assertLess(took, 5.0)
        self.assertGreater(took, 0.5)
        # The cut request gets an access-log line (nothing was answered: 408, as nginx).
        port_s = s.getsockname()[1]
        proc.wait_for(r'127\.0\.0\.1:%d "-" 408 0 - [\d.]+ms header-timeout' % port_s, timeout=SHORT)

    def test_idle_keep_alive_times_out(self):
        proc, port = start_serve(self.spawn, self.root, "--idle-timeout", "1s", "--header-timeout", "5s")
        s = self.connect("127.0.0.1:%d" % port)
        s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertEqual(read_response(s)[2], b"a\n")
        start = time.monotonic()
        e2e.wait_closed(s, timeout=SHORT)
        self.assertLess(time.monotonic() - start, 5.0)
        port_s = s.getsockname()[1]
        proc.wait_for(r'127\.0\.0\.1:%d "-" 408 0 - [\d.]+ms idle-timeout' % port_s, timeout=SHORT)

    def test_reader_that_never_reads_times_out(self):
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(os.urandom(32 * MiB))
        proc, port = start_serve(self.spawn, self.root, "--send-timeout", "1s")
        s = socket.socket()
        self.track(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(SHORT)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(3.5)  # read nothing: the server's send stalls, then gives up
        got = 0
        s.settimeout(SHORT)
        while True:
            try:
                d = s.recv(1 << 20)
            except (ConnectionResetError, socket.timeout):
                break
            if not d:
                break
            got += len(d)
        self.assertLess(got, 32 * MiB, "the whole body arrived: the send timeout did not fire")

    def test_max_connections(self):
        proc, port = start_serve(self.spawn, self.root, "--max-connections", "2", "--threads", "1")
        held = []
        for _ in range(2):
            s = self.connect("127.0.0.1:%d" % port)
            s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertEqual(read_response(s)[0], 200)  # accepted and counted
            held.append(s)
        s = self.connect("127.0.0.1:%d" % port)
        status, _, _ = read_response(s)
        self.assertEqual(status, 503)
        e2e.wait_closed(s)
        proc.wait_for(r"refused: --max-connections 2 reached")
        # A client that sends its request at once and reads a little later gets the
        # whole 503, not a reset: the refusal closes gracefully (its request is read
        # and dropped) like every other final answer.
        for i in range(12):
            s = self.connect("127.0.0.1:%d" % port)
            s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.01)
            status, h, body = read_response(s)
            self.assertEqual((status, body), (503, b"503 Service Unavailable\n"), i)
            self.assertEqual(h.get("connection"), "close")
            assert_orderly_eof(self, s)
        held[0].close()
        def ok():
            c = self.connect("127.0.0.1:%d" % port)
            c.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return read_response(c)[0] == 200
        e2e.wait_until(ok, SHORT, "a free slot after closing one connection")

    def test_errors_are_one_line(self):
        rc, _, err = e2e.run_zcio(["serve", self.path("nope")])
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "nope")
        rc, _, err = e2e.run_zcio(["serve", os.path.join(self.root, "a.txt")])
        self.assertEqual(rc, 2)
        self.assertOneLine(err, "not a directory")
        rc, _, err = e2e.run_zcio(["serve", self.root, "--listen", "nonsense"])
        self.assertEqual(rc, 2)
        self.assertOneLine(err)
        # A port another server listens on (SO_REUSEPORT must not let us share it).
        proc, port = start_serve(self.spawn, self.root)
        rc, _, err = e2e.run_zcio(["serve", self.root, "--listen", "127.0.0.1:%d" % port])
        self.assertEqual(rc, 1)
        self.assertOneLine(err, "Address already in use")

    def test_host_name_listens_on_every_address(self):
        """`--listen NAME:PORT` binds every address NAME resolves to, not only the
        first: here a name that /etc/hosts (bind-mounted in a private mount namespace)
        gives as ::1 and 127.0.0.1, in that order."""
        if shutil.which("unshare") is None:
            self.skipTest("unshare (util-linux) is not installed")
        hosts = self.path("hosts")
        with open(hosts, "w") as f:
            f.write("::1 zcio-dual\n127.0.0.1 zcio-dual\n")
        wrap = ["unshare", "-rm", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hosts]
        rc, out, err = run_bounded(wrap + ["getent", "ahosts", "zcio-dual"], SHORT)
        if rc != 0 or b"::1" not in out or b"127.0.0.1" not in out:
            self.skipTest("cannot bind-mount /etc/hosts in a user namespace: %s" % err.strip())
        p = self.spawn(wrap + [e2e.ZCIO, "serve", self.root, "--listen", "zcio-dual:0", "--threads", "2"])
        m = p.wait_for(r"serving .* on (.*) \(2 threads\)")[0]
        urls = m.group(1).split(" and ")
        ports = {re.search(r":(\d+)/$", u).group(1) for u in urls}
        self.assertEqual(len(ports), 1, urls)  # one port for every address
        port = int(ports.pop())
        self.assertEqual(sorted(urls), sorted(["http://[::1]:%d/" % port, "http://127.0.0.1:%d/" % port]))
        for addr in ("127.0.0.1:%d" % port, "[::1]:%d" % port):
            s = self.connect(addr)
            s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertEqual(read_response(s)[2], b"a\n", addr)

    def test_port_0_on_two_addresses_picks_again_when_taken(self):
        """Port 0 on a name with two addresses: the port the kernel picks for the first
        may be taken on the second (a client socket of another program); serve picks
        again instead of failing. Made likely here: in a private network namespace the
        ephemeral range is 4 ports and 2 of them are held on 127.0.0.1 only, so each pick
        for [::1] collides one time in two; six starts in a row all succeed."""
        if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
            self.skipTest("needs root, unshare and ip for a private network namespace")
        hosts = self.path("hosts")
        with open(hosts, "w") as f:
            f.write("::1 zcio-dual\n127.0.0.1 zcio-dual\n")
        starter = self.path("starter.py")
        with open(starter, "w") as f:
            f.write(PORT_PICK_STARTER)
        script = ('mount --bind "$0" /etc/hosts && ip link set lo up && '
                  'echo "40000 40003" > /proc/sys/net/ipv4/ip_local_port_range && exec "$@"')
        rc, out, err = run_bounded(["unshare", "-mn", "sh", "-c", script, hosts, sys.executable,
                                    starter, e2e.ZCIO, self.root], 60)
        if rc == 3:
            self.skipTest("no private network namespace here: %s" % err.strip())
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.decode().split(), ["started"] * 6, err)

    def test_fifo_is_403_without_blocking(self):
        """A local user who can write the tree puts a FIFO in it: opening it must not
        block the loop (O_NONBLOCK), and it is not served."""
        os.mkfifo(os.path.join(self.root, "pipe"))
        proc, port = start_serve(self.spawn, self.root, "--threads", "1")
        for path, want in (("/pipe", 403), ("/a.txt", 200)):
            s = self.connect("127.0.0.1:%d" % port)
            s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
            self.assertEqual(read_response(s)[0], want, path)

    def test_unix_socket(self):
        sock = self.path("s.sock")
        p = self.spawn([e2e.ZCIO, "serve", self.root, "--listen", "unix:" + sock, "--threads", "2"])
        p.wait_for(r"serving .* on http://unix:")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.track(s)
        s.settimeout(SHORT)
        s.connect(sock)
        s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertEqual(read_response(s)[2], b"a\n")

    def test_sigterm_exits_zero(self):
        proc, port = start_serve(self.spawn, self.root)
        proc.send_signal(15)
        self.assertEqual(proc.wait(SHORT), 0)


if __name__ == "__main__":
    e2e.main()
