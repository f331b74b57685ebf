/*
 * waiter.c - see waiter.h: a request that waits for work on another thread.
 */
#include "http/waiter.h"

#include "base/svc_assert.h"
#include "base/svc_limits.h"

struct http_mailbox *http_mailbox_of(struct http_mailbox *boxes, struct io_thread *t,
                                     h2o_multithread_receiver_cb cb, uint64_t timeout_ms)
{
    SVC_ASSERT(boxes != NULL && cb != NULL);
    SVC_ASSERT(t->index < IO_THREADS_MAX);
    struct http_mailbox *box = &boxes[t->index];
    if (!box->ready) {
        h2o_multithread_register_receiver(t->reply_queue, &box->receiver, cb);
        if (timeout_ms > 0) {
            h2o_timeout_init(t->loop, &box->timeout, timeout_ms);
        }
        box->ready = true;
    }
    return box;
}

/* Runs when h2o frees the request's pool: the request is gone before it was taken. */
static void http_waiter_dispose(void *object)
{
    struct http_waiter **guard = object;
    struct http_waiter *w = *guard;
    if (w == NULL) {
        return; /* taken before */
    }
    SVC_ASSERT(w->guard == guard && w->req != NULL);
    w->req = NULL;
    w->guard = NULL;
    if (h2o_timeout_is_linked(&w->timeout)) {
        h2o_timeout_unlink(&w->timeout);
    }
    if (w->on_gone != NULL) {
        w->on_gone(w); /* may free w */
    }
}

void http_waiter_start(struct http_waiter *w, struct http_request *r, h2o_timeout_t *timeout)
{
    SVC_ASSERT(w->req == NULL && w->guard == NULL && r->req != NULL);
    struct io_thread *t = r->thread;
    w->req = r->req;
    w->route = r->route;
    w->started_us = r->started_us;
    w->trace_id = r->trace_id;
    w->guard = h2o_mem_alloc_shared(&r->req->pool, sizeof *w->guard, http_waiter_dispose);
    *w->guard = w;
    if (timeout != NULL) {
        SVC_ASSERT(timeout->timeout > 0 && w->timeout.cb != NULL);
        h2o_timeout_link(t->loop, timeout, &w->timeout);
    }
}

struct http_request http_waiter_view(const struct http_waiter *w, struct io_thread *t,
                                     h2o_req_t *req)
{
    SVC_ASSERT(req != NULL);
    return (struct http_request){.thread = t,
                                 .req = req,
                                 .route = w->route,
                                 .started_us = w->started_us,
                                 .trace_id = w->trace_id};
}

h2o_req_t *http_waiter_take(struct http_waiter *w)
{
    h2o_req_t *req = w->req;
    if (req != NULL) {
        SVC_ASSERT(*w->guard == w);
        *w->guard = NULL; /* the pool no longer needs to tell us it is gone */
        w->req = NULL;
        w->guard = NULL;
    }
    if (h2o_timeout_is_linked(&w->timeout)) {
        h2o_timeout_unlink(&w->timeout);
    }
    return req;
}
