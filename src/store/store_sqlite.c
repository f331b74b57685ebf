/*
 * store_sqlite.c - the embedded SQLite backend of store.h: the writer's handle.
 *
 * One read-write connection owned by the writer thread: WAL journal, synchronous=FULL (the
 * WAL is fsynced at every commit, so a committed batch survives kill -9 and power loss), every
 * statement prepared once at open. One process owns the file, so the writer's memory is the
 * truth between batches: a prefetch reads only what memory does not hold (the idempotency
 * records of the batch's keys, reservations that already ended), and load streams the rest
 * once at startup. No SQL is ever built from user input.
 *
 * Checkpoints (copying the WAL back into the database file) run on a checkpointer thread with
 * its own connection, never inside a batch commit: SQLite's automatic checkpoint would stall
 * the writer for tens of milliseconds every thousand pages, and every request of that batch
 * would wait with it. Errors are logged here with SQLite's message and returned as
 * SVC_ESTORAGE_UNAVAILABLE (STYLE 9).
 *
 * This file is not the read-only handles (store_sqlite_reader.c) and not the schema
 * (schema.c), which it applies. Read store_sqlite_internal.h next.
 */
#include "store/store_sqlite.h"

#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/svc_thread.h"
#include "store/schema.h"
#include "store/store.h"
#include "store/store_sqlite_internal.h"

/* The statement registry: every SQL the writer runs, prepared at open (STYLE 24). The
 * idempotency prefetch is apart (sqlite_idem_tier_pairs): its text depends on its size. */
