/*
 * api_dlt_stream.c - POST /v1/dlt/replay for the dead letters of stage commands (issue 12):
 * the stream messages the intake consumer could not decode, published again to the stream
 * stockd.commands (the dead-letter topic's replay). api_dlt.c decides the stage and calls
 * api_dlt_stream_replay.
 *
 * The handler reads the dead letters not replayed yet with the messages as they came
 * (store_reader_stream_messages: message-id, type, principal header, body), keeps those asked
 * for (every one for {"stage":"commands"}), at most DLT_REPLAY_MESSAGES_MAX, and hands each to
 * the intake publisher (intake_pub.h, as api_intake.c does: a job on the heap, reported back
 * through this thread's receiver). Once every job came back, those the broker confirmed are
 * marked replayed (store_reader_stream_replayed, one statement) and the answer is 202 with
 * their ids: the messages are on the stream, and the holder of the consumer's lease reads
 * them at their new offsets like any message. One that still cannot be decoded becomes a dead
 * letter again at its new offset; one that can is applied once (its Idempotency-Key). None
 * confirmed (the broker is down or unreachable): 503 broker_unavailable with Retry-After,
 * nothing marked. A timer of INTAKE_CONFIRM_TIMEOUT_MS answers with what was confirmed by
 * then; a message confirmed later is on the stream but not marked, so a later replay publishes
 * it again, which its key (or a second dead letter) absorbs, as the publisher's own republish
 * after a reconnect would. A dead letter whose body was not kept (over
 * DLT_MESSAGE_BODY_BYTES_MAX, or written before migration 12) is answered as not replayable.
 *
 * Ownership: the replay and its jobs belong to this thread, but each job for the publisher's
 * turn between intake_pub_submit and its done callback. The replay lives until it is answered
 * (or its client left: its http_waiter, waiter.h) and every job it handed over came back.
 * Read api_ops.c next.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "http/waiter.h"
#include "base/clock.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "intake/intake.h"
#include "intake/intake_pub.h"

_Static_assert(DLT_REPLAY_MESSAGES_MAX <= INTAKE_PUB_HANDOFF_MAX, "a replay fits the hand-off");
_Static_assert(DLT_REPLAY_MESSAGES_MAX <= DLT_LIST_MAX, "the replayed are among the listed");

/* "commands:<offset>" */
#define API_DLT_STREAM_ID_BYTES_MAX 48

struct api_dlt_stream_replay;

/* One message published again. */
struct api_dlt_stream_job {
    h2o_multithread_message_t message; /* to this thread's receiver; first member */
    struct intake_pub_job pub;
    struct api_dlt_stream_replay *replay;
    int64_t offset; /* the dead letter's stream offset */
    bool back;      /* the publisher reported it (pub.result is then ours to read) */
    char id[DLT_MESSAGE_ID_BYTES_MAX + 1];
    char type[DLT_MESSAGE_TYPE_BYTES_MAX + 1];
    char principal[DLT_MESSAGE_PRINCIPAL_BYTES_MAX + 1];
    char body[]; /* the message's body */
};

struct api_dlt_stream_replay {
    struct io_thread *thread;
    struct http_waiter waiter; /* its timer: INTAKE_CONFIRM_TIMEOUT_MS */
    json_t *ids;               /* the requested ids (owned), or NULL: every one */
    uint32_t job_count;        /* jobs made */
    uint32_t out;              /* jobs with the publisher */
    struct api_dlt_stream_job *jobs[DLT_REPLAY_MESSAGES_MAX]; /* owned; NULL once freed */
    int64_t deferred;                                         /* past the maximum, or refused */
    uint32_t not_replayable;
    int64_t not_replayable_offsets[DLT_LIST_MAX];
    int storage_rc; /* the read's error (0: none) */
};

/* Per I/O thread, set up at its first replay; owner only. */
static struct http_mailbox api_dlt_stream_mailboxes[IO_THREADS_MAX];

