/*
 * api_stream.c - GET /v1/stream: committed events as server-sent events ("id:", "event:",
 * "data:" with the object GET /v1/events lists).
 *
 * Live events: the projector runs a tap per I/O thread with every run of events it applied
 * (under its apply mutex, so one producer at a time: the writer thread or the follower). When
 * the thread has subscribers the tap formats the events into the thread's byte ring
 * (sse_ring.h) and wakes the thread with its one preallocated h2o message; the thread copies
 * each event to the subscribers that have not seen it and hands their buffers to h2o. No
 * allocation happens on that path: the ring is allocated at the thread's first subscriber. A
 * ring that overflows drops every subscriber of the thread, as does a subscriber whose buffer
 * (SSE_BUFFER_BYTES) fills: they reconnect with Last-Event-ID and catch up from the log.
 *
 * Readers that stop reading: a tick (SSE_TICK_MS) on each thread with subscribers resets the
 * connection of one whose socket has not taken its buffer for SSE_WRITE_TIMEOUT_MS (h2o has
 * no write timeout of its own), and sends a comment to streams idle for SSE_HEARTBEAT_MS.
 * Past SSE_SUBSCRIBERS_MAX a new subscriber gets 503 too_many_subscribers.
 *
 * Replay: after Last-Event-ID (or ?since=) a subscriber first reads the event log through the
 * thread's store reader, a buffer at a time, and skips live events until it reaches the end of
 * the log. This file is not the ring (sse_ring.c) and not the read model (projector.c). Read
 * sse_ring.h first.
 */
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "core/events.h"
#include "http/api.h"
#include "http/http_metrics.h"
#include "http/sse_ring.h"
#include "read/projector.h"

/* An SSE comment that opens a stream at once, so that clients see the headers immediately. */
static const char stream_opening[] = ": stockd stream\n\n";
/* The comment an idle stream gets every SSE_HEARTBEAT_MS. */
static const char stream_heartbeat[] = ": keep-alive\n\n";

struct stream_thread;

/* One open GET /v1/stream, allocated on its request's pool (freed with the request). */
struct stream_subscriber {
    h2o_generator_t generator; /* first member: h2o hands it back to proceed/stop */
    h2o_req_t *req;
    struct stream_thread *owner;
    struct stream_subscriber *next;
    int64_t last_seq;  /* newest event written into pending */
    bool replaying;    /* catching up from the log: live events are skipped */
    bool sending;      /* inflight is with h2o until proceed */
    bool closing;      /* too slow: end the stream at the next proceed */
    bool closed;       /* ended or disposed: never touch req again */
    bool reset;        /* its connection was reset for the write timeout */
    int fd;            /* its socket, -1 if unknown: polled for the peer's hang-up */
    int64_t handed_ms; /* monotonic ms of the last h2o_send (sending: since then) */
    char *pending;     /* SSE_BUFFER_BYTES on the pool: not yet handed to h2o */
    size_t pending_length;
    char *inflight; /* SSE_BUFFER_BYTES on the pool: handed to h2o */
};

/* Per I/O thread. The tap touches only ring, wake, receiver (to send) and subscriber_count;
 * everything else belongs to the owning thread. Set up at the thread's first subscriber. */
struct stream_thread {
    struct sse_ring ring;                  /* SSE_RING_BYTES, allocated once */
    h2o_multithread_message_t wake;        /* the one wake message; see sse_ring_wake_claim */
    h2o_multithread_receiver_t receiver;   /* on the thread's reply queue */
    struct io_thread *thread;              /* the owner */
    struct stream_subscriber *subscribers; /* owner only */
    _Atomic uint32_t subscriber_count;
    bool receiver_registered;   /* owner only */
    bool tap_registered;        /* owner only */
    bool tick_ready;            /* owner only: tick_timeout initialised on the loop */
    h2o_timeout_t tick_timeout; /* SSE_TICK_MS on the thread's loop */
    h2o_timeout_entry_t tick;   /* linked while the thread has subscribers */
    /* For GET /metrics, read by any thread. */
    _Atomic uint64_t dropped_behind;   /* fell SSE_BUFFER_BYTES behind */
    _Atomic uint64_t dropped_timeout;  /* reset: did not drain within SSE_WRITE_TIMEOUT_MS */
    _Atomic uint64_t dropped_overflow; /* the thread's ring overflowed */
    _Atomic uint64_t refused;          /* 503 too_many_subscribers */
};

