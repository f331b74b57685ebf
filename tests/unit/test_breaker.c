/*
 * test_breaker.c - the circuit breaker's state machine (pay_breaker.c, included), driven through
 * its pay_provider functions with a fake clock (the now_ms every call takes) around a fake
 * provider whose outcomes the tests script. It opens on a run of timeouts and on a failure
 * ratio over its sliding window (not before the window has its samples, and not on declines),
 * refuses charges while open, lets a few probes through after the cool-down, closes on a
 * probe's success and re-opens on its timeout with a doubled cool-down up to the cap. Read
 * test_work.c next.
 */
#include <inttypes.h>

#include "test_helpers.h"

#include "../../src/pay/pay_breaker.c"

#define TEST_BREAKER_RESULTS_MAX 64

struct test_breaker_fake {
    int charges;                                         /* charges that reached the provider */
    bool full;                                           /* the provider answers SVC_ECAPACITY */
    uint64_t last;                                       /* the last charge's token */
    struct pay_result results[TEST_BREAKER_RESULTS_MAX]; /* due at the next poll */
    size_t result_count;
};

struct test_breaker_fixture {
    struct test_breaker_fake fake;
    struct pay_provider inner;
    struct pay_breaker *b;
    const struct pay_provider *p; /* the breaker's */
};

static int test_breaker_fake_charge(void *self, const char *key, uint64_t token, int64_t now_ms)
{
    struct test_breaker_fake *fake = self;
    (void)now_ms;
    SVC_ASSERT(key != NULL && key[0] != '\0');
    if (fake->full) {
        return SVC_ECAPACITY;
    }
    fake->charges++;
    fake->last = token;
    return 0;
}

static size_t test_breaker_fake_poll(void *self, int64_t now_ms, struct pay_result *out, size_t max)
{
    struct test_breaker_fake *fake = self;
    (void)now_ms;
    SVC_ASSERT(fake->result_count <= max);
    memcpy(out, fake->results, fake->result_count * sizeof *out);
    size_t n = fake->result_count;
    fake->result_count = 0;
    return n;
}

static int test_breaker_setup(void **state)
{
    struct test_breaker_fixture *f = calloc(1, sizeof *f);
    if (f == NULL) {
        return -1;
    }
    f->inner = (struct pay_provider){.name = "fake",
                                     .self = &f->fake,
                                     .charge = test_breaker_fake_charge,
                                     .poll = test_breaker_fake_poll};
    f->b = pay_breaker_new(&f->inner);
    if (f->b == NULL) {
        return -1;
    }
    f->p = pay_breaker_provider(f->b);
    *state = f;
    return 0;
}

static int test_breaker_teardown(void **state)
{
    struct test_breaker_fixture *f = *state;
    pay_breaker_free(f->b);
    free(f);
    return 0;
}

/* Charges key "ord_<token>" through the breaker at now_ms: its return. */
static int test_breaker_charge(struct test_breaker_fixture *f, uint64_t token, int64_t now_ms)
{
    char key[PAY_KEY_BYTES_MAX + 1];
    snprintf(key, sizeof key, "ord_%" PRIu64, token);
    return f->p->charge(f->p->self, key, token, now_ms);
}

/* The provider reports outcome for token; the breaker polls it at now_ms. */
static void test_breaker_outcome(struct test_breaker_fixture *f, uint64_t token,
                                 enum pay_outcome outcome, int64_t now_ms)
{
    SVC_ASSERT(f->fake.result_count == 0);
    f->fake.results[0] = (struct pay_result){token, outcome, {0}};
    f->fake.result_count = 1;
    struct pay_result out[TEST_BREAKER_RESULTS_MAX];
    ASSERT_EQ_UINT(f->p->poll(f->p->self, now_ms, out, TEST_BREAKER_RESULTS_MAX), 1);
    ASSERT_EQ_UINT(out[0].token, token);
    ASSERT_EQ_INT(out[0].outcome, outcome);
}

