/*
 * seedfront.c - seed 000's two designs of POST /purchase, written as the small service the seed
 * describes: the baseline that bench/seed000 measures stockd against (bench/README.md,
 * "bench/seedfront").
 *
 *   sync   the synchronous baseline (seed 4.1): a thread per keep-alive connection and a pool
 *          of libpq connections; per request one transaction (insert the order under its unique
 *          Idempotency-Key, lock the stock row, decrement it, commit), answered after COMMIT.
 *   async  the asynchronous design (seed 4.2): the same validation, then the command is
 *          appended to the RabbitMQ stream seed.commands with publisher confirms and answered
 *          202 once the broker confirmed it. One consumer thread of the same process applies
 *          each command in one transaction (the same statements, and its stream offset) and
 *          acknowledges it only after COMMIT (seed 5: idempotency key, ack after commit).
 *
 * Plain blocking C, one transaction per purchase or message: neither stockd's batching writer
 * nor its event loop, and no tuning the seed does not describe. PostgreSQL must hold the schema
 * of bench/pg/seed000.sql and the stock rows; nothing is created there. Not here: the load
 * (bench/stockbench.c) and the benchmark script (bench/seed000).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "base/clock.h"
#include "base/json_out.h"
#include "base/log.h"
#include "base/svc_assert.h"

/* Connections served at once, a thread each: the benchmark opens a few hundred at most; past
 * this an accepted connection is answered 503 and closed rather than left waiting. */
#define SF_CONNECTIONS_MAX 1024
#define SF_LISTEN_BACKLOG 1024
/* A connection thread's stack: its buffers are on the heap, libpq and jansson need little. */
#define SF_THREAD_STACK_BYTES (256 * 1024)
/* A request's head and body: a purchase is ~300 bytes in all. */
#define SF_HEAD_BYTES_MAX (8 * 1024)
#define SF_BODY_BYTES_MAX 4096
/* A response body: /stats is the longest, ~600 bytes. */
#define SF_REPLY_BYTES_MAX 2048
/* Idempotency-Key (a UUID is 36 bytes), sku and customerId, and the largest qty. */
#define SF_KEY_BYTES_MAX 128
#define SF_TEXT_BYTES_MAX 64
#define SF_QTY_MAX 1000
/* Pool sizes: libpq connections (sync) and publisher connections (async). PostgreSQL of
 * scripts/pg-start.sh takes 300 connections. */
#define SF_POOL_DEFAULT 16
#define SF_PUBLISHERS_DEFAULT 8
#define SF_POOL_MAX 256
/* A request waits this long at most for a pooled connection, then answers 503. */
#define SF_POOL_WAIT_MS 10000
/* A publish whose confirm has not come within this is failed (503) and its connection
 * dropped, so that a late confirm is never taken for a later message's. */
#define SF_CONFIRM_TIMEOUT_MS 5000
/* Attempts per command: a second one on a fresh connection after a lost one (a command
 * appended twice is absorbed by the consumer's idempotency key). */
#define SF_PUBLISH_ATTEMPTS_MAX 2
/* The consumer's basic.qos: deliveries in flight while it commits one at a time. */
#define SF_PREFETCH 200
/* The stream's retention (x-max-length-bytes): ~5M commands of ~200 bytes. */
#define SF_STREAM_BYTES_MAX (1024LL * 1024 * 1024)
/* AMQP: TCP connect, handshake and RPC timeout; the frame size of RabbitMQ's default. */
#define SF_AMQP_TIMEOUT_MS 5000
#define SF_AMQP_FRAME_BYTES_MAX 131072
#define SF_AMQP_CHANNEL 1
/* A keep-alive connection idle this long is closed. */
#define SF_IDLE_TIMEOUT_MS 30000
/* The accept loop and the consumer look at the stop flag at least this often. */
#define SF_POLL_MS 200
/* The consumer starts a new session this long after a failed one (broker or database). */
#define SF_RETRY_MS 500
/* After SIGTERM, connection threads get this long to finish what they are doing. */
#define SF_SHUTDOWN_WAIT_MS 5000
/* Histogram: 8 linear buckets per power of two of microseconds (a value within 12.5%), up to
 * 2^33 us (2.4 hours); the last bucket holds anything longer. */
#define SF_HIST_SUB 8
#define SF_HIST_POWERS 30
#define SF_HIST_BUCKETS (SF_HIST_SUB * (SF_HIST_POWERS + 1))

#define SF_QUEUE "seed.commands"
#define SF_CONSUMER_NAME "seedfront"

_Static_assert(SF_POOL_DEFAULT <= SF_POOL_MAX && SF_PUBLISHERS_DEFAULT <= SF_POOL_MAX, "pools");
_Static_assert(SF_PREFETCH <= 65535, "basic.qos prefetch is 16 bits");
_Static_assert(SF_KEY_BYTES_MAX <= 255, "the key is the message-id, an AMQP short string");
_Static_assert(SF_POLL_MS < SF_AMQP_TIMEOUT_MS, "the consumer polls within its timeouts");

static const char sf_usage_text[] =
    "usage: seedfront sync  --listen HOST:PORT --pg CONNINFO [--pool N]\n"
    "       seedfront async --listen HOST:PORT --pg CONNINFO --amqp URL [--publishers N]\n"
    "                       [--duplicate-every N]\n"
    "\n"
    "Seed 000's purchase service. POST /purchase {\"sku\",\"qty\",\"customerId\"} with an\n"
    "Idempotency-Key header; GET /stats; GET /health.\n"
    "  sync   one PostgreSQL transaction per request, 201 after COMMIT (pool: --pool, 16)\n"
    "  async  202 once the command is confirmed in the RabbitMQ stream " SF_QUEUE ";\n"
    "         a consumer thread applies it (publisher connections: --publishers, 8;\n"
    "         --duplicate-every N publishes every Nth command twice, 0: never)\n"
    "\n"
    "PostgreSQL must hold bench/pg/seed000.sql's tables (stock, orders, consumer_offsets)\n"
    "and the stock rows, e.g. INSERT INTO stock VALUES ('HOT', 100); nothing is created.\n";

enum sf_mode { SF_SYNC, SF_ASYNC };

/* Statements prepared on every connection, by these indices (PQprepare names "0", "1", ...). */
enum sf_stmt {
    SF_ST_INSERT,
    SF_ST_EXISTING,
    SF_ST_LOCK,
    SF_ST_DECREMENT,
    SF_ST_REJECT,
    SF_ST_OFFSET_READ,
    SF_ST_OFFSET_WRITE,
    SF_ST_COUNT
};
static const char *const sf_stmt_sql[SF_ST_COUNT] = {
    "INSERT INTO orders (idempotency_key, sku, qty, customer_id) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    "SELECT id, status FROM orders WHERE idempotency_key = $1",
    "SELECT available FROM stock WHERE sku = $1 FOR UPDATE",
    "UPDATE stock SET available = available - $2 WHERE sku = $1",
    "UPDATE orders SET status = 'REJECTED', qty = 0 WHERE id = $1",
    "SELECT next_offset FROM consumer_offsets WHERE name = $1",
    "INSERT INTO consumer_offsets (name, next_offset) VALUES ($1, $2) "
    "ON CONFLICT (name) DO UPDATE SET next_offset = EXCLUDED.next_offset",
};

/* Durations in microseconds, in buckets: any thread adds, /stats reads. */
struct sf_hist {
    _Atomic uint64_t buckets[SF_HIST_BUCKETS];
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
    _Atomic uint64_t max_us;
};

