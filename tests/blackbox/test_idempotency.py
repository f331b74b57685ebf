"""Black-box tests of Idempotency-Key (DESIGN.md): same key + same request -> the first
response again, byte for byte, with Idempotent-Replayed: true; same key + another request ->
422 idempotency_key_reused; concurrent duplicates create one order; keys survive a restart;
the request is compared by its meaning (a re-serialised body replays), records stored by
older versions (a fingerprint of the bytes) still replay, and records past the retention are
pruned."""

import os
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status, describe,  # noqa: E402
                     eventually, main, new_key, psql, run_threads, start_stockd)

SKU = "IDEM-1"


def make_product(c, on_hand, sku=SKU):
    r = c.post("/v1/products", {"sku": sku, "name": "Idem", "initialOnHand": on_hand},
               key=new_key())
    check_status(r, 201, "create product")


def on_hand(c, sku=SKU):
    r = c.get("/v1/availability?sku=" + sku)
    check_status(r, 200, "availability")
    return r.json["onHand"]


def check_replay(first, again, what):
    check_eq(again.status, first.status, "%s: replayed status" % what)
    check(again.body == first.body, "%s: replayed body differs:\n first %r\n again %r"
          % (what, first.body, again.body))
    check_eq(again.headers.get("idempotent-replayed"), "true",
             "%s: Idempotent-Replayed on the replay" % what)
    check(first.headers.get("idempotent-replayed") is None,
          "%s: the first response is marked replayed" % what)
    check_eq(again.headers.get("content-type"), first.headers.get("content-type"),
             "%s: replayed content-type" % what)


def test_same_key_same_body():
    s = start_stockd()
    try:
        with s.client() as c, s.client() as other:
            make_product(c, 10)
            key = new_key("same")
            body = {"sku": SKU, "qty": 3, "customerId": "alice"}
            first = c.post("/v1/purchase", body, key=key)
            check_status(first, 201, "first purchase")
            check_eq(on_hand(c), 7, "onHand after the first purchase")
            again = c.post("/v1/purchase", body, key=key)
            check_replay(first, again, "purchase replay on the same connection")
            check_eq(first.headers.get("location"), "/v1/orders/" + first.json["orderId"],
                     "Location of the first response")
            check_eq(again.headers.get("location"), first.headers.get("location"),
                     "Location of the replayed purchase")
            again = other.post("/v1/purchase", body, key=key)
            check_replay(first, again, "purchase replay on another connection")
            check_eq(on_hand(c), 7, "onHand after two replays (one sale only)")
            r = c.get("/v1/orders/ord_2")
            check_problem(r, 404, "unknown_order", "a replay created a second order")
            # Other commands replay too.
            for path, cmd, status in (
                    ("/v1/stores", {"storeId": "S2", "name": "Two"}, 201),
                    ("/v1/products", {"sku": "IDEM-2", "name": "Two", "initialOnHand": 4}, 201),
                    ("/v1/adjustments", {"storeId": "S1", "sku": SKU, "delta": 5,
                                         "reason": "restock"}, 200)):
                key = new_key("cmd")
                first = c.post(path, cmd, key=key)
                check_status(first, status, "first " + path)
                check_replay(first, other.post(path, cmd, key=key), "replay of " + path)
            check_eq(on_hand(c), 12, "the adjustment applied once")
            check_eq(on_hand(c, "IDEM-2"), 4, "the product was created once")
            # A problem is replayed as it was first answered.
            key = new_key("dup")
            first = c.post("/v1/stores", {"storeId": "S2", "name": "Two"}, key=key)
            check_problem(first, 409, "store_exists", "duplicate store")
            again = c.post("/v1/stores", {"storeId": "S2", "name": "Two"}, key=key)
            check_replay(first, again, "replay of a 409 store_exists")
    finally:
        s.stop()


