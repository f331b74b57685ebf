/*
 * api_ops.c - operations routes: /health (the state of each dependency: storage, writer,
 * projection, relay, payment provider; 503 when storage is unreachable or the writer stalled),
 * /ready (storage reachable and not shutting down; both show
 * the outbox relay's and the intake publisher's state with --amqp), /metrics (Prometheus
 * text), /openapi.yaml (the API document, compiled in) and the home page.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "http/server.h"
#include "work/work.h"
#include "pay/pay_breaker.h"
#include "intake/intake_consume.h"
#include "relay/relay.h"
#include "intake/intake_pub.h"
#include "base/clock.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"

#define API_METRICS_BYTES_MAX 16384
/* A /health or /ready body: the relay's and the intake consumer's two holder ids each,
 * escaped (6 bytes a byte at worst), and the rest far below 1 KiB. */
#define API_HEALTH_BYTES_MAX (1024 + 4 * 6 * STORE_LEASE_HOLDER_BYTES_MAX)

/* openapi.yaml at the repository root, embedded at build time by tools/embed.py (meson.build):
 * its bytes and a terminating 0 that the length does not count. */
extern const char openapi_yaml[];
extern const size_t openapi_yaml_length;

/* ,"lease":{"held":..,"holder":..} of a stage this instance holds or not, and the holder it
 * last saw (null when unknown). */
static void api_lease_json(struct jbuf *b, bool held, const char *holder)
{
    jbuf_lit(b, held ? ",\"lease\":{\"held\":true" : ",\"lease\":{\"held\":false");
    if (holder[0] != '\0') {
        jbuf_kv_str(b, "holder", holder);
    } else {
        jbuf_lit(b, ",\"holder\":null");
    }
    jbuf_lit(b, "}");
}

/* The outbox relay's member of /health and /ready (--amqp only): ,"relay":{...}. Degraded
 * while the broker connection is down; the lag is the events committed and not confirmed.
 * lease says whether this instance holds the relay's lease (only the holder publishes) and
 * who does, as far as it knows; instanceId is this instance's name in the lease. */
static void api_relay_json(struct app *app, struct jbuf *b)
{
    struct relay *relay = atomic_load(&app->relay);
    if (relay == NULL) {
        return;
    }
    bool up = atomic_load(&relay_stats(relay)->connected);
    jbuf_lit(b, up ? ",\"relay\":{\"status\":\"ok\"" : ",\"relay\":{\"status\":\"degraded\"");
    jbuf_kv_int(b, "lagEvents", relay_lag_events(relay));
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1];
    relay_holder(relay, holder, sizeof holder);
    api_lease_json(b, relay_holds(relay), holder);
    jbuf_kv_str(b, "instanceId", relay_instance_id(relay));
    jbuf_lit(b, "}");
}

/* Asynchronous intake's member of /health and /ready (--amqp only): ,"intake":{...}. Degraded
 * while the publisher's or the consumer's broker connection is down (asynchronous requests get
 * 503; synchronous ones sell); publisher and consumer say which. The consumer of an instance
 * that does not hold its lease (another instance consumes) has no broker connection: it is
 * "standby", which degrades nothing. offset is the consumer's resume offset in the stream (a
 * standby's as it last consumed or read it), inFlight the messages delivered and not answered
 * yet; lease and instanceId as the relay's. */
