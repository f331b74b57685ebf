/*
 * relay.c - the outbox relay of relay.h: one thread that reads the event log from the relay's
 * durable position, publishes each event to RELAY_STREAM, and saves the position of the
 * confirmed prefix.
 *
 * Positions: read_pos is the last event put into the publisher's window (published or waiting
 * for a connection); the window's confirmed prefix ends at mq_confirmed_cookie (cookies are
 * seqs); saved_pos is what relay_offsets holds. saved_pos <= confirmed <= read_pos always, and
 * only saved_pos survives a restart, so a restart publishes (confirmed, read_pos] again at worst.
 *
 * The lease: the thread ticks it at the top of each round (and never waits past its next
 * action), and reads, publishes and saves only while it holds it. A loss drops the window
 * (mq_drop_unconfirmed) before anything else is published; a win reads saved_pos from
 * relay_offsets again and starts the window there (another holder may have moved it, or this
 * instance's last unsaved confirms were never saved). Without the lease the thread keeps the
 * broker connection alive (mq_poll) and reads the durable position every lease/3 for the lag.
 *
 * Ownership: the relay owns its reader, its mq handle and its lease; all are used by its
 * thread only (and by relay_start / relay_stop / relay_free before the thread runs and after
 * it was joined); other threads read the lease through work_lease_held / work_lease_holder.
 */
#include "relay/relay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"
#include "mq/mq.h"
#include "store/store_open.h"
#include "work/work_lease.h"

_Static_assert(RELAY_BODY_BYTES_MAX <= MQ_BODY_BYTES_MAX, "an event fits one message");
_Static_assert(RELAY_READ_EVENTS_MAX <= MQ_WINDOW_MAX, "a round fits the window");
_Static_assert(RELAY_CONFIRM_WAIT_MS < RELAY_IDLE_WAIT_MS, "confirms are awaited more eagerly");
_Static_assert(RELAY_IDLE_WAIT_MS < MQ_HEARTBEAT_SECONDS * 1000 / 2, "heartbeats are serviced");

struct relay {
    struct relay_config config;
    struct mq *mq;               /* owned: the publisher, used by the thread */
    struct store_reader *reader; /* owned: the thread's */
    int64_t read_pos;            /* the last event put into the window */
    int64_t saved_pos;           /* the position relay_offsets holds */
    uint64_t save_failures;
    struct work_lease lease;                       /* stage RELAY_LEASE_STAGE */
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1]; /* this instance's id in worker_leases */
    int64_t next_follow_ms; /* monotonic: not holding, the next read of the position */
    pthread_mutex_t lock;   /* guards woken */
    pthread_cond_t wake;    /* the writer committed events, or the relay is stopping */
    bool woken;
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    struct relay_stats stats;
    char body[RELAY_BODY_BYTES_MAX]; /* the message being published */
};

struct relay *relay_new(const struct relay_config *config)
{
    SVC_ASSERT(config != NULL && config->db_uri != NULL && config->amqp_url != NULL);
    SVC_ASSERT(config->committed_seq != NULL);
    struct relay *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return NULL;
    }
    r->config = *config;
    SVC_ASSERT(config->lease_ms == 0 ||
               (config->lease_ms >= WORK_LEASE_MS_MIN && config->lease_ms <= WORK_LEASE_MS_MAX));
    r->config.lease_ms = config->lease_ms != 0 ? config->lease_ms : WORK_LEASE_MS_DEFAULT;
    if (config->instance_id != NULL && config->instance_id[0] != '\0') {
        snprintf(r->holder, sizeof r->holder, "%s", config->instance_id);
    } else {
        work_lease_default_holder(r->holder, sizeof r->holder);
    }
    struct mq_config mc = {
        config->amqp_url, RELAY_STREAM, MQ_PUBLISHER, RELAY_STREAM_BYTES_MAX, 0, 0};
    if (mq_new(&r->mq, &mc) != 0) {
        free(r);
        return NULL;
    }
    work_lease_init(&r->lease, RELAY_LEASE_STAGE);
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &attr);
    pthread_condattr_destroy(&attr);
    SVC_ASSERT(r->mq != NULL);
    return r;
}

void relay_free(struct relay *r)
{
    if (r == NULL) {
        return;
    }
    SVC_ASSERT(!r->started);
    mq_free(r->mq);
    store_reader_close(r->reader);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->wake);
    work_lease_deinit(&r->lease);
    free(r);
}

const struct relay_stats *relay_stats(const struct relay *r)
{
    return &r->stats;
}

int64_t relay_lag_events(const struct relay *r)
{
    int64_t committed = atomic_load(r->config.committed_seq);
    int64_t position = atomic_load(&r->stats.position);
    return committed > position ? committed - position : 0;
}

bool relay_holds(const struct relay *r)
{
    return work_lease_held(&r->lease);
}

void relay_holder(struct relay *r, char *out, size_t size)
{
    work_lease_holder(&r->lease, out, size);
}

