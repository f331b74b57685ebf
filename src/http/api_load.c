/*
 * api_load.c - POST /v1/admin/load-test {vus, iterations, sku, qty?, kind?} and seed 001's
 * POST /admin/load-test {vus, iterations, productId, quantity?}: the in-tree load generator
 * (load/loadgen.h, the engine of bench/stockbench) against this server's own listening
 * address, then the invariant audit (read/audit.h), on a thread of its own.
 *
 * The generator connects to the local address of the connection the request came in on (so
 * it reaches this server whatever --listen says) and sends the caller's own bearer token, the
 * only one the server can present: it keeps hashes of the others. Each virtual user is one
 * keep-alive connection with one request in flight (closed loop), spread over at most
 * LOAD_TEST_THREADS_MAX generator threads; every request carries its own Idempotency-Key and
 * customer. kind "purchase" posts /v1/purchase {sku, qty}; kind "order" posts /v1/orders with
 * one line {sku, qty}. v1's iterations are the requests in all; the alias follows seed 001's
 * k6 run, where iterations are per virtual user (20 VUs x 50 iterations = 1000 orders), and
 * always posts orders. The answer: kind, vus, iterations (as sent), totalRequests, durationMs,
 * throughput (answered requests per second), latencyMs {p50, p90, p99, max}, statusCounts,
 * errors and timeouts (requests without an HTTP answer), and audit (the report of
 * GET /v1/admin/audit, run after the load). The alias adds productId and quantity.
 *
 * With `Accept: text/event-stream` the answer is a stream of "progress" events (phase "load":
 * completed requests and status classes; phase "audit": events read of total) and one last
 * "result" event (the answer above) or "error" event (a problem); otherwise the answer is
 * sent when both end. One load test runs at a time: another meanwhile is 409
 * load_test_running. The job's ownership is api_audit.c's: the owner I/O thread allocates and
 * frees it; the load thread writes the progress (under its mutex), rc and result, and sends
 * the messages, the end message last. Read api_ops.c next.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/problem.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "http/api.h"
#include "http/app.h"
#include "http/request.h"
#include "http/http_metrics.h"
#include "http/thread.h"
#include "load/loadgen.h"
#include "read/audit.h"
#include "store/store_open.h"

/* One progress event: "event: progress\ndata: {...}\n\n" with at most eight int64 values. */
#define LOAD_CHUNK_BYTES 512

/* The answer without the audit's report: fixed members and up to 500 status codes. */
#define LOAD_RESULT_BYTES_BASE (16 * 1024)

/* "http://[v6 address]:port" */
#define LOAD_URL_BYTES_MAX (NI_MAXHOST + 16)

struct load_params {
    enum lg_target target; /* LG_TARGET_PURCHASE or LG_TARGET_ORDER */
    uint32_t vus;
    int64_t iterations; /* as sent: in all (v1) or per virtual user (seed 001) */
    int64_t requests;   /* in all */
    int64_t qty;
    char sku[SKU_BYTES_MAX + 1];
    bool seed;
    char url[LOAD_URL_BYTES_MAX];
    char token[AUTH_TOKEN_BYTES_MAX + 1]; /* the caller's bearer token, or "" */
};

/* What the progress events show; written by the load thread under the job's mutex. */
struct load_progress {
    bool audit; /* the phase: load, then audit */
    int64_t elapsed_ms;
    uint64_t completed, class_2xx, class_4xx, class_5xx, errors;
    int64_t audit_events, audit_total;
    uint64_t version; /* bumped with every update */
};

struct load_message {
    h2o_multithread_message_t message; /* first member */
    struct load_job *job;
    bool end;
};

struct load_job {
    struct load_message progress_message; /* sent while progress_queued was false */
    struct load_message end_message;      /* sent once, last */
    h2o_generator_t generator;
    struct io_thread *thread;  /* the owner */
    h2o_req_t *req;            /* owner only: NULL once h2o disposed it */
    const struct route *route; /* the request's, for its metrics (http_metrics.h) */
    int64_t started_us;
    bool streaming;        /* owner only */
    bool sending;          /* owner only: a chunk is with h2o */
    bool ended;            /* owner only: took the end message */
    bool final_sent;       /* owner only */
    uint64_t sent_version; /* owner only: the progress last sent */
    char chunk[LOAD_CHUNK_BYTES];
    struct load_params params; /* set before the load thread starts; read-only after */
    pthread_mutex_t progress_lock;
    struct load_progress progress; /* under progress_lock */
    _Atomic bool progress_queued;
    /* Written by the load thread, read by the owner after the end message. */
    int rc;
    const char *why; /* a static text when rc != 0 */
    char *result;    /* the answer's JSON; owned */
    size_t result_length;
    /* The load thread's own. */
    struct lg_run run;
    struct lg_result lg_result;
    struct lg_progress lg_progress;
    struct audit_report report;
};

