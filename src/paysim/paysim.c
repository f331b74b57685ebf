/*
 * paysim.c - stockd-paysim, the standalone payment simulator that stockd's HTTP provider
 * (pay/pay_http.h, --payment-url) is tested against: a single-threaded epoll server whose
 * decisions are those of the in-process simulator (pay/pay_sim.c: the same knobs, the same
 * key table, the same ledger), so both providers model one payment service.
 *
 *   POST /payments         header Idempotency-Key: the charge. 200 {"id":"pay_<key>",
 *                          "status":"succeeded"} or 402 {"status":"declined"}; a key charged
 *                          before gets its first outcome; a timed-out charge gets no answer
 *                          at all (the connection stays open, silent, until the client
 *                          closes it) and may or may not have been decided meanwhile.
 *   GET  /payments/{key}   the key's stored outcome, 404 when it was never decided.
 *   GET  /stats            charges, declines, replays, timeouts, keys, ledgerDuplicates.
 *   GET|PUT /admin/knobs   {failureRate, timeoutRate, latencyMs}: read or set (absent keep).
 *
 * The latency is pay_sim's ring of due times, polled every millisecond while charges wait:
 * one slow charge never blocks another request. pay_sim writes the ledger line of a charge
 * when it decides, before any answer, and reads the ledger back at start, so a killed and
 * restarted simulator on the same ledger still charges each key at most once. Read
 * paysim_http.c for the HTTP parsing.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "pay/pay_sim.h"
#include "paysim/paysim_http.h"

/* Client connections at once: stockd's provider opens at most 256 (PAY_HTTP_CONNS_MAX), and
 * an instance restarted after a kill -9 may briefly hold as many again. */
#define PAYSIM_CONNS_MAX 1024
#define PAYSIM_EVENTS_MAX 64
/* Results taken from the simulator per round. */
#define PAYSIM_RESULTS_MAX 256
/* The epoll tag of the listening socket. */
#define PAYSIM_LISTEN_TAG UINT64_MAX

struct paysim_conn {
    int fd; /* -1: a free slot */
    uint32_t generation;
    uint32_t watched; /* the epoll events registered (0: none yet) */
    bool waiting;     /* its charge is with the simulator: no other request is read meanwhile */
    bool silenced;    /* its charge timed out: it answers nothing more (the client closes it) */
    bool keep_alive;  /* of the request being answered */
    char key[PAY_KEY_BYTES_MAX + 1]; /* the charge waiting */
    uint32_t in_length;
    uint32_t out_length;
    uint32_t out_sent;
    char in[PAYSIM_HTTP_REQUEST_BYTES_MAX];
    char out[PAYSIM_HTTP_ANSWER_BYTES_MAX];
};

struct paysim {
    struct pay_sim *sim; /* owned */
    const struct pay_provider *provider;
    int listen_fd;
    int epoll_fd;
    struct paysim_conn *conns; /* PAYSIM_CONNS_MAX, owned */
    uint32_t charges_waiting;  /* charges with the simulator, their connections open or not */
};

struct paysim_options {
    char host[64];
    int port;
    struct pay_sim_config sim;
    uint64_t seed;
};

static int64_t paysim_now_ms(void)
{
    return clock_mono_us() / 1000;
}

/* ---- connections -------------------------------------------------------------------------- */

/* Registers slot's events: reading always, writing while an answer is partly sent. */
static void paysim_watch(struct paysim *ps, uint32_t slot)
{
    struct paysim_conn *c = &ps->conns[slot];
    SVC_ASSERT(c->fd >= 0);
    uint32_t events = EPOLLIN | EPOLLRDHUP | (c->out_sent < c->out_length ? EPOLLOUT : 0);
    if (events == c->watched) {
        return;
    }
    struct epoll_event ev = {.events = events};
    ev.data.u64 = (uint64_t)c->generation << 32 | slot;
    int rc = epoll_ctl(ps->epoll_fd, c->watched == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c->fd, &ev);
    SVC_ASSERT(rc == 0);
    c->watched = events;
}

static void paysim_close(struct paysim *ps, uint32_t slot)
{
    struct paysim_conn *c = &ps->conns[slot];
    SVC_ASSERT(c->fd >= 0);
    close(c->fd);
    c->fd = -1;
    c->waiting = false; /* its charge, if any, still ends in the simulator: dropped then */
    c->silenced = false;
}

