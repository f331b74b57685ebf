/*
 * log_format.c - see log_format.h. Every line is built in a struct log_out that never writes
 * past its end: a piece that does not fit is cut at a character boundary (never inside a JSON
 * escape or a UTF-8 sequence), and the closing bytes of a line ("}\n" or "\n") are held in
 * reserve from the start, so a cut line is still one whole line of valid JSON.
 */
#include "base/log_format.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "base/svc_assert.h"

/* Bytes kept back for the end of the line: the suppressed count, "}" and "\n". */
#define LOG_FORMAT_TAIL_BYTES 64
/* At most this many bytes of a line go to a batch's trace ids; the rest are counted. */
#define LOG_FORMAT_TRACE_LIST_BYTES_MAX 512

_Static_assert(LOG_FORMAT_LINE_BYTES_MIN > 2 * LOG_FORMAT_TAIL_BYTES + 128,
               "a line has room for its fixed fields");

struct log_out {
    char *data;
    size_t limit; /* bytes usable before the reserved tail */
    size_t size;  /* bytes of data */
    size_t used;
};

static void log_format_out_init(struct log_out *o, char *data, size_t size)
{
    SVC_ASSERT(size >= LOG_FORMAT_LINE_BYTES_MIN);
    o->data = data;
    o->size = size;
    o->limit = size - LOG_FORMAT_TAIL_BYTES;
    o->used = 0;
}

/* Appends length bytes whole, or nothing when they do not fit; returns whether they did. */
static bool log_format_raw(struct log_out *o, const char *text, size_t length)
{
    SVC_ASSERT(o->used <= o->limit);
    if (length > o->limit - o->used) {
        return false;
    }
    memcpy(o->data + o->used, text, length);
    o->used += length;
    return true;
}

static bool log_format_lit(struct log_out *o, const char *text)
{
    return log_format_raw(o, text, strlen(text));
}

/* printf into the line; the caller's fields are short, so a cut one is simply left out. */
static void log_format_printf(struct log_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_format_printf(struct log_out *o, const char *fmt, ...)
{
    char piece[160];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(piece, sizeof piece, fmt, args);
    va_end(args);
    SVC_ASSERT(n >= 0 && (size_t)n < sizeof piece);
    (void)log_format_raw(o, piece, (size_t)n);
}

/* The length of the valid UTF-8 sequence at s[0..length), or 0 when it is not one (overlong
 * forms, surrogates and values past U+10FFFF are not). */
static size_t log_format_utf8_length(const unsigned char *s, size_t length)
{
    SVC_ASSERT(length >= 1 && s[0] >= 0x80);
    size_t need = s[0] >= 0xc2 && s[0] <= 0xdf   ? 2
                  : s[0] >= 0xe0 && s[0] <= 0xef ? 3
                  : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4
                                                 : 0;
    if (need == 0 || need > length) {
        return 0;
    }
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
    }
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90)) {
        return 0;
    }
    return need;
}

/* Appends s as the inside of a JSON string (no quotes), cut at a character boundary when it
 * does not fit within max_bytes or the line. Returns whether all of it went in. */
static bool log_format_json_chars(struct log_out *o, const char *s, size_t length, size_t max_bytes)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t start = o->used;
    for (size_t i = 0; i < length;) {
        char escaped[8];
        const char *piece = escaped;
        size_t piece_length = 0;
        size_t consumed = 1;
        if (u[i] == '"' || u[i] == '\\') {
            escaped[0] = '\\';
            escaped[1] = (char)u[i];
            piece_length = 2;
        } else if (u[i] < 0x20 || u[i] == 0x7f) {
            memcpy(escaped, "\\u00", 4);
            escaped[4] = hex[u[i] >> 4];
            escaped[5] = hex[u[i] & 15];
            piece_length = 6;
        } else if (u[i] < 0x80) {
            piece = s + i;
            piece_length = 1;
        } else if ((consumed = log_format_utf8_length(u + i, length - i)) > 0) {
            piece = s + i;
            piece_length = consumed;
        } else {
            piece = "\\ufffd";
            piece_length = 6;
            consumed = 1;
        }
        if (o->used - start + piece_length > max_bytes || !log_format_raw(o, piece, piece_length)) {
            return false;
        }
        i += consumed;
    }
    return true;
}