/* Per I/O thread: its receiver on the reply queue, registered at its first load test. */
static struct {
    h2o_multithread_receiver_t receiver;
    bool registered; /* owner only */
} load_receivers[IO_THREADS_MAX];

static _Atomic bool load_busy;     /* a load thread runs */
static _Atomic uint64_t load_runs; /* numbers the runs' Idempotency-Key prefixes */

/* ---- the load thread ------------------------------------------------------------------- */

/* Publishes the progress and wakes the owner unless a wake-up is already on its way. */
static void api_load_publish(struct load_job *job, const struct load_progress *p)
{
    pthread_mutex_lock(&job->progress_lock);
    uint64_t version = job->progress.version + 1;
    job->progress = *p;
    job->progress.version = version;
    pthread_mutex_unlock(&job->progress_lock);
    if (!atomic_exchange(&job->progress_queued, true)) {
        h2o_multithread_send_message(&load_receivers[job->thread->index].receiver,
                                     &job->progress_message.message);
    }
}

static void api_load_on_audit_progress(void *context, int64_t events, int64_t total)
{
    struct load_job *job = context;
    SVC_ASSERT(events >= 0 && total >= 0);
    struct load_progress p = {.audit = true, .audit_events = events, .audit_total = total};
    api_load_publish(job, &p);
}

/* The generator's configuration for params. 0, or -EINVAL with job->why set. */
static int api_load_config(const struct load_params *params, struct lg_config *c)
{
    memset(c, 0, sizeof *c);
    int rc = lg_endpoint_parse(&c->endpoint, params->url);
    if (rc == 0 && params->token[0] != '\0') {
        rc = lg_endpoint_set_token(&c->endpoint, params->token);
    }
    if (rc != 0) {
        return rc;
    }
    c->mode = LG_MODE_CLOSED;
    c->target = params->target;
    strcpy(c->path, "/");
    SVC_ASSERT(strlen(params->sku) <= LG_SKU_BYTES_MAX);
    strcpy(c->sku, params->sku);
    c->qty = params->qty;
    snprintf(c->key_prefix, sizeof c->key_prefix, "lt%lld-%llu", (long long)clock_wall_ms(),
             (unsigned long long)atomic_fetch_add(&load_runs, 1));
    c->connections = params->vus;
    c->threads = params->vus < LOAD_TEST_THREADS_MAX ? params->vus : LOAD_TEST_THREADS_MAX;
    c->warmup_ns = 0;
    c->duration_ns = LOAD_TEST_DURATION_MS_MAX * 1000000;
    c->requests_max = (uint64_t)params->requests;
    c->timeout_ns = LOAD_TEST_REQUEST_TIMEOUT_MS * 1000000LL;
    c->retry = false; /* a request is counted once: answered, timed out or failed */
    c->record_keys = false;
    SVC_ASSERT(c->threads >= 1 && c->threads <= c->connections);
    return 0;
}

/* Runs the load and waits for it, publishing progress; stops early on shutdown. */
static int api_load_generate(struct load_job *job)
{
    static const struct timespec pause = {.tv_sec = 0, .tv_nsec = LOAD_TEST_PROGRESS_MS * 1000000L};
    struct lg_config config;
    int rc = api_load_config(&job->params, &config);
    if (rc == 0) {
        rc = lg_run_start(&job->run, &config);
    }
    if (rc != 0) {
        job->why = "the load generator could not start (its own address or its threads)";
        return SVC_EOUT_OF_MEMORY;
    }
    struct app *app = job->thread->app;
    bool finished = false;
    while (!finished) { /* the last progress, after the end, has the final counts */
        nanosleep(&pause, NULL);
        finished = lg_run_finished(&job->run);
        if (atomic_load(&app->shutting_down)) {
            lg_run_stop(&job->run);
        }
        lg_run_progress(&job->run, &job->lg_progress);
        struct lg_progress *lp = &job->lg_progress;
        struct load_progress p = {.elapsed_ms = lp->elapsed_ns / 1000000,
                                  .completed = lp->completed,
                                  .class_2xx = lp->class_2xx,
                                  .class_4xx = lp->class_4xx,
                                  .class_5xx = lp->class_5xx,
                                  .errors = lp->errors};
        api_load_publish(job, &p);
    }
    lg_run_wait(&job->run, &job->lg_result);
    lg_run_deinit(&job->run);
    return 0;
}

