"""Black-box tests of checkout orders that move through workers (issue 11, first step):
POST /v1/orders holds stock (all or none), the order worker confirms, the payment worker
charges the built-in simulator and the order ends PAID (onHand -= qty) or PAYMENT_FAILED (stock
released); cancel, expiry, a race of 100 orders on 10 units, and kill -9 while payments run.
The simulator's ledger (<data_dir>/payment-ledger.txt, one line per real charge) proves that no
order was charged twice and that an order is PAID exactly when it was charged. Both backends;
on PostgreSQL also two instances on one database, the workers on one of them only."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, check_status,  # noqa: E402
                     main, new_key, new_pg_database, pg_mode, run_threads, skip_test,
                     start_stockd)

FINAL = ("PAID", "PAYMENT_FAILED", "EXPIRED", "CANCELLED")
WAIT_S = 30.0


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def avail(c, sku):
    r = c.get("/v1/availability?sku=%s&storeId=S1" % sku)
    check_status(r, 200, "availability of " + sku)
    return (r.json["onHand"], r.json["reserved"])


def order(c, sku, qty, ttl=None, key=None):
    body = {"customerId": "cust-1", "lines": [{"sku": sku, "qty": qty}]}
    if ttl is not None:
        body["ttlSeconds"] = ttl
    return c.post("/v1/orders", body, key=key or new_key())


def wait_final(c, order_id, want=FINAL):
    deadline = time.monotonic() + WAIT_S
    while True:
        r = c.get("/v1/orders/" + order_id)
        check_status(r, 200, "GET " + order_id)
        if r.json["status"] in want:
            return r.json
        check(time.monotonic() < deadline, "%s still %s after %.0f s" % (
            order_id, r.json["status"], WAIT_S))
        time.sleep(0.05)


def history(o):
    return [h["status"] for h in o["history"]]


def test_happy_path_to_paid():
    s = start_stockd()
    with s.client() as c:
        product(c, "HP", 10)
        r = order(c, "HP", 3)
        check_status(r, 201, "POST /v1/orders")
        j = r.json
        check_eq(j["status"], "PENDING", "status at creation")
        check(j["reservationId"].startswith("res_") and j["storeId"] == "S1", repr(j))
        check_eq(history(j), ["PENDING"], "history at creation")
        check_eq(r.headers.get("location"), "/v1/orders/" + j["orderId"], "Location")
        done = wait_final(c, j["orderId"])
        check_eq(done["status"], "PAID", "final status")
        check_eq(history(done), ["PENDING", "CONFIRMED", "PAID"], "history")
        check_eq(done["reservationId"], j["reservationId"], "the hold")
        check_eq(avail(c, "HP"), (7, 0), "stock after the paid order")
        r = c.post("/v1/orders/%s:cancel" % j["orderId"], {"reason": "late"}, key=new_key())
        check_problem(r, 409, "order_not_cancellable", "cancel after PAID")
        check_eq(s.payment_ledger().get(j["orderId"]), ["ok"], "charges of the order")
        r = c.post("/v1/purchase", {"sku": "HP", "qty": 1, "customerId": "x"}, key=new_key())
        check_status(r, 201, "purchase")
        r = c.post("/v1/orders/%s:cancel" % r.json["orderId"], {"reason": "x"}, key=new_key())
        check_problem(r, 409, "order_not_cancellable", "cancel of a purchase")
        r = c.post("/v1/orders/ord_999999:cancel", {"reason": "x"}, key=new_key())
        check_problem(r, 404, "unknown_order", "cancel of no order")
        r = order(c, "HP", 1000)
        check_problem(r, 409, "insufficient_stock", "more than there is")
        r = order(c, "NOPE", 1)
        check_problem(r, 404, "unknown_sku", "unknown sku")
    audit_events(s)


def test_failure_rate_one_releases_stock():
    s = start_stockd(["--payment-failure-rate", "1"])
    with s.client() as c:
        product(c, "FR", 10)
        ids = []
        for _ in range(5):
            r = order(c, "FR", 2)
            check_status(r, 201, "order")
            ids.append(r.json["orderId"])
        for oid in ids:
            o = wait_final(c, oid)
            check_eq(o["status"], "PAYMENT_FAILED", oid)
            check_eq(history(o), ["PENDING", "CONFIRMED", "PAYMENT_FAILED"], oid + " history")
        check_eq(avail(c, "FR"), (10, 0), "stock restored")
        led = s.payment_ledger()
        for oid in ids:
            check_eq(led.get(oid), ["declined"], "ledger of " + oid)
    audit_events(s)


def test_cancel_and_expiry_without_workers():
    s = start_stockd(["--workers", "off"])
    with s.client() as c:
        product(c, "CX", 10)
        r = order(c, "CX", 4)
        check_status(r, 201, "order")
        oid = r.json["orderId"]
        check_eq(avail(c, "CX"), (10, 4), "held")
        key = new_key()
        r = c.post("/v1/orders/%s:cancel" % oid, {"reason": "changed my mind"}, key=key)
        check_status(r, 200, "cancel")
        check_eq(r.json["status"], "CANCELLED", "cancel reply")
        check_eq(history(r.json), ["PENDING", "CANCELLED"], "history in the cancel reply")
        check_eq(avail(c, "CX"), (10, 0), "released by the cancel")
        o = c.get("/v1/orders/" + oid).json
        check_eq(o, r.json, "the cancel reply is the order as GET shows it")
        check_eq(o["history"][1].get("reason"), "changed my mind", "reason kept")
        again = c.post("/v1/orders/%s:cancel" % oid, {"reason": "changed my mind"}, key=key)
        check_status(again, 200, "the cancel replayed")
        check_eq(again.headers.get("idempotent-replayed"), "true", "a replay")
        check_eq(again.json, o, "the replay shows the order with its history too")
        r = c.post("/v1/orders/%s:cancel" % oid, {"reason": "again"}, key=new_key())
        check_problem(r, 409, "order_not_cancellable", "cancel twice")
        r = order(c, "CX", 6, ttl=1)
        check_status(r, 201, "short order")
        check_eq(avail(c, "CX"), (10, 6), "held until expiry")
        o = wait_final(c, r.json["orderId"])
        check_eq(o["status"], "EXPIRED", "expired")
        check_eq(history(o), ["PENDING", "EXPIRED"], "history of the expired order")
        check_eq(avail(c, "CX"), (10, 0), "released by the expiry")
    audit_events(s)


def test_hundred_orders_on_ten_units():
    s = start_stockd(["--payment-latency-ms", "100"], threads=4)
    with s.client() as c:
        product(c, "HOT", 10)
    results = []
    lock = threading.Lock()

    def one(i):
        with s.client() as c:
            r = order(c, "HOT", 1)
            with lock:
                results.append((r.status, r.json.get("orderId") if r.status == 201 else None))

    run_threads(one, 100)
    statuses = sorted(st for st, _ in results)
    check_eq(statuses.count(201), 10, "orders that got stock")
    check_eq(statuses.count(409), 90, "orders refused")
    with s.client() as c:
        for _, oid in results:
            if oid:
                check_eq(wait_final(c, oid)["status"], "PAID", oid)
        check_eq(avail(c, "HOT"), (0, 0), "sold out, nothing held")
    audit_events(s)


def workers_wakeups(pid):
    """How often the workers' thread has gone to sleep and been woken: its voluntary context
    switches (a wait for the writer, the clock or a lease; a database round trip on
    PostgreSQL)."""
    task = "/proc/%d/task" % pid
    for tid in os.listdir(task):
        with open(os.path.join(task, tid, "comm")) as f:
            if f.read().strip() != "workers":
                continue
        with open(os.path.join(task, tid, "status")) as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    check(False, "no workers thread in %s" % task)


def test_workers_wake_for_orders_not_for_purchases():
    """Purchases give the workers nothing to do: a batch of them alone does not wake the
    workers' thread (one connection: every purchase is a batch of its own, and each woke the
    thread before), and the order events among them are still found and acted on."""
    s = start_stockd()
    purchases = 400
    with s.client() as c:
        product(c, "WK", 10 * purchases)
        before = workers_wakeups(s.proc.pid)
        for i in range(purchases):
            r = c.post("/v1/purchase", {"sku": "WK", "qty": 1, "customerId": "c"}, key=new_key())
            check_status(r, 201, "purchase %d" % i)
        woken = workers_wakeups(s.proc.pid) - before
        check(woken < purchases // 2, "the workers woke %d times for %d purchases alone" % (
            woken, purchases))
        placed = []
        for i in range(5):
            r = order(c, "WK", 1)
            check_status(r, 201, "order %d" % i)
            placed.append(r.json["orderId"])
            for _ in range(50):
                r = c.post("/v1/purchase", {"sku": "WK", "qty": 1, "customerId": "c"},
                           key=new_key())
                check_status(r, 201, "purchase after order %d" % i)
        for oid in placed:
            check_eq(wait_final(c, oid)["status"], "PAID", oid)
        check_eq(avail(c, "WK"), (10 * purchases - purchases - 5 - 250, 0), "stock")
    audit_events(s)


def test_kill9_during_payments():
    args = ["--payment-latency-ms", "30", "--payment-timeout-rate", "0.3"]
    s = start_stockd(args, threads=2)
    with s.client() as c:
        product(c, "K9", 1000)
    acked = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(i):
        with s.client() as c:
            while not stop.is_set():
                try:
                    r = order(c, "K9", 1)
                except OSError:
                    return
                if r.status == 201:
                    with lock:
                        acked.append(r.json["orderId"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    check(len(acked) > 0, "no order acknowledged before the kill")
    s2 = start_stockd(["--payment-latency-ms", "5"], data_dir=s.data_dir)
    with s2.client() as c:
        paid = 0
        for oid in acked:
            o = wait_final(c, oid)
            paid += o["status"] == "PAID"
            charged = s2.payment_ledger().get(oid, [])
            check(len(charged) <= 1, "%s charged %d times" % (oid, len(charged)))
            check_eq(o["status"] == "PAID", charged == ["ok"], "%s is PAID iff charged" % oid)
        on_hand, reserved = avail(c, "K9")
        check_eq(reserved, 0, "nothing held at the end")
        check(on_hand <= 1000 - paid, "onHand %d after %d paid orders" % (on_hand, paid))
    for key, outcomes in s2.payment_ledger().items():
        check(len(outcomes) == 1, "%s is in the ledger %d times" % (key, len(outcomes)))
    audit_events(s2)


def test_two_instances_one_runs_workers():
    """PostgreSQL: orders taken by an instance with --workers off are paid by the workers of
    the other one, and each instance's GET shows the same end and history."""
    if not pg_mode():
        skip_test("several instances share a PostgreSQL database only")
    db = new_pg_database()
    a = start_stockd(pg_db=db)
    b = start_stockd(["--workers", "off"], pg_db=db)
    with a.client() as ca, b.client() as cb:
        product(cb, "TW", 20)
        ids = []
        for i in range(6):
            r = order(cb if i % 2 == 0 else ca, "TW", 2)
            check_status(r, 201, "order %d" % i)
            ids.append(r.json["orderId"])
        for oid in ids:
            done = wait_final(cb, oid)
            check_eq(done["status"], "PAID", oid)
            check_eq(history(done), ["PENDING", "CONFIRMED", "PAID"], "history of " + oid)
            check_eq(wait_final(ca, oid)["status"], "PAID", oid + " on the other instance")
            check_eq(a.payment_ledger().get(oid), ["ok"], "charges of " + oid)
        check_eq(b.payment_ledger(), {}, "the instance without workers charged nothing")
        check_eq(avail(ca, "TW"), (8, 0), "stock after six paid orders")
    audit_events(a)


if __name__ == "__main__":
    main([test_happy_path_to_paid, test_failure_rate_one_releases_stock,
          test_cancel_and_expiry_without_workers, test_hundred_orders_on_ten_units,
          test_workers_wake_for_orders_not_for_purchases, test_kill9_during_payments, test_two_instances_one_runs_workers])