static void api_intake_json(struct app *app, struct jbuf *b)
{
    struct intake_pub *pub = atomic_load(&app->intake_pub);
    struct intake_consume *ic = atomic_load(&app->intake);
    if (pub == NULL && ic == NULL) {
        return;
    }
    bool pub_up = pub != NULL && atomic_load(&intake_pub_stats(pub)->connected);
    bool standby = ic != NULL && !intake_consume_holds(ic);
    bool consumer_up = ic != NULL && (standby || atomic_load(&intake_consume_stats(ic)->connected));
    jbuf_lit(b, pub_up && consumer_up ? ",\"intake\":{\"status\":\"ok\""
                                      : ",\"intake\":{\"status\":\"degraded\"");
    jbuf_kv_str(b, "publisher", pub_up ? "ok" : "degraded");
    jbuf_kv_str(b, "consumer", standby ? "standby" : consumer_up ? "ok" : "degraded");
    if (ic != NULL) {
        const struct intake_consume_stats *st = intake_consume_stats(ic);
        int64_t resume = atomic_load(&st->resume_offset);
        int64_t last = atomic_load(&st->last_offset);
        jbuf_kv_int(b, "offset", resume);
        jbuf_kv_int(b, "inFlight", last + 1 > resume ? last + 1 - resume : 0);
        char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1];
        intake_consume_holder(ic, holder, sizeof holder);
        api_lease_json(b, !standby, holder);
        jbuf_kv_str(b, "instanceId", intake_consume_instance_id(ic));
    }
    jbuf_lit(b, "}");
}

/* A check's verdict, better first: the body's status is the worst of its checks. */
enum api_health_level { API_HEALTH_OK, API_HEALTH_DEGRADED, API_HEALTH_DOWN };

static const char *api_health_name(enum api_health_level level)
{
    SVC_ASSERT(level >= API_HEALTH_OK && level <= API_HEALTH_DOWN);
    return level == API_HEALTH_OK ? "ok" : level == API_HEALTH_DEGRADED ? "degraded" : "down";
}

static enum api_health_level api_health_worst(enum api_health_level a, enum api_health_level b)
{
    return a > b ? a : b;
}

/* "storage":{..}: down when this thread's reader cannot read the database (unreachable),
 * degraded when it can but the writer's last batch failed to commit (a full disk, a lock held
 * elsewhere: writes get 503 while reads serve). Always the first member of checks. */
static enum api_health_level api_health_storage(struct http_request *r, struct jbuf *b)
{
    struct app *app = r->thread->app;
    int64_t seq = 0;
    bool reachable =
        r->thread->reader != NULL && store_reader_event_seq_max(r->thread->reader, &seq) == 0;
    bool committed = atomic_load(&app->writer.storage_ok);
    enum api_health_level level = !reachable   ? API_HEALTH_DOWN
                                  : !committed ? API_HEALTH_DEGRADED
                                               : API_HEALTH_OK;
    jbuf_lit(b, "\"storage\":{");
    jbuf_kv_str(b, "status", api_health_name(level));
    jbuf_kv_str(b, "backend", app->config.store_uri[0] != '\0' ? "postgres" : "sqlite");
    jbuf_lit(b, reachable ? ",\"reachable\":true" : ",\"reachable\":false");
    jbuf_lit(b, committed ? ",\"lastCommitOk\":true}" : ",\"lastCommitOk\":false}");
    return level;
}

/* ,"writer":{..}: down when stalled (writer_stalled), with the queue and the batch timings. */
static enum api_health_level api_health_writer(struct app *app, struct jbuf *b)
{
    int64_t now_ms = clock_mono_us() / 1000;
    size_t depth = queue_depth(&app->queue);
    bool stalled = writer_stalled(&app->writer, depth, now_ms);
    int64_t started_ms = atomic_load(&app->writer.batch_started_ms);
    int64_t ended_ms = atomic_load(&app->writer.batch_ended_ms);
    enum api_health_level level = stalled ? API_HEALTH_DOWN : API_HEALTH_OK;
    jbuf_lit(b, ",\"writer\":{");
    jbuf_kv_str(b, "status", api_health_name(level));
    jbuf_kv_int(b, "queueDepth", (int64_t)depth);
    jbuf_kv_int(b, "queueCapacity", (int64_t)app->queue.capacity);
    jbuf_kv_int(b, "batchInHandMs",
                started_ms != 0 && now_ms > started_ms ? now_ms - started_ms : 0);
    jbuf_kv_int(b, "lastBatchAgeMs", now_ms > ended_ms ? now_ms - ended_ms : 0);
    jbuf_lit(b, stalled ? ",\"stalled\":true}" : ",\"stalled\":false}");
    return level;
}

