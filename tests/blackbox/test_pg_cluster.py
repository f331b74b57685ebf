"""Black-box tests of stockd on PostgreSQL (suite blackbox-pg only; skipped without
$STOCKD_TEST_PG): several instances on one database never oversell and share idempotency keys,
kill -9 of one instance loses no acknowledged order, and a PostgreSQL restart under load gives
503 + Retry-After on writes (reads keep answering) until stockd reconnects by itself.

An instance follows the changes the others commit with some lag, so checks across instances
poll (`eventually`) with generous deadlines; no test asserts how fast anything is."""

import functools
import http.client
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import (PG_DIR, audit_events, check, check_eq, check_problem, check_status,  # noqa: E402
                     describe, main, new_key, new_pg_database, pg_start, pg_stop, pg_uri, psql,
                     psql_bin,
                     run_threads, skip_test, start_stockd, wait_health)

SETTLE_S = 15.0  # how long another instance may take to see a change (the contract says ~5 s)


eventually = functools.partial(harness.eventually, timeout=SETTLE_S)


def make_product(server, sku, on_hand):
    with server.client() as c:
        r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand,
                                    "storeId": "S1"}, key=new_key("product"))
        check_status(r, 201, "create product %s" % sku)
        check_eq((r.json["storeId"], r.json["onHand"]), ("S1", on_hand), "product %s" % sku)


def availability(server, sku):
    with server.client() as c:
        r = c.get("/v1/availability?sku=" + sku)
    check_status(r, 200, "GET availability of %s on :%d" % (sku, server.port))
    return r.json


def check_stored(server, sku, stock, sold, orders, what):
    """The database itself (psql): the sku's onHand + sold == stock, sold units, no units
    reserved, and the number of orders (each test has its own database)."""
    on_hand, reserved, sold_stored = [int(x) for x in psql(
        "SELECT coalesce(sum(on_hand), 0), coalesce(sum(reserved), 0), coalesce(sum(sold), 0)"
        " FROM stock_items WHERE sku = '%s'" % sku, db=server.pg_db)[0]]
    check_eq((on_hand + sold_stored, sold_stored, reserved), (stock, sold, 0),
             "%s: stored onHand + sold, sold, reserved" % what)
    check_eq(int(psql("SELECT count(*) FROM orders", db=server.pg_db)[0][0]), orders,
             "%s: orders stored" % what)


def wait_on_hand(servers, sku, on_hand, what):
    """Every server eventually reports onHand == available == on_hand (reserved 0)."""
    for s in servers:
        eventually(lambda: check_eq(availability(s, sku), {
            "sku": sku, "onHand": on_hand, "reserved": 0, "available": on_hand},
            "availability on :%d" % s.port), "%s: instance :%d" % (what, s.port))


def check_orders_everywhere(servers, acked, what):
    """Every acknowledged purchase (key -> (body, first response)) is readable as acknowledged
    on every server (polling while an instance catches up)."""
    items = list(acked.items())
    for s in servers:
        pending = items
        deadline = time.monotonic() + SETTLE_S
        while True:
            errors = []
            lock = threading.Lock()
            parts = 6

            def reader(i, s=s, pending=pending, errors=errors, lock=lock):
                with s.client() as c:
                    for key, (body, first) in pending[i::parts]:
                        order_id = first.json["orderId"]
                        r = c.get("/v1/orders/" + order_id)
                        want = (order_id, body["customerId"], first.json["storeId"],
                                [{"sku": body["sku"], "qty": body["qty"]}])
                        have = None if r.status != 200 else (
                            r.json.get("orderId"), r.json.get("customerId"),
                            r.json.get("storeId"), r.json.get("lines"))
                        if have != want:
                            with lock:
                                errors.append((key, body, first, "%s: %s, acknowledged %r" % (
                                    order_id, describe(r) if have is None else have, want)))

            run_threads(reader, parts, timeout=90)
            if not errors or time.monotonic() > deadline:
                break
            pending = [(key, (body, first)) for key, body, first, _ in errors]
            time.sleep(0.2)
        check(not errors, "%s: %d acknowledged orders missing or wrong on :%d, first: %s"
              % (what, len(errors), s.port, [e[3] for e in errors[:3]]))


