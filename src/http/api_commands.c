/*
 * api_commands.c - GET /v1/commands/{key} (issue 12): the status of a command sent with
 * `Prefer: respond-async` (intake/intake.h), for the principal of the request's token.
 *
 * The key's idempotency record is the command's outcome: the writer stores it in the batch
 * that applied the command from the stream. Until it exists the answer is 202
 * {"status":"pending","idempotencyKey":...} with Retry-After INTAKE_RETRY_AFTER_SECONDS; then
 * it is the record's status and body, as a replay of the POST answers (201 with the order,
 * 409 problem+json insufficient_stock, ...), with Idempotent-Replayed: true, and for a 201
 * that created an order its Location: /v1/orders/{orderId} (the record's, as the replay sends
 * it): the 202 of the POST pointed here, since no order existed yet, and this answer points on
 * at the order (DESIGN.md: an asynchronous answer leads to /v1/orders/{id}). The record is
 * read from this thread's store reader (durable before the consumer acks the message), never
 * from the writer. A message the consumer dead-lettered has no record: it stays pending (the
 * operator finds it in GET /v1/dlt?stage=commands). Read api_dlt.c next.
 */
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"
#include "base/text.h"
#include "intake/intake.h"

/* Percent-decodes the {key} segment (the status URL carries the key URL-encoded) into out;
 * false when it is malformed or not a key (1..IDEM_KEY_BYTES_MAX printable ASCII). */
static bool api_commands_key(h2o_iovec_t param, char *out, size_t size)
{
    SVC_ASSERT(size == IDEM_KEY_BYTES_MAX + 1);
    size_t n = 0;
    for (size_t i = 0; i < param.len; i++) {
        int c = (unsigned char)param.base[i];
        if (c == '%') {
            int hi = i + 2 < param.len ? text_hex_value(param.base[i + 1]) : -1;
            int lo = hi >= 0 ? text_hex_value(param.base[i + 2]) : -1;
            if (lo < 0) {
                return false;
            }
            c = hi * 16 + lo;
            i += 2;
        }
        if (n + 1 >= size || c < 0x21 || c > 0x7e) {
            return false;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return n >= 1;
}

void api_command_status(struct http_request *r)
{
    char key[IDEM_KEY_BYTES_MAX + 1];
    if (!api_commands_key(r->path_param, key, sizeof key)) {
        http_send_problem(r, SVC_EVALIDATION,
                          "the key must be 1-255 printable ASCII characters (URL-encoded)", NULL,
                          0);
        return;
    }
    /* The token's principal, as GET /v1/idempotency/{key} reads it. */
    const char *principal = r->principal != NULL ? r->principal : "anonymous";
    struct store_idem_view found;
    int rc = store_reader_idem(r->thread->reader, principal, key, &found);
    if (rc < 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot read idempotency records", NULL, 0);
        return;
    }
    h2o_req_t *req = r->req;
    if (rc == 0) {
        char body[IDEM_KEY_BYTES_MAX * 6 + 64]; /* every byte escaped at worst */
        struct jbuf b;
        jbuf_init(&b, body, sizeof body);
        jbuf_lit(&b, "{\"status\":\"pending\"");
        jbuf_kv_str(&b, "idempotencyKey", key);
        jbuf_lit(&b, "}");
        SVC_ASSERT(jbuf_ok(&b));
        char retry[16];
        int length = snprintf(retry, sizeof retry, "%d", INTAKE_RETRY_AFTER_SECONDS);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       h2o_strdup(&req->pool, retry, (size_t)length).base, (size_t)length);
        http_send_json(r, 202, body, b.length);
        return;
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("idempotent-replayed"), 0, NULL,
                          H2O_STRLIT("true"));
    if (found.status == 201 && found.location != NULL && found.location[0] != '\0') {
        size_t length = strlen(found.location);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL,
                       h2o_strdup(&req->pool, found.location, length).base, length);
    }
    http_send(r, found.status, found.problem ? "application/problem+json" : "application/json",
              found.body, found.body_length);
}
