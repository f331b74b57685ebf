/*
 * stockbench.c - the command line of the load generator: options, the live progress line, the
 * final report (a table on stdout and, with --json, one JSON object) and --verify, which checks
 * the server's final stock against what the run was answered.
 *
 * The load itself (connections, schedules, parsing, histograms) is the engine in
 * src/load/loadgen.c; this file only drives it. Verify reads the stock before and after the run
 * (onHand or, for checkout orders, available from GET /v1/availability; for seed 004,
 * GET /inventory), replays with their own key the
 * requests that never got an answer (so every key has a known outcome), then checks that the
 * units sold equal qty times the keys answered 2xx, that no orderId went to two keys, and that
 * a sample of the orders reads back. It assumes nothing else buys the sku during the run.
 * With --skus N the purchases spread over N skus (loadgen.h, lg_request_sku_index) and verify
 * reads SB_VERIFY_SKUS_MAX of them at most (all N below that, else every ceil(N / 1000)th):
 * each sku read must have sold qty times the keys answered 2xx that bought it.
 * Exit codes: 0 success, 1 no connection or verify failed, 2 bad options.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "load/loadgen.h"

/* Orders read back by verify: a sample spread over the run, enough to catch a class of lost
 * orders (1,000 reads take well under a second) without reading back a million. */
#define SB_VERIFY_ORDERS_MAX 1000

/* Skus whose stock verify reads before and after a --skus run: all of them up to this, else
 * an evenly strided sample of this many. 1,000 reads each side take well under a second; a
 * million would take minutes. */
#define SB_VERIFY_SKUS_MAX 1000
_Static_assert(LG_SKU_BYTES_MAX - LG_SKU_SUFFIX_BYTES_MAX == 55, "the usage text says 55");
_Static_assert(LG_SKUS_MAX == 16777216, "the usage text says 16777216");

/* Unanswered keys verify replays one at a time after the run. Each may be a fresh purchase
 * costing one commit (~1 ms); beyond 10,000 the run was broken anyway and verify says so. */
#define SB_REPLAY_KEYS_MAX 10000

/* Verify gives up on the server after this many requests in a row fail at the transport
 * level (refused, reset, timed out): a dead or hung server would otherwise cost a timeout per
 * replay and per order read. What was not checked then counts as failed. */
#define SB_VERIFY_TRANSPORT_FAILURES_MAX 3

/* Bytes of the JSON result: fixed fields plus at most 500 status codes of ~12 bytes. */
#define SB_JSON_BYTES_MAX (32 * 1024)

/* Longest --duration, --warmup (s), --timeout-ms, --rate and --qty accepted. */
#define SB_SECONDS_MAX (24.0 * 3600)
#define SB_TIMEOUT_MS_MAX 3600000LL
#define SB_RATE_MAX 10000000.0
#define SB_QTY_MAX 1000000000LL
/* Largest --requests: LG_KEYS_MAX, so that a --verify run remembers every answer. */
#define SB_REQUESTS_MAX LG_KEYS_MAX

/* The progress line is printed once per SB_PROGRESS_NS; the main thread checks for the end
 * of the run every SB_POLL_NS in between. */
#define SB_PROGRESS_NS 1000000000LL
#define SB_POLL_NS 50000000LL

#define SB_EXIT_OK 0
#define SB_EXIT_FAILED 1
#define SB_EXIT_USAGE 2

static const char sb_usage_text[] =
    "usage: stockbench --url http://HOST:PORT [options]\n"
    "\n"
    "Load an HTTP server over keep-alive connections and report throughput and latency.\n"
    "\n"
    "  --url URL          server to load (http only), e.g. http://127.0.0.1:8080\n"
    "  --mode MODE        closed (default): each connection sends its next request as soon\n"
    "                     as the previous one is answered; open: requests at a constant rate,\n"
    "                     latency measured from the intended send time\n"
    "  --rate R           open loop: requests per second (required with --mode open)\n"
    "  --connections N    connections (default 64, at most 4096)\n"
    "  --threads T        threads, each with its own epoll and share of the connections\n"
    "                     (default 1)\n"
    "  --duration S       measured seconds (default 10)\n"
    "  --warmup S         seconds before measuring; not in the statistics, but checked by\n"
    "                     --verify (default 1)\n"
    "  --target T         purchase (default): POST /v1/purchase; order: POST /v1/orders (one\n"
    "                     line of --qty --sku, a checkout order); buy-ticket: POST /buy_ticket;\n"
    "                     get: GET --path; seed-purchase: POST /purchase (seed 000), the\n"
    "                     body of purchase; product: POST /v1/products, key n creates\n"
    "                     SKU-<n> with --qty units (n < --requests, required): the catalogue\n"
    "                     of a --skus run\n"
    "  --requests N       end once N requests (warm-up included) are answered, or at the end\n"
    "                     of --duration if sooner (default: the whole --duration)\n"
    "  --path P           request path for --target get (default /)\n"
    "  --sku SKU          sku to buy (default HOT)\n"
    "  --skus N           spread purchases or orders over N skus: request n buys\n"
    "                     SKU-<j>, j in 0..N-1 drawn uniformly from a hash of n (the same j\n"
    "                     for a replay of n); --verify then checks at most 1,000 of them,\n"
    "                     every ceil(N/1000)th (default 1: SKU itself)\n"
    "  --qty N            units per purchase (default 1)\n"
    "  --key-prefix P     Idempotency-Key is P-<n> (default: random per run)\n"
    "  --token T          send Authorization: Bearer T on every request (stockd's\n"
    "                     <data-dir>/admin.token, or a write token)\n"
    "  --timeout-ms MS    an attempt without an answer in MS counts as a timeout (default 5000)\n"
    "  --prefer-async     send Prefer: respond-async (stockd answers 202 once the command\n"
    "                     is durably queued on its stream)\n"
    "  --retry            send a timed-out or failed request again with the same\n"
    "                     Idempotency-Key on a fresh connection, at most 3 times\n"
    "  --verify           check the stock sold (order: held or sold) against the answers\n"
    "                     (purchase, order, buy-ticket)\n"
    "  --label NAME       copied into the JSON result\n"
    "  --json FILE        also write the result as one JSON object to FILE\n"
    "  --quiet            no progress line on stderr\n"
    "  --help             this text\n"
    "\n"
    "Exit status: 0 success, 1 no connection could be made or --verify failed, 2 bad options.\n";

