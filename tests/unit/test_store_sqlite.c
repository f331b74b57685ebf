/*
 * test_store_sqlite.c - the SQLite backend of store.h through its public functions, on a file
 * in a temporary directory.
 *
 * What a batch commits comes back, byte for byte, from a reopened store's load, from prefetch
 * (idempotency records with and without a Location, in every size of the one-query lookup,
 * ended, unknown and wrongly ACTIVE reservations) and from a reader handle. Reads during the
 * writer's apply step abort (checked in forked children). Migration 4 is checked on a database
 * built at schema version 3, and the idempotency prefetch's query plan is checked to search the
 * primary key rather than scan the table.
 *
 * The test links store_lib alone (tests/meson.build): the storage layer must not call upward.
 * Read test_store_pg.c next.
 */
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store_events_of_check.h"
#include "test_helpers.h"

#include "base/errors.h"
#include "base/svc_limits.h"
#include "store/schema.h"
#include "store/store.h"
#include "store/store_open.h"
#include "store/store_sqlite_internal.h"

/* ---- fixture: a database file in a temporary directory ---------------------------------- */

struct fixture {
    char dir[256];
    char path[320];
    struct store *store;
};

static int fixture_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/stockd-test-store-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/stockd.db", f->dir);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        char path[340];
        snprintf(path, sizeof path, "%s%s", f->path, suffixes[i]);
        unlink(path);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void fixture_open(struct fixture *f)
{
    store_close(f->store);
    f->store = NULL;
    ASSERT_OK(store_open(&f->store, f->path));
    ASSERT_EQ_STR(store_backend_name(f->store), "sqlite");
    ASSERT_FALSE(store_is_shared(f->store));
}

/* ---- a sink that records what it is told ---------------------------------------------------- */

#define SEEN_LINES_MAX 64
#define SEEN_IDEMS_MAX (2 * BATCH_COMMANDS_MAX)

struct seen_idem {
    char principal[64];
    char key[64];
    uint64_t fingerprint;
    int status;
    bool problem;
    char body[REPLY_BODY_BYTES_MAX];
    size_t body_length;
    bool has_location;
    char location[REPLY_LOCATION_BYTES_MAX + 1];
};

struct seen {
    char lines[SEEN_LINES_MAX][160]; /* one per callback but on_idem, in call order */
    size_t line_count;
    struct seen_idem *idems; /* SEEN_IDEMS_MAX */
    size_t idem_count;
    int fail_with; /* when non-zero, every callback answers it */
};

static int seen_line(struct seen *s, const char *format, ...) __attribute__((format(printf, 2, 3)));

static int seen_line(struct seen *s, const char *format, ...)
{
    if (s->line_count < SEEN_LINES_MAX) {
        va_list args;
        va_start(args, format);
        vsnprintf(s->lines[s->line_count++], sizeof s->lines[0], format, args);
        va_end(args);
    }
    return s->fail_with;
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
    return seen_line(context,
                     "item %s %s %" PRId64 " %" PRId64 " v%" PRId64 " %" PRId64 " %" PRId64,
                     store_id, sku, on_hand, reserved, version, sold, updated_at_ms);
}

static int on_reservation(void *context, int64_t seq, const char *store_id, const char *customer_id,
                          int64_t expires_at_ms, int64_t version, int64_t created_at_ms)
{
    return seen_line(context, "reservation %" PRId64 " %s %s %" PRId64 " v%" PRId64 " %" PRId64,
                     seq, store_id, customer_id, expires_at_ms, version, created_at_ms);
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
    struct seen *s = context;
    if (s->idem_count < SEEN_IDEMS_MAX) {
        struct seen_idem *i = &s->idems[s->idem_count++];
        snprintf(i->principal, sizeof i->principal, "%s", r->principal);
        snprintf(i->key, sizeof i->key, "%s", r->key);
        i->fingerprint = r->fingerprint;
        i->status = r->status;
        i->problem = r->problem;
        i->body_length = r->body_length < sizeof i->body ? r->body_length : sizeof i->body;
        memcpy(i->body, r->body, i->body_length);
        i->has_location = r->location != NULL;
        snprintf(i->location, sizeof i->location, "%s", r->location ? r->location : "");
    }
    return s->fail_with;
}

static void seen_reset(struct seen *s)
{
    s->line_count = 0;
    s->idem_count = 0;
    s->fail_with = 0;
    if (s->idems == NULL) {
        s->idems = calloc(SEEN_IDEMS_MAX, sizeof *s->idems);
    }
}

