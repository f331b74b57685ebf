/*
 * apply_orders.c - checkout orders (issue 11): an order holds its stock through one
 * reservation and moves PENDING -> CONFIRMED -> PAID | PAYMENT_FAILED, or ends EXPIRED or
 * CANCELLED, each step one event in the same batch as its stock effect.
 *
 *     PENDING --confirm--> CONFIRMED --pay begin--> (PAYING) --paid--> PAID
 *        |                    |                        |    \--declined--> PAYMENT_FAILED
 *        +--cancel/expire-----+--> CANCELLED/EXPIRED   +--retry--> (PAYING)
 *
 * The order lives in memory exactly while its reservation is ACTIVE (reservations.h keeps
 * its state: enum res_order_state), so this file never reads storage. PAYING is CONFIRMED
 * with a charge in doubt: the hold's expiry is suspended (RES_EXPIRES_NEVER) until the charge
 * ends, so an order never expires while it may have been paid, and cancelling it is refused.
 * PAID confirms the hold (onHand -= qty), PAYMENT_FAILED, CANCELLED and EXPIRED release it.
 * An order that left memory has ended: the prefetch says how its hold ended
 * (batch_ended_find), which answers a late cancel. The steps come from the workers
 * (work/work.h) as CMD_ORDER_STEP commands; each moves its stage's stored offset in the same
 * batch, even when the order had already moved on (the event is consumed either way). On a
 * shared backend a step whose lease token is not its stage's current one (the prefetch read
 * and share-locked the lease row) is refused whole: its sender lost the stage to another
 * instance (the fence of work/work.h).
 * Called through apply_command on the writer thread. Read reply.h next.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"
#include "core/apply_internal.h"

/* The public status of an order in memory. */
static const char *order_status_name(enum res_order_state state)
{
    SVC_ASSERT(state != RES_ORDER_NONE);
    return state == RES_ORDER_PENDING ? "PENDING" : "CONFIRMED"; /* PAYING shows CONFIRMED */
}

/* The stored name of a stage's offset. */
static const char *order_stage_name(enum cmd_stage stage)
{
    switch (stage) {
    case CMD_STAGE_ORDER: return "order";
    case CMD_STAGE_PAYMENT: return "payment";
    case CMD_STAGE_INTAKE:
    case CMD_STAGE_NONE:
    case CMD_STAGE_COUNT: break;
    }
    SVC_UNREACHABLE();
}

/* The order's event of type with its new status. */
static void order_event(struct domain *d, struct batch *b, const struct reservation *r,
                        enum event_type type, const char *status, const char *reason,
                        const char *payment_ref)
{
    char order_id[32];
    char reservation_id[32];
    snprintf(order_id, sizeof order_id, "ord_%" PRId64, r->order_seq);
    snprintf(reservation_id, sizeof reservation_id, "res_%" PRId64, r->seq);
    struct event e;
    event_init(&e, type);
    e.order_id = batch_text(b, order_id);
    e.reservation_id = batch_text(b, reservation_id);
    e.status = status;
    e.customer_id = r->customer_id;
    e.reason = reason;
    e.payment_ref = payment_ref;
    e.attempt = r->pay_attempts;
    if (type == EVENT_ORDER_CREATED) {
        struct event_line *lines = batch_arena_array(b, r->line_count, sizeof *lines);
        for (uint32_t i = 0; i < r->line_count; i++) {
            lines[i] =
                (struct event_line){d->products[r->lines[i].product_index].sku, r->lines[i].qty};
        }
        e.store_id = d->stores[r->store_index].id;
        e.lines = lines;
        e.line_count = r->line_count;
        e.expires_at_ms = r->expires_at_ms;
    }
    SVC_ASSERT(r->order_seq >= 1 && status != NULL);
    batch_emit(b, &e);
}

/* The order's new status in its row, with one history entry. */
static void order_step_row(struct batch *b, const struct reservation *r, const char *status,
                           const char *reason)
{
    struct jbuf entry;
    batch_arena_begin(b, &entry);
    jbuf_lit(&entry, "{");
    jbuf_kv_str(&entry, "status", status);
    jbuf_kv_time(&entry, "at", batch_now_ms(b));
    if (reason != NULL && reason[0] != '\0') {
        jbuf_kv_str(&entry, "reason", reason);
    }
    jbuf_lit(&entry, "}");
    struct row_order_step step = {r->order_seq, status, batch_arena_finish(b, &entry),
                                  batch_now_ms(b)};
    batch_add_order_step(b, &step);
}

