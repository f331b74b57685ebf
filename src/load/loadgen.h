/*
 * loadgen.h - the HTTP/1.1 load generator engine behind stockbench (bench/stockbench.c) and the
 * server's POST /v1/admin/load-test (src/http/api_load.c), built as its own library
 * (stockd_load in meson.build) that both link.
 *
 * A run spreads N keep-alive connections over T threads; each thread owns its epoll instance,
 * its connections and its statistics, and shares nothing with the others on the request path
 * (STYLE 4). Two load models: closed loop (a connection sends its next request as soon as the
 * previous one is answered) and open loop (request n is due at start + n / rate and waits
 * client-side for a free connection; its latency runs from that intended time, so a stalled
 * server cannot hide its queue: no coordinated omission). A run lasts its duration, or ends
 * sooner once a set number of requests (requests_max) has been answered. Every purchase or
 * order carries a unique
 * Idempotency-Key "<prefix>-<n>"; with retries, a timed-out request is sent again with the same
 * key on a fresh connection. What each key was answered is kept for a later verify step.
 *
 * This is not a general HTTP client: one request per connection at a time, no TLS, no
 * redirects, and only the response framing HTTP/1.1 servers use (Content-Length, chunked,
 * until-close). It depends on libc, pthreads and svc_assert only, never on h2o or jansson.
 * Read bench/stockbench.c next for the command line, the report and the verify step.
 */
#ifndef STOCKD_LOADGEN_H
#define STOCKD_LOADGEN_H

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ---- limits (STYLE 12) ------------------------------------------------------------------- */

/* Connections of one run. One client address reaches one server port through at most ~28k
 * ephemeral ports, and each connection holds ~10 KiB of buffers; 4096 is 8x what the
 * benchmarks use (512) while keeping a run under 40 MiB. */
#define LG_CONNECTIONS_MAX 4096

/* Threads of one run. Each owns an epoll loop; more threads than cores only adds switching. */
#define LG_THREADS_MAX 64

/* Bytes of one formatted request: request line, six headers and a purchase body. The largest
 * (a 255-byte path or a 64-byte sku with a 64-byte key prefix, plus a 256-byte bearer token)
 * stays well under this. */
#define LG_REQUEST_BYTES_MAX 1536

/* Bytes of a connection's receive buffer. A response head (status line and headers) must fit
 * in it whole; bodies stream through it. h2o and nginx send heads of a few hundred bytes. */
#define LG_READ_BUFFER_BYTES 8192

/* Body bytes kept per response: enough for the orderId at the start of a purchase reply and
 * the whole of an availability or inventory reply; the rest of a body is counted and dropped. */
#define LG_BODY_KEEP_BYTES 512

/* Retries of one request after a timeout or socket error (so at most 4 attempts): enough to
 * ride out a reconnect, few enough that a dead server ends the run's drain quickly. */
#define LG_RETRIES_MAX 3

/* Delay before reconnecting after a failed connect, so a refused port is not spun on. */
#define LG_RECONNECT_DELAY_NS (100LL * 1000 * 1000)

/* How often a thread scans its connections for expired deadlines: a quarter of the timeout,
 * but at least every 10 ms (cheap: one pass over at most a few hundred connections) and at
 * most every 200 us (so a 1 ms timeout is still noticed within a fifth of itself). */
#define LG_SWEEP_NS_MAX (10LL * 1000 * 1000)
#define LG_SWEEP_NS_MIN (200LL * 1000)

/* Events taken from epoll per wait. */
#define LG_EPOLL_EVENTS_MAX 256

/* Keys whose answers a verify run remembers (8 bytes each, in one lazily touched allocation
 * of 128 MiB of address space): 100k purchases/s for 160 s. A thread that fills its share
 * stops sending and the run reports it. */
#define LG_KEYS_MAX (16LL * 1024 * 1024)

/* Latency histogram: log-linear, 2^7 = 128 linear sub-buckets per power of two of
 * nanoseconds, so a bucket is at most 1/128 of its value wide (< 0.8%; the reported midpoint
 * is within 0.4%). Values are clamped to 60 s, which needs exponents up to 2^35 ns. */
