/*
 * text.h - character classes shared by the parsers of untrusted text: hex digits (percent
 * escapes, hashed tokens), identifiers ([A-Za-z0-9._-]: skus, store ids, principals), and the
 * pieces of an HTTP/1.1 header line that the payment client and the payment simulator's server
 * both read (pay/pay_http.c, paysim/paysim_http.c; h2o parses stockd's own requests).
 */
#ifndef STOCKD_TEXT_H
#define STOCKD_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* The value of hex digit c, or -1. */
static inline int text_hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* True when s is 1..max bytes of [A-Za-z0-9._-]. */
static inline bool text_is_id(const char *s, size_t length, size_t max)
{
    if (length < 1 || length > max) {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* An HTTP/1.1 header line, split: the name (not empty) and the value without the spaces and
 * tabs around it. Both point into the line. */
struct text_header {
    const char *name;
    size_t name_length;
    const char *value;
    size_t value_length;
};

/* Splits line[0..length) (no CRLF) at its first colon; false when there is none, or no name. */
static inline bool text_header_split(const char *line, size_t length, struct text_header *out)
{
    const char *colon = memchr(line, ':', length);
    if (colon == NULL || colon == line) {
        return false;
    }
    out->name = line;
    out->name_length = (size_t)(colon - line);
    out->value = colon + 1;
    out->value_length = length - out->name_length - 1;
    while (out->value_length > 0 && (out->value[0] == ' ' || out->value[0] == '\t')) {
        out->value++, out->value_length--;
    }
    while (out->value_length > 0 && (out->value[out->value_length - 1] == ' ' ||
                                     out->value[out->value_length - 1] == '\t')) {
        out->value_length--;
    }
    return true;
}

/* True when the header's name is name (ASCII, any case). */
static inline bool text_header_is(const struct text_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_length == n && strncasecmp(h->name, name, n) == 0;
}

/* The value of s[0..length) as 1 or more decimal digits, when it is at most max; else -1. */
static inline int64_t text_decimal(const char *s, size_t length, int64_t max)
{
    if (length == 0 || max < 0) {
        return -1;
    }
    int64_t n = 0;
    for (size_t i = 0; i < length; i++) {
        if (s[i] < '0' || s[i] > '9' || n > (max - (s[i] - '0')) / 10) {
            return -1;
        }
        n = n * 10 + (s[i] - '0');
    }
    return n;
}

#endif
