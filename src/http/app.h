/*
 * app.h - the process-wide singletons, wired by main and immutable after startup.
 *
 * I/O threads reach the writer only through `queue` (and get replies back on their own
 * queue, server.c); they read inventory only from `projector`, the read model fed by
 * committed events, after waiting for it to catch up with `writer_acked_seq` (api_read_fresh
 * in api_common.c); they read orders, the event log and idempotency records through their own
 * store reader, and stats through atomics. The domain belongs to the writer alone: no I/O
 * thread touches it. Nothing here is locked because nothing here changes after the threads
 * start (STYLE 4), but for the operator's switches, which are atomics. This file is not the server
 * (server.h). Read routes.h next.
 */
#ifndef STOCKD_APP_H
#define STOCKD_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "http/auth.h"
#include "core/domain.h"
#include "read/follower.h"
#include "read/projector.h"
#include "base/svc_limits.h"
#include "core/queue.h"
#include "core/writer.h"

struct app_config {
    char listen_host[64];
    int listen_port; /* 0 picks a free port; the chosen one is printed */
    char data_dir[512];
    char db_path[600];                  /* <data_dir>/stockd.db, or the --store uri */
    char store_uri[600];                /* --store postgres://...; empty: SQLite in data_dir */
    int io_thread_count;                /* default: the number of cores */
    bool allow_reset;                   /* seed 004 POST /reset */
    bool audit_only;                    /* --audit: check the data directory's log and exit */
    char ticket_sku[SKU_BYTES_MAX + 1]; /* the item of the seed-004 aliases */
    int64_t idem_retention_ms;
    const char *tokens_file;       /* --tokens-file, or NULL (then STOCKD_TOKENS, data dir) */
    const char *access_log;        /* --access-log PATH ("-": stderr), or NULL: none */
    enum auth_role anonymous_role; /* --anonymous-role: a request without a token has it */
    /* Checkout orders' workers (issue 11): --workers on|off and the payment simulator. */
    bool workers;
    double payment_failure_rate; /* 0..1 */
    double payment_timeout_rate; /* 0..1 */
    int64_t payment_latency_ms;
    char payment_ledger[600];      /* --payment-ledger; default <data_dir>/payment-ledger.txt */
    char payment_url[600];         /* --payment-url: the HTTP provider; "": the simulator */
    int64_t payment_timeout_ms;    /* --payment-timeout-ms: the HTTP provider's deadline */
    bool payment_breaker;          /* --payment-breaker: a circuit breaker around the provider */
    int64_t snapshot_every_events; /* --snapshot-every-events; 0: no snapshots are written */
    char amqp_url[512]; /* --amqp: the broker of the outbox relay and of asynchronous intake;
                         * empty: neither */
    bool relay;         /* --relay on|off: with --amqp, run the outbox relay */
    /* The workers' leases (several instances on one PostgreSQL): --lease-ms, --instance-id. */
    int64_t lease_ms;
    char instance_id[128];    /* the leases' holder id; "": main fills hostname:pid:start-ms */
    struct capacity capacity; /* --max-stores, --max-products, --max-stock-items,
                               * --max-reservations */
};

struct work;
struct pay_sim;
struct pay_breaker;
struct relay;
struct intake_consume;
struct intake_pub;

struct app {
    struct app_config config;
    struct domain domain; /* the writer's; never read by I/O threads */
    struct queue queue;
    struct writer writer;
    struct projector projector;  /* the read model; fed by the writer's committed hook */
    struct follower follower;    /* shared backends: follows other instances' events */
    struct auth auth;            /* bearer tokens, filled before the threads start */
    _Atomic(struct work *) work; /* the checkout workers (NULL: --workers off), woken by commits */
    _Atomic(struct pay_sim *) pay_sim; /* their payment simulator (NULL: --workers off or
                                        * --payment-url) */
    /* The circuit breaker around their payment provider (NULL: --workers off). */
    _Atomic(struct pay_breaker *) pay_breaker;
    _Atomic(struct relay *) relay; /* the outbox relay (NULL: no --amqp), woken by commits */
    /* The consumer of the stream of commands (NULL: no --amqp; intake/intake_consume.h). */
    _Atomic(struct intake_consume *) intake;
    /* The publisher of asynchronous commands (NULL: no --amqp; intake/intake_pub.h). */
    _Atomic(struct intake_pub *) intake_pub;
    /* PUT /v1/admin/read-only: while set, every command route (ROUTE_WRITE) answers 503
     * read_only with Retry-After and the reads serve (routes_dispatch). In memory only. */
    _Atomic bool read_only;
    int64_t started_wall_ms;
    _Atomic bool shutting_down;
};

#endif