/* ,"projection":{..}: the read model's lag behind the event log; degraded past
 * HEALTH_PROJECTION_LAG_MS (reads answer from an older state). */
static enum api_health_level api_health_projection(struct app *app, struct jbuf *b)
{
    struct projection *v = projector_read_begin(&app->projector);
    int64_t lag_ms = projector_lag_ms(&app->projector, v);
    int64_t applied = projector_applied_seq(v);
    projector_read_end(&app->projector, v);
    SVC_ASSERT(lag_ms >= 0);
    enum api_health_level level =
        lag_ms > HEALTH_PROJECTION_LAG_MS ? API_HEALTH_DEGRADED : API_HEALTH_OK;
    jbuf_lit(b, ",\"projection\":{");
    jbuf_kv_str(b, "status", api_health_name(level));
    jbuf_kv_int(b, "lagMs", lag_ms);
    jbuf_kv_int(b, "appliedSeq", applied);
    jbuf_kv_int(b, "committedSeq", writer_acked_seq(&app->writer));
    jbuf_lit(b, "}");
    return level;
}

/* ,"payment":{..} when a payment provider runs: degraded while its circuit is open or
 * half-open, with the provider, the circuit and the failures in a row. */
static enum api_health_level api_health_payment(struct app *app, struct jbuf *b)
{
    struct pay_breaker *breaker = atomic_load(&app->pay_breaker);
    if (breaker == NULL) {
        return API_HEALTH_OK;
    }
    const struct pay_breaker_stats *st = pay_breaker_stats(breaker);
    int state = atomic_load(&st->state);
    enum api_health_level level = state == PAY_BREAKER_CLOSED ? API_HEALTH_OK : API_HEALTH_DEGRADED;
    jbuf_lit(b, ",\"payment\":{");
    jbuf_kv_str(b, "status", api_health_name(level));
    jbuf_kv_str(b, "name", "payment_provider");
    jbuf_kv_str(b, "provider", pay_breaker_provider(breaker)->name);
    jbuf_kv_str(b, "circuit", pay_breaker_state_name((enum pay_breaker_state)state));
    jbuf_kv_int(b, "consecutiveFailures", (int64_t)atomic_load(&st->consecutive_failures));
    jbuf_lit(b, "}");
    return level;
}

/* The level of the member api_relay_json or api_intake_json wrote at b's start on: degraded
 * when its status (its first member) says so. */
static enum api_health_level api_health_member_level(const struct jbuf *b, size_t start)
{
    static const char degraded[] = "{\"status\":\"degraded\"";
    SVC_ASSERT(start <= b->length && jbuf_ok(b));
    if (b->length == start) {
        return API_HEALTH_OK; /* absent (no --amqp) */
    }
    const char *open = strchr(b->data + start, '{'); /* after ,"name": */
    SVC_ASSERT(open != NULL);
    return strncmp(open, degraded, sizeof degraded - 1) == 0 ? API_HEALTH_DEGRADED : API_HEALTH_OK;
}