/* Replays the log with a reader of its own, as GET /v1/admin/audit does. */
static int api_load_audit(struct load_job *job)
{
    struct store_reader *reader = NULL;
    int rc = store_reader_open(&reader, job->thread->app->config.db_path);
    if (rc == 0) {
        struct audit_progress progress = {api_load_on_audit_progress, job};
        rc = audit_run(reader, &progress, &job->report);
        store_reader_close(reader);
    }
    if (rc != 0) {
        job->why = "the audit after the load test could not read the log";
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    SVC_ASSERT(job->report.json != NULL);
    return 0;
}

/* Appends "key":value in milliseconds with three decimals. */
static void api_load_kv_ms(struct jbuf *b, const char *key, int64_t ns)
{
    char text[32];
    int n = snprintf(text, sizeof text, "%.3f", (double)ns / 1e6);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof text);
    jbuf_key(b, key);
    jbuf_raw(b, text, (size_t)n);
}

static void api_load_format_latency(struct jbuf *b, const struct lg_hist *h)
{
    jbuf_key(b, "latencyMs");
    jbuf_lit(b, "{");
    api_load_kv_ms(b, "p50", lg_hist_percentile_ns(h, 50.0));
    api_load_kv_ms(b, "p90", lg_hist_percentile_ns(h, 90.0));
    api_load_kv_ms(b, "p99", lg_hist_percentile_ns(h, 99.0));
    api_load_kv_ms(b, "max", h->max_ns);
    jbuf_lit(b, "}");
}

static void api_load_format_status(struct jbuf *b, const struct lg_counts *counts)
{
    jbuf_key(b, "statusCounts");
    jbuf_lit(b, "{");
    for (int status = 100; status < LG_STATUS_CODES; status++) {
        if (counts->status[status] > 0) {
            char key[8];
            snprintf(key, sizeof key, "%d", status);
            jbuf_kv_int(b, key, (int64_t)counts->status[status]);
        }
    }
    jbuf_lit(b, "}");
}

/* Writes the answer into job->result. 0 or SVC_EOUT_OF_MEMORY. */
static int api_load_format(struct load_job *job)
{
    const struct load_params *p = &job->params;
    const struct lg_result *r = &job->lg_result;
    size_t size = LOAD_RESULT_BYTES_BASE + job->report.json_length;
    job->result = malloc(size);
    if (job->result == NULL) {
        job->why = "no memory for the load test's answer";
        return SVC_EOUT_OF_MEMORY;
    }
    struct jbuf b;
    jbuf_init(&b, job->result, size);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "kind", p->target == LG_TARGET_ORDER ? "order" : "purchase");
    jbuf_kv_int(&b, "vus", p->vus);
    jbuf_kv_int(&b, "iterations", p->iterations);
    jbuf_kv_int(&b, "totalRequests", p->requests);
    jbuf_kv_str(&b, p->seed ? "productId" : "sku", p->sku);
    jbuf_kv_int(&b, p->seed ? "quantity" : "qty", p->qty);
    jbuf_kv_int(&b, "durationMs", r->measured_ns / 1000000);
    char text[32];
    double seconds = (double)r->measured_ns / 1e9;
    int n = snprintf(text, sizeof text, "%.1f",
                     seconds > 0 ? (double)r->counts.completed / seconds : 0.0);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof text);
    jbuf_key(&b, "throughput");
    jbuf_raw(&b, text, (size_t)n);
    jbuf_kv_int(&b, "completed", (int64_t)r->counts.completed);
    api_load_format_latency(&b, &r->latency);
    api_load_format_status(&b, &r->counts);
    jbuf_kv_int(&b, "errors", (int64_t)r->counts.errors);
    jbuf_kv_int(&b, "timeouts", (int64_t)r->counts.timeouts);
    jbuf_key(&b, "audit");
    jbuf_raw(&b, job->report.json, job->report.json_length);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b)); /* sized for the largest: every status code and the report */
    job->result_length = b.length;
    return 0;
}

