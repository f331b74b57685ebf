/*
 * store.h - the storage interface: a writer handle for the writer thread, reader handles for
 * everyone else.
 *
 * A backend keeps the durable copy of everything: stores, products, stock items, orders,
 * reservations, idempotency records and the event log (the outbox). The writer talks to its
 * handle in a fixed rhythm per batch:
 *
 *   store_prefetch      one round of reads: everything the batch will look at that memory
 *                       does not hold (idempotency records of its keys, ended reservations it
 *                       names; on a shared backend also the rows it locks and re-reads)
 *   (apply in memory: no store call at all; store_apply_begin/end mark it, and every read
 *    operation asserts it is not called in between)
 *   store_commit_batch  every row of the batch in ONE transaction, durable on return 0
 *
 * Reader handles (store_reader_*) serve the I/O threads, the projector's replays and rebuilds,
 * the follower and the audit; each thread opens its own. The two handles have separate
 * operations tables. Opening one by uri is store_open.h's job (it knows the backends; this
 * file does not). The schema with its CHECK and UNIQUE constraints is in schema.c.
 *
 * This file is not the writer (core/writer.h) and not the read model (read/projector.h).
 * Read store_open.h next.
 */
#ifndef STOCKD_STORE_H
#define STOCKD_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/svc_limits.h"

struct store;        /* a backend's writer handle; owned by whoever opened it */
struct store_reader; /* a backend's read-only handle, one per thread */

/* ---- rows a batch writes ---------------------------------------------------------------- */

struct row_store {
    const char *store_id;
    const char *name;
    int64_t latency_ms;
    int64_t created_at_ms;
};

struct row_product {
    const char *sku;
    const char *name;
    int64_t created_at_ms;
};

struct row_item { /* the new full value of a stock item, coalesced per batch */
    const char *store_id;
    const char *sku;
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
    int64_t sold;
    int64_t updated_at_ms;
};

struct row_order {
    int64_t order_seq; /* orderId is "ord_<seq>" */
    const char *customer_id;
    const char *store_id;
    const char *status;
    const char *lines_json;   /* [{"sku":..,"qty":..}] */
    const char *history_json; /* [{"status":..,"at":..}] */
    int64_t created_at_ms;
    int64_t reservation_seq; /* a checkout order's hold (issue 11), else 0: a purchase */
    int64_t expires_at_ms;   /* a checkout order's TTL, else 0 */
};

/* A checkout order's step: its new status and one more history entry, appended to the stored
 * history by the backend (several steps of one order in a batch apply in order). */
struct row_order_step {
    int64_t order_seq;
    const char *status;
    const char *history_entry_json; /* {"status":..,"at":..[,"reason":..]} */
    int64_t updated_at_ms;
};

/* A stage's offset in the event log (worker_offsets), written with the effects it caused. */
struct row_stage_offset {
    const char *stage; /* "order", "payment" */
    int64_t seq;       /* every event up to seq is consumed */
    int64_t updated_at_ms;
};

/* A dead letter (table dead_letters): written (upserted) when a work item exhausted its
 * attempts, deleted (remove) when it is replayed. */
struct row_dead_letter {
    const char *stage; /* "payment", or "commands" (a stream message: order_seq 0) */
    int64_t order_seq; /* 0: a stream message's, keyed by stream_offset (stream_dead_letters;
                        * attempts counts how often it was seen, never removed) */
    int64_t reservation_seq;
    const char *error;
    int64_t attempts;
    int64_t at_ms;
    bool remove;
    int64_t stream_offset; /* order_seq 0 only */
    /* order_seq 0: the message as it came (kept from its first dead-lettering), for a replay:
     * its message-id, type and principal header (NULL: absent), its body (NULL: not kept). */
    const char *message_id;
    const char *message_type;
    const char *message_principal;
    const char *message_body;
    size_t message_body_length;
};

