/*
 * api_metrics.c - GET /metrics: the Prometheus text exposition (format 0.0.4) of the HTTP
 * routes (requests and latency per route, http_metrics.h), the writer, the read model, the
 * business counters, the workers, the relay, the intake and the process. Every family has its
 * # HELP and # TYPE; names follow the Prometheus conventions (promtool check metrics, which
 * tests/blackbox/test_metrics.py runs on a live scrape). The README's "Metrics" section lists
 * them; deploy/prometheus has a scrape configuration and alert rules that use them.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "http/api.h"
#include "http/http_metrics.h"
#include "http/server.h"
#include "work/work.h"
#include "pay/pay_breaker.h"
#include "intake/intake_consume.h"
#include "relay/relay.h"
#include "intake/intake_pub.h"
#include "base/log.h"
#include "base/svc_assert.h"

/* One scrape's text. The per-route series dominate: a few hundred lines in practice; the bound
 * holds every route with several methods and codes. Past it the exposition ends early (whole
 * lines only) and a warning is logged. */
#define API_METRICS_BYTES_MAX (1024 * 1024)
/* A line of /proc/self/stat (the command name is at most 16 bytes, the rest numbers). */
#define API_METRICS_PROC_LINE_BYTES_MAX 1024

struct api_metrics_out {
    char *text;
    size_t used;
    bool truncated;
};

