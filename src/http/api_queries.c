/*
 * api_queries.c - the query routes, answered on the I/O thread from the projector's read model
 * (projector.h) or, for the event log, idempotency records and a reservation the read model
 * does not hold, from this thread's read-only store connection. Nothing here reaches the
 * writer or its domain.
 *
 * Every answer carries an ETag derived from the projection state it shows (item versions, a
 * reservation's version, the applied seq) and X-Projection-Lag-ms; If-None-Match with the same
 * tag answers 304. Answers from the projector first wait for it to catch up with what the
 * writer acknowledged (api_read_fresh). List bodies are written into the thread's list buffer
 * (thread.h), one response at a time. This file is not the projection itself (projector.c)
 * and not the event stream (api_stream.c). Read projector.h first.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/json_out.h"
#include "base/log.h"
#include "read/projector.h"
#include "base/svc_assert.h"

/* ---- shared ----------------------------------------------------------------------------- */

/* The thread's buffer of list bodies (events, totals, per-sku breakdown, reservations,
 * idempotency records): LIST_BODY_BYTES_MAX, allocated when the thread started (server.c). A
 * handler fills it and sends it (h2o copies the body) before the thread runs anything else. */
static char *query_list_buffer(const struct http_request *r)
{
    SVC_ASSERT(r->thread != NULL);
    SVC_ASSERT(r->thread->list_body != NULL);
    return r->thread->list_body;
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

/* One store's row of GET /v1/items/{sku}/availability: a 64-byte storeId (never escaped: its
 * alphabet is [A-Za-z0-9._-]), four 20-digit numbers and their keys. */
#define QUERY_ITEM_ROW_BYTES_MAX 240
_Static_assert((size_t)CAPACITY_STORES_LIMIT *QUERY_ITEM_ROW_BYTES_MAX + 512 <= LIST_BODY_BYTES_MAX,
               "a sku stocked in every store fits one list body");

struct query_sum {
    int64_t on_hand;
    int64_t reserved;
    int64_t version; /* sum of item versions: grows with every change, so it makes the ETag */
};

static void query_sum_items(const struct projection *v, uint32_t product_index, int32_t store_index,
                            struct query_sum *sum)
{
    memset(sum, 0, sizeof *sum);
    struct projector_item item;
    if (store_index >= 0) {
        if (projector_item_get(v, product_index, (uint32_t)store_index, &item)) {
            sum->on_hand = item.on_hand;
            sum->reserved = item.reserved;
            sum->version = item.version;
        }
        return;
    }
    uint32_t s = 0;
    for (int32_t at = projector_item_next(v, product_index, -1, &s, &item); at >= 0;
         at = projector_item_next(v, product_index, at, &s, &item)) {
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
    api_read_fresh(r);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    query_availability(r, v);
    projector_read_end(&r->thread->app->projector, v);
}

/* Writes the per-store rows of GET /v1/items/{sku}/availability; sums into *sum. */
static void query_item_stores(const struct projection *v, uint32_t product_index, struct jbuf *b,
                              struct query_sum *sum)
{
    memset(sum, 0, sizeof *sum);
    jbuf_key(b, "stores");
    jbuf_lit(b, "[");
    struct projector_item item;
    uint32_t s = 0;
    for (int32_t at = projector_item_next(v, product_index, -1, &s, &item); at >= 0;
         at = projector_item_next(v, product_index, at, &s, &item)) {
        struct projector_store store;
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
    /* A row per store that stocks it, at most --max-stores: the request's pool, freed with it. */
    size_t size = (size_t)projector_store_count(v) * QUERY_ITEM_ROW_BYTES_MAX + 32;
    char *body = h2o_mem_alloc_pool(&r->req->pool, size);
    struct jbuf stores;
    jbuf_init(&stores, body, size);
    jbuf_lit(&stores, "{");
    struct query_sum sum;
    query_item_stores(v, (uint32_t)product_index, &stores, &sum);
    char *out = query_list_buffer(r);
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
    api_read_fresh(r);
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
        rc = api_query_int(r, "page", 1, INT32_MAX, &out->page);
    }
    if (rc >= 0) {
        *why = "size must be an integer from 1 to 200";
        rc = api_query_int(r, "size", 1, TOTALS_PAGE_MAX, &out->size);
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
    char *out = query_list_buffer(r);
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
    api_read_fresh(r);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    query_totals(r, v);
    projector_read_end(&r->thread->app->projector, v);
}

void api_query_stores(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL && r->thread != NULL);
    api_read_fresh(r);
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    uint32_t count = projector_store_count(v);
    SVC_ASSERT(count <= CAPACITY_STORES_LIMIT);
    /* Sized by the count (up to --max-stores rows): the request's pool, freed with it. */
    size_t size = (size_t)count * (STORE_ID_BYTES_MAX + 6 * NAME_BYTES_MAX + 64) + 32;
    char *body = h2o_mem_alloc_pool(&r->req->pool, size);
    struct jbuf b;
    jbuf_init(&b, body, size);
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

/* Writes the body of GET /v1/reservations/{id}: one shape whichever source row came from. */
static void query_reservation_body(struct jbuf *b, const char *id,
                                   const struct store_reservation_row *row)
{
    SVC_ASSERT(row->line_count <= CMD_LINES_MAX);
    jbuf_lit(b, "{");
    jbuf_kv_str(b, "reservationId", id);
    jbuf_kv_str(b, "status", row->status);
    jbuf_kv_str(b, "storeId", row->store_id);
    jbuf_kv_str(b, "customerId", row->customer_id);
    jbuf_lit(b, ",\"lines\":[");
    for (uint32_t i = 0; i < row->line_count; i++) {
        jbuf_lit(b, i == 0 ? "{" : ",{");
        jbuf_kv_str(b, "sku", row->lines[i].sku);
        jbuf_kv_int(b, "qty", row->lines[i].qty);
        jbuf_lit(b, "}");
    }
    jbuf_lit(b, "]");
    jbuf_kv_time(b, "expiresAt", row->expires_at_ms);
    jbuf_kv_time(b, "createdAt", row->created_at_ms);
    jbuf_kv_time(b, "updatedAt", row->updated_at_ms);
    jbuf_kv_int(b, "version", row->version);
    jbuf_lit(b, "}");
}

/* Sends the reservation row with ETag "r<version>"; false, having sent nothing, when its body
 * does not fit a list body (never for a row the writer wrote: 100 lines of a 64-byte sku). */
static bool query_reservation_send(struct http_request *r, int64_t lag_ms, const char *id,
                                   const struct store_reservation_row *row)
{
    char *out = query_list_buffer(r);
    struct jbuf b;
    jbuf_init(&b, out, LIST_BODY_BYTES_MAX);
    query_reservation_body(&b, id, row);
    if (!jbuf_ok(&b)) {
        return false;
    }
    char tag[32];
    snprintf(tag, sizeof tag, "r%" PRId64, row->version);
    query_send(r, lag_ms, tag, out, b.length);
    return true;
}

/* Answers reservation id from the pinned projection v; false, having sent nothing, when v does
 * not hold it. */
static bool query_reservation(struct http_request *r, struct projection *v, const char *id)
{
    struct projector_reservation res;
    if (!projector_reservation_find(v, id, &res) || res.line_count > CMD_LINES_MAX) {
        return false; /* more lines than the writer takes: never from its events */
    }
    struct projector_store store;
    projector_store_get(v, res.store_index, &store);
    struct store_reservation_row row = {
        .store_id = store.id,
        .customer_id = res.customer_id,
        .status = projector_status_name(res.status),
        .expires_at_ms = res.expires_at_ms,
        .version = res.version,
        .created_at_ms = res.created_at_ms,
        .updated_at_ms = res.updated_at_ms,
        .line_count = res.line_count,
    };
    for (uint32_t i = 0; i < res.line_count; i++) {
        row.lines[i].sku = projector_product_sku(v, res.lines[i].product_index);
        row.lines[i].qty = res.lines[i].qty;
    }
    bool sent =
        query_reservation_send(r, projector_lag_ms(&r->thread->app->projector, v), res.id, &row);
    SVC_ASSERT(sent); /* the read model's strings are bounded (svc_limits.h) */
    return true;
}

/* Answers reservation id from this thread's store connection: the read model does not hold
 * every reservation there ever was (its table is full at CAPACITY_PROJ_RESERVATIONS_FACTOR x
 * --max-reservations, ended ones included), the database does. The database is the truth,
 * so the answer shows no projection lag. */
static void query_reservation_stored(struct http_request *r, const char *id)
{
    int64_t seq = api_id_seq(h2o_iovec_init(id, strlen(id)), "res_");
    struct store_reservation_row row;
    int rc = seq >= 1 ? store_reader_reservation(r->thread->reader, seq, &row) : 0;
    if (rc < 0) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot read the reservation", NULL, 0);
        return;
    }
    if (rc == 0) {
        http_send_problem(r, SVC_EUNKNOWN_RESERVATION, "no reservation with this id", NULL, 0);
        return;
    }
    if (!query_reservation_send(r, 0, id, &row)) {
        log_error("http: reservation %s does not fit %d bytes", id, LIST_BODY_BYTES_MAX);
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "cannot read the reservation", NULL, 0);
    }
}

void api_query_reservation(struct http_request *r)
{
    SVC_ASSERT(r->route != NULL && r->thread != NULL);
    api_read_fresh(r);
    char id[PROJ_RESERVATION_ID_BYTES_MAX + 1];
    if (!query_path_param(r, id, sizeof id)) {
        http_send_problem(r, SVC_EUNKNOWN_RESERVATION, "no reservation with this id", NULL, 0);
        return;
    }
    struct projection *v = projector_read_begin(&r->thread->app->projector);
    bool sent = query_reservation(r, v, id);
    projector_read_end(&r->thread->app->projector, v);
    if (!sent) { /* the read model is the fast path; the database answers a miss */
        query_reservation_stored(r, id);
    }
}

/* ---- projections status and rebuild ----------------------------------------------------- */

void api_query_projection_status(struct http_request *r)
{
    struct projector *p = &r->thread->app->projector;
    api_read_fresh(r); /* a client's acknowledged writes are applied before we look */
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
    api_event_json(q->b, row);
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
    int rc_since = api_query_int(r, "since", 0, INT64_MAX, &since);
    int rc_limit = api_query_int(r, "limit", 1, EVENTS_PAGE_MAX, &limit);
    if (has_store < 0 || has_sku < 0 || rc_since < 0 || rc_limit < 0) {
        http_send_problem(r, SVC_EVALIDATION,
                          "storeId and sku are ids, since >= 0, limit from 1 to 1000", NULL, 0);
        return;
    }
    char *out = query_list_buffer(r);
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
    api_read_fresh(r); /* the log answered; the lag it reports is the read model's */
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
    char *out = query_list_buffer(r);
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
