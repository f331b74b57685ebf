/*
 * api.h - the route handlers, one file per resource (Redis t_*.c):
 *   api_inventory.c     stores, products, adjustments (commands)
 *   api_orders.c        purchase (a command) and GET /v1/orders/{id} (this thread's reader)
 *   api_reservations.c  set-absolute, reservations, transfers, reconciliations (commands)
 *   api_queries.c       availability, totals, stores, reservations, projection status and
 *                       rebuild (the projector), the event log and idempotency records (reader)
 *   api_stream.c        GET /v1/stream, server-sent events (the projector's tap, the log)
 *   api_seed.c          the seed-compatible aliases (seed 004)
 *   api_admin.c         the operator's controls: workers, payment simulator, read-only mode
 *   api_dlt.c           the dead-letter table: list and replay
 *   api_dlt_stream.c    its replay of the stream's dead letters: published to the stream again
 *   api_commands.c      the status of an asynchronous command (issue 12)
 *   api_ops.c           health, readiness, the OpenAPI document
 *   api_metrics.c       GET /metrics, the Prometheus text exposition
 *   api_dash.c          the dashboard at / and its assets (web/, compiled in)
 *   api_audit.c         the audit, on a thread of its own, with progress
 *   api_load.c          the load test: the load generator against this server, then the audit
 *   api_intake.c        Prefer: respond-async with --amqp: a validated command published
 *                       through the intake publisher, answered 202 on the broker's confirm
 *   api_common.c        the helpers below: body decoding, idempotency, fresh reads, events
 * All share one signature (route_handler) and reach the server only through request.h.
 * Commands go to the writer; queries never touch the writer's domain. Read api_common.c next.
 */
#ifndef STOCKD_API_H
#define STOCKD_API_H

#include <jansson.h>

#include "base/json_view.h"
#include "base/json_out.h"
#include "http/routes.h"
#include "store/store.h"

/* ---- handlers ----
 * Each is a route_handler (routes.h): called by routes_dispatch on the request's I/O thread
 * after the route's role was checked, it sends exactly one response, or for a command hands
 * it to the writer, whose reply is sent when it returns (request.h). */

/* Commands, decoded here and decided by the writer (api_inventory.c, api_orders.c,
 * api_reservations.c): POST /v1/stores, /v1/products, /v1/adjustments, /v1/purchase,
 * /v1/items:set-absolute, /v1/reservations, /v1/reservations/{id}:confirm and :cancel,
 * /v1/transfers, /v1/reconciliations. */
void api_store_create(struct http_request *r);
void api_product_create(struct http_request *r);
void api_adjustment(struct http_request *r);
void api_purchase(struct http_request *r);
void api_set_absolute(struct http_request *r);
void api_reservation_create(struct http_request *r);
void api_reservation_confirm(struct http_request *r);
void api_reservation_cancel(struct http_request *r);
void api_transfer(struct http_request *r);
void api_reconciliation(struct http_request *r);
/* GET /v1/orders/{id}: one order from this thread's store reader (api_orders.c). */
void api_order_get(struct http_request *r);
/* Checkout orders (api_orders.c, issue 11): POST /v1/orders, POST /v1/orders/{id}:cancel. */
void api_order_create(struct http_request *r);
void api_order_cancel(struct http_request *r);
/* Seed 004 (api_seed.c): POST /buy_ticket and POST /reset are commands; GET /inventory reads
 * the ticket item of the first store from the projector. */
void api_seed_buy_ticket(struct http_request *r);
void api_seed_inventory(struct http_request *r);
void api_seed_reset(struct http_request *r);
/* Seed 001 (api_orders.c, api_seed.c): POST /orders {userId, items:[{productId, quantity}]} is
 * POST /v1/orders; GET /orders/{id} is GET /v1/orders/{id} with userId and items besides;
 * GET /inventory/{productId} is the product's totals over every store. Seed 000's
 * POST /purchase is api_purchase itself (the same body as POST /v1/purchase). */
void api_seed_order_create(struct http_request *r);
void api_seed_order_get(struct http_request *r);
void api_seed_inventory_item(struct http_request *r);
/* The operator's controls (api_admin.c, admin role): GET /v1/admin/workers,
 * POST /v1/admin/workers/{stage}:pause and :resume, PUT /v1/admin/payment,
 * PUT /v1/admin/read-only, and seed 001's aliases of them. */
void api_admin_workers(struct http_request *r);
void api_admin_worker_pause(struct http_request *r);
void api_admin_worker_resume(struct http_request *r);
void api_admin_payment(struct http_request *r);
void api_admin_read_only(struct http_request *r);
/* The dead-letter table (api_dlt.c, admin role): GET /v1/dlt, POST /v1/dlt/replay. */
void api_dlt_list(struct http_request *r);
void api_dlt_replay(struct http_request *r);
/* POST /v1/dlt/replay of stage commands (api_dlt_stream.c, called by api_dlt_replay): the
 * stream messages the intake consumer could not decode, published to the stream again; ids
 * the requested dead-letter ids (borrowed), or NULL for every one. Answers r. */
