/*
 * server.c - see server.h. The h2o wiring: listener, I/O threads and their startup, the accept
 * loop, request dispatch with its framing check, its trace id and its access log line, the
 * filter that turns h2o's own refusals into problem+json, and the receiver of the writer's
 * replies. It does not format responses
 * (request.c), route requests (routes.c) or define the framing rules (framing.c). Read routes.c
 * next.
 */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/problem.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/svc_thread.h"
#include "http/framing.h"
#include "http/http_metrics.h"
#include "http/request.h"
#include "http/routes.h"
#include "http/thread.h"
#include "store/store_open.h"

/* Connections accepted per readiness callback before yielding to other work on the loop. */
#define SERVER_ACCEPT_BATCH_MAX 64
/* Listen backlog: a flash sale opens thousands of connections within a second. */
#define SERVER_LISTEN_BACKLOG 4096

static h2o_globalconf_t server_globalconf;
static pthread_barrier_t server_started_barrier;
static int server_listen_fd = -1;
static struct io_thread *server_threads; /* owned for the life of the process; set before
                                          * the threads start */
static int server_threads_total;         /* their number, set before they start */
static _Atomic int server_thread_count;  /* set once the threads exist: /metrics reads them */
/* Connections accepted by any thread: the next one goes to thread (count % threads). */
static _Atomic uint64_t server_accepted;

/* A connection one I/O thread accepted for another (server_on_accept). */
struct server_handoff {
    h2o_multithread_message_t message; /* to the target's accept receiver; first member */
    int fd;                            /* owned until the target serves it */
};

int http_listen(const char *host, int port, int *port_out)
{
    SVC_ASSERT(port >= 0 && port <= 65535);
    SVC_ASSERT(host != NULL && port_out != NULL);
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
        listen(fd, SERVER_LISTEN_BACKLOG) != 0) {
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

static void server_on_accept(h2o_socket_t *listener, const char *err);

/* The pause is over: listen again. A descriptor may have been freed meanwhile; if not, the
 * next accept pauses again. */
static void server_on_accept_resume(h2o_timeout_entry_t *entry)
{
    struct io_thread *t = H2O_STRUCT_FROM_MEMBER(struct io_thread, accept_resume, entry);
    SVC_ASSERT(t->listener != NULL);
    h2o_socket_read_start(t->listener, server_on_accept);
}

/* accept failed for want of descriptors (or kernel memory): stop listening for ACCEPT_PAUSE_MS. The
 * pending connections wait in the backlog; the open ones keep being served. */
static void server_accept_pause(struct io_thread *t, int err)
{
    SVC_ASSERT(err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM);
    SVC_ASSERT(!h2o_timeout_is_linked(&t->accept_resume));
    log_warn("http: out of file descriptors or memory (%s): thread %u pauses accepting for %d ms",
             strerror(err), t->index, ACCEPT_PAUSE_MS);
    h2o_socket_read_stop(t->listener);
    h2o_timeout_link(t->loop, &t->accept_pause_timeout, &t->accept_resume);
    atomic_fetch_add_explicit(&t->accept_pauses, 1, memory_order_relaxed);
}

/* Serves the accepted connection fd on t, the calling thread. */
static void server_serve(struct io_thread *t, int fd)
{
    SVC_ASSERT(fd >= 0);
    atomic_fetch_add_explicit(&t->connections, 1, memory_order_relaxed);
    h2o_socket_t *sock =
        h2o_evloop_socket_create(t->loop, fd, H2O_SOCKET_FLAG_IS_ACCEPTED_CONNECTION);
    h2o_accept(&t->accept_ctx, sock);
}

/* Connections another thread accepted for this one. */
static void server_on_handoff(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct io_thread *t = H2O_STRUCT_FROM_MEMBER(struct io_thread, accept_receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        struct server_handoff *h =
            H2O_STRUCT_FROM_MEMBER(struct server_handoff, message.link, messages->next);
        h2o_linklist_unlink(&h->message.link);
        server_serve(t, h->fd);
        free(h);
    }
}

/* Every I/O thread's epoll reports the shared listener, and the first awake took up to a whole
 * batch: 256 connections opened at once could all land on one thread, which then did all the
 * HTTP work while the other idled (a closed loop's CPU split by thread: 11-12 us per purchase
 * on one against 1-2 on the other, and ~10% less throughput than when they were even). So the
 * connections go round the threads in turn, whichever accepted them; a connection stays on
 * its thread for its life. Without memory for the hand-off the accepting thread serves it. */
static void server_on_accept(h2o_socket_t *listener, const char *err)
{
    struct io_thread *t = listener->data;
    SVC_ASSERT(t != NULL && t->listener == listener);
    SVC_ASSERT(server_threads != NULL && server_threads_total >= 1);
    if (err != NULL) {
        return;
    }
    for (int i = 0; i < SERVER_ACCEPT_BATCH_MAX; i++) {
        int fd = accept4(server_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                server_accept_pause(t, errno);
            }
            return; /* EAGAIN: another thread took it, or the backlog is empty */
        }
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        uint64_t n = atomic_fetch_add_explicit(&server_accepted, 1, memory_order_relaxed);
        struct io_thread *target = &server_threads[n % (uint64_t)server_threads_total];
        struct server_handoff *h = target == t ? NULL : malloc(sizeof *h);
        if (h == NULL) {
            server_serve(t, fd);
            continue;
        }
        h->message = (h2o_multithread_message_t){{NULL, NULL}};
        h->fd = fd;
        h2o_multithread_send_message(&target->accept_receiver, &h->message);
    }
}

