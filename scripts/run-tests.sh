#!/usr/bin/env bash
# Runs every test suite in the three builds of STYLE 22, then prints one summary line:
#   1. ASan+UBSan debug build: unit, writer simulation (tests/sim) and black-box suites
#   2. TSan build: the thread and queue tests (suite tsan)
#   3. release build with assertions on: unit, simulation and black-box suites, and the
#      dashboard in a real browser (suite browser: tests/browser, after `npm ci` there)
#   4. the ASan+UBSan and the release builds again on PostgreSQL: the black-box scripts of suite
#      blackbox-pg on a throwaway cluster (scripts/pg-start.sh in a temporary directory, a free
#      port from 55432); under the sanitizers because the PostgreSQL backend is C of its own
#   5. a fuzz smoke test of the libFuzzer harnesses (scripts/fuzz.sh 20)
# One throwaway RabbitMQ node (scripts/rabbitmq-start.sh in a temporary directory) serves the
# whole run: its URL goes to the tests as $STOCKD_TEST_AMQP (and its directory as
# $STOCKD_TEST_AMQP_DIR), with $STOCKD_TEST_REQUIRE_AMQP=1 so that the AMQP tests fail rather
# than skip when it is missing; it is stopped at the end.
# plus the tidy check (function and line lengths), the module-prefix check (tools/prefixes.py)
# and the clang-format check. Exit status is non-zero on any failure.
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
# Module prefixes (STYLE 1, 5): every function in src/ carries its own module's prefix.
python3 tools/prefixes.py || failed_steps+=("prefixes")
# clang-format (STYLE 21): the tree must be as .clang-format leaves it (`make format` fixes it).
clang-format --dry-run -Werror src/*.[ch] src/*/*.[ch] tests/unit/*.[ch] tests/sim/*.c fuzz/*.c bench/*.c ||
  failed_steps+=("format")

# The RabbitMQ node of the AMQP tests (tests/unit/test_mq.c, tests/blackbox/test_relay.py).
amqp_dir=""
stop_amqp() {
  [ -n "$amqp_dir" ] || return 0
  scripts/rabbitmq-stop.sh "$amqp_dir" >/dev/null 2>&1
  rm -rf "$amqp_dir"
  amqp_dir=""
}
start_amqp() {
  local url
  amqp_dir=$(mktemp -d /tmp/stockd-test-amqp-XXXXXX) || return 1
  url=$(scripts/rabbitmq-start.sh "$amqp_dir" | tail -n 1) && [ -n "$url" ] || {
    echo "RabbitMQ did not start; its log:"; tail -20 "$amqp_dir/log/startup.log" 2>/dev/null
    return 1
  }
  export STOCKD_TEST_AMQP="$url"
  export STOCKD_TEST_AMQP_DIR="$amqp_dir"
}
export STOCKD_TEST_REQUIRE_AMQP=1
trap stop_amqp EXIT
trap 'stop_amqp; exit 130' INT TERM
start_amqp || failed_steps+=("setup rabbitmq")

setup build-asan --buildtype=debug -Db_sanitize=address,undefined \
  -Dc_args=-fno-sanitize-recover=all || failed_steps+=("setup asan")
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  run_suite build-asan --suite unit --suite sim --suite blackbox || failed_steps+=("asan")

setup build-tsan --buildtype=debug -Db_sanitize=thread || failed_steps+=("setup tsan")
run_suite build-tsan --suite tsan || failed_steps+=("tsan")

setup build --buildtype=release -Db_ndebug=false || failed_steps+=("setup release")
# The browser tests of the dashboard (suite browser, release build only): playwright-core from
# tests/browser/package-lock.json, driving Debian's chromium.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) || failed_steps+=("npm ci")
run_suite build --suite unit --suite sim --suite blackbox --suite browser || failed_steps+=("release")

# 4. PostgreSQL. Its results go to <build>/meson-logs/testlog-pg.json (--logbase), beside each
# build's testlog.json, so that the summary counts both.
pg_dir=""
stop_pg() {
  [ -n "$pg_dir" ] || return 0
  scripts/pg-stop.sh "$pg_dir" >/dev/null 2>&1
  rm -rf "$pg_dir"
  pg_dir=""
}
trap 'stop_pg; stop_amqp' EXIT
trap 'stop_pg; stop_amqp; exit 130' INT TERM
free_port() { # the first port from 55432 on which nothing listens on loopback
  python3 - <<'PY'
import socket
for port in range(55432, 55532):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
PY
}
start_pg() {
  local port
  port=$(free_port) && [ -n "$port" ] || { echo "no free port for PostgreSQL"; return 1; }
  pg_dir=$(mktemp -d /tmp/stockd-test-pg-XXXXXX) || return 1
  scripts/pg-start.sh "$pg_dir" "$port" >/dev/null || {
    echo "PostgreSQL did not start; its log:"; tail -20 "$pg_dir/server.log" 2>/dev/null
    return 1
  }
  export STOCKD_TEST_PG="postgres://postgres@127.0.0.1:$port"
  export STOCKD_TEST_PG_DIR="$pg_dir"
}
rm -f build/meson-logs/testlog-pg.json build-asan/meson-logs/testlog-pg.json
if start_pg; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite build-asan --suite blackbox-pg --logbase testlog-pg || failed_steps+=("asan-pg")
  run_suite build --suite blackbox-pg --logbase testlog-pg || failed_steps+=("release-pg")
else
  failed_steps+=("setup postgresql")
fi
stop_pg

# 5. A fuzz smoke test: each libFuzzer harness for 20 s (clang, ASan+UBSan; fuzz/README.md).
bash scripts/fuzz.sh 20 || failed_steps+=("fuzz")

python3 tools/test_summary.py build-asan build-tsan build
if [ ${#failed_steps[@]} -ne 0 ]; then
  echo "failed steps: ${failed_steps[*]}"
  exit 1
fi
