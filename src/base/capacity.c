/*
 * capacity.c - see capacity.h.
 */
#include "base/capacity.h"

#include "base/svc_assert.h"

_Static_assert(CAPACITY_ITEMS_LIMIT <= (1u << 29) && CAPACITY_PRODUCTS_LIMIT <= (1u << 29),
               "twice the rows, rounded up to a power of two, fits 31 bits");
_Static_assert((uint64_t)CAPACITY_RESERVATIONS_LIMIT *CAPACITY_PROJ_RESERVATIONS_FACTOR
                       *CAPACITY_PROJ_LINES_FACTOR <= (1u << 30),
               "the projector's line pool fits 31 bits");

struct capacity capacity_default(void)
{
    return (struct capacity){CAPACITY_STORES_DEFAULT, CAPACITY_PRODUCTS_DEFAULT,
                             CAPACITY_ITEMS_DEFAULT, CAPACITY_RESERVATIONS_DEFAULT};
}

bool capacity_valid(const struct capacity *c)
{
    return c->stores >= 1 && c->stores <= CAPACITY_STORES_LIMIT && c->products >= 1 &&
           c->products <= CAPACITY_PRODUCTS_LIMIT && c->items >= 1 &&
           c->items <= CAPACITY_ITEMS_LIMIT && c->reservations >= 1 &&
           c->reservations <= CAPACITY_RESERVATIONS_LIMIT;
}

uint32_t capacity_hash_slots(uint32_t rows)
{
    SVC_ASSERT(rows >= 1 && rows <= (1u << 30));
    uint32_t slots = 2;
    while (slots < 2 * rows) {
        slots *= 2;
    }
    SVC_ASSERT((slots & (slots - 1)) == 0 && slots >= 2 * rows);
    return slots;
}

uint32_t capacity_proj_reservations(const struct capacity *c)
{
    SVC_ASSERT(capacity_valid(c));
    return c->reservations * CAPACITY_PROJ_RESERVATIONS_FACTOR;
}

uint32_t capacity_proj_lines(const struct capacity *c)
{
    return capacity_proj_reservations(c) * CAPACITY_PROJ_LINES_FACTOR;
}
