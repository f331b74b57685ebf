"""Shared helpers of the stockd black-box tests (standard library only).

A test script defines plain functions `test_*()` and calls `main([...])`. Each test starts its
own stockd on a free loopback port with a temporary data directory (`start_stockd`), talks to
it over HTTP/1.1 keep-alive (`Client`), asserts with `check`, and stops the server in a
`finally` block. The runner bounds every test with an alarm, stops any server a test left
running, and prints the tail of the server log of a failed test.

The binary comes from $STOCKD_BIN (meson sets it), else build-bb/stockd, else build/stockd.

PostgreSQL mode (suite blackbox-pg): when $STOCKD_TEST_PG holds a base URI such as
postgres://postgres@127.0.0.1:55432 (a trailing /dbname is ignored), `start_stockd` runs stockd
with `--store <base>/<db>` on a fresh, empty database made for that data directory and named in
<data_dir>/pg.dbname, so a restart on the same data directory finds the same database again.
`new_pg_database()` + `start_stockd(pg_db=name)` put several instances on one database;
`pg_stop()` / `pg_start()` stop and start the server of $STOCKD_TEST_PG_DIR (scripts/pg-stop.sh,
scripts/pg-start.sh). The databases of a script that passes are dropped at its end. A test that
only makes sense on one backend calls `skip_test(reason)` (a SKIP line, not a failure); a script
started with STOCKD_TEST_REQUIRE_PG=1 but no $STOCKD_TEST_PG skips as a whole (exit 77).

Auth: a first start generates <data_dir>/admin.token; `start_stockd` reads it into
`Server.token`, and `Server.client()` sends `Authorization: Bearer <token>` on every request.
`server.client(token=None)` sends none, `server.client(token="...")` another one.
"""

import collections
import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 15.0
TEST_TIMEOUT_S = 150  # per test function: a hung test fails instead of hanging the suite

Response = collections.namedtuple("Response", "status headers body json")

_DEFAULT = object()  # "the server's admin token" for Server.client(token=...)
_servers = []      # every Server started by the current test, for cleanup and logs
_temp_dirs = []    # data directories we created; removed when the whole script passes
_skipped_bugs = []  # SKIP-BUG lines printed, repeated in the summary
_pg_databases = []  # PostgreSQL databases we created; dropped when the whole script passes
_pg_state = {"stopped": False}  # a test stopped the server (pg_stop) and did not start it

PG_BASE = os.environ.get("STOCKD_TEST_PG", "").strip()
PG_DIR = os.environ.get("STOCKD_TEST_PG_DIR", "").strip()
PG_START_TIMEOUT_S = 90.0


class SkipTest(Exception):
    """Raised by skip_test: the test does not apply here (printed as a SKIP line)."""


def skip_test(reason):
    raise SkipTest(reason)


def pg_mode():
    """True when the tests run stockd on PostgreSQL ($STOCKD_TEST_PG set)."""
    return bool(PG_BASE)


def _pg_parts():
    """(scheme://userinfo@host:port, host, port, user) of $STOCKD_TEST_PG, path dropped."""
    u = urllib.parse.urlsplit(PG_BASE)
    check(u.scheme in ("postgres", "postgresql") and u.hostname,
          "STOCKD_TEST_PG=%r is not a postgres://user@host:port URI" % PG_BASE)
    return ("%s://%s" % (u.scheme, u.netloc), u.hostname, u.port or 5432,
            u.username or "postgres")


def pg_uri(db):
    """The URI of database db on the test server: <base>/<db>."""
    return "%s/%s" % (_pg_parts()[0], db)


def psql_bin():
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()) \
        if os.path.isdir("/usr/lib/postgresql") else []
    check(candidates, "no psql (install postgresql-client)")
    return "/usr/lib/postgresql/%s/bin/psql" % candidates[-1]


