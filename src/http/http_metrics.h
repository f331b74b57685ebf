/*
 * http_metrics.h - the HTTP server's RED metrics: requests per route, method and status code,
 * and a latency histogram per route, for GET /metrics.
 *
 * Each I/O thread owns one struct http_metrics and alone writes it (a relaxed load and store
 * per counter: no lock and no read-modify-write shared with another thread, STYLE 4); the
 * scrape reads every thread's with relaxed loads and adds them up. A scrape may see a request
 * counted in one thread's bucket and not yet in its sum; the histogram's count is the total of
 * its buckets, so +Inf always equals _count. Memory is fixed: ROUTES_MAX routes plus one slot
 * for requests no route matched, HTTP_METRICS_METHODS methods, HTTP_METRICS_CODES codes.
 *
 * request.c counts every response it sends (http_send); the streaming handlers count theirs
 * when they start them. Read api_metrics.c next.
 */
#ifndef STOCKD_HTTP_METRICS_H
#define STOCKD_HTTP_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "base/svc_limits.h"
#include "http/thread.h"

struct route;

/* The method label: the seven h2o sees in practice and "OTHER" for the rest. */
#define HTTP_METRICS_METHODS 8
/* The status code label: every status stockd sends (request.c, errors.h) and, for any other,
 * its class ("2xx".."5xx"). */
#define HTTP_METRICS_CODES 31
/* Upper bounds of the latency histogram, in microseconds: 0.5 ms .. 10 s, and +Inf. */
#define HTTP_METRICS_BUCKETS 14
/* The route slot of requests no route matched (404 and framing refusals). */
#define HTTP_METRICS_UNMATCHED ROUTES_MAX

struct http_metrics {
    _Atomic uint64_t requests[ROUTES_MAX + 1][HTTP_METRICS_METHODS][HTTP_METRICS_CODES];
    /* per route: requests in each bucket (not cumulative), the last one over every bound */
    _Atomic uint64_t buckets[ROUTES_MAX + 1][HTTP_METRICS_BUCKETS + 1];
    _Atomic uint64_t duration_us_sum[ROUTES_MAX + 1];
};

/* The bucket bounds in microseconds and as the le label ("0.0005"). */
extern const int64_t http_metrics_bucket_us[HTTP_METRICS_BUCKETS];
extern const char *const http_metrics_bucket_le[HTTP_METRICS_BUCKETS];
/* The label values of each method and code slot. */
extern const char *const http_metrics_method_names[HTTP_METRICS_METHODS];
extern const char *const http_metrics_code_names[HTTP_METRICS_CODES];

/* Allocates t's counters (zeroed). 0 or -ENOMEM; called once when the thread starts. */
int http_metrics_init(struct io_thread *t);

/* Counts one response of status on t (its owner thread): route (NULL: none matched), the
 * request's method, and the time since started_us (clock_mono_us; 0: unknown, not counted). */
void http_metrics_count(struct io_thread *t, const struct route *route, h2o_iovec_t method,
                        int status, int64_t started_us);

/* Adds t's counters into sum (plain integers, same shape); any thread may call it. */
struct http_metrics_sum {
    uint64_t requests[ROUTES_MAX + 1][HTTP_METRICS_METHODS][HTTP_METRICS_CODES];
    uint64_t buckets[ROUTES_MAX + 1][HTTP_METRICS_BUCKETS + 1];
    uint64_t duration_us_sum[ROUTES_MAX + 1];
};
void http_metrics_add(const struct io_thread *t, struct http_metrics_sum *sum);

/* The label of route slot i: the route's pattern, or "unmatched". */
const char *http_metrics_route_name(unsigned i);

#endif
