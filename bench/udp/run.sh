#!/usr/bin/env bash
# bench/udp/run.sh: UDP echo servers under bench/udp/udp_load on loopback: `zcio
# udp-echo` in simple and batch modes, two of the examples, and (when ../shared/bench/udp
# has them) the C baselines. Datagrams per second echoed and the server's CPU seconds
# per million datagrams, for 64- and 1400-byte payloads, with a plain client and with a
# GSO/GRO client; ROUNDS rounds, the server order rotated each round, median of the
# rounds, ratios against zcio simple mode of the same run.
#
# Usage: bench/udp/run.sh [BUILD_DIR]        (default build/bench; make bench passes it)
# Environment: SECONDS_PER_RUN (3), ROUNDS (3), SIZES ("64 1400"), CLIENTS ("plain gso"),
#   SERVERS (names, space-separated; default all), BASELINE_DIR (../shared/bench/udp;
#   "none" to skip), OUT (a file for the raw JSON lines; default a temporary file).
# Bounded: every run is SECONDS_PER_RUN plus at most 0.1 s of drain, and a server that
# does not start within 5 s or stop within 3 s of SIGTERM is killed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$repo/build/bench}" && pwd)
load="$build/bench/udp/udp_load"
zcio="$build/tools/zcio/zcio"
examples="$build/examples"
seconds=${SECONDS_PER_RUN:-3}
rounds=${ROUNDS:-3}
sizes=${SIZES:-64 1400}
clients=${CLIENTS:-plain gso}
baseline_dir=${BASELINE_DIR:-$repo/../shared/bench/udp}

for f in "$load" "$zcio"; do
    [ -x "$f" ] || { echo "bench/udp/run.sh: $f is not built (cmake --preset bench)" >&2; exit 1; }
done
tmp=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -KILL "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# name|command ({port} is replaced); the command must exec the server in the foreground.
declare -a table=(
    "zcio-simple|$zcio --log-level warn udp-echo --listen 127.0.0.1:{port} --mode simple"
    "zcio-batch|$zcio --log-level warn udp-echo --listen 127.0.0.1:{port} --mode batch"
    "zcio-batch-nogso|$zcio --log-level warn udp-echo --listen 127.0.0.1:{port} --mode batch --gso off"
    "udp-echo-epoll-edge|$examples/udp-echo-epoll-edge --port {port}"
    "udp-echo-channel|$examples/udp-echo-channel --port {port}"
)
if [ "$baseline_dir" != none ] && [ -f "$baseline_dir/servers/echo-epoll-mmsg.c" ] && command -v gcc > /dev/null; then
    gcc -O2 -o "$tmp/echo-epoll-mmsg" "$baseline_dir/servers/echo-epoll-mmsg.c"
    gcc -O2 -o "$tmp/echo-simple" "$baseline_dir/servers/echo-simple.c" -lpthread
    table+=("c-echo-simple|$tmp/echo-simple --listen 127.0.0.1:{port}"
            "c-echo-epoll-mmsg|$tmp/echo-epoll-mmsg --listen 127.0.0.1:{port}"
            "c-echo-epoll-mmsg-gso|$tmp/echo-epoll-mmsg --gso --listen 127.0.0.1:{port}")
fi
if [ -n "${SERVERS:-}" ]; then
    declare -a picked=()
    for entry in "${table[@]}"; do
        for want in $SERVERS; do
            [ "${entry%%|*}" = "$want" ] && picked+=("$entry")
        done
    done
    table=("${picked[@]}")
fi
out=${OUT:-$tmp/results.jsonl}
: > "$out"

n=${#table[@]}
runs=$(( n * rounds * $(wc -w <<< "$sizes") * $(wc -w <<< "$clients") ))
echo "bench/udp: $n servers, $runs runs of ${seconds}s (about $(( runs * (seconds + 1) / 60 + 1 )) min)," \
     "$(nproc) cores, kernel $(uname -r)"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
bound() { grep -qi "0100007F:$(printf '%04X' "$1") " /proc/net/udp; }

for ((round = 0; round < rounds; round++)); do
    for client in $clients; do
        if [ "$client" = gso ]; then client_args="--gso --gro --window 256"; else client_args="--window 64"; fi
        for size in $sizes; do
            for ((i = 0; i < n; i++)); do
                entry=${table[$(( (i + round) % n ))]}
                name=${entry%%|*}
                port=$(free_port)
                cmd=${entry#*|}
                cmd=${cmd//\{port\}/$port}
                # shellcheck disable=SC2086
                $cmd 2> "$tmp/$name.log" > /dev/null &
                server_pid=$!
                for ((w = 0; w < 50; w++)); do bound "$port" && break; sleep 0.1; done
                if ! bound "$port"; then
                    echo "bench/udp: $name did not start:" >&2
                    cat "$tmp/$name.log" >&2
                    exit 1
                fi
                # shellcheck disable=SC2086
                result=$("$load" --json --ports "$port" --size "$size" --seconds "$seconds" \
                             --server-pid "$server_pid" $client_args)
                kill -TERM "$server_pid" 2> /dev/null || true
                for ((w = 0; w < 30; w++)); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.1; done
                kill -KILL "$server_pid" 2> /dev/null || true
                wait "$server_pid" 2> /dev/null || true
                server_pid=
                echo "{\"server\": \"$name\", \"client\": \"$client\", \"round\": $round, \"load\": $result}" >> "$out"
                printf '  round %d %-5s %5s B %-22s %s\n' "$round" "$client" "$size" "$name" \
                    "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.0f echoed/s, %.3f CPU s/M, lost %d, bad %d" % (r["echoed_per_s"], r["server_cpu_s_per_m"], r["lost"], r["bad"]))' "$result")"
            done
        done
    done
done
python3 "$here/table.py" "$out"
