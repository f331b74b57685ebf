/*
 * test_store_pg.c - the PostgreSQL backend of store.h.
 *
 * Without a server: text-array parameters (store_pg_conn.c), the schema's two dialects
 * (schema.c) and backend selection by uri (store_open.c). With a server ($STOCKD_TEST_PG, a
 * base uri such as postgres://postgres@127.0.0.1:PORT as scripts/run-tests.sh sets it; the
 * tests skip without it), each on a database of its own that it drops again: a committed
 * batch comes back through prefetch (locked rows, ACTIVE and ended reservations, idempotency
 * records with their Location, other instances' events, the sequences) and through a reader;
 * a reader whose session was terminated reads again on a new one (but not inside a snapshot,
 * and not after an error of the statement itself), and replaces its session when the
 * recoveries it watches move; migration 4 backfills Location on a database built at schema
 * version 3. The backend as a whole also runs in the blackbox-pg suite.
 *
 * The test links store_lib alone (tests/meson.build). Read tests/blackbox/ next.
 */
#include <libpq-fe.h>
#include <string.h>
#include <unistd.h>

#include "store_events_of_check.h"
#include "test_helpers.h"

#include "base/errors.h"
#include "base/svc_limits.h"
#include "store/schema.h"
#include "store/store.h"
#include "store/store_open.h"
#include "store/store_pg_conn.h"

static void test_array_quotes_and_escapes(void **state)
{
    (void)state;
    struct store_pg_text t = {NULL, 0, 0};
    store_pg_array_begin(&t);
    store_pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{}");
    store_pg_array_begin(&t);
    store_pg_array_text(&t, "plain");
    store_pg_array_text(&t, "with \"quotes\" and \\backslash\\");
    store_pg_array_text(&t, NULL);
    store_pg_array_text(&t, "");
    store_pg_array_text(&t, "{braces},commas");
    store_pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{\"plain\",\"with \\\"quotes\\\" and \\\\backslash\\\\\",NULL,\"\","
                          "\"{braces},commas\"}");
    store_pg_text_free(&t);
}

static void test_array_text_n_stops_at_length(void **state)
{
    (void)state;
    struct store_pg_text t = {NULL, 0, 0};
    store_pg_array_begin(&t);
    store_pg_array_text_n(&t, "{\"a\":1}garbage", 7);
    store_pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{\"{\\\"a\\\":1}\"}");
    store_pg_text_free(&t);
}

static void test_array_ints_and_growth(void **state)
{
    (void)state;
    struct store_pg_text t = {NULL, 0, 0};
    store_pg_array_begin(&t);
    store_pg_array_int(&t, -9223372036854775807LL - 1);
    store_pg_array_int(&t, 0);
    store_pg_array_int(&t, 42);
    store_pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{-9223372036854775808,0,42}");
    store_pg_array_begin(&t); /* reuse: starts over */
    for (int i = 0; i < 10000; i++) {
        store_pg_array_int(&t, i);
    }
    store_pg_array_end(&t);
    ASSERT_EQ_UINT(t.length, strlen(t.data));
    ASSERT_TRUE(strncmp(t.data, "{0,1,2,", 7) == 0);
    ASSERT_TRUE(strcmp(t.data + t.length - 6, ",9999}") == 0);
    store_pg_text_int(&t, 123);
    ASSERT_EQ_STR(t.data, "123");
    store_pg_text_free(&t);
}

static void test_schema_renders_both_dialects(void **state)
{
    (void)state;
    char out[SCHEMA_STATEMENT_BYTES_MAX];
    int tokens = 0;
    for (int m = 0; m < schema_migration_count; m++) {
        ASSERT_EQ_INT(schema_migrations[m].version, m + 1);
        for (int i = 0; schema_migrations[m].statements[i] != NULL; i++) {
            const char *statement = schema_migrations[m].statements[i];
            tokens += strchr(statement, '@') != NULL;
            ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, statement, out, sizeof out), 0);
            ASSERT_NULL(strchr(out, '@'));
            ASSERT_NULL(strstr(out, "BIGINT"));
            ASSERT_EQ_INT(schema_render(SCHEMA_POSTGRES, statement, out, sizeof out), 0);
            ASSERT_NULL(strchr(out, '@'));
            ASSERT_NULL(strstr(out, "WITHOUT ROWID"));
            ASSERT_NULL(strstr(out, "julianday"));
        }
    }
    ASSERT_GT_INT(tokens, 5);
    ASSERT_EQ_INT(schema_render(SCHEMA_POSTGRES, "a @INT@ b", out, sizeof out), 0);
    ASSERT_EQ_STR(out, "a BIGINT b");
    ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, "x INTEGER PRIMARY KEY", out, sizeof out), 0);
    ASSERT_EQ_STR(out, "x INTEGER PRIMARY KEY");
    ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, "@INT@", out, 5), SVC_ECAPACITY);
    /* A statement for SQLite only: as is there, empty (skipped) on PostgreSQL. */
    ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, SCHEMA_SQLITE_ONLY "PRAGMA x", out, sizeof out), 0);
    ASSERT_EQ_STR(out, "PRAGMA x");
    ASSERT_EQ_INT(schema_render(SCHEMA_POSTGRES, SCHEMA_SQLITE_ONLY "PRAGMA x", out, sizeof out),
                  0);
    ASSERT_EQ_STR(out, "");
}

