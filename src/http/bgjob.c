/*
 * bgjob.c - see bgjob.h: a request answered by work on a thread of its own.
 */
#include "http/bgjob.h"

#include <pthread.h>
#include <stdio.h>

#include "base/log.h"
#include "base/problem.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/svc_thread.h"
#include "http/http_metrics.h"

/* Per I/O thread: its mailbox, set up at its first job. */
static struct http_mailbox http_bgjob_mailboxes[IO_THREADS_MAX];

/* ---- the work thread -------------------------------------------------------------------- */

void http_bgjob_progress(struct http_bgjob *job)
{
    if (!atomic_exchange(&job->progress_queued, true)) {
        h2o_multithread_send_message(&http_bgjob_mailboxes[job->thread->index].receiver,
                                     &job->progress_message.message);
    }
}

static void *http_bgjob_main(void *arg)
{
    svc_thread_name("http-job", -1);
    struct http_bgjob *job = arg;
    job->ops->run(job);
    /* The last touch: after this message the owner may free the job. */
    h2o_multithread_send_message(&http_bgjob_mailboxes[job->thread->index].receiver,
                                 &job->end_message.message);
    return NULL;
}

/* ---- the owner I/O thread --------------------------------------------------------------- */

/* h2o disposed the request (answered, or the client left): free the job if the work ended. */
static void http_bgjob_on_gone(struct http_waiter *w)
{
    struct http_bgjob *job = H2O_STRUCT_FROM_MEMBER(struct http_bgjob, waiter, w);
    SVC_ASSERT(job->waiter.req == NULL);
    if (job->ended) {
        job->ops->free(job);
    }
}

/* Sends the last event of a stream: the result, or the problem. */
static void http_bgjob_stream_final(struct http_bgjob *job)
{
    struct http_bgjob_result result = {0};
    job->ops->result(job, &result);
    char problem[REPLY_BODY_BYTES_MAX];
    const char *event = result.event;
    const char *data = result.json;
    size_t length = result.length;
    if (result.code != 0) {
        event = "error";
        length = problem_format(problem, sizeof problem, result.code, result.why, NULL, 0);
        data = problem;
    }
    SVC_ASSERT(event != NULL && data != NULL);
    size_t size = length + strlen(event) + 32;
    char *text = h2o_mem_alloc_pool(&job->waiter.req->pool, size);
    int n = snprintf(text, size, "event: %s\ndata: %.*s\n\n", event, (int)length, data);
    SVC_ASSERT(n > 0 && (size_t)n < size);
    job->final_sent = true;
    job->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(text, (size_t)n);
    h2o_send(job->waiter.req, &buf, 1, H2O_SEND_STATE_FINAL);
}

/* Hands h2o the next chunk of a streaming answer, if there is one and none is in flight. */
static void http_bgjob_stream_next(struct http_bgjob *job)
{
    SVC_ASSERT(job->streaming && job->waiter.req != NULL);
    if (job->sending || job->final_sent) {
        return;
    }
    size_t n = job->ops->progress(job, job->chunk, sizeof job->chunk); /* the last one first */
    SVC_ASSERT(n < sizeof job->chunk);
    if (n == 0) {
        if (job->ended) {
            http_bgjob_stream_final(job);
        }
        return;
    }
    job->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(job->chunk, n);
    h2o_send(job->waiter.req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void http_bgjob_on_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    struct http_bgjob *job = H2O_STRUCT_FROM_MEMBER(struct http_bgjob, generator, generator);
    SVC_ASSERT(job->waiter.req == req);
    job->sending = false;
    http_bgjob_stream_next(job);
}

static void http_bgjob_on_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    (void)generator;
    (void)req; /* the client left: the dispose of the request's pool follows */
}

/* The work ended: answer, or free the job if nobody waits for it any more. */
static void http_bgjob_on_end(struct http_bgjob *job)
{
    job->ended = true;
    if (job->waiter.req == NULL) {
        job->ops->free(job);
        return;
    }
    if (job->streaming) {
        http_bgjob_stream_next(job);
        return;
    }
    struct http_bgjob_result result = {0};
    job->ops->result(job, &result);
    struct http_request r = http_waiter_view(&job->waiter, job->thread, job->waiter.req);
    log_trace_set(r.trace_id); /* the request's: the lines of its answer carry it */
    if (result.code != 0) {
        http_send_problem(&r, result.code, result.why, NULL, 0);
        log_trace_set(NULL);
        return;
    }
    SVC_ASSERT(result.json != NULL);
    http_send_json(&r, 200, result.json, result.length); /* copies */
    log_trace_set(NULL);
}

static void http_bgjob_on_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct http_bgjob_message *m =
            H2O_STRUCT_FROM_MEMBER(struct http_bgjob_message, message.link, messages->next);
        h2o_linklist_unlink(&m->message.link);
        struct http_bgjob *job = m->job;
        SVC_ASSERT(m == (m->end ? &job->end_message : &job->progress_message));
        if (m->end) {
            http_bgjob_on_end(job); /* may free the job */
            continue;
        }
        atomic_store(&job->progress_queued, false);
        if (job->waiter.req != NULL && job->streaming) {
            http_bgjob_stream_next(job);
        }
    }
}

/* Starts the streaming answer: headers and a first comment line. */
static void http_bgjob_stream_start(struct http_bgjob *job)
{
    h2o_req_t *req = job->waiter.req;
    http_start_event_stream(req, &job->generator);
    /* The stream counts at its start (its end is the client's): 200 and the time to here. */
    http_metrics_count(job->thread, job->waiter.route, req->method, 200, job->waiter.started_us);
    int n = snprintf(job->chunk, sizeof job->chunk, ": %s started\n\n", job->ops->name);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof job->chunk);
    job->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(job->chunk, (size_t)n);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

int http_bgjob_start(struct http_bgjob *job, const struct http_bgjob_ops *ops,
                     struct http_request *r)
{
    SVC_ASSERT(ops->run != NULL && ops->progress != NULL && ops->result != NULL &&
               ops->free != NULL && ops->name != NULL);
    struct io_thread *t = r->thread;
    (void)http_mailbox_of(http_bgjob_mailboxes, t, http_bgjob_on_message, 0);
    job->ops = ops;
    job->progress_message = (struct http_bgjob_message){.job = job, .end = false};
    job->end_message = (struct http_bgjob_message){.job = job, .end = true};
    job->thread = t;
    h2o_iovec_t accept = http_header(r, "accept");
    job->streaming = accept.base != NULL && h2o_strstr(accept.base, accept.len,
                                                       H2O_STRLIT("text/event-stream")) != SIZE_MAX;
    job->generator = (h2o_generator_t){http_bgjob_on_proceed, http_bgjob_on_stop};
    job->waiter.on_gone = http_bgjob_on_gone;
    http_waiter_start(&job->waiter, r, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, http_bgjob_main, job);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        job->ended = true; /* no work thread: the dispose frees the job */
        return rc;
    }
    if (job->streaming) {
        http_bgjob_stream_start(job);
    }
    return 0;
}
