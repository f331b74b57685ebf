#!/usr/bin/env bash
# The README's second command: installs what is missing (Debian packages) and runs every test
# suite: ASan+UBSan, TSan and release builds, then one "N passed, N failed" line. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
exec scripts/run-tests.sh
