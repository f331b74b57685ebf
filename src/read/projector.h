/*
 * projector.h - the read model: projections of the event log that the query routes serve.
 *
 * A projection holds stores, products, stock items (onHand, reserved, version per store and
 * sku), reservations and the last applied seq. It is fed ONLY by events (events.h): at startup
 * by replaying the events table, then by the writer's committed hook with every durable batch,
 * before that batch's replies leave (read-your-writes). It never looks at the writer's domain.
 *
 * Concurrency: one thread applies at a time (the writer thread through the hook, or a rebuild
 * thread into a projection nobody reads yet). Readers on I/O threads take no lock: tables are
 * allocated at startup, rows are appended and published with release stores, and the mutable
 * fields of items and reservations are read under a per-row seqlock (as domain.c does). Two
 * projections exist; a rebuild replays the log into the idle one and swaps the live pointer.
 * A reader pins the projection it reads (projector_read_begin/end) so that a later rebuild
 * never resets one still being read.
 *
 * This file is not the HTTP layer (api_queries.c formats the responses) and not storage
 * (store.h streams the log). Read api_queries.c next.
 */
#ifndef STOCKD_PROJECTOR_H
#define STOCKD_PROJECTOR_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/events.h"
#include "store/store.h"
#include "base/capacity.h"
#include "base/svc_limits.h"

struct projection;      /* one instance of the read model; see projector.c */
struct projector_chunk; /* the follower's scratch; see projector.c */

enum projector_status {
    PROJECTOR_ACTIVE = 0,
    PROJECTOR_CONFIRMED,
    PROJECTOR_CANCELLED,
    PROJECTOR_EXPIRED,
};

/* Called with each run of events right after they were applied (the SSE feed), on the thread
 * that applied them (the writer thread after its replies left, or the follower), under the
 * apply mutex: one tap call at a time. Must not block or allocate: it may only copy the events
 * into memory it owns and signal. The events are valid during the call only. */
typedef void (*projector_tap)(const struct event *events, size_t count, void *context);

struct projector_tap_entry {
    projector_tap tap;
    void *context;
};

/* What one reader thread has pinned (or NULL), alone on its cache line so that readers on
 * different threads never write to the same line. */
struct projector_pin {
    _Alignas(64) _Atomic(struct projection *) pinned;
    char padding[64 - sizeof(void *)];
};

struct projector {
    struct projection *instances[2];   /* owned */
    _Atomic(struct projection *) live; /* the one readers and the hook use */
    pthread_mutex_t apply_mutex;       /* hook vs. rebuild finish vs. tap registration;
                                        * never taken by readers */
    _Atomic bool rebuilding;
    _Atomic int64_t rebuilt_at_ms; /* wall ms of the last finished rebuild, 0 never */
    _Atomic int64_t log_seq;       /* newest committed seq seen by the hook */
    _Atomic int64_t own_seq;       /* the last seq this instance's writer committed: its
                                    * events reach the hook right after its replies */
    _Atomic int64_t log_at_ms;     /* its occurredAt */
    char db_path[600];             /* for the rebuild's own reader connection */
    struct projector_tap_entry taps[IO_THREADS_MAX]; /* under apply_mutex */
    uint32_t tap_count;
    struct projector_pin pins[PROJ_READER_SLOTS]; /* one per reader thread */
    struct projector_chunk *follow_chunk;         /* owned; allocated at projector_follow's first
                                                   * call: one caller (the follower thread) */
    _Atomic bool following;                       /* a projector_follow call is running */
    /* Snapshots (projector_snapshot.c). */
    int64_t snapshot_every_events;  /* 0: never written; set by main before the writer starts */
    _Atomic int64_t snapshot_seq;   /* the newest snapshot loaded or written (0: none) */
    int64_t snapshot_tried_seq;     /* the writer thread's last attempt */
    unsigned char *snapshot_buffer; /* owned; the writer thread's encoding */
    size_t snapshot_capacity;       /* bytes of snapshot_buffer */
    _Atomic uint64_t snapshots_written;
    _Atomic int64_t snapshot_bytes; /* size of the last one written */
};

/* Snapshots copied out for readers. */
struct projector_store {
    const char *id; /* points into the projection: immutable once published */
    const char *name;
    int64_t latency_ms;
};

struct projector_item {
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
    int64_t sold; /* units sold by purchase (seed 004's total_purchases) */
    int64_t updated_at_ms;
};

struct projector_line {
    uint32_t product_index;
    int64_t qty;
};

struct projector_reservation {
    const char *id; /* immutable once published */
    const char *customer_id;
    uint32_t store_index;
    int64_t expires_at_ms;
    int64_t created_at_ms;
    const struct projector_line *lines; /* immutable once published */
    uint32_t line_count;
    enum projector_status status;
    int64_t version; /* 1 when created, +1 per lifecycle event */
    int64_t updated_at_ms;
};

/* Allocates both projections (empty). db_path is copied for rebuilds. 0 or -ENOMEM. Called
 * by main before any thread starts. */
int projector_init(struct projector *p, const char *db_path, const struct capacity *capacity);
/* Frees them. No reader, hook or rebuild may be running. */
void projector_deinit(struct projector *p);

/* Replays the events table through reader into the live projection (startup). 0 or
 * SVC_ESTORAGE_UNAVAILABLE. */
int projector_load(struct projector *p, struct store_reader *reader);

/* Applies a run of committed events (seq ascending) to the live projection; events at or
 * below its applied seq are skipped, so overlap with a replay is harmless, and nothing past a
 * gap is applied. Then runs the taps on what it applied. Returns how many events were consumed
 * (applied or skipped). Called by the writer thread after a batch's replies left, and by the
 * follower. */
