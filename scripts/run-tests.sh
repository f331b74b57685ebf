#!/usr/bin/env bash
# Runs every test suite in the three builds of STYLE 22, then prints one summary line:
#   1. ASan+UBSan debug build: unit and black-box suites
#   2. TSan build: the thread and queue tests (suite tsan)
#   3. release build with assertions on: unit and black-box suites
# plus the tidy check (function and line lengths). Exit status is non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

failed_steps=()
setup() { # dir, meson options...
  local dir=$1; shift
  [ -f "$dir/build.ninja" ] || meson setup "$dir" "$@" >/dev/null || return 1
}
run_suite() { # dir, meson test args...
  local dir=$1; shift
  ninja -C "$dir" >/dev/null || { echo "build failed in $dir"; ninja -C "$dir" | tail -30; return 1; }
  meson test -C "$dir" --print-errorlogs "$@"
}

python3 tools/tidy.py || failed_steps+=("tidy")

setup build-asan --buildtype=debug -Db_sanitize=address,undefined \
  -Dc_args=-fno-sanitize-recover=all || failed_steps+=("setup asan")
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  run_suite build-asan --suite unit --suite blackbox || failed_steps+=("asan")

setup build-tsan --buildtype=debug -Db_sanitize=thread || failed_steps+=("setup tsan")
run_suite build-tsan --suite tsan || failed_steps+=("tsan")

setup build --buildtype=release -Db_ndebug=false || failed_steps+=("setup release")
run_suite build --suite unit --suite blackbox || failed_steps+=("release")

python3 tools/test_summary.py build-asan build-tsan build
if [ ${#failed_steps[@]} -ne 0 ]; then
  echo "failed steps: ${failed_steps[*]}"
  exit 1
fi
