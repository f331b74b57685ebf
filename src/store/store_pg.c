/*
 * store_pg.c - the PostgreSQL backend of store.h: several stockd instances on one database.
 * This file is the writer's handle.
 *
 * The writer's connection runs in nonblocking pipeline mode; one batch costs two round trips
 * (store_pg_conn.c bounds each with a deadline):
 *
 *   prefetch: BEGIN; the sequencer lock; SELECT the batch's stock rows ... ORDER BY store_id,
 *             sku FOR UPDATE; the reservations it names ... FOR UPDATE; their lines, the
 *             stores and products it names, its idempotency records, the sequences, the
 *             lease rows of its workers' stages FOR SHARE (the fence of work/work.h) and the
 *             events other instances committed since this one last looked -> Sync; every row
 *             goes to the writer's sink, and the transaction stays open for the commit (a
 *             batch that names no reservation sends none of the reservation statements)
 *   commit:   INSERT ... SELECT FROM unnest(arrays) for every kind of row (stock rows as
 *             upserts guarded by version); pg_notify('stockd_events', last seq); COMMIT -> Sync
 *
 * The sequencer is the one row of table sequencer, locked (FOR UPDATE) first by every batch of
 * every instance: it puts batches in one total order, so event seqs are handed out gap-free in
 * commit order (the read models of other instances tail the events table by seq and can
 * never skip a late commit), and everything read after it is the committed truth. The stock
 * rows are then locked in key order, so nothing else that locks them (another tool, a future
 * finer sequencer) can deadlock with us. A unique violation (an idempotency key, a store or a
 * product another instance made first) or a version guard that fails answers
 * STORE_COMMIT_RETRY: the writer prefetches the batch again and now sees the winner's rows.
 *
 * This file is not the read-only handles (store_pg_reader.c) nor the connection and its
 * round trip (store_pg_conn.c). Read store_pg_reader.c next.
 */
#include "store/store_pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "store/schema.h"
#include "store/store.h"
#include "store/store_pg_conn.h"

/* The session advisory lock under which an instance applies schema migrations. */
#define PG_MIGRATION_LOCK "7380002"

#define PG_ITEM_COLUMNS "store_id, sku, on_hand, reserved, version, sold, updated_at_ms"
#define PG_RES_COLUMNS "reservation_seq, store_id, customer_id, status, expires_at_ms, version"
/* A reservation's checkout order (issue 11): the order, its state while ACTIVE, its charges. */
#define PG_RES_ORDER_COLUMNS "order_seq, order_status, pay_attempts"

#define PG_STMT_MAP(X)                                                                          \
    X(BEGIN, "BEGIN")                                                                           \
    X(COMMIT, "COMMIT")                                                                         \
    X(ROLLBACK, "ROLLBACK")                                                                     \
    X(SEQUENCER, "SELECT id FROM sequencer WHERE id = 1 FOR UPDATE")                            \
    X(LOCK_ITEMS, "SELECT " PG_ITEM_COLUMNS " FROM stock_items WHERE (store_id, sku) IN"        \
                  " (SELECT k.s, k.p FROM unnest($1::text[], $2::text[]) AS k(s, p)"            \
                  " UNION SELECT r.store_id, l.sku FROM reservations r"                         \
                  " JOIN reservation_lines l USING (reservation_seq)"                           \
                  " WHERE r.reservation_seq = ANY($3::bigint[]))"                               \
                  " ORDER BY store_id, sku FOR UPDATE")                                         \
    X(LOCK_KEYED_ITEMS, "SELECT " PG_ITEM_COLUMNS " FROM stock_items WHERE (store_id, sku) IN"  \
                        " (SELECT * FROM unnest($1::text[], $2::text[]))"                       \
                        " ORDER BY store_id, sku FOR UPDATE")                                   \
    X(LOCK_RESERVATIONS,                                                                        \
      "SELECT " PG_RES_COLUMNS ", created_at_ms, " PG_RES_ORDER_COLUMNS " FROM reservations"    \
      " WHERE reservation_seq = ANY($1::bigint[])"                                              \
      " ORDER BY reservation_seq FOR UPDATE")                                                   \
    X(RESERVATION_LINES, "SELECT reservation_seq, sku, qty FROM reservation_lines"              \
                         " WHERE reservation_seq = ANY($1::bigint[])"                           \
                         " ORDER BY reservation_seq, line_no")                                  \
    X(STORES, "SELECT store_id, name, latency_ms FROM stores WHERE store_id = ANY($1::text[])"  \
              " OR store_id IN (SELECT store_id FROM reservations"                              \
              " WHERE reservation_seq = ANY($2::bigint[])) ORDER BY created_at_ms, store_id")   \
    X(PRODUCTS, "SELECT sku, name FROM products WHERE sku = ANY($1::text[])"                    \
                " OR sku IN (SELECT sku FROM reservation_lines"                                 \
                " WHERE reservation_seq = ANY($2::bigint[])) ORDER BY created_at_ms, sku")      \
    X(KEYED_STORES, "SELECT store_id, name, latency_ms FROM stores"                             \
                    " WHERE store_id = ANY($1::text[]) ORDER BY created_at_ms, store_id")       \
    X(KEYED_PRODUCTS, "SELECT sku, name FROM products WHERE sku = ANY($1::text[])"              \
                      " ORDER BY created_at_ms, sku")                                           \
    X(IDEMS, "SELECT principal, idem_key, fingerprint, status, problem, body, location"         \
             " FROM idempotency WHERE (principal, idem_key) IN"                                 \
             " (SELECT * FROM unnest($1::text[], $2::text[]))")                                 \
    X(LEASES, "SELECT stage, token FROM worker_leases WHERE stage = ANY($1::text[])"            \
              " ORDER BY stage FOR SHARE")                                                      \
    X(GAP_EVENTS,                                                                               \
      "SELECT " STORE_PG_EVENT_COLUMNS " FROM events WHERE seq > $1 ORDER BY seq LIMIT 4096")   \
    X(SEQUENCES, "SELECT (SELECT COALESCE(MAX(order_seq), 0) FROM orders),"                     \
                 " (SELECT COALESCE(MAX(seq), 0) FROM events),"                                 \
                 " (SELECT COALESCE(MAX(reservation_seq), 0) FROM reservations)")               \
    X(INSERT_STORES, "INSERT INTO stores (store_id, name, latency_ms, created_at_ms)"           \
                     " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[],"              \
                     " $4::bigint[])")                                                          \
    X(INSERT_PRODUCTS, "INSERT INTO products (sku, name, created_at_ms)"                        \
                       " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])")           \
    X(UPSERT_ITEMS, "INSERT INTO stock_items (" PG_ITEM_COLUMNS ") SELECT * FROM unnest("       \
                    "$1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],"         \
                    " $6::bigint[], $7::bigint[]) ON CONFLICT (store_id, sku) DO UPDATE SET"    \
                    " on_hand = excluded.on_hand, reserved = excluded.reserved,"                \
                    " version = excluded.version, sold = excluded.sold,"                        \
                    " updated_at_ms = excluded.updated_at_ms"                                   \
                    " WHERE stock_items.version < excluded.version")                            \
    X(INSERT_ORDERS, "INSERT INTO orders (order_seq, customer_id, store_id, status, lines,"     \
                     " history, created_at_ms, reservation_seq, expires_at_ms, updated_at_ms)"  \
                     " SELECT o, c, s, st, l, h, at, NULLIF(r, 0), NULLIF(e, 0), at"            \
                     " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],"           \
                     " $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[])"       \
                     " AS t(o, c, s, st, l, h, at, r, e)")                                      \
    X(STEP_ORDERS, "UPDATE orders o SET status = t.status, updated_at_ms = t.at,"               \
                   " history = left(o.history, -1) || ',' || t.entries || ']' FROM"             \
                   " (SELECT seq, (array_agg(st ORDER BY n DESC))[1] AS status, max(at) AS at," \
                   " string_agg(entry, ',' ORDER BY n) AS entries FROM unnest($1::bigint[],"    \
                   " $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY"                     \
                   " AS u(seq, st, entry, at, n) GROUP BY seq) t WHERE o.order_seq = t.seq")    \
    X(UPSERT_OFFSETS, "INSERT INTO worker_offsets (stage, event_seq, updated_at_ms)"            \
                      " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])"           \
                      " ON CONFLICT (stage) DO UPDATE SET event_seq = excluded.event_seq,"      \
                      " updated_at_ms = excluded.updated_at_ms"                                 \
                      " WHERE worker_offsets.event_seq < excluded.event_seq")                   \
    X(UPSERT_DEAD_LETTERS,                                                                      \
      "INSERT INTO dead_letters (stage, order_seq, reservation_seq, error, attempts,"           \
      " first_failed_at_ms, last_failed_at_ms) SELECT st, o, r, e, a, at, at FROM"              \
      " unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[])" \
      " AS t(st, o, r, e, a, at) ON CONFLICT (stage, order_seq) DO UPDATE SET"                  \
      " error = excluded.error, attempts = excluded.attempts,"                                  \
      " last_failed_at_ms = excluded.last_failed_at_ms")                                        \
    X(DELETE_DEAD_LETTERS, "DELETE FROM dead_letters d USING unnest($1::text[], $2::bigint[])"  \
                           " AS t(st, o) WHERE d.stage = t.st AND d.order_seq = t.o")           \
    X(UPSERT_STREAM_DEAD_LETTERS,                                                               \
      "INSERT INTO stream_dead_letters AS d (stage, stream_offset, error, attempts,"            \
      " first_failed_at_ms, last_failed_at_ms, message_id, message_type, principal, body)"      \
      " SELECT st, o, e, 1, at, at, decode(mi, 'hex'), decode(mt, 'hex'), decode(mp, 'hex'),"   \
      " decode(mb, 'hex') FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[],"      \
      " $5::text[], $6::text[], $7::text[], $8::text[]) AS t(st, o, e, at, mi, mt, mp, mb)"     \
      " ON CONFLICT (stage, stream_offset) DO UPDATE SET error = excluded.error,"               \
      " attempts = d.attempts + 1, last_failed_at_ms = excluded.last_failed_at_ms")             \
    X(INSERT_IDEMS, "INSERT INTO idempotency (principal, idem_key, fingerprint, status,"        \
                    " problem, body, created_at_ms, location) SELECT * FROM unnest("            \
                    "$1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],"         \
                    " $6::text[], $7::bigint[], $8::text[])")                                   \
    X(INSERT_EVENTS, "INSERT INTO events (seq, event_type, event_version, occurred_at_ms,"      \
                     " store_id, sku, data) SELECT * FROM unnest($1::bigint[], $2::text[],"     \
                     " $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[])")        \
    X(UPSERT_RESERVATIONS, "INSERT INTO reservations (" PG_RES_COLUMNS ", created_at_ms,"       \
                           " updated_at_ms, " PG_RES_ORDER_COLUMNS ") SELECT * FROM unnest("    \
                           "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],"    \
                           " $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],"           \
                           " $10::text[], $11::bigint[]) ON CONFLICT (reservation_seq)"         \
                           " DO UPDATE SET status = excluded.status,"                           \
                           " version = excluded.version,"                                       \
                           " updated_at_ms = excluded.updated_at_ms,"                           \
                           " expires_at_ms = excluded.expires_at_ms,"                           \
                           " order_status = excluded.order_status,"                             \
                           " pay_attempts = excluded.pay_attempts"                              \
                           " WHERE reservations.version < excluded.version")                    \
    X(INSERT_RESERVATION_LINES, "INSERT INTO reservation_lines (reservation_seq, line_no,"      \
                                " sku, qty) SELECT * FROM unnest($1::bigint[], $2::bigint[],"   \
                                " $3::text[], $4::bigint[])")                                   \
    X(NOTIFY, "SELECT pg_notify('stockd_events', $1)")                                          \
    X(LOAD_STORES, "SELECT store_id, name, latency_ms FROM stores"                              \
                   " ORDER BY created_at_ms, store_id")                                         \
    X(LOAD_PRODUCTS, "SELECT sku, name FROM products ORDER BY created_at_ms, sku")              \
    X(LOAD_ITEMS, "SELECT " PG_ITEM_COLUMNS " FROM stock_items")                                \
    X(LOAD_RESERVATIONS,                                                                        \
      "SELECT " PG_RES_COLUMNS ", created_at_ms, " PG_RES_ORDER_COLUMNS " FROM reservations"    \
      " WHERE status = 'ACTIVE' ORDER BY reservation_seq")                                      \
    X(LOAD_RESERVATION_LINES, "SELECT l.reservation_seq, l.sku, l.qty"                          \
                              " FROM reservation_lines l JOIN reservations r"                   \
                              " USING (reservation_seq) WHERE r.status = 'ACTIVE'"              \
                              " ORDER BY l.reservation_seq, l.line_no")                         \
    X(RESERVATIONS_DUE, "SELECT reservation_seq FROM reservations WHERE status = 'ACTIVE'"      \
                        " AND expires_at_ms < $1 ORDER BY expires_at_ms LIMIT $2")              \
    X(SWEEP_IDEM_BOUND, "SELECT principal, idem_key FROM idempotency"                           \
                        " WHERE (principal, idem_key) > ($1, $2)"                               \
                        " ORDER BY principal, idem_key LIMIT 1 OFFSET $3")                      \
    X(SWEEP_IDEM_RANGE, "DELETE FROM idempotency WHERE (principal, idem_key) > ($1, $2)"        \
                        " AND (principal, idem_key) <= ($3, $4) AND created_at_ms < $5")        \
    X(SWEEP_IDEM_TAIL, "DELETE FROM idempotency WHERE (principal, idem_key) > ($1, $2)"         \
                       " AND created_at_ms < $3")                                               \
    X(SNAPSHOT_INSERT, "INSERT INTO snapshots (seq, format, created_at_ms, body)"               \
                       " VALUES ($1, $2, $3, $4::bytea) ON CONFLICT (seq) DO UPDATE SET"        \
                       " format = excluded.format, created_at_ms = excluded.created_at_ms,"     \
                       " body = excluded.body")                                                 \
    X(SNAPSHOT_PRUNE, "DELETE FROM snapshots WHERE seq < $1")                                   \
    X(SNAPSHOT_READ, "SELECT seq, format, created_at_ms, body FROM snapshots WHERE seq < $1"    \
                     " ORDER BY seq DESC LIMIT 1")

