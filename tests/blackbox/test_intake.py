"""Black-box tests of the consuming side of asynchronous intake (issue 12, stockd --amqp URL)
against a real RabbitMQ: commands published to the stream stockd.commands in the format of
src/intake/intake.h are applied once each through the writer, and GET /v1/commands/{key}
answers 202 pending until the key's idempotency record exists, then that record (the 201 with
the order, or the 409 insufficient_stock), as a replay of the POST would.

The messages are published here with tests/unit/tool_mq_put.c ($STOCKD_MQ_PUT), not through the
HTTP side (Prefer: respond-async), so that the consumer is tested alone: 1,000 purchases of a
product with 100 units make exactly 100 orders and 900 answers 409; one key published five
times has one effect; kill -9 of stockd while it consumes, then a restart, applies every
command once (the stock says so); a malformed message becomes a dead letter of stage commands
(GET /v1/dlt?stage=commands, keyed by its stream offset) and the consumer goes on; POST
/v1/dlt/replay publishes a dead letter's message again (with the broker down: 503, nothing
marked), and one that still cannot be decoded is a dead letter again at its new offset.

The broker is the node scripts/run-tests.sh starts ($STOCKD_TEST_AMQP, $STOCKD_TEST_AMQP_DIR);
each test gets a virtual host of its own. Both backends."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main, new_key,  # noqa: E402
                     start_stockd, stockd_bin)
from test_relay import broker_start, broker_stop, new_vhost_url  # noqa: E402

WAIT_S = 90.0  # a bound for the broker and the consumer to catch up, never a timing assertion
TOKENS = "alice:write:alice-secret-1,ops:admin:ops-secret-1"
STREAM = "stockd.commands"


def mq_put_bin():
    path = os.environ.get("STOCKD_MQ_PUT")
    if path:
        return path
    return os.path.join(os.path.dirname(stockd_bin()), "tests", "mq_put")


def envelope(key, body, kind="purchase", route="/v1/purchase", principal="alice"):
    return json.dumps({"v": 1, "kind": kind, "principal": principal, "idempotencyKey": key,
                       "route": route, "body": body}, separators=(",", ":"))


def message(key, body, kind="purchase", **kw):
    """(id, type, headers, body) of a command as the HTTP side publishes it."""
    return (key, kind, {"principal": kw.get("principal", "alice")},
            envelope(key, body, kind, **kw))


def batch(commands, route="/v1/purchase"):
    """A batch message (intake.h) of (key, body[, kind, route]) commands, as the publisher
    packs them (it packs purchases only)."""
    texts = ",".join(envelope(c[0], c[1], *(c[2:] or ("purchase", route))) for c in commands)
    return (commands[0][0], "batch", {}, '{"v":2,"kind":"batch","commands":[%s]}' % texts)


def publish(url, messages):
    """Publishes messages (id, type, headers, body: a str, or bytes that need not be UTF-8)."""
    lines = []
    for mid, mtype, headers, body in messages:
        h = ";".join("%s=%s" % kv for kv in headers.items()) or "-"
        raw = body if isinstance(body, bytes) else body.encode()
        check(b"\t" not in raw and b"\n" not in raw, "a body fits one line")
        lines.append(("%s\t%s\t%s\t" % (mid, mtype or "-", h)).encode() + raw)
    r = subprocess.run([mq_put_bin(), url, STREAM, str(int(WAIT_S * 1000))],
                       input=b"\n".join(lines) + b"\n", capture_output=True,
                       timeout=WAIT_S + 60)
    check(r.returncode == 0, "mq_put: %s" % r.stderr.decode()[-500:])
    check_eq(int(r.stdout.decode().strip()), len(messages), "messages confirmed")


def start(url, data_dir=None):
    return start_stockd(["--amqp", url, "--workers", "off"], data_dir=data_dir,
                        env={"STOCKD_TOKENS": TOKENS})


def intake_state(s):
    with s.client(token="ops-secret-1") as c:
        r = c.get("/health")
        check_status(r, 200, "/health")
        check("intake" in r.json, "/health without intake: %s" % r.json)
        return r.json["intake"]


def wait_consumed(s, offset):
    """Waits until every message before stream offset `offset` is answered and acked."""
    deadline = time.monotonic() + WAIT_S
    while True:
        state = intake_state(s)
        if state["offset"] >= offset and state["status"] == "ok":
            return state
        check(time.monotonic() < deadline, "intake at %s after %.0f s, want offset %d; log:\n%s"
              % (state, WAIT_S, offset, s.log_tail()))
        time.sleep(0.1)


def catalog(s, sku, units):
    with s.client(token="alice-secret-1") as c:
        r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": units,
                                    "storeId": "S1"}, key=new_key())
        check_status(r, 201, "product %s" % sku)


def on_hand(s, sku):
    with s.client(token="alice-secret-1") as c:
        r = c.get("/v1/availability?sku=" + sku)
        check_status(r, 200, "availability of %s" % sku)
        return r.json["onHand"]


def statuses(s, keys):
    """{key: (status, body)} of GET /v1/commands/{key}, as alice."""
    out = {}
    with s.client(token="alice-secret-1") as c:
        for key in keys:
            r = c.get("/v1/commands/" + key)
            out[key] = (r.status, r.json)
    return out


def test_sell_out():
    url = new_vhost_url()
    s = start(url)
    try:
        catalog(s, "P", 100)
        with s.client(token="alice-secret-1") as c:
            r = c.get("/v1/commands/sell-0")
            check_status(r, 202, "status before the message")
            check_eq(r.json, {"status": "pending", "idempotencyKey": "sell-0"}, "pending body")
            check_eq(r.headers.get("retry-after"), "1", "Retry-After of a pending command")
        keys = ["sell-%d" % i for i in range(1000)]
        publish(url, [message(k, {"sku": "P", "qty": 1, "customerId": "c%d" % i})
                      for i, k in enumerate(keys)])
        wait_consumed(s, 1000)
        answers = statuses(s, keys)
        created = [b for st, b in answers.values() if st == 201]
        refused = [b for st, b in answers.values() if st == 409]
        check_eq(len(created), 100, "201 answers")
        check_eq(len(refused), 900, "409 answers")
        check_eq(len({b["orderId"] for b in created}), 100, "distinct orders")
        check(all(b["code"] == "insufficient_stock" for b in refused), "409 insufficient_stock")
        check_eq(on_hand(s, "P"), 0, "onHand after the sale")
        # Another principal has no record of these keys: its status stays pending.
        with s.client(token="ops-secret-1") as c:
            check_status(c.get("/v1/commands/sell-1"), 202, "another principal's key")
        with s.client(token=None) as c:
            check_status(c.get("/v1/commands/sell-1"), 401, "without a token")
        with s.client(token="ops-secret-1") as c:
            r = c.get("/metrics")
            check_status(r, 200, "/metrics")
            text = r.body.decode()
            check("stockd_intake_consumed_total 1000" in text, "consumed metric:\n%s" % text)
            check('stockd_intake_answers_total{outcome="refused"} 900' in text, "refused metric")
    finally:
        s.stop()


def test_same_key_five_times():
    url = new_vhost_url()
    s = start(url)
    try:
        catalog(s, "Q", 10)
        body = {"sku": "Q", "qty": 2, "customerId": "c"}
        publish(url, [message("once", body)] * 5 + [message("other", body)])
        wait_consumed(s, 6)
        answers = statuses(s, ["once", "other"])
        check_eq(answers["once"][0], 201, "the key's status")
        check_eq(answers["other"][0], 201, "the other key's status")
        check_eq(on_hand(s, "Q"), 6, "two purchases of 2, not six")
        # The same request sent synchronously with the key is a replay of it, not a reuse.
        with s.client(token="alice-secret-1") as c:
            r = c.post("/v1/purchase", body, key="once")
            check_status(r, 201, "the synchronous POST with the key")
            check_eq(r.headers.get("idempotent-replayed"), "true", "a replay")
            check_eq(r.json, answers["once"][1], "the same answer")
        check_eq(on_hand(s, "Q"), 6, "still two purchases")
        # An order through /v1/orders, and its status URL with the key URL-encoded.
        publish(url, [message("ord/1", {"customerId": "c", "lines": [{"sku": "Q", "qty": 1}]},
                              kind="order", route="/v1/orders")])
        wait_consumed(s, 7)
        r = statuses(s, ["ord%2F1"])["ord%2F1"]
        check_eq(r[0], 201, "the order's status")
        check_eq(r[1]["status"], "PENDING", "the order's body")
    finally:
        s.stop()


def test_kill9_while_consuming():
    url = new_vhost_url()
    s = start(url)
    data_dir = s.data_dir
    catalog(s, "K", 5000)
    keys = ["kill-%d" % i for i in range(3000)]
    publish(url, [message(k, {"sku": "K", "qty": 1, "customerId": "c"}) for k in keys])
    deadline = time.monotonic() + WAIT_S
    while intake_state(s)["offset"] < 300:
        check(time.monotonic() < deadline, "the consumer did not start")
        time.sleep(0.01)
    s.kill9()
    s = start(url, data_dir=data_dir)
    try:
        wait_consumed(s, 3000)
        answers = statuses(s, keys)
        check_eq(sorted({st for st, _ in answers.values()}), [201], "every command applied")
        check_eq(len({b["orderId"] for _, b in answers.values()}), 3000, "one order each")
        check_eq(on_hand(s, "K"), 2000, "each command applied once")
    finally:
        s.stop()


def test_malformed_message():
    url = new_vhost_url()
    s = start(url)
    try:
        catalog(s, "M", 10)
        good = {"sku": "M", "qty": 1, "customerId": "c"}
        publish(url, [
            message("m-1", good),
            ("bad-json", "purchase", {}, "{not json"),
            message("m-kind", good, kind="refund"),
            message("m-qty", {"sku": "M", "qty": 0, "customerId": "c"}),
            message("m-2", good),
        ])
        wait_consumed(s, 5)
        answers = statuses(s, ["m-1", "m-2", "m-qty"])
        check_eq(answers["m-1"][0], 201, "the message before")
        check_eq(answers["m-2"][0], 201, "the message after: the consumer went on")
        check_eq(answers["m-qty"][0], 202, "a dead letter's key stays pending")
        check_eq(on_hand(s, "M"), 8, "two purchases")
        with s.client(token="ops-secret-1") as c:
            r = c.get("/v1/dlt?stage=commands")
            check_status(r, 200, "GET /v1/dlt?stage=commands")
            letters = r.json["deadLetters"]
            check_eq([d["seq"] for d in letters], [1, 2, 3], "dead letters by stream offset")
            check_eq([d["id"] for d in letters], ["commands:1", "commands:2", "commands:3"], "ids")
            for d in letters:
                check_eq(sorted(d), ["attempts", "error", "firstFailedAt", "id", "lastFailedAt",
                                     "seq", "stage"], "a dead letter's members")
                check_eq(d["stage"], "commands", "stage")
                check_eq(d["attempts"], 1, "attempts")
            check("JSON" in letters[0]["error"], "error of bad JSON: %s" % letters[0]["error"])
            check("qty" in letters[2]["error"] or "range" in letters[2]["error"],
                  "error of qty 0: %s" % letters[2]["error"])
            check_eq(c.get("/v1/dlt?stage=payment").json["count"], 0, "no payment dead letter")
            check_status(c.get("/v1/dlt?stage=other"), 400, "unknown stage")
    finally:
        s.stop()


def dead_letters(s):
    with s.client(token="ops-secret-1") as c:
        r = c.get("/v1/dlt?stage=commands")
        check_status(r, 200, "GET /v1/dlt?stage=commands")
        return r.json["deadLetters"]


def replay(s, body):
    with s.client(token="ops-secret-1") as c:
        return c.post("/v1/dlt/replay", body)


def test_replay_dead_letters():
    """POST /v1/dlt/replay of stage commands publishes each dead letter's message again, byte
    for byte, with the broker's confirm, and marks it replayed (off the list); a message that
    still cannot be decoded is a dead letter again at its new offset. Broker down: 503
    broker_unavailable, nothing marked."""
    url = new_vhost_url()
    s = start(url)
    try:
        catalog(s, "R", 10)
        good = {"sku": "R", "qty": 1, "customerId": "c"}
        publish(url, [
            message("r-1", good),                                        # offset 0
            ("bad-json", "purchase", {"principal": "alice"}, "{not json"),  # 1
            ("bad-utf8", "order", {}, b'{"v":1,"x":"\xff\xfe"}'),         # 2: no UTF-8 at all
            message("r-qty", {"sku": "R", "qty": 0, "customerId": "c"}),   # 3
            message("r-2", good),                                        # 4
        ])
        wait_consumed(s, 5)
        letters = dead_letters(s)
        check_eq([d["id"] for d in letters], ["commands:1", "commands:2", "commands:3"], "ids")
        errors = {d["seq"]: d["error"] for d in letters}

        # One by id: published again (offset 5), marked, and a dead letter again there.
        r = replay(s, {"ids": ["commands:2"]})
        check_status(r, 202, "replay of commands:2")
        check_eq(r.json, {"ids": ["commands:2"], "replayed": 1, "deferred": 0,
                          "notReplayable": []}, "the replay's answer")
        wait_consumed(s, 6)
        letters = dead_letters(s)
        check_eq([d["seq"] for d in letters], [1, 3, 5], "commands:2 is now commands:5")
        check_eq(letters[2]["error"], errors[2], "the same message, the same error")
        check_eq(letters[2]["attempts"], 1, "a new dead letter")
        # Replayed already: not found again.
        r = replay(s, {"ids": ["commands:2", "commands:77"]})
        check_status(r, 202, "replay of a replayed and an unknown id")
        check_eq(r.json["replayed"], 0, "nothing replayed")

        # The broker down: 503 broker_unavailable, nothing marked.
        broker_stop()
        try:
            deadline = time.monotonic() + WAIT_S
            while intake_state(s)["publisher"] == "ok":
                check(time.monotonic() < deadline, "the publisher did not see the broker go")
                time.sleep(0.1)
            r = replay(s, {"stage": "commands"})
            check_status(r, 503, "replay with the broker down")
            check_eq(r.json["code"], "broker_unavailable", "code")
            check_eq(r.headers.get("retry-after"), "1", "Retry-After")
            check_eq([d["seq"] for d in dead_letters(s)], [1, 3, 5], "nothing marked")
        finally:
            broker_start()

        # Every one of the stage, once the broker is back: each a dead letter again.
        deadline = time.monotonic() + WAIT_S
        while intake_state(s)["status"] != "ok":
            check(time.monotonic() < deadline, "intake did not reconnect")
            time.sleep(0.1)
        r = replay(s, {"stage": "commands"})
        check_status(r, 202, "replay of the stage")
        check_eq(r.json["ids"], ["commands:1", "commands:3", "commands:5"], "replayed ids")
        wait_consumed(s, 9)
        letters = dead_letters(s)
        check_eq([d["seq"] for d in letters], [6, 7, 8], "dead letters at their new offsets")
        check_eq([d["error"] for d in letters], [errors[1], errors[3], errors[2]], "errors")
        check_eq(on_hand(s, "R"), 8, "the two good purchases only")
        with s.client(token="ops-secret-1") as c:
            check_problem(c.post("/v1/dlt/replay", {"ids": ["commands:6", "payment:ord_1"]}),
                          400, "validation_failed", "ids of two stages")
    finally:
        s.stop()


def test_batch_messages():
    """A batch is applied command by command, as if each had come alone: a key seen before is
    a replay, the stock runs out inside it; a batch with one bad command is one dead letter
    and the consumer goes on."""
    url = new_vhost_url()
    s = start(url)
    try:
        catalog(s, "B", 3)
        one = {"sku": "B", "qty": 1, "customerId": "c"}
        publish(url, [
            message("b-0", one),
            batch([("b-0", one), ("b-1", one), ("b-2", one), ("b-3", one), ("b-4", one)]),
            batch([("b-5", one), ("b-6", {"customerId": "c", "lines": [{"sku": "B", "qty": 1}]},
                                  "order", "/v1/orders")]),
            batch([("b-7", one)], route="/purchase"),
        ])
        wait_consumed(s, 4)
        answers = statuses(s, ["b-%d" % i for i in range(8)])
        check_eq([answers["b-%d" % i][0] for i in range(8)],
                 [201, 201, 201, 409, 409, 202, 202, 409],
                 "b-0 once, b-1 and b-2 sold, the rest refused; the bad batch pending")
        check_eq(on_hand(s, "B"), 0, "three units sold, no more")
        with s.client(token="ops-secret-1") as c:
            letters = c.get("/v1/dlt?stage=commands").json["deadLetters"]
            check_eq([d["seq"] for d in letters], [2], "one dead letter: the bad batch's offset")
            check("purchases only" in letters[0]["error"], "why: %s" % letters[0]["error"])
        check_eq(intake_state(s)["offset"], 4, "every message answered and acked")
        # Replayed, the batch goes back to the stream as it came, and is refused again there.
        with s.client(token="ops-secret-1") as c:
            r = c.post("/v1/dlt/replay", {"ids": ["commands:2"]})
            check_status(r, 202, "replay of the batch's dead letter")
        wait_consumed(s, 5)
        letters = dead_letters(s)
        check_eq([d["seq"] for d in letters], [4], "the batch again, at its new offset")
        check("purchases only" in letters[0]["error"], "why again: %s" % letters[0]["error"])
        check_eq(statuses(s, ["b-5"])["b-5"][0], 202, "its purchase still pending")
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_sell_out, test_same_key_five_times, test_kill9_while_consuming,
          test_malformed_message, test_replay_dead_letters, test_batch_messages])