static void paysim_accept(struct paysim *ps)
{
    for (;;) {
        int fd = accept4(ps->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            SVC_ASSERT(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
                       errno == ECONNABORTED || errno == EMFILE || errno == ENFILE);
            return;
        }
        uint32_t slot = 0;
        while (slot < PAYSIM_CONNS_MAX && ps->conns[slot].fd >= 0) {
            slot++;
        }
        if (slot == PAYSIM_CONNS_MAX) {
            log_warn("paysim: %d connections open already: one refused", PAYSIM_CONNS_MAX);
            close(fd);
            continue;
        }
        struct paysim_conn *c = &ps->conns[slot];
        uint32_t generation = c->generation + 1;
        memset(c, 0, offsetof(struct paysim_conn, in));
        c->fd = fd;
        c->generation = generation;
        paysim_watch(ps, slot);
    }
}

/* Sends what is left of slot's answer; false when the connection was closed. */
static bool paysim_flush(struct paysim *ps, uint32_t slot)
{
    struct paysim_conn *c = &ps->conns[slot];
    while (c->out_sent < c->out_length) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_length - c->out_sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_sent += (uint32_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            paysim_watch(ps, slot); /* with EPOLLOUT until it is out */
            return true;
        } else {
            paysim_close(ps, slot);
            return false;
        }
    }
    if (!c->keep_alive) {
        paysim_close(ps, slot);
        return false;
    }
    return true;
}

/* Queues an answer on slot (nothing else is pending on it) and sends it. */
static bool paysim_answer(struct paysim *ps, uint32_t slot, int status, const char *body)
{
    struct paysim_conn *c = &ps->conns[slot];
    SVC_ASSERT(c->out_sent == c->out_length && !c->waiting);
    c->out_length = (uint32_t)paysim_http_format_answer(c->out, sizeof c->out, status,
                                                        c->keep_alive, body, strlen(body));
    c->out_sent = 0;
    bool open = paysim_flush(ps, slot);
    if (open && c->out_sent == c->out_length) {
        paysim_watch(ps, slot); /* EPOLLOUT off again, if it was on */
    }
    return open;
}

/* ---- routes ------------------------------------------------------------------------------- */

/* The JSON of a decided key. */
static void paysim_payment_json(char *out, size_t size, const char *key, enum pay_outcome outcome)
{
    SVC_ASSERT(outcome == PAY_OK || outcome == PAY_DECLINED);
    int n = snprintf(out, size,
                     outcome == PAY_OK
                         ? "{\"id\":\"pay_%s\",\"status\":\"succeeded\",\"orderId\":\"%s\"}"
                         : "{\"id\":\"pay_%s\",\"status\":\"declined\",\"orderId\":\"%s\","
                           "\"error\":{\"code\":\"card_declined\"}}",
                     key, key);
    SVC_ASSERT(n > 0 && (size_t)n < size);
}

/* A key we take: 1..PAY_KEY_BYTES_MAX of [A-Za-z0-9_-] (it goes into JSON as it is). */
static bool paysim_key_ok(const char *key)
{
    size_t length = strlen(key);
    return length >= 1 && length <= PAY_KEY_BYTES_MAX &&
           strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
               length;
}

static bool paysim_charge(struct paysim *ps, uint32_t slot, const struct paysim_http_request *r)
{
    struct paysim_conn *c = &ps->conns[slot];
    if (r->key_too_long || !paysim_key_ok(r->key)) {
        return paysim_answer(ps, slot, 400,
                             "{\"error\":\"Idempotency-Key: 1 to 31 of A-Z a-z 0-9 _ -\"}");
    }
    uint64_t token = (uint64_t)c->generation << 32 | slot;
    int rc = ps->provider->charge(ps->provider->self, r->key, token, paysim_now_ms());
    if (rc != 0) {
        return paysim_answer(ps, slot, 503, "{\"error\":\"too many charges in flight\"}");
    }
    strcpy(c->key, r->key);
    c->waiting = true;
    ps->charges_waiting++;
    return true;
}

static bool paysim_lookup(struct paysim *ps, uint32_t slot, const char *key)
{
    enum pay_outcome outcome = paysim_key_ok(key) ? pay_sim_lookup(ps->sim, key) : PAY_TIMEOUT;
    if (outcome == PAY_TIMEOUT) {
        return paysim_answer(ps, slot, 404, "{\"error\":\"no charge decided for this key\"}");
    }
    char body[256];
    paysim_payment_json(body, sizeof body, key, outcome);
    return paysim_answer(ps, slot, 200, body);
}