static struct io_thread *server_thread_of(h2o_req_t *req)
{
    struct io_thread *t =
        (struct io_thread *)((char *)req->conn->ctx - offsetof(struct io_thread, ctx));
    SVC_ASSERT(t->index < IO_THREADS_MAX);
    return t;
}

/* ---- framing (RFC 9112 6.1, 6.3) ---------------------------------------------------------
 *
 * h2o 2.2.5 frames HTTP/1 request bodies before our handler runs and removes Content-Length and
 * Transfer-Encoding from req->headers, so a handler cannot see a request that carries both, or
 * two Content-Lengths; h2o takes the Transfer-Encoding (or the first Content-Length) and keeps
 * the connection open, and whatever follows the body it chose is run as the next request.
 *
 * Where to look again, and why here: h2o parses every HTTP/1 head at offset 0 of the
 * connection's input buffer (sock->input) and consumes the request's bytes from it only after
 * the response has been sent; a body, Content-Length or chunked (decoded in place), starts
 * right behind the head, and req->entity points there. So when our handler runs, the head h2o
 * parsed is still in the buffer, byte for byte, and we scan it again (framing.c) before
 * routing. This sees exactly the bytes h2o framed, once per request, on the request's own
 * head: pipelined requests and heads that arrived in several reads need nothing special, and
 * body bytes are never mistaken for a head, because h2o has already found where the head
 * ends. The cost is one memchr per header line, no allocation. A refused request is answered
 * 400 bad_framing with Connection: close, and h2o closes the connection after the answer
 * without parsing the bytes behind the body (http1_is_persistent = 0).
 *
 * The alternative, wrapping each accepted socket's read callback to check heads before h2o's
 * parser sees them, does not hold: h2o re-arms its own read callback at every request and
 * parses a pipelined request already in the buffer without any read, so the wrapper would
 * have to track h2o's framing state (heads, bodies, chunks) byte for byte to know where a head
 * starts. Errors h2o finds itself (a Transfer-Encoding other than chunked, a Content-Length
 * that is not digits, broken chunks, an oversized body) never reach the handler; the filter
 * below makes those problem+json.
 *
 * This reads h2o 2.2's buffer layout, which is not its API; the assertions below fail at the
 * first request if a later h2o differs, and this guard at build time. HTTP/2 requests (h2c
 * upgrades included, which h2o gives version 0x200) are framed by HTTP/2 and skip the check. */
