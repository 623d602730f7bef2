"""Shared helpers of the end-to-end tests: they run the real `zcio` binary.

Every test file is a script: `python3 tests/e2e/test_x.py --zcio /path/to/zcio`
(or ZCIO_BIN=/path/to/zcio). Standard library only.

Rules the helpers enforce:
  - loopback only; ports are 0 (the real one read from the log) or found free by
    binding port 0 first;
  - every wait is bounded;
  - every process runs in its own session and its whole group is killed in tearDown;
  - content is compared by sha256 of random data.
"""

import hashlib
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ZCIO = None  # path of the binary under test, set by main()

# Generous: the suite must pass on a loaded 2-core machine and a Debug build.
START_TIMEOUT = 20.0
IO_TIMEOUT = 60.0
SHORT = 10.0


def main():
    """Parses --zcio PATH (or ZCIO_BIN) and hands the rest of argv to unittest."""
    global ZCIO
    argv = [sys.argv[0]]
    args = sys.argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--zcio" and i + 1 < len(args):
            ZCIO = args[i + 1]
            i += 2
            continue
        if a.startswith("--zcio="):
            ZCIO = a.split("=", 1)[1]
            i += 1
            continue
        argv.append(a)
        i += 1
    if ZCIO is None:
        ZCIO = os.environ.get("ZCIO_BIN")
    if not ZCIO:
        sys.exit("usage: %s --zcio /path/to/zcio [unittest args] (or set ZCIO_BIN)" % sys.argv[0])
    ZCIO = os.path.abspath(ZCIO)
    if not os.access(ZCIO, os.X_OK):
        sys.exit("zcio binary not found or not executable: %s" % ZCIO)
    # 1,000 connections need ~2,000 descriptors here and more in the proxy (inherited).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    unittest.main(argv=argv, verbosity=2)


# ---- data -----------------------------------------------------------------------

def sha(data):
    return hashlib.sha256(data).hexdigest()


def random_bytes(n):
    return os.urandom(n)


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def write_random_file(path, n):
    data = random_bytes(n)
    with open(path, "wb") as f:
        f.write(data)
    return data


# ---- waiting --------------------------------------------------------------------

