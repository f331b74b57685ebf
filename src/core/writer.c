/*
 * writer.c - the single-writer batching core. See writer.h for the contract.
 *
 * 1. State machine of one batch (TigerBeetle prefetch -> commit -> persist -> reply):
 *
 *        +------+  queue_pop_batch   +----------+  each command   +---------+
 *        | IDLE | -----------------> | APPLYING | --------------> | WRITING |
 *        +------+                    +----------+                 +---------+
 *           ^                                             commit ok |   | commit failed
 *           |        +-----------+   dom_publish()                  |   |
 *           +------- | REPLYING  | <--------------------------------+   |
 *           |        +-----------+   dom_rollback(), 503s               |
 *           +-----------------------------------------------------------+
 *
 * 2. Transitions and the functions that perform them:
 *    IDLE -> APPLYING     writer_loop: a non-empty pop; writer_batch_reset clears the scratch.
 *                         On a shared backend writer_shared_prepare first locks and re-reads
 *                         what the batch touches (writer_shared.c).
 *    APPLYING             writer_apply: idempotency first (batch-local table, then storage),
 *                         then the domain change, the reply body, and the rows to write.
 *    APPLYING -> WRITING  writer_attempt: one store_commit_batch for the whole batch; when it
 *                         answers STORE_COMMIT_RETRY (another instance won a race), undo and
 *                         go back to APPLYING, at most WRITER_COMMIT_ATTEMPTS_MAX times.
 *    WRITING -> REPLYING  ok: dom_publish makes the batch visible to readers.
 *                         failed: dom_rollback, and every command but a replay from storage
 *                         becomes 503 storage_unavailable (nothing of it was written).
 *    REPLYING -> IDLE     writer_reply_all: config.reply for each command, in queue order.
 *
 * 3. Invariants (writer_invariants_hold):
 *    - the committed sequences never exceed the working ones;
 *    - between batches, the working state equals the committed state (no dirty items);
 *    - every row of the batch belongs to a command of the batch (counts bounded by it);
 *    - the domain invariants: 0 <= reserved <= on_hand for every item, store totals add up.
 */
#include "core/writer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/problem.h"
#include "base/svc_assert.h"

#include "core/writer_internal.h"

static bool writer_invariants_hold(const struct writer *w)
{
    const struct writer_batch *b = w->batch;
    if (w->order_seq_committed > w->order_seq || w->event_seq_committed > w->event_seq) {
        return false;
    }
    if (b->command_count > BATCH_COMMANDS_MAX || b->rows.order_count > b->command_count ||
        b->rows.idem_count > b->command_count || b->rows.store_count > b->command_count) {
        return false;
    }
    if (b->rows.event_count > WRITER_EVENTS_MAX || b->rows.item_count > b->rows.event_count) {
        return false;
    }
    if (w->reservation_seq_committed > w->reservation_seq) {
        return false;
    }
    if (b->command_count == 0 && w->reservations.touched_count != 0) {
        return false;
    }
    if (b->command_count == 0 && w->config.domain->dirty_count != 0) {
        return false;
    }
    SVC_DEBUG_ASSERT(dom_invariants_hold(w->config.domain));
    return true;
}

/* ---- loading ---------------------------------------------------------------------------- */

static int writer_load_store(void *context, const char *id, const char *name, int64_t latency_ms)
{
    struct writer *w = context;
    return dom_load_store(w->config.domain, id, name, latency_ms);
}

static int writer_load_product(void *context, const char *sku, const char *name)
{
    struct writer *w = context;
    return dom_load_product(w->config.domain, sku, name);
}

static int writer_load_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                            int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    struct writer *w = context;
    return dom_load_item(w->config.domain, store_id, sku, on_hand, reserved, version, sold,
                         updated_at_ms);
}