static void seen_free(struct seen *s)
{
    free(s->idems);
    s->idems = NULL;
}

static const struct seen_idem *seen_idem_find(const struct seen *s, const char *principal,
                                              const char *key)
{
    const struct seen_idem *found = NULL;
    for (size_t i = 0; i < s->idem_count; i++) {
        if (strcmp(s->idems[i].principal, principal) == 0 && strcmp(s->idems[i].key, key) == 0) {
            ASSERT_NULL(found); /* each record once */
            found = &s->idems[i];
        }
    }
    return found;
}

/* The sink of a load: the prefetch-only callbacks are NULL (store.h). */
static struct store_sink load_sink(struct seen *s)
{
    return (struct store_sink){
        s,    on_store, on_product, on_item, on_reservation, on_reservation_line, NULL,
        NULL, NULL,     NULL,       NULL};
}

/* The sink of a prefetch on a backend the writer owns. */
static struct store_sink prefetch_sink(struct seen *s)
{
    return (struct store_sink){s,
                               on_store,
                               on_product,
                               on_item,
                               on_reservation,
                               on_reservation_line,
                               on_reservation_ended,
                               on_idem,
                               NULL,
                               NULL,
                               NULL};
}

/* ---- rows ----------------------------------------------------------------------------------- */

#define T0_MS 1700000000000LL

/* A purchase's first response, with bytes a copy must keep: quotes, a backslash, UTF-8. */
static const char purchase_body[] =
    "{\"orderId\":\"ord_1\",\"note\":\"a \\\"quoted\\\" caf\xc3\xa9 \\\\ line\"}";
static const char problem_body[] = "{\"type\":\"about:blank\",\"title\":\"Insufficient stock\"}";

/* A new database has no rows (the writer's first batch makes S1): the batch brings both. */
static const struct row_store stores[] = {{"S1", "Store 1", 0, T0_MS}, {"S2", "Store 2", 5, T0_MS}};
static const struct row_product products[] = {{"P1", "Product 1", T0_MS},
                                              {"P2", "Product 2", T0_MS}};
static const struct row_item items[] = {{"S1", "P1", 10, 2, 3, 4, T0_MS + 1},
                                        {"S2", "P2", 7, 0, 1, 0, T0_MS + 2}};
static const struct row_order orders[] = {
    {1, "c1", "S1", "COMPLETED", "[{\"sku\":\"P1\",\"qty\":1}]",
     "[{\"status\":\"COMPLETED\",\"at\":\"x\"}]", T0_MS, 0, 0}};
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

static struct store_batch full_batch(void)
{
    return (struct store_batch){
        .stores = stores,
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
        .reservation_line_count = 3,
    };
}

/* ---- commit, reopen, load, read ------------------------------------------------------------ */

static void test_commit_reopen_load(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    struct store_batch batch = full_batch();
    ASSERT_OK(store_commit_batch(f->store, &batch));
    store_batch_done(f->store);
    fixture_open(f); /* closes and reopens: what load reports is what the file holds */
    struct seen seen = {0};
    seen_reset(&seen);
    struct store_sink sink = load_sink(&seen);
    struct store_sequences sequences = {-1, -1, -1};
    ASSERT_OK(store_load(f->store, &sink, &sequences));
    const char *expected[] = {
        "store S1 Store 1 0", /* migration 1's default store */
        "store S2 Store 2 5",
        "product P1 Product 1",
        "product P2 Product 2",
        "item S1 P1 10 2 v3 4 1700000000001",
        "item S2 P2 7 0 v1 0 1700000000002",
        "reservation 1 S1 c1 1700000060000 v1 1700000000000", /* not 2: it is CONFIRMED */
        "line 1 P1 2",
        "line 1 P2 1",
    };
    ASSERT_EQ_UINT(seen.line_count, sizeof expected / sizeof expected[0]);
    for (size_t i = 0; i < seen.line_count; i++) {
        ASSERT_EQ_STR(seen.lines[i], expected[i]);
    }
    ASSERT_EQ_UINT(seen.idem_count, 0);
    ASSERT_EQ_INT(sequences.order_seq_max, 1);
    ASSERT_EQ_INT(sequences.event_seq_max, 3);
    ASSERT_EQ_INT(sequences.reservation_seq_max, 2);
    /* A sink error stops the load and is its answer. */
    seen_reset(&seen);
    seen.fail_with = SVC_ECAPACITY;
    ASSERT_ERR(store_load(f->store, &sink, &sequences), SVC_ECAPACITY);
    ASSERT_EQ_UINT(seen.line_count, 1);
    seen_free(&seen);
}

