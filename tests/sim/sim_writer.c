/*
 * sim_writer.c - a deterministic simulation of the writer core (STYLE 19).
 *
 * The writer runs on this thread against sim_store, an in-memory backend of store.h that
 * checks what the database's constraints would (CHECKs, unique keys, gap-free event seqs) and
 * fails commits on purpose (a seeded fraction of them: nothing of the batch is kept). A seeded
 * PRNG draws the workload (purchases, adjustments, reservations, confirms, cancels, keys reused
 * with the same and with another body), fake time moves on between batches (reservations
 * expire), and now and then the process "restarts": a new domain and writer load from the
 * store. After every batch the driver checks:
 *   - the writer's own invariants and the domain's (0 <= reserved <= on_hand);
 *   - the durable stock equals the event log: per item, on_hand and reserved are the sums of
 *     their events' deltas (the audit's invariant);
 *   - the published domain equals the durable stock, item by item;
 *   - every 201 purchase is a durable order, and no order exists without one;
 *   - a key answered twice is answered with the same bytes.
 * On a failure it prints seed=N; `sim_writer N` replays that run. Not a unit test of one
 * module (tests/unit/) and not the real database (tests/blackbox/).
 */
#include "../../src/core/writer.c"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the seeded world ------------------------------------------------------------------- */

#define SIM_STEPS 3000
#define SIM_STORES 3
#define SIM_SKUS 4
#define SIM_KEYS 80000 /* idempotency keys a run may use: "k<index>" */
#define SIM_ITEMS_MAX (SIM_STORES * SIM_SKUS)
#define SIM_ORDERS_MAX (SIM_STEPS * 40)
#define SIM_RESERVATIONS_MAX (SIM_STEPS * 40)
#define SIM_BATCH_MAX 48
#define SIM_FAIL_PERCENT 7 /* commits that fail on purpose */

static uint64_t sim_seed;
static uint64_t sim_rng;
static int64_t sim_now_ms = 1700000000000LL;

static uint64_t sim_next(void)
{
    sim_rng ^= sim_rng << 13;
    sim_rng ^= sim_rng >> 7;
    sim_rng ^= sim_rng << 17;
    return sim_rng;
}

static uint32_t sim_below(uint32_t n)
{
    return (uint32_t)(sim_next() % n);
}

static int64_t sim_wall_ms(void)
{
    return sim_now_ms;
}

#define SIM_CHECK(cond)                                                                   \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "sim_writer: %s:%d: check failed: %s\nseed=%llu\n", __FILE__, \
                    __LINE__, #cond, (unsigned long long)sim_seed);                       \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* ---- sim_store: an in-memory backend with the database's constraints ---------------------- */

struct sim_item {
    char store_id[STORE_ID_BYTES_MAX + 1];
    char sku[SKU_BYTES_MAX + 1];
    int64_t on_hand, reserved, version, sold, updated_at_ms;
    int64_t event_delta_sum, event_reserved_sum; /* what the event log says */
};

struct sim_idem { /* the record of key "k<index>", at idems[index] */
    bool stored;
    uint64_t fingerprint;
    int status;
    bool problem;
    char *body; /* owned, body_length bytes */
    size_t body_length;
};

struct sim_reservation {
    int64_t seq;
    char status[16];
    int64_t version;
    char store_id[STORE_ID_BYTES_MAX + 1];
    int64_t expires_at_ms, created_at_ms;
    char sku[SKU_BYTES_MAX + 1];
    int64_t qty;
};

struct sim_store {
    struct store base;
    char stores[SIM_STORES][STORE_ID_BYTES_MAX + 1];
    int store_count;
    char skus[SIM_SKUS][SKU_BYTES_MAX + 1];
    int sku_count;
    struct sim_item items[SIM_ITEMS_MAX];
    int item_count;
    struct sim_idem *idems; /* SIM_KEYS */
    bool *orders;           /* SIM_ORDERS_MAX: order seq exists */
    int64_t order_max;
    int64_t event_max;
    struct sim_reservation *reservations; /* SIM_RESERVATIONS_MAX, index = seq */
    int64_t reservation_max;
    char found_body[REPLY_BODY_BYTES_MAX];
};

static struct sim_store sim;

static struct sim_item *sim_item(const char *store_id, const char *sku)
{
    for (int i = 0; i < sim.item_count; i++) {
        if (strcmp(sim.items[i].store_id, store_id) == 0 && strcmp(sim.items[i].sku, sku) == 0) {
            return &sim.items[i];
        }
    }
    return NULL;
}