struct row_idem {
    const char *principal;
    const char *idem_key;
    uint64_t fingerprint;
    int status;
    bool problem;     /* the body is application/problem+json */
    const char *body; /* the first response, byte for byte */
    size_t body_length;
    const char *location; /* the first response's Location header, or NULL */
    int64_t created_at_ms;
};

/* An event as the events table holds it. The writer encodes the data (core/events.h); the
 * store never looks inside. */
struct row_event {
    int64_t seq;
    const char *event_type; /* the catalogue's name, e.g. "OrderCompleted" */
    int event_version;
    int64_t occurred_at_ms;
    const char *store_id; /* may be NULL */
    const char *sku;      /* may be NULL */
    const char *data_json;
};

struct row_reservation { /* the reservation after the batch (insert or update) */
    int64_t reservation_seq;
    const char *store_id;
    const char *customer_id;
    const char *status;
    int64_t expires_at_ms;
    int64_t version;
    int64_t created_at_ms;
    int64_t updated_at_ms;
    int64_t order_seq;        /* the checkout order it holds stock for, or 0 */
    const char *order_status; /* that order's state while ACTIVE (NULL when none) */
    int64_t pay_attempts;
};

struct row_reservation_line { /* written once, with a new reservation */
    int64_t reservation_seq;
    int line_no;
    const char *sku;
    int64_t qty;
};

/* A snapshot of the read model (read/projector_snapshot.c encodes and checks the body; the
 * store never looks inside). */
struct row_snapshot {
    int64_t seq; /* the last event the snapshot includes: the log up to it, replayed */
    int format;  /* the encoder's format version */
    int64_t created_at_ms;
    const void *body; /* borrowed: the writer's buffer, or the store's during a read */
    size_t length;    /* bytes of body, >= 1 */
};

/* Everything one batch writes. Arrays are owned by the writer and valid during the call. */
struct store_batch {
    const struct row_store *stores;
    size_t store_count;
    const struct row_product *products;
    size_t product_count;
    const struct row_item *items;
    size_t item_count;
    const struct row_order *orders;
    size_t order_count;
    const struct row_idem *idems;
    size_t idem_count;
    const struct row_event *events;
    size_t event_count;
    const struct row_reservation *reservations;
    size_t reservation_count;
    const struct row_reservation_line *reservation_lines;
    size_t reservation_line_count;
    const struct row_order_step *order_steps; /* after the orders of the batch */
    size_t order_step_count;
    const struct row_stage_offset *offsets;
    size_t offset_count;
    const struct row_dead_letter *dead_letters; /* in the batch's order */
    size_t dead_letter_count;
};

/* ---- what the writer reads ---------------------------------------------------------------- */

/* A stored idempotency record, as prefetch reports it. Strings are valid during the call. */
struct store_idem_record {
    const char *principal;
    const char *key;
    uint64_t fingerprint;
    int status;
    bool problem;
    const char *body;
    size_t body_length;
    const char *location; /* NULL when the first response had none */
};

/* Where store_load and store_prefetch report what they read, row by row. Every callback
 * returns 0 or an error that stops the read and is returned by it. Strings are valid during
 * the call only. */
