#!/usr/bin/env bash
# Runs the README's two commands as a newcomer would, on a fresh Debian 12: it builds a minimal
# root (debootstrap --variant=minbase bookworm, from the Debian archive already configured in
# apt), clones the current HEAD of this repository into it, runs `bash scripts/run.sh` (waits
# for GET /health, creates a product, buys it, replays the purchase, stops the server) and
# `bash scripts/test.sh` inside it as root, then tears the root down. A package that this
# machine happens to have but scripts/install-deps.sh does not install fails here. CI runs it.
#
# Usage: scripts/fresh-check.sh          (as root; the exit status is non-zero on any failure)
#   FRESH_CHECK_CACHE=DIR  keeps a pristine minbase tarball in DIR and starts from it on later
#                          runs (delete it to refresh); without it every run debootstraps anew
#   FRESH_CHECK_MIRROR=URL the Debian archive to debootstrap from (default: apt's sources)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
if [ $# -gt 0 ]; then # no arguments: the environment variables above are the options
  usage
  [ "$1" = -h ] || [ "$1" = --help ] && exit 0
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "$0 must run as root: it mounts /proc and /dev in a chroot and installs packages" >&2
  exit 2
fi
# Run in a private mount namespace: the mounts made for the root are invisible to the host and
# are dropped by the kernel with the namespace, even if this script is killed before its trap.
if [ "${FRESH_CHECK_IN_NS:-}" != 1 ]; then
  FRESH_CHECK_IN_NS=1 exec unshare --mount --propagation private -- bash "$0" "$@"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
suite=bookworm # Debian 12, what the README promises
started=$SECONDS
phase_name="start"
say() {
  local t=$((SECONDS - started))
  printf '[fresh-check %02d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"
}
phase() {
  phase_name=$1
  say "== $*"
}
fail() {
  say "error: $*"
  exit 1
}

work=""    # the temporary directory: root/ (the Debian root) and the logs
root=""    # $work/root
mounted=() # mount points under $root, in the order they were mounted
summary="" # the "N passed, N failed" line of test.sh inside the root

# --- teardown -------------------------------------------------------------------------------

# Processes whose root directory is the fresh root: a server run.sh left, a PostgreSQL.
root_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}
kill_root_processes() {
  local pids
  mapfile -t pids < <(root_pids)
  [ ${#pids[@]} -gt 0 ] || return 0
  say "teardown: stopping processes left in the root: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 20); do
    mapfile -t pids < <(root_pids)
    [ ${#pids[@]} -gt 0 ] || return 0
    sleep 0.5
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 1
}
mounts_under_root() { # prints every mount point at or under $root (mountinfo field 5)
  awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo
}
teardown() {
  local status=$? i
  trap - EXIT INT TERM
  set +e
  if [ -n "$root" ]; then
    kill_root_processes
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
      umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" ||
        say "teardown: cannot unmount ${mounted[i]}"
    done
    if [ -n "$(mounts_under_root)" ]; then
      # Never rm -rf across a mount: a bound /dev would lose the host's device nodes.
      say "teardown: still mounted, $work left in place: $(mounts_under_root | tr '\n' ' ')"
      status=1
    else
      rm -rf --one-file-system "$work"
    fi
  elif [ -n "$work" ]; then
    rm -rf --one-file-system "$work"
  fi
  if [ "$status" -eq 0 ]; then
    say "fresh-check: PASS (fresh Debian 12 minbase root: run.sh served a purchase; test.sh: $summary)"
  else
    say "fresh-check: FAIL in phase '$phase_name' (exit $status)${summary:+; test.sh: $summary}"
  fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. the host: debootstrap and the Debian archive ----------------------------------------

# Prints "URI SUITE COMPONENTS..." for every enabled deb entry of apt's sources, in both the
# one-line format (sources.list, *.list) and the deb822 format (*.sources), in that order.
apt_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { $1 = ""; print substr($0, 2) }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # (a comment line is no paragraph break in deb822: drop it, do not blank it)
    sed -e '/^[[:space:]]*#/d' -e 's/#.*//' "$f" | awk '
      function flush(  i, j, u, s, n, m) {
        if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false)$/) {
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j], comps
        }
        types = uris = suites = comps = enabled = ""
      }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); $1 = ""; value = substr($0, 2) }
      key == "types:" { types = value } key == "uris:" { uris = value }
      key == "suites:" { suites = value } key == "components:" { comps = value }
      key == "enabled:" { enabled = tolower(value) }
      END { flush() }'
  done
}

