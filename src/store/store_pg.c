/*
 * store_pg.c - the PostgreSQL backend of store.h: several stockd instances on one database.
 *
 * The writer's connection runs in nonblocking pipeline mode; one batch costs two round trips
 * (store_pg_conn.c bounds each with a deadline):
 *
 *   prepare:  BEGIN; the sequencer lock; SELECT the batch's stock rows ... ORDER BY store_id,
 *             sku FOR UPDATE; the reservations it ends ... FOR UPDATE; their lines, the stores
 *             and products it names, its idempotency records and the sequences -> Sync
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
 * STORE_COMMIT_RETRY: the writer prepares the batch again and now sees the winner's rows.
 */
#include "store/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/hash.h"
#include "base/log.h"
#include "store/schema.h"
#include "store/store_pg_conn.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"

/* The session advisory lock under which an instance applies schema migrations. */
#define PG_MIGRATION_LOCK "7380002"
/* Slots of the batch's idempotency lookup table (a power of two, load <= 0.25). */
#define PG_IDEM_SLOTS (4 * BATCH_COMMANDS_MAX)
_Static_assert((PG_IDEM_SLOTS & (PG_IDEM_SLOTS - 1)) == 0, "slots: a power of two");

#define PG_ITEM_COLUMNS "store_id, sku, on_hand, reserved, version, sold, updated_at_ms"
#define PG_RES_COLUMNS "reservation_seq, store_id, customer_id, status, expires_at_ms, version"

