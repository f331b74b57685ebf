/*
 * batch.h - one batch's scratch: the rows it will write, the events it appends, the records
 * its prefetch read, its sequences and its arena. Everything is allocated once (batch_new)
 * and reset per batch in O(what the last batch used).
 *
 * The appliers (core/apply_*.c) add rows and events here; the writer (core/writer.c) resets
 * it, fills the prefetched records, hands the rows to the store and the events to the read
 * model. This module decides nothing: it is where a batch's decisions are written down. The
 * row budget a batch must fit (BATCH_EVENTS_MAX) is what writer_batch_fit checks before a
 * command enters the batch, so running out here is a programmer error (asserted).
 *
 * Read apply.h next.
 */
#ifndef STOCKD_BATCH_H
#define STOCKD_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/json_out.h"
#include "base/svc_limits.h"
#include "core/command.h"
#include "core/domain.h"
#include "core/events.h"
#include "store/store.h"

/* Events (and so stock item rows) of one batch. Half the budget is for client commands (see
 * writer_command_weight: a 100-line transfer weighs 202), half for the reservations that
 * expire in that batch. */
#define BATCH_EVENTS_MAX 8192
#define BATCH_COMMAND_WEIGHT_MAX (BATCH_EVENTS_MAX / 2)
#define BATCH_EXPIRY_EVENTS_MAX (BATCH_EVENTS_MAX / 2)
#define BATCH_RESERVATION_ROWS_MAX (BATCH_COMMANDS_MAX + BATCH_EXPIRY_EVENTS_MAX)
/* Slots of the batch-local idempotency table and of the prefetched records (load <= 0.25). */
#define BATCH_IDEM_SLOTS (4 * BATCH_COMMANDS_MAX)
/* Reservations a batch may name: its confirms and cancels plus the expiries it runs. */
#define BATCH_NAMED_RESERVATIONS_MAX (BATCH_COMMANDS_MAX + BATCH_EXPIRY_EVENTS_MAX)
/* Bytes of the prefetched idempotency records (keys, bodies, locations): every command of a
 * full batch replaying the longest reply. Pages are touched only as used. */
#define BATCH_PREFETCH_BYTES                                                                       \
    (BATCH_COMMANDS_MAX * (LINES_REPLY_BYTES_MAX + IDEM_KEY_BYTES_MAX + AUTH_PRINCIPAL_BYTES_MAX + \
                           REPLY_LOCATION_BYTES_MAX + 8))
/* Other instances' events a shared backend's prefetch brings (store.h's STORE_GAP_EVENTS_MAX)
 * are copied here until the publish step: at most this many bytes of their text; the rest is
 * left to the follower (read/follower.h). */
#define BATCH_GAP_TEXT_BYTES (4 * 1024 * 1024)

_Static_assert((BATCH_IDEM_SLOTS & (BATCH_IDEM_SLOTS - 1)) == 0, "slots: a power of two");
_Static_assert(BATCH_IDEM_SLOTS >= 4 * BATCH_COMMANDS_MAX, "key tables stay sparse");
_Static_assert(BATCH_COMMAND_WEIGHT_MAX >= 2 * BATCH_COMMANDS_MAX,
               "a full batch of purchases fits the row budget");
_Static_assert(BATCH_COMMAND_WEIGHT_MAX >= 2 + 2 * CMD_LINES_MAX, "any one command fits");
_Static_assert(BATCH_EXPIRY_EVENTS_MAX >= 1 + CMD_LINES_MAX, "any one expiry fits");

/* The id sequences: working (this batch) and committed (the last durable batch). */
struct batch_seqs {
    int64_t order;
    int64_t event;
    int64_t reservation;
};

/* A stored idempotency record the prefetch read, copied into the batch. */
struct batch_idem_record {
    const char *principal;
    const char *key;
    uint64_t fingerprint;
    int status;
    bool problem;
    const char *body;
    size_t body_length;
    const char *location; /* "" when none */
};

/* A reservation the batch names that storage says is not ACTIVE (or does not exist). */
struct batch_ended_reservation {
    int64_t seq;
    char status[16]; /* "" when there is no such reservation */
    int64_t version;
};

struct batch; /* opaque outside batch.c and writer.c */

/* Allocates a batch's scratch. NULL when out of memory (startup: the caller exits). */
struct batch *batch_new(void);
void batch_free(struct batch *b);

/* Starts a batch of count commands (borrowed until the batch ends) at wall time now_ms: every
 * row, event, record and the arena are emptied, the working sequences restart from the
 * committed ones. */
void batch_reset(struct batch *b, struct command **commands, size_t count, int64_t now_ms);
int64_t batch_now_ms(const struct batch *b);
size_t batch_command_count(const struct batch *b);
struct command *batch_command(const struct batch *b, size_t index);

