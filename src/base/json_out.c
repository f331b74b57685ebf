/*
 * json_out.c - see json_out.h.
 */
#include "base/json_out.h"

#include <stdio.h>
#include <string.h>

#include "base/clock.h"
#include "base/svc_assert.h"

void jbuf_init(struct jbuf *b, char *data, size_t size)
{
    SVC_ASSERT(data != NULL);
    SVC_ASSERT(size >= 1);
    b->data = data;
    b->size = size;
    b->length = 0;
    b->overflow = false;
    data[0] = '\0';
}

void jbuf_raw(struct jbuf *b, const char *text, size_t length)
{
    SVC_ASSERT(b->length < b->size);
    if (b->overflow || length >= b->size - b->length) {
        b->overflow = true;
        return;
    }
    memcpy(b->data + b->length, text, length);
    b->length += length;
    b->data[b->length] = '\0';
    SVC_ASSERT(b->length < b->size);
}

void jbuf_lit(struct jbuf *b, const char *text)
{
    jbuf_raw(b, text, strlen(text));
}

void jbuf_str_n(struct jbuf *b, const char *s, size_t length)
{
    static const char hex[] = "0123456789abcdef";
    jbuf_raw(b, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        jbuf_raw(b, s + start, i - start);
        char escaped[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            escaped[1] = (char)c;
            jbuf_raw(b, escaped, 2);
        } else {
            jbuf_raw(b, escaped, 6);
        }
        start = i + 1;
    }
    jbuf_raw(b, s + start, length - start);
    jbuf_raw(b, "\"", 1);
}

void jbuf_str(struct jbuf *b, const char *s)
{
    SVC_ASSERT(s != NULL);
    jbuf_str_n(b, s, strlen(s));
}

void jbuf_int(struct jbuf *b, int64_t value)
{
    /* Formatted by hand: snprintf was a few percent of the server's CPU under load. */
    char digits[24];
    size_t start = sizeof digits;
    uint64_t magnitude = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    do {
        digits[--start] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0) {
        digits[--start] = '-';
    }
    SVC_ASSERT(start >= 3); /* 20 digits and a sign at most */
    jbuf_raw(b, digits + start, sizeof digits - start);
}

/* True when key needs no escaping (our member names: letters and digits), so that it can be
 * copied in one go. */
static bool jbuf_key_plain(const char *key, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x20 || c == '"' || c == '\\') {
            return false;
        }
    }
    return true;
}

void jbuf_key(struct jbuf *b, const char *key)
{
    SVC_ASSERT(key != NULL && key[0] != '\0');
    size_t length = strlen(key);
    bool comma = b->length > 0 && b->data[b->length - 1] != '{' && b->data[b->length - 1] != '[';
    if (!jbuf_key_plain(key, length)) {
        jbuf_raw(b, ",", comma ? 1 : 0); /* a key that needs escaping: the general path */
        jbuf_str_n(b, key, length);
        jbuf_raw(b, ":", 1);
        return;
    }
    size_t need = (comma ? 1 : 0) + length + 3; /* [,]"key": */
    if (b->overflow || need >= b->size - b->length) {
        b->overflow = true;
        return;
    }
    char *out = b->data + b->length; /* one copy: this runs for every member of every body */
    if (comma) {
        *out++ = ',';
    }
    *out++ = '"';
    memcpy(out, key, length);
    out += length;
    *out++ = '"';
    *out++ = ':';
    b->length = (size_t)(out - b->data);
    b->data[b->length] = '\0';
    SVC_ASSERT(b->length < b->size);
}

void jbuf_kv_str(struct jbuf *b, const char *key, const char *value)
{
    jbuf_key(b, key);
    jbuf_str(b, value);
}

void jbuf_kv_int(struct jbuf *b, const char *key, int64_t value)
{
    jbuf_key(b, key);
    jbuf_int(b, value);
}

void jbuf_kv_time(struct jbuf *b, const char *key, int64_t wall_ms)
{
    /* A batch stamps every row with one time: format it once per thread and value. */
    static _Thread_local int64_t cached_ms = -1;
    static _Thread_local char cached[32];
    if (wall_ms != cached_ms) {
        clock_format_rfc3339(wall_ms, cached, sizeof cached);
        cached_ms = wall_ms;
    }
    SVC_ASSERT(cached[0] != '\0');
    jbuf_kv_str(b, key, cached);
}
