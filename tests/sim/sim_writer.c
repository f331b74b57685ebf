/*
 * sim_writer.c - a deterministic simulation of the writer core (STYLE 19).
 *
 * The writer runs on this thread against sim_store, an in-memory backend of store.h that checks
 * what the database's constraints would (CHECKs, unique keys, gap-free event seqs, version
 * guards) and fails commits on purpose (a seeded fraction of them: nothing of the batch is
 * kept). It runs in two modes:
 *   owned   one writer owns the store (SQLite's case): prefetch brings idempotency records and
 *           ended reservations only, memory is the truth;
 *   shared  two writers ("instances") on one store (PostgreSQL's case): every prefetch
 *           re-reads the rows the batch touches and brings the other instance's events, a
 *           seeded fraction of commits answers STORE_COMMIT_RETRY (a lost race: the writer
 *           undoes and runs the batch again), the batches of the two alternate, keys are sent
 *           to both, and reservations of one are confirmed, cancelled and expired by the other
 *           (the sweep adopts expired ones).
 * A seeded PRNG draws the workload (purchases, adjustments, reservations, confirms, cancels,
 * keys reused with the same and with another body), fake time moves on between batches
 * (reservations expire), and now and then the process "restarts": new domains and writers
 * load from the store. The store fails the run if it is read while a writer applies (apply
 * is pure). After every batch the driver checks:
 *   - the writers' invariants and their domains' (0 <= reserved <= on_hand; in owned mode
 *     also reserved = the sum of the ACTIVE reservation lines, in memory);
 *   - the durable stock equals the event log: per item, on_hand and reserved are the sums of
 *     their events' deltas (the audit's invariant), and the stored reserved is the sum of the
 *     stored ACTIVE reservation lines;
 *   - in owned mode, the domain equals the durable stock, item by item;
 *   - every 201 purchase is a durable order, and no order exists without one;
 *   - a key answered twice is answered with the same bytes, whichever instance answers.
 * On a failure it prints seed=N mode=M; `sim_writer N M` replays that run. Not a unit test of
 * one module (tests/unit/) and not the real database (tests/blackbox/).
 */
#include "../../src/core/writer.c"

#include "base/hash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The tables' default sizes (base/capacity.h), as stockd starts without --max-* flags. */
static const struct capacity test_capacity = {CAPACITY_STORES_DEFAULT, CAPACITY_PRODUCTS_DEFAULT,
                                              CAPACITY_ITEMS_DEFAULT,
                                              CAPACITY_RESERVATIONS_DEFAULT};

/* ---- the seeded world ------------------------------------------------------------------- */

#define SIM_STEPS 3000
#define SIM_STORES 3
#define SIM_SKUS 4
#define SIM_KEYS 80000 /* idempotency keys a run may use: "k<index>" */
#define SIM_ITEMS_MAX (SIM_STORES * SIM_SKUS)
#define SIM_ORDERS_MAX (SIM_STEPS * 80)
#define SIM_RESERVATIONS_MAX (SIM_STEPS * 80)
#define SIM_EVENTS_MAX (SIM_STEPS * 400)
#define SIM_LINES_MAX 3 /* lines of a simulated reservation */
#define SIM_BATCH_MAX 48
#define SIM_FAIL_PERCENT 7  /* commits that fail on purpose */
#define SIM_RETRY_PERCENT 5 /* shared mode: commits that lose a race on purpose */
#define SIM_INSTANCES_MAX 2

static uint64_t sim_seed;
static uint64_t sim_rng;
static bool sim_shared;
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

#define SIM_CHECK(cond)                                                                           \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "sim_writer: %s:%d: check failed: %s\nseed=%llu mode=%s\n", __FILE__, \
                    __LINE__, #cond, (unsigned long long)sim_seed,                                \
                    sim_shared ? "shared" : "owned");                                             \
            exit(1);                                                                              \
        }                                                                                         \
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
    char location[REPLY_LOCATION_BYTES_MAX];
};

struct sim_reservation {
    int64_t seq; /* 0: no such reservation */
    char status[16];
    int64_t version;
    char store_id[STORE_ID_BYTES_MAX + 1];
    int64_t expires_at_ms, created_at_ms;
    uint32_t line_count;
    char skus[SIM_LINES_MAX][SKU_BYTES_MAX + 1];
    int64_t qtys[SIM_LINES_MAX];
};

