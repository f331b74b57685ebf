/*
 * api_inventory.c - the stock commands: stores, products, adjustments. They are decoded
 * here and decided by the writer. Queries (availability and the rest) are in api_queries.c,
 * answered from the event-fed read model.
 */
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"

/* Decodes the body with decode and submits; shared by every v1 command of this file. */
static int api_decode_store(const struct http_request *r, json_t *body, struct command *cmd,
                            const char **why)
{
    (void)r;
    int rc = api_get_string(body, "storeId", true, true, cmd->store_id, sizeof cmd->store_id, why);
    if (rc >= 0) {
        rc = api_get_string(body, "name", true, false, cmd->name, sizeof cmd->name, why);
    }
    if (rc >= 0) {
        cmd->latency_ms = 0;
        rc = api_get_int(body, "latencyMs", false, 0, 3600 * 1000, &cmd->latency_ms, why);
    }
    return rc < 0 ? rc : 0;
}

static int api_decode_product(const struct http_request *r, json_t *body, struct command *cmd,
                              const char **why)
{
    (void)r;
    int rc = api_get_string(body, "sku", true, true, cmd->sku, sizeof cmd->sku, why);
    if (rc >= 0) {
        rc = api_get_string(body, "name", true, false, cmd->name, sizeof cmd->name, why);
    }
    if (rc >= 0) {
        cmd->initial_on_hand = 0;
        rc = api_get_int(body, "initialOnHand", false, 0, QTY_MAX, &cmd->initial_on_hand, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, "storeId", false, true, cmd->store_id, sizeof cmd->store_id, why);
        cmd->has_store = rc == 1;
    }
    return rc < 0 ? rc : 0;
}

static int api_decode_adjustment(const struct http_request *r, json_t *body, struct command *cmd,
                                 const char **why)
{
    (void)r;
    int rc = api_get_string(body, "storeId", true, true, cmd->store_id, sizeof cmd->store_id, why);
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
    api_submit_command(r, CMD_STORE_CREATE, false, api_decode_store);
}

void api_product_create(struct http_request *r)
{
    api_submit_command(r, CMD_PRODUCT_CREATE, false, api_decode_product);
}

void api_adjustment(struct http_request *r)
{
    api_submit_command(r, CMD_ADJUST, false, api_decode_adjustment);
}
