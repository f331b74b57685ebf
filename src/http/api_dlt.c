/*
 * api_dlt.c - the dead-letter table of checkout orders (issue 11) and of the stream of
 * commands (issue 12), admin role:
 *   GET  /v1/dlt?stage=&limit=   the dead letters, read from this thread's store reader
 *   POST /v1/dlt/replay          {ids?|stage?}: the payment stage's are handed to the workers
 *                                (work_replay), which re-queue each through the writer, 202
 *                                at once; the commands stage's are published to the stream
 *                                again (api_dlt_stream.c), 202 once the broker confirmed them
 * A dead letter's id is "<stage>:<orderId>" (one per stage and order), or for a message of the
 * stream of commands that the intake consumer could not decode "commands:<offset>" (listed
 * with seq, its stream offset, instead of orderId). A replay is of one stage: its ids all name
 * it, or {"stage": ...}. The table of orders is written by the writer only (apply_orders.c), in
 * the batch of the order's DeadLettered event; a replay deletes its row with the
 * OrderPaymentReplayed event and the charge is asked again with the same idempotency key. The
 * stream's table is written by the writer (apply.c) in the batch of the consumer's offset
 * past the message, with the message as it came; a replay publishes that message to the
 * stream again and, after the broker's confirm, marks the row replayed (a reader's statement:
 * the mark is no business data), which takes it off this list as the deletion does for an
 * order; a message that still cannot be decoded becomes a dead letter again at its new
 * offset. Read api_dlt_stream.c next.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "intake/intake.h"
#include "work/work.h"

/* The stage that dead-letters work items; the intake consumer's stage of stream messages it
 * cannot decode is INTAKE_STAGE (intake/intake.h, api_dlt_stream.c). */
#define API_DLT_STAGE "payment"
#define API_DLT_ID_BYTES_MAX 48

/* "<stage>:ord_<n>" for an order's, "<stage>:<offset>" for a stream message's. */
static void api_dlt_id(char *out, size_t size, const struct store_dead_letter_row *row)
{
    int n = row->order_seq >= 1
                ? snprintf(out, size, "%s:ord_%" PRId64, row->stage, row->order_seq)
                : snprintf(out, size, "%s:%" PRId64, row->stage, row->stream_offset);
    SVC_ASSERT(n > 0 && (size_t)n < size);
}

/* Reads ?stage= into out (empty when absent); false after sending 400 for another value. */
static bool api_dlt_stage(struct http_request *r, char *out, size_t size)
{
    int rc = http_query_param(r, "stage", out, size);
    if (rc <= 0) {
        out[0] = '\0';
        if (rc < 0) {
            http_send_problem(r, SVC_EVALIDATION, "stage is payment or commands", NULL, 0);
            return false;
        }
        return true;
    }
    if (strcmp(out, API_DLT_STAGE) != 0 && strcmp(out, INTAKE_STAGE) != 0) {
        http_send_problem(r, SVC_EVALIDATION, "stage is payment or commands", NULL, 0);
        return false;
    }
    return true;
}

struct api_dlt_list {
    struct jbuf *b;
    int64_t count;
};

static int api_dlt_list_one(void *context, const struct store_dead_letter_row *row)
{
    struct api_dlt_list *list = context;
    char id[API_DLT_ID_BYTES_MAX];
    char order_id[32];
    api_dlt_id(id, sizeof id, row);
    snprintf(order_id, sizeof order_id, "ord_%" PRId64, row->order_seq);
    jbuf_lit(list->b, list->count == 0 ? "{" : ",{");
    jbuf_kv_str(list->b, "id", id);
    jbuf_kv_str(list->b, "stage", row->stage);
    if (row->order_seq >= 1) {
        jbuf_kv_str(list->b, "orderId", order_id);
    } else {
        jbuf_kv_int(list->b, "seq", row->stream_offset); /* the message's stream offset */
    }
    jbuf_kv_str(list->b, "error", row->error);
    jbuf_kv_int(list->b, "attempts", row->attempts);
    jbuf_kv_time(list->b, "firstFailedAt", row->first_failed_at_ms);
    jbuf_kv_time(list->b, "lastFailedAt", row->last_failed_at_ms);
    jbuf_lit(list->b, "}");
    list->count++;
    return jbuf_ok(list->b) ? 0 : SVC_ECAPACITY;
}

void api_dlt_list(struct http_request *r)
{
    char stage[16];
    if (!api_dlt_stage(r, stage, sizeof stage)) {
        return;
    }
    int64_t limit = DLT_LIMIT_DEFAULT;
    if (api_query_int(r, "limit", 1, DLT_LIST_MAX, &limit) < 0) {
        http_send_problem(r, SVC_EVALIDATION, "limit is 1 to 1000", NULL, 0);
        return;
    }
    char *out = h2o_mem_alloc_pool(&r->req->pool, LIST_BODY_BYTES_MAX);
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{\"deadLetters\":[");
    struct api_dlt_list list = {&b, 0};
    int rc = store_reader_dead_letters(r->thread->reader, stage[0] != '\0' ? stage : NULL,
                                       (int)limit, &list, api_dlt_list_one);
    if (rc != 0) {
        http_send_problem(r, rc == SVC_ECAPACITY ? SVC_ECAPACITY : SVC_ESTORAGE_UNAVAILABLE,
                          rc == SVC_ECAPACITY ? "ask for fewer with ?limit=" : NULL, NULL, 0);
        return;
    }
    jbuf_lit(&b, "]");
    jbuf_kv_int(&b, "count", list.count);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, out, b.length);
}

/* ---- replay -------------------------------------------------------------------------------- */