struct store_sink {
    void *context;
    int (*on_store)(void *context, const char *id, const char *name, int64_t latency_ms);
    int (*on_product)(void *context, const char *sku, const char *name);
    int (*on_item)(void *context, const char *store_id, const char *sku, int64_t on_hand,
                   int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms);
    /* An ACTIVE reservation, then each of its lines in line order (its lines may also come
     * after all the reservations of the read). Each reservation at most once per read. */
    int (*on_reservation)(void *context, int64_t seq, const char *store_id, const char *customer_id,
                          int64_t expires_at_ms, int64_t version, int64_t created_at_ms);
    int (*on_reservation_line)(void *context, int64_t seq, const char *sku, int64_t qty);
    /* Prefetch only (NULL at load): a reservation of keys that is not ACTIVE: its final
     * status and version, or status NULL (version 0) when there is no such reservation. */
    int (*on_reservation_ended)(void *context, int64_t seq, const char *status, int64_t version);
    /* Prefetch only: the stored record of one of keys' idempotency keys. Keys without a
     * record are simply not reported. */
    int (*on_idem)(void *context, const struct store_idem_record *record);
    /* Prefetch of a shared backend only: the events other instances committed after
     * keys->events_after, in seq order (at most STORE_GAP_EVENTS_MAX). */
    int (*on_events)(void *context, const struct row_event *rows, size_t count);
    /* Right after on_reservation of a reservation that holds a checkout order's stock: the
     * order and its state (NULL: may be left NULL by a sink that holds no orders). */
    int (*on_reservation_order)(void *context, int64_t seq, int64_t order_seq,
                                const char *order_status, int64_t pay_attempts);
    /* Prefetch of a shared backend only: the current token of each of keys->lease_stages that
     * has a lease row (worker_leases), the row locked against a takeover until the batch ends.
     * A stage without a row is not reported. */
    int (*on_lease)(void *context, const char *stage, int64_t token);
};

/* The most events of other instances one prefetch hands on (more are left to the follower). */
#define STORE_GAP_EVENTS_MAX 4096

/* The high-water marks of the sequences, so new ids continue after them. */
struct store_sequences {
    int64_t order_seq_max;
    int64_t event_seq_max;
    int64_t reservation_seq_max;
};

struct store_item_key {
    const char *store_id;
    const char *sku;
};

struct store_idem_key {
    const char *principal;
    const char *key;
};

/* What a batch will read. Every backend answers idems and reservation_seqs; a shared backend
 * also locks and re-reads items, stores and skus (a backend no one else writes leaves them to
 * memory, which is the truth there). */
struct store_prefetch_keys {
    const struct store_idem_key *idems; /* keys of the batch's keyed commands */
    size_t idem_count;
    /* Reservations the batch names (confirm, cancel, due expiries). On a shared backend, all
     * of them: each is locked and reported either ACTIVE (with its lines) or ended. On a
     * backend the writer owns, only those memory does not hold (ended or unknown ones): each
     * is reported through on_reservation_ended. */
    const int64_t *reservation_seqs;
    size_t reservation_count;
    /* Shared backends only. */
    const struct store_item_key *items; /* stock rows, any order, duplicates allowed */
    size_t item_count;
    const char *const *store_ids; /* stores the batch names */
    size_t store_count;
    const char *const *skus; /* products the batch names */
    size_t sku_count;
    int64_t events_after; /* the last event seq this instance has seen */
    /* The stages whose workers' steps the batch holds ("order", "payment"): their lease rows
     * are read and share-locked (on_lease), so that a lease taken over after this read waits
     * for the batch's commit. */
    const char *const *lease_stages;
    size_t lease_stage_count;
};

/* commit_batch's answer when another instance won a race on a unique key (an idempotency
 * key, a new store or product) or a version guard: nothing was written; prefetch and apply the
 * batch again. */
#define STORE_COMMIT_RETRY 1

/* ---- the operations of a backend ---------------------------------------------------------- */

/* Where the sweep of store_idem_prune stands: the last key it looked at ("" and "" before the
 * first; an Idempotency-Key is never empty). */
#define STORE_SWEEP_NAME_BYTES 512
struct store_idem_sweep {
    char principal[STORE_SWEEP_NAME_BYTES];
    char key[STORE_SWEEP_NAME_BYTES];
};

/* The write-ahead log's counters of a backend that keeps its own (SQLite). */
struct store_wal_counts {
    uint64_t pages;       /* pages (frames) the commits appended to it, since the start */
    uint64_t checkpoints; /* copies of it into the database file, since the start */
};