/* The record slot of key "k<index>". */
static struct sim_idem *sim_idem(const char *key)
{
    SIM_CHECK(key[0] == 'k');
    unsigned long index = strtoul(key + 1, NULL, 10);
    SIM_CHECK(index < SIM_KEYS);
    return &sim.idems[index];
}

static int sim_load(struct store *base, const struct store_loader *loader,
                    struct store_sequences *out)
{
    (void)base;
    int rc = 0;
    for (int i = 0; rc == 0 && i < sim.store_count; i++) {
        rc = loader->on_store(loader->context, sim.stores[i], "Store", 0);
    }
    for (int i = 0; rc == 0 && i < sim.sku_count; i++) {
        rc = loader->on_product(loader->context, sim.skus[i], "Product");
    }
    for (int i = 0; rc == 0 && i < sim.item_count; i++) {
        const struct sim_item *it = &sim.items[i];
        rc = loader->on_item(loader->context, it->store_id, it->sku, it->on_hand, it->reserved,
                             it->version, it->sold, it->updated_at_ms);
    }
    for (int64_t seq = 1; rc == 0 && seq <= sim.reservation_max; seq++) {
        const struct sim_reservation *r = &sim.reservations[seq];
        if (strcmp(r->status, "ACTIVE") == 0) {
            rc = loader->on_reservation(loader->context, seq, r->store_id, "cust", r->expires_at_ms,
                                        r->version, r->created_at_ms);
            rc = rc == 0 ? loader->on_reservation_line(loader->context, seq, r->sku, r->qty) : rc;
        }
    }
    *out = (struct store_sequences){sim.order_max, sim.event_max, sim.reservation_max};
    return rc;
}

static int sim_idem_find(struct store *base, const char *principal, const char *key,
                         struct store_idem_found *out)
{
    (void)base;
    (void)principal;
    const struct sim_idem *found = sim_idem(key);
    if (!found->stored) {
        return 0;
    }
    memcpy(sim.found_body, found->body, found->body_length);
    *out = (struct store_idem_found){found->fingerprint, found->status, found->problem,
                                     sim.found_body, found->body_length};
    return 1;
}

static int sim_reservation_status(struct store *base, int64_t seq, char status_out[16],
                                  int64_t *version_out)
{
    (void)base;
    if (seq < 1 || seq > sim.reservation_max) {
        return 0;
    }
    snprintf(status_out, 16, "%s", sim.reservations[seq].status);
    *version_out = sim.reservations[seq].version;
    return 1;
}

static void sim_commit_items(const struct store_batch *b)
{
    for (size_t i = 0; i < b->item_count; i++) {
        const struct row_item *row = &b->items[i];
        SIM_CHECK(row->on_hand >= 0 && row->reserved >= 0 && row->reserved <= row->on_hand);
        struct sim_item *it = sim_item(row->store_id, row->sku);
        if (it == NULL) {
            SIM_CHECK(sim.item_count < SIM_ITEMS_MAX);
            it = &sim.items[sim.item_count++];
            memset(it, 0, sizeof *it);
            snprintf(it->store_id, sizeof it->store_id, "%s", row->store_id);
            snprintf(it->sku, sizeof it->sku, "%s", row->sku);
        }
        SIM_CHECK(row->version > it->version); /* the upsert's guard */
        it->on_hand = row->on_hand;
        it->reserved = row->reserved;
        it->version = row->version;
        it->sold = row->sold;
        it->updated_at_ms = row->updated_at_ms;
    }
}

static void sim_commit_records(const struct store_batch *b)
{
    for (size_t i = 0; i < b->store_count; i++) {
        SIM_CHECK(sim.store_count < SIM_STORES);
        snprintf(sim.stores[sim.store_count++], STORE_ID_BYTES_MAX + 1, "%s",
                 b->stores[i].store_id);
    }
    for (size_t i = 0; i < b->product_count; i++) {
        SIM_CHECK(sim.sku_count < SIM_SKUS);
        snprintf(sim.skus[sim.sku_count++], SKU_BYTES_MAX + 1, "%s", b->products[i].sku);
    }
    for (size_t i = 0; i < b->order_count; i++) {
        int64_t seq = b->orders[i].order_seq;
        SIM_CHECK(seq >= 1 && seq < SIM_ORDERS_MAX && !sim.orders[seq]); /* primary key */
        sim.orders[seq] = true;
        sim.order_max = seq > sim.order_max ? seq : sim.order_max;
    }
    for (size_t i = 0; i < b->idem_count; i++) {
        const struct row_idem *row = &b->idems[i];
        struct sim_idem *idem = sim_idem(row->idem_key);
        SIM_CHECK(!idem->stored); /* unique (principal, key) */
        SIM_CHECK(row->body_length <= REPLY_BODY_BYTES_MAX);
        idem->stored = true;
        idem->fingerprint = row->fingerprint;
        idem->status = row->status;
        idem->problem = row->problem;
        idem->body = malloc(row->body_length + 1);
        SIM_CHECK(idem->body != NULL);
        memcpy(idem->body, row->body, row->body_length);
        idem->body_length = row->body_length;
    }
}

