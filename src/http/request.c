/*
 * request.c - see request.h: responses, request readers, the command pool and the sending of
 * a command's reply. It does not know routes (routes.c) or how threads and sockets are set up
 * (server.c). Read routes.c next.
 */
#include "http/request.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/problem.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/text.h"
#include "core/queue.h"
#include "http/http_metrics.h"

/* ---- responses -------------------------------------------------------------------------- */

static const char *request_reason(int status)
{
    SVC_ASSERT(status >= 200 && status <= 599);
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* Writes "t<thread letter>-<counter in hex>" into the request's pool, by hand: this runs for
 * every response. */
static h2o_iovec_t request_trace_id_make(struct http_request *r)
{
    static const char hex[] = "0123456789abcdef";
    char *generated = h2o_mem_alloc_pool(&r->req->pool, 32);
    uint64_t counter = ++r->thread->trace_counter;
    size_t length = 0;
    generated[length++] = 't';
    generated[length++] = (char)('a' + r->thread->index % 26);
    generated[length++] = '-';
    size_t start = length;
    do {
        generated[length++] = hex[counter & 15];
        counter >>= 4;
    } while (counter != 0);
    for (size_t i = start, j = length - 1; i < j; i++, j--) {
        char c = generated[i];
        generated[i] = generated[j];
        generated[j] = c;
    }
    SVC_ASSERT(length > start && length < 32);
    return h2o_iovec_init(generated, length);
}

/* Whether the client's X-Trace-Id can go in log lines as it is: 1..TRACE_ID_BYTES_MAX bytes of
 * printable ASCII without spaces (a line cannot be forged through it). */
static bool request_trace_id_usable(h2o_iovec_t trace)
{
    if (trace.base == NULL || trace.len == 0 || trace.len > TRACE_ID_BYTES_MAX) {
        return false;
    }
    for (size_t i = 0; i < trace.len; i++) {
        if ((unsigned char)trace.base[i] <= 0x20 || (unsigned char)trace.base[i] >= 0x7f) {
            return false;
        }
    }
    return true;
}

/* Sets r->trace_id (see http_trace_begin) without touching the log's. A made-up one replaces
 * the request's X-Trace-Id header (or is added as one), so that a reply sent later on the same
 * request (api_intake.c, api_dlt_stream.c) settles on the same id. */
static void request_trace_settle(struct http_request *r)
{
    SVC_ASSERT(r->trace_id == NULL);
    h2o_req_t *req = r->req;
    ssize_t index = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-trace-id"), -1);
    h2o_iovec_t trace = index >= 0 ? req->headers.entries[index].value : h2o_iovec_init(NULL, 0);
    if (!request_trace_id_usable(trace)) {
        trace = request_trace_id_make(r);
        if (index >= 0) {
            req->headers.entries[index].value = trace;
        } else {
            h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("x-trace-id"), 0, NULL,
                                  trace.base, trace.len);
        }
    }
    SVC_ASSERT(trace.len >= 1 && trace.len <= TRACE_ID_BYTES_MAX);
    char *copy = h2o_mem_alloc_pool(&req->pool, trace.len + 1);
    memcpy(copy, trace.base, trace.len);
    copy[trace.len] = '\0';
    r->trace_id = copy;
}

void http_trace_begin(struct http_request *r)
{
    request_trace_settle(r);
    SVC_ASSERT(r->trace_id != NULL);
    log_trace_set(r->trace_id);
}

static void request_add_trace_id(struct http_request *r)
{
    h2o_req_t *req = r->req;
    if (r->trace_id == NULL) {
        request_trace_settle(r); /* a response sent outside dispatch (server.c's refusals) */
    }
    size_t length = strlen(r->trace_id);
    SVC_ASSERT(length >= 1 && length <= TRACE_ID_BYTES_MAX);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-trace-id"), 0, NULL,
                          r->trace_id, length);
}

void http_send(struct http_request *r, int status, const char *content_type, const char *body,
               size_t length)
{
    SVC_ASSERT(status >= 200 && status <= 599);
    SVC_ASSERT(content_type != NULL);
    h2o_req_t *req = r->req;
    req->res.status = status;
    req->res.reason = request_reason(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                   strlen(content_type));
    request_add_trace_id(r);
    http_metrics_count(r->thread, r->route, req->method, status, r->started_us);
    /* A known length keeps HTTP/1.1 connections alive for every status: without it h2o
     * chunks only 200 responses and closes the connection after any other. */
    req->res.content_length = status == 304 ? 0 : length;
    if (status == 304) {
        h2o_send_inline(req, NULL, 0);
        return;
    }
    h2o_send_inline(req, body, length); /* copies body into the request's pool */
}

void http_send_json(struct http_request *r, int status, const char *body, size_t length)
{
    SVC_ASSERT(body != NULL || length == 0);
    http_send(r, status, "application/json", body, length);
}

void http_start_event_stream(h2o_req_t *req, h2o_generator_t *generator)
{
    SVC_ASSERT(req != NULL && generator != NULL);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-cache"));
    h2o_start_response(req, generator);
}