enum pg_stmt {
#define PG_STMT_ENUM_(name, sql) PG_STMT_##name,
    PG_STMT_MAP(PG_STMT_ENUM_)
#undef PG_STMT_ENUM_
        PG_STMT_COUNT
};

static const struct store_pg_statement pg_statements[PG_STMT_COUNT] = {
#define PG_STMT_ENTRY_(name, sql) {"stockd_" #name, sql},
    PG_STMT_MAP(PG_STMT_ENTRY_)
#undef PG_STMT_ENTRY_
};

/* The parameters of one round trip: every array literal of the statements it sends. The
 * commit's are the most: stores 4, products 3, stock items 7, orders 9, order steps 4, stage
 * offsets 3, idempotency records 8, events 7, reservations 11, their lines 4, the notify's
 * seq 1, and the dead letters: the stream's 8, the orders' 6 and their removal 2 (the
 * prefetch has 9). */
#define PG_TEXTS_MAX (4 + 3 + 7 + 9 + 4 + 3 + 8 + 7 + 11 + 4 + 1 + 8 + 6 + 2)
_Static_assert(PG_TEXTS_MAX >= 5, "a snapshot write takes five (pg_snapshot_write)");

struct pg_store {
    struct store base; /* first: the backend's operations */
    struct store_pg_conn writer;
    bool in_transaction;                      /* a prefetched batch's transaction is open */
    uint64_t transaction_connect;             /* writer.connects when it was opened */
    struct store_pg_text texts[PG_TEXTS_MAX]; /* owned parameter buffers, reused */
    int text_used;
    struct row_event *gap_events; /* owned, STORE_GAP_EVENTS_MAX: other instances' events */
};

static const struct store_ops pg_ops;

/* ---- helpers ---------------------------------------------------------------------------- */

static struct store_pg_text *pg_param(struct pg_store *s)
{
    SVC_ASSERT(s->text_used < PG_TEXTS_MAX);
    struct store_pg_text *t = &s->texts[s->text_used++];
    store_pg_text_reset(t);
    return t;
}

/* Ends an open transaction after a failed statement (best effort: a broken connection ends
 * it anyway). */
static void pg_abort(struct pg_store *s)
{
    SVC_ASSERT(s->in_transaction);
    s->in_transaction = false;
    if (s->writer.conn == NULL) {
        return;
    }
    PGresult *result = NULL;
    if (store_pg_send(&s->writer, PG_STMT_ROLLBACK, 0, NULL) == 0 &&
        store_pg_round_trip(&s->writer, &result, 1) == 0 && !store_pg_result_ok(result)) {
        store_pg_conn_fail(&s->writer, "rollback");
    }
    PQclear(result);
}

/* ---- open, migrate, close --------------------------------------------------------------- */

