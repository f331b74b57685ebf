/*
 * api_admin.c - the operator's controls of checkout orders (issue 11, admin role):
 *   GET  /v1/admin/workers                       each stage's state, offset, lag, counts and
 *                                                lease (held here? the holder)
 *   POST /v1/admin/workers/{stage}:pause|:resume  order, payment or expiry
 *   PUT  /v1/admin/payment                       the payment simulator's knobs
 *   PUT  /v1/admin/read-only                     every command route 503 read_only, or not
 * and seed 001's aliases (POST /admin/worker/{order|payment}/pause|resume,
 * POST /admin/payment/failure-rate {rate}, POST /admin/api/read-only/on|off), which answer
 * what their /v1 route answers. The switches are atomics of the workers (work_pause), the
 * writer (expiry_paused), the simulator (pay_sim_set_knobs) and the app (read_only); none of
 * them is stored: a restart runs everything, writable, with the flags' knobs.
 * Read api_ops.c next.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"
#include "pay/pay_breaker.h"
#include "pay/pay_sim.h"
#include "work/work.h"

/* The stages an operator pauses: the workers' two and the writer's expiry sweep. */
enum api_stage { API_STAGE_ORDER, API_STAGE_PAYMENT, API_STAGE_EXPIRY, API_STAGE_COUNT };

static const char *const api_stage_names[API_STAGE_COUNT] = {"order", "payment", "expiry"};

/* The stage named by the first len bytes of name; API_STAGE_COUNT when none. */
static enum api_stage api_stage_parse(const char *name, size_t len)
{
    for (int s = 0; s < API_STAGE_COUNT; s++) {
        if (strlen(api_stage_names[s]) == len && memcmp(api_stage_names[s], name, len) == 0) {
            return (enum api_stage)s;
        }
    }
    return API_STAGE_COUNT;
}

static bool api_stage_paused(struct app *app, enum api_stage stage)
{
    struct work *w = atomic_load(&app->work);
    switch (stage) {
    case API_STAGE_ORDER: return w != NULL && work_paused(w, CMD_STAGE_ORDER);
    case API_STAGE_PAYMENT: return w != NULL && work_paused(w, CMD_STAGE_PAYMENT);
    case API_STAGE_EXPIRY: return atomic_load(&app->writer.expiry_paused);
    case API_STAGE_COUNT: break;
    }
    SVC_UNREACHABLE();
}

/* A worker stage's lease: whether this instance holds it and who does (null when unknown);
 * null for the expiry sweep, which the writer of every instance runs (work/work.h). */
static void api_stage_lease_json(struct jbuf *b, struct work *w, enum api_stage stage)
{
    if (w == NULL || stage == API_STAGE_EXPIRY) {
        jbuf_lit(b, ",\"lease\":null");
        return;
    }
    enum cmd_stage s = stage == API_STAGE_ORDER ? CMD_STAGE_ORDER : CMD_STAGE_PAYMENT;
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1];
    work_holder(w, s, holder, sizeof holder);
    jbuf_lit(b, work_holds(w, s) ? ",\"lease\":{\"held\":true" : ",\"lease\":{\"held\":false");
    if (holder[0] != '\0') {
        jbuf_kv_str(b, "holder", holder);
    } else {
        jbuf_lit(b, ",\"holder\":null");
    }
    jbuf_lit(b, "}");
}

/* One stage's object of GET /v1/admin/workers. The expiry sweep reads no log: no offset. */
static void api_stage_json(struct jbuf *b, struct app *app, enum api_stage stage)
{
    struct work *w = atomic_load(&app->work);
    const struct work_stats *st = w != NULL ? work_stats(w) : NULL;
    bool worker_stage = stage != API_STAGE_EXPIRY;
    jbuf_lit(b, "{");
    jbuf_kv_str(b, "stage", api_stage_names[stage]);
    jbuf_kv_str(b, "state",
                worker_stage && w == NULL      ? "off"
                : api_stage_paused(app, stage) ? "paused"
                                               : "running");
    if (worker_stage && st != NULL) {
        int64_t head = writer_acked_seq(&app->writer);
        int64_t live = projector_live_seq(&app->projector);
        head = live > head ? live : head;
        int64_t offset =
            atomic_load(stage == API_STAGE_ORDER ? &st->order_offset : &st->payment_offset);
        uint64_t processed = stage == API_STAGE_ORDER
                                 ? atomic_load(&st->confirmed) + atomic_load(&st->rejected)
                                 : atomic_load(&st->paid) + atomic_load(&st->payment_failed);
        uint64_t failures = stage == API_STAGE_ORDER
                                ? atomic_load(&st->order_refused)
                                : atomic_load(&st->retries) + atomic_load(&st->parked);
        jbuf_kv_int(b, "offset", offset);
        jbuf_kv_int(b, "lag", head > offset ? head - offset : 0);
        jbuf_kv_int(b, "processed", (int64_t)processed);
        jbuf_kv_int(b, "failures", (int64_t)failures);
    } else if (worker_stage) {
        jbuf_lit(b, ",\"offset\":null,\"lag\":null,\"processed\":0,\"failures\":0");
    } else {
        jbuf_lit(b, ",\"offset\":null,\"lag\":null");
        jbuf_kv_int(b, "processed", (int64_t)atomic_load(&app->writer.expiry_events));
        jbuf_kv_int(b, "failures", 0);
    }
    api_stage_lease_json(b, w, stage);
    jbuf_lit(b, "}");
}

