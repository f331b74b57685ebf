/*
 * test_reservations.c - the writer's table of ACTIVE reservations (reservations.c): the id
 * index (linear probing with backward-shift deletion), the lazy expiry min-heap, the batch
 * protocol (res_commit frees finished reservations, res_rollback restores the batch's) and
 * the capacity limit.
 *
 * The file includes reservations.c to reach res_home, res_free and the heap, so the index
 * test can pick ids whose home slots collide (long probe chains, some wrapping around the
 * end of the index) and check the probing invariant after random inserts and deletions
 * against a plain array model. Its seed is printed; set TEST_SEED to replay a failure.
 */
#include "test_helpers.h"

#include "../../src/core/reservations.c"

/* ---- fixture and helpers ----------------------------------------------------------------- */

static int res_setup(void **state)
{
    test_seed_end(); /* a failed randomized test leaves its seed behind */
    struct res_table *t = calloc(1, sizeof *t);
    if (t == NULL || res_init(t, CAPACITY_RESERVATIONS_DEFAULT) != 0) {
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int res_teardown(void **state)
{
    struct res_table *t = *state;
    res_deinit(t);
    free(t);
    return 0;
}

/* Creates res_<seq> expiring at expires_at_ms, schedules it and commits it (as a loaded or
 * earlier batch's reservation). */
static struct reservation *make_committed(struct res_table *t, int64_t seq, int64_t expires_at_ms)
{
    struct reservation *r = res_create(t, seq);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ_INT(r->seq, seq);
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    ASSERT_EQ_INT(r->version, 1);
    r->expires_at_ms = expires_at_ms;
    r->line_count = 1;
    r->lines[0] = (struct res_line){7, 2};
    res_schedule(t, r);
    return r;
}

/* Ends r with status within the current batch, as confirm, cancel or expiry do. */
static void finish(struct res_table *t, struct reservation *r, enum res_status status)
{
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    r->status = status;
    r->version += 1;
    res_touch(t, r);
}

/* Every index entry lies at or after its home with no empty position in between (what
 * res_probe relies on), points to a used slot, and the entries count the used slots. */
static void check_index(const struct res_table *t)
{
    uint32_t used = 0;
    for (uint32_t pos = 0; pos < t->index_slots; pos++) {
        int32_t entry = t->index[pos];
        if (entry == 0) {
            continue;
        }
        used++;
        ASSERT_GE_INT(entry, 1);
        ASSERT_LE_INT(entry, t->slots_max);
        int64_t seq = t->slots[entry - 1].seq;
        ASSERT_GE_INT(seq, 1);
        for (uint32_t p = res_home(t, seq); p != pos; p = (p + 1) & (t->index_slots - 1)) {
            if (t->index[p] == 0) {
                TEST_FAIL("res_%" PRId64 " at %u is cut off from its home %u by a hole at %u", seq,
                          pos, res_home(t, seq), p);
            }
        }
    }
    ASSERT_EQ_UINT(used, res_count(t));
    ASSERT_EQ_UINT(used + t->free_count, t->slots_max);
}

/* ---- index: create, find, delete -------------------------------------------------------- */

static void test_create_and_find(void **state)
{
    struct res_table *t = *state;
    ASSERT_EQ_UINT(res_count(t), 0);
    ASSERT_NULL(res_find(t, 1));
    struct reservation *a = make_committed(t, 1, 5000);
    struct reservation *b = make_committed(t, 42, 6000);
    ASSERT_TRUE(a != b);
    ASSERT_TRUE(res_find(t, 1) == a);
    ASSERT_TRUE(res_find(t, 42) == b);
    ASSERT_NULL(res_find(t, 2));
    ASSERT_NULL(res_find(t, INT64_MAX));
    ASSERT_EQ_UINT(res_count(t), 2);
    ASSERT_FALSE(a->touched);
    ASSERT_FALSE(a->created);
    ASSERT_EQ_STR(res_status_name(RES_ACTIVE), "ACTIVE");
    ASSERT_EQ_STR(res_status_name(RES_CONFIRMED), "CONFIRMED");
    ASSERT_EQ_STR(res_status_name(RES_CANCELLED), "CANCELLED");
    ASSERT_EQ_STR(res_status_name(RES_EXPIRED), "EXPIRED");
    check_index(t);
}

/* Ids whose home is within a few positions of the index's end or of its middle. */
#define POOL_SIZE 240
#define WINDOW 6

static bool in_window(const struct res_table *t, uint32_t home)
{
    uint32_t end_distance = (home + WINDOW) & (t->index_slots - 1);
    return end_distance < 2 * WINDOW ||
           (home >= t->index_slots / 2 && home < t->index_slots / 2 + WINDOW);
}

static void test_index_colliding_random(void **state)
{
    struct res_table *t = *state;
    static int64_t pool[POOL_SIZE];
    static int64_t model_expiry[POOL_SIZE]; /* 0: absent */
    uint32_t found = 0;
    bool wraps = false;
    for (int64_t seq = 1; found < POOL_SIZE; seq++) {
        uint32_t home = res_home(t, seq);
        if (in_window(t, home)) {
            wraps = wraps || home >= t->index_slots - WINDOW;
            pool[found++] = seq;
        }
    }
    ASSERT_TRUE(wraps);
    memset(model_expiry, 0, sizeof model_expiry);
    struct test_rng rng;
    test_rng_seed(&rng, test_seed_begin("test_index_colliding_random"));
    uint32_t present = 0;
    uint64_t inserts = 0;
    uint64_t deletes = 0;
    for (uint32_t step = 0; step < 30000; step++) {
        uint32_t k = (uint32_t)test_rng_below(&rng, POOL_SIZE);
        /* Drift the fill between sparse and nearly full so chains grow and shrink. */
        bool want_full = (step / 3000) % 2 == 0;
        bool present_k = model_expiry[k] != 0;
        if (present_k && (!want_full || test_rng_below(&rng, 4) == 0)) {
            struct reservation *r = res_find(t, pool[k]);
            ASSERT_NOT_NULL(r);
            if (test_rng_below(&rng, 2) == 0) {
                res_free(t, r); /* the index deletion alone */
            } else {
                finish(t, r, RES_CANCELLED);
                res_commit(t);
            }
            ASSERT_NULL(res_find(t, pool[k]));
            model_expiry[k] = 0;
            present--;
            deletes++;
        } else if (!present_k) {
            int64_t expiry = 1 + (int64_t)test_rng_below(&rng, 1000000);
            make_committed(t, pool[k], expiry);
            res_commit(t);
            model_expiry[k] = expiry;
            present++;
            inserts++;
        }
        if (step % 16 == 0 || step > 29900) {
            for (uint32_t i = 0; i < POOL_SIZE; i++) {
                struct reservation *r = res_find(t, pool[i]);
                if (model_expiry[i] == 0) {
                    ASSERT_NULL(r);
                } else {
                    ASSERT_NOT_NULL(r);
                    ASSERT_EQ_INT(r->seq, pool[i]);
                    ASSERT_EQ_INT(r->expires_at_ms, model_expiry[i]);
                }
            }
            ASSERT_EQ_UINT(res_count(t), present);
            check_index(t);
        }
    }
    print_message("  %" PRIu64 " inserts, %" PRIu64 " deletes, %u left\n", inserts, deletes,
                  present);
    ASSERT_GT_UINT(deletes, 5000);
    test_seed_end();
}

/* Deleting from the middle of a chain that wraps around the end of the index. */
static void test_index_delete_wrapping_chain(void **state)
{
    struct res_table *t = *state;
    int64_t chain[8];
    uint32_t n = 0;
    for (int64_t seq = 1; n < 8; seq++) {
        if (res_home(t, seq) == t->index_slots - 2) {
            chain[n++] = seq;
        }
    }
    for (uint32_t i = 0; i < 8; i++) {
        make_committed(t, chain[i], 100 + i);
    }
    res_commit(t);
    check_index(t);
    /* Positions SLOTS-2, SLOTS-1, 0, 1, ...: remove the one at SLOTS-1, then the one at 0. */
    res_free(t, res_find(t, chain[1]));
    check_index(t);
    res_free(t, res_find(t, chain[3]));
    check_index(t);
    for (uint32_t i = 0; i < 8; i++) {
        struct reservation *r = res_find(t, chain[i]);
        if (i == 1 || i == 3) {
            ASSERT_NULL(r);
        } else {
            ASSERT_NOT_NULL(r);
            ASSERT_EQ_INT(r->expires_at_ms, 100 + i);
        }
    }
    ASSERT_EQ_UINT(res_count(t), 6);
}

/* ---- expiry heap ------------------------------------------------------------------------ */

#define HEAP_N 2000

static void test_heap_order_and_stale_entries(void **state)
{
    struct res_table *t = *state;
    static int64_t want[HEAP_N + 1]; /* expiry a pop must see, or 0: never pops */
    struct test_rng rng;
    test_rng_seed(&rng, test_seed_begin("test_heap_order_and_stale_entries"));
    for (int64_t seq = 1; seq <= HEAP_N; seq++) {
        want[seq] = 1 + (int64_t)test_rng_below(&rng, 10000);
        make_committed(t, seq, want[seq]);
    }
    res_commit(t);
    uint32_t moved = 0;
    uint32_t ended = 0;
    for (int64_t seq = 1; seq <= HEAP_N; seq++) {
        struct reservation *r = res_find(t, seq);
        switch (test_rng_below(&rng, 6)) {
        case 0: /* rescheduled: the old entry is stale (its time no longer matches) */
            r->expires_at_ms = 1 + (int64_t)test_rng_below(&rng, 10000);
            want[seq] = r->expires_at_ms;
            res_schedule(t, r);
            moved++;
            break;
        case 1: /* confirmed and committed: gone from the index */
            finish(t, r, RES_CONFIRMED);
            want[seq] = 0;
            ended++;
            break;
        default: break;
        }
    }
    res_commit(t);
    /* Cancelled in the batch now running: still in memory, but no longer ACTIVE. */
    for (int64_t seq = 3; seq <= HEAP_N; seq += 97) {
        struct reservation *r = res_find(t, seq);
        if (r != NULL) {
            finish(t, r, RES_CANCELLED);
            want[seq] = 0;
            ended++;
        }
    }
    ASSERT_GT_UINT(moved, 0);
    ASSERT_GT_UINT(ended, 0);
    int64_t min_want = INT64_MAX;
    uint32_t live = 0;
    for (int64_t seq = 1; seq <= HEAP_N; seq++) {
        if (want[seq] != 0) {
            live++;
            min_want = want[seq] < min_want ? want[seq] : min_want;
        }
    }
    ASSERT_EQ_INT(res_next_expiry(t), min_want);
    ASSERT_NULL(res_pop_due(t, min_want - 1));
    ASSERT_EQ_INT(res_next_expiry(t), min_want); /* a refused pop removes nothing */
    /* Pop in steps of time: each pop is due, in expiry order, live, and seen once. */
    int64_t last = 0;
    uint32_t popped = 0;
    for (int64_t now = 0; now <= 10000; now += 250) {
        struct reservation *r = NULL;
        while ((r = res_pop_due(t, now)) != NULL) {
            ASSERT_EQ_INT(r->status, RES_ACTIVE);
            ASSERT_LE_INT(r->expires_at_ms, now);
            ASSERT_GE_INT(r->expires_at_ms, last);
            ASSERT_EQ_INT(r->expires_at_ms, want[r->seq]);
            last = r->expires_at_ms;
            want[r->seq] = -1;         /* popped */
            finish(t, r, RES_EXPIRED); /* as the writer does at once */
            popped++;
        }
        ASSERT_GT_INT(res_next_expiry(t), now);
    }
    ASSERT_EQ_UINT(popped, live);
    ASSERT_EQ_INT(res_next_expiry(t), INT64_MAX);
    ASSERT_EQ_UINT(t->heap_count, 0);
    for (int64_t seq = 1; seq <= HEAP_N; seq++) {
        ASSERT_TRUE(want[seq] == 0 || want[seq] == -1);
    }
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), 0);
    check_index(t);
    test_seed_end();
}

