/*
 * api_orders.c - POST /v1/purchase (buy now), the checkout orders (POST /v1/orders and
 * POST /v1/orders/{id}:cancel, issue 11) and GET /v1/orders/{id} for both kinds.
 *
 * A purchase is decoded and validated here, on the I/O thread, and then decided by the writer;
 * an order is read back through this thread's read-only store handle (it is durable before
 * its purchase is answered, so no wait for the read model is needed) and formatted here.
 * Read api_reservations.c next.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "intake/intake.h"

static int api_decode_policy(const struct json_view *body, enum dom_policy *out, const char **why)
{
    char policy[32];
    int rc = api_body_string(body, "policy", false, true, policy, sizeof policy, why);
    *out = DOM_POLICY_HIGHEST_AVAILABLE;
    if (rc <= 0) {
        return rc;
    }
    if (strcmp(policy, "highest-available") == 0) {
        return 0;
    }
    if (strcmp(policy, "lowest-latency") == 0) {
        *out = DOM_POLICY_LOWEST_LATENCY;
        return 0;
    }
    if (strcmp(policy, "round-robin") == 0) {
        *out = DOM_POLICY_ROUND_ROBIN;
        return 0;
    }
    *why = "policy must be highest-available, lowest-latency or round-robin";
    return SVC_EVALIDATION;
}

static int api_decode_purchase(const struct json_view *body, struct command *cmd, const char **why)
{
    int rc = api_body_string(body, "sku", true, true, cmd->sku, sizeof cmd->sku, why);
    if (rc >= 0) {
        rc = api_body_int(body, "qty", true, 1, QTY_MAX, &cmd->qty, why);
    }
    if (rc >= 0) {
        rc = api_body_string(body, "customerId", true, false, cmd->customer_id,
                             sizeof cmd->customer_id, why);
    }
    if (rc >= 0) {
        rc =
            api_body_string(body, "storeId", false, true, cmd->store_id, sizeof cmd->store_id, why);
        cmd->has_store = rc == 1;
    }
    if (rc >= 0) {
        rc = api_decode_policy(body, &cmd->policy, why);
    }
    return rc < 0 ? rc : 0;
}

void api_purchase(struct http_request *r)
{
    struct http_command *hc = api_command_begin(r, CMD_PURCHASE);
    if (hc == NULL) {
        return;
    }
    struct json_flat flat; /* the usual body: read in place, without jansson's allocations */
    struct json_view body;
    if (!api_parse_body_flat(r, &flat, &body)) {
        http_command_free(hc);
        return;
    }
    const char *why = NULL;
    int rc = api_decode_purchase(&body, &hc->cmd, &why);
    json_decref(body.json);
    if (rc != 0) {
        http_command_free(hc);
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    SVC_ASSERT(hc->cmd.qty >= 1 && hc->cmd.qty <= QTY_MAX);
    if (api_intake_wanted(r)) { /* validated: to the broker instead of the writer */
        http_command_free(hc);
        api_intake_publish(r, INTAKE_KIND_PURCHASE);
        return;
    }
    http_command_submit(r, hc);
}

/* Decodes POST /v1/orders: the lines of a reservation, held for ttlSeconds (default
 * ORDER_TTL_SECONDS_DEFAULT) until paid. */
static int api_decode_order(const struct http_request *r, json_t *body, struct command *cmd,
                            const char **why)
{
    (void)r;
    cmd->ttl_seconds = ORDER_TTL_SECONDS_DEFAULT;
    return api_decode_hold(body, cmd, false, why);
}

void api_order_create(struct http_request *r)
{
    api_submit_command(r, CMD_ORDER_CREATE, true, api_decode_order);
}

/* Decodes seed 001's POST /orders {userId, items:[{productId, quantity}]} into the command of
 * POST /v1/orders {customerId, lines:[{sku, qty}]} (the default store choice and TTL). */
