/*
 * test_writer.c - the single writer (writer.c) over a real SQLite store in a temporary
 * directory.
 *
 * Most tests drive writer_run_batch directly on this thread with commands filled by hand, as
 * the I/O threads would fill them, and a reply callback that records the replies. Every test
 * then checks the database itself with its own sqlite3 connection: the events' deltas add up
 * to each stock item's on_hand, orders match acknowledged purchases, and the domain equals
 * what is stored. Storage failure is provoked two ways: a row planted by a second connection
 * that makes the batch's INSERT fail mid-transaction (fast), and a second connection holding
 * the write lock so that BEGIN IMMEDIATE fails with SQLITE_BUSY (takes the 5 s busy timeout,
 * once). One test runs the writer thread with two producer threads and a reader, for TSan.
 *
 * The file includes writer.c to reach writer_invariants_hold (STYLE 17). Read
 * tests/blackbox/ next.
 */
#include "../../src/core/writer.c"
#include "read/projector.h"
#include "store/store_open.h"

#include <jansson.h>
#include <pthread.h>
#include <sched.h>
#include <sqlite3.h>
#include <unistd.h>

#include "test_helpers.h"

/* The tables' default sizes (base/capacity.h), as stockd starts without --max-* flags. */
static const struct capacity test_capacity = {CAPACITY_STORES_DEFAULT, CAPACITY_PRODUCTS_DEFAULT,
                                              CAPACITY_ITEMS_DEFAULT,
                                              CAPACITY_RESERVATIONS_DEFAULT};

/* ---- fixture ----------------------------------------------------------------------------- */

#define REPLIES_MAX 2048
#define T0_MS 1700000000000LL

static _Atomic int64_t fake_now_ms = T0_MS;

static int64_t fake_wall_ms(void)
{
    return atomic_load(&fake_now_ms);
}

struct fixture {
    char dir[256];
    char path[300];
    struct store *store;
    struct domain *domain;
    struct queue queue;
    struct writer writer;
    struct projector *projector; /* the read model, fed by the writer as main wires it */
    bool open;
    size_t reply_count; /* replies recorded by record_reply since the last run */
    struct command *replies[REPLIES_MAX];
};

static void record_reply(struct command *cmd, void *context)
{
    struct fixture *f = context;
    SVC_ASSERT(f->reply_count < REPLIES_MAX);
    f->replies[f->reply_count++] = cmd;
}

/* Opens store, domain, queue and writer on f->path, as main does. */
static int fixture_open(struct fixture *f, void (*reply)(struct command *, void *))
{
    SVC_ASSERT(!f->open);
    if (store_open(&f->store, f->path) != 0) {
        return -1;
    }
    f->domain = calloc(1, sizeof *f->domain);
    SVC_ASSERT(f->domain != NULL);
    SVC_ASSERT(dom_init(f->domain, &test_capacity) == 0);
    SVC_ASSERT(queue_init(&f->queue, QUEUE_DEPTH_MAX) == 0);
    f->projector = calloc(1, sizeof *f->projector);
    SVC_ASSERT(f->projector != NULL && projector_init(f->projector, f->path, &test_capacity) == 0);
    struct store_reader *reader = NULL;
    SVC_ASSERT(store_reader_open(&reader, f->path) == 0);
    SVC_ASSERT(projector_load(f->projector, reader) == 0);
    store_reader_close(reader);
    struct writer_config config = {
        .store = f->store,
        .domain = f->domain,
        .queue = &f->queue,
        .idem_retention_ms = IDEM_RETENTION_MS_DEFAULT,
        .wall_ms = fake_wall_ms,
        .reply_context = f,
        .reply = reply,
        .committed_context = f->projector,
        .durable = projector_durable_hook,
        .committed = projector_committed_hook,
        .applied_seq = projector_applied_hook,
    };
    int rc = writer_init(&f->writer, &config);
    f->open = rc == 0;
    return rc;
}

static void fixture_close(struct fixture *f)
{
    if (!f->open) {
        return;
    }
    writer_stop(&f->writer);
    writer_deinit(&f->writer);
    queue_deinit(&f->queue);
    dom_deinit(f->domain);
    free(f->domain);
    projector_deinit(f->projector);
    free(f->projector);
    store_close(f->store);
    f->open = false;
}

static int writer_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/stockd-test-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/stockd.db", f->dir);
    atomic_store(&fake_now_ms, T0_MS);
    if (fixture_open(f, record_reply) != 0) {
        return -1;
    }
    *state = f;
    return 0;
}

