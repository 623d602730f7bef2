#!/usr/bin/env bash
# Checks that the Debian packages a make target needs are installed, and installs the
# missing ones (as root), or prints the exact command to run and fails (otherwise).
# Quiet when everything is present.
#
#   cmake/deps.sh GROUP...     groups: build test bench compare package format tidy fuzz
set -euo pipefail

declare -A group=(
    # Compilers, CMake, Ninja, pkg-config, and the zcio tool's libraries (http-parser
    # for serve/get: Debian 12 packages no C llhttp, only node-llhttp; libsystemd for
    # socket activation and sd_notify in `zcio proxy`).
    [build]="g++ cmake ninja-build pkg-config libcli11-dev libtomlplusplus-dev libspdlog-dev libhttp-parser-dev libsystemd-dev"
    # GoogleTest, and the peers the end-to-end tests drive (haproxy: send-proxy-v2 in
    # front of accept_proxy, tests/e2e/test_accept_proxy.py).
    # libasio-dev: zcio/asio.hpp's tests, example and bench (the library never needs it).
    # dpkg-dev, file, man-db: the package test (tests/package/run.sh; lintian is in
    # "package", and that test runs it only when it is installed).
    [test]="libgtest-dev libgmock-dev libasio-dev curl iperf3 python3 nginx wget unbound dnsutils haproxy dpkg-dev file man-db"
    [bench]="libbenchmark-dev wrk"
    # make compare: the peers, the clients, Go for the Go proxy and loadgen, gnuplot, ss.
    [compare]="haproxy nginx libnginx-mod-stream socat iperf3 sockperf golang-go gnuplot-nox python3 iproute2"
    # make package: dpkg-shlibdeps (dpkg-dev) and file for the Depends line, lintian for
    # the check; man-db for the package test's `man -w`; debootstrap for
    # tests/package/chroot.sh (a clean Debian 12).
    [package]="dpkg-dev file lintian man-db debootstrap"
    [format]="clang-format"
    # clang-tidy 14 (Debian's default) cannot parse <expected> or -std=c++23; 16 can.
    [tidy]="clang-tidy-16"
    # make fuzz: clang 16 and its runtime libraries (libFuzzer, ASan, UBSan).
    [fuzz]="clang-16 libclang-rt-16-dev"
)

if [[ $# -eq 0 ]]; then
    echo "usage: $0 GROUP... (groups: ${!group[*]})" >&2
    exit 2
fi

wanted=()
for g in "$@"; do
    if [[ -z ${group[$g]+set} ]]; then
        echo "deps.sh: unknown group '$g' (groups: ${!group[*]})" >&2
        exit 2
    fi
    # shellcheck disable=SC2206 # the lists are plain words
    wanted+=(${group[$g]})
done

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps.sh: not a Debian system; make sure these are installed: ${wanted[*]}" >&2
    exit 0
fi

missing=()
for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        # Skip duplicates (a package may be in several groups).
        [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
    echo "deps.sh: installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    exit 0
fi

echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
echo "Install them with:" >&2
echo "" >&2
echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
echo "" >&2
exit 1
