"""Black-box tests of the outbox relay's lease (issue 12; suite blackbox-pg only, with the
RabbitMQ node of scripts/run-tests.sh): several stockd instances with --amqp on one PostgreSQL
run one relay, on the instance that holds the lease "relay" (table worker_leases). The other
instances publish nothing and say so (/health's relay.lease, stockd_relay_lease_held); events
committed on any instance reach the stream stockd.events through the holder. A holder whose
lease another holder took stops publishing and saving its position; once the lease is free, an
instance takes it and resumes from the durable position. kill -9 of the
holder hands the relay to another instance within a few lease periods, which resumes from the
durable position: the stream then holds every committed seq at least once, in order, with no
gap (a seq the dead holder published after its last save may come twice). A clean stop gives
the lease up at once: the row is released (or already taken) when the process has exited.

No test asserts how fast anything is: waits poll with generous deadlines. The broker and the
stream reader are test_relay.py's ($STOCKD_TEST_AMQP, $STOCKD_TEST_AMQP_DIR, $STOCKD_MQ_TAIL)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_status, main, new_key,  # noqa: E402
                     new_pg_database, pg_mode, skip_test)
from leases import (WATCH_S, StageLease, check_given_up, eventually, expire,  # noqa: E402
                    start_instance, steal)
from test_relay import (amqp_env, api_events, check_stream, metric,  # noqa: E402
                        new_vhost_url, read_stream)

LEASE = StageLease("relay", "stockd_relay_lease_held", "the relay")


def start(name, db, url):
    return start_instance(name, db, ["--amqp", url, "--workers", "off"])


def check_lease(server, held, holder):
    LEASE.check(server, held, holder)


def published(server):
    with server.client() as c:
        return metric(c, "stockd_relay_published_total")


def position(server):
    with server.client() as c:
        return metric(c, "stockd_relay_position")


def wait_position(server, seq):
    """server reports the durable position at seq or past it (the holder's own, or the one it
    read from storage)."""
    eventually(lambda: check(position(server) >= seq, "%s's position %d < %d" % (
        server.name, position(server), seq)), "%s's relay did not reach %d" % (server.name, seq))


def product(server, sku, on_hand):
    with server.client() as c:
        r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand},
                   key=new_key())
    check_status(r, 201, "product " + sku)


def buy(server, sku, n):
    with server.client() as c:
        for _ in range(n):
            r = c.post("/v1/purchase", {"sku": sku, "qty": 1, "customerId": "c-l"},
                       key=new_key("relay-lease"))
            check_status(r, 201, "purchase on " + server.name)


def last_seq(server):
    with server.client() as c:
        events = api_events(c)
    return events, len(events)


def test_one_relay_and_takeover():
    if not pg_mode():
        skip_test("several instances share a PostgreSQL database only")
    amqp_env()
    db = new_pg_database()
    url = new_vhost_url()
    a = start("relay-a", db, url)
    eventually(lambda: check_lease(a, True, "relay-a"), "relay-a took the relay's lease")
    b = start("relay-b", db, url)
    eventually(lambda: check_lease(b, False, "relay-a"), "relay-b sees relay-a's lease")
    check_lease(a, True, "relay-a")

    # Events committed on both instances: the holder publishes them all, the other nothing.
    product(a, "RL", 1000)
    for _ in range(5):
        buy(a, "RL", 4)
        buy(b, "RL", 4)
    events, n = last_seq(b)
    wait_position(a, n)
    wait_position(b, n)  # the standby follows the durable position
    check_eq(published(b), 0, "messages published by the instance without the lease")
    check(published(a) >= n, "relay-a published %d of %d" % (published(a), n))
    check_eq(check_stream(read_stream(url, n), events), 0, "duplicates with one holder")
    check_lease(b, False, "relay-a")

    # The lease taken by another holder (as an instance that found it expired would): relay-a
    # stops publishing, and neither instance publishes or saves a position while it lasts.
    steal(db, "relay")
    for server in (a, b):
        eventually(lambda: check_lease(server, False, "intruder"),
                   "%s sees the intruder's lease" % server.name)
    counts = (published(a), published(b), position(a))
    buy(a, "RL", 5)
    buy(b, "RL", 5)
    time.sleep(WATCH_S)
    check_eq((published(a), published(b), position(a)), counts,
             "published and position while the intruder holds the lease")
    # Released: one of them takes it and publishes from the durable position.
    expire(db, "relay")
    holder = eventually(lambda: LEASE.holder(a, b), "nobody took the released lease")
    standby = b if holder is a else a
    eventually(lambda: check_lease(standby, False, holder.name),
               "%s sees %s's lease" % (standby.name, holder.name))
    events, n = last_seq(holder)
    wait_position(holder, n)
    check_stream(read_stream(url, n), events)

    # kill -9 of the holder with events it may not have published yet: the other instance
    # takes the lease over and resumes from the durable position.
    buy(holder, "RL", 10)
    buy(standby, "RL", 10)
    holder.kill9()
    buy(standby, "RL", 5)
    eventually(lambda: check_lease(standby, True, standby.name),
               "%s took the relay's lease over" % standby.name)
    buy(standby, "RL", 5)
    events, n = last_seq(standby)
    wait_position(standby, n)
    messages = read_stream(url, n)
    duplicates = check_stream(messages, events)
    b = standby

    # A clean stop gives the lease up: once the holder has exited, the row is released
    # (expired) or relay-c has taken it already; relay-c then publishes what follows.
    c = start("relay-c", db, url)
    eventually(lambda: check_lease(c, False, b.name), "relay-c sees %s's lease" % b.name)
    check_eq(b.stop(), 0, "%s's exit code" % b.name)
    check_given_up(db, "relay", "relay-c", b.name)
    eventually(lambda: check_lease(c, True, "relay-c"), "relay-c took the relay's lease")
    buy(c, "RL", 5)
    events, n = last_seq(c)
    wait_position(c, n)
    check_stream(read_stream(url, n), events)
    print("  (%d events, %d duplicates across the kill -9 takeover)" % (n, duplicates))


if __name__ == "__main__":
    main([test_one_relay_and_takeover], needs_pg=True)