#define STORE_SQLITE_STMT_MAP(X)                                                               \
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
                    " history, created_at_ms, reservation_seq, expires_at_ms, updated_at_ms)"  \
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULLIF(?8, 0), NULLIF(?9, 0), ?7)")  \
    X(STEP_ORDER, "UPDATE orders SET status = ?2, updated_at_ms = ?3,"                         \
                  " history = substr(history, 1, length(history) - 1) || ',' || ?4 || ']'"     \
                  " WHERE order_seq = ?1")                                                     \
    X(UPSERT_OFFSET, "INSERT INTO worker_offsets (stage, event_seq, updated_at_ms)"            \
                     " VALUES (?1, ?2, ?3) ON CONFLICT (stage) DO UPDATE SET"                  \
                     " event_seq = excluded.event_seq, updated_at_ms = excluded.updated_at_ms" \
                     " WHERE worker_offsets.event_seq < excluded.event_seq")                   \
    X(UPSERT_DEAD_LETTER,                                                                      \
      "INSERT INTO dead_letters (stage, order_seq, reservation_seq, error, attempts,"          \
      " first_failed_at_ms, last_failed_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)"            \
      " ON CONFLICT (stage, order_seq) DO UPDATE SET error = excluded.error,"                  \
      " attempts = excluded.attempts, last_failed_at_ms = excluded.last_failed_at_ms")         \
    X(DELETE_DEAD_LETTER, "DELETE FROM dead_letters WHERE stage = ?1 AND order_seq = ?2")      \
    X(UPSERT_STREAM_DEAD_LETTER,                                                               \
      "INSERT INTO stream_dead_letters (stage, stream_offset, error, attempts,"                \
      " first_failed_at_ms, last_failed_at_ms, message_id, message_type, principal, body)"     \
      " VALUES (?1, ?2, ?3, 1, ?4, ?4, ?5, ?6, ?7, ?8)"                                        \
      " ON CONFLICT (stage, stream_offset) DO UPDATE SET error = excluded.error,"              \
      " attempts = stream_dead_letters.attempts + 1,"                                          \
      " last_failed_at_ms = excluded.last_failed_at_ms")                                       \
    X(INSERT_IDEM, "INSERT INTO idempotency (principal, idem_key, fingerprint, status,"        \
                   " problem, body, created_at_ms, location)"                                  \
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")                                 \
    X(INSERT_EVENT, "INSERT INTO events (seq, event_type, event_version, occurred_at_ms,"      \
                    " store_id, sku, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")               \
    X(UPSERT_RESERVATION, "INSERT INTO reservations (reservation_seq, store_id, customer_id,"  \
                          " status, expires_at_ms, version, created_at_ms, updated_at_ms,"     \
                          " order_seq, order_status, pay_attempts)"                            \
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"             \
                          " ON CONFLICT (reservation_seq) DO UPDATE SET"                       \
                          " status = excluded.status, version = excluded.version,"             \
                          " updated_at_ms = excluded.updated_at_ms,"                           \
                          " expires_at_ms = excluded.expires_at_ms,"                           \
                          " order_status = excluded.order_status,"                             \
                          " pay_attempts = excluded.pay_attempts"                              \
                          " WHERE reservations.version < excluded.version")                    \
    X(INSERT_RESERVATION_LINE, "INSERT INTO reservation_lines (reservation_seq, line_no,"      \
                               " sku, qty) VALUES (?1, ?2, ?3, ?4)")                           \
    X(FIND_RESERVATION, "SELECT status, version FROM reservations"                             \
                        " WHERE reservation_seq = ?1")                                         \
    X(SWEEP_IDEM_BOUND, "SELECT principal, idem_key FROM idempotency"                          \
                        " WHERE (principal, idem_key) > (?1, ?2)"                              \
                        " ORDER BY principal, idem_key LIMIT 1 OFFSET ?3")                     \
    X(SWEEP_IDEM_RANGE, "DELETE FROM idempotency WHERE (principal, idem_key) > (?1, ?2)"       \
                        " AND (principal, idem_key) <= (?3, ?4) AND created_at_ms < ?5")       \
    X(SWEEP_IDEM_TAIL, "DELETE FROM idempotency WHERE (principal, idem_key) > (?1, ?2)"        \
                       " AND created_at_ms < ?3")                                              \
    X(SNAPSHOT_INSERT, "INSERT INTO snapshots (seq, format, created_at_ms, body)"              \
                       " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (seq) DO UPDATE SET"              \
                       " format = excluded.format, created_at_ms = excluded.created_at_ms,"    \
                       " body = excluded.body")                                                \
    X(SNAPSHOT_PRUNE, "DELETE FROM snapshots WHERE seq < ?1")                                  \
    X(SNAPSHOT_READ, "SELECT seq, format, created_at_ms, body FROM snapshots WHERE seq < ?1"   \
                     " ORDER BY seq DESC LIMIT 1")

enum sqlite_stmt {
#define STORE_SQLITE_STMT_ENUM_(name, sql) STORE_SQLITE_STMT_##name,
    STORE_SQLITE_STMT_MAP(STORE_SQLITE_STMT_ENUM_)
#undef STORE_SQLITE_STMT_ENUM_
        STORE_SQLITE_STMT_COUNT
};

static const char *const sqlite_stmt_sql[STORE_SQLITE_STMT_COUNT] = {
#define STORE_SQLITE_STMT_SQL_(name, sql) sql,
    STORE_SQLITE_STMT_MAP(STORE_SQLITE_STMT_SQL_)
#undef STORE_SQLITE_STMT_SQL_
};

/* The idempotency prefetch: one statement per batch whatever its number of keys, prepared at
 * open in these sizes (pairs of parameters). A batch's keys go to the smallest that holds
 * them and the unused pairs stay NULL, which equals nothing. Sizes in powers of two because
 * SQLite builds the whole VALUES list into an ephemeral index on every run: a batch pays for
 * at most twice its keys (with three sizes, 8, 64 and 1024, a batch of 65 keys paid for 1024
 * and the prefetch cost more instructions per purchase than the point lookups it replaced).
 * The largest is a full batch, so one statement always suffices. */
#define STORE_SQLITE_IDEM_TIERS 8
static const size_t sqlite_idem_tier_pairs[STORE_SQLITE_IDEM_TIERS] = {8,   16,  32,  64,
                                                                       128, 256, 512, 1024};
_Static_assert(BATCH_COMMANDS_MAX == 1024, "the largest tier is a full batch");
/* SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32 is 32766 (Debian's build: the same). */
_Static_assert(2 * BATCH_COMMANDS_MAX <= 32766, "a full batch's keys are parameters");
/* Bytes of the largest tier's text: the fixed part and "(?NNNN,?NNNN)," per pair. */
#define STORE_SQLITE_IDEM_SQL_BYTES_MAX (256 + 16 * BATCH_COMMANDS_MAX)

/* Checkpoint once the WAL holds this many new pages (4 KiB each), pages no checkpoint copied
 * yet (the poll takes a quarter of it). Small and frequent: every checkpoint ends with an
 * fsync of the database file, and a large one (4096 pages) delayed the writer's concurrent
 * WAL fsync by up to ~45 ms; at 512 pages the open-loop p99 at 20k purchases/s fell from
 * 8.2 ms to 3.1 ms in the same run (bench notes in the issue). New pages, not the WAL's
 * size: once the WAL had passed 512 pages every commit woke the checkpointer (~230 small
 * checkpoints a second at 66k purchases/s, each with its two fsyncs and one more copy of the
 * pages every batch rewrites), and an idle WAL of 128 pages or more was checkpointed at every
 * poll. Counting new pages, 512 of them made checkpoints of ~450 pages every ~20 ms: the
 * checkpointer's CPU per purchase halved, but the open-loop p99 at 42k/s rose by ~0.6 ms
 * (paired rounds); 256 took 1.3 to 0.9 us of CPU per purchase with the p99 no worse. */
#define STORE_SQLITE_CHECKPOINT_FRAMES 256
/* Past this many WAL pages (32 MiB) the writer finishes the checkpoint itself between two
 * batches, so that its next transaction restarts the WAL from the beginning. Without it the
 * background checkpoint never quite catches up under steady load, the WAL file grows without
 * bound (637 MB after 15 s at 5k purchases/s), and every commit that grows it waits for the
 * file system journal, which the checkpointer's fsync of the database holds: commits of
 * 15-80 ms. With it the WAL is rewritten in place and the open-loop p99 at 35k purchases/s
 * went from 6-15 ms to 3.3 ms in paired runs; the writer's share costs ~0.5 ms a second. */
#define STORE_SQLITE_WAL_RESET_FRAMES 8192
_Static_assert(STORE_SQLITE_WAL_RESET_FRAMES > 4 * STORE_SQLITE_CHECKPOINT_FRAMES,
               "the background checkpointer does the bulk of the copying");

/* How often the checkpointer looks at the WAL size when nothing wakes it. */
#define STORE_SQLITE_CHECKPOINT_POLL_MS 20
/* How long the checkpointer's connection waits for a lock: a checkpoint that finds the writer
 * busy is simply tried again at the next poll. */
#define STORE_SQLITE_CHECKPOINTER_BUSY_MS 1000

/* The writer's busy waits: SQLite's own busy_timeout sleeps 1, 2, 5, 10, 20... ms between
 * tries, so one brief lock held by the checkpointer could cost a whole batch tens of ms. This
 * handler retries every STORE_SQLITE_BUSY_SLEEP_US, up to STORE_SQLITE_BUSY_WAIT_US in all. */
#define STORE_SQLITE_BUSY_SLEEP_US 100
#define STORE_SQLITE_BUSY_WAIT_US (5 * 1000 * 1000)
_Static_assert(STORE_SQLITE_BUSY_WAIT_US / STORE_SQLITE_BUSY_SLEEP_US < 1000000,
               "tries fit an int");

struct sqlite_checkpointer {
    pthread_t thread;
    pthread_mutex_t mutex; /* guards stopping and the wake-up, not the request path */
    pthread_cond_t wake;
    bool stopping;
    bool started;
    sqlite3 *db;               /* owned; the checkpointer thread's own connection */
    _Atomic int wal_frames;    /* WAL size after the last commit, from the wal hook */
    _Atomic int copied_frames; /* of the WAL's frames, those the last checkpoint copied */
    int hooked_frames;         /* the writer's thread: wal_frames as its last commit left it */
    _Atomic uint64_t pages;    /* frames the commits appended (store_wal_counts) */
    _Atomic uint64_t checkpoints;
};

struct sqlite_store {
    struct store base; /* first: the backend's operations */
    sqlite3 *db;       /* owned; used by the writer thread only */
    struct sqlite_checkpointer checkpointer;
    sqlite3_stmt *stmts[STORE_SQLITE_STMT_COUNT];      /* owned, prepared at open */
    sqlite3_stmt *idem_tiers[STORE_SQLITE_IDEM_TIERS]; /* owned, prepared at open */
    _Atomic uint64_t busy_waits; /* busy-handler calls, for /metrics (any thread reads) */
};

static void sqlite_close(struct store *base);
static const struct store_ops sqlite_ops;

/* ---- helpers shared with the reader (store_sqlite_internal.h) ------------------------------ */

/* See store_sqlite_internal.h; called on every failed SQLite call of the backend. */
int store_sqlite_fail(sqlite3 *db, const char *what)
{
    SVC_ASSERT(what != NULL);
    log_error("sqlite: %s: %s (%d)", what, db != NULL ? sqlite3_errmsg(db) : "out of memory",
              db != NULL ? sqlite3_extended_errcode(db) : SQLITE_NOMEM);
    return SVC_ESTORAGE_UNAVAILABLE;
}

/* See store_sqlite_internal.h; called for every NOT NULL text column the backend reads. */
const char *store_sqlite_column_text(sqlite3_stmt *stmt, int column)
{
    SVC_ASSERT(stmt != NULL && column >= 0);
    const unsigned char *text = sqlite3_column_text(stmt, column);
    return text != NULL ? (const char *)text : "";
}

/* See store_sqlite_internal.h; called for text parameters that may be NULL. */
void store_sqlite_bind_text(sqlite3_stmt *stmt, int index, const char *text)
{
    SVC_ASSERT(stmt != NULL && index >= 1);
    if (text != NULL) {
        sqlite3_bind_text(stmt, index, text, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(stmt, index);
    }
}

/* ---- open: configure, migrate, prepare ----------------------------------------------------- */

static int sqlite_exec(sqlite3 *db, const char *sql)
{
    SVC_ASSERT(db != NULL && sql != NULL);
    char *message = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &message) != SQLITE_OK) {
        log_error("sqlite: %s: %s", sql, message ? message : "?");
        sqlite3_free(message);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 0;
}

static int sqlite_schema_version(sqlite3 *db, int *version_out)
{
    SVC_ASSERT(db != NULL);
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

/* After a migration edited sqlite_schema (writable_schema on): the schema cookie goes up by
 * one so that every connection reads the new text, writing is switched off and this
 * connection reloads its schema (SQLite's procedure for changing a CHECK in place). */
static int sqlite_schema_rewritten(sqlite3 *db)
{
    SVC_ASSERT(!sqlite3_get_autocommit(db)); /* inside the migration's transaction */
    sqlite3_stmt *stmt = NULL;
    int cookie = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA schema_version", -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
        cookie = sqlite3_column_int(stmt, 0);
    }
    sqlite3_finalize(stmt);
    if (cookie < 0) {
        log_error("sqlite: cannot read the schema cookie: %s", sqlite3_errmsg(db));
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA schema_version = %d", cookie + 1);
    int rc = sqlite_exec(db, sql);
    return rc == 0 ? sqlite_exec(db, "PRAGMA writable_schema = RESET") : rc;
}

/* Applies one migration and records its version, in one transaction. */
static int sqlite_apply_migration(sqlite3 *db, const struct schema_migration *migration)
{
    SVC_ASSERT(migration->version >= 1);
    SVC_ASSERT(sqlite3_get_autocommit(db));
    int rc = sqlite_exec(db, "BEGIN IMMEDIATE");
    char sql_text[SCHEMA_STATEMENT_BYTES_MAX];
    for (int i = 0; rc == 0 && migration->statements[i] != NULL; i++) {
        rc = schema_render(SCHEMA_SQLITE, migration->statements[i], sql_text, sizeof sql_text);
        SVC_ASSERT(rc == 0); /* the statements are constants that fit */
        rc = sql_text[0] != '\0' ? sqlite_exec(db, sql_text) : 0;
    }
    if (rc == 0 && migration->rewrites_schema) {
        rc = sqlite_schema_rewritten(db);
    }
    char sql[128];
    snprintf(sql, sizeof sql,
             "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '%d')",
             migration->version);
    if (rc == 0) {
        rc = sqlite_exec(db, sql);
    }
    if (rc == 0) {
        rc = sqlite_exec(db, "COMMIT");
    }
    if (rc != 0 && !sqlite3_get_autocommit(db)) {
        sqlite_exec(db, "ROLLBACK");
    }
    SVC_ASSERT(sqlite3_get_autocommit(db));
    return rc;
}

static int sqlite_migrate(sqlite3 *db)
{
    int version = 0;
    sqlite_schema_version(db, &version);
    int latest = schema_migrations[schema_migration_count - 1].version;
    if (version > latest) { /* as before issue 9, and as store_pg.c: run on, but say so */
        log_warn("sqlite: the schema is at version %d, newer than this build's %d", version,
                 latest);
        return 0;
    }
    for (int m = 0; m < schema_migration_count; m++) {
        const struct schema_migration *migration = &schema_migrations[m];
        if (migration->version <= version) {
            continue;
        }
        SVC_ASSERT(migration->version == version + 1);
        int rc = sqlite_apply_migration(db, migration);
        if (rc != 0) {
            return rc;
        }
        version = migration->version;
        log_info("sqlite: schema migrated to version %d", version);
    }
    SVC_ASSERT(version == latest);
    return 0;
}

static int sqlite_busy_handler(void *context, int tries)
{
    struct sqlite_store *s = context;
    SVC_ASSERT(s != NULL && tries >= 0);
    atomic_fetch_add_explicit(&s->busy_waits, 1, memory_order_relaxed);
    if (tries >= STORE_SQLITE_BUSY_WAIT_US / STORE_SQLITE_BUSY_SLEEP_US) {
        return 0; /* give up: the caller gets SQLITE_BUSY and answers 503 */
    }
    usleep(STORE_SQLITE_BUSY_SLEEP_US);
    return 1;
}

static int sqlite_configure(struct sqlite_store *s)
{
    static const char *const pragmas[] = {
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA cache_size = -65536", /* 64 MiB: the hot indexes stay in memory */
        "PRAGMA temp_store = MEMORY",
        "PRAGMA journal_size_limit = 67108864", /* a reset WAL shrinks back to 64 MiB */
    };
    SVC_ASSERT(s->db != NULL);
    sqlite3_busy_handler(s->db, sqlite_busy_handler, s);
    for (size_t i = 0; i < sizeof pragmas / sizeof pragmas[0]; i++) {
        int rc = sqlite_exec(s->db, pragmas[i]);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* The WAL's frames that no checkpoint copied yet: all of them after a restart of the WAL (it
 * is then shorter than what the last checkpoint copied). */
static int sqlite_frames_to_copy(struct sqlite_checkpointer *c)
{
    int frames = atomic_load_explicit(&c->wal_frames, memory_order_relaxed);
    int copied = atomic_load_explicit(&c->copied_frames, memory_order_relaxed);
    return frames >= copied ? frames - copied : frames;
}

static int sqlite_wal_hook(void *context, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    struct sqlite_checkpointer *c = context;
    SVC_ASSERT(c != NULL && frames >= 0);
    atomic_store_explicit(&c->wal_frames, frames, memory_order_relaxed);
    /* A WAL shorter than after the last commit was restarted: all its frames are new. */
    int appended = frames >= c->hooked_frames ? frames - c->hooked_frames : frames;
    c->hooked_frames = frames;
    atomic_fetch_add_explicit(&c->pages, (uint64_t)appended, memory_order_relaxed);
    if (sqlite_frames_to_copy(c) >= STORE_SQLITE_CHECKPOINT_FRAMES) {
        pthread_cond_signal(&c->wake); /* no mutex needed for a hint; the poll covers a miss */
    }
    return SQLITE_OK;
}

static void *sqlite_checkpointer_main(void *arg)
{
    struct sqlite_checkpointer *c = arg;
    SVC_ASSERT(c->db != NULL);
    svc_thread_name("checkpointer", -1);
    pthread_mutex_lock(&c->mutex);
    while (!c->stopping) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += STORE_SQLITE_CHECKPOINT_POLL_MS * 1000000L;
        deadline.tv_sec += deadline.tv_nsec / 1000000000L;
        deadline.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&c->wake, &c->mutex, &deadline);
        if (c->stopping || sqlite_frames_to_copy(c) < STORE_SQLITE_CHECKPOINT_FRAMES / 4) {
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
        atomic_store_explicit(&c->copied_frames, done_frames > 0 ? done_frames : 0,
                              memory_order_relaxed);
        atomic_fetch_add(&c->checkpoints, 1);
        pthread_mutex_lock(&c->mutex);
    }
    pthread_mutex_unlock(&c->mutex);
    SVC_ASSERT(c->stopping);
    return NULL;
}

static int sqlite_checkpointer_start(struct sqlite_store *s, const char *path)
{
    struct sqlite_checkpointer *c = &s->checkpointer;
    SVC_ASSERT(!c->started && c->db == NULL);
    pthread_mutex_init(&c->mutex, NULL);
    pthread_cond_init(&c->wake, NULL);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK) {
        return store_sqlite_fail(c->db, "open the checkpointer connection");
    }
    sqlite3_busy_timeout(c->db, STORE_SQLITE_CHECKPOINTER_BUSY_MS);
    /* A connection learns the file is in WAL mode only once it reads it; until then a
     * checkpoint on it is a silent no-op. */
    if (sqlite_exec(c->db, "SELECT count(*) FROM sqlite_master") != 0 ||
        sqlite_exec(s->db, "PRAGMA wal_autocheckpoint = 0") != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    sqlite3_wal_hook(s->db, sqlite_wal_hook, c);
    if (pthread_create(&c->thread, NULL, sqlite_checkpointer_main, c) != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    c->started = true;
    return 0;
}

static void sqlite_checkpointer_stop(struct sqlite_checkpointer *c)
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
    SVC_ASSERT(!c->started);
}

/* Writes the idempotency prefetch of `pairs` key pairs into out (see
 * store_sqlite_internal.h). Spelled IN (SELECT column1, column2 FROM (VALUES ...)) and not
 * IN (VALUES ...): on SQLite 3.40 EXPLAIN QUERY PLAN shows the plain VALUES form as
 * "SCAN idempotency" with a LIST SUBQUERY (every stored record compared: 63 ms for 1024 keys
 * over 200k records), this one as "SEARCH idempotency USING PRIMARY KEY (principal=? AND
 * idem_key=?)". Over 200k records, 1024 random keys (half present) took ~4 ms in one prefetch
 * against ~11 ms as 1024 one-key prefetches; 1024 sequential keys 1.7 ms, the same as 1024
 * point lookups inside one read transaction. test_store_sqlite.c checks the plan. */
int store_sqlite_idem_prefetch_sql(size_t pairs, char *out, size_t size)
{
    SVC_ASSERT(pairs >= 1 && pairs <= BATCH_COMMANDS_MAX);
    SVC_ASSERT(out != NULL && size > 0);
    int n = snprintf(out, size, "%s",
                     "SELECT principal, idem_key, fingerprint, status, problem, body, location"
                     " FROM idempotency WHERE (principal, idem_key) IN"
                     " (SELECT column1, column2 FROM (VALUES ");
    size_t length = n > 0 ? (size_t)n : size;
    for (size_t i = 0; i < pairs && length < size; i++) {
        n = snprintf(out + length, size - length, "%s(?%zu, ?%zu)", i == 0 ? "" : ", ", 2 * i + 1,
                     2 * i + 2);
        length += n > 0 ? (size_t)n : size;
    }
    n = length < size ? snprintf(out + length, size - length, "))") : 0;
    length += n > 0 ? (size_t)n : size;
    return length < size ? 0 : SVC_ECAPACITY;
}

static int sqlite_prepare(struct sqlite_store *s, const char *sql, sqlite3_stmt **out)
{
    SVC_ASSERT(*out == NULL);
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK) {
        return store_sqlite_fail(s->db, sql);
    }
    SVC_ASSERT(*out != NULL);
    return 0;
}

/* Prepares the registry and the idempotency prefetch in every size (STYLE 24). */
static int sqlite_prepare_all(struct sqlite_store *s)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < STORE_SQLITE_STMT_COUNT; i++) {
        rc = sqlite_prepare(s, sqlite_stmt_sql[i], &s->stmts[i]);
    }
    char *sql = rc == 0 ? malloc(STORE_SQLITE_IDEM_SQL_BYTES_MAX) : NULL; /* startup only */
    if (rc == 0 && sql == NULL) {
        rc = store_sqlite_fail(NULL, "the idempotency prefetch's text");
    }
    for (int t = 0; rc == 0 && t < STORE_SQLITE_IDEM_TIERS; t++) {
        SVC_ASSERT(t == 0 || sqlite_idem_tier_pairs[t] > sqlite_idem_tier_pairs[t - 1]);
        rc = store_sqlite_idem_prefetch_sql(sqlite_idem_tier_pairs[t], sql,
                                            STORE_SQLITE_IDEM_SQL_BYTES_MAX);
        SVC_ASSERT(rc == 0); /* the bound covers the largest tier */
        rc = sqlite_prepare(s, sql, &s->idem_tiers[t]);
    }
    free(sql);
    return rc;
}

