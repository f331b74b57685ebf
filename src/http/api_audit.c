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
 * Ownership: the owner I/O thread allocates the job and frees it; the audit thread writes only
 * the atomics, rc and report, and sends the two messages. The owner frees the job once it has
 * taken the end message (the audit thread's last touch) and h2o has disposed the request.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/problem.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "http/api.h"
#include "http/request.h"
#include "http/http_metrics.h"
#include "http/thread.h"
#include "read/audit.h"
#include "store/store_open.h"

/* One progress event: "event: progress\ndata: {...}\n\n" with two int64 values. */
#define AUDIT_CHUNK_BYTES 128

/* A wake-up of the owner: the message and what it says. */
struct audit_message {
    h2o_multithread_message_t message; /* first member */
    struct audit_job *job;
    bool end; /* the audit ended (else: progress) */
};

struct audit_job {
    struct audit_message progress_message; /* sent while progress_queued was false */
    struct audit_message end_message;      /* sent once, last */
    h2o_generator_t generator;             /* streaming answers */
    struct io_thread *thread;              /* the owner */
    h2o_req_t *req;                        /* owner only: NULL once h2o disposed it */
    const struct route *route;             /* the request's, for its metrics (http_metrics.h) */
    int64_t started_us;
    bool streaming;                /* owner only */
    bool sending;                  /* owner only: a chunk is with h2o */
    bool ended;                    /* owner only: took the end message */
    bool final_sent;               /* owner only */
    int64_t sent_events;           /* owner only: the last progress sent */
    char chunk[AUDIT_CHUNK_BYTES]; /* owner only: the chunk with h2o */
    /* Written by the audit thread. */
    _Atomic int64_t events; /* -1 until the snapshot is open */
    _Atomic int64_t total;
    _Atomic bool progress_queued;
    int rc;                     /* read by the owner after the end message */
    struct audit_report report; /* likewise; json owned by the job until sent */
};

/* Per I/O thread: its receiver on the reply queue, registered at its first audit. */
static struct {
    h2o_multithread_receiver_t receiver;
    bool registered; /* owner only */
} audit_receivers[IO_THREADS_MAX];

static _Atomic bool audit_busy; /* an audit thread runs */

/* ---- the audit thread ------------------------------------------------------------------- */

static void api_audit_on_progress(void *context, int64_t events, int64_t total)
{
    struct audit_job *job = context;
    SVC_ASSERT(events >= 0 && total >= 0);
    atomic_store_explicit(&job->total, total, memory_order_relaxed);
    atomic_store_explicit(&job->events, events, memory_order_release); /* after total */
    if (!atomic_exchange(&job->progress_queued, true)) {
        h2o_multithread_send_message(&audit_receivers[job->thread->index].receiver,
                                     &job->progress_message.message);
    }
}

static void *api_audit_thread_main(void *arg)
{
    struct audit_job *job = arg;
    struct store_reader *reader = NULL;
    int rc = store_reader_open(&reader, job->thread->app->config.db_path);
    if (rc == 0) {
        struct audit_progress progress = {api_audit_on_progress, job};
        rc = audit_run(reader, &progress, &job->report);
        store_reader_close(reader);
    }
    job->rc = rc;
    atomic_store(&audit_busy, false);
    /* The last touch: after this message the owner may free the job. */
    h2o_multithread_send_message(&audit_receivers[job->thread->index].receiver,
                                 &job->end_message.message);
    return NULL;
}

/* ---- the owner I/O thread --------------------------------------------------------------- */

static void api_audit_job_free(struct audit_job *job)
{
    SVC_ASSERT(job->ended && job->req == NULL);
    audit_report_free(&job->report);
    free(job);
}

/* h2o disposes the request (answered, or the client left): the job loses its request. */
static void api_audit_on_dispose(void *guard)
{
    struct audit_job *job = *(struct audit_job **)guard;
    SVC_ASSERT(job->req != NULL);
    job->req = NULL;
    if (job->ended) {
        api_audit_job_free(job);
    }
}

/* Hands h2o the next chunk of a streaming answer, if there is one and none is in flight. */
static void api_audit_stream_next(struct audit_job *job)
{
    SVC_ASSERT(job->streaming && job->req != NULL);
    if (job->sending || job->final_sent) {
        return;
    }
    if (job->ended) {
        char problem[REPLY_BODY_BYTES_MAX];
        const char *kind = "report";
        const char *data = job->report.json;
        size_t length = job->report.json_length;
        if (job->rc != 0) {
            kind = "error";
            length = problem_format(problem, sizeof problem, job->rc,
                                    "the audit could not read the log", NULL, 0);
            data = problem;
        }
        size_t size = length + 32;
        char *text = h2o_mem_alloc_pool(&job->req->pool, size);
        int n = snprintf(text, size, "event: %s\ndata: %.*s\n\n", kind, (int)length, data);
        SVC_ASSERT(n > 0 && (size_t)n < size);
        job->final_sent = true;
        job->sending = true;
        h2o_iovec_t buf = h2o_iovec_init(text, (size_t)n);
        h2o_send(job->req, &buf, 1, H2O_SEND_STATE_FINAL);
        return;
    }
    int64_t events = atomic_load_explicit(&job->events, memory_order_acquire);
    if (events < 0 || events == job->sent_events) {
        return; /* not started, or nothing new */
    }
    int n =
        snprintf(job->chunk, sizeof job->chunk,
                 "event: progress\ndata: {\"events\":%lld,\"total\":%lld}\n\n", (long long)events,
                 (long long)atomic_load_explicit(&job->total, memory_order_relaxed));
    SVC_ASSERT(n > 0 && (size_t)n < sizeof job->chunk);
    job->sent_events = events;
    job->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(job->chunk, (size_t)n);
    h2o_send(job->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void api_audit_on_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    struct audit_job *job = H2O_STRUCT_FROM_MEMBER(struct audit_job, generator, generator);
    SVC_ASSERT(job->req == req);
    job->sending = false;
    api_audit_stream_next(job);
}

static void api_audit_on_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)generator;
    (void)req; /* the client left: the dispose of the request's pool follows */
}