struct sim_event { /* a committed event row, strings owned */
    char *type, *store_id, *sku, *data;
    int64_t occurred_at_ms;
};

struct sim_store {
    char stores[SIM_STORES][STORE_ID_BYTES_MAX + 1];
    int store_count;
    char skus[SIM_SKUS][SKU_BYTES_MAX + 1];
    int sku_count;
    struct sim_item items[SIM_ITEMS_MAX];
    int item_count;
    struct sim_idem *idems; /* SIM_KEYS */
    bool *orders;           /* SIM_ORDERS_MAX: order seq exists */
    int64_t order_max;
    struct sim_event *events; /* SIM_EVENTS_MAX, index = seq */
    int64_t event_max;
    struct sim_reservation *reservations; /* SIM_RESERVATIONS_MAX, index = seq */
    int64_t reservation_max;
    uint64_t reads, prefetches, retries_injected;
};

static struct sim_store sim;

/* ---- the driver's writers (declared here: the store checks their states) ------------------- */

struct sim_instance {
    struct store handle; /* this instance's connection to sim (ops: sim_ops) */
    struct domain *domain;
    struct queue queue;
    struct writer writer;
    bool open;
};

static struct sim_instance sim_instances[SIM_INSTANCES_MAX];
static int sim_instance_count;

/* Apply is pure: no store read may happen while any writer applies. */
static void sim_read(void)
{
    for (int i = 0; i < sim_instance_count; i++) {
        SIM_CHECK(!sim_instances[i].open || sim_instances[i].writer.state != WRITER_APPLYING);
    }
    sim.reads++;
}

static struct sim_item *sim_item(const char *store_id, const char *sku)
{
    for (int i = 0; i < sim.item_count; i++) {
        if (strcmp(sim.items[i].store_id, store_id) == 0 && strcmp(sim.items[i].sku, sku) == 0) {
            return &sim.items[i];
        }
    }
    return NULL;
}

/* Shared: the stock rows and reservations each instance's last prefetch named (a shared
 * backend locks them there), and every stock row its commit updates must be among them. */
#define SIM_NAMED_MAX 4096
struct sim_named {
    struct {
        char store_id[STORE_ID_BYTES_MAX + 1];
        char sku[SKU_BYTES_MAX + 1];
    } items[SIM_NAMED_MAX];
    size_t item_count;
    int64_t reservations[SIM_NAMED_MAX];
    size_t reservation_count;
};

static struct sim_named sim_named[SIM_INSTANCES_MAX];

static struct sim_named *sim_named_of(const struct store *base)
{
    for (int i = 0; i < sim_instance_count; i++) {
        if (&sim_instances[i].handle == base) {
            return &sim_named[i];
        }
    }
    SIM_CHECK(false); /* every handle is an instance's */
    return NULL;
}

static void sim_name(const struct store *base, const struct store_prefetch_keys *keys)
{
    struct sim_named *n = sim_named_of(base);
    SIM_CHECK(keys->item_count <= SIM_NAMED_MAX && keys->reservation_count <= SIM_NAMED_MAX);
    n->item_count = keys->item_count;
    for (size_t i = 0; i < keys->item_count; i++) {
        snprintf(n->items[i].store_id, sizeof n->items[i].store_id, "%s", keys->items[i].store_id);
        snprintf(n->items[i].sku, sizeof n->items[i].sku, "%s", keys->items[i].sku);
    }
    n->reservation_count = keys->reservation_count;
    memcpy(n->reservations, keys->reservation_seqs,
           keys->reservation_count * sizeof keys->reservation_seqs[0]);
}

/* Was the stock row (store_id, sku) named, itself or as a line of a named reservation? */
static bool sim_was_named(const struct sim_named *n, const char *store_id, const char *sku)
{
    for (size_t i = 0; i < n->item_count; i++) {
        if (strcmp(n->items[i].store_id, store_id) == 0 && strcmp(n->items[i].sku, sku) == 0) {
            return true;
        }
    }
    for (size_t i = 0; i < n->reservation_count; i++) {
        const struct sim_reservation *r = &sim.reservations[n->reservations[i]];
        if (strcmp(r->store_id, store_id) != 0) {
            continue;
        }
        for (uint32_t l = 0; l < r->line_count; l++) {
            if (strcmp(r->skus[l], sku) == 0) {
                return true;
            }
        }
    }
    return false;
}