/* Opens the writer's handle (see store_sqlite.h). */
int store_sqlite_open(struct store **out, const char *path)
{
    SVC_ASSERT(out != NULL);
    SVC_ASSERT(path != NULL);
    struct sqlite_store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->base.ops = &sqlite_ops;
    store_sqlite_pcache_install(); /* before SQLite's first connection in this process */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        int rc = store_sqlite_fail(s->db, path);
        sqlite_close(&s->base);
        return rc;
    }
    int rc = sqlite_configure(s);
    rc = rc == 0 ? sqlite_migrate(s->db) : rc;
    rc = rc == 0 ? sqlite_prepare_all(s) : rc;
    rc = rc == 0 ? sqlite_checkpointer_start(s, path) : rc;
    if (rc != 0) {
        sqlite_close(&s->base);
        return rc;
    }
    SVC_ASSERT(sqlite3_get_autocommit(s->db));
    *out = &s->base;
    return 0;
}

static void sqlite_close(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (s == NULL) {
        return;
    }
    SVC_ASSERT(s->db == NULL || sqlite3_get_autocommit(s->db)); /* no batch left half done */
    sqlite_checkpointer_stop(&s->checkpointer);
    for (int i = 0; i < STORE_SQLITE_STMT_COUNT; i++) {
        sqlite3_finalize(s->stmts[i]);
    }
    for (int t = 0; t < STORE_SQLITE_IDEM_TIERS; t++) {
        sqlite3_finalize(s->idem_tiers[t]);
    }
    sqlite3_close(s->db);
    free(s);
}

