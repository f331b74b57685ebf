# Shortcuts for the README's two commands (scripts/run.sh, scripts/test.sh, which need only
# bash on a fresh Debian 12) and a few more: build, bench, tidy, format, clean.

DATA_DIR ?= ./data
ARGS ?=

# The C files clang-format keeps (scripts/run-tests.sh checks them).
C_SOURCES = src/*.[ch] src/*/*.[ch] tests/unit/*.[ch] tests/sim/*.c fuzz/*.c bench/*.c

.PHONY: run build test test-asan test-tsan test-release tidy format bench clean deps

run:
	DATA_DIR=$(DATA_DIR) scripts/run.sh $(ARGS)

deps:
	@scripts/install-deps.sh run

build: deps
	@test -f build/build.ninja || meson setup build --buildtype=release -Db_ndebug=false
	ninja -C build stockd

test:
	@scripts/test.sh

tidy:
	python3 tools/tidy.py

format:
	clang-format -i $(C_SOURCES)

bench:
	@scripts/install-deps.sh bench
	bench/hot-sku

clean:
	rm -rf build build-asan build-tsan