int writer_init(struct writer *w, const struct writer_config *config)
{
    SVC_ASSERT(config->store && config->domain && config->queue && config->reply);
    SVC_ASSERT(config->wall_ms != NULL);
    memset(w, 0, sizeof *w);
    w->config = *config;
    w->batch = calloc(1, sizeof *w->batch);
    if (w->batch == NULL || (w->batch->arena = malloc(BATCH_ARENA_BYTES)) == NULL ||
        res_init(&w->reservations) != 0) {
        free(w->batch ? w->batch->arena : NULL);
        free(w->batch);
        return -ENOMEM;
    }
    struct store_loader loader = {w,
                                  writer_load_store,
                                  writer_load_product,
                                  writer_load_item,
                                  writer_load_reservation,
                                  writer_load_reservation_line,
                                  NULL,
                                  NULL};
    struct store_sequences sequences = {0, 0, 0};
    int rc = store_load(config->store, &loader, &sequences);
    if (rc != 0) {
        log_error("writer: loading state failed: %s", svc_err_name(rc));
        writer_deinit(w);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    dom_publish(config->domain);
    w->order_seq = w->order_seq_committed = sequences.order_seq_max;
    w->event_seq = w->event_seq_committed = sequences.event_seq_max;
    w->reservation_seq = w->reservation_seq_committed = sequences.reservation_seq_max;
    res_commit(&w->reservations); /* loaded reservations are committed state */
    w->prune_due_ms = config->wall_ms();
    atomic_store(&w->storage_ok, true);
    SVC_ASSERT(dom_invariants_hold(config->domain));
    SVC_ASSERT(writer_invariants_hold(w));
    log_info("writer: loaded %u stores, %u products, %u items; orders to %" PRId64
             ", events to %" PRId64 "; %u active reservations",
             config->domain->store_count, config->domain->product_count, config->domain->item_count,
             w->order_seq, w->event_seq, res_count(&w->reservations));
    return 0;
}

void writer_deinit(struct writer *w)
{
    SVC_ASSERT(!w->started);
    if (w->batch) {
        free(w->batch->arena);
        free(w->batch->shared.items);
        free(w->batch);
        w->batch = NULL;
        res_deinit(&w->reservations);
    }
}

/* ---- batch scratch ---------------------------------------------------------------------- */

static void writer_batch_reset(struct writer_batch *b, struct command **commands, size_t count,
                               int64_t now_ms)
{
    for (uint32_t i = 0; i < b->idem_used_count; i++) {
        b->idem_slots[b->idem_used[i]] = 0;
    }
    b->idem_used_count = 0;
    memset(&b->rows, 0, sizeof b->rows);
    b->rows.stores = b->stores;
    b->rows.products = b->products;
    b->rows.items = b->items;
    b->rows.orders = b->orders;
    b->rows.idems = b->idems;
    b->rows.events = b->events;
    b->rows.reservations = b->reservations;
    b->rows.reservation_lines = b->reservation_lines;
    b->commands = commands;
    b->command_count = count;
    b->arena_used = 0;
    b->now_ms = now_ms;
    memset(b->outcomes, 0, count * sizeof b->outcomes[0]);
}

/* Starts a JSON text in the arena; finish with writer_arena_finish. */
void writer_arena_begin(struct writer_batch *b, struct jbuf *out)
{
    SVC_ASSERT(b->arena_used < BATCH_ARENA_BYTES);
    jbuf_init(out, b->arena + b->arena_used, BATCH_ARENA_BYTES - b->arena_used);
}

const char *writer_arena_finish(struct writer_batch *b, struct jbuf *text)
{
    SVC_ASSERT(jbuf_ok(text)); /* the arena holds BATCH_COMMANDS_MAX worst-case payloads */
    const char *start = text->data;
    b->arena_used += text->length + 1;
    SVC_ASSERT(b->arena_used <= BATCH_ARENA_BYTES);
    return start;
}

struct row_event *writer_event(struct writer *w, const char *type, const char *store_id,
                               const char *sku, const char *data_json)
{
    struct writer_batch *b = w->batch;
    SVC_ASSERT(b->rows.event_count < WRITER_EVENTS_MAX);
    struct row_event *event = &b->events[b->rows.event_count++];
    event->seq = ++w->event_seq;
    event->event_type = type;
    event->event_version = 1;
    event->occurred_at_ms = b->now_ms;
    event->store_id = store_id;
    event->sku = sku;
    event->data_json = data_json;
    event->is_stock = false;
    event->delta = event->reserved_delta = event->on_hand = event->reserved = 0;
    event->version = 0;
    return event;
}

/* Appends an event whose data is the stock change of item: delta and the values after it. */
void writer_stock_event(struct writer *w, const char *type, uint32_t item_index, int64_t delta,
                        int64_t reserved_delta, const struct jbuf *prefix_members)
{
    struct writer_batch *b = w->batch;
    const struct domain *d = w->config.domain;
    const struct dom_item *item = &d->items[item_index];
    const char *store_id = d->stores[item->store_index].id;
    const char *sku = d->products[item->product_index].sku;
    struct jbuf data;
    writer_arena_begin(b, &data);
    jbuf_lit(&data, "{");
    if (prefix_members != NULL) {
        jbuf_raw(&data, prefix_members->data, prefix_members->length);
    }
    jbuf_kv_str(&data, "storeId", store_id);
    jbuf_kv_str(&data, "sku", sku);
    jbuf_kv_int(&data, "delta", delta);
    if (reserved_delta != 0) {
        jbuf_kv_int(&data, "reservedDelta", reserved_delta);
    }
    jbuf_kv_int(&data, "onHand", item->on_hand);
    jbuf_kv_int(&data, "reserved", item->reserved);
    jbuf_kv_int(&data, "version", item->version);
    jbuf_lit(&data, "}");
    struct row_event *event = writer_event(w, type, store_id, sku, writer_arena_finish(b, &data));
    event->is_stock = true;
    event->delta = delta;
    event->reserved_delta = reserved_delta;
    event->on_hand = item->on_hand;
    event->reserved = item->reserved;
    event->version = item->version;
}

/* ---- replies ---------------------------------------------------------------------------- */

void writer_reply_problem(struct command *cmd, int err, const char *detail, const char *extra_key,
                          int64_t extra_value)
{
    cmd->reply_status = svc_err_http_status(err);
    cmd->reply_problem = true;
    cmd->reply_length =
        problem_format(cmd->reply_body, cmd->reply_capacity, err, detail, extra_key, extra_value);
    SVC_ASSERT(cmd->reply_length < cmd->reply_capacity);
}

/* Starts a JSON success body in the command's reply buffer. */
void writer_reply_begin(struct command *cmd, int status, struct jbuf *out)
{
    SVC_ASSERT(status >= 200 && status < 300);
    cmd->reply_status = status;
    cmd->reply_problem = false;
    jbuf_init(out, cmd->reply_body, cmd->reply_capacity);
    jbuf_lit(out, "{");
}

void writer_reply_end(struct command *cmd, struct jbuf *body)
{
    jbuf_lit(body, "}");
    SVC_ASSERT(jbuf_ok(body)); /* fields are bounded by limits.h; the buffer fits them all */
    cmd->reply_length = body->length;
}

/* The seed-004 body {success,message,remaining_stock} with its own status codes. */
static void writer_reply_seed004(struct command *cmd, int status, bool success, const char *message,
                                 int64_t remaining)
{
    struct jbuf body;
    jbuf_init(&body, cmd->reply_body, cmd->reply_capacity);
    jbuf_lit(&body, success ? "{\"success\":true" : "{\"success\":false");
    jbuf_kv_str(&body, "message", message);
    jbuf_kv_int(&body, "remaining_stock", remaining);
    jbuf_lit(&body, "}");
    SVC_ASSERT(jbuf_ok(&body));
    cmd->reply_status = status;
    cmd->reply_problem = false;
    cmd->reply_length = body.length;
}

void writer_reply_item(struct writer *w, struct command *cmd, uint32_t item_index)
{
    const struct domain *d = w->config.domain;
    const struct dom_item *item = &d->items[item_index];
    struct jbuf body;
    writer_reply_begin(cmd, 200, &body);
    jbuf_kv_str(&body, "storeId", d->stores[item->store_index].id);
    jbuf_kv_str(&body, "sku", d->products[item->product_index].sku);
    jbuf_kv_int(&body, "onHand", item->on_hand);
    jbuf_kv_int(&body, "reserved", item->reserved);
    jbuf_kv_int(&body, "available", dom_item_available(item));
    jbuf_kv_int(&body, "version", item->version);
    writer_reply_end(cmd, &body);
}

/* ---- commands --------------------------------------------------------------------------- */

/* Each apply function sets the reply and returns true when it changed state (rows added). */

static bool writer_apply_store_create(struct writer *w, struct command *cmd)
{
    struct writer_batch *b = w->batch;
    uint32_t index = 0;
    int rc = dom_store_create(w->config.domain, cmd->store_id, cmd->name, cmd->latency_ms, &index);
    if (rc != 0) {
        const char *why = rc == SVC_ESTORE_EXISTS ? "a store with this storeId exists"
                                                  : "the store table is full (STORES_MAX)";
        writer_reply_problem(cmd, rc, why, NULL, 0);
        return false;
    }
    const struct dom_store *store = &w->config.domain->stores[index];
    b->stores[b->rows.store_count++] =
        (struct row_store){store->id, store->name, store->latency_ms, b->now_ms};
    struct jbuf body;
    writer_reply_begin(cmd, 201, &body);
    jbuf_kv_str(&body, "storeId", store->id);
    jbuf_kv_str(&body, "name", store->name);
    jbuf_kv_int(&body, "latencyMs", store->latency_ms);
    writer_reply_end(cmd, &body);
    struct jbuf data;
    writer_arena_begin(b, &data);
    jbuf_raw(&data, body.data, body.length); /* the event carries the store as replied */
    writer_event(w, "StoreCreated", store->id, NULL, writer_arena_finish(b, &data));
    return true;
}

static bool writer_apply_product_create(struct writer *w, struct command *cmd)
{
    struct writer_batch *b = w->batch;
    struct domain *d = w->config.domain;
    int32_t store_index = -1;
    if (cmd->has_store && (store_index = dom_store_find(d, cmd->store_id)) < 0) {
        writer_reply_problem(cmd, SVC_EUNKNOWN_STORE, "no store with this storeId", NULL, 0);
        return false;
    }
    uint32_t item_index = 0;
    int rc = dom_product_create(d, cmd->sku, cmd->name, cmd->initial_on_hand, store_index,
                                b->now_ms, &item_index);
    if (rc != 0) {
        const char *why = rc == SVC_EPRODUCT_EXISTS ? "a product with this sku exists"
                                                    : "the product or item table is full";
        writer_reply_problem(cmd, rc, why, NULL, 0);
        return false;
    }
    const struct dom_item *item = &d->items[item_index];
    const struct dom_product *product = &d->products[item->product_index];
    b->products[b->rows.product_count++] =
        (struct row_product){product->sku, product->name, b->now_ms};
    struct jbuf body;
    writer_reply_begin(cmd, 201, &body);
    jbuf_kv_str(&body, "sku", product->sku);
    jbuf_kv_str(&body, "name", product->name);
    jbuf_kv_str(&body, "storeId", d->stores[item->store_index].id);
    jbuf_kv_int(&body, "onHand", item->on_hand);
    writer_reply_end(cmd, &body);
    char members[NAME_BYTES_MAX * 6 + 32];
    struct jbuf prefix;
    jbuf_init(&prefix, members, sizeof members);
    jbuf_kv_str(&prefix, "name", product->name);
    writer_stock_event(w, "ProductCreated", item_index, item->on_hand, 0, &prefix);
    return true;
}

static void writer_order_rows(struct writer *w, struct command *cmd, uint32_t item_index)
{
    struct writer_batch *b = w->batch;
    const struct domain *d = w->config.domain;
    const struct dom_item *item = &d->items[item_index];
    struct row_order *order = &b->orders[b->rows.order_count++];
    struct jbuf lines;
    writer_arena_begin(b, &lines);
    jbuf_lit(&lines, "[{");
    jbuf_kv_str(&lines, "sku", cmd->sku);
    jbuf_kv_int(&lines, "qty", cmd->qty);
    jbuf_lit(&lines, "}]");
    order->lines_json = writer_arena_finish(b, &lines);
    struct jbuf history;
    writer_arena_begin(b, &history);
    jbuf_lit(&history, "[{\"status\":\"COMPLETED\"");
    jbuf_kv_time(&history, "at", b->now_ms);
    jbuf_lit(&history, "}]");
    order->history_json = writer_arena_finish(b, &history);
    order->order_seq = ++w->order_seq;
    order->customer_id = cmd->customer_id;
    order->store_id = d->stores[item->store_index].id;
    order->status = "COMPLETED";
    order->created_at_ms = b->now_ms;
    char members[CUSTOMER_ID_BYTES_MAX * 6 + 96];
    struct jbuf prefix;
    jbuf_init(&prefix, members, sizeof members);
    jbuf_lit(&prefix, "\"orderId\":\"ord_");
    jbuf_int(&prefix, order->order_seq);
    jbuf_lit(&prefix, "\"");
    jbuf_kv_str(&prefix, "customerId", cmd->customer_id);
    jbuf_kv_int(&prefix, "qty", cmd->qty);
    SVC_ASSERT(jbuf_ok(&prefix));
    writer_stock_event(w, "OrderCompleted", item_index, -cmd->qty, 0, &prefix);
}

static void writer_reply_purchase(struct writer *w, struct command *cmd, uint32_t item_index,
                                  int64_t available)
{
    const struct domain *d = w->config.domain;
    const struct dom_item *item = &d->items[item_index];
    if (cmd->style == CMD_STYLE_SEED004) {
        writer_reply_seed004(cmd, 200, true, "Purchase successful", available);
        return;
    }
    struct jbuf body;
    writer_reply_begin(cmd, 201, &body);
    jbuf_lit(&body, "\"orderId\":\"ord_");
    jbuf_int(&body, w->order_seq);
    jbuf_lit(&body, "\"");
    jbuf_kv_str(&body, "status", "COMPLETED");
    jbuf_kv_str(&body, "sku", cmd->sku);
    jbuf_kv_int(&body, "qty", cmd->qty);
    jbuf_kv_str(&body, "storeId", d->stores[item->store_index].id);
    jbuf_kv_int(&body, "available", available);
    writer_reply_end(cmd, &body);
    cmd->reply_order_created = true;
    cmd->reply_order_seq = w->order_seq;
}

static bool writer_apply_purchase(struct writer *w, struct command *cmd)
{
    struct domain *d = w->config.domain;
    int32_t product_index = dom_product_find(d, cmd->sku);
    if (product_index < 0) {
        writer_reply_problem(cmd, SVC_EUNKNOWN_SKU, "no product with this sku", NULL, 0);
        return false;
    }
    int32_t store_index = -1;
    if (cmd->has_store && (store_index = dom_store_find(d, cmd->store_id)) < 0) {
        writer_reply_problem(cmd, SVC_EUNKNOWN_STORE, "no store with this storeId", NULL, 0);
        return false;
    }
    uint32_t item_index = 0;
    int64_t available = 0;
    int rc = dom_purchase(d, (uint32_t)product_index, store_index, cmd->policy, cmd->qty,
                          w->batch->now_ms, &item_index, &available);
    if (rc == SVC_EINSUFFICIENT_STOCK && cmd->style == CMD_STYLE_SEED004) {
        writer_reply_seed004(cmd, 410, false, "SOLD OUT - No more inventory available", available);
        return false;
    }
    if (rc != 0) {
        SVC_ASSERT(rc == SVC_EINSUFFICIENT_STOCK);
        writer_reply_problem(cmd, rc, "not enough available to sell this quantity", "available",
                             available);
        return false;
    }
    writer_order_rows(w, cmd, item_index);
    writer_reply_purchase(w, cmd, item_index, available);
    return true;
}

static bool writer_apply_adjust(struct writer *w, struct command *cmd)
{
    struct domain *d = w->config.domain;
    int32_t product_index = dom_product_find(d, cmd->sku);
    int32_t store_index = dom_store_find(d, cmd->store_id);
    if (product_index < 0 || store_index < 0) {
        int err = product_index < 0 ? SVC_EUNKNOWN_SKU : SVC_EUNKNOWN_STORE;
        writer_reply_problem(cmd, err, "no such sku or store", NULL, 0);
        return false;
    }
    int32_t current = atomic_load(&d->products[product_index].item_by_store[store_index]);
    int64_t version = current >= 0 ? d->items[current].version : 0;
    if (cmd->has_expected_version && cmd->expected_version != version) {
        writer_reply_problem(cmd, SVC_EVERSION_CONFLICT, "the item changed since that version",
                             "currentVersion", version);
        return false;
    }
    uint32_t item_index = 0;
    int rc = dom_adjust(d, (uint32_t)store_index, (uint32_t)product_index, cmd->delta,
                        w->batch->now_ms, &item_index);
    if (rc != 0) {
        struct dom_item_view view = {0, 0, 0, 0, 0};
        int32_t existing = atomic_load(&d->products[product_index].item_by_store[store_index]);
        if (existing >= 0) {
            view.on_hand = d->items[existing].on_hand;
            view.reserved = d->items[existing].reserved;
        }
        writer_reply_problem(cmd, rc, "onHand would fall below reserved or out of range",
                             "available", view.on_hand - view.reserved);
        return false;
    }
    char members[REASON_BYTES_MAX * 6 + 32];
    struct jbuf prefix;
    jbuf_init(&prefix, members, sizeof members);
    jbuf_kv_str(&prefix, "reason", cmd->reason);
    writer_stock_event(w, "StockAdjusted", item_index, cmd->delta, 0, &prefix);
    writer_reply_item(w, cmd, item_index);
    return true;
}

/* Seed 004: the ticket item in the first store goes back to TICKET_RESET_ON_HAND, created
 * with its product when absent. */
static bool writer_apply_ticket_reset(struct writer *w, struct command *cmd)
{
    struct domain *d = w->config.domain;
    int32_t product_index = dom_product_find(d, cmd->sku);
    uint32_t item_index = 0;
    if (product_index < 0) {
        strcpy(cmd->name, "Item A - Concert Ticket");
        cmd->initial_on_hand = TICKET_RESET_ON_HAND;
        cmd->has_store = true;
        strcpy(cmd->store_id, d->stores[0].id);
        bool created = writer_apply_product_create(w, cmd);
        SVC_ASSERT(created || cmd->reply_status >= 400);
        if (created) {
            writer_reply_seed004(cmd, 200, true, "Inventory reset", TICKET_RESET_ON_HAND);
        }
        return created;
    }
    int32_t existing = atomic_load(&d->products[product_index].item_by_store[0]);
    int64_t on_hand = existing >= 0 ? d->items[existing].on_hand : 0;
    int rc = dom_adjust(d, 0, (uint32_t)product_index, TICKET_RESET_ON_HAND - on_hand,
                        w->batch->now_ms, &item_index);
    if (rc != 0) {
        writer_reply_problem(cmd, rc, "reserved units exceed the reset level", NULL, 0);
        return false;
    }
    dom_item_reset_sold(d, item_index); /* the seed's total_purchases restarts with the sale */
    char members[64];
    struct jbuf prefix;
    jbuf_init(&prefix, members, sizeof members);
    jbuf_kv_str(&prefix, "reason", "reset");
    writer_stock_event(w, "StockAdjusted", item_index, TICKET_RESET_ON_HAND - on_hand, 0, &prefix);
    writer_reply_seed004(cmd, 200, true, "Inventory reset", TICKET_RESET_ON_HAND);
    return true;
}

static bool writer_apply_kind(struct writer *w, struct command *cmd)
{
    switch (cmd->kind) {
    case CMD_STORE_CREATE: return writer_apply_store_create(w, cmd);
    case CMD_PRODUCT_CREATE: return writer_apply_product_create(w, cmd);
    case CMD_PURCHASE: return writer_apply_purchase(w, cmd);
    case CMD_ADJUST: return writer_apply_adjust(w, cmd);
    case CMD_TICKET_RESET: return writer_apply_ticket_reset(w, cmd);
    case CMD_SET_ABSOLUTE: return writer_apply_set_absolute(w, cmd);
    case CMD_RESERVE: return writer_apply_reserve(w, cmd);
    case CMD_CONFIRM: return writer_apply_confirm(w, cmd);
    case CMD_CANCEL: return writer_apply_cancel(w, cmd);
    case CMD_TRANSFER: return writer_apply_transfer(w, cmd);
    case CMD_RECONCILE: return writer_apply_reconcile(w, cmd);
    }
    SVC_UNREACHABLE();
}

/* ---- idempotency ------------------------------------------------------------------------ */

/* Finds cmd's (principal, key) among the earlier commands of this batch; returns its index or
 * -1, and the slot where it is or would go. The same key of two principals is two records. */
static int32_t writer_idem_batch_find(struct writer_batch *b, const struct command *cmd,
                                      uint32_t *slot_out)
{
    const char *key = cmd->idem_key;
    SVC_ASSERT(cmd->principal[0] != '\0');
    uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, cmd->principal, strlen(cmd->principal));
    uint32_t slot = (uint32_t)hash_fnv1a(h ^ 0xff, key, strlen(key)) & (WRITER_IDEM_SLOTS - 1);
    for (uint32_t probes = 0; probes < WRITER_IDEM_SLOTS; probes++) {
        int16_t entry = b->idem_slots[slot];
        if (entry == 0) {
            *slot_out = slot;
            return -1;
        }
        if (strcmp(b->commands[entry - 1]->idem_key, key) == 0 &&
            strcmp(b->commands[entry - 1]->principal, cmd->principal) == 0) {
            *slot_out = slot;
            return entry - 1;
        }
        slot = (slot + 1) & (WRITER_IDEM_SLOTS - 1);
    }
    SVC_UNREACHABLE();
}