static int pg_exec_simple(PGconn *conn, const char *sql)
{
    SVC_ASSERT(conn != NULL && sql != NULL);
    SVC_ASSERT(!PQisnonblocking(conn)); /* the migration's plain connection */
    PGresult *r = PQexec(conn, sql);
    int rc = store_pg_result_ok(r) ? 0 : SVC_ESTORAGE_UNAVAILABLE;
    if (rc != 0) {
        log_error("postgres: %s: %s", sql, PQresultErrorMessage(r));
    }
    PQclear(r);
    return rc;
}

static int pg_schema_version(PGconn *conn)
{
    SVC_ASSERT(conn != NULL && PQstatus(conn) == CONNECTION_OK);
    PGresult *exists = PQexec(conn, "SELECT to_regclass('meta') IS NOT NULL");
    bool fresh = !store_pg_result_ok(exists) || strcmp(PQgetvalue(exists, 0, 0), "t") != 0;
    PQclear(exists);
    if (fresh) {
        return 0; /* no meta table yet (asking would log an error in the server's log) */
    }
    PGresult *r = PQexec(conn, "SELECT value FROM meta WHERE key = 'schema_version'");
    int version = 0;
    if (store_pg_result_ok(r) && PQntuples(r) == 1) {
        version = atoi(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return version; /* no meta table yet: 0 */
}

/* Past this shared_buffers a server holds more dirty table-extension pages than the kernel's
 * periodic writeback flushes without stalling a commit (README, "Several instances on one
 * PostgreSQL": 128MB stalled none in the bench's windows, 256MB one of 57-90 ms every 30 s). */
#define PG_SHARED_BUFFERS_ADVISED_BYTES (128LL * 1024 * 1024)

/* Says once, at open, which server settings cost stockd its tail (README, "Several instances on
 * one PostgreSQL"). wal_init_zero=on (the default) writes each new 16 MB WAL segment full of
 * zeros and fsyncs it inside the commit that needs it: a ~55 ms commit every second or two at
 * ~10k purchases/s. backend_flush_after=0 (the default) and a large shared_buffers leave
 * hundreds of MB of dirty pages for the kernel to write back in one burst every 30 s, which a
 * WAL fsync then waits for (90-220 ms at 256MB without the flush). */
static void pg_check_settings(PGconn *conn)
{
    SVC_ASSERT(conn != NULL && !PQisnonblocking(conn)); /* the migration's plain connection */
    PGresult *r = PQexec(conn, "SHOW wal_init_zero");
    if (store_pg_result_ok(r) && PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "on") == 0) {
        log_warn("postgres: the server has wal_init_zero=on: a commit that needs a new WAL "
                 "segment waits while it is zero-filled and fsynced (tens of ms); set "
                 "wal_init_zero=off (as durable: fsync stays on)");
    }
    PQclear(r); /* an older server without the setting answers an error: nothing to say */
    /* pg_settings' numbers are in the setting's unit, the block; SHOW's text has units. */
    r = PQexec(conn, "SELECT (SELECT setting FROM pg_settings WHERE name = 'backend_flush_after'),"
                     " current_setting('shared_buffers'),"
                     " (SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers')"
                     " * current_setting('block_size')::bigint");
    if (!store_pg_result_ok(r) || PQntuples(r) != 1) {
        PQclear(r); /* a server that names them otherwise: nothing to say */
        return;
    }
    if (strcmp(PQgetvalue(r, 0, 0), "0") == 0) {
        log_warn("postgres: the server has backend_flush_after=0: the pages a backend evicts "
                 "stay dirty until the kernel writes them back in one burst, and a commit that "
                 "lands then waits (tens to hundreds of ms every 30 s); set "
                 "backend_flush_after=256kB");
    }
    if (atoll(PQgetvalue(r, 0, 2)) > PG_SHARED_BUFFERS_ADVISED_BYTES) {
        log_warn("postgres: the server has shared_buffers=%s: about that much of the pages that "
                 "extend stockd's tables stays dirty until the kernel writes it back in one "
                 "burst, and a commit that lands then waits (50-100 ms every 30 s at 256MB); "
                 "64MB to 128MB avoids it",
                 PQgetvalue(r, 0, 1));
    }
    PQclear(r);
}

static int pg_apply_migration(PGconn *conn, const struct schema_migration *migration)
{
    char sql[SCHEMA_STATEMENT_BYTES_MAX];
    int rc = pg_exec_simple(conn, "BEGIN");
    for (int i = 0; rc == 0 && migration->statements[i] != NULL; i++) {
        rc = schema_render(SCHEMA_POSTGRES, migration->statements[i], sql, sizeof sql);
        SVC_ASSERT(rc == 0);
        rc = sql[0] != '\0' ? pg_exec_simple(conn, sql) : 0; /* empty: SQLite's only */
    }
    snprintf(sql, sizeof sql,
             "INSERT INTO meta (key, value) VALUES ('schema_version', '%d')"
             " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
             migration->version);
    if (rc == 0) {
        rc = pg_exec_simple(conn, sql);
    }
    rc = rc == 0 ? pg_exec_simple(conn, "COMMIT") : rc;
    if (rc != 0) {
        pg_exec_simple(conn, "ROLLBACK");
    }
    return rc;
}

/* Applies the migrations not yet applied, under a session advisory lock so that instances
 * starting together migrate once. */
static int pg_migrate(PGconn *conn)
{
    int rc = pg_exec_simple(conn, "SET client_min_messages = warning");
    rc = rc == 0 ? pg_exec_simple(conn, "SELECT pg_advisory_lock(" PG_MIGRATION_LOCK ")") : rc;
    if (rc != 0) {
        return rc;
    }
    int version = pg_schema_version(conn);
    for (int m = 0; rc == 0 && m < schema_migration_count; m++) {
        const struct schema_migration *migration = &schema_migrations[m];
        if (migration->version <= version) {
            continue;
        }
        SVC_ASSERT(migration->version == version + 1);
        rc = pg_apply_migration(conn, migration);
        if (rc == 0) {
            version = migration->version;
            log_info("postgres: schema migrated to version %d", version);
        }
    }
    pg_exec_simple(conn, "SELECT pg_advisory_unlock(" PG_MIGRATION_LOCK ")");
    return rc;
}

static void pg_close(struct store *base)
{
    struct pg_store *s = (struct pg_store *)base;
    if (s == NULL) {
        return;
    }
    SVC_ASSERT(s->base.ops == &pg_ops);
    SVC_ASSERT(s->text_used >= 0 && s->text_used <= PG_TEXTS_MAX);
    store_pg_conn_close(&s->writer);
    for (int i = 0; i < PG_TEXTS_MAX; i++) {
        store_pg_text_free(&s->texts[i]);
    }
    free(s->gap_events);
    free(s);
}

int store_pg_open(struct store **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    if (strlen(uri) >= STORE_PG_URI_BYTES_MAX) {
        log_error("postgres: the uri is longer than %d bytes", STORE_PG_URI_BYTES_MAX - 1);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    struct pg_store *s = calloc(1, sizeof *s);
    if (s == NULL ||
        (s->gap_events = calloc(STORE_GAP_EVENTS_MAX, sizeof *s->gap_events)) == NULL) {
        free(s);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->base.ops = &pg_ops;
    store_pg_conn_init(&s->writer, uri, "writer", pg_statements, 0, false);
    /* Migrate on a plain connection first: the statements prepare only against the schema. */
    int rc = store_pg_conn_ready(&s->writer);
    if (rc == 0) {
        pg_check_settings(s->writer.conn);
        rc = pg_migrate(s->writer.conn);
    }
    store_pg_conn_close(&s->writer);
    store_pg_conn_init(&s->writer, uri, "writer", pg_statements, PG_STMT_COUNT, true);
    rc = rc == 0 ? store_pg_conn_ready(&s->writer) : rc;
    if (rc != 0) {
        log_error("postgres: cannot open the database");
        pg_close(&s->base);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    *out = &s->base;
    return 0;
}

/* ---- loading and prefetching ------------------------------------------------------------ */

/* Hands the rows of a stores / products / items result to sink. */
static int pg_feed_stores(const PGresult *r, const struct store_sink *sink)
{
    SVC_ASSERT(PQnfields(r) == 3);
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = sink->on_store(sink->context, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                            store_pg_int(r, i, 2));
    }
    SVC_ASSERT(rc <= 0);
    return rc;
}

static int pg_feed_products(const PGresult *r, const struct store_sink *sink)
{
    SVC_ASSERT(PQnfields(r) == 2);
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = sink->on_product(sink->context, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    }
    SVC_ASSERT(rc <= 0);
    return rc;
}

static int pg_feed_items(const PGresult *r, const struct store_sink *sink)
{
    SVC_ASSERT(PQnfields(r) == 7);
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        int64_t on_hand = store_pg_int(r, i, 2);
        int64_t reserved = store_pg_int(r, i, 3);
        SVC_ASSERT(reserved >= 0 && reserved <= on_hand); /* the table's CHECKs */
        rc = sink->on_item(sink->context, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), on_hand,
                           reserved, store_pg_int(r, i, 4), store_pg_int(r, i, 5),
                           store_pg_int(r, i, 6));
    }
    return rc;
}

/* Reservations (PG_RES_COLUMNS, created_at_ms, PG_RES_ORDER_COLUMNS; by seq) and lines (seq,
 * sku, qty; by seq and line): each ACTIVE reservation, its checkout order if it holds one, then
 * its lines; with only_active false (a prefetch) each ended one to on_reservation_ended with its
 * final status and version, without its lines. */
static int pg_feed_reservations(const PGresult *r, const PGresult *lines,
                                const struct store_sink *sink, bool only_active)
{
    SVC_ASSERT(PQnfields(r) == 10 && PQnfields(lines) == 3);
    int rc = 0;
    int line = 0;
    int line_count = PQntuples(lines);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        int64_t seq = store_pg_int(r, i, 0);
        SVC_ASSERT(i == 0 || seq > store_pg_int(r, i - 1, 0)); /* ORDER BY reservation_seq */
        bool active = strcmp(PQgetvalue(r, i, 3), "ACTIVE") == 0;
        SVC_ASSERT(active || !only_active);
        if (active) {
            rc = sink->on_reservation(sink->context, seq, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                                      store_pg_int(r, i, 4), store_pg_int(r, i, 5),
                                      store_pg_int(r, i, 6));
            int64_t order_seq = store_pg_int(r, i, 7);
            if (rc == 0 && order_seq != 0 && sink->on_reservation_order != NULL) {
                rc = sink->on_reservation_order(sink->context, seq, order_seq,
                                                PQgetisnull(r, i, 8) ? NULL : PQgetvalue(r, i, 8),
                                                store_pg_int(r, i, 9));
            }
        } else {
            rc = sink->on_reservation_ended(sink->context, seq, PQgetvalue(r, i, 3),
                                            store_pg_int(r, i, 5));
        }
        while (line < line_count && store_pg_int(lines, line, 0) < seq) {
            line++; /* lines without a reservation row: none under the foreign key */
        }
        for (; rc == 0 && line < line_count && store_pg_int(lines, line, 0) == seq; line++) {
            rc = active ? sink->on_reservation_line(sink->context, seq, PQgetvalue(lines, line, 1),
                                                    store_pg_int(lines, line, 2))
                        : 0;
        }
    }
    return rc;
}

