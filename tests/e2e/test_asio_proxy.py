#!/usr/bin/env python3
"""End-to-end tests of examples/asio-proxy (zcio::asio::async_copy_bidirectional).

Bad arguments: one line saying what is wrong, the usage line, exit 2 (a port already
in use: one line, exit 1), and never an uncaught exception. Good arguments: random data
through the proxy both ways, concurrent connections, checked by sha256, with the
half-close in both orders, on 1 and 2 threads; a refused upstream closes the client.

Run:
  python3 tests/e2e/test_asio_proxy.py --proxy build/dev/examples/asio-proxy
"""

import os
import re
import socket
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import E2ETestCase  # noqa: E402

PROXY = None  # path of the asio-proxy binary (--proxy PATH)
MIB = 1 << 20


def run_proxy(args, timeout=e2e.SHORT):
    """Runs asio-proxy to completion; returns (exit code, stderr lines)."""
    p = subprocess.run([PROXY] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stderr.decode("utf-8", "replace").splitlines()


class BadArguments(unittest.TestCase):
    CASES = [
        ([], r"expected 3 or 4 arguments, got 0"),
        (["1", "127.0.0.1"], r"expected 3 or 4 arguments, got 2"),
        (["1", "127.0.0.1", "2", "3", "4"], r"expected 3 or 4 arguments, got 5"),
        (["abc", "127.0.0.1", "80"], r"bad listen port 'abc'"),
        (["70000", "127.0.0.1", "80"], r"bad listen port '70000'"),
        (["-1", "127.0.0.1", "80"], r"bad listen port '-1'"),
        (["80x", "127.0.0.1", "80"], r"bad listen port '80x'"),
        (["", "127.0.0.1", "80"], r"bad listen port ''"),
        (["0", "127.0.0.1", "0"], r"bad upstream '127.0.0.1:0'"),
        (["0", "127.0.0.1", "99999"], r"bad upstream '127.0.0.1:99999'"),
        (["0", "127.0.0.1", "http"], r"bad upstream '127.0.0.1:http'"),
        (["0", "", "80"], r"bad upstream ':80'"),
        (["0", "no.such.host.invalid", "80"], r"cannot resolve 'no.such.host.invalid': "),
        (["0", "127.0.0.1", "80", "0"], r"bad thread count '0'"),
        (["0", "127.0.0.1", "80", "65"], r"bad thread count '65'"),
        (["0", "127.0.0.1", "80", "two"], r"bad thread count 'two'"),
    ]

    def test_each_bad_argument_exits_2_with_one_line_and_usage(self):
        for args, want in self.CASES:
            with self.subTest(args=args):
                rc, lines = run_proxy(args)
                self.assertEqual(rc, 2, "exit code for %r; stderr: %r" % (args, lines))
                self.assertEqual(len(lines), 2, "stderr for %r: %r" % (args, lines))
                self.assertRegex(lines[0], r"^asio-proxy: " + want)
                self.assertRegex(lines[1], r"^usage: .*LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT")

    def test_port_in_use_exits_1_with_one_line(self):
        with socket.socket() as taken:
            taken.bind(("0.0.0.0", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            rc, lines = run_proxy([port, "127.0.0.1", port])
        self.assertEqual(rc, 1, lines)
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^asio-proxy: cannot listen on port %d: " % port)


class Relay(E2ETestCase):
    def start(self, upstream_port, threads=None):
        """Starts the proxy on a free port; returns the port it printed."""
        out_path = self.path("stdout")
        out = open(out_path, "wb")
        self._closers.append(out.close)
        args = [PROXY, 0, "127.0.0.1", upstream_port] + ([threads] if threads else [])
        proc = self.spawn(args, stdout=out)

        def port():
            if proc.poll() is not None:
                raise AssertionError("asio-proxy exited (%s): %s" % (proc.poll(), proc.stderr_text()))
            with open(out_path, "rb") as f:
                m = re.search(rb"listening on port (\d+)\n", f.read())
            return int(m.group(1)) if m else None
        self.proc = proc
        return e2e.wait_until(port, e2e.START_TIMEOUT, "asio-proxy's 'listening on port' line")

    def echo_round(self, port, upstream, n_conns, size):
        """n_conns clients at once each send `size` random bytes then shut down; each must
        get its own bytes back, and the upstream must have seen exactly them."""
        blobs = [e2e.random_bytes(size + i) for i in range(n_conns)]
        socks = [self.connect("127.0.0.1:%d" % port) for _ in blobs]
        senders = [e2e.send_in_thread(s, b) for s, b in zip(socks, blobs)]
        got = [None] * n_conns

        def receive(i):
            got[i] = e2e.recv_all(socks[i])[0]
        readers = [threading.Thread(target=receive, args=(i,), daemon=True) for i in range(n_conns)]
        for t in readers:
            t.start()
        for t in senders:
            e2e.join_sender(t)
        for t in readers:
            t.join(e2e.IO_TIMEOUT)
            self.assertFalse(t.is_alive(), "a client still reading after %.0fs" % e2e.IO_TIMEOUT)
        for i, blob in enumerate(blobs):
            self.assertEqual(e2e.sha(got[i]), e2e.sha(blob), "connection %d: %d bytes back of %d"
                             % (i, len(got[i]), len(blob)))
        seen = sorted((r.wait().n, r.sha) for r in upstream.wait_connections(n_conns))
        self.assertEqual(seen, sorted((len(b), e2e.sha(b)) for b in blobs))

    def test_echo_8_connections_one_thread(self):
        upstream = self.upstream(e2e.echo_handler())
        port = self.start(upstream.port)
        self.echo_round(port, upstream, 8, 2 * MIB)

    def test_echo_8_connections_two_threads(self):
        upstream = self.upstream(e2e.echo_handler())
        port = self.start(upstream.port, threads=2)
        self.echo_round(port, upstream, 8, 2 * MIB)

    def test_both_ways_upstream_closes_first(self):
        down = e2e.random_bytes(4 * MIB + 7)
        up = e2e.random_bytes(3 * MIB + 1)
        upstream = self.upstream(e2e.source_sink_handler(down))
        port = self.start(upstream.port)
        s = self.connect("127.0.0.1:%d" % port)
        got, _, _ = e2e.recv_all(s)  # the upstream's half-close reached us ...
        self.assertEqual(e2e.sha(got), e2e.sha(down))
        sender = e2e.send_in_thread(s, up)  # ... and our direction still works
        e2e.join_sender(sender)
        rec = upstream.wait_connections(1)[0].wait()
        self.assertEqual((rec.n, rec.sha), (len(up), e2e.sha(up)))

    def test_refused_upstream_closes_the_client_and_the_proxy_stays(self):
        port = self.start(e2e.free_port())
        for _ in range(3):
            s = self.connect("127.0.0.1:%d" % port)
            e2e.wait_closed(s)
        self.assertIsNone(self.proc.poll(), self.proc.stderr_text())


def main():
    global PROXY
    argv = [sys.argv[0]]
    args = sys.argv[1:]
    i = 0
    while i < len(args):
        if args[i] == "--proxy" and i + 1 < len(args):
            PROXY = os.path.abspath(args[i + 1])
            i += 2
            continue
        argv.append(args[i])
        i += 1
    if not PROXY or not os.access(PROXY, os.X_OK):
        sys.exit("usage: %s --proxy PATH/asio-proxy [unittest args]" % sys.argv[0])
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
