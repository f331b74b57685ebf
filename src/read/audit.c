/*
 * audit.c - see audit.h. Decodes every event with the catalogue's decoder (core/events.h),
 * builds per-item running sums in a jansson object keyed by "<storeId>\t<sku>" (an admin path:
 * allocation is fine here), then compares them with the stored stock items.
 */
#include "read/audit.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "core/events.h"

/* Bytes to decode one stored event into: its text and its lines. */
#define AUDIT_DECODE_BYTES (64 * 1024)

struct audit_state {
    char *scratch;      /* AUDIT_DECODE_BYTES, owned: the decoder's arena */
    json_t *sums;       /* key -> [onHandSum, reservedSum], owned */
    json_t *violations; /* array of {seq?, storeId, sku, problem}, owned */
    int64_t last_seq;
    struct audit_report *report;
    const struct audit_progress *progress; /* borrowed, may be NULL */
    int64_t total;                         /* the snapshot's last seq */
};

static void audit_violation(struct audit_state *st, int64_t seq, const char *store_id,
                            const char *sku, const char *problem)
{
    st->report->violations++;
    if (json_array_size(st->violations) >= AUDIT_VIOLATIONS_REPORTED_MAX) {
        return;
    }
    json_t *v = json_pack("{s:s,s:s,s:s}", "storeId", store_id ? store_id : "", "sku",
                          sku ? sku : "", "problem", problem);
    if (seq > 0) {
        json_object_set_new(v, "seq", json_integer(seq));
    }
    json_array_append_new(st->violations, v);
}

static json_t *audit_sums_of(struct audit_state *st, const char *store_id, const char *sku)
{
    char key[STORE_ID_BYTES_MAX + SKU_BYTES_MAX + 2];
    snprintf(key, sizeof key, "%s\t%s", store_id, sku);
    json_t *sums = json_object_get(st->sums, key);
    if (sums == NULL) {
        sums = json_pack("[I,I]", (json_int_t)0, (json_int_t)0);
        json_object_set_new(st->sums, key, sums);
        st->report->items++;
    }
    return sums;
}

/* Folds one stock event into its item's sums and checks the event against them. */
static void audit_stock_event(struct audit_state *st, const struct event *e)
{
    json_t *sums = audit_sums_of(st, e->store_id, e->sku);
    json_int_t on_hand = json_integer_value(json_array_get(sums, 0)) + e->delta;
    json_int_t reserved = json_integer_value(json_array_get(sums, 1)) + e->reserved_delta;
    json_integer_set(json_array_get(sums, 0), on_hand);
    json_integer_set(json_array_get(sums, 1), reserved);
    if (reserved < 0 || reserved > on_hand || on_hand < 0) {
        audit_violation(st, e->seq, e->store_id, e->sku,
                        "0 <= reserved <= onHand broken by this event");
    }
    if ((e->present & EVF(ON_HAND)) == 0 || e->on_hand != on_hand) {
        audit_violation(st, e->seq, e->store_id, e->sku,
                        "the event's onHand differs from the sum of deltas");
    }
    if ((e->present & EVF(RESERVED)) != 0 && e->reserved != reserved) {
        audit_violation(st, e->seq, e->store_id, e->sku,
                        "the event's reserved differs from the sum of reservedDelta");
    }
}

static int audit_each_event(void *context, const struct row_event *row)
{
    struct audit_state *st = context;
    SVC_ASSERT(row->seq > st->last_seq);
    if (row->seq != st->last_seq + 1) {
        audit_violation(st, row->seq, row->store_id, row->sku, "a gap in the event seqs");
    }
    st->last_seq = row->seq;
    st->report->events++;
    if (st->progress != NULL && st->report->events % AUDIT_PROGRESS_EVERY_EVENTS == 0) {
        st->progress->fn(st->progress->context, st->report->events, st->total);
    }
    struct event_arena arena = {st->scratch, AUDIT_DECODE_BYTES, 0};
    struct event e;
    int rc = event_decode(row, &e, &arena);
    if (rc == 0 && (e.type == EVENT_UNKNOWN || !event_type_is_stock(e.type))) {
        return 0; /* not about one item's stock (or of a newer build: the sums will tell) */
    }
    if (rc != 0 || e.store_id == NULL || e.sku == NULL || (e.present & EVF(DELTA)) == 0) {
        audit_violation(st, row->seq, row->store_id, row->sku, "a stock event without delta");
        return 0;
    }
    st->report->stock_events++;
    audit_stock_event(st, &e);
    return 0;
}

static int audit_each_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                           int64_t reserved)
{
    struct audit_state *st = context;
    json_t *sums = audit_sums_of(st, store_id, sku);
    if (json_integer_value(json_array_get(sums, 0)) != on_hand) {
        audit_violation(st, 0, store_id, sku, "stored onHand differs from the sum of deltas");
    }
    if (json_integer_value(json_array_get(sums, 1)) != reserved) {
        audit_violation(st, 0, store_id, sku, "stored reserved differs from the log");
    }
    json_array_append_new(sums, json_true()); /* marks: the table has this item */
    return 0;
}

/* Items the log knows but the table does not (the third element marks seen ones). */
static void audit_missing_items(struct audit_state *st)
{
    const char *key = NULL;
    json_t *sums = NULL;
    json_object_foreach(st->sums, key, sums)
    {
        if (json_array_size(sums) < 3 && json_integer_value(json_array_get(sums, 0)) != 0) {
            audit_violation(st, 0, key, NULL, "the log has stock for an item the table lacks");
        }
    }
}

int audit_run(struct store_reader *reader, const struct audit_progress *progress,
              struct audit_report *out)
{
    SVC_ASSERT(reader != NULL && out != NULL);
    SVC_ASSERT(progress == NULL || progress->fn != NULL);
    memset(out, 0, sizeof *out);
    struct audit_state st = {
        malloc(AUDIT_DECODE_BYTES), json_object(), json_array(), 0, out, progress, 0};
    if (st.scratch == NULL) {
        json_decref(st.sums);
        json_decref(st.violations);
        return -ENOMEM;
    }
    /* One snapshot for both scans: read apart, a batch committed in between made the log and
     * the stock rows disagree, and the audit reported a violation under load (issue 10). */
    int rc = store_reader_snapshot_begin(reader);
    if (rc == 0) {
        rc = store_reader_event_seq_max(reader, &st.total);
        if (rc == 0 && progress != NULL) {
            progress->fn(progress->context, 0, st.total);
        }
        rc = rc == 0 ? store_reader_events(reader, 0, NULL, NULL, INT32_MAX, &st, audit_each_event)
                     : rc;
        rc = rc == 0 ? store_reader_items(reader, &st, audit_each_item) : rc;
        int ended = store_reader_snapshot_end(reader);
        rc = rc == 0 ? ended : rc;
    }
    if (rc == 0) {
        audit_missing_items(&st);
        out->ok = out->violations == 0;
        json_t *report =
            json_pack("{s:b,s:I,s:I,s:I,s:I,s:O}", "ok", out->ok, "events", (json_int_t)out->events,
                      "stockEvents", (json_int_t)out->stock_events, "items", (json_int_t)out->items,
                      "violationCount", (json_int_t)out->violations, "violations", st.violations);
        out->json = json_dumps(report, JSON_COMPACT);
        out->json_length = out->json ? strlen(out->json) : 0;
        json_decref(report);
        rc = out->json ? 0 : -ENOMEM;
    }
    json_decref(st.sums);
    json_decref(st.violations);
    free(st.scratch);
    return rc;
}

void audit_report_free(struct audit_report *report)
{
    free(report->json);
    report->json = NULL;
}
