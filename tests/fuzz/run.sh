#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for SECONDS each (JOBS at a time), each
# from a copy of its seed corpus in a temporary directory, so that a run never writes
# into the repository. Fails if any target crashes, leaks, times out or breaks one of
# its checks; the input that did it is kept as BUILD_DIR/tests/fuzz/artifacts/TARGET-*
# and the target's log is printed.
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS] [JOBS]       (make fuzz FUZZ_SECONDS=600)
set -euo pipefail

build=${1:?usage: $0 BUILD_DIR [SECONDS] [JOBS]}
seconds=${2:-60}
jobs=${3:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
bin=$build/tests/fuzz
artifacts=$bin/artifacts
# Every target the build made (tests/fuzz/CMakeLists.txt's ZCIO_FUZZ_TARGETS): a list
# kept here as well once left a new target out of every CI run.
targets=()
for f in "$bin"/fuzz_*; do
    [ -x "$f" ] && targets+=("${f##*/fuzz_}")
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no fuzz_* targets in $bin (build them: cmake --build --preset fuzz)" >&2
    exit 1
fi
declare -A dict=([endpoint]=endpoint [route_config]=route_config
                 [serve_request]=http [get_response]=http)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/zcio-fuzz.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
    local t=$1
    local exe=$bin/fuzz_$t
    if [[ ! -x $exe ]]; then
        echo "$exe is missing (cmake --build --preset fuzz)" >"$tmp/$t.log"
        echo 1 >"$tmp/$t.rc"
        return
    fi
    mkdir -p "$tmp/$t"
    cp -r "$here/corpus/$t/." "$tmp/$t/"
    local args=(-max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048
                -print_final_stats=1 -artifact_prefix="$artifacts/$t-")
    [[ -n ${dict[$t]:-} ]] && args+=(-dict="$here/dict/${dict[$t]}.dict")
    local rc=0
    "$exe" "${args[@]}" "$tmp/$t" >"$tmp/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$tmp/$t.rc"
}

failed=()
start=$SECONDS
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, $jobs at a time"
for t in "${targets[@]}"; do
    while (( $(jobs -rp | wc -l) >= jobs )); do
        wait -n || true
    done
    run_one "$t" &
done
wait
for t in "${targets[@]}"; do
    if [[ $(cat "$tmp/$t.rc" 2>/dev/null) == 0 ]]; then
        # "stat::number_of_executed_units: N" and the final coverage line.
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$tmp/$t.log")
        cov=$(grep -E '^#[0-9]+.*(DONE|cov:)' "$tmp/$t.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' || true)
        printf 'fuzz: %-15s ok   %10s runs  %s\n' "$t" "${execs:-?}" "$cov"
    else
        printf 'fuzz: %-15s FAILED (log below; the input is in %s)\n' "$t" "$artifacts"
        sed 's/^/    /' "$tmp/$t.log" 2>/dev/null | tail -60
        failed+=("$t")
    fi
done
echo "fuzz: done in $((SECONDS - start))s"
if (( ${#failed[@]} > 0 )); then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
