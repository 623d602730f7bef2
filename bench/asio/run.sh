#!/usr/bin/env bash
# The Asio proxy two ways, interleaved on the same machine in the same run:
# bench/asio/plain_proxy.cpp (async_read_some + async_write, 16 KiB per direction)
# against examples/asio-proxy.cpp (zcio::asio::async_copy_bidirectional), both with one
# io_context thread. iperf3 with 1 and 4 streams through each (bench/ab.py: Gbit/s and
# the proxy's CPU seconds per GB), then RSS per idle connection (bench/idle_rss.py).
#
#   bench/asio/run.sh [BUILD_DIR] [ROUNDS]     (BUILD_DIR: build/bench, ROUNDS: 7)
#
# Listening ports: FIRST_PORT (default 20000) and up. The last line of each part is the
# paired ratio zcio/plain over the rounds.
set -euo pipefail
build=${1:-build/bench}
rounds=${2:-7}
first_port=${FIRST_PORT:-20000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
plain="$build/bench/asio/asio-plain-proxy"
zcio="$build/examples/asio-proxy"
for b in "$plain" "$zcio"; do
    # Both are built only when Asio was found: without it there is nothing to compare.
    [ -x "$b" ] || { echo "bench/asio/run.sh: $b is not built (needs Asio); skipped"; exit 0; }
done

for streams in 1 4; do
    echo "== iperf3 -P $streams, $rounds rounds of 3 s, order rotating"
    python3 "$here/../ab.py" --rounds "$rounds" --seconds 3 --streams "$streams" \
        --first-port $((first_port + (streams - 1) * 200)) \
        direct=direct \
        plain="$plain {L} 127.0.0.1 {U} 1" \
        zcio="$zcio {L} 127.0.0.1 {U} 1"
done

echo "== 5,000 idle connections, $rounds rounds, order rotating"
python3 "$here/../idle_rss.py" --conns 5000 --rounds "$rounds" --first-port $((first_port + 1000)) \
    plain="$plain {L} 127.0.0.1 {U} 1" \
    zcio="$zcio {L} 127.0.0.1 {U} 1"