/* A long-lived reservation at the top of the heap keeps the stale entries of every
 * reservation ended behind it. Once those fill the heap, a new reservation must still be
 * scheduled: it would otherwise stay ACTIVE (its units held) forever. */
static void test_heap_full_of_stale_entries(void **state)
{
    struct res_table *t = *state;
    make_committed(t, 1, 1000); /* the blocker: earliest, never ends */
    res_commit(t);
    int64_t seq = 2;
    for (uint32_t i = 0; i < 2 * RES_HEAP_MAX(t); i++, seq++) {
        struct reservation *r = make_committed(t, seq, 2000 + i);
        res_commit(t);
        finish(t, r, RES_CONFIRMED);
        res_commit(t);
        ASSERT_EQ_INT(res_next_expiry(t), 1000); /* the writer's idle check, each time */
        ASSERT_LE_UINT(t->heap_count, RES_HEAP_MAX(t));
    }
    ASSERT_EQ_UINT(res_count(t), 1);
    struct reservation *late = make_committed(t, seq, 500);
    res_commit(t);
    ASSERT_EQ_INT(res_next_expiry(t), 500);
    struct reservation *r = res_pop_due(t, 600);
    ASSERT_NOT_NULL(r);
    ASSERT_TRUE(r == late);
    finish(t, r, RES_EXPIRED);
    r = res_pop_due(t, 1500);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ_INT(r->seq, 1);
    finish(t, r, RES_EXPIRED);
    ASSERT_NULL(res_pop_due(t, INT64_MAX - 1));
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), 0);
}

