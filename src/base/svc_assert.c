/*
 * svc_assert.c - the failure path of SVC_ASSERT (log, backtrace, abort) and the hit counters of
 * SVC_TESTCASE.
 *
 * The counters are one process-wide, lock-free, push-only list of call-site records. A site is
 * pushed by its first hit and never removed, so readers walk the list without a lock: the
 * release compare-and-swap that publishes a site orders its fields (and its next pointer)
 * before any reader's acquire load of the head. Nothing here depends on SVC_DEBUG_CHECKS: in a
 * build without debug checks no site is ever hit, so the list stays empty.
 *
 * Not here: when to assert and when to return an error; see svc_assert.h, then errors.h.
 */
#include "base/svc_assert.h"

#include <execinfo.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The most recently registered SVC_TESTCASE site, or NULL; see the file comment. */
static _Atomic(struct svc_testcase_site *) svc_testcase_head;

_Noreturn void svc_assert_fail(const char *expr, const char *file, int line)
{
    void *frames[32];
    fprintf(stderr, "stockd: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    int count = backtrace(frames, 32);
    backtrace_symbols_fd(frames, count, STDERR_FILENO);
    abort();
}

/* Pushes site onto the list. The caller has won site->registered, so this runs once per site
 * and site->next is ours to write until the compare-and-swap publishes it. */
static void svc_testcase_register(struct svc_testcase_site *site)
{
    SVC_ASSERT(atomic_load_explicit(&site->registered, memory_order_relaxed) == 1);
    SVC_ASSERT(site->next == NULL);
    struct svc_testcase_site *head = atomic_load_explicit(&svc_testcase_head, memory_order_acquire);
    do {
        SVC_ASSERT(head != site); /* registered twice */
        site->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&svc_testcase_head, &head, site,
                                                    memory_order_acq_rel, memory_order_acquire));
}

void svc_testcase_hit(struct svc_testcase_site *site)
{
    SVC_ASSERT(site != NULL);
    SVC_ASSERT(site->expression != NULL);
    if (atomic_load_explicit(&site->registered, memory_order_acquire) == 0 &&
        atomic_exchange_explicit(&site->registered, 1, memory_order_acq_rel) == 0) {
        svc_testcase_register(site);
    }
    atomic_fetch_add_explicit(&site->hits, 1, memory_order_relaxed);
}

uint64_t svc_testcase_hits(const char *expression)
{
    SVC_ASSERT(expression != NULL);
    uint64_t hits = 0;
    struct svc_testcase_site *site = atomic_load_explicit(&svc_testcase_head, memory_order_acquire);
    for (; site != NULL; site = site->next) {
        SVC_ASSERT(atomic_load_explicit(&site->registered, memory_order_relaxed) == 1);
        if (strcmp(site->expression, expression) == 0) {
            hits += atomic_load_explicit(&site->hits, memory_order_relaxed);
        }
    }
    return hits;
}

void svc_testcase_report(FILE *out)
{
    SVC_ASSERT(out != NULL);
    struct svc_testcase_site *site = atomic_load_explicit(&svc_testcase_head, memory_order_acquire);
    for (; site != NULL; site = site->next) {
        SVC_ASSERT(site->file != NULL);
        fprintf(out, "%s:%d %s %" PRIu64 "\n", site->file, site->line, site->expression,
                atomic_load_explicit(&site->hits, memory_order_relaxed));
    }
}
