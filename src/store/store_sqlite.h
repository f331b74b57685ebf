/*
 * store_sqlite.h - opens the embedded SQLite backend of store.h on a file path.
 *
 * Only store_open.c includes this file: above the store layer a handle is a struct store or
 * store_reader and nothing more. It is not the backend's internals (store_sqlite_internal.h,
 * shared by its two files). Read store_sqlite.c next.
 */
#ifndef STOCKD_STORE_SQLITE_H
#define STOCKD_STORE_SQLITE_H

#include "store/store.h"

/* Opens (creating if needed) the SQLite database at path for the writer thread, applies the
 * schema migrations and starts the checkpointer thread. The caller owns *out (store_close).
 * 0 or SVC_ESTORAGE_UNAVAILABLE (detail logged). Called by store_open. */
int store_sqlite_open(struct store **out, const char *path);

/* Opens a read-only connection on the database at path for one thread. The caller owns *out
 * (store_reader_close). 0 or SVC_ESTORAGE_UNAVAILABLE. Called by store_reader_open. */
int store_sqlite_reader_open(struct store_reader **out, const char *path);

#endif
