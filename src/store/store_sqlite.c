/*
 * store_sqlite.c - the embedded SQLite backend of store.h.
 *
 * One read-write connection owned by the writer thread: WAL journal, synchronous=FULL (the
 * WAL is fsynced at every commit, so a committed batch survives kill -9 and power loss), every
 * statement prepared once at open. Each I/O thread opens its own read-only connection; WAL lets
 * them read while the writer commits. No SQL is ever built from user input.
 *
 * Checkpoints (copying the WAL back into the database file) run on a checkpointer thread with
 * its own connection, never inside a batch commit: SQLite's automatic checkpoint would stall
 * the writer for tens of milliseconds every thousand pages, and every request of that batch
 * would wait with it. Errors are logged
 * here with SQLite's message and returned as SVC_ESTORAGE_UNAVAILABLE (STYLE 9).
 */
#include "store/store.h"

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/errors.h"
#include "base/json_out.h"
#include "base/log.h"
#include "store/schema.h"
#include "base/svc_assert.h"

/* The statement registry: every SQL the writer runs, prepared at open (STYLE 24). */
#define STORE_STMT_MAP(X)                                                                      \
    X(BEGIN, "BEGIN IMMEDIATE")                                                                \
    X(COMMIT, "COMMIT")                                                                        \
    X(ROLLBACK, "ROLLBACK")                                                                    \
    X(INSERT_STORE, "INSERT INTO stores (store_id, name, latency_ms, created_at_ms)"           \
                    " VALUES (?1, ?2, ?3, ?4)")                                                \
    X(INSERT_PRODUCT, "INSERT INTO products (sku, name, created_at_ms) VALUES (?1, ?2, ?3)")   \
    X(UPSERT_ITEM, "INSERT INTO stock_items (store_id, sku, on_hand, reserved, version, sold," \
                   " updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"                       \
                   " ON CONFLICT (store_id, sku) DO UPDATE SET on_hand = excluded.on_hand,"    \
                   " reserved = excluded.reserved, version = excluded.version,"                \
                   " sold = excluded.sold, updated_at_ms = excluded.updated_at_ms"             \
                   " WHERE stock_items.version < excluded.version")                            \
    X(INSERT_ORDER, "INSERT INTO orders (order_seq, customer_id, store_id, status, lines,"     \
                    " history, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")            \
    X(INSERT_IDEM, "INSERT INTO idempotency (principal, idem_key, fingerprint, status,"        \
                   " problem, body, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")       \
    X(INSERT_EVENT, "INSERT INTO events (seq, event_type, event_version, occurred_at_ms,"      \
                    " store_id, sku, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")               \
    X(FIND_IDEM, "SELECT fingerprint, status, body, problem FROM idempotency"                  \
                 " WHERE principal = ?1 AND idem_key = ?2")                                    \
    X(UPSERT_RESERVATION, "INSERT INTO reservations (reservation_seq, store_id, customer_id,"  \
                          " status, expires_at_ms, version, created_at_ms, updated_at_ms)"     \
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"                           \
                          " ON CONFLICT (reservation_seq) DO UPDATE SET"                       \
                          " status = excluded.status, version = excluded.version,"             \
                          " updated_at_ms = excluded.updated_at_ms"                            \
                          " WHERE reservations.version < excluded.version")                    \
    X(INSERT_RESERVATION_LINE, "INSERT INTO reservation_lines (reservation_seq, line_no,"      \
                               " sku, qty) VALUES (?1, ?2, ?3, ?4)")                           \
    X(FIND_RESERVATION, "SELECT status, version FROM reservations"                             \
                        " WHERE reservation_seq = ?1")                                         \
    X(PRUNE_IDEM, "DELETE FROM idempotency WHERE (principal, idem_key) IN"                     \
                  " (SELECT principal, idem_key FROM idempotency WHERE created_at_ms < ?1"     \
                  " LIMIT ?2)")

enum store_stmt {
#define STORE_STMT_ENUM_(name, sql) STORE_STMT_##name,
    STORE_STMT_MAP(STORE_STMT_ENUM_)
#undef STORE_STMT_ENUM_
        STORE_STMT_COUNT
};

static const char *const store_stmt_sql[STORE_STMT_COUNT] = {
#define STORE_STMT_SQL_(name, sql) sql,
    STORE_STMT_MAP(STORE_STMT_SQL_)
#undef STORE_STMT_SQL_
};

/* Checkpoint once the WAL holds this many new pages (4 KiB each). Small and frequent: every
 * checkpoint ends with an fsync of the database file, and a large one (4096 pages) delayed the
 * writer's concurrent WAL fsync by up to ~45 ms; at 512 pages the open-loop p99 at 20k
 * purchases/s fell from 8.2 ms to 3.1 ms in the same run (bench notes in the issue). */
#define STORE_CHECKPOINT_FRAMES 512
/* Past this many WAL pages (32 MiB) the writer finishes the checkpoint itself between two
 * batches, so that its next transaction restarts the WAL from the beginning. Without it the
 * background checkpoint never quite catches up under steady load, the WAL file grows without
 * bound (637 MB after 15 s at 5k purchases/s), and every commit that grows it waits for the
 * file system journal, which the checkpointer's fsync of the database holds: commits of
 * 15-80 ms. With it the WAL is rewritten in place and the open-loop p99 at 35k purchases/s
 * went from 6-15 ms to 3.3 ms in paired runs; the writer's share costs ~0.5 ms a second. */
#define STORE_WAL_RESET_FRAMES 8192
_Static_assert(STORE_WAL_RESET_FRAMES > 4 * STORE_CHECKPOINT_FRAMES,
               "the background checkpointer does the bulk of the copying");

/* How often the checkpointer looks at the WAL size when nothing wakes it. */
#define STORE_CHECKPOINT_POLL_MS 20

struct store_checkpointer {
    pthread_t thread;
    pthread_mutex_t mutex; /* guards stopping and the wake-up, not the request path */
    pthread_cond_t wake;
    bool stopping;
    bool started;
    sqlite3 *db;            /* owned; the checkpointer thread's own connection */
    _Atomic int wal_frames; /* WAL size after the last commit, from the wal hook */
    _Atomic uint64_t checkpoints;
};

struct sqlite_store {
    struct store base; /* first: the backend's operations */
    sqlite3 *db;       /* owned; used by the writer thread only */
    struct store_checkpointer checkpointer;
    sqlite3_stmt *stmts[STORE_STMT_COUNT]; /* owned, prepared at open */
    char *idem_body;                       /* owned copy of the last found body */
    size_t idem_body_size;
};

struct sqlite_reader {
    struct store_reader base; /* first: the backend's operations */
    sqlite3 *db;              /* owned, read-only */
    sqlite3_stmt *order_get;  /* owned */
    sqlite3_stmt *events_get; /* owned: the event log since a seq, filtered */
    sqlite3_stmt *seq_max;    /* owned */
    sqlite3_stmt *idem_get;   /* owned */
    char *idem_body;          /* owned copy of the last found idempotency body */
    size_t idem_body_size;
};

static void sqlite_close(struct store *base);
static void sqlite_reader_close(struct store_reader *base);

/* The reader's statements besides the order lookup, prepared at open (STYLE 24). */
#define STORE_READER_EVENTS_SQL                                                              \
    "SELECT seq, event_type, event_version, occurred_at_ms, store_id, sku, data FROM events" \
    " WHERE seq > ?1 AND (?2 IS NULL OR store_id = ?2) AND (?3 IS NULL OR sku = ?3)"         \
    " ORDER BY seq LIMIT ?4"
#define STORE_READER_SEQ_MAX_SQL "SELECT COALESCE(MAX(seq), 0) FROM events"
#define STORE_READER_IDEM_SQL                                      \
    "SELECT status, problem, body, created_at_ms FROM idempotency" \
    " WHERE principal = ?1 AND idem_key = ?2"

static int store_fail(sqlite3 *db, const char *what)
{
    log_error("sqlite: %s: %s (%d)", what, sqlite3_errmsg(db), sqlite3_extended_errcode(db));
    return SVC_ESTORAGE_UNAVAILABLE;
}

static int store_exec(sqlite3 *db, const char *sql)
{
    char *message = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &message) != SQLITE_OK) {
        log_error("sqlite: %s: %s", sql, message ? message : "?");
        sqlite3_free(message);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 0;
}