struct sf_stats {
    _Atomic uint64_t requests;     /* POST /purchase requests read */
    _Atomic uint64_t answered_2xx; /* of those, answered 200, 201 or 202 */
    _Atomic uint64_t errors;       /* of those, answered 5xx (database or broker failure) */
    _Atomic uint64_t applied;      /* orders committed COMPLETED */
    _Atomic uint64_t duplicates;   /* a key already taken: a retry answered, a message absorbed */
    _Atomic uint64_t rejected;     /* sync: answered 409; async: committed REJECTED */
    _Atomic uint64_t undecodable;  /* async: messages that were no command (offset advanced) */
    _Atomic uint64_t published;    /* async: appends confirmed, injected duplicates included */
    _Atomic int64_t next_offset;   /* async: the consumer's next stream offset (-1: not yet) */
    struct sf_hist lock_wait;      /* the SELECT ... FOR UPDATE, per transaction */
    struct sf_hist apply_delay;    /* async: sentMs to the consumer's COMMIT */
};

/* A stack of free items (struct sf_pg_slot or struct sf_pub, owned by struct sf_server). */
struct sf_pool {
    pthread_mutex_t mutex;
    pthread_cond_t returned;
    void *items[SF_POOL_MAX];
    size_t free_count;
    size_t size;
};

struct sf_pg_slot {
    PGconn *conn; /* owned; NULL: connect at the next take */
};

struct sf_pub {
    amqp_connection_state_t conn; /* owned; NULL: connect at the next take */
    uint64_t next_tag;            /* the delivery tag of the next basic.publish on conn */
};

struct sf_server {
    enum sf_mode mode;
    const char *pg_conninfo;
    char amqp_url[512]; /* amqp_parse_url's buffer: amqp points into it */
    struct amqp_connection_info amqp;
    int64_t duplicate_every;
    int listen_fd;
    struct sf_pool pool;
    struct sf_pg_slot pg_slots[SF_POOL_MAX];
    struct sf_pub pubs[SF_POOL_MAX];
    _Atomic uint64_t accepted; /* async: commands that went to the publisher */
    atomic_size_t conn_count;  /* connection threads running */
    struct sf_stats stats;
};

struct sf_conn {
    struct sf_server *server;
    int fd;        /* owned */
    size_t length; /* bytes in buf */
    char buf[SF_HEAD_BYTES_MAX + SF_BODY_BYTES_MAX];
};

struct sf_request {
    char method[8];
    char path[32];
    bool close;
    bool has_length;
    size_t content_length;
    char key[SF_KEY_BYTES_MAX + 1];
    size_t key_length; /* the header's length, possibly past SF_KEY_BYTES_MAX (then invalid) */
    bool has_key;
    const char *body;
    size_t total_length; /* head and body, in the connection's buffer */
    int64_t read_wall_ms;
};

struct sf_purchase {
    char key[SF_KEY_BYTES_MAX + 1];
    char sku[SF_TEXT_BYTES_MAX + 1];
    char customer[SF_TEXT_BYTES_MAX + 1];
    int64_t qty;
    int64_t sent_ms; /* from the stream only */
};

struct sf_reply {
    int status;
    const char *allow; /* for 405 */
    struct jbuf json;
    char body[SF_REPLY_BYTES_MAX];
};

enum sf_outcome { SF_CREATED, SF_EXISTING, SF_SHORT, SF_UNKNOWN_SKU, SF_FAILED };

static atomic_int sf_stopping;

static void sf_on_signal(int signal_number)
{
    (void)signal_number;
    atomic_store(&sf_stopping, 1);
}

/* ---- statistics ---------------------------------------------------------------------------- */

static size_t sf_hist_bucket(uint64_t us)
{
    if (us < SF_HIST_SUB) {
        return (size_t)us;
    }
    int power = 63 - __builtin_clzll(us); /* 2^power <= us, power >= 3 */
    size_t index = (size_t)(power - 2) * SF_HIST_SUB + ((us >> (power - 3)) & (SF_HIST_SUB - 1));
    return index < SF_HIST_BUCKETS ? index : SF_HIST_BUCKETS - 1;
}

/* One past the largest value of bucket index. */
static uint64_t sf_hist_upper_us(size_t index)
{
    SVC_ASSERT(index < SF_HIST_BUCKETS);
    if (index < SF_HIST_SUB) {
        return index + 1;
    }
    uint64_t sub = index % SF_HIST_SUB;
    return (SF_HIST_SUB + sub + 1) << (index / SF_HIST_SUB - 1);
}

static void sf_hist_add(struct sf_hist *h, int64_t us)
{
    uint64_t value = us > 0 ? (uint64_t)us : 0;
    atomic_fetch_add_explicit(&h->buckets[sf_hist_bucket(value)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, value, memory_order_relaxed);
    uint64_t max = atomic_load_explicit(&h->max_us, memory_order_relaxed);
    while (value > max && !atomic_compare_exchange_weak(&h->max_us, &max, value)) {
    }
    atomic_fetch_add_explicit(&h->count, 1, memory_order_release);
}

/* The upper edge of the bucket holding quantile q, capped at the largest value seen. */
static double sf_hist_quantile_ms(const struct sf_hist *h, uint64_t count, double q)
{
    SVC_ASSERT(q > 0 && q <= 1);
    uint64_t max_us = atomic_load(&h->max_us);
    uint64_t rank = (uint64_t)((double)count * q + 0.999999);
    uint64_t seen = 0;
    for (size_t i = 0; i < SF_HIST_BUCKETS && count > 0; i++) {
        seen += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (seen >= rank) {
            uint64_t upper = sf_hist_upper_us(i);
            return (double)(upper < max_us ? upper : max_us) / 1000.0;
        }
    }
    return (double)max_us / 1000.0;
}

static void sf_hist_json(struct jbuf *b, const char *key, const struct sf_hist *h)
{
    uint64_t count = atomic_load_explicit(&h->count, memory_order_acquire);
    double mean = count > 0 ? (double)atomic_load(&h->sum_us) / (double)count / 1000.0 : 0;
    char text[160];
    snprintf(text, sizeof text,
             "{\"count\":%" PRIu64 ",\"mean\":%.3f,\"p50\":%.3f,\"p99\":%.3f,"
             "\"max\":%.3f}",
             count, mean, sf_hist_quantile_ms(h, count, 0.50), sf_hist_quantile_ms(h, count, 0.99),
             (double)atomic_load(&h->max_us) / 1000.0);
    jbuf_key(b, key);
    jbuf_lit(b, text);
}

/* ---- pools ----------------------------------------------------------------------------------- */

static void sf_pool_init(struct sf_pool *pool, void *const *items, size_t size)
{
    SVC_ASSERT(size >= 1 && size <= SF_POOL_MAX);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&pool->returned, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&pool->mutex, NULL);
    memcpy(pool->items, items, size * sizeof *items);
    pool->free_count = size;
    pool->size = size;
}

/* An item for the caller alone until sf_pool_give, or NULL after SF_POOL_WAIT_MS. */
static void *sf_pool_take(struct sf_pool *pool)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += SF_POOL_WAIT_MS / 1000;
    pthread_mutex_lock(&pool->mutex);
    int rc = 0;
    while (pool->free_count == 0 && rc == 0) {
        rc = pthread_cond_timedwait(&pool->returned, &pool->mutex, &deadline);
    }
    void *item = pool->free_count > 0 ? pool->items[--pool->free_count] : NULL;
    pthread_mutex_unlock(&pool->mutex);
    if (item == NULL) {
        log_warn("seedfront: no pooled connection came free within %d ms", SF_POOL_WAIT_MS);
    }
    return item;
}

static void sf_pool_give(struct sf_pool *pool, void *item)
{
    SVC_ASSERT(item != NULL);
    pthread_mutex_lock(&pool->mutex);
    SVC_ASSERT(pool->free_count < pool->size);
    pool->items[pool->free_count++] = item;
    pthread_cond_signal(&pool->returned);
    pthread_mutex_unlock(&pool->mutex);
}