/* ---- load --------------------------------------------------------------------------------- */

/* Runs a SELECT and hands every row to each_row; stops at its first non-zero return. */
static int sqlite_each_row(struct sqlite_store *s, const char *sql,
                           int (*each_row)(sqlite3_stmt *, const struct store_sink *),
                           const struct store_sink *sink)
{
    SVC_ASSERT(each_row != NULL && sink != NULL);
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &stmt, NULL) != SQLITE_OK) {
        return store_sqlite_fail(s->db, sql); /* load runs once: prepared here, not at open */
    }
    int rc = 0;
    int step = SQLITE_ROW;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        rc = each_row(stmt, sink);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_sqlite_fail(s->db, sql);
    }
    sqlite3_finalize(stmt);
    SVC_ASSERT(rc <= 0);
    return rc;
}

static int sqlite_load_store_row(sqlite3_stmt *stmt, const struct store_sink *sink)
{
    int64_t latency_ms = sqlite3_column_int64(stmt, 2);
    SVC_ASSERT(latency_ms >= 0); /* CHECK (latency_ms >= 0) */
    return sink->on_store(sink->context, store_sqlite_column_text(stmt, 0),
                          store_sqlite_column_text(stmt, 1), latency_ms);
}

static int sqlite_load_product_row(sqlite3_stmt *stmt, const struct store_sink *sink)
{
    SVC_ASSERT(sqlite3_column_type(stmt, 0) == SQLITE_TEXT);
    return sink->on_product(sink->context, store_sqlite_column_text(stmt, 0),
                            store_sqlite_column_text(stmt, 1));
}

