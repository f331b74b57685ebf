/*
 * work_lease.h - one stage's lease of the workers (issue 11): of several stockd instances on
 * one PostgreSQL, only the holder of a stage's lease (a row of worker_leases) runs that stage.
 *
 * The workers' thread ticks each stage's lease (work_lease_tick) in its loop: a stage not held
 * tries to acquire it every lease/3 (free, expired, or its own already: a new token); a stage
 * held renews it every lease/3 and counts it lost when a renewal finds it taken, or when its
 * local deadline (the lease's length from before the last successful statement, on the
 * monotonic clock) passed without one. The row's expiry is on the database's clock, set after
 * the statement was sent, so the local deadline comes first: an instance stops before another
 * can take over. The statement is the workers' reader's (store_reader_lease), not a writer
 * command: a lease is no business data and must not wait behind the writer's queue.
 *
 * Other threads read whether the stage is held and who holds it (GET /v1/admin/workers,
 * /metrics) through work_lease_held and work_lease_holder.
 *
 * The outbox relay (relay/relay.h) takes a lease of the same table the same way, stage
 * RELAY_LEASE_STAGE ("relay"), and so does the intake consumer (intake/intake_consume.h,
 * INTAKE_LEASE_STAGE "intake", fenced in the writer like the workers' steps), each ticked by
 * its own thread with its own reader. Read work.c next.
 */
#ifndef STOCKD_WORK_LEASE_H
#define STOCKD_WORK_LEASE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* The lease's length and the bounds of --lease-ms; it is renewed every lease/3. */
#define WORK_LEASE_MS_DEFAULT 5000
#define WORK_LEASE_MS_MIN 100
#define WORK_LEASE_MS_MAX 600000
#define WORK_LEASE_RENEW_DIVISOR 3
/* After a lease statement failed (storage unavailable), the next try: lease/10. */
#define WORK_LEASE_RETRY_DIVISOR 10

/* What a tick changed. */
enum work_lease_change {
    WORK_LEASE_SAME = 0,
    WORK_LEASE_WON,  /* held from now, with a new token: load the stage's state from storage */
    WORK_LEASE_LOST, /* not held from now: stop the stage and drop its state */
};

struct work_lease {
    const char *stage;        /* "order", "payment", "relay", "intake" (static) */
    bool held;                /* the ticking thread's view */
    int64_t token;            /* the token of the last acquisition (kept after a loss) */
    int64_t valid_until_ms;   /* monotonic: held until then at most */
    int64_t next_try_ms;      /* monotonic: the next acquire or renew */
    _Atomic bool held_shared; /* held, for other threads */
    pthread_mutex_t lock;     /* guards holder */
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1]; /* the holder last seen, "" when unknown */
};

/* The holder id of an instance started without --instance-id: hostname:pid:start-ms. */
void work_lease_default_holder(char *out, size_t size);

void work_lease_init(struct work_lease *l, const char *stage);
void work_lease_deinit(struct work_lease *l);

/* Acquires or renews when due (one statement at most), or notices the local deadline passed.
 * holder is this instance's id, lease_ms the lease's length, now_ms the monotonic clock. */
enum work_lease_change work_lease_tick(struct work_lease *l, struct store_reader *r,
                                       const char *holder, int64_t lease_ms, int64_t now_ms);

/* The caller could not load the stage's state after WORK_LEASE_WON: counted as not held (the
 * next acquisition takes a new token), tried again after retry_ms. */
void work_lease_forget(struct work_lease *l, int64_t now_ms, int64_t retry_ms);

/* At a stop: gives a held lease up (it expires now), so that another instance takes it at once
 * instead of after its expiry. */
void work_lease_release(struct work_lease *l, struct store_reader *r, const char *holder);

/* The monotonic time of the next thing work_lease_tick has to do. */
int64_t work_lease_due_ms(const struct work_lease *l);

/* Any thread. */
bool work_lease_held(const struct work_lease *l);
void work_lease_holder(struct work_lease *l, char *out, size_t size);

#endif