static void api_dlt_stream_id(char *out, size_t size, int64_t offset)
{
    SVC_ASSERT(offset >= 0);
    int n = snprintf(out, size, "%s:%" PRId64, INTAKE_STAGE, offset);
    SVC_ASSERT(n > 0 && (size_t)n < size);
}

/* True when the dead letter at offset is among replay->ids (NULL: all). */
static bool api_dlt_stream_wanted(const struct api_dlt_stream_replay *replay, int64_t offset)
{
    if (replay->ids == NULL) {
        return true;
    }
    char id[API_DLT_STREAM_ID_BYTES_MAX];
    api_dlt_stream_id(id, sizeof id, offset);
    for (size_t i = 0; i < json_array_size(replay->ids); i++) {
        const char *want = json_string_value(json_array_get(replay->ids, i));
        if (want != NULL && strcmp(want, id) == 0) {
            return true;
        }
    }
    return false;
}

/* On the publisher thread: post the job to its I/O thread. */
static void api_dlt_stream_done(struct intake_pub_job *pub)
{
    struct api_dlt_stream_job *job = H2O_STRUCT_FROM_MEMBER(struct api_dlt_stream_job, pub, pub);
    struct io_thread *t = job->replay->thread;
    SVC_ASSERT(t != NULL && t->index < IO_THREADS_MAX);
    h2o_multithread_send_message(&api_dlt_stream_mailboxes[t->index].receiver, &job->message);
}

/* A job for one row of store_reader_stream_messages; NULL when out of memory. */
static struct api_dlt_stream_job *api_dlt_stream_job_new(struct api_dlt_stream_replay *replay,
                                                         const struct store_stream_message_row *m)
{
    SVC_ASSERT(m->body != NULL && m->body_length <= DLT_MESSAGE_BODY_BYTES_MAX);
    struct api_dlt_stream_job *job = malloc(sizeof *job + m->body_length + 1);
    if (job == NULL) {
        return NULL;
    }
    memset(job, 0, sizeof *job);
    job->replay = replay;
    job->offset = m->stream_offset;
    /* Absent parts go out empty: the consumer reads an empty id, type or header as absent. */
    snprintf(job->id, sizeof job->id, "%s", m->message_id != NULL ? m->message_id : "");
    snprintf(job->type, sizeof job->type, "%s", m->message_type != NULL ? m->message_type : "");
    snprintf(job->principal, sizeof job->principal, "%s",
             m->message_principal != NULL ? m->message_principal : "");
    memcpy(job->body, m->body, m->body_length);
    job->body[m->body_length] = '\0';
    job->pub = (struct intake_pub_job){.key = job->id,
                                       .kind = job->type,
                                       .principal = job->principal,
                                       .body = job->body,
                                       .body_length = m->body_length,
                                       .done = api_dlt_stream_done};
    SVC_ASSERT(job->pub.body_length == m->body_length);
    return job;
}

/* store_reader_stream_messages's callback: a job per wanted dead letter. */
static int api_dlt_stream_take(void *context, const struct store_stream_message_row *m)
{
    struct api_dlt_stream_replay *replay = context;
    SVC_ASSERT(m->stream_offset >= 0);
    if (!api_dlt_stream_wanted(replay, m->stream_offset)) {
        return 0;
    }
    if (m->body == NULL) {
        SVC_ASSERT(replay->not_replayable < DLT_LIST_MAX);
        replay->not_replayable_offsets[replay->not_replayable++] = m->stream_offset;
        return 0;
    }
    if (replay->job_count == DLT_REPLAY_MESSAGES_MAX) {
        replay->deferred++; /* the next call replays it */
        return 0;
    }
    struct api_dlt_stream_job *job = api_dlt_stream_job_new(replay, m);
    if (job == NULL) {
        return SVC_EOUT_OF_MEMORY;
    }
    replay->jobs[replay->job_count++] = job;
    return 0;
}

static void api_dlt_stream_free(struct api_dlt_stream_replay *replay)
{
    SVC_ASSERT(replay->out == 0 && replay->waiter.req == NULL);
    for (uint32_t i = 0; i < replay->job_count; i++) {
        free(replay->jobs[i]);
    }
    json_decref(replay->ids);
    free(replay);
}

