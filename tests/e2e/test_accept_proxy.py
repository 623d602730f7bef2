#!/usr/bin/env python3
"""End-to-end tests of accept_proxy on a TCP route: a real HAProxy with send-proxy-v2 in
front of zcio (--accept-proxy, --accept-proxy-from 127.0.0.1/32), zcio with
--proxy-protocol v1 toward nginx `listen ... proxy_protocol`, which logs
$proxy_protocol_addr: the client's own address (127.0.0.2 here) arrives, and the file
nginx serves arrives intact (SHA-256). Malformed, slow, duplicated and unlisted-peer
headers: closed, counted (zcio_proxy_header_refused_total) and logged once at warn,
while a client with a good header is served meanwhile.

Run: python3 tests/e2e/test_accept_proxy.py --zcio build/dev/tools/zcio/zcio
"""

import os
import shutil
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_support as e2e  # noqa: E402
from e2e_support import SHORT, E2ETestCase, sha, wait_until  # noqa: E402

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def refused(proxy, reason):
    for (name, labels), v in proxy.metrics().items():
        if name == "zcio_proxy_header_refused_total" and dict(labels).get("reason") == reason:
            return v
    return 0


def http_get_via(port, source="127.0.0.1", prefix=b""):
    """GET /blob through `port` from `source`; returns the body (empty when closed)."""
    s = socket.socket()
    s.settimeout(SHORT)
    s.bind((source, 0))
    out = b""
    try:  # a refused client may be reset before its request is even sent
        s.connect(("127.0.0.1", port))
        s.sendall(prefix + b"GET /blob HTTP/1.0\r\nHost: x\r\n\r\n")
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            out += b
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


