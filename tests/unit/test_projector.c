/*
 * test_projector.c - the read model (projector.c): synthetic event batches applied as the
 * writer's hook would, replay from a real SQLite events table, replay equivalence (applied as
 * it happened == rebuilt from the log == loaded at startup), duplicate batches, and a reader
 * thread that must never see a torn item while batches are applied (run under TSan too).
 *
 * Events are generated from a small model of the inventory with a seeded PRNG and written to
 * the events table with store_commit_batch, exactly as the writer writes them. The file
 * includes projector.c to reach its statics (STYLE 17). Read test_writer.c next.
 */
#include "../../src/read/projector.c"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <unistd.h>

#include "test_helpers.h"

#define T0_MS 1700000000000LL
#define GEN_STORES 3
#define GEN_SKUS 5
#define GEN_EVENTS_MAX 8192
#define GEN_JSON_BYTES 512

/* ---- a generator of consistent event streams --------------------------------------------- */

struct gen {
    uint64_t rng;
    int64_t seq;
    int64_t on_hand[GEN_STORES][GEN_SKUS];
    int64_t reserved[GEN_STORES][GEN_SKUS];
    int64_t version[GEN_STORES][GEN_SKUS];
    bool product_made[GEN_SKUS];
    int reservations;                /* res_1 .. res_<n> created */
    int64_t res_qty[GEN_EVENTS_MAX]; /* per reservation: qty of its one line, 0 when done */
    int res_store[GEN_EVENTS_MAX];
    int res_sku[GEN_EVENTS_MAX];
    struct row_event events[GEN_EVENTS_MAX];
    char json[GEN_EVENTS_MAX][GEN_JSON_BYTES];
    char store_ids[GEN_STORES][8];
    char skus[GEN_SKUS][8];
    size_t count;
};

static uint64_t gen_next(struct gen *g)
{
    g->rng ^= g->rng << 13;
    g->rng ^= g->rng >> 7;
    g->rng ^= g->rng << 17;
    return g->rng;
}

static void gen_init(struct gen *g, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    g->rng = seed | 1;
    g->seq = 1; /* seq 1 is the schema's StoreCreated S1 */
    for (int s = 0; s < GEN_STORES; s++) {
        snprintf(g->store_ids[s], sizeof g->store_ids[s], "S%d", s + 1);
    }
    for (int k = 0; k < GEN_SKUS; k++) {
        snprintf(g->skus[k], sizeof g->skus[k], "K%d", k);
    }
}

static struct row_event *gen_event(struct gen *g, const char *type, const char *store,
                                   const char *sku)
{
    SVC_ASSERT(g->count < GEN_EVENTS_MAX);
    struct row_event *e = &g->events[g->count];
    memset(e, 0, sizeof *e);
    e->seq = ++g->seq;
    e->event_type = type;
    e->event_version = 1;
    e->occurred_at_ms = T0_MS + e->seq;
    e->store_id = store;
    e->sku = sku;
    e->data_json = g->json[g->count];
    g->count++;
    return e;
}

/* A stock event for (s, k) after changing on_hand by delta and reserved by reserved_delta. */
static void gen_stock(struct gen *g, const char *type, int s, int k, int64_t delta,
                      int64_t reserved_delta, const char *extra)
{
    g->on_hand[s][k] += delta;
    g->reserved[s][k] += reserved_delta;
    g->version[s][k] += 1;
    SVC_ASSERT(g->reserved[s][k] >= 0 && g->reserved[s][k] <= g->on_hand[s][k]);
    struct row_event *e = gen_event(g, type, g->store_ids[s], g->skus[k]);
    char text[GEN_JSON_BYTES]; /* formatted apart: the sources live in *g too */
    snprintf(text, sizeof text,
             "{%s\"storeId\":\"%s\",\"sku\":\"%s\",\"delta\":%" PRId64 ",\"reservedDelta\":%" PRId64
             ",\"onHand\":%" PRId64 ",\"reserved\":%" PRId64 ",\"version\":%" PRId64 "}",
             extra, g->store_ids[s], g->skus[k], delta, reserved_delta, g->on_hand[s][k],
             g->reserved[s][k], g->version[s][k]);
    memcpy((char *)e->data_json, text, sizeof text);
    e->is_stock = true;
    e->delta = delta;
    e->reserved_delta = reserved_delta;
    e->on_hand = g->on_hand[s][k];
    e->reserved = g->reserved[s][k];
    e->version = g->version[s][k];
}

