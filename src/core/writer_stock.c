/*
 * writer_stock.c - the stock commands with more than a delta: set-absolute (a recount),
 * transfers between stores (atomic over all lines) and reconciliations against a snapshot.
 *
 * Every function validates everything first and changes nothing when it refuses, so a
 * command applies all of its lines or none. Called by writer.c's writer_apply_kind on the
 * writer thread. Read writer_reservations.c next.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "core/writer_internal.h"

/* A command's lines resolved to products, duplicates summed. */
struct stock_line {
    uint32_t product_index;
    int64_t qty;
};

/* Resolves and sums cmd's lines; 0, or SVC_EUNKNOWN_SKU with the reply set. */
static int stock_resolve_lines(struct writer *w, struct command *cmd, struct stock_line *out,
                               uint32_t *count_out)
{
    const struct domain *d = w->config.domain;
    SVC_ASSERT(cmd->lines != NULL);
    SVC_ASSERT(cmd->lines->count >= 1 && cmd->lines->count <= CMD_LINES_MAX);
    uint32_t count = 0;
    for (uint32_t i = 0; i < cmd->lines->count; i++) {
        const struct cmd_line *line = &cmd->lines->items[i];
        int32_t product = dom_product_find(d, line->sku);
        if (product < 0) {
            char detail[SKU_BYTES_MAX + 32];
            snprintf(detail, sizeof detail, "no product with sku %s", line->sku);
            writer_reply_problem(cmd, SVC_EUNKNOWN_SKU, detail, NULL, 0);
            return SVC_EUNKNOWN_SKU;
        }
        uint32_t k = 0;
        while (k < count && out[k].product_index != (uint32_t)product) {
            k++;
        }
        if (k == count) {
            out[count++] = (struct stock_line){(uint32_t)product, 0};
        }
        out[k].qty += line->qty;
    }
    *count_out = count;
    return 0;
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

/* Looks up the store named by id; replies 404 and returns -1 when unknown. */
static int32_t stock_store(struct writer *w, struct command *cmd, const char *id)
{
    int32_t store = dom_store_find(w->config.domain, id);
    if (store < 0) {
        char detail[STORE_ID_BYTES_MAX + 32];
        snprintf(detail, sizeof detail, "no store with id %s", id);
        writer_reply_problem(cmd, SVC_EUNKNOWN_STORE, detail, NULL, 0);
    }
    return store;
}

bool writer_apply_set_absolute(struct writer *w, struct command *cmd)
{
    struct domain *d = w->config.domain;
    int32_t store = stock_store(w, cmd, cmd->store_id);
    int32_t product = store >= 0 ? dom_product_find(d, cmd->sku) : -1;
    if (store >= 0 && product < 0) {
        writer_reply_problem(cmd, SVC_EUNKNOWN_SKU, cmd->sku, NULL, 0);
    }
    if (store < 0 || product < 0) {
        return false;
    }
    int32_t item = dom_item_find(d, (uint32_t)store, (uint32_t)product);
    int64_t version = item >= 0 ? d->items[item].version : 0;
    if (cmd->has_expected_version && cmd->expected_version != version) {
        writer_reply_problem(cmd, SVC_EVERSION_CONFLICT, "the item changed since that version",
                             "currentVersion", version);
        return false;
    }
    int64_t reserved = stock_reserved(d, (uint32_t)store, (uint32_t)product);
    if (cmd->qty < reserved) {
        writer_reply_problem(cmd, SVC_EINSUFFICIENT_STOCK, "onHand cannot go below reserved",
                             "reserved", reserved);
        return false;
    }
    int64_t delta = cmd->qty - stock_on_hand(d, (uint32_t)store, (uint32_t)product);
    uint32_t item_index = 0;
    int rc =
        dom_adjust(d, (uint32_t)store, (uint32_t)product, delta, w->batch->now_ms, &item_index);
    if (rc != 0) {
        writer_reply_problem(cmd, rc, "stock limit reached", NULL, 0);
        return false;
    }
    SVC_ASSERT(d->items[item_index].on_hand == cmd->qty);
    char members[REASON_BYTES_MAX * 6 + 32];
    struct jbuf prefix;
    jbuf_init(&prefix, members, sizeof members);
    jbuf_kv_str(&prefix, "countRef", cmd->reason);
    writer_stock_event(w, "StockCounted", item_index, delta, 0, &prefix);
    writer_reply_item(w, cmd, item_index);
    return true;
}

/* Checks a transfer before any change: enough available at the source, room at the target. */
static bool transfer_check(struct writer *w, struct command *cmd, uint32_t from, uint32_t to,
                           const struct stock_line *lines, uint32_t count)
{
    const struct domain *d = w->config.domain;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t product = lines[k].product_index;
        int64_t available = stock_on_hand(d, from, product) - stock_reserved(d, from, product);
        if (available < lines[k].qty) {
            char detail[SKU_BYTES_MAX + 48];
            snprintf(detail, sizeof detail, "not enough available of %s at the source",
                     d->products[product].sku);
            writer_reply_problem(cmd, SVC_EINSUFFICIENT_STOCK, detail, "available", available);
            return false;
        }
        if (stock_on_hand(d, to, product) + lines[k].qty > ON_HAND_MAX) {
            writer_reply_problem(cmd, SVC_EVALIDATION, "the target store would exceed the limit",
                                 NULL, 0);
            return false;
        }
    }
    return true;
}

