/*
 * log.h - one-line structured logging to stderr, and the access log.
 *
 * log_error carries the log-only detail that must never reach clients (STYLE 9): SQL errors,
 * errno text, file and line. Every line is one line, in text or JSON (--log-format,
 * log_format.h), and each call site prints at most one line per interval (a second by
 * default): the next line it prints says how many it held back. Debug lines are never held
 * back: debug is for following requests one by one, and an operator turns it on knowingly.
 *
 * Trace ids: each thread has a current trace id (log_trace_set) that every line it logs
 * carries. The I/O thread sets the request's around its handler and around sending a writer
 * reply; the writer sets each command's around applying it, and the list of the batch's
 * around the rest of the batch (prefetch, commit), so a line about a whole batch names every
 * request in it. Read clock.h next.
 */
#ifndef STOCKD_LOG_H
#define STOCKD_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/log_format.h"

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the lowest level printed; called once by main before threads start. */
void log_set_level(enum log_level level);

/* Sets the rate limit: at most one line per call site per interval_ms (0: no limit). For
 * tests; the default is a second. */
void log_set_repeat_interval_ms(int64_t interval_ms);

/* Prints "<time> <level> <file>:<line> <message>" to stderr as one line; thread-safe (one
 * write call). A call site that printed less than an interval ago prints nothing: its next
 * line adds "(N more like this in the last interval, not printed)". */
void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sets the format of every line, log and access log (default text); called once by main before
 * threads start. */
void log_set_format(enum log_format format);

/* Makes trace_id (NUL-terminated, or NULL for none) the calling thread's current trace id,
 * which every line it logs carries until the next call. The pointer is borrowed: it must stay
 * valid until the thread sets another (the caller sets NULL before its storage goes). */
void log_trace_set(const char *trace_id);

/* The calling thread's current trace id, or NULL. */
const char *log_trace_current(void);

/* Makes ids[0..count) (a writer batch's trace ids; an empty one is left out of a line) the
 * calling thread's current list, carried by every line it logs while no single trace id is
 * set; (NULL, 0) clears it. Borrowed like log_trace_set's. */
void log_trace_set_batch(const char *const *ids, size_t count);

/* Opens the access log: path "-" is stderr, anything else a file opened for appending
 * (created 0600). 0, or -errno (the caller reports it and exits). Called once by main before
 * threads start. */
int log_access_open(const char *path);

/* Whether --access-log is on (after log_access_open). */
bool log_access_enabled(void);

/* Writes one access log line for a (a->time is set here), in the --log-format, with one write
 * call; never rate-limited. Any thread; does nothing unless log_access_enabled. */
void log_access_write(struct log_access *a);

#define log_info(...) log_write(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_write(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

#endif
