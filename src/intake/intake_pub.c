/*
 * intake_pub.c - the publisher of intake_pub.h: the hand-off, the publisher thread, and the
 * contract's pure helpers (message body, Prefer, status URL).
 *
 * Jobs: an I/O thread puts a job into `handoff` (under lock); the thread takes every job there
 * at the top of a round, publishes each (cookie = a counter) and keeps it in the in-flight
 * list, in publish order, until the window's confirmed prefix (mq_confirmed_cookie) passes its
 * cookie: then `done(0)`. A job whose connection is lost before its confirm is done with
 * -ENOTCONN at once (its message waits in the window for the next connection). Every job is
 * done exactly once.
 *
 * Ownership: the publisher owns its mq handle, used by its thread only (and by start / free
 * before the thread runs and after it was joined); jobs are borrowed from their owners.
 */
#include "intake/intake_pub.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/svc_thread.h"
#include "intake/intake.h"
#include "mq/mq.h"

_Static_assert(IDEM_KEY_BYTES_MAX <= MQ_ID_BYTES_MAX, "an Idempotency-Key is a message-id");
_Static_assert(AUTH_PRINCIPAL_BYTES_MAX <= MQ_HEADER_VALUE_BYTES_MAX, "a principal is a header");
_Static_assert(sizeof INTAKE_KIND_PURCHASE - 1 <= MQ_TYPE_BYTES_MAX, "a kind is a type");
_Static_assert(sizeof INTAKE_KIND_ORDER - 1 <= MQ_TYPE_BYTES_MAX, "a kind is a type");
_Static_assert(INTAKE_PUB_CONFIRM_WAIT_MS < INTAKE_PUB_IDLE_WAIT_MS, "confirms come first");
_Static_assert(INTAKE_PUB_IDLE_WAIT_MS < MQ_HEARTBEAT_SECONDS * 1000 / 2, "heartbeats serviced");
_Static_assert(INTAKE_PUB_CONFIRM_WAIT_MS < INTAKE_CONFIRM_TIMEOUT_MS, "a confirm can arrive");
_Static_assert(INTAKE_PUB_FORMAT_BOUND(AUTH_PRINCIPAL_BYTES_MAX, IDEM_KEY_BYTES_MAX,
                                       INTAKE_PUB_ROUTE_BYTES_MAX,
                                       BODY_BYTES_MAX) <= MQ_BODY_BYTES_MAX,
               "every request's message fits one AMQP message");

struct intake_pub {
    struct mq *mq; /* owned: the publisher, used by the thread */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* a job was handed over, or the publisher is stopping */
    /* Under lock: the hand-off, a ring of handoff_count jobs from handoff_head. */
    struct intake_pub_job *handoff[INTAKE_PUB_HANDOFF_MAX];
    size_t handoff_head;
    size_t handoff_count;
    bool stopping;
    /* The thread's: the jobs of this round, and those published and not yet confirmed. */
    struct intake_pub_job *round[INTAKE_PUB_HANDOFF_MAX];
    struct intake_pub_job *inflight_head;
    struct intake_pub_job *inflight_tail;
    int64_t cookie; /* the last one given */
    char *batch;    /* MQ_BODY_BYTES_MAX, owned: the body of a batch message being made */
    pthread_t thread;
    bool started;
    struct intake_pub_stats stats;
};

struct intake_pub *intake_pub_new(const struct intake_pub_config *config)
{
    SVC_ASSERT(config != NULL && config->amqp_url != NULL);
    struct intake_pub *p = calloc(1, sizeof *p);
    if (p == NULL) {
        return NULL;
    }
    struct mq_config mc = {config->amqp_url,        INTAKE_QUEUE,           MQ_PUBLISHER,
                           INTAKE_MAX_LENGTH_BYTES, INTAKE_MAX_AGE_SECONDS, 0};
    p->batch = malloc(MQ_BODY_BYTES_MAX);
    if (p->batch == NULL || mq_new(&p->mq, &mc) != 0) {
        free(p->batch);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->wake, &attr);
    pthread_condattr_destroy(&attr);
    SVC_ASSERT(p->mq != NULL);
    return p;
}

void intake_pub_free(struct intake_pub *p)
{
    if (p == NULL) {
        return;
    }
    SVC_ASSERT(!p->started && p->inflight_head == NULL && p->handoff_count == 0);
    mq_free(p->mq);
    free(p->batch);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p);
}

const struct intake_pub_stats *intake_pub_stats(const struct intake_pub *p)
{
    return &p->stats;
}