static int count_event(void *context, const struct row_event *row)
{
    int64_t *last = context;
    ASSERT_GT_INT(row->seq, *last);
    *last = row->seq;
    return 0;
}

static int count_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                      int64_t reserved)
{
    (void)store_id;
    (void)sku;
    ASSERT_LE_INT(reserved, on_hand);
    (*(int *)context)++;
    return 0;
}

static void test_reader_reads_committed_rows(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    struct store_batch batch = full_batch();
    ASSERT_OK(store_commit_batch(f->store, &batch));
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->path));
    struct store_order_row order;
    ASSERT_EQ_INT(store_reader_order(r, 1, &order), 1);
    ASSERT_EQ_STR(order.customer_id, "c1");
    ASSERT_EQ_STR(order.store_id, "S1");
    ASSERT_EQ_STR(order.status, "COMPLETED");
    ASSERT_EQ_STR(order.lines_json, orders[0].lines_json);
    ASSERT_EQ_STR(order.history_json, orders[0].history_json);
    ASSERT_EQ_INT(order.created_at_ms, T0_MS);
    ASSERT_EQ_INT(store_reader_order(r, 99, &order), 0);
    struct store_idem_view view;
    ASSERT_EQ_INT(store_reader_idem(r, "alice", "k-located", &view), 1);
    ASSERT_EQ_UINT(view.body_length, sizeof purchase_body - 1);
    ASSERT_EQ_MEM(view.body, purchase_body, view.body_length);
    ASSERT_EQ_INT(view.status, 201);
    ASSERT_FALSE(view.problem);
    ASSERT_EQ_INT(store_reader_idem(r, "bob", "k-located", &view), 0);
    int64_t seq_max = -1;
    ASSERT_OK(store_reader_event_seq_max(r, &seq_max));
    ASSERT_EQ_INT(seq_max, 3);
    int64_t last = 0;
    ASSERT_OK(store_reader_events(r, 0, NULL, NULL, 100, &last, count_event));
    ASSERT_EQ_INT(last, 3);
    int item_count = 0;
    ASSERT_OK(store_reader_items(r, &item_count, count_item));
    ASSERT_EQ_INT(item_count, 2);
    int64_t announced = -1;
    ASSERT_EQ_INT(store_reader_wait(r, 10, &announced), 0); /* nobody else writes */
    ASSERT_EQ_INT(announced, 0);
    store_reader_close(r);
}

/* The workers' read of the order events (store_events_of_check.h). */
static void test_reader_events_of_types(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    struct store_batch batch = {.events = events_of_log,
                                .event_count = sizeof events_of_log / sizeof events_of_log[0]};
    ASSERT_OK(store_commit_batch(f->store, &batch));
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->path));
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

static void test_reader_reservation_row(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    struct store_batch batch = full_batch();
    ASSERT_OK(store_commit_batch(f->store, &batch));
    struct row_reservation_line lines[CMD_LINES_MAX + 1];
    batch = odd_batch(lines);
    ASSERT_OK(store_commit_batch(f->store, &batch));
    struct store_reader *r = NULL;
    ASSERT_OK(store_reader_open(&r, f->path));
    check_reader_reservations(r);
    store_reader_close(r);
}

/* ---- prefetch: idempotency records ------------------------------------------------------- */

#define MANY_RECORDS 1500

static void many_key(char *out, size_t size, int i)
{
    snprintf(out, size, "key-%04d", i);
}

/* Commits MANY_RECORDS records of principal "p" with keys key-0000...: even ones with a
 * Location, odd ones without; bodies that differ per key. */
static void commit_many_records(struct store *store)
{
    static char keys[MANY_RECORDS][16];
    static char bodies[MANY_RECORDS][64];
    static char locations[MANY_RECORDS][32];
    struct row_idem *rows = calloc(MANY_RECORDS, sizeof *rows);
    for (int i = 0; i < MANY_RECORDS; i++) {
        many_key(keys[i], sizeof keys[i], i);
        snprintf(bodies[i], sizeof bodies[i], "{\"orderId\":\"ord_%d\",\"q\":\"\\\"%d\"}", i, i);
        snprintf(locations[i], sizeof locations[i], "/v1/orders/ord_%d", i);
        rows[i] = (struct row_idem){
            "p",        keys[i],   (uint64_t)i * 7919u, 200 + i % 300,
            i % 3 == 0, bodies[i], strlen(bodies[i]),   i % 2 == 0 ? locations[i] : NULL,
            T0_MS + i};
    }
    struct store_batch batch = {0};
    batch.idems = rows;
    batch.idem_count = MANY_RECORDS;
    ASSERT_OK(store_commit_batch(store, &batch));
    free(rows);
}

