/*
 * test_projector.c - the read model (projector.c): structured event batches applied as the
 * writer's hook would, replay from a real SQLite events table, replay equivalence (applied as
 * it happened == rebuilt from the log == loaded at startup), duplicate batches, seq order
 * (nothing past a gap), the taps, projector_wait_seq, the sold count, bad events, and reader
 * threads that must never see a torn item while batches are applied (run under TSan too).
 *
 * Events are generated from a small model of the inventory with a seeded PRNG as struct event
 * values (event_init and members, as the appliers make them), encoded with event_encode into
 * struct row_event rows and written to the events table with store_commit_batch, exactly as
 * the writer writes them; the hook gets the structured events, replays and the follower decode
 * the rows. The file includes projector.c to reach its statics (STYLE 17). Read
 * test_writer.c next.
 */
#include "../../src/read/projector.c"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <unistd.h>

#include "test_helpers.h"

/* The tables' default sizes (base/capacity.h), as stockd starts without --max-* flags. */
static const struct capacity test_capacity = {CAPACITY_STORES_DEFAULT, CAPACITY_PRODUCTS_DEFAULT,
                                              CAPACITY_ITEMS_DEFAULT,
                                              CAPACITY_RESERVATIONS_DEFAULT};

#define T0_MS 1700000000000LL
#define GEN_STORES 3
#define GEN_SKUS 5
#define GEN_EVENTS_MAX 8192
#define GEN_JSON_BYTES 512
#define GEN_TTL_MS 60000

/* ---- a generator of consistent event streams --------------------------------------------- */

struct gen {
    uint64_t rng;
    int64_t seq;
    int64_t on_hand[GEN_STORES][GEN_SKUS];
    int64_t reserved[GEN_STORES][GEN_SKUS];
    int64_t version[GEN_STORES][GEN_SKUS];
    int64_t sold[GEN_STORES][GEN_SKUS];
    int reservations;                /* res_1 .. res_<n> created */
    int64_t res_qty[GEN_EVENTS_MAX]; /* per reservation: qty of its one line */
    enum projector_status res_status[GEN_EVENTS_MAX];
    int res_store[GEN_EVENTS_MAX];
    int res_sku[GEN_EVENTS_MAX];
    char res_ids[GEN_EVENTS_MAX][16];
    char customers[GEN_EVENTS_MAX][16];
    struct event_line res_lines[GEN_EVENTS_MAX]; /* the one line of each reservation */
    struct event events[GEN_EVENTS_MAX];         /* structured, as the hook gets them */
    struct row_event rows[GEN_EVENTS_MAX];       /* encoded, as the events table holds them */
    char json[GEN_EVENTS_MAX][GEN_JSON_BYTES];
    char order_ids[GEN_EVENTS_MAX][24];
    char store_ids[GEN_STORES][8];
    char store_names[GEN_STORES][16];
    char skus[GEN_SKUS][8];
    char product_names[GEN_SKUS][16];
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
    g->seq = 0; /* a fresh database's log is empty: the writer's first batch makes S1 */
    for (int s = 0; s < GEN_STORES; s++) {
        snprintf(g->store_ids[s], sizeof g->store_ids[s], "S%d", s + 1);
        snprintf(g->store_names[s], sizeof g->store_names[s], "Store %d", s + 1);
    }
    for (int k = 0; k < GEN_SKUS; k++) {
        snprintf(g->skus[k], sizeof g->skus[k], "K%d", k);
        snprintf(g->product_names[k], sizeof g->product_names[k], "Product %d", k);
    }
}

/* The next event, of type, with its seq and time; the caller fills its members and emits it. */
static struct event *gen_event(struct gen *g, enum event_type type)
{
    SVC_ASSERT(g->count < GEN_EVENTS_MAX);
    struct event *e = &g->events[g->count];
    event_init(e, type);
    e->seq = ++g->seq;
    e->occurred_at_ms = T0_MS + e->seq;
    return e;
}

/* Encodes the pending event into its row, as batch_emit does. */
static void gen_emit(struct gen *g, struct event *e)
{
    SVC_ASSERT(e == &g->events[g->count]);
    struct jbuf data;
    jbuf_init(&data, g->json[g->count], GEN_JSON_BYTES);
    event_encode(e, &data);
    SVC_ASSERT(jbuf_ok(&data));
    e->data_json = g->json[g->count];
    event_row(e, &g->rows[g->count]);
    g->count++;
}