void http_send_problem(struct http_request *r, int err, const char *detail, const char *extra_key,
                       int64_t extra_value)
{
    SVC_ASSERT(err < 0);
    char body[REPLY_BODY_BYTES_MAX];
    size_t length = problem_format(body, sizeof body, err, detail, extra_key, extra_value);
    SVC_ASSERT(length > 0 && length < sizeof body);
    int status = svc_err_http_status(err);
    if (status == 429 || status == 503) {
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("1"));
    }
    http_send(r, status, "application/problem+json", body, length);
}

h2o_iovec_t http_header(const struct http_request *r, const char *name)
{
    SVC_ASSERT(r->req != NULL && name != NULL);
    ssize_t index = h2o_find_header_by_str(&r->req->headers, name, strlen(name), -1);
    if (index < 0) {
        return h2o_iovec_init(NULL, 0);
    }
    SVC_ASSERT((size_t)index < r->req->headers.size);
    return r->req->headers.entries[index].value;
}

/* Percent-decodes in[0..length) into out; SVC_EVALIDATION when malformed or too long. */
static int request_percent_decode(const char *in, size_t length, char *out, size_t size)
{
    SVC_ASSERT(size >= 1);
    size_t used = 0;
    for (size_t i = 0; i < length; i++) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= length) {
                return SVC_EVALIDATION;
            }
            int high = text_hex_value(in[i + 1]);
            int low = text_hex_value(in[i + 2]);
            if (high < 0 || low < 0) {
                return SVC_EVALIDATION;
            }
            c = (char)(high * 16 + low);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == '\0' || used + 1 >= size) {
            return SVC_EVALIDATION;
        }
        out[used++] = c;
    }
    out[used] = '\0';
    SVC_ASSERT(used < size);
    return 0;
}

int http_query_param(const struct http_request *r, const char *name, char *out, size_t size)
{
    SVC_ASSERT(size >= 1);
    SVC_ASSERT(r->query.base != NULL || r->query.len == 0);
    size_t name_length = strlen(name);
    const char *cursor = r->query.base;
    const char *end = r->query.base + r->query.len;
    while (cursor < end) {
        const char *amp = memchr(cursor, '&', (size_t)(end - cursor));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(cursor, '=', (size_t)(stop - cursor));
        const char *key_end = eq ? eq : stop;
        if ((size_t)(key_end - cursor) == name_length && memcmp(cursor, name, name_length) == 0) {
            const char *value = eq ? eq + 1 : stop;
            int rc = request_percent_decode(value, (size_t)(stop - value), out, size);
            return rc == 0 ? 1 : rc;
        }
        cursor = stop + 1;
    }
    out[0] = '\0';
    return 0;
}

/* ---- commands --------------------------------------------------------------------------- */

int http_command_pool_init(struct io_thread *t)
{
    SVC_ASSERT(t->pool == NULL && t->line_blocks == NULL);
    t->pool = calloc(THREAD_COMMANDS_MAX, sizeof *t->pool);
    t->line_blocks = calloc(THREAD_LINE_BLOCKS_MAX, sizeof *t->line_blocks);
    if (t->pool == NULL || t->line_blocks == NULL) {
        return -ENOMEM; /* a startup failure: the caller exits */
    }
    for (size_t i = 0; i < THREAD_COMMANDS_MAX; i++) {
        t->pool[i].thread = t;
        t->pool[i].next_free = i + 1 < THREAD_COMMANDS_MAX ? &t->pool[i + 1] : NULL;
    }
    t->free_list = &t->pool[0];
    for (size_t i = 0; i < THREAD_LINE_BLOCKS_MAX; i++) {
        t->line_blocks[i].next_free =
            i + 1 < THREAD_LINE_BLOCKS_MAX ? &t->line_blocks[i + 1] : NULL;
    }
    t->free_line_blocks = &t->line_blocks[0];
    SVC_ASSERT(t->free_list != NULL && t->free_line_blocks != NULL);
    return 0;
}

struct http_command *http_command_alloc(struct http_request *r)
{
    struct io_thread *t = r->thread;
    struct http_command *hc = t->free_list;
    if (hc == NULL) {
        return NULL;
    }
    t->free_list = hc->next_free;
    SVC_ASSERT(hc->thread == t);
    SVC_ASSERT(hc->cmd.lines == NULL); /* returned blocks go back with their command */
    hc->next_free = NULL;
    hc->req = NULL;
    hc->guard = NULL;
    hc->send_ok = NULL;
    /* Everything before the reply body, reply_location included, starts empty. */
    memset(&hc->cmd, 0, offsetof(struct command, reply_body));
    hc->cmd.owner = t;
    command_reply_prepare(&hc->cmd);
    return hc;
}

void http_command_free(struct http_command *hc)
{
    struct io_thread *t = hc->thread;
    SVC_ASSERT(t != NULL);
    SVC_ASSERT(hc->next_free == NULL);
    if (hc->cmd.lines != NULL) {
        SVC_ASSERT(hc->cmd.lines->next_free == NULL);
        hc->cmd.lines->next_free = t->free_line_blocks;
        t->free_line_blocks = hc->cmd.lines;
        hc->cmd.lines = NULL;
    }
    hc->req = NULL;
    hc->next_free = t->free_list;
    t->free_list = hc;
}

