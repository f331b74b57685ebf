/*
 * pay_http.h - the HTTP payment provider (--payment-url URL): a pay_provider that charges a
 * Stripe-like service with `POST {URL}/payments`, header `Idempotency-Key: <orderId>` and the
 * body {"orderId":..., "amount":0} (amounts are not modelled).
 *
 * The answer 200/201 {"id":"pay_...","status":"succeeded"} is PAY_OK with ref = id; 402, or a
 * status "declined"/"failed", is PAY_DECLINED; a timeout, a 5xx, a 429, any other answer it
 * cannot read, and a refused or reset connection are PAY_TIMEOUT: in doubt, and the worker asks
 * again with the same key, which the provider answers with the first outcome.
 *
 * It keeps many charges in flight without blocking the payment worker: charge() only queues
 * the charge, poll() takes the finished results. One thread of its own runs an epoll loop over
 * a bounded pool of keep-alive HTTP/1.1 connections to the one host, with a deadline per
 * charge. A request that fails on a reused connection before any byte of an answer came is
 * sent once more on a new connection (the server may have closed an idle one). After a refused
 * connection it opens none for a reconnect delay that doubles up to a bound, and charges that
 * need a new connection meanwhile end PAY_TIMEOUT at once (the worker's backoff spaces them).
 * Not this file: the standalone simulator the tests run it against (paysim/paysim.c), nor the
 * in-process one (pay_sim.h). Read pay_http.c next.
 */
#ifndef STOCKD_PAY_HTTP_H
#define STOCKD_PAY_HTTP_H

#include <stdint.h>

#include "pay/pay.h"

/* Connections to the provider: 256 charges in flight at once is 5,000 charges/s at 50 ms of
 * latency; more would only queue inside the provider (or trip its rate limit). */
#define PAY_HTTP_CONNS_MAX 256
/* Charges queued or in flight (and results not polled yet): as many as the worker's items,
 * so that a full queue is the worker's own bound, not a second one. */
#define PAY_HTTP_INFLIGHT_MAX 65536
/* The deadline of a charge, from the moment it gets a connection (--payment-timeout-ms). */
#define PAY_HTTP_TIMEOUT_MS_DEFAULT 2000
#define PAY_HTTP_TIMEOUT_MS_MAX 60000
/* After a refused connection: no new connection for this long, doubling to the max while
 * refusals go on, back to the min after a connection succeeds. */
#define PAY_HTTP_RECONNECT_DELAY_MIN_MS 50
#define PAY_HTTP_RECONNECT_DELAY_MAX_MS 1000
/* One request (headers and body, the key and host included) and one answer: a charge's answer
 * is a small JSON object; a larger one is an error (PAY_TIMEOUT, the connection closed). */
#define PAY_HTTP_REQUEST_BYTES_MAX 768
#define PAY_HTTP_RESPONSE_BYTES_MAX 8192
/* The URL's host and path prefix. */
#define PAY_HTTP_HOST_BYTES_MAX 255
#define PAY_HTTP_PATH_BYTES_MAX 255
/* The loop's wait with nothing due: the bound on noticing a stop. */
#define PAY_HTTP_IDLE_WAIT_MS 100

_Static_assert(PAY_HTTP_REQUEST_BYTES_MAX >
                   2 * PAY_KEY_BYTES_MAX + PAY_HTTP_HOST_BYTES_MAX + PAY_HTTP_PATH_BYTES_MAX + 150,
               "a request with the longest key, host and path fits");
_Static_assert(PAY_HTTP_RECONNECT_DELAY_MIN_MS <= PAY_HTTP_RECONNECT_DELAY_MAX_MS, "delays");

struct pay_http_config {
    const char *url;    /* http://HOST[:PORT][/PREFIX]; copied */
    int64_t timeout_ms; /* 1..PAY_HTTP_TIMEOUT_MS_MAX */
};

struct pay_http;

/* Parses the URL, resolves its host and starts the provider's thread. NULL when the URL is not
 * http://HOST[:PORT][/PREFIX], the host does not resolve, or out of memory (logged); a provider
 * that is down at start is no error (its charges time out until it answers). Called by main. */
struct pay_http *pay_http_new(const struct pay_http_config *config);
/* Stops the thread and frees everything (NULL is fine). Results not polled are dropped. */
void pay_http_free(struct pay_http *h);
/* Its pay_provider (borrowed: lives as long as h). */
const struct pay_provider *pay_http_provider(struct pay_http *h);

#endif