static void *api_load_thread_main(void *arg)
{
    struct load_job *job = arg;
    int rc = api_load_generate(job);
    if (rc == 0) {
        rc = api_load_audit(job);
    }
    if (rc == 0) {
        rc = api_load_format(job);
    }
    audit_report_free(&job->report);
    job->rc = rc;
    log_info("load test: %s, %lld requests from %u connections: %s",
             job->params.target == LG_TARGET_ORDER ? "order" : "purchase",
             (long long)job->params.requests, job->params.vus, rc == 0 ? "done" : job->why);
    atomic_store(&load_busy, false);
    /* The last touch: after this message the owner may free the job. */
    h2o_multithread_send_message(&load_receivers[job->thread->index].receiver,
                                 &job->end_message.message);
    return NULL;
}

/* ---- the owner I/O thread --------------------------------------------------------------- */

static void api_load_job_free(struct load_job *job)
{
    SVC_ASSERT(job->ended && job->req == NULL);
    pthread_mutex_destroy(&job->progress_lock);
    free(job->result);
    free(job);
}

static void api_load_on_dispose(void *guard)
{
    struct load_job *job = *(struct load_job **)guard;
    SVC_ASSERT(job->req != NULL);
    job->req = NULL;
    if (job->ended) {
        api_load_job_free(job);
    }
}

/* Formats the progress event into job->chunk; 0 when there is nothing new. */
static int api_load_progress_chunk(struct load_job *job)
{
    pthread_mutex_lock(&job->progress_lock);
    struct load_progress p = job->progress;
    pthread_mutex_unlock(&job->progress_lock);
    if (p.version == job->sent_version) {
        return 0;
    }
    job->sent_version = p.version;
    int n;
    if (p.audit) {
        n = snprintf(job->chunk, sizeof job->chunk,
                     "event: progress\ndata: {\"phase\":\"audit\",\"events\":%lld,"
                     "\"total\":%lld}\n\n",
                     (long long)p.audit_events, (long long)p.audit_total);
    } else {
        n = snprintf(job->chunk, sizeof job->chunk,
                     "event: progress\ndata: {\"phase\":\"load\",\"elapsedMs\":%lld,"
                     "\"completed\":%llu,\"totalRequests\":%lld,\"2xx\":%llu,\"4xx\":%llu,"
                     "\"5xx\":%llu,\"errors\":%llu}\n\n",
                     (long long)p.elapsed_ms, (unsigned long long)p.completed,
                     (long long)job->params.requests, (unsigned long long)p.class_2xx,
                     (unsigned long long)p.class_4xx, (unsigned long long)p.class_5xx,
                     (unsigned long long)p.errors);
    }
    SVC_ASSERT(n > 0 && (size_t)n < sizeof job->chunk);
    return n;
}

/* Sends the last event of a stream: the result, or the problem. */
static void api_load_stream_final(struct load_job *job)
{
    char problem[REPLY_BODY_BYTES_MAX];
    const char *kind = "result";
    const char *data = job->result;
    size_t length = job->result_length;
    if (job->rc != 0) {
        kind = "error";
        length = problem_format(problem, sizeof problem, job->rc, job->why, NULL, 0);
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
}

/* Hands h2o the next chunk of a streaming answer, if there is one and none is in flight. */
static void api_load_stream_next(struct load_job *job)
{
    SVC_ASSERT(job->streaming && job->req != NULL);
    if (job->sending || job->final_sent) {
        return;
    }
    int n = api_load_progress_chunk(job); /* after the end too: the last progress first */
    if (n == 0 && job->ended) {
        api_load_stream_final(job);
        return;
    }
    if (n == 0) {
        return;
    }
    job->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(job->chunk, (size_t)n);
    h2o_send(job->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void api_load_on_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    struct load_job *job = H2O_STRUCT_FROM_MEMBER(struct load_job, generator, generator);
    SVC_ASSERT(job->req == req);
    job->sending = false;
    api_load_stream_next(job);
}

static void api_load_on_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)generator;
    (void)req; /* the client left: the dispose of the request's pool follows */
}

/* The load test ended: answer, or free the job if nobody waits for it any more. */
static void api_load_on_end(struct load_job *job)
{
    job->ended = true;
    if (job->req == NULL) {
        api_load_job_free(job);
        return;
    }
    if (job->streaming) {
        api_load_stream_next(job);
        return;
    }
    struct http_request r = {
        .thread = job->thread, .req = job->req, .route = job->route, .started_us = job->started_us};
    if (job->rc != 0) {
        http_send_problem(&r, job->rc, job->why, NULL, 0);
        return;
    }
    http_send_json(&r, 200, job->result, job->result_length); /* copies */
}

