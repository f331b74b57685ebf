"""Black-box tests of the stock commands beyond buy-now (DESIGN.md "Commands", issue 4):
reservations with a TTL (create, confirm, cancel, expiry by the writer's timer, also across a
restart), transfers (atomic over all lines), reconciliations and set-absolute with If-Match.
Every documented error is checked, every command is replayed by its Idempotency-Key, and the
tests end with the event-log audit (harness.audit_events). The last tests are regressions of
server bugs: 100-line reservations confirmed or cancelled (reply buffer, event budget of a
batch) and an expiry heap full of stale entries."""

import calendar
import http.client
import os
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status,  # noqa: E402
                     main, new_key, run_threads, start_stockd)

TTL_LONG = 600  # seconds: never expires during a test


def post_ok(c, path, body, status, what, headers=None):
    r = c.post(path, body, key=new_key(), headers=headers)
    check_status(r, status, what)
    check(r.headers.get("content-type", "").startswith("application/json"),
          "%s: content-type %r" % (what, r.headers.get("content-type")))
    check(isinstance(r.json, dict), "%s: body is not a JSON object: %r" % (what, r.body))
    return r


def store(c, store_id):
    post_ok(c, "/v1/stores", {"storeId": store_id, "name": store_id}, 201, "store " + store_id)


def product(c, sku, on_hand, store_id="S1"):
    post_ok(c, "/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand,
                                "storeId": store_id}, 201, "product %s in %s" % (sku, store_id))


def stock(c, store_id, sku, delta):
    post_ok(c, "/v1/adjustments", {"storeId": store_id, "sku": sku, "delta": delta,
                                   "reason": "fixture"}, 200, "stock %s into %s" % (sku, store_id))


def avail(c, sku, store_id):
    """(onHand, reserved, available) of sku in store_id; (0, 0, 0) when not stocked there."""
    r = c.get("/v1/availability?sku=%s&storeId=%s" % (sku, store_id))
    if r.status == 404:
        return (0, 0, 0)
    check_status(r, 200, "availability of %s in %s" % (sku, store_id))
    j = r.json
    check_eq(j["available"], j["onHand"] - j["reserved"], "available of %s/%s" % (sku, store_id))
    return (j["onHand"], j["reserved"], j["available"])


def reserve(c, lines, store_id=None, ttl=TTL_LONG, customer="cust-1", key=None):
    body = {"lines": [{"sku": s, "qty": q} for s, q in lines], "ttlSeconds": ttl,
            "customerId": customer}
    if store_id is not None:
        body["storeId"] = store_id
    return c.post("/v1/reservations", body, key=key or new_key())


def confirm(c, res_id, body=None, headers=None, key=None):
    return c.post("/v1/reservations/%s:confirm" % res_id, body if body is not None else {},
                  key=key or new_key(), headers=headers)


def cancel(c, res_id, reason="changed mind", headers=None, key=None):
    return c.post("/v1/reservations/%s:cancel" % res_id, {"reason": reason},
                  key=key or new_key(), headers=headers)