/* Appends "s" as a JSON string; a cut string still gets its closing quote. */
static void log_format_json_str(struct log_out *o, const char *s, size_t length)
{
    if (!log_format_lit(o, "\"")) {
        return;
    }
    o->limit += 1; /* the closing quote always fits: it was held back just now */
    (void)log_format_json_chars(o, s, length, o->limit - 1 - o->used);
    o->limit -= 1;
    SVC_ASSERT(o->used < o->size);
    o->data[o->used++] = '"';
}

/* Appends s with control bytes as spaces (the text format), cut when it does not fit. */
static void log_format_text_chars(struct log_out *o, const char *s, size_t length)
{
    size_t room = o->limit - o->used;
    size_t n = length < room ? length : room;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        o->data[o->used + i] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
    }
    o->used += n;
    SVC_ASSERT(o->used <= o->limit);
}

/* "2026-12-02T07:30:00.123Z": UTC with milliseconds. */
static void log_format_time(struct log_out *o, struct timespec time, bool quoted)
{
    struct tm tm;
    gmtime_r(&time.tv_sec, &tm);
    log_format_printf(o, "%s%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ%s", quoted ? "\"" : "",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, time.tv_nsec / 1000000, quoted ? "\"" : "");
}

static const char *log_format_base_name(const char *file)
{
    const char *slash = strrchr(file, '/');
    return slash != NULL ? slash + 1 : file;
}

/* A batch's trace ids (empty ones left out), at most LOG_FORMAT_TRACE_LIST_BYTES_MAX bytes of
 * them: as ,"traceIds":[..],"traceIdsOmitted":N in JSON, "traces=a,b (+N more) " in text;
 * nothing when none is known. */
static void log_format_trace_list(struct log_out *o, bool json, const char *const *ids,
                                  size_t count)
{
    SVC_ASSERT(count >= 1 && ids != NULL);
    size_t known = 0;
    for (size_t i = 0; i < count; i++) {
        known += ids[i][0] != '\0';
    }
    /* Room for the list's end ("]" and the omitted count) stays free whatever came before. */
    size_t room = o->limit - o->used;
    size_t budget = room < 64 ? 0 : room - 64;
    budget = budget < LOG_FORMAT_TRACE_LIST_BYTES_MAX ? budget : LOG_FORMAT_TRACE_LIST_BYTES_MAX;
    if (known == 0 || budget == 0 || !log_format_lit(o, json ? ",\"traceIds\":[" : "traces=")) {
        return;
    }
    size_t start = o->used;
    size_t shown = 0;
    for (size_t i = 0; i < count && shown < known; i++) {
        size_t length = strlen(ids[i]);
        size_t before = o->used;
        if (length == 0) {
            continue;
        }
        if (o->used - start + length + 4 > budget || !log_format_lit(o, shown == 0 ? "" : ",")) {
            break;
        }
        if (json) {
            log_format_json_str(o, ids[i], length);
        } else {
            log_format_text_chars(o, ids[i], length);
        }
        if (o->used - start > budget) {
            o->used = before; /* an escaped id grew past the budget: leave it out */
            break;
        }
        shown++;
    }
    SVC_ASSERT(shown <= known);
    if (json) {
        (void)log_format_lit(o, "]");
        if (shown < known) {
            log_format_printf(o, ",\"traceIdsOmitted\":%zu", known - shown);
        }
    } else {
        if (shown < known) {
            log_format_printf(o, " (+%zu more)", known - shown);
        }
        (void)log_format_lit(o, " ");
    }
}

static size_t log_format_line_text(const struct log_record *rec, struct log_out *o)
{
    log_format_time(o, rec->time, false);
    log_format_printf(o, " %s ", rec->level);
    (void)log_format_lit(o, log_format_base_name(rec->file));
    log_format_printf(o, ":%d ", rec->line);
    if (rec->trace_id != NULL) {
        (void)log_format_lit(o, "trace=");
        log_format_text_chars(o, rec->trace_id, strlen(rec->trace_id));
        (void)log_format_lit(o, " ");
    }
    if (rec->trace_id_count > 0) {
        log_format_trace_list(o, false, rec->trace_ids, rec->trace_id_count);
    }
    log_format_text_chars(o, rec->message, rec->message_length);
    o->limit = o->size - 1; /* the tail: the count and the newline */
    if (rec->suppressed > 0) {
        log_format_printf(o, " (%llu more like this in the last interval, not printed)",
                          (unsigned long long)rec->suppressed);
    }
    o->data[o->used++] = '\n';
    return o->used;
}

