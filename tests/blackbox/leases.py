"""What the lease tests share (test_pg_relay_lease.py, test_pg_intake_lease.py,
test_pg_worker_leases.py): several stockd instances on one PostgreSQL database, told apart by
--instance-id, with a short lease; a stage's lease as the instances show it (a member of
/health and /ready with instanceId and lease {held, holder}, and a metric); and the moves the
tests make on a lease row of worker_leases behind the instances' backs."""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import check, check_eq, check_status, psql, start_stockd  # noqa: E402
from test_relay import metric  # noqa: E402

LEASE_MS = 1000
# An instance that acted without the lease would have acted within this time (never a timing
# assertion: only the absence of an action is checked after it).
WATCH_S = 3 * LEASE_MS / 1000.0
WAIT_S = 90.0  # a bound for takeovers and catching up, never a timing assertion

eventually = functools.partial(harness.eventually, timeout=WAIT_S)


def start_instance(name, db, extra=()):
    """stockd on the PostgreSQL database db as instance `name` (server.name), lease LEASE_MS."""
    server = start_stockd([*extra, "--lease-ms", str(LEASE_MS), "--instance-id", name],
                          pg_db=db)
    server.name = name
    return server


def metric_value(server, name):
    """The value of the unlabelled metric `name` in server's /metrics."""
    with server.client() as c:
        return metric(c, name)


class StageLease:
    """The lease of one stage as /health and /ready show it in their member `member`, and
    as the metric `metric` (1 held, 0 not); `also(server, member_json, held)` checks more of
    the member (e.g. a consumer's "standby")."""

    def __init__(self, member, metric, what, also=None):
        self.member, self.metric, self.what, self.also = member, metric, what, also

    def of(self, server, path="/health"):
        with server.client() as c:
            r = c.get(path)
        check_status(r, 200, "%s on %s" % (path, server.name))
        check(self.member in r.json, "%s without %s: %s" % (path, self.member, r.json))
        return r.json[self.member]

    def check(self, server, held, holder):
        """server says it holds the lease (held) and that holder holds it."""
        for path in ("/health", "/ready"):
            shown = self.of(server, path)
            check_eq(shown["instanceId"], server.name, "instanceId on " + server.name)
            check_eq(shown["lease"], {"held": held, "holder": holder},
                     "%s's lease of %s (%s)" % (server.name, self.what, path))
            if self.also is not None:
                self.also(server, shown, held)
        check_eq(metric_value(server, self.metric), 1 if held else 0,
                 "%s's %s" % (server.name, self.metric))

    def holder(self, *servers):
        """The one server of servers that holds the lease."""
        holders = [s for s in servers if self.of(s)["lease"]["held"]]
        check_eq(len(holders), 1, "instances holding the lease of " + self.what)
        self.check(holders[0], True, holders[0].name)
        return holders[0]


def steal(db, stage):
    """The lease of stage taken by 'intruder' for an hour, as an instance that found it
    expired would take it."""
    psql("UPDATE worker_leases SET holder = 'intruder', token = token + 1, expires_at_ms ="
         " expires_at_ms + 3600000 WHERE stage = '%s'" % stage, db=db)


def expire(db, stage):
    """The lease of stage expired: any instance may take it."""
    psql("UPDATE worker_leases SET expires_at_ms = 0 WHERE stage = '%s'" % stage, db=db)


def check_given_up(db, stage, taker, stopped):
    """After stopped's clean stop, the row of stage is expired or taker holds it already."""
    rows = psql("SELECT holder, expires_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)"
                "::bigint FROM worker_leases WHERE stage = '%s'" % stage, db=db)
    check_eq(len(rows), 1, "the lease row of " + stage)
    check(rows[0][0] == taker or rows[0][1] == "t",
          "the lease of %s after %s's clean stop: %s" % (stage, stopped, rows))