static int store_schema_version(sqlite3 *db, int *version_out)
{
    sqlite3_stmt *stmt = NULL;
    *version_out = 0;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'schema_version'", -1, &stmt,
                           NULL) != SQLITE_OK) {
        return 0; /* no meta table: a fresh database */
    }
    if (sqlite3_step(stmt) == SQLITE_ROW) {
        *version_out = sqlite3_column_int(stmt, 0);
    }
    sqlite3_finalize(stmt);
    SVC_ASSERT(*version_out >= 0);
    return 0;
}

static int store_migrate(sqlite3 *db)
{
    int version = 0;
    store_schema_version(db, &version);
    for (int m = 0; m < schema_migration_count; m++) {
        const struct schema_migration *migration = &schema_migrations[m];
        if (migration->version <= version) {
            continue;
        }
        SVC_ASSERT(migration->version == version + 1);
        int rc = store_exec(db, "BEGIN IMMEDIATE");
        char sql_text[SCHEMA_STATEMENT_BYTES_MAX];
        for (int i = 0; rc == 0 && migration->statements[i] != NULL; i++) {
            rc = schema_render(SCHEMA_SQLITE, migration->statements[i], sql_text, sizeof sql_text);
            SVC_ASSERT(rc == 0); /* the statements are constants that fit */
            rc = store_exec(db, sql_text);
        }
        char sql[128];
        snprintf(sql, sizeof sql,
                 "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '%d')",
                 migration->version);
        if (rc == 0) {
            rc = store_exec(db, sql);
        }
        if (rc == 0) {
            rc = store_exec(db, "COMMIT");
        }
        if (rc != 0) {
            store_exec(db, "ROLLBACK");
            return rc;
        }
        version = migration->version;
        log_info("sqlite: schema migrated to version %d", version);
    }
    return 0;
}