def check_replays(server, acked, what):
    """Every acknowledged key sent again (same body) answers the first response, replayed."""
    items = list(acked.items())
    errors = []
    parts = 6

    def replayer(i):
        with server.client() as c:
            for key, (body, first) in items[i::parts]:
                r = c.post("/v1/purchase", body, key=key, retry=True)
                if r.status != 201 or r.body != first.body or \
                        r.headers.get("idempotent-replayed") != "true":
                    errors.append("%s: %s replayed=%s, first %r" % (
                        key, describe(r), r.headers.get("idempotent-replayed"), first.body))

    run_threads(replayer, parts, timeout=90)
    check(not errors, "%s: %d replays on :%d differ, first: %s"
          % (what, len(errors), server.port, errors[:3]))


def settle_unknown(server, unknown, what):
    """Sends again every purchase whose outcome is unknown (cut off, 503): each must now answer
    201, a replay when the first attempt committed. Returns {key: (body, response)}."""
    done = {}
    errors = []
    with server.client() as c:
        for key, body in unknown.items():
            r = c.post("/v1/purchase", body, key=key, retry=True)
            if r.status == 201:
                done[key] = (body, r)
            else:
                errors.append("%s: %s" % (key, describe(r)))
    check(not errors, "%s: %d purchases of unknown outcome refused when sent again, first: %s"
          % (what, len(errors), errors[:3]))
    return done


def classify_burst(responses, expected_ok, what):
    ok = [r for _, r in responses if r.status == 201]
    sold_out = [r for _, r in responses if r.status == 409 and r.json and
                r.json.get("code") == "insufficient_stock"]
    other = [r for _, r in responses if r.status not in (201, 409)]
    check(not other, "%s: %d unexpected responses, first: %s"
          % (what, len(other), describe(other[0]) if other else ""))
    check_eq(len(ok), expected_ok, "%s: purchases acknowledged 201" % what)
    check_eq(len(sold_out), len(responses) - expected_ok, "%s: 409 insufficient_stock" % what)
    order_ids = [r.json["orderId"] for r in ok]
    check_eq(len(set(order_ids)), len(order_ids), "%s: distinct orderIds" % what)
    return ok


def test_pg_three_instances_no_oversell():
    """One database, three instances: 1,500 concurrent purchases of 100 units spread
    round-robin over the instances sell exactly 100."""
    db = new_pg_database()
    servers = [start_stockd(pg_db=db) for _ in range(3)]
    try:
        make_product(servers[0], "HOT", 100)
        wait_on_hand(servers, "HOT", 100, "the new product")
        threads, per_thread = 60, 25
        barrier = threading.Barrier(threads, timeout=60)
        results = [[] for _ in range(threads)]

        def worker(i):
            clients = [s.client(timeout=60) for s in servers]
            try:
                for c in clients:
                    c.connect()
                barrier.wait()
                for j in range(per_thread):
                    n = (i + j) % len(servers)
                    key = new_key("hot-%d-%d" % (i, j))
                    body = {"sku": "HOT", "qty": 1, "customerId": "c%d-%d" % (i, j)}
                    results[i].append((n, key, body, clients[n].post("/v1/purchase", body,
                                                                      key=key)))
            finally:
                for c in clients:
                    c.close()

        run_threads(worker, threads, timeout=120)
        sent = [x for rs in results for x in rs]
        check_eq(len(sent), 1500, "responses")
        ok = classify_burst([(n, r) for n, _, _, r in sent], 100,
                            "1500 buyers on 3 instances, 100 units")
        check_eq(sorted(r.json["available"] for r in ok), list(range(100)),
                 "the 'available' of the 100 sales (each unit sold once)")
        per_instance = [sum(1 for n, _, _, r in sent if n == k and r.status == 201)
                        for k in range(len(servers))]
        print("  sales per instance: %s" % per_instance, flush=True)
        wait_on_hand(servers, "HOT", 0, "after the sale")
        acked = {key: (body, r) for _, key, body, r in sent if r.status == 201}
        check_orders_everywhere(servers, acked, "1500 buyers on 3 instances")
        check_stored(servers[0], "HOT", 100, 100, 100, "1500 buyers on 3 instances")
        for s in servers:
            check(s.alive(), "instance :%d died" % s.port)
        audit_events(servers[1])
    finally:
        for s in servers:
            s.stop()