#define LG_HIST_SUB_BITS 7
#define LG_HIST_SUB_COUNT (1 << LG_HIST_SUB_BITS)
#define LG_HIST_VALUE_MAX_NS (60LL * 1000 * 1000 * 1000)
#define LG_HIST_EXPONENT_MAX 35
#define LG_HIST_BUCKETS ((LG_HIST_EXPONENT_MAX - LG_HIST_SUB_BITS + 2) * LG_HIST_SUB_COUNT)

/* HTTP status codes are three digits, 100..599; counts are indexed by the code itself. */
#define LG_STATUS_CODES 600

/* Text bounds of a run's configuration. */
#define LG_HOST_BYTES_MAX 256
#define LG_PATH_BYTES_MAX 256
#define LG_SKU_BYTES_MAX 64

/* SKUs one run may spread its purchases or orders over (lg_config.skus): 16M, more than any
 * catalogue stockd is started with, and 8 decimal digits of suffix ("-16777215"). A spread
 * run's --sku is the prefix, so it must leave room for that suffix. */
#define LG_SKUS_MAX (16LL * 1024 * 1024)
#define LG_SKU_SUFFIX_BYTES_MAX 9
#define LG_KEY_PREFIX_BYTES_MAX 64
/* A bearer token (stockd's AUTH_TOKEN_BYTES_MAX) and its whole header line with CRLF. */
#define LG_TOKEN_BYTES_MAX 256
#define LG_AUTH_HEADER_BYTES_MAX (LG_TOKEN_BYTES_MAX + 32)

_Static_assert(LG_THREADS_MAX <= LG_CONNECTIONS_MAX, "every thread needs a connection");
_Static_assert(LG_READ_BUFFER_BYTES > LG_BODY_KEEP_BYTES, "a kept body must fit the buffer");
_Static_assert(LG_SWEEP_NS_MIN < LG_SWEEP_NS_MAX, "sweep bounds are ordered");
_Static_assert((1LL << (LG_HIST_EXPONENT_MAX + 1)) > LG_HIST_VALUE_MAX_NS,
               "the top histogram exponent covers the largest value");
_Static_assert(LG_KEY_PREFIX_BYTES_MAX + LG_SKU_BYTES_MAX + 320 < LG_REQUEST_BYTES_MAX,
               "a purchase request fits its buffer");
_Static_assert(LG_SKU_SUFFIX_BYTES_MAX < LG_SKU_BYTES_MAX, "a spread sku has room for a prefix");
_Static_assert(LG_PATH_BYTES_MAX + LG_HOST_BYTES_MAX + 64 < LG_REQUEST_BYTES_MAX,
               "a GET request fits its buffer");

/* ---- histogram ----------------------------------------------------------------------------- */

/* A latency histogram in nanoseconds. Plain data: merge by adding counts (lg_hist_merge). */
struct lg_hist {
    uint64_t counts[LG_HIST_BUCKETS]; /* samples per bucket */
    uint64_t count;                   /* samples in all buckets */
    int64_t max_ns;                   /* largest sample; 0 if unknown (a live delta) */
    double sum_ns;                    /* sum of samples, for the mean; 0 if unknown */
};

/* Empties h. */
void lg_hist_init(struct lg_hist *h);
/* Adds one sample (negative values count as 0, values above 60 s as 60 s). */
void lg_hist_record(struct lg_hist *h, int64_t value_ns);
/* Adds every sample of from into into. */
void lg_hist_merge(struct lg_hist *into, const struct lg_hist *from);
/* The bucket of value_ns, and the value a bucket stands for (its midpoint). */
uint32_t lg_hist_bucket(int64_t value_ns);
int64_t lg_hist_bucket_value_ns(uint32_t bucket);
/* The value at percentile (0 < percentile <= 100), within 0.4%; 0 for an empty histogram. */
int64_t lg_hist_percentile_ns(const struct lg_hist *h, double percentile);
/* The mean of the samples; 0 for an empty histogram. */
double lg_hist_mean_ns(const struct lg_hist *h);

/* ---- configuration ------------------------------------------------------------------------- */

enum lg_mode { LG_MODE_CLOSED, LG_MODE_OPEN };

