"""Black-box test of "durable before acknowledged" (DESIGN.md): kill -9 during a purchase burst,
restart on the same data directory, and check that no acknowledged order was lost, none exists
twice, acknowledged keys replay the same order, and stock + orders still add up. Three
kill/restart cycles on one data directory."""

import http.client
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status, describe,  # noqa: E402
                     main, new_key, run_threads, start_stockd, wait_health)

SKU = "CRASH"
STOCK = 2000
THREADS = 32
CYCLES = 3
BURST_SECONDS = 1.0
# Acknowledged sales per cycle at which we kill early, so that three cycles never sell out
# (the kill must land while purchases still succeed).
CYCLE_ACK_MAX = 450
MISSES_IN_A_ROW = 5


def hammer(server, cycle, clean=False):
    """Runs THREADS purchasing threads until the server dies; kills it with SIGKILL (clean:
    stops it with SIGTERM) after BURST_SECONDS or CYCLE_ACK_MAX acks. Returns (acked {key:
    (body, response)}, in_flight, the other responses)."""
    acked = {}
    others = []
    lock = threading.Lock()
    in_flight = [0]
    stop = threading.Event()
    barrier = threading.Barrier(THREADS + 1, timeout=30)
    errors = []

    def worker(i):
        with server.client(timeout=20) as client:
            client.connect()
            barrier.wait()
            n = 0
            while not stop.is_set():
                key = new_key("crash-%d-%d-%d" % (cycle, i, n))
                body = {"sku": SKU, "qty": 1, "customerId": "c%d-%d" % (cycle, i)}
                n += 1
                try:
                    r = client.post("/v1/purchase", body, key=key)
                except (OSError, http.client.HTTPException):
                    with lock:
                        in_flight[0] += 1  # sent (maybe), never answered: may have committed
                    return
                if r.status == 201:
                    with lock:
                        acked[key] = (body, r)
                elif r.status == 503 and clean:
                    others.append(r)  # shutting down: refused before the writer
                elif r.status != 409:
                    errors.append("unexpected %s" % describe(r))
                    return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    while time.monotonic() - started < BURST_SECONDS:
        with lock:
            if len(acked) >= CYCLE_ACK_MAX:
                break
        time.sleep(0.01)
    with lock:
        acked_at_kill = len(acked)
    if clean:
        check_eq(server.stop(), 0, "exit code of SIGTERM under load")
    else:
        server.kill9()
    stop.set()
    deadline = time.monotonic() + 30
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    check(not any(t.is_alive() for t in threads), "purchasing threads hang after the kill")
    check(not errors, "burst of cycle %d: %s" % (cycle, errors[:3]))
    check(acked_at_kill > 0, "cycle %d: no purchase acknowledged before the kill" % cycle)
    return acked, in_flight[0], others


def probe_orders(server):
    """Returns the order ids that exist: ord_1.. until MISSES_IN_A_ROW 404s in a row."""
    existing = []
    misses = 0
    n = 0
    with server.client() as client:
        while misses < MISSES_IN_A_ROW:
            n += 1
            r = client.get("/v1/orders/ord_%d" % n)
            if r.status == 200:
                check_eq(r.json.get("orderId"), "ord_%d" % n, "orderId of ord_%d" % n)
                existing.append(r.json)
                misses = 0
            elif r.status == 404:
                misses += 1
            else:
                raise AssertionError("GET ord_%d: %s" % (n, describe(r)))
    return existing


def check_acked_after_restart(server, acked, cycle):
    """Every acknowledged order is readable and as acknowledged; its key replays it."""
    items = list(acked.items())
    parts = 8
    errors = []

    def checker(i):
        with server.client() as client:
            for key, (body, first) in items[i::parts]:
                order_id = first.json["orderId"]
                r = client.get("/v1/orders/" + order_id)
                if r.status != 200:
                    errors.append("acknowledged %s lost: %s" % (order_id, describe(r)))
                    continue
                if (r.json.get("customerId"), r.json.get("lines")) != \
                        (body["customerId"], [{"sku": SKU, "qty": 1}]):
                    errors.append("%s differs from its purchase: %r" % (order_id, r.json))
                again = client.post("/v1/purchase", body, key=key, retry=True)
                if again.status != 201 or again.body != first.body or \
                        again.headers.get("idempotent-replayed") != "true":
                    errors.append("replay of %s: %s replayed=%s, first %r" % (
                        key, describe(again), again.headers.get("idempotent-replayed"),
                        first.body))

    run_threads(checker, parts, timeout=90)
    check(not errors, "cycle %d: %d acknowledged orders wrong after restart, first: %s"
          % (cycle, len(errors), errors[:3]))


