#!/usr/bin/env bash
# Starts a throwaway RabbitMQ node on loopback for tests and benchmarks.
# Usage: scripts/rabbitmq-start.sh DIR   -> prints the node's amqp:// URL as its last line.
#        scripts/rabbitmq-stop.sh DIR    -> stops it.
# The node is private to DIR: its own node name, AMQP port, distribution port, Erlang port
# mapper (epmd) port and cookie, with its database, logs and configuration in DIR, so that
# several can run side by side and none touches the system's /var/lib/rabbitmq. It listens on
# 127.0.0.1 only; the default guest user (loopback-only by RabbitMQ's own rule) is the login.
# Runs as the calling user (root included: the Debian wrapper's switch to `rabbitmq` is
# bypassed by calling the node's own start script). Stream queues need no plugin over AMQP.
set -euo pipefail
dir=$1
rmqbin=/usr/lib/rabbitmq/bin
if [ ! -x "$rmqbin/rabbitmq-server" ]; then
  echo "rabbitmq-server is not installed: run scripts/install-deps.sh test" >&2
  exit 1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd /

# Three free loopback ports (AMQP, distribution, epmd), unless the DIR was started before.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
if [ ! -f "$dir/env" ]; then
  name="stockd$(date +%s%N | tail -c 9)$$"
  cookie=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  cat >"$dir/env" <<ENV
export HOME="$dir"
export RABBITMQ_NODENAME="$name@localhost"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$(free_port)
export RABBITMQ_DIST_PORT=$(free_port)
export ERL_EPMD_PORT=$(free_port)
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
ENV
  printf '%s' "$cookie" >"$dir/.erlang.cookie"
  chmod 600 "$dir/.erlang.cookie"
  echo '[].' >"$dir/enabled_plugins"
  echo '[].' >"$dir/advanced.config"
  : >"$dir/rabbitmq-env.conf"
  # Loopback only; no disk-space alarm at the test machine's usual free space.
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:0
disk_free_limit.absolute = 50MB
log.file.level = warning
log.console = false
CONF
fi
# shellcheck disable=SC1091
. "$dir/env"
sed -i "s/^listeners.tcp.1 = .*/listeners.tcp.1 = 127.0.0.1:$RABBITMQ_NODE_PORT/" "$dir/rabbitmq.conf"
mkdir -p "$dir/log" "$dir/mnesia"

if "$rmqbin/rabbitmqctl" -q status >/dev/null 2>&1; then
  echo "amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/%2f"
  exit 0
fi
nohup "$rmqbin/rabbitmq-server" >"$dir/log/startup.log" 2>&1 </dev/null &
echo $! >"$dir/launcher.pid"
# Waits until the node runs its applications and accepts AMQP connections.
for _ in $(seq 1 120); do
  if "$rmqbin/rabbitmqctl" -q await_startup --timeout 1 >/dev/null 2>&1 &&
     (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_NODE_PORT") 2>/dev/null; then
    echo "amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/%2f"
    exit 0
  fi
  if ! kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null; then
    echo "rabbitmq-server exited; its log:" >&2
    tail -n 30 "$dir/log/startup.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "rabbitmq-server did not accept AMQP within 60 s; see $dir/log" >&2
exit 1