def test_same_key_other_request():
    s = start_stockd()
    try:
        with s.client() as c:
            make_product(c, 10)
            key = new_key("reuse")
            body = {"sku": SKU, "qty": 1, "customerId": "bob"}
            first = c.post("/v1/purchase", body, key=key)
            check_status(first, 201, "first purchase")
            for what, path, other in (
                    ("another qty", "/v1/purchase", {"sku": SKU, "qty": 2, "customerId": "bob"}),
                    ("another customer", "/v1/purchase",
                     {"sku": SKU, "qty": 1, "customerId": "eve"}),
                    ("another path", "/v1/adjustments",
                     {"storeId": "S1", "sku": SKU, "delta": 1, "reason": "r"})):
                r = c.post(path, other, key=key)
                check_problem(r, 422, "idempotency_key_reused", "same key, " + what)
            # The same members in another order mean the same: a replay (test_reserialised_*).
            r = c.post("/v1/purchase", b'{"qty":1,"sku":"%s","customerId":"bob"}' % SKU.encode(),
                       key=key)
            check_replay(first, r, "reordered members replayed")
            check_eq(on_hand(c), 9, "only the first request applied")
            check_replay(first, c.post("/v1/purchase", body, key=key),
                         "the original request still replays after a 422")
            # A request refused before the writer (400) does not consume its key.
            key = new_key("valid-later")
            r = c.post("/v1/purchase", {"sku": SKU, "qty": "x", "customerId": "c"}, key=key)
            check_problem(r, 400, "validation_failed", "invalid qty")
            r = c.post("/v1/purchase", {"sku": SKU, "qty": 1, "customerId": "c"}, key=key)
            check_status(r, 201, "the key of a 400 is still free")
            check_eq(on_hand(c), 8, "onHand after the second sale")
    finally:
        s.stop()


def test_concurrent_same_key():
    s = start_stockd()
    try:
        with s.client() as c:
            make_product(c, 100)
        threads = 50
        qty = 3
        key = new_key("concurrent")
        body = {"sku": SKU, "qty": qty, "customerId": "racer"}
        barrier = threading.Barrier(threads, timeout=30)
        results = [None] * threads

        def worker(i):
            with s.client(timeout=30) as client:
                client.connect()
                barrier.wait()
                results[i] = client.post("/v1/purchase", body, key=key)

        run_threads(worker, threads, timeout=60)
        statuses = sorted(set(r.status for r in results))
        check_eq(statuses, [201], "statuses of 50 concurrent duplicates")
        bodies = set(r.body for r in results)
        check(len(bodies) == 1, "%d distinct bodies among 50 duplicates: %r"
              % (len(bodies), sorted(bodies)[:3]))
        fresh = [r for r in results if r.headers.get("idempotent-replayed") != "true"]
        check_eq(len(fresh), 1, "responses not marked replayed")
        order_id = results[0].json["orderId"]
        with s.client() as c:
            check_eq(on_hand(c), 100 - qty, "onHand after 50 duplicates of one purchase")
            check_status(c.get("/v1/orders/" + order_id), 200, "GET the one order")
            r = c.post("/v1/purchase", {"sku": SKU, "qty": 1, "customerId": "next"},
                       key=new_key())
            check_status(r, 201, "next purchase")
            check_eq(r.json["orderId"], "ord_%d" % (int(order_id[4:]) + 1),
                     "the next order number (no order was created by the duplicates)")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_replayed_409_stays_409():
    s = start_stockd()
    try:
        with s.client() as c:
            make_product(c, 2)
            key = new_key("sold-out")
            body = {"sku": SKU, "qty": 5, "customerId": "late"}
            first = c.post("/v1/purchase", body, key=key)
            problem = check_problem(first, 409, "insufficient_stock", "qty 5 of 2")
            check_eq(problem.get("available"), 2, "available in the 409")
            r = c.post("/v1/adjustments", {"storeId": "S1", "sku": SKU, "delta": 10,
                                           "reason": "restock"}, key=new_key())
            check_status(r, 200, "restock")
            again = c.post("/v1/purchase", body, key=key)
            check_replay(first, again, "409 replayed after restock")
            check_problem(again, 409, "insufficient_stock", "replayed 409")
            check_eq(on_hand(c), 12, "the replay sold nothing")
            r = c.post("/v1/purchase", body, key=new_key())
            check_status(r, 201, "the same purchase with a new key after restock")
            check_eq(on_hand(c), 7, "onHand after the new purchase")
    finally:
        s.stop()


def purchases(c, count, prefix, qty_of):
    """count purchases of SKU, each under a new key, of qty_of(i) units; each must answer 201.
    Returns [(key, body, response)] for replays."""
    done = []
    for i in range(count):
        key = new_key(prefix)
        body = {"sku": SKU, "qty": qty_of(i), "customerId": "%s-c%d" % (prefix, i)}
        r = c.post("/v1/purchase", body, key=key)
        check_status(r, 201, "%s purchase %d" % (prefix, i))
        done.append((key, body, r))
    return done


