/*
 * thread.h - the data of one HTTP I/O thread and of one command in flight, shared by the
 * server (server.c builds and runs the threads) and by the request functions the handlers
 * use (request.c). Data only: no function is declared here.
 *
 * Each I/O thread owns an h2o loop, a pool of commands and line blocks, a read-only store
 * handle, the buffer of its list responses and an h2o multithread queue on which the writer
 * returns replies (and the SSE tap wakes the thread). Nothing is shared between I/O threads
 * except the listening socket and immutable configuration (STYLE 4).
 *
 * A request waiting for the writer may be disposed by h2o (client gone); a guard allocated on
 * the request's pool clears the command's pointer to it, so the late reply is dropped instead
 * of touching freed memory. Both happen on the owning thread. Read request.h next.
 */
#ifndef STOCKD_HTTP_THREAD_H
#define STOCKD_HTTP_THREAD_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/command.h"
#include "http/app.h"
#include "store/store.h"

struct io_thread;

/* One command in flight, as the I/O thread sees it. */
struct http_request; /* request.h */
struct route;        /* routes.h */
struct http_metrics; /* http_metrics.h */

struct http_command {
    h2o_multithread_message_t message; /* link for the reply queue; first member */
    struct command cmd;
    struct io_thread *thread;        /* owner: the thread whose pool it belongs to */
    h2o_req_t *req;                  /* NULL once h2o disposed the request */
    struct http_command **guard;     /* on req's pool; points back at us while req lives */
    struct http_command *next_free;  /* pool free list */
    struct http_command *reply_next; /* the writer's replies of one batch, chained (writer) */
    /* NULL: the writer's reply goes out as it is. Else called with a 200 reply (also a
     * replayed one); true when it sent the reply itself (e.g. the order as GET shows it). */
    bool (*send_ok)(struct http_request *r, const struct command *cmd);
    const struct route *route; /* the request's, for its metrics when the reply goes out */
    int64_t started_us;        /* the request's clock_mono_us when it was dispatched */
};

struct io_thread {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    h2o_multithread_queue_t *reply_queue; /* writer replies; SSE wake-ups register on it too */
    h2o_multithread_receiver_t reply_receiver;
    h2o_multithread_receiver_t accept_receiver; /* connections other threads accepted for it */
    h2o_socket_t *listener;
    h2o_timeout_t accept_pause_timeout; /* ACCEPT_PAUSE_MS: out of descriptors, try again */
    h2o_timeout_entry_t accept_resume;  /* linked while accepting is paused */
    _Atomic uint64_t accept_pauses;     /* written by the owner, read by /metrics */
    _Atomic uint64_t connections;       /* served since start: written by the owner */
    struct app *app;                    /* borrowed, immutable */
    struct store_reader *reader;        /* owned, this thread only */
    struct http_command *pool;          /* THREAD_COMMANDS_MAX, owned */
    struct http_command *free_list;
    struct cmd_lines *line_blocks; /* THREAD_LINE_BLOCKS_MAX, owned */
    struct cmd_lines *free_line_blocks;
    char *list_body; /* LIST_BODY_BYTES_MAX, owned: the body of one list response at a time */
    struct auth_hasher *hasher; /* owned: auth_check's SHA-256 state */
    unsigned index;             /* 0..IO_THREADS_MAX-1 */
    uint64_t trace_counter;
    struct http_metrics *metrics; /* owned: written by this thread, read by /metrics */
    pthread_t thread;
};

#endif