static void gen_catalog(struct gen *g)
{
    for (int s = 1; s < GEN_STORES; s++) {
        struct row_event *e = gen_event(g, "StoreCreated", g->store_ids[s], NULL);
        char text[GEN_JSON_BYTES]; /* formatted apart: the sources live in *g too */
        snprintf(text, sizeof text, "{\"storeId\":\"%s\",\"name\":\"Store %d\",\"latencyMs\":%d}",
                 g->store_ids[s], s + 1, 10 * s);
        memcpy((char *)e->data_json, text, sizeof text);
    }
    for (int k = 0; k < GEN_SKUS; k++) {
        char extra[64];
        snprintf(extra, sizeof extra, "\"name\":\"Product %d\",", k);
        gen_stock(g, "ProductCreated", k % GEN_STORES, k, 50, 0, extra);
        g->product_made[k] = true;
    }
}

static void gen_reservation(struct gen *g, int s, int k)
{
    int64_t available = g->on_hand[s][k] - g->reserved[s][k];
    if (available < 1 || g->version[s][k] == 0) {
        return;
    }
    int n = ++g->reservations;
    int64_t qty = 1 + (int64_t)(gen_next(g) % (uint64_t)available);
    char extra[64];
    snprintf(extra, sizeof extra, "\"reservationId\":\"res_%d\",\"qty\":%" PRId64 ",", n, qty);
    gen_stock(g, "StockReserved", s, k, 0, qty, extra);
    struct row_event *e = gen_event(g, "ReservationCreated", g->store_ids[s], NULL);
    char text[GEN_JSON_BYTES]; /* formatted apart: the sources live in *g too */
    snprintf(text, sizeof text,
             "{\"reservationId\":\"res_%d\",\"storeId\":\"%s\",\"customerId\":\"c%d\","
             "\"lines\":[{\"sku\":\"%s\",\"qty\":%" PRId64 "}],\"expiresAt\":%" PRId64
             ",\"status\":\"ACTIVE\"}",
             n, g->store_ids[s], n, g->skus[k], qty, (int64_t)(T0_MS + 60000));
    memcpy((char *)e->data_json, text, sizeof text);
    g->res_qty[n] = qty;
    g->res_store[n] = s;
    g->res_sku[n] = k;
}

static void gen_finish_reservation(struct gen *g, int n, bool confirm)
{
    int s = g->res_store[n];
    int k = g->res_sku[n];
    int64_t qty = g->res_qty[n];
    char extra[64];
    snprintf(extra, sizeof extra, "\"reservationId\":\"res_%d\",\"qty\":%" PRId64 ",", n, qty);
    gen_stock(g, confirm ? "StockCommitted" : "StockReleased", s, k, confirm ? -qty : 0, -qty,
              extra);
    struct row_event *e = gen_event(g, confirm ? "ReservationConfirmed" : "ReservationCancelled",
                                    g->store_ids[s], NULL);
    char text[GEN_JSON_BYTES]; /* formatted apart: the sources live in *g too */
    snprintf(text, sizeof text,
             "{\"reservationId\":\"res_%d\",\"storeId\":\"%s\",\"status\":\"%s\"}", n,
             g->store_ids[s], confirm ? "CONFIRMED" : "CANCELLED");
    memcpy((char *)e->data_json, text, sizeof text);
    g->res_qty[n] = 0;
}

/* One random operation: adjust, purchase, reserve, confirm or cancel. */
static void gen_step(struct gen *g)
{
    int s = (int)(gen_next(g) % GEN_STORES);
    int k = (int)(gen_next(g) % GEN_SKUS);
    int op = (int)(gen_next(g) % 5);
    int64_t available = g->on_hand[s][k] - g->reserved[s][k];
    if (op == 0 || (op == 1 && available == 0)) {
        gen_stock(g, "StockAdjusted", s, k, 1 + (int64_t)(gen_next(g) % 20), 0,
                  "\"reason\":\"restock\",");
    } else if (op == 1) {
        gen_stock(g, "OrderCompleted", s, k, -1, 0, "\"orderId\":\"ord_1\",\"qty\":1,");
    } else if (op == 2) {
        gen_reservation(g, s, k);
    } else if (g->reservations > 0) {
        int n = 1 + (int)(gen_next(g) % (uint64_t)g->reservations);
        if (g->res_qty[n] > 0) {
            gen_finish_reservation(g, n, op == 3);
        }
    }
}

