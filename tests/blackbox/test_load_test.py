"""Black-box tests of the load test (issue 11): POST /v1/admin/load-test {vus, iterations, sku,
qty, kind} runs the in-tree load generator against the server itself and answers throughput,
latency percentiles, status counts and the invariant audit; seed 001's POST /admin/load-test
{vus, iterations, productId, quantity} runs vus x iterations orders. Checked: the documented
shape for both kinds (status counts sum to the requests, the stock moved by exactly the 2xx
answers, the audit ok), a sold-out sku shows as 409s, bad bodies are 400 with their codes, the
admin role is needed, a second load test while one runs is 409 load_test_running, and the
text/event-stream answer (progress events, then the result). Both backends."""

import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (check, check_eq, check_problem, check_status, main,  # noqa: E402
                     new_key, start_stockd)

ROUTE = "/v1/admin/load-test"
SEED_ROUTE = "/admin/load-test"
WAIT_S = 60.0
TOKENS = "boss:admin:boss-secret,ci:write:ci-secret,viewer:read:viewer-secret"


def product(c, sku, on_hand):
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand}, key=new_key())
    check_status(r, 201, "product " + sku)


def availability(c, sku):
    r = c.get("/v1/availability?sku=" + sku)
    check_status(r, 200, "availability " + sku)
    return r.json


def load_test(c, body, route=ROUTE):
    return c.post(route, body, headers={"Content-Type": "application/json"})


def check_shape(j, kind, vus, iterations, total):
    """The documented members of a load test's answer, and their arithmetic."""
    for member in ("kind", "vus", "iterations", "totalRequests", "durationMs", "throughput",
                   "latencyMs", "statusCounts", "errors", "timeouts", "audit"):
        check(member in j, "the answer has %r: %r" % (member, j))
    check_eq(j["kind"], kind, "kind")
    check_eq(j["vus"], vus, "vus")
    check_eq(j["iterations"], iterations, "iterations")
    check_eq(j["totalRequests"], total, "totalRequests")
    check(isinstance(j["durationMs"], int) and j["durationMs"] >= 0, "durationMs %r" % j)
    check(isinstance(j["throughput"], (int, float)) and j["throughput"] > 0, "throughput %r" % j)
    lat = j["latencyMs"]
    check_eq(sorted(lat), ["max", "p50", "p90", "p99"], "latencyMs members")
    check(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"],
          "latency percentiles are ordered: %r" % lat)
    counts = j["statusCounts"]
    check(all(k.isdigit() and len(k) == 3 for k in counts), "status keys: %r" % counts)
    check_eq(sum(counts.values()) + j["errors"] + j["timeouts"], total,
             "answers, errors and timeouts add up to the requests")
    check_eq(j["errors"] + j["timeouts"], 0, "no transport errors on loopback")
    audit = j["audit"]
    check_eq(audit["ok"], True, "the audit after the load test: %r" % audit)
    check_eq(audit["violationCount"], 0, "audit violations")
    check(audit["events"] > 0, "the audit read the log")
    return counts


def test_purchase_and_order_kinds():
    s = start_stockd()
    with s.client() as c:
        product(c, "LT", 10000)
        r = load_test(c, {"vus": 4, "iterations": 200, "sku": "LT", "qty": 1,
                          "kind": "purchase"})
        check_status(r, 200, "load test of purchases")
        counts = check_shape(r.json, "purchase", 4, 200, 200)
        check_eq(counts, {"201": 200}, "every purchase sold")
        check_eq(r.json["sku"], "LT", "sku")
        check_eq(r.json["qty"], 1, "qty")
        check_eq(availability(c, "LT")["onHand"], 10000 - 200, "onHand after 200 purchases")
        r = load_test(c, {"vus": 4, "iterations": 200, "sku": "LT", "qty": 2, "kind": "order"})
        check_status(r, 200, "load test of orders")
        counts = check_shape(r.json, "order", 4, 200, 200)
        check_eq(counts, {"201": 200}, "every order created")
        check_eq(availability(c, "LT")["available"], 10000 - 200 - 400,
                 "available after 200 orders of 2")
        # The workers pay every order: onHand follows once nothing is held any more.
        deadline = time.monotonic() + WAIT_S
        while True:
            a = availability(c, "LT")
            if a["reserved"] == 0 and a["onHand"] == 10000 - 600:
                break
            check(time.monotonic() < deadline, "orders of the load test still unpaid: %r" % a)
            time.sleep(0.1)
    s.stop()


