#!/usr/bin/env python3
"""UDP forwarders side by side on loopback: zcio proxy's UDP routes, nginx's stream UDP
proxy, socat UDP-LISTEN fork, and no proxy at all.

    python3 bench/udp_forward.py [--build build/bench] [--rounds 3] [--seconds 2]
        [--sizes 64,1400] [--clients plain,gso] [--only zcio,nginx,...] [--sessions 10000]

The load is bench/udp/udp_load (one client socket, --window datagrams outstanding,
every echo checked) against an upstream that echoes (`zcio udp-echo`, batch mode, on
its own); each forwarder sits in between with one thread or worker. Per run: the
datagrams per second that came back, and the forwarder's CPU seconds (user + system of
the process and its live children, from /proc) per million datagrams. The order of the
forwarders rotates every round; medians of the rounds, ratios against nginx of the
same run. Then --sessions clients (one socket each, one datagram each) open that many
sessions through zcio and nginx, and the forwarder's RSS growth per idle session is
reported. Bounded: every run is --seconds plus start-up; every process is killed
after its run. Needs nginx with libnginx-mod-stream and socat (cmake/deps.sh compare).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

NGINX_CONF = """load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 60000;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 50000; }}
stream {{
    server {{
        listen 127.0.0.1:{L} udp;
        proxy_pass 127.0.0.1:{U};
        proxy_timeout 30s;
    }}
}}
"""


def tree_pids(root):
    """root and its live descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(root):
    """User + system time of root's tree, dead children (cutime, cstime) included."""
    total = 0.0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / TICK
    return total


def rss_kib(root):
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound(port):
    want = "0100007F:%04X " % port
    with open("/proc/net/udp") as f:
        return any(want in line for line in f)


class Proc:
    def __init__(self, argv, tmp):
        self.log = open(os.path.join(tmp, "proc-%d.log" % time.monotonic_ns()), "w+")
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log,
                                  start_new_session=True)

    def stop(self):
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 3)):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


def forwarder_argv(name, zcio, listen, upstream, tmp):
    if name == "zcio":
        return [zcio, "--log-level", "warn", "proxy", "--threads", "1", "--listen",
                "udp:127.0.0.1:%d" % listen, "--upstream", "127.0.0.1:%d" % upstream]
    if name == "nginx":
        d = tempfile.mkdtemp(dir=tmp)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(module=NGINX_MODULE, dir=d, L=listen, U=upstream))
        return ["nginx", "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")]
    if name == "socat":
        return ["socat", "UDP4-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr" % listen,
                "UDP4:127.0.0.1:%d" % upstream]
    raise SystemExit("unknown forwarder " + name)


def wait_bound(port, proc, what):
    for _ in range(100):
        if bound(port):
            return
        if proc.p.poll() is not None:
            break
        time.sleep(0.05)
    proc.log.seek(0)
    raise SystemExit(f"udp_forward.py: {what} did not start: {proc.log.read()[-2000:]}")


def one_run(name, args, size, client, tmp):
    echo_port = free_port()
    echo = Proc([args.zcio, "--log-level", "warn", "udp-echo", "--listen", "127.0.0.1:%d" % echo_port,
                 "--mode", "batch"], tmp)
    fwd = None
    try:
        wait_bound(echo_port, echo, "the echo upstream")
        target = echo_port
        if name != "direct":
            target = free_port()
            fwd = Proc(forwarder_argv(name, args.zcio, target, echo_port, tmp), tmp)
            wait_bound(target, fwd, name)
        flags = ["--gso", "--gro", "--window", "256"] if client == "gso" else ["--window", "64"]
        cpu0 = cpu_seconds(fwd.p.pid) if fwd else 0.0
        out = subprocess.run([args.load, "--json", "--ports", str(target), "--size", str(size),
                              "--seconds", str(args.seconds)] + flags,
                             capture_output=True, text=True, timeout=args.seconds + 30)
        cpu1 = cpu_seconds(fwd.p.pid) if fwd else 0.0
        if out.returncode != 0:
            raise SystemExit(f"udp_load failed: {out.stderr}")
        r = json.loads(out.stdout)
        echoed = max(r["echoed"], 1)
        return {"rate": r["echoed_per_s"], "cpu_per_m": (cpu1 - cpu0) * 1e6 / echoed,
                "lost": r["lost"], "bad": r["bad"]}
    finally:
        if fwd:
            fwd.stop()
        echo.stop()


