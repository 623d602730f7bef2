#!/usr/bin/env python3
"""Renders bench/udp/run.sh's JSON lines as a Markdown table: per client, size and
server, the median of the rounds, and ratios against zcio-simple of the same run."""

import json
import statistics
import sys
from collections import defaultdict


def main(path):
    runs = defaultdict(list)
    order = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["client"], r["load"]["size"], r["server"])
            if r["server"] not in order:
                order.append(r["server"])
            runs[key].append(r["load"])
    clients = sorted({k[0] for k in runs}, key=lambda c: c != "plain")
    sizes = sorted({k[1] for k in runs})
    print()
    print("| client | size | server | echoed dgram/s median (min–max) | × zcio-simple | "
          "server CPU s / M dgram | × zcio-simple | lost % | bad |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for client in clients:
        for size in sizes:
            base = runs.get((client, size, "zcio-simple"))
            base_rate = statistics.median(r["echoed_per_s"] for r in base) if base else None
            base_cpu = statistics.median(r["server_cpu_s_per_m"] for r in base) if base else None
            for server in order:
                rs = runs.get((client, size, server))
                if not rs:
                    continue
                rates = [r["echoed_per_s"] for r in rs]
                rate = statistics.median(rates)
                cpu = statistics.median(r["server_cpu_s_per_m"] for r in rs)
                sent = sum(r["sent"] for r in rs)
                lost = sum(r["lost"] for r in rs)
                bad = sum(r["bad"] for r in rs)
                print("| %s | %d | %s | %.0fk (%.0fk–%.0fk) | %s | %.3f | %s | %.3f | %d |" % (
                    "GSO/GRO" if client == "gso" else "plain", size, server, rate / 1e3,
                    min(rates) / 1e3, max(rates) / 1e3,
                    "%.2f" % (rate / base_rate) if base_rate else "–", cpu,
                    "%.2f" % (cpu / base_cpu) if base_cpu else "–",
                    100.0 * lost / sent if sent else 0.0, bad))


if __name__ == "__main__":
    main(sys.argv[1])