static void pg_sequences(const PGresult *r, struct store_sequences *out)
{
    SVC_ASSERT(PQntuples(r) == 1 && PQnfields(r) == 3);
    out->order_seq_max = store_pg_int(r, 0, 0);
    out->event_seq_max = store_pg_int(r, 0, 1);
    out->reservation_seq_max = store_pg_int(r, 0, 2);
    SVC_ASSERT(out->order_seq_max >= 0 && out->event_seq_max >= 0 && out->reservation_seq_max >= 0);
}

/* Sends statements (no parameters) and checks every result. 0 or SVC_ESTORAGE_UNAVAILABLE. */
static int pg_run(struct pg_store *s, const enum pg_stmt *which, int count, PGresult **results)
{
    SVC_ASSERT(count >= 1 && count <= STORE_PG_PIPELINE_MAX);
    SVC_ASSERT(!s->in_transaction);
    int rc = store_pg_conn_ready(&s->writer);
    for (int i = 0; rc == 0 && i < count; i++) {
        rc = store_pg_send(&s->writer, which[i], 0, NULL);
    }
    rc = rc == 0 ? store_pg_round_trip(&s->writer, results, count) : rc;
    for (int i = 0; rc == 0 && i < count; i++) {
        if (!store_pg_result_ok(results[i])) {
            log_error("postgres: %s: %s", pg_statements[which[i]].name,
                      PQresultErrorMessage(results[i]));
            store_pg_results_clear(results, count);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    return rc;
}

static int pg_load(struct store *base, const struct store_sink *sink, struct store_sequences *out)
{
    struct pg_store *s = (struct pg_store *)base;
    static const enum pg_stmt which[] = {PG_STMT_BEGIN,
                                         PG_STMT_LOAD_STORES,
                                         PG_STMT_LOAD_PRODUCTS,
                                         PG_STMT_LOAD_ITEMS,
                                         PG_STMT_LOAD_RESERVATIONS,
                                         PG_STMT_LOAD_RESERVATION_LINES,
                                         PG_STMT_SEQUENCES,
                                         PG_STMT_COMMIT};
    enum { COUNT = sizeof which / sizeof which[0] };
    SVC_ASSERT(sink->on_store != NULL && sink->on_product != NULL && sink->on_item != NULL);
    PGresult *r[COUNT];
    int rc = pg_run(s, which, COUNT, r); /* one snapshot: REPEATABLE READ not needed, the
                                          * sequencer is not held, so read in one transaction */
    if (rc != 0) {
        return rc;
    }
    rc = pg_feed_stores(r[1], sink);
    rc = rc == 0 ? pg_feed_products(r[2], sink) : rc;
    rc = rc == 0 ? pg_feed_items(r[3], sink) : rc;
    if (rc == 0 && sink->on_reservation != NULL) {
        rc = pg_feed_reservations(r[4], r[5], sink, true);
    }
    if (rc == 0) {
        pg_sequences(r[6], out);
    }
    store_pg_results_clear(r, COUNT);
    return rc;
}

/* The parameters of the prefetch round trip, built from keys. */
struct pg_prefetch_params {
    const char *item_stores;
    const char *item_skus;
    const char *reservations;
    const char *stores;
    const char *skus;
    const char *idem_principals;
    const char *idem_keys;
    const char *events_after;
    const char *lease_stages;
};

static void pg_prefetch_params(struct pg_store *s, const struct store_prefetch_keys *keys,
                               struct pg_prefetch_params *out)
{
    SVC_ASSERT(s->text_used == 0);
    struct store_pg_text *item_stores = pg_param(s);
    struct store_pg_text *item_skus = pg_param(s);
    store_pg_array_begin(item_stores);
    store_pg_array_begin(item_skus);
    for (size_t i = 0; i < keys->item_count; i++) {
        store_pg_array_text(item_stores, keys->items[i].store_id);
        store_pg_array_text(item_skus, keys->items[i].sku);
    }
    struct store_pg_text *reservations = pg_param(s);
    store_pg_array_begin(reservations);
    for (size_t i = 0; i < keys->reservation_count; i++) {
        store_pg_array_int(reservations, keys->reservation_seqs[i]);
    }
    struct store_pg_text *stores = pg_param(s);
    store_pg_array_begin(stores);
    for (size_t i = 0; i < keys->store_count; i++) {
        store_pg_array_text(stores, keys->store_ids[i]);
    }
    struct store_pg_text *skus = pg_param(s);
    store_pg_array_begin(skus);
    for (size_t i = 0; i < keys->sku_count; i++) {
        store_pg_array_text(skus, keys->skus[i]);
    }
    struct store_pg_text *principals = pg_param(s);
    struct store_pg_text *idem_keys = pg_param(s);
    store_pg_array_begin(principals);
    store_pg_array_begin(idem_keys);
    for (size_t i = 0; i < keys->idem_count; i++) {
        store_pg_array_text(principals, keys->idems[i].principal);
        store_pg_array_text(idem_keys, keys->idems[i].key);
    }
    struct store_pg_text *all[] = {item_stores, item_skus,  reservations, stores,
                                   skus,        principals, idem_keys};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        store_pg_array_end(all[i]);
    }
    struct store_pg_text *events_after = pg_param(s);
    store_pg_text_int(events_after, keys->events_after);
    struct store_pg_text *lease_stages = pg_param(s);
    store_pg_array_begin(lease_stages);
    for (size_t i = 0; i < keys->lease_stage_count; i++) {
        store_pg_array_text(lease_stages, keys->lease_stages[i]);
    }
    store_pg_array_end(lease_stages);
    *out = (struct pg_prefetch_params){item_stores->data, item_skus->data,    reservations->data,
                                       stores->data,      skus->data,         principals->data,
                                       idem_keys->data,   events_after->data, lease_stages->data};
    SVC_ASSERT(s->text_used == 9);
}

/* The results of the prefetch round trip, in the order it sends its statements. */
enum pg_prefetch_result {
    PG_FETCH_BEGIN,
    PG_FETCH_SEQUENCER,
    PG_FETCH_ITEMS,
    PG_FETCH_RESERVATIONS,
    PG_FETCH_LINES,
    PG_FETCH_STORES,
    PG_FETCH_PRODUCTS,
    PG_FETCH_IDEMS,
    PG_FETCH_SEQUENCES,
    PG_FETCH_LEASES,
    PG_FETCH_GAP_EVENTS,
    PG_FETCH_COUNT
};
_Static_assert(PG_FETCH_COUNT <= STORE_PG_PIPELINE_MAX, "one round trip");

/* One statement of the prefetch round trip: the result it fills and its parameters. */
struct pg_fetch {
    enum pg_prefetch_result slot;
    enum pg_stmt which;
    int count;
    const char *params[3];
};

/* Lists the prefetch's statements in the order they are sent: the sequencer first, then the
 * stock rows in key order (the locking order of every instance). A batch that names no
 * reservation (a purchase-only batch, the hot path) skips the reservation statements and uses
 * the forms without their subqueries, which plan in about half the time (planning is a quarter
 * of the backend's work: custom plans are forced, store_pg_conn.c); a batch of no worker skips
 * the lease rows. Returns how many it listed; the slots it did not list stay NULL. */
static int pg_prefetch_list(const struct store_prefetch_keys *keys,
                            const struct pg_prefetch_params *p, struct pg_fetch *out)
{
    int n = 0;
    out[n++] = (struct pg_fetch){PG_FETCH_BEGIN, PG_STMT_BEGIN, 0, {NULL}};
    out[n++] = (struct pg_fetch){PG_FETCH_SEQUENCER, PG_STMT_SEQUENCER, 0, {NULL}};
    if (keys->reservation_count > 0) {
        out[n++] = (struct pg_fetch){
            PG_FETCH_ITEMS, PG_STMT_LOCK_ITEMS, 3, {p->item_stores, p->item_skus, p->reservations}};
        out[n++] = (struct pg_fetch){
            PG_FETCH_RESERVATIONS, PG_STMT_LOCK_RESERVATIONS, 1, {p->reservations}};
        out[n++] =
            (struct pg_fetch){PG_FETCH_LINES, PG_STMT_RESERVATION_LINES, 1, {p->reservations}};
        out[n++] =
            (struct pg_fetch){PG_FETCH_STORES, PG_STMT_STORES, 2, {p->stores, p->reservations}};
        out[n++] =
            (struct pg_fetch){PG_FETCH_PRODUCTS, PG_STMT_PRODUCTS, 2, {p->skus, p->reservations}};
    } else {
        out[n++] = (struct pg_fetch){
            PG_FETCH_ITEMS, PG_STMT_LOCK_KEYED_ITEMS, 2, {p->item_stores, p->item_skus}};
        out[n++] = (struct pg_fetch){PG_FETCH_STORES, PG_STMT_KEYED_STORES, 1, {p->stores}};
        out[n++] = (struct pg_fetch){PG_FETCH_PRODUCTS, PG_STMT_KEYED_PRODUCTS, 1, {p->skus}};
    }
    out[n++] =
        (struct pg_fetch){PG_FETCH_IDEMS, PG_STMT_IDEMS, 2, {p->idem_principals, p->idem_keys}};
    out[n++] = (struct pg_fetch){PG_FETCH_SEQUENCES, PG_STMT_SEQUENCES, 0, {NULL}};
    if (keys->lease_stage_count > 0) {
        out[n++] = (struct pg_fetch){PG_FETCH_LEASES, PG_STMT_LEASES, 1, {p->lease_stages}};
    }
    out[n++] = (struct pg_fetch){PG_FETCH_GAP_EVENTS, PG_STMT_GAP_EVENTS, 1, {p->events_after}};
    SVC_ASSERT(n <= PG_FETCH_COUNT);
    return n;
}

/* Sends the listed statements and waits for their results; each lands in its slot of r
 * (PG_FETCH_COUNT of them), and the slots of statements not listed are NULL. */
static int pg_prefetch_round_trip(struct pg_store *s, const struct pg_fetch *list, int count,
                                  PGresult **r)
{
    struct store_pg_conn *c = &s->writer;
    SVC_ASSERT(c->conn != NULL && !s->in_transaction);
    SVC_ASSERT(count >= 2 && count <= PG_FETCH_COUNT);
    int rc = 0;
    for (int i = 0; rc == 0 && i < count; i++) {
        rc = store_pg_send(c, list[i].which, list[i].count, list[i].params);
    }
    PGresult *got[PG_FETCH_COUNT];
    rc = rc == 0 ? store_pg_round_trip(c, got, count) : rc;
    for (int i = 0; i < PG_FETCH_COUNT; i++) {
        r[i] = NULL;
    }
    for (int i = 0; rc == 0 && i < count; i++) {
        SVC_ASSERT(r[list[i].slot] == NULL); /* one statement per slot */
        r[list[i].slot] = got[i];
    }
    return rc;
}

/* Hands the events of other instances (a GAP_EVENTS result) to sink->on_events, all at once;
 * the rows point into r. */
static int pg_feed_gap_events(struct pg_store *s, const PGresult *r, int64_t events_after,
                              const struct store_sink *sink)
{
    int n = PQntuples(r);
    SVC_ASSERT(n <= STORE_GAP_EVENTS_MAX);
    for (int i = 0; i < n; i++) {
        store_pg_row_event(r, i, &s->gap_events[i]);
        SVC_ASSERT(s->gap_events[i].seq > (i == 0 ? events_after : s->gap_events[i - 1].seq));
    }
    return n > 0 ? sink->on_events(sink->context, s->gap_events, (size_t)n) : 0;
}

/* Reports the reservations of keys that have no row at all as ended: status NULL, version 0. */
static int pg_missing_reservations(const PGresult *found, const struct store_prefetch_keys *keys,
                                   const struct store_sink *sink)
{
    SVC_ASSERT(PQntuples(found) >= 0);
    SVC_ASSERT(keys->reservation_count <= (size_t)INT32_MAX);
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < keys->reservation_count; k++) {
        bool present = false;
        for (int i = 0; !present && i < PQntuples(found); i++) {
            present = store_pg_int(found, i, 0) == keys->reservation_seqs[k];
        }
        if (!present) {
            rc = sink->on_reservation_ended(sink->context, keys->reservation_seqs[k], NULL, 0);
        }
    }
    return rc;
}

