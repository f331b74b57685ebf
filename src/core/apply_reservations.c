/*
 * apply_reservations.c - reservations with a TTL: create (all lines or none, the store chosen
 * by availability when absent), confirm (the held units leave onHand), cancel and expiry (the
 * held units become available again).
 *
 * The TTL is a timer of the writer (reservations.h keeps a min-heap of expiry times): due
 * reservations expire at the start of every batch (apply_expire_due) and, when idle, the
 * writer wakes for the next one. A confirm that arrives after expiresAt finds the reservation
 * expired even if the timer has not fired yet. A reservation that is not in memory has ended;
 * why, the prefetch found out (batch_ended_find): apply never reads storage. Called through
 * apply_command on the writer thread. Read reply.h next.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "core/apply_internal.h"

/* The reservation's members an event carries (its lines in the arena). */
static void reservation_event(struct domain *d, struct batch *b, const struct reservation *r,
                              struct event *e)
{
    char id[32];
    snprintf(id, sizeof id, "res_%" PRId64, r->seq);
    struct event_line *lines = batch_arena_array(b, r->line_count, sizeof *lines);
    for (uint32_t i = 0; i < r->line_count; i++) {
        lines[i] = (struct event_line){d->products[r->lines[i].product_index].sku, r->lines[i].qty};
    }
    e->reservation_id = batch_text(b, id);
    e->status = res_status_name(r->status);
    e->store_id = d->stores[r->store_index].id;
    e->customer_id = r->customer_id;
    e->lines = lines;
    e->line_count = r->line_count;
    e->expires_at_ms = r->expires_at_ms;
    e->version = r->version;
    SVC_ASSERT(r->version >= 1 && r->line_count >= 1);
}

/* The reservation's row after this batch and its lifecycle event. */
static void reservation_rows(struct domain *d, struct batch *b, const struct reservation *r,
                             enum event_type type, const char *payment_ref, const char *reason)
{
    batch_add_reservation(b, d, r, type == EVENT_RESERVATION_CREATED);
    struct event e;
    event_init(&e, type);
    reservation_event(d, b, r, &e);
    e.payment_ref = payment_ref;
    e.reason = reason;
    batch_emit(b, &e);
}

/* Moves every line of r: (on_hand, reserved) by (sign_on_hand * qty, sign_reserved * qty),
 * with one stock event each. */
static void reservation_move(struct domain *d, struct batch *b, const struct reservation *r,
                             enum event_type type, int sign_on_hand, int sign_reserved,
                             const char *reason)
{
    char id[32];
    snprintf(id, sizeof id, "res_%" PRId64, r->seq);
    for (uint32_t i = 0; i < r->line_count; i++) {
        int32_t item = dom_item_find(d, r->store_index, r->lines[i].product_index);
        SVC_ASSERT(item >= 0); /* a reservation holds units of an existing item */
        int64_t qty = r->lines[i].qty;
        dom_item_move(d, (uint32_t)item, sign_on_hand * qty, sign_reserved * qty, batch_now_ms(b));
        struct event e;
        event_init(&e, type);
        e.reservation_id = id;
        e.qty = qty;
        e.reason = reason;
        batch_emit_stock(b, &e, d, (uint32_t)item, sign_on_hand * qty, sign_reserved * qty);
    }
}

/* Ends r with status: its units are sold (CONFIRMED) or available again. */
void apply_reservation_end(struct domain *d, struct batch *b, struct reservation *r,
                           enum res_status status, const char *payment_ref, const char *reason)
{
    SVC_ASSERT(r->status == RES_ACTIVE);
    SVC_ASSERT(status != RES_ACTIVE);
    res_touch(&d->reservations, r); /* before any change: what a rollback restores */
    if (status == RES_CONFIRMED) {
        reservation_move(d, b, r, EVENT_STOCK_COMMITTED, -1, -1, NULL);
    } else {
        reservation_move(d, b, r, EVENT_STOCK_RELEASED, 0, -1, reason);
    }
    r->status = status;
    r->version += 1;
    res_touch(&d->reservations, r);
    enum event_type type = status == RES_CONFIRMED   ? EVENT_RESERVATION_CONFIRMED
                           : status == RES_CANCELLED ? EVENT_RESERVATION_CANCELLED
                                                     : EVENT_RESERVATION_EXPIRED;
    reservation_rows(d, b, r, type, payment_ref, status == RES_CANCELLED ? reason : NULL);
}

