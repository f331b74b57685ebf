/*
 * main.c - options and startup only: parse flags, open storage, load state, start the writer
 * and the I/O threads, then wait for SIGINT/SIGTERM and stop in order (no new commands, the
 * writer drains its queue, replies go out). Read svc_limits.h and errors.h next, then the files in
 * the order the README's "Source layout" gives.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "http/app.h"
#include "http/server.h"
#include "pay/pay_http.h"
#include "pay/pay_breaker.h"
#include "pay/pay_sim.h"
#include "read/audit.h"
#include "store/store_open.h"
#include "work/work.h"
#include "relay/relay.h"
#include "http/api.h"
#include "intake/intake_consume.h"
#include "intake/intake_pub.h"

/* Time the I/O threads get to send the last replies after the writer stopped. */
#define MAIN_SHUTDOWN_GRACE_US 200000

static struct app main_app;

static void main_usage(FILE *out)
{
    fprintf(out,
            "usage: stockd [options]\n"
            "  --listen HOST:PORT     address to serve (default 127.0.0.1:8080; port 0 = any)\n"
            "  --data-dir DIR         where the SQLite database (and admin.token) live\n"
            "                         (default ./data)\n"
            "  --store URI            postgres://user@host:port/db: keep everything in\n"
            "                         PostgreSQL instead (several instances may share it)\n"
            "  --threads N            HTTP I/O threads (default: number of cores)\n"
            "  --allow-reset          enable POST /reset (seed 004, for tests)\n"
            "  --ticket-sku SKU       sku of the seed-004 routes (default TICKET-A)\n"
            "  --idempotency-retention-hours H  keep idempotency records H hours (default 168;\n"
            "                         a sweep every 10 minutes deletes the older ones)\n"
            "  --tokens-file FILE     bearer tokens, lines \"<principal> <role> <token>\" (role\n"
            "                         read, write or admin; token may be sha256:<hex>); without\n"
            "                         it: $STOCKD_TOKENS (principal:role:token,...), else\n"
            "                         DIR/tokens, else a new admin token in DIR/admin.token\n"
            "  --anonymous-role R     none (default), read or write: the role of a request\n"
            "                         without a token (seed clients send none)\n"
            "  --snapshot-every-events N  write a snapshot of the read model every N events\n"
            "                         (default 100000, or the read model's rows when it has\n"
            "                         more; also at a clean stop; 0: never), so that a start\n"
            "                         replays only the events after it\n"
            "  --max-stores N         stores held in memory (default 32, at most 4096)\n"
            "  --max-products N       products (skus) held in memory (default 65536)\n"
            "  --max-stock-items N    stock items, (store, sku) pairs (default 262144)\n"
            "  --max-reservations N   ACTIVE reservations and checkout orders at once (default\n"
            "                         16384; the read model remembers 4 x N, ended or not).\n"
            "                         Tables are reserved at start and filled as used; past\n"
            "                         a limit a command gets 507 capacity_exceeded\n"
            "  --log-level LEVEL      debug, info, warn or error (default info)\n"
            "  --log-format FORMAT    text (default) or json: one JSON object per line\n"
            "                         (time, level, file, line, msg, traceId)\n"
            "  --access-log PATH      one line per request (method, route, status,\n"
            "                         durationMs, trace id, principal; never a token) in\n"
            "                         the --log-format, appended to PATH; \"-\" is stderr\n"
            "  --workers on|off       run the checkout order workers (default on; with\n"
            "                         several instances on one PostgreSQL, each stage runs\n"
            "                         on the instance that holds its lease)\n"
            "  --lease-ms MS          the lease of a worker stage, of the relay and of the\n"
            "                         intake consumer (default 5000, 100..600000; renewed\n"
            "                         every MS/3; a stopped holder's is taken after it)\n"
            "  --instance-id ID       this instance's name in the leases (default\n"
            "                         hostname:pid:start-ms)\n"
            "  --payment-failure-rate R  payment simulator: share of declined charges (0..1)\n"
            "  --payment-timeout-rate R  payment simulator: share of charges that time out\n"
            "  --payment-latency-ms MS   payment simulator: time to answer a charge (default 0)\n"
            "  --payment-ledger FILE  payment simulator's ledger of charges (default\n"
            "                         DIR/payment-ledger.txt)\n"
            "  --payment-url URL      charge an HTTP payment provider (POST URL/payments with\n"
            "                         Idempotency-Key, e.g. stockd-paysim) instead of the\n"
            "                         in-process simulator; URL is http://HOST:PORT[/PREFIX]\n"
            "  --payment-timeout-ms MS  the HTTP provider's deadline per charge (default 2000)\n"
            "  --payment-breaker on|off  the circuit breaker around the payment provider\n"
            "                         (default on; off: an outage dead-letters the orders)\n"
            "  --amqp URL             amqp://user:password@host:port/vhost: publish every\n"
            "                         committed event to the RabbitMQ stream stockd.events\n"
            "                         (the outbox relay; on one PostgreSQL, the holder of\n"
            "                         its lease publishes), honour Prefer: respond-async on\n"
            "                         purchases and orders (202 once stockd.commands has the\n"
            "                         command) and apply the commands of that stream\n"
            "                         (asynchronous intake; on one PostgreSQL, the holder\n"
            "                         of its lease consumes); without it, no broker is used\n"
            "  --relay on|off         with --amqp, run the outbox relay (default on; off: an\n"
            "                         instance that only takes asynchronous commands, e.g.\n"
            "                         while another instance relays the events)\n"
            "  --audit                replay the database's event log, check every stock\n"
            "                         invariant, print the report and exit (1 if violated)\n"
            "  --help\n");
}

