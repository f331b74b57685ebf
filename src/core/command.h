/*
 * command.h - a decoded write request on its way to the writer and back.
 *
 * Ownership travels with the pointer: an I/O thread fills a command from its own pool and
 * pushes it (queue_push); from then the writer owns it, sets the reply fields, and hands it
 * back through writer_config.reply; the I/O thread then owns it again, sends the reply and
 * returns it to its pool. Nobody else ever holds it, so it needs no lock.
 *
 * Every string is a fixed, NUL-terminated field validated before the push. Read store.h next.
 */
#ifndef STOCKD_COMMAND_H
#define STOCKD_COMMAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/domain.h"
#include "base/svc_limits.h"

/* The values of cmd_kind, cmd_style and dom_policy are folded into stored fingerprints
 * (command_fingerprint): append new ones, never reorder. */
enum cmd_kind {
    CMD_STORE_CREATE,       /* POST /v1/stores */
    CMD_PRODUCT_CREATE,     /* POST /v1/products */
    CMD_PURCHASE,           /* POST /v1/purchase, POST /buy_ticket */
    CMD_ADJUST,             /* POST /v1/adjustments */
    CMD_TICKET_RESET,       /* POST /reset (seed 004, --allow-reset only) */
    CMD_SET_ABSOLUTE,       /* POST /v1/items:set-absolute */
    CMD_RESERVE,            /* POST /v1/reservations */
    CMD_CONFIRM,            /* POST /v1/reservations/{id}:confirm */
    CMD_CANCEL,             /* POST /v1/reservations/{id}:cancel */
    CMD_TRANSFER,           /* POST /v1/transfers */
    CMD_RECONCILE,          /* POST /v1/reconciliations */
    CMD_ORDER_CREATE,       /* POST /v1/orders: a checkout order, PENDING with its stock held */
    CMD_ORDER_CANCEL,       /* POST /v1/orders/{id}:cancel */
    CMD_ORDER_STEP,         /* a worker's step of a checkout order (work/work.h); never keyed */
    CMD_INTAKE_DEAD_LETTER, /* a stream message the intake consumer cannot decode
                             * (intake/intake_consume.h): into the dead-letter table; never
                             * keyed */
};

/* The steps a worker takes on a checkout order (CMD_ORDER_STEP). */
enum cmd_order_step {
    CMD_STEP_CONFIRM = 0, /* order worker: PENDING -> CONFIRMED (or CANCELLED by a rule) */
    CMD_STEP_REJECT,      /* order worker: a rule refused it: PENDING -> CANCELLED */
    CMD_STEP_PAY_BEGIN,   /* payment worker: a charge starts; the order cannot expire now */
    CMD_STEP_PAY_RETRY,   /* payment worker: an attempt failed technically; another follows */
    CMD_STEP_PAID,        /* payment worker: charged: the reservation is confirmed */
    CMD_STEP_PAY_FAILED,  /* payment worker: declined: the reservation is released */
    CMD_STEP_DEAD_LETTER, /* payment worker: attempts exhausted: into the dead-letter table */
    CMD_STEP_PAY_REPLAY,  /* POST /v1/dlt/replay: out of it, attempts reset, a charge starts */
};

/* The stages that consume a log, each with its stored offset (worker_offsets): the workers'
 * (the event log) and the intake consumer's (the stream of commands, intake/intake.h). */
enum cmd_stage {
    CMD_STAGE_NONE = 0, /* a client command */
    CMD_STAGE_ORDER,
    CMD_STAGE_PAYMENT,
    CMD_STAGE_INTAKE, /* offset stored as "commands" (INTAKE_STAGE), lease "intake" */
    CMD_STAGE_COUNT,
};

/* Who sent a command, so that the writer's reply hook hands it back to the right owner. */
enum cmd_origin {
    CMD_ORIGIN_HTTP = 0, /* an I/O thread's pool (http/request.h) */
    CMD_ORIGIN_WORKER,   /* the workers' pool (work/work.h) */
    CMD_ORIGIN_INTAKE,   /* the intake consumer's pool (intake/intake_consume.h) */
};

struct cmd_line {
    char sku[SKU_BYTES_MAX + 1];
    int64_t qty; /* units; for a reconciliation, the counted onHand (may be 0) */
};

/* The lines of a multi-line command and room for its longer reply. Owned like the command
 * that points at it: taken from the I/O thread's block pool with the command, returned with
 * it. */
struct cmd_lines {
    uint32_t count;
    struct cmd_line items[CMD_LINES_MAX];
    char reply[LINES_REPLY_BYTES_MAX];
    struct cmd_lines *next_free; /* pool free list */
};

/* A stream message the intake consumer could not decode (CMD_INTAKE_DEAD_LETTER), as it
 * came: stored with its dead letter so that POST /v1/dlt/replay can publish it again. Owned
 * by the consumer's pool and lent with the command, like a line block. */
struct cmd_message {
    char id[DLT_MESSAGE_ID_BYTES_MAX + 1];               /* message-id, "" when absent */
    char type[DLT_MESSAGE_TYPE_BYTES_MAX + 1];           /* type, "" when absent */
    char principal[DLT_MESSAGE_PRINCIPAL_BYTES_MAX + 1]; /* its "principal" header, or "" */
    bool body_kept; /* false: the body was over DLT_MESSAGE_BODY_BYTES_MAX (not replayable) */
    size_t body_length;
    char body[DLT_MESSAGE_BODY_BYTES_MAX];
    struct cmd_message *next_free; /* pool free list */
};

