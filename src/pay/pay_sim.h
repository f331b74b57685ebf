/*
 * pay_sim.h - the built-in payment simulator: an in-process pay_provider with three knobs
 * (failure rate, latency, timeout rate), set by --payment-* flags.
 *
 * It remembers every key it charged, so a repeated key gets the first outcome and is never
 * charged twice; with a ledger file it appends one line "<key> <ok|declined>" per real charge
 * and reads the file back at start, so that, like a real provider, it remembers charges across
 * a restart of stockd (a kill -9 included: the lines are written before the result is
 * reported). Tests count the ledger's lines per key to prove that no order was charged twice.
 * Not thread-safe but for its knobs (pay_sim_set_knobs): the payment worker's thread only. Read
 * work/work.h next.
 */
#ifndef STOCKD_PAY_SIM_H
#define STOCKD_PAY_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "pay/pay.h"

/* Charges one simulator keeps in flight: a full batch of the writer's, many times over. */
#define PAY_SIM_INFLIGHT_MAX 65536
/* Keys it remembers (a power of two; the table stays under half full up to this many / 2). */
#define PAY_SIM_KEY_SLOTS (1u << 21)

struct pay_sim_config {
    double failure_rate;     /* 0..1: declined */
    double timeout_rate;     /* 0..1: no answer (the charge may still have happened), also to
                              * a key already decided: 1 never answers */
    int64_t latency_ms;      /* >= 0 */
    const char *ledger_path; /* NULL: no ledger */
};

struct pay_sim_stats { /* read by the tests through the ledger, by /metrics later */
    uint64_t charges;  /* keys really charged (ok) */
    uint64_t declines; /* keys declined */
    uint64_t replays;  /* charges of a key already decided: the first outcome again */
    uint64_t timeouts;
    uint64_t keys;              /* keys decided, the ledger's included */
    uint64_t ledger_duplicates; /* keys found twice in the ledger at start (must stay 0) */
};

struct pay_sim;

/* The knobs at run time (PUT /v1/admin/payment): rates in millionths, so that any thread sets
 * them without a lock and the worker's thread reads them at every charge. */
#define PAY_SIM_PPM 1000000
#define PAY_SIM_LATENCY_MS_MAX 60000
struct pay_sim_knobs {
    int64_t failure_ppm; /* 0..PAY_SIM_PPM */
    int64_t timeout_ppm; /* 0..PAY_SIM_PPM */
    int64_t latency_ms;  /* 0..PAY_SIM_LATENCY_MS_MAX */
};

/* Makes a simulator and its provider interface; NULL when out of memory or the ledger cannot
 * be opened or read (logged). */
struct pay_sim *pay_sim_new(const struct pay_sim_config *config, uint64_t seed);
void pay_sim_free(struct pay_sim *sim);
/* Its pay_provider (borrowed: lives as long as sim). */
const struct pay_provider *pay_sim_provider(struct pay_sim *sim);
const struct pay_sim_stats *pay_sim_stats(const struct pay_sim *sim);
/* Sets the knobs for the charges started from now on (any thread); a lower latency lets a
 * charge wait for the ones started before it. */
void pay_sim_set_knobs(struct pay_sim *sim, const struct pay_sim_knobs *knobs);
void pay_sim_get_knobs(struct pay_sim *sim, struct pay_sim_knobs *out);
/* The outcome key was decided with: PAY_OK or PAY_DECLINED; PAY_TIMEOUT when it never was
 * (never charged, or its charges timed out before the simulator decided). The simulator's
 * thread only (stockd-paysim's GET /payments/{key}). */
enum pay_outcome pay_sim_lookup(struct pay_sim *sim, const char *key);

#endif
