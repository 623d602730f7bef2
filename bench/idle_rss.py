#!/usr/bin/env python3
"""RSS that a TCP proxy spends per idle connection.

Starts the proxy in front of a listener of this script, opens N connections through
it (one by one, or all at once with --burst), sends 4 bytes each way on every one,
waits, and prints the proxy's VmRSS growth per connection and the pipes it holds. The
clients and the upstream live in this process, so the proxy's own descriptor limit
only has to hold 2 per connection.

  python3 bench/idle_rss.py build/release/tools/zcio/zcio --conns 5000 [--burst]

Any other proxy: --relay NAME='COMMAND' (repeatable), COMMAND listening on {L} and
forwarding to 127.0.0.1:{U}; with several, --rounds N runs them interleaved (the
order rotates each round) and prints each one's median and the paired ratio of the
last two rows:

  python3 bench/idle_rss.py --conns 5000 --rounds 5 \\
      plain='build/bench/bench/asio/asio-plain-proxy {L} 127.0.0.1 {U}' \\
      zcio='build/bench/examples/asio-proxy {L} 127.0.0.1 {U}'
"""

import argparse
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def pipes_held(pid):
    fd_dir = "/proc/%d/fd" % pid
    return sum(1 for f in os.listdir(fd_dir) if os.readlink(os.path.join(fd_dir, f)).startswith("pipe:"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # the race with other programs is harmless here


def connect_warm(port, up, proxy):
    """Waits for the proxy to listen; one connection through it warms it up."""
    deadline = time.monotonic() + 10
    while True:
        try:
            warm = socket.create_connection(("127.0.0.1", port), timeout=1)
            break
        except OSError:
            if proxy.poll() is not None or time.monotonic() > deadline:
                sys.exit("idle_rss: the proxy did not start")
            time.sleep(0.05)
    warm_up, _ = up.accept()
    warm.sendall(b"w")
    warm_up.recv(1)
    return warm, warm_up


def open_idle(port, up, conns, burst):
    """N connections through the proxy, 4 bytes each way on each, every read checked."""
    clients, uppers = [], []
    if burst:
        acceptor = threading.Thread(target=lambda: uppers.extend(up.accept()[0] for _ in range(conns)))
        acceptor.start()
        for _ in range(conns):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        acceptor.join(60)
    else:
        for _ in range(conns):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            uppers.append(up.accept()[0])
    # Which upstream socket belongs to which client does not matter: every one gets
    # 4 bytes each way, and each read is checked.
    for c in clients:
        c.sendall(b"ping")
    for u in uppers:
        u.settimeout(10)
        if u.recv(4) != b"ping":
            sys.exit("idle_rss: a message arrived changed")
        u.sendall(b"pong")
    for c in clients:
        c.settimeout(10)
        if c.recv(4) != b"pong":
            sys.exit("idle_rss: a reply arrived changed")
    return clients + uppers


def measure(argv, a, run):
    """One proxy run: (RSS bytes per idle connection, pipe fds held)."""
    up = socket.socket()
    up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    up.bind(("127.0.0.1", a.first_port + 2 * run if a.first_port else 0))
    up.listen(4096)
    port = a.first_port + 2 * run + 1 if a.first_port else free_port()
    cmd = [w.format(L=port, U=up.getsockname()[1]) for w in argv]
    proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    held = []
    try:
        held += connect_warm(port, up, proxy)
        time.sleep(0.5)
        base = rss(proxy.pid)
        held += open_idle(port, up, a.conns, a.burst)
        time.sleep(a.settle)
        return (rss(proxy.pid) - base) / a.conns, pipes_held(proxy.pid)
    finally:
        proxy.kill()
        proxy.wait()
        for s in held + [up]:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", metavar="ZCIO | NAME=COMMAND")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--burst", action="store_true", help="connect all before the upstream accepts any")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--first-port", type=int, default=0,
                    help="listen on this port and up (upstream, proxy, ...); 0: free ports")
    a = ap.parse_args()
    rows = []
    for r in a.rows:
        name, sep, cmd = r.partition("=")
        if not sep:  # the zcio binary, as before
            rows.append(("zcio proxy", [r, "--log-level", "warn", "proxy", "--threads", "1",
                                        "--listen", "127.0.0.1:{L}", "--upstream", "127.0.0.1:{U}"]))
        elif "{L}" in cmd and "{U}" in cmd:
            rows.append((name, shlex.split(cmd)))
        else:
            ap.error("%s: the command needs {L} and {U}" % name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * a.conns + 64 > hard:
        sys.exit("idle_rss: %d connections need %d descriptors here; the limit is %d"
                 % (a.conns, 2 * a.conns + 64, hard))
    runs = {name: [] for name, _ in rows}
    for i in range(a.rounds):
        for name, argv in rows[i % len(rows):] + rows[:i % len(rows)]:
            runs[name].append(measure(argv, a, sum(len(v) for v in runs.values())))
    mode = "burst" if a.burst else "one by one"
    for name, v in runs.items():
        print("%s: %d idle connections (%s): %.0f bytes of RSS each (median of %d; runs: %s), "
              "%d pipe fds held" % (name, a.conns, mode, statistics.median(x[0] for x in v), len(v),
                                    " ".join("%.0f" % x[0] for x in v), v[-1][1]))
    if len(rows) >= 2:
        (pa, _), (pb, _) = rows[-2], rows[-1]
        r = sorted(y[0] / x[0] for x, y in zip(runs[pa], runs[pb]) if x[0] > 0)
        if r:
            print("paired %s/%s over %d rounds: RSS per connection %.3fx (range %.3f-%.3f)"
                  % (pb, pa, a.rounds, statistics.median(r), r[0], r[-1]))


if __name__ == "__main__":
    main()
