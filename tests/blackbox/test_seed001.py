"""Black-box tests of the seed-compatible routes of checkout orders (issue 11): seed 001's
POST /orders {userId, items:[{productId, quantity}]} with Idempotency-Key (the same order as
POST /v1/orders), GET /orders/:orderId {orderId, status, items, history} and
GET /inventory/:productId {productId, available, reserved, onHand}, and seed 000's
POST /purchase {sku, qty, customerId} (the v1 purchase). The seeds' clients send no token:
stockd runs with --anonymous-role write, and the aliases need the role of their /v1 route.
Seed 004's GET /inventory (no id) keeps working beside GET /inventory/:productId. Both
backends."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main,  # noqa: E402
                     new_key, start_stockd)

SEED_ARGS = ["--anonymous-role", "write", "--allow-reset"]
WAIT_S = 30.0


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def wait_status(c, path, want):
    deadline = time.monotonic() + WAIT_S
    while True:
        r = c.get(path)
        check_status(r, 200, "GET " + path)
        if r.json["status"] in want:
            return r.json
        check(time.monotonic() < deadline, "%s still %s" % (path, r.json["status"]))
        time.sleep(0.05)


def test_seed001_order_flow():
    s = start_stockd(SEED_ARGS)
    with s.client() as admin, s.client(token=None) as c:
        product(admin, "kapil", 10)
        r = c.get("/inventory/kapil")
        check_status(r, 200, "GET /inventory/kapil")
        check_eq(r.json, {"productId": "kapil", "available": 10, "reserved": 0, "onHand": 10},
                 "inventory before")
        key = new_key("seed001")
        body = {"userId": "user-1", "items": [{"productId": "kapil", "quantity": 2}]}
        r = c.post("/orders", body, key=key)
        check_status(r, 201, "POST /orders")
        order_id = r.json["orderId"]
        check(order_id.startswith("ord_"), repr(r.json))
        check_eq(r.json["status"], "PENDING", "status at creation")
        again = c.post("/orders", body, key=key)
        check_status(again, 201, "POST /orders replayed")
        check_eq(again.json["orderId"], order_id, "the same key gives the same order")
        check_eq(again.headers.get("idempotent-replayed"), "true", "replay header")
        o = wait_status(c, "/orders/" + order_id, ("PAID",))
        check_eq(o["orderId"], order_id, "orderId")
        check_eq(o["items"], [{"productId": "kapil", "quantity": 2}], "items")
        check_eq(o["userId"], "user-1", "userId")
        check_eq([h["status"] for h in o["history"]], ["PENDING", "CONFIRMED", "PAID"], "history")
        v1 = admin.get("/v1/orders/" + order_id)
        check_status(v1, 200, "GET /v1/orders")
        check_eq(v1.json["status"], "PAID", "the same order under /v1")
        r = c.get("/inventory/kapil")
        check_status(r, 200, "GET /inventory/kapil after")
        check_eq(r.json, {"productId": "kapil", "available": 8, "reserved": 0, "onHand": 8},
                 "inventory after")
        check_problem(c.get("/inventory/nope"), 404, "unknown_sku", "unknown product")
        check_problem(c.get("/orders/ord_999999"), 404, "unknown_order", "unknown order")
        check_problem(c.get("/orders/xyz"), 404, "unknown_order", "malformed order id")
        check_problem(c.post("/orders", {"userId": "u", "items": [{"productId": "kapil"}]},
                             key=new_key()), 400, "validation_failed", "no quantity")
        check_problem(c.post("/orders", {"userId": "u", "items": []}, key=new_key()), 400,
                      "validation_failed", "no items")
        check_problem(c.post("/orders", body | {"items": [{"productId": "kapil",
                                                             "quantity": 99}]},
                             key=new_key()), 409, "insufficient_stock", "too many")
    s.stop()


def test_seed004_inventory_still_served():
    s = start_stockd(SEED_ARGS)
    with s.client(token=None) as c:
        check_status(c.post("/reset", {}), 200, "POST /reset")
        r = c.get("/inventory")
        check_status(r, 200, "GET /inventory (seed 004)")
        check("current_stock" in r.json, repr(r.json))
        r = c.get("/inventory/" + r.json["sku"])
        check_status(r, 200, "GET /inventory/:productId of the ticket")
        check_eq(r.json["onHand"], 100, "ticket onHand")
    s.stop()


def test_seed000_purchase():
    s = start_stockd(SEED_ARGS)
    with s.client() as admin, s.client(token=None) as c:
        product(admin, "SKU-0", 5)
        r = c.post("/purchase", {"sku": "SKU-0", "qty": 2, "customerId": "c-1"})
        check_status(r, 201, "POST /purchase")
        check_eq(r.json["status"], "COMPLETED", "a purchase is COMPLETED")
        key = new_key("seed000")
        r1 = c.post("/purchase", {"sku": "SKU-0", "qty": 1, "customerId": "c-1"}, key=key)
        r2 = c.post("/purchase", {"sku": "SKU-0", "qty": 1, "customerId": "c-1"}, key=key)
        check_status(r1, 201, "keyed purchase")
        check_eq(r2.json["orderId"], r1.json["orderId"], "a retried purchase is one order")
        check_problem(c.post("/purchase", {"sku": "SKU-0", "qty": 9, "customerId": "c-1"}), 409,
                      "insufficient_stock", "sold out")
        r = c.get("/inventory/SKU-0")
        check_eq(r.json["onHand"], 2, "5 - 2 - 1")
    s.stop()


def test_aliases_need_the_v1_role():
    s = start_stockd()  # no --anonymous-role: a request without a token has none
    with s.client(token=None) as c:
        check_problem(c.post("/orders", {"userId": "u", "items": [{"productId": "x",
                                                                    "quantity": 1}]}),
                      401, "unauthorized", "POST /orders without a token")
        check_problem(c.post("/purchase", {"sku": "x", "qty": 1, "customerId": "c"}), 401,
                      "unauthorized", "POST /purchase without a token")
        check_problem(c.get("/inventory/x"), 401, "unauthorized", "GET /inventory/x")
        check_problem(c.get("/orders/ord_1"), 401, "unauthorized", "GET /orders/ord_1")
    s.stop()


if __name__ == "__main__":
    main([test_seed001_order_flow, test_seed004_inventory_still_served, test_seed000_purchase,
          test_aliases_need_the_v1_role])
