"""Black-box tests of the workers' leases (issue 11; suite blackbox-pg only): several stockd
instances on one PostgreSQL, all with workers on, run each stage (order, payment) on the one
instance that holds its lease (table worker_leases). Orders placed on any instance reach PAID
exactly once; the instances that hold no lease charge nothing; kill -9 of the holder hands the
stages to another instance within a few lease periods, which reads the stored offsets on and
finishes every pending order, and resumes the charges the dead holder left in doubt.

Each instance has its own in-process payment simulator and ledger (--payment-ledger, one line
per real charge). A charge in doubt when its instance died is asked again by the new holder with
the same key: a real provider answers it from the key, but another process's simulator does not
know it, so only for those orders may a key be in two ledgers (at most once in each). Every
other key is in one ledger, once. No test asserts how fast anything is: waits poll with generous
deadlines, and the check that a non-holder does nothing watches for a few lease periods."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_status, main, new_key,  # noqa: E402
                     new_pg_database, pg_mode, psql, skip_test)
from leases import WATCH_S, eventually, start_instance  # noqa: E402


def start(name, db):
    return start_instance(name, db)


def workers(server):
    """{stage: object} of GET /v1/admin/workers, and the instanceId."""
    with server.client() as c:
        r = c.get("/v1/admin/workers")
    check_status(r, 200, "GET /v1/admin/workers on " + server.name)
    return {w["stage"]: w for w in r.json["workers"]}, r.json["instanceId"]


def check_leases(server, held, holder):
    """server holds the order and payment leases (held) and sees holder as their holder."""
    stages, instance = workers(server)
    check_eq(instance, server.name, "instanceId")
    for stage in ("order", "payment"):
        check_eq(stages[stage]["lease"], {"held": held, "holder": holder},
                 "%s's lease of %s" % (server.name, stage))
    check_eq(stages["expiry"]["lease"], None, "the expiry sweep has no lease")


def lease_metrics(server):
    with server.client() as c:
        r = c.get("/metrics")
    check_status(r, 200, "GET /metrics")
    text = r.body.decode()
    return {stage: text.count('stockd_worker_lease_held{stage="%s"} 1' % stage)
            for stage in ("order", "payment")}


def product(server, sku, on_hand):
    with server.client() as c:
        r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand},
                   key=new_key())
    check_status(r, 201, "product " + sku)


def place(server, sku, count):
    ids = []
    with server.client() as c:
        for _ in range(count):
            r = c.post("/v1/orders", {"customerId": "cust-l", "lines": [{"sku": sku, "qty": 1}]},
                       key=new_key("lease"))
            check_status(r, 201, "order on " + server.name)
            ids.append(r.json["orderId"])
    return ids


def status_of(server, oid):
    with server.client() as c:
        r = c.get("/v1/orders/" + oid)
    check_status(r, 200, "GET " + oid)
    return r.json


def wait_paid(server, ids):
    for oid in ids:
        o = eventually(lambda: _final(server, oid), "%s not ended on %s" % (oid, server.name))
        check_eq(o["status"], "PAID", oid)
        statuses = [h["status"] for h in o["history"]]
        check_eq(statuses, ["PENDING", "CONFIRMED", "PAID"], "history of " + oid)


def _final(server, oid):
    o = status_of(server, oid)
    check(o["status"] not in ("PENDING", "CONFIRMED"), "%s is %s" % (oid, o["status"]))
    return o


def check_ledgers(servers, ids, charged_by, in_doubt=()):
    """Each order of ids was charged once, "ok", in the ledger of charged_by; in no other ledger,
    except an order of in_doubt (its charge was in doubt when its instance died), which may be
    in one other ledger once. No key is twice in any ledger."""
    ledgers = {s.name: s.payment_ledger() for s in servers}
    for name, lines in ledgers.items():
        for key, outcomes in lines.items():
            check(len(outcomes) == 1, "%s is in %s's ledger %d times" % (key, name,
                                                                         len(outcomes)))
    for oid in ids:
        check_eq(ledgers[charged_by.name].get(oid), ["ok"], "%s's charge of %s"
                 % (charged_by.name, oid))
        others = [n for n, lines in ledgers.items() if n != charged_by.name and oid in lines]
        check(len(others) <= (1 if oid in in_doubt else 0),
              "%s was also charged by %s" % (oid, others))


def admin_post(server, path):
    with server.client() as c:
        r = c.post(path, b"", content_type=None)
    check_status(r, 200, "POST %s on %s" % (path, server.name))


def admin_put(server, path, body):
    with server.client() as c:
        r = c.request("PUT", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    check_status(r, 200, "PUT %s on %s" % (path, server.name))


def paying(server):
    return int(psql("SELECT count(*) FROM reservations WHERE status = 'ACTIVE'"
                    " AND order_status = 'PAYING'", db=server.pg_db)[0][0])


def test_one_holder_per_stage_and_takeover():
    if not pg_mode():
        skip_test("several instances share a PostgreSQL database only")
    db = new_pg_database()
    a = start("inst-a", db)
    eventually(lambda: check_leases(a, True, "inst-a"), "inst-a took the leases")
    b = start("inst-b", db)
    eventually(lambda: check_leases(b, False, "inst-a"), "inst-b sees inst-a's leases")
    check_leases(a, True, "inst-a")
    check_eq(lease_metrics(a), {"order": 1, "payment": 1}, "inst-a's lease metrics")
    check_eq(lease_metrics(b), {"order": 0, "payment": 0}, "inst-b's lease metrics")

    # Orders placed on both instances: the holder's stages pay them, each once.
    product(a, "LS", 100)
    first = []
    for _ in range(5):
        first += place(a, "LS", 2) + place(b, "LS", 2)
    wait_paid(b, first)
    check_ledgers([a, b], first, charged_by=a)
    check_eq(b.payment_ledger(), {}, "the instance without a lease charged nothing")

    # The holder's order stage paused: the other instance, holding no lease, confirms nothing.
    admin_post(a, "/v1/admin/workers/order:pause")
    pending = place(b, "LS", 4) + place(a, "LS", 4)
    time.sleep(WATCH_S)
    for oid in pending:
        check_eq(status_of(b, oid)["status"], "PENDING", oid + " while the holder is paused")
    check_leases(b, False, "inst-a")

    # kill -9 of the holder: inst-b takes both leases and finishes the pending orders from the
    # stored offsets.
    a.kill9()
    eventually(lambda: check_leases(b, True, "inst-b"), "inst-b took the leases over")
    wait_paid(b, pending)
    check_ledgers([a, b], pending, charged_by=b)
    check_ledgers([a, b], first, charged_by=a)

    # A third instance; the holder's charges hang in doubt (its simulator answers nothing for
    # a long while), then it is killed: inst-c resumes those charges with the same keys.
    c = start("inst-c", db)
    eventually(lambda: check_leases(c, False, "inst-b"), "inst-c sees inst-b's leases")
    admin_put(b, "/v1/admin/payment", {"timeoutRate": 1.0, "latencyMs": 60000})
    doubtful = place(c, "LS", 3) + place(b, "LS", 3)
    eventually(lambda: check_eq(paying(b), len(doubtful), "orders PAYING"), "charges in doubt")
    b.kill9()
    eventually(lambda: check_leases(c, True, "inst-c"), "inst-c took the leases over")
    wait_paid(c, doubtful)
    check_ledgers([a, b, c], doubtful, charged_by=c, in_doubt=set(doubtful))
    check_ledgers([a, b, c], pending, charged_by=b)
    check_ledgers([a, b, c], first, charged_by=a)
    total = len(first) + len(pending) + len(doubtful)
    with c.client() as cc:
        r = cc.get("/v1/availability?sku=LS&storeId=S1")
    check_status(r, 200, "availability")
    check_eq((r.json["onHand"], r.json["reserved"]), (100 - total, 0), "stock after the orders")
    audit_events(c)


if __name__ == "__main__":
    main([test_one_holder_per_stage_and_takeover], needs_pg=True)
