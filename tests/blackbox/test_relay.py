"""Black-box tests of the outbox relay (issue 12, stockd --amqp URL) against a real RabbitMQ:
every committed event reaches the stream stockd.events in seq order (message-id = seq, type =
the event type, store/sku headers, the body as GET /v1/events shows the event), and a restart
of stockd resumes from the durable position without a gap. With the broker stopped mid-run,
purchases still answer 201 while /health and /ready report the relay degraded with its lag;
once the broker is back the relay catches up and the stream holds every event once or more, in
order, with no gap. Without --amqp nothing of it shows (the default needs no broker). A consumer
of stockd.events rebuilt from offset 0 (here: the test folding each stock event's deltas per
store and sku) reproduces onHand, reserved and available of GET /v1/availability after a mixed
run (receipts, adjustments, purchases and sold-out 409s, reservations confirmed, cancelled and
held, checkout orders paid and cancelled, a transfer), and misses it when one event is left
out.

The broker is the node scripts/run-tests.sh starts for the whole run: $STOCKD_TEST_AMQP (its
URL) and $STOCKD_TEST_AMQP_DIR (its directory, for rabbitmqctl and for stopping and starting
it); each test gets a virtual host of its own, so runs on both backends and builds share the
node. The stream is read with tests/unit/tool_mq_tail.c ($STOCKD_MQ_TAIL). Both backends."""

import json
import os
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (REPO, check, check_eq, check_status, main, new_key,  # noqa: E402
                     skip_test, start_stockd, stockd_bin)

WAIT_S = 60.0  # a bound for the broker and the relay to catch up, never a timing assertion
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
_vhosts = [0]


def amqp_env():
    url = os.environ.get("STOCKD_TEST_AMQP", "")
    node_dir = os.environ.get("STOCKD_TEST_AMQP_DIR", "")
    if not url or not node_dir:
        check(not os.environ.get("STOCKD_TEST_REQUIRE_AMQP"),
              "$STOCKD_TEST_REQUIRE_AMQP is set but $STOCKD_TEST_AMQP(_DIR) is not")
        skip_test("no $STOCKD_TEST_AMQP and $STOCKD_TEST_AMQP_DIR (scripts/run-tests.sh sets them)")
    return url, node_dir


def rabbitmqctl(node_dir, *args):
    command = ". '%s/env' && %s -q %s" % (node_dir, RABBITMQCTL, " ".join(
        "'%s'" % a for a in args))
    r = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120)
    check(r.returncode == 0, "rabbitmqctl %s: %s" % (" ".join(args), r.stderr.decode()[-500:]))