static void sim_commit_events(const struct store_batch *b)
{
    for (size_t i = 0; i < b->event_count; i++) {
        const struct row_event *e = &b->events[i];
        SIM_CHECK(e->seq == sim.event_max + 1); /* gap-free, in order */
        sim.event_max = e->seq;
        if (e->is_stock) {
            struct sim_item *it = sim_item(e->store_id, e->sku);
            SIM_CHECK(it != NULL); /* the item row is written in the same batch */
            it->event_delta_sum += e->delta;
            it->event_reserved_sum += e->reserved_delta;
        }
    }
}

static void sim_commit_reservations(const struct store_batch *b)
{
    for (size_t i = 0; i < b->reservation_count; i++) {
        const struct row_reservation *row = &b->reservations[i];
        SIM_CHECK(row->reservation_seq >= 1 && row->reservation_seq < SIM_RESERVATIONS_MAX);
        struct sim_reservation *r = &sim.reservations[row->reservation_seq];
        SIM_CHECK(row->version > r->version);
        /* Expired no sooner than its time; confirmed only before it. */
        SIM_CHECK(strcmp(row->status, "EXPIRED") != 0 || row->updated_at_ms >= row->expires_at_ms);
        SIM_CHECK(strcmp(row->status, "CONFIRMED") != 0 || row->updated_at_ms < row->expires_at_ms);
        r->seq = row->reservation_seq;
        snprintf(r->status, sizeof r->status, "%s", row->status);
        r->version = row->version;
        snprintf(r->store_id, sizeof r->store_id, "%s", row->store_id);
        r->expires_at_ms = row->expires_at_ms;
        r->created_at_ms = row->created_at_ms;
        if (row->reservation_seq > sim.reservation_max) {
            sim.reservation_max = row->reservation_seq;
        }
    }
    for (size_t i = 0; i < b->reservation_line_count; i++) {
        const struct row_reservation_line *line = &b->reservation_lines[i];
        struct sim_reservation *r = &sim.reservations[line->reservation_seq];
        SIM_CHECK(r->seq == line->reservation_seq && r->qty == 0); /* one line each */
        snprintf(r->sku, sizeof r->sku, "%s", line->sku);
        r->qty = line->qty;
    }
}

static int sim_commit_batch(struct store *base, const struct store_batch *b)
{
    (void)base;
    if (sim_below(100) < SIM_FAIL_PERCENT) {
        return SVC_ESTORAGE_UNAVAILABLE; /* nothing of it is kept */
    }
    sim_commit_records(b); /* stores and products before the items that name them */
    sim_commit_items(b);
    sim_commit_events(b); /* stock events after the items they move */
    sim_commit_reservations(b);
    return 0;
}

static void sim_batch_done(struct store *base)
{
    (void)base;
}

static int sim_idem_prune(struct store *base, int64_t before_ms, int max_rows)
{
    (void)base;
    (void)before_ms;
    (void)max_rows;
    return 0; /* a run is shorter than the retention */
}

static const struct store_ops sim_ops = {
    .name = "sim",
    .load = sim_load,
    .idem_find = sim_idem_find,
    .reservation_status = sim_reservation_status,
    .commit_batch = sim_commit_batch,
    .batch_done = sim_batch_done,
    .idem_prune = sim_idem_prune,
};

/* ---- the driver --------------------------------------------------------------------------- */

struct sim_key { /* what a key was first sent with, and its first stored answer */
    enum cmd_kind kind;
    char store_id[8];
    char sku[8];
    int64_t qty;
    int64_t reservation_seq;
    uint64_t fingerprint;
    bool answered;
    int status;
    size_t length;
    uint64_t body_hash; /* FNV-1a of the first stored answer */
};

