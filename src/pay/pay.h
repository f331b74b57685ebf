/*
 * pay.h - the payment provider interface (issue 11): a struct of function pointers the
 * payment worker (work/work.h) calls. Two implementations: the built-in in-process simulator
 * (pay_sim.c, the default) and the HTTP provider (pay_http.c, --payment-url), which charges a
 * Stripe-like service such as the standalone simulator stockd-paysim (paysim/paysim.c).
 *
 * A charge is asynchronous: pay_provider.charge starts it and returns at once; its result
 * comes out of pay_provider.poll when it is due, so that one worker keeps many charges in
 * flight and the provider's latency does not cut the order rate. Every charge carries an
 * idempotency key (the orderId): the provider charges a key at most once and answers a repeated
 * key with the first outcome, which is what makes a retry after a timeout or a crash safe.
 * A declined charge is a business outcome; a timeout is a technical failure that the worker
 * retries. Only the payment worker's thread calls a provider (a provider may run threads of
 * its own behind it). A circuit breaker (pay_breaker.h) wraps whichever provider runs. Read
 * pay_sim.c, then pay_http.c and pay_breaker.c next.
 */
#ifndef STOCKD_PAY_H
#define STOCKD_PAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of an idempotency key ("ord_<seq>") and of a provider's payment reference. */
#define PAY_KEY_BYTES_MAX 31
#define PAY_REF_BYTES_MAX 47

enum pay_outcome {
    PAY_OK = 0,   /* charged: ref names the payment */
    PAY_DECLINED, /* refused by the provider: a business outcome */
    PAY_TIMEOUT,  /* no answer: in doubt, ask again with the same key */
};

struct pay_result {
    uint64_t token; /* the caller's, from charge */
    enum pay_outcome outcome;
    char ref[PAY_REF_BYTES_MAX + 1];
};

struct pay_provider {
    const char *name;
    void *self; /* the implementation's state, owned by whoever made the provider */
    /* Starts charging key (amount is not modelled in this step). 0, or SVC_ECAPACITY when too
     * many charges are in flight or a circuit breaker refuses it (pay_breaker.h): nothing was
     * asked of the provider, and the caller tries again later without counting an attempt. */
    int (*charge)(void *self, const char *key, uint64_t token, int64_t now_ms);
    /* Writes up to max results due at now_ms into out; returns how many. */
    size_t (*poll)(void *self, int64_t now_ms, struct pay_result *out, size_t max);
    /* Whether a charge started at now_ms would be let through, without starting one: a circuit
     * breaker's answer (pay_breaker.h). NULL: always. The worker asks before it spends an
     * attempt on a retry. */
    bool (*admits)(void *self, int64_t now_ms);
};

#endif
