#!/usr/bin/env bash
# bench/http/run.sh: HTTP file transfer on loopback (issue 6).
#
#  1. Download: one SIZE file (default 1 GiB) from nginx (sendfile on) to a file, with
#     `zcio get`, `curl -o` and `wget -O`: user and system CPU seconds and wall time of
#     the client, RUNS rounds (default 5) with the order rotated each round, median
#     (min-max), and each client's CPU as a ratio of curl's.
#  2. Serving: `zcio serve --threads 1` against nginx (worker_processes 1, sendfile on,
#     tcp_nopush on, access log off; zcio with --log-level warn, so no access log
#     either) under wrk (1 thread, CONNECTIONS keep-alive connections, WRK_SECONDS per
#     run) for a 4 KiB and a 1 MiB file: requests per second and the server's CPU
#     microseconds per request (utime+stime of all its processes, from /proc), RUNS
#     runs each, median (min-max).
#
# Usage: bench/http/run.sh [BUILD_DIR]   (default build/bench; `make bench` passes it)
# Environment: RUNS (5), SIZE (bytes, default 1073741824), WRK_SECONDS (5),
#   CONNECTIONS (50), SKIP ("download" or "serve" to leave one part out).
# Needs: nginx, curl, wget, wrk (cmake/deps.sh test bench). A missing client or server
# is reported and its rows left out.
# Bounded: every client run has a time limit (120 s per download, WRK_SECONDS + 10 s per
# wrk run), servers that do not start within 10 s fail the run, and every process this
# script starts is killed on exit. With the defaults it takes about 3 minutes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$repo/build/bench}" && pwd)
zcio="$build/tools/zcio/zcio"
[ -x "$zcio" ] || { echo "bench/http/run.sh: $zcio is not built (cmake --preset bench)" >&2; exit 1; }

exec python3 - "$zcio" "$repo/tests/e2e/nginx/nginx.conf.in" <<'PY'
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

