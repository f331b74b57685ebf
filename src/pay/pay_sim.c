/*
 * pay_sim.c - the payment simulator of pay_sim.h: a ring of charges in flight (the latency is
 * the same for every charge, so they fall due in the order they started) and an open-
 * addressing table of the keys it decided, with an optional append-only ledger.
 */
#include "pay/pay_sim.h"

#include <errno.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/hash.h"
#include "base/log.h"
#include "base/svc_assert.h"

_Static_assert((PAY_SIM_KEY_SLOTS & (PAY_SIM_KEY_SLOTS - 1)) == 0, "slots: a power of two");
_Static_assert((PAY_SIM_INFLIGHT_MAX & (PAY_SIM_INFLIGHT_MAX - 1)) == 0, "ring: a power of two");

enum pay_sim_decided { PAY_SIM_NONE = 0, PAY_SIM_OK, PAY_SIM_DECLINED };

struct pay_sim_key {
    char key[PAY_KEY_BYTES_MAX + 1]; /* "" = empty slot */
    enum pay_sim_decided decided;
};

struct pay_sim_flight {
    uint64_t token;
    int64_t due_ms;
    enum pay_outcome outcome;
    char key[PAY_KEY_BYTES_MAX + 1];
};

struct pay_sim {
    struct pay_sim_config config;
    struct pay_provider provider;
    struct pay_sim_key *keys; /* PAY_SIM_KEY_SLOTS, owned */
    uint32_t key_count;
    struct pay_sim_flight *ring; /* PAY_SIM_INFLIGHT_MAX, owned */
    uint64_t ring_head;          /* next to fall due */
    uint64_t ring_tail;          /* next free */
    uint64_t rng;                /* xorshift64 state, never 0 */
    FILE *ledger;                /* owned, or NULL */
    struct pay_sim_stats stats;
    _Atomic int64_t failure_ppm; /* the knobs: config's at start, pay_sim_set_knobs later */
    _Atomic int64_t timeout_ppm;
    _Atomic int64_t latency_ms;
};

static double pay_sim_random(struct pay_sim *sim)
{
    uint64_t x = sim->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    sim->rng = x;
    SVC_ASSERT(x != 0);
    return (double)(x >> 11) / (double)(UINT64_C(1) << 53);
}

/* The slot of key: where it is, or the empty slot where it goes. */
static struct pay_sim_key *pay_sim_slot(struct pay_sim *sim, const char *key)
{
    size_t length = strlen(key);
    SVC_ASSERT(length >= 1 && length <= PAY_KEY_BYTES_MAX);
    uint32_t i = (uint32_t)hash_fnv1a(HASH_FNV_OFFSET, key, length) & (PAY_SIM_KEY_SLOTS - 1);
    for (;;) {
        struct pay_sim_key *slot = &sim->keys[i];
        if (slot->key[0] == '\0' || strcmp(slot->key, key) == 0) {
            return slot;
        }
        i = (i + 1) & (PAY_SIM_KEY_SLOTS - 1);
    }
}

/* Records that key was decided; 0 or SVC_ECAPACITY (the table is half full). */
static int pay_sim_decide(struct pay_sim *sim, struct pay_sim_key *slot, const char *key,
                          enum pay_sim_decided decided, bool from_ledger)
{
    SVC_ASSERT(slot->decided == PAY_SIM_NONE && decided != PAY_SIM_NONE);
    if (sim->key_count >= PAY_SIM_KEY_SLOTS / 2) {
        return SVC_ECAPACITY;
    }
    strcpy(slot->key, key);
    slot->decided = decided;
    sim->key_count++;
    sim->stats.keys = sim->key_count;
    if (!from_ledger && sim->ledger != NULL) {
        /* Before the result is reported: a crash after it finds the charge remembered. */
        fprintf(sim->ledger, "%s %s\n", key, decided == PAY_SIM_OK ? "ok" : "declined");
        fflush(sim->ledger);
    }
    return 0;
}

