/*
 * store.c - the store.h functions: each checks its arguments and the writer's rhythm, forwards
 * to the backend's operations table, and checks the answer.
 *
 * The assertions here are the storage contract's guard for every backend at once: no read
 * between store_apply_begin and store_apply_end (the writer's apply is pure), answers in their
 * documented ranges, the sink callbacks a call needs present. This file is not a backend and
 * knows none: it calls no backend function and includes no backend header (store_open.c opens
 * one by uri; the backends include only store.h). Read store_open.c next.
 */
#include "store/store.h"

#include <stddef.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"

/* True when an answer of a read is 0 or an error (a sink callback's error is passed on). */
static bool store_read_answer_ok(int rc)
{
    return rc <= 0;
}

/* True when every array of batch with rows has a pointer. */
static bool store_batch_well_formed(const struct store_batch *b)
{
    return (b->store_count == 0 || b->stores != NULL) &&
           (b->product_count == 0 || b->products != NULL) &&
           (b->item_count == 0 || b->items != NULL) && (b->order_count == 0 || b->orders != NULL) &&
           (b->idem_count == 0 || b->idems != NULL) && (b->event_count == 0 || b->events != NULL) &&
           (b->reservation_count == 0 || b->reservations != NULL) &&
           (b->reservation_line_count == 0 || b->reservation_lines != NULL);
}

/* ---- the writer handle -------------------------------------------------------------------- */

/* Closes the writer handle (see store.h); called by main at shutdown and by failed opens. */
void store_close(struct store *s)
{
    if (s == NULL) {
        return;
    }
    SVC_ASSERT(s->ops != NULL && s->ops->close != NULL);
    SVC_ASSERT(!s->applying);
    s->ops->close(s);
}

/* The backend's name, for logs and /metrics (see store.h). */
const char *store_backend_name(const struct store *s)
{
    SVC_ASSERT(s != NULL && s->ops != NULL);
    SVC_ASSERT(s->ops->name != NULL);
    return s->ops->name;
}

/* Whether other processes write the same database (see store.h); callable at any time, also
 * during apply: it reads a constant of the backend. */
bool store_is_shared(const struct store *s)
{
    SVC_ASSERT(s != NULL && s->ops != NULL);
    /* Only a shared backend has other instances' reservations to sweep. */
    SVC_ASSERT(s->ops->shared == (s->ops->reservations_due != NULL));
    return s->ops->shared;
}

/* Streams the stored state to sink at startup (see store.h). The prefetch-only callbacks must
 * be NULL: a load never reports ended reservations, idempotency records or gap events. */
int store_load(struct store *s, const struct store_sink *sink, struct store_sequences *out)
{
    SVC_ASSERT(s != NULL && sink != NULL && out != NULL);
    SVC_ASSERT(!s->applying);
    SVC_ASSERT(sink->on_store != NULL && sink->on_product != NULL && sink->on_item != NULL);
    SVC_ASSERT((sink->on_reservation == NULL) == (sink->on_reservation_line == NULL));
    SVC_ASSERT(sink->on_reservation_ended == NULL && sink->on_idem == NULL);
    SVC_ASSERT(sink->on_events == NULL);
    int rc = s->ops->load(s, sink, out);
    SVC_ASSERT(store_read_answer_ok(rc));
    if (rc == 0) {
        SVC_ASSERT(out->order_seq_max >= 0 && out->event_seq_max >= 0);
        SVC_ASSERT(out->reservation_seq_max >= 0);
    }
    return rc;
}

