/*
 * audit.h - the invariant audit: replays the event log and checks it against stored stock.
 *
 * For every (store, sku): onHand = the sum of the events' delta, reserved = the sum of their
 * reservedDelta, 0 <= reserved <= onHand after every event, each event's onHand/reserved equal
 * the running sums, and the stored stock item equals the sums at the end. Also: event seqs are
 * gap-free from 1. Used by GET /v1/admin/audit (on a thread of its own, api_audit.c) and
 * `stockd --audit`. Reads only; runs on the caller's thread with the caller's reader handle.
 */
#ifndef STOCKD_AUDIT_H
#define STOCKD_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Violations reported in full; more are counted. */
#define AUDIT_VIOLATIONS_REPORTED_MAX 20

struct audit_report {
    bool ok;
    int64_t events;       /* events read */
    int64_t stock_events; /* of which about one item */
    int64_t items;        /* (store, sku) pairs seen in the log or the table */
    int64_t violations;
    char *json; /* the report as a JSON object; owned, free with audit_report_free */
    size_t json_length;
};

/* Events read between two calls of a progress hook. */
#define AUDIT_PROGRESS_EVERY_EVENTS 50000

/* Optional: told how far the audit got, on the audit's thread. total is the last seq of the
 * snapshot (the events there are to read); events, how many were read so far. */
struct audit_progress {
    void (*fn)(void *context, int64_t events, int64_t total);
    void *context;
};

/* Runs the audit over the reader's database, calling progress (may be NULL) once after the
 * snapshot opened and every AUDIT_PROGRESS_EVERY_EVENTS events. 0 (report filled, ok or not)
 * or SVC_ESTORAGE_UNAVAILABLE / -ENOMEM. */
int audit_run(struct store_reader *reader, const struct audit_progress *progress,
              struct audit_report *out);
void audit_report_free(struct audit_report *report);

#endif