/* Prefetches the keys of indexes (count; an index >= MANY_RECORDS names an absent key) and
 * checks that exactly the present ones were reported, with their bytes. */
static void prefetch_and_check(struct store *store, const int *indexes, size_t count)
{
    static char names[BATCH_COMMANDS_MAX][24];
    static struct store_idem_key keys[BATCH_COMMANDS_MAX];
    ASSERT_LE_UINT(count, BATCH_COMMANDS_MAX);
    size_t present = 0;
    for (size_t i = 0; i < count; i++) {
        many_key(names[i], sizeof names[i], indexes[i]);
        keys[i] = (struct store_idem_key){"p", names[i]};
        bool duplicate = false;
        for (size_t j = 0; j < i; j++) {
            duplicate = duplicate || indexes[j] == indexes[i];
        }
        present += indexes[i] < MANY_RECORDS && !duplicate;
    }
    struct seen seen = {0};
    seen_reset(&seen);
    struct store_sink sink = prefetch_sink(&seen);
    struct store_prefetch_keys prefetch = {.idems = keys, .idem_count = count};
    struct store_sequences untouched = {-7, -8, -9};
    ASSERT_OK(store_prefetch(store, &prefetch, &sink, &untouched));
    ASSERT_EQ_INT(untouched.order_seq_max, -7); /* not shared: *out is left alone */
    ASSERT_EQ_INT(untouched.reservation_seq_max, -9);
    ASSERT_EQ_UINT(seen.idem_count, present);
    ASSERT_EQ_UINT(seen.line_count, 0);
    for (size_t i = 0; i < count; i++) {
        int n = indexes[i];
        const struct seen_idem *got = seen_idem_find(&seen, "p", names[i]);
        if (n >= MANY_RECORDS) {
            ASSERT_NULL(got);
            continue;
        }
        ASSERT_NOT_NULL(got);
        char body[64];
        snprintf(body, sizeof body, "{\"orderId\":\"ord_%d\",\"q\":\"\\\"%d\"}", n, n);
        ASSERT_EQ_UINT(got->body_length, strlen(body));
        ASSERT_EQ_MEM(got->body, body, got->body_length);
        ASSERT_EQ_UINT(got->fingerprint, (uint64_t)n * 7919u);
        ASSERT_EQ_INT(got->status, 200 + n % 300);
        ASSERT_EQ_INT(got->problem, n % 3 == 0);
        ASSERT_EQ_INT(got->has_location, n % 2 == 0);
        if (n % 2 == 0) {
            char location[32];
            snprintf(location, sizeof location, "/v1/orders/ord_%d", n);
            ASSERT_EQ_STR(got->location, location);
        }
    }
    seen_free(&seen);
}

static void test_prefetch_idems_every_size(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    commit_many_records(f->store);
    fixture_open(f);
    static int indexes[BATCH_COMMANDS_MAX];
    /* The smallest size: 3 present, 2 absent. */
    int few[] = {0, 1, 9000, 1499, 9001};
    prefetch_and_check(f->store, few, 5);
    /* More than the smallest size holds (a duplicate among them, reported once). */
    for (int i = 0; i < 20; i++) {
        indexes[i] = i % 4 == 3 ? 5000 + i : 37 * i;
    }
    indexes[19] = indexes[0];
    prefetch_and_check(f->store, indexes, 20);
    /* Exactly a full batch, half present; then a small one through the same statement size,
     * whose unused pairs must no longer name the previous run's keys. */
    for (int i = 0; i < BATCH_COMMANDS_MAX; i++) {
        indexes[i] = i % 2 == 0 ? i : MANY_RECORDS + i;
    }
    prefetch_and_check(f->store, indexes, BATCH_COMMANDS_MAX);
    for (int i = 0; i < 60; i++) {
        indexes[i] = i;
    }
    prefetch_and_check(f->store, indexes, 60);
    for (int i = 0; i < 10; i++) {
        indexes[i] = 9000 + i; /* absent: key-0010..0059 still bound would show here */
    }
    prefetch_and_check(f->store, indexes, 10);
    prefetch_and_check(f->store, indexes, 0);
}

