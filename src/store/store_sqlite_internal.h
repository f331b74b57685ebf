/*
 * store_sqlite_internal.h - what the SQLite backend's two files share: logging a failure and
 * two column/parameter helpers, all defined in store_sqlite.c; and the text of the writer's
 * idempotency prefetch, exposed for its query-plan test.
 *
 * store_sqlite.c is the writer's handle (and the schema migrations and the checkpointer);
 * store_sqlite_reader.c the read-only handles. This file is not an interface for anything
 * outside them. Read store_sqlite_reader.c next.
 */
#ifndef STOCKD_STORE_SQLITE_INTERNAL_H
#define STOCKD_STORE_SQLITE_INTERNAL_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Logs what failed with SQLite's message for db and returns SVC_ESTORAGE_UNAVAILABLE, the
 * one answer of every SQLite failure (STYLE 9: the detail goes to the log only). */
int store_sqlite_fail(sqlite3 *db, const char *what);

/* Column `column` of the current row as text; "" when NULL. Valid until the next step or reset
 * of stmt. */
const char *store_sqlite_column_text(sqlite3_stmt *stmt, int column);

/* Binds text (SQLITE_STATIC: it must outlive the statement's run) or, for NULL, SQL NULL. */
void store_sqlite_bind_text(sqlite3_stmt *stmt, int index, const char *text);

/* Writes into out (size bytes) the text of the writer's idempotency prefetch for `pairs` key
 * pairs (parameters ?1, ?2 the first pair's principal and key, and so on). 0 or SVC_ECAPACITY.
 * Called at open, and by the test that checks its query plan. */
int store_sqlite_idem_prefetch_sql(size_t pairs, char *out, size_t size);

/* Installs the page cache of store_sqlite_pcache.c (once per process, before SQLite starts);
 * false when SQLite had started already and keeps its built-in cache. */
bool store_sqlite_pcache_install(void);

/* Truncates of the page cache passed on to SQLite's and skipped (nothing to drop) so far. */
void store_sqlite_pcache_counts(uint64_t *forwarded, uint64_t *skipped);

#endif