/* The writer's busy waits: SQLite's own busy_timeout sleeps 1, 2, 5, 10, 20... ms between
 * tries, so one brief lock held by the checkpointer could cost a whole batch tens of ms. This
 * handler retries every STORE_BUSY_SLEEP_US, up to STORE_BUSY_WAIT_US in all. */
#define STORE_BUSY_SLEEP_US 100
#define STORE_BUSY_WAIT_US (5 * 1000 * 1000)
_Static_assert(STORE_BUSY_WAIT_US / STORE_BUSY_SLEEP_US < 1000000, "tries fit an int");

static _Atomic uint64_t store_busy_waits; /* busy-handler calls, for /metrics */

static int store_busy_handler(void *context, int tries)
{
    (void)context;
    SVC_ASSERT(tries >= 0);
    atomic_fetch_add_explicit(&store_busy_waits, 1, memory_order_relaxed);
    if (tries >= STORE_BUSY_WAIT_US / STORE_BUSY_SLEEP_US) {
        return 0; /* give up: the caller gets SQLITE_BUSY and answers 503 */
    }
    usleep(STORE_BUSY_SLEEP_US);
    return 1;
}

uint64_t store_sqlite_busy_wait_count(void)
{
    return atomic_load_explicit(&store_busy_waits, memory_order_relaxed);
}

static int store_configure(sqlite3 *db)
{
    static const char *const pragmas[] = {
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA cache_size = -65536", /* 64 MiB: the hot indexes stay in memory */
        "PRAGMA temp_store = MEMORY",
        "PRAGMA journal_size_limit = 67108864", /* a reset WAL shrinks back to 64 MiB */
    };
    sqlite3_busy_handler(db, store_busy_handler, NULL);
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++) {
        int rc = store_exec(db, pragmas[i]);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static int store_wal_hook(void *context, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    struct store_checkpointer *c = context;
    atomic_store_explicit(&c->wal_frames, frames, memory_order_relaxed);
    if (frames >= STORE_CHECKPOINT_FRAMES) {
        pthread_cond_signal(&c->wake); /* no mutex needed for a hint; the poll covers a miss */
    }
    return SQLITE_OK;
}

static void *store_checkpointer_main(void *arg)
{
    struct store_checkpointer *c = arg;
    SVC_ASSERT(c->db != NULL);
    pthread_mutex_lock(&c->mutex);
    while (!c->stopping) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += STORE_CHECKPOINT_POLL_MS * 1000000L;
        deadline.tv_sec += deadline.tv_nsec / 1000000000L;
        deadline.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&c->wake, &c->mutex, &deadline);
        if (c->stopping || atomic_load(&c->wal_frames) < STORE_CHECKPOINT_FRAMES / 4) {
            continue;
        }
        pthread_mutex_unlock(&c->mutex);
        int log_frames = 0;
        int done_frames = 0;
        int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_frames,
                                           &done_frames);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
            log_warn("sqlite: checkpoint: %s", sqlite3_errmsg(c->db));
        }
        atomic_fetch_add(&c->checkpoints, 1);
        pthread_mutex_lock(&c->mutex);
    }
    pthread_mutex_unlock(&c->mutex);
    return NULL;
}

static int store_checkpointer_start(struct sqlite_store *s, const char *uri)
{
    struct store_checkpointer *c = &s->checkpointer;
    pthread_mutex_init(&c->mutex, NULL);
    pthread_cond_init(&c->wake, NULL);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(uri, &c->db, flags, NULL) != SQLITE_OK) {
        return store_fail(c->db, "open the checkpointer connection");
    }
    sqlite3_busy_timeout(c->db, 1000);
    /* A connection learns the file is in WAL mode only once it reads it; until then a
     * checkpoint on it is a silent no-op. */
    if (store_exec(c->db, "SELECT count(*) FROM sqlite_master") != 0 ||
        store_exec(s->db, "PRAGMA wal_autocheckpoint = 0") != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    sqlite3_wal_hook(s->db, store_wal_hook, c);
    if (pthread_create(&c->thread, NULL, store_checkpointer_main, c) != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    c->started = true;
    return 0;
}

static void store_checkpointer_stop(struct store_checkpointer *c)
{
    if (c->started) {
        pthread_mutex_lock(&c->mutex);
        c->stopping = true;
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->mutex);
        pthread_join(c->thread, NULL);
        c->started = false;
        pthread_mutex_destroy(&c->mutex);
        pthread_cond_destroy(&c->wake);
    }
    sqlite3_close(c->db);
    c->db = NULL;
}

