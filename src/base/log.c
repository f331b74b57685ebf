/*
 * log.c - see log.h. Formats into a stack buffer and writes it with one write(2) so lines
 * from different threads never interleave.
 */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/svc_assert.h"

static enum log_level log_level_min = LOG_INFO;

void log_set_level(enum log_level level)
{
    SVC_ASSERT(level >= LOG_DEBUG);
    SVC_ASSERT(level <= LOG_ERROR);
    log_level_min = level;
}

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    SVC_ASSERT(level >= LOG_DEBUG && level <= LOG_ERROR);
    if (level < log_level_min) {
        return;
    }
    char buffer[1024];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    int used =
        snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s:%d ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 now.tv_nsec / 1000000, names[level], base ? base + 1 : file, line);
    SVC_ASSERT(used > 0);
    va_list args;
    va_start(args, fmt);
    int more = vsnprintf(buffer + used, sizeof buffer - (size_t)used - 1, fmt, args);
    va_end(args);
    size_t length = (size_t)used + (more > 0 ? (size_t)more : 0);
    if (length > sizeof buffer - 2) {
        length = sizeof buffer - 2;
    }
    buffer[length++] = '\n';
    ssize_t written = write(STDERR_FILENO, buffer, length);
    (void)written;
}