/* A rollback that reschedules into a full heap rebuilds it, keeping the restored one. */
static void test_rollback_into_full_heap(void **state)
{
    struct res_table *t = *state;
    struct reservation *blocker = make_committed(t, 1, 1000);
    res_commit(t);
    int64_t seq = 2;
    while (t->heap_count < RES_HEAP_MAX(t)) {
        ASSERT_LT_INT(seq, 2 + 2 * RES_HEAP_MAX(t));
        struct reservation *r = make_committed(t, seq, 2000 + seq);
        res_commit(t);
        finish(t, r, RES_CANCELLED);
        res_commit(t);
        seq++;
    }
    finish(t, blocker, RES_CONFIRMED); /* a confirm leaves its entry; the batch then fails */
    res_rollback(t);
    ASSERT_EQ_INT(blocker->status, RES_ACTIVE);
    ASSERT_EQ_INT(blocker->version, 1);
    ASSERT_EQ_UINT(t->heap_count, 1); /* rebuilt: one entry per ACTIVE reservation */
    ASSERT_TRUE(res_pop_due(t, 1500) == blocker);
    finish(t, blocker, RES_EXPIRED);
    ASSERT_NULL(res_pop_due(t, INT64_MAX - 1));
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), 0);
}

/* ---- batch protocol: commit and rollback ------------------------------------------------ */

