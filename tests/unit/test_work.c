/*
 * test_work.c - the workers' stored offsets (work.c, included for its statics): the offset a
 * step carries is its stage's low-water mark, so a crash can never make a stage skip an event
 * whose step failed. No thread, no reader, no provider call: the tests send steps, take them
 * off the writer's queue themselves and hand back replies the way the writer would.
 *
 * The case that used to lose an order: the steps for events 10 and 11 go out, the batch of 10
 * fails (503) while the one of 11 commits. Had 11's step stored offset 11, a crash before 10's
 * step went through again would restart the stage after 11: order 10 skipped, left to its TTL.
 * A restart keeps a parked charge parked (its stored attempts reached the most). Read
 * test_writer.c next.
 */
#include "test_helpers.h"

#include "../../src/work/work.c"
#include "../../src/work/work_lease.c"

/* The fake clock and the fake provider's gate (a circuit breaker's answers) and results. */
static int64_t test_work_now_ms = 1000;
static bool test_work_open; /* admits says no and charge refuses, as an open circuit */
static struct pay_result test_work_due[4];
static size_t test_work_due_count;
static uint64_t test_work_last_token; /* the last charge's token */

static int64_t test_work_wall_ms(void)
{
    return test_work_now_ms;
}

static int test_work_charge(void *self, const char *key, uint64_t token, int64_t now_ms)
{
    (void)key, (void)now_ms;
    if (test_work_open) {
        return SVC_ECAPACITY;
    }
    *(int *)self += 1; /* the charges asked */
    test_work_last_token = token;
    return 0;
}

static size_t test_work_poll(void *self, int64_t now_ms, struct pay_result *out, size_t max)
{
    (void)self, (void)now_ms;
    SVC_ASSERT(test_work_due_count <= max);
    memcpy(out, test_work_due, test_work_due_count * sizeof *out);
    size_t n = test_work_due_count;
    test_work_due_count = 0;
    return n;
}

static bool test_work_admits(void *self, int64_t now_ms)
{
    (void)self, (void)now_ms;
    return !test_work_open;
}

struct test_work_fixture {
    struct queue queue;
    struct pay_provider provider;
    int charges;
    struct work *w;
};

static int test_work_setup(void **state)
{
    struct test_work_fixture *f = calloc(1, sizeof *f);
    if (f == NULL || queue_init(&f->queue, 64) != 0) {
        return -1;
    }
    f->provider = (struct pay_provider){.name = "test",
                                        .self = &f->charges,
                                        .charge = test_work_charge,
                                        .poll = test_work_poll,
                                        .admits = test_work_admits};
    test_work_now_ms = 1000;
    test_work_open = false;
    test_work_due_count = 0;
    struct work_config config = {"unused", &f->queue,         &f->provider, NULL,
                                 NULL,     test_work_wall_ms, "test",       0};
    f->w = work_new(&config);
    *state = f;
    if (f->w == NULL) {
        return -1;
    }
    /* Both stages held, as on SQLite from the first tick (the lease itself: test_store_pg). */
    for (int s = CMD_STAGE_ORDER; s <= CMD_STAGE_PAYMENT; s++) {
        f->w->leases[s].held = true;
        f->w->leases[s].token = 1;
    }
    return 0;
}

static int test_work_teardown(void **state)
{
    struct test_work_fixture *f = *state;
    queue_deinit(&f->queue);
    work_free(f->w);
    free(f);
    return 0;
}

/* The next command the workers pushed to the writer. */
static struct command *test_work_take(struct test_work_fixture *f)
{
    void *item = NULL;
    ASSERT_EQ_UINT(queue_pop_batch(&f->queue, &item, 1), 1);
    return item;
}

/* Answers cmd as the writer would, and lets the workers read the reply. */
static void test_work_answer(struct test_work_fixture *f, struct command *cmd, int status)
{
    cmd->reply_status = status;
    work_writer_reply(cmd);
    (void)work_drain_replies(f->w);
}