static int sqlite_load_item_row(sqlite3_stmt *stmt, const struct store_sink *sink)
{
    int64_t on_hand = sqlite3_column_int64(stmt, 2);
    int64_t reserved = sqlite3_column_int64(stmt, 3);
    SVC_ASSERT(reserved >= 0 && reserved <= on_hand); /* the table's CHECKs */
    return sink->on_item(sink->context, store_sqlite_column_text(stmt, 0),
                         store_sqlite_column_text(stmt, 1), on_hand, reserved,
                         sqlite3_column_int64(stmt, 4), sqlite3_column_int64(stmt, 5),
                         sqlite3_column_int64(stmt, 6));
}

static int sqlite_load_reservation_row(sqlite3_stmt *stmt, const struct store_sink *sink)
{
    int64_t seq = sqlite3_column_int64(stmt, 0);
    SVC_ASSERT(seq >= 1);
    if (sqlite3_column_type(stmt, 6) == SQLITE_NULL) { /* the reservation's own row */
        int rc =
            sink->on_reservation(sink->context, seq, store_sqlite_column_text(stmt, 1),
                                 store_sqlite_column_text(stmt, 2), sqlite3_column_int64(stmt, 3),
                                 sqlite3_column_int64(stmt, 4), sqlite3_column_int64(stmt, 5));
        if (rc == 0 && sqlite3_column_int64(stmt, 9) != 0 && sink->on_reservation_order != NULL) {
            rc = sink->on_reservation_order(sink->context, seq, sqlite3_column_int64(stmt, 9),
                                            store_sqlite_column_text(stmt, 10),
                                            sqlite3_column_int64(stmt, 11));
        }
        return rc;
    }
    return sink->on_reservation_line(sink->context, seq, store_sqlite_column_text(stmt, 7),
                                     sqlite3_column_int64(stmt, 8));
}

static int64_t sqlite_select_int(struct sqlite_store *s, const char *sql)
{
    SVC_ASSERT(sql != NULL);
    sqlite3_stmt *stmt = NULL;
    int64_t value = -1;
    if (sqlite3_prepare_v2(s->db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
        value = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    SVC_ASSERT(value >= -1);
    return value;
}

/* Each ACTIVE reservation, then its lines (line_no NULL marks the reservation's own row, and
 * NULL sorts first). */
#define STORE_SQLITE_LOAD_RESERVATIONS_SQL                                                    \
    "SELECT r.reservation_seq, r.store_id, r.customer_id, r.expires_at_ms, r.version,"        \
    " r.created_at_ms, NULL, NULL, NULL, r.order_seq, r.order_status, r.pay_attempts"         \
    " FROM reservations r WHERE r.status = 'ACTIVE'"                                          \
    " UNION ALL SELECT l.reservation_seq, NULL, NULL, NULL, NULL, NULL, l.line_no, l.sku,"    \
    " l.qty, 0, NULL, 0 FROM reservation_lines l JOIN reservations r USING (reservation_seq)" \
    " WHERE r.status = 'ACTIVE' ORDER BY 1, 7"

static int sqlite_load(struct store *base, const struct store_sink *sink,
                       struct store_sequences *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(sink->on_store && sink->on_product && sink->on_item);
    SVC_ASSERT(sqlite3_get_autocommit(s->db));
    int rc = sqlite_each_row(s, "SELECT store_id, name, latency_ms FROM stores ORDER BY rowid",
                             sqlite_load_store_row, sink);
    if (rc == 0) {
        rc = sqlite_each_row(s, "SELECT sku, name FROM products ORDER BY rowid",
                             sqlite_load_product_row, sink);
    }
    if (rc == 0) {
        rc = sqlite_each_row(s,
                             "SELECT store_id, sku, on_hand, reserved, version, sold,"
                             " updated_at_ms FROM stock_items",
                             sqlite_load_item_row, sink);
    }
    if (rc == 0 && sink->on_reservation != NULL) {
        rc = sqlite_each_row(s, STORE_SQLITE_LOAD_RESERVATIONS_SQL, sqlite_load_reservation_row,
                             sink);
    }
    if (rc != 0) {
        return rc;
    }
    out->reservation_seq_max =
        sqlite_select_int(s, "SELECT COALESCE(MAX(reservation_seq), 0) FROM reservations");
    out->order_seq_max = sqlite_select_int(s, "SELECT COALESCE(MAX(order_seq), 0) FROM orders");
    out->event_seq_max = sqlite_select_int(s, "SELECT COALESCE(MAX(seq), 0) FROM events");
    if (out->order_seq_max < 0 || out->event_seq_max < 0 || out->reservation_seq_max < 0) {
        return store_sqlite_fail(s->db, "load sequences");
    }
    return 0;
}

/* ---- prefetch ----------------------------------------------------------------------------- */

/* The smallest idempotency prefetch that holds count keys. */
static int sqlite_idem_tier(size_t count)
{
    SVC_ASSERT(count >= 1);
    SVC_ASSERT(count <= sqlite_idem_tier_pairs[STORE_SQLITE_IDEM_TIERS - 1]);
    int t = 0;
    while (sqlite_idem_tier_pairs[t] < count) {
        t++;
    }
    return t;
}

/* The record on stmt's current row (the prefetch's columns); strings point into the row. */
static void sqlite_idem_record(sqlite3_stmt *stmt, struct store_idem_record *out)
{
    out->principal = store_sqlite_column_text(stmt, 0);
    out->key = store_sqlite_column_text(stmt, 1);
    out->fingerprint = (uint64_t)sqlite3_column_int64(stmt, 2);
    out->status = sqlite3_column_int(stmt, 3);
    out->problem = sqlite3_column_int(stmt, 4) != 0;
    out->body = store_sqlite_column_text(stmt, 5);
    out->body_length = (size_t)sqlite3_column_bytes(stmt, 5);   /* after the text: its length */
    out->location = (const char *)sqlite3_column_text(stmt, 6); /* NULL stays NULL */
    /* Read back what sqlite_write_records checked before writing it. */
    SVC_ASSERT(out->status >= 100 && out->status <= 599);
    SVC_ASSERT(out->location == NULL || out->location[0] != '\0');
}

/* Reports the stored records of keys (count of them) to sink->on_idem, in one query. */
static int sqlite_prefetch_idems(struct sqlite_store *s, const struct store_idem_key *keys,
                                 size_t count, const struct store_sink *sink)
{
    sqlite3_stmt *stmt = s->idem_tiers[sqlite_idem_tier(count)];
    SVC_ASSERT(sqlite3_stmt_busy(stmt) == 0);
    for (size_t i = 0; i < count; i++) {
        SVC_ASSERT(keys[i].principal != NULL && keys[i].key != NULL);
        sqlite3_bind_text(stmt, (int)(2 * i + 1), keys[i].principal, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, (int)(2 * i + 2), keys[i].key, -1, SQLITE_STATIC);
    }
    int rc = 0;
    int step = SQLITE_ROW;
    size_t found = 0;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct store_idem_record record;
        sqlite_idem_record(stmt, &record);
        found++;
        rc = sink->on_idem(sink->context, &record);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_sqlite_fail(s->db, "prefetch idempotency records");
    }
    sqlite3_reset(stmt);
    for (size_t i = 0; i < 2 * count; i++) {
        /* Every pair NULL again (the next run binds only its own), without clearing all of
         * the tier's parameters as sqlite3_clear_bindings would. */
        sqlite3_bind_null(stmt, (int)(i + 1));
    }
    SVC_ASSERT(found <= count); /* IN reports each stored key once, duplicates or not */
    return rc;
}

/* Reports the final status of each reservation of seqs (count) that memory does not hold. */
static int sqlite_prefetch_reservations(struct sqlite_store *s, const int64_t *seqs, size_t count,
                                        const struct store_sink *sink)
{
    sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_FIND_RESERVATION];
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        SVC_ASSERT(seqs[i] >= 1);
        sqlite3_bind_int64(stmt, 1, seqs[i]);
        int step = sqlite3_step(stmt);
        if (step == SQLITE_DONE) {
            rc = sink->on_reservation_ended(sink->context, seqs[i], NULL, 0);
        } else if (step != SQLITE_ROW) {
            rc = store_sqlite_fail(s->db, "prefetch a reservation");
        } else if (strcmp(store_sqlite_column_text(stmt, 0), "ACTIVE") == 0) {
            /* The writer holds every ACTIVE reservation in memory and asks only for others:
             * memory and the file disagree, and nothing of this batch may proceed. */
            log_error("sqlite: reservation %" PRId64 " is ACTIVE in the database but not in"
                      " the writer's memory",
                      seqs[i]);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        } else {
            int64_t version = sqlite3_column_int64(stmt, 1);
            SVC_ASSERT(version >= 1); /* CHECK (version >= 1) */
            rc = sink->on_reservation_ended(sink->context, seqs[i],
                                            store_sqlite_column_text(stmt, 0), version);
        }
        sqlite3_reset(stmt);
    }
    return rc;
}

