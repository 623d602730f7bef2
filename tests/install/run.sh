#!/usr/bin/env bash
# Installs a zcio build tree into a temporary prefix, then builds and runs a tiny
# consumer against it twice: through find_package(zcio) and through pkg-config; and,
# when the build has Asio, a second one (asio/) that runs zcio::asio::async_copy.
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

# zcio/asio.hpp is installed exactly when the build found Asio (ZCIO_WITH_ASIO on).
asio_dir=$(sed -n 's/^ZCIO_ASIO_INCLUDE_DIR:PATH=//p' "$build_dir/CMakeCache.txt")
with_asio=$(sed -n 's/^ZCIO_WITH_ASIO:BOOL=//p' "$build_dir/CMakeCache.txt")
has_asio=0
if [[ $with_asio == ON && -n $asio_dir && $asio_dir != *NOTFOUND ]]; then
    has_asio=1
fi
if [[ $has_asio == 1 ]]; then
    [[ -f $prefix/include/zcio/asio.hpp ]] || { echo "missing after install: zcio/asio.hpp" >&2; exit 1; }
    step "find_package(zcio CONFIG COMPONENTS asio) consumer"
    cmake -S "$here/asio" -B "$work_dir/asio-consumer" "${generator[@]}" \
        -DCMAKE_CXX_COMPILER="$cxx" \
        -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
        >"$work_dir/asio-consumer-configure.log" \
        || { cat "$work_dir/asio-consumer-configure.log"; exit 1; }
    cmake --build "$work_dir/asio-consumer" >"$work_dir/asio-consumer-build.log" \
        || { cat "$work_dir/asio-consumer-build.log"; exit 1; }
    "$work_dir/asio-consumer/asio_app"
else
    [[ ! -e $prefix/include/zcio/asio.hpp ]] \
        || { echo "zcio/asio.hpp installed by a build without Asio" >&2; exit 1; }
    step "no Asio in this build: the asio consumer is skipped"
fi

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
if [[ $has_asio == 1 ]]; then
    # Asio is header-only and in the compiler's default path (Debian's libasio-dev).
    # shellcheck disable=SC2086
    "$cxx" ${CXXFLAGS:-} "$here/asio/main.cpp" -o "$work_dir/asio-app-pkgconfig" $pc_flags ${LDFLAGS:-}
    "$work_dir/asio-app-pkgconfig"
fi

step "passed"
