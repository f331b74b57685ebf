# The two commands of the README:
#   make run    installs what is missing, builds, and runs stockd on SQLite at 127.0.0.1:8080
#   make test   installs what is missing and runs every test suite (ASan+UBSan, TSan, release)
# Other targets: build, bench, tidy, format, clean.

DATA_DIR ?= ./data
ARGS ?=

.PHONY: run build test test-asan test-tsan test-release tidy format bench clean deps

run: build
	./build/stockd --data-dir $(DATA_DIR) $(ARGS)

deps:
	@scripts/install-deps.sh run

build: deps
	@test -f build/build.ninja || meson setup build --buildtype=release -Db_ndebug=false
	ninja -C build stockd

test:
	@scripts/install-deps.sh test
	@scripts/run-tests.sh

tidy:
	python3 tools/tidy.py

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/unit/*.h

bench:
	@scripts/install-deps.sh bench
	bench/hot-sku

clean:
	rm -rf build build-asan build-tsan
