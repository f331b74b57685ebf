#!/usr/bin/env python3
"""Hardening (issue 10), as an attacker or bad luck would meet stockd: files only its owner can
read, descriptors raised to the hard limit, log lines that stay one line a second per place.
The fault suite grows here as the issue lands in steps."""
import os
import stat
import subprocess
import tempfile
import threading
import time

from harness import (check, check_eq, check_status, main, new_key, pg_mode, pg_uri,
                     start_stockd, stockd_bin, _temp_dirs)


def test_files_are_owner_only():
    """A data directory that already exists with mode 0755 gets files of mode 0600 (stored
    responses, customer ids, token hashes) and a warning; a new one is made 0700."""
    parent = tempfile.mkdtemp(prefix="stockd-bb-modes-")
    _temp_dirs.append(parent)
    os.chmod(parent, 0o755)
    s = start_stockd(data_dir=parent)
    try:
        with s.client() as c:
            r = c.post("/v1/products", {"sku": "M", "name": "m", "initialOnHand": 1},
                       key=new_key("m"))
            check_status(r, 201, "a product, so the database has been written")
        names = ["tokens", "admin.token"] + ([] if pg_mode() else ["stockd.db", "stockd.db-wal"])
        for name in names:
            mode = stat.S_IMODE(os.stat(os.path.join(parent, name)).st_mode)
            check_eq(oct(mode), oct(0o600), "mode of %s" % name)
        with open(s.log_path) as f:
            log = f.read()
        check("has mode 755: group and others can enter it" in log,
              "no warning about the 0755 data directory in the log")
    finally:
        s.stop()
    fresh = os.path.join(parent, "new-data-dir")
    s = start_stockd(data_dir=None, extra_args=["--data-dir", fresh])
    try:
        check_eq(oct(stat.S_IMODE(os.stat(fresh).st_mode)), oct(0o700), "a new data directory")
    finally:
        s.stop()


def test_open_files_limit_raised():
    """The soft limit of open files is the hard one: every connection is a descriptor."""
    s = start_stockd()
    try:
        with open("/proc/%d/limits" % s.proc.pid) as f:
            line = [l for l in f if l.startswith("Max open files")][0]
        soft, hard = line.split()[3:5]
        check_eq(soft, hard, "Max open files, soft and hard")
    finally:
        s.stop()


def audit_cli_once(server):
    """`stockd --audit` on the server's database while it runs: (exit status, report)."""
    audit_dir = tempfile.mkdtemp(prefix="stockd-bb-audit-")
    _temp_dirs.append(audit_dir)
    store = ["--store", pg_uri(server.pg_db)] if server.pg_db else []
    args = [stockd_bin(), "--audit", "--data-dir", server.data_dir if not store else audit_dir]
    p = subprocess.run(args + store, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def test_audit_under_load():
    """The audit reads the event log and the stock rows in one snapshot: while purchases
    commit, neither GET /v1/admin/audit nor `stockd --audit` reports a violation (both cried
    wolf every time before)."""
    s = start_stockd()
    stop = threading.Event()
    bought = [0]
    try:
        with s.client() as c:
            check_status(c.post("/v1/products", {"sku": "AUD", "name": "a",
                                                 "initialOnHand": 1000000}, key=new_key("p")),
                         201, "the product")

        def buyer():
            with s.client() as c:
                while not stop.is_set():
                    r = c.post("/v1/purchase", {"sku": "AUD", "qty": 1, "customerId": "c"},
                               key=new_key("buy"))
                    check_status(r, 201, "a purchase during the audits")
                    bought[0] += 1
        threads = [threading.Thread(target=buyer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        with s.client() as c:
            for i in range(6):
                r = c.get("/v1/admin/audit")
                check_status(r, 200, "GET /v1/admin/audit under load")
                check(r.json["ok"] is True and r.json["violationCount"] == 0,
                      "the audit under load reported %s" % r.body[:600])
                status, report = audit_cli_once(s)
                check(status == 0 and '"ok":true' in report,
                      "stockd --audit under load exited %d: %s" % (status, report[:600]))
        stop.set()
        for t in threads:
            t.join(30)
        check(bought[0] > 0, "no purchase committed during the audits")
    finally:
        stop.set()
        s.stop()


if __name__ == "__main__":
    main([test_files_are_owner_only, test_open_files_limit_raised, test_audit_under_load])