def psql(sql, db="postgres", timeout=60.0):
    """Runs sql through psql on database db of the test server; returns the rows as lists of
    strings (unaligned, tuples only). Raises AssertionError with psql's message on error."""
    args = [psql_bin(), "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1",
            "-d", pg_uri(db), "-c", sql]
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    try:
        p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                           env=env)
    except subprocess.TimeoutExpired:
        raise AssertionError("psql %r on %s: no answer within %.0f s" % (sql, db, timeout))
    if p.returncode != 0:
        raise AssertionError("psql %r on %s failed (%d): %s" % (
            sql, db, p.returncode, p.stderr.decode("utf-8", "replace").strip()))
    text = p.stdout.decode("utf-8")
    return [line.split("\x1f") for line in text.splitlines() if line]


_db_counter = [0]


def new_pg_database(prefix="stockd_bb"):
    """Creates a fresh, empty database on the test server and returns its name."""
    check(pg_mode(), "new_pg_database needs STOCKD_TEST_PG")
    with _key_lock:
        _db_counter[0] += 1
        n = _db_counter[0]
    script = os.path.splitext(os.path.basename(sys.argv[0] or "x"))[0]
    script = "".join(ch for ch in script.lower() if ch.isalnum() or ch == "_")[:20]
    name = "%s_%s_%d_%d_%d" % (prefix, script, os.getpid(), int(time.time()) % 100000, n)
    psql('CREATE DATABASE "%s"' % name)
    _pg_databases.append(name)
    return name