static const struct store_ops sqlite_ops;

int store_sqlite_open(struct store **out, const char *uri)
{
    SVC_ASSERT(out != NULL);
    SVC_ASSERT(uri != NULL);
    struct sqlite_store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->base.ops = &sqlite_ops;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(uri, &s->db, flags, NULL) != SQLITE_OK) {
        int rc = store_fail(s->db, uri);
        sqlite_close(&s->base);
        return rc;
    }
    int rc = store_configure(s->db);
    if (rc == 0) {
        rc = store_migrate(s->db);
    }
    for (int i = 0; rc == 0 && i < STORE_STMT_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, store_stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                               &s->stmts[i], NULL) != SQLITE_OK) {
            rc = store_fail(s->db, store_stmt_sql[i]);
        }
    }
    if (rc == 0) {
        rc = store_checkpointer_start(s, uri);
    }
    if (rc != 0) {
        sqlite_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}

static void sqlite_close(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (s == NULL) {
        return;
    }
    store_checkpointer_stop(&s->checkpointer);
    for (int i = 0; i < STORE_STMT_COUNT; i++) {
        sqlite3_finalize(s->stmts[i]);
    }
    sqlite3_close(s->db);
    free(s->idem_body);
    free(s);
}

static const char *store_column_text(sqlite3_stmt *stmt, int column)
{
    const unsigned char *text = sqlite3_column_text(stmt, column);
    return text ? (const char *)text : "";
}

/* Runs a SELECT and hands every row to each_row; stops at its first non-zero return. */
static int store_each_row(struct sqlite_store *s, const char *sql,
                          int (*each_row)(sqlite3_stmt *, const struct store_loader *),
                          const struct store_loader *loader)
{
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &stmt, NULL) != SQLITE_OK) {
        return store_fail(s->db, sql);
    }
    int rc = 0;
    int step = SQLITE_ROW;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        rc = each_row(stmt, loader);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_fail(s->db, sql);
    }
    sqlite3_finalize(stmt);
    return rc;
}

static int store_load_store_row(sqlite3_stmt *stmt, const struct store_loader *loader)
{
    return loader->on_store(loader->context, store_column_text(stmt, 0), store_column_text(stmt, 1),
                            sqlite3_column_int64(stmt, 2));
}

static int store_load_product_row(sqlite3_stmt *stmt, const struct store_loader *loader)
{
    return loader->on_product(loader->context, store_column_text(stmt, 0),
                              store_column_text(stmt, 1));
}

static int store_load_item_row(sqlite3_stmt *stmt, const struct store_loader *loader)
{
    return loader->on_item(loader->context, store_column_text(stmt, 0), store_column_text(stmt, 1),
                           sqlite3_column_int64(stmt, 2), sqlite3_column_int64(stmt, 3),
                           sqlite3_column_int64(stmt, 4), sqlite3_column_int64(stmt, 5),
                           sqlite3_column_int64(stmt, 6));
}

static int store_load_reservation_row(sqlite3_stmt *stmt, const struct store_loader *loader)
{
    if (sqlite3_column_type(stmt, 6) == SQLITE_NULL) { /* the reservation's own row */
        return loader->on_reservation(loader->context, sqlite3_column_int64(stmt, 0),
                                      store_column_text(stmt, 1), store_column_text(stmt, 2),
                                      sqlite3_column_int64(stmt, 3), sqlite3_column_int64(stmt, 4),
                                      sqlite3_column_int64(stmt, 5));
    }
    return loader->on_reservation_line(loader->context, sqlite3_column_int64(stmt, 0),
                                       store_column_text(stmt, 7), sqlite3_column_int64(stmt, 8));
}

