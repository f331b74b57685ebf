/*
 * schema.c - the tables of stockd. See schema.h.
 *
 * One text for both backends: @INT@, @WITHOUT_ROWID@ and @BODY_ORDER_ID@ are spelled per
 * dialect by schema_render, and a statement that starts with @SQLITE@ runs on SQLite only.
 * Tables: stores, products, stock_items (one per store and sku), orders, idempotency (the
 * first response of every keyed command, with its Location header since migration 4), events
 * (the outbox: global seq, type, version, time, store, sku, JSON data), reservations and their
 * lines (migration 2), the sequencer row (migration 3), the read model's snapshots (migration
 * 5), checkout orders and the workers' offsets (migration 6), the dead-letter table
 * (migration 7), the outbox relay's positions (migration 8), the workers' leases (migration
 * 9), the reservations' CHECKs spelled for SQLite's speed (migration 10). Besides the
 * sequencer row the schema holds no data: the default store S1 of a fresh database
 * (DESIGN.md) is made by the writer's first batch (core/writer.c), so that its event comes
 * from the catalogue like every other.
 *
 * This file runs no SQL: each backend applies the migrations in order (store_sqlite.c,
 * store_pg.c). Read core/writer.h next: the layer above.
 */
#include "store/schema.h"

#include <stddef.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"

static const char *const schema_v1[] = {
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stores ("
    " store_id TEXT PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " latency_ms @INT@ NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),"
    " created_at_ms @INT@ NOT NULL)",
    "CREATE TABLE products ("
    " sku TEXT PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " created_at_ms @INT@ NOT NULL)",
    "CREATE TABLE stock_items ("
    " store_id TEXT NOT NULL REFERENCES stores (store_id),"
    " sku TEXT NOT NULL REFERENCES products (sku),"
    " on_hand @INT@ NOT NULL CHECK (on_hand >= 0),"
    " reserved @INT@ NOT NULL DEFAULT 0 CHECK (reserved >= 0),"
    " version @INT@ NOT NULL CHECK (version >= 1),"
    " sold @INT@ NOT NULL DEFAULT 0 CHECK (sold >= 0),"
    " updated_at_ms @INT@ NOT NULL,"
    " CHECK (reserved <= on_hand),"
    " PRIMARY KEY (store_id, sku))@WITHOUT_ROWID@",
    "CREATE TABLE orders ("
    " order_seq @INT@ PRIMARY KEY CHECK (order_seq >= 1),"
    " customer_id TEXT NOT NULL,"
    " store_id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " lines TEXT NOT NULL,"
    " history TEXT NOT NULL,"
    " created_at_ms @INT@ NOT NULL)",
    "CREATE TABLE idempotency ("
    " principal TEXT NOT NULL,"
    " idem_key TEXT NOT NULL,"
    " fingerprint @INT@ NOT NULL,"
    " status @INT@ NOT NULL,"
    " problem @INT@ NOT NULL CHECK (problem IN (0, 1)),"
    " body TEXT NOT NULL,"
    " created_at_ms @INT@ NOT NULL,"
    " PRIMARY KEY (principal, idem_key))@WITHOUT_ROWID@",
    "CREATE INDEX idempotency_created ON idempotency (created_at_ms)",
    "CREATE TABLE events ("
    " seq @INT@ PRIMARY KEY CHECK (seq >= 1),"
    " event_type TEXT NOT NULL,"
    " event_version @INT@ NOT NULL,"
    " occurred_at_ms @INT@ NOT NULL,"
    " store_id TEXT,"
    " sku TEXT,"
    " data TEXT NOT NULL)",
    NULL,
};

/* Reservations with TTL (issue 4): the reservation and its lines; ACTIVE ones are loaded
 * into memory at start, the others are kept for lookups and history. */