/* ---- create ------------------------------------------------------------------------------- */

/* Resolves cmd's lines to products (404 on an unknown sku). Duplicate skus stay separate
 * lines; availability is checked on their sums by reserve_slack. */
static bool reserve_resolve(const struct domain *d, const struct command *cmd,
                            struct res_line *lines, struct outcome *out)
{
    SVC_ASSERT(cmd->lines != NULL && cmd->lines->count >= 1);
    for (uint32_t i = 0; i < cmd->lines->count; i++) {
        int32_t product = dom_product_find(d, cmd->lines->items[i].sku);
        if (product < 0) {
            outcome_problem(out, SVC_EUNKNOWN_SKU, "%s", cmd->lines->items[i].sku);
            return false;
        }
        lines[i] = (struct res_line){(uint32_t)product, cmd->lines->items[i].qty};
    }
    return true;
}

/* What the lines want of product (duplicates summed). */
static int64_t reserve_wanted(const struct res_line *lines, uint32_t count, uint32_t product)
{
    int64_t wanted = 0;
    for (uint32_t j = 0; j < count; j++) {
        wanted += lines[j].product_index == product ? lines[j].qty : 0;
    }
    SVC_ASSERT(wanted >= 1);
    return wanted;
}

static int64_t reserve_available(const struct domain *d, uint32_t store, uint32_t product)
{
    int32_t item = dom_item_find(d, store, product);
    return item >= 0 ? dom_item_available(&d->items[item]) : 0;
}

/* The smallest slack (available - wanted) over the lines at store, or -1 if one is short;
 * *short_out names the first short line. */
static int64_t reserve_slack(const struct domain *d, uint32_t store, const struct res_line *lines,
                             uint32_t count, uint32_t *short_out)
{
    int64_t slack = INT64_MAX;
    for (uint32_t i = 0; i < count; i++) {
        int64_t wanted = reserve_wanted(lines, count, lines[i].product_index);
        int64_t available = reserve_available(d, store, lines[i].product_index);
        if (available < wanted) {
            *short_out = i;
            return -1;
        }
        slack = available - wanted < slack ? available - wanted : slack;
    }
    return slack;
}

/* The store for a reservation without storeId: the one with the most slack after it. */
static int32_t reserve_choose_store(const struct domain *d, const struct res_line *lines,
                                    uint32_t count)
{
    int32_t best = -1;
    int64_t best_slack = -1;
    /* Only a store that stocks the first line's product can hold every line: visit those, in
     * store order (the product's item list), not every store. */
    const struct dom_product *first = &d->products[lines[0].product_index];
    for (int32_t i = first->first_item; i >= 0; i = d->items[i].next) {
        uint32_t s = d->items[i].store_index;
        uint32_t ignored = 0;
        int64_t slack = reserve_slack(d, s, lines, count, &ignored);
        if (slack > best_slack) {
            best = (int32_t)s;
            best_slack = slack;
        }
    }
    return best;
}

/* The line to name when no store can hold a reservation without storeId: the first line no
 * store has enough of, with the most any store has available; when each line fits somewhere
 * but no store fits them all, the first short line of the first store. */
