#!/usr/bin/env bash
# The Debian packages of a build tree, installed on this machine and used:
#   1. cpack (as `make package` does) builds zcio_*.deb and zcio-dev_*.deb;
#   2. lintian, when installed, finds no error in either;
#   3. both are installed (apt-get install ./*.deb, or dpkg -i without apt);
#   4. `man -w zcio` and `man -w zcio-proxy` find the pages; /etc/zcio/zcio.toml is a
#      conffile; a consumer builds against /usr with pkg-config and runs;
#   5. /usr/bin/zcio proxy, from a copy of the installed config, relays one connection
#      (serve_check.py: 1 MiB echoed, sha256 compared);
#   6. both are purged, and nothing of them is left.
# Not a fresh Debian 12 chroot (debootstrap would need the network and minutes): the
# packages are installed on this machine, so the test needs root and skips (exit 77)
# when a zcio package or a /usr/bin/zcio is there already: it never replaces or
# removes what it did not install.
#
#   tests/package/run.sh BUILD_DIR WORK_DIR
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 BUILD_DIR WORK_DIR" >&2
    exit 2
fi
build_dir=$(cd "$1" && pwd)
work_dir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=(zcio zcio-dev)

skip() { echo "SKIP: $*"; exit 77; }
step() { printf '== package test: %s\n' "$*"; }
fail() { echo "package test: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || skip "not root: installing the packages needs root"
for tool in dpkg dpkg-deb dpkg-query dpkg-shlibdeps file cpack python3; do
    command -v "$tool" >/dev/null || skip "$tool is missing (apt-get install dpkg-dev file)"
done
[[ -f $build_dir/CPackConfig.cmake ]] || fail "$build_dir has no CPackConfig.cmake"

# One run at a time on this machine (asan and tsan trees may test at once).
exec 9>/run/lock/zcio-package-test.lock
flock -w 600 9 || fail "another package test holds /run/lock/zcio-package-test.lock"

installed_status() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true; }
for p in "${packages[@]}"; do
    [[ $(installed_status "$p") == not-installed || -z $(installed_status "$p") ]] \
        || skip "package $p is on this machine already ($(installed_status "$p")); not touching it"
done
for f in /usr/bin/zcio /etc/zcio /usr/include/zcio /usr/lib/pkgconfig/zcio.pc; do
    [[ ! -e $f ]] || skip "$f exists (not from a zcio package); not touching it"
done

rm -rf "$work_dir"
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)

step "cpack -G DEB"
cpack -G DEB --config "$build_dir/CPackConfig.cmake" -B "$work_dir/out" >"$work_dir/cpack.log" 2>&1 \
    || { cat "$work_dir/cpack.log"; fail "cpack failed"; }