def test_sold_out_shows_as_409():
    s = start_stockd()
    with s.client() as c:
        product(c, "FEW", 50)
        r = load_test(c, {"vus": 8, "iterations": 120, "sku": "FEW"})
        check_status(r, 200, "load test on 50 units")
        counts = check_shape(r.json, "purchase", 8, 120, 120)
        check_eq(counts, {"201": 50, "409": 70}, "50 sold, the rest insufficient_stock")
        check_eq(availability(c, "FEW")["onHand"], 0, "sold out, never below zero")
    s.stop()


def test_seed001_alias():
    s = start_stockd()
    with s.client() as c:
        product(c, "kapil", 5000)
        # Seed 001's body: 20 virtual users of 50 iterations each are 1000 orders.
        r = load_test(c, {"vus": 20, "iterations": 50, "productId": "kapil", "quantity": 1},
                      route=SEED_ROUTE)
        check_status(r, 200, "POST /admin/load-test")
        counts = check_shape(r.json, "order", 20, 50, 1000)
        check_eq(counts, {"201": 1000}, "every order created")
        check_eq(r.json["productId"], "kapil", "productId")
        check_eq(r.json["quantity"], 1, "quantity")
        check_eq(availability(c, "kapil")["available"], 4000, "available after 1000 orders")
    s.stop()


def test_bad_bodies():
    s = start_stockd()
    with s.client() as c:
        product(c, "B", 10)
        cases = [
            ({"iterations": 10, "sku": "B"}, "validation_failed", "vus missing"),
            ({"vus": "4", "iterations": 10, "sku": "B"}, "validation_failed", "vus a string"),
            ({"vus": 4, "iterations": 10}, "validation_failed", "sku missing"),
            ({"vus": 4, "iterations": 10, "sku": "a b"}, "validation_failed", "sku charset"),
            ({"vus": 4, "iterations": 10, "sku": "B", "kind": "refund"}, "validation_failed",
             "unknown kind"),
            ({"vus": 0, "iterations": 10, "sku": "B"}, "load_test_out_of_range", "vus 0"),
            ({"vus": 257, "iterations": 10, "sku": "B"}, "load_test_out_of_range", "vus 257"),
            ({"vus": 4, "iterations": 0, "sku": "B"}, "load_test_out_of_range", "iterations 0"),
            ({"vus": 4, "iterations": 1000001, "sku": "B"}, "load_test_out_of_range",
             "iterations above the limit"),
            ({"vus": 4, "iterations": 10, "sku": "B", "qty": 0}, "load_test_out_of_range",
             "qty 0"),
        ]
        for body, code, what in cases:
            check_problem(load_test(c, body), 400, code, what)
        check_problem(load_test(c, {"vus": 100, "iterations": 20000, "productId": "B"},
                                route=SEED_ROUTE), 400, "load_test_out_of_range",
                      "seed 001: vus x iterations above the limit")
        check_problem(load_test(c, {"vus": 4, "iterations": 10}, route=SEED_ROUTE), 400,
                      "validation_failed", "seed 001: productId missing")
        check_problem(load_test(c, b"{not json"), 400, "invalid_json", "malformed JSON")
        check_problem(load_test(c, [1, 2]), 400, "invalid_json", "not an object")
        check_eq(availability(c, "B")["onHand"], 10, "no refused load test sold anything")
    s.stop()