phase "1/6 host: debootstrap and the Debian archive"
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
fi
entries=$(apt_entries)
mirror=${FRESH_CHECK_MIRROR:-$(awk -v s="$suite" '$2 == s { print $1; exit }' <<<"$entries")}
[ -n "$mirror" ] || mirror=$(awk '$2 ~ /^[a-z]+$/ { print $1; exit }' <<<"$entries")
[ -n "$mirror" ] || fail "no Debian archive in /etc/apt/sources.list{,.d}; set FRESH_CHECK_MIRROR"
# The root's own apt sources: the host's entries for bookworm, -updates and -security (what a
# Debian 12 installation has), or the mirror alone when the host is another release.
root_sources=$(awk -v s="$suite" '$2 == s || $2 == s "-updates" || $2 == s "-security" {
  print "deb " $0 }' <<<"$entries")
if [ -z "$root_sources" ] || [ -n "${FRESH_CHECK_MIRROR:-}" ]; then
  root_sources="deb $mirror $suite main"
fi
say "archive: $mirror"
head_sha=$(git -C "$repo" rev-parse HEAD)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
  say "note: $repo has uncommitted changes; the check runs the commit $head_sha only"

# --- 2. the fresh root ----------------------------------------------------------------------

# /var/tmp rather than /tmp: /tmp is a small tmpfs on many machines, the root needs ~3 GB.
work=$(mktemp -d /var/tmp/stockd-fresh-XXXXXX)
root=$work/root
mkdir "$root"
cache_tar=""
[ -z "${FRESH_CHECK_CACHE:-}" ] ||
  cache_tar="$FRESH_CHECK_CACHE/debian-$suite-minbase-$(dpkg --print-architecture).tar.gz"
if [ -n "$cache_tar" ] && [ -f "$cache_tar" ]; then
  phase "2/6 root: unpacking the cached minbase root $cache_tar into $root"
  tar -C "$root" --numeric-owner -xpzf "$cache_tar"
else
  phase "2/6 root: debootstrap --variant=minbase $suite $root (a few minutes)"
  if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -30 "$work/debootstrap.log"
    fail "debootstrap failed"
  fi
  if [ -n "$cache_tar" ]; then # pristine: before any mount, source or package of the check
    mkdir -p "$FRESH_CHECK_CACHE"
    tar -C "$root" --numeric-owner -cpzf "$cache_tar.tmp" . && mv "$cache_tar.tmp" "$cache_tar"
    say "cached the minbase root in $cache_tar"
  fi
fi

phase "3/6 root: apt sources, name resolution, /proc /sys /dev mounts"
printf '%s\n' "$root_sources" >"$root/etc/apt/sources.list"
sed 's/^/  /' "$root/etc/apt/sources.list"
# Name resolution as on the host (the archive's name may only resolve through it).
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/hosts "$root/etc/hosts"
# The network's own certificate authorities, as the host trusts them: on a network whose
# proxy intercepts TLS, the npm registry (tests/browser's `npm ci`) is reachable only through
# it, and a newcomer's machine there trusts them the same way. ca-certificates (installed by
# scripts/install-deps.sh) adds them to the root's store when it is installed.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -L /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
# No init runs in the root, so no package may start its service (postgresql's postinst would
# start a cluster on the host's port 5432: loopback is shared). Debian's container images ship
# the same policy; the tests start their own PostgreSQL (scripts/pg-start.sh).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount_at() { # target, mount arguments...: mounts and records it for the teardown
  local target=$1
  shift
  mount "$@" "$target"
  mounted+=("$target")
}
# PostgreSQL, the sanitizers and the tests need /proc (and /proc/self/maps), /sys, the device
# nodes (/dev/null, /dev/urandom), ptys and POSIX shared memory (/dev/shm).
mount_at "$root/proc" -t proc -o nosuid,nodev,noexec proc
mount_at "$root/sys" -t sysfs -o nosuid,nodev,noexec,ro sysfs
mount_at "$root/dev" --bind /dev
mount_at "$root/dev/pts" -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts
mount_at "$root/dev/shm" -t tmpfs -o nosuid,nodev,mode=1777 shm

# Runs a command in the root as a newcomer's root shell would: a login-like clean environment
# (nothing of this machine's PATH, Python or CI variables), in the clone.
# An array, not a function, so that `"${in_root[@]}" CMD &` is the process itself (chroot and
# env exec the command), which $! names and SIGTERM reaches; a function would be a subshell.
in_root=(chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
  TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)

# --- 4. the clone ---------------------------------------------------------------------------

phase "4/6 clone: $head_sha into /root/stockd"
# A clean clone of HEAD, not a copy of the working tree: build directories, data and untracked
# files of this checkout must not help. git runs on the host (the newcomer cloned it somewhere).
git clone --quiet --no-local "$repo" "$root/root/stockd"
git -C "$root/root/stockd" checkout --quiet --detach "$head_sha"

# --- 5. bash scripts/run.sh -----------------------------------------------------------------

