/*
 * test_queue.c - the bounded MPSC queue in front of the writer (queue.c).
 *
 * Single-thread tests pin down order, the full ring (-EAGAIN, the caller keeps the item),
 * the batch bound and many laps of wraparound. The multi-producer test then pushes 200,000
 * tagged items from four threads into a small ring while this thread consumes in batches and
 * sleeps in queue_wait when it runs dry: every item must arrive exactly once and in its
 * producer's order. The wake tests check that neither queue_wake nor a push is lost on a
 * sleeping consumer. Built and run under TSan too (suite tsan). Read test_writer.c next.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "test_helpers.h"

#include "base/clock.h"
#include "base/svc_limits.h"
#include "core/queue.h"

static int queue_setup_small(void **state)
{
    struct queue *q = calloc(1, sizeof *q);
    if (q == NULL || queue_init(q, 8) != 0) {
        free(q);
        return -1;
    }
    *state = q;
    return 0;
}

static int queue_teardown(void **state)
{
    struct queue *q = *state;
    queue_deinit(q);
    free(q);
    return 0;
}

/* ---- one thread -------------------------------------------------------------------------- */

static void test_push_pop_in_order(void **state)
{
    struct queue *q = *state;
    int values[8];
    void *out[8];
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 8), 0); /* empty from the start */
    for (int i = 0; i < 6; i++) {
        ASSERT_OK(queue_push(q, &values[i]));
        ASSERT_EQ_UINT(queue_depth(q), i + 1);
    }
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 8), 6);
    for (int i = 0; i < 6; i++) {
        ASSERT_TRUE(out[i] == &values[i]);
    }
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 8), 0);
    ASSERT_EQ_UINT(queue_depth(q), 0);
}

static void test_full_ring_returns_eagain(void **state)
{
    struct queue *q = *state;
    int values[10];
    void *out[8];
    for (int i = 0; i < 8; i++) {
        ASSERT_OK(queue_push(q, &values[i]));
    }
    /* Exactly full: the next push is refused and the queue does not take the item. */
    ASSERT_ERR(queue_push(q, &values[8]), -EAGAIN);
    ASSERT_ERR(queue_push(q, &values[8]), -EAGAIN);
    ASSERT_EQ_UINT(queue_depth(q), 8);
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 1), 1);
    ASSERT_TRUE(out[0] == &values[0]);
    /* One cell free: one push fits, the next is refused again. */
    ASSERT_OK(queue_push(q, &values[8]));
    ASSERT_ERR(queue_push(q, &values[9]), -EAGAIN);
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 8), 8);
    for (int i = 0; i < 8; i++) {
        ASSERT_TRUE(out[i] == &values[i + 1]); /* values[9] was never taken */
    }
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 8), 0);
}

static void test_pop_batch_respects_max(void **state)
{
    struct queue *q = *state;
    int values[7];
    void *out[8];
    void *const sentinel = &out; /* any pointer that is not an item */
    for (int i = 0; i < 7; i++) {
        ASSERT_OK(queue_push(q, &values[i]));
    }
    const size_t maxes[] = {3, 1, 2, 5};
    const size_t expected[] = {3, 1, 2, 1};
    int next = 0;
    for (size_t k = 0; k < 4; k++) {
        for (int i = 0; i < 8; i++) {
            out[i] = sentinel;
        }
        ASSERT_EQ_UINT(queue_pop_batch(q, out, maxes[k]), expected[k]);
        for (size_t i = 0; i < expected[k]; i++) {
            ASSERT_TRUE(out[i] == &values[next++]);
        }
        for (size_t i = expected[k]; i < 8; i++) {
            ASSERT_TRUE(out[i] == sentinel); /* nothing written past the count */
        }
    }
    ASSERT_EQ_INT(next, 7);
}