/* ---- PostgreSQL -------------------------------------------------------------------------- */

/* A connection with every statement prepared, or NULL (logged). */
static PGconn *sf_pg_connect(const char *conninfo)
{
    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        log_warn("seedfront: cannot connect to PostgreSQL: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    for (int i = 0; i < SF_ST_COUNT; i++) {
        char name[4];
        snprintf(name, sizeof name, "%d", i);
        PGresult *res = PQprepare(conn, name, sf_stmt_sql[i], 0, NULL);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok) {
            log_warn("seedfront: cannot prepare %s: %s", sf_stmt_sql[i], PQerrorMessage(conn));
        }
        PQclear(res);
        if (!ok) {
            PQfinish(conn);
            return NULL;
        }
    }
    return conn;
}

/* Runs a prepared statement; its result when it has the status wanted, else NULL (logged). */
static PGresult *sf_pg_run(PGconn *conn, enum sf_stmt stmt, int count, const char *const *params,
                           ExecStatusType wanted)
{
    SVC_ASSERT(stmt < SF_ST_COUNT);
    SVC_ASSERT(count >= 1 && count <= 4);
    char name[4];
    snprintf(name, sizeof name, "%d", (int)stmt);
    PGresult *res = PQexecPrepared(conn, name, count, params, NULL, NULL, 0);
    if (PQresultStatus(res) != wanted) {
        log_warn("seedfront: %s: %s", sf_stmt_sql[stmt], PQerrorMessage(conn));
        PQclear(res);
        return NULL;
    }
    return res;
}

/* BEGIN, COMMIT or ROLLBACK. */
static bool sf_pg_command(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        log_warn("seedfront: %s: %s", sql, PQerrorMessage(conn));
    }
    PQclear(res);
    return ok;
}

/* The purchase's statements inside an open transaction: the order under its key (none if the
 * key is taken: a retry or a redelivery), the stock row locked (timed: the lock wait), the
 * decrement. *order_id is the new order's id. The caller commits or rolls back. */
static enum sf_outcome sf_order_apply(struct sf_server *s, PGconn *conn,
                                      const struct sf_purchase *p, int64_t *order_id)
{
    SVC_ASSERT(p->qty >= 1 && p->qty <= SF_QTY_MAX);
    char qty[24];
    snprintf(qty, sizeof qty, "%" PRId64, p->qty);
    const char *insert[4] = {p->key, p->sku, qty, p->customer};
    PGresult *res = sf_pg_run(conn, SF_ST_INSERT, 4, insert, PGRES_TUPLES_OK);
    if (res == NULL) {
        return SF_FAILED;
    }
    bool taken = PQntuples(res) == 0;
    *order_id = taken ? 0 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    if (taken) {
        return SF_EXISTING;
    }
    SVC_ASSERT(*order_id > 0);
    const char *sku[1] = {p->sku};
    int64_t start_us = clock_mono_us();
    res = sf_pg_run(conn, SF_ST_LOCK, 1, sku, PGRES_TUPLES_OK);
    if (res == NULL) {
        return SF_FAILED;
    }
    sf_hist_add(&s->stats.lock_wait, clock_mono_us() - start_us);
    int64_t available = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : -1;
    PQclear(res);
    if (available < p->qty) {
        return available < 0 ? SF_UNKNOWN_SKU : SF_SHORT;
    }
    const char *decrement[2] = {p->sku, qty};
    res = sf_pg_run(conn, SF_ST_DECREMENT, 2, decrement, PGRES_COMMAND_OK);
    PQclear(res);
    return res != NULL ? SF_CREATED : SF_FAILED;
}

/* ---- replies ------------------------------------------------------------------------------- */

static void sf_reply_start(struct sf_reply *r, int status)
{
    r->status = status;
    r->allow = NULL;
    jbuf_init(&r->json, r->body, sizeof r->body);
    jbuf_lit(&r->json, "{");
}

static void sf_reply_error(struct sf_reply *r, int status, const char *error)
{
    SVC_ASSERT(status >= 400);
    sf_reply_start(r, status);
    jbuf_kv_str(&r->json, "error", error);
}

static const char *sf_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    default: SVC_ASSERT(status == 503); return "Service Unavailable";
    }
}

static bool sf_send_all(int fd, const char *data, size_t length)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        data += n;
        length -= (size_t)n;
    }
    return true;
}

/* Closes the JSON body and sends the whole response in one write. */
static bool sf_reply_send(int fd, struct sf_reply *r, bool close)
{
    jbuf_lit(&r->json, "}");
    SVC_ASSERT(jbuf_ok(&r->json));
    char out[SF_REPLY_BYTES_MAX + 256];
    int head = snprintf(out, sizeof out,
                        "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n%s%s%s%s\r\n",
                        r->status, sf_reason(r->status), r->json.length,
                        close ? "Connection: close\r\n" : "", r->allow ? "Allow: " : "",
                        r->allow ? r->allow : "", r->allow ? "\r\n" : "");
    SVC_ASSERT(head > 0 && (size_t)head + r->json.length < sizeof out);
    memcpy(out + head, r->body, r->json.length);
    return sf_send_all(fd, out, (size_t)head + r->json.length);
}

/* ---- purchase validation ------------------------------------------------------------------ */

