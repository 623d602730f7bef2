#!/usr/bin/env python3
"""Scale-out behind a real balancer (docs/scale-out.md), in network namespaces the test
creates and removes: a client, HAProxy (mode tcp, roundrobin, TCP checks every 200 ms,
send-proxy-v2), three `zcio proxy --accept-proxy --accept-proxy-from <balancer>/32
--proxy-protocol v1` instances and two upstream echo servers that read the PROXY v1 line
and record the client it names. Every namespace has one veth to a bridge in a namespace
of its own (10.77.0.0/24), so nothing is added to the host's network.

Under a steady load of short echo connections from the client (random bytes, sha256;
tests/e2e/takeover_load.py):
  1. kill -9 one zcio: the connections lost are counted, every one started later than
     RECOVERY_BOUND after the kill succeeds (HAProxy took it out: fall 2 x 200 ms);
  2. a rolling take-over of all three (--take-over on each control socket in turn): 0
     failed connections;
  3. every upstream record names the client's address, never the balancer's or zcio's.

Needs root, `ip netns` and haproxy: skipped (exit 77) with the reason otherwise.
Run: python3 tests/e2e/test_scale_out.py --zcio build/dev/tools/zcio/zcio
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e_support as e2e  # noqa: E402

LOAD = os.path.join(HERE, "takeover_load.py")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
NET = "10.77.0."
CLIENT, BALANCER, UPSTREAM = NET + "10", NET + "2", NET + "20"
ZCIOS = [NET + "11", NET + "12", NET + "13"]
FRONT_PORT, ZCIO_PORT, UP_PORTS = 8000, 8080, (9001, 9002)
RATE = 200  # new connections a second: the whole chain shares two loaded cores
RECOVERY_BOUND = 1.0  # s after the kill from which every new connection must succeed


def sh(*args):
    subprocess.run([str(a) for a in args], check=True, timeout=e2e.SHORT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def skip_reason():
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if not HAPROXY:
        return "haproxy is not installed (cmake/deps.sh test)"
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL).returncode != 0:
        return "`ip netns` is unavailable"
    return None


class Net:
    """The namespaces zsc<pid>-NAME, each with eth0 on a bridge in zsc<pid>-br."""

    def __init__(self):
        self.prefix = "zsc%d-" % os.getpid()
        self.made = []

    def ns(self, name):
        return self.prefix + name

    def add(self, name, addr):
        ns, br = self.ns(name), self.ns("br")
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", br, "link", "add", "p-" + name, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", br, "link", "set", "p-" + name, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", addr + "/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def build(self):
        br = self.ns("br")
        sh("ip", "netns", "add", br)
        self.made.append(br)
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        self.add("cl", CLIENT)
        self.add("lb", BALANCER)
        for i, a in enumerate(ZCIOS):
            self.add("z%d" % i, a)
        self.add("up", UPSTREAM)

    def remove(self):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", ns], stderr=subprocess.DEVNULL, timeout=e2e.SHORT)
        self.made = []

    def run(self, name, argv):
        return ["ip", "netns", "exec", self.ns(name)] + [str(a) for a in argv]


# ---- the upstream server (this file run with --upstream-server PORT RECORD_FILE) --------

async def pp_echo(reader, writer, record):
    """Reads the PROXY v1 line, echoes, then records "client-address peer-address bytes"."""
    client, n = None, 0
    try:
        line = await reader.readline()
        parts = line.decode("ascii", "replace").split()
        client = parts[2] if len(parts) == 6 and parts[0] == "PROXY" else "bad:" + line.hex()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            n += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        record.write("%s %s %d\n" % (client, writer.get_extra_info("peername")[0], n))
        record.flush()
        writer.close()


def upstream_server(port, path):
    async def serve():
        with open(path, "a") as record:
            server = await asyncio.start_server(lambda r, w: pp_echo(r, w, record), UPSTREAM, port,
                                                backlog=4096)
            print("ready", flush=True)
            async with server:
                await server.serve_forever()
    asyncio.run(serve())


# ---- the test -------------------------------------------------------------------

HAPROXY_CFG = """global
  log stderr local0 notice
  stats socket %(stats)s mode 600
