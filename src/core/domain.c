/*
 * domain.c - see domain.h. Pure state transitions with their invariants; no I/O.
 *
 * Visibility: the writer appends stores, products and items at the end of their arrays and
 * bumps the working counts. Readers only look below the committed counts, which dom_publish()
 * raises with release stores after the batch is durable. Rollback truncates back to them.
 */
#include "core/domain.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/hash.h"
#include "base/svc_assert.h"

static uint32_t dom_sku_slot(const char *sku)
{
    uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, sku, strlen(sku));
    return (uint32_t)(h & (PRODUCT_HASH_SLOTS - 1));
}

int dom_init(struct domain *d)
{
    SVC_ASSERT(d != NULL);
    memset(d, 0, sizeof *d);
    d->products = calloc(PRODUCTS_MAX, sizeof *d->products);
    d->items = calloc(ITEMS_MAX, sizeof *d->items);
    d->product_hash = calloc(PRODUCT_HASH_SLOTS, sizeof *d->product_hash);
    d->dirty = calloc(ITEMS_MAX, sizeof *d->dirty);
    if (!d->products || !d->items || !d->product_hash || !d->dirty) {
        dom_deinit(d);
        return -ENOMEM;
    }
    SVC_ASSERT(d->store_count == 0 && d->item_count == 0);
    return 0;
}

void dom_deinit(struct domain *d)
{
    free(d->products);
    free(d->items);
    free((void *)d->product_hash);
    free(d->dirty);
    memset(d, 0, sizeof *d);
}

int32_t dom_store_find(const struct domain *d, const char *store_id)
{
    SVC_ASSERT(store_id != NULL);
    SVC_ASSERT(d->store_count <= STORES_MAX);
    for (uint32_t i = 0; i < d->store_count; i++) {
        if (strcmp(d->stores[i].id, store_id) == 0) {
            return (int32_t)i;
        }
    }
    return -1;
}

/* Finds sku below product_limit; *slot_out gets the slot it is in or the empty slot ending
 * the probe. Shared by the writer (working count) and readers (committed count). */
static int32_t dom_product_probe(const struct domain *d, const char *sku, uint32_t product_limit,
                                 uint32_t *slot_out)
{
    uint32_t slot = dom_sku_slot(sku);
    for (uint32_t probes = 0; probes < PRODUCT_HASH_SLOTS; probes++) {
        uint32_t entry = atomic_load_explicit(&d->product_hash[slot], memory_order_acquire);
        if (entry == 0) {
            if (slot_out) {
                *slot_out = slot;
            }
            return -1;
        }
        uint32_t index = entry - 1;
        if (index < product_limit && strcmp(d->products[index].sku, sku) == 0) {
            if (slot_out) {
                *slot_out = slot;
            }
            return (int32_t)index;
        }
        slot = (slot + 1) & (PRODUCT_HASH_SLOTS - 1);
    }
    SVC_UNREACHABLE(); /* the load factor is <= 0.5, so an empty slot always exists */
}

int32_t dom_product_find(const struct domain *d, const char *sku)
{
    SVC_ASSERT(sku != NULL);
    return dom_product_probe(d, sku, d->product_count, NULL);
}

int dom_store_create(struct domain *d, const char *id, const char *name, int64_t latency_ms,
                     uint32_t *store_index_out)
{
    SVC_ASSERT(strlen(id) >= 1 && strlen(id) <= STORE_ID_BYTES_MAX);
    SVC_ASSERT(strlen(name) <= NAME_BYTES_MAX);
    SVC_ASSERT(latency_ms >= 0);
    if (dom_store_find(d, id) >= 0) {
        return SVC_ESTORE_EXISTS;
    }
    if (d->store_count == STORES_MAX) {
        return SVC_ECAPACITY;
    }
    struct dom_store *store = &d->stores[d->store_count];
    memset(store, 0, sizeof *store);
    strcpy(store->id, id);
    strcpy(store->name, name);
    store->latency_ms = latency_ms;
    *store_index_out = d->store_count++;
    return 0;
}