static void reserve_short_anywhere(const struct domain *d, const struct res_line *lines,
                                   uint32_t count, uint32_t *line_out, int64_t *available_out)
{
    SVC_ASSERT(d->store_count >= 1);
    for (uint32_t i = 0; i < count; i++) {
        int64_t wanted = reserve_wanted(lines, count, lines[i].product_index);
        int64_t best = 0; /* a store without the product has 0 */
        const struct dom_product *product = &d->products[lines[i].product_index];
        for (int32_t k = product->first_item; k >= 0; k = d->items[k].next) {
            int64_t available = dom_item_available(&d->items[k]);
            best = available > best ? available : best;
        }
        if (best < wanted) {
            *line_out = i;
            *available_out = best;
            return;
        }
    }
    int64_t slack = reserve_slack(d, 0, lines, count, line_out);
    SVC_ASSERT(slack < 0); /* no store fits, the first one neither */
    *available_out = reserve_available(d, 0, lines[*line_out].product_index);
}

/* Picks and checks the store; -1 with the refusal in out when it cannot be made. */
static int32_t reserve_store(const struct domain *d, const struct command *cmd,
                             const struct res_line *lines, struct outcome *out)
{
    uint32_t count = cmd->lines->count;
    int32_t store =
        cmd->has_store ? dom_store_find(d, cmd->store_id) : reserve_choose_store(d, lines, count);
    if (cmd->has_store && store < 0) {
        outcome_problem(out, SVC_EUNKNOWN_STORE, "%s", cmd->store_id);
        return -1;
    }
    uint32_t short_line = 0;
    int64_t available = 0;
    if (store < 0) {
        reserve_short_anywhere(d, lines, count, &short_line, &available);
    } else if (reserve_slack(d, (uint32_t)store, lines, count, &short_line) < 0) {
        available = reserve_available(d, (uint32_t)store, lines[short_line].product_index);
    } else {
        return store;
    }
    outcome_problem(out, SVC_EINSUFFICIENT_STOCK, "not enough available of %s to hold every line",
                    cmd->lines->items[short_line].sku);
    outcome_problem_extra(out, "available", available);
    return -1;
}

struct reservation *apply_reservation_open(struct domain *d, struct batch *b,
                                           const struct command *cmd, int64_t order_seq,
                                           struct outcome *out)
{
    struct res_line lines[CMD_LINES_MAX];
    int32_t store = -1;
    if (!reserve_resolve(d, cmd, lines, out) || (store = reserve_store(d, cmd, lines, out)) < 0) {
        return NULL;
    }
    int64_t seq = batch_peek_reservation_seq(b);
    struct reservation *r = res_create(&d->reservations, seq);
    if (r == NULL) {
        outcome_problem(out, SVC_ECAPACITY, "too many active reservations");
        return NULL;
    }
    int64_t taken = batch_next_reservation_seq(b);
    SVC_ASSERT(taken == seq);
    r->store_index = (uint32_t)store;
    r->line_count = cmd->lines->count;
    memcpy(r->lines, lines, r->line_count * sizeof lines[0]);
    r->created_at_ms = batch_now_ms(b);
    r->expires_at_ms = batch_now_ms(b) + cmd->ttl_seconds * 1000;
    strcpy(r->customer_id, cmd->customer_id);
    r->created = true;
    res_touch(&d->reservations, r);
    r->order_seq = order_seq;
    r->order_state = order_seq != 0 ? RES_ORDER_PENDING : RES_ORDER_NONE;
    res_schedule(&d->reservations, r);
    reservation_move(d, b, r, EVENT_STOCK_RESERVED, 0, 1, NULL);
    reservation_rows(d, b, r, EVENT_RESERVATION_CREATED, NULL, NULL);
    SVC_ASSERT(r->status == RES_ACTIVE && r->version == 1);
    return r;
}

void apply_reserve(struct domain *d, struct batch *b, const struct command *cmd,
                   struct outcome *out)
{
    struct reservation *r = apply_reservation_open(d, b, cmd, 0, out);
    if (r == NULL) {
        return;
    }
    *out = (struct outcome){
        .kind = OUTCOME_RESERVATION, .changed = true, .reservation = r, .created = true};
}

