#!/usr/bin/env python3
"""HTTP/1.1 message framing (issue 10, items 1 and 8), over raw sockets: a request whose body
two readers could delimit differently (Content-Length with Transfer-Encoding, two
Content-Lengths, a Transfer-Encoding other than chunked, a Content-Length that is not digits,
obs-fold) is answered 400 bad_framing as problem+json with Connection: close, the connection
is really closed, and nothing sent behind it runs (a smuggled purchase leaves the stock alone).
Good requests still work pipelined and with heads split over several sends. h2o's own
refusals (a body over its 1 MiB buffer, broken chunks) come as problem+json too; the head it
cannot parse (more than 100 header lines) is its fixed text/plain 400 (README "Limits")."""
import socket
import time

from harness import (Response, _parse_json, check, check_eq, check_problem, check_status, main,
                     new_key, start_stockd)

SKU = "FRAME-1"
STOCK = 100
READ_TIMEOUT_S = 10.0
PIECE_PAUSE_S = 0.05  # between the pieces of a split request, so that they arrive apart


def purchase_body(customer="c"):
    return b'{"sku":"%s","qty":1,"customerId":"%s"}' % (SKU.encode(), customer.encode())


def purchase_head(server, key, framing, version=b"1.1"):
    """The head of a keyed purchase, with framing (header lines with CRLF) as given."""
    return (b"POST /v1/purchase HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Idempotency-Key: %s\r\n%s%s\r\n" % (version, key.encode(), server.auth_header(),
                                                  framing))


def purchase(server, key, customer="c"):
    """A complete, well-framed keyed purchase (Content-Length)."""
    body = purchase_body(customer)
    return purchase_head(server, key, b"Content-Length: %d\r\n" % len(body)) + body


def chunked(body):
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


