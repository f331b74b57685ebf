/*
 * api_audit.c - GET /v1/admin/audit, off the I/O threads. The audit reads the whole event log
 * (about a second per 400k events), so it runs on a thread of its own with a reader handle of
 * its own, and the I/O thread that took the request goes on serving. The audit thread wakes
 * that I/O thread through its reply queue: with progress (coalesced: one message in flight)
 * and, once, with the end.
 *
 * With `Accept: text/event-stream` the answer is a stream of "progress" events
 * ({"events":N,"total":T}) and one last "report" event (the report) or "error" event (a
 * problem); otherwise it is the report as application/json when the audit is done, as before.
 * One audit runs at a time: another request meanwhile gets 409 audit_running.
 *
 * The job is an http_bgjob (bgjob.h: threads, wake-ups, streaming and ownership); the audit
 * thread writes only the atomics, rc and report.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "http/api.h"
#include "http/bgjob.h"
#include "read/audit.h"
#include "store/store_open.h"

struct audit_job {
    struct http_bgjob base;
    int64_t sent_events; /* owner only: the last progress sent */
    /* Written by the audit thread. */
    _Atomic int64_t events; /* -1 until the snapshot is open */
    _Atomic int64_t total;
    int rc;                     /* read by the owner after the end */
    struct audit_report report; /* likewise; json owned by the job */
};

static _Atomic bool audit_busy; /* an audit thread runs */

/* ---- the audit thread ------------------------------------------------------------------- */

static void api_audit_on_progress(void *context, int64_t events, int64_t total)
{
    struct audit_job *job = context;
    SVC_ASSERT(events >= 0 && total >= 0);
    atomic_store_explicit(&job->total, total, memory_order_relaxed);
    atomic_store_explicit(&job->events, events, memory_order_release); /* after total */
    http_bgjob_progress(&job->base);
}

static void api_audit_run(struct http_bgjob *base)
{
    struct audit_job *job = H2O_STRUCT_FROM_MEMBER(struct audit_job, base, base);
    struct store_reader *reader = NULL;
    int rc = store_reader_open(&reader, base->thread->app->config.db_path);
    if (rc == 0) {
        struct audit_progress progress = {api_audit_on_progress, job};
        rc = audit_run(reader, &progress, &job->report);
        store_reader_close(reader);
    }
    job->rc = rc;
    atomic_store(&audit_busy, false);
}

/* ---- the owner I/O thread --------------------------------------------------------------- */

static size_t api_audit_progress(struct http_bgjob *base, char *out, size_t size)
{
    struct audit_job *job = H2O_STRUCT_FROM_MEMBER(struct audit_job, base, base);
    int64_t events = atomic_load_explicit(&job->events, memory_order_acquire);
    if (events < 0 || events == job->sent_events) {
        return 0; /* not started, or nothing new */
    }
    int n = snprintf(out, size, "event: progress\ndata: {\"events\":%lld,\"total\":%lld}\n\n",
                     (long long)events,
                     (long long)atomic_load_explicit(&job->total, memory_order_relaxed));
    SVC_ASSERT(n > 0 && (size_t)n < size);
    job->sent_events = events;
    return (size_t)n;
}

static void api_audit_result(struct http_bgjob *base, struct http_bgjob_result *out)
{
    struct audit_job *job = H2O_STRUCT_FROM_MEMBER(struct audit_job, base, base);
    if (job->rc != 0) {
        *out = (struct http_bgjob_result){.code = SVC_ESTORAGE_UNAVAILABLE,
                                          .why = "the audit could not read the log"};
        return;
    }
    SVC_ASSERT(job->report.json != NULL);
    *out = (struct http_bgjob_result){
        .event = "report", .json = job->report.json, .length = job->report.json_length};
}

static void api_audit_free(struct http_bgjob *base)
{
    struct audit_job *job = H2O_STRUCT_FROM_MEMBER(struct audit_job, base, base);
    audit_report_free(&job->report);
    free(job);
}

static const struct http_bgjob_ops api_audit_ops = {.name = "audit",
                                                    .run = api_audit_run,
                                                    .progress = api_audit_progress,
                                                    .result = api_audit_result,
                                                    .free = api_audit_free};

void api_audit(struct http_request *r)
{
    if (atomic_exchange(&audit_busy, true)) {
        http_send_problem(r, SVC_EAUDIT_RUNNING, "one audit runs at a time; retry when it ends",
                          NULL, 0);
        return;
    }
    struct audit_job *job = calloc(1, sizeof *job);
    if (job == NULL) {
        atomic_store(&audit_busy, false);
        http_send_problem(r, SVC_EOUT_OF_MEMORY, NULL, NULL, 0);
        return;
    }
    job->sent_events = -1;
    atomic_init(&job->events, -1); /* the audit thread has not reported yet */
    int rc = http_bgjob_start(&job->base, &api_audit_ops, r);
    if (rc != 0) {
        log_error("audit: cannot start its thread: %s", strerror(rc));
        atomic_store(&audit_busy, false);
        http_send_problem(r, SVC_EOUT_OF_MEMORY, "no thread for the audit", NULL, 0);
    }
}