def pg_database_of(data_dir):
    """The database remembered in <data_dir>/pg.dbname, or None."""
    try:
        with open(os.path.join(data_dir, "pg.dbname")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pg_script(name, *args):
    check(PG_DIR, "STOCKD_TEST_PG_DIR is not set: cannot stop or start PostgreSQL")
    path = os.path.join(REPO, "scripts", name)
    p = subprocess.run(["bash", path, PG_DIR] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=PG_START_TIMEOUT_S)
    check(p.returncode == 0, "%s %s failed (%d): %s %s" % (
        name, PG_DIR, p.returncode, p.stdout.decode(errors="replace"),
        p.stderr.decode(errors="replace")))


def pg_stop():
    """Stops the test PostgreSQL server (fast shutdown: sessions are cut)."""
    _pg_state["stopped"] = True
    _pg_script("pg-stop.sh")


def pg_start():
    """Starts the test PostgreSQL server again (same directory and port) and waits for it."""
    _pg_script("pg-start.sh", _pg_parts()[2])
    deadline = time.monotonic() + PG_START_TIMEOUT_S
    while True:
        try:
            psql("SELECT 1", timeout=10)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    _pg_state["stopped"] = False


def stockd_bin():
    path = os.environ.get("STOCKD_BIN")
    if path:
        return os.path.abspath(path)  # stockd runs with its data directory as cwd
    for candidate in ("build-bb/stockd", "build/stockd"):
        full = os.path.join(REPO, candidate)
        if os.path.exists(full):
            return full
    return os.path.join(REPO, "build-bb/stockd")


def check(cond, msg):
    """Raises AssertionError(msg) unless cond holds."""
    if not cond:
        raise AssertionError(msg)


def check_eq(got, want, what):
    if got != want:
        raise AssertionError("%s: want %r, got %r" % (what, want, got))


def skip_bug(msg):
    """Records a known server bug instead of failing on it (see the report)."""
    line = "SKIP-BUG: " + msg
    print(line, flush=True)
    _skipped_bugs.append(line)


def read_ledger(path):
    """{key: [outcome, ...]} of a payment simulator's ledger file ({} when there is none)."""
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, outcome = line.split()
                out.setdefault(key, []).append(outcome)
    return out


class Server:
    """One running stockd process."""

    def __init__(self, proc, port, data_dir, log_path):
        self.proc = proc
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.token = None  # <data_dir>/admin.token, when stockd generated one
        self.pg_db = None  # PostgreSQL mode: the name of its database

    def alive(self):
        return self.proc.poll() is None

    def client(self, timeout=REQUEST_TIMEOUT_S, token=_DEFAULT):
        """A Client that sends this server's admin token, or token (None: no token)."""
        return Client(self.port, timeout=timeout,
                      token=self.token if token is _DEFAULT else token)

    def auth_header(self):
        """The raw Authorization header line (with CRLF) of the admin token, for raw sockets."""
        return b"Authorization: Bearer %s\r\n" % self.token.encode() if self.token else b""

    def stop(self):
        """SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self._close_pipes()
        return self.proc.returncode

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)
        self._close_pipes()
        return self.proc.returncode

    def _close_pipes(self):
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def payment_ledger(self):
        """{orderId: [outcome, ...]} of this stockd's in-process payment simulator (one line
        per real charge, in order: a key twice is a double charge)."""
        return read_ledger(os.path.join(self.data_dir, "payment-ledger.txt"))

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            return "(no server log: %s)" % e
        return "\n".join(text.splitlines()[-lines:])


def _store_args(data_dir, extra_args, pg_db):
    """PostgreSQL mode: ["--store", URI] of pg_db, else of <data_dir>/pg.dbname, else of a new
    database (remembered there). SQLite mode, or --store among extra_args: []."""
    if "--store" in extra_args:
        return [], pg_db
    if not pg_mode():
        check(pg_db is None, "pg_db=%r without STOCKD_TEST_PG" % pg_db)
        return [], None
    remembered = pg_database_of(data_dir)
    db = pg_db or remembered or new_pg_database()
    if db != remembered:
        with open(os.path.join(data_dir, "pg.dbname"), "w") as f:
            f.write(db + "\n")
    return ["--store", pg_uri(db)], db


def start_stockd(extra_args=None, data_dir=None, threads=2, env=None, pg_db=None):
    """Starts stockd on 127.0.0.1:0 with data_dir (a new temporary one when None) and waits
    for its "stockd listening on http://127.0.0.1:PORT ..." line. stderr goes (appended) to
    <data_dir>/stockd.stderr.log. env adds environment variables (STOCKD_TOKENS is never
    inherited from ours). Server.token is <data_dir>/admin.token when it exists.
    PostgreSQL mode: --store on pg_db (a name from new_pg_database), else on the database of
    data_dir (see the module doc); Server.pg_db is its name (None on SQLite)."""
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="stockd-bb-")
        _temp_dirs.append(data_dir)
    extra_args = list(extra_args or [])
    store_args, db = _store_args(data_dir, extra_args, pg_db)
    args = [stockd_bin(), "--listen", "127.0.0.1:0", "--data-dir", data_dir,
            "--threads", str(threads)] + store_args + extra_args
    log_path = os.path.join(data_dir, "stockd.stderr.log")
    with open(log_path, "ab") as log:
        log.write(("=== start: %s\n" % " ".join(args)).encode())
        log.flush()
        child_env = {k: v for k, v in os.environ.items() if k != "STOCKD_TOKENS"}
        child_env.update(env or {})
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log, cwd=data_dir, env=child_env)
    server = Server(proc, 0, data_dir, log_path)
    server.pg_db = db
    _servers.append(server)
    line = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            server.kill9()
            raise AssertionError("stockd did not print its listening line within %.0f s; log:\n%s"
                                 % (START_TIMEOUT_S, server.log_tail()))
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)
        if not chunk:
            proc.wait(STOP_TIMEOUT_S)
            raise AssertionError("stockd exited (%s) before listening; log:\n%s"
                                 % (proc.returncode, server.log_tail()))
        line += chunk
    text = line.decode("utf-8", "replace").strip()
    prefix = "stockd listening on http://127.0.0.1:"
    check(text.startswith(prefix), "unexpected first line of stdout: %r" % text)
    rest = text[len(prefix):]
    port_text = rest.split(" ", 1)[0]
    check(port_text.isdigit() and 0 < int(port_text) < 65536, "no port in %r" % text)
    check(("(data " in rest or pg_mode()) and "threads)" in rest,
          "unexpected listening line %r" % text)
    server.port = int(port_text)
    token_path = os.path.join(data_dir, "admin.token")
    if os.path.exists(token_path):
        with open(token_path) as f:
            server.token = f.read().strip()
    return server


def paysim_bin():
    """stockd-paysim, the standalone payment simulator: meson builds it next to stockd."""
    return os.path.join(os.path.dirname(stockd_bin()), "stockd-paysim")


class PaySim(Server):
    """One running stockd-paysim (the payment service of `stockd --payment-url`). Its ledger,
    <data_dir>/paysim-ledger.txt unless given, has one line "<key> ok|declined" per charge."""

    def __init__(self, proc, port, data_dir, log_path, ledger_path):
        Server.__init__(self, proc, port, data_dir, log_path)
        self.ledger_path = ledger_path

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def client(self, timeout=REQUEST_TIMEOUT_S, token=None):
        return Client(self.port, timeout=timeout, token=None)

    def ledger(self):
        """{key: [outcome, ...]} in the ledger's order: a key twice is a double charge."""
        return read_ledger(self.ledger_path)

    def stats(self):
        with self.client() as c:
            r = c.get("/stats")
        check_status(r, 200, "stockd-paysim GET /stats")
        return r.json

    def set_knobs(self, **knobs):
        """PUT /admin/knobs, e.g. set_knobs(timeoutRate=0, latencyMs=5)."""
        with self.client() as c:
            r = c.request("PUT", "/admin/knobs", encode_body(knobs),
                          {"Content-Type": "application/json"})
        check_status(r, 200, "stockd-paysim PUT /admin/knobs %r" % knobs)
        return r.json