/* A replayed 201 purchase names its order in the body ({"orderId":"ord_N",...}); recover N so
 * the replay carries the same Location header as the first answer. */
static void writer_replay_order(struct command *cmd)
{
    static const char prefix[] = "{\"orderId\":\"ord_";
    cmd->reply_order_created = false;
    if (cmd->reply_status != 201 || cmd->reply_length < sizeof prefix ||
        memcmp(cmd->reply_body, prefix, sizeof prefix - 1) != 0) {
        return;
    }
    int64_t seq = 0;
    for (size_t i = sizeof prefix - 1; i < cmd->reply_length && seq < INT64_MAX / 10; i++) {
        char c = cmd->reply_body[i];
        if (c < '0' || c > '9') {
            break;
        }
        seq = seq * 10 + (c - '0');
    }
    cmd->reply_order_created = seq > 0;
    cmd->reply_order_seq = seq;
}

static void writer_reply_copy(struct command *cmd, int status, bool problem, const char *body,
                              size_t length)
{
    if (length > cmd->reply_capacity) {
        /* Same key and fingerprint means the same request, so the same reply buffer class;
         * only a 64-bit fingerprint collision gets here. Refuse rather than truncate. */
        writer_reply_problem(cmd, SVC_EIDEM_KEY_REUSED, "key used with another request", NULL, 0);
        return;
    }
    cmd->reply_status = status;
    cmd->reply_problem = problem;
    cmd->reply_replayed = true;
    memcpy(cmd->reply_body, body, length);
    cmd->reply_length = length;
    writer_replay_order(cmd);
}