/* Appends one or more whole lines, or nothing once the buffer is full. */
static void api_metrics_printf(struct api_metrics_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void api_metrics_printf(struct api_metrics_out *o, const char *fmt, ...)
{
    SVC_ASSERT(o->used < API_METRICS_BYTES_MAX);
    if (o->truncated) {
        return;
    }
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(o->text + o->used, API_METRICS_BYTES_MAX - o->used, fmt, args);
    va_end(args);
    if (n < 0 || (size_t)n >= API_METRICS_BYTES_MAX - o->used) {
        o->text[o->used] = '\0';
        o->truncated = true;
        return;
    }
    o->used += (size_t)n;
}

/* # HELP and # TYPE of a family. */
static void api_metrics_family(struct api_metrics_out *o, const char *name, const char *type,
                               const char *help)
{
    api_metrics_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family of one unlabelled sample. */
static void api_metrics_one(struct api_metrics_out *o, const char *name, const char *type,
                            const char *help, long long value)
{
    api_metrics_family(o, name, type, help);
    api_metrics_printf(o, "%s %lld\n", name, value);
}

static void api_metrics_one_seconds(struct api_metrics_out *o, const char *name, const char *type,
                                    const char *help, double seconds)
{
    api_metrics_family(o, name, type, help);
    api_metrics_printf(o, "%s %.6f\n", name, seconds);
}

static long long api_u64(uint64_t value)
{
    return value > (uint64_t)INT64_MAX ? INT64_MAX : (long long)value;
}

/* ---- HTTP -------------------------------------------------------------------------------- */

static void api_metrics_http(struct api_metrics_out *o)
{
    struct http_metrics_sum *sum = calloc(1, sizeof *sum);
    if (sum == NULL) {
        return; /* out of memory: the scrape goes out without the HTTP families */
    }
    http_threads_metrics(sum);
    api_metrics_family(o, "stockd_http_requests_total", "counter",
                       "HTTP responses by route pattern (\"unmatched\": no route), method and "
                       "status code.");
    for (unsigned r = 0; r <= ROUTES_MAX; r++) {
        if (r >= routes_count && r != HTTP_METRICS_UNMATCHED) {
            continue;
        }
        for (unsigned m = 0; m < HTTP_METRICS_METHODS; m++) {
            for (unsigned c = 0; c < HTTP_METRICS_CODES; c++) {
                if (sum->requests[r][m][c] != 0) {
                    api_metrics_printf(
                        o,
                        "stockd_http_requests_total{route=\"%s\",method=\"%s\",code=\"%s\"} "
                        "%lld\n",
                        http_metrics_route_name(r), http_metrics_method_names[m],
                        http_metrics_code_names[c], api_u64(sum->requests[r][m][c]));
                }
            }
        }
    }
    api_metrics_family(o, "stockd_http_request_duration_seconds", "histogram",
                       "Time from dispatch to the response's headers, by route pattern.");
    for (unsigned r = 0; r <= ROUTES_MAX; r++) {
        uint64_t cumulative = 0;
        for (unsigned b = 0; b <= HTTP_METRICS_BUCKETS; b++) {
            cumulative += sum->buckets[r][b];
        }
        if (cumulative == 0) {
            continue;
        }
        const char *route = http_metrics_route_name(r);
        cumulative = 0;
        for (unsigned b = 0; b < HTTP_METRICS_BUCKETS; b++) {
            cumulative += sum->buckets[r][b];
            api_metrics_printf(o,
                               "stockd_http_request_duration_seconds_bucket{route=\"%s\","
                               "le=\"%s\"} %lld\n",
                               route, http_metrics_bucket_le[b], api_u64(cumulative));
        }
        cumulative += sum->buckets[r][HTTP_METRICS_BUCKETS];
        api_metrics_printf(
            o,
            "stockd_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %lld\n"
            "stockd_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
            "stockd_http_request_duration_seconds_count{route=\"%s\"} %lld\n",
            route, api_u64(cumulative), route, (double)sum->duration_us_sum[r] / 1e6, route,
            api_u64(cumulative));
    }
    free(sum);
    api_metrics_one(o, "stockd_http_accept_pauses_total", "counter",
                    "Times an I/O thread paused accepting for want of file descriptors.",
                    api_u64(http_accept_pauses()));
    uint64_t connections[IO_THREADS_MAX];
    int threads = http_thread_connections(connections, IO_THREADS_MAX);
    api_metrics_family(o, "stockd_http_connections_total", "counter",
                       "Connections each I/O thread served (they go round the threads in turn).");
    for (int i = 0; i < threads; i++) {
        api_metrics_printf(o, "stockd_http_connections_total{thread=\"%d\"} %lld\n", i,
                           api_u64(connections[i]));
    }
}

/* ---- the writer ---------------------------------------------------------------------------- */

static void api_metrics_writer_histograms(const struct writer_stats *st, struct api_metrics_out *o)
{
    api_metrics_family(o, "stockd_writer_batch_size", "histogram", "Commands per committed batch.");
    unsigned long long cumulative = 0;
    for (unsigned b = 0; b < WRITER_BATCH_BUCKETS; b++) {
        cumulative += atomic_load(&st->batch_size_buckets[b]);
        api_metrics_printf(o, "stockd_writer_batch_size_bucket{le=\"%u\"} %llu\n", (2u << b) - 1,
                           cumulative);
    }
    api_metrics_printf(o,
                       "stockd_writer_batch_size_bucket{le=\"+Inf\"} %llu\n"
                       "stockd_writer_batch_size_sum %llu\n"
                       "stockd_writer_batch_size_count %llu\n",
                       cumulative, (unsigned long long)atomic_load(&st->commands), cumulative);
    api_metrics_family(o, "stockd_writer_commit_duration_seconds", "histogram",
                       "Time of a committed batch: prefetch, apply and its one transaction.");
    cumulative = 0;
    for (unsigned b = 0; b < WRITER_COMMIT_BUCKETS; b++) {
        cumulative += atomic_load(&st->commit_us_buckets[b]);
        api_metrics_printf(o, "stockd_writer_commit_duration_seconds_bucket{le=\"%g\"} %llu\n",
                           (double)writer_commit_bucket_us[b] / 1e6, cumulative);
    }
    cumulative += atomic_load(&st->commit_us_buckets[WRITER_COMMIT_BUCKETS]);
    api_metrics_printf(o,
                       "stockd_writer_commit_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                       "stockd_writer_commit_duration_seconds_sum %.6f\n"
                       "stockd_writer_commit_duration_seconds_count %llu\n",
                       cumulative, (double)atomic_load(&st->commit_us_total) / 1e6, cumulative);
}

static void api_metrics_writer(struct app *app, struct api_metrics_out *o)
{
    const struct writer_stats *st = &app->writer.stats;
    api_metrics_one(o, "stockd_writer_batches_total", "counter", "Batches committed.",
                    api_u64(atomic_load(&st->batches)));
    api_metrics_one(o, "stockd_writer_commands_total", "counter", "Commands in committed batches.",
                    api_u64(atomic_load(&st->commands)));
    api_metrics_one(o, "stockd_writer_batch_size_max", "gauge",
                    "The largest batch committed since the start.",
                    api_u64(atomic_load(&st->batch_size_max)));
    api_metrics_one(o, "stockd_writer_batch_failures_total", "counter",
                    "Batches that could not be made durable (their commands got 503).",
                    api_u64(atomic_load(&st->batch_failures)));
    api_metrics_one(o, "stockd_writer_batch_retries_total", "counter",
                    "Batches read and applied again after losing a race to another instance "
                    "(shared store).",
                    api_u64(atomic_load(&st->batch_retries)));
    api_metrics_one(o, "stockd_idempotent_replays_total", "counter",
                    "Commands answered from their idempotency record instead of applied again.",
                    api_u64(atomic_load(&st->replays)));
    api_metrics_one_seconds(o, "stockd_writer_commit_seconds_total", "counter",
                            "Time spent in committed batches.",
                            (double)atomic_load(&st->commit_us_total) / 1e6);
    api_metrics_one_seconds(o, "stockd_writer_commit_seconds_max", "gauge",
                            "The longest committed batch since the start.",
                            (double)atomic_load(&st->commit_us_max) / 1e6);
    api_metrics_writer_histograms(st, o);
    static const char *const kinds[WRITER_STORE_ERROR_KINDS] = {"prefetch", "commit", "conflict"};
    api_metrics_family(o, "stockd_store_errors_total", "counter",
                       "Store failures of the writer's batches by kind: prefetch (the reads), "
                       "commit (the transaction), conflict (races lost to other instances).");
    for (unsigned k = 0; k < WRITER_STORE_ERROR_KINDS; k++) {
        api_metrics_printf(o, "stockd_store_errors_total{kind=\"%s\"} %lld\n", kinds[k],
                           api_u64(atomic_load(&st->store_errors[k])));
    }
    api_metrics_one(o, "stockd_store_busy_waits_total", "counter",
                    "Times the store was busy and the writer waited (SQLite).",
                    api_u64(store_busy_wait_count(app->writer.config.store)));
    struct store_wal_counts wal;
    store_wal_counts(app->writer.config.store, &wal);
    api_metrics_one(o, "stockd_store_wal_pages_total", "counter",
                    "Pages the commits appended to the write-ahead log (SQLite; 0 on "
                    "PostgreSQL, which keeps its own).",
                    api_u64(wal.pages));
    api_metrics_one(o, "stockd_store_checkpoints_total", "counter",
                    "Copies of the write-ahead log into the database file (SQLite; 0 on "
                    "PostgreSQL, which checkpoints itself).",
                    api_u64(wal.checkpoints));
    api_metrics_one(o, "stockd_writer_storage_ok", "gauge",
                    "1 while the last batch committed, 0 after a failed one.",
                    atomic_load(&app->writer.storage_ok) ? 1 : 0);
    api_metrics_one(o, "stockd_queue_depth", "gauge", "Commands waiting for the writer.",
                    (long long)queue_depth(&app->queue));
    api_metrics_one(o, "stockd_queue_capacity", "gauge",
                    "The writer queue's size; a full queue answers 429.",
                    (long long)app->queue.capacity);
}

/* ---- business ---------------------------------------------------------------------------- */

/* The order status an event of the log moves an order to, or NULL. */
static const char *api_metrics_order_status(enum event_type type)
{
    switch (type) {
    case EVENT_ORDER_COMPLETED: return "COMPLETED";
    case EVENT_ORDER_CREATED: return "PENDING";
    case EVENT_ORDER_CONFIRMED: return "CONFIRMED";
    case EVENT_ORDER_PAID: return "PAID";
    case EVENT_ORDER_PAYMENT_FAILED: return "PAYMENT_FAILED";
    case EVENT_ORDER_CANCELLED: return "CANCELLED";
    case EVENT_ORDER_EXPIRED: return "EXPIRED";
    case EVENT_ORDER_DEAD_LETTERED: return "DEAD_LETTERED";
    default: return NULL;
    }
}

/* What the read model holds of each table sized by a --max-* flag. */
struct api_metrics_rows {
    long long stores;
    long long products;
    long long items;
    long long reservations; /* ACTIVE, as the writer holds them */
};

/* stockd_table_capacity and stockd_table_rows. */
static void api_metrics_capacity(struct api_metrics_out *o, const struct capacity *cap,
                                 const struct api_metrics_rows *rows)
{
    const struct {
        const char *table;
        uint32_t capacity;
        long long rows;
    } tables[] = {
        {"stores", cap->stores, rows->stores},
        {"products", cap->products, rows->products},
        {"stock_items", cap->items, rows->items},
        {"reservations", cap->reservations, rows->reservations},
    };
    api_metrics_family(o, "stockd_table_capacity", "gauge",
                       "Rows an in-memory table may hold (the --max-* flags); past it a command "
                       "gets 507 capacity_exceeded. reservations: ACTIVE ones.");
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        api_metrics_printf(o, "stockd_table_capacity{table=\"%s\"} %u\n", tables[i].table,
                           (unsigned)tables[i].capacity);
    }
    api_metrics_family(o, "stockd_table_rows", "gauge",
                       "Rows an in-memory table holds, as the read model sees them; "
                       "reservations: the ACTIVE ones the writer holds.");
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        api_metrics_printf(o, "stockd_table_rows{table=\"%s\"} %lld\n", tables[i].table,
                           tables[i].rows);
    }
}