static void test_uri_selects_the_backend(void **state)
{
    (void)state;
    ASSERT_TRUE(store_uri_is_postgres("postgres://u@127.0.0.1:5432/db"));
    ASSERT_TRUE(store_uri_is_postgres("postgresql://u@h/db"));
    ASSERT_FALSE(store_uri_is_postgres("./data/stockd.db"));
    ASSERT_FALSE(store_uri_is_postgres("postgres:/missing-slash"));
    ASSERT_FALSE(store_uri_is_postgres(""));
}

/* ---- with a server: a database of the test's own ----------------------------------------- */

struct pg_fixture {
    char base[256]; /* $STOCKD_TEST_PG */
    char name[64];  /* the test's database */
    char uri[400];  /* base/name */
    struct store *store;
};

/* Runs sql on base's postgres database (CREATE/DROP DATABASE cannot run in a transaction). */
static void pg_admin(const char *base, const char *sql)
{
    char uri[400];
    snprintf(uri, sizeof uri, "%s/postgres", base);
    PGconn *conn = PQconnectdb(uri);
    if (PQstatus(conn) != CONNECTION_OK) {
        TEST_FAIL("connect %s: %s", uri, PQerrorMessage(conn));
    }
    PGresult *r = PQexec(conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        TEST_FAIL("%s: %s", sql, PQresultErrorMessage(r));
    }
    PQclear(r);
    PQfinish(conn);
}

static int pg_setup(void **state)
{
    const char *base = getenv("STOCKD_TEST_PG");
    if (base == NULL || base[0] == '\0') {
        *state = NULL;
        return 0;
    }
    static int databases;
    struct pg_fixture *f = calloc(1, sizeof *f);
    snprintf(f->base, sizeof f->base, "%s", base);
    snprintf(f->name, sizeof f->name, "stockd_store_test_%d_%d", (int)getpid(), ++databases);
    snprintf(f->uri, sizeof f->uri, "%s/%s", f->base, f->name);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", f->name);
    pg_admin(f->base, sql);
    *state = f;
    return 0;
}

static int pg_teardown(void **state)
{
    struct pg_fixture *f = *state;
    if (f == NULL) {
        return 0;
    }
    store_close(f->store);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", f->name);
    pg_admin(f->base, sql);
    free(f);
    return 0;
}

/* The fixture, or a cmocka skip when no server was given (a failure when
 * $STOCKD_TEST_REQUIRE_PG says one must be: suite blackbox-pg). */
static struct pg_fixture *pg_fixture_or_skip(void **state)
{
    const char *required = getenv("STOCKD_TEST_REQUIRE_PG");
    if (*state == NULL && required != NULL && required[0] != '\0') {
        fail_msg("$STOCKD_TEST_REQUIRE_PG is set but $STOCKD_TEST_PG is not");
    }
    if (*state == NULL) {
        print_message("no $STOCKD_TEST_PG: skipped\n");
        skip();
    }
    return *state;
}

/* ---- a sink that writes what it is told as lines ------------------------------------------- */

#define SEEN_LINES_MAX 2048

struct seen {
    char lines[SEEN_LINES_MAX][200];
    size_t count;
};

static int seen_line(struct seen *s, const char *format, ...) __attribute__((format(printf, 2, 3)));

static int seen_line(struct seen *s, const char *format, ...)
{
    ASSERT_LT_UINT(s->count, SEEN_LINES_MAX);
    va_list args;
    va_start(args, format);
    vsnprintf(s->lines[s->count++], sizeof s->lines[0], format, args);
    va_end(args);
    return 0;
}

static bool seen_has(const struct seen *s, const char *line)
{
    int found = 0;
    for (size_t i = 0; i < s->count; i++) {
        found += strcmp(s->lines[i], line) == 0;
    }
    ASSERT_LE_INT(found, 1); /* every row once */
    return found == 1;
}

static int on_store(void *context, const char *id, const char *name, int64_t latency_ms)
{
    return seen_line(context, "store %s %s %" PRId64, id, name, latency_ms);
}

static int on_product(void *context, const char *sku, const char *name)
{
    return seen_line(context, "product %s %s", sku, name);
}

static int on_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                   int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    (void)updated_at_ms;
    return seen_line(context, "item %s %s %" PRId64 " %" PRId64 " v%" PRId64 " %" PRId64, store_id,
                     sku, on_hand, reserved, version, sold);
}

static int on_reservation(void *context, int64_t seq, const char *store_id, const char *customer_id,
                          int64_t expires_at_ms, int64_t version, int64_t created_at_ms)
{
    (void)expires_at_ms;
    (void)created_at_ms;
    return seen_line(context, "reservation %" PRId64 " %s %s v%" PRId64, seq, store_id, customer_id,
                     version);
}

static int on_reservation_line(void *context, int64_t seq, const char *sku, int64_t qty)
{
    return seen_line(context, "line %" PRId64 " %s %" PRId64, seq, sku, qty);
}

