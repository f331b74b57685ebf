/*
 * test_sse_ring.c - the SPSC byte ring of the SSE feed (src/http/sse_ring.c, included here to
 * reach its statics, h2o t/00unit style; it needs nothing of h2o).
 *
 * Single-thread tests pin down record order and content, the skip record at the buffer's end,
 * a ring filled exactly, overflow (every later reservation fails until the consumer takes it,
 * so the ring never holds a gap) and the wake flag. The two-thread tests then run a producer
 * and a consumer over a small ring with the wake protocol of api_stream.c, a condition
 * variable standing in for the h2o message: in the lossless test the producer waits for room
 * and every record must arrive once, in order, intact; in the lossy test it never waits (as
 * the tap) and the consumer checks that a gap only ever follows an overflow it took, and that
 * the one wake message is never queued twice. Built and run under TSan too (suite tsan).
 * Read test_queue.c for the writer's queue.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "test_helpers.h"

#include "../../src/http/sse_ring.c"

/* The text of record seq: its length and bytes follow from seq, so the consumer can check
 * both without shared state. */
static size_t test_text_length(int64_t seq, size_t length_max)
{
    return 1 + (size_t)((uint64_t)seq * 2654435761u % length_max);
}

static char test_text_byte(int64_t seq, size_t i)
{
    return (char)('a' + (seq + (int64_t)i) % 26);
}

/* Writes record seq into ring; false when the ring refused it (overflowed). */
static bool test_write(struct sse_ring *ring, int64_t seq, size_t length_max)
{
    size_t length = test_text_length(seq, length_max);
    char *text = sse_ring_reserve(ring, length);
    if (text == NULL) {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        text[i] = test_text_byte(seq, i);
    }
    sse_ring_commit(ring, seq, length);
    return true;
}

/* True when entry carries exactly the text of its seq. */
static bool test_entry_intact(const struct sse_ring_entry *entry, size_t length_max)
{
    if (entry->length != test_text_length(entry->seq, length_max)) {
        return false;
    }
    for (size_t i = 0; i < entry->length; i++) {
        if (entry->text[i] != test_text_byte(entry->seq, i)) {
            return false;
        }
    }
    return true;
}

/* ---- one thread -------------------------------------------------------------------------- */

static void test_records_come_out_in_order(void **state)
{
    (void)state;
    struct sse_ring ring;
    ASSERT_OK(sse_ring_init(&ring, 1024));
    struct sse_ring_entry entry;
    ASSERT_FALSE(sse_ring_peek(&ring, &entry)); /* empty from the start */
    for (int64_t seq = 1; seq <= 5; seq++) {
        ASSERT_TRUE(test_write(&ring, seq, 100));
    }
    for (int64_t seq = 1; seq <= 5; seq++) {
        ASSERT_TRUE(sse_ring_peek(&ring, &entry));
        ASSERT_EQ_INT(entry.seq, seq);
        ASSERT_TRUE(test_entry_intact(&entry, 100));
        ASSERT_TRUE(sse_ring_peek(&ring, &entry)); /* a peek does not consume */
        ASSERT_EQ_INT(entry.seq, seq);
        sse_ring_pop(&ring, &entry);
    }
    ASSERT_FALSE(sse_ring_peek(&ring, &entry));
    ASSERT_FALSE(sse_ring_overflow_take(&ring));
    sse_ring_deinit(&ring);
    ASSERT_NULL(ring.data);
}

static void test_commit_may_be_shorter_than_reserved(void **state)
{
    (void)state;
    struct sse_ring ring;
    ASSERT_OK(sse_ring_init(&ring, 256));
    char *text = sse_ring_reserve(&ring, 200);
    ASSERT_NOT_NULL(text);
    memcpy(text, "abc", 3);
    sse_ring_commit(&ring, 7, 3);
    /* Only the committed bytes count: a second record fits where the reservation was. */
    ASSERT_TRUE(test_write(&ring, 8, 100));
    struct sse_ring_entry entry;
    ASSERT_TRUE(sse_ring_peek(&ring, &entry));
    ASSERT_EQ_INT(entry.seq, 7);
    ASSERT_EQ_UINT(entry.length, 3);
    ASSERT_EQ_MEM(entry.text, "abc", 3);
    sse_ring_pop(&ring, &entry);
    ASSERT_TRUE(sse_ring_peek(&ring, &entry));
    ASSERT_EQ_INT(entry.seq, 8);
    sse_ring_pop(&ring, &entry);
    sse_ring_deinit(&ring);
}