int intake_pub_submit(struct intake_pub *p, struct intake_pub_job *job)
{
    SVC_ASSERT(job != NULL && job->done != NULL && job->key != NULL && job->body != NULL);
    SVC_ASSERT(job->kind != NULL && job->principal != NULL);
    if (!atomic_load(&p->stats.connected)) {
        return -ENOTCONN;
    }
    pthread_mutex_lock(&p->lock);
    if (p->handoff_count == INTAKE_PUB_HANDOFF_MAX || p->stopping) {
        pthread_mutex_unlock(&p->lock);
        return p->stopping ? -ENOTCONN : -EAGAIN;
    }
    job->next = NULL;
    job->result = 0;
    p->handoff[(p->handoff_head + p->handoff_count) % INTAKE_PUB_HANDOFF_MAX] = job;
    p->handoff_count++;
    if (p->handoff_count == 1) {
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static void intake_pub_done(struct intake_pub_job *job, int result)
{
    SVC_ASSERT(result == 0 || result == -ENOTCONN || result == -EAGAIN);
    job->result = result;
    job->next = NULL;
    job->done(job); /* the job is its owner's from here on */
}

/* Takes every job of the hand-off into p->round; waits up to wait_ms for one when there is
 * none (0: no wait). Returns how many. */
static size_t intake_pub_take(struct intake_pub *p, int64_t wait_ms)
{
    pthread_mutex_lock(&p->lock);
    if (p->handoff_count == 0 && wait_ms > 0 && !p->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t ns = until.tv_nsec + wait_ms * 1000000;
        until.tv_sec += (time_t)(ns / 1000000000);
        until.tv_nsec = (long)(ns % 1000000000);
        (void)pthread_cond_timedwait(&p->wake, &p->lock, &until);
    }
    size_t n = p->handoff_count;
    for (size_t i = 0; i < n; i++) {
        p->round[i] = p->handoff[(p->handoff_head + i) % INTAKE_PUB_HANDOFF_MAX];
    }
    p->handoff_head = (p->handoff_head + n) % INTAKE_PUB_HANDOFF_MAX;
    p->handoff_count = 0;
    pthread_mutex_unlock(&p->lock);
    SVC_ASSERT(n <= INTAKE_PUB_HANDOFF_MAX);
    return n;
}

/* Keeps jobs[0..count) in flight under one cookie, in order. */
static void intake_pub_inflight(struct intake_pub *p, struct intake_pub_job **jobs, size_t count)
{
    SVC_ASSERT(count >= 1);
    p->cookie++;
    for (size_t i = 0; i < count; i++) {
        struct intake_pub_job *job = jobs[i];
        job->cookie = p->cookie;
        job->next = NULL;
        if (p->inflight_tail == NULL) {
            p->inflight_head = job;
        } else {
            p->inflight_tail->next = job;
        }
        p->inflight_tail = job;
    }
}

/* Publishes jobs[0..count) as one message: a job's own (count 1), or a batch of purchases
 * (intake.h). Without a connection or room, every job is done at once. */
static void intake_pub_send(struct intake_pub *p, struct intake_pub_job **jobs, size_t count)
{
    SVC_ASSERT(count >= 1 && count <= INTAKE_BATCH_COMMANDS_MAX);
    if (!mq_connected(p->mq)) {
        for (size_t i = 0; i < count; i++) {
            intake_pub_done(jobs[i], -ENOTCONN); /* nothing published: a retry is the client's */
        }
        return;
    }
    struct mq_message m = {.id = jobs[0]->key, .cookie = p->cookie + 1};
    if (count == 1) {
        m.type = jobs[0]->kind;
        m.body = jobs[0]->body;
        m.body_length = jobs[0]->body_length;
        m.headers[m.header_count++] = (struct mq_header){"principal", jobs[0]->principal};
    } else {
        m.type = INTAKE_KIND_BATCH;
        m.body = p->batch;
        m.body_length = intake_pub_batch_format(p->batch, MQ_BODY_BYTES_MAX, jobs, count);
        SVC_ASSERT(m.body_length > 0); /* intake_pub_send_round sized the batch to fit */
    }
    int rc = mq_publish(p->mq, &m);
    if (rc == -EAGAIN) {
        for (size_t i = 0; i < count; i++) {
            intake_pub_done(jobs[i], -EAGAIN);
        }
        return;
    }
    SVC_ASSERT(rc == 0); /* -EMSGSIZE cannot happen: the limits are related above and in
                          * api_intake.c (INTAKE_BODY_BYTES_MAX), and a batch is sized below */
    intake_pub_inflight(p, jobs, count);
}

/* A bound of the bytes a batch of commands whose bodies total body_bytes takes (intake.h):
 * the frame, a comma between two bodies, the bodies. */
static size_t intake_pub_batch_bytes(size_t count, size_t body_bytes)
{
    return sizeof "{\"v\":2,\"kind\":\"batch\",\"commands\":[]}" + count + body_bytes;
}

/* A purchase the HTTP side formatted: it may go out in a batch. */
static bool intake_pub_packable(const struct intake_pub_job *job)
{
    return job->packable && strcmp(job->kind, INTAKE_KIND_PURCHASE) == 0;
}

/* Publishes the jobs of a round: runs of packable purchases as batches, any other job alone. */
static void intake_pub_send_round(struct intake_pub *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t count = 1;
        size_t bytes = p->round[i]->body_length;
        if (intake_pub_packable(p->round[i])) {
            while (i + count < n && count < INTAKE_BATCH_COMMANDS_MAX &&
                   intake_pub_packable(p->round[i + count]) &&
                   intake_pub_batch_bytes(count + 1, bytes + p->round[i + count]->body_length) <=
                       MQ_BODY_BYTES_MAX) {
                bytes += p->round[i + count]->body_length;
                count++;
            }
        }
        intake_pub_send(p, p->round + i, count);
        i += count;
    }
    SVC_ASSERT(i == n);
}

/* Done with every in-flight job the broker confirmed, then, without a connection, with the
 * rest (-ENOTCONN: their messages wait in the window, to be published again). */
static void intake_pub_settle(struct intake_pub *p)
{
    int64_t confirmed = mq_confirmed_cookie(p->mq);
    SVC_ASSERT(confirmed <= p->cookie);
    bool connected = mq_connected(p->mq);
    while (p->inflight_head != NULL && (p->inflight_head->cookie <= confirmed || !connected)) {
        struct intake_pub_job *job = p->inflight_head;
        p->inflight_head = job->next;
        if (p->inflight_head == NULL) {
            p->inflight_tail = NULL;
        }
        intake_pub_done(job, job->cookie <= confirmed ? 0 : -ENOTCONN);
    }
}

static void intake_pub_publish_stats(struct intake_pub *p)
{
    const struct mq_stats *s = mq_stats(p->mq);
    atomic_store(&p->stats.connected, mq_connected(p->mq));
    atomic_store(&p->stats.confirmed, s->confirmed);
    atomic_store(&p->stats.errors, s->losses + s->connect_failures + s->nacked);
}

static bool intake_pub_stopping(struct intake_pub *p)
{
    pthread_mutex_lock(&p->lock);
    bool stopping = p->stopping;
    pthread_mutex_unlock(&p->lock);
    return stopping;
}

static void *intake_pub_loop(void *arg)
{
    svc_thread_name("intake-pub", -1);
    struct intake_pub *p = arg;
    bool idle = false;
    while (!intake_pub_stopping(p)) {
        size_t n = intake_pub_take(p, idle ? INTAKE_PUB_IDLE_WAIT_MS : 0);
        intake_pub_send_round(p, n);
        bool in_flight = p->inflight_head != NULL;
        /* Connected with messages in flight: the wait is for their confirms. */
        (void)mq_poll(p->mq, in_flight ? INTAKE_PUB_CONFIRM_WAIT_MS : 0);
        intake_pub_settle(p);
        intake_pub_publish_stats(p);
        idle = n == 0 && p->inflight_head == NULL;
    }
    return NULL;
}

int intake_pub_start(struct intake_pub *p)
{
    SVC_ASSERT(!p->started);
    if (mq_connect(p->mq) != 0) {
        log_warn("intake: the broker is not reachable yet; asynchronous requests get 503");
    }
    intake_pub_publish_stats(p);
    log_info("intake: publishing asynchronous commands to stream %s", INTAKE_QUEUE);
    p->started = true;
    int rc = pthread_create(&p->thread, NULL, intake_pub_loop, p);
    if (rc != 0) {
        p->started = false;
        return -rc;
    }
    return 0;
}

void intake_pub_stop(struct intake_pub *p)
{
    if (p == NULL || !p->started) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    p->started = false;
    size_t n = intake_pub_take(p, 0);
    for (size_t i = 0; i < n; i++) {
        intake_pub_done(p->round[i], -ENOTCONN);
    }
    while (p->inflight_head != NULL) {
        struct intake_pub_job *job = p->inflight_head;
        p->inflight_head = job->next;
        intake_pub_done(job, -ENOTCONN);
    }
    p->inflight_tail = NULL;
    atomic_store(&p->stats.connected, false);
}

/* ---- the contract's helpers ------------------------------------------------------------- */

size_t intake_pub_format(char *out, size_t size, const char *kind, const char *principal,
                         const char *key, const char *route, const char *body, size_t body_length)
{
    SVC_ASSERT(size >= 2 && body != NULL && body_length >= 2);
    SVC_ASSERT(strlen(route) <= INTAKE_PUB_ROUTE_BYTES_MAX);
    struct jbuf b;
    jbuf_init(&b, out, size);
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "v", INTAKE_FORMAT_VERSION);
    jbuf_kv_str(&b, "kind", kind);
    jbuf_kv_str(&b, "principal", principal);
    jbuf_kv_str(&b, "idempotencyKey", key);
    jbuf_kv_str(&b, "route", route);
    jbuf_key(&b, "body");
    jbuf_raw(&b, body, body_length); /* the client's object, verbatim */
    jbuf_lit(&b, "}");
    return jbuf_ok(&b) ? b.length : 0;
}

