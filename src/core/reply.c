/*
 * reply.c - see reply.h. One function per outcome kind writes its v1 body; the seed-004 shapes
 * are the few cases where the style changes the bytes.
 */
#include "core/reply.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/json_out.h"
#include "base/problem.h"
#include "base/svc_assert.h"

/* ---- bodies ------------------------------------------------------------------------------- */

static void reply_begin(struct command *cmd, int status, struct jbuf *out)
{
    SVC_ASSERT(status >= 200 && status < 300);
    SVC_ASSERT(cmd->reply_body != NULL && cmd->reply_capacity >= REPLY_BODY_BYTES_MAX);
    cmd->reply_status = status;
    cmd->reply_problem = false;
    jbuf_init(out, cmd->reply_body, cmd->reply_capacity);
    jbuf_lit(out, "{");
}

static void reply_end(struct command *cmd, struct jbuf *body)
{
    jbuf_lit(body, "}");
    SVC_ASSERT(jbuf_ok(body)); /* fields are bounded by svc_limits.h; the buffer fits them all */
    cmd->reply_length = body->length;
}

void reply_problem(struct command *cmd, int err, const char *detail)
{
    SVC_ASSERT(cmd->reply_body != NULL);
    cmd->reply_status = svc_err_http_status(err);
    cmd->reply_problem = true;
    cmd->reply_location[0] = '\0';
    cmd->reply_length = problem_format(cmd->reply_body, cmd->reply_capacity, err, detail, NULL, 0);
    SVC_ASSERT(cmd->reply_length < cmd->reply_capacity);
}

/* "lines":[{sku,qty}...] of r, for the replies of a reservation and of an order. */
static void reply_lines(struct jbuf *body, const struct domain *d, const struct reservation *r)
{
    SVC_ASSERT(r->line_count >= 1);
    jbuf_key(body, "lines");
    jbuf_lit(body, "[");
    for (uint32_t i = 0; i < r->line_count; i++) {
        jbuf_lit(body, i == 0 ? "{" : ",{");
        jbuf_kv_str(body, "sku", d->products[r->lines[i].product_index].sku);
        jbuf_kv_int(body, "qty", r->lines[i].qty);
        jbuf_lit(body, "}");
    }
    jbuf_lit(body, "]");
}

