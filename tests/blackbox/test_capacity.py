"""Black-box tests of the capacity flags (issue 14, goal 4): --max-stores, --max-products,
--max-stock-items and --max-reservations size stockd's in-memory tables at start-up.

With small limits, every way of making one more store, product, stock item (a (store, sku)
pair: a product's first store, an adjustment, a set-absolute, a reconciliation or a transfer
into a store that does not stock the sku yet) or active reservation (a reservation, a checkout
order) answers 507 problem+json `capacity_exceeded` and changes nothing, the process stays up,
and what fits keeps working (purchases, changes of existing items, availability, listings).
Ending a reservation frees its slot. A bad value of a flag makes stockd exit 2 with its usage
and never start. A restart with limits below the stored data exits with a non-zero status (not
a signal) and a log line naming the flag to raise, both from a snapshot and from a replay of
the event log; a restart with the same limits comes back with every row. A reservation made
after many have ended still reads back."""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (_store_args, _temp_dirs, audit_events, check, check_eq,  # noqa: E402
                     check_problem, check_status, main, new_key, start_stockd, stockd_bin,
                     wait_health)

MAX_STORES = 3
MAX_PRODUCTS = 5
MAX_ITEMS = 7
MAX_RESERVATIONS = 4
TTL_LONG = 600  # seconds: never expires during a test

FLAGS = {"--max-stores": MAX_STORES, "--max-products": MAX_PRODUCTS,
         "--max-stock-items": MAX_ITEMS, "--max-reservations": MAX_RESERVATIONS}


def limit_args(**override):
    """The four flags with the test's limits; override by name, e.g. stock_items=6."""
    values = dict(FLAGS)
    for name, value in override.items():
        values["--max-" + name.replace("_", "-")] = value
    args = []
    for flag, value in values.items():
        args += [flag, str(value)]
    return args


def post_ok(c, path, body, status, what):
    r = c.post(path, body, key=new_key())
    check_status(r, status, what)
    return r


def check_full(s, c, r, what):
    """r is a 507 capacity_exceeded problem, and the server still serves."""
    check_problem(r, 507, "capacity_exceeded", what)
    check(s.alive(), "stockd died after %s" % what)
    check_status(c.get("/health"), 200, "/health after " + what)


def avail(c, sku, store_id):
    """(onHand, reserved, available) of sku in store_id ((0, 0, 0) when not stocked there)."""
    r = c.get("/v1/availability?sku=%s&storeId=%s" % (sku, store_id))
    check_status(r, 200, "availability of %s in %s" % (sku, store_id))
    return (r.json["onHand"], r.json["reserved"], r.json["available"])


def stocked(c, sku):
    """The stores that stock sku (an item exists), from its per-store breakdown."""
    r = c.get("/v1/items/%s/availability" % sku)
    check_status(r, 200, "per-store availability of " + sku)
    return sorted(row["storeId"] for row in r.json["stores"])


def reserve(c, sku, store_id="S1", qty=1):
    return c.post("/v1/reservations", {"storeId": store_id, "lines": [{"sku": sku, "qty": qty}],
                                       "ttlSeconds": TTL_LONG, "customerId": "cap"},
                  key=new_key())