/* The batch's one round of reads (see store.h); called by the writer before every apply. */
int store_prefetch(struct store *s, const struct store_prefetch_keys *keys,
                   const struct store_sink *sink, struct store_sequences *out)
{
    SVC_ASSERT(s != NULL && keys != NULL && sink != NULL && out != NULL);
    SVC_ASSERT(!s->applying);
    SVC_ASSERT(keys->idem_count <= BATCH_COMMANDS_MAX);
    SVC_ASSERT(keys->idem_count == 0 || keys->idems != NULL);
    SVC_ASSERT(keys->reservation_count == 0 || keys->reservation_seqs != NULL);
    SVC_ASSERT(sink->on_idem != NULL && sink->on_reservation_ended != NULL);
    bool shared = store_is_shared(s);
    if (shared) {
        SVC_ASSERT(sink->on_store != NULL && sink->on_product != NULL && sink->on_item != NULL);
        SVC_ASSERT(sink->on_reservation != NULL && sink->on_reservation_line != NULL);
        SVC_ASSERT(sink->on_events != NULL);
        SVC_ASSERT(keys->item_count == 0 || keys->items != NULL);
        SVC_ASSERT(keys->store_count == 0 || keys->store_ids != NULL);
        SVC_ASSERT(keys->sku_count == 0 || keys->skus != NULL);
        SVC_ASSERT(keys->events_after >= 0);
    }
    int rc = s->ops->prefetch(s, keys, sink, out);
    SVC_ASSERT(store_read_answer_ok(rc));
    SVC_ASSERT(!s->applying); /* a sink callback must not start the apply */
    if (rc == 0 && shared) {
        SVC_ASSERT(out->order_seq_max >= 0 && out->event_seq_max >= 0);
        SVC_ASSERT(out->reservation_seq_max >= 0);
    }
    return rc;
}

/* Marks the beginning of the writer's pure apply step (see store.h). */
void store_apply_begin(struct store *s)
{
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(!s->applying); /* apply steps do not nest */
    s->applying = true;
}

/* Marks the end of the writer's pure apply step (see store.h). */
void store_apply_end(struct store *s)
{
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(s->applying); /* paired with store_apply_begin */
    s->applying = false;
}

/* Writes one batch in one transaction (see store.h); called by the writer after apply. */
int store_commit_batch(struct store *s, const struct store_batch *batch)
{
    SVC_ASSERT(s != NULL && batch != NULL);
    SVC_ASSERT(!s->applying);
    SVC_ASSERT(store_batch_well_formed(batch));
    int rc = s->ops->commit_batch(s, batch);
    SVC_ASSERT(rc == 0 || rc == STORE_COMMIT_RETRY || rc == SVC_ESTORAGE_UNAVAILABLE);
    /* Only another instance can win a race: a backend no one else writes never asks to redo. */
    if (rc == STORE_COMMIT_RETRY) {
        SVC_ASSERT(s->ops->shared);
    }
    return rc;
}

/* Housekeeping between batches (see store.h); called by the writer after the replies left. */
void store_batch_done(struct store *s)
{
    SVC_ASSERT(s != NULL && s->ops->batch_done != NULL);
    SVC_ASSERT(!s->applying);
    s->ops->batch_done(s);
}

/* See store.h. */
bool store_sweep_set(struct store_idem_sweep *sweep, const char *principal, size_t p_len,
                     const char *key, size_t k_len)
{
    SVC_ASSERT(principal != NULL && key != NULL);
    if (p_len >= sizeof sweep->principal || k_len >= sizeof sweep->key) {
        log_error("idempotency sweep: a stored key of %zu+%zu bytes is longer than the cursor"
                  " holds; starting the sweep again",
                  p_len, k_len);
        return false;
    }
    memcpy(sweep->principal, principal, p_len);
    sweep->principal[p_len] = '\0';
    memcpy(sweep->key, key, k_len);
    sweep->key[k_len] = '\0';
    return true;
}

/* A step of the sweep that deletes old idempotency records (see store.h); called by the
 * writer when idle. */
int store_idem_prune(struct store *s, int64_t before_ms, int max_rows, bool *swept)
{
    SVC_ASSERT(s != NULL && max_rows >= 1 && swept != NULL);
    SVC_ASSERT(!s->applying);
    *swept = false;
    int rc = s->ops->idem_prune(s, &s->idem_sweep, before_ms, max_rows, swept);
    SVC_ASSERT(rc == SVC_ESTORAGE_UNAVAILABLE || (rc >= 0 && rc <= max_rows));
    SVC_ASSERT(!*swept || (s->idem_sweep.principal[0] == '\0' && s->idem_sweep.key[0] == '\0'));
    return rc;
}