void api_health(struct http_request *r)
{
    /* {"status","readOnly"?,"checks":{storage,writer,projection,relay?,payment?},"relay"?,
     * "intake"?}: the status is the worst of the checks and of intake. 200 for ok and degraded
     * (the process answers and sells), 503 for down: storage unreachable or the writer
     * stalled. /ready stays the load balancer's yes/no. relay and intake stay at the top as
     * they always were; relay is also a check. */
    struct app *app = r->thread->app;
    char *checks_text = h2o_mem_alloc_pool(&r->req->pool, API_HEALTH_BYTES_MAX);
    struct jbuf checks;
    jbuf_init(&checks, checks_text, API_HEALTH_BYTES_MAX);
    enum api_health_level level = api_health_storage(r, &checks);
    level = api_health_worst(level, api_health_writer(app, &checks));
    level = api_health_worst(level, api_health_projection(app, &checks));
    size_t relay_start = checks.length;
    api_relay_json(app, &checks);
    level = api_health_worst(level, api_health_member_level(&checks, relay_start));
    level = api_health_worst(level, api_health_payment(app, &checks));
    char *intake_text = h2o_mem_alloc_pool(&r->req->pool, API_HEALTH_BYTES_MAX);
    struct jbuf intake;
    jbuf_init(&intake, intake_text, API_HEALTH_BYTES_MAX);
    api_intake_json(app, &intake);
    level = api_health_worst(level, api_health_member_level(&intake, 0));
    SVC_ASSERT(jbuf_ok(&checks) && jbuf_ok(&intake));
    char *body = h2o_mem_alloc_pool(&r->req->pool, 3 * API_HEALTH_BYTES_MAX);
    struct jbuf b;
    jbuf_init(&b, body, 3 * API_HEALTH_BYTES_MAX);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "status", api_health_name(level));
    if (atomic_load(&app->read_only)) {
        jbuf_lit(&b, ",\"readOnly\":true");
    }
    jbuf_lit(&b, ",\"checks\":{");
    jbuf_raw(&b, checks.data, checks.length);
    jbuf_lit(&b, "}");
    api_relay_json(app, &b);
    jbuf_raw(&b, intake.data, intake.length);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, level == API_HEALTH_DOWN ? 503 : 200, body, b.length);
}

void api_ready(struct http_request *r)
{
    struct app *app = r->thread->app;
    if (atomic_load(&app->shutting_down)) {
        http_send_problem(r, SVC_ESHUTTING_DOWN, NULL, NULL, 0);
        return;
    }
    if (!atomic_load(&app->writer.storage_ok)) {
        http_send_problem(r, SVC_ESTORAGE_UNAVAILABLE, "the last batch failed to commit", NULL, 0);
        return;
    }
    /* A broker that is down is no reason to stop selling: still ready, the relay degraded. */
    char *body = h2o_mem_alloc_pool(&r->req->pool, API_HEALTH_BYTES_MAX);
    struct jbuf b;
    jbuf_init(&b, body, API_HEALTH_BYTES_MAX);
    jbuf_lit(&b, "{\"status\":\"ready\"");
    api_relay_json(app, &b);
    api_intake_json(app, &b);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
}