def fill_to_limits(s, c):
    """Makes exactly MAX_STORES stores, MAX_PRODUCTS products, MAX_ITEMS items and
    MAX_RESERVATIONS active reservations, checking a 507 one past each. Returns the ids of
    the active reservations."""
    # Stores: S1 comes with a fresh database.
    post_ok(c, "/v1/stores", {"storeId": "S2", "name": "two"}, 201, "store S2")
    post_ok(c, "/v1/stores", {"storeId": "S3", "name": "three"}, 201, "store S3")
    check_full(s, c, c.post("/v1/stores", {"storeId": "S4", "name": "four"}, key=new_key()),
               "store 4 of --max-stores 3")
    # Products: one item each, in S1 (5 items).
    for i in range(1, MAX_PRODUCTS + 1):
        post_ok(c, "/v1/products", {"sku": "P%d" % i, "name": "p%d" % i, "initialOnHand": 100,
                                    "storeId": "S1"}, 201, "product P%d" % i)
    check_full(s, c, c.post("/v1/products", {"sku": "P6", "name": "p6", "initialOnHand": 1,
                                             "storeId": "S2"}, key=new_key()),
               "product 6 of --max-products 5 (items left)")
    # Items 6 and 7: an adjustment and a set-absolute in S2.
    post_ok(c, "/v1/adjustments", {"storeId": "S2", "sku": "P1", "delta": 50,
                                   "reason": "delivery"}, 200, "item 6 (adjustment)")
    post_ok(c, "/v1/items:set-absolute", {"storeId": "S2", "sku": "P2", "onHand": 40,
                                          "countRef": "c1"}, 200, "item 7 (set-absolute)")
    # One item past the limit, by an adjustment and a set-absolute.
    check_full(s, c, c.post("/v1/adjustments", {"storeId": "S2", "sku": "P3", "delta": 1,
                                                "reason": "x"}, key=new_key()),
               "item 8 of --max-stock-items 7 by an adjustment")
    check_full(s, c, c.post("/v1/items:set-absolute", {"storeId": "S3", "sku": "P3",
                                                       "onHand": 1, "countRef": "c2"},
                            key=new_key()), "item 8 of --max-stock-items 7 by a set-absolute")
    # Nothing of the refused commands happened.
    check_eq(avail(c, "P1", "S2"), (50, 0, 50), "P1 in S2 after the refusals")
    check_eq(avail(c, "P1", "S1"), (100, 0, 100), "P1 in S1 after the refusals")
    check_eq(avail(c, "P4", "S1"), (100, 0, 100), "P4 in S1 after the refusals")
    check_eq(avail(c, "P5", "S1"), (100, 0, 100), "P5 in S1 after the refusals")
    for sku, stores in (("P1", ["S1", "S2"]), ("P2", ["S1", "S2"]), ("P3", ["S1"]),
                        ("P4", ["S1"]), ("P5", ["S1"])):
        check_eq(stocked(c, sku), stores, "stores stocking %s after the refusals" % sku)
    # A product past both limits, too.
    check_full(s, c, c.post("/v1/products", {"sku": "P7", "name": "p7"}, key=new_key()),
               "product past both limits")
    # Reservations: MAX_RESERVATIONS active, then 507, for a reservation and a checkout order.
    ids = []
    for i in range(MAX_RESERVATIONS):
        r = reserve(c, "P%d" % (i + 1))
        check_status(r, 201, "reservation %d" % (i + 1))
        ids.append(r.json["reservationId"])
    check_full(s, c, reserve(c, "P5"), "reservation 5 of --max-reservations 4")
    check_full(s, c, c.post("/v1/orders", {"customerId": "cap", "storeId": "S1",
                                           "lines": [{"sku": "P5", "qty": 1}]}, key=new_key()),
               "checkout order with every reservation slot taken")
    return ids


def test_items_past_limit_by_reconciliation_and_transfer():
    """A reconciliation or a transfer that would make a stock item past the limit (alone or
    beside lines on existing items): 507, nothing of it applied, the server alive."""
    s = start_stockd(limit_args())
    try:
        with s.client() as c:
            fill_to_limits(s, c)
            past = [
                ("/v1/reconciliations", {"storeId": "S3", "snapshotOnHand": {"P4": 5},
                                         "source": "count"}, "a reconciliation"),
                ("/v1/reconciliations", {"storeId": "S2", "snapshotOnHand": {"P1": 60, "P5": 5},
                                         "source": "count"},
                 "a reconciliation of a known and a new item"),
                ("/v1/transfers", {"fromStore": "S1", "toStore": "S3",
                                   "lines": [{"sku": "P5", "qty": 1}]}, "a transfer"),
                ("/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                   "lines": [{"sku": "P1", "qty": 1}, {"sku": "P4", "qty": 1}]},
                 "a transfer of a known and a new item"),
            ]
            for path, body, what in past:
                check_full(s, c, c.post(path, body, key=new_key()),
                           "item 8 of --max-stock-items 7 by " + what)
            check_eq(avail(c, "P1", "S2"), (50, 0, 50), "P1 in S2 after the refusals")
            check_eq(avail(c, "P1", "S1"), (100, 1, 99), "P1 in S1 after the refusals")
            check_eq(avail(c, "P4", "S1"), (100, 1, 99), "P4 in S1 after the refusals")
            check_eq(avail(c, "P5", "S1"), (100, 0, 100), "P5 in S1 after the refusals")
            for sku, stores in (("P1", ["S1", "S2"]), ("P4", ["S1"]), ("P5", ["S1"])):
                check_eq(stocked(c, sku), stores, "stores stocking %s after the refusals" % sku)
        audit_events(s)
    finally:
        s.stop()