def test_keys_survive_restart():
    s = start_stockd()
    try:
        with s.client() as c:
            make_product(c, 20)
            firsts = purchases(c, 5, "restart", lambda i: i + 1)
            key = new_key("restart-409")
            body = {"sku": SKU, "qty": 100, "customerId": "big"}
            r = c.post("/v1/purchase", body, key=key)
            check_problem(r, 409, "insufficient_stock", "purchase of 100")
            firsts.append((key, body, r))
            check_eq(on_hand(c), 5, "onHand before restart")
        check_eq(s.stop(), 0, "exit code of a clean stop")
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            for key, body, first in firsts:
                again = c.post("/v1/purchase", body, key=key)
                check_replay(first, again, "replay after restart of key %s" % key)
            check_eq(on_hand(c), 5, "onHand after replays following a restart")
            key, body, first = firsts[0]
            changed = dict(body, qty=2)
            r = c.post("/v1/purchase", changed, key=key)
            check_problem(r, 422, "idempotency_key_reused", "reuse after restart")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_reserialised_body_replays():
    """The fingerprint is of the decoded command, not of the bytes: another key order,
    whitespace, escapes or a spelled-out default is the same request (a replay); another value,
    If-Match, line order of an array or route is another (422)."""
    s = start_stockd()
    try:
        with s.client() as c:
            make_product(c, 100)
            key = new_key("canon")
            first = c.post("/v1/purchase", b'{"sku":"%s","qty":2,"customerId":"bob"}'
                           % SKU.encode(), key=key)
            check_status(first, 201, "the first purchase")
            for what, body in (
                    ("key order", b'{"customerId":"bob","qty":2,"sku":"%s"}'),
                    ("whitespace", b' {\n  "sku" : "%s",\t"qty": 2 ,\r\n"customerId":"bob" }\n'),
                    ("escapes", b'{"sku":"%s","qty":2,"customerId":"\\u0062ob"}'),
                    ("the default policy spelled out",
                     b'{"sku":"%s","qty":2,"customerId":"bob","policy":"highest-available"}'),
                    ("an unknown member", b'{"sku":"%s","qty":2,"customerId":"bob","x":[1]}')):
                check_replay(first, c.post("/v1/purchase", body % SKU.encode(), key=key), what)
            for what, body, headers in (
                    ("another qty", b'{"customerId":"bob","qty":3,"sku":"%s"}', None),
                    ("another policy",
                     b'{"sku":"%s","qty":2,"customerId":"bob","policy":"round-robin"}', None)):
                r = c.post("/v1/purchase", body % SKU.encode(), key=key, headers=headers)
                check_problem(r, 422, "idempotency_key_reused", "same key, " + what)
            check_eq(on_hand(c), 98, "one purchase applied")
            # If-Match is part of a stock command's request.
            key = new_key("canon-if-match")
            adjust = {"storeId": "S1", "sku": SKU, "delta": 1, "reason": "r"}
            check_status(c.post("/v1/adjustments", adjust, key=key), 200, "an adjustment")
            r = c.post("/v1/adjustments", adjust, key=key, headers={"If-Match": '"1"'})
            check_problem(r, 422, "idempotency_key_reused", "the same key with an If-Match")
            # A reconciliation's snapshot is an object: member order carries no meaning.
            key = new_key("canon-rc")
            first = c.post("/v1/reconciliations", b'{"storeId":"S1","source":"scan",'
                           b'"snapshotOnHand":{"%s":90,"OTHER-1":0}}' % SKU.encode(), key=key)
            check(first.status in (200, 201, 404), "reconciliation: %s" % describe(first))
            again = c.post("/v1/reconciliations", b'{"snapshotOnHand":{"OTHER-1":0,"%s":90},'
                           b'"source":"scan","storeId":"S1"}' % SKU.encode(), key=key)
            check_replay(first, again, "snapshot members reordered")
            # The ticket alias and /v1/purchase are different routes: one key, two meanings.
            key = new_key("canon-route")
            check_status(c.post("/v1/purchase", {"sku": SKU, "qty": 1, "customerId": "a"},
                                key=key), 201, "purchase")
            r = c.post("/buy_ticket", {"customer_id": "a"}, key=key)
            check_problem(r, 422, "idempotency_key_reused", "the same key on /buy_ticket")
    finally:
        s.stop()


def fnv1a64(data):
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= (1 << 63) else h  # stored as a signed 64-bit integer