size_t intake_pub_batch_format(char *out, size_t size, struct intake_pub_job *const *jobs,
                               size_t count)
{
    SVC_ASSERT(count >= 1 && count <= INTAKE_BATCH_COMMANDS_MAX);
    struct jbuf b;
    jbuf_init(&b, out, size);
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "v", INTAKE_BATCH_FORMAT_VERSION);
    jbuf_kv_str(&b, "kind", INTAKE_KIND_BATCH);
    jbuf_key(&b, "commands");
    jbuf_lit(&b, "[");
    size_t body_bytes = 0;
    for (size_t i = 0; i < count; i++) {
        if (i > 0) {
            jbuf_lit(&b, ",");
        }
        jbuf_raw(&b, jobs[i]->body, jobs[i]->body_length); /* intake_pub_format's output */
        body_bytes += jobs[i]->body_length;
    }
    jbuf_lit(&b, "]}");
    SVC_ASSERT(!jbuf_ok(&b) || b.length < intake_pub_batch_bytes(count, body_bytes));
    return jbuf_ok(&b) ? b.length : 0;
}

static bool intake_pub_is_tchar(char c)
{
    /* RFC 9110 5.6.2: token = 1*tchar */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Skips one preference from v[i] (its value and parameters, quoted strings included) up to
 * the comma that ends it; returns the index of that comma or length. */
static size_t intake_pub_skip_preference(const char *v, size_t length, size_t i)
{
    bool quoted = false;
    for (; i < length; i++) {
        if (quoted && v[i] == '\\') {
            i++; /* quoted-pair */
        } else if (v[i] == '"') {
            quoted = !quoted;
        } else if (!quoted && v[i] == ',') {
            break;
        }
    }
    return i < length ? i : length;
}

bool intake_pub_prefers_async(const char *v, size_t length)
{
    static const char name[] = "respond-async";
    const size_t name_length = sizeof name - 1;
    SVC_ASSERT(v != NULL || length == 0);
    size_t i = 0;
    while (i < length) {
        while (i < length && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
            i++;
        }
        size_t start = i;
        while (i < length && intake_pub_is_tchar(v[i])) {
            i++;
        }
        bool ends =
            i == length || v[i] == ' ' || v[i] == '\t' || v[i] == '=' || v[i] == ';' || v[i] == ',';
        if (ends && i - start == name_length && strncasecmp(v + start, name, name_length) == 0) {
            return true;
        }
        i = intake_pub_skip_preference(v, length, i);
    }
    return false;
}

size_t intake_pub_status_url(char *out, size_t size, const char *key)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t used = strlen(INTAKE_STATUS_PREFIX);
    if (used >= size) {
        return 0;
    }
    memcpy(out, INTAKE_STATUS_PREFIX, used);
    for (const char *c = key; *c != '\0'; c++) {
        unsigned char u = (unsigned char)*c;
        bool plain = (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') ||
                     u == '-' || u == '.' || u == '_' || u == '~';
        if (used + (plain ? 1 : 3) >= size) {
            return 0;
        }
        if (plain) {
            out[used++] = (char)u;
        } else {
            out[used++] = '%';
            out[used++] = hex[u >> 4];
            out[used++] = hex[u & 15];
        }
    }
    out[used] = '\0';
    SVC_ASSERT(used < size);
    return used;
}