static void test_commit_frees_finished(void **state)
{
    struct res_table *t = *state;
    for (int64_t seq = 1; seq <= 6; seq++) {
        struct reservation *r = make_committed(t, seq, 1000 * seq);
        r->created = true;
        res_touch(t, r);
        res_touch(t, r); /* touching twice lists it once */
    }
    ASSERT_EQ_UINT(t->touched_count, 6);
    res_commit(t);
    ASSERT_EQ_UINT(t->touched_count, 0);
    ASSERT_EQ_UINT(res_count(t), 6);
    for (int64_t seq = 1; seq <= 6; seq++) {
        struct reservation *r = res_find(t, seq);
        ASSERT_NOT_NULL(r);
        ASSERT_FALSE(r->touched);
        ASSERT_FALSE(r->created);
    }
    finish(t, res_find(t, 2), RES_CONFIRMED);
    finish(t, res_find(t, 4), RES_CANCELLED);
    finish(t, res_find(t, 6), RES_EXPIRED);
    /* Until the commit, the finished ones stay findable with their final status. */
    ASSERT_EQ_INT(res_find(t, 2)->status, RES_CONFIRMED);
    ASSERT_EQ_INT(res_find(t, 2)->version, 2);
    ASSERT_EQ_UINT(res_count(t), 6);
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), 3);
    for (int64_t seq = 1; seq <= 6; seq++) {
        if (seq % 2 == 0) {
            ASSERT_NULL(res_find(t, seq));
        } else {
            ASSERT_NOT_NULL(res_find(t, seq));
            ASSERT_EQ_INT(res_find(t, seq)->status, RES_ACTIVE);
        }
    }
    /* Their heap entries are stale: only the ACTIVE ones pop. */
    int64_t seen[3];
    uint32_t n = 0;
    struct reservation *r = NULL;
    while ((r = res_pop_due(t, INT64_MAX - 1)) != NULL) {
        ASSERT_LT_UINT(n, 3);
        seen[n++] = r->seq;
        finish(t, r, RES_EXPIRED);
    }
    ASSERT_EQ_UINT(n, 3);
    ASSERT_EQ_INT(seen[0], 1);
    ASSERT_EQ_INT(seen[1], 3);
    ASSERT_EQ_INT(seen[2], 5);
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), 0);
    check_index(t);
}