/* The writer handle's operations (the store_* functions below forward to them). */
struct store_ops {
    const char *name;
    bool shared; /* other processes may write the same database */
    void (*close)(struct store *s);
    int (*load)(struct store *s, const struct store_sink *sink, struct store_sequences *out);
    /* On a shared backend it opens the batch's transaction (held until commit_batch or the next
     * prefetch, which rolls it back) and fills *out; otherwise *out is left alone. */
    int (*prefetch)(struct store *s, const struct store_prefetch_keys *keys,
                    const struct store_sink *sink, struct store_sequences *out);
    int (*commit_batch)(struct store *s, const struct store_batch *batch);
    void (*batch_done)(struct store *s);
    /* From sweep's key, the next max_rows records: deletes the old ones and moves sweep to the
     * last one looked at (past the end: back to "" "", and *swept). */
    int (*idem_prune)(struct store *s, struct store_idem_sweep *sweep, int64_t before_ms,
                      int max_rows, bool *swept);
    /* Shared backends only (else NULL). */
    int (*reservations_due)(struct store *s, int64_t before_ms, int64_t *out, int max);
    uint64_t (*busy_wait_count)(struct store *s);
    /* NULL when the database checkpoints itself (PostgreSQL). */
    void (*wal_counts)(struct store *s, struct store_wal_counts *out);
    /* NULL when the handle has no connection to lose (a file). */
    uint64_t (*session_count)(struct store *s);
    int (*snapshot_write)(struct store *s, const struct row_snapshot *row, int64_t keep_from_seq);
    int (*snapshot_read)(struct store *s, int64_t below_seq, void *context,
                         void (*each)(void *context, const struct row_snapshot *row));
};

/* A stored order's columns. Strings are valid until the next call on the same handle. */
struct store_order_row {
    const char *customer_id;
    const char *store_id;
    const char *status;
    const char *lines_json;
    const char *history_json;
    int64_t created_at_ms;
    int64_t reservation_seq; /* a checkout order's hold, 0 for a purchase */
    int64_t expires_at_ms;   /* a checkout order's TTL, 0 for a purchase */
    int64_t updated_at_ms;
};

/* A stored reservation as GET /v1/reservations/{id} shows it when the read model does not hold
 * it: its columns and its lines in line order (at most CMD_LINES_MAX, as the writer takes no
 * more). Strings are valid until the next call on the same handle. */
struct store_reservation_line {
    const char *sku;
    int64_t qty;
};
struct store_reservation_row {
    const char *store_id;
    const char *customer_id;
    const char *status; /* ACTIVE, CONFIRMED, CANCELLED or EXPIRED */
    int64_t expires_at_ms;
    int64_t version;
    int64_t created_at_ms;
    int64_t updated_at_ms;
    struct store_reservation_line lines[CMD_LINES_MAX];
    uint32_t line_count;
};

/* A checkout order whose charge is in doubt (its reservation ACTIVE, PAYING), for the
 * payment worker's restart. */
struct store_payment_row {
    int64_t order_seq;
    int64_t reservation_seq;
    int64_t pay_attempts;
    bool dead_lettered; /* its row is in dead_letters */
};

/* A worker's lease of a stage (table worker_leases) as a lease statement left it. */
#define STORE_LEASE_HOLDER_BYTES_MAX 127
struct store_lease {
    bool held;     /* the caller holds it (until its ttl, counted from before the call) */
    int64_t token; /* the holder's token, one more at each acquisition; 0: no row seen */
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1]; /* the holder, "" when no row was seen */
};

/* A dead letter as GET /v1/dlt lists it. Strings are valid during the callback. */
struct store_dead_letter_row {
    const char *stage;
    int64_t order_seq;       /* 0 for a stream message's */
    int64_t reservation_seq; /* 0 for a stream message's */
    const char *error;
    int64_t attempts;
    int64_t first_failed_at_ms;
    int64_t last_failed_at_ms;
    int64_t stream_offset; /* a stream message's offset, -1 for an order's */
};

/* A stream message's dead letter that was not replayed yet, with the message as it came, for
 * POST /v1/dlt/replay. Strings and body are valid during the callback; NULL when absent (the
 * body also when it was not kept, or the row predates migration 12). */