/* Every stock row the batch updates (a new one is an insert: a unique key guards it) was
 * named by the prefetch before it: else another instance could sell the same units. */
static void sim_check_named(const struct store *base, const struct store_batch *b)
{
    const struct sim_named *n = sim_named_of(base);
    for (size_t i = 0; i < b->item_count; i++) {
        const struct row_item *row = &b->items[i];
        SIM_CHECK(sim_item(row->store_id, row->sku) == NULL ||
                  sim_was_named(n, row->store_id, row->sku));
    }
}

/* The index of key "k<index>". */
static uint32_t sim_key_index(const char *key)
{
    SIM_CHECK(key[0] == 'k');
    unsigned long index = strtoul(key + 1, NULL, 10);
    SIM_CHECK(index < SIM_KEYS);
    return (uint32_t)index;
}

static int sim_feed_reservation(const struct store_sink *sink, int64_t seq)
{
    const struct sim_reservation *r = &sim.reservations[seq];
    int rc = sink->on_reservation(sink->context, seq, r->store_id, "cust", r->expires_at_ms,
                                  r->version, r->created_at_ms);
    for (uint32_t i = 0; rc == 0 && i < r->line_count; i++) {
        rc = sink->on_reservation_line(sink->context, seq, r->skus[i], r->qtys[i]);
    }
    return rc;
}

static int sim_feed_catalogue(const struct store_sink *sink)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < sim.store_count; i++) {
        rc = sink->on_store(sink->context, sim.stores[i], "Store", 0);
    }
    for (int i = 0; rc == 0 && i < sim.sku_count; i++) {
        rc = sink->on_product(sink->context, sim.skus[i], "Product");
    }
    for (int i = 0; rc == 0 && i < sim.item_count; i++) {
        const struct sim_item *it = &sim.items[i];
        rc = sink->on_item(sink->context, it->store_id, it->sku, it->on_hand, it->reserved,
                           it->version, it->sold, it->updated_at_ms);
    }
    return rc;
}

static int sim_load(struct store *base, const struct store_sink *sink, struct store_sequences *out)
{
    (void)base;
    sim_read();
    int rc = sim_feed_catalogue(sink);
    for (int64_t seq = 1; rc == 0 && seq <= sim.reservation_max; seq++) {
        if (strcmp(sim.reservations[seq].status, "ACTIVE") == 0) {
            rc = sim_feed_reservation(sink, seq);
        }
    }
    *out = (struct store_sequences){sim.order_max, sim.event_max, sim.reservation_max};
    return rc;
}

static int sim_prefetch_idems(const struct store_prefetch_keys *keys, const struct store_sink *sink)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < keys->idem_count; i++) {
        bool again = false; /* a key asked twice is reported once */
        for (size_t j = 0; j < i; j++) {
            again |= strcmp(keys->idems[j].key, keys->idems[i].key) == 0;
        }
        const struct sim_idem *found = &sim.idems[sim_key_index(keys->idems[i].key)];
        if (!found->stored || again) {
            continue;
        }
        struct store_idem_record record = {
            keys->idems[i].principal, keys->idems[i].key,
            found->fingerprint,       found->status,
            found->problem,           found->body,
            found->body_length,       found->location[0] != '\0' ? found->location : NULL};
        rc = sink->on_idem(sink->context, &record);
    }
    return rc;
}

static int sim_prefetch_reservations(const struct store_prefetch_keys *keys,
                                     const struct store_sink *sink)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < keys->reservation_count; i++) {
        int64_t seq = keys->reservation_seqs[i];
        bool again = false; /* a seq named twice (a confirm of a due one) is read once */
        for (size_t j = 0; j < i; j++) {
            again |= keys->reservation_seqs[j] == seq;
        }
        if (again) {
            continue;
        }
        const struct sim_reservation *r =
            seq >= 1 && seq <= sim.reservation_max ? &sim.reservations[seq] : NULL;
        if (r != NULL && strcmp(r->status, "ACTIVE") == 0) {
            SIM_CHECK(sim_shared); /* an owner asks only for those memory does not hold */
            rc = sim_feed_reservation(sink, seq);
        } else {
            rc = sink->on_reservation_ended(sink->context, seq, r != NULL ? r->status : NULL,
                                            r != NULL ? r->version : 0);
        }
    }
    return rc;
}

