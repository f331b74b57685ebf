/*
 * pay_breaker.c - the circuit breaker of pay_breaker.h: the state, a ring of the last outcomes
 * (the sliding window) and the tokens of the probes in flight, behind the pay_provider
 * functions charge, poll and admits. Not thread-safe but for its stats (atomics).
 */
#include "pay/pay_breaker.h"

#include <stdlib.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"

struct pay_breaker {
    struct pay_provider provider;     /* the wrapper: inner's name, this file's functions */
    const struct pay_provider *inner; /* borrowed */
    enum pay_breaker_state state;
    int64_t open_until_ms;                   /* OPEN: when HALF-OPEN may begin */
    int64_t cooldown_ms;                     /* the cool-down of the last opening */
    uint32_t consecutive;                    /* timeouts in a row */
    bool window[PAY_BREAKER_WINDOW];         /* CLOSED: the last outcomes, true for a timeout */
    uint32_t window_head;                    /* the oldest outcome */
    uint32_t window_count;                   /* <= PAY_BREAKER_WINDOW */
    uint32_t window_failures;                /* timeouts among them */
    uint64_t probes[PAY_BREAKER_PROBES_MAX]; /* HALF-OPEN: the probes' tokens */
    uint32_t probe_count;                    /* probes let through this HALF-OPEN round */
    struct pay_breaker_stats stats;
};

const char *pay_breaker_state_name(enum pay_breaker_state state)
{
    switch (state) {
    case PAY_BREAKER_CLOSED: return "closed";
    case PAY_BREAKER_HALF_OPEN: return "half_open";
    case PAY_BREAKER_OPEN: return "open";
    }
    SVC_UNREACHABLE();
}

static void pay_breaker_set_state(struct pay_breaker *b, enum pay_breaker_state state)
{
    if (b->state != state) {
        log_warn("payment provider %s: circuit %s -> %s", b->inner->name,
                 pay_breaker_state_name(b->state), pay_breaker_state_name(state));
    }
    b->state = state;
    b->probe_count = 0;
    atomic_store(&b->stats.state, (int)state);
}

static void pay_breaker_open(struct pay_breaker *b, int64_t now_ms, int64_t cooldown_ms)
{
    SVC_ASSERT(b->state != PAY_BREAKER_OPEN);
    SVC_ASSERT(cooldown_ms >= PAY_BREAKER_COOLDOWN_MS &&
               cooldown_ms <= PAY_BREAKER_COOLDOWN_CAP_MS);
    b->cooldown_ms = cooldown_ms;
    b->open_until_ms = now_ms + cooldown_ms;
    atomic_fetch_add(&b->stats.opens, 1);
    pay_breaker_set_state(b, PAY_BREAKER_OPEN);
}

/* A probe succeeded: closed, with fresh counters and the first cool-down for next time. */
static void pay_breaker_close(struct pay_breaker *b)
{
    SVC_ASSERT(b->state == PAY_BREAKER_HALF_OPEN);
    b->consecutive = 0;
    b->window_head = 0;
    b->window_count = 0;
    b->window_failures = 0;
    b->cooldown_ms = PAY_BREAKER_COOLDOWN_MS;
    atomic_store(&b->stats.consecutive_failures, 0);
    pay_breaker_set_state(b, PAY_BREAKER_CLOSED);
}

/* OPEN becomes HALF-OPEN once its cool-down has passed. */
static void pay_breaker_tick(struct pay_breaker *b, int64_t now_ms)
{
    if (b->state == PAY_BREAKER_OPEN && now_ms >= b->open_until_ms) {
        pay_breaker_set_state(b, PAY_BREAKER_HALF_OPEN);
    }
}

static bool pay_breaker_admits(void *self, int64_t now_ms)
{
    struct pay_breaker *b = self;
    pay_breaker_tick(b, now_ms);
    switch (b->state) {
    case PAY_BREAKER_CLOSED: return true;
    case PAY_BREAKER_HALF_OPEN: return b->probe_count < PAY_BREAKER_PROBES_MAX;
    case PAY_BREAKER_OPEN: return false;
    }
    SVC_UNREACHABLE();
}

static int pay_breaker_charge(void *self, const char *key, uint64_t token, int64_t now_ms)
{
    struct pay_breaker *b = self;
    if (!pay_breaker_admits(b, now_ms)) {
        atomic_fetch_add(&b->stats.refused, 1);
        return SVC_ECAPACITY; /* nothing asked: the caller keeps the charge for later */
    }
    int rc = b->inner->charge(b->inner->self, key, token, now_ms);
    if (rc != 0) {
        return rc; /* the provider is full: no charge, no probe */
    }
    atomic_fetch_add(&b->stats.charges, 1);
    if (b->state == PAY_BREAKER_HALF_OPEN) {
        SVC_ASSERT(b->probe_count < PAY_BREAKER_PROBES_MAX);
        b->probes[b->probe_count++] = token;
        atomic_fetch_add(&b->stats.probes, 1);
    }
    return 0;
}

