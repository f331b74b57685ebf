/*
 * projector_internal.h - what the projector's two files share: the layout of a projection and
 * the applier's row operations (defined in projector.c), which the snapshot codec
 * (projector_snapshot.c) uses to read a projection out and to fill one back in.
 *
 * Nothing outside src/read/projector*.c includes this file; everyone else reads a projection
 * through projector.h. The rules of projector.c hold here too: one thread applies to a
 * projection at a time (under the apply mutex once it is live), and a row is written whole
 * before it is published. Read projector_snapshot.c next.
 */
#ifndef STOCKD_PROJECTOR_INTERNAL_H
#define STOCKD_PROJECTOR_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "base/capacity.h"
#include "base/svc_limits.h"
#include "read/projector.h"

struct projection_store {
    char id[STORE_ID_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    int64_t latency_ms;
};

struct projection_product {
    char sku[SKU_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    _Atomic int32_t first_item; /* its items, a list in store index order; -1 when none */
};

struct projection_item {
    uint32_t product_index;   /* immutable once published */
    uint32_t store_index;     /* immutable once published */
    _Atomic int32_t next;     /* the product's next item by store index; -1 ends the list */
    _Atomic uint32_t seqlock; /* odd while the applier rewrites the fields below */
    _Atomic int64_t on_hand;
    _Atomic int64_t reserved;
    _Atomic int64_t version;
    _Atomic int64_t sold;
    _Atomic int64_t updated_at_ms;
};

struct projection_reservation {
    char id[PROJ_RESERVATION_ID_BYTES_MAX + 1];
    char customer_id[CUSTOMER_ID_BYTES_MAX + 1];
    uint32_t store_index;
    uint32_t line_first; /* index into projection.lines */
    uint32_t line_count;
    int64_t expires_at_ms;
    int64_t created_at_ms;
    _Atomic uint32_t seqlock;
    _Atomic int32_t status;
    _Atomic int64_t version;
    _Atomic int64_t updated_at_ms;
};

/* The sizes of a projection's tables (from struct capacity; hash slots are powers of two). */
struct projection_limits {
    uint32_t stores;
    uint32_t products;
    uint32_t items;
    uint32_t reservations;
    uint32_t lines;
    uint32_t store_slots;
    uint32_t product_slots;
    uint32_t reservation_slots;
};

struct projection {
    struct projection_limits limits;
    struct projection_store *stores; /* limits.stores, owned */
    _Atomic uint32_t *store_hash;    /* limits.store_slots of index + 1; 0 empty */
    _Atomic uint32_t store_count;
    struct projection_product *products; /* limits.products, owned */
    _Atomic uint32_t *product_hash;      /* limits.product_slots of index + 1; 0 empty */
    _Atomic uint32_t product_count;
    struct projection_item *items; /* limits.items, owned */
    _Atomic uint32_t item_count;
    struct projection_reservation *reservations; /* limits.reservations, owned */
    _Atomic uint32_t *reservation_hash;          /* limits.reservation_slots of index + 1 */
    _Atomic uint32_t reservation_count;
    struct projector_line *lines; /* limits.lines, owned */
    uint32_t line_count;          /* applier only */
    _Atomic uint64_t dropped;     /* events not projected (capacity, corrupt) */
    _Atomic int64_t applied_seq;
    _Atomic int64_t applied_at_ms;
};

/* The stock state an event leaves its item in. */
struct projection_stock {
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
    int64_t sold;
};

/* Empties v (nobody may read it). */
void projector__reset(struct projection *v);
/* Copies text (NULL: "") into out, cut to size - 1 bytes. */
void projector__copy(char *out, size_t size, const char *text);
/* The index of store id, added (with name and latency) when new; -1 past limits.stores or
 * for an empty id (counted as dropped). */
int32_t projector__store_add(struct projection *v, const char *id, const char *name,
                             int64_t latency_ms);
/* The index of product sku, added when new; -1 past limits.products or for an empty sku. */
int32_t projector__product_add(struct projection *v, const char *sku, const char *name);
/* The item index of (product, store), or -1. */
int32_t projector__item_find(const struct projection *v, uint32_t product_index,
                             uint32_t store_index);
/* Sets the item of (product, store), appending it to the items when new. */
void projector__item_set(struct projection *v, uint32_t product_index, uint32_t store_index,
                         const struct projection_stock *stock, int64_t at_ms);
/* The index of reservation id or -1; *slot_out is its hash slot (or where it would go). */
int32_t projector__reservation_probe(const struct projection *v, const char *id,
                                     uint32_t *slot_out);
/* Rewrites a reservation's mutable fields under its seqlock. */
void projector__reservation_write(struct projection_reservation *r, int32_t status, int64_t version,
                                  int64_t at_ms);

#endif