static void test_prefetch_sink_error_stops(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    commit_many_records(f->store);
    struct store_idem_key keys[] = {{"p", "key-0001"}, {"p", "key-0002"}};
    struct seen seen = {0};
    seen_reset(&seen);
    seen.fail_with = SVC_ECAPACITY;
    struct store_sink sink = prefetch_sink(&seen);
    struct store_prefetch_keys prefetch = {.idems = keys, .idem_count = 2};
    struct store_sequences sequences;
    ASSERT_ERR(store_prefetch(f->store, &prefetch, &sink, &sequences), SVC_ECAPACITY);
    ASSERT_EQ_UINT(seen.idem_count, 1);
    /* The statement was reset: the next prefetch reads again from the start. */
    seen_reset(&seen);
    ASSERT_OK(store_prefetch(f->store, &prefetch, &sink, &sequences));
    ASSERT_EQ_UINT(seen.idem_count, 2);
    seen_free(&seen);
}

/* ---- prefetch: reservations --------------------------------------------------------------- */

static void test_prefetch_reservations(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    struct store_batch batch = full_batch();
    ASSERT_OK(store_commit_batch(f->store, &batch));
    struct seen seen = {0};
    seen_reset(&seen);
    struct store_sink sink = prefetch_sink(&seen);
    struct store_sequences sequences;
    int64_t ended[] = {2, 77};
    struct store_prefetch_keys keys = {.reservation_seqs = ended, .reservation_count = 2};
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    ASSERT_EQ_UINT(seen.line_count, 2);
    ASSERT_EQ_STR(seen.lines[0], "ended 2 CONFIRMED v2");
    ASSERT_EQ_STR(seen.lines[1], "ended 77 (none) v0");
    /* Reservation 1 is ACTIVE in the file: the writer would hold it in memory and never ask,
     * so asking means memory and file disagree. */
    seen_reset(&seen);
    int64_t active[] = {1};
    keys = (struct store_prefetch_keys){.reservation_seqs = active, .reservation_count = 1};
    ASSERT_ERR(store_prefetch(f->store, &keys, &sink, &sequences), SVC_ESTORAGE_UNAVAILABLE);
    ASSERT_EQ_UINT(seen.line_count, 0);
    /* Idempotency records and reservations in one prefetch. */
    seen_reset(&seen);
    struct store_idem_key idem_keys[] = {{"alice", "k-problem"}, {"alice", "k-none"}};
    keys = (struct store_prefetch_keys){
        .idems = idem_keys, .idem_count = 2, .reservation_seqs = ended, .reservation_count = 1};
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    ASSERT_EQ_UINT(seen.idem_count, 1);
    ASSERT_EQ_STR(seen.idems[0].key, "k-problem");
    ASSERT_TRUE(seen.idems[0].problem);
    ASSERT_FALSE(seen.idems[0].has_location);
    ASSERT_EQ_UINT(seen.idems[0].body_length, sizeof problem_body - 1);
    ASSERT_EQ_STR(seen.lines[0], "ended 2 CONFIRMED v2");
    seen_free(&seen);
}

/* ---- the apply step: reads abort ---------------------------------------------------------- */

enum apply_call {
    CALL_PREFETCH,
    CALL_LOAD,
    CALL_COMMIT,
    CALL_BATCH_DONE,
    CALL_IDEM_PRUNE,
    CALL_CLOSE,
    CALL_APPLY_BEGIN,
    CALL_COUNT
};

static void apply_call_run(struct store *store, enum apply_call call)
{
    struct seen seen = {0};
    struct store_sink load = load_sink(&seen);
    struct store_sink prefetch = prefetch_sink(&seen);
    struct store_prefetch_keys keys = {0};
    struct store_sequences sequences;
    struct store_batch batch = {0};
    switch (call) {
    case CALL_PREFETCH: store_prefetch(store, &keys, &prefetch, &sequences); break;
    case CALL_LOAD: store_load(store, &load, &sequences); break;
    case CALL_COMMIT: store_commit_batch(store, &batch); break;
    case CALL_BATCH_DONE: store_batch_done(store); break;
    case CALL_IDEM_PRUNE: store_idem_prune(store, 0, 1, &(bool){false}); break;
    case CALL_CLOSE: store_close(store); break;
    case CALL_APPLY_BEGIN: store_apply_begin(store); break; /* nested */
    case CALL_COUNT: break;
    }
}

