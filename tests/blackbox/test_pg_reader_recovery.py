"""Black-box tests of stockd's PostgreSQL readers after the server went away (suite blackbox-pg
only; skipped without $STOCKD_TEST_PG): each I/O thread has its own reader connection, and a
PostgreSQL restart (or a terminated session) leaves it dead until it is used. Once writes are
back, the first read on every thread must answer 200, not 503: the reader reconnects and reads
again by itself. While PostgreSQL is down, reads answer 503 storage_unavailable with
Retry-After, as before.

Requests are sent on keep-alive connections, which stay on the I/O thread that accepted them;
the thread is the letter of the X-Trace-Id the server makes (ta-..., tb-...). No test asserts
how fast anything is."""

import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (PG_DIR, check, check_eq, check_problem, check_status, describe, main,  # noqa: E402
                     new_key, new_pg_database, pg_start, pg_stop, pg_uri, psql, psql_bin,
                     skip_test, start_stockd)

THREADS = 2
CONNECTIONS_PER_THREAD = 3
ORDERS = 3


def thread_of(resp):
    """The I/O thread that answered: the letter after 't' in the generated X-Trace-Id."""
    trace = resp.headers.get("x-trace-id", "")
    check(len(trace) > 2 and trace[0] == "t" and trace[2] == "-",
          "unexpected X-Trace-Id %r" % trace)
    return trace[1]


def connect_once(server, by_thread, spare):
    """One more keep-alive connection, filed under the I/O thread that answers its GET /health
    (whose one read, of the highest event seq, takes no lock that BusyThread holds), or kept
    aside when that thread has enough."""
    c = server.client(timeout=30).connect()
    r = c.get("/health")
    check_status(r, 200, "GET /health")
    cs = by_thread.setdefault(thread_of(r), [])
    (cs if len(cs) < CONNECTIONS_PER_THREAD else spare).append(c)