#if H2O_VERSION_MAJOR != 2 || H2O_VERSION_MINOR != 2
#error "server_framing_refused reads h2o 2.2's HTTP/1 input buffer: check it against this h2o"
#endif

/* Scans the head of HTTP/1 request req, still at the start of its connection's input. */
static void server_head_scan(h2o_req_t *req, struct framing_head *head)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    SVC_ASSERT(sock != NULL && sock->input != NULL);
    const char *start = sock->input->bytes;
    size_t size = sock->input->size;
    if (req->entity.base != NULL) {
        SVC_ASSERT(req->entity.base >= start && req->entity.base <= start + size);
        size = (size_t)(req->entity.base - start); /* the head ends where the body starts */
    }
    framing_scan(start, size, head);
    SVC_ASSERT(head->length > 0); /* h2o parsed a complete head there */
    if (req->entity.base != NULL) {
        SVC_ASSERT(head->length == size);
    } else { /* either framing header would have made h2o read a body */
        SVC_ASSERT(head->content_length_count == 0);
        SVC_ASSERT(head->transfer_encoding_count == 0);
    }
}

/* Refuses r with 400 bad_framing and a close when its head frames the body ambiguously;
 * returns whether it did. */
static bool server_framing_refused(struct http_request *r)
{
    h2o_req_t *req = r->req;
    SVC_ASSERT(req->version >= 0x100);
    if (req->version >= 0x200) {
        return false;
    }
    struct framing_head head;
    server_head_scan(req, &head);
    const char *why = framing_refusal(&head, req->version == 0x100);
    if (why == NULL) {
        return false;
    }
    log_warn("http: refused a request with ambiguous framing: %s", why);
    req->http1_is_persistent = 0; /* RFC 9112 6.3: close, never read what follows */
    http_send_problem(r, SVC_EBAD_FRAMING, why, NULL, 0);
    return true;
}

/* ---- h2o's own refusals as problem+json -------------------------------------------------
 *
 * h2o answers a few requests before any handler: a Transfer-Encoding other than "chunked", a
 * Content-Length that is not digits, broken chunked framing (400, with a close), a body over
 * max_request_entity_size (413, with a close). It binds them to the host's fallback path,
 * which has no handler of ours (our "/" path takes every request h2o hands over), and sends a
 * text/plain body through that path's output filters. So a filter there sees h2o's own
 * refusals and nothing of ours, and answers them as problem+json, with h2o's sentence as the
 * detail. Not turned: the 417 for an Expect other than 100-continue (no code of ours), and
 * the fixed "400 Bad Request" h2o writes straight to the socket when it cannot parse a head
 * (garbage, more than 100 header lines, a head over H2O_MAX_REQLEN), which goes through no
 * filter at all. README "Limits" lists both. */

/* Bytes of h2o's sentence kept as the detail ("broken chunked-encoding"). */
#define SERVER_H2O_DETAIL_BYTES_MAX 128

struct server_problem_ostream {
    h2o_ostream_t super;
    int err;      /* the svc_err the response becomes */
    bool passing; /* h2o streams this one (not an error page): forward it untouched */
};

static int server_problem_err_of(int status, const char **reason)
{
    switch (status) {
    case 400: *reason = "Bad Request"; return SVC_EBAD_FRAMING;
    case 413: *reason = "Payload Too Large"; return SVC_EBODY_TOO_LARGE;
    default: return 0;
    }
}

/* Copies h2o's body (a short sentence) into detail, NUL-terminated, cut to fit. */
static void server_problem_detail(const h2o_iovec_t *bufs, size_t count, char *detail, size_t size)
{
    SVC_ASSERT(size >= 1);
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        size_t n = bufs[i].len < size - 1 - used ? bufs[i].len : size - 1 - used;
        memcpy(detail + used, bufs[i].base, n);
        used += n;
    }
    detail[used] = '\0';
    SVC_ASSERT(used < size);
}