/* count outcomes of one kind at now_ms. */
static void test_breaker_outcomes(struct test_breaker_fixture *f, int count,
                                  enum pay_outcome outcome, int64_t now_ms)
{
    for (int i = 0; i < count; i++) {
        test_breaker_outcome(f, 1, outcome, now_ms);
    }
}

static int test_breaker_state(const struct test_breaker_fixture *f)
{
    int state = atomic_load(&pay_breaker_stats(f->b)->state);
    ASSERT_EQ_INT(state, (int)f->b->state); /* the published state is the state */
    return state;
}

/* A run of PAY_BREAKER_FAILURES_MAX timeouts opens it; a decline breaks the run. The window
 * holds enough successes that its ratio stays below the mark, so only the run decides. */
static void test_breaker_consecutive_timeouts_open(void **state)
{
    struct test_breaker_fixture *f = *state;
    test_breaker_outcomes(f, 20, PAY_OK, 0);
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX - 1, PAY_TIMEOUT, 0);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures), PAY_BREAKER_FAILURES_MAX - 1);
    test_breaker_outcome(f, 1, PAY_DECLINED, 0); /* a business outcome: the provider answers */
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures), 0);
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX - 1, PAY_TIMEOUT, 0);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
    ASSERT_FALSE(pay_breaker_window_tripped(f->b)); /* 18 of 39 */
    ASSERT_TRUE(f->p->admits(f->p->self, 0));
    test_breaker_outcome(f, 1, PAY_TIMEOUT, 0);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.opens), 1);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures), PAY_BREAKER_FAILURES_MAX);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.timeouts), 2 * PAY_BREAKER_FAILURES_MAX - 1);
    ASSERT_FALSE(f->p->admits(f->p->self, 0));
}

/* Declines never open it, however many. */
static void test_breaker_declines_are_successes(void **state)
{
    struct test_breaker_fixture *f = *state;
    test_breaker_outcomes(f, 3 * PAY_BREAKER_WINDOW, PAY_DECLINED, 0);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
    ASSERT_EQ_UINT(f->b->window_failures, 0);
    ASSERT_EQ_UINT(f->b->window_count, PAY_BREAKER_WINDOW);
}

/* The ratio opens it without a long run, but not before the window has its samples. */
static void test_breaker_ratio_opens_after_min_samples(void **state)
{
    struct test_breaker_fixture *f = *state;
    /* T, T, OK six times: 12 of 18 are timeouts, never more than two in a row. */
    for (int i = 0; i < 6; i++) {
        test_breaker_outcomes(f, 2, PAY_TIMEOUT, 0);
        test_breaker_outcome(f, 1, PAY_OK, 0);
    }
    test_breaker_outcome(f, 1, PAY_TIMEOUT, 0); /* 13 of 19: too few samples yet */
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
    ASSERT_EQ_UINT(f->b->window_count, PAY_BREAKER_WINDOW_SAMPLES_MIN - 1);
    test_breaker_outcome(f, 1, PAY_TIMEOUT, 0); /* 14 of 20 */
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures), 2);
}

/* The window slides: old successes leave it, so a provider that gets worse opens it once the
 * last PAY_BREAKER_WINDOW outcomes are half timeouts (not half of all outcomes ever). */
static void test_breaker_window_slides(void **state)
{
    struct test_breaker_fixture *f = *state;
    test_breaker_outcomes(f, 60, PAY_OK, 0);
    /* Then T, T, T, OK: after p of them, the window is the last 100 - p successes and p of
     * these, and its timeouts reach 50 at p = 66 (16 rounds and two more). */
    for (int p = 0; p < 66; p++) {
        ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
        test_breaker_outcome(f, 1, p % 4 == 3 ? PAY_OK : PAY_TIMEOUT, 0);
    }
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
    ASSERT_EQ_UINT(f->b->window_count, PAY_BREAKER_WINDOW);
    ASSERT_EQ_UINT(f->b->window_failures, 50);
}