def sessions_run(name, args, tmp):
    """RSS growth of the forwarder per idle session, for args.sessions clients."""
    echo = UdpEchoThreadless()
    fwd_port = free_port()
    fwd = Proc(forwarder_argv(name, args.zcio, fwd_port, echo.port, tmp), tmp)
    socks = []
    try:
        wait_bound(fwd_port, fwd, name)
        time.sleep(0.3)
        before = rss_kib(fwd.p.pid)
        answered = 0
        deadline = time.monotonic() + 120
        # In groups of 64, each group answered (or given up on after 2 s) before the
        # next: a burst of 10,000 would only measure the sockets' receive buffers.
        for first in range(0, args.sessions, 64):
            group = []
            for i in range(first, min(first + 64, args.sessions)):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                socks.append(s)
                group.append(s)
                s.sendto(b"session %d" % i, ("127.0.0.1", fwd_port))
            waiting = list(group)
            until = min(time.monotonic() + 2, deadline)
            while waiting and time.monotonic() < until:
                echo.pump()
                waiting = [s for s in waiting if not drain([s])]
                time.sleep(0.001)
            answered += len(group) - len(waiting)
        time.sleep(0.5)
        after = rss_kib(fwd.p.pid)
        return {"sessions": args.sessions, "answered": answered, "rss_before_kib": before,
                "rss_after_kib": after,
                "bytes_per_session": (after - before) * 1024 / max(args.sessions, 1)}
    finally:
        for s in socks:
            s.close()
        fwd.stop()
        echo.close()


def drain(socks):
    n = 0
    for s in socks:
        try:
            s.recv(100)
            n += 1
        except BlockingIOError:
            pass
    return n


class UdpEchoThreadless:
    """An echo the sessions run pumps itself (no thread: nothing to bound)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def pump(self):
        while True:
            try:
                d, a = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            self.sock.sendto(d, a)

    def close(self):
        self.sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--clients", default="plain,gso")
    ap.add_argument("--only", default="direct,zcio,nginx,socat")
    ap.add_argument("--sessions", type=int, default=10000, help="0: skip the sessions run")
    ap.add_argument("--json", help="write every run here (JSON lines)")
    args = ap.parse_args()
    args.zcio = os.path.abspath(os.path.join(args.build, "tools/zcio/zcio"))
    args.load = os.path.abspath(os.path.join(args.build, "bench/udp/udp_load"))
    for f in (args.zcio, args.load):
        if not os.access(f, os.X_OK):
            raise SystemExit(f"udp_forward.py: {f} is not built (cmake --preset bench && "
                             "cmake --build --preset bench --target zcio_cli udp_load)")
    names = args.only.split(",")
    if "nginx" in names and not (shutil.which("nginx") and os.path.exists(NGINX_MODULE)):
        raise SystemExit("udp_forward.py: nginx with libnginx-mod-stream is needed (cmake/deps.sh compare)")
    if "socat" in names and not shutil.which("socat"):
        raise SystemExit("udp_forward.py: socat is needed (cmake/deps.sh compare)")
    sizes = [int(s) for s in args.sizes.split(",")]
    clients = args.clients.split(",")
    tmp = tempfile.mkdtemp(prefix="zcio-udp-fwd-")
    results = {}
    log = open(args.json, "w") if args.json else None
    print(f"bench/udp_forward: {len(names)} forwarders x {len(sizes)} sizes x {len(clients)} clients "
          f"x {args.rounds} rounds of {args.seconds}s, {os.cpu_count()} cores, kernel {os.uname().release}")
    try:
        for rnd in range(args.rounds):
            for client in clients:
                for size in sizes:
                    order = names[rnd % len(names):] + names[:rnd % len(names)]
                    for name in order:
                        r = one_run(name, args, size, client, tmp)
                        results.setdefault((client, size, name), []).append(r)
                        if log:
                            log.write(json.dumps({"round": rnd, "client": client, "size": size,
                                                  "forwarder": name, **r}) + "\n")
                        print(f"  round {rnd} {client:5} {size:5} B {name:6} {r['rate']:>12,.0f} dgram/s "
                              f"{r['cpu_per_m']:8.3f} CPU s/M  lost {r['lost']} bad {r['bad']}", flush=True)
        print()
        print("| client | size | forwarder | datagrams/s | vs nginx | CPU s per M datagrams | vs nginx |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for client in clients:
            for size in sizes:
                base = results.get((client, size, "nginx"))
                base_rate = statistics.median(r["rate"] for r in base) if base else None
                base_cpu = statistics.median(r["cpu_per_m"] for r in base) if base else None
                for name in names:
                    rs = results[(client, size, name)]
                    rate = statistics.median(r["rate"] for r in rs)
                    cpu = statistics.median(r["cpu_per_m"] for r in rs)
                    vr = f"{rate / base_rate:.2f}x" if base_rate else "-"
                    vc = f"{cpu / base_cpu:.2f}x" if base_cpu and name != "direct" else "-"
                    cpu_text = f"{cpu:.3f}" if name != "direct" else "-"
                    print(f"| {client} | {size} | {name} | {rate:,.0f} | {vr} | {cpu_text} | {vc} |")
        if args.sessions > 0:
            print()
            for name in [n for n in ("zcio", "nginx") if n in names]:
                s = sessions_run(name, args, tmp)
                if log:
                    log.write(json.dumps({"sessions_run": name, **s}) + "\n")
                print(f"sessions {name}: {s['answered']}/{s['sessions']} answered, RSS "
                      f"{s['rss_before_kib']} -> {s['rss_after_kib']} KiB: "
                      f"{s['bytes_per_session']:.0f} B per idle session")
    finally:
        if log:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
