"""Black-box tests of bad input: every malformed, mistyped, out-of-range, oversized or
unlabelled request gets a 4xx application/problem+json (never a 5xx), changes nothing, and the
server keeps serving (GET /health after every case, the process alive at the end)."""

import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_events, check, check_eq, check_problem, describe, encode_body,  # noqa: E402
                     main, new_key, run_threads, start_stockd)

SKU = "BAD-1"
STOCK = 100
KEY = object()  # marker: send a fresh Idempotency-Key


def purchase_body(**override):
    body = {"sku": SKU, "qty": 1, "customerId": "cust"}
    body.update(override)
    for name in [n for n, v in body.items() if v is REMOVE]:
        del body[name]
    return body


REMOVE = object()


def case(name, body, status, code=None, path="/v1/purchase", key=KEY,
         content_type="application/json", method="POST", headers=None):
    return {"name": name, "body": body, "status": status, "code": code, "path": path,
            "key": key, "content_type": content_type, "method": method,
            "headers": headers or {}}


def purchase_cases():
    v = "validation_failed"
    j = "invalid_json"
    return [
        case("malformed JSON (truncated)", b'{"sku":', 400, j),
        case("malformed JSON (bare words)", b'{sku: BAD-1, qty: 1}', 400, j),
        case("malformed JSON (trailing garbage)", b'{"sku":"BAD-1","qty":1,"customerId":"c"} x',
             400, j),
        case("malformed JSON (single quotes)", b"{'sku':'BAD-1'}", 400, j),
        case("duplicate member", b'{"sku":"BAD-1","qty":1,"qty":2,"customerId":"c"}', 400, j),
        case("JSON array", b"[1,2,3]", 400, j),
        case("JSON string", b'"buy"', 400, j),
        case("JSON number", b"42", 400, j),
        case("JSON null", b"null", 400, j),
        case("JSON true", b"true", 400, j),
        case("empty body", b"", 400, j),
        case("whitespace body", b"   \n", 400, j),
        case("qty as string", purchase_body(qty="1"), 400, v),
        case("qty as float 1.5", purchase_body(qty=1.5), 400, v),
        case("qty as float 1.0", b'{"sku":"BAD-1","qty":1.0,"customerId":"c"}', 400, v),
        case("qty as exponent 1e3", b'{"sku":"BAD-1","qty":1e3,"customerId":"c"}', 400, v),
        case("qty as bool", purchase_body(qty=True), 400, v),
        case("qty as null", purchase_body(qty=None), 400, v),
        case("qty as object", purchase_body(qty={"n": 1}), 400, v),
        case("qty 0", purchase_body(qty=0), 400, v),
        case("qty negative", purchase_body(qty=-1), 400, v),
        case("qty 1e9+1", purchase_body(qty=1000000001), 400, v),
        case("qty int64 min", purchase_body(qty=-9223372036854775808), 400, v),
        case("qty huge integer literal",
             b'{"sku":"BAD-1","qty":99999999999999999999999,"customerId":"c"}', 400),
        case("qty 1e9 (in range, not in stock)", purchase_body(qty=1000000000), 409,
             "insufficient_stock"),
        case("sku with a space", purchase_body(sku="BAD 1"), 400, v),
        case("sku with a slash", purchase_body(sku="BAD/1"), 400, v),
        case("sku with a quote", purchase_body(sku='BAD"1'), 400, v),
        case("sku non-ASCII", purchase_body(sku="B\u00c4D"), 400, v),
        case("sku with NUL", purchase_body(sku="BAD\u00001"), 400),
        case("sku empty", purchase_body(sku=""), 400, v),
        case("sku 65 chars", purchase_body(sku="A" * 65), 400, v),
        case("sku 64 chars (valid, unknown)", purchase_body(sku="A" * 64), 404, "unknown_sku"),
        case("sku as number", purchase_body(sku=12), 400, v),
        case("sku as array", purchase_body(sku=["BAD-1"]), 400, v),
        case("missing sku", purchase_body(sku=REMOVE), 400, v),
        case("missing qty", purchase_body(qty=REMOVE), 400, v),
        case("missing customerId", purchase_body(customerId=REMOVE), 400, v),
        case("empty object", {}, 400, v),
        case("customerId 129 chars", purchase_body(customerId="c" * 129), 400, v),
        case("customerId as number", purchase_body(customerId=7), 400, v),
        case("storeId with bad chars", purchase_body(storeId="S 1"), 400, v),
        case("storeId 65 chars", purchase_body(storeId="S" * 65), 400, v),
        case("policy unknown", purchase_body(policy="random"), 400, v),
        case("policy as number", purchase_body(policy=1), 400, v),
        case("oversized body (100 KB)", purchase_body(pad="x" * (100 * 1024)), 413,
             "body_too_large"),
        case("body just over 64 KiB", purchase_body(pad="x" * (64 * 1024)), 413,
             "body_too_large"),
        case("missing Content-Type", purchase_body(), 415, "unsupported_media_type",
             content_type=None),
        case("Content-Type text/plain", purchase_body(), 415, "unsupported_media_type",
             content_type="text/plain"),
        case("Content-Type application/jsonx", purchase_body(), 415, "unsupported_media_type",
             content_type="application/jsonx"),
        case("Content-Type form", b"sku=BAD-1&qty=1", 415, "unsupported_media_type",
             content_type="application/x-www-form-urlencoded"),
        case("missing Idempotency-Key", purchase_body(), 428, "idempotency_key_required",
             key=None),
        case("Idempotency-Key of 300 chars", purchase_body(), 400, v, key="k" * 300),
        case("Idempotency-Key of 256 chars", purchase_body(), 400, v, key="k" * 256),
        case("Idempotency-Key empty", purchase_body(), 400, v, key=""),
        case("Idempotency-Key with a space", purchase_body(), 400, v, key="a b"),
        case("invalid UTF-8 in a string", b'{"sku":"BAD-1","qty":1,"customerId":"\xff\xfe"}',
             400, j),
        case("invalid UTF-8 (overlong)", b'{"sku":"BAD-1","qty":1,"customerId":"\xc0\xaf"}',
             400, j),
        case("lone surrogate escape", b'{"sku":"BAD-1","qty":1,"customerId":"\\ud800"}', 400),
        # The parser's message quotes the input near the error: the problem body must still
        # be valid UTF-8 JSON whatever bytes it quotes.
        case("invalid UTF-8 only", b"\xff", 400, j),
        case("invalid UTF-8 after the object", b'{"sku":"BAD-1"}\xff', 400, j),
        case("invalid UTF-8 in a bare word", b"tru\xff", 400, j),
        case("invalid UTF-8 in a member name", b'{"k\xe9y":1}', 400, j),
        case("non-ASCII bare word", "{\"a\": caf\u00e9\u00e9}".encode(), 400, j),
        case("UTF-8 byte order mark", b"\xef\xbb\xbf{}", 400, j),
        case("bad escape after non-ASCII text",
             b'{"a":"' + "\u00e9".encode() * 100 + b'\\uDFFF"}', 400, j),
        case("control character after non-ASCII text",
             b'{"a":"' + "\u20ac".encode() * 30 + b'\x01"}', 400, j),
        case("truncated UTF-8 at the end", b'[' + b'1,' * 2000 + b'\xc3', 400, j),
        case("NUL byte in the body", b'{"sku":"BAD-1",\x00"qty":1,"customerId":"c"}', 400, j),
        case("deeply nested arrays", b"[" * 60000, 400, j),
        case("deeply nested objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, 400, j),
        case("nested member value",
             b'{"sku":"BAD-1","qty":1,"customerId":"c","x":' + b"[" * 3000 + b"]" * 3000 + b"}",
             400, j),
    ]


def other_route_cases():
    v = "validation_failed"
    return [
        case("store: latencyMs negative", {"storeId": "S7", "name": "n", "latencyMs": -1}, 400, v,
             path="/v1/stores"),
        case("store: latencyMs as string", {"storeId": "S7", "name": "n", "latencyMs": "5"}, 400,
             v, path="/v1/stores"),
        case("store: storeId 65 chars", {"storeId": "S" * 65, "name": "n"}, 400, v,
             path="/v1/stores"),
        case("store: name empty", {"storeId": "S7", "name": ""}, 400, v, path="/v1/stores"),
        case("store: name 201 chars", {"storeId": "S7", "name": "n" * 201}, 400, v,
             path="/v1/stores"),
        case("store: missing name", {"storeId": "S7"}, 400, v, path="/v1/stores"),
        case("store: no key", {"storeId": "S7", "name": "n"}, 428, "idempotency_key_required",
             path="/v1/stores", key=None),
        case("product: initialOnHand negative", {"sku": "NEW", "name": "n", "initialOnHand": -1},
             400, v, path="/v1/products"),
        case("product: initialOnHand 1e9+1", {"sku": "NEW", "name": "n",
                                              "initialOnHand": 1000000001}, 400, v,
             path="/v1/products"),
        case("product: initialOnHand float", {"sku": "NEW", "name": "n", "initialOnHand": 2.5},
             400, v, path="/v1/products"),
        case("product: sku with bad chars", {"sku": "N*W", "name": "n"}, 400, v,
             path="/v1/products"),
        case("product: missing name", {"sku": "NEW"}, 400, v, path="/v1/products"),
        case("product: not an object", b"[]", 400, "invalid_json", path="/v1/products"),
        case("product: no key", {"sku": "NEW", "name": "n"}, 428, "idempotency_key_required",
             path="/v1/products", key=None),
        case("product: text/plain", {"sku": "NEW", "name": "n"}, 415, "unsupported_media_type",
             path="/v1/products", content_type="text/plain"),
        case("adjustment: delta as string", {"storeId": "S1", "sku": SKU, "delta": "5",
                                             "reason": "r"}, 400, v, path="/v1/adjustments"),
        case("adjustment: delta 1.5", {"storeId": "S1", "sku": SKU, "delta": 1.5, "reason": "r"},
             400, v, path="/v1/adjustments"),
        case("adjustment: delta -1e9-1", {"storeId": "S1", "sku": SKU, "delta": -1000000001,
                                          "reason": "r"}, 400, v, path="/v1/adjustments"),
        case("adjustment: delta 0", {"storeId": "S1", "sku": SKU, "delta": 0, "reason": "r"},
             400, v, path="/v1/adjustments"),
        case("adjustment: missing reason", {"storeId": "S1", "sku": SKU, "delta": 1}, 400, v,
             path="/v1/adjustments"),
        case("adjustment: missing storeId", {"sku": SKU, "delta": 1, "reason": "r"}, 400, v,
             path="/v1/adjustments"),
        case("adjustment: oversized", {"storeId": "S1", "sku": SKU, "delta": 1,
                                       "reason": "r" * (100 * 1024)}, 413, "body_too_large",
             path="/v1/adjustments"),
        case("adjustment: no key", {"storeId": "S1", "sku": SKU, "delta": 1, "reason": "r"}, 428,
             "idempotency_key_required", path="/v1/adjustments", key=None),
        case("buy_ticket: malformed JSON", b"{", 400, "invalid_json", path="/buy_ticket",
             key=None),
        case("buy_ticket: customer_id as number", {"customer_id": 5}, 400, v,
             path="/buy_ticket", key=None),
        case("buy_ticket: text/plain", {"customer_id": "c"}, 415, "unsupported_media_type",
             path="/buy_ticket", key=None, content_type="text/plain"),
        case("buy_ticket: oversized", {"customer_id": "c" * (100 * 1024)}, 413, "body_too_large",
             path="/buy_ticket", key=None),
        case("reset without --allow-reset", b"", 403, "reset_disabled", path="/reset", key=None),
        case("availability: bad percent escape", None, 400, v, method="GET",
             path="/v1/availability?sku=%ZZ"),
        case("availability: truncated escape", None, 400, v, method="GET",
             path="/v1/availability?sku=AB%4"),
        case("availability: encoded NUL", None, 400, v, method="GET",
             path="/v1/availability?sku=A%00B"),
        case("availability: sku 300 chars", None, 400, v, method="GET",
             path="/v1/availability?sku=" + "A" * 300),
        case("availability: sku with bad chars", None, 400, v, method="GET",
             path="/v1/availability?sku=A%20B"),
        case("availability: empty sku", None, 400, v, method="GET",
             path="/v1/availability?sku="),
        case("availability: storeId 300 chars", None, 400, None, method="GET",
             path="/v1/availability?sku=%s&storeId=%s" % (SKU, "S" * 300)),
        case("order: id overflowing int64", None, 404, "unknown_order", method="GET",
             path="/v1/orders/ord_99999999999999999999999999"),
        case("order: id with leading zero", None, 404, "unknown_order", method="GET",
             path="/v1/orders/ord_01"),
        case("order: negative id", None, 404, "unknown_order", method="GET",
             path="/v1/orders/ord_-1"),
        case("order: empty id", None, 404, "unknown_order", method="GET", path="/v1/orders/"),
        case("order: extra segment", None, 404, "not_found", method="GET",
             path="/v1/orders/ord_1/x"),
    ]


def send_case(server, c):
    """Sends one case on a fresh connection; returns the Response."""
    with server.client() as client:
        if c["method"] == "GET":
            return client.get(c["path"], headers=c["headers"])
        key = new_key("bad") if c["key"] is KEY else c["key"]
        return client.post(c["path"], c["body"], key=key, headers=c["headers"],
                           content_type=c["content_type"])


def check_health(server, after):
    check(server.alive(), "stockd died after case %r (exit %s)" % (after, server.proc.poll()))
    with server.client(timeout=5) as client:
        r = client.get("/health")
    check(r.status == 200, "/health after case %r: %s" % (after, describe(r)))


def run_cases(server, cases):
    failures = []
    for c in cases:
        try:
            r = send_case(server, c)
            check(r.status < 500, "5xx: %s" % describe(r))
            check_problem(r, c["status"], c["code"], c["name"])
        except (AssertionError, OSError) as e:
            failures.append("%s: %s" % (c["name"], e))
        check_health(server, c["name"])
    check(not failures, "%d case(s) failed:\n  %s" % (len(failures), "\n  ".join(failures)))


def setup_product(server):
    with server.client() as client:
        r = client.post("/v1/products", {"sku": SKU, "name": "Bad", "initialOnHand": STOCK},
                        key=new_key())
        check_eq(r.status, 201, "create product")


def check_stock_unchanged(server):
    with server.client() as client:
        r = client.get("/v1/availability?sku=" + SKU)
        check_eq(r.json, {"sku": SKU, "onHand": STOCK, "reserved": 0, "available": STOCK},
                 "stock after only bad requests")
        r = client.get("/v1/orders/ord_1")
        check_problem(r, 404, "unknown_order", "no order was created by bad input")


def test_bad_purchases():
    s = start_stockd()
    try:
        setup_product(s)
        run_cases(s, purchase_cases())
        check_stock_unchanged(s)
        check(s.alive(), "stockd is not running at the end")
    finally:
        s.stop()


def test_bad_other_routes():
    s = start_stockd()
    try:
        setup_product(s)
        run_cases(s, other_route_cases())
        check_stock_unchanged(s)
        with s.client() as client:
            r = client.post("/v1/stores", {"storeId": "S7", "name": "ok"}, key=new_key())
            check_eq(r.status, 201, "S7 was not created by the refused requests")
            r = client.get("/v1/availability?sku=NEW")
            check_problem(r, 404, "unknown_sku", "NEW was not created by the refused requests")
        check(s.alive(), "stockd is not running at the end")
    finally:
        s.stop()


def test_bad_input_keeps_connection():
    """Errors answered by stockd itself keep the HTTP/1.1 connection usable."""
    s = start_stockd()
    try:
        setup_product(s)
        with s.client() as client:
            for body, key, ctype, status in ((b"{", "a", "application/json", 400),
                                             (b"{}", None, "application/json", 428),
                                             (b"{}", "b", "text/plain", 415),
                                             (b'{"qty":"x"}', "c", "application/json", 400)):
                r = client.post("/v1/purchase", body, key=key, content_type=ctype)
                check_problem(r, status, None, "error on a kept-alive connection")
                check(r.headers.get("connection", "").lower() != "close",
                      "stockd closed the connection after a %d" % status)
            r = client.post("/v1/purchase", {"sku": SKU, "qty": 1, "customerId": "c"},
                            key=new_key())
            check_eq(r.status, 201, "a good purchase on the same connection")
    finally:
        s.stop()


def raw_exchange(port, data, timeout=5.0):
    """Sends raw bytes and returns what the server answers before closing (or the timeout)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def test_bad_http():
    """Garbage below the JSON layer: h2o answers it (4xx or a close), stockd keeps serving."""
    s = start_stockd()
    try:
        setup_product(s)
        raws = [
            ("garbage request line", b"GARBAGE\r\n\r\n"),
            ("binary noise", bytes(range(256)) * 4),
            ("bad Content-Length", b"POST /v1/purchase HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: abc\r\n\r\n{}"),
            ("header without colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n"),
            ("truncated body", b"POST /v1/purchase HTTP/1.1\r\nHost: x\r\nContent-Type: "
                               b"application/json\r\nIdempotency-Key: t1\r\n" +
                               s.auth_header() +
                               b"Content-Length: 100\r\n\r\n{\"sku\""),
        ]
        for name, data in raws:
            answer = raw_exchange(s.port, data)
            if answer:
                status_line = answer.split(b"\r\n", 1)[0]
                parts = status_line.split(b" ")
                check(len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and
                      parts[1].isdigit() and 400 <= int(parts[1]) < 500,
                      "%s: want a 4xx or a close, got %r" % (name, answer[:200]))
            check_health(s, name)
        check_stock_unchanged(s)
    finally:
        s.stop()


def test_clients_hang_up():
    """80 clients send a keyed purchase and reset the connection at once: the commands still
    apply exactly once (the late replies are dropped), and each key then replays its order."""
    s = start_stockd()
    try:
        setup_product(s)
        body = encode_body({"sku": SKU, "qty": 1, "customerId": "gone"})
        count = 80  # of STOCK = 100: every one can succeed

        def hang_up(i):
            request = (b"POST /v1/purchase HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                       b"\r\nIdempotency-Key: hang-%d\r\n%sContent-Length: %d\r\n\r\n"
                       % (i, s.auth_header(), len(body)) + body)
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            sock.sendall(request)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: the reply has nowhere to go

        run_threads(hang_up, count, timeout=30)
        check_health(s, "clients hung up")
        with s.client() as client:
            replays = [client.post("/v1/purchase", body, key="hang-%d" % i)
                       for i in range(count)]
            # A command may still be queued when its client is gone: then the "replay" is the
            # first request to reach the writer. Either way each key sells once.
            check_eq(sorted(set(r.status for r in replays)), [201], "statuses of the keys")
            order_ids = [r.json["orderId"] for r in replays]
            check_eq(len(set(order_ids)), count, "distinct orders, one per key")
            again = [client.post("/v1/purchase", body, key="hang-%d" % i) for i in range(count)]
            check_eq([r.body for r in again], [r.body for r in replays], "stable replays")
            r = client.get("/v1/availability?sku=" + SKU)
            check_eq(r.json["onHand"], STOCK - count, "onHand after the hung-up purchases")
            r = client.get("/v1/orders/ord_%d" % (count + 1))
            check_problem(r, 404, "unknown_order", "no order beyond one per key")
        check(s.alive(), "stockd died")
        audit_events(s)  # the event log replays to the stored stock
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_bad_purchases, test_bad_other_routes, test_bad_input_keeps_connection,
          test_bad_http, test_clients_hang_up])
