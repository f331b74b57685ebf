/*
 * waiter.h - a request that waits on its I/O thread for work done on another thread (the
 * intake publisher's confirm, a dead-letter replay, an audit, a load test), and the mailbox on
 * which that work comes back.
 *
 * h2o frees a request's pool when the request is done or its client leaves. A guard allocated
 * on that pool points back at the waiter; when the pool goes first, the guard clears the
 * waiter's req (and stops its timer), so an answer that comes back later finds NULL and is
 * dropped instead of touching freed memory. http_waiter_take hands the request back for the
 * answer and disarms the guard. Everything here runs on the owning I/O thread.
 *
 * The mailbox: one h2o receiver per I/O thread on the thread's reply queue (and, if asked, a
 * timeout list of the thread's loop), registered at the first use on that thread. Read
 * api_intake.c next.
 */
#ifndef STOCKD_HTTP_WAITER_H
#define STOCKD_HTTP_WAITER_H

#include <stdbool.h>
#include <stdint.h>

#include "http/request.h"
#include "http/thread.h"

struct http_waiter {
    h2o_req_t *req;            /* while the request waits; NULL once taken or disposed */
    const struct route *route; /* the request's, and its start: for its metrics */
    int64_t started_us;
    const char *trace_id;        /* the request's X-Trace-Id, on req's pool: for its log lines */
    struct http_waiter **guard;  /* on req's pool while req waits */
    h2o_timeout_entry_t timeout; /* its cb set by the owner; linked while req waits, if armed */
    /* Optional: called when h2o disposed the request before it was taken (req is NULL). */
    void (*on_gone)(struct http_waiter *w);
};

/* One per I/O thread and kind of work; zeroed (static storage) until its first use. */
struct http_mailbox {
    h2o_multithread_receiver_t receiver; /* on the thread's reply queue */
    h2o_timeout_t timeout;               /* on the thread's loop, when timeout_ms > 0 */
    bool ready;
};

/* boxes[t->index], its receiver registered with cb and its timeout list set to timeout_ms
 * (0: none) the first time. boxes has IO_THREADS_MAX entries. */
struct http_mailbox *http_mailbox_of(struct http_mailbox *boxes, struct io_thread *t,
                                     h2o_multithread_receiver_cb cb, uint64_t timeout_ms);

/* Makes w wait with r's request: guards it and, when timeout is not NULL (a mailbox's, made
 * with timeout_ms > 0), links w->timeout, whose cb the caller set, on it. w->req must be
 * NULL. */
void http_waiter_start(struct http_waiter *w, struct http_request *r, h2o_timeout_t *timeout);

/* The view of w's request to answer it on thread t, req being what http_waiter_take gave
 * back: the route, the start time and the trace id the handler had (the answer counts in the
 * metrics as the route's, from then, and carries the same X-Trace-Id). */
struct http_request http_waiter_view(const struct http_waiter *w, struct io_thread *t,
                                     h2o_req_t *req);

/* Takes the request back to answer it: the guard and the timer are disarmed. NULL when it was
 * taken before or h2o disposed it. */
h2o_req_t *http_waiter_take(struct http_waiter *w);

#endif