/* Decides a keyed command before it applies: returns the outcome if the key answers it
 * (replay, reuse, storage error), or WRITER_OUTCOME_FRESH when the command must apply. */
static enum writer_outcome writer_idem_check(struct writer *w, size_t index)
{
    struct writer_batch *b = w->batch;
    struct command *cmd = b->commands[index];
    uint32_t slot = 0;
    int32_t earlier = writer_idem_batch_find(b, cmd, &slot);
    if (earlier >= 0) {
        const struct command *first = b->commands[earlier];
        SVC_ASSERT((size_t)earlier < index);
        if (first->fingerprint != cmd->fingerprint) {
            writer_reply_problem(cmd, SVC_EIDEM_KEY_REUSED, "key used with another request", NULL,
                                 0);
            return WRITER_OUTCOME_NONE;
        }
        writer_reply_copy(cmd, first->reply_status, first->reply_problem, first->reply_body,
                          first->reply_length);
        return WRITER_OUTCOME_BATCH_REPLAY;
    }
    struct store_idem_found found;
    int rc = store_idem_find(w->config.store, cmd->principal, cmd->idem_key, &found);
    if (rc < 0) {
        writer_reply_problem(cmd, SVC_ESTORAGE_UNAVAILABLE, NULL, NULL, 0);
        return WRITER_OUTCOME_NONE;
    }
    if (rc == 1 && found.fingerprint != cmd->fingerprint) {
        writer_reply_problem(cmd, SVC_EIDEM_KEY_REUSED, "key used with another request", NULL, 0);
        return WRITER_OUTCOME_NONE;
    }
    if (rc == 1) {
        writer_reply_copy(cmd, found.status, found.problem, found.body, found.body_length);
        return WRITER_OUTCOME_STORED_REPLAY;
    }
    b->idem_slots[slot] = (int16_t)(index + 1);
    b->idem_used[b->idem_used_count++] = slot;
    return WRITER_OUTCOME_FRESH;
}