/* Other instances' events after events_after, as a shared backend's prefetch brings them. */
static int sim_prefetch_events(int64_t events_after, const struct store_sink *sink)
{
    struct row_event rows[64];
    int rc = 0;
    int64_t seq = events_after + 1;
    while (rc == 0 && seq <= sim.event_max && seq <= events_after + STORE_GAP_EVENTS_MAX) {
        size_t n = 0;
        for (; n < 64 && seq <= sim.event_max && seq <= events_after + STORE_GAP_EVENTS_MAX;
             n++, seq++) {
            const struct sim_event *e = &sim.events[seq];
            rows[n] = (struct row_event){seq,         e->type, 1,      e->occurred_at_ms,
                                         e->store_id, e->sku,  e->data};
        }
        rc = sink->on_events(sink->context, rows, n);
    }
    return rc;
}

static int sim_prefetch(struct store *base, const struct store_prefetch_keys *keys,
                        const struct store_sink *sink, struct store_sequences *out)
{
    sim_read();
    sim.prefetches++;
    int rc = sim_prefetch_idems(keys, sink);
    rc = rc == 0 ? sim_prefetch_reservations(keys, sink) : rc;
    if (!sim_shared) {
        SIM_CHECK(keys->item_count == 0 && keys->store_count == 0 && keys->sku_count == 0);
        return rc;
    }
    /* Shared: the whole catalogue is small here; a real backend reads only what keys name
     * (sim_check_named holds the writer to that). */
    sim_name(base, keys);
    rc = rc == 0 ? sim_feed_catalogue(sink) : rc;
    rc = rc == 0 ? sim_prefetch_events(keys->events_after, sink) : rc;
    *out = (struct store_sequences){sim.order_max, sim.event_max, sim.reservation_max};
    return rc;
}

/* ---- committing ----------------------------------------------------------------------------- */

/* Would the batch break a unique key or a version guard? (A shared backend answers RETRY.) */
static bool sim_conflicts(const struct store_batch *b)
{
    for (size_t i = 0; i < b->idem_count; i++) {
        if (sim.idems[sim_key_index(b->idems[i].idem_key)].stored) {
            return true;
        }
    }
    for (size_t i = 0; i < b->item_count; i++) {
        const struct sim_item *it = sim_item(b->items[i].store_id, b->items[i].sku);
        if (it != NULL && it->version >= b->items[i].version) {
            return true;
        }
    }
    for (size_t i = 0; i < b->event_count; i++) {
        if (b->events[i].seq != sim.event_max + 1 + (int64_t)i) {
            return true;
        }
    }
    for (size_t i = 0; i < b->reservation_count; i++) {
        const struct row_reservation *row = &b->reservations[i];
        SIM_CHECK(row->reservation_seq >= 1 && row->reservation_seq < SIM_RESERVATIONS_MAX);
        if (sim.reservations[row->reservation_seq].version >= row->version) {
            return true;
        }
    }
    return false;
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
        struct sim_idem *idem = &sim.idems[sim_key_index(row->idem_key)];
        SIM_CHECK(!idem->stored); /* unique (principal, key) */
        SIM_CHECK(row->body_length <= LINES_REPLY_BYTES_MAX);
        idem->stored = true;
        idem->fingerprint = row->fingerprint;
        idem->status = row->status;
        idem->problem = row->problem;
        idem->body = malloc(row->body_length + 1);
        SIM_CHECK(idem->body != NULL);
        memcpy(idem->body, row->body, row->body_length);
        idem->body_length = row->body_length;
        snprintf(idem->location, sizeof idem->location, "%s", row->location ? row->location : "");
    }
}

static char *sim_strdup(const char *text)
{
    if (text == NULL) {
        return NULL;
    }
    char *copy = strdup(text);
    SIM_CHECK(copy != NULL);
    return copy;
}