static void api_load_on_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct load_message *m =
            H2O_STRUCT_FROM_MEMBER(struct load_message, message.link, messages->next);
        h2o_linklist_unlink(&m->message.link);
        struct load_job *job = m->job;
        SVC_ASSERT(m == (m->end ? &job->end_message : &job->progress_message));
        if (m->end) {
            api_load_on_end(job); /* may free the job */
            continue;
        }
        atomic_store(&job->progress_queued, false);
        if (job->req != NULL && job->streaming) {
            api_load_stream_next(job);
        }
    }
}

/* ---- the request ------------------------------------------------------------------------ */

/* Reads an integer member (type checked here, range by the caller). 1 set, 0 absent, or
 * SVC_EVALIDATION with *why set. */
static int api_load_int(json_t *body, const char *name, bool required, int64_t *out,
                        const char **why)
{
    return api_get_int(body, name, required, INT64_MIN, INT64_MAX, out, why);
}

/* Decodes the kind: "purchase" or "order"; absent keeps *target. */
static int api_load_kind(json_t *body, enum lg_target *target, const char **why)
{
    json_t *kind = json_object_get(body, "kind");
    if (kind == NULL || json_is_null(kind)) {
        return 0;
    }
    const char *text = json_is_string(kind) ? json_string_value(kind) : "";
    if (strcmp(text, "purchase") != 0 && strcmp(text, "order") != 0) {
        *why = "kind must be \"purchase\" or \"order\"";
        return SVC_EVALIDATION;
    }
    *target = text[0] == 'o' ? LG_TARGET_ORDER : LG_TARGET_PURCHASE;
    return 0;
}

/* Checks the decoded numbers against the named limits. 0 or SVC_ELOAD_TEST_LIMIT. */
static int api_load_bounds(struct load_params *p, int64_t vus, int64_t qty, const char **why)
{
    if (vus < 1 || vus > LOAD_TEST_VUS_MAX) {
        *why = "vus must be 1..256 (LOAD_TEST_VUS_MAX)";
        return SVC_ELOAD_TEST_LIMIT;
    }
    if (p->iterations < 1 || p->iterations > LOAD_TEST_ITERATIONS_MAX) {
        *why = "iterations must be 1..1000000 (LOAD_TEST_ITERATIONS_MAX)";
        return SVC_ELOAD_TEST_LIMIT;
    }
    p->vus = (uint32_t)vus;
    p->requests = p->seed ? p->iterations * vus : p->iterations;
    if (p->requests > LOAD_TEST_ITERATIONS_MAX) {
        *why = "vus x iterations must be at most 1000000 (LOAD_TEST_ITERATIONS_MAX)";
        return SVC_ELOAD_TEST_LIMIT;
    }
    if (qty < 1 || qty > QTY_MAX) {
        *why = "qty (quantity) must be 1..1000000000";
        return SVC_ELOAD_TEST_LIMIT;
    }
    p->qty = qty;
    return 0;
}

/* Decodes the body of either route into *p. 0, or an svc_err with *why set. */
static int api_load_decode(json_t *body, struct load_params *p, const char **why)
{
    SVC_ASSERT(p->target == (p->seed ? LG_TARGET_ORDER : LG_TARGET_PURCHASE)); /* defaults */
    int64_t vus = 0;
    int64_t qty = 1;
    int rc = api_load_int(body, "vus", true, &vus, why);
    if (rc >= 0) {
        rc = api_load_int(body, "iterations", true, &p->iterations, why);
    }
    if (rc >= 0) {
        rc = api_load_int(body, p->seed ? "quantity" : "qty", false, &qty, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, p->seed ? "productId" : "sku", true, true, p->sku, sizeof p->sku,
                            why);
    }
    if (rc >= 0) {
        rc = api_load_kind(body, &p->target, why);
    }
    if (rc < 0) {
        return rc;
    }
    return api_load_bounds(p, vus, qty, why);
}

