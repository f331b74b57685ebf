/*
 * log_format.h - the bytes of one log line, in text or JSON (--log-format), and of one access
 * log line (--access-log). Pure functions over a caller-owned buffer: log.c decides whether a
 * line prints and writes it; this file only lays it out, so the unit tests read its output
 * without a process around it. Read log.h first.
 *
 * text: "<time> <level> <file>:<line> [trace=<id> | traces=<id>,<id>... ]<message>" (the
 *       trace part only when one is known; without it the line is as it always was)
 * json: {"time":..,"level":..,"file":..,"line":..,"msg":..[,"traceId":..][,"traceIds":[..],
 *       "traceIdsOmitted":N][,"suppressed":N]}
 * Each is one line: control bytes become spaces in text and escapes in JSON, and bytes that
 * are not UTF-8 become U+FFFD in JSON, so every JSON line parses.
 */
#ifndef STOCKD_LOG_FORMAT_H
#define STOCKD_LOG_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

/* One application log line. Every pointer is borrowed for the call. */
struct log_record {
    struct timespec time;         /* CLOCK_REALTIME */
    const char *level;            /* "debug", "info", "warn" or "error" */
    const char *file;             /* __FILE__; its directories are left out */
    int line;                     /* __LINE__ */
    const char *message;          /* formatted, message_length bytes, may hold any byte */
    size_t message_length;        /* bytes of message */
    const char *trace_id;         /* the request's trace id (log.h), NULL: none */
    const char *const *trace_ids; /* the trace ids of a whole batch, NULL: none */
    size_t trace_id_count;        /* entries of trace_ids */
    uint64_t suppressed;          /* lines of this site held back since its last one */
};

/* One access log line: a request and how it ended. Every pointer is borrowed for the call. */
struct log_access {
    struct timespec time; /* CLOCK_REALTIME, when the request ended */
    const char *method;   /* method_length bytes, as the client sent it */
    size_t method_length;
    const char *route;     /* the route's pattern ("/v1/orders/{id}"), NULL: no route */
    int status;            /* the response's status, 0 when none was sent */
    int64_t duration_us;   /* from the handler's start to the request's end */
    const char *trace_id;  /* the request's trace id, never NULL */
    const char *principal; /* the authenticated principal's name, NULL: none (never a token) */
};

/* Writes rec as one line ending in '\n' into out (size >= LOG_FORMAT_LINE_BYTES_MIN); a
 * message or trace list that does not fit is cut (the JSON stays valid). Returns the bytes
 * written, '\n' included, no NUL. Called by log_write. */
size_t log_format_line(enum log_format format, const struct log_record *rec, char *out,
                       size_t size);

/* Writes a as one access log line ending in '\n' into out (size >= LOG_FORMAT_LINE_BYTES_MIN):
 * text "<time> access method=M route=R status=S durationMs=D trace=T principal=P" (R and P
 * "-" when absent), json {"time","type":"access","method","route","status","durationMs",
 * "traceId","principal"} (null when absent). Returns the bytes written. Called by
 * log_access_write. */
size_t log_format_access(enum log_format format, const struct log_access *a, char *out,
                         size_t size);

/* The smallest buffer the functions above take: room for every fixed field of a line. */
#define LOG_FORMAT_LINE_BYTES_MIN 1024

#endif
