#!/usr/bin/env python3
"""Interleaved A/B of TCP relays: iperf3 through each command in turn, round after round.

    python3 bench/ab.py [--rounds N] [--seconds S] [--streams P] NAME='COMMAND' ...

Each COMMAND is a relay that listens on {L} and forwards to {U} on 127.0.0.1 (both
filled in per run, fresh ports each time); NAME=direct runs iperf3 without a relay.
Example, the tree against an older build and the floor relay:

    python3 bench/ab.py --rounds 15 \\
        old='/tmp/old/build/release/tools/zcio/zcio --log-level warn proxy --threads 1 --listen 127.0.0.1:{L} --upstream 127.0.0.1:{U}' \\
        new='build/release/tools/zcio/zcio --log-level warn proxy --threads 1 --listen 127.0.0.1:{L} --upstream 127.0.0.1:{U}'

The order rotates every round (A B C, B C A, ...) so machine drift hits every row
alike. Prints per row the median Gbit/s, the ratio to `direct` (when given), the
relay's CPU seconds (user + system, from /proc, which the kernel samples at each tick)
per GB received, and every run; then, for the last two rows, the median and quartiles
of the per-round ratios (last / second to last), which drift cancels out of.
Needs iperf3. Every relay is killed after its run.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system time of a process and its dead threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_run(cmd, port, seconds, streams):
    """Returns (Gbit/s, relay CPU s per GB) of one iperf3 run through `cmd`."""
    listen, upstream = port, port + 1
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(upstream)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relay = None
    try:
        target = upstream
        if cmd != "direct":
            relay = subprocess.Popen("exec " + cmd.format(L=listen, U=upstream), shell=True,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            target = listen
        time.sleep(0.4)
        if relay is not None and relay.poll() is not None:
            raise SystemExit(f"ab.py: the relay exited at once: {cmd}")
        cpu0 = cpu_seconds(relay.pid) if relay else 0.0
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(target), "-t", str(seconds),
                              "-P", str(streams), "-J"], capture_output=True, text=True,
                             timeout=seconds + 30).stdout
        cpu1 = cpu_seconds(relay.pid) if relay else 0.0
    finally:
        if relay is not None:
            try:
                os.killpg(relay.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited by itself (the message above says so)
            relay.wait()
        server.kill()
        server.wait()
    try:
        got = json.loads(out)["end"]["sum_received"]
    except (json.JSONDecodeError, KeyError):
        raise SystemExit(f"ab.py: iperf3 gave no result through: {cmd}")
    gb = got["bytes"] / 1e9
    return got["bytes"] * 8 / got["seconds"] / 1e9, (cpu1 - cpu0) / gb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--first-port", type=int, default=41000)
    ap.add_argument("rows", nargs="+", metavar="NAME=COMMAND")
    a = ap.parse_args()
    rows = []
    for r in a.rows:
        name, sep, cmd = r.partition("=")
        if not sep or not name or not cmd:
            ap.error(f"expected NAME=COMMAND, got {r!r}")
        if cmd != "direct" and ("{L}" not in cmd or "{U}" not in cmd):
            ap.error(f"{name}: the command needs {{L}} and {{U}}")
        rows.append((name, cmd))
    if a.rounds < 1 or a.seconds <= 0 or a.streams < 1:
        ap.error("--rounds, --seconds and --streams must be positive")
    runs = {name: [] for name, _ in rows}
    port = a.first_port
    for i in range(a.rounds):
        for name, cmd in rows[i % len(rows):] + rows[:i % len(rows)]:
            runs[name].append(one_run(cmd, port, a.seconds, a.streams))
            port += 2
    base = statistics.median(g for g, _ in runs["direct"]) if "direct" in runs else None
    for name, v in runs.items():
        g = statistics.median(x[0] for x in v)
        c = statistics.median(x[1] for x in v)
        ratio = f"  {g / base:.2f}x direct" if base else ""
        cpu = f"  {c:.3f} CPU s/GB" if name != "direct" else ""
        print(f"{name:12s} {g:6.2f} Gbit/s{ratio}{cpu}   runs: " +
              " ".join(f"{x[0]:.1f}/{x[1]:.3f}" for x in v))
    if len(rows) >= 2:
        (pa, _), (pb, _) = rows[-2], rows[-1]
        tp = sorted(y[0] / x[0] for x, y in zip(runs[pa], runs[pb]))
        cp = sorted(y[1] / x[1] for x, y in zip(runs[pa], runs[pb]) if x[1] > 0)
        q = lambda s, k: s[min(len(s) - 1, k * len(s) // 4)]
        print(f"paired {pb}/{pa} over {a.rounds} rounds: throughput {statistics.median(tp):.3f}x "
              f"(quartiles {q(tp, 1):.3f}-{q(tp, 3):.3f})" +
              (f", CPU per GB {statistics.median(cp):.3f}x (quartiles {q(cp, 1):.3f}-{q(cp, 3):.3f})"
               if cp else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
