/*
 * server.c - see server.h. The h2o wiring: listener, I/O threads and their startup, the accept
 * loop, request dispatch and the receiver of the writer's replies. It does not format
 * responses (request.c) or route requests (routes.c). Read routes.c next.
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

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
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

static void server_on_accept(h2o_socket_t *listener, const char *err)
{
    struct io_thread *t = listener->data;
    SVC_ASSERT(t != NULL && t->listener == listener);
    if (err != NULL) {
        return;
    }
    for (int i = 0; i < SERVER_ACCEPT_BATCH_MAX; i++) {
        int fd = accept4(server_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
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

static struct io_thread *server_thread_of(h2o_req_t *req)
{
    struct io_thread *t =
        (struct io_thread *)((char *)req->conn->ctx - offsetof(struct io_thread, ctx));
    SVC_ASSERT(t->index < IO_THREADS_MAX);
    return t;
}

static int server_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    struct http_request r;
    memset(&r, 0, sizeof r);
    r.thread = server_thread_of(req);
    r.req = req;
    r.path = req->path;
    r.query = h2o_iovec_init("", 0);
    if (req->query_at != SIZE_MAX) {
        SVC_ASSERT(req->query_at < req->path.len);
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
    SVC_ASSERT(cmd->owner == hc->thread);
    h2o_multithread_send_message(&hc->thread->reply_receiver, &hc->message);
}

static void server_on_reply(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    SVC_ASSERT(receiver != NULL);
    while (!h2o_linklist_is_empty(messages)) {
        struct http_command *hc =
            H2O_STRUCT_FROM_MEMBER(struct http_command, message.link, messages->next);
        h2o_linklist_unlink(&hc->message.link);
        SVC_ASSERT(&hc->thread->reply_receiver == receiver);
        http_command_finish(hc);
    }
}

/* ---- threads ---------------------------------------------------------------------------- */

static int server_thread_init(struct io_thread *t)
{
    SVC_ASSERT(t->app != NULL && t->loop == NULL);
    int rc = http_command_pool_init(t);
    if (rc != 0) {
        return rc;
    }
    t->list_body = malloc(LIST_BODY_BYTES_MAX);
    if (t->list_body == NULL) {
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
    t->listener = h2o_evloop_socket_create(t->loop, server_listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    t->listener->data = t;
    h2o_socket_read_start(t->listener, server_on_accept);
    SVC_ASSERT(t->loop != NULL && t->reply_queue != NULL);
    return 0;
}

static void *server_thread_main(void *arg)
{
    struct io_thread *t = arg;
    SVC_ASSERT(t->app != NULL);
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
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof *handler);
    handler->on_req = server_on_req;
    struct io_thread *threads = calloc((size_t)count, sizeof *threads);
    if (threads == NULL) {
        return -ENOMEM;
    }
    pthread_barrier_init(&server_started_barrier, NULL, (unsigned)count + 1);
    for (int i = 0; i < count; i++) {
        threads[i].app = app;
        threads[i].index = (unsigned)i;
        int rc = pthread_create(&threads[i].thread, NULL, server_thread_main, &threads[i]);
        if (rc != 0) {
            return -rc;
        }
    }
    pthread_barrier_wait(&server_started_barrier);
    return 0;
}
