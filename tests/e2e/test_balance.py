#!/usr/bin/env python3
"""End-to-end tests of `zcio proxy` with several upstreams per route: the share of
each balancer, client-hash stickiness across a reload that removes a server, a server
killed under load (retries, active health checks), all servers down, drain, and the
config errors.

Three real upstream servers (WhoServer) answer each connection with their name, then
echo what they receive until the client closes.

Run: python3 tests/e2e/test_balance.py --zcio build/tools/zcio/zcio
"""

import os
import selectors
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import SHORT, E2ETestCase, random_bytes, recv_exactly, sha, wait_until  # noqa: E402


class WhoServer:
    """A TCP server on one thread (selectors): sends NAME + "\\n" on accept, then echoes
    until the client closes. kill() closes the listener and every connection (a crash);
    start() listens again on the same port."""

    def __init__(self, name, port=0):
        self.name = name
        self.port = port
        self.accepted = 0
        self._lock = threading.Lock()
        self._thread = None
        self.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def open_connections(self):
        with self._lock:
            return self._open

    def start(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(1024)
        ls.setblocking(False)
        self.port = ls.getsockname()[1]
        self._ls = ls
        self._open = 0
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self._ls, selectors.EVENT_READ, "listen")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        conns = []
        try:
            while True:
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "stop":
                        return
                    if key.data == "listen":
                        self._accept(sel, conns)
                        continue
                    self._serve(sel, conns, key.fileobj)
        finally:
            for c in conns:
                c.close()
            sel.close()
            self._ls.close()

    def _accept(self, sel, conns):
        while True:
            try:
                c, _ = self._ls.accept()
            except BlockingIOError:
                return
            c.setblocking(True)
            c.sendall(self.name.encode() + b"\n")
            c.setblocking(False)
            conns.append(c)
            sel.register(c, selectors.EVENT_READ, "conn")
            with self._lock:
                self.accepted += 1
                self._open += 1

    def _serve(self, sel, conns, c):
        try:
            data = c.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            c.setblocking(True)
            c.sendall(data)
            c.setblocking(False)
            return
        sel.unregister(c)
        conns.remove(c)
        c.close()
        with self._lock:
            self._open -= 1

    def kill(self):
        if self._thread is None:
            return
        self._stop_w.send(b"x")
        self._thread.join(SHORT)
        self._thread = None
        self._stop_r.close()
        self._stop_w.close()


def who(addr, source=None, timeout=SHORT, keep=False):
    """Connects through the proxy and returns the name the server sent (None when the
    connection was closed without one), and the socket when `keep`."""
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(timeout)
    try:
        if source:
            s.bind((source, 0))
        s.connect((host, int(port)))
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            line += chunk
    except OSError:
        s.close()
        return (None, None) if keep else None
    name = line.decode().strip() if line.endswith(b"\n") else None
    if keep:
        return name, s
    s.close()
    return name


def count_by_name(names):
    out = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return out


