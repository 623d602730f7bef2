#!/usr/bin/env bash
# System calls per proxied connection: `zcio proxy --threads 1` under `strace -f -c`
# while bench/compare's loadgen makes short connections (connect, 64-byte request,
# 64-byte reply, close) for SECONDS; prints each system call's count divided by the
# connections the loadgen completed, highest first. Needs strace and the loadgen
# build of make compare (bench/compare/tmp/bin/loadgen).
#
#   bench/syscalls_per_conn.sh [ZCIO [SECONDS [CONCURRENCY]]]
#   bench/syscalls_per_conn.sh build/release/tools/zcio/zcio 2 16
set -euo pipefail
zcio=${1:-build/release/tools/zcio/zcio}
seconds=${2:-2}
conc=${3:-16}
here=$(cd "$(dirname "$0")" && pwd)
lg=$here/compare/tmp/bin/loadgen
[[ -x $lg ]] || { echo "syscalls_per_conn: build the loadgen first (make compare does)" >&2; exit 2; }
command -v strace >/dev/null || { echo "syscalls_per_conn: strace is not installed" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
"$lg" rr-server -listen 127.0.0.1:"$up" -req 64 -resp 64 &
lport=$(free_port)
"$zcio" --log-level warn proxy --threads 1 --listen 127.0.0.1:"$lport" \
    --upstream 127.0.0.1:"$up" --engine "${ENGINE:-auto}" 2>"$tmp/proxy.log" &
proxy=$!
for _ in $(seq 100); do
    ss -ltn | grep -q ":$lport " && break
    sleep 0.1
done
# Attached once the proxy listens: its start-up calls are not counted. -f: every thread.
strace -f -c -U name,calls -S calls -o "$tmp/strace" -p "$proxy" 2>/dev/null &
tracer=$!
sleep 1
timeout $((seconds + 30)) "$lg" rr-client -addr 127.0.0.1:"$lport" -c "$conc" -seconds "$seconds" \
    -req 64 -resp 64 >"$tmp/client.json"
sleep 0.5
kill -INT "$tracer"
timeout 20 tail --pid="$tracer" -f /dev/null || true
kill "$proxy"
conns=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["conns"])' "$tmp/client.json")
echo "connections: $conns (loadgen: $(tail -1 "$tmp/client.json"))"
awk -v n="$conns" 'NF == 2 && $2 ~ /^[0-9]+$/ && $1 != "total" {
    printf "%-20s %10d %8.2f per connection\n", $1, $2, $2 / n }' "$tmp/strace"
awk -v n="$conns" 'NF == 2 && $1 == "total" { printf "%-20s %10d %8.2f per connection\n", $1, $2, $2 / n }' "$tmp/strace"
