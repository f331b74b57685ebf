/*
 * writer.h - the single writer: the only thread that changes inventory.
 *
 * It drains the command queue in batches of up to BATCH_COMMANDS_MAX, applies each command to
 * the in-memory domain, writes the whole batch in ONE storage transaction, and only then
 * releases the replies (durable before acknowledged). Idempotency is decided here too, so two
 * requests with one key can never both apply. See the state machine at the top of writer.c.
 *
 * Read http.h next.
 */
#ifndef STOCKD_WRITER_H
#define STOCKD_WRITER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/command.h"
#include "core/domain.h"
#include "core/queue.h"
#include "core/reservations.h"
#include "store/store.h"

/* Batch-size histogram buckets: [1], [2,3], [4,7], ... [512,1023], [1024]. */
#define WRITER_BATCH_BUCKETS 11

struct writer_config {
    struct store *store;   /* borrowed; used by the writer thread only once started */
    struct domain *domain; /* borrowed; the writer is its only mutator */
    struct queue *queue;   /* borrowed; the writer is its only consumer */
    int64_t idem_retention_ms;
    int64_t (*wall_ms)(void); /* injectable clock (tests run on fake time) */
    void *reply_context;
    /* Hands a finished command back to its owner; called on the writer thread. */
    void (*reply)(struct command *cmd, void *reply_context);
    void *committed_context;
    /* Optional: the events of a batch, in seq order, once the batch is durable and before any
     * reply leaves (read-your-writes for the projections). The rows are valid during the
     * call only. Called on the writer thread. */
    void (*committed)(const struct row_event *events, size_t count, void *committed_context);
    /* Optional: the last seq the committed hook's consumer has applied (it may have more than
     * this writer committed: other instances' events, read by a follower). A shared backend's
     * prepare reads only the events after it. */
    int64_t (*applied_seq)(void *committed_context);
};

struct writer_stats { /* written by the writer, read by /metrics */
    _Atomic uint64_t batches;
    _Atomic uint64_t commands;
    _Atomic uint64_t batch_size_max;
    _Atomic uint64_t batch_failures;
    _Atomic uint64_t batch_retries; /* shared backend: prepared again after a lost race */
    _Atomic uint64_t replays;
    _Atomic uint64_t commit_us_total;
    _Atomic uint64_t commit_us_max;
    _Atomic uint64_t batch_size_buckets[WRITER_BATCH_BUCKETS];
};

struct writer_batch; /* per-batch scratch: rows, arena, batch-local idempotency table */

struct writer {
    struct writer_config config;
    struct writer_batch *batch; /* owned */
    int64_t order_seq;          /* last order number used (working) */
    int64_t event_seq;          /* last event number used (working) */
    int64_t order_seq_committed;
    int64_t event_seq_committed;
    int64_t reservation_seq; /* last reservation number used (working) */
    int64_t reservation_seq_committed;
    struct res_table reservations; /* ACTIVE reservations and their expiry heap */
    int64_t prune_due_ms;          /* wall time of the next idempotency pruning */
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    _Atomic bool storage_ok; /* false after a failed commit, until one succeeds */
    struct writer_stats stats;
};

/* Loads the domain from storage and prepares the batch scratch. 0, -ENOMEM or
 * SVC_ESTORAGE_UNAVAILABLE. Called by main before any I/O thread starts. */
int writer_init(struct writer *w, const struct writer_config *config);
/* Frees the scratch. The thread must have been stopped. */
void writer_deinit(struct writer *w);

/* Starts the writer thread. 0 or -errno. */
int writer_start(struct writer *w);
/* Asks the thread to finish the batch in hand and the queue's contents, then joins it. */
void writer_stop(struct writer *w);

/* Runs one batch synchronously on the calling thread: apply, commit, reply. The writer
 * thread's loop body; exposed for the unit tests. Takes ownership of every command until it
 * is handed to config.reply. */
void writer_run_batch(struct writer *w, struct command **commands, size_t count);

/* Deletes expired idempotency records if due; called by the loop when idle. */
void writer_housekeeping(struct writer *w);

#endif