/* A stock event for (s, k) after changing on_hand by delta, reserved by reserved_delta and
 * sold by sold_delta: it carries the item after the change, as batch_emit_stock fills it. */
static struct event *gen_stock(struct gen *g, enum event_type type, int s, int k, int64_t delta,
                               int64_t reserved_delta, int64_t sold_delta)
{
    g->on_hand[s][k] += delta;
    g->reserved[s][k] += reserved_delta;
    g->sold[s][k] += sold_delta;
    g->version[s][k] += 1;
    SVC_ASSERT(g->reserved[s][k] >= 0 && g->reserved[s][k] <= g->on_hand[s][k]);
    struct event *e = gen_event(g, type);
    e->store_id = g->store_ids[s];
    e->sku = g->skus[k];
    e->delta = delta;
    e->reserved_delta = reserved_delta;
    e->on_hand = g->on_hand[s][k];
    e->reserved = g->reserved[s][k];
    e->version = g->version[s][k];
    e->sold = g->sold[s][k];
    return e;
}

static void gen_catalog(struct gen *g)
{
    for (int s = 0; s < GEN_STORES; s++) {
        struct event *e = gen_event(g, EVENT_STORE_CREATED);
        e->store_id = g->store_ids[s];
        e->name = g->store_names[s];
        e->latency_ms = 10 * s;
        gen_emit(g, e);
    }
    for (int k = 0; k < GEN_SKUS; k++) {
        struct event *e = gen_stock(g, EVENT_PRODUCT_CREATED, k % GEN_STORES, k, 50, 0, 0);
        e->name = g->product_names[k];
        gen_emit(g, e);
    }
}

/* A lifecycle event of reservation n: the whole reservation after it (reservation_rows). */
static void gen_reservation_event(struct gen *g, enum event_type type, int n)
{
    struct event *e = gen_event(g, type);
    e->reservation_id = g->res_ids[n];
    e->status = projector_status_name(g->res_status[n]);
    e->store_id = g->store_ids[g->res_store[n]];
    e->customer_id = g->customers[n];
    e->lines = &g->res_lines[n];
    e->line_count = 1;
    e->expires_at_ms = T0_MS + GEN_TTL_MS + n;
    e->version = g->res_status[n] == PROJECTOR_ACTIVE ? 1 : 2;
    e->payment_ref = type == EVENT_RESERVATION_CONFIRMED && n % 2 == 0 ? "pay" : NULL;
    e->reason = type == EVENT_RESERVATION_CANCELLED ? "changed mind" : NULL;
    gen_emit(g, e);
}

static void gen_reservation(struct gen *g, int s, int k)
{
    int64_t available = g->on_hand[s][k] - g->reserved[s][k];
    if (available < 1 || g->version[s][k] == 0) {
        return;
    }
    int n = ++g->reservations;
    int64_t qty = 1 + (int64_t)(gen_next(g) % (uint64_t)available);
    snprintf(g->res_ids[n], sizeof g->res_ids[n], "res_%d", n);
    snprintf(g->customers[n], sizeof g->customers[n], "c%d", n);
    g->res_lines[n] = (struct event_line){g->skus[k], qty};
    g->res_qty[n] = qty;
    g->res_store[n] = s;
    g->res_sku[n] = k;
    g->res_status[n] = PROJECTOR_ACTIVE;
    struct event *e = gen_stock(g, EVENT_STOCK_RESERVED, s, k, 0, qty, 0);
    e->reservation_id = g->res_ids[n];
    e->qty = qty;
    gen_emit(g, e);
    gen_reservation_event(g, EVENT_RESERVATION_CREATED, n);
}

