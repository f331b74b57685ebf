/*
 * hash.h - FNV-1a 64-bit, the one hash of stockd: the slots of the in-memory tables and request
 * fingerprints (method, path, body) of idempotency records. Not for security.
 */
#ifndef STOCKD_HASH_H
#define STOCKD_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/svc_assert.h"

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

/* The home slot of the string key in an open-addressing hash of slots slots (a power of two):
 * the domain's and the read model's tables of stores, products and reservations. */
static inline uint32_t hash_slot(const char *key, uint32_t slots)
{
    SVC_ASSERT(key != NULL && slots > 0 && (slots & (slots - 1)) == 0);
    return (uint32_t)(hash_fnv1a(HASH_FNV_OFFSET, key, strlen(key)) & (slots - 1));
}

#endif