/* The prefetch of a backend one process owns: the idempotency records of the batch's keys and
 * the reservations memory does not hold. Items, stores, skus and events_after are memory's
 * business here, and *out is left alone (store.h). */
static int sqlite_prefetch(struct store *base, const struct store_prefetch_keys *keys,
                           const struct store_sink *sink, struct store_sequences *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    (void)out;
    SVC_ASSERT(keys->idem_count <= BATCH_COMMANDS_MAX);
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* between batches */
    int rc = 0;
    if (keys->idem_count > 0) {
        rc = sqlite_prefetch_idems(s, keys->idems, keys->idem_count, sink);
    }
    if (rc == 0 && keys->reservation_count > 0) {
        rc = sqlite_prefetch_reservations(s, keys->reservation_seqs, keys->reservation_count, sink);
    }
    SVC_ASSERT(sqlite3_get_autocommit(s->db));
    return rc;
}

/* ---- commit ------------------------------------------------------------------------------- */

/* Steps one bound insert/update statement to completion and resets it. */
static int sqlite_step_done(struct sqlite_store *s, enum sqlite_stmt which)
{
    SVC_ASSERT(which < STORE_SQLITE_STMT_COUNT);
    sqlite3_stmt *stmt = s->stmts[which];
    int step = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    SVC_ASSERT(step != SQLITE_ROW); /* only statements without rows come here */
    if (step != SQLITE_DONE) {
        return store_sqlite_fail(s->db, sqlite_stmt_sql[which]);
    }
    return 0;
}

static int sqlite_write_catalog(struct sqlite_store *s, const struct store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->store_count; i++) {
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_INSERT_STORE];
        SVC_ASSERT(b->stores[i].latency_ms >= 0);
        sqlite3_bind_text(stmt, 1, b->stores[i].store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, b->stores[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, b->stores[i].latency_ms);
        sqlite3_bind_int64(stmt, 4, b->stores[i].created_at_ms);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_INSERT_STORE);
    }
    for (size_t i = 0; rc == 0 && i < b->product_count; i++) {
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_INSERT_PRODUCT];
        sqlite3_bind_text(stmt, 1, b->products[i].sku, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, b->products[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, b->products[i].created_at_ms);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_INSERT_PRODUCT);
    }
    for (size_t i = 0; rc == 0 && i < b->item_count; i++) {
        const struct row_item *row = &b->items[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_UPSERT_ITEM];
        SVC_ASSERT(row->reserved >= 0 && row->reserved <= row->on_hand);
        sqlite3_bind_text(stmt, 1, row->store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, row->sku, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, row->on_hand);
        sqlite3_bind_int64(stmt, 4, row->reserved);
        sqlite3_bind_int64(stmt, 5, row->version);
        sqlite3_bind_int64(stmt, 6, row->sold);
        sqlite3_bind_int64(stmt, 7, row->updated_at_ms);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_UPSERT_ITEM);
        if (rc == 0 && sqlite3_changes(s->db) != 1) {
            log_error("sqlite: stock item %s/%s version %" PRId64 " not newer than stored",
                      row->store_id, row->sku, row->version);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    return rc;
}

static int sqlite_write_idem(struct sqlite_store *s, const struct row_idem *row)
{
    SVC_ASSERT(row->status >= 100 && row->status <= 599);
    SVC_ASSERT(row->location == NULL ||
               (row->location[0] != '\0' && strlen(row->location) <= REPLY_LOCATION_BYTES_MAX));
    sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_INSERT_IDEM];
    sqlite3_bind_text(stmt, 1, row->principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 2, row->idem_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 3, (sqlite3_int64)row->fingerprint);
    sqlite3_bind_int(stmt, 4, row->status);
    sqlite3_bind_int(stmt, 5, row->problem ? 1 : 0);
    sqlite3_bind_text(stmt, 6, row->body, (int)row->body_length, SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 7, row->created_at_ms);
    store_sqlite_bind_text(stmt, 8, row->location);
    return sqlite_step_done(s, STORE_SQLITE_STMT_INSERT_IDEM);
}

/* One dead letter: an order's written or removed, or a stream message's (order_seq 0) written,
 * whose attempts go up when it was seen before. */
