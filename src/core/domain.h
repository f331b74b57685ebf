/*
 * domain.h - the in-memory inventory: stores, products and stock items.
 *
 * The writer thread is the only mutator. Every mutation is a pure function over this state
 * that checks its preconditions, returns an svc_err when the command must be refused, and
 * leaves the state untouched in that case. Mutations of a batch stay "working" until the batch
 * commits: dom_publish() then makes them visible to readers, dom_rollback() undoes them when
 * the storage transaction failed. I/O threads read only the published part, through the
 * dom_read_* functions, without locks (atomics with acquire/release).
 *
 * This file is not storage (store.h) and not the batching loop (writer.h). Read queue.h next.
 */
#ifndef STOCKD_DOMAIN_H
#define STOCKD_DOMAIN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/svc_limits.h"

enum dom_policy {
    DOM_POLICY_HIGHEST_AVAILABLE = 0, /* default: the store with the most available */
    DOM_POLICY_LOWEST_LATENCY,        /* the fastest store that has enough */
    DOM_POLICY_ROUND_ROBIN,           /* rotate over the stores that have enough */
};

struct dom_store {
    char id[STORE_ID_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    int64_t latency_ms;
    int64_t on_hand_total; /* writer-owned: sum of on_hand over this store's items */
};

struct dom_item {
    uint32_t store_index;   /* index into domain.stores */
    uint32_t product_index; /* index into domain.products */
    /* Writer-owned working state. */
    int64_t on_hand;
    int64_t reserved;
    int64_t version;       /* +1 on every change; 1 when created */
    int64_t sold;          /* units sold by purchase, for seed-004 totals */
    int64_t updated_at_ms; /* wall ms of the last change */
    bool dirty;            /* touched by the current batch, listed in domain.dirty */
    /* Published read model: written by the writer after commit, read by I/O threads under
     * the pub_seq seqlock (odd while the writer is copying) so readers never see a torn item. */
    _Atomic uint32_t pub_seq;
    _Atomic int64_t pub_on_hand;
    _Atomic int64_t pub_reserved;
    _Atomic int64_t pub_version;
    _Atomic int64_t pub_sold;
    _Atomic int64_t pub_updated_at_ms;
};

struct dom_product {
    char sku[SKU_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    uint32_t round_robin_next;                 /* writer-owned: next store index to try */
    _Atomic int32_t item_by_store[STORES_MAX]; /* item index, or -1 when not stocked there */
};

struct domain {
    struct dom_store stores[STORES_MAX];
    struct dom_product *products;   /* PRODUCTS_MAX, owned, allocated by dom_init */
    struct dom_item *items;         /* ITEMS_MAX, owned */
    _Atomic uint32_t *product_hash; /* PRODUCT_HASH_SLOTS of product index + 1; 0 = empty */
    uint32_t *dirty;                /* item indexes touched this batch, owned */
    uint32_t dirty_count;
    /* Working counts (writer) and committed counts (what readers may see). */
    uint32_t store_count;
    uint32_t product_count;
    uint32_t item_count;
    _Atomic uint32_t store_count_committed;
    _Atomic uint32_t product_count_committed;
    _Atomic uint32_t item_count_committed;
};

/* Snapshot of one item for readers; copied out of the published atomics. */
struct dom_item_view {
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
    int64_t sold;
    int64_t updated_at_ms;
};

/* Allocates the fixed tables; the state starts empty. Returns 0 or -ENOMEM. */
int dom_init(struct domain *d);
/* Frees what dom_init allocated. No reader may be running. */
void dom_deinit(struct domain *d);

/* Lookups for the writer (working state). Return the index or -1. */
int32_t dom_store_find(const struct domain *d, const char *store_id);
int32_t dom_product_find(const struct domain *d, const char *sku);

/* Adds a store. SVC_ESTORE_EXISTS, SVC_ECAPACITY. On success *store_index_out is set. */
int dom_store_create(struct domain *d, const char *id, const char *name, int64_t latency_ms,
                     uint32_t *store_index_out);

/* Adds a product stocked in store_index with initial_on_hand, or, with store_index < 0, in
 * the store with the lowest total stock. SVC_EPRODUCT_EXISTS, SVC_EUNKNOWN_STORE,
 * SVC_ECAPACITY. On success *item_out is the new item. */
int dom_product_create(struct domain *d, const char *sku, const char *name, int64_t initial_on_hand,
                       int32_t store_index, int64_t now_ms, uint32_t *item_out);

/* Sells qty of product from store_index, or with store_index < 0 from the store chosen by
 * policy among those with enough available. SVC_EINSUFFICIENT_STOCK sets *available_out to
 * what the best store has. On success *item_out is the item sold from. */
int dom_purchase(struct domain *d, uint32_t product_index, int32_t store_index,
                 enum dom_policy policy, int64_t qty, int64_t now_ms, uint32_t *item_out,
                 int64_t *available_out);

/* Adds delta (may be negative) to on_hand of (store, product), creating the item at 0 first
 * when absent and delta >= 0. SVC_EINSUFFICIENT_STOCK when on_hand would drop below reserved,
 * SVC_EVALIDATION when it would exceed ON_HAND_MAX, SVC_ECAPACITY. */
int dom_adjust(struct domain *d, uint32_t store_index, uint32_t product_index, int64_t delta,
               int64_t now_ms, uint32_t *item_out);

/* Seed 004: restarts the sold count of an item changed in this batch (POST /reset begins a
 * new sale, so total_purchases counts from 0 again). */
void dom_item_reset_sold(struct domain *d, uint32_t item_index);

/* Moves on_hand and reserved of an existing item together: reserve (0, +q), release (0, -q),
 * confirm (-q, -q). The caller has checked the result keeps 0 <= reserved <= on_hand;
 * asserted here. */
void dom_item_move(struct domain *d, uint32_t item_index, int64_t on_hand_delta,
                   int64_t reserved_delta, int64_t now_ms);

/* The item of (store, product), or -1 when that store does not stock it. Writer side. */
int32_t dom_item_find(const struct domain *d, uint32_t store_index, uint32_t product_index);

/* Makes every working change visible to readers; called after the batch committed. */
void dom_publish(struct domain *d);
/* Returns the working state to the last published state; called when a batch failed. */
void dom_rollback(struct domain *d);

/* The loader path: inserts rows read from storage at startup, already committed. */
int dom_load_store(struct domain *d, const char *id, const char *name, int64_t latency_ms);
int dom_load_product(struct domain *d, const char *sku, const char *name);
int dom_load_item(struct domain *d, const char *store_id, const char *sku, int64_t on_hand,
                  int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms);

/* Checks every invariant of the working state (O(items)); used in assertions and tests. */
/* Sets an item to the committed values another instance left in shared storage (creating it
 * when absent); the caller then publishes. Store and product must be known. 0 or
 * SVC_EVALIDATION. */
int dom_refresh_item(struct domain *d, const char *store_id, const char *sku, int64_t on_hand,
                     int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms);
bool dom_invariants_hold(const struct domain *d);

/* Reader side (any thread). Indexes returned are stable for the life of the process. */
uint32_t dom_read_store_count(const struct domain *d);
int32_t dom_read_store_find(const struct domain *d, const char *store_id);
int32_t dom_read_product_find(const struct domain *d, const char *sku);
/* Copies the published item of (store, product); false when not stocked there. */
bool dom_read_item(const struct domain *d, uint32_t product_index, uint32_t store_index,
                   struct dom_item_view *out);

static inline int64_t dom_item_available(const struct dom_item *item)
{
    return item->on_hand - item->reserved;
}

#endif
