"""The "stalled" peers: an upstream that stops reading and clients that fill the path.

Run as roles of peers.py (stall-upstream, stall-clients) by the stress suite's
stalled check and by make compare's stalled case (bench/compare/compare.py).

stall-upstream [PORT | unix:PATH]: accepts and holds connections without reading
them. A TCP listener gets a small receive buffer (inherited by what it accepts).
Both checks use a Unix socket upstream: on loopback (MTU 64 KiB) the kernel grows
the proxy's TCP send buffer toward the upstream to tcp_wmem's maximum (4 MiB here)
at once, so filling a TCP path costs over 4 MiB of kernel memory per connection;
a Unix socket's send buffer stays at wmem_default (208 KiB). Either way the proxy
soon finds the upstream side full and has to hold what it already read: the bytes
in its pipe (or buffer) and in its sockets' queues.
Commands: count; drain (read every held connection to end of stream, hashing it,
then close it); close.

stall-clients PORT SEED: connect n (small send buffers, so the client side is full
soon too); fill (send each connection's stream without blocking until no
connection could send for `stuck_for` seconds: the path is full end to end);
finish (send `tail` more bytes on each, shut down writing, wait for end of stream
back); close. Streams are StreamSource(SEED, connection number): drain's and
finish's (bytes, sha256) lists, sorted, must be equal.
"""

import selectors
import socket
import threading
import time

import support
from support import KiB, MiB, StreamSource

SMALL_BUFFER = 8 * KiB  # the kernel doubles it


class StallUpstream:
    def __init__(self, addr="0"):
        if addr.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(addr[len("unix:"):])
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
            s.bind(("127.0.0.1", int(addr)))
        s.listen(4096)
        s.settimeout(0.2)
        self.sock = s
        self.conns = []
        self.lock = threading.Lock()
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        for _ in range(100000000):
            if self.stop:
                return
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                time.sleep(0.05)  # EMFILE, or the socket closed
                continue
            with self.lock:
                self.conns.append(c)

    def drain(self, timeout):
        """Reads every held connection to its end; returns sorted [bytes, sha256]."""
        import hashlib
        with self.lock:
            conns, self.conns = self.conns, []
        sel = selectors.EpollSelector()
        for c in conns:
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, [0, hashlib.sha256()])
        done, errors = [], 0
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000000):
                if len(done) + errors >= len(conns) or time.monotonic() > deadline:
                    break
                for key, _ in sel.select(0.2):
                    errors += read_some(sel, key, done)
        finally:
            sel.close()
            for c in conns:
                c.close()
        return {"streams": sorted(done), "eof": len(done), "errors": errors,
                "missing": len(conns) - len(done) - errors}

    def command(self, msg):
        if msg["cmd"] == "count":
            with self.lock:
                return {"accepted": len(self.conns)}
        if msg["cmd"] == "drain":
            return self.drain(msg.get("timeout", 120))
        if msg["cmd"] == "close":
            with self.lock:
                conns, self.conns = self.conns, []
            for c in conns:
                c.close()
            return {"closed": len(conns)}
        return {"error": "unknown command %r" % msg["cmd"]}


def read_some(sel, key, done):
    """One read of a draining connection; at its end, records it. Returns 1 on an error."""
    try:
        data = key.fileobj.recv(256 * KiB)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        sel.unregister(key.fileobj)
        return 1
    if data:
        key.data[0] += len(data)
        key.data[1].update(data)
        return 0
    sel.unregister(key.fileobj)
    done.append([key.data[0], key.data[1].hexdigest()])
    return 0


class StallClients:
    def __init__(self, port, seed):
        self.port = port
        self.seed = seed
        self.conns = []  # [socket, StreamSource, bytes not yet sent]

    def connect(self, n):
        failed, errors = 0, []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
                s.settimeout(10)
                s.connect(("127.0.0.1", self.port))
                s.setblocking(False)
            except OSError as e:
                s.close()
                failed += 1
                if len(errors) < 5:
                    errors.append(str(e))
                continue
            self.conns.append([s, StreamSource(self.seed, len(self.conns) + 1), b""])
        return {"open": len(self.conns), "failed": failed, "errors": errors}

    def fill(self, stuck_for, max_bytes, timeout):
        """Sends until no connection took a byte for `stuck_for` seconds (or each sent
        `max_bytes`, or `timeout`); returns the bytes sent per connection (min, max)."""
        t0 = time.monotonic()
        last = t0
        for _ in range(100000000):
            now = time.monotonic()
            if now - last > stuck_for or now - t0 > timeout:
                break
            moved = sum([send_some(c, max_bytes) for c in self.conns])
            if moved:
                last = time.monotonic()
            else:
                time.sleep(0.02)
        sent = [c[1].n - len(c[2]) for c in self.conns]
        return {"min": min(sent, default=0), "max": max(sent, default=0), "total": sum(sent),
                "capped": sum(1 for k in sent if k >= max_bytes), "secs": time.monotonic() - t0}

    def finish(self, tail, timeout):
        """Sends `tail` more bytes on each connection and shuts down writing; waits for
        end of stream back. Returns sorted [bytes sent, sha256] and what came back."""
        sel = selectors.EpollSelector()
        for c in self.conns:
            c[2] += c[1].next(tail)
            sel.register(c[0], selectors.EVENT_WRITE, c)
        ended, extra, errors = 0, 0, 0
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000000):
                if ended + errors >= len(self.conns) or time.monotonic() > deadline:
                    break
                for key, ev in sel.select(0.2):
                    r = finish_step(sel, key, ev)
                    ended += r == "eof"
                    errors += r == "error"
                    extra += r if isinstance(r, int) else 0
        finally:
            sel.close()
        streams = sorted([c[1].n, c[1].sha()] for c in self.conns)
        return {"streams": streams, "eof": ended, "errors": errors, "extra_bytes": extra}

    def command(self, msg):
        if msg["cmd"] == "connect":
            return self.connect(msg["n"])
        if msg["cmd"] == "fill":
            return self.fill(msg.get("stuck_for", 0.5), msg.get("max_bytes", 16 * MiB),
                             msg.get("timeout", 120))
        if msg["cmd"] == "finish":
            return self.finish(msg.get("tail", 64 * KiB), msg.get("timeout", 120))
        if msg["cmd"] == "close":
            n = len(self.conns)
            for c in self.conns:
                support.rst_close(c[0])
            self.conns = []
            return {"closed": n}
        return {"error": "unknown command %r" % msg["cmd"]}


def send_some(c, max_bytes):
    """Sends what one connection can take now; returns the bytes sent."""
    sock, src, _ = c
    moved = 0
    for _ in range(64):
        if not c[2]:
            if src.n >= max_bytes:
                break
            c[2] = src.next(64 * KiB)
        try:
            k = sock.send(c[2])
        except (BlockingIOError, InterruptedError):
            break
        c[2] = c[2][k:]
        moved += k
    return moved


def finish_step(sel, key, ev):
    """One step of finish() on a connection: write the rest, then SHUT_WR, then read.
    Returns 'eof', 'error', or the number of unexpected bytes read."""
    c = key.data
    sock = c[0]
    try:
        if ev & selectors.EVENT_WRITE:
            if c[2]:
                k = sock.send(c[2])
                c[2] = c[2][k:]
            if not c[2]:
                sock.shutdown(socket.SHUT_WR)
                sel.modify(sock, selectors.EVENT_READ, c)
            return 0
        data = sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        sel.unregister(sock)
        return "error"
    if data:
        return len(data)
    sel.unregister(sock)
    return "eof"
