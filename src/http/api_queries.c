/*
 * api_queries.c - the query routes, answered on the I/O thread from the projector's read model
 * (projector.h) or, for the event log and idempotency records, from this thread's read-only
 * store connection. Nothing here reaches the writer or its domain.
 *
 * Every answer carries an ETag derived from the projection state it shows (item versions, a
 * reservation's version, the applied seq) and X-Projection-Lag-ms; If-None-Match with the same
 * tag answers 304. The server-sent event stream (GET /v1/stream) is at the end of the file.
 * This file is not the projection itself (projector.c). Read projector.h first.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "base/clock.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/json_out.h"
#include "read/projector.h"
#include "base/svc_assert.h"

/* ---- shared ----------------------------------------------------------------------------- */

/* The per-thread buffer of list bodies (events, totals, per-sku breakdown): LIST_BODY_BYTES_MAX,
 * allocated at the first list query of the thread and kept for its life. */
static _Thread_local char *query_list_body;

static char *query_list_buffer(void)
{
    if (query_list_body == NULL) {
        query_list_body = malloc(LIST_BODY_BYTES_MAX);
        SVC_ASSERT(query_list_body != NULL); /* once per thread, at startup size */
    }
    return query_list_body;
}

/* True when the If-None-Match header lists etag (or is "*"). */
static bool query_not_modified(struct http_request *r, const char *etag, size_t length)
{
    h2o_iovec_t match = http_header(r, "if-none-match");
    if (match.base == NULL || match.len == 0) {
        return false;
    }
    if (h2o_memis(match.base, match.len, H2O_STRLIT("*"))) {
        return true;
    }
    for (size_t i = 0; i + length <= match.len; i++) {
        if (memcmp(match.base + i, etag, length) == 0) {
            return true;
        }
    }
    return false;
}

/* Sends body with ETag "<tag>" and X-Projection-Lag-ms, or 304 when the client has it. */
static void query_send(struct http_request *r, int64_t lag_ms, const char *tag, const char *body,
                       size_t length)
{
    SVC_ASSERT(tag != NULL && body != NULL);
    SVC_ASSERT(lag_ms >= 0);
    h2o_req_t *req = r->req;
    char etag[96];
    int etag_length = snprintf(etag, sizeof etag, "\"%s\"", tag);
    SVC_ASSERT(etag_length > 2 && (size_t)etag_length < sizeof etag);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ETAG, NULL,
                   h2o_strdup(&req->pool, etag, (size_t)etag_length).base, (size_t)etag_length);
    char lag[24];
    int lag_length = snprintf(lag, sizeof lag, "%" PRId64, lag_ms);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-projection-lag-ms"), 0, NULL,
                          h2o_strdup(&req->pool, lag, (size_t)lag_length).base, (size_t)lag_length);
    if (query_not_modified(r, etag, (size_t)etag_length)) {
        http_send(r, 304, "application/json", NULL, 0);
        return;
    }
    http_send_json(r, 200, body, length);
}

/* Reads an optional integer query parameter in [min, max]; 1 set, 0 absent, SVC_EVALIDATION. */
static int query_int_param(struct http_request *r, const char *name, int64_t min, int64_t max,
                           int64_t *out)
{
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
    return 1;
}

/* Reads an optional id-shaped parameter (sku, storeId); 1 set, 0 absent, SVC_EVALIDATION. */
static int query_id_param(struct http_request *r, const char *name, char *out, size_t size)
{
    SVC_ASSERT(size >= 2);
    int rc = http_query_param(r, name, out, size);
    if (rc == 1 && !api_is_id(out, strlen(out), size - 1)) {
        return SVC_EVALIDATION;
    }
    return rc;
}

/* Copies the {id} path segment into out when it is 1..size-1 bytes; false otherwise. */
static bool query_path_param(const struct http_request *r, char *out, size_t size)
{
    h2o_iovec_t param = r->path_param;
    if (param.base == NULL || param.len == 0 || param.len >= size) {
        return false;
    }
    memcpy(out, param.base, param.len);
    out[param.len] = '\0';
    return memchr(out, '\0', param.len) == NULL;
}

/* ---- availability ----------------------------------------------------------------------- */

struct query_sum {
    int64_t on_hand;
    int64_t reserved;
    int64_t version; /* sum of item versions: grows with every change, so it makes the ETag */
};

