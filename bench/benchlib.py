"""bench/benchlib.py: what the benchmark scripts share (bench/hot-sku, bench/seed000): the
release build, a stockd process on a fresh data directory, the PostgreSQL server of
scripts/pg-start.sh, and stockbench runs read back as JSON."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build-bench")
HOT_STOCK = 1000000000  # QTY_MAX: enough for every run of a benchmark
# Warnings and errors stockd wrote to its stderr, kept for the JSON.
STOCKD_LOG_ISSUES = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    """A loopback TCP port nothing uses now, not even a connection in TIME-WAIT: the PostgreSQL
    server and nginx listen on one. (A fixed port in the ephemeral range, 32768-60999 here, can
    be held by a TIME-WAIT connection left by the thousands of the runs before; nginx then
    fails to bind.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, log_path, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            text = open(log_path).read()[-2000:] if os.path.exists(log_path) else ""
            raise RuntimeError("%s exited with status %d: %s" % (what, proc.returncode, text))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s is not listening on port %d after %d s" % (what, port, seconds))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def build(*targets):
    """Builds targets (default stockd and stockbench) in the release build BUILD."""
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        run(["meson", "setup", BUILD, "--buildtype=release", "-Db_ndebug=false"],
            stdout=subprocess.DEVNULL)
    run(["ninja", "-C", BUILD, *(targets or ("stockd", "stockbench"))], stdout=subprocess.DEVNULL)


class Stockd:
    """A stockd process on a fresh data directory: SQLite in it, or the database of `store`
    (a postgres:// URI; the data directory then holds only the tokens). With `product`, it
    creates the HOT product through this instance."""

    def __init__(self, extra=(), store=None, product=True, name="stockd"):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="bench-stockd-")
        self.err = open(os.path.join(self.dir, "stderr.log"), "w")
        store_args = ["--store", store] if store else []
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "stockd"), "--listen", "127.0.0.1:0", "--data-dir",
             os.path.join(self.dir, "data"), *store_args, *extra],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        try:
            line = self.proc.stdout.readline()
            if "listening on" not in line:
                raise RuntimeError("stockd did not start: " + line + self.log_text())
            self.url = line.split()[3]
            # A first start generates an admin token (and prints where on the next line).
            self.token = self.read_token(os.path.join(self.dir, "data", "admin.token"))
            if product:
                body = json.dumps({"sku": "HOT", "name": "Hot SKU", "initialOnHand": HOT_STOCK})
                run(["curl", "-sf", "-X", "POST", self.url + "/v1/products", "-H",
                     "Content-Type: application/json", "-H", "Idempotency-Key: bench-product",
                     "-H", "Authorization: Bearer " + self.token, "-d", body],
                    stdout=subprocess.DEVNULL)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def read_token(path):
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    token = f.read().strip()
                if token:
                    return token
            time.sleep(0.05)
        raise RuntimeError("stockd wrote no admin token to " + path)

    def log_text(self):
        self.err.flush()
        with open(os.path.join(self.dir, "stderr.log")) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("  %s did not stop in 30 s after SIGTERM: killed" % self.name)
                self.proc.kill()
                self.proc.wait()
        # stockd logs "<time> <level> <file:line> ..."; keep what is not info or debug.
        issues = [l.rstrip("\n") for l in self.log_text().splitlines(True)
                  if len(l.split()) > 1 and l.split()[1] in ("warn", "error")]
        if issues:
            log("  %s logged %d warning/error line(s), e.g.:" % (self.name, len(issues)))
            for l in issues[:5]:
                log("    " + l)
            STOCKD_LOG_ISSUES.append({"instance": self.name, "count": len(issues),
                                      "first": issues[:20]})
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def stockbench_start(url, label, args, token=None):
    """Starts one stockbench; stockbench_finish waits for it and returns its JSON result."""
    out = os.path.join(tempfile.gettempdir(), "bench-%d-%s.json" % (os.getpid(), label))
    cmd = [os.path.join(BUILD, "stockbench"), "--url", url, "--label", label, "--json", out,
           "--quiet", *args]
    if token is not None:
        cmd += ["--token", token]
    log("  " + label + ": " + " ".join(args))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return label, proc, out


