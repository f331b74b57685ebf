"""Black-box tests of the intake consumer's lease (issue 12; suite blackbox-pg only, with the
RabbitMQ node of scripts/run-tests.sh): several stockd instances with --amqp on one PostgreSQL
accept asynchronous purchases (Prefer: respond-async) on each, all published to the one stream
stockd.commands, and only the instance that holds the lease "intake" (table worker_leases)
consumes it; the others say so (/health's intake.lease and consumer "standby",
stockd_intake_lease_held) and consume nothing. A holder whose lease another holder took stops
consuming at once: what is accepted meanwhile stays pending; once the lease is free an instance
takes it and applies it from the stored offset. kill -9 of the holder while it consumes hands
the stream to another instance after the lease expires, which resumes from the stored offset:
every accepted command is applied exactly once (as many orders as distinct keys accepted, and
onHand the initial stock minus them), whatever the dead holder had in flight. A clean stop
gives the lease up at once.

No test asserts how fast anything is: waits poll with generous deadlines. The broker is
test_relay.py's ($STOCKD_TEST_AMQP, $STOCKD_TEST_AMQP_DIR)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_status, main, new_key,  # noqa: E402
                     new_pg_database, pg_mode, psql, run_threads, skip_test)
from leases import (WAIT_S, WATCH_S, StageLease, check_given_up, eventually,  # noqa: E402
                    expire, start_instance, steal)
from test_relay import amqp_env, metric, new_vhost_url, product  # noqa: E402

ASYNC = {"Prefer": "respond-async"}
SKU = "IL"
STOCK = 100000


def start(name, db, url):
    return start_instance(name, db, ["--amqp", url, "--workers", "off"])


def check_consumer(server, intake, held):
    """The consumer of an instance without the lease is on standby, and degrades nothing."""
    check_eq(intake["consumer"], "ok" if held else "standby", server.name + "'s consumer")
    check_eq(intake["status"], "ok", server.name + "'s intake status")


LEASE = StageLease("intake", "stockd_intake_lease_held", "the consumer", also=check_consumer)


def check_lease(server, held, holder):
    LEASE.check(server, held, holder)


def consumed(server):
    with server.client() as c:
        return metric(c, "stockd_intake_consumed_total")


def buy_async(server, count, accepted, threads=1):
    """count asynchronous purchases through server, from `threads` clients; every key answered
    202 goes into accepted (all must be: the broker is up)."""
    keys = [new_key("intake-lease") for _ in range(count)]

    def one(i):
        with server.client() as c:
            for key in keys[i::threads]:
                r = c.post("/v1/purchase", {"sku": SKU, "qty": 1, "customerId": "c-il"},
                           key=key, headers=ASYNC)
                check_status(r, 202, "async purchase on " + server.name)
    run_threads(one, threads)
    accepted.extend(keys)
    return keys


def answers(server, keys):
    """{key: (status, body)} of GET /v1/commands/{key} on server."""
    out = {}
    with server.client() as c:
        for key in keys:
            r = c.get("/v1/commands/" + key)
            out[key] = (r.status, r.json)
    return out


def wait_applied(server, keys):
    """Every key's status URL answers 201 (on server: the records are in the shared database);
    returns the answers."""
    def applied():
        got = answers(server, keys)
        pending = [k for k, (st, _) in got.items() if st != 201]
        check(not pending, "%d of %d commands not applied (e.g. %s: %s)" % (
            len(pending), len(keys), pending[:1], got[pending[0]] if pending else None))
        return got
    return eventually(applied, "the accepted commands were not all applied")


def check_exactly_once(server, db, accepted):
    """Every accepted command applied once: one order per distinct key, and the stock says so."""
    got = wait_applied(server, accepted)
    keys = set(accepted)
    check_eq(len(keys), len(accepted), "distinct keys accepted")
    orders = {body["orderId"] for _, body in got.values()}
    check_eq(len(orders), len(keys), "distinct orders of the accepted keys")
    rows = psql("SELECT count(*) FROM orders", db=db)
    check_eq(int(rows[0][0]), len(keys), "orders in the database")
    rows = psql("SELECT on_hand, sold FROM stock_items WHERE sku = '%s'" % SKU, db=db)
    check_eq([(int(a), int(b)) for a, b in rows], [(STOCK - len(keys), len(keys))],
             "onHand and sold of %s" % SKU)
    rows = psql("SELECT count(*) FROM idempotency WHERE idem_key LIKE 'intake-lease%'", db=db)
    check_eq(int(rows[0][0]), len(keys), "idempotency records")


def test_one_consumer_and_takeover():
    if not pg_mode():
        skip_test("several instances share a PostgreSQL database only")
    amqp_env()
    db = new_pg_database()
    url = new_vhost_url()
    a = start("intake-a", db, url)
    eventually(lambda: check_lease(a, True, "intake-a"), "intake-a took the consumer's lease")
    b = start("intake-b", db, url)
    eventually(lambda: check_lease(b, False, "intake-a"), "intake-b sees intake-a's lease")
    check_lease(a, True, "intake-a")
    with a.client() as c:
        product(c, SKU, STOCK)
    accepted = []

    # Commands accepted by both instances: the holder applies them all, the other none.
    buy_async(a, 40, accepted)
    buy_async(b, 40, accepted)
    wait_applied(b, accepted)
    check_eq(consumed(b), 0, "messages consumed by the instance without the lease")
    check(consumed(a) >= 80, "intake-a consumed %d of 80" % consumed(a))
    check_lease(b, False, "intake-a")

    # The lease taken by another holder (as an instance that found it expired would): intake-a
    # stops consuming, and neither instance applies anything while it lasts.
    steal(db, "intake")
    for server in (a, b):
        eventually(lambda: check_lease(server, False, "intruder"),
                   "%s sees the intruder's lease" % server.name)
    counts = (consumed(a), consumed(b))
    waiting = buy_async(a, 10, accepted) + buy_async(b, 10, accepted)
    time.sleep(WATCH_S)
    check_eq((consumed(a), consumed(b)), counts, "consumed while the intruder holds the lease")
    got = answers(a, waiting)
    check_eq(sorted({st for st, _ in got.values()}), [202], "statuses while nobody consumes")
    # Released: one of them takes it and applies what waits, from the stored offset.
    expire(db, "intake")
    holder = eventually(lambda: LEASE.holder(a, b), "nobody took the released lease")
    standby = b if holder is a else a
    eventually(lambda: check_lease(standby, False, holder.name),
               "%s sees %s's lease" % (standby.name, holder.name))
    wait_applied(standby, accepted)

    # kill -9 of the holder while it consumes, with commands accepted on both instances: the
    # other takes the lease over once it expires and applies the rest once each.
    def load(i):
        buy_async(holder if i == 0 else standby, 300, accepted, threads=2)
    run_threads(load, 2, timeout=WAIT_S)
    holder.kill9()
    buy_async(standby, 20, accepted)
    eventually(lambda: check_lease(standby, True, standby.name),
               "%s took the consumer's lease over" % standby.name)
    buy_async(standby, 20, accepted)
    check_exactly_once(standby, db, accepted)
    with standby.client() as c:
        r = c.get("/v1/availability?sku=" + SKU)
        check_status(r, 200, "availability")
        check_eq(r.json["onHand"], STOCK - len(accepted), "onHand on " + standby.name)
    b = standby

    # A clean stop gives the lease up: intake-c takes it without waiting for an expiry, and
    # applies what follows.
    c_server = start("intake-c", db, url)
    eventually(lambda: check_lease(c_server, False, b.name), "intake-c sees %s's lease" % b.name)
    check_eq(b.stop(), 0, "%s's exit code" % b.name)
    check_given_up(db, "intake", "intake-c", b.name)
    eventually(lambda: check_lease(c_server, True, "intake-c"), "intake-c took the lease")
    buy_async(c_server, 20, accepted)
    check_exactly_once(c_server, db, accepted)
    print("  (%d commands accepted, each applied once across the kill -9 takeover)"
          % len(accepted))


if __name__ == "__main__":
    main([test_one_consumer_and_takeover], needs_pg=True)
