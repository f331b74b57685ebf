/*
 * store_open.c - opens a backend of store.h by uri (see store_open.h).
 *
 * The one file that includes the backend headers: everything above the store layer gets a
 * struct store or store_reader from here and talks to it through store.h only. This file is
 * not a backend and forwards nothing after the open (store.c does). Read store_sqlite.h next.
 */
#include "store/store_open.h"

#include <stddef.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "store/store_pg.h"
#include "store/store_sqlite.h"

/* Tells a PostgreSQL uri from a SQLite path (see store_open.h); called by main and tests. */
bool store_uri_is_postgres(const char *uri)
{
    SVC_ASSERT(uri != NULL);
    static const char *const schemes[] = {"postgres://", "postgresql://"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        if (strncmp(uri, schemes[i], strlen(schemes[i])) == 0) {
            return true;
        }
    }
    return false;
}

/* Opens the writer handle (see store_open.h); called once by main. */
int store_open(struct store **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    *out = NULL;
    int rc = store_uri_is_postgres(uri) ? store_pg_open(out, uri) : store_sqlite_open(out, uri);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    if (rc == 0) {
        SVC_ASSERT(*out != NULL && (*out)->ops != NULL && !(*out)->applying);
        SVC_ASSERT((*out)->ops->prefetch != NULL && (*out)->ops->commit_batch != NULL);
    }
    return rc;
}

/* Opens a reader handle (see store_open.h); called by every thread that reads. */
int store_reader_open(struct store_reader **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    *out = NULL;
    int rc = store_uri_is_postgres(uri) ? store_pg_reader_open(out, uri)
                                        : store_sqlite_reader_open(out, uri);
    SVC_ASSERT(rc == 0 || rc == SVC_ESTORAGE_UNAVAILABLE);
    if (rc == 0) {
        SVC_ASSERT(*out != NULL && (*out)->ops != NULL);
        SVC_ASSERT((*out)->ops->order != NULL && (*out)->ops->events != NULL);
    }
    return rc;
}
