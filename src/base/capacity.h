/*
 * capacity.h - the sizes of the in-memory tables, chosen at start-up.
 *
 * The writer's domain (stores, products, stock items, ACTIVE reservations) and the projector's
 * two projections are allocated once at start from these numbers (STYLE 10, 12): nothing grows
 * afterwards, and past a limit a command is refused with 507 capacity_exceeded. Tables are
 * calloc'd, so pages are touched only as rows are used: a large limit costs address space,
 * not resident memory, until the shop fills it. Hash tables get a power of two of slots at
 * least twice their rows (load factor <= 0.5). main sets them from --max-stores,
 * --max-products, --max-stock-items and --max-reservations; tests use capacity_default().
 * Read domain.h next.
 */
#ifndef STOCKD_CAPACITY_H
#define STOCKD_CAPACITY_H

#include <stdbool.h>
#include <stdint.h>

/* Defaults: what a small shop needs, a few hundred MiB of address space. Stores are scanned
 * linearly only when a product is created without a store (the least-stocked one is chosen). */
#define CAPACITY_STORES_DEFAULT 32
#define CAPACITY_PRODUCTS_DEFAULT 65536
#define CAPACITY_ITEMS_DEFAULT (4 * CAPACITY_PRODUCTS_DEFAULT)
#define CAPACITY_RESERVATIONS_DEFAULT 16384

/* Hard bounds of the flags. Indexes are 32-bit with a sign bit to spare, and each table's hash
 * needs twice its rows in slots: 2^28 rows keep every count and slot number below 2^31. A
 * reservation slot holds its 100 lines inline (~1.9 KiB), so 2^24 of them is 32 GiB of
 * address space, more than this kind of machine has. Stores: a sku stocked in all of them
 * still answers GET /v1/items/{sku}/availability in one list body (api_queries.c). */
#define CAPACITY_STORES_LIMIT 4096
#define CAPACITY_PRODUCTS_LIMIT (1u << 28)
#define CAPACITY_ITEMS_LIMIT (1u << 28)
#define CAPACITY_RESERVATIONS_LIMIT (1u << 24)

/* The read model remembers this many reservations per ACTIVE one the writer may hold (finished
 * ones stay readable until the table is full), and this many lines per reservation on average. */
#define CAPACITY_PROJ_RESERVATIONS_FACTOR 4
#define CAPACITY_PROJ_LINES_FACTOR 4

struct capacity {
    uint32_t stores;       /* --max-stores */
    uint32_t products;     /* --max-products */
    uint32_t items;        /* --max-stock-items: (store, sku) pairs */
    uint32_t reservations; /* --max-reservations: ACTIVE at once, held by the writer */
};

/* The defaults above. */
struct capacity capacity_default(void);
/* Every member within 1..its limit. */
bool capacity_valid(const struct capacity *c);
/* The slots of an open-addressing hash for rows: a power of two >= 2 * rows. */
uint32_t capacity_hash_slots(uint32_t rows);
/* The projector's reservation rows and line pool for c. */
uint32_t capacity_proj_reservations(const struct capacity *c);
uint32_t capacity_proj_lines(const struct capacity *c);

#endif
