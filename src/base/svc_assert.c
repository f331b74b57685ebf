/*
 * svc_assert.c - the failure path of SVC_ASSERT: log, backtrace, abort.
 * See svc_assert.h for when to assert and when to return an error.
 */
#include "base/svc_assert.h"

#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

_Noreturn void svc_assert_fail(const char *expr, const char *file, int line)
{
    void *frames[32];
    fprintf(stderr, "stockd: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    int count = backtrace(frames, 32);
    backtrace_symbols_fd(frames, count, STDERR_FILENO);
    abort();
}