#define PG_STMT_MAP(X)                                                                         \
    X(BEGIN, "BEGIN")                                                                          \
    X(COMMIT, "COMMIT")                                                                        \
    X(ROLLBACK, "ROLLBACK")                                                                    \
    X(SEQUENCER, "SELECT id FROM sequencer WHERE id = 1 FOR UPDATE")                           \
    X(LOCK_ITEMS, "SELECT " PG_ITEM_COLUMNS " FROM stock_items WHERE (store_id, sku) IN"       \
                  " (SELECT k.s, k.p FROM unnest($1::text[], $2::text[]) AS k(s, p)"           \
                  " UNION SELECT r.store_id, l.sku FROM reservations r"                        \
                  " JOIN reservation_lines l USING (reservation_seq)"                          \
                  " WHERE r.reservation_seq = ANY($3::bigint[]))"                              \
                  " ORDER BY store_id, sku FOR UPDATE")                                        \
    X(LOCK_RESERVATIONS, "SELECT " PG_RES_COLUMNS ", created_at_ms FROM reservations"          \
                         " WHERE reservation_seq = ANY($1::bigint[])"                          \
                         " ORDER BY reservation_seq FOR UPDATE")                               \
    X(RESERVATION_LINES, "SELECT reservation_seq, sku, qty FROM reservation_lines"             \
                         " WHERE reservation_seq = ANY($1::bigint[])"                          \
                         " ORDER BY reservation_seq, line_no")                                 \
    X(STORES, "SELECT store_id, name, latency_ms FROM stores WHERE store_id = ANY($1::text[])" \
              " OR store_id IN (SELECT store_id FROM reservations"                             \
              " WHERE reservation_seq = ANY($2::bigint[])) ORDER BY created_at_ms, store_id")  \
    X(PRODUCTS, "SELECT sku, name FROM products WHERE sku = ANY($1::text[])"                   \
                " OR sku IN (SELECT sku FROM reservation_lines"                                \
                " WHERE reservation_seq = ANY($2::bigint[])) ORDER BY created_at_ms, sku")     \
    X(IDEMS, "SELECT principal, idem_key, fingerprint, status, problem, body FROM idempotency" \
             " WHERE (principal, idem_key) IN"                                                 \
             " (SELECT * FROM unnest($1::text[], $2::text[]))")                                \
    X(GAP_EVENTS,                                                                              \
      "SELECT " PG_EVENT_COLUMNS " FROM events WHERE seq > $1 ORDER BY seq LIMIT 4096")        \
    X(SEQUENCES, "SELECT (SELECT COALESCE(MAX(order_seq), 0) FROM orders),"                    \
                 " (SELECT COALESCE(MAX(seq), 0) FROM events),"                                \
                 " (SELECT COALESCE(MAX(reservation_seq), 0) FROM reservations)")              \
    X(INSERT_STORES, "INSERT INTO stores (store_id, name, latency_ms, created_at_ms)"          \
                     " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[],"             \
                     " $4::bigint[])")                                                         \
    X(INSERT_PRODUCTS, "INSERT INTO products (sku, name, created_at_ms)"                       \
                       " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])")          \
    X(UPSERT_ITEMS, "INSERT INTO stock_items (" PG_ITEM_COLUMNS ") SELECT * FROM unnest("      \
                    "$1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],"        \
                    " $6::bigint[], $7::bigint[]) ON CONFLICT (store_id, sku) DO UPDATE SET"   \
                    " on_hand = excluded.on_hand, reserved = excluded.reserved,"               \
                    " version = excluded.version, sold = excluded.sold,"                       \
                    " updated_at_ms = excluded.updated_at_ms"                                  \
                    " WHERE stock_items.version < excluded.version")                           \
    X(INSERT_ORDERS, "INSERT INTO orders (order_seq, customer_id, store_id, status, lines,"    \
                     " history, created_at_ms) SELECT * FROM unnest($1::bigint[], $2::text[]," \
                     " $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])")         \
    X(INSERT_IDEMS, "INSERT INTO idempotency (principal, idem_key, fingerprint, status,"       \
                    " problem, body, created_at_ms) SELECT * FROM unnest($1::text[],"          \
                    " $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],"       \
                    " $7::bigint[])")                                                          \
    X(INSERT_EVENTS, "INSERT INTO events (seq, event_type, event_version, occurred_at_ms,"     \
                     " store_id, sku, data) SELECT * FROM unnest($1::bigint[], $2::text[],"    \
                     " $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[])")       \
    X(UPSERT_RESERVATIONS, "INSERT INTO reservations (" PG_RES_COLUMNS ", created_at_ms,"      \
                           " updated_at_ms) SELECT * FROM unnest($1::bigint[], $2::text[],"    \
                           " $3::text[], $4::text[], $5::bigint[], $6::bigint[],"              \
                           " $7::bigint[], $8::bigint[]) ON CONFLICT (reservation_seq)"        \
                           " DO UPDATE SET status = excluded.status,"                          \
                           " version = excluded.version,"                                      \
                           " updated_at_ms = excluded.updated_at_ms"                           \
                           " WHERE reservations.version < excluded.version")                   \
    X(INSERT_RESERVATION_LINES, "INSERT INTO reservation_lines (reservation_seq, line_no,"     \
                                " sku, qty) SELECT * FROM unnest($1::bigint[], $2::bigint[],"  \
                                " $3::text[], $4::bigint[])")                                  \
    X(NOTIFY, "SELECT pg_notify('stockd_events', $1)")                                         \
    X(FIND_IDEM, "SELECT fingerprint, status, body, problem FROM idempotency"                  \
                 " WHERE principal = $1 AND idem_key = $2")                                    \
    X(FIND_RESERVATION, "SELECT status, version FROM reservations WHERE reservation_seq = $1") \
    X(LOAD_STORES, "SELECT store_id, name, latency_ms FROM stores"                             \
                   " ORDER BY created_at_ms, store_id")                                        \
    X(LOAD_PRODUCTS, "SELECT sku, name FROM products ORDER BY created_at_ms, sku")             \
    X(LOAD_ITEMS, "SELECT " PG_ITEM_COLUMNS " FROM stock_items")                               \
    X(LOAD_RESERVATIONS, "SELECT " PG_RES_COLUMNS ", created_at_ms FROM reservations"          \
                         " WHERE status = 'ACTIVE' ORDER BY reservation_seq")                  \
    X(LOAD_RESERVATION_LINES, "SELECT l.reservation_seq, l.sku, l.qty"                         \
                              " FROM reservation_lines l JOIN reservations r"                  \
                              " USING (reservation_seq) WHERE r.status = 'ACTIVE'"             \
                              " ORDER BY l.reservation_seq, l.line_no")                        \
    X(RESERVATIONS_DUE, "SELECT reservation_seq FROM reservations WHERE status = 'ACTIVE'"     \
                        " AND expires_at_ms < $1 ORDER BY expires_at_ms LIMIT $2")             \
    X(PRUNE_IDEM, "DELETE FROM idempotency WHERE (principal, idem_key) IN"                     \
                  " (SELECT principal, idem_key FROM idempotency WHERE created_at_ms < $1"     \
                  " LIMIT $2)")

enum pg_stmt {
#define PG_STMT_ENUM_(name, sql) PG_STMT_##name,
    PG_STMT_MAP(PG_STMT_ENUM_)
#undef PG_STMT_ENUM_
        PG_STMT_COUNT
};

static const struct pg_statement pg_statements[PG_STMT_COUNT] = {
#define PG_STMT_ENTRY_(name, sql) {"stockd_" #name, sql},
    PG_STMT_MAP(PG_STMT_ENTRY_)
#undef PG_STMT_ENTRY_
};

/* The parameters of one round trip: every array literal of the statements it sends. */
#define PG_TEXTS_MAX 48