static int64_t store_select_int(struct sqlite_store *s, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    int64_t value = -1;
    if (sqlite3_prepare_v2(s->db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
        value = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    return value;
}

static int sqlite_load(struct store *base, const struct store_loader *loader,
                       struct store_sequences *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(loader->on_store && loader->on_product && loader->on_item);
    int rc = store_each_row(s, "SELECT store_id, name, latency_ms FROM stores ORDER BY rowid",
                            store_load_store_row, loader);
    if (rc == 0) {
        rc = store_each_row(s, "SELECT sku, name FROM products ORDER BY rowid",
                            store_load_product_row, loader);
    }
    if (rc == 0) {
        rc = store_each_row(s,
                            "SELECT store_id, sku, on_hand, reserved, version, sold,"
                            " updated_at_ms FROM stock_items",
                            store_load_item_row, loader);
    }
    if (rc == 0 && loader->on_reservation != NULL) {
        /* Each ACTIVE reservation, then its lines (line_no NULL marks the reservation). */
        rc = store_each_row(s,
                            "SELECT r.reservation_seq, r.store_id, r.customer_id,"
                            " r.expires_at_ms, r.version, r.created_at_ms, NULL, NULL, NULL"
                            " FROM reservations r WHERE r.status = 'ACTIVE'"
                            " UNION ALL SELECT l.reservation_seq, NULL, NULL, NULL, NULL, NULL,"
                            " l.line_no, l.sku, l.qty FROM reservation_lines l"
                            " JOIN reservations r USING (reservation_seq)"
                            " WHERE r.status = 'ACTIVE'"
                            " ORDER BY 1, 7", /* NULL sorts first: the reservation, then lines */
                            store_load_reservation_row, loader);
    }
    if (rc != 0) {
        return rc;
    }
    out->reservation_seq_max =
        store_select_int(s, "SELECT COALESCE(MAX(reservation_seq), 0) FROM reservations");
    out->order_seq_max = store_select_int(s, "SELECT COALESCE(MAX(order_seq), 0) FROM orders");
    out->event_seq_max = store_select_int(s, "SELECT COALESCE(MAX(seq), 0) FROM events");
    if (out->order_seq_max < 0 || out->event_seq_max < 0 || out->reservation_seq_max < 0) {
        return store_fail(s->db, "load sequences");
    }
    return 0;
}

static int sqlite_idem_find(struct store *base, const char *principal, const char *key,
                            struct store_idem_found *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *stmt = s->stmts[STORE_STMT_FIND_IDEM];
    sqlite3_bind_text(stmt, 1, principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 2, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        size_t length = (size_t)sqlite3_column_bytes(stmt, 2);
        if (length + 1 > s->idem_body_size) {
            char *grown = realloc(s->idem_body, length + 1); /* rare: replays only */
            SVC_ASSERT(grown != NULL);
            s->idem_body = grown;
            s->idem_body_size = length + 1;
        }
        memcpy(s->idem_body, store_column_text(stmt, 2), length);
        s->idem_body[length] = '\0';
        out->fingerprint = (uint64_t)sqlite3_column_int64(stmt, 0);
        out->status = sqlite3_column_int(stmt, 1);
        out->problem = sqlite3_column_int(stmt, 3) != 0;
        out->body = s->idem_body;
        out->body_length = length;
        rc = 1;
    } else if (step != SQLITE_DONE) {
        rc = store_fail(s->db, "find idempotency record");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

/* Steps one bound insert/update statement to completion and resets it. */
static int store_step_done(struct sqlite_store *s, enum store_stmt which)
{
    sqlite3_stmt *stmt = s->stmts[which];
    int step = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (step != SQLITE_DONE) {
        return store_fail(s->db, store_stmt_sql[which]);
    }
    return 0;
}

static void store_bind_text_or_null(sqlite3_stmt *stmt, int column, const char *text)
{
    if (text) {
        sqlite3_bind_text(stmt, column, text, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(stmt, column);
    }
}

static int store_write_catalog(struct sqlite_store *s, const struct store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->store_count; i++) {
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_INSERT_STORE];
        sqlite3_bind_text(stmt, 1, b->stores[i].store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, b->stores[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, b->stores[i].latency_ms);
        sqlite3_bind_int64(stmt, 4, b->stores[i].created_at_ms);
        rc = store_step_done(s, STORE_STMT_INSERT_STORE);
    }
    for (size_t i = 0; rc == 0 && i < b->product_count; i++) {
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_INSERT_PRODUCT];
        sqlite3_bind_text(stmt, 1, b->products[i].sku, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, b->products[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, b->products[i].created_at_ms);
        rc = store_step_done(s, STORE_STMT_INSERT_PRODUCT);
    }
    for (size_t i = 0; rc == 0 && i < b->item_count; i++) {
        const struct row_item *row = &b->items[i];
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_UPSERT_ITEM];
        SVC_ASSERT(row->reserved >= 0 && row->reserved <= row->on_hand);
        sqlite3_bind_text(stmt, 1, row->store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, row->sku, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, row->on_hand);
        sqlite3_bind_int64(stmt, 4, row->reserved);
        sqlite3_bind_int64(stmt, 5, row->version);
        sqlite3_bind_int64(stmt, 6, row->sold);
        sqlite3_bind_int64(stmt, 7, row->updated_at_ms);
        rc = store_step_done(s, STORE_STMT_UPSERT_ITEM);
        if (rc == 0 && sqlite3_changes(s->db) != 1) {
            log_error("sqlite: stock item %s/%s version %" PRId64 " not newer than stored",
                      row->store_id, row->sku, row->version);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    return rc;
}

static int store_write_records(struct sqlite_store *s, const struct store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->order_count; i++) {
        const struct row_order *row = &b->orders[i];
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_INSERT_ORDER];
        sqlite3_bind_int64(stmt, 1, row->order_seq);
        sqlite3_bind_text(stmt, 2, row->customer_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 3, row->store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 4, row->status, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 5, row->lines_json, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 6, row->history_json, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 7, row->created_at_ms);
        rc = store_step_done(s, STORE_STMT_INSERT_ORDER);
    }
    for (size_t i = 0; rc == 0 && i < b->idem_count; i++) {
        const struct row_idem *row = &b->idems[i];
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_INSERT_IDEM];
        sqlite3_bind_text(stmt, 1, row->principal, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, row->idem_key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, (sqlite3_int64)row->fingerprint);
        sqlite3_bind_int(stmt, 4, row->status);
        sqlite3_bind_int(stmt, 5, row->problem ? 1 : 0);
        sqlite3_bind_text(stmt, 6, row->body, (int)row->body_length, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 7, row->created_at_ms);
        rc = store_step_done(s, STORE_STMT_INSERT_IDEM);
    }
    for (size_t i = 0; rc == 0 && i < b->event_count; i++) {
        const struct row_event *row = &b->events[i];
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_INSERT_EVENT];
        sqlite3_bind_int64(stmt, 1, row->seq);
        sqlite3_bind_text(stmt, 2, row->event_type, -1, SQLITE_STATIC);
        sqlite3_bind_int(stmt, 3, row->event_version);
        sqlite3_bind_int64(stmt, 4, row->occurred_at_ms);
        store_bind_text_or_null(stmt, 5, row->store_id);
        store_bind_text_or_null(stmt, 6, row->sku);
        sqlite3_bind_text(stmt, 7, row->data_json, -1, SQLITE_STATIC);
        rc = store_step_done(s, STORE_STMT_INSERT_EVENT);
    }
    return rc;
}

static int store_write_reservations(struct sqlite_store *s, const struct store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->reservation_count; i++) {
        const struct row_reservation *row = &b->reservations[i];
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_UPSERT_RESERVATION];
        sqlite3_bind_int64(stmt, 1, row->reservation_seq);
        sqlite3_bind_text(stmt, 2, row->store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 3, row->customer_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 4, row->status, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 5, row->expires_at_ms);
        sqlite3_bind_int64(stmt, 6, row->version);
        sqlite3_bind_int64(stmt, 7, row->created_at_ms);
        sqlite3_bind_int64(stmt, 8, row->updated_at_ms);
        rc = store_step_done(s, STORE_STMT_UPSERT_RESERVATION);
        if (rc == 0 && sqlite3_changes(s->db) != 1) {
            log_error("sqlite: reservation %" PRId64 " version %" PRId64 " not newer",
                      row->reservation_seq, row->version);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    for (size_t i = 0; rc == 0 && i < b->reservation_line_count; i++) {
        const struct row_reservation_line *row = &b->reservation_lines[i];
        sqlite3_stmt *stmt = s->stmts[STORE_STMT_INSERT_RESERVATION_LINE];
        sqlite3_bind_int64(stmt, 1, row->reservation_seq);
        sqlite3_bind_int(stmt, 2, row->line_no);
        sqlite3_bind_text(stmt, 3, row->sku, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 4, row->qty);
        rc = store_step_done(s, STORE_STMT_INSERT_RESERVATION_LINE);
    }
    return rc;
}

static int sqlite_reservation_status(struct store *base, int64_t seq, char status_out[16],
                                     int64_t *version_out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(seq >= 1);
    sqlite3_stmt *stmt = s->stmts[STORE_STMT_FIND_RESERVATION];
    sqlite3_bind_int64(stmt, 1, seq);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        snprintf(status_out, 16, "%s", store_column_text(stmt, 0));
        *version_out = sqlite3_column_int64(stmt, 1);
        rc = 1;
    } else if (step != SQLITE_DONE) {
        rc = store_fail(s->db, "find reservation");
    }
    sqlite3_reset(stmt);
    SVC_ASSERT(rc != 1 || *version_out >= 1);
    return rc;
}

