/*
 * test_domain.c - the in-memory inventory (domain.c): creation, store choice, purchases,
 * adjustments, and the publish/rollback protocol that keeps readers on committed state.
 *
 * The hand-written cases pin each rule down; the randomized test then runs thousands of
 * random commands with random publish/rollback against a deliberately naive model (arrays
 * indexed by product and store) and compares the two after every step, for the writer's
 * working view and the readers' published view alike. Its seed is printed; set TEST_SEED to
 * replay a failure. Read test_queue.c next.
 */
#include "test_helpers.h"

#include "core/domain.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/svc_assert.h"

/* ---- fixture and helpers ----------------------------------------------------------------- */

static int domain_setup(void **state)
{
    test_seed_end(); /* a failed randomized test leaves its seed behind */
    struct domain *d = calloc(1, sizeof *d);
    if (d == NULL || dom_init(d) != 0) {
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
    int32_t item = atomic_load(&d->products[product].item_by_store[store]);
    return item < 0 ? -1 : d->items[item].on_hand;
}

/* The published on_hand of (product, store), or -1 when readers cannot see it. */
static int64_t read_on_hand(const struct domain *d, uint32_t product, uint32_t store)
{
    struct dom_item_view view;
    return dom_read_item(d, product, store, &view) ? view.on_hand : -1;
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

/* Everything rollback must restore, flattened; round_robin_next is excluded on purpose: the
 * rotation is a fairness hint, neither published nor persisted. */
struct snapshot {
    size_t count;
    int64_t values[1 << 15];
};

static void snap_push(struct snapshot *s, int64_t value)
{
    SVC_ASSERT(s->count < sizeof s->values / sizeof s->values[0]);
    s->values[s->count++] = value;
}

static void snapshot_take(const struct domain *d, struct snapshot *s)
{
    s->count = 0;
    snap_push(s, d->store_count);
    snap_push(s, d->product_count);
    snap_push(s, d->item_count);
    snap_push(s, d->dirty_count);
    snap_push(s, atomic_load(&d->store_count_committed));
    snap_push(s, atomic_load(&d->product_count_committed));
    snap_push(s, atomic_load(&d->item_count_committed));
    for (uint32_t i = 0; i < d->store_count; i++) {
        const char *id = d->stores[i].id;
        snap_push(s, (int64_t)hash_fnv1a(HASH_FNV_OFFSET, id, strlen(id)));
        snap_push(s, d->stores[i].latency_ms);
        snap_push(s, d->stores[i].on_hand_total);
    }
    for (uint32_t p = 0; p < d->product_count; p++) {
        const char *sku = d->products[p].sku;
        snap_push(s, (int64_t)hash_fnv1a(HASH_FNV_OFFSET, sku, strlen(sku)));
        for (uint32_t k = 0; k < STORES_MAX; k++) {
            snap_push(s, atomic_load(&d->products[p].item_by_store[k]));
        }
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
        snap_push(s, atomic_load(&item->pub_on_hand));
        snap_push(s, atomic_load(&item->pub_version));
        snap_push(s, atomic_load(&item->pub_sold));
    }
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
    for (int i = 0; i < STORES_MAX; i++) {
        snprintf(id, sizeof id, "S%d", i);
        make_store(d, id, i);
    }
    uint32_t index = 0;
    ASSERT_ERR(dom_store_create(d, "one-more", "x", 0, &index), SVC_ECAPACITY);
    ASSERT_ERR(dom_store_create(d, "S0", "x", 0, &index), SVC_ESTORE_EXISTS); /* first check */
    ASSERT_EQ_UINT(d->store_count, STORES_MAX);
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
    ASSERT_EQ_INT(d->items[d->products[p].item_by_store[1]].sold, 9);
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
    dom_publish(d);
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
    /* Reservations come only from storage today: load an item with reserved units. */
    ASSERT_OK(dom_load_store(d, "S0", "Store 0", 0));
    ASSERT_OK(dom_load_product(d, "P", "Product"));
    ASSERT_OK(dom_load_item(d, "S0", "P", 10, 4, 3, 0, 500));
    ASSERT_ERR(dom_load_item(d, "S0", "NOPE", 1, 0, 1, 0, 1), SVC_EVALIDATION);
    ASSERT_ERR(dom_load_item(d, "S0", "P", 1, 2, 1, 0, 1), SVC_EVALIDATION);
    dom_publish(d);
    ASSERT_INVARIANTS(d);
    uint32_t p = (uint32_t)dom_product_find(d, "P");
    struct dom_item_view view;
    ASSERT_TRUE(dom_read_item(d, p, 0, &view));
    ASSERT_EQ_INT(view.reserved, 4);
    ASSERT_EQ_INT(view.version, 3);
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

/* ---- publish and rollback ---------------------------------------------------------------- */

static void test_publish_makes_changes_visible(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    /* Nothing of the working batch is visible yet. */
    ASSERT_EQ_UINT(dom_read_store_count(d), 0);
    ASSERT_EQ_INT(dom_read_store_find(d, "S0"), -1);
    ASSERT_EQ_INT(dom_read_product_find(d, "P"), -1);
    ASSERT_EQ_INT(read_on_hand(d, p, s0), -1);
    dom_publish(d);
    ASSERT_EQ_UINT(d->dirty_count, 0);
    ASSERT_EQ_UINT(dom_read_store_count(d), 1);
    ASSERT_EQ_INT(dom_read_store_find(d, "S0"), s0);
    ASSERT_EQ_INT(dom_read_product_find(d, "P"), p);
    ASSERT_EQ_INT(read_on_hand(d, p, s0), 10);
    /* Changes to a published item stay invisible until the next publish. */
    uint32_t s1 = make_store(d, "S1", 0);
    buy(d, p, -1, DOM_POLICY_HIGHEST_AVAILABLE, 3);
    stock_add(d, s1, p, 4);
    uint32_t q = make_product(d, "Q", 1, (int32_t)s0);
    ASSERT_EQ_INT(read_on_hand(d, p, s0), 10);
    ASSERT_EQ_INT(read_on_hand(d, p, s1), -1);
    ASSERT_EQ_INT(dom_read_store_find(d, "S1"), -1);
    ASSERT_EQ_INT(dom_read_product_find(d, "Q"), -1);
    struct dom_item_view view;
    ASSERT_TRUE(dom_read_item(d, p, s0, &view));
    ASSERT_EQ_INT(view.version, 1);
    ASSERT_EQ_INT(view.sold, 0);
    dom_publish(d);
    ASSERT_TRUE(dom_read_item(d, p, s0, &view));
    ASSERT_EQ_INT(view.on_hand, 7);
    ASSERT_EQ_INT(view.version, 2);
    ASSERT_EQ_INT(view.sold, 3);
    ASSERT_EQ_INT(view.updated_at_ms, 2000);
    ASSERT_EQ_INT(read_on_hand(d, p, s1), 4);
    ASSERT_EQ_INT(read_on_hand(d, q, s0), 1);
    ASSERT_EQ_INT(dom_read_store_find(d, "S1"), s1);
    ASSERT_EQ_INT(dom_read_product_find(d, "Q"), q);
    ASSERT_INVARIANTS(d);
}

static void test_rollback_restores_last_published_state(void **state)
{
    struct domain *d = *state;
    uint32_t s0 = make_store(d, "S0", 0);
    uint32_t s1 = make_store(d, "S1", 5);
    uint32_t p = make_product(d, "P", 10, (int32_t)s0);
    uint32_t q = make_product(d, "Q", 20, (int32_t)s1);
    dom_publish(d);
    struct snapshot *published = malloc(sizeof *published);
    struct snapshot *now = malloc(sizeof *now);
    snapshot_take(d, published);
    /* One batch touching everything: new store, new products, new items in old and new
     * stores, purchases and adjustments of published items. */
    uint32_t s2 = make_store(d, "S2", 1);
    uint32_t r = make_product(d, "R", 7, (int32_t)s2);
    uint32_t t = make_product(d, "T", 3, (int32_t)s0);
    stock_add(d, s2, p, 9);
    stock_add(d, s0, q, 2);
    buy(d, p, (int32_t)s0, DOM_POLICY_HIGHEST_AVAILABLE, 4);
    buy(d, q, -1, DOM_POLICY_LOWEST_LATENCY, 20);
    stock_add(d, s1, q, 6);
    buy(d, r, -1, DOM_POLICY_ROUND_ROBIN, 1);
    ASSERT_EQ_UINT(s2, 2);
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    snapshot_take(d, now);
    assert_snapshots_equal(published, now);
    ASSERT_EQ_INT(dom_store_find(d, "S2"), -1);
    ASSERT_EQ_INT(dom_product_find(d, "R"), -1);
    ASSERT_EQ_INT(dom_product_find(d, "T"), -1);
    ASSERT_EQ_INT(on_hand_of(d, p, s2), -1);
    ASSERT_EQ_INT(on_hand_of(d, q, s0), -1);
    ASSERT_EQ_INT(on_hand_of(d, p, s0), 10);
    ASSERT_EQ_INT(on_hand_of(d, q, s1), 20);
    ASSERT_EQ_INT(read_on_hand(d, p, s0), 10);
    ASSERT_EQ_INT(read_on_hand(d, p, s2), -1);
    /* The same names can be created again after the rollback, and are then published. */
    ASSERT_EQ_UINT(make_store(d, "S2", 1), s2);
    ASSERT_EQ_UINT(make_product(d, "T", 30, (int32_t)s2), r); /* the slot R had */
    ASSERT_EQ_UINT(make_product(d, "R", 70, (int32_t)s1), t);
    stock_add(d, s0, q, 1);
    dom_publish(d);
    ASSERT_EQ_INT(read_on_hand(d, r, s2), 30);
    ASSERT_EQ_INT(read_on_hand(d, t, s1), 70);
    ASSERT_EQ_INT(read_on_hand(d, q, s0), 1);
    ASSERT_EQ_INT(dom_read_product_find(d, "T"), r);
    ASSERT_EQ_INT(dom_read_product_find(d, "R"), t);
    ASSERT_EQ_INT(d->stores[s2].on_hand_total, 30);
    /* A rollback with nothing in the batch is a no-op. */
    snapshot_take(d, published);
    dom_rollback(d);
    snapshot_take(d, now);
    assert_snapshots_equal(published, now);
    ASSERT_INVARIANTS(d);
    free(published);
    free(now);
}

/* Fills skus with count names whose hash slot equals that of base, so that they share one
 * linear-probe chain. */
static void colliding_skus(const char *base, char skus[][16], int count)
{
    uint64_t mask = PRODUCT_HASH_SLOTS - 1;
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
    dom_publish(d);
    for (int i = 3; i < 8; i++) {
        make_product(d, skus[i], 100 + i, 0);
    }
    dom_rollback(d);
    ASSERT_INVARIANTS(d);
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ_INT(dom_product_find(d, skus[i]), old[i]);
        ASSERT_EQ_INT(dom_read_product_find(d, skus[i]), old[i]);
    }
    for (int i = 3; i < 8; i++) {
        ASSERT_EQ_INT(dom_product_find(d, skus[i]), -1);
        ASSERT_EQ_INT(dom_read_product_find(d, skus[i]), -1);
    }
    ASSERT_EQ_INT(dom_product_find(d, "other-2"), 5);
    /* Re-created in another order, they land on other indexes and are all found again. */
    for (int i = 7; i >= 3; i--) {
        uint32_t p = make_product(d, skus[i], i, 0);
        ASSERT_EQ_UINT(p, 6 + (7 - i));
    }
    dom_publish(d);
    for (int i = 0; i < 8; i++) {
        int32_t p = dom_read_product_find(d, skus[i]);
        ASSERT_GE_INT(p, 0);
        ASSERT_EQ_STR(d->products[p].sku, skus[i]);
        ASSERT_EQ_INT(read_on_hand(d, (uint32_t)p, 0), i);
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
#define MODEL_STEPS 50000

struct model_item {
    bool exists;
    int64_t on_hand;
    int64_t sold;
    int64_t version;
    int64_t updated_at_ms;
};

/* What the domain should hold, as plain arrays. Indexes equal the domain's, because both
 * append and both truncate on rollback. */
struct model_state {
    uint32_t store_count;
    int64_t latency_ms[MODEL_STORES_MAX];
    uint32_t product_count;
    char skus[MODEL_PRODUCTS_MAX][16];
    struct model_item items[MODEL_PRODUCTS_MAX][MODEL_STORES_MAX];
};

struct model {
    struct model_state working;
    struct model_state committed;
    uint32_t round_robin_next[MODEL_PRODUCTS_MAX]; /* not rolled back, as in the domain */
    struct test_rng rng;
    int64_t now_ms;
    uint64_t purchases_ok;
    uint64_t purchases_refused;
    uint64_t adjusts;
    uint64_t rollbacks;
};

static int64_t model_store_total(const struct model_state *m, uint32_t s)
{
    int64_t total = 0;
    for (uint32_t p = 0; p < m->product_count; p++) {
        total += m->items[p][s].exists ? m->items[p][s].on_hand : 0;
    }
    return total;
}

/* The store the domain must pick, or -1; *best_out is the largest available anywhere. */
static int32_t model_choose(struct model *mo, uint32_t p, enum dom_policy policy, int64_t qty,
                            int64_t *best_out)
{
    const struct model_state *m = &mo->working;
    int32_t chosen = -1;
    int64_t best = 0;
    for (uint32_t s = 0; s < m->store_count; s++) {
        if (m->items[p][s].exists && m->items[p][s].on_hand > best) {
            best = m->items[p][s].on_hand;
        }
    }
    *best_out = best;
    for (uint32_t k = 0; k < m->store_count; k++) {
        uint32_t s = k;
        if (policy == DOM_POLICY_ROUND_ROBIN) {
            s = (mo->round_robin_next[p] + k) % m->store_count;
        }
        const struct model_item *it = &m->items[p][s];
        if (!it->exists || it->on_hand < qty) {
            continue;
        }
        if (policy == DOM_POLICY_ROUND_ROBIN) {
            mo->round_robin_next[p] = (s + 1) % m->store_count;
            return (int32_t)s;
        }
        /* Strictly better only: ties stay with the lowest store index. */
        if (chosen < 0 ||
            (policy == DOM_POLICY_HIGHEST_AVAILABLE && it->on_hand > m->items[p][chosen].on_hand) ||
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
        const struct model_item *it = &m->items[p][store];
        best = it->exists ? it->on_hand : 0;
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
    ASSERT_EQ_INT(available, it->on_hand);
    mo->purchases_ok++;
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
    uint32_t item = UINT32_MAX;
    int rc = dom_adjust(d, s, p, delta, mo->now_ms, &item);
    if (on_hand + delta < 0) {
        ASSERT_ERR(rc, SVC_EINSUFFICIENT_STOCK);
        return;
    }
    ASSERT_OK(rc);
    ASSERT_EQ_UINT(d->items[item].store_index, s);
    ASSERT_EQ_UINT(d->items[item].product_index, p);
    if (!it->exists) {
        *it = (struct model_item){true, 0, 0, 0, 0};
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
    m->items[p][store] = (struct model_item){true, on_hand, 0, 1, mo->now_ms};
    ASSERT_EQ_UINT(d->items[item].store_index, store);
    ASSERT_ERR(dom_product_create(d, m->skus[0], "dup", 1, -1, 1, &item), SVC_EPRODUCT_EXISTS);
}

/* The working state equals the model's working state. */
static void model_check_working(const struct domain *d, const struct model_state *m)
{
    ASSERT_INVARIANTS(d);
    ASSERT_EQ_UINT(d->store_count, m->store_count);
    ASSERT_EQ_UINT(d->product_count, m->product_count);
    uint32_t items = 0;
    for (uint32_t p = 0; p < m->product_count; p++) {
        ASSERT_EQ_INT(dom_product_find(d, m->skus[p]), p);
        for (uint32_t s = 0; s < STORES_MAX; s++) {
            int32_t index = atomic_load(&d->products[p].item_by_store[s]);
            const struct model_item *it = s < m->store_count ? &m->items[p][s] : NULL;
            if (it == NULL || !it->exists) {
                ASSERT_EQ_INT(index, -1);
                continue;
            }
            items++;
            ASSERT_GE_INT(index, 0);
            const struct dom_item *item = &d->items[index];
            ASSERT_EQ_INT(item->on_hand, it->on_hand);
            ASSERT_EQ_INT(item->sold, it->sold);
            ASSERT_EQ_INT(item->version, it->version);
            ASSERT_EQ_INT(item->updated_at_ms, it->updated_at_ms);
            ASSERT_EQ_INT(item->reserved, 0);
        }
    }
    ASSERT_EQ_UINT(d->item_count, items);
    for (uint32_t s = 0; s < m->store_count; s++) {
        ASSERT_EQ_INT(d->stores[s].on_hand_total, model_store_total(m, s));
        ASSERT_EQ_INT(d->stores[s].latency_ms, m->latency_ms[s]);
    }
}

/* What readers see equals the model's committed state, whatever the working batch holds. */
static void model_check_readers(const struct domain *d, const struct model *mo)
{
    const struct model_state *c = &mo->committed;
    ASSERT_EQ_UINT(dom_read_store_count(d), c->store_count);
    for (uint32_t p = 0; p < mo->working.product_count; p++) {
        int32_t expected = p < c->product_count ? (int32_t)p : -1;
        if (p >= c->product_count) {
            for (uint32_t q = 0; q < c->product_count; q++) {
                SVC_ASSERT(strcmp(c->skus[q], mo->working.skus[p]) != 0);
            }
        }
        ASSERT_EQ_INT(dom_read_product_find(d, mo->working.skus[p]), expected);
    }
    for (uint32_t p = 0; p < c->product_count; p++) {
        ASSERT_EQ_INT(dom_read_product_find(d, c->skus[p]), p);
        for (uint32_t s = 0; s < MODEL_STORES_MAX; s++) {
            struct dom_item_view view;
            bool visible = dom_read_item(d, p, s, &view);
            bool exists = s < c->store_count && c->items[p][s].exists;
            ASSERT_EQ_INT(visible, exists);
            if (exists) {
                ASSERT_EQ_INT(view.on_hand, c->items[p][s].on_hand);
                ASSERT_EQ_INT(view.sold, c->items[p][s].sold);
                ASSERT_EQ_INT(view.version, c->items[p][s].version);
                ASSERT_EQ_INT(view.updated_at_ms, c->items[p][s].updated_at_ms);
            }
        }
    }
}

static void model_run(struct domain *d, uint64_t seed, int steps)
{
    struct model *mo = calloc(1, sizeof *mo);
    test_rng_seed(&mo->rng, seed);
    for (int step = 0; step < steps; step++) {
        mo->now_ms = 1000 + step;
        uint64_t roll = test_rng_below(&mo->rng, 100);
        if (roll < 45) {
            model_step_purchase(d, mo);
        } else if (roll < 80) {
            model_step_adjust(d, mo);
        } else if (roll < 85) {
            model_step_create(d, mo);
        } else if (roll < 95) {
            dom_publish(d);
            mo->committed = mo->working;
        } else {
            dom_rollback(d);
            mo->working = mo->committed;
            mo->rollbacks++;
        }
        model_check_working(d, &mo->working);
        model_check_readers(d, mo);
    }
    print_message("  %" PRIu64 " purchases sold, %" PRIu64 " refused, %" PRIu64
                  " adjustments, %" PRIu64 " rollbacks, %u stores, %u products\n",
                  mo->purchases_ok, mo->purchases_refused, mo->adjusts, mo->rollbacks,
                  mo->working.store_count, mo->working.product_count);
    ASSERT_GT_UINT(mo->purchases_ok, steps / 20);
    ASSERT_GT_UINT(mo->purchases_refused, 0);
    ASSERT_GT_UINT(mo->rollbacks, 0);
    free(mo);
}

static void test_randomized_against_model(void **state)
{
    struct domain *d = *state;
    uint64_t seed = test_seed_begin("test_randomized_against_model");
    model_run(d, seed, MODEL_STEPS);
    test_seed_end();
}

int main(void)
{
#define DOMAIN_TEST(f) cmocka_unit_test_setup_teardown(f, domain_setup, domain_teardown)
    const struct CMUnitTest tests[] = {
        DOMAIN_TEST(test_store_create_and_duplicates),
        DOMAIN_TEST(test_store_capacity),
        DOMAIN_TEST(test_product_create_and_duplicates),
        DOMAIN_TEST(test_product_placed_in_lowest_stock_store),
        DOMAIN_TEST(test_purchase_highest_available),
        DOMAIN_TEST(test_purchase_lowest_latency),
        DOMAIN_TEST(test_purchase_round_robin),
        DOMAIN_TEST(test_purchase_explicit_store),
        DOMAIN_TEST(test_insufficient_stock_changes_nothing),
        DOMAIN_TEST(test_adjust_up_down_and_bounds),
        DOMAIN_TEST(test_adjust_below_reserved),
        DOMAIN_TEST(test_publish_makes_changes_visible),
        DOMAIN_TEST(test_rollback_restores_last_published_state),
        DOMAIN_TEST(test_rollback_keeps_hash_chains),
        DOMAIN_TEST(test_randomized_against_model),
    };
#undef DOMAIN_TEST
    return cmocka_run_group_tests(tests, NULL, NULL);
}