/* The expired ACTIVE reservations of all instances (see store.h); shared backends only. */
int store_reservations_due(struct store *s, int64_t before_ms, int64_t *out, int max)
{
    SVC_ASSERT(s != NULL && out != NULL && max >= 1);
    SVC_ASSERT(!s->applying);
    SVC_ASSERT(store_is_shared(s) && s->ops->reservations_due != NULL);
    int rc = s->ops->reservations_due(s, before_ms, out, max);
    SVC_ASSERT(rc == SVC_ESTORAGE_UNAVAILABLE || (rc >= 0 && rc <= max));
    for (int i = 0; i < rc; i++) {
        SVC_ASSERT(out[i] >= 1);
    }
    return rc;
}

/* The busy waits of the writer's connection (see store.h). Call it on the writer's thread (or
 * with the writer stopped): it asserts the handle is not applying, which only that thread may
 * read. The counter itself is atomic in the backend. */
uint64_t store_busy_wait_count(struct store *s)
{
    SVC_ASSERT(s != NULL && s->ops->busy_wait_count != NULL);
    /* Not a read of storage but a counter (/metrics reads it from an I/O thread while the
     * writer may be applying): no applying check here. */
    uint64_t count = s->ops->busy_wait_count(s);
    SVC_ASSERT(count < UINT64_MAX);
    return count;
}

/* The write-ahead log's counters (see store.h); any thread (/metrics). */
void store_wal_counts(struct store *s, struct store_wal_counts *out)
{
    SVC_ASSERT(s != NULL && out != NULL);
    *out = (struct store_wal_counts){0, 0};
    if (s->ops->wal_counts != NULL) {
        s->ops->wal_counts(s, out);
    }
}

/* See store.h; called by the writer after each batch. */
uint64_t store_session_count(struct store *s)
{
    SVC_ASSERT(s != NULL && s->ops != NULL);
    SVC_ASSERT(!s->applying);
    return s->ops->session_count != NULL ? s->ops->session_count(s) : 0;
}

/* ---- reader handles ------------------------------------------------------------------------ */

/* Closes a reader handle (see store.h); called by the thread that opened it. */
void store_reader_close(struct store_reader *r)
{
    if (r == NULL) {
        return;
    }
    SVC_ASSERT(r->ops != NULL && r->ops->close != NULL);
    r->ops->close(r);
}

/* Reads one order's columns (see store.h); called by the HTTP order handler. */
int store_reader_order(struct store_reader *r, int64_t order_seq, struct store_order_row *out)
{
    SVC_ASSERT(r != NULL && out != NULL);
    SVC_ASSERT(order_seq >= 1);
    int rc = r->ops->order(r, order_seq, out);
    SVC_ASSERT(rc == 0 || rc == 1 || rc == SVC_ESTORAGE_UNAVAILABLE);
    if (rc == 1) {
        SVC_ASSERT(out->customer_id != NULL && out->store_id != NULL && out->status != NULL);
        SVC_ASSERT(out->lines_json != NULL && out->history_json != NULL);
    }
    return rc;
}

/* Reads one reservation with its lines (see store.h); an I/O thread's fallback read. */
int store_reader_reservation(struct store_reader *r, int64_t reservation_seq,
                             struct store_reservation_row *out)
{
    SVC_ASSERT(r != NULL && out != NULL);
    SVC_ASSERT(reservation_seq >= 1);
    int rc = r->ops->reservation(r, reservation_seq, out);
    SVC_ASSERT(rc == 0 || rc == 1 || rc == SVC_ESTORAGE_UNAVAILABLE);
    if (rc == 1) {
        SVC_ASSERT(out->store_id != NULL && out->customer_id != NULL && out->status != NULL);
        SVC_ASSERT(out->line_count >= 1 && out->line_count <= CMD_LINES_MAX);
        SVC_ASSERT(out->version >= 1);
    }
    return rc;
}

/* Streams events after since_seq (see store.h); called by handlers, the projector, the
 * follower and the audit. */
int store_reader_events(struct store_reader *r, int64_t since_seq, const char *store_id,
                        const char *sku, int limit, void *context,
                        int (*each_event)(void *context, const struct row_event *row))
{
    SVC_ASSERT(r != NULL && each_event != NULL);
    SVC_ASSERT(since_seq >= 0 && limit >= 1);
    return r->ops->events(r, since_seq, store_id, sku, limit, context, each_event);
}

