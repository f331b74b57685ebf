/*
 * hash.h - FNV-1a 64-bit, the one hash of stockd: product table slots and request
 * fingerprints (method, path, body) of idempotency records. Not for security.
 */
#ifndef STOCKD_HASH_H
#define STOCKD_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV_OFFSET 14695981039346656037ULL

/* Folds length bytes into state; start with HASH_FNV_OFFSET. */
static inline uint64_t hash_fnv1a(uint64_t state, const void *data, size_t length)
{
    const unsigned char *bytes = data;
    for (size_t i = 0; i < length; i++) {
        state ^= bytes[i];
        state *= 1099511628211ULL;
    }
    return state;
}

#endif
