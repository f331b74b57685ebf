/*
 * relay.h - the outbox relay (issue 12): publishes every committed event, in seq order, to the
 * RabbitMQ stream RELAY_STREAM, on a thread of its own (stockd --amqp URL).
 *
 * Each message carries message-id = the event's seq, type = its event type, headers store and
 * sku (when the event has them) and the event as GET /v1/events shows it as its JSON body.
 * The relay reads the event log with its own store reader from its durable position (table
 * relay_offsets, row RELAY_NAME), publishes through an mq publisher (mq/mq.h: confirms, a
 * bounded window, reconnects that republish what was unconfirmed) and advances the position
 * only to the last event of the confirmed prefix: after a crash, a restart or a broker outage
 * it resumes from there, so a consumer of the stream may see a seq twice but never misses one.
 * While the broker is down the service keeps selling; the relay's lag grows and relay_stats
 * says it is degraded (/health, /ready, /metrics).
 *
 * Several instances on one PostgreSQL, each with --amqp: only the holder of the relay's lease
 * (work/work_lease.h, stage RELAY_LEASE_STAGE of table worker_leases, --lease-ms and
 * --instance-id as for the workers) publishes. The others keep their broker connection and
 * follow the durable position, ready to take over. A holder that loses its lease (a renewal
 * found it taken, or none succeeded before its local deadline) stops at once: it drops every
 * message it has not seen confirmed (none is sent again) and saves no position any more. On
 * an acquisition the relay reads its durable position again and resumes from there, so a
 * takeover may publish again what the previous holder published after its last save, but
 * skips nothing. A clean stop gives the lease up, so another instance takes it at once. On
 * SQLite (one process) the lease is always held and nothing is stored, as for the workers.
 *
 * This file is not the AMQP client (mq/mq.h). Read relay.c next.
 */
#ifndef STOCKD_RELAY_H
#define STOCKD_RELAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The stream the events go to, and the relay's row in relay_offsets. */
#define RELAY_STREAM "stockd.events"
#define RELAY_NAME "events"
/* The relay's row in worker_leases. */
#define RELAY_LEASE_STAGE "relay"
/* The stream's retention: 1 GiB of events (a few million), and no age limit. */
#define RELAY_STREAM_BYTES_MAX (1024LL * 1024 * 1024)
/* Events read from the log per round (at most the window's free slots). */
#define RELAY_READ_EVENTS_MAX 512
/* One message body: an event as GET /v1/events shows it. */
#define RELAY_BODY_BYTES_MAX (64 * 1024)
/* How long the thread waits for confirms while messages are in flight, and for a commit (or
 * the next heartbeat and reconnect attempt) while idle. Both well under the heartbeat. */
#define RELAY_CONFIRM_WAIT_MS 5
#define RELAY_IDLE_WAIT_MS 100

struct relay_config {
    const char *db_uri;   /* the relay opens its own reader */
    const char *amqp_url; /* amqp://user:password@host:port/vhost */
    /* The last event seq the writer committed (borrowed; for the lag). */
    const _Atomic int64_t *committed_seq;
    const char *instance_id; /* the lease's holder id; NULL or "": hostname:pid:start-ms */
    int64_t lease_ms;        /* WORK_LEASE_MS_MIN..MAX; 0: WORK_LEASE_MS_DEFAULT */
};

/* What /health, /ready and /metrics show; written by the relay's thread, read by any. */
struct relay_stats {
    _Atomic bool connected;      /* the broker connection is up */
    _Atomic int64_t position;    /* the durable position: every event up to it is confirmed
                                  * (not holding the lease: as last read from storage) */
    _Atomic uint64_t published;  /* events confirmed by the broker (duplicates included) */
    _Atomic uint64_t errors;     /* lost connections, failed connects, nacks, failed saves */
    _Atomic uint64_t reconnects; /* connections made after the first */
};

struct relay; /* opaque: relay.c */

/* Allocates the relay (no thread, no connection yet); NULL when out of memory or when the URL
 * is not an amqp:// URL. The caller owns it: relay_stop, then relay_free. */
struct relay *relay_new(const struct relay_config *config);
/* Tries the lease (reading the durable position if it is won) and starts the thread; the
 * broker may be down (it connects when it can). 0 or an error (storage unreachable, no
 * thread). */
int relay_start(struct relay *relay);
/* Stops and joins the thread and gives the lease up (what was not confirmed is published
 * again by the next holder). */
void relay_stop(struct relay *relay);
/* Frees a relay that never started or was stopped (NULL is fine). */
void relay_free(struct relay *relay);
/* Wakes the thread: the writer committed events (its durable hook; any thread; NULL: none). */
void relay_notify(struct relay *relay);
const struct relay_stats *relay_stats(const struct relay *relay);
/* Events committed and not yet confirmed by the broker (any thread). */
int64_t relay_lag_events(const struct relay *relay);
/* Whether this instance holds the relay's lease now, and the holder it last saw ("" when
 * unknown); this instance's holder id (any thread). */
bool relay_holds(const struct relay *relay);
void relay_holder(struct relay *relay, char *out, size_t size);
const char *relay_instance_id(const struct relay *relay);

#endif