static bool paysim_stats(struct paysim *ps, uint32_t slot)
{
    const struct pay_sim_stats *st = pay_sim_stats(ps->sim);
    char body[512];
    int n = snprintf(body, sizeof body,
                     "{\"charges\":%" PRIu64 ",\"declines\":%" PRIu64 ",\"replays\":%" PRIu64
                     ",\"timeouts\":%" PRIu64 ",\"keys\":%" PRIu64 ",\"ledgerDuplicates\":%" PRIu64
                     ",\"inFlight\":%" PRIu32 "}",
                     st->charges, st->declines, st->replays, st->timeouts, st->keys,
                     st->ledger_duplicates, ps->charges_waiting);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof body);
    return paysim_answer(ps, slot, 200, body);
}

/* A rate member of body into *ppm when present; false when it is not a number in [0, 1]. */
static bool paysim_rate(json_t *body, const char *name, int64_t *ppm)
{
    json_t *v = json_object_get(body, name);
    if (v == NULL) {
        return true;
    }
    double rate = json_number_value(v);
    if (!json_is_number(v) || !(rate >= 0.0 && rate <= 1.0)) {
        return false;
    }
    *ppm = (int64_t)(rate * PAY_SIM_PPM + 0.5);
    return true;
}

/* GET /admin/knobs, or PUT with the members to change. */
static bool paysim_knobs(struct paysim *ps, uint32_t slot, const struct paysim_http_request *r)
{
    struct pay_sim_knobs k;
    pay_sim_get_knobs(ps->sim, &k);
    if (strcmp(r->method, "PUT") == 0) {
        json_t *body = json_loadb(r->body, r->body_length, 0, NULL);
        json_t *latency = json_object_get(body, "latencyMs");
        bool ok =
            json_is_object(body) && paysim_rate(body, "failureRate", &k.failure_ppm) &&
            paysim_rate(body, "timeoutRate", &k.timeout_ppm) &&
            (latency == NULL || (json_is_integer(latency) && json_integer_value(latency) >= 0 &&
                                 json_integer_value(latency) <= PAY_SIM_LATENCY_MS_MAX));
        k.latency_ms = ok && latency != NULL ? json_integer_value(latency) : k.latency_ms;
        json_decref(body);
        if (!ok) {
            return paysim_answer(ps, slot, 400,
                                 "{\"error\":\"send {failureRate: 0..1, timeoutRate: 0..1, "
                                 "latencyMs: 0..60000}\"}");
        }
        pay_sim_set_knobs(ps->sim, &k);
        log_info("paysim: knobs failureRate %.3f timeoutRate %.3f latencyMs %" PRId64,
                 (double)k.failure_ppm / PAY_SIM_PPM, (double)k.timeout_ppm / PAY_SIM_PPM,
                 k.latency_ms);
    }
    char out[256];
    int n = snprintf(
        out, sizeof out, "{\"failureRate\":%.6g,\"timeoutRate\":%.6g,\"latencyMs\":%" PRId64 "}",
        (double)k.failure_ppm / PAY_SIM_PPM, (double)k.timeout_ppm / PAY_SIM_PPM, k.latency_ms);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof out);
    return paysim_answer(ps, slot, 200, out);
}

/* Routes one request; false when the connection was closed. */
static bool paysim_route(struct paysim *ps, uint32_t slot, const struct paysim_http_request *r)
{
    bool get = strcmp(r->method, "GET") == 0;
    if (strcmp(r->target, "/payments") == 0) {
        return strcmp(r->method, "POST") == 0
                   ? paysim_charge(ps, slot, r)
                   : paysim_answer(ps, slot, 405, "{\"error\":\"POST a charge\"}");
    }
    if (strncmp(r->target, "/payments/", 10) == 0 && get) {
        return paysim_lookup(ps, slot, r->target + 10);
    }
    if (strcmp(r->target, "/stats") == 0 && get) {
        return paysim_stats(ps, slot);
    }
    if (strcmp(r->target, "/admin/knobs") == 0 && (get || strcmp(r->method, "PUT") == 0)) {
        return paysim_knobs(ps, slot, r);
    }
    return paysim_answer(ps, slot, 404, "{\"error\":\"no such route\"}");
}

/* Serves the requests received on slot, one at a time: none while a charge waits, an answer
 * is being sent, or the connection is silenced. */