static void server_problem_do_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs,
                                   size_t count, h2o_send_state_t state)
{
    struct server_problem_ostream *o = (struct server_problem_ostream *)self;
    const char *reason = NULL;
    o->passing = o->passing || h2o_send_state_is_in_progress(state);
    if (o->passing || server_problem_err_of(req->res.status, &reason) != o->err) {
        h2o_ostream_send_next(self, req, bufs, count, state);
        return;
    }
    SVC_ASSERT(reason != NULL);
    char detail[SERVER_H2O_DETAIL_BYTES_MAX];
    server_problem_detail(bufs, count, detail, sizeof detail);
    char *body = h2o_mem_alloc_pool(&req->pool, REPLY_BODY_BYTES_MAX);
    bool too_large = o->err == SVC_EBODY_TOO_LARGE;
    size_t length =
        problem_format(body, REPLY_BODY_BYTES_MAX, o->err, detail[0] != '\0' ? detail : NULL,
                       too_large ? "maxBytes" : NULL, too_large ? BODY_BYTES_MAX : 0);
    SVC_ASSERT(length > 0 && length < REPLY_BODY_BYTES_MAX);
    req->res.reason = reason;
    req->res.content_length = length; /* the headers go out with the first send, below */
    h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE,
                   H2O_STRLIT("application/problem+json"), 1);
    h2o_iovec_t out = h2o_iovec_init(body, length);
    h2o_ostream_send_next(self, req, &out, count == 0 ? 0 : 1, state); /* 0: a HEAD */
}

static void server_problem_on_setup_ostream(h2o_filter_t *self, h2o_req_t *req,
                                            h2o_ostream_t **slot)
{
    SVC_ASSERT(self != NULL && req->pathconf == &req->hostconf->fallback_path);
    const char *reason = NULL;
    int err = server_problem_err_of(req->res.status, &reason);
    if (err != 0) {
        struct server_problem_ostream *o =
            (struct server_problem_ostream *)h2o_add_ostream(req, sizeof *o, slot);
        o->super.do_send = server_problem_do_send;
        o->err = err;
        o->passing = false;
        slot = &o->super.next;
    }
    h2o_setup_next_ostream(req, slot);
}

/* --access-log: what the line of one request needs, on its pool until h2o frees the request
 * (then server_access_dispose writes the line: the status is known, and the time spent
 * includes sending the answer, or an SSE stream's whole life). */
struct server_access {
    h2o_req_t *req;        /* alive while its pool is being freed (h2o_dispose_request) */
    const char *route;     /* the route's pattern (static), NULL: no route matched */
    const char *principal; /* the auth table's (immutable), NULL: not authenticated */
    char method[16];       /* the method, cut to fit */
    size_t method_length;
    char trace_id[TRACE_ID_BYTES_MAX + 1];
    int64_t started_us; /* monotonic, as the handler started */
};

static void server_access_dispose(void *object)
{
    struct server_access *a = object;
    SVC_ASSERT(a->req != NULL && a->trace_id[0] != '\0');
    int status = a->req->res.status; /* 0: the client left before the answer */
    struct log_access line = {
        .method = a->method,
        .method_length = a->method_length,
        .route = a->route,
        .status = status >= 0 && status <= 999 ? status : 0,
        .duration_us = clock_mono_us() - a->started_us,
        .trace_id = a->trace_id,
        .principal = a->principal,
    };
    log_access_write(&line);
}

/* Arms r's access log line (after dispatch: the route and principal are known). */
static void server_access_arm(const struct http_request *r, int64_t started_us)
{
    SVC_ASSERT(r->trace_id != NULL);
    h2o_req_t *req = r->req;
    struct server_access *a = h2o_mem_alloc_shared(&req->pool, sizeof *a, server_access_dispose);
    a->req = req;
    a->route = r->route != NULL ? r->route->pattern : NULL;
    a->principal = r->principal;
    a->method_length = req->method.len < sizeof a->method ? req->method.len : sizeof a->method;
    memcpy(a->method, req->method.base, a->method_length);
    size_t trace_length = strlen(r->trace_id);
    SVC_ASSERT(trace_length >= 1 && trace_length < sizeof a->trace_id);
    memcpy(a->trace_id, r->trace_id, trace_length + 1);
    a->started_us = started_us;
}

