/*
 * writer_internal.h - what the writer's files share: the batch scratch and the helpers that
 * add rows, events and replies to it. writer.c runs batches; writer_stock.c and
 * writer_reservations.c apply the multi-line and reservation commands. Nothing outside the
 * writer includes this file.
 */
#ifndef STOCKD_WRITER_INTERNAL_H
#define STOCKD_WRITER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/command.h"
#include "base/json_out.h"
#include "store/store.h"
#include "core/writer.h"

/* Rows of one batch. Every stock item change appends one event, so events bound the item
 * rows too. Half the budget is for client commands (see writer_command_weight: a 100-line
 * transfer weighs 202), half for the reservations that expire in that batch. */
#define WRITER_EVENTS_MAX 8192
#define WRITER_COMMAND_WEIGHT_MAX (WRITER_EVENTS_MAX / 2)
#define WRITER_EXPIRY_EVENTS_MAX (WRITER_EVENTS_MAX / 2)
#define WRITER_RESERVATION_ROWS_MAX (BATCH_COMMANDS_MAX + WRITER_EXPIRY_EVENTS_MAX)
#define WRITER_IDEM_SLOTS (4 * BATCH_COMMANDS_MAX) /* batch-local key table, load <= 0.25 */

_Static_assert((WRITER_IDEM_SLOTS & (WRITER_IDEM_SLOTS - 1)) == 0, "slots: a power of two");
_Static_assert(WRITER_IDEM_SLOTS >= 2 * BATCH_COMMANDS_MAX, "key table load must stay low");
_Static_assert(WRITER_COMMAND_WEIGHT_MAX >= 2 * BATCH_COMMANDS_MAX,
               "a full batch of purchases fits the row budget");
_Static_assert(WRITER_COMMAND_WEIGHT_MAX >= 2 + 2 * CMD_LINES_MAX, "any one command fits");
_Static_assert(WRITER_EXPIRY_EVENTS_MAX >= 1 + CMD_LINES_MAX, "any one expiry fits");

/* A shared backend's prefetch (writer_shared.c): what the batch names. */
#define WRITER_SHARED_NAMES_MAX (2 * BATCH_COMMANDS_MAX + WRITER_COMMAND_WEIGHT_MAX)
#define WRITER_SHARED_RESERVATIONS_MAX (BATCH_COMMANDS_MAX + WRITER_EXPIRY_EVENTS_MAX)
/* The sweep for expired reservations that no instance holds (their instance stopped): every
 * WRITER_SWEEP_INTERVAL_MS when idle, those expired WRITER_SWEEP_GRACE_MS ago or more (their
 * own instance, if alive, is quicker), at most WRITER_ADOPT_MAX at a time. */
#define WRITER_SWEEP_INTERVAL_MS 1000
#define WRITER_SWEEP_GRACE_MS 1000
#define WRITER_ADOPT_MAX 256
_Static_assert(WRITER_ADOPT_MAX *(1 + CMD_LINES_MAX) <= 32 * WRITER_EXPIRY_EVENTS_MAX,
               "adopted reservations expire over a few batches");

/* A batch slower than this is logged with where its time went (prepare, apply, commit). */
#define WRITER_SLOW_BATCH_US (50 * 1000)

/* How often a batch is prepared and applied again after STORE_COMMIT_RETRY before its
 * commands get 503. */
#define WRITER_COMMIT_ATTEMPTS_MAX 4

struct writer_shared {
    struct store_item_key *items; /* owned, grown */
    size_t item_count;
    size_t item_capacity;
    const char *store_ids[WRITER_SHARED_NAMES_MAX]; /* point into the batch's commands */
    size_t store_count;
    const char *skus[WRITER_SHARED_NAMES_MAX];
    size_t sku_count;
    struct store_idem_key idems[BATCH_COMMANDS_MAX];
    size_t idem_count;
    int64_t reservation_seqs[WRITER_SHARED_RESERVATIONS_MAX];
    size_t reservation_count;
    int64_t loading[WRITER_SHARED_RESERVATIONS_MAX]; /* reservations loaded by this prepare */
    uint32_t loading_count;
    int64_t adopt[WRITER_ADOPT_MAX]; /* expired reservations no instance expired (the sweep) */
    uint32_t adopt_count;
    int64_t sweep_due_ms; /* wall ms of the next sweep */
};