struct store_stream_message_row {
    const char *stage;
    int64_t stream_offset;
    const char *message_id;
    const char *message_type;
    const char *message_principal;
    const char *body;
    size_t body_length;
};

/* A stored idempotency record as GET /v1/idempotency/{key} shows it. body points into the
 * reader's memory and stays valid until the next call on the same handle. */
struct store_idem_view {
    int status;
    bool problem;
    const char *body;
    size_t body_length;
    int64_t created_at_ms;
    const char *location; /* the first response's Location header (valid as body), or NULL */
};

/* The reader handle's operations. */
struct store_reader_ops {
    const char *name;
    void (*close)(struct store_reader *r);
    int (*order)(struct store_reader *r, int64_t order_seq, struct store_order_row *out);
    int (*reservation)(struct store_reader *r, int64_t reservation_seq,
                       struct store_reservation_row *out);
    int (*events)(struct store_reader *r, int64_t since_seq, const char *store_id, const char *sku,
                  int limit, void *context,
                  int (*each_event)(void *context, const struct row_event *row));
    int (*items)(struct store_reader *r, void *context,
                 int (*each_item)(void *context, const char *store_id, const char *sku,
                                  int64_t on_hand, int64_t reserved));
    int (*event_seq_max)(struct store_reader *r, int64_t *out);
    int (*events_of)(struct store_reader *r, int64_t since_seq, int64_t until_seq,
                     const char *const *types, int type_count, int limit, void *context,
                     int (*each_event)(void *context, const struct row_event *row), int *count_out);
    int (*idem)(struct store_reader *r, const char *principal, const char *key,
                struct store_idem_view *out);
    /* NULL when no other process writes the database. */
    int (*wait)(struct store_reader *r, int timeout_ms, int64_t *seq_out);
    /* One snapshot for the reads in between (a read-only transaction). */
    int (*snapshot_begin)(struct store_reader *r);
    int (*snapshot_end)(struct store_reader *r);
    /* NULL when the handle's connection cannot be lost (a file). */
    void (*watch_recoveries)(struct store_reader *r, const _Atomic uint64_t *recoveries);
    int (*stage_offset)(struct store_reader *r, const char *stage, int64_t *out);
    int (*payments_in_doubt)(struct store_reader *r, void *context,
                             int (*each)(void *context, const struct store_payment_row *row));
    /* The outbox relay's position (relay_offsets): read, and advanced (never moved back). */
    int (*relay_offset)(struct store_reader *r, const char *name, int64_t *out);
    int (*relay_offset_save)(struct store_reader *r, const char *name, int64_t seq, int64_t at_ms);
    /* The dead letters of stage (NULL: every stage) by order, at most limit. */
    int (*dead_letters)(struct store_reader *r, const char *stage, int limit, void *context,
                        int (*each)(void *context, const struct store_dead_letter_row *row));
    /* The stream messages' dead letters of stage not replayed yet, by offset, and their mark. */
    int (*stream_messages)(struct store_reader *r, const char *stage, int limit, void *context,
                           int (*each)(void *context, const struct store_stream_message_row *row));
    int (*stream_replayed)(struct store_reader *r, const char *stage, const int64_t *offsets,
                           size_t count, int64_t at_ms);
    /* NULL when no other process writes the database (the caller always holds the lease). */
    int (*lease)(struct store_reader *r, const char *stage, const char *holder, int64_t token,
                 int64_t ttl_ms, struct store_lease *out);
};

/* For the backends: sets *sweep to (principal, key), of p_len and k_len bytes, and returns
 * true. A name too long for the cursor (none that stockd writes: principals and keys are
 * bounded far below it) is logged and leaves *sweep alone: false, the step then deletes
 * nothing and the sweep starts again from the first key. */
bool store_sweep_set(struct store_idem_sweep *sweep, const char *principal, size_t p_len,
                     const char *key, size_t k_len);

