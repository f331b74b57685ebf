/*
 * test_domain.c - the in-memory inventory (domain.c): creation, store choice, purchases,
 * adjustments, loading, the ACTIVE reservations it holds, and the commit/rollback protocol (an
 * undo record per item a batch changed) that returns a failed batch to the committed state.
 *
 * The hand-written cases pin each rule down; the randomized test then runs thousands of random
 * steps (purchases, adjustments, creations, loads, reservations made, confirmed, cancelled and
 * expired) with random commit/rollback against a deliberately naive model (arrays indexed by
 * product and store) and compares the two after every step: the working state, the committed
 * state as the undo list describes it, and dom_invariants_hold (each item's reserved is the sum
 * of the ACTIVE lines on it) through every rollback. Its seed is printed; set TEST_SEED to
 * replay a failure. Reservations are made and ended here as core/apply_reservations.c does.
 * The event catalogue is tested in test_events.c. Read test_queue.c next.
 */
#include "test_helpers.h"

#include "core/domain.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/svc_assert.h"

/* The tables' default sizes (base/capacity.h), as stockd starts without --max-* flags. */
static const struct capacity test_capacity = {CAPACITY_STORES_DEFAULT, CAPACITY_PRODUCTS_DEFAULT,
                                              CAPACITY_ITEMS_DEFAULT,
                                              CAPACITY_RESERVATIONS_DEFAULT};

/* ---- fixture and helpers ----------------------------------------------------------------- */

static int domain_setup(void **state)
{
    test_seed_end(); /* a failed randomized test leaves its seed behind */
    struct domain *d = calloc(1, sizeof *d);
    if (d == NULL || dom_init(d, &test_capacity) != 0) {
        free(d);
        return -1;
    }
    *state = d;
    return 0;
}

static int domain_teardown(void **state)
{
    struct domain *d = *state;
    dom_deinit(d);
    free(d);
    return 0;
}

#define ASSERT_INVARIANTS(d) ASSERT_TRUE(dom_invariants_hold(d))

static uint32_t make_store(struct domain *d, const char *id, int64_t latency_ms)
{
    uint32_t index = UINT32_MAX;
    ASSERT_OK(dom_store_create(d, id, id, latency_ms, &index));
    ASSERT_EQ_INT(dom_store_find(d, id), index);
    ASSERT_INVARIANTS(d);
    return index;
}

/* Creates sku with on_hand in store_index (or the lowest-stock store when < 0). */
static uint32_t make_product(struct domain *d, const char *sku, int64_t on_hand,
                             int32_t store_index)
{
    uint32_t item = UINT32_MAX;
    ASSERT_OK(dom_product_create(d, sku, sku, on_hand, store_index, 1000, &item));
    int32_t product = dom_product_find(d, sku);
    ASSERT_GE_INT(product, 0);
    ASSERT_EQ_UINT(d->items[item].product_index, product);
    ASSERT_EQ_INT(d->items[item].on_hand, on_hand);
    ASSERT_EQ_INT(d->items[item].version, 1);
    ASSERT_INVARIANTS(d);
    return (uint32_t)product;
}

/* Adds delta to (store, product), creating the item when absent; returns the item. */
static uint32_t stock_add(struct domain *d, uint32_t store, uint32_t product, int64_t delta)
{
    uint32_t item = UINT32_MAX;
    ASSERT_OK(dom_adjust(d, store, product, delta, 1000, &item));
    ASSERT_INVARIANTS(d);
    return item;
}

/* The working on_hand of (product, store), or -1 when it is not stocked there. */
static int64_t on_hand_of(const struct domain *d, uint32_t product, uint32_t store)
{
    if (store >= d->store_count || product >= d->product_count) {
        return -1; /* gone with a rollback */
    }
    int32_t item = dom_item_find(d, store, product);
    return item < 0 ? -1 : d->items[item].on_hand;
}

/* The undo list names every item the batch changed exactly once, and no other. */
static void assert_undo_list_consistent(const struct domain *d)
{
    uint32_t dirty = 0;
    for (uint32_t i = 0; i < d->item_count; i++) {
        dirty += d->items[i].dirty ? 1 : 0;
    }
    ASSERT_EQ_UINT(d->undo_count, dirty);
    for (uint32_t k = 0; k < d->undo_count; k++) {
        uint32_t index = d->undo[k].item_index;
        ASSERT_LT_UINT(index, d->item_count);
        ASSERT_TRUE(d->items[index].dirty);
        for (uint32_t j = 0; j < k; j++) {
            ASSERT_NE_UINT(d->undo[j].item_index, index);
        }
    }
}

/* An item as the last dom_commit left it. */
struct committed_item {
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
    int64_t sold;
    int64_t updated_at_ms;
};

/* The committed values of (product, store), rebuilt from the working state and the undo list
 * (the item's record when the batch changed it): what dom_rollback would return to, read
 * without rolling back. false when the committed state has no such item. */
static bool committed_item_get(const struct domain *d, uint32_t product, uint32_t store,
                               struct committed_item *out)
{
    if (product >= d->product_count_committed || store >= d->store_count_committed) {
        return false;
    }
    int32_t index = dom_item_find(d, store, product);
    if (index < 0 || (uint32_t)index >= d->item_count_committed) {
        return false; /* new items are appended after the committed ones */
    }
    const struct dom_item *item = &d->items[index];
    *out = (struct committed_item){item->on_hand, item->reserved, item->version, item->sold,
                                   item->updated_at_ms};
    for (uint32_t k = 0; item->dirty && k < d->undo_count; k++) {
        const struct dom_undo *u = &d->undo[k];
        if (u->item_index == (uint32_t)index) {
            *out = (struct committed_item){u->on_hand, u->reserved, u->version, u->sold,
                                           u->updated_at_ms};
            return true;
        }
    }
    ASSERT_FALSE(item->dirty); /* a changed item has its record */
    return true;
}

/* The committed on_hand of (product, store), or -1 when the committed state lacks it. */
static int64_t committed_on_hand(const struct domain *d, uint32_t product, uint32_t store)
{
    struct committed_item item;
    return committed_item_get(d, product, store, &item) ? item.on_hand : -1;
}

static int32_t committed_product_find(const struct domain *d, const char *sku)
{
    int32_t index = dom_product_find(d, sku);
    return index >= 0 && (uint32_t)index < d->product_count_committed ? index : -1;
}

static int32_t committed_store_find(const struct domain *d, const char *id)
{
    int32_t index = dom_store_find(d, id);
    return index >= 0 && (uint32_t)index < d->store_count_committed ? index : -1;
}

/* Sells qty and returns the store it came from, failing the test on refusal. */
static uint32_t buy(struct domain *d, uint32_t product, int32_t store, enum dom_policy policy,
                    int64_t qty)
{
    uint32_t item = UINT32_MAX;
    int64_t available = -1;
    ASSERT_OK(dom_purchase(d, product, store, policy, qty, 2000, &item, &available));
    ASSERT_EQ_UINT(d->items[item].product_index, product);
    ASSERT_EQ_INT(available, dom_item_available(&d->items[item]));
    ASSERT_INVARIANTS(d);
    return d->items[item].store_index;
}

/* Makes reservation seq of count lines at store as apply_reserve does: a new slot, touched
 * and scheduled, then (0, +qty) on each line's item. The caller checked every line fits. */
static struct reservation *reserve(struct domain *d, int64_t seq, uint32_t store,
                                   const struct res_line *lines, uint32_t count, int64_t now_ms,
                                   int64_t expires_at_ms)
{
    SVC_ASSERT(count >= 1 && count <= CMD_LINES_MAX);
    struct reservation *r = res_create(&d->reservations, seq);
    ASSERT_NOT_NULL(r);
    r->store_index = store;
    r->line_count = count;
    memcpy(r->lines, lines, count * sizeof lines[0]);
    r->created_at_ms = now_ms;
    r->expires_at_ms = expires_at_ms;
    snprintf(r->customer_id, sizeof r->customer_id, "c%" PRId64, seq);
    r->created = true;
    res_touch(&d->reservations, r);
    res_schedule(&d->reservations, r);
    for (uint32_t i = 0; i < count; i++) {
        int32_t item = dom_item_find(d, store, lines[i].product_index);
        ASSERT_GE_INT(item, 0);
        dom_item_move(d, (uint32_t)item, 0, lines[i].qty, now_ms);
    }
    ASSERT_EQ_INT(r->version, 1);
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    return r;
}

/* Ends r with status as reservation_end does: a confirm takes the held units out of on_hand,
 * the other endings make them available again; the reservation leaves at the commit. */
static void reservation_finish(struct domain *d, struct reservation *r, enum res_status status,
                               int64_t now_ms)
{
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    SVC_ASSERT(status != RES_ACTIVE);
    for (uint32_t i = 0; i < r->line_count; i++) {
        int32_t item = dom_item_find(d, r->store_index, r->lines[i].product_index);
        ASSERT_GE_INT(item, 0);
        int64_t qty = r->lines[i].qty;
        dom_item_move(d, (uint32_t)item, status == RES_CONFIRMED ? -qty : 0, -qty, now_ms);
    }
    r->status = status;
    r->version += 1;
    res_touch(&d->reservations, r);
}

/* Everything rollback must restore, flattened; round_robin_next is excluded on purpose: the
 * rotation is a fairness hint, neither committed nor persisted. So is the expiry heap, whose
 * stale entries are skipped when they surface (reservations.h). */
struct snapshot {
    size_t count;
    int64_t values[1 << 15];
};

static void snap_push(struct snapshot *s, int64_t value)
{
    SVC_ASSERT(s->count < sizeof s->values / sizeof s->values[0]);
    s->values[s->count++] = value;
}

static void snapshot_reservations(const struct domain *d, struct snapshot *s)
{
    const struct res_table *t = &d->reservations;
    snap_push(s, res_count(t));
    snap_push(s, t->touched_count);
    for (uint32_t slot = 0; slot < t->slots_max; slot++) {
        const struct reservation *r = &t->slots[slot];
        if (r->seq == 0) {
            continue;
        }
        snap_push(s, slot);
        snap_push(s, r->seq);
        snap_push(s, r->status);
        snap_push(s, r->version);
        snap_push(s, r->store_index);
        snap_push(s, r->expires_at_ms);
        snap_push(s, r->created_at_ms);
        snap_push(s, r->touched);
        snap_push(s, r->created);
        snap_push(s, r->loading);
        snap_push(s, r->line_count);
        for (uint32_t i = 0; i < r->line_count; i++) {
            snap_push(s, r->lines[i].product_index);
            snap_push(s, r->lines[i].qty);
        }
    }
}