struct pg_store {
    struct store base; /* first: the backend's operations */
    struct pg_conn writer;
    bool in_transaction;                /* a prepared batch's transaction is open */
    uint64_t transaction_connect;       /* writer.connects when it was opened */
    struct pg_text texts[PG_TEXTS_MAX]; /* owned parameter buffers, reused */
    int text_used;
    PGresult *idem_rows;               /* owned: the batch's prefetched idempotency records */
    int16_t idem_slots[PG_IDEM_SLOTS]; /* row + 1; 0 empty */
    bool idem_prefetched;
    struct row_event *gap_events; /* owned, STORE_GAP_EVENTS_MAX: other instances' events */
    char *found_body;             /* owned copy for store_idem_find */
    size_t found_body_size;
};

/* ---- helpers ---------------------------------------------------------------------------- */

static struct pg_text *pg_param(struct pg_store *s)
{
    SVC_ASSERT(s->text_used < PG_TEXTS_MAX);
    struct pg_text *t = &s->texts[s->text_used++];
    pg_text_reset(t);
    return t;
}

static uint32_t pg_idem_hash(const char *principal, const char *key)
{
    uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, principal, strlen(principal));
    return (uint32_t)hash_fnv1a(h ^ 0xff, key, strlen(key)) & (PG_IDEM_SLOTS - 1);
}

static void pg_idem_forget(struct pg_store *s)
{
    PQclear(s->idem_rows);
    s->idem_rows = NULL;
    memset(s->idem_slots, 0, sizeof s->idem_slots);
    s->idem_prefetched = false;
}

/* Indexes the prefetched idempotency rows by (principal, key). */
static void pg_idem_index(struct pg_store *s, PGresult *rows)
{
    pg_idem_forget(s);
    s->idem_rows = rows;
    s->idem_prefetched = true;
    int n = PQntuples(rows);
    SVC_ASSERT(n <= BATCH_COMMANDS_MAX);
    for (int row = 0; row < n; row++) {
        uint32_t slot = pg_idem_hash(PQgetvalue(rows, row, 0), PQgetvalue(rows, row, 1));
        while (s->idem_slots[slot] != 0) {
            slot = (slot + 1) & (PG_IDEM_SLOTS - 1);
        }
        s->idem_slots[slot] = (int16_t)(row + 1);
    }
}

/* Ends an open transaction after a failed statement (best effort: a broken connection ends
 * it anyway). */
static void pg_abort(struct pg_store *s)
{
    s->in_transaction = false;
    if (s->writer.conn == NULL) {
        return;
    }
    PGresult *result = NULL;
    if (pg_send(&s->writer, PG_STMT_ROLLBACK, 0, NULL) == 0 &&
        pg_round_trip(&s->writer, &result, 1) == 0 && !pg_result_ok(result)) {
        pg_conn_fail(&s->writer, "rollback");
    }
    PQclear(result);
}

/* ---- open, migrate, close --------------------------------------------------------------- */

static int pg_exec_simple(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    int rc = pg_result_ok(r) ? 0 : SVC_ESTORAGE_UNAVAILABLE;
    if (rc != 0) {
        log_error("postgres: %s: %s", sql, PQresultErrorMessage(r));
    }
    PQclear(r);
    return rc;
}