static void test_wraparound_many_laps(void **state)
{
    (void)state;
    struct queue q;
    ASSERT_OK(queue_init(&q, 4));
    static uint64_t values[64];
    void *out[4];
    struct test_rng rng;
    test_rng_seed(&rng, 42);
    uint64_t pushed = 0;
    uint64_t popped = 0;
    while (popped < 400000) {
        size_t room = 4 - (size_t)(pushed - popped);
        size_t to_push = (size_t)test_rng_below(&rng, room + 1);
        for (size_t i = 0; i < to_push; i++) {
            ASSERT_OK(queue_push(&q, &values[pushed % 64]));
            pushed++;
        }
        if (pushed - popped == 4) {
            ASSERT_ERR(queue_push(&q, &values[0]), -EAGAIN);
        }
        size_t max = 1 + (size_t)test_rng_below(&rng, 4);
        size_t got = queue_pop_batch(&q, out, max);
        ASSERT_EQ_UINT(got, (pushed - popped) < max ? (pushed - popped) : max);
        for (size_t i = 0; i < got; i++) {
            ASSERT_TRUE(out[i] == &values[popped % 64]);
            popped++;
        }
    }
    ASSERT_GE_UINT(pushed / 4, 100000); /* laps of the ring */
    queue_deinit(&q);
}

/* ---- many producers, one consumer -------------------------------------------------------- */

#define PRODUCERS 4
#define ITEMS_PER_PRODUCER 50000
#define MP_RING_CELLS 256 /* small, so that producers also meet the full ring */
#define MP_BATCH_MAX 64

struct tagged {
    uint32_t producer; /* written by the producer just before the push */
    uint32_t seq;
};

struct producer {
    pthread_t thread;
    struct queue *q;
    uint32_t index;
    struct tagged *items;  /* ITEMS_PER_PRODUCER, owned by the test */
    uint64_t full_retries; /* written by the producer, read after join */
};

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    for (uint32_t i = 0; i < ITEMS_PER_PRODUCER; i++) {
        struct tagged *item = &p->items[i];
        item->producer = p->index; /* published to the consumer by the push */
        item->seq = i;
        while (queue_push(p->q, item) == -EAGAIN) {
            p->full_retries++;
            sched_yield();
        }
    }
    return NULL;
}

static void test_multi_producer_exactly_once_in_order(void **state)
{
    (void)state;
    struct queue q;
    ASSERT_OK(queue_init(&q, MP_RING_CELLS));
    struct producer producers[PRODUCERS];
    uint32_t next_seq[PRODUCERS] = {0};
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        producers[i] = (struct producer){.q = &q, .index = i};
        producers[i].items = calloc(ITEMS_PER_PRODUCER, sizeof(struct tagged));
        ASSERT_NOT_NULL(producers[i].items);
    }
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        ASSERT_OK(pthread_create(&producers[i].thread, NULL, producer_main, &producers[i]));
    }
    void *out[MP_BATCH_MAX];
    uint64_t received = 0;
    uint64_t waits = 0;
    uint64_t long_waits = 0;
    while (received < (uint64_t)PRODUCERS * ITEMS_PER_PRODUCER) {
        size_t count = queue_pop_batch(&q, out, MP_BATCH_MAX);
        ASSERT_LE_UINT(count, MP_BATCH_MAX);
        if (count == 0) {
            int64_t started_us = clock_mono_us();
            queue_wait(&q, 10000);
            waits++;
            long_waits += clock_mono_us() - started_us > 3000000; /* a lost wakeup */
            continue;
        }
        for (size_t k = 0; k < count; k++) {
            const struct tagged *item = out[k];
            ASSERT_LT_UINT(item->producer, PRODUCERS);
            /* The next in its producer's order: no loss, no duplicate, no reordering. */
            ASSERT_EQ_UINT(item->seq, next_seq[item->producer]);
            ASSERT_TRUE(item == &producers[item->producer].items[item->seq]);
            next_seq[item->producer]++;
        }
        received += count;
    }
    uint64_t full_retries = 0;
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        ASSERT_OK(pthread_join(producers[i].thread, NULL));
        ASSERT_EQ_UINT(next_seq[i], ITEMS_PER_PRODUCER);
        full_retries += producers[i].full_retries;
        free(producers[i].items);
    }
    ASSERT_EQ_UINT(queue_pop_batch(&q, out, MP_BATCH_MAX), 0);
    ASSERT_EQ_UINT(queue_depth(&q), 0);
    ASSERT_EQ_UINT(long_waits, 0);
    print_message("  %" PRIu64 " items, %" PRIu64 " consumer waits, %" PRIu64
                  " pushes refused as full\n",
                  received, waits, full_retries);
    queue_deinit(&q);
}