static void gen_finish_reservation(struct gen *g, int n, bool confirm)
{
    int s = g->res_store[n];
    int k = g->res_sku[n];
    int64_t qty = g->res_qty[n];
    struct event *e = gen_stock(g, confirm ? EVENT_STOCK_COMMITTED : EVENT_STOCK_RELEASED, s, k,
                                confirm ? -qty : 0, -qty, 0);
    e->reservation_id = g->res_ids[n];
    e->qty = qty;
    e->reason = confirm ? NULL : "changed mind";
    gen_emit(g, e);
    g->res_status[n] = confirm ? PROJECTOR_CONFIRMED : PROJECTOR_CANCELLED;
    gen_reservation_event(g, confirm ? EVENT_RESERVATION_CONFIRMED : EVENT_RESERVATION_CANCELLED,
                          n);
}

/* One random operation: adjust, purchase, reserve, confirm or cancel. */
static void gen_step(struct gen *g)
{
    int s = (int)(gen_next(g) % GEN_STORES);
    int k = (int)(gen_next(g) % GEN_SKUS);
    int op = (int)(gen_next(g) % 5);
    int64_t available = g->on_hand[s][k] - g->reserved[s][k];
    if (op == 0 || (op == 1 && available == 0)) {
        struct event *e =
            gen_stock(g, EVENT_STOCK_ADJUSTED, s, k, 1 + (int64_t)(gen_next(g) % 20), 0, 0);
        e->reason = "restock";
        gen_emit(g, e);
    } else if (op == 1) {
        int64_t qty = 1 + (int64_t)(gen_next(g) % (uint64_t)available);
        struct event *e = gen_stock(g, EVENT_ORDER_COMPLETED, s, k, -qty, 0, qty);
        snprintf(g->order_ids[g->count], sizeof g->order_ids[g->count], "ord_%" PRId64, e->seq);
        e->order_id = g->order_ids[g->count];
        e->customer_id = "c1";
        e->qty = qty;
        gen_emit(g, e);
    } else if (op == 2) {
        gen_reservation(g, s, k);
    } else if (g->reservations > 0) {
        int n = 1 + (int)(gen_next(g) % (uint64_t)g->reservations);
        if (g->res_status[n] == PROJECTOR_ACTIVE) {
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

/* Writes rows[0, count) as one batch. */
static void commit_rows(struct fixture *f, const struct row_event *rows, size_t count)
{
    struct store_batch batch;
    memset(&batch, 0, sizeof batch);
    batch.events = rows;
    batch.event_count = count;
    ASSERT_OK(store_commit_batch(f->store, &batch));
}

/* Writes the generator's rows[from, to) as one batch. */
static void commit_events(struct fixture *f, size_t from, size_t to)
{
    commit_rows(f, &f->gen.rows[from], to - from);
}

static void load_projector(struct fixture *f, struct projector *p)
{
    struct store_reader *reader = NULL;
    ASSERT_OK(projector_init(p, f->path, &test_capacity));
    ASSERT_OK(store_reader_open(&reader, f->path));
    ASSERT_OK(projector_load(p, reader));
    store_reader_close(reader);
}

/* Rebuilds p's projection from the log on this thread and checks it was swapped in. */
static void rebuild(struct projector *p)
{
    struct projection *before = atomic_load(&p->live);
    atomic_store(&p->rebuilding, true);
    ASSERT_OK(projector_rebuild_run(p));
    atomic_store(&p->rebuilding, false);
    ASSERT_TRUE(atomic_load(&p->live) != before);
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
        ASSERT_EQ_INT(store_index, s);
        struct projector_store store;
        projector_store_get(v, (uint32_t)store_index, &store);
        ASSERT_EQ_STR(store.name, g->store_names[s]);
        ASSERT_EQ_INT(store.latency_ms, 10 * s);
        for (int k = 0; k < GEN_SKUS; k++) {
            int32_t product_index = projector_product_find(v, g->skus[k]);
            struct projector_item item;
            ASSERT_GE_INT(product_index, 0);
            ASSERT_EQ_STR(projector_product_name(v, (uint32_t)product_index), g->product_names[k]);
            bool found =
                projector_item_get(v, (uint32_t)product_index, (uint32_t)store_index, &item);
            ASSERT_EQ_INT(found, g->version[s][k] > 0);
            if (found) {
                ASSERT_EQ_INT(item.on_hand, g->on_hand[s][k]);
                ASSERT_EQ_INT(item.reserved, g->reserved[s][k]);
                ASSERT_EQ_INT(item.version, g->version[s][k]);
                ASSERT_EQ_INT(item.sold, g->sold[s][k]);
            }
        }
    }
    for (int k = 0; k < GEN_SKUS; k++) {
        /* The product's items listed in store order, each once, whatever order they came in. */
        uint32_t product_index = (uint32_t)projector_product_find(v, g->skus[k]);
        int listed = 0;
        int stocked = 0;
        int64_t last_store = -1;
        struct projector_item item;
        uint32_t s = 0;
        for (int32_t at = projector_item_next(v, product_index, -1, &s, &item); at >= 0;
             at = projector_item_next(v, product_index, at, &s, &item)) {
            ASSERT_GT_INT(s, last_store);
            ASSERT_LT_UINT(s, GEN_STORES);
            ASSERT_EQ_INT(item.on_hand, g->on_hand[s][k]);
            ASSERT_EQ_INT(item.version, g->version[s][k]);
            last_store = s;
            listed++;
        }
        for (int st = 0; st < GEN_STORES; st++) {
            stocked += g->version[st][k] > 0;
        }
        ASSERT_EQ_INT(listed, stocked);
    }
    ASSERT_EQ_UINT(projector_reservation_count(v), g->reservations);
    for (int n = 1; n <= g->reservations; n++) {
        struct projector_reservation res;
        ASSERT_TRUE(projector_reservation_find(v, g->res_ids[n], &res));
        ASSERT_EQ_INT(res.status, g->res_status[n]);
        ASSERT_EQ_INT(res.version, g->res_status[n] == PROJECTOR_ACTIVE ? 1 : 2);
        ASSERT_EQ_STR(res.customer_id, g->customers[n]);
        ASSERT_EQ_UINT(res.store_index, g->res_store[n]);
        ASSERT_EQ_INT(res.expires_at_ms, T0_MS + GEN_TTL_MS + n);
        ASSERT_EQ_UINT(res.line_count, 1);
        const char *sku = projector_product_sku(v, res.lines[0].product_index);
        ASSERT_EQ_STR(sku, g->skus[g->res_sku[n]]);
        ASSERT_EQ_INT(res.lines[0].qty, g->res_qty[n]);
    }
    ASSERT_EQ_UINT(projector_dropped_count(v), 0);
    projector_read_end(p, v);
}

/* ---- tests ------------------------------------------------------------------------------ */

/* The bad rows of a log: a stock event whose data lacks onHand and version (decodes, but
 * says nothing of the item), data that is not JSON, and a type this build does not know. */
static void bad_rows(int64_t first_seq, struct row_event out[3])
{
    out[0] = (struct row_event){first_seq,
                                "StockAdjusted",
                                1,
                                T0_MS,
                                "S1",
                                "K0",
                                "{\"storeId\":\"S1\",\"sku\":\"K0\",\"delta\":1,"
                                "\"reason\":\"restock\"}"};
    out[1] = (struct row_event){first_seq + 1, "StoreCreated", 1, T0_MS, "S9", NULL, "not json"};
    out[2] = (struct row_event){first_seq + 2, "StockTeleported", 1, T0_MS, "S1", "K0", "{}"};
}

static void test_synthetic_batches(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 7);
    gen_catalog(&f->gen);
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events, f->gen.count), f->gen.count);
    assert_matches_model(&p, &f->gen);
    struct projection *v = projector_read_begin(&p);
    ASSERT_EQ_INT(projector_product_find(v, "nope"), -1);
    ASSERT_EQ_INT(projector_store_find(v, "nope"), -1);
    ASSERT_EQ_INT(projector_lag_ms(&p, v), 0);
    ASSERT_EQ_INT(projector_applied_at_ms(v), T0_MS + f->gen.seq);
    projector_read_end(&p, v);
    /* Bad events are counted, logged and skipped, not applied; each still moves the applied
     * seq. An impossible item (structured, as a buggy writer would hand it over)... */
    int64_t seq = f->gen.seq;
    struct event impossible;
    event_init(&impossible, EVENT_STOCK_ADJUSTED);
    impossible.seq = seq + 1;
    impossible.occurred_at_ms = T0_MS;
    impossible.store_id = "S1";
    impossible.sku = "K0";
    impossible.on_hand = 1;
    impossible.reserved = 2;
    impossible.version = 9;
    ASSERT_EQ_UINT(projector_apply(&p, &impossible, 1), 1);
    /* ...and the bad rows of a log, decoded as the follower and the replays decode them. */
    struct row_event rows[3];
    bad_rows(seq + 2, rows);
    struct event decoded[3];
    char *scratch = malloc(PROJ_DECODE_BYTES);
    struct event_arena arena = {scratch, PROJ_DECODE_BYTES, 0};
    ASSERT_OK(event_decode(&rows[0], &decoded[0], &arena));
    ASSERT_EQ_UINT(decoded[0].present & (EVF(ON_HAND) | EVF(VERSION)), 0);
    ASSERT_ERR(event_decode(&rows[1], &decoded[1], &arena), SVC_EVALIDATION);
    for (int i = 0; i < 3; i++) {
        ASSERT_TRUE(projection_decode(&rows[i], &decoded[i], &arena));
    }
    ASSERT_EQ_INT(decoded[1].type, EVENT_UNKNOWN); /* unreadable: only its seq counts */
    ASSERT_EQ_INT(decoded[2].type, EVENT_UNKNOWN);
    ASSERT_EQ_UINT(projector_apply(&p, decoded, 3), 3);
    free(scratch);
    v = projector_read_begin(&p);
    ASSERT_EQ_UINT(projector_dropped_count(v), 4);
    ASSERT_EQ_INT(projector_applied_seq(v), seq + 4);
    ASSERT_EQ_INT(projector_store_find(v, "S9"), -1);
    struct projector_item item;
    ASSERT_TRUE(projector_item_get(v, (uint32_t)projector_product_find(v, "K0"), 0, &item));
    ASSERT_EQ_INT(item.version, 1);
    ASSERT_EQ_INT(item.on_hand, 50);
    projector_read_end(&p, v);
    projector_deinit(&p);
}