static void api_metrics_business(struct app *app, struct api_metrics_out *o)
{
    const struct writer_stats *st = &app->writer.stats;
    api_metrics_family(o, "stockd_events_committed_total", "counter",
                       "Events this instance's writer committed, by type.");
    for (unsigned t = 0; t < EVENT_TYPE_COUNT; t++) {
        api_metrics_printf(o, "stockd_events_committed_total{type=\"%s\"} %lld\n",
                           event_type_name((enum event_type)t),
                           api_u64(atomic_load(&st->events[t])));
    }
    api_metrics_family(o, "stockd_orders_total", "counter",
                       "Orders that reached each status (COMPLETED: a purchase), from the "
                       "events this instance's writer committed.");
    for (unsigned t = 0; t < EVENT_TYPE_COUNT; t++) {
        const char *status = api_metrics_order_status((enum event_type)t);
        if (status != NULL) {
            api_metrics_printf(o, "stockd_orders_total{status=\"%s\"} %lld\n", status,
                               api_u64(atomic_load(&st->events[t])));
        }
    }
    static const char *const refusals[WRITER_REFUSAL_KINDS] = {"purchase", "reservation", "order",
                                                               "other"};
    api_metrics_family(o, "stockd_stock_refusals_total", "counter",
                       "Commands refused for want of stock (409 insufficient_stock: an oversell "
                       "prevented), by command.");
    for (unsigned k = 0; k < WRITER_REFUSAL_KINDS; k++) {
        api_metrics_printf(o, "stockd_stock_refusals_total{command=\"%s\"} %lld\n", refusals[k],
                           api_u64(atomic_load(&st->stock_refusals[k])));
    }
    struct projection *v = projector_read_begin(&app->projector);
    struct projector_totals totals;
    projector_totals_get(v, &totals);
    int64_t lag_ms = projector_lag_ms(&app->projector, v);
    struct api_metrics_rows rows = {projector_store_count(v), projector_product_count(v),
                                    projector_item_count(v),
                                    (long long)atomic_load(&app->writer.stats.reservations_held)};
    projector_read_end(&app->projector, v);
    api_metrics_capacity(o, &app->config.capacity, &rows);
    api_metrics_one(o, "stockd_units_sold_total", "counter",
                    "Units sold over every item, as the read model holds them.",
                    (long long)totals.units_sold);
    api_metrics_family(o, "stockd_reservations", "gauge",
                       "Reservations (and checkout orders' holds) by status, as the read model "
                       "holds them.");
    for (int s = PROJECTOR_ACTIVE; s <= PROJECTOR_EXPIRED; s++) {
        char status[16];
        snprintf(status, sizeof status, "%s", projector_status_name((enum projector_status)s));
        for (char *c = status; *c != '\0'; c++) {
            *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
        }
        api_metrics_printf(o, "stockd_reservations{status=\"%s\"} %lld\n", status,
                           (long long)totals.reservations[s]);
    }
    api_metrics_one_seconds(o, "stockd_projection_lag_seconds", "gauge",
                            "How far the read model is behind the newest committed event.",
                            (double)lag_ms / 1000.0);
    api_metrics_one(o, "stockd_follower_catch_ups_total", "counter",
                    "Reads of the log that found other instances' events.",
                    api_u64(atomic_load(&app->follower.catch_ups)));
    api_metrics_one(o, "stockd_read_only", "gauge", "1 while read-only mode refuses writes.",
                    atomic_load(&app->read_only) ? 1 : 0);
    api_metrics_one(o, "stockd_expiry_paused", "gauge",
                    "1 while the expiry sweep of due holds is paused.",
                    atomic_load(&app->writer.expiry_paused) ? 1 : 0);
}