def test_kill9_during_purchase_burst():
    s = start_stockd()
    try:
        with s.client() as c:
            r = c.post("/v1/products", {"sku": SKU, "name": "Crash", "initialOnHand": STOCK},
                       key=new_key())
            check_status(r, 201, "create product")
        all_acked = {}
        existing_before = 0
        unacked_total = 0
        for cycle in range(1, CYCLES + 1):
            acked, in_flight, _ = hammer(s, cycle)
            order_ids = [resp.json["orderId"] for _, resp in acked.values()]
            check_eq(len(set(order_ids)), len(order_ids),
                     "cycle %d: distinct acknowledged orderIds" % cycle)
            earlier = set(resp.json["orderId"] for _, resp in all_acked.values())
            check(not earlier & set(order_ids),
                  "cycle %d: orderIds reused from before the crash: %r"
                  % (cycle, sorted(earlier & set(order_ids))[:5]))
            all_acked.update(acked)
            s = start_stockd(data_dir=s.data_dir)
            wait_health(s)
            with s.client() as c:
                check_status(c.get("/ready"), 200, "/ready after restart")
            existing = probe_orders(s)
            existing_ids = [o["orderId"] for o in existing]
            check_eq(len(set(existing_ids)), len(existing_ids), "distinct existing orders")
            gaps = [(n, o) for n, o in enumerate(existing_ids, 1) if o != "ord_%d" % n]
            check(not gaps, "cycle %d: order numbers have gaps, first at %r"
                  % (cycle, gaps[:1]))
            missing = set(r.json["orderId"] for _, r in all_acked.values()) - set(existing_ids)
            check(not missing, "cycle %d: %d acknowledged orders lost after kill -9: %r"
                  % (cycle, len(missing), sorted(missing)[:5]))
            new_orders = len(existing) - existing_before
            unacked = new_orders - len(acked)
            check(0 <= unacked <= in_flight,
                  "cycle %d: %d orders committed without an ack, but only %d requests were "
                  "in flight at the kill" % (cycle, unacked, in_flight))
            unacked_total += unacked
            existing_before = len(existing)
            with s.client() as c:
                r = c.get("/v1/availability?sku=" + SKU)
                check_status(r, 200, "availability after restart")
                on_hand = r.json["onHand"]
            check_eq(on_hand + len(existing), STOCK,
                     "cycle %d: onHand (%d) + existing orders (%d)"
                     % (cycle, on_hand, len(existing)))
            check(on_hand > 0, "cycle %d: sold out; the kill did not land mid-sale" % cycle)
            check_acked_after_restart(s, all_acked, cycle)
            with s.client() as c:
                check_eq(c.get("/v1/availability?sku=" + SKU).json["onHand"], on_hand,
                         "cycle %d: replays after restart sold nothing" % cycle)
            print("  cycle %d: %d acknowledged, %d committed without ack, %d in flight, "
                  "onHand %d" % (cycle, len(acked), unacked, in_flight, on_hand), flush=True)
        # A last clean stop and start: the same state.
        with s.client() as c:
            before = c.get("/v1/availability?sku=" + SKU).body
        check_eq(s.stop(), 0, "clean stop")
        s = start_stockd(data_dir=s.data_dir)
        with s.client() as c:
            check_eq(c.get("/v1/availability?sku=" + SKU).body, before,
                     "availability after a clean restart")
            r = c.post("/v1/purchase", {"sku": SKU, "qty": 1, "customerId": "after"},
                       key=new_key())
            check_status(r, 201, "purchase after recovery")
            check_eq(r.json["orderId"], "ord_%d" % (existing_before + 1),
                     "the next order number after recovery")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


def test_sigterm_during_purchase_burst():
    """A clean stop under load drains the writer: every accepted command is answered, later
    ones get 503 shutting_down, and the acknowledged orders are exactly what was stored (bar
    requests whose answer was cut off when the process exited)."""
    s = start_stockd()
    try:
        with s.client() as c:
            r = c.post("/v1/products", {"sku": SKU, "name": "Term", "initialOnHand": STOCK},
                       key=new_key())
            check_status(r, 201, "create product")
        acked, in_flight, refused = hammer(s, 1, clean=True)
        for r in refused:
            check_problem(r, 503, "shutting_down", "a purchase during shutdown")
            check_eq(r.headers.get("retry-after"), "1", "Retry-After of a 503")
        s = start_stockd(data_dir=s.data_dir)
        existing = probe_orders(s)
        missing = set(r.json["orderId"] for _, r in acked.values()) - \
            set(o["orderId"] for o in existing)
        check(not missing, "%d acknowledged orders lost after SIGTERM" % len(missing))
        check(len(existing) - len(acked) <= in_flight,
              "%d orders committed without an ack, %d requests cut off"
              % (len(existing) - len(acked), in_flight))
        with s.client() as c:
            on_hand = c.get("/v1/availability?sku=" + SKU).json["onHand"]
        check_eq(on_hand + len(existing), STOCK, "onHand + existing orders")
        check_acked_after_restart(s, acked, 1)
        print("  %d acknowledged, %d refused while stopping, %d cut off"
              % (len(acked), len(refused), in_flight), flush=True)
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_kill9_during_purchase_burst, test_sigterm_during_purchase_burst])