static int sqlite_write_dead_letter(struct sqlite_store *s, const struct row_dead_letter *row)
{
    if (row->order_seq == 0) {
        SVC_ASSERT(row->stream_offset >= 0 && !row->remove);
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_UPSERT_STREAM_DEAD_LETTER];
        sqlite3_clear_bindings(stmt); /* an absent part is NULL, not the last row's */
        sqlite3_bind_text(stmt, 1, row->stage, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 2, row->stream_offset);
        sqlite3_bind_text(stmt, 3, row->error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 4, row->at_ms);
        const char *texts[] = {row->message_id, row->message_type, row->message_principal};
        for (int i = 0; i < 3; i++) { /* bytes: a message is not necessarily UTF-8 */
            if (texts[i] != NULL) {
                sqlite3_bind_blob(stmt, 5 + i, texts[i], (int)strlen(texts[i]), SQLITE_STATIC);
            }
        }
        if (row->message_body != NULL) {
            SVC_ASSERT(row->message_body_length <= DLT_MESSAGE_BODY_BYTES_MAX);
            /* A zero-length blob with a non-NULL pointer is an empty value, not NULL. */
            sqlite3_bind_blob(stmt, 8, row->message_body, (int)row->message_body_length,
                              SQLITE_STATIC);
        }
        return sqlite_step_done(s, STORE_SQLITE_STMT_UPSERT_STREAM_DEAD_LETTER);
    }
    int which =
        row->remove ? STORE_SQLITE_STMT_DELETE_DEAD_LETTER : STORE_SQLITE_STMT_UPSERT_DEAD_LETTER;
    sqlite3_stmt *stmt = s->stmts[which];
    sqlite3_bind_text(stmt, 1, row->stage, -1, SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 2, row->order_seq);
    if (!row->remove) {
        sqlite3_bind_int64(stmt, 3, row->reservation_seq);
        sqlite3_bind_text(stmt, 4, row->error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 5, row->attempts);
        sqlite3_bind_int64(stmt, 6, row->at_ms);
    }
    return sqlite_step_done(s, which);
}

static int sqlite_write_records(struct sqlite_store *s, const struct store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->order_count; i++) {
        const struct row_order *row = &b->orders[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_INSERT_ORDER];
        SVC_ASSERT(row->order_seq >= 1);
        sqlite3_bind_int64(stmt, 1, row->order_seq);
        sqlite3_bind_text(stmt, 2, row->customer_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 3, row->store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 4, row->status, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 5, row->lines_json, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 6, row->history_json, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 7, row->created_at_ms);
        sqlite3_bind_int64(stmt, 8, row->reservation_seq);
        sqlite3_bind_int64(stmt, 9, row->expires_at_ms);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_INSERT_ORDER);
    }
    for (size_t i = 0; rc == 0 && i < b->order_step_count; i++) {
        const struct row_order_step *row = &b->order_steps[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_STEP_ORDER];
        SVC_ASSERT(row->order_seq >= 1 && row->history_entry_json[0] == '{');
        sqlite3_bind_int64(stmt, 1, row->order_seq);
        sqlite3_bind_text(stmt, 2, row->status, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 3, row->updated_at_ms);
        sqlite3_bind_text(stmt, 4, row->history_entry_json, -1, SQLITE_STATIC);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_STEP_ORDER);
        SVC_ASSERT(rc != 0 || sqlite3_changes(s->db) == 1); /* the order was written before */
    }
    for (size_t i = 0; rc == 0 && i < b->offset_count; i++) {
        const struct row_stage_offset *row = &b->offsets[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_UPSERT_OFFSET];
        SVC_ASSERT(row->seq >= 1);
        sqlite3_bind_text(stmt, 1, row->stage, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 2, row->seq);
        sqlite3_bind_int64(stmt, 3, row->updated_at_ms);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_UPSERT_OFFSET);
    }
    for (size_t i = 0; rc == 0 && i < b->dead_letter_count; i++) {
        rc = sqlite_write_dead_letter(s, &b->dead_letters[i]);
    }
    for (size_t i = 0; rc == 0 && i < b->idem_count; i++) {
        rc = sqlite_write_idem(s, &b->idems[i]);
    }
    for (size_t i = 0; rc == 0 && i < b->event_count; i++) {
        const struct row_event *row = &b->events[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_INSERT_EVENT];
        SVC_ASSERT(row->seq >= 1 && (i == 0 || row->seq > b->events[i - 1].seq));
        sqlite3_bind_int64(stmt, 1, row->seq);
        sqlite3_bind_text(stmt, 2, row->event_type, -1, SQLITE_STATIC);
        sqlite3_bind_int(stmt, 3, row->event_version);
        sqlite3_bind_int64(stmt, 4, row->occurred_at_ms);
        store_sqlite_bind_text(stmt, 5, row->store_id);
        store_sqlite_bind_text(stmt, 6, row->sku);
        sqlite3_bind_text(stmt, 7, row->data_json, -1, SQLITE_STATIC);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_INSERT_EVENT);
    }
    return rc;
}

static int sqlite_write_reservations(struct sqlite_store *s, const struct store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->reservation_count; i++) {
        const struct row_reservation *row = &b->reservations[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_UPSERT_RESERVATION];
        SVC_ASSERT(row->reservation_seq >= 1 && row->version >= 1);
        sqlite3_bind_int64(stmt, 1, row->reservation_seq);
        sqlite3_bind_text(stmt, 2, row->store_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 3, row->customer_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 4, row->status, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 5, row->expires_at_ms);
        sqlite3_bind_int64(stmt, 6, row->version);
        sqlite3_bind_int64(stmt, 7, row->created_at_ms);
        sqlite3_bind_int64(stmt, 8, row->updated_at_ms);
        sqlite3_bind_int64(stmt, 9, row->order_seq);
        store_sqlite_bind_text(stmt, 10, row->order_status);
        sqlite3_bind_int64(stmt, 11, row->pay_attempts);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_UPSERT_RESERVATION);
        if (rc == 0 && sqlite3_changes(s->db) != 1) {
            log_error("sqlite: reservation %" PRId64 " version %" PRId64 " not newer",
                      row->reservation_seq, row->version);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    for (size_t i = 0; rc == 0 && i < b->reservation_line_count; i++) {
        const struct row_reservation_line *row = &b->reservation_lines[i];
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_INSERT_RESERVATION_LINE];
        SVC_ASSERT(row->reservation_seq >= 1 && row->qty >= 1);
        sqlite3_bind_int64(stmt, 1, row->reservation_seq);
        sqlite3_bind_int(stmt, 2, row->line_no);
        sqlite3_bind_text(stmt, 3, row->sku, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 4, row->qty);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_INSERT_RESERVATION_LINE);
    }
    return rc;
}

static int sqlite_commit_batch(struct store *base, const struct store_batch *batch)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(batch != NULL);
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* no transaction left open by a prior call */
    int rc = sqlite_step_done(s, STORE_SQLITE_STMT_BEGIN);
    if (rc != 0) {
        return rc;
    }
    rc = sqlite_write_catalog(s, batch);
    if (rc == 0) {
        rc = sqlite_write_records(s, batch);
    }
    if (rc == 0) {
        rc = sqlite_write_reservations(s, batch);
    }
    if (rc == 0) {
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_COMMIT);
    }
    if (rc != 0 && !sqlite3_get_autocommit(s->db)) {
        sqlite_step_done(s, STORE_SQLITE_STMT_ROLLBACK);
    }
    SVC_ASSERT(sqlite3_get_autocommit(s->db));
    return rc;
}