enum lg_target {
    LG_TARGET_PURCHASE,      /* POST /v1/purchase {"sku","qty","customerId"} */
    LG_TARGET_BUY_TICKET,    /* POST /buy_ticket {"customer_id"} (seed 004) */
    LG_TARGET_GET,           /* GET config.path, for measuring the HTTP ceiling of a server */
    LG_TARGET_ORDER,         /* POST /v1/orders {"customerId","lines":[{"sku","qty"}]} */
    LG_TARGET_SEED_PURCHASE, /* POST /purchase, the body of LG_TARGET_PURCHASE (seed 000) */
    /* POST /v1/products {"sku":"<sku>-<n>","name","initialOnHand":qty}: key n creates product
     * n, so a run of requests_max keys makes the catalogue 0..requests_max-1 of a skus run */
    LG_TARGET_PRODUCT,
};

/* Where to connect, resolved once. */
struct lg_endpoint {
    struct sockaddr_storage address;
    socklen_t address_length;
    char host_header[LG_HOST_BYTES_MAX];        /* "host:port" exactly as in the URL */
    char auth_header[LG_AUTH_HEADER_BYTES_MAX]; /* "Authorization: Bearer T\r\n", or "" */
};

/* Parses "http://host[:port][/...]" (port 80 by default; the path is ignored) and resolves
 * host. Returns 0, -EINVAL for a malformed URL, or -EHOSTUNREACH if host does not resolve. */
int lg_endpoint_parse(struct lg_endpoint *out, const char *url);

/* Makes every request to endpoint carry "Authorization: Bearer <token>". Call after
 * lg_endpoint_parse (which clears it). Returns 0, or -EINVAL unless token is 1..
 * LG_TOKEN_BYTES_MAX printable ASCII bytes without spaces. */
int lg_endpoint_set_token(struct lg_endpoint *endpoint, const char *token);

/* Opens and closes one connection to endpoint within timeout_ns. Returns 0 or -errno; used
 * before a run so that an unreachable server fails fast rather than after the whole run. */
int lg_endpoint_probe(const struct lg_endpoint *endpoint, int64_t timeout_ns);

/* A run's parameters; the caller fills every field, the run copies them. */
struct lg_config {
    struct lg_endpoint endpoint;
    enum lg_mode mode;
    enum lg_target target;
    char path[LG_PATH_BYTES_MAX];                 /* LG_TARGET_GET only; starts with '/' */
    char sku[LG_SKU_BYTES_MAX + 1];               /* [A-Za-z0-9._-]; purchase, order */
    uint64_t skus;                                /* > 1: buy "<sku>-<j>", lg_sku_format */
    int64_t qty;                                  /* units per purchase or order, >= 1 */
    char key_prefix[LG_KEY_PREFIX_BYTES_MAX + 1]; /* Idempotency-Key is "<prefix>-<n>" */
    uint32_t connections;                         /* threads..LG_CONNECTIONS_MAX */
    uint32_t threads;                             /* 1..LG_THREADS_MAX */
    double rate_rps;                              /* open loop: requests per second, > 0 */
    int64_t warmup_ns;                            /* sent and answered but not measured */
    int64_t duration_ns;                          /* the measured window after the warm-up */
    uint64_t requests_max;                        /* 0: the window; see lg_run_start */
    int64_t timeout_ns;                           /* per attempt, from its send */
    bool retry;                                   /* resend timed-out requests, same key */
    bool record_keys;                             /* remember each key's answer (verify) */
    bool prefer_async; /* send "Prefer: respond-async" (purchase, order, seed purchase) */
};

/* Formats the request for key n into out: the purchase, order or buy-ticket body names
 * customer "c<n>" (and sku lg_request_sku_index(config, n)) and carries Idempotency-Key
 * "<prefix>-<n>", so the same n always gives the same bytes.
 * Returns its length (< size). Used by the engine and by replays during verify. */
size_t lg_request_format(const struct lg_config *config, uint64_t n, char *out, size_t size);

/* Which of config->skus request n buys: 0 when config->skus <= 1, else a 64-bit mix of n,
 * mod skus: a uniformly spread choice among the skus (as independent purchases hit a
 * catalogue) that is still the same for the same n, so a replay of key n buys what the first
 * attempt did. */