/* ---- fixture: a temporary database ------------------------------------------------------- */

struct fixture {
    char dir[256];
    char path[300];
    struct store *store;
    struct gen gen;
};

static int projector_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    SVC_ASSERT(f != NULL);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_projector.XXXXXX");
    SVC_ASSERT(mkdtemp(f->dir) != NULL);
    snprintf(f->path, sizeof f->path, "%s/stockd.db", f->dir);
    SVC_ASSERT(store_open(&f->store, f->path) == 0);
    *state = f;
    return 0;
}

static int projector_teardown(void **state)
{
    struct fixture *f = *state;
    char command[400];
    store_close(f->store);
    snprintf(command, sizeof command, "rm -rf '%s'", f->dir);
    SVC_ASSERT(system(command) == 0);
    free(f);
    return 0;
}

/* Writes events[from, to) of the generator as one batch. */
static void commit_events(struct fixture *f, size_t from, size_t to)
{
    struct store_batch batch;
    memset(&batch, 0, sizeof batch);
    batch.events = &f->gen.events[from];
    batch.event_count = to - from;
    ASSERT_OK(store_commit_batch(f->store, &batch));
}

static void load_projector(struct fixture *f, struct projector *p)
{
    struct store_reader *reader = NULL;
    ASSERT_OK(projector_init(p, f->path));
    ASSERT_OK(store_reader_open(&reader, f->path));
    ASSERT_OK(projector_load(p, reader));
    store_reader_close(reader);
}

/* Checks that the live projection of p shows exactly the generator's model. */
static void assert_matches_model(struct projector *p, const struct gen *g)
{
    struct projection *v = projector_read_begin(p);
    ASSERT_EQ_INT(projector_applied_seq(v), g->seq);
    ASSERT_EQ_UINT(projector_store_count(v), GEN_STORES);
    ASSERT_EQ_UINT(projector_product_count(v), GEN_SKUS);
    for (int s = 0; s < GEN_STORES; s++) {
        int32_t store_index = projector_store_find(v, g->store_ids[s]);
        ASSERT_GE_INT(store_index, 0);
        for (int k = 0; k < GEN_SKUS; k++) {
            int32_t product_index = projector_product_find(v, g->skus[k]);
            struct projector_item item;
            ASSERT_GE_INT(product_index, 0);
            bool found =
                projector_item_get(v, (uint32_t)product_index, (uint32_t)store_index, &item);
            ASSERT_EQ_INT(found, g->version[s][k] > 0);
            if (found) {
                ASSERT_EQ_INT(item.on_hand, g->on_hand[s][k]);
                ASSERT_EQ_INT(item.reserved, g->reserved[s][k]);
                ASSERT_EQ_INT(item.version, g->version[s][k]);
            }
        }
    }
    for (int n = 1; n <= g->reservations; n++) {
        char id[32];
        struct projector_reservation res;
        snprintf(id, sizeof id, "res_%d", n);
        ASSERT_TRUE(projector_reservation_find(v, id, &res));
        ASSERT_EQ_INT(res.status == PROJECTOR_ACTIVE, g->res_qty[n] > 0);
        ASSERT_EQ_UINT(res.line_count, 1);
        const char *sku = projector_product_sku(v, res.lines[0].product_index);
        ASSERT_EQ_STR(sku, g->skus[g->res_sku[n]]);
    }
    projector_read_end(p, v);
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_synthetic_batches(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 7);
    gen_catalog(&f->gen);
    projector_apply(&p, f->gen.events, f->gen.count);
    assert_matches_model(&p, &f->gen);
    struct projection *v = projector_read_begin(&p);
    struct projector_store store;
    projector_store_get(v, 1, &store);
    ASSERT_EQ_STR(store.id, "S2");
    ASSERT_EQ_STR(store.name, "Store 2");
    ASSERT_EQ_INT(store.latency_ms, 10);
    ASSERT_EQ_STR(projector_product_name(v, 3), "Product 3");
    ASSERT_EQ_INT(projector_product_find(v, "nope"), -1);
    ASSERT_EQ_INT(projector_lag_ms(&p, v), 0);
    ASSERT_EQ_UINT(projector_dropped_count(v), 0);
    projector_read_end(&p, v);
    /* An impossible item and unparsable data are counted, logged and skipped, not applied. */
    struct row_event bad = {.seq = f->gen.seq + 1,
                            .event_type = "StockAdjusted",
                            .event_version = 1,
                            .occurred_at_ms = T0_MS,
                            .store_id = "S1",
                            .sku = "K0",
                            .data_json = "{}",
                            .is_stock = true,
                            .on_hand = 1,
                            .reserved = 2,
                            .version = 9};
    struct row_event junk = {.seq = f->gen.seq + 2,
                             .event_type = "StoreCreated",
                             .event_version = 1,
                             .occurred_at_ms = T0_MS,
                             .store_id = "S9",
                             .data_json = "not json"};
    projector_apply(&p, &bad, 1);
    projector_apply(&p, &junk, 1);
    v = projector_read_begin(&p);
    ASSERT_EQ_UINT(projector_dropped_count(v), 2);
    ASSERT_EQ_INT(projector_applied_seq(v), f->gen.seq + 2);
    ASSERT_EQ_INT(projector_store_find(v, "S9"), -1);
    struct projector_item item;
    ASSERT_TRUE(projector_item_get(v, (uint32_t)projector_product_find(v, "K0"), 0, &item));
    ASSERT_EQ_INT(item.version, 1);
    projector_read_end(&p, v);
    projector_deinit(&p);
}

