/*
 * writer.h - the single writer: the only thread that changes inventory.
 *
 * It drains the command queue in batches of up to BATCH_COMMANDS_MAX and runs each batch in
 * four steps (TigerBeetle's prefetch -> commit -> persist -> reply): prefetch reads in one round
 * whatever the batch needs that memory does not hold; apply decides every command in memory
 * with no storage call (core/apply.h); persist writes the whole batch in ONE storage
 * transaction; only then are the replies released (durable before acknowledged), and after
 * them the batch's events go to the read model. Idempotency is decided here too, so two
 * requests with one key can never both apply. See the state machine at the top of writer.c.
 *
 * Read core/apply.h next.
 */
#ifndef STOCKD_WRITER_H
#define STOCKD_WRITER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/command.h"
#include "core/domain.h"
#include "core/events.h"
#include "core/queue.h"
#include "store/store.h"

/* Batch-size histogram buckets: [1], [2,3], [4,7], ... [512,1023], [1024]. */
#define WRITER_BATCH_BUCKETS 11
/* Batch-duration histogram: its upper bounds (writer_commit_bucket_us, 0.1 ms .. 10 s) and one
 * bucket over them all. */
#define WRITER_COMMIT_BUCKETS 16

/* What a store failure of a batch was (the /metrics label "kind"). */
enum writer_store_error {
    WRITER_STORE_ERROR_PREFETCH = 0, /* the reads before the apply failed */
    WRITER_STORE_ERROR_COMMIT,       /* the batch's transaction failed */
    WRITER_STORE_ERROR_CONFLICT,     /* lost WRITER_COMMIT_ATTEMPTS_MAX races (shared store) */
    WRITER_STORE_ERROR_KINDS,
};

/* Which command a refusal for want of stock (insufficient_stock) answered. */
enum writer_refusal {
    WRITER_REFUSAL_PURCHASE = 0, /* POST /v1/purchase, the seeds' buy aliases */
    WRITER_REFUSAL_RESERVATION,  /* POST /v1/reservations */
    WRITER_REFUSAL_ORDER,        /* POST /v1/orders (a checkout order) */
    WRITER_REFUSAL_OTHER,        /* transfers, adjustments below zero, confirms */
    WRITER_REFUSAL_KINDS,
};

extern const int64_t writer_commit_bucket_us[WRITER_COMMIT_BUCKETS];

struct writer_config {
    struct store *store;   /* borrowed; used by the writer thread only once started */
    struct domain *domain; /* borrowed; the writer is its only user */
    struct queue *queue;   /* borrowed; the writer is its only consumer */
    int64_t idem_retention_ms;
    int64_t (*wall_ms)(void); /* injectable clock (tests run on fake time) */
    void *reply_context;
    /* Hands a finished command back to its owner; called on the writer thread. */
    void (*reply)(struct command *cmd, void *reply_context);
    /* Optional: called after the last reply of a batch (an owner may gather them until then,
     * so that one hand-over carries them all). */
    void (*replies_done)(void *reply_context);
    void *committed_context;
    /* Optional: called right after a batch committed, before its replies leave: the log now
     * reaches seq, and the batch's events follow through committed after the replies. */
    void (*durable)(int64_t seq, void *committed_context);
    /* Optional: the events of a durable batch, in seq order, after its replies left (other
     * instances' events that its prefetch read come first). Valid during the call only. */
    void (*committed)(const struct event *events, size_t count, void *committed_context);
    /* Optional: the last seq the committed hook's consumer has applied (it may have more than
     * this writer committed: other instances' events, read by a follower). A shared backend's
     * prefetch reads only the events after it. */
    int64_t (*applied_seq)(void *committed_context);
    /* Optional (both or neither): snapshots of the read model (read/projector.h). snapshot
     * fills *out when one is due (final: the writer is stopping; any new event makes one due)
     * and *keep_from_seq with the older snapshot to keep; 1 taken, 0 not due, < 0 failed. The
     * writer writes it between batches in a transaction of its own (store_snapshot_write) and
     * hands the answer to snapshot_saved. */
    int (*snapshot)(void *committed_context, bool final, struct row_snapshot *out,
                    int64_t *keep_from_seq);
    void (*snapshot_saved)(void *committed_context, const struct row_snapshot *row, int rc,
                           int64_t took_us);
};