/* An Idempotency-Key: 1 to SF_KEY_BYTES_MAX visible ASCII characters. */
static bool sf_key_valid(const char *key, size_t length)
{
    if (length == 0 || length > SF_KEY_BYTES_MAX) {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        if (key[i] < 0x21 || key[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

/* Copies member name of obj, a string of 1 to out_size - 1 bytes without NUL, into out. */
static bool sf_json_text(const json_t *obj, const char *name, char *out, size_t out_size)
{
    const json_t *value = json_object_get(obj, name);
    if (!json_is_string(value)) {
        return false;
    }
    size_t length = json_string_length(value);
    const char *text = json_string_value(value);
    if (length == 0 || length >= out_size || memchr(text, '\0', length) != NULL) {
        return false;
    }
    memcpy(out, text, length + 1);
    SVC_ASSERT(out[length] == '\0');
    return true;
}

/* Decodes a purchase body (sku, qty, customerId) or, from_stream, a command (also key and
 * sentMs). NULL, or the name of the first member that is missing or wrong ("body": not a JSON
 * object). Other members are ignored. */
static const char *sf_purchase_decode(const char *text, size_t length, bool from_stream,
                                      struct sf_purchase *out)
{
    json_t *root = json_loadb(text, length, JSON_REJECT_DUPLICATES, NULL);
    const char *bad = NULL;
    if (!json_is_object(root)) {
        bad = "body";
    } else if (!sf_json_text(root, "sku", out->sku, sizeof out->sku)) {
        bad = "sku";
    } else if (!json_is_integer(json_object_get(root, "qty")) ||
               json_integer_value(json_object_get(root, "qty")) < 1 ||
               json_integer_value(json_object_get(root, "qty")) > SF_QTY_MAX) {
        bad = "qty";
    } else if (!sf_json_text(root, "customerId", out->customer, sizeof out->customer)) {
        bad = "customerId";
    } else if (from_stream && (!sf_json_text(root, "key", out->key, sizeof out->key) ||
                               !sf_key_valid(out->key, strlen(out->key)))) {
        bad = "key";
    } else if (from_stream && !json_is_integer(json_object_get(root, "sentMs"))) {
        bad = "sentMs";
    }
    if (bad == NULL) {
        out->qty = json_integer_value(json_object_get(root, "qty"));
        out->sent_ms = from_stream ? json_integer_value(json_object_get(root, "sentMs")) : 0;
    }
    json_decref(root);
    SVC_ASSERT(bad != NULL || (out->qty >= 1 && out->qty <= SF_QTY_MAX));
    return bad;
}

/* ---- sync: one transaction per request ------------------------------------------------------ */

/* Answers a key already taken with its order: 200 and the same orderId, or 409 if that
 * command was rejected. The row is committed (the INSERT waited for its transaction). */
static void sf_sync_existing(PGconn *conn, const struct sf_purchase *p, struct sf_reply *out)
{
    const char *key[1] = {p->key};
    PGresult *res = sf_pg_run(conn, SF_ST_EXISTING, 1, key, PGRES_TUPLES_OK);
    if (res == NULL || PQntuples(res) != 1) {
        sf_reply_error(out, 503, "database_unavailable");
    } else if (strcmp(PQgetvalue(res, 0, 1), "COMPLETED") != 0) {
        sf_reply_error(out, 409, "out_of_stock");
    } else {
        sf_reply_start(out, 200);
        jbuf_kv_int(&out->json, "orderId", strtoll(PQgetvalue(res, 0, 0), NULL, 10));
        jbuf_kv_str(&out->json, "status", "COMPLETED");
    }
    PQclear(res);
}

static void sf_sync_purchase(struct sf_server *s, const struct sf_purchase *p, struct sf_reply *out)
{
    struct sf_pg_slot *slot = sf_pool_take(&s->pool);
    if (slot == NULL) {
        sf_reply_error(out, 503, "database_unavailable");
        return;
    }
    if (slot->conn == NULL) {
        slot->conn = sf_pg_connect(s->pg_conninfo);
    }
    int64_t order_id = 0;
    enum sf_outcome outcome = SF_FAILED;
    if (slot->conn != NULL && sf_pg_command(slot->conn, "BEGIN")) {
        outcome = sf_order_apply(s, slot->conn, p, &order_id);
        bool committed = outcome == SF_CREATED && sf_pg_command(slot->conn, "COMMIT");
        if (outcome != SF_CREATED) {
            (void)sf_pg_command(slot->conn, "ROLLBACK");
        } else if (!committed) {
            outcome = SF_FAILED; /* its fate unknown: the client retries with the same key */
        }
    }
    if (outcome == SF_CREATED) {
        atomic_fetch_add(&s->stats.applied, 1);
        sf_reply_start(out, 201);
        jbuf_kv_int(&out->json, "orderId", order_id);
        jbuf_kv_str(&out->json, "status", "COMPLETED");
    } else if (outcome == SF_EXISTING) {
        atomic_fetch_add(&s->stats.duplicates, 1);
        sf_sync_existing(slot->conn, p, out);
    } else if (outcome == SF_SHORT) {
        atomic_fetch_add(&s->stats.rejected, 1);
        sf_reply_error(out, 409, "out_of_stock");
    } else if (outcome == SF_UNKNOWN_SKU) {
        sf_reply_error(out, 404, "unknown_sku");
    } else {
        sf_reply_error(out, 503, "database_unavailable");
    }
    if (slot->conn != NULL && PQstatus(slot->conn) != CONNECTION_OK) {
        PQfinish(slot->conn); /* connected again by the next request that takes the slot */
        slot->conn = NULL;
    }
    sf_pool_give(&s->pool, slot);
}

/* ---- async: AMQP connections ------------------------------------------------------------- */

static bool sf_amqp_ok(amqp_connection_state_t conn, const char *what)
{
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        log_warn("seedfront: AMQP %s failed (reply type %d, %s)", what, (int)reply.reply_type,
                 reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                     ? amqp_error_string2(reply.library_error)
                     : "refused by the broker");
        return false;
    }
    return true;
}

/* Opens a connection and its channel and declares the durable stream; NULL on failure. No
 * heartbeats: rabbitmq-c sends them only inside its own calls, and a publisher may sit in the
 * pool for long; a dead broker shows as a socket error or a confirm timeout. */
static amqp_connection_state_t sf_amqp_open(const struct sf_server *s)
{
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    struct timeval tv = {SF_AMQP_TIMEOUT_MS / 1000, (SF_AMQP_TIMEOUT_MS % 1000) * 1000};
    bool ok = socket != NULL && amqp_set_handshake_timeout(conn, &tv) == AMQP_STATUS_OK &&
              amqp_set_rpc_timeout(conn, &tv) == AMQP_STATUS_OK &&
              amqp_socket_open_noblock(socket, s->amqp.host, s->amqp.port, &tv) == AMQP_STATUS_OK;
    if (ok) {
        amqp_rpc_reply_t login = amqp_login(conn, s->amqp.vhost, 0, SF_AMQP_FRAME_BYTES_MAX, 0,
                                            AMQP_SASL_METHOD_PLAIN, s->amqp.user, s->amqp.password);
        ok = login.reply_type == AMQP_RESPONSE_NORMAL;
    }
    ok = ok && amqp_channel_open(conn, SF_AMQP_CHANNEL) != NULL && sf_amqp_ok(conn, "channel");
    if (ok) {
        amqp_table_entry_t args[2];
        args[0].key = amqp_cstring_bytes("x-queue-type");
        args[0].value.kind = AMQP_FIELD_KIND_UTF8;
        args[0].value.value.bytes = amqp_cstring_bytes("stream");
        args[1].key = amqp_cstring_bytes("x-max-length-bytes");
        args[1].value.kind = AMQP_FIELD_KIND_I64;
        args[1].value.value.i64 = SF_STREAM_BYTES_MAX;
        amqp_queue_declare(conn, SF_AMQP_CHANNEL, amqp_cstring_bytes(SF_QUEUE), 0, 1, 0, 0,
                           (amqp_table_t){2, args});
        ok = sf_amqp_ok(conn, "queue.declare");
    }
    if (!ok) {
        log_warn("seedfront: cannot open an AMQP connection to %s:%d", s->amqp.host, s->amqp.port);
        amqp_destroy_connection(conn);
        return NULL;
    }
    return conn;
}

static bool sf_pub_connect(const struct sf_server *s, struct sf_pub *pub)
{
    SVC_ASSERT(pub->conn == NULL);
    pub->conn = sf_amqp_open(s);
    if (pub->conn != NULL && (amqp_confirm_select(pub->conn, SF_AMQP_CHANNEL) == NULL ||
                              !sf_amqp_ok(pub->conn, "confirm.select"))) {
        amqp_destroy_connection(pub->conn);
        pub->conn = NULL;
    }
    pub->next_tag = 1;
    return pub->conn != NULL;
}

static void sf_pub_drop(struct sf_pub *pub)
{
    SVC_ASSERT(pub->conn != NULL);
    amqp_destroy_connection(pub->conn);
    pub->conn = NULL;
    SVC_ASSERT(pub->conn == NULL);
}

/* Waits for the confirms of tags [first, last] (at most two). true when all are acked; false
 * on a nack, a lost connection or SF_CONFIRM_TIMEOUT_MS (the caller drops the connection). */
static bool sf_pub_wait_confirms(struct sf_pub *pub, uint64_t first, uint64_t last)
{
    SVC_ASSERT(first >= 1 && last >= first && last - first < 2);
    bool acked[2] = {false, false};
    int64_t deadline_us = clock_mono_us() + (int64_t)SF_CONFIRM_TIMEOUT_MS * 1000;
    while (!acked[0] || !acked[last - first]) {
        int64_t left_us = deadline_us - clock_mono_us();
        struct timeval tv = {left_us > 0 ? left_us / 1000000 : 0,
                             left_us > 0 ? left_us % 1000000 : 0};
        amqp_frame_t frame;
        if (amqp_simple_wait_frame_noblock(pub->conn, &frame, &tv) != AMQP_STATUS_OK) {
            return false; /* a timeout or a lost connection */
        }
        if (frame.frame_type != AMQP_FRAME_METHOD) {
            continue;
        }
        if (frame.payload.method.id != AMQP_BASIC_ACK_METHOD) {
            return false; /* basic.nack, channel.close or connection.close */
        }
        const amqp_basic_ack_t *ack = frame.payload.method.decoded;
        for (uint64_t tag = first; tag <= last; tag++) {
            acked[tag - first] |=
                ack->multiple ? tag <= ack->delivery_tag : tag == ack->delivery_tag;
        }
    }
    return true;
}

/* Publishes body copies times (persistent, message-id key) and waits for the confirms. */
static bool sf_pub_publish(const struct sf_server *s, struct sf_pub *pub, const char *key,
                           const struct jbuf *body, int copies)
{
    SVC_ASSERT(copies == 1 || copies == 2);
    if (pub->conn == NULL && !sf_pub_connect(s, pub)) {
        return false;
    }
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof props);
    props._flags =
        AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.message_id = amqp_cstring_bytes(key);
    uint64_t first = pub->next_tag;
    for (int i = 0; i < copies; i++) {
        if (amqp_basic_publish(pub->conn, SF_AMQP_CHANNEL, amqp_empty_bytes,
                               amqp_cstring_bytes(SF_QUEUE), 0, 0, &props,
                               (amqp_bytes_t){body->length, body->data}) != AMQP_STATUS_OK) {
            sf_pub_drop(pub);
            return false;
        }
        pub->next_tag++;
    }
    bool confirmed = sf_pub_wait_confirms(pub, first, pub->next_tag - 1);
    if (!confirmed) {
        sf_pub_drop(pub);
        return false;
    }
    amqp_maybe_release_buffers(pub->conn);
    return true;
}

static void sf_async_purchase(struct sf_server *s, const struct sf_purchase *p, int64_t read_ms,
                              struct sf_reply *out)
{
    char text[SF_REPLY_BYTES_MAX];
    struct jbuf body;
    jbuf_init(&body, text, sizeof text);
    jbuf_lit(&body, "{");
    jbuf_kv_str(&body, "key", p->key);
    jbuf_kv_str(&body, "sku", p->sku);
    jbuf_kv_int(&body, "qty", p->qty);
    jbuf_kv_str(&body, "customerId", p->customer);
    jbuf_kv_int(&body, "sentMs", read_ms);
    jbuf_lit(&body, "}");
    SVC_ASSERT(jbuf_ok(&body));
    uint64_t n = atomic_fetch_add(&s->accepted, 1) + 1;
    int copies = s->duplicate_every > 0 && n % (uint64_t)s->duplicate_every == 0 ? 2 : 1;
    struct sf_pub *pub = sf_pool_take(&s->pool);
    bool published = false;
    for (int attempt = 0; pub != NULL && !published && attempt < SF_PUBLISH_ATTEMPTS_MAX;
         attempt++) {
        published = sf_pub_publish(s, pub, p->key, &body, copies);
    }
    if (pub != NULL) {
        sf_pool_give(&s->pool, pub);
    }
    if (!published) {
        sf_reply_error(out, 503, "broker_unavailable");
        return;
    }
    atomic_fetch_add(&s->stats.published, (uint64_t)copies);
    sf_reply_start(out, 202);
    jbuf_kv_str(&out->json, "status", "ACCEPTED");
    jbuf_kv_str(&out->json, "key", p->key);
}

/* The stream's end (queue.declare passive: message-count) through a pooled publisher; -1 if
 * the broker cannot say. The stream is never truncated in a benchmark run (its retention is
 * SF_STREAM_BYTES_MAX), so its count is the offset its next message gets. */
static int64_t sf_stream_end(struct sf_server *s)
{
    struct sf_pub *pub = sf_pool_take(&s->pool);
    if (pub == NULL) {
        return -1;
    }
    int64_t end = -1;
    if (pub->conn != NULL || sf_pub_connect(s, pub)) {
        amqp_queue_declare_ok_t *ok = amqp_queue_declare(
            pub->conn, SF_AMQP_CHANNEL, amqp_cstring_bytes(SF_QUEUE), 1, 0, 0, 0, amqp_empty_table);
        if (ok != NULL) {
            end = ok->message_count;
        } else {
            sf_pub_drop(pub); /* a refused passive declare closes the channel */
        }
    }
    sf_pool_give(&s->pool, pub);
    return end;
}

/* ---- async: the consumer ------------------------------------------------------------------ */

/* Applies one message in one transaction: the order (or nothing, for a key already taken; or
 * a REJECTED row with qty 0 when the stock is short or the sku unknown), then the next offset.
 * A message that is no command only moves the offset. false: nothing committed. */
static bool sf_consumer_apply(struct sf_server *s, PGconn *pg, amqp_bytes_t body, int64_t offset)
{
    struct sf_purchase p;
    const char *bad = sf_purchase_decode(body.bytes, body.len, true, &p);
    if (bad != NULL) {
        log_warn("seedfront: message at offset %" PRId64 " is no command (%s): skipped", offset,
                 bad);
    }
    if (!sf_pg_command(pg, "BEGIN")) {
        return false;
    }
    int64_t order_id = 0; /* an undecodable message changes no order: as if its key were taken */
    enum sf_outcome outcome = bad != NULL ? SF_EXISTING : sf_order_apply(s, pg, &p, &order_id);
    bool ok = outcome != SF_FAILED;
    if (ok && (outcome == SF_SHORT || outcome == SF_UNKNOWN_SKU)) {
        char id[24];
        snprintf(id, sizeof id, "%" PRId64, order_id);
        const char *reject[1] = {id};
        PGresult *res = sf_pg_run(pg, SF_ST_REJECT, 1, reject, PGRES_COMMAND_OK);
        ok = res != NULL;
        PQclear(res);
    }
    char next[24];
    snprintf(next, sizeof next, "%" PRId64, offset + 1);
    const char *offset_params[2] = {SF_CONSUMER_NAME, next};
    PGresult *res =
        ok ? sf_pg_run(pg, SF_ST_OFFSET_WRITE, 2, offset_params, PGRES_COMMAND_OK) : NULL;
    ok = res != NULL && sf_pg_command(pg, "COMMIT");
    PQclear(res);
    if (!ok) {
        (void)sf_pg_command(pg, "ROLLBACK");
        return false;
    }
    _Atomic uint64_t *counter = bad != NULL              ? &s->stats.undecodable
                                : outcome == SF_CREATED  ? &s->stats.applied
                                : outcome == SF_EXISTING ? &s->stats.duplicates
                                                         : &s->stats.rejected;
    atomic_fetch_add(counter, 1);
    if (outcome == SF_CREATED) {
        sf_hist_add(&s->stats.apply_delay, (clock_wall_ms() - p.sent_ms) * 1000);
    }
    return true;
}

/* The next offset stored for this consumer (0 if none), or -1 on a failure. */
static int64_t sf_consumer_offset(PGconn *pg)
{
    const char *name[1] = {SF_CONSUMER_NAME};
    PGresult *res = sf_pg_run(pg, SF_ST_OFFSET_READ, 1, name, PGRES_TUPLES_OK);
    if (res == NULL) {
        return -1;
    }
    int64_t next = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    SVC_ASSERT(next >= 0);
    return next;
}

/* basic.qos, then basic.consume (manual ack) from stream offset next. */
static bool sf_consumer_start(amqp_connection_state_t conn, int64_t next)
{
    SVC_ASSERT(next >= 0);
    if (amqp_basic_qos(conn, SF_AMQP_CHANNEL, 0, SF_PREFETCH, 0) == NULL ||
        !sf_amqp_ok(conn, "basic.qos")) {
        return false;
    }
    amqp_table_entry_t arg;
    arg.key = amqp_cstring_bytes("x-stream-offset");
    arg.value.kind = AMQP_FIELD_KIND_I64;
    arg.value.value.i64 = next;
    amqp_basic_consume(conn, SF_AMQP_CHANNEL, amqp_cstring_bytes(SF_QUEUE), amqp_empty_bytes, 0, 0,
                       0, (amqp_table_t){1, &arg});
    return sf_amqp_ok(conn, "basic.consume");
}

static int64_t sf_delivery_offset(const amqp_basic_properties_t *props)
{
    if (!(props->_flags & AMQP_BASIC_HEADERS_FLAG)) {
        return -1;
    }
    for (int i = 0; i < props->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &props->headers.entries[i];
        if (e->key.len == 15 && memcmp(e->key.bytes, "x-stream-offset", 15) == 0) {
            return e->value.kind == AMQP_FIELD_KIND_I64 ? e->value.value.i64 : -1;
        }
    }
    return -1;
}

/* Waits up to SF_POLL_MS for a delivery and handles it. 0 to go on, -1 to end the session
 * (its unacknowledged deliveries come again from the stored offset in the next one). */
static int sf_consumer_step(struct sf_server *s, amqp_connection_state_t conn, PGconn *pg,
                            int64_t *next)
{
    amqp_maybe_release_buffers(conn);
    struct timeval tv = {0, SF_POLL_MS * 1000};
    amqp_envelope_t env;
    amqp_rpc_reply_t reply = amqp_consume_message(conn, &env, &tv, 0);
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_TIMEOUT) {
        return 0;
    }
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
        amqp_frame_t frame; /* not a delivery: a cancel or a close ends the session */
        return amqp_simple_wait_frame(conn, &frame) == AMQP_STATUS_OK &&
                       frame.frame_type != AMQP_FRAME_METHOD
                   ? 0
                   : -1;
    }
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        log_warn("seedfront: consumer: the AMQP connection failed");
        return -1;
    }
    int64_t offset = sf_delivery_offset(&env.message.properties);
    /* A stream delivers whole chunks: the messages before the asked offset are acked only. */
    bool ok = offset < *next || sf_consumer_apply(s, pg, env.message.body, offset);
    ok = ok && amqp_basic_ack(conn, SF_AMQP_CHANNEL, env.delivery_tag, 0) == AMQP_STATUS_OK;
    if (ok && offset >= *next) {
        *next = offset + 1;
        atomic_store(&s->stats.next_offset, *next);
    }
    amqp_destroy_envelope(&env);
    return ok ? 0 : -1;
}