static int writer_teardown(void **state)
{
    struct fixture *f = *state;
    fixture_close(f);
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char file[320];
        snprintf(file, sizeof file, "%s%s", f->path, suffixes[i]);
        unlink(file);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- commands ---------------------------------------------------------------------------- */

/* Commands are big (a reply buffer each): allocate them, zeroed, as the I/O pools do. */
static struct command *commands_new(size_t count)
{
    struct command *cmds = calloc(count, sizeof *cmds);
    SVC_ASSERT(cmds != NULL);
    return cmds;
}

static void cmd_store(struct command *c, const char *id, int64_t latency_ms)
{
    memset(c, 0, sizeof *c);
    c->kind = CMD_STORE_CREATE;
    snprintf(c->store_id, sizeof c->store_id, "%s", id);
    snprintf(c->name, sizeof c->name, "Store %s", id);
    c->latency_ms = latency_ms;
}

/* A product with on_hand in store (NULL: the lowest-stock store). */
static void cmd_product(struct command *c, const char *sku, int64_t on_hand, const char *store)
{
    memset(c, 0, sizeof *c);
    c->kind = CMD_PRODUCT_CREATE;
    snprintf(c->sku, sizeof c->sku, "%s", sku);
    snprintf(c->name, sizeof c->name, "Product %s", sku);
    c->initial_on_hand = on_hand;
    c->has_store = store != NULL;
    snprintf(c->store_id, sizeof c->store_id, "%s", store ? store : "");
}

static void cmd_purchase(struct command *c, const char *sku, int64_t qty, const char *store)
{
    memset(c, 0, sizeof *c);
    c->kind = CMD_PURCHASE;
    snprintf(c->sku, sizeof c->sku, "%s", sku);
    snprintf(c->customer_id, sizeof c->customer_id, "cust-\"1\"");
    c->qty = qty;
    c->policy = DOM_POLICY_HIGHEST_AVAILABLE;
    c->has_store = store != NULL;
    snprintf(c->store_id, sizeof c->store_id, "%s", store ? store : "");
}

static void cmd_adjust(struct command *c, const char *store, const char *sku, int64_t delta)
{
    memset(c, 0, sizeof *c);
    c->kind = CMD_ADJUST;
    snprintf(c->store_id, sizeof c->store_id, "%s", store);
    snprintf(c->sku, sizeof c->sku, "%s", sku);
    snprintf(c->reason, sizeof c->reason, "recount");
    c->delta = delta;
}

/* Adds an Idempotency-Key; the fingerprint stands for (method, path, body). */
static void cmd_key(struct command *c, const char *key, uint64_t fingerprint)
{
    c->has_idem_key = true;
    snprintf(c->idem_key, sizeof c->idem_key, "%s", key);
    if (c->principal[0] == '\0') {
        snprintf(c->principal, sizeof c->principal, "%s", "tester"); /* the api sets it */
    }
    c->fingerprint = fingerprint;
}

/* Runs cmds[0..count) as one batch and checks every command got exactly one reply, in order. */
static void run_batch(struct fixture *f, struct command *cmds, size_t count)
{
    struct command *pointers[BATCH_COMMANDS_MAX];
    SVC_ASSERT(count <= BATCH_COMMANDS_MAX);
    for (size_t i = 0; i < count; i++) {
        pointers[i] = &cmds[i];
    }
    f->reply_count = 0;
    atomic_fetch_add(&fake_now_ms, 1);
    writer_run_batch(&f->writer, pointers, count);
    ASSERT_EQ_UINT(f->reply_count, count);
    for (size_t i = 0; i < count; i++) {
        ASSERT_TRUE(f->replies[i] == &cmds[i]);
        ASSERT_EQ_UINT(cmds[i].reply_length, strlen(cmds[i].reply_body));
    }
    ASSERT_TRUE(writer_invariants_hold(&f->writer));
    ASSERT_TRUE(dom_invariants_hold(f->domain));
    ASSERT_EQ_UINT(f->domain->undo_count, 0);
}

/* ---- reading replies --------------------------------------------------------------------- */

static json_t *reply_json(const struct command *c)
{
    json_error_t error;
    json_t *body = json_loadb(c->reply_body, c->reply_length, 0, &error);
    if (body == NULL || !json_is_object(body)) {
        TEST_FAIL("reply is not a JSON object (%s): %.*s", error.text, (int)c->reply_length,
                  c->reply_body);
    }
    return body;
}

static int64_t reply_int(const struct command *c, const char *key)
{
    json_t *body = reply_json(c);
    json_t *member = json_object_get(body, key);
    if (!json_is_integer(member)) {
        TEST_FAIL("reply has no integer \"%s\": %s", key, c->reply_body);
    }
    int64_t value = (int64_t)json_integer_value(member);
    json_decref(body);
    return value;
}

/* Copies the string member key of the reply into out (empty when absent). */
static void reply_str(const struct command *c, const char *key, char *out, size_t size)
{
    json_t *body = reply_json(c);
    const char *value = json_string_value(json_object_get(body, key));
    snprintf(out, size, "%s", value ? value : "");
    json_decref(body);
}

static void assert_order_reply(const struct command *c, int64_t order_seq, int64_t available)
{
    char text[64];
    char expected[64];
    ASSERT_EQ_INT(c->reply_status, 201);
    ASSERT_FALSE(c->reply_problem);
    snprintf(expected, sizeof expected, "/v1/orders/ord_%" PRId64, order_seq);
    ASSERT_EQ_STR(c->reply_location, expected);
    snprintf(expected, sizeof expected, "ord_%" PRId64, order_seq);
    reply_str(c, "orderId", text, sizeof text);
    ASSERT_EQ_STR(text, expected);
    reply_str(c, "status", text, sizeof text);
    ASSERT_EQ_STR(text, "COMPLETED");
    ASSERT_EQ_INT(reply_int(c, "available"), available);
}

static void assert_problem_reply(const struct command *c, int status, const char *code)
{
    char text[64];
    ASSERT_EQ_INT(c->reply_status, status);
    ASSERT_TRUE(c->reply_problem);
    ASSERT_EQ_STR(c->reply_location, "");
    reply_str(c, "code", text, sizeof text);
    ASSERT_EQ_STR(text, code);
    ASSERT_EQ_INT(reply_int(c, "status"), status);
}

/* ---- the database, checked directly ------------------------------------------------------ */

static sqlite3 *db_open(const struct fixture *f)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        TEST_FAIL("cannot open %s: %s", f->path, sqlite3_errmsg(db));
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static int64_t db_int(const struct fixture *f, const char *sql)
{
    sqlite3 *db = db_open(f);
    sqlite3_stmt *stmt = NULL;
    int64_t value = INT64_MIN;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
        value = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    if (value == INT64_MIN) {
        TEST_FAIL("query failed: %s", sql);
    }
    return value;
}

static void db_exec(sqlite3 *db, const char *sql)
{
    char *message = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &message) != SQLITE_OK) {
        TEST_FAIL("%s: %s", sql, message ? message : "?");
    }
}

/* The event log explains the stock exactly: per (store, sku), the deltas of all events add
 * up to on_hand, and the order deltas since the last seed-004 reset (which restarts the sold
 * count) to -sold; orders are the acknowledged purchases, one OrderCompleted event each. */