static void api_metrics_snapshots(struct app *app, struct api_metrics_out *o)
{
    api_metrics_one(o, "stockd_snapshots_written_total", "counter",
                    "Snapshots of the read model written.",
                    api_u64(atomic_load(&app->projector.snapshots_written)));
    api_metrics_one(o, "stockd_snapshot_seq", "gauge",
                    "The event seq of the newest snapshot loaded or written (0: none).",
                    (long long)atomic_load(&app->projector.snapshot_seq));
    api_metrics_one(o, "stockd_snapshot_bytes", "gauge", "Size of the last snapshot written.",
                    (long long)atomic_load(&app->projector.snapshot_bytes));
}

static void api_metrics_stream(struct api_metrics_out *o)
{
    struct api_stream_stats st;
    api_stream_stats(&st);
    api_metrics_one(o, "stockd_stream_subscribers", "gauge", "Open GET /v1/stream subscriptions.",
                    api_u64(st.subscribers));
    api_metrics_family(o, "stockd_stream_dropped_total", "counter",
                       "Stream subscribers dropped, by reason.");
    api_metrics_printf(o,
                       "stockd_stream_dropped_total{reason=\"behind\"} %lld\n"
                       "stockd_stream_dropped_total{reason=\"write_timeout\"} %lld\n"
                       "stockd_stream_dropped_total{reason=\"ring_overflow\"} %lld\n",
                       api_u64(st.dropped_behind), api_u64(st.dropped_timeout),
                       api_u64(st.dropped_overflow));
    api_metrics_one(o, "stockd_stream_refused_total", "counter",
                    "Stream subscriptions refused (too many).", api_u64(st.refused));
}

