/*
 * api_intake.c - `Prefer: respond-async` (RFC 7240) on POST /v1/purchase, POST /v1/orders and
 * seed 000's POST /purchase, with --amqp (issue 12, intake/intake.h): the HTTP side of the
 * asynchronous intake.
 *
 * The handler validates the request exactly as for a synchronous one (api_orders.c; a 4xx goes
 * out at once, an Idempotency-Key is required), then calls api_intake_publish instead of
 * submitting the command to the writer: the request's JSON goes into the message of intake.h,
 * a job on the heap, handed to the publisher thread (intake_pub_submit: never a wait). The
 * publisher reports the job back through this thread's receiver on its reply queue once the
 * broker confirmed it (202 with Preference-Applied and Location) or could not (503
 * broker_unavailable). A timer of INTAKE_CONFIRM_TIMEOUT_MS on the I/O thread answers 503 on
 * time whatever the publisher does; the job itself is freed only when it comes back.
 *
 * Ownership: a job belongs to this thread, but for the publisher's turn between
 * intake_pub_submit and its done callback. Its request waits in an http_waiter (waiter.h):
 * when the client leaves first, the late answer is dropped. Read
 * api_seed.c next.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "http/waiter.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "intake/intake.h"
#include "intake/intake_pub.h"

_Static_assert(INTAKE_RETRY_AFTER_SECONDS == 1, "http_send_problem sends Retry-After: 1");

/* The status URL of the longest key, every byte percent-encoded. */
#define API_INTAKE_URL_BYTES_MAX (sizeof INTAKE_STATUS_PREFIX + 3 * IDEM_KEY_BYTES_MAX)

struct api_intake_job {
    h2o_multithread_message_t message; /* to this thread's receiver; first member */
    struct intake_pub_job pub;
    struct io_thread *thread;
    struct http_waiter waiter; /* its timer: INTAKE_CONFIRM_TIMEOUT_MS */
    char key[IDEM_KEY_BYTES_MAX + 1];
    char principal[AUTH_PRINCIPAL_BYTES_MAX + 1];
    char body[]; /* the message */
};

/* Per I/O thread, set up at its first asynchronous request; owner only. */
static struct http_mailbox api_intake_mailboxes[IO_THREADS_MAX];

/* For GET /metrics: any thread reads them. */
static _Atomic uint64_t api_intake_accepted;
static _Atomic uint64_t api_intake_refused_not_connected;
static _Atomic uint64_t api_intake_refused_full;
static _Atomic uint64_t api_intake_refused_timeout;

void api_intake_stats(struct api_intake_stats *out)
{
    out->accepted = atomic_load_explicit(&api_intake_accepted, memory_order_relaxed);
    out->refused_not_connected =
        atomic_load_explicit(&api_intake_refused_not_connected, memory_order_relaxed);
    out->refused_full = atomic_load_explicit(&api_intake_refused_full, memory_order_relaxed);
    out->refused_timeout = atomic_load_explicit(&api_intake_refused_timeout, memory_order_relaxed);
}

bool api_intake_wanted(struct http_request *r)
{
    if (!(r->route->flags & ROUTE_ASYNC) || atomic_load(&r->thread->app->intake_pub) == NULL) {
        return false;
    }
    const h2o_headers_t *headers = &r->req->headers;
    for (ssize_t i = -1; (i = h2o_find_header_by_str(headers, H2O_STRLIT("prefer"), i)) != -1;) {
        h2o_iovec_t value = headers->entries[i].value;
        if (intake_pub_prefers_async(value.base, value.len)) {
            return true;
        }
    }
    return false;
}

/* Sends 503 broker_unavailable for err (-ENOTCONN, -EAGAIN or -ETIMEDOUT) and counts it. */
static void api_intake_refuse(struct http_request *r, int err)
{
    const char *detail = NULL;
    switch (err) {
    case -ENOTCONN:
        atomic_fetch_add_explicit(&api_intake_refused_not_connected, 1, memory_order_relaxed);
        detail = "the message broker is not connected; retry with the same Idempotency-Key, or "
                 "without Prefer: respond-async";
        break;
    case -EAGAIN:
        atomic_fetch_add_explicit(&api_intake_refused_full, 1, memory_order_relaxed);
        detail = "too many asynchronous requests wait for the message broker; retry with the "
                 "same Idempotency-Key";
        break;
    default:
        SVC_ASSERT(err == -ETIMEDOUT);
        atomic_fetch_add_explicit(&api_intake_refused_timeout, 1, memory_order_relaxed);
        detail = "the message broker did not confirm in time; retry with the same "
                 "Idempotency-Key (the command is applied once at most)";
        break;
    }
    http_send_problem(r, SVC_EBROKER_UNAVAILABLE, detail, NULL, 0);
}

/* Sends the 202 of a confirmed job. */
static void api_intake_accept(struct http_request *r, const struct api_intake_job *job)
{
    char url[API_INTAKE_URL_BYTES_MAX];
    size_t url_length = intake_pub_status_url(url, sizeof url, job->key);
    SVC_ASSERT(url_length > 0);
    h2o_req_t *req = r->req;
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("preference-applied"), 0, NULL,
                          H2O_STRLIT("respond-async"));
    h2o_iovec_t location = h2o_strdup(&req->pool, url, url_length);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, location.base,
                   location.len);
    char body[REPLY_BODY_BYTES_MAX + API_INTAKE_URL_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{\"status\":\"accepted\"");
    jbuf_kv_str(&b, "idempotencyKey", job->key);
    jbuf_kv_str(&b, "statusUrl", url);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b)); /* a key escapes to 6 bytes a byte at worst: it fits */
    atomic_fetch_add_explicit(&api_intake_accepted, 1, memory_order_relaxed);
    http_send_json(r, 202, body, b.length);
}

