/*
 * domain.c - see domain.h. Pure state transitions with their invariants; no I/O.
 *
 * New stores, products and items are appended at the end of their arrays (working counts);
 * dom_commit() raises the committed counts to them, dom_rollback() truncates back. A changed
 * item's values before the batch sit in the undo list, taken at its first change. Not here:
 * which events a change makes (core/apply_*.c) or how it is stored (store/).
 */
#include "core/domain.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/hash.h"
#include "base/svc_assert.h"

int dom_init(struct domain *d, const struct capacity *capacity)
{
    SVC_ASSERT(d != NULL && capacity_valid(capacity));
    memset(d, 0, sizeof *d);
    d->capacity = *capacity;
    d->store_hash_slots = capacity_hash_slots(capacity->stores);
    d->product_hash_slots = capacity_hash_slots(capacity->products);
    d->stores = calloc(capacity->stores, sizeof *d->stores);
    d->store_hash = calloc(d->store_hash_slots, sizeof *d->store_hash);
    d->products = calloc(capacity->products, sizeof *d->products);
    d->items = calloc(capacity->items, sizeof *d->items);
    d->product_hash = calloc(d->product_hash_slots, sizeof *d->product_hash);
    d->undo = calloc(capacity->items, sizeof *d->undo);
    d->check_sums = calloc(capacity->items, sizeof *d->check_sums);
    d->check_totals = calloc(capacity->stores, sizeof *d->check_totals);
    if (!d->stores || !d->store_hash || !d->products || !d->items || !d->product_hash || !d->undo ||
        !d->check_sums || !d->check_totals ||
        res_init(&d->reservations, capacity->reservations) != 0) {
        dom_deinit(d);
        return -ENOMEM;
    }
    d->reservations_complete = true;
    SVC_ASSERT(d->store_count == 0 && d->item_count == 0);
    return 0;
}

void dom_deinit(struct domain *d)
{
    free(d->stores);
    free(d->store_hash);
    free(d->check_totals);
    free(d->products);
    free(d->items);
    free(d->product_hash);
    free(d->undo);
    free(d->check_sums);
    res_deinit(&d->reservations);
    memset(d, 0, sizeof *d);
}

/* Finds key in an open-addressing hash of slots (a power of two) slots holding row index + 1;
 * row i's key is the string at keys + i * stride (the rows' array seen as bytes, from the key
 * member of row 0). *slot_out gets the slot it is in or the empty slot ending the probe. */
static int32_t dom_probe(const uint32_t *hash, uint32_t slots, const char *keys, size_t stride,
                         const char *key, uint32_t *slot_out)
{
    uint32_t slot = hash_slot(key, slots);
    for (uint32_t probes = 0; probes < slots; probes++) {
        uint32_t entry = hash[slot];
        if (entry == 0 || strcmp(keys + (size_t)(entry - 1) * stride, key) == 0) {
            *slot_out = slot;
            return entry == 0 ? -1 : (int32_t)(entry - 1);
        }
        slot = (slot + 1) & (slots - 1);
    }
    SVC_UNREACHABLE(); /* the load factor is <= 0.5, so an empty slot always exists */
}

static int32_t dom_store_probe(const struct domain *d, const char *id, uint32_t *slot_out)
{
    const char *keys = (const char *)d->stores + offsetof(struct dom_store, id);
    return dom_probe(d->store_hash, d->store_hash_slots, keys, sizeof d->stores[0], id, slot_out);
}

static int32_t dom_product_probe(const struct domain *d, const char *sku, uint32_t *slot_out)
{
    const char *keys = (const char *)d->products + offsetof(struct dom_product, sku);
    return dom_probe(d->product_hash, d->product_hash_slots, keys, sizeof d->products[0], sku,
                     slot_out);
}

int32_t dom_store_find(const struct domain *d, const char *store_id)
{
    SVC_ASSERT(store_id != NULL);
    SVC_ASSERT(d->store_count <= d->capacity.stores);
    uint32_t slot = 0;
    int32_t found = dom_store_probe(d, store_id, &slot);
    SVC_ASSERT(found < (int32_t)d->store_count);
    return found;
}