static int main_parse_listen(struct app_config *c, const char *value)
{
    const char *colon = strrchr(value, ':');
    if (colon == NULL || (size_t)(colon - value) >= sizeof c->listen_host) {
        return -EINVAL;
    }
    memcpy(c->listen_host, value, (size_t)(colon - value));
    c->listen_host[colon - value] = '\0';
    char *end = NULL;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) {
        return -EINVAL;
    }
    c->listen_port = (int)port;
    return 0;
}

/* --log-format text|json. */
static int main_parse_log_format(const char *value)
{
    if (strcmp(value, "text") == 0 || strcmp(value, "json") == 0) {
        log_set_format(value[0] == 't' ? LOG_FORMAT_TEXT : LOG_FORMAT_JSON);
        return 0;
    }
    fprintf(stderr, "stockd: --log-format takes text or json, not \"%s\"\n", value);
    return -EINVAL;
}

static int main_parse_level(const char *value)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(value, names[i]) == 0) {
            log_set_level((enum log_level)i);
            return 0;
        }
    }
    return -EINVAL;
}

/* --anonymous-role: none, read or write. Never admin: admin routes always need a token. */
static int main_parse_anonymous_role(struct app_config *c, const char *value)
{
    if (strcmp(value, "none") == 0) {
        c->anonymous_role = AUTH_ROLE_NONE;
        return 0;
    }
    enum auth_role role = auth_role_parse(value, strlen(value));
    if (role != AUTH_ROLE_READ && role != AUTH_ROLE_WRITE) {
        fprintf(stderr, "stockd: --anonymous-role takes none, read or write, not \"%s\"\n", value);
        return -EINVAL;
    }
    c->anonymous_role = role;
    return 0;
}

/* ---- checkout order workers (issue 11): their flags, start and reply hook ---- */

static int main_parse_on_off(const char *value, bool *out)
{
    *out = strcmp(value, "on") == 0;
    return *out || strcmp(value, "off") == 0 ? 0 : -EINVAL;
}

/* --relay on|off (opt 'R'). */
static int main_parse_relay(struct app_config *c, const char *value)
{
    c->relay = strcmp(value, "on") == 0;
    return c->relay || strcmp(value, "off") == 0 ? 0 : -EINVAL;
}