def test_pg_duplicate_key_two_instances():
    """The same Idempotency-Key and body sent at once to two instances of one database make
    one order, and both instances answer it byte for byte."""
    db = new_pg_database()
    servers = [start_stockd(pg_db=db) for _ in range(2)]
    try:
        make_product(servers[0], "DUP", 100)
        wait_on_hand(servers, "DUP", 100, "the new product")
        keys = 20
        jobs = [(k, n) for k in range(keys) for n in range(len(servers))]
        bodies = [{"sku": "DUP", "qty": 1 + k % 3, "customerId": "dup-%d" % k}
                  for k in range(keys)]
        key_names = [new_key("dup-%d" % k) for k in range(keys)]
        answers = {}
        barrier = threading.Barrier(len(jobs), timeout=60)
        lock = threading.Lock()

        def sender(i):
            k, n = jobs[i]
            with servers[n].client(timeout=60) as c:
                c.connect()
                barrier.wait()
                r = c.post("/v1/purchase", bodies[k], key=key_names[k])
            with lock:
                answers[(k, n)] = r

        run_threads(sender, len(jobs), timeout=120)
        replayed = 0
        order_ids = []
        for k in range(keys):
            a, b = answers[(k, 0)], answers[(k, 1)]
            check_status(a, 201, "key %d on instance 1" % k)
            check_status(b, 201, "key %d on instance 2" % k)
            check_eq(b.body, a.body, "key %d: the answers of the two instances" % k)
            flags = [r.headers.get("idempotent-replayed") for r in (a, b)]
            check(flags.count("true") <= 1, "key %d: both answers are replays: %r" % (k, flags))
            replayed += flags.count("true")
            order_ids.append(a.json["orderId"])
        check_eq(len(set(order_ids)), keys, "distinct orders for %d keys" % keys)
        print("  %d of %d duplicate answers carried Idempotent-Replayed: true"
              % (replayed, keys), flush=True)
        sold = sum(b["qty"] for b in bodies)
        wait_on_hand(servers, "DUP", 100 - sold, "one order per key")
        acked = {key_names[k]: (bodies[k], answers[(k, 0)]) for k in range(keys)}
        check_orders_everywhere(servers, acked, "duplicate keys")
        for s in servers:
            check_replays(s, acked, "duplicate keys")
        wait_on_hand(servers, "DUP", 100 - sold, "after the replays")
        check_stored(servers[0], "DUP", 100, sold, keys, "duplicate keys")
        audit_events(servers[0])
    finally:
        for s in servers:
            s.stop()


class Load:
    """Purchasing threads per server (qty 1, unique keys) until stop() or their server dies.
    Records acknowledged purchases, purchases of unknown outcome (cut off, 503) and anything
    unexpected; 503 answers must be problem+json storage_unavailable with Retry-After."""

    def __init__(self, servers, sku, threads_per_server, tag, request_timeout=20.0):
        self.sku = sku
        self.tag = tag
        self.lock = threading.Lock()
        self.acked = {}        # key -> (body, response)
        self.acked_by = {}     # server port -> number of 201s
        self.unknown = {}      # key -> body: cut off or 503, may or may not have committed
        self.refused_503 = []  # (time, response)
        self.errors = []
        self.killed = set()  # ports of servers the test kills: cut-off requests are expected
        self.first_ok_after = {}  # mark -> time of the first 201 at or after mark
        self.stopping = threading.Event()
        self.threads = []
        n = 0
        for s in servers:
            for _ in range(threads_per_server):
                t = threading.Thread(target=self._worker, args=(s, n, request_timeout),
                                     daemon=True)
                self.threads.append(t)
                n += 1

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _worker(self, server, i, request_timeout):
        j = 0
        try:
            client = server.client(timeout=request_timeout)
        except OSError as e:
            with self.lock:
                self.errors.append("thread %d: %r" % (i, e))
            return
        with client:
            while not self.stopping.is_set():
                key = new_key("%s-%d-%d" % (self.tag, i, j))
                body = {"sku": self.sku, "qty": 1, "customerId": "%s-%d-%d" % (self.tag, i, j)}
                j += 1
                try:
                    r = client.post("/v1/purchase", body, key=key)
                except ConnectionRefusedError:
                    with self.lock:
                        if server.port not in self.killed:
                            self.errors.append("thread %d: connection refused" % i)
                    return  # a killed server: this request never went out
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.unknown[key] = body
                        if server.port not in self.killed:  # cut off or hung
                            self.errors.append("thread %d: %s: %s (server not killed)"
                                               % (i, type(e).__name__, e))
                    return
                now = time.monotonic()
                with self.lock:
                    if r.status == 201:
                        self.acked[key] = (body, r)
                        self.acked_by[server.port] = self.acked_by.get(server.port, 0) + 1
                        for mark in self.first_ok_after:
                            if self.first_ok_after[mark] is None and now >= mark:
                                self.first_ok_after[mark] = now
                    elif r.status == 503:
                        self.unknown[key] = body
                        self.refused_503.append((now, r))
                    else:
                        self.errors.append("thread %d: unexpected %s" % (i, describe(r)))
                        return
                if r.status == 503:
                    time.sleep(0.05)  # a client honouring Retry-After would wait longer

    def kill9(self, server):
        """kill -9 of server, whose cut-off requests are then expected."""
        with self.lock:
            self.killed.add(server.port)
        server.kill9()

    def count_acked(self):
        with self.lock:
            return len(self.acked)

    def mark(self):
        """A point in time; first_ok_after[mark] becomes the time of the next 201."""
        mark = time.monotonic()
        with self.lock:
            self.first_ok_after[mark] = None
        return mark

    def ok_since(self, mark):
        with self.lock:
            return self.first_ok_after.get(mark)

    def stop(self, timeout=60.0):
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        check(not any(t.is_alive() for t in self.threads),
              "%s: purchasing threads still running %.0f s after stop" % (self.tag, timeout))


