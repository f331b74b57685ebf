/*
 * log.h - one-line structured logging to stderr.
 *
 * log_error carries the log-only detail that must never reach clients (STYLE 9): SQL errors,
 * errno text, file and line. Every line is one line (control bytes in a message become
 * spaces), and each call site prints at most one line per interval (a second by default): the
 * next line it prints says how many it held back. Read clock.h next.
 */
#ifndef STOCKD_LOG_H
#define STOCKD_LOG_H

#include <stdint.h>

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

#define log_info(...) log_write(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_write(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

#endif