static void writer_idem_row(struct writer *w, const struct command *cmd)
{
    struct writer_batch *b = w->batch;
    SVC_ASSERT(cmd->has_idem_key);
    SVC_ASSERT(b->rows.idem_count < b->command_count);
    b->idems[b->rows.idem_count++] =
        (struct row_idem){cmd->principal,     cmd->idem_key,   cmd->fingerprint,  cmd->reply_status,
                          cmd->reply_problem, cmd->reply_body, cmd->reply_length, b->now_ms};
}

/* ---- the batch -------------------------------------------------------------------------- */

static void writer_apply(struct writer *w, size_t index)
{
    struct writer_batch *b = w->batch;
    struct command *cmd = b->commands[index];
    command_reply_prepare(cmd);
    cmd->reply_replayed = false;
    cmd->reply_order_created = false;
    if (cmd->has_idem_key) {
        enum writer_outcome outcome = writer_idem_check(w, index);
        if (outcome != WRITER_OUTCOME_FRESH) {
            b->outcomes[index] = outcome;
            return;
        }
    }
    bool changed = writer_apply_kind(w, cmd);
    SVC_ASSERT(cmd->reply_status >= 200 && cmd->reply_status <= 599);
    if (changed) {
        SVC_ASSERT(cmd->reply_status < 300);
    }
    if (cmd->has_idem_key) {
        writer_idem_row(w, cmd);
    }
    b->outcomes[index] =
        (changed || cmd->has_idem_key) ? WRITER_OUTCOME_FRESH : WRITER_OUTCOME_NONE;
}