static struct stream_thread stream_threads[IO_THREADS_MAX];

/* ---- formatting ------------------------------------------------------------------------- */

/* Appends one event as "id:/event:/data:" lines; false (and b unchanged) when it did not fit. */
static bool stream_format(struct jbuf *b, const struct row_event *row)
{
    SVC_ASSERT(row->seq >= 1);
    size_t before = b->length;
    jbuf_lit(b, "id: ");
    jbuf_int(b, row->seq);
    jbuf_lit(b, "\nevent: ");
    jbuf_lit(b, row->event_type);
    jbuf_lit(b, "\ndata: ");
    api_event_json(b, row);
    jbuf_lit(b, "\n\n");
    if (!jbuf_ok(b)) {
        b->overflow = false;
        b->length = before;
        b->data[before] = '\0';
        return false;
    }
    SVC_ASSERT(b->length > before);
    return true;
}

/* The most stream_format may write for row, with the NUL: the data as stored, every string
 * escaped at the worst (6 bytes a byte), the type twice, and the fixed text and numbers. */
static size_t stream_text_bytes_max(const struct row_event *row)
{
    size_t strings =
        (row->store_id ? strlen(row->store_id) : 0) + (row->sku ? strlen(row->sku) : 0);
    size_t bytes = strlen(row->data_json) + 7 * strlen(row->event_type) + 6 * strings + 256;
    SVC_ASSERT(bytes > 256);
    return bytes;
}

/* Formats e into the ring; false when it did not fit (the ring is overflowed). */
static bool stream_ring_write(struct sse_ring *ring, const struct event *e)
{
    struct row_event row;
    event_row(e, &row); /* the columns the log holds, so that live and replay look alike */
    size_t size = stream_text_bytes_max(&row);
    char *text = sse_ring_reserve(ring, size);
    if (text == NULL) {
        return false;
    }
    struct jbuf b;
    jbuf_init(&b, text, size);
    bool fitted = stream_format(&b, &row);
    SVC_ASSERT(fitted); /* size is the worst case */
    sse_ring_commit(ring, row.seq, b.length);
    return true;
}

/* The projector tap: runs on the applying thread with every run of applied events. Copies them
 * into the thread's ring when it has subscribers and wakes it. Never blocks or allocates. */
static void stream_tap(const struct event *events, size_t count, void *context)
{
    struct stream_thread *st = context;
    SVC_ASSERT(count >= 1);
    SVC_ASSERT(st->ring.data != NULL);
    if (atomic_load(&st->subscriber_count) == 0) {
        return;
    }
    bool dropped = false;
    size_t written = 0;
    for (size_t i = 0; i < count && !dropped; i++) {
        dropped = !stream_ring_write(&st->ring, &events[i]);
        written += dropped ? 0 : 1;
    }
    if ((written > 0 || dropped) && sse_ring_wake_claim(&st->ring)) {
        h2o_multithread_send_message(&st->receiver, &st->wake);
    }
}

/* ---- delivery on the owning thread ------------------------------------------------------ */