/* Old timeouts leave the window too: a third of timeouts, for long, never opens it. */
static void test_breaker_old_timeouts_leave(void **state)
{
    struct test_breaker_fixture *f = *state;
    for (int i = 0; i < 3 * PAY_BREAKER_WINDOW; i++) {
        test_breaker_outcome(f, 1, i % 3 == 0 ? PAY_TIMEOUT : PAY_OK, 0);
    }
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
    ASSERT_EQ_UINT(f->b->window_count, PAY_BREAKER_WINDOW);
    ASSERT_EQ_UINT(f->b->window_failures, 33); /* 201, 204 ... 297 */
}

/* Open: every charge is refused without reaching the provider; after the cool-down a few
 * probes go, the next is refused; a probe's success closes it with fresh counters. */
static void test_breaker_open_refuses_then_probe_closes(void **state)
{
    struct test_breaker_fixture *f = *state;
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX, PAY_TIMEOUT, 1000);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
    for (int64_t t = 1000; t < 1000 + PAY_BREAKER_COOLDOWN_MS; t += 100) {
        ASSERT_FALSE(f->p->admits(f->p->self, t));
        ASSERT_ERR(test_breaker_charge(f, 7, t), SVC_ECAPACITY);
    }
    ASSERT_EQ_INT(f->fake.charges, 0); /* nothing reached the provider */
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.refused), PAY_BREAKER_COOLDOWN_MS / 100);
    int64_t t = 1000 + PAY_BREAKER_COOLDOWN_MS;
    ASSERT_TRUE(f->p->admits(f->p->self, t));
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_HALF_OPEN);
    for (uint64_t token = 1; token <= PAY_BREAKER_PROBES_MAX; token++) {
        ASSERT_OK(test_breaker_charge(f, token, t));
    }
    ASSERT_FALSE(f->p->admits(f->p->self, t));
    ASSERT_ERR(test_breaker_charge(f, 99, t), SVC_ECAPACITY);
    ASSERT_EQ_INT(f->fake.charges, PAY_BREAKER_PROBES_MAX);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.probes), PAY_BREAKER_PROBES_MAX);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.charges), PAY_BREAKER_PROBES_MAX);
    test_breaker_outcome(f, 2, PAY_DECLINED, t + 5); /* an answer: the provider is back */
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures), 0);
    ASSERT_EQ_UINT(f->b->window_count, 0);
    ASSERT_TRUE(f->p->admits(f->p->self, t + 5));
    /* The other probes' outcomes count as any closed outcome. */
    test_breaker_outcome(f, 1, PAY_TIMEOUT, t + 6);
    test_breaker_outcome(f, 3, PAY_OK, t + 6);
    ASSERT_EQ_UINT(f->b->window_count, 2);
    ASSERT_EQ_UINT(f->b->window_failures, 1);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
}

/* A failed probe re-opens it for twice the cool-down, up to the cap; once closed, the next
 * opening waits the first cool-down again. */
static void test_breaker_failed_probes_double_the_cooldown(void **state)
{
    struct test_breaker_fixture *f = *state;
    int64_t t = 0;
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX, PAY_TIMEOUT, t);
    int64_t cooldown = PAY_BREAKER_COOLDOWN_MS;
    int64_t want[] = {1000, 2000, 4000, 5000, 5000};
    _Static_assert(PAY_BREAKER_COOLDOWN_MS == 1000 && PAY_BREAKER_COOLDOWN_CAP_MS == 5000,
                   "the table above follows the limits");
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ASSERT_EQ_INT(cooldown, want[i]);
        ASSERT_FALSE(f->p->admits(f->p->self, t + cooldown - 1));
        t += cooldown;
        ASSERT_TRUE(f->p->admits(f->p->self, t));
        ASSERT_OK(test_breaker_charge(f, 40 + i, t));
        test_breaker_outcome(f, 40 + i, PAY_TIMEOUT, t + 10);
        t += 10;
        ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
        cooldown = f->b->cooldown_ms;
        ASSERT_EQ_INT(f->b->open_until_ms, t + cooldown);
    }
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.opens), 1 + sizeof want / sizeof want[0]);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures),
                   PAY_BREAKER_FAILURES_MAX + sizeof want / sizeof want[0]);
    t += cooldown;
    ASSERT_OK(test_breaker_charge(f, 50, t));
    test_breaker_outcome(f, 50, PAY_OK, t);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_CLOSED);
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX, PAY_TIMEOUT, t);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
    ASSERT_EQ_INT(f->b->open_until_ms, t + PAY_BREAKER_COOLDOWN_MS);
}