/* "paymentCircuit" of GET /v1/admin/workers: the payment provider's circuit breaker, or null
 * under --workers off. */
static void api_circuit_json(struct jbuf *b, struct pay_breaker *breaker)
{
    jbuf_key(b, "paymentCircuit");
    if (breaker == NULL) {
        jbuf_lit(b, "null");
        return;
    }
    const struct pay_breaker_stats *st = pay_breaker_stats(breaker);
    jbuf_lit(b, "{");
    jbuf_kv_str(b, "provider", pay_breaker_provider(breaker)->name);
    jbuf_kv_str(b, "state",
                pay_breaker_state_name((enum pay_breaker_state)atomic_load(&st->state)));
    jbuf_kv_int(b, "opens", (int64_t)atomic_load(&st->opens));
    jbuf_kv_int(b, "consecutiveFailures", (int64_t)atomic_load(&st->consecutive_failures));
    jbuf_kv_int(b, "charges", (int64_t)atomic_load(&st->charges));
    jbuf_kv_int(b, "refused", (int64_t)atomic_load(&st->refused));
    jbuf_lit(b, "}");
}

void api_admin_workers(struct http_request *r)
{
    struct app *app = r->thread->app;
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    jbuf_lit(&b, "{\"workers\":[");
    for (int s = 0; s < API_STAGE_COUNT; s++) {
        if (s > 0) {
            jbuf_lit(&b, ",");
        }
        api_stage_json(&b, app, (enum api_stage)s);
    }
    jbuf_lit(&b, "]");
    jbuf_lit(&b, atomic_load(&app->read_only) ? ",\"readOnly\":true" : ",\"readOnly\":false");
    api_circuit_json(&b, atomic_load(&app->pay_breaker));
    struct work *w = atomic_load(&app->work);
    if (w != NULL) {
        jbuf_kv_str(&b, "instanceId", work_instance_id(w));
    } else {
        jbuf_lit(&b, ",\"instanceId\":null");
    }
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
}

/* Pauses or resumes the stage named by name (len bytes) and answers its object (200), 404
 * for another name, 409 for a worker stage when this instance runs no workers. */
static void api_stage_set(struct http_request *r, const char *name, size_t len, bool paused)
{
    struct app *app = r->thread->app;
    enum api_stage stage = api_stage_parse(name, len);
    if (stage == API_STAGE_COUNT) {
        http_send_problem(r, SVC_ENOT_FOUND, "the stages are order, payment and expiry", NULL, 0);
        return;
    }
    struct work *w = atomic_load(&app->work);
    if (stage == API_STAGE_EXPIRY) {
        atomic_store(&app->writer.expiry_paused, paused);
        queue_wake(&app->queue); /* the idle writer looks again at what is due */
    } else if (w == NULL) {
        http_send_problem(r, SVC_ENOT_FOUND,
                          "no in-process payment simulator here (--workers off, or the workers "
                          "charge an HTTP provider: --payment-url)",
                          NULL, 0);
        return;
    } else {
        work_pause(w, stage == API_STAGE_ORDER ? CMD_STAGE_ORDER : CMD_STAGE_PAYMENT, paused);
    }
    char body[READ_BODY_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, body, sizeof body);
    api_stage_json(&b, app, stage);
    SVC_ASSERT(jbuf_ok(&b));
    http_send_json(r, 200, body, b.length);
}

/* POST /v1/admin/workers/{stage}:pause and :resume: the route's pattern tells which. */
void api_admin_worker_pause(struct http_request *r)
{
    api_stage_set(r, r->path_param.base, r->path_param.len, true);
}

void api_admin_worker_resume(struct http_request *r)
{
    api_stage_set(r, r->path_param.base, r->path_param.len, false);
}