/* Appends printf output to the metrics buffer, keeping *used within size. */
static void api_metrics_printf(char *out, size_t size, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void api_metrics_printf(char *out, size_t size, size_t *used, const char *fmt, ...)
{
    SVC_ASSERT(*used <= size);
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(out + *used, size - *used, fmt, args);
    va_end(args);
    if (n > 0) {
        *used += (size_t)n < size - *used ? (size_t)n : size - *used - 1;
    }
}

static void api_metrics_writer(const struct writer_stats *st, char *out, size_t size, size_t *used)
{
    api_metrics_printf(out, size, used,
                       "# TYPE stockd_writer_batches_total counter\n"
                       "stockd_writer_batches_total %llu\n"
                       "# TYPE stockd_writer_commands_total counter\n"
                       "stockd_writer_commands_total %llu\n"
                       "# TYPE stockd_writer_batch_size_max gauge\n"
                       "stockd_writer_batch_size_max %llu\n"
                       "# TYPE stockd_writer_batch_failures_total counter\n"
                       "stockd_writer_batch_failures_total %llu\n"
                       "# TYPE stockd_idempotent_replays_total counter\n"
                       "stockd_idempotent_replays_total %llu\n"
                       "# TYPE stockd_writer_commit_seconds_total counter\n"
                       "stockd_writer_commit_seconds_total %.6f\n"
                       "# TYPE stockd_writer_commit_seconds_max gauge\n"
                       "stockd_writer_commit_seconds_max %.6f\n"
                       "# TYPE stockd_writer_batch_size histogram\n",
                       (unsigned long long)atomic_load(&st->batches),
                       (unsigned long long)atomic_load(&st->commands),
                       (unsigned long long)atomic_load(&st->batch_size_max),
                       (unsigned long long)atomic_load(&st->batch_failures),
                       (unsigned long long)atomic_load(&st->replays),
                       (double)atomic_load(&st->commit_us_total) / 1e6,
                       (double)atomic_load(&st->commit_us_max) / 1e6);
    unsigned long long cumulative = 0;
    for (unsigned b = 0; b < WRITER_BATCH_BUCKETS; b++) {
        cumulative += atomic_load(&st->batch_size_buckets[b]);
        api_metrics_printf(out, size, used, "stockd_writer_batch_size_bucket{le=\"%u\"} %llu\n",
                           (2u << b) - 1, cumulative);
    }
    api_metrics_printf(out, size, used,
                       "stockd_writer_batch_size_bucket{le=\"+Inf\"} %llu\n"
                       "stockd_writer_batch_size_count %llu\n"
                       "stockd_writer_batch_size_sum %llu\n",
                       cumulative, cumulative, (unsigned long long)atomic_load(&st->commands));
}

static void api_metrics_stream(char *out, size_t size, size_t *used)
{
    struct api_stream_stats st;
    api_stream_stats(&st);
    api_metrics_printf(out, size, used,
                       "# TYPE stockd_stream_subscribers gauge\n"
                       "stockd_stream_subscribers %llu\n"
                       "# TYPE stockd_stream_dropped_total counter\n"
                       "stockd_stream_dropped_total{reason=\"behind\"} %llu\n"
                       "stockd_stream_dropped_total{reason=\"write_timeout\"} %llu\n"
                       "stockd_stream_dropped_total{reason=\"ring_overflow\"} %llu\n"
                       "# TYPE stockd_stream_refused_total counter\n"
                       "stockd_stream_refused_total %llu\n"
                       "# TYPE stockd_http_accept_pauses_total counter\n"
                       "stockd_http_accept_pauses_total %llu\n",
                       (unsigned long long)st.subscribers, (unsigned long long)st.dropped_behind,
                       (unsigned long long)st.dropped_timeout,
                       (unsigned long long)st.dropped_overflow, (unsigned long long)st.refused,
                       (unsigned long long)http_accept_pauses());
}

static int64_t api_projection_lag_ms(struct app *app)
{
    struct projection *v = projector_read_begin(&app->projector);
    int64_t lag = projector_lag_ms(&app->projector, v);
    projector_read_end(&app->projector, v);
    return lag;
}

/* The circuit breaker around the payment provider (zeros without workers). */
static void api_metrics_payment(struct app *app, char *out, size_t size, size_t *used)
{
    struct pay_breaker *breaker = atomic_load(&app->pay_breaker);
    static const struct pay_breaker_stats none; /* --workers off: closed, nothing counted */
    const struct pay_breaker_stats *st = breaker != NULL ? pay_breaker_stats(breaker) : &none;
    api_metrics_printf(out, size, used,
                       "# TYPE stockd_payment_circuit_state gauge\n"
                       "stockd_payment_circuit_state %d\n"
                       "# TYPE stockd_payment_circuit_opens_total counter\n"
                       "stockd_payment_circuit_opens_total %llu\n"
                       "# TYPE stockd_payment_circuit_consecutive_failures gauge\n"
                       "stockd_payment_circuit_consecutive_failures %llu\n"
                       "# TYPE stockd_payment_circuit_refused_total counter\n"
                       "stockd_payment_circuit_refused_total %llu\n"
                       "# TYPE stockd_payment_circuit_probes_total counter\n"
                       "stockd_payment_circuit_probes_total %llu\n"
                       "# TYPE stockd_payment_provider_charges_total counter\n"
                       "stockd_payment_provider_charges_total %llu\n"
                       "# TYPE stockd_payment_provider_timeouts_total counter\n"
                       "stockd_payment_provider_timeouts_total %llu\n",
                       atomic_load(&st->state), (unsigned long long)atomic_load(&st->opens),
                       (unsigned long long)atomic_load(&st->consecutive_failures),
                       (unsigned long long)atomic_load(&st->refused),
                       (unsigned long long)atomic_load(&st->probes),
                       (unsigned long long)atomic_load(&st->charges),
                       (unsigned long long)atomic_load(&st->timeouts));
}

/* The payment dead letters now, as the workers count them (0 without workers). */
static int64_t api_dead_letters(struct app *app)
{
    struct work *w = atomic_load(&app->work);
    return w != NULL ? atomic_load(&work_stats(w)->dead_letters) : 0;
}

/* The outbox relay's metrics (--amqp only; without it they are absent, not zero). */
static void api_metrics_relay(struct app *app, char *out, size_t size, size_t *used)
{
    struct relay *relay = atomic_load(&app->relay);
    if (relay == NULL) {
        return;
    }
    const struct relay_stats *st = relay_stats(relay);
    api_metrics_printf(out, size, used,
                       "# TYPE stockd_relay_lag_events gauge\nstockd_relay_lag_events %lld\n"
                       "# TYPE stockd_relay_published_total counter\n"
                       "stockd_relay_published_total %llu\n"
                       "# TYPE stockd_relay_errors_total counter\n"
                       "stockd_relay_errors_total %llu\n"
                       "# TYPE stockd_relay_connected gauge\nstockd_relay_connected %d\n"
                       "# TYPE stockd_relay_position gauge\nstockd_relay_position %lld\n",
                       (long long)relay_lag_events(relay),
                       (unsigned long long)atomic_load(&st->published),
                       (unsigned long long)atomic_load(&st->errors),
                       atomic_load(&st->connected) ? 1 : 0, (long long)atomic_load(&st->position));
    /* 1 on the one instance that holds the relay's lease (publishes), 0 on the others. */
    api_metrics_printf(out, size, used,
                       "# TYPE stockd_relay_lease_held gauge\nstockd_relay_lease_held %d\n",
                       relay_holds(relay) ? 1 : 0);
}

/* The intake consumer's metrics (--amqp only; without it they are absent, not zero). Its
 * errors and connection are named consumer_: the publisher's are stockd_intake_errors_total and
 * stockd_intake_connected. */
static void api_metrics_intake_consumer(struct app *app, char *out, size_t size, size_t *used)
{
    struct intake_consume *ic = atomic_load(&app->intake);
    if (ic == NULL) {
        return;
    }
    const struct intake_consume_stats *st = intake_consume_stats(ic);
    long long resume = (long long)atomic_load(&st->resume_offset);
    long long last = (long long)atomic_load(&st->last_offset);
    api_metrics_printf(
        out, size, used,
        "# TYPE stockd_intake_consumed_total counter\nstockd_intake_consumed_total %llu\n"
        "# TYPE stockd_intake_answers_total counter\n"
        "stockd_intake_answers_total{outcome=\"applied\"} %llu\n"
        "stockd_intake_answers_total{outcome=\"refused\"} %llu\n"
        "stockd_intake_answers_total{outcome=\"replayed\"} %llu\n"
        "stockd_intake_answers_total{outcome=\"dead_lettered\"} %llu\n"
        "# TYPE stockd_intake_retries_total counter\nstockd_intake_retries_total %llu\n"
        "# TYPE stockd_intake_consumer_errors_total counter\n"
        "stockd_intake_consumer_errors_total %llu\n"
        "# TYPE stockd_intake_consumer_connected gauge\nstockd_intake_consumer_connected %d\n"
        "# TYPE stockd_intake_offset gauge\nstockd_intake_offset %lld\n"
        "# TYPE stockd_intake_last_offset gauge\nstockd_intake_last_offset %lld\n"
        "# TYPE stockd_intake_in_flight gauge\nstockd_intake_in_flight %lld\n"
        "# TYPE stockd_intake_dead_letters_total counter\n"
        "stockd_intake_dead_letters_total{stage=\"commands\"} %llu\n"
        "# TYPE stockd_intake_lease_held gauge\nstockd_intake_lease_held %d\n",
        (unsigned long long)atomic_load(&st->consumed),
        (unsigned long long)atomic_load(&st->applied),
        (unsigned long long)atomic_load(&st->refused),
        (unsigned long long)atomic_load(&st->replayed),
        (unsigned long long)atomic_load(&st->dead_lettered),
        (unsigned long long)atomic_load(&st->retried), (unsigned long long)atomic_load(&st->errors),
        atomic_load(&st->connected) ? 1 : 0, resume, last,
        last + 1 > resume ? last + 1 - resume : 0,
        (unsigned long long)atomic_load(&st->dead_lettered), intake_consume_holds(ic) ? 1 : 0);
}

/* Asynchronous intake's metrics (--amqp only; without it they are absent, not zero). */
static void api_metrics_intake(struct app *app, char *out, size_t size, size_t *used)
{
    struct intake_pub *pub = atomic_load(&app->intake_pub);
    if (pub == NULL) {
        return;
    }
    const struct intake_pub_stats *st = intake_pub_stats(pub);
    struct api_intake_stats is;
    api_intake_stats(&is);
    api_metrics_printf(
        out, size, used,
        "# TYPE stockd_intake_accepted_total counter\n"
        "stockd_intake_accepted_total %llu\n"
        "# TYPE stockd_intake_refused_total counter\n"
        "stockd_intake_refused_total{reason=\"not_connected\"} %llu\n"
        "stockd_intake_refused_total{reason=\"full\"} %llu\n"
        "stockd_intake_refused_total{reason=\"timeout\"} %llu\n"
        "# TYPE stockd_intake_confirms_total counter\n"
        "stockd_intake_confirms_total %llu\n"
        "# TYPE stockd_intake_errors_total counter\n"
        "stockd_intake_errors_total %llu\n"
        "# TYPE stockd_intake_connected gauge\nstockd_intake_connected %d\n",
        (unsigned long long)is.accepted, (unsigned long long)is.refused_not_connected,
        (unsigned long long)is.refused_full, (unsigned long long)is.refused_timeout,
        (unsigned long long)atomic_load(&st->confirmed),
        (unsigned long long)atomic_load(&st->errors), atomic_load(&st->connected) ? 1 : 0);
}

void api_metrics(struct http_request *r)
{
    struct app *app = r->thread->app;
    char *out = h2o_mem_alloc_pool(&r->req->pool, API_METRICS_BYTES_MAX);
    size_t used = 0;
    api_metrics_writer(&app->writer.stats, out, API_METRICS_BYTES_MAX, &used);
    api_metrics_printf(out, API_METRICS_BYTES_MAX, &used,
                       "# TYPE stockd_store_busy_waits_total counter\n"
                       "stockd_store_busy_waits_total %llu\n"
                       "# TYPE stockd_writer_batch_retries_total counter\n"
                       "stockd_writer_batch_retries_total %llu\n"
                       "# TYPE stockd_follower_catch_ups_total counter\n"
                       "stockd_follower_catch_ups_total %llu\n"
                       "# TYPE stockd_projection_lag_seconds gauge\n"
                       "stockd_projection_lag_seconds %.3f\n"
                       "# TYPE stockd_queue_depth gauge\nstockd_queue_depth %zu\n",
                       (unsigned long long)store_busy_wait_count(app->writer.config.store),
                       (unsigned long long)atomic_load(&app->writer.stats.batch_retries),
                       (unsigned long long)atomic_load(&app->follower.catch_ups),
                       (double)api_projection_lag_ms(app) / 1000.0, queue_depth(&app->queue));
    api_metrics_stream(out, API_METRICS_BYTES_MAX, &used);
    api_metrics_printf(out, API_METRICS_BYTES_MAX, &used,
                       "# TYPE stockd_snapshots_written_total counter\n"
                       "stockd_snapshots_written_total %llu\n"
                       "# TYPE stockd_snapshot_seq gauge\nstockd_snapshot_seq %lld\n"
                       "# TYPE stockd_snapshot_bytes gauge\nstockd_snapshot_bytes %lld\n",
                       (unsigned long long)atomic_load(&app->projector.snapshots_written),
                       (long long)atomic_load(&app->projector.snapshot_seq),
                       (long long)atomic_load(&app->projector.snapshot_bytes));
    api_metrics_printf(out, API_METRICS_BYTES_MAX, &used,
                       "# TYPE stockd_read_only gauge\nstockd_read_only %d\n"
                       "# TYPE stockd_expiry_paused gauge\nstockd_expiry_paused %d\n"
                       "# TYPE stockd_dead_letters gauge\nstockd_dead_letters %lld\n",
                       atomic_load(&app->read_only) ? 1 : 0,
                       atomic_load(&app->writer.expiry_paused) ? 1 : 0,
                       (long long)api_dead_letters(app));
    api_metrics_payment(app, out, API_METRICS_BYTES_MAX, &used);
    api_metrics_relay(app, out, API_METRICS_BYTES_MAX, &used);
    api_metrics_intake(app, out, API_METRICS_BYTES_MAX, &used);
    api_metrics_intake_consumer(app, out, API_METRICS_BYTES_MAX, &used);
    struct work *w = atomic_load(&app->work);
    api_metrics_printf(out, API_METRICS_BYTES_MAX, &used,
                       "# TYPE stockd_worker_lease_held gauge\n"
                       "stockd_worker_lease_held{stage=\"order\"} %d\n"
                       "stockd_worker_lease_held{stage=\"payment\"} %d\n",
                       w != NULL && work_holds(w, CMD_STAGE_ORDER) ? 1 : 0,
                       w != NULL && work_holds(w, CMD_STAGE_PAYMENT) ? 1 : 0);
    api_metrics_printf(out, API_METRICS_BYTES_MAX, &used,
                       "# TYPE stockd_http_requests_total counter\n");
    for (size_t i = 0; i < routes_count; i++) {
        api_metrics_printf(out, API_METRICS_BYTES_MAX, &used,
                           "stockd_http_requests_total{method=\"%s\",route=\"%s\"} %llu\n",
                           routes_table[i].method, routes_table[i].pattern,
                           (unsigned long long)atomic_load(&routes_table[i].stats.calls));
    }
    SVC_ASSERT(used < API_METRICS_BYTES_MAX);
    http_send(r, 200, "text/plain; version=0.0.4", out, used);
}

void api_openapi(struct http_request *r)
{
    SVC_ASSERT(openapi_yaml_length > 0 && openapi_yaml[openapi_yaml_length] == '\0');
    http_send(r, 200, "application/yaml", openapi_yaml, openapi_yaml_length);
}

void api_home(struct http_request *r)
{
    static const char page[] =
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stockd</title></head>"
        "<body><h1>stockd</h1><p>Inventory and orders for flash sales: one writer, batched "
        "group commit, no oversell, no duplicate orders.</p><ul>"
        "<li><a href=\"/health\">/health</a></li><li><a href=\"/ready\">/ready</a></li>"
        "<li><a href=\"/metrics\">/metrics</a></li>"
        "<li><a href=\"/openapi.yaml\">/openapi.yaml</a> (the API)</li>"
        "<li><a href=\"/inventory\">/inventory</a> (seed 004 ticket)</li></ul></body></html>";
    http_send(r, 200, "text/html; charset=utf-8", page, sizeof page - 1);
}