/* The same bad rows in the events table: the startup replay, a rebuild and the follower all
 * count them and go on past them. */
static void test_bad_rows_in_the_log(void **state)
{
    struct fixture *f = *state;
    gen_init(&f->gen, 8);
    gen_catalog(&f->gen);
    commit_events(f, 0, f->gen.count);
    struct row_event rows[3];
    bad_rows(f->gen.seq + 1, rows);
    commit_rows(f, rows, 3);
    f->gen.seq += 3;
    size_t from = f->gen.count;
    for (int i = 0; i < 100; i++) {
        gen_step(&f->gen);
    }
    commit_events(f, from, f->gen.count);
    struct projector loaded;
    load_projector(f, &loaded);
    struct projection *v = projector_read_begin(&loaded);
    ASSERT_EQ_UINT(projector_dropped_count(v), 3);
    ASSERT_EQ_INT(projector_applied_seq(v), f->gen.seq);
    projector_read_end(&loaded, v);
    rebuild(&loaded);
    v = projector_read_begin(&loaded);
    ASSERT_EQ_UINT(projector_dropped_count(v), 3);
    ASSERT_EQ_INT(projector_applied_seq(v), f->gen.seq);
    projector_read_end(&loaded, v);
    struct projector followed;
    ASSERT_OK(projector_init(&followed, f->path, &test_capacity));
    struct store_reader *reader = NULL;
    ASSERT_OK(store_reader_open(&reader, f->path));
    ASSERT_EQ_INT(projector_follow(&followed, reader), f->gen.seq);
    store_reader_close(reader);
    v = projector_read_begin(&followed);
    ASSERT_EQ_UINT(projector_dropped_count(v), 3);
    ASSERT_EQ_INT(projector_applied_seq(v), f->gen.seq);
    projector_read_end(&followed, v);
    /* Apart from the count, each equals the model. */
    struct projector *both[] = {&loaded, &followed};
    for (int i = 0; i < 2; i++) {
        v = atomic_load(&both[i]->live);
        atomic_store(&v->dropped, 0);
        assert_matches_model(both[i], &f->gen);
    }
    projector_deinit(&loaded);
    projector_deinit(&followed);
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
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events, first), first);
    /* Overlapping the first batch: consumed whole, the overlap skipped. */
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events, f->gen.count), f->gen.count);
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events + first, f->gen.count - first),
                   f->gen.count - first);
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
    struct projection *before = atomic_load(&live.live);
    rebuild(&live);
    ASSERT_GT_INT(atomic_load(&live.rebuilt_at_ms), 0);
    assert_matches_model(&live, &f->gen);
    rebuild(&live); /* a second rebuild reuses the first projection */
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
    uint64_t torn;      /* reads where onHand != 2 * reserved or sold != reserved (the applier
                         * keeps them so) */
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
            w->torn += item.on_hand != 2 * item.reserved || item.sold != item.reserved;
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
    for (int64_t i = 1; i <= 20000; i++) {
        struct event e;
        event_init(&e, i == 1 ? EVENT_PRODUCT_CREATED : EVENT_STOCK_ADJUSTED);
        e.seq = i;
        e.occurred_at_ms = T0_MS + i;
        e.store_id = "S1";
        e.sku = "W";
        e.name = "Watched";
        e.reason = "test";
        e.delta = 2;
        e.reserved_delta = 1;
        e.on_hand = 2 * i;
        e.reserved = i;
        e.version = i;
        e.sold = i;
        ASSERT_EQ_UINT(projector_apply(&p, &e, 1), 1);
    }
    atomic_store(&w.stop, true);
    pthread_join(thread, NULL);
    ASSERT_EQ_UINT(w.torn, 0);
    ASSERT_EQ_UINT(w.backwards, 0);
    struct projection *v = projector_read_begin(&p);
    ASSERT_EQ_INT(projector_applied_seq(v), 20000);
    ASSERT_EQ_STR(projector_product_name(v, 0), "Watched");
    projector_read_end(&p, v);
    projector_deinit(&p);
}