static void query_sum_items(const struct projection *v, uint32_t product_index, int32_t store_index,
                            struct query_sum *sum)
{
    memset(sum, 0, sizeof *sum);
    uint32_t store_count = projector_store_count(v);
    for (uint32_t s = 0; s < store_count; s++) {
        struct projector_item item;
        if ((store_index >= 0 && (uint32_t)store_index != s) ||
            !projector_item_get(v, product_index, s, &item)) {
            continue;
        }
        sum->on_hand += item.on_hand;
        sum->reserved += item.reserved;
        sum->version += item.version;
    }
    SVC_ASSERT(sum->reserved >= 0 && sum->reserved <= sum->on_hand);
}

/* Answers GET /v1/availability from the pinned projection v. */
static void query_availability(struct http_request *r, struct projection *v)
{
    char sku[SKU_BYTES_MAX + 1];
    char store_id[STORE_ID_BYTES_MAX + 1];
    int has_sku = query_id_param(r, "sku", sku, sizeof sku);
    int has_store = query_id_param(r, "storeId", store_id, sizeof store_id);
    if (has_sku != 1 || has_store < 0) {
        http_send_problem(r, SVC_EVALIDATION, "query parameter sku is required", NULL, 0);
        return;
    }
    int32_t product_index = projector_product_find(v, sku);
    int32_t store_index = has_store == 1 ? projector_store_find(v, store_id) : -1;
    if (product_index < 0 || (has_store == 1 && store_index < 0)) {
        int err = product_index < 0 ? SVC_EUNKNOWN_SKU : SVC_EUNKNOWN_STORE;
        http_send_problem(r, err, "no such sku or store", NULL, 0);
        return;
    }
    struct query_sum sum;
    query_sum_items(v, (uint32_t)product_index, store_index, &sum);
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
    char tag[24];
    snprintf(tag, sizeof tag, "%" PRId64, sum.version);
    query_send(r, projector_lag_ms(&r->thread->app->projector, v), tag, body, b.length);
}

void api_query_availability(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL && r->thread != NULL);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    query_availability(r, v);
    projector_read_end(&r->thread->app->projector, v);
}

/* Writes the per-store rows of GET /v1/items/{sku}/availability; sums into *sum. */
static void query_item_stores(const struct projection *v, uint32_t product_index, struct jbuf *b,
                              struct query_sum *sum)
{
    memset(sum, 0, sizeof *sum);
    uint32_t store_count = projector_store_count(v);
    jbuf_key(b, "stores");
    jbuf_lit(b, "[");
    for (uint32_t s = 0; s < store_count; s++) {
        struct projector_item item;
        struct projector_store store;
        if (!projector_item_get(v, product_index, s, &item)) {
            continue;
        }
        projector_store_get(v, s, &store);
        jbuf_lit(b, b->data[b->length - 1] == '[' ? "{" : ",{");
        jbuf_kv_str(b, "storeId", store.id);
        jbuf_kv_int(b, "onHand", item.on_hand);
        jbuf_kv_int(b, "reserved", item.reserved);
        jbuf_kv_int(b, "available", item.on_hand - item.reserved);
        jbuf_kv_int(b, "version", item.version);
        jbuf_lit(b, "}");
        sum->on_hand += item.on_hand;
        sum->reserved += item.reserved;
        sum->version += item.version;
    }
    jbuf_lit(b, "]");
    SVC_ASSERT(sum->reserved <= sum->on_hand);
}

static void query_item_availability(struct http_request *r, struct projection *v)
{
    char sku[SKU_BYTES_MAX + 1];
    if (!query_path_param(r, sku, sizeof sku) || !api_is_id(sku, strlen(sku), SKU_BYTES_MAX)) {
        http_send_problem(r, SVC_EVALIDATION, "the sku must be 1-64 of [A-Za-z0-9._-]", NULL, 0);
        return;
    }
    int32_t product_index = projector_product_find(v, sku);
    if (product_index < 0) {
        http_send_problem(r, SVC_EUNKNOWN_SKU, "no product with this sku", NULL, 0);
        return;
    }
    char body[READ_BODY_BYTES_MAX];
    struct jbuf stores;
    jbuf_init(&stores, body, sizeof body);
    jbuf_lit(&stores, "{");
    struct query_sum sum;
    query_item_stores(v, (uint32_t)product_index, &stores, &sum);
    char *out = query_list_buffer();
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "sku", sku);
    jbuf_lit(&b, ",\"total\":{");
    jbuf_kv_int(&b, "onHand", sum.on_hand);
    jbuf_kv_int(&b, "reserved", sum.reserved);
    jbuf_kv_int(&b, "available", sum.on_hand - sum.reserved);
    jbuf_lit(&b, "},");
    jbuf_raw(&b, stores.data + 1, stores.length - 1); /* "stores":[...] without its brace */
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&stores) && jbuf_ok(&b));
    char tag[32];
    snprintf(tag, sizeof tag, "i%" PRId64, sum.version);
    query_send(r, projector_lag_ms(&r->thread->app->projector, v), tag, out, b.length);
}

