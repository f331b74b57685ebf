/*
 * api_ops.c - operations routes: /health (the state of each dependency: storage, writer,
 * projection, relay, payment provider; 503 when storage is unreachable or the writer stalled),
 * /ready (storage reachable and not shutting down; both show the outbox relay's and the intake
 * publisher's state with --amqp) and /openapi.yaml (the API document, compiled in). /metrics
 * is api_metrics.c, the home page (the dashboard) api_dash.c.
 */
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "pay/pay_breaker.h"
#include "intake/intake_consume.h"
#include "relay/relay.h"
#include "intake/intake_pub.h"
#include "base/clock.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"

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

void api_openapi(struct http_request *r)
{
    SVC_ASSERT(openapi_yaml_length > 0 && openapi_yaml[openapi_yaml_length] == '\0');
    http_send(r, 200, "application/yaml", openapi_yaml, openapi_yaml_length);
}
