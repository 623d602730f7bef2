#!/usr/bin/env bash
# make bench: the transfer-engine benchmark (zcio bench, three runs of 1 GiB per case,
# median table), then every bench/*/run.sh that exists (udp, http), each bounded.
# Usage: bench/run.sh BUILD_DIR   (make bench passes build/bench)
set -euo pipefail
build=${1:-build/bench}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
zcio="$build/tools/zcio/zcio"
[ -x "$zcio" ] || { echo "bench/run.sh: $zcio is not built" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== zcio bench --bytes 1G, 3 runs (about 1 minute each)"
for i in 1 2 3; do
    "$zcio" bench --bytes 1G --json > "$out/run$i.json"
done
python3 "$here/median.py" "$out"/run1.json "$out"/run2.json "$out"/run3.json

for script in "$here"/*/run.sh; do
    [ -f "$script" ] || continue
    echo
    echo "== $script"
    bash "$script" "$build"
done