/* CLOSED: one more outcome in the window (the oldest one leaves when it is full). */
static void pay_breaker_window_add(struct pay_breaker *b, bool failure)
{
    SVC_ASSERT(b->window_count <= PAY_BREAKER_WINDOW);
    SVC_ASSERT(b->window_failures <= b->window_count);
    if (b->window_count == PAY_BREAKER_WINDOW) {
        b->window_failures -= b->window[b->window_head] ? 1 : 0;
        b->window_head = (b->window_head + 1) % PAY_BREAKER_WINDOW;
        b->window_count--;
    }
    b->window[(b->window_head + b->window_count) % PAY_BREAKER_WINDOW] = failure;
    b->window_count++;
    b->window_failures += failure ? 1 : 0;
}

static bool pay_breaker_window_tripped(const struct pay_breaker *b)
{
    return b->window_count >= PAY_BREAKER_WINDOW_SAMPLES_MIN &&
           (uint64_t)b->window_failures * 100 >=
               (uint64_t)b->window_count * PAY_BREAKER_WINDOW_FAILURE_PCT;
}

static bool pay_breaker_is_probe(const struct pay_breaker *b, uint64_t token)
{
    for (uint32_t i = 0; i < b->probe_count; i++) {
        if (b->probes[i] == token) {
            return true;
        }
    }
    return false;
}

/* Feeds one outcome of the provider to the state machine. */
static void pay_breaker_record(struct pay_breaker *b, uint64_t token, enum pay_outcome outcome,
                               int64_t now_ms)
{
    bool failure = outcome == PAY_TIMEOUT; /* a decline is an answer: a success here */
    if (b->state == PAY_BREAKER_OPEN ||
        (b->state == PAY_BREAKER_HALF_OPEN && !pay_breaker_is_probe(b, token))) {
        return; /* started before the circuit opened: says nothing about the provider now */
    }
    b->consecutive = failure ? b->consecutive + 1 : 0;
    atomic_store(&b->stats.consecutive_failures, b->consecutive);
    if (b->state == PAY_BREAKER_HALF_OPEN) {
        if (failure) {
            int64_t doubled = b->cooldown_ms * 2;
            pay_breaker_open(b, now_ms,
                             doubled < PAY_BREAKER_COOLDOWN_CAP_MS ? doubled
                                                                   : PAY_BREAKER_COOLDOWN_CAP_MS);
        } else {
            pay_breaker_close(b);
        }
        return;
    }
    SVC_ASSERT(b->state == PAY_BREAKER_CLOSED);
    pay_breaker_window_add(b, failure);
    if (failure && (b->consecutive >= PAY_BREAKER_FAILURES_MAX || pay_breaker_window_tripped(b))) {
        pay_breaker_open(b, now_ms, PAY_BREAKER_COOLDOWN_MS);
    }
}

static size_t pay_breaker_poll(void *self, int64_t now_ms, struct pay_result *out, size_t max)
{
    struct pay_breaker *b = self;
    size_t n = b->inner->poll(b->inner->self, now_ms, out, max);
    SVC_ASSERT(n <= max);
    for (size_t i = 0; i < n; i++) {
        atomic_fetch_add(&b->stats.timeouts, out[i].outcome == PAY_TIMEOUT ? 1 : 0);
        pay_breaker_record(b, out[i].token, out[i].outcome, now_ms);
    }
    return n;
}

struct pay_breaker *pay_breaker_new(const struct pay_provider *inner)
{
    SVC_ASSERT(inner != NULL && inner->charge != NULL && inner->poll != NULL);
    SVC_ASSERT(inner->admits == NULL); /* one breaker: a second one would only hide the first */
    struct pay_breaker *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return NULL;
    }
    b->inner = inner;
    b->state = PAY_BREAKER_CLOSED;
    b->cooldown_ms = PAY_BREAKER_COOLDOWN_MS;
    b->provider = (struct pay_provider){inner->name, b, pay_breaker_charge, pay_breaker_poll,
                                        pay_breaker_admits};
    atomic_store(&b->stats.state, PAY_BREAKER_CLOSED);
    return b;
}

void pay_breaker_free(struct pay_breaker *b)
{
    free(b);
}

const struct pay_provider *pay_breaker_provider(struct pay_breaker *b)
{
    SVC_ASSERT(b != NULL && b->provider.self == b);
    return &b->provider;
}

const struct pay_breaker_stats *pay_breaker_stats(const struct pay_breaker *b)
{
    SVC_ASSERT(b != NULL);
    return &b->stats;
}