static int sqlite_commit_batch(struct store *base, const struct store_batch *batch)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(batch != NULL);
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* no transaction left open by a prior call */
    int rc = store_step_done(s, STORE_STMT_BEGIN);
    if (rc != 0) {
        return rc;
    }
    rc = store_write_catalog(s, batch);
    if (rc == 0) {
        rc = store_write_records(s, batch);
    }
    if (rc == 0) {
        rc = store_write_reservations(s, batch);
    }
    if (rc == 0) {
        rc = store_step_done(s, STORE_STMT_COMMIT);
    }
    if (rc != 0 && !sqlite3_get_autocommit(s->db)) {
        store_step_done(s, STORE_STMT_ROLLBACK);
    }
    SVC_ASSERT(sqlite3_get_autocommit(s->db));
    return rc;
}

static void sqlite_batch_done(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* between transactions */
    if (atomic_load_explicit(&s->checkpointer.wal_frames, memory_order_relaxed) <
        STORE_WAL_RESET_FRAMES) {
        return;
    }
    int log_frames = 0;
    int done_frames = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_frames,
                                       &done_frames);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        log_warn("sqlite: writer checkpoint: %s", sqlite3_errmsg(s->db));
    }
    /* Until the next commit reports the restarted WAL, do not try again. */
    atomic_store_explicit(&s->checkpointer.wal_frames, 0, memory_order_relaxed);
}