struct writer_stats { /* written by the writer, read by /metrics */
    _Atomic uint64_t batches;
    _Atomic uint64_t commands;
    _Atomic uint64_t batch_size_max;
    _Atomic uint64_t batch_failures;
    _Atomic uint64_t batch_retries; /* shared backend: prefetched again after a lost race */
    _Atomic uint64_t replays;
    _Atomic uint64_t commit_us_total;
    _Atomic uint64_t commit_us_max;
    _Atomic uint64_t batch_size_buckets[WRITER_BATCH_BUCKETS];
    /* batches per duration bucket (not cumulative); the last is over every bound */
    _Atomic uint64_t commit_us_buckets[WRITER_COMMIT_BUCKETS + 1];
    _Atomic uint64_t store_errors[WRITER_STORE_ERROR_KINDS];
    _Atomic uint64_t stock_refusals[WRITER_REFUSAL_KINDS]; /* of committed batches */
    _Atomic uint64_t events[EVENT_TYPE_COUNT];             /* committed, by type */
    /* The domain's reservations after the last committed batch (or the load): the ACTIVE ones
     * --max-reservations limits. The read model's count stops at its own table's size. */
    _Atomic uint64_t reservations_held;
};

/* Where the batch in hand is (writer.c's state machine). */
enum writer_state {
    WRITER_IDLE = 0,
    WRITER_PREFETCHING,
    WRITER_APPLYING,
    WRITER_PERSISTING,
    WRITER_REPLYING,
    WRITER_PUBLISHING,
};

struct batch;          /* per-batch scratch: core/batch.h */
struct writer_scratch; /* writer.c's own: per-command outcomes, the prefetch keys */

struct writer {
    struct writer_config config;
    struct batch *batch;            /* owned */
    struct writer_scratch *scratch; /* owned */
    enum writer_state state;
    int64_t prune_due_ms;     /* wall time of the next step of the idempotency sweep */
    uint64_t pruned_in_sweep; /* records the current sweep deleted so far */
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    _Atomic bool storage_ok; /* false after a failed commit, until one succeeds */
    /* How often the store's session came back after it broke (store_session_count moved),
     * counted before the replies of the batch that saw it. The I/O threads' store readers
     * watch it (store_reader_watch_recoveries) and replace their sessions, which likely died
     * the same way, before their next read. Any thread reads it; the writer alone adds. */
    _Atomic uint64_t storage_recoveries;
    uint64_t store_sessions_seen; /* store_session_count at the last look; writer thread only */
    _Atomic int64_t acked_seq;    /* the last event seq of a batch whose replies were released */
    /* POST /v1/admin/workers/expiry:pause (any thread sets it): the sweep of due holds is
     * skipped, so no reservation and no checkout order expires by time while it is set. */
    _Atomic bool expiry_paused;
    _Atomic uint64_t expiry_events; /* events of the sweeps (released holds, expired orders) */
    /* Progress, for /health's writer check (writer_stalled; the writer writes, any thread
     * reads), monotonic ms: when the batch in hand started (0: none in hand) and when the
     * last one ended (or the thread started). */
    _Atomic int64_t batch_started_ms;
    _Atomic int64_t batch_ended_ms;
    struct writer_stats stats;
};

/* Loads the domain from storage and allocates the batch scratch. 0, -ENOMEM or
 * SVC_ESTORAGE_UNAVAILABLE. Called by main before any I/O thread starts. */
int writer_init(struct writer *w, const struct writer_config *config);
/* Frees the scratch. The thread must have been stopped. */
void writer_deinit(struct writer *w);

/* Starts the writer thread. 0 or -errno. */
int writer_start(struct writer *w);
/* Asks the thread to finish the batch in hand and the queue's contents, then joins it. */
void writer_stop(struct writer *w);

/* Whether the writer is stalled at monotonic time now_ms: a batch in hand for longer than
 * WRITER_STALL_MS, or queue_depth commands waiting while no batch ended for that long. Any
 * thread (GET /health). */
bool writer_stalled(const struct writer *w, size_t queue_depth, int64_t now_ms);

/* Runs one batch synchronously on the calling thread: prefetch, apply, persist, reply,
 * publish. The writer thread's loop body; exposed for the tests. Takes ownership of every
 * command until it is handed to config.reply. count 0 runs the due expiries only. */
void writer_run_batch(struct writer *w, struct command **commands, size_t count);

/* How many of the first count commands fit one batch's row budget (at least one when count
 * is not 0). The loop cuts batches with it; tests too. */
size_t writer_batch_fit(struct writer *w, struct command **commands, size_t count);

/* Deletes expired idempotency records if due; called by the loop when idle. */
void writer_housekeeping(struct writer *w);

/* The last event seq whose batch's replies were released: a read that must see what a client
 * was told waits for the read model to reach it (any thread). */
int64_t writer_acked_seq(struct writer *w);

#endif
