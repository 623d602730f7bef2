"""Single-threaded, selector-driven endpoints for the fault checks: each Pump sends its
stream and checks the one it receives on a non-blocking socket, and run_pumps() drives
several of them until a condition holds, so a check can act (reset a socket, stop
reading) at a precise point of a transfer without racing threads.
"""

import selectors
import socket
import time

from support import KiB, StreamCheck, StreamSource, rst_close


class Pump:
    def __init__(self, sock, seed, send_sid, recv_sid, send_limit, chunk=64 * KiB):
        sock.setblocking(False)
        self.sock = sock
        self.src = StreamSource(seed, send_sid)
        self.chk = StreamCheck(seed, recv_sid)
        self.send_limit = send_limit
        self.chunk = chunk
        self.pending = b""
        self.reading = True       # False: leave incoming bytes in the socket (backpressure)
        self.sending = send_limit > 0
        self.read_end = None      # 'eof', 'reset' or an error name once reading ended
        self.send_end = None      # 'done', 'reset', 'broken pipe', ...
        self.t_read_end = None
        self.closed = False
        self.shut_after_send = True

    @property
    def sent(self):
        return self.src.n - len(self.pending)

    def events(self):
        if self.closed:
            return 0
        ev = 0
        if self.reading and self.read_end is None:
            ev |= selectors.EVENT_READ
        if self.sending and self.send_end is None:
            ev |= selectors.EVENT_WRITE
        return ev

    def on_readable(self):
        for _ in range(64):
            try:
                data = self.sock.recv(256 * KiB)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                self._read_ended("reset")
                return
            except OSError as e:
                self._read_ended(type(e).__name__)
                return
            if not data:
                # After an RST the first system call on the socket reports ECONNRESET and
                # later reads return 0: when our send got the reset first, this 0 is the
                # reset, not a FIN. (A send that failed with EPIPE means a FIN had come
                # first: the socket was in CLOSE_WAIT when the RST arrived.)
                self._read_ended("reset" if self.send_end == "reset" else "eof")
                return
            self.chk.feed(data)

    def _read_ended(self, how):
        self.read_end = how
        self.t_read_end = time.monotonic()

    def on_writable(self):
        for _ in range(64):
            if not self.pending:
                if self.src.n >= self.send_limit:
                    self.send_end = "done"
                    if self.shut_after_send:
                        try:
                            self.sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                    return
                self.pending = self.src.next(min(self.chunk, self.send_limit - self.src.n))
            try:
                n = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                self.send_end = "reset"
                return
            except BrokenPipeError:
                self.send_end = "broken pipe"
                return
            except OSError as e:
                self.send_end = type(e).__name__
                return
            self.pending = self.pending[n:]

    def reset(self):
        """Aborts the connection with an RST."""
        self.closed = True
        rst_close(self.sock)

    def close(self):
        if not self.closed:
            self.closed = True
            self.sock.close()


def run_pumps(pumps, until, timeout, what):
    """Drives `pumps` until until() is true; returns the seconds it took. Raises
    TimeoutError(what) after `timeout`."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    try:
        for _ in range(10000000):
            if until():
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise TimeoutError("%s: not within %.1fs" % (what, timeout))
            registered = []
            for p in pumps:
                ev = p.events()
                if ev:
                    sel.register(p.sock, ev, p)
                    registered.append(p)
            if not registered:
                time.sleep(0.01)
                continue
            for key, mask in sel.select(0.05):
                p = key.data
                if mask & selectors.EVENT_READ:
                    p.on_readable()
                if mask & selectors.EVENT_WRITE and not p.closed:
                    p.on_writable()
            for p in registered:
                sel.unregister(p.sock)
        raise TimeoutError("%s: loop bound" % what)
    finally:
        sel.close()