static const char *const schema_v2[] = {
    "CREATE TABLE reservations ("
    " reservation_seq @INT@ PRIMARY KEY CHECK (reservation_seq >= 1),"
    " store_id TEXT NOT NULL REFERENCES stores (store_id),"
    " customer_id TEXT NOT NULL,"
    " status TEXT NOT NULL"
    "  CHECK (status IN ('ACTIVE', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),"
    " expires_at_ms @INT@ NOT NULL,"
    " version @INT@ NOT NULL CHECK (version >= 1),"
    " created_at_ms @INT@ NOT NULL,"
    " updated_at_ms @INT@ NOT NULL)",
    "CREATE INDEX reservations_active ON reservations (status) WHERE status = 'ACTIVE'",
    "CREATE TABLE reservation_lines ("
    " reservation_seq @INT@ NOT NULL REFERENCES reservations (reservation_seq),"
    " line_no @INT@ NOT NULL,"
    " sku TEXT NOT NULL REFERENCES products (sku),"
    " qty @INT@ NOT NULL CHECK (qty >= 1),"
    " PRIMARY KEY (reservation_seq, line_no))@WITHOUT_ROWID@",
    NULL,
};

/* Several instances on one database (issue 5): the one row every batch of a shared backend
 * locks first, so that batches of all instances commit in one order and event seqs are
 * gap-free in commit order (store_pg.c). A plain row lock, not an advisory lock, so that a
 * PostgreSQL-compatible distributed engine serves as well. SQLite never reads it. */
static const char *const schema_v3[] = {
    "CREATE TABLE sequencer (id @INT@ PRIMARY KEY CHECK (id = 1))",
    "INSERT INTO sequencer (id) VALUES (1)",
    NULL,
};

/* The first response's Location header, stored with its idempotency record (issue 9), so that
 * the writer answers a replay from the record alone. Records stored before this migration get
 * the Location of a purchase back from its body (a 201 whose body starts with the orderId:
 * "/v1/orders/<orderId>", as the writer formats it); the others had no Location and keep NULL.
 * The writer formats every 201 purchase body as JSON, so the extraction never fails on one. */
static const char *const schema_v4[] = {
    "ALTER TABLE idempotency ADD COLUMN location TEXT",
    "UPDATE idempotency SET location = '/v1/orders/' || @BODY_ORDER_ID@"
    " WHERE status = 201 AND body LIKE '{\"orderId\":\"ord_%'",
    NULL,
};

/* Snapshots of the read model (issue 10): the projection as it stood after event seq, encoded
 * by read/projector_snapshot.c in its format version, so that a start replays only the events
 * after the newest valid one. The row is the unit of atomicity: the body and the seq it
 * covers are written together, in one transaction, and the log below seq never changes. A
 * start ignores (and logs) a row of a format it does not know or whose checks fail. */
static const char *const schema_v5[] = {
    "CREATE TABLE snapshots ("
    " seq @INT@ PRIMARY KEY CHECK (seq >= 0),"
    " format @INT@ NOT NULL CHECK (format >= 1),"
    " created_at_ms @INT@ NOT NULL,"
    " body @BLOB@ NOT NULL)",
    NULL,
};

/* Checkout orders that move through workers (issue 11). An order row keeps its hold's
 * reservation and its TTL; a reservation that holds an order's stock keeps the order's state
 * while ACTIVE (PENDING, CONFIRMED, PAYING: a charge in doubt) and its payment attempts, so
 * that the writer loads live orders with their reservations. Each stage of the workers stores
 * its offset in the event log here, in the same transaction as the effects it caused. */
static const char *const schema_v6[] = {
    "ALTER TABLE orders ADD COLUMN reservation_seq @INT@",
    "ALTER TABLE orders ADD COLUMN expires_at_ms @INT@",
    "ALTER TABLE orders ADD COLUMN updated_at_ms @INT@",
    "ALTER TABLE reservations ADD COLUMN order_seq @INT@ NOT NULL DEFAULT 0",
    "ALTER TABLE reservations ADD COLUMN order_status TEXT"
    " CHECK (order_status IN ('PENDING', 'CONFIRMED', 'PAYING'))",
    "ALTER TABLE reservations ADD COLUMN pay_attempts @INT@ NOT NULL DEFAULT 0"
    " CHECK (pay_attempts >= 0)",
    "CREATE TABLE worker_offsets ("
    " stage TEXT PRIMARY KEY,"
    " event_seq @INT@ NOT NULL CHECK (event_seq >= 0),"
    " updated_at_ms @INT@ NOT NULL)",
    NULL,
};

/* The dead-letter table (issue 11): the work items that exhausted their attempts, one row per
 * stage and order, written by the writer with the order's DeadLettered event and deleted with
 * its replay (OrderPaymentReplayed). first_failed_at_ms is kept when an order that was
 * replayed is dead-lettered again. */
