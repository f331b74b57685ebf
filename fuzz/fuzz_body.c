/*
 * fuzz_body.c - libFuzzer harness for the request decoders: JSON bodies and the path
 * parameter of every v1 command (api_inventory.c, api_orders.c, api_reservations.c, included
 * here to reach their static decoders), and the query-string parameter reader (request.c).
 *
 * Input: byte 0 picks the decoder; the bytes up to the first newline are the path parameter
 * ({id} of the route, e.g. res_12); the rest is the body, parsed as api_parse_body does. The
 * same rest is also read as a query string, and by json_flat (base/json_flat.h), whose reading
 * must agree with jansson's, and so must the purchase it decodes. Properties, besides "no
 * crash, no sanitizer report": a refusal is a 4xx svc_err with a reason; an accepted command has
 * NUL-terminated fields, identifiers of [A-Za-z0-9._-] only, and at most CMD_LINES_MAX lines. See
 * fuzz/README.md for running, minimising and merging.
 */
#include "../src/http/api_inventory.c"
#include "../src/http/api_orders.c"
#include "../src/http/api_reservations.c"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "http/request.h"
#include "../tests/unit/json_flat_check.h"

/* The longest path parameter the harness passes (routes cap theirs at the URL length). */
#define FUZZ_PATH_PARAM_MAX 128

static int fuzz_decode_purchase(const struct http_request *r, json_t *body, struct command *cmd,
                                const char **why)
{
    (void)r;
    struct json_view purchase = {body, NULL};
    return api_decode_purchase(&purchase, cmd, why);
}

static const struct {
    api_decoder decode;
    bool with_lines;
} fuzz_decoders[] = {
    {api_decode_store, false},        {api_decode_product, false},
    {api_decode_adjustment, false},   {fuzz_decode_purchase, false},
    {api_decode_set_absolute, false}, {api_decode_reservation, true},
    {api_decode_confirm, true},       {api_decode_cancel, true},
    {api_decode_transfer, true},      {api_decode_reconciliation, true},
};

#define FUZZ_DECODER_COUNT (sizeof fuzz_decoders / sizeof fuzz_decoders[0])

static void fuzz_check_field(const char *field, size_t size, bool identifier)
{
    size_t length = strnlen(field, size);
    SVC_ASSERT(length < size); /* NUL-terminated inside its array */
    SVC_ASSERT(!identifier || length == 0 || api_is_id(field, length, size - 1));
}

static void fuzz_check_command(const struct command *cmd)
{
    fuzz_check_field(cmd->store_id, sizeof cmd->store_id, true);
    fuzz_check_field(cmd->to_store_id, sizeof cmd->to_store_id, true);
    fuzz_check_field(cmd->sku, sizeof cmd->sku, true);
    fuzz_check_field(cmd->name, sizeof cmd->name, false);
    fuzz_check_field(cmd->customer_id, sizeof cmd->customer_id, false);
    fuzz_check_field(cmd->reason, sizeof cmd->reason, false);
    SVC_ASSERT(cmd->qty >= 0 && cmd->initial_on_hand >= 0 && cmd->latency_ms >= 0);
    if (cmd->lines != NULL) {
        SVC_ASSERT(cmd->lines->count <= CMD_LINES_MAX);
        for (uint32_t i = 0; i < cmd->lines->count; i++) {
            fuzz_check_field(cmd->lines->items[i].sku, sizeof cmd->lines->items[i].sku, true);
            SVC_ASSERT(cmd->lines->items[i].qty >= 0);
        }
    }
}

static void fuzz_query(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"q", "page", "size", "since", "limit", "storeId", "sku"};
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.query = h2o_iovec_init(data, size);
    char out[256];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int rc = http_query_param(&r, names[i], out, sizeof out);
        SVC_ASSERT(rc == 0 || rc == 1 || rc == SVC_EVALIDATION);
        SVC_ASSERT(rc != 1 || strnlen(out, sizeof out) < sizeof out);
    }
}

/* json_flat.h's promise: what it reads, jansson reads as the same object, member for member,
 * and a purchase decoded from either is the same command with the same answer. */
static void fuzz_flat(const uint8_t *bytes, size_t length, json_t *body)
{
    static struct json_flat flat;
    if (!json_flat_parse((const char *)bytes, length, &flat)) {
        return;
    }
    SVC_ASSERT(json_flat_check_object(&flat, body));
    static struct command from_flat, from_json;
    memset(&from_flat, 0, sizeof from_flat);
    memset(&from_json, 0, sizeof from_json);
    const char *why_flat = NULL;
    const char *why_json = NULL;
    struct json_view a = {NULL, &flat};
    struct json_view b = {body, NULL};
    int rc_flat = api_decode_purchase(&a, &from_flat, &why_flat);
    int rc_json = api_decode_purchase(&b, &from_json, &why_json);
    SVC_ASSERT(rc_flat == rc_json && why_flat == why_json);
    SVC_ASSERT(memcmp(&from_flat, &from_json, sizeof from_flat) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    size_t which = data[0] % FUZZ_DECODER_COUNT;
    data++;
    size--;
    const uint8_t *newline =
        memchr(data, '\n', size < FUZZ_PATH_PARAM_MAX ? size : FUZZ_PATH_PARAM_MAX);
    size_t param_length = newline != NULL ? (size_t)(newline - data) : 0;
    const uint8_t *body_bytes = newline != NULL ? newline + 1 : data;
    size_t body_length = size - (size_t)(body_bytes - data);
    fuzz_query(body_bytes, body_length);

    struct http_request r;
    memset(&r, 0, sizeof r);
    r.path_param = h2o_iovec_init(data, param_length);
    json_error_t error;
    json_t *body =
        json_loadb((const char *)body_bytes, body_length, JSON_REJECT_DUPLICATES, &error);
    fuzz_flat(body_bytes, body_length, body);
    if (body == NULL || !json_is_object(body)) {
        json_decref(body);
        return 0; /* api_parse_body answers 400 invalid_json before any decoder */
    }
    static struct command cmd;
    static struct cmd_lines lines;
    memset(&cmd, 0, sizeof cmd);
    memset(&lines, 0, sizeof lines);
    cmd.lines = fuzz_decoders[which].with_lines ? &lines : NULL;
    const char *why = NULL;
    int rc = fuzz_decoders[which].decode(&r, body, &cmd, &why);
    if (rc != 0) {
        SVC_ASSERT(why != NULL);
        SVC_ASSERT(svc_err_http_status(rc) >= 400 && svc_err_http_status(rc) <= 499);
    } else {
        fuzz_check_command(&cmd);
    }
    json_decref(body);
    return 0;
}