static int on_reservation_ended(void *context, int64_t seq, const char *status, int64_t version)
{
    return seen_line(context, "ended %" PRId64 " %s v%" PRId64, seq, status ? status : "(none)",
                     version);
}

static int on_idem(void *context, const struct store_idem_record *r)
{
    ASSERT_EQ_UINT(strlen(r->body), r->body_length); /* bodies here have no NUL */
    return seen_line(context, "idem %s %s %" PRIu64 " %d %d %s %s", r->principal, r->key,
                     r->fingerprint, r->status, r->problem, r->body,
                     r->location ? r->location : "(none)");
}

static int on_events(void *context, const struct row_event *rows, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        seen_line(context, "event %" PRId64 " %s %s %s %s", rows[i].seq, rows[i].event_type,
                  rows[i].store_id ? rows[i].store_id : "(none)",
                  rows[i].sku ? rows[i].sku : "(none)", rows[i].data_json);
    }
    return 0;
}

static int on_lease(void *context, const char *stage, int64_t token)
{
    return seen_line(context, "lease %s %" PRId64, stage, token);
}

static struct store_sink full_sink(struct seen *s)
{
    return (struct store_sink){s,
                               on_store,
                               on_product,
                               on_item,
                               on_reservation,
                               on_reservation_line,
                               on_reservation_ended,
                               on_idem,
                               on_events,
                               NULL,
                               on_lease};
}

/* ---- rows ----------------------------------------------------------------------------------- */

#define T0_MS 1700000000000LL

static const char purchase_body[] = "{\"orderId\":\"ord_1\",\"q\":\"a \\\"b\\\" \\\\ c\"}";
static const char problem_body[] = "{\"title\":\"Insufficient stock\"}";

/* A new database has no rows (the writer's first batch makes S1): the batch brings both. */
static const struct row_store stores[] = {{"S1", "Store 1", 0, T0_MS}, {"S2", "Store 2", 5, T0_MS}};
static const struct row_product products[] = {{"P1", "Product 1", T0_MS},
                                              {"P2", "Product 2", T0_MS}};
static const struct row_item items[] = {{"S1", "P1", 10, 2, 3, 4, T0_MS + 1},
                                        {"S2", "P2", 7, 0, 1, 0, T0_MS + 2}};
static const struct row_order orders[] = {{1, "c1", "S1", "COMPLETED", "[{\"sku\":\"P1\"}]",
                                           "[{\"status\":\"COMPLETED\"}]", T0_MS, 0, 0}};
static const struct row_idem idems[] = {
    {"alice", "k-located", 0xfedcba9876543210ULL, 201, false, purchase_body,
     sizeof purchase_body - 1, "/v1/orders/ord_1", T0_MS},
    {"alice", "k-problem", 42, 409, true, problem_body, sizeof problem_body - 1, NULL, T0_MS},
};
static const struct row_event events[] = {
    {1, "StoreCreated", 1, T0_MS, "S1", NULL, "{\"storeId\":\"S1\"}"},
    {2, "StoreCreated", 1, T0_MS, "S2", NULL, "{\"storeId\":\"S2\"}"},
    {3, "OrderCompleted", 1, T0_MS, "S1", "P1", "{\"orderId\":\"ord_1\"}"},
};
static const struct row_reservation reservations[] = {
    {1, "S1", "c1", "ACTIVE", T0_MS + 60000, 1, T0_MS, T0_MS, 0, NULL, 0},
    {2, "S1", "c2", "CONFIRMED", T0_MS + 60000, 2, T0_MS, T0_MS + 5, 0, NULL, 0},
};
static const struct row_reservation_line reservation_lines[] = {
    {1, 1, "P1", 2},
    {1, 2, "P2", 1},
    {2, 1, "P1", 1},
};

/* Prefetches nothing (which opens the batch's transaction) and commits batch. */
static void pg_commit(struct store *store, const struct store_batch *batch)
{
    struct seen *seen = calloc(1, sizeof *seen);
    struct store_sink sink = full_sink(seen);
    struct store_prefetch_keys keys = {0};
    struct store_sequences sequences;
    ASSERT_OK(store_prefetch(store, &keys, &sink, &sequences));
    ASSERT_OK(store_commit_batch(store, batch));
    free(seen);
}

/* Commits every row above in one batch. */
static void pg_commit_rows(struct store *store)
{
    struct store_batch batch = {.stores = stores,
                                .store_count = 2,
                                .products = products,
                                .product_count = 2,
                                .items = items,
                                .item_count = 2,
                                .orders = orders,
                                .order_count = 1,
                                .idems = idems,
                                .idem_count = 2,
                                .events = events,
                                .event_count = 3,
                                .reservations = reservations,
                                .reservation_count = 2,
                                .reservation_lines = reservation_lines,
                                .reservation_line_count = 3};
    pg_commit(store, &batch);
}