uint64_t lg_request_sku_index(const struct lg_config *config, uint64_t n);
/* Writes sku number index (< skus) to out (LG_SKU_BYTES_MAX + 1 bytes): config->sku itself when
 * config->skus <= 1, else "<sku>-<index>". */
void lg_sku_format(const struct lg_config *config, uint64_t index, char *out);

/* Formats "GET path" for endpoint into out; returns the length (< size). */
size_t lg_request_format_get(const struct lg_endpoint *endpoint, const char *path, char *out,
                             size_t size);

/* ---- response parsing ---------------------------------------------------------------------- */

enum lg_parse_state {
    LG_PARSE_HEAD,        /* waiting for the whole status line and headers */
    LG_PARSE_BODY_LENGTH, /* Content-Length bytes to come */
    LG_PARSE_CHUNK_SIZE,  /* waiting for a chunk-size line */
    LG_PARSE_CHUNK_DATA,  /* chunk bytes to come */
    LG_PARSE_CHUNK_CRLF,  /* the CRLF after chunk data */
    LG_PARSE_TRAILER,     /* trailer lines after the last chunk, up to an empty line */
    LG_PARSE_BODY_CLOSE,  /* no framing: the body runs until the server closes */
    LG_PARSE_DONE,
};

/* An incremental HTTP/1.x response parser over a caller's receive buffer. */
struct lg_parser {
    enum lg_parse_state state;
    int status;                        /* status code once the head is parsed */
    bool close;                        /* the server will close after this response */
    uint64_t remaining;                /* body or chunk bytes still to come */
    size_t body_length;                /* bytes kept in body */
    char body[LG_BODY_KEEP_BYTES + 1]; /* the start of the body, NUL-terminated */
};

/* Prepares p for a new response. */
void lg_parser_reset(struct lg_parser *p);
/* Consumes what it can of data[0..length) and sets *consumed_out; the caller keeps the rest
 * for the next call. Returns 1 when the response is complete, 0 for more, -EPROTO if the
 * bytes are not an HTTP/1.x response. A head that does not fit in length bytes is the
 * caller's to reject (it sees 0 consumed with a full buffer). */
int lg_parser_feed(struct lg_parser *p, const char *data, size_t length, size_t *consumed_out);
/* The server closed the connection: returns 1 if that ends the response (until-close body). */
int lg_parser_eof(struct lg_parser *p);

/* ---- key outcomes (verify) ----------------------------------------------------------------- */

/* What a key was answered. Positive values are order ids (the N of "ord_N"). */
#define LG_KEY_UNANSWERED 0      /* sent, no answer yet (or never) */
#define LG_KEY_NOT_2XX (-1)      /* answered, never with a 2xx */
#define LG_KEY_2XX_NO_ORDER (-2) /* answered 2xx without an orderId (e.g. buy-ticket) */
#define LG_KEY_CONFLICT (-3)     /* answered 2xx twice with different orderIds */
#define LG_KEY_NOT_SENT (-4)     /* no request with this key was ever sent */

/* Folds an answer (status, body) into a key's outcome *slot: a 2xx replaces a non-2xx, and
 * two different 2xx answers make a conflict. */
void lg_key_answer(int64_t *slot, int status, const char *body, size_t body_length);

/* ---- runs ---------------------------------------------------------------------------------- */

/* Counters of a run, per thread and merged. Timeouts, errors and retries count attempts;
 * requests and completed count requests. Only the measured window counts, except errors of
 * connections without a request (failed connects), which always count. */
struct lg_counts {
    uint64_t requests;   /* measured requests sent (closed) or scheduled (open) */
    uint64_t completed;  /* measured requests answered */
    uint64_t timeouts;   /* attempts without an answer within the timeout */
    uint64_t retries;    /* attempts after the first */
    uint64_t errors;     /* socket errors: refused, reset, malformed responses */
    uint64_t unsent;     /* open loop: due in the window but no free connection by its end */
    uint64_t connects;   /* connections established, warm-up included */
    uint64_t reconnects; /* connections closed by the server (Connection: close, idle close) */
    uint64_t status[LG_STATUS_CODES]; /* answered requests per status code */
};