size_t projector_apply(struct projector *p, const struct event *events, size_t count);
/* Applies the events table after the live projection's applied seq, in chunks, until the end
 * of the log (the follower of a shared database). Returns how many events it consumed (applied,
 * or skipped because the writer's hook had applied them already). */
int64_t projector_follow(struct projector *p, struct store_reader *reader);
/* The applied seq of the live projection; and the same as a writer_config.applied_seq. */
int64_t projector_live_seq(struct projector *p);
int64_t projector_applied_hook(void *context);
/* Records that the log reaches seq (at at_ms), for the lag report. */
void projector_note_log(struct projector *p, int64_t seq, int64_t at_ms);
/* The writer_config.durable adapter: the writer committed the log up to seq and hands its
 * events to the hook right after its replies (the follower leaves those to it). */
void projector_durable_hook(int64_t seq, void *context);
/* The seq of the last projector_durable_hook (0 before any). */
int64_t projector_own_seq(struct projector *p);
/* The writer_config.committed adapter: context is the struct projector. */
void projector_committed_hook(const struct event *events, size_t count, void *context);
/* Waits up to timeout_us for the live projection to reach seq (a reply the client already
 * has). True when it did; false on timeout (the caller serves what is there, with its lag). */
bool projector_wait_seq(struct projector *p, int64_t seq, int64_t timeout_us);

/* ---- snapshots (projector_snapshot.c) ---- */

/* Loads the newest valid snapshot stored through s into the live projection, so that
 * projector_load then replays only the events after it. Called by main at start, before
 * projector_load; reader checks the snapshot against the log. Rows newest first, at most
 * PROJ_SNAPSHOT_LOAD_TRIES of them: one of another format version, or that fails a check, is
 * logged and skipped. 0 whether one was loaded or not (the replay covers the rest), or
 * SVC_ESTORAGE_UNAVAILABLE with the projection empty. */
int projector_snapshot_load(struct projector *p, struct store *s, struct store_reader *reader);
/* The writer_config.snapshot adapter (writer thread only, between batches): when one is due
 * (snapshot_every_events past the last; with final, any event past it), encodes the live
 * projection under the apply mutex into the projector's buffer and fills *out (its body
 * borrowed until the next call) and *keep_from_seq (the snapshot to keep beside it). 1 taken,
 * 0 not due, -ENOMEM. */
int projector_snapshot_take(void *context, bool final, struct row_snapshot *out,
                            int64_t *keep_from_seq);
/* The writer_config.snapshot_saved adapter: store_snapshot_write answered rc for row. */
void projector_snapshot_saved(void *context, const struct row_snapshot *row, int rc,
                              int64_t took_us);

/* Starts a rebuild on its own thread: replay the log into the idle projection, catch up with
 * the live seq, swap. 0 started, 1 already running, or -errno. */
int projector_rebuild_start(struct projector *p);
/* The same on the calling thread, for tests. 0 or SVC_ESTORAGE_UNAVAILABLE. */
int projector_rebuild_run(struct projector *p);

/* Registers a tap (SSE); any thread. SVC_ECAPACITY when IO_THREADS_MAX are registered. */
int projector_tap_add(struct projector *p, projector_tap tap, void *context);

/* ---- readers (any thread, lock-free) ---- */

/* Pins the live projection for the duration of one response; pair with projector_read_end on
 * the same thread. One pin per thread at a time (no nesting). Wait-free unless a rebuild swaps
 * the live projection in between, then it retries once. */
struct projection *projector_read_begin(struct projector *p);
void projector_read_end(struct projector *p, struct projection *v);

/* The seq and occurredAt of the last event applied to v. */
int64_t projector_applied_seq(const struct projection *v);
int64_t projector_applied_at_ms(const struct projection *v);
/* ms between the newest committed event and the newest applied one; 0 when caught up. */
int64_t projector_lag_ms(const struct projector *p, const struct projection *v);

/* Events v could not project: past a table's capacity, or impossible values (logged). */
uint64_t projector_dropped_count(const struct projection *v);

uint32_t projector_store_count(const struct projection *v);
void projector_store_get(const struct projection *v, uint32_t index, struct projector_store *out);
int32_t projector_store_find(const struct projection *v, const char *store_id);

uint32_t projector_product_count(const struct projection *v);
int32_t projector_product_find(const struct projection *v, const char *sku);
/* The sku and name of a product (immutable once published). */
const char *projector_product_sku(const struct projection *v, uint32_t index);
const char *projector_product_name(const struct projection *v, uint32_t index);

/* Copies the item of (product, store); false when that store never stocked it. */
bool projector_item_get(const struct projection *v, uint32_t product_index, uint32_t store_index,
                        struct projector_item *out);
/* Iterates over the items of a product in store index order: cursor -1 starts; returns the
 * next cursor (fill *store_index_out and *out) or -1 at the end. Items added meanwhile may or
 * may not be seen, each at most once. */
int32_t projector_item_next(const struct projection *v, uint32_t product_index, int32_t cursor,
                            uint32_t *store_index_out, struct projector_item *out);

uint32_t projector_reservation_count(const struct projection *v);
/* Copies reservation id; false when unknown. */
bool projector_reservation_find(const struct projection *v, const char *id,
                                struct projector_reservation *out);
const char *projector_status_name(enum projector_status status);

/* What /metrics reads of a projection: units sold over every item, reservations per status. */
struct projector_totals {
    int64_t units_sold;
    int64_t reservations[PROJECTOR_EXPIRED + 1]; /* by enum projector_status */
};
/* Adds up v's items and reservations (a pass over each table; each value read atomically,
 * the whole not one instant). */
void projector_totals_get(const struct projection *v, struct projector_totals *out);

#endif