/* The sold count: carried by every stock event since events carry it (the carried value wins,
 * so a reset to 0 shows), and rebuilt from orders for a log written before (an old-style row
 * without the member adds an order's qty to the count before, other events keep it). */
static void test_sold_is_projected(void **state)
{
    struct fixture *f = *state;
    struct gen *g = &f->gen;
    gen_init(g, 5);
    gen_catalog(g); /* K0 in S1 with 50 */
    struct event *e = gen_stock(g, EVENT_ORDER_COMPLETED, 0, 0, -2, 0, 2);
    e->order_id = "ord_1";
    e->customer_id = "c1";
    e->qty = 2;
    gen_emit(g, e);
    e = gen_stock(g, EVENT_STOCK_ADJUSTED, 0, 0, 52, 0, -2); /* POST /reset: sold back to 0 */
    e->reason = "reset";
    gen_emit(g, e);
    e = gen_stock(g, EVENT_ORDER_COMPLETED, 0, 0, -3, 0, 3);
    e->order_id = "ord_2";
    e->customer_id = "c1";
    e->qty = 3;
    gen_emit(g, e);
    size_t modern = g->count;
    /* Old-style rows: the same events written before "sold" was a member. */
    const int64_t orders[] = {4, 0, 1}; /* an order of 4, an adjustment, an order of 1 */
    const int64_t expected_sold[] = {7, 7, 8};
    int64_t expected_on_hand[3];
    for (int i = 0; i < 3; i++) {
        e = gen_stock(g, orders[i] > 0 ? EVENT_ORDER_COMPLETED : EVENT_STOCK_ADJUSTED, 0, 0,
                      orders[i] > 0 ? -orders[i] : 5, 0, orders[i]);
        e->order_id = "ord_old";
        e->customer_id = "c1";
        e->qty = orders[i];
        e->reason = "restock";
        gen_emit(g, e);
        expected_on_hand[i] = g->on_hand[0][0];
        char *sold = strstr(g->json[g->count - 1], ",\"sold\":");
        ASSERT_NOT_NULL(sold); /* the last member: cut it off */
        strcpy(sold, "}");
    }
    commit_events(f, 0, g->count);
    struct projector p;
    ASSERT_OK(projector_init(&p, f->path, &test_capacity));
    size_t catalog = GEN_STORES + GEN_SKUS;
    ASSERT_EQ_UINT(projector_apply(&p, g->events, catalog), catalog);
    const int64_t modern_sold[] = {2, 0, 3};
    for (size_t i = catalog; i < modern; i++) {
        ASSERT_EQ_UINT(projector_apply(&p, &g->events[i], 1), 1);
        struct projection *v = projector_read_begin(&p);
        struct projector_item item;
        ASSERT_TRUE(projector_item_get(v, 0, 0, &item));
        ASSERT_EQ_INT(item.sold, modern_sold[i - catalog]);
        projector_read_end(&p, v);
    }
    char *scratch = malloc(PROJ_DECODE_BYTES);
    for (size_t i = modern; i < g->count; i++) {
        struct event old;
        struct event_arena arena = {scratch, PROJ_DECODE_BYTES, 0};
        ASSERT_OK(event_decode(&g->rows[i], &old, &arena));
        ASSERT_EQ_UINT(old.present & EVF(SOLD), 0);
        ASSERT_EQ_UINT(projector_apply(&p, &old, 1), 1);
        struct projection *v = projector_read_begin(&p);
        struct projector_item item;
        ASSERT_TRUE(projector_item_get(v, 0, 0, &item));
        ASSERT_EQ_INT(item.sold, expected_sold[i - modern]);
        ASSERT_EQ_INT(item.on_hand, expected_on_hand[i - modern]);
        projector_read_end(&p, v);
    }
    free(scratch);
    ASSERT_EQ_INT(g->sold[0][0], 8);
    assert_matches_model(&p, g);
    /* Replayed from the log, the same. */
    struct projector loaded;
    load_projector(f, &loaded);
    assert_matches_model(&loaded, g);
    projector_deinit(&loaded);
    projector_deinit(&p);
}