/* The 202: the ids replayed (confirmed and marked), deferred and not replayable. */
static void api_dlt_stream_accept(struct http_request *r, struct api_dlt_stream_replay *replay,
                                  const int64_t *offsets, uint32_t count)
{
    char *out = h2o_mem_alloc_pool(&r->req->pool, LIST_BODY_BYTES_MAX);
    char id[API_DLT_STREAM_ID_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{\"ids\":[");
    for (uint32_t i = 0; i < count; i++) {
        api_dlt_stream_id(id, sizeof id, offsets[i]);
        jbuf_lit(&b, i == 0 ? "" : ",");
        jbuf_str(&b, id);
    }
    jbuf_lit(&b, "]");
    jbuf_kv_int(&b, "replayed", count);
    jbuf_kv_int(&b, "deferred", replay->deferred);
    jbuf_lit(&b, ",\"notReplayable\":[");
    for (uint32_t i = 0; i < replay->not_replayable; i++) {
        api_dlt_stream_id(id, sizeof id, replay->not_replayable_offsets[i]);
        jbuf_lit(&b, i == 0 ? "" : ",");
        jbuf_str(&b, id);
    }
    jbuf_lit(&b, "]}");
    SVC_ASSERT(jbuf_ok(&b)); /* DLT_LIST_MAX ids of API_DLT_STREAM_ID_BYTES_MAX fit */
    log_info("dlt: %" PRIu32 " dead letters of stage %s published again", count, INTAKE_STAGE);
    http_send_json(r, 202, out, b.length);
}

/* Answers the waiting request with what the broker confirmed so far: marked and 202, or 503
 * when none was (nothing marked). The jobs not confirmed yet count as deferred. */
static void api_dlt_stream_answer(struct api_dlt_stream_replay *replay, h2o_req_t *req)
{
    struct http_request r = http_waiter_view(&replay->waiter, replay->thread, req);
    log_trace_set(r.trace_id); /* the request's id: its lines carry it (the caller clears it) */
    int64_t offsets[DLT_REPLAY_MESSAGES_MAX];
    uint32_t confirmed = 0;
    for (uint32_t i = 0; i < replay->job_count; i++) {
        const struct api_dlt_stream_job *job = replay->jobs[i];
        if (job->back && job->pub.result == 0) {
            offsets[confirmed++] = job->offset;
        } else {
            replay->deferred++;
        }
    }
    if (confirmed == 0 && replay->job_count > 0) {
        http_send_problem(&r, SVC_EBROKER_UNAVAILABLE,
                          "the message broker did not confirm the messages: none was marked"
                          " replayed; retry",
                          NULL, 0);
        return;
    }
    if (confirmed > 0 && store_reader_stream_replayed(replay->thread->reader, INTAKE_STAGE, offsets,
                                                      confirmed, clock_wall_ms()) != 0) {
        http_send_problem(&r, SVC_ESTORAGE_UNAVAILABLE,
                          "the messages are on the stream again but could not be marked"
                          " replayed; a retry publishes them once more (their keys absorb it)",
                          NULL, 0);
        return;
    }
    api_dlt_stream_accept(&r, replay, offsets, confirmed);
}

/* The publisher's reports, on this thread: the replay is answered once every job came back
 * (or at its timeout), and freed once answered with none out. */
static void api_dlt_stream_on_message(h2o_multithread_receiver_t *receiver,
                                      h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct api_dlt_stream_job *job =
            H2O_STRUCT_FROM_MEMBER(struct api_dlt_stream_job, message.link, messages->next);
        h2o_linklist_unlink(&job->message.link);
        struct api_dlt_stream_replay *replay = job->replay;
        SVC_ASSERT(&api_dlt_stream_mailboxes[replay->thread->index].receiver == receiver);
        SVC_ASSERT(replay->out > 0);
        job->back = true;
        replay->out--;
        if (replay->out > 0) {
            continue;
        }
        h2o_req_t *req = http_waiter_take(&replay->waiter);
        if (req != NULL) {
            api_dlt_stream_answer(replay, req);
            log_trace_set(NULL);
        }
        api_dlt_stream_free(replay);
    }
}

