/*
 * api_orders.c - POST /v1/purchase (buy now) and GET /v1/orders/{id}.
 *
 * A purchase is decoded and validated here, on the I/O thread, and then decided by the writer;
 * an order is read back through this thread's read-only store handle.
 */
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/svc_assert.h"

static int api_decode_policy(json_t *body, enum dom_policy *out, const char **why)
{
    char policy[32];
    int rc = api_get_string(body, "policy", false, true, policy, sizeof policy, why);
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

static int api_decode_purchase(json_t *body, struct command *cmd, const char **why)
{
    int rc = api_get_string(body, "sku", true, true, cmd->sku, sizeof cmd->sku, why);
    if (rc >= 0) {
        rc = api_get_int(body, "qty", true, 1, QTY_MAX, &cmd->qty, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, "customerId", true, false, cmd->customer_id,
                            sizeof cmd->customer_id, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, "storeId", false, true, cmd->store_id, sizeof cmd->store_id, why);
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
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        http_command_free(hc);
        return;
    }
    const char *why = NULL;
    int rc = api_decode_purchase(body, &hc->cmd, &why);
    json_decref(body);
    if (rc != 0) {
        http_command_free(hc);
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    SVC_ASSERT(hc->cmd.qty >= 1 && hc->cmd.qty <= QTY_MAX);
    http_command_submit(r, hc);
}

/* Parses "ord_<n>" into n >= 1; 0 when malformed. */
static int64_t api_order_seq(h2o_iovec_t id)
{
    if (id.len < 5 || id.len > 24 || memcmp(id.base, "ord_", 4) != 0) {
        return 0;
    }
    int64_t seq = 0;
    for (size_t i = 4; i < id.len; i++) {
        if (id.base[i] < '0' || id.base[i] > '9' || (i == 4 && id.base[i] == '0')) {
            return 0;
        }
        if (seq > (INT64_MAX - 9) / 10) {
            return 0;
        }
        seq = seq * 10 + (id.base[i] - '0');
    }
    return seq;
}

void api_order_get(struct http_request *r)
{
    int64_t seq = api_order_seq(r->path_param);
    if (seq <= 0) {
        http_send_problem(r, SVC_EUNKNOWN_ORDER, "order ids look like ord_123", NULL, 0);
        return;
    }
    char body[READ_BODY_BYTES_MAX];
    size_t length = 0;
    int rc = store_reader_order_json(r->thread->reader, seq, body, sizeof body, &length);
    if (rc == 0) {
        http_send_problem(r, SVC_EUNKNOWN_ORDER, "no order with this id", NULL, 0);
        return;
    }
    if (rc < 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, NULL, NULL, 0);
        return;
    }
    SVC_ASSERT(length > 0 && length < sizeof body);
    http_send_json(r, 200, body, length);
}
