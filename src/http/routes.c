/*
 * routes.c - the route table and the dispatcher. See routes.h. It does not send anything but
 * 401/403/404/405 itself: the handlers answer (api_*.c). Read api_common.c next.
 */
#include "http/routes.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http/api.h"
#include "base/errors.h"
#include "base/svc_assert.h"

#define V1_COMMAND (ROUTE_WRITE | ROUTE_IDEMPOTENT | ROUTE_JSON_BODY)
#define SEED_COMMAND (ROUTE_WRITE | ROUTE_JSON_BODY | ROUTE_SEED)

struct route routes_table[] = {
    {"POST", "/v1/stores", api_store_create, V1_COMMAND, BODY_BYTES_MAX, "Create a store", {0}},
    {"POST",
     "/v1/products",
     api_product_create,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Create a product with initial stock",
     {0}},
    {"POST",
     "/v1/purchase",
     api_purchase,
     V1_COMMAND | ROUTE_ASYNC,
     BODY_BYTES_MAX,
     "Buy now: sell qty of a sku from a store chosen by policy",
     {0}},
    {"POST",
     "/v1/adjustments",
     api_adjustment,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Add or remove stock of a sku in a store",
     {0}},
    {"POST",
     "/v1/items:set-absolute",
     api_set_absolute,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Set onHand of a sku in a store to a counted value",
     {0}},
    {"POST",
     "/v1/reservations",
     api_reservation_create,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Hold stock for a customer for ttlSeconds (all lines or none)",
     {0}},
    {"POST",
     "/v1/reservations/{id}:confirm",
     api_reservation_confirm,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Confirm a reservation: the held units are sold",
     {0}},
    {"POST",
     "/v1/reservations/{id}:cancel",
     api_reservation_cancel,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Cancel a reservation: the held units are released",
     {0}},
    {"POST",
     "/v1/transfers",
     api_transfer,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Move stock between two stores, all lines or none",
     {0}},
    {"POST",
     "/v1/reconciliations",
     api_reconciliation,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Set a store's counts from a snapshot; returns the adjustments made",
     {0}},
    {"GET",
     "/v1/availability",
     api_query_availability,
     ROUTE_READONLY,
     0,
     "Availability of a sku, global or per store",
     {0}},
    {"GET",
     "/v1/items/{id}/availability",
     api_query_item_availability,
     ROUTE_READONLY,
     0,
     "Availability of a sku per store, with its total",
     {0}},
    {"GET",
     "/v1/products/totals",
     api_query_totals,
     ROUTE_READONLY,
     0,
     "Stock totals per product, searchable and paged",
     {0}},
    {"GET", "/v1/stores", api_query_stores, ROUTE_READONLY, 0, "Every store", {0}},
    {"GET",
     "/v1/reservations/{id}",
     api_query_reservation,
     ROUTE_READONLY,
     0,
     "One reservation",
     {0}},
    {"GET",
     "/v1/events",
     api_query_events,
     ROUTE_READONLY,
     0,
     "The event log since a seq, filtered by store and sku",
     {0}},
    {"GET",
     "/v1/stream",
     api_stream_open,
     ROUTE_READONLY,
     0,
     "Server-sent events of committed events",
     {0}},
    {"GET",
     "/v1/idempotency/{id}",
     api_query_idempotency,
     ROUTE_READONLY,
     0,
     "The stored first response of an idempotency key",
     {0}},
    {"GET",
     "/v1/commands/{id}",
     api_command_status,
     ROUTE_READONLY,
     0,
     "The status of a command sent asynchronously (pending, then its response)",
     {0}},
    {"GET",
     "/v1/projections/status",
     api_query_projection_status,
     ROUTE_READONLY,
     0,
     "Read-model status: applied seq, log seq, lag, rebuild",
     {0}},
    {"POST",
     "/v1/projections/rebuild",
     api_projection_rebuild,
     ROUTE_ADMIN,
     0,
     "Rebuild the read model by replaying the event log (admin)",
     {0}},
    {"GET", "/v1/orders/{id}", api_order_get, ROUTE_READONLY, 0, "One order", {0}},
    {"POST",
     "/v1/orders",
     api_order_create,
     V1_COMMAND | ROUTE_ASYNC,
     BODY_BYTES_MAX,
     "Create a checkout order: its lines held (all or none) until paid",
     {0}},
    {"POST",
     "/v1/orders/{id}:cancel",
     api_order_cancel,
     V1_COMMAND,
     BODY_BYTES_MAX,
     "Cancel a checkout order while no payment succeeded: its stock is released",
     {0}},
    {"GET",
     "/v1/admin/audit",
     api_audit,
     ROUTE_READONLY | ROUTE_ADMIN,
     0,
     "Replay the event log and check every stock invariant (admin)",
     {0}},
    {"POST",
     "/v1/admin/load-test",
     api_load_test,
     ROUTE_ADMIN | ROUTE_JSON_BODY,
     BODY_BYTES_MAX,
     "Run the load generator against this server, then the audit (admin)",
     {0}},
    {"GET",
     "/v1/admin/workers",
     api_admin_workers,
     ROUTE_READONLY | ROUTE_ADMIN,
     0,
     "The workers' stages: state, offset, lag, processed, failures (admin)",
     {0}},
    {"POST",
     "/v1/admin/workers/{id}:pause",
     api_admin_worker_pause,
     ROUTE_ADMIN,
     0,
     "Pause a stage: order, payment or expiry (admin)",
     {0}},
    {"POST",
     "/v1/admin/workers/{id}:resume",
     api_admin_worker_resume,
     ROUTE_ADMIN,
     0,
     "Resume a stage: order, payment or expiry (admin)",
     {0}},
    {"PUT",
     "/v1/admin/payment",
     api_admin_payment,
     ROUTE_ADMIN | ROUTE_JSON_BODY,
     BODY_BYTES_MAX,
     "Set the payment simulator's knobs at run time (admin)",
     {0}},
    {"PUT",
     "/v1/admin/read-only",
     api_admin_read_only,
     ROUTE_ADMIN | ROUTE_JSON_BODY,
     BODY_BYTES_MAX,
     "Turn read-only mode on or off: every write 503 read_only (admin)",
     {0}},
    {"GET",
     "/v1/dlt",
     api_dlt_list,
     ROUTE_READONLY | ROUTE_ADMIN,
     0,
     "The dead letters: work items that exhausted their attempts (admin)",
     {0}},
    {"POST",
     "/v1/dlt/replay",
     api_dlt_replay,
     ROUTE_ADMIN | ROUTE_JSON_BODY,
     BODY_BYTES_MAX,
     "Re-queue dead letters by ids or stage (admin)",
     {0}},
    {"GET", "/health", api_health, ROUTE_READONLY | ROUTE_PUBLIC, 0, "Health checks", {0}},
    {"GET",
     "/ready",
     api_ready,
     ROUTE_READONLY | ROUTE_PUBLIC,
     0,
     "Readiness (storage reachable)",
     {0}},
    {"GET", "/metrics", api_metrics, ROUTE_READONLY | ROUTE_PUBLIC, 0, "Prometheus metrics", {0}},
    {"GET",
     "/openapi.yaml",
     api_openapi,
     ROUTE_READONLY | ROUTE_PUBLIC,
     0,
     "This API as an OpenAPI 3.0 document",
     {0}},
    {"POST",
     "/buy_ticket",
     api_seed_buy_ticket,
     SEED_COMMAND,
     BODY_BYTES_MAX,
     "Seed 004: buy one ticket",
     {0}},
    {"GET",
     "/inventory",
     api_seed_inventory,
     ROUTE_READONLY | ROUTE_SEED,
     0,
     "Seed 004: ticket inventory",
     {0}},
    {"POST",
     "/reset",
     api_seed_reset,
     ROUTE_WRITE | ROUTE_SEED,
     BODY_BYTES_MAX,
     "Seed 004: reset the ticket stock (--allow-reset)",
     {0}},
    {"POST",
     "/orders",
     api_seed_order_create,
     SEED_COMMAND,
     BODY_BYTES_MAX,
     "Seed 001: create a checkout order",
     {0}},
    {"GET",
     "/orders/{id}",
     api_seed_order_get,
     ROUTE_READONLY | ROUTE_SEED,
     0,
     "Seed 001: one order with its items and history",
     {0}},
    {"GET",
     "/inventory/{id}",
     api_seed_inventory_item,
     ROUTE_READONLY | ROUTE_SEED,
     0,
     "Seed 001: a product's stock over every store",
     {0}},
    {"POST",
     "/purchase",
     api_purchase,
     SEED_COMMAND | ROUTE_ASYNC,
     BODY_BYTES_MAX,
     "Seed 000: buy now, as POST /v1/purchase",
     {0}},
    {"POST",
     "/admin/worker/{id}/pause",
     api_seed_worker_pause,
     ROUTE_ADMIN | ROUTE_SEED,
     0,
     "Seed 001: pause the order or payment worker (admin)",
     {0}},
    {"POST",
     "/admin/worker/{id}/resume",
     api_seed_worker_resume,
     ROUTE_ADMIN | ROUTE_SEED,
     0,
     "Seed 001: resume the order or payment worker (admin)",
     {0}},
    {"POST",
     "/admin/payment/failure-rate",
     api_seed_payment_failure_rate,
     ROUTE_ADMIN | ROUTE_SEED | ROUTE_JSON_BODY,
     BODY_BYTES_MAX,
     "Seed 001: set the payment simulator's failure rate (admin)",
     {0}},
    {"POST",
     "/admin/load-test",
     api_seed_load_test,
     ROUTE_ADMIN | ROUTE_SEED | ROUTE_JSON_BODY,
     BODY_BYTES_MAX,
     "Seed 001: a load test of vus x iterations orders (admin)",
     {0}},
    {"POST",
     "/admin/api/read-only/on",
     api_seed_read_only_on,
     ROUTE_ADMIN | ROUTE_SEED,
     0,
     "Seed 001: read-only mode on (admin)",
     {0}},
    {"POST",
     "/admin/api/read-only/off",
     api_seed_read_only_off,
     ROUTE_ADMIN | ROUTE_SEED,
     0,
     "Seed 001: read-only mode off (admin)",
     {0}},
    {"GET", "/", api_home, ROUTE_READONLY | ROUTE_PUBLIC, 0, "The dashboard", {0}},
    {"GET",
     "/assets/{id}",
     api_dash_asset,
     ROUTE_READONLY | ROUTE_PUBLIC,
     0,
     "The dashboard's script and style sheet",
     {0}},
};

