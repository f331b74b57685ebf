/*
 * api_common.c - what the handlers share: request decoding (body rules, typed JSON members,
 * idempotency keys, If-Match), the wait that makes reads see their own writes, and the JSON of
 * one event. Every decoding failure here is an operating error answered 4xx (STYLE 8). This
 * file holds no handler. Read api_inventory.c next.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/text.h"
#include "core/writer.h"
#include "intake/intake.h"
#include "read/projector.h"

bool api_is_id(const char *s, size_t length, size_t max)
{
    SVC_ASSERT(s != NULL || length == 0);
    return text_is_id(s, length, max);
}

static bool api_content_type_is_json(h2o_iovec_t value)
{
    static const char json[] = "application/json";
    size_t length = sizeof json - 1;
    if (value.base == NULL || value.len < length || strncasecmp(value.base, json, length) != 0) {
        return false;
    }
    return value.len == length || value.base[length] == ';' || value.base[length] == ' ';
}

/* The body rules of a command: its size and JSON content type. Sends the 4xx when broken. */
static bool api_body_allowed(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL);
    SVC_ASSERT(r->route->flags & ROUTE_JSON_BODY);
    if (r->req->entity.len > r->route->body_bytes_max) {
        http_send_problem(r, SVC_EBODY_TOO_LARGE, "the body exceeds 65536 bytes", "maxBytes",
                          (int64_t)r->route->body_bytes_max);
        return false;
    }
    if (!api_content_type_is_json(http_header(r, "content-type"))) {
        http_send_problem(r, SVC_EUNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json",
                          NULL, 0);
        return false;
    }
    return true;
}

/* The body as a JSON object (jansson), its rules already checked. */
static json_t *api_parse_object(struct http_request *r)
{
    h2o_iovec_t entity = r->req->entity;
    json_error_t error;
    json_t *body =
        entity.base ? json_loadb(entity.base, entity.len, JSON_REJECT_DUPLICATES, &error) : NULL;
    if (body == NULL) {
        http_send_problem(r, SVC_EINVALID_JSON, entity.base ? error.text : "the body is empty",
                          NULL, 0);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        http_send_problem(r, SVC_EINVALID_JSON, "the body must be a JSON object", NULL, 0);
        return NULL;
    }
    return body;
}

json_t *api_parse_body(struct http_request *r)
{
    return api_body_allowed(r) ? api_parse_object(r) : NULL;
}

bool api_parse_body_flat(struct http_request *r, struct json_flat *flat, struct json_view *body)
{
    *body = (struct json_view){NULL, NULL};
    if (!api_body_allowed(r)) {
        return false;
    }
    h2o_iovec_t entity = r->req->entity;
    if (entity.base != NULL && json_flat_parse(entity.base, entity.len, flat)) {
        body->flat = flat;
        return true;
    }
    body->json = api_parse_object(r);
    return body->json != NULL;
}

int api_body_string(const struct json_view *body, const char *name, bool required, bool charset_id,
                    char *out, size_t size, const char **why)
{
    SVC_ASSERT(size >= 2);
    struct json_view_member member = json_view_get(body, name);
    out[0] = '\0';
    if (member.type == JSON_VIEW_ABSENT) {
        *why = "a required member is missing";
        return required ? SVC_EVALIDATION : 0;
    }
    if (member.type != JSON_VIEW_STRING) {
        *why = "a member must be a string";
        return SVC_EVALIDATION;
    }
    size_t length = member.length;
    if (length == 0 || length > size - 1 || memchr(member.text, '\0', length) != NULL) {
        *why = "a string member is empty or too long";
        return SVC_EVALIDATION;
    }
    if (charset_id && !api_is_id(member.text, length, size - 1)) {
        *why = "an identifier must be 1-64 of [A-Za-z0-9._-]";
        return SVC_EVALIDATION;
    }
    memcpy(out, member.text, length);
    out[length] = '\0';
    return 1;
}