static void writer_collect_items(struct writer *w)
{
    struct writer_batch *b = w->batch;
    const struct domain *d = w->config.domain;
    SVC_ASSERT(d->dirty_count <= b->rows.event_count);
    for (uint32_t k = 0; k < d->dirty_count; k++) {
        const struct dom_item *item = &d->items[d->dirty[k]];
        b->items[k] = (struct row_item){d->stores[item->store_index].id,
                                        d->products[item->product_index].sku,
                                        item->on_hand,
                                        item->reserved,
                                        item->version,
                                        item->sold,
                                        item->updated_at_ms};
    }
    b->rows.item_count = d->dirty_count;
}

/* Undoes the working state of a batch that was not committed. */
static void writer_undo_batch(struct writer *w)
{
    dom_rollback(w->config.domain);
    res_rollback(&w->reservations);
    w->order_seq = w->order_seq_committed;
    w->event_seq = w->event_seq_committed;
    w->reservation_seq = w->reservation_seq_committed;
}

static void writer_fail_batch(struct writer *w)
{
    struct writer_batch *b = w->batch;
    writer_undo_batch(w);
    atomic_fetch_add(&w->stats.batch_failures, 1);
    for (size_t i = 0; i < b->command_count; i++) {
        /* Only a replay from storage stands: it answers from durable state. A refusal
         * (WRITER_OUTCOME_NONE) was decided on the working state, which may hold changes of
         * earlier commands of this batch that were just rolled back (a 409 insufficient_stock
         * after a purchase that never happened), so it is not a true answer either. */
        if (b->outcomes[i] != WRITER_OUTCOME_STORED_REPLAY) {
            struct command *cmd = b->commands[i];
            command_reply_prepare(cmd); /* it may never have applied (a failed prepare) */
            writer_reply_problem(cmd, SVC_ESTORAGE_UNAVAILABLE,
                                 "the batch could not be made durable; retry with the same key",
                                 NULL, 0);
            cmd->reply_replayed = false;
            cmd->reply_order_created = false;
        }
    }
}

