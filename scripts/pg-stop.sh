#!/usr/bin/env bash
# Stops a server started by scripts/pg-start.sh DIR (fast shutdown), if it runs.
set -uo pipefail
dir=$1
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -f "$dir/data/postmaster.pid" ] || exit 0
dir=$(cd "$dir" && pwd)
cd / # as in pg-start.sh: the postgres user may not be able to enter the caller's directory
if [ "$(id -u)" -ne 0 ]; then  # the server runs as the calling user (see pg-start.sh)
  "$pgbin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
else
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
fi
