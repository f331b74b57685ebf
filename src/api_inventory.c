/*
 * api_inventory.c - the stock commands: stores, products, adjustments. They are decoded
 * here and decided by the writer. Queries (availability and the rest) are in api_queries.c,
 * answered from the event-fed read model.
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