static void test_duplicate_batches_are_skipped(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 11);
    gen_catalog(&f->gen);
    size_t first = f->gen.count;
    for (int i = 0; i < 200; i++) {
        gen_step(&f->gen);
    }
    projector_apply(&p, f->gen.events, first);
    projector_apply(&p, f->gen.events, f->gen.count); /* overlaps the first batch */
    projector_apply(&p, f->gen.events + first, f->gen.count - first);
    assert_matches_model(&p, &f->gen);
    projector_deinit(&p);
}

/* Applied as committed, loaded from the log, rebuilt from the log: the same projection. */
static void test_replay_equivalence(void **state)
{
    struct fixture *f = *state;
    struct projector live;
    load_projector(f, &live);
    gen_init(&f->gen, 20261123);
    gen_catalog(&f->gen);
    commit_events(f, 0, f->gen.count);
    projector_apply(&live, f->gen.events, f->gen.count);
    for (int batch = 0; batch < 300; batch++) {
        size_t from = f->gen.count;
        int steps = 1 + (int)(gen_next(&f->gen) % 8);
        for (int i = 0; i < steps; i++) {
            gen_step(&f->gen);
        }
        if (f->gen.count == from) {
            continue;
        }
        commit_events(f, from, f->gen.count);
        projector_apply(&live, f->gen.events + from, f->gen.count - from);
    }
    ASSERT_GT_INT(f->gen.reservations, 10);
    assert_matches_model(&live, &f->gen);
    struct projector loaded;
    load_projector(f, &loaded);
    assert_matches_model(&loaded, &f->gen);
    atomic_store(&live.rebuilding, true);
    struct projection *before = atomic_load(&live.live);
    ASSERT_OK(projector_rebuild_run(&live));
    atomic_store(&live.rebuilding, false);
    ASSERT_TRUE(atomic_load(&live.live) != before);
    ASSERT_GT_INT(atomic_load(&live.rebuilt_at_ms), 0);
    assert_matches_model(&live, &f->gen);
    atomic_store(&live.rebuilding, true); /* a second rebuild reuses the first projection */
    ASSERT_OK(projector_rebuild_run(&live));
    atomic_store(&live.rebuilding, false);
    ASSERT_TRUE(atomic_load(&live.live) == before);
    assert_matches_model(&live, &f->gen);
    projector_deinit(&loaded);
    projector_deinit(&live);
}

/* Commits and applies batches of random steps, as the writer and its hook would. */
static void run_batches(struct fixture *f, struct projector *p, int batches)
{
    for (int batch = 0; batch < batches; batch++) {
        size_t from = f->gen.count;
        int steps = 1 + (int)(gen_next(&f->gen) % 8);
        for (int i = 0; i < steps; i++) {
            gen_step(&f->gen);
        }
        if (f->gen.count > from) {
            commit_events(f, from, f->gen.count);
            projector_apply(p, f->gen.events + from, f->gen.count - from);
        }
    }
    SVC_ASSERT(f->gen.count <= GEN_EVENTS_MAX);
}

/* A rebuild on its thread while batches keep committing: nothing committed meanwhile is lost,
 * whichever side of the swap it lands on. */