void api_query_item_availability(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL && r->thread != NULL);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    query_item_availability(r, v);
    projector_read_end(&r->thread->app->projector, v);
}

/* ---- products/totals and stores --------------------------------------------------------- */

struct query_page {
    char q[QUERY_VALUE_BYTES_MAX];
    int64_t page; /* from 1 */
    int64_t size; /* 1..TOTALS_PAGE_MAX */
};

static int query_page_parse(struct http_request *r, struct query_page *out, const char **why)
{
    out->page = 1;
    out->size = TOTALS_PAGE_DEFAULT;
    *why = "q is too long or badly encoded";
    int rc = http_query_param(r, "q", out->q, sizeof out->q);
    if (rc >= 0) {
        *why = "page must be an integer >= 1";
        rc = query_int_param(r, "page", 1, INT32_MAX, &out->page);
    }
    if (rc >= 0) {
        *why = "size must be an integer from 1 to 200";
        rc = query_int_param(r, "size", 1, TOTALS_PAGE_MAX, &out->size);
    }
    SVC_ASSERT(rc < 0 || (out->page >= 1 && out->size >= 1));
    return rc < 0 ? rc : 0;
}

/* True when q is empty or a case-insensitive substring of the product's sku or name. */
static bool query_product_matches(const struct projection *v, uint32_t index, const char *q)
{
    return q[0] == '\0' || strcasestr(projector_product_sku(v, index), q) != NULL ||
           strcasestr(projector_product_name(v, index), q) != NULL;
}

static void query_totals_item(const struct projection *v, uint32_t index, struct jbuf *b)
{
    struct query_sum sum;
    query_sum_items(v, index, -1, &sum);
    jbuf_lit(b, b->data[b->length - 1] == '[' ? "{" : ",{");
    jbuf_kv_str(b, "sku", projector_product_sku(v, index));
    jbuf_kv_str(b, "name", projector_product_name(v, index));
    jbuf_kv_int(b, "onHand", sum.on_hand);
    jbuf_kv_int(b, "reserved", sum.reserved);
    jbuf_kv_int(b, "available", sum.on_hand - sum.reserved);
    jbuf_lit(b, "}");
}

static void query_totals(struct http_request *r, struct projection *v)
{
    struct query_page page;
    const char *why = NULL;
    if (query_page_parse(r, &page, &why) != 0) {
        http_send_problem(r, SVC_EVALIDATION, why, NULL, 0);
        return;
    }
    char *out = query_list_buffer();
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{\"items\":[");
    int64_t first = (page.page - 1) * page.size;
    int64_t matched = 0;
    uint32_t count = projector_product_count(v);
    for (uint32_t i = 0; i < count; i++) {
        if (!query_product_matches(v, i, page.q)) {
            continue;
        }
        if (matched >= first && matched < first + page.size) {
            query_totals_item(v, i, &b);
        }
        matched++;
    }
    jbuf_lit(&b, "]");
    jbuf_kv_int(&b, "page", page.page);
    jbuf_kv_int(&b, "size", page.size);
    jbuf_kv_int(&b, "total", matched);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b)); /* LIST_BODY_BYTES_MAX holds a full page (svc_limits.h) */
    char tag[32];
    snprintf(tag, sizeof tag, "p%" PRId64, projector_applied_seq(v));
    query_send(r, projector_lag_ms(&r->thread->app->projector, v), tag, out, b.length);
}

void api_query_totals(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL && r->thread != NULL);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    query_totals(r, v);
    projector_read_end(&r->thread->app->projector, v);
}