/* Hands pending to h2o when nothing is in flight. */
static void stream_flush(struct stream_subscriber *sub)
{
    SVC_ASSERT(sub->req != NULL);
    SVC_ASSERT(sub->pending_length <= SSE_BUFFER_BYTES);
    if (sub->closed || sub->sending || sub->pending_length == 0) {
        return;
    }
    char *swap = sub->inflight;
    sub->inflight = sub->pending;
    sub->pending = swap;
    h2o_iovec_t buf = h2o_iovec_init(sub->inflight, sub->pending_length);
    sub->pending_length = 0;
    sub->sending = true;
    sub->handed_ms = clock_mono_us() / 1000;
    h2o_send(sub->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

/* Ends the stream now if nothing is in flight, else at the next proceed. */
static void stream_close(struct stream_subscriber *sub)
{
    SVC_ASSERT(sub->owner != NULL);
    if (sub->closed) {
        return;
    }
    sub->closing = true;
    if (!sub->sending) {
        sub->closed = true;
        h2o_send(sub->req, NULL, 0, H2O_SEND_STATE_FINAL);
    }
}

/* Copies one live event to sub unless it has it (or reads it from the log). */
static void stream_append(struct stream_subscriber *sub, const struct sse_ring_entry *entry)
{
    SVC_ASSERT(entry->seq >= 1 && entry->length > 0);
    if (sub->closed || sub->closing || sub->replaying || entry->seq <= sub->last_seq) {
        return; /* a replaying subscriber reads these events from the log */
    }
    if (sub->pending_length + entry->length > SSE_BUFFER_BYTES) {
        atomic_fetch_add_explicit(&sub->owner->dropped_behind, 1, memory_order_relaxed);
        stream_close(sub); /* too slow: it reconnects with Last-Event-ID */
        return;
    }
    memcpy(sub->pending + sub->pending_length, entry->text, entry->length);
    sub->pending_length += entry->length;
    sub->last_seq = entry->seq;
}

/* Copies every event in the ring to the subscribers, then hands their buffers to h2o. The
 * next subscriber is read first: ending a stream may dispose its request (and unlink it). */
static void stream_drain(struct stream_thread *st)
{
    SVC_ASSERT(st->ring.data != NULL && st->thread != NULL);
    struct sse_ring_entry entry;
    int64_t previous_seq = 0;
    while (sse_ring_peek(&st->ring, &entry)) {
        SVC_ASSERT(entry.seq > previous_seq); /* one producer at a time, seqs ascending */
        previous_seq = entry.seq;
        for (struct stream_subscriber *sub = st->subscribers, *next = NULL; sub != NULL;
             sub = next) {
            next = sub->next;
            stream_append(sub, &entry);
        }
        sse_ring_pop(&st->ring, &entry);
    }
    for (struct stream_subscriber *sub = st->subscribers, *next = NULL; sub != NULL; sub = next) {
        next = sub->next;
        stream_flush(sub);
    }
}

/* The wake message arrived: drain the ring; after an overflow, drop every subscriber. */
static void stream_on_wake(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    struct stream_thread *st = H2O_STRUCT_FROM_MEMBER(struct stream_thread, receiver, receiver);
    SVC_ASSERT(st->ring.data != NULL && st->tap_registered);
    SVC_ASSERT(messages->next == &st->wake.link && messages->prev == &st->wake.link);
    h2o_linklist_unlink(&st->wake.link); /* unlinked before the flag lets the tap resend it */
    sse_ring_wake_done(&st->ring);
    stream_drain(st);
    if (sse_ring_overflow_take(&st->ring)) {
        for (struct stream_subscriber *sub = st->subscribers, *next = NULL; sub != NULL;
             sub = next) {
            next = sub->next;
            if (!sub->closing && !sub->closed) {
                atomic_fetch_add_explicit(&st->dropped_overflow, 1, memory_order_relaxed);
            }
            stream_close(sub); /* events were dropped: they resume with Last-Event-ID */
        }
    }
}

/* ---- readers that stop reading ---------------------------------------------------------- */

/* Resets sub's connection: its socket has held the same buffer for SSE_WRITE_TIMEOUT_MS. The
 * pending write then fails and h2o closes the connection the usual way (stop, dispose);
 * SO_LINGER 0 makes the close a reset that frees what the kernel still buffers for it. */
static void stream_reset(struct stream_subscriber *sub)
{
    SVC_ASSERT(sub->sending && !sub->closed && !sub->reset);
    h2o_conn_t *conn = sub->req->conn;
    h2o_socket_t *sock = conn->callbacks->get_socket ? conn->callbacks->get_socket(conn) : NULL;
    sub->reset = true;
    sub->closing = true;
    if (sock == NULL) {
        return; /* not a socket stockd can reset (never so over HTTP/1) */
    }
    int fd = h2o_socket_get_fd(sock);
    struct linger hard = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
    (void)shutdown(fd, SHUT_RDWR);
    atomic_fetch_add_explicit(&sub->owner->dropped_timeout, 1, memory_order_relaxed);
    log_warn("http: thread %u: a stream subscriber took nothing for %d ms: reset",
             sub->owner->thread->index, SSE_WRITE_TIMEOUT_MS);
}

/* Ends the streams whose client hung up. While a response streams h2o does not read the
 * socket, so a client that closes an idle stream would hold its slot until a write failed;
 * one poll per tick finds them (POLLRDHUP: the peer shut its side). */
static void stream_reap_hung_up(struct stream_thread *st)
{
    struct pollfd fds[SSE_SUBSCRIBERS_MAX];
    struct stream_subscriber *subs[SSE_SUBSCRIBERS_MAX];
    nfds_t count = 0;
    for (struct stream_subscriber *sub = st->subscribers; sub != NULL; sub = sub->next) {
        if (!sub->closed && !sub->closing && sub->fd >= 0 && count < SSE_SUBSCRIBERS_MAX) {
            fds[count] = (struct pollfd){.fd = sub->fd, .events = POLLRDHUP};
            subs[count++] = sub;
        }
    }
    if (count == 0 || poll(fds, count, 0) <= 0) {
        return;
    }
    for (nfds_t i = 0; i < count; i++) {
        if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            stream_close(subs[i]); /* at once when idle; else the failing write ends it */
        }
    }
}

/* Every SSE_TICK_MS while the thread has subscribers: resets the stuck, wakes the idle, ends
 * the hung up. */
static void stream_on_tick(h2o_timeout_entry_t *entry)
{
    struct stream_thread *st = H2O_STRUCT_FROM_MEMBER(struct stream_thread, tick, entry);
    SVC_ASSERT(st->tick_ready && st->thread != NULL);
    stream_reap_hung_up(st);
    int64_t now_ms = clock_mono_us() / 1000;
    for (struct stream_subscriber *sub = st->subscribers, *next = NULL; sub != NULL; sub = next) {
        next = sub->next;
        if (sub->closed || sub->reset) {
            continue;
        }
        int64_t held_ms = now_ms - sub->handed_ms;
        if (sub->sending && held_ms >= SSE_WRITE_TIMEOUT_MS) {
            stream_reset(sub);
        } else if (!sub->sending && !sub->closing && sub->pending_length == 0 &&
                   held_ms >= SSE_HEARTBEAT_MS) {
            memcpy(sub->pending, stream_heartbeat, sizeof stream_heartbeat - 1);
            sub->pending_length = sizeof stream_heartbeat - 1;
            stream_flush(sub);
        }
    }
    if (st->subscribers != NULL) {
        h2o_timeout_link(st->thread->loop, &st->tick_timeout, &st->tick);
    }
}

/* ---- replay from the log ---------------------------------------------------------------- */

static int stream_replay_row(void *context, const struct row_event *row)
{
    struct stream_subscriber *sub = context;
    SVC_ASSERT(row->seq > sub->last_seq);
    struct jbuf b;
    jbuf_init(&b, sub->pending + sub->pending_length, SSE_BUFFER_BYTES - sub->pending_length);
    if (!stream_format(&b, row)) {
        return 1; /* full: continue after the next proceed */
    }
    sub->pending_length += b.length;
    sub->last_seq = row->seq;
    return 0;
}

/* Reads the log after last_seq into pending until it is full or the log ends. */
static void stream_replay(struct stream_subscriber *sub)
{
    SVC_ASSERT(sub->replaying);
    for (;;) {
        int64_t before = sub->last_seq;
        int rc = store_reader_events(sub->owner->thread->reader, before, NULL, NULL,
                                     PROJ_REPLAY_CHUNK, sub, stream_replay_row);
        if (rc < 0) {
            stream_close(sub); /* storage trouble: the client retries with Last-Event-ID */
            return;
        }
        if (rc == 1) {
            return; /* the buffer is full */
        }
        SVC_ASSERT(rc == 0 && sub->last_seq >= before);
        if (sub->last_seq - before < PROJ_REPLAY_CHUNK) {
            sub->replaying = false; /* the end of the log: live events take over */
            return;
        }
    }
}

static void stream_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    struct stream_subscriber *sub = (struct stream_subscriber *)generator;
    SVC_ASSERT(sub->req == req);
    SVC_ASSERT(sub->sending);
    sub->sending = false;
    if (sub->closing) {
        stream_close(sub);
        return;
    }
    if (sub->replaying) {
        stream_replay(sub);
    }
    stream_flush(sub);
}