struct sb_options {
    struct lg_config lg;
    const char *url;
    const char *label;     /* NULL if not given */
    const char *json_path; /* NULL if not given */
    const char *token;     /* --token, NULL if not given */
    bool quiet;
    bool verify;
    bool rate_given;
};

/* What verify found; see sb_verify_print for the meaning of each check. */
struct sb_verify {
    bool ok;
    int64_t stock_before; /* onHand (purchase) or current_stock (buy-ticket), summed over the
                           * skus read */
    int64_t stock_after;
    bool stock_after_known; /* the read after the run succeeded */
    uint64_t sku_stride;    /* the skus read are those whose index is a multiple of it */
    uint32_t skus_read;     /* how many: min(skus, SB_VERIFY_SKUS_MAX) */
    uint32_t skus_wrong;    /* of those, skus whose own sold count differs from their keys */
    int64_t sku_before[SB_VERIFY_SKUS_MAX]; /* per sku read: the stock before, after, and */
    int64_t sku_after[SB_VERIFY_SKUS_MAX];  /* the keys answered 2xx that bought it */
    uint64_t sku_keys_2xx[SB_VERIFY_SKUS_MAX];
    uint64_t keys_sent;
    uint64_t keys_2xx;         /* distinct keys answered 2xx */
    uint64_t keys_2xx_checked; /* of those, keys that bought one of the skus read */
    uint64_t keys_no_order;    /* answered 2xx without an orderId (purchase only) */
    uint64_t keys_conflict;    /* answered 2xx with two different orderIds */
    uint64_t keys_unanswered;  /* still without an answer after the replays */
    uint64_t keys_replayed;
    uint64_t duplicate_ids; /* orderIds returned for two different keys */
    uint64_t orders_wanted; /* sample size: min(orderIds, SB_VERIFY_ORDERS_MAX) */
    uint64_t orders_checked;
    uint64_t orders_ok; /* of those, answered 200 */
};

static volatile sig_atomic_t sb_interrupted;

/* Wall-clock milliseconds when the run started (its first connects and sends follow at once):
 * in the JSON, so that a script can time what happens after the requests (e.g. orders PAID)
 * from the first send. */
static int64_t sb_start_wall_ms;

static void sb_on_signal(int signal_number)
{
    (void)signal_number;
    sb_interrupted = 1;
}

/* ---- options ------------------------------------------------------------------------------- */

static int sb_usage_error(const char *message, const char *value)
{
    SVC_ASSERT(message != NULL);
    fprintf(stderr, "stockbench: %s%s%s\n\n%s", message, value ? ": " : "", value ? value : "",
            sb_usage_text);
    return SB_EXIT_USAGE;
}

/* Parses a finite number within [low, high]. */
static bool sb_parse_double(const char *text, double low, double high, double *out)
{
    SVC_ASSERT(low <= high);
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(value) || value < low ||
        value > high) {
        return false;
    }
    *out = value;
    return true;
}

static bool sb_parse_int(const char *text, long long low, long long high, long long *out)
{
    SVC_ASSERT(low <= high);
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < low || value > high) {
        return false;
    }
    *out = value;
    return true;
}

/* True if text is 1..max_length characters of [A-Za-z0-9._-]. */
static bool sb_token_valid(const char *text, size_t max_length)
{
    size_t length = strlen(text);
    if (length == 0 || length > max_length) {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        char c = text[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok) {
            return false;
        }
    }
    SVC_ASSERT(length <= max_length);
    return true;
}

/* True if text is a request path: starts with '/', printable, no spaces. */
static bool sb_path_valid(const char *text)
{
    size_t length = strlen(text);
    if (length == 0 || length >= LG_PATH_BYTES_MAX || text[0] != '/') {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        if ((unsigned char)text[i] <= 0x20 || (unsigned char)text[i] >= 0x7f) {
            return false;
        }
    }
    SVC_ASSERT(length < LG_PATH_BYTES_MAX);
    return true;
}

static void sb_options_defaults(struct sb_options *o)
{
    memset(o, 0, sizeof *o);
    struct lg_config *c = &o->lg;
    c->mode = LG_MODE_CLOSED;
    c->target = LG_TARGET_PURCHASE;
    strcpy(c->path, "/");
    strcpy(c->sku, "HOT");
    c->qty = 1;
    c->connections = 64;
    c->threads = 1;
    c->duration_ns = 10 * 1000000000LL;
    c->warmup_ns = 1000000000LL;
    c->timeout_ns = 5000 * 1000000LL;
    uint64_t random_bits = 0;
    if (getrandom(&random_bits, sizeof random_bits, 0) != (ssize_t)sizeof random_bits) {
        random_bits = (uint64_t)clock_wall_ms() * 2654435761u ^ (uint64_t)getpid();
    }
    snprintf(c->key_prefix, sizeof c->key_prefix, "sb%010llx",
             (unsigned long long)(random_bits & 0xffffffffffULL));
    SVC_ASSERT(sb_token_valid(c->key_prefix, LG_KEY_PREFIX_BYTES_MAX));
}

/* Applies a choice option (--mode, --target). Returns false for an unknown value. */
static bool sb_option_choice(struct sb_options *o, int option, const char *value)
{
    SVC_ASSERT(option == 'm' || option == 'T');
    if (option == 'm') {
        bool open = strcmp(value, "open") == 0;
        o->lg.mode = open ? LG_MODE_OPEN : LG_MODE_CLOSED;
        return open || strcmp(value, "closed") == 0;
    }
    if (strcmp(value, "purchase") == 0) {
        o->lg.target = LG_TARGET_PURCHASE;
    } else if (strcmp(value, "order") == 0) {
        o->lg.target = LG_TARGET_ORDER;
    } else if (strcmp(value, "buy-ticket") == 0) {
        o->lg.target = LG_TARGET_BUY_TICKET;
    } else if (strcmp(value, "get") == 0) {
        o->lg.target = LG_TARGET_GET;
    } else if (strcmp(value, "seed-purchase") == 0) {
        o->lg.target = LG_TARGET_SEED_PURCHASE;
    } else if (strcmp(value, "product") == 0) {
        o->lg.target = LG_TARGET_PRODUCT;
    } else {
        return false;
    }
    return true;
}

