#!/usr/bin/env python3
"""Black-box tests of logs and health (issue 13, "Logs and health"):

- --log-format json: every line stockd writes to stderr is one JSON object with time, level,
  file, line and msg;
- a request's X-Trace-Id is on the lines it causes on its I/O thread (the command queued) and
  on the writer thread (the command answered), for an applied command and a refused one, and
  a made-up trace id (the request sent none) is the one its lines and its response carry;
  the lines about a whole batch that failed list the trace ids of its requests (traceIds);
- --access-log: one line per request with method, route pattern, status, durationMs, trace id
  and principal, in JSON and in text, and never the bearer token (nor in the log);
- GET /health: status and checks (storage, writer, projection, payment; relay with --amqp),
  degraded with 200 while the broker is down and while the last commit failed (SQLite: a lock
  held by another connection), down with 503 while PostgreSQL is stopped (blackbox-pg only),
  ok again after each;
- on PostgreSQL, one warning when the server has wal_init_zero=on, and one when it has
  backend_flush_after=0 (blackbox-pg only);
- every thread is named for its role (top -H, perf and bench/hot-sku tell them apart by it).
Both backends; no test asserts how fast anything is."""
import json
import os
import socket
import sqlite3
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (_temp_dirs, check, check_eq, check_problem, check_status,  # noqa: E402
                     eventually, main, new_key, new_pg_database, pg_mode, pg_start, pg_stop,
                     psql, skip_test, start_stockd)

ALICE_TOKEN = "alice-secret-token-0123456789abcdef"
ADMIN_TOKEN = "ops-secret-token-fedcba9876543210"


def start(extra, threads=2):
    """stockd with a tokens file of a writer (alice) and an admin (ops) in its data directory;
    the client's default token is the admin's."""
    data_dir = tempfile.mkdtemp(prefix="stockd-bb-")
    _temp_dirs.append(data_dir)
    path = os.path.join(data_dir, "tokens")
    with open(path, "w") as f:
        f.write("alice write %s\nops admin %s\n" % (ALICE_TOKEN, ADMIN_TOKEN))
    server = start_stockd(["--tokens-file", path] + extra, data_dir=data_dir,
                          threads=threads)
    server.token = ADMIN_TOKEN
    return server


def log_lines(server):
    """stockd's own stderr lines (the harness's "=== start" lines left out)."""
    with open(server.log_path, "rb") as f:
        text = f.read().decode("utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("=== ")]


def json_lines(lines, what):
    """Each line parsed as a JSON object: fails on the first that is not one."""
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise AssertionError("%s: not JSON (%s): %r" % (what, e, line))
        check(isinstance(obj, dict), "%s: not an object: %r" % (what, line))
        out.append(obj)
    return out


def product(c, sku, on_hand, trace=None):
    headers = {"X-Trace-Id": trace} if trace else None
    r = c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": on_hand},
               key=new_key(), headers=headers)
    check_status(r, 201, "product " + sku)
    return r


def purchase(c, sku, qty, trace=None):
    headers = {"X-Trace-Id": trace} if trace else None
    return c.post("/v1/purchase", {"sku": sku, "qty": qty, "customerId": "c-1"}, key=new_key(),
                  headers=headers)


def traced(entries, trace):
    """The (file, msg) of every log entry that carries trace."""
    return [(e["file"], e["msg"]) for e in entries if e.get("traceId") == trace]


def check_through_both_threads(entries, trace, kind, status):
    """trace is on the I/O thread's line (request.c: queued) and the writer's (writer.c:
    answered with status)."""
    lines = traced(entries, trace)
    check(any(f == "request.c" and ("http: %s of alice queued" % kind) in m for f, m in lines),
          "no I/O thread line with trace %s: %s" % (trace, lines))
    check(any(f == "writer.c" and ("writer: %s of alice answered %d" % (kind, status)) in m
              for f, m in lines),
          "no writer line with trace %s answering %d: %s" % (trace, status, lines))