const size_t routes_count = sizeof routes_table / sizeof routes_table[0];

int routes_match(const char *pattern, h2o_iovec_t path, h2o_iovec_t *param)
{
    size_t p = 0;
    const char *text = pattern;
    while (*text != '\0') {
        if (strncmp(text, "{id}", 4) == 0) {
            /* The id runs to the next '/', or to the pattern's next literal (":confirm"). */
            char stop = text[4] != '\0' && text[4] != '/' ? text[4] : '/';
            size_t start = p;
            while (p < path.len && path.base[p] != '/' && path.base[p] != stop) {
                p++;
            }
            *param = h2o_iovec_init(path.base + start, p - start);
            text += 4;
            continue;
        }
        if (p >= path.len || path.base[p] != *text) {
            return 0;
        }
        p++;
        text++;
    }
    return p == path.len;
}

/* The principal of requests without a token (public routes, --anonymous-role): the owner of
 * the seeds' clients' idempotency records. No token may name it (auth.c). */
#define ROUTES_PUBLIC_PRINCIPAL AUTH_ANONYMOUS_PRINCIPAL

enum auth_role routes_role(const struct route *route)
{
    static const char *const admin_prefixes[] = {"/v1/admin/", "/v1/dlt",
                                                 "/v1/projections/rebuild"};
    SVC_ASSERT(route->pattern[0] == '/');
    SVC_ASSERT(!((route->flags & ROUTE_ADMIN) && (route->flags & ROUTE_PUBLIC)));
    for (size_t i = 0; i < sizeof admin_prefixes / sizeof admin_prefixes[0]; i++) {
        if (strncmp(route->pattern, admin_prefixes[i], strlen(admin_prefixes[i])) == 0) {
            return AUTH_ROLE_ADMIN;
        }
    }
    if (route->flags & ROUTE_ADMIN) {
        return AUTH_ROLE_ADMIN;
    }
    if (route->flags & ROUTE_PUBLIC) {
        return AUTH_ROLE_NONE;
    }
    return (route->flags & ROUTE_WRITE) ? AUTH_ROLE_WRITE : AUTH_ROLE_READ;
}