static void check_events_explain_stock(const struct fixture *f, int64_t orders_expected)
{
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM stock_items s WHERE on_hand !="
                            " (SELECT COALESCE(SUM(json_extract(e.data, '$.delta')), 0)"
                            "  FROM events e WHERE e.store_id = s.store_id AND e.sku = s.sku)"),
                  0);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM stock_items s WHERE sold !="
                            " (SELECT -COALESCE(SUM(json_extract(e.data, '$.delta')), 0)"
                            "  FROM events e WHERE e.store_id = s.store_id AND e.sku = s.sku"
                            "  AND e.event_type = 'OrderCompleted' AND e.seq >"
                            "  (SELECT COALESCE(MAX(r.seq), 0) FROM events r"
                            "   WHERE r.store_id = s.store_id AND r.sku = s.sku"
                            "   AND json_extract(r.data, '$.reason') = 'reset'))"),
                  0);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM (SELECT DISTINCT store_id, sku FROM events"
                            " WHERE sku IS NOT NULL EXCEPT SELECT store_id, sku FROM stock_items)"),
                  0);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM orders"), orders_expected);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM events WHERE event_type = 'OrderCompleted'"),
                  orders_expected);
    ASSERT_EQ_INT(db_int(f, "SELECT COALESCE(MAX(order_seq), 0) FROM orders"), orders_expected);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM"
                            " events e WHERE e.event_type = 'OrderCompleted' AND"
                            " json_extract(e.data, '$.orderId') = 'ord_' || o.order_seq AND"
                            " -json_extract(e.data, '$.delta') = json_extract(o.lines, '$[0].qty')"
                            " AND e.store_id = o.store_id)"),
                  0);
    /* Event numbers are dense: no gap left by a failed batch. */
    ASSERT_EQ_INT(db_int(f, "SELECT MAX(seq) - count(*) FROM events"), 0);
}

/* The writer's committed sequences. */
static const struct batch_seqs *seqs_of(const struct fixture *f)
{
    return batch_seqs_committed(f->writer.batch);
}

/* The domain (between batches its working state is the committed state) equals what is
 * stored; so do the writer's sequences. */
static void check_domain_matches_db(const struct fixture *f)
{
    const struct domain *d = f->domain;
    ASSERT_EQ_UINT(d->undo_count, 0);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM stores"), d->store_count);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM products"), d->product_count);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM stock_items"), d->item_count);
    ASSERT_EQ_UINT(d->store_count_committed, d->store_count);
    ASSERT_EQ_UINT(d->product_count_committed, d->product_count);
    ASSERT_EQ_UINT(d->item_count_committed, d->item_count);
    ASSERT_TRUE(memcmp(batch_seqs_working(f->writer.batch), seqs_of(f), sizeof *seqs_of(f)) == 0);
    ASSERT_EQ_INT(db_int(f, "SELECT COALESCE(MAX(order_seq), 0) FROM orders"), seqs_of(f)->order);
    ASSERT_EQ_INT(db_int(f, "SELECT MAX(seq) FROM events"), seqs_of(f)->event);
    sqlite3 *db = db_open(f);
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ_INT(sqlite3_prepare_v2(db,
                                     "SELECT store_id, sku, on_hand, reserved, version, sold"
                                     " FROM stock_items",
                                     -1, &stmt, NULL),
                  SQLITE_OK);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        int32_t s = dom_store_find(d, (const char *)sqlite3_column_text(stmt, 0));
        int32_t p = dom_product_find(d, (const char *)sqlite3_column_text(stmt, 1));
        ASSERT_GE_INT(s, 0);
        ASSERT_GE_INT(p, 0);
        int32_t index = dom_item_find(d, (uint32_t)s, (uint32_t)p);
        ASSERT_GE_INT(index, 0);
        const struct dom_item *item = &d->items[index];
        ASSERT_EQ_INT(item->on_hand, sqlite3_column_int64(stmt, 2));
        ASSERT_EQ_INT(item->reserved, sqlite3_column_int64(stmt, 3));
        ASSERT_EQ_INT(item->version, sqlite3_column_int64(stmt, 4));
        ASSERT_EQ_INT(item->sold, sqlite3_column_int64(stmt, 5));
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
}

/* The committed on_hand of (store, sku), or -1. */
static int64_t stock_of(const struct fixture *f, const char *store, const char *sku)
{
    int32_t s = dom_store_find(f->domain, store);
    int32_t p = dom_product_find(f->domain, sku);
    int32_t index = s >= 0 && p >= 0 ? dom_item_find(f->domain, (uint32_t)s, (uint32_t)p) : -1;
    return index >= 0 ? f->domain->items[index].on_hand : -1;
}

/* Creates sku with on_hand in S1 (the default store of a fresh database) in its own batch. */
static void seed_product(struct fixture *f, const char *sku, int64_t on_hand)
{
    struct command *c = commands_new(1);
    cmd_product(c, sku, on_hand, "S1");
    run_batch(f, c, 1);
    ASSERT_EQ_INT(c->reply_status, 201);
    free(c);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_fresh_database(void **state)
{
    struct fixture *f = *state;
    /* The writer's first batch on a new database creates store S1 and its event. */
    ASSERT_EQ_UINT(f->domain->store_count, 1);
    ASSERT_EQ_INT(dom_store_find(f->domain, "S1"), 0);
    ASSERT_EQ_INT(seqs_of(f)->order, 0);
    ASSERT_EQ_INT(seqs_of(f)->event, 1);
    ASSERT_EQ_INT(writer_acked_seq(&f->writer), 1);
    ASSERT_TRUE(atomic_load(&f->writer.storage_ok));
    check_domain_matches_db(f);
    check_events_explain_stock(f, 0);
}

static void test_product_then_purchases_in_one_batch(void **state)
{
    struct fixture *f = *state;
    struct command *c = commands_new(8);
    cmd_store(&c[0], "S2", 5);
    cmd_product(&c[1], "P1", 10, "S1");
    cmd_purchase(&c[2], "P1", 3, NULL);
    cmd_purchase(&c[3], "P1", 4, "S1");
    cmd_purchase(&c[4], "P1", 5, NULL); /* 3 left */
    cmd_adjust(&c[5], "S2", "P1", 6);   /* a new item in the new store */
    cmd_purchase(&c[6], "P1", 5, NULL); /* now S2 has enough */
    cmd_purchase(&c[7], "NOPE", 1, NULL);
    uint64_t batches = atomic_load(&f->writer.stats.batches); /* 1: the bootstrap's S1 */
    run_batch(f, c, 8);
    ASSERT_EQ_INT(atomic_load(&f->writer.batch_started_ms), 0); /* none in hand (/health) */
    ASSERT_GT_INT(atomic_load(&f->writer.batch_ended_ms), 0);
    ASSERT_EQ_INT(c[0].reply_status, 201);
    ASSERT_EQ_INT(c[1].reply_status, 201);
    ASSERT_EQ_INT(reply_int(&c[1], "onHand"), 10);
    assert_order_reply(&c[2], 1, 7);
    assert_order_reply(&c[3], 2, 3);
    assert_problem_reply(&c[4], 409, "insufficient_stock");
    ASSERT_EQ_INT(reply_int(&c[4], "available"), 3);
    ASSERT_EQ_INT(c[5].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[5], "onHand"), 6);
    ASSERT_EQ_INT(reply_int(&c[5], "version"), 1);
    assert_order_reply(&c[6], 3, 1);
    char store[16];
    reply_str(&c[6], "storeId", store, sizeof store);
    ASSERT_EQ_STR(store, "S2");
    assert_problem_reply(&c[7], 404, "unknown_sku");
    ASSERT_EQ_INT(stock_of(f, "S1", "P1"), 3);
    ASSERT_EQ_INT(stock_of(f, "S2", "P1"), 1);
    ASSERT_EQ_UINT(atomic_load(&f->writer.stats.batches), batches + 1);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 3);
    /* A batch of refusals only writes nothing. */
    int64_t events = db_int(f, "SELECT count(*) FROM events");
    cmd_purchase(&c[0], "P1", 1000, NULL);
    cmd_product(&c[1], "P1", 1, NULL);
    run_batch(f, c, 2);
    assert_problem_reply(&c[0], 409, "insufficient_stock");
    assert_problem_reply(&c[1], 409, "product_exists");
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM events"), events);
    check_domain_matches_db(f);
    free(c);
}