/* One session: a database connection, the stored offset, an AMQP consumer from it, and
 * messages until a failure or the stop. */
static void sf_consumer_session(struct sf_server *s)
{
    PGconn *pg = sf_pg_connect(s->pg_conninfo);
    int64_t next = pg != NULL ? sf_consumer_offset(pg) : -1;
    amqp_connection_state_t conn = next >= 0 ? sf_amqp_open(s) : NULL;
    if (conn != NULL && sf_consumer_start(conn, next)) {
        log_info("seedfront: consumer reads %s from offset %" PRId64, SF_QUEUE, next);
        atomic_store(&s->stats.next_offset, next);
        while (!atomic_load(&sf_stopping) && sf_consumer_step(s, conn, pg, &next) == 0) {
        }
    }
    if (conn != NULL) {
        amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn);
    }
    PQfinish(pg);
}

static void *sf_consumer_main(void *arg)
{
    struct sf_server *s = arg;
    SVC_ASSERT(s->mode == SF_ASYNC);
    while (!atomic_load(&sf_stopping)) {
        sf_consumer_session(s);
        for (int waited = 0; waited < SF_RETRY_MS && !atomic_load(&sf_stopping);
             waited += SF_POLL_MS) {
            struct timespec pause = {0, SF_POLL_MS * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
    return NULL;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

/* One header line [line, eol) into r. 0, or the status that refuses the request. */
static int sf_header_parse(struct sf_request *r, const char *line, const char *eol)
{
    const char *colon = memchr(line, ':', (size_t)(eol - line));
    if (colon == NULL || colon == line || line[0] == ' ' || line[0] == '\t') {
        return 400;
    }
    size_t name_length = (size_t)(colon - line);
    const char *value = colon + 1;
    while (value < eol && (*value == ' ' || *value == '\t')) {
        value++;
    }
    const char *end = eol;
    while (end > value && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }
    size_t length = (size_t)(end - value);
#define SF_IS(name) (name_length == sizeof name - 1 && strncasecmp(line, name, name_length) == 0)
    if (SF_IS("content-length")) {
        if (r->has_length || length == 0 || length > 9 || strspn(value, "0123456789") < length) {
            return 400;
        }
        r->has_length = true;
        r->content_length = (size_t)strtoul(value, NULL, 10);
    } else if (SF_IS("transfer-encoding")) {
        return 501;
    } else if (SF_IS("connection")) {
        r->close = length == 5 && strncasecmp(value, "close", 5) == 0;
    } else if (SF_IS("idempotency-key")) {
        r->has_key = true;
        r->key_length = length;
        if (length <= SF_KEY_BYTES_MAX) {
            memcpy(r->key, value, length);
            r->key[length] = '\0';
        }
    }
#undef SF_IS
    return 0;
}

/* The head head[0, head_length), which ends in an empty line, into r. 0 or a status. */
static int sf_head_parse(const char *head, size_t head_length, struct sf_request *r)
{
    SVC_ASSERT(head_length >= 4 && memcmp(head + head_length - 4, "\r\n\r\n", 4) == 0);
    memset(r, 0, sizeof *r);
    const char *limit = head + head_length - 2; /* every line in [head, limit) ends in CRLF */
    const char *eol = memmem(head, (size_t)(limit - head), "\r\n", 2);
    const char *space1 = memchr(head, ' ', (size_t)(eol - head));
    const char *space2 = space1 ? memchr(space1 + 1, ' ', (size_t)(eol - space1 - 1)) : NULL;
    if (space2 == NULL || space1 == head || (size_t)(space1 - head) >= sizeof r->method ||
        space1[1] != '/' || (size_t)(eol - space2 - 1) != 8 || memcmp(space2 + 1, "HTTP/1.", 7)) {
        return 400;
    }
    memcpy(r->method, head, (size_t)(space1 - head));
    const char *target = space1 + 1;
    size_t path_length = strcspn(target, "? ");
    if (path_length < sizeof r->path) { /* a longer path matches no route: left empty */
        memcpy(r->path, target, path_length);
    }
    r->close = space2[8] == '0'; /* HTTP/1.0 closes unless it asks to keep alive */
    for (const char *line = eol + 2; line < limit; line = eol + 2) {
        eol = memmem(line, (size_t)(limit - line), "\r\n", 2);
        SVC_ASSERT(eol != NULL);
        int status = sf_header_parse(r, line, eol);
        if (status != 0) {
            return status;
        }
    }
    return 0;
}

/* More bytes from the peer into the buffer. false: closed, failed, idle for
 * SF_IDLE_TIMEOUT_MS, or the stop (a blocked recv wakes every SF_POLL_MS: SO_RCVTIMEO). */
static bool sf_recv_more(struct sf_conn *c)
{
    SVC_ASSERT(c->length < sizeof c->buf);
    for (int idle_ms = 0; idle_ms < SF_IDLE_TIMEOUT_MS && !atomic_load(&sf_stopping);) {
        ssize_t n = recv(c->fd, c->buf + c->length, sizeof c->buf - c->length, 0);
        if (n > 0) {
            c->length += (size_t)n;
            return true;
        }
        if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
            return false;
        }
        idle_ms += errno == EAGAIN ? SF_POLL_MS : 0;
    }
    return false;
}

/* The next request, in c->buf. 1: r is filled; 0: the peer closed or went idle; -status for
 * a request refused (the connection closes after the answer). */
static int sf_request_read(struct sf_conn *c, struct sf_request *r)
{
    const char *end;
    while ((end = memmem(c->buf, c->length, "\r\n\r\n", 4)) == NULL) {
        if (c->length >= SF_HEAD_BYTES_MAX) {
            return -431;
        }
        if (!sf_recv_more(c)) {
            return 0;
        }
    }
    size_t head_length = (size_t)(end - c->buf) + 4;
    int status = sf_head_parse(c->buf, head_length, r);
    if (status != 0) {
        return -status;
    }
    if (r->content_length > SF_BODY_BYTES_MAX) {
        return -413;
    }
    r->total_length = head_length + r->content_length;
    SVC_ASSERT(r->total_length <= sizeof c->buf);
    while (c->length < r->total_length) {
        if (!sf_recv_more(c)) {
            return 0;
        }
    }
    r->body = c->buf + head_length;
    r->read_wall_ms = clock_wall_ms();
    return 1;
}

/* Commands in the stream the consumer has not passed yet, at least: the larger of this
 * process's confirmed appends less the messages its consumer passed (exact on a fresh stream),
 * and the broker's message count less the consumer's offset (the broker refreshes that count
 * every few seconds: it falls behind under load, but counts what an earlier process left). */
static int64_t sf_lag(struct sf_server *s, int64_t end, int64_t next)
{
    struct sf_stats *st = &s->stats;
    uint64_t passed = atomic_load(&st->applied) + atomic_load(&st->duplicates) +
                      atomic_load(&st->rejected) + atomic_load(&st->undecodable);
    int64_t own = (int64_t)atomic_load(&st->published) - (int64_t)passed;
    int64_t broker = end >= 0 && next >= 0 ? end - next : 0;
    int64_t lag = own > broker ? own : broker;
    return lag > 0 ? lag : 0;
}

static void sf_stats_reply(struct sf_server *s, struct sf_reply *out)
{
    struct sf_stats *st = &s->stats;
    int64_t next = atomic_load(&st->next_offset);
    int64_t end = s->mode == SF_ASYNC ? sf_stream_end(s) : 0;
    sf_reply_start(out, 200);
    jbuf_kv_str(&out->json, "mode", s->mode == SF_SYNC ? "sync" : "async");
    jbuf_kv_int(&out->json, "requests", (int64_t)atomic_load(&st->requests));
    jbuf_kv_int(&out->json, "answered2xx", (int64_t)atomic_load(&st->answered_2xx));
    jbuf_kv_int(&out->json, "errors", (int64_t)atomic_load(&st->errors));
    jbuf_kv_int(&out->json, "applied", (int64_t)atomic_load(&st->applied));
    jbuf_kv_int(&out->json, "duplicatesAbsorbed", (int64_t)atomic_load(&st->duplicates));
    jbuf_kv_int(&out->json, "rejected", (int64_t)atomic_load(&st->rejected));
    jbuf_kv_int(&out->json, "undecodable", (int64_t)atomic_load(&st->undecodable));
    jbuf_kv_int(&out->json, "published", (int64_t)atomic_load(&st->published));
    sf_hist_json(&out->json, "lockWaitMs", &st->lock_wait);
    sf_hist_json(&out->json, "applyDelayMs", &st->apply_delay);
    jbuf_kv_int(&out->json, "consumerNextOffset", next);
    jbuf_kv_int(&out->json, "streamEnd", end);
    jbuf_kv_int(&out->json, "consumerLagMessages", s->mode == SF_ASYNC ? sf_lag(s, end, next) : 0);
}

static void sf_purchase_reply(struct sf_server *s, const struct sf_request *r, struct sf_reply *out)
{
    atomic_fetch_add(&s->stats.requests, 1);
    struct sf_purchase p;
    const char *bad = NULL;
    if (!r->has_key) {
        sf_reply_error(out, 400, "missing_idempotency_key");
    } else if (!sf_key_valid(r->key, r->key_length)) {
        sf_reply_error(out, 400, "invalid_idempotency_key");
    } else if ((bad = sf_purchase_decode(r->body, r->content_length, false, &p)) != NULL) {
        sf_reply_error(out, 400, strcmp(bad, "body") == 0 ? "invalid_json" : "invalid_field");
        if (strcmp(bad, "body") != 0) {
            jbuf_kv_str(&out->json, "field", bad);
        }
    } else {
        memcpy(p.key, r->key, r->key_length + 1);
        if (s->mode == SF_SYNC) {
            sf_sync_purchase(s, &p, out);
        } else {
            sf_async_purchase(s, &p, r->read_wall_ms, out);
        }
    }
    if (out->status < 300) {
        atomic_fetch_add(&s->stats.answered_2xx, 1);
    } else if (out->status >= 500) {
        atomic_fetch_add(&s->stats.errors, 1);
    }
}

/* The route table: POST /purchase, GET /stats, GET /health. */
static void sf_route(struct sf_server *s, const struct sf_request *r, struct sf_reply *out)
{
    bool post = strcmp(r->method, "POST") == 0;
    bool get = strcmp(r->method, "GET") == 0;
    if (strcmp(r->path, "/purchase") == 0) {
        if (post) {
            sf_purchase_reply(s, r, out);
            return;
        }
        sf_reply_error(out, 405, "method_not_allowed");
        out->allow = "POST";
    } else if (strcmp(r->path, "/stats") == 0 || strcmp(r->path, "/health") == 0) {
        if (get && r->path[1] == 's') {
            sf_stats_reply(s, out);
            return;
        }
        if (get) {
            sf_reply_start(out, 200);
            jbuf_kv_str(&out->json, "status", "ok");
            return;
        }
        sf_reply_error(out, 405, "method_not_allowed");
        out->allow = "GET";
    } else {
        sf_reply_error(out, 404, "not_found");
    }
}

static void *sf_conn_main(void *arg)
{
    struct sf_conn *c = arg;
    struct sf_reply reply;
    for (;;) {
        struct sf_request r;
        int rc = sf_request_read(c, &r);
        if (rc == 0) {
            break;
        }
        if (rc < 0) {
            sf_reply_error(&reply, -rc,
                           rc == -413   ? "body_too_large"
                           : rc == -431 ? "head_too_large"
                           : rc == -501 ? "transfer_encoding_unsupported"
                                        : "bad_request");
        } else {
            sf_route(c->server, &r, &reply);
        }
        bool close = rc < 0 || r.close || atomic_load(&sf_stopping);
        if (!sf_reply_send(c->fd, &reply, close) || close) {
            break;
        }
        SVC_ASSERT(r.total_length <= c->length);
        memmove(c->buf, c->buf + r.total_length, c->length - r.total_length);
        c->length -= r.total_length;
    }
    atomic_fetch_sub(&c->server->conn_count, 1);
    close(c->fd);
    free(c);
    return NULL;
}

/* Gives an accepted socket its thread, or answers 503 when SF_CONNECTIONS_MAX are served. */
static void sf_conn_start(struct sf_server *s, int fd, const pthread_attr_t *attr)
{
    int one = 1;
    struct timeval poll_tv = {0, SF_POLL_MS * 1000};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &poll_tv, sizeof poll_tv);
    struct sf_conn *c = malloc(sizeof *c);
    if (c == NULL || atomic_fetch_add(&s->conn_count, 1) >= SF_CONNECTIONS_MAX) {
        struct sf_reply reply;
        sf_reply_error(&reply, 503, "too_many_connections");
        (void)sf_reply_send(fd, &reply, true);
        atomic_fetch_sub(&s->conn_count, c != NULL ? 1 : 0);
        close(fd);
        free(c);
        return;
    }
    *c = (struct sf_conn){.server = s, .fd = fd, .length = 0};
    pthread_t thread;
    if (pthread_create(&thread, attr, sf_conn_main, c) != 0) {
        log_warn("seedfront: cannot start a connection thread");
        atomic_fetch_sub(&s->conn_count, 1);
        close(fd);
        free(c);
    }
}

static void sf_accept_loop(struct sf_server *s)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, SF_THREAD_STACK_BYTES);
    while (!atomic_load(&sf_stopping)) {
        struct pollfd pfd = {.fd = s->listen_fd, .events = POLLIN};
        if (poll(&pfd, 1, SF_POLL_MS) <= 0) {
            continue;
        }
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            sf_conn_start(s, fd, &attr);
        } else if (errno == EMFILE || errno == ENFILE) {
            log_warn("seedfront: accept: %s", strerror(errno));
            struct timespec pause = {0, SF_POLL_MS * 1000000L};
            nanosleep(&pause, NULL);
        }
    }
    pthread_attr_destroy(&attr);
}

