#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for tests and benchmarks.
# Usage: scripts/pg-start.sh DIR PORT   -> prints the connection URI on stdout.
#        scripts/pg-stop.sh DIR         -> stops it.
# As root the server runs as the `postgres` user (it refuses root), otherwise as the calling
# user (its superuser role is `postgres` either way); it keeps its data and socket in DIR,
# and is durable as shipped: fsync=on, synchronous_commit=on, full_page_writes=on.
set -euo pipefail
dir=$1
port=$2
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() {
  if [ "$(id -u)" -ne 0 ]; then "$@"; else runuser -u postgres -- "$@"; fi
}
mkdir -p "$dir"
chmod 755 "$dir"
chown postgres: "$dir" 2>/dev/null || true
# Absolute, then leave the caller's directory: initdb and pg_ctl running as postgres complain
# "could not change directory" about a working directory they cannot enter (a clone in /root).
dir=$(cd "$dir" && pwd)
cd /
if [ ! -f "$dir/data/PG_VERSION" ]; then
  as_postgres "$pgbin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >"$dir/initdb.log"
fi
# max_wal_size: at tens of thousands of commits' worth of rows a second the default 1 GB forces
# a checkpoint every ~20 s ("checkpoints are occurring too frequently"), each a stall of
# ~150 ms for every writer; 4 GB lets the timed checkpoint (5 min) do it, spread out.
# wal_init_zero=off: by default each new 16 MB WAL segment is first written full of zeros and
# fsynced, inside some commit. At ~10 MB of WAL a second (10k purchases/s) that is a commit of
# ~55 ms every second or two until checkpoints start recycling segments, and it was the whole
# p99 of stockd on PostgreSQL at half its peak (bench/hot-sku: ~50 ms with it, ~4-11 ms without,
# at 8-12k/s). Off, the segment is created sparse and fdatasync persists each block as it is
# allocated: as durable, the cost spread over the commits. (A full disk then fails a WAL write
# rather than the segment's creation.)
# shared_buffers=64MB and backend_flush_after=256kB: the kernel writes a file's dirty pages back
# in one go once they are 30 s old (vm.dirty_expire_centisecs), and a WAL fdatasync that lands
# then waits for that burst (ext4 orders a file's newly allocated blocks before the journal
# commit the fsync needs). Two kinds of page pile up: the pages a backend writes when it evicts
# a buffer (backend_flush_after makes it start their writeback every 256 kB), and the zero page
# PostgreSQL writes to extend a table, which stays dirty in the page cache while the buffer that
# holds the new page stays in shared_buffers - so about shared_buffers of them, at a purchase
# load that appends to the log, orders and idempotency tables. Measured at half stockd's peak
# (~17k purchases/s, open loop): with 256MB and no flush the burst reached 260-900 MB and a
# commit stalled 90-220 ms every 30 s (p99 of the 10 s window 270-435 ms); with the flush alone
# 60-130 ms (p99 ~100 ms); with 64MB and the flush the bursts stalled no commit 50 ms, and 21 of
# 22 windows had a p99 of 7-30 ms (the other one commit of 306 ms away from any burst, cause not
# found). Peak throughput did not change; the tables' pages are still read from the page cache.
settings="-c shared_buffers=64MB -c fsync=on -c synchronous_commit=on -c max_wal_size=4GB"
settings+=" -c wal_init_zero=off -c backend_flush_after=256kB"
as_postgres "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 $settings" \
  start >/dev/null
echo "postgres://postgres@127.0.0.1:$port/postgres"