/* A step that keeps the hold: the reservation's row carries the order's new state. */
static void order_keep(struct domain *d, struct batch *b, struct reservation *r,
                       enum res_order_state state, int32_t pay_attempts, int64_t expires_at_ms)
{
    SVC_ASSERT(r->status == RES_ACTIVE && r->order_seq >= 1);
    SVC_ASSERT(pay_attempts >= r->pay_attempts || pay_attempts == 1); /* 1: a replay's reset */
    res_touch(&d->reservations, r); /* saves what a rollback restores, before any change */
    r->order_state = state;
    r->pay_attempts = pay_attempts;
    r->expires_at_ms = expires_at_ms;
    r->version += 1;
    batch_add_reservation(b, d, r, false);
}

/* Ends the order: its hold confirmed (PAID) or released, its row and event. */
static void order_end(struct domain *d, struct batch *b, struct reservation *r,
                      enum event_type type, const char *status, const char *reason,
                      const char *payment_ref)
{
    enum res_status end = type == EVENT_ORDER_PAID ? RES_CONFIRMED : RES_CANCELLED;
    apply_reservation_end(d, b, r, end, payment_ref, reason);
    order_step_row(b, r, status, reason);
    order_event(d, b, r, type, status, reason, payment_ref);
    SVC_ASSERT(r->status != RES_ACTIVE);
}

void apply_order_expired(struct domain *d, struct batch *b, const struct reservation *r)
{
    SVC_ASSERT(r->status == RES_EXPIRED && r->order_seq >= 1);
    order_step_row(b, r, "EXPIRED", "the order's time to pay ran out");
    order_event(d, b, r, EVENT_ORDER_EXPIRED, "EXPIRED", NULL, NULL);
}

/* ---- create ------------------------------------------------------------------------------- */

/* The new order's row: PENDING, its lines and its first history entry. */
static void order_create_row(struct domain *d, struct batch *b, const struct reservation *r)
{
    struct jbuf lines;
    batch_arena_begin(b, &lines);
    jbuf_lit(&lines, "[");
    for (uint32_t i = 0; i < r->line_count; i++) {
        jbuf_lit(&lines, i == 0 ? "{" : ",{");
        jbuf_kv_str(&lines, "sku", d->products[r->lines[i].product_index].sku);
        jbuf_kv_int(&lines, "qty", r->lines[i].qty);
        jbuf_lit(&lines, "}");
    }
    jbuf_lit(&lines, "]");
    const char *lines_json = batch_arena_finish(b, &lines);
    struct jbuf history;
    batch_arena_begin(b, &history);
    jbuf_lit(&history, "[{\"status\":\"PENDING\"");
    jbuf_kv_time(&history, "at", batch_now_ms(b));
    jbuf_lit(&history, "}]");
    struct row_order order = {r->order_seq,    r->customer_id, d->stores[r->store_index].id,
                              "PENDING",       lines_json,     batch_arena_finish(b, &history),
                              batch_now_ms(b), r->seq,         r->expires_at_ms};
    batch_add_order(b, &order);
}

void apply_order_create(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out)
{
    SVC_ASSERT(cmd->lines != NULL && cmd->ttl_seconds >= 1);
    /* The seq is taken only when the hold is made: a refusal leaves no gap in ord_<n>. */
    int64_t order_seq = batch_seqs_working(b)->order + 1;
    struct reservation *r = apply_reservation_open(d, b, cmd, order_seq, out);
    if (r == NULL) {
        return;
    }
    int64_t taken = batch_next_order_seq(b);
    SVC_ASSERT(taken == order_seq && r->order_state == RES_ORDER_PENDING);
    order_create_row(d, b, r);
    order_event(d, b, r, EVENT_ORDER_CREATED, "PENDING", NULL, NULL);
    *out = (struct outcome){.kind = OUTCOME_ORDER,
                            .changed = true,
                            .reservation = r,
                            .order_seq = order_seq,
                            .order_status = "PENDING",
                            .created = true};
}

/* ---- the order a command names ------------------------------------------------------------ */

