"""Black-box tests of the operator's controls of checkout orders (issue 11, admin role):
GET /v1/admin/workers, POST /v1/admin/workers/{order|payment|expiry}:pause and :resume,
PUT /v1/admin/payment (the simulator's knobs at run time), PUT /v1/admin/read-only (every
command route 503 read_only with Retry-After, reads serve, /health and /metrics say so), and
seed 001's aliases of them. A paused stage moves no order; resumed, the orders finish. Both
backends."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main,  # noqa: E402
                     new_key, start_stockd)

WAIT_S = 30.0
# How long a paused stage is watched for not moving an order (a safety check, not a timing one:
# a running stage moves an order within milliseconds, so a paused one that leaked would show).
PAUSE_WATCH_S = 1.0


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def order(c, sku, qty=1, ttl=None):
    body = {"customerId": "cust-1", "lines": [{"sku": sku, "qty": qty}]}
    if ttl is not None:
        body["ttlSeconds"] = ttl
    r = c.post("/v1/orders", body, key=new_key())
    check_status(r, 201, "POST /v1/orders")
    return r.json["orderId"]


def put(c, path, body):
    return c.request("PUT", path, encode(body), {"Content-Type": "application/json"})


def encode(body):
    import json
    return json.dumps(body).encode()


def status_of(c, order_id):
    r = c.get("/v1/orders/" + order_id)
    check_status(r, 200, "GET " + order_id)
    return r.json["status"]


def wait_status(c, order_id, want):
    deadline = time.monotonic() + WAIT_S
    while True:
        s = status_of(c, order_id)
        if s in want:
            return s
        check(time.monotonic() < deadline, "%s still %s, want %s" % (order_id, s, want))
        time.sleep(0.05)


def stays(c, order_id, status):
    deadline = time.monotonic() + PAUSE_WATCH_S
    while time.monotonic() < deadline:
        check_eq(status_of(c, order_id), status, "%s while its stage is paused" % order_id)
        time.sleep(0.1)


def workers(c):
    r = c.get("/v1/admin/workers")
    check_status(r, 200, "GET /v1/admin/workers")
    return {w["stage"]: w for w in r.json["workers"]}


def test_pause_and_resume_stages():
    s = start_stockd()
    with s.client() as c:
        product(c, "P", 100)
        w = workers(c)
        check_eq(sorted(w), ["expiry", "order", "payment"], "stages")
        check(all(x["state"] == "running" for x in w.values()), repr(w))
        r = c.post("/v1/admin/workers/order:pause", b"", content_type=None)
        check_status(r, 200, "pause order")
        check_eq(r.json["state"], "paused", "pause answer")
        first = order(c, "P")
        stays(c, first, "PENDING")
        check_eq(workers(c)["order"]["state"], "paused", "listed paused")
        check(workers(c)["order"]["lag"] >= 1, "the paused stage lags")
        check_status(c.post("/v1/admin/workers/order:resume", b"", content_type=None), 200,
                     "resume order")
        wait_status(c, first, ("PAID",))
        # payment paused: the order is confirmed but not charged
        check_status(c.post("/v1/admin/workers/payment:pause", b"", content_type=None), 200,
                     "pause payment")
        second = order(c, "P")
        wait_status(c, second, ("CONFIRMED",))
        stays(c, second, "CONFIRMED")
        check_status(c.post("/v1/admin/workers/payment:resume", b"", content_type=None), 200,
                     "resume payment")
        wait_status(c, second, ("PAID",))
        w = workers(c)
        check(w["order"]["processed"] >= 2 and w["payment"]["processed"] >= 2, repr(w))
        check_problem(c.post("/v1/admin/workers/nope:pause", b"", content_type=None), 404,
                      "not_found", "unknown stage")
        # seed 001's aliases
        r = c.post("/admin/worker/order/pause", b"", content_type=None)
        check_status(r, 200, "seed pause order")
        third = order(c, "P")
        stays(c, third, "PENDING")
        check_status(c.post("/admin/worker/order/resume", b"", content_type=None), 200,
                     "seed resume order")
        wait_status(c, third, ("PAID",))
        check_status(c.post("/admin/worker/payment/pause", b"", content_type=None), 200,
                     "seed pause payment")
        check_eq(workers(c)["payment"]["state"], "paused", "seed alias paused payment")
        check_status(c.post("/admin/worker/payment/resume", b"", content_type=None), 200,
                     "seed resume payment")
        check_eq(workers(c)["payment"]["state"], "running", "seed alias resumed payment")
    with s.client(token=None) as anonymous:
        check_problem(anonymous.get("/v1/admin/workers"), 401, "unauthorized", "no token")
        check_problem(anonymous.post("/admin/worker/order/pause", b"", content_type=None), 401,
                      "unauthorized", "seed alias without a token")
    s.stop()


def test_expiry_pause():
    s = start_stockd()
    with s.client() as c:
        product(c, "E", 10)
        check_status(c.post("/v1/admin/workers/order:pause", b"", content_type=None), 200,
                     "pause order")
        check_status(c.post("/v1/admin/workers/expiry:pause", b"", content_type=None), 200,
                     "pause expiry")
        check_eq(workers(c)["expiry"]["state"], "paused", "expiry listed paused")
        o = order(c, "E", 3, ttl=1)
        time.sleep(1.5)  # past its TTL
        stays(c, o, "PENDING")
        r = c.get("/v1/availability?sku=E&storeId=S1")
        check_eq(r.json["reserved"], 3, "the hold is kept while expiry is paused")
        check_status(c.post("/v1/admin/workers/expiry:resume", b"", content_type=None), 200,
                     "resume expiry")
        wait_status(c, o, ("EXPIRED",))
        r = c.get("/v1/availability?sku=E&storeId=S1")
        check_eq(r.json["reserved"], 0, "released when it expired")
        check(workers(c)["expiry"]["processed"] >= 1, "expiry counted")
    s.stop()


def test_payment_knobs():
    s = start_stockd()
    with s.client() as c:
        product(c, "K", 100)
        r = put(c, "/v1/admin/payment", {"failureRate": 1.0, "latencyMs": 0, "timeoutRate": 0})
        check_status(r, 200, "PUT /v1/admin/payment")
        check_eq((r.json["failureRate"], r.json["latencyMs"], r.json["timeoutRate"]),
                 (1, 0, 0), "the new settings")
        o = order(c, "K", 2)
        wait_status(c, o, ("PAYMENT_FAILED",))
        r = c.get("/v1/availability?sku=K&storeId=S1")
        check_eq((r.json["onHand"], r.json["reserved"]), (100, 0), "stock restored")
        r = c.post("/admin/payment/failure-rate", {"rate": 0})
        check_status(r, 200, "seed failure-rate")
        check_eq(r.json["failureRate"], 0, "seed alias set the failure rate")
        o = order(c, "K", 2)
        wait_status(c, o, ("PAID",))
        for bad in ({"failureRate": 1.5}, {"timeoutRate": -0.1}, {"latencyMs": -1},
                    {"failureRate": "x"}, {"latencyMs": 10 ** 9}):
            check_problem(put(c, "/v1/admin/payment", bad), 400, "validation_failed", repr(bad))
        check_problem(c.post("/admin/payment/failure-rate", {"rate": 2}), 400,
                      "validation_failed", "seed rate out of range")
        check_problem(c.post("/admin/payment/failure-rate", {}), 400, "validation_failed",
                      "seed rate missing")
        r = put(c, "/v1/admin/payment", {"latencyMs": 5})
        check_eq((r.json["failureRate"], r.json["latencyMs"]), (0, 5), "absent members kept")
    s.stop()


def test_read_only():
    s = start_stockd()
    with s.client() as c:
        product(c, "R", 10)
        r = put(c, "/v1/admin/read-only", {"enabled": True})
        check_status(r, 200, "read-only on")
        check_eq(r.json, {"readOnly": True}, "answer")
        r = c.post("/v1/products", {"sku": "R2", "name": "x", "initialOnHand": 1}, key=new_key())
        check_problem(r, 503, "read_only", "a write while read-only")
        check(r.headers.get("retry-after") is not None, "Retry-After")
        r = c.post("/v1/orders", {"customerId": "c", "lines": [{"sku": "R", "qty": 1}]},
                   key=new_key())
        check_problem(r, 503, "read_only", "an order while read-only")
        check_problem(c.post("/purchase", {"sku": "R", "qty": 1, "customerId": "c"}), 503,
                      "read_only", "a seed write while read-only")
        check_status(c.get("/v1/availability?sku=R"), 200, "reads serve")
        check_status(c.get("/v1/admin/workers"), 200, "admin reads serve")
        r = c.get("/health")
        check_eq((r.json["status"], r.json["readOnly"]), ("ok", True), "/health: %s" % r.json)
        r = c.get("/metrics")
        check("stockd_read_only 1\n" in r.body.decode(), "metrics say read-only")
        check_problem(put(c, "/v1/admin/read-only", {"enabled": "yes"}), 400,
                      "validation_failed", "enabled must be a boolean")
        r = c.post("/admin/api/read-only/off", b"", content_type=None)
        check_status(r, 200, "seed read-only off")
        check_eq(r.json, {"readOnly": False}, "seed answer")
        check_status(c.post("/v1/products", {"sku": "R3", "name": "x", "initialOnHand": 1},
                            key=new_key()), 201, "writes again")
        check_status(c.post("/admin/api/read-only/on", b"", content_type=None), 200, "seed on")
        check_eq(c.get("/health").json["readOnly"], True, "seed on shows")
        check_status(put(c, "/v1/admin/read-only", {"enabled": False}), 200, "off")
        h = c.get("/health").json
        check(h["status"] == "ok" and "readOnly" not in h, "/health writable: %s" % h)
        r = c.get("/metrics")
        check("stockd_read_only 0\n" in r.body.decode(), "metrics say writable")
    s.stop()


if __name__ == "__main__":
    main([test_pause_and_resume_stages, test_expiry_pause, test_payment_knobs, test_read_only])