static void test_pg_prefetch_reports_the_batch(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    ASSERT_TRUE(store_is_shared(f->store));
    pg_commit_rows(f->store);
    struct seen *seen = calloc(1, sizeof *seen);
    struct store_sink sink = full_sink(seen);
    struct store_idem_key idem_keys[] = {{"alice", "k-located"},
                                         {"alice", "k-problem"},
                                         {"alice", "k-absent"},
                                         {"bob", "k-located"}};
    int64_t seqs[] = {1, 2, 77};
    struct store_item_key item_keys[] = {{"S1", "P1"}};
    const char *store_ids[] = {"S2"};
    const char *skus[] = {"P2"};
    struct store_prefetch_keys keys = {.idems = idem_keys,
                                       .idem_count = 4,
                                       .reservation_seqs = seqs,
                                       .reservation_count = 3,
                                       .items = item_keys,
                                       .item_count = 1,
                                       .store_ids = store_ids,
                                       .store_count = 1,
                                       .skus = skus,
                                       .sku_count = 1,
                                       .events_after = 1};
    struct store_sequences sequences = {-1, -1, -1};
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    const char *expected[] = {
        "store S2 Store 2 5",
        "store S1 Store 1 0", /* reservation 1's store */
        "product P1 Product 1",
        "product P2 Product 2",
        "item S1 P1 10 2 v3 4",
        "reservation 1 S1 c1 v1",
        "line 1 P1 2",
        "line 1 P2 1",
        "ended 2 CONFIRMED v2",
        "ended 77 (none) v0",
        "idem alice k-located 18364758544493064720 201 0 {\"orderId\":\"ord_1\",\"q\":\"a "
        "\\\"b\\\" \\\\ c\"} /v1/orders/ord_1",
        "idem alice k-problem 42 409 1 {\"title\":\"Insufficient stock\"} (none)",
        "event 2 StoreCreated S2 (none) {\"storeId\":\"S2\"}",
        "event 3 OrderCompleted S1 P1 {\"orderId\":\"ord_1\"}",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        if (!seen_has(seen, expected[i])) {
            TEST_FAIL("not reported: %s", expected[i]);
        }
    }
    ASSERT_EQ_UINT(seen->count, sizeof expected / sizeof expected[0]);
    ASSERT_EQ_INT(sequences.order_seq_max, 1);
    ASSERT_EQ_INT(sequences.event_seq_max, 3);
    ASSERT_EQ_INT(sequences.reservation_seq_max, 2);
    /* The line of reservation 1 comes after the reservation itself. */
    size_t reservation_at = SEEN_LINES_MAX;
    for (size_t i = 0; i < seen->count; i++) {
        if (strcmp(seen->lines[i], "reservation 1 S1 c1 v1") == 0) {
            reservation_at = i;
        }
        if (strncmp(seen->lines[i], "line 1 ", 7) == 0) {
            ASSERT_LT_UINT(reservation_at, i);
        }
    }
    free(seen);
}

/* A batch that names no reservation (the purchase path) takes its stock rows, stores and
 * products by key alone, and hears of no reservation. */
static void test_pg_prefetch_without_reservations(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    pg_commit_rows(f->store);
    struct seen *seen = calloc(1, sizeof *seen);
    struct store_sink sink = full_sink(seen);
    struct store_item_key item_keys[] = {{"S2", "P2"}, {"S1", "P9"}};
    const char *store_ids[] = {"S2", "S9"};
    const char *skus[] = {"P2"};
    struct store_idem_key idem_keys[] = {{"alice", "k-absent"}};
    struct store_prefetch_keys keys = {.idems = idem_keys,
                                       .idem_count = 1,
                                       .items = item_keys,
                                       .item_count = 2,
                                       .store_ids = store_ids,
                                       .store_count = 2,
                                       .skus = skus,
                                       .sku_count = 1,
                                       .events_after = 3};
    struct store_sequences sequences = {-1, -1, -1};
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    const char *expected[] = {"store S2 Store 2 5", "product P2 Product 2", "item S2 P2 7 0 v1 0"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        if (!seen_has(seen, expected[i])) {
            TEST_FAIL("not reported: %s", expected[i]);
        }
    }
    ASSERT_EQ_UINT(seen->count, sizeof expected / sizeof expected[0]);
    ASSERT_EQ_INT(sequences.event_seq_max, 3);
    ASSERT_EQ_INT(sequences.reservation_seq_max, 2);
    ASSERT_OK(store_commit_batch(f->store, &(struct store_batch){0}));
    free(seen);
}

#define MANY_RECORDS 1500

/* Commits MANY_RECORDS records of principal "p": key-0000... created at T0_MS + i, the even
 * ones with a Location. */
static void pg_commit_many(struct store *store)
{
    static char names[MANY_RECORDS][16];
    static struct row_idem rows[MANY_RECORDS];
    for (int i = 0; i < MANY_RECORDS; i++) {
        snprintf(names[i], sizeof names[i], "key-%04d", i);
        rows[i] = (struct row_idem){"p",  names[i], (uint64_t)i,         201,      false,
                                    "{}", 2,        i % 2 ? NULL : "/x", T0_MS + i};
    }
    struct store_batch batch = {0};
    batch.idems = rows;
    batch.idem_count = MANY_RECORDS;
    pg_commit(store, &batch);
}