static const char *const schema_v7[] = {
    "CREATE TABLE dead_letters ("
    " stage TEXT NOT NULL,"
    " order_seq @INT@ NOT NULL CHECK (order_seq >= 1),"
    " reservation_seq @INT@ NOT NULL CHECK (reservation_seq >= 1),"
    " error TEXT NOT NULL,"
    " attempts @INT@ NOT NULL CHECK (attempts >= 0),"
    " first_failed_at_ms @INT@ NOT NULL,"
    " last_failed_at_ms @INT@ NOT NULL,"
    " PRIMARY KEY (stage, order_seq))",
    NULL,
};

/* The outbox relay's durable positions (issue 12): per relay, the last event seq the broker
 * confirmed (every event up to it is in the stream), advanced only after the confirm. */
static const char *const schema_v8[] = {
    "CREATE TABLE relay_offsets ("
    " name TEXT PRIMARY KEY,"
    " seq @INT@ NOT NULL CHECK (seq >= 0),"
    " updated_at_ms @INT@ NOT NULL)",
    NULL,
};

/* The workers' leases (issue 11): one row per stage (order, payment), so that of several
 * instances on one database one runs each stage. The holder names an instance; the token goes
 * up by one at every acquisition and fences a holder that lost the lease: the writer refuses a
 * step whose token is not the stage's current one (work/work.h). The times are the database's
 * clock (PostgreSQL), not the instances'. SQLite, one process by nature, never writes it. */
static const char *const schema_v9[] = {
    "CREATE TABLE worker_leases ("
    " stage TEXT PRIMARY KEY,"
    " holder TEXT NOT NULL,"
    " token @INT@ NOT NULL CHECK (token >= 1),"
    " expires_at_ms @INT@ NOT NULL,"
    " acquired_at_ms @INT@ NOT NULL)",
    NULL,
};

/* The reservations' CHECKs of migrations 2 and 6 as comparisons (SQLite only). SQLite codes
 * a constant IN list of more than two values as an ephemeral index built at every execution
 * of a statement that checks it: the writer's reservation upsert opened and closed four
 * temporary B-trees per row (a third of the writer's time with checkout orders). The same
 * rule spelled with OR and = is checked in place. SQLite keeps a table's CHECKs only in the
 * text of its CREATE statement, so the text is rewritten as its documented procedure for
 * changing a CHECK without changing the file's format (writable_schema; the backend then
 * bumps the schema cookie and reloads: rewrites_schema). PostgreSQL keeps its IN lists. */
static const char *const schema_v10[] = {
    "@SQLITE@PRAGMA writable_schema = ON",
    "@SQLITE@UPDATE sqlite_schema SET sql = replace(replace(sql,"
    " 'CHECK (status IN (''ACTIVE'', ''CONFIRMED'', ''CANCELLED'', ''EXPIRED''))',"
    " 'CHECK (status = ''ACTIVE'' OR status = ''CONFIRMED'' OR status = ''CANCELLED''"
    " OR status = ''EXPIRED'')'),"
    " 'CHECK (order_status IN (''PENDING'', ''CONFIRMED'', ''PAYING''))',"
    " 'CHECK (order_status = ''PENDING'' OR order_status = ''CONFIRMED''"
    " OR order_status = ''PAYING'')')"
    " WHERE type = 'table' AND name = 'reservations'",
    NULL,
};

/* Asynchronous intake (issue 12): the messages of the stream of commands that the consumer
 * cannot decode, one row per stage and stream offset (the message's x-stream-offset), written
 * by the writer in the batch that stores the consumer's offset past them. attempts counts how
 * often the message was seen (a restart may read it again). GET /v1/dlt lists them with the
 * orders' dead letters of table dead_letters, which are keyed by order. */
static const char *const schema_v11[] = {
    "CREATE TABLE stream_dead_letters ("
    " stage TEXT NOT NULL,"
    " stream_offset @INT@ NOT NULL CHECK (stream_offset >= 0),"
    " error TEXT NOT NULL,"
    " attempts @INT@ NOT NULL CHECK (attempts >= 1),"
    " first_failed_at_ms @INT@ NOT NULL,"
    " last_failed_at_ms @INT@ NOT NULL,"
    " PRIMARY KEY (stage, stream_offset))",
    NULL,
};