phase "5/6 bash scripts/run.sh --listen 127.0.0.1:0 (installs packages, builds, serves)"
# Port 0: the kernel picks a free one, so it cannot collide with a port in use on the host;
# stockd prints it in its listening line.
run_log=$work/run.log
"${in_root[@]}" bash -c 'cd /root/stockd && exec bash scripts/run.sh --listen 127.0.0.1:0' \
  >"$run_log" 2>&1 &
run_pid=$! # chroot, env, bash and run.sh each exec the next: this ends up being stockd
port=""
deadline=$((SECONDS + 1800)) # the package installs dominate; the archive may be slow
while [ -z "$port" ]; do
  if ! kill -0 "$run_pid" 2>/dev/null; then
    sed 's/^/  | /' "$run_log"
    fail "run.sh exited before stockd listened"
  fi
  [ "$SECONDS" -lt "$deadline" ] || { sed 's/^/  | /' "$run_log"; fail "run.sh: no listening line"; }
  port=$(sed -n 's|^stockd listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$run_log")
  [ -n "$port" ] || sleep 2
done
sed 's/^/  | /' "$run_log"
base=http://127.0.0.1:$port
# curl comes with run.sh's packages: asking through the root's curl checks that too.
http() { # method path [curl args...] -> prints "STATUS" then the headers and body
  local method=$1 path=$2
  shift 2
  "${in_root[@]}" curl -sS -i -o - -w '\nSTATUS %{http_code}\n' -X "$method" "$base$path" "$@" 2>&1 ||
    true # a refused connection shows as "STATUS 000"
}
status_of() { sed -n 's/^STATUS //p' <<<"$1" | tail -1; }
for tries in $(seq 1 30); do
  out=$(http GET /health)
  [ "$(status_of "$out")" = 200 ] && break
  [ "$tries" -lt 30 ] || { echo "$out"; fail "GET /health never answered 200"; }
  sleep 1
done
say "GET /health: 200"
token_file=$root/root/stockd/data/admin.token
[ -s "$token_file" ] || fail "run.sh did not write data/admin.token"
token=$(head -1 "$token_file")
json=(-H "Authorization: Bearer $token" -H 'Content-Type: application/json')
out=$(http POST /v1/products "${json[@]}" -H 'Idempotency-Key: fresh-p-1' \
  -d '{"sku":"FRESH-1","name":"Fresh check","initialOnHand":5}')
[ "$(status_of "$out")" = 201 ] || { echo "$out"; fail "POST /v1/products did not answer 201"; }
say "POST /v1/products: 201"
purchase='{"sku":"FRESH-1","qty":2,"customerId":"c-fresh"}'
out=$(http POST /v1/purchase "${json[@]}" -H 'Idempotency-Key: fresh-o-1' -d "$purchase")
if [ "$(status_of "$out")" != 201 ] || ! grep -q '"available":3' <<<"$out"; then
  echo "$out"
  fail "POST /v1/purchase did not answer 201 with 3 left"
fi
say "POST /v1/purchase: 201, 3 left"
out=$(http POST /v1/purchase "${json[@]}" -H 'Idempotency-Key: fresh-o-1' -d "$purchase")
if [ "$(status_of "$out")" != 201 ] || ! grep -qi '^Idempotent-Replayed: true' <<<"$out"; then
  echo "$out"
  fail "the retried purchase was not replayed"
fi
say "POST /v1/purchase again: 201, replayed"
kill -TERM "$run_pid"
for tries in $(seq 1 60); do
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.5
done
kill -0 "$run_pid" 2>/dev/null && fail "stockd did not stop within 30 s of SIGTERM"
run_status=0
wait "$run_pid" || run_status=$?
[ "$run_status" -eq 0 ] || { tail -20 "$run_log"; fail "stockd exited with $run_status on SIGTERM"; }
say "stockd stopped on SIGTERM (exit 0)"

# --- 6. bash scripts/test.sh ----------------------------------------------------------------

phase "6/6 bash scripts/test.sh (installs the test packages, runs every suite; ~25 minutes)"
# run-tests.sh gives PostgreSQL the first free loopback port from 55432 and the black-box tests
# start stockd on port 0: loopback is shared with the host, so both avoid the host's ports.
# In the background and waited for: a SIGTERM or SIGINT then runs the teardown at once.
{ "${in_root[@]}" bash -c 'cd /root/stockd && bash scripts/test.sh' 2>&1 | tee "$work/test.log"; } &
test_status=0
wait $! || test_status=$?
# The closing line of run-tests.sh (tools/test_summary.py), followed at most by "failed steps:";
# each black-box script prints a line of the same form, so only the last two lines count.
summary=$(tail -n 2 "$work/test.log" | grep -E '^[0-9]+ passed, [0-9]+ failed' || true)
[ "$test_status" -eq 0 ] || fail "test.sh exited with $test_status"
[ -n "$summary" ] || fail "test.sh printed no 'N passed, N failed' line"
phase_name="teardown"
