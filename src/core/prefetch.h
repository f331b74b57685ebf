/*
 * prefetch.h - the first step of a batch: one round of reads of everything the batch will look
 * at that memory does not hold, so that apply (core/apply.h) never calls storage.
 *
 * On every backend: the stored records of the batch's idempotency keys, and why a reservation
 * it names is no longer in memory (it ended: how, or it never existed). On a shared backend
 * (several stockd instances on one PostgreSQL) the writer's memory is only a cache, so the
 * prefetch also locks and re-reads the stock rows, reservations, stores and products the batch
 * will touch, and brings the events other instances committed; what it reads becomes the
 * committed state before any command applies. Called on the writer thread only. Read
 * writer.c next.
 */
#ifndef STOCKD_PREFETCH_H
#define STOCKD_PREFETCH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/batch.h"
#include "core/domain.h"
#include "store/store.h"

/* The sweep for expired reservations that no instance holds (their instance stopped): every
 * PREFETCH_SWEEP_INTERVAL_MS when idle, those expired PREFETCH_SWEEP_GRACE_MS ago or more
 * (their own instance, if alive, is quicker), at most PREFETCH_ADOPT_MAX at a time. */
#define PREFETCH_SWEEP_INTERVAL_MS 1000
#define PREFETCH_SWEEP_GRACE_MS 1000
#define PREFETCH_ADOPT_MAX 256

struct prefetch; /* the keys of one batch: fixed arrays, owned by the writer */

/* Allocates the key arrays, sized for a domain of up to stores_max stores. NULL when out of
 * memory (startup: the caller exits). */
struct prefetch *prefetch_new(uint32_t stores_max);
void prefetch_free(struct prefetch *p);

/* Reads what the batch in b needs (see the top of this file) into d and b. events_after is
 * the last event seq the read model has (a shared backend brings only later ones). 0 or
 * SVC_ESTORAGE_UNAVAILABLE (the batch then fails: nothing applied, 503 to its commands). */
int prefetch_batch(struct prefetch *p, struct store *s, struct domain *d, struct batch *b,
                   int64_t events_after);

/* The idle writer's sweep on a shared backend (see PREFETCH_SWEEP_INTERVAL_MS); rate-limited,
 * cheap when not due. True when it found reservations to adopt: the next batch expires them,
 * so run one. Always false on a backend the writer owns. */
bool prefetch_sweep(struct prefetch *p, struct store *s, const struct domain *d, int64_t now_ms);

#endif