int32_t dom_product_find(const struct domain *d, const char *sku)
{
    SVC_ASSERT(sku != NULL);
    uint32_t slot = 0;
    int32_t found = dom_product_probe(d, sku, &slot);
    SVC_ASSERT(found < (int32_t)d->product_count);
    return found;
}

int32_t dom_item_find(const struct domain *d, uint32_t store_index, uint32_t product_index)
{
    SVC_ASSERT(store_index < d->store_count);
    SVC_ASSERT(product_index < d->product_count);
    int32_t index = d->products[product_index].first_item;
    while (index >= 0 && d->items[index].store_index < store_index) {
        index = d->items[index].next;
    }
    return index >= 0 && d->items[index].store_index == store_index ? index : -1;
}

int dom_store_create(struct domain *d, const char *id, const char *name, int64_t latency_ms,
                     uint32_t *store_index_out)
{
    SVC_ASSERT(strlen(id) >= 1 && strlen(id) <= STORE_ID_BYTES_MAX);
    SVC_ASSERT(strlen(name) <= NAME_BYTES_MAX);
    SVC_ASSERT(latency_ms >= 0);
    uint32_t slot = 0;
    if (dom_store_probe(d, id, &slot) >= 0) {
        return SVC_ESTORE_EXISTS;
    }
    if (d->store_count == d->capacity.stores) {
        return SVC_ECAPACITY;
    }
    struct dom_store *store = &d->stores[d->store_count];
    memset(store, 0, sizeof *store);
    strcpy(store->id, id);
    strcpy(store->name, name);
    store->latency_ms = latency_ms;
    d->store_hash[slot] = d->store_count + 1;
    *store_index_out = d->store_count++;
    SVC_ASSERT(dom_store_find(d, id) == (int32_t)*store_index_out);
    return 0;
}

/* Records the item's values before the batch, at its first change in the batch. */
static void dom_mark_dirty(struct domain *d, uint32_t item_index)
{
    struct dom_item *item = &d->items[item_index];
    if (!item->dirty) {
        SVC_ASSERT(d->undo_count < d->capacity.items);
        item->dirty = true;
        d->undo[d->undo_count++] =
            (struct dom_undo){item_index,    item->on_hand, item->reserved,
                              item->version, item->sold,    item->updated_at_ms};
    }
    SVC_ASSERT(item->dirty);
}

/* Creates the (store, product) item with on_hand 0, version 0; the caller's change makes it
 * version 1. */
static int dom_item_create(struct domain *d, uint32_t store_index, uint32_t product_index,
                           uint32_t *item_out)
{
    struct dom_product *product = &d->products[product_index];
    SVC_ASSERT(store_index < d->store_count);
    SVC_ASSERT(dom_item_find(d, store_index, product_index) < 0);
    if (d->item_count == d->capacity.items) {
        return SVC_ECAPACITY;
    }
    uint32_t index = d->item_count++;
    struct dom_item *item = &d->items[index];
    memset(item, 0, sizeof *item);
    item->store_index = store_index;
    item->product_index = product_index;
    int32_t *link = &product->first_item; /* the list stays in store index order */
    while (*link >= 0 && d->items[*link].store_index < store_index) {
        link = &d->items[*link].next;
    }
    item->next = *link;
    *link = (int32_t)index;
    dom_mark_dirty(d, index);
    *item_out = index;
    return 0;
}

/* Applies a change of on_hand and bumps the version: the one place stock moves. */
static void dom_item_change(struct domain *d, uint32_t item_index, int64_t on_hand_delta,
                            int64_t now_ms)
{
    struct dom_item *item = &d->items[item_index];
    struct dom_store *store = &d->stores[item->store_index];
    SVC_ASSERT(item->on_hand + on_hand_delta >= item->reserved);
    SVC_ASSERT(item->on_hand + on_hand_delta <= ON_HAND_MAX);
    dom_mark_dirty(d, item_index);
    item->on_hand += on_hand_delta;
    store->on_hand_total += on_hand_delta;
    item->version += 1;
    item->updated_at_ms = now_ms;
    SVC_ASSERT(item->reserved >= 0 && item->reserved <= item->on_hand);
    SVC_ASSERT(store->on_hand_total >= item->on_hand);
}