static void test_rollback_restores_batch(void **state)
{
    struct res_table *t = *state;
    struct reservation *a = make_committed(t, 1, 5000);
    struct reservation *b = make_committed(t, 2, 100);
    struct reservation *c = make_committed(t, 3, 7000);
    res_commit(t);
    /* The failed batch: b expires by the timer, a is confirmed, d and e are created (e then
     * cancelled in the same batch), c is left alone. */
    struct reservation *popped = res_pop_due(t, 150);
    ASSERT_TRUE(popped == b);
    finish(t, b, RES_EXPIRED);
    finish(t, a, RES_CONFIRMED);
    struct reservation *d = res_create(t, 4);
    ASSERT_NOT_NULL(d);
    d->expires_at_ms = 50;
    d->created = true;
    res_touch(t, d);
    res_schedule(t, d);
    struct reservation *e = res_create(t, 5);
    ASSERT_NOT_NULL(e);
    e->expires_at_ms = 60;
    e->created = true;
    res_touch(t, e);
    res_schedule(t, e);
    e->status = RES_CANCELLED;
    e->version = 2;
    ASSERT_EQ_UINT(res_count(t), 5);
    res_rollback(t);
    ASSERT_EQ_UINT(t->touched_count, 0);
    ASSERT_EQ_UINT(res_count(t), 3);
    ASSERT_NULL(res_find(t, 4));
    ASSERT_NULL(res_find(t, 5));
    ASSERT_TRUE(res_find(t, 1) == a);
    ASSERT_TRUE(res_find(t, 2) == b);
    ASSERT_TRUE(res_find(t, 3) == c);
    ASSERT_EQ_INT(a->status, RES_ACTIVE);
    ASSERT_EQ_INT(a->version, 1);
    ASSERT_FALSE(a->touched);
    ASSERT_EQ_INT(b->status, RES_ACTIVE);
    ASSERT_EQ_INT(b->version, 1);
    ASSERT_EQ_INT(c->status, RES_ACTIVE);
    ASSERT_EQ_INT(c->version, 1);
    check_index(t);
    /* The retried batch sees b due again (rescheduled), then a and c, each once. */
    ASSERT_EQ_INT(res_next_expiry(t), 100);
    int64_t order[3] = {2, 1, 3};
    for (int i = 0; i < 3; i++) {
        struct reservation *r = res_pop_due(t, 10000);
        ASSERT_NOT_NULL(r);
        ASSERT_EQ_INT(r->seq, order[i]);
        finish(t, r, RES_EXPIRED);
    }
    ASSERT_NULL(res_pop_due(t, 10000));
    /* The ids of the rolled-back creations are free for the retry. */
    ASSERT_NOT_NULL(res_create(t, 4));
    ASSERT_NOT_NULL(res_create(t, 5));
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), 2);
    check_index(t);
}

/* ---- capacity --------------------------------------------------------------------------- */

static void test_capacity(void **state)
{
    struct res_table *t = *state;
    for (int64_t seq = 1; seq <= t->slots_max; seq++) {
        make_committed(t, seq, seq);
    }
    res_commit(t);
    ASSERT_EQ_UINT(res_count(t), t->slots_max);
    ASSERT_EQ_UINT(t->free_count, 0);
    ASSERT_NULL(res_create(t, t->slots_max + 1));
    ASSERT_NULL(res_find(t, t->slots_max + 1));
    check_index(t);
    /* One ends: its slot serves the next id. */
    finish(t, res_find(t, 77), RES_CONFIRMED);
    res_commit(t);
    struct reservation *r = res_create(t, t->slots_max + 1);
    ASSERT_NOT_NULL(r);
    ASSERT_EQ_INT(r->version, 1);
    ASSERT_EQ_INT(r->status, RES_ACTIVE);
    ASSERT_NULL(res_create(t, t->slots_max + 2));
    for (int64_t seq = 1; seq <= t->slots_max + 1; seq++) {
        if (seq == 77) {
            ASSERT_NULL(res_find(t, seq));
        } else {
            ASSERT_NOT_NULL(res_find(t, seq));
        }
    }
    check_index(t);
}

int main(void)
{
#define RES_TEST(f) cmocka_unit_test_setup_teardown(f, res_setup, res_teardown)
    const struct CMUnitTest tests[] = {
        RES_TEST(test_create_and_find),
        RES_TEST(test_index_colliding_random),
        RES_TEST(test_index_delete_wrapping_chain),
        RES_TEST(test_heap_order_and_stale_entries),
        RES_TEST(test_heap_full_of_stale_entries),
        RES_TEST(test_rollback_into_full_heap),
        RES_TEST(test_commit_frees_finished),
        RES_TEST(test_rollback_restores_batch),
        RES_TEST(test_capacity),
    };
#undef RES_TEST
    return cmocka_run_group_tests(tests, NULL, NULL);
}