static int api_decode_seed_order(const struct http_request *r, json_t *body, struct command *cmd,
                                 const char **why)
{
    (void)r;
    cmd->ttl_seconds = ORDER_TTL_SECONDS_DEFAULT;
    int rc =
        api_get_string(body, "userId", true, false, cmd->customer_id, sizeof cmd->customer_id, why);
    if (rc < 0) {
        return rc;
    }
    json_t *items = json_object_get(body, "items");
    if (!json_is_array(items) || json_array_size(items) < 1 ||
        json_array_size(items) > CMD_LINES_MAX) {
        *why = "items must be an array of 1 to 100 {productId, quantity}";
        return SVC_EVALIDATION;
    }
    struct cmd_lines *out = cmd->lines;
    out->count = 0;
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *item = json_array_get(items, i);
        struct cmd_line *dst = &out->items[out->count];
        if (!json_is_object(item)) {
            *why = "each item must be an object {productId, quantity}";
            return SVC_EVALIDATION;
        }
        rc = api_get_string(item, "productId", true, true, dst->sku, sizeof dst->sku, why);
        if (rc >= 0) {
            rc = api_get_int(item, "quantity", true, 1, QTY_MAX, &dst->qty, why);
        }
        if (rc < 0) {
            return rc;
        }
        out->count++;
    }
    SVC_ASSERT(out->count >= 1 && out->count <= CMD_LINES_MAX);
    return 0;
}

void api_seed_order_create(struct http_request *r)
{
    api_submit_command(r, CMD_ORDER_CREATE, true, api_decode_seed_order);
}

/* See api.h: the decoders of the routes above, for a command that came through the stream of
 * commands (intake/intake.h) instead of a request. */
int api_decode_async(const char *route, const struct json_view *body, struct command *cmd,
                     const char **why)
{
    SVC_ASSERT(route != NULL && body != NULL);
    cmd->style = CMD_STYLE_V1;
    if (strcmp(route, "/v1/purchase") == 0 || strcmp(route, "/purchase") == 0) {
        cmd->kind = CMD_PURCHASE; /* seed 000's /purchase is api_purchase too */
        return api_decode_purchase(body, cmd, why);
    }
    if (strcmp(route, "/v1/orders") == 0) {
        /* An order's lines are read through jansson: intake_consume reads its message so. */
        SVC_ASSERT(cmd->lines != NULL && body->json != NULL && json_is_object(body->json));
        cmd->kind = CMD_ORDER_CREATE;
        return api_decode_order(NULL, body->json, cmd, why);
    }
    *why = "route must be /v1/purchase, /purchase or /v1/orders";
    return SVC_EVALIDATION;
}

static bool api_order_cancelled(struct http_request *r, const struct command *cmd);

/* Decodes POST /v1/orders/{id}:cancel. The writer needs the order's hold, which never changes
 * once the order exists: it is read here from the stored order (durable before its 201). */
static int api_decode_order_cancel(const struct http_request *r, json_t *body, struct command *cmd,
                                   const char **why)
{
    cmd->order_seq = api_id_seq(r->path_param, "ord_");
    if (cmd->order_seq <= 0) {
        *why = "order ids look like ord_123";
        return SVC_EUNKNOWN_ORDER;
    }
    int rc = api_get_string(body, "reason", true, false, cmd->reason, sizeof cmd->reason, why);
    if (rc < 0) {
        return rc;
    }
    struct store_order_row row;
    rc = store_reader_order(r->thread->reader, cmd->order_seq, &row);
    if (rc <= 0) {
        *why = rc == 0 ? "no order with this id" : NULL;
        return rc == 0 ? SVC_EUNKNOWN_ORDER : rc;
    }
    if (row.reservation_seq == 0) {
        *why = "a purchase is COMPLETED at once: there is nothing to cancel";
        return SVC_EORDER_NOT_CANCELLABLE;
    }
    cmd->reservation_seq = row.reservation_seq;
    SVC_ASSERT(cmd->reservation_seq >= 1 && cmd->order_seq >= 1);
    struct http_command *hc =
        (struct http_command *)((char *)cmd - offsetof(struct http_command, cmd));
    hc->send_ok = api_order_cancelled; /* the 200 shows the order with its history, as GET */
    return 0;
}

void api_order_cancel(struct http_request *r)
{
    api_submit_command(r, CMD_ORDER_CANCEL, false, api_decode_order_cancel);
}