static int32_t dom_lowest_stock_store(const struct domain *d)
{
    int32_t best = -1;
    for (uint32_t i = 0; i < d->store_count; i++) {
        if (best < 0 || d->stores[i].on_hand_total < d->stores[best].on_hand_total) {
            best = (int32_t)i;
        }
    }
    return best;
}

/* Appends a product with no items; the caller checked it is new and there is room. */
static uint32_t dom_product_add(struct domain *d, const char *sku, const char *name, uint32_t slot)
{
    SVC_ASSERT(d->product_count < d->capacity.products);
    SVC_ASSERT(d->product_hash[slot] == 0);
    uint32_t index = d->product_count++;
    struct dom_product *product = &d->products[index];
    strcpy(product->sku, sku);
    strcpy(product->name, name);
    product->round_robin_next = 0;
    product->first_item = -1;
    d->product_hash[slot] = index + 1;
    return index;
}

int dom_product_create(struct domain *d, const char *sku, const char *name, int64_t initial_on_hand,
                       int32_t store_index, int64_t now_ms, uint32_t *item_out)
{
    SVC_ASSERT(initial_on_hand >= 0 && initial_on_hand <= ON_HAND_MAX);
    SVC_ASSERT(strlen(sku) >= 1 && strlen(sku) <= SKU_BYTES_MAX);
    uint32_t slot = 0;
    if (dom_product_probe(d, sku, &slot) >= 0) {
        return SVC_EPRODUCT_EXISTS;
    }
    if (store_index < 0) {
        store_index = dom_lowest_stock_store(d);
    }
    if (store_index < 0 || (uint32_t)store_index >= d->store_count) {
        return SVC_EUNKNOWN_STORE;
    }
    if (d->product_count == d->capacity.products || d->item_count == d->capacity.items) {
        return SVC_ECAPACITY;
    }
    uint32_t index = dom_product_add(d, sku, name, slot);
    int rc = dom_item_create(d, (uint32_t)store_index, index, item_out);
    SVC_ASSERT(rc == 0); /* capacity was checked above */
    dom_item_change(d, *item_out, initial_on_hand, now_ms);
    SVC_ASSERT(d->items[*item_out].version == 1);
    return 0;
}

/* Weighs item index as a candidate for dom_choose_item; true when the choice is final. */
static bool dom_choose_weigh(struct domain *d, struct dom_product *product, enum dom_policy policy,
                             int64_t qty, int32_t index, int32_t *chosen, int64_t *best_available)
{
    const struct dom_item *item = &d->items[index];
    int64_t available = dom_item_available(item);
    *best_available = available > *best_available ? available : *best_available;
    if (available < qty) {
        return false;
    }
    if (*chosen < 0) {
        *chosen = index;
        if (policy == DOM_POLICY_ROUND_ROBIN) {
            product->round_robin_next = (item->store_index + 1) % d->store_count;
            return true;
        }
        return false;
    }
    const struct dom_item *best = &d->items[*chosen];
    if (policy == DOM_POLICY_HIGHEST_AVAILABLE && available > dom_item_available(best)) {
        *chosen = index;
    }
    if (policy == DOM_POLICY_LOWEST_LATENCY &&
        d->stores[item->store_index].latency_ms < d->stores[best->store_index].latency_ms) {
        *chosen = index;
    }
    return false;
}

/* Chooses the store to sell qty from, or -1. *best_available_out is the largest available of
 * any store, reported with insufficient_stock. The product's items are visited in store index
 * order; round robin starts at round_robin_next and wraps (two passes over the list). */