/* Hands the stored idempotency records of the batch's keys (an IDEMS result) to sink->on_idem;
 * the strings point into r. */
static int pg_feed_idems(const PGresult *r, size_t key_count, const struct store_sink *sink)
{
    SVC_ASSERT(PQnfields(r) == 7);
    SVC_ASSERT((size_t)PQntuples(r) <= key_count); /* IN reports each stored key once */
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        struct store_idem_record record = {
            .principal = PQgetvalue(r, i, 0),
            .key = PQgetvalue(r, i, 1),
            .fingerprint = (uint64_t)store_pg_int(r, i, 2),
            .status = (int)store_pg_int(r, i, 3),
            .problem = store_pg_int(r, i, 4) != 0,
            .body = PQgetvalue(r, i, 5),
            .body_length = (size_t)PQgetlength(r, i, 5),
            .location = PQgetisnull(r, i, 6) ? NULL : PQgetvalue(r, i, 6),
        };
        /* Read back what pg_write_records checked before writing it. */
        SVC_ASSERT(record.status >= 100 && record.status <= 599);
        SVC_ASSERT(record.location == NULL || record.location[0] != '\0');
        rc = sink->on_idem(sink->context, &record);
    }
    return rc;
}

/* Hands the lease rows of the batch's stages (a LEASES result) to sink->on_lease. */
static int pg_feed_leases(const PGresult *r, const struct store_sink *sink)
{
    SVC_ASSERT(PQntuples(r) <= 0 || sink->on_lease != NULL);
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = sink->on_lease(sink->context, PQgetvalue(r, i, 0), store_pg_int(r, i, 1));
    }
    return rc;
}

