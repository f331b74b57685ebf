/*
 * schema.h - the database schema, one place for every backend (migrations in order).
 *
 * Each migration is a list of statements applied in one transaction; the meta table records
 * the version reached. The constraints are the database's own guard against a bug in memory:
 * CHECK (on_hand >= 0, reserved >= 0, reserved <= on_hand), UNIQUE idempotency keys.
 */
#ifndef STOCKD_SCHEMA_H
#define STOCKD_SCHEMA_H

struct schema_migration {
    int version;
    const char *const *statements; /* NULL-terminated */
};

extern const struct schema_migration schema_migrations_sqlite[];
extern const int schema_migration_count_sqlite;

#endif