/* Seed 001: POST /admin/worker/{stage}/pause and /resume. */
void api_seed_worker_pause(struct http_request *r)
{
    api_stage_set(r, r->path_param.base, r->path_param.len, true);
}

void api_seed_worker_resume(struct http_request *r)
{
    api_stage_set(r, r->path_param.base, r->path_param.len, false);
}

/* ---- the payment simulator's knobs -------------------------------------------------------- */

/* A rate member in [0, 1] as millionths: 1 set, 0 absent, or SVC_EVALIDATION. */
static int api_get_rate(json_t *body, const char *name, int64_t *out_ppm, const char **why)
{
    json_t *v = json_object_get(body, name);
    if (v == NULL) {
        return 0;
    }
    double rate = json_number_value(v);
    if (!json_is_number(v) || !(rate >= 0.0 && rate <= 1.0)) {
        *why = "rates are numbers from 0 to 1";
        return SVC_EVALIDATION;
    }
    *out_ppm = (int64_t)(rate * PAY_SIM_PPM + 0.5);
    return 1;
}

static void api_payment_send(struct http_request *r, struct pay_sim *sim)
{
    struct pay_sim_knobs k;
    pay_sim_get_knobs(sim, &k);
    char body[256];
    int n = snprintf(body, sizeof body,
                     "{\"provider\":\"simulator\",\"failureRate\":%.6g,\"latencyMs\":%" PRId64
                     ",\"timeoutRate\":%.6g}",
                     (double)k.failure_ppm / PAY_SIM_PPM, k.latency_ms,
                     (double)k.timeout_ppm / PAY_SIM_PPM);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof body);
    http_send_json(r, 200, body, (size_t)n);
}

/* Decodes the knobs of body over the current ones (absent members keep theirs); seed: only
 * seed 001's {rate}, the failure rate. Sends the answer. */
static void api_payment_set(struct http_request *r, bool seed)
{
    struct pay_sim *sim = atomic_load(&r->thread->app->pay_sim);
    if (sim == NULL) {
        http_send_problem(r, SVC_ENOT_FOUND,
                          "no in-process payment simulator here (--workers off, or the workers "
                          "charge an HTTP provider: --payment-url)",
                          NULL, 0);
        return;
    }
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        return;
    }
    struct pay_sim_knobs k;
    pay_sim_get_knobs(sim, &k);
    const char *why = NULL;
    int rc = 0;
    if (seed) {
        rc = api_get_rate(body, "rate", &k.failure_ppm, &why);
        if (rc == 0) {
            why = "send {\"rate\": 0..1}";
            rc = SVC_EVALIDATION;
        }
    } else {
        rc = api_get_rate(body, "failureRate", &k.failure_ppm, &why);
        if (rc >= 0) {
            rc = api_get_rate(body, "timeoutRate", &k.timeout_ppm, &why);
        }
        if (rc >= 0) {
            rc = api_get_int(body, "latencyMs", false, 0, PAY_SIM_LATENCY_MS_MAX, &k.latency_ms,
                             &why);
        }
    }
    json_decref(body);
    if (rc < 0) {
        http_send_problem(r, rc, why, NULL, 0);
        return;
    }
    pay_sim_set_knobs(sim, &k);
    api_payment_send(r, sim);
}

void api_admin_payment(struct http_request *r)
{
    api_payment_set(r, false);
}

void api_seed_payment_failure_rate(struct http_request *r)
{
    api_payment_set(r, true);
}

/* ---- read-only mode ----------------------------------------------------------------------- */

static void api_read_only_send(struct http_request *r, bool enabled)
{
    atomic_store(&r->thread->app->read_only, enabled);
    char body[64];
    int n = snprintf(body, sizeof body, "{\"readOnly\":%s}", enabled ? "true" : "false");
    SVC_ASSERT(n > 0 && (size_t)n < sizeof body);
    http_send_json(r, 200, body, (size_t)n);
}

void api_admin_read_only(struct http_request *r)
{
    json_t *body = api_parse_body(r);
    if (body == NULL) {
        return;
    }
    json_t *enabled = json_object_get(body, "enabled");
    bool ok = json_is_boolean(enabled);
    bool value = json_is_true(enabled);
    json_decref(body);
    if (!ok) {
        http_send_problem(r, SVC_EVALIDATION, "send {\"enabled\": true|false}", NULL, 0);
        return;
    }
    api_read_only_send(r, value);
}

void api_seed_read_only_on(struct http_request *r)
{
    api_read_only_send(r, true);
}

void api_seed_read_only_off(struct http_request *r)
{
    api_read_only_send(r, false);
}