/* Waits up to SF_SHUTDOWN_WAIT_MS for the connection threads, which see the stop within
 * SF_POLL_MS once their request is answered. true when none is left. */
static bool sf_conns_drain(struct sf_server *s)
{
    for (int waited = 0; waited < SF_SHUTDOWN_WAIT_MS && atomic_load(&s->conn_count) > 0;
         waited += SF_POLL_MS) {
        struct timespec pause = {0, SF_POLL_MS * 1000000L};
        nanosleep(&pause, NULL);
    }
    size_t busy = atomic_load(&s->conn_count);
    if (busy > 0) {
        log_warn("seedfront: %zu connection(s) still busy at exit", busy);
    }
    return busy == 0;
}

/* ---- startup -------------------------------------------------------------------------------- */

static int sf_listen(const char *address)
{
    char host[64];
    const char *colon = strrchr(address, ':');
    long port = colon != NULL ? strtol(colon + 1, NULL, 10) : 0;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (colon == NULL || (size_t)(colon - address) >= sizeof host || port <= 0 || port > 65535) {
        return -1;
    }
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || inet_pton(AF_INET, host, &sin.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(fd, SF_LISTEN_BACKLOG) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

/* The pool of the mode: libpq connections (sync) or publishers (async), all connected now so
 * that a wrong address stops the start. */
static bool sf_pools_open(struct sf_server *s, long size)
{
    SVC_ASSERT(size >= 1 && size <= SF_POOL_MAX);
    void *items[SF_POOL_MAX];
    for (long i = 0; i < size; i++) {
        if (s->mode == SF_SYNC) {
            s->pg_slots[i].conn = sf_pg_connect(s->pg_conninfo);
            items[i] = &s->pg_slots[i];
            if (s->pg_slots[i].conn == NULL) {
                return false;
            }
        } else {
            items[i] = &s->pubs[i];
            if (!sf_pub_connect(s, &s->pubs[i])) {
                return false;
            }
        }
    }
    sf_pool_init(&s->pool, items, (size_t)size);
    return true;
}

static void sf_pools_close(struct sf_server *s)
{
    for (size_t i = 0; i < SF_POOL_MAX; i++) {
        PQfinish(s->pg_slots[i].conn); /* NULL is fine */
        s->pg_slots[i].conn = NULL;
        if (s->pubs[i].conn != NULL) {
            amqp_connection_close(s->pubs[i].conn, AMQP_REPLY_SUCCESS);
            sf_pub_drop(&s->pubs[i]);
        }
    }
}

static int sf_usage(const char *message)
{
    fprintf(stderr, "seedfront: %s\n\n%s", message, sf_usage_text);
    return 2;
}

/* Options after the mode into s; *pool_size is --pool or --publishers. 0, or 2 (usage). */
static int sf_options_parse(struct sf_server *s, int argc, char **argv, const char **listen_at,
                            long *pool_size)
{
    static const struct option options[] = {
        {"listen", required_argument, NULL, 'l'},
        {"pg", required_argument, NULL, 'g'},
        {"pool", required_argument, NULL, 'p'},
        {"amqp", required_argument, NULL, 'a'},
        {"publishers", required_argument, NULL, 'P'},
        {"duplicate-every", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    const char *amqp_url = NULL;
    *pool_size = s->mode == SF_SYNC ? SF_POOL_DEFAULT : SF_PUBLISHERS_DEFAULT;
    int option;
    while ((option = getopt_long(argc, argv, "", options, NULL)) != -1) {
        char *end = NULL;
        long value = optarg != NULL ? strtol(optarg, &end, 10) : 0;
        bool number = end != NULL && end != optarg && *end == '\0';
        if (option == 'l') {
            *listen_at = optarg;
        } else if (option == 'g') {
            s->pg_conninfo = optarg;
        } else if (option == 'a') {
            amqp_url = optarg;
        } else if ((option == 'p' || option == 'P') && number && value >= 1 &&
                   value <= SF_POOL_MAX) {
            *pool_size = value;
        } else if (option == 'd' && number && value >= 0) {
            s->duplicate_every = value;
        } else {
            return sf_usage("bad option");
        }
    }
    if (*listen_at == NULL || s->pg_conninfo == NULL || optind != argc) {
        return sf_usage("--listen and --pg are required");
    }
    if (s->mode == SF_ASYNC && (amqp_url == NULL || strlen(amqp_url) >= sizeof s->amqp_url)) {
        return sf_usage("async needs --amqp URL");
    }
    if (s->mode == SF_ASYNC) {
        memcpy(s->amqp_url, amqp_url, strlen(amqp_url) + 1);
        if (amqp_parse_url(s->amqp_url, &s->amqp) != AMQP_STATUS_OK || s->amqp.ssl) {
            return sf_usage("--amqp: not an amqp:// URL");
        }
    }
    return 0;
}

static void sf_signals_install(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = sf_on_signal; /* no SA_RESTART: poll returns at once */
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int main(int argc, char **argv)
{
    static struct sf_server s;
    if (argc < 2 || (strcmp(argv[1], "sync") != 0 && strcmp(argv[1], "async") != 0)) {
        return sf_usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? "usage" : "sync or async?");
    }
    s.mode = strcmp(argv[1], "sync") == 0 ? SF_SYNC : SF_ASYNC;
    const char *listen_at = NULL;
    long pool_size = 0;
    int rc = sf_options_parse(&s, argc - 1, argv + 1, &listen_at, &pool_size);
    if (rc != 0) {
        return rc;
    }
    atomic_store(&s.stats.next_offset, -1);
    sf_signals_install();
    s.listen_fd = sf_listen(listen_at);
    if (s.listen_fd < 0 || !sf_pools_open(&s, pool_size)) {
        fprintf(stderr, "seedfront: cannot listen on %s or connect (see the log)\n", listen_at);
        sf_pools_close(&s);
        return 1;
    }
    pthread_t consumer;
    if (s.mode == SF_ASYNC && pthread_create(&consumer, NULL, sf_consumer_main, &s) != 0) {
        fprintf(stderr, "seedfront: cannot start the consumer\n");
        return 1;
    }
    log_info("seedfront %s: listening on %s, %ld pooled connection(s)", argv[1], listen_at,
             pool_size);
    sf_accept_loop(&s);
    close(s.listen_fd);
    bool drained = sf_conns_drain(&s);
    if (s.mode == SF_ASYNC) {
        pthread_join(consumer, NULL);
    }
    if (drained) { /* else a busy thread may still hold a pooled connection: exit holds them */
        sf_pools_close(&s);
    }
    log_info("seedfront: stopped");
    return 0;
}