def start_paysim(args=None, port=0, data_dir=None, ledger_path=None):
    """Starts stockd-paysim on 127.0.0.1:port (0: any) with args (e.g. ["--latency-ms", "50"])
    and the ledger ledger_path (default <data_dir>/paysim-ledger.txt; data_dir: a new temporary
    one), and waits for its listening line. Start it again with the same port and ledger to
    model a provider that was down: it reads its ledger back. Killed at the end of the test."""
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="stockd-bb-paysim-")
        _temp_dirs.append(data_dir)
    ledger_path = ledger_path or os.path.join(data_dir, "paysim-ledger.txt")
    argv = [paysim_bin(), "--port", str(port), "--ledger", ledger_path] + list(args or [])
    log_path = os.path.join(data_dir, "paysim.stderr.log")
    with open(log_path, "ab") as log:
        log.write(("=== start: %s\n" % " ".join(argv)).encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=log, cwd=data_dir)
    sim = PaySim(proc, 0, data_dir, log_path, ledger_path)
    _servers.append(sim)
    line = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        check(left > 0, "stockd-paysim printed no listening line; log:\n" + sim.log_tail())
        ready, _, _ = select.select([proc.stdout.fileno()], [], [], left)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise AssertionError("stockd-paysim exited (%s) before listening; log:\n%s" % (
                proc.wait(STOP_TIMEOUT_S), sim.log_tail()))
        line += chunk
    text = line.decode("utf-8", "replace")
    prefix = "stockd-paysim listening on http://127.0.0.1:"
    check(text.startswith(prefix), "unexpected stockd-paysim line %r" % text)
    sim.port = int(text[len(prefix):].split(" ", 1)[0])
    check(port == 0 or sim.port == port, "stockd-paysim on %d, not %d" % (sim.port, port))
    return sim


def _lower_headers(message):
    headers = {}
    for name, value in message.items():
        name = name.lower()
        headers[name] = value if name not in headers else headers[name] + ", " + value
    return headers


def _parse_json(body):
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def encode_body(obj_or_bytes):
    if obj_or_bytes is None:
        return None
    if isinstance(obj_or_bytes, (bytes, bytearray)):
        return bytes(obj_or_bytes)
    if isinstance(obj_or_bytes, str):
        return obj_or_bytes.encode("utf-8")
    return json.dumps(obj_or_bytes, separators=(",", ":")).encode("utf-8")