struct api_dlt_replay {
    struct work *w;
    json_t *ids;    /* the requested ids, or NULL: every dead letter listed */
    struct jbuf *b; /* the ids replayed */
    int64_t replayed;
    int64_t full; /* left for want of room in the workers' queue */
};

/* True when the id of row is among ids (NULL: all). */
static bool api_dlt_wanted(json_t *ids, const char *id)
{
    for (size_t i = 0; ids != NULL && i < json_array_size(ids); i++) {
        const char *want = json_string_value(json_array_get(ids, i));
        if (want != NULL && strcmp(want, id) == 0) {
            return true;
        }
    }
    return ids == NULL;
}

static int api_dlt_replay_one(void *context, const struct store_dead_letter_row *row)
{
    struct api_dlt_replay *replay = context;
    char id[API_DLT_ID_BYTES_MAX];
    SVC_ASSERT(row->order_seq >= 1); /* the payment stage's */
    api_dlt_id(id, sizeof id, row);
    if (!api_dlt_wanted(replay->ids, id)) {
        return 0;
    }
    if (work_replay(replay->w, row->order_seq, row->reservation_seq) != 0) {
        replay->full++;
        return 0;
    }
    jbuf_lit(replay->b, replay->replayed == 0 ? "" : ",");
    jbuf_str(replay->b, id);
    replay->replayed++;
    return 0;
}

/* True when id names a dead letter of the stream of commands ("commands:..."). */
static bool api_dlt_is_stream_id(const char *id)
{
    size_t n = strlen(INTAKE_STAGE);
    return strncmp(id, INTAKE_STAGE, n) == 0 && id[n] == ':';
}

/* Decodes {ids: [...]} or {stage} into ids (NULL: every dead letter of the stage) and whether
 * the stage is the stream's (commands) or the payment one; false after sending 400. */
static bool api_dlt_replay_decode(struct http_request *r, json_t *body, json_t **ids, bool *stream)
{
    json_t *list = json_object_get(body, "ids");
    json_t *stage = json_object_get(body, "stage");
    *ids = NULL;
    *stream = false;
    if (list != NULL) {
        bool ok = json_is_array(list) && json_array_size(list) >= 1 &&
                  json_array_size(list) <= DLT_LIST_MAX;
        size_t streams = 0;
        for (size_t i = 0; ok && i < json_array_size(list); i++) {
            ok = json_is_string(json_array_get(list, i));
            streams += ok && api_dlt_is_stream_id(json_string_value(json_array_get(list, i)));
        }
        if (!ok || (streams != 0 && streams != json_array_size(list))) {
            http_send_problem(r, SVC_EVALIDATION,
                              "ids is an array of 1 to 1000 dead-letter ids of one stage", NULL, 0);
            return false;
        }
        *ids = list;
        *stream = streams > 0;
        return true;
    }
    const char *name = json_is_string(stage) ? json_string_value(stage) : "";
    if (strcmp(name, API_DLT_STAGE) != 0 && strcmp(name, INTAKE_STAGE) != 0) {
        http_send_problem(r, SVC_EVALIDATION,
                          "send {\"ids\": [...]} or {\"stage\": \"payment\"|\"commands\"}", NULL,
                          0);
        return false;
    }
    *stream = strcmp(name, INTAKE_STAGE) == 0;
    return true;
}

/* The payment stage's replay; takes body (ids points into it). */
static void api_dlt_replay_payment(struct http_request *r, json_t *body, json_t *ids)
{
    struct work *w = atomic_load(&r->thread->app->work);
    if (w == NULL) {
        json_decref(body);
        http_send_problem(r, SVC_ENOT_FOUND, "this instance runs no workers (--workers off)", NULL,
                          0);
        return;
    }
    if (!work_holds(w, CMD_STAGE_PAYMENT)) {
        /* The replayed charge is started by the payment stage's holder: send it there. */
        char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1];
        char detail[STORE_LEASE_HOLDER_BYTES_MAX + 128];
        work_holder(w, CMD_STAGE_PAYMENT, holder, sizeof holder);
        snprintf(detail, sizeof detail,
                 "this instance does not hold the payment stage's lease: replay on its holder"
                 " (%s)",
                 holder[0] != '\0' ? holder : "unknown");
        json_decref(body);
        http_send_problem(r, SVC_EVERSION_CONFLICT, detail, NULL, 0);
        return;
    }
    char *out = h2o_mem_alloc_pool(&r->req->pool, LIST_BODY_BYTES_MAX);
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{\"ids\":[");
    struct api_dlt_replay replay = {w, ids, &b, 0, 0};
    int rc = store_reader_dead_letters(r->thread->reader, API_DLT_STAGE, DLT_LIST_MAX, &replay,
                                       api_dlt_replay_one);
    json_decref(body);
    if (rc != 0) {
        /* Those handed over already are replayed: a retry finds the rest. */
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, NULL, NULL, 0);
        return;
    }
    jbuf_lit(&b, "]");
    jbuf_kv_int(&b, "replayed", replay.replayed);
    jbuf_kv_int(&b, "deferred", replay.full);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b)); /* DLT_LIST_MAX ids of API_DLT_ID_BYTES_MAX fit */
    log_info("dlt: %" PRId64 " dead letters replayed", replay.replayed);
    http_send_json(r, 202, out, b.length);
}

void api_dlt_replay(struct http_request *r)
{
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        return;
    }
    json_t *ids = NULL;
    bool stream = false;
    if (!api_dlt_replay_decode(r, body, &ids, &stream)) {
        json_decref(body);
        return;
    }
    if (stream) {
        api_dlt_stream_replay(r, ids);
        json_decref(body);
        return;
    }
    api_dlt_replay_payment(r, body, ids);
}
