/*
 * api.h - the route handlers, one file per resource (Redis t_*.c):
 *   api_inventory.c  stores, products, adjustments, availability
 *   api_orders.c     purchase and orders
 *   api_seed.c       the seed-compatible aliases (seed 004)
 *   api_ops.c        health, readiness, metrics, the OpenAPI document, the home page
 * All share one signature (route_handler) and the decoding helpers below (api_common.c).
 */
#ifndef STOCKD_API_H
#define STOCKD_API_H

#include <jansson.h>

#include "http/routes.h"

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
void api_order_get(struct http_request *r);
void api_seed_buy_ticket(struct http_request *r);
void api_seed_inventory(struct http_request *r);
void api_seed_reset(struct http_request *r);
void api_home(struct http_request *r);
void api_health(struct http_request *r);
void api_ready(struct http_request *r);
void api_metrics(struct http_request *r);
/* GET /openapi.yaml: the OpenAPI document compiled in from openapi.yaml (tools/embed.py). */
void api_openapi(struct http_request *r);
void api_audit(struct http_request *r);
/* Queries from the read model (api_queries.c). */
void api_query_availability(struct http_request *r);
void api_query_item_availability(struct http_request *r);
void api_query_totals(struct http_request *r);
void api_query_stores(struct http_request *r);
void api_query_reservation(struct http_request *r);
void api_query_events(struct http_request *r);
void api_query_idempotency(struct http_request *r);
void api_query_projection_status(struct http_request *r);
void api_projection_rebuild(struct http_request *r);
void api_query_stream(struct http_request *r);

/* ---- decoding helpers (api_common.c) ---- */

/* Checks the body rules of a command (JSON content type, size) and parses it as an object.
 * On failure sends the 4xx and returns NULL. The caller owns the returned reference. */
json_t *api_parse_body(struct http_request *r);

/* Validates and copies a string member. required: absent is an error. charset_id: only
 * [A-Za-z0-9._-]. Returns 1 copied, 0 absent (optional), or SVC_EVALIDATION with *why set. */
int api_get_string(json_t *body, const char *name, bool required, bool charset_id, char *out,
                   size_t size, const char **why);

/* Validates an integer member within [min, max]. 1 set, 0 absent, SVC_EVALIDATION. */
int api_get_int(json_t *body, const char *name, bool required, int64_t min, int64_t max,
                int64_t *out, const char **why);

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

#endif