def test_json_logs_carry_the_trace_id_through_the_writer():
    s = start(["--log-format", "json", "--log-level", "debug"])
    with s.client(token=ALICE_TOKEN) as c:
        product(c, "LOG-A", 3, trace="bb-product-1")
        r = purchase(c, "LOG-A", 2, trace="bb-buy-ok")
        check_status(r, 201, "purchase")
        check_eq(r.headers.get("x-trace-id"), "bb-buy-ok", "echoed")
        r = purchase(c, "LOG-A", 5, trace="bb-buy-refused")
        check_problem(r, 409, "insufficient_stock", "a purchase over the stock")
        r = purchase(c, "LOG-A", 1)  # no X-Trace-Id: stockd makes one
        check_status(r, 201, "purchase without a trace id")
        made = r.headers.get("x-trace-id")
        check(made, "a trace id was made")
        r = purchase(c, "LOG-A", 1, trace="bad trace with spaces")
        made2 = r.headers.get("x-trace-id")
        check(made2 and " " not in made2, "an unusable X-Trace-Id is replaced: %r" % made2)
    s.stop()
    entries = json_lines(log_lines(s), "stderr with --log-format json")
    check(len(entries) >= 10, "a few lines: %d" % len(entries))
    for e in entries:
        for field in ("time", "level", "file", "line", "msg"):
            check(field in e, "no %s in %r" % (field, e))
        check(e["level"] in ("debug", "info", "warn", "error"), "level of %r" % e)
    check_through_both_threads(entries, "bb-product-1", "product_create", 201)
    check_through_both_threads(entries, "bb-buy-ok", "purchase", 201)
    check_through_both_threads(entries, "bb-buy-refused", "purchase", 409)
    check_through_both_threads(entries, made, "purchase", 201)
    check_through_both_threads(entries, made2, "purchase", 409)
    text = "\n".join(log_lines(s))
    check("bad trace with spaces" not in text, "the unusable trace id is not logged")
    check(ALICE_TOKEN not in text and ADMIN_TOKEN not in text, "no token in the log")


def test_text_logs_stay_as_they_were_with_the_trace_id_added():
    s = start(["--log-level", "debug"])
    with s.client(token=ALICE_TOKEN) as c:
        product(c, "LOG-T", 1, trace="bb-text-1")
    s.stop()
    lines = log_lines(s)
    # "<time> <level> <file>:<line> <message>", as before --log-format existed
    for line in lines:
        parts = line.split(" ", 3)
        if parts[0].startswith("=="):  # an ASan build's reports are checked by the harness
            continue
        check(len(parts) == 4 and parts[0].endswith("Z") and
              parts[1] in ("debug", "info", "warn", "error") and ":" in parts[2],
              "a text line: %r" % line)
    mine = [line for line in lines if " trace=bb-text-1 " in line]
    check(any("request.c:" in line and "queued for the writer" in line for line in mine) and
          any("writer.c:" in line and "answered 201" in line for line in mine),
          "text lines with trace=bb-text-1 from both threads: %s" % mine)


def test_access_log_has_every_field_and_never_the_token():
    s = start(["--log-format", "json", "--access-log", "access.log"])
    with s.client(token=ALICE_TOKEN) as c:
        product(c, "ACC-A", 5, trace="bb-acc-1")
        r = purchase(c, "ACC-A", 1, trace="bb-acc-2")
        check_status(r, 201, "purchase")
        order = r.headers.get("location")
        check_status(c.get(order, headers={"X-Trace-Id": "bb-acc-3"}), 200, "GET the order")
        check_status(c.get("/no/such/route", headers={"X-Trace-Id": "bb-acc-4"}), 404, "404")
    with s.client(token="wrong-" + ALICE_TOKEN) as c:
        r = c.get("/v1/events?limit=1", headers={"X-Trace-Id": "bb-acc-5"})
        check_status(r, 401, "a wrong token")
    with s.client(token=None) as c:
        check_status(c.get("/health", headers={"X-Trace-Id": "bb-acc-6"}), 200, "/health")
    with s.client(token=ALICE_TOKEN) as c:
        r = c.get("/v1/dlt", headers={"X-Trace-Id": "bb-acc-7"})
        check_status(r, 403, "an admin route with a write token")
    path = os.path.join(s.data_dir, "access.log")  # relative to stockd's working directory

    def lines():
        with open(path) as f:
            return json_lines(f.read().splitlines(), "access log")

    def seven_lines():
        # A line is written when h2o frees its request, just after the response left.
        got = {e["traceId"]: e for e in lines()}
        check(len(got) >= 7, "access lines so far: %s" % sorted(got))
        return got

    by_trace = eventually(seven_lines, "seven access lines", 10)
    s.stop()
    want = {
        "bb-acc-1": ("POST", "/v1/products", 201, "alice"),
        "bb-acc-2": ("POST", "/v1/purchase", 201, "alice"),
        "bb-acc-3": ("GET", "/v1/orders/{id}", 200, "alice"),
        "bb-acc-4": ("GET", None, 404, None),  # no route: no token was checked
        "bb-acc-5": ("GET", "/v1/events", 401, None),
        "bb-acc-6": ("GET", "/health", 200, "public"),
        "bb-acc-7": ("GET", "/v1/dlt", 403, "alice"),
    }
    for trace, (method, route, status, principal) in want.items():
        e = by_trace.get(trace)
        check(e is not None, "no access line of %s: %s" % (trace, sorted(by_trace)))
        check_eq((e["type"], e["method"], e["route"], e["status"], e["principal"]),
                 ("access", method, route, status, principal), "access line of %s" % trace)
        check(isinstance(e["durationMs"], (int, float)) and e["durationMs"] >= 0,
              "durationMs of %s: %r" % (trace, e))
        check(e["time"].endswith("Z"), "time of %s" % trace)
    with open(path) as f:
        text = f.read()
    check(ALICE_TOKEN not in text and ADMIN_TOKEN not in text, "no token in the access log")
    check(ALICE_TOKEN not in "\n".join(log_lines(s)), "no token in the log")