static void test_pg_prefetch_a_full_batch_of_keys(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    pg_commit_many(f->store);
    static char asked[BATCH_COMMANDS_MAX][16];
    static struct store_idem_key keys[BATCH_COMMANDS_MAX];
    for (int i = 0; i < BATCH_COMMANDS_MAX; i++) { /* every other one absent */
        snprintf(asked[i], sizeof asked[i], "key-%04d", i % 2 ? 5000 + i : i);
        keys[i] = (struct store_idem_key){"p", asked[i]};
    }
    struct seen *seen = calloc(1, sizeof *seen);
    struct store_sink sink = full_sink(seen);
    /* events_after 1: migration 1's event is no gap */
    struct store_prefetch_keys prefetch = {
        .idems = keys, .idem_count = BATCH_COMMANDS_MAX, .events_after = 1};
    struct store_sequences sequences;
    ASSERT_OK(store_prefetch(f->store, &prefetch, &sink, &sequences));
    ASSERT_EQ_UINT(seen->count, BATCH_COMMANDS_MAX / 2);
    char line[200];
    snprintf(line, sizeof line, "idem p key-1022 1022 201 0 {} /x");
    ASSERT_TRUE(seen_has(seen, line));
    free(seen);
}

static void test_pg_reader_order_row(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    struct store_batch batch = {0};
    batch.orders = orders;
    batch.order_count = 1;
    pg_commit(f->store, &batch);
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->uri));
    struct store_order_row row;
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    ASSERT_EQ_STR(row.customer_id, "c1");
    ASSERT_EQ_STR(row.status, "COMPLETED");
    ASSERT_EQ_STR(row.lines_json, orders[0].lines_json);
    ASSERT_EQ_STR(row.history_json, orders[0].history_json);
    ASSERT_EQ_INT(row.created_at_ms, T0_MS);
    ASSERT_EQ_INT(store_reader_order(r, 2, &row), 0);
    store_reader_close(r);
}

/* The workers' read of the order events (store_events_of_check.h). */
static void test_pg_reader_events_of_types(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    struct store_batch batch = {.events = events_of_log,
                                .event_count = sizeof events_of_log / sizeof events_of_log[0]};
    pg_commit(f->store, &batch);
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->uri));
    check_events_of(r);
    store_reader_close(r);
}

/* Reservations 3 (no lines) and 4 (CMD_LINES_MAX + 1 lines): rows the writer never writes. */
static const struct row_reservation odd_reservations[] = {
    {3, "S1", "c3", "EXPIRED", T0_MS + 60000, 2, T0_MS, T0_MS + 9, 0, NULL, 0},
    {4, "S1", "c4", "ACTIVE", T0_MS + 60000, 1, T0_MS, T0_MS, 0, NULL, 0},
};

static struct store_batch odd_batch(struct row_reservation_line *lines)
{
    for (int i = 0; i < CMD_LINES_MAX + 1; i++) {
        lines[i] = (struct row_reservation_line){4, i + 1, "P1", 1};
    }
    return (struct store_batch){.reservations = odd_reservations,
                                .reservation_count = 2,
                                .reservation_lines = lines,
                                .reservation_line_count = CMD_LINES_MAX + 1};
}

/* What GET /v1/reservations/{id} reads when the read model does not hold the reservation: its
 * columns and its lines in line order; an unknown one is absent, and a stored row the writer
 * cannot have written is a storage failure (a 503), after which the handle reads on. */
static void check_reader_reservations(struct store_reader *r)
{
    struct store_reservation_row row;
    ASSERT_EQ_INT(store_reader_reservation(r, 1, &row), 1);
    ASSERT_EQ_STR(row.store_id, "S1");
    ASSERT_EQ_STR(row.customer_id, "c1");
    ASSERT_EQ_STR(row.status, "ACTIVE");
    ASSERT_EQ_INT(row.expires_at_ms, T0_MS + 60000);
    ASSERT_EQ_INT(row.version, 1);
    ASSERT_EQ_INT(row.created_at_ms, T0_MS);
    ASSERT_EQ_INT(row.updated_at_ms, T0_MS);
    ASSERT_EQ_UINT(row.line_count, 2);
    ASSERT_EQ_STR(row.lines[0].sku, "P1");
    ASSERT_EQ_INT(row.lines[0].qty, 2);
    ASSERT_EQ_STR(row.lines[1].sku, "P2");
    ASSERT_EQ_INT(row.lines[1].qty, 1);
    ASSERT_EQ_INT(store_reader_reservation(r, 2, &row), 1);
    ASSERT_EQ_STR(row.customer_id, "c2");
    ASSERT_EQ_STR(row.status, "CONFIRMED");
    ASSERT_EQ_INT(row.version, 2);
    ASSERT_EQ_INT(row.updated_at_ms, T0_MS + 5);
    ASSERT_EQ_UINT(row.line_count, 1);
    ASSERT_EQ_STR(row.lines[0].sku, "P1");
    ASSERT_EQ_INT(row.lines[0].qty, 1);
    ASSERT_EQ_INT(store_reader_reservation(r, 99, &row), 0);
    ASSERT_EQ_INT(store_reader_reservation(r, 3, &row), SVC_ESTORAGE_UNAVAILABLE);
    ASSERT_EQ_INT(store_reader_reservation(r, 4, &row), SVC_ESTORAGE_UNAVAILABLE);
    ASSERT_EQ_INT(store_reader_reservation(r, 1, &row), 1);
    ASSERT_EQ_STR(row.customer_id, "c1");
    ASSERT_EQ_STR(row.lines[1].sku, "P2");
}