static void test_a_record_never_wraps(void **state)
{
    (void)state;
    struct sse_ring ring;
    ASSERT_OK(sse_ring_init(&ring, 256));
    /* 3 records of 64 bytes (48 text + 16 header) leave 64 bytes at the end. */
    struct sse_ring_entry entry;
    for (int64_t seq = 1; seq <= 3; seq++) {
        char *text = sse_ring_reserve(&ring, 48);
        ASSERT_NOT_NULL(text);
        memset(text, 'x', 48);
        sse_ring_commit(&ring, seq, 48);
    }
    for (int i = 0; i < 2; i++) {
        ASSERT_TRUE(sse_ring_peek(&ring, &entry));
        sse_ring_pop(&ring, &entry);
    }
    /* 96 bytes needed, 64 left before the end: a skip record, then the record at offset 0. */
    char *text = sse_ring_reserve(&ring, 80);
    ASSERT_NOT_NULL(text);
    ASSERT_TRUE(text == ring.data + SSE_RING_HEADER_BYTES);
    memset(text, 'y', 80);
    sse_ring_commit(&ring, 4, 80);
    ASSERT_TRUE(sse_ring_peek(&ring, &entry));
    ASSERT_EQ_INT(entry.seq, 3);
    sse_ring_pop(&ring, &entry);
    ASSERT_TRUE(sse_ring_peek(&ring, &entry)); /* the skip record is passed over */
    ASSERT_EQ_INT(entry.seq, 4);
    ASSERT_EQ_UINT(entry.length, 80);
    ASSERT_TRUE(entry.text == text);
    sse_ring_pop(&ring, &entry);
    ASSERT_FALSE(sse_ring_peek(&ring, &entry));
    ASSERT_EQ_UINT(atomic_load(&ring.head), atomic_load(&ring.tail));
#if SVC_DEBUG_CHECKS
    ASSERT_GT_UINT(svc_testcase_hits("skip > 0"), 0);
#endif
    sse_ring_deinit(&ring);
}

static void test_exactly_full_then_overflow(void **state)
{
    (void)state;
    struct sse_ring ring;
    ASSERT_OK(sse_ring_init(&ring, 256));
    /* Four records of 64 bytes fill the ring exactly. */
    for (int64_t seq = 1; seq <= 4; seq++) {
        char *text = sse_ring_reserve(&ring, 48);
        ASSERT_NOT_NULL(text);
        sse_ring_commit(&ring, seq, 48);
    }
    ASSERT_FALSE(atomic_load(&ring.overflowed));
    ASSERT_NULL(sse_ring_reserve(&ring, 1)); /* full: the ring is now overflowed */
    ASSERT_TRUE(atomic_load(&ring.overflowed));
    struct sse_ring_entry entry;
    ASSERT_TRUE(sse_ring_peek(&ring, &entry));
    sse_ring_pop(&ring, &entry);
    /* Room again, but nothing is written past the gap until the consumer took it. */
    ASSERT_NULL(sse_ring_reserve(&ring, 1));
    for (int64_t seq = 2; seq <= 4; seq++) {
        ASSERT_TRUE(sse_ring_peek(&ring, &entry));
        ASSERT_EQ_INT(entry.seq, seq); /* what is in the ring precedes the gap */
        sse_ring_pop(&ring, &entry);
    }
    ASSERT_TRUE(sse_ring_overflow_take(&ring));
    ASSERT_FALSE(sse_ring_overflow_take(&ring));
    ASSERT_TRUE(test_write(&ring, 9, 100));
#if SVC_DEBUG_CHECKS
    ASSERT_GT_UINT(svc_testcase_hits("skip + need == free_bytes"), 0);
    ASSERT_GT_UINT(svc_testcase_hits("overflowed"), 0);
#endif
    sse_ring_deinit(&ring);
}

