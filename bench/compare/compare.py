#!/usr/bin/env python3
"""make compare: `zcio proxy` side by side with other TCP proxies on loopback.

Rows: no proxy (the limit), the floor (floor.c, a minimal blocking splice relay: what
the kernel alone charges for relaying; a yardstick, not a peer), zcio proxy with each
engine, HAProxy with splice forced both ways and without splice, socat, nginx's stream
proxy, and a Go io.Copy proxy. Tests, each run for every row (the floor only in
throughput and latency), interleaved (round 1: A B C ..., round 2: B C ... A, ...) so
drift on the machine hits every row alike:

  throughput  iperf3, 1 and 4 streams: Gbit/s and the proxy's CPU seconds per GB
  latency     sockperf TCP ping-pong, 64-byte messages: round trip p50 and p99
  cps         new connections per second: connect, 64-byte request, 64-byte reply, close
  idle        5,000 idle connections: proxy RSS per connection, pipes held,
              kernel memory per connection
  stalled     5,000 connections whose upstream stopped reading once the path was
              full: proxy RSS per connection besides the data it holds

Every proxy is started fresh for each measurement, in its own process group, on new
ports, and stopped afterwards; all children are stopped at exit and on Ctrl-C.
Python 3 standard library only. See docs/BENCHMARKS.md, "Side by side: make compare".

  python3 bench/compare/compare.py                     # the default run (make compare)
  python3 bench/compare/compare.py --quick             # 1-2 minute smoke run
  python3 bench/compare/compare.py --only zcio-auto,haproxy-splice --rounds 5 --seconds 10
  python3 bench/compare/compare.py --render bench/compare/results/X.json   # doc + plots again
"""

import argparse
import atexit
import ctypes
import datetime
import json
import os
import platform
import random
import re
import resource
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TMP = os.path.join(HERE, "tmp")
BIN = os.path.join(TMP, "bin")
HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
IMG = os.path.join(ROOT, "docs", "img")
HEADING = "## Side by side: make compare"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
TESTS = ["cps", "throughput", "latency", "idle", "stalled"]


def say(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ /proc readers

def stat_of(pid):
    """(ppid, state, CPU ticks: utime+stime of all threads + cutime+cstime of reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rfind(")") + 2:].split()  # f[0] is field 3 (state)
    return int(f[1]), f[0], sum(int(x) for x in f[11:15])


def process_tree(root):
    """root and its live descendants (socat's children, nginx's worker)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat_of(d)
            if st:
                kids.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu_s(root):
    total = 0
    for p in process_tree(root):
        st = stat_of(p)
        if st:
            total += st[2]
    return total / TICK


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_census(root):
    """RSS, PSS, fds and pipe fds summed over the proxy's process tree."""
    pids = process_tree(root)
    c = {"processes": len(pids), "rss": 0, "anon": 0, "pss": 0, "fds": 0, "pipe_fds": 0}
    for p in pids:
        c["rss"] += status_kb(p, "VmRSS") * 1024
        c["anon"] += status_kb(p, "RssAnon") * 1024
        c["pss"] += pss_kb(p) * 1024
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            c["fds"] += 1
            c["pipe_fds"] += target.startswith("pipe:")
    return c


def wait_rss_steady(root, settle, limit=5.0):
    """Waits at least `settle` seconds, then until the proxy tree's RSS stays put for a
    second (or `limit` seconds pass); returns the seconds waited. A proxy may hand
    memory back a little after a burst of connections (zcio trims at most twice a
    second): idle memory is what it holds once it is idle, not the moment after."""
    t0 = time.monotonic()
    if settle > 0:
        time.sleep(settle)
    rss = lambda: sum(status_kb(p, "VmRSS") for p in process_tree(root))
    last, since = rss(), time.monotonic()
    while time.monotonic() - t0 < limit:
        time.sleep(0.25)
        now = rss()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
    return time.monotonic() - t0


SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def socket_buffers(ports):
    """Bytes queued in, or reserved by, the TCP sockets on these ports (`ss -m`: rmem_alloc +
    wmem_queued + fwd_alloc + optmem). Counted per socket so other traffic on the machine
    does not blur it, as the system-wide `mem` of /proc/net/sockstat would."""
    expr = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    try:
        r = subprocess.run(["ss", "-tnmH", "state", "all", f"( {expr} )"], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = 0
    for m in SKMEM.finditer(r.stdout):
        kv = {}
        for item in m.group(1).split(","):
            k = item.rstrip("0123456789")
            kv[k] = int(item[len(k):] or 0)
        total += kv.get("r", 0) + kv.get("w", 0) + kv.get("f", 0) + kv.get("o", 0)
    return total


def kernel_memory(ports):
    """Kernel memory that sockets, pipes and processes cost (bytes): system-wide Slab,
    KernelStack and PageTables from /proc/meminfo, plus the socket buffers of `ports`."""
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0]) * 1024
    out = {k: m.get(k, 0) for k in ("Slab", "SUnreclaim", "KernelStack", "PageTables", "MemAvailable")}
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()
                kv = dict(zip(w[1::2], (int(x) for x in w[2::2])))
                out["sockstat_tcp_mem"] = kv.get("mem", 0) * PAGE  # system-wide: for reference only
                out["tcp_inuse"] = kv.get("inuse", 0)
                out["tcp_tw"] = kv.get("tw", 0)
    out["socket_buffers"] = (socket_buffers(ports) or 0) if ports else 0
    out["total"] = out["Slab"] + out["KernelStack"] + out["PageTables"] + out["socket_buffers"]
    return out


def wait_kernel_quiet(timeout=10.0, step=0.25, tol=512 * 1024):
    """Wait until system-wide kernel memory stops moving (two steps in a row within `tol`
    bytes): the previous measurement's sockets, and socat's 5,000 processes, are freed
    a while after they were closed. Returns the seconds waited."""
    def total():
        k = kernel_memory([])
        return k["Slab"] + k["KernelStack"] + k["PageTables"]
    t0 = time.monotonic()
    prev, calm = total(), 0
    while time.monotonic() - t0 < timeout and calm < 2:
        time.sleep(step)
        cur = total()
        calm = calm + 1 if abs(cur - prev) <= tol else 0
        prev = cur
    return time.monotonic() - t0