static void test_pg_reader_reservation_row(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    struct store_batch batch = {.stores = stores,
                                .store_count = 2,
                                .products = products,
                                .product_count = 2,
                                .reservations = reservations,
                                .reservation_count = 2,
                                .reservation_lines = reservation_lines,
                                .reservation_line_count = 3};
    pg_commit(f->store, &batch);
    struct row_reservation_line lines[CMD_LINES_MAX + 1];
    batch = odd_batch(lines);
    pg_commit(f->store, &batch);
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->uri));
    check_reader_reservations(r);
    store_reader_close(r);
}

/* ---- readers that lose their session ------------------------------------------------------ */

/* Runs sql on the fixture's database; the first column of its first row as a number (-1 when
 * there is no row). */
static int64_t pg_fixture_number(const struct pg_fixture *f, const char *sql)
{
    PGconn *conn = PQconnectdb(f->uri);
    if (PQstatus(conn) != CONNECTION_OK) {
        TEST_FAIL("connect %s: %s", f->uri, PQerrorMessage(conn));
    }
    PGresult *r = PQexec(conn, sql);
    ExecStatusType status = PQresultStatus(r);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
        TEST_FAIL("%s: %s", sql, PQresultErrorMessage(r));
    }
    int64_t n =
        status == PGRES_TUPLES_OK && PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    PQfinish(conn);
    return n;
}

#define PG_STOCKD_SESSIONS \
    " FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'stockd'"

/* The backend pid of the one stockd session on the fixture's database (asserted: one). */
static int64_t pg_reader_session(const struct pg_fixture *f)
{
    ASSERT_EQ_INT(pg_fixture_number(f, "SELECT count(*)" PG_STOCKD_SESSIONS), 1);
    int64_t pid = pg_fixture_number(f, "SELECT pid" PG_STOCKD_SESSIONS);
    ASSERT_GT_INT(pid, 0);
    return pid;
}

/* Terminates every stockd session (SQLSTATE 57P01 to each) and waits until they are gone. */
static void pg_terminate_sessions(const struct pg_fixture *f)
{
    ASSERT_GE_INT(pg_fixture_number(f, "SELECT count(*) FROM (SELECT"
                                       " pg_terminate_backend(pid, 10000)" PG_STOCKD_SESSIONS
                                       ") AS t"),
                  1);
    ASSERT_EQ_INT(pg_fixture_number(f, "SELECT count(*)" PG_STOCKD_SESSIONS), 0);
}

/* The fixture's database with one order, the writer closed: a reader's session is the only
 * stockd session. */
static struct store_reader *pg_reader_alone(struct pg_fixture *f)
{
    ASSERT_OK(store_open(&f->store, f->uri));
    struct store_batch batch = {0};
    batch.orders = orders;
    batch.order_count = 1;
    pg_commit(f->store, &batch);
    store_close(f->store);
    f->store = NULL;
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->uri));
    ASSERT_NOT_NULL(r);
    return r;
}

static int pg_count_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                         int64_t reserved)
{
    (void)store_id;
    (void)sku;
    (void)on_hand;
    (void)reserved;
    (*(int *)context)++;
    return 0;
}

static void test_pg_reader_reads_again_after_a_lost_session(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    struct store_reader *r = pg_reader_alone(f);
    struct store_order_row row;
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    int64_t first = pg_reader_session(f);
    pg_terminate_sessions(f);
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1); /* not 503: read again on a new session */
    ASSERT_EQ_STR(row.customer_id, "c1");
    int64_t second = pg_reader_session(f);
    ASSERT_NE_INT(second, first);
    pg_terminate_sessions(f); /* every kind of read, not only orders */
    int64_t seq = -1;
    ASSERT_OK(store_reader_event_seq_max(r, &seq));
    ASSERT_EQ_INT(seq, 0);
    ASSERT_NE_INT(pg_reader_session(f), second);
    store_reader_close(r);
}

static void test_pg_reader_does_not_retry_a_statement_error(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    struct store_reader *r = pg_reader_alone(f);
    struct store_order_row row;
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    int64_t session = pg_reader_session(f);
    pg_fixture_number(f, "ALTER TABLE orders RENAME TO orders_away");
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), SVC_ESTORAGE_UNAVAILABLE);
    ASSERT_EQ_INT(pg_reader_session(f), session); /* kept: the session was fine */
    pg_fixture_number(f, "ALTER TABLE orders_away RENAME TO orders");
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    ASSERT_EQ_INT(pg_reader_session(f), session);
    store_reader_close(r);
}