/* Streams events of some types (see store.h); called by the workers. */
int store_reader_events_of(struct store_reader *r, int64_t since_seq, int64_t until_seq,
                           const char *const *types, int type_count, int limit, void *context,
                           int (*each_event)(void *context, const struct row_event *row),
                           int *count_out)
{
    SVC_ASSERT(r != NULL && each_event != NULL && count_out != NULL);
    SVC_ASSERT(since_seq >= 0 && until_seq >= since_seq && limit >= 1);
    SVC_ASSERT(types != NULL && type_count >= 1 && type_count <= STORE_EVENT_TYPES_MAX);
    *count_out = 0;
    int rc = r->ops->events_of(r, since_seq, until_seq, types, type_count, limit, context,
                               each_event, count_out);
    SVC_ASSERT(*count_out >= 0 && *count_out <= limit);
    return rc;
}

/* Streams every stock item (see store.h); called by the audit. */
int store_reader_items(struct store_reader *r, void *context,
                       int (*each_item)(void *context, const char *store_id, const char *sku,
                                        int64_t on_hand, int64_t reserved))
{
    SVC_ASSERT(r != NULL);
    SVC_ASSERT(each_item != NULL);
    return r->ops->items(r, context, each_item);
}

/* The highest event seq (see store.h); called by the projector and the follower. */
int store_reader_event_seq_max(struct store_reader *r, int64_t *out)
{
    SVC_ASSERT(r != NULL && out != NULL);
    int rc = r->ops->event_seq_max(r, out);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    if (rc == 0) {
        SVC_ASSERT(*out >= 0);
    }
    return rc;
}

/* Looks up one idempotency record (see store.h); called by GET /v1/idempotency/{key}. */
int store_reader_idem(struct store_reader *r, const char *principal, const char *key,
                      struct store_idem_view *out)
{
    SVC_ASSERT(r != NULL && out != NULL);
    SVC_ASSERT(principal != NULL && key != NULL);
    int rc = r->ops->idem(r, principal, key, out);
    SVC_ASSERT(rc == 0 || rc == 1 || rc == SVC_ESTORAGE_UNAVAILABLE);
    if (rc == 1) {
        SVC_ASSERT(out->body != NULL && out->status >= 100 && out->status <= 599);
    }
    return rc;
}

/* Waits for another instance's commit (see store.h); called by the follower. */
int store_reader_wait(struct store_reader *r, int timeout_ms, int64_t *seq_out)
{
    SVC_ASSERT(r != NULL && seq_out != NULL);
    SVC_ASSERT(timeout_ms >= 0);
    *seq_out = 0;
    if (r->ops->wait == NULL) {
        return 0; /* no other process writes the database: nothing to wait for */
    }
    int rc = r->ops->wait(r, timeout_ms, seq_out);
    SVC_ASSERT(rc == 0 || rc == 1 || rc == SVC_ESTORAGE_UNAVAILABLE);
    SVC_ASSERT(*seq_out >= 0);
    return rc;
}

/* See store.h; called by the audit around its two scans. */
int store_reader_snapshot_begin(struct store_reader *r)
{
    SVC_ASSERT(r != NULL && r->ops->snapshot_begin != NULL);
    int rc = r->ops->snapshot_begin(r);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}

/* See store.h. */
int store_reader_snapshot_end(struct store_reader *r)
{
    SVC_ASSERT(r != NULL && r->ops->snapshot_end != NULL);
    int rc = r->ops->snapshot_end(r);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}

/* See store.h; called by each I/O thread after opening its reader. */
void store_reader_watch_recoveries(struct store_reader *r, const _Atomic uint64_t *recoveries)
{
    SVC_ASSERT(r != NULL && r->ops != NULL);
    SVC_ASSERT(recoveries != NULL);
    if (r->ops->watch_recoveries != NULL) {
        r->ops->watch_recoveries(r, recoveries);
    }
}

int store_reader_stage_offset(struct store_reader *r, const char *stage, int64_t *out)
{
    SVC_ASSERT(r != NULL && stage != NULL && out != NULL);
    *out = 0;
    int rc = r->ops->stage_offset(r, stage, out);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    SVC_ASSERT(*out >= 0);
    return rc;
}

int store_reader_relay_offset(struct store_reader *r, const char *name, int64_t *out)
{
    SVC_ASSERT(r != NULL && name != NULL && out != NULL);
    *out = 0;
    int rc = r->ops->relay_offset(r, name, out);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    SVC_ASSERT(*out >= 0);
    return rc;
}