/* Sends 401 with WWW-Authenticate: Bearer and detail. */
static void routes_send_unauthorized(struct http_request *r, const char *detail)
{
    h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                   H2O_STRLIT("Bearer"));
    http_send_problem(r, SVC_EUNAUTHORIZED, detail, NULL, 0);
}

/* A request without Authorization has the --anonymous-role; 401 when that is not enough. */
static bool routes_authorize_anonymous(struct http_request *r, enum auth_role need)
{
    enum auth_role anonymous = r->thread->app->config.anonymous_role;
    SVC_ASSERT(need != AUTH_ROLE_NONE && anonymous <= AUTH_ROLE_WRITE);
    if (anonymous >= need) {
        return true; /* r->principal stays the anonymous one */
    }
    r->principal = NULL; /* refused: nobody (the access log says so) */
    if (anonymous == AUTH_ROLE_NONE) {
        routes_send_unauthorized(r, "send Authorization: Bearer <token>");
        return false;
    }
    char detail[128];
    snprintf(detail, sizeof detail,
             "this route needs the %s role; requests without a token have %s: send "
             "Authorization: Bearer <token>",
             auth_role_name(need), auth_role_name(anonymous));
    routes_send_unauthorized(r, detail);
    return false;
}

/* Checks r's bearer token against the role the route needs and sets r->principal. On failure
 * sends 401 (with WWW-Authenticate: Bearer; r->principal NULL) or 403 (r->principal the too
 * weak token's) and returns false. */