/* Reads the ledger back: every key charged before. 0 or -errno / SVC_EVALIDATION. */
static int pay_sim_load_ledger(struct pay_sim *sim)
{
    FILE *f = fopen(sim->config.ledger_path, "r");
    if (f == NULL) {
        return errno == ENOENT ? 0 : -errno;
    }
    char key[PAY_KEY_BYTES_MAX + 1];
    char outcome[16];
    int rc = 0;
    while (rc == 0 && fscanf(f, "%31s %15s", key, outcome) == 2) {
        struct pay_sim_key *slot = pay_sim_slot(sim, key);
        bool ok = strcmp(outcome, "ok") == 0;
        if (slot->decided != PAY_SIM_NONE) {
            log_error("payment simulator: key %s is in the ledger twice", key);
            sim->stats.ledger_duplicates++;
            continue; /* the ledger shows it; the tests read the file and fail on it */
        }
        rc = pay_sim_decide(sim, slot, key, ok ? PAY_SIM_OK : PAY_SIM_DECLINED, true);
    }
    fclose(f);
    return rc;
}

static int pay_sim_charge(void *self, const char *key, uint64_t token, int64_t now_ms)
{
    struct pay_sim *sim = self;
    if (sim->ring_tail - sim->ring_head == PAY_SIM_INFLIGHT_MAX) {
        return SVC_ECAPACITY;
    }
    struct pay_sim_key *slot = pay_sim_slot(sim, key);
    enum pay_outcome outcome = PAY_TIMEOUT;
    double timeout_rate = (double)atomic_load(&sim->timeout_ppm) / PAY_SIM_PPM;
    double failure_rate = (double)atomic_load(&sim->failure_ppm) / PAY_SIM_PPM;
    if (slot->decided != PAY_SIM_NONE) {
        /* The same key: the first outcome, never a second charge; or no answer at all, as
         * often as any charge times out (the network does not know the key was decided). */
        if (pay_sim_random(sim) >= timeout_rate) {
            sim->stats.replays++;
            outcome = slot->decided == PAY_SIM_OK ? PAY_OK : PAY_DECLINED;
        }
    } else {
        bool timeout = pay_sim_random(sim) < timeout_rate;
        bool declined = pay_sim_random(sim) < failure_rate;
        /* A timeout hides the outcome; half the time the provider did decide meanwhile. */
        if (!timeout || pay_sim_random(sim) < 0.5) {
            enum pay_sim_decided decided = declined ? PAY_SIM_DECLINED : PAY_SIM_OK;
            if (pay_sim_decide(sim, slot, key, decided, false) != 0) {
                return SVC_ECAPACITY;
            }
            *(declined ? &sim->stats.declines : &sim->stats.charges) += 1;
        }
        outcome = timeout ? PAY_TIMEOUT : declined ? PAY_DECLINED : PAY_OK;
    }
    sim->stats.timeouts += outcome == PAY_TIMEOUT;
    struct pay_sim_flight *f = &sim->ring[sim->ring_tail++ & (PAY_SIM_INFLIGHT_MAX - 1)];
    *f = (struct pay_sim_flight){token, now_ms + atomic_load(&sim->latency_ms), outcome, {0}};
    strcpy(f->key, key);
    return 0;
}

static size_t pay_sim_poll(void *self, int64_t now_ms, struct pay_result *out, size_t max)
{
    struct pay_sim *sim = self;
    size_t n = 0;
    while (n < max && sim->ring_head != sim->ring_tail) {
        const struct pay_sim_flight *f = &sim->ring[sim->ring_head & (PAY_SIM_INFLIGHT_MAX - 1)];
        if (f->due_ms > now_ms) {
            break; /* one latency for all: the rest fall due later */
        }
        out[n] = (struct pay_result){f->token, f->outcome, {0}};
        snprintf(out[n].ref, sizeof out[n].ref, "sim_%s", f->key);
        n++;
        sim->ring_head++;
    }
    SVC_ASSERT(sim->ring_head <= sim->ring_tail);
    return n;
}