/* Every backend's writer handle begins with this. */
struct store {
    const struct store_ops *ops;
    bool applying; /* between store_apply_begin and store_apply_end: no reads allowed */
    struct store_idem_sweep idem_sweep; /* owned by store_idem_prune */
};

/* Every backend's reader handle begins with this. */
struct store_reader {
    const struct store_reader_ops *ops;
};

/* ---- the writer handle -------------------------------------------------------------------- */

/* Closes and frees (NULL is fine). */
void store_close(struct store *s);
/* The backend's name ("sqlite", "postgres"). */
const char *store_backend_name(const struct store *s);
/* True when other processes may write the same database: the writer's memory is then a cache
 * that every prefetch refreshes. */
bool store_is_shared(const struct store *s);

/* Streams every store, product, item and ACTIVE reservation to sink and reports the
 * sequences. 0 or SVC_ESTORAGE_UNAVAILABLE. Called once, before the writer starts. */
int store_load(struct store *s, const struct store_sink *sink, struct store_sequences *out);

/* The batch's one round of reads (see the top of this file and struct store_prefetch_keys).
 * 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_prefetch(struct store *s, const struct store_prefetch_keys *keys,
                   const struct store_sink *sink, struct store_sequences *out);

/* Marks the writer's pure apply step: from begin to end no operation of s may be called but
 * store_apply_end (asserted). Called by the writer around every apply. */
void store_apply_begin(struct store *s);
void store_apply_end(struct store *s);

/* Writes the whole batch in one transaction and makes it durable. 0, STORE_COMMIT_RETRY, or
 * SVC_ESTORAGE_UNAVAILABLE with nothing of the batch written (or, when the connection broke
 * during COMMIT, in doubt: a shared backend's next prefetch reads what really happened). */
int store_commit_batch(struct store *s, const struct store_batch *batch);

/* Called by the writer between batches, after the replies left: housekeeping such as keeping
 * the SQLite WAL bounded. Cheap when there is nothing to do. */
void store_batch_done(struct store *s);

/* One step of the sweep that prunes idempotency records (there is no index by age): looks at
 * the next max_rows records in key order, from where the handle's previous step stopped, and
 * deletes those created before before_ms. *swept is set when the step reached the end of the
 * table: the next one starts again from the first key. Returns how many were deleted or
 * SVC_ESTORAGE_UNAVAILABLE (the sweep then resumes where it was). */
int store_idem_prune(struct store *s, int64_t before_ms, int max_rows, bool *swept);

/* Shared backends: writes into out the seqs of up to max ACTIVE reservations that expired
 * before before_ms, whichever instance made them (one that stopped for good leaves its
 * reservations to the others). Returns how many, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reservations_due(struct store *s, int64_t before_ms, int64_t *out, int max);

/* How many times the writer's connection found the database busy and waited (SQLite). Any
 * thread, any time: an atomic counter, not a read of storage. */
uint64_t store_busy_wait_count(struct store *s);

/* The write-ahead log of a backend that keeps its own (SQLite; all 0 on a database that
 * checkpoints itself). Any thread, any time: counters, not reads of storage. */
void store_wal_counts(struct store *s, struct store_wal_counts *out);

/* How many sessions (connections) to the database the handle has opened so far: it moves when
 * the handle connected again after losing its connection (PostgreSQL restarted, the session
 * was terminated or timed out), that is when storage came back after an outage. 0 for a
 * backend without sessions (SQLite). Writer thread only. */
uint64_t store_session_count(struct store *s);

/* Writes a snapshot of the read model in its own transaction, and in the same transaction
 * deletes the snapshots older than keep_from_seq (the writer keeps the one before the new one,
 * so that a damaged newest still leaves a fallback). A snapshot of the same seq already there
 * (another instance's, or a damaged one) is replaced: both are the same replay. Called
 * by the writer thread between batches, never inside one. 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_snapshot_write(struct store *s, const struct row_snapshot *row, int64_t keep_from_seq);

/* Reads the newest snapshot whose seq is below below_seq and hands it to each (its body valid
 * during the call only). 1 when there was one, 0 when none, or SVC_ESTORAGE_UNAVAILABLE.
 * Called at startup, before the writer starts (main: the read model's load). */