/* Hands every result of a completed prefetch round trip to sink, in the order store.h gives. */
static int pg_prefetch_feed(struct pg_store *s, PGresult **r,
                            const struct store_prefetch_keys *keys, const struct store_sink *sink,
                            struct store_sequences *out)
{
    SVC_ASSERT(s->in_transaction);
    int rc = 0;
    for (int i = 0; rc == 0 && i < PG_FETCH_COUNT; i++) {
        if (r[i] != NULL && !store_pg_result_ok(r[i])) {
            log_error("postgres: prefetch: %s", PQresultErrorMessage(r[i]));
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    rc = rc == 0 ? pg_feed_stores(r[PG_FETCH_STORES], sink) : rc;
    rc = rc == 0 ? pg_feed_products(r[PG_FETCH_PRODUCTS], sink) : rc;
    rc = rc == 0 ? pg_feed_items(r[PG_FETCH_ITEMS], sink) : rc;
    SVC_ASSERT((r[PG_FETCH_RESERVATIONS] != NULL) == (keys->reservation_count > 0));
    SVC_ASSERT((r[PG_FETCH_LINES] != NULL) == (keys->reservation_count > 0));
    if (r[PG_FETCH_RESERVATIONS] != NULL) {
        rc = rc == 0
                 ? pg_feed_reservations(r[PG_FETCH_RESERVATIONS], r[PG_FETCH_LINES], sink, false)
                 : rc;
        rc = rc == 0 ? pg_missing_reservations(r[PG_FETCH_RESERVATIONS], keys, sink) : rc;
    }
    rc = rc == 0 ? pg_feed_idems(r[PG_FETCH_IDEMS], keys->idem_count, sink) : rc;
    SVC_ASSERT((r[PG_FETCH_LEASES] != NULL) == (keys->lease_stage_count > 0));
    rc = rc == 0 && r[PG_FETCH_LEASES] != NULL ? pg_feed_leases(r[PG_FETCH_LEASES], sink) : rc;
    rc = rc == 0 ? pg_feed_gap_events(s, r[PG_FETCH_GAP_EVENTS], keys->events_after, sink) : rc;
    if (rc == 0) {
        pg_sequences(r[PG_FETCH_SEQUENCES], out);
    }
    return rc;
}

/* The prefetch of a shared backend: opens the batch's transaction, takes its locks and reports
 * the committed truth of everything the batch names (store.h). On any failure the transaction
 * is rolled back and nothing of it is left open. */
static int pg_prefetch(struct store *base, const struct store_prefetch_keys *keys,
                       const struct store_sink *sink, struct store_sequences *out)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(keys->idem_count <= BATCH_COMMANDS_MAX);
    if (s->in_transaction) {
        pg_abort(s); /* a batch that was prefetched but never committed */
    }
    SVC_ASSERT(!s->in_transaction);
    s->text_used = 0;
    struct pg_prefetch_params params;
    pg_prefetch_params(s, keys, &params);
    struct pg_fetch list[PG_FETCH_COUNT];
    int count = pg_prefetch_list(keys, &params, list);
    PGresult *r[PG_FETCH_COUNT];
    int rc = store_pg_conn_ready(&s->writer);
    rc = rc == 0 ? pg_prefetch_round_trip(s, list, count, r) : rc;
    if (rc != 0) {
        return SVC_ESTORAGE_UNAVAILABLE; /* the connection was dropped with its transaction */
    }
    s->in_transaction = true;
    s->transaction_connect = s->writer.connects;
    rc = pg_prefetch_feed(s, r, keys, sink, out);
    store_pg_results_clear(r, PG_FETCH_COUNT);
    if (rc != 0) {
        pg_abort(s);
    }
    SVC_ASSERT(s->in_transaction == (rc == 0));
    return rc;
}

/* ---- the commit ------------------------------------------------------------------------- */

/* A statement of the commit round trip with its array parameters. */
struct pg_write {
    enum pg_stmt which;
    int count;
    const char *values[STORE_PG_PARAMS_MAX];
    int64_t rows; /* rows it must change (upserts guarded by version), or -1 */
};

/* Begins n array parameters of w. */
static void pg_write_begin(struct pg_store *s, struct pg_write *w, enum pg_stmt which, int n,
                           struct store_pg_text **texts)
{
    SVC_ASSERT(n <= STORE_PG_PARAMS_MAX);
    w->which = which;
    w->count = n;
    w->rows = -1;
    for (int i = 0; i < n; i++) {
        texts[i] = pg_param(s);
        store_pg_array_begin(texts[i]);
    }
}

static void pg_write_end(struct pg_write *w, struct store_pg_text **texts)
{
    SVC_ASSERT(w->count >= 1 && w->count <= STORE_PG_PARAMS_MAX);
    SVC_ASSERT(w->rows == -1 || w->rows >= 1);
    for (int i = 0; i < w->count; i++) {
        store_pg_array_end(texts[i]);
        w->values[i] = texts[i]->data;
    }
}

static int pg_write_catalog(struct pg_store *s, const struct store_batch *b, struct pg_write *w)
{
    int n = 0;
    struct store_pg_text *t[STORE_PG_PARAMS_MAX];
    if (b->store_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_STORES, 4, t);
        for (size_t i = 0; i < b->store_count; i++) {
            store_pg_array_text(t[0], b->stores[i].store_id);
            store_pg_array_text(t[1], b->stores[i].name);
            store_pg_array_int(t[2], b->stores[i].latency_ms);
            store_pg_array_int(t[3], b->stores[i].created_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->product_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_PRODUCTS, 3, t);
        for (size_t i = 0; i < b->product_count; i++) {
            store_pg_array_text(t[0], b->products[i].sku);
            store_pg_array_text(t[1], b->products[i].name);
            store_pg_array_int(t[2], b->products[i].created_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->item_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_ITEMS, 7, t);
        for (size_t i = 0; i < b->item_count; i++) {
            const struct row_item *row = &b->items[i];
            SVC_ASSERT(row->reserved >= 0 && row->reserved <= row->on_hand);
            store_pg_array_text(t[0], row->store_id);
            store_pg_array_text(t[1], row->sku);
            int64_t numbers[] = {row->on_hand, row->reserved, row->version, row->sold,
                                 row->updated_at_ms};
            for (int k = 0; k < 5; k++) {
                store_pg_array_int(t[2 + k], numbers[k]);
            }
        }
        w[n].rows = (int64_t)b->item_count;
        pg_write_end(&w[n++], t);
    }
    return n;
}

/* The dead letters written, then those deleted (a replay follows its dead-lettering). */
static int pg_write_dead_letters(struct pg_store *s, const struct store_batch *b,
                                 struct pg_write *w)
{
    int n = 0;
    struct store_pg_text *t[STORE_PG_PARAMS_MAX];
    size_t removes = 0;
    size_t streams = 0; /* a stream message's (order_seq 0): table stream_dead_letters */
    for (size_t i = 0; i < b->dead_letter_count; i++) {
        removes += b->dead_letters[i].remove ? 1 : 0;
        streams += b->dead_letters[i].order_seq == 0 ? 1 : 0;
    }
    if (streams > 0) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_STREAM_DEAD_LETTERS, 8, t);
        for (size_t i = 0; i < b->dead_letter_count; i++) {
            const struct row_dead_letter *row = &b->dead_letters[i];
            if (row->order_seq == 0) {
                SVC_ASSERT(!row->remove && row->stream_offset >= 0);
                store_pg_array_text(t[0], row->stage);
                store_pg_array_int(t[1], row->stream_offset);
                store_pg_array_text(t[2], row->error);
                store_pg_array_int(t[3], row->at_ms);
                /* The message's parts as hex (bytea): they need not be UTF-8. */
                const char *parts[] = {row->message_id, row->message_type, row->message_principal};
                for (int p = 0; p < 3; p++) {
                    store_pg_array_hex(t[4 + p], parts[p], parts[p] ? strlen(parts[p]) : 0);
                }
                store_pg_array_hex(t[7], row->message_body, row->message_body_length);
            }
        }
        pg_write_end(&w[n++], t);
    }
    if (b->dead_letter_count > removes + streams) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_DEAD_LETTERS, 6, t);
        for (size_t i = 0; i < b->dead_letter_count; i++) {
            const struct row_dead_letter *row = &b->dead_letters[i];
            if (row->remove || row->order_seq == 0) {
                continue;
            }
            store_pg_array_text(t[0], row->stage);
            store_pg_array_int(t[1], row->order_seq);
            store_pg_array_int(t[2], row->reservation_seq);
            store_pg_array_text(t[3], row->error);
            store_pg_array_int(t[4], row->attempts);
            store_pg_array_int(t[5], row->at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (removes > 0) {
        pg_write_begin(s, &w[n], PG_STMT_DELETE_DEAD_LETTERS, 2, t);
        for (size_t i = 0; i < b->dead_letter_count; i++) {
            if (b->dead_letters[i].remove) {
                store_pg_array_text(t[0], b->dead_letters[i].stage);
                store_pg_array_int(t[1], b->dead_letters[i].order_seq);
            }
        }
        pg_write_end(&w[n++], t);
    }
    return n;
}

/* The checkout orders' steps (after the batch's new orders: a step may be of one of them) and
 * the stages' offsets. Several steps of one order apply in the batch's order. */
static int pg_write_steps(struct pg_store *s, const struct store_batch *b, struct pg_write *w)
{
    int n = 0;
    struct store_pg_text *t[STORE_PG_PARAMS_MAX];
    if (b->order_step_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_STEP_ORDERS, 4, t);
        for (size_t i = 0; i < b->order_step_count; i++) {
            const struct row_order_step *row = &b->order_steps[i];
            SVC_ASSERT(row->order_seq >= 1 && row->history_entry_json[0] == '{');
            store_pg_array_int(t[0], row->order_seq);
            store_pg_array_text(t[1], row->status);
            store_pg_array_text(t[2], row->history_entry_json);
            store_pg_array_int(t[3], row->updated_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->offset_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_OFFSETS, 3, t);
        for (size_t i = 0; i < b->offset_count; i++) {
            SVC_ASSERT(b->offsets[i].seq >= 1);
            store_pg_array_text(t[0], b->offsets[i].stage);
            store_pg_array_int(t[1], b->offsets[i].seq);
            store_pg_array_int(t[2], b->offsets[i].updated_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    return n + pg_write_dead_letters(s, b, w + n);
}

static int pg_write_records(struct pg_store *s, const struct store_batch *b, struct pg_write *w)
{
    int n = 0;
    struct store_pg_text *t[STORE_PG_PARAMS_MAX];
    if (b->order_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_ORDERS, 9, t);
        for (size_t i = 0; i < b->order_count; i++) {
            const struct row_order *row = &b->orders[i];
            store_pg_array_int(t[0], row->order_seq);
            const char *texts[] = {row->customer_id, row->store_id, row->status, row->lines_json,
                                   row->history_json};
            for (int k = 0; k < 5; k++) {
                store_pg_array_text(t[1 + k], texts[k]);
            }
            store_pg_array_int(t[6], row->created_at_ms);
            store_pg_array_int(t[7], row->reservation_seq); /* 0: a purchase (NULL) */
            store_pg_array_int(t[8], row->expires_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    n += pg_write_steps(s, b, w + n);
    if (b->idem_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_IDEMS, 8, t);
        for (size_t i = 0; i < b->idem_count; i++) {
            const struct row_idem *row = &b->idems[i];
            SVC_ASSERT(row->status >= 100 && row->status <= 599);
            SVC_ASSERT(
                row->location == NULL ||
                (row->location[0] != '\0' && strlen(row->location) <= REPLY_LOCATION_BYTES_MAX));
            store_pg_array_text(t[0], row->principal);
            store_pg_array_text(t[1], row->idem_key);
            store_pg_array_int(t[2], (int64_t)row->fingerprint);
            store_pg_array_int(t[3], row->status);
            store_pg_array_int(t[4], row->problem ? 1 : 0);
            store_pg_array_text_n(t[5], row->body, row->body_length);
            store_pg_array_int(t[6], row->created_at_ms);
            store_pg_array_text(t[7], row->location); /* NULL: SQL NULL */
        }
        pg_write_end(&w[n++], t);
    }
    if (b->event_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_EVENTS, 7, t);
        for (size_t i = 0; i < b->event_count; i++) {
            const struct row_event *row = &b->events[i];
            store_pg_array_int(t[0], row->seq);
            store_pg_array_text(t[1], row->event_type);
            store_pg_array_int(t[2], row->event_version);
            store_pg_array_int(t[3], row->occurred_at_ms);
            store_pg_array_text(t[4], row->store_id);
            store_pg_array_text(t[5], row->sku);
            store_pg_array_text(t[6], row->data_json);
        }
        pg_write_end(&w[n++], t);
    }
    return n;
}

static int pg_write_reservations(struct pg_store *s, const struct store_batch *b,
                                 struct pg_write *w)
{
    SVC_ASSERT(b->reservation_count == 0 || b->reservations != NULL);
    SVC_ASSERT(b->reservation_line_count == 0 || b->reservation_lines != NULL);
    int n = 0;
    struct store_pg_text *t[STORE_PG_PARAMS_MAX];
    if (b->reservation_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_RESERVATIONS, 11, t);
        for (size_t i = 0; i < b->reservation_count; i++) {
            const struct row_reservation *row = &b->reservations[i];
            store_pg_array_int(t[0], row->reservation_seq);
            store_pg_array_text(t[1], row->store_id);
            store_pg_array_text(t[2], row->customer_id);
            store_pg_array_text(t[3], row->status);
            int64_t numbers[] = {row->expires_at_ms, row->version, row->created_at_ms,
                                 row->updated_at_ms, row->order_seq};
            for (int k = 0; k < 5; k++) {
                store_pg_array_int(t[4 + k], numbers[k]);
            }
            store_pg_array_text(t[9], row->order_status); /* NULL: SQL NULL */
            store_pg_array_int(t[10], row->pay_attempts);
        }
        w[n].rows = (int64_t)b->reservation_count;
        pg_write_end(&w[n++], t);
    }
    if (b->reservation_line_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_RESERVATION_LINES, 4, t);
        for (size_t i = 0; i < b->reservation_line_count; i++) {
            const struct row_reservation_line *row = &b->reservation_lines[i];
            store_pg_array_int(t[0], row->reservation_seq);
            store_pg_array_int(t[1], row->line_no);
            store_pg_array_text(t[2], row->sku);
            store_pg_array_int(t[3], row->qty);
        }
        pg_write_end(&w[n++], t);
    }
    return n;
}

/* The answer of the commit round trip: 0, STORE_COMMIT_RETRY or SVC_ESTORAGE_UNAVAILABLE. */
static int pg_commit_verdict(const struct pg_write *w, PGresult **r, int count)
{
    SVC_ASSERT(count >= 1 && count <= STORE_PG_PIPELINE_MAX);
    SVC_ASSERT(w[count - 1].which == PG_STMT_COMMIT); /* the round trip ends with COMMIT */
    for (int i = 0; i < count; i++) {
        if (!store_pg_result_ok(r[i])) {
            const char *state = store_pg_result_state(r[i]);
            if (PQresultStatus(r[i]) == PGRES_PIPELINE_ABORTED) {
                continue; /* skipped after the first error, which decided */
            }
            log_warn("postgres: %s: %s", pg_statements[w[i].which].name,
                     PQresultErrorMessage(r[i]));
            return strcmp(state, "23505") == 0 ? STORE_COMMIT_RETRY : SVC_ESTORAGE_UNAVAILABLE;
        }
        if (w[i].rows >= 0 && strtoll(PQcmdTuples(r[i]), NULL, 10) != w[i].rows) {
            /* A row was newer than what this instance read under its locks: another writer
             * went around the sequencer. Read again and redo. */
            log_warn("postgres: %s changed %s of %" PRId64 " rows", pg_statements[w[i].which].name,
                     PQcmdTuples(r[i]), w[i].rows);
            return STORE_COMMIT_RETRY;
        }
    }
    return 0;
}

static int pg_commit_batch(struct store *base, const struct store_batch *batch)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(s->in_transaction); /* pg_prefetch opened it */
    SVC_ASSERT(batch != NULL);
    if (s->writer.conn == NULL || s->writer.connects != s->transaction_connect) {
        /* The connection broke since the prefetch (and something connected again): the locks
         * and fresh reads are gone with it, so nothing may be written on the new one. */
        s->in_transaction = false;
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->text_used = 0;
    struct pg_write w[STORE_PG_PIPELINE_MAX];
    int n = pg_write_catalog(s, batch, w);
    n += pg_write_records(s, batch, w + n);
    n += pg_write_reservations(s, batch, w + n);
    struct store_pg_text *seq_text = pg_param(s);
    if (batch->event_count > 0) {
        store_pg_text_int(seq_text, batch->events[batch->event_count - 1].seq);
        w[n++] = (struct pg_write){PG_STMT_NOTIFY, 1, {seq_text->data}, -1};
    }
    w[n++] = (struct pg_write){PG_STMT_COMMIT, 0, {NULL}, -1};
    SVC_ASSERT(n <= STORE_PG_PIPELINE_MAX);
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = store_pg_send(&s->writer, w[i].which, w[i].count, w[i].values);
    }
    PGresult *r[STORE_PG_PIPELINE_MAX];
    rc = rc == 0 ? store_pg_round_trip(&s->writer, r, n) : rc;
    s->in_transaction = false;
    if (rc != 0) {
        return SVC_ESTORAGE_UNAVAILABLE; /* the connection broke: in doubt until re-read */
    }
    rc = pg_commit_verdict(w, r, n);
    bool rolled_back = rc != 0 && PQtransactionStatus(s->writer.conn) != PQTRANS_IDLE;
    store_pg_results_clear(r, n);
    if (rolled_back) {
        s->in_transaction = true;
        pg_abort(s);
    }
    return rc;
}

static void pg_batch_done(struct store *base)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(s != NULL);
    SVC_ASSERT(!s->in_transaction); /* committed or abandoned: PostgreSQL checkpoints itself */
}