class BusyThread:
    """Keeps the I/O thread of connection c busy, so that new connections go to the others:
    its GET /v1/idempotency/{key} waits for a lock on table idempotency that a psql session
    holds (only the I/O threads' readers touch that table while nothing is written). The read
    ends when the lock is released, or with a 503 at its deadline: either is fine here."""

    def __init__(self, server, c):
        self.server = server
        self.c = c
        self.holder = None
        self.reader = None

    def __enter__(self):
        self.holder = subprocess.Popen(
            [psql_bin(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
             pg_uri(self.server.pg_db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self.holder.stdin.write(b"BEGIN;\nLOCK TABLE idempotency IN ACCESS EXCLUSIVE MODE;\n"
                                b"SELECT 'locked';\n")
        self.holder.stdin.flush()
        check_eq(self.holder.stdout.readline().strip(), b"locked", "the holder's lock")
        self.reader = threading.Thread(target=lambda: self.c.get("/v1/idempotency/busy"),
                                       daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 10
        while psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stockd'"
                   " AND wait_event_type = 'Lock' AND query LIKE '%AND idem_key = $2%'",
                   db=self.server.pg_db)[0][0] != "1":
            check(time.monotonic() < deadline, "no stockd reader waits for the lock")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.holder.stdin.write(b"COMMIT;\n")
        self.holder.stdin.close()
        self.holder.wait(30)
        self.reader.join(30)
        check(not self.reader.is_alive(), "the blocked read got no answer")


def open_connections(server):
    """Keep-alive connections, CONNECTIONS_PER_THREAD on each of the THREADS I/O threads. Which
    thread accepts a connection is up to the threads; when one takes them all, it is kept busy
    while more connections are opened (BusyThread)."""
    by_thread = {}
    spare = []
    try:
        for attempt in range(6):
            full = [cs for cs in by_thread.values() if len(cs) >= CONNECTIONS_PER_THREAD]
            if len(full) == THREADS:
                break
            if attempt == 0:
                for _ in range(4 * CONNECTIONS_PER_THREAD * THREADS):
                    connect_once(server, by_thread, spare)
                continue
            print("  every connection so far went to %s: keeping a thread busy to reach the"
                  " others" % sorted(by_thread), flush=True)
            with BusyThread(server, full[0][0]):
                for _ in range(CONNECTIONS_PER_THREAD * THREADS):
                    connect_once(server, by_thread, spare)
    finally:
        for c in spare:
            c.close()
    counts = {letter: len(cs) for letter, cs in by_thread.items()}
    check(len(counts) == THREADS and min(counts.values()) >= CONNECTIONS_PER_THREAD,
          "connections per I/O thread: %s" % counts)
    return by_thread


def close_all(by_thread):
    for cs in by_thread.values():
        for c in cs:
            c.close()


def setup_orders(server, sku):
    """A product and ORDERS keyed purchases; returns [(orderId, key)]."""
    made = []
    with server.client() as c:
        r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": 100,
                                    "storeId": "S1"}, key=new_key("product"))
        check_status(r, 201, "create product %s" % sku)
        for i in range(ORDERS):
            key = new_key("order-%d" % i)
            r = c.post("/v1/purchase", {"sku": sku, "qty": 1, "customerId": "c%d" % i}, key=key)
            check_status(r, 201, "purchase %d" % i)
            made.append((r.json["orderId"], key))
    return made


def reader_routes(orders):
    """GET routes every one of which a thread's store reader answers (none from memory)."""
    paths = []
    for order_id, key in orders:
        paths.append(("/v1/orders/" + order_id, order_id))
        paths.append(("/v1/idempotency/" + key, None))
    paths.append(("/v1/events?limit=5", None))
    paths.append(("/v1/projections/status", None))
    return paths


def warm_up(by_thread, orders):
    """Every connection's thread has read once (a read BusyThread held past its deadline
    answers 503 and drops that thread's session: such a thread reads again until it answers)."""
    path = "/v1/orders/" + orders[0][0]
    for letter, cs in sorted(by_thread.items()):
        deadline = time.monotonic() + 30
        while True:
            r = cs[0].get(path)
            if r.status == 200:
                break
            check(time.monotonic() < deadline, "thread %s: %s" % (letter, describe(r)))
            time.sleep(0.1)


def read_everywhere(by_thread, orders, what):
    """Every reader-served route once on every connection: each answer must be 200 (the first
    request on each thread included). Returns the number of reads."""
    bad = []
    reads = 0
    for letter, cs in sorted(by_thread.items()):
        for n, c in enumerate(cs):
            for path, order_id in reader_routes(orders):
                r = c.get(path)
                reads += 1
                check_eq(thread_of(r), letter, "the thread of a keep-alive connection")
                if r.status != 200:
                    bad.append("thread %s, connection %d, %s: %s" % (letter, n, path, describe(r)))
                elif order_id is not None:
                    check_eq(r.json.get("orderId"), order_id, path)
    check(not bad, "%s: %d of %d reads not 200, first: %s" % (what, len(bad), reads, bad[:4]))
    return reads


def check_logged(server, text, what):
    """The server's log holds a line with text (each reconnect of a reader logs one, rate
    limited per call site: at least one shows)."""
    with open(server.log_path, "rb") as f:
        log = f.read().decode("utf-8", "replace")
    check(text in log, "%s: no %r in the server log" % (what, text))


def purchase_until_ok(server, sku, what, timeout=60.0):
    """Sends one keyed purchase again until it answers 201 (503 while the writer has not
    reconnected yet); returns the number of 503s seen."""
    key = new_key("back")
    body = {"sku": sku, "qty": 1, "customerId": "c-back"}
    refused = 0
    deadline = time.monotonic() + timeout
    with server.client(timeout=30) as c:
        while True:
            r = c.post("/v1/purchase", body, key=key, retry=True)
            if r.status == 201:
                return refused
            check_problem(r, 503, "storage_unavailable", what)
            check(r.headers.get("retry-after"), "%s: no Retry-After on the 503" % what)
            refused += 1
            check(time.monotonic() < deadline, "%s: no 201 within %.0f s" % (what, timeout))
            time.sleep(0.1)


def test_pg_reads_after_restart():
    """PostgreSQL restarts while no one reads: once a purchase succeeds again, the first read
    of every route on every connection of both I/O threads answers 200."""
    if not PG_DIR:
        skip_test("STOCKD_TEST_PG_DIR is not set: this test must restart PostgreSQL")
    s = start_stockd(threads=THREADS, pg_db=new_pg_database())
    by_thread = {}
    try:
        orders = setup_orders(s, "RST")
        by_thread = open_connections(s)
        warm_up(by_thread, orders)
        read_everywhere(by_thread, orders, "before the restart")
        pg_stop()
        pg_start()
        refused = purchase_until_ok(s, "RST", "a purchase after the restart")
        reads = read_everywhere(by_thread, orders, "right after writes came back")
        # Told by the writer's recovery, not found out by a failed read.
        check_logged(s, "postgres reader: storage came back; reconnecting before the next read",
                     "after the restart")
        print("  %d purchases refused with 503 before writes came back; %d reads after, all 200"
              % (refused, reads), flush=True)
        with s.client() as c:
            r = c.get("/v1/admin/audit")
        check_status(r, 200, "the audit after the restart")
        check(r.json.get("ok") is True, "the audit after the restart: %s" % r.body[:500])
        close_all(by_thread)
        check_eq(s.stop(), 0, "exit code of a clean stop")
    finally:
        close_all(by_thread)
        s.stop()


def test_pg_reads_after_sessions_terminated():
    """Every session of stockd is terminated (pg_terminate_backend, SQLSTATE 57P01) while the
    server stays up: without any write in between, the first read of every route on every
    connection of both I/O threads answers 200."""
    s = start_stockd(threads=THREADS, pg_db=new_pg_database())
    by_thread = {}
    try:
        orders = setup_orders(s, "TRM")
        by_thread = open_connections(s)
        warm_up(by_thread, orders)
        read_everywhere(by_thread, orders, "before the sessions were terminated")
        ended = psql("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM"
                     " pg_stat_activity WHERE datname = '%s' AND application_name = 'stockd')"
                     " AS t" % s.pg_db)
        check(int(ended[0][0]) >= THREADS, "stockd sessions terminated: %s" % ended)
        reads = read_everywhere(by_thread, orders, "right after the sessions were terminated")
        check_logged(s, "postgres reader: the session was gone; reconnecting to read again",
                     "after the sessions were terminated")
        print("  %d sessions terminated; %d reads after, all 200" % (int(ended[0][0]), reads),
              flush=True)
        purchase_until_ok(s, "TRM", "a purchase after the sessions were terminated")
    finally:
        close_all(by_thread)
        s.stop()


def test_pg_reads_503_while_down():
    """While PostgreSQL is stopped, every reader-served route answers 503 storage_unavailable
    with Retry-After on both threads (promptly: the client's timeout fails a hang); after it
    is back and a purchase succeeded, they answer 200 again."""
    if not PG_DIR:
        skip_test("STOCKD_TEST_PG_DIR is not set: this test must stop PostgreSQL")
    s = start_stockd(threads=THREADS, pg_db=new_pg_database())
    by_thread = {}
    pg_down = False
    try:
        orders = setup_orders(s, "DWN")
        by_thread = open_connections(s)
        warm_up(by_thread, orders)
        read_everywhere(by_thread, orders, "before the stop")
        pg_down = True
        pg_stop()
        for letter, cs in sorted(by_thread.items()):
            for path, _ in reader_routes(orders):
                r = cs[0].get(path)
                what = "%s on thread %s while PostgreSQL is down" % (path, letter)
                check_problem(r, 503, "storage_unavailable", what)
                check(r.headers.get("retry-after"), "%s: no Retry-After" % what)
        pg_start()
        pg_down = False
        purchase_until_ok(s, "DWN", "a purchase after PostgreSQL came back")
        read_everywhere(by_thread, orders, "after PostgreSQL came back")
    finally:
        if pg_down:
            pg_start()
        close_all(by_thread)
        s.stop()


if __name__ == "__main__":
    main([test_pg_reads_after_restart, test_pg_reads_after_sessions_terminated,
          test_pg_reads_503_while_down], needs_pg=True)