static int main_parse_workers(struct app_config *c, const char *value)
{
    c->workers = strcmp(value, "on") == 0;
    return c->workers || strcmp(value, "off") == 0 ? 0 : -EINVAL;
}

static int main_parse_rate(const char *value, double *out)
{
    char *end = NULL;
    double rate = strtod(value, &end);
    if (*end != '\0' || !(rate >= 0.0 && rate <= 1.0)) {
        return -EINVAL;
    }
    *out = rate;
    return 0;
}

/* The writer's reply hook: a command goes back to the pool it came from. */
static void main_writer_reply(struct command *cmd, void *context)
{
    if (cmd->origin == CMD_ORIGIN_WORKER) {
        work_writer_reply(cmd);
    } else if (cmd->origin == CMD_ORIGIN_INTAKE) {
        intake_consume_writer_reply(cmd);
    } else {
        http_writer_reply(cmd, context);
    }
}

/* The writer's durable hook: the read model learns the seq, and the relay wakes. */
static void main_durable_hook(int64_t seq, void *context)
{
    projector_durable_hook(seq, context);
    relay_notify(atomic_load(&main_app.relay));
}

/* The writer's committed hook: the workers wake if a stage has work in the events, and the
 * read model applies them. */
static void main_committed_hook(const struct event *events, size_t count, void *context)
{
    work_notify_events(atomic_load(&main_app.work), events, count);
    projector_committed_hook(events, count, context);
}

/* Starts the outbox relay when --amqp names a broker; exits on failure (a broker that is down
 * is no failure: the relay connects when it can). */
static void main_start_relay(struct app *app)
{
    if (app->config.amqp_url[0] == '\0') {
        return;
    }
    if (!app->config.relay) {
        log_info("relay off (--relay off): committed events stay in the database (GET "
                 "/v1/events, /v1/stream); none is published to %s",
                 RELAY_STREAM);
        return;
    }
    struct relay_config rc = {app->config.db_path, app->config.amqp_url, &app->writer.acked_seq,
                              app->config.instance_id, app->config.lease_ms};
    struct relay *relay = relay_new(&rc);
    if (relay == NULL || relay_start(relay) != 0) {
        log_error("cannot start the outbox relay (--amqp)");
        exit(1);
    }
    atomic_store(&app->relay, relay);
}

/* Starts asynchronous intake when --amqp names a broker: the publisher of the commands the
 * HTTP side accepts (a broker that is down is no failure: asynchronous requests get 503
 * until it connects) and the consumer of the stream that hands them to the writer (it
 * connects when it can); exits on failure. */
static void main_start_intake(struct app *app)
{
    if (app->config.amqp_url[0] == '\0') {
        return;
    }
    struct intake_consume_config ic = {
        app->config.db_path, app->config.amqp_url,    &app->queue,
        api_decode_async,    app->config.instance_id, app->config.lease_ms};
    struct intake_consume *consumer = intake_consume_new(&ic);
    if (consumer == NULL || intake_consume_start(consumer) != 0) {
        log_error("cannot start the consumer of the stream of commands (--amqp)");
        exit(1);
    }
    atomic_store(&app->intake, consumer);
    struct intake_pub_config pc = {app->config.amqp_url};
    struct intake_pub *pub = intake_pub_new(&pc);
    if (pub == NULL || intake_pub_start(pub) != 0) {
        log_error("cannot start the publisher of asynchronous commands (--amqp)");
        exit(1);
    }
    atomic_store(&app->intake_pub, pub);
}

/* Starts the payment provider (the simulator, or the HTTP one with --payment-url) and the
 * workers (unless --workers off); exits on failure. */