def check_503(r, what):
    """A write refused while storage is down: 503 problem+json storage_unavailable with a
    Retry-After of whole seconds."""
    body = check_problem(r, 503, None, what)
    check("storage_unavailable" in (body.get("code"), body.get("type")) or
          str(body.get("type", "")).endswith("storage_unavailable"),
          "%s: 503 is not storage_unavailable: %r" % (what, body))
    retry_after = r.headers.get("retry-after")
    check(retry_after is not None and retry_after.isdigit(),
          "%s: 503 without a Retry-After in seconds: %r" % (what, retry_after))


def check_conservation(servers, sku, stock, acked, what):
    """Every purchase key sent has exactly one order (the unknown ones were settled): the
    units sold (stock - onHand) equal the acknowledged purchases, on every instance."""
    wait_on_hand(servers, sku, stock - len(acked), what)


def test_pg_kill9_during_load():
    """Two instances on one database under load; kill -9 one of them: every 201 it gave is
    readable through the survivor and after its restart, and stock + sales add up."""
    stock = 100000
    db = new_pg_database()
    s1 = start_stockd(pg_db=db)
    s2 = start_stockd(pg_db=db)
    servers = [s1, s2]
    try:
        make_product(s1, "K9", stock)
        wait_on_hand(servers, "K9", stock, "the new product")
        load = Load(servers, "K9", 12, "k9").start()
        started = time.monotonic()
        while time.monotonic() - started < 1.5 and load.count_acked() < 600:
            time.sleep(0.01)
        with load.lock:
            acked_s1_at_kill = load.acked_by.get(s1.port, 0)
        load.kill9(s1)
        killed_at = load.mark()
        time.sleep(1.0)  # the survivor keeps selling
        deadline = time.monotonic() + 20
        while load.ok_since(killed_at) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        load.stop()
        check(not load.errors, "load: %d errors, first: %s" % (len(load.errors), load.errors[:3]))
        check(acked_s1_at_kill > 0, "the killed instance acknowledged nothing before the kill")
        check(load.ok_since(killed_at) is not None,
              "the surviving instance acknowledged nothing after the kill")
        check(not load.refused_503, "%d answers 503 with PostgreSQL up, first: %s" % (
            len(load.refused_503), load.refused_503 and describe(load.refused_503[0][1])))
        print("  acknowledged %s (by port; %d by the killed one at the kill), %d cut off"
              % (load.acked_by, acked_s1_at_kill, len(load.unknown)), flush=True)
        acked = dict(load.acked)
        check_orders_everywhere([s2], acked, "after kill -9 of one instance, on the survivor")
        s1 = start_stockd(data_dir=s1.data_dir)  # same data directory: same database
        servers = [s1, s2]
        wait_health(s1)
        check_orders_everywhere([s1], acked, "after the killed instance restarted")
        check_replays(s1, acked, "after the killed instance restarted")
        acked.update(settle_unknown(s2, load.unknown, "cut off by the kill"))
        check_conservation(servers, "K9", stock, acked, "kill -9 of one instance")
        with s1.client() as c:
            r = c.post("/v1/purchase", {"sku": "K9", "qty": 1, "customerId": "after"},
                       key=new_key())
            check_status(r, 201, "purchase on the restarted instance")
        wait_on_hand(servers, "K9", stock - len(acked) - 1, "after a last purchase")
        check_stored(s2, "K9", stock, len(acked) + 1, len(acked) + 1, "kill -9 of one instance")
        audit_events(s2)
    finally:
        for s in servers:
            s.stop()


