#!/usr/bin/env bash
# The packages of `make package` on a clean Debian 12: debootstrap --variant=minbase
# bookworm into a temporary directory, `apt-get install ./zcio_*.deb ./zcio-dev_*.deb`
# there (Depends resolved from the mirror), `man -w` of both pages (man-db installed
# for it), /usr/bin/zcio proxy from the installed config relaying 1 MiB
# (serve_check.py, the host's python3 driving the chrooted binary: same network),
# `apt-get purge`, and the directory removed. Root, network to the mirror, ~5 minutes:
# not a ctest (tests/package/run.sh is); docs/production.md, "Package".
#
#   tests/package/chroot.sh DEB_DIR [MIRROR]
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 DEB_DIR [MIRROR]" >&2; exit 2; }
deb_dir=$(cd "$1" && pwd)
mirror=${2:-http://deb.debian.org/debian}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $(id -u) -eq 0 ]] || { echo "chroot.sh: needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "chroot.sh: apt-get install debootstrap" >&2; exit 1; }

root=$(mktemp -d /tmp/zcio-chroot.XXXXXX)
chmod 755 "$root"   # mandb and _apt run as other users in the chroot
wrapper=$root.zcio
cleanup() {
    mountpoint -q "$root/proc" && umount "$root/proc"
    rm -rf "$root" "$wrapper"
}
trap cleanup EXIT
step() { printf '== chroot test: %s (%ss)\n' "$*" "$SECONDS"; }

step "debootstrap --variant=minbase bookworm $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
mount -t proc proc "$root/proc"
cp "$deb_dir"/zcio_*.deb "$deb_dir"/zcio-dev_*.deb "$root/tmp/"

step "apt-get install ./zcio_*.deb ./zcio-dev_*.deb"
chroot "$root" bash -c 'export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends /tmp/zcio_*.deb /tmp/zcio-dev_*.deb man-db' \
    | grep -E '^(Setting up|E:)' || true
chroot "$root" dpkg-query -W zcio zcio-dev

step "man -w"
chroot "$root" man -w zcio
chroot "$root" man -w zcio-proxy

step "/usr/bin/zcio proxy from /etc/zcio/zcio.toml"
# serve_check.py runs WRAPPER proxy --config HOST_PATH: strip the chroot prefix.
cat >"$wrapper" <<WRAP
#!/bin/bash
args=()
for a in "\$@"; do args+=("\${a#"$root"}"); done
exec chroot "$root" /usr/bin/zcio "\${args[@]}"
WRAP
chmod +x "$wrapper"
mkdir -p "$root/tmp/w"
python3 "$here/serve_check.py" "$wrapper" "$root/etc/zcio/zcio.toml" "$root/tmp/w"

step "apt-get purge"
chroot "$root" apt-get purge -y -q zcio zcio-dev >/dev/null
for f in /usr/bin/zcio /etc/zcio /usr/include/zcio; do
    [[ ! -e $root$f ]] || { echo "left after purge: $f" >&2; exit 1; }
done
step "passed"