struct pay_sim *pay_sim_new(const struct pay_sim_config *config, uint64_t seed)
{
    SVC_ASSERT(config->latency_ms >= 0);
    SVC_ASSERT(config->failure_rate >= 0 && config->failure_rate <= 1);
    struct pay_sim *sim = calloc(1, sizeof *sim);
    if (sim == NULL) {
        return NULL;
    }
    sim->config = *config;
    atomic_store(&sim->failure_ppm, (int64_t)(config->failure_rate * PAY_SIM_PPM + 0.5));
    atomic_store(&sim->timeout_ppm, (int64_t)(config->timeout_rate * PAY_SIM_PPM + 0.5));
    atomic_store(&sim->latency_ms, config->latency_ms);
    sim->rng = seed != 0 ? seed : 0x9e3779b97f4a7c15ULL;
    sim->keys = calloc(PAY_SIM_KEY_SLOTS, sizeof *sim->keys);
    sim->ring = calloc(PAY_SIM_INFLIGHT_MAX, sizeof *sim->ring);
    sim->provider = (struct pay_provider){
        .name = "simulator", .self = sim, .charge = pay_sim_charge, .poll = pay_sim_poll};
    int rc = sim->keys != NULL && sim->ring != NULL ? 0 : -ENOMEM;
    if (rc == 0 && config->ledger_path != NULL) {
        rc = pay_sim_load_ledger(sim);
        sim->ledger = rc == 0 ? fopen(config->ledger_path, "a") : NULL;
        rc = rc == 0 && sim->ledger == NULL ? -errno : rc;
    }
    if (rc != 0) {
        log_error("payment simulator: cannot start (%d)", rc);
        pay_sim_free(sim);
        return NULL;
    }
    return sim;
}

void pay_sim_free(struct pay_sim *sim)
{
    if (sim == NULL) {
        return;
    }
    if (sim->ledger != NULL) {
        fclose(sim->ledger);
    }
    free(sim->keys);
    free(sim->ring);
    free(sim);
}

const struct pay_provider *pay_sim_provider(struct pay_sim *sim)
{
    SVC_ASSERT(sim != NULL && sim->provider.self == sim);
    return &sim->provider;
}

const struct pay_sim_stats *pay_sim_stats(const struct pay_sim *sim)
{
    return &sim->stats;
}

void pay_sim_set_knobs(struct pay_sim *sim, const struct pay_sim_knobs *knobs)
{
    SVC_ASSERT(knobs->failure_ppm >= 0 && knobs->failure_ppm <= PAY_SIM_PPM);
    SVC_ASSERT(knobs->timeout_ppm >= 0 && knobs->timeout_ppm <= PAY_SIM_PPM);
    SVC_ASSERT(knobs->latency_ms >= 0 && knobs->latency_ms <= PAY_SIM_LATENCY_MS_MAX);
    atomic_store(&sim->failure_ppm, knobs->failure_ppm);
    atomic_store(&sim->timeout_ppm, knobs->timeout_ppm);
    atomic_store(&sim->latency_ms, knobs->latency_ms);
}

void pay_sim_get_knobs(struct pay_sim *sim, struct pay_sim_knobs *out)
{
    out->failure_ppm = atomic_load(&sim->failure_ppm);
    out->timeout_ppm = atomic_load(&sim->timeout_ppm);
    out->latency_ms = atomic_load(&sim->latency_ms);
}

enum pay_outcome pay_sim_lookup(struct pay_sim *sim, const char *key)
{
    size_t length = strlen(key);
    if (length == 0 || length > PAY_KEY_BYTES_MAX) {
        return PAY_TIMEOUT; /* no such key can have been charged */
    }
    const struct pay_sim_key *slot = pay_sim_slot(sim, key);
    SVC_ASSERT(slot->key[0] == '\0' || strcmp(slot->key, key) == 0);
    return slot->decided == PAY_SIM_OK         ? PAY_OK
           : slot->decided == PAY_SIM_DECLINED ? PAY_DECLINED
                                               : PAY_TIMEOUT;
}