static void main_start_workers(struct app *app)
{
    struct app_config *c = &app->config;
    if (!c->workers) {
        log_info("workers off (--workers off): checkout orders stay PENDING until they expire");
        return;
    }
    const struct pay_provider *provider = NULL;
    struct pay_sim *sim = NULL;
    if (c->payment_url[0] != '\0') {
        struct pay_http_config hc = {c->payment_url, c->payment_timeout_ms};
        struct pay_http *http = pay_http_new(&hc); /* lives as long as the process */
        provider = http != NULL ? pay_http_provider(http) : NULL;
    } else {
        if (c->payment_ledger[0] == '\0') {
            snprintf(c->payment_ledger, sizeof c->payment_ledger, "%s/payment-ledger.txt",
                     c->data_dir);
        }
        struct pay_sim_config pc = {c->payment_failure_rate, c->payment_timeout_rate,
                                    c->payment_latency_ms, c->payment_ledger};
        sim = pay_sim_new(&pc, (uint64_t)clock_wall_ms());
        provider = sim != NULL ? pay_sim_provider(sim) : NULL;
    }
    /* The circuit breaker wraps whichever provider runs (unless --payment-breaker off). */
    struct pay_breaker *breaker = NULL;
    if (provider != NULL && c->payment_breaker) {
        breaker = pay_breaker_new(provider);
        provider = breaker != NULL ? pay_breaker_provider(breaker) : NULL;
    }
    struct work_config wc = {c->db_path, &app->queue,   provider,       NULL,
                             NULL,       clock_wall_ms, c->instance_id, c->lease_ms};
    struct work *w = provider != NULL ? work_new(&wc) : NULL;
    if (w == NULL || work_start(w) != 0) {
        log_error("cannot start the checkout order workers");
        exit(1);
    }
    atomic_store(&app->pay_sim, sim);
    atomic_store(&app->pay_breaker, breaker);
    atomic_store(&app->work, w);
}

/* A count of 0 or more, all digits. */
static int main_parse_count(const char *value, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long n = strtoll(value, &end, 10);
    if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || n < 0) {
        return -EINVAL;
    }
    *out = n;
    SVC_ASSERT(*out >= 0);
    return 0;
}

/* --amqp URL: an amqp:// URL that fits (its form is checked when the relay connects). */
static int main_parse_amqp(struct app_config *c, const char *value)
{
    if (strncmp(value, "amqp://", 7) != 0 || strlen(value) >= sizeof c->amqp_url) {
        return -EINVAL;
    }
    strcpy(c->amqp_url, value);
    return 0;
}

/* --payment-url URL (opt 'U') and --payment-timeout-ms MS (opt 'M'): the HTTP provider. */
static int main_parse_payment_http(struct app_config *c, int opt, const char *value)
{
    SVC_ASSERT(opt == 'U' || opt == 'M');
    if (opt == 'U') {
        return strlen(value) < sizeof c->payment_url ? (strcpy(c->payment_url, value), 0) : -EINVAL;
    }
    int rc = main_parse_count(value, &c->payment_timeout_ms);
    if (rc == 0 && (c->payment_timeout_ms < 1 || c->payment_timeout_ms > PAY_HTTP_TIMEOUT_MS_MAX)) {
        return -EINVAL;
    }
    return rc;
}

/* --lease-ms: WORK_LEASE_MS_MIN..WORK_LEASE_MS_MAX. */
static int main_parse_lease_ms(struct app_config *c, const char *value)
{
    int rc = main_parse_count(value, &c->lease_ms);
    return rc == 0 && (c->lease_ms < WORK_LEASE_MS_MIN || c->lease_ms > WORK_LEASE_MS_MAX) ? -EINVAL
                                                                                           : rc;
}

/* --instance-id: not empty, and short enough for a lease's holder. */
static int main_parse_instance_id(struct app_config *c, const char *value)
{
    _Static_assert(sizeof c->instance_id <= STORE_LEASE_HOLDER_BYTES_MAX + 1, "fits a holder");
    if (value[0] == '\0' || strlen(value) >= sizeof c->instance_id) {
        return -EINVAL;
    }
    strcpy(c->instance_id, value);
    return 0;
}

/* --lease-ms (opt 'E') and --instance-id (opt 'I'): the workers' leases. */
static int main_parse_lease(struct app_config *c, int opt, const char *value)
{
    SVC_ASSERT(opt == 'E' || opt == 'I');
    return opt == 'E' ? main_parse_lease_ms(c, value) : main_parse_instance_id(c, value);
}

