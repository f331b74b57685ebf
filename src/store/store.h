/*
 * store.h - the storage interface behind the writer.
 *
 * A backend (store_sqlite.c, store_pg.c; store.c picks one by uri) keeps the durable copy of
 * everything: stores, products, stock items, orders, idempotency records and the event log
 * (the outbox). The writer hands it one batch of rows at a time and it writes them in ONE
 * transaction; nothing of a batch is visible or durable until store_commit_batch returns 0.
 * Readers (I/O threads) get their own read-only handles. The schema with its CHECK and UNIQUE
 * constraints is in schema.c.
 *
 * Read writer.h next.
 */
#ifndef STOCKD_STORE_H
#define STOCKD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;        /* a backend's writer handle; owned by whoever opened it */
struct store_reader; /* a backend's read-only handle, one per I/O thread */

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
};

struct row_idem {
    const char *principal;
    const char *idem_key;
    uint64_t fingerprint;
    int status;
    bool problem;     /* the body is application/problem+json */
    const char *body; /* the first response, byte for byte */
    size_t body_length;
    int64_t created_at_ms;
};

struct row_event {
    int64_t seq;
    const char *event_type;
    int event_version;
    int64_t occurred_at_ms;
    const char *store_id; /* may be NULL */
    const char *sku;      /* may be NULL */
    const char *data_json;
    /* The stock item after the event, for stock events (events.h): the same values as in
     * data_json, structured so that in-process projections need not parse JSON. */
    bool is_stock;
    int64_t delta;
    int64_t reserved_delta;
    int64_t on_hand;
    int64_t reserved;
    int64_t version;
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
};

struct row_reservation_line { /* written once, with a new reservation */
    int64_t reservation_seq;
    int line_no;
    const char *sku;
    int64_t qty;
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
};

/* What the writer learns from storage at startup, row by row. */
struct store_loader {
    void *context;
    int (*on_store)(void *context, const char *id, const char *name, int64_t latency_ms);
    int (*on_product)(void *context, const char *sku, const char *name);
    int (*on_item)(void *context, const char *store_id, const char *sku, int64_t on_hand,
                   int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms);
    /* ACTIVE reservations, each followed by its lines in order. */
    int (*on_reservation)(void *context, int64_t seq, const char *store_id, const char *customer_id,
                          int64_t expires_at_ms, int64_t version, int64_t created_at_ms);
    int (*on_reservation_line)(void *context, int64_t seq, const char *sku, int64_t qty);
    /* store_prepare_batch only (NULL at load): a reservation of the keys that is no longer
     * ACTIVE (or does not exist). */
    int (*on_reservation_ended)(void *context, int64_t seq);
    /* store_prepare_batch only (NULL at load): the events other instances committed after
     * keys->events_after, in seq order (at most STORE_GAP_EVENTS_MAX; rows valid during the
     * call only), so that this instance's read model has them before its own batch's. */
    void (*on_events)(void *context, const struct row_event *rows, size_t count);
};

/* The most events of other instances one prepare hands on (more are left to the follower). */
#define STORE_GAP_EVENTS_MAX 4096

/* The high-water marks of the sequences, so new ids continue after them. */
struct store_sequences {
    int64_t order_seq_max;
    int64_t event_seq_max;
    int64_t reservation_seq_max;
};

/* A stored idempotency record. body points into the backend's memory and stays valid until
 * the next call on the same handle. */
struct store_idem_found {
    uint64_t fingerprint;
    int status;
    bool problem;
    const char *body;
    size_t body_length;
};

/* A stored order, formatted by the backend's reader as the v1 order JSON. */

/* A stored idempotency record as GET /v1/idempotency/{key} shows it. body points into the
 * reader's memory and stays valid until the next call on the same handle. */
struct store_idem_view {
    int status;
    bool problem;
    const char *body;
    size_t body_length;
    int64_t created_at_ms;
};

/* What a batch will touch, for a backend shared by several stockd instances: it locks these
 * rows and reports their committed values before the batch applies (store_prepare_batch). */
struct store_item_key {
    const char *store_id;
    const char *sku;
};

struct store_idem_key {
    const char *principal;
    const char *key;
};

