/*
 * pay_breaker.h - a circuit breaker around any payment provider (issue 11): a pay_provider
 * that wraps another one, lets its charges through while the provider answers, and refuses
 * them while it does not, so that an outage makes the payment worker wait instead of hammering
 * the provider with retries (and instead of spending every order's attempts on it).
 *
 *              N timeouts in a row, or >= R% of the last W outcomes (>= S of them)
 *     CLOSED ----------------------------------------------------------------> OPEN
 *       ^                                                                    |  ^
 *       | a probe succeeds                        the cool-down has passed   |  | a probe times
 *       |                                         (asked by admits/charge)   v  | out: cool-down
 *       +--------------------------------------------------------------- HALF-OPEN   doubled
 *
 * Only PAY_TIMEOUT is a failure: a declined charge is a business outcome, which says the
 * provider answers, so it counts as a success. CLOSED lets every charge through and feeds each
 * outcome to the counters above. OPEN refuses every charge (SVC_ECAPACITY, as a full provider
 * does: the caller keeps the charge and asks again later, and has spent no attempt on it) and
 * ignores the late outcomes of charges started before it opened. After the cool-down
 * (PAY_BREAKER_COOLDOWN_MS the first time, doubled after every failed probe up to
 * PAY_BREAKER_COOLDOWN_CAP_MS, back to the start once closed) HALF-OPEN lets up to
 * PAY_BREAKER_PROBES_MAX charges through, the probes: the first probe outcome decides, a
 * success closes the circuit (with fresh counters), a timeout re-opens it. The other outcomes
 * that come back meanwhile are ignored. The state changes only when the breaker is asked
 * (admits, charge) or fed (poll), all with the caller's clock, so the unit test drives it with
 * a fake one.
 *
 * The payment worker asks admits ("may I start a charge now?") before it spends an attempt on
 * a retry, and treats a refused charge as not attempted. Only the payment worker's thread calls
 * the breaker; pay_breaker_stats is for any thread (/metrics, /health, /v1/admin/workers).
 * Read pay_sim.h next.
 */
#ifndef STOCKD_PAY_BREAKER_H
#define STOCKD_PAY_BREAKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pay/pay.h"

/* Timeouts in a row that open the circuit: a provider that answers one charge in two or more
 * almost never times out ten times in a row (0.5^10), a dead one does it at once. */
#define PAY_BREAKER_FAILURES_MAX 10
/* The sliding window: the last PAY_BREAKER_WINDOW outcomes; the circuit opens when at least
 * PAY_BREAKER_WINDOW_FAILURE_PCT percent of them are timeouts, once there are at least
 * PAY_BREAKER_WINDOW_SAMPLES_MIN of them (fewer say too little). */
#define PAY_BREAKER_WINDOW 100
#define PAY_BREAKER_WINDOW_SAMPLES_MIN 20
#define PAY_BREAKER_WINDOW_FAILURE_PCT 50
/* The first cool-down, and its cap once doubled after failed probes: a provider back after a
 * long outage is seen within the cap (the worker's own backoff caps at 5 s too). */
#define PAY_BREAKER_COOLDOWN_MS 1000
#define PAY_BREAKER_COOLDOWN_CAP_MS 5000
/* Charges a half-open circuit lets through: a few, so that one lost probe does not hold it. */
#define PAY_BREAKER_PROBES_MAX 3

_Static_assert(PAY_BREAKER_WINDOW_SAMPLES_MIN <= PAY_BREAKER_WINDOW, "the window holds them");
_Static_assert(PAY_BREAKER_FAILURES_MAX <= PAY_BREAKER_WINDOW, "a run fits in the window");
_Static_assert(PAY_BREAKER_COOLDOWN_MS <= PAY_BREAKER_COOLDOWN_CAP_MS, "cap above the start");

/* The values of stockd_payment_circuit_state. */
enum pay_breaker_state {
    PAY_BREAKER_CLOSED = 0,
    PAY_BREAKER_HALF_OPEN = 1,
    PAY_BREAKER_OPEN = 2,
};

/* Written by the payment worker's thread, read by any. */
struct pay_breaker_stats {
    _Atomic int state;                     /* enum pay_breaker_state */
    _Atomic uint64_t consecutive_failures; /* timeouts in a row (failed probes included) */
    _Atomic uint64_t opens;                /* times it went to OPEN (a failed probe's too) */
    _Atomic uint64_t charges;              /* charges it let through to the provider */
    _Atomic uint64_t timeouts;             /* PAY_TIMEOUT outcomes the provider gave */
    _Atomic uint64_t refused;              /* charges it refused (OPEN, or no probe left) */
    _Atomic uint64_t probes;               /* charges it let through HALF-OPEN */
};

struct pay_breaker; /* opaque: pay_breaker.c */

/* Makes a closed breaker around inner (borrowed: it must outlive the breaker); NULL when out
 * of memory. */
struct pay_breaker *pay_breaker_new(const struct pay_provider *inner);
void pay_breaker_free(struct pay_breaker *b);
/* The wrapping provider (borrowed: lives as long as b): inner's name, charges and results
 * through the breaker, and admits. */
const struct pay_provider *pay_breaker_provider(struct pay_breaker *b);
const struct pay_breaker_stats *pay_breaker_stats(const struct pay_breaker *b);
/* "closed", "half_open" or "open". */
const char *pay_breaker_state_name(enum pay_breaker_state state);

#endif
