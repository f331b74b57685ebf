/*
 * store_open.h - opens a backend of store.h by uri.
 *
 * "postgres://..." and "postgresql://..." open the PostgreSQL backend (store_pg.h); anything
 * else is a SQLite file path (store_sqlite.h). This is the one file that knows every backend:
 * the writer, the readers and the read model get a struct store or store_reader from here and
 * never learn which backend they talk to, except through store_is_shared. Read store_sqlite.h
 * next.
 */
#ifndef STOCKD_STORE_OPEN_H
#define STOCKD_STORE_OPEN_H

#include <stdbool.h>

#include "store/store.h"

/* True when uri names a PostgreSQL database. */
bool store_uri_is_postgres(const char *uri);

/* Opens (creating if needed) the database named by uri and applies the schema. The caller
 * owns *out (store_close). 0 or SVC_ESTORAGE_UNAVAILABLE (detail logged). */
int store_open(struct store **out, const char *uri);

/* Opens a read-only handle on the same database for one thread. The caller owns *out
 * (store_reader_close). 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_open(struct store_reader **out, const char *uri);

#endif
