/*
 * http_metrics.c - see http_metrics.h: the per-thread RED counters and their sum.
 */
#include "http/http_metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/svc_assert.h"
#include "http/routes.h"

const int64_t http_metrics_bucket_us[HTTP_METRICS_BUCKETS] = {
    500,    1000,   2500,   5000,    10000,   25000,   50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
const char *const http_metrics_bucket_le[HTTP_METRICS_BUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};

const char *const http_metrics_method_names[HTTP_METRICS_METHODS] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER"};

/* The codes with a slot of their own; then one slot per class, for any other. */
static const int http_metrics_codes[] = {200, 201, 202, 204, 304, 400, 401, 403, 404,
                                         405, 408, 409, 410, 411, 413, 414, 415, 417,
                                         422, 428, 429, 500, 501, 502, 503, 504, 507};
#define HTTP_METRICS_CODES_EXACT (sizeof http_metrics_codes / sizeof http_metrics_codes[0])
_Static_assert(HTTP_METRICS_CODES_EXACT + 4 == HTTP_METRICS_CODES, "one slot per class after");

const char *const http_metrics_code_names[HTTP_METRICS_CODES] = {
    "200", "201", "202", "204", "304", "400", "401", "403", "404", "405", "408",
    "409", "410", "411", "413", "414", "415", "417", "422", "428", "429", "500",
    "501", "502", "503", "504", "507", "2xx", "3xx", "4xx", "5xx"};

int http_metrics_init(struct io_thread *t)
{
    SVC_ASSERT(t->metrics == NULL);
    SVC_ASSERT(routes_count <= ROUTES_MAX);
    t->metrics = calloc(1, sizeof *t->metrics);
    return t->metrics != NULL ? 0 : -ENOMEM;
}

static unsigned http_metrics_method_slot(h2o_iovec_t method)
{
    for (unsigned i = 0; i + 1 < HTTP_METRICS_METHODS; i++) {
        if (h2o_memis(method.base, method.len, http_metrics_method_names[i],
                      strlen(http_metrics_method_names[i]))) {
            return i;
        }
    }
    return HTTP_METRICS_METHODS - 1;
}

static unsigned http_metrics_code_slot(int status)
{
    SVC_ASSERT(status >= 200 && status <= 599);
    for (unsigned i = 0; i < HTTP_METRICS_CODES_EXACT; i++) {
        if (http_metrics_codes[i] == status) {
            return i;
        }
    }
    return (unsigned)HTTP_METRICS_CODES_EXACT + (unsigned)(status / 100 - 2);
}

/* Adds n to a counter only this thread writes. */
static void http_metrics_bump(_Atomic uint64_t *counter, uint64_t n)
{
    uint64_t now = atomic_load_explicit(counter, memory_order_relaxed);
    atomic_store_explicit(counter, now + n, memory_order_relaxed);
}

void http_metrics_count(struct io_thread *t, const struct route *route, h2o_iovec_t method,
                        int status, int64_t started_us)
{
    if (started_us == 0 || t == NULL || t->metrics == NULL) {
        return; /* not a request the server dispatched (the fuzz harness) */
    }
    struct http_metrics *m = t->metrics;
    unsigned slot = HTTP_METRICS_UNMATCHED;
    if (route != NULL) {
        SVC_ASSERT(route >= routes_table && route < routes_table + routes_count);
        slot = (unsigned)(route - routes_table);
    }
    SVC_ASSERT(slot <= ROUTES_MAX);
    int64_t took_us = clock_mono_us() - started_us;
    took_us = took_us > 0 ? took_us : 0;
    unsigned bucket = 0;
    while (bucket < HTTP_METRICS_BUCKETS && took_us > http_metrics_bucket_us[bucket]) {
        bucket++;
    }
    http_metrics_bump(
        &m->requests[slot][http_metrics_method_slot(method)][http_metrics_code_slot(status)], 1);
    http_metrics_bump(&m->buckets[slot][bucket], 1);
    http_metrics_bump(&m->duration_us_sum[slot], (uint64_t)took_us);
}

void http_metrics_add(const struct io_thread *t, struct http_metrics_sum *sum)
{
    const struct http_metrics *m = t->metrics;
    if (m == NULL) {
        return;
    }
    for (unsigned r = 0; r <= ROUTES_MAX; r++) {
        for (unsigned k = 0; k < HTTP_METRICS_METHODS; k++) {
            for (unsigned c = 0; c < HTTP_METRICS_CODES; c++) {
                sum->requests[r][k][c] +=
                    atomic_load_explicit(&m->requests[r][k][c], memory_order_relaxed);
            }
        }
        for (unsigned b = 0; b <= HTTP_METRICS_BUCKETS; b++) {
            sum->buckets[r][b] += atomic_load_explicit(&m->buckets[r][b], memory_order_relaxed);
        }
        sum->duration_us_sum[r] +=
            atomic_load_explicit(&m->duration_us_sum[r], memory_order_relaxed);
    }
}

const char *http_metrics_route_name(unsigned i)
{
    SVC_ASSERT(i <= ROUTES_MAX);
    if (i == HTTP_METRICS_UNMATCHED) {
        return "unmatched";
    }
    SVC_ASSERT(i < routes_count);
    return routes_table[i].pattern;
}
