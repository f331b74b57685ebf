"""Black-box tests of the dead-letter table of checkout orders (issue 11): with the payment
simulator timing out every charge, an order's charge is retried until its attempts run out and
its work item goes to the dead-letter table (GET /v1/dlt, stockd_dead_letters in /metrics); the
order stays CONFIRMED and never expires meanwhile (its TTL passes). With the timeouts turned off
(PUT /v1/admin/payment), POST /v1/dlt/replay re-queues it (202): the order ends PAID, charged
once (the simulator's ledger has at most one line per key, and ok exactly for the PAID ones),
and the table is empty again. A dead letter survives a restart. The circuit breaker is off
(--payment-breaker off): with it, an outage like this one holds the charges instead of spending
their attempts (test_breaker.py). Both backends."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status,  # noqa: E402
                     main, new_key, start_stockd)

WAIT_S = 60.0  # 8 attempts with backoff 50 ms * 2^k (+50% jitter): about 10 s
NO_BREAKER = ["--payment-breaker", "off"]


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def order(c, sku, qty, ttl):
    r = c.post("/v1/orders", {"customerId": "c-1", "lines": [{"sku": sku, "qty": qty}],
                              "ttlSeconds": ttl}, key=new_key())
    check_status(r, 201, "POST /v1/orders")
    return r.json["orderId"]


def put(c, path, body):
    return c.request("PUT", path, json.dumps(body).encode(), {"Content-Type": "application/json"})


def dead_letters(c, query=""):
    r = c.get("/v1/dlt" + query)
    check_status(r, 200, "GET /v1/dlt" + query)
    check_eq(r.json["count"], len(r.json["deadLetters"]), "count")
    return r.json["deadLetters"]


def wait_dead_letters(c, n):
    deadline = time.monotonic() + WAIT_S
    while True:
        rows = dead_letters(c)
        if len(rows) >= n:
            return rows
        check(time.monotonic() < deadline, "%d dead letters after %.0f s, want %d" % (
            len(rows), WAIT_S, n))
        time.sleep(0.2)


def wait_status(c, order_id, want):
    deadline = time.monotonic() + WAIT_S
    while True:
        r = c.get("/v1/orders/" + order_id)
        check_status(r, 200, "GET " + order_id)
        if r.json["status"] in want:
            return r.json
        check(time.monotonic() < deadline, "%s still %s" % (order_id, r.json["status"]))
        time.sleep(0.05)


def metric(c, name):
    text = c.get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric " + name)


def test_dead_letter_then_replay_to_paid():
    s = start_stockd(["--payment-timeout-rate", "1"] + NO_BREAKER)
    with s.client() as c:
        product(c, "D", 10)
        ids = [order(c, "D", 2, ttl=2), order(c, "D", 1, ttl=2)]
        rows = wait_dead_letters(c, 2)
        check_eq(sorted(r["orderId"] for r in rows), sorted(ids), "both orders dead-lettered")
        for row in rows:
            check_eq(row["stage"], "payment", "stage")
            check_eq(row["id"], "payment:" + row["orderId"], "id")
            check_eq(row["attempts"], 8, "attempts exhausted")
            check(row["error"] != "" and row["firstFailedAt"] <= row["lastFailedAt"], repr(row))
        check_eq(metric(c, "stockd_dead_letters"), 2, "stockd_dead_letters")
        check_eq(len(dead_letters(c, "?stage=payment&limit=1")), 1, "limit")
        check_problem(c.get("/v1/dlt?stage=nope"), 400, "validation_failed", "unknown stage")
        time.sleep(2.5)  # past the orders' TTL: a charge in doubt never expires
        for o in ids:
            o = wait_status(c, o, ("CONFIRMED",))
            check_eq(o["status"], "CONFIRMED", "a dead letter's order stays CONFIRMED")
        r = c.get("/v1/availability?sku=D&storeId=S1")
        check_eq((r.json["onHand"], r.json["reserved"]), (10, 3), "still held")
        r = put(c, "/v1/admin/payment", {"timeoutRate": 0})
        check_status(r, 200, "timeouts off")
        r = c.post("/v1/dlt/replay", {"ids": ["payment:" + ids[0]]})
        check_status(r, 202, "replay one")
        check_eq(r.json["ids"], ["payment:" + ids[0]], "replayed ids")
        wait_status(c, ids[0], ("PAID",))
        check_eq([x["orderId"] for x in dead_letters(c)], [ids[1]], "the other one stays")
        r = c.post("/v1/dlt/replay", {"stage": "payment"})
        check_status(r, 202, "replay the stage")
        check_eq(r.json["replayed"], 1, "one left to replay")
        wait_status(c, ids[1], ("PAID",))
        check_eq(dead_letters(c), [], "the table is empty")
        check_eq(metric(c, "stockd_dead_letters"), 0, "gauge back to 0")
        r = c.get("/v1/availability?sku=D&storeId=S1")
        check_eq((r.json["onHand"], r.json["reserved"]), (7, 0), "sold 3")
        check_problem(c.post("/v1/dlt/replay", {}), 400, "validation_failed", "no ids or stage")
        check_problem(c.post("/v1/dlt/replay", {"ids": []}), 400, "validation_failed", "empty")
        r = c.post("/v1/dlt/replay", {"ids": ["payment:ord_999"]})
        check_status(r, 202, "replay of an unknown id")
        check_eq(r.json["replayed"], 0, "nothing replayed")
        history = [h["status"] for h in c.get("/v1/orders/" + ids[0]).json["history"]]
        check_eq(history, ["PENDING", "CONFIRMED", "PAID"], "history")
    charges = s.payment_ledger()
    for o in ids:
        check(charges.get(o, []) in (["ok"],), "%s charged once: %r" % (o, charges.get(o)))
    audit_events(s)
    s.stop()


def test_dead_letter_survives_restart():
    s = start_stockd(["--payment-timeout-rate", "1"] + NO_BREAKER)
    with s.client() as c:
        product(c, "R", 5)
        o = order(c, "R", 1, ttl=1)
        wait_dead_letters(c, 1)
    s.stop()
    s = start_stockd([], data_dir=s.data_dir)
    with s.client() as c:
        rows = dead_letters(c)
        check_eq([r["orderId"] for r in rows], [o], "still a dead letter after a restart")
        check_eq(metric(c, "stockd_dead_letters"), 1, "gauge read at start")
        check_eq(wait_status(c, o, ("CONFIRMED",))["status"], "CONFIRMED", "not asked again")
        check_status(c.post("/v1/dlt/replay", {"stage": "payment"}), 202, "replay")
        wait_status(c, o, ("PAID",))
    with s.client(token=None) as anonymous:
        check_problem(anonymous.get("/v1/dlt"), 401, "unauthorized", "admin only")
    check(len(s.payment_ledger().get(o, [])) <= 1, "charged at most once")
    s.stop()


if __name__ == "__main__":
    main([test_dead_letter_then_replay_to_paid, test_dead_letter_survives_restart])
