/*
 * schema.h - the database schema, one place for every backend (migrations in order).
 *
 * Each migration is a list of statements applied in one transaction; the meta table records
 * the version reached. The constraints are the database's own guard against a bug in memory:
 * CHECK (on_hand >= 0, reserved >= 0, reserved <= on_hand), UNIQUE idempotency keys.
 *
 * This file is not where migrations run: each backend applies them (store_sqlite.c,
 * store_pg.c). Read schema.c next.
 */
#ifndef STOCKD_SCHEMA_H
#define STOCKD_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

struct schema_migration {
    int version;
    const char *const *statements; /* NULL-terminated */
    bool rewrites_schema;          /* SQLite: edits sqlite_schema (bump the cookie, reload after) */
};

/* The prefix of a statement that runs on SQLite only (rendered empty for the others). */
#define SCHEMA_SQLITE_ONLY "@SQLITE@"

enum schema_dialect {
    SCHEMA_SQLITE = 0,
    SCHEMA_POSTGRES,
    SCHEMA_DIALECT_COUNT,
};

/* Longest statement after rendering. */
#define SCHEMA_STATEMENT_BYTES_MAX 2048

extern const struct schema_migration schema_migrations[];
extern const int schema_migration_count;

/* Writes statement in dialect's spelling into out (size bytes). 0 or SVC_ECAPACITY. Called by
 * the backends' migrations and by tests that build an old schema. */
int schema_render(enum schema_dialect dialect, const char *statement, char *out, size_t size);

#endif