/* ---- workers, payment, relay, intake -------------------------------------------------------- */

/* The circuit breaker around the payment provider (zeros without workers). */
static void api_metrics_payment(struct app *app, struct api_metrics_out *o)
{
    struct pay_breaker *breaker = atomic_load(&app->pay_breaker);
    static const struct pay_breaker_stats none; /* --workers off: closed, nothing counted */
    const struct pay_breaker_stats *st = breaker != NULL ? pay_breaker_stats(breaker) : &none;
    api_metrics_one(o, "stockd_payment_circuit_state", "gauge",
                    "The payment provider's circuit: 0 closed, 1 half-open, 2 open.",
                    atomic_load(&st->state));
    api_metrics_one(o, "stockd_payment_circuit_opens_total", "counter",
                    "Times the payment circuit opened.", api_u64(atomic_load(&st->opens)));
    api_metrics_one(o, "stockd_payment_circuit_consecutive_failures", "gauge",
                    "Payment calls failed in a row.",
                    api_u64(atomic_load(&st->consecutive_failures)));
    api_metrics_one(o, "stockd_payment_circuit_refused_total", "counter",
                    "Payment calls refused while the circuit was open.",
                    api_u64(atomic_load(&st->refused)));
    api_metrics_one(o, "stockd_payment_circuit_probes_total", "counter",
                    "Half-open probe calls to the payment provider.",
                    api_u64(atomic_load(&st->probes)));
    api_metrics_one(o, "stockd_payment_provider_charges_total", "counter",
                    "Charges sent to the payment provider.", api_u64(atomic_load(&st->charges)));
    api_metrics_one(o, "stockd_payment_provider_timeouts_total", "counter",
                    "Payment provider calls that timed out.", api_u64(atomic_load(&st->timeouts)));
}

