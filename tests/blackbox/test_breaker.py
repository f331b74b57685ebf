"""Black-box tests of the circuit breaker around the payment provider (issue 11): with the
in-process simulator timing out every charge (PUT /v1/admin/payment {"timeoutRate": 1}), the
circuit opens (stockd_payment_circuit_state, stockd_payment_circuit_opens_total, /health
"degraded" with a payment_provider check, paymentCircuit in GET /v1/admin/workers); while it is
open the provider sees only a few probe charges per cool-down, not the retries of every order
(stockd_payment_provider_charges_total); no order expires (their TTL passes) and none is
dead-lettered, for longer than their attempts and backoff would last without the breaker.
With the timeouts turned off a probe closes the circuit, every order ends PAID, charged once
(the simulator's ledger), and /health is ok again. Both backends."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_status, main,  # noqa: E402
                     new_key, start_stockd)

ORDERS = 20
TTL_S = 2
WAIT_S = 60.0
# Without the breaker an order's 8 attempts with backoff 50 ms * 2^k (+50% jitter) end in the
# dead-letter table within about 10 s (test_dlt.py): the outage is watched for longer.
OUTAGE_S = 12.0
# src/pay/pay_breaker.h: the probes a half-open circuit lets through, and the shortest
# cool-down between two half-open rounds.
PROBES_MAX = 3
COOLDOWN_MIN_S = 1.0
STATES = {0: "closed", 1: "half_open", 2: "open"}


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def order(c, sku, ttl):
    r = c.post("/v1/orders", {"customerId": "c-1", "lines": [{"sku": sku, "qty": 1}],
                              "ttlSeconds": ttl}, key=new_key())
    check_status(r, 201, "POST /v1/orders")
    return r.json["orderId"]


def put(c, path, body):
    return c.request("PUT", path, json.dumps(body).encode(), {"Content-Type": "application/json"})


def metrics(c):
    r = c.get("/metrics")
    check_status(r, 200, "GET /metrics")
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def health(c):
    r = c.get("/health")
    check_status(r, 200, "GET /health (liveness: 200 whatever the circuit)")
    return r.json


def check_healthy(c, what, payment=True):
    """/health says ok, every check ok, the payment check there (closed) or not."""
    h = health(c)
    check_eq(h["status"], "ok", "%s: %r" % (what, h))
    check(all(v["status"] == "ok" for v in h["checks"].values()), "%s: %r" % (what, h))
    check_eq("payment" in h["checks"], payment, "%s: the payment check: %r" % (what, h))
    if payment:
        check_eq(h["checks"]["payment"]["circuit"], "closed", "%s: circuit" % what)


def circuit(c):
    r = c.get("/v1/admin/workers")
    check_status(r, 200, "GET /v1/admin/workers")
    return r.json["paymentCircuit"]


def statuses(c, ids):
    out = {}
    for o in ids:
        r = c.get("/v1/orders/" + o)
        check_status(r, 200, "GET " + o)
        out[o] = r.json["status"]
    return out


def dead_letters(c):
    r = c.get("/v1/dlt")
    check_status(r, 200, "GET /v1/dlt")
    return r.json["deadLetters"]


def wait_for(what, predicate, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        check(time.monotonic() < deadline, "%s: not within %.0f s" % (what, timeout))
        time.sleep(0.1)


def check_degraded(c):
    h = health(c)
    check_eq(h["status"], "degraded", "/health while the circuit is not closed: %r" % h)
    pay = h["checks"]["payment"]
    check_eq(pay["status"], "degraded", "the payment check: %r" % h)
    check_eq(pay["name"], "payment_provider", "the check names the provider")
    check_eq(pay["provider"], "simulator", "the provider")
    check(pay["circuit"] in ("open", "half_open"), "circuit state: %r" % h)
    check_eq([k for k, v in h["checks"].items() if v["status"] != "ok"], ["payment"],
             "only the payment check is not ok: %r" % h)


def watch_outage(c, ids):
    """Watches the open circuit for OUTAGE_S: the orders wait CONFIRMED (never EXPIRED), no
    dead letter, the circuit never closes, and the provider sees probes only."""
    m = metrics(c)
    started = time.monotonic()
    charges_before = m["stockd_payment_provider_charges_total"]
    refused_before = m["stockd_payment_circuit_refused_total"]
    while time.monotonic() - started < OUTAGE_S:
        m = metrics(c)
        check(m["stockd_payment_circuit_state"] in (1, 2), "the circuit closed during the outage")
        check_eq(m["stockd_dead_letters"], 0, "no dead letter during the outage")
        for o, st in statuses(c, ids).items():
            check_eq(st, "CONFIRMED", "%s waits in doubt (its TTL has passed)" % o)
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    m = metrics(c)
    probes = m["stockd_payment_provider_charges_total"] - charges_before
    # Half-open rounds start at least COOLDOWN_MIN_S apart, each with at most PROBES_MAX
    # charges; one round may have begun just before the watch. A slow machine only makes
    # fewer rounds. Without the breaker, the 20 orders' retries would be ~140 charges.
    bound = PROBES_MAX * (2 + int(elapsed / COOLDOWN_MIN_S))
    check(probes <= bound, "%d charges reached the provider in %.1f s of outage, at most %d "
          "probes expected" % (probes, elapsed, bound))
    check(m["stockd_payment_circuit_refused_total"] > refused_before or probes > 0,
          "the worker kept asking (refused or probed) during the outage")
    check(m["stockd_payment_circuit_opens_total"] >= 1, "opened")
    check_eq(dead_letters(c), [], "the dead-letter table stays empty")
    check_degraded(c)


def test_outage_opens_the_circuit_orders_wait_then_pay():
    s = start_stockd()
    with s.client() as c:
        product(c, "CB", 100)
        check_healthy(c, "/health before")
        m = metrics(c)
        check_eq(m["stockd_payment_circuit_state"], 0, "closed at start")
        check_eq(m["stockd_payment_circuit_opens_total"], 0, "never opened")
        check_eq(circuit(c)["state"], "closed", "paymentCircuit at start")
        check_status(put(c, "/v1/admin/payment", {"timeoutRate": 1}), 200, "every charge times out")
        ids = [order(c, "CB", TTL_S) for _ in range(ORDERS)]
        wait_for("the circuit opens",
                 lambda: metrics(c)["stockd_payment_circuit_opens_total"] >= 1)
        check(metrics(c)["stockd_payment_circuit_consecutive_failures"] >= 1, "failures counted")
        check_degraded(c)
        cb = circuit(c)
        check(cb["state"] in ("open", "half_open") and cb["opens"] >= 1, "workers: %r" % cb)
        check_eq(cb["provider"], "simulator", "workers: provider")
        # Every order has reached the payment stage (in doubt) before its TTL is watched.
        wait_for("every order in doubt", lambda: all(
            st == "CONFIRMED" for st in statuses(c, ids).values()))
        watch_outage(c, ids)
        check_status(put(c, "/v1/admin/payment", {"timeoutRate": 0}), 200, "provider back")
        wait_for("every order PAID", lambda: all(
            st == "PAID" for st in statuses(c, ids).values()))
        m = metrics(c)
        check_eq(STATES[int(m["stockd_payment_circuit_state"])], "closed", "closed again")
        check_eq(m["stockd_payment_circuit_consecutive_failures"], 0, "no failure in a row")
        check_eq(m["stockd_dead_letters"], 0, "no dead letter")
        check_healthy(c, "/health after")
        check_eq(circuit(c)["state"], "closed", "paymentCircuit after")
        r = c.get("/v1/availability?sku=CB&storeId=S1")
        check_eq((r.json["onHand"], r.json["reserved"]), (100 - ORDERS, 0), "sold, none held")
        for o in ids:
            history = [h["status"] for h in c.get("/v1/orders/" + o).json["history"]]
            check_eq(history, ["PENDING", "CONFIRMED", "PAID"], "%s history" % o)
    charges = s.payment_ledger()
    for o in ids:
        check_eq(charges.get(o), ["ok"], "%s charged once" % o)
    audit_events(s)
    s.stop()


def test_workers_off_report_no_circuit():
    s = start_stockd(["--workers", "off"])
    with s.client() as c:
        check_healthy(c, "/health", payment=False)
        m = metrics(c)
        check_eq(m["stockd_payment_circuit_state"], 0, "closed")
        check_eq(m["stockd_payment_provider_charges_total"], 0, "no charge")
        check_eq(circuit(c), None, "no circuit without workers")
    s.stop()


if __name__ == "__main__":
    main([test_outage_opens_the_circuit_orders_wait_then_pay, test_workers_off_report_no_circuit])
