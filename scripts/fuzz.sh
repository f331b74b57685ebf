#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan+UBSan, -Dfuzz=true) in build-fuzz and runs each
# for SECONDS (default 30) from the checked-in corpus, with the dictionary. New inputs go to a
# temporary directory, never into the repository (see fuzz/README.md to merge them).
# Usage: scripts/fuzz.sh [SECONDS]    Exit status non-zero when a harness finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang meson setup build-fuzz --buildtype=debug -Dfuzz=true \
    -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=all" >/dev/null
fi
if ! ninja -C build-fuzz fuzz/fuzz_body fuzz/fuzz_framing >/dev/null; then
  echo "fuzz: the harnesses do not build:"
  ninja -C build-fuzz fuzz/fuzz_body fuzz/fuzz_framing | tail -30
  exit 1
fi
work=$(mktemp -d /tmp/stockd-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
declare -A dicts=([body]=json.dict [framing]=framing.dict)
for target in body framing; do
  mkdir -p "$work/$target"
  echo "fuzz_$target: ${seconds}s from fuzz/corpus/$target"
  if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
      "build-fuzz/fuzz/fuzz_$target" -max_total_time="$seconds" -dict="fuzz/${dicts[$target]}" \
      -max_len=4096 -print_final_stats=1 -artifact_prefix="$work/" \
      "$work/$target" "fuzz/corpus/$target" >"$work/$target.log" 2>&1; then
    status=1
    tail -40 "$work/$target.log"
    mkdir -p fuzz/crashes && cp "$work"/crash-* "$work"/leak-* fuzz/crashes/ 2>/dev/null || true
    echo "fuzz_$target FAILED: the crashing input is in fuzz/crashes/"
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$work/$target.log" || true
    echo "fuzz_$target ok"
  fi
done
exit $status