static void sim_commit_events(const struct store_batch *b)
{
    for (size_t i = 0; i < b->event_count; i++) {
        const struct row_event *row = &b->events[i];
        SIM_CHECK(row->seq == sim.event_max + 1); /* gap-free, in order */
        SIM_CHECK(row->seq < SIM_EVENTS_MAX);
        sim.event_max = row->seq;
        sim.events[row->seq] = (struct sim_event){sim_strdup(row->event_type),
                                                  sim_strdup(row->store_id), sim_strdup(row->sku),
                                                  sim_strdup(row->data_json), row->occurred_at_ms};
        char scratch[16384];
        struct event_arena arena = {scratch, sizeof scratch, 0};
        struct event e;
        SIM_CHECK(event_decode(row, &e, &arena) == 0 && e.type != EVENT_UNKNOWN);
        if (event_type_is_stock(e.type)) {
            struct sim_item *it = sim_item(row->store_id, row->sku);
            SIM_CHECK(it != NULL); /* the item row is written in the same batch */
            it->event_delta_sum += e.delta;
            it->event_reserved_sum += e.reserved_delta;
        }
    }
}

static void sim_commit_reservations(const struct store_batch *b)
{
    for (size_t i = 0; i < b->reservation_count; i++) {
        const struct row_reservation *row = &b->reservations[i];
        struct sim_reservation *r = &sim.reservations[row->reservation_seq];
        SIM_CHECK(row->version > r->version);
        /* Expired no sooner than its time; confirmed only before it. */
        SIM_CHECK(strcmp(row->status, "EXPIRED") != 0 || row->updated_at_ms >= row->expires_at_ms);
        SIM_CHECK(strcmp(row->status, "CONFIRMED") != 0 || row->updated_at_ms < row->expires_at_ms);
        if (r->seq == 0) {
            r->line_count = 0;
        }
        r->seq = row->reservation_seq;
        snprintf(r->status, sizeof r->status, "%s", row->status);
        r->version = row->version;
        snprintf(r->store_id, sizeof r->store_id, "%s", row->store_id);
        r->expires_at_ms = row->expires_at_ms;
        r->created_at_ms = row->created_at_ms;
        sim.reservation_max =
            row->reservation_seq > sim.reservation_max ? row->reservation_seq : sim.reservation_max;
    }
    for (size_t i = 0; i < b->reservation_line_count; i++) {
        const struct row_reservation_line *line = &b->reservation_lines[i];
        struct sim_reservation *r = &sim.reservations[line->reservation_seq];
        SIM_CHECK(r->seq == line->reservation_seq && line->line_no == (int)r->line_count + 1);
        SIM_CHECK(r->line_count < SIM_LINES_MAX);
        snprintf(r->skus[r->line_count], SKU_BYTES_MAX + 1, "%s", line->sku);
        r->qtys[r->line_count++] = line->qty;
    }
}

static int sim_commit_batch(struct store *base, const struct store_batch *b)
{
    sim_read(); /* a write is not a read, but it must not happen during apply either */
    if (sim_shared) {
        sim_check_named(base, b);
    }
    if (sim_below(100) < SIM_FAIL_PERCENT) {
        return SVC_ESTORAGE_UNAVAILABLE; /* nothing of it is kept */
    }
    if (sim_shared && (sim_below(100) < SIM_RETRY_PERCENT || sim_conflicts(b))) {
        sim.retries_injected++;
        return STORE_COMMIT_RETRY; /* another instance won a race: nothing written */
    }
    SIM_CHECK(!sim_conflicts(b)); /* an owner never races: memory was the truth */
    sim_commit_records(b);        /* stores and products before the items that name them */
    sim_commit_items(b);
    sim_commit_reservations(b);
    sim_commit_events(b); /* stock events after the items they move */
    return 0;
}

static void sim_batch_done(struct store *base)
{
    (void)base;
}

static int sim_idem_prune(struct store *base, struct store_idem_sweep *sweep, int64_t before_ms,
                          int max_rows, bool *swept)
{
    (void)base;
    (void)sweep;
    (void)before_ms;
    (void)max_rows;
    *swept = true;
    return 0; /* a run is shorter than the retention */
}

