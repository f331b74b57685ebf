/*
 * apply_stock.c - the commands that move stock: a purchase (buy now), an adjustment, a recount
 * (set-absolute), a transfer between stores (atomic over all lines), a reconciliation against a
 * snapshot, and seed 004's reset of the ticket item.
 *
 * Every function validates everything first and changes nothing when it refuses, so a command
 * applies all of its lines or none. Called through apply_command on the writer thread. Read
 * apply_reservations.c next.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"
#include "core/apply_internal.h"

/* ---- purchase ----------------------------------------------------------------------------- */

/* The order row of a purchase of cmd->qty from item: COMPLETED at once. */
static void stock_order_row(struct domain *d, struct batch *b, const struct command *cmd,
                            uint32_t item_index, int64_t order_seq)
{
    const struct dom_item *item = &d->items[item_index];
    struct jbuf lines;
    batch_arena_begin(b, &lines);
    jbuf_lit(&lines, "[{");
    jbuf_kv_str(&lines, "sku", cmd->sku);
    jbuf_kv_int(&lines, "qty", cmd->qty);
    jbuf_lit(&lines, "}]");
    const char *lines_json = batch_arena_finish(b, &lines);
    struct jbuf history;
    batch_arena_begin(b, &history);
    jbuf_lit(&history, "[{\"status\":\"COMPLETED\"");
    jbuf_kv_time(&history, "at", batch_now_ms(b));
    jbuf_lit(&history, "}]");
    struct row_order order = {order_seq,
                              cmd->customer_id,
                              d->stores[item->store_index].id,
                              "COMPLETED",
                              lines_json,
                              batch_arena_finish(b, &history),
                              batch_now_ms(b),
                              0,
                              0};
    batch_add_order(b, &order);
}

void apply_purchase(struct domain *d, struct batch *b, const struct command *cmd,
                    struct outcome *out)
{
    int32_t product_index = dom_product_find(d, cmd->sku);
    if (product_index < 0) {
        outcome_problem(out, SVC_EUNKNOWN_SKU, "no product with this sku");
        return;
    }
    int32_t store_index = -1;
    if (cmd->has_store && (store_index = dom_store_find(d, cmd->store_id)) < 0) {
        outcome_problem(out, SVC_EUNKNOWN_STORE, "no store with this storeId");
        return;
    }
    uint32_t item_index = 0;
    int64_t available = 0;
    int rc = dom_purchase(d, (uint32_t)product_index, store_index, cmd->policy, cmd->qty,
                          batch_now_ms(b), &item_index, &available);
    if (rc != 0) {
        SVC_ASSERT(rc == SVC_EINSUFFICIENT_STOCK);
        outcome_problem(out, rc, "not enough available to sell this quantity");
        outcome_problem_extra(out, "available", available);
        return;
    }
    int64_t order_seq = batch_next_order_seq(b);
    stock_order_row(d, b, cmd, item_index, order_seq);
    struct jbuf order_id; /* in the arena, and not with snprintf: this runs for every purchase */
    batch_arena_begin(b, &order_id);
    jbuf_lit(&order_id, "ord_");
    jbuf_int(&order_id, order_seq);
    struct event e;
    event_init(&e, EVENT_ORDER_COMPLETED);
    e.order_id = batch_arena_finish(b, &order_id);
    e.customer_id = cmd->customer_id;
    e.qty = cmd->qty;
    batch_emit_stock(b, &e, d, item_index, -cmd->qty, 0);
    *out = (struct outcome){.kind = OUTCOME_PURCHASE,
                            .changed = true,
                            .index = item_index,
                            .order_seq = order_seq,
                            .available = available};
    SVC_ASSERT(available >= 0);
}

/* ---- adjustments ------------------------------------------------------------------------- */

/* The version of (store, product)'s item, 0 when that store does not stock it. */
static int64_t stock_version(const struct domain *d, uint32_t store, uint32_t product)
{
    int32_t item = dom_item_find(d, store, product);
    return item >= 0 ? d->items[item].version : 0;
}