void api_query_stores(struct http_request *r)
{
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    uint32_t count = projector_store_count(v);
    SVC_ASSERT(count <= STORES_MAX);
    char body[STORES_MAX * (STORE_ID_BYTES_MAX + 6 * NAME_BYTES_MAX + 64) + 32];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{\"items\":[");
    for (uint32_t i = 0; i < count; i++) {
        struct projector_store store;
        projector_store_get(v, i, &store);
        jbuf_lit(&b, i == 0 ? "{" : ",{");
        jbuf_kv_str(&b, "storeId", store.id);
        jbuf_kv_str(&b, "name", store.name);
        jbuf_kv_int(&b, "latencyMs", store.latency_ms);
        jbuf_lit(&b, "}");
    }
    jbuf_lit(&b, "]}");
    SVC_ASSERT(jbuf_ok(&b));
    char tag[32];
    snprintf(tag, sizeof tag, "s%" PRIu32, count); /* stores never change once created */
    query_send(r, projector_lag_ms(&r->thread->app->projector, v), tag, body, b.length);
    projector_read_end(&r->thread->app->projector, v);
}

/* ---- reservations ----------------------------------------------------------------------- */

static void query_reservation(struct http_request *r, struct projection *v)
{
    char id[PROJ_RESERVATION_ID_BYTES_MAX + 1];
    struct projector_reservation res;
    if (!query_path_param(r, id, sizeof id) || !projector_reservation_find(v, id, &res)) {
        http_send_problem(r, SVC_EUNKNOWN_RESERVATION, "no reservation with this id", NULL, 0);
        return;
    }
    struct projector_store store;
    projector_store_get(v, res.store_index, &store);
    char *out = query_list_buffer();
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "reservationId", res.id);
    jbuf_kv_str(&b, "status", projector_status_name(res.status));
    jbuf_kv_str(&b, "storeId", store.id);
    jbuf_kv_str(&b, "customerId", res.customer_id);
    jbuf_lit(&b, ",\"lines\":[");
    for (uint32_t i = 0; i < res.line_count; i++) {
        jbuf_lit(&b, i == 0 ? "{" : ",{");
        jbuf_kv_str(&b, "sku", projector_product_sku(v, res.lines[i].product_index));
        jbuf_kv_int(&b, "qty", res.lines[i].qty);
        jbuf_lit(&b, "}");
    }
    jbuf_lit(&b, "]");
    jbuf_kv_time(&b, "expiresAt", res.expires_at_ms);
    jbuf_kv_time(&b, "createdAt", res.created_at_ms);
    jbuf_kv_time(&b, "updatedAt", res.updated_at_ms);
    jbuf_kv_int(&b, "version", res.version);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    char tag[32];
    snprintf(tag, sizeof tag, "r%" PRId64, res.version);
    query_send(r, projector_lag_ms(&r->thread->app->projector, v), tag, out, b.length);
}

void api_query_reservation(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL && r->thread != NULL);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    query_reservation(r, v);
    projector_read_end(&r->thread->app->projector, v);
}

/* ---- projections status and rebuild ----------------------------------------------------- */

void api_query_projection_status(struct http_request *r)
{
    struct projector *p = &r->thread->app->projector;
    int64_t log_seq = 0;
    if (store_reader_event_seq_max(r->thread->reader, &log_seq) != 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot read the event log", NULL, 0);
        return;
    }
    struct projection *v = projector_read_begin(p);
    int64_t applied = projector_applied_seq(v);
    int64_t rebuilt_at = atomic_load(&p->rebuilt_at_ms);
    bool rebuilding = atomic_load(&p->rebuilding);
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "appliedSeq", applied);
    jbuf_kv_int(&b, "logSeq", log_seq);
    jbuf_kv_int(&b, "lagMs", projector_lag_ms(p, v));
    jbuf_key(&b, "rebuilding");
    jbuf_lit(&b, rebuilding ? "true" : "false");
    if (rebuilt_at > 0) {
        jbuf_kv_time(&b, "rebuiltAt", rebuilt_at);
    } else {
        jbuf_lit(&b, ",\"rebuiltAt\":null");
    }
    jbuf_lit(&b, ",\"counts\":{");
    jbuf_kv_int(&b, "stores", projector_store_count(v));
    jbuf_kv_int(&b, "products", projector_product_count(v));
    jbuf_kv_int(&b, "reservations", projector_reservation_count(v));
    jbuf_kv_int(&b, "notProjected", (int64_t)projector_dropped_count(v));
    jbuf_lit(&b, "}}");
    SVC_ASSERT(jbuf_ok(&b));
    char tag[64];
    snprintf(tag, sizeof tag, "q%" PRId64 "-%" PRId64 "-%d-%" PRId64, applied, log_seq,
             rebuilding ? 1 : 0, rebuilt_at);
    query_send(r, projector_lag_ms(p, v), tag, body, b.length);
    projector_read_end(&r->thread->app->projector, v);
}

