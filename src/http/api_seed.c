/*
 * api_seed.c - the seed-004 routes as thin aliases onto the v1 commands, so that seed's own
 * client and proof_of_correctness script work unchanged:
 *   POST /buy_ticket  -> a purchase of one unit of the ticket sku in any store (200 / 410)
 *   GET  /inventory   -> the ticket item of the first store in the seed's shape, read from
 *                        the projector like every other query
 *   POST /reset       -> ticket stock back to 100, only with --allow-reset
 * The commands are decided by the writer. Read api_ops.c next.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"
#include "read/projector.h"

void api_seed_buy_ticket(struct http_request *r)
{
    struct http_command *hc = api_command_begin(r, CMD_PURCHASE);
    if (hc == NULL) {
        return;
    }
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        http_command_free(hc);
        return;
    }
    struct command *cmd = &hc->cmd;
    const char *why = NULL;
    int rc = api_get_string(body, "customer_id", false, false, cmd->customer_id,
                            sizeof cmd->customer_id, &why);
    json_decref(body);
    if (rc < 0) {
        http_command_free(hc);
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    if (rc == 0) {
        strcpy(cmd->customer_id, "anonymous");
    }
    cmd->style = CMD_STYLE_SEED004;
    cmd->qty = 1;
    cmd->policy = DOM_POLICY_HIGHEST_AVAILABLE;
    strcpy(cmd->sku, r->thread->app->config.ticket_sku);
    http_command_submit(r, hc);
}

void api_seed_reset(struct http_request *r)
{
    if (!r->thread->app->config.allow_reset) {
        http_send_problem(r, SVC_EFORBIDDEN_RESET, "start stockd with --allow-reset", NULL, 0);
        return;
    }
    struct http_command *hc = api_command_begin(r, CMD_TICKET_RESET);
    if (hc == NULL) {
        return;
    }
    hc->cmd.style = CMD_STYLE_SEED004;
    strcpy(hc->cmd.sku, r->thread->app->config.ticket_sku);
    http_command_submit(r, hc);
}

/* Writes GET /inventory's body for the ticket item (sku, its name, item) into out. */
static size_t api_seed_inventory_format(char *out, size_t size, const char *sku, const char *name,
                                        const struct projector_item *item)
{
    SVC_ASSERT(item->reserved >= 0 && item->reserved <= item->on_hand);
    char updated[32];
    time_t seconds = (time_t)(item->updated_at_ms / 1000);
    struct tm tm;
    gmtime_r(&seconds, &tm);
    strftime(updated, sizeof updated, "%Y-%m-%d %H:%M:%S", &tm);
    struct jbuf b;
    jbuf_init(&b, out, size);
    jbuf_lit(&b, "{\"item_id\":1");
    jbuf_kv_str(&b, "item_name", name);
    jbuf_kv_str(&b, "sku", sku);
    jbuf_kv_int(&b, "current_stock", item->on_hand - item->reserved);
    jbuf_kv_int(&b, "initial_stock", TICKET_RESET_ON_HAND);
    jbuf_kv_int(&b, "total_purchases", item->sold);
    jbuf_kv_str(&b, "last_updated", updated);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b)); /* a 200-byte name escaped fits READ_BODY_BYTES_MAX */
    return b.length;
}

void api_seed_inventory(struct http_request *r)
{
    struct projector *p = &r->thread->app->projector;
    const char *sku = r->thread->app->config.ticket_sku;
    SVC_ASSERT(sku[0] != '\0');
    api_read_fresh(r); /* a buyer sees its own purchase */
    struct projection *v = projector_read_begin(p);
    int32_t product_index = projector_product_find(v, sku);
    struct projector_item item;
    /* The ticket item lives in the first store (index 0), where POST /reset puts it. */
    if (product_index < 0 || !projector_item_get(v, (uint32_t)product_index, 0, &item)) {
        projector_read_end(p, v);
        http_send_problem(r, SVC_EUNKNOWN_SKU, "no ticket item yet: POST /reset creates it", NULL,
                          0);
        return;
    }
    char body[READ_BODY_BYTES_MAX];
    size_t length = api_seed_inventory_format(
        body, sizeof body, sku, projector_product_name(v, (uint32_t)product_index), &item);
    projector_read_end(p, v); /* the name was copied into body */
    http_send_json(r, 200, body, length);
}

/* Seed 001's GET /inventory/{productId}: the product's totals over every store, read from the
 * projector like GET /v1/availability?sku= (the productId is the sku). */
void api_seed_inventory_item(struct http_request *r)
{
    char sku[SKU_BYTES_MAX + 1];
    h2o_iovec_t id = r->path_param;
    if (id.base == NULL || id.len == 0 || id.len > SKU_BYTES_MAX ||
        !api_is_id(id.base, id.len, SKU_BYTES_MAX)) {
        http_send_problem(r, SVC_EVALIDATION, "the productId must be 1-64 of [A-Za-z0-9._-]", NULL,
                          0);
        return;
    }
    memcpy(sku, id.base, id.len);
    sku[id.len] = '\0';
    struct projector *p = &r->thread->app->projector;
    api_read_fresh(r);
    struct projection *v = projector_read_begin(p);
    int32_t product_index = projector_product_find(v, sku);
    int64_t on_hand = 0;
    int64_t reserved = 0;
    struct projector_item item;
    uint32_t store = 0;
    for (int32_t at = product_index >= 0
                          ? projector_item_next(v, (uint32_t)product_index, -1, &store, &item)
                          : -1;
         at >= 0; at = projector_item_next(v, (uint32_t)product_index, at, &store, &item)) {
        on_hand += item.on_hand;
        reserved += item.reserved;
    }
    projector_read_end(p, v);
    if (product_index < 0) {
        http_send_problem(r, SVC_EUNKNOWN_SKU, "no product with this productId", NULL, 0);
        return;
    }
    SVC_ASSERT(reserved >= 0 && reserved <= on_hand);
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "productId", sku);
    jbuf_kv_int(&b, "available", on_hand - reserved);
    jbuf_kv_int(&b, "reserved", reserved);
    jbuf_kv_int(&b, "onHand", on_hand);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
}