/* The URL of this server as the request's connection reached it. 0 or -EADDRNOTAVAIL. */
static int api_load_self_url(struct http_request *r, char *out, size_t size)
{
    struct sockaddr_storage address;
    h2o_conn_t *conn = r->req->conn;
    socklen_t length = conn->callbacks->get_sockname(conn, (struct sockaddr *)&address);
    char host[NI_MAXHOST];
    char port[NI_MAXSERV];
    if (length == 0 || getnameinfo((struct sockaddr *)&address, length, host, sizeof host, port,
                                   sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        return -EADDRNOTAVAIL;
    }
    bool v6 = address.ss_family == AF_INET6;
    int n = snprintf(out, size, "http://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
    SVC_ASSERT(n > 0);
    return (size_t)n < size ? 0 : -EADDRNOTAVAIL;
}

/* Copies the caller's bearer token (the route's role was checked with it), or "". */
static void api_load_token(struct http_request *r, char *out, size_t size)
{
    static const char scheme[] = "Bearer ";
    h2o_iovec_t value = http_header(r, "authorization");
    out[0] = '\0';
    if (value.base != NULL && value.len > sizeof scheme - 1 && value.len - 7 < size &&
        strncasecmp(value.base, scheme, sizeof scheme - 1) == 0) {
        memcpy(out, value.base + 7, value.len - 7);
        out[value.len - 7] = '\0';
    }
}

/* Starts the streaming answer: headers and a first comment line. */
static void api_load_stream_start(struct load_job *job)
{
    h2o_req_t *req = job->req;
    http_metrics_count(job->thread, job->route, req->method, 200, job->started_us);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-cache"));
    h2o_start_response(req, &job->generator);
    int n = snprintf(job->chunk, sizeof job->chunk, ": load test started\n\n");
    job->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(job->chunk, (size_t)n);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

/* Makes the job of r (the load_busy flag is ours) and starts its thread; on failure answers
 * and clears the flag. */
static void api_load_launch(struct http_request *r, const struct load_params *params)
{
    struct io_thread *t = r->thread;
    struct load_job *job = calloc(1, sizeof *job);
    if (job == NULL) {
        atomic_store(&load_busy, false);
        http_send_problem(r, SVC_EOUT_OF_MEMORY, NULL, NULL, 0);
        return;
    }
    if (!load_receivers[t->index].registered) {
        h2o_multithread_register_receiver(t->reply_queue, &load_receivers[t->index].receiver,
                                          api_load_on_message);
        load_receivers[t->index].registered = true;
    }
    job->progress_message = (struct load_message){.job = job, .end = false};
    job->end_message = (struct load_message){.job = job, .end = true};
    job->thread = t;
    job->req = r->req;
    job->route = r->route;
    job->started_us = r->started_us;
    h2o_iovec_t accept = http_header(r, "accept");
    job->streaming = accept.base != NULL && h2o_strstr(accept.base, accept.len,
                                                       H2O_STRLIT("text/event-stream")) != SIZE_MAX;
    job->params = *params;
    pthread_mutex_init(&job->progress_lock, NULL);
    job->generator = (h2o_generator_t){api_load_on_proceed, api_load_on_stop};
    struct load_job **guard =
        h2o_mem_alloc_shared(&r->req->pool, sizeof *guard, api_load_on_dispose);
    *guard = job;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, api_load_thread_main, job);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        log_error("load test: cannot start its thread: %s", strerror(rc));
        atomic_store(&load_busy, false);
        job->ended = true; /* no load thread: the dispose frees the job */
        http_send_problem(r, SVC_EOUT_OF_MEMORY, "no thread for the load test", NULL, 0);
        return;
    }
    if (job->streaming) {
        api_load_stream_start(job);
    }
}

static void api_load_start(struct http_request *r, bool seed)
{
    SVC_ASSERT(r->thread->index < IO_THREADS_MAX);
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        return;
    }
    struct load_params params = {.seed = seed,
                                 .target = seed ? LG_TARGET_ORDER : LG_TARGET_PURCHASE};
    const char *why = NULL;
    int rc = api_load_decode(body, &params, &why);
    json_decref(body);
    if (rc != 0) {
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    if (api_load_self_url(r, params.url, sizeof params.url) != 0) {
        http_send_problem(r, SVC_EVALIDATION, "this connection's local address is unknown", NULL,
                          0);
        return;
    }
    api_load_token(r, params.token, sizeof params.token);
    if (atomic_exchange(&load_busy, true)) {
        http_send_problem(r, SVC_ELOAD_TEST_RUNNING,
                          "one load test runs at a time; retry when it ends", NULL, 0);
        return;
    }
    api_load_launch(r, &params);
}

void api_load_test(struct http_request *r)
{
    api_load_start(r, false);
}

void api_seed_load_test(struct http_request *r)
{
    api_load_start(r, true);
}