void api_projection_rebuild(struct http_request *r)
{
    struct projector *p = &r->thread->app->projector;
    int rc = projector_rebuild_start(p);
    if (rc < 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot start the rebuild thread", NULL, 0);
        return;
    }
    SVC_ASSERT(rc == 0 || rc == 1);
    h2o_req_t *req = r->req;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL,
                   H2O_STRLIT("/v1/projections/status"));
    static const char body[] =
        "{\"status\":\"rebuilding\",\"statusUrl\":\"/v1/projections/status\"}";
    http_send_json(r, 202, body, sizeof body - 1);
}

/* ---- the event log ---------------------------------------------------------------------- */

/* Writes one event as the object GET /v1/events lists and SSE sends as data. */
static void query_event_json(struct jbuf *b, const struct row_event *row)
{
    SVC_ASSERT(row->seq >= 1);
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
    jbuf_lit(b, row->data_json);
    jbuf_lit(b, "}");
    SVC_ASSERT(row->data_json[0] == '{');
}

struct query_events {
    struct jbuf *b;
    int64_t last_seq;
    int count;
};

static int query_events_row(void *context, const struct row_event *row)
{
    struct query_events *q = context;
    SVC_ASSERT(row->seq > q->last_seq);
    size_t before = q->b->length;
    if (q->count > 0) {
        jbuf_lit(q->b, ",");
    }
    query_event_json(q->b, row);
    /* Room is left for the closing members: stop at this event if it did not fit. */
    if (!jbuf_ok(q->b) || q->b->length + 64 > q->b->size) {
        q->b->overflow = false;
        q->b->length = before;
        q->b->data[before] = '\0';
        return 1;
    }
    q->last_seq = row->seq;
    q->count++;
    return 0;
}

void api_query_events(struct http_request *r)
{
    char store_id[STORE_ID_BYTES_MAX + 1];
    char sku[SKU_BYTES_MAX + 1];
    int64_t since = 0;
    int64_t limit = EVENTS_PAGE_DEFAULT;
    int has_store = query_id_param(r, "storeId", store_id, sizeof store_id);
    int has_sku = query_id_param(r, "sku", sku, sizeof sku);
    int rc_since = query_int_param(r, "since", 0, INT64_MAX, &since);
    int rc_limit = query_int_param(r, "limit", 1, EVENTS_PAGE_MAX, &limit);
    if (has_store < 0 || has_sku < 0 || rc_since < 0 || rc_limit < 0) {
        http_send_problem(r, SVC_EVALIDATION,
                          "storeId and sku are ids, since >= 0, limit from 1 to 1000", NULL, 0);
        return;
    }
    char *out = query_list_buffer();
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{\"items\":[");
    struct query_events q = {&b, since, 0};
    int rc = store_reader_events(r->thread->reader, since, has_store == 1 ? store_id : NULL,
                                 has_sku == 1 ? sku : NULL, (int)limit, &q, query_events_row);
    if (rc < 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot read the event log", NULL, 0);
        return;
    }
    jbuf_lit(&b, "]");
    jbuf_kv_int(&b, "nextSince", q.last_seq);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    char tag[64];
    snprintf(tag, sizeof tag, "e%" PRId64 "-%" PRId64 "-%d", since, q.last_seq, q.count);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    int64_t lag = projector_lag_ms(&r->thread->app->projector, v);
    projector_read_end(&r->thread->app->projector, v);
    query_send(r, lag, tag, out, b.length);
}

/* ---- idempotency records ---------------------------------------------------------------- */

void api_query_idempotency(struct http_request *r)
{
    char key[IDEM_KEY_BYTES_MAX + 1];
    if (!query_path_param(r, key, sizeof key)) {
        http_send_problem(r, SVC_EVALIDATION, "the key must be 1-255 bytes", NULL, 0);
        return;
    }
    const char *principal = r->principal != NULL ? r->principal : "anonymous";
    struct store_idem_view found;
    int rc = store_reader_idem(r->thread->reader, principal, key, &found);
    if (rc < 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot read idempotency records", NULL, 0);
        return;
    }
    if (rc == 0) {
        http_send_problem(r, SVC_ENOT_FOUND, "no idempotency record with this key", NULL, 0);
        return;
    }
    char *out = query_list_buffer();
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "key", key);
    jbuf_kv_int(&b, "status", found.status);
    jbuf_kv_time(&b, "createdAt", found.created_at_ms);
    jbuf_key(&b, "response");
    jbuf_raw(&b, found.body, found.body_length); /* stored JSON (or problem+json) text */
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, out, b.length);
    char tag[32];
    snprintf(tag, sizeof tag, "k%016" PRIx64, h);
    query_send(r, 0, tag, out, b.length);
}