static void test_150_purchases_on_100_units(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "HOT", 100);
    struct command *c = commands_new(150);
    for (int i = 0; i < 150; i++) {
        cmd_purchase(&c[i], "HOT", 1, NULL);
    }
    run_batch(f, c, 150);
    for (int i = 0; i < 100; i++) {
        assert_order_reply(&c[i], i + 1, 99 - i);
    }
    for (int i = 100; i < 150; i++) {
        assert_problem_reply(&c[i], 409, "insufficient_stock");
        ASSERT_EQ_INT(reply_int(&c[i], "available"), 0);
    }
    ASSERT_EQ_INT(stock_of(f, "S1", "HOT"), 0);
    ASSERT_EQ_INT(db_int(f, "SELECT on_hand FROM stock_items WHERE sku = 'HOT'"), 0);
    ASSERT_EQ_INT(db_int(f, "SELECT sold FROM stock_items WHERE sku = 'HOT'"), 100);
    ASSERT_EQ_INT(db_int(f, "SELECT version FROM stock_items WHERE sku = 'HOT'"), 101);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 100);
    free(c);
}

static void test_same_key_twice_in_one_batch(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "P", 10);
    struct command *c = commands_new(5);
    cmd_purchase(&c[0], "P", 2, NULL);
    cmd_key(&c[0], "key-1", 111);
    cmd_purchase(&c[1], "P", 2, NULL);
    cmd_key(&c[1], "key-1", 111);
    cmd_purchase(&c[2], "P", 3, NULL); /* same key, another request */
    cmd_key(&c[2], "key-1", 222);
    cmd_purchase(&c[3], "P", 100, NULL); /* a keyed refusal is recorded too */
    cmd_key(&c[3], "key-2", 333);
    cmd_purchase(&c[4], "P", 100, NULL);
    cmd_key(&c[4], "key-2", 333);
    run_batch(f, c, 5);
    assert_order_reply(&c[0], 1, 8);
    ASSERT_FALSE(c[0].reply_replayed);
    ASSERT_TRUE(c[1].reply_replayed);
    ASSERT_EQ_INT(c[1].reply_status, 201);
    ASSERT_EQ_UINT(c[1].reply_length, c[0].reply_length);
    ASSERT_EQ_MEM(c[1].reply_body, c[0].reply_body, c[0].reply_length);
    assert_problem_reply(&c[2], 422, "idempotency_key_reused");
    assert_problem_reply(&c[3], 409, "insufficient_stock");
    ASSERT_TRUE(c[4].reply_replayed);
    ASSERT_EQ_INT(c[4].reply_status, 409);
    ASSERT_TRUE(c[4].reply_problem);
    ASSERT_EQ_MEM(c[4].reply_body, c[3].reply_body, c[3].reply_length);
    ASSERT_EQ_INT(stock_of(f, "S1", "P"), 8); /* applied once */
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM idempotency"), 2);
    ASSERT_EQ_UINT(atomic_load(&f->writer.stats.replays), 2);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 1);
    free(c);
}

static void test_key_replayed_from_an_earlier_batch(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "P", 10);
    struct command *first = commands_new(2);
    cmd_purchase(&first[0], "P", 4, NULL);
    cmd_key(&first[0], "order-A", 42);
    cmd_purchase(&first[1], "P", 50, NULL);
    cmd_key(&first[1], "order-B", 43);
    run_batch(f, first, 2);
    assert_order_reply(&first[0], 1, 6);
    assert_problem_reply(&first[1], 409, "insufficient_stock");
    struct command *again = commands_new(4);
    cmd_purchase(&again[0], "P", 4, NULL);
    cmd_key(&again[0], "order-A", 42);
    cmd_purchase(&again[1], "P", 50, NULL);
    cmd_key(&again[1], "order-B", 43);
    cmd_purchase(&again[2], "P", 1, NULL); /* same key, another body */
    cmd_key(&again[2], "order-A", 99);
    cmd_purchase(&again[3], "P", 1, NULL);
    cmd_key(&again[3], "order-C", 44);
    run_batch(f, again, 4);
    ASSERT_TRUE(again[0].reply_replayed);
    ASSERT_EQ_INT(again[0].reply_status, 201);
    ASSERT_FALSE(again[0].reply_problem);
    ASSERT_EQ_STR(again[0].reply_location, "/v1/orders/ord_1"); /* the same Location */
    ASSERT_EQ_UINT(again[0].reply_length, first[0].reply_length);
    ASSERT_EQ_MEM(again[0].reply_body, first[0].reply_body, first[0].reply_length);
    ASSERT_TRUE(again[1].reply_replayed);
    ASSERT_EQ_INT(again[1].reply_status, 409);
    ASSERT_TRUE(again[1].reply_problem); /* replayed problems keep their media type */
    ASSERT_EQ_STR(again[1].reply_location, "");
    ASSERT_EQ_MEM(again[1].reply_body, first[1].reply_body, first[1].reply_length);
    assert_problem_reply(&again[2], 422, "idempotency_key_reused");
    ASSERT_FALSE(again[2].reply_replayed);
    assert_order_reply(&again[3], 2, 5);
    ASSERT_EQ_INT(stock_of(f, "S1", "P"), 5);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 2);
    free(first);
    free(again);
}

