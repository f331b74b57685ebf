"""Black-box tests of the HTTP payment provider (stockd --payment-url, issue 11) against the
real standalone simulator, stockd-paysim: the happy path to PAID, every charge declined, charges
that time out and then succeed, kill -9 of stockd during a burst of payments, and the simulator
killed while orders wait for their charge (they stay CONFIRMED, none expires, all end PAID when
it is back). The simulator's ledger (one line per real charge, written before it answers)
proves that no key was charged twice and that an order is PAID exactly when its key was
charged "ok". Both backends."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status,  # noqa: E402
                     main, start_paysim, start_stockd)
from test_breaker import health, metrics  # noqa: E402
from test_checkout import avail, history, order, product, wait_final  # noqa: E402

# The outage the simulator-down test watches: longer than the attempts' backoff (~6 s).
OUTAGE_S = 9

WAIT_S = 30.0
TIMEOUT_MS = "400"  # stockd's deadline per charge in these tests (--payment-timeout-ms)


def stockd_for(sim, extra=None, data_dir=None):
    args = ["--payment-url", sim.url(), "--payment-timeout-ms", TIMEOUT_MS] + list(extra or [])
    return start_stockd(args, data_dir=data_dir)


def wait_until(what, cond):
    """Polls cond() until it is true; fails after WAIT_S (a bound, not a timing assertion)."""
    deadline = time.monotonic() + WAIT_S
    while not cond():
        check(time.monotonic() < deadline, "%s: not within %.0f s" % (what, WAIT_S))
        time.sleep(0.05)


def status_of(c, oid):
    r = c.get("/v1/orders/" + oid)
    check_status(r, 200, "GET " + oid)
    return r.json["status"]


def check_goods_iff_charge(c, sim, ids):
    """Every order of ids ended PAID with exactly one "ok" line, or PAYMENT_FAILED with exactly
    one "declined" line; no key is in the ledger twice, and every key charged "ok" is a PAID
    order (orders not in ids too: a POST cut by a kill may have made one)."""
    led = sim.ledger()
    for key, outcomes in led.items():
        check(len(outcomes) == 1, "%s is in the ledger %d times: %s" % (key, len(outcomes), outcomes))
        if outcomes == ["ok"]:
            check_eq(status_of(c, key), "PAID", "%s was charged" % key)
    for oid in ids:
        o = wait_final(c, oid)
        want = {"PAID": ["ok"], "PAYMENT_FAILED": ["declined"]}.get(o["status"])
        check(want is not None, "%s ended %s" % (oid, o["status"]))
        check_eq(led.get(oid), want, "the ledger of %s (%s)" % (oid, o["status"]))
    return led


def test_happy_path_to_paid():
    sim = start_paysim(["--latency-ms", "20"])
    s = stockd_for(sim)
    with s.client() as c:
        product(c, "HH", 10)
        r = order(c, "HH", 3)
        check_status(r, 201, "POST /v1/orders")
        oid = r.json["orderId"]
        done = wait_final(c, oid)
        check_eq(done["status"], "PAID", "final status")
        check_eq(history(done), ["PENDING", "CONFIRMED", "PAID"], "history")
        check_eq(avail(c, "HH"), (7, 0), "stock after the paid order")
        r = c.request("PUT", "/v1/admin/payment", b'{"failureRate":0.5}',
                      {"Content-Type": "application/json"})
        check_problem(r, 404, "not_found", "the in-process knobs with --payment-url")
        again = order(c, "HH", 1)
        check_status(again, 201, "a second order")
        check_eq(wait_final(c, again.json["orderId"])["status"], "PAID", "the second order")
    check_eq(sim.ledger(), {oid: ["ok"], again.json["orderId"]: ["ok"]}, "the ledger")
    with sim.client() as pc:
        r = pc.get("/payments/" + oid)
        check_status(r, 200, "the simulator's record of " + oid)
        check_eq((r.json["status"], r.json["id"]), ("succeeded", "pay_" + oid), "the record")
        check_status(pc.get("/payments/ord_999999"), 404, "a key never charged")
    st = sim.stats()
    check_eq((st["charges"], st["declines"], st["ledgerDuplicates"]), (2, 0, 0), "stats")
    audit_events(s)


def test_failure_rate_one_releases_stock():
    sim = start_paysim(["--failure-rate", "1"])
    s = stockd_for(sim)
    with s.client() as c:
        product(c, "HF", 10)
        ids = []
        for _ in range(5):
            r = order(c, "HF", 2)
            check_status(r, 201, "order")
            ids.append(r.json["orderId"])
        for oid in ids:
            o = wait_final(c, oid)
            check_eq(o["status"], "PAYMENT_FAILED", oid)
            check_eq(history(o), ["PENDING", "CONFIRMED", "PAYMENT_FAILED"], oid + " history")
        check_eq(avail(c, "HF"), (10, 0), "stock restored")
        check_goods_iff_charge(c, sim, ids)
    check_eq(sim.stats()["declines"], 5, "declines")
    audit_events(s)


def test_timeouts_then_recovery():
    """Every charge times out (no answer; the simulator may have charged meanwhile): the orders
    stay CONFIRMED while the worker asks again with the same key; once the simulator answers,
    each ends PAID, charged once."""
    sim = start_paysim(["--timeout-rate", "1", "--latency-ms", "5"])
    s = stockd_for(sim)
    with s.client() as c:
        product(c, "HT", 20)
        ids = []
        for _ in range(8):
            r = order(c, "HT", 1)
            check_status(r, 201, "order")
            ids.append(r.json["orderId"])
        wait_until("two timeouts per order", lambda: sim.stats()["timeouts"] >= 2 * len(ids))
        for oid in ids:
            check_eq(status_of(c, oid), "CONFIRMED", oid + " while its charges time out")
        sim.set_knobs(timeoutRate=0)
        for oid in ids:
            check_eq(wait_final(c, oid)["status"], "PAID", oid + " after the recovery")
        check_goods_iff_charge(c, sim, ids)
        check_eq(avail(c, "HT"), (12, 0), "stock after eight paid orders")
    st = sim.stats()
    check_eq(st["charges"], len(ids), "each key charged once")
    audit_events(s)


def test_kill9_stockd_during_payments():
    sim = start_paysim(["--latency-ms", "50", "--failure-rate", "0.2"])
    s = stockd_for(sim)
    with s.client() as c:
        product(c, "HK", 1000)
    acked = []
    lock = threading.Lock()

    def one(i):
        with s.client() as c:
            for _ in range(50):
                try:
                    r = order(c, "HK", 1)
                except OSError:
                    return  # the kill
                if r.status == 201:
                    with lock:
                        acked.append(r.json["orderId"])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    wait_until("charges under way", lambda: sim.stats()["keys"] >= 20)
    s.kill9()
    for t in threads:
        t.join(WAIT_S)
    check(len(acked) >= 20, "only %d orders acknowledged before the kill" % len(acked))
    s2 = stockd_for(sim, data_dir=s.data_dir)
    with s2.client() as c:
        wait_until("no stock held", lambda: avail(c, "HK")[1] == 0)
        led = check_goods_iff_charge(c, sim, acked)
        paid = sum(1 for outcomes in led.values() if outcomes == ["ok"])
        check_eq(avail(c, "HK"), (1000 - paid, 0), "stock after %d paid orders" % paid)
    check_eq(sim.stats()["ledgerDuplicates"], 0, "keys twice in the ledger")
    audit_events(s2)


def test_simulator_down_orders_wait():
    """The simulator is killed with charges in flight and orders keep coming: they stay
    CONFIRMED past their ttlSeconds (a charge in doubt never expires) while the circuit is
    open (metrics, /health degraded) and no dead letter is made; then the simulator
    comes back on the same port with the same ledger and every order ends PAID, charged once."""
    sim = start_paysim(["--latency-ms", "300"])
    s = stockd_for(sim)
    with s.client() as c:
        product(c, "HD", 100)
        ids = []
        for _ in range(10):
            r = order(c, "HD", 1, ttl=2)
            check_status(r, 201, "order")
            ids.append(r.json["orderId"])
        wait_until("charges with the simulator", lambda: sim.stats()["inFlight"] >= 1)
        sim.kill9()
        for _ in range(10):
            r = order(c, "HD", 1, ttl=2)
            check_status(r, 201, "order while the simulator is down")
            ids.append(r.json["orderId"])
        # The order stage confirms without the provider: every order leaves PENDING (a just
        # created one may still be PENDING for a moment).
        for oid in ids:
            wait_until(oid + " confirmed", lambda oid=oid: status_of(c, oid) != "PENDING")
        # Longer than the 8 attempts' backoff takes (about 6 s) and past every ttl: the
        # circuit opens, so the orders wait in doubt, never expire and never become dead
        # letters, however long the provider is gone.
        started = time.monotonic()
        while time.monotonic() - started < OUTAGE_S:
            for oid in ids:
                st = status_of(c, oid)
                check(st in ("CONFIRMED", "PAID"),
                      "%s is %s while the simulator is down" % (oid, st))
            check_eq(metrics(c)["stockd_dead_letters"], 0, "no dead letter during the outage")
            time.sleep(0.5)
        check(any(status_of(c, oid) == "CONFIRMED" for oid in ids), "no order waited")
        m = metrics(c)
        check(m["stockd_payment_circuit_opens_total"] >= 1, "the circuit opened: %r" % m)
        check(m["stockd_payment_circuit_state"] in (1, 2), "the circuit is not closed")
        h = health(c)
        check_eq(h["status"], "degraded", "/health while the provider is down: %r" % h)
        check_eq(h["checks"]["payment"]["name"], "payment_provider", "the check names the provider")
        check_eq(h["checks"]["payment"]["provider"], "http", "the provider")
        sim2 = start_paysim(["--latency-ms", "5"], port=sim.port, data_dir=sim.data_dir,
                            ledger_path=sim.ledger_path)
        for oid in ids:
            o = wait_final(c, oid)
            check_eq(o["status"], "PAID", oid + " after the simulator came back")
            check_eq(history(o), ["PENDING", "CONFIRMED", "PAID"], oid + " history")
        check_goods_iff_charge(c, sim2, ids)
        check_eq(avail(c, "HD"), (100 - len(ids), 0), "stock after the paid orders")
        check_eq(health(c)["status"], "ok", "/health once the provider answers again")
        check_eq(metrics(c)["stockd_payment_circuit_state"], 0, "the circuit closed again")
    audit_events(s)


if __name__ == "__main__":
    main([test_happy_path_to_paid, test_failure_rate_one_releases_stock,
          test_timeouts_then_recovery, test_kill9_stockd_during_payments,
          test_simulator_down_orders_wait])