struct store_batch_keys {
    const struct store_item_key *items; /* stock rows, any order, duplicates allowed */
    size_t item_count;
    const int64_t *reservation_seqs; /* reservations ended or confirmed by the batch; their
                                      * lines' stock rows are locked too */
    size_t reservation_count;
    const char *const *store_ids; /* stores the batch names */
    size_t store_count;
    const char *const *skus; /* products the batch names */
    size_t sku_count;
    const struct store_idem_key *idems; /* keys of the batch's keyed commands */
    size_t idem_count;
    int64_t events_after; /* the last event seq this instance has seen */
};

/* commit_batch's answer when another instance won a race on a unique key (an idempotency
 * key, a new store or product): nothing was written; prepare and apply the batch again. */
#define STORE_COMMIT_RETRY 1

/* A backend: the operations behind the store_* functions below. Each backend's handles begin
 * with a struct store / struct store_reader naming its table. */
struct store_ops {
    const char *name;
    void (*close)(struct store *s);
    int (*load)(struct store *s, const struct store_loader *loader, struct store_sequences *out);
    /* NULL for a backend that one process owns (its memory is the truth between batches). */
    int (*prepare_batch)(struct store *s, const struct store_batch_keys *keys,
                         const struct store_loader *fresh, struct store_sequences *out);
    int (*idem_find)(struct store *s, const char *principal, const char *key,
                     struct store_idem_found *out);
    int (*reservation_status)(struct store *s, int64_t seq, char status_out[16],
                              int64_t *version_out);
    int (*commit_batch)(struct store *s, const struct store_batch *batch);
    void (*batch_done)(struct store *s);
    int (*idem_prune)(struct store *s, int64_t before_ms, int max_rows);
    /* Shared backends only (else NULL). */
    int (*reservations_due)(struct store *s, int64_t before_ms, int64_t *out, int max);
    void (*reader_close)(struct store_reader *r);
    int (*reader_order_json)(struct store_reader *r, int64_t order_seq, char *out, size_t size,
                             size_t *length_out);
    int (*reader_events)(struct store_reader *r, int64_t since_seq, const char *store_id,
                         const char *sku, int limit, void *context,
                         int (*each_event)(void *context, const struct row_event *row));
    int (*reader_items)(struct store_reader *r, void *context,
                        int (*each_item)(void *context, const char *store_id, const char *sku,
                                         int64_t on_hand, int64_t reserved));
    int (*reader_event_seq_max)(struct store_reader *r, int64_t *out);
    int (*reader_idem)(struct store_reader *r, const char *principal, const char *key,
                       struct store_idem_view *out);
    /* NULL when no other process writes the database. */
    int (*reader_wait)(struct store_reader *r, int timeout_ms, int64_t *seq_out);
};

struct store {
    const struct store_ops *ops;
};

struct store_reader {
    const struct store_ops *ops;
};

/* Opens (creating if needed) the database named by uri: "postgres://..." or
 * "postgresql://..." for PostgreSQL (store_pg.c), else a filesystem path for SQLite
 * (store_sqlite.c). Applies the schema. 0 or SVC_ESTORAGE_UNAVAILABLE (detail logged). */
int store_open(struct store **out, const char *uri);
/* Closes and frees. */
void store_close(struct store *s);
/* The backend's name ("sqlite", "postgres"). */
const char *store_backend_name(const struct store *s);
/* True when other processes may write the same database (store_prepare_batch is needed). */
bool store_is_shared(const struct store *s);
/* True when uri names a PostgreSQL database. */
bool store_uri_is_postgres(const char *uri);

/* Streams every store, product and item to loader and reports the sequences. */
int store_load(struct store *s, const struct store_loader *loader, struct store_sequences *out);

/* Shared backends only: opens the batch's transaction, locks the stock rows of keys in key
 * order (then the reservations), takes the instance-wide sequencer lock and reports, through
 * fresh, the committed values of the stores, products, items and reservations named by keys
 * (ACTIVE ones with their lines, ended ones through on_reservation_ended), and the sequences.
 * The idempotency records of keys are fetched too, for store_idem_find. The transaction stays
 * open until store_commit_batch (or the next prepare, which rolls it back). Events committed
 * by other instances since keys->events_after go to fresh->on_events. 0 or
 * SVC_ESTORAGE_UNAVAILABLE. */
int store_prepare_batch(struct store *s, const struct store_batch_keys *keys,
                        const struct store_loader *fresh, struct store_sequences *out);

/* Looks up (principal, key). 1 found (out set), 0 absent, or SVC_ESTORAGE_UNAVAILABLE. */
int store_idem_find(struct store *s, const char *principal, const char *key,
                    struct store_idem_found *out);