/* Events 10 and 11 read by the order stage: two confirm steps. */
static void test_work_two_steps(struct test_work_fixture *f, struct command **first,
                                struct command **second)
{
    f->w->order_pos = 9;
    f->w->payment_pos = 9;
    work_step(f->w, 10, 10, CMD_STEP_CONFIRM, CMD_STAGE_ORDER, 10, NULL, 0);
    f->w->order_pos = 10;
    work_step(f->w, 11, 11, CMD_STEP_CONFIRM, CMD_STAGE_ORDER, 11, NULL, 0);
    f->w->order_pos = 11;
    *first = test_work_take(f);
    *second = test_work_take(f);
    ASSERT_EQ_INT((*first)->order_seq, 10);
    ASSERT_EQ_INT((*second)->order_seq, 11);
}

/* A later step that committed while an earlier one failed never carries an offset past it. */
static void test_work_failed_step_holds_the_offset(void **state)
{
    struct test_work_fixture *f = *state;
    struct command *first = NULL;
    struct command *second = NULL;
    test_work_two_steps(f, &first, &second);
    ASSERT_LT_INT(first->stage_seq, 10);
    ASSERT_LT_INT(second->stage_seq, 10); /* stored with 11's effect: must not pass 10 */
    test_work_answer(f, first, 503);      /* 10's batch failed: pushed again */
    test_work_answer(f, second, 200);     /* 11's committed */
    ASSERT_EQ_INT(work_mark_low(f->w, CMD_STAGE_ORDER), 9);
    struct command *again = test_work_take(f);
    ASSERT_EQ_INT(again->order_seq, 10);
    ASSERT_LT_INT(again->stage_seq, 10); /* a crash now reads event 10 again */
    /* A step of the next event meanwhile carries the same low mark. */
    work_step(f->w, 12, 12, CMD_STEP_CONFIRM, CMD_STAGE_ORDER, 12, NULL, 0);
    f->w->order_pos = 12;
    struct command *third = test_work_take(f);
    ASSERT_LT_INT(third->stage_seq, 10);
    test_work_answer(f, again, 200);
    ASSERT_EQ_INT(work_mark_low(f->w, CMD_STAGE_ORDER), 11); /* 12 is still out */
    test_work_answer(f, third, 409);                         /* stale, but answered */
    ASSERT_EQ_INT(work_mark_low(f->w, CMD_STAGE_ORDER), 12);
}

/* In order, each answer moves the mark; the stages keep their own marks. */
static void test_work_marks_in_order(void **state)
{
    struct test_work_fixture *f = *state;
    struct command *first = NULL;
    struct command *second = NULL;
    test_work_two_steps(f, &first, &second);
    ASSERT_EQ_INT(work_mark_low(f->w, CMD_STAGE_PAYMENT), 9);
    test_work_answer(f, first, 200);
    ASSERT_EQ_INT(work_mark_low(f->w, CMD_STAGE_ORDER), 10);
    test_work_answer(f, second, 200);
    ASSERT_EQ_INT(work_mark_low(f->w, CMD_STAGE_ORDER), 11);
    /* A step that answers no event (a charge's result) carries the mark and adds none. */
    work_step(f->w, 11, 11, CMD_STEP_PAID, CMD_STAGE_PAYMENT, 0, "ref", 1);
    struct command *paid = test_work_take(f);
    ASSERT_EQ_INT(paid->stage_seq, 9);
    ASSERT_EQ_UINT(f->w->marks[CMD_STAGE_PAYMENT].count, 0);
    test_work_answer(f, paid, 200);
    ASSERT_EQ_UINT(f->w->free_count, WORK_COMMANDS_MAX);
}

/* At start, a charge in doubt is asked again with its stored attempts, unless those reached
 * the most: such an order is a dead letter, written now if its row is not stored yet. */