int api_get_string(json_t *body, const char *name, bool required, bool charset_id, char *out,
                   size_t size, const char **why)
{
    struct json_view b = {body, NULL};
    return api_body_string(&b, name, required, charset_id, out, size, why);
}

int api_body_int(const struct json_view *body, const char *name, bool required, int64_t min,
                 int64_t max, int64_t *out, const char **why)
{
    SVC_ASSERT(min <= max);
    struct json_view_member member = json_view_get(body, name);
    if (member.type == JSON_VIEW_ABSENT) {
        *why = "a required member is missing";
        return required ? SVC_EVALIDATION : 0;
    }
    if (member.type != JSON_VIEW_INTEGER) {
        *why = "a member must be an integer";
        return SVC_EVALIDATION;
    }
    if (member.integer < min || member.integer > max) {
        *why = "an integer member is out of range";
        return SVC_EVALIDATION;
    }
    *out = member.integer;
    return 1;
}

int api_get_int(json_t *body, const char *name, bool required, int64_t min, int64_t max,
                int64_t *out, const char **why)
{
    struct json_view b = {body, NULL};
    return api_body_int(&b, name, required, min, max, out, why);
}

int api_if_match(struct http_request *r, struct command *cmd)
{
    h2o_iovec_t value = http_header(r, "if-match");
    cmd->has_expected_version = false;
    if (value.base == NULL) {
        return 0;
    }
    const char *text = value.base;
    size_t length = value.len;
    if (length >= 2 && text[0] == '"' && text[length - 1] == '"') {
        text++;
        length -= 2;
    }
    int64_t version = 0;
    if (length < 1 || length > 18) {
        return SVC_EVALIDATION;
    }
    for (size_t i = 0; i < length; i++) {
        if (text[i] < '0' || text[i] > '9') {
            return SVC_EVALIDATION;
        }
        version = version * 10 + (text[i] - '0');
    }
    SVC_ASSERT(version >= 0);
    cmd->has_expected_version = true;
    cmd->expected_version = version;
    return 0;
}