defaults
  mode tcp
  log global
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend front
  bind %(balancer)s:%(front)d
  default_backend zcio
backend zcio
  balance roundrobin
  default-server check inter 200ms fall 2 rise 1 send-proxy-v2
%(servers)s
"""


class ScaleOut(e2e.E2ETestCase):
    def setUp(self):
        super().setUp()
        self.net = Net()
        self._closers.append(self.net.remove)  # runs after every process is killed
        try:
            self.start_all()
        except BaseException:
            self.tearDown()  # unittest skips tearDown when setUp fails
            raise

    def start_all(self):
        self.net.build()
        self.records = []
        for port in UP_PORTS:
            rec = self.path("up%d.log" % port)
            p = self.spawn(self.net.run("up", [sys.executable, os.path.abspath(__file__),
                                               "--upstream-server", port, rec]), stdout=subprocess.PIPE)
            self.assertEqual(p.popen.stdout.readline().strip(), b"ready", p.stderr_text())
            self.records.append(rec)
        self.zcio = [self.start_zcio(i) for i in range(len(ZCIOS))]
        self.stats_sock = self.path("haproxy.sock")
        cfg = self.path("haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG % {"stats": self.stats_sock, "balancer": BALANCER, "front": FRONT_PORT,
                                   "servers": "\n".join("  server z%d %s:%d" % (i, a, ZCIO_PORT)
                                                        for i, a in enumerate(ZCIOS))})
        self.haproxy = self.spawn(self.net.run("lb", [HAPROXY, "-db", "-f", cfg]))
        self.wait_up([0, 1, 2])

    def zcio_argv(self, i, take_over):
        control = self.path("z%d.sock" % i)
        argv = [e2e.ZCIO, "proxy", "--listen", "%s:%d" % (ZCIOS[i], ZCIO_PORT)]
        for port in UP_PORTS:
            argv += ["--upstream", "%s:%d" % (UPSTREAM, port)]
        argv += ["--accept-proxy", "--accept-proxy-from", BALANCER + "/32", "--proxy-protocol", "v1",
                 "--control", control, "--threads", "1", "--drain-timeout", "30"]
        if take_over:
            argv += ["--take-over", control]
        return argv

    def start_zcio(self, i, take_over=False):
        p = self.spawn(self.net.run("z%d" % i, self.zcio_argv(i, take_over)))
        p.wait_for("take-over control socket at")
        return p

    def server_states(self):
        """{"z0": "UP", ...} from HAProxy's stats socket (`show stat`, CSV)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(e2e.SHORT)
                s.connect(self.stats_sock)
                s.sendall(b"show stat\n")
                out = e2e.recv_all(s)[0].decode()
        except OSError:
            return {}
        states = {}
        for line in out.splitlines():
            f = line.split(",")
            if len(f) > 17 and f[0] == "zcio" and f[1].startswith("z"):
                states[f[1]] = f[17].split()[0]
        return states

    def wait_up(self, which):
        e2e.wait_until(lambda: all(self.server_states().get("z%d" % i) == "UP" for i in which) or None,
                       e2e.START_TIMEOUT, "HAProxy sees z%s UP (now %s)" % (which, self.server_states()))

    def start_load(self, seconds):
        return self.spawn(self.net.run("cl", [sys.executable, LOAD, "load", "%s:%d" % (BALANCER, FRONT_PORT),
                                              seconds, RATE, 0, 0]), stdout=subprocess.PIPE)

    def load_result(self, load, seconds):
        out, _ = load.popen.communicate(timeout=seconds + 90)
        self.assertEqual(load.popen.returncode, 0, load.stderr_text())
        stats = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(stats["corrupt"], 0, stats)
        self.assertEqual(stats["ok"] + stats["failed"], stats["started"], stats)
        self.assertGreaterEqual(stats["rate"], RATE * 0.6, stats)
        return stats

    def check_records(self, at_least):
        """Every upstream connection that carried bytes names the client and came from a
        zcio instance. HAProxy's checks send a v2 LOCAL header (send-proxy-v2), which
        keeps the real peer: zcio relays them with the balancer's address and no byte."""
        lines = []
        for rec in self.records:
            with open(rec) as f:
                lines += [l.split() for l in f.read().splitlines()]
        data = [l for l in lines if l[2] != "0"]
        checks = [l for l in lines if l[2] == "0"]
        self.assertGreaterEqual(len(data), at_least)
        self.assertEqual({l[0] for l in data}, {CLIENT}, "upstream saw another client address")
        self.assertTrue({l[0] for l in checks} <= {CLIENT, BALANCER}, {l[0] for l in checks})
        self.assertTrue({l[1] for l in lines} <= set(ZCIOS), {l[1] for l in lines})
        return len(data), len(checks)

    def test_kill_then_rolling_takeover(self):
        # 1. kill -9 one instance under load.
        seconds = 8
        load = self.start_load(seconds)
        time.sleep(3)  # load runs meanwhile; what follows is measured, not waited on
        killed_at = time.monotonic()
        os.kill(self.zcio[0].pid, signal.SIGKILL)  # `ip netns exec` exec'd zcio: same pid
        e2e.wait_until(lambda: self.server_states().get("z0") == "DOWN" or None, e2e.SHORT, "z0 DOWN")
        down_after = time.monotonic() - killed_at
        stats = self.load_result(load, seconds)
        late = [t - killed_at for t in stats["failed_starts"]]
        print("\nkill -9: %d of %d connections failed, started %s s after the kill; HAProxy saw z0 "
              "DOWN %.3f s after it; errors %s" % (stats["failed"], stats["started"],
                                                    [round(t, 3) for t in late], down_after,
                                                    stats["errors"]), file=sys.stderr)
        self.assertTrue(all(t < RECOVERY_BOUND for t in late), late)
        self.assertLess(stats["failed"], stats["started"] * 0.2, stats)
        self.zcio[0].kill()
        ok_after_kill = stats["ok"]

        # 2. a fresh z0, then a rolling take-over of all three under load.
        self.zcio[0] = self.start_zcio(0)
        self.wait_up([0, 1, 2])
        seconds = 10
        load = self.start_load(seconds)
        begin = time.monotonic()
        olds = []
        for i, at in enumerate((2.0, 4.5, 7.0)):
            time.sleep(max(0.0, begin + at - time.monotonic()))
            new = self.start_zcio(i, take_over=True)
            new.wait_for("stopped accepting and drains")
            olds.append(self.zcio[i])
            self.zcio[i] = new
        stats = self.load_result(load, seconds)
        print("rolling take-over x3: %d of %d connections failed (%.1f/s): %s"
              % (stats["failed"], stats["started"], stats["rate"], json.dumps(stats)), file=sys.stderr)
        self.assertEqual(stats["failed"], 0, stats)
        for old in olds:
            self.assertEqual(old.wait(e2e.SHORT * 3), 0, old.stderr_text())
            old.wait_for("take-over: drained, exiting")
        self.assertEqual(self.server_states(), {"z0": "UP", "z1": "UP", "z2": "UP"})

        # 3. the original client everywhere.
        n, checks = self.check_records(ok_after_kill + stats["ok"])
        print("upstream: %d connections with data, every one from %s; %d without a byte (health "
              "checks)" % (n, CLIENT, checks), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--upstream-server":
        upstream_server(int(sys.argv[2]), sys.argv[3])
        sys.exit(0)
    reason = skip_reason()
    if reason:
        print("SKIP: %s" % reason)
        sys.exit(77)
    e2e.main()