static void snapshot_take(const struct domain *d, struct snapshot *s)
{
    s->count = 0;
    snap_push(s, d->store_count);
    snap_push(s, d->product_count);
    snap_push(s, d->item_count);
    snap_push(s, d->undo_count);
    snap_push(s, d->store_count_committed);
    snap_push(s, d->product_count_committed);
    snap_push(s, d->item_count_committed);
    snap_push(s, d->reservations_complete);
    for (uint32_t i = 0; i < d->store_count; i++) {
        const char *id = d->stores[i].id;
        snap_push(s, (int64_t)hash_fnv1a(HASH_FNV_OFFSET, id, strlen(id)));
        snap_push(s, d->stores[i].latency_ms);
        snap_push(s, d->stores[i].on_hand_total);
    }
    for (uint32_t p = 0; p < d->product_count; p++) {
        const char *sku = d->products[p].sku;
        snap_push(s, (int64_t)hash_fnv1a(HASH_FNV_OFFSET, sku, strlen(sku)));
        for (int32_t k = d->products[p].first_item; k >= 0; k = d->items[k].next) {
            snap_push(s, k); /* the product's item list, in order */
        }
        snap_push(s, -1);
    }
    for (uint32_t i = 0; i < d->item_count; i++) {
        const struct dom_item *item = &d->items[i];
        snap_push(s, item->store_index);
        snap_push(s, item->product_index);
        snap_push(s, item->on_hand);
        snap_push(s, item->reserved);
        snap_push(s, item->version);
        snap_push(s, item->sold);
        snap_push(s, item->updated_at_ms);
        snap_push(s, item->dirty);
    }
    snapshot_reservations(d, s);
}

static void assert_snapshots_equal(const struct snapshot *a, const struct snapshot *b)
{
    ASSERT_EQ_UINT(a->count, b->count);
    for (size_t i = 0; i < a->count; i++) {
        if (a->values[i] != b->values[i]) {
            TEST_FAIL("snapshots differ at value %zu: %" PRId64 " != %" PRId64, i, a->values[i],
                      b->values[i]);
        }
    }
}

/* ---- stores and products ----------------------------------------------------------------- */

static void test_store_create_and_duplicates(void **state)
{
    struct domain *d = *state;
    uint32_t s1 = make_store(d, "S1", 10);
    uint32_t s2 = make_store(d, "S2", 0);
    ASSERT_EQ_UINT(s1, 0);
    ASSERT_EQ_UINT(s2, 1);
    uint32_t index = 99;
    ASSERT_ERR(dom_store_create(d, "S1", "again", 5, &index), SVC_ESTORE_EXISTS);
    ASSERT_EQ_UINT(index, 99); /* untouched on refusal */
    ASSERT_EQ_UINT(d->store_count, 2);
    ASSERT_EQ_INT(d->stores[0].latency_ms, 10);
    ASSERT_EQ_INT(dom_store_find(d, "S3"), -1);
    ASSERT_EQ_INT(dom_store_find(d, "s1"), -1); /* ids are case-sensitive */
    ASSERT_INVARIANTS(d);
}

static void test_store_capacity(void **state)
{
    struct domain *d = *state;
    char id[16];
    for (uint32_t i = 0; i < d->capacity.stores; i++) {
        snprintf(id, sizeof id, "S%u", i);
        make_store(d, id, i);
    }
    uint32_t index = 0;
    ASSERT_ERR(dom_store_create(d, "one-more", "x", 0, &index), SVC_ECAPACITY);
    ASSERT_ERR(dom_store_create(d, "S0", "x", 0, &index), SVC_ESTORE_EXISTS); /* first check */
    ASSERT_EQ_UINT(d->store_count, d->capacity.stores);
    ASSERT_INVARIANTS(d);
}

static void test_product_create_and_duplicates(void **state)
{
    struct domain *d = *state;
    uint32_t item = 0;
    ASSERT_ERR(dom_product_create(d, "A", "a", 5, -1, 1, &item), SVC_EUNKNOWN_STORE); /* none */
    uint32_t s1 = make_store(d, "S1", 0);
    uint32_t s2 = make_store(d, "S2", 0);
    ASSERT_ERR(dom_product_create(d, "A", "a", 5, 2, 1, &item), SVC_EUNKNOWN_STORE);
    ASSERT_EQ_UINT(d->product_count, 0);
    uint32_t a = make_product(d, "A", 5, (int32_t)s2);
    ASSERT_EQ_INT(on_hand_of(d, a, s2), 5);
    ASSERT_EQ_INT(on_hand_of(d, a, s1), -1);
    ASSERT_EQ_INT(d->stores[s2].on_hand_total, 5);
    uint32_t zero = make_product(d, "ZERO", 0, (int32_t)s1);
    ASSERT_EQ_INT(on_hand_of(d, zero, s1), 0);
    struct snapshot *before = malloc(sizeof *before);
    struct snapshot *after = malloc(sizeof *after);
    snapshot_take(d, before);
    /* A duplicate is refused whichever store it names, and changes nothing. */
    ASSERT_ERR(dom_product_create(d, "A", "again", 7, (int32_t)s1, 1, &item), SVC_EPRODUCT_EXISTS);
    ASSERT_ERR(dom_product_create(d, "A", "again", 7, -1, 1, &item), SVC_EPRODUCT_EXISTS);
    snapshot_take(d, after);
    assert_snapshots_equal(before, after);
    ASSERT_EQ_INT(dom_product_find(d, "a"), -1);
    ASSERT_EQ_INT(dom_product_find(d, "A"), a);
    ASSERT_INVARIANTS(d);
    free(before);
    free(after);
}

static void test_product_placed_in_lowest_stock_store(void **state)
{
    struct domain *d = *state;
    uint32_t a = make_store(d, "A", 0);
    uint32_t b = make_store(d, "B", 0);
    uint32_t c = make_store(d, "C", 0);
    /* All empty: the tie goes to the first store. */
    uint32_t p0 = make_product(d, "P0", 100, -1);
    ASSERT_EQ_INT(on_hand_of(d, p0, a), 100);
    uint32_t p1 = make_product(d, "P1", 5, -1); /* B and C tie at 0: B */
    ASSERT_EQ_INT(on_hand_of(d, p1, b), 5);
    uint32_t p2 = make_product(d, "P2", 50, -1); /* C at 0 */
    ASSERT_EQ_INT(on_hand_of(d, p2, c), 50);
    uint32_t p3 = make_product(d, "P3", 20, -1); /* A 100, B 5, C 50: B */
    ASSERT_EQ_INT(on_hand_of(d, p3, b), 20);
    uint32_t p4 = make_product(d, "P4", 30, -1); /* B 25 still lowest */
    ASSERT_EQ_INT(on_hand_of(d, p4, b), 30);
    uint32_t p5 = make_product(d, "P5", 1, -1); /* B 55 > C 50: C */
    ASSERT_EQ_INT(on_hand_of(d, p5, c), 1);
    /* Totals follow sales too: selling 60 from A makes it the lowest. */
    buy(d, p0, (int32_t)a, DOM_POLICY_HIGHEST_AVAILABLE, 60);
    uint32_t p6 = make_product(d, "P6", 0, -1);
    ASSERT_EQ_INT(on_hand_of(d, p6, a), 0);
    ASSERT_EQ_INT(d->stores[a].on_hand_total, 40);
    ASSERT_EQ_INT(d->stores[b].on_hand_total, 55);
    ASSERT_EQ_INT(d->stores[c].on_hand_total, 51);
}

/* ---- purchases --------------------------------------------------------------------------- */

/* Product "P" stocked with on_hand[k] in store k (no item where on_hand[k] < 0). */
static uint32_t stock_product(struct domain *d, const char *sku, const int64_t *on_hand,
                              uint32_t store_count)
{
    int32_t first = -1;
    for (uint32_t k = 0; k < store_count && first < 0; k++) {
        if (on_hand[k] >= 0) {
            first = (int32_t)k;
        }
    }
    SVC_ASSERT(first >= 0);
    uint32_t product = make_product(d, sku, on_hand[first], first);
    for (uint32_t k = (uint32_t)first + 1; k < store_count; k++) {
        if (on_hand[k] >= 0) {
            stock_add(d, k, product, on_hand[k]);
        }
    }
    return product;
}

static void test_purchase_highest_available(void **state)
{
    struct domain *d = *state;
    for (int i = 0; i < 4; i++) {
        char id[8];
        snprintf(id, sizeof id, "S%d", i);
        make_store(d, id, 0);
    }
    const int64_t stock[] = {5, 9, -1, 9};
    uint32_t p = stock_product(d, "P", stock, 4);
    /* Ties go to the first store with the most. */
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 1), 1);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 1), 3);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 8), 1); /* 8, 8: first */
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 2), 3); /* 5, 0, 8 */
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 5), 3); /* 5, 0, 6: store 3 */
    ASSERT_EQ_INT(on_hand_of(d, p, 0), 5);
    ASSERT_EQ_INT(on_hand_of(d, p, 3), 1);
    ASSERT_EQ_INT(d->items[dom_item_find(d, 1, p)].sold, 9);
}

static void test_purchase_lowest_latency(void **state)
{
    struct domain *d = *state;
    const int64_t latency[] = {30, 10, 20, 10};
    for (int i = 0; i < 4; i++) {
        char id[8];
        snprintf(id, sizeof id, "S%d", i);
        make_store(d, id, latency[i]);
    }
    const int64_t stock[] = {5, 1, 5, 5};
    uint32_t p = stock_product(d, "P", stock, 4);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_LOWEST_LATENCY, 1), 1); /* 10 and 10: first */
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_LOWEST_LATENCY, 1), 3); /* S1 is empty now */
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_LOWEST_LATENCY, 5), 2); /* S3 has only 4 */
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_LOWEST_LATENCY, 4), 3);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_LOWEST_LATENCY, 1), 0); /* only S0 is left */
}

static void test_purchase_round_robin(void **state)
{
    struct domain *d = *state;
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "S%d", i);
        make_store(d, id, 0);
    }
    const int64_t stock[] = {10, 3, 10};
    uint32_t p = stock_product(d, "P", stock, 3);
    uint32_t q = stock_product(d, "Q", stock, 3);
    const uint32_t expected[] = {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2, 0, 2};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_ROUND_ROBIN, 1), expected[i]);
    }
    /* Each product rotates on its own. */
    ASSERT_EQ_UINT(buy(d, q, -1, DOM_POLICY_ROUND_ROBIN, 1), 0);
    ASSERT_EQ_UINT(buy(d, q, -1, DOM_POLICY_ROUND_ROBIN, 1), 1);
    /* A store without enough for qty is skipped, and the rotation resumes after the one
     * chosen: S0 and S2 have 5 and 5 left, S1 none. */
    ASSERT_EQ_INT(on_hand_of(d, p, 0), 5);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_ROUND_ROBIN, 5), 0);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_ROUND_ROBIN, 1), 2);
    ASSERT_EQ_UINT(buy(d, p, -1, DOM_POLICY_ROUND_ROBIN, 4), 2);
    uint32_t item = 0;
    int64_t available = -1;
    ASSERT_ERR(dom_purchase(d, p, -1, DOM_POLICY_ROUND_ROBIN, 1, 1, &item, &available),
               SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_INT(available, 0);
}

