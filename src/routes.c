/*
 * routes.c - the route table and the dispatcher. See routes.h.
 */
#include "routes.h"

#include <string.h>

#include "api.h"
#include "errors.h"
#include "svc_assert.h"

#define V1_COMMAND (ROUTE_WRITE | ROUTE_IDEMPOTENT | ROUTE_JSON_BODY)
#define SEED_COMMAND (ROUTE_WRITE | ROUTE_JSON_BODY | ROUTE_SEED)

struct route routes_table[] = {
    {"POST", "/v1/stores", api_store_create, V1_COMMAND, BODY_BYTES_MAX, "Create a store", {0}},
    {"POST", "/v1/products", api_product_create, V1_COMMAND, BODY_BYTES_MAX,
     "Create a product with initial stock", {0}},
    {"POST", "/v1/purchase", api_purchase, V1_COMMAND, BODY_BYTES_MAX,
     "Buy now: sell qty of a sku from a store chosen by policy", {0}},
    {"POST", "/v1/adjustments", api_adjustment, V1_COMMAND, BODY_BYTES_MAX,
     "Add or remove stock of a sku in a store", {0}},
    {"GET", "/v1/availability", api_availability, ROUTE_READONLY, 0,
     "Availability of a sku, global or per store", {0}},
    {"GET", "/v1/orders/{id}", api_order_get, ROUTE_READONLY, 0, "One order", {0}},
    {"GET", "/health", api_health, ROUTE_READONLY, 0, "Liveness", {0}},
    {"GET", "/ready", api_ready, ROUTE_READONLY, 0, "Readiness (storage reachable)", {0}},
    {"GET", "/metrics", api_metrics, ROUTE_READONLY, 0, "Prometheus metrics", {0}},
    {"POST", "/buy_ticket", api_seed_buy_ticket, SEED_COMMAND, BODY_BYTES_MAX,
     "Seed 004: buy one ticket", {0}},
    {"GET", "/inventory", api_seed_inventory, ROUTE_READONLY | ROUTE_SEED, 0,
     "Seed 004: ticket inventory", {0}},
    {"POST", "/reset", api_seed_reset, ROUTE_WRITE | ROUTE_SEED, BODY_BYTES_MAX,
     "Seed 004: reset the ticket stock (--allow-reset)", {0}},
    {"GET", "/", api_home, ROUTE_READONLY, 0, "Home page", {0}},
};

const size_t routes_count = sizeof routes_table / sizeof routes_table[0];

int routes_match(const char *pattern, h2o_iovec_t path, h2o_iovec_t *param)
{
    size_t p = 0;
    const char *text = pattern;
    while (*text != '\0') {
        if (strncmp(text, "{id}", 4) == 0) {
            size_t start = p;
            while (p < path.len && path.base[p] != '/') {
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
        if (!head_as_get &&
            !h2o_memis(r->req->method.base, r->req->method.len, route->method,
                       strlen(route->method))) {
            continue;
        }
        atomic_fetch_add_explicit(&route->stats.calls, 1, memory_order_relaxed);
        r->route = route;
        r->path_param = param;
        route->handler(r);
        return;
    }
    if (path_match != NULL) {
        r->route = path_match;
        http_send_problem(r, SVC_EMETHOD_NOT_ALLOWED, "this path does not take this method",
                          NULL, 0);
        return;
    }
    http_send_problem(r, SVC_ENOT_FOUND, "no route for this path", NULL, 0);
}
