#!/usr/bin/env python3
"""RSS that `zcio proxy` spends per idle connection.

Starts `zcio proxy --threads 1` in front of a listener of this script, opens N
connections through it (one by one, or all at once with --burst), sends 4 bytes each
way on every one, waits, and prints the proxy's VmRSS growth per connection and the
pipes it holds. The clients and the upstream live in this process, so the proxy's own
descriptor limit only has to hold 2 per connection.

  python3 bench/idle_rss.py build/release/tools/zcio/zcio --conns 5000 [--burst]
"""

import argparse
import os
import resource
import socket
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zcio")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--burst", action="store_true", help="connect all before the upstream accepts any")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * a.conns + 64 > hard:
        sys.exit("idle_rss: %d connections need %d descriptors here; the limit is %d"
                 % (a.conns, 2 * a.conns + 64, hard))

    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(4096)
    front = socket.socket()
    front.bind(("127.0.0.1", 0))
    port = front.getsockname()[1]
    front.close()  # a free port for the proxy (the race with other programs is harmless here)
    proxy = subprocess.Popen([a.zcio, "--log-level", "warn", "proxy", "--threads", "1",
                              "--listen", "127.0.0.1:%d" % port,
                              "--upstream", "127.0.0.1:%d" % up.getsockname()[1]])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                warm = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("idle_rss: the proxy did not start")
                time.sleep(0.05)
        warm_up, _ = up.accept()
        warm.sendall(b"w")
        warm_up.recv(1)
        time.sleep(0.5)
        base = rss(proxy.pid)

        clients, uppers = [], []
        if a.burst:
            acceptor = threading.Thread(target=lambda: uppers.extend(up.accept()[0] for _ in range(a.conns)))
            acceptor.start()
            for _ in range(a.conns):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            acceptor.join(60)
        else:
            for _ in range(a.conns):
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
            if c.recv(4) != b"pong":
                sys.exit("idle_rss: a reply arrived changed")
        time.sleep(a.settle)
        grown = rss(proxy.pid) - base
        print("zcio proxy: %d idle connections (%s): %.0f bytes of RSS each, %d pipe fds held"
              % (a.conns, "burst" if a.burst else "one by one", grown / a.conns, pipes_held(proxy.pid)))
    finally:
        proxy.kill()
        proxy.wait()


if __name__ == "__main__":
    main()