/* --max-stores (opt '1'), --max-products, --max-stock-items, --max-reservations ('4'): a
 * whole number within the table's hard bound (base/capacity.h); a bad one is named on stderr
 * before the usage. */
static int main_parse_capacity(struct app_config *c, int opt, const char *value)
{
    static const char *const names[4] = {"--max-stores", "--max-products", "--max-stock-items",
                                         "--max-reservations"};
    static const uint32_t limits[4] = {CAPACITY_STORES_LIMIT, CAPACITY_PRODUCTS_LIMIT,
                                       CAPACITY_ITEMS_LIMIT, CAPACITY_RESERVATIONS_LIMIT};
    uint32_t *fields[4] = {&c->capacity.stores, &c->capacity.products, &c->capacity.items,
                           &c->capacity.reservations};
    SVC_ASSERT(opt >= '1' && opt <= '4');
    int which = opt - '1';
    int64_t count = 0;
    if (main_parse_count(value, &count) != 0 || count < 1 || count > limits[which]) {
        fprintf(stderr, "stockd: %s must be a whole number from 1 to %" PRIu32 ", not \"%s\"\n",
                names[which], limits[which], value);
        return -EINVAL;
    }
    *fields[which] = (uint32_t)count;
    SVC_ASSERT(*fields[which] >= 1);
    return 0;
}

/* The long options main_parse reads (each one's letter is its case there). */
static const struct option main_options[] = {
    {"listen", required_argument, 0, 'l'},
    {"data-dir", required_argument, 0, 'd'},
    {"threads", required_argument, 0, 't'},
    {"allow-reset", no_argument, 0, 'r'},
    {"ticket-sku", required_argument, 0, 's'},
    {"idempotency-retention-hours", required_argument, 0, 'i'},
    {"log-level", required_argument, 0, 'v'},
    {"log-format", required_argument, 0, 'f'},
    {"access-log", required_argument, 0, 'x'},
    {"help", no_argument, 0, 'h'},
    {"tokens-file", required_argument, 0, 'T'},
    {"audit", no_argument, 0, 'a'},
    {"store", required_argument, 0, 'S'},
    {"anonymous-role", required_argument, 0, 'A'},
    {"workers", required_argument, 0, 'W'},
    {"payment-failure-rate", required_argument, 0, 'F'},
    {"payment-timeout-rate", required_argument, 0, 'O'},
    {"payment-latency-ms", required_argument, 0, 'L'},
    {"payment-ledger", required_argument, 0, 'P'},
    {"payment-breaker", required_argument, 0, 'B'},
    {"snapshot-every-events", required_argument, 0, 'N'},
    {"payment-url", required_argument, 0, 'U'},
    {"payment-timeout-ms", required_argument, 0, 'M'},
    {"amqp", required_argument, 0, 'Q'},
    {"relay", required_argument, 0, 'R'},
    {"lease-ms", required_argument, 0, 'E'},
    {"instance-id", required_argument, 0, 'I'},
    {"max-stores", required_argument, 0, '1'},
    {"max-products", required_argument, 0, '2'},
    {"max-stock-items", required_argument, 0, '3'},
    {"max-reservations", required_argument, 0, '4'},
    {0, 0, 0, 0},
};