static void paysim_serve(struct paysim *ps, uint32_t slot)
{
    struct paysim_conn *c = &ps->conns[slot];
    while (c->fd >= 0 && !c->waiting && !c->silenced && c->out_sent == c->out_length) {
        struct paysim_http_request r;
        int rc = paysim_http_parse_request(c->in, c->in_length, &r);
        if (rc == PAYSIM_HTTP_MORE) {
            return;
        }
        if (rc < 0) {
            c->keep_alive = false;
            (void)paysim_answer(ps, slot, 400, "{\"error\":\"not an HTTP/1.x request we take\"}");
            return;
        }
        c->keep_alive = r.keep_alive;
        bool open = paysim_route(ps, slot, &r);
        if (!open) {
            return;
        }
        SVC_ASSERT(r.consumed <= c->in_length);
        memmove(c->in, c->in + r.consumed, c->in_length - r.consumed);
        c->in_length -= (uint32_t)r.consumed;
    }
}

/* Reads what came on slot; a silenced connection's bytes are dropped. */
static void paysim_read(struct paysim *ps, uint32_t slot)
{
    struct paysim_conn *c = &ps->conns[slot];
    for (;;) {
        char discard[512];
        bool drop = c->silenced;
        char *into = drop ? discard : c->in + c->in_length;
        size_t room = drop ? sizeof discard : sizeof c->in - c->in_length;
        if (room == 0) {
            break; /* a full request waits for its turn (or is too large: serve says 400) */
        }
        ssize_t n = recv(c->fd, into, room, 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
            paysim_close(ps, slot); /* the client left; a charge it waits for still ends */
            return;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            break;
        }
        c->in_length += drop ? 0 : (uint32_t)n;
    }
    if (c->in_length == sizeof c->in && (c->waiting || c->silenced)) {
        paysim_close(ps, slot); /* pipelined past the buffer while a charge waits: not ours */
        return;
    }
    paysim_serve(ps, slot);
}

static void paysim_on_event(struct paysim *ps, uint64_t tag, uint32_t events)
{
    uint32_t slot = (uint32_t)(tag & UINT32_MAX);
    SVC_ASSERT(slot < PAYSIM_CONNS_MAX);
    struct paysim_conn *c = &ps->conns[slot];
    if (c->fd < 0 || c->generation != (uint32_t)(tag >> 32)) {
        return;
    }
    if ((events & EPOLLOUT) != 0 && c->out_sent < c->out_length) {
        if (!paysim_flush(ps, slot)) {
            return;
        }
        if (c->out_sent == c->out_length) {
            paysim_watch(ps, slot);
        }
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
        paysim_read(ps, slot);
    } else {
        paysim_serve(ps, slot);
    }
}

/* The simulator's results that fell due: answered on their connections if still there. */
static void paysim_results(struct paysim *ps)
{
    struct pay_result results[PAYSIM_RESULTS_MAX];
    size_t n = ps->provider->poll(ps->provider->self, paysim_now_ms(), results, PAYSIM_RESULTS_MAX);
    SVC_ASSERT(n <= ps->charges_waiting);
    ps->charges_waiting -= (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        uint32_t slot = (uint32_t)(results[i].token & UINT32_MAX);
        struct paysim_conn *c = &ps->conns[slot];
        if (c->fd < 0 || c->generation != (uint32_t)(results[i].token >> 32) || !c->waiting) {
            continue; /* the client left: the decision stands, its retry gets it */
        }
        c->waiting = false;
        if (results[i].outcome == PAY_TIMEOUT) {
            c->silenced = true; /* no answer, ever, on this connection */
            continue;
        }
        char body[256];
        paysim_payment_json(body, sizeof body, c->key, results[i].outcome);
        if (paysim_answer(ps, slot, results[i].outcome == PAY_OK ? 200 : 402, body)) {
            paysim_serve(ps, slot);
        }
    }
}

/* ---- start -------------------------------------------------------------------------------- */

static int paysim_listen(struct paysim *ps, const struct paysim_options *o, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    if (fd < 0 || inet_pton(AF_INET, o->host, &addr.sin_addr) != 1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 1024) != 0) {
        int rc = -errno;
        if (fd >= 0) {
            close(fd);
        }
        return rc != 0 ? rc : -EINVAL;
    }
    socklen_t length = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &length);
    *port = ntohs(addr.sin_port);
    ps->listen_fd = fd;
    return 0;
}

static void paysim_usage(FILE *out)
{
    fprintf(out,
            "usage: stockd-paysim [options]\n"
            "  --host ADDR           IPv4 address to listen on (default 127.0.0.1)\n"
            "  --port N              port (default 0: any; the listening line tells)\n"
            "  --failure-rate R      share of charges declined (0..1, default 0)\n"
            "  --timeout-rate R      share of charges never answered (0..1, default 0)\n"
            "  --latency-ms MS       time to answer a charge (default 0)\n"
            "  --ledger FILE         one line \"<key> ok|declined\" per charge, read at start\n"
            "  --seed N              the random decisions' seed (default: the clock)\n"
            "  --help\n");
}