class Client:
    """A keep-alive HTTP/1.1 client on one connection. Every call returns a Response
    (status, headers lower-cased, body bytes, parsed JSON or None)."""

    def __init__(self, port, host="127.0.0.1", timeout=REQUEST_TIMEOUT_S, token=None):
        self.port = port
        self.token = token  # sent as "Authorization: Bearer <token>" unless None
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def connect(self):
        self.conn.connect()
        return self

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, path, body=None, headers=None, retry=False):
        headers = dict(headers or {})
        if self.token is not None and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = "Bearer " + self.token
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                result = Response(response.status, _lower_headers(response.msg), data,
                                  _parse_json(data))
                if response.will_close:
                    self.conn.close()
                return result
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if not retry or attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def post(self, path, obj_or_bytes, key=None, headers=None, content_type="application/json",
             retry=False):
        """POSTs obj (JSON-encoded) or raw bytes. key sets Idempotency-Key; content_type None
        sends no Content-Type. retry resends once on a reset connection: only for keyed
        requests, which the server answers once however often they arrive."""
        all_headers = {}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if key is not None:
            all_headers["Idempotency-Key"] = key
        all_headers.update(headers or {})
        check(not retry or key is not None, "only a keyed POST may be retried")
        return self.request("POST", path, encode_body(obj_or_bytes), all_headers, retry=retry)

    def get(self, path, headers=None):
        return self.request("GET", path, None, headers, retry=True)


_key_lock = threading.Lock()
_key_counter = [0]


def new_key(prefix="k"):
    """A unique Idempotency-Key for this process."""
    with _key_lock:
        _key_counter[0] += 1
        n = _key_counter[0]
    return "%s-%d-%d-%d" % (prefix, os.getpid(), int(time.time() * 1000), n)


def describe(resp):
    body = resp.body[:300].decode("utf-8", "replace") if resp.body else ""
    return "%d %s" % (resp.status, body)


def eventually(fn, what, timeout):
    """Calls fn() until it returns without AssertionError; returns its result, or raises the
    last error after timeout seconds (a bound for what must happen, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except AssertionError as e:
            if time.monotonic() > deadline:
                raise AssertionError("%s, still after %.0f s: %s" % (what, timeout, e))
        time.sleep(0.1)


def check_status(resp, status, what):
    if resp.status != status:
        raise AssertionError("%s: want status %d, got %s" % (what, status, describe(resp)))


def check_problem(resp, status, code=None, what="request"):
    """Checks a problem+json error: status, content type, members type/title/status/code."""
    check_status(resp, status, what)
    ctype = resp.headers.get("content-type", "")
    check(ctype.startswith("application/problem+json"),
          "%s: content-type %r is not application/problem+json" % (what, ctype))
    body = resp.json
    check(isinstance(body, dict), "%s: problem body is not a JSON object: %r" % (what, resp.body))
    for member in ("type", "title", "status", "code"):
        check(member in body, "%s: problem body lacks %r: %r" % (what, member, body))
    check(isinstance(body["title"], str) and body["title"], "%s: empty title" % what)
    check_eq(body["status"], status, "%s: problem status member" % what)
    if code is not None:
        check_eq(body["code"], code, "%s: problem code" % what)
    return body


def run_threads(target, count, timeout=60.0, args_of=None):
    """Runs target(i) (or target(*args_of(i))) on count threads; joins with a deadline and
    fails if any thread is still running or raised."""
    errors = []

    def wrap(i):
        try:
            if args_of is None:
                target(i)
            else:
                target(*args_of(i))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append("thread %d: %s: %s" % (i, type(e).__name__, e))

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(1 for t in threads if t.is_alive())
    check(stuck == 0, "%d of %d threads still running after %.0f s" % (stuck, count, timeout))
    check(not errors, "%d thread(s) failed, first: %s" % (len(errors), errors[:3]))


def wait_health(server, timeout=5.0):
    """Waits until GET /health answers 200."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with server.client(timeout=2) as c:
                r = c.get("/health")
                if r.status == 200:
                    return
                last = describe(r)
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise AssertionError("/health did not answer 200 within %.0f s: %s" % (timeout, last))