/* Runs call after store_apply_begin in a forked child, its stderr into report (size bytes);
 * returns its wait status. */
static int apply_call_in_child(struct fixture *f, enum apply_call call, char *report, size_t size)
{
    char path[340];
    snprintf(path, sizeof path, "%s/child-stderr", f->dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO); /* the assertion's report and backtrace */
        }
        store_apply_begin(f->store);
        apply_call_run(f->store, call);
        _exit(0);
    }
    ASSERT_GT_INT(pid, 0);
    int status = 0;
    ASSERT_EQ_INT(waitpid(pid, &status, 0), pid);
    FILE *in = fopen(path, "r");
    ASSERT_NOT_NULL(in);
    size_t n = fread(report, 1, size - 1, in);
    report[n] = '\0';
    fclose(in);
    unlink(path);
    return status;
}

static void test_reads_during_apply_abort(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    for (int call = 0; call < CALL_COUNT; call++) {
        char report[4096];
        int status = apply_call_in_child(f, (enum apply_call)call, report, sizeof report);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT) {
            TEST_FAIL("call %d during apply: status 0x%x, not SIGABRT", call, status);
        }
        if (strstr(report, "assertion failed: !s->applying") == NULL) {
            TEST_FAIL("call %d during apply: not the applying assertion:\n%s", call, report);
        }
    }
    /* Begin then end: the handle is usable again. */
    store_apply_begin(f->store);
    store_apply_end(f->store);
    struct seen seen = {0};
    seen_reset(&seen);
    struct store_sink sink = prefetch_sink(&seen);
    struct store_prefetch_keys keys = {0};
    struct store_sequences sequences;
    ASSERT_OK(store_prefetch(f->store, &keys, &sink, &sequences));
    ASSERT_EQ_INT(store_busy_wait_count(f->store), 0);
    seen_free(&seen);
}