static int32_t dom_choose_item(struct domain *d, struct dom_product *product,
                               enum dom_policy policy, int64_t qty, int64_t *best_available_out)
{
    int32_t chosen = -1;
    int64_t best_available = 0;
    uint32_t start = policy == DOM_POLICY_ROUND_ROBIN && d->store_count > 0
                         ? product->round_robin_next % d->store_count
                         : 0;
    bool final = false;
    for (int pass = 0; pass < (start > 0 ? 2 : 1) && !final; pass++) {
        for (int32_t i = product->first_item; i >= 0 && !final; i = d->items[i].next) {
            uint32_t s = d->items[i].store_index;
            if ((pass == 0) == (s >= start)) {
                final = dom_choose_weigh(d, product, policy, qty, i, &chosen, &best_available);
            }
        }
    }
    *best_available_out = best_available;
    return chosen;
}

int dom_purchase(struct domain *d, uint32_t product_index, int32_t store_index,
                 enum dom_policy policy, int64_t qty, int64_t now_ms, uint32_t *item_out,
                 int64_t *available_out)
{
    SVC_ASSERT(product_index < d->product_count);
    SVC_ASSERT(qty >= 1 && qty <= QTY_MAX);
    struct dom_product *product = &d->products[product_index];
    int32_t item_index = -1;
    int64_t best_available = 0;
    if (store_index >= 0) {
        SVC_ASSERT((uint32_t)store_index < d->store_count);
        item_index = dom_item_find(d, (uint32_t)store_index, product_index);
        if (item_index >= 0) {
            best_available = dom_item_available(&d->items[item_index]);
            item_index = best_available < qty ? -1 : item_index;
        }
    } else {
        item_index = dom_choose_item(d, product, policy, qty, &best_available);
    }
    if (item_index < 0) {
        *available_out = best_available;
        SVC_ASSERT(best_available < qty);
        return SVC_EINSUFFICIENT_STOCK;
    }
    struct dom_item *item = &d->items[item_index];
    SVC_ASSERT(dom_item_available(item) >= qty);
    dom_item_change(d, (uint32_t)item_index, -qty, now_ms);
    item->sold += qty;
    *item_out = (uint32_t)item_index;
    *available_out = dom_item_available(item);
    SVC_ASSERT(*available_out >= 0);
    return 0;
}

int dom_adjust(struct domain *d, uint32_t store_index, uint32_t product_index, int64_t delta,
               int64_t now_ms, uint32_t *item_out)
{
    SVC_ASSERT(store_index < d->store_count);
    SVC_ASSERT(product_index < d->product_count);
    int32_t item_index = dom_item_find(d, store_index, product_index);
    int64_t on_hand = item_index >= 0 ? d->items[item_index].on_hand : 0;
    int64_t reserved = item_index >= 0 ? d->items[item_index].reserved : 0;
    if (on_hand + delta < reserved) {
        return SVC_EINSUFFICIENT_STOCK;
    }
    if (on_hand + delta > ON_HAND_MAX) {
        return SVC_EVALIDATION;
    }
    if (item_index < 0) {
        uint32_t created = 0;
        int rc = dom_item_create(d, store_index, product_index, &created);
        if (rc != 0) {
            return rc;
        }
        item_index = (int32_t)created;
    }
    dom_item_change(d, (uint32_t)item_index, delta, now_ms);
    *item_out = (uint32_t)item_index;
    return 0;
}

void dom_item_reset_sold(struct domain *d, uint32_t item_index)
{
    SVC_ASSERT(item_index < d->item_count);
    struct dom_item *item = &d->items[item_index];
    SVC_ASSERT(item->dirty); /* changed in this batch, so the new count is written with it */
    item->sold = 0;
}

void dom_item_move(struct domain *d, uint32_t item_index, int64_t on_hand_delta,
                   int64_t reserved_delta, int64_t now_ms)
{
    SVC_ASSERT(item_index < d->item_count);
    struct dom_item *item = &d->items[item_index];
    SVC_ASSERT(item->reserved + reserved_delta >= 0);
    SVC_ASSERT(item->reserved + reserved_delta <= item->on_hand + on_hand_delta);
    dom_mark_dirty(d, item_index); /* before reserved moves: the undo keeps the old value */
    item->reserved += reserved_delta;
    dom_item_change(d, item_index, on_hand_delta, now_ms); /* bumps the version */
    SVC_ASSERT(item->reserved >= 0 && item->reserved <= item->on_hand);
}

