/*
 * api_ops.c - operations routes: /health (the process answers; "degraded" while the payment
 * provider's circuit is not closed), /ready (storage reachable and not shutting down; both show
 * the outbox relay's and the intake publisher's state with --amqp) and /openapi.yaml (the API
 * document, compiled in). /metrics is api_metrics.c, the home page (the dashboard) api_dash.c.
 */
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "pay/pay_breaker.h"
#include "intake/intake_consume.h"
#include "relay/relay.h"
#include "intake/intake_pub.h"
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

void api_health(struct http_request *r)
{
    /* Writable: the body it always had; read-only mode adds readOnly, --amqp the relay. The
     * process answers, so the status code stays 200 (liveness): a payment provider whose
     * circuit is open or half-open makes it "degraded", with a check that names the provider
     * and the state. */
    struct app *app = r->thread->app;
    bool on = atomic_load(&app->read_only);
    struct pay_breaker *breaker = atomic_load(&app->pay_breaker);
    int state =
        breaker != NULL ? atomic_load(&pay_breaker_stats(breaker)->state) : PAY_BREAKER_CLOSED;
    char body[API_HEALTH_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, state == PAY_BREAKER_CLOSED ? "{\"status\":\"ok\"" : "{\"status\":\"degraded\"");
    if (on) {
        jbuf_lit(&b, ",\"readOnly\":true");
    }
    if (state != PAY_BREAKER_CLOSED) {
        SVC_ASSERT(breaker != NULL);
        const struct pay_breaker_stats *st = pay_breaker_stats(breaker);
        jbuf_lit(&b, ",\"checks\":[{\"name\":\"payment_provider\",\"status\":\"degraded\"");
        jbuf_kv_str(&b, "provider", pay_breaker_provider(breaker)->name);
        jbuf_kv_str(&b, "circuit", pay_breaker_state_name((enum pay_breaker_state)state));
        jbuf_kv_int(&b, "consecutiveFailures", (int64_t)atomic_load(&st->consecutive_failures));
        jbuf_lit(&b, "}]");
    }
    api_relay_json(app, &b);
    api_intake_json(app, &b);
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
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