static void writer_record_stats(struct writer *w, size_t count, int64_t commit_us)
{
    struct writer_stats *st = &w->stats;
    atomic_fetch_add_explicit(&st->batches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->commands, count, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->commit_us_total, (uint64_t)commit_us, memory_order_relaxed);
    if ((uint64_t)commit_us > atomic_load_explicit(&st->commit_us_max, memory_order_relaxed)) {
        atomic_store_explicit(&st->commit_us_max, (uint64_t)commit_us, memory_order_relaxed);
    }
    if (count > atomic_load_explicit(&st->batch_size_max, memory_order_relaxed)) {
        atomic_store_explicit(&st->batch_size_max, count, memory_order_relaxed);
    }
    unsigned bucket = 0;
    while ((2u << bucket) <= count && bucket + 1 < WRITER_BATCH_BUCKETS) {
        bucket++;
    }
    atomic_fetch_add_explicit(&st->batch_size_buckets[bucket], 1, memory_order_relaxed);
}

size_t writer_command_weight(struct writer *w, const struct command *cmd)
{
    size_t lines = cmd->lines != NULL ? cmd->lines->count : 0;
    if (cmd->kind == CMD_CONFIRM || cmd->kind == CMD_CANCEL) {
        /* Ending a reservation makes one stock event per line of the reservation, which the
         * command does not carry: count its lines. One not in memory has ended (no events),
         * unless its id is still to come: an earlier command of the batch may create it. */
        SVC_ASSERT(lines == 0 && cmd->reservation_seq >= 1);
        const struct reservation *r = res_find(&w->reservations, cmd->reservation_seq);
        bool may_exist = cmd->reservation_seq > w->reservation_seq ||
                         store_is_shared(w->config.store); /* made by another instance */
        lines = r != NULL ? r->line_count : may_exist ? CMD_LINES_MAX : 0;
    }
    SVC_ASSERT(lines <= CMD_LINES_MAX);
    return 2 + 2 * lines; /* a transfer line makes two stock events, others at most one */
}

/* Prepares (a shared backend), applies and commits the batch in b once. */
static int writer_attempt(struct writer *w)
{
    struct writer_batch *b = w->batch;
    bool shared = store_is_shared(w->config.store);
    int64_t t0 = clock_mono_us();
    if (shared && writer_shared_prepare(w) != 0) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int64_t t1 = clock_mono_us();
    writer_expire_due(w); /* release expired holds before the batch competes for stock */
    for (size_t i = 0; i < b->command_count; i++) {
        writer_apply(w, i);
    }
    writer_collect_items(w);
    bool has_rows = b->rows.idem_count + b->rows.event_count + b->rows.item_count +
                        b->rows.order_count + b->rows.reservation_count >
                    0;
    int64_t t2 = clock_mono_us();
    /* A shared backend's transaction is open since the prepare: always end it. */
    int rc = has_rows || shared ? store_commit_batch(w->config.store, &b->rows) : 0;
    int64_t t3 = clock_mono_us();
    if (t3 - t0 >= WRITER_SLOW_BATCH_US) {
        log_warn("writer: slow batch of %zu commands: prepare %lld us, apply %lld us, commit"
                 " %lld us",
                 b->command_count, (long long)(t1 - t0), (long long)(t2 - t1),
                 (long long)(t3 - t2));
    }
    return rc;
}

