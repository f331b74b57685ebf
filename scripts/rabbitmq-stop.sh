#!/usr/bin/env bash
# Stops the RabbitMQ node scripts/rabbitmq-start.sh started in DIR (and its private epmd).
# Usage: scripts/rabbitmq-stop.sh DIR. Stopping a node that is not running is not an error.
set -euo pipefail
dir=$(cd "$1" && pwd)
[ -f "$dir/env" ] || exit 0
# shellcheck disable=SC1091
. "$dir/env"
rmqbin=/usr/lib/rabbitmq/bin
"$rmqbin/rabbitmqctl" -q stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || true
if [ -f "$dir/launcher.pid" ]; then
  pid=$(cat "$dir/launcher.pid")
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/launcher.pid"
fi
epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