/* Applies a numeric option. Returns false for a malformed or out-of-range value. */
static bool sb_option_number(struct sb_options *o, int option, const char *value)
{
    struct lg_config *c = &o->lg;
    SVC_ASSERT(value != NULL);
    double seconds = 0;
    long long n = 0;
    switch (option) {
    case 'r': o->rate_given = true; return sb_parse_double(value, 1e-3, SB_RATE_MAX, &c->rate_rps);
    case 'c':
        return sb_parse_int(value, 1, LG_CONNECTIONS_MAX, &n) && (c->connections = (uint32_t)n);
    case 't': return sb_parse_int(value, 1, LG_THREADS_MAX, &n) && (c->threads = (uint32_t)n);
    case 'd':
        return sb_parse_double(value, 1e-3, SB_SECONDS_MAX, &seconds) &&
               (c->duration_ns = (int64_t)(seconds * 1e9)) > 0;
    case 'w':
        return sb_parse_double(value, 0, SB_SECONDS_MAX, &seconds) &&
               ((c->warmup_ns = (int64_t)(seconds * 1e9)), true);
    case 'q': return sb_parse_int(value, 1, SB_QTY_MAX, &n) && (c->qty = n);
    case 'o': return sb_parse_int(value, 1, SB_TIMEOUT_MS_MAX, &n) && (c->timeout_ns = n * 1000000);
    case 'n': return sb_parse_int(value, 1, SB_REQUESTS_MAX, &n) && (c->requests_max = (uint64_t)n);
    case 'K': return sb_parse_int(value, 1, LG_SKUS_MAX, &n) && (c->skus = (uint64_t)n);
    }
    SVC_UNREACHABLE();
}

/* Applies a text option. Returns false for an invalid value. */
static bool sb_option_text(struct sb_options *o, int option, const char *value)
{
    struct lg_config *c = &o->lg;
    SVC_ASSERT(value != NULL);
    switch (option) {
    case 'u': o->url = value; return true;
    case 'p': return sb_path_valid(value) && strcpy(c->path, value);
    case 's': return sb_token_valid(value, LG_SKU_BYTES_MAX) && strcpy(c->sku, value);
    case 'k': return sb_token_valid(value, LG_KEY_PREFIX_BYTES_MAX) && strcpy(c->key_prefix, value);
    case 'l': o->label = value; return true;
    case 'j': o->json_path = value; return true;
    case 'a':
        o->token = value; /* checked by lg_endpoint_set_token in sb_options_check */
        return true;
    }
    SVC_UNREACHABLE();
}

/* Checks how the options fit together. Returns an error message or NULL. */
static const char *sb_options_check(struct sb_options *o)
{
    SVC_ASSERT(o->lg.connections >= 1 && o->lg.threads >= 1);
    if (o->url == NULL) {
        return "--url is required";
    }
    if (o->lg.mode == LG_MODE_OPEN && !o->rate_given) {
        return "--rate is required with --mode open";
    }
    if (o->lg.mode == LG_MODE_CLOSED && o->rate_given) {
        return "--rate needs --mode open";
    }
    if (o->lg.threads > o->lg.connections) {
        return "--threads must not exceed --connections";
    }
    if (o->lg.prefer_async && o->lg.target == LG_TARGET_GET) {
        return "--prefer-async needs a POST --target";
    }
    if (o->verify && o->lg.prefer_async) {
        return "--verify needs final answers: not with --prefer-async (answers are 202)";
    }
    if (o->lg.skus > 1 && o->lg.target != LG_TARGET_PURCHASE && o->lg.target != LG_TARGET_ORDER &&
        o->lg.target != LG_TARGET_SEED_PURCHASE) {
        return "--skus needs --target purchase, order or seed-purchase";
    }
    if (o->lg.skus > 1 && strlen(o->lg.sku) + LG_SKU_SUFFIX_BYTES_MAX > LG_SKU_BYTES_MAX) {
        return "--sku with --skus must be at most 55 characters (room for -<index>)";
    }
    if (o->lg.target == LG_TARGET_PRODUCT &&
        (o->lg.requests_max == 0 || o->lg.requests_max > (uint64_t)LG_SKUS_MAX)) {
        return "--target product needs --requests N (the products to create, at most 16777216)";
    }
    if (o->lg.target == LG_TARGET_PRODUCT &&
        strlen(o->lg.sku) + LG_SKU_SUFFIX_BYTES_MAX > LG_SKU_BYTES_MAX) {
        return "--sku with --target product must be at most 55 characters (room for -<n>)";
    }
    if (o->verify && (o->lg.target == LG_TARGET_GET || o->lg.target == LG_TARGET_PRODUCT)) {
        return "--verify needs --target purchase, order or buy-ticket";
    }
    int rc = lg_endpoint_parse(&o->lg.endpoint, o->url);
    if (rc == -EINVAL) {
        return "--url must look like http://HOST:PORT";
    }
    if (rc < 0) {
        return "--url: host does not resolve";
    }
    if (o->token != NULL && lg_endpoint_set_token(&o->lg.endpoint, o->token) != 0) {
        return "--token must be 1-256 printable characters without spaces";
    }
    o->lg.record_keys = o->verify;
    SVC_ASSERT(o->lg.endpoint.address_length > 0);
    return NULL;
}

static const struct option sb_long_options[] = {
    {"url", required_argument, 0, 'u'},
    {"mode", required_argument, 0, 'm'},
    {"rate", required_argument, 0, 'r'},
    {"connections", required_argument, 0, 'c'},
    {"threads", required_argument, 0, 't'},
    {"duration", required_argument, 0, 'd'},
    {"warmup", required_argument, 0, 'w'},
    {"target", required_argument, 0, 'T'},
    {"path", required_argument, 0, 'p'},
    {"sku", required_argument, 0, 's'},
    {"skus", required_argument, 0, 'K'},
    {"qty", required_argument, 0, 'q'},
    {"key-prefix", required_argument, 0, 'k'},
    {"timeout-ms", required_argument, 0, 'o'},
    {"requests", required_argument, 0, 'n'},
    {"retry", no_argument, 0, 'R'},
    {"prefer-async", no_argument, 0, 'P'},
    {"verify", no_argument, 0, 'V'},
    {"label", required_argument, 0, 'l'},
    {"json", required_argument, 0, 'j'},
    {"quiet", no_argument, 0, 'Q'},
    {"token", required_argument, 0, 'a'},
    {"help", no_argument, 0, 'h'},
    {0, 0, 0, 0},
};