static void test_work_resume_keeps_parked(void **state)
{
    struct test_work_fixture *f = *state;
    struct store_payment_row in_doubt = {.order_seq = 5, .reservation_seq = 5, .pay_attempts = 3};
    ASSERT_EQ_INT(work_resume_one(f->w, &in_doubt), 0);
    ASSERT_EQ_INT(f->charges, 1);
    ASSERT_EQ_UINT(f->w->item_free_count, WORK_PAY_ITEMS_MAX - 1);
    struct store_payment_row parked = {
        .order_seq = 6, .reservation_seq = 6, .pay_attempts = WORK_PAY_ATTEMPTS_MAX};
    ASSERT_EQ_INT(work_resume_one(f->w, &parked), 0);
    ASSERT_EQ_INT(f->charges, 1); /* not asked again */
    ASSERT_EQ_UINT(f->w->item_free_count, WORK_PAY_ITEMS_MAX - 1);
    ASSERT_EQ_UINT(atomic_load(&f->w->stats.parked), 1);
    /* Its dead letter was not written before the stop: it is written now. */
    struct command *step = test_work_take(f);
    ASSERT_EQ_INT(step->order_step, CMD_STEP_DEAD_LETTER);
    ASSERT_EQ_INT(step->order_seq, 6);
    test_work_answer(f, step, 200);
    ASSERT_EQ_INT(atomic_load(&f->w->stats.dead_letters), 1);
    /* One whose dead letter is stored is only counted. */
    struct store_payment_row dead = {.order_seq = 7,
                                     .reservation_seq = 7,
                                     .pay_attempts = WORK_PAY_ATTEMPTS_MAX,
                                     .dead_lettered = true};
    ASSERT_EQ_INT(work_resume_one(f->w, &dead), 0);
    ASSERT_EQ_INT(f->charges, 1);
    ASSERT_EQ_INT(atomic_load(&f->w->stats.dead_letters), 2);
    ASSERT_EQ_UINT(f->w->free_count, WORK_COMMANDS_MAX);
}

/* The provider reports outcome for the charge of item index; the workers poll it. */
static void test_work_result(struct test_work_fixture *f, uint32_t index, enum pay_outcome outcome)
{
    test_work_due[0] = (struct pay_result){index, outcome, "ref"};
    test_work_due_count = 1;
    ASSERT_TRUE(work_poll_payments(f->w));
}

/* While the circuit is open no attempt is spent: a refused charge is held and asked again
 * without a PAY_RETRY once the breaker admits it, no retry is stored, and a timeout while it
 * is open is held too instead of dead-lettered, even at the last attempt. */
static void test_work_open_circuit_spends_no_attempt(void **state)
{
    struct test_work_fixture *f = *state;
    uint32_t last = work_item_take(f->w, 5, 5, WORK_PAY_ATTEMPTS_MAX);
    test_work_open = true;
    work_charge(f->w, last);
    ASSERT_EQ_INT(f->charges, 0);
    ASSERT_TRUE(f->w->items[last].held);
    test_work_now_ms += 10000;
    work_retry_due(f->w);
    ASSERT_EQ_UINT(queue_depth(&f->queue), 0); /* no PAY_RETRY while open */
    ASSERT_TRUE(f->w->items[last].held);
    test_work_open = false;
    work_retry_due(f->w);
    ASSERT_EQ_INT(f->charges, 1); /* asked again with the attempt it had */
    ASSERT_EQ_UINT(queue_depth(&f->queue), 0);
    ASSERT_FALSE(f->w->items[last].held);
    ASSERT_EQ_UINT(f->w->retry_waiting, 0);
    test_work_open = true; /* this timeout opened the circuit (or a probe failed) */
    test_work_result(f, last, PAY_TIMEOUT);
    ASSERT_EQ_UINT(queue_depth(&f->queue), 0); /* no dead letter */
    ASSERT_EQ_UINT(atomic_load(&f->w->stats.parked), 0);
    ASSERT_TRUE(f->w->items[last].held);
    /* Another order's charge times out while the circuit is closed: it waits for its backoff,
     * and its retry, due while the circuit is open, is not stored until it closes. */
    test_work_open = false;
    uint32_t other = work_item_take(f->w, 6, 6, 1);
    work_charge(f->w, other);
    ASSERT_EQ_INT(f->charges, 2);
    test_work_result(f, other, PAY_TIMEOUT);
    ASSERT_FALSE(f->w->items[other].held);
    ASSERT_EQ_UINT(f->w->retry_waiting, 2);
    test_work_open = true;
    test_work_now_ms += 10000;
    work_retry_due(f->w);
    ASSERT_EQ_UINT(queue_depth(&f->queue), 0);
    ASSERT_EQ_UINT(f->w->retry_waiting, 2);
    test_work_open = false;
    work_retry_due(f->w);
    ASSERT_EQ_INT(f->charges, 3); /* the held one: charged at once */
    struct command *retry = test_work_take(f);
    ASSERT_EQ_INT(retry->order_step, CMD_STEP_PAY_RETRY);
    ASSERT_EQ_INT(retry->order_seq, 6);
    ASSERT_EQ_UINT(queue_depth(&f->queue), 0);
    /* With the circuit closed, the last attempt's timeout is a dead letter as before. */
    test_work_result(f, last, PAY_TIMEOUT);
    struct command *dead = test_work_take(f);
    ASSERT_EQ_INT(dead->order_step, CMD_STEP_DEAD_LETTER);
    ASSERT_EQ_INT(dead->order_seq, 5);
    ASSERT_EQ_UINT(atomic_load(&f->w->stats.parked), 1);
}