static void test_idempotency_records_expire(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "P", 10);
    struct command *c = commands_new(1);
    cmd_purchase(c, "P", 1, NULL);
    cmd_key(c, "old-key", 7);
    run_batch(f, c, 1);
    assert_order_reply(c, 1, 9);
    writer_housekeeping(&f->writer); /* nothing has expired yet */
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM idempotency"), 1);
    atomic_fetch_add(&fake_now_ms, IDEM_RETENTION_MS_DEFAULT + 1);
    f->writer.prune_due_ms = 0;
    writer_housekeeping(&f->writer);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM idempotency"), 0);
    cmd_purchase(c, "P", 1, NULL);
    cmd_key(c, "old-key", 7);
    run_batch(f, c, 1);
    assert_order_reply(c, 2, 8); /* forgotten: applies again */
    ASSERT_FALSE(c->reply_replayed);
    check_events_explain_stock(f, 2);
    free(c);
}

/* What must survive a failed batch untouched: published stock, counts and sequences. */
struct committed_view {
    int64_t on_hand_p;
    int64_t on_hand_q;
    uint32_t stores;
    uint32_t products;
    uint32_t items;
    int64_t order_seq;
    int64_t event_seq;
};

static void committed_view_take(const struct fixture *f, struct committed_view *v)
{
    v->on_hand_p = stock_of(f, "S1", "P");
    v->on_hand_q = stock_of(f, "S1", "Q");
    v->stores = f->domain->store_count;
    v->products = f->domain->product_count;
    v->items = f->domain->item_count;
    v->order_seq = seqs_of(f)->order;
    v->event_seq = seqs_of(f)->event;
}

static void assert_committed_view_equal(const struct committed_view *a,
                                        const struct committed_view *b)
{
    ASSERT_EQ_INT(a->on_hand_p, b->on_hand_p);
    ASSERT_EQ_INT(a->on_hand_q, b->on_hand_q);
    ASSERT_EQ_UINT(a->stores, b->stores);
    ASSERT_EQ_UINT(a->products, b->products);
    ASSERT_EQ_UINT(a->items, b->items);
    ASSERT_EQ_INT(a->order_seq, b->order_seq);
    ASSERT_EQ_INT(a->event_seq, b->event_seq);
}

/* A batch mixing every kind of outcome, for the failure tests. Index 0 replays "done". */
#define MIXED_BATCH 8
static void fill_mixed_batch(struct command *c)
{
    cmd_purchase(&c[0], "P", 1, NULL);
    cmd_key(&c[0], "done", 1); /* stored earlier: the replay stands */
    cmd_purchase(&c[1], "P", 3, NULL);
    cmd_key(&c[1], "fresh", 2);
    cmd_purchase(&c[2], "P", 3, NULL);
    cmd_key(&c[2], "fresh", 2); /* a batch replay of c[1] */
    cmd_purchase(&c[3], "Q", 1, NULL);
    cmd_purchase(&c[4], "Q", 5, NULL); /* refused only because c[3] took a unit */
    cmd_product(&c[5], "NEW", 7, NULL);
    cmd_store(&c[6], "S9", 0);
    cmd_adjust(&c[7], "S9", "P", 4); /* a new item in the new store */
}

static void assert_mixed_batch_failed(const struct command *c, const struct command *done)
{
    ASSERT_TRUE(c[0].reply_replayed);
    ASSERT_EQ_INT(c[0].reply_status, 201);
    ASSERT_EQ_MEM(c[0].reply_body, done->reply_body, done->reply_length);
    for (int i = 1; i < MIXED_BATCH; i++) {
        /* Nothing of the batch is durable: every answer that depended on it is a 503. Also
         * the refusal of c[4], which was decided on state that was rolled back. */
        assert_problem_reply(&c[i], 503, "storage_unavailable");
        ASSERT_FALSE(c[i].reply_replayed);
    }
}

static void assert_mixed_batch_succeeded(const struct fixture *f, const struct command *c,
                                         int64_t first_order_seq)
{
    ASSERT_TRUE(c[0].reply_replayed);
    assert_order_reply(&c[1], first_order_seq, 6);
    ASSERT_FALSE(c[1].reply_replayed);
    ASSERT_TRUE(c[2].reply_replayed);
    ASSERT_EQ_MEM(c[2].reply_body, c[1].reply_body, c[1].reply_length);
    assert_order_reply(&c[3], first_order_seq + 1, 4);
    assert_problem_reply(&c[4], 409, "insufficient_stock");
    ASSERT_EQ_INT(c[5].reply_status, 201);
    ASSERT_EQ_INT(c[6].reply_status, 201);
    ASSERT_EQ_INT(c[7].reply_status, 200);
    ASSERT_EQ_INT(stock_of(f, "S9", "P"), 4);
    ASSERT_GE_INT(dom_product_find(f->domain, "NEW"), 0);
}

/* Seeds P (10) and Q (5) and the stored key "done"; *done gets its reply. */
static void seed_for_failure(struct fixture *f, struct command *done)
{
    seed_product(f, "P", 10);
    seed_product(f, "Q", 5);
    cmd_purchase(done, "P", 1, NULL);
    cmd_key(done, "done", 1);
    run_batch(f, done, 1);
    assert_order_reply(done, 1, 9);
}