def wait_until(pred, timeout, what, interval=0.05):
    """Polls pred() until it returns a true value; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def free_port():
    """A port that was free a moment ago (bind 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a "localhost" that names ::1 first (Debian's default /etc/hosts) ---------------

def localhost_v6_first_prefix(tmpdir):
    """An argv prefix under which "localhost" resolves to ::1 first and 127.0.0.1 next,
    as with Debian's default "::1 localhost" line; None when that cannot be had here.
    Either the system resolver already does it (prefix []), or unshare(1) gives the one
    process a private mount namespace (as root, or in a user namespace) with a hosts
    file of ours bound over /etc/hosts; the system's own file is never touched."""
    probe = [sys.executable, "-c",
             "import socket; a = [x[4][0] for x in socket.getaddrinfo('localhost', 1, "
             "type=socket.SOCK_STREAM)]; print(a[:1] == ['::1'] and '127.0.0.1' in a)"]
    candidates = [[]]
    unshare = shutil.which("unshare")
    if unshare:
        hosts = os.path.join(tmpdir, "hosts")
        with open(hosts, "w") as f:
            f.write("::1 localhost\n127.0.0.1 localhost\n")
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        candidates.append([unshare, "--mount", "--", "sh", "-c", script, hosts])
        candidates.append([unshare, "--mount", "--map-root-user", "--", "sh", "-c", script, hosts])
    for prefix in candidates:
        try:
            out = subprocess.run(prefix + probe, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 timeout=SHORT).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.strip() == b"True":
            return prefix
    return None


def free_port_range(count, attempts=50):
    """`count` consecutive ports that were free a moment ago."""
    for _ in range(attempts):
        base = free_port()
        if base + count - 1 > 65535:
            continue
        ok = True
        for p in range(base + 1, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise unittest.SkipTest("no %d consecutive free ports found" % count)


def tcp_listening(port):
    """True when something listens on TCP `port` (from /proc/net/tcp{,6}; no connection)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def listening_ports(pid):
    """Sorted TCP ports a process listens on, one entry per listening socket."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    ports = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and parts[9] in inodes:
                        ports.append(int(parts[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            continue
    return sorted(ports)


def wait_tcp_listening(port, timeout=START_TIMEOUT, proc=None):
    def ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError("process exited (%s) before listening on %d: %s"
                                 % (proc.poll(), port, proc.stderr_text()))
        return tcp_listening(port)
    wait_until(ready, timeout, "a listener on port %d" % port)


def wait_unix_listening(path, timeout=START_TIMEOUT, proc=None):
    def ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError("process exited (%s) before listening on %s: %s"
                                 % (proc.poll(), path, proc.stderr_text()))
        return os.path.exists(path)
    wait_until(ready, timeout, "a Unix listener at %s" % path)


# ---- processes ------------------------------------------------------------------

class Proc:
    """A child in its own session (process group); stderr collected line by line."""

    def __init__(self, args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=None, env=None,
                 pass_fds=()):
        self.args = [str(a) for a in args]
        self.popen = subprocess.Popen(self.args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                      cwd=cwd, env=env, start_new_session=True, pass_fds=pass_fds)
        self._lines = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for raw in iter(self.popen.stderr.readline, b""):
                with self._cond:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def pid(self):
        return self.popen.pid

    def poll(self):
        return self.popen.poll()

    def lines(self):
        with self._cond:
            return list(self._lines)

    def stderr_text(self):
        return "\n".join(self.lines())

    def wait_for(self, pattern, timeout=START_TIMEOUT, count=1, start=0):
        """Waits for `count` stderr lines matching `pattern` (from line `start` on) and
        returns their re.Match objects."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        found = []
        i = start
        with self._cond:
            while True:
                while i < len(self._lines):
                    m = rx.search(self._lines[i])
                    if m:
                        found.append(m)
                        if len(found) == count:
                            return found
                    i += 1
                if self._eof:
                    raise AssertionError("%r: %d of %d line(s) matching %r before stderr closed "
                                         "(exit %s); stderr:\n%s" % (self.args[:2], len(found), count, pattern,
                                                                     self.popen.poll(), "\n".join(self._lines)))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("timed out after %.1fs: %d of %d line(s) matching %r; stderr:\n%s"
                                         % (timeout, len(found), count, pattern, "\n".join(self._lines)))
                self._cond.wait(remaining)

    def count_lines(self, pattern):
        rx = re.compile(pattern)
        return sum(1 for l in self.lines() if rx.search(l))

    def send_signal(self, sig):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout):
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%r did not exit within %.1fs; stderr:\n%s"
                                 % (self.args[:2], timeout, self.stderr_text()))
        # The process is gone, but its last lines may still be on their way through the
        # pipe: wait for the reader to see end of file, so stderr_text() is complete.
        self._reader.join(timeout=SHORT)
        return rc

    def kill(self):
        """Kills the whole process group (safe after exit: a reaped group is empty)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=SHORT)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=SHORT)
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def run_zcio(args, timeout=SHORT, stdin=subprocess.DEVNULL, input_bytes=None, cwd=None, prefix=()):
    """Runs zcio to completion in its own session; returns (exit code, stdout, stderr).
    `prefix`: an argv to run zcio under (localhost_v6_first_prefix)."""
    argv = list(prefix) + [ZCIO] + [str(a) for a in args]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE if input_bytes is not None else stdin,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(input=input_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("%r hung (no exit within %.1fs)" % (argv, timeout))
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(timeout=SHORT)
    return p.returncode, out, err.decode("utf-8", "replace")


# ---- upstream servers (Python, threaded) ----------------------------------------

class Record:
    """What one upstream connection received."""

    def __init__(self, keep):
        self.n = 0
        self._sha = hashlib.sha256()
        self.keep = keep
        self.data = bytearray()
        self.t_first = None
        self.t_last = None
        self.first_len = 0
        self.error = None
        self.done = threading.Event()
        self.conn = None

    def feed(self, chunk):
        now = time.monotonic()
        if self.t_first is None:
            self.t_first = now
            self.first_len = len(chunk)
        self.t_last = now
        self.n += len(chunk)
        self._sha.update(chunk)
        if self.keep:
            self.data += chunk

    @property
    def sha(self):
        return self._sha.hexdigest()

    def wait(self, timeout=IO_TIMEOUT):
        if not self.done.wait(timeout):
            raise AssertionError("upstream connection did not finish within %.1fs (got %d bytes)"
                                 % (timeout, self.n))
        return self


def recv_into_record(conn, rec, chunk=256 * 1024):
    while True:
        data = conn.recv(chunk)
        if not data:
            return
        rec.feed(data)


def echo_handler(trailer=b""):
    """Echoes every byte; at end of stream sends `trailer`, then closes."""
    def handle(conn, rec):
        while True:
            data = conn.recv(256 * 1024)
            if not data:
                break
            rec.feed(data)
            conn.sendall(data)
        if trailer:
            conn.sendall(trailer)
        conn.shutdown(socket.SHUT_WR)
    return handle


def source_sink_handler(blob, shutdown_after_send=True):
    """Sends `blob` (then shuts down its write side) while recording all it receives."""
    def handle(conn, rec):
        errors = []

        def send():
            try:
                conn.sendall(blob)
                if shutdown_after_send:
                    conn.shutdown(socket.SHUT_WR)
            except OSError as e:
                errors.append(e)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        recv_into_record(conn, rec)
        t.join(IO_TIMEOUT)
        if errors:
            raise errors[0]
    return handle


def sink_handler():
    def handle(conn, rec):
        recv_into_record(conn, rec)
    return handle


class Upstream:
    """A threaded TCP or Unix server: one thread per connection runs handler(conn, record)."""

    def __init__(self, handler, host="127.0.0.1", port=0, unix_path=None, keep=False, backlog=128,
                 family=socket.AF_INET):
        self.handler = handler
        self.keep = keep
        self.records = []
        self._cond = threading.Condition()
        self._stop = False
        self._threads = []
        if unix_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.address = "unix:" + unix_path
            self.port = None
        else:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.port = self.sock.getsockname()[1]
            self.address = ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (host, self.port)
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT)
            rec = Record(self.keep)
            rec.conn = conn
            with self._cond:
                self.records.append(rec)
                self._cond.notify_all()
            t = threading.Thread(target=self._run, args=(conn, rec), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn, rec):
        try:
            self.handler(conn, rec)
        except Exception as e:  # recorded; the test decides whether it matters
            rec.error = e
        finally:
            try:
                conn.close()
            except OSError:
                pass
            rec.done.set()

    def connections(self):
        with self._cond:
            return len(self.records)

    def wait_connections(self, n, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.records) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("upstream got %d of %d connection(s) within %.1fs"
                                         % (len(self.records), n, timeout))
                self._cond.wait(remaining)
            return list(self.records[:n])

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass
        self._acceptor.join(SHORT)
        with self._cond:
            records = list(self.records)
        for r in records:
            try:
                r.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(SHORT)


class SelectorEcho:
    """A single-threaded echo server for many connections at once."""

    def __init__(self, backlog=4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.accepted = 0
        self.open = 0
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        pending = {}  # conn -> bytes not yet echoed
        try:
            while not self._stop:
                for key, mask in sel.select(timeout=0.2):
                    if key.data is None:
                        while True:
                            try:
                                conn, _ = self.sock.accept()
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError:
                                return
                            conn.setblocking(False)
                            pending[conn] = b""
                            sel.register(conn, selectors.EVENT_READ, "c")
                            with self._lock:
                                self.accepted += 1
                                self.open += 1
                        continue
                    conn = key.fileobj
                    closed = False
                    if mask & selectors.EVENT_READ:
                        try:
                            data = conn.recv(65536)
                            if data:
                                pending[conn] += data
                            else:
                                closed = True
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            closed = True
                    if not closed and pending[conn]:
                        try:
                            n = conn.send(pending[conn])
                            pending[conn] = pending[conn][n:]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            closed = True
                    if closed:
                        sel.unregister(conn)
                        conn.close()
                        del pending[conn]
                        with self._lock:
                            self.open -= 1
                        continue
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[conn] else 0)
                    if key.events != want:
                        sel.modify(conn, want, "c")
        finally:
            for conn in list(pending):
                conn.close()
            sel.close()

    def close(self):
        self._stop = True
        self._thread.join(SHORT)
        self.sock.close()


# ---- clients --------------------------------------------------------------------

def parse_hostport(addr):
    """"127.0.0.1:80" or "[::1]:80" -> (family, (host, port))."""
    host, port = addr.rsplit(":", 1)
    if host.startswith("["):
        return socket.AF_INET6, (host[1:-1], int(port))
    return socket.AF_INET, (host, int(port))


def recv_all(sock, timeout=IO_TIMEOUT):
    """Reads until end of stream; returns (bytes, monotonic time of first and last byte)."""
    sock.settimeout(timeout)
    out = bytearray()
    t_first = t_last = None
    while True:
        data = sock.recv(256 * 1024)
        if not data:
            return bytes(out), t_first, t_last
        now = time.monotonic()
        if t_first is None:
            t_first = now
        t_last = now
        out += data


def recv_exactly(sock, n, timeout=IO_TIMEOUT):
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise AssertionError("end of stream after %d of %d bytes" % (len(out), n))
        out += data
    return bytes(out)


def send_in_thread(sock, blob, shutdown=True):
    """Sends `blob` from a thread (then shuts down the write side); join with .join()."""
    errors = []

    def run():
        try:
            sock.sendall(blob)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.errors = errors
    return t


def join_sender(t, timeout=IO_TIMEOUT):
    t.join(timeout)
    if t.is_alive():
        raise AssertionError("sender thread still running after %.1fs" % timeout)
    if t.errors:
        raise t.errors[0]


def wait_closed(sock, timeout=SHORT):
    """Waits until the peer closes (EOF or reset); returns the seconds it took.
    Bytes that arrive first are read and ignored."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("connection still open after %.1fs" % timeout)
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start


def rst_close(sock):
    """Closes with a TCP RST (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def http_get(port, path="/metrics", timeout=SHORT):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
        data = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


_METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text):
    """Prometheus text -> {(name, labels): value}; labels is a tuple of (key, value)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            raise AssertionError("not a Prometheus sample line: %r" % line)
        labels = ()
        if m.group(2):
            labels = tuple(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


# ---- test base ------------------------------------------------------------------

class ProxyHandle:
    def __init__(self, proc, listens, metrics_port):
        self.proc = proc
        self.listens = listens  # [(route, address, upstream)]
        self.metrics_port = metrics_port

    @property
    def addr(self):
        return self.listens[0][1]

    @property
    def port(self):
        return int(self.addr.rsplit(":", 1)[1])

    def address_of(self, route):
        for r, a, _ in self.listens:
            if r == route:
                return a
        raise KeyError(route)

    def metrics(self):
        status, body = http_get(self.metrics_port)
        if status != 200:
            raise AssertionError("GET /metrics: HTTP %d" % status)
        return parse_metrics(body)

    def metric(self, name, route="default"):
        return self.metrics().get((name, (("route", route),)), 0)

    def wait_metric(self, name, value, route="default", timeout=SHORT):
        """Waits until the metric equals `value` (counters land when connections close)."""
        return wait_until(lambda: self.metric(name, route) == value or None, timeout,
                          "%s{route=%s} == %s (now %s)" % (name, route, value, self.metric(name, route)))


class E2ETestCase(unittest.TestCase):
    """Tracks everything a test starts and tears it all down."""

    def setUp(self):
        self._procs = []
        self._closers = []
        self.tmp = tempfile.mkdtemp(prefix="zcio-e2e-")

    def tearDown(self):
        for p in self._procs:
            p.kill()
        for c in reversed(self._closers):
            try:
                c()
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def spawn(self, args, **kw):
        p = Proc(args, **kw)
        self._procs.append(p)
        return p

    def upstream(self, handler, **kw):
        u = Upstream(handler, **kw)
        self._closers.append(u.close)
        return u

    def selector_echo(self):
        u = SelectorEcho()
        self._closers.append(u.close)
        return u

    def track(self, sock):
        self._closers.append(sock.close)
        return sock

    def connect(self, addr, timeout=SHORT):
        """Connects to "HOST:PORT", "[v6]:PORT" or "unix:/path"."""
        if addr.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.track(s)
            s.settimeout(timeout)
            s.connect(addr[len("unix:"):])
        else:
            family, sa = parse_hostport(addr)
            s = socket.socket(family, socket.SOCK_STREAM)
            self.track(s)
            s.settimeout(timeout)
            s.connect(sa)
        s.settimeout(IO_TIMEOUT)
        return s

    def start_proxy(self, *args, listens=1, metrics=True, threads=2, log_level=None):
        argv = [ZCIO]
        if log_level:
            argv += ["--log-level", log_level]
        argv += ["proxy"] + [str(a) for a in args]
        if threads and "--threads" not in argv and "-t" not in argv:
            argv += ["--threads", str(threads)]
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]
        p = self.spawn(argv)
        found = p.wait_for(r"(\S+) listening on (\S+) → (\S+)", count=listens)
        metrics_port = None
        if metrics:
            m = p.wait_for(r"metrics on http://(\S+)/metrics")[0]
            metrics_port = int(m.group(1).rsplit(":", 1)[1])
        return ProxyHandle(p, [(m.group(1), m.group(2), m.group(3)) for m in found], metrics_port)

    def assertOneLine(self, stderr, *needles):
        """stderr is exactly one non-empty line that contains every needle."""
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, "expected exactly one line on stderr, got:\n%s" % stderr)
        line = lines[0]
        self.assertTrue(line.strip(), "empty line on stderr")
        for bad in ("terminate called", "what():", "Aborted", "core dumped", "std::"):
            self.assertNotIn(bad, line)
        for n in needles:
            self.assertIn(n, line, "stderr line does not name %r: %s" % (n, line))
        return line