def test_admin_role_needed():
    s = start_stockd(env={"STOCKD_TOKENS": TOKENS})
    body = {"vus": 1, "iterations": 1, "sku": "R"}
    with s.client(token=None) as anon, s.client(token="ci-secret") as writer, \
            s.client(token="viewer-secret") as viewer, s.client(token="boss-secret") as boss:
        product(boss, "R", 10)
        for c, status, what in ((anon, 401, "no token"), (writer, 403, "a write token"),
                                (viewer, 403, "a read token")):
            check_problem(load_test(c, body), status, None, what + ": " + ROUTE)
            check_problem(load_test(c, {"vus": 1, "iterations": 1, "productId": "R"},
                                    route=SEED_ROUTE), status, None, what + ": " + SEED_ROUTE)
        check_eq(availability(boss, "R")["onHand"], 10, "a refused load test sold nothing")
        # The generator presents the caller's token: an admin's load test is answered 201s.
        r = load_test(boss, body)
        check_status(r, 200, "an admin's load test")
        check_eq(r.json["statusCounts"], {"201": 1}, "its one purchase, with the admin's token")
    s.stop()


def open_stream(port, token, body, route=ROUTE):
    """POSTs a load test with Accept: text/event-stream; returns (connection, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("POST", route, json.dumps(body).encode(),
                 {"Content-Type": "application/json", "Accept": "text/event-stream",
                  "Authorization": "Bearer " + token})
    resp = conn.getresponse()
    check_eq(resp.status, 200, "streaming load test status")
    check(resp.getheader("content-type", "").startswith("text/event-stream"),
          "content type %r" % resp.getheader("content-type"))
    return conn, resp


def read_events(resp):
    """Reads server-sent events until the stream ends: [(event, data as JSON)]."""
    events = []
    kind = None
    while True:
        line = resp.readline()
        if not line:
            return events
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: "):])))


def test_second_load_test_is_409_and_stream():
    s = start_stockd()
    with s.client() as c:
        product(c, "S", 1000000)
        body = {"vus": 8, "iterations": 3000, "sku": "S", "kind": "order"}
        conn, resp = open_stream(s.port, s.token, body)
        # The stream's first line is sent once the load test holds its slot: a second one
        # from now until the result is refused.
        first = resp.readline().decode()
        check(first.startswith(": load test started"), "first line %r" % first)
        check_problem(load_test(c, {"vus": 1, "iterations": 1, "sku": "S"}), 409,
                      "load_test_running", "a second load test while one runs")
        check_problem(load_test(c, {"vus": 1, "iterations": 1, "productId": "S"},
                                route=SEED_ROUTE), 409, "load_test_running",
                      "the alias while one runs")
        events = read_events(resp)
        conn.close()
        check(len(events) >= 2, "progress events and a result: %r" % events[-3:])
        kind, result = events[-1]
        check_eq(kind, "result", "the last event")
        counts = check_shape(result, "order", 8, 3000, 3000)
        check_eq(counts, {"201": 3000}, "every order created")
        progress = [d for k, d in events[:-1]]
        check(all(k == "progress" for k, d in events[:-1]), "only progress before the result")
        phases = [d["phase"] for d in progress]
        check("audit" in phases, "an audit progress event: %r" % phases)
        loads = [d for d in progress if d["phase"] == "load"]
        for d in loads:
            check_eq(d["totalRequests"], 3000, "progress totalRequests")
            check(0 <= d["completed"] <= 3000, "progress completed %r" % d)
        done = [d["completed"] for d in loads]
        check_eq(done, sorted(done), "completed never goes back")
        # Ended: the next one runs.
        r = load_test(c, {"vus": 1, "iterations": 1, "sku": "S"})
        check_status(r, 200, "a load test after the first ended")
    s.stop()


if __name__ == "__main__":
    main([test_purchase_and_order_kinds, test_sold_out_shows_as_409, test_seed001_alias,
          test_bad_bodies, test_admin_role_needed, test_second_load_test_is_409_and_stream])