static void test_storage_failure_mid_transaction(void **state)
{
    struct fixture *f = *state;
    struct command *done = commands_new(1);
    seed_for_failure(f, done);
    struct committed_view before;
    struct committed_view after;
    committed_view_take(f, &before);
    /* Another writer takes the next event number: the batch's INSERT INTO events fails on
     * the primary key after the other rows went in, and the transaction is rolled back. */
    sqlite3 *db = db_open(f);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO events (seq, event_type, event_version, occurred_at_ms, data)"
             " VALUES (%" PRId64 ", 'Planted', 1, 0, '{}')",
             seqs_of(f)->event + 1);
    db_exec(db, sql);
    struct command *c = commands_new(MIXED_BATCH);
    fill_mixed_batch(c);
    run_batch(f, c, MIXED_BATCH);
    assert_mixed_batch_failed(c, done);
    ASSERT_FALSE(atomic_load(&f->writer.storage_ok));
    ASSERT_EQ_UINT(atomic_load(&f->writer.stats.batch_failures), 1);
    committed_view_take(f, &after);
    assert_committed_view_equal(&before, &after);
    ASSERT_EQ_INT(dom_product_find(f->domain, "NEW"), -1);
    ASSERT_EQ_INT(dom_store_find(f->domain, "S9"), -1);
    ASSERT_EQ_INT(db_int(f, "SELECT count(*) FROM idempotency WHERE idem_key = 'fresh'"), 0);
    /* The failure cleared: the same batch, retried, succeeds with the same numbers. */
    db_exec(db, "DELETE FROM events WHERE event_type = 'Planted'");
    sqlite3_close(db);
    check_domain_matches_db(f);
    fill_mixed_batch(c);
    run_batch(f, c, MIXED_BATCH);
    assert_mixed_batch_succeeded(f, c, 2);
    ASSERT_TRUE(atomic_load(&f->writer.storage_ok));
    check_domain_matches_db(f);
    check_events_explain_stock(f, 3);
    free(c);
    free(done);
}

static void test_storage_busy(void **state)
{
    struct fixture *f = *state;
    struct command *done = commands_new(1);
    seed_for_failure(f, done);
    struct committed_view before;
    struct committed_view after;
    committed_view_take(f, &before);
    /* Another connection holds the write lock: BEGIN IMMEDIATE waits out the busy timeout
     * (5 s) and fails with SQLITE_BUSY before anything is written. */
    sqlite3 *db = db_open(f);
    db_exec(db, "BEGIN EXCLUSIVE");
    struct command *c = commands_new(MIXED_BATCH);
    fill_mixed_batch(c);
    int64_t started_us = clock_mono_us();
    run_batch(f, c, MIXED_BATCH);
    print_message("  the busy batch failed after %" PRId64 " ms\n",
                  (clock_mono_us() - started_us) / 1000);
    assert_mixed_batch_failed(c, done);
    ASSERT_FALSE(atomic_load(&f->writer.storage_ok));
    committed_view_take(f, &after);
    assert_committed_view_equal(&before, &after);
    db_exec(db, "COMMIT");
    sqlite3_close(db);
    fill_mixed_batch(c);
    run_batch(f, c, MIXED_BATCH);
    assert_mixed_batch_succeeded(f, c, 2);
    ASSERT_TRUE(atomic_load(&f->writer.storage_ok));
    check_domain_matches_db(f);
    check_events_explain_stock(f, 3);
    free(c);
    free(done);
}

static void test_restart_keeps_state_sequences_and_keys(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "P", 50);
    struct command *c = commands_new(4);
    cmd_store(&c[0], "S2", 3);
    cmd_purchase(&c[1], "P", 5, NULL);
    cmd_key(&c[1], "before-restart", 5);
    cmd_adjust(&c[2], "S2", "P", 9);
    cmd_purchase(&c[3], "P", 2, "S2");
    run_batch(f, c, 4);
    assert_order_reply(&c[1], 1, 45);
    assert_order_reply(&c[3], 2, 7);
    struct command keyed = c[1];
    keyed.reply_body = keyed.reply_inline; /* the copy keeps its own reply bytes */
    int64_t event_seq = seqs_of(f)->event;
    fixture_close(f);
    ASSERT_OK(fixture_open(f, record_reply));
    /* Everything is back: stock, versions, sequences, idempotency records. */
    ASSERT_EQ_INT(stock_of(f, "S1", "P"), 45);
    ASSERT_EQ_INT(stock_of(f, "S2", "P"), 7);
    ASSERT_EQ_INT(seqs_of(f)->order, 2);
    ASSERT_EQ_INT(seqs_of(f)->event, event_seq);
    ASSERT_EQ_INT(f->domain->stores[1].latency_ms, 3);
    check_domain_matches_db(f);
    cmd_purchase(&c[0], "P", 5, NULL);
    cmd_key(&c[0], "before-restart", 5);
    cmd_purchase(&c[1], "P", 1, NULL);
    cmd_adjust(&c[2], "S1", "P", -40);
    cmd_purchase(&c[3], "P", 7, NULL);
    run_batch(f, c, 4);
    ASSERT_TRUE(c[0].reply_replayed);
    ASSERT_EQ_INT(c[0].reply_status, 201);
    ASSERT_EQ_UINT(c[0].reply_length, keyed.reply_length);
    ASSERT_EQ_MEM(c[0].reply_body, keyed.reply_body, keyed.reply_length);
    assert_order_reply(&c[1], 3, 44); /* numbering continues */
    ASSERT_EQ_INT(c[2].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[2], "version"), 4);
    assert_order_reply(&c[3], 4, 0);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 4);
    free(c);
}