void dom_commit(struct domain *d)
{
    for (uint32_t k = 0; k < d->undo_count; k++) {
        struct dom_item *item = &d->items[d->undo[k].item_index];
        SVC_ASSERT(item->dirty);
        SVC_ASSERT(item->version >= 1);
        item->dirty = false;
    }
    d->undo_count = 0;
    d->store_count_committed = d->store_count;
    d->product_count_committed = d->product_count;
    d->item_count_committed = d->item_count;
    res_commit(&d->reservations);
}

/* Puts back the values of the items the batch changed, newest record first. */
static void dom_undo_items(struct domain *d)
{
    for (uint32_t k = d->undo_count; k > 0; k--) {
        const struct dom_undo *u = &d->undo[k - 1];
        struct dom_item *item = &d->items[u->item_index];
        SVC_ASSERT(item->dirty);
        d->stores[item->store_index].on_hand_total += u->on_hand - item->on_hand;
        item->on_hand = u->on_hand;
        item->reserved = u->reserved;
        item->version = u->version;
        item->sold = u->sold;
        item->updated_at_ms = u->updated_at_ms;
        item->dirty = false;
    }
    d->undo_count = 0;
}

void dom_rollback(struct domain *d)
{
    dom_undo_items(d); /* new items go back to 0 first, so their stores' totals stay right */
    for (uint32_t i = d->item_count; i > d->item_count_committed; i--) {
        const struct dom_item *item = &d->items[i - 1];
        SVC_ASSERT(item->on_hand == 0 && item->version == 0);
        int32_t *link = &d->products[item->product_index].first_item;
        while (*link != (int32_t)(i - 1)) {
            SVC_ASSERT(*link >= 0); /* it is on its product's list */
            link = &d->items[*link].next;
        }
        *link = item->next;
    }
    for (uint32_t p = d->product_count; p > d->product_count_committed; p--) {
        uint32_t slot = 0;
        int32_t found = dom_product_probe(d, d->products[p - 1].sku, &slot);
        SVC_ASSERT(found == (int32_t)(p - 1));
        d->product_hash[slot] = 0; /* newest first: probe chains stay intact */
    }
    for (uint32_t s = d->store_count; s > d->store_count_committed; s--) {
        uint32_t slot = 0;
        int32_t found = dom_store_probe(d, d->stores[s - 1].id, &slot);
        SVC_ASSERT(found == (int32_t)(s - 1));
        d->store_hash[slot] = 0; /* newest first, as above */
    }
    d->item_count = d->item_count_committed;
    d->product_count = d->product_count_committed;
    d->store_count = d->store_count_committed;
    res_rollback(&d->reservations);
    SVC_DEBUG_ASSERT(dom_invariants_hold(d));
}

/* ---- loading ------------------------------------------------------------------------------ */

int dom_load_store(struct domain *d, const char *id, const char *name, int64_t latency_ms)
{
    uint32_t index = 0;
    if (strlen(id) < 1 || strlen(id) > STORE_ID_BYTES_MAX || strlen(name) > NAME_BYTES_MAX ||
        latency_ms < 0) {
        return SVC_EVALIDATION;
    }
    if (dom_store_find(d, id) >= 0) {
        return 0; /* stores never change once created */
    }
    return dom_store_create(d, id, name, latency_ms, &index);
}

int dom_load_product(struct domain *d, const char *sku, const char *name)
{
    uint32_t slot = 0;
    if (strlen(sku) < 1 || strlen(sku) > SKU_BYTES_MAX || strlen(name) > NAME_BYTES_MAX) {
        return SVC_EVALIDATION;
    }
    if (dom_product_probe(d, sku, &slot) >= 0) {
        return 0; /* products never change once created */
    }
    if (d->product_count == d->capacity.products) {
        return SVC_ECAPACITY;
    }
    (void)dom_product_add(d, sku, name, slot);
    return 0;
}