def test_pg_restart_during_load():
    """PostgreSQL stops for ~2 s under load: writes answer 503 + Retry-After (no hang, no
    500), availability reads keep answering 200, and after PostgreSQL is back writes succeed
    again without restarting stockd; no 201 is lost and stock is conserved."""
    if not PG_DIR:
        skip_test("STOCKD_TEST_PG_DIR is not set: this test must stop and start PostgreSQL")
    stock = 100000
    s = start_stockd(pg_db=new_pg_database())
    pg_down = False
    try:
        make_product(s, "PGR", stock)
        load = Load([s], "PGR", 8, "pgr").start()
        reads = []  # (time, status or exception text)
        reads_stop = threading.Event()

        def reader():
            with s.client(timeout=20) as c:
                while not reads_stop.is_set():
                    try:
                        r = c.get("/v1/availability?sku=PGR")
                        reads.append((time.monotonic(), r.status, r))
                    except (OSError, http.client.HTTPException) as e:
                        reads.append((time.monotonic(), repr(e), None))
                        return
                    time.sleep(0.02)

        read_thread = threading.Thread(target=reader, daemon=True)
        read_thread.start()
        started = time.monotonic()
        while time.monotonic() - started < 1.0 and load.count_acked() < 300:
            time.sleep(0.01)
        acked_before = load.count_acked()
        pg_down = True
        pg_stop()
        down_at = time.monotonic()
        time.sleep(2.0)
        pg_start()
        pg_down = False
        up_at = load.mark()
        deadline = time.monotonic() + 30
        while load.ok_since(up_at) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        load.stop()
        reads_stop.set()
        read_thread.join(30)
        check(not read_thread.is_alive(), "the availability reader hangs")
        check(not load.errors, "load: %d errors, first: %s" % (len(load.errors), load.errors[:3]))
        check(acked_before > 0, "nothing acknowledged before PostgreSQL stopped")
        for when, r in load.refused_503:
            check_503(r, "a purchase %.1f s after PostgreSQL stopped" % (when - down_at))
        check(load.refused_503, "no purchase was refused with 503 while PostgreSQL was down")
        bad_reads = [(when, status) for when, status, _ in reads if status != 200]
        check(not bad_reads, "availability reads failed: %s" % bad_reads[:3])
        during = [r for when, _, r in reads if down_at + 0.5 <= when <= up_at]
        check(during, "no availability read was answered while PostgreSQL was down")
        recovered = load.ok_since(up_at)
        check(recovered is not None, "no purchase succeeded within 30 s of PostgreSQL's restart")
        print("  %d acknowledged (%d before the stop), %d refused with 503, %d reads during "
              "the outage, first 201 %.1f s after the restart"
              % (len(load.acked), acked_before, len(load.refused_503), len(during),
                 recovered - up_at), flush=True)
        acked = dict(load.acked)
        check_orders_everywhere([s], acked, "after PostgreSQL restarted")
        check_replays(s, acked, "after PostgreSQL restarted")
        acked.update(settle_unknown(s, load.unknown, "refused while PostgreSQL was down"))
        check_conservation([s], "PGR", stock, acked, "PostgreSQL restart")
        check_stored(s, "PGR", stock, len(acked), len(acked), "PostgreSQL restart")
        check_eq(s.stop(), 0, "exit code of a clean stop")
        s = start_stockd(data_dir=s.data_dir)
        check_orders_everywhere([s], acked, "after a restart of stockd")
        check_conservation([s], "PGR", stock, acked, "after a restart of stockd")
        audit_events(s)
    finally:
        if pg_down:
            pg_start()
        s.stop()