/* ---- server-sent events ----------------------------------------------------------------- */

/* One batch of events formatted as SSE text by the writer-thread tap, queued to one I/O thread.
 * Allocated by the tap (malloc, at most SSE_PENDING_BATCHES_MAX per thread), freed by the
 * receiving thread after it copied the text to its subscribers. */
struct sse_message {
    h2o_multithread_message_t message; /* first member */
    int64_t first_seq;
    int64_t last_seq;
    size_t length;
    char text[];
};

struct sse_thread;

/* One open GET /v1/stream, allocated on its request's pool (freed with the request). */
struct sse_subscriber {
    h2o_generator_t generator; /* first member: h2o hands it back to proceed/stop */
    h2o_req_t *req;
    struct sse_thread *owner;
    struct sse_subscriber *next;
    int64_t last_seq; /* newest event written into pending */
    bool replaying;   /* catching up from the log: live batches are skipped */
    bool sending;     /* inflight is with h2o until proceed */
    bool closing;     /* too slow: end the stream at the next proceed */
    bool closed;      /* ended or disposed: never touch req again */
    char *pending;    /* SSE_BUFFER_BYTES on the pool: not yet handed to h2o */
    size_t pending_length;
    char *inflight; /* SSE_BUFFER_BYTES on the pool: handed to h2o */
};

/* Per I/O thread: the queue the tap feeds and the thread's subscribers. Set up by the thread
 * at its first stream request; the tap reads only the atomics and the receiver. */
struct sse_thread {
    bool ready; /* owner thread only */
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
    struct io_thread *thread;
    struct sse_subscriber *subscribers; /* owner thread only */
    _Atomic uint32_t subscriber_count;
    _Atomic uint32_t pending_batches; /* messages sent and not yet received */
    _Atomic bool overflowed;          /* the tap dropped a batch: drop every subscriber */
};

static struct sse_thread sse_threads[IO_THREADS_MAX];

/* Appends one event as "id:/event:/data:" lines; false (and b unchanged) when it did not fit. */
static bool sse_format_event(struct jbuf *b, const struct row_event *row)
{
    size_t before = b->length;
    jbuf_lit(b, "id: ");
    jbuf_int(b, row->seq);
    jbuf_lit(b, "\nevent: ");
    jbuf_lit(b, row->event_type);
    jbuf_lit(b, "\ndata: ");
    query_event_json(b, row);
    jbuf_lit(b, "\n\n");
    if (!jbuf_ok(b)) {
        b->overflow = false;
        b->length = before;
        b->data[before] = '\0';
        return false;
    }
    return true;
}

/* The projector tap: runs on the writer thread for every batch; copies the batch to the
 * thread's queue when it has subscribers. Never blocks. */
static void sse_tap(const struct row_event *events, size_t count, void *context)
{
    struct sse_thread *st = context;
    SVC_ASSERT(count >= 1);
    if (atomic_load(&st->subscriber_count) == 0) {
        return;
    }
    if (atomic_load(&st->pending_batches) >= SSE_PENDING_BATCHES_MAX) {
        atomic_store(&st->overflowed, true); /* that thread is far behind: reset it */
        return;
    }
    size_t size = 1;
    for (size_t i = 0; i < count; i++) {
        size += strlen(events[i].data_json) + strlen(events[i].event_type) * 2 +
                2 * (STORE_ID_BYTES_MAX + SKU_BYTES_MAX) + 256;
    }
    struct sse_message *m = malloc(sizeof *m + size);
    if (m == NULL) {
        atomic_store(&st->overflowed, true);
        return;
    }
    memset(&m->message, 0, sizeof m->message);
    struct jbuf b;
    jbuf_init(&b, m->text, size);
    for (size_t i = 0; i < count; i++) {
        bool fitted = sse_format_event(&b, &events[i]);
        SVC_ASSERT(fitted); /* size was computed for the worst case */
    }
    m->first_seq = events[0].seq;
    m->last_seq = events[count - 1].seq;
    m->length = b.length;
    atomic_fetch_add(&st->pending_batches, 1);
    h2o_multithread_send_message(&st->receiver, &m->message);
}

