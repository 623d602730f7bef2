# zcio: thin wrappers around the CMake presets (CMakePresets.json).
# Each target first makes sure the Debian packages it needs are there (cmake/deps.sh).
#
#   make demo          release build, then a short demonstration
#   make test          dev build (Debug, -Werror), all tests
#   make test-asan     ASan + UBSan build, all tests
#   make test-tsan     TSan build, all tests
#   make build         release build (build/release)
#   make bench         release build with bench/, then run the benchmarks
#   make install       release build, installed into PREFIX (default /usr/local)
#   make package       release build, zcio and zcio-dev .deb files in build/package, lintian
#   make format        clang-format -i every C++ file
#   make format-check  fail if clang-format would change a file
#   make tidy          clang-tidy over the library and the tool
#   make clean         remove build/

SHELL := /bin/bash
PREFIX ?= /usr/local
CTEST_ARGS ?=
DEPS := bash cmake/deps.sh

# Sources that clang-format and clang-tidy look at (build trees excluded).
CXX_DIRS := $(wildcard include src tests tools examples bench)
CXX_FILES = $(shell find $(CXX_DIRS) -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cc' \) -not -path '*/build/*' 2>/dev/null | sort)
TIDY_FILES = $(shell find $(wildcard src tools) -type f \( -name '*.cpp' -o -name '*.cc' \) 2>/dev/null | sort)

# Until the zcio command exists, the demo is the event-loop echo demo.
ifneq ($(wildcard tools/zcio/CMakeLists.txt),)
DEMO_BIN := build/release/tools/zcio/zcio
DEMO_TARGET := zcio_cli
# One second per case, not bench's default three: from a clean tree the release build
# already takes about half a minute on two cores, and one second of loopback traffic is
# over a GiB per bulk case and thousands of round trips per chatty one.
DEMO_ARGS := bench --seconds 1
else
DEMO_BIN := build/release/examples/echo_demo
DEMO_TARGET := echo_demo
DEMO_ARGS :=
endif

# clang-tidy 16 parses the code as C++2b; libstdc++ 12 only declares std::expected
# when __cpp_concepts >= 202002L, which clang 16 does not yet claim.
CLANG_TIDY ?= clang-tidy-16
TIDY_ARGS := -p build/dev --quiet --extra-arg=-std=c++2b \
	--extra-arg=-U__cpp_concepts --extra-arg=-D__cpp_concepts=202002L

.PHONY: memcheck
.PHONY: all build demo test test-asan test-tsan bench compare install package format format-check tidy clean

all: build

build:
	@$(DEPS) build
	cmake --preset release
	cmake --build --preset release

demo:
	@$(DEPS) build
	cmake --preset release
	cmake --build --preset release --target $(DEMO_TARGET)
	@test -x $(DEMO_BIN) || { echo "make demo: $(DEMO_BIN) was not built" >&2; exit 1; }
	$(DEMO_BIN) $(DEMO_ARGS)

test:
	@$(DEPS) build test
	cmake --preset dev
	cmake --build --preset dev
	ctest --preset dev -j2 --output-on-failure $(CTEST_ARGS)

test-asan:
	@$(DEPS) build test
	cmake --preset asan
	cmake --build --preset asan
	ctest --preset asan -j2 --output-on-failure $(CTEST_ARGS)

# The end-to-end proxy test with every zcio process under valgrind memcheck (~2 min).
memcheck:
	@$(DEPS) build test
	cmake --preset dev
	cmake --build --preset dev --target zcio_cli
	@command -v valgrind >/dev/null || { echo "memcheck needs valgrind: apt-get install -y valgrind"; exit 1; }
	tests/e2e/memcheck.sh build/dev/tools/zcio/zcio

test-tsan:
	@$(DEPS) build test
	cmake --preset tsan
	cmake --build --preset tsan
	ctest --preset tsan -j2 --output-on-failure $(CTEST_ARGS)

bench:
	@$(DEPS) build bench
	cmake --preset bench
	cmake --build --preset bench
	@if [ -f bench/run.sh ]; then \
		bash bench/run.sh build/bench; \
	elif [ -d build/bench/bench ]; then \
		found=0; \
		for b in $$(find build/bench/bench -maxdepth 1 -type f -perm -u+x | sort); do \
			found=1; echo "== $$b"; "$$b" || exit 1; \
		done; \
		[ $$found = 1 ] || echo "make bench: no benchmark executables in build/bench/bench"; \
	else \
		echo "make bench: bench/ has no benchmarks yet"; \
	fi

# make compare: zcio proxy beside HAProxy, nginx, socat and a Go proxy on loopback
# (bench/compare/, under 10 minutes); writes bench/compare/results/, the section
# "Side by side: make compare" of docs/BENCHMARKS.md and docs/img/compare-*.png.
# Longer: make compare COMPARE_ARGS="--rounds 5 --seconds 10"; smoke run: COMPARE_ARGS=--quick
COMPARE_ARGS ?=
COMPARE_GO := cd bench/compare && GOPROXY=off GOFLAGS=-mod=mod GOCACHE=$(CURDIR)/bench/compare/tmp/gocache \
	GOPATH=$(CURDIR)/bench/compare/tmp/gopath go build -trimpath

compare:
	@$(DEPS) build compare
	cmake --preset release
	cmake --build --preset release --target zcio_cli
	$(COMPARE_GO) -o tmp/bin/goproxy goproxy.go
	$(COMPARE_GO) -o tmp/bin/loadgen loadgen.go
	cd bench/compare && cc -O2 -Wall -Wextra -pthread -o tmp/bin/floor floor.c
	python3 bench/compare/compare.py --zcio build/release/tools/zcio/zcio \
		--command "make compare$(if $(COMPARE_ARGS), COMPARE_ARGS='$(COMPARE_ARGS)')" $(COMPARE_ARGS)

# make fuzz: the libFuzzer targets of tests/fuzz (clang-16, ASan + UBSan), each run for
# FUZZ_SECONDS from a copy of its seed corpus; fails if one crashes (tests/fuzz/README.md).
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	@$(DEPS) build fuzz
	cmake --preset fuzz
	cmake --build --preset fuzz
	bash tests/fuzz/run.sh build/fuzz $(FUZZ_SECONDS)

install:
	@$(DEPS) build
	cmake --preset release
	cmake --build --preset release
	cmake --install build/release --prefix "$(PREFIX)"

# make package: build/package/zcio_VERSION-1_ARCH.deb and zcio-dev_... (CPack,
# cmake/package.cmake), then lintian on both; fails on a lintian error
# (docs/production.md, "Package", lists the warnings left and why).
package:
	@$(DEPS) build package
	cmake --preset release
	cmake --build --preset release --target zcio zcio_cli zcio_package_files
	rm -rf build/package
	cpack --config build/release/CPackConfig.cmake -B build/package
	rm -rf build/package/_CPack_Packages
	lintian --fail-on error build/package/*.deb
	@ls -l build/package/*.deb

format:
	@$(DEPS) format
	@clang-format -i $(CXX_FILES)

format-check:
	@$(DEPS) format
	@clang-format --dry-run --Werror $(CXX_FILES) && echo "format-check: $(words $(CXX_FILES)) files clean"

tidy:
	@$(DEPS) build test tidy
	cmake --preset dev
	@echo "clang-tidy over $(words $(TIDY_FILES)) files"
	@set -o pipefail; printf '%s\n' $(TIDY_FILES) \
		| xargs -r -P2 -n4 $(CLANG_TIDY) $(TIDY_ARGS) 2>&1 | sed '/^[0-9]* warnings\? generated\.$$/d'

clean:
	rm -rf build

# make stress: the stress and fault suite of `zcio proxy` (tests/stress, docs/RELIABILITY.md),
# short mode (under 3 minutes on 2 cores); the long one: make stress STRESS_ARGS=--long
# (also --only NAME, --seed N; python3 tests/stress/run.py --help).
STRESS_ARGS ?=
.PHONY: stress
stress:
	@$(DEPS) build
	cmake --preset release
	cmake --build --preset release --target zcio_cli
	python3 tests/stress/run.py --zcio build/release/tools/zcio/zcio $(STRESS_ARGS)
