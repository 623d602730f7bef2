"""Shared helpers of the stress suite (tests/stress/run.py): the proxy under test as a
child process, readings from /proc and from its Prometheus endpoint, the helper
processes of peers.py, and the deterministic data streams every check verifies.

Standard library only. Rules: loopback only; every wait has a timeout; every loop has
a count bound; every child runs in its own session and is killed at the end.
"""

import json
import os
import queue
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


class CheckFailed(AssertionError):
    pass


# Every child this suite starts (each in its own session), so that kill_children() can
# end them all when the runner is interrupted.
_CHILDREN = []


def kill_children():
    for p in list(_CHILDREN):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def wait_until(pred, timeout, what, interval=0.05):
    """Polls pred() until it returns a true value; raises CheckFailed after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / interval) + 2):
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise CheckFailed("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (20,000 here); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def mib(n):
    return n / MiB


# ---- deterministic data ---------------------------------------------------------------
#
# Every byte a check sends is a function of (seed, stream id, offset): the receiver
# compares what it gets with what it should get as it reads (so a lost, repeated or
# reordered byte is found with its offset) and both ends also hash the stream
# (sha256) so the checksums can be compared afterwards.

POOL_LEN = 4 * MiB + 4093          # not a power of two: chunk sizes never align with it
MAX_SLICE = 1 * MiB                # the largest slice data_at() hands out
_POOLS = {}


def pool(seed):
    p = _POOLS.get(seed)
    if p is None:
        raw = random.Random(seed).randbytes(POOL_LEN)
        p = raw + raw[:MAX_SLICE]  # so a slice never wraps
        _POOLS[seed] = p
    return p


def stream_start(seed, sid):
    return (sid * 2654435761 + 40503 * (sid >> 20) + seed) % POOL_LEN


def data_at(seed, sid, offset, n):
    """n (<= MAX_SLICE) bytes of stream `sid` from `offset` on."""
    assert n <= MAX_SLICE
    a = (stream_start(seed, sid) + offset) % POOL_LEN
    return pool(seed)[a:a + n]


class StreamCheck:
    """Receiving side of a stream: counts, hashes and compares with the expected bytes."""

    def __init__(self, seed, sid):
        import hashlib
        self.seed = seed
        self.sid = sid
        self.n = 0
        self.h = hashlib.sha256()
        self.bad_at = None  # offset of the first wrong byte

    def feed(self, data):
        if self.bad_at is None:
            off = 0
            while off < len(data):
                k = min(len(data) - off, MAX_SLICE)
                want = data_at(self.seed, self.sid, self.n + off, k)
                got = data[off:off + k]
                if got != want:
                    i = next(j for j in range(k) if got[j] != want[j])
                    self.bad_at = self.n + off + i
                    break
                off += k
        self.h.update(data)
        self.n += len(data)

    def sha(self):
        return self.h.hexdigest()


class StreamSource:
    """Sending side of a stream: hands out the next bytes and hashes them."""

    def __init__(self, seed, sid):
        import hashlib
        self.seed = seed
        self.sid = sid
        self.n = 0
        self.h = hashlib.sha256()

    def next(self, k):
        d = data_at(self.seed, self.sid, self.n, min(k, MAX_SLICE))
        self.h.update(d)
        self.n += len(d)
        return d

    def sha(self):
        return self.h.hexdigest()


# ---- /proc ----------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid, key):
    """A kB field of /proc/PID/status (VmRSS, RssAnon, ...) in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    return proc_status(pid, "VmRSS")


def cpu_seconds(pid):
    """utime + stime of a whole process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def fds(pid):
    """{kind: count} of a process's descriptors: socket, pipe, anon (epoll, eventfd,
    signalfd, timerfd), file, other; and 'total'."""
    out = {"total": 0, "socket": 0, "pipe": 0, "anon": 0, "file": 0, "other": 0}
    d = "/proc/%d/fd" % pid
    for name in os.listdir(d):
        try:
            link = os.readlink(os.path.join(d, name))
        except OSError:
            continue  # closed while we looked
        out["total"] += 1
        if link.startswith("socket:"):
            out["socket"] += 1
        elif link.startswith("pipe:"):
            out["pipe"] += 1
        elif link.startswith("anon_inode:"):
            out["anon"] += 1
        elif link.startswith("/"):
            out["file"] += 1
        else:
            out["other"] += 1
    return out


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def slabinfo():
    """{cache: bytes in active objects} from /proc/slabinfo (root only), or {}."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith(("slabinfo", "#")):
                    continue
                p = line.split()
                out[p[0]] = int(p[1]) * int(p[3])
    except OSError:
        return {}
    return out


def meminfo():
    """{field: KiB} from /proc/meminfo."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def sockstat():
    """TCP line of /proc/net/sockstat: {'inuse', 'orphan', 'tw', 'alloc', 'mem'(pages)}."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()[1:]
                return {p[i]: int(p[i + 1]) for i in range(0, len(p), 2)}
    return {}


