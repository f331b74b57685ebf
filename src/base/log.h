/*
 * log.h - one-line structured logging to stderr.
 *
 * log_error carries the log-only detail that must never reach clients (STYLE 9): SQL errors,
 * errno text, file and line. Read clock.h next.
 */
#ifndef STOCKD_LOG_H
#define STOCKD_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the lowest level printed; called once by main before threads start. */
void log_set_level(enum log_level level);

/* Prints "<time> <level> <file>:<line> <message>" to stderr; thread-safe (one write call). */
void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_info(...) log_write(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_write(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

#endif