/* Replay of the stream's dead letters (issue 12): the message as it came, so that POST
 * /v1/dlt/replay can publish it to the stream again (message_id, message_type, principal: its
 * message-id, type and principal header; body; NULL when absent or not kept, as in every row
 * written before this migration), and replayed_at_ms, set by the replay after the broker's
 * confirm: GET /v1/dlt lists only the rows without it. Bytes, not TEXT: a message that cannot
 * be decoded may be no UTF-8 at all, which PostgreSQL's TEXT refuses. */
static const char *const schema_v12[] = {
    "ALTER TABLE stream_dead_letters ADD COLUMN message_id @BLOB@",
    "ALTER TABLE stream_dead_letters ADD COLUMN message_type @BLOB@",
    "ALTER TABLE stream_dead_letters ADD COLUMN principal @BLOB@",
    "ALTER TABLE stream_dead_letters ADD COLUMN body @BLOB@",
    "ALTER TABLE stream_dead_letters ADD COLUMN replayed_at_ms @INT@",
    NULL,
};

/* Idempotency records without their second index (issue 14): every purchase paid for an entry
 * in idempotency_created (about a tenth of SQLite's closed-loop throughput on one hot SKU). The
 * writer's prune now sweeps the table in key order instead (store.h, store_idem_prune). */
static const char *const schema_v13[] = {
    "DROP INDEX IF EXISTS idempotency_created",
    NULL,
};

const struct schema_migration schema_migrations[] = {
    {1, schema_v1, false},   {2, schema_v2, false},   {3, schema_v3, false},
    {4, schema_v4, false},   {5, schema_v5, false},   {6, schema_v6, false},
    {7, schema_v7, false},   {8, schema_v8, false},   {9, schema_v9, false},
    {10, schema_v10, true},  {11, schema_v11, false}, {12, schema_v12, false},
    {13, schema_v13, false},
};

const int schema_migration_count = (int)(sizeof schema_migrations / sizeof schema_migrations[0]);

/* The words the dialects spell differently; everything else is the same SQL. "INTEGER
 * PRIMARY KEY" is SQLite's rowid alias (the fast table layout); PostgreSQL's 64-bit integer is
 * BIGINT. */
static const struct {
    const char *token;
    const char *spelling[SCHEMA_DIALECT_COUNT];
} schema_tokens[] = {
    {"@INT@", {"INTEGER", "BIGINT"}},
    {"@WITHOUT_ROWID@", {" WITHOUT ROWID", ""}},
    {"@BLOB@", {"BLOB", "BYTEA"}},
    /* The orderId of an idempotency record's JSON body (migration 4). */
    {"@BODY_ORDER_ID@", {"json_extract(body, '$.orderId')", "(body::json ->> 'orderId')"}},
};

/* See schema.h; the one place the dialects' spellings are chosen. */
int schema_render(enum schema_dialect dialect, const char *statement, char *out, size_t size)
{
    SVC_ASSERT(dialect < SCHEMA_DIALECT_COUNT && size > 0);
    SVC_ASSERT(statement != NULL && out != NULL);
    size_t length = 0;
    const char *p = statement;
    if (strncmp(p, SCHEMA_SQLITE_ONLY, strlen(SCHEMA_SQLITE_ONLY)) == 0) {
        if (dialect != SCHEMA_SQLITE) {
            out[0] = '\0'; /* nothing to run: the backend skips an empty statement */
            return 0;
        }
        p += strlen(SCHEMA_SQLITE_ONLY);
    }
    while (*p != '\0') {
        const char *text = NULL;
        size_t consumed = 1;
        for (size_t t = 0; t < sizeof schema_tokens / sizeof schema_tokens[0]; t++) {
            size_t n = strlen(schema_tokens[t].token);
            if (strncmp(p, schema_tokens[t].token, n) == 0) {
                text = schema_tokens[t].spelling[dialect];
                consumed = n;
                break;
            }
        }
        size_t n = text != NULL ? strlen(text) : 1;
        if (length + n + 1 > size) {
            return SVC_ECAPACITY;
        }
        memcpy(out + length, text != NULL ? text : p, n);
        length += n;
        p += consumed;
    }
    out[length] = '\0';
    SVC_ASSERT(length < size);
    return 0;
}