def test_pg_read_your_writes_across_instances():
    """What an instance acknowledged is readable on that instance at once, with what other
    instances committed before it: B sells a product A has just created, and B's read model
    shows both the product and the sale right after the 201 (no polling)."""
    db = new_pg_database()
    a = start_stockd(pg_db=db)
    b = start_stockd(pg_db=db)
    try:
        with a.client() as ca, b.client() as cb:
            for i in range(20):
                sku = "RYW-%d" % i
                r = ca.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": 5,
                                             "storeId": "S1"}, key=new_key("ryw-p"))
                check_status(r, 201, "create %s on A" % sku)
                r = cb.post("/v1/purchase", {"sku": sku, "qty": 1, "customerId": "c-ryw"},
                            key=new_key("ryw-b"))
                check_status(r, 201, "buy %s on B" % sku)
                r = cb.get("/v1/availability?sku=" + sku)
                check_status(r, 200, "availability of %s on B right after its 201" % sku)
                check_eq((r.json["onHand"], r.json["available"]), (4, 4),
                         "availability of %s on B right after its 201" % sku)
        audit_events(b)
    finally:
        a.stop()
        b.stop()


def pg_processes():
    """The postmaster of the test cluster and its children (backends, checkpointer...)."""
    with open(os.path.join(PG_DIR, "data", "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                              timeout=10).stdout.split()
    return [postmaster] + [int(c) for c in children]


def test_pg_frozen_server():
    """PostgreSQL stops answering without closing its connections (every process stopped
    with SIGSTOP for a few seconds): an order lookup answers 503 instead of holding its I/O
    thread, availability keeps answering 200, a purchase answers 503 + Retry-After; after
    SIGCONT everything works again without restarting stockd, and the purchase sent again with
    its key succeeds once. A hang fails the test through the client's timeout."""
    if not PG_DIR:
        skip_test("STOCKD_TEST_PG_DIR is not set: this test must stop PostgreSQL's processes")
    s = start_stockd(pg_db=new_pg_database())
    frozen = []
    try:
        make_product(s, "FRZ", 50)
        body = {"sku": "FRZ", "qty": 1, "customerId": "c-frz"}
        with s.client() as c:
            r = c.post("/v1/purchase", body, key="frz-0")
            check_status(r, 201, "a purchase before the freeze")
        order_id = r.json["orderId"]
        frozen = pg_processes()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        with s.client(timeout=30) as c:
            r = c.get("/v1/orders/" + order_id)
            check_problem(r, 503, "storage_unavailable", "an order lookup while frozen")
            r = c.get("/v1/availability?sku=FRZ")
            check_status(r, 200, "availability while frozen")
            check_eq(r.json["onHand"], 49, "onHand while frozen")
            r = c.post("/v1/purchase", body, key="frz-1")
            check_problem(r, 503, "storage_unavailable", "a purchase while frozen")
            check(r.headers.get("retry-after"), "no Retry-After on the 503")
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []

        def retried_purchase():
            with s.client(timeout=30) as c:
                r = c.post("/v1/purchase", body, key="frz-1")
            check_status(r, 201, "the purchase sent again after the freeze")
            return r
        r = eventually(retried_purchase, "a purchase after the freeze", timeout=30)
        with s.client(timeout=30) as c:
            again = c.post("/v1/purchase", body, key="frz-1")
            check_eq((again.status, again.body), (201, r.body), "the replay of frz-1")
            check_status(c.get("/v1/orders/" + order_id), 200, "the first order after")
        check_eq(psql("SELECT count(*) FROM orders", db=s.pg_db)[0][0], "2", "orders stored")
        audit_events(s)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        s.stop()


def test_pg_reservations_across_instances():
    """A reservation made on one instance is confirmed on another (which loads it under
    lock), and the first then sees it ended; a reservation whose instance is killed for good
    is expired by the surviving one once overdue, and its units are available again."""
    db = new_pg_database()
    a = start_stockd(pg_db=db)
    b = start_stockd(pg_db=db)
    try:
        make_product(a, "RSV", 10)
        with a.client() as ca, b.client() as cb:
            r = ca.post("/v1/reservations", {"storeId": "S1", "customerId": "c-r", "ttlSeconds":
                                             600, "lines": [{"sku": "RSV", "qty": 3}]},
                        key=new_key("rsv"))
            check_status(r, 201, "reserve on A")
            first = r.json["reservationId"]
            r = cb.post("/v1/reservations/%s:confirm" % first, {}, key=new_key("conf"))
            check_status(r, 200, "confirm on B of A's reservation")
            check_eq(r.json["status"], "CONFIRMED", "status after the confirm on B")
            r = ca.post("/v1/reservations/%s:cancel" % first, {"reason": "late"},
                        key=new_key("canc"))
            check_problem(r, 409, "reservation_not_active", "cancel on A after B confirmed")
            r = ca.post("/v1/reservations", {"storeId": "S1", "customerId": "c-r", "ttlSeconds":
                                             1, "lines": [{"sku": "RSV", "qty": 4}]},
                        key=new_key("rsv"))
            check_status(r, 201, "a short reservation on A")
        # B must have seen the hold first: its read model before it (onHand 7, reserved 0) is
        # also what the expiry leads back to, so waiting for that alone proved nothing.
        eventually(lambda: check_eq(availability(b, "RSV")["reserved"], 4, "reserved on B"),
                   "B follows A's short reservation")
        a.kill9()  # A never comes back: B must expire A's reservation
        wait_on_hand([b], "RSV", 7, "after B expired the reservation of the killed A")
        check_eq(psql("SELECT status FROM reservations ORDER BY reservation_seq", db=db),
                 [["CONFIRMED"], ["EXPIRED"]], "stored reservation statuses")
        audit_events(b)
    finally:
        a.stop()
        b.stop()


def test_pg_unique_violation_retries_batch():
    """A unique violation on an idempotency key at commit makes the writer run the batch again,
    which then answers from the record that won. The race is staged: another session holds
    orders in EXCLUSIVE mode, so stockd's batch (its locks and reads already done) waits at its
    INSERT INTO orders; meanwhile that key's record is inserted behind stockd's back."""
    db = new_pg_database()
    s = start_stockd(pg_db=db)
    holder = None
    try:
        make_product(s, "UV", 10)
        principal = psql("SELECT principal FROM idempotency LIMIT 1", db=db)[0][0]
        holder = subprocess.Popen([psql_bin(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                   "-d", pg_uri(db)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        holder.stdin.write(b"BEGIN;\nLOCK TABLE orders IN EXCLUSIVE MODE;\nSELECT 'locked';\n")
        holder.stdin.flush()
        check_eq(holder.stdout.readline().strip(), b"locked", "the holder's lock")
        key = new_key("uv")
        answer = {}

        def buy():
            with s.client() as c:
                answer["r"] = c.post("/v1/purchase", {"sku": "UV", "qty": 1,
                                                      "customerId": "c-uv"}, key=key)
        buyer = threading.Thread(target=buy)
        buyer.start()
        eventually(lambda: check_eq(psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stockd'"
            " AND wait_event_type = 'Lock'", db=db)[0][0], "1", "stockd waiting on the lock"),
            "stockd's batch blocked at INSERT INTO orders", timeout=4.0)
        psql("INSERT INTO idempotency (principal, idem_key, fingerprint, status, problem, body,"
             " created_at_ms) VALUES ('%s', '%s', 12345, 201, 0, '{\"other\":true}', 0)"
             % (principal, key), db=db)
        holder.stdin.write(b"COMMIT;\n")
        holder.stdin.close()
        buyer.join(30)
        check(not buyer.is_alive(), "the purchase got no answer")
        check_problem(answer["r"], 422, "idempotency_key_reused", "the purchase after the race")
        check_eq(availability(s, "UV")["onHand"], 10, "onHand after the refused purchase")
        check_eq(psql("SELECT count(*) FROM orders", db=db)[0][0], "0", "orders stored")
        with s.client() as c:
            metrics = c.get("/metrics").body.decode()
        retries = [line for line in metrics.splitlines()
                   if line.startswith("stockd_writer_batch_retries_total ")]
        check(retries and int(retries[0].split()[1]) >= 1, "no batch retry counted: %r" % retries)
        audit_events(s)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait(10)
        s.stop()


if __name__ == "__main__":
    main([test_pg_three_instances_no_oversell, test_pg_duplicate_key_two_instances,
          test_pg_kill9_during_load, test_pg_restart_during_load,
          test_pg_unique_violation_retries_batch, test_pg_read_your_writes_across_instances,
          test_pg_frozen_server, test_pg_reservations_across_instances],
         needs_pg=True)
