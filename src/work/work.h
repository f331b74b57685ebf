/*
 * work.h - the workers of checkout orders (issue 11): the order stage (PENDING -> CONFIRMED,
 * through a rule hook) and the payment stage (CONFIRMED -> PAID | PAYMENT_FAILED through a
 * pay_provider), on one thread of their own.
 *
 * Each stage reads the committed event log from its own offset (worker_offsets, read at
 * start) and turns the events it consumes into CMD_ORDER_STEP commands for the writer, which
 * stores the stage's new offset in the same batch as the step's effect: a crash between the
 * two cannot apply a step twice or skip one. Steps go through the writer's queue like any
 * command, so many orders share one batch. The payment stage marks a charge in doubt before it
 * starts it (PAY_BEGIN: the order can no longer expire), keeps many charges in flight, retries
 * a timeout with exponential backoff and jitter up to WORK_PAY_ATTEMPTS_MAX attempts (each
 * counted in storage); a charge still in doubt after WORK_PAY_ATTEMPTS_MAX goes to the
 * dead-letter table (CMD_STEP_DEAD_LETTER: the order stays CONFIRMED and never expires) until
 * work_replay re-queues it. When it takes its lease (below) it resumes every charge left in
 * doubt, with the same key, except those whose stored attempts reached WORK_PAY_ATTEMPTS_MAX:
 * those are dead letters (written now if a crash came before their row was). A charge the
 * provider refuses (full, or its circuit breaker open: pay_breaker.h) spends no attempt: its
 * item holds it and asks again later. No retry is stored while the breaker admits no charge
 * (pay_provider.admits), and a timeout that leaves the circuit open (the one that opened it, a
 * failed probe) is held the same way instead of retried or dead-lettered: an outage makes the
 * orders wait in doubt (never expiring) without spending their attempts, instead of filling
 * the dead-letter table.
 *
 * The offset a step stores is its stage's low-water mark: just below the first event whose
 * step has not been answered yet (a step whose batch failed with 503 is pushed again and keeps
 * the mark down meanwhile), so a crash can make a stage read an event again but never skip
 * one; a step read again for an order that moved on is refused as stale (each step requires
 * the order's state before it).
 *
 * Leases (several instances on one PostgreSQL). Each stage runs only while this instance
 * holds its lease, a row of worker_leases (work_lease.h: acquired when free or expired,
 * renewed every lease/3, --lease-ms, default WORK_LEASE_MS_DEFAULT). On a loss (a renewal
 * found it taken, or none succeeded before the local deadline) the stage stops at once: it
 * reads no more events, drops its marks, its retries waiting and the replies still to come of
 * its steps, and leaves its charges at the provider unheard. On a win it reads its state from
 * storage as at a start: its stored offset (another instance advanced it meanwhile) and, for
 * the payment stage, every charge in doubt (the previous holder's included: the same key, so
 * a provider that honours it never charges twice). SQLite has no other process: the lease is
 * always held there and nothing is stored.
 *
 * Why a fence, and not only the stale-step check: a holder that lost its lease may still have
 * steps in its writer's queue. A stale CONFIRM or PAID is harmless (each needs the order's
 * prior state: one of two wins), but a late PAY_BEGIN is not: if it commits after the new
 * holder read the charges in doubt, the order is PAYING with nobody to charge it, and the new
 * holder's own PAY_BEGIN is refused as stale. So every step carries its lease's token (one
 * more at each acquisition), and on PostgreSQL the writer's prefetch reads the stage's lease
 * row FOR SHARE in the step's batch and refuses (409, nothing written, not even the offset) a
 * step whose token is not the current one. The share lock orders it: an acquisition's UPDATE
 * waits for a batch that read the old token, so the new holder's reads, made after it won,
 * see everything the old holder's steps committed, and no old step commits after.
 *
 * The expiry of orders needs no lease: the writer of every instance sweeps, and on PostgreSQL
 * each expiry locks and re-reads its reservation in the batch (core/prefetch.c), so an order
 * that moved on (PAYING: never due; or ended by another instance) is not expired twice. Pause
 * (work_pause) acts on the instance it is sent to; a paused holder keeps its lease.
 * Read work.c next.
 */
#ifndef STOCKD_WORK_H
#define STOCKD_WORK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/svc_limits.h"
#include "core/command.h"
#include "core/events.h"
#include "core/queue.h"
#include "pay/pay.h"
#include "store/store.h"
#include "work/work_lease.h"

/* Commands the workers may have with the writer at once (their own pool). */
#define WORK_COMMANDS_MAX 8192
/* Payment attempts of one order before its work item goes to the dead-letter table. */
#define WORK_PAY_ATTEMPTS_MAX PAY_ATTEMPTS_MAX
/* Backoff after a timeout: base * 2^(attempt-1), at most the cap, plus up to 50% jitter. */
#define WORK_PAY_BACKOFF_BASE_MS 50
#define WORK_PAY_BACKOFF_CAP_MS 5000
/* Charges in doubt one worker tracks (work items). */
#define WORK_PAY_ITEMS_MAX 65536
/* Replays (POST /v1/dlt/replay) waiting for the workers' thread. */
#define WORK_REPLAYS_MAX DLT_LIST_MAX
/* Events read per round. */
#define WORK_READ_EVENTS_MAX 2048
/* Free items the payment stage needs to read events: one for every step it may have with the
 * writer (a PAY_BEGIN's reply takes one) and for every event of a round. Below it, as when an
 * open circuit holds many charges, it reads no new order (those wait, or expire by their TTL). */