/* The order and payment workers: leases, and with workers on, their offsets in the log and
 * how far behind its newest event they are, and the payment dead letters now. */
static void api_metrics_workers(struct app *app, struct api_metrics_out *o)
{
    struct work *w = atomic_load(&app->work);
    api_metrics_one(o, "stockd_dead_letters", "gauge",
                    "Payment dead letters now (work items that exhausted their attempts).",
                    w != NULL ? (long long)atomic_load(&work_stats(w)->dead_letters) : 0);
    api_metrics_family(o, "stockd_worker_lease_held", "gauge",
                       "1 when this instance holds the stage's worker lease.");
    api_metrics_printf(o,
                       "stockd_worker_lease_held{stage=\"order\"} %d\n"
                       "stockd_worker_lease_held{stage=\"payment\"} %d\n",
                       w != NULL && work_holds(w, CMD_STAGE_ORDER) ? 1 : 0,
                       w != NULL && work_holds(w, CMD_STAGE_PAYMENT) ? 1 : 0);
    if (w == NULL) {
        return;
    }
    const struct work_stats *st = work_stats(w);
    long long head = (long long)atomic_load(&app->projector.log_seq);
    long long order = (long long)atomic_load(&st->order_offset);
    long long payment = (long long)atomic_load(&st->payment_offset);
    api_metrics_family(o, "stockd_worker_offset", "gauge",
                       "The last event seq the stage's worker read.");
    api_metrics_printf(o,
                       "stockd_worker_offset{stage=\"order\"} %lld\n"
                       "stockd_worker_offset{stage=\"payment\"} %lld\n",
                       order, payment);
    api_metrics_family(o, "stockd_worker_lag_events", "gauge",
                       "Committed events the stage's worker has not read yet.");
    api_metrics_printf(o,
                       "stockd_worker_lag_events{stage=\"order\"} %lld\n"
                       "stockd_worker_lag_events{stage=\"payment\"} %lld\n",
                       head > order ? head - order : 0, head > payment ? head - payment : 0);
}

/* The outbox relay's metrics (--amqp only; without it they are absent, not zero). */
static void api_metrics_relay(struct app *app, struct api_metrics_out *o)
{
    struct relay *relay = atomic_load(&app->relay);
    if (relay == NULL) {
        return;
    }
    const struct relay_stats *st = relay_stats(relay);
    api_metrics_one(o, "stockd_relay_lag_events", "gauge",
                    "Committed events the relay has not had confirmed by the broker.",
                    (long long)relay_lag_events(relay));
    api_metrics_one(o, "stockd_relay_published_total", "counter",
                    "Events the broker confirmed (duplicates included).",
                    api_u64(atomic_load(&st->published)));
    api_metrics_one(o, "stockd_relay_errors_total", "counter",
                    "Relay errors: lost connections, failed connects, nacks, failed saves.",
                    api_u64(atomic_load(&st->errors)));
    api_metrics_one(o, "stockd_relay_connected", "gauge",
                    "1 while the relay's broker "
                    "connection is up.",
                    atomic_load(&st->connected) ? 1 : 0);
    api_metrics_one(o, "stockd_relay_position", "gauge",
                    "The relay's durable position: every event up to it is confirmed.",
                    (long long)atomic_load(&st->position));
    api_metrics_one(o, "stockd_relay_lease_held", "gauge",
                    "1 on the one instance that holds the relay's lease (publishes).",
                    relay_holds(relay) ? 1 : 0);
}

/* The intake consumer's metrics (--amqp only; without it they are absent, not zero). Its
 * errors and connection are named consumer_: the publisher's are stockd_intake_errors_total and
 * stockd_intake_connected. */