struct sim_driver {
    struct domain *domain;
    struct queue queue;
    struct writer writer;
    struct sim_key *keys; /* SIM_KEYS */
    uint32_t key_count;
    bool *acked_orders; /* SIM_ORDERS_MAX: a 201 named this order */
    int64_t acked_count;
    struct command *replied[SIM_BATCH_MAX];
    size_t reply_count;
    uint64_t stats_batches, stats_failed_replies, stats_replays;
};

static struct sim_driver drv;

static void sim_reply(struct command *cmd, void *context)
{
    (void)context;
    SIM_CHECK(drv.reply_count < SIM_BATCH_MAX);
    drv.replied[drv.reply_count++] = cmd;
}

static void sim_writer_open(void)
{
    drv.domain = calloc(1, sizeof *drv.domain);
    SIM_CHECK(drv.domain != NULL && dom_init(drv.domain) == 0);
    struct writer_config config = {
        .store = &sim.base,
        .domain = drv.domain,
        .queue = &drv.queue,
        .idem_retention_ms = IDEM_RETENTION_MS_DEFAULT,
        .wall_ms = sim_wall_ms,
        .reply = sim_reply,
    };
    SIM_CHECK(writer_init(&drv.writer, &config) == 0);
}

static void sim_writer_close(void)
{
    writer_deinit(&drv.writer);
    dom_deinit(drv.domain);
    free(drv.domain);
}

/* Fills cmd from key k's first request (or a different body when other_body). */
static void sim_fill(struct command *cmd, const struct sim_key *k, uint32_t key_index,
                     bool other_body)
{
    memset(cmd, 0, sizeof *cmd);
    cmd->kind = k->kind;
    cmd->has_idem_key = true;
    snprintf(cmd->idem_key, sizeof cmd->idem_key, "k%u", key_index);
    snprintf(cmd->principal, sizeof cmd->principal, "sim");
    cmd->fingerprint = k->fingerprint + (other_body ? 1 : 0);
    snprintf(cmd->store_id, sizeof cmd->store_id, "%s", k->store_id);
    snprintf(cmd->sku, sizeof cmd->sku, "%s", k->sku);
    snprintf(cmd->customer_id, sizeof cmd->customer_id, "c%u", key_index);
    snprintf(cmd->reason, sizeof cmd->reason, "sim");
    cmd->has_store = k->store_id[0] != '\0';
    cmd->qty = k->qty + (other_body ? 1 : 0);
    cmd->delta = k->qty;
    cmd->reservation_seq = k->reservation_seq;
    cmd->ttl_seconds = 1 + (int64_t)(k->fingerprint % 4);
    if (k->kind == CMD_RESERVE) {
        cmd->lines = calloc(1, sizeof *cmd->lines);
        SIM_CHECK(cmd->lines != NULL);
        cmd->lines->count = 1;
        snprintf(cmd->lines->items[0].sku, sizeof cmd->lines->items[0].sku, "%s", k->sku);
        cmd->lines->items[0].qty = cmd->qty;
    }
}

/* A new key with a random request. */
static uint32_t sim_new_key(void)
{
    SIM_CHECK(drv.key_count < SIM_KEYS);
    struct sim_key *k = &drv.keys[drv.key_count];
    memset(k, 0, sizeof *k);
    static const enum cmd_kind kinds[] = {CMD_PURCHASE, CMD_PURCHASE, CMD_PURCHASE, CMD_PURCHASE,
                                          CMD_ADJUST,   CMD_ADJUST,   CMD_RESERVE,  CMD_RESERVE,
                                          CMD_CONFIRM,  CMD_CANCEL};
    k->kind = kinds[sim_below(sizeof kinds / sizeof kinds[0])];
    bool any_store = k->kind == CMD_PURCHASE && sim_below(2) == 0;
    if (!any_store) {
        snprintf(k->store_id, sizeof k->store_id, "S%u", 1 + sim_below(SIM_STORES));
    }
    snprintf(k->sku, sizeof k->sku, "K%u", sim_below(SIM_SKUS));
    k->qty = k->kind == CMD_ADJUST ? (int64_t)sim_below(14) - 3 : 1 + (int64_t)sim_below(3);
    k->reservation_seq = 1 + (int64_t)sim_below((uint32_t)drv.writer.reservation_seq + 2);
    k->fingerprint = sim_next() | 2; /* +1 stays distinct */
    return drv.key_count++;
}