int store_reader_relay_offset_save(struct store_reader *r, const char *name, int64_t seq,
                                   int64_t at_ms)
{
    SVC_ASSERT(r != NULL && name != NULL);
    SVC_ASSERT(seq >= 0);
    int rc = r->ops->relay_offset_save(r, name, seq, at_ms);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}

int store_reader_lease(struct store_reader *r, const char *stage, const char *holder, int64_t token,
                       int64_t ttl_ms, struct store_lease *out)
{
    SVC_ASSERT(r != NULL && stage != NULL && holder != NULL && out != NULL);
    SVC_ASSERT(holder[0] != '\0' && strlen(holder) <= STORE_LEASE_HOLDER_BYTES_MAX);
    SVC_ASSERT(token >= 0 && ttl_ms >= 0 && (ttl_ms > 0 || token > 0));
    memset(out, 0, sizeof *out);
    if (r->ops->lease == NULL) {
        out->held = true; /* one process: nobody to share the stage with */
        out->token = 1;
        strcpy(out->holder, holder);
        return 0;
    }
    int rc = r->ops->lease(r, stage, holder, token, ttl_ms, out);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    SVC_ASSERT(rc == 0 || !out->held);
    SVC_ASSERT(!out->held || (out->token >= 1 && strcmp(out->holder, holder) == 0));
    return rc;
}

int store_reader_payments_in_doubt(struct store_reader *r, void *context,
                                   int (*each)(void *context, const struct store_payment_row *row))
{
    SVC_ASSERT(r != NULL && each != NULL);
    int rc = r->ops->payments_in_doubt(r, context, each);
    SVC_ASSERT(rc <= 0 || rc > 0); /* the callback's own value passes through */
    return rc;
}

int store_reader_dead_letters(struct store_reader *r, const char *stage, int limit, void *context,
                              int (*each)(void *context, const struct store_dead_letter_row *row))
{
    SVC_ASSERT(r != NULL && each != NULL);
    SVC_ASSERT(limit >= 1 && limit <= DLT_LIST_MAX);
    return r->ops->dead_letters(r, stage, limit, context, each);
}

int store_reader_stream_messages(struct store_reader *r, const char *stage, int limit,
                                 void *context,
                                 int (*each)(void *context,
                                             const struct store_stream_message_row *row))
{
    SVC_ASSERT(r != NULL && stage != NULL && each != NULL);
    SVC_ASSERT(limit >= 1 && limit <= DLT_LIST_MAX);
    return r->ops->stream_messages(r, stage, limit, context, each);
}

int store_reader_stream_replayed(struct store_reader *r, const char *stage, const int64_t *offsets,
                                 size_t count, int64_t at_ms)
{
    SVC_ASSERT(r != NULL && stage != NULL && offsets != NULL);
    SVC_ASSERT(count >= 1 && count <= DLT_REPLAY_MESSAGES_MAX);
    for (size_t i = 0; i < count; i++) {
        SVC_ASSERT(offsets[i] >= 0);
    }
    int rc = r->ops->stream_replayed(r, stage, offsets, count, at_ms);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}

/* Writes a snapshot row between batches (see store.h). */
int store_snapshot_write(struct store *s, const struct row_snapshot *row, int64_t keep_from_seq)
{
    SVC_ASSERT(s != NULL && row != NULL && !s->applying);
    SVC_ASSERT(row->seq >= 0 && row->format >= 1);
    SVC_ASSERT(row->body != NULL && row->length >= 1);
    SVC_ASSERT(keep_from_seq >= 0 && keep_from_seq <= row->seq);
    int rc = s->ops->snapshot_write(s, row, keep_from_seq);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}

/* Reads the newest snapshot below below_seq (see store.h). */
int store_snapshot_read(struct store *s, int64_t below_seq, void *context,
                        void (*each)(void *context, const struct row_snapshot *row))
{
    SVC_ASSERT(s != NULL && each != NULL && !s->applying);
    SVC_ASSERT(below_seq >= 1);
    int rc = s->ops->snapshot_read(s, below_seq, context, each);
    SVC_ASSERT(rc == 0 || rc == 1 || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}