static void api_metrics_intake_consumer(struct app *app, struct api_metrics_out *o)
{
    struct intake_consume *ic = atomic_load(&app->intake);
    if (ic == NULL) {
        return;
    }
    const struct intake_consume_stats *st = intake_consume_stats(ic);
    long long resume = (long long)atomic_load(&st->resume_offset);
    long long last = (long long)atomic_load(&st->last_offset);
    api_metrics_one(o, "stockd_intake_consumed_total", "counter",
                    "Stream messages the intake consumer received.",
                    api_u64(atomic_load(&st->consumed)));
    api_metrics_family(o, "stockd_intake_answers_total", "counter",
                       "The intake consumer's answers by outcome.");
    api_metrics_printf(o,
                       "stockd_intake_answers_total{outcome=\"applied\"} %lld\n"
                       "stockd_intake_answers_total{outcome=\"refused\"} %lld\n"
                       "stockd_intake_answers_total{outcome=\"replayed\"} %lld\n"
                       "stockd_intake_answers_total{outcome=\"dead_lettered\"} %lld\n",
                       api_u64(atomic_load(&st->applied)), api_u64(atomic_load(&st->refused)),
                       api_u64(atomic_load(&st->replayed)),
                       api_u64(atomic_load(&st->dead_lettered)));
    api_metrics_one(o, "stockd_intake_retries_total", "counter",
                    "Intake commands sent to the writer again.",
                    api_u64(atomic_load(&st->retried)));
    api_metrics_one(o, "stockd_intake_consumer_errors_total", "counter",
                    "The intake consumer's broker errors.", api_u64(atomic_load(&st->errors)));
    api_metrics_one(o, "stockd_intake_consumer_connected", "gauge",
                    "1 while the intake consumer's broker connection is up.",
                    atomic_load(&st->connected) ? 1 : 0);
    api_metrics_one(o, "stockd_intake_offset", "gauge",
                    "The intake consumer's resume offset in the stream.", resume);
    api_metrics_one(o, "stockd_intake_last_offset", "gauge",
                    "The last stream offset delivered to the intake consumer.", last);
    api_metrics_one(o, "stockd_intake_in_flight", "gauge",
                    "Stream messages delivered and not answered yet.",
                    last + 1 > resume ? last + 1 - resume : 0);
    api_metrics_family(o, "stockd_intake_dead_letters_total", "counter",
                       "Stream messages sent to the dead-letter table, by stage.");
    api_metrics_printf(o, "stockd_intake_dead_letters_total{stage=\"commands\"} %lld\n",
                       api_u64(atomic_load(&st->dead_lettered)));
    api_metrics_one(o, "stockd_intake_lease_held", "gauge",
                    "1 on the one instance that holds the intake consumer's lease.",
                    intake_consume_holds(ic) ? 1 : 0);
}

/* Asynchronous intake's metrics (--amqp only; without it they are absent, not zero). */
static void api_metrics_intake(struct app *app, struct api_metrics_out *o)
{
    struct intake_pub *pub = atomic_load(&app->intake_pub);
    if (pub == NULL) {
        return;
    }
    const struct intake_pub_stats *st = intake_pub_stats(pub);
    struct api_intake_stats is;
    api_intake_stats(&is);
    api_metrics_one(o, "stockd_intake_accepted_total", "counter",
                    "Asynchronous commands accepted (202).", api_u64(is.accepted));
    api_metrics_family(o, "stockd_intake_refused_total", "counter",
                       "Asynchronous commands refused, by reason.");
    api_metrics_printf(o,
                       "stockd_intake_refused_total{reason=\"not_connected\"} %lld\n"
                       "stockd_intake_refused_total{reason=\"full\"} %lld\n"
                       "stockd_intake_refused_total{reason=\"timeout\"} %lld\n",
                       api_u64(is.refused_not_connected), api_u64(is.refused_full),
                       api_u64(is.refused_timeout));
    api_metrics_one(o, "stockd_intake_confirms_total", "counter", "Publishes the broker confirmed.",
                    api_u64(atomic_load(&st->confirmed)));
    api_metrics_one(o, "stockd_intake_errors_total", "counter",
                    "The intake publisher's broker errors.", api_u64(atomic_load(&st->errors)));
    api_metrics_one(o, "stockd_intake_connected", "gauge",
                    "1 while the intake publisher's broker connection is up.",
                    atomic_load(&st->connected) ? 1 : 0);
}