/* The TransferCompleted event and the 201 reply, which carry the same members. */
static void transfer_finish(struct writer *w, struct command *cmd, const char *id)
{
    struct jbuf body;
    writer_reply_begin(cmd, 201, &body);
    jbuf_kv_str(&body, "transferId", id);
    jbuf_kv_str(&body, "status", "COMPLETED");
    jbuf_kv_str(&body, "fromStore", cmd->store_id);
    jbuf_kv_str(&body, "toStore", cmd->to_store_id);
    jbuf_key(&body, "lines");
    jbuf_lit(&body, "[");
    for (uint32_t i = 0; i < cmd->lines->count; i++) {
        jbuf_lit(&body, i == 0 ? "{" : ",{");
        jbuf_kv_str(&body, "sku", cmd->lines->items[i].sku);
        jbuf_kv_int(&body, "qty", cmd->lines->items[i].qty);
        jbuf_lit(&body, "}");
    }
    jbuf_lit(&body, "]");
    writer_reply_end(cmd, &body);
    struct jbuf data;
    writer_arena_begin(w->batch, &data);
    jbuf_raw(&data, body.data, body.length);
    writer_event(w, "TransferCompleted", cmd->store_id, NULL, writer_arena_finish(w->batch, &data));
}

bool writer_apply_transfer(struct writer *w, struct command *cmd)
{
    struct domain *d = w->config.domain;
    struct stock_line lines[CMD_LINES_MAX];
    uint32_t count = 0;
    int32_t from = stock_store(w, cmd, cmd->store_id);
    int32_t to = from >= 0 ? stock_store(w, cmd, cmd->to_store_id) : -1;
    if (from < 0 || to < 0 || stock_resolve_lines(w, cmd, lines, &count) != 0 ||
        !transfer_check(w, cmd, (uint32_t)from, (uint32_t)to, lines, count)) {
        return false;
    }
    SVC_ASSERT(from != to); /* the decoder refuses a transfer to the same store */
    char id[32];
    snprintf(id, sizeof id, "trf_%" PRId64, w->event_seq + 1);
    char members[2 * STORE_ID_BYTES_MAX + 128];
    struct jbuf prefix;
    for (uint32_t k = 0; k < count; k++) {
        int32_t out_item = dom_item_find(d, (uint32_t)from, lines[k].product_index);
        SVC_ASSERT(out_item >= 0);
        dom_item_move(d, (uint32_t)out_item, -lines[k].qty, 0, w->batch->now_ms);
        jbuf_init(&prefix, members, sizeof members);
        jbuf_kv_str(&prefix, "transferId", id);
        jbuf_kv_int(&prefix, "qty", lines[k].qty);
        jbuf_kv_str(&prefix, "fromStore", cmd->store_id);
        jbuf_kv_str(&prefix, "toStore", cmd->to_store_id);
        writer_stock_event(w, "StockTransferredOut", (uint32_t)out_item, -lines[k].qty, 0, &prefix);
        uint32_t in_item = 0;
        int rc = dom_adjust(d, (uint32_t)to, lines[k].product_index, lines[k].qty, w->batch->now_ms,
                            &in_item);
        SVC_ASSERT(rc == 0); /* room was checked by transfer_check */
        writer_stock_event(w, "StockTransferredIn", in_item, lines[k].qty, 0, &prefix);
    }
    transfer_finish(w, cmd, id);
    return true;
}

