#!/usr/bin/env bash
# Installs the Debian 12 packages stockd needs to build, run and test, when missing.
# Usage: scripts/install-deps.sh [run|test|bench]   (default: run)
# Runs apt-get update once, and only when something is missing. Needs root (or sudo).
set -euo pipefail

profile=${1:-run}
packages=(gcc pkg-config meson ninja-build libh2o-evloop-dev libjansson-dev libsqlite3-dev
          libpq-dev libssl-dev librabbitmq-dev sqlite3 curl ca-certificates)
case "$profile" in
  run) ;;
  # procps: pgrep (test_pg_cluster's frozen server); libclang-rt-14-dev: the sanitizer and
  # libFuzzer runtimes of the fuzz build, which --no-install-recommends leaves out of clang.
  # rabbitmq-server: the broker the tests start on loopback (scripts/rabbitmq-start.sh).
  # prometheus: for promtool only (test_metrics checks a live scrape, deploy/prometheus).
  # chromium, nodejs, npm: the dashboard's browser tests (tests/browser: playwright-core from
  # npm drives Debian's chromium).
  test) packages+=(libcmocka-dev python3 python3-yaml clang-format postgresql clang
                   libclang-rt-14-dev procps rabbitmq-server prometheus chromium nodejs npm) ;;
  bench) packages+=(libcmocka-dev python3 postgresql postgresql-contrib nginx-light gnuplot-nox
                    rabbitmq-server
                    linux-perf valgrind) ;;
  *) echo "usage: $0 [run|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  # A nodejs package from outside Debian (NodeSource) bundles npm and conflicts with Debian's:
  # an npm on the PATH is enough.
  [ "$p" = npm ] && command -v npm >/dev/null && continue
  missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  # A minimal Debian has no sudo: say what to do rather than "sudo: command not found".
  if ! command -v sudo >/dev/null; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "run this command as root (or install sudo) so that $0 can install them" >&2
    exit 1
  fi
  sudo_cmd=(sudo)
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# prometheus is there for promtool: where an init system runs, its package starts the
# Prometheus server (port 9090); stop and disable it again. (In a root without an init, such as
# scripts/fresh-check.sh's, policy-rc.d keeps every service from starting.)
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  "${sudo_cmd[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