static void api_intake_answer(struct api_intake_job *job, h2o_req_t *req, int result)
{
    struct http_request r = http_waiter_view(&job->waiter, job->thread, req);
    log_trace_set(r.trace_id); /* the id the request had when it was published */
    if (result == 0) {
        api_intake_accept(&r, job);
    } else {
        api_intake_refuse(&r, result);
    }
    log_trace_set(NULL);
}

/* The publisher's report, on this thread: answer the request if it still waits, free the job. */
static void api_intake_on_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct api_intake_job *job =
            H2O_STRUCT_FROM_MEMBER(struct api_intake_job, message.link, messages->next);
        h2o_linklist_unlink(&job->message.link);
        SVC_ASSERT(&api_intake_mailboxes[job->thread->index].receiver == receiver);
        h2o_req_t *req = http_waiter_take(&job->waiter);
        if (req != NULL) {
            api_intake_answer(job, req, job->pub.result);
        }
        free(job);
    }
}

/* INTAKE_CONFIRM_TIMEOUT_MS passed without the publisher's report: 503 now; the job comes
 * back later and is freed then. */
static void api_intake_on_timeout(h2o_timeout_entry_t *entry)
{
    struct api_intake_job *job =
        H2O_STRUCT_FROM_MEMBER(struct api_intake_job, waiter.timeout, entry);
    h2o_req_t *req = http_waiter_take(&job->waiter);
    if (req != NULL) {
        api_intake_answer(job, req, -ETIMEDOUT);
    }
}

/* On the publisher thread: post the job to its I/O thread. */
static void api_intake_done(struct intake_pub_job *pub)
{
    struct api_intake_job *job = H2O_STRUCT_FROM_MEMBER(struct api_intake_job, pub, pub);
    SVC_ASSERT(job->thread != NULL && job->thread->index < IO_THREADS_MAX);
    h2o_multithread_send_message(&api_intake_mailboxes[job->thread->index].receiver, &job->message);
}

/* A new job holding r's message, or NULL when out of memory. */
static struct api_intake_job *api_intake_job_new(struct http_request *r, const char *kind)
{
    h2o_iovec_t key = http_header(r, "idempotency-key");
    h2o_iovec_t entity = r->req->entity;
    const char *route = r->route->pattern;
    size_t principal_length = strlen(r->principal);
    size_t route_length = strlen(route);
    SVC_ASSERT(key.base != NULL && key.len >= 1 && key.len <= IDEM_KEY_BYTES_MAX);
    SVC_ASSERT(principal_length >= 1 && principal_length <= AUTH_PRINCIPAL_BYTES_MAX);
    SVC_ASSERT(route_length <= INTAKE_PUB_ROUTE_BYTES_MAX);
    SVC_ASSERT(entity.base != NULL && entity.len <= BODY_BYTES_MAX); /* api_parse_body */
    size_t bound = INTAKE_PUB_FORMAT_BOUND(principal_length, key.len, route_length, entity.len);
    struct api_intake_job *job = malloc(sizeof *job + bound);
    if (job == NULL) {
        return NULL;
    }
    memset(job, 0, sizeof *job);
    memcpy(job->key, key.base, key.len);
    job->key[key.len] = '\0';
    memcpy(job->principal, r->principal, principal_length + 1);
    size_t length = intake_pub_format(job->body, bound, kind, job->principal, job->key, route,
                                      entity.base, entity.len);
    SVC_ASSERT(length > 0 && length < bound);
    job->thread = r->thread;
    job->pub = (struct intake_pub_job){.key = job->key,
                                       .kind = kind,
                                       .principal = job->principal,
                                       .body = job->body,
                                       .body_length = length,
                                       .packable = true, /* intake_pub_format's own body */
                                       .done = api_intake_done};
    job->waiter.timeout = (h2o_timeout_entry_t){.cb = api_intake_on_timeout};
    return job;
}

void api_intake_publish(struct http_request *r, const char *kind)
{
    struct intake_pub *pub = atomic_load(&r->thread->app->intake_pub);
    SVC_ASSERT(pub != NULL && (r->route->flags & ROUTE_ASYNC));
    SVC_ASSERT(strcmp(kind, INTAKE_KIND_PURCHASE) == 0 || strcmp(kind, INTAKE_KIND_ORDER) == 0);
    struct http_mailbox *box = http_mailbox_of(api_intake_mailboxes, r->thread,
                                               api_intake_on_message, INTAKE_CONFIRM_TIMEOUT_MS);
    struct api_intake_job *job = api_intake_job_new(r, kind);
    if (job == NULL) {
        http_send_problem(r, SVC_EOUT_OF_MEMORY, NULL, NULL, 0);
        return;
    }
    /* Armed before the hand-off: the publisher may report at once (on this thread, later). */
    http_waiter_start(&job->waiter, r, &box->timeout);
    int rc = intake_pub_submit(pub, &job->pub);
    if (rc != 0) { /* never handed over: still ours alone */
        h2o_req_t *req = http_waiter_take(&job->waiter);
        SVC_ASSERT(req == r->req);
        free(job);
        api_intake_refuse(r, rc);
    }
}
