/*
 * clock.h - time sources. Wall time (ms since the epoch) stamps events and orders; the
 * monotonic clock measures durations. The writer takes its clock as a parameter so tests can
 * run it on fake time (STYLE 19). Read json_out.h next.
 */
#ifndef STOCKD_CLOCK_H
#define STOCKD_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t clock_wall_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static inline int64_t clock_mono_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

/* Formats ms since the epoch as RFC 3339 UTC with milliseconds into out (>= 25 bytes). */
void clock_format_rfc3339(int64_t wall_ms, char *out, unsigned long out_size);

#endif