def test_access_log_in_text_on_stderr():
    s = start(["--access-log", "-"])
    with s.client(token=ALICE_TOKEN) as c:
        product(c, "ACC-T", 1, trace="bb-acc-text")
    s.stop()
    mine = [line for line in log_lines(s) if " access " in line and "trace=bb-acc-text" in line]
    check_eq(len(mine), 1, "one access line: %s" % mine)
    fields = dict(kv.split("=", 1) for kv in mine[0].split(" ")[2:])
    check_eq((fields["method"], fields["route"], fields["status"], fields["principal"]),
             ("POST", "/v1/products", "201", "alice"), "text access line %r" % mine[0])
    check(float(fields["durationMs"]) >= 0, "durationMs in %r" % mine[0])


def health(c, want_status=200):
    r = c.get("/health")
    check_status(r, want_status, "/health")
    return r.json


def check_shape(h):
    check(h["status"] in ("ok", "degraded", "down"), "status: %r" % h)
    checks = h["checks"]
    for name in ("storage", "writer", "projection"):
        check(name in checks and checks[name]["status"] in ("ok", "degraded", "down"),
              "check %s: %r" % (name, h))
    st = checks["storage"]
    check_eq(st["backend"], "postgres" if pg_mode() else "sqlite", "storage backend")
    check(isinstance(st["reachable"], bool) and isinstance(st["lastCommitOk"], bool), "%r" % st)
    w = checks["writer"]
    for key in ("queueDepth", "queueCapacity", "batchInHandMs", "lastBatchAgeMs"):
        check(isinstance(w[key], int) and w[key] >= 0, "writer %s: %r" % (key, w))
    check(isinstance(w["stalled"], bool), "writer stalled: %r" % w)
    p = checks["projection"]
    check(isinstance(p["lagMs"], int) and p["appliedSeq"] >= 0 and p["committedSeq"] >= 0,
          "projection: %r" % p)


def test_health_names_each_dependency():
    s = start([])
    with s.client() as c:
        product(c, "H-A", 10)
        h = health(c)
        check_shape(h)
        check_eq(h["status"], "ok", "status: %r" % h)
        check_eq({k: v["status"] for k, v in h["checks"].items()},
                 {"storage": "ok", "writer": "ok", "projection": "ok", "payment": "ok"},
                 "every check ok")
        check_eq((h["checks"]["storage"]["reachable"], h["checks"]["writer"]["stalled"]),
                 (True, False), "reachable, not stalled")
        check_eq(h["checks"]["payment"]["circuit"], "closed", "payment circuit")
        check("relay" not in h and "intake" not in h, "no --amqp: no relay, no intake")
    s.stop()
    s = start(["--workers", "off"])
    with s.client() as c:
        h = health(c)
        check("payment" not in h["checks"], "no payment provider, no payment check: %r" % h)
    s.stop()