/* Seed 004's {success,message,remaining_stock}. */
static void reply_seed004(struct command *cmd, int status, bool success, const char *message,
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

static void reply_refusal(struct command *cmd, const struct outcome_problem *p)
{
    if (cmd->style == CMD_STYLE_SEED004 && p->err == SVC_EINSUFFICIENT_STOCK) {
        SVC_ASSERT(p->extra_key != NULL); /* every sold-out refusal says what is left */
        reply_seed004(cmd, 410, false, "SOLD OUT - No more inventory available", p->extra_value);
        return;
    }
    cmd->reply_status = svc_err_http_status(p->err);
    cmd->reply_problem = true;
    cmd->reply_length =
        problem_format(cmd->reply_body, cmd->reply_capacity, p->err,
                       p->detail[0] != '\0' ? p->detail : NULL, p->extra_key, p->extra_value);
    SVC_ASSERT(cmd->reply_length < cmd->reply_capacity);
}

static void reply_store(struct command *cmd, const struct dom_store *store)
{
    struct jbuf body;
    reply_begin(cmd, 201, &body);
    jbuf_kv_str(&body, "storeId", store->id);
    jbuf_kv_str(&body, "name", store->name);
    jbuf_kv_int(&body, "latencyMs", store->latency_ms);
    reply_end(cmd, &body);
}

static void reply_product(struct command *cmd, const struct domain *d, const struct dom_item *item)
{
    const struct dom_product *product = &d->products[item->product_index];
    struct jbuf body;
    reply_begin(cmd, 201, &body);
    jbuf_kv_str(&body, "sku", product->sku);
    jbuf_kv_str(&body, "name", product->name);
    jbuf_kv_str(&body, "storeId", d->stores[item->store_index].id);
    jbuf_kv_int(&body, "onHand", item->on_hand);
    reply_end(cmd, &body);
}

static void reply_purchase(struct command *cmd, const struct outcome *o, const struct domain *d)
{
    const struct dom_item *item = &d->items[o->index];
    SVC_ASSERT(o->order_seq >= 1 && o->available >= 0);
    if (cmd->style == CMD_STYLE_SEED004) {
        reply_seed004(cmd, 200, true, "Purchase successful", o->available);
        return;
    }
    /* Written with jbuf, not snprintf: this runs for every purchase. */
    struct jbuf body;
    reply_begin(cmd, 201, &body);
    jbuf_lit(&body, "\"orderId\":\"ord_");
    jbuf_int(&body, o->order_seq);
    jbuf_lit(&body, "\"");
    jbuf_kv_str(&body, "status", "COMPLETED");
    jbuf_kv_str(&body, "sku", d->products[item->product_index].sku);
    jbuf_kv_int(&body, "qty", cmd->qty);
    jbuf_kv_str(&body, "storeId", d->stores[item->store_index].id);
    jbuf_kv_int(&body, "available", o->available);
    reply_end(cmd, &body);
    struct jbuf location;
    jbuf_init(&location, cmd->reply_location, sizeof cmd->reply_location);
    jbuf_lit(&location, "/v1/orders/ord_");
    jbuf_int(&location, o->order_seq);
    SVC_ASSERT(jbuf_ok(&location)); /* 15 bytes and 19 digits fit REPLY_LOCATION_BYTES_MAX */
}

static void reply_item(struct command *cmd, const struct domain *d, const struct dom_item *item)
{
    struct jbuf body;
    reply_begin(cmd, 200, &body);
    jbuf_kv_str(&body, "storeId", d->stores[item->store_index].id);
    jbuf_kv_str(&body, "sku", d->products[item->product_index].sku);
    jbuf_kv_int(&body, "onHand", item->on_hand);
    jbuf_kv_int(&body, "reserved", item->reserved);
    jbuf_kv_int(&body, "available", dom_item_available(item));
    jbuf_kv_int(&body, "version", item->version);
    reply_end(cmd, &body);
}

static void reply_reservation(struct command *cmd, const struct outcome *o, const struct domain *d)
{
    const struct reservation *r = o->reservation;
    SVC_ASSERT(r != NULL && r->seq >= 1);
    char id[32];
    snprintf(id, sizeof id, "res_%" PRId64, r->seq);
    struct jbuf body;
    reply_begin(cmd, o->created ? 201 : 200, &body);
    jbuf_kv_str(&body, "reservationId", id);
    jbuf_kv_str(&body, "status", res_status_name(r->status));
    jbuf_kv_str(&body, "storeId", d->stores[r->store_index].id);
    jbuf_kv_str(&body, "customerId", r->customer_id);
    reply_lines(&body, d, r);
    jbuf_kv_time(&body, "expiresAt", r->expires_at_ms);
    jbuf_kv_int(&body, "expiresAtMs", r->expires_at_ms);
    jbuf_kv_int(&body, "version", r->version);
    reply_end(cmd, &body);
}

/* A checkout order (issue 11): 201 with Location when created, else 200. Its history is
 * complete only at creation (one entry); GET /v1/orders/{id} shows the stored one. */
static void reply_order(struct command *cmd, const struct outcome *o, const struct domain *d)
{
    const struct reservation *r = o->reservation;
    SVC_ASSERT(r != NULL && o->order_seq == r->order_seq && o->order_seq >= 1);
    SVC_ASSERT(o->order_status != NULL);
    struct jbuf body;
    reply_begin(cmd, o->created ? 201 : 200, &body);
    jbuf_lit(&body, "\"orderId\":\"ord_");
    jbuf_int(&body, o->order_seq);
    jbuf_lit(&body, "\"");
    jbuf_kv_str(&body, "status", o->order_status);
    jbuf_lit(&body, ",\"reservationId\":\"res_");
    jbuf_int(&body, r->seq);
    jbuf_lit(&body, "\"");
    jbuf_kv_str(&body, "customerId", r->customer_id);
    jbuf_kv_str(&body, "storeId", d->stores[r->store_index].id);
    reply_lines(&body, d, r);
    if (r->expires_at_ms != RES_EXPIRES_NEVER) {
        jbuf_kv_time(&body, "expiresAt", r->expires_at_ms);
    }
    if (o->created) {
        jbuf_key(&body, "history");
        jbuf_lit(&body, "[{\"status\":\"PENDING\"");
        jbuf_kv_time(&body, "at", r->created_at_ms);
        jbuf_lit(&body, "}]");
        struct jbuf location;
        jbuf_init(&location, cmd->reply_location, sizeof cmd->reply_location);
        jbuf_lit(&location, "/v1/orders/ord_");
        jbuf_int(&location, o->order_seq);
        SVC_ASSERT(jbuf_ok(&location));
    }
    reply_end(cmd, &body);
}

static void reply_transfer(struct command *cmd, const struct outcome *o)
{
    SVC_ASSERT(cmd->lines != NULL && cmd->lines->count >= 1);
    struct jbuf body;
    reply_begin(cmd, 201, &body);
    jbuf_kv_str(&body, "transferId", o->id);
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
    reply_end(cmd, &body);
}

static void reply_reconciliation(struct command *cmd, const struct outcome *o,
                                 const struct domain *d)
{
    SVC_ASSERT(o->adjustment_count == 0 || o->adjustments != NULL);
    struct jbuf body;
    reply_begin(cmd, 200, &body);
    jbuf_kv_str(&body, "reconciliationId", o->id);
    jbuf_kv_str(&body, "storeId", cmd->store_id);
    jbuf_kv_str(&body, "source", cmd->reason);
    jbuf_key(&body, "adjustments");
    jbuf_lit(&body, "[");
    for (uint32_t k = 0; k < o->adjustment_count; k++) {
        const struct outcome_adjustment *a = &o->adjustments[k];
        jbuf_lit(&body, k == 0 ? "{" : ",{");
        jbuf_kv_str(&body, "sku", d->products[a->product_index].sku);
        jbuf_kv_int(&body, "before", a->before);
        jbuf_kv_int(&body, "after", a->after);
        jbuf_kv_int(&body, "delta", a->delta);
        jbuf_lit(&body, "}");
    }
    jbuf_lit(&body, "]");
    reply_end(cmd, &body);
}

void reply_format(struct command *cmd, const struct outcome *o, const struct domain *d)
{
    SVC_ASSERT(cmd->reply_body != NULL);
    cmd->reply_location[0] = '\0';
    cmd->reply_replayed = false;
    switch (o->kind) {
    case OUTCOME_PROBLEM: reply_refusal(cmd, &o->problem); break;
    case OUTCOME_STORE: reply_store(cmd, &d->stores[o->index]); break;
    case OUTCOME_PRODUCT: reply_product(cmd, d, &d->items[o->index]); break;
    case OUTCOME_PURCHASE: reply_purchase(cmd, o, d); break;
    case OUTCOME_ITEM: reply_item(cmd, d, &d->items[o->index]); break;
    case OUTCOME_TICKET_RESET:
        reply_seed004(cmd, 200, true, "Inventory reset", o->available);
        break;
    case OUTCOME_RESERVATION: reply_reservation(cmd, o, d); break;
    case OUTCOME_TRANSFER: reply_transfer(cmd, o); break;
    case OUTCOME_RECONCILIATION: reply_reconciliation(cmd, o, d); break;
    case OUTCOME_ORDER: reply_order(cmd, o, d); break;
    }
    SVC_ASSERT(cmd->reply_status >= 200 && cmd->reply_status <= 599);
    SVC_ASSERT(cmd->reply_length > 0 && cmd->reply_length < cmd->reply_capacity);
}

bool reply_replay(struct command *cmd, int status, bool problem, const char *body, size_t length,
                  const char *location)
{
    SVC_ASSERT(status >= 200 && status <= 599);
    SVC_ASSERT(location != NULL);
    if (length > cmd->reply_capacity || strlen(location) >= sizeof cmd->reply_location) {
        /* Same key and fingerprint means the same request, so the same reply buffer class;
         * only a 64-bit fingerprint collision gets here. Refuse rather than truncate. */
        reply_problem(cmd, SVC_EIDEM_KEY_REUSED, "key used with another request");
        return false;
    }
    cmd->reply_status = status;
    cmd->reply_problem = problem;
    cmd->reply_replayed = true;
    memcpy(cmd->reply_body, body, length);
    cmd->reply_length = length;
    strcpy(cmd->reply_location, location);
    return true;
}