int store_snapshot_read(struct store *s, int64_t below_seq, void *context,
                        void (*each)(void *context, const struct row_snapshot *row));

/* ---- reader handles ------------------------------------------------------------------------ */

/* Closes and frees (NULL is fine). */
void store_reader_close(struct store_reader *r);

/* Reads order ord_<seq>. 1 found (out set), 0 absent, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_order(struct store_reader *r, int64_t order_seq, struct store_order_row *out);

/* Reads reservation res_<seq> with its lines, in one statement (one snapshot). 1 found (out
 * set), 0 absent, or SVC_ESTORAGE_UNAVAILABLE (also for a stored row the writer cannot have
 * written: more than CMD_LINES_MAX lines, none at all). For GET /v1/reservations/{id} when
 * the read model does not hold the reservation (its table is full, read/projector.h). */
int store_reader_reservation(struct store_reader *r, int64_t reservation_seq,
                             struct store_reservation_row *out);

/* Streams the events with seq > since_seq, in seq order, at most limit of them, optionally only
 * those of store_id and/or sku (NULL: any), to each_event. The row's strings are valid during
 * the call only. A non-zero return of each_event stops the scan and is returned. Otherwise 0
 * or SVC_ESTORAGE_UNAVAILABLE; a failed scan never calls each_event again. */
int store_reader_events(struct store_reader *r, int64_t since_seq, const char *store_id,
                        const char *sku, int limit, void *context,
                        int (*each_event)(void *context, const struct row_event *row));

/* The most event types one store_reader_events_of selects. */
#define STORE_EVENT_TYPES_MAX 2

/* Streams the events with since_seq < seq <= until_seq whose type is one of types (type_count
 * of them, 1..STORE_EVENT_TYPES_MAX), in seq order, at most limit of them, to each_event, and
 * sets *count_out to how many it streamed. For a reader that needs a few kinds of event out of
 * a long log (the workers: the order events among the purchases): the database skips the
 * others. When *count_out < limit, every event up to until_seq was looked at. Returns as
 * store_reader_events. */
int store_reader_events_of(struct store_reader *r, int64_t since_seq, int64_t until_seq,
                           const char *const *types, int type_count, int limit, void *context,
                           int (*each_event)(void *context, const struct row_event *row),
                           int *count_out);

/* Streams every stored stock item. 0, the callback's non-zero return, or
 * SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_items(struct store_reader *r, void *context,
                       int (*each_item)(void *context, const char *store_id, const char *sku,
                                        int64_t on_hand, int64_t reserved));

/* The highest seq in the events table (0 when empty). 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_event_seq_max(struct store_reader *r, int64_t *out);

/* Looks up (principal, key). 1 found, 0 absent, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_idem(struct store_reader *r, const char *principal, const char *key,
                      struct store_idem_view *out);

/* Makes the reads of r up to store_reader_snapshot_end see one snapshot of the database (a
 * read-only transaction), so that two reads agree with each other while the writer commits:
 * the audit's scan of the event log and of the stock rows. 0 or SVC_ESTORAGE_UNAVAILABLE (no
 * snapshot: the caller must not go on). */
int store_reader_snapshot_begin(struct store_reader *r);
/* Ends the snapshot (also after a failed read). 0 when every read since the begin saw the one
 * snapshot, SVC_ESTORAGE_UNAVAILABLE when it broke (a lost connection: the reads after it
 * were outside it) or could not end. */
int store_reader_snapshot_end(struct store_reader *r);

/* From now on r compares *recoveries (borrowed: it must outlive r) with the value it last saw
 * before each read, and when it moved replaces its connection before reading: the writer
 * bumps it when storage came back after an outage (core/writer.h), so that a reader whose
 * session died meanwhile does not find out by failing a read. Only the thread that owns r
 * acts on it; no connection is touched from another thread. A backend whose readers cannot
 * lose their connection (SQLite) ignores it. Called by each I/O thread after opening its
 * reader. */