static int64_t stock_on_hand(const struct domain *d, uint32_t store, uint32_t product)
{
    int32_t item = dom_item_find(d, store, product);
    return item >= 0 ? d->items[item].on_hand : 0;
}

static int64_t stock_reserved(const struct domain *d, uint32_t store, uint32_t product)
{
    int32_t item = dom_item_find(d, store, product);
    return item >= 0 ? d->items[item].reserved : 0;
}

/* Resolves cmd's store and sku; false with the refusal in out (an unknown sku is named first
 * when sku_first, else an unknown store). */
static bool stock_item_key(const struct domain *d, const struct command *cmd, bool sku_first,
                           uint32_t *store_out, uint32_t *product_out, struct outcome *out)
{
    int32_t store = dom_store_find(d, cmd->store_id);
    int32_t product = dom_product_find(d, cmd->sku);
    if (product < 0 && (sku_first || store >= 0)) {
        outcome_problem(out, SVC_EUNKNOWN_SKU, "no product with sku %s", cmd->sku);
        return false;
    }
    if (store < 0) {
        outcome_problem(out, SVC_EUNKNOWN_STORE, "no store with id %s", cmd->store_id);
        return false;
    }
    *store_out = (uint32_t)store;
    *product_out = (uint32_t)product;
    return true;
}

/* If-Match: false with version_conflict in out when cmd expects another version. */
static bool stock_version_matches(const struct command *cmd, int64_t version, struct outcome *out)
{
    if (cmd->has_expected_version && cmd->expected_version != version) {
        outcome_problem(out, SVC_EVERSION_CONFLICT, "the item changed since that version");
        outcome_problem_extra(out, "currentVersion", version);
        return false;
    }
    return true;
}

void apply_adjust(struct domain *d, struct batch *b, const struct command *cmd, struct outcome *out)
{
    uint32_t store = 0;
    uint32_t product = 0;
    if (!stock_item_key(d, cmd, true, &store, &product, out) ||
        !stock_version_matches(cmd, stock_version(d, store, product), out)) {
        return;
    }
    uint32_t item_index = 0;
    int rc = dom_adjust(d, store, product, cmd->delta, batch_now_ms(b), &item_index);
    if (rc != 0) {
        outcome_problem(out, rc, "onHand would fall below reserved or out of range");
        outcome_problem_extra(out, "available",
                              stock_on_hand(d, store, product) - stock_reserved(d, store, product));
        return;
    }
    struct event e;
    event_init(&e, EVENT_STOCK_ADJUSTED);
    e.reason = cmd->reason;
    batch_emit_stock(b, &e, d, item_index, cmd->delta, 0);
    *out = (struct outcome){.kind = OUTCOME_ITEM, .changed = true, .index = item_index};
}

void apply_set_absolute(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out)
{
    uint32_t store = 0;
    uint32_t product = 0;
    if (!stock_item_key(d, cmd, false, &store, &product, out) ||
        !stock_version_matches(cmd, stock_version(d, store, product), out)) {
        return;
    }
    int64_t reserved = stock_reserved(d, store, product);
    if (cmd->qty < reserved) {
        outcome_problem(out, SVC_EINSUFFICIENT_STOCK, "onHand cannot go below reserved");
        outcome_problem_extra(out, "reserved", reserved);
        return;
    }
    int64_t delta = cmd->qty - stock_on_hand(d, store, product);
    uint32_t item_index = 0;
    int rc = dom_adjust(d, store, product, delta, batch_now_ms(b), &item_index);
    if (rc != 0) {
        outcome_problem(out, rc, "stock limit reached");
        return;
    }
    SVC_ASSERT(d->items[item_index].on_hand == cmd->qty);
    struct event e;
    event_init(&e, EVENT_STOCK_COUNTED);
    e.count_ref = cmd->reason;
    batch_emit_stock(b, &e, d, item_index, delta, 0);
    *out = (struct outcome){.kind = OUTCOME_ITEM, .changed = true, .index = item_index};
}