static void test_purchase_explicit_store(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t s1 = make_store(d, "S1", 0);
    uint32_t s2 = make_store(d, "S2", 0);
    const int64_t stock[] = {3, 50, -1};
    uint32_t p = stock_product(d, "P", stock, 3);
    uint32_t item = 0;
    int64_t available = -1;
    /* The named store decides, even when another has plenty. */
    ASSERT_EQ_UINT(buy(d, p, (int32_t)s0, DOM_POLICY_HIGHEST_AVAILABLE, 2), s0);
    ASSERT_ERR(
        dom_purchase(d, p, (int32_t)s0, DOM_POLICY_HIGHEST_AVAILABLE, 2, 1, &item, &available),
        SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_INT(available, 1); /* what the named store has, not the best store */
    ASSERT_ERR(
        dom_purchase(d, p, (int32_t)s2, DOM_POLICY_HIGHEST_AVAILABLE, 1, 1, &item, &available),
        SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_INT(available, 0); /* not stocked there at all */
    ASSERT_EQ_INT(on_hand_of(d, p, s2), -1);
    ASSERT_EQ_UINT(buy(d, p, (int32_t)s0, DOM_POLICY_ROUND_ROBIN, 1), s0);
    ASSERT_EQ_UINT(buy(d, p, (int32_t)s1, DOM_POLICY_LOWEST_LATENCY, 50), s1);
    ASSERT_EQ_INT(on_hand_of(d, p, s0), 0);
    ASSERT_EQ_INT(on_hand_of(d, p, s1), 0);
}

static void test_insufficient_stock_changes_nothing(void **state)
{
    struct domain *d = *state;
    make_store(d, "S0", 5);
    make_store(d, "S1", 1);
    const int64_t stock[] = {4, 7};
    uint32_t p = stock_product(d, "P", stock, 2);
    dom_commit(d);
    buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 1); /* a dirty item in the working batch */
    struct snapshot *before = malloc(sizeof *before);
    struct snapshot *after = malloc(sizeof *after);
    snapshot_take(d, before);
    const enum dom_policy policies[] = {DOM_POLICY_HIGHEST_AVAILABLE, DOM_POLICY_LOWEST_LATENCY,
                                        DOM_POLICY_ROUND_ROBIN};
    for (size_t i = 0; i < 3; i++) {
        uint32_t item = 12345;
        int64_t available = -1;
        ASSERT_ERR(dom_purchase(d, p, -1, policies[i], 7, 1, &item, &available),
                   SVC_EINSUFFICIENT_STOCK);
        ASSERT_EQ_INT(available, 6); /* the best store, reported to the client */
        ASSERT_EQ_UINT(item, 12345);
        ASSERT_ERR(dom_purchase(d, p, -1, policies[i], QTY_MAX, 1, &item, &available),
                   SVC_EINSUFFICIENT_STOCK);
        ASSERT_EQ_INT(available, 6);
    }
    snapshot_take(d, after);
    assert_snapshots_equal(before, after);
    ASSERT_EQ_UINT(d->products[p].round_robin_next, 0); /* a refusal does not rotate */
    ASSERT_INVARIANTS(d);
    free(before);
    free(after);
}

/* ---- adjustments ------------------------------------------------------------------------- */

static void test_adjust_up_down_and_bounds(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t s1 = make_store(d, "S1", 0);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    uint32_t item = stock_add(d, s0, p, 5);
    ASSERT_EQ_INT(d->items[item].on_hand, 15);
    ASSERT_EQ_INT(d->items[item].version, 2);
    stock_add(d, s0, p, -15);
    ASSERT_EQ_INT(on_hand_of(d, p, s0), 0);
    ASSERT_EQ_INT(d->items[item].version, 3);
    uint32_t untouched = 77;
    ASSERT_ERR(dom_adjust(d, s0, p, -1, 1, &untouched), SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_UINT(untouched, 77);
    ASSERT_EQ_INT(d->items[item].version, 3);
    /* Absent item: a negative delta is refused and creates nothing... */
    ASSERT_ERR(dom_adjust(d, s1, p, -1, 1, &untouched), SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_INT(on_hand_of(d, p, s1), -1);
    ASSERT_EQ_UINT(d->item_count, 1);
    /* ...a zero or positive one creates it at version 1. */
    uint32_t created = stock_add(d, s1, p, 0);
    ASSERT_EQ_INT(d->items[created].version, 1);
    ASSERT_EQ_INT(on_hand_of(d, p, s1), 0);
    /* The upper bound, both ways. */
    stock_add(d, s1, p, ON_HAND_MAX);
    ASSERT_EQ_INT(on_hand_of(d, p, s1), ON_HAND_MAX);
    ASSERT_ERR(dom_adjust(d, s1, p, 1, 1, &untouched), SVC_EVALIDATION);
    ASSERT_EQ_INT(on_hand_of(d, p, s1), ON_HAND_MAX);
    ASSERT_EQ_INT(d->stores[s1].on_hand_total, ON_HAND_MAX);
    ASSERT_INVARIANTS(d);
}

static void test_adjust_below_reserved(void **state)
{
    struct domain *d = *state;
    /* An item with reserved units, loaded from storage with the reservation that holds them. */
    ASSERT_OK(dom_load_store(d, "S0", "Store 0", 0));
    ASSERT_OK(dom_load_product(d, "P", "Product"));
    ASSERT_OK(dom_load_item(d, "S0", "P", 10, 4, 3, 0, 500));
    ASSERT_ERR(dom_load_item(d, "S0", "NOPE", 1, 0, 1, 0, 1), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_item(d, "S0", "P", 1, 2, 1, 0, 1), SVC_EVALIDATION);
    ASSERT_OK(dom_load_reservation(d, 1, "S0", "c1", 60000, 1, 400));
    ASSERT_OK(dom_load_reservation_line(d, 1, "P", 4));
    dom_commit(d);
    ASSERT_INVARIANTS(d);
    uint32_t p = (uint32_t)dom_product_find(d, "P");
    struct committed_item committed;
    ASSERT_TRUE(committed_item_get(d, p, 0, &committed));
    ASSERT_EQ_INT(committed.reserved, 4);
    ASSERT_EQ_INT(committed.version, 3);
    uint32_t item = 0;
    ASSERT_ERR(dom_adjust(d, 0, p, -7, 1, &item), SVC_EINSUFFICIENT_STOCK);
    int64_t available = -1;
    ASSERT_ERR(dom_purchase(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 7, 1, &item, &available),
               SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_INT(available, 6); /* on_hand 10 less 4 reserved */
    stock_add(d, 0, p, -6);      /* exactly down to reserved */
    ASSERT_EQ_INT(on_hand_of(d, p, 0), 4);
    ASSERT_ERR(dom_purchase(d, p, 0, DOM_POLICY_HIGHEST_AVAILABLE, 1, 1, &item, &available),
               SVC_EINSUFFICIENT_STOCK);
    ASSERT_EQ_INT(available, 0);
    ASSERT_EQ_INT(d->items[0].version, 4);
    ASSERT_INVARIANTS(d);
}

/* ---- commit and rollback ----------------------------------------------------------------- */

static void test_commit_makes_changes_committed(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    /* Nothing of the working batch is committed yet. */
    ASSERT_EQ_UINT(d->store_count_committed, 0);
    ASSERT_EQ_UINT(d->product_count_committed, 0);
    ASSERT_EQ_UINT(d->item_count_committed, 0);
    ASSERT_EQ_INT(committed_store_find(d, "S0"), -1);
    ASSERT_EQ_INT(committed_product_find(d, "P"), -1);
    ASSERT_EQ_INT(committed_on_hand(d, p, s0), -1);
    ASSERT_EQ_UINT(d->undo_count, 1); /* the new item, recorded at version 0 */
    ASSERT_EQ_INT(d->undo[0].version, 0);
    assert_undo_list_consistent(d);
    dom_commit(d);
    ASSERT_EQ_UINT(d->undo_count, 0);
    assert_undo_list_consistent(d); /* and no item is left dirty */
    ASSERT_EQ_UINT(d->store_count_committed, 1);
    ASSERT_EQ_UINT(d->product_count_committed, 1);
    ASSERT_EQ_UINT(d->item_count_committed, 1);
    ASSERT_EQ_INT(committed_store_find(d, "S0"), s0);
    ASSERT_EQ_INT(committed_product_find(d, "P"), p);
    ASSERT_EQ_INT(committed_on_hand(d, p, s0), 10);
    /* Changes to a committed item stay out of the committed state until the next commit. */
    uint32_t s1 = make_store(d, "S1", 0);
    buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 3);
    stock_add(d, s1, p, 4);
    uint32_t q = make_product(d, "Q", 1, (int32_t)s0);
    ASSERT_EQ_UINT(d->undo_count, 3); /* P in S0, P in S1, Q in S0 */
    buy(d, p, (int32_t)s0, DOM_POLICY_HIGHEST_AVAILABLE, 1);
    ASSERT_EQ_UINT(d->undo_count, 3); /* a second change keeps the record of the first */
    assert_undo_list_consistent(d);
    ASSERT_EQ_INT(committed_on_hand(d, p, s0), 10);
    ASSERT_EQ_INT(committed_on_hand(d, p, s1), -1);
    ASSERT_EQ_INT(committed_store_find(d, "S1"), -1);
    ASSERT_EQ_INT(committed_product_find(d, "Q"), -1);
    struct committed_item item;
    ASSERT_TRUE(committed_item_get(d, p, s0, &item));
    ASSERT_EQ_INT(item.version, 1);
    ASSERT_EQ_INT(item.sold, 0);
    ASSERT_EQ_INT(item.updated_at_ms, 1000);
    dom_commit(d);
    ASSERT_TRUE(committed_item_get(d, p, s0, &item));
    ASSERT_EQ_INT(item.on_hand, 6);
    ASSERT_EQ_INT(item.version, 3);
    ASSERT_EQ_INT(item.sold, 4);
    ASSERT_EQ_INT(item.updated_at_ms, 2000);
    ASSERT_EQ_INT(committed_on_hand(d, p, s1), 4);
    ASSERT_EQ_INT(committed_on_hand(d, q, s0), 1);
    ASSERT_EQ_INT(committed_store_find(d, "S1"), s1);
    ASSERT_EQ_INT(committed_product_find(d, "Q"), q);
    ASSERT_INVARIANTS(d);
}

static void test_rollback_restores_last_committed_state(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t s1 = make_store(d, "S1", 5);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    uint32_t q = make_product(d, "Q", 20, (int32_t)s1);
    const struct res_line held[] = {{q, 5}};
    struct reservation *r1 = reserve(d, 1, s1, held, 1, 1500, 90000);
    dom_commit(d);
    struct snapshot *committed = malloc(sizeof *committed);
    struct snapshot *now = malloc(sizeof *now);
    snapshot_take(d, committed);
    /* One batch touching everything: new store, new products, new items in old and new
     * stores, purchases and adjustments of committed items, a reservation made and a
     * committed one confirmed. */
    uint32_t s2 = make_store(d, "S2", 1);
    uint32_t r = make_product(d, "R", 7, (int32_t)s2);
    uint32_t t = make_product(d, "T", 3, (int32_t)s0);
    stock_add(d, s2, p, 9);
    stock_add(d, s0, q, 2);
    buy(d, p, (int32_t)s0, DOM_POLICY_HIGHEST_AVAILABLE, 4);
    buy(d, q, -1, DOM_POLICY_LOWEST_LATENCY, 15); /* all that S1 has available */
    const struct res_line lines[] = {{p, 6}, {t, 3}};
    reserve(d, 2, s0, lines, 2, 2000, 90000);
    reservation_finish(d, r1, RES_CONFIRMED, 2000);
    stock_add(d, s1, q, 6);
    buy(d, r, -1, DOM_POLICY_ROUND_ROBIN, 1);
    ASSERT_EQ_UINT(s2, 2);
    ASSERT_EQ_INT(on_hand_of(d, q, s1), 6);
    ASSERT_EQ_INT(d->undo[0].on_hand, 0); /* S2's new R, recorded before its first change */
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    snapshot_take(d, now);
    assert_snapshots_equal(committed, now);
    ASSERT_EQ_INT(dom_store_find(d, "S2"), -1);
    ASSERT_EQ_INT(dom_product_find(d, "R"), -1);
    ASSERT_EQ_INT(dom_product_find(d, "T"), -1);
    ASSERT_EQ_INT(on_hand_of(d, p, s2), -1);
    ASSERT_EQ_INT(on_hand_of(d, q, s0), -1);
    ASSERT_EQ_INT(on_hand_of(d, p, s0), 10);
    ASSERT_EQ_INT(on_hand_of(d, q, s1), 20);
    ASSERT_EQ_INT(d->items[dom_item_find(d, s1, q)].reserved, 5);
    ASSERT_NULL(res_find(&d->reservations, 2));
    ASSERT_TRUE(res_find(&d->reservations, 1) == r1);
    ASSERT_EQ_INT(r1->status, RES_ACTIVE);
    ASSERT_EQ_INT(r1->version, 1);
    ASSERT_EQ_INT(committed_on_hand(d, p, s0), 10);
    ASSERT_EQ_INT(committed_on_hand(d, p, s2), -1);
    /* The same names can be created again after the rollback, and are then committed. */
    ASSERT_EQ_UINT(make_store(d, "S2", 1), s2);
    ASSERT_EQ_UINT(make_product(d, "T", 30, (int32_t)s2), r); /* the slot R had */
    ASSERT_EQ_UINT(make_product(d, "R", 70, (int32_t)s1), t);
    stock_add(d, s0, q, 1);
    const struct res_line again[] = {{r, 30}};
    reserve(d, 2, s2, again, 1, 3000, 90000); /* the rolled-back seq is taken again */
    dom_commit(d);
    ASSERT_INVARIANTS(d);
    ASSERT_EQ_INT(committed_on_hand(d, r, s2), 30);
    ASSERT_EQ_INT(committed_on_hand(d, t, s1), 70);
    ASSERT_EQ_INT(committed_on_hand(d, q, s0), 1);
    ASSERT_EQ_INT(committed_product_find(d, "T"), r);
    ASSERT_EQ_INT(committed_product_find(d, "R"), t);
    ASSERT_EQ_INT(d->stores[s2].on_hand_total, 30);
    ASSERT_EQ_INT(res_find(&d->reservations, 2)->store_index, s2);
    /* A rollback with nothing in the batch is a no-op. */
    snapshot_take(d, committed);
    dom_rollback(d);
    snapshot_take(d, now);
    assert_snapshots_equal(committed, now);
    ASSERT_INVARIANTS(d);
    free(committed);
    free(now);
}

/* ---- reservations ------------------------------------------------------------------------ */

static void test_reservation_commit_and_rollback(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    uint32_t q = make_product(d, "Q", 5, (int32_t)s0);
    dom_commit(d);
    struct dom_item *ip = &d->items[dom_item_find(d, s0, p)];
    struct dom_item *iq = &d->items[dom_item_find(d, s0, q)];
    /* Made and rolled back, a reservation leaves nothing behind: no slot, no id, no units
     * held. A sku twice stays two lines (the applier sums them to check availability). */
    const struct res_line lines[] = {{p, 3}, {q, 2}, {p, 1}};
    reserve(d, 1, s0, lines, 3, 2000, 9000);
    ASSERT_INVARIANTS(d);
    ASSERT_EQ_INT(ip->reserved, 4);
    ASSERT_EQ_INT(ip->version, 3); /* one change per line */
    ASSERT_EQ_INT(iq->reserved, 2);
    ASSERT_EQ_INT(dom_item_available(ip), 6);
    struct committed_item committed;
    ASSERT_TRUE(committed_item_get(d, p, s0, &committed));
    ASSERT_EQ_INT(committed.reserved, 0);
    ASSERT_EQ_INT(committed.version, 1);
    ASSERT_EQ_UINT(res_count(&d->reservations), 1);
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    ASSERT_NULL(res_find(&d->reservations, 1));
    ASSERT_EQ_UINT(res_count(&d->reservations), 0);
    ASSERT_EQ_INT(ip->reserved, 0);
    ASSERT_EQ_INT(ip->version, 1);
    ASSERT_EQ_INT(iq->reserved, 0);
    ASSERT_EQ_INT(res_next_expiry(&d->reservations), INT64_MAX); /* its heap entry is stale */
    /* Made again and committed, it holds its units. */
    struct reservation *r = reserve(d, 1, s0, lines, 3, 2000, 9000);
    dom_commit(d);
    ASSERT_INVARIANTS(d);
    ASSERT_FALSE(r->touched);
    ASSERT_FALSE(r->created);
    ASSERT_TRUE(committed_item_get(d, p, s0, &committed));
    ASSERT_EQ_INT(committed.reserved, 4);
    struct snapshot *before = malloc(sizeof *before);
    struct snapshot *after = malloc(sizeof *after);
    snapshot_take(d, before);
    /* Confirmed and rolled back: ACTIVE again at its version, holding its units, scheduled. */
    reservation_finish(d, r, RES_CONFIRMED, 3000);
    ASSERT_INVARIANTS(d); /* an ended reservation holds nothing */
    ASSERT_EQ_INT(ip->on_hand, 6);
    ASSERT_EQ_INT(ip->reserved, 0);
    ASSERT_EQ_INT(iq->on_hand, 3);
    ASSERT_EQ_INT(r->version, 2);
    ASSERT_TRUE(res_find(&d->reservations, 1) == r);             /* in memory until the commit */
    ASSERT_EQ_INT(res_next_expiry(&d->reservations), INT64_MAX); /* not ACTIVE: never due */
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    snapshot_take(d, after);
    assert_snapshots_equal(before, after);
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    ASSERT_EQ_INT(r->version, 1);
    ASSERT_EQ_INT(res_next_expiry(&d->reservations), 9000); /* rescheduled */
    /* Cancelled and rolled back: the same. */
    reservation_finish(d, r, RES_CANCELLED, 3000);
    ASSERT_EQ_INT(ip->on_hand, 10);
    ASSERT_EQ_INT(ip->reserved, 0);
    ASSERT_INVARIANTS(d);
    dom_rollback(d);
    snapshot_take(d, after);
    assert_snapshots_equal(before, after);
    /* Due, expired and committed: the slot is free and the units available again. */
    ASSERT_NULL(res_pop_due(&d->reservations, 8999));
    ASSERT_TRUE(res_pop_due(&d->reservations, 9000) == r);
    reservation_finish(d, r, RES_EXPIRED, 9000);
    ASSERT_NULL(res_pop_due(&d->reservations, 9000)); /* its other entries are stale */
    dom_commit(d);
    ASSERT_INVARIANTS(d);
    ASSERT_NULL(res_find(&d->reservations, 1));
    ASSERT_EQ_UINT(res_count(&d->reservations), 0);
    ASSERT_EQ_INT(ip->on_hand, 10);
    ASSERT_EQ_INT(ip->reserved, 0);
    ASSERT_EQ_INT(iq->on_hand, 5);
    ASSERT_EQ_INT(iq->reserved, 0);
    /* Not INT64_MAX: that is res_next_expiry's "none", which res_pop_due(t, INT64_MAX) takes
     * for a due entry and then reads an empty heap's first slot (reported with issue 9). */
    ASSERT_NULL(res_pop_due(&d->reservations, INT64_MAX - 1));
    free(before);
    free(after);
}

/* dom_invariants_hold checks reserved against the ACTIVE lines when the domain holds every
 * reservation, and only then: on a shared backend others hold reservations too. */
static void test_invariants_check_reserved_against_lines(void **state)
{
    struct domain *d = *state;
    ASSERT_TRUE(d->reservations_complete); /* dom_init's default */
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t s1 = make_store(d, "S1", 0);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    stock_add(d, s1, p, 5);
    const struct res_line lines[] = {{p, 4}};
    struct reservation *r = reserve(d, 7, s0, lines, 1, 1000, 5000);
    dom_commit(d);
    ASSERT_INVARIANTS(d);
    struct dom_item *item = &d->items[dom_item_find(d, s0, p)];
    /* reserved off by one either way, every other invariant intact. */
    item->reserved += 1;
    ASSERT_FALSE(dom_invariants_hold(d));
    d->reservations_complete = false;
    ASSERT_TRUE(dom_invariants_hold(d));
    d->reservations_complete = true;
    item->reserved -= 2;
    ASSERT_FALSE(dom_invariants_hold(d));
    item->reserved += 1;
    ASSERT_INVARIANTS(d);
    /* A line that does not match its item. */
    r->lines[0].qty = 5;
    ASSERT_FALSE(dom_invariants_hold(d));
    d->reservations_complete = false;
    ASSERT_TRUE(dom_invariants_hold(d));
    d->reservations_complete = true;
    r->lines[0].qty = 4;
    /* The units held on another store's item. */
    r->store_index = s1;
    ASSERT_FALSE(dom_invariants_hold(d));
    r->store_index = s0;
    /* A line on an item that does not exist (Q is not stocked in S0). */
    uint32_t q = make_product(d, "Q", 1, (int32_t)s1);
    r->lines[r->line_count++] = (struct res_line){q, 1};
    ASSERT_FALSE(dom_invariants_hold(d));
    r->line_count--;
    ASSERT_INVARIANTS(d);
    /* Only ACTIVE reservations count: one ended without releasing its units is wrong... */
    r->status = RES_CANCELLED;
    ASSERT_FALSE(dom_invariants_hold(d));
    r->status = RES_ACTIVE;
    /* ...and so is an item holding units that no reservation accounts for. */
    const struct res_line other[] = {{q, 1}};
    struct reservation *r2 = reserve(d, 8, s1, other, 1, 1000, 5000);
    ASSERT_INVARIANTS(d);
    r2->status = RES_EXPIRED;
    ASSERT_FALSE(dom_invariants_hold(d));
    d->reservations_complete = false;
    ASSERT_TRUE(dom_invariants_hold(d));
    d->reservations_complete = true;
    r2->status = RES_ACTIVE;
    ASSERT_INVARIANTS(d);
}

/* The loader path: stores and products are kept once there, items take the stored values
 * unless memory has that version, reservations come with their lines, and a reservation
 * another instance ended is forgotten at the commit. */
/* A shared backend's prefetch reads a held order reservation again after another instance's
 * step put its charge in doubt: memory takes the stored order state, attempts, version and
 * expiry (never, while in doubt), so this instance neither expires nor cancels it. */
static void test_load_refreshes_a_held_order(void **state)
{
    struct domain *d = *state;
    ASSERT_OK(dom_load_store(d, "S0", "Store 0", 0));
    ASSERT_OK(dom_load_product(d, "P", "Product"));
    ASSERT_OK(dom_load_item(d, "S0", "P", 10, 2, 1, 0, 500));
    ASSERT_OK(dom_load_reservation(d, 3, "S0", "c", 60000, 1, 100));
    ASSERT_OK(dom_load_reservation_line(d, 3, "P", 2));
    ASSERT_OK(dom_load_reservation_order(d, 3, 3, "PENDING", 0));
    dom_commit(d);
    ASSERT_OK(dom_load_reservation(d, 3, "S0", "c", RES_EXPIRES_NEVER, 3, 100));
    ASSERT_OK(dom_load_reservation_line(d, 3, "P", 2));
    ASSERT_OK(dom_load_reservation_order(d, 3, 3, "PAYING", 1));
    ASSERT_ERR(dom_load_reservation_order(d, 3, 4, "PAYING", 1), SVC_EVALIDATION);
    dom_commit(d);
    struct reservation *r = res_find(&d->reservations, 3);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ_UINT(r->line_count, 1);
    ASSERT_EQ_INT(r->order_state, RES_ORDER_PAYING);
    ASSERT_EQ_INT(r->pay_attempts, 1);
    ASSERT_EQ_INT(r->version, 3);
    ASSERT_NULL(res_pop_due(&d->reservations, 70000)); /* its old expiry is a stale entry */
    ASSERT_INVARIANTS(d);
}

static void test_load_and_forget(void **state)
{
    struct domain *d = *state;
    ASSERT_OK(dom_load_store(d, "S0", "Store 0", 0));
    ASSERT_OK(dom_load_store(d, "S0", "renamed", 9)); /* kept as it was */
    ASSERT_EQ_UINT(d->store_count, 1);
    ASSERT_EQ_STR(d->stores[0].name, "Store 0");
    ASSERT_EQ_INT(d->stores[0].latency_ms, 0);
    ASSERT_ERR(dom_load_store(d, "", "x", 0), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_store(d, "S1", "x", -1), SVC_EVALIDATION);
    ASSERT_OK(dom_load_product(d, "P", "Product"));
    ASSERT_OK(dom_load_product(d, "P", "renamed"));
    ASSERT_OK(dom_load_product(d, "Q", "Q"));
    ASSERT_EQ_UINT(d->product_count, 2);
    ASSERT_EQ_STR(d->products[0].name, "Product");
    ASSERT_ERR(dom_load_product(d, "", "x"), SVC_EVALIDATION);
    ASSERT_OK(dom_load_item(d, "S0", "P", 10, 6, 3, 2, 500));
    ASSERT_OK(dom_load_item(d, "S0", "Q", 4, 0, 1, 0, 500));
    ASSERT_ERR(dom_load_item(d, "S0", "P", 5, 6, 5, 0, 1), SVC_EVALIDATION);  /* reserved */
    ASSERT_ERR(dom_load_item(d, "S0", "P", 5, 0, 0, 0, 1), SVC_EVALIDATION);  /* version */
    ASSERT_ERR(dom_load_item(d, "S0", "P", 5, 0, 5, -1, 1), SVC_EVALIDATION); /* sold */
    ASSERT_ERR(dom_load_item(d, "S9", "P", 5, 0, 5, 0, 1), SVC_EVALIDATION);
    ASSERT_EQ_INT(d->stores[0].on_hand_total, 14);
    ASSERT_FALSE(dom_invariants_hold(d)); /* P holds 6 units no reservation accounts for yet */
    ASSERT_OK(dom_load_reservation(d, 5, "S0", "alice", 60000, 2, 100));
    ASSERT_ERR(dom_load_reservation(d, 6, "S9", "bob", 60000, 1, 100), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_reservation(d, 0, "S0", "bob", 60000, 1, 100), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_reservation(d, 6, "S0", "bob", 60000, 0, 100), SVC_EVALIDATION);
    char long_id[CUSTOMER_ID_BYTES_MAX + 2];
    memset(long_id, 'c', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    ASSERT_ERR(dom_load_reservation(d, 6, "S0", long_id, 60000, 1, 100), SVC_EVALIDATION);
    ASSERT_NULL(res_find(&d->reservations, 6));
    ASSERT_OK(dom_load_reservation_line(d, 5, "P", 4));
    ASSERT_FALSE(dom_invariants_hold(d));
    ASSERT_OK(dom_load_reservation_line(d, 5, "P", 2));
    ASSERT_INVARIANTS(d);
    ASSERT_ERR(dom_load_reservation_line(d, 6, "P", 1), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_reservation_line(d, 5, "NOPE", 1), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_reservation_line(d, 5, "Q", 0), SVC_EVALIDATION);
    dom_commit(d);
    ASSERT_INVARIANTS(d);
    struct reservation *r = res_find(&d->reservations, 5);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    ASSERT_EQ_INT(r->version, 2);
    ASSERT_EQ_UINT(r->store_index, 0);
    ASSERT_EQ_STR(r->customer_id, "alice");
    ASSERT_EQ_UINT(r->line_count, 2);
    ASSERT_EQ_INT(r->expires_at_ms, 60000);
    ASSERT_EQ_INT(r->created_at_ms, 100);
    ASSERT_FALSE(r->loading);
    ASSERT_FALSE(r->touched);
    ASSERT_EQ_INT(res_next_expiry(&d->reservations), 60000); /* scheduled by the load */
    /* Read again by a later load (a shared backend's prefetch), a held reservation keeps its
     * lines and customer but takes the stored version and expiry: another instance's step
     * may have moved it. */
    ASSERT_OK(dom_load_reservation(d, 5, "S0", "bob", 1, 9, 1));
    ASSERT_OK(dom_load_reservation_line(d, 5, "Q", 1));
    ASSERT_EQ_UINT(r->line_count, 2);
    ASSERT_EQ_INT(r->version, 9);
    ASSERT_EQ_INT(r->expires_at_ms, 1);
    ASSERT_EQ_STR(r->customer_id, "alice");
    /* Even when it holds every line it may: reported again, its lines are not new (a full
     * reservation once made the read fail). Reported twice in one read, it is refused. */
    ASSERT_OK(dom_load_reservation(d, 7, "S0", "carol", 60000, 1, 100));
    ASSERT_ERR(dom_load_reservation(d, 7, "S0", "carol", 60000, 1, 100), SVC_EVALIDATION);
    for (int i = 0; i < CMD_LINES_MAX; i++) {
        ASSERT_OK(dom_load_reservation_line(d, 7, "Q", 1));
    }
    ASSERT_ERR(dom_load_reservation_line(d, 7, "Q", 1), SVC_EVALIDATION); /* one too many */
    dom_rollback(d); /* a rolled-back read leaves no reservation behind */
    ASSERT_NULL(res_find(&d->reservations, 7));
    ASSERT_OK(dom_load_reservation(d, 7, "S0", "carol", 60000, 1, 100));
    for (int i = 0; i < CMD_LINES_MAX; i++) {
        ASSERT_OK(dom_load_reservation_line(d, 7, "Q", 1));
    }
    dom_commit(d);
    ASSERT_OK(dom_load_reservation(d, 7, "S0", "carol", 60000, 1, 100));
    ASSERT_OK(dom_load_reservation_line(d, 7, "Q", 1)); /* held, with all its lines */
    ASSERT_EQ_UINT(res_find(&d->reservations, 7)->line_count, CMD_LINES_MAX);
    dom_forget_reservation(d, 7); /* (it holds units the items do not show: let it go) */
    dom_commit(d);
    ASSERT_NULL(res_find(&d->reservations, 7));
    ASSERT_EQ_INT(r->version, 2); /* the rolled-back read put the held one back */
    ASSERT_EQ_INT(r->expires_at_ms, 60000);
    ASSERT_EQ_STR(r->customer_id, "alice");
    ASSERT_INVARIANTS(d);
    dom_commit(d);
    /* An item at the version memory has is left alone; a new version replaces it. */
    int32_t p = dom_product_find(d, "P");
    struct dom_item *item = &d->items[dom_item_find(d, 0, (uint32_t)p)];
    ASSERT_OK(dom_load_item(d, "S0", "P", 99, 6, 3, 7, 1));
    ASSERT_EQ_INT(item->on_hand, 10);
    ASSERT_EQ_UINT(d->undo_count, 0);
    ASSERT_OK(dom_load_item(d, "S0", "P", 12, 6, 4, 3, 700));
    ASSERT_EQ_INT(item->on_hand, 12);
    ASSERT_EQ_INT(item->version, 4);
    ASSERT_EQ_INT(item->sold, 3);
    ASSERT_EQ_INT(item->updated_at_ms, 700);
    ASSERT_EQ_INT(d->stores[0].on_hand_total, 16);
    ASSERT_EQ_UINT(d->undo_count, 1);
    /* A new store with an item loaded into it; the rollback takes all of it back. */
    ASSERT_OK(dom_load_store(d, "S1", "Store 1", 3));
    ASSERT_OK(dom_load_item(d, "S1", "Q", 8, 0, 2, 1, 700));
    ASSERT_EQ_INT(d->stores[1].on_hand_total, 8);
    ASSERT_INVARIANTS(d);
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    ASSERT_EQ_INT(item->on_hand, 10);
    ASSERT_EQ_INT(item->version, 3);
    ASSERT_EQ_INT(item->sold, 2);
    ASSERT_EQ_INT(item->updated_at_ms, 500);
    ASSERT_EQ_INT(d->stores[0].on_hand_total, 14);
    ASSERT_EQ_INT(dom_store_find(d, "S1"), -1);
    ASSERT_EQ_UINT(d->item_count, 2);
    /* Forgotten (another instance ended it: only a shared backend, which holds only some of
     * the reservations, forgets), it leaves memory at the commit. */
    d->reservations_complete = false;
    dom_forget_reservation(d, 99); /* not held: nothing to do */
    dom_forget_reservation(d, 5);
    ASSERT_TRUE(res_find(&d->reservations, 5) == r);
    ASSERT_NE_INT(r->status, RES_ACTIVE);
    ASSERT_OK(dom_load_item(d, "S0", "P", 10, 0, 5, 2, 800)); /* as the other one left it */
    dom_commit(d);
    ASSERT_NULL(res_find(&d->reservations, 5));
    ASSERT_EQ_UINT(res_count(&d->reservations), 0);
    ASSERT_EQ_INT(res_next_expiry(&d->reservations), INT64_MAX);
    d->reservations_complete = true;
    ASSERT_INVARIANTS(d);
}

/* Fills skus with count names whose hash slot equals that of base, so that they share one
 * linear-probe chain. */
static void colliding_skus(const char *base, char skus[][16], int count)
{
    uint64_t mask = capacity_hash_slots(test_capacity.products) - 1;
    uint64_t slot = hash_fnv1a(HASH_FNV_OFFSET, base, strlen(base)) & mask;
    int found = 0;
    for (uint32_t n = 0; found < count; n++) {
        char name[16];
        snprintf(name, sizeof name, "K%u", n);
        if ((hash_fnv1a(HASH_FNV_OFFSET, name, strlen(name)) & mask) == slot) {
            memcpy(skus[found++], name, sizeof name);
        }
    }
}

static void test_rollback_keeps_hash_chains(void **state)
{
    struct domain *d = *state;
    char skus[8][16];
    colliding_skus("base", skus, 8);
    make_store(d, "S0", 0);
    /* Older products, some of them on the chain, then more on the same chain in a batch. */
    uint32_t old[3];
    for (int i = 0; i < 3; i++) {
        old[i] = make_product(d, skus[i], i, 0);
        char other[16];
        snprintf(other, sizeof other, "other-%d", i);
        make_product(d, other, 1, 0);
    }
    dom_commit(d);
    for (int i = 3; i < 8; i++) {
        make_product(d, skus[i], 100 + i, 0);
    }
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ_INT(dom_product_find(d, skus[i]), old[i]);
        ASSERT_EQ_INT(committed_product_find(d, skus[i]), old[i]);
    }
    for (int i = 3; i < 8; i++) {
        ASSERT_EQ_INT(dom_product_find(d, skus[i]), -1);
        ASSERT_EQ_INT(committed_product_find(d, skus[i]), -1);
    }
    ASSERT_EQ_INT(dom_product_find(d, "other-2"), 5);
    /* Re-created in another order, they land on other indexes and are all found again. */
    for (int i = 7; i >= 3; i--) {
        uint32_t p = make_product(d, skus[i], i, 0);
        ASSERT_EQ_UINT(p, 6 + (7 - i));
    }
    dom_commit(d);
    for (int i = 0; i < 8; i++) {
        int32_t p = committed_product_find(d, skus[i]);
        ASSERT_GE_INT(p, 0);
        ASSERT_EQ_STR(d->products[p].sku, skus[i]);
        ASSERT_EQ_INT(committed_on_hand(d, (uint32_t)p, 0), i);
    }
    /* Roll back a batch that both adds to the chain and sells from it. */
    buy(d, old[2], -1, DOM_POLICY_HIGHEST_AVAILABLE, 2);
    make_product(d, "late", 1, 0);
    dom_rollback(d);
    ASSERT_EQ_INT(on_hand_of(d, old[2], 0), 2);
    ASSERT_EQ_INT(dom_product_find(d, "late"), -1);
    for (int i = 0; i < 8; i++) {
        ASSERT_GE_INT(dom_product_find(d, skus[i]), 0);
    }
    ASSERT_INVARIANTS(d);
}

/* ---- randomized test against a model ----------------------------------------------------- */

#define MODEL_STORES_MAX 6
#define MODEL_PRODUCTS_MAX 24
#define MODEL_RES_MAX 48 /* reservations in memory at once: ACTIVE, or ended by the batch */
#define MODEL_RES_LINES_MAX 3
#define MODEL_STEPS 50000

struct model_item {
    bool exists;
    int64_t on_hand;
    int64_t reserved;
    int64_t sold;
    int64_t version;
    int64_t updated_at_ms;
};

struct model_res {
    int64_t seq;
    enum res_status status; /* ACTIVE, or how the working batch ended it */
    uint32_t store;
    uint32_t line_count;
    struct res_line lines[MODEL_RES_LINES_MAX];
    int64_t version;
    int64_t expires_at_ms;
};

/* What the domain should hold, as plain arrays. Indexes equal the domain's, because both
 * append and both truncate on rollback. */
struct model_state {
    uint32_t store_count;
    int64_t latency_ms[MODEL_STORES_MAX];
    uint32_t product_count;
    char skus[MODEL_PRODUCTS_MAX][16];
    struct model_item items[MODEL_PRODUCTS_MAX][MODEL_STORES_MAX];
    uint32_t res_count;
    struct model_res res[MODEL_RES_MAX];
    int64_t res_seq_next; /* rolled back with the batch, as the writer's sequences are: the seq
                           * of a rolled-back reservation is taken again */
};

struct model {
    struct model_state working;
    struct model_state committed;
    uint32_t round_robin_next[MODEL_PRODUCTS_MAX]; /* not rolled back, as in the domain */
    struct test_rng rng;
    int64_t now_ms;
    uint64_t purchases_ok;
    uint64_t purchases_refused;
    uint64_t sold_resets;
    uint64_t adjusts;
    uint64_t loads;
    uint64_t reserves;
    uint64_t reserves_refused;
    uint64_t ended[RES_EXPIRED + 1]; /* by final status */
    uint64_t rollbacks;
    uint64_t rolled_back_created; /* reservations made by a batch that was rolled back */
    uint64_t rolled_back_ended;   /* reservations ended by a batch that was rolled back */
};

static int64_t model_available(const struct model_item *it)
{
    return it->exists ? it->on_hand - it->reserved : 0;
}

static int64_t model_store_total(const struct model_state *m, uint32_t s)
{
    int64_t total = 0;
    for (uint32_t p = 0; p < m->product_count; p++) {
        total += m->items[p][s].exists ? m->items[p][s].on_hand : 0;
    }
    return total;
}

static struct model_res *model_res_find(struct model_state *m, int64_t seq)
{
    for (uint32_t i = 0; i < m->res_count; i++) {
        if (m->res[i].seq == seq) {
            return &m->res[i];
        }
    }
    return NULL;
}

/* The store the domain must pick, or -1; *best_out is the largest available anywhere. */
static int32_t model_choose(struct model *mo, uint32_t p, enum dom_policy policy, int64_t qty,
                            int64_t *best_out)
{
    const struct model_state *m = &mo->working;
    int32_t chosen = -1;
    int64_t best = 0;
    for (uint32_t s = 0; s < m->store_count; s++) {
        best = model_available(&m->items[p][s]) > best ? model_available(&m->items[p][s]) : best;
    }
    *best_out = best;
    for (uint32_t k = 0; k < m->store_count; k++) {
        uint32_t s = k;
        if (policy == DOM_POLICY_ROUND_ROBIN) {
            s = (mo->round_robin_next[p] + k) % m->store_count;
        }
        int64_t available = model_available(&m->items[p][s]);
        if (!m->items[p][s].exists || available < qty) {
            continue;
        }
        if (policy == DOM_POLICY_ROUND_ROBIN) {
            mo->round_robin_next[p] = (s + 1) % m->store_count;
            return (int32_t)s;
        }
        /* Strictly better only: ties stay with the lowest store index. */
        if (chosen < 0 ||
            (policy == DOM_POLICY_HIGHEST_AVAILABLE &&
             available > model_available(&m->items[p][chosen])) ||
            (policy == DOM_POLICY_LOWEST_LATENCY && m->latency_ms[s] < m->latency_ms[chosen])) {
            chosen = (int32_t)s;
        }
    }
    return chosen;
}

static void model_step_purchase(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    if (m->product_count == 0 || m->store_count == 0) {
        return;
    }
    uint32_t p = (uint32_t)test_rng_below(&mo->rng, m->product_count);
    int64_t qty = 1 + (int64_t)test_rng_below(&mo->rng, 6);
    int32_t store = -1;
    enum dom_policy policy = (enum dom_policy)test_rng_below(&mo->rng, 3);
    int64_t best = 0;
    int32_t expected = -1;
    if (test_rng_below(&mo->rng, 5) == 0) {
        store = (int32_t)test_rng_below(&mo->rng, m->store_count);
        best = model_available(&m->items[p][store]);
        expected = best >= qty ? store : -1;
    } else {
        expected = model_choose(mo, p, policy, qty, &best);
    }
    uint32_t item = UINT32_MAX;
    int64_t available = -1;
    int rc = dom_purchase(d, p, store, policy, qty, mo->now_ms, &item, &available);
    if (expected < 0) {
        ASSERT_ERR(rc, SVC_EINSUFFICIENT_STOCK);
        ASSERT_EQ_INT(available, best);
        mo->purchases_refused++;
        return;
    }
    ASSERT_OK(rc);
    ASSERT_EQ_UINT(d->items[item].store_index, expected);
    ASSERT_EQ_UINT(d->items[item].product_index, p);
    struct model_item *it = &m->items[p][expected];
    it->on_hand -= qty;
    it->sold += qty;
    it->version++;
    it->updated_at_ms = mo->now_ms;
    ASSERT_EQ_INT(available, it->on_hand - it->reserved);
    mo->purchases_ok++;
    if (test_rng_below(&mo->rng, 16) == 0) { /* POST /reset: a new sale counts from 0 */
        dom_item_reset_sold(d, item);
        it->sold = 0;
        mo->sold_resets++;
    }
}

static void model_step_adjust(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    if (m->product_count == 0 || m->store_count == 0) {
        return;
    }
    uint32_t p = (uint32_t)test_rng_below(&mo->rng, m->product_count);
    uint32_t s = (uint32_t)test_rng_below(&mo->rng, m->store_count);
    int64_t delta = (int64_t)test_rng_below(&mo->rng, 26) - 10;
    struct model_item *it = &m->items[p][s];
    int64_t on_hand = it->exists ? it->on_hand : 0;
    int64_t reserved = it->exists ? it->reserved : 0;
    uint32_t item = UINT32_MAX;
    int rc = dom_adjust(d, s, p, delta, mo->now_ms, &item);
    if (on_hand + delta < reserved) {
        ASSERT_ERR(rc, SVC_EINSUFFICIENT_STOCK);
        return;
    }
    ASSERT_OK(rc);
    ASSERT_EQ_UINT(d->items[item].store_index, s);
    ASSERT_EQ_UINT(d->items[item].product_index, p);
    if (!it->exists) {
        *it = (struct model_item){true, 0, 0, 0, 0, 0};
    }
    it->on_hand += delta;
    it->version++;
    it->updated_at_ms = mo->now_ms;
    mo->adjusts++;
}

static void model_step_create(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    if (test_rng_below(&mo->rng, 5) == 0 && m->store_count < MODEL_STORES_MAX) {
        char id[16];
        uint32_t index = UINT32_MAX;
        int64_t latency = (int64_t)test_rng_below(&mo->rng, 4) * 10; /* ties are likely */
        snprintf(id, sizeof id, "S%u", m->store_count);
        ASSERT_OK(dom_store_create(d, id, id, latency, &index));
        ASSERT_EQ_UINT(index, m->store_count);
        m->latency_ms[m->store_count++] = latency;
        ASSERT_ERR(dom_store_create(d, id, id, 0, &index), SVC_ESTORE_EXISTS);
        return;
    }
    if (m->product_count == MODEL_PRODUCTS_MAX || m->store_count == 0) {
        return;
    }
    /* The sku of a rolled-back product may come back, or a new one take its index. */
    char sku[16];
    snprintf(sku, sizeof sku, "P%u-%u", m->product_count, (unsigned)test_rng_below(&mo->rng, 2));
    bool duplicate = false;
    for (uint32_t p = 0; p < m->product_count; p++) {
        duplicate = duplicate || strcmp(m->skus[p], sku) == 0;
    }
    SVC_ASSERT(!duplicate); /* the index is part of the name */
    bool named = test_rng_below(&mo->rng, 2) == 0;
    int32_t store = -1;
    if (named) {
        store = (int32_t)test_rng_below(&mo->rng, m->store_count);
    } else {
        for (uint32_t s = 0; s < m->store_count; s++) { /* the lowest total, first on ties */
            if (store < 0 || model_store_total(m, s) < model_store_total(m, (uint32_t)store)) {
                store = (int32_t)s;
            }
        }
    }
    int64_t on_hand = (int64_t)test_rng_below(&mo->rng, 40);
    uint32_t item = UINT32_MAX;
    ASSERT_OK(dom_product_create(d, sku, sku, on_hand, named ? store : -1, mo->now_ms, &item));
    uint32_t p = m->product_count++;
    memcpy(m->skus[p], sku, sizeof sku);
    memset(m->items[p], 0, sizeof m->items[p]);
    mo->round_robin_next[p] = 0;
    m->items[p][store] = (struct model_item){true, on_hand, 0, 0, 1, mo->now_ms};
    ASSERT_EQ_UINT(d->items[item].store_index, store);
    ASSERT_ERR(dom_product_create(d, m->skus[0], "dup", 1, -1, 1, &item), SVC_EPRODUCT_EXISTS);
}

/* The loader path as a shared backend's prefetch uses it: an item as storage has it (another
 * instance changed it), created when absent, left alone at the version memory has. */
static void model_step_load(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    if (m->product_count == 0 || m->store_count == 0) {
        return;
    }
    uint32_t p = (uint32_t)test_rng_below(&mo->rng, m->product_count);
    uint32_t s = (uint32_t)test_rng_below(&mo->rng, m->store_count);
    char id[16];
    snprintf(id, sizeof id, "S%u", s);
    struct model_item *it = &m->items[p][s];
    int64_t sold = (int64_t)test_rng_below(&mo->rng, 10);
    if (it->exists && test_rng_below(&mo->rng, 4) == 0) {
        ASSERT_OK(dom_load_item(d, id, m->skus[p], it->on_hand + 1, it->reserved, it->version, sold,
                                mo->now_ms));
        return; /* the same version: memory is up to date, whatever the other values say */
    }
    /* Units held by reservations stay held: the domain holds every ACTIVE reservation. */
    int64_t on_hand = it->reserved + (int64_t)test_rng_below(&mo->rng, 30);
    int64_t version = it->version + 1 + (int64_t)test_rng_below(&mo->rng, 3);
    ASSERT_OK(dom_load_item(d, id, m->skus[p], on_hand, it->reserved, version, sold, mo->now_ms));
    *it = (struct model_item){true, on_hand, it->reserved, sold, version, mo->now_ms};
    mo->loads++;
}

/* Makes a reservation as apply_reserve does, when all of its lines fit (duplicate skus
 * summed); the applier refuses it otherwise and the domain never sees it. */
static void model_step_reserve(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    if (m->product_count == 0 || m->store_count == 0 || m->res_count == MODEL_RES_MAX) {
        return;
    }
    uint32_t s = (uint32_t)test_rng_below(&mo->rng, m->store_count);
    uint32_t count = 1 + (uint32_t)test_rng_below(&mo->rng, MODEL_RES_LINES_MAX);
    struct res_line lines[MODEL_RES_LINES_MAX];
    for (uint32_t i = 0; i < count; i++) {
        lines[i] = (struct res_line){(uint32_t)test_rng_below(&mo->rng, m->product_count),
                                     1 + (int64_t)test_rng_below(&mo->rng, 5)};
    }
    for (uint32_t i = 0; i < count; i++) {
        int64_t wanted = 0;
        for (uint32_t j = 0; j < count; j++) {
            wanted += lines[j].product_index == lines[i].product_index ? lines[j].qty : 0;
        }
        const struct model_item *it = &m->items[lines[i].product_index][s];
        if (!it->exists || model_available(it) < wanted) {
            mo->reserves_refused++;
            return;
        }
    }
    struct model_res *mr = &m->res[m->res_count++];
    *mr = (struct model_res){m->res_seq_next++,
                             RES_ACTIVE,
                             s,
                             count,
                             {{0, 0}},
                             1,
                             mo->now_ms + 1 + (int64_t)test_rng_below(&mo->rng, 300)};
    memcpy(mr->lines, lines, count * sizeof lines[0]);
    reserve(d, mr->seq, s, lines, count, mo->now_ms, mr->expires_at_ms);
    for (uint32_t i = 0; i < count; i++) {
        struct model_item *it = &m->items[lines[i].product_index][s];
        it->reserved += lines[i].qty;
        it->version++;
        it->updated_at_ms = mo->now_ms;
    }
    mo->reserves++;
}

/* Ends mr (r in the domain) with status, as reservation_end does. */
static void model_res_end(struct domain *d, struct model *mo, struct model_res *mr,
                          struct reservation *r, enum res_status status)
{
    ASSERT_EQ_INT(r->seq, mr->seq);
    reservation_finish(d, r, status, mo->now_ms);
    for (uint32_t i = 0; i < mr->line_count; i++) {
        struct model_item *it = &mo->working.items[mr->lines[i].product_index][mr->store];
        it->on_hand -= status == RES_CONFIRMED ? mr->lines[i].qty : 0;
        it->reserved -= mr->lines[i].qty;
        it->version++;
        it->updated_at_ms = mo->now_ms;
    }
    mr->status = status;
    mr->version++;
    mo->ended[status]++;
}

/* A confirm or a cancel of a random reservation (one the batch ended already is refused by
 * the applier, so skipped here). */
static void model_step_end(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    if (m->res_count == 0) {
        return;
    }
    struct model_res *mr = &m->res[test_rng_below(&mo->rng, m->res_count)];
    if (mr->status != RES_ACTIVE) {
        return;
    }
    struct reservation *r = res_find(&d->reservations, mr->seq);
    ASSERT_NOT_NULL(r);
    model_res_end(d, mo, mr, r, test_rng_below(&mo->rng, 2) ? RES_CONFIRMED : RES_CANCELLED);
}

/* The TTL timer as apply_expire_due runs it: the earliest due ACTIVE reservation expires (of
 * those due at the same time, either may come first). */
static void model_step_expire(struct domain *d, struct model *mo)
{
    struct model_state *m = &mo->working;
    int64_t earliest = INT64_MAX;
    for (uint32_t i = 0; i < m->res_count; i++) {
        const struct model_res *mr = &m->res[i];
        if (mr->status == RES_ACTIVE && mr->expires_at_ms <= mo->now_ms &&
            mr->expires_at_ms < earliest) {
            earliest = mr->expires_at_ms;
        }
    }
    struct reservation *r = res_pop_due(&d->reservations, mo->now_ms);
    if (earliest == INT64_MAX) {
        ASSERT_NULL(r);
        return;
    }
    ASSERT_NOT_NULL(r); /* no ACTIVE reservation loses its place in the heap */
    struct model_res *mr = model_res_find(m, r->seq);
    ASSERT_NOT_NULL(mr);
    ASSERT_EQ_INT(mr->status, RES_ACTIVE);
    ASSERT_EQ_INT(mr->expires_at_ms, earliest);
    model_res_end(d, mo, mr, r, RES_EXPIRED);
}

static void model_commit(struct domain *d, struct model *mo)
{
    dom_commit(d);
    struct model_state *m = &mo->working;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < m->res_count; i++) {
        if (m->res[i].status == RES_ACTIVE) { /* ended ones leave memory at the commit */
            m->res[kept++] = m->res[i];
        }
    }
    m->res_count = kept;
    mo->committed = *m;
    ASSERT_INVARIANTS(d);
}

static void model_rollback(struct domain *d, struct model *mo)
{
    for (uint32_t i = 0; i < mo->working.res_count; i++) {
        const struct model_res *mr = &mo->working.res[i];
        bool created = model_res_find(&mo->committed, mr->seq) == NULL;
        mo->rolled_back_created += created ? 1 : 0;
        mo->rolled_back_ended += !created && mr->status != RES_ACTIVE ? 1 : 0;
    }
    dom_rollback(d);
    mo->working = mo->committed;
    mo->rollbacks++;
    ASSERT_INVARIANTS(d);
}

/* The working state equals the model's working state. */
static void model_check_working(struct domain *d, struct model_state *m)
{
    ASSERT_INVARIANTS(d);
    ASSERT_EQ_UINT(d->store_count, m->store_count);
    ASSERT_EQ_UINT(d->product_count, m->product_count);
    uint32_t items = 0;
    for (uint32_t p = 0; p < m->product_count; p++) {
        ASSERT_EQ_INT(dom_product_find(d, m->skus[p]), p);
        for (uint32_t s = 0; s < m->store_count; s++) {
            int32_t index = dom_item_find(d, s, p);
            const struct model_item *it = s < m->store_count ? &m->items[p][s] : NULL;
            if (it == NULL || !it->exists) {
                ASSERT_EQ_INT(index, -1);
                continue;
            }
            items++;
            ASSERT_GE_INT(index, 0);
            const struct dom_item *item = &d->items[index];
            ASSERT_EQ_INT(item->on_hand, it->on_hand);
            ASSERT_EQ_INT(item->reserved, it->reserved);
            ASSERT_EQ_INT(item->sold, it->sold);
            ASSERT_EQ_INT(item->version, it->version);
            ASSERT_EQ_INT(item->updated_at_ms, it->updated_at_ms);
        }
    }
    ASSERT_EQ_UINT(d->item_count, items);
    for (uint32_t s = 0; s < m->store_count; s++) {
        ASSERT_EQ_INT(d->stores[s].on_hand_total, model_store_total(m, s));
        ASSERT_EQ_INT(d->stores[s].latency_ms, m->latency_ms[s]);
    }
    /* The reservations in memory: the ACTIVE ones and those the batch ended, no other. */
    ASSERT_EQ_UINT(res_count(&d->reservations), m->res_count);
    for (uint32_t i = 0; i < m->res_count; i++) {
        const struct model_res *mr = &m->res[i];
        const struct reservation *r = res_find(&d->reservations, mr->seq);
        ASSERT_NOT_NULL(r);
        ASSERT_EQ_INT(r->status, mr->status);
        ASSERT_EQ_INT(r->version, mr->version);
        ASSERT_EQ_UINT(r->store_index, mr->store);
        ASSERT_EQ_INT(r->expires_at_ms, mr->expires_at_ms);
        ASSERT_EQ_UINT(r->line_count, mr->line_count);
        for (uint32_t k = 0; k < mr->line_count; k++) {
            ASSERT_EQ_UINT(r->lines[k].product_index, mr->lines[k].product_index);
            ASSERT_EQ_INT(r->lines[k].qty, mr->lines[k].qty);
        }
    }
}

/* The committed state, as the committed counts and the undo list describe it, equals the
 * model's committed state, whatever the working batch holds. */
static void model_check_committed(const struct domain *d, const struct model *mo)
{
    const struct model_state *c = &mo->committed;
    assert_undo_list_consistent(d);
    ASSERT_EQ_UINT(d->store_count_committed, c->store_count);
    ASSERT_EQ_UINT(d->product_count_committed, c->product_count);
    for (uint32_t p = 0; p < mo->working.product_count; p++) {
        int32_t expected = p < c->product_count ? (int32_t)p : -1;
        if (p >= c->product_count) {
            for (uint32_t q = 0; q < c->product_count; q++) {
                SVC_ASSERT(strcmp(c->skus[q], mo->working.skus[p]) != 0);
            }
        }
        ASSERT_EQ_INT(committed_product_find(d, mo->working.skus[p]), expected);
    }
    uint32_t items = 0;
    for (uint32_t p = 0; p < c->product_count; p++) {
        ASSERT_EQ_INT(committed_product_find(d, c->skus[p]), p);
        for (uint32_t s = 0; s < MODEL_STORES_MAX; s++) {
            struct committed_item item;
            bool found = committed_item_get(d, p, s, &item);
            const struct model_item *it = &c->items[p][s];
            bool exists = s < c->store_count && it->exists;
            ASSERT_EQ_INT(found, exists);
            if (exists) {
                items++;
                ASSERT_EQ_INT(item.on_hand, it->on_hand);
                ASSERT_EQ_INT(item.reserved, it->reserved);
                ASSERT_EQ_INT(item.sold, it->sold);
                ASSERT_EQ_INT(item.version, it->version);
                ASSERT_EQ_INT(item.updated_at_ms, it->updated_at_ms);
            }
        }
    }
    ASSERT_EQ_UINT(d->item_count_committed, items);
}

static void model_run(struct domain *d, uint64_t seed, int steps)
{
    struct model *mo = calloc(1, sizeof *mo);
    test_rng_seed(&mo->rng, seed);
    mo->working.res_seq_next = mo->committed.res_seq_next = 1;
    for (int step = 0; step < steps; step++) {
        mo->now_ms = 1000 + step;
        uint64_t roll = test_rng_below(&mo->rng, 100);
        if (roll < 36) {
            model_step_purchase(d, mo);
        } else if (roll < 56) {
            model_step_adjust(d, mo);
        } else if (roll < 61) {
            model_step_create(d, mo);
        } else if (roll < 65) {
            model_step_load(d, mo);
        } else if (roll < 75) {
            model_step_reserve(d, mo);
        } else if (roll < 80) {
            model_step_end(d, mo);
        } else if (roll < 85) {
            model_step_expire(d, mo);
        } else if (roll < 95) {
            model_commit(d, mo);
        } else {
            model_rollback(d, mo);
        }
        model_check_working(d, &mo->working);
        model_check_committed(d, mo);
    }
    print_message("  %" PRIu64 " purchases sold, %" PRIu64 " refused, %" PRIu64
                  " sold counts reset, %" PRIu64 " adjustments, %" PRIu64 " loads\n",
                  mo->purchases_ok, mo->purchases_refused, mo->sold_resets, mo->adjusts, mo->loads);
    print_message("  %" PRIu64 " reservations made, %" PRIu64 " refused, %" PRIu64
                  " confirmed, %" PRIu64 " cancelled, %" PRIu64 " expired\n",
                  mo->reserves, mo->reserves_refused, mo->ended[RES_CONFIRMED],
                  mo->ended[RES_CANCELLED], mo->ended[RES_EXPIRED]);
    print_message("  %" PRIu64 " rollbacks (%" PRIu64 " reservations made and %" PRIu64
                  " ended by them), %u stores, %u products\n",
                  mo->rollbacks, mo->rolled_back_created, mo->rolled_back_ended,
                  mo->working.store_count, mo->working.product_count);
    ASSERT_GT_UINT(mo->purchases_ok, steps / 20);
    ASSERT_GT_UINT(mo->purchases_refused, 0);
    ASSERT_GT_UINT(mo->sold_resets, 0);
    ASSERT_GT_UINT(mo->loads, 0);
    ASSERT_GT_UINT(mo->reserves, steps / 50);
    ASSERT_GT_UINT(mo->ended[RES_CONFIRMED], 0);
    ASSERT_GT_UINT(mo->ended[RES_CANCELLED], 0);
    ASSERT_GT_UINT(mo->ended[RES_EXPIRED], 0);
    ASSERT_GT_UINT(mo->rollbacks, 0);
    ASSERT_GT_UINT(mo->rolled_back_created, 0);
    ASSERT_GT_UINT(mo->rolled_back_ended, 0);
    free(mo);
}

static void test_randomized_against_model(void **state)
{
    struct domain *d = *state;
    uint64_t seed = test_seed_begin("test_randomized_against_model");
    model_run(d, seed, MODEL_STEPS);
    test_seed_end();
}

/* A domain of small configured tables: every table refuses one past its size with
 * SVC_ECAPACITY and stays as it was; what fits works (the --max-* flags of main.c). */
static void test_configured_capacity(void **state)
{
    (void)state;
    struct domain small;
    const struct capacity capacity = {2, 3, 4, 2};
    ASSERT_OK(dom_init(&small, &capacity));
    struct domain *d = &small;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t s1 = make_store(d, "S1", 0);
    uint32_t index = 0;
    ASSERT_ERR(dom_store_create(d, "S2", "x", 0, &index), SVC_ECAPACITY);
    uint32_t a = make_product(d, "A", 5, (int32_t)s0);
    uint32_t b = make_product(d, "B", 5, (int32_t)s1);
    stock_add(d, s1, a, 3);                            /* items: A@S0, B@S1, A@S1 */
    uint32_t c = make_product(d, "C", 1, (int32_t)s0); /* the fourth and last item */
    uint32_t item = 0;
    ASSERT_ERR(dom_adjust(d, s0, b, 1, 1000, &item), SVC_ECAPACITY); /* a fifth item */
    ASSERT_ERR(dom_product_create(d, "D", "d", 1, (int32_t)s0, 1000, &item), SVC_ECAPACITY);
    ASSERT_EQ_UINT(d->product_count, 3);
    ASSERT_EQ_UINT(d->item_count, 4);
    ASSERT_EQ_INT(dom_item_find(d, s0, b), -1);
    ASSERT_EQ_INT(on_hand_of(d, a, s1), 3);
    ASSERT_EQ_INT(on_hand_of(d, c, s0), 1);
    int64_t available = 0;
    ASSERT_OK(dom_purchase(d, a, -1, DOM_POLICY_HIGHEST_AVAILABLE, 4, 1000, &item, &available));
    ASSERT_EQ_UINT(d->items[item].store_index, s0);
    ASSERT_EQ_INT(dom_load_product(d, "E", "e"), SVC_ECAPACITY);
    ASSERT_NOT_NULL(res_create(&d->reservations, 1));
    ASSERT_NOT_NULL(res_create(&d->reservations, 2));
    ASSERT_NULL(res_create(&d->reservations, 3)); /* two ACTIVE at most */
    dom_commit(d);
    ASSERT_EQ_UINT(d->store_count, 2);
    ASSERT_INVARIANTS(d);
    dom_deinit(d);
}

/* A product's items stay listed in store index order whatever order they were stocked in, and
 * a rollback takes the batch's new items off the list wherever they sit on it. */
static void test_item_list_order_and_rollback(void **state)
{
    struct domain *d = *state;
    uint32_t stores[6];
    for (uint32_t i = 0; i < 6; i++) {
        char id[8];
        snprintf(id, sizeof id, "S%u", i);
        stores[i] = make_store(d, id, 0);
    }
    uint32_t p = make_product(d, "P", 1, (int32_t)stores[3]);
    stock_add(d, stores[5], p, 1);
    stock_add(d, stores[1], p, 1);
    dom_commit(d);
    stock_add(d, stores[4], p, 1); /* between committed ones */
    stock_add(d, stores[0], p, 1); /* at the head */
    uint32_t expected[5] = {0, 1, 3, 4, 5};
    uint32_t n = 0;
    for (int32_t i = d->products[p].first_item; i >= 0; i = d->items[i].next) {
        ASSERT_LT_UINT(n, 5);
        ASSERT_EQ_UINT(d->items[i].store_index, stores[expected[n++]]);
    }
    ASSERT_EQ_UINT(n, 5);
    dom_rollback(d);
    uint32_t kept[3] = {1, 3, 5};
    n = 0;
    for (int32_t i = d->products[p].first_item; i >= 0; i = d->items[i].next) {
        ASSERT_LT_UINT(n, 3);
        ASSERT_EQ_UINT(d->items[i].store_index, stores[kept[n++]]);
    }
    ASSERT_EQ_UINT(n, 3);
    ASSERT_EQ_INT(on_hand_of(d, p, stores[4]), -1);
    ASSERT_EQ_INT(on_hand_of(d, p, stores[0]), -1);
    ASSERT_INVARIANTS(d);
}

int main(void)
{
#define DOMAIN_TEST(f) cmocka_unit_test_setup_teardown(f, domain_setup, domain_teardown)
    const struct CMUnitTest tests[] = {
        DOMAIN_TEST(test_store_create_and_duplicates),
        DOMAIN_TEST(test_store_capacity),
        DOMAIN_TEST(test_configured_capacity),
        DOMAIN_TEST(test_item_list_order_and_rollback),
        DOMAIN_TEST(test_product_create_and_duplicates),
        DOMAIN_TEST(test_product_placed_in_lowest_stock_store),
        DOMAIN_TEST(test_purchase_highest_available),
        DOMAIN_TEST(test_purchase_lowest_latency),
        DOMAIN_TEST(test_purchase_round_robin),
        DOMAIN_TEST(test_purchase_explicit_store),
        DOMAIN_TEST(test_insufficient_stock_changes_nothing),
        DOMAIN_TEST(test_adjust_up_down_and_bounds),
        DOMAIN_TEST(test_adjust_below_reserved),
        DOMAIN_TEST(test_commit_makes_changes_committed),
        DOMAIN_TEST(test_rollback_restores_last_committed_state),
        DOMAIN_TEST(test_rollback_keeps_hash_chains),
        DOMAIN_TEST(test_reservation_commit_and_rollback),
        DOMAIN_TEST(test_invariants_check_reserved_against_lines),
        DOMAIN_TEST(test_load_and_forget),
        DOMAIN_TEST(test_load_refreshes_a_held_order),
        DOMAIN_TEST(test_randomized_against_model),
    };
#undef DOMAIN_TEST
    return cmocka_run_group_tests(tests, NULL, NULL);
}
