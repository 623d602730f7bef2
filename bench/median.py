#!/usr/bin/env python3
"""Median table of several `zcio bench --json` runs (one file per run).

Usage: bench/median.py run1.json run2.json run3.json
Prints a Markdown table: GiB/s, CPU s/GiB and syscalls/MiB of the moving thread for
the bulk cases, round trips/s for the chatty ones, each the median over the runs, with
the min-max spread of the rate.
"""
import json
import statistics
import sys


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    keys = [(r["case"], r["engine"]) for r in runs[0]["rows"]]
    print(f"{len(runs)} runs; median (min-max of the rate)\n")
    print("| case | engine | path | GiB/s | CPU s/GiB | syscalls/MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    chatty = []
    for key in keys:
        rows = [next(r for r in run["rows"] if (r["case"], r["engine"]) == key) for run in runs]
        if rows[0]["round_trips"]:
            chatty.append((key, rows))
            continue
        gib = [r["bytes"] / 2**30 for r in rows]
        rate = [g / r["seconds"] for g, r in zip(gib, rows)]
        cpu = [r["cpu_seconds"] / g for g, r in zip(gib, rows)]
        calls = [r["syscalls"] / (g * 1024) for g, r in zip(gib, rows)]
        print(f"| {key[0]} | {key[1]} | {rows[0]['path']} | {statistics.median(rate):.2f} "
              f"({min(rate):.2f}-{max(rate):.2f}) | {statistics.median(cpu):.3f} | "
              f"{statistics.median(calls):.1f} |")
    if chatty:
        print("\n| case | engine | round trips/s | relay CPU µs/trip | syscalls/trip |")
        print("| --- | --- | --- | --- | --- |")
        for key, rows in chatty:
            tps = [r["round_trips"] / r["seconds"] for r in rows]
            cpu = [1e6 * r["cpu_seconds"] / r["round_trips"] for r in rows]
            calls = [r["syscalls"] / r["round_trips"] for r in rows]
            print(f"| {key[0]} | {key[1]} | {statistics.median(tps):.0f} "
                  f"({min(tps):.0f}-{max(tps):.0f}) | {statistics.median(cpu):.1f} | "
                  f"{statistics.median(calls):.1f} |")
    # The auto heuristic must cost no more than the better fixed engine on both
    # workloads: the per-run ratio, since every run measures all engines back to back.
    for case, per in (("tcp -> relay -> tcp", lambda r: r["cpu_seconds"] / r["bytes"]),
                      ("chatty 64 B ping-pong", lambda r: r["cpu_seconds"] / r["round_trips"])):
        ratios = []
        for run in runs:
            cost = {r["engine"]: per(r) for r in run["rows"] if r["case"] == case}
            if {"auto", "splice", "buffer"} <= cost.keys():
                ratios.append(cost["auto"] / min(cost["splice"], cost["buffer"]))
        if ratios:
            print(f"\n{case}: auto's CPU over the better of splice and buffer, per run: "
                  f"median {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    idle = [run["idle"] for run in runs]
    print(f"\nidle: {idle[0]['connections']} relayed connections held "
          f"{max(i['pipes_leased'] for i in idle)} pipes and "
          f"{max(i['buffers_leased'] for i in idle)} buffers (max over the runs)")


if __name__ == "__main__":
    main(sys.argv[1:])
