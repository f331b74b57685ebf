/*
 * clock.c - formatting of wall-clock timestamps; the clocks themselves are inline in clock.h.
 */
#include "base/clock.h"

#include <stdio.h>
#include <string.h>

#include "base/svc_assert.h"

/* The "YYYY-MM-DDTHH:MM:SS." of the second this thread formatted last: the writer formats a
 * few times per command, nearly always within one second (gmtime_r and snprintf were 2-3% of
 * its time with checkout orders). */
static _Thread_local int64_t clock_cached_second = -1;
static _Thread_local char clock_cached_prefix[64]; /* 20 used; room for any int */

void clock_format_rfc3339(int64_t wall_ms, char *out, unsigned long out_size)
{
    SVC_ASSERT(out != 0);
    SVC_ASSERT(out_size >= 25);
    SVC_ASSERT(wall_ms >= 0);
    int64_t second = wall_ms / 1000;
    if (second != clock_cached_second) {
        time_t seconds = (time_t)second;
        struct tm tm;
        gmtime_r(&seconds, &tm);
        int length = snprintf(clock_cached_prefix, sizeof clock_cached_prefix,
                              "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900, tm.tm_mon + 1,
                              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        SVC_ASSERT(length == 20);
        clock_cached_second = second;
    }
    int millis = (int)(wall_ms % 1000);
    memcpy(out, clock_cached_prefix, 20);
    out[20] = (char)('0' + millis / 100);
    out[21] = (char)('0' + millis / 10 % 10);
    out[22] = (char)('0' + millis % 10);
    out[23] = 'Z';
    out[24] = '\0';
}
