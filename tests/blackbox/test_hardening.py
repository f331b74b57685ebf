#!/usr/bin/env python3
"""Hardening (issue 10), as an attacker or bad luck would meet stockd: files only its owner can
read, descriptors raised to the hard limit, log lines that stay one line a second per place.
The fault suite grows here as the issue lands in steps."""
import http.client
import json
import os
import re
import resource
import socket
import stat
import subprocess
import tempfile
import threading
import time

from harness import (check, check_eq, check_problem, check_status, main, new_key, pg_mode, pg_uri,
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


def stream_socket(server, rcvbuf=None):
    """A raw GET /v1/stream connection (with rcvbuf: a small receive buffer, so that a reader
    that stops reading backs up into stockd soon). Returns (socket, the bytes read so far)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n" + server.auth_header() + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        check(chunk, "the stream closed before its headers: %r" % head)
        head += chunk
    return sock, head


def metric(server, name):
    """The value of one sample line of GET /metrics (0 when absent)."""
    with server.client() as c:
        r = c.get("/metrics")
        check_status(r, 200, "GET /metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_stuck_stream_readers():
    """Subscribers that stop reading are reset after the write timeout (10 s) while a reader
    that reads keeps every event; an idle stream gets keep-alive comments."""
    s = start_stockd()
    stuck = []
    try:
        with s.client() as c:
            check_status(c.post("/v1/products", {"sku": "SSE", "name": "s" * 150,
                                                 "initialOnHand": 1000000}, key=new_key("p")),
                         201, "the product")
        for _ in range(3):
            stuck.append(stream_socket(s, rcvbuf=4096)[0])
        live, head = stream_socket(s)
        check(b" 200 " in head.split(b"\r\n")[0], "stream status: %r" % head[:200])
        received = [head]
        live_done = threading.Event()

        def read_live():
            live.settimeout(1)
            while not live_done.is_set():
                try:
                    chunk = live.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                received.append(chunk)
        reader = threading.Thread(target=read_live)
        reader.start()
        stop = threading.Event()

        def buyer():
            with s.client() as c:
                while not stop.is_set():
                    r = c.post("/v1/purchase", {"sku": "SSE", "qty": 1, "customerId": "x" * 60},
                               key=new_key("sse"))
                    check_status(r, 201, "a purchase while readers are stuck")
        buyers = [threading.Thread(target=buyer) for _ in range(4)]
        for t in buyers:
            t.start()
        name = 'stockd_stream_dropped_total{reason="write_timeout"}'
        deadline = time.monotonic() + 45
        while metric(s, name) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            # Past what a stuck reader can hold (its buffers and the socket's), stop buying.
            if sum(len(b) for b in received) > 4 * 1024 * 1024:
                stop.set()
        stop.set()
        for t in buyers:
            t.join(30)
        check_eq(metric(s, name), 3.0, "stuck readers reset for the write timeout")
        for sock in stuck:
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass  # what the kernel still held, then the end
                ended = True
            except (ConnectionResetError, socket.timeout):
                ended = True
            check(ended, "a stuck reader's connection is gone")
        check_eq(metric(s, "stockd_stream_subscribers"), 1.0, "the live subscriber remains")
        with s.client() as c:
            last = c.get("/v1/events?since=0&limit=1").json
        seq_max = metric(s, "stockd_writer_commands_total")
        check(seq_max > 0 and last is not None, "events were committed")
        deadline = time.monotonic() + 25
        while b": keep-alive" not in b"".join(received[-3:]) and time.monotonic() < deadline:
            time.sleep(0.5)
        live_done.set()
        reader.join(10)
        data = b"".join(received)
        check(b": keep-alive" in data, "no keep-alive comment on the idle stream")
        ids = [int(x) for x in re.findall(rb"\nid: (\d+)\n", b"\n" + data)]
        check(ids and ids == list(range(ids[0], ids[0] + len(ids))),
              "the live reader missed events: %d ids from %s" % (len(ids), ids[:3]))
        live.close()
    finally:
        for sock in stuck:
            sock.close()
        s.stop()


def test_too_many_subscribers():
    """Past SSE_SUBSCRIBERS_MAX (256) per I/O thread the next subscriber gets 503
    too_many_subscribers with Retry-After, not a 429; a freed slot is taken again."""
    s = start_stockd(threads=1)
    held = []
    try:
        for _ in range(256):
            held.append(stream_socket(s)[0])
        with s.client() as c:
            r = c.get("/v1/stream")
            check_problem(r, 503, "too_many_subscribers", "the 257th subscriber")
            check_eq(r.headers.get("retry-after"), "1", "Retry-After")
        held.pop().close()
        deadline = time.monotonic() + 10
        while metric(s, "stockd_stream_subscribers") > 255 and time.monotonic() < deadline:
            time.sleep(0.1)
        sock, head = stream_socket(s)
        held.append(sock)
        check(b" 200 " in head.split(b"\r\n")[0], "a freed slot: %r" % head[:200])
        check_eq(metric(s, "stockd_stream_refused_total"), 1.0, "refusals counted")
    finally:
        for sock in held:
            sock.close()
        s.stop()


def cpu_seconds(pid):
    """User plus system CPU time of a process so far, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_exhaustion():
    """Out of descriptors (more idle clients than `ulimit -n` allows): stockd does not spin on a
    listener it cannot accept from. It pauses accepting, logs a rate-limited warning, keeps
    serving the connections it has, and accepts again once descriptors are freed."""
    s = start_stockd()
    idle = []
    try:
        kept = s.client()
        check_status(kept.get("/health"), 200, "a connection opened before the flood")
        open_fds = len(os.listdir("/proc/%d/fd" % s.proc.pid))
        limit = open_fds + 40
        resource.prlimit(s.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
        for _ in range(150):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", s.port))
            idle.append(sock)
        deadline = time.monotonic() + 10
        while metric_via(kept, "stockd_http_accept_pauses_total") < 1:
            check(time.monotonic() < deadline, "no accept pause was counted")
            time.sleep(0.1)
        before = cpu_seconds(s.proc.pid)
        time.sleep(3)
        spent = cpu_seconds(s.proc.pid) - before
        # A loop spinning on the listener burns both cores (6 s in 3 s); a paused one next to
        # nothing. The bound is generous: it only tells a spin from a pause.
        check(spent < 1.5, "stockd used %.2f s of CPU in 3 s while out of descriptors" % spent)
        check_status(kept.get("/health"), 200, "the open connection is still served")
        for sock in idle:
            sock.close()
        idle = []
        with s.client() as c:
            check_status(c.get("/health"), 200, "a new client once descriptors are free")
        kept.close()
        with open(s.log_path) as f:
            warnings = [l for l in f if "out of file descriptors or memory" in l]
        check(warnings, "no warning about the descriptors in the log")
        check(len(warnings) <= 10, "the warning is rate limited: %d lines" % len(warnings))
    finally:
        for sock in idle:
            sock.close()
        s.stop()


def metric_via(client, name):
    """metric() on a connection the caller already holds."""
    r = client.get("/metrics")
    check_status(r, 200, "GET /metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_audit_off_the_io_thread():
    """The audit runs on a thread of its own: while it reads a long log, the only I/O thread
    still answers; with Accept: text/event-stream it streams its progress, then the report; a
    second audit meanwhile gets 409 audit_running."""
    s = start_stockd(threads=1)
    try:
        skus = ["R%d" % i for i in range(100)]
        with s.client() as c:
            for sku in skus:
                check_status(c.post("/v1/products", {"sku": sku, "name": sku, "initialOnHand": 0},
                                    key=new_key("p")), 201, "product %s" % sku)

        def reconcile(i):  # 25 stock events per request: each thread owns 25 skus, all change
            own = skus[i * 25:(i + 1) * 25]
            with s.client() as c:
                for j in range(1000):
                    r = c.post("/v1/reconciliations", {
                        "storeId": "S1", "source": "t%d" % i,
                        "snapshotOnHand": {sku: 1 + (j % 2) for sku in own}}, key=new_key("rec"))
                    check_status(r, 200, "a reconciliation")
        threads = [threading.Thread(target=reconcile, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
        headers = {"Accept": "text/event-stream"}
        headers.update({"Authorization": s.auth_header().decode().split(":", 1)[1].strip()})
        conn.request("GET", "/v1/admin/audit", headers=headers)
        resp = conn.getresponse()
        check_status_code(resp.status, 200, "the streaming audit")
        check_eq(resp.getheader("content-type"), "text/event-stream", "Content-Type")
        events = []  # (kind, data)
        kind = None
        while True:
            line = resp.readline()
            check(line, "the stream ended before its report: %r" % events[-3:])
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind != "progress":
                    break
                if len(events) == 1:  # the audit is reading: the I/O thread is free
                    with s.client() as c:
                        check_status(c.get("/health"), 200, "/health during the audit")
                        r = c.get("/v1/admin/audit")
                        check_problem(r, 409, "audit_running", "a second audit meanwhile")
        conn.close()
        kinds = [k for k, _ in events]
        check_eq(kinds[-1], "report", "the last event")
        report = events[-1][1]
        check(report["ok"] is True, "the audit: %s" % report)
        check(report["events"] > 4 * 1000 * 25, "events read: %d" % report["events"])
        progress = [d for k, d in events if k == "progress"]
        check_eq(progress[0]["events"], 0, "the first progress")
        check(all(p["total"] == report["events"] for p in progress), "totals: %s" % progress)
        counts = [p["events"] for p in progress]
        check(counts == sorted(counts) and len(set(counts)) == len(counts),
              "progress only grows: %s" % counts)
        with s.client() as c:
            r = c.get("/v1/admin/audit")
            check_status(r, 200, "a plain audit afterwards")
            check(r.json["ok"] is True and r.json["events"] == report["events"],
                  "the plain audit: %s" % r.body[:300])
    finally:
        s.stop()


def check_status_code(got, want, what):
    check(got == want, "%s: status %d, want %d" % (what, got, want))


if __name__ == "__main__":
    main([test_files_are_owner_only, test_open_files_limit_raised, test_audit_under_load,
          test_stuck_stream_readers, test_too_many_subscribers, test_fd_exhaustion,
          test_audit_off_the_io_thread])
