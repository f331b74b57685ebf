/*
 * api_seed.c - the seed-004 routes as thin aliases onto the v1 commands, so that seed's own
 * client and proof_of_correctness script work unchanged:
 *   POST /buy_ticket  -> a purchase of one unit of the ticket sku in any store (200 / 410)
 *   GET  /inventory   -> the ticket item in the seed's shape
 *   POST /reset       -> ticket stock back to 100, only with --allow-reset
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"

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

void api_seed_inventory(struct http_request *r)
{
    const struct domain *d = &r->thread->app->domain;
    const char *sku = r->thread->app->config.ticket_sku;
    int32_t product_index = dom_read_product_find(d, sku);
    struct dom_item_view view;
    if (product_index < 0 || !dom_read_item(d, (uint32_t)product_index, 0, &view)) {
        http_send_problem(r, SVC_EUNKNOWN_SKU, "no ticket item yet: POST /reset creates it", NULL,
                          0);
        return;
    }
    char updated[32];
    time_t seconds = (time_t)(view.updated_at_ms / 1000);
    struct tm tm;
    gmtime_r(&seconds, &tm);
    strftime(updated, sizeof updated, "%Y-%m-%d %H:%M:%S", &tm);
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{\"item_id\":1");
    jbuf_kv_str(&b, "item_name", d->products[product_index].name);
    jbuf_kv_str(&b, "sku", sku);
    jbuf_kv_int(&b, "current_stock", view.on_hand - view.reserved);
    jbuf_kv_int(&b, "initial_stock", TICKET_RESET_ON_HAND);
    jbuf_kv_int(&b, "total_purchases", view.sold);
    jbuf_kv_str(&b, "last_updated", updated);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
}