static void test_a_record_larger_than_the_ring_overflows(void **state)
{
    (void)state;
    struct sse_ring ring;
    ASSERT_OK(sse_ring_init(&ring, 256));
    ASSERT_NULL(sse_ring_reserve(&ring, 256 - SSE_RING_HEADER_BYTES + 1));
    ASSERT_TRUE(sse_ring_overflow_take(&ring));
    char *text = sse_ring_reserve(&ring, 256 - SSE_RING_HEADER_BYTES); /* exactly the ring */
    ASSERT_NOT_NULL(text);
    sse_ring_commit(&ring, 1, 256 - SSE_RING_HEADER_BYTES);
    struct sse_ring_entry entry;
    ASSERT_TRUE(sse_ring_peek(&ring, &entry));
    ASSERT_EQ_UINT(entry.length, 256 - SSE_RING_HEADER_BYTES);
    sse_ring_pop(&ring, &entry);
    sse_ring_deinit(&ring);
}

static void test_wake_is_claimed_once_until_done(void **state)
{
    (void)state;
    struct sse_ring ring;
    ASSERT_OK(sse_ring_init(&ring, 256));
    ASSERT_TRUE(sse_ring_wake_claim(&ring));  /* clear: send the message */
    ASSERT_FALSE(sse_ring_wake_claim(&ring)); /* queued already: do not send it again */
    ASSERT_FALSE(sse_ring_wake_claim(&ring));
    sse_ring_wake_done(&ring);
    ASSERT_TRUE(sse_ring_wake_claim(&ring));
    sse_ring_wake_done(&ring);
    sse_ring_deinit(&ring);
}

/* ---- two threads ------------------------------------------------------------------------- */

#define TEST_RING_BYTES 4096
#define TEST_TEXT_MAX 600
#define TEST_RECORDS 100000

/* The stand-in for the h2o multithread message: linked while queued, under the mutex. */
struct test_channel {
    struct sse_ring ring;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    bool message_linked;
    uint64_t double_sends; /* sends of a message already queued: must stay 0 */
    uint64_t wakes;
    bool lossless;    /* the producer waits for room instead of overflowing */
    int64_t last_seq; /* the final record, which the producer retries until it is in */
};

static void test_channel_send(struct test_channel *c)
{
    pthread_mutex_lock(&c->mutex);
    if (c->message_linked) {
        c->double_sends++;
    }
    c->message_linked = true;
    c->wakes++;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mutex);
}

/* Blocks until the message is queued, then unlinks it (the receiver callback's first step). */
static void test_channel_receive(struct test_channel *c)
{
    pthread_mutex_lock(&c->mutex);
    while (!c->message_linked) {
        pthread_cond_wait(&c->cond, &c->mutex);
    }
    c->message_linked = false;
    pthread_mutex_unlock(&c->mutex);
}

/* True when the producer may write a record of up to length_max text bytes without
 * overflowing (the lossless test's pacing; the tap never waits). */
static bool test_room_for(struct sse_ring *ring, size_t length_max)
{
    uint64_t used = atomic_load(&ring->head) - atomic_load(&ring->tail);
    return ring->size - used >= 2 * sse_ring_record_bytes(length_max);
}

static void *test_producer(void *arg)
{
    struct test_channel *c = arg;
    for (int64_t seq = 1; seq <= c->last_seq; seq++) {
        bool final = seq == c->last_seq;
        while (c->lossless || final) {
            if (c->lossless ? test_room_for(&c->ring, TEST_TEXT_MAX)
                            : !atomic_load(&c->ring.overflowed)) {
                break;
            }
            sched_yield();
        }
        bool written = test_write(&c->ring, seq, TEST_TEXT_MAX);
        if (final && !written) {
            seq--; /* the consumer has not freed enough room yet: try the end again */
        }
        if (sse_ring_wake_claim(&c->ring)) {
            test_channel_send(c);
        }
        if (seq % 1024 == 0) {
            sched_yield(); /* let the consumer fall behind and catch up at times */
        }
    }
    return NULL;
}