static int server_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.thread = server_thread_of(req);
    r.req = req;
    r.started_us = clock_mono_us();
    r.path = req->path;
    r.query = h2o_iovec_init("", 0);
    if (req->query_at != SIZE_MAX) {
        SVC_ASSERT(req->query_at < req->path.len);
        r.path = h2o_iovec_init(req->path.base, req->query_at);
        r.query =
            h2o_iovec_init(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1);
    }
    int64_t started_us = clock_mono_us();
    http_trace_begin(&r); /* every line logged from here on carries it (log.h) */
    if (!server_framing_refused(&r)) {
        routes_dispatch(&r);
    }
    if (log_access_enabled()) {
        server_access_arm(&r, started_us);
    }
    log_trace_set(NULL); /* r->trace_id lives on the request's pool */
    return 0;
}

/* ---- replies from the writer ------------------------------------------------------------ */

/* The replies of the writer's current batch, per I/O thread, chained through reply_next:
 * touched by the writer thread only. Sent as one message per thread when the batch's replies
 * are all out (one lock and at most one wake-up per thread and batch, not per reply). */
static struct {
    struct http_command *head;
    struct http_command *tail;
} server_pending[IO_THREADS_MAX];

void http_writer_reply(struct command *cmd, void *context)
{
    (void)context;
    struct http_command *hc =
        (struct http_command *)((char *)cmd - offsetof(struct http_command, cmd));
    SVC_ASSERT(hc->thread != NULL && hc->thread->index < IO_THREADS_MAX);
    SVC_ASSERT(cmd->owner == hc->thread);
    hc->reply_next = NULL;
    unsigned t = hc->thread->index;
    if (server_pending[t].head == NULL) {
        server_pending[t].head = hc;
    } else {
        server_pending[t].tail->reply_next = hc;
    }
    server_pending[t].tail = hc;
}

void http_writer_replies_flush(void *context)
{
    (void)context;
    for (unsigned t = 0; t < IO_THREADS_MAX; t++) {
        struct http_command *head = server_pending[t].head;
        if (head != NULL) {
            server_pending[t].head = NULL;
            server_pending[t].tail = NULL;
            h2o_multithread_send_message(&head->thread->reply_receiver, &head->message);
        }
    }
}

static void server_on_reply(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct http_command *hc =
            H2O_STRUCT_FROM_MEMBER(struct http_command, message.link, messages->next);
        h2o_linklist_unlink(&hc->message.link);
        while (hc != NULL) {
            struct http_command *next = hc->reply_next; /* finish may reuse hc */
            SVC_ASSERT(&hc->thread->reply_receiver == receiver);
            http_command_finish(hc);
            hc = next;
        }
    }
}

/* ---- threads ---------------------------------------------------------------------------- */

static int server_thread_init(struct io_thread *t)
{
    SVC_ASSERT(t->app != NULL && t->loop == NULL);
    int rc = http_command_pool_init(t);
    if (rc == 0) {
        rc = http_metrics_init(t);
    }
    if (rc != 0) {
        return rc;
    }
    t->list_body = malloc(LIST_BODY_BYTES_MAX);
    t->hasher = auth_hasher_new();
    if (t->list_body == NULL || t->hasher == NULL) {
        return -ENOMEM;
    }
    rc = store_reader_open(&t->reader, t->app->config.db_path);
    if (rc != 0) {
        return rc;
    }
    SVC_ASSERT(t->reader != NULL);
    store_reader_watch_recoveries(t->reader, &t->app->writer.storage_recoveries);
    t->loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, t->loop, &server_globalconf);
    t->accept_ctx.ctx = &t->ctx;
    t->accept_ctx.hosts = server_globalconf.hosts;
    t->reply_queue = h2o_multithread_create_queue(t->loop);
    h2o_multithread_register_receiver(t->reply_queue, &t->reply_receiver, server_on_reply);
    h2o_multithread_register_receiver(t->reply_queue, &t->accept_receiver, server_on_handoff);
    t->listener = h2o_evloop_socket_create(t->loop, server_listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    t->listener->data = t;
    h2o_socket_read_start(t->listener, server_on_accept);
    h2o_timeout_init(t->loop, &t->accept_pause_timeout, ACCEPT_PAUSE_MS);
    t->accept_resume = (h2o_timeout_entry_t){.cb = server_on_accept_resume};
    SVC_ASSERT(t->loop != NULL && t->reply_queue != NULL);
    return 0;
}