/* ---- confirm and cancel ------------------------------------------------------------------- */

const char *apply_reservation_status(const struct batch *b, int64_t reservation_seq,
                                     const struct reservation *r)
{
    SVC_ASSERT(r == NULL || r->seq == reservation_seq);
    if (r != NULL) {
        return res_status_name(r->status);
    }
    const struct batch_ended_reservation *ended = batch_ended_find(b, reservation_seq);
    return ended != NULL && ended->status[0] != '\0' ? ended->status : NULL;
}

/* Why the reservation cmd names is not ACTIVE: 404, 409 expired or not active. r is the one in
 * memory (ended in this batch) or NULL: then the prefetch said what became of it. */
static void reservation_refuse(const struct batch *b, const struct command *cmd,
                               const struct reservation *r, struct outcome *out)
{
    const char *status = apply_reservation_status(b, cmd->reservation_seq, r);
    if (status == NULL) {
        outcome_problem(out, SVC_EUNKNOWN_RESERVATION, "no reservation with this id");
    } else if (strcmp(status, res_status_name(RES_EXPIRED)) == 0) {
        outcome_problem(out, SVC_ERESERVATION_EXPIRED, "the reservation expired");
    } else {
        outcome_problem(out, SVC_ERESERVATION_NOT_ACTIVE, "the reservation is %s", status);
    }
    SVC_ASSERT(out->kind == OUTCOME_PROBLEM);
}

/* The ACTIVE reservation cmd names, or NULL with the refusal in out. One past its expiry is
 * expired first, which changes state (out->changed). */
static struct reservation *reservation_target(struct domain *d, struct batch *b,
                                              const struct command *cmd, struct outcome *out)
{
    SVC_ASSERT(cmd->reservation_seq >= 1);
    struct reservation *r = res_find(&d->reservations, cmd->reservation_seq);
    if (r != NULL && r->status == RES_ACTIVE && r->expires_at_ms <= batch_now_ms(b)) {
        apply_reservation_end(d, b, r, RES_EXPIRED, NULL, "expired");
        out->changed = true;
    }
    if (r == NULL || r->status != RES_ACTIVE) {
        reservation_refuse(b, cmd, r, out);
        return NULL;
    }
    if (r->order_seq != 0) {
        outcome_problem(out, SVC_ERESERVATION_NOT_ACTIVE,
                        "the reservation holds stock for order ord_%" PRId64
                        ": use the order's routes",
                        r->order_seq);
        return NULL;
    }
    if (cmd->has_expected_version && cmd->expected_version != r->version) {
        outcome_problem(out, SVC_EVERSION_CONFLICT, "the reservation changed");
        outcome_problem_extra(out, "currentVersion", r->version);
        return NULL;
    }
    return r;
}

void apply_confirm(struct domain *d, struct batch *b, const struct command *cmd,
                   struct outcome *out)
{
    struct reservation *r = reservation_target(d, b, cmd, out);
    if (r == NULL) {
        return;
    }
    apply_reservation_end(d, b, r, RES_CONFIRMED, cmd->reason, NULL);
    *out = (struct outcome){.kind = OUTCOME_RESERVATION, .changed = true, .reservation = r};
    SVC_ASSERT(r->status == RES_CONFIRMED);
}

void apply_cancel(struct domain *d, struct batch *b, const struct command *cmd, struct outcome *out)
{
    struct reservation *r = reservation_target(d, b, cmd, out);
    if (r == NULL) {
        return;
    }
    apply_reservation_end(d, b, r, RES_CANCELLED, NULL, cmd->reason);
    *out = (struct outcome){.kind = OUTCOME_RESERVATION, .changed = true, .reservation = r};
    SVC_ASSERT(r->status == RES_CANCELLED);
}