/* The database at path, opened read-only beside the store's own connection. */
static sqlite3 *open_read_only(const char *path)
{
    sqlite3 *db = NULL;
    ASSERT_EQ_INT(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    return db;
}

/* sql prepared and stepped to its first row, which must exist; the caller finalizes. */
static sqlite3_stmt *first_row(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ_INT(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    ASSERT_EQ_INT(sqlite3_step(stmt), SQLITE_ROW);
    return stmt;
}

/* ---- migration 4 --------------------------------------------------------------------------- */

/* Builds f->path at schema version 3 with the v1..v3 statements, plus idempotency records. */
static void build_version_3(struct fixture *f)
{
    sqlite3 *db = NULL;
    ASSERT_EQ_INT(sqlite3_open(f->path, &db), SQLITE_OK);
    char sql[SCHEMA_STATEMENT_BYTES_MAX];
    ASSERT_EQ_INT(schema_migrations[2].version, 3);
    for (int m = 0; m < 3; m++) {
        for (int i = 0; schema_migrations[m].statements[i] != NULL; i++) {
            ASSERT_OK(
                schema_render(SCHEMA_SQLITE, schema_migrations[m].statements[i], sql, sizeof sql));
            ASSERT_EQ_INT(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        }
    }
    const char *rows =
        "INSERT INTO meta (key, value) VALUES ('schema_version', '3');"
        "INSERT INTO idempotency VALUES ('p', 'purchase', 1, 201, 0,"
        " '{\"orderId\":\"ord_7\",\"status\":\"COMPLETED\"}', 1);"
        "INSERT INTO idempotency VALUES ('p', 'store', 2, 201, 0, '{\"storeId\":\"S9\"}', 1);"
        "INSERT INTO idempotency VALUES ('p', 'refused', 3, 409, 1,"
        " '{\"orderId\":\"ord_8\",\"title\":\"x\"}', 1);"
        "INSERT INTO idempotency VALUES ('p', 'ok', 4, 200, 0, '{\"orderId\":\"ord_9\"}', 1);";
    char *message = NULL;
    if (sqlite3_exec(db, rows, NULL, NULL, &message) != SQLITE_OK) {
        TEST_FAIL("build version 3: %s", message);
    }
    sqlite3_close(db);
}

static void test_migration_4_backfills_location(void **state)
{
    struct fixture *f = *state;
    build_version_3(f);
    fixture_open(f); /* migrates to the latest version */
    struct store_idem_key keys[] = {
        {"p", "purchase"}, {"p", "store"}, {"p", "refused"}, {"p", "ok"}};
    struct seen seen = {0};
    seen_reset(&seen);
    struct store_sink sink = prefetch_sink(&seen);
    struct store_prefetch_keys prefetch = {.idems = keys, .idem_count = 4};
    struct store_sequences sequences;
    ASSERT_OK(store_prefetch(f->store, &prefetch, &sink, &sequences));
    ASSERT_EQ_UINT(seen.idem_count, 4);
    const struct seen_idem *purchase = seen_idem_find(&seen, "p", "purchase");
    ASSERT_TRUE(purchase->has_location);
    ASSERT_EQ_STR(purchase->location, "/v1/orders/ord_7");
    ASSERT_FALSE(seen_idem_find(&seen, "p", "store")->has_location);
    ASSERT_FALSE(seen_idem_find(&seen, "p", "refused")->has_location);
    ASSERT_FALSE(seen_idem_find(&seen, "p", "ok")->has_location);
    seen_free(&seen);
    sqlite3 *db = open_read_only(f->path);
    sqlite3_stmt *stmt = first_row(db, "SELECT value FROM meta WHERE key = 'schema_version'");
    char newest[16]; /* every later migration runs too */
    snprintf(newest, sizeof newest, "%d", schema_migrations[schema_migration_count - 1].version);
    ASSERT_EQ_STR((const char *)sqlite3_column_text(stmt, 0), newest);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
}

/* ---- migration 10 -------------------------------------------------------------------------- */

/* The number of opcodes named op in the program of sql. */
static int explain_count(sqlite3 *db, const char *sql, const char *op)
{
    char explain[1024];
    snprintf(explain, sizeof explain, "EXPLAIN %s", sql);
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ_INT(sqlite3_prepare_v2(db, explain, -1, &stmt, NULL), SQLITE_OK);
    int count = 0;
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        count += strcmp((const char *)sqlite3_column_text(stmt, 1), op) == 0;
    }
    sqlite3_finalize(stmt);
    return count;
}

/* A database made before migration 10 gets the reservations' CHECKs as comparisons: a write
 * of a reservation opens no ephemeral table, and the rule still refuses a bad status. */
static void test_migration_10_checks_without_ephemeral_tables(void **state)
{
    struct fixture *f = *state;
    build_version_3(f);
    fixture_open(f); /* migrates through 6 (order_status) and 10 */
    sqlite3 *db = NULL;
    ASSERT_EQ_INT(sqlite3_open(f->path, &db), SQLITE_OK);
    const char *upsert =
        "INSERT INTO reservations (reservation_seq, store_id, customer_id, status,"
        " expires_at_ms, version, created_at_ms, updated_at_ms, order_seq, order_status)"
        " VALUES (?1, 'S1', 'c', ?2, 1, 1, 1, 1, 0, ?3) ON CONFLICT (reservation_seq) DO UPDATE"
        " SET status = excluded.status, order_status = excluded.order_status";
    ASSERT_EQ_INT(explain_count(db, upsert, "OpenEphemeral"), 0);
    ASSERT_EQ_INT(sqlite3_exec(db, "PRAGMA integrity_check", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ_INT(
        sqlite3_exec(db, "INSERT INTO stores VALUES ('S1', 'one', 0, 1)", NULL, NULL, NULL),
        SQLITE_OK);
    const struct {
        const char *status;
        const char *order_status;
        int rc;
    } rows[] = {{"ACTIVE", "PAYING", SQLITE_DONE},
                {"EXPIRED", NULL, SQLITE_DONE},
                {"BOGUS", NULL, SQLITE_CONSTRAINT},
                {"ACTIVE", "PAID", SQLITE_CONSTRAINT}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        sqlite3_stmt *stmt = NULL;
        ASSERT_EQ_INT(sqlite3_prepare_v2(db, upsert, -1, &stmt, NULL), SQLITE_OK);
        sqlite3_bind_int64(stmt, 1, (sqlite3_int64)i + 1);
        sqlite3_bind_text(stmt, 2, rows[i].status, -1, SQLITE_STATIC);
        if (rows[i].order_status != NULL) {
            sqlite3_bind_text(stmt, 3, rows[i].order_status, -1, SQLITE_STATIC);
        }
        ASSERT_EQ_INT(sqlite3_step(stmt), rows[i].rc);
        sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
}

/* ---- the idempotency prefetch's query plan --------------------------------------------------- */

static void test_idem_prefetch_searches_the_primary_key(void **state)
{
    struct fixture *f = *state;
    fixture_open(f); /* the schema at the latest version */
    sqlite3 *db = open_read_only(f->path);
    static char sql[256 + 16 * BATCH_COMMANDS_MAX];
    const size_t sizes[] = {1, 8, 64, BATCH_COMMANDS_MAX};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        ASSERT_OK(store_sqlite_idem_prefetch_sql(sizes[s], sql, sizeof sql));
        char explain[sizeof sql + 32];
        snprintf(explain, sizeof explain, "EXPLAIN QUERY PLAN %s", sql);
        sqlite3_stmt *stmt = NULL;
        ASSERT_EQ_INT(sqlite3_prepare_v2(db, explain, -1, &stmt, NULL), SQLITE_OK);
        bool searched = false;
        while (sqlite3_step(stmt) == SQLITE_ROW) {
            const char *detail = (const char *)sqlite3_column_text(stmt, 3);
            ASSERT_NULL(strstr(detail, "SCAN idempotency"));
            searched = searched || strstr(detail, "SEARCH idempotency USING PRIMARY KEY") != NULL;
        }
        sqlite3_finalize(stmt);
        ASSERT_TRUE(searched);
    }
    ASSERT_ERR(store_sqlite_idem_prefetch_sql(8, sql, 100), SVC_ECAPACITY);
    sqlite3_close(db);
}

/* Runs one sweep of store_idem_prune to its end in steps of step_rows; checks that every step
 * but the last one reported more to come, and returns how many records it deleted. */
static int sweep_once(struct store *store, int64_t before_ms, int step_rows, int steps_expected)
{
    int deleted = 0;
    for (int step = 1; step <= steps_expected; step++) {
        bool swept = true;
        int rc = store_idem_prune(store, before_ms, step_rows, &swept);
        ASSERT_LE_INT(0, rc);
        ASSERT_LE_INT(rc, step_rows);
        ASSERT_EQ_INT(swept, step == steps_expected);
        deleted += rc;
    }
    return deleted;
}

/* The integer sql (a count) reads from the database at path. */
static int64_t count_sql(const char *path, const char *sql)
{
    sqlite3 *db = open_read_only(path);
    sqlite3_stmt *stmt = first_row(db, sql);
    int64_t n = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return n;
}

/* Pruning sweeps the records in key order, a step at a time, and deletes only the old ones;
 * the table has no index by age (migration 13). */
static void test_idem_prune_sweeps_in_steps(void **state)
{
    struct fixture *f = *state;
    fixture_open(f);
    commit_many_records(f->store); /* key-0000..key-1499, created T0_MS + i */
    ASSERT_EQ_INT(count_sql(f->path, "SELECT count(*) FROM sqlite_schema"
                                     " WHERE name = 'idempotency_created'"),
                  0);
    /* 1,500 keys in steps of 400: three steps up to a bound, the fourth reaches the end. */
    ASSERT_EQ_INT(sweep_once(f->store, T0_MS + 1000, 400, 4), 1000);
    ASSERT_EQ_INT(count_sql(f->path, "SELECT count(*) FROM idempotency"), MANY_RECORDS - 1000);
    ASSERT_EQ_INT(count_sql(f->path, "SELECT count(*) FROM idempotency"
                                     " WHERE idem_key < 'key-1000'"),
                  0);
    /* The next sweep starts from the first key again: 500 left, every one old now. */
    ASSERT_EQ_INT(sweep_once(f->store, T0_MS + MANY_RECORDS, 400, 2), 500);
    ASSERT_EQ_INT(count_sql(f->path, "SELECT count(*) FROM idempotency"), 0);
    ASSERT_EQ_INT(sweep_once(f->store, T0_MS + MANY_RECORDS, 400, 1), 0); /* empty table */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_reopen_load, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reader_reads_committed_rows, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reader_events_of_types, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reader_reservation_row, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_idems_every_size, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_sink_error_stops, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_reservations, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reads_during_apply_abort, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_migration_4_backfills_location, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_migration_10_checks_without_ephemeral_tables,
                                        fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_idem_prefetch_searches_the_primary_key, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_idem_prune_sweeps_in_steps, fixture_setup,
                                        fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
