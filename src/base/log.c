/*
 * log.c - see log.h. Formats into a stack buffer and writes it with one write(2) so lines
 * from different threads never interleave.
 *
 * Repeats: a call site (file and line) prints at most one line per LOG_REPEAT_INTERVAL_MS.
 * The lines it would have printed meanwhile are counted, and the next line it prints after
 * the interval says how many there were ("(N more like this since ...)"). A full disk or an
 * unreachable database then costs one line a second, not thousands (issue 10). The sites sit
 * in a small fixed table under a mutex: logging is not on the request path, and a site that
 * does not fit the table is simply not rate-limited.
 */
#include "base/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/svc_assert.h"

/* Call sites remembered for rate limiting: every log call of stockd is a few hundred. */
#define LOG_SITES_MAX 512
/* The longest line; a longer message is cut. */
#define LOG_LINE_BYTES_MAX 1024
/* The default interval of one line per call site. */
#define LOG_REPEAT_INTERVAL_MS_DEFAULT 1000

_Static_assert((LOG_SITES_MAX & (LOG_SITES_MAX - 1)) == 0, "sites: a power of two");

struct log_site {
    const char *file; /* NULL: a free slot */
    int line;
    int64_t window_start_ms; /* monotonic ms of the last line printed */
    uint64_t suppressed;     /* lines not printed since then */
};

static enum log_level log_level_min = LOG_INFO;
static int64_t log_repeat_interval_ms = LOG_REPEAT_INTERVAL_MS_DEFAULT;
static pthread_mutex_t log_sites_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct log_site log_sites[LOG_SITES_MAX];

void log_set_level(enum log_level level)
{
    SVC_ASSERT(level >= LOG_DEBUG);
    SVC_ASSERT(level <= LOG_ERROR);
    log_level_min = level;
}

void log_set_repeat_interval_ms(int64_t interval_ms)
{
    SVC_ASSERT(interval_ms >= 0);
    log_repeat_interval_ms = interval_ms;
    SVC_ASSERT(log_repeat_interval_ms == interval_ms);
}

static int64_t log_mono_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Decides whether the site prints now; *suppressed_out gets the lines it held back since its
 * last line (to be told now). */
static bool log_site_admits(const char *file, int line, uint64_t *suppressed_out)
{
    *suppressed_out = 0;
    uint32_t h = (uint32_t)(((uintptr_t)file >> 4) * 2654435761u) ^ (uint32_t)line * 40503u;
    int64_t now_ms = log_mono_ms();
    bool admit = true;
    pthread_mutex_lock(&log_sites_mutex);
    for (uint32_t probes = 0; probes < LOG_SITES_MAX; probes++) {
        struct log_site *site = &log_sites[(h + probes) & (LOG_SITES_MAX - 1)];
        if (site->file == NULL) {
            *site = (struct log_site){file, line, now_ms, 0};
            break;
        }
        if (site->file != file || site->line != line) {
            continue;
        }
        if (now_ms - site->window_start_ms < log_repeat_interval_ms) {
            site->suppressed++;
            admit = false;
        } else {
            *suppressed_out = site->suppressed;
            site->suppressed = 0;
            site->window_start_ms = now_ms;
        }
        break;
    }
    pthread_mutex_unlock(&log_sites_mutex);
    return admit;
}

/* Makes the message one line: newlines and other control bytes (libpq's messages carry
 * them) become spaces. */
static void log_one_line(char *text, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        if ((unsigned char)text[i] < 0x20) {
            text[i] = ' ';
        }
    }
}

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    SVC_ASSERT(level >= LOG_DEBUG && level <= LOG_ERROR);
    uint64_t suppressed = 0;
    if (level < log_level_min || !log_site_admits(file, line, &suppressed)) {
        return;
    }
    char buffer[LOG_LINE_BYTES_MAX];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    int used =
        snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s:%d ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 now.tv_nsec / 1000000, names[level], base ? base + 1 : file, line);
    SVC_ASSERT(used > 0 && (size_t)used < sizeof buffer);
    va_list args;
    va_start(args, fmt);
    int more = vsnprintf(buffer + used, sizeof buffer - (size_t)used - 1, fmt, args);
    va_end(args);
    size_t length = (size_t)used + (more > 0 ? (size_t)more : 0);
    length = length > sizeof buffer - 2 ? sizeof buffer - 2 : length;
    log_one_line(buffer + used, length - (size_t)used);
    if (suppressed > 0) {
        int note = snprintf(buffer + length, sizeof buffer - length - 1,
                            " (%llu more like this in the last interval, not printed)",
                            (unsigned long long)suppressed);
        length += note > 0 ? (size_t)note : 0;
        length = length > sizeof buffer - 2 ? sizeof buffer - 2 : length;
    }
    buffer[length++] = '\n';
    ssize_t written = write(STDERR_FILENO, buffer, length);
    (void)written;
}