/* ---- the process ----------------------------------------------------------------------------- */

/* The number after "btime " in /proc/stat: the boot time in seconds since the epoch, or -1. */
static long long api_metrics_boot_time(void)
{
    FILE *f = fopen("/proc/stat", "re");
    if (f == NULL) {
        return -1;
    }
    char line[API_METRICS_PROC_LINE_BYTES_MAX];
    long long boot = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "btime %lld", &boot) == 1) {
            break;
        }
    }
    fclose(f);
    return boot;
}

/* The entries of /proc/self/fd but the one reading it, or -1. */
static long long api_metrics_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) {
        return -1;
    }
    long long count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        count += entry->d_name[0] != '.';
    }
    closedir(dir);
    return count > 0 ? count - 1 : 0;
}

/* process_* as the Prometheus client libraries name them, from /proc/self. A value /proc does
 * not give is left out. */
static void api_metrics_process(struct api_metrics_out *o)
{
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/stat", "re");
    char line[API_METRICS_PROC_LINE_BYTES_MAX];
    bool read = f != NULL && fgets(line, sizeof line, f) != NULL;
    if (f != NULL) {
        fclose(f);
    }
    const char *after = read ? strrchr(line, ')') : NULL; /* the name may hold spaces */
    unsigned long long utime = 0, stime = 0, start = 0, vsize = 0;
    long long rss = 0;
    /* Fields 3.. of proc(5) after the name: state ppid pgrp session tty tpgid flags minflt
     * cminflt majflt cmajflt utime stime cutime cstime priority nice threads itrealvalue
     * starttime vsize rss. */
    if (after != NULL && ticks > 0 && page > 0 &&
        sscanf(after + 1,
               " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
               "%llu %llu %lld",
               &utime, &stime, &start, &vsize, &rss) == 5) {
        api_metrics_one_seconds(o, "process_cpu_seconds_total", "counter",
                                "Total user and system CPU time spent in seconds.",
                                (double)(utime + stime) / (double)ticks);
        api_metrics_one(o, "process_resident_memory_bytes", "gauge",
                        "Resident memory size in bytes.", rss * page);
        api_metrics_one(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                        api_u64(vsize));
        long long boot = api_metrics_boot_time();
        if (boot >= 0) {
            api_metrics_one_seconds(o, "process_start_time_seconds", "gauge",
                                    "Start time of the process since unix epoch in seconds.",
                                    (double)boot + (double)start / (double)ticks);
        }
    }
    long long fds = api_metrics_open_fds();
    if (fds >= 0) {
        api_metrics_one(o, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
    }
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
        api_metrics_one(o, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
                        (long long)limit.rlim_cur);
    }
}

void api_metrics(struct http_request *r)
{
    struct app *app = r->thread->app;
    struct api_metrics_out o = {.text = h2o_mem_alloc_pool(&r->req->pool, API_METRICS_BYTES_MAX)};
    api_metrics_http(&o);
    api_metrics_writer(app, &o);
    api_metrics_business(app, &o);
    api_metrics_snapshots(app, &o);
    api_metrics_stream(&o);
    api_metrics_payment(app, &o);
    api_metrics_workers(app, &o);
    api_metrics_relay(app, &o);
    api_metrics_intake(app, &o);
    api_metrics_intake_consumer(app, &o);
    api_metrics_process(&o);
    if (o.truncated) {
        log_warn("metrics: the exposition is over %d bytes; the families after %zu bytes are "
                 "left out",
                 API_METRICS_BYTES_MAX, o.used);
    }
    SVC_ASSERT(o.used < API_METRICS_BYTES_MAX);
    http_send(r, 200, "text/plain; version=0.0.4; charset=utf-8", o.text, o.used);
}