/* What a finished run measured. */
struct lg_result {
    struct lg_hist latency; /* of measured, answered requests */
    struct lg_counts counts;
    int64_t measured_ns;   /* length of the measured window actually run */
    int64_t start_wall_ns; /* wall clock (CLOCK_REALTIME) at the run's start: open loop key n
                            * is due at start_wall_ns + n * 1e9 / rate_rps */
    bool keys_exhausted;   /* a thread stopped early: LG_KEYS_MAX answers remembered */
};

/* A live view for progress lines: cumulative since the start, warm-up included. */
struct lg_progress {
    int64_t elapsed_ns;
    bool warmup;   /* still in the warm-up */
    bool draining; /* past the window, waiting for answers */
    uint64_t completed;
    uint64_t class_2xx, class_4xx, class_5xx;
    uint64_t errors;        /* timeouts and socket errors */
    struct lg_hist latency; /* counts only (max_ns and sum_ns are 0) */
};

struct lg_thread;

/* A run. Caller-owned; lg_run_start fills it and owns the threads and buffers it points to
 * until lg_run_deinit. */
struct lg_run {
    struct lg_config config;
    struct lg_thread **threads; /* config.threads of them */
    int64_t *keys;              /* key outcomes, LG_KEYS_MAX; NULL unless record_keys */
    uint64_t keys_per_thread;
    int64_t start_ns;      /* monotonic; warm-up starts here */
    int64_t start_wall_ns; /* CLOCK_REALTIME read together with start_ns */
    atomic_bool stop;      /* set by lg_run_stop: end the window now */
    uint32_t started;      /* threads running or joined */
    bool joined;
};

/* Starts config->threads threads that run the whole load and drain it: until the end of the
 * window, or with requests_max > 0 until that many requests (warm-up included) have been sent
 * and answered or given up, if that comes first. Returns 0 or -errno
 * (nothing left running then). Signals are blocked in the run's threads. */
int lg_run_start(struct lg_run *run, const struct lg_config *config);
/* Ends the window early (e.g. on SIGINT); the threads still drain. Async-signal-safe. */
void lg_run_stop(struct lg_run *run);
/* True once every thread has finished. */
bool lg_run_finished(const struct lg_run *run);
/* Fills *out from the threads' live counters; callable while the run goes, from one thread. */
void lg_run_progress(const struct lg_run *run, struct lg_progress *out);
/* Waits for the threads and merges their statistics into *out. Call once. */
void lg_run_wait(struct lg_run *run, struct lg_result *out);
/* Keys are numbered 0..lg_run_key_span()-1 (not all sent); after lg_run_wait only. */
uint64_t lg_run_key_span(const struct lg_run *run);
int64_t lg_run_key_outcome(const struct lg_run *run, uint64_t n);
/* Folds a later answer for key n (a replay during verify) into its outcome. */
void lg_run_key_answer(struct lg_run *run, uint64_t n, int status, const struct lg_parser *p);
/* Frees what lg_run_start allocated. */
void lg_run_deinit(struct lg_run *run);

/* ---- a blocking client for the few requests around a run ----------------------------------- */

/* One keep-alive connection with a timeout per request, for reads before and after a run. */
struct lg_client {
    const struct lg_endpoint *endpoint; /* not owned; outlives the client */
    int fd;                             /* -1 when not connected */
    int64_t timeout_ns;
    size_t in_length;
    struct lg_parser parser; /* the last response; body holds its start */
    char in[LG_READ_BUFFER_BYTES];
};

void lg_client_init(struct lg_client *c, const struct lg_endpoint *endpoint, int64_t timeout_ns);
/* Sends request (length bytes) and reads the answer into c->parser. Reconnects when needed;
 * a request sent on a reused connection that the server had closed is sent once more on a
 * new one. Returns 0 or -errno (-ETIMEDOUT, -ECONNREFUSED, -EPROTO, ...). */
int lg_client_request(struct lg_client *c, const char *request, size_t length);
void lg_client_deinit(struct lg_client *c);

#endif