#define WORK_PAY_ITEMS_RESERVE (WORK_COMMANDS_MAX + WORK_READ_EVENTS_MAX)
_Static_assert(WORK_PAY_ITEMS_RESERVE < WORK_PAY_ITEMS_MAX, "items beyond the reserve");
/* Events a stage may have sent steps for and not had answered (its low-water marks). */
#define WORK_MARKS_MAX (4 * WORK_COMMANDS_MAX)
/* With nothing to do, the thread waits for a reply or a commit (work_notify): at most
 * WORK_POLL_MS while charges are in flight, else WORK_IDLE_WAIT_MS (the bound on picking up
 * the events other instances committed on a shared PostgreSQL). */
#define WORK_POLL_MS 1
#define WORK_IDLE_WAIT_MS 100

/* The order stage's rule: true accepts the new order; false rejects it (CANCELLED) with a
 * reason written into reason (reason_size bytes). Called on the workers' thread with the
 * decoded OrderCreated event. The default accepts every order. */
typedef bool (*work_rule_fn)(void *context, const struct event *created, char *reason,
                             size_t reason_size);

struct work_config {
    const char *db_uri;                  /* the workers open their own reader */
    struct queue *queue;                 /* the writer's (borrowed) */
    const struct pay_provider *provider; /* borrowed */
    work_rule_fn rule;                   /* NULL: accept */
    void *rule_context;
    int64_t (*wall_ms)(void);
    const char *instance_id; /* the holder id of the leases; NULL: hostname:pid:start-ms */
    int64_t lease_ms;        /* WORK_LEASE_MS_MIN..MAX; 0: WORK_LEASE_MS_DEFAULT */
};

struct work_stats {
    _Atomic int64_t order_offset;   /* the last event the order stage read */
    _Atomic int64_t payment_offset; /* the last event the payment stage read */
    _Atomic uint64_t order_refused; /* the order stage's steps the writer refused (stale) */
    _Atomic uint64_t rejected;      /* orders the rule refused (CANCELLED) */
    _Atomic uint64_t confirmed;
    _Atomic uint64_t paid;
    _Atomic uint64_t payment_failed;
    _Atomic uint64_t retries;
    _Atomic uint64_t parked;      /* gave up after WORK_PAY_ATTEMPTS_MAX: sent to the DLT */
    _Atomic int64_t dead_letters; /* payment dead letters now (read at start, then counted) */
    _Atomic uint64_t replayed;    /* dead letters replayed */
};

struct work; /* opaque: work.c */

/* Allocates the workers; NULL when out of memory. */
struct work *work_new(const struct work_config *config);
/* Starts the thread (reads the offsets and the charges in doubt first). 0 or an error. */
int work_start(struct work *w);
/* Stops and joins the thread; commands still with the writer are left to process exit. */
void work_stop(struct work *w);
/* Frees workers that never started or were stopped (NULL is fine). */
void work_free(struct work *w);
const struct work_stats *work_stats(const struct work *w);

/* Pauses or resumes a stage (CMD_STAGE_ORDER or CMD_STAGE_PAYMENT; any thread). A paused stage
 * reads no event past its offset, so it sends no new step: the order stage confirms nothing,
 * the payment stage starts no charge and asks no retry; the charges already in flight still
 * end (their outcome is committed) and a retry due waits for the resume. The pause is in
 * memory: a restart runs every stage. */
void work_pause(struct work *w, enum cmd_stage stage, bool paused);
bool work_paused(const struct work *w, enum cmd_stage stage);

/* Whether this instance holds stage's lease now (CMD_STAGE_ORDER or CMD_STAGE_PAYMENT; any
 * thread), and the holder it last saw ("" when unknown: before its first lease statement). */
bool work_holds(const struct work *w, enum cmd_stage stage);
void work_holder(struct work *w, enum cmd_stage stage, char *out, size_t size);
/* This instance's holder id (--instance-id, or made up at work_new). */
const char *work_instance_id(const struct work *w);

/* Re-queues the dead letter of ord_<order_seq> (its hold reservation_seq): the writer takes it
 * out of the table and resets its attempts, then the charge is asked again with the same key
 * (any thread; POST /v1/dlt/replay). 0, or SVC_ECAPACITY when WORK_REPLAYS_MAX wait already.
 * The replay waits while this instance does not hold the payment stage's lease. */
int work_replay(struct work *w, int64_t order_seq, int64_t reservation_seq);

/* Wakes the thread (any thread). NULL: none. */
void work_notify(struct work *w);
/* Wakes the thread when one of the count events is of a type a stage acts on: the writer
 * committed them (its committed hook). A batch of purchases alone does not wake it; the
 * events it skips are passed over at the next read. NULL: none. */
void work_notify_events(struct work *w, const struct event *events, size_t count);

/* The writer's reply hook for a command of origin CMD_ORIGIN_WORKER (any thread: it only
 * queues it back to the workers). */
void work_writer_reply(struct command *cmd);

#endif