def closed_port():
    """A local port nothing listens on (bound, then closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_health_degraded_while_the_broker_is_down():
    url = "amqp://guest:guest@127.0.0.1:%d/%%2F" % closed_port()
    s = start(["--amqp", url])
    with s.client() as c:
        product(c, "H-B", 10)  # the service sells without its broker
        h = health(c)
        check_shape(h)
        check_eq(h["status"], "degraded", "status: %r" % h)
        check_eq(h["checks"]["relay"]["status"], "degraded", "the relay check: %r" % h)
        check_eq(h["relay"]["status"], "degraded", "the top-level relay, as before")
        check_eq(h["checks"]["storage"]["status"], "ok", "storage: %r" % h)
        check_status(c.get("/ready"), 200, "/ready: still ready")
    s.stop()


def test_health_degraded_while_commits_fail_on_sqlite():
    if pg_mode():
        skip_test("SQLite's lock; on PostgreSQL see test_health_down_while_postgres_is_stopped")
    s = start(["--log-format", "json"])
    with s.client() as c:
        product(c, "H-C", 10)
        check_eq(health(c)["status"], "ok", "before")
        db = sqlite3.connect(os.path.join(s.data_dir, "stockd.db"), timeout=30,
                             isolation_level=None)
        try:
            db.execute("BEGIN EXCLUSIVE")  # the writer's busy wait gives up: its batch fails
            r = purchase(c, "H-C", 1, trace="bb-locked")
            check_problem(r, 503, "storage_unavailable", "a purchase while the lock is held")
            h = health(c)  # reads still serve: storage reachable, the last commit failed
            check_shape(h)
            check_eq(h["status"], "degraded", "status: %r" % h)
            check_eq((h["checks"]["storage"]["status"], h["checks"]["storage"]["reachable"],
                      h["checks"]["storage"]["lastCommitOk"]), ("degraded", True, False),
                     "storage: %r" % h)
        finally:
            db.execute("ROLLBACK")
            db.close()
        check_status(purchase(c, "H-C", 1), 201, "a purchase once the lock is gone")
        check_eq(health(c)["status"], "ok", "after")
    s.stop()
    # The failed batch's lines (its store error, its slowness) name the requests in it.
    batch_lines = [e for e in json_lines(log_lines(s), "stderr")
                   if "bb-locked" in e.get("traceIds", [])]
    check(batch_lines and all(e["level"] in ("warn", "error") for e in batch_lines),
          "warn or error lines of the failed batch listing bb-locked: %s" % batch_lines)


def test_health_down_while_postgres_is_stopped():
    if not pg_mode():
        skip_test("PostgreSQL only (suite blackbox-pg): stops the server")
    s = start([])
    with s.client() as c:
        product(c, "H-D", 10)
        check_eq(health(c)["status"], "ok", "before")
    pg_stop()
    try:
        with s.client(timeout=30) as c:
            def down():
                r = c.request("GET", "/health", retry=True)
                check_status(r, 503, "/health while PostgreSQL is stopped")
                return r.json

            h = eventually(down, "/health 503 while PostgreSQL is stopped", 30)
            check_shape(h)
            check_eq(h["status"], "down", "status: %r" % h)
            check_eq((h["checks"]["storage"]["status"], h["checks"]["storage"]["reachable"]),
                     ("down", False), "storage: %r" % h)
    finally:
        pg_start()
    with s.client(timeout=30) as c:
        eventually(lambda: check_status(c.request("GET", "/health", retry=True), 200, "/health"),
                   "/health 200 again", 60)
        h = health(c)
        check_eq(h["checks"]["storage"]["reachable"], True, "reachable again: %r" % h)
    s.stop()


def log_with_setting(setting, value):
    """The log lines of stockd on a new database whose sessions have setting = value (ALTER
    DATABASE, so other tests see no change), after it served one command."""
    db = new_pg_database()
    psql('ALTER DATABASE "%s" SET %s = %s' % (db, setting, value))
    s = start_stockd(pg_db=db)
    with s.client() as c:
        product(c, "W-S", 1)  # the writer connected and serves
    s.stop()
    return log_lines(s)


def test_warns_of_wal_init_zero_on():
    """A server with wal_init_zero=on (PostgreSQL's default; scripts/pg-start.sh turns it off)
    gets one warning line that names the setting; the test server as it is gets none."""
    if not pg_mode():
        skip_test("PostgreSQL only (suite blackbox-pg): reads a server setting")
    plain = start([])
    plain.stop()
    check(not [line for line in log_lines(plain) if "wal_init_zero" in line],
          "a warning on a server with wal_init_zero=off: %s" % log_lines(plain))
    lines = log_with_setting("wal_init_zero", "on")
    warned = [line for line in lines if "wal_init_zero=on" in line]
    check_eq(len(warned), 1, "warning lines about wal_init_zero: %s" % lines)


def test_warns_of_backend_flush_after_off():
    """A server with backend_flush_after=0 (PostgreSQL's default; scripts/pg-start.sh sets
    256kB) gets one warning line that names the setting; the test server as it is (64MB of
    shared_buffers, the flush on) gets none about either setting."""
    if not pg_mode():
        skip_test("PostgreSQL only (suite blackbox-pg): reads a server setting")
    plain = start([])
    plain.stop()
    check(not [line for line in log_lines(plain)
               if "backend_flush_after" in line or "shared_buffers" in line],
          "a warning on a server with the flush on and 64MB: %s" % log_lines(plain))
    lines = log_with_setting("backend_flush_after", "0")
    warned = [line for line in lines if "backend_flush_after=0" in line]
    check_eq(len(warned), 1, "warning lines about backend_flush_after: %s" % lines)
    check(not [line for line in lines if "shared_buffers" in line],
          "a warning about shared_buffers=64MB: %s" % lines)


def test_trace_ids_of_concurrent_requests_do_not_mix():
    """Requests on several connections at once: each trace id's lines name its own command."""
    s = start(["--log-format", "json", "--log-level", "debug", "--threads", "2"])
    with s.client(token=ALICE_TOKEN) as c:
        product(c, "MIX", 1000)
    errors = []

    def buyer(i):
        with s.client(token=ALICE_TOKEN) as c:
            for n in range(20):
                r = purchase(c, "MIX", 1 + i, trace="mix-%d-%d" % (i, n))
                if r.status != 201:
                    errors.append(r.status)
    threads = [threading.Thread(target=buyer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not errors, "purchases: %s" % errors)
    s.stop()
    entries = json_lines(log_lines(s), "stderr")
    for i in range(4):
        for n in range(20):
            check_through_both_threads(entries, "mix-%d-%d" % (i, n), "purchase", 201)
    writer_lines = [e for e in entries if e["file"] == "writer.c" and "purchase of" in e["msg"]]
    check_eq(len(writer_lines), 80, "one writer line per purchase")
    check(all(e.get("traceId", "").startswith("mix-") for e in writer_lines),
          "every writer line of a purchase names its trace id")


def thread_names(pid):
    """The names of a process's threads, as /proc (and top -H, ps -L, perf) shows them."""
    task = "/proc/%d/task" % pid
    names = []
    for tid in os.listdir(task):
        try:
            with open(os.path.join(task, tid, "comm")) as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return sorted(names)


def test_threads_are_named_for_their_roles():
    s = start([], threads=3)
    with s.client() as c:
        product(c, "T-A", 10)
        check_status(purchase(c, "T-A", 1), 201, "purchase")
        names = thread_names(s.proc.pid)
    for want in ["writer", "http-0", "http-1", "http-2", "workers"] + (
            [] if pg_mode() else ["checkpointer"]):
        check(want in names, "no thread %r: %s" % (want, names))
    check("http-3" not in names, "--threads 3: three I/O threads: %s" % names)
    check_eq(names.count("stockd"), 1, "only the main thread keeps the program's name: %s" % names)
    s.stop()


if __name__ == "__main__":
    main([
        test_json_logs_carry_the_trace_id_through_the_writer,
        test_text_logs_stay_as_they_were_with_the_trace_id_added,
        test_access_log_has_every_field_and_never_the_token,
        test_access_log_in_text_on_stderr,
        test_health_names_each_dependency,
        test_health_degraded_while_the_broker_is_down,
        test_health_degraded_while_commits_fail_on_sqlite,
        test_health_down_while_postgres_is_stopped,
        test_warns_of_wal_init_zero_on,
        test_warns_of_backend_flush_after_off,
        test_trace_ids_of_concurrent_requests_do_not_mix,
        test_threads_are_named_for_their_roles,
    ])
