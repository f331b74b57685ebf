"""Black-box tests of every stockd route: happy paths and the documented errors
(DESIGN.md "HTTP API (v1)"), plus state surviving a clean restart."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main, new_key,  # noqa: E402
                     start_stockd)


def post_ok(c, path, body, status, what):
    r = c.post(path, body, key=new_key())
    check_status(r, status, what)
    check(r.headers.get("content-type", "").startswith("application/json"),
          "%s: content-type %r" % (what, r.headers.get("content-type")))
    check(isinstance(r.json, dict), "%s: body is not a JSON object: %r" % (what, r.body))
    return r


def availability(c, sku, store=None):
    path = "/v1/availability?sku=" + sku + ("&storeId=" + store if store else "")
    r = c.get(path)
    check_status(r, 200, "GET " + path)
    return r.json


def test_stores():
    s = start_stockd()
    try:
        with s.client() as c:
            r = post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Two", "latencyMs": 40}, 201,
                        "create store S2")
            check_eq(r.json, {"storeId": "S2", "name": "Two", "latencyMs": 40}, "store body")
            r = post_ok(c, "/v1/stores", {"storeId": "S3", "name": "Three"}, 201,
                        "create store S3 without latency")
            check_eq(r.json.get("latencyMs"), 0, "default latencyMs")
            r = c.post("/v1/stores", {"storeId": "S2", "name": "Again"}, key=new_key())
            check_problem(r, 409, "store_exists", "duplicate store S2")
            r = c.post("/v1/stores", {"storeId": "S1", "name": "Default"}, key=new_key())
            check_problem(r, 409, "store_exists", "the default store S1 exists")
            r = c.post("/v1/stores", {"name": "no id"}, key=new_key())
            check_problem(r, 400, None, "store without storeId")
    finally:
        s.stop()


def test_products():
    s = start_stockd()
    try:
        with s.client() as c:
            post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Two"}, 201, "store S2")
            post_ok(c, "/v1/stores", {"storeId": "S3", "name": "Three"}, 201, "store S3")
            r = post_ok(c, "/v1/products",
                        {"sku": "A-1", "name": "Alpha", "initialOnHand": 100, "storeId": "S1"},
                        201, "product A-1 in S1")
            check_eq(r.json, {"sku": "A-1", "name": "Alpha", "storeId": "S1", "onHand": 100},
                     "product body")
            r = post_ok(c, "/v1/products",
                        {"sku": "B.2", "name": "Beta", "initialOnHand": 50, "storeId": "S2"},
                        201, "product B.2 in S2")
            check_eq(r.json["storeId"], "S2", "explicit storeId")
            # Totals now S1=100, S2=50, S3=0: no storeId goes to S3.
            r = post_ok(c, "/v1/products", {"sku": "C_3", "name": "Gamma", "initialOnHand": 60},
                        201, "product C_3 without storeId")
            check_eq(r.json["storeId"], "S3", "lowest-stock store (S1=100,S2=50,S3=0)")
            check_eq(r.json["onHand"], 60, "onHand of C_3")
            # Totals S1=100, S2=50, S3=60: next goes to S2.
            r = post_ok(c, "/v1/products", {"sku": "D", "name": "Delta", "initialOnHand": 5},
                        201, "product D without storeId")
            check_eq(r.json["storeId"], "S2", "lowest-stock store (S1=100,S2=50,S3=60)")
            r = post_ok(c, "/v1/products", {"sku": "E", "name": "No stock", "storeId": "S1"},
                        201, "product without initialOnHand")
            check_eq(r.json["onHand"], 0, "default initialOnHand")
            r = c.post("/v1/products", {"sku": "A-1", "name": "Again", "initialOnHand": 1},
                       key=new_key())
            check_problem(r, 409, "product_exists", "duplicate sku")
            r = c.post("/v1/products", {"sku": "Z", "name": "Zeta", "storeId": "NOPE"},
                       key=new_key())
            check_problem(r, 404, "unknown_store", "product in unknown store")
            check_eq(availability(c, "A-1"),
                     {"sku": "A-1", "onHand": 100, "reserved": 0, "available": 100},
                     "availability of a new product")
            r = c.get("/v1/availability?sku=Z")
            check_problem(r, 404, "unknown_sku", "the refused product was not created")
    finally:
        s.stop()


def make_policy_fixture(c):
    """Stores S2 (latency 50) and S3 (latency 5); sku P stocked S2=30, S3=20, not in S1."""
    post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Far", "latencyMs": 50}, 201, "S2")
    post_ok(c, "/v1/stores", {"storeId": "S3", "name": "Near", "latencyMs": 5}, 201, "S3")
    post_ok(c, "/v1/products", {"sku": "P", "name": "Pol", "initialOnHand": 30, "storeId": "S2"},
            201, "product P in S2")
    r = post_ok(c, "/v1/adjustments", {"storeId": "S3", "sku": "P", "delta": 20, "reason": "in"},
                200, "stock P into S3")
    check_eq(r.json["onHand"], 20, "P in S3 after adjustment")


def purchase(c, body, status=201, what="purchase"):
    r = c.post("/v1/purchase", body, key=new_key())
    check_status(r, status, what)
    return r


def test_purchase_and_policies():
    s = start_stockd()
    try:
        with s.client() as c:
            make_policy_fixture(c)
            # Default policy: highest available (S2 has 30, S3 has 20).
            r = purchase(c, {"sku": "P", "qty": 2, "customerId": "cust-1"})
            order_id = r.json.get("orderId", "")
            check(order_id.startswith("ord_"), "orderId %r" % order_id)
            check_eq(r.json, {"orderId": order_id, "status": "COMPLETED", "sku": "P", "qty": 2,
                              "storeId": "S2", "available": 28}, "purchase body (default policy)")
            check_eq(r.headers.get("location"), "/v1/orders/" + order_id, "Location header")
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "policy":
                             "highest-available"})
            check_eq(r.json["storeId"], "S2", "highest-available picks S2 (28 vs 20)")
            # Lowest latency among stores that have enough: S3 (5 ms) over S2 (50 ms).
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "policy": "lowest-latency"})
            check_eq(r.json["storeId"], "S3", "lowest-latency picks S3")
            check_eq(r.json["available"], 19, "available in S3 after lowest-latency purchase")
            # S3 has 19 < 25: the faster store cannot serve, S2 (27) can.
            r = purchase(c, {"sku": "P", "qty": 25, "customerId": "c", "policy":
                             "lowest-latency"})
            check_eq(r.json["storeId"], "S2", "lowest-latency skips a store without enough")
            # Now S2=2, S3=19. Round-robin rotates over the stores that have enough.
            picks = [purchase(c, {"sku": "P", "qty": 1, "customerId": "c",
                                  "policy": "round-robin"}).json["storeId"] for _ in range(4)]
            check(set(picks) == {"S2", "S3"}, "round-robin used %r, want both S2 and S3" % picks)
            check(all(picks[i] != picks[i + 1] for i in range(3)),
                  "round-robin picks do not alternate: %r" % picks)
            # S2 is now 0: round-robin keeps selling from S3 only.
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "policy": "round-robin"})
            check_eq(r.json["storeId"], "S3", "round-robin skips an empty store")
            s3 = availability(c, "P", "S3")["available"]
            check_eq(availability(c, "P", "S2")["available"], 0, "S2 sold out")
            # Explicit store.
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "storeId": "S3"})
            check_eq(r.json["storeId"], "S3", "explicit storeId")
            check_eq(r.json["available"], s3 - 1, "available after explicit purchase")
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "storeId": "S2"}, 409,
                         "explicit empty store")
            body = check_problem(r, 409, "insufficient_stock", "explicit empty store")
            check_eq(body.get("available"), 0, "available of the empty store")
            r = purchase(c, {"sku": "P", "qty": 1000, "customerId": "c"}, 409, "too much")
            body = check_problem(r, 409, "insufficient_stock", "qty above stock")
            check_eq(body.get("available"), s3 - 1, "available reported with insufficient_stock")
            r = purchase(c, {"sku": "NOPE", "qty": 1, "customerId": "c"}, 404, "unknown sku")
            check_problem(r, 404, "unknown_sku", "purchase of unknown sku")
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "storeId": "S9"}, 404,
                         "unknown store")
            check_problem(r, 404, "unknown_store", "purchase in unknown store")
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "policy": "cheapest"}, 400,
                         "unknown policy")
            check_problem(r, 400, None, "unknown policy")
            # Global availability is the sum over stores: 50 - 2 - 1 - 1 - 25 - 4 - 1 - 1.
            total = availability(c, "P")
            check_eq(total, {"sku": "P", "onHand": 15, "reserved": 0, "available": 15},
                     "global availability after the purchases")
            check_eq(availability(c, "P", "S3")["onHand"], 15, "S3 holds all that is left")
    finally:
        s.stop()


def test_adjustments():
    s = start_stockd()
    try:
        with s.client() as c:
            post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Two"}, 201, "store S2")
            post_ok(c, "/v1/products", {"sku": "ADJ", "name": "Adj", "initialOnHand": 10,
                                        "storeId": "S1"}, 201, "product")
            r = post_ok(c, "/v1/adjustments",
                        {"storeId": "S1", "sku": "ADJ", "delta": 5, "reason": "restock"}, 200,
                        "adjust +5")
            check_eq(r.json, {"storeId": "S1", "sku": "ADJ", "onHand": 15, "reserved": 0,
                              "available": 15, "version": 2}, "adjustment body")
            r = post_ok(c, "/v1/adjustments",
                        {"storeId": "S1", "sku": "ADJ", "delta": -15, "reason": "shrink"}, 200,
                        "adjust to exactly 0")
            check_eq((r.json["onHand"], r.json["version"]), (0, 3), "onHand/version at 0")
            r = c.post("/v1/adjustments",
                       {"storeId": "S1", "sku": "ADJ", "delta": -1, "reason": "x"},
                       key=new_key())
            check_problem(r, 409, "insufficient_stock", "adjust below 0")
            check_eq(availability(c, "ADJ")["onHand"], 0, "refused adjustment changed nothing")
            r = post_ok(c, "/v1/adjustments",
                        {"storeId": "S2", "sku": "ADJ", "delta": 7, "reason": "new store"}, 200,
                        "adjust into a store without the item")
            check_eq((r.json["storeId"], r.json["onHand"], r.json["version"]), ("S2", 7, 1),
                     "item created by adjustment")
            check_eq(availability(c, "ADJ")["onHand"], 7, "global onHand")
            r = c.post("/v1/adjustments",
                       {"storeId": "S9", "sku": "ADJ", "delta": 1, "reason": "x"}, key=new_key())
            check_problem(r, 404, "unknown_store", "adjust unknown store")
            r = c.post("/v1/adjustments",
                       {"storeId": "S1", "sku": "NOPE", "delta": 1, "reason": "x"},
                       key=new_key())
            check_problem(r, 404, "unknown_sku", "adjust unknown sku")
            r = c.post("/v1/adjustments", {"storeId": "S1", "sku": "ADJ", "delta": 0,
                                           "reason": "x"}, key=new_key())
            check_problem(r, 400, None, "delta 0")
            # Optimistic concurrency (DESIGN.md): If-Match with a stale version -> 409.
            r = post_ok(c, "/v1/adjustments", {"storeId": "S2", "sku": "ADJ", "delta": 1,
                                               "reason": "if-match"}, 200, "adjust S2")
            version = r.json["version"]
            r = c.post("/v1/adjustments", {"storeId": "S2", "sku": "ADJ", "delta": 1,
                                           "reason": "if-match"}, key=new_key(),
                       headers={"If-Match": '"%d"' % version})
            check_status(r, 200, "If-Match with the current version")
            check_eq(r.json["version"], version + 1, "version after the If-Match adjustment")
            r = c.post("/v1/adjustments", {"storeId": "S2", "sku": "ADJ", "delta": 1,
                                           "reason": "stale"}, key=new_key(),
                       headers={"If-Match": '"%d"' % version})
            body = check_problem(r, 409, "version_conflict", "stale If-Match")
            check_eq(body.get("currentVersion"), version + 1, "currentVersion")
            r = c.post("/v1/adjustments", {"storeId": "S2", "sku": "ADJ", "delta": 1,
                                           "reason": "bad"}, key=new_key(),
                       headers={"If-Match": "soon"})
            check_problem(r, 400, "validation_failed", "malformed If-Match")
    finally:
        s.stop()


def test_availability():
    s = start_stockd()
    try:
        with s.client() as c:
            post_ok(c, "/v1/stores", {"storeId": "S2", "name": "Two"}, 201, "store S2")
            post_ok(c, "/v1/products", {"sku": "AV", "name": "Av", "initialOnHand": 10,
                                        "storeId": "S1"}, 201, "product")
            post_ok(c, "/v1/adjustments", {"storeId": "S2", "sku": "AV", "delta": 32,
                                           "reason": "in"}, 200, "stock S2")
            r = c.get("/v1/availability?sku=AV")
            check_status(r, 200, "global availability")
            check_eq(r.json, {"sku": "AV", "onHand": 42, "reserved": 0, "available": 42},
                     "global availability")
            check("x-projection-lag-ms" in r.headers, "no X-Projection-Lag-ms header")
            check(r.headers["x-projection-lag-ms"].isdigit(), "X-Projection-Lag-ms not a number")
            etag = r.headers.get("etag")
            check(etag and etag.startswith('"') and etag.endswith('"'), "ETag %r" % etag)
            r = c.get("/v1/availability?sku=AV&storeId=S2")
            check_eq(r.json, {"sku": "AV", "storeId": "S2", "onHand": 32, "reserved": 0,
                              "available": 32}, "per-store availability")
            check_eq(availability(c, "AV", "S1")["onHand"], 10, "S1 availability")
            r = c.get("/v1/availability?sku=AV", headers={"If-None-Match": etag})
            check_status(r, 304, "If-None-Match with the current ETag")
            check_eq(r.body, b"", "304 body")
            check_eq(r.headers.get("etag"), etag, "ETag on 304")
            purchase(c, {"sku": "AV", "qty": 1, "customerId": "c"})
            r = c.get("/v1/availability?sku=AV", headers={"If-None-Match": etag})
            check_status(r, 200, "If-None-Match with a stale ETag")
            check_eq(r.json["onHand"], 41, "onHand after a purchase")
            check(r.headers.get("etag") != etag, "ETag did not change after a purchase")
            r = c.get("/v1/availability")
            check_problem(r, 400, None, "availability without sku")
            r = c.get("/v1/availability?storeId=S1")
            check_problem(r, 400, None, "availability with storeId but no sku")
            r = c.get("/v1/availability?sku=NOPE")
            check_problem(r, 404, "unknown_sku", "availability of unknown sku")
            r = c.get("/v1/availability?sku=AV&storeId=S9")
            check_problem(r, 404, "unknown_store", "availability in unknown store")
    finally:
        s.stop()


def test_orders():
    s = start_stockd()
    try:
        with s.client() as c:
            post_ok(c, "/v1/products", {"sku": "ORD", "name": "Ord", "initialOnHand": 9}, 201,
                    "product")
            r = purchase(c, {"sku": "ORD", "qty": 3, "customerId": "alice"})
            order_id = r.json["orderId"]
            r = c.get(r.headers["location"])
            check_status(r, 200, "GET the Location of a purchase")
            o = r.json
            check_eq(o.get("orderId"), order_id, "orderId")
            check_eq(o.get("customerId"), "alice", "customerId")
            check_eq(o.get("storeId"), "S1", "storeId")
            check_eq(o.get("status"), "COMPLETED", "status")
            check_eq(o.get("lines"), [{"sku": "ORD", "qty": 3}], "lines")
            history = o.get("history")
            check(isinstance(history, list) and len(history) >= 1, "history %r" % history)
            check_eq(history[-1].get("status"), "COMPLETED", "last history status")
            check(isinstance(history[-1].get("at"), str) and history[-1]["at"],
                  "history entry without at")
            r2 = purchase(c, {"sku": "ORD", "qty": 1, "customerId": "bob"})
            check(r2.json["orderId"] != order_id, "two purchases got one orderId")
            check_eq(c.get("/v1/orders/" + r2.json["orderId"]).json.get("customerId"), "bob",
                     "second order")
            for bad in ("ord_999999", "ord_0", "nope", "ord_x", "ord_"):
                r = c.get("/v1/orders/" + bad)
                check_problem(r, 404, "unknown_order", "GET /v1/orders/" + bad)
    finally:
        s.stop()


def test_ops_routes():
    s = start_stockd()
    try:
        with s.client() as c:
            r = c.get("/health")
            check_status(r, 200, "/health")
            check_eq(r.json["status"], "ok", "/health status")
            check_eq(sorted(r.json["checks"]), ["payment", "projection", "storage", "writer"],
                     "/health checks")
            check("relay" not in r.json and "readOnly" not in r.json, "/health: %s" % r.json)
            r = c.get("/ready")
            check_status(r, 200, "/ready")
            check_eq(r.json.get("status"), "ready", "/ready body")
            post_ok(c, "/v1/products", {"sku": "M", "name": "M", "initialOnHand": 1}, 201,
                    "product (one batch)")
            r = c.get("/metrics")
            check_status(r, 200, "/metrics")
            check(r.headers.get("content-type", "").startswith("text/plain"),
                  "/metrics content-type %r" % r.headers.get("content-type"))
            text = r.body.decode()
            check("stockd_writer_batches_total" in text, "no stockd_writer_batches_total")
            batches = [line for line in text.splitlines()
                       if line.startswith("stockd_writer_batches_total ")]
            check(len(batches) == 1 and int(batches[0].split()[1]) >= 1,
                  "stockd_writer_batches_total after one command: %r" % batches)
            r = c.get("/no/such/path")
            check_problem(r, 404, "not_found", "unknown path")
            r = c.post("/v1/nothing", {"a": 1}, key=new_key())
            check_problem(r, 404, "not_found", "POST to an unknown path")
            r = c.get("/v1/purchase")
            check_problem(r, 405, "method_not_allowed", "GET /v1/purchase")
            check_eq(r.headers.get("allow"), "POST", "Allow header")
            r = c.request("DELETE", "/health")
            check_problem(r, 405, "method_not_allowed", "DELETE /health")
            r = c.post("/health", {}, key=new_key())
            check_problem(r, 405, "method_not_allowed", "POST /health")
            r = c.get("/health", headers={"X-Trace-Id": "trace-abc"})
            check_eq(r.headers.get("x-trace-id"), "trace-abc", "X-Trace-Id echoed")
            r = c.get("/health")
            check(r.headers.get("x-trace-id"), "X-Trace-Id generated when absent")
    finally:
        s.stop()


def test_text_round_trip():
    """Names and customer ids with quotes, backslashes, control characters and non-ASCII come
    back exactly, at the longest lengths allowed (every character escaped as \\u00XX)."""
    weird = 'Jos\u00e9 "q" \\ \n\t\u0001 \u20ac \U0001F600 </script>'
    control = "\u0001"
    s = start_stockd()
    try:
        with s.client() as c:
            for name in (weird, control * 200):
                sid = "T%d" % len(name)
                r = post_ok(c, "/v1/stores", {"storeId": sid, "name": name}, 201, "store name")
                check_eq(r.json["name"], name, "store name round trip")
            long_sku = "P" * 64
            long_store = "S" * 64
            post_ok(c, "/v1/stores", {"storeId": long_store, "name": "Long",
                                      "latencyMs": 3600000}, 201, "64-char storeId")
            r = post_ok(c, "/v1/products", {"sku": long_sku, "name": control * 200,
                                            "initialOnHand": 1000000000, "storeId": long_store},
                        201, "64-char sku, 200-char name, 1e9 units")
            check_eq(r.json["name"], control * 200, "product name round trip")
            for customer in (weird, control * 128):
                r = c.post("/v1/purchase", {"sku": long_sku, "qty": 1000000000 // 4,
                                            "customerId": customer, "storeId": long_store},
                           key="k" * 255)
                if r.status == 422:  # the second customer reuses the 255-char key on purpose
                    check_problem(r, 422, "idempotency_key_reused", "reused 255-char key")
                    r = purchase(c, {"sku": long_sku, "qty": 1, "customerId": customer})
                check_status(r, 201, "purchase with customerId %r" % customer[:10])
                o = c.get("/v1/orders/" + r.json["orderId"]).json
                check_eq(o["customerId"], customer, "customerId round trip")
            r = post_ok(c, "/v1/adjustments", {"storeId": long_store, "sku": long_sku,
                                               "delta": -1, "reason": control * 200}, 200,
                        "adjustment with a 200-char reason")
            check_eq(r.json["onHand"], 1000000000 - 1000000000 // 4 - 2, "onHand")
    finally:
        s.stop()


def test_store_capacity():
    """The store table is fixed (32 stores): the next store is refused with a problem, and the
    server keeps working."""
    s = start_stockd()
    try:
        with s.client() as c:
            created = 1  # S1
            while True:
                r = c.post("/v1/stores", {"storeId": "C%d" % created, "name": "c"},
                           key=new_key())
                if r.status != 201:
                    break
                created += 1
                check(created <= 64, "more than 64 stores accepted")
            body = check_problem(r, 507, "capacity_exceeded", "one store too many")
            check("exists" not in body.get("detail", ""),
                  "capacity problem says the store exists: %r" % body)
            check_eq(created, 32, "stores accepted")
            post_ok(c, "/v1/products", {"sku": "CAP", "name": "c", "initialOnHand": 3,
                                        "storeId": "C31"}, 201, "product in the last store")
            check_eq(availability(c, "CAP", "C31")["onHand"], 3, "stock in the last store")
    finally:
        s.stop()


def test_restart_keeps_state():
    s = start_stockd()
    try:
        with s.client() as c:
            make_policy_fixture(c)
            orders = {}
            for i in range(5):
                r = purchase(c, {"sku": "P", "qty": i + 1, "customerId": "r%d" % i,
                                 "policy": "round-robin"})
                orders[r.json["orderId"]] = c.get("/v1/orders/" + r.json["orderId"]).body
            before = {q: c.get("/v1/availability?sku=P" + q).body
                      for q in ("", "&storeId=S2", "&storeId=S3")}
        check_eq(s.stop(), 0, "exit code of a clean stop")
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            for q, body in before.items():
                check_eq(c.get("/v1/availability?sku=P" + q).body, body,
                         "availability%s after restart" % q)
            for order_id, body in orders.items():
                check_eq(c.get("/v1/orders/" + order_id).body, body,
                         "order %s after restart" % order_id)
            r = c.post("/v1/stores", {"storeId": "S3", "name": "again"}, key=new_key())
            check_problem(r, 409, "store_exists", "store S3 after restart")
            r = c.post("/v1/products", {"sku": "P", "name": "again"}, key=new_key())
            check_problem(r, 409, "product_exists", "product P after restart")
            # The store's latency survived: lowest-latency still prefers S3.
            r = purchase(c, {"sku": "P", "qty": 1, "customerId": "c", "policy":
                             "lowest-latency"})
            check_eq(r.json["storeId"], "S3", "lowest-latency after restart")
            check(r.json["orderId"] not in orders, "an order id was reused after restart")
            check_eq(int(r.json["orderId"][4:]), max(int(o[4:]) for o in orders) + 1,
                     "order numbering continues after restart")
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_stores, test_products, test_purchase_and_policies, test_adjustments,
          test_availability, test_orders, test_ops_routes, test_text_round_trip,
          test_store_capacity, test_restart_keeps_state])
