#!/usr/bin/env python3
"""End-to-end tests of UDP routes in `zcio proxy`: datagrams checked by sha256 per
client, flags and config files, reload (a UDP route added, changed, removed), session
expiry, responses, PROXY v2 datagram headers, an upstream that is down, metrics, bad
input, and a real consumer: unbound behind zcio's PROXY v2 header, asked with dig.

Run: python3 tests/e2e/test_udp_proxy.py --zcio build/dev/tools/zcio/zcio
"""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import SHORT, E2ETestCase, random_bytes, sha, wait_until  # noqa: E402

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class UdpUpstream:
    """A UDP server on loopback in a thread: `reply(data, addr)` returns the datagrams
    to send back. Records what it received. Stops on close(); every wait is bounded."""

    def __init__(self, reply=lambda d, a: [d], family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.received = []  # (data, addr)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            try:
                d, a = self.sock.recvfrom(70000)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append((d, a))
            for out in self.reply(d, a):
                try:
                    self.sock.sendto(out, a)
                except OSError:
                    pass

    def close(self):
        self.stopped = True
        self.thread.join(5)
        self.sock.close()


def udp_client(family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    s.settimeout(SHORT)
    return s


def host_port(addr):
    """'udp:127.0.0.1:5353' -> ('127.0.0.1', 5353)."""
    if addr.startswith("udp:"):
        addr = addr[4:]
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def exchange(test, client, to, count, seed, max_size=1400):
    """Sends `count` datagrams one at a time and checks each reply's sha256."""
    rnd = random.Random(seed)
    for i in range(count):
        d = random_bytes(rnd.randint(0, max_size))
        client.sendto(d, to)
        got, frm = client.recvfrom(70000)
        test.assertEqual(sha(got), sha(d), "datagram %d of seed %d" % (i, seed))
        test.assertEqual(frm[1], to[1])


def wait_dropped(proxy, reason, n, route="default"):
    key = ("zcio_udp_dropped_total", (("route", route), ("reason", reason)))
    return wait_until(lambda: proxy.metrics().get(key) == n or None, SHORT,
                      "%d datagram(s) dropped for %s" % (n, reason))


class UdpTestCase(E2ETestCase):
    def udp_upstream(self, **kw):
        u = UdpUpstream(**kw)
        self._closers.append(u.close)
        return u

    def client(self, family=socket.AF_INET):
        c = udp_client(family)
        self._closers.append(c.close)
        return c

    def write_config(self, text):
        path = self.path("proxy.toml")
        with open(path, "w") as f:
            f.write(text)
        return path


class ForwardingTests(UdpTestCase):
    def test_udp_prefix_forwards_every_datagram_of_each_client(self):
        up = self.udp_upstream()
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream", "127.0.0.1:%d" % up.port)
        self.assertTrue(proxy.addr.startswith("udp:"), proxy.addr)
        to = host_port(proxy.addr)
        clients = [self.client() for _ in range(3)]
        for i, c in enumerate(clients):
            exchange(self, c, to, 100, seed=i)
        proxy.wait_metric("zcio_udp_sessions_total", 3)
        proxy.wait_metric("zcio_udp_datagrams_client_to_upstream_total", 300)
        proxy.wait_metric("zcio_udp_datagrams_upstream_to_client_total", 300)
        # Each client had a session (a socket) of its own toward the upstream.
        self.assertEqual(len({a for _, a in up.received}), 3)

    def test_ipv6_route(self):
        try:
            up = self.udp_upstream(family=socket.AF_INET6)
        except OSError as e:
            self.skipTest("no IPv6 loopback: %s" % e)
        proxy = self.start_proxy("--protocol", "udp", "--listen", "[::1]:0", "--upstream", "[::1]:%d" % up.port)
        c = self.client(socket.AF_INET6)
        exchange(self, c, host_port(proxy.addr), 50, seed=7)

    def test_config_route_sessions_expire(self):
        up = self.udp_upstream()
        cfg = self.write_config(
            '[[route]]\nname = "dns"\nprotocol = "udp"\nlisten = "127.0.0.1:0"\n'
            'upstream = "127.0.0.1:%d"\nsession_timeout = "300ms"\n' % up.port)
        proxy = self.start_proxy("--config", cfg)
        to = host_port(proxy.addr)
        for i in range(4):
            exchange(self, self.client(), to, 3, seed=10 + i)
        proxy.wait_metric("zcio_udp_sessions_active", 4, route="dns")
        proxy.wait_metric("zcio_udp_sessions_active", 0, route="dns")
        self.assertEqual(proxy.metric("zcio_udp_sessions_expired_total", "dns"), 4)

    def test_responses_one_ends_the_session_after_one_reply(self):
        up = self.udp_upstream(reply=lambda d, a: [d, d + b"second"])
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream",
                                 "127.0.0.1:%d" % up.port, "--responses", "1")
        c = self.client()
        to = host_port(proxy.addr)
        for i in range(3):
            c.sendto(b"query %d" % i, to)
            got, _ = c.recvfrom(1000)
            self.assertEqual(got, b"query %d" % i)
            proxy.wait_metric("zcio_udp_sessions_completed_total", i + 1)
        c.settimeout(0.3)
        with self.assertRaises(socket.timeout):
            c.recvfrom(1000)  # the second replies never came through
        self.assertEqual(proxy.metric("zcio_udp_sessions_total"), 3)
        self.assertEqual(proxy.metric("zcio_udp_sessions_active"), 0)

    def test_proxy_v2_header_carries_the_client_address(self):
        def strip(d, a):
            if d[:12] != V2_SIGNATURE or d[13] != 0x12:
                return [b"bad header"]
            length = struct.unpack("!H", d[14:16])[0]
            src = socket.inet_ntoa(d[16:20]), struct.unpack("!H", d[24:26])[0]
            return [("%s:%d|" % src).encode() + d[16 + length:]]
        up = self.udp_upstream(reply=strip)
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream",
                                 "127.0.0.1:%d" % up.port, "--proxy-protocol", "v2")
        c = self.client()
        c.sendto(b"payload", host_port(proxy.addr))
        got, _ = c.recvfrom(1000)
        self.assertEqual(got, ("127.0.0.1:%d|payload" % c.getsockname()[1]).encode())

    def test_accept_proxy_drops_a_datagram_without_header(self):
        up = self.udp_upstream()
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream",
                                 "127.0.0.1:%d" % up.port, "--accept-proxy")
        c = self.client()
        to = host_port(proxy.addr)
        c.sendto(b"no header here", to)
        wait_dropped(proxy, "proxy_header", 1)
        src = socket.inet_aton("192.0.2.9") + socket.inet_aton("127.0.0.1")
        header = V2_SIGNATURE + bytes([0x21, 0x12]) + struct.pack("!H", 12) + src + struct.pack("!HH", 4444, to[1])
        c.sendto(header + b"hello", to)
        got, _ = c.recvfrom(1000)
        self.assertEqual(got, b"hello")  # stripped on the way in, nothing added back
        self.assertEqual(up.received[-1][0], b"hello")

    def test_upstream_down_is_counted_as_refused(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream", "127.0.0.1:%d" % dead)
        c = self.client()
        c.sendto(b"anyone?", host_port(proxy.addr))
        proxy.wait_metric("zcio_udp_sessions_refused_total", 1)
        proxy.wait_metric("zcio_udp_sessions_active", 0)

    def test_full_table_drops_new_clients(self):
        up = self.udp_upstream()
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream",
                                 "127.0.0.1:%d" % up.port, "--max-sessions", "1", threads=1)
        to = host_port(proxy.addr)
        first = self.client()
        exchange(self, first, to, 3, seed=1)
        second = self.client()
        second.sendto(b"x", to)
        wait_dropped(proxy, "table_full", 1)
        exchange(self, first, to, 3, seed=2)  # the old session goes on


