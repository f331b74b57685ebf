"""Black-box tests of GET /metrics (issue 13): after a known load (purchases, an idempotent
replay, a sell-out 409, a 404 on a route and one on no route, a reservation) the live scrape
passes `promtool check metrics` with no lint at all; every family has # HELP and # TYPE; every
histogram's buckets are cumulative, end with +Inf, and +Inf equals _count; and the counters
moved as the load says (stockd_http_requests_total{route,method,code} by route pattern, never
the raw path, the duration histogram, replays, stock refusals, orders, units sold,
reservations, process_*). Scrapes taken while requests run on every I/O thread are still
consistent. deploy/prometheus/alerts.yml passes `promtool check rules`, prometheus.yml
`promtool check config`, and every metric the rules name is one stockd exposes.

promtool comes from Debian's prometheus package (scripts/install-deps.sh test): without it the
tests fail, they do not skip. Both backends."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (REPO, check, check_eq, check_problem, check_status, eventually,  # noqa: E402
                     main, new_key, pg_mode, run_threads, start_stockd)

DEPLOY = os.path.join(REPO, "deploy", "prometheus")
PURCHASES = 5
STOCK = 10
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Families only an instance with --amqp exposes; alerts.yml may name them.
AMQP_ONLY = {"stockd_relay_lag_events", "stockd_intake_dead_letters_total"}


def promtool():
    path = shutil.which("promtool")
    check(path is not None, "promtool is not installed: it comes with Debian's prometheus "
          "package (scripts/install-deps.sh test installs it)")
    return path


def scrape(c):
    r = c.get("/metrics")
    check_status(r, 200, "GET /metrics")
    check(r.headers.get("content-type", "").startswith("text/plain; version=0.0.4"),
          "content type %r" % r.headers.get("content-type"))
    return r.body.decode()


def parse(text):
    """{"families": {name: type}, "helps": set, "samples": [(name, labels dict, value)]}."""
    families, helps, samples = {}, set(), []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            check(name not in families, "two # TYPE lines for " + name)
            families[name] = kind
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            check(m is not None, "unparsable sample line %r" % line)
            labels = dict(LABEL.findall(m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return {"families": families, "helps": helps, "samples": samples}


def family_of(name, families):
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)] if name.endswith(suffix) else None
        if base is not None and families.get(base) == "histogram":
            return base
    return None


def value(parsed, name, **labels):
    """The sample of name with exactly these labels, 0 when absent (a series not yet seen)."""
    for n, l, v in parsed["samples"]:
        if n == name and l == labels:
            return v
    return 0.0


def check_exposition(text):
    """promtool without a word of lint, HELP and TYPE on every family, consistent histograms."""
    run = subprocess.run([promtool(), "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=60)
    output = (run.stdout + run.stderr).decode().strip()
    check(run.returncode == 0 and output == "",
          "promtool check metrics (rc %d):\n%s" % (run.returncode, output))
    parsed = parse(text)
    families = parsed["families"]
    check(set(families) == parsed["helps"],
          "families without # HELP: %s" % sorted(set(families) - parsed["helps"]))
    histograms = {}
    for name, labels, v in parsed["samples"]:
        family = family_of(name, families)
        check(family is not None, "sample %s has no # TYPE" % name)
        if families[family] != "histogram":
            continue
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        h = histograms.setdefault((family, rest), {"buckets": [], "count": None, "sum": None})
        if name.endswith("_bucket"):
            h["buckets"].append((labels["le"], v))
        elif name.endswith("_count"):
            h["count"] = v
        else:
            h["sum"] = v
    check(histograms, "no histogram in the scrape")
    for (family, rest), h in histograms.items():
        what = "%s%s" % (family, dict(rest))
        buckets = h["buckets"]
        check(buckets and buckets[-1][0] == "+Inf", "%s: buckets do not end with +Inf" % what)
        bounds = [float(le) for le, _ in buckets]
        check(bounds == sorted(bounds) and len(set(bounds)) == len(bounds),
              "%s: bucket bounds not increasing: %s" % (what, bounds))
        counts = [v for _, v in buckets]
        check(counts == sorted(counts), "%s: buckets not cumulative: %s" % (what, counts))
        check(h["count"] is not None and h["sum"] is not None, "%s: no _count or _sum" % what)
        check_eq(counts[-1], h["count"], "%s: +Inf bucket and _count" % what)
    return parsed


def purchase(c, body, key=None):
    return c.post("/v1/purchase", body, key=key or new_key())


def test_scrape_after_load_lints_and_counts():
    s = start_stockd()
    try:
        with s.client() as c:
            before = check_exposition(scrape(c))
            r = c.post("/v1/products", {"sku": "MET", "name": "Metered", "initialOnHand": STOCK},
                       key=new_key())
            check_status(r, 201, "product MET")
            replay_key = new_key()
            for i in range(PURCHASES):
                r = purchase(c, {"sku": "MET", "qty": 1, "customerId": "c-%d" % i},
                             key=replay_key if i == 0 else None)
                check_status(r, 201, "purchase %d" % i)
            r = purchase(c, {"sku": "MET", "qty": 1, "customerId": "c-0"}, key=replay_key)
            check_status(r, 201, "the replay")
            check_eq(r.headers.get("idempotent-replayed"), "true", "Idempotent-Replayed")
            r = purchase(c, {"sku": "MET", "qty": STOCK, "customerId": "late"})
            check_problem(r, 409, "insufficient_stock", "the sell-out")
            r = c.get("/v1/orders/ord_987654321")
            check_status(r, 404, "an unknown order")
            r = c.get("/no/such/route/42")
            check_status(r, 404, "a path no route matches")
            r = c.post("/v1/reservations", {"lines": [{"sku": "MET", "qty": 1}],
                                            "ttlSeconds": 600, "customerId": "holder"},
                       key=new_key())
            check_status(r, 201, "a reservation")

            def settled():
                after = parse(scrape(c))
                sold = value(after, "stockd_units_sold_total") - \
                    value(before, "stockd_units_sold_total")
                active = value(after, "stockd_reservations", status="active") - \
                    value(before, "stockd_reservations", status="active")
                check_eq((sold, active), (PURCHASES, 1), "units sold and active holds")
            eventually(settled, "the read model shows the sales and the hold", 10.0)
            after = check_exposition(scrape(c))

            def moved(name, **labels):
                return value(after, name, **labels) - value(before, name, **labels)
            purchase_201 = dict(route="/v1/purchase", method="POST", code="201")
            check_eq(moved("stockd_http_requests_total", **purchase_201), PURCHASES + 1,
                     "201s of /v1/purchase (the replay answers 201 too)")
            check_eq(moved("stockd_http_requests_total", route="/v1/purchase", method="POST",
                           code="409"), 1, "409s of /v1/purchase")
            check_eq(moved("stockd_http_requests_total", route="/v1/orders/{id}", method="GET",
                           code="404"), 1, "404 on the route pattern, not the path")
            check_eq(moved("stockd_http_requests_total", route="unmatched", method="GET",
                           code="404"), 1, "404 of no route")
            check_eq(moved("stockd_http_requests_total", route="/v1/products", method="POST",
                           code="201"), 1, "201 of /v1/products")
            routes = {l["route"] for n, l, _ in after["samples"] if "route" in l}
            check(not any("987654321" in r or "/no/such" in r for r in routes),
                  "a raw path is a route label: %s" % sorted(routes))
            check_eq(moved("stockd_http_request_duration_seconds_count", route="/v1/purchase"),
                     PURCHASES + 2, "latency observations of /v1/purchase")
            check(moved("stockd_http_request_duration_seconds_sum", route="/v1/purchase") > 0,
                  "latency sum of /v1/purchase grew")
            check_eq(moved("stockd_idempotent_replays_total"), 1, "idempotent replays")
            check_eq(moved("stockd_stock_refusals_total", command="purchase"), 1,
                     "purchases refused for stock")
            check_eq(moved("stockd_orders_total", status="COMPLETED"), PURCHASES,
                     "orders completed")
            check_eq(moved("stockd_events_committed_total", type="ReservationCreated"), 1,
                     "reservation events")
            check(moved("stockd_writer_batches_total") >= 1, "batches committed")
            check(moved("stockd_writer_commands_total") >= PURCHASES + 3, "commands committed")
            check(moved("stockd_writer_commit_duration_seconds_count") >= 1,
                  "commit duration observations")
            check_eq(value(after, "stockd_queue_capacity") > 0, True, "queue capacity")
            for table, default in (("stores", 32), ("products", 65536), ("stock_items", 262144),
                                   ("reservations", 16384)):  # the --max-* defaults
                check_eq(value(after, "stockd_table_capacity", table=table), default,
                         "capacity of " + table)
            check_eq(moved("stockd_table_rows", table="products"), 1, "product rows")
            check_eq(moved("stockd_table_rows", table="stock_items"), 1, "stock item rows")
            check(value(after, "stockd_table_rows", table="stores") >= 1, "store rows")
            check_eq(value(after, "stockd_writer_storage_ok"), 1.0, "storage ok")
            for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                         "process_open_fds", "process_start_time_seconds"):
                check_eq(after["families"].get(name) is not None, True, name + " present")
            start = value(after, "process_start_time_seconds")
            check(time.time() - 3600 < start <= time.time() + 5,
                  "process_start_time_seconds %.0f is not about now" % start)
            check(value(after, "process_open_fds") >= 3, "process_open_fds")
            check(value(after, "process_resident_memory_bytes") > 1 << 20, "resident memory")
    finally:
        s.stop()


def test_scrapes_during_load_stay_consistent():
    s = start_stockd(threads=3)
    try:
        with s.client() as c:
            r = c.post("/v1/products", {"sku": "BUSY", "name": "Busy", "initialOnHand": 1000},
                       key=new_key())
            check_status(r, 201, "product BUSY")
            before = parse(scrape(c))

        def load(i):
            with s.client() as lc:
                for j in range(40):
                    if j % 2 == 0:
                        check_status(lc.get("/v1/availability?sku=BUSY"), 200, "availability")
                    else:
                        r = lc.post("/v1/purchase", {"sku": "BUSY", "qty": 1,
                                                     "customerId": "t%d" % i}, key=new_key())
                        check_status(r, 201, "purchase")

        def scrapes(i):
            with s.client() as sc:
                for _ in range(8):
                    check_exposition(scrape(sc))

        run_threads(lambda i: load(i) if i < 4 else scrapes(i), 5, timeout=120.0)
        with s.client() as c:
            after = check_exposition(scrape(c))
        got = value(after, "stockd_http_requests_total", route="/v1/purchase", method="POST",
                    code="201") - value(before, "stockd_http_requests_total",
                                        route="/v1/purchase", method="POST", code="201")
        check_eq(got, 4 * 20, "purchases counted over every I/O thread")
        got = value(after, "stockd_http_requests_total", route="/v1/availability",
                    method="GET", code="200") - value(before, "stockd_http_requests_total",
                                                      route="/v1/availability", method="GET",
                                                      code="200")
        check_eq(got, 4 * 20, "availability reads counted over every I/O thread")
    finally:
        s.stop()


def test_checkpoints_copy_batches_of_new_pages():
    """stockd_store_wal_pages_total and stockd_store_checkpoints_total count the pages SQLite's
    commits appended to its write-ahead log and the checkpoints that copied them into the
    database file. A checkpoint starts only once 64 pages or more wait that no checkpoint copied
    yet (a quarter of STORE_SQLITE_CHECKPOINT_FRAMES, at the poll): under a load of concurrent
    purchases (the built-in load test) there are at most pages/64 of them, and an idle WAL is
    left alone. When the WAL's size alone woke the checkpointer, an idle WAL of 128 pages or
    more was checkpointed at every poll (~50 a second). Both 0 on PostgreSQL, which keeps its
    own log."""
    s = start_stockd()
    purchases = 20000
    with s.client() as c:
        r = c.post("/v1/products", {"sku": "CKP", "name": "Checkpointed",
                                    "initialOnHand": purchases}, key=new_key())
        check_status(r, 201, "product")
        before = parse(scrape(c))
        r = c.post("/v1/admin/load-test", {"vus": 64, "iterations": purchases, "sku": "CKP",
                                           "qty": 1, "kind": "purchase"})
        check_status(r, 200, "load test")
        check_eq(r.json["statusCounts"], {"201": purchases}, "every purchase sold")
        loaded = parse(scrape(c))
        time.sleep(1.0)  # idle: no purchase, nothing for a checkpoint to copy
        idle = parse(scrape(c))

        def moved(name, a, b):
            return value(b, name) - value(a, name)
        pages = moved("stockd_store_wal_pages_total", before, loaded)
        ran = moved("stockd_store_checkpoints_total", before, loaded)
        idle_ran = moved("stockd_store_checkpoints_total", loaded, idle)
        if pg_mode():
            check_eq((pages, ran, idle_ran), (0.0, 0.0, 0.0), "the WAL's counters on PostgreSQL")
        else:
            check(pages >= purchases / 10, "%d WAL pages for %d purchases" % (pages, purchases))
            check(1 <= ran <= pages / 64, "%d checkpoints for %d WAL pages" % (ran, pages))
            check(idle_ran <= 2, "%d checkpoints in 1 s without a purchase" % idle_ran)
    s.stop()


def test_connections_go_round_the_io_threads():
    """stockd_http_connections_total{thread} counts the connections each I/O thread served, and
    they go round the threads in turn, whichever thread accepted them: after a burst of
    connections opened at once (all in the listen backlog before any thread wakes, where the
    first awake used to take the whole batch), the two threads' counts differ by at most one."""
    s = start_stockd(threads=2)
    burst = 24
    socks = []
    try:
        for _ in range(burst):
            socks.append(socket.create_connection(("127.0.0.1", s.port), timeout=10))
        for k in socks:
            k.sendall(b"GET /health HTTP/1.1\r\nHost: stockd\r\n\r\n")
        for k in socks:
            check(k.recv(12).startswith(b"HTTP/1.1 "), "an answer on every connection")
        with s.client() as c:
            parsed = parse(scrape(c))
    finally:
        for k in socks:
            k.close()
        s.stop()
    counts = [value(parsed, "stockd_http_connections_total", thread=str(t)) for t in (0, 1)]
    check(sum(counts) >= burst + 1, "connections counted: %s for %d opened" % (counts, burst + 1))
    check(abs(counts[0] - counts[1]) <= 1, "connections per I/O thread: %s" % counts)