/* Seed 004: the ticket item in the first store goes back to TICKET_RESET_ON_HAND, created
 * with its product when absent; its sold count restarts with the new sale. */
void apply_ticket_reset(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out)
{
    SVC_ASSERT(d->store_count >= 1); /* a database starts with store S1 */
    int32_t product = dom_product_find(d, cmd->sku);
    if (product < 0) {
        apply_new_product(d, b, cmd->sku, "Item A - Concert Ticket", TICKET_RESET_ON_HAND, 0, out);
    } else {
        int64_t delta = TICKET_RESET_ON_HAND - stock_on_hand(d, 0, (uint32_t)product);
        uint32_t item_index = 0;
        int rc = dom_adjust(d, 0, (uint32_t)product, delta, batch_now_ms(b), &item_index);
        if (rc != 0) {
            outcome_problem(out, rc, "reserved units exceed the reset level");
            return;
        }
        dom_item_reset_sold(d, item_index);
        struct event e;
        event_init(&e, EVENT_STOCK_ADJUSTED);
        e.reason = EVENT_REASON_RESET;
        batch_emit_stock(b, &e, d, item_index, delta, 0);
        out->changed = true;
    }
    if (out->changed) {
        *out = (struct outcome){
            .kind = OUTCOME_TICKET_RESET, .changed = true, .available = TICKET_RESET_ON_HAND};
    }
}

/* ---- transfers and reconciliations -------------------------------------------------------- */

/* A command's lines resolved to products, duplicates summed. */
struct stock_line {
    uint32_t product_index;
    int64_t qty;
};

/* Resolves and sums cmd's lines; false with unknown_sku in out. */
static bool stock_resolve_lines(const struct domain *d, const struct command *cmd,
                                struct stock_line *lines, uint32_t *count_out, struct outcome *out)
{
    SVC_ASSERT(cmd->lines != NULL);
    SVC_ASSERT(cmd->lines->count >= 1 && cmd->lines->count <= CMD_LINES_MAX);
    uint32_t count = 0;
    for (uint32_t i = 0; i < cmd->lines->count; i++) {
        const struct cmd_line *line = &cmd->lines->items[i];
        int32_t product = dom_product_find(d, line->sku);
        if (product < 0) {
            outcome_problem(out, SVC_EUNKNOWN_SKU, "no product with sku %s", line->sku);
            return false;
        }
        uint32_t k = 0;
        while (k < count && lines[k].product_index != (uint32_t)product) {
            k++;
        }
        if (k == count) {
            lines[count++] = (struct stock_line){(uint32_t)product, 0};
        }
        lines[k].qty += line->qty;
    }
    *count_out = count;
    return true;
}

/* Looks up the store named by id; -1 with unknown_store in out. */
static int32_t stock_store(const struct domain *d, const char *id, struct outcome *out)
{
    int32_t store = dom_store_find(d, id);
    if (store < 0) {
        outcome_problem(out, SVC_EUNKNOWN_STORE, "no store with id %s", id);
    }
    return store;
}

/* Checks a transfer before any change: enough available at the source, room at the target. */
/* Room for the items lines would create at store (each distinct product with qty > 0 that
 * store does not stock yet): false with 507 when the item table (--max-stock-items) cannot
 * hold them, checked before anything changes. */
static bool stock_room_check(const struct domain *d, uint32_t store, const struct stock_line *lines,
                             uint32_t count, struct outcome *out)
{
    uint32_t created = 0;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t product = lines[k].product_index;
        bool counted = lines[k].qty == 0 || dom_item_find(d, store, product) >= 0;
        for (uint32_t j = 0; j < k && !counted; j++) {
            counted = lines[j].product_index == product && lines[j].qty > 0;
        }
        created += !counted;
    }
    SVC_ASSERT(created <= count && d->item_count <= d->capacity.items);
    if (created > d->capacity.items - d->item_count) {
        outcome_problem(out, SVC_ECAPACITY, "the stock item table is full (--max-stock-items)");
        return false;
    }
    return true;
}