# ---- metrics ---------------------------------------------------------------------------

_METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def http_get(port, path="/metrics", timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
        data = bytearray()
        for _ in range(10000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def parse_metrics(text):
    """Prometheus text -> {(name, labels): value}; labels is a tuple of (key, value)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            raise CheckFailed("not a Prometheus sample line: %r" % line)
        labels = tuple(re.findall(r'(\w+)="([^"]*)"', m.group(2))) if m.group(2) else ()
        out[(m.group(1), labels)] = float(m.group(3))
    return out


# ---- the proxy under test ----------------------------------------------------------------

CLOSED_RE = re.compile(r" closed client (\S+) upstream (\S+) sent (\d+) received (\d+) "
                       r"in ([\d.]+)s path (\S+): (.*)$")


class ClosedRecord:
    __slots__ = ("client", "upstream", "sent", "received", "secs", "path", "reason")

    def __init__(self, m):
        self.client, self.upstream = m.group(1), m.group(2)
        self.sent, self.received = int(m.group(3)), int(m.group(4))
        self.secs = float(m.group(5))
        self.path, self.reason = m.group(6), m.group(7)

    @property
    def client_port(self):
        return int(self.client.rsplit(":", 1)[1])


class Proxy:
    """`zcio proxy` in its own session, with --metrics on a free port. stderr is read
    line by line by a thread (the close log of every connection is kept)."""

    def __init__(self, zcio, args, threads=2, nofile=None, metrics=True, start_timeout=20.0):
        argv = [zcio, "proxy"] + [str(a) for a in args] + ["--threads", str(threads)]
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]
        self.argv = argv

        def limit():
            if nofile is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True,
                                      preexec_fn=limit)
        _CHILDREN.append(self.popen)
        self._lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            m = self.wait_for(r"listening on (\S+) → (\S+)", timeout=start_timeout)[0]
            self.addr = m.group(1)
            self.port = int(self.addr.rsplit(":", 1)[1])
            self.metrics_port = None
            if metrics:
                mm = self.wait_for(r"metrics on http://(\S+)/metrics", timeout=start_timeout)[0]
                self.metrics_port = int(mm.group(1).rsplit(":", 1)[1])
                # Answered by the main loop once it runs: by then the signalfd exists,
                # so a descriptor reading taken now is the steady one.
                self.metrics()
        except Exception:
            self.kill()
            raise

    def _read(self):
        for raw in iter(self.popen.stderr.readline, b""):
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def lines(self):
        with self._cond:
            return list(self._lines)

    def tail(self, n=15):
        return "\n".join(self.lines()[-n:])

    def wait_for(self, pattern, timeout=20.0, count=1, start=0):
        """Waits for `count` stderr lines matching `pattern` (from line `start` on)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            for _ in range(1000000):
                found = [m for m in (rx.search(l) for l in self._lines[start:]) if m]
                if len(found) >= count:
                    return found[:count]
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise CheckFailed("proxy exited (%s) before logging %r:\n%s"
                                      % (self.popen.poll(), pattern, "\n".join(self._lines[-15:])))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CheckFailed("%d of %d line(s) matching %r within %.1fs; last lines:\n%s"
                                      % (len(found), count, pattern, timeout,
                                         "\n".join(self._lines[-15:])))
                self._cond.wait(min(remaining, 0.5))
        raise CheckFailed("wait_for: loop bound")

    def wait_closed(self, count, timeout=15.0):
        """Waits until `count` close lines were read (the reader thread may lag behind
        the peers, which see the close after the line was written); returns them all."""
        return wait_until(lambda: (lambda c: c if len(c) >= count else None)(self.closed()), timeout,
                          "%d close lines in the proxy log" % count, interval=0.05)

    def wait_reader(self, timeout=10.0):
        """After the proxy exited: waits until its stderr was read to the end."""
        self._reader.join(timeout)

    def closed(self):
        """ClosedRecord of every `closed client` line so far."""
        out = []
        for l in self.lines():
            m = CLOSED_RE.search(l)
            if m:
                out.append(ClosedRecord(m))
        return out

    def metrics(self):
        status, body = http_get(self.metrics_port)
        check(status == 200, "GET /metrics: HTTP %d" % status)
        return parse_metrics(body)

    @staticmethod
    def total(metrics, name):
        """Sum of a metric over all its label sets (routes or loops)."""
        return sum(v for (n, _), v in metrics.items() if n == name)

    def metric(self, name):
        return self.total(self.metrics(), name)

    def pools(self):
        """{'pipes_leased', 'pipes_idle', 'buffers_leased', 'buffers_idle'} summed over
        loops, plus '<name>_max' (the largest per-loop value)."""
        m = self.metrics()
        out = {}
        for g in ("pipes_leased", "pipes_idle", "buffers_leased", "buffers_idle"):
            vals = [v for (n, _), v in m.items() if n == "zcio_" + g]
            out[g] = int(sum(vals))
            out[g + "_max"] = int(max(vals)) if vals else 0
        return out

    def wait_idle(self, timeout=15.0):
        """Waits until no connection is open and no pipe or buffer is leased (the pool
        gauges are refreshed twice a second); returns the pools reading."""
        def idle():
            m = self.metrics()
            if self.total(m, "zcio_connections_active") != 0:
                return None
            p = self.pools()
            return p if p["pipes_leased"] == 0 and p["buffers_leased"] == 0 else None
        p = wait_until(idle, timeout, "no open connection and no leased pipe or buffer",
                       interval=0.1)
        time.sleep(0.6)  # one more gauge refresh: still idle?
        p = self.pools()
        check(p["pipes_leased"] == 0 and p["buffers_leased"] == 0, "pools not idle: %r" % p)
        return p

    def wait_fds(self, base, timeout=10.0):
        """Waits until the proxy holds exactly its descriptors of `base` (a fds() reading
        taken before any connection) plus two per pipe its pools report (idle pipes are
        kept for reuse, up to the pool bound). Returns the pools reading."""
        def settled():
            p = self.pools()
            now = self.fds()
            want_pipe = 2 * (p["pipes_idle"] + p["pipes_leased"]) + base["pipe"]
            if now["pipe"] == want_pipe and now["total"] - now["pipe"] == base["total"] - base["pipe"]:
                return p
            self._last_fds = (now, p)
            return None
        self._last_fds = None
        try:
            return wait_until(settled, timeout, "descriptors", interval=0.2)
        except CheckFailed:
            raise CheckFailed("the proxy's descriptors did not come back to %r plus two per pooled "
                              "pipe within %.1fs: now %r, pools %r"
                              % (base, timeout, self._last_fds[0], self._last_fds[1]))

    def rss_kib(self):
        return rss_kib(self.pid)

    def fds(self):
        return fds(self.pid)

    def fd_count(self):
        return fd_count(self.pid)

    def cpu(self):
        return cpu_seconds(self.pid)

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait_exit(self, timeout):
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code (None if killed)."""
        if not self.alive():
            return self.popen.returncode
        os.kill(self.pid, signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
        return code

    def kill(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._reader.join(5)


# ---- helper processes (peers.py) ---------------------------------------------------------

class Peer:
    """`python3 peers.py ROLE ...` in its own session. It answers one JSON line on stdout
    for its start and for every command written to its stdin."""

    def __init__(self, role, *args, start_timeout=20.0):
        argv = [sys.executable, os.path.join(HERE, "peers.py"), role] + [str(a) for a in args]
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        _CHILDREN.append(self.popen)
        self._out = queue.Queue()
        self._err = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        try:
            self.hello = self._answer(start_timeout, "start of peers.py %s" % role)
        except Exception:
            self.kill()
            raise

    def _read_out(self):
        for raw in iter(self.popen.stdout.readline, b""):
            self._out.put(raw)
        self._out.put(None)

    def _read_err(self):
        for raw in iter(self.popen.stderr.readline, b""):
            if len(self._err) < 200:
                self._err.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def pid(self):
        return self.popen.pid

    def _answer(self, timeout, what):
        try:
            raw = self._out.get(timeout=timeout)
        except queue.Empty:
            raise CheckFailed("peers.py: no answer to %s within %.1fs" % (what, timeout))
        if raw is None:
            time.sleep(0.2)
            raise CheckFailed("peers.py exited (%s) during %s: %s"
                              % (self.popen.poll(), what, "\n".join(self._err[-10:])))
        msg = json.loads(raw)
        if "error" in msg:
            raise CheckFailed("peers.py: %s: %s" % (what, msg["error"]))
        return msg

    def send(self, cmd, **kw):
        """Sends a command without waiting; answer() reads its reply."""
        kw["cmd"] = cmd
        self.popen.stdin.write((json.dumps(kw) + "\n").encode())
        self.popen.stdin.flush()

    def answer(self, timeout=60.0, what="a command"):
        return self._answer(timeout, what)

    def request(self, cmd, timeout=60.0, **kw):
        self.send(cmd, **kw)
        return self._answer(timeout, cmd)

    def close(self, timeout=15.0):
        try:
            self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass


# ---- plain sockets -----------------------------------------------------------------------

def rst_close(sock):
    """Closes with a TCP RST (SO_LINGER on, timeout 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def listener(backlog=1024):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s


def read_to_end(sock, chk, timeout, limit_bytes=None):
    """Reads until end of stream, an error or `timeout`; feeds `chk`. Returns how the
    stream ended: 'eof', 'reset', 'timeout' or the error's name."""
    deadline = time.monotonic() + timeout
    for _ in range(10000000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        sock.settimeout(remaining)
        try:
            data = sock.recv(256 * KiB)
        except socket.timeout:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        except OSError as e:
            return type(e).__name__
        if not data:
            return "eof"
        chk.feed(data)
        if limit_bytes is not None and chk.n >= limit_bytes:
            return "limit"
    return "loop bound"
