/*
 * request.h - everything a route handler uses on its request: the per-request view, the
 * response senders, header and query-string readers, and the path of a command to the writer
 * and of its reply back to the client.
 *
 * Every function here runs on the I/O thread that owns the request (thread.h). This file is
 * not the server: listening, the I/O threads and the h2o wiring are server.h, which the
 * handlers never include (server -> routes -> api_* -> request). Read routes.h next.
 */
#ifndef STOCKD_HTTP_REQUEST_H
#define STOCKD_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/thread.h"

struct route;

/* The per-request view handed to route handlers. */
struct http_request {
    struct io_thread *thread;
    h2o_req_t *req;
    h2o_iovec_t path;       /* without the query string */
    h2o_iovec_t query;      /* after '?', may be empty */
    h2o_iovec_t path_param; /* the {id} segment of the route, if any */
    const struct route *route;
    const char *principal; /* who sent it (set by routes_dispatch): a token's principal in
                            * the immutable auth table, or "public" on a public route; NULL
                            * when no route matched or the token was refused (401) */
    int64_t started_us;    /* clock_mono_us when the server dispatched it (the metrics) */
    const char *trace_id;  /* the X-Trace-Id of the response (http_trace_begin), NUL-terminated
                            * on req's pool; NULL until then */
};

/* ---- trace ids ---- */

/* Settles r's trace id: the client's X-Trace-Id when it is 1..TRACE_ID_BYTES_MAX printable
 * ASCII bytes without spaces, else one made up here, and makes it the thread's current trace
 * id for the log (log.h) until the caller sets another. Called by server.c before dispatch. */
void http_trace_begin(struct http_request *r);

/* ---- responses: every function below sends the whole response ---- */

/* Sends status with body (copied) and the given content type, and an X-Trace-Id (the
 * client's, or one made up here). A 304 is sent without its body. */
void http_send(struct http_request *r, int status, const char *content_type, const char *body,
               size_t length);
/* Sends application/json. */
void http_send_json(struct http_request *r, int status, const char *body, size_t length);
/* Starts a 200 text/event-stream answer (no-cache) whose body generator pulls; headers the
 * caller added to req->res first go out with it. */
void http_start_event_stream(h2o_req_t *req, h2o_generator_t *generator);
/* Sends a problem+json for err with optional detail and one optional integer member, with
 * Retry-After on 429/503 and Allow on 405 (the route's method). */
void http_send_problem(struct http_request *r, int err, const char *detail, const char *extra_key,
                       int64_t extra_value);

/* Finds a request header by lower-case name; returns its value or a NULL-base iovec. */
h2o_iovec_t http_header(const struct http_request *r, const char *name);

/* Copies query parameter name (percent-decoded) into out. 1 found, 0 absent, SVC_EVALIDATION
 * if too long or badly encoded. Reads only r->query (the fuzz harness calls it bare). */
int http_query_param(const struct http_request *r, const char *name, char *out, size_t size);

/* ---- commands ---- */

/* Allocates the thread's command pool and line-block pool (THREAD_COMMANDS_MAX and
 * THREAD_LINE_BLOCKS_MAX) and links their free lists. 0 or -ENOMEM. Called by server.c when
 * the thread starts; the pools live as long as the process. */
int http_command_pool_init(struct io_thread *t);

/* Takes a command from the thread's pool, or NULL when the pool is empty (caller sends 429). */
struct http_command *http_command_alloc(struct http_request *r);
/* Returns an unsent command (and its line block, if any) to the pool. */
void http_command_free(struct http_command *hc);
/* Gives hc a line block from the thread's pool (count 0); false when the pool is empty (the
 * caller frees hc and sends 429). The block belongs to hc from then on. */
bool http_command_take_lines(struct http_command *hc);
/* Pushes hc to the writer; the reply is sent when it returns. On a full queue answers 429
 * (503 while stopping) and frees hc. Either way the caller must not touch hc afterwards. */
void http_command_submit(struct http_request *r, struct http_command *hc);

/* Sends the writer's reply of hc (status, body and content type, Idempotent-Replayed,
 * Location, Retry-After on 429/503) if its client is still there, then returns hc to its
 * pool. Called by the reply receiver (server.c) on hc's owning thread. */
void http_command_finish(struct http_command *hc);

#endif