static bool transfer_check(const struct domain *d, uint32_t from, uint32_t to,
                           const struct stock_line *lines, uint32_t count, struct outcome *out)
{
    for (uint32_t k = 0; k < count; k++) {
        uint32_t product = lines[k].product_index;
        int64_t available = stock_on_hand(d, from, product) - stock_reserved(d, from, product);
        if (available < lines[k].qty) {
            outcome_problem(out, SVC_EINSUFFICIENT_STOCK,
                            "not enough available of %s at the source", d->products[product].sku);
            outcome_problem_extra(out, "available", available);
            return false;
        }
        if (stock_on_hand(d, to, product) + lines[k].qty > ON_HAND_MAX) {
            outcome_problem(out, SVC_EVALIDATION, "the target store would exceed the limit");
            return false;
        }
    }
    return stock_room_check(d, to, lines, count, out);
}

/* Moves one line from store from to store to, with its two events. */
static void transfer_line(struct domain *d, struct batch *b, const struct command *cmd,
                          const char *id, uint32_t from, uint32_t to, const struct stock_line *line)
{
    int32_t out_item = dom_item_find(d, from, line->product_index);
    SVC_ASSERT(out_item >= 0); /* transfer_check found enough there */
    dom_item_move(d, (uint32_t)out_item, -line->qty, 0, batch_now_ms(b));
    struct event e;
    event_init(&e, EVENT_STOCK_TRANSFERRED_OUT);
    e.transfer_id = id;
    e.qty = line->qty;
    e.from_store = cmd->store_id;
    e.to_store = cmd->to_store_id;
    batch_emit_stock(b, &e, d, (uint32_t)out_item, -line->qty, 0);
    uint32_t in_item = 0;
    int rc = dom_adjust(d, to, line->product_index, line->qty, batch_now_ms(b), &in_item);
    SVC_ASSERT(rc == 0); /* room was checked by transfer_check */
    event_init(&e, EVENT_STOCK_TRANSFERRED_IN);
    e.transfer_id = id;
    e.qty = line->qty;
    e.from_store = cmd->store_id;
    e.to_store = cmd->to_store_id;
    batch_emit_stock(b, &e, d, in_item, line->qty, 0);
}

/* The TransferCompleted event: the transfer as the client sent it. */
static void transfer_completed(struct batch *b, const struct command *cmd, const char *id)
{
    struct event_line *lines = batch_arena_array(b, cmd->lines->count, sizeof *lines);
    for (uint32_t i = 0; i < cmd->lines->count; i++) {
        lines[i] =
            (struct event_line){batch_text(b, cmd->lines->items[i].sku), cmd->lines->items[i].qty};
    }
    struct event e;
    event_init(&e, EVENT_TRANSFER_COMPLETED);
    e.transfer_id = id;
    e.status = "COMPLETED";
    e.store_id = cmd->store_id; /* the row's store column: the source */
    e.from_store = cmd->store_id;
    e.to_store = cmd->to_store_id;
    e.lines = lines;
    e.line_count = cmd->lines->count;
    batch_emit(b, &e);
}

void apply_transfer(struct domain *d, struct batch *b, const struct command *cmd,
                    struct outcome *out)
{
    struct stock_line lines[CMD_LINES_MAX];
    uint32_t count = 0;
    int32_t from = stock_store(d, cmd->store_id, out);
    int32_t to = from >= 0 ? stock_store(d, cmd->to_store_id, out) : -1;
    if (from < 0 || to < 0 || !stock_resolve_lines(d, cmd, lines, &count, out) ||
        !transfer_check(d, (uint32_t)from, (uint32_t)to, lines, count, out)) {
        return;
    }
    SVC_ASSERT(from != to); /* the decoder refuses a transfer to the same store */
    char text[32];
    snprintf(text, sizeof text, "trf_%" PRId64, batch_peek_event_seq(b));
    const char *id = batch_text(b, text); /* shared by every event of the transfer */
    for (uint32_t k = 0; k < count; k++) {
        transfer_line(d, b, cmd, id, (uint32_t)from, (uint32_t)to, &lines[k]);
    }
    transfer_completed(b, cmd, id);
    out->kind = OUTCOME_TRANSFER;
    out->changed = true;
    snprintf(out->id, sizeof out->id, "%s", id);
}