shopt -s nullglob
tool_deb=("$work_dir"/out/zcio_*.deb)
dev_deb=("$work_dir"/out/zcio-dev_*.deb)
[[ ${#tool_deb[@]} -eq 1 && ${#dev_deb[@]} -eq 1 ]] \
    || { ls -l "$work_dir/out"; fail "expected one zcio_*.deb and one zcio-dev_*.deb"; }
debs=("${tool_deb[0]}" "${dev_deb[0]}")
dpkg-deb -f "${tool_deb[0]}" Depends | grep -q 'libc6' \
    || fail "zcio's Depends has no libc6 (dpkg-shlibdeps did not run?)"
[[ $(dpkg-deb --ctrl-tarfile "${tool_deb[0]}" | tar -xO ./conffiles) == /etc/zcio/zcio.toml ]] \
    || fail "zcio's conffiles is not /etc/zcio/zcio.toml"

if command -v lintian >/dev/null; then
    step "lintian (errors fail)"
    lintian_rc=0
    lintian --fail-on error "${debs[@]}" >"$work_dir/lintian.log" 2>&1 || lintian_rc=$?
    grep -v 'running with root privileges' "$work_dir/lintian.log" || true
    [[ $lintian_rc -eq 0 ]] || fail "lintian found errors (exit $lintian_rc)"
else
    step "lintian is not installed: not run (apt-get install lintian)"
fi

cleanup() {
    local rc=$?
    for p in "${packages[@]}"; do
        if [[ -n $(installed_status "$p") && $(installed_status "$p") != not-installed ]]; then
            dpkg --purge "$p" >>"$work_dir/purge.log" 2>&1 || { cat "$work_dir/purge.log"; rc=1; }
        fi
    done
    exit $rc
}
trap cleanup EXIT

step "install ${debs[*]##*/}"
if command -v apt-get >/dev/null; then
    # apt-get waits for the dpkg lock other installs on the machine may hold.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${debs[@]}" </dev/null >"$work_dir/install.log" 2>&1 \
        || { cat "$work_dir/install.log"; fail "apt-get install failed"; }
else
    dpkg -i "${debs[@]}" >"$work_dir/install.log" 2>&1 \
        || { cat "$work_dir/install.log"; fail "dpkg -i failed"; }
fi
for p in "${packages[@]}"; do
    [[ $(installed_status "$p") == installed ]] || fail "$p is not installed after the install"
done

step "files in place"
for f in /usr/bin/zcio /etc/zcio/zcio.toml /usr/lib/systemd/system/zcio.service \
         /usr/lib/systemd/system/zcio.socket /usr/share/doc/zcio/copyright \
         /usr/include/zcio/sys.hpp /usr/lib/libzcio.a /usr/lib/cmake/zcio/zcioConfig.cmake \
         /usr/lib/pkgconfig/zcio.pc /usr/share/doc/zcio-dev/copyright; do
    [[ -e $f ]] || fail "missing after install: $f"
done
grep -qx '/etc/zcio/zcio.toml' /var/lib/dpkg/info/zcio.conffiles \
    || fail "dpkg does not list /etc/zcio/zcio.toml as a conffile of zcio"
/usr/bin/zcio --version

# Docker's Debian images tell dpkg to leave out /usr/share/man: then there is no
# page to find, and that is the machine's choice, not the package's.
if grep -qs '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
    step "man pages: dpkg excludes /usr/share/man here; checked inside the .deb only"
    dpkg-deb -c "${tool_deb[0]}" | grep -q ' ./usr/share/man/man1/zcio-proxy.1.gz$' \
        || fail "zcio-proxy.1.gz is not in the package"
elif command -v man >/dev/null; then
    step "man -w zcio, man -w zcio-proxy"
    for page in zcio zcio-proxy; do
        where=$(man -w "$page") || fail "man -w $page found nothing"
        [[ $where == /usr/share/man/man1/$page.1.gz ]] || fail "man -w $page: $where"
        echo "$page: $where"
    done
    MANWIDTH=80 man zcio-proxy 2>/dev/null | grep -q -- '--take-over PATH' \
        || fail "man zcio-proxy does not render --take-over"
else
    step "man is not installed (apt-get install man-db): pages checked as files"
    [[ -f /usr/share/man/man1/zcio-proxy.1.gz ]] || fail "no /usr/share/man/man1/zcio-proxy.1.gz"
fi

step "pkg-config consumer against /usr"
cxx=${CXX:-c++}
pc_flags=$(PKG_CONFIG_PATH=/usr/lib/pkgconfig pkg-config --cflags --libs zcio)
echo "pkg-config --cflags --libs zcio: $pc_flags"
# shellcheck disable=SC2086 # word splitting of the flag strings is intended
"$cxx" ${CXXFLAGS:-} "$here/../install/main.cpp" -o "$work_dir/app" $pc_flags ${LDFLAGS:-}
"$work_dir/app"

step "/usr/bin/zcio proxy from the installed config"
python3 "$here/serve_check.py" /usr/bin/zcio /etc/zcio/zcio.toml "$work_dir"

step "purge"
trap - EXIT
for p in zcio-dev zcio; do
    dpkg --purge "$p" >>"$work_dir/purge.log" 2>&1 || { cat "$work_dir/purge.log"; fail "dpkg --purge $p"; }
done
for f in /usr/bin/zcio /etc/zcio /usr/include/zcio /usr/lib/cmake/zcio /usr/lib/libzcio.a \
         /usr/lib/pkgconfig/zcio.pc /usr/share/doc/zcio /usr/share/doc/zcio-dev \
         /usr/share/man/man1/zcio.1.gz /usr/share/man/man1/zcio-proxy.1.gz \
         /usr/lib/systemd/system/zcio.service /usr/lib/systemd/system/zcio.socket; do
    [[ ! -e $f ]] || fail "left after purge: $f"
done
for p in "${packages[@]}"; do
    [[ $(installed_status "$p") == not-installed || -z $(installed_status "$p") ]] \
        || fail "$p still known to dpkg after purge: $(installed_status "$p")"
done
step "passed"