/* A tap that checks it sees every seq once, in order. */
struct tap_check {
    int64_t last;
    uint64_t events;
    uint64_t out_of_order;
};

static void tap_check_events(const struct event *events, size_t count, void *context)
{
    struct tap_check *t = context;
    for (size_t i = 0; i < count; i++) {
        t->out_of_order += events[i].seq != t->last + 1;
        t->last = events[i].seq;
        t->events++;
    }
}

/* A tap that records each call. */
struct tap_record {
    int calls;
    const struct event *first[16];
    size_t counts[16];
};

static void tap_record_events(const struct event *events, size_t count, void *context)
{
    struct tap_record *t = context;
    SVC_ASSERT(t->calls < 16);
    t->first[t->calls] = events;
    t->counts[t->calls] = count;
    t->calls++;
}

/* A tap gets exactly the run that was applied: not what was skipped as applied already, not
 * what lies past a gap, nothing when nothing was applied. */
static void test_tap_receives_exactly_the_applied_run(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 23);
    gen_catalog(&f->gen);
    for (int i = 0; i < 40; i++) {
        gen_step(&f->gen);
    }
    const struct event *ev = f->gen.events;
    size_t n = f->gen.count;
    SVC_ASSERT(n > 12 && ev[0].seq == 1);
    struct tap_record rec;
    memset(&rec, 0, sizeof rec);
    struct tap_check tc = {0, 0, 0};
    ASSERT_OK(projector_tap_add(&p, tap_record_events, &rec));
    ASSERT_OK(projector_tap_add(&p, tap_check_events, &tc));
    ASSERT_EQ_UINT(projector_apply(&p, ev, 5), 5);
    ASSERT_EQ_INT(rec.calls, 1);
    ASSERT_TRUE(rec.first[0] == ev);
    ASSERT_EQ_UINT(rec.counts[0], 5);
    /* seqs 3..5 (applied), 6..8 (new), 10..11 (past the gap at 9). */
    struct event run[8];
    for (int i = 0; i < 6; i++) {
        run[i] = ev[2 + i];
    }
    run[6] = ev[9];
    run[7] = ev[10];
    ASSERT_EQ_UINT(projector_apply(&p, run, 8), 6); /* consumed: skipped and applied */
    ASSERT_EQ_INT(rec.calls, 2);
    ASSERT_TRUE(rec.first[1] == run + 3);
    ASSERT_EQ_UINT(rec.counts[1], 3);
    ASSERT_EQ_INT(projector_live_seq(&p), 8);
    /* Nothing new, or nothing reachable: no call. */
    ASSERT_EQ_UINT(projector_apply(&p, ev, 8), 8);
    ASSERT_EQ_UINT(projector_apply(&p, ev + 9, n - 9), 0);
    ASSERT_EQ_INT(rec.calls, 2);
    ASSERT_EQ_INT(projector_live_seq(&p), 8);
    ASSERT_EQ_UINT(projector_apply(&p, ev + 8, n - 8), n - 8);
    ASSERT_EQ_INT(rec.calls, 3);
    ASSERT_TRUE(rec.first[2] == ev + 8);
    ASSERT_EQ_UINT(rec.counts[2], n - 8);
    ASSERT_EQ_UINT(tc.events, n);
    ASSERT_EQ_UINT(tc.out_of_order, 0);
    assert_matches_model(&p, &f->gen);
    projector_deinit(&p);
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
    ASSERT_EQ_INT(projector_live_seq(&p), 0); /* a fresh log: nothing yet */
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events, k), k);
    ASSERT_EQ_UINT(projector_apply(&p, f->gen.events + k - 10, n - k + 10), n - k + 10);
    assert_matches_model(&p, &f->gen);
    ASSERT_EQ_UINT(tc.events, n);
    ASSERT_EQ_UINT(tc.out_of_order, 0);
    projector_deinit(&p);
}