/* A stage that lost its lease stops at once: its marks and its retries waiting go, the reply
 * of a step it sent before is dropped (no mark, no count), and so is the result of a charge it
 * started under the old token, after the lease was won again with a new one. */
static void test_work_lost_lease_drops_the_old_tenure(void **state)
{
    struct test_work_fixture *f = *state;
    struct work *w = f->w;
    w->order_pos = 9;
    work_step(w, 10, 10, CMD_STEP_CONFIRM, CMD_STAGE_ORDER, 10, NULL, 0);
    struct command *step = test_work_take(f);
    ASSERT_EQ_INT(step->lease_token, 1);
    struct store_payment_row flying = {.order_seq = 5, .reservation_seq = 5, .pay_attempts = 1};
    ASSERT_EQ_INT(work_resume_one(w, &flying), 0);
    uint64_t flying_token = test_work_last_token;
    struct store_payment_row waiting = {.order_seq = 6, .reservation_seq = 6, .pay_attempts = 1};
    ASSERT_EQ_INT(work_resume_one(w, &waiting), 0);
    w->items[test_work_last_token].retry_at_ms = 5000; /* its retry is due later */
    w->retry_waiting++;
    ASSERT_EQ_UINT(w->item_free_count, WORK_PAY_ITEMS_MAX - 2);
    for (int s = CMD_STAGE_ORDER; s <= CMD_STAGE_PAYMENT; s++) {
        w->leases[s].held = false; /* as work_lease_tick reports WORK_LEASE_LOST */
        work_stage_drop(w, (enum cmd_stage)s);
    }
    ASSERT_EQ_UINT(w->marks[CMD_STAGE_ORDER].count, 0);
    ASSERT_EQ_UINT(w->retry_waiting, 0);
    ASSERT_EQ_UINT(w->item_free_count, WORK_PAY_ITEMS_MAX - 1); /* the one at the provider */
    test_work_answer(f, step, 200);
    ASSERT_EQ_UINT(atomic_load(&w->stats.confirmed), 0);
    ASSERT_EQ_UINT(w->marks[CMD_STAGE_ORDER].count, 0);
    ASSERT_EQ_UINT(w->free_count, WORK_COMMANDS_MAX);
    /* Won again: a new token. The old charge's result is heard, and dropped. */
    w->leases[CMD_STAGE_PAYMENT].held = true;
    w->leases[CMD_STAGE_PAYMENT].token = 2;
    test_work_due[0] = (struct pay_result){flying_token, PAY_OK, "ref"};
    test_work_due_count = 1;
    ASSERT_TRUE(work_poll_payments(w));
    ASSERT_EQ_UINT(w->item_free_count, WORK_PAY_ITEMS_MAX);
    ASSERT_EQ_UINT(w->free_count, WORK_COMMANDS_MAX); /* no PAID step was sent */
    ASSERT_EQ_UINT(queue_depth(&f->queue), 0);
}

int main(void)
{
#define WORK_TEST(f) cmocka_unit_test_setup_teardown(f, test_work_setup, test_work_teardown)
    const struct CMUnitTest tests[] = {
        WORK_TEST(test_work_failed_step_holds_the_offset),
        WORK_TEST(test_work_marks_in_order),
        WORK_TEST(test_work_resume_keeps_parked),
        WORK_TEST(test_work_open_circuit_spends_no_attempt),
        WORK_TEST(test_work_lost_lease_drops_the_old_tenure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