static void test_pg_reader_snapshot_fails_after_a_lost_session(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    struct store_reader *r = pg_reader_alone(f);
    int items_seen = 0;
    ASSERT_OK(store_reader_snapshot_begin(r));
    pg_terminate_sessions(f);
    ASSERT_EQ_INT(store_reader_items(r, &items_seen, pg_count_item), SVC_ESTORAGE_UNAVAILABLE);
    struct store_order_row row;
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), SVC_ESTORAGE_UNAVAILABLE);
    /* No read of the broken snapshot ran on a new session outside it. */
    ASSERT_EQ_INT(pg_fixture_number(f, "SELECT count(*)" PG_STOCKD_SESSIONS), 0);
    ASSERT_EQ_INT(store_reader_snapshot_end(r), SVC_ESTORAGE_UNAVAILABLE);
    ASSERT_EQ_INT(items_seen, 0);
    /* The next snapshot begins on a new session, and the session it ends on is its own. */
    ASSERT_OK(store_reader_snapshot_begin(r));
    ASSERT_OK(store_reader_items(r, &items_seen, pg_count_item));
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    ASSERT_OK(store_reader_snapshot_end(r));
    ASSERT_EQ_INT(items_seen, 0); /* the batch had no stock rows */
    pg_reader_session(f);
    store_reader_close(r);
}

static void test_pg_reader_replaces_its_session_when_storage_recovers(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    struct store_reader *r = pg_reader_alone(f);
    _Atomic uint64_t recoveries = 7;
    store_reader_watch_recoveries(r, &recoveries);
    struct store_order_row row;
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    int64_t first = pg_reader_session(f);
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    ASSERT_EQ_INT(pg_reader_session(f), first); /* unchanged count: same session */
    atomic_fetch_add(&recoveries, 1);
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    int64_t second = pg_reader_session(f);
    ASSERT_NE_INT(second, first);
    /* Not inside a snapshot: the snapshot keeps its session; the next read outside replaces. */
    ASSERT_OK(store_reader_snapshot_begin(r));
    atomic_fetch_add(&recoveries, 1);
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    ASSERT_OK(store_reader_snapshot_end(r));
    ASSERT_EQ_INT(pg_reader_session(f), second);
    ASSERT_EQ_INT(store_reader_order(r, 1, &row), 1);
    ASSERT_NE_INT(pg_reader_session(f), second);
    store_reader_close(r);
}