def client_source(i):
    """The i-th of 1,000 client addresses in 127.0.0.0/8."""
    return "127.1.%d.%d" % (i // 250, 1 + i % 250)


class BalanceTestCase(E2ETestCase):
    def servers(self, n=3, ports=None):
        out = [WhoServer("s%d" % i, port=(ports[i] if ports else 0)) for i in range(n)]
        for s in out:
            self._closers.append(s.kill)
        return out

    def write_config(self, name, body):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(body)
        return path

    def route_config(self, servers, extra="", listen="127.0.0.1:0", items=None):
        if items is None:
            items = ", ".join('"%s"' % s.address for s in servers)
        return ('[[route]]\nname = "default"\nlisten = "%s"\nupstream = [%s]\n%s\n'
                % (listen, items, extra))


class RoundRobinTests(BalanceTestCase):
    def test_equal_weights_within_ten_percent(self):
        servers = self.servers()
        args = []
        for s in servers:
            args += ["--upstream", s.address]
        proxy = self.start_proxy("--listen", "127.0.0.1:0", *args)
        names = [who(proxy.addr) for _ in range(3000)]
        got = count_by_name(names)
        self.assertNotIn(None, got, "a client got no answer: %s" % got)
        for s in servers:
            self.assertLessEqual(abs(got.get(s.name, 0) - 1000), 100, got)
        # The per-server metrics say the same.
        m = proxy.metrics()
        for s in servers:
            key = ("zcio_upstream_connects_total", (("route", "default"), ("server", s.address)))
            self.assertEqual(m.get(key), got[s.name], m)

    def test_proportional_to_weights(self):
        servers = self.servers()
        items = ", ".join('{ address = "%s", weight = %d }' % (s.address, w)
                          for s, w in zip(servers, (1, 2, 3)))
        cfg = self.write_config("w.toml", self.route_config(servers, items=items))
        proxy = self.start_proxy("--config", cfg)
        got = count_by_name(who(proxy.addr) for _ in range(3000))
        for s, want in zip(servers, (500, 1000, 1500)):
            self.assertLessEqual(abs(got.get(s.name, 0) - want), want // 10, got)


class LeastConnectionsTests(BalanceTestCase):
    def test_long_lived_connections_go_to_the_least_loaded(self):
        servers = self.servers()
        cfg = self.write_config("lc.toml", self.route_config(servers, 'balance = "least-connections"'))
        proxy = self.start_proxy("--config", cfg)
        held = {s.name: [] for s in servers}
        for _ in range(30):
            name, sock = who(proxy.addr, keep=True)
            self.assertIsNotNone(name)
            self.track(sock)
            held[name].append(sock)
        self.assertEqual(sorted(len(v) for v in held.values()), [10, 10, 10], held)
        # s0's clients leave: the next 10 all go to s0, the one with no connections.
        for sock in held["s0"]:
            sock.close()
        wait_until(lambda: proxy.metrics().get(
            ("zcio_upstream_active", (("route", "default"), ("server", servers[0].address)))) == 0,
            SHORT, "s0's connections closed in the proxy")
        later = []
        for _ in range(10):
            name, sock = who(proxy.addr, keep=True)
            self.track(sock)
            later.append(name)
        self.assertEqual(later, ["s0"] * 10)
        # The long-lived connections still relay: an echo through one of them.
        blob = random_bytes(100000)
        sock = held["s1"][0]
        sock.sendall(blob)
        self.assertEqual(sha(recv_exactly(sock, len(blob))), sha(blob))


class ClientHashTests(BalanceTestCase):
    def test_sticky_and_a_third_moves_when_one_is_removed(self):
        # Fixed ports (this suite's range, 24000-24999): the ring, placed by the servers'
        # addresses, is then the same on every run, and so is the share that moves.
        servers = self.servers(ports=(24101, 24102, 24103))
        cfg = self.write_config("h.toml", self.route_config(servers, 'balance = "client-hash"'))
        proxy = self.start_proxy("--config", cfg)
        first = [who(proxy.addr, source=client_source(i)) for i in range(1000)]
        self.assertNotIn(None, first)
        again = [who(proxy.addr, source=client_source(i)) for i in range(1000)]
        self.assertEqual(first, again, "a client address changed server")
        share = count_by_name(first)
        for s in servers:
            self.assertGreater(share.get(s.name, 0), 200, share)
        # Reload without s1: only s1's clients move.
        self.write_config("h.toml", self.route_config(
            servers, 'balance = "client-hash"',
            items='"%s", "%s"' % (servers[0].address, servers[2].address)))
        proxy.proc.send_signal(1)  # SIGHUP
        proxy.proc.wait_for(r"reloaded: 1 route")
        after = [who(proxy.addr, source=client_source(i)) for i in range(1000)]
        moved = sum(1 for a, b in zip(first, after) if a != b)
        print("client-hash: %d of 1000 moved (s1 had %d)" % (moved, share["s1"]), file=sys.stderr)
        self.assertLessEqual(moved, 400)
        self.assertEqual(moved, share["s1"])
        self.assertNotIn("s1", after)


class HealthTests(BalanceTestCase):
    def steady_load(self, addr, stop, results):
        while not stop.is_set():
            started = time.monotonic()
            results.append((started, who(addr)))

    def test_killed_server_leaves_and_rejoins_with_no_client_failure(self):
        servers = self.servers()
        extra = 'health_interval = "100ms"\nrise = 2\nfall = 2\nfail_timeout = "60s"\n'
        cfg = self.write_config("k.toml", self.route_config(servers, extra))
        proxy = self.start_proxy("--config", cfg)
        stop = threading.Event()
        results = []
        loaders = [threading.Thread(target=self.steady_load, args=(proxy.addr, stop, results))
                   for _ in range(4)]
        for t in loaders:
            t.start()
        try:
            time.sleep(1.0)
            servers[1].kill()
            killed_at = time.monotonic()
            proxy.proc.wait_for(r"upstream %s is down" % servers[1].address, timeout=SHORT)
            time.sleep(1.0)
            out_at = time.monotonic()
            servers[1].start()
            restarted_at = time.monotonic()
            proxy.proc.wait_for(r"upstream %s is up" % servers[1].address, timeout=SHORT)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in loaders:
                t.join(SHORT)
        after_kill = [(t, n) for t, n in results if t > killed_at]
        failures = [r for r in after_kill if r[1] is None]
        print("kill: %d connections after the kill, %d failed; %d before it"
              % (len(after_kill), len(failures), len(results) - len(after_kill)), file=sys.stderr)
        self.assertGreater(len(after_kill), 100)
        self.assertEqual(failures, [])
        # Out of rotation while it was down (once marked: allow the connects before).
        down = [n for t, n in results if out_at - 0.8 < t < restarted_at]
        self.assertNotIn("s1", down)
        self.assertGreater(len(down), 10)
        # Back in rotation after `rise` checks.
        back = [n for t, n in results if t > restarted_at + 1.0]
        self.assertIn("s1", back)
        self.assertEqual(proxy.proc.count_lines(r"upstream %s is down" % servers[1].address), 1)
        self.assertEqual(proxy.proc.count_lines(r"upstream %s is up" % servers[1].address), 1)

    def test_all_down_closes_the_client_at_once(self):
        servers = self.servers()
        cfg = self.write_config("d.toml", self.route_config(servers))
        proxy = self.start_proxy("--config", cfg)
        self.assertIsNotNone(who(proxy.addr))
        for s in servers:
            s.kill()
        for i in range(5):
            started = time.monotonic()
            self.assertIsNone(who(proxy.addr))
            self.assertLess(time.monotonic() - started, 2.0)
        proxy.wait_metric("zcio_upstream_unavailable_total", 5)
        wait_until(lambda: proxy.proc.count_lines(r"\(client closed") == 5 or None, SHORT,
                   "5 'client closed' lines")
        # The first client tried all three; the next found none up (passive health).
        self.assertEqual(proxy.proc.count_lines(r"client closed, 3 servers tried"), 1)
        self.assertEqual(proxy.proc.count_lines(r"no upstream is up"), 4)

    def test_refused_connect_is_retried_on_another_server(self):
        servers = self.servers()
        dead = WhoServer("dead")
        dead_addr = dead.address
        dead.kill()
        items = '"%s", "%s", "%s"' % (dead_addr, servers[0].address, servers[1].address)
        # max_fails = 0: the dead server stays in rotation, every third client is retried.
        cfg = self.write_config("r.toml", self.route_config(servers, "max_fails = 0", items=items))
        proxy = self.start_proxy("--config", cfg)
        names = [who(proxy.addr) for _ in range(30)]
        self.assertNotIn(None, names)
        self.assertEqual(set(names), {"s0", "s1"})
        failures = proxy.metric("zcio_upstream_connect_failures_total")
        self.assertGreaterEqual(failures, 5)
        self.assertEqual(proxy.proc.count_lines(r"trying another server"), failures)

    def test_drain_on_reload_keeps_open_connections(self):
        servers = self.servers()
        cfg = self.write_config("dr.toml", self.route_config(servers))
        proxy = self.start_proxy("--config", cfg)
        held = []
        for _ in range(3):
            name, sock = who(proxy.addr, keep=True)
            self.track(sock)
            held.append((name, sock))
        items = '{ address = "%s", drain = true }, "%s", { address = "%s", weight = 0 }' % (
            servers[0].address, servers[1].address, servers[2].address)
        self.write_config("dr.toml", self.route_config(servers, items=items))
        proxy.proc.send_signal(1)
        proxy.proc.wait_for(r"reloaded: 1 route")
        self.assertEqual(set(who(proxy.addr) for _ in range(10)), {"s1"})
        for _, sock in held:
            blob = random_bytes(10000)
            sock.sendall(blob)
            self.assertEqual(sha(recv_exactly(sock, len(blob))), sha(blob))


class ConfigErrorTests(BalanceTestCase):
    def check_error(self, body, *needles):
        cfg = self.write_config("bad.toml", body)
        rc, _, err = e2e.run_zcio(["proxy", "--config", cfg])
        self.assertEqual(rc, 2, err)
        self.assertOneLine(err, cfg + ":", *needles)

    def test_bad_upstream_lists(self):
        head = '[[route]]\nlisten = "127.0.0.1:0"\n'
        self.check_error(head + "upstream = []\n", ":3:", "upstream", "empty list")
        self.check_error(head + 'upstream = [{ address = "127.0.0.1:1", weight = 0 }]\n',
                         ":3:", "upstream", "every weight is 0")
        self.check_error(head + 'upstream = "127.0.0.1:1"\nbalance = "fastest"\n',
                         ":4:", "balance", "fastest")
        self.check_error(head + 'upstream = [{ adress = "127.0.0.1:1" }]\n',
                         ":3:", "upstream.adress", "unknown key")
        self.check_error(head + 'upstream = [{ weight = 2 }]\n', ":3:", "upstream", "without address")
        self.check_error(head + 'upstream = [{ address = "127.0.0.1:1", weight = -1 }]\n',
                         ":3:", "upstream.weight")
        self.check_error(head + 'upstream = [{ address = "127.0.0.1:1", backup = "yes" }]\n',
                         ":3:", "upstream.backup")
        self.check_error(head + 'upstream = [1]\n', ":3:", "upstream")
        self.check_error(head + 'upstream = "127.0.0.1:1"\nrise = 0\n', ":4:", "rise")

    def test_bad_flags(self):
        rc, _, err = e2e.run_zcio(["proxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1",
                                   "--balance", "fastest"])
        self.assertEqual(rc, 2, err)
        self.assertOneLine(err, "--balance", "fastest")
        rc, _, err = e2e.run_zcio(["proxy", "--listen", "127.0.0.1:0",
                                   "--upstream", "127.0.0.1:1,weight=0"])
        self.assertEqual(rc, 2, err)
        self.assertOneLine(err, "--upstream", "every weight is 0")

    def test_bad_reload_is_refused(self):
        servers = self.servers()
        cfg = self.write_config("rl.toml", self.route_config(servers))
        proxy = self.start_proxy("--config", cfg)
        self.write_config("rl.toml", '[[route]]\nlisten = "127.0.0.1:0"\nupstream = []\n')
        proxy.proc.send_signal(1)
        proxy.proc.wait_for(r"reload refused: .*upstream.*empty list")
        self.assertIn(who(proxy.addr), {"s0", "s1", "s2"})


if __name__ == "__main__":
    e2e.main()