/* Shared: the ACTIVE reservations that expired before before_ms (the sweep's adoption). */
static int sim_reservations_due(struct store *base, int64_t before_ms, int64_t *out, int max)
{
    (void)base;
    sim_read();
    int n = 0;
    for (int64_t seq = 1; seq <= sim.reservation_max && n < max; seq++) {
        const struct sim_reservation *r = &sim.reservations[seq];
        if (strcmp(r->status, "ACTIVE") == 0 && r->expires_at_ms < before_ms) {
            out[n++] = seq;
        }
    }
    return n;
}

static uint64_t sim_busy_wait_count(struct store *base)
{
    (void)base;
    return 0;
}

static struct store_ops sim_ops = {
    .name = "sim",
    .load = sim_load,
    .prefetch = sim_prefetch,
    .commit_batch = sim_commit_batch,
    .batch_done = sim_batch_done,
    .idem_prune = sim_idem_prune,
    .reservations_due = sim_reservations_due,
    .busy_wait_count = sim_busy_wait_count,
};

/* ---- the driver --------------------------------------------------------------------------- */

struct sim_key { /* what a key was first sent with, and its first stored answer */
    enum cmd_kind kind;
    char store_id[8];
    char sku[8];
    int64_t qty;
    uint32_t line_count;
    int64_t reservation_seq;
    uint64_t fingerprint;
    bool answered;
    int status;
    size_t length;
    uint64_t body_hash; /* FNV-1a of the first stored answer */
    char location[REPLY_LOCATION_BYTES_MAX];
};