/* Writes seed 001's "items":[{productId, quantity}] from the stored lines [{sku, qty}]. */
static void api_order_seed_items(struct jbuf *b, const char *lines_json)
{
    json_t *lines = json_loads(lines_json, 0, NULL);
    jbuf_key(b, "items");
    jbuf_lit(b, "[");
    for (size_t i = 0; json_is_array(lines) && i < json_array_size(lines); i++) {
        json_t *line = json_array_get(lines, i);
        const char *sku = json_string_value(json_object_get(line, "sku"));
        jbuf_lit(b, i == 0 ? "{" : ",{");
        jbuf_kv_str(b, "productId", sku != NULL ? sku : "");
        jbuf_kv_int(b, "quantity", json_integer_value(json_object_get(line, "qty")));
        jbuf_lit(b, "}");
    }
    jbuf_lit(b, "]");
    json_decref(lines);
}

/* Writes the v1 order JSON of ord_<seq> from its stored columns, with seed 001's userId and
 * items besides when seed; false when it did not fit. */
static bool api_order_format(struct jbuf *b, int64_t seq, const struct store_order_row *row,
                             bool seed)
{
    SVC_ASSERT(seq >= 1);
    SVC_ASSERT(row->lines_json != NULL && row->history_json != NULL);
    char order_id[32];
    snprintf(order_id, sizeof order_id, "ord_%" PRId64, seq);
    jbuf_lit(b, "{");
    jbuf_kv_str(b, "orderId", order_id);
    jbuf_kv_str(b, "customerId", row->customer_id);
    if (seed) {
        jbuf_kv_str(b, "userId", row->customer_id);
        api_order_seed_items(b, row->lines_json);
    }
    jbuf_kv_str(b, "storeId", row->store_id);
    jbuf_kv_str(b, "status", row->status);
    if (row->reservation_seq != 0) { /* a checkout order */
        char reservation_id[32];
        snprintf(reservation_id, sizeof reservation_id, "res_%" PRId64, row->reservation_seq);
        jbuf_kv_str(b, "reservationId", reservation_id);
        jbuf_kv_time(b, "expiresAt", row->expires_at_ms);
        jbuf_kv_time(b, "updatedAt", row->updated_at_ms);
    }
    jbuf_key(b, "lines");
    jbuf_lit(b, row->lines_json); /* stored JSON, written by the writer */
    jbuf_key(b, "history");
    jbuf_lit(b, row->history_json);
    jbuf_kv_time(b, "createdAt", row->created_at_ms);
    jbuf_lit(b, "}");
    return jbuf_ok(b);
}

/* Sends ord_<seq> as stored (200); false, having sent nothing, when it cannot be read. */
static bool api_order_send(struct http_request *r, int64_t seq, bool seed, bool *absent)
{
    struct store_order_row row;
    int rc = store_reader_order(r->thread->reader, seq, &row);
    SVC_ASSERT(rc <= 1); /* 1 found, 0 absent, or an error */
    *absent = rc == 0;
    if (rc <= 0) {
        return false;
    }
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    if (!api_order_format(&b, seq, &row, seed)) {
        log_error("http: order ord_%" PRId64 " does not fit %d bytes", seq, READ_BODY_BYTES_MAX);
        return false;
    }
    SVC_ASSERT(b.length > 0 && b.length < sizeof body);
    http_send_json(r, 200, body, b.length);
    return true;
}

/* A cancel's 200 (first or replayed): the order as GET shows it, committed before the reply
 * was released; the writer's own body (no history) if it cannot be read. */
static bool api_order_cancelled(struct http_request *r, const struct command *cmd)
{
    SVC_ASSERT(cmd->kind == CMD_ORDER_CANCEL && cmd->order_seq >= 1);
    bool absent = false;
    return api_order_send(r, cmd->order_seq, false, &absent);
}

/* GET /v1/orders/{id}, or seed 001's GET /orders/{id} (seed: userId and items besides). */
static void api_order_get_as(struct http_request *r, bool seed)
{
    int64_t seq = api_id_seq(r->path_param, "ord_");
    if (seq <= 0) {
        http_send_problem(r, SVC_EUNKNOWN_ORDER, "order ids look like ord_123", NULL, 0);
        return;
    }
    bool absent = false;
    if (!api_order_send(r, seq, seed, &absent)) {
        http_send_problem(r, absent ? SVC_EUNKNOWN_ORDER : SVC_ESTORAGE_UNAVAILABLE,
                          absent ? "no order with this id" : NULL, NULL, 0);
    }
}

void api_order_get(struct http_request *r)
{
    api_order_get_as(r, false);
}

void api_seed_order_get(struct http_request *r)
{
    api_order_get_as(r, true);
}