static void test_rebuild_while_writing(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 99);
    gen_catalog(&f->gen);
    commit_events(f, 0, f->gen.count);
    projector_apply(&p, f->gen.events, f->gen.count);
    run_batches(f, &p, 150);
    struct projection *before = atomic_load(&p.live);
    ASSERT_EQ_INT(projector_rebuild_start(&p), 0);
    ASSERT_EQ_INT(projector_rebuild_start(&p), 1); /* one at a time */
    run_batches(f, &p, 150);
    for (int waited_ms = 0; atomic_load(&p.rebuilding); waited_ms++) {
        ASSERT_LT_INT(waited_ms, 10000);
        usleep(1000);
    }
    ASSERT_TRUE(atomic_load(&p.live) != before);
    assert_matches_model(&p, &f->gen);
    run_batches(f, &p, 20); /* the hook feeds the new projection */
    assert_matches_model(&p, &f->gen);
    projector_deinit(&p);
}

struct watcher {
    struct projector *p;
    _Atomic bool stop;
    uint64_t reads;
    uint64_t torn;      /* reads where onHand != 2 * reserved (the applier keeps it so) */
    uint64_t backwards; /* versions that went down */
};

static void *watcher_main(void *arg)
{
    struct watcher *w = arg;
    int64_t last_version = 0;
    while (!atomic_load(&w->stop)) {
        struct projection *v = projector_read_begin(w->p);
        int32_t product = projector_product_find(v, "W");
        struct projector_item item;
        if (product >= 0 && projector_item_get(v, (uint32_t)product, 0, &item)) {
            w->reads++;
            w->torn += item.on_hand != 2 * item.reserved;
            w->backwards += item.version < last_version;
            last_version = item.version;
        }
        projector_read_end(w->p, v);
    }
    return NULL;
}

static void test_readers_never_see_torn_items(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    struct watcher w = {&p, false, 0, 0, 0};
    pthread_t thread;
    ASSERT_EQ_INT(pthread_create(&thread, NULL, watcher_main, &w), 0);
    static char json[64];
    strcpy(json, "{}");
    for (int64_t i = 1; i <= 20000; i++) {
        struct row_event e = {.seq = 1 + i,
                              .event_type = i == 1 ? "ProductCreated" : "StockAdjusted",
                              .event_version = 1,
                              .occurred_at_ms = T0_MS + i,
                              .store_id = "S1",
                              .sku = "W",
                              .data_json = json,
                              .is_stock = true,
                              .delta = 2,
                              .reserved_delta = 1,
                              .on_hand = 2 * i,
                              .reserved = i,
                              .version = i};
        projector_apply(&p, &e, 1);
    }
    atomic_store(&w.stop, true);
    pthread_join(thread, NULL);
    ASSERT_EQ_UINT(w.torn, 0);
    ASSERT_EQ_UINT(w.backwards, 0);
    struct projection *v = projector_read_begin(&p);
    ASSERT_EQ_INT(projector_applied_seq(v), 20001);
    projector_read_end(&p, v);
    projector_deinit(&p);
}

/* A tap that checks it sees every seq once, in order. */
struct tap_check {
    int64_t last;
    uint64_t events;
    uint64_t out_of_order;
};

static void tap_check_events(const struct row_event *events, size_t count, void *context)
{
    struct tap_check *t = context;
    for (size_t i = 0; i < count; i++) {
        t->out_of_order += events[i].seq != t->last + 1;
        t->last = events[i].seq;
        t->events++;
    }
}

/* Several instances on one database: a batch whose seqs start past the applied one is not
 * applied (another instance's events are missing) until the missing ones come. */
static void test_gaps_wait_for_the_missing_events(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 13);
    gen_catalog(&f->gen);
    for (int i = 0; i < 200; i++) {
        gen_step(&f->gen);
    }
    struct tap_check tc = {projector_live_seq(&p), 0, 0};
    ASSERT_OK(projector_tap_add(&p, tap_check_events, &tc));
    size_t n = f->gen.count;
    size_t k = n / 2;
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events + k, n - k), 0);
    ASSERT_EQ_INT(projector_live_seq(&p), 1); /* the schema's StoreCreated only */
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events, k), k);
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events + k - 10, n - k + 10), n - k + 10);
    assert_matches_model(&p, &f->gen);
    ASSERT_EQ_UINT(tc.events, n);
    ASSERT_EQ_UINT(tc.out_of_order, 0);
    projector_deinit(&p);
}