static void test_ticket_reset_and_seed004_purchases(void **state)
{
    struct fixture *f = *state;
    struct command *c = commands_new(4);
    c[0] = (struct command){.kind = CMD_TICKET_RESET, .style = CMD_STYLE_SEED004};
    snprintf(c[0].sku, sizeof c[0].sku, "ITEM-A");
    cmd_purchase(&c[1], "ITEM-A", 99, NULL);
    c[1].style = CMD_STYLE_SEED004;
    cmd_purchase(&c[2], "ITEM-A", 2, NULL);
    c[2].style = CMD_STYLE_SEED004;
    cmd_purchase(&c[3], "ITEM-A", 1, NULL);
    c[3].style = CMD_STYLE_SEED004;
    run_batch(f, c, 4);
    ASSERT_EQ_INT(c[0].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[0], "remaining_stock"), TICKET_RESET_ON_HAND);
    ASSERT_EQ_INT(c[1].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[1], "remaining_stock"), 1);
    ASSERT_EQ_INT(c[2].reply_status, 410);
    ASSERT_FALSE(c[2].reply_problem);
    ASSERT_EQ_INT(reply_int(&c[2], "remaining_stock"), 1);
    ASSERT_EQ_INT(c[3].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[3], "remaining_stock"), 0);
    /* A reset of an existing item adjusts it back up, with a StockAdjusted event. */
    c[0] = (struct command){.kind = CMD_TICKET_RESET, .style = CMD_STYLE_SEED004};
    snprintf(c[0].sku, sizeof c[0].sku, "ITEM-A");
    run_batch(f, c, 1);
    ASSERT_EQ_INT(c[0].reply_status, 200);
    ASSERT_EQ_INT(stock_of(f, "S1", "ITEM-A"), TICKET_RESET_ON_HAND);
    ASSERT_EQ_INT(db_int(f, "SELECT sold FROM stock_items WHERE sku = 'ITEM-A'"), 0);
    cmd_purchase(&c[1], "ITEM-A", 3, NULL);
    c[1].style = CMD_STYLE_SEED004;
    run_batch(f, &c[1], 1);
    ASSERT_EQ_INT(reply_int(&c[1], "remaining_stock"), TICKET_RESET_ON_HAND - 3);
    ASSERT_EQ_INT(db_int(f, "SELECT sold FROM stock_items WHERE sku = 'ITEM-A'"), 3);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 3);
    free(c);
}

static void test_adjust_if_match(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "P", 10); /* version 1 */
    struct command *c = commands_new(4);
    cmd_adjust(&c[0], "S1", "P", 5);
    c[0].has_expected_version = true;
    c[0].expected_version = 1;
    cmd_adjust(&c[1], "S1", "P", 5); /* the same If-Match, now stale */
    c[1].has_expected_version = true;
    c[1].expected_version = 1;
    cmd_adjust(&c[2], "S1", "P", -3);
    c[2].has_expected_version = true;
    c[2].expected_version = 2;
    cmd_purchase(&c[3], "P", 1, NULL);
    run_batch(f, c, 4);
    ASSERT_EQ_INT(c[0].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[0], "version"), 2);
    assert_problem_reply(&c[1], 409, "version_conflict");
    ASSERT_EQ_INT(reply_int(&c[1], "currentVersion"), 2);
    ASSERT_EQ_INT(c[2].reply_status, 200);
    ASSERT_EQ_INT(reply_int(&c[2], "onHand"), 12);
    assert_order_reply(&c[3], 1, 11);
    ASSERT_EQ_INT(stock_of(f, "S1", "P"), 11);
    check_domain_matches_db(f);
    check_events_explain_stock(f, 1);
    free(c);
}

static void test_seed004_keyed_replay_keeps_plain_json(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "T", 1);
    struct command *c = commands_new(3);
    for (int i = 0; i < 2; i++) {
        cmd_purchase(&c[i], "T", 1, NULL);
        c[i].style = CMD_STYLE_SEED004;
    }
    cmd_key(&c[1], "sold-out", 9);
    run_batch(f, c, 2);
    ASSERT_EQ_INT(c[0].reply_status, 200);
    ASSERT_EQ_INT(c[1].reply_status, 410);
    ASSERT_FALSE(c[1].reply_problem);
    cmd_purchase(&c[2], "T", 1, NULL);
    c[2].style = CMD_STYLE_SEED004;
    cmd_key(&c[2], "sold-out", 9);
    run_batch(f, &c[2], 1);
    ASSERT_TRUE(c[2].reply_replayed);
    ASSERT_EQ_INT(c[2].reply_status, 410);
    ASSERT_FALSE(c[2].reply_problem); /* a 410 of seed 004 is not problem+json */
    ASSERT_EQ_UINT(c[2].reply_length, c[1].reply_length);
    ASSERT_EQ_MEM(c[2].reply_body, c[1].reply_body, c[1].reply_length);
    check_events_explain_stock(f, 1);
    free(c);
}

/* ---- the writer thread ------------------------------------------------------------------- */

#define THREAD_PRODUCERS 2
#define THREAD_COMMANDS_EACH 400
#define THREAD_STOCK 600

struct thread_replies {
    _Atomic uint64_t total;
    _Atomic uint64_t created;
    _Atomic uint64_t refused;
    _Atomic uint64_t other;
};

static struct thread_replies thread_replies;

static void count_reply(struct command *cmd, void *context)
{
    (void)context;
    if (cmd->reply_status == 201) {
        atomic_fetch_add(&thread_replies.created, 1);
    } else if (cmd->reply_status == 409) {
        atomic_fetch_add(&thread_replies.refused, 1);
    } else {
        atomic_fetch_add(&thread_replies.other, 1);
    }
    atomic_fetch_add(&thread_replies.total, 1); /* last: the command is the pusher's again */
}

struct pusher {
    pthread_t thread;
    struct queue *queue;
    struct command *commands; /* THREAD_COMMANDS_EACH, filled by this thread */
    uint64_t full_retries;
};

static void *pusher_main(void *arg)
{
    struct pusher *p = arg;
    for (int i = 0; i < THREAD_COMMANDS_EACH; i++) {
        struct command *c = &p->commands[i];
        cmd_purchase(c, "P", 1, NULL);
        c->owner = p;
        c->queued_us = clock_mono_us();
        while (queue_push(p->queue, c) == -EAGAIN) {
            p->full_retries++;
            sched_yield();
        }
        if (i % 64 == 0) {
            usleep(100); /* let batches of several sizes form */
        }
    }
    return NULL;
}

struct watcher {
    pthread_t thread;
    struct projector *projector;
    _Atomic bool stop;
    uint64_t reads;
    bool went_backwards; /* on_hand rose or version fell: a torn or stale read */
};

/* An I/O thread's view: reads the projected item, lock-free, while the writer commits and
 * publishes. */
