/*
 * http.c - see http.h. The h2o wiring: listener, I/O threads, replies, responses.
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/svc_limits.h"
#include "base/log.h"
#include "base/problem.h"
#include "http/routes.h"
#include "base/svc_assert.h"
#include "base/text.h"

/* Connections accepted per readiness callback before yielding to other work on the loop. */
#define HTTP_ACCEPT_BATCH_MAX 64
/* Listen backlog: a flash sale opens thousands of connections within a second. */
#define HTTP_LISTEN_BACKLOG 4096

static h2o_globalconf_t http_globalconf;
static pthread_barrier_t http_started_barrier;
static int http_listen_fd = -1;

int http_listen(const char *host, int port, int *port_out)
{
    SVC_ASSERT(port >= 0 && port <= 65535);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        return -EINVAL;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(fd, HTTP_LISTEN_BACKLOG) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    socklen_t length = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &length);
    *port_out = ntohs(addr.sin_port);
    SVC_ASSERT(*port_out > 0);
    return fd;
}

static void http_on_accept(h2o_socket_t *listener, const char *err)
{
    struct io_thread *t = listener->data;
    if (err != NULL) {
        return;
    }
    for (int i = 0; i < HTTP_ACCEPT_BATCH_MAX; i++) {
        int fd = accept4(http_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return; /* EAGAIN: another thread took it, or the backlog is empty */
        }
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        h2o_socket_t *sock =
            h2o_evloop_socket_create(t->loop, fd, H2O_SOCKET_FLAG_IS_ACCEPTED_CONNECTION);
        h2o_accept(&t->accept_ctx, sock);
    }
}

static struct io_thread *http_thread_of(h2o_req_t *req)
{
    return (struct io_thread *)((char *)req->conn->ctx - offsetof(struct io_thread, ctx));
}

static int http_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.thread = http_thread_of(req);
    r.req = req;
    r.path = req->path;
    r.query = h2o_iovec_init("", 0);
    if (req->query_at != SIZE_MAX) {
        r.path = h2o_iovec_init(req->path.base, req->query_at);
        r.query =
            h2o_iovec_init(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1);
    }
    routes_dispatch(&r);
    return 0;
}

/* ---- replies from the writer ------------------------------------------------------------ */

void http_writer_reply(struct command *cmd, void *context)
{
    (void)context;
    struct http_command *hc =
        (struct http_command *)((char *)cmd - offsetof(struct http_command, cmd));
    SVC_ASSERT(hc->thread != NULL);
    h2o_multithread_send_message(&hc->thread->reply_receiver, &hc->message);
}

static void http_send_reply(struct http_command *hc)
{
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.thread = hc->thread;
    r.req = hc->req;
    const struct command *cmd = &hc->cmd;
    h2o_req_t *req = hc->req;
    if (cmd->reply_replayed) {
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("idempotent-replayed"), 0,
                              NULL, H2O_STRLIT("true"));
    }
    if (cmd->reply_order_created) {
        char *location = h2o_mem_alloc_pool(&req->pool, 48);
        int length = snprintf(location, 48, "/v1/orders/ord_%lld", (long long)cmd->reply_order_seq);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, location,
                       (size_t)length);
    }
    if (cmd->reply_status == 503 || cmd->reply_status == 429) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    }
    http_send(&r, cmd->reply_status,
              cmd->reply_problem ? "application/problem+json" : "application/json", cmd->reply_body,
              cmd->reply_length);
}

static void http_on_reply(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        struct http_command *hc =
            H2O_STRUCT_FROM_MEMBER(struct http_command, message.link, messages->next);
        h2o_linklist_unlink(&hc->message.link);
        SVC_ASSERT(hc->cmd.reply_status >= 200);
        if (hc->req != NULL) {
            SVC_ASSERT(*hc->guard == hc);
            *hc->guard = NULL; /* the request no longer needs to tell us it is gone */
            http_send_reply(hc);
        }
        http_command_free(hc);
    }
}

/* ---- threads ---------------------------------------------------------------------------- */

static int http_thread_init(struct io_thread *t)
{
    t->pool = calloc(THREAD_COMMANDS_MAX, sizeof *t->pool);
    if (t->pool == NULL) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < THREAD_COMMANDS_MAX; i++) {
        t->pool[i].thread = t;
        t->pool[i].next_free = i + 1 < THREAD_COMMANDS_MAX ? &t->pool[i + 1] : NULL;
    }
    t->free_list = &t->pool[0];
    t->line_blocks = calloc(THREAD_LINE_BLOCKS_MAX, sizeof *t->line_blocks);
    if (t->line_blocks == NULL) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < THREAD_LINE_BLOCKS_MAX; i++) {
        t->line_blocks[i].next_free =
            i + 1 < THREAD_LINE_BLOCKS_MAX ? &t->line_blocks[i + 1] : NULL;
    }
    t->free_line_blocks = &t->line_blocks[0];
    int rc = store_reader_open(&t->reader, t->app->config.db_path);
    if (rc != 0) {
        return rc;
    }
    t->loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, t->loop, &http_globalconf);
    t->accept_ctx.ctx = &t->ctx;
    t->accept_ctx.hosts = http_globalconf.hosts;
    t->reply_queue = h2o_multithread_create_queue(t->loop);
    h2o_multithread_register_receiver(t->reply_queue, &t->reply_receiver, http_on_reply);
    t->listener = h2o_evloop_socket_create(t->loop, http_listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    t->listener->data = t;
    h2o_socket_read_start(t->listener, http_on_accept);
    return 0;
}

