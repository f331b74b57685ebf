/*
 * http.h - the HTTP layer: h2o evloop threads, the accept loop, responses, and the path of a
 * command from a request to the writer and of its reply back to the same thread.
 *
 * Each I/O thread owns an h2o loop, a pool of commands, a read-only store handle and an h2o
 * multithread queue on which the writer returns replies. Nothing is shared between I/O threads
 * except the listening socket and immutable configuration (STYLE 4).
 *
 * A request waiting for the writer may be disposed by h2o (client gone); a guard allocated on
 * the request's pool clears the command's pointer to it, so the late reply is dropped instead
 * of touching freed memory. Both happen on the owning thread. Read api.h next.
 */
#ifndef STOCKD_HTTP_H
#define STOCKD_HTTP_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include <stdatomic.h>
#include <stdbool.h>

#include "http/app.h"
#include "core/command.h"
#include "store/store.h"

struct io_thread;

/* One command in flight, as the I/O thread sees it. */
struct http_command {
    h2o_multithread_message_t message; /* link for the reply queue; first member */
    struct command cmd;
    struct io_thread *thread;       /* owner: the thread whose pool it belongs to */
    h2o_req_t *req;                 /* NULL once h2o disposed the request */
    struct http_command **guard;    /* on req's pool; points back at us while req lives */
    struct http_command *next_free; /* pool free list */
};

struct io_thread {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    h2o_multithread_queue_t *reply_queue;
    h2o_multithread_receiver_t reply_receiver;
    h2o_socket_t *listener;
    struct app *app;             /* borrowed, immutable */
    struct store_reader *reader; /* owned, this thread only */
    struct http_command *pool;   /* THREAD_COMMANDS_MAX, owned */
    struct http_command *free_list;
    struct cmd_lines *line_blocks; /* THREAD_LINE_BLOCKS_MAX, owned */
    struct cmd_lines *free_line_blocks;
    unsigned index;
    uint64_t trace_counter;
    pthread_t thread;
};

/* The per-request view handed to route handlers. */
struct http_request {
    struct io_thread *thread;
    h2o_req_t *req;
    h2o_iovec_t path;       /* without the query string */
    h2o_iovec_t query;      /* after '?', may be empty */
    h2o_iovec_t path_param; /* the {id} segment of the route, if any */
    const struct route *route;
    const char *principal; /* who sent it (set by routes_dispatch): a token's principal in
                            * the immutable auth table, or "public" on a public route */
};

/* Binds the listening socket on host:port (port 0: any free port); *port_out gets the port. */
int http_listen(const char *host, int port, int *port_out);

/* Starts count I/O threads serving listen_fd; returns once all accept. 0 or -errno. */
int http_start(struct app *app, int listen_fd, int count);

/* The writer's reply hook (writer_config.reply): hands cmd back to its owning thread. */
void http_writer_reply(struct command *cmd, void *context);

/* ---- responses: every function below sends the whole response ---- */

/* Sends status with body (copied) and the given content type. */
void http_send(struct http_request *r, int status, const char *content_type, const char *body,
               size_t length);
/* Sends application/json. */
void http_send_json(struct http_request *r, int status, const char *body, size_t length);
/* Sends a problem+json for err with optional detail and one optional integer member. */
void http_send_problem(struct http_request *r, int err, const char *detail, const char *extra_key,
                       int64_t extra_value);

/* Finds a request header by lower-case name; returns its value or a NULL-base iovec. */
h2o_iovec_t http_header(const struct http_request *r, const char *name);

/* Copies query parameter name (percent-decoded) into out. 1 found, 0 absent, SVC_EVALIDATION
 * if too long or badly encoded. */
int http_query_param(const struct http_request *r, const char *name, char *out, size_t size);

/* ---- commands ---- */

/* Takes a command from the thread's pool, or NULL when the pool is empty (caller sends 429). */
struct http_command *http_command_alloc(struct http_request *r);
/* Returns an unsent command (and its line block, if any) to the pool. */
void http_command_free(struct http_command *hc);
/* Gives hc a line block from the thread's pool (count 0); false when the pool is empty (the
 * caller frees hc and sends 429). The block belongs to hc from then on. */
bool http_command_take_lines(struct http_command *hc);
/* Pushes hc to the writer; the reply is sent when it returns. On a full queue answers 429 and
 * frees hc. Either way the caller must not touch hc afterwards. */
void http_command_submit(struct http_request *r, struct http_command *hc);

#endif
