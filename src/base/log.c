/*
 * log.c - see log.h. Formats into a stack buffer and writes it with one write(2) so lines
 * from different threads never interleave.
 *
 * Repeats: a call site (file and line) prints at most one line per LOG_REPEAT_INTERVAL_MS.
 * The lines it would have printed meanwhile are counted, and the next line it prints after
 * the interval says how many there were ("(N more like this since ...)"). A full disk or an
 * unreachable database then costs one line a second, not thousands (issue 10). The sites sit
 * in a small fixed table under a mutex: logging is not on the request path, and a site that
 * does not fit the table is simply not rate-limited. Debug lines skip the table (log.h).
 *
 * The layout of a line is log_format.c's; this file decides whether it prints, fills in the
 * time and the thread's trace ids, and writes it.
 */
#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/svc_assert.h"
#include "base/svc_limits.h"

/* Call sites remembered for rate limiting: every log call of stockd is a few hundred. */
#define LOG_SITES_MAX 512
/* The longest line; a longer message is cut. Room for a message of a few hundred bytes beside
 * a trace id and a batch's list of them (log_format.c). */
#define LOG_LINE_BYTES_MAX 2048
/* The default interval of one line per call site. */
#define LOG_REPEAT_INTERVAL_MS_DEFAULT 1000

_Static_assert((LOG_SITES_MAX & (LOG_SITES_MAX - 1)) == 0, "sites: a power of two");
_Static_assert(LOG_LINE_BYTES_MAX >= LOG_FORMAT_LINE_BYTES_MIN, "a line fits log_format's");

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
static enum log_format log_format_current = LOG_FORMAT_TEXT;
static int log_access_fd = -1; /* --access-log, -1: off */

/* The calling thread's trace context (log.h): borrowed pointers. */
static _Thread_local const char *log_trace_id;
static _Thread_local const char *const *log_trace_ids;
static _Thread_local size_t log_trace_id_count;

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

void log_set_format(enum log_format format)
{
    SVC_ASSERT(format == LOG_FORMAT_TEXT || format == LOG_FORMAT_JSON);
    log_format_current = format;
    SVC_ASSERT(log_format_current == format);
}

void log_trace_set(const char *trace_id)
{
    SVC_ASSERT(trace_id == NULL || strlen(trace_id) <= TRACE_ID_BYTES_MAX);
    log_trace_id = trace_id;
}

const char *log_trace_current(void)
{
    return log_trace_id;
}

void log_trace_set_batch(const char *const *ids, size_t count)
{
    SVC_ASSERT((ids == NULL) == (count == 0));
    log_trace_ids = ids;
    log_trace_id_count = count;
}

int log_access_open(const char *path)
{
    SVC_ASSERT(path != NULL);
    SVC_ASSERT(log_access_fd < 0); /* once */
    if (strcmp(path, "-") == 0) {
        log_access_fd = STDERR_FILENO;
        return 0;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        return -errno;
    }
    log_access_fd = fd;
    return 0;
}

bool log_access_enabled(void)
{
    return log_access_fd >= 0;
}

void log_access_write(struct log_access *a)
{
    if (log_access_fd < 0) {
        return;
    }
    char buffer[LOG_LINE_BYTES_MAX];
    clock_gettime(CLOCK_REALTIME, &a->time);
    size_t length = log_format_access(log_format_current, a, buffer, sizeof buffer);
    SVC_ASSERT(length >= 1 && length <= sizeof buffer);
    ssize_t written = write(log_access_fd, buffer, length);
    (void)written; /* a full disk loses access lines, never requests */
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

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    SVC_ASSERT(level >= LOG_DEBUG && level <= LOG_ERROR);
    SVC_ASSERT(file != NULL && fmt != NULL);
    uint64_t suppressed = 0;
    if (level < log_level_min ||
        (level != LOG_DEBUG && !log_site_admits(file, line, &suppressed))) {
        return;
    }
    char message[LOG_LINE_BYTES_MAX];
    va_list args;
    va_start(args, fmt);
    int more = vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    size_t message_length = more < 0 ? 0 : (size_t)more;
    message_length = message_length < sizeof message ? message_length : sizeof message - 1;
    struct log_record rec = {
        .level = names[level],
        .file = file,
        .line = line,
        .message = message,
        .message_length = message_length,
        .trace_id = log_trace_id,
        .trace_ids = log_trace_id == NULL ? log_trace_ids : NULL,
        .trace_id_count = log_trace_id == NULL ? log_trace_id_count : 0,
        .suppressed = suppressed,
    };
    clock_gettime(CLOCK_REALTIME, &rec.time);
    char buffer[LOG_LINE_BYTES_MAX];
    size_t length = log_format_line(log_format_current, &rec, buffer, sizeof buffer);
    SVC_ASSERT(length >= 1 && length <= sizeof buffer);
    ssize_t written = write(STDERR_FILENO, buffer, length);
    (void)written;
}