struct applier {
    struct projector *p;
    const struct event *events;
    size_t count;
    useconds_t delay_us;
};

static void *applier_main(void *arg)
{
    struct applier *a = arg;
    usleep(a->delay_us);
    (void)projector_apply(a->p, a->events, a->count);
    return NULL;
}

/* A reader waits for a seq the writer acknowledged: true once another thread applies it,
 * false when the timeout passes first (run under TSan too). */
static void test_wait_seq(void **state)
{
    struct fixture *f = *state;
    struct projector p;
    load_projector(f, &p);
    gen_init(&f->gen, 29);
    gen_catalog(&f->gen);
    for (int i = 0; i < 50; i++) {
        gen_step(&f->gen);
    }
    ASSERT_TRUE(projector_wait_seq(&p, 0, 0)); /* reached already: at once */
    int64_t start_us = clock_mono_us();
    ASSERT_FALSE(projector_wait_seq(&p, 1, 20000));
    ASSERT_GE_INT(clock_mono_us() - start_us, 20000);
    ASSERT_FALSE(projector_wait_seq(&p, 1, 0));
    struct applier a = {&p, f->gen.events, f->gen.count, 30000};
    pthread_t thread;
    ASSERT_EQ_INT(pthread_create(&thread, NULL, applier_main, &a), 0);
    ASSERT_TRUE(projector_wait_seq(&p, f->gen.seq, 10 * 1000 * 1000));
    ASSERT_GE_INT(projector_live_seq(&p), f->gen.seq); /* true only once it is there */
    pthread_join(thread, NULL);
    ASSERT_TRUE(projector_wait_seq(&p, f->gen.seq, 0));
    ASSERT_TRUE(projector_wait_seq(&p, 3, 0));
    start_us = clock_mono_us();
    ASSERT_FALSE(projector_wait_seq(&p, f->gen.seq + 1, 5000));
    ASSERT_GE_INT(clock_mono_us() - start_us, 5000);
    assert_matches_model(&p, &f->gen);
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
    ASSERT_OK(store_reader_events(reader, 0, "S2", NULL, 100, &seen, seen_row));
    ASSERT_EQ_INT(seen.count, 3); /* StoreCreated S2, then K1's and K4's ProductCreated */
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
        PROJECTOR_TEST(test_bad_rows_in_the_log),
        PROJECTOR_TEST(test_duplicate_batches_are_skipped),
        PROJECTOR_TEST(test_replay_equivalence),
        PROJECTOR_TEST(test_rebuild_while_writing),
        PROJECTOR_TEST(test_readers_never_see_torn_items),
        PROJECTOR_TEST(test_sold_is_projected),
        PROJECTOR_TEST(test_events_reader_filters),
        PROJECTOR_TEST(test_tap_receives_exactly_the_applied_run),
        PROJECTOR_TEST(test_gaps_wait_for_the_missing_events),
        PROJECTOR_TEST(test_wait_seq),
        PROJECTOR_TEST(test_hook_and_follower_together),
    };
#undef PROJECTOR_TEST
    log_set_level(LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