static void *watcher_main(void *arg)
{
    struct watcher *w = arg;
    int64_t last_on_hand = INT64_MAX;
    int64_t last_version = 0;
    while (!atomic_load(&w->stop)) {
        struct projection *v = projector_read_begin(w->projector);
        int32_t p = projector_product_find(v, "P");
        struct projector_item item;
        if (p >= 0 && projector_item_get(v, (uint32_t)p, 0, &item)) {
            w->went_backwards |= item.on_hand > last_on_hand || item.version < last_version;
            w->went_backwards |= item.on_hand + item.sold != THREAD_STOCK;
            last_on_hand = item.on_hand;
            last_version = item.version;
            w->reads++;
        }
        projector_read_end(w->projector, v);
        sched_yield();
    }
    return NULL;
}

static void test_writer_thread_with_two_producers(void **state)
{
    struct fixture *f = *state;
    seed_product(f, "P", THREAD_STOCK);
    fixture_close(f);
    ASSERT_OK(fixture_open(f, count_reply));
    memset(&thread_replies, 0, sizeof thread_replies);
    struct watcher watcher = {.projector = f->projector};
    struct pusher pushers[THREAD_PRODUCERS];
    ASSERT_OK(pthread_create(&watcher.thread, NULL, watcher_main, &watcher));
    ASSERT_OK(writer_start(&f->writer));
    for (int i = 0; i < THREAD_PRODUCERS; i++) {
        pushers[i] = (struct pusher){.queue = &f->queue};
        pushers[i].commands = commands_new(THREAD_COMMANDS_EACH);
        ASSERT_OK(pthread_create(&pushers[i].thread, NULL, pusher_main, &pushers[i]));
    }
    for (int i = 0; i < THREAD_PRODUCERS; i++) {
        ASSERT_OK(pthread_join(pushers[i].thread, NULL));
    }
    uint64_t expected = THREAD_PRODUCERS * THREAD_COMMANDS_EACH;
    for (int waited_ms = 0; atomic_load(&thread_replies.total) < expected; waited_ms++) {
        ASSERT_LT_INT(waited_ms, 60000);
        usleep(1000);
    }
    writer_stop(&f->writer);
    atomic_store(&watcher.stop, true);
    ASSERT_OK(pthread_join(watcher.thread, NULL));
    ASSERT_EQ_UINT(atomic_load(&thread_replies.created), THREAD_STOCK);
    ASSERT_EQ_UINT(atomic_load(&thread_replies.refused), expected - THREAD_STOCK);
    ASSERT_EQ_UINT(atomic_load(&thread_replies.other), 0);
    ASSERT_FALSE(watcher.went_backwards);
    /* Each producer's commands were decided in its push order: order numbers rise. */
    for (int i = 0; i < THREAD_PRODUCERS; i++) {
        int64_t last_seq = 0;
        for (int k = 0; k < THREAD_COMMANDS_EACH; k++) {
            const struct command *c = &pushers[i].commands[k];
            ASSERT_TRUE(c->owner == &pushers[i]);
            if (c->reply_status == 201) {
                int64_t seq = strtoll(c->reply_location + strlen("/v1/orders/ord_"), NULL, 10);
                ASSERT_GT_INT(seq, last_seq);
                last_seq = seq;
            }
        }
        free(pushers[i].commands);
    }
    print_message("  %" PRIu64 " batches (largest %" PRIu64 "), %" PRIu64 " watcher reads\n",
                  atomic_load(&f->writer.stats.batches),
                  atomic_load(&f->writer.stats.batch_size_max), watcher.reads);
    ASSERT_EQ_INT(stock_of(f, "S1", "P"), 0);
    check_domain_matches_db(f);
    check_events_explain_stock(f, THREAD_STOCK);
}

/* writer_stalled (GET /health): a batch in hand, or commands waiting with none ending, for
 * more than WRITER_STALL_MS; an idle writer with nothing waiting never is. */
static void test_stalled_only_with_work_and_no_progress(void **state)
{
    (void)state;
    struct writer w;
    memset(&w, 0, sizeof w);
    atomic_store(&w.batch_ended_ms, 1000);
    ASSERT_FALSE(writer_stalled(&w, 0, 1000 + 10 * WRITER_STALL_MS)); /* idle, nothing waits */
    ASSERT_FALSE(writer_stalled(&w, 5, 1000 + WRITER_STALL_MS));      /* at the bound */
    ASSERT_TRUE(writer_stalled(&w, 5, 1000 + WRITER_STALL_MS + 1));
    atomic_store(&w.batch_started_ms, 50000); /* a batch in hand: the queue may be empty */
    ASSERT_FALSE(writer_stalled(&w, 0, 50000 + WRITER_STALL_MS));
    ASSERT_TRUE(writer_stalled(&w, 0, 50000 + WRITER_STALL_MS + 1));
    ASSERT_TRUE(writer_stalled(&w, 5, 50000 + WRITER_STALL_MS + 1));
}

int main(void)
{
#define WRITER_TEST(f) cmocka_unit_test_setup_teardown(f, writer_setup, writer_teardown)
    const struct CMUnitTest tests[] = {
        WRITER_TEST(test_fresh_database),
        WRITER_TEST(test_product_then_purchases_in_one_batch),
        WRITER_TEST(test_150_purchases_on_100_units),
        WRITER_TEST(test_same_key_twice_in_one_batch),
        WRITER_TEST(test_key_replayed_from_an_earlier_batch),
        WRITER_TEST(test_idempotency_records_expire),
        WRITER_TEST(test_storage_failure_mid_transaction),
        WRITER_TEST(test_storage_busy),
        WRITER_TEST(test_restart_keeps_state_sequences_and_keys),
        WRITER_TEST(test_ticket_reset_and_seed004_purchases),
        WRITER_TEST(test_adjust_if_match),
        WRITER_TEST(test_seed004_keyed_replay_keeps_plain_json),
        WRITER_TEST(test_writer_thread_with_two_producers),
        cmocka_unit_test(test_stalled_only_with_work_and_no_progress),
    };
#undef WRITER_TEST
    log_set_level(LOG_WARN); /* the writer's startup lines would drown the test output */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