class AcceptProxyTests(E2ETestCase):
    def start_nginx(self, blob):
        port = e2e.free_port()
        root = self.path("www")
        os.makedirs(root)
        with open(os.path.join(root, "blob"), "wb") as f:
            f.write(blob)
        conf = self.path("nginx.conf")
        with open(conf, "w") as f:
            f.write("""daemon off; master_process off; pid %(d)s/nginx.pid;
error_log %(d)s/error.log;
events {}
http {
  access_log %(d)s/access.log;
  log_format pp '$proxy_protocol_addr $remote_addr $request';
  client_body_temp_path %(d)s; proxy_temp_path %(d)s; fastcgi_temp_path %(d)s;
  uwsgi_temp_path %(d)s; scgi_temp_path %(d)s;
  server { listen 127.0.0.1:%(p)d proxy_protocol; root %(r)s; access_log %(d)s/pp.log pp; }
}
""" % {"d": self.tmp, "p": port, "r": root})
        self.spawn([NGINX, "-p", self.tmp, "-c", conf])
        e2e.wait_tcp_listening(port)
        return port

    def start_haproxy(self, zcio_port):
        port = e2e.free_port()
        conf = self.path("haproxy.cfg")
        with open(conf, "w") as f:
            f.write("""global
  log stderr local0 warning
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  server z 127.0.0.1:%d send-proxy-v2
""" % (port, zcio_port))
        self.spawn([HAPROXY, "-db", "-f", conf])
        e2e.wait_tcp_listening(port)
        return port

    @unittest.skipUnless(HAPROXY and NGINX, "needs haproxy and nginx (cmake/deps.sh test)")
    def test_client_address_survives_haproxy_zcio_nginx(self):
        blob = e2e.random_bytes(3 << 20)
        ng = self.start_nginx(blob)
        proxy = self.start_proxy("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:%d" % ng,
                                 "--accept-proxy", "--accept-proxy-from", "127.0.0.1/32",
                                 "--proxy-protocol", "v1")
        ha = self.start_haproxy(proxy.port)
        for _ in range(3):
            head, body = http_get_via(ha, source="127.0.0.2")
            self.assertIn(b" 200 ", head)
            self.assertEqual(sha(body), sha(blob))
        log = self.path("pp.log")
        wait_until(lambda: os.path.exists(log) and open(log).read().count("\n") >= 3, SHORT,
                   "nginx logged 3 requests")
        with open(log) as f:
            lines = f.read().splitlines()
        # $proxy_protocol_addr is the original client, $remote_addr zcio's address.
        self.assertEqual([l.split()[0] for l in lines], ["127.0.0.2"] * 3, lines)
        self.assertEqual(proxy.metric("zcio_proxy_headers_accepted_total"), 3)
        proxy.proc.wait_for(r"closed client 127\.0\.0\.2:\d+ upstream", count=3)

    @unittest.skipUnless(NGINX, "needs nginx")
    def test_bad_headers_are_closed_counted_and_logged_once(self):
        blob = e2e.random_bytes(1 << 20)
        ng = self.start_nginx(blob)
        proxy = self.start_proxy("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:%d" % ng,
                                 "--accept-proxy", "--accept-proxy-from", "127.0.0.1/32",
                                 "--proxy-header-timeout", "1s", "--proxy-protocol", "v1")
        good = b"PROXY TCP4 198.51.100.7 127.0.0.1 4242 80\r\n"
        # A slow client first: it holds its header back while the others are served.
        slow = socket.create_connection(("127.0.0.1", proxy.port))
        self.track(slow)
        slow.sendall(b"PROXY TCP4 198.51.")
        cases = [("malformed", b"PROXY TCP4 198.51.100.7 127.0.0.1 04242 80\r\n"),
                 ("malformed", b"GET /blob HTTP/1.0\r\n\r\n"),
                 ("duplicate", good + good)]
        for reason, prefix in cases:
            head, body = http_get_via(proxy.port, prefix=prefix)
            self.assertEqual(body, b"", reason)
        head, body = http_get_via(proxy.port, source="127.0.0.3", prefix=good)
        self.assertEqual(body, b"", "unlisted peer")
        head, body = http_get_via(proxy.port, prefix=good)  # served meanwhile
        self.assertEqual(sha(body), sha(blob))
        slow.settimeout(SHORT)
        try:
            self.assertEqual(slow.recv(1), b"")  # closed by the timeout
        except ConnectionResetError:
            pass
        want = {"malformed": 2, "duplicate": 1, "unlisted_peer": 1, "timeout": 1}
        for reason, n in want.items():
            wait_until(lambda: refused(proxy, reason) == n or None, SHORT,
                       "%s refused %d (now %d)" % (reason, n, refused(proxy, reason)))
        self.assertEqual(proxy.metric("zcio_proxy_headers_accepted_total"), 1)
        for reason, n in want.items():
            self.assertEqual(proxy.proc.count_lines(r"refused client \S+: PROXY header %s" % reason), n)
        wait_until(lambda: "198.51.100.7" in open(self.path("pp.log")).read() or None, SHORT,
                   "nginx logged the header's client")

    @unittest.skipUnless(NGINX, "needs nginx")
    def test_unlisted_peers_served_direct_with_proxy_unlisted_direct(self):
        blob = e2e.random_bytes(1 << 20)
        ng = self.start_nginx(blob)
        proxy = self.start_proxy("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:%d" % ng,
                                 "--accept-proxy", "--accept-proxy-from", "127.0.0.1/32",
                                 "--proxy-unlisted", "direct", "--proxy-protocol", "v1")
        # Listed: its header names the client. Unlisted: no header is read, its own
        # address goes upstream, and nothing is refused.
        head, body = http_get_via(proxy.port, prefix=b"PROXY TCP4 198.51.100.9 127.0.0.1 4242 80\r\n")
        self.assertEqual(sha(body), sha(blob))
        head, body = http_get_via(proxy.port, source="127.0.0.3")
        self.assertEqual(sha(body), sha(blob))
        self.assertEqual(proxy.metric("zcio_proxy_unlisted_direct_total"), 1)
        self.assertEqual(proxy.metric("zcio_proxy_headers_accepted_total"), 1)
        self.assertEqual(sum(refused(proxy, r) for r in
                             ("unlisted_peer", "malformed", "timeout", "closed", "duplicate")), 0)
        log = lambda: open(self.path("pp.log")).read()
        wait_until(lambda: ("198.51.100.9" in log() and "127.0.0.3" in log()) or None, SHORT,
                   "nginx logged both clients")

    def test_config_errors_are_one_line(self):
        for args, needle in [
            (["--accept-proxy-from", "10.0.0.0/8"], "--accept-proxy-from needs --accept-proxy"),
            (["--accept-proxy", "--accept-proxy-from", "10.0.0.0/33"], "prefix length past 32"),
            (["--accept-proxy", "--accept-proxy-from", "nope"], "not an IP address"),
            (["--accept-proxy", "--proxy-header-timeout", "0"], "must be more than 0"),
            (["--proxy-unlisted", "direct"], "--proxy-unlisted needs --accept-proxy"),
            (["--accept-proxy", "--proxy-unlisted", "direct"], "needs --accept-proxy-from"),
            (["--accept-proxy", "--accept-proxy-from", "10.0.0.0/8", "--proxy-unlisted", "maybe"],
             "expected refuse or direct"),
        ]:
            rc, _, err = e2e.run_zcio(["proxy", "--listen", "127.0.0.1:0", "--upstream",
                                       "127.0.0.1:1"] + args)
            self.assertNotEqual(rc, 0, args)
            self.assertOneLine(err, needle)
        cfg = self.path("z.toml")
        with open(cfg, "w") as f:
            f.write('[[route]]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:1"\n'
                    'accept_proxy = true\naccept_proxy_from = ["10.0.0.0/8", "::1/129"]\n')
        rc, _, err = e2e.run_zcio(["proxy", "--config", cfg])
        self.assertNotEqual(rc, 0)
        self.assertOneLine(err, "route[0].accept_proxy_from", "past 128")
        with open(cfg, "w") as f:
            f.write('[[route]]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:1"\n'
                    'accept_proxy = true\naccept_proxy_from = ["10.0.0.0/8"]\n'
                    'proxy_unlisted = "sometimes"\n')
        rc, _, err = e2e.run_zcio(["proxy", "--config", cfg])
        self.assertNotEqual(rc, 0)
        self.assertOneLine(err, "route[0].proxy_unlisted", "expected \"refuse\" or \"direct\"")


if __name__ == "__main__":
    e2e.main()