static int pg_schema_version(PGconn *conn)
{
    PGresult *exists = PQexec(conn, "SELECT to_regclass('meta') IS NOT NULL");
    bool fresh = !pg_result_ok(exists) || strcmp(PQgetvalue(exists, 0, 0), "t") != 0;
    PQclear(exists);
    if (fresh) {
        return 0; /* no meta table yet (asking would log an error in the server's log) */
    }
    PGresult *r = PQexec(conn, "SELECT value FROM meta WHERE key = 'schema_version'");
    int version = 0;
    if (pg_result_ok(r) && PQntuples(r) == 1) {
        version = atoi(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return version; /* no meta table yet: 0 */
}

static int pg_apply_migration(PGconn *conn, const struct schema_migration *migration)
{
    char sql[SCHEMA_STATEMENT_BYTES_MAX];
    int rc = pg_exec_simple(conn, "BEGIN");
    for (int i = 0; rc == 0 && migration->statements[i] != NULL; i++) {
        rc = schema_render(SCHEMA_POSTGRES, migration->statements[i], sql, sizeof sql);
        SVC_ASSERT(rc == 0);
        rc = pg_exec_simple(conn, sql);
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
    pg_idem_forget(s);
    pg_conn_close(&s->writer);
    for (int i = 0; i < PG_TEXTS_MAX; i++) {
        pg_text_free(&s->texts[i]);
    }
    free(s->found_body);
    free(s->gap_events);
    free(s);
}

int store_pg_open(struct store **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    if (strlen(uri) >= PG_URI_BYTES_MAX) {
        log_error("postgres: the uri is longer than %d bytes", PG_URI_BYTES_MAX - 1);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    struct pg_store *s = calloc(1, sizeof *s);
    if (s == NULL ||
        (s->gap_events = calloc(STORE_GAP_EVENTS_MAX, sizeof *s->gap_events)) == NULL) {
        free(s);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->base.ops = &store_pg_ops;
    pg_conn_init(&s->writer, uri, "writer", pg_statements, 0, false);
    /* Migrate on a plain connection first: the statements prepare only against the schema. */
    int rc = pg_conn_ready(&s->writer);
    if (rc == 0) {
        rc = pg_migrate(s->writer.conn);
    }
    pg_conn_close(&s->writer);
    pg_conn_init(&s->writer, uri, "writer", pg_statements, PG_STMT_COUNT, true);
    rc = rc == 0 ? pg_conn_ready(&s->writer) : rc;
    if (rc != 0) {
        log_error("postgres: cannot open the database");
        pg_close(&s->base);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    *out = &s->base;
    return 0;
}

/* ---- loading and prefetching ------------------------------------------------------------ */

/* Hands rows of a stores / products / items / reservations / lines result to loader. */
static int pg_feed_stores(const PGresult *r, const struct store_loader *loader)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = loader->on_store(loader->context, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                              pg_int(r, i, 2));
    }
    return rc;
}

static int pg_feed_products(const PGresult *r, const struct store_loader *loader)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = loader->on_product(loader->context, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    }
    return rc;
}

static int pg_feed_items(const PGresult *r, const struct store_loader *loader)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = loader->on_item(loader->context, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                             pg_int(r, i, 2), pg_int(r, i, 3), pg_int(r, i, 4), pg_int(r, i, 5),
                             pg_int(r, i, 6));
    }
    return rc;
}

/* Reservations (PG_RES_COLUMNS, created_at_ms) then their lines. With only_active false (a
 * prepare), the ended ones go to on_reservation_ended. */
static int pg_feed_reservations(const PGresult *r, const PGresult *lines,
                                const struct store_loader *loader, bool only_active)
{
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        int64_t seq = pg_int(r, i, 0);
        if (strcmp(PQgetvalue(r, i, 3), "ACTIVE") != 0) {
            SVC_ASSERT(!only_active);
            rc = loader->on_reservation_ended(loader->context, seq);
            continue;
        }
        rc = loader->on_reservation(loader->context, seq, PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                                    pg_int(r, i, 4), pg_int(r, i, 5), pg_int(r, i, 6));
    }
    for (int i = 0; rc == 0 && i < PQntuples(lines); i++) {
        rc = loader->on_reservation_line(loader->context, pg_int(lines, i, 0),
                                         PQgetvalue(lines, i, 1), pg_int(lines, i, 2));
    }
    return rc;
}

static void pg_sequences(const PGresult *r, struct store_sequences *out)
{
    SVC_ASSERT(PQntuples(r) == 1);
    out->order_seq_max = pg_int(r, 0, 0);
    out->event_seq_max = pg_int(r, 0, 1);
    out->reservation_seq_max = pg_int(r, 0, 2);
}

/* Sends statements (no parameters) and checks every result. 0 or SVC_ESTORAGE_UNAVAILABLE. */
static int pg_run(struct pg_store *s, const enum pg_stmt *which, int count, PGresult **results)
{
    int rc = pg_conn_ready(&s->writer);
    for (int i = 0; rc == 0 && i < count; i++) {
        rc = pg_send(&s->writer, which[i], 0, NULL);
    }
    rc = rc == 0 ? pg_round_trip(&s->writer, results, count) : rc;
    for (int i = 0; rc == 0 && i < count; i++) {
        if (!pg_result_ok(results[i])) {
            log_error("postgres: %s: %s", pg_statements[which[i]].name,
                      PQresultErrorMessage(results[i]));
            pg_results_clear(results, count);
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    return rc;
}

static int pg_load(struct store *base, const struct store_loader *loader,
                   struct store_sequences *out)
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
    PGresult *r[COUNT];
    int rc = pg_run(s, which, COUNT, r); /* one snapshot: REPEATABLE READ not needed, the
                                          * sequencer is not held, so read in one transaction */
    if (rc != 0) {
        return rc;
    }
    rc = pg_feed_stores(r[1], loader);
    rc = rc == 0 ? pg_feed_products(r[2], loader) : rc;
    rc = rc == 0 ? pg_feed_items(r[3], loader) : rc;
    if (rc == 0 && loader->on_reservation != NULL) {
        rc = pg_feed_reservations(r[4], r[5], loader, true);
    }
    if (rc == 0) {
        pg_sequences(r[6], out);
    }
    pg_results_clear(r, COUNT);
    return rc;
}

/* The parameters of the prepare round trip, built from keys. */
struct pg_prepare_params {
    const char *item_stores;
    const char *item_skus;
    const char *reservations;
    const char *stores;
    const char *skus;
    const char *idem_principals;
    const char *idem_keys;
    const char *events_after;
};

static void pg_prepare_params(struct pg_store *s, const struct store_batch_keys *keys,
                              struct pg_prepare_params *out)
{
    struct pg_text *item_stores = pg_param(s);
    struct pg_text *item_skus = pg_param(s);
    pg_array_begin(item_stores);
    pg_array_begin(item_skus);
    for (size_t i = 0; i < keys->item_count; i++) {
        pg_array_text(item_stores, keys->items[i].store_id);
        pg_array_text(item_skus, keys->items[i].sku);
    }
    struct pg_text *reservations = pg_param(s);
    pg_array_begin(reservations);
    for (size_t i = 0; i < keys->reservation_count; i++) {
        pg_array_int(reservations, keys->reservation_seqs[i]);
    }
    struct pg_text *stores = pg_param(s);
    pg_array_begin(stores);
    for (size_t i = 0; i < keys->store_count; i++) {
        pg_array_text(stores, keys->store_ids[i]);
    }
    struct pg_text *skus = pg_param(s);
    pg_array_begin(skus);
    for (size_t i = 0; i < keys->sku_count; i++) {
        pg_array_text(skus, keys->skus[i]);
    }
    struct pg_text *principals = pg_param(s);
    struct pg_text *idem_keys = pg_param(s);
    pg_array_begin(principals);
    pg_array_begin(idem_keys);
    for (size_t i = 0; i < keys->idem_count; i++) {
        pg_array_text(principals, keys->idems[i].principal);
        pg_array_text(idem_keys, keys->idems[i].key);
    }
    struct pg_text *all[] = {item_stores, item_skus,  reservations, stores,
                             skus,        principals, idem_keys};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        pg_array_end(all[i]);
    }
    struct pg_text *events_after = pg_param(s);
    pg_text_int(events_after, keys->events_after);
    *out = (struct pg_prepare_params){item_stores->data, item_skus->data,   reservations->data,
                                      stores->data,      skus->data,        principals->data,
                                      idem_keys->data,   events_after->data};
}