/* Records and checks the answer of a command of key k. */
static void sim_check_reply(const struct command *cmd)
{
    uint32_t index = (uint32_t)strtoul(cmd->idem_key + 1, NULL, 10);
    struct sim_key *k = &drv.keys[index];
    SIM_CHECK(cmd->reply_status >= 200 && cmd->reply_status <= 599);
    SIM_CHECK(cmd->reply_status != 500);
    if (cmd->reply_status == 503) {
        drv.stats_failed_replies++;
        return; /* not stored: the client may send it again */
    }
    if (cmd->fingerprint != k->fingerprint) {
        SIM_CHECK(!k->answered || cmd->reply_status == 422);
        return;
    }
    if (k->answered) {
        drv.stats_replays++;
        SIM_CHECK(cmd->reply_status == k->status && cmd->reply_length == k->length);
        SIM_CHECK(hash_fnv1a(HASH_FNV_OFFSET, cmd->reply_body, cmd->reply_length) == k->body_hash);
        return;
    }
    k->answered = true;
    k->status = cmd->reply_status;
    k->length = cmd->reply_length;
    k->body_hash = hash_fnv1a(HASH_FNV_OFFSET, cmd->reply_body, cmd->reply_length);
    if (cmd->kind == CMD_PURCHASE && cmd->reply_status == 201) {
        SIM_CHECK(cmd->reply_order_created && cmd->reply_order_seq >= 1);
        SIM_CHECK(cmd->reply_order_seq < SIM_ORDERS_MAX && !drv.acked_orders[cmd->reply_order_seq]);
        drv.acked_orders[cmd->reply_order_seq] = true;
        drv.acked_count++;
    }
}

/* The durable stock equals its event log, and the published domain equals the durable stock;
 * every durable order was acknowledged and every acknowledged one is durable. */
static void sim_check_state(void)
{
    SIM_CHECK(writer_invariants_hold(&drv.writer));
    SIM_CHECK(dom_invariants_hold(drv.domain));
    SIM_CHECK(atomic_load(&drv.domain->item_count_committed) == (uint32_t)sim.item_count);
    for (int i = 0; i < sim.item_count; i++) {
        const struct sim_item *it = &sim.items[i];
        SIM_CHECK(it->on_hand == it->event_delta_sum);
        SIM_CHECK(it->reserved == it->event_reserved_sum);
        int32_t store = dom_read_store_find(drv.domain, it->store_id);
        int32_t product = dom_read_product_find(drv.domain, it->sku);
        SIM_CHECK(store >= 0 && product >= 0);
        struct dom_item_view view;
        SIM_CHECK(dom_read_item(drv.domain, (uint32_t)product, (uint32_t)store, &view));
        SIM_CHECK(view.on_hand == it->on_hand && view.reserved == it->reserved);
        SIM_CHECK(view.version == it->version && view.sold == it->sold);
    }
    int64_t durable = 0;
    for (int64_t seq = 1; seq <= sim.order_max; seq++) {
        SIM_CHECK(sim.orders[seq] == drv.acked_orders[seq]);
        durable += sim.orders[seq];
    }
    SIM_CHECK(durable == drv.acked_count);
}

/* Runs cmds as the writer loop would: cut to the row budget, one batch at a time. */
static void sim_run(struct command **cmds, size_t count)
{
    drv.reply_count = 0;
    size_t done = 0;
    do { /* count 0: one batch of expiries only, as the idle writer runs */
        size_t fit = writer_batch_fit(&drv.writer, cmds + done, count - done);
        writer_run_batch(&drv.writer, cmds + done, fit);
        done += fit;
        drv.stats_batches++;
    } while (done < count);
    SIM_CHECK(drv.reply_count == count);
    for (size_t i = 0; i < count; i++) {
        SIM_CHECK(drv.replied[i] == cmds[i]); /* every command answered once, in order */
        sim_check_reply(cmds[i]);
        free(cmds[i]->lines);
        free(cmds[i]);
    }
}

/* One step: a batch of new keys, keys sent again (same or another body), expiries. */
static void sim_step(void)
{
    struct command *cmds[SIM_BATCH_MAX];
    size_t count = 1 + sim_below(SIM_BATCH_MAX);
    for (size_t i = 0; i < count; i++) {
        cmds[i] = malloc(sizeof *cmds[i]);
        SIM_CHECK(cmds[i] != NULL);
        uint32_t roll = sim_below(100);
        uint32_t index = roll < 70 || drv.key_count == 0 || drv.key_count == SIM_KEYS
                             ? (drv.key_count < SIM_KEYS ? sim_new_key() : sim_below(SIM_KEYS))
                             : sim_below(drv.key_count);
        bool other = roll >= 95 && drv.keys[index].answered;
        sim_fill(cmds[i], &drv.keys[index], index, other);
    }
    sim_run(cmds, count);
    sim_check_state();
    sim_now_ms += sim_below(1500); /* reservations of 1-4 s expire as time goes */
    if (res_next_expiry(&drv.writer.reservations) <= sim_now_ms && sim_below(2) == 0) {
        sim_run(cmds, 0); /* an idle writer's batch of expiries only */
        sim_check_state();
    }
}