/* Hands pending to h2o when nothing is in flight. */
static void sse_flush(struct sse_subscriber *sub)
{
    SVC_ASSERT(sub->req != NULL);
    if (sub->closed || sub->sending || sub->pending_length == 0) {
        return;
    }
    char *swap = sub->inflight;
    sub->inflight = sub->pending;
    sub->pending = swap;
    h2o_iovec_t buf = h2o_iovec_init(sub->inflight, sub->pending_length);
    sub->pending_length = 0;
    sub->sending = true;
    h2o_send(sub->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

/* Ends the stream now if nothing is in flight, else at the next proceed. */
static void sse_close(struct sse_subscriber *sub)
{
    if (sub->closed) {
        return;
    }
    sub->closing = true;
    if (!sub->sending) {
        sub->closed = true;
        h2o_send(sub->req, NULL, 0, H2O_SEND_STATE_FINAL);
    }
}

static void sse_append(struct sse_subscriber *sub, const struct sse_message *m)
{
    if (sub->closed || sub->closing || sub->replaying || m->last_seq <= sub->last_seq) {
        return; /* a replaying subscriber reads these events from the log */
    }
    if (sub->pending_length + m->length > SSE_BUFFER_BYTES) {
        sse_close(sub); /* too slow: it reconnects with Last-Event-ID */
        return;
    }
    memcpy(sub->pending + sub->pending_length, m->text, m->length);
    sub->pending_length += m->length;
    sub->last_seq = m->last_seq;
    sse_flush(sub);
}

static void sse_on_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct sse_thread *st = H2O_STRUCT_FROM_MEMBER(struct sse_thread, receiver, receiver);
    SVC_ASSERT(st->ready);
    while (!h2o_linklist_is_empty(messages)) {
        struct sse_message *m =
            H2O_STRUCT_FROM_MEMBER(struct sse_message, message.link, messages->next);
        h2o_linklist_unlink(&m->message.link);
        atomic_fetch_sub(&st->pending_batches, 1);
        /* next is read first: ending a stream may dispose its request (and unlink it). */
        for (struct sse_subscriber *sub = st->subscribers, *next = NULL; sub != NULL; sub = next) {
            next = sub->next;
            sse_append(sub, m);
        }
        free(m);
    }
    if (atomic_exchange(&st->overflowed, false)) {
        for (struct sse_subscriber *sub = st->subscribers, *next = NULL; sub != NULL; sub = next) {
            next = sub->next;
            sse_close(sub);
        }
    }
}

static int sse_replay_row(void *context, const struct row_event *row)
{
    struct sse_subscriber *sub = context;
    SVC_ASSERT(row->seq > sub->last_seq);
    struct jbuf b;
    jbuf_init(&b, sub->pending + sub->pending_length, SSE_BUFFER_BYTES - sub->pending_length);
    if (!sse_format_event(&b, row)) {
        return 1; /* full: continue after the next proceed */
    }
    sub->pending_length += b.length;
    sub->last_seq = row->seq;
    return 0;
}

/* Reads the log after last_seq into pending until it is full or the log ends. */
static void sse_replay(struct sse_subscriber *sub)
{
    SVC_ASSERT(sub->replaying);
    for (;;) {
        int64_t before = sub->last_seq;
        int rc = store_reader_events(sub->owner->thread->reader, before, NULL, NULL,
                                     PROJ_REPLAY_CHUNK, sub, sse_replay_row);
        if (rc < 0) {
            sse_close(sub); /* storage trouble: the client retries with Last-Event-ID */
            return;
        }
        if (rc == 1) {
            return; /* the buffer is full */
        }
        if (sub->last_seq - before < PROJ_REPLAY_CHUNK) {
            sub->replaying = false; /* the end of the log: live batches take over */
            return;
        }
    }
}

static void sse_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    struct sse_subscriber *sub = (struct sse_subscriber *)generator;
    SVC_ASSERT(sub->req == req);
    SVC_ASSERT(sub->sending);
    sub->sending = false;
    if (sub->closing) {
        sse_close(sub);
        return;
    }
    if (sub->replaying) {
        sse_replay(sub);
    }
    sse_flush(sub);
}