/* Stored values of an item are sane (the database CHECKs make a failure unreachable). */
static bool dom_stored_item_valid(int64_t on_hand, int64_t reserved, int64_t version, int64_t sold)
{
    return reserved >= 0 && reserved <= on_hand && on_hand <= ON_HAND_MAX && version >= 1 &&
           sold >= 0;
}

int dom_load_item(struct domain *d, const char *store_id, const char *sku, int64_t on_hand,
                  int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    int32_t store_index = dom_store_find(d, store_id);
    int32_t product_index = dom_product_find(d, sku);
    if (store_index < 0 || product_index < 0 ||
        !dom_stored_item_valid(on_hand, reserved, version, sold)) {
        return SVC_EVALIDATION;
    }
    int32_t index = dom_item_find(d, (uint32_t)store_index, (uint32_t)product_index);
    if (index < 0) {
        uint32_t created = 0;
        int rc = dom_item_create(d, (uint32_t)store_index, (uint32_t)product_index, &created);
        if (rc != 0) {
            return rc;
        }
        index = (int32_t)created;
    } else if (d->items[index].version == version) {
        return 0; /* nobody else changed it */
    }
    struct dom_item *item = &d->items[index];
    dom_mark_dirty(d, (uint32_t)index);
    d->stores[item->store_index].on_hand_total += on_hand - item->on_hand;
    item->on_hand = on_hand;
    item->reserved = reserved;
    item->version = version;
    item->sold = sold;
    item->updated_at_ms = updated_at_ms;
    SVC_ASSERT(d->stores[item->store_index].on_hand_total >= on_hand);
    return 0;
}

int dom_load_reservation(struct domain *d, int64_t seq, const char *store_id,
                         const char *customer_id, int64_t expires_at_ms, int64_t version,
                         int64_t created_at_ms)
{
    int32_t store = dom_store_find(d, store_id);
    if (store < 0 || seq < 1 || version < 1 || strlen(customer_id) > CUSTOMER_ID_BYTES_MAX) {
        return SVC_EVALIDATION; /* foreign keys and CHECKs make this unreachable */
    }
    struct reservation *held = res_find(&d->reservations, seq);
    if (held != NULL && held->loading) {
        /* One reported twice in a read would get its lines twice: refuse the read rather
         * than hold too much. */
        return SVC_EVALIDATION;
    }
    if (held != NULL) {
        /* Held already, lines and all (they never change). A shared backend's prefetch read
         * it locked, as stored: another instance's step may have moved its order since (its
         * version, and its expiry: RES_EXPIRES_NEVER while a charge is in doubt), and the
         * stored row is the truth. */
        if (held->version != version || held->expires_at_ms != expires_at_ms) {
            res_touch(&d->reservations, held);
            bool moved = held->expires_at_ms != expires_at_ms;
            held->version = version;
            held->expires_at_ms = expires_at_ms;
            if (moved) {
                res_schedule(&d->reservations, held); /* the old heap entry is now stale */
            }
        }
        return 0;
    }
    struct reservation *r = res_create(&d->reservations, seq);
    if (r == NULL) {
        return SVC_ECAPACITY;
    }
    r->store_index = (uint32_t)store;
    r->expires_at_ms = expires_at_ms;
    r->created_at_ms = created_at_ms;
    r->version = version;
    r->loading = true; /* its lines follow */
    r->created = true; /* new to memory: a rollback of the read removes it again */
    strcpy(r->customer_id, customer_id);
    res_schedule(&d->reservations, r);
    res_touch(&d->reservations, r); /* dom_commit clears the loading mark */
    return 0;
}

