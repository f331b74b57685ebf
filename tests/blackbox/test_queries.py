"""Black-box tests of the query routes served from the read model (issue 4): availability,
per-sku breakdown, product totals, stores, reservations, the event log, idempotency lookup,
projection status and rebuild, the SSE stream, ETag/304 and X-Projection-Lag-ms, and the same
answers after a rebuild and after a restart."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main, new_key,  # noqa: E402
                     run_threads, start_stockd)


def post_ok(c, path, body, status=201, key=None):
    r = c.post(path, body, key=key or new_key())
    check_status(r, status, "POST " + path)
    return r


def get_ok(c, path):
    r = c.get(path)
    check_status(r, 200, "GET " + path)
    check(r.headers.get("content-type", "").startswith("application/json"),
          "GET %s: content-type %r" % (path, r.headers.get("content-type")))
    check("etag" in r.headers, "GET %s: no ETag" % path)
    check_eq(r.headers.get("x-projection-lag-ms"), "0", "GET %s: X-Projection-Lag-ms" % path)
    return r


def seed_catalog(c):
    """Stores S1 (default), S2; products A-1 (S1 10, S2 5), B.2 (S2 7), Gizmo (S1 3)."""
    post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Two", "latencyMs": 5})
    post_ok(c, "/v1/products", {"sku": "A-1", "name": "Alpha", "initialOnHand": 10,
                                "storeId": "S1"})
    post_ok(c, "/v1/adjustments", {"storeId": "S2", "sku": "A-1", "delta": 5, "reason": "in"},
            status=200)
    post_ok(c, "/v1/products", {"sku": "B.2", "name": "Beta", "initialOnHand": 7,
                                "storeId": "S2"})
    post_ok(c, "/v1/products", {"sku": "gz", "name": "Gizmo", "initialOnHand": 3,
                                "storeId": "S1"})


def test_availability_etag():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            r = get_ok(c, "/v1/availability?sku=A-1")
            check_eq(r.json, {"sku": "A-1", "onHand": 15, "reserved": 0, "available": 15},
                     "global availability")
            etag = r.headers["etag"]
            r = c.get("/v1/availability?sku=A-1", headers={"If-None-Match": etag})
            check_status(r, 304, "If-None-Match with the current ETag")
            check_eq(r.body, b"", "304 body")
            r = get_ok(c, "/v1/availability?sku=A-1&storeId=S2")
            check_eq(r.json, {"sku": "A-1", "storeId": "S2", "onHand": 5, "reserved": 0,
                              "available": 5}, "per-store availability")
            post_ok(c, "/v1/purchase", {"sku": "A-1", "qty": 2, "customerId": "c1",
                                        "storeId": "S1"})
            r = c.get("/v1/availability?sku=A-1", headers={"If-None-Match": etag})
            check_status(r, 200, "If-None-Match with a stale ETag")
            check_eq(r.json["available"], 13, "available after a purchase (read-your-writes)")
            check(r.headers["etag"] != etag, "the ETag changes with the stock")
            check_problem(c.get("/v1/availability?sku=NOPE"), 404, "unknown_sku", "unknown sku")
            check_problem(c.get("/v1/availability?sku=A-1&storeId=S9"), 404, "unknown_store",
                          "unknown store")
            check_problem(c.get("/v1/availability"), 400, "validation_failed", "no sku")
    finally:
        s.stop()


def test_item_availability():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            r = get_ok(c, "/v1/items/A-1/availability")
            check_eq(r.json["sku"], "A-1", "sku")
            check_eq(r.json["total"], {"onHand": 15, "reserved": 0, "available": 15}, "total")
            stores = {row["storeId"]: row for row in r.json["stores"]}
            check_eq(sorted(stores), ["S1", "S2"], "stores stocking A-1")
            check_eq(stores["S1"], {"storeId": "S1", "onHand": 10, "reserved": 0,
                                    "available": 10, "version": 1}, "S1 row")
            check_eq(stores["S2"]["onHand"], 5, "S2 onHand")
            r2 = c.get("/v1/items/A-1/availability",
                       headers={"If-None-Match": r.headers["etag"]})
            check_status(r2, 304, "breakdown 304")
            check_problem(c.get("/v1/items/NOPE/availability"), 404, "unknown_sku", "unknown")
            check_problem(c.get("/v1/items/a%20b/availability"), 400, None, "bad sku")
    finally:
        s.stop()


def test_products_totals():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            r = get_ok(c, "/v1/products/totals")
            check_eq(r.json["total"], 3, "total products")
            check_eq((r.json["page"], r.json["size"]), (1, 50), "default page and size")
            by_sku = {row["sku"]: row for row in r.json["items"]}
            check_eq(by_sku["A-1"], {"sku": "A-1", "name": "Alpha", "onHand": 15,
                                     "reserved": 0, "available": 15}, "A-1 totals")
            r = get_ok(c, "/v1/products/totals?q=GIZ")
            check_eq([row["sku"] for row in r.json["items"]], ["gz"], "q matches a name")
            r = get_ok(c, "/v1/products/totals?q=b.2")
            check_eq([row["sku"] for row in r.json["items"]], ["B.2"], "q matches a sku")
            r = get_ok(c, "/v1/products/totals?page=2&size=2")
            check_eq((len(r.json["items"]), r.json["total"]), (1, 3), "second page of two")
            r = get_ok(c, "/v1/products/totals?page=3&size=2")
            check_eq(r.json["items"], [], "a page past the end is empty")
            for bad in ("page=0", "size=0", "size=201", "page=x", "size=-1"):
                check_problem(c.get("/v1/products/totals?" + bad), 400, "validation_failed",
                              "totals " + bad)
    finally:
        s.stop()


def test_stores_list():
    s = start_stockd()
    try:
        with s.client() as c:
            r = get_ok(c, "/v1/stores")
            check_eq(r.json, {"items": [{"storeId": "S1", "name": "Store 1", "latencyMs": 0}]},
                     "a fresh database has S1")
            etag = r.headers["etag"]
            post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Two", "latencyMs": 9})
            r = c.get("/v1/stores", headers={"If-None-Match": etag})
            check_status(r, 200, "stores after a new store")
            check_eq(r.json["items"][1], {"storeId": "S2", "name": "Two", "latencyMs": 9},
                     "the new store")
    finally:
        s.stop()


def test_reservation_lookup():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            r = c.post("/v1/reservations", {"storeId": "S1", "lines": [{"sku": "A-1", "qty": 2}],
                                            "ttlSeconds": 60, "customerId": "c9"},
                       key=new_key())
            check_status(r, 201, "create a reservation")
            rid = r.json["reservationId"]
            r = get_ok(c, "/v1/reservations/" + rid)
            check_eq((r.json["reservationId"], r.json["status"], r.json["storeId"]),
                     (rid, "ACTIVE", "S1"), "reservation")
            check_eq(r.json["lines"], [{"sku": "A-1", "qty": 2}], "lines")
            check_eq(r.json["customerId"], "c9", "customerId")
            etag = r.headers["etag"]
            check_eq(get_ok(c, "/v1/availability?sku=A-1&storeId=S1").json["reserved"], 2,
                     "reserved in the projection")
            r = c.post("/v1/reservations/%s:cancel" % rid, {"reason": "test"}, key=new_key())
            check_status(r, 200, "cancel")
            r = c.get("/v1/reservations/" + rid, headers={"If-None-Match": etag})
            check_status(r, 200, "the reservation changed")
            check_eq(r.json["status"], "CANCELLED", "status after cancel")
            check_problem(c.get("/v1/reservations/res_999999"), 404, "unknown_reservation",
                          "unknown reservation")
    finally:
        s.stop()


def test_events_paging():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            r = get_ok(c, "/v1/events")
            items = r.json["items"]
            check_eq([e["seq"] for e in items], list(range(1, len(items) + 1)), "seqs 1..n")
            check_eq(items[0]["eventType"], "StoreCreated", "first event")
            check_eq(r.json["nextSince"], items[-1]["seq"], "nextSince")
            for e in items:
                for member in ("seq", "eventType", "eventVersion", "occurredAt", "storeId",
                               "sku", "data"):
                    check(member in e, "event lacks %s: %r" % (member, e))
            r = get_ok(c, "/v1/events?since=1&limit=2")
            check_eq([e["seq"] for e in r.json["items"]], [2, 3], "since=1 limit=2")
            check_eq(r.json["nextSince"], 3, "nextSince of a page")
            r = get_ok(c, "/v1/events?since=%d" % items[-1]["seq"])
            check_eq((r.json["items"], r.json["nextSince"]), ([], items[-1]["seq"]),
                     "nothing after the end")
            r = get_ok(c, "/v1/events?sku=A-1")
            check(r.json["items"] and all(e["sku"] == "A-1" for e in r.json["items"]),
                  "sku filter")
            r = get_ok(c, "/v1/events?storeId=S2&sku=A-1")
            check_eq([e["eventType"] for e in r.json["items"]], ["StockAdjusted"],
                     "store and sku filter")
            r2 = c.get("/v1/events?storeId=S2&sku=A-1",
                       headers={"If-None-Match": r.headers["etag"]})
            check_status(r2, 304, "events 304")
            for bad in ("limit=0", "limit=1001", "since=-1", "since=x", "sku=a%20b"):
                check_problem(c.get("/v1/events?" + bad), 400, "validation_failed",
                              "events " + bad)
    finally:
        s.stop()


def test_idempotency_lookup():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            key = new_key("lookup")
            r = post_ok(c, "/v1/purchase", {"sku": "B.2", "qty": 1, "customerId": "c1"}, key=key)
            r2 = get_ok(c, "/v1/idempotency/" + key)
            check_eq(r2.json["key"], key, "key")
            check_eq(r2.json["status"], 201, "stored status")
            check_eq(r2.json["response"], r.json, "stored response")
            check("createdAt" in r2.json, "createdAt")
            check_problem(c.get("/v1/idempotency/never-used"), 404, "not_found", "unknown key")
    finally:
        s.stop()


def sse_open(s, headers=b""):
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n" +
                 s.auth_header() + headers + b"\r\n")
    return sock


def sse_read_until(sock, needle, timeout=10.0):
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        check(time.monotonic() < deadline, "SSE: %r not received; got %r" % (needle, data[-500:]))
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        check(chunk, "SSE: connection closed; got %r" % data[-500:])
        data += chunk
    return data


def test_stream():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            sock = sse_open(s)
            head = sse_read_until(sock, b": stockd stream")
            check(b"200 OK" in head and b"text/event-stream" in head, "SSE headers %r" % head)
            r = post_ok(c, "/v1/purchase", {"sku": "gz", "qty": 1, "customerId": "sse"})
            order_id = r.json["orderId"].encode()
            data = sse_read_until(sock, order_id)
            check(b"event: OrderCompleted" in data, "SSE event type: %r" % data)
            check(b"id: " in data, "SSE id line")
            sock.close()
            sock = sse_open(s, b"Last-Event-ID: 1\r\n")
            data = sse_read_until(sock, order_id)
            check(b"id: 2\n" in data and b"event: ProductCreated" not in data.split(b"id: 2")[0],
                  "replay starts after Last-Event-ID: %r" % data[:300])
            check(b"id: 1\n" not in data, "Last-Event-ID itself is not resent")
            sock.close()
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            sock.sendall(b"GET /v1/stream?since=0 HTTP/1.1\r\nHost: x\r\n" +
                         s.auth_header() + b"\r\n")
            data = sse_read_until(sock, order_id)
            check(b"id: 1\nevent: StoreCreated\n" in data, "?since=0 replays from seq 1")
            sock.close()
            with s.client(token=None) as nobody:
                check_problem(nobody.get("/v1/stream"), 401, None, "stream without a token")
            check_problem(c.get("/v1/stream?since=x"), 400, "validation_failed", "bad since")
    finally:
        s.stop()


def test_slow_stream_subscriber_is_dropped():
    """A subscriber that never reads is disconnected once its bounded buffer is full; writes
    go on at full speed and it can resume with Last-Event-ID."""
    s = start_stockd()
    try:
        with s.client() as c:
            post_ok(c, "/v1/products", {"sku": "X", "name": "X", "initialOnHand": 10 ** 9})
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", s.port))
        sock.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n" + s.auth_header() + b"\r\n")
        time.sleep(0.2)
        threads, per_thread = 8, 2500  # ~9 MB of SSE text: far above socket buffers + 256 KiB

        def writer(i):
            with s.client() as c:
                for _ in range(per_thread):
                    r = c.post("/v1/adjustments", {"storeId": "S1", "sku": "X", "delta": 1,
                                                   "reason": "r" * 200}, key=new_key())
                    check_status(r, 200, "adjustment while a subscriber stalls")

        run_threads(writer, threads, timeout=120)
        sock.settimeout(10)
        data = b""
        # Cut off one of two ways: fallen too far behind, the stream ends with its last chunk;
        # not drained within the write timeout (a slow sanitizer build writes for longer), the
        # connection is reset. Either way the client resumes after the last whole event.
        try:
            while not data.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(1 << 20)
                check(chunk, "the stream closed without its last chunk")
                data += chunk
        except ConnectionResetError:
            pass
        sock.close()
        whole = data[:data.rindex(b"\n\n")]  # up to the end of the last whole event
        last_id = int(whole[whole.rindex(b"id: ") + 4:].split(b"\n", 1)[0])
        total = threads * per_thread + 2
        check(last_id < total, "the stalled subscriber was cut off (last id %d of %d)"
              % (last_id, total))
        sock = sse_open(s, b"Last-Event-ID: %d\r\n" % last_id)
        resumed = sse_read_until(sock, b"id: %d\n" % (last_id + 1))
        check(b"id: %d\n" % last_id not in resumed, "resume starts after Last-Event-ID")
        sock.close()
    finally:
        s.stop()


def snapshot(c):
    """The answers of every projection query, to compare across rebuild and restart."""
    out = {}
    for path in ("/v1/products/totals?size=200", "/v1/stores", "/v1/items/A-1/availability",
                 "/v1/items/B.2/availability", "/v1/availability?sku=gz"):
        out[path] = get_ok(c, path).json
    status = get_ok(c, "/v1/projections/status").json
    out["counts"] = status["counts"]
    out["appliedSeq"] = status["appliedSeq"]
    check_eq(status["appliedSeq"], status["logSeq"], "appliedSeq caught up with logSeq")
    check_eq(status["lagMs"], 0, "lagMs")
    return out


def test_rebuild_and_restart():
    s = start_stockd()
    try:
        with s.client() as c:
            seed_catalog(c)
            post_ok(c, "/v1/purchase", {"sku": "A-1", "qty": 3, "customerId": "c1"})
            before = snapshot(c)
            r = c.post("/v1/projections/rebuild", b"", content_type=None)
            check(r.status in (200, 202), "rebuild: %d %r" % (r.status, r.body))
            deadline = time.monotonic() + 10
            while True:
                st = get_ok(c, "/v1/projections/status").json
                if not st["rebuilding"] and st["rebuiltAt"] is not None:
                    break
                check(time.monotonic() < deadline, "rebuild did not finish: %r" % st)
                time.sleep(0.05)
            check_eq(snapshot(c), before, "answers after a rebuild")
            post_ok(c, "/v1/purchase", {"sku": "A-1", "qty": 1, "customerId": "c2"})
            before = snapshot(c)
            with s.client(token=None) as anonymous:
                r = anonymous.post("/v1/projections/rebuild", b"", content_type=None)
                check_problem(r, 401, None, "rebuild without a token")
        s.stop()
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            check_eq(snapshot(c), before, "answers after a restart (replay)")
    finally:
        s.stop()


def test_rebuild_under_writes():
    """Events committed while a rebuild runs are not lost."""
    s = start_stockd()
    try:
        with s.client() as c:
            post_ok(c, "/v1/products", {"sku": "R", "name": "R", "initialOnHand": 100000})
            for i in range(200):
                post_ok(c, "/v1/adjustments", {"storeId": "S1", "sku": "R", "delta": 1,
                                               "reason": "r"}, status=200)
            with s.client() as admin:
                r = admin.post("/v1/projections/rebuild", b"", content_type=None)
                check(r.status in (200, 202), "rebuild started")
            for i in range(100):
                post_ok(c, "/v1/purchase", {"sku": "R", "qty": 1, "customerId": "w"})
            deadline = time.monotonic() + 10
            while get_ok(c, "/v1/projections/status").json["rebuilding"]:
                check(time.monotonic() < deadline, "rebuild did not finish")
                time.sleep(0.05)
            r = get_ok(c, "/v1/availability?sku=R")
            check_eq(r.json["onHand"], 100000 + 200 - 100, "onHand after rebuild under writes")
            st = get_ok(c, "/v1/projections/status").json
            check_eq(st["appliedSeq"], st["logSeq"], "caught up")
    finally:
        s.stop()


def test_roles_and_principals():
    """Reads need the read role, rebuild the admin role; idempotency records are per principal."""
    s = start_stockd(env={"STOCKD_TOKENS": "boss:admin:boss-secret,viewer:read:viewer-secret,"
                                           "alice:write:alice-secret"})
    try:
        with s.client(token="boss-secret") as boss, \
                s.client(token="viewer-secret") as viewer, \
                s.client(token="alice-secret") as alice, s.client(token=None) as nobody:
            post_ok(boss, "/v1/products", {"sku": "P", "name": "P", "initialOnHand": 5})
            check_status(viewer.get("/v1/products/totals"), 200, "read role reads totals")
            check_problem(nobody.get("/v1/products/totals"), 401, None, "totals without token")
            check_problem(nobody.get("/v1/events"), 401, None, "events without token")
            r = viewer.post("/v1/projections/rebuild", b"", content_type=None)
            check_problem(r, 403, None, "rebuild with the read role")
            r = alice.post("/v1/projections/rebuild", b"", content_type=None)
            check_problem(r, 403, None, "rebuild with the write role")
            check(boss.post("/v1/projections/rebuild", b"", content_type=None).status
                  in (200, 202), "rebuild with the admin role")
            key = new_key("mine")
            post_ok(alice, "/v1/purchase", {"sku": "P", "qty": 1, "customerId": "a"}, key=key)
            check_eq(get_ok(alice, "/v1/idempotency/" + key).json["status"], 201,
                     "the principal sees its own record")
            check_problem(boss.get("/v1/idempotency/" + key), 404, "not_found",
                          "another principal does not see it")
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_availability_etag, test_item_availability, test_products_totals,
          test_stores_list, test_reservation_lookup, test_events_paging,
          test_idempotency_lookup, test_stream, test_slow_stream_subscriber_is_dropped,
          test_rebuild_and_restart,
          test_rebuild_under_writes, test_roles_and_principals])