def test_limits_answer_507():
    """One past each limit: 507 capacity_exceeded, nothing changed, the server alive; what
    fits works; an ended reservation frees its slot."""
    s = start_stockd(limit_args())
    try:
        with s.client() as c:
            ids = fill_to_limits(s, c)
            # What exists keeps working at the limits.
            r = post_ok(c, "/v1/purchase", {"sku": "P1", "qty": 2, "customerId": "cap",
                                            "storeId": "S2"}, 201, "purchase at the limits")
            check_eq(r.json["available"], 48, "available after the purchase")
            post_ok(c, "/v1/adjustments", {"storeId": "S2", "sku": "P1", "delta": 2,
                                           "reason": "found"}, 200, "adjust an existing item")
            post_ok(c, "/v1/reconciliations", {"storeId": "S1", "snapshotOnHand": {
                "P4": 90, "P5": 95}, "source": "count"}, 200, "reconcile existing items")
            post_ok(c, "/v1/transfers", {"fromStore": "S1", "toStore": "S2",
                                         "lines": [{"sku": "P2", "qty": 5}]}, 201,
                    "transfer between existing items")
            check_eq(avail(c, "P1", "S2"), (50, 0, 50), "P1 in S2")
            check_eq(avail(c, "P2", "S2"), (45, 0, 45), "P2 in S2")
            check_eq(avail(c, "P2", "S1"), (95, 1, 94), "P2 in S1")
            r = c.get("/v1/products/totals")
            check_status(r, 200, "product totals")
            check_eq(r.json["total"], MAX_PRODUCTS, "products listed")
            check_eq(sorted(row["sku"] for row in r.json["items"]),
                     ["P%d" % i for i in range(1, MAX_PRODUCTS + 1)], "skus listed")
            r = c.get("/v1/stores")
            check_status(r, 200, "stores")
            check_eq(sorted(st["storeId"] for st in r.json["items"]), ["S1", "S2", "S3"],
                     "stores listed")
            r = c.get("/v1/items/P1/availability")
            check_status(r, 200, "P1 per store")
            check_eq(r.json["total"], {"onHand": 150, "reserved": 1, "available": 149},
                     "P1 over its stores")
            # Ending a reservation frees a slot: cancel, then confirm, each lets one more in.
            check_status(c.post("/v1/reservations/%s:cancel" % ids[0], {"reason": "no"},
                                key=new_key()), 200, "cancel a reservation")
            r = reserve(c, "P5")
            check_status(r, 201, "a reservation in the cancelled one's slot")
            check_full(s, c, reserve(c, "P5"), "full again after the new reservation")
            check_status(c.post("/v1/reservations/%s:confirm" % ids[1], {}, key=new_key()), 200,
                         "confirm a reservation")
            check_status(reserve(c, "P3", qty=2), 201, "a reservation in the confirmed one's slot")
            check_full(s, c, reserve(c, "P3"), "full again after the second new reservation")
            # Many more ended than the limit: slots keep coming back.
            active = [r.json["reservationId"]]
            for i in range(3 * MAX_RESERVATIONS):
                check_status(c.post("/v1/reservations/%s:cancel" % active.pop(), {"reason": "n"},
                                    key=new_key()), 200, "churn cancel %d" % i)
                r = reserve(c, "P4")
                check_status(r, 201, "churn reservation %d" % i)
                active.append(r.json["reservationId"])
            check_full(s, c, reserve(c, "P4"), "full after the churn")
        wait_health(s)
        audit_events(s)
    finally:
        s.stop()


def check_reservation_read(c, rid, want, what):
    """GET /v1/reservations/{rid} answers 200 with the body want (plus its three times, as
    strings) and ETag "r<version>", and If-None-Match with that tag answers 304."""
    g = c.get("/v1/reservations/" + rid)
    check_status(g, 200, "GET " + what)
    body = dict(g.json)
    for name in ("expiresAt", "createdAt", "updatedAt"):
        check(isinstance(body.pop(name, None), str), "%s: %s is a time string" % (what, name))
    check_eq(body, want, "body of " + what)
    tag = '"r%d"' % want["version"]
    check_eq(g.headers.get("etag"), tag, "ETag of " + what)
    check_status(c.get("/v1/reservations/" + rid, headers={"If-None-Match": tag}), 304,
                 "GET %s with If-None-Match %s" % (what, tag))
    return g.json


def reservation_rows(c):
    """stockd_table_rows{table="reservations"}: the ACTIVE reservations the writer holds."""
    r = c.get("/metrics")
    check_status(r, 200, "GET /metrics")
    for line in r.body.decode().splitlines():
        if line.startswith('stockd_table_rows{table="reservations"} '):
            return int(line.split()[1])
    check(False, "/metrics has no reservations row count")