def _events_from_api(server):
    """Every stock event (sku set) from GET /v1/events, paged; None when the route is absent."""
    rows = []
    since = 0
    with server.client() as c:
        while True:
            r = c.get("/v1/events?limit=1000&since=%d" % since)
            if r.status == 404:
                return None  # no such route in this build: read the database instead
            check_status(r, 200, "GET /v1/events since %d" % since)
            items = r.json["items"]
            if not items:
                return rows
            for e in items:
                check(e["seq"] > since, "events out of order: %d after %d" % (e["seq"], since))
                since = e["seq"]
                if e.get("sku") is not None:
                    rows.append((e["storeId"], e["sku"], e["eventType"], e["data"]))


def _sqlite_rows(server, sql):
    import sqlite3
    path = os.path.join(server.data_dir, "stockd.db")
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _stored_rows(server, sql):
    """Rows of sql on the server's database: <data_dir>/stockd.db, or its PostgreSQL database."""
    if server.pg_db is None:
        return _sqlite_rows(server, sql)
    return psql(sql, db=server.pg_db)


def audit_cli(server):
    """PostgreSQL mode: `stockd --audit --store URI` on the server's database (it may run
    beside live instances); checks exit status 0 and returns its report (stdout)."""
    check(server.pg_db is not None, "audit_cli is for PostgreSQL mode")
    audit_dir = tempfile.mkdtemp(prefix="stockd-bb-audit-")
    _temp_dirs.append(audit_dir)
    args = [stockd_bin(), "--audit", "--data-dir", audit_dir, "--store", pg_uri(server.pg_db)]
    try:
        p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                           cwd=audit_dir)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s: no exit within 120 s" % " ".join(args))
    out = p.stdout.decode("utf-8", "replace")
    check(p.returncode == 0, "%s exited %d:\n%s\n%s" % (
        " ".join(args), p.returncode, out[-2000:], p.stderr.decode("utf-8", "replace")[-2000:]))
    return out


def _audit_once(server):
    rows = _events_from_api(server)
    if rows is None:
        rows = [(store, sku, None, json.loads(data)) for store, sku, data in _stored_rows(
            server, "SELECT store_id, sku, data FROM events WHERE sku IS NOT NULL ORDER BY seq")]
    sums = {}
    for store, sku, event_type, data in rows:
        on_hand, reserved = sums.get((store, sku), (0, 0))
        on_hand += data.get("delta", 0)
        reserved += data.get("reservedDelta", 0)
        what = "audit %s/%s after %s %s" % (store, sku, event_type or "event", data)
        check(0 <= reserved <= on_hand, "%s: reserved %d, onHand %d" % (what, reserved, on_hand))
        if "onHand" in data:
            check_eq(data["onHand"], on_hand, what + ": onHand member vs sum of deltas")
        if "reserved" in data:
            check_eq(data["reserved"], reserved, what + ": reserved member vs sum")
        sums[(store, sku)] = (on_hand, reserved)
    stored = {(store, sku): (int(on_hand), int(reserved))
              for store, sku, on_hand, reserved in _stored_rows(
                  server, "SELECT store_id, sku, on_hand, reserved FROM stock_items")}
    check_eq(stored, sums, "stock_items vs the event log replayed")
    return sums


def audit_events(server, settle_s=10.0):
    """The invariant audit by replay of the event log (DESIGN.md "Domain", events.h): per
    (store, sku) onHand == sum(delta), reserved == sum(reservedDelta), 0 <= reserved <= onHand
    after every event, each event's onHand/reserved equal the running sums, and the stored
    stock_items equal the sums. Events come from GET /v1/events, else from the database.
    PostgreSQL mode: the stored rows come from the server's PostgreSQL database, the replay is
    retried for up to settle_s (an instance sharing its database with others follows their
    events with some lag), and `stockd --audit --store URI` must pass too.
    Returns {(store, sku): (onHand, reserved)}."""
    with server.client() as c:  # the server's own audit (GET /v1/admin/audit) first
        r = c.get("/v1/admin/audit")
    check_eq(r.status, 200, "GET /v1/admin/audit")
    check(r.json.get("ok") is True and r.json.get("violationCount") == 0,
          "the server's audit found violations: %s" % r.body[:2000])
    if server.pg_db is None:
        return _audit_once(server)
    deadline = time.monotonic() + settle_s
    while True:
        try:
            sums = _audit_once(server)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
    audit_cli(server)
    return sums