static int main_parse(struct app_config *c, int argc, char **argv)
{
    int opt = 0;
    int rc = 0;
    while (rc == 0 && (opt = getopt_long(argc, argv, "", main_options, NULL)) != -1) {
        switch (opt) {
        case 'l': rc = main_parse_listen(c, optarg); break;
        case 'd': rc = strlen(optarg) < 512 ? (strcpy(c->data_dir, optarg), 0) : -EINVAL; break;
        case 't': c->io_thread_count = atoi(optarg); break;
        case 'r': c->allow_reset = true; break;
        case 's':
            rc = strlen(optarg) <= SKU_BYTES_MAX ? (strcpy(c->ticket_sku, optarg), 0) : -EINVAL;
            break;
        case 'i': c->idem_retention_ms = atoll(optarg) * 3600 * 1000; break;
        case 'v': rc = main_parse_level(optarg); break;
        case 'f': rc = main_parse_log_format(optarg); break;
        case 'x': c->access_log = optarg[0] != '\0' ? optarg : NULL; break;
        case 'T': c->tokens_file = optarg; break;
        case 'a': c->audit_only = true; break;
        case 'S':
            rc = store_uri_is_postgres(optarg) && strlen(optarg) < sizeof c->store_uri
                     ? (strcpy(c->store_uri, optarg), 0)
                     : -EINVAL;
            break;
        case 'A': rc = main_parse_anonymous_role(c, optarg); break;
        case 'W': rc = main_parse_workers(c, optarg); break;
        case 'R': rc = main_parse_relay(c, optarg); break;
        case 'F': rc = main_parse_rate(optarg, &c->payment_failure_rate); break;
        case 'O': rc = main_parse_rate(optarg, &c->payment_timeout_rate); break;
        case 'L': c->payment_latency_ms = atoll(optarg); break;
        case 'P':
            rc = strlen(optarg) < sizeof c->payment_ledger ? (strcpy(c->payment_ledger, optarg), 0)
                                                           : -EINVAL;
            break;
        case 'N': rc = main_parse_count(optarg, &c->snapshot_every_events); break;
        case 'U':
        case 'M': rc = main_parse_payment_http(c, opt, optarg); break;
        case 'B': rc = main_parse_on_off(optarg, &c->payment_breaker); break;
        case 'Q': rc = main_parse_amqp(c, optarg); break;
        case 'E':
        case 'I': rc = main_parse_lease(c, opt, optarg); break;
        case '1':
        case '2':
        case '3':
        case '4': rc = main_parse_capacity(c, opt, optarg); break;
        case 'h': main_usage(stdout); exit(0);
        default: return -EINVAL;
        }
    }
    if (rc != 0 || optind != argc || !capacity_valid(&c->capacity) || c->io_thread_count < 1 ||
        c->io_thread_count > IO_THREADS_MAX || c->idem_retention_ms <= 0) {
        return -EINVAL;
    }
    return 0;
}

static void main_defaults(struct app_config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    strcpy(c->data_dir, "./data");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c->io_thread_count = cores < 1 ? 1 : cores > IO_THREADS_MAX ? IO_THREADS_MAX : (int)cores;
    strcpy(c->ticket_sku, "TICKET-A");
    c->idem_retention_ms = IDEM_RETENTION_MS_DEFAULT;
    c->workers = true;
    c->relay = true;
    c->payment_breaker = true;
    c->snapshot_every_events = SNAPSHOT_EVERY_EVENTS;
    c->payment_timeout_ms = PAY_HTTP_TIMEOUT_MS_DEFAULT;
    c->capacity = capacity_default();
}

/* The database: the --store uri, else the SQLite file in the data directory. */
static void main_db_path(struct app_config *c)
{
    if (c->store_uri[0] != '\0') {
        strcpy(c->db_path, c->store_uri);
    } else {
        snprintf(c->db_path, sizeof c->db_path, "%s/stockd.db", c->data_dir);
    }
}

/* Appends length bytes of text to out (size bytes), truncating; keeps it terminated. */
static void main_append(char *out, size_t size, const char *text, size_t length)
{
    size_t used = strlen(out);
    size_t room = size - 1 - used;
    size_t n = length < room ? length : room;
    memcpy(out + used, text, n);
    out[used + n] = '\0';
}