static size_t log_format_line_json(const struct log_record *rec, struct log_out *o)
{
    (void)log_format_lit(o, "{\"time\":");
    log_format_time(o, rec->time, true);
    log_format_printf(o, ",\"level\":\"%s\",\"file\":", rec->level);
    const char *base = log_format_base_name(rec->file);
    log_format_json_str(o, base, strlen(base));
    log_format_printf(o, ",\"line\":%d", rec->line);
    if (rec->trace_id != NULL) {
        (void)log_format_lit(o, ",\"traceId\":");
        log_format_json_str(o, rec->trace_id, strlen(rec->trace_id));
    }
    if (rec->trace_id_count > 0) {
        log_format_trace_list(o, true, rec->trace_ids, rec->trace_id_count);
    }
    (void)log_format_lit(o, ",\"msg\":");
    log_format_json_str(o, rec->message, rec->message_length);
    o->limit = o->size - 2; /* the tail: the count, "}" and the newline */
    if (rec->suppressed > 0) {
        log_format_printf(o, ",\"suppressed\":%llu", (unsigned long long)rec->suppressed);
    }
    o->data[o->used++] = '}';
    o->data[o->used++] = '\n';
    return o->used;
}

size_t log_format_line(enum log_format format, const struct log_record *rec, char *out, size_t size)
{
    SVC_ASSERT(format == LOG_FORMAT_TEXT || format == LOG_FORMAT_JSON);
    SVC_ASSERT(rec->message != NULL || rec->message_length == 0);
    struct log_out o;
    log_format_out_init(&o, out, size);
    size_t length =
        format == LOG_FORMAT_JSON ? log_format_line_json(rec, &o) : log_format_line_text(rec, &o);
    SVC_ASSERT(length >= 2 && length <= size);
    SVC_ASSERT(out[length - 1] == '\n');
    return length;
}

/* The JSON access line, without its newline. */
static void log_format_access_json(const struct log_access *a, struct log_out *o)
{
    long long us = (long long)(a->duration_us > 0 ? a->duration_us : 0);
    (void)log_format_lit(o, "{\"time\":");
    log_format_time(o, a->time, true);
    (void)log_format_lit(o, ",\"type\":\"access\",\"method\":");
    log_format_json_str(o, a->method, a->method_length);
    (void)log_format_lit(o, ",\"route\":");
    if (a->route != NULL) {
        log_format_json_str(o, a->route, strlen(a->route));
    } else {
        (void)log_format_lit(o, "null");
    }
    log_format_printf(o, ",\"status\":%d,\"durationMs\":%lld.%03lld,\"traceId\":", a->status,
                      us / 1000, us % 1000);
    log_format_json_str(o, a->trace_id, strlen(a->trace_id));
    (void)log_format_lit(o, ",\"principal\":");
    if (a->principal != NULL) {
        log_format_json_str(o, a->principal, strlen(a->principal));
    } else {
        (void)log_format_lit(o, "null");
    }
    o->limit = o->size - 2;
    o->data[o->used++] = '}';
}

/* The text access line, without its newline. */
static void log_format_access_text(const struct log_access *a, struct log_out *o)
{
    long long us = (long long)(a->duration_us > 0 ? a->duration_us : 0);
    const char *route = a->route != NULL ? a->route : "-";
    const char *principal = a->principal != NULL ? a->principal : "-";
    log_format_time(o, a->time, false);
    (void)log_format_lit(o, " access method=");
    log_format_text_chars(o, a->method, a->method_length);
    (void)log_format_lit(o, " route=");
    log_format_text_chars(o, route, strlen(route));
    log_format_printf(o, " status=%d durationMs=%lld.%03lld trace=", a->status, us / 1000,
                      us % 1000);
    log_format_text_chars(o, a->trace_id, strlen(a->trace_id));
    (void)log_format_lit(o, " principal=");
    log_format_text_chars(o, principal, strlen(principal));
    o->limit = o->size - 1;
}

size_t log_format_access(enum log_format format, const struct log_access *a, char *out, size_t size)
{
    SVC_ASSERT(a->trace_id != NULL && a->method != NULL);
    SVC_ASSERT(a->status >= 0 && a->status <= 999);
    struct log_out o;
    log_format_out_init(&o, out, size);
    if (format == LOG_FORMAT_JSON) {
        log_format_access_json(a, &o);
    } else {
        log_format_access_text(a, &o);
    }
    o.data[o.used++] = '\n';
    SVC_ASSERT(o.used <= size && o.data[o.used - 1] == '\n');
    return o.used;
}