/* Outcomes of charges started before the circuit opened say nothing of the provider now:
 * ignored while open, and while half-open unless they are a probe's. */
static void test_breaker_late_outcomes_are_ignored(void **state)
{
    struct test_breaker_fixture *f = *state;
    ASSERT_OK(test_breaker_charge(f, 77, 0)); /* in flight when it opens */
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX, PAY_TIMEOUT, 0);
    test_breaker_outcome(f, 77, PAY_OK, 10);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
    ASSERT_TRUE(f->p->admits(f->p->self, PAY_BREAKER_COOLDOWN_MS));
    ASSERT_OK(test_breaker_charge(f, 5, PAY_BREAKER_COOLDOWN_MS));
    test_breaker_outcome(f, 77, PAY_OK, PAY_BREAKER_COOLDOWN_MS + 1);      /* not a probe */
    test_breaker_outcome(f, 78, PAY_TIMEOUT, PAY_BREAKER_COOLDOWN_MS + 1); /* nor this */
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_HALF_OPEN);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.consecutive_failures), PAY_BREAKER_FAILURES_MAX);
    test_breaker_outcome(f, 5, PAY_TIMEOUT, PAY_BREAKER_COOLDOWN_MS + 2);
    ASSERT_EQ_INT(test_breaker_state(f), PAY_BREAKER_OPEN);
}

/* A full provider refuses a probe itself: no probe is counted, its slot stays free. */
static void test_breaker_full_provider_takes_no_probe(void **state)
{
    struct test_breaker_fixture *f = *state;
    test_breaker_outcomes(f, PAY_BREAKER_FAILURES_MAX, PAY_TIMEOUT, 0);
    f->fake.full = true;
    for (int i = 0; i < 2 * PAY_BREAKER_PROBES_MAX; i++) {
        ASSERT_ERR(test_breaker_charge(f, 9, PAY_BREAKER_COOLDOWN_MS), SVC_ECAPACITY);
    }
    ASSERT_EQ_UINT(f->b->probe_count, 0);
    ASSERT_EQ_UINT(atomic_load(&f->b->stats.refused), 0); /* the provider's refusal, not ours */
    f->fake.full = false;
    ASSERT_TRUE(f->p->admits(f->p->self, PAY_BREAKER_COOLDOWN_MS));
    ASSERT_OK(test_breaker_charge(f, 9, PAY_BREAKER_COOLDOWN_MS));
    ASSERT_EQ_UINT(f->fake.last, 9);
    ASSERT_EQ_UINT(f->b->probe_count, 1);
    ASSERT_EQ_STR(f->p->name, "fake");
    ASSERT_EQ_STR(pay_breaker_state_name(PAY_BREAKER_HALF_OPEN), "half_open");
}

int main(void)
{
#define BREAKER_TEST(f) \
    cmocka_unit_test_setup_teardown(f, test_breaker_setup, test_breaker_teardown)
    const struct CMUnitTest tests[] = {
        BREAKER_TEST(test_breaker_consecutive_timeouts_open),
        BREAKER_TEST(test_breaker_declines_are_successes),
        BREAKER_TEST(test_breaker_ratio_opens_after_min_samples),
        BREAKER_TEST(test_breaker_window_slides),
        BREAKER_TEST(test_breaker_old_timeouts_leave),
        BREAKER_TEST(test_breaker_open_refuses_then_probe_closes),
        BREAKER_TEST(test_breaker_failed_probes_double_the_cooldown),
        BREAKER_TEST(test_breaker_late_outcomes_are_ignored),
        BREAKER_TEST(test_breaker_full_provider_takes_no_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