class RawConn:
    """One TCP connection: send bytes as they are, read back the responses one by one."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.eof = False

    def close(self):
        self.sock.close()

    def send(self, *pieces):
        """Sends the pieces one by one, pausing between them so that each is its own read."""
        for i, piece in enumerate(pieces):
            if i > 0:
                time.sleep(PIECE_PAUSE_S)
            self.sock.sendall(piece)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buffer += chunk

    def response(self):
        """The next final response (a 100 Continue is skipped), or None at end of stream."""
        while True:
            while b"\r\n\r\n" not in self.buffer and not self.eof:
                self._fill()
            if b"\r\n\r\n" not in self.buffer:
                check(not self.buffer, "a partial response before the close: %r" % self.buffer)
                return None
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
            if status == 100:
                self.buffer = rest
                continue
            length = int(headers.get("content-length", "0"))
            while len(rest) < length and not self.eof:
                self._fill()
                rest = self.buffer.split(b"\r\n\r\n", 1)[1]
            check(len(rest) >= length, "a response body cut short: %r" % self.buffer)
            self.buffer = rest[length:]
            body = rest[:length]
            return Response(status, headers, body, _parse_json(body))

    def closed_by_server(self):
        """True when the server closes the connection with nothing more to say; False when it
        sends more, or leaves the connection open for READ_TIMEOUT_S."""
        try:
            while not self.eof:
                self._fill()
        except socket.timeout:
            return False
        return self.buffer == b""


def setup(extra_args=None):
    s = start_stockd(extra_args=extra_args)
    with s.client() as c:
        r = c.post("/v1/products", {"sku": SKU, "name": "Frame", "initialOnHand": STOCK},
                   key=new_key("p"))
        check_status(r, 201, "create product")
    return s


def on_hand(server):
    with server.client() as c:
        r = c.get("/v1/availability?sku=" + SKU)
        check_status(r, 200, "availability")
        return r.json["onHand"]


def check_refused(server, data, status, code, what, pieces=None):
    """Sends data (or the pieces) on a new connection: exactly one problem+json answer with
    code, Connection: close, then the server closes; nothing else comes back."""
    conn = RawConn(server.port)
    try:
        conn.send(*(pieces or [data]))
        r = conn.response()
        check(r is not None, "%s: the connection closed without an answer" % what)
        body = check_problem(r, status, code, what)
        check_eq(r.headers.get("connection", "").lower(), "close", "%s: Connection" % what)
        check(conn.closed_by_server(),
              "%s: more came after the refusal: %r" % (what, conn.buffer[:300]))
        return body
    finally:
        conn.close()


def test_content_length_with_chunked_smuggles_nothing():
    """CL + TE: chunked (both orders, with a smuggled purchase behind the chunked body, or
    behind the Content-Length's idea of the body): 400 bad_framing, closed, stock unchanged and
    no order made. Before the fix the first purchase ran and so did the smuggled one."""
    s = setup()
    try:
        body = purchase_body()
        smuggled = purchase(s, new_key("smuggled"), "smuggler")
        framings = [
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(chunked(body)),
            b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: abc\r\n",
        ]
        for i, framing in enumerate(framings):
            data = purchase_head(s, new_key("clte"), framing) + chunked(body) + smuggled
            detail = check_refused(s, data, 400, "bad_framing", "CL+TE #%d" % i)["detail"]
            check("Content-Length and Transfer-Encoding" in detail, "detail %r" % detail)
        check_eq(on_hand(s), STOCK, "onHand after the smuggling attempts")
        with s.client() as c:
            check_problem(c.get("/v1/orders/ord_1"), 404, "unknown_order", "no order was made")
            r = c.post("/v1/purchase", body, key=new_key("after"))
            check_status(r, 201, "a good purchase afterwards")
    finally:
        s.stop()


def test_duplicate_content_length():
    """Two Content-Length lines are refused, equal or not (RFC 9110 8.6 allows either; we
    refuse both, as one rule). Before the fix the first one framed the body."""
    s = setup()
    try:
        body = purchase_body()
        smuggled = purchase(s, new_key("smuggled"), "smuggler")
        for what, framing in (
                ("differing", b"Content-Length: %d\r\nContent-Length: 1\r\n" % len(body)),
                ("differing, longer second", b"Content-Length: %d\r\nContent-Length: %d\r\n"
                 % (len(body), len(body) + len(smuggled))),
                ("equal", b"Content-Length: %d\r\nContent-Length: %d\r\n"
                 % (len(body), len(body)))):
            data = purchase_head(s, new_key("dup"), framing) + body + smuggled
            check_refused(s, data, 400, "bad_framing", "duplicate Content-Length, " + what)
        check_eq(on_hand(s), STOCK, "onHand after duplicate Content-Lengths")
    finally:
        s.stop()


def test_invalid_content_length():
    """A Content-Length that is not plain digits (h2o refuses it): problem+json, closed."""
    s = setup()
    try:
        body = purchase_body()
        for value in (b"+%d" % len(body), b"%d,%d" % (len(body), len(body)),
                      b"%d, %d" % (len(body), len(body)), b"5,%d" % len(body), b"abc",
                      b"-1", b"0x10", b"%d.0" % len(body), b""):
            framing = b"Content-Length: %s\r\n" % value
            data = purchase_head(s, new_key("cl"), framing) + body
            check_refused(s, data, 400, "bad_framing", "Content-Length %r" % value)
        check_eq(on_hand(s), STOCK, "onHand after invalid Content-Lengths")
    finally:
        s.stop()


def test_bad_transfer_encoding():
    """Any Transfer-Encoding but one line of exactly "chunked" on HTTP/1.1 is refused: other
    codings, lists, look-alikes, two lines, obs-fold, and chunked on HTTP/1.0."""
    s = setup()
    try:
        body = chunked(purchase_body())
        smuggled = purchase(s, new_key("smuggled"), "smuggler")
        framings = [
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Transfer-Encoding: chunked, identity\r\n",
            b"Transfer-Encoding: xchunked\r\n",
            b"Transfer-Encoding: chunked-false\r\n",
            b"Transfer-Encoding: identity\r\n",
            b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\n identity\r\n",
            b"Transfer-Encoding: gzip\r\n\tchunked\r\n",
            b"X-Padding: x\r\n Transfer-Encoding: chunked\r\n",
        ]
        for framing in framings:
            data = purchase_head(s, new_key("te"), framing) + body + smuggled
            check_refused(s, data, 400, "bad_framing", "framing %r" % framing)
        data = purchase_head(s, new_key("te10"), b"Transfer-Encoding: chunked\r\n",
                             version=b"1.0") + body
        check_refused(s, data, 400, "bad_framing", "chunked on HTTP/1.0")
        check_eq(on_hand(s), STOCK, "onHand after bad Transfer-Encodings")
    finally:
        s.stop()


def test_pipelined_requests_still_work():
    """Three purchases in one write (Content-Length, chunked, Content-Length), then a fourth
    on the same connection: four 201s in order, the connection kept open."""
    s = setup()
    try:
        conn = RawConn(s.port)
        try:
            chunked_one = (purchase_head(s, new_key("pipe"), b"Transfer-Encoding: chunked\r\n")
                           + chunked(purchase_body("b")))
            conn.send(purchase(s, new_key("pipe"), "a") + chunked_one +
                      purchase(s, new_key("pipe"), "c"))
            for i in range(3):
                r = conn.response()
                check(r is not None, "pipelined purchase %d: connection closed" % i)
                check_status(r, 201, "pipelined purchase %d" % i)
                check_eq(r.headers.get("connection", "").lower(), "keep-alive",
                         "pipelined purchase %d: Connection" % i)
            conn.send(purchase(s, new_key("pipe"), "d"))
            check_status(conn.response(), 201, "a fourth purchase on the same connection")
        finally:
            conn.close()
        check_eq(on_hand(s), STOCK - 4, "onHand after four purchases")
    finally:
        s.stop()


def test_split_heads():
    """Heads that arrive in several pieces: a good purchase (split inside the request line, a
    header name and right before the empty line) is served; a CL+TE one split the same way is
    still refused; a good request, then a refused one, in one pipelined write: the first is
    served, the second refused and nothing behind it runs."""
    s = setup()
    try:
        conn = RawConn(s.port)
        try:
            data = purchase(s, new_key("split"))
            cuts = [5, data.index(b"Idempotency") + 4, data.index(b"\r\n\r\n") + 2]
            pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            conn.send(*pieces)
            check_status(conn.response(), 201, "a purchase sent in %d pieces" % len(pieces))
        finally:
            conn.close()
        body = purchase_body()
        data = (purchase_head(s, new_key("split"), b"Content-Length: 4\r\n"
                              b"Transfer-Encoding: chunked\r\n") + chunked(body) +
                purchase(s, new_key("smuggled"), "smuggler"))
        cut = data.index(b"Transfer-Encoding")
        check_refused(s, None, 400, "bad_framing", "split CL+TE",
                      pieces=[data[:cut + 3], data[cut + 3:cut + 20], data[cut + 20:]])
        conn = RawConn(s.port)
        try:
            bad = (purchase_head(s, new_key("second"), b"Content-Length: %d\r\n"
                                 b"Content-Length: 1\r\n" % len(body)) + body)
            conn.send(purchase(s, new_key("first"), "first") + bad +
                      purchase(s, new_key("third"), "third"))
            check_status(conn.response(), 201, "the good request before a bad one")
            r = conn.response()
            check_problem(r, 400, "bad_framing", "the duplicate Content-Length behind it")
            check_eq(r.headers.get("connection", "").lower(), "close", "Connection")
            check(conn.closed_by_server(), "more came after the refusal: %r" % conn.buffer)
        finally:
            conn.close()
        check_eq(on_hand(s), STOCK - 2, "onHand: the split purchase and the first one only")
    finally:
        s.stop()


def test_h2o_refusals_are_problems():
    """What h2o refuses before our handler: a body over its 1 MiB buffer (by Content-Length,
    and chunked) is 413 body_too_large, broken chunks 400 bad_framing; all problem+json with a
    close. Before the fix they were text/plain."""
    s = setup()
    try:
        head = purchase_head(s, new_key("big"), b"Content-Length: %d\r\n" % (2 * 1024 * 1024))
        body = check_refused(s, head, 413, "body_too_large", "a 2 MiB Content-Length")
        check_eq(body.get("maxBytes"), 64 * 1024, "maxBytes")
        # A chunk announced over 1 MiB of which exactly 1 MiB is sent: h2o refuses when the
        # last byte arrives, so it has read everything and its close cannot reset the socket.
        head = purchase_head(s, new_key("bigc"), b"Transfer-Encoding: chunked\r\n")
        size = 1024 * 1024
        check_refused(s, head + b"%x\r\n" % (size + 16) + b"x" * size, 413, "body_too_large",
                      "a chunked body of 1 MiB")
        for what, chunks in (("a chunk size that is not hex", b"zz\r\n{}\r\n0\r\n\r\n"),
                             ("a chunk longer than its size", b"1\r\n{}\r\n0\r\n\r\n")):
            data = purchase_head(s, new_key("chunk"), b"Transfer-Encoding: chunked\r\n") + chunks
            check_refused(s, data, 400, "bad_framing", what)
        check_eq(on_hand(s), STOCK, "onHand after h2o's refusals")
    finally:
        s.stop()


def test_header_count_limit():
    """100 header lines is h2o's compiled-in maximum: a request with 100 is served; with 101
    h2o answers its fixed text/plain 400 and closes (it has no request to filter yet; README
    "Limits"), and stockd keeps serving."""
    s = setup()
    try:
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(99))
        conn = RawConn(s.port)
        try:
            conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
            check_status(conn.response(), 200, "100 header lines")
        finally:
            conn.close()
        conn = RawConn(s.port)
        try:
            conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\r\n" + extra + b"\r\n")
            r = conn.response()
            check(r is not None, "101 header lines: closed without an answer")
            check_status(r, 400, "101 header lines")
            check(r.headers.get("content-type", "").startswith("text/plain"),
                  "101 header lines: h2o's own answer, got %r" % r.headers)
            check(conn.closed_by_server(), "101 header lines: connection left open")
        finally:
            conn.close()
        with s.client() as c:
            check_status(c.get("/health"), 200, "health afterwards")
    finally:
        s.stop()


if __name__ == "__main__":
    main([test_content_length_with_chunked_smuggles_nothing, test_duplicate_content_length,
          test_invalid_content_length, test_bad_transfer_encoding,
          test_pipelined_requests_still_work, test_split_heads, test_h2o_refusals_are_problems,
          test_header_count_limit])