enum pg_prepare_result {
    PG_PREP_BEGIN,
    PG_PREP_SEQUENCER,
    PG_PREP_ITEMS,
    PG_PREP_RESERVATIONS,
    PG_PREP_LINES,
    PG_PREP_STORES,
    PG_PREP_PRODUCTS,
    PG_PREP_IDEMS,
    PG_PREP_SEQUENCES,
    PG_PREP_GAP_EVENTS,
    PG_PREP_COUNT
};

static int pg_prepare_send(struct pg_store *s, const struct pg_prepare_params *p)
{
    struct pg_conn *c = &s->writer;
    const char *items[] = {p->item_stores, p->item_skus, p->reservations};
    const char *by_seq[] = {p->reservations};
    const char *stores[] = {p->stores, p->reservations};
    const char *skus[] = {p->skus, p->reservations};
    const char *idems[] = {p->idem_principals, p->idem_keys};
    int rc = pg_send(c, PG_STMT_BEGIN, 0, NULL);
    rc = rc == 0 ? pg_send(c, PG_STMT_SEQUENCER, 0, NULL) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_LOCK_ITEMS, 3, items) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_LOCK_RESERVATIONS, 1, by_seq) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_RESERVATION_LINES, 1, by_seq) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_STORES, 2, stores) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_PRODUCTS, 2, skus) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_IDEMS, 2, idems) : rc;
    rc = rc == 0 ? pg_send(c, PG_STMT_SEQUENCES, 0, NULL) : rc;
    const char *after[] = {p->events_after};
    rc = rc == 0 ? pg_send(c, PG_STMT_GAP_EVENTS, 1, after) : rc;
    return rc;
}

/* Hands the events of other instances (a GAP_EVENTS result) to fresh->on_events. */
static void pg_feed_gap_events(struct pg_store *s, const PGresult *r,
                               const struct store_loader *fresh)
{
    int n = PQntuples(r);
    SVC_ASSERT(n <= STORE_GAP_EVENTS_MAX);
    for (int i = 0; i < n; i++) {
        pg_row_event(r, i, &s->gap_events[i]);
        SVC_ASSERT(i == 0 || s->gap_events[i].seq > s->gap_events[i - 1].seq);
    }
    if (n > 0) {
        fresh->on_events(fresh->context, s->gap_events, (size_t)n);
    }
}

/* Reports the reservations of keys that have no row at all as ended. */
static int pg_missing_reservations(const PGresult *found, const struct store_batch_keys *keys,
                                   const struct store_loader *fresh)
{
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < keys->reservation_count; k++) {
        bool present = false;
        for (int i = 0; !present && i < PQntuples(found); i++) {
            present = pg_int(found, i, 0) == keys->reservation_seqs[k];
        }
        if (!present) {
            rc = fresh->on_reservation_ended(fresh->context, keys->reservation_seqs[k]);
        }
    }
    return rc;
}