/* Fills *o from argv. Returns -1 to go on, or the exit code (help or bad options). */
static int sb_options_parse(struct sb_options *o, int argc, char **argv)
{
    sb_options_defaults(o);
    SVC_ASSERT(argc >= 1 && argv != NULL);
    int option;
    while ((option = getopt_long(argc, argv, "", sb_long_options, NULL)) != -1) {
        bool ok = true;
        if (option == 'h') {
            fputs(sb_usage_text, stdout);
            return SB_EXIT_OK;
        } else if (option == 'R' || option == 'V' || option == 'Q') {
            *(option == 'R' ? &o->lg.retry : option == 'V' ? &o->verify : &o->quiet) = true;
        } else if (option == 'P') {
            o->lg.prefer_async = true;
        } else if (option == 'm' || option == 'T') {
            ok = sb_option_choice(o, option, optarg);
        } else if (strchr("rctdwqonK", option) != NULL) {
            ok = sb_option_number(o, option, optarg);
        } else if (strchr("upsklja", option) != NULL) {
            ok = sb_option_text(o, option, optarg);
        } else {
            return sb_usage_error("unknown option", NULL);
        }
        if (!ok) {
            return sb_usage_error("invalid value", argv[optind - 1]);
        }
    }
    if (optind < argc) {
        return sb_usage_error("unexpected argument", argv[optind]);
    }
    const char *problem = sb_options_check(o);
    SVC_ASSERT(o->lg.qty >= 1);
    return problem == NULL ? -1 : sb_usage_error(problem, NULL);
}

/* ---- progress ------------------------------------------------------------------------------ */

static const char *sb_target_name(enum lg_target target)
{
    SVC_ASSERT(target <= LG_TARGET_PRODUCT);
    return target == LG_TARGET_PURCHASE        ? "purchase"
           : target == LG_TARGET_ORDER         ? "order"
           : target == LG_TARGET_BUY_TICKET    ? "buy-ticket"
           : target == LG_TARGET_SEED_PURCHASE ? "seed-purchase"
           : target == LG_TARGET_PRODUCT       ? "product"
                                               : "get";
}

/* Prints the line for the second between prev and cur. */
static void sb_progress_print(const struct lg_progress *prev, const struct lg_progress *cur,
                              struct lg_hist *scratch)
{
    SVC_ASSERT(cur->completed >= prev->completed);
    lg_hist_init(scratch);
    for (uint32_t b = 0; b < LG_HIST_BUCKETS; b++) {
        scratch->counts[b] = cur->latency.counts[b] - prev->latency.counts[b];
    }
    scratch->count = cur->latency.count - prev->latency.count;
    SVC_ASSERT(scratch->count <= cur->latency.count);
    double seconds = (double)(cur->elapsed_ns - prev->elapsed_ns) / 1e9;
    double rate = seconds > 0 ? (double)(cur->completed - prev->completed) / seconds : 0;
    fprintf(stderr,
            "%7.1fs  completed %10llu  rate %9.0f/s  p99 %8.3f ms  2xx %llu  4xx %llu"
            "  5xx %llu  errors %llu%s\n",
            (double)cur->elapsed_ns / 1e9, (unsigned long long)cur->completed, rate,
            (double)lg_hist_percentile_ns(scratch, 99.0) / 1e6, (unsigned long long)cur->class_2xx,
            (unsigned long long)cur->class_4xx, (unsigned long long)cur->class_5xx,
            (unsigned long long)cur->errors,
            prev->warmup     ? "  (warm-up)"
            : prev->draining ? "  (draining)"
                             : "");
}

/* Waits for the run to end, printing a progress line every second unless quiet, and passing
 * SIGINT/SIGTERM on as an early end of the window. */
static void sb_progress_loop(struct lg_run *run, bool quiet)
{
    static struct lg_progress prev, cur; /* 30 KiB each: off the stack */
    static struct lg_hist scratch;
    lg_run_progress(run, &prev);
    int64_t next_ns = clock_mono_us() * 1000 + SB_PROGRESS_NS;
    while (!lg_run_finished(run)) {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = SB_POLL_NS};
        nanosleep(&pause, NULL);
        if (sb_interrupted) {
            lg_run_stop(run);
        }
        if (clock_mono_us() * 1000 < next_ns) {
            continue;
        }
        next_ns += SB_PROGRESS_NS;
        lg_run_progress(run, &cur);
        if (!quiet) {
            sb_progress_print(&prev, &cur, &scratch);
        }
        prev = cur;
    }
    SVC_ASSERT(lg_run_finished(run));
}

/* ---- report -------------------------------------------------------------------------------- */

static double sb_ms(int64_t ns)
{
    SVC_ASSERT(ns >= 0);
    return (double)ns / 1e6;
}

static double sb_throughput(const struct lg_result *r)
{
    SVC_ASSERT(r->measured_ns >= 0);
    return r->measured_ns > 0 ? (double)r->counts.completed * 1e9 / (double)r->measured_ns : 0;
}