/* ---- waking the consumer ----------------------------------------------------------------- */

struct waiter {
    pthread_t thread;
    struct queue *q;
    int timeout_ms;
    int64_t waited_us; /* written by the waiter, read after join */
    void *popped;      /* what the waiter found after waking, or NULL */
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    int64_t started_us = clock_mono_us();
    queue_wait(w->q, w->timeout_ms);
    w->waited_us = clock_mono_us() - started_us;
    void *out[1] = {NULL};
    if (queue_pop_batch(w->q, out, 1) == 1) {
        w->popped = out[0];
    }
    return NULL;
}

/* Starts a waiter and returns once it announced that it sleeps (or 5 s passed). */
static void waiter_start(struct waiter *w, struct queue *q, int timeout_ms)
{
    *w = (struct waiter){.q = q, .timeout_ms = timeout_ms};
    ASSERT_OK(pthread_create(&w->thread, NULL, waiter_main, w));
    for (int i = 0; i < 5000 && atomic_load(&q->consumer_sleeping) == 0; i++) {
        usleep(1000);
    }
    usleep(20000); /* let it reach poll(); a wake before that must not be lost either */
}

static void test_wake_wakes_a_waiting_consumer(void **state)
{
    struct queue *q = *state;
    struct waiter w;
    waiter_start(&w, q, 20000);
    queue_wake(q);
    ASSERT_OK(pthread_join(w.thread, NULL));
    ASSERT_LT_INT(w.waited_us, 5000000);
    ASSERT_NULL(w.popped);
    ASSERT_EQ_INT(atomic_load(&q->consumer_sleeping), 0);
}

static void test_push_wakes_a_waiting_consumer(void **state)
{
    struct queue *q = *state;
    int value = 7;
    struct waiter w;
    waiter_start(&w, q, 20000);
    ASSERT_OK(queue_push(q, &value));
    ASSERT_OK(pthread_join(w.thread, NULL));
    ASSERT_LT_INT(w.waited_us, 5000000);
    ASSERT_TRUE(w.popped == &value);
}

static void test_wake_before_wait_is_not_lost(void **state)
{
    struct queue *q = *state;
    queue_wake(q);
    int64_t started_us = clock_mono_us();
    queue_wait(q, 20000);
    ASSERT_LT_INT(clock_mono_us() - started_us, 5000000);
    /* The wake was consumed: an idle wait now lasts its timeout. */
    started_us = clock_mono_us();
    queue_wait(q, 50);
    ASSERT_GE_INT(clock_mono_us() - started_us, 40000);
}

static void test_wait_returns_at_once_when_items_are_queued(void **state)
{
    struct queue *q = *state;
    int value = 1;
    void *out[1];
    ASSERT_OK(queue_push(q, &value)); /* no consumer sleeps: no eventfd write needed */
    int64_t started_us = clock_mono_us();
    queue_wait(q, 20000);
    ASSERT_LT_INT(clock_mono_us() - started_us, 5000000);
    ASSERT_EQ_UINT(queue_pop_batch(q, out, 1), 1);
}

int main(void)
{
#define QUEUE_TEST(f) cmocka_unit_test_setup_teardown(f, queue_setup_small, queue_teardown)
    const struct CMUnitTest tests[] = {
        QUEUE_TEST(test_push_pop_in_order),
        QUEUE_TEST(test_full_ring_returns_eagain),
        QUEUE_TEST(test_pop_batch_respects_max),
        cmocka_unit_test(test_wraparound_many_laps),
        cmocka_unit_test(test_multi_producer_exactly_once_in_order),
        QUEUE_TEST(test_wake_wakes_a_waiting_consumer),
        QUEUE_TEST(test_push_wakes_a_waiting_consumer),
        QUEUE_TEST(test_wake_before_wait_is_not_lost),
        QUEUE_TEST(test_wait_returns_at_once_when_items_are_queued),
    };
#undef QUEUE_TEST
    return cmocka_run_group_tests(tests, NULL, NULL);
}