static void *server_thread_main(void *arg)
{
    struct io_thread *t = arg;
    SVC_ASSERT(t->app != NULL);
    svc_thread_name("http", (int)t->index);
    int rc = server_thread_init(t);
    if (rc != 0) {
        log_error("http: thread %u failed to start: %s", t->index, svc_err_name(rc));
        exit(1); /* startup failure: abort with a logged reason (STYLE 8) */
    }
    pthread_barrier_wait(&server_started_barrier);
    for (;;) {
        h2o_evloop_run(t->loop, INT32_MAX);
    }
    SVC_UNREACHABLE(); /* the event loop never ends */
}

int http_start(struct app *app, int listen_fd, int count)
{
    SVC_ASSERT(count >= 1 && count <= IO_THREADS_MAX);
    SVC_ASSERT(listen_fd >= 0);
    SVC_ASSERT(app != NULL && server_listen_fd == -1); /* once per process */
    server_listen_fd = listen_fd;
    h2o_config_init(&server_globalconf);
    server_globalconf.max_request_entity_size = H2O_ENTITY_BYTES_MAX;
    server_globalconf.server_name = h2o_iovec_init(H2O_STRLIT("stockd"));
    h2o_hostconf_t *host =
        h2o_config_register_host(&server_globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_filter_t *filter = h2o_create_filter(&host->fallback_path, sizeof *filter);
    filter->on_setup_ostream = server_problem_on_setup_ostream;
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof *handler);
    handler->on_req = server_on_req;
    struct io_thread *threads = calloc((size_t)count, sizeof *threads);
    if (threads == NULL) {
        return -ENOMEM;
    }
    pthread_barrier_init(&server_started_barrier, NULL, (unsigned)count + 1);
    server_threads = threads; /* before any thread accepts: the loops start after the barrier */
    server_threads_total = count;
    for (int i = 0; i < count; i++) {
        threads[i].app = app;
        threads[i].index = (unsigned)i;
        int rc = pthread_create(&threads[i].thread, NULL, server_thread_main, &threads[i]);
        if (rc != 0) {
            return -rc;
        }
    }
    pthread_barrier_wait(&server_started_barrier);
    atomic_store(&server_thread_count, count);
    return 0;
}

void http_threads_metrics(struct http_metrics_sum *sum)
{
    int count = atomic_load(&server_thread_count);
    for (int i = 0; i < count; i++) {
        http_metrics_add(&server_threads[i], sum);
    }
}

int http_thread_connections(uint64_t *out, int capacity)
{
    SVC_ASSERT(out != NULL && capacity >= 0);
    int count = atomic_load(&server_thread_count);
    SVC_ASSERT(count <= capacity);
    for (int i = 0; i < count; i++) {
        out[i] = atomic_load_explicit(&server_threads[i].connections, memory_order_relaxed);
    }
    return count;
}

uint64_t http_accept_pauses(void)
{
    uint64_t total = 0;
    int count = atomic_load(&server_thread_count);
    for (int i = 0; i < count; i++) {
        total += atomic_load_explicit(&server_threads[i].accept_pauses, memory_order_relaxed);
    }
    return total;
}