void writer_run_batch(struct writer *w, struct command **commands, size_t count)
{
    SVC_ASSERT(count <= BATCH_COMMANDS_MAX);
    SVC_ASSERT(writer_invariants_hold(w));
    SVC_TESTCASE(count == BATCH_COMMANDS_MAX);
    size_t weight = 0;
    for (size_t i = 0; i < count; i++) {
        weight += writer_command_weight(w, commands[i]);
    }
    SVC_ASSERT(weight <= WRITER_COMMAND_WEIGHT_MAX); /* writer_loop cuts batches to fit */
    struct writer_batch *b = w->batch;
    int64_t now_ms = w->config.wall_ms();
    int64_t started_us = clock_mono_us();
    int rc = 0;
    for (int attempt = 1;; attempt++) {
        writer_batch_reset(b, commands, count, now_ms);
        rc = writer_attempt(w);
        if (rc != STORE_COMMIT_RETRY || attempt == WRITER_COMMIT_ATTEMPTS_MAX) {
            break;
        }
        writer_undo_batch(w); /* another instance won a race: read again, apply again */
        atomic_fetch_add_explicit(&w->stats.batch_retries, 1, memory_order_relaxed);
    }
    rc = rc == STORE_COMMIT_RETRY ? SVC_ESTORAGE_UNAVAILABLE : rc;
    int64_t commit_us = clock_mono_us() - started_us;
    if (rc == 0) {
        dom_publish(w->config.domain);
        res_commit(&w->reservations);
        w->reservation_seq_committed = w->reservation_seq;
        if (w->config.committed != NULL && b->rows.event_count > 0) {
            w->config.committed(b->rows.events, b->rows.event_count, w->config.committed_context);
        }
        w->order_seq_committed = w->order_seq;
        w->event_seq_committed = w->event_seq;
        atomic_store(&w->storage_ok, true);
    } else {
        writer_fail_batch(w);
        atomic_store(&w->storage_ok, false);
    }
    if (count > 0) {
        writer_record_stats(w, count, commit_us);
    }
    SVC_ASSERT(w->config.domain->dirty_count == 0);
    for (size_t i = 0; i < count; i++) {
        if (b->outcomes[i] == WRITER_OUTCOME_STORED_REPLAY ||
            b->outcomes[i] == WRITER_OUTCOME_BATCH_REPLAY) {
            atomic_fetch_add_explicit(&w->stats.replays, 1, memory_order_relaxed);
        }
        w->config.reply(commands[i], w->config.reply_context); /* ownership leaves here */
    }
    b->command_count = 0;
    memset(&b->rows, 0, sizeof b->rows);
    SVC_ASSERT(writer_invariants_hold(w));
}

/* ---- the thread ------------------------------------------------------------------------- */

void writer_housekeeping(struct writer *w)
{
    int64_t now_ms = w->config.wall_ms();
    if (now_ms < w->prune_due_ms) {
        return;
    }
    w->prune_due_ms = now_ms + 60 * 1000;
    int deleted = store_idem_prune(w->config.store, now_ms - w->config.idem_retention_ms,
                                   IDEM_PRUNE_ROWS_MAX);
    if (deleted > 0) {
        log_info("writer: pruned %d expired idempotency records", deleted);
        w->prune_due_ms = now_ms; /* more may be due: continue at the next idle moment */
    }
}

/* How many of the first count commands fit one batch's row budget (at least one). */
static size_t writer_batch_fit(struct writer *w, struct command **commands, size_t count)
{
    size_t weight = 0;
    size_t fit = 0;
    while (fit < count &&
           weight + writer_command_weight(w, commands[fit]) <= WRITER_COMMAND_WEIGHT_MAX) {
        weight += writer_command_weight(w, commands[fit]);
        fit++;
    }
    SVC_ASSERT(fit >= 1 || count == 0);
    return fit;
}

/* How long the idle writer may sleep: until the next reservation expires, at most a second. */
static int writer_idle_wait_ms(struct writer *w)
{
    int64_t next = res_next_expiry(&w->reservations);
    int64_t now = w->config.wall_ms();
    if (next <= now) {
        return 0;
    }
    return next - now < WRITER_IDLE_WAIT_MS ? (int)(next - now) : WRITER_IDLE_WAIT_MS;
}

static void *writer_loop(void *arg)
{
    struct writer *w = arg;
    struct command *commands[BATCH_COMMANDS_MAX];
    size_t carried = 0; /* commands popped but left for the next batch (row budget) */
    SVC_ASSERT(w->started);
    for (;;) {
        size_t count = carried + queue_pop_batch(w->config.queue, (void **)commands + carried,
                                                 BATCH_COMMANDS_MAX - carried);
        SVC_TESTCASE(count == 0);
        if (count > 0) {
            (void)writer_shared_sweep(w, w->config.wall_ms()); /* rate-limited; busy too */
            size_t fit = writer_batch_fit(w, commands, count);
            writer_run_batch(w, commands, fit);
            store_batch_done(w->config.store);
            carried = count - fit;
            memmove(commands, commands + fit, carried * sizeof commands[0]);
            continue;
        }
        if (atomic_load(&w->stopping)) {
            break; /* the queue is drained: every accepted command got its reply */
        }
        int64_t now_ms = w->config.wall_ms();
        if (res_next_expiry(&w->reservations) <= now_ms || writer_shared_sweep(w, now_ms)) {
            writer_run_batch(w, commands, 0); /* a batch of expiries only */
            continue;
        }
        writer_housekeeping(w);
        queue_wait(w->config.queue, writer_idle_wait_ms(w));
    }
    return NULL;
}

int writer_start(struct writer *w)
{
    SVC_ASSERT(!w->started);
    w->started = true;
    int rc = pthread_create(&w->thread, NULL, writer_loop, w);
    if (rc != 0) {
        w->started = false;
        return -rc;
    }
    return 0;
}

void writer_stop(struct writer *w)
{
    if (!w->started) {
        return;
    }
    atomic_store(&w->stopping, true);
    queue_wake(w->config.queue);
    pthread_join(w->thread, NULL);
    w->started = false;
}