static void test_pg_migration_4_backfills_location(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    PGconn *conn = PQconnectdb(f->uri);
    ASSERT_EQ_INT(PQstatus(conn), CONNECTION_OK);
    char sql[SCHEMA_STATEMENT_BYTES_MAX];
    for (int m = 0; m < 3; m++) {
        for (int i = 0; schema_migrations[m].statements[i] != NULL; i++) {
            ASSERT_OK(schema_render(SCHEMA_POSTGRES, schema_migrations[m].statements[i], sql,
                                    sizeof sql));
            PGresult *r = PQexec(conn, sql);
            ASSERT_EQ_INT(PQresultStatus(r), PGRES_COMMAND_OK);
            PQclear(r);
        }
    }
    PGresult *r = PQexec(
        conn, "INSERT INTO meta (key, value) VALUES ('schema_version', '3');"
              "INSERT INTO idempotency VALUES ('p', 'purchase', 1, 201, 0,"
              " '{\"orderId\":\"ord_7\",\"status\":\"COMPLETED\"}', 1);"
              "INSERT INTO idempotency VALUES ('p', 'store', 2, 201, 0, '{\"storeId\":\"S9\"}', 1);"
              "INSERT INTO idempotency VALUES ('p', 'refused', 3, 409, 1,"
              " '{\"orderId\":\"ord_8\"}', 1);");
    ASSERT_EQ_INT(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(conn);
    ASSERT_OK(store_open(&f->store, f->uri)); /* migrates to the latest version */
    struct seen *seen = calloc(1, sizeof *seen);
    struct store_sink sink = full_sink(seen);
    struct store_idem_key keys[] = {{"p", "purchase"}, {"p", "store"}, {"p", "refused"}};
    struct store_prefetch_keys prefetch = {.idems = keys, .idem_count = 3};
    struct store_sequences sequences;
    ASSERT_OK(store_prefetch(f->store, &prefetch, &sink, &sequences));
    ASSERT_TRUE(seen_has(seen,
                         "idem p purchase 1 201 0 {\"orderId\":\"ord_7\",\"status\":\"COMPLETED\"} "
                         "/v1/orders/ord_7"));
    ASSERT_TRUE(seen_has(seen, "idem p store 2 201 0 {\"storeId\":\"S9\"} (none)"));
    ASSERT_TRUE(seen_has(seen, "idem p refused 3 409 1 {\"orderId\":\"ord_8\"} (none)"));
    free(seen);
}

/* The workers' leases (work/work_lease.h): acquired when free, refused to another holder
 * while unexpired, renewed only by the holder with its token, taken over with a new token once
 * expired or released; the prefetch reports the token of the stages it names. */
static void test_pg_leases(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    struct store_reader *a = NULL;
    struct store_reader *b = NULL;
    ASSERT_OK(store_reader_open(&a, f->uri));
    ASSERT_OK(store_reader_open(&b, f->uri));
    struct store_lease got;
    ASSERT_OK(store_reader_lease(a, "payment", "A", 0, 60000, &got));
    ASSERT_TRUE(got.held);
    ASSERT_EQ_INT(got.token, 1);
    ASSERT_OK(store_reader_lease(b, "payment", "B", 0, 60000, &got));
    ASSERT_FALSE(got.held); /* A's, unexpired */
    ASSERT_EQ_STR(got.holder, "A");
    ASSERT_EQ_INT(got.token, 1);
    ASSERT_OK(store_reader_lease(b, "payment", "B", 1, 60000, &got));
    ASSERT_FALSE(got.held); /* a renewal by another holder, even with the token */
    ASSERT_OK(store_reader_lease(a, "payment", "A", 1, 60000, &got));
    ASSERT_TRUE(got.held); /* A renews: the same token */
    ASSERT_EQ_INT(got.token, 1);
    ASSERT_OK(store_reader_lease(a, "order", "A", 0, 60000, &got));
    ASSERT_TRUE(got.held); /* each stage its own row */
    /* The prefetch reads the tokens of the stages its batch names. */
    struct seen *seen = calloc(1, sizeof *seen);
    struct store_sink sink = full_sink(seen);
    const char *stages[] = {"payment"};
    struct store_prefetch_keys keys = {.lease_stages = stages, .lease_stage_count = 1};
    struct store_sequences sequences;
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    ASSERT_TRUE(seen_has(seen, "lease payment 1"));
    ASSERT_FALSE(seen_has(seen, "lease order 1"));
    struct store_batch nothing = {0};
    ASSERT_OK(store_commit_batch(f->store, &nothing));
    /* A releases it (ttl 0): B takes it over with a new token; A can no longer renew. */
    ASSERT_OK(store_reader_lease(a, "payment", "A", 1, 0, &got));
    usleep(5 * 1000); /* the released lease expired "now": a later ms is past it */
    ASSERT_OK(store_reader_lease(b, "payment", "B", 0, 60000, &got));
    ASSERT_TRUE(got.held);
    ASSERT_EQ_INT(got.token, 2);
    ASSERT_OK(store_reader_lease(a, "payment", "A", 1, 60000, &got));
    ASSERT_FALSE(got.held);
    ASSERT_EQ_STR(got.holder, "B");
    ASSERT_EQ_INT(got.token, 2);
    seen->count = 0;
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    ASSERT_TRUE(seen_has(seen, "lease payment 2"));
    ASSERT_OK(store_commit_batch(f->store, &nothing));
    free(seen);
    store_reader_close(a);
    store_reader_close(b);
}

/* Pruning sweeps the records in key order, a step at a time, and deletes only the old ones;
 * the table has no index by age (migration 13). */
static void test_pg_idem_prune_sweeps_in_steps(void **state)
{
    struct pg_fixture *f = pg_fixture_or_skip(state);
    ASSERT_OK(store_open(&f->store, f->uri));
    pg_commit_many(f->store); /* key-0000..key-1499, created T0_MS + i */
    ASSERT_EQ_INT(pg_fixture_number(f, "SELECT count(*) FROM pg_indexes"
                                       " WHERE indexname = 'idempotency_created'"),
                  0);
    const struct {
        int64_t before_ms;
        int steps;   /* of 400 records: the last one reaches the end */
        int deleted; /* by the whole sweep */
        int64_t left;
    } sweeps[] = {
        {T0_MS + 1000, 4, 1000, MANY_RECORDS - 1000},
        {T0_MS + MANY_RECORDS, 2, 500, 0}, /* from the first key again */
        {T0_MS + MANY_RECORDS, 1, 0, 0},   /* an empty table */
    };
    for (size_t i = 0; i < sizeof sweeps / sizeof sweeps[0]; i++) {
        int deleted = 0;
        for (int step = 1; step <= sweeps[i].steps; step++) {
            bool swept = true;
            int rc = store_idem_prune(f->store, sweeps[i].before_ms, 400, &swept);
            ASSERT_LE_INT(0, rc);
            ASSERT_EQ_INT(swept, step == sweeps[i].steps);
            deleted += rc;
        }
        ASSERT_EQ_INT(deleted, sweeps[i].deleted);
        ASSERT_EQ_INT(pg_fixture_number(f, "SELECT count(*) FROM idempotency"), sweeps[i].left);
        ASSERT_EQ_INT(pg_fixture_number(f, "SELECT count(*) FROM idempotency"
                                           " WHERE idem_key < 'key-1000'"),
                      0); /* the old ones, and only they */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_quotes_and_escapes),
        cmocka_unit_test(test_array_text_n_stops_at_length),
        cmocka_unit_test(test_array_ints_and_growth),
        cmocka_unit_test(test_schema_renders_both_dialects),
        cmocka_unit_test(test_uri_selects_the_backend),
        cmocka_unit_test_setup_teardown(test_pg_prefetch_reports_the_batch, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_prefetch_without_reservations, pg_setup,
                                        pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_prefetch_a_full_batch_of_keys, pg_setup,
                                        pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_idem_prune_sweeps_in_steps, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_order_row, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_events_of_types, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_reservation_row, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_leases, pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_reads_again_after_a_lost_session, pg_setup,
                                        pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_does_not_retry_a_statement_error, pg_setup,
                                        pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_snapshot_fails_after_a_lost_session,
                                        pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_reader_replaces_its_session_when_storage_recovers,
                                        pg_setup, pg_teardown),
        cmocka_unit_test_setup_teardown(test_pg_migration_4_backfills_location, pg_setup,
                                        pg_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