def test_new_reservations_readable_after_many_ended():
    """The read model remembers CAPACITY_PROJ_RESERVATIONS_FACTOR (4) x --max-reservations
    reservations, active or ended. A new reservation must still read back (GET
    /v1/reservations/{id}) once that many have ended, also after a restart: the limit on ACTIVE
    ones is what --max-reservations promises, not on all there ever were. The ones past the read
    model's table read back from the database with the same body, ETag and updates."""
    s = start_stockd(limit_args(reservations=2))
    try:
        total = 4 * 2 + 4
        lines = [{"sku": "R", "qty": 1}, {"sku": "R2", "qty": 2}]
        with s.client() as c:
            for sku in ("R", "R2"):
                post_ok(c, "/v1/products", {"sku": sku, "name": sku, "initialOnHand": 100,
                                            "storeId": "S1"}, 201, "product " + sku)
            for i in range(total):
                what = "reservation %d of %d (%d ended before it)" % (i + 1, total, i)
                r = c.post("/v1/reservations", {"storeId": "S1", "lines": lines,
                                                "ttlSeconds": TTL_LONG, "customerId": "cap"},
                           key=new_key())
                check_status(r, 201, what)
                rid = r.json["reservationId"]
                want = {"reservationId": rid, "status": "ACTIVE", "storeId": "S1",
                        "customerId": "cap", "lines": lines, "version": 1}
                got = check_reservation_read(c, rid, want, what)
                check_eq(got["expiresAt"], r.json["expiresAt"], "expiresAt of " + what)
                cancel = c.post("/v1/reservations/%s:cancel" % rid, {"reason": "n"},
                                key=new_key())
                check_status(cancel, 200, "cancel " + what)
                want.update(status="CANCELLED", version=cancel.json["version"])
                check_eq(want["version"], 2, "version of the cancelled " + what)
                check_reservation_read(c, rid, want, "cancelled " + what)
            check_eq(reservation_rows(c), 0, "reservation rows once every one is cancelled")
            for rid in ("res_999999", "res_0", "res_x"):
                check_problem(c.get("/v1/reservations/" + rid), 404, "unknown_reservation",
                              "GET unknown " + rid)
        check_eq(s.stop(), 0, "exit status of a clean stop")
        s = start_stockd(limit_args(reservations=2), data_dir=s.data_dir)
        with s.client() as c:
            r = reserve(c, "R")
            check_status(r, 201, "a reservation after the restart")
            check_eq(reservation_rows(c), 1, "reservation rows with one ACTIVE past the read "
                     "model's table")
            check_status(c.get("/v1/reservations/" + r.json["reservationId"]), 200,
                         "GET the reservation made after the restart")
            check_eq(c.get("/v1/reservations/res_%d" % total).json["status"], "CANCELLED",
                     "the last one before the restart, after it")
    finally:
        s.stop()


BAD_VALUES = ("0", "-1", "abc", "", "12x", "1.5", "99999999999999999999", str(2 ** 40))


def test_bad_values_exit_2():
    """Each flag with a value that is no count, 0, negative or above any bound: exit 2 with
    the usage on stderr, no listening line. The same flags with good values start."""
    for flag in FLAGS:
        for value in BAD_VALUES:
            data_dir = tempfile.mkdtemp(prefix="stockd-bb-cap-")
            _temp_dirs.append(data_dir)
            store_args, _ = _store_args(data_dir, [], None)
            args = [stockd_bin(), "--listen", "127.0.0.1:0", "--data-dir", data_dir,
                    "--threads", "1"] + store_args + [flag, value]
            try:
                p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=30, cwd=data_dir)
            except subprocess.TimeoutExpired:
                raise AssertionError("stockd %s %r did not exit within 30 s" % (flag, value))
            out = p.stdout.decode("utf-8", "replace")
            err = p.stderr.decode("utf-8", "replace")
            what = "stockd %s %r" % (flag, value)
            check_eq(p.returncode, 2, what + " exit status (stderr %r)" % err[-300:])
            check("listening" not in out, what + " started: %r" % out)
            check("usage" in err.lower(), what + ": no usage on stderr: %r" % err[-500:])
            check(not os.path.exists(os.path.join(data_dir, "stockd.db")),
                  what + ": made a database")
    s = start_stockd(limit_args())
    try:
        wait_health(s)
    finally:
        check_eq(s.stop(), 0, "exit status of a clean stop with good values")


