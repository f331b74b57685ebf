/*
 * api_reservations.c - decoding of the multi-line and reservation commands:
 *   POST /v1/items:set-absolute, /v1/reservations, /v1/reservations/{id}:confirm|:cancel,
 *   /v1/transfers, /v1/reconciliations.
 * Lines go into a line block from the thread's pool (struct cmd_lines); the writer decides
 * (writer_stock.c, writer_reservations.c).
 */
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/svc_assert.h"

/* See api.h. */
int api_decode_lines(json_t *body, struct cmd_lines *out, const char **why)
{
    json_t *lines = json_object_get(body, "lines");
    if (!json_is_array(lines) || json_array_size(lines) < 1 ||
        json_array_size(lines) > CMD_LINES_MAX) {
        *why = "lines must be an array of 1 to 100 {sku, qty}";
        return SVC_EVALIDATION;
    }
    out->count = 0;
    for (size_t i = 0; i < json_array_size(lines); i++) {
        json_t *line = json_array_get(lines, i);
        struct cmd_line *dst = &out->items[out->count];
        if (!json_is_object(line)) {
            *why = "each line must be an object {sku, qty}";
            return SVC_EVALIDATION;
        }
        int rc = api_get_string(line, "sku", true, true, dst->sku, sizeof dst->sku, why);
        if (rc >= 0) {
            rc = api_get_int(line, "qty", true, 1, QTY_MAX, &dst->qty, why);
        }
        if (rc < 0) {
            return rc;
        }
        out->count++;
    }
    SVC_ASSERT(out->count >= 1 && out->count <= CMD_LINES_MAX);
    return 0;
}

static int api_decode_set_absolute(const struct http_request *r, json_t *body, struct command *cmd,
                                   const char **why)
{
    (void)r;
    int rc = api_get_string(body, "storeId", true, true, cmd->store_id, sizeof cmd->store_id, why);
    if (rc >= 0) {
        rc = api_get_string(body, "sku", true, true, cmd->sku, sizeof cmd->sku, why);
    }
    if (rc >= 0) {
        rc = api_get_int(body, "onHand", true, 0, QTY_MAX, &cmd->qty, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, "countRef", true, false, cmd->reason, sizeof cmd->reason, why);
    }
    return rc < 0 ? rc : 0;
}

/* See api.h. */
int api_decode_hold(json_t *body, struct command *cmd, bool ttl_required, const char **why)
{
    int rc = api_get_string(body, "storeId", false, true, cmd->store_id, sizeof cmd->store_id, why);
    cmd->has_store = rc == 1;
    if (rc >= 0) {
        rc = api_get_int(body, "ttlSeconds", ttl_required, 1, RESERVATION_TTL_SECONDS_MAX,
                         &cmd->ttl_seconds, why);
    }
    if (rc >= 0) {
        rc = api_get_string(body, "customerId", true, false, cmd->customer_id,
                            sizeof cmd->customer_id, why);
    }
    if (rc >= 0) {
        rc = api_decode_lines(body, cmd->lines, why);
    }
    return rc < 0 ? rc : 0;
}

static int api_decode_reservation(const struct http_request *r, json_t *body, struct command *cmd,
                                  const char **why)
{
    (void)r;
    return api_decode_hold(body, cmd, true, why);
}

static int api_decode_confirm(const struct http_request *r, json_t *body, struct command *cmd,
                              const char **why)
{
    cmd->reservation_seq = api_id_seq(r->path_param, "res_");
    if (cmd->reservation_seq == 0) {
        *why = "reservation ids look like res_123";
        return SVC_EUNKNOWN_RESERVATION;
    }
    int rc = api_get_string(body, "paymentRef", false, false, cmd->reason, sizeof cmd->reason, why);
    return rc < 0 ? rc : 0;
}