const char *relay_instance_id(const struct relay *r)
{
    return r->holder;
}

void relay_notify(struct relay *r)
{
    if (r == NULL) {
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->woken = true;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

/* The event as GET /v1/events shows it (api_event_json), into r->body. */
static size_t relay_body(struct relay *r, const struct row_event *row)
{
    SVC_ASSERT(row->seq >= 1 && row->event_type != NULL && row->data_json != NULL);
    struct jbuf b;
    jbuf_init(&b, r->body, sizeof r->body);
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "seq", row->seq);
    jbuf_kv_str(&b, "eventType", row->event_type);
    jbuf_kv_int(&b, "eventVersion", row->event_version);
    jbuf_kv_time(&b, "occurredAt", row->occurred_at_ms);
    if (row->store_id != NULL) {
        jbuf_kv_str(&b, "storeId", row->store_id);
    } else {
        jbuf_lit(&b, ",\"storeId\":null");
    }
    if (row->sku != NULL) {
        jbuf_kv_str(&b, "sku", row->sku);
    } else {
        jbuf_lit(&b, ",\"sku\":null");
    }
    jbuf_key(&b, "data");
    jbuf_lit(&b, row->data_json);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b)); /* events are bounded far below RELAY_BODY_BYTES_MAX */
    return b.length;
}

/* Publishes one event read from the log; 1 stops the read when the window is full. */
static int relay_on_event(void *context, const struct row_event *row)
{
    struct relay *r = context;
    SVC_ASSERT(row->seq > r->read_pos);
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, row->seq);
    struct mq_message m = {.id = id, .type = row->event_type, .cookie = row->seq};
    m.body = r->body;
    m.body_length = relay_body(r, row);
    if (row->store_id != NULL) {
        m.headers[m.header_count++] = (struct mq_header){"store", row->store_id};
    }
    if (row->sku != NULL) {
        m.headers[m.header_count++] = (struct mq_header){"sku", row->sku};
    }
    int rc = mq_publish(r->mq, &m);
    if (rc == -EAGAIN) {
        return 1; /* read again from read_pos once confirms made room */
    }
    SVC_ASSERT(rc == 0); /* -EMSGSIZE cannot happen: the limits are related above */
    r->read_pos = row->seq;
    return 0;
}

/* Reads the next events into the window if it has room; true when it put some there. */
static bool relay_read(struct relay *r)
{
    size_t room = MQ_WINDOW_MAX - mq_unconfirmed(r->mq);
    if (room == 0) {
        return false;
    }
    int limit = room < RELAY_READ_EVENTS_MAX ? (int)room : RELAY_READ_EVENTS_MAX;
    int64_t before = r->read_pos;
    int rc = store_reader_events(r->reader, r->read_pos, NULL, NULL, limit, r, relay_on_event);
    if (rc < 0) {
        log_warn("relay: reading the event log failed (%d); trying again", rc);
        return false;
    }
    SVC_ASSERT(r->read_pos >= before);
    return r->read_pos > before;
}

/* Saves the position of the confirmed prefix when it moved. */
static void relay_save(struct relay *r)
{
    SVC_ASSERT(r->lease.held);
    int64_t confirmed = mq_confirmed_cookie(r->mq);
    SVC_ASSERT(confirmed >= r->saved_pos && confirmed <= r->read_pos);
    if (confirmed == r->saved_pos) {
        return;
    }
    if (store_reader_relay_offset_save(r->reader, RELAY_NAME, confirmed, clock_wall_ms()) != 0) {
        r->save_failures++; /* saved again on the next round */
        log_warn("relay: cannot save its position %" PRId64 "; trying again", confirmed);
        return;
    }
    r->saved_pos = confirmed;
    atomic_store(&r->stats.position, confirmed);
}

static void relay_publish_stats(struct relay *r)
{
    const struct mq_stats *s = mq_stats(r->mq);
    atomic_store(&r->stats.connected, mq_connected(r->mq));
    atomic_store(&r->stats.published, s->confirmed);
    atomic_store(&r->stats.errors, s->losses + s->connect_failures + s->nacked + r->save_failures);
    atomic_store(&r->stats.reconnects, s->connects > 0 ? s->connects - 1 : 0);
}

static int64_t relay_mono_ms(void)
{
    return clock_mono_us() / 1000;
}

/* Waits up to RELAY_IDLE_WAIT_MS for relay_notify (a commit) or the stop, and never past the
 * lease's next action. */
static void relay_wait(struct relay *r)
{
    int64_t wait_ms = RELAY_IDLE_WAIT_MS;
    int64_t until_due = work_lease_due_ms(&r->lease) - relay_mono_ms();
    wait_ms = until_due < wait_ms ? (until_due > 1 ? until_due : 1) : wait_ms;
    SVC_ASSERT(wait_ms > 0);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    int64_t ns = until.tv_nsec + wait_ms * 1000000;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&r->lock);
    if (!r->woken && !atomic_load(&r->stopping)) {
        (void)pthread_cond_timedwait(&r->wake, &r->lock, &until);
    }
    r->woken = false;
    pthread_mutex_unlock(&r->lock);
}