zcio, conf_template = sys.argv[1], sys.argv[2]
RUNS = int(os.environ.get("RUNS", "5"))
SIZE = int(os.environ.get("SIZE", str(1 << 30)))
WRK_SECONDS = int(os.environ.get("WRK_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
SKIP = os.environ.get("SKIP", "")
TICK = os.sysconf("SC_CLK_TCK")

tmp = tempfile.mkdtemp(prefix="zcio-bench-http-")
procs = []


def cleanup():
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(tmp, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("%s exited (%s) before listening" % (what, proc.returncode))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit("%s did not listen on %d within 10 s" % (what, port))


def spawn(argv, **kw):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    procs.append(p)
    return p


def run_measured(argv, timeout):
    """Runs argv; returns (exit code, user s, sys s, wall s) of that child alone."""
    start = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    deadline = start + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.005)
    wall = time.monotonic() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode("utf-8", "replace")
    p.stderr.close()
    if p.returncode != 0:
        print("  %s failed (%d): %s" % (argv[0], p.returncode, err.strip()[:300]), file=sys.stderr)
    return p.returncode, ru.ru_utime, ru.ru_stime, wall


def proc_cpu(pids):
    """utime+stime in seconds of these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except FileNotFoundError:
            pass
    return total / TICK


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def med(xs):
    return statistics.median(xs)


def span(xs, fmt):
    return (fmt + " (" + fmt + "-" + fmt + ")") % (med(xs), min(xs), max(xs))


def make_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 24)
            f.write(os.urandom(n))
            left -= n


try:
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    make_file(os.path.join(www, "f4k.bin"), 4096)
    make_file(os.path.join(www, "f1m.bin"), 1 << 20)
    if "download" not in SKIP:
        make_file(os.path.join(www, "big.bin"), SIZE)

    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx_bin, os.X_OK):
        sys.exit("bench/http/run.sh: nginx is not installed (Debian package nginx)")
    prefix = os.path.join(tmp, "nginx")
    os.makedirs(prefix)
    nport = free_port()
    conf = open(conf_template).read()
    conf = (conf.replace("@USER@", "user root;" if os.geteuid() == 0 else "").replace("@WORKERS@", "1")
            .replace("@PREFIX@", prefix).replace("@PORT@", str(nport)).replace("@ROOT@", www))
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(conf)
    nginx = spawn([nginx_bin, "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"), "-e",
                   os.path.join(prefix, "error.log")])
    wait_listening(nport, nginx, "nginx")
    print("machine: %d cores, %s; nginx %s" % (os.cpu_count(), os.uname().release,
          subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]))

    # ---- 1. download ----
    if "download" not in SKIP:
        url = "http://127.0.0.1:%d/big.bin" % nport
        out = os.path.join(tmp, "out.bin")
        clients = []
        if True:
            clients.append(("zcio get", [zcio, "get", url, "-o", out]))
        if shutil.which("curl"):
            clients.append(("curl -o", ["curl", "--silent", "--show-error", "--fail", "-o", out, url]))
        if shutil.which("wget"):
            clients.append(("wget -O", ["wget", "--quiet", "--no-proxy", "-O", out, url]))
        # Warm the page cache with the source once, so every client reads it from memory.
        with open(os.path.join(www, "big.bin"), "rb") as f:
            while f.read(1 << 24):
                pass
        res = {name: [] for name, _ in clients}
        for r in range(RUNS):
            order = clients[r % len(clients):] + clients[:r % len(clients)]
            for name, argv in order:
                rc, u, s, w = run_measured(argv, 120)
                size = os.path.getsize(out) if os.path.exists(out) else -1
                if rc == 0 and size == SIZE:
                    res[name].append((u, s, w))
                else:
                    print("  %s: run %d failed (exit %d, %d bytes)" % (name, r + 1, rc, size), file=sys.stderr)
                if os.path.exists(out):
                    os.unlink(out)  # dirty pages are dropped, not written back
        print()
        print("Download of %d MiB from nginx to a file, %d runs, median (min-max)" % (SIZE >> 20, RUNS))
        print()
        print("| client | user CPU s | system CPU s | total CPU s | CPU vs curl | wall s | MiB/s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        base = [u + s for u, s, _ in res.get("curl -o", [])]
        for name, _ in clients:
            rows = res[name]
            if not rows:
                print("| %s | failed | | | | | |" % name)
                continue
            tot = [u + s for u, s, _ in rows]
            ratio = "%.2f" % (med(tot) / med(base)) if base else "-"
            print("| %s | %s | %s | %s | %s | %s | %.0f |" % (
                name, span([u for u, _, _ in rows], "%.3f"), span([s for _, s, _ in rows], "%.3f"),
                span(tot, "%.3f"), ratio, span([w for _, _, w in rows], "%.2f"),
                (SIZE / (1 << 20)) / med([w for _, _, w in rows])))

    # ---- 2. serving ----
    if "serve" not in SKIP:
        if not shutil.which("wrk"):
            sys.exit("bench/http/run.sh: wrk is not installed (Debian package wrk)")
        zport = free_port()
        zs = spawn([zcio, "--log-level", "warn", "serve", www, "--listen", "127.0.0.1:%d" % zport,
                    "--threads", "1"])
        wait_listening(zport, zs, "zcio serve")
        servers = [("zcio serve", zport, lambda: [zs.pid]), ("nginx", nport, lambda: children(nginx.pid))]
        print()
        print("Serving with wrk -t1 -c%d -d%ds (keep-alive), one server thread/worker, %d runs, "
              "median (min-max)" % (CONNECTIONS, WRK_SECONDS, RUNS))
        print()
        print("| file | server | requests/s | server CPU µs/request | requests/s vs nginx |")
        print("| --- | --- | --- | --- | --- |")
        for fname, label in (("f4k.bin", "4 KiB"), ("f1m.bin", "1 MiB")):
            stats = {}
            for name, port, pids in servers:
                url = "http://127.0.0.1:%d/%s" % (port, fname)
                subprocess.run(["wrk", "-t1", "-c%d" % CONNECTIONS, "-d1s", url], capture_output=True,
                               timeout=20)  # warm-up
                rps, cpu = [], []
                for _ in range(RUNS):
                    c0 = proc_cpu(pids())
                    p = subprocess.run(["wrk", "-t1", "-c%d" % CONNECTIONS, "-d%ds" % WRK_SECONDS, url],
                                       capture_output=True, text=True, timeout=WRK_SECONDS + 10)
                    c1 = proc_cpu(pids())
                    m = re.search(r"(\d+) requests in ([\d.]+)s", p.stdout)
                    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
                    errs = re.search(r"Socket errors: .*", p.stdout)
                    if not m or bad:
                        print("  wrk against %s failed: %s" % (name, p.stdout + p.stderr), file=sys.stderr)
                        continue
                    if errs:
                        print("  %s %s: %s" % (name, label, errs.group(0)), file=sys.stderr)
                    n, secs = int(m.group(1)), float(m.group(2))
                    rps.append(n / secs)
                    cpu.append(1e6 * (c1 - c0) / n)
                stats[name] = (rps, cpu)
            base = stats.get("nginx", ([], []))[0]
            for name, _, _ in servers:
                rps, cpu = stats[name]
                if not rps:
                    print("| %s | %s | failed | | |" % (label, name))
                    continue
                ratio = "%.2f" % (med(rps) / med(base)) if base else "-"
                print("| %s | %s | %s | %s | %s |" % (label, name, span(rps, "%.0f"), span(cpu, "%.1f"), ratio))
finally:
    cleanup()
PY