void api_dlt_stream_replay(struct http_request *r, json_t *ids);
void api_seed_worker_pause(struct http_request *r);
void api_seed_worker_resume(struct http_request *r);
void api_seed_payment_failure_rate(struct http_request *r);
void api_seed_read_only_on(struct http_request *r);
void api_seed_read_only_off(struct http_request *r);
/* POST /v1/admin/load-test and seed 001's POST /admin/load-test (api_load.c, admin role): the
 * in-tree load generator against this server, then the audit, on a thread of their own. */
void api_load_test(struct http_request *r);
void api_seed_load_test(struct http_request *r);
/* The dashboard (api_dash.c): GET / is the page, GET /assets/{name} its script and style
 * sheet, all compiled in from web/ (tools/embed.py). */
void api_home(struct http_request *r);
void api_dash_asset(struct http_request *r);
/* Operations (api_ops.c): GET /health, /ready. */
void api_health(struct http_request *r);
void api_ready(struct http_request *r);
/* GET /metrics (api_metrics.c): Prometheus text. */
void api_metrics(struct http_request *r);
/* GET /openapi.yaml: the OpenAPI document compiled in from openapi.yaml (tools/embed.py). */
void api_openapi(struct http_request *r);
/* GET /v1/admin/audit: replays the log on a thread of its own and answers when it ends, or
 * streams its progress (api_audit.c). */
void api_audit(struct http_request *r);
/* Queries from the read model, with ETag and X-Projection-Lag-ms (api_queries.c):
 * GET /v1/availability, /v1/items/{id}/availability, /v1/products/totals, /v1/stores,
 * /v1/reservations/{id}, /v1/projections/status; and from this thread's store reader:
 * GET /v1/events, /v1/idempotency/{id}. POST /v1/projections/rebuild starts a rebuild. */
void api_query_availability(struct http_request *r);
void api_query_item_availability(struct http_request *r);
void api_query_totals(struct http_request *r);
void api_query_stores(struct http_request *r);
void api_query_reservation(struct http_request *r);
void api_query_events(struct http_request *r);
void api_query_idempotency(struct http_request *r);
void api_query_projection_status(struct http_request *r);
void api_projection_rebuild(struct http_request *r);
/* GET /v1/commands/{key} (api_commands.c): the status of an asynchronous command of the
 * request's principal, from this thread's store reader: 202 pending, or its idempotency
 * record as a replay answers it. */
void api_command_status(struct http_request *r);
/* GET /v1/stream (api_stream.c): server-sent events of committed events, live from the
 * projector's tap, replayed from the log after Last-Event-ID or ?since=. */
void api_stream_open(struct http_request *r);

/* Stream counters over every I/O thread, for GET /metrics (any thread may call it). */
struct api_stream_stats {
    uint64_t subscribers;      /* open now */
    uint64_t dropped_behind;   /* fell SSE_BUFFER_BYTES behind */
    uint64_t dropped_timeout;  /* reset after SSE_WRITE_TIMEOUT_MS without draining */
    uint64_t dropped_overflow; /* their thread's ring overflowed */
    uint64_t refused;          /* 503 too_many_subscribers */
};
void api_stream_stats(struct api_stream_stats *out);

/* ---- asynchronous intake (api_intake.c, intake/intake.h) ---- */

/* True when r may be answered asynchronously: its route honours it (ROUTE_ASYNC), stockd
 * publishes commands (--amqp) and a Prefer header names respond-async. Without --amqp the
 * preference is ignored and the request is served synchronously. */
bool api_intake_wanted(struct http_request *r);
/* Publishes r, validated and with its Idempotency-Key, as a command of kind (INTAKE_KIND_*)
 * to the intake stream, and answers 202 once the broker confirmed it, or 503
 * broker_unavailable. Called instead of http_command_submit. */
void api_intake_publish(struct http_request *r, const char *kind);

/* Intake counters over every I/O thread, for GET /metrics (any thread may call it). */
struct api_intake_stats {
    uint64_t accepted;              /* 202 */
    uint64_t refused_not_connected; /* 503: no broker connection, or lost before the confirm */
    uint64_t refused_full;          /* 503: the hand-off or the publisher's window was full */
    uint64_t refused_timeout;       /* 503: no confirm within INTAKE_CONFIRM_TIMEOUT_MS */
};
void api_intake_stats(struct api_intake_stats *out);

/* ---- decoding helpers (api_common.c) ---- */

