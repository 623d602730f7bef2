#!/usr/bin/env bash
# Installs a zcio build tree into a temporary prefix, then builds and runs a tiny
# consumer against it twice: through find_package(zcio) and through pkg-config.
#
#   tests/install/run.sh BUILD_DIR WORK_DIR
#
# CXX, CXXFLAGS and LDFLAGS from the environment are used for the consumer, so a
# sanitizer build of zcio is consumed with the same sanitizer flags (ctest sets them).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 BUILD_DIR WORK_DIR" >&2
    exit 2
fi
build_dir=$(cd "$1" && pwd)
work_dir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cxx=${CXX:-c++}

rm -rf "$work_dir"
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)
prefix=$work_dir/prefix

step() { printf '== install test: %s\n' "$*"; }

step "cmake --install into $prefix"
cmake --install "$build_dir" --prefix "$prefix" >"$work_dir/install.log" \
    || { cat "$work_dir/install.log"; exit 1; }

for f in include/zcio/sys.hpp include/zcio/result.hpp include/zcio/unique_fd.hpp; do
    [[ -f $prefix/$f ]] || { echo "missing after install: $f" >&2; exit 1; }
done
config=$(find "$prefix" -name zcioConfig.cmake -print -quit)
pcfile=$(find "$prefix" -name zcio.pc -print -quit)
[[ -n $config ]] || { echo "zcioConfig.cmake was not installed" >&2; exit 1; }
[[ -n $pcfile ]] || { echo "zcio.pc was not installed" >&2; exit 1; }
for f in zcioTargets.cmake zcioConfigVersion.cmake; do
    [[ -f $(dirname "$config")/$f ]] || { echo "missing after install: $f" >&2; exit 1; }
done

step "find_package(zcio CONFIG) consumer"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cmake -S "$here" -B "$work_dir/consumer" "${generator[@]}" \
    -DCMAKE_CXX_COMPILER="$cxx" \
    -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
    >"$work_dir/consumer-configure.log" \
    || { cat "$work_dir/consumer-configure.log"; exit 1; }
found=$(sed -n 's/^zcio_DIR:PATH=//p' "$work_dir/consumer/CMakeCache.txt")
if [[ $found != "$prefix"/* ]]; then
    echo "find_package found zcio at '$found', not in $prefix" >&2
    exit 1
fi
cmake --build "$work_dir/consumer" >"$work_dir/consumer-build.log" \
    || { cat "$work_dir/consumer-build.log"; exit 1; }
"$work_dir/consumer/app"

step "pkg-config consumer"
PKG_CONFIG_PATH=$(dirname "$pcfile")
export PKG_CONFIG_PATH
pc_flags=$(pkg-config --cflags --libs zcio)
echo "pkg-config --cflags --libs zcio: $pc_flags"
if [[ $(pkg-config --variable=prefix zcio) != "$prefix" ]]; then
    echo "zcio.pc names prefix '$(pkg-config --variable=prefix zcio)', not $prefix" >&2
    exit 1
fi
# shellcheck disable=SC2086 # word splitting of the flag strings is intended
"$cxx" ${CXXFLAGS:-} "$here/main.cpp" -o "$work_dir/app-pkgconfig" $pc_flags ${LDFLAGS:-}
"$work_dir/app-pkgconfig"

step "passed"