/* The lease was won: the durable position is read again (another holder may have moved it)
 * and the window starts there. 0 or an error (storage unreachable). */
static int relay_load(struct relay *r)
{
    SVC_ASSERT(mq_unconfirmed(r->mq) == 0); /* dropped at the loss, or never filled */
    int rc = store_reader_relay_offset(r->reader, RELAY_NAME, &r->saved_pos);
    if (rc != 0) {
        return rc;
    }
    r->read_pos = r->saved_pos;
    mq_set_confirmed_cookie(r->mq, r->saved_pos);
    atomic_store(&r->stats.position, r->saved_pos);
    log_info("relay: instance %s publishes to stream %s from event %" PRId64, r->holder,
             RELAY_STREAM, r->saved_pos);
    return 0;
}

/* Acquires, renews or notices the loss of the lease when due. A loss stops the publishing at
 * once: what the window holds is dropped, never sent again by this instance. */
static void relay_lease_tick(struct relay *r)
{
    enum work_lease_change change =
        work_lease_tick(&r->lease, r->reader, r->holder, r->config.lease_ms, relay_mono_ms());
    if (change == WORK_LEASE_LOST) {
        size_t dropped = mq_drop_unconfirmed(r->mq);
        log_warn("relay: stopped publishing at event %" PRId64 " (%zu unconfirmed dropped)",
                 r->read_pos, dropped);
        r->next_follow_ms = 0;
    } else if (change == WORK_LEASE_WON && relay_load(r) != 0) {
        log_warn("relay: cannot read its position; its lease is tried again");
        work_lease_forget(&r->lease, relay_mono_ms(),
                          r->config.lease_ms / WORK_LEASE_RENEW_DIVISOR);
    }
}

/* Not holding the lease: the durable position the holder saves, every lease/3, for the lag. */
static void relay_follow(struct relay *r)
{
    int64_t now_ms = relay_mono_ms();
    if (now_ms < r->next_follow_ms) {
        return;
    }
    r->next_follow_ms = now_ms + r->config.lease_ms / WORK_LEASE_RENEW_DIVISOR;
    int64_t position = 0;
    if (store_reader_relay_offset(r->reader, RELAY_NAME, &position) == 0) {
        atomic_store(&r->stats.position, position);
    }
}

static void *relay_loop(void *arg)
{
    svc_thread_name("relay", -1);
    struct relay *r = arg;
    while (!atomic_load(&r->stopping)) {
        relay_lease_tick(r);
        bool held = r->lease.held;
        bool read = held && relay_read(r);
        bool in_flight = mq_unconfirmed(r->mq) > 0;
        SVC_ASSERT(held || !in_flight); /* a loss dropped the window */
        /* Connected with messages in flight: the wait is for their confirms. Not holding the
         * lease, the poll only keeps the connection (heartbeats, reconnects). */
        int rc = mq_poll(r->mq, read || !in_flight ? 0 : RELAY_CONFIRM_WAIT_MS);
        if (held) {
            relay_save(r);
        } else {
            relay_follow(r);
        }
        relay_publish_stats(r);
        if (rc != 0 || (!read && !in_flight)) {
            relay_wait(r); /* broker down, nothing to do, or not the holder */
        }
    }
    return NULL;
}

int relay_start(struct relay *r)
{
    SVC_ASSERT(!r->started && r->reader == NULL);
    int rc = store_reader_open(&r->reader, r->config.db_uri);
    if (rc != 0) {
        log_error("relay: cannot open its reader (%d)", rc);
        return rc;
    }
    /* The lease is tried now: on SQLite, or when no live instance holds it, the relay starts
     * publishing from its durable position at once, as before leases. */
    log_info("relay: instance %s, lease of %" PRId64 " ms", r->holder, r->config.lease_ms);
    relay_lease_tick(r);
    if (!r->lease.held) {
        relay_follow(r);
        char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1];
        work_lease_holder(&r->lease, holder, sizeof holder);
        log_info("relay: another instance (%s) holds the relay's lease; this one waits",
                 holder[0] != '\0' ? holder : "unknown");
    }
    if (mq_connect(r->mq) != 0) {
        log_warn("relay: the broker is not reachable yet; events wait in the log");
    }
    relay_publish_stats(r);
    r->started = true;
    rc = pthread_create(&r->thread, NULL, relay_loop, r);
    if (rc != 0) {
        r->started = false;
        return -rc;
    }
    return 0;
}

void relay_stop(struct relay *r)
{
    if (r == NULL || !r->started) {
        return;
    }
    atomic_store(&r->stopping, true);
    relay_notify(r);
    pthread_join(r->thread, NULL);
    r->started = false;
    work_lease_release(&r->lease, r->reader, r->holder); /* the thread has ended */
    SVC_ASSERT(!r->started && !r->lease.held);
}
