/*
 * prefetch.c - see prefetch.h. Names the keys of a batch (its idempotency keys, the
 * reservations it names, and on a shared backend the stock rows, stores and products it can
 * touch), asks the store once, and files what comes back: into the batch (records, ended
 * reservations, other instances' events) and, on a shared backend, into the domain as committed
 * state.
 */
#include "core/prefetch.h"

#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"

/* Stock rows a batch can name, per unit of its weight: a purchase without a store names its
 * sku in every store (weight 2), a reservation without one each line in every store (weight
 * 2 + 2 per line), so at most half the stores per unit, and two (a transfer's two stores) when
 * every command names its stores. */
#define PREFETCH_ITEMS_PER_WEIGHT(stores) ((stores) / 2 + 2)
/* Stores and skus a batch names: two stores per command, a sku per line and per command. */
#define PREFETCH_NAMES_MAX (2 * BATCH_COMMANDS_MAX + BATCH_COMMAND_WEIGHT_MAX)

struct prefetch {
    struct store_item_key *items; /* items_max, owned */
    size_t items_max;
    size_t item_count;
    const char *store_ids[PREFETCH_NAMES_MAX]; /* point into the batch's commands */
    size_t store_count;
    const char *skus[PREFETCH_NAMES_MAX];
    size_t sku_count;
    struct store_idem_key idems[BATCH_COMMANDS_MAX];
    size_t idem_count;
    int64_t reservation_seqs[BATCH_NAMED_RESERVATIONS_MAX];
    size_t reservation_count;
    const char *lease_stages[CMD_STAGE_COUNT]; /* the stages of the batch's worker steps */
    size_t lease_stage_count;
    int64_t adopt[PREFETCH_ADOPT_MAX]; /* expired reservations no instance expired (sweep) */
    uint32_t adopt_count;
    int64_t sweep_due_ms;  /* wall ms of the next sweep */
    struct domain *domain; /* the sink's target during one prefetch */
    struct batch *batch;
    bool shared;
};

struct prefetch *prefetch_new(uint32_t stores_max)
{
    SVC_ASSERT(stores_max >= 1 && stores_max <= CAPACITY_STORES_LIMIT);
    struct prefetch *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    p->items_max = (size_t)PREFETCH_ITEMS_PER_WEIGHT(stores_max) * BATCH_COMMAND_WEIGHT_MAX;
    p->items = calloc(p->items_max, sizeof *p->items);
    if (p->items == NULL) {
        free(p);
        return NULL;
    }
    SVC_ASSERT(p->adopt_count == 0);
    return p;
}

void prefetch_free(struct prefetch *p)
{
    if (p != NULL) {
        free(p->items);
    }
    free(p);
}

/* ---- naming the keys ---------------------------------------------------------------------- */

static void prefetch_item(struct prefetch *p, const char *store_id, const char *sku)
{
    SVC_ASSERT(p->item_count < p->items_max); /* the batch's weight bounds it */
    p->items[p->item_count++] = (struct store_item_key){store_id, sku};
}

static void prefetch_name(const char **names, size_t *count, const char *name)
{
    SVC_ASSERT(*count < PREFETCH_NAMES_MAX);
    names[(*count)++] = name;
}

/* The stock rows a command can touch on a shared backend: its store(s) times its sku(s); a
 * purchase or reservation without a store may take any store that stocks the sku. */
static void prefetch_command_items(struct prefetch *p, const struct domain *d,
                                   const struct command *cmd)
{
    const char *stores[2] = {NULL, NULL};
    uint32_t store_count = 0;
    bool any_store =
        (cmd->kind == CMD_PURCHASE || cmd->kind == CMD_RESERVE || cmd->kind == CMD_ORDER_CREATE) &&
        !cmd->has_store;
    if (cmd->kind == CMD_TICKET_RESET) {
        stores[store_count++] = d->stores[0].id;
    } else if (!any_store) {
        stores[store_count] = cmd->store_id;
        store_count += cmd->store_id[0] != '\0';
        stores[store_count] = cmd->to_store_id;
        store_count += cmd->to_store_id[0] != '\0';
    }
    for (uint32_t s = 0; s < store_count; s++) {
        prefetch_name(p->store_ids, &p->store_count, stores[s]);
    }
    uint32_t lines = cmd->lines != NULL ? cmd->lines->count : 0;
    for (uint32_t i = 0; i <= lines; i++) {
        const char *sku = i < lines ? cmd->lines->items[i].sku : cmd->sku;
        if (sku[0] == '\0') {
            continue;
        }
        prefetch_name(p->skus, &p->sku_count, sku);
        for (uint32_t s = 0; any_store && s < d->store_count; s++) {
            prefetch_item(p, d->stores[s].id, sku);
        }
        for (uint32_t s = 0; s < store_count; s++) {
            prefetch_item(p, stores[s], sku);
        }
    }
}

