/*
 * writer_shared.c - the writer's first step on a shared backend (several stockd instances on
 * one PostgreSQL database): before a batch applies, bring the memory it will read up to the
 * committed truth.
 *
 * The writer's memory is the truth only while no one else writes. On a shared database other
 * instances change stock, create stores, products and reservations, and end reservations this
 * instance holds. So every batch first names what it will touch (writer_shared_keys: stock
 * rows, reservations, stores, products, idempotency keys), the backend locks those rows and
 * reads them under its sequencer lock (store_prepare_batch), and the fresh values replace the
 * memory's as committed state (published at once, before any command applies). The batch
 * then runs exactly as on SQLite: apply in memory, write, commit.
 */
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "core/writer_internal.h"

/* Adds one stock-row key, growing the array (rare: the first large batches). */
static void shared_item_key(struct writer_shared *k, const char *store_id, const char *sku)
{
    if (k->item_count == k->item_capacity) {
        size_t capacity = k->item_capacity ? 2 * k->item_capacity : 1024;
        struct store_item_key *grown = realloc(k->items, capacity * sizeof *grown);
        SVC_ASSERT(grown != NULL);
        k->items = grown;
        k->item_capacity = capacity;
    }
    k->items[k->item_count++] = (struct store_item_key){store_id, sku};
}

static void shared_store(struct writer_shared *k, const char *store_id)
{
    SVC_ASSERT(k->store_count < WRITER_SHARED_NAMES_MAX);
    k->store_ids[k->store_count++] = store_id;
}

static void shared_sku(struct writer_shared *k, const char *sku)
{
    SVC_ASSERT(k->sku_count < WRITER_SHARED_NAMES_MAX);
    k->skus[k->sku_count++] = sku;
}

/* The stock rows a command can touch: its store(s) times its sku(s). A purchase without a
 * store may take any store that stocks the sku. */
static void shared_command_items(struct writer *w, const struct command *cmd)
{
    struct writer_shared *k = &w->batch->shared;
    const struct domain *d = w->config.domain;
    const char *stores[2] = {NULL, NULL};
    uint32_t store_count = 0;
    if (cmd->kind == CMD_TICKET_RESET) {
        stores[store_count++] = d->stores[0].id;
    } else if (cmd->kind != CMD_PURCHASE || cmd->has_store) {
        if (cmd->store_id[0] != '\0') {
            stores[store_count++] = cmd->store_id;
        }
        if (cmd->to_store_id[0] != '\0') {
            stores[store_count++] = cmd->to_store_id;
        }
    }
    for (uint32_t s = 0; s < store_count; s++) {
        shared_store(k, stores[s]);
    }
    uint32_t lines = cmd->lines != NULL ? cmd->lines->count : 0;
    for (uint32_t i = 0; i <= lines; i++) {
        const char *sku = i < lines ? cmd->lines->items[i].sku : cmd->sku;
        if (sku[0] == '\0') {
            continue;
        }
        shared_sku(k, sku);
        if (cmd->kind == CMD_PURCHASE && !cmd->has_store) {
            for (uint32_t s = 0; s < d->store_count; s++) {
                shared_item_key(k, d->stores[s].id, sku);
            }
        }
        for (uint32_t s = 0; s < store_count; s++) {
            shared_item_key(k, stores[s], sku);
        }
    }
}

/* Names everything the batch (its commands and the reservations due) will touch. */
static void writer_shared_keys(struct writer *w)
{
    struct writer_batch *b = w->batch;
    struct writer_shared *k = &b->shared;
    k->item_count = k->store_count = k->sku_count = k->idem_count = 0;
    k->reservation_count =
        res_due_seqs(&w->reservations, b->now_ms, k->reservation_seqs, WRITER_EXPIRY_EVENTS_MAX);
    for (size_t i = 0; i < b->command_count; i++) {
        const struct command *cmd = b->commands[i];
        if (cmd->has_idem_key) {
            k->idems[k->idem_count++] = (struct store_idem_key){cmd->principal, cmd->idem_key};
        }
        if (cmd->kind == CMD_CONFIRM || cmd->kind == CMD_CANCEL) {
            SVC_ASSERT(k->reservation_count < WRITER_SHARED_RESERVATIONS_MAX);
            k->reservation_seqs[k->reservation_count++] = cmd->reservation_seq;
            continue;
        }
        shared_command_items(w, cmd);
    }
    for (uint32_t i = 0; i < k->adopt_count; i++) {
        SVC_ASSERT(k->reservation_count < WRITER_SHARED_RESERVATIONS_MAX);
        k->reservation_seqs[k->reservation_count++] = k->adopt[i];
    }
    k->adopt_count = 0; /* loaded by this prepare, then held and expired like our own */
    k->loading_count = 0;
}

/* ---- fresh rows ------------------------------------------------------------------------- */

static int shared_fresh_store(void *context, const char *id, const char *name, int64_t latency_ms)
{
    struct writer *w = context;
    if (dom_store_find(w->config.domain, id) >= 0) {
        return 0; /* stores never change once created */
    }
    return dom_load_store(w->config.domain, id, name, latency_ms);
}