/* How the writer formats the reply: the v1 contract or a seed's own body shapes. */
enum cmd_style {
    CMD_STYLE_V1,      /* DESIGN.md bodies and problem+json errors */
    CMD_STYLE_SEED004, /* {success,message,remaining_stock}, 410 when sold out */
};

struct command {
    enum cmd_kind kind;
    enum cmd_style style;
    enum cmd_origin origin; /* whose pool it came from (main.c's reply hook) */
    void *owner;            /* opaque to the writer: the I/O thread's reply target */
    int64_t queued_us;      /* monotonic time of the push, for queue-wait metrics */

    /* Idempotency: (principal, key) -> fingerprint of the decoded command (command_fingerprint),
     * so a re-serialised body is the same request. fingerprint_bytes: the form before it, of
     * (method, path, body bytes), still matched against records stored by older versions. */
    bool has_idem_key;
    char idem_key[IDEM_KEY_BYTES_MAX + 1];
    uint64_t fingerprint;
    uint64_t fingerprint_bytes;
    char principal[AUTH_PRINCIPAL_BYTES_MAX + 1]; /* who sent it: a token's principal or
                                                   * "public"; never empty once pushed */

    /* Arguments; which are set depends on kind (see the api_*.c decoders). Every argument is
     * part of the meaning: a new one must be folded in command_fingerprint. */
    bool has_store;
    char store_id[STORE_ID_BYTES_MAX + 1];
    char sku[SKU_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    char customer_id[CUSTOMER_ID_BYTES_MAX + 1];
    char reason[REASON_BYTES_MAX + 1];
    enum dom_policy policy;
    int64_t qty;
    int64_t delta;
    int64_t latency_ms;
    int64_t initial_on_hand;
    bool has_expected_version; /* If-Match: the command applies only at this version */
    int64_t expected_version;
    char to_store_id[STORE_ID_BYTES_MAX + 1]; /* transfers: store_id is the source */
    int64_t reservation_seq;                  /* confirm, cancel: the reservation res_<seq> */
    int64_t ttl_seconds;                      /* reserve */
    struct cmd_lines *lines; /* multi-line commands, else NULL; see struct cmd_lines */
    int64_t order_seq;       /* order cancel and steps: ord_<seq> (reservation_seq: its hold) */
    enum cmd_order_step order_step; /* CMD_ORDER_STEP */
    enum cmd_stage stage;  /* CMD_ORDER_STEP, or CMD_STAGE_INTAKE for every command of the intake
                            * consumer: the stage whose offset it moves */
    int64_t stage_seq;     /* the event seq the stage consumed (0: none); stored with the effect.
                            * CMD_STAGE_INTAKE: the stream offset to resume from (0: none) */
    int64_t stream_offset; /* CMD_INTAKE_DEAD_LETTER: the message's stream offset */
    const struct cmd_message *message; /* CMD_INTAKE_DEAD_LETTER: the message, else NULL */
    int64_t lease_token; /* CMD_ORDER_STEP and CMD_STAGE_INTAKE: the sender's lease token
                          * of stage (the fence of work/work.h); like stage and stage_seq not
                          * folded in the fingerprint (a property of the sender, not of the
                          * request) */
    char trace_id[TRACE_ID_BYTES_MAX + 1]; /* the request's X-Trace-Id (echoed or made up),
                                            * "" when none (a worker's step): the writer's log
                                            * lines about this command carry it (log.h). Not
                                            * folded in the fingerprint: a retry with the same
                                            * key may come with a new trace id */

    /* Reply, written by the writer before it hands the command back. */
    int reply_status;    /* HTTP status */
    bool reply_problem;  /* body is application/problem+json */
    bool reply_replayed; /* an idempotent replay of an earlier response */
    bool reply_fenced;   /* CMD_STAGE_INTAKE: refused unwritten, its lease token is not the
                          * stage's current one (writer.c): the sender lost the stage */
    char reply_location[REPLY_LOCATION_BYTES_MAX]; /* the Location header, "" for none */
    size_t reply_length;                           /* bytes of reply_body */
    char *reply_body;      /* reply_inline, or lines->reply for multi-line commands; the
                            * writer points a NULL one at reply_inline */
    size_t reply_capacity; /* bytes at reply_body */
    char reply_inline[REPLY_BODY_BYTES_MAX];
};

/* The fingerprint of what cmd asks (kind, seed style, every argument, its lines), not of the
 * bytes that carried it. Deterministic across machines; cmd must carry an Idempotency-Key and
 * have every unused argument zeroed (http_command_alloc). */
uint64_t command_fingerprint(const struct command *cmd);

/* The kind's name in log lines ("purchase", "order_step"); a static string. */
const char *command_kind_name(enum cmd_kind kind);

/* Points the reply buffer at the right storage; idempotent. Called by whoever fills a
 * command (I/O thread) and again by the writer before it writes a reply. */
static inline void command_reply_prepare(struct command *cmd)
{
    if (cmd->lines != NULL) {
        cmd->reply_body = cmd->lines->reply;
        cmd->reply_capacity = sizeof cmd->lines->reply;
    } else {
        cmd->reply_body = cmd->reply_inline;
        cmd->reply_capacity = sizeof cmd->reply_inline;
    }
}

#endif
