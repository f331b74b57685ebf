/*
 * json_out.h - writing JSON into a caller-owned fixed buffer.
 *
 * Responses on the hot path are short and their shape is fixed, so they are written directly
 * with escaping rather than built as a jansson tree (cheaper, no allocation). Parsing of
 * request bodies uses jansson (see api_*.c). A buffer that would overflow is marked and its
 * content must not be sent: callers check jbuf_ok(). Read domain.h next.
 */
#ifndef STOCKD_JSON_OUT_H
#define STOCKD_JSON_OUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct jbuf {
    char *data;    /* caller-owned storage, NUL-terminated while !overflow */
    size_t size;   /* bytes of data, including room for the NUL */
    size_t length; /* bytes written, excluding the NUL */
    bool overflow; /* a write did not fit; the content is truncated and unusable */
};

/* Points b at caller-owned storage of size bytes (size >= 1) and empties it. */
void jbuf_init(struct jbuf *b, char *data, size_t size);
/* Appends length raw bytes (already valid JSON text). */
void jbuf_raw(struct jbuf *b, const char *text, size_t length);
/* Appends a NUL-terminated raw literal such as "{" or ",\"qty\":". */
void jbuf_lit(struct jbuf *b, const char *text);
/* Appends s (length bytes of UTF-8) as a quoted, escaped JSON string. */
void jbuf_str_n(struct jbuf *b, const char *s, size_t length);
/* Appends the NUL-terminated s as a quoted, escaped JSON string. */
void jbuf_str(struct jbuf *b, const char *s);
/* Appends a decimal integer. */
void jbuf_int(struct jbuf *b, int64_t value);
/* Appends ,"key": (or "key": right after an opening brace), key escaped like a string (our
 * member names need none: they are copied in one go). */
void jbuf_key(struct jbuf *b, const char *key);
/* Appends "key":"value" with a separating comma when needed. */
void jbuf_kv_str(struct jbuf *b, const char *key, const char *value);
/* Appends "key":value for an integer with a separating comma when needed. */
void jbuf_kv_int(struct jbuf *b, const char *key, int64_t value);
/* Appends "key":"<RFC 3339 time>" for wall ms. */
void jbuf_kv_time(struct jbuf *b, const char *key, int64_t wall_ms);

static inline bool jbuf_ok(const struct jbuf *b)
{
    return !b->overflow;
}

#endif
