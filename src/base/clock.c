/*
 * clock.c - formatting of wall-clock timestamps; the clocks themselves are inline in clock.h.
 */
#include "base/clock.h"

#include <stdio.h>

#include "base/svc_assert.h"

void clock_format_rfc3339(int64_t wall_ms, char *out, unsigned long out_size)
{
    SVC_ASSERT(out != 0);
    SVC_ASSERT(out_size >= 25);
    SVC_ASSERT(wall_ms >= 0);
    time_t seconds = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&seconds, &tm);
    int length = snprintf(out, out_size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                          tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                          (int)(wall_ms % 1000));
    SVC_ASSERT(length == 24);
}
