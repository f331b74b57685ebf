/*
 * svc_assert.h - assertions that stay on in production, and the debug-only checks beside them.
 *
 * SVC_ASSERT(expr) logs the expression, file and line and a backtrace, then aborts: a
 * programmer error must stop the process before it corrupts state (STYLE 8, 13). It is on in
 * every build, release included. It does not use assert.h, so NDEBUG (-Db_ndebug=true) does
 * not turn it off. SVC_UNREACHABLE() is an SVC_ASSERT that always fails.
 *
 * SVC_DEBUG_CHECKS is 0 or 1 and decides the two debug-only macros below. meson.build defines
 * it for every file it compiles: 1 for --buildtype=debug and --buildtype=debugoptimized (the
 * project's default, and the ASan and TSan builds of scripts/run-tests.sh), 0 for release,
 * plain and minsize, so 0 in run-tests.sh's release build (--buildtype=release
 * -Db_ndebug=false). To turn the debug checks on in a release build, set the meson option
 * debug_checks (meson_options.txt) when setting up the build directory:
 *
 *     meson setup build --buildtype=release -Db_ndebug=false -Ddebug_checks=true
 *
 * or `meson configure build -Ddebug_checks=true` on an existing one. A file compiled outside
 * meson gets 0. Code may test it too: `#if SVC_DEBUG_CHECKS`.
 *
 * SVC_DEBUG_ASSERT(expr) is for O(N) checks, such as a whole-structure invariant, that are too
 * slow for a release build's hot path. With SVC_DEBUG_CHECKS 1 it is SVC_ASSERT(expr). With 0
 * it is ((void)(0 && (expr))): expr is still compiled and type-checked, so it cannot rot, but
 * C's && never evaluates it (and the compiler drops it), so it must have no side effect the
 * program needs. It still counts as a use, so a variable or a static function used only
 * inside it raises no unused warning. (The sizeof(expr) idiom would not do for the latter:
 * clang's -Wunneeded-internal-declaration rejects a static function named only in sizeof.)
 *
 * SVC_TESTCASE(cond) marks a boundary that tests should hit both ways (SQLite's testcase()),
 * such as a batch exactly full or a queue exactly empty. It is a statement. With
 * SVC_DEBUG_CHECKS 1 it evaluates cond, and each time cond is true it counts a hit of its call
 * site: each site has a static record (file, line, expression text, hit count); the site's
 * first hit pushes it onto one process-wide lock-free list (a compare-and-swap on the head),
 * and every hit is a relaxed atomic increment, so any thread may hit any site. A test proves it
 * reached a boundary with svc_testcase_hits("count == 0") > 0 (the text as written in the
 * macro, spaced as the preprocessor spaces it), and svc_testcase_report() lists every site hit
 * so far. A site whose condition was never true is not registered and so not listed. With
 * SVC_DEBUG_CHECKS 0, SVC_TESTCASE is ((void)(0 && (cond))): cond is not evaluated, nothing is
 * counted, svc_testcase_hits() returns 0 and svc_testcase_report() prints nothing. A static
 * record cannot live in a non-static inline function, so use SVC_TESTCASE in ordinary or
 * static inline functions only.
 *
 * Not here: operating errors (bad input, database down, queue full) are returned, never
 * asserted (errors.h). Read errors.h next.
 */
#ifndef STOCKD_SVC_ASSERT_H
#define STOCKD_SVC_ASSERT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifndef SVC_DEBUG_CHECKS
#define SVC_DEBUG_CHECKS 0
#endif
#if SVC_DEBUG_CHECKS != 0 && SVC_DEBUG_CHECKS != 1
#error "SVC_DEBUG_CHECKS must be 0 or 1 (meson.build defines it from -Ddebug_checks)"
#endif

/* Logs the failed expression with its location and a backtrace to stderr, then aborts. Called
 * by SVC_ASSERT and SVC_UNREACHABLE only. Never returns. */
_Noreturn void svc_assert_fail(const char *expr, const char *file, int line);

#define SVC_ASSERT(expr) ((expr) ? (void)0 : svc_assert_fail(#expr, __FILE__, __LINE__))

#define SVC_UNREACHABLE() svc_assert_fail("unreachable", __FILE__, __LINE__)

/* One SVC_TESTCASE call site: a zero-initialised static record owned by the function that holds
 * the macro. Only svc_assert.c writes to it after initialisation. */
struct svc_testcase_site {
    const char *file;               /* __FILE__ of the site, static storage */
    int line;                       /* __LINE__ of the site */
    const char *expression;         /* the condition as written, static storage */
    _Atomic uint64_t hits;          /* times the condition was true; relaxed increments */
    atomic_int registered;          /* 0 until the first hit claims the registration */
    struct svc_testcase_site *next; /* the next registered site; set once, before publishing */
};

/* Counts one hit of site, registering it in the process-wide list on its first hit. Safe from
 * any thread, lock-free. Called by SVC_TESTCASE only (when SVC_DEBUG_CHECKS is 1). */
void svc_testcase_hit(struct svc_testcase_site *site);

/* The sum of the hits of every registered site whose expression text equals expression; 0 when
 * none is registered, and always 0 when SVC_DEBUG_CHECKS is 0. expression is borrowed.
 * Called by tests, from any thread. */
uint64_t svc_testcase_hits(const char *expression);

/* Writes one line per registered site, "file:line expression hits", newest registration first,
 * to out (borrowed; not flushed). Writes nothing when no site is registered, as in every build
 * with SVC_DEBUG_CHECKS 0. Called by tests and debugging code. */
void svc_testcase_report(FILE *out);

#if SVC_DEBUG_CHECKS

#define SVC_DEBUG_ASSERT(expr) SVC_ASSERT(expr)

#define SVC_TESTCASE(cond)                                            \
    do {                                                              \
        static struct svc_testcase_site svc_testcase_site_ = {        \
            .file = __FILE__, .line = __LINE__, .expression = #cond}; \
        if (cond) {                                                   \
            svc_testcase_hit(&svc_testcase_site_);                    \
        }                                                             \
    } while (0)

#else

#define SVC_DEBUG_ASSERT(expr) ((void)(0 && (expr)))

#define SVC_TESTCASE(cond) ((void)(0 && (cond)))

#endif

#endif