static void stream_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    struct stream_subscriber *sub = (struct stream_subscriber *)generator;
    SVC_ASSERT(sub->req == req);
    SVC_ASSERT(sub->owner != NULL);
    sub->closed = true; /* the client is gone; the pool dispose unlinks it */
}

/* Runs when the request's pool is freed: unlinks the subscriber. */
static void stream_dispose(void *object)
{
    struct stream_subscriber *sub = object;
    struct stream_thread *st = sub->owner;
    SVC_ASSERT(st != NULL && st->tap_registered);
    for (struct stream_subscriber **link = &st->subscribers; *link != NULL; link = &(*link)->next) {
        if (*link == sub) {
            *link = sub->next;
            uint32_t before = atomic_fetch_sub(&st->subscriber_count, 1);
            SVC_ASSERT(before >= 1);
            break;
        }
    }
    sub->closed = true;
}

/* ---- opening a stream ------------------------------------------------------------------- */

/* Sets up this thread's ring, wake receiver and tap, each once (a failed step is retried by
 * the next subscriber). 0, SVC_EOUT_OF_MEMORY (no ring) or SVC_ECAPACITY (no tap slot). */
static int stream_thread_ready(struct http_request *r, struct stream_thread **out)
{
    struct io_thread *t = r->thread;
    SVC_ASSERT(t->index < IO_THREADS_MAX);
    struct stream_thread *st = &stream_threads[t->index];
    SVC_ASSERT(st->thread == NULL || st->thread == t);
    st->thread = t;
    if (st->ring.data == NULL && sse_ring_init(&st->ring, SSE_RING_BYTES) != 0) {
        log_error("http: thread %u: no memory for its SSE ring (%d bytes)", t->index,
                  SSE_RING_BYTES);
        return SVC_EOUT_OF_MEMORY;
    }
    if (!st->receiver_registered) {
        h2o_multithread_register_receiver(t->reply_queue, &st->receiver, stream_on_wake);
        st->receiver_registered = true;
    }
    if (!st->tick_ready) {
        h2o_timeout_init(t->loop, &st->tick_timeout, SSE_TICK_MS);
        st->tick.cb = stream_on_tick;
        st->tick_ready = true;
    }
    if (!st->tap_registered) {
        /* The apply mutex it takes publishes the ring and receiver to the tap's threads. */
        int rc = projector_tap_add(&t->app->projector, stream_tap, st);
        if (rc != 0) {
            return rc;
        }
        st->tap_registered = true;
    }
    *out = st;
    return 0;
}