struct sim_driver {
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

static void sim_instance_open(struct sim_instance *in)
{
    in->handle = (struct store){.ops = &sim_ops};
    in->domain = calloc(1, sizeof *in->domain);
    SIM_CHECK(in->domain != NULL && dom_init(in->domain, &test_capacity) == 0);
    SIM_CHECK(queue_init(&in->queue, QUEUE_DEPTH_MAX) == 0);
    struct writer_config config = {
        .store = &in->handle,
        .domain = in->domain,
        .queue = &in->queue,
        .idem_retention_ms = IDEM_RETENTION_MS_DEFAULT,
        .wall_ms = sim_wall_ms,
        .reply = sim_reply,
    };
    SIM_CHECK(writer_init(&in->writer, &config) == 0);
    in->open = true;
}

static void sim_instance_close(struct sim_instance *in)
{
    writer_deinit(&in->writer);
    queue_deinit(&in->queue);
    dom_deinit(in->domain);
    free(in->domain);
    in->open = false;
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
        cmd->lines->count = k->line_count;
        for (uint32_t i = 0; i < k->line_count; i++) {
            snprintf(cmd->lines->items[i].sku, sizeof cmd->lines->items[i].sku, "K%u",
                     (unsigned)((k->sku[1] - '0' + i) % SIM_SKUS));
            cmd->lines->items[i].qty = cmd->qty;
        }
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
    bool any_store = (k->kind == CMD_PURCHASE || k->kind == CMD_RESERVE) && sim_below(2) == 0;
    if (!any_store) {
        snprintf(k->store_id, sizeof k->store_id, "S%u", 1 + sim_below(SIM_STORES));
    }
    snprintf(k->sku, sizeof k->sku, "K%u", sim_below(SIM_SKUS));
    k->qty = k->kind == CMD_ADJUST ? (int64_t)sim_below(14) - 3 : 1 + (int64_t)sim_below(3);
    k->line_count = 1 + sim_below(SIM_LINES_MAX);
    k->reservation_seq = 1 + (int64_t)sim_below((uint32_t)sim.reservation_max + 3);
    k->fingerprint = sim_next() | 2; /* +1 stays distinct */
    return drv.key_count++;
}

/* Records and checks the answer of a command of key k. */
static void sim_check_reply(const struct command *cmd)
{
    uint32_t index = sim_key_index(cmd->idem_key);
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
    uint64_t hash = hash_fnv1a(HASH_FNV_OFFSET, cmd->reply_body, cmd->reply_length);
    if (k->answered) {
        drv.stats_replays++;
        SIM_CHECK(cmd->reply_replayed);
        SIM_CHECK(cmd->reply_status == k->status && cmd->reply_length == k->length);
        SIM_CHECK(hash == k->body_hash && strcmp(cmd->reply_location, k->location) == 0);
        return;
    }
    k->answered = true;
    k->status = cmd->reply_status;
    k->length = cmd->reply_length;
    k->body_hash = hash;
    snprintf(k->location, sizeof k->location, "%s", cmd->reply_location);
    if (cmd->kind == CMD_PURCHASE && cmd->reply_status == 201) {
        int64_t seq = strtoll(cmd->reply_location + strlen("/v1/orders/ord_"), NULL, 10);
        SIM_CHECK(strncmp(cmd->reply_location, "/v1/orders/ord_", 15) == 0);
        SIM_CHECK(seq >= 1 && seq < SIM_ORDERS_MAX && !drv.acked_orders[seq]);
        drv.acked_orders[seq] = true;
        drv.acked_count++;
    }
}

/* The stored reserved of every item is the sum of the stored ACTIVE reservation lines. */
static void sim_check_reservations(void)
{
    int64_t sums[SIM_ITEMS_MAX] = {0};
    for (int64_t seq = 1; seq <= sim.reservation_max; seq++) {
        const struct sim_reservation *r = &sim.reservations[seq];
        for (uint32_t i = 0; strcmp(r->status, "ACTIVE") == 0 && i < r->line_count; i++) {
            const struct sim_item *it = sim_item(r->store_id, r->skus[i]);
            SIM_CHECK(it != NULL);
            sums[it - sim.items] += r->qtys[i];
        }
    }
    for (int i = 0; i < sim.item_count; i++) {
        SIM_CHECK(sim.items[i].reserved == sums[i]);
    }
}

/* An owner's domain equals the durable stock, item by item. */
static void sim_check_owned_domain(const struct domain *d)
{
    SIM_CHECK(d->item_count_committed == (uint32_t)sim.item_count);
    for (int i = 0; i < sim.item_count; i++) {
        const struct sim_item *it = &sim.items[i];
        int32_t store = dom_store_find(d, it->store_id);
        int32_t product = dom_product_find(d, it->sku);
        SIM_CHECK(store >= 0 && product >= 0);
        int32_t index = dom_item_find(d, (uint32_t)store, (uint32_t)product);
        SIM_CHECK(index >= 0);
        const struct dom_item *item = &d->items[index];
        SIM_CHECK(item->on_hand == it->on_hand && item->reserved == it->reserved);
        SIM_CHECK(item->version == it->version && item->sold == it->sold);
    }
}

static void sim_check_state(void)
{
    for (int i = 0; i < sim_instance_count; i++) {
        const struct sim_instance *in = &sim_instances[i];
        SIM_CHECK(writer_invariants_hold(&in->writer));
        SIM_CHECK(in->domain->reservations_complete == !sim_shared);
        SIM_CHECK(dom_invariants_hold(in->domain));
    }
    for (int i = 0; i < sim.item_count; i++) {
        const struct sim_item *it = &sim.items[i];
        SIM_CHECK(it->on_hand == it->event_delta_sum);
        SIM_CHECK(it->reserved == it->event_reserved_sum);
    }
    sim_check_reservations();
    if (!sim_shared) {
        sim_check_owned_domain(sim_instances[0].domain);
    }
    int64_t durable = 0;
    for (int64_t seq = 1; seq <= sim.order_max; seq++) {
        SIM_CHECK(sim.orders[seq] == drv.acked_orders[seq]);
        durable += sim.orders[seq];
    }
    SIM_CHECK(durable == drv.acked_count);
}

/* Runs cmds on instance in as its writer loop would: cut to the row budget, one batch at a
 * time (count 0: one batch of expiries only, as the idle writer runs). */
static void sim_run(struct sim_instance *in, struct command **cmds, size_t count)
{
    drv.reply_count = 0;
    size_t done = 0;
    (void)prefetch_sweep(writer_scratch_of(&in->writer)->prefetch, &in->handle, in->domain,
                         sim_now_ms);
    do {
        size_t fit = writer_batch_fit(&in->writer, cmds + done, count - done);
        writer_run_batch(&in->writer, cmds + done, fit);
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

/* One step: a batch of new keys, keys sent again (same or another body), expiries, on one
 * instance (chosen at random in shared mode). */
static void sim_step(void)
{
    struct sim_instance *in = &sim_instances[sim_below((uint32_t)sim_instance_count)];
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
    sim_run(in, cmds, count);
    sim_check_state();
    sim_now_ms += sim_below(1500); /* reservations of 1-4 s expire as time goes */
    in = &sim_instances[sim_below((uint32_t)sim_instance_count)];
    if (sim_below(2) == 0) {
        sim_run(in, cmds, 0); /* an idle writer's batch of expiries (and adoptions) only */
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
        struct writer *w = &sim_instances[0].writer;
        SIM_CHECK(writer_batch_fit(w, cmds, n) == n);
        writer_run_batch(w, cmds, n);
        if (sim.item_count == SIM_ITEMS_MAX) {
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(cmds[i]);
    }
}

static void sim_setup(void)
{
    log_set_level(LOG_ERROR); /* the writers' startup lines at every restart */
    sim_ops.shared = sim_shared;
    sim_ops.reservations_due = sim_shared ? sim_reservations_due : NULL; /* shared only */
    sim.idems = calloc(SIM_KEYS, sizeof *sim.idems);
    sim.orders = calloc(SIM_ORDERS_MAX, sizeof *sim.orders);
    sim.events = calloc(SIM_EVENTS_MAX, sizeof *sim.events);
    sim.reservations = calloc(SIM_RESERVATIONS_MAX, sizeof *sim.reservations);
    drv.keys = calloc(SIM_KEYS, sizeof *drv.keys);
    drv.acked_orders = calloc(SIM_ORDERS_MAX, sizeof *drv.acked_orders);
    SIM_CHECK(sim.idems && sim.orders && sim.events && sim.reservations);
    SIM_CHECK(drv.keys && drv.acked_orders);
    sim_instance_count = sim_shared ? 2 : 1;
    for (int i = 0; i < sim_instance_count; i++) {
        sim_instance_open(&sim_instances[i]);
    }
}

static void sim_teardown(void)
{
    for (int i = 0; i < sim_instance_count; i++) {
        sim_instance_close(&sim_instances[i]);
    }
    for (uint32_t i = 0; i < SIM_KEYS; i++) {
        free(sim.idems[i].body);
    }
    for (int64_t seq = 1; seq <= sim.event_max; seq++) {
        struct sim_event *e = &sim.events[seq];
        free(e->type);
        free(e->store_id);
        free(e->sku);
        free(e->data);
    }
    free(sim.idems);
    free(sim.orders);
    free(sim.events);
    free(sim.reservations);
    free(drv.keys);
    free(drv.acked_orders);
}

int main(int argc, char **argv)
{
    sim_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20261123;
    sim_shared = argc > 2 && strcmp(argv[2], "shared") == 0;
    SIM_CHECK(argc <= 2 || sim_shared || strcmp(argv[2], "owned") == 0);
    sim_rng = sim_seed * 2654435761ULL + 1;
    sim_setup();
    sim_catalogue();
    uint64_t restarts = 0;
    for (int step = 0; step < SIM_STEPS; step++) {
        sim_step();
        if (sim_below(100) == 0) { /* a crash: memory is gone, the store is not */
            for (int i = 0; i < sim_instance_count; i++) {
                sim_instance_close(&sim_instances[i]);
                sim_instance_open(&sim_instances[i]);
            }
            sim_check_state();
            restarts++;
        }
    }
    printf("sim_writer seed=%llu mode=%s: %d steps, %llu batches, %u keys, %lld orders, %llu"
           " replays, %llu answers 503, %llu lost races, %llu restarts, %lld events, %lld"
           " reservations: ok\n",
           (unsigned long long)sim_seed, sim_shared ? "shared" : "owned", SIM_STEPS,
           (unsigned long long)drv.stats_batches, drv.key_count, (long long)drv.acked_count,
           (unsigned long long)drv.stats_replays, (unsigned long long)drv.stats_failed_replies,
           (unsigned long long)sim.retries_injected, (unsigned long long)restarts,
           (long long)sim.event_max, (long long)sim.reservation_max);
    sim_teardown();
    return 0;
}
