"""Black-box tests of the flash sale: many concurrent purchases of one hot sku never oversell,
never undersell, and every acknowledged order exists exactly once."""

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_status, describe, main, new_key,  # noqa: E402
                     run_threads, start_stockd)


def burst(server, threads, per_thread, body_of):
    """threads workers, each on its own keep-alive connection opened before a common start,
    send per_thread purchases (unique keys). Returns every (request body, Response)."""
    barrier = threading.Barrier(threads, timeout=60)
    results = [[] for _ in range(threads)]

    def worker(i):
        with server.client(timeout=60) as client:
            client.connect()
            barrier.wait()
            for j in range(per_thread):
                key = new_key("flash-%d-%d" % (i, j))
                body = body_of(i, j)
                results[i].append((body, client.post("/v1/purchase", body, key=key)))

    run_threads(worker, threads, timeout=120)
    return [r for rs in results for r in rs]


def responses_of(pairs):
    return [r for _, r in pairs]


def classify(responses, expected_ok, what):
    ok = [r for r in responses if r.status == 201]
    sold_out = [r for r in responses if r.status == 409 and r.json and
                r.json.get("code") == "insufficient_stock"]
    other = [r for r in responses if r.status != 201 and r.status != 409]
    check(not other, "%s: %d unexpected responses, first: %s"
          % (what, len(other), describe(other[0]) if other else ""))
    check_eq(len(ok), expected_ok, "%s: purchases acknowledged 201" % what)
    check_eq(len(sold_out), len(responses) - expected_ok, "%s: 409 insufficient_stock" % what)
    for r in sold_out:
        check(r.headers.get("content-type", "").startswith("application/problem+json"),
              "%s: 409 content-type %r" % (what, r.headers.get("content-type")))
    order_ids = [r.json["orderId"] for r in ok]
    check_eq(len(set(order_ids)), len(order_ids), "%s: distinct orderIds" % what)
    return ok


def check_orders_readable(server, ok, what):
    """GET every acknowledged order, on a few connections in parallel."""
    parts = 8
    errors = []

    def reader(i):
        with server.client() as client:
            for r in ok[i::parts]:
                order_id = r.json["orderId"]
                got = client.get("/v1/orders/" + order_id)
                if got.status != 200:
                    errors.append("%s: %s" % (order_id, describe(got)))
                    continue
                o = got.json
                want = (order_id, "COMPLETED", r.json["storeId"],
                        [{"sku": r.json["sku"], "qty": r.json["qty"]}])
                have = (o.get("orderId"), o.get("status"), o.get("storeId"), o.get("lines"))
                if have != want:
                    errors.append("%s: order %r, acknowledged as %r" % (order_id, have, want))

    run_threads(reader, parts, timeout=60)
    check(not errors, "%s: %d acknowledged orders unreadable or wrong, first: %s"
          % (what, len(errors), errors[:3]))


def test_flash_sale_one_store():
    s = start_stockd()
    try:
        with s.client() as c:
            r = c.post("/v1/products", {"sku": "HOT", "name": "Hot", "initialOnHand": 100},
                       key=new_key())
            check_status(r, 201, "create product")
        responses = responses_of(burst(s, 200, 5, lambda i, j: {
            "sku": "HOT", "qty": 1, "customerId": "c%d-%d" % (i, j)}))
        check_eq(len(responses), 1000, "responses")
        ok = classify(responses, 100, "1000 buyers, 100 units")
        availabilities = sorted(r.json["available"] for r in ok)
        check_eq(availabilities, list(range(100)),
                 "the 'available' of the 100 sales (each unit sold once)")
        with s.client() as c:
            r = c.get("/v1/availability?sku=HOT")
            check_eq(r.json, {"sku": "HOT", "onHand": 0, "reserved": 0, "available": 0},
                     "availability after the sale")
            r = c.get("/v1/orders/ord_101")
            check_eq(r.status, 404, "no 101st order")
        check_orders_readable(s, ok, "one store")
        check(s.alive(), "stockd died")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_flash_sale_three_stores_round_robin():
    s = start_stockd()
    try:
        with s.client() as c:
            for store in ("S2", "S3"):
                r = c.post("/v1/stores", {"storeId": store, "name": store}, key=new_key())
                check_status(r, 201, "create " + store)
            r = c.post("/v1/products", {"sku": "RR", "name": "RR", "initialOnHand": 40,
                                        "storeId": "S1"}, key=new_key())
            check_status(r, 201, "create product")
            for store in ("S2", "S3"):
                r = c.post("/v1/adjustments", {"storeId": store, "sku": "RR", "delta": 30,
                                               "reason": "stock"}, key=new_key())
                check_status(r, 200, "stock " + store)
        responses = responses_of(burst(s, 100, 5, lambda i, j: {
            "sku": "RR", "qty": 1, "policy": "round-robin", "customerId": "c%d-%d" % (i, j)}))
        check_eq(len(responses), 500, "responses")
        ok = classify(responses, 100, "500 buyers, 40+30+30 units, round-robin")
        per_store = {}
        for r in ok:
            per_store[r.json["storeId"]] = per_store.get(r.json["storeId"], 0) + 1
        check_eq(per_store, {"S1": 40, "S2": 30, "S3": 30}, "sales per store")
        with s.client() as c:
            for store in ("S1", "S2", "S3"):
                r = c.get("/v1/availability?sku=RR&storeId=" + store)
                check_eq(r.json["onHand"], 0, "onHand in %s" % store)
            check_eq(c.get("/v1/availability?sku=RR").json["onHand"], 0, "global onHand")
        check_orders_readable(s, ok, "three stores")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_mixed_quantities():
    """Purchases of 1..4 units racing for 150: sold units never exceed stock, and the sale
    stops only when no request could be served."""
    s = start_stockd()
    try:
        with s.client() as c:
            r = c.post("/v1/products", {"sku": "MIX", "name": "Mix", "initialOnHand": 150},
                       key=new_key())
            check_status(r, 201, "create product")
        pairs = burst(s, 50, 4, lambda i, j: {"sku": "MIX", "qty": 1 + (i + j) % 4,
                                               "customerId": "m%d" % i})
        ok = [r for _, r in pairs if r.status == 201]
        refused = [(b, r) for b, r in pairs if r.status == 409]
        check_eq(len(ok) + len(refused), len(pairs), "only 201 and 409")
        check(refused, "200 requests for up to 500 units of 150: some must be refused")
        sold = sum(r.json["qty"] for r in ok)
        with s.client() as c:
            left = c.get("/v1/availability?sku=MIX").json["onHand"]
        check_eq(sold + left, 150, "units sold + onHand")
        check(left >= 0, "negative stock")
        for body, r in refused:
            check_eq(r.json.get("code"), "insufficient_stock", "code of a 409")
            check(r.json["available"] < body["qty"],
                  "409 for qty %d while %d were available" % (body["qty"], r.json["available"]))
            # Stock only goes down: what is left cannot serve any refused request.
            check(left < body["qty"], "%d left although qty %d was refused" % (left, body["qty"]))
        check_orders_readable(s, ok, "mixed quantities")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_flash_sale_one_store, test_flash_sale_three_stores_round_robin,
          test_mixed_quantities])