/* The catalogue: stores S1..S3 and products K0..K3 with stock everywhere. */
static void sim_catalogue(void)
{
    struct command *cmds[SIM_STORES + SIM_SKUS * SIM_STORES];
    size_t n = 0;
    for (int s = 0; s < SIM_STORES; s++) {
        struct command *c = calloc(1, sizeof *c);
        c->kind = CMD_STORE_CREATE;
        snprintf(c->store_id, sizeof c->store_id, "S%d", s + 1);
        snprintf(c->name, sizeof c->name, "Store %d", s + 1);
        snprintf(c->principal, sizeof c->principal, "sim");
        cmds[n++] = c;
    }
    for (int k = 0; k < SIM_SKUS; k++) {
        for (int s = 0; s < SIM_STORES; s++) {
            struct command *c = calloc(1, sizeof *c);
            c->kind = s == 0 ? CMD_PRODUCT_CREATE : CMD_ADJUST;
            snprintf(c->sku, sizeof c->sku, "K%d", k);
            snprintf(c->name, sizeof c->name, "Product %d", k);
            snprintf(c->store_id, sizeof c->store_id, "S%d", s + 1);
            snprintf(c->principal, sizeof c->principal, "sim");
            c->has_store = true;
            c->initial_on_hand = c->delta = 20 + k;
            cmds[n++] = c;
        }
    }
    for (;;) { /* commits fail on purpose: send the catalogue until it is all there */
        drv.reply_count = 0;
        size_t fit = writer_batch_fit(&drv.writer, cmds, n);
        SIM_CHECK(fit == n);
        writer_run_batch(&drv.writer, cmds, n);
        if (sim.item_count == SIM_ITEMS_MAX) {
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(cmds[i]);
    }
}

int main(int argc, char **argv)
{
    sim_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20261123;
    sim_rng = sim_seed * 2654435761ULL + 1;
    log_set_level(LOG_ERROR); /* the writer's startup lines at every restart */
    sim.base.ops = &sim_ops;
    sim.idems = calloc(SIM_KEYS, sizeof *sim.idems);
    sim.orders = calloc(SIM_ORDERS_MAX, sizeof *sim.orders);
    sim.reservations = calloc(SIM_RESERVATIONS_MAX, sizeof *sim.reservations);
    drv.keys = calloc(SIM_KEYS, sizeof *drv.keys);
    drv.acked_orders = calloc(SIM_ORDERS_MAX, sizeof *drv.acked_orders);
    SIM_CHECK(sim.idems && sim.orders && sim.reservations && drv.keys && drv.acked_orders);
    SIM_CHECK(queue_init(&drv.queue, QUEUE_DEPTH_MAX) == 0);
    sim_writer_open();
    sim_catalogue();
    uint64_t restarts = 0;
    for (int step = 0; step < SIM_STEPS; step++) {
        sim_step();
        if (sim_below(100) == 0) { /* a crash: memory is gone, the store is not */
            sim_writer_close();
            sim_writer_open();
            sim_check_state();
            restarts++;
        }
    }
    sim_writer_close();
    queue_deinit(&drv.queue);
    printf("sim_writer seed=%llu: %d steps, %llu batches, %u keys, %lld orders, %llu replays,"
           " %llu answers 503, %llu restarts, %lld events: ok\n",
           (unsigned long long)sim_seed, SIM_STEPS, (unsigned long long)drv.stats_batches,
           drv.key_count, (long long)drv.acked_count, (unsigned long long)drv.stats_replays,
           (unsigned long long)drv.stats_failed_replies, (unsigned long long)restarts,
           (long long)sim.event_max);
    for (uint32_t i = 0; i < SIM_KEYS; i++) {
        free(sim.idems[i].body);
    }
    free(sim.idems);
    free(sim.orders);
    free(sim.reservations);
    free(drv.keys);
    free(drv.acked_orders);
    return 0;
}
