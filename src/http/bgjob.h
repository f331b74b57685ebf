/*
 * bgjob.h - a request answered by work on a thread of its own (GET /v1/admin/audit, the load
 * test): the I/O thread that took the request goes on serving while the work thread runs.
 * The work thread wakes its owner I/O thread through the owner's mailbox (waiter.h) with
 * progress, coalesced to one wake-up in flight, and once with its end.
 *
 * With `Accept: text/event-stream` the answer is a stream: a comment line at once, "progress"
 * events as the work reports them, and one last event, the result (its name is the job's) or
 * "error" with a problem. Otherwise the answer is the result as application/json, or the
 * problem, once the work ends.
 *
 * Ownership: the owner I/O thread allocates the job (a struct embedding struct http_bgjob)
 * and frees it through ops->free once it has taken the end message (the work thread's last
 * touch) and h2o has disposed the request, in whichever order they come. The work thread
 * writes only the job's own fields, never these. Read api_audit.c next.
 */
#ifndef STOCKD_HTTP_BGJOB_H
#define STOCKD_HTTP_BGJOB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "http/request.h"
#include "http/thread.h"
#include "http/waiter.h"

/* One progress event, "event: progress\ndata: {...}\n\n". */
#define HTTP_BGJOB_CHUNK_BYTES 512

struct http_bgjob;

/* The end of the work, as the owner answers it. */
struct http_bgjob_result {
    int code;          /* 0, or the SVC_E* code of the problem */
    const char *why;   /* the problem's detail, or NULL */
    const char *event; /* the last stream event's name when code is 0 */
    const char *json;  /* the result when code is 0 */
    size_t length;
};

struct http_bgjob_ops {
    const char *name; /* "audit", "load test": the stream's first line and the logs */
    /* On the work thread: does the work, calling http_bgjob_progress as it goes. */
    void (*run)(struct http_bgjob *job);
    /* On the owner: the progress event into out, its length; 0 when nothing is new since the
     * last one. Asked after the end too, so that the last progress goes out before the result. */
    size_t (*progress)(struct http_bgjob *job, char *out, size_t size);
    /* On the owner after the end. */
    void (*result)(struct http_bgjob *job, struct http_bgjob_result *out);
    void (*free)(struct http_bgjob *job);
};

struct http_bgjob_message {
    h2o_multithread_message_t message; /* first member */
    struct http_bgjob *job;
    bool end; /* the work ended (else: progress) */
};

struct http_bgjob {
    const struct http_bgjob_ops *ops;
    struct http_bgjob_message progress_message; /* sent while progress_queued was false */
    struct http_bgjob_message end_message;      /* sent once, last */
    h2o_generator_t generator;                  /* streaming answers */
    struct io_thread *thread;                   /* the owner */
    struct http_waiter waiter;                  /* owner only: req NULL once h2o disposed it */
    bool streaming;                             /* owner only */
    bool sending;                               /* owner only: a chunk is with h2o */
    bool ended;                                 /* owner only: took the end message */
    bool final_sent;                            /* owner only */
    _Atomic bool progress_queued;
    char chunk[HTTP_BGJOB_CHUNK_BYTES]; /* owner only: the chunk with h2o */
};

/* On the owner: makes job (zeroed by the caller but for its own fields) answer r and starts
 * its work thread. 0; or the error of pthread_create, when there is no work thread: the job
 * is then freed once h2o disposes r, and the caller answers r. */
int http_bgjob_start(struct http_bgjob *job, const struct http_bgjob_ops *ops,
                     struct http_request *r);

/* On the work thread: wakes the owner to send the progress, unless a wake-up is on its way. */
void http_bgjob_progress(struct http_bgjob *job);

#endif