static int pg_prepare_batch(struct store *base, const struct store_batch_keys *keys,
                            const struct store_loader *fresh, struct store_sequences *out)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(keys->idem_count <= BATCH_COMMANDS_MAX);
    if (s->in_transaction) {
        pg_abort(s); /* a batch that was prepared but never committed */
    }
    pg_idem_forget(s);
    s->text_used = 0;
    struct pg_prepare_params params;
    pg_prepare_params(s, keys, &params);
    PGresult *r[PG_PREP_COUNT];
    int rc = pg_conn_ready(&s->writer);
    rc = rc == 0 ? pg_prepare_send(s, &params) : rc;
    rc = rc == 0 ? pg_round_trip(&s->writer, r, PG_PREP_COUNT) : rc;
    if (rc != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->in_transaction = true;
    s->transaction_connect = s->writer.connects;
    for (int i = 0; rc == 0 && i < PG_PREP_COUNT; i++) {
        if (!pg_result_ok(r[i])) {
            log_error("postgres: prepare batch: %s", PQresultErrorMessage(r[i]));
            rc = SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    rc = rc == 0 ? pg_feed_stores(r[PG_PREP_STORES], fresh) : rc;
    rc = rc == 0 ? pg_feed_products(r[PG_PREP_PRODUCTS], fresh) : rc;
    rc = rc == 0 ? pg_feed_items(r[PG_PREP_ITEMS], fresh) : rc;
    rc = rc == 0 ? pg_feed_reservations(r[PG_PREP_RESERVATIONS], r[PG_PREP_LINES], fresh, false)
                 : rc;
    rc = rc == 0 ? pg_missing_reservations(r[PG_PREP_RESERVATIONS], keys, fresh) : rc;
    if (rc == 0) {
        pg_sequences(r[PG_PREP_SEQUENCES], out);
        pg_feed_gap_events(s, r[PG_PREP_GAP_EVENTS], fresh);
        pg_idem_index(s, r[PG_PREP_IDEMS]);
        r[PG_PREP_IDEMS] = NULL; /* now owned by s */
    }
    pg_results_clear(r, PG_PREP_COUNT);
    if (rc != 0) {
        pg_abort(s);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 0;
}

/* ---- lookups ---------------------------------------------------------------------------- */

static void pg_found_copy(struct pg_store *s, const char *body, size_t length)
{
    if (length + 1 > s->found_body_size) {
        char *grown = realloc(s->found_body, length + 1); /* rare: replays only */
        SVC_ASSERT(grown != NULL);
        s->found_body = grown;
        s->found_body_size = length + 1;
    }
    memcpy(s->found_body, body, length);
    s->found_body[length] = '\0';
}

static int pg_idem_find(struct store *base, const char *principal, const char *key,
                        struct store_idem_found *out)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(s->idem_prefetched); /* the writer prepares every batch of a shared backend */
    const PGresult *rows = s->idem_rows;
    for (uint32_t slot = pg_idem_hash(principal, key); s->idem_slots[slot] != 0;
         slot = (slot + 1) & (PG_IDEM_SLOTS - 1)) {
        int row = s->idem_slots[slot] - 1;
        if (strcmp(PQgetvalue(rows, row, 0), principal) != 0 ||
            strcmp(PQgetvalue(rows, row, 1), key) != 0) {
            continue;
        }
        pg_found_copy(s, PQgetvalue(rows, row, 5), (size_t)PQgetlength(rows, row, 5));
        out->fingerprint = (uint64_t)pg_int(rows, row, 2);
        out->status = (int)pg_int(rows, row, 3);
        out->problem = pg_int(rows, row, 4) != 0;
        out->body = s->found_body;
        out->body_length = (size_t)PQgetlength(rows, row, 5);
        return 1;
    }
    return 0; /* the keys of the batch were all fetched: absent */
}

static int pg_reservation_status(struct store *base, int64_t seq, char status_out[16],
                                 int64_t *version_out)
{
    struct pg_store *s = (struct pg_store *)base;
    SVC_ASSERT(seq >= 1);
    char seq_text[24];
    snprintf(seq_text, sizeof seq_text, "%" PRId64, seq);
    const char *values[] = {seq_text};
    PGresult *r = pg_exec(&s->writer, PG_STMT_FIND_RESERVATION, 1, values);
    int rc = r != NULL ? 0 : SVC_ESTORAGE_UNAVAILABLE;
    if (rc == 0 && PQntuples(r) == 1) {
        snprintf(status_out, 16, "%s", PQgetvalue(r, 0, 0));
        *version_out = pg_int(r, 0, 1);
        rc = 1;
    }
    PQclear(r);
    return rc;
}

/* ---- the commit ------------------------------------------------------------------------- */

/* A statement of the commit round trip with its array parameters. */
struct pg_write {
    enum pg_stmt which;
    int count;
    const char *values[PG_PARAMS_MAX];
    int64_t rows; /* rows it must change (upserts guarded by version), or -1 */
};

/* Begins n array parameters of w. */
static void pg_write_begin(struct pg_store *s, struct pg_write *w, enum pg_stmt which, int n,
                           struct pg_text **texts)
{
    SVC_ASSERT(n <= PG_PARAMS_MAX);
    w->which = which;
    w->count = n;
    w->rows = -1;
    for (int i = 0; i < n; i++) {
        texts[i] = pg_param(s);
        pg_array_begin(texts[i]);
    }
}

static void pg_write_end(struct pg_write *w, struct pg_text **texts)
{
    for (int i = 0; i < w->count; i++) {
        pg_array_end(texts[i]);
        w->values[i] = texts[i]->data;
    }
}

static int pg_write_catalog(struct pg_store *s, const struct store_batch *b, struct pg_write *w)
{
    int n = 0;
    struct pg_text *t[PG_PARAMS_MAX];
    if (b->store_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_STORES, 4, t);
        for (size_t i = 0; i < b->store_count; i++) {
            pg_array_text(t[0], b->stores[i].store_id);
            pg_array_text(t[1], b->stores[i].name);
            pg_array_int(t[2], b->stores[i].latency_ms);
            pg_array_int(t[3], b->stores[i].created_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->product_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_PRODUCTS, 3, t);
        for (size_t i = 0; i < b->product_count; i++) {
            pg_array_text(t[0], b->products[i].sku);
            pg_array_text(t[1], b->products[i].name);
            pg_array_int(t[2], b->products[i].created_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->item_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_ITEMS, 7, t);
        for (size_t i = 0; i < b->item_count; i++) {
            const struct row_item *row = &b->items[i];
            SVC_ASSERT(row->reserved >= 0 && row->reserved <= row->on_hand);
            pg_array_text(t[0], row->store_id);
            pg_array_text(t[1], row->sku);
            int64_t numbers[] = {row->on_hand, row->reserved, row->version, row->sold,
                                 row->updated_at_ms};
            for (int k = 0; k < 5; k++) {
                pg_array_int(t[2 + k], numbers[k]);
            }
        }
        w[n].rows = (int64_t)b->item_count;
        pg_write_end(&w[n++], t);
    }
    return n;
}

static int pg_write_records(struct pg_store *s, const struct store_batch *b, struct pg_write *w)
{
    int n = 0;
    struct pg_text *t[PG_PARAMS_MAX];
    if (b->order_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_ORDERS, 7, t);
        for (size_t i = 0; i < b->order_count; i++) {
            const struct row_order *row = &b->orders[i];
            pg_array_int(t[0], row->order_seq);
            const char *texts[] = {row->customer_id, row->store_id, row->status, row->lines_json,
                                   row->history_json};
            for (int k = 0; k < 5; k++) {
                pg_array_text(t[1 + k], texts[k]);
            }
            pg_array_int(t[6], row->created_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->idem_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_IDEMS, 7, t);
        for (size_t i = 0; i < b->idem_count; i++) {
            const struct row_idem *row = &b->idems[i];
            pg_array_text(t[0], row->principal);
            pg_array_text(t[1], row->idem_key);
            pg_array_int(t[2], (int64_t)row->fingerprint);
            pg_array_int(t[3], row->status);
            pg_array_int(t[4], row->problem ? 1 : 0);
            pg_array_text_n(t[5], row->body, row->body_length);
            pg_array_int(t[6], row->created_at_ms);
        }
        pg_write_end(&w[n++], t);
    }
    if (b->event_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_EVENTS, 7, t);
        for (size_t i = 0; i < b->event_count; i++) {
            const struct row_event *row = &b->events[i];
            pg_array_int(t[0], row->seq);
            pg_array_text(t[1], row->event_type);
            pg_array_int(t[2], row->event_version);
            pg_array_int(t[3], row->occurred_at_ms);
            pg_array_text(t[4], row->store_id);
            pg_array_text(t[5], row->sku);
            pg_array_text(t[6], row->data_json);
        }
        pg_write_end(&w[n++], t);
    }
    return n;
}

static int pg_write_reservations(struct pg_store *s, const struct store_batch *b,
                                 struct pg_write *w)
{
    int n = 0;
    struct pg_text *t[PG_PARAMS_MAX];
    if (b->reservation_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_UPSERT_RESERVATIONS, 8, t);
        for (size_t i = 0; i < b->reservation_count; i++) {
            const struct row_reservation *row = &b->reservations[i];
            pg_array_int(t[0], row->reservation_seq);
            pg_array_text(t[1], row->store_id);
            pg_array_text(t[2], row->customer_id);
            pg_array_text(t[3], row->status);
            int64_t numbers[] = {row->expires_at_ms, row->version, row->created_at_ms,
                                 row->updated_at_ms};
            for (int k = 0; k < 4; k++) {
                pg_array_int(t[4 + k], numbers[k]);
            }
        }
        w[n].rows = (int64_t)b->reservation_count;
        pg_write_end(&w[n++], t);
    }
    if (b->reservation_line_count > 0) {
        pg_write_begin(s, &w[n], PG_STMT_INSERT_RESERVATION_LINES, 4, t);
        for (size_t i = 0; i < b->reservation_line_count; i++) {
            const struct row_reservation_line *row = &b->reservation_lines[i];
            pg_array_int(t[0], row->reservation_seq);
            pg_array_int(t[1], row->line_no);
            pg_array_text(t[2], row->sku);
            pg_array_int(t[3], row->qty);
        }
        pg_write_end(&w[n++], t);
    }
    return n;
}

/* The answer of the commit round trip: 0, STORE_COMMIT_RETRY or SVC_ESTORAGE_UNAVAILABLE. */
static int pg_commit_verdict(const struct pg_write *w, PGresult **r, int count)
{
    for (int i = 0; i < count; i++) {
        if (!pg_result_ok(r[i])) {
            const char *state = pg_result_state(r[i]);
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
    SVC_ASSERT(s->in_transaction); /* store_prepare_batch opened it */
    pg_idem_forget(s);
    if (s->writer.conn == NULL || s->writer.connects != s->transaction_connect) {
        /* The connection broke since the prepare (a lookup during apply reconnected): the
         * locks and fresh reads are gone with it, so nothing may be written on the new one. */
        s->in_transaction = false;
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    s->text_used = 0;
    struct pg_write w[PG_PIPELINE_MAX];
    int n = pg_write_catalog(s, batch, w);
    n += pg_write_records(s, batch, w + n);
    n += pg_write_reservations(s, batch, w + n);
    struct pg_text *seq_text = pg_param(s);
    if (batch->event_count > 0) {
        pg_text_int(seq_text, batch->events[batch->event_count - 1].seq);
        w[n++] = (struct pg_write){PG_STMT_NOTIFY, 1, {seq_text->data}, -1};
    }
    w[n++] = (struct pg_write){PG_STMT_COMMIT, 0, {NULL}, -1};
    SVC_ASSERT(n <= PG_PIPELINE_MAX);
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = pg_send(&s->writer, w[i].which, w[i].count, w[i].values);
    }
    PGresult *r[PG_PIPELINE_MAX];
    rc = rc == 0 ? pg_round_trip(&s->writer, r, n) : rc;
    s->in_transaction = false;
    if (rc != 0) {
        return SVC_ESTORAGE_UNAVAILABLE; /* the connection broke: in doubt until re-read */
    }
    rc = pg_commit_verdict(w, r, n);
    bool rolled_back = rc != 0 && PQtransactionStatus(s->writer.conn) != PQTRANS_IDLE;
    pg_results_clear(r, n);
    if (rolled_back) {
        s->in_transaction = true;
        pg_abort(s);
    }
    return rc;
}

static void pg_batch_done(struct store *base)
{
    (void)base; /* PostgreSQL checkpoints by itself */
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
    *out = pg_exec(&s->writer, which, 2, values);
    return *out != NULL ? 0 : SVC_ESTORAGE_UNAVAILABLE;
}

static int pg_idem_prune(struct store *base, int64_t before_ms, int max_rows)
{
    PGresult *r = NULL;
    int rc = pg_run_limited((struct pg_store *)base, PG_STMT_PRUNE_IDEM, before_ms, max_rows, &r);
    if (rc == 0) {
        rc = (int)strtol(PQcmdTuples(r), NULL, 10);
    }
    PQclear(r);
    return rc;
}

static int pg_reservations_due(struct store *base, int64_t before_ms, int64_t *out, int max)
{
    PGresult *r = NULL;
    int rc = pg_run_limited((struct pg_store *)base, PG_STMT_RESERVATIONS_DUE, before_ms, max, &r);
    for (int i = 0; rc >= 0 && r != NULL && i < PQntuples(r) && i < max; i++) {
        out[rc++] = pg_int(r, i, 0);
    }
    PQclear(r);
    return rc;
}

const struct store_ops store_pg_ops = {
    .name = "postgres",
    .close = pg_close,
    .load = pg_load,
    .prepare_batch = pg_prepare_batch,
    .idem_find = pg_idem_find,
    .reservation_status = pg_reservation_status,
    .commit_batch = pg_commit_batch,
    .batch_done = pg_batch_done,
    .idem_prune = pg_idem_prune,
    .reservations_due = pg_reservations_due,
    .reader_close = pg_reader_close,
    .reader_order_json = pg_reader_order_json,
    .reader_events = pg_reader_events,
    .reader_items = pg_reader_items,
    .reader_event_seq_max = pg_reader_event_seq_max,
    .reader_idem = pg_reader_idem,
    .reader_wait = pg_reader_wait,
};