struct test_seen {
    int64_t records;
    int64_t last_seq;
    int64_t gaps;        /* seq jumps that followed a taken overflow */
    int64_t overflows;   /* overflows taken */
    int64_t bad_order;   /* seqs not above the previous one: must stay 0 */
    int64_t bad_text;    /* records whose text is not their seq's: must stay 0 */
    int64_t unexplained; /* gaps with no overflow taken before them: must stay 0 */
};

/* The consumer's drain, as stream_on_wake does it; returns when the final record arrived. */
static void test_consume(struct test_channel *c, struct test_seen *seen)
{
    bool overflow_before = false;
    while (seen->last_seq < c->last_seq) {
        test_channel_receive(c);
        sse_ring_wake_done(&c->ring);
        struct sse_ring_entry entry;
        while (sse_ring_peek(&c->ring, &entry)) {
            seen->bad_order += entry.seq <= seen->last_seq;
            seen->bad_text += !test_entry_intact(&entry, TEST_TEXT_MAX);
            if (entry.seq != seen->last_seq + 1) {
                seen->gaps++;
                seen->unexplained += !overflow_before;
            }
            overflow_before = false;
            seen->last_seq = entry.seq;
            seen->records++;
            sse_ring_pop(&c->ring, &entry);
        }
        if (sse_ring_overflow_take(&c->ring)) {
            seen->overflows++;
            overflow_before = true;
        }
    }
}

static void test_run_threads(bool lossless, struct test_channel *c, struct test_seen *seen)
{
    memset(c, 0, sizeof *c);
    memset(seen, 0, sizeof *seen);
    ASSERT_OK(sse_ring_init(&c->ring, TEST_RING_BYTES));
    pthread_mutex_init(&c->mutex, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->lossless = lossless;
    c->last_seq = TEST_RECORDS;
    pthread_t producer;
    ASSERT_EQ_INT(pthread_create(&producer, NULL, test_producer, c), 0);
    test_consume(c, seen);
    ASSERT_EQ_INT(pthread_join(producer, NULL), 0);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->mutex);
    sse_ring_deinit(&c->ring);
}

static void test_threads_lossless(void **state)
{
    (void)state;
    static struct test_channel c;
    struct test_seen seen;
    test_run_threads(true, &c, &seen);
    ASSERT_EQ_INT(seen.records, TEST_RECORDS); /* every record once, in order */
    ASSERT_EQ_INT(seen.last_seq, TEST_RECORDS);
    ASSERT_EQ_INT(seen.gaps, 0);
    ASSERT_EQ_INT(seen.overflows, 0);
    ASSERT_EQ_INT(seen.bad_order, 0);
    ASSERT_EQ_INT(seen.bad_text, 0);
    ASSERT_EQ_UINT(c.double_sends, 0);
    ASSERT_GE_UINT(c.wakes, 1);
}

static void test_threads_overflow_leaves_no_hidden_gap(void **state)
{
    (void)state;
    static struct test_channel c;
    struct test_seen seen;
    test_run_threads(false, &c, &seen);
    print_message("lossy run: %" PRId64 " of %d records, %" PRId64 " overflows, %" PRIu64
                  " wakes\n",
                  seen.records, TEST_RECORDS, seen.overflows, c.wakes);
    ASSERT_EQ_INT(seen.last_seq, TEST_RECORDS);
    ASSERT_GE_INT(seen.records, 1);
    ASSERT_EQ_INT(seen.bad_order, 0);
    ASSERT_EQ_INT(seen.bad_text, 0);
    ASSERT_EQ_INT(seen.unexplained, 0); /* every gap follows an overflow the consumer took */
    ASSERT_LE_INT(seen.gaps, seen.overflows);
    ASSERT_EQ_UINT(c.double_sends, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_come_out_in_order),
        cmocka_unit_test(test_commit_may_be_shorter_than_reserved),
        cmocka_unit_test(test_a_record_never_wraps),
        cmocka_unit_test(test_exactly_full_then_overflow),
        cmocka_unit_test(test_a_record_larger_than_the_ring_overflows),
        cmocka_unit_test(test_wake_is_claimed_once_until_done),
        cmocka_unit_test(test_threads_lossless),
        cmocka_unit_test(test_threads_overflow_leaves_no_hidden_gap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