def new_vhost_url():
    """A virtual host of the test's own on the shared node, and its amqp:// URL."""
    url, node_dir = amqp_env()
    _vhosts[0] += 1
    vhost = "stockd-relay-%d-%d" % (os.getpid(), _vhosts[0])
    rabbitmqctl(node_dir, "add_vhost", vhost)
    rabbitmqctl(node_dir, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    base = url.rsplit("/", 1)[0]
    return base + "/" + urllib.parse.quote(vhost, safe="")


def broker_stop():
    _, node_dir = amqp_env()
    subprocess.run(["bash", os.path.join(REPO, "scripts/rabbitmq-stop.sh"), node_dir],
                   check=True, capture_output=True, timeout=120)


def broker_start():
    _, node_dir = amqp_env()
    r = subprocess.run(["bash", os.path.join(REPO, "scripts/rabbitmq-start.sh"), node_dir],
                       capture_output=True, timeout=180)
    check(r.returncode == 0, "the broker did not start again: %s" % r.stderr.decode()[-500:])


def mq_tail_bin():
    path = os.environ.get("STOCKD_MQ_TAIL")
    if path:
        return path
    return os.path.join(os.path.dirname(stockd_bin()), "tests", "mq_tail")


def read_stream(url, until_seq):
    """Every message of stockd.events from offset 0 up to the first with id until_seq."""
    r = subprocess.run([mq_tail_bin(), url, "stockd.events", "0", str(until_seq),
                        str(int(WAIT_S * 1000))], capture_output=True, timeout=WAIT_S + 60)
    messages = [json.loads(line) for line in r.stdout.decode().splitlines() if line]
    check(r.returncode == 0, "the stream has no message %d after %.0f s (%d read, last %s): %s"
          % (until_seq, WAIT_S, len(messages), messages[-1]["id"] if messages else None,
             r.stderr.decode()[-500:]))
    return messages


def api_events(c):
    events = []
    since = 0
    while True:
        r = c.get("/v1/events?limit=1000&since=%d" % since)
        check_status(r, 200, "GET /v1/events")
        if not r.json["items"]:
            return events
        events += r.json["items"]
        since = events[-1]["seq"]


def check_stream(messages, events):
    """The stream holds every event once or more, in seq order, with no gap: each message is
    an event already seen or the next one; every message is the event as the API shows it.
    Returns the number of duplicates."""
    by_seq = {e["seq"]: e for e in events}
    check_eq(sorted(by_seq), list(range(1, len(events) + 1)), "event seqs")
    highest = 0
    duplicates = 0
    for i, m in enumerate(messages):
        check_eq(m["offset"], i, "stream offset")
        seq = int(m["id"])
        check(seq <= highest + 1, "gap in the stream: seq %d after %d" % (seq, highest))
        duplicates += 1 if seq <= highest else 0
        highest = max(highest, seq)
        e = by_seq[seq]
        check_eq(m["body"], e, "message %d's body" % seq)
        check_eq(m["type"], e["eventType"], "message %d's type" % seq)
        want = {k: v for k, v in (("store", e["storeId"]), ("sku", e["sku"])) if v is not None}
        check_eq(m["headers"], want, "message %d's headers" % seq)
    check_eq(highest, len(events), "the last event in the stream")
    return duplicates


def relay_state(c, path="/health"):
    r = c.get(path)
    check_status(r, 200, path)
    check("relay" in r.json, "%s without relay: %s" % (path, r.json))
    return r.json["relay"]


def wait_relay(c, status, lag_at_least=None):
    deadline = time.monotonic() + WAIT_S
    while True:
        relay = relay_state(c)
        lag_ok = relay["lagEvents"] == 0 if lag_at_least is None else \
            relay["lagEvents"] >= lag_at_least
        if relay["status"] == status and lag_ok:
            return relay
        check(time.monotonic() < deadline, "relay %s after %.0f s, want %s (lag >= %s)" % (
            relay, WAIT_S, status, lag_at_least))
        time.sleep(0.1)


def metric(c, name):
    r = c.get("/metrics")
    check_status(r, 200, "/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def buy(c, sku, n):
    # retry: a keyed purchase is resent once on a connection the server closed while the test
    # waited for the broker (a restart can outlast the keep-alive timeout).
    for _ in range(n):
        r = c.post("/v1/purchase", {"sku": sku, "qty": 1, "customerId": "c-1"}, key=new_key(),
                   retry=True)
        check_status(r, 201, "purchase of " + sku)


def test_without_amqp_nothing_changes():
    server = start_stockd()
    with server.client() as c:
        r = c.get("/health")
        check_status(r, 200, "/health")
        check_eq(r.json["status"], "ok", "/health status")
        check("relay" not in r.json and "relay" not in r.json["checks"], "/health: %s" % r.json)
        r = c.get("/ready")
        check_eq(r.body, b'{"status":"ready"}', "/ready body")
        check(b"stockd_relay_" not in c.get("/metrics").body, "relay metrics without --amqp")


def test_events_reach_the_stream_in_order_and_resume_after_restart():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    with server.client() as c:
        product(c, "RELAY-A", 100)
        product(c, "RELAY-B", 100)
        buy(c, "RELAY-A", 20)
        buy(c, "RELAY-B", 10)
        wait_relay(c, "ok")
        events = api_events(c)
        check_eq(metric(c, "stockd_relay_lag_events"), 0, "lag")
        check(metric(c, "stockd_relay_published_total") >= len(events), "published total")
        check_eq(metric(c, "stockd_relay_position"), len(events), "durable position")
    check_eq(check_stream(read_stream(url, len(events)), events), 0, "duplicates")
    server.stop()
    server = start_stockd(["--amqp", url], data_dir=server.data_dir)
    with server.client() as c:
        buy(c, "RELAY-A", 5)
        wait_relay(c, "ok")
        events = api_events(c)
    messages = read_stream(url, len(events))
    check_stream(messages, events)
    check_eq(len(messages), len(events), "messages after a clean restart")


def test_broker_outage_keeps_selling_and_the_relay_catches_up():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    try:
        with server.client() as c:
            product(c, "OUT-A", 100)
            buy(c, "OUT-A", 10)
            wait_relay(c, "ok")
            broker_stop()
            buy(c, "OUT-A", 20)  # every purchase still 201
            relay = wait_relay(c, "degraded", lag_at_least=20)
            ready = relay_state(c, "/ready")  # still ready: the service sells
            check_eq(ready["status"], "degraded", "/ready relay status")
            check(metric(c, "stockd_relay_errors_total") >= 1, "relay errors counted")
            check_eq(metric(c, "stockd_relay_connected"), 0, "connected gauge")
            check(metric(c, "stockd_relay_lag_events") >= 20, "lag gauge")
            broker_start()
            buy(c, "OUT-A", 5)
            wait_relay(c, "ok")
            events = api_events(c)
    finally:
        broker_start()  # the node serves the rest of the run whatever happened here
    duplicates = check_stream(read_stream(url, len(events)), events)
    print("  (%d events, %d duplicates after the outage; relay %s)" % (
        len(events), duplicates, relay))


def fold_stream(messages, drop_seq=None):
    """A consumer of stockd.events rebuilt from offset 0: every stock event (one store's item
    changed: the message has store and sku, its data delta and reservedDelta) adds its deltas
    to (onHand, reserved) of its (store, sku); a seq seen again (a republish) is skipped, and
    after each event the folded state must be the one the event says (onHand, reserved).
    drop_seq leaves that event out (the test of the test). Returns {(store, sku): (onHand,
    reserved, available)} and the seqs of the stock events."""
    state = {}
    last = 0
    stock_seqs = []
    for m in messages:
        seq = int(m["id"])
        if seq <= last:
            continue
        check_eq(seq, last + 1, "the seq after %d" % last)
        last = seq
        body = m["body"]
        data = body["data"]
        if body["storeId"] is None or body["sku"] is None or "delta" not in data:
            continue  # not a stock event: a store, a reservation's or an order's lifecycle
        stock_seqs.append(seq)
        if seq == drop_seq:
            continue
        key = (body["storeId"], body["sku"])
        on_hand, reserved = state.get(key, (0, 0))
        state[key] = (on_hand + data["delta"], reserved + data.get("reservedDelta", 0))
        if drop_seq is None:
            check_eq(state[key], (data["onHand"], data["reserved"]),
                     "%s %d folds to what it says" % (body["eventType"], seq))
    return {k: (oh, rs, oh - rs) for k, (oh, rs) in state.items()}, stock_seqs


def api_stock(c, skus, stores):
    """{(store, sku): (onHand, reserved, available)} of GET /v1/availability for every sku in
    every store that stocks it, and {sku: the same over all stores}."""
    per_store = {}
    per_sku = {}
    for sku in skus:
        r = c.get("/v1/availability?sku=" + sku)
        check_status(r, 200, "availability of " + sku)
        per_sku[sku] = (r.json["onHand"], r.json["reserved"], r.json["available"])
        for store in stores:
            r = c.get("/v1/availability?sku=%s&storeId=%s" % (sku, store))
            if r.status == 404:
                continue  # not stocked there
            check_status(r, 200, "availability of %s in %s" % (sku, store))
            per_store[(store, sku)] = (r.json["onHand"], r.json["reserved"], r.json["available"])
    return per_store, per_sku


def by_sku(folded):
    out = {}
    for (_, sku), (on_hand, reserved, available) in folded.items():
        a, b, d = out.get(sku, (0, 0, 0))
        out[sku] = (a + on_hand, b + reserved, d + available)
    return out


def mixed_run(c):
    """Receipts, adjustments, purchases with sold-out 409s, reservations (confirmed,
    cancelled, held), checkout orders (paid by the workers, one cancelled), a transfer. Returns
    the checkout orders' ids."""
    def ok(r, status, what):
        check_status(r, status, what)
        return r.json
    ok(c.post("/v1/stores", {"storeId": "S2", "name": "Two"}, key=new_key()), 201, "store S2")
    for sku, units in (("FOLD-A", 60), ("FOLD-B", 5)):
        ok(c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": units,
                                   "storeId": "S1"}, key=new_key()), 201, "product " + sku)
    ok(c.post("/v1/adjustments", {"storeId": "S2", "sku": "FOLD-B", "delta": 7,
                                  "reason": "receipt"}, key=new_key()), 200, "receipt in S2")
    ok(c.post("/v1/adjustments", {"storeId": "S1", "sku": "FOLD-A", "delta": -3,
                                  "reason": "damaged"}, key=new_key()), 200, "shrinkage")
    buy(c, "FOLD-A", 10)
    statuses = []
    for _ in range(15):  # 12 units of FOLD-B in all: 12 sales, then sold out
        r = c.post("/v1/purchase", {"sku": "FOLD-B", "qty": 1, "customerId": "c-2"},
                   key=new_key())
        statuses.append(r.status)
    check_eq(sorted(statuses), [201] * 12 + [409] * 3, "FOLD-B sells out")
    held = []
    for qty in (4, 2, 3):
        res = ok(c.post("/v1/reservations", {"storeId": "S1", "lines": [
            {"sku": "FOLD-A", "qty": qty}], "ttlSeconds": 3600, "customerId": "c-3"},
            key=new_key()), 201, "reservation of %d" % qty)
        held.append(res["reservationId"])
    ok(c.post("/v1/reservations/%s:confirm" % held[0], {}, key=new_key()), 200, "confirm")
    ok(c.post("/v1/reservations/%s:cancel" % held[1], {"reason": "no"}, key=new_key()), 200,
       "cancel")  # held[2] stays ACTIVE: reserved
    orders = []
    for qty in (2, 1, 3):
        order = ok(c.post("/v1/orders", {"customerId": "c-4", "lines": [
            {"sku": "FOLD-A", "qty": qty}]}, key=new_key()), 201, "checkout order")
        orders.append(order["orderId"])
    r = c.post("/v1/orders/%s:cancel" % orders[1], {"reason": "changed mind"}, key=new_key())
    check(r.status in (200, 409), "cancel of an order: %d" % r.status)  # 409: already paid
    ok(c.post("/v1/transfers", {"fromStore": "S1", "toStore": "S2", "lines": [
        {"sku": "FOLD-A", "qty": 5}]}, key=new_key()), 201, "transfer")
    return orders