/* Checks every counted line first: counts never fall below what is reserved. */
static bool reconcile_check(const struct domain *d, uint32_t store, const struct stock_line *lines,
                            uint32_t count, struct outcome *out)
{
    for (uint32_t k = 0; k < count; k++) {
        int64_t reserved = stock_reserved(d, store, lines[k].product_index);
        if (lines[k].qty < reserved) {
            outcome_problem(out, SVC_EINSUFFICIENT_STOCK,
                            "the count of %s is below what is reserved",
                            d->products[lines[k].product_index].sku);
            outcome_problem_extra(out, "reserved", reserved);
            return false;
        }
    }
    return stock_room_check(d, store, lines, count, out);
}

/* Sets every counted line, with a StockReconciled event for each that changed. */
static void reconcile_lines(struct domain *d, struct batch *b, const struct command *cmd,
                            const char *id, uint32_t store, const struct stock_line *lines,
                            uint32_t count, struct outcome_adjustment *adjustments)
{
    for (uint32_t k = 0; k < count; k++) {
        uint32_t product = lines[k].product_index;
        int64_t before = stock_on_hand(d, store, product);
        int64_t delta = lines[k].qty - before;
        adjustments[k] = (struct outcome_adjustment){product, before, lines[k].qty, delta};
        if (delta == 0) {
            continue;
        }
        uint32_t item = 0;
        int rc = dom_adjust(d, store, product, delta, batch_now_ms(b), &item);
        SVC_ASSERT(rc == 0); /* counts are <= QTY_MAX and >= reserved; room was checked */
        struct event e;
        event_init(&e, EVENT_STOCK_RECONCILED);
        e.reconciliation_id = id;
        e.source = cmd->reason;
        batch_emit_stock(b, &e, d, item, delta, 0);
    }
}

/* The ReconciliationCompleted event: what was counted and what changed. */
static void reconcile_completed(const struct domain *d, struct batch *b, const struct command *cmd,
                                const char *id, const struct outcome_adjustment *adjustments,
                                uint32_t count)
{
    struct event_adjustment *list = batch_arena_array(b, count, sizeof *list);
    for (uint32_t k = 0; k < count; k++) {
        const struct outcome_adjustment *a = &adjustments[k];
        list[k] = (struct event_adjustment){d->products[a->product_index].sku, a->before, a->after,
                                            a->delta};
    }
    struct event e;
    event_init(&e, EVENT_RECONCILIATION_COMPLETED);
    e.reconciliation_id = id;
    e.store_id = cmd->store_id;
    e.source = cmd->reason;
    e.adjustments = list;
    e.adjustment_count = count;
    batch_emit(b, &e);
}

void apply_reconcile(struct domain *d, struct batch *b, const struct command *cmd,
                     struct outcome *out)
{
    struct stock_line lines[CMD_LINES_MAX];
    uint32_t count = 0;
    int32_t store = stock_store(d, cmd->store_id, out);
    if (store < 0 || !stock_resolve_lines(d, cmd, lines, &count, out) ||
        !reconcile_check(d, (uint32_t)store, lines, count, out)) {
        return;
    }
    SVC_ASSERT(count == cmd->lines->count); /* snapshot keys are unique JSON members */
    char text[32];
    snprintf(text, sizeof text, "rec_%" PRId64, batch_peek_event_seq(b));
    const char *id = batch_text(b, text); /* shared by every event of the reconciliation */
    struct outcome_adjustment *adjustments = batch_arena_array(b, count, sizeof *adjustments);
    reconcile_lines(d, b, cmd, id, (uint32_t)store, lines, count, adjustments);
    reconcile_completed(d, b, cmd, id, adjustments, count);
    out->kind = OUTCOME_RECONCILIATION;
    out->changed = true;
    out->adjustments = adjustments;
    out->adjustment_count = count;
    snprintf(out->id, sizeof out->id, "%s", id);
}