static void prefetch_reservation(struct prefetch *p, int64_t seq)
{
    SVC_ASSERT(seq >= 1);
    SVC_ASSERT(p->reservation_count < BATCH_NAMED_RESERVATIONS_MAX);
    p->reservation_seqs[p->reservation_count++] = seq;
}

/* The names of the stages' rows in worker_leases: the workers' (work/work.h) and the intake
 * consumer's (INTAKE_LEASE_STAGE of intake/intake.h, whose offset row is "commands"). */
static const char *const prefetch_stage_names[CMD_STAGE_COUNT] = {NULL, "order", "payment",
                                                                  "intake"};

/* Names stage's lease row, once per batch (shared backends: the fence of work/work.h). */
static void prefetch_lease(struct prefetch *p, enum cmd_stage stage)
{
    SVC_ASSERT(stage > CMD_STAGE_NONE && stage < CMD_STAGE_COUNT);
    const char *name = prefetch_stage_names[stage];
    for (size_t i = 0; i < p->lease_stage_count; i++) {
        if (p->lease_stages[i] == name) {
            return;
        }
    }
    SVC_ASSERT(p->lease_stage_count < CMD_STAGE_COUNT);
    p->lease_stages[p->lease_stage_count++] = name;
}

/* Names everything the batch (its commands and the reservations due) will read. */
static void prefetch_keys(struct prefetch *p, const struct domain *d, const struct batch *b)
{
    p->item_count = p->store_count = p->sku_count = p->idem_count = p->reservation_count = 0;
    p->lease_stage_count = 0;
    int64_t next_reservation = batch_peek_reservation_seq(b);
    if (p->shared) {
        p->reservation_count = res_due_seqs(&d->reservations, batch_now_ms(b), p->reservation_seqs,
                                            BATCH_EXPIRY_EVENTS_MAX);
    }
    for (size_t i = 0; i < batch_command_count(b); i++) {
        const struct command *cmd = batch_command(b, i);
        if (cmd->has_idem_key) {
            p->idems[p->idem_count++] = (struct store_idem_key){cmd->principal, cmd->idem_key};
        }
        bool names_reservation = cmd->kind == CMD_CONFIRM || cmd->kind == CMD_CANCEL ||
                                 cmd->kind == CMD_ORDER_CANCEL || cmd->kind == CMD_ORDER_STEP;
        if ((cmd->kind == CMD_ORDER_STEP || cmd->stage == CMD_STAGE_INTAKE) && p->shared) {
            prefetch_lease(p, cmd->stage);
        }
        if (names_reservation && p->shared) {
            prefetch_reservation(p, cmd->reservation_seq); /* locked and read fresh */
        } else if (names_reservation && cmd->reservation_seq < next_reservation &&
                   res_find(&d->reservations, cmd->reservation_seq) == NULL) {
            prefetch_reservation(p, cmd->reservation_seq); /* ended: how? */
        } else if (p->shared) {
            prefetch_command_items(p, d, cmd);
        }
    }
    for (uint32_t i = 0; i < p->adopt_count; i++) {
        prefetch_reservation(p, p->adopt[i]);
    }
    p->adopt_count = 0; /* read by this prefetch, then held and expired like our own */
}

/* ---- filing what comes back --------------------------------------------------------------- */

static int prefetch_on_store(void *context, const char *id, const char *name, int64_t latency_ms)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    return dom_load_store(p->domain, id, name, latency_ms);
}

static int prefetch_on_product(void *context, const char *sku, const char *name)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    return dom_load_product(p->domain, sku, name);
}

static int prefetch_on_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                            int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    return dom_load_item(p->domain, store_id, sku, on_hand, reserved, version, sold, updated_at_ms);
}

static int prefetch_on_reservation(void *context, int64_t seq, const char *store_id,
                                   const char *customer_id, int64_t expires_at_ms, int64_t version,
                                   int64_t created_at_ms)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared); /* an owned backend's ACTIVE ones are all in memory */
    return dom_load_reservation(p->domain, seq, store_id, customer_id, expires_at_ms, version,
                                created_at_ms);
}

static int prefetch_on_reservation_line(void *context, int64_t seq, const char *sku, int64_t qty)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    return dom_load_reservation_line(p->domain, seq, sku, qty);
}

static int prefetch_on_reservation_order(void *context, int64_t seq, int64_t order_seq,
                                         const char *order_status, int64_t pay_attempts)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    return dom_load_reservation_order(p->domain, seq, order_seq, order_status, pay_attempts);
}