/* Checks every counted line first: counts never fall below what is reserved. */
static bool reconcile_check(struct writer *w, struct command *cmd, uint32_t store,
                            const struct stock_line *lines, uint32_t count)
{
    const struct domain *d = w->config.domain;
    for (uint32_t k = 0; k < count; k++) {
        int64_t reserved = stock_reserved(d, store, lines[k].product_index);
        if (lines[k].qty < reserved) {
            char detail[SKU_BYTES_MAX + 48];
            snprintf(detail, sizeof detail, "the count of %s is below what is reserved",
                     d->products[lines[k].product_index].sku);
            writer_reply_problem(cmd, SVC_EINSUFFICIENT_STOCK, detail, "reserved", reserved);
            return false;
        }
    }
    return true;
}

bool writer_apply_reconcile(struct writer *w, struct command *cmd)
{
    struct domain *d = w->config.domain;
    struct stock_line lines[CMD_LINES_MAX];
    uint32_t count = 0;
    int32_t store = stock_store(w, cmd, cmd->store_id);
    if (store < 0 || stock_resolve_lines(w, cmd, lines, &count) != 0 ||
        !reconcile_check(w, cmd, (uint32_t)store, lines, count)) {
        return false;
    }
    SVC_ASSERT(count == cmd->lines->count); /* snapshot keys are unique JSON members */
    char id[32];
    snprintf(id, sizeof id, "rec_%" PRId64, w->event_seq + 1);
    struct jbuf body;
    writer_reply_begin(cmd, 200, &body);
    jbuf_kv_str(&body, "reconciliationId", id);
    jbuf_kv_str(&body, "storeId", cmd->store_id);
    jbuf_kv_str(&body, "source", cmd->reason);
    jbuf_key(&body, "adjustments");
    jbuf_lit(&body, "[");
    for (uint32_t k = 0; k < count; k++) {
        uint32_t product = lines[k].product_index;
        int64_t before = stock_on_hand(d, (uint32_t)store, product);
        int64_t delta = lines[k].qty - before;
        if (delta != 0) {
            uint32_t item = 0;
            int rc = dom_adjust(d, (uint32_t)store, product, delta, w->batch->now_ms, &item);
            SVC_ASSERT(rc == 0); /* counts are <= QTY_MAX and >= reserved */
            char members[REASON_BYTES_MAX * 6 + 96];
            struct jbuf prefix;
            jbuf_init(&prefix, members, sizeof members);
            jbuf_kv_str(&prefix, "reconciliationId", id);
            jbuf_kv_str(&prefix, "source", cmd->reason);
            writer_stock_event(w, "StockReconciled", item, delta, 0, &prefix);
        }
        jbuf_lit(&body, k == 0 ? "{" : ",{");
        jbuf_kv_str(&body, "sku", d->products[product].sku);
        jbuf_kv_int(&body, "before", before);
        jbuf_kv_int(&body, "after", lines[k].qty);
        jbuf_kv_int(&body, "delta", delta);
        jbuf_lit(&body, "}");
    }
    jbuf_lit(&body, "]");
    writer_reply_end(cmd, &body);
    struct jbuf data;
    writer_arena_begin(w->batch, &data);
    jbuf_raw(&data, body.data, body.length);
    writer_event(w, "ReconciliationCompleted", cmd->store_id, NULL,
                 writer_arena_finish(w->batch, &data));
    return true;
}