/* The audit ended: answer with its report, or free the job if nobody waits for it any more. */
static void api_audit_on_end(struct audit_job *job)
{
    job->ended = true;
    if (job->req == NULL) {
        api_audit_job_free(job);
        return;
    }
    if (job->streaming) {
        api_audit_stream_next(job);
        return;
    }
    struct http_request r = {
        .thread = job->thread, .req = job->req, .route = job->route, .started_us = job->started_us};
    if (job->rc != 0) {
        http_send_problem(&r, SVC_ESTORAGE_UNAVAILABLE, "the audit could not read the log", NULL,
                          0);
        return;
    }
    SVC_ASSERT(job->report.json != NULL);
    http_send_json(&r, 200, job->report.json, job->report.json_length); /* copies */
}

static void api_audit_on_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct audit_message *m =
            H2O_STRUCT_FROM_MEMBER(struct audit_message, message.link, messages->next);
        h2o_linklist_unlink(&m->message.link);
        struct audit_job *job = m->job;
        SVC_ASSERT(m == (m->end ? &job->end_message : &job->progress_message));
        if (m->end) {
            api_audit_on_end(job); /* may free the job */
            continue;
        }
        atomic_store(&job->progress_queued, false);
        if (job->req != NULL && job->streaming) {
            api_audit_stream_next(job);
        }
    }
}

/* True when the client asked for text/event-stream. */
static bool api_audit_wants_stream(struct http_request *r)
{
    h2o_iovec_t accept = http_header(r, "accept");
    return accept.base != NULL &&
           h2o_strstr(accept.base, accept.len, H2O_STRLIT("text/event-stream")) != SIZE_MAX;
}

void api_audit(struct http_request *r)
{
    struct io_thread *t = r->thread;
    SVC_ASSERT(t->index < IO_THREADS_MAX);
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
    if (!audit_receivers[t->index].registered) {
        h2o_multithread_register_receiver(t->reply_queue, &audit_receivers[t->index].receiver,
                                          api_audit_on_message);
        audit_receivers[t->index].registered = true;
    }
    job->progress_message = (struct audit_message){.job = job, .end = false};
    job->end_message = (struct audit_message){.job = job, .end = true};
    job->thread = t;
    job->req = r->req;
    job->route = r->route;
    job->started_us = r->started_us;
    job->streaming = api_audit_wants_stream(r);
    job->sent_events = -1;
    atomic_init(&job->events, -1); /* the audit thread has not reported yet */
    job->generator = (h2o_generator_t){api_audit_on_proceed, api_audit_on_stop};
    struct audit_job **guard =
        h2o_mem_alloc_shared(&r->req->pool, sizeof *guard, api_audit_on_dispose);
    *guard = job;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, api_audit_thread_main, job);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        log_error("audit: cannot start its thread: %s", strerror(rc));
        atomic_store(&audit_busy, false);
        job->ended = true; /* no audit thread: the dispose frees the job */
        http_send_problem(r, SVC_EOUT_OF_MEMORY, "no thread for the audit", NULL, 0);
        return;
    }
    if (job->streaming) {
        h2o_req_t *req = r->req;
        http_metrics_count(r->thread, r->route, req->method, 200, r->started_us);
        req->res.status = 200;
        req->res.reason = "OK";
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       H2O_STRLIT("text/event-stream"));
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                       H2O_STRLIT("no-cache"));
        h2o_start_response(req, &job->generator);
        int n = snprintf(job->chunk, sizeof job->chunk, ": audit started\n\n");
        job->sending = true;
        h2o_iovec_t buf = h2o_iovec_init(job->chunk, (size_t)n);
        h2o_send(req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
    }
}