static void sse_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    struct sse_subscriber *sub = (struct sse_subscriber *)generator;
    SVC_ASSERT(sub->req == req);
    SVC_ASSERT(sub->owner != NULL);
    sub->closed = true; /* the client is gone; the pool dispose unlinks it */
}

/* Runs when the request's pool is freed: unlinks the subscriber. */
static void sse_dispose(void *object)
{
    struct sse_subscriber *sub = object;
    struct sse_thread *st = sub->owner;
    SVC_ASSERT(st != NULL && st->ready);
    for (struct sse_subscriber **link = &st->subscribers; *link != NULL; link = &(*link)->next) {
        if (*link == sub) {
            *link = sub->next;
            atomic_fetch_sub(&st->subscriber_count, 1);
            break;
        }
    }
    sub->closed = true;
}

/* Sets up this thread's queue and tap at its first stream request. 0 or SVC_ECAPACITY. */
static int sse_thread_ready(struct http_request *r, struct sse_thread **out)
{
    SVC_ASSERT(r->thread->index < IO_THREADS_MAX);
    struct sse_thread *st = &sse_threads[r->thread->index];
    if (!st->ready) {
        st->thread = r->thread;
        st->queue = h2o_multithread_create_queue(r->thread->loop);
        h2o_multithread_register_receiver(st->queue, &st->receiver, sse_on_messages);
        int rc = projector_tap_add(&r->thread->app->projector, sse_tap, st);
        if (rc != 0) {
            return rc;
        }
        st->ready = true;
    }
    SVC_ASSERT(st->thread == r->thread);
    *out = st;
    return 0;
}

/* The seq to start after: Last-Event-ID, else ?since=, else the end of the log (live only). */
static int sse_start_seq(struct http_request *r, int64_t *since, bool *replay)
{
    h2o_iovec_t last = http_header(r, "last-event-id");
    *replay = true;
    if (last.base != NULL && last.len > 0 && last.len < 19) {
        int64_t value = 0;
        for (size_t i = 0; i < last.len; i++) {
            if (last.base[i] < '0' || last.base[i] > '9') {
                return SVC_EVALIDATION;
            }
            value = value * 10 + (last.base[i] - '0');
        }
        *since = value;
        return 0;
    }
    int rc = query_int_param(r, "since", 0, INT64_MAX, since);
    if (rc != 0) {
        return rc < 0 ? rc : 0;
    }
    *replay = false;
    return store_reader_event_seq_max(r->thread->reader, since);
}

void api_query_stream(struct http_request *r)
{
    struct sse_thread *st = NULL;
    int64_t since = 0;
    bool replay = false;
    int rc = sse_thread_ready(r, &st);
    if (rc == 0 && atomic_load(&st->subscriber_count) >= SSE_SUBSCRIBERS_MAX) {
        rc = SVC_EQUEUE_FULL;
    }
    if (rc != 0) {
        http_send_problem(r, rc, "too many stream subscribers on this thread", NULL, 0);
        return;
    }
    atomic_fetch_add(&st->subscriber_count, 1); /* before the log is read: see sse_tap */
    rc = sse_start_seq(r, &since, &replay);
    if (rc != 0) {
        atomic_fetch_sub(&st->subscriber_count, 1);
        http_send_problem(r, rc, "Last-Event-ID and since are seqs >= 0", NULL, 0);
        return;
    }
    h2o_req_t *req = r->req;
    struct sse_subscriber *sub = h2o_mem_alloc_shared(&req->pool, sizeof *sub, sse_dispose);
    memset(sub, 0, sizeof *sub);
    sub->generator.proceed = sse_proceed;
    sub->generator.stop = sse_stop;
    sub->req = req;
    sub->owner = st;
    sub->last_seq = since;
    sub->replaying = replay;
    sub->pending = h2o_mem_alloc_pool(&req->pool, SSE_BUFFER_BYTES);
    sub->inflight = h2o_mem_alloc_pool(&req->pool, SSE_BUFFER_BYTES);
    sub->next = st->subscribers;
    st->subscribers = sub;
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-cache"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-projection-lag-ms"), 0, NULL,
                          H2O_STRLIT("0"));
    h2o_start_response(req, &sub->generator);
    if (sub->replaying) {
        sse_replay(sub);
    }
    /* An SSE comment opens the stream at once, so clients see the headers immediately. */
    if (sub->pending_length == 0) {
        memcpy(sub->pending, ": stockd stream\n\n", 17);
        sub->pending_length = 17;
    }
    sse_flush(sub);
}