/* Why the order cmd names is not live (its hold ended): 404 or 409 with what became of it. */
static void order_refuse(const struct batch *b, const struct command *cmd,
                         const struct reservation *r, struct outcome *out)
{
    const char *status = apply_reservation_status(b, cmd->reservation_seq, r);
    if (status == NULL) {
        outcome_problem(out, SVC_EUNKNOWN_ORDER, "no order with this id");
        return;
    }
    /* Its hold was confirmed: PAID; otherwise released: cancelled, declined or expired. */
    bool paid = strcmp(status, res_status_name(RES_CONFIRMED)) == 0;
    outcome_problem(out, SVC_EORDER_NOT_CANCELLABLE, "the order has ended (%s)",
                    paid ? "PAID" : "its stock was released");
    SVC_ASSERT(out->kind == OUTCOME_PROBLEM);
}

/* The live order cmd names, or NULL with the refusal in out. One past its time (not PAYING)
 * expires first, which changes state (out->changed). */
static struct reservation *order_target(struct domain *d, struct batch *b,
                                        const struct command *cmd, struct outcome *out)
{
    SVC_ASSERT(cmd->order_seq >= 1 && cmd->reservation_seq >= 1);
    struct reservation *r = res_find(&d->reservations, cmd->reservation_seq);
    if (r != NULL && r->order_seq != cmd->order_seq) {
        r = NULL; /* the id and the hold do not match: no such order (the decoder read both) */
        outcome_problem(out, SVC_EUNKNOWN_ORDER, "no order with this id");
        return NULL;
    }
    if (r != NULL && r->status == RES_ACTIVE && r->order_state != RES_ORDER_PAYING &&
        r->expires_at_ms <= batch_now_ms(b)) {
        apply_reservation_end(d, b, r, RES_EXPIRED, NULL, "expired");
        apply_order_expired(d, b, r);
        out->changed = true;
    }
    if (r == NULL || r->status != RES_ACTIVE) {
        order_refuse(b, cmd, r, out);
        return NULL;
    }
    return r;
}

static void order_outcome(struct outcome *out, const struct reservation *r, const char *status)
{
    *out = (struct outcome){.kind = OUTCOME_ORDER,
                            .changed = true,
                            .reservation = r,
                            .order_seq = r->order_seq,
                            .order_status = status};
}

void apply_order_cancel(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out)
{
    struct reservation *r = order_target(d, b, cmd, out);
    if (r == NULL) {
        return;
    }
    if (r->order_state == RES_ORDER_PAYING) {
        outcome_problem(out, SVC_EORDER_NOT_CANCELLABLE, "a payment of the order is in doubt");
        return;
    }
    order_end(d, b, r, EVENT_ORDER_CANCELLED, "CANCELLED", cmd->reason, NULL);
    order_outcome(out, r, "CANCELLED");
}

/* ---- the workers' steps ------------------------------------------------------------------- */

/* A charge in doubt whose attempts ran out (PAYING, pay_attempts >= PAY_ATTEMPTS_MAX) goes
 * into the dead-letter table with a DeadLettered event; it stays PAYING (CONFIRMED, never
 * expires). Its replay takes it out: the attempts start again at 1 (this one) and the charge
 * is asked again with the same key (OrderPaymentReplayed). Either is stale on an order in
 * another state, e.g. a second replay. */
static bool order_dead_letter_step(struct domain *d, struct batch *b, struct reservation *r,
                                   const struct command *cmd, struct outcome *out)
{
    if (r->order_state != RES_ORDER_PAYING || r->pay_attempts < PAY_ATTEMPTS_MAX) {
        return false;
    }
    bool replay = cmd->order_step == CMD_STEP_PAY_REPLAY;
    struct row_dead_letter row = {.stage = order_stage_name(CMD_STAGE_PAYMENT),
                                  .order_seq = r->order_seq,
                                  .reservation_seq = r->seq,
                                  .error = replay ? NULL : batch_text(b, cmd->reason),
                                  .attempts = r->pay_attempts,
                                  .at_ms = batch_now_ms(b),
                                  .remove = replay};
    if (replay) {
        order_keep(d, b, r, RES_ORDER_PAYING, 1, RES_EXPIRES_NEVER);
        order_event(d, b, r, EVENT_ORDER_PAYMENT_REPLAYED, "CONFIRMED", NULL, NULL);
    } else {
        order_event(d, b, r, EVENT_ORDER_DEAD_LETTERED, "CONFIRMED", row.error, NULL);
    }
    batch_add_dead_letter(b, &row);
    order_outcome(out, r, "CONFIRMED");
    return true;
}

