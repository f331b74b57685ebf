/*
 * store_sqlite_pcache.c - SQLite's own page cache with a cheap truncate at commit.
 *
 * At the end of every write transaction SQLite's pager truncates its page cache to the
 * database's size (xTruncate(dbSize + 1)). The built-in cache (pcache1) does that work only
 * when it once held a page past the limit, but then it walks every bucket of its hash and every
 * page in it. A B-tree split that reorders its new pages (balance_nonroot) parks a page for a
 * moment at the page number of the lock byte (1 GiB / page size + 1), so on any database under
 * 1 GiB nearly every batch that splits a page of a randomly keyed index (the idempotency keys)
 * ended with a walk over the whole cache: 64 MiB of pages, 13-18% of the writer thread's time
 * with checkout orders.
 *
 * This wrapper forwards every call to the built-in cache and knows one more thing per cache:
 * the largest page number it was asked to hold (max_key), apart from that parking number, and
 * how many pages are parked there now (a parking is always followed by a move away in the same
 * split). A truncate that cannot drop anything (no parked page, nothing at or past the limit)
 * is not passed on; any other is, and the cache is then as the built-in one leaves it. So the
 * cache holds the same pages as before, and a truncate costs a comparison when it has nothing
 * to do.
 *
 * Installed once per process before SQLite starts (store_sqlite_pcache_install, from the
 * store's open): SQLite takes a page cache only before its initialisation, so a process that
 * used SQLite earlier keeps the built-in one (correct, only slower). Read store_sqlite.c next.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "base/log.h"
#include "base/svc_assert.h"
#include "store/store_sqlite_internal.h"

/* The page number SQLite parks a page at while it renumbers a split's pages: the page of its
 * lock byte (PENDING_BYTE, 0x40000000 in every build that does not change it for tests). */
#define PCACHE_LOCK_BYTE 0x40000000u

struct pcache_wrap {
    sqlite3_pcache *inner; /* owned: the built-in cache's instance */
    unsigned parking_key;  /* PCACHE_LOCK_BYTE / page size + 1 */
    unsigned max_key;      /* >= every key a page was made at or moved to, but parking_key */
    unsigned parked;       /* pages now moved to parking_key (and not yet away) */
};

static sqlite3_pcache_methods2 pcache_inner; /* the built-in cache, read once at install */

/* Truncates passed on to the built-in cache and those that had nothing to do (tests). */
static _Atomic uint64_t pcache_truncates_forwarded;
static _Atomic uint64_t pcache_truncates_skipped;

static int pcache_init(void *arg)
{
    (void)arg;
    return pcache_inner.xInit != NULL ? pcache_inner.xInit(pcache_inner.pArg) : SQLITE_OK;
}

static void pcache_shutdown(void *arg)
{
    (void)arg;
    if (pcache_inner.xShutdown != NULL) {
        pcache_inner.xShutdown(pcache_inner.pArg);
    }
}

static sqlite3_pcache *pcache_create(int page_size, int extra, int purgeable)
{
    SVC_ASSERT(page_size > 0 && extra >= 0);
    struct pcache_wrap *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return NULL;
    }
    w->inner = pcache_inner.xCreate(page_size, extra, purgeable);
    if (w->inner == NULL) {
        free(w);
        return NULL;
    }
    w->parking_key = PCACHE_LOCK_BYTE / (unsigned)page_size + 1;
    return (sqlite3_pcache *)w;
}

static struct pcache_wrap *pcache_of(sqlite3_pcache *cache)
{
    struct pcache_wrap *w = (struct pcache_wrap *)cache;
    SVC_ASSERT(w != NULL && w->inner != NULL);
    return w;
}

static void pcache_cachesize(sqlite3_pcache *cache, int size)
{
    pcache_inner.xCachesize(pcache_of(cache)->inner, size);
}

static int pcache_pagecount(sqlite3_pcache *cache)
{
    return pcache_inner.xPagecount(pcache_of(cache)->inner);
}

