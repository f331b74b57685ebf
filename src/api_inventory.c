/*
 * api_inventory.c - stores, products, stock adjustments and availability.
 *
 * Commands are decoded here and decided by the writer; availability is answered from the
 * published read model (dom_read_*) on this thread, with an ETag over item versions.
 */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "errors.h"
#include "json_out.h"
#include "svc_assert.h"

/* Decodes the body with decode and submits; shared by every v1 command of this file. */
static void api_submit_decoded(struct http_request *r, enum cmd_kind kind,
                               int (*decode)(json_t *, struct command *, const char **))
{
    struct http_command *hc = api_command_begin(r, kind);
    if (hc == NULL) {
        return;
    }
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        http_command_free(hc);
        return;
    }
    const char *why = "If-Match must be a quoted version number";
    int rc = api_if_match(r, &hc->cmd);
    if (rc == 0) {
        rc = decode(body, &hc->cmd, &why);
    }
    json_decref(body);
    if (rc != 0) {
        http_command_free(hc);
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    http_command_submit(r, hc);
}

static int api_decode_store(json_t *body, struct command *cmd, const char **why)
{
    int rc = api_get_string(body, "storeId", true, true, cmd->store_id, sizeof cmd->store_id,
                            why);
    if (rc >= 0) {
        rc = api_get_string(body, "name", true, false, cmd->name, sizeof cmd->name, why);
    }
    if (rc >= 0) {
        cmd->latency_ms = 0;
        rc = api_get_int(body, "latencyMs", false, 0, 3600 * 1000, &cmd->latency_ms, why);
    }
    return rc < 0 ? rc : 0;
}

static int api_decode_product(json_t *body, struct command *cmd, const char **why)
{
    int rc = api_get_string(body, "sku", true, true, cmd->sku, sizeof cmd->sku, why);
    if (rc >= 0) {
        rc = api_get_string(body, "name", true, false, cmd->name, sizeof cmd->name, why);
    }
    if (rc >= 0) {
        cmd->initial_on_hand = 0;
        rc = api_get_int(body, "initialOnHand", false, 0, QTY_MAX, &cmd->initial_on_hand, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, "storeId", false, true, cmd->store_id, sizeof cmd->store_id,
                            why);
        cmd->has_store = rc == 1;
    }
    return rc < 0 ? rc : 0;
}

static int api_decode_adjustment(json_t *body, struct command *cmd, const char **why)
{
    int rc = api_get_string(body, "storeId", true, true, cmd->store_id, sizeof cmd->store_id,
                            why);
    if (rc >= 0) {
        rc = api_get_string(body, "sku", true, true, cmd->sku, sizeof cmd->sku, why);
    }
    if (rc >= 0) {
        rc = api_get_int(body, "delta", true, -QTY_MAX, QTY_MAX, &cmd->delta, why);
    }
    if (rc >= 0 && cmd->delta == 0) {
        *why = "delta must not be 0";
        rc = SVC_EVALIDATION;
    }
    if (rc >= 0) {
        rc = api_get_string(body, "reason", true, false, cmd->reason, sizeof cmd->reason, why);
    }
    return rc < 0 ? rc : 0;
}

void api_store_create(struct http_request *r)
{
    api_submit_decoded(r, CMD_STORE_CREATE, api_decode_store);
}

void api_product_create(struct http_request *r)
{
    api_submit_decoded(r, CMD_PRODUCT_CREATE, api_decode_product);
}

void api_adjustment(struct http_request *r)
{
    api_submit_decoded(r, CMD_ADJUST, api_decode_adjustment);
}



/* Sums the published items of product over one store (store_index >= 0) or all. */
static void api_sum_items(const struct domain *d, uint32_t product_index, int32_t store_index,
                          struct dom_item_view *sum)
{
    memset(sum, 0, sizeof *sum);
    uint32_t store_count = dom_read_store_count(d);
    for (uint32_t s = 0; s < store_count; s++) {
        struct dom_item_view view;
        if ((store_index >= 0 && (uint32_t)store_index != s) ||
            !dom_read_item(d, product_index, s, &view)) {
            continue;
        }
        sum->on_hand += view.on_hand;
        sum->reserved += view.reserved;
        sum->version += view.version;
    }
    SVC_ASSERT(sum->reserved >= 0 && sum->reserved <= sum->on_hand);
}

void api_availability(struct http_request *r)
{
    const struct domain *d = &r->thread->app->domain;
    char sku[SKU_BYTES_MAX + 1];
    char store_id[STORE_ID_BYTES_MAX + 1];
    int has_sku = http_query_param(r, "sku", sku, sizeof sku);
    int has_store = http_query_param(r, "storeId", store_id, sizeof store_id);
    if (has_sku != 1 || !api_is_id(sku, strlen(sku), SKU_BYTES_MAX) || has_store < 0) {
        http_send_problem(r, SVC_EVALIDATION, "query parameter sku is required", NULL, 0);
        return;
    }
    int32_t product_index = dom_read_product_find(d, sku);
    int32_t store_index = has_store == 1 ? dom_read_store_find(d, store_id) : -1;
    if (product_index < 0 || (has_store == 1 && store_index < 0)) {
        int err = product_index < 0 ? SVC_EUNKNOWN_SKU : SVC_EUNKNOWN_STORE;
        http_send_problem(r, err, "no such sku or store", NULL, 0);
        return;
    }
    struct dom_item_view sum;
    api_sum_items(d, (uint32_t)product_index, store_index, &sum);
    char etag[32];
    int etag_length = snprintf(etag, sizeof etag, "\"%lld\"", (long long)sum.version);
    h2o_req_t *req = r->req;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ETAG, NULL,
                   h2o_strdup(&req->pool, etag, (size_t)etag_length).base, (size_t)etag_length);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-projection-lag-ms"), 0,
                          NULL, H2O_STRLIT("0"));
    h2o_iovec_t match = http_header(r, "if-none-match");
    if (match.base && h2o_memis(match.base, match.len, etag, (size_t)etag_length)) {
        http_send(r, 304, "application/json", NULL, 0);
        return;
    }
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "sku", sku);
    if (has_store == 1) {
        jbuf_kv_str(&b, "storeId", store_id);
    }
    jbuf_kv_int(&b, "onHand", sum.on_hand);
    jbuf_kv_int(&b, "reserved", sum.reserved);
    jbuf_kv_int(&b, "available", sum.on_hand - sum.reserved);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
}
