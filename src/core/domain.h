/*
 * domain.h - the writer's in-memory inventory: stores, products, stock items and the ACTIVE
 * reservations that hold part of that stock.
 *
 * Only the writer thread touches it. Every mutation is a pure function over this state that
 * checks its preconditions, returns an svc_err when the command must be refused, and leaves the
 * state untouched in that case. The changes of a batch stay "working" until the batch commits:
 * dom_commit() then makes them the committed state, dom_rollback() returns to it when the
 * storage transaction failed (an undo record per item changed, taken at its first change in the
 * batch). Nobody else reads this: the query routes read the projector (read/projector.h), which
 * the writer feeds with the events of every committed batch.
 *
 * Invariants (dom_invariants_hold): 0 <= reserved <= on_hand <= ON_HAND_MAX per item, store
 * totals add up, and when the domain holds every ACTIVE reservation of the database
 * (reservations_complete: the writer owns the database), each item's reserved is the sum of
 * the ACTIVE reservation lines on it.
 *
 * This file is not storage (store/store.h) and not the batching loop (core/writer.h). Read
 * reservations.h next.
 */
#ifndef STOCKD_DOMAIN_H
#define STOCKD_DOMAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "base/capacity.h"
#include "base/svc_limits.h"
#include "core/reservations.h"

enum dom_policy {
    DOM_POLICY_HIGHEST_AVAILABLE = 0, /* default: the store with the most available */
    DOM_POLICY_LOWEST_LATENCY,        /* the fastest store that has enough */
    DOM_POLICY_ROUND_ROBIN,           /* rotate over the stores that have enough */
};

struct dom_store {
    char id[STORE_ID_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    int64_t latency_ms;
    int64_t on_hand_total; /* sum of on_hand over this store's items */
};

struct dom_item {
    uint32_t store_index;   /* index into domain.stores */
    uint32_t product_index; /* index into domain.products */
    int64_t on_hand;
    int64_t reserved;
    int64_t version;       /* +1 on every change; 1 when created */
    int64_t sold;          /* units sold by purchase, for seed-004 totals */
    int64_t updated_at_ms; /* wall ms of the last change */
    int32_t next;          /* the product's next item by store index; -1 ends the list */
    bool dirty;            /* changed by the current batch (it has an undo record) */
};

struct dom_product {
    char sku[SKU_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    uint32_t round_robin_next; /* next store index to try; not rolled back */
    int32_t first_item;        /* its items, a list in store index order; -1 when none */
};

/* An item's values before the current batch first changed it. */
struct dom_undo {
    uint32_t item_index;
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
    int64_t sold;
    int64_t updated_at_ms;
};

struct domain {
    struct capacity capacity;     /* the sizes of the tables below */
    uint32_t store_hash_slots;    /* capacity_hash_slots(capacity.stores) */
    uint32_t product_hash_slots;  /* capacity_hash_slots(capacity.products) */
    struct dom_store *stores;     /* capacity.stores, owned, allocated by dom_init */
    uint32_t *store_hash;         /* store_hash_slots of store index + 1; 0 = empty */
    struct dom_product *products; /* capacity.products, owned */
    struct dom_item *items;       /* capacity.items, owned */
    uint32_t *product_hash;       /* product_hash_slots of product index + 1; 0 = empty */
    struct dom_undo *undo;        /* capacity.items, owned: the items the batch changed */
    uint32_t undo_count;
    uint32_t store_count; /* working counts */
    uint32_t product_count;
    uint32_t item_count;
    uint32_t store_count_committed; /* the counts at the last dom_commit */
    uint32_t product_count_committed;
    uint32_t item_count_committed;
    struct res_table reservations; /* the ACTIVE reservations (and those the batch ended) */
    bool reservations_complete;    /* every ACTIVE reservation of the database is here */
    int64_t *check_sums;           /* capacity.items, owned: dom_invariants_hold's scratch */
    int64_t *check_totals;         /* capacity.stores, owned: dom_invariants_hold's scratch */
};

/* Allocates the tables for capacity (capacity_valid); the state starts empty, with
 * reservations_complete set (the writer clears it on a shared backend). Returns 0 or -ENOMEM. */
int dom_init(struct domain *d, const struct capacity *capacity);
/* Frees what dom_init allocated. */
void dom_deinit(struct domain *d);

/* Lookups. Return the index or -1. */
int32_t dom_store_find(const struct domain *d, const char *store_id);
int32_t dom_product_find(const struct domain *d, const char *sku);
/* The item of (store, product), or -1 when that store does not stock it. Walks the product's
 * items: as many steps as stores that stock it, at most. */
int32_t dom_item_find(const struct domain *d, uint32_t store_index, uint32_t product_index);

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

/* Makes every working change the committed state (the batch is durable); ended reservations
 * leave memory. */
void dom_commit(struct domain *d);
/* Returns the working state to the committed state (the batch was not written). */
void dom_rollback(struct domain *d);

/* The loader path: rows read from storage (at startup, and by a shared backend's prefetch),
 * applied as working changes; the caller commits them. 0 or SVC_EVALIDATION (a stored row
 * that breaks an invariant the database's CHECKs guard), SVC_ECAPACITY. dom_load_store and
 * dom_load_product keep an existing store or product (they never change once created). */
int dom_load_store(struct domain *d, const char *id, const char *name, int64_t latency_ms);
int dom_load_product(struct domain *d, const char *sku, const char *name);
/* Sets the item to the stored values (creating it when absent); an unchanged version is left
 * alone. Store and product must be known. */
int dom_load_item(struct domain *d, const char *store_id, const char *sku, int64_t on_hand,
                  int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms);
/* An ACTIVE reservation and then each of its lines (scheduled for expiry). */
int dom_load_reservation(struct domain *d, int64_t seq, const char *store_id,
                         const char *customer_id, int64_t expires_at_ms, int64_t version,
                         int64_t created_at_ms);
int dom_load_reservation_line(struct domain *d, int64_t seq, const char *sku, int64_t qty);
/* The checkout order a reservation just loaded holds stock for, with its state. */
int dom_load_reservation_order(struct domain *d, int64_t seq, int64_t order_seq,
                               const char *order_status, int64_t pay_attempts);
/* A reservation held here that storage says is no longer ACTIVE (another instance ended it):
 * it leaves memory at the next dom_commit. */
void dom_forget_reservation(struct domain *d, int64_t seq);

/* Checks every invariant of the working state, O(items + reservation slots); used
 * in assertions (SVC_DEBUG_ASSERT: debug builds only) and by the tests and the simulation. */
bool dom_invariants_hold(const struct domain *d);

static inline int64_t dom_item_available(const struct dom_item *item)
{
    return item->on_hand - item->reserved;
}

#endif