class ReloadTests(UdpTestCase):
    def test_sighup_adds_changes_and_removes_udp_routes(self):
        up = self.udp_upstream()
        up2 = self.udp_upstream(reply=lambda d, a: [b"two:" + d])
        ports = [e2e.free_port() for _ in range(3)]
        route = '[[route]]\nname = "%s"\nlisten = "udp:127.0.0.1:%d"\nupstream = "127.0.0.1:%d"\n'
        cfg = self.write_config(route % ("a", ports[0], up.port) + route % ("b", ports[1], up.port))
        proxy = self.start_proxy("--config", cfg, listens=2)
        c = self.client()
        exchange(self, c, ("127.0.0.1", ports[0]), 5, seed=1)
        exchange(self, c, ("127.0.0.1", ports[1]), 5, seed=2)
        # a: unchanged; b: removed; c: added; a's twin on ports[2] points elsewhere.
        self.write_config(route % ("a", ports[0], up.port) + route % ("c", ports[2], up2.port))
        proxy.proc.send_signal(signal.SIGHUP)
        proxy.proc.wait_for(r"reloaded: 2 route\(s\)")
        exchange(self, c, ("127.0.0.1", ports[0]), 5, seed=3)
        c.sendto(b"hi", ("127.0.0.1", ports[2]))
        self.assertEqual(c.recvfrom(100)[0], b"two:hi")
        # b is gone: its port answers with ICMP port unreachable.
        probe = self.client()
        probe.connect(("127.0.0.1", ports[1]))
        probe.settimeout(2)

        def refused():
            try:
                probe.send(b"?")
                probe.recv(100)
            except ConnectionRefusedError:
                return True
            except socket.timeout:
                return None
            return None
        wait_until(refused, SHORT, "route b's port to refuse")
        m = proxy.metrics()
        self.assertEqual(m[("zcio_udp_datagrams_client_to_upstream_total", (("route", "a"),))], 10)
        # Changing a UDP route's options restarts it on the same address.
        self.write_config(route % ("a", ports[0], up2.port) + route % ("c", ports[2], up2.port))
        proxy.proc.send_signal(signal.SIGHUP)
        proxy.proc.wait_for(r"reloaded: 2 route\(s\)", count=2)

        def via_up2():
            fresh = udp_client()
            try:
                fresh.settimeout(1)
                fresh.sendto(b"x", ("127.0.0.1", ports[0]))
                return fresh.recvfrom(100)[0] == b"two:x" or None
            except socket.timeout:
                return None
            finally:
                fresh.close()
        wait_until(via_up2, SHORT, "route a to forward to the new upstream")

    def test_udp_and_tcp_routes_share_a_port(self):
        up = self.udp_upstream()
        port = e2e.free_port()
        cfg = self.write_config(
            '[[route]]\nname = "t"\nlisten = "127.0.0.1:%d"\nupstream = "127.0.0.1:9"\n'
            '[[route]]\nname = "u"\nlisten = "udp:127.0.0.1:%d"\nupstream = "127.0.0.1:%d"\n'
            % (port, port, up.port))
        self.start_proxy("--config", cfg, listens=2)
        exchange(self, self.client(), ("127.0.0.1", port), 3, seed=4)