def stockbench_finish(started, shared_stock=False):
    """With shared_stock (several stockbench on one database at once), exit status 1 with a
    result is expected: each one's own "sold == its 2xx" check sees the others' sales too;
    the caller checks the sum (verify_shared)."""
    label, proc, out = started
    stdout, stderr = proc.communicate()
    accepted = (0, 1) if shared_stock else (0,)
    if proc.returncode not in accepted or not os.path.exists(out):
        log(stdout + stderr)
        raise RuntimeError("stockbench failed: " + label)
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    if shared_stock and proc.returncode != 0 and result.get("verify") is None:
        log(stdout + stderr)
        raise RuntimeError("stockbench failed: " + label)
    lat = result["latency_ms"]
    other = {c: n for c, n in result["status"].items() if not c.startswith("2")}
    problems = ["%s %d" % (k, result[k]) for k in ("timeouts", "errors", "retries")
                if result.get(k)]
    log("    %.0f/s  p50 %.2f ms  p99 %.2f ms%s%s" % (
        result["throughput_rps"], lat["p50"], lat["p99"],
        "  non-2xx %s" % json.dumps(other) if other else "",
        "  " + ", ".join(problems) if problems else ""))
    return result


def stockbench(url, label, *args, token=None):
    return stockbench_finish(stockbench_start(url, label, args, token=token))


def ok_count(result):
    return sum(n for code, n in result["status"].items() if code.startswith("2"))


def stat_cpu_ticks(path):
    """User + system CPU time, in clock ticks, of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat
    file (fields 14 and 15; the command name before them may hold spaces and parentheses)."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def thread_cpu_ticks(pid):
    """CPU time (user + system, in clock ticks) of each thread of pid, summed by thread name
    (stockd names its threads: writer, http-0, checkpointer, ...; see src/base/svc_thread.h)."""
    out = {}
    task = "/proc/%d/task" % pid
    for tid in os.listdir(task):
        try:
            ticks = stat_cpu_ticks(os.path.join(task, tid, "stat"))
            with open(os.path.join(task, tid, "comm")) as f:
                name = f.read().strip()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0) + ticks
    return out


def cpu_us_per_request(before, after, requests):
    """Microseconds of CPU per request of each thread name between two thread_cpu_ticks, the
    biggest first; "total" is their sum."""
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    split = {name: (after[name] - before.get(name, 0)) * tick_us / max(requests, 1)
             for name in after}
    out = dict(sorted(split.items(), key=lambda kv: -kv[1]))
    out["total"] = sum(split.values())
    return out


class PgServer:
    """The PostgreSQL server of scripts/pg-start.sh on a free port: pgbench's baseline and
    stockd's PostgreSQL rows both run on it (one server, one configuration)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-pg-")
        self.conn = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        run([os.path.join(ROOT, "scripts", "pg-start.sh"), self.dir, str(self.port)],
            stdout=subprocess.DEVNULL)

    def uri(self, db):
        return "postgres://postgres@127.0.0.1:%d/%s" % (self.port, db)

    def sql(self, statement, db="postgres"):
        env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")  # no NOTICEs
        proc = run(["psql", *self.conn, "-Atq", "-v", "ON_ERROR_STOP=1", "-c", statement, db],
                   stdout=subprocess.PIPE, text=True, env=env)
        return proc.stdout.strip()

    def fresh_db(self, db):
        self.sql("DROP DATABASE IF EXISTS %s" % db)
        self.sql("CREATE DATABASE %s" % db)
        return db

    def stop(self):
        subprocess.run([os.path.join(ROOT, "scripts", "pg-stop.sh"), self.dir])
        shutil.rmtree(self.dir, ignore_errors=True)


def pgbench_percentiles(log_prefix):
    """Latency percentiles (ms) from pgbench's per-transaction logs (--log --log-prefix),
    which it deletes."""
    latencies = []
    for path in glob.glob(log_prefix + "*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]) / 1000.0)
        os.unlink(path)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100.0 * len(latencies)))]
    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
            "max": latencies[-1], "mean": sum(latencies) / len(latencies)}