/* Looks up a reservation that is not in memory (finished). 1 found (status copied, up to 15
 * bytes, and version set), 0 absent, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reservation_status(struct store *s, int64_t seq, char status_out[16],
                             int64_t *version_out);

/* Writes the whole batch in one transaction and makes it durable. 0, STORE_COMMIT_RETRY, or
 * SVC_ESTORAGE_UNAVAILABLE with nothing of the batch written (or, when the connection broke
 * during COMMIT, in doubt: a shared backend's next prepare reads what really happened). */
int store_commit_batch(struct store *s, const struct store_batch *batch);

/* Called by the writer between batches, after the replies left: keeps the WAL bounded (see
 * STORE_WAL_RESET_FRAMES in store_sqlite.c). Cheap when there is nothing to do. */
void store_batch_done(struct store *s);

/* Deletes at most max_rows idempotency records created before before_ms; returns how many
 * were deleted or SVC_ESTORAGE_UNAVAILABLE. */
int store_idem_prune(struct store *s, int64_t before_ms, int max_rows);

/* Shared backends: writes into out the seqs of up to max ACTIVE reservations that expired
 * before before_ms, whichever instance made them (one that stopped for good leaves its
 * reservations to the others). Returns how many, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reservations_due(struct store *s, int64_t before_ms, int64_t *out, int max);

/* How many times the writer's SQLite connection found the database busy and waited. */
uint64_t store_busy_wait_count(void);

/* Opens a read-only handle on the same database for one I/O thread. */
int store_reader_open(struct store_reader **out, const char *uri);
/* The backends' own openers (store_open and store_reader_open choose by uri). */
int store_sqlite_open(struct store **out, const char *uri);
int store_sqlite_reader_open(struct store_reader **out, const char *uri);
int store_pg_open(struct store **out, const char *uri);
int store_pg_reader_open(struct store_reader **out, const char *uri);
uint64_t store_sqlite_busy_wait_count(void);
void store_reader_close(struct store_reader *r);

/* Formats order ord_<seq> as JSON into out (size bytes). 1 found, 0 absent, or
 * SVC_ESTORAGE_UNAVAILABLE. *length_out gets the bytes written. */
int store_reader_order_json(struct store_reader *r, int64_t order_seq, char *out, size_t size,
                            size_t *length_out);

/* Both backends' reader: the v1 order JSON from the order row's columns (customer_id,
 * store_id, status, lines JSON, history JSON) and created_at_ms. 1, or SVC_ECAPACITY. */
int store_order_json(int64_t order_seq, const char *const columns[5], int64_t created_at_ms,
                     char *out, size_t size, size_t *length_out);

/* Streams the events with seq > since_seq, in seq order, at most limit of them, optionally only
 * those of store_id and/or sku (NULL: any), to each_event (is_stock false: the structured stock
 * fields are not filled; parse data_json). The row's strings are valid during the call only. A
 * non-zero return of each_event stops the scan and is returned. Otherwise 0 or
 * SVC_ESTORAGE_UNAVAILABLE; a failed scan never calls each_event again. Used by the projector
 * (replay at startup and rebuild), GET /v1/events and the SSE replay. */
int store_reader_events(struct store_reader *r, int64_t since_seq, const char *store_id,
                        const char *sku, int limit, void *context,
                        int (*each_event)(void *context, const struct row_event *row));

/* Streams every stored stock item (the durable state the audit compares the log with). The
 * strings are valid during the call only. 0, the callback's non-zero return, or
 * SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_items(struct store_reader *r, void *context,
                       int (*each_item)(void *context, const char *store_id, const char *sku,
                                        int64_t on_hand, int64_t reserved));

/* The highest seq in the events table (0 when empty) into *out. 0 or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_event_seq_max(struct store_reader *r, int64_t *out);

/* Looks up (principal, key) on a reader. 1 found, 0 absent, or SVC_ESTORAGE_UNAVAILABLE. */
int store_reader_idem(struct store_reader *r, const char *principal, const char *key,
                      struct store_idem_view *out);

/* Waits up to timeout_ms for another instance to commit events (PostgreSQL LISTEN/NOTIFY).
 * 1 notified (*seq_out: the newest seq announced, or 0 if unknown), 0 timed out, or
 * SVC_ESTORAGE_UNAVAILABLE. A backend that no other process writes returns 0 at once (the
 * follower is not started on one). */
int store_reader_wait(struct store_reader *r, int timeout_ms, int64_t *seq_out);

#endif