struct follower_thread {
    struct fixture *f;
    struct projector *p;
    int64_t until;
    int64_t applied;
};

static void *follower_thread_main(void *arg)
{
    struct follower_thread *t = arg;
    struct store_reader *reader = NULL;
    SVC_ASSERT(store_reader_open(&reader, t->f->path) == 0);
    while (projector_live_seq(t->p) < t->until) {
        t->applied += projector_follow(t->p, reader);
    }
    store_reader_close(reader);
    return NULL;
}

/* The writer's hook (this instance's batches) and the follower (everything in the log) feed
 * one projector at once: every event is applied once, in seq order, whoever brings it first
 * (run under TSan too). */
static void test_hook_and_follower_together(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 17);
    gen_catalog(&f->gen);
    for (int i = 0; i < 3000; i++) {
        gen_step(&f->gen);
    }
    commit_events(f, 0, f->gen.count); /* all committed: ours and the other instances' */
    struct tap_check tc = {projector_live_seq(&p), 0, 0};
    ASSERT_OK(projector_tap_add(&p, tap_check_events, &tc));
    struct follower_thread t = {f, &p, f->gen.seq, 0};
    pthread_t thread;
    ASSERT_EQ_INT(pthread_create(&thread, NULL, follower_thread_main, &t), 0);
    uint64_t rng = 5;
    for (size_t at = 0, chunk = 0; at < f->gen.count; chunk++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t size = 1 + (size_t)(rng >> 33) % 40;
        size = size < f->gen.count - at ? size : f->gen.count - at;
        if (chunk % 2 == 0) { /* ours; the odd chunks are another instance's */
            projector_apply(&p, f->gen.events + at, size);
        }
        at += size;
    }
    pthread_join(thread, NULL);
    assert_matches_model(&p, &f->gen);
    ASSERT_EQ_UINT(tc.events, f->gen.count);
    ASSERT_EQ_UINT(tc.out_of_order, 0);
    ASSERT_GT_INT(t.applied, 0);
    projector_deinit(&p);
}

struct seen {
    int count;
    int64_t seqs[64];
};

static int seen_row(void *context, const struct row_event *row)
{
    struct seen *seen = context;
    SVC_ASSERT(seen->count < 64);
    seen->seqs[seen->count++] = row->seq;
    return 0;
}

static void test_events_reader_filters(void **state)
{
    struct fixture *f = *state;
    gen_init(&f->gen, 3);
    gen_catalog(&f->gen);
    commit_events(f, 0, f->gen.count);
    struct store_reader *reader = NULL;
    ASSERT_OK(store_reader_open(&reader, f->path));
    int64_t max = 0;
    ASSERT_OK(store_reader_event_seq_max(reader, &max));
    ASSERT_EQ_INT(max, f->gen.seq);
    struct seen seen = {0, {0}};
    ASSERT_OK(store_reader_events(reader, 0, "S2", "K1", 100, &seen, seen_row));
    ASSERT_EQ_INT(seen.count, 1); /* K1's ProductCreated, in S2 */
    seen.count = 0;
    ASSERT_OK(store_reader_events(reader, 0, NULL, NULL, 2, &seen, seen_row));
    ASSERT_EQ_INT(seen.count, 2);
    ASSERT_EQ_INT(seen.seqs[0], 1);
    ASSERT_EQ_INT(seen.seqs[1], 2);
    seen.count = 0;
    ASSERT_OK(store_reader_events(reader, max, NULL, NULL, 10, &seen, seen_row));
    ASSERT_EQ_INT(seen.count, 0);
    store_reader_close(reader);
}

int main(void)
{
#define PROJECTOR_TEST(f) cmocka_unit_test_setup_teardown(f, projector_setup, projector_teardown)
    const struct CMUnitTest tests[] = {
        PROJECTOR_TEST(test_synthetic_batches),
        PROJECTOR_TEST(test_duplicate_batches_are_skipped),
        PROJECTOR_TEST(test_replay_equivalence),
        PROJECTOR_TEST(test_rebuild_while_writing),
        PROJECTOR_TEST(test_readers_never_see_torn_items),
        PROJECTOR_TEST(test_events_reader_filters),
        PROJECTOR_TEST(test_gaps_wait_for_the_missing_events),
        PROJECTOR_TEST(test_hook_and_follower_together),
    };
#undef PROJECTOR_TEST
    log_set_level(LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