def refused_start(data_dir, args, flag):
    """Starts stockd on data_dir with args; it must exit (status > 0, not a signal) with a
    line naming flag."""
    store_args, _ = _store_args(data_dir, [], None)
    cmd = [stockd_bin(), "--listen", "127.0.0.1:0", "--data-dir", data_dir,
           "--threads", "1"] + store_args + args
    what = "restart with %s below the stored data" % " ".join(args)
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                           cwd=data_dir)
    except subprocess.TimeoutExpired:
        raise AssertionError(what + ": still running after 60 s")
    err = p.stderr.decode("utf-8", "replace")
    check(p.returncode > 0, "%s: exit status %d (a negative one is a signal): %s"
          % (what, p.returncode, err[-1000:]))
    check(flag in err, "%s: no log line names %s: %s" % (what, flag, err[-1000:]))
    check("listening" not in p.stdout.decode("utf-8", "replace"), what + ": it listened")


def snapshot_of(s, c, ids):
    """What must come back after a restart."""
    state = {"stores": c.get("/v1/stores").body, "totals": c.get("/v1/products/totals").body}
    for sku in ("P%d" % i for i in range(1, MAX_PRODUCTS + 1)):
        state[sku] = c.get("/v1/items/%s/availability" % sku).json
    for rid in ids:
        r = c.get("/v1/reservations/" + rid)
        check_status(r, 200, "reservation " + rid)
        check_eq(r.json["status"], "ACTIVE", "status of " + rid)
        state[rid] = r.body
    return state


def restart_cases(extra):
    s = start_stockd(limit_args() + extra)
    try:
        with s.client() as c:
            ids = fill_to_limits(s, c)
            before = snapshot_of(s, c, ids)
        for kind in ("after SIGTERM", "after kill -9"):
            if kind == "after SIGTERM":
                check_eq(s.stop(), 0, "exit status of a clean stop")
            else:
                s = start_stockd(limit_args() + extra, data_dir=s.data_dir)
                with s.client() as c:  # a change after the clean stop's snapshot
                    post_ok(c, "/v1/purchase", {"sku": "P3", "qty": 1, "customerId": "k",
                                                "storeId": "S1"}, 201, "purchase before kill -9")
                    before = snapshot_of(s, c, ids)
                s.kill9()
            for name, flag, value in (("stores", "--max-stores", MAX_STORES - 1),
                                      ("products", "--max-products", MAX_PRODUCTS - 1),
                                      ("stock_items", "--max-stock-items", MAX_ITEMS - 1),
                                      ("reservations", "--max-reservations",
                                       MAX_RESERVATIONS - 1)):
                refused_start(s.data_dir, limit_args(**{name: value}) + extra, flag)
            s = start_stockd(limit_args() + extra, data_dir=s.data_dir)
            with s.client() as c:
                check_eq(snapshot_of(s, c, ids), before, "the state %s and the refusals" % kind)
                check_full(s, c, c.post("/v1/stores", {"storeId": "S9", "name": "n"},
                                        key=new_key()), "store past the limit " + kind)
                check_full(s, c, c.post("/v1/adjustments", {"storeId": "S3", "sku": "P1",
                                                            "delta": 1, "reason": "x"},
                                        key=new_key()), "item past the limit " + kind)
                check_full(s, c, reserve(c, "P5"), "reservation past the limit " + kind)
            if kind == "after SIGTERM":
                check_eq(s.stop(), 0, "exit status of a clean stop")
        # Larger limits take the same data and make room.
        s.stop()
        s = start_stockd(limit_args(stores=4, stock_items=8, reservations=5) + extra,
                         data_dir=s.data_dir)
        with s.client() as c:
            post_ok(c, "/v1/stores", {"storeId": "S4", "name": "four"}, 201, "store 4 of 4")
            post_ok(c, "/v1/adjustments", {"storeId": "S4", "sku": "P1", "delta": 3,
                                           "reason": "x"}, 200, "item 8 of 8")
            check_status(reserve(c, "P5"), 201, "reservation 5 of 5")
        audit_events(s)
    finally:
        s.stop()


def test_restart_below_stored_data():
    """From the snapshot of a clean stop (and after kill -9, the tail after it)."""
    restart_cases([])


def test_restart_below_stored_data_replay():
    """Without snapshots: every start replays the whole event log."""
    restart_cases(["--snapshot-every-events", "0"])


if __name__ == "__main__":
    main([test_limits_answer_507, test_items_past_limit_by_reconciliation_and_transfer,
          test_bad_values_exit_2, test_restart_below_stored_data,
          test_restart_below_stored_data_replay, test_new_reservations_readable_after_many_ended])