static int sqlite_idem_prune(struct store *base, int64_t before_ms, int max_rows)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(max_rows > 0);
    sqlite3_stmt *stmt = s->stmts[STORE_STMT_PRUNE_IDEM];
    sqlite3_bind_int64(stmt, 1, before_ms);
    sqlite3_bind_int(stmt, 2, max_rows);
    int rc = store_step_done(s, STORE_STMT_PRUNE_IDEM);
    return rc == 0 ? sqlite3_changes(s->db) : rc;
}

static int store_reader_prepare(struct sqlite_reader *r)
{
    static const char *const sql[] = {STORE_READER_EVENTS_SQL, STORE_READER_SEQ_MAX_SQL,
                                      STORE_READER_IDEM_SQL};
    sqlite3_stmt **stmts[] = {&r->events_get, &r->seq_max, &r->idem_get};
    SVC_ASSERT(r->db != NULL);
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
        SVC_ASSERT(*stmts[i] == NULL);
        if (sqlite3_prepare_v3(r->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, stmts[i], NULL) !=
            SQLITE_OK) {
            return store_fail(r->db, sql[i]);
        }
    }
    return 0;
}

int store_sqlite_reader_open(struct store_reader **out, const char *uri)
{
    struct sqlite_reader *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    r->base.ops = &sqlite_ops;
    int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
    int rc = 0;
    if (sqlite3_open_v2(uri, &r->db, flags, NULL) != SQLITE_OK) {
        rc = store_fail(r->db, uri);
    } else {
        sqlite3_busy_timeout(r->db, 1000);
        if (sqlite3_prepare_v3(r->db,
                               "SELECT customer_id, store_id, status, lines, history,"
                               " created_at_ms FROM orders WHERE order_seq = ?1",
                               -1, SQLITE_PREPARE_PERSISTENT, &r->order_get, NULL) != SQLITE_OK) {
            rc = store_fail(r->db, "prepare order lookup");
        }
    }
    if (rc == 0) {
        rc = store_reader_prepare(r);
    }
    if (rc != 0) {
        sqlite_reader_close(&r->base);
        return rc;
    }
    *out = &r->base;
    return 0;
}

static void sqlite_reader_close(struct store_reader *base)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    if (r == NULL) {
        return;
    }
    sqlite3_finalize(r->order_get);
    sqlite3_finalize(r->events_get);
    sqlite3_finalize(r->seq_max);
    sqlite3_finalize(r->idem_get);
    sqlite3_close(r->db);
    free(r->idem_body);
    free(r);
}

static int sqlite_reader_items(struct store_reader *base, void *context,
                               int (*each_item)(void *context, const char *store_id,
                                                const char *sku, int64_t on_hand, int64_t reserved))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(each_item != NULL);
    sqlite3_stmt *stmt = NULL;
    const char *sql = "SELECT store_id, sku, on_hand, reserved FROM stock_items";
    if (sqlite3_prepare_v2(r->db, sql, -1, &stmt, NULL) != SQLITE_OK) {
        return store_fail(r->db, sql);
    }
    int rc = 0;
    int step = SQLITE_ROW;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        rc = each_item(context, store_column_text(stmt, 0), store_column_text(stmt, 1),
                       sqlite3_column_int64(stmt, 2), sqlite3_column_int64(stmt, 3));
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_fail(r->db, sql);
    }
    sqlite3_finalize(stmt);
    return rc;
}