/* ---- housekeeping ------------------------------------------------------------------------- */

static void sqlite_batch_done(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* between transactions */
    if (atomic_load_explicit(&s->checkpointer.wal_frames, memory_order_relaxed) <
        STORE_SQLITE_WAL_RESET_FRAMES) {
        return;
    }
    int log_frames = 0;
    int done_frames = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_frames,
                                       &done_frames);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        log_warn("sqlite: writer checkpoint: %s", sqlite3_errmsg(s->db));
    }
    atomic_fetch_add(&s->checkpointer.checkpoints, 1);
    /* Until the next commit reports the restarted WAL, do not try again. */
    atomic_store_explicit(&s->checkpointer.wal_frames, 0, memory_order_relaxed);
}

static int sqlite_idem_prune(struct store *base, struct store_idem_sweep *sweep, int64_t before_ms,
                             int max_rows, bool *swept)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(max_rows > 0);
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* each statement its own transaction */
    sqlite3_stmt *bound = s->stmts[STORE_SQLITE_STMT_SWEEP_IDEM_BOUND];
    sqlite3_bind_text(bound, 1, sweep->principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(bound, 2, sweep->key, -1, SQLITE_STATIC);
    sqlite3_bind_int(bound, 3, max_rows - 1);
    int step = sqlite3_step(bound);
    struct store_idem_sweep next = {{0}, {0}}; /* past the end: from the first key again */
    bool fits =
        step != SQLITE_ROW || store_sweep_set(&next, (const char *)sqlite3_column_text(bound, 0),
                                              (size_t)sqlite3_column_bytes(bound, 0),
                                              (const char *)sqlite3_column_text(bound, 1),
                                              (size_t)sqlite3_column_bytes(bound, 1));
    sqlite3_reset(bound);
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        return store_sqlite_fail(s->db, sqlite_stmt_sql[STORE_SQLITE_STMT_SWEEP_IDEM_BOUND]);
    }
    if (!fits) {
        *sweep = next;
        *swept = true;
        return 0;
    }
    bool tail = step == SQLITE_DONE;
    enum sqlite_stmt which =
        tail ? STORE_SQLITE_STMT_SWEEP_IDEM_TAIL : STORE_SQLITE_STMT_SWEEP_IDEM_RANGE;
    sqlite3_stmt *stmt = s->stmts[which];
    sqlite3_bind_text(stmt, 1, sweep->principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 2, sweep->key, -1, SQLITE_STATIC);
    if (!tail) {
        sqlite3_bind_text(stmt, 3, next.principal, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 4, next.key, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(stmt, tail ? 3 : 5, before_ms);
    int rc = sqlite_step_done(s, which);
    if (rc == 0) {
        *sweep = next;
        *swept = tail;
    }
    return rc == 0 ? sqlite3_changes(s->db) : rc;
}

/* One transaction: the new snapshot, and the old ones gone (see store.h). */
static int sqlite_snapshot_write(struct store *base, const struct row_snapshot *row,
                                 int64_t keep_from_seq)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* between batches */
    SVC_ASSERT(row->length <= INT32_MAX);      /* the encoder's bound is far below */
    int rc = sqlite_step_done(s, STORE_SQLITE_STMT_BEGIN);
    if (rc == 0) {
        sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_SNAPSHOT_INSERT];
        sqlite3_bind_int64(stmt, 1, row->seq);
        sqlite3_bind_int(stmt, 2, row->format);
        sqlite3_bind_int64(stmt, 3, row->created_at_ms);
        sqlite3_bind_blob(stmt, 4, row->body, (int)row->length, SQLITE_STATIC);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_SNAPSHOT_INSERT);
        sqlite3_clear_bindings(stmt); /* the body is the caller's */
    }
    if (rc == 0) {
        sqlite3_bind_int64(s->stmts[STORE_SQLITE_STMT_SNAPSHOT_PRUNE], 1, keep_from_seq);
        rc = sqlite_step_done(s, STORE_SQLITE_STMT_SNAPSHOT_PRUNE);
    }
    rc = rc == 0 ? sqlite_step_done(s, STORE_SQLITE_STMT_COMMIT) : rc;
    if (rc != 0 && !sqlite3_get_autocommit(s->db)) {
        sqlite_step_done(s, STORE_SQLITE_STMT_ROLLBACK);
    }
    SVC_ASSERT(sqlite3_get_autocommit(s->db));
    return rc;
}

/* The newest snapshot below below_seq (see store.h); its body lives until the reset. */
static int sqlite_snapshot_read(struct store *base, int64_t below_seq, void *context,
                                void (*each)(void *context, const struct row_snapshot *row))
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(sqlite3_get_autocommit(s->db)); /* not inside a batch */
    sqlite3_stmt *stmt = s->stmts[STORE_SQLITE_STMT_SNAPSHOT_READ];
    sqlite3_bind_int64(stmt, 1, below_seq);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        struct row_snapshot row = {
            .seq = sqlite3_column_int64(stmt, 0),
            .format = sqlite3_column_int(stmt, 1),
            .created_at_ms = sqlite3_column_int64(stmt, 2),
            .body = sqlite3_column_blob(stmt, 3),
            .length = (size_t)sqlite3_column_bytes(stmt, 3),
        };
        SVC_ASSERT(row.seq < below_seq);
        each(context, &row); /* checks the body: a row is external data */
        rc = 1;
    } else if (step != SQLITE_DONE) {
        rc = store_sqlite_fail(s->db, "read a snapshot");
    }
    sqlite3_reset(stmt);
    return rc;
}

static uint64_t sqlite_busy_wait_count(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(s != NULL && s->db != NULL);
    return atomic_load_explicit(&s->busy_waits, memory_order_relaxed);
}

static void sqlite_wal_counts(struct store *base, struct store_wal_counts *out)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    SVC_ASSERT(s != NULL);
    out->pages = atomic_load_explicit(&s->checkpointer.pages, memory_order_relaxed);
    out->checkpoints = atomic_load_explicit(&s->checkpointer.checkpoints, memory_order_relaxed);
}

static const struct store_ops sqlite_ops = {
    .name = "sqlite",
    .shared = false, /* one process owns the file: memory is always fresh */
    .close = sqlite_close,
    .load = sqlite_load,
    .prefetch = sqlite_prefetch,
    .commit_batch = sqlite_commit_batch,
    .batch_done = sqlite_batch_done,
    .idem_prune = sqlite_idem_prune,
    .reservations_due = NULL, /* every ACTIVE reservation is in this process's memory */
    .busy_wait_count = sqlite_busy_wait_count,
    .wal_counts = sqlite_wal_counts,
    .snapshot_write = sqlite_snapshot_write,
    .snapshot_read = sqlite_snapshot_read,
};
