/*
 * schema.c - the tables of stockd. See schema.h.
 *
 * Tables: stores, products, stock_items (one per store and sku), orders, idempotency (the
 * first response of every keyed command), events (the outbox: global seq, type, version,
 * time, store, sku, JSON data). Migration 1 also creates the default store S1, with its event,
 * because DESIGN.md says a fresh database has one.
 */
#include "schema.h"

#include <stddef.h>

static const char *const schema_v1_sqlite[] = {
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stores ("
    " store_id TEXT PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " latency_ms INTEGER NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),"
    " created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE products ("
    " sku TEXT PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE stock_items ("
    " store_id TEXT NOT NULL REFERENCES stores (store_id),"
    " sku TEXT NOT NULL REFERENCES products (sku),"
    " on_hand INTEGER NOT NULL CHECK (on_hand >= 0),"
    " reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),"
    " version INTEGER NOT NULL CHECK (version >= 1),"
    " sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),"
    " updated_at_ms INTEGER NOT NULL,"
    " CHECK (reserved <= on_hand),"
    " PRIMARY KEY (store_id, sku)) WITHOUT ROWID",
    "CREATE TABLE orders ("
    " order_seq INTEGER PRIMARY KEY CHECK (order_seq >= 1),"
    " customer_id TEXT NOT NULL,"
    " store_id TEXT NOT NULL,"
    " status TEXT NOT NULL,"
    " lines TEXT NOT NULL,"
    " history TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE idempotency ("
    " principal TEXT NOT NULL,"
    " idem_key TEXT NOT NULL,"
    " fingerprint INTEGER NOT NULL,"
    " status INTEGER NOT NULL,"
    " problem INTEGER NOT NULL CHECK (problem IN (0, 1)),"
    " body TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " PRIMARY KEY (principal, idem_key)) WITHOUT ROWID",
    "CREATE INDEX idempotency_created ON idempotency (created_at_ms)",
    "CREATE TABLE events ("
    " seq INTEGER PRIMARY KEY CHECK (seq >= 1),"
    " event_type TEXT NOT NULL,"
    " event_version INTEGER NOT NULL,"
    " occurred_at_ms INTEGER NOT NULL,"
    " store_id TEXT,"
    " sku TEXT,"
    " data TEXT NOT NULL)",
    "INSERT INTO stores (store_id, name, latency_ms, created_at_ms)"
    " VALUES ('S1', 'Store 1', 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
    "INSERT INTO events (seq, event_type, event_version, occurred_at_ms, store_id, sku, data)"
    " VALUES (1, 'StoreCreated', 1,"
    " CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'S1', NULL,"
    " '{\"storeId\":\"S1\",\"name\":\"Store 1\",\"latencyMs\":0}')",
    NULL,
};

/* Reservations with TTL (issue 4): the reservation and its lines; ACTIVE ones are loaded
 * into memory at start, the others are kept for lookups and history. */
static const char *const schema_v2_sqlite[] = {
    "CREATE TABLE reservations ("
    " reservation_seq INTEGER PRIMARY KEY CHECK (reservation_seq >= 1),"
    " store_id TEXT NOT NULL REFERENCES stores (store_id),"
    " customer_id TEXT NOT NULL,"
    " status TEXT NOT NULL"
    "  CHECK (status IN ('ACTIVE', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),"
    " expires_at_ms INTEGER NOT NULL,"
    " version INTEGER NOT NULL CHECK (version >= 1),"
    " created_at_ms INTEGER NOT NULL,"
    " updated_at_ms INTEGER NOT NULL)",
    "CREATE INDEX reservations_active ON reservations (status) WHERE status = 'ACTIVE'",
    "CREATE TABLE reservation_lines ("
    " reservation_seq INTEGER NOT NULL REFERENCES reservations (reservation_seq),"
    " line_no INTEGER NOT NULL,"
    " sku TEXT NOT NULL REFERENCES products (sku),"
    " qty INTEGER NOT NULL CHECK (qty >= 1),"
    " PRIMARY KEY (reservation_seq, line_no)) WITHOUT ROWID",
    NULL,
};

const struct schema_migration schema_migrations_sqlite[] = {
    {1, schema_v1_sqlite},
    {2, schema_v2_sqlite},
};

const int schema_migration_count_sqlite =
    (int)(sizeof schema_migrations_sqlite / sizeof schema_migrations_sqlite[0]);