static int sqlite_reader_order_json(struct store_reader *base, int64_t order_seq, char *out,
                                    size_t size, size_t *length_out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(order_seq >= 1);
    SVC_ASSERT(size > 0);
    sqlite3_stmt *stmt = r->order_get;
    sqlite3_bind_int64(stmt, 1, order_seq);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        const char *columns[5];
        for (int i = 0; i < 5; i++) {
            columns[i] = store_column_text(stmt, i);
        }
        rc = store_order_json(order_seq, columns, sqlite3_column_int64(stmt, 5), out, size,
                              length_out);
    } else if (step != SQLITE_DONE) {
        rc = store_fail(r->db, "order lookup");
    }
    sqlite3_reset(stmt);
    return rc;
}

static int sqlite_reader_events(struct store_reader *base, int64_t since_seq, const char *store_id,
                                const char *sku, int limit, void *context,
                                int (*each_event)(void *context, const struct row_event *row))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(since_seq >= 0);
    SVC_ASSERT(limit >= 1);
    sqlite3_stmt *stmt = r->events_get;
    sqlite3_bind_int64(stmt, 1, since_seq);
    store_bind_text_or_null(stmt, 2, store_id);
    store_bind_text_or_null(stmt, 3, sku);
    sqlite3_bind_int(stmt, 4, limit);
    int rc = 0;
    int step = SQLITE_ROW;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct row_event row;
        memset(&row, 0, sizeof row);
        row.seq = sqlite3_column_int64(stmt, 0);
        row.event_type = store_column_text(stmt, 1);
        row.event_version = sqlite3_column_int(stmt, 2);
        row.occurred_at_ms = sqlite3_column_int64(stmt, 3);
        row.store_id = (const char *)sqlite3_column_text(stmt, 4); /* NULL stays NULL */
        row.sku = (const char *)sqlite3_column_text(stmt, 5);
        row.data_json = store_column_text(stmt, 6);
        SVC_ASSERT(row.seq > since_seq);
        rc = each_event(context, &row);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_fail(r->db, "read events");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

static int sqlite_reader_event_seq_max(struct store_reader *base, int64_t *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    sqlite3_stmt *stmt = r->seq_max;
    int rc = 0;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
        *out = sqlite3_column_int64(stmt, 0);
        SVC_ASSERT(*out >= 0);
    } else {
        rc = store_fail(r->db, "read the event seq");
    }
    sqlite3_reset(stmt);
    return rc;
}

static int sqlite_reader_idem(struct store_reader *base, const char *principal, const char *key,
                              struct store_idem_view *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(principal != NULL && key != NULL);
    sqlite3_stmt *stmt = r->idem_get;
    sqlite3_bind_text(stmt, 1, principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 2, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        size_t length = (size_t)sqlite3_column_bytes(stmt, 2);
        if (length + 1 > r->idem_body_size) {
            char *grown = realloc(r->idem_body, length + 1); /* grows to the largest body once */
            if (grown == NULL) {
                sqlite3_reset(stmt);
                return SVC_ESTORAGE_UNAVAILABLE;
            }
            r->idem_body = grown;
            r->idem_body_size = length + 1;
        }
        memcpy(r->idem_body, store_column_text(stmt, 2), length);
        r->idem_body[length] = '\0';
        out->status = sqlite3_column_int(stmt, 0);
        out->problem = sqlite3_column_int(stmt, 1) != 0;
        out->body = r->idem_body;
        out->body_length = length;
        out->created_at_ms = sqlite3_column_int64(stmt, 3);
        rc = 1;
    } else if (step != SQLITE_DONE) {
        rc = store_fail(r->db, "find idempotency record");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    SVC_ASSERT(rc != 1 || out->status >= 100);
    return rc;
}

static const struct store_ops sqlite_ops = {
    .name = "sqlite",
    .close = sqlite_close,
    .load = sqlite_load,
    .prepare_batch = NULL, /* one process owns the file: memory is always fresh */
    .idem_find = sqlite_idem_find,
    .reservation_status = sqlite_reservation_status,
    .commit_batch = sqlite_commit_batch,
    .batch_done = sqlite_batch_done,
    .idem_prune = sqlite_idem_prune,
    .reservations_due = NULL, /* every reservation is in this process's memory */
    .reader_close = sqlite_reader_close,
    .reader_order_json = sqlite_reader_order_json,
    .reader_events = sqlite_reader_events,
    .reader_items = sqlite_reader_items,
    .reader_event_seq_max = sqlite_reader_event_seq_max,
    .reader_idem = sqlite_reader_idem,
    .reader_wait = NULL, /* no other writer to follow */
};