class BadInputTests(UdpTestCase):
    CONFIG_CASES = [
        ('protocol = "udp"\nengine = "splice"', "route[0].engine", "TCP routes only"),
        ('protocol = "udp"\nidle_timeout = 5', "route[0].idle_timeout", "TCP routes only"),
        ('responses = 1', "route[0].responses", "UDP routes only"),
        ('protocol = "udp"\naccept_proxy = "yes"', "route[0].accept_proxy", "true or false"),
        ('protocol = "udp"\nproxy_protocol = "v1"', "proxy_protocol", "v1"),
        ('protocol = "sctp"', "route[0].protocol", "tcp or udp"),
        ('protocol = "udp"\nmax_sessions = 0', "route[0].max_sessions", "positive"),
        ('protocol = "tcp"\nlisten = "udp:127.0.0.1:0"', "protocol", "udp:"),
    ]

    def test_config_errors_name_the_key(self):
        for extra, key, words in self.CONFIG_CASES:
            with self.subTest(extra=extra):
                body = extra if "listen" in extra else 'listen = "127.0.0.1:0"\n' + extra
                cfg = self.write_config('[[route]]\n%s\nupstream = "127.0.0.1:53"\n' % body)
                code, _, err = e2e.run_zcio(["proxy", "--config", cfg])
                self.assertEqual(code, 2, err)
                self.assertOneLine(err, key, words)

    def test_flag_errors_name_the_flag(self):
        cases = [
            (["--listen", "udp:127.0.0.1:0", "--engine", "splice"], "--engine"),
            (["--listen", "udp:127.0.0.1:0", "--max-connections", "5"], "--max-connections"),
            (["--listen", "127.0.0.1:0", "--session-timeout", "5s"], "--session-timeout"),
            (["--listen", "udp:127.0.0.1:0", "--listen", "127.0.0.1:0"], "udp:"),
            (["--listen", "udp:unix:/tmp/zcio-x", ], "IP addresses only"),
            (["--listen", "udp:127.0.0.1:0", "--proxy-protocol", "v1"], "--proxy-protocol"),
            (["--protocol", "udp", "--listen", "127.0.0.1:0", "--responses", "-1"], "--responses"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                code, _, err = e2e.run_zcio(["proxy"] + args + ["--upstream", "127.0.0.1:53"])
                self.assertEqual(code, 2, err)
                self.assertOneLine(err, needle)


UNBOUND_CONF = """server:
    verbosity: 1
    use-syslog: no
    logfile: "{log}"
    log-queries: yes
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    do-daemonize: no
    interface: 127.0.0.1@{port}
    port: {port}
    proxy-protocol-port: {port}
    do-ip6: no
    do-tcp: no
    access-control: 127.0.0.0/8 allow
    access-control: 192.0.2.0/24 allow
    num-threads: 1
    so-reuseport: no
    module-config: "iterator"
    do-not-query-localhost: yes
    local-zone: "zcio.test." static
    local-data: "www.zcio.test. 60 IN A 192.0.2.42"
remote-control:
    control-enable: no
"""


def unbound_started(log):
    if not os.path.exists(log):
        return None
    with open(log) as f:
        return "start of service" in f.read() or None


@unittest.skipUnless(shutil.which("unbound") or os.path.exists("/usr/sbin/unbound"),
                     "unbound is not installed (cmake/deps.sh test installs it)")
@unittest.skipUnless(shutil.which("dig"), "dig is not installed (dnsutils; cmake/deps.sh test)")
class UnboundTests(UdpTestCase):
    """unbound reads zcio's PROXY v2 datagram header (proxy-protocol-port) and answers
    dig through zcio, logging the original client's address."""

    def test_dig_through_zcio_reaches_unbound_with_the_client_address(self):
        unbound = shutil.which("unbound") or "/usr/sbin/unbound"
        port = e2e.free_port()
        log = self.path("unbound.log")
        conf = self.path("unbound.conf")
        with open(conf, "w") as f:
            f.write(UNBOUND_CONF.format(log=log, dir=self.tmp, port=port))
        check = subprocess.run([shutil.which("unbound-checkconf") or "true", conf],
                               capture_output=True, text=True, timeout=SHORT)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.spawn([unbound, "-d", "-c", conf])
        wait_until(lambda: unbound_started(log), 20, "unbound to start")
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream", "127.0.0.1:%d" % port,
                                 "--proxy-protocol", "v2", "--responses", "1")
        host, zport = host_port(proxy.addr)
        answers = set()
        for _ in range(3):
            r = subprocess.run(["dig", "+short", "+tries=1", "+time=5", "-p", str(zport), "@" + host,
                                "www.zcio.test", "A"], capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            answers.add(r.stdout.strip())
        self.assertEqual(answers, {"192.0.2.42"})
        proxy.wait_metric("zcio_udp_sessions_completed_total", 3)

        # unbound logs each query with the client address the header gave it: dig's
        # own 127.0.0.1, never the port of zcio's session socket (checked below).
        def logged():
            with open(log) as f:
                lines = [l for l in f if "www.zcio.test." in l and "127.0.0.1" in l]
            return lines if len(lines) >= 3 else None
        lines = wait_until(logged, SHORT, "unbound to log the queries")
        self.assertTrue(all("127.0.0.1" in l for l in lines), lines)

    def test_unbound_sees_the_address_a_proxy_v2_front_named(self):
        # With accept_proxy in front, the original client is whatever the first
        # header says: 192.0.2.7 here, which unbound must log.
        unbound = shutil.which("unbound") or "/usr/sbin/unbound"
        port = e2e.free_port()
        log = self.path("unbound.log")
        conf = self.path("unbound.conf")
        with open(conf, "w") as f:
            f.write(UNBOUND_CONF.format(log=log, dir=self.tmp, port=port))
        self.spawn([unbound, "-d", "-c", conf])
        wait_until(lambda: unbound_started(log), 20, "unbound to start")
        proxy = self.start_proxy("--listen", "udp:127.0.0.1:0", "--upstream", "127.0.0.1:%d" % port,
                                 "--proxy-protocol", "v2", "--accept-proxy")
        to = host_port(proxy.addr)
        # A DNS query for www.zcio.test A, id 0x1234, recursion desired.
        q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p for p in b"www.zcio.test".split(b".")) + b"\x00"
        q += struct.pack("!HH", 1, 1)
        header = (V2_SIGNATURE + bytes([0x21, 0x12]) + struct.pack("!H", 12) + socket.inet_aton("192.0.2.7")
                  + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 5353, to[1]))
        c = self.client()
        c.sendto(header + q, to)
        reply, _ = c.recvfrom(4096)
        self.assertEqual(reply[:2], b"\x12\x34")
        self.assertIn(socket.inet_aton("192.0.2.42"), reply)

        def logged():
            with open(log) as f:
                return [l for l in f if "www.zcio.test." in l and "192.0.2.7" in l] or None
        wait_until(logged, SHORT, "unbound to log 192.0.2.7")


if __name__ == "__main__":
    e2e.main()
