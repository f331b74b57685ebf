/*
 * routes.h - the one declarative route table of stockd (STYLE 2).
 *
 * Every route is a row: method, path pattern (one "{id}" segment at most), handler, flags and
 * body limit; runtime stats live in a separate section of the same struct (Redis
 * redisCommand). routes_dispatch matches a request and runs the handler; unknown paths get
 * 404 and known paths with another method 405 (with Allow), both as problem+json.
 *
 * server.c calls routes_dispatch for every request; the handlers (api.h) use request.h. This
 * file is not the handlers and not the server. Read api.h next.
 */
#ifndef STOCKD_ROUTES_H
#define STOCKD_ROUTES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "http/auth.h"
#include "http/request.h"

#define ROUTE_WRITE 0x1      /* a command: goes to the writer */
#define ROUTE_READONLY 0x2   /* a query: served from the read model on the I/O thread */
#define ROUTE_IDEMPOTENT 0x4 /* requires Idempotency-Key (every POST command under /v1) */
#define ROUTE_JSON_BODY 0x8  /* requires a JSON body (Content-Type, size) */
#define ROUTE_SEED 0x10      /* a seed-compatible alias: the role of its /v1 route */
#define ROUTE_PUBLIC 0x20    /* no token needed (ops routes) */
#define ROUTE_ADMIN 0x40     /* needs the admin role (admin and ops commands) */
#define ROUTE_ASYNC 0x80     /* honours Prefer: respond-async with --amqp (api_intake.c) */

typedef void (*route_handler)(struct http_request *r);

struct route_stats {
    _Atomic uint64_t calls;
};

struct route {
    const char *method;
    const char *pattern;
    route_handler handler;
    unsigned flags;
    size_t body_bytes_max;
    const char *summary; /* one line, for the README and the OpenAPI document */
    struct route_stats stats;
};

extern struct route routes_table[];
extern const size_t routes_count;

/* The role a route needs (auth.h). Public: ROUTE_PUBLIC. Admin: ROUTE_ADMIN, or a path under
 * /v1/admin/, /v1/dlt or /v1/projections/rebuild even when the row forgets the flag.
 * Otherwise a ROUTE_WRITE command needs write and anything else read; a seed alias needs the
 * same as its /v1 route (the seeds' clients send no token: --anonymous-role lends them one). */
enum auth_role routes_role(const struct route *route);

/* Matches r against the table, checks its bearer token against the route's role (401 missing
 * or unknown, 403 too weak; a request without Authorization has --anonymous-role), sets
 * r->principal and runs the handler (or sends 404/405). */
void routes_dispatch(struct http_request *r);

/* Matches path against pattern; on a match *param gets the {id} segment (may be empty). */
int routes_match(const char *pattern, h2o_iovec_t path, h2o_iovec_t *param);

#endif