def test_records_of_older_versions_replay():
    """Versions before the canonical fingerprint stored FNV-1a of "POST <path>\n<body>": a
    retry across the upgrade with the same bytes still replays; other bytes are a 422."""
    s = start_stockd()
    body = b'{"sku":"%s","qty":1,"customerId":"old"}' % SKU.encode()
    key = new_key("legacy")
    try:
        with s.client() as c:
            make_product(c, 10)
            first = c.post("/v1/purchase", body, key=key)
            check_status(first, 201, "the purchase")
        s.stop()
        legacy = fnv1a64(b"POST /v1/purchase\n" + body)
        sql = ("UPDATE idempotency SET fingerprint = %d WHERE idem_key = '%s'" % (legacy, key))
        if s.pg_db:
            psql(sql, db=s.pg_db)
        else:
            db = sqlite3.connect(os.path.join(s.data_dir, "stockd.db"))
            with db:
                check_eq(db.execute(sql).rowcount, 1, "records rewritten")
            db.close()
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            check_replay(first, c.post("/v1/purchase", body, key=key), "the same bytes")
            r = c.post("/v1/purchase", b'{"qty":1,"sku":"%s","customerId":"old"}' % SKU.encode(),
                       key=key)
            check_problem(r, 422, "idempotency_key_reused", "other bytes of an old record")
            check_eq(on_hand(c), 9, "one purchase")
    finally:
        s.stop()


OLD_RECORDS = 10000  # more than two steps of the sweep (IDEM_PRUNE_ROWS_MAX, 4,096)


def stored_sql(s, sql):
    """Runs sql on the stopped or running server's database; the rows."""
    if s.pg_db:
        return psql(sql, db=s.pg_db)
    db = sqlite3.connect(os.path.join(s.data_dir, "stockd.db"), timeout=10)
    try:
        with db:
            return db.execute(sql).fetchall()
    finally:
        db.close()


def test_expired_records_are_pruned():
    """Past --idempotency-retention-hours the writer's sweep deletes a record (there is no
    index by age: it walks the table in steps): the old ones go, the recent ones still replay,
    and a key whose record went may be used for another request."""
    s = start_stockd()
    try:
        with s.client() as c:
            make_product(c, 10)
            firsts = purchases(c, 3, "prune", lambda i: 1)
        check_eq(s.stop(), 0, "exit code of a clean stop")
        old_ms = int(time.time() * 1000) - 2 * 3600 * 1000
        if s.pg_db:
            series = ("FROM generate_series(1, %d) i" % OLD_RECORDS, "lpad(i::text, 5, '0')")
            stored_sql(s, "INSERT INTO idempotency (principal, idem_key, fingerprint, status,"
                          " problem, body, created_at_ms) SELECT 'admin', 'old-' || %s, 0, 201,"
                          " 0, '{}', %d %s" % (series[1], old_ms, series[0]))
        else:
            stored_sql(s, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                          " WHERE i < %d) INSERT INTO idempotency (principal, idem_key,"
                          " fingerprint, status, problem, body, created_at_ms) SELECT 'admin',"
                          " printf('old-%%05d', i), 0, 201, 0, '{}', %d FROM n"
                          % (OLD_RECORDS, old_ms))
        aged_key, aged_body, _ = firsts[0]
        stored_sql(s, "UPDATE idempotency SET created_at_ms = %d WHERE idem_key = '%s'"
                      % (old_ms, aged_key))
        s = start_stockd(["--idempotency-retention-hours", "1"], data_dir=s.data_dir)

        def no_old_left():
            n = int(stored_sql(s, "SELECT count(*) FROM idempotency WHERE idem_key LIKE 'old-%%'"
                                  " OR idem_key = '%s'" % aged_key)[0][0])
            check_eq(n, 0, "expired records left")
        eventually(no_old_left, "the expired records deleted", 30)
        with s.client() as c:
            for key, body, first in firsts[1:]:
                check_replay(first, c.post("/v1/purchase", body, key=key), "a recent key")
            r = c.post("/v1/purchase", dict(aged_body, qty=2), key=aged_key)
            check_status(r, 201, "another request with the key of a pruned record")
            check_eq(on_hand(c), 5, "three purchases of 1, then one of 2")
        with open(s.log_path) as f:
            log = f.read()
        check("pruned %d expired idempotency records" % (OLD_RECORDS + 1) in log,
              "the sweep's log line (pruned %d): %s" % (OLD_RECORDS + 1, s.log_tail(10)))
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_same_key_same_body, test_same_key_other_request, test_concurrent_same_key,
          test_replayed_409_stays_409, test_keys_survive_restart, test_reserialised_body_replays,
          test_records_of_older_versions_replay, test_expired_records_are_pruned])
