#!/usr/bin/env bash
# The README's first command: installs what is missing (Debian packages), builds stockd in
# release mode (assertions stay on) and runs it on its embedded default, a SQLite database in
# ./data (DATA_DIR to change it), listening on 127.0.0.1:8080. Extra arguments go to stockd,
# e.g. `bash scripts/run.sh --listen 127.0.0.1:9000 --allow-reset`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh run
[ -f build/build.ninja ] || meson setup build --buildtype=release -Db_ndebug=false >/dev/null
ninja -C build stockd >/dev/null
exec ./build/stockd --data-dir "${DATA_DIR:-./data}" "$@"
