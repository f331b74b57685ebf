"""Black-box tests of asynchronous intake's publishing side (issue 12, src/intake/intake.h)
against a real RabbitMQ: with --amqp, `Prefer: respond-async` on POST /v1/purchase,
POST /v1/orders and seed 000's POST /purchase answers 202 with Preference-Applied and Location
once the command is on the stream stockd.commands, in the message format of intake.h; a request
that fails validation gets its 4xx at once and publishes nothing; without an Idempotency-Key it
gets 428; while the broker is stopped an asynchronous request gets 503 broker_unavailable with
Retry-After and synchronous purchases still sell; once the broker is back, 202 again. Without
--amqp the preference is ignored (201). End to end through the consumer of the same stockd
(intake_consume.c): an async flash sale over HTTP (200 async purchases from 8 clients on 20
units -> exactly 20 orders at their status URLs, the rest 409), and an async checkout order
that reaches PAID; the consumer's own tests (messages put on the stream directly) are
test_intake.py.

The broker is the node of $STOCKD_TEST_AMQP / $STOCKD_TEST_AMQP_DIR (scripts/run-tests.sh), a
virtual host per test; the stream is read with tests/unit/tool_mq_tail.c ($STOCKD_MQ_TAIL), as
tests/blackbox/test_relay.py does. Both backends."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_status, main, new_key, run_threads,  # noqa: E402
                     start_stockd, stockd_bin)
from test_relay import (WAIT_S, broker_start, broker_stop, metric, mq_tail_bin,  # noqa: E402
                        new_vhost_url, product)

STREAM = "stockd.commands"
ASYNC = {"Prefer": "respond-async"}


def read_commands(url, until_id):
    """Every message of stockd.commands from offset 0 up to the first with id until_id."""
    r = subprocess.run([mq_tail_bin(), url, STREAM, "0", until_id, str(int(WAIT_S * 1000))],
                       capture_output=True, timeout=WAIT_S + 60)
    messages = [json.loads(line) for line in r.stdout.decode().splitlines() if line]
    check(r.returncode == 0, "the stream has no message %s after %.0f s (%d read): %s"
          % (until_id, WAIT_S, len(messages), r.stderr.decode()[-500:]))
    return messages


def check_accepted(r, key, what):
    check_status(r, 202, what)
    check_eq(r.headers.get("preference-applied"), "respond-async", what + " Preference-Applied")
    check_eq(r.json["status"], "accepted", what + " status")
    check_eq(r.json["idempotencyKey"], key, what + " idempotencyKey")
    check_eq(r.headers.get("location"), r.json["statusUrl"], what + " Location")
    return r.json["statusUrl"]


def check_message(m, key, kind, route, body):
    check_eq(m["id"], key, "message-id")
    check_eq(m["type"], kind, "type of " + key)
    check_eq(m["headers"], {"principal": "admin"}, "headers of " + key)
    check_eq(m["body"], {"v": 1, "kind": kind, "principal": "admin", "idempotencyKey": key,
                         "route": route, "body": body}, "body of " + key)


def check_refused(r, what):
    check_status(r, 503, what)
    check_eq(r.json["code"], "broker_unavailable", what + " code")
    check_eq(r.headers.get("retry-after"), "1", what + " Retry-After")
    check(r.headers.get("preference-applied") is None, what + " without Preference-Applied")


def buy_body(sku, customer="c-async"):
    return {"sku": sku, "qty": 1, "customerId": customer}


def test_without_amqp_the_preference_is_ignored():
    server = start_stockd()
    with server.client() as c:
        product(c, "SYNC-A", 10)
        r = c.post("/v1/purchase", buy_body("SYNC-A"), key=new_key(),
                   headers={"Prefer": "respond-async, wait=5"})
        check_status(r, 201, "purchase with Prefer, no --amqp")
        check(r.headers.get("preference-applied") is None, "no Preference-Applied")
        r = c.post("/v1/purchase", buy_body("SYNC-A"), headers=ASYNC)
        check_status(r, 428, "v1 purchase without a key, no --amqp")
        r = c.post("/purchase", buy_body("SYNC-A"), headers=ASYNC)
        check_status(r, 201, "seed purchase without a key, no --amqp: synchronous as always")
        check("intake" not in c.get("/health").json, "/health without --amqp")
        check(b"stockd_intake_" not in c.get("/metrics").body, "intake metrics without --amqp")


def test_async_commands_are_published_and_answered_202():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    with server.client() as c:
        product(c, "ASYNC-A", 100)
        sent = []
        key = new_key("async")
        body = buy_body("ASYNC-A")
        url_v1 = check_accepted(c.post("/v1/purchase", body, key=key, headers=ASYNC), key,
                                "async v1 purchase")
        check_eq(url_v1, "/v1/commands/" + key, "status URL")
        sent.append((key, "purchase", "/v1/purchase", body))
        # Among other preferences (a quoted comma too), in another case.
        key = new_key("async") + ":a/b"
        order = {"customerId": "c-2", "lines": [{"sku": "ASYNC-A", "qty": 2}], "ttlSeconds": 60}
        status_url = check_accepted(c.post("/v1/orders", order, key=key,
                                           headers={"Prefer": 'return=minimal; x="a,b", '
                                                              'Respond-Async, wait=10'}),
                                    key, "async order")
        check_eq(status_url, "/v1/commands/" + key.replace(":", "%3A").replace("/", "%2F"),
                 "percent-encoded status URL")
        sent.append((key, "order", "/v1/orders", order))
        key = new_key("seed")
        raw = b' {"sku": "ASYNC-A",\t"qty": 3, "customerId": "c-3"} '  # verbatim: one line
        check_accepted(c.post("/purchase", raw, key=key, headers=ASYNC), key, "async seed purchase")
        sent.append((key, "purchase", "/purchase", json.loads(raw)))
        # A parameter named respond-async is no preference: served synchronously.
        r = c.post("/v1/purchase", buy_body("ASYNC-A"), key=new_key(),
                   headers={"Prefer": "return=minimal; respond-async"})
        check_status(r, 201, "respond-async as a parameter")
        check_eq(c.get("/health").json["intake"]["publisher"], "ok", "/health intake")
        check_eq(c.get("/ready").json["intake"]["publisher"], "ok", "/ready intake")
        check_eq(metric(c, "stockd_intake_accepted_total"), 3, "accepted")
        check(metric(c, "stockd_intake_confirms_total") >= 3, "confirms")
        check_eq(metric(c, "stockd_intake_connected"), 1, "connected")
    messages = read_commands(url, sent[-1][0])
    check_eq(len(messages), len(sent), "messages on the stream")
    for m, (key, kind, route, body) in zip(messages, sent):
        check_message(m, key, kind, route, body)


def test_refused_requests_publish_nothing():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    with server.client() as c:
        product(c, "REF-A", 10)
        r = c.post("/v1/purchase", {"sku": "REF-A", "customerId": "c"}, key=new_key(),
                   headers=ASYNC)
        check_status(r, 400, "async purchase without qty")
        check_eq(r.json["code"], "validation_failed", "code")
        r = c.post("/v1/orders", b"{not json", key=new_key(), headers=ASYNC)
        check_status(r, 400, "async order with a broken body")
        check_eq(r.json["code"], "invalid_json", "code")
        r = c.post("/v1/purchase", buy_body("REF-A"), headers=ASYNC)
        check_status(r, 428, "async v1 purchase without a key")
        check_eq(r.json["code"], "idempotency_key_required", "code")
        r = c.post("/purchase", buy_body("REF-A"), headers=ASYNC)
        check_status(r, 428, "async seed purchase without a key")
        r = c.request("PUT", "/v1/admin/read-only", b'{"enabled":true}',
                      {"Content-Type": "application/json"})
        check_status(r, 200, "read-only on")
        r = c.post("/v1/purchase", buy_body("REF-A"), key=new_key(), headers=ASYNC)
        check_status(r, 503, "async purchase in read-only mode")
        check_eq(r.json["code"], "read_only", "code")
        r = c.request("PUT", "/v1/admin/read-only", b'{"enabled":false}',
                      {"Content-Type": "application/json"})
        check_status(r, 200, "read-only off")
        key = new_key("last")
        body = buy_body("REF-A")
        check_accepted(c.post("/v1/purchase", body, key=key, headers=ASYNC), key, "async")
        check_eq(metric(c, "stockd_intake_accepted_total"), 1, "accepted")
    messages = read_commands(url, key)
    check_eq(len(messages), 1, "only the accepted request is on the stream")
    check_message(messages[0], key, "purchase", "/v1/purchase", body)


def wait_intake(c, status):
    deadline = time.monotonic() + WAIT_S
    while True:
        intake = c.get("/health").json["intake"]
        if intake["status"] == status:
            return
        check(time.monotonic() < deadline, "intake %s after %.0f s, want %s" % (
            intake, WAIT_S, status))
        time.sleep(0.1)


def test_broker_outage_refuses_async_and_keeps_selling():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    try:
        with server.client() as c:
            product(c, "OUT-A", 100)
            before = new_key("before")
            check_accepted(c.post("/v1/purchase", buy_body("OUT-A"), key=before, headers=ASYNC),
                           before, "async before the outage")
            broker_stop()
            wait_intake(c, "degraded")
            key = new_key("during")
            check_refused(c.post("/v1/purchase", buy_body("OUT-A"), key=key, headers=ASYNC),
                          "async purchase, broker stopped")
            check_refused(c.post("/v1/orders", {"customerId": "c", "lines": [
                {"sku": "OUT-A", "qty": 1}]}, key=new_key(), headers=ASYNC),
                "async order, broker stopped")
            for _ in range(5):
                r = c.post("/v1/purchase", buy_body("OUT-A"), key=new_key(), retry=True)
                check_status(r, 201, "synchronous purchase, broker stopped")
            check_eq(c.get("/ready").json["intake"]["status"], "degraded", "/ready intake")
            check_eq(c.get("/ready").json["intake"]["publisher"], "degraded", "/ready publisher")
            check(metric(c, "stockd_intake_refused_total{reason=\"not_connected\"}") >= 2,
                  "refusals counted")
            check_eq(metric(c, "stockd_intake_connected"), 0, "connected gauge")
            broker_start()
            # Retried with the same key until the publisher has connected again.
            deadline = time.monotonic() + WAIT_S
            while True:
                r = c.post("/v1/purchase", buy_body("OUT-A"), key=key, headers=ASYNC, retry=True)
                if r.status == 202:
                    break
                check_refused(r, "async purchase while the publisher reconnects")
                check(time.monotonic() < deadline, "no 202 %.0f s after the broker came back"
                      % WAIT_S)
                time.sleep(0.2)
            check_accepted(r, key, "async purchase after the outage")
            wait_intake(c, "ok")
    finally:
        broker_start()  # the node serves the rest of the run whatever happened here
    messages = read_commands(url, key)
    check_eq(messages[0]["id"], before, "the first message")
    check_eq(messages[-1]["id"], key, "the last message")


def final_answer(c, status_url):
    """Polls a status URL until it is no longer 202 pending; returns that answer."""
    deadline = time.monotonic() + WAIT_S
    while True:
        r = c.get(status_url)
        if r.status != 202:
            return r
        check_eq(r.json["status"], "pending", "pending " + status_url)
        check(time.monotonic() < deadline, "%s still pending after %.0f s" % (status_url, WAIT_S))
        time.sleep(0.05)


def test_async_flash_sale_end_to_end():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    clients, per_client, units = 8, 25, 20
    try:
        with server.client() as c:
            product(c, "E2E-A", units)
        urls = [[] for _ in range(clients)]

        def buyer(i):
            with server.client() as c:
                for j in range(per_client):
                    key = new_key("e2e-%d-%d" % (i, j))
                    r = c.post("/v1/purchase", buy_body("E2E-A", "c-%d" % i), key=key,
                               headers=ASYNC)
                    urls[i].append(check_accepted(r, key, "async purchase %d/%d" % (i, j)))
        run_threads(buyer, clients, timeout=WAIT_S * 2)
        with server.client() as c:
            sold, refused, orders = 0, 0, set()
            for u in [u for per in urls for u in per]:
                r = final_answer(c, u)
                if r.status == 201:
                    sold += 1
                    orders.add(r.json["orderId"])
                    # The status points on at the order, as the POST's replay would.
                    check_eq(r.headers.get("location"), "/v1/orders/" + r.json["orderId"],
                             "Location of the 201 at " + u)
                else:
                    check_status(r, 409, "the final answer of " + u)
                    check_eq(r.json["code"], "insufficient_stock", "refusal of " + u)
                    check(r.headers.get("location") is None, "no Location on the 409 at " + u)
                    refused += 1
            check_eq((sold, refused), (units, clients * per_client - units), "sold, refused")
            check_eq(len(orders), units, "distinct orders")
            r = c.get("/v1/availability?sku=E2E-A")
            check_status(r, 200, "availability")
            check_eq((r.json["onHand"], r.json["reserved"]), (0, 0), "stock after the sale")
            # An async checkout order: 201 at its status URL, then the workers take it to PAID.
            product(c, "E2E-B", 5)
            key = new_key("e2e-order")
            r = c.post("/v1/orders", {"customerId": "c-o", "lines": [{"sku": "E2E-B", "qty": 2}]},
                       key=key, headers=ASYNC)
            r = final_answer(c, check_accepted(r, key, "async order"))
            check_status(r, 201, "the async order's answer")
            order_id = r.json["orderId"]
            check_eq(r.headers.get("location"), "/v1/orders/" + order_id, "the order's Location")
            check_status(c.get(r.headers["location"]), 200, "GET the order's Location")
            deadline = time.monotonic() + WAIT_S
            while c.get("/v1/orders/" + order_id).json["status"] != "PAID":
                check(time.monotonic() < deadline, "the async order is not PAID")
                time.sleep(0.05)
    finally:
        server.stop()


def test_concurrent_purchases_share_messages_each_once():
    """Purchases that wait for the publisher together go out packed in batch messages
    (intake.h); every accepted key is in the stream exactly once, each command as its own
    message would carry it, and each is applied once."""
    url = new_vhost_url()
    server = start_stockd(["--amqp", url])
    clients, per_client = 16, 30
    try:
        with server.client() as c:
            product(c, "PACK", 100000)
        accepted = [[] for _ in range(clients)]

        def buyer(i):
            with server.client() as c:
                for j in range(per_client):
                    key = new_key("pack-%d-%d" % (i, j))
                    r = c.post("/purchase", buy_body("PACK", "c-%d" % i), key=key, headers=ASYNC)
                    check_accepted(r, key, "async purchase %d/%d" % (i, j))
                    accepted[i].append(key)
        run_threads(buyer, clients, timeout=WAIT_S * 2)
        with server.client() as c:
            last = new_key("pack-last")  # alone: a message of its own, the end of the run
            check_accepted(c.post("/purchase", buy_body("PACK"), key=last, headers=ASYNC),
                           last, "the last purchase")
        keys = [k for per in accepted for k in per] + [last]
        messages = read_commands(url, last)
        seen = []
        for m in messages:
            if m["type"] == "batch":
                check_eq(m["headers"], {}, "a batch's headers")
                check_eq((m["body"]["v"], m["body"]["kind"]), (2, "batch"), "a batch's format")
                commands = m["body"]["commands"]
                check(2 <= len(commands) <= 64, "a batch of %d" % len(commands))
                check_eq(m["id"], commands[0]["idempotencyKey"], "a batch's message-id")
            else:
                commands = [m["body"]]
                check_eq(m["id"], commands[0]["idempotencyKey"], "message-id")
            for command in commands:
                key = command["idempotencyKey"]
                check_eq(command, {"v": 1, "kind": "purchase", "principal": "admin",
                                   "idempotencyKey": key, "route": "/purchase",
                                   "body": buy_body("PACK", command["body"]["customerId"])},
                         "the command of " + key)
                seen.append(key)
        check_eq(sorted(seen), sorted(keys), "every accepted key once in the stream")
        batched = sum(1 for m in messages if m["type"] == "batch")
        print("  %d commands in %d messages (%d batches)" % (len(seen), len(messages), batched))
        with server.client() as c:
            for key in keys:
                check_status(final_answer(c, "/v1/commands/" + key), 201, "the answer of " + key)
            r = c.get("/v1/availability?sku=PACK")
            check_eq(r.json["onHand"], 100000 - len(keys), "each purchase applied once")
    finally:
        server.stop()


def test_relay_off_takes_commands_and_publishes_no_event():
    url = new_vhost_url()
    server = start_stockd(["--amqp", url, "--relay", "off"])
    try:
        with server.client() as c:
            product(c, "NORELAY", 5)
            key = new_key("norelay")
            r = c.post("/purchase", buy_body("NORELAY"), key=key, headers=ASYNC)
            check_status(final_answer(c, check_accepted(r, key, "async purchase")), 201,
                         "the async purchase's answer")
            health = c.get("/health").json
            check("relay" not in health and "intake" in health, "/health: %s" % health)
            check(b"stockd_relay_" not in c.get("/metrics").body, "no relay metrics")
        check("relay off" in server.log_tail(500), "the log says the relay is off")
    finally:
        server.stop()
    r = subprocess.run([stockd_bin(), "--relay", "maybe"], capture_output=True, timeout=30)
    check(r.returncode != 0, "--relay maybe is refused")


if __name__ == "__main__":
    main([test_without_amqp_the_preference_is_ignored,
          test_async_commands_are_published_and_answered_202,
          test_refused_requests_publish_nothing,
          test_broker_outage_refuses_async_and_keeps_selling,
          test_async_flash_sale_end_to_end,
          test_concurrent_purchases_share_messages_each_once,
          test_relay_off_takes_commands_and_publishes_no_event])