static sqlite3_pcache_page *pcache_fetch(sqlite3_pcache *cache, unsigned key, int create)
{
    struct pcache_wrap *w = pcache_of(cache);
    if (create != 0 && key > w->max_key) {
        w->max_key = key; /* create 0 only looks (as the move of a page does first) */
    }
    return pcache_inner.xFetch(w->inner, key, create);
}

static void pcache_unpin(sqlite3_pcache *cache, sqlite3_pcache_page *page, int discard)
{
    pcache_inner.xUnpin(pcache_of(cache)->inner, page, discard);
}

static void pcache_rekey(sqlite3_pcache *cache, sqlite3_pcache_page *page, unsigned old_key,
                         unsigned new_key)
{
    struct pcache_wrap *w = pcache_of(cache);
    if (old_key == w->parking_key && w->parked > 0) {
        w->parked -= 1;
    }
    if (new_key == w->parking_key) {
        w->parked += 1;
    } else if (new_key > w->max_key) {
        w->max_key = new_key;
    }
    pcache_inner.xRekey(w->inner, page, old_key, new_key);
}

static void pcache_truncate(sqlite3_pcache *cache, unsigned limit)
{
    struct pcache_wrap *w = pcache_of(cache);
    bool parked_dropped = w->parked > 0 && w->parking_key >= limit;
    if (!parked_dropped && w->max_key < limit) {
        atomic_fetch_add_explicit(&pcache_truncates_skipped, 1, memory_order_relaxed);
        return; /* no page at or past limit: nothing to drop */
    }
    atomic_fetch_add_explicit(&pcache_truncates_forwarded, 1, memory_order_relaxed);
    pcache_inner.xTruncate(w->inner, limit);
    if (w->parking_key >= limit) {
        w->parked = 0;
    }
    if (limit >= 1 && w->max_key >= limit) {
        w->max_key = limit - 1;
    }
}

static void pcache_destroy(sqlite3_pcache *cache)
{
    struct pcache_wrap *w = pcache_of(cache);
    pcache_inner.xDestroy(w->inner);
    free(w);
}

static void pcache_shrink(sqlite3_pcache *cache)
{
    pcache_inner.xShrink(pcache_of(cache)->inner);
}

static const sqlite3_pcache_methods2 pcache_methods = {
    .iVersion = 1,
    .xInit = pcache_init,
    .xShutdown = pcache_shutdown,
    .xCreate = pcache_create,
    .xCachesize = pcache_cachesize,
    .xPagecount = pcache_pagecount,
    .xFetch = pcache_fetch,
    .xUnpin = pcache_unpin,
    .xRekey = pcache_rekey,
    .xTruncate = pcache_truncate,
    .xDestroy = pcache_destroy,
    .xShrink = pcache_shrink,
};

static bool pcache_installed;

static void pcache_install_once(void)
{
    if (sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &pcache_inner) != SQLITE_OK ||
        pcache_inner.xCreate == NULL) {
        log_debug("sqlite: the page cache stays the built-in one (SQLite already started)");
        return;
    }
    if (sqlite3_config(SQLITE_CONFIG_PCACHE2, &pcache_methods) != SQLITE_OK) {
        log_debug("sqlite: the page cache stays the built-in one (SQLite already started)");
        return;
    }
    pcache_installed = true;
}

bool store_sqlite_pcache_install(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    int rc = pthread_once(&once, pcache_install_once);
    SVC_ASSERT(rc == 0);
    return pcache_installed;
}

void store_sqlite_pcache_counts(uint64_t *forwarded, uint64_t *skipped)
{
    SVC_ASSERT(forwarded != NULL && skipped != NULL);
    *forwarded = atomic_load_explicit(&pcache_truncates_forwarded, memory_order_relaxed);
    *skipped = atomic_load_explicit(&pcache_truncates_skipped, memory_order_relaxed);
}