static void dom_mark_dirty(struct domain *d, uint32_t item_index)
{
    struct dom_item *item = &d->items[item_index];
    if (!item->dirty) {
        SVC_ASSERT(d->dirty_count < ITEMS_MAX);
        item->dirty = true;
        d->dirty[d->dirty_count++] = item_index;
    }
}

/* Creates the (store, product) item with on_hand 0, version 0; the caller's change makes it
 * version 1. */
static int dom_item_create(struct domain *d, uint32_t store_index, uint32_t product_index,
                           uint32_t *item_out)
{
    struct dom_product *product = &d->products[product_index];
    SVC_ASSERT(store_index < d->store_count);
    SVC_ASSERT(atomic_load(&product->item_by_store[store_index]) < 0);
    if (d->item_count == ITEMS_MAX) {
        return SVC_ECAPACITY;
    }
    uint32_t index = d->item_count++;
    struct dom_item *item = &d->items[index];
    item->store_index = store_index;
    item->product_index = product_index;
    item->on_hand = item->reserved = item->version = item->sold = item->updated_at_ms = 0;
    item->dirty = false;
    atomic_store(&item->pub_version, 0);
    atomic_store_explicit(&product->item_by_store[store_index], (int32_t)index,
                          memory_order_release);
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
    item->on_hand += on_hand_delta;
    store->on_hand_total += on_hand_delta;
    item->version += 1;
    item->updated_at_ms = now_ms;
    dom_mark_dirty(d, item_index);
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

int dom_product_create(struct domain *d, const char *sku, const char *name, int64_t initial_on_hand,
                       int32_t store_index, int64_t now_ms, uint32_t *item_out)
{
    SVC_ASSERT(initial_on_hand >= 0 && initial_on_hand <= ON_HAND_MAX);
    SVC_ASSERT(strlen(sku) >= 1 && strlen(sku) <= SKU_BYTES_MAX);
    uint32_t slot = 0;
    if (dom_product_probe(d, sku, d->product_count, &slot) >= 0) {
        return SVC_EPRODUCT_EXISTS;
    }
    if (store_index < 0) {
        store_index = dom_lowest_stock_store(d);
    }
    if (store_index < 0 || (uint32_t)store_index >= d->store_count) {
        return SVC_EUNKNOWN_STORE;
    }
    if (d->product_count == PRODUCTS_MAX || d->item_count == ITEMS_MAX) {
        return SVC_ECAPACITY;
    }
    uint32_t index = d->product_count++;
    struct dom_product *product = &d->products[index];
    strcpy(product->sku, sku);
    strcpy(product->name, name);
    product->round_robin_next = 0;
    for (uint32_t s = 0; s < STORES_MAX; s++) {
        atomic_store(&product->item_by_store[s], -1);
    }
    atomic_store_explicit(&d->product_hash[slot], index + 1, memory_order_release);
    int rc = dom_item_create(d, (uint32_t)store_index, index, item_out);
    SVC_ASSERT(rc == 0); /* capacity was checked above */
    dom_item_change(d, *item_out, initial_on_hand, now_ms);
    SVC_ASSERT(d->items[*item_out].version == 1);
    return 0;
}

/* Chooses the store to sell qty from, or -1. *best_available_out is the largest available of
 * any store, reported with insufficient_stock. */
static int32_t dom_choose_item(struct domain *d, struct dom_product *product,
                               enum dom_policy policy, int64_t qty, int64_t *best_available_out)
{
    int32_t chosen = -1;
    int64_t best_available = 0;
    for (uint32_t k = 0; k < d->store_count; k++) {
        uint32_t s = k;
        if (policy == DOM_POLICY_ROUND_ROBIN) {
            s = (product->round_robin_next + k) % d->store_count;
        }
        int32_t item_index = atomic_load_explicit(&product->item_by_store[s], memory_order_relaxed);
        if (item_index < 0) {
            continue;
        }
        const struct dom_item *item = &d->items[item_index];
        int64_t available = dom_item_available(item);
        if (available > best_available) {
            best_available = available;
        }
        if (available < qty) {
            continue;
        }
        if (chosen < 0) {
            chosen = item_index;
            if (policy == DOM_POLICY_ROUND_ROBIN) {
                product->round_robin_next = (s + 1) % d->store_count;
                break;
            }
            continue;
        }
        const struct dom_item *best = &d->items[chosen];
        if (policy == DOM_POLICY_HIGHEST_AVAILABLE && available > dom_item_available(best)) {
            chosen = item_index;
        }
        if (policy == DOM_POLICY_LOWEST_LATENCY &&
            d->stores[s].latency_ms < d->stores[best->store_index].latency_ms) {
            chosen = item_index;
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
        item_index = atomic_load(&product->item_by_store[store_index]);
        if (item_index >= 0) {
            best_available = dom_item_available(&d->items[item_index]);
            if (best_available < qty) {
                item_index = -1;
            }
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
    struct dom_product *product = &d->products[product_index];
    int32_t item_index = atomic_load(&product->item_by_store[store_index]);
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
    item->reserved += reserved_delta;
    dom_item_change(d, item_index, on_hand_delta, now_ms); /* bumps version, marks dirty */
    SVC_ASSERT(item->reserved >= 0 && item->reserved <= item->on_hand);
}

int32_t dom_item_find(const struct domain *d, uint32_t store_index, uint32_t product_index)
{
    SVC_ASSERT(store_index < d->store_count);
    SVC_ASSERT(product_index < d->product_count);
    return atomic_load_explicit(&d->products[product_index].item_by_store[store_index],
                                memory_order_relaxed);
}

void dom_publish(struct domain *d)
{
    for (uint32_t k = 0; k < d->dirty_count; k++) {
        struct dom_item *item = &d->items[d->dirty[k]];
        SVC_ASSERT(item->dirty);
        SVC_ASSERT(item->version >= 1);
        uint32_t seq = atomic_load_explicit(&item->pub_seq, memory_order_relaxed);
        SVC_ASSERT(seq % 2 == 0);
        atomic_store_explicit(&item->pub_seq, seq + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(&item->pub_on_hand, item->on_hand, memory_order_relaxed);
        atomic_store_explicit(&item->pub_reserved, item->reserved, memory_order_relaxed);
        atomic_store_explicit(&item->pub_sold, item->sold, memory_order_relaxed);
        atomic_store_explicit(&item->pub_updated_at_ms, item->updated_at_ms, memory_order_relaxed);
        atomic_store_explicit(&item->pub_version, item->version, memory_order_relaxed);
        atomic_store_explicit(&item->pub_seq, seq + 2, memory_order_release);
        item->dirty = false;
    }
    d->dirty_count = 0;
    atomic_store_explicit(&d->store_count_committed, d->store_count, memory_order_release);
    atomic_store_explicit(&d->product_count_committed, d->product_count, memory_order_release);
    atomic_store_explicit(&d->item_count_committed, d->item_count, memory_order_release);
}

void dom_rollback(struct domain *d)
{
    uint32_t items_committed = atomic_load(&d->item_count_committed);
    uint32_t products_committed = atomic_load(&d->product_count_committed);
    for (uint32_t k = 0; k < d->dirty_count; k++) {
        struct dom_item *item = &d->items[d->dirty[k]];
        d->stores[item->store_index].on_hand_total -= item->on_hand;
        item->on_hand = atomic_load(&item->pub_on_hand);
        item->reserved = atomic_load(&item->pub_reserved);
        item->sold = atomic_load(&item->pub_sold);
        item->updated_at_ms = atomic_load(&item->pub_updated_at_ms);
        item->version = atomic_load(&item->pub_version);
        item->dirty = false;
        if (d->dirty[k] < items_committed) {
            d->stores[item->store_index].on_hand_total += item->on_hand;
        }
    }
    d->dirty_count = 0;
    for (uint32_t i = d->item_count; i > items_committed; i--) {
        struct dom_item *item = &d->items[i - 1];
        atomic_store(&d->products[item->product_index].item_by_store[item->store_index], -1);
    }
    for (uint32_t p = d->product_count; p > products_committed; p--) {
        uint32_t slot = 0;
        int32_t found = dom_product_probe(d, d->products[p - 1].sku, p, &slot);
        SVC_ASSERT(found == (int32_t)(p - 1));
        atomic_store(&d->product_hash[slot], 0); /* newest first: probe chains stay intact */
    }
    d->item_count = items_committed;
    d->product_count = products_committed;
    d->store_count = atomic_load(&d->store_count_committed);
    SVC_DEBUG_ASSERT(dom_invariants_hold(d));
}

int dom_load_store(struct domain *d, const char *id, const char *name, int64_t latency_ms)
{
    uint32_t index = 0;
    if (strlen(id) < 1 || strlen(id) > STORE_ID_BYTES_MAX || strlen(name) > NAME_BYTES_MAX ||
        latency_ms < 0) {
        return SVC_EVALIDATION;
    }
    return dom_store_create(d, id, name, latency_ms, &index);
}

int dom_load_product(struct domain *d, const char *sku, const char *name)
{
    uint32_t slot = 0;
    if (strlen(sku) < 1 || strlen(sku) > SKU_BYTES_MAX || strlen(name) > NAME_BYTES_MAX) {
        return SVC_EVALIDATION;
    }
    if (dom_product_probe(d, sku, d->product_count, &slot) >= 0) {
        return SVC_EPRODUCT_EXISTS;
    }
    if (d->product_count == PRODUCTS_MAX) {
        return SVC_ECAPACITY;
    }
    uint32_t index = d->product_count++;
    struct dom_product *product = &d->products[index];
    strcpy(product->sku, sku);
    strcpy(product->name, name);
    for (uint32_t s = 0; s < STORES_MAX; s++) {
        atomic_store(&product->item_by_store[s], -1);
    }
    atomic_store_explicit(&d->product_hash[slot], index + 1, memory_order_release);
    return 0;
}

/* Stored values of an item are sane (the database CHECKs make a failure unreachable). */
static bool dom_stored_item_valid(int64_t on_hand, int64_t reserved, int64_t version, int64_t sold)
{
    return reserved >= 0 && reserved <= on_hand && on_hand <= ON_HAND_MAX && version >= 1 &&
           sold >= 0;
}

/* Sets an item to stored values (its store's total follows). */
static void dom_item_set_stored(struct domain *d, struct dom_item *item, int64_t on_hand,
                                int64_t reserved, int64_t version, int64_t sold,
                                int64_t updated_at_ms)
{
    SVC_ASSERT(dom_stored_item_valid(on_hand, reserved, version, sold));
    d->stores[item->store_index].on_hand_total += on_hand - item->on_hand;
    item->on_hand = on_hand;
    item->reserved = reserved;
    item->version = version;
    item->sold = sold;
    item->updated_at_ms = updated_at_ms;
    SVC_ASSERT(d->stores[item->store_index].on_hand_total >= on_hand);
}

int dom_load_item(struct domain *d, const char *store_id, const char *sku, int64_t on_hand,
                  int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    return dom_refresh_item(d, store_id, sku, on_hand, reserved, version, sold, updated_at_ms);
}

int dom_refresh_item(struct domain *d, const char *store_id, const char *sku, int64_t on_hand,
                     int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    int32_t store_index = dom_store_find(d, store_id);
    int32_t product_index = dom_product_find(d, sku);
    if (store_index < 0 || product_index < 0 ||
        !dom_stored_item_valid(on_hand, reserved, version, sold)) {
        return SVC_EVALIDATION;
    }
    int32_t index = atomic_load(&d->products[product_index].item_by_store[store_index]);
    if (index < 0) {
        uint32_t created = 0; /* marked dirty: the caller publishes it */
        int rc = dom_item_create(d, (uint32_t)store_index, (uint32_t)product_index, &created);
        if (rc != 0) {
            return rc;
        }
        index = (int32_t)created;
    } else if (d->items[index].version == version) {
        return 0; /* nobody else changed it */
    }
    dom_item_set_stored(d, &d->items[index], on_hand, reserved, version, sold, updated_at_ms);
    dom_mark_dirty(d, (uint32_t)index); /* the caller publishes: committed state */
    return 0;
}

bool dom_invariants_hold(const struct domain *d)
{
    int64_t totals[STORES_MAX] = {0};
    if (d->store_count > STORES_MAX || d->product_count > PRODUCTS_MAX ||
        d->item_count > ITEMS_MAX) {
        return false;
    }
    for (uint32_t i = 0; i < d->item_count; i++) {
        const struct dom_item *item = &d->items[i];
        if (item->store_index >= d->store_count || item->product_index >= d->product_count) {
            return false;
        }
        if (item->reserved < 0 || item->reserved > item->on_hand || item->on_hand > ON_HAND_MAX) {
            return false;
        }
        const struct dom_product *product = &d->products[item->product_index];
        if (atomic_load(&product->item_by_store[item->store_index]) != (int32_t)i) {
            return false;
        }
        totals[item->store_index] += item->on_hand;
    }
    for (uint32_t s = 0; s < d->store_count; s++) {
        if (totals[s] != d->stores[s].on_hand_total) {
            return false;
        }
    }
    return true;
}

uint32_t dom_read_store_count(const struct domain *d)
{
    return atomic_load_explicit(&d->store_count_committed, memory_order_acquire);
}

int32_t dom_read_store_find(const struct domain *d, const char *store_id)
{
    uint32_t count = dom_read_store_count(d);
    SVC_ASSERT(count <= STORES_MAX);
    for (uint32_t i = 0; i < count; i++) {
        if (strcmp(d->stores[i].id, store_id) == 0) {
            return (int32_t)i;
        }
    }
    return -1;
}

int32_t dom_read_product_find(const struct domain *d, const char *sku)
{
    uint32_t limit = atomic_load_explicit(&d->product_count_committed, memory_order_acquire);
    SVC_ASSERT(limit <= PRODUCTS_MAX);
    return dom_product_probe(d, sku, limit, NULL);
}

bool dom_read_item(const struct domain *d, uint32_t product_index, uint32_t store_index,
                   struct dom_item_view *out)
{
    SVC_ASSERT(product_index < PRODUCTS_MAX);
    SVC_ASSERT(store_index < STORES_MAX);
    uint32_t limit = atomic_load_explicit(&d->item_count_committed, memory_order_acquire);
    int32_t index = atomic_load_explicit(&d->products[product_index].item_by_store[store_index],
                                         memory_order_acquire);
    if (index < 0 || (uint32_t)index >= limit) {
        return false;
    }
    const struct dom_item *item = &d->items[index];
    for (;;) {
        uint32_t seq = atomic_load_explicit(&item->pub_seq, memory_order_acquire);
        if (seq % 2 == 1) {
            continue; /* the writer is copying this item: a few stores, spin */
        }
        out->version = atomic_load_explicit(&item->pub_version, memory_order_relaxed);
        out->on_hand = atomic_load_explicit(&item->pub_on_hand, memory_order_relaxed);
        out->reserved = atomic_load_explicit(&item->pub_reserved, memory_order_relaxed);
        out->sold = atomic_load_explicit(&item->pub_sold, memory_order_relaxed);
        out->updated_at_ms = atomic_load_explicit(&item->pub_updated_at_ms, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&item->pub_seq, memory_order_relaxed) == seq) {
            break;
        }
    }
    if (out->version == 0) {
        return false;
    }
    SVC_ASSERT(out->reserved >= 0 && out->reserved <= out->on_hand);
    return true;
}