/* ---- sequences ---- */
/* Sets both the working and the committed sequences (load, a shared backend's prefetch). */
void batch_seqs_set(struct batch *b, const struct batch_seqs *seqs);
const struct batch_seqs *batch_seqs_working(const struct batch *b);
const struct batch_seqs *batch_seqs_committed(const struct batch *b);
/* The batch is durable: working becomes committed. */
void batch_seqs_commit(struct batch *b);
/* The batch failed or runs again: working goes back to committed. */
void batch_seqs_rollback(struct batch *b);
int64_t batch_next_order_seq(struct batch *b);
int64_t batch_next_reservation_seq(struct batch *b);
/* The seq the next reservation will get (batch_next_reservation_seq takes it). */
int64_t batch_peek_reservation_seq(const struct batch *b);
/* The seq the next appended event will get (ids derived from it, e.g. trf_<seq>). */
int64_t batch_peek_event_seq(const struct batch *b);

/* ---- text and arrays that live until the batch ends ---- */
void batch_arena_begin(struct batch *b, struct jbuf *out);
const char *batch_arena_finish(struct batch *b, struct jbuf *text);
/* A copy of text that lives until the batch ends (ids an event points at). */
const char *batch_text(struct batch *b, const char *text);
/* Room for count items of size bytes (8-byte aligned). */
void *batch_arena_array(struct batch *b, size_t count, size_t size);

/* ---- events ---- */
/* Appends e with the next seq and the batch's time, encoding its data into the arena. */
void batch_emit(struct batch *b, struct event *e);
/* The same for a stock event of item_index: its store, sku and the item's state after the
 * change are filled from the domain. */
void batch_emit_stock(struct batch *b, struct event *e, const struct domain *d, uint32_t item_index,
                      int64_t delta, int64_t reserved_delta);
size_t batch_event_count(const struct batch *b);
const struct event *batch_events(const struct batch *b);

/* ---- rows ---- */
void batch_add_store(struct batch *b, const struct dom_store *store);
void batch_add_product(struct batch *b, const struct dom_product *product);
void batch_add_order(struct batch *b, const struct row_order *order);
/* The reservation r after this batch; with_lines for a new one. */
void batch_add_reservation(struct batch *b, const struct domain *d, const struct reservation *r,
                           bool with_lines);
void batch_add_idem(struct batch *b, const struct command *cmd);
/* A checkout order's step (after its row: the order was created in an earlier batch or
 * earlier in this one). */
void batch_add_order_step(struct batch *b, const struct row_order_step *step);
/* Moves stage's stored offset to seq (the highest of the batch wins). */
void batch_stage_offset(struct batch *b, const char *stage, int64_t seq);
/* The same for a stage that consumes a stream of the broker, not the event log (the intake
 * consumer): seq is a stream offset, unrelated to the batch's event seqs. */
void batch_stream_offset(struct batch *b, const char *stage, int64_t seq);
/* A dead letter written (or, remove, deleted) with the batch (at most one per step). */
void batch_add_dead_letter(struct batch *b, const struct row_dead_letter *row);
/* The rows of the items the domain's undo list names (the items the batch changed). */
void batch_collect_items(struct batch *b, const struct domain *d);
/* The rows of the whole batch for store_commit_batch (valid until the next reset). */
const struct store_batch *batch_rows(struct batch *b);
bool batch_has_rows(const struct batch *b);

/* ---- idempotency ---- */
/* Finds the key of the command at index among the earlier commands of this batch: their
 * index, or -1 with *slot_out where batch_idem_claim puts it. The same key of two principals
 * is two keys. */
int32_t batch_idem_earlier(const struct batch *b, size_t index, uint32_t *slot_out);
/* Claims the key of the command at index (absent, at the slot batch_idem_earlier gave). */
void batch_idem_claim(struct batch *b, size_t index, uint32_t slot);
/* Copies a stored record into the batch (prefetch). 0 or SVC_ECAPACITY. */
int batch_idem_record_add(struct batch *b, const struct store_idem_record *record);
/* The stored record of (principal, key) the prefetch found, or NULL. */
const struct batch_idem_record *batch_idem_record_find(const struct batch *b, const char *principal,
                                                       const char *key);

/* ---- reservations the prefetch found ended ---- */
void batch_ended_add(struct batch *b, int64_t seq, const char *status, int64_t version);
/* The ended reservation seq, or NULL when the prefetch did not report it. */
const struct batch_ended_reservation *batch_ended_find(const struct batch *b, int64_t seq);

/* ---- the stages' lease tokens the prefetch read (the fence of work/work.h) ---- */
/* From now on until the next reset the batch's worker steps and intake commands are checked
 * against the tokens the prefetch reports (a shared backend: set before its read, so a stage
 * without a lease row has token 0, which no step carries). */
void batch_lease_fence(struct batch *b);
void batch_lease_set(struct batch *b, enum cmd_stage stage, int64_t token);
/* True when a step of stage carrying token may apply: the batch is not fenced (a backend one
 * process owns), or token is the stage's current lease token. */
bool batch_lease_valid(const struct batch *b, enum cmd_stage stage, int64_t token);

/* ---- other instances' events (a shared backend's prefetch) ---- */
/* Copies rows (in seq order) until the gap text is full; returns how many were kept. */
size_t batch_gap_add(struct batch *b, const struct row_event *rows, size_t count);
size_t batch_gap_count(const struct batch *b);
/* Decodes the kept rows into events (valid until the next reset); returns how many decoded
 * before the first that could not be (the rest are left to the follower). */
size_t batch_gap_decode(struct batch *b, const struct event **out);

#endif