/* INTAKE_CONFIRM_TIMEOUT_MS passed with jobs still out: answer with what came back; the
 * replay is freed when the last job comes back. */
static void api_dlt_stream_on_timeout(h2o_timeout_entry_t *entry)
{
    struct api_dlt_stream_replay *replay =
        H2O_STRUCT_FROM_MEMBER(struct api_dlt_stream_replay, waiter.timeout, entry);
    h2o_req_t *req = http_waiter_take(&replay->waiter);
    if (req != NULL) {
        api_dlt_stream_answer(replay, req);
        log_trace_set(NULL);
    }
}

/* Hands every job to the publisher. 0, or the first refusal when none was handed over (the
 * jobs are all still ours); the jobs refused after one was handed over are deferred. */
static int api_dlt_stream_submit(struct intake_pub *pub, struct api_dlt_stream_replay *replay)
{
    int first = 0;
    for (uint32_t i = 0; i < replay->job_count; i++) {
        int rc = intake_pub_submit(pub, &replay->jobs[i]->pub);
        if (rc == 0) {
            replay->out++;
        } else if (first == 0) {
            first = rc;
        }
    }
    SVC_ASSERT(replay->out <= replay->job_count);
    return replay->out > 0 ? 0 : first;
}

void api_dlt_stream_replay(struct http_request *r, json_t *ids)
{
    struct intake_pub *pub = atomic_load(&r->thread->app->intake_pub);
    if (pub == NULL) {
        http_send_problem(r, SVC_ENOT_FOUND,
                          "this instance runs no asynchronous intake (stockd --amqp URL)", NULL, 0);
        return;
    }
    struct api_dlt_stream_replay *replay = calloc(1, sizeof *replay);
    if (replay == NULL) {
        http_send_problem(r, SVC_EOUT_OF_MEMORY, NULL, NULL, 0);
        return;
    }
    replay->thread = r->thread;
    replay->ids = ids != NULL ? json_incref(ids) : NULL;
    replay->waiter.timeout = (h2o_timeout_entry_t){.cb = api_dlt_stream_on_timeout};
    int limit = ids != NULL ? DLT_LIST_MAX : DLT_REPLAY_MESSAGES_MAX + 1;
    int rc = store_reader_stream_messages(r->thread->reader, INTAKE_STAGE, limit, replay,
                                          api_dlt_stream_take);
    if (rc != 0) {
        api_dlt_stream_free(replay);
        http_send_problem(r,
                          rc == SVC_EOUT_OF_MEMORY ? SVC_EOUT_OF_MEMORY : SVC_ESTORAGE_UNAVAILABLE,
                          NULL, NULL, 0);
        return;
    }
    if (replay->job_count == 0) { /* nothing to publish: the answer says so at once */
        api_dlt_stream_answer(replay, r->req);
        api_dlt_stream_free(replay);
        return;
    }
    struct http_mailbox *box = http_mailbox_of(
        api_dlt_stream_mailboxes, r->thread, api_dlt_stream_on_message, INTAKE_CONFIRM_TIMEOUT_MS);
    /* Armed before the hand-off: the publisher may report at once (on this thread, later). */
    http_waiter_start(&replay->waiter, r, &box->timeout);
    rc = api_dlt_stream_submit(pub, replay);
    if (rc != 0) { /* none handed over: nothing was published, nothing is marked */
        h2o_req_t *req = http_waiter_take(&replay->waiter);
        SVC_ASSERT(req == r->req);
        api_dlt_stream_free(replay);
        http_send_problem(r, SVC_EBROKER_UNAVAILABLE,
                          rc == -EAGAIN ? "too many messages wait for the message broker; retry"
                                        : "the message broker is not connected; retry",
                          NULL, 0);
    }
}