static bool api_idem_key_valid(h2o_iovec_t key)
{
    if (key.len < 1 || key.len > IDEM_KEY_BYTES_MAX) {
        return false;
    }
    for (size_t i = 0; i < key.len; i++) {
        if ((unsigned char)key.base[i] < 0x21 || (unsigned char)key.base[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

struct http_command *api_command_begin(struct http_request *r, enum cmd_kind kind)
{
    h2o_iovec_t key = http_header(r, "idempotency-key");
    /* An asynchronous request needs its key too: it names the command's status URL. */
    if (key.base == NULL && ((r->route->flags & ROUTE_IDEMPOTENT) || api_intake_wanted(r))) {
        http_send_problem(r, SVC_EIDEM_KEY_REQUIRED, "send an Idempotency-Key header", NULL, 0);
        return NULL;
    }
    if (key.base != NULL && !api_idem_key_valid(key)) {
        http_send_problem(r, SVC_EVALIDATION,
                          "Idempotency-Key must be 1-255 printable ASCII characters", NULL, 0);
        return NULL;
    }
    struct http_command *hc = http_command_alloc(r);
    if (hc == NULL) {
        http_send_problem(r, SVC_EQUEUE_FULL, "too many commands in flight; retry shortly", NULL,
                          0);
        return NULL;
    }
    struct command *cmd = &hc->cmd;
    cmd->kind = kind;
    cmd->style = CMD_STYLE_V1;
    size_t principal_length = strlen(r->principal);
    SVC_ASSERT(principal_length >= 1 && principal_length <= AUTH_PRINCIPAL_BYTES_MAX);
    memcpy(cmd->principal, r->principal, principal_length + 1);
    if (key.base != NULL) {
        cmd->has_idem_key = true;
        memcpy(cmd->idem_key, key.base, key.len);
        cmd->idem_key[key.len] = '\0';
        uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, r->req->method.base, r->req->method.len);
        h = hash_fnv1a(h, " ", 1);
        h = hash_fnv1a(h, r->req->path.base, r->req->path.len);
        h = hash_fnv1a(h, "\n", 1);
        if (r->req->entity.base != NULL) {
            h = hash_fnv1a(h, r->req->entity.base, r->req->entity.len);
        }
        cmd->fingerprint_bytes = h; /* for records of older versions; see command.h */
    }
    return hc;
}

void api_submit_command(struct http_request *r, enum cmd_kind kind, bool with_lines,
                        api_decoder decode)
{
    struct http_command *hc = api_command_begin(r, kind);
    if (hc == NULL) {
        return;
    }
    if (with_lines && !http_command_take_lines(hc)) {
        http_command_free(hc);
        http_send_problem(r, SVC_EQUEUE_FULL, "too many multi-line commands in flight", NULL, 0);
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
        rc = decode(r, body, &hc->cmd, &why);
    }
    json_decref(body);
    if (rc != 0) {
        http_command_free(hc);
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    if (api_intake_wanted(r)) {               /* validated: to the broker instead of the writer */
        SVC_ASSERT(kind == CMD_ORDER_CREATE); /* the one ROUTE_ASYNC route that comes here */
        http_command_free(hc);
        api_intake_publish(r, INTAKE_KIND_ORDER);
        return;
    }
    http_command_submit(r, hc);
}

bool api_read_fresh(struct http_request *r)
{
    struct app *app = r->thread->app;
    SVC_ASSERT(app != NULL);
    int64_t acked = writer_acked_seq(&app->writer);
    SVC_ASSERT(acked >= 0);
    return projector_wait_seq(&app->projector, acked, API_READ_WAIT_US_MAX);
}

void api_event_json(struct jbuf *b, const struct row_event *row)
{
    SVC_ASSERT(row->seq >= 1);
    SVC_ASSERT(row->event_type != NULL && row->data_json != NULL);
    jbuf_lit(b, "{");
    jbuf_kv_int(b, "seq", row->seq);
    jbuf_kv_str(b, "eventType", row->event_type);
    jbuf_kv_int(b, "eventVersion", row->event_version);
    jbuf_kv_time(b, "occurredAt", row->occurred_at_ms);
    if (row->store_id != NULL) {
        jbuf_kv_str(b, "storeId", row->store_id);
    } else {
        jbuf_lit(b, ",\"storeId\":null");
    }
    if (row->sku != NULL) {
        jbuf_kv_str(b, "sku", row->sku);
    } else {
        jbuf_lit(b, ",\"sku\":null");
    }
    jbuf_key(b, "data");
    jbuf_lit(b, row->data_json); /* stored JSON text, written by the writer's encoder */
    jbuf_lit(b, "}");
    SVC_ASSERT(row->data_json[0] == '{');
}

int api_query_int(struct http_request *r, const char *name, int64_t min, int64_t max, int64_t *out)
{
    SVC_ASSERT(min >= 0 && min <= max);
    char text[QUERY_VALUE_BYTES_MAX];
    int rc = http_query_param(r, name, text, sizeof text);
    if (rc != 1) {
        return rc;
    }
    char *end = NULL;
    long long value = strtoll(text, &end, 10);
    if (text[0] == '\0' || *end != '\0' || (text[0] < '0' || text[0] > '9') || value < min ||
        value > max) {
        return SVC_EVALIDATION;
    }
    *out = value;
    SVC_ASSERT(*out >= min && *out <= max);
    return 1;
}

/* See api.h. */
int64_t api_id_seq(h2o_iovec_t id, const char *prefix)
{
    SVC_ASSERT(strlen(prefix) == 4);
    if (id.len < 5 || id.len > 4 + 19 || memcmp(id.base, prefix, 4) != 0 || id.base[4] == '0') {
        return 0;
    }
    int64_t seq = 0;
    for (size_t i = 4; i < id.len; i++) {
        if (id.base[i] < '0' || id.base[i] > '9' || seq > (INT64_MAX - 9) / 10) {
            return 0;
        }
        seq = seq * 10 + (id.base[i] - '0');
    }
    SVC_ASSERT(seq >= 1);
    return seq;
}