/* The database for logs and the listening line: a uri's password is never printed. */
static void main_db_shown(const char *db_path, char *out, size_t size)
{
    SVC_ASSERT(size > 0);
    out[0] = '\0';
    const char *scheme_end = strstr(db_path, "://");
    const char *at = scheme_end != NULL ? strchr(scheme_end + 3, '@') : NULL;
    const char *colon = scheme_end != NULL ? strchr(scheme_end + 3, ':') : NULL;
    if (at == NULL || colon == NULL || colon > at) {
        main_append(out, size, db_path, strlen(db_path));
        return;
    }
    main_append(out, size, db_path, (size_t)(colon - db_path));
    main_append(out, size, ":***", 4);
    main_append(out, size, at, strlen(at));
}

/* --audit: the report of audit.h on stdout; exit status 0 when every invariant holds. */
static int main_audit(struct app_config *c)
{
    main_db_path(c);
    struct store_reader *reader = NULL;
    struct audit_report report;
    if (store_reader_open(&reader, c->db_path) != 0 || audit_run(reader, NULL, &report) != 0) {
        log_error("audit: cannot read %s", c->db_path);
        store_reader_close(reader);
        return 2;
    }
    printf("%s\n", report.json);
    int status = report.ok ? 0 : 1;
    audit_report_free(&report);
    store_reader_close(reader);
    return status;
}

/* Raises the soft limit of open files to the hard one: every connection is a descriptor, and
 * a flash sale opens thousands. */
static void main_raise_fd_limit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return;
    }
    if (limit.rlim_cur < limit.rlim_max) {
        rlim_t before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) == 0) {
            log_info("open files: raised the soft limit from %llu to %llu",
                     (unsigned long long)before, (unsigned long long)limit.rlim_cur);
        }
    }
}

/* Creates the data directory (0700) when absent; warns when an existing one lets others in:
 * it holds stored responses, customer ids and the token hashes. Exits when it cannot. */