static int shared_fresh_product(void *context, const char *sku, const char *name)
{
    struct writer *w = context;
    if (dom_product_find(w->config.domain, sku) >= 0) {
        return 0;
    }
    return dom_load_product(w->config.domain, sku, name);
}

static int shared_fresh_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                             int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    struct writer *w = context;
    return dom_refresh_item(w->config.domain, store_id, sku, on_hand, reserved, version, sold,
                            updated_at_ms);
}

/* An ACTIVE reservation: one this instance does not hold (another made it) is loaded. */
static int shared_fresh_reservation(void *context, int64_t seq, const char *store_id,
                                    const char *customer_id, int64_t expires_at_ms, int64_t version,
                                    int64_t created_at_ms)
{
    struct writer *w = context;
    struct writer_shared *k = &w->batch->shared;
    if (res_find(&w->reservations, seq) != NULL) {
        return 0;
    }
    SVC_ASSERT(k->loading_count < WRITER_SHARED_RESERVATIONS_MAX);
    k->loading[k->loading_count++] = seq;
    return writer_load_reservation(w, seq, store_id, customer_id, expires_at_ms, version,
                                   created_at_ms);
}

static int shared_fresh_line(void *context, int64_t seq, const char *sku, int64_t qty)
{
    struct writer *w = context;
    const struct writer_shared *k = &w->batch->shared;
    for (uint32_t i = 0; i < k->loading_count; i++) {
        if (k->loading[i] == seq) {
            return writer_load_reservation_line(w, seq, sku, qty);
        }
    }
    return 0; /* held already, lines and all */
}

/* A reservation another instance ended (or that never existed): forget it here. */
static int shared_fresh_ended(void *context, int64_t seq)
{
    struct writer *w = context;
    struct reservation *r = res_find(&w->reservations, seq);
    if (r != NULL && r->status == RES_ACTIVE) {
        r->status = RES_CANCELLED; /* any final status: res_commit frees the slot */
        res_touch(&w->reservations, r);
    }
    return 0;
}

/* Other instances' committed events: into the read model before this batch's own, so that
 * what this instance acknowledges next is readable here with everything before it. */
static void shared_fresh_events(void *context, const struct row_event *rows, size_t count)
{
    struct writer *w = context;
    if (w->config.committed != NULL) {
        w->config.committed(rows, count, w->config.committed_context);
    }
}

int writer_shared_prepare(struct writer *w)
{
    SVC_ASSERT(store_is_shared(w->config.store));
    SVC_ASSERT(w->config.domain->dirty_count == 0);
    writer_shared_keys(w);
    const struct writer_shared *k = &w->batch->shared;
    int64_t seen = w->event_seq_committed;
    if (w->config.applied_seq != NULL) {
        int64_t applied = w->config.applied_seq(w->config.committed_context);
        seen = applied > seen ? applied : seen; /* the follower brought those already */
    }
    struct store_batch_keys keys = {k->items,
                                    k->item_count,
                                    k->reservation_seqs,
                                    k->reservation_count,
                                    k->store_ids,
                                    k->store_count,
                                    k->skus,
                                    k->sku_count,
                                    k->idems,
                                    k->idem_count,
                                    seen};
    struct store_loader fresh = {w,
                                 shared_fresh_store,
                                 shared_fresh_product,
                                 shared_fresh_item,
                                 shared_fresh_reservation,
                                 shared_fresh_line,
                                 shared_fresh_ended,
                                 shared_fresh_events};
    struct store_sequences sequences = {0, 0, 0};
    int rc = store_prepare_batch(w->config.store, &keys, &fresh, &sequences);
    /* What was read is committed state, whether or not the batch goes on. */
    dom_publish(w->config.domain);
    res_commit(&w->reservations);
    if (rc != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    SVC_ASSERT(sequences.order_seq_max >= 0 && sequences.event_seq_max >= 0);
    w->order_seq = w->order_seq_committed = sequences.order_seq_max;
    w->event_seq = w->event_seq_committed = sequences.event_seq_max;
    w->reservation_seq = w->reservation_seq_committed = sequences.reservation_seq_max;
    return 0;
}

bool writer_shared_sweep(struct writer *w, int64_t now_ms)
{
    struct writer_shared *k = &w->batch->shared;
    if (!store_is_shared(w->config.store) || now_ms < k->sweep_due_ms || k->adopt_count > 0) {
        return k->adopt_count > 0;
    }
    k->sweep_due_ms = now_ms + WRITER_SWEEP_INTERVAL_MS;
    int64_t due[WRITER_ADOPT_MAX];
    int n = store_reservations_due(w->config.store, now_ms - WRITER_SWEEP_GRACE_MS, due,
                                   WRITER_ADOPT_MAX);
    for (int i = 0; i < n; i++) {
        if (res_find(&w->reservations, due[i]) == NULL) {
            k->adopt[k->adopt_count++] = due[i];
        }
    }
    if (k->adopt_count > 0) {
        log_info("writer: adopting %u expired reservations of other instances", k->adopt_count);
    }
    return k->adopt_count > 0;
}