static bool routes_authorize(struct http_request *r, const struct route *route)
{
    static const char scheme[] = "Bearer ";
    enum auth_role need = routes_role(route);
    r->principal = ROUTES_PUBLIC_PRINCIPAL;
    if (need == AUTH_ROLE_NONE) {
        return true;
    }
    h2o_iovec_t value = http_header(r, "authorization");
    if (value.base == NULL) {
        return routes_authorize_anonymous(r, need);
    }
    const struct auth_token *token = NULL;
    if (value.len > sizeof scheme - 1 && strncasecmp(value.base, scheme, sizeof scheme - 1) == 0) {
        token = auth_check(&r->thread->app->auth, r->thread->hasher, value.base + sizeof scheme - 1,
                           value.len - (sizeof scheme - 1));
    }
    if (token == NULL) {
        /* A wrong token is refused even when anonymous requests would pass: never downgrade. */
        r->principal = NULL;
        routes_send_unauthorized(r, "the bearer token is not known");
        return false;
    }
    SVC_ASSERT(token->role != AUTH_ROLE_NONE);
    r->principal = token->principal; /* known, if too weak: the access log names it */
    if (token->role < need) {
        char detail[96];
        snprintf(detail, sizeof detail, "this route needs the %s role; the token has %s",
                 auth_role_name(need), auth_role_name(token->role));
        http_send_problem(r, SVC_EFORBIDDEN, detail, NULL, 0);
        return false;
    }
    SVC_ASSERT(r->principal == token->principal);
    return true;
}

void routes_dispatch(struct http_request *r)
{
    SVC_ASSERT(r->req != NULL);
    const struct route *path_match = NULL;
    for (size_t i = 0; i < routes_count; i++) {
        struct route *route = &routes_table[i];
        h2o_iovec_t param = h2o_iovec_init(NULL, 0);
        if (!routes_match(route->pattern, r->path, &param)) {
            continue;
        }
        path_match = route;
        bool head_as_get = h2o_memis(r->req->method.base, r->req->method.len, H2O_STRLIT("HEAD")) &&
                           strcmp(route->method, "GET") == 0;
        if (!head_as_get && !h2o_memis(r->req->method.base, r->req->method.len, route->method,
                                       strlen(route->method))) {
            continue;
        }
        r->route = route;
        r->path_param = param;
        if (!routes_authorize(r, route)) {
            return;
        }
        atomic_fetch_add_explicit(&route->stats.calls, 1, memory_order_relaxed);
        if ((route->flags & ROUTE_WRITE) && atomic_load(&r->thread->app->read_only)) {
            http_send_problem(r, SVC_EREAD_ONLY,
                              "writes are refused while read-only mode is on; reads serve", NULL,
                              0); /* with Retry-After, as every 503 */
            return;
        }
        route->handler(r);
        return;
    }
    if (path_match != NULL) {
        r->route = path_match;
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_ALLOW, NULL,
                       path_match->method, strlen(path_match->method));
        http_send_problem(r, SVC_EMETHOD_NOT_ALLOWED, "this path does not take this method", NULL,
                          0);
        return;
    }
    http_send_problem(r, SVC_ENOT_FOUND, "no route for this path", NULL, 0);
}