static int api_decode_cancel(const struct http_request *r, json_t *body, struct command *cmd,
                             const char **why)
{
    cmd->reservation_seq = api_id_seq(r->path_param, "res_");
    if (cmd->reservation_seq == 0) {
        *why = "reservation ids look like res_123";
        return SVC_EUNKNOWN_RESERVATION;
    }
    int rc = api_get_string(body, "reason", true, false, cmd->reason, sizeof cmd->reason, why);
    return rc < 0 ? rc : 0;
}

static int api_decode_transfer(const struct http_request *r, json_t *body, struct command *cmd,
                               const char **why)
{
    (void)r;
    int rc =
        api_get_string(body, "fromStore", true, true, cmd->store_id, sizeof cmd->store_id, why);
    if (rc >= 0) {
        rc = api_get_string(body, "toStore", true, true, cmd->to_store_id, sizeof cmd->to_store_id,
                            why);
    }
    if (rc >= 0 && strcmp(cmd->store_id, cmd->to_store_id) == 0) {
        *why = "fromStore and toStore must differ";
        rc = SVC_EVALIDATION;
    }
    if (rc >= 0) {
        rc = api_decode_lines(body, cmd->lines, why);
    }
    return rc < 0 ? rc : 0;
}

/* "snapshotOnHand": {sku: counted, ...} with 1..100 members, counts 0..QTY_MAX. */
static int api_decode_snapshot(json_t *body, struct cmd_lines *out, const char **why)
{
    json_t *snapshot = json_object_get(body, "snapshotOnHand");
    if (!json_is_object(snapshot) || json_object_size(snapshot) < 1 ||
        json_object_size(snapshot) > CMD_LINES_MAX) {
        *why = "snapshotOnHand must be an object of 1 to 100 {sku: count}";
        return SVC_EVALIDATION;
    }
    const char *sku = NULL;
    json_t *count = NULL;
    out->count = 0;
    json_object_foreach(snapshot, sku, count)
    {
        struct cmd_line *dst = &out->items[out->count];
        if (!api_is_id(sku, strlen(sku), SKU_BYTES_MAX) || !json_is_integer(count) ||
            json_integer_value(count) < 0 || json_integer_value(count) > QTY_MAX) {
            *why = "each snapshot member is a valid sku with a count from 0 to 1e9";
            return SVC_EVALIDATION;
        }
        strcpy(dst->sku, sku);
        dst->qty = (int64_t)json_integer_value(count);
        out->count++;
    }
    SVC_ASSERT(out->count >= 1 && out->count <= CMD_LINES_MAX);
    return 0;
}

static int api_decode_reconciliation(const struct http_request *r, json_t *body,
                                     struct command *cmd, const char **why)
{
    (void)r;
    int rc = api_get_string(body, "storeId", true, true, cmd->store_id, sizeof cmd->store_id, why);
    if (rc >= 0) {
        rc = api_get_string(body, "source", true, false, cmd->reason, sizeof cmd->reason, why);
    }
    if (rc >= 0) {
        rc = api_decode_snapshot(body, cmd->lines, why);
    }
    return rc < 0 ? rc : 0;
}

void api_set_absolute(struct http_request *r)
{
    api_submit_command(r, CMD_SET_ABSOLUTE, false, api_decode_set_absolute);
}

void api_reservation_create(struct http_request *r)
{
    api_submit_command(r, CMD_RESERVE, true, api_decode_reservation);
}

void api_reservation_confirm(struct http_request *r)
{
    /* A line block for its reply: the reservation's lines (up to 100) do not fit the
     * inline reply buffer. */
    api_submit_command(r, CMD_CONFIRM, true, api_decode_confirm);
}

void api_reservation_cancel(struct http_request *r)
{
    /* A line block for its reply, as for confirm. */
    api_submit_command(r, CMD_CANCEL, true, api_decode_cancel);
}

void api_transfer(struct http_request *r)
{
    api_submit_command(r, CMD_TRANSFER, true, api_decode_transfer);
}

void api_reconciliation(struct http_request *r)
{
    api_submit_command(r, CMD_RECONCILE, true, api_decode_reconciliation);
}