static int paysim_parse_rate(const char *value, double *out)
{
    char *end = NULL;
    double rate = strtod(value, &end);
    if (end == value || *end != '\0' || !(rate >= 0.0 && rate <= 1.0)) {
        return -EINVAL;
    }
    *out = rate;
    return 0;
}

static int paysim_parse(struct paysim_options *o, int argc, char **argv)
{
    static const struct option options[] = {
        {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'},
        {"failure-rate", required_argument, 0, 'f'},
        {"timeout-rate", required_argument, 0, 't'},
        {"latency-ms", required_argument, 0, 'l'},
        {"ledger", required_argument, 0, 'L'},
        {"seed", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int opt = 0;
    int rc = 0;
    while (rc == 0 && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'H':
            rc = strlen(optarg) < sizeof o->host ? (strcpy(o->host, optarg), 0) : -EINVAL;
            break;
        case 'p': o->port = atoi(optarg); break;
        case 'f': rc = paysim_parse_rate(optarg, &o->sim.failure_rate); break;
        case 't': rc = paysim_parse_rate(optarg, &o->sim.timeout_rate); break;
        case 'l': o->sim.latency_ms = atoll(optarg); break;
        case 'L': o->sim.ledger_path = optarg; break;
        case 's': o->seed = strtoull(optarg, NULL, 10); break;
        case 'h': paysim_usage(stdout); exit(0);
        default: return -EINVAL;
        }
    }
    if (rc != 0 || optind != argc || o->port < 0 || o->port > 65535 || o->sim.latency_ms < 0 ||
        o->sim.latency_ms > PAY_SIM_LATENCY_MS_MAX) {
        return -EINVAL;
    }
    return 0;
}

/* The loop: never ends (the process is stopped by a signal; the ledger is written line by
 * line, so a kill loses nothing that was answered). */
static void paysim_run(struct paysim *ps)
{
    struct epoll_event events[PAYSIM_EVENTS_MAX];
    for (;;) {
        int wait_ms = ps->charges_waiting > 0 ? 1 : -1; /* pay_sim's due times: 1 ms ticks */
        int n = epoll_wait(ps->epoll_fd, events, PAYSIM_EVENTS_MAX, wait_ms);
        SVC_ASSERT(n >= 0 || errno == EINTR);
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == PAYSIM_LISTEN_TAG) {
                paysim_accept(ps);
            } else {
                paysim_on_event(ps, events[i].data.u64, events[i].events);
            }
        }
        paysim_results(ps);
    }
}

int main(int argc, char **argv)
{
    struct paysim_options o = {.host = "127.0.0.1"};
    if (paysim_parse(&o, argc, argv) != 0) {
        paysim_usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    static struct paysim ps;
    uint64_t seed = o.seed != 0 ? o.seed : (uint64_t)clock_wall_ms();
    ps.sim = pay_sim_new(&o.sim, seed);
    ps.conns = calloc(PAYSIM_CONNS_MAX, sizeof *ps.conns);
    ps.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    int port = 0;
    int rc = ps.sim != NULL && ps.conns != NULL && ps.epoll_fd >= 0 ? 0 : -ENOMEM;
    rc = rc == 0 ? paysim_listen(&ps, &o, &port) : rc;
    if (rc != 0) {
        log_error("stockd-paysim: cannot start on %s:%d (%s)", o.host, o.port, strerror(-rc));
        return 1;
    }
    ps.provider = pay_sim_provider(ps.sim);
    for (uint32_t slot = 0; slot < PAYSIM_CONNS_MAX; slot++) {
        ps.conns[slot].fd = -1;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = PAYSIM_LISTEN_TAG;
    rc = epoll_ctl(ps.epoll_fd, EPOLL_CTL_ADD, ps.listen_fd, &ev);
    SVC_ASSERT(rc == 0);
    const struct pay_sim_stats *st = pay_sim_stats(ps.sim);
    printf("stockd-paysim listening on http://%s:%d (ledger %s, %" PRIu64 " keys)\n", o.host, port,
           o.sim.ledger_path != NULL ? o.sim.ledger_path : "none", st->keys);
    fflush(stdout);
    paysim_run(&ps);
    SVC_ASSERT(!"the loop never ends");
    return 1;
}