def cpu_jiffies():
    """(busy, total) over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def ss_lines(*args):
    """Lines of `ss -tnH ARGS` (netlink, filtered in the kernel: fast even with many
    thousands of TIME_WAIT sockets around, which make /proc/net/tcp slow to read)."""
    try:
        r = subprocess.run(["ss", "-tnH", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in r.stdout.splitlines() if line.strip()]


def listening(port):
    return bool(ss_lines("-l", f"sport = :{port}"))


def established(port):
    """TCP connections ESTABLISHED whose local port is `port` (the server's side)."""
    return len(ss_lines("state", "established", f"( sport = :{port} )"))


def free_ports(k):
    """k free ports below the ephemeral range. A bind without SO_REUSEADDR also fails
    while a TIME_WAIT socket holds the port."""
    out = []
    while len(out) < k:
        p = random.randrange(20000, 32000)
        if p in out:
            continue
        s = socket.socket()
        try:
            s.bind((HOST, p))
        except OSError:
            continue
        finally:
            s.close()
        out.append(p)
    return out


# ------------------------------------------------------------- child processes

LIVE = {}  # pid -> Child


def _child_setup():
    # In the child, before exec: the open-file soft limit up to the hard one, and
    # die if compare.py dies (SIGKILL included).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Child:
    """A server or proxy we started, in its own process group (stopped as a group)."""

    def __init__(self, name, argv, log, env=None, pipes=False):
        self.name, self.argv = name, argv
        self.logf = open(log, "ab")
        self.logf.write(f"\n=== {time.ctime()} {shlex.join(argv)}\n".encode())
        self.logf.flush()
        self.p = subprocess.Popen(
            argv, stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self.logf, stderr=self.logf,
            start_new_session=True, preexec_fn=_child_setup,
            env=None if env is None else {**os.environ, **env})
        self.pid = self.p.pid
        self._buf = b""
        LIVE[self.pid] = self

    def alive(self):
        return self.p.poll() is None

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def readline(self, timeout):
        """One line of the child's stdout, or None after `timeout` seconds or at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.p.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def stop(self, grace=3.0):
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # what is left of the group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(3)
        except subprocess.TimeoutExpired:
            say(f"warning: {self.name} (pid {self.pid}) did not exit after SIGKILL")
        for f in (self.p.stdin, self.p.stdout):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        self.logf.close()
        LIVE.pop(self.pid, None)
        reap_orphans()


def reap_orphans():
    """Reap zombies that were re-parented to us (we are a subreaper) and that no Popen owns."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in LIVE:
            st = stat_of(d)
            if st and st[0] == me and st[1] == "Z":
                try:
                    os.waitpid(int(d), os.WNOHANG)
                except ChildProcessError:
                    pass


def stop_all():
    for child in list(LIVE.values()):
        child.stop(grace=1.0)


def wait_listening(port, child, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return True
        if child is not None and not child.alive():
            return False
        time.sleep(0.02)
    return False


def run_client(argv, timeout):
    """Run a client to completion; (returncode, stdout, stderr), or None on a timeout."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, preexec_fn=_child_setup)
    except subprocess.TimeoutExpired:
        return None
    return r.returncode, r.stdout, r.stderr


# --------------------------------------------------------------------- the rows

class Row:
    """kind: "direct" (no proxy), "zcio", "peer" (another proxy) or "yardstick" (floor:
    neither zcio nor a peer, never compared against in the targets). tests: the tests
    (throughput, latency, cps, idle) the row runs in; None for all."""

    def __init__(self, name, label, kind, threads, argv=None, config=None, env=None, forks=False, tests=None):
        self.name, self.label, self.kind, self.threads = name, label, kind, threads
        self.argv, self.config, self.env, self.forks = argv, config, env or {}, forks
        self.tests = tests

    def runs(self, test):
        if test == "stalled" and self.kind != "zcio":
            return False  # its Unix socket upstream is in zcio's argv only (m_stalled)
        return self.tests is None or test.split(":")[0] in self.tests

    @property
    def direct(self):
        return self.kind == "direct"

    def start(self, lport, uport, rundir, extra=(), upstream=None):
        """Start the proxy (None for `direct`); raises RuntimeError when it does not listen."""
        if self.direct:
            return None
        subs = {"LISTEN_PORT": lport, "UPSTREAM_PORT": uport, "RUN_DIR": rundir, "BIN": BIN,
                "CONFIG": ""}
        os.makedirs(rundir, exist_ok=True)
        if self.config:
            with open(os.path.join(HERE, self.config)) as f:
                text = f.read()
            for k, v in subs.items():
                text = text.replace(f"@{k}@", str(v))
            subs["CONFIG"] = os.path.join(rundir, self.config)
            with open(subs["CONFIG"], "w") as f:
                f.write(text)
        argv = [upstream if upstream and a == HOST + ":{UPSTREAM_PORT}" else a.format(**subs)
                for a in self.argv] + list(extra)
        child = Child(self.name, argv, os.path.join(rundir, "proxy.log"), env=self.env)
        if not wait_listening(lport, child, 10):
            rc = child.p.poll()
            child.stop()
            raise RuntimeError(f"{self.name} did not listen (exit code {rc}); see {rundir}/proxy.log")
        time.sleep(0.1)
        return child


def make_rows(zcio):
    z = [zcio, "--log-level", "warn", "proxy", "--threads", "1", "--drain-timeout", "1",
         "--listen", HOST + ":{LISTEN_PORT}", "--upstream", HOST + ":{UPSTREAM_PORT}", "--engine"]
    hap = ["haproxy", "-db", "-f", "{CONFIG}"]
    return [
        Row("direct", "no proxy (the limit)", "direct", "—"),
        # A thread pair per connection: the connection-rate test would time thread
        # creation, and 5,000 idle connections would hold 10,000 threads.
        Row("floor", "floor.c: blocking splice relay, a thread per direction, 1 MiB pipe", "yardstick",
            "a thread per direction per connection",
            [os.path.join(BIN, "floor"), "{LISTEN_PORT}", "{UPSTREAM_PORT}"], tests=("throughput", "latency")),
        Row("zcio-auto", "zcio proxy --engine auto", "zcio", "--threads 1", z + ["auto"]),
        Row("zcio-splice", "zcio proxy --engine splice", "zcio", "--threads 1", z + ["splice"]),
        Row("zcio-buffer", "zcio proxy --engine buffer", "zcio", "--threads 1", z + ["buffer"]),
        # Opt-in: polls without sleeping for 50 µs after work (lower latency, more CPU).
        Row("zcio-busypoll", "zcio proxy --engine auto --busy-poll 50us", "zcio", "--threads 1",
            z + ["auto", "--busy-poll", "50us"]),
        Row("haproxy-splice", "HAProxy, splice-request + splice-response", "peer", "nbthread 1", hap,
            "haproxy-splice.cfg"),
        Row("haproxy-nosplice", "HAProxy, nosplice", "peer", "nbthread 1", hap, "haproxy-nosplice.cfg"),
        Row("nginx", "nginx stream, proxy_half_close on", "peer", "worker_processes 1",
            ["nginx", "-p", "{RUN_DIR}", "-c", "{CONFIG}", "-e", "{RUN_DIR}/error.log"], "nginx.conf"),
        Row("socat", "socat, fork per connection", "peer", "one process per connection",
            ["socat", f"TCP-LISTEN:{{LISTEN_PORT}},bind={HOST},reuseaddr,fork,backlog=4096",
             f"TCP:{HOST}:{{UPSTREAM_PORT}}"], forks=True),
        Row("goproxy", "Go io.Copy proxy", "peer", "GOMAXPROCS=1",
            [os.path.join(BIN, "goproxy"), "-listen", HOST + ":{LISTEN_PORT}",
             "-upstream", HOST + ":{UPSTREAM_PORT}"], env={"GOMAXPROCS": "1"}),
    ]


def haproxy_spliced_bytes(rundir):
    """TotalSplicedBytesOut from HAProxy's `show info`, or None."""
    path = os.path.join(rundir, "haproxy.sock")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    # HAProxy 2.6 spells it TotalSplicdedBytesOut
    m = re.search(rb"TotalSplic\w*BytesOut:\s*(\d+)", data)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ measurements

class Skip(Exception):
    pass


def measure(row, test, args, seq):
    """One measurement of one row; a dict (with "error" when it failed)."""
    rundir = os.path.join(args.workdir, f"{seq:03d}-{test.replace(':', '')}-{row.name}")
    os.makedirs(rundir, exist_ok=True)
    uport, lport = free_ports(2)
    servers, proxy = [], None
    try:
        fn = {"throughput": m_throughput, "latency": m_latency, "cps": m_cps, "idle": m_idle,
              "stalled": m_stalled}[test.split(":")[0]]

        def start_server(name, argv, env=None, pipes=False):
            s = Child(name, argv, os.path.join(rundir, f"{name}.log"), env=env, pipes=pipes)
            servers.append(s)
            if not wait_listening(uport, s, 10):
                raise Skip(f"{name} did not listen on {uport}")
            return s

        def start_proxy(extra=(), upstream=None):
            nonlocal proxy
            proxy = row.start(lport, uport, rundir, extra, upstream)
            return proxy

        port = uport if row.direct else lport
        return fn(row, test, args, rundir, uport, port, start_server, start_proxy)
    except (Skip, RuntimeError) as e:
        return {"error": str(e)}
    finally:
        if proxy is not None:
            proxy.stop()
        for s in servers:
            s.stop()


def m_throughput(row, test, args, rundir, uport, port, start_server, start_proxy):
    streams = int(test.split(":")[1])
    start_server("iperf3-server", ["iperf3", "-s", "-1", "-B", HOST, "-p", str(uport)])
    proxy = start_proxy()
    cpu0 = tree_cpu_s(proxy.pid) if proxy else 0.0
    j0, t0 = cpu_jiffies(), time.monotonic()
    r = run_client(["iperf3", "-c", HOST, "-p", str(port), "-P", str(streams), "-t", str(args.seconds), "-J"],
                   args.seconds + 30)
    wall, j1 = time.monotonic() - t0, cpu_jiffies()
    if row.forks:
        time.sleep(0.2)  # socat's children exit and are reaped into its cutime/cstime
    cpu1 = tree_cpu_s(proxy.pid) if proxy else 0.0
    if r is None:
        raise Skip("iperf3 client timed out")
    try:
        j = json.loads(r[1])
    except json.JSONDecodeError:
        raise Skip(f"iperf3 printed no JSON: {r[1][-200:]} {r[2][-200:]}")
    if "error" in j:
        raise Skip(f"iperf3: {j['error']}")
    got = j["end"]["sum_received"]
    rec = {"gbps": got["bits_per_second"] / 1e9, "bytes": got["bytes"], "wall_s": wall,
           "retransmits": j["end"].get("sum_sent", {}).get("retransmits"),
           "machine_busy_pct": 100.0 * (j1[0] - j0[0]) / max(1, j1[1] - j0[1])}
    if proxy:
        cpu = cpu1 - cpu0
        rec.update(proxy_cpu_s=cpu, cpu_s_per_gb=cpu / (got["bytes"] / 1e9) if got["bytes"] else None,
                   proxy_cpu_pct=100.0 * cpu / wall, proxy_alive=proxy.alive())
        if row.name.startswith("haproxy"):
            rec["haproxy_spliced_bytes"] = haproxy_spliced_bytes(rundir)
    return rec


PCT = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")


def m_latency(row, test, args, rundir, uport, port, start_server, start_proxy):
    start_server("sockperf-server", ["sockperf", "server", "--tcp", "-i", HOST, "-p", str(uport)])
    proxy = start_proxy()
    cpu0 = tree_cpu_s(proxy.pid) if proxy else 0.0
    r = run_client(["sockperf", "ping-pong", "--tcp", "-i", HOST, "-p", str(port), "-m", str(args.msg_size),
                    "-t", str(args.seconds), "--full-rtt"], args.seconds + 30)
    cpu1 = tree_cpu_s(proxy.pid) if proxy else 0.0
    if r is None:
        raise Skip("sockperf client timed out")
    text = re.sub(r"\x1b\[[0-9;]*m", "", r[1] + r[2])
    pct = {float(a): float(b) for a, b in PCT.findall(text)}
    if 50.0 not in pct or 99.0 not in pct:
        raise Skip(f"no percentiles in sockperf's output (exit {r[0]}): {text[-300:]}")
    total = re.search(r"\[Total Run\].*?ReceivedMessages=(\d+)", text)
    rec = {"p50_us": pct[50.0], "p99_us": pct[99.0], "p999_us": pct.get(99.9),
           "round_trips": int(total.group(1)) if total else None}
    if proxy:
        rec["proxy_cpu_s"] = cpu1 - cpu0
        if rec["round_trips"]:
            rec["proxy_cpu_us_per_rtt"] = (cpu1 - cpu0) * 1e6 / rec["round_trips"]
    return rec


def m_cps(row, test, args, rundir, uport, port, start_server, start_proxy):
    lg = os.path.join(BIN, "loadgen")
    start_server("rr-server", [lg, "rr-server", "-listen", f"{HOST}:{uport}", "-req", "64", "-resp", "64"])
    proxy = start_proxy()
    cpu0 = tree_cpu_s(proxy.pid) if proxy else 0.0
    r = run_client([lg, "rr-client", "-addr", f"{HOST}:{port}", "-c", str(args.cps_concurrency),
                    "-seconds", str(args.cps_seconds), "-req", "64", "-resp", "64"], args.cps_seconds + 30)
    if row.forks:
        time.sleep(0.2)
    cpu1 = tree_cpu_s(proxy.pid) if proxy else 0.0
    if r is None:
        raise Skip("loadgen rr-client timed out")
    try:
        rec = json.loads(r[1].strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise Skip(f"loadgen rr-client: {r[1][-200:]} {r[2][-200:]}")
    rec["failed"] = rec.pop("errors")
    if proxy:
        rec["proxy_cpu_s"] = cpu1 - cpu0
        if rec["conns"]:
            rec["proxy_cpu_us_per_conn"] = (cpu1 - cpu0) * 1e6 / rec["conns"]
    return rec


def wait_established(uport, want, timeout, stall):
    """Poll the upstream's ESTABLISHED count until it reaches `want`, stops growing for
    `stall` seconds, or `timeout` passes; returns the count."""
    deadline = time.monotonic() + timeout
    n, last, since = 0, -1, time.monotonic()
    while time.monotonic() < deadline:
        n = established(uport)
        if n >= want:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > stall:
            return n
        time.sleep(0.2)
    return n


def m_idle(row, test, args, rundir, uport, port, start_server, start_proxy):
    lg = os.path.join(BIN, "loadgen")
    start_server("hold-server", [lg, "hold-server", "-listen", f"{HOST}:{uport}"])
    proxy = start_proxy()
    n = args.conns
    before = tree_census(proxy.pid) if proxy else None
    ports = sorted({uport, port})
    quiet_s = wait_kernel_quiet()
    k0 = kernel_memory(ports)
    client = Child("hold-client", [lg, "hold-client", "-addr", f"{HOST}:{port}", "-n", str(n), "-par", "64",
                                   "-msg", "64", "-open-timeout", f"{args.open_timeout}s"],
                   os.path.join(rundir, "hold-client.log"), pipes=True)
    try:
        line = client.readline(args.open_timeout + 15)
        if not line or not line.startswith("open "):
            raise Skip(f"hold-client did not report its connections ({line!r})")
        opened = int(line.split()[1])
        reached = wait_established(uport, n, 30, 1.0)
        time.sleep(args.settle)
        reached = min(established(uport), opened)
        if reached == 0:
            raise Skip("no connection reached the upstream")
        k1 = kernel_memory(ports)
        # Kernel memory at the settle time (as every earlier run read it: waiting longer
        # moved the reclaimable slab by kilobytes per connection from round to round),
        # the proxy's own memory once it stopped moving.
        settled_s = wait_rss_steady(proxy.pid, 0) if proxy else 0.0
        # Reading /proc/PID/fd makes the kernel build a dentry and an inode for every fd
        # (about 1 KB each, kept): so kernel memory is read before each fd census, and
        # the next delta starts again after it.
        open_state = tree_census(proxy.pid) if proxy else None
        k1b = kernel_memory(ports)
        client.send("echo")
        line = client.readline(120)
        if not line or not line.startswith("echoed "):
            raise Skip(f"hold-client did not finish the echo ({line!r})")
        echoed = int(line.split()[1])
        time.sleep(args.settle)
        k2 = kernel_memory(ports)
        settled_echo_s = wait_rss_steady(proxy.pid, 0) if proxy else 0.0
        echo_state = tree_census(proxy.pid) if proxy else None
        client.send("quit")  # the client resets its connections (SO_LINGER 0) and exits
        try:
            client.p.wait(15)
        except subprocess.TimeoutExpired:
            pass
    finally:
        client.stop()
    rec = {"conns": n, "opened": opened, "reached": reached, "echoed": echoed, "waited_for_quiet_s": quiet_s,
           "settled_s": settled_s, "settled_echo_s": settled_echo_s,
           "kernel_before": k0, "kernel_open": k1, "kernel_open_after_census": k1b, "kernel_echo": k2,
           "kernel_b_per_conn": (k1["total"] - k0["total"]) / reached,
           "kernel_b_per_conn_echo": (k1["total"] - k0["total"] + k2["total"] - k1b["total"]) / reached}
    if proxy:
        rec.update(before=before, open=open_state, echo=echo_state,
                   rss_b_per_conn=(open_state["rss"] - before["rss"]) / reached,
                   pss_b_per_conn=(open_state["pss"] - before["pss"]) / reached,
                   rss_b_per_conn_echo=(echo_state["rss"] - before["rss"]) / reached,
                   pss_b_per_conn_echo=(echo_state["pss"] - before["pss"]) / reached,
                   fds_per_conn=(open_state["fds"] - before["fds"]) / reached,
                   pipe_fds=open_state["pipe_fds"], pipe_fds_echo=echo_state["pipe_fds"],
                   pipe_fds_before=before["pipe_fds"], proxy_alive=proxy.alive())
    return rec


# The stalled case's peers are the stress suite's (tests/stress/stall.py).
PEERS = os.path.join(ROOT, "tests", "stress", "peers.py")
BUFFER_BYTES = 64 * 1024  # one zcio pooled buffer (buffer_pool's default buffer_size)


def zcio_metrics(mport, tries=5):
    """{name: value summed over label sets} from a zcio proxy's /metrics; Skip when it
    cannot be read `tries` times in a row (a busy proxy may close a scrape at 2 s)."""
    for i in range(tries):
        try:
            with socket.create_connection((HOST, mport), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if b"zcio_connections_active" in data:
                break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        raise Skip(f"the proxy's /metrics on port {mport} could not be read")
    out = {}
    for name, value in re.findall(rb"^(zcio_\w+)(?:\{[^}]*\})? (\S+)$", data, re.M):
        out[name.decode()] = out.get(name.decode(), 0) + float(value)
    return out


def stall_peer(name, argv, rundir, timeout=20):
    """A peers.py stall role (JSON lines on stdin/stdout) once it said hello."""
    child = Child(name, [sys.executable, PEERS] + argv, os.path.join(rundir, f"{name}.log"), pipes=True)
    if child.readline(timeout) is None:
        child.stop()
        raise Skip(f"{name} did not start")
    return child


def ask(child, wait, **cmd):
    child.send(json.dumps(cmd))
    line = child.readline(wait)
    if not line:
        raise Skip(f"{child.name} did not answer {cmd['cmd']}")
    return json.loads(line)


def wait_active(mport, n, timeout):
    """zcio's active connections once they reach `n` or stop growing for a second."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        k = int(zcio_metrics(mport).get("zcio_connections_active", 0))
        if k >= n or (k == last and time.monotonic() - since > 1.0):
            return k
        if k != last:
            last, since = k, time.monotonic()
        time.sleep(0.2)
    return last


STALL_BYTES = 448 * 1024  # per connection: more than a Unix socket's send buffer plus a pipe


def m_stalled(row, test, args, rundir, uport, port, start_server, start_proxy):
    """The upstream (a Unix socket: see tests/stress/stall.py) accepts and never reads;
    each client sends STALL_BYTES, more than the upstream socket's send buffer (208 KiB)
    and the relay's pipe or buffer (64 KiB) hold, so every connection's client-to-
    upstream direction waits on a full destination holding a full pipe or buffer (zcio
    rows only; the leases are read from its /metrics). Pipe pages are kernel memory,
    not mapped into the process, so RSS does not include them; a zcio buffer is heap
    (in RssAnon): user_b_per_conn is RssAnon's growth less buffers leased x 64 KiB."""
    path = os.path.join(rundir, "upstream.sock")
    up = stall_peer("stall-upstream", ["stall-upstream", "unix:" + path], rundir)
    mport = free_ports(1)[0]
    client = None
    try:
        proxy = start_proxy(["--metrics", f"{HOST}:{mport}"], upstream="unix:" + path)
        # A stalled spliced connection holds 4 descriptors (2 sockets, a pipe's 2 ends):
        # at the limit the proxy cannot accept its own /metrics scrape any more.
        n = min(args.conns, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 256) // 4)
        wait_rss_steady(proxy.pid, 0.2)
        before = tree_census(proxy.pid)
        client = stall_peer("stall-clients", ["stall-clients", str(port), "1"], rundir)
        opened = ask(client, args.open_timeout + 15, cmd="connect", n=n)["open"]
        reached = wait_active(mport, n, 30)
        fill = ask(client, 150, cmd="fill", stuck_for=0.5, max_bytes=STALL_BYTES, timeout=120)
        time.sleep(max(args.settle, 0.6))  # zcio's gauges refresh twice a second
        settled_s = wait_rss_steady(proxy.pid, 0)
        m = zcio_metrics(mport)
        reached = min(int(m.get("zcio_connections_active", 0)), opened)
        if reached == 0:
            raise Skip("no connection reached the upstream")
        state = tree_census(proxy.pid)
        ask(client, 60, cmd="close")
    finally:
        for c in (client, up):
            if c is not None:
                c.stop()
    pipes, buffers = int(m.get("zcio_pipes_leased", 0)), int(m.get("zcio_buffers_leased", 0))
    held = buffers * BUFFER_BYTES
    return {"conns": n, "opened": opened, "reached": reached, "sent_min": fill["min"], "sent_max": fill["max"],
            "settled_s": settled_s, "before": before, "stalled": state, "pipes_leased": pipes,
            "buffers_leased": buffers, "held_per_conn": (pipes + buffers) / reached,
            "rss_b_per_conn": (state["rss"] - before["rss"]) / reached,
            "anon_b_per_conn": (state["anon"] - before["anon"]) / reached,
            "user_b_per_conn": (state["anon"] - before["anon"] - held) / reached,
            "pipe_fds": state["pipe_fds"], "proxy_alive": proxy.alive()}

# ---------------------------------------------------------------------- summary

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(records, rows, tests):
    """Per test and row: the median (and min, max) of each figure over the rounds."""
    out = {}
    for test in tests:
        out[test] = {}
        for name in rows:
            rs = [r for r in records if r["test"] == test and r["row"] == name]
            ok = [r for r in rs if "error" not in r]
            s = {"rounds": len(rs), "ok": len(ok), "errors": [r["error"] for r in rs if "error" in r]}
            keys = sorted({k for r in ok for k, v in r.items() if isinstance(v, (int, float))
                           and not isinstance(v, bool) and k not in ("round", "seq")})
            for k in keys:
                vals = [r.get(k) for r in ok if r.get(k) is not None]
                if vals:
                    s[k] = statistics.median(vals)
                    s[k + "_min"], s[k + "_max"] = min(vals), max(vals)
            if test == "idle" and ok and "pipe_fds" in ok[0]:
                s["pipe_fds_max"] = max(r["pipe_fds"] for r in ok)
                s["pipe_fds_echo_max"] = max(r["pipe_fds_echo"] for r in ok)
            out[test][name] = s
    # ratios to the no-proxy row, and the proxy's own share of kernel memory
    for test in out:
        d = out[test].get("direct", {})
        for name, s in out[test].items():
            if test.startswith("throughput") and d.get("gbps") and s.get("gbps") is not None:
                s["ratio"] = s["gbps"] / d["gbps"]
            if test == "cps" and d.get("conns_per_s") and s.get("conns_per_s") is not None:
                s["ratio"] = s["conns_per_s"] / d["conns_per_s"]
            if test == "latency" and d.get("p50_us") is not None and s.get("p50_us") is not None:
                s["p50_added_us"] = s["p50_us"] - d["p50_us"]
                s["p99_added_us"] = s["p99_us"] - d["p99_us"]
            if test == "idle" and name != "direct" and "kernel_b_per_conn" in d and "kernel_b_per_conn" in s:
                s["proxy_kernel_b_per_conn"] = s["kernel_b_per_conn"] - d["kernel_b_per_conn"]
                s["proxy_kernel_b_per_conn_echo"] = s["kernel_b_per_conn_echo"] - d["kernel_b_per_conn_echo"]
    return out


def fmt(x, nd=2, unit=""):
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 1000 and nd <= 1:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{nd}f}{unit}"


def rng(s, key, nd):
    if s.get(key + "_min") is None or s.get("ok", 0) < 2:
        return ""
    return f" ({fmt(s[key + '_min'], nd)}–{fmt(s[key + '_max'], nd)})"


def kind_of(res, r):
    """A row's kind; results written before the floor row have "kinds" too, this is a fallback."""
    k = res.get("kinds", {}).get(r)
    return k or ("direct" if r == "direct" else "zcio" if r.startswith("zcio") else "peer")


def targets(summary, rows, kinds):
    """The team's targets for every zcio row: (description, {row: (value text, met)}).
    Peers ("best peer", "HAProxy's") are the other proxies only: not no proxy, not the floor;
    the floor's figure is quoted beside a target it gives scale to."""
    zrows = [r for r in rows if kinds[r] == "zcio"]
    peers = [r for r in rows if kinds[r] == "peer"]
    floor = next((r for r in rows if kinds[r] == "yardstick"), None)
    g = lambda test, row, key: summary.get(test, {}).get(row, {}).get(key)  # noqa: E731
    out = []

    def ref(test, key, f):
        x = g(test, floor, key) if floor else None
        return "" if x is None else f" ({floor}: {f(x)})"

    def add(desc, fn):
        cells = {}
        for z in zrows:
            try:
                cells[z] = fn(z)
            except (TypeError, ZeroDivisionError, ValueError):
                cells[z] = ("n/a", None)
        out.append((desc, cells))

    add("1 stream ≥ 0.75× no proxy" + ref("throughput:1", "ratio", lambda x: f"{x:.2f}×"), lambda z: (
        f"{g('throughput:1', z, 'ratio'):.2f}×", g("throughput:1", z, "ratio") >= 0.75))
    if "goproxy" in rows:
        add("1 stream ≥ 1.2× the Go proxy", lambda z: (
            f"{g('throughput:1', z, 'gbps') / g('throughput:1', 'goproxy', 'gbps'):.2f}×",
            g("throughput:1", z, "gbps") >= 1.2 * g("throughput:1", "goproxy", "gbps")))
    add("1 stream at ≤ 0.15 CPU s/GB" + ref("throughput:1", "cpu_s_per_gb", lambda x: f"{x:.3f}"), lambda z: (
        f"{g('throughput:1', z, 'cpu_s_per_gb'):.3f}", g("throughput:1", z, "cpu_s_per_gb") <= 0.15))
    add("4 streams ≥ 0.65× no proxy" + ref("throughput:4", "ratio", lambda x: f"{x:.2f}×"), lambda z: (
        f"{g('throughput:4', z, 'ratio'):.2f}×", g("throughput:4", z, "ratio") >= 0.65))
    add("latency p50 adds ≤ 20 µs over no proxy" + ref("latency", "p50_added_us", lambda x: f"+{x:.1f} µs"),
        lambda z: (f"+{g('latency', z, 'p50_added_us'):.1f} µs", g("latency", z, "p50_added_us") <= 20))
    p99s = [(g("latency", p, "p99_us"), p) for p in peers if g("latency", p, "p99_us") is not None]
    if p99s:
        best = min(p99s)
        add(f"latency p99 ≤ the best peer's ({best[1]}, {best[0]:.1f} µs)", lambda z: (
            f"{g('latency', z, 'p99_us'):.1f} µs", g("latency", z, "p99_us") <= best[0]))
    hcps = [(g("cps", p, "conns_per_s"), p) for p in peers if p.startswith("haproxy")
            and g("cps", p, "conns_per_s") is not None]
    if hcps:
        best = max(hcps)
        add(f"connections/s ≥ HAProxy's ({best[1]}, {best[0]:,.0f}/s)", lambda z: (
            f"{g('cps', z, 'conns_per_s'):,.0f}/s", g("cps", z, "conns_per_s") >= best[0]))

    def idle_rss(z):
        a, b = g("idle", z, "rss_b_per_conn"), g("idle", z, "rss_b_per_conn_echo")
        return f"{a:,.0f} / {b:,.0f} B", max(a, b) <= 512
    add("idle: ≤ 512 B proxy RSS per connection (open / after echo)", idle_rss)

    def idle_pipes(z):
        a, b = g("idle", z, "pipe_fds_max"), g("idle", z, "pipe_fds_echo_max")
        return f"{a // 2} / {b // 2} pipes", a == 0 and b == 0
    add("idle: 0 pipes held (open / after echo)", idle_pipes)
    hk = [(g("idle", p, "proxy_kernel_b_per_conn"), p) for p in peers if p.startswith("haproxy")
          and g("idle", p, "proxy_kernel_b_per_conn") is not None]
    if hk:
        best = min(hk)
        add(f"idle: kernel memory per connection ≤ HAProxy's ({best[1]}, {best[0]:,.0f} B)", lambda z: (
            f"{g('idle', z, 'proxy_kernel_b_per_conn'):,.0f} B",
            g("idle", z, "proxy_kernel_b_per_conn") <= best[0]))
    if "stalled" in summary:
        add("stalled: ≤ 1 KB user-space RSS per connection besides held buffers", lambda z: (
            f"{g('stalled', z, 'user_b_per_conn'):,.0f} B", g("stalled", z, "user_b_per_conn") <= 1024))
    return zrows, out


def stalled_table(st, a, rows, name):
    L = [f"**Stalled connections**: {a['conns']:,} connections through the proxy to a Unix socket "
         f"upstream that accepts and never reads; each client sends {STALL_BYTES // 1024} KiB, more than "
         "the upstream socket's send buffer and the relay's pipe or buffer hold, so every connection waits "
         "on a full upstream holding a full pipe or buffer (zcio rows only: the leases come from its "
         "/metrics). Per connection that reached the upstream: RSS and RssAnon growth of the proxy; "
         "user: RssAnon growth less buffers leased × 64 KiB (a buffer is heap; pipe pages are kernel "
         "memory, in neither figure).", "",
         "| proxy | reached | pipes + buffers held per conn | RSS B/conn | RssAnon B/conn | user B/conn |",
         "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        s = st.get(r)
        if not s or "reached" not in s:
            continue
        L.append(f"| {name(r)} | {fmt(s.get('reached'), 0)} | {fmt(s.get('held_per_conn'), 2)} | "
                 f"{fmt(s.get('rss_b_per_conn'), 0)} | {fmt(s.get('anon_b_per_conn'), 0)} | "
                 f"{fmt(s.get('user_b_per_conn'), 0)} |")
    return L + [""]


def tables(res, part="all"):
    """Markdown tables for the doc (and the terminal): part "targets", "figures" or "all"."""
    if part == "all":
        return tables(res, "targets") + tables(res, "figures")
    summary, rows = res["summary"], res["rows"]
    a = res["args"]
    L = []
    zrows, tg = targets(summary, rows, {r: kind_of(res, r) for r in rows}) if part == "targets" else ([], [])
    if zrows and tg:
        L += ["**Targets** (medians of this run; met ✅ / not met ❌):", "",
              "| target | " + " | ".join(zrows) + " |", "| --- |" + " ---: |" * len(zrows)]
        for desc, cells in tg:
            L.append(f"| {desc} | " + " | ".join(
                f"{cells[z][0]} {'✅' if cells[z][1] else '❌' if cells[z][1] is not None else ''}".strip()
                for z in zrows) + " |")
        L.append("")
    if part == "targets":
        return L

    def name(r):  # zcio in bold, the floor (a yardstick) in italics
        k = kind_of(res, r)
        return f"**{r}**" if k == "zcio" else f"*{r}*" if k == "yardstick" else r

    def errs(test, r):
        s = summary.get(test, {}).get(r, {})
        return f" ({s['ok']}/{s['rounds']} rounds)" if s.get("errors") else ""

    if "throughput:1" in summary or "throughput:4" in summary:
        L += [f"**Throughput**: iperf3 client → server through the proxy, {a['seconds']} s per run; Gbit/s "
              "(min–max over the rounds), ratio to no proxy, and the proxy's CPU seconds (user + system, "
              "all threads and processes) per GB received.", "",
              "| proxy | 1 stream Gbit/s | × no proxy | CPU s/GB | 4 streams Gbit/s | × no proxy | CPU s/GB |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            cells = []
            for t in ("throughput:1", "throughput:4"):
                s = summary.get(t, {}).get(r, {})
                cells += [fmt(s.get("gbps")) + rng(s, "gbps", 1) + errs(t, r), fmt(s.get("ratio")),
                          fmt(s.get("cpu_s_per_gb"), 3)]
            L.append(f"| {name(r)} | " + " | ".join(cells) + " |")
        L.append("")
    if "latency" in summary:
        L += [f"**Latency**: sockperf TCP ping-pong, {a['msg_size']}-byte messages, full round trip, "
              f"{a['seconds']} s per run; µs.", "",
              "| proxy | p50 | p50 added | p99 | p99 added | proxy CPU µs per round trip |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            s = summary["latency"].get(r, {})
            add50 = "" if r == "direct" else fmt(s.get("p50_added_us"), 1)
            add99 = "" if r == "direct" else fmt(s.get("p99_added_us"), 1)
            L.append(f"| {name(r)} | {fmt(s.get('p50_us'), 1)}{rng(s, 'p50_us', 1)}{errs('latency', r)} | "
                     f"{add50} | {fmt(s.get('p99_us'), 1)}{rng(s, 'p99_us', 1)} | {add99} | "
                     f"{fmt(s.get('proxy_cpu_us_per_rtt'), 1)} |")
        L.append("")
    if "cps" in summary:
        L += [f"**New connections per second**: {a['cps_concurrency']} client connections at a time, each "
              "connect, send 64 B, read the 64-byte reply to EOF (the server closes), close; "
              f"{a['cps_seconds']} s per run.", "",
              "| proxy | connections/s | × no proxy | proxy CPU µs per connection | failed |",
              "| --- | ---: | ---: | ---: | ---: |"]
        for r in rows:
            s = summary["cps"].get(r, {})
            L.append(f"| {name(r)} | {fmt(s.get('conns_per_s'), 0)}{rng(s, 'conns_per_s', 0)}{errs('cps', r)} | "
                     f"{fmt(s.get('ratio'))} | {fmt(s.get('proxy_cpu_us_per_conn'), 1)} | "
                     f"{fmt(s.get('failed'), 0)} |")
        L.append("")
    def pipes_before(s):
        return f" ({s['pipe_fds_before']:.0f} before)" if s.get("pipe_fds_before") else ""

    if "idle" in summary:
        L += [f"**Idle connections**: {a['conns']:,} connections opened through the proxy and left idle, "
              "then 64 bytes echoed once on each and left idle again. Per connection that reached the "
              "upstream. RSS and PSS: the proxy's processes; pipe fds: held by the proxy (2 per pipe; before the connections in brackets); "
              "kernel: system-wide Slab + KernelStack + PageTables plus the buffers of the test's sockets, and "
              "the proxy's share (that minus the no-proxy row, which holds only the client's and the server's "
              "sockets).", "",
              "| proxy | reached | RSS B/conn | PSS B/conn | fds/conn | pipe fds | kernel B/conn | proxy's kernel "
              "B/conn | after echo: RSS B/conn | pipe fds | proxy's kernel B/conn |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            s = summary["idle"].get(r, {})
            reached = fmt(s.get("reached"), 0)
            if s.get("reached") is not None and s["reached"] < a["conns"]:
                reached += " †"
            L.append(f"| {name(r)} | {reached}{errs('idle', r)} | {fmt(s.get('rss_b_per_conn'), 0)} | "
                     f"{fmt(s.get('pss_b_per_conn'), 0)} | {fmt(s.get('fds_per_conn'), 2)} | "
                     f"{fmt(s.get('pipe_fds_max'), 0)}{pipes_before(s)} | {fmt(s.get('kernel_b_per_conn'), 0)} | "
                     f"{fmt(s.get('proxy_kernel_b_per_conn'), 0)} | {fmt(s.get('rss_b_per_conn_echo'), 0)} | "
                     f"{fmt(s.get('pipe_fds_echo_max'), 0)} | {fmt(s.get('proxy_kernel_b_per_conn_echo'), 0)} |")
        if any(summary["idle"].get(r, {}).get("reached", a["conns"]) < a["conns"] for r in rows):
            L += ["", "† fewer connections reached the upstream than were opened: the proxy ran out of "
                  "file descriptors (the hard limit here is 20,000 per process). The rest waited in its "
                  "accept queue; per-connection figures are per connection that reached the upstream, so "
                  "the system-wide kernel figure of that row also carries the waiting clients' sockets."]
        L.append("")
    if "stalled" in summary:
        L += stalled_table(summary["stalled"], a, rows, name)
    errors = [(t, r, e) for t in summary for r in rows for e in summary[t].get(r, {}).get("errors", [])]
    if errors:
        L += ["Failed measurements (left out of the medians):", ""]
        L += [f"- {t} / {r}: {e}" for t, r, e in errors[:20]]
        L.append("")
    return L


# ------------------------------------------------------------------------ plots

COLORS = {"direct": (0x9E9E9E, 0x616161), "zcio": (0xFDAE6B, 0xE6550D), "peer": (0x9ECAE1, 0x3182BD),
          "yardstick": (0xA1D99B, 0x31A354)}


def write_plot_data(res, pdir):
    summary, rows = res["summary"], res["rows"]
    os.makedirs(pdir, exist_ok=True)

    def v(x, nd=4):
        return "NaN" if x is None else f"{x:.{nd}f}"

    def g(test, r, k):
        return summary.get(test, {}).get(r, {}).get(k)

    def ran(test, r):
        """False for a row left out of a test (the floor in cps and idle): no empty slot in its plot."""
        return summary.get(test, {}).get(r, {}).get("rounds", 1) > 0

    files = {}

    def write(fname, lines):
        with open(os.path.join(pdir, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
        files[fname] = len(lines)

    def line(r, vals):
        light, dark = COLORS[kind_of(res, r)]
        return f'"{"no proxy" if r == "direct" else r}" ' + " ".join(vals) + f" {light} {dark}"

    if "throughput:1" in summary or "throughput:4" in summary:
        write("throughput.dat", [line(r, [v(g("throughput:1", r, "gbps")), v(g("throughput:4", r, "gbps")),
                                          v(g("throughput:1", r, "ratio")), v(g("throughput:4", r, "ratio"))])
                                 for r in rows])
        write("cpu.dat", [line(r, [v(g("throughput:1", r, "cpu_s_per_gb")), v(g("throughput:4", r, "cpu_s_per_gb"))])
                          for r in rows if r != "direct"])
    if "latency" in summary:
        write("latency.dat", [line(r, [v(g("latency", r, "p50_us")), v(g("latency", r, "p99_us"))]) for r in rows])
    if "cps" in summary:
        write("cps.dat", [line(r, [v(g("cps", r, "conns_per_s")), v(g("cps", r, "ratio"))]) for r in rows
                          if ran("cps", r)])
    if "idle" in summary:
        def pos(x):
            return x if x is not None and x > 0 else None
        write("idle.dat", [line(r, [v(pos(g("idle", r, "pss_b_per_conn")), 1),
                                    v(pos(g("idle", r, "proxy_kernel_b_per_conn")), 1),
                                    v(pos(g("idle", r, "pss_b_per_conn_echo")), 1)])
                           for r in rows if r != "direct" and ran("idle", r)])
    return files


def plot(res, pdir, imgdir):
    files = write_plot_data(res, pdir)
    if not files:
        return []
    gp = "/usr/bin/gnuplot"
    if not os.path.exists(gp):
        say("gnuplot is not installed (apt-get install gnuplot-nox): no plots")
        return []
    os.makedirs(imgdir, exist_ok=True)
    sub = f"{res['env']['cpu_model']}, {res['env']['nproc']} cores, kernel {res['env']['kernel']}; " \
          f"median of {res['args']['rounds']} round{'s' if res['args']['rounds'] != 1 else ''}, " \
          f"{res['env']['date'][:10]}"
    expr = f"dir='{pdir}'; out='{imgdir}'; subtitle='{sub}'; " + \
           " ".join(f"have_{os.path.splitext(f)[0]}=1;" for f in files)
    r = run_client([gp, "-e", expr, os.path.join(HERE, "plots.gp")], 60)
    if r is None or r[0] != 0:
        say(f"gnuplot failed: {r and r[2][-500:]}")
        return []
    names = {"throughput.dat": "compare-throughput.png", "cpu.dat": "compare-cpu.png",
             "latency.dat": "compare-latency.png", "cps.dat": "compare-cps.png", "idle.dat": "compare-idle.png"}
    return [names[f] for f in files if os.path.exists(os.path.join(imgdir, names[f]))]


# ------------------------------------------------------------------ environment

def version_line(argv, pattern="."):
    """The first line of a tool's version output that matches `pattern`."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    for line in text.splitlines():
        if re.search(pattern, line):
            return line.strip()
    return None


def environment(zcio):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024

    def git(*a):
        try:
            return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    dirty = git("status", "--porcelain", "--", "src", "include", "tools")
    try:
        debian = open("/etc/debian_version").read().strip()
    except OSError:
        debian = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(), "debian": debian,
        "mem_gib": round(mem / 2**30, 1), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "zcio": zcio, "zcio_commit": git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in src/include/tools"
                                                                              if dirty else ""),
        "versions": {
            "haproxy": version_line(["haproxy", "-v"], r"HAProxy version"),
            "nginx": version_line(["nginx", "-v"], r"nginx version"),
            "socat": version_line(["socat", "-V"], r"socat version"),
            "go": version_line(["go", "version"], r"go version"),
            "iperf3": version_line(["iperf3", "--version"], r"iperf"),
            "sockperf": version_line(["sockperf", "--version"], r"version"),
            "gnuplot": version_line(["gnuplot", "--version"], r"gnuplot"),
            "cc": version_line(["cc", "--version"], r"."),
            "python": platform.python_version(),
        },
    }


def background_busy(seconds=1.0):
    """How busy the machine is before we start (other people's work), % of all cores."""
    a = cpu_jiffies()
    time.sleep(seconds)
    b = cpu_jiffies()
    return 100.0 * (b[0] - a[0]) / max(1, b[1] - a[1])


# --------------------------------------------------------------------- the doc

def short_version(text, pattern):
    m = re.search(pattern, text or "")
    return m.group(1) if m else "?"


def doc_section(res, images):
    env, a = res["env"], res["args"]
    v = env["versions"]
    ver = {k: short_version(v.get(k), pat) for k, pat in (
        ("haproxy", r"version (\S+)"), ("nginx", r"nginx/(\S+)"), ("socat", r"version (\S+)"),
        ("go", r"go(\d\S*)"), ("iperf3", r"iperf (\S+)"), ("sockperf", r"version (\d[\w.]*)"))}
    peers = (f"HAProxy {ver['haproxy']}, nginx {ver['nginx']} with libnginx-mod-stream, socat {ver['socat']}, "
             f"the Go proxy built with Go {ver['go']}; clients iperf3 {ver['iperf3']} and sockperf {ver['sockperf']}")
    rounds = f"{a['rounds']} round{'s' if a['rounds'] != 1 else ''}"
    rows = res["rows"]
    floor = [r for r in rows if kind_of(res, r) == "yardstick"]
    L = [
        "`make compare` (bench/compare/compare.py) runs every row below on loopback in one run, "
        "interleaved (each round runs the rows in turn, A B C …, and the order rotates each round, so "
        "machine drift hits every row alike). Every figure is the median of the rounds.",
        "",
        f"- **Command**: `{a['command']}` — {rounds}, {a['seconds']} s per throughput and "
        f"latency run, {a['cps_seconds']} s per connection-rate run, {a['conns']:,} idle connections; "
        f"the measurements took {res['duration_s'] / 60:.1f} min, after the build ({env['date']}).",
        f"- **Machine**: {env['nproc']} cores ({env['cpu_model']}), {env['mem_gib']} GiB, kernel "
        f"{env['kernel']}, Debian {env['debian']}; open-file limit {env['nofile'][1]:,} per process. "
        f"Load average {' '.join(env['loadavg_start'])} at the start and "
        f"{' '.join(res.get('loadavg_end', ['?']))} at the end; the cores were {res.get('background_busy_pct', 0):.0f} % "
        "busy with other work just before the run. Client, server and proxy share the same 2 cores, "
        "so compare rows of this run with each other, not with other runs.",
        f"- **zcio**: `{env['zcio']}` at {env['zcio_commit']}, `--threads 1 --log-level warn`.",
        f"- **Peers** (Debian packages): {peers}.",
        "- **One core each**: every proxy runs with one thread or worker where it has the choice: "
        + "; ".join(f"{r} `{res['threads'][r]}`" for r in rows if r not in ("direct", "socat", *floor))
        + ". socat has no such choice: it forks a process per connection, so its 4 streams can use both "
        "cores" + (" (and so can the floor, with a thread per direction per connection)" if floor else "") + ". "
        "Nothing is pinned: pinning the proxy to one core would leave the client and the server one core "
        "between them, and the other work on the machine moves anyway.",
    ]
    if floor:
        L.append(
            f"- **Floor** (the row *{floor[0]}*, a yardstick, not a proxy): bench/compare/floor.c, built with "
            f"`cc -O2` ({v.get('cc') or 'cc'}), the least a splicing relay can do: one thread per direction per "
            "connection, blocking splice(2) through a 1 MiB pipe, no event loop, no timeouts, no logging. Its CPU s/GB and "
            "its ratio to no proxy are what the kernel alone charges for moving the bytes through a splicing "
            "relay on this machine, so every proxy's figures read as that plus its own overhead, and a "
            "target such as 0.15 CPU s/GB can be judged against it. It is not a peer: \"best peer\" and "
            "\"HAProxy's\" in the targets never mean it. It runs only in the throughput and latency tests "
            "(a dash elsewhere): with a thread pair per connection, the connection-rate test would time "
            f"thread creation and the idle test would hold {2 * a['conns']:,} threads for {a['conns']:,} "
            "connections.")
    L.append("")
    L += tables(res, "targets")
    if images:
        L += ["Bars in orange are zcio, grey is no proxy, " + ("green the floor, " if floor else "") +
              "blue the other proxies; the tables below have the numbers.", ""]
        alt = {"compare-throughput.png": "throughput per proxy, 1 and 4 streams, with the ratio to no proxy",
               "compare-cpu.png": "proxy CPU seconds per GB, 1 and 4 streams",
               "compare-latency.png": "ping-pong round trip p50 and p99 per proxy",
               "compare-cps.png": "new connections per second per proxy",
               "compare-idle.png": "memory per idle connection: proxy PSS and the proxy's kernel share"}
        L += [f"![{alt.get(i, i)}](img/{i})" for i in images]
        L.append("")
    L += tables(res, "figures")
    notes = run_notes(res)
    if notes:
        L += ["What this run showed besides the tables:", ""] + [f"- {n}" for n in notes] + [""]
    L += [
        "How each figure is taken:",
        "",
        "- **Throughput**: `iperf3 -s -1` is the upstream and `iperf3 -c -P N -t S -J` connects through the "
        "proxy; Gbit/s is `end.sum_received`. **CPU s/GB** is the change in utime + stime of the proxy's "
        "processes (`/proc/PID/stat`, which covers all threads, plus cutime + cstime of reaped children such as "
        "socat's) over the run, divided by the GB (10⁹ bytes) received; the clock ticks at 10 ms.",
        "- **Latency**: `sockperf server --tcp` upstream, `sockperf ping-pong --tcp -m 64 --full-rtt` through the "
        "proxy; sockperf's own p50 and p99 of the round trip over its measured window (after its warm-up).",
        "- **Connections/s**: `loadgen` (bench/compare/loadgen.go) against its own reply server. The no-proxy "
        "row is the ceiling of that client and server on this machine: a proxy far below it is not held back "
        "by the client.",
        "- **Idle**: `loadgen hold-client` opens the connections 64 at a time and holds them (so the clients and "
        "the upstream use their own processes' file descriptors, not the proxy's); the figures are taken once "
        "every connection reached the upstream (`ss`): kernel memory after a settle time, RSS and the rest "
        "once the proxy's RSS has stayed put for a second (at most 5 s more: zcio hands memory back at most "
        "twice a second after a burst of connections, and a reading at the settle time varied from 487 to "
        "1,507 B per connection over one run's rounds); then again the same way after 64 bytes went both "
        "ways on every connection. "
        "**RSS/PSS**: `VmRSS` and `smaps_rollup` Pss of the proxy's "
        "processes, after minus before, divided by the connections; for socat (one process per connection) "
        "RSS counts the shared pages in every process, PSS is the fair figure. **Pipe fds**: `pipe:` entries in "
        "`/proc/PID/fd` of the proxy's processes. **Kernel memory**: the change in `Slab + KernelStack + "
        "PageTables` from `/proc/meminfo` (system-wide) plus the memory queued in or reserved by the test's own "
        "sockets (`ss -tm`: rmem_alloc + wmem_queued + fwd_alloc + optmem, summed over the sockets on the "
        "test's two ports; the system-wide `mem` of `/proc/net/sockstat` moved by megabytes with other "
        "people's traffic), divided by the connections; the no-proxy row holds only the client's and the server's sockets, so a "
        "proxy's own share is its row minus that one (sockets, epoll entries, pipes and their buffers, and for "
        "socat the processes' kernel stacks and page tables). Other work on the machine moves these by a few "
        "hundred bytes per connection. The connections are closed with a reset (SO_LINGER 0) so that no "
        "TIME_WAIT sockets linger into the next row's figures, and each row's baseline is taken once kernel "
        "memory has stopped moving (the previous row's sockets, and socat's 5,000 processes, are freed for "
        "seconds after they closed). Listing `/proc/PID/fd` costs kernel memory "
        "itself (a dentry and an inode per fd), so kernel memory is read before each fd count, and the "
        "after-echo change is counted from after it.",
        f"- Raw records and every figure's min and max: `bench/compare/results/{res['file']}`; "
        f"`python3 bench/compare/compare.py --render bench/compare/results/{res['file']}` writes this "
        "section and the plots again.",
    ]
    return "\n".join(L)


def run_notes(res):
    """Observations that follow from the records themselves."""
    notes, recs, summ = [], res["records"], res["summary"]
    for f in (n for n in res["rows"] if kind_of(res, n) == "yardstick"):
        parts = []
        for t, label in (("throughput:1", "1 stream"), ("throughput:4", "4 streams")):
            s = summ.get(t, {}).get(f, {})
            if s.get("gbps") is not None and s.get("cpu_s_per_gb") is not None:
                parts.append(f"{label} {s['gbps']:.2f} Gbit/s ({fmt(s.get('ratio'))}× no proxy) at "
                             f"{s['cpu_s_per_gb']:.3f} CPU s/GB")
        if parts:
            note = "The floor: " + "; ".join(parts) + "."
            fl = summ.get("throughput:1", {}).get(f, {}).get("cpu_s_per_gb")
            if fl:
                note += (" That is what the kernel charges a splicing relay here; the 0.15 CPU s/GB target is "
                         f"{0.15 / fl:.2f}× the floor's 1-stream figure")
                zs = [(s["cpu_s_per_gb"], n) for n, s in summ.get("throughput:1", {}).items()
                      if kind_of(res, n) == "zcio" and s.get("cpu_s_per_gb") is not None]
                if zs:
                    z = min(zs)
                    note += f", and the leanest zcio row ({z[1]}, {z[0]:.3f}) spends {z[0] - fl:+.3f} beyond it"
                note += "."
            notes.append(note)
    for name in ("haproxy-splice", "haproxy-nosplice"):
        rs = [r for r in recs if r["row"] == name and r["test"].startswith("throughput") and "error" not in r
              and r.get("haproxy_spliced_bytes") is not None and r.get("bytes")]
        if rs:
            frac = med([r["haproxy_spliced_bytes"] / r["bytes"] for r in rs])
            notes.append(f"{name}: HAProxy's `show info` counted {frac:.0%} of the bytes as spliced "
                         f"(TotalSplicdedBytesOut, sic, over the bytes iperf3 received, median of {len(rs)} runs).")
    lat = summ.get("latency", {})
    hit = [n for n in res["rows"] if (lat.get(n, {}).get("p99_us_max") or 0) > 1000]
    if hit:
        notes.append("p99 latency went above 1 ms in at least one round of " + ", ".join(hit) + " (about 0.1 ms "
                     "when undisturbed): a single-threaded proxy, or sockperf itself, that loses its core to other "
                     "work on these 2 cores for a few ms. The min–max columns show how many rounds were hit; p50 "
                     "is the steadier figure.")
    cps = summ.get("cps", {})
    proxies = [n for n in res["rows"] if kind_of(res, n) in ("zcio", "peer")]
    if cps.get("direct", {}).get("conns_per_s") and proxies:
        best = max((cps.get(n, {}).get("conns_per_s") or 0, n) for n in proxies)
        notes.append(f"Connection rate: the client and server alone reach {cps['direct']['conns_per_s']:,.0f}/s; "
                     f"the fastest proxy row ({best[1]}) reaches {best[0] / cps['direct']['conns_per_s']:.0%} of "
                     "that while it also needs CPU from the same 2 cores, so the proxies are measured below the "
                     "client's own ceiling.")
    idle = summ.get("idle", {})
    d = idle.get("direct", {})
    if d.get("ok", 0) >= 2 and d.get("kernel_b_per_conn_min") is not None:
        notes.append(f"Idle kernel memory: the no-proxy row alone moved between {d['kernel_b_per_conn_min']:,.0f} "
                     f"and {d['kernel_b_per_conn_max']:,.0f} B per connection over the rounds (Slab is "
                     "system-wide, and other work allocates and frees too), so differences between proxies "
                     "smaller than that spread are noise.")
    for n in res["rows"]:
        s = idle.get(n, {})
        if s.get("reached") is not None and s["reached"] < res["args"]["conns"]:
            why = (f"it held {s['pipe_fds_max']:,.0f} pipe fds besides 2 sockets per connection, and ran into "
                   "the 20,000-fd limit" if s.get("pipe_fds_max", 0) > s["reached"] else
                   "see its log in the run's tmp/ directory")
            notes.append(f"{n} reached only {s['reached']:,.0f} of {res['args']['conns']:,} idle connections: {why}.")
    return notes


def update_doc(section, doc):
    with open(doc) as f:
        text = f.read()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        i, j = text.index(BEGIN), text.index(END) + len(END)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    with open(doc, "w") as f:
        f.write(text)


def render(res, write_doc, doc=DOC, imgdir=IMG):
    print("\n".join(tables(res)))
    images = plot(res, os.path.join(TMP, "plot"), imgdir) if write_doc else []
    if write_doc:
        update_doc(doc_section(res, images), doc)
        say(f"wrote {doc} (between {BEGIN} and {END}) and {len(images)} plots in {imgdir}/")


# ------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each figure is the median); default 3")
    ap.add_argument("--seconds", type=int, default=2, help="seconds per throughput and latency run; default 2")
    ap.add_argument("--cps-seconds", type=float, help="seconds per connection-rate run; default: 1.5 (--quick: 1)")
    ap.add_argument("--cps-concurrency", type=int, default=16, help="client connections at a time; default 16")
    ap.add_argument("--conns", type=int, default=5000, help="idle connections; default 5000")
    ap.add_argument("--msg-size", type=int, default=64, help="latency message bytes; default 64")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds to wait before an idle snapshot")
    ap.add_argument("--open-timeout", type=float, default=30, help="give up opening idle connections after this")
    ap.add_argument("--only", help="rows to run, comma-separated (direct is always run): " +
                    ",".join(r.name for r in make_rows("zcio")))
    ap.add_argument("--tests", default=",".join(TESTS), help=f"tests to run; default {','.join(TESTS)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 1 s runs, 1000 idle connections, results in tmp/, no doc")
    ap.add_argument("--zcio", default=os.path.join(ROOT, "build", "release", "tools", "zcio", "zcio"))
    ap.add_argument("--out", help="results directory; default bench/compare/results (tmp/ with --quick)")
    ap.add_argument("--doc", dest="doc", action="store_true", default=None,
                    help="write docs/BENCHMARKS.md and docs/img (default unless --quick)")
    ap.add_argument("--no-doc", dest="doc", action="store_false")
    ap.add_argument("--doc-file", default=DOC, help="the Markdown file to write; default docs/BENCHMARKS.md")
    ap.add_argument("--img-dir", default=IMG, help="where the PNG plots go; default docs/img")
    ap.add_argument("--command", help="the command to quote in the doc (make compare passes its own)")
    ap.add_argument("--render", metavar="JSON", help="only write the tables, doc and plots of an earlier run")
    args = ap.parse_args()

    if args.render:
        with open(args.render) as f:
            res = json.load(f)
        render(res, args.doc is not False, args.doc_file, args.img_dir)
        return 0

    if args.quick:
        args.rounds, args.seconds, args.conns = 1, 1, min(args.conns, 1000)
    if args.cps_seconds is None:
        args.cps_seconds = 1 if args.quick else 1.5
    write_doc = args.doc if args.doc is not None else not args.quick
    out = args.out or (os.path.join(TMP, "results") if args.quick else os.path.join(HERE, "results"))
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    for t in tests:
        if t not in TESTS:
            ap.error(f"unknown test {t!r} (tests: {', '.join(TESTS)})")

    rows = make_rows(os.path.abspath(args.zcio))
    if args.only:
        want = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = want - {r.name for r in rows}
        if unknown:
            ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
        rows = [r for r in rows if r.direct or r.name in want]
    need = [(args.zcio, "make compare builds it (cmake --preset release && cmake --build --preset release)")] \
        if any(r.kind == "zcio" for r in rows) else []
    need += [(os.path.join(BIN, "loadgen"), "make compare builds it (go build in bench/compare)")]
    if any(r.name == "floor" for r in rows):
        need.append((os.path.join(BIN, "floor"), "make compare builds it (cc floor.c in bench/compare)"))
    if any(r.name == "goproxy" for r in rows):
        need.append((os.path.join(BIN, "goproxy"), "make compare builds it (go build in bench/compare)"))
    for path, how in need:
        if not os.access(path, os.X_OK):
            ap.error(f"{path} is missing: {how}")
    for tool in ("iperf3", "sockperf", "haproxy", "nginx", "socat"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(":") +
                   ["/usr/sbin", "/sbin"]):
            ap.error(f"{tool} is not installed (make compare installs the Debian packages)")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * args.conns + 100:
        say(f"warning: the open-file limit {hard} is too low for {args.conns} connections through one process")
    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: socat's orphans come to us
    except OSError:
        pass
    atexit.register(stop_all)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.workdir = os.path.join(TMP, f"run-{stamp}")
    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    command = args.command or "python3 bench/compare/compare.py " + shlex.join(sys.argv[1:])

    env = environment(os.path.relpath(os.path.abspath(args.zcio), ROOT))
    busy = background_busy()
    # cps first and idle last in a round: the TIME_WAIT sockets that cps leaves behind
    # expire (60 s) before the idle figures of the same round are taken.
    plan_tests = [t for t in ["cps", "throughput:1", "throughput:4", "latency", "idle", "stalled"]
                  if t.split(":")[0] in tests]
    plan = []
    for rnd in range(args.rounds):
        k = (rnd * len(rows)) // max(1, args.rounds)
        order = rows[k:] + rows[:k]
        for t in plan_tests:
            plan += [(rnd, t, r) for r in order if r.runs(t)]
    only = "".join(f"; {r.name} only in {' and '.join(r.tests)}" for r in rows if r.tests)
    say(f"{len(plan)} measurements: {args.rounds} rounds × {len(plan_tests)} tests × {len(rows)} rows "
        f"({', '.join(r.name for r in rows)}{only}); machine {busy:.0f} % busy before the start; logs in "
        f"{os.path.relpath(args.workdir, ROOT)}/")
    records = []
    t_start = time.monotonic()
    try:
        for seq, (rnd, test, row) in enumerate(plan):
            rec = measure(row, test, args, seq)
            rec.update(row=row.name, test=test, round=rnd, seq=seq)
            records.append(rec)
            if "error" in rec:
                brief = "ERROR " + rec["error"]
            elif test.startswith("throughput"):
                brief = f"{rec['gbps']:.2f} Gbit/s" + (f", {rec['cpu_s_per_gb']:.3f} CPU s/GB"
                                                        if rec.get("cpu_s_per_gb") is not None else "")
                if rec.get("haproxy_spliced_bytes") is not None:
                    brief += f", HAProxy spliced {rec['haproxy_spliced_bytes'] / 1e9:.2f} GB"
            elif test == "latency":
                brief = f"p50 {rec['p50_us']:.1f} µs, p99 {rec['p99_us']:.1f} µs"
            elif test == "cps":
                brief = f"{rec['conns_per_s']:,.0f} conn/s ({rec['failed']} failed)"
            elif test == "stalled":
                brief = (f"{rec['reached']} reached, {rec['held_per_conn']:.2f} pipes + buffers held per conn, "
                         f"RSS {rec['rss_b_per_conn']:,.0f} B/conn, user {rec['user_b_per_conn']:,.0f} B/conn")
            else:
                brief = f"{rec['reached']} reached, kernel {rec['kernel_b_per_conn']:,.0f} B/conn" + (
                    f", RSS {rec['rss_b_per_conn']:,.0f} B/conn, {rec['pipe_fds']} pipe fds"
                    if "rss_b_per_conn" in rec else "")
            el = time.monotonic() - t_start
            eta = el / (seq + 1) * (len(plan) - seq - 1)
            say(f"[{seq + 1}/{len(plan)}, {el:.0f} s, ~{eta:.0f} s left] round {rnd + 1} {test} {row.name}: {brief}")
    except KeyboardInterrupt as e:
        say(f"interrupted ({e or 'SIGINT'}): stopping everything we started")
        stop_all()
        return 130
    finally:
        stop_all()

    duration = time.monotonic() - t_start
    res = {
        "file": f"compare-{stamp}.json", "command": command, "args": {**vars(args), "command": command},
        "env": env, "background_busy_pct": busy, "loadavg_end": open("/proc/loadavg").read().split()[:3],
        "duration_s": duration, "rows": [r.name for r in rows], "kinds": {r.name: r.kind for r in rows},
        "labels": {r.name: r.label for r in rows}, "threads": {r.name: r.threads for r in rows},
        "argv": {r.name: r.argv for r in rows}, "tests": plan_tests, "records": records,
    }
    res["summary"] = summarize(records, res["rows"], plan_tests)
    path = os.path.join(out, res["file"])
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    say(f"done in {duration / 60:.1f} min; results in {os.path.relpath(path, ROOT)}")
    render(res, write_doc, args.doc_file, args.img_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