static void sb_report_print(const struct sb_options *o, const struct lg_result *r)
{
    const struct lg_counts *n = &r->counts;
    const struct lg_hist *h = &r->latency;
    SVC_ASSERT(h->count == n->completed);
    SVC_ASSERT(n->unsent <= n->requests);
    printf("stockbench %s: %s loop, %u connections, %u thread%s, %.1f s measured "
           "(+%.1f s warm-up)\n",
           sb_target_name(o->lg.target), o->lg.mode == LG_MODE_OPEN ? "open" : "closed",
           o->lg.connections, o->lg.threads, o->lg.threads == 1 ? "" : "s",
           (double)r->measured_ns / 1e9, (double)o->lg.warmup_ns / 1e9);
    if (o->lg.mode == LG_MODE_OPEN) {
        printf("  target rate     %.1f req/s\n", o->lg.rate_rps);
    }
    printf("  requests        %llu\n", (unsigned long long)n->requests);
    printf("  completed       %llu\n", (unsigned long long)n->completed);
    printf("  throughput      %.1f req/s\n", sb_throughput(r));
    printf("  latency ms      p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
           sb_ms(lg_hist_percentile_ns(h, 50)), sb_ms(lg_hist_percentile_ns(h, 90)),
           sb_ms(lg_hist_percentile_ns(h, 99)), sb_ms(lg_hist_percentile_ns(h, 99.9)),
           sb_ms(h->max_ns), lg_hist_mean_ns(h) / 1e6);
    printf("  status         ");
    for (int code = 100; code < LG_STATUS_CODES; code++) {
        if (n->status[code] > 0) {
            printf(" %d: %llu", code, (unsigned long long)n->status[code]);
        }
    }
    printf("%s\n", n->completed == 0 ? " none" : "");
    printf("  timeouts        %llu\n", (unsigned long long)n->timeouts);
    printf("  retries         %llu\n", (unsigned long long)n->retries);
    printf("  socket errors   %llu\n", (unsigned long long)n->errors);
    if (o->lg.mode == LG_MODE_OPEN) {
        printf("  unsent          %llu (due, but no free connection before the end)\n",
               (unsigned long long)n->unsent);
    }
    printf("  connections     %llu opened, %llu closed by the server\n",
           (unsigned long long)n->connects, (unsigned long long)n->reconnects);
    if (r->keys_exhausted) {
        printf("  note            stopped sending early: %lld answers is the most verify "
               "remembers\n",
               (long long)LG_KEYS_MAX);
    }
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static void sb_json_number(struct jbuf *b, const char *key, double value)
{
    char text[48];
    SVC_ASSERT(!isnan(value)); /* JSON has no NaN */
    int length = snprintf(text, sizeof text, "%.3f", value);
    SVC_ASSERT(length > 0 && (size_t)length < sizeof text);
    jbuf_key(b, key);
    jbuf_raw(b, text, (size_t)length);
}

static void sb_json_latency(struct jbuf *b, const struct lg_hist *h)
{
    SVC_ASSERT(jbuf_ok(b));
    jbuf_key(b, "latency_ms");
    jbuf_lit(b, "{");
    sb_json_number(b, "p50", sb_ms(lg_hist_percentile_ns(h, 50)));
    sb_json_number(b, "p90", sb_ms(lg_hist_percentile_ns(h, 90)));
    sb_json_number(b, "p99", sb_ms(lg_hist_percentile_ns(h, 99)));
    sb_json_number(b, "p999", sb_ms(lg_hist_percentile_ns(h, 99.9)));
    sb_json_number(b, "max", sb_ms(h->max_ns));
    sb_json_number(b, "mean", lg_hist_mean_ns(h) / 1e6);
    jbuf_lit(b, "}");
}

static void sb_json_status(struct jbuf *b, const struct lg_counts *n)
{
    SVC_ASSERT(jbuf_ok(b));
    jbuf_key(b, "status");
    jbuf_lit(b, "{");
    for (int code = 100; code < LG_STATUS_CODES; code++) {
        if (n->status[code] > 0) {
            char key[8];
            snprintf(key, sizeof key, "%d", code);
            jbuf_kv_int(b, key, (int64_t)n->status[code]);
        }
    }
    jbuf_lit(b, "}");
}

static void sb_json_verify(struct jbuf *b, const struct sb_verify *v)
{
    SVC_ASSERT(v != NULL);
    jbuf_lit(b, "{\"ok\":");
    jbuf_lit(b, v->ok ? "true" : "false");
    jbuf_kv_int(b, "stock_before", v->stock_before);
    if (v->stock_after_known) {
        jbuf_kv_int(b, "stock_after", v->stock_after);
        jbuf_kv_int(b, "sold", v->stock_before - v->stock_after);
    } else {
        jbuf_lit(b, ",\"stock_after\":null,\"sold\":null");
    }
    jbuf_kv_int(b, "skus_read", v->skus_read);
    jbuf_kv_int(b, "sku_stride", (int64_t)v->sku_stride);
    jbuf_kv_int(b, "skus_wrong", v->skus_wrong);
    jbuf_kv_int(b, "keys_sent", (int64_t)v->keys_sent);
    jbuf_kv_int(b, "keys_2xx", (int64_t)v->keys_2xx);
    jbuf_kv_int(b, "keys_2xx_checked", (int64_t)v->keys_2xx_checked);
    jbuf_kv_int(b, "keys_2xx_without_order", (int64_t)v->keys_no_order);
    jbuf_kv_int(b, "keys_conflicting", (int64_t)v->keys_conflict);
    jbuf_kv_int(b, "keys_unanswered", (int64_t)v->keys_unanswered);
    jbuf_kv_int(b, "keys_replayed", (int64_t)v->keys_replayed);
    jbuf_kv_int(b, "duplicate_order_ids", (int64_t)v->duplicate_ids);
    jbuf_kv_int(b, "orders_wanted", (int64_t)v->orders_wanted);
    jbuf_kv_int(b, "orders_checked", (int64_t)v->orders_checked);
    jbuf_kv_int(b, "orders_ok", (int64_t)v->orders_ok);
    jbuf_lit(b, "}");
    SVC_ASSERT(b->length > 0);
}

/* Writes the result object to o->json_path. Returns 0 or -errno. */
static int sb_json_write(const struct sb_options *o, const struct lg_result *r,
                         const struct sb_verify *v)
{
    static char text[SB_JSON_BYTES_MAX];
    struct jbuf b;
    jbuf_init(&b, text, sizeof text);
    jbuf_lit(&b, "{");
    jbuf_key(&b, "label");
    if (o->label != NULL) {
        jbuf_str(&b, o->label);
    } else {
        jbuf_lit(&b, "null");
    }
    jbuf_kv_str(&b, "target", sb_target_name(o->lg.target));
    jbuf_kv_str(&b, "mode", o->lg.mode == LG_MODE_OPEN ? "open" : "closed");
    jbuf_kv_int(&b, "connections", o->lg.connections);
    jbuf_kv_int(&b, "threads", o->lg.threads);
    jbuf_kv_int(&b, "skus", (int64_t)(o->lg.skus > 1 ? o->lg.skus : 1));
    if (o->lg.mode == LG_MODE_OPEN) {
        sb_json_number(&b, "rate_target", o->lg.rate_rps);
    } else {
        jbuf_key(&b, "rate_target");
        jbuf_lit(&b, "null");
    }
    jbuf_kv_int(&b, "start_wall_ms", sb_start_wall_ms);
    jbuf_kv_int(&b, "start_wall_us", r->start_wall_ns / 1000);
    jbuf_kv_str(&b, "key_prefix", o->lg.key_prefix);
    jbuf_key(&b, "prefer_async");
    jbuf_lit(&b, o->lg.prefer_async ? "true" : "false");
    sb_json_number(&b, "duration_s", (double)r->measured_ns / 1e9);
    jbuf_kv_int(&b, "requests", (int64_t)r->counts.requests);
    jbuf_kv_int(&b, "completed", (int64_t)r->counts.completed);
    sb_json_number(&b, "throughput_rps", sb_throughput(r));
    sb_json_latency(&b, &r->latency);
    sb_json_status(&b, &r->counts);
    jbuf_kv_int(&b, "timeouts", (int64_t)r->counts.timeouts);
    jbuf_kv_int(&b, "retries", (int64_t)r->counts.retries);
    jbuf_kv_int(&b, "errors", (int64_t)r->counts.errors);
    jbuf_kv_int(&b, "unsent", (int64_t)r->counts.unsent);
    jbuf_key(&b, "verify");
    if (v != NULL) {
        sb_json_verify(&b, v);
    } else {
        jbuf_lit(&b, "null");
    }
    jbuf_lit(&b, "}\n");
    SVC_ASSERT(jbuf_ok(&b));
    SVC_ASSERT(b.length > 2 && text[b.length - 1] == '\n');
    FILE *f = fopen(o->json_path, "w");
    if (f == NULL) {
        return -errno;
    }
    size_t written = fwrite(text, 1, b.length, f);
    int rc = fclose(f);
    return written == b.length && rc == 0 ? 0 : -EIO;
}

/* ---- verify -------------------------------------------------------------------------------- */

/* Reads the stock verify compares for sku: its onHand (purchase) or available (order), or the
 * seed-004 ticket's current_stock. Returns 0 or a negative errno (-ENOENT: not answered 200
 * with the field). */
static int sb_stock_read(struct lg_client *client, const struct sb_options *o, const char *sku,
                         int64_t *out)
{
    SVC_ASSERT(client->endpoint == &o->lg.endpoint);
    SVC_ASSERT(o->lg.target != LG_TARGET_GET);
    char path[LG_PATH_BYTES_MAX];
    bool ticket = o->lg.target == LG_TARGET_BUY_TICKET;
    snprintf(path, sizeof path, ticket ? "/inventory" : "/v1/availability?sku=%s", sku);
    const char *field = ticket                            ? "\"current_stock\":"
                        : o->lg.target == LG_TARGET_ORDER ? "\"available\":"
                                                          : "\"onHand\":";
    char request[LG_REQUEST_BYTES_MAX];
    size_t length = lg_request_format_get(&o->lg.endpoint, path, request, sizeof request);
    int rc = lg_client_request(client, request, length);
    if (rc < 0) {
        return rc;
    }
    const char *at = strstr(client->parser.body, field);
    if (client->parser.status != 200 || at == NULL) {
        log_error("verify: GET %s answered %d: %s", path, client->parser.status,
                  client->parser.body);
        return -ENOENT;
    }
    char *end = NULL;
    long long value = strtoll(at + strlen(field), &end, 10);
    SVC_ASSERT(end != NULL);
    *out = value;
    return end == at + strlen(field) ? -ENOENT : 0;
}

/* Which skus verify reads: every sku_stride-th of them (all of them for up to
 * SB_VERIFY_SKUS_MAX). */
static void sb_verify_plan(const struct sb_options *o, struct sb_verify *v)
{
    uint64_t skus = o->lg.skus > 1 ? o->lg.skus : 1;
    v->sku_stride = (skus + SB_VERIFY_SKUS_MAX - 1) / SB_VERIFY_SKUS_MAX;
    v->skus_read = (uint32_t)((skus + v->sku_stride - 1) / v->sku_stride);
    SVC_ASSERT(v->skus_read >= 1 && v->skus_read <= SB_VERIFY_SKUS_MAX);
    SVC_ASSERT((uint64_t)(v->skus_read - 1) * v->sku_stride < skus);
}

/* Reads the stock of every sku verify reads into values and their sum into *sum. Returns 0 or
 * the first failure's negative errno. */
static int sb_stock_read_all(struct lg_client *client, const struct sb_options *o,
                             const struct sb_verify *v, int64_t *values, int64_t *sum)
{
    SVC_ASSERT(v->skus_read >= 1 && v->sku_stride >= 1);
    char sku[LG_SKU_BYTES_MAX + 1];
    *sum = 0;
    for (uint32_t i = 0; i < v->skus_read; i++) {
        lg_sku_format(&o->lg, (uint64_t)i * v->sku_stride, sku);
        int rc = sb_stock_read(client, o, sku, &values[i]);
        if (rc < 0) {
            return rc;
        }
        *sum += values[i];
    }
    return 0;
}

/* Sends once more, with its own key, every request that never got an answer, so that every
 * key has a known outcome: the server either answers the stored result or makes the
 * purchase now. Either way the stock read afterwards matches the keys answered 2xx. */
static void sb_verify_replay(struct lg_run *run, struct lg_client *client, struct sb_verify *v)
{
    SVC_ASSERT(run->keys != NULL);
    uint64_t span = lg_run_key_span(run);
    char request[LG_REQUEST_BYTES_MAX];
    int failures = 0; /* in a row */
    for (uint64_t n = 0; n < span && v->keys_replayed < SB_REPLAY_KEYS_MAX &&
                         failures < SB_VERIFY_TRANSPORT_FAILURES_MAX;
         n++) {
        if (lg_run_key_outcome(run, n) != LG_KEY_UNANSWERED) {
            continue;
        }
        size_t length = lg_request_format(&run->config, n, request, sizeof request);
        v->keys_replayed++;
        int rc = lg_client_request(client, request, length);
        if (rc == 0) {
            lg_run_key_answer(run, n, client->parser.status, &client->parser);
        } else {
            log_error("verify: replay of key %llu: %s", (unsigned long long)n, strerror(-rc));
        }
        failures = rc == 0 ? 0 : failures + 1;
    }
    SVC_ASSERT(v->keys_replayed <= SB_REPLAY_KEYS_MAX);
}

/* Counts the key outcomes; returns the orderIds (caller frees) with their count in *ids_count. */
static int64_t *sb_verify_tally(const struct lg_run *run, struct sb_verify *v, size_t *ids_count)
{
    uint64_t span = lg_run_key_span(run);
    int64_t *ids = malloc((span > 0 ? span : 1) * sizeof *ids);
    SVC_ASSERT(ids != NULL);
    size_t count = 0;
    for (uint64_t n = 0; n < span; n++) {
        int64_t outcome = lg_run_key_outcome(run, n);
        v->keys_sent += outcome != LG_KEY_NOT_SENT ? 1 : 0;
        v->keys_unanswered += outcome == LG_KEY_UNANSWERED ? 1 : 0;
        v->keys_conflict += outcome == LG_KEY_CONFLICT ? 1 : 0;
        bool ok = outcome > 0 || outcome == LG_KEY_2XX_NO_ORDER || outcome == LG_KEY_CONFLICT;
        v->keys_2xx += ok ? 1 : 0;
        uint64_t sku = ok ? lg_request_sku_index(&run->config, n) : 1;
        if (ok && sku % v->sku_stride == 0) {
            SVC_ASSERT(sku / v->sku_stride < v->skus_read);
            v->sku_keys_2xx[sku / v->sku_stride]++;
            v->keys_2xx_checked++;
        }
        if (outcome > 0) {
            ids[count++] = outcome;
        }
        if (outcome == LG_KEY_2XX_NO_ORDER && run->config.target != LG_TARGET_BUY_TICKET) {
            v->keys_no_order++;
        }
    }
    SVC_ASSERT(count <= v->keys_2xx && v->keys_2xx_checked <= v->keys_2xx);
    SVC_ASSERT(v->keys_2xx + v->keys_unanswered <= v->keys_sent);
    *ids_count = count;
    return ids;
}

static int sb_id_compare(const void *a, const void *b)
{
    SVC_ASSERT(*(const int64_t *)a > 0 && *(const int64_t *)b > 0); /* order ids only */
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Reads back up to SB_VERIFY_ORDERS_MAX orders spread evenly over ids (in key order). */
static void sb_verify_orders(struct lg_client *client, const struct sb_options *o,
                             const int64_t *ids, size_t count, struct sb_verify *v)
{
    size_t samples = count < SB_VERIFY_ORDERS_MAX ? count : SB_VERIFY_ORDERS_MAX;
    v->orders_wanted = samples;
    char path[64];
    char request[LG_REQUEST_BYTES_MAX];
    int failures = 0; /* in a row */
    for (size_t i = 0; i < samples && failures < SB_VERIFY_TRANSPORT_FAILURES_MAX; i++) {
        int64_t id = ids[i * count / samples];
        SVC_ASSERT(id > 0);
        snprintf(path, sizeof path, "/v1/orders/ord_%lld", (long long)id);
        size_t length = lg_request_format_get(&o->lg.endpoint, path, request, sizeof request);
        v->orders_checked++;
        int rc = lg_client_request(client, request, length);
        failures = rc == 0 ? 0 : failures + 1;
        if (rc == 0 && client->parser.status == 200) {
            v->orders_ok++;
        } else if (v->orders_checked - v->orders_ok <= 3 && rc < 0) {
            log_error("verify: GET %s: %s", path, strerror(-rc));
        } else if (v->orders_checked - v->orders_ok <= 3) {
            log_error("verify: GET %s answered %d", path, client->parser.status);
        }
    }
    SVC_ASSERT(v->orders_ok <= v->orders_checked && v->orders_checked <= v->orders_wanted);
}

/* Runs the checks after the run; fills *v (stock_before already set). Returns v->ok. */
static bool sb_verify_after(struct lg_run *run, const struct sb_options *o, struct sb_verify *v)
{
    SVC_ASSERT(run->joined && run->keys != NULL);
    SVC_ASSERT(v->keys_sent == 0 && v->orders_checked == 0); /* runs once */
    struct lg_client client;
    lg_client_init(&client, &o->lg.endpoint, o->lg.timeout_ns);
    sb_verify_replay(run, &client, v);
    size_t count = 0;
    int64_t *ids = sb_verify_tally(run, v, &count);
    if (o->lg.target != LG_TARGET_BUY_TICKET) {
        sb_verify_orders(&client, o, ids, count, v);
    }
    qsort(ids, count, sizeof *ids, sb_id_compare);
    for (size_t i = 1; i < count; i++) {
        v->duplicate_ids += ids[i] == ids[i - 1] ? 1 : 0;
    }
    free(ids);
    int rc = sb_stock_read_all(&client, o, v, v->sku_after, &v->stock_after);
    lg_client_deinit(&client);
    v->stock_after_known = rc == 0;
    int64_t qty = o->lg.target == LG_TARGET_BUY_TICKET ? 1 : o->lg.qty;
    for (uint32_t i = 0; i < v->skus_read && rc == 0; i++) {
        int64_t sold = v->sku_before[i] - v->sku_after[i];
        v->skus_wrong += sold != qty * (int64_t)v->sku_keys_2xx[i] ? 1 : 0;
    }
    v->ok = rc == 0 && v->stock_before - v->stock_after == qty * (int64_t)v->keys_2xx_checked &&
            v->skus_wrong == 0 && v->duplicate_ids == 0 && v->keys_conflict == 0 &&
            v->keys_no_order == 0 && v->keys_unanswered == 0 && v->orders_ok == v->orders_wanted;
    if (rc < 0) {
        log_error("verify: cannot read the stock after the run: %s", strerror(-rc));
    }
    if (v->ok) {
        SVC_ASSERT(v->keys_2xx <= v->keys_sent && v->keys_unanswered == 0);
        SVC_ASSERT(v->sku_stride > 1 || v->keys_2xx_checked == v->keys_2xx);
    }
    return v->ok;
}

static const char *sb_verdict(bool ok)
{
    return ok ? "ok" : "FAILED";
}

/* The stock field verify compares. */
static const char *sb_stock_name(const struct sb_options *o)
{
    SVC_ASSERT(o->lg.target != LG_TARGET_GET);
    return o->lg.target == LG_TARGET_BUY_TICKET ? "current_stock"
           : o->lg.target == LG_TARGET_ORDER    ? "available"
                                                : "onHand";
}

static void sb_verify_print(const struct sb_options *o, const struct sb_verify *v)
{
    bool ticket = o->lg.target == LG_TARGET_BUY_TICKET;
    int64_t qty = ticket ? 1 : o->lg.qty;
    int64_t sold = v->stock_before - v->stock_after;
    SVC_ASSERT(v->keys_2xx <= v->keys_sent);
    uint64_t skus = o->lg.skus > 1 ? o->lg.skus : 1;
    if (skus > 1) {
        printf("verify: reading %u of %llu skus (every %llu%s)\n", v->skus_read,
               (unsigned long long)skus, (unsigned long long)v->sku_stride,
               v->sku_stride == 1 ? ": all" : "th");
    }
    if (v->stock_after_known) {
        printf("verify: %s %lld before, %lld after: sold %lld\n", sb_stock_name(o),
               (long long)v->stock_before, (long long)v->stock_after, (long long)sold);
    } else {
        printf("verify: %s %lld before, unknown after (could not read it)\n", sb_stock_name(o),
               (long long)v->stock_before);
    }
    printf("verify: sold == qty %lld x %llu keys answered %s%s: %s\n", (long long)qty,
           (unsigned long long)v->keys_2xx_checked, ticket ? "200" : "2xx",
           skus > 1 ? " that bought those skus" : "",
           sb_verdict(v->stock_after_known && sold == qty * (int64_t)v->keys_2xx_checked));
    if (skus > 1) {
        printf("verify: each sku read sold qty x its own keys (%u differ, %llu keys answered "
               "2xx in all): %s\n",
               v->skus_wrong, (unsigned long long)v->keys_2xx,
               sb_verdict(v->stock_after_known && v->skus_wrong == 0));
    }
    printf("verify: every key sent has an answer (%llu sent, %llu replayed after the run, "
           "%llu still unanswered): %s\n",
           (unsigned long long)v->keys_sent, (unsigned long long)v->keys_replayed,
           (unsigned long long)v->keys_unanswered, sb_verdict(v->keys_unanswered == 0));
    if (!ticket) {
        printf("verify: one orderId per key answered 2xx (%llu without, %llu with two): %s\n",
               (unsigned long long)v->keys_no_order, (unsigned long long)v->keys_conflict,
               sb_verdict(v->keys_no_order == 0 && v->keys_conflict == 0));
        printf("verify: no orderId returned for two keys (%llu duplicates): %s\n",
               (unsigned long long)v->duplicate_ids, sb_verdict(v->duplicate_ids == 0));
        printf("verify: orders read back %llu/%llu: %s\n", (unsigned long long)v->orders_ok,
               (unsigned long long)v->orders_wanted, sb_verdict(v->orders_ok == v->orders_wanted));
    }
    printf("verify: %s\n", v->ok ? "PASS" : "FAIL");
}

/* ---- main ---------------------------------------------------------------------------------- */

/* Checks the server is reachable and, with --verify, reads the stock before the run.
 * Returns 0 or an exit code. */
static int sb_before(const struct sb_options *o, struct sb_verify *v)
{
    int rc = lg_endpoint_probe(&o->lg.endpoint, o->lg.timeout_ns);
    if (rc < 0) {
        fprintf(stderr, "stockbench: cannot connect to %s: %s\n", o->url, strerror(-rc));
        return SB_EXIT_FAILED;
    }
    if (!o->verify) {
        return 0;
    }
    sb_verify_plan(o, v);
    struct lg_client client;
    lg_client_init(&client, &o->lg.endpoint, o->lg.timeout_ns);
    rc = sb_stock_read_all(&client, o, v, v->sku_before, &v->stock_before);
    lg_client_deinit(&client);
    if (rc < 0) {
        fprintf(stderr, "stockbench: --verify cannot read the stock before the run (%s)\n",
                strerror(-rc));
        return SB_EXIT_FAILED;
    }
    SVC_ASSERT(o->verify);
    return 0;
}

static void sb_signals_install(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = sb_on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    SVC_ASSERT(action.sa_handler == sb_on_signal);
}

int main(int argc, char **argv)
{
    static struct sb_options o;
    static struct lg_run run;
    static struct lg_result result;
    static struct sb_verify verify; /* zero; 24 KiB of per-sku counts: off the stack */
    int exit_code = sb_options_parse(&o, argc, argv);
    if (exit_code >= 0) {
        return exit_code;
    }
    if ((exit_code = sb_before(&o, &verify)) != 0) {
        return exit_code;
    }
    sb_signals_install();
    sb_start_wall_ms = clock_wall_ms();
    int rc = lg_run_start(&run, &o.lg);
    if (rc < 0) {
        fprintf(stderr, "stockbench: cannot start the run: %s\n", strerror(-rc));
        return SB_EXIT_FAILED;
    }
    sb_progress_loop(&run, o.quiet);
    lg_run_wait(&run, &result);
    SVC_ASSERT(result.counts.completed <= result.counts.requests);
    SVC_ASSERT(result.latency.count == result.counts.completed);
    bool connected = result.counts.connects > 0;
    sb_report_print(&o, &result);
    fflush(stdout);
    bool verified = !o.verify || !connected || sb_verify_after(&run, &o, &verify);
    if (o.verify && connected) {
        sb_verify_print(&o, &verify);
    }
    if (o.json_path != NULL && (rc = sb_json_write(&o, &result, o.verify ? &verify : NULL)) < 0) {
        fprintf(stderr, "stockbench: cannot write %s: %s\n", o.json_path, strerror(-rc));
    }
    lg_run_deinit(&run);
    if (!connected) {
        fprintf(stderr, "stockbench: no connection to %s could be made\n", o.url);
    }
    fflush(stdout);
    return connected && verified && rc >= 0 ? SB_EXIT_OK : SB_EXIT_FAILED;
}
