"""Black-box tests of the seed-004 compatible routes (POST /buy_ticket, GET /inventory,
POST /reset) and that seed's proof of correctness: 1,000 concurrent buyers, 100 tickets,
exactly 100 sales and 900 "SOLD OUT". The seed's client sends no token: stockd runs as the
seed would run it, with --anonymous-role write --allow-reset, and the clients send none."""

import os
import re
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status, describe, main,  # noqa: E402
                     run_threads, start_stockd)

SEED_ARGS = ["--allow-reset", "--anonymous-role", "write"]

INVENTORY_KEYS = {"item_id", "item_name", "current_stock", "initial_stock", "total_purchases",
                  "last_updated"}


def reset(c):
    r = c.post("/reset", b"")
    check_status(r, 200, "POST /reset")
    check(r.headers.get("content-type", "").startswith("application/json"),
          "/reset content-type %r" % r.headers.get("content-type"))
    check_eq(r.json.get("success"), True, "reset success")
    check_eq(r.json.get("remaining_stock"), 100, "reset remaining_stock")
    check(isinstance(r.json.get("message"), str), "reset message %r" % r.json)
    return r.json


def inventory(c):
    r = c.get("/inventory")
    check_status(r, 200, "GET /inventory")
    body = r.json
    check(isinstance(body, dict), "inventory body %r" % r.body)
    missing = INVENTORY_KEYS - set(body)
    check(not missing, "inventory lacks %r: %r" % (sorted(missing), body))
    check_eq(body["item_id"], 1, "item_id")
    check(isinstance(body["item_name"], str) and body["item_name"], "item_name %r" % body)
    check_eq(body["initial_stock"], 100, "initial_stock")
    check(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", body["last_updated"]) is not None,
          "last_updated %r is not 'YYYY-MM-DD HH:MM:SS'" % body["last_updated"])
    return body


def buy(c, customer):
    return c.post("/buy_ticket", {"customer_id": customer})


def buyers(server, threads, per_thread):
    """threads workers on their own connections, released together, each buying per_thread
    tickets without an Idempotency-Key (the seed's client sends none)."""
    barrier = threading.Barrier(threads, timeout=60)
    results = [[] for _ in range(threads)]

    def worker(i):
        with server.client(timeout=60, token=None) as client:
            client.connect()
            barrier.wait()
            for j in range(per_thread):
                results[i].append(buy(client, "customer_%d" % (i * per_thread + j)))

    run_threads(worker, threads, timeout=120)
    return [r for rs in results for r in rs]


def check_sale(responses, tickets, what):
    sold = [r for r in responses if r.status == 200]
    gone = [r for r in responses if r.status == 410]
    others = [r for r in responses if r.status not in (200, 410)]
    check(not others, "%s: unexpected responses, first: %s" % (what, describe(others[0])
                                                              if others else ""))
    check_eq(len(sold), tickets, "%s: status 200" % what)
    check_eq(len(gone), len(responses) - tickets, "%s: status 410" % what)
    for r in sold:
        check_eq((r.json.get("success"), r.json.get("message")), (True, "Purchase successful"),
                 "%s: a sale's body" % what)
    for r in gone:
        check_eq(r.json.get("success"), False, "%s: a sold-out body's success" % what)
        check_eq(r.json.get("remaining_stock"), 0, "%s: remaining_stock when sold out" % what)
        check("SOLD OUT" in r.json.get("message", ""), "%s: sold-out message %r" % (what, r.json))
    check_eq(sorted(r.json["remaining_stock"] for r in sold), list(range(tickets)),
             "%s: remaining_stock of the sales (each ticket sold once)" % what)