/* Runs one statement outside a batch with (before_ms, limit); *out gets its result (the caller
 * clears it). 0 or SVC_ESTORAGE_UNAVAILABLE. */
static int pg_run_limited(struct pg_store *s, enum pg_stmt which, int64_t before_ms, int limit,
                          PGresult **out)
{
    SVC_ASSERT(!s->in_transaction && limit > 0);
    char before[24];
    char count[24];
    snprintf(before, sizeof before, "%" PRId64, before_ms);
    snprintf(count, sizeof count, "%d", limit);
    const char *values[] = {before, count};
    *out = store_pg_exec(&s->writer, which, 2, values);
    return *out != NULL ? 0 : SVC_ESTORAGE_UNAVAILABLE;
}

/* The step of the sweep (store.h): the bound, then the delete up to it; each statement its own
 * transaction, as the records of other instances may come and go between them (the delete only
 * ever takes records older than before_ms). */
static int pg_idem_prune(struct store *base, struct store_idem_sweep *sweep, int64_t before_ms,
                         int max_rows, bool *swept)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(max_rows >= 1 && !s->in_transaction);
    char offset[24];
    char before[24];
    snprintf(offset, sizeof offset, "%d", max_rows - 1);
    snprintf(before, sizeof before, "%" PRId64, before_ms);
    const char *bound_params[] = {sweep->principal, sweep->key, offset};
    PGresult *bound = store_pg_exec(&s->writer, PG_STMT_SWEEP_IDEM_BOUND, 3, bound_params);
    if (bound == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    bool tail = PQntuples(bound) == 0;
    struct store_idem_sweep next = {{0}, {0}}; /* past the end: from the first key again */
    bool fits =
        tail || store_sweep_set(&next, PQgetvalue(bound, 0, 0), (size_t)PQgetlength(bound, 0, 0),
                                PQgetvalue(bound, 0, 1), (size_t)PQgetlength(bound, 0, 1));
    PQclear(bound);
    if (!fits) {
        *sweep = next;
        *swept = true;
        return 0;
    }
    const char *range[] = {sweep->principal, sweep->key, next.principal, next.key, before};
    const char *rest[] = {sweep->principal, sweep->key, before};
    PGresult *r = tail ? store_pg_exec(&s->writer, PG_STMT_SWEEP_IDEM_TAIL, 3, rest)
                       : store_pg_exec(&s->writer, PG_STMT_SWEEP_IDEM_RANGE, 5, range);
    if (r == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int deleted = (int)strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    SVC_ASSERT(deleted >= 0 && deleted <= max_rows); /* in a range of max_rows keys */
    *sweep = next;
    *swept = tail;
    return deleted;
}

static int pg_reservations_due(struct store *base, int64_t before_ms, int64_t *out, int max)
{
    SVC_ASSERT(out != NULL);
    SVC_ASSERT(max >= 1);
    PGresult *r = NULL;
    int rc = pg_run_limited((struct pg_store *)base, PG_STMT_RESERVATIONS_DUE, before_ms, max, &r);
    for (int i = 0; rc >= 0 && r != NULL && i < PQntuples(r) && i < max; i++) {
        out[rc++] = store_pg_int(r, i, 0);
    }
    PQclear(r);
    return rc;
}

/* Writes body as a bytea parameter in PostgreSQL's hex input format ("\\x" and two digits a
 * byte): parameters travel as text (store_pg_conn.h). */
static void pg_text_bytea(struct store_pg_text *t, const unsigned char *body, size_t length)
{
    static const char digits[] = "0123456789abcdef";
    char chunk[4096];
    store_pg_text_reset(t);
    store_pg_text_append(t, "\\x", 2);
    size_t used = 0;
    for (size_t i = 0; i < length; i++) {
        chunk[used++] = digits[body[i] >> 4];
        chunk[used++] = digits[body[i] & 15];
        if (used == sizeof chunk || i + 1 == length) {
            store_pg_text_append(t, chunk, used);
            used = 0;
        }
    }
    SVC_ASSERT(t->length == 2 + 2 * length);
}

/* One round trip, one transaction: the new snapshot, and the old ones gone (see store.h). */
static int pg_snapshot_write(struct store *base, const struct row_snapshot *row,
                             int64_t keep_from_seq)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(!s->in_transaction); /* between batches */
    s->text_used = 0;
    struct store_pg_text *t[4] = {pg_param(s), pg_param(s), pg_param(s), pg_param(s)};
    store_pg_text_int(t[0], row->seq);
    store_pg_text_int(t[1], row->format);
    store_pg_text_int(t[2], row->created_at_ms);
    pg_text_bytea(t[3], row->body, row->length);
    struct store_pg_text *keep = pg_param(s);
    store_pg_text_int(keep, keep_from_seq);
    const char *insert[] = {t[0]->data, t[1]->data, t[2]->data, t[3]->data};
    const char *prune[] = {keep->data};
    int rc = store_pg_conn_ready(&s->writer);
    rc = rc == 0 ? store_pg_send(&s->writer, PG_STMT_BEGIN, 0, NULL) : rc;
    rc = rc == 0 ? store_pg_send(&s->writer, PG_STMT_SNAPSHOT_INSERT, 4, insert) : rc;
    rc = rc == 0 ? store_pg_send(&s->writer, PG_STMT_SNAPSHOT_PRUNE, 1, prune) : rc;
    rc = rc == 0 ? store_pg_send(&s->writer, PG_STMT_COMMIT, 0, NULL) : rc;
    PGresult *r[4] = {NULL, NULL, NULL, NULL};
    rc = rc == 0 ? store_pg_round_trip(&s->writer, r, 4) : rc;
    for (int i = 0; rc == 0 && i < 4; i++) {
        if (!store_pg_result_ok(r[i])) {
            log_warn("postgres: snapshot write: %s", PQresultErrorMessage(r[i]));
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    bool open =
        rc != 0 && s->writer.conn != NULL && PQtransactionStatus(s->writer.conn) != PQTRANS_IDLE;
    store_pg_results_clear(r, 4);
    store_pg_text_free(t[3]); /* the largest parameter by far: not kept for the batches */
    if (open) {
        s->in_transaction = true;
        pg_abort(s);
    }
    SVC_ASSERT(!s->in_transaction);
    return rc;
}

/* The newest snapshot below below_seq (see store.h), its body decoded from bytea. */
static int pg_snapshot_read(struct store *base, int64_t below_seq, void *context,
                            void (*each)(void *context, const struct row_snapshot *row))
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(!s->in_transaction); /* at startup */
    char below[24];
    snprintf(below, sizeof below, "%" PRId64, below_seq);
    const char *values[] = {below};
    PGresult *r = store_pg_exec(&s->writer, PG_STMT_SNAPSHOT_READ, 1, values);
    if (r == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int rc = PQntuples(r) == 1 ? 1 : 0;
    size_t length = 0;
    unsigned char *body =
        rc == 1 ? PQunescapeBytea((const unsigned char *)PQgetvalue(r, 0, 3), &length) : NULL;
    if (rc == 1 && body == NULL) {
        log_error("postgres: out of memory decoding a snapshot");
        rc = SVC_ESTORAGE_UNAVAILABLE;
    }
    if (rc == 1) {
        struct row_snapshot row = {store_pg_int(r, 0, 0), (int)store_pg_int(r, 0, 1),
                                   store_pg_int(r, 0, 2), body, length};
        SVC_ASSERT(row.seq < below_seq);
        each(context, &row); /* checks the body: a row is external data */
    }
    PQfreemem(body);
    PQclear(r);
    return rc;
}

/* PostgreSQL waits for locks inside the server; the writer's connection never sleeps on a
 * busy file, so there is nothing to count. */
static uint64_t pg_busy_wait_count(struct store *base)
{
    SVC_ASSERT(base != NULL);
    SVC_ASSERT(base->ops == &pg_ops);
    return 0;
}

/* Every connect of the writer's pipeline connection counts: after the first, each is the
 * writer's session coming back after it broke. */
static uint64_t pg_session_count(struct store *base)
{
    const struct pg_store *s = (const struct pg_store *)base;
    SVC_ASSERT(s->base.ops == &pg_ops);
    SVC_ASSERT(s->writer.connects >= 1); /* store_pg_open connected it */
    return s->writer.connects;
}

static const struct store_ops pg_ops = {
    .name = "postgres",
    .shared = true, /* several instances on one database */
    .close = pg_close,
    .load = pg_load,
    .prefetch = pg_prefetch,
    .commit_batch = pg_commit_batch,
    .batch_done = pg_batch_done,
    .idem_prune = pg_idem_prune,
    .reservations_due = pg_reservations_due,
    .busy_wait_count = pg_busy_wait_count,
    .session_count = pg_session_count,
    .snapshot_write = pg_snapshot_write,
    .snapshot_read = pg_snapshot_read,
};