def test_example_prometheus_config_and_alert_rules():
    tool = promtool()
    s = start_stockd()
    try:
        with s.client() as c:
            families = parse(scrape(c))["families"]
    finally:
        s.stop()
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        run = subprocess.run([tool] + args, cwd=DEPLOY, capture_output=True, timeout=60)
        check(run.returncode == 0, "promtool %s:\n%s" % (" ".join(args),
                                                         (run.stdout + run.stderr).decode()))
    with open(os.path.join(DEPLOY, "alerts.yml")) as f:
        rules = f.read()
    exprs = re.findall(r"^\s*expr:\s*(.+)$", rules, re.M)
    check(len(exprs) >= 5, "alert expressions in alerts.yml: %d" % len(exprs))
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b((?:stockd|process)_[a-z0-9_]+)", expr))
    with open(os.path.join(REPO, "src", "http", "api_metrics.c")) as f:
        source = f.read()
    for name in sorted(names):
        if name in AMQP_ONLY:
            check('"%s' % name in source, "%s is not in api_metrics.c" % name)
            continue
        check(name in families, "alerts.yml names %s, which /metrics does not expose" % name)
    for alert in ("StockdWriterStalled", "StockdQueueNearFull", "StockdProjectionLag",
                  "StockdDeadLettersGrowing", "StockdPaymentCircuitOpen"):
        check("alert: " + alert in rules, "alerts.yml has no " + alert)


if __name__ == "__main__":
    main([test_scrape_after_load_lints_and_counts, test_scrapes_during_load_stay_consistent,
          test_checkpoints_copy_batches_of_new_pages, test_connections_go_round_the_io_threads,
          test_example_prometheus_config_and_alert_rules])
