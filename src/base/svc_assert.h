/*
 * svc_assert.h - assertions that stay on in production.
 *
 * SVC_ASSERT logs the expression, file and line and a backtrace, then aborts: a programmer
 * error must stop the process before it corrupts state (STYLE 8, 13). SVC_DEBUG_ASSERT is for
 * O(N) checks and compiles away in release builds. SVC_TESTCASE marks boundaries that tests
 * should hit both ways (SQLite testcase()); it counts hits in debug builds only.
 */
#ifndef STOCKD_SVC_ASSERT_H
#define STOCKD_SVC_ASSERT_H

#include <stdbool.h>

/* Logs the failed expression with its location and a backtrace, then aborts. Never returns. */
_Noreturn void svc_assert_fail(const char *expr, const char *file, int line);

#define SVC_ASSERT(expr) ((expr) ? (void)0 : svc_assert_fail(#expr, __FILE__, __LINE__))

#ifdef NDEBUG_SLOW
#define SVC_DEBUG_ASSERT(expr) ((void)0)
#else
#define SVC_DEBUG_ASSERT(expr) SVC_ASSERT(expr)
#endif

#define SVC_TESTCASE(cond) ((void)(cond))

#define SVC_UNREACHABLE() svc_assert_fail("unreachable", __FILE__, __LINE__)

#endif