static int prefetch_on_reservation_ended(void *context, int64_t seq, const char *status,
                                         int64_t version)
{
    struct prefetch *p = context;
    if (status != NULL && (strcmp(status, "ACTIVE") == 0 || strlen(status) >= 16)) {
        log_error("prefetch: reservation %lld reported ended as %s", (long long)seq, status);
        return SVC_ESTORAGE_UNAVAILABLE; /* the store broke its contract: refuse the batch */
    }
    dom_forget_reservation(p->domain, seq); /* another instance ended one we hold */
    batch_ended_add(p->batch, seq, status, version);
    return 0;
}

static int prefetch_on_idem(void *context, const struct store_idem_record *record)
{
    struct prefetch *p = context;
    int rc = batch_idem_record_add(p->batch, record);
    if (rc != 0) {
        log_error("prefetch: the idempotency records of the batch do not fit: %s",
                  svc_err_name(rc));
    }
    return rc;
}

static int prefetch_on_lease(void *context, const char *stage, int64_t token)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    for (int s = CMD_STAGE_NONE + 1; s < CMD_STAGE_COUNT; s++) {
        if (strcmp(stage, prefetch_stage_names[s]) == 0 && token >= 1) {
            batch_lease_set(p->batch, (enum cmd_stage)s, token);
            return 0;
        }
    }
    log_error("prefetch: a lease of stage %s with token %lld", stage, (long long)token);
    return SVC_ESTORAGE_UNAVAILABLE; /* the store broke its contract: refuse the batch */
}

static int prefetch_on_events(void *context, const struct row_event *rows, size_t count)
{
    struct prefetch *p = context;
    SVC_ASSERT(p->shared);
    (void)batch_gap_add(p->batch, rows, count); /* what does not fit, the follower reads */
    return 0;
}

int prefetch_batch(struct prefetch *p, struct store *s, struct domain *d, struct batch *b,
                   int64_t events_after)
{
    SVC_ASSERT(d->undo_count == 0); /* nothing applied yet */
    p->shared = store_is_shared(s);
    p->domain = d;
    p->batch = b;
    prefetch_keys(p, d, b);
    if (!p->shared && p->idem_count == 0 && p->reservation_count == 0) {
        return 0; /* nothing that memory does not hold */
    }
    struct store_prefetch_keys keys = {p->idems,
                                       p->idem_count,
                                       p->reservation_seqs,
                                       p->reservation_count,
                                       p->items,
                                       p->item_count,
                                       p->store_ids,
                                       p->store_count,
                                       p->skus,
                                       p->sku_count,
                                       events_after,
                                       p->lease_stages,
                                       p->lease_stage_count};
    if (p->shared) {
        batch_lease_fence(b); /* a stage the read reports no row of has no valid token */
    }
    struct store_sink sink = {p,
                              prefetch_on_store,
                              prefetch_on_product,
                              prefetch_on_item,
                              prefetch_on_reservation,
                              prefetch_on_reservation_line,
                              prefetch_on_reservation_ended,
                              prefetch_on_idem,
                              prefetch_on_events,
                              prefetch_on_reservation_order,
                              prefetch_on_lease};
    struct store_sequences sequences = {0, 0, 0};
    int rc = store_prefetch(s, &keys, &sink, &sequences);
    if (p->shared) {
        dom_commit(d); /* what was read is committed state, whether or not the batch goes on */
    }
    if (rc != 0) {
        log_error("prefetch: the batch's reads failed: %s", svc_err_name(rc));
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    if (p->shared) {
        struct batch_seqs seqs = {sequences.order_seq_max, sequences.event_seq_max,
                                  sequences.reservation_seq_max};
        batch_seqs_set(b, &seqs);
    }
    SVC_ASSERT(d->undo_count == 0);
    return 0;
}

bool prefetch_sweep(struct prefetch *p, struct store *s, const struct domain *d, int64_t now_ms)
{
    if (!store_is_shared(s) || now_ms < p->sweep_due_ms || p->adopt_count > 0) {
        return p->adopt_count > 0;
    }
    p->sweep_due_ms = now_ms + PREFETCH_SWEEP_INTERVAL_MS;
    int64_t due[PREFETCH_ADOPT_MAX];
    int n = store_reservations_due(s, now_ms - PREFETCH_SWEEP_GRACE_MS, due, PREFETCH_ADOPT_MAX);
    for (int i = 0; i < n; i++) {
        if (res_find(&d->reservations, due[i]) == NULL) {
            p->adopt[p->adopt_count++] = due[i];
        }
    }
    if (p->adopt_count > 0) {
        log_info("prefetch: adopting %u expired reservations of other instances", p->adopt_count);
    }
    return p->adopt_count > 0;
}