def test_reset_buy_inventory():
    s = start_stockd(SEED_ARGS)
    try:
        with s.client(token=None) as c:
            r = c.get("/inventory")
            check(400 <= r.status < 500, "/inventory before any reset: %s" % describe(r))
            reset(c)
            body = inventory(c)
            check_eq((body["current_stock"], body["total_purchases"]), (100, 0),
                     "inventory after reset")
            r = buy(c, "customer_1")
            check_status(r, 200, "buy one ticket")
            check_eq(r.json, {"success": True, "message": "Purchase successful",
                              "remaining_stock": 99}, "buy_ticket body")
            r = c.post("/buy_ticket", {})
            check_status(r, 200, "buy without customer_id")
            body = inventory(c)
            check_eq((body["current_stock"], body["total_purchases"]), (98, 2),
                     "inventory after two sales")
            # The ticket is an ordinary sku in the v1 API as well.
            r = c.get("/v1/availability?sku=TICKET-A")
            check_status(r, 200, "v1 availability of the ticket")
            check_eq(r.json["onHand"], 98, "v1 onHand of the ticket")
            reset(c)
            body = inventory(c)
            check_eq((body["current_stock"], body["total_purchases"]), (100, 0),
                     "inventory after a second reset (the seed's reset starts a new sale)")
        check_eq(s.stop(), 0, "clean stop")
        s = start_stockd(SEED_ARGS, data_dir=s.data_dir)
        with s.client(token=None) as c:
            check_eq(buy(c, "customer_2").json.get("remaining_stock"), 99, "buy after restart")
            body = inventory(c)
            check_eq((body["current_stock"], body["total_purchases"]), (99, 1),
                     "inventory after a restart and one sale")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_proof_of_correctness():
    s = start_stockd(SEED_ARGS)
    try:
        with s.client(token=None) as c:
            reset(c)
        # Seed test 2: 1,000 buyers, 100 tickets.
        responses = buyers(s, 200, 5)
        check_eq(len(responses), 1000, "responses")
        check_sale(responses, 100, "1000 buyers")
        with s.client(token=None) as c:
            body = inventory(c)
            check_eq(body["current_stock"], 0, "current_stock after the sale")
            check_eq(body["total_purchases"], 100, "total_purchases after the sale")
            r = c.get("/v1/orders/ord_100")
            check_status(r, 200, "the 100th order")
            r = c.get("/v1/orders/ord_101")
            check_problem(r, 404, "unknown_order", "no 101st order")
            # Reset works again, and seed test 1 (100 buyers, 100 tickets) passes after it.
            reset(c)
            body = inventory(c)
            check_eq((body["current_stock"], body["total_purchases"]), (100, 0),
                     "inventory after the second reset")
        responses = buyers(s, 50, 2)
        check_sale(responses, 100, "100 buyers after reset")
        with s.client(token=None) as c:
            body = inventory(c)
            check_eq(body["current_stock"], 0, "current_stock after the second sale")
            check_eq(body["total_purchases"], 100, "total_purchases after the second sale "
                     "(seed test 1: exactly 100 purchase records)")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_keyed_buy_ticket_replay():
    """/buy_ticket takes an optional Idempotency-Key; a replay is the first answer again,
    content type included (the seed's 410 body is not a problem+json)."""
    s = start_stockd(SEED_ARGS)
    try:
        with s.client(token=None) as c:
            reset(c)
            first = c.post("/buy_ticket", {"customer_id": "k1"}, headers={"Idempotency-Key": "t1"})
            check_status(first, 200, "keyed buy")
            again = c.post("/buy_ticket", {"customer_id": "k1"}, headers={"Idempotency-Key": "t1"})
            check_eq((again.status, again.body), (first.status, first.body), "replayed buy")
            check_eq(again.headers.get("idempotent-replayed"), "true", "replay header")
            check_eq(inventory(c)["current_stock"], 99, "one ticket sold by two keyed requests")
            check_sale(buyers(s, 11, 9), 99, "sell out")
            first = c.post("/buy_ticket", {"customer_id": "k2"}, headers={"Idempotency-Key": "t2"})
            check_status(first, 410, "keyed buy when sold out")
            check_eq(first.headers.get("content-type"), "application/json", "410 content type")
            again = c.post("/buy_ticket", {"customer_id": "k2"}, headers={"Idempotency-Key": "t2"})
            check_eq((again.status, again.body), (first.status, first.body), "replayed 410")
            check_eq(again.headers.get("content-type"), first.headers.get("content-type"),
                     "content type of the replayed 410")
    finally:
        s.stop()


def test_reset_disabled():
    s = start_stockd()
    try:
        with s.client() as c:
            r = c.post("/reset", b"")
            check_problem(r, 403, "reset_disabled", "POST /reset without --allow-reset")
            r = c.post("/reset", {"x": 1})
            check_problem(r, 403, "reset_disabled", "POST /reset with a body")
            r = c.get("/reset")
            check_problem(r, 405, "method_not_allowed", "GET /reset")
            r = c.get("/inventory")
            check(400 <= r.status < 500 and
                  r.headers.get("content-type", "").startswith("application/problem+json"),
                  "/inventory with no ticket item: %s" % describe(r))
            r = buy(c, "customer_1")
            check(400 <= r.status < 500, "buy_ticket with no ticket item: %s" % describe(r))
            check(s.alive(), "stockd died")
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_reset_buy_inventory, test_proof_of_correctness, test_keyed_buy_ticket_replay,
          test_reset_disabled])