def rfc3339_ms(text):
    """Milliseconds since the epoch of an RFC 3339 UTC time like 2026-01-02T03:04:05.678Z."""
    check(text.endswith("Z") and "T" in text, "expiresAt %r is not RFC 3339 UTC" % text)
    main_part, _, frac = text[:-1].partition(".")
    seconds = calendar.timegm(time.strptime(main_part, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + (int((frac + "000")[:3]) if frac else 0)


def check_replay(c, path, body, first, what):
    """The same key and body again: the first response, byte for byte, marked replayed."""
    r = c.post(path, body, key=first[0])
    check_eq(r.status, first[1].status, what + ": replay status")
    check_eq(r.body, first[1].body, what + ": replay body")
    check_eq(r.headers.get("idempotent-replayed"), "true", what + ": Idempotent-Replayed")


def wait_for(fn, want, timeout, what):
    """Polls fn() until it returns want; fails with the last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    got = fn()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = fn()
    check_eq(got, want, "%s (after %.1f s)" % (what, timeout))


# ---- reservations: happy paths ---------------------------------------------------------------

def test_reservation_lifecycle():
    s = start_stockd()
    try:
        with s.client() as c:
            product(c, "A", 20)
            product(c, "B", 10)
            before_ms = int(time.time() * 1000)
            r = reserve(c, [("A", 3), ("B", 2)], store_id="S1", customer="cust-7")
            check_status(r, 201, "reserve A:3 B:2 in S1")
            j = r.json
            res_id = j.get("reservationId", "")
            check(res_id.startswith("res_") and res_id[4:].isdigit(), "reservationId %r" % res_id)
            check_eq(j["status"], "ACTIVE", "status of a new reservation")
            check_eq(j["storeId"], "S1", "storeId")
            check_eq(j["customerId"], "cust-7", "customerId")
            check_eq(j["lines"], [{"sku": "A", "qty": 3}, {"sku": "B", "qty": 2}], "lines")
            check_eq(j["version"], 1, "version of a new reservation")
            after_ms = int(time.time() * 1000)
            check(before_ms + TTL_LONG * 1000 - 1000 <= j["expiresAtMs"]
                  <= after_ms + TTL_LONG * 1000 + 1000,
                  "expiresAtMs %d is not now + ttl" % j["expiresAtMs"])
            check(abs(rfc3339_ms(j["expiresAt"]) - j["expiresAtMs"]) < 1000,
                  "expiresAt %r vs expiresAtMs %d" % (j["expiresAt"], j["expiresAtMs"]))
            check_eq(avail(c, "A", "S1"), (20, 3, 17), "A after reserving 3")
            check_eq(avail(c, "B", "S1"), (10, 2, 8), "B after reserving 2")
            g = c.get("/v1/reservations/" + res_id)
            check_status(g, 200, "GET the reservation")
            check_eq(g.json.get("status"), "ACTIVE", "GET status")
            # Confirm: the held units leave onHand and reserved.
            r = confirm(c, res_id, {"paymentRef": "pay-1"})
            check_status(r, 200, "confirm")
            check_eq(r.json["status"], "CONFIRMED", "status after confirm")
            check_eq(r.json["version"], 2, "version after confirm")
            check_eq(r.json["reservationId"], res_id, "reservationId after confirm")
            check_eq(r.json["lines"], j["lines"], "lines after confirm")
            check_eq(avail(c, "A", "S1"), (17, 0, 17), "A after confirm")
            check_eq(avail(c, "B", "S1"), (8, 0, 8), "B after confirm")
            check_eq(c.get("/v1/reservations/" + res_id).json.get("status"), "CONFIRMED",
                     "GET status after confirm")
            check_problem(confirm(c, res_id), 409, "reservation_not_active", "confirm twice")
            check_problem(cancel(c, res_id), 409, "reservation_not_active",
                          "cancel a confirmed one")
            # Cancel: the held units become available again, onHand unchanged.
            r = reserve(c, [("A", 5)], store_id="S1")
            check_status(r, 201, "reserve A:5")
            res2 = r.json["reservationId"]
            check(int(res2[4:]) > int(res_id[4:]), "ids ascend: %s after %s" % (res2, res_id))
            check_eq(avail(c, "A", "S1"), (17, 5, 12), "A after reserving 5")
            r = cancel(c, res2, "customer left")
            check_status(r, 200, "cancel")
            check_eq(r.json["status"], "CANCELLED", "status after cancel")
            check_eq(r.json["version"], 2, "version after cancel")
            check_eq(avail(c, "A", "S1"), (17, 0, 17), "A after cancel")
            check_problem(confirm(c, res2), 409, "reservation_not_active",
                          "confirm a cancelled one")
            check_problem(cancel(c, res2), 409, "reservation_not_active", "cancel twice")
            # Confirm without a body member (paymentRef is optional) and with If-Match.
            r = reserve(c, [("B", 1)], store_id="S1")
            check_status(r, 201, "reserve B:1")
            r = confirm(c, r.json["reservationId"], {}, headers={"If-Match": '"1"'})
            check_status(r, 200, "confirm with the current If-Match and no paymentRef")
            check_eq(avail(c, "B", "S1"), (7, 0, 7), "B after the second confirm")
            audit_events(s)
    finally:
        s.stop()


def test_reservation_store_choice():
    s = start_stockd()
    try:
        with s.client() as c:
            store(c, "S2")
            store(c, "S3")
            product(c, "C", 5)
            stock(c, "S2", "C", 50)
            stock(c, "S3", "C", 20)
            product(c, "D", 10)
            stock(c, "S2", "D", 1)
            # No storeId: the store where all lines fit with the most slack.
            r = reserve(c, [("C", 3)])
            check_status(r, 201, "reserve C:3 without storeId")
            check_eq(r.json["storeId"], "S2", "most slack for C (S1 5, S2 50, S3 20)")
            check_eq(avail(c, "C", "S2"), (50, 3, 47), "C in S2 after the reservation")
            # D is short in S2 (1) and absent in S3: only S1 holds both lines.
            r = reserve(c, [("C", 2), ("D", 4)])
            check_status(r, 201, "reserve C:2 D:4 without storeId")
            check_eq(r.json["storeId"], "S1", "the only store with every line")
            # Slack is the smallest over the lines: S1 has C 3-3=0 and D 6-1=5 -> 0;
            # S2 has C 47-3 but D 1-1=0 -> 0; S3 lacks D. Ties are fine, but it must fit.
            r = reserve(c, [("C", 3), ("D", 1)])
            check_status(r, 201, "reserve C:3 D:1 without storeId")
            check(r.json["storeId"] in ("S1", "S2"), "store %r" % r.json["storeId"])
            # Duplicate skus count together: S1 now has 0 or 3 of C, S2 44 or 47.
            r = reserve(c, [("C", 30), ("C", 15)], store_id="S2")
            check_status(r, 201, "duplicate lines summed (45 of S2's C)")
            r = reserve(c, [("C", 30), ("C", 30)], store_id="S2")
            body = check_problem(r, 409, "insufficient_stock", "duplicate lines over the stock")
            check("C" in body.get("detail", ""), "detail names the sku: %r" % body)
            # Nowhere fits: the problem names the line no store can hold (not the first line)
            # with the most any store has of it.
            most_d = max(avail(c, "D", st)[2] for st in ("S1", "S2", "S3"))
            r = reserve(c, [("C", 1), ("D", 100)])
            body = check_problem(r, 409, "insufficient_stock", "no store has 100 of D")
            check(re.search(r"\bD\b", body.get("detail", "")),
                  "detail names D, the short line: %r" % body)
            check_eq(body.get("available"), most_d, "available: the most of D in any store")
            # Each line fits in some store, but no store holds both.
            product(c, "F", 4, store_id="S3")
            r = reserve(c, [("D", 1), ("F", 1)])
            check_problem(r, 409, "insufficient_stock", "D only in S1/S2, F only in S3")
            audit_events(s)
    finally:
        s.stop()


# ---- reservations: errors --------------------------------------------------------------------

def test_reservation_errors():
    s = start_stockd()
    try:
        with s.client() as c:
            product(c, "E1", 10)
            product(c, "E2", 2)
            # One short line: 409 naming it, and nothing reserved for the other line.
            r = reserve(c, [("E1", 4), ("E2", 3)], store_id="S1")
            body = check_problem(r, 409, "insufficient_stock", "E2 short")
            check("E2" in body.get("detail", ""), "detail names the short sku: %r" % body)
            check_eq(body.get("available"), 2, "available member")
            check_eq(avail(c, "E1", "S1"), (10, 0, 10), "E1 untouched by the refused reservation")
            check_eq(avail(c, "E2", "S1"), (2, 0, 2), "E2 untouched")
            check_problem(reserve(c, [("NOPE", 1)], store_id="S1"), 404, "unknown_sku",
                          "unknown sku")
            check_problem(reserve(c, [("E1", 1), ("NOPE", 1)]), 404, "unknown_sku",
                          "unknown sku in the second line")
            check_problem(reserve(c, [("E1", 1)], store_id="S9"), 404, "unknown_store",
                          "unknown store")
            store(c, "S2")
            body = check_problem(reserve(c, [("E1", 1)], store_id="S2"), 409,
                                 "insufficient_stock", "a store without the item")
            check_eq(body.get("available"), 0, "available in a store without the item")
            # Validation: 400 for each bad member.
            base = {"lines": [{"sku": "E1", "qty": 1}], "ttlSeconds": 60, "customerId": "c"}
            bad = [
                ("no lines", {k: v for k, v in base.items() if k != "lines"}),
                ("empty lines", dict(base, lines=[])),
                ("101 lines", dict(base, lines=[{"sku": "E1", "qty": 1}] * 101)),
                ("qty 0", dict(base, lines=[{"sku": "E1", "qty": 0}])),
                ("qty -1", dict(base, lines=[{"sku": "E1", "qty": -1}])),
                ("qty 1e9+1", dict(base, lines=[{"sku": "E1", "qty": 1000000001}])),
                ("line not an object", dict(base, lines=["E1"])),
                ("bad sku", dict(base, lines=[{"sku": "a b", "qty": 1}])),
                ("ttl 0", dict(base, ttlSeconds=0)),
                ("ttl 604801", dict(base, ttlSeconds=604801)),
                ("ttl string", dict(base, ttlSeconds="60")),
                ("no ttl", {k: v for k, v in base.items() if k != "ttlSeconds"}),
                ("no customerId", {k: v for k, v in base.items() if k != "customerId"}),
            ]
            for what, body in bad:
                r = c.post("/v1/reservations", body, key=new_key())
                check_problem(r, 400, None, "reservation with " + what)
            r = c.post("/v1/reservations", dict(base, ttlSeconds=604800), key=new_key())
            check_status(r, 201, "ttl of exactly 7 days")
            res_id = r.json["reservationId"]
            r = c.post("/v1/reservations", dict(base, lines=[{"sku": "E1", "qty": 1}] * 8),
                       key=new_key())
            check_status(r, 201, "100 lines or fewer: 8 lines")
            check_eq(avail(c, "E1", "S1"), (10, 9, 1), "E1 after 1 + 8")
            r = c.post("/v1/reservations", base)
            check_problem(r, 428, "idempotency_key_required", "reservation without a key")
            # Unknown and malformed ids.
            for bad_id in ("res_999999", "res_0", "res_", "abc", "res_1x", "res_-1",
                           "res_99999999999999999999"):
                check_problem(confirm(c, bad_id), 404, "unknown_reservation",
                              "confirm " + bad_id)
                check_problem(cancel(c, bad_id), 404, "unknown_reservation", "cancel " + bad_id)
            # If-Match on confirm and cancel.
            r = confirm(c, res_id, headers={"If-Match": '"7"'})
            body = check_problem(r, 409, "version_conflict", "confirm with a stale If-Match")
            check_eq(body.get("currentVersion"), 1, "currentVersion")
            r = cancel(c, res_id, headers={"If-Match": '"2"'})
            body = check_problem(r, 409, "version_conflict", "cancel with a stale If-Match")
            check_eq(body.get("currentVersion"), 1, "currentVersion on cancel")
            check_problem(confirm(c, res_id, headers={"If-Match": '"v1"'}), 400, None,
                          "If-Match not a version number")
            check_eq(avail(c, "E1", "S1"), (10, 9, 1), "refused confirms changed nothing")
            r = c.post("/v1/reservations/%s:cancel" % res_id, {}, key=new_key())
            check_problem(r, 400, None, "cancel without a reason")
            r = confirm(c, res_id, {"paymentRef": 5})
            check_problem(r, 400, None, "paymentRef not a string")
            r = c.post("/v1/reservations/%s:confirm" % res_id, {})
            check_problem(r, 428, "idempotency_key_required", "confirm without a key")
            r = c.post("/v1/reservations/%s:confirm" % res_id, b"x=1", key=new_key(),
                       content_type="application/x-www-form-urlencoded")
            check_problem(r, 415, None, "confirm with a form body")
            r = c.post("/v1/reservations/%s:confirm" % res_id, b"{", key=new_key())
            check_problem(r, 400, None, "confirm with broken JSON")
            r = cancel(c, res_id, headers={"If-Match": '"1"'})
            check_status(r, 200, "cancel with the current If-Match")
            check_eq(avail(c, "E1", "S1"), (10, 8, 2), "E1 after the cancel")
            audit_events(s)
    finally:
        s.stop()


# ---- TTL -------------------------------------------------------------------------------------

def test_ttl_expiry_restores_availability():
    s = start_stockd()
    try:
        with s.client() as c:
            product(c, "T", 10)
            r = reserve(c, [("T", 4)], store_id="S1", ttl=1)
            check_status(r, 201, "reserve T:4 for 1 s")
            res_id = r.json["reservationId"]
            held = reserve(c, [("T", 1)], store_id="S1")  # long TTL: must stay held
            check_status(held, 201, "reserve T:1 for 10 min")
            check_eq(avail(c, "T", "S1"), (10, 5, 5), "T while held")
            started = time.monotonic()
            # No request but reads: the writer's timer releases the units.
            wait_for(lambda: avail(c, "T", "S1"), (10, 1, 9), 5.0,
                     "T after the 1 s reservation expired")
            check(time.monotonic() - started >= 0.5, "released before its TTL")
            check_problem(confirm(c, res_id), 409, "reservation_expired", "confirm after expiry")
            check_problem(cancel(c, res_id), 409, "reservation_expired", "cancel after expiry")
            check_eq(c.get("/v1/reservations/" + res_id).json.get("status"), "EXPIRED",
                     "GET status after expiry")
            check_eq(avail(c, "T", "S1"), (10, 1, 9), "refused confirm changed nothing")
            check_status(confirm(c, held.json["reservationId"]), 200, "confirm the long one")
            check_eq(avail(c, "T", "S1"), (9, 0, 9), "T at the end")
            audit_events(s)
    finally:
        s.stop()


def test_restart_keeps_and_expires_reservations():
    s = start_stockd()
    try:
        with s.client() as c:
            product(c, "R", 10)
            r = reserve(c, [("R", 3)], store_id="S1", ttl=3)
            check_status(r, 201, "reserve R:3 for 3 s")
            short_id = r.json["reservationId"]
            created = time.monotonic()
            r = reserve(c, [("R", 2)], store_id="S1")
            check_status(r, 201, "reserve R:2 for 10 min")
            long_id = r.json["reservationId"]
            long_body = c.get("/v1/reservations/" + long_id).body
            r = reserve(c, [("R", 4)], store_id="S1", ttl=1)
            check_status(r, 201, "reserve R:4 for 1 s")
            down_id = r.json["reservationId"]
        check_eq(s.stop(), 0, "exit code of a clean stop")
        time.sleep(max(0.0, 1.2 - (time.monotonic() - created)))  # down_id expires while down
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            # Expired while the server was down: released by the first batch after the start.
            wait_for(lambda: c.get("/v1/reservations/" + down_id).json.get("status"), "EXPIRED",
                     3.0, "a reservation that expired while the server was down")
            check_problem(confirm(c, down_id), 409, "reservation_expired",
                          "confirm one that expired while the server was down")
            if time.monotonic() - created < 2.5:
                check_eq(avail(c, "R", "S1"), (10, 5, 5), "both reservations held after restart")
            check_eq(c.get("/v1/reservations/" + long_id).body, long_body,
                     "the long reservation after restart")
            # The short one expires on its timer although no request names it.
            wait_for(lambda: avail(c, "R", "S1"), (10, 2, 8), 8.0,
                     "R after the 3 s reservation expired past a restart")
            check_problem(confirm(c, short_id), 409, "reservation_expired",
                          "confirm after expiry past a restart")
            r = confirm(c, long_id, {"paymentRef": "after-restart"})
            check_status(r, 200, "confirm an ACTIVE reservation loaded at start")
            check_eq(r.json["version"], 2, "version continues")
            check_eq(avail(c, "R", "S1"), (8, 0, 8), "R after confirm")
            r = reserve(c, [("R", 1)], store_id="S1")
            check_status(r, 201, "a new reservation after restart")
            check(int(r.json["reservationId"][4:]) > int(long_id[4:]),
                  "reservation numbering continues: %s after %s" % (r.json["reservationId"],
                                                                   long_id))
            audit_events(s)
    finally:
        s.stop()


# ---- concurrency -----------------------------------------------------------------------------

def test_concurrent_reservations_last_units():
    s = start_stockd(threads=4)
    try:
        with s.client() as c:
            product(c, "LAST", 10)
        n = 50
        barrier = threading.Barrier(n, timeout=30)
        results = [None] * n

        def one(i):
            with s.client() as c:
                c.connect()
                barrier.wait()
                r = reserve(c, [("LAST", 1)], store_id="S1", customer="c%d" % i)
                results[i] = (r.status, r.json)

        run_threads(one, n)
        won = [j for status, j in results if status == 201]
        lost = [j for status, j in results if status == 409]
        check_eq((len(won), len(lost)), (10, 40), "201s and 409s of 50 reservations of 10 units")
        check(all(j.get("code") == "insufficient_stock" for j in lost),
              "codes of the 409s: %r" % {j.get("code") for j in lost})
        check_eq(len({j["reservationId"] for j in won}), 10, "distinct reservation ids")
        with s.client() as c:
            check_eq(avail(c, "LAST", "S1"), (10, 10, 0), "LAST after the race")
        audit_events(s)
        # Confirm 5 and cancel 5 at once.
        ids = [j["reservationId"] for j in won]
        barrier2 = threading.Barrier(10, timeout=30)
        outcomes = [None] * 10

        def finish(i):
            with s.client() as c:
                c.connect()
                barrier2.wait()
                r = confirm(c, ids[i]) if i < 5 else cancel(c, ids[i])
                outcomes[i] = (r.status, (r.json or {}).get("status"))

        run_threads(finish, 10)
        check_eq(outcomes, [(200, "CONFIRMED")] * 5 + [(200, "CANCELLED")] * 5,
                 "outcomes of 5 confirms and 5 cancels")
        with s.client() as c:
            check_eq(avail(c, "LAST", "S1"), (5, 0, 5), "LAST after 5 confirms and 5 cancels")
        audit_events(s)
    finally:
        s.stop()


def test_concurrent_transfers_purchases_reservations():
    s = start_stockd(threads=4)
    stores = ["S1", "S2", "S3"]
    skus = ["M1", "M2"]
    try:
        with s.client() as c:
            store(c, "S2")
            store(c, "S3")
            for sku in skus:
                product(c, sku, 30)
                stock(c, "S2", sku, 30)
                stock(c, "S3", sku, 30)
        sold = {sku: 0 for sku in skus}  # purchases and confirms that succeeded
        counted = {sku: 0 for sku in skus}  # the deltas reconciliations reported
        lock = threading.Lock()
        statuses = {}
        n = 12
        barrier = threading.Barrier(n, timeout=30)

        def note(kind, status):
            with lock:
                statuses[(kind, status)] = statuses.get((kind, status), 0) + 1

        def worker(i):
            rng = random.Random(1000 + i)
            with s.client() as c:
                c.connect()
                barrier.wait()
                for _ in range(25):
                    op = rng.random()
                    a, b = rng.sample(stores, 2)
                    if op < 0.08:
                        sku = rng.choice(skus)
                        r = c.post("/v1/reconciliations", {
                            "storeId": a, "source": "w%d" % i,
                            "snapshotOnHand": {sku: rng.randint(0, 40)}}, key=new_key())
                        check(r.status in (200, 409), "reconcile: %d %r" % (r.status, r.body))
                        note("reconcile", r.status)
                        if r.status == 200:
                            with lock:
                                counted[sku] += r.json["adjustments"][0]["delta"]
                    elif op < 0.4:
                        lines = [{"sku": sku, "qty": rng.randint(1, 6)} for sku in skus
                                 if rng.random() < 0.7] or [{"sku": "M1", "qty": 2}]
                        r = c.post("/v1/transfers", {"fromStore": a, "toStore": b,
                                                     "lines": lines}, key=new_key())
                        check(r.status in (201, 409), "transfer: %d %r" % (r.status, r.body))
                        note("transfer", r.status)
                    elif op < 0.7:
                        sku = rng.choice(skus)
                        qty = rng.randint(1, 4)
                        r = c.post("/v1/purchase", {"sku": sku, "qty": qty, "storeId": a,
                                                    "customerId": "p%d" % i}, key=new_key())
                        check(r.status in (201, 409), "purchase: %d %r" % (r.status, r.body))
                        note("purchase", r.status)
                        if r.status == 201:
                            with lock:
                                sold[sku] += qty
                    else:
                        sku = rng.choice(skus)
                        qty = rng.randint(1, 5)
                        r = reserve(c, [(sku, qty)], store_id=a, customer="r%d" % i)
                        check(r.status in (201, 409), "reserve: %d %r" % (r.status, r.body))
                        note("reserve", r.status)
                        if r.status == 201:
                            res_id = r.json["reservationId"]
                            if rng.random() < 0.5:
                                r = confirm(c, res_id)
                                check_status(r, 200, "confirm in the mix")
                                with lock:
                                    sold[sku] += qty
                            else:
                                check_status(cancel(c, res_id), 200, "cancel in the mix")

        run_threads(worker, n, timeout=90)
        check(statuses.get(("transfer", 201), 0) > 0, "no transfer succeeded: %r" % statuses)
        check(statuses.get(("purchase", 201), 0) > 0, "no purchase succeeded: %r" % statuses)
        with s.client() as c:
            for sku in skus:
                total = 0
                for st in stores:
                    on_hand, reserved, _ = avail(c, sku, st)
                    check(on_hand >= 0 and 0 <= reserved <= on_hand,
                          "%s/%s: onHand %d reserved %d" % (sku, st, on_hand, reserved))
                    check_eq(reserved, 0, "%s/%s reserved after every hold ended" % (sku, st))
                    total += on_hand
                check_eq(total, 90 - sold[sku] + counted[sku],
                         "%s: stock conserved over transfers (sold %d, counted %+d)"
                         % (sku, sold[sku], counted[sku]))
        audit_events(s)
    finally:
        s.stop()


# ---- transfers -------------------------------------------------------------------------------

def snapshot(c, skus, stores):
    return {(sku, st): avail(c, sku, st) for sku in skus for st in stores}


def test_transfers():
    s = start_stockd()
    try:
        with s.client() as c:
            store(c, "S2")
            product(c, "T1", 10)
            product(c, "T2", 10)
            product(c, "T3", 2)
            body = {"fromStore": "S1", "toStore": "S2",
                    "lines": [{"sku": "T1", "qty": 4}, {"sku": "T2", "qty": 1}]}
            key = new_key()
            r = c.post("/v1/transfers", body, key=key)
            check_status(r, 201, "transfer T1:4 T2:1 to S2")
            j = r.json
            check(j.get("transferId", "").startswith("trf_"), "transferId %r" % j)
            check_eq({k: j.get(k) for k in ("status", "fromStore", "toStore", "lines")},
                     {"status": "COMPLETED", "fromStore": "S1", "toStore": "S2",
                      "lines": body["lines"]}, "transfer body")
            check_eq(avail(c, "T1", "S1"), (6, 0, 6), "T1 left in S1")
            check_eq(avail(c, "T1", "S2"), (4, 0, 4), "T1 item created in S2")
            check_eq(avail(c, "T2", "S2"), (1, 0, 1), "T2 item created in S2")
            check_replay(c, "/v1/transfers", body, (key, r), "transfer")
            check_eq(avail(c, "T1", "S1"), (6, 0, 6), "a replay moves nothing")
            # Atomicity: the last of three lines is short, so nothing moves anywhere.
            skus, stores = ["T1", "T2", "T3"], ["S1", "S2"]
            before = snapshot(c, skus, stores)
            r = c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S2", "lines": [
                {"sku": "T1", "qty": 1}, {"sku": "T2", "qty": 1}, {"sku": "T3", "qty": 3}]},
                key=new_key())
            body409 = check_problem(r, 409, "insufficient_stock", "3-line transfer, last short")
            check("T3" in body409.get("detail", ""), "detail names T3: %r" % body409)
            check_eq(body409.get("available"), 2, "available of T3")
            check_eq(snapshot(c, skus, stores), before, "per store after the refused transfer")
            # Reserved units cannot be moved.
            check_status(reserve(c, [("T3", 2)], store_id="S1"), 201, "hold all of T3")
            r = c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                         "lines": [{"sku": "T3", "qty": 1}]}, key=new_key())
            check_problem(r, 409, "insufficient_stock", "transfer of reserved units")
            # Duplicate lines count together.
            r = c.post("/v1/transfers", {"fromStore": "S2", "toStore": "S1", "lines": [
                {"sku": "T1", "qty": 3}, {"sku": "T1", "qty": 2}]}, key=new_key())
            check_problem(r, 409, "insufficient_stock", "two lines of T1 over S2's 4")
            check_eq(snapshot(c, skus, stores)[("T1", "S2")], (4, 0, 4), "T1 in S2 unchanged")
            # Errors.
            ok_lines = [{"sku": "T1", "qty": 1}]
            r = c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S1", "lines": ok_lines},
                       key=new_key())
            check_problem(r, 400, None, "transfer to the same store")
            r = c.post("/v1/transfers", {"fromStore": "S9", "toStore": "S1", "lines": ok_lines},
                       key=new_key())
            check_problem(r, 404, "unknown_store", "unknown fromStore")
            r = c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S9", "lines": ok_lines},
                       key=new_key())
            check_problem(r, 404, "unknown_store", "unknown toStore")
            r = c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                         "lines": [{"sku": "NOPE", "qty": 1}]}, key=new_key())
            check_problem(r, 404, "unknown_sku", "unknown sku")
            for what, bad in [("no lines", {"fromStore": "S1", "toStore": "S2"}),
                              ("empty lines", {"fromStore": "S1", "toStore": "S2", "lines": []}),
                              ("qty 0", {"fromStore": "S1", "toStore": "S2",
                                         "lines": [{"sku": "T1", "qty": 0}]}),
                              ("no toStore", {"fromStore": "S1", "lines": ok_lines})]:
                check_problem(c.post("/v1/transfers", bad, key=new_key()), 400, None,
                              "transfer with " + what)
            check_problem(c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                                   "lines": ok_lines}), 428,
                          "idempotency_key_required", "transfer without a key")
            check_eq(snapshot(c, ["T1", "T2"], stores),
                     {("T1", "S1"): (6, 0, 6), ("T1", "S2"): (4, 0, 4),
                      ("T2", "S1"): (9, 0, 9), ("T2", "S2"): (1, 0, 1)},
                     "refused transfers changed nothing")
            audit_events(s)
    finally:
        s.stop()


# ---- reconciliations and set-absolute --------------------------------------------------------

def test_reconciliations():
    s = start_stockd()
    try:
        with s.client() as c:
            store(c, "S2")
            product(c, "K1", 10)
            product(c, "K2", 5)
            product(c, "K3", 7, store_id="S2")
            check_status(reserve(c, [("K2", 3)], store_id="S1"), 201, "hold 3 of K2")
            body = {"storeId": "S1", "snapshotOnHand": {"K1": 7, "K2": 5, "K3": 4},
                    "source": "cycle-count-1"}
            key = new_key()
            r = c.post("/v1/reconciliations", body, key=key)
            check_status(r, 200, "reconciliation")
            j = r.json
            check(isinstance(j.get("reconciliationId"), str) and j["reconciliationId"],
                  "reconciliationId %r" % j)
            check_eq((j.get("storeId"), j.get("source")), ("S1", "cycle-count-1"),
                     "storeId and source")
            by_sku = {a["sku"]: a for a in j["adjustments"]}
            check_eq(by_sku, {
                "K1": {"sku": "K1", "before": 10, "after": 7, "delta": -3},
                "K2": {"sku": "K2", "before": 5, "after": 5, "delta": 0},
                "K3": {"sku": "K3", "before": 0, "after": 4, "delta": 4}}, "adjustments")
            check_eq(avail(c, "K1", "S1"), (7, 0, 7), "K1 after the count")
            check_eq(avail(c, "K2", "S1"), (5, 3, 2), "K2 (reserved kept)")
            check_eq(avail(c, "K3", "S1"), (4, 0, 4), "K3 item created in S1")
            check_eq(avail(c, "K3", "S2"), (7, 0, 7), "K3 in S2 untouched")
            check_replay(c, "/v1/reconciliations", body, (key, r), "reconciliation")
            r = c.post("/v1/reconciliations", {"storeId": "S2", "source": "zero",
                                               "snapshotOnHand": {"K1": 0}}, key=new_key())
            check_status(r, 200, "count 0 of an item S2 does not have")
            check_eq(r.json["adjustments"], [{"sku": "K1", "before": 0, "after": 0, "delta": 0}],
                     "adjustments of a zero count")
            check_eq(avail(c, "K1", "S1"), (7, 0, 7), "a replay changes nothing")
            # A count below reserved: 409, and no line applied.
            r = c.post("/v1/reconciliations", {"storeId": "S1", "source": "bad",
                                               "snapshotOnHand": {"K1": 1, "K2": 2}},
                       key=new_key())
            body409 = check_problem(r, 409, None, "count below reserved")
            check("K2" in body409.get("detail", ""), "detail names K2: %r" % body409)
            check_eq(avail(c, "K1", "S1"), (7, 0, 7), "K1 unchanged by the refused count")
            check_eq(avail(c, "K2", "S1"), (5, 3, 2), "K2 unchanged")
            r = c.post("/v1/reconciliations", {"storeId": "S9", "source": "x",
                                               "snapshotOnHand": {"K1": 1}}, key=new_key())
            check_problem(r, 404, "unknown_store", "unknown store")
            r = c.post("/v1/reconciliations", {"storeId": "S1", "source": "x",
                                               "snapshotOnHand": {"K1": 1, "NOPE": 1}},
                       key=new_key())
            check_problem(r, 404, "unknown_sku", "unknown sku")
            check_eq(avail(c, "K1", "S1"), (7, 0, 7), "K1 unchanged by the unknown sku")
            for what, snap in [("empty", {}), ("negative", {"K1": -1}), ("string", {"K1": "3"}),
                               ("bad sku", {"a b": 1}), ("1e9+1", {"K1": 1000000001}),
                               ("an array", [["K1", 1]])]:
                r = c.post("/v1/reconciliations", {"storeId": "S1", "source": "x",
                                                   "snapshotOnHand": snap}, key=new_key())
                check_problem(r, 400, None, "snapshot " + what)
            r = c.post("/v1/reconciliations", {"storeId": "S1", "snapshotOnHand": {"K1": 1}},
                       key=new_key())
            check_problem(r, 400, None, "reconciliation without source")
            audit_events(s)
    finally:
        s.stop()


def test_set_absolute():
    s = start_stockd()
    try:
        with s.client() as c:
            store(c, "S2")
            product(c, "X", 10)
            body = {"storeId": "S1", "sku": "X", "onHand": 25, "countRef": "count-1"}
            key = new_key()
            r = c.post("/v1/items:set-absolute", body, key=key)
            check_status(r, 200, "set-absolute X to 25")
            j = r.json
            check_eq({k: j.get(k) for k in ("storeId", "sku", "onHand", "reserved", "available")},
                     {"storeId": "S1", "sku": "X", "onHand": 25, "reserved": 0, "available": 25},
                     "item body")
            v = j["version"]
            check(isinstance(v, int) and v >= 2, "version %r after two changes" % v)
            check_replay(c, "/v1/items:set-absolute", body, (key, r), "set-absolute")
            r = c.post("/v1/items:set-absolute", dict(body, onHand=20, countRef="count-2"),
                       key=new_key(), headers={"If-Match": '"%d"' % v})
            check_status(r, 200, "set-absolute with the current If-Match")
            check_eq((r.json["onHand"], r.json["version"]), (20, v + 1), "after If-Match set")
            r = c.post("/v1/items:set-absolute", dict(body, onHand=30), key=new_key(),
                       headers={"If-Match": '"%d"' % v})
            b = check_problem(r, 409, "version_conflict", "set-absolute with a stale If-Match")
            check_eq(b.get("currentVersion"), v + 1, "currentVersion")
            check_eq(avail(c, "X", "S1"), (20, 0, 20), "X unchanged by the stale set")
            # Not below reserved.
            check_status(reserve(c, [("X", 5)], store_id="S1"), 201, "hold 5 of X")
            r = c.post("/v1/items:set-absolute", dict(body, onHand=4), key=new_key())
            check_problem(r, 409, None, "onHand below reserved")
            check_eq(avail(c, "X", "S1"), (20, 5, 15), "X unchanged by the refused set")
            r = c.post("/v1/items:set-absolute", dict(body, onHand=5), key=new_key())
            check_status(r, 200, "onHand equal to reserved")
            check_eq((r.json["onHand"], r.json["reserved"], r.json["available"]), (5, 5, 0),
                     "item at onHand == reserved")
            # A store without the item: it is created.
            r = c.post("/v1/items:set-absolute", {"storeId": "S2", "sku": "X", "onHand": 3,
                                                  "countRef": "first-count"}, key=new_key())
            check_status(r, 200, "set-absolute creates the item in S2")
            check_eq(avail(c, "X", "S2"), (3, 0, 3), "X in S2")
            check_problem(c.post("/v1/items:set-absolute", dict(body, sku="NOPE"),
                                 key=new_key()), 404, "unknown_sku", "unknown sku")
            check_problem(c.post("/v1/items:set-absolute", dict(body, storeId="S9"),
                                 key=new_key()), 404, "unknown_store", "unknown store")
            for what, bad in [("onHand -1", dict(body, onHand=-1)),
                              ("onHand string", dict(body, onHand="5")),
                              ("no onHand", {k: v for k, v in body.items() if k != "onHand"}),
                              ("no countRef", {k: v for k, v in body.items() if k != "countRef"}),
                              ("no sku", {k: v for k, v in body.items() if k != "sku"})]:
                check_problem(c.post("/v1/items:set-absolute", bad, key=new_key()), 400, None,
                              "set-absolute with " + what)
            check_problem(c.post("/v1/items:set-absolute", body, key=new_key(),
                                 headers={"If-Match": "W/\"1\""}), 400, None, "weak If-Match")
            check_problem(c.post("/v1/items:set-absolute", body), 428,
                          "idempotency_key_required", "set-absolute without a key")
            check_eq(avail(c, "X", "S1"), (5, 5, 0), "X at the end")
            audit_events(s)
    finally:
        s.stop()


# ---- idempotency of the reservation commands -------------------------------------------------

def test_reservation_commands_idempotent():
    s = start_stockd()
    try:
        with s.client() as c:
            product(c, "I", 10)
            body = {"storeId": "S1", "lines": [{"sku": "I", "qty": 2}], "ttlSeconds": 600,
                    "customerId": "ci"}
            key = new_key()
            first = c.post("/v1/reservations", body, key=key)
            check_status(first, 201, "reserve")
            check(first.headers.get("idempotent-replayed") in (None, "false"),
                  "a first response is not marked replayed")
            check_replay(c, "/v1/reservations", body, (key, first), "reservation")
            check_eq(avail(c, "I", "S1"), (10, 2, 8), "one reservation despite the replay")
            r = c.post("/v1/reservations", dict(body, ttlSeconds=601), key=key)
            check_problem(r, 422, "idempotency_key_reused", "same key, other body")
            res_id = first.json["reservationId"]
            path = "/v1/reservations/%s:confirm" % res_id
            ckey = new_key()
            r = c.post(path, {"paymentRef": "p"}, key=ckey)
            check_status(r, 200, "confirm")
            check_replay(c, path, {"paymentRef": "p"}, (ckey, r), "confirm")
            check_eq(avail(c, "I", "S1"), (8, 0, 8), "one confirm despite the replay")
            # A refusal is replayed as well.
            rkey = new_key()
            r = c.post(path, {"paymentRef": "q"}, key=rkey)
            check_problem(r, 409, "reservation_not_active", "second confirm")
            check_replay(c, path, {"paymentRef": "q"}, (rkey, r), "refused confirm")
            r2 = reserve(c, [("I", 1)], store_id="S1")
            cpath = "/v1/reservations/%s:cancel" % r2.json["reservationId"]
            xkey = new_key()
            r = c.post(cpath, {"reason": "r"}, key=xkey)
            check_status(r, 200, "cancel")
            check_replay(c, cpath, {"reason": "r"}, (xkey, r), "cancel")
            check_eq(avail(c, "I", "S1"), (8, 0, 8), "after cancel and its replay")
            # Concurrent duplicates: the first response for all of them.
            dkey = new_key()
            dbody = {"storeId": "S1", "lines": [{"sku": "I", "qty": 1}], "ttlSeconds": 600,
                     "customerId": "dup"}
            bodies = [None] * 8
            barrier = threading.Barrier(8, timeout=30)

            def dup(i):
                with s.client() as cc:
                    cc.connect()
                    barrier.wait()
                    rr = cc.post("/v1/reservations", dbody, key=dkey)
                    bodies[i] = (rr.status, rr.body)

            run_threads(dup, 8)
            check_eq(len(set(bodies)), 1, "8 concurrent duplicates got one response")
            check_eq(bodies[0][0], 201, "status of the duplicates")
            check_eq(avail(c, "I", "S1"), (8, 1, 7), "one reservation for 8 duplicates")
            audit_events(s)
    finally:
        s.stop()


# ---- reservations with many lines (regressions) ----------------------------------------------

LONG_SKU = "L" * 64  # the longest sku: the largest reply per line


def test_many_line_reservations():
    """Confirm and cancel answer with all the reservation's lines: 100 lines of a 64-byte sku
    make a ~9 KiB body (stockd used to abort: the reply did not fit its inline buffer)."""
    s = start_stockd()
    try:
        with s.client() as c:
            product(c, LONG_SKU, 1000)
            ids = []
            for _ in range(3):
                r = reserve(c, [(LONG_SKU, 1)] * 100, store_id="S1", ttl=TTL_LONG if ids else 1)
                check_status(r, 201, "reserve 100 lines")
                check_eq(len(r.json["lines"]), 100, "lines in the reply")
                ids.append(r.json["reservationId"])
            g = c.get("/v1/reservations/" + ids[1])
            check_status(g, 200, "GET a 100-line reservation")
            r = confirm(c, ids[1], {"paymentRef": "p" * 100})
            check_status(r, 200, "confirm a 100-line reservation")
            check_eq((r.json["status"], len(r.json["lines"])), ("CONFIRMED", 100),
                     "confirmed reply")
            r = cancel(c, ids[2], "r" * 200)
            check_status(r, 200, "cancel a 100-line reservation")
            check_eq((r.json["status"], len(r.json["lines"])), ("CANCELLED", 100),
                     "cancelled reply")
            wait_for(lambda: avail(c, LONG_SKU, "S1"), (900, 0, 900), 5.0,
                     "after confirm, cancel and expiry of 100-line reservations")
            check_problem(confirm(c, ids[0]), 409, "reservation_expired",
                          "confirm an expired 100-line reservation")
            check(s.alive(), "stockd died")
            audit_events(s)
    finally:
        s.stop()


def test_concurrent_confirms_of_large_reservations():
    """Confirms arriving together land in one batch; each makes one event per line of its
    reservation (stockd used to count none of them against the batch's event budget and
    aborted once a batch held more than ~80 confirms of 100-line reservations)."""
    s = start_stockd(threads=4)
    n = 200
    try:
        with s.client() as c:
            product(c, "BIG", 100 * n)
            ids = []
            for i in range(n):
                r = reserve(c, [("BIG", 1)] * 100, store_id="S1", customer="b%d" % i)
                check_status(r, 201, "reserve 100 lines #%d" % i)
                ids.append(r.json["reservationId"])
        barrier = threading.Barrier(n, timeout=30)
        statuses = [None] * n

        def one(i):
            with s.client() as c:
                c.connect()
                barrier.wait()
                r = confirm(c, ids[i]) if i % 4 else cancel(c, ids[i])
                statuses[i] = r.status

        run_threads(one, n, timeout=60)
        check(s.alive(), "stockd died under concurrent confirms")
        check_eq(statuses, [200] * n, "statuses of the confirms and cancels")
        confirmed = sum(1 for i in range(n) if i % 4)
        with s.client() as c:
            check_eq(avail(c, "BIG", "S1"), (100 * (n - confirmed), 0, 100 * (n - confirmed)),
                     "BIG after the confirms and cancels")
        audit_events(s)
    finally:
        s.stop()


def test_confirm_races_expiry():
    """Confirms sent around expiresAt: each either wins (200, units sold) or finds the
    reservation expired (409), never both, never neither."""
    s = start_stockd(threads=4)
    n = 40
    try:
        with s.client() as c:
            product(c, "RACE", 100)
            made = []
            for i in range(n):
                r = reserve(c, [("RACE", 2)], store_id="S1", ttl=1, customer="r%d" % i)
                check_status(r, 201, "reserve RACE #%d" % i)
                made.append((r.json["reservationId"], r.json["expiresAtMs"]))
        barrier = threading.Barrier(n, timeout=30)
        outcomes = [None] * n

        def one(i):
            with s.client() as c:
                c.connect()
                barrier.wait()
                # Spread the confirms from 60 ms before to 60 ms after this one's expiry.
                target_ms = made[i][1] - 60 + 3 * i
                time.sleep(max(0.0, target_ms / 1000.0 - time.time()))
                r = confirm(c, made[i][0])
                outcomes[i] = (r.status, (r.json or {}).get("code") or r.json.get("status"))

        run_threads(one, n)
        won = sum(1 for o in outcomes if o == (200, "CONFIRMED"))
        late = sum(1 for o in outcomes if o == (409, "reservation_expired"))
        print("  confirm vs expiry: %d won, %d expired" % (won, late))
        check_eq(won + late, n, "every confirm won or found the reservation expired: %r"
                 % outcomes)
        with s.client() as c:
            wait_for(lambda: avail(c, "RACE", "S1"), (100 - 2 * won, 0, 100 - 2 * won), 3.0,
                     "RACE after %d confirms won and %d expired" % (won, late))
            for res_id, _ in made:
                st = c.get("/v1/reservations/" + res_id).json.get("status")
                check(st in ("CONFIRMED", "EXPIRED"), "%s ended %r" % (res_id, st))
        audit_events(s)
    finally:
        s.stop()


def test_kill9_keeps_acknowledged_reservations():
    """kill -9 while reservations are made and confirmed: after the restart every acknowledged
    reservation and confirm is there, reserved equals the ACTIVE reservations' units, and the
    event log still audits."""
    s = start_stockd(threads=4)
    try:
        with s.client() as c:
            product(c, "K9", 100000)
        acked = {}  # reservationId -> (qty, "ACTIVE" | "CONFIRMED") as acknowledged
        lock = threading.Lock()
        stop = threading.Event()

        def worker(i):
            rng = random.Random(77 + i)
            try:
                with s.client(timeout=5) as c:
                    while not stop.is_set():
                        qty = rng.randint(1, 3)
                        r = reserve(c, [("K9", qty)], store_id="S1", customer="k%d" % i)
                        if r.status != 201:
                            continue
                        with lock:
                            acked[r.json["reservationId"]] = (qty, "ACTIVE")
                        if rng.random() < 0.5:
                            r2 = confirm(c, r.json["reservationId"])
                            if r2.status == 200:
                                with lock:
                                    acked[r.json["reservationId"]] = (qty, "CONFIRMED")
            except (OSError, http.client.HTTPException):
                pass  # the server died under us: expected

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.8)
        s.kill9()
        stop.set()
        for t in threads:
            t.join(10)
        check(len(acked) > 10, "only %d reservations acknowledged before the kill" % len(acked))
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            active_units = 0
            for res_id, (qty, status) in sorted(acked.items()):
                r = c.get("/v1/reservations/" + res_id)
                check_status(r, 200, "acknowledged %s after kill -9" % res_id)
                got = r.json.get("status")
                if status == "CONFIRMED":
                    check_eq(got, "CONFIRMED", "acknowledged confirm of %s" % res_id)
                else:
                    check(got in ("ACTIVE", "CONFIRMED"), "%s is %r" % (res_id, got))
                if got == "ACTIVE":
                    active_units += qty
            on_hand, reserved, _ = avail(c, "K9", "S1")
            check(reserved >= active_units, "reserved %d < the acknowledged ACTIVE units %d"
                  % (reserved, active_units))
            # Every reservation that exists (acknowledged or not): reserved is their sum.
            all_active = 0
            seq = 1
            while True:
                r = c.get("/v1/reservations/res_%d" % seq)
                if r.status == 404:
                    break
                check_status(r, 200, "GET res_%d" % seq)
                if r.json["status"] == "ACTIVE":
                    all_active += sum(line["qty"] for line in r.json["lines"])
                seq += 1
            check(seq - 1 >= len(acked), "%d reservations stored, %d acknowledged"
                  % (seq - 1, len(acked)))
            check_eq(reserved, all_active, "reserved vs the ACTIVE reservations after kill -9")
        sums = audit_events(s)
        check_eq(sums[("S1", "K9")], (on_hand, reserved), "audit vs availability")
    finally:
        s.stop()


ACTIVE_MAX = 16384  # RESERVATIONS_ACTIVE_MAX (svc_limits.h)


def test_capacity_and_expiry_under_churn():
    """The active-reservation table is bounded: one past RESERVATIONS_ACTIVE_MAX answers 507
    capacity_exceeded, and an ended one frees a slot. Then churn: a long-lived reservation
    stays at the head of the expiry heap while 2 x ACTIVE_MAX others are created and
    cancelled behind it; a 1 s reservation made afterwards must still expire on time (stockd
    used to drop its timer once the heap was full of the cancelled ones' stale entries)."""
    s = start_stockd(threads=4)
    workers = 8
    try:
        with s.client() as c:
            product(c, "CAP", 10 ** 6)
            blocker = reserve(c, [("CAP", 1)], store_id="S1", ttl=300)
            check_status(blocker, 201, "the long-lived reservation")
        made = [[] for _ in range(workers)]
        refused = [0] * workers

        def fill(i):
            with s.client() as c:
                while True:
                    r = reserve(c, [("CAP", 1)], store_id="S1")
                    if r.status == 201:
                        made[i].append(r.json["reservationId"])
                        continue
                    check_problem(r, 507, "capacity_exceeded", "reservation past capacity")
                    refused[i] += 1
                    return

        run_threads(fill, workers, timeout=60)
        check_eq(sum(len(m) for m in made) + 1, ACTIVE_MAX, "reservations until 507")
        with s.client() as c:
            check_eq(avail(c, "CAP", "S1")[1], ACTIVE_MAX, "reserved at capacity")

        def cancel_all(i):
            with s.client() as c:
                for res_id in made[i]:
                    check_status(cancel(c, res_id), 200, "cancel " + res_id)

        run_threads(cancel_all, workers, timeout=60)
        cycles = (ACTIVE_MAX + workers) // workers

        def churn(i):
            with s.client() as c:
                for _ in range(cycles):
                    r = reserve(c, [("CAP", 1)], store_id="S1")
                    check_status(r, 201, "churn reservation")
                    check_status(cancel(c, r.json["reservationId"]), 200, "churn cancel")

        run_threads(churn, workers, timeout=60)
        with s.client() as c:
            check_eq(avail(c, "CAP", "S1"), (10 ** 6, 1, 10 ** 6 - 1), "only the blocker held")
            probe = reserve(c, [("CAP", 5)], store_id="S1", ttl=1)
            check_status(probe, 201, "the 1 s reservation after the churn")
            wait_for(lambda: avail(c, "CAP", "S1")[1], 1, 5.0,
                     "reserved after the 1 s reservation's TTL (heap full of stale entries)")
            check_problem(confirm(c, probe.json["reservationId"]), 409, "reservation_expired",
                          "confirm the expired probe")
            check_status(confirm(c, blocker.json["reservationId"]), 200, "confirm the blocker")
        audit_events(s)
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_reservation_lifecycle, test_reservation_store_choice, test_reservation_errors,
          test_ttl_expiry_restores_availability, test_restart_keeps_and_expires_reservations,
          test_concurrent_reservations_last_units,
          test_concurrent_transfers_purchases_reservations, test_transfers,
          test_reconciliations, test_set_absolute, test_reservation_commands_idempotent,
          test_confirm_races_expiry, test_kill9_keeps_acknowledged_reservations,
          test_many_line_reservations,
          test_concurrent_confirms_of_large_reservations, test_capacity_and_expiry_under_churn])