def test_a_consumer_from_offset_0_reproduces_availability():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    with server.client() as c:
        orders = mixed_run(c)
        deadline = time.monotonic() + WAIT_S
        for order_id in orders:  # the workers end each (paid, or cancelled above)
            while c.get("/v1/orders/" + order_id).json["status"] not in (
                    "PAID", "CANCELLED", "PAYMENT_FAILED"):
                check(time.monotonic() < deadline, "order %s did not end" % order_id)
                time.sleep(0.05)
        wait_relay(c, "ok")
        events = api_events(c)
        messages = read_stream(url, len(events))
        check_stream(messages, events)
        folded, stock_seqs = fold_stream(messages)
        skus = sorted({sku for _, sku in folded})
        check_eq(skus, ["FOLD-A", "FOLD-B"], "skus in the stream")
        stores = sorted({store for store, _ in folded})
        deadline = time.monotonic() + WAIT_S
        while True:  # the read model may trail the commit a little; the stream is final
            per_store, per_sku = api_stock(c, skus, stores)
            if per_store == folded or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        check_eq(per_store, folded, "availability per store and sku, folded from the stream")
        check_eq(per_sku, by_sku(folded), "availability per sku, folded from the stream")
        check(per_sku["FOLD-A"][1] > 0 and per_sku["FOLD-B"][2] == 0,
              "the run holds a reservation and sold FOLD-B out: %s" % per_sku)
        # The test of the test: leaving any one stock event out gives another availability.
        for drop in stock_seqs:
            partial, _ = fold_stream(messages, drop_seq=drop)
            check(partial != per_store, "the fold without event %d still matches" % drop)
    print("  (%d events, %d of them stock events, folded into %d items)" % (
        len(events), len(stock_seqs), len(folded)))


if __name__ == "__main__":
    main([test_without_amqp_nothing_changes,
          test_events_reach_the_stream_in_order_and_resume_after_restart,
          test_broker_outage_keeps_selling_and_the_relay_catches_up,
          test_a_consumer_from_offset_0_reproduces_availability])