bool http_command_take_lines(struct http_command *hc)
{
    struct io_thread *t = hc->thread;
    SVC_ASSERT(hc->cmd.lines == NULL);
    struct cmd_lines *block = t->free_line_blocks;
    if (block == NULL) {
        return false;
    }
    t->free_line_blocks = block->next_free;
    block->next_free = NULL;
    block->count = 0;
    hc->cmd.lines = block;
    command_reply_prepare(&hc->cmd);
    SVC_ASSERT(hc->cmd.reply_body == block->reply);
    return true;
}

/* Runs when h2o frees the request's pool: the client is gone before the reply. */
static void request_guard_dispose(void *object)
{
    struct http_command **guard = object;
    if (*guard != NULL) {
        SVC_ASSERT((*guard)->guard == guard);
        (*guard)->req = NULL;
    }
}

void http_command_submit(struct http_request *r, struct http_command *hc)
{
    SVC_ASSERT(hc->thread == r->thread);
    SVC_ASSERT(hc->req == NULL);
    hc->req = r->req;
    hc->route = r->route;
    hc->started_us = r->started_us;
    hc->guard = h2o_mem_alloc_shared(&r->req->pool, sizeof *hc->guard, request_guard_dispose);
    *hc->guard = hc;
    if (hc->cmd.has_idem_key) {
        hc->cmd.fingerprint = command_fingerprint(&hc->cmd); /* decoded: its meaning */
    }
    hc->cmd.queued_us = clock_mono_us();
    SVC_ASSERT(r->trace_id != NULL && strlen(r->trace_id) < sizeof hc->cmd.trace_id);
    strcpy(hc->cmd.trace_id, r->trace_id); /* the writer's lines about it carry it */
    command_reply_prepare(&hc->cmd);
    log_debug("http: %s of %s queued for the writer", command_kind_name(hc->cmd.kind),
              hc->cmd.principal);
    bool stopping = atomic_load(&r->thread->app->shutting_down);
    int rc = stopping ? -ESHUTDOWN : queue_push(&r->thread->app->queue, &hc->cmd);
    if (rc != 0) {
        *hc->guard = NULL;
        hc->req = NULL;
        http_command_free(hc);
        if (stopping) {
            http_send_problem(r, SVC_ESHUTTING_DOWN, "stockd is stopping", NULL, 0);
        } else {
            http_send_problem(r, SVC_EQUEUE_FULL, "the writer queue is full; retry shortly", NULL,
                              0);
        }
    }
}

/* Sends the writer's reply of hc on its still-open request. */
static void request_send_reply(struct http_command *hc)
{
    const struct command *cmd = &hc->cmd;
    h2o_req_t *req = hc->req;
    SVC_ASSERT(req != NULL);
    SVC_ASSERT(cmd->reply_length <= cmd->reply_capacity);
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.thread = hc->thread;
    r.req = req;
    r.route = hc->route;
    r.started_us = hc->started_us;
    /* The same X-Trace-Id as when it was queued, on the pool: h2o keeps a header's value by
     * reference, and the command goes back to its pool before the request ends. */
    SVC_ASSERT(cmd->trace_id[0] != '\0'); /* http_command_submit copied it */
    r.trace_id = h2o_strdup(&req->pool, cmd->trace_id, SIZE_MAX).base;
    if (cmd->reply_replayed) {
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("idempotent-replayed"), 0,
                              NULL, H2O_STRLIT("true"));
    }
    size_t location_length = strnlen(cmd->reply_location, sizeof cmd->reply_location);
    SVC_ASSERT(location_length < sizeof cmd->reply_location); /* NUL-terminated */
    if (location_length > 0) {
        h2o_iovec_t location = h2o_strdup(&req->pool, cmd->reply_location, location_length);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, location.base,
                       location.len);
    }
    if (cmd->reply_status == 503 || cmd->reply_status == 429) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    }
    if (hc->send_ok != NULL && cmd->reply_status == 200 && !cmd->reply_problem &&
        hc->send_ok(&r, cmd)) {
        return;
    }
    http_send(&r, cmd->reply_status,
              cmd->reply_problem ? "application/problem+json" : "application/json", cmd->reply_body,
              cmd->reply_length);
}

void http_command_finish(struct http_command *hc)
{
    SVC_ASSERT(hc->thread != NULL);
    SVC_ASSERT(hc->cmd.reply_status >= 200 && hc->cmd.reply_status <= 599);
    if (hc->req != NULL) {
        SVC_ASSERT(*hc->guard == hc);
        *hc->guard = NULL; /* the request no longer needs to tell us it is gone */
        log_trace_set(hc->cmd.trace_id[0] != '\0' ? hc->cmd.trace_id : NULL);
        request_send_reply(hc);
        log_trace_set(NULL);
    }
    http_command_free(hc);
}