static void main_data_dir(const struct app_config *c)
{
    if (mkdir(c->data_dir, 0700) != 0 && errno != EEXIST) {
        log_error("cannot create data directory %s: %s", c->data_dir, strerror(errno));
        exit(1);
    }
    struct stat st;
    if (stat(c->data_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        log_error("data directory %s is not a directory", c->data_dir);
        exit(1);
    }
    if ((st.st_mode & 0077) != 0) {
        log_warn("data directory %s has mode %03o: group and others can enter it (chmod 700)",
                 c->data_dir, (unsigned)(st.st_mode & 0777));
    }
}

/* Opens storage and loads the writer; exits with a logged reason on failure (STYLE 8). */
static struct store *main_open_storage(struct app *app)
{
    struct app_config *c = &app->config;
    main_data_dir(c);
    main_db_path(c);
    char shown[sizeof c->db_path];
    main_db_shown(c->db_path, shown, sizeof shown);
    struct store *store = NULL;
    if (store_open(&store, c->db_path) != 0) {
        log_error("cannot open the database %s", shown);
        exit(1);
    }
    if (dom_init(&app->domain, &c->capacity) != 0 ||
        queue_init(&app->queue, QUEUE_DEPTH_MAX) != 0 ||
        projector_init(&app->projector, c->db_path, &c->capacity) != 0) {
        log_error("out of memory allocating the fixed tables");
        exit(1);
    }
    struct writer_config wc = {
        .store = store,
        .domain = &app->domain,
        .queue = &app->queue,
        .idem_retention_ms = c->idem_retention_ms,
        .wall_ms = clock_wall_ms,
        .reply_context = NULL,
        .reply = main_writer_reply,
        .replies_done = http_writer_replies_flush,
        .committed_context = &app->projector,
        .durable = main_durable_hook,
        .committed = main_committed_hook,
        .applied_seq = projector_applied_hook,
        .snapshot = projector_snapshot_take,
        .snapshot_saved = projector_snapshot_saved,
    };
    app->projector.snapshot_every_events = c->snapshot_every_events;
    struct store_reader *reader = NULL;
    if (store_reader_open(&reader, c->db_path) != 0 ||
        projector_snapshot_load(&app->projector, store, reader) != 0 ||
        projector_load(&app->projector, reader) != 0) {
        log_error("cannot replay the event log of %s", shown);
        exit(1);
    }
    store_reader_close(reader);
    if (writer_init(&app->writer, &wc) != 0) {
        log_error("cannot load state from %s", shown);
        exit(1);
    }
    if (store_is_shared(store) &&
        follower_start(&app->follower, &app->projector, c->db_path) != 0) {
        log_error("cannot start the follower of the shared event log");
        exit(1);
    }
    return store;
}

static int main_wait_for_signal(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int signal_number = 0;
    sigwait(&set, &signal_number);
    return signal_number;
}

/* --access-log PATH: opened before any thread starts; exits with the reason on failure. */
static void main_open_access_log(const struct app_config *c)
{
    int rc = c->access_log != NULL ? log_access_open(c->access_log) : 0;
    if (rc != 0) {
        log_error("cannot open the access log %s: %s", c->access_log, strerror(-rc));
        exit(1);
    }
    SVC_ASSERT(log_access_enabled() == (c->access_log != NULL));
}

int main(int argc, char **argv)
{
    struct app *app = &main_app;
    main_defaults(&app->config);
    if (main_parse(&app->config, argc, argv) != 0) {
        main_usage(stderr);
        return 2;
    }
    umask(0077); /* the database, its WAL and every file stockd makes: owner only (0600) */
    if (app->config.audit_only) {
        return main_audit(&app->config);
    }
    signal(SIGPIPE, SIG_IGN);
    main_open_access_log(&app->config);
    main_raise_fd_limit();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread inherits this; main sigwaits */
    app->started_wall_ms = clock_wall_ms();
    struct store *store = main_open_storage(app);
    char admin_token_path[1024];
    auth_init(&app->auth);
    int auth_source = auth_configure(&app->auth, app->config.tokens_file, app->config.data_dir,
                                     admin_token_path, sizeof admin_token_path);
    if (auth_source < 0) {
        return 1; /* auth_configure logged why */
    }
    if (app->config.anonymous_role != AUTH_ROLE_NONE) {
        log_warn("requests without a token have the %s role (--anonymous-role)",
                 auth_role_name(app->config.anonymous_role));
    }
    int port = 0;
    int fd = http_listen(app->config.listen_host, app->config.listen_port, &port);
    if (fd < 0) {
        log_error("cannot listen on %s:%d: %s", app->config.listen_host, app->config.listen_port,
                  strerror(-fd));
        return 1;
    }
    if (writer_start(&app->writer) != 0 || http_start(app, fd, app->config.io_thread_count) != 0) {
        log_error("cannot start threads");
        return 1;
    }
    if (app->config.instance_id[0] == '\0') { /* one id for every lease of the instance */
        work_lease_default_holder(app->config.instance_id, sizeof app->config.instance_id);
    }
    main_start_workers(app);
    main_start_relay(app);
    main_start_intake(app);
    char shown[sizeof app->config.db_path];
    main_db_shown(app->config.db_path, shown, sizeof shown);
    printf("stockd listening on http://%s:%d (data %s, %d threads)\n", app->config.listen_host,
           port, shown, app->config.io_thread_count);
    if (auth_source == AUTH_SOURCE_GENERATED) {
        printf("admin token written to %s\n", admin_token_path); /* after: tests read line 1 */
    }
    fflush(stdout);
    int signal_number = main_wait_for_signal();
    log_info("signal %d: stopping", signal_number);
    atomic_store(&app->shutting_down, true);
    work_stop(atomic_load(&app->work)); /* gives its leases up: another instance goes on now */
    intake_consume_stop(atomic_load(&app->intake)); /* what it did not ack, the next start reads */
    writer_stop(&app->writer);
    follower_stop(&app->follower);
    relay_stop(atomic_load(&app->relay)); /* what it did not see confirmed, the next start sends */
    intake_pub_stop(atomic_load(&app->intake_pub)); /* what still waits is answered 503 */
    usleep(MAIN_SHUTDOWN_GRACE_US);
    store_close(store);
    log_info("stopped");
    _exit(0); /* the I/O threads never return; their loops end with the process */
}
