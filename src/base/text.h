/*
 * text.h - character classes shared by the parsers of untrusted text: hex digits (percent
 * escapes, hashed tokens) and identifiers ([A-Za-z0-9._-]: skus, store ids, principals).
 */
#ifndef STOCKD_TEXT_H
#define STOCKD_TEXT_H

#include <stdbool.h>
#include <stddef.h>

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

#endif