class _TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _TestTimeout("test exceeded %d s" % TEST_TIMEOUT_S)


def _drop_pg_databases():
    for db in _pg_databases:
        try:
            psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
        except AssertionError as e:
            print("note: could not drop database %s: %s" % (db, e))


# What a sanitizer prints when it finds something (ASan, LSan, UBSan, TSan). With
# abort_on_error a report mid-test also kills the server, but a leak is reported at exit, after
# the test's last request: only the log tells.
_SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                      "WARNING: ThreadSanitizer")


def check_no_sanitizer_reports():
    """Fails when the log of a server the current test started (and stopped) holds a sanitizer
    report."""
    for server in _servers:
        if server.alive():
            continue  # still running: the cleanup kills it, with nothing left to report
        try:
            with open(server.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue  # the test removed its data directory
        hits = [line for line in text.splitlines() if any(m in line for m in _SANITIZER_MARKERS)]
        check(not hits, "sanitizer report in %s: %s" % (server.log_path, hits[:3]))


def main(tests, needs_pg=False):
    """Runs each test function in order; prints ok/FAIL/SKIP lines and 'N passed, M failed'.
    needs_pg: the script is about PostgreSQL only; without $STOCKD_TEST_PG it skips whole."""
    sys.stdout.reconfigure(line_buffering=True)
    if not pg_mode() and (needs_pg or os.environ.get("STOCKD_TEST_REQUIRE_PG")):
        print("SKIP: these tests need PostgreSQL: set STOCKD_TEST_PG (e.g. "
              "postgres://postgres@127.0.0.1:55432) and STOCKD_TEST_PG_DIR "
              "(scripts/run-tests.sh does)")
        sys.exit(77)  # meson's "skipped"
    binary = stockd_bin()
    if not os.access(binary, os.X_OK):
        print("FAIL setup: no stockd binary at %s (set STOCKD_BIN)" % binary)
        print("0 passed, %d failed" % len(tests))
        sys.exit(1)
    if pg_mode():
        print("PostgreSQL mode: --store %s/<a new database per data directory>" % _pg_parts()[0])
    signal.signal(signal.SIGALRM, _on_alarm)
    passed = failed = skipped = 0
    script_started = time.monotonic()
    for test in tests:
        name = test.__name__
        del _servers[:]
        started = time.monotonic()
        signal.alarm(TEST_TIMEOUT_S)
        try:
            test()
            check_no_sanitizer_reports()
            signal.alarm(0)
            passed += 1
            print("ok %s" % name)
        except SkipTest as e:
            signal.alarm(0)
            skipped += 1
            print("SKIP %s: %s" % (name, e))
        except BaseException as e:  # noqa: BLE001 - every failure is reported, then we go on
            signal.alarm(0)
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            reason = str(e) if isinstance(e, AssertionError) else \
                "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc())
            print("FAIL %s: %s" % (name, reason))
            print("  (failed after %.1f s)" % (time.monotonic() - started))
            for server in _servers:
                print("--- server log tail (%s, exit %s) ---\n%s\n---" % (
                    server.data_dir, server.proc.poll(), server.log_tail()))
        finally:
            signal.alarm(0)
            for server in _servers:
                if server.alive():
                    server.kill9()
            if _pg_state["stopped"]:  # the test stopped PostgreSQL: the next one needs it
                try:
                    pg_start()
                except AssertionError as e:
                    print("note: could not start PostgreSQL again: %s" % e)
    if failed == 0:
        for d in _temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        _drop_pg_databases()
    else:
        print("data directories kept: %s" % " ".join(_temp_dirs))
        if _pg_databases:
            print("PostgreSQL databases kept: %s" % " ".join(_pg_databases))
    for line in _skipped_bugs:
        print(line)
    print("(%.1f s)" % (time.monotonic() - script_started))
    tail = ", %d skipped" % skipped if skipped else ""
    print("%d passed, %d failed%s" % (passed, failed, tail))
    if failed:
        sys.exit(1)
    sys.exit(77 if skipped and not passed else 0)