int dom_load_reservation_order(struct domain *d, int64_t seq, int64_t order_seq,
                               const char *order_status, int64_t pay_attempts)
{
    struct reservation *r = res_find(&d->reservations, seq);
    enum res_order_state state = RES_ORDER_NONE;
    if (r == NULL || order_seq < 1 || pay_attempts < 0 || pay_attempts > INT32_MAX ||
        res_order_state_parse(order_status, &state) != 0) {
        return SVC_EVALIDATION;
    }
    if (!r->loading) {
        /* Held already: its order as stored, which another instance's step may have moved
         * (dom_load_reservation refreshed the rest of the row just before). */
        if (r->order_seq != order_seq) {
            return SVC_EVALIDATION;
        }
        if (r->order_state != state || r->pay_attempts != (int32_t)pay_attempts) {
            res_touch(&d->reservations, r);
            r->order_state = state;
            r->pay_attempts = (int32_t)pay_attempts;
        }
        return 0;
    }
    r->order_seq = order_seq;
    r->order_state = state;
    r->pay_attempts = (int32_t)pay_attempts;
    SVC_ASSERT(r->order_state != RES_ORDER_NONE);
    return 0;
}

int dom_load_reservation_line(struct domain *d, int64_t seq, const char *sku, int64_t qty)
{
    struct reservation *r = res_find(&d->reservations, seq);
    if (r != NULL && !r->loading) {
        return 0; /* held already: its lines came with it */
    }
    int32_t product = dom_product_find(d, sku);
    if (r == NULL || product < 0 || qty < 1 || r->line_count == CMD_LINES_MAX) {
        return SVC_EVALIDATION;
    }
    r->lines[r->line_count++] = (struct res_line){(uint32_t)product, qty};
    return 0;
}

void dom_forget_reservation(struct domain *d, int64_t seq)
{
    struct reservation *r = res_find(&d->reservations, seq);
    if (r != NULL && r->status == RES_ACTIVE) {
        r->status = RES_CANCELLED; /* any final status: dom_commit frees the slot */
        r->version += 1;           /* like every end, so that dom_rollback undoes it exactly */
        res_touch(&d->reservations, r);
    }
    SVC_ASSERT(r == NULL || r->status != RES_ACTIVE);
}

/* ---- invariants --------------------------------------------------------------------------- */

/* Every item's reserved is the sum of the ACTIVE reservation lines on it. */
static bool dom_reserved_matches_reservations(const struct domain *d)
{
    memset(d->check_sums, 0, d->item_count * sizeof d->check_sums[0]);
    const struct res_table *t = &d->reservations;
    for (uint32_t s = 0; s < t->slots_max; s++) {
        const struct reservation *r = &t->slots[s];
        if (r->seq == 0 || r->status != RES_ACTIVE) {
            continue;
        }
        if (r->store_index >= d->store_count) {
            return false;
        }
        for (uint32_t i = 0; i < r->line_count; i++) {
            if (r->lines[i].product_index >= d->product_count) {
                return false;
            }
            int32_t item = dom_item_find(d, r->store_index, r->lines[i].product_index);
            if (item < 0) {
                return false; /* a reservation holds units of an existing item */
            }
            d->check_sums[item] += r->lines[i].qty;
        }
    }
    for (uint32_t i = 0; i < d->item_count; i++) {
        if (d->check_sums[i] != d->items[i].reserved) {
            return false;
        }
    }
    return true;
}

bool dom_invariants_hold(const struct domain *d)
{
    int64_t *totals = d->check_totals;
    if (d->store_count > d->capacity.stores || d->product_count > d->capacity.products ||
        d->item_count > d->capacity.items || d->undo_count > d->item_count) {
        return false;
    }
    memset(totals, 0, d->store_count * sizeof *totals);
    for (uint32_t i = 0; i < d->item_count; i++) {
        const struct dom_item *item = &d->items[i];
        if (item->store_index >= d->store_count || item->product_index >= d->product_count) {
            return false;
        }
        if (item->reserved < 0 || item->reserved > item->on_hand || item->on_hand > ON_HAND_MAX) {
            return false;
        }
        if (dom_item_find(d, item->store_index, item->product_index) != (int32_t)i) {
            return false; /* on its product's list, once, in store order */
        }
        totals[item->store_index] += item->on_hand;
    }
    for (uint32_t s = 0; s < d->store_count; s++) {
        if (totals[s] != d->stores[s].on_hand_total) {
            return false;
        }
    }
    return !d->reservations_complete || dom_reserved_matches_reservations(d);
}
