#!/bin/bash
# The kernel's slab caches that N idle connections through a proxy grow, per connection.
#
#   bench/slab_diff.sh NAME 'PROXY COMMAND with {L} and {U}' [CONNECTIONS]
#   bench/slab_diff.sh zcio 'build/release/tools/zcio/zcio --log-level warn proxy --threads 1 --listen 127.0.0.1:{L} --upstream 127.0.0.1:{U}'
#
# The proxy listens on {L} and forwards to {U} (127.0.0.1, filled in here). The clients
# and the upstream are bench/compare's loadgen (hold-client, hold-server; `make compare`
# builds it). Drops the dentry and inode caches first (root), reads /proc/slabinfo,
# opens the connections, waits 2.5 s, reads it again and prints the caches that grew by
# more than 50 kB. Where make compare's system-wide figure says two proxies differ, this
# tells whether it is their sockets and epoll items or caches other work filled.
set -eu
name=$1
cmd=$2
conns=${3:-5000}
lg=$(dirname "$0")/compare/tmp/bin/loadgen
[ -x "$lg" ] || { echo "slab_diff.sh: $lg is missing (make compare builds it)" >&2; exit 2; }
[ -r /proc/slabinfo ] || { echo "slab_diff.sh: /proc/slabinfo is not readable (run as root)" >&2; exit 2; }
listen=$((43000 + RANDOM % 500 * 2))
upstream=$((listen + 1))
cmd=${cmd//\{L\}/$listen}
cmd=${cmd//\{U\}/$upstream}
tmp=$(mktemp -d)
"$lg" hold-server -listen "127.0.0.1:$upstream" >/dev/null 2>&1 &
server=$!
bash -c "exec $cmd" >/dev/null 2>&1 &
proxy=$!
trap 'kill $proxy $server 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 0.5
sync
echo 2 >/proc/sys/vm/drop_caches
sleep 0.5
slabs() { awk 'NR > 2 { print $1, $2 * $4 }' /proc/slabinfo | sort; }
slabs >"$tmp/before"
coproc client { "$lg" hold-client -addr "127.0.0.1:$listen" -n "$conns" -par 64 -msg 64 -open-timeout 30s; }
read -r line <&"${client[0]}"
echo "$name: $line"
sleep 2.5
slabs >"$tmp/after"
join "$tmp/before" "$tmp/after" |
    awk -v n="$conns" '$3 - $2 > 50000 { printf "  %-28s %8.0f B/conn\n", $1, ($3 - $2) / n }' |
    sort -k2 -n -r | head -12
echo quit >&"${client[1]}"
sleep 1