static void *http_thread_main(void *arg)
{
    struct io_thread *t = arg;
    int rc = http_thread_init(t);
    if (rc != 0) {
        log_error("http: thread %u failed to start: %s", t->index, svc_err_name(rc));
        exit(1); /* startup failure: abort with a logged reason (STYLE 8) */
    }
    pthread_barrier_wait(&http_started_barrier);
    for (;;) {
        h2o_evloop_run(t->loop, INT32_MAX);
    }
    SVC_UNREACHABLE(); /* the event loop never ends */
}

int http_start(struct app *app, int listen_fd, int count)
{
    SVC_ASSERT(count >= 1 && count <= IO_THREADS_MAX);
    SVC_ASSERT(listen_fd >= 0);
    http_listen_fd = listen_fd;
    h2o_config_init(&http_globalconf);
    http_globalconf.max_request_entity_size = H2O_ENTITY_BYTES_MAX;
    http_globalconf.server_name = h2o_iovec_init(H2O_STRLIT("stockd"));
    h2o_hostconf_t *host =
        h2o_config_register_host(&http_globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof *handler);
    handler->on_req = http_on_req;
    struct io_thread *threads = calloc((size_t)count, sizeof *threads);
    if (threads == NULL) {
        return -ENOMEM;
    }
    pthread_barrier_init(&http_started_barrier, NULL, (unsigned)count + 1);
    for (int i = 0; i < count; i++) {
        threads[i].app = app;
        threads[i].index = (unsigned)i;
        int rc = pthread_create(&threads[i].thread, NULL, http_thread_main, &threads[i]);
        if (rc != 0) {
            return -rc;
        }
    }
    pthread_barrier_wait(&http_started_barrier);
    return 0;
}

/* ---- responses -------------------------------------------------------------------------- */

static const char *http_reason(int status)
{
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

static void http_add_trace_id(struct http_request *r)
{
    h2o_req_t *req = r->req;
    h2o_iovec_t trace = http_header(r, "x-trace-id");
    if (trace.base == NULL || trace.len == 0 || trace.len > 128) {
        /* "t<thread>-<counter in hex>", written by hand: this runs for every response. */
        static const char hex[] = "0123456789abcdef";
        char *generated = h2o_mem_alloc_pool(&req->pool, 32);
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
        SVC_ASSERT(length < 32);
        trace = h2o_iovec_init(generated, length);
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-trace-id"), 0, NULL,
                          trace.base, trace.len);
}

void http_send(struct http_request *r, int status, const char *content_type, const char *body,
               size_t length)
{
    SVC_ASSERT(status >= 200 && status <= 599);
    SVC_ASSERT(content_type != NULL);
    h2o_req_t *req = r->req;
    req->res.status = status;
    req->res.reason = http_reason(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                   strlen(content_type));
    http_add_trace_id(r);
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
    http_send(r, status, "application/json", body, length);
}

void http_send_problem(struct http_request *r, int err, const char *detail, const char *extra_key,
                       int64_t extra_value)
{
    char body[REPLY_BODY_BYTES_MAX];
    size_t length = problem_format(body, sizeof body, err, detail, extra_key, extra_value);
    int status = svc_err_http_status(err);
    if (status == 429 || status == 503) {
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("1"));
    }
    if (status == 405) {
        const char *allow = r->route ? r->route->method : "GET";
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_ALLOW, NULL, allow,
                       strlen(allow));
    }
    http_send(r, status, "application/problem+json", body, length);
}

h2o_iovec_t http_header(const struct http_request *r, const char *name)
{
    ssize_t index = h2o_find_header_by_str(&r->req->headers, name, strlen(name), -1);
    if (index < 0) {
        return h2o_iovec_init(NULL, 0);
    }
    return r->req->headers.entries[index].value;
}

/* Percent-decodes in[0..length) into out; SVC_EVALIDATION when malformed or too long. */
static int http_percent_decode(const char *in, size_t length, char *out, size_t size)
{
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
    return 0;
}

int http_query_param(const struct http_request *r, const char *name, char *out, size_t size)
{
    SVC_ASSERT(size >= 1);
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
            int rc = http_percent_decode(value, (size_t)(stop - value), out, size);
            return rc == 0 ? 1 : rc;
        }
        cursor = stop + 1;
    }
    out[0] = '\0';
    return 0;
}

/* ---- commands --------------------------------------------------------------------------- */

struct http_command *http_command_alloc(struct http_request *r)
{
    struct io_thread *t = r->thread;
    struct http_command *hc = t->free_list;
    if (hc == NULL) {
        return NULL;
    }
    t->free_list = hc->next_free;
    SVC_ASSERT(hc->thread == t);
    hc->next_free = NULL;
    hc->req = NULL;
    hc->guard = NULL;
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
    return true;
}

/* Runs when h2o frees the request's pool: the client is gone before the reply. */
static void http_guard_dispose(void *object)
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
    hc->guard = h2o_mem_alloc_shared(&r->req->pool, sizeof *hc->guard, http_guard_dispose);
    *hc->guard = hc;
    hc->cmd.queued_us = clock_mono_us();
    command_reply_prepare(&hc->cmd);
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