void store_reader_watch_recoveries(struct store_reader *r, const _Atomic uint64_t *recoveries);

/* The stored offset of a stage of the workers (0 when it never moved). 0 or
 * SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_stage_offset(struct store_reader *r, const char *stage, int64_t *out);

/* The stored position of the outbox relay `name` (0 when it never moved). 0 or
 * SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_relay_offset(struct store_reader *r, const char *name, int64_t *out);
/* Advances the relay's position to seq (a lower seq than the stored one leaves it), in a
 * transaction of its own: a write of a reader handle, for the relay that owns it
 * (relay/relay.h), which no other thread writes. SQLite opens a second, read-write connection
 * for it on first use. 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_relay_offset_save(struct store_reader *r, const char *name, int64_t seq,
                                   int64_t at_ms);

/* Streams every checkout order with a charge in doubt (PAYING), by order seq. 0, the
 * callback's non-zero return, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_payments_in_doubt(struct store_reader *r, void *context,
                                   int (*each)(void *context, const struct store_payment_row *row));
/* The dead letters of stage (NULL: all): the stream messages' by offset (stream_dead_letters),
 * then the orders' by order, at most limit (1..DLT_LIST_MAX);
 * each is called per row (a non-zero return stops and is returned). 0 or an error. */
int store_reader_dead_letters(struct store_reader *r, const char *stage, int limit, void *context,
                              int (*each)(void *context, const struct store_dead_letter_row *row));

/* The dead letters of stream messages of stage that were not replayed yet, with the messages
 * as they came, by stream offset, at most limit (1..DLT_LIST_MAX): each is called per row (a
 * non-zero return stops and is returned). 0 or an error. For POST /v1/dlt/replay. */
int store_reader_stream_messages(struct store_reader *r, const char *stage, int limit,
                                 void *context,
                                 int (*each)(void *context,
                                             const struct store_stream_message_row *row));
/* Marks the stream dead letters of stage at offsets (count of them, 1..DLT_REPLAY_MESSAGES_MAX)
 * replayed at at_ms: GET /v1/dlt no longer lists them, and a later dead-lettering of the same
 * offset (a restart reading it again) counts an attempt without listing it again. One
 * statement in its own transaction, like store_reader_relay_offset_save: a mark is no
 * business data (no event, no stock), so it is no command of the writer (SQLite writes it on
 * the reader's read-write connection). 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_stream_replayed(struct store_reader *r, const char *stage, const int64_t *offsets,
                                 size_t count, int64_t at_ms);

/* A write of a reader handle: a worker's lease of stage (not business data, so it is no
 * command of the writer; one statement in its own transaction, on the database's clock).
 * token 0 acquires: holder takes the lease if it has no row, has expired, or is holder's
 * already, with a new token (the row's + 1). token >= 1 renews: the lease is extended to
 * ttl_ms from now only while holder still holds it with that token (even past its expiry, as
 * nobody took it meanwhile); ttl_ms 0 with a token releases it (it expires now). out says
 * whether holder holds it after the call, and the row's holder and token. On a backend no
 * other process writes, the caller always holds it (token 1, nothing stored). 0 or
 * SVC_ESTORAGE_UNAVAILABLE (out->held false). */
int store_reader_lease(struct store_reader *r, const char *stage, const char *holder, int64_t token,
                       int64_t ttl_ms, struct store_lease *out);

/* Waits up to timeout_ms for another instance to commit events (PostgreSQL LISTEN/NOTIFY).
 * 1 notified (*seq_out: the newest seq announced, or 0 if unknown), 0 timed out, or
 * SVC_ESTORAGE_UNAVAILABLE. A backend that no other process writes returns 0 at once. */
int store_reader_wait(struct store_reader *r, int timeout_ms, int64_t *seq_out);

#endif