/* The seq to start after: Last-Event-ID, else ?since=, else the end of the log (live only). */
static int stream_start_seq(struct http_request *r, int64_t *since, bool *replay)
{
    SVC_ASSERT(since != NULL && replay != NULL);
    SVC_ASSERT(r->thread->reader != NULL);
    h2o_iovec_t last = http_header(r, "last-event-id");
    *replay = true;
    if (last.base != NULL && last.len > 0 && last.len < 19) {
        int64_t value = 0;
        for (size_t i = 0; i < last.len; i++) {
            if (last.base[i] < '0' || last.base[i] > '9') {
                return SVC_EVALIDATION;
            }
            value = value * 10 + (last.base[i] - '0');
        }
        *since = value;
        return 0;
    }
    int rc = api_query_int(r, "since", 0, INT64_MAX, since);
    if (rc != 0) {
        return rc < 0 ? rc : 0;
    }
    *replay = false;
    return store_reader_event_seq_max(r->thread->reader, since);
}

/* Answers 200 text/event-stream and links a new subscriber starting after since. */
static void stream_start(struct http_request *r, struct stream_thread *st, int64_t since,
                         bool replay)
{
    SVC_ASSERT(since >= 0);
    SVC_ASSERT(st->thread == r->thread);
    h2o_req_t *req = r->req;
    http_metrics_count(r->thread, r->route, req->method, 200, r->started_us);
    struct stream_subscriber *sub = h2o_mem_alloc_shared(&req->pool, sizeof *sub, stream_dispose);
    memset(sub, 0, sizeof *sub);
    sub->generator.proceed = stream_proceed;
    sub->generator.stop = stream_stop;
    sub->req = req;
    sub->owner = st;
    sub->last_seq = since;
    sub->replaying = replay;
    sub->pending = h2o_mem_alloc_pool(&req->pool, SSE_BUFFER_BYTES);
    sub->inflight = h2o_mem_alloc_pool(&req->pool, SSE_BUFFER_BYTES);
    sub->next = st->subscribers;
    st->subscribers = sub;
    if (!h2o_timeout_is_linked(&st->tick)) {
        h2o_timeout_link(r->thread->loop, &st->tick_timeout, &st->tick);
    }
    h2o_socket_t *sock =
        req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    sub->fd = sock != NULL ? h2o_socket_get_fd(sock) : -1;
    if (sub->fd >= 0) {
        int sndbuf = SSE_SOCKET_SNDBUF_BYTES; /* bounds what a stuck reader pins in the kernel */
        (void)setsockopt(sub->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-projection-lag-ms"), 0, NULL,
                          H2O_STRLIT("0"));
    http_start_event_stream(req, &sub->generator);
    if (sub->replaying) {
        stream_replay(sub);
    }
    if (sub->pending_length == 0) {
        memcpy(sub->pending, stream_opening, sizeof stream_opening - 1);
        sub->pending_length = sizeof stream_opening - 1;
    }
    stream_flush(sub);
}

void api_stream_open(struct http_request *r)
{
    SVC_ASSERT(r->thread != NULL && r->route != NULL);
    struct stream_thread *st = NULL;
    int rc = stream_thread_ready(r, &st);
    if (rc == SVC_EOUT_OF_MEMORY) {
        http_send_problem(r, rc, "no memory for the stream on this thread; retry", NULL, 0);
        return;
    }
    if (rc == 0 && atomic_load(&st->subscriber_count) >= SSE_SUBSCRIBERS_MAX) {
        atomic_fetch_add_explicit(&st->refused, 1, memory_order_relaxed);
        rc = SVC_ETOO_MANY_SUBSCRIBERS;
    }
    if (rc != 0) {
        http_send_problem(r, rc,
                          rc == SVC_ETOO_MANY_SUBSCRIBERS
                              ? "this thread streams to as many subscribers as it may; retry"
                              : "no tap slot for this thread's streams",
                          NULL, 0);
        return;
    }
    SVC_ASSERT(st != NULL && st->tap_registered);
    atomic_fetch_add(&st->subscriber_count, 1); /* before the log is read: see stream_tap */
    int64_t since = 0;
    bool replay = false;
    rc = stream_start_seq(r, &since, &replay);
    if (rc != 0) {
        atomic_fetch_sub(&st->subscriber_count, 1);
        http_send_problem(r, rc, "Last-Event-ID and since are seqs >= 0", NULL, 0);
        return;
    }
    stream_start(r, st, since, replay);
}

void api_stream_stats(struct api_stream_stats *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < IO_THREADS_MAX; i++) {
        const struct stream_thread *st = &stream_threads[i];
        out->subscribers += atomic_load_explicit(&st->subscriber_count, memory_order_relaxed);
        out->dropped_behind += atomic_load_explicit(&st->dropped_behind, memory_order_relaxed);
        out->dropped_timeout += atomic_load_explicit(&st->dropped_timeout, memory_order_relaxed);
        out->dropped_overflow += atomic_load_explicit(&st->dropped_overflow, memory_order_relaxed);
        out->refused += atomic_load_explicit(&st->refused, memory_order_relaxed);
    }
}