/* Applies a step to the live order r in the state it requires; false when r is in another
 * state (the step is stale: the order moved on, e.g. cancelled meanwhile). */
static bool order_step_apply(struct domain *d, struct batch *b, struct reservation *r,
                             const struct command *cmd, struct outcome *out)
{
    enum res_order_state state = r->order_state;
    switch (cmd->order_step) {
    case CMD_STEP_CONFIRM:
        if (state != RES_ORDER_PENDING) {
            return false;
        }
        order_keep(d, b, r, RES_ORDER_CONFIRMED, r->pay_attempts, r->expires_at_ms);
        order_step_row(b, r, "CONFIRMED", NULL);
        order_event(d, b, r, EVENT_ORDER_CONFIRMED, "CONFIRMED", NULL, NULL);
        order_outcome(out, r, "CONFIRMED");
        return true;
    case CMD_STEP_REJECT:
        if (state != RES_ORDER_PENDING) {
            return false;
        }
        order_end(d, b, r, EVENT_ORDER_CANCELLED, "CANCELLED", cmd->reason, NULL);
        order_outcome(out, r, "CANCELLED");
        return true;
    case CMD_STEP_PAY_BEGIN:
    case CMD_STEP_PAY_RETRY:
        if (state !=
            (cmd->order_step == CMD_STEP_PAY_BEGIN ? RES_ORDER_CONFIRMED : RES_ORDER_PAYING)) {
            return false;
        }
        /* In doubt from now: the order must not expire until the charge ends. */
        order_keep(d, b, r, RES_ORDER_PAYING, r->pay_attempts + 1, RES_EXPIRES_NEVER);
        order_event(d, b, r,
                    cmd->order_step == CMD_STEP_PAY_BEGIN ? EVENT_ORDER_PAYMENT_STARTED
                                                          : EVENT_ORDER_PAYMENT_RETRIED,
                    "CONFIRMED", cmd->order_step == CMD_STEP_PAY_RETRY ? cmd->reason : NULL, NULL);
        order_outcome(out, r, "CONFIRMED");
        return true;
    case CMD_STEP_PAID:
    case CMD_STEP_PAY_FAILED:
        if (state != RES_ORDER_PAYING) {
            return false;
        }
        if (cmd->order_step == CMD_STEP_PAID) {
            order_end(d, b, r, EVENT_ORDER_PAID, "PAID", NULL, cmd->reason);
        } else {
            order_end(d, b, r, EVENT_ORDER_PAYMENT_FAILED, "PAYMENT_FAILED", cmd->reason, NULL);
        }
        order_outcome(out, r, cmd->order_step == CMD_STEP_PAID ? "PAID" : "PAYMENT_FAILED");
        return true;
    case CMD_STEP_DEAD_LETTER:
    case CMD_STEP_PAY_REPLAY: return order_dead_letter_step(d, b, r, cmd, out);
    }
    SVC_UNREACHABLE();
}

void apply_order_step(struct domain *d, struct batch *b, const struct command *cmd,
                      struct outcome *out)
{
    SVC_ASSERT(!cmd->has_idem_key && cmd->stage != CMD_STAGE_NONE);
    if (!batch_lease_valid(b, cmd->stage, cmd->lease_token)) {
        /* Its sender no longer holds the stage: another instance took it over and reads on
         * from the stored offset. Nothing of the step is written, not even its offset. */
        outcome_problem(out, SVC_EVERSION_CONFLICT, "the %s stage's lease was taken over",
                        order_stage_name(cmd->stage));
        return;
    }
    if (cmd->stage_seq >= 1) {
        /* Consumed whatever comes of it: a stale step is no reason to read the event again. */
        batch_stage_offset(b, order_stage_name(cmd->stage), cmd->stage_seq);
    }
    struct reservation *r = order_target(d, b, cmd, out);
    if (r == NULL) {
        return;
    }
    if (!order_step_apply(d, b, r, cmd, out)) {
        outcome_problem(out, SVC_ERESERVATION_NOT_ACTIVE, "the order is %s",
                        order_status_name(r->order_state));
    }
    SVC_ASSERT(out->kind == OUTCOME_ORDER || out->kind == OUTCOME_PROBLEM);
}
