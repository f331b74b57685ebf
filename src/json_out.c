/*
 * json_out.c - see json_out.h.
 */
#include "json_out.h"

#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "svc_assert.h"

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
    char digits[24];
    int length = snprintf(digits, sizeof digits, "%lld", (long long)value);
    SVC_ASSERT(length > 0 && (size_t)length < sizeof digits);
    jbuf_raw(b, digits, (size_t)length);
}

void jbuf_key(struct jbuf *b, const char *key)
{
    SVC_ASSERT(key != NULL && key[0] != '\0');
    if (b->length > 0 && b->data[b->length - 1] != '{' && b->data[b->length - 1] != '[') {
        jbuf_raw(b, ",", 1);
    }
    jbuf_str(b, key);
    jbuf_raw(b, ":", 1);
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
    char text[32];
    clock_format_rfc3339(wall_ms, text, sizeof text);
    jbuf_kv_str(b, key, text);
}