/* What a command's reply depends on, for the failure path. */
enum writer_outcome {
    WRITER_OUTCOME_NONE = 0,      /* refused; stands only if the batch commits */
    WRITER_OUTCOME_FRESH,         /* applied in this batch: reply only if the batch commits */
    WRITER_OUTCOME_STORED_REPLAY, /* replayed from storage: reply stands */
    WRITER_OUTCOME_BATCH_REPLAY,  /* copied from an earlier command of this batch */
};

struct writer_batch {
    struct row_store stores[BATCH_COMMANDS_MAX];
    struct row_product products[BATCH_COMMANDS_MAX];
    struct row_item items[WRITER_EVENTS_MAX];
    struct row_order orders[BATCH_COMMANDS_MAX];
    struct row_idem idems[BATCH_COMMANDS_MAX];
    struct row_event events[WRITER_EVENTS_MAX];
    struct row_reservation reservations[WRITER_RESERVATION_ROWS_MAX];
    struct row_reservation_line reservation_lines[WRITER_EVENTS_MAX];
    struct store_batch rows;
    enum writer_outcome outcomes[BATCH_COMMANDS_MAX];
    int16_t idem_slots[WRITER_IDEM_SLOTS];  /* command index + 1; 0 = empty */
    uint32_t idem_used[BATCH_COMMANDS_MAX]; /* slots to clear at reset */
    uint32_t idem_used_count;
    struct command **commands; /* the batch in hand, borrowed for the batch */
    size_t command_count;
    char *arena; /* BATCH_ARENA_BYTES, owned */
    size_t arena_used;
    int64_t now_ms; /* wall time of the batch: one clock read per batch */
    struct writer_shared shared;
};

/* Starts a JSON text in the batch arena; finish with writer_arena_finish. */
void writer_arena_begin(struct writer_batch *b, struct jbuf *out);
/* Ends the text begun in the arena; returns it (valid until the batch ends). */
const char *writer_arena_finish(struct writer_batch *b, struct jbuf *text);
/* Appends an event with the next seq; stock fields cleared. */
struct row_event *writer_event(struct writer *w, const char *type, const char *store_id,
                               const char *sku, const char *data_json);
/* Appends a stock event for item: prefix members, then the item after the change. */
void writer_stock_event(struct writer *w, const char *type, uint32_t item_index, int64_t delta,
                        int64_t reserved_delta, const struct jbuf *prefix_members);
/* Sets a problem+json reply for err. */
void writer_reply_problem(struct command *cmd, int err, const char *detail, const char *extra_key,
                          int64_t extra_value);
/* Starts and ends a JSON success body in the command's reply buffer. */
void writer_reply_begin(struct command *cmd, int status, struct jbuf *out);
void writer_reply_end(struct command *cmd, struct jbuf *body);
/* Replies 200 with the stock item. */
void writer_reply_item(struct writer *w, struct command *cmd, uint32_t item_index);

/* writer_stock.c: set-absolute, transfers, reconciliations. Each sets the reply and returns
 * true when it changed state. */
bool writer_apply_set_absolute(struct writer *w, struct command *cmd);
bool writer_apply_transfer(struct writer *w, struct command *cmd);
bool writer_apply_reconcile(struct writer *w, struct command *cmd);

/* writer_reservations.c: reservations and their TTL. */
bool writer_apply_reserve(struct writer *w, struct command *cmd);
bool writer_apply_confirm(struct writer *w, struct command *cmd);
bool writer_apply_cancel(struct writer *w, struct command *cmd);
/* Expires the reservations due at the batch's time (at most WRITER_EXPIRIES_MAX). */
void writer_expire_due(struct writer *w);
/* The loader callbacks for ACTIVE reservations. */
int writer_load_reservation(void *context, int64_t seq, const char *store_id,
                            const char *customer_id, int64_t expires_at_ms, int64_t version,
                            int64_t created_at_ms);
int writer_load_reservation_line(void *context, int64_t seq, const char *sku, int64_t qty);

/* writer_shared.c: on a shared backend, locks and reads what the batch will touch and makes
 * it the committed state in memory. 0 or SVC_ESTORAGE_UNAVAILABLE. */
int writer_shared_prepare(struct writer *w);

/* writer_shared.c: the idle writer's sweep (see WRITER_SWEEP_INTERVAL_MS). True when it found
 * reservations to adopt: run a batch. */
bool writer_shared_sweep(struct writer *w, int64_t now_ms);

/* The weight of a command against the batch's row budget (see writer_loop); the lines of
 * the reservation a confirm or cancel names count too. */
size_t writer_command_weight(struct writer *w, const struct command *cmd);

#endif
