"""Black-box tests of the read model's snapshots (issue 10): a start loads the newest valid
snapshot and replays only the events after it, and every read answers as it did before the
restart; a kill -9 under load leaves a snapshot and a tail that agree with a replay of the
whole log (a rebuild) and with the audit; a damaged snapshot, or one of an unknown format, is
ignored with a log line and the state is still right. stockd runs with a tiny
--snapshot-every-events so that a few hundred events make several snapshots. On SQLite and on
PostgreSQL (suite blackbox-pg), where the rows are changed with psql."""

import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (_stored_rows, audit_events, check, check_eq, check_status,  # noqa: E402
                     main, new_key, new_pg_database, pg_mode, psql, skip_test, start_stockd)

EVERY = 25  # --snapshot-every-events: several snapshots out of a few hundred events
SKUS = ["SNAP-A", "SNAP-B", "SNAP-C"]
EXTRA = ["--snapshot-every-events", str(EVERY), "--ticket-sku", SKUS[0]]  # /inventory: sold


def post_ok(c, path, body, what):
    r = c.post(path, body, key=new_key("snap"))
    check(r.status in (200, 201), "%s: %d %s" % (what, r.status, r.body[:300]))
    return r.json


def workload(server, rounds=3):
    """Stores, products, adjustments, purchases, reservations in every state, a transfer.
    Returns the ids of the reservations and orders it made."""
    reservations, orders = [], []
    with server.client() as c:
        post_ok(c, "/v1/stores", {"storeId": "S2", "name": "North", "latencyMs": 4}, "store")
        for sku in SKUS:
            post_ok(c, "/v1/products", {"sku": sku, "name": "Name of " + sku,
                                        "initialOnHand": 500}, "product " + sku)
            for store in ("S1", "S2"):
                post_ok(c, "/v1/adjustments", {"storeId": store, "sku": sku, "delta": 40,
                                               "reason": "delivery"}, "adjustment")
        for n in range(rounds):
            for i, sku in enumerate(SKUS):
                for _ in range(10):
                    r = post_ok(c, "/v1/purchase", {"sku": sku, "qty": 1 + i,
                                                    "customerId": "c-%d" % n}, "purchase")
                    orders.append(r["orderId"])
                res = post_ok(c, "/v1/reservations", {
                    "lines": [{"sku": sku, "qty": 2}, {"sku": SKUS[(i + 1) % 3], "qty": 1}],
                    "ttlSeconds": 600, "customerId": "r-%d-%d" % (n, i)}, "reservation")
                rid = res["reservationId"]
                reservations.append(rid)
                if i == 1:
                    post_ok(c, "/v1/reservations/%s:confirm" % rid, {"paymentRef": "p"},
                            "confirm")
                elif i == 2:
                    post_ok(c, "/v1/reservations/%s:cancel" % rid, {"reason": "no"}, "cancel")
            post_ok(c, "/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                         "lines": [{"sku": SKUS[n % 3], "qty": 3}]}, "transfer")
    return reservations, orders


def reads(server, reservations, orders):
    """Every read route's status and body (the projection's and the log's)."""
    paths = ["/v1/stores", "/v1/products/totals?page=1&size=200", "/inventory",
             "/v1/events?since=0&limit=1000"]
    for sku in SKUS:
        paths += ["/v1/availability?sku=" + sku, "/v1/items/%s/availability" % sku,
                  "/v1/events?sku=%s&since=0&limit=1000" % sku]
    paths += ["/v1/reservations/" + rid for rid in reservations]
    paths += ["/v1/orders/" + oid for oid in orders[::7]]
    out = {}
    with server.client() as c:
        for path in paths:
            r = c.get(path)
            out[path] = (r.status, r.body)
        r = c.get("/v1/projections/status")
        check_status(r, 200, "projection status")
        out["status"] = (r.json["appliedSeq"], r.json["logSeq"], r.json["counts"])
    return out


def check_reads_equal(got, want, what):
    for path in want:
        check_eq(got.get(path), want[path], "%s: GET %s" % (what, path))


def metric(server, name):
    with server.client() as c:
        r = c.get("/metrics")
    m = re.search(r"^%s (\d+)$" % name, r.body.decode(), re.M)
    check(m is not None, "no %s in /metrics" % name)
    return int(m.group(1))


def log_text(server):
    with open(server.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def last_start_log(server):
    """The server log since its last start."""
    return log_text(server).rsplit("=== start:", 1)[-1]


def loaded_seq(server):
    """The seq of the snapshot the last start loaded, or None (it replayed the whole log)."""
    m = re.search(r"loaded the snapshot at seq (\d+)", last_start_log(server))
    return int(m.group(1)) if m else None


def snapshot_rows(server):
    return [(int(seq), int(fmt)) for seq, fmt in _stored_rows(
        server, "SELECT seq, format FROM snapshots ORDER BY seq")]


def rewrite_snapshot(server, seq, flip_at=None, fmt=None):
    """With the server stopped: flips one byte of snapshot seq's body at offset flip_at, or
    sets its format column to fmt."""
    if server.pg_db is not None:
        if fmt is not None:
            psql("UPDATE snapshots SET format = %d WHERE seq = %d" % (fmt, seq), db=server.pg_db)
        else:
            psql("UPDATE snapshots SET body = set_byte(body, %d, get_byte(body, %d) # 255)"
                 " WHERE seq = %d" % (flip_at, flip_at, seq), db=server.pg_db)
        return
    import sqlite3
    db = sqlite3.connect(os.path.join(server.data_dir, "stockd.db"), timeout=10)
    try:
        if fmt is not None:
            db.execute("UPDATE snapshots SET format = ? WHERE seq = ?", (fmt, seq))
        else:
            (body,) = db.execute("SELECT body FROM snapshots WHERE seq = ?", (seq,)).fetchone()
            body = bytearray(body)
            body[flip_at] ^= 0xFF
            db.execute("UPDATE snapshots SET body = ? WHERE seq = ?", (bytes(body), seq))
        db.commit()
    finally:
        db.close()


def test_restart_reads_equal():
    """After purchases, adjustments, reservations and a transfer, a clean restart loads the
    snapshot written at the stop, replays nothing, and every read equals the one before."""
    server = start_stockd(EXTRA)
    try:
        reservations, orders = workload(server)
        written = metric(server, "stockd_snapshots_written_total")
        check(written >= 3, "only %d snapshots written every %d events" % (written, EVERY))
        before = reads(server, reservations, orders)
        server.stop()
        check(len(snapshot_rows(server)) in (1, 2), "snapshots kept: %s" % snapshot_rows(server))
        server = start_stockd(EXTRA, data_dir=server.data_dir)
        check_eq(loaded_seq(server), before["status"][0], "the snapshot loaded (its seq)")
        check("replayed the event log from seq %d to seq %d" % (before["status"][0],
                                                               before["status"][0])
              in last_start_log(server), "the replay after the snapshot replayed nothing")
        check_reads_equal(reads(server, reservations, orders), before, "after the restart")
        # Writes go on from there, and the next restart agrees again.
        more_res, more_orders = workload_more(server)
        before = reads(server, reservations + more_res, orders + more_orders)
        server.stop()
        server = start_stockd(EXTRA, data_dir=server.data_dir)
        check_reads_equal(reads(server, reservations + more_res, orders + more_orders), before,
                          "after the second restart")
        audit_events(server)
    finally:
        server.stop()


def workload_more(server):
    orders, reservations = [], []
    with server.client() as c:
        for i in range(20):
            orders.append(post_ok(c, "/v1/purchase", {"sku": SKUS[i % 3], "qty": 1,
                                                      "customerId": "m"}, "purchase")["orderId"])
        reservations.append(post_ok(c, "/v1/reservations", {
            "lines": [{"sku": SKUS[0], "qty": 1}], "ttlSeconds": 600, "customerId": "m"},
            "reservation")["reservationId"])
        post_ok(c, "/v1/items:set-absolute", {"storeId": "S2", "sku": SKUS[2], "onHand": 77,
                                              "countRef": "count-1"}, "count")
    return reservations, orders


def hammer(server, seconds):
    """Purchases on 8 connections until the server dies or seconds pass."""
    stop = threading.Event()

    def worker(i):
        try:
            with server.client(timeout=10) as c:
                n = 0
                while not stop.is_set():
                    c.post("/v1/purchase", {"sku": SKUS[i % 3], "qty": 1, "customerId": "k"},
                           key=new_key("kill-%d-%d" % (i, n)))
                    n += 1
        except Exception:  # noqa: BLE001 - the server was killed under us
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    server.kill9()
    stop.set()
    for t in threads:
        t.join(30)


def rebuild_and_compare(server, reservations, orders, what):
    """The reads of the loaded projection equal those after a rebuild (a replay of the whole
    log into the other projection)."""
    loaded = reads(server, reservations, orders)
    with server.client() as c:
        r = c.post("/v1/projections/rebuild", {}, key=new_key("rebuild"))
        check(r.status in (200, 202), "rebuild: %d %s" % (r.status, r.body[:200]))
        deadline = time.monotonic() + 60
        while True:
            s = c.get("/v1/projections/status")
            if not s.json["rebuilding"] and s.json["rebuiltAt"] is not None:
                break
            check(time.monotonic() < deadline, "the rebuild did not finish")
            time.sleep(0.05)
    check_reads_equal(reads(server, reservations, orders), loaded, what)


def test_kill9_under_load_snapshot_and_tail_agree():
    """kill -9 in the middle of purchases: the next start loads the last periodic snapshot and
    replays the tail; its reads equal a full replay's (a rebuild) and the audit passes."""
    server = start_stockd(EXTRA)
    try:
        reservations, orders = workload(server, rounds=2)
        for cycle in range(2):
            hammer(server, 1.0)
            server = start_stockd(EXTRA, data_dir=server.data_dir)
            seq = loaded_seq(server)
            check(seq is not None and seq > 0, "cycle %d: no snapshot loaded:\n%s" % (
                cycle, last_start_log(server)[-2000:]))
            check(re.search(r"replayed the event log from seq %d to seq \d+" % seq,
                            last_start_log(server)), "cycle %d: no tail replay" % cycle)
            rebuild_and_compare(server, reservations, orders, "cycle %d" % cycle)
            audit_events(server)
    finally:
        server.stop()


def test_damaged_or_unknown_snapshot_ignored():
    """A snapshot whose body was changed fails its checksum, and one of an unknown format is
    not read: each is ignored with a log line, the start falls back to the older snapshot or
    to the whole log, and every read is still right."""
    server = start_stockd(EXTRA)
    try:
        reservations, orders = workload(server)
        before = reads(server, reservations, orders)
        server.stop()
        rows = snapshot_rows(server)
        check_eq(len(rows), 2, "snapshots kept (the newest and the one before)")
        newest, older = rows[-1][0], rows[0][0]
        rewrite_snapshot(server, newest, flip_at=200)
        server = start_stockd(EXTRA, data_dir=server.data_dir)
        text = last_start_log(server)
        check("snapshot at seq %d ignored: its checksum does not match" % newest in text,
              "no log line for the damaged snapshot:\n%s" % text[-2000:])
        check_eq(loaded_seq(server), older, "the older snapshot loaded instead")
        check_reads_equal(reads(server, reservations, orders), before, "after a damaged one")
        server.stop()  # the stop writes a good snapshot at the same seq over the damaged one
        for seq, _ in snapshot_rows(server):
            rewrite_snapshot(server, seq, fmt=99)
        server = start_stockd(EXTRA, data_dir=server.data_dir)
        text = last_start_log(server)
        check("has format 99, this build reads 1; ignored" in text,
              "no log line for the unknown format:\n%s" % text[-2000:])
        check(loaded_seq(server) is None, "a snapshot of format 99 was loaded")
        check("replayed the event log from seq 0 to seq %d" % before["status"][0] in text,
              "no full replay:\n%s" % text[-2000:])
        check_reads_equal(reads(server, reservations, orders), before, "after unknown formats")
        audit_events(server)
    finally:
        server.stop()


def test_snapshots_off():
    """--snapshot-every-events 0 writes none, and a start without any replays the whole log."""
    server = start_stockd(["--snapshot-every-events", "0"])
    try:
        reservations, orders = workload(server, rounds=1)
        before = reads(server, reservations, orders)
        server.stop()
        check_eq(snapshot_rows(server), [], "snapshots with --snapshot-every-events 0")
        server = start_stockd(["--snapshot-every-events", "0"], data_dir=server.data_dir)
        check(loaded_seq(server) is None, "a snapshot loaded")
        check_reads_equal(reads(server, reservations, orders), before, "without snapshots")
    finally:
        server.stop()


def converged_reads(server, reservations, orders, want, what, seconds=15.0):
    """server's reads equal want within seconds (an instance follows the others with lag)."""
    deadline = time.monotonic() + seconds
    while True:
        got = reads(server, reservations, orders)
        got["status"] = want["status"]  # logSeq and counts converge with the rest
        if got == want or time.monotonic() > deadline:
            check_reads_equal(got, want, what)
            return
        time.sleep(0.2)


def test_pg_second_instance_starts_from_snapshot_and_follows():
    """Two instances on one PostgreSQL database: the second, restarted while the first keeps
    writing, loads a snapshot, replays the tail, then follows the first's writes."""
    if not pg_mode():
        skip_test("several instances share a database on PostgreSQL only")
    db = new_pg_database()
    a = start_stockd(EXTRA, pg_db=db)
    b = start_stockd(EXTRA, pg_db=db)
    try:
        reservations, orders = workload(a)
        b.stop()
        more_res, more_orders = workload_more(a)
        reservations, orders = reservations + more_res, orders + more_orders
        b = start_stockd(EXTRA, data_dir=b.data_dir, pg_db=db)
        seq = loaded_seq(b)
        check(seq is not None and seq > 0, "no snapshot loaded:\n" + last_start_log(b)[-2000:])
        more_res, more_orders = workload_more(a)  # after b's start: b must follow these
        reservations, orders = reservations + more_res, orders + more_orders
        want = reads(a, reservations, orders)
        converged_reads(b, reservations, orders, want, "the second instance")
        audit_events(b)
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    main([test_restart_reads_equal, test_kill9_under_load_snapshot_and_tail_agree,
          test_damaged_or_unknown_snapshot_ignored, test_snapshots_off,
          test_pg_second_instance_starts_from_snapshot_and_follows])
