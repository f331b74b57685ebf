/*
 * intake_pub.h - the publishing side of asynchronous intake (issue 12, intake.h): a thread of
 * its own that owns an mq publisher on INTAKE_QUEUE and publishes the commands the HTTP I/O
 * threads hand it, each reported back once the broker confirmed it (or could not).
 *
 * An I/O thread never blocks on the broker: intake_pub_submit puts a job into a bounded
 * hand-off (INTAKE_PUB_HANDOFF_MAX jobs) and returns at once; the publisher thread publishes it
 * (mq.h: confirms, the window) and calls the job's `done` on its own thread, exactly once, with
 * the job's result: 0 when the broker confirmed the message, -ENOTCONN when there was no
 * connection (then nothing was published) or it was lost before the confirm (the message
 * stays in the window and is published again on the next connection: the command may still
 * be applied, so a client retries with the same Idempotency-Key), -EAGAIN when the window was
 * full. `done` typically posts the job to its I/O thread (api_intake.c); the confirm timeout
 * of INTAKE_CONFIRM_TIMEOUT_MS is the I/O thread's, which answers 503 on time even while the
 * publisher thread is busy connecting.
 *
 * Besides, the pure helpers of the contract: the message body of intake.h and the RFC 7240
 * Prefer header test. This file knows neither h2o nor the store. Read intake_pub.c next.
 */
#ifndef STOCKD_INTAKE_PUB_H
#define STOCKD_INTAKE_PUB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Jobs handed over and not yet taken by the publisher thread: a burst of a few hundred
 * requests between two rounds of the thread (each round takes them all). A full hand-off is a
 * 503 broker_unavailable at once, never a wait. */
#define INTAKE_PUB_HANDOFF_MAX 1024
/* How long the thread waits for confirms while messages are in flight (the next jobs wait
 * that long at most before they are published), and for a job while idle (the heartbeat and
 * the reconnects are serviced at least that often). */
#define INTAKE_PUB_CONFIRM_WAIT_MS 2
#define INTAKE_PUB_IDLE_WAIT_MS 100

/* One command to publish. The owner fills the fields above `done`'s result and keeps the
 * strings alive until `done`; the publisher owns the job between intake_pub_submit and `done`,
 * after which it is the owner's again (free it there, or post it somewhere). */
struct intake_pub_job {
    const char *key;       /* the Idempotency-Key: the message-id */
    const char *kind;      /* INTAKE_KIND_PURCHASE or INTAKE_KIND_ORDER: the type */
    const char *principal; /* the "principal" header */
    const char *body;      /* intake_pub_format's output, or a stored message's (a replay) */
    size_t body_length;
    /* body is intake_pub_format's output: a purchase may share a batch message (intake.h).
     * A replayed message goes out as it was stored, alone (it may not even be JSON). */
    bool packable;
    void (*done)(struct intake_pub_job *job); /* on the publisher thread, once */
    int result;                               /* set before done: 0, -ENOTCONN or -EAGAIN */
    /* The publisher's. */
    int64_t cookie;
    struct intake_pub_job *next;
};

struct intake_pub_config {
    const char *amqp_url; /* amqp://user:password@host:port/vhost */
};

/* What /health, /ready and /metrics show; written by the publisher thread, read by any. */
struct intake_pub_stats {
    _Atomic bool connected;     /* the broker connection is up */
    _Atomic uint64_t confirmed; /* messages the broker confirmed (republishes included) */
    _Atomic uint64_t errors;    /* lost connections, failed connects, nacks */
};

struct intake_pub; /* opaque: intake_pub.c */

/* Allocates the publisher (no thread, no connection yet); NULL when out of memory or when the
 * URL is not an amqp:// URL. The caller owns it: intake_pub_stop, then intake_pub_free. */
struct intake_pub *intake_pub_new(const struct intake_pub_config *config);
/* Connects (a broker that is down is no failure: it connects when it can) and starts the
 * thread. 0 or -errno. */
int intake_pub_start(struct intake_pub *pub);
/* Stops and joins the thread; every job it still held is done with -ENOTCONN. */
void intake_pub_stop(struct intake_pub *pub);
void intake_pub_free(struct intake_pub *pub);

/* Hands job over (any thread; never blocks on the broker). 0: `done` will be called;
 * -ENOTCONN: the publisher is not connected, -EAGAIN: the hand-off is full (`done` is not
 * called: the job is still the caller's). */
int intake_pub_submit(struct intake_pub *pub, struct intake_pub_job *job);

const struct intake_pub_stats *intake_pub_stats(const struct intake_pub *pub);

/* Writes the message body of intake.h into out: {"v":1,"kind":..,"principal":..,
 * "idempotencyKey":..,"route":..,"body":<body verbatim>}. body must be a JSON object (the
 * request's, already parsed once; whitespace around it is kept). Returns the length, or 0 when it
 * does not fit size. */
size_t intake_pub_format(char *out, size_t size, const char *kind, const char *principal,
                         const char *key, const char *route, const char *body, size_t body_length);
/* Writes the body of a batch message (intake.h) of the jobs' bodies (each intake_pub_format's
 * output) into out. Returns the length, or 0 when it does not fit size. */
size_t intake_pub_batch_format(char *out, size_t size, struct intake_pub_job *const *jobs,
                               size_t count);
/* The longest route a message names (intake.h "route": "/v1/purchase" and the like). */
#define INTAKE_PUB_ROUTE_BYTES_MAX 64
/* The bytes intake_pub_format needs at most for these lengths: the members' names and
 * punctuation, the kind, and each string escaped as \u00XX at worst. */
#define INTAKE_PUB_FORMAT_BOUND(principal_length, key_length, route_length, body_length) \
    (160 + 6 * ((principal_length) + (key_length) + (route_length)) + (body_length))

/* True when a Prefer header value (RFC 7240: comma-separated preferences, each a token with
 * an optional value and parameters) names respond-async, in any case. */
bool intake_pub_prefers_async(const char *value, size_t length);

/* Writes INTAKE_STATUS_PREFIX and key, percent-encoded but for RFC 3986's unreserved
 * characters, into out. Returns the length, or 0 when it does not fit size. */
size_t intake_pub_status_url(char *out, size_t size, const char *key);

#endif
