/*
 * store_pg.h - opens the PostgreSQL backend of store.h on a postgres:// uri.
 *
 * Only store_open.c includes this file: above the store layer a handle is a struct store or
 * store_reader and nothing more. It is not the backend's internals (store_pg_conn.h,
 * shared by its three files). Read store_pg_conn.h next.
 */
#ifndef STOCKD_STORE_PG_H
#define STOCKD_STORE_PG_H

#include "store/store.h"

/* Connects the writer to the database at uri and applies the schema migrations (once, under
 * an advisory lock, when several instances start together). The caller owns *out
 * (store_close). 0 or SVC_ESTORAGE_UNAVAILABLE (detail logged). Called by store_open. */
int store_pg_open(struct store **out, const char *uri);

/* Opens a read-only handle for one thread; it connects now (so that a wrong uri fails at
 * startup) and again by itself after PostgreSQL went away. The caller owns *out
 * (store_reader_close). 0 or SVC_ESTORAGE_UNAVAILABLE. Called by store_reader_open. */
int store_pg_reader_open(struct store_reader **out, const char *uri);

#endif