/* Checks the body rules of a command (JSON content type, size) and parses it as an object.
 * On failure sends the 4xx and returns NULL. The caller owns the returned reference. */
json_t *api_parse_body(struct http_request *r);

/* Checks the body rules of a command as api_parse_body does, then reads the body into *flat
 * when it is of json_flat's subset (body->flat set), else parses it with jansson (body->json
 * set, owned by the caller). On failure sends the 4xx and returns false. */
bool api_parse_body_flat(struct http_request *r, struct json_flat *flat, struct json_view *body);

/* Validates and copies a string member. required: absent is an error. charset_id: only
 * [A-Za-z0-9._-]. Returns 1 copied, 0 absent (optional), or SVC_EVALIDATION with *why set. */
int api_body_string(const struct json_view *body, const char *name, bool required, bool charset_id,
                    char *out, size_t size, const char **why);
int api_get_string(json_t *body, const char *name, bool required, bool charset_id, char *out,
                   size_t size, const char **why);

/* Validates an integer member within [min, max]. 1 set, 0 absent, SVC_EVALIDATION. */
int api_body_int(const struct json_view *body, const char *name, bool required, int64_t min,
                 int64_t max, int64_t *out, const char **why);
int api_get_int(json_t *body, const char *name, bool required, int64_t min, int64_t max,
                int64_t *out, const char **why);

/* Decodes "lines": 1..CMD_LINES_MAX objects {sku, qty >= 1} (api_reservations.c). 0 or
 * SVC_EVALIDATION with *why set. */
int api_decode_lines(json_t *body, struct cmd_lines *out, const char **why);

/* Decodes the hold of a reservation or a checkout order: storeId?, ttlSeconds (required, or
 * optional over the default already in cmd), customerId, lines. 0 or SVC_EVALIDATION. */
int api_decode_hold(json_t *body, struct command *cmd, bool ttl_required, const char **why);

/* Parses an id "<prefix><n>" (prefix of 4 bytes, e.g. "ord_", "res_") into n >= 1, without a
 * leading zero or an overflow; 0 when malformed (api_common.c). */
int64_t api_id_seq(h2o_iovec_t id, const char *prefix);

/* Decodes the request body of route ("/v1/purchase", "/purchase" or "/v1/orders") into cmd with
 * that route's own decoder (api_orders.c), for a command that came through the stream of
 * commands (intake/intake.h) rather than a request: kind, style and arguments; cmd zeroed
 * otherwise, with a line block for an order. 0, or an svc_err with *why set (SVC_EVALIDATION
 * for another route). No header is read: If-Match is not part of an asynchronous command. */
int api_decode_async(const char *route, const struct json_view *body, struct command *cmd,
                     const char **why);

/* Takes a command from the pool and sets its idempotency fields from the request (key
 * required when the route says so). On failure sends 428/400/429 and returns NULL. */
struct http_command *api_command_begin(struct http_request *r, enum cmd_kind kind);

/* Decodes a command's body into cmd: 0, or an svc_err with *why set. r gives path params. */
typedef int (*api_decoder)(const struct http_request *r, json_t *body, struct command *cmd,
                           const char **why);

/* The shared path of a v1 command: Idempotency-Key, a line block when with_lines, the JSON
 * body, If-Match, decode, submit. Sends every error response itself. */
void api_submit_command(struct http_request *r, enum cmd_kind kind, bool with_lines,
                        api_decoder decode);

/* Reads If-Match: "<version>" into the command. 0 (absent or set) or SVC_EVALIDATION. */
int api_if_match(struct http_request *r, struct command *cmd);

/* True when s is 1..max bytes of [A-Za-z0-9._-]. */
bool api_is_id(const char *s, size_t length, size_t max);

/* Reads the optional decimal query parameter name into *out when it lies in [min, max]
 * (min >= 0). 1 set, 0 absent (*out untouched), or SVC_EVALIDATION. */
int api_query_int(struct http_request *r, const char *name, int64_t min, int64_t max, int64_t *out);

/* ---- reads (api_common.c) ---- */

/* Waits (up to API_READ_WAIT_US_MAX) for the projector to apply everything the writer has
 * acknowledged, so that a client reads its own writes: replies leave before their batch is
 * projected. True when caught up; false on timeout, and the caller serves what is there (its
 * lag goes out in X-Projection-Lag-ms). Called by every handler that answers from the
 * projector, before projector_read_begin. Blocks this I/O thread for that long at most. */
bool api_read_fresh(struct http_request *r);

/* Appends one event as the object GET /v1/events lists and GET /v1/stream sends as data:
 * seq, eventType, eventVersion, occurredAt, storeId and sku (null when absent) and data (the
 * stored JSON, copied raw). The caller checks jbuf_ok. */
void api_event_json(struct jbuf *b, const struct row_event *row);

#endif
