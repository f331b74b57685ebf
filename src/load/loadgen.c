/*
 * loadgen.c - the load generator engine; the contract is in loadgen.h.
 *
 * Reading order: the histogram, request formatting, the response parser, key outcomes, then
 * the engine proper: one thread per share of the connections, each an epoll loop over a
 * small per-connection state machine:
 *
 *      WAITING --(deadline)--> CONNECTING --(connected)--> READY <--(answered)--+
 *         ^                        |                         |                  |
 *         |                        |          (request sent) v                  |
 *         +-----(failure: timeout, refused, reset, bad bytes)---------------- BUSY
 *
 *   - lg_conn_connect:    WAITING/new -> CONNECTING
 *   - lg_conn_on_connect: CONNECTING -> BUSY (a retry rides the fresh connection) or READY
 *   - lg_conn_send_new:   READY -> BUSY (closed loop: at once; open loop: when one is due)
 *   - lg_conn_complete:   BUSY -> READY, or -> CONNECTING when the server closes
 *   - lg_conn_fail:       any -> WAITING; the request stays on the connection for its retry
 *   - lg_thread_reconnect_due: WAITING -> CONNECTING, or -> CLOSED once the run has ended
 *
 * A connection carries at most one request (no pipelining), so a request never waits behind
 * another one on the same connection. Failures never call back into sending: they park the
 * connection in WAITING and the loop reconnects it, which bounds the recursion depth.
 * The blocking lg_client at the end serves the few requests around a run.
 */
#include "loadgen.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "base/svc_assert.h"
#include "base/svc_thread.h"

#define LG_NS_PER_S 1000000000LL

static int64_t lg_now_ns(void)
{
    struct timespec now;
    int rc = clock_gettime(CLOCK_MONOTONIC, &now);
    SVC_ASSERT(rc == 0);
    SVC_ASSERT(now.tv_sec >= 0);
    return (int64_t)now.tv_sec * LG_NS_PER_S + now.tv_nsec;
}

static int64_t lg_min(int64_t a, int64_t b)
{
    int64_t min = a < b ? a : b;
    SVC_ASSERT(min <= a && min <= b);
    return min;
}

/* ---- histogram ----------------------------------------------------------------------------- */

void lg_hist_init(struct lg_hist *h)
{
    SVC_ASSERT(h != NULL);
    memset(h, 0, sizeof *h);
    SVC_ASSERT(h->count == 0);
}

uint32_t lg_hist_bucket(int64_t value_ns)
{
    uint64_t value = value_ns < 0 ? 0 : (uint64_t)value_ns;
    if (value > (uint64_t)LG_HIST_VALUE_MAX_NS) {
        value = (uint64_t)LG_HIST_VALUE_MAX_NS;
    }
    if (value < LG_HIST_SUB_COUNT) {
        return (uint32_t)value;
    }
    int exponent = 63 - __builtin_clzll(value);
    SVC_ASSERT(exponent >= LG_HIST_SUB_BITS && exponent <= LG_HIST_EXPONENT_MAX);
    int shift = exponent - LG_HIST_SUB_BITS;
    uint64_t mantissa = value >> shift; /* LG_HIST_SUB_COUNT .. 2 * LG_HIST_SUB_COUNT - 1 */
    uint64_t bucket = (uint64_t)(shift + 1) * LG_HIST_SUB_COUNT + mantissa - LG_HIST_SUB_COUNT;
    SVC_ASSERT(bucket < LG_HIST_BUCKETS);
    return (uint32_t)bucket;
}

int64_t lg_hist_bucket_value_ns(uint32_t bucket)
{
    SVC_ASSERT(bucket < LG_HIST_BUCKETS);
    if (bucket < LG_HIST_SUB_COUNT) {
        return bucket;
    }
    uint32_t shift = bucket / LG_HIST_SUB_COUNT - 1;
    uint64_t low = (uint64_t)(bucket % LG_HIST_SUB_COUNT + LG_HIST_SUB_COUNT) << shift;
    uint64_t width = 1ULL << shift;
    SVC_ASSERT(lg_hist_bucket((int64_t)low) == bucket);
    return (int64_t)(low + width / 2);
}

void lg_hist_record(struct lg_hist *h, int64_t value_ns)
{
    uint32_t bucket = lg_hist_bucket(value_ns);
    int64_t clamped = value_ns < 0 ? 0 : lg_min(value_ns, LG_HIST_VALUE_MAX_NS);
    h->counts[bucket]++;
    h->count++;
    h->sum_ns += (double)clamped;
    if (clamped > h->max_ns) {
        h->max_ns = clamped;
    }
    SVC_ASSERT(h->count > 0);
}

void lg_hist_merge(struct lg_hist *into, const struct lg_hist *from)
{
    SVC_ASSERT(into != from);
    uint64_t count_before = into->count;
    for (uint32_t i = 0; i < LG_HIST_BUCKETS; i++) {
        into->counts[i] += from->counts[i];
    }
    into->count += from->count;
    into->sum_ns += from->sum_ns;
    if (from->max_ns > into->max_ns) {
        into->max_ns = from->max_ns;
    }
    SVC_ASSERT(into->count >= count_before);
}

int64_t lg_hist_percentile_ns(const struct lg_hist *h, double percentile)
{
    SVC_ASSERT(percentile > 0.0 && percentile <= 100.0);
    if (h->count == 0) {
        return 0;
    }
    if (percentile >= 100.0 && h->max_ns > 0) {
        return h->max_ns;
    }
    double wanted = percentile / 100.0 * (double)h->count;
    uint64_t rank = (uint64_t)wanted;
    rank += (double)rank < wanted ? 1 : 0; /* ceil without libm */
    rank = rank == 0 ? 1 : rank;
    uint64_t seen = 0;
    uint32_t bucket = 0;
    for (; bucket < LG_HIST_BUCKETS; bucket++) {
        seen += h->counts[bucket];
        if (seen >= rank) {
            break;
        }
    }
    SVC_ASSERT(bucket < LG_HIST_BUCKETS);
    int64_t value = lg_hist_bucket_value_ns(bucket);
    return h->max_ns > 0 ? lg_min(value, h->max_ns) : value;
}

double lg_hist_mean_ns(const struct lg_hist *h)
{
    SVC_ASSERT(h->sum_ns >= 0.0);
    return h->count == 0 ? 0.0 : h->sum_ns / (double)h->count;
}

/* ---- endpoint and requests ----------------------------------------------------------------- */

/* Splits "host[:port]" or "[v6]:port" at authority into host and port texts. */
static int lg_authority_split(const char *authority, size_t length, char *host, char *port)
{
    SVC_ASSERT(length < LG_HOST_BYTES_MAX);
    const char *host_start = authority;
    const char *host_end = authority + length;
    if (length > 0 && authority[0] == '[') {
        host_start = authority + 1;
        host_end = memchr(authority, ']', length);
        if (host_end == NULL) {
            return -EINVAL;
        }
    } else {
        const char *colon = memchr(authority, ':', length);
        host_end = colon != NULL ? colon : host_end;
    }
    const char *port_start = host_end + (authority[0] == '[' ? 1 : 0);
    size_t port_length = (size_t)(authority + length - port_start);
    if (host_end == host_start || (port_length > 0 && port_start[0] != ':') || port_length == 1 ||
        port_length > 6) {
        return -EINVAL;
    }
    memcpy(host, host_start, (size_t)(host_end - host_start));
    host[host_end - host_start] = '\0';
    strcpy(port, "80");
    if (port_length > 0) {
        memcpy(port, port_start + 1, port_length - 1);
        port[port_length - 1] = '\0';
    }
    SVC_ASSERT(host[0] != '\0' && port[0] != '\0');
    return 0;
}

int lg_endpoint_parse(struct lg_endpoint *out, const char *url)
{
    SVC_ASSERT(out != NULL && url != NULL);
    memset(out, 0, sizeof *out);
    static const char scheme[] = "http://";
    if (strncmp(url, scheme, sizeof scheme - 1) != 0) {
        return -EINVAL;
    }
    const char *authority = url + sizeof scheme - 1;
    size_t length = strcspn(authority, "/?#");
    char host[LG_HOST_BYTES_MAX];
    char port[8];
    if (length == 0 || length >= LG_HOST_BYTES_MAX ||
        lg_authority_split(authority, length, host, port) < 0) {
        return -EINVAL;
    }
    memcpy(out->host_header, authority, length);
    out->host_header[length] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *found = NULL;
    if (getaddrinfo(host, port, &hints, &found) != 0 || found == NULL) {
        return -EHOSTUNREACH;
    }
    SVC_ASSERT(found->ai_addrlen <= sizeof out->address);
    memcpy(&out->address, found->ai_addr, found->ai_addrlen);
    out->address_length = found->ai_addrlen;
    freeaddrinfo(found);
    return 0;
}

int lg_endpoint_set_token(struct lg_endpoint *endpoint, const char *token)
{
    SVC_ASSERT(endpoint != NULL && token != NULL);
    size_t length = strlen(token);
    if (length < 1 || length > LG_TOKEN_BYTES_MAX) {
        return -EINVAL;
    }
    for (size_t i = 0; i < length; i++) {
        if ((unsigned char)token[i] < 0x21 || (unsigned char)token[i] > 0x7e) {
            return -EINVAL;
        }
    }
    int n = snprintf(endpoint->auth_header, sizeof endpoint->auth_header,
                     "Authorization: Bearer %s\r\n", token);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof endpoint->auth_header);
    return 0;
}

/* splitmix64's finalizer: spreads consecutive n over the whole 64-bit range. */
static uint64_t lg_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t lg_request_sku_index(const struct lg_config *config, uint64_t n)
{
    SVC_ASSERT(config->skus <= (uint64_t)LG_SKUS_MAX);
    uint64_t index = config->skus <= 1 ? 0 : lg_mix64(n) % config->skus;
    SVC_ASSERT(index == 0 || index < config->skus);
    return index;
}

void lg_sku_format(const struct lg_config *config, uint64_t index, char *out)
{
    size_t prefix = strlen(config->sku);
    SVC_ASSERT(prefix >= 1 && prefix <= LG_SKU_BYTES_MAX);
    if (config->skus <= 1) {
        SVC_ASSERT(index == 0);
        memcpy(out, config->sku, prefix + 1);
        return;
    }
    SVC_ASSERT(index < config->skus && config->skus <= (uint64_t)LG_SKUS_MAX);
    SVC_ASSERT(prefix + LG_SKU_SUFFIX_BYTES_MAX <= LG_SKU_BYTES_MAX);
    int length =
        snprintf(out, LG_SKU_BYTES_MAX + 1, "%s-%llu", config->sku, (unsigned long long)index);
    SVC_ASSERT(length > 0 && (size_t)length <= prefix + LG_SKU_SUFFIX_BYTES_MAX);
}

size_t lg_request_format(const struct lg_config *config, uint64_t n, char *out, size_t size)
{
    SVC_ASSERT(size > 0);
    SVC_ASSERT(config->qty >= 1);
    if (config->target == LG_TARGET_GET) {
        return lg_request_format_get(&config->endpoint, config->path, out, size);
    }
    char body[256];
    char sku[LG_SKU_BYTES_MAX + 1];
    lg_sku_format(config, lg_request_sku_index(config, n), sku);
    int body_length;
    const char *path;
    if (config->target == LG_TARGET_PURCHASE || config->target == LG_TARGET_SEED_PURCHASE) {
        path = config->target == LG_TARGET_PURCHASE ? "/v1/purchase" : "/purchase";
        body_length = snprintf(body, sizeof body,
                               "{\"sku\":\"%s\",\"qty\":%lld,"
                               "\"customerId\":\"c%llu\"}",
                               sku, (long long)config->qty, (unsigned long long)n);
    } else if (config->target == LG_TARGET_ORDER) {
        path = "/v1/orders";
        body_length = snprintf(body, sizeof body,
                               "{\"customerId\":\"c%llu\","
                               "\"lines\":[{\"sku\":\"%s\",\"qty\":%lld}]}",
                               (unsigned long long)n, sku, (long long)config->qty);
    } else if (config->target == LG_TARGET_PRODUCT) {
        SVC_ASSERT(strlen(config->sku) + LG_SKU_SUFFIX_BYTES_MAX <= LG_SKU_BYTES_MAX);
        SVC_ASSERT(n < (uint64_t)LG_SKUS_MAX);
        path = "/v1/products";
        body_length = snprintf(body, sizeof body,
                               "{\"sku\":\"%s-%llu\",\"name\":\"%s %llu\","
                               "\"initialOnHand\":%lld}",
                               config->sku, (unsigned long long)n, config->sku,
                               (unsigned long long)n, (long long)config->qty);
    } else {
        SVC_ASSERT(config->target == LG_TARGET_BUY_TICKET);
        path = "/buy_ticket";
        body_length =
            snprintf(body, sizeof body, "{\"customer_id\":\"c%llu\"}", (unsigned long long)n);
    }
    SVC_ASSERT(body_length > 0 && (size_t)body_length < sizeof body);
    int length = snprintf(out, size,
                          "POST %s HTTP/1.1\r\nHost: %s\r\n%s%s"
                          "Content-Type: application/json\r\nIdempotency-Key: %s-%llu\r\n"
                          "Content-Length: %d\r\n\r\n%s",
                          path, config->endpoint.host_header, config->endpoint.auth_header,
                          config->prefer_async ? "Prefer: respond-async\r\n" : "",
                          config->key_prefix, (unsigned long long)n, body_length, body);
    SVC_ASSERT(length > 0 && (size_t)length < size);
    return (size_t)length;
}

size_t lg_request_format_get(const struct lg_endpoint *endpoint, const char *path, char *out,
                             size_t size)
{
    SVC_ASSERT(path[0] == '/');
    int length = snprintf(out, size, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", path,
                          endpoint->host_header, endpoint->auth_header);
    SVC_ASSERT(length > 0 && (size_t)length < size);
    return (size_t)length;
}

/* ---- response parser ----------------------------------------------------------------------- */

void lg_parser_reset(struct lg_parser *p)
{
    SVC_ASSERT(p != NULL);
    p->state = LG_PARSE_HEAD;
    p->status = 0;
    p->close = false;
    p->remaining = 0;
    p->body_length = 0;
    p->body[0] = '\0';
    SVC_ASSERT(p->state == LG_PARSE_HEAD);
}

/* Keeps the first LG_BODY_KEEP_BYTES of the body, NUL-terminated. */
static void lg_parser_keep(struct lg_parser *p, const char *data, size_t length)
{
    SVC_ASSERT(p->body_length <= LG_BODY_KEEP_BYTES);
    size_t room = LG_BODY_KEEP_BYTES - p->body_length;
    size_t take = length < room ? length : room;
    memcpy(p->body + p->body_length, data, take);
    p->body_length += take;
    p->body[p->body_length] = '\0';
    SVC_ASSERT(p->body_length <= LG_BODY_KEEP_BYTES);
}

/* True if the length bytes at text contain token, ignoring case. */
static bool lg_contains_ci(const char *text, size_t length, const char *token)
{
    size_t token_length = strlen(token);
    SVC_ASSERT(token_length > 0);
    for (size_t i = 0; i + token_length <= length; i++) {
        if (strncasecmp(text + i, token, token_length) == 0) {
            return true;
        }
    }
    return false;
}

/* What the headers say about framing. */
struct lg_head {
    int64_t content_length; /* -1 if absent */
    bool chunked;
    int connection; /* 0 unspecified, 1 close, 2 keep-alive */
};

/* Folds one header line (no CRLF) into head. Returns 0 or -EPROTO. */
static int lg_parse_header(const char *line, size_t length, struct lg_head *head)
{
    const char *colon = memchr(line, ':', length);
    if (colon == NULL || colon == line) {
        return -EPROTO;
    }
    size_t name_length = (size_t)(colon - line);
    const char *value = colon + 1;
    size_t value_length = length - name_length - 1;
    while (value_length > 0 && (*value == ' ' || *value == '\t')) {
        value++;
        value_length--;
    }
    if (name_length == 14 && strncasecmp(line, "content-length", 14) == 0) {
        int64_t n = 0;
        size_t i = 0;
        for (; i < value_length && value[i] >= '0' && value[i] <= '9' && n < (1LL << 50); i++) {
            n = n * 10 + (value[i] - '0');
        }
        if (i == 0 || (i < value_length && value[i] != ' ' && value[i] != '\t')) {
            return -EPROTO;
        }
        head->content_length = n;
    } else if (name_length == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
        head->chunked = lg_contains_ci(value, value_length, "chunked");
    } else if (name_length == 10 && strncasecmp(line, "connection", 10) == 0) {
        head->connection = lg_contains_ci(value, value_length, "close")        ? 1
                           : lg_contains_ci(value, value_length, "keep-alive") ? 2
                                                                               : 0;
    }
    SVC_ASSERT(head->content_length >= -1);
    return 0;
}

/* Parses a complete head of head_length bytes (ending in CRLF CRLF) and sets the framing. */
static int lg_parse_head(struct lg_parser *p, const char *data, size_t head_length)
{
    SVC_ASSERT(head_length >= 4);
    if (head_length < 16 || memcmp(data, "HTTP/1.", 7) != 0 || data[8] != ' ' || data[9] < '1' ||
        data[9] > '5' || data[10] < '0' || data[10] > '9' || data[11] < '0' || data[11] > '9') {
        return -EPROTO;
    }
    p->status = (data[9] - '0') * 100 + (data[10] - '0') * 10 + (data[11] - '0');
    struct lg_head head = {.content_length = -1};
    const char *end = data + head_length - 2; /* the final empty line */
    const char *line = memchr(data, '\n', head_length) + 1;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line) + 1);
        SVC_ASSERT(eol != NULL);
        size_t length = (size_t)(eol - line);
        length -= length > 0 && line[length - 1] == '\r' ? 1 : 0;
        if (lg_parse_header(line, length, &head) < 0) {
            return -EPROTO;
        }
        line = eol + 1;
    }
    p->close = head.connection == 1 || (data[7] == '0' && head.connection != 2);
    if (p->status < 200) {
        p->state = LG_PARSE_HEAD; /* an interim 1xx: the real response follows */
    } else if (p->status == 204 || p->status == 304) {
        p->state = LG_PARSE_DONE;
    } else if (head.chunked) {
        p->state = LG_PARSE_CHUNK_SIZE;
    } else if (head.content_length >= 0) {
        p->remaining = (uint64_t)head.content_length;
        p->state = head.content_length > 0 ? LG_PARSE_BODY_LENGTH : LG_PARSE_DONE;
    } else {
        p->state = LG_PARSE_BODY_CLOSE;
        p->close = true;
    }
    SVC_ASSERT(p->status >= 100 && p->status < LG_STATUS_CODES);
    return 0;
}

/* Parses a chunk-size line of length bytes (no CRLF): hex digits, then optional extensions. */
static int lg_parse_chunk_size(struct lg_parser *p, const char *line, size_t length)
{
    uint64_t size = 0;
    size_t i = 0;
    for (; i < length && i < 15; i++) {
        char c = line[i];
        int digit = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
        if (digit < 0) {
            break;
        }
        size = size * 16 + (uint64_t)digit;
    }
    if (i == 0 || (i < length && line[i] != ';' && line[i] != ' ')) {
        return -EPROTO;
    }
    p->remaining = size;
    p->state = size == 0 ? LG_PARSE_TRAILER : LG_PARSE_CHUNK_DATA;
    SVC_ASSERT(p->state != LG_PARSE_CHUNK_DATA || p->remaining > 0);
    return 0;
}

/* Line-oriented states: a head, a chunk-size line, a trailer line. Needs the whole line. */
static int lg_parse_line_step(struct lg_parser *p, const char *data, size_t length, size_t *used)
{
    SVC_ASSERT(*used == 0);
    if (p->state == LG_PARSE_HEAD) {
        const char *end = memmem(data, length, "\r\n\r\n", 4);
        if (end == NULL) {
            return 0;
        }
        *used = (size_t)(end - data) + 4;
        return lg_parse_head(p, data, *used);
    }
    const char *eol = memmem(data, length, "\r\n", 2);
    if (eol == NULL) {
        return length > LG_BODY_KEEP_BYTES ? -EPROTO : 0; /* a sane line is short */
    }
    *used = (size_t)(eol - data) + 2;
    if (p->state == LG_PARSE_CHUNK_SIZE) {
        return lg_parse_chunk_size(p, data, (size_t)(eol - data));
    }
    SVC_ASSERT(p->state == LG_PARSE_TRAILER);
    if (eol == data) {
        p->state = LG_PARSE_DONE;
    }
    return 0;
}

/* One step in the current state; sets *used to the bytes it consumed. */
static int lg_parse_step(struct lg_parser *p, const char *data, size_t length, size_t *used)
{
    *used = 0;
    switch (p->state) {
    case LG_PARSE_HEAD:
    case LG_PARSE_CHUNK_SIZE:
    case LG_PARSE_TRAILER: return lg_parse_line_step(p, data, length, used);
    case LG_PARSE_BODY_LENGTH:
    case LG_PARSE_CHUNK_DATA: {
        size_t take = p->remaining < length ? (size_t)p->remaining : length;
        lg_parser_keep(p, data, take);
        p->remaining -= take;
        *used = take;
        if (p->remaining == 0) {
            p->state = p->state == LG_PARSE_BODY_LENGTH ? LG_PARSE_DONE : LG_PARSE_CHUNK_CRLF;
        }
        return 0;
    }
    case LG_PARSE_CHUNK_CRLF:
        if (length < 2) {
            return 0;
        }
        *used = 2;
        p->state = LG_PARSE_CHUNK_SIZE;
        return data[0] == '\r' && data[1] == '\n' ? 0 : -EPROTO;
    case LG_PARSE_BODY_CLOSE:
        lg_parser_keep(p, data, length);
        *used = length;
        return 0;
    case LG_PARSE_DONE: break;
    }
    SVC_UNREACHABLE();
}

int lg_parser_feed(struct lg_parser *p, const char *data, size_t length, size_t *consumed_out)
{
    SVC_ASSERT(p->state != LG_PARSE_DONE);
    size_t consumed = 0;
    int rc = 0;
    while (p->state != LG_PARSE_DONE) {
        size_t used = 0;
        enum lg_parse_state before = p->state;
        rc = lg_parse_step(p, data + consumed, length - consumed, &used);
        consumed += used;
        if (rc < 0 || (used == 0 && p->state == before)) {
            break;
        }
    }
    SVC_ASSERT(consumed <= length);
    *consumed_out = consumed;
    return rc < 0 ? rc : p->state == LG_PARSE_DONE ? 1 : 0;
}

int lg_parser_eof(struct lg_parser *p)
{
    SVC_ASSERT(p != NULL);
    if (p->state != LG_PARSE_BODY_CLOSE) {
        return 0;
    }
    p->state = LG_PARSE_DONE;
    SVC_ASSERT(p->close);
    return 1;
}

/* ---- key outcomes -------------------------------------------------------------------------- */

/* The N of "orderId":"ord_N" in body, or 0. */
static int64_t lg_order_id(const char *body, size_t length)
{
    static const char marker[] = "\"orderId\":\"ord_";
    const char *at = memmem(body, length, marker, sizeof marker - 1);
    if (at == NULL) {
        return 0;
    }
    const char *digit = at + sizeof marker - 1;
    const char *end = body + length;
    int64_t id = 0;
    for (; digit < end && *digit >= '0' && *digit <= '9' && id < (1LL << 58); digit++) {
        id = id * 10 + (*digit - '0');
    }
    SVC_ASSERT(id >= 0);
    return digit < end && *digit == '"' ? id : 0;
}

void lg_key_answer(int64_t *slot, int status, const char *body, size_t body_length)
{
    SVC_ASSERT(*slot != LG_KEY_NOT_SENT);
    SVC_ASSERT(status >= 100 && status < LG_STATUS_CODES);
    int64_t value = LG_KEY_NOT_2XX;
    if (status / 100 == 2) {
        int64_t id = lg_order_id(body, body_length);
        value = id > 0 ? id : LG_KEY_2XX_NO_ORDER;
    }
    int64_t old = *slot;
    if (old == LG_KEY_UNANSWERED || (old == LG_KEY_NOT_2XX && value != LG_KEY_NOT_2XX)) {
        *slot = value;
    } else if (value != LG_KEY_NOT_2XX && value != old) {
        *slot = LG_KEY_CONFLICT;
    }
}

/* ---- engine: threads and connections ------------------------------------------------------- */

enum lg_conn_state {
    LG_CONN_CLOSED,     /* not connected and nothing to do: the run has ended */
    LG_CONN_WAITING,    /* not connected; reconnects at deadline_ns */
    LG_CONN_CONNECTING, /* connect in progress until deadline_ns */
    LG_CONN_READY,      /* connected, no request */
    LG_CONN_BUSY,       /* request being sent or answer awaited until deadline_ns */
};

enum lg_fail { LG_FAIL_TIMEOUT, LG_FAIL_ERROR, LG_FAIL_CONNECT };

/* The request a connection carries, across its attempts. */
struct lg_request {
    uint64_t local;      /* the thread's request number; key n = local * threads + thread */
    int64_t intended_ns; /* latency runs from here: the schedule (open) or first send (closed) */
    uint32_t attempt;    /* 0 for the first send */
    bool measured;       /* intended inside the measured window */
    bool active;
};

struct lg_conn {
    int fd; /* -1 unless CONNECTING, READY or BUSY */
    enum lg_conn_state state;
    bool in_free;        /* on the thread's free stack (open loop) */
    bool want_out;       /* EPOLLOUT is registered */
    int64_t deadline_ns; /* see enum lg_conn_state */
    struct lg_request request;
    size_t out_length; /* bytes of out to send */
    size_t out_sent;
    size_t in_length; /* unparsed bytes in in */
    struct lg_parser parser;
    char out[LG_REQUEST_BYTES_MAX]; /* the request; kept for retries */
    char in[LG_READ_BUFFER_BYTES];
};

/* Live counters that lg_run_progress reads while the thread writes them. */
enum lg_live {
    LG_LIVE_COMPLETED,
    LG_LIVE_2XX,
    LG_LIVE_4XX,
    LG_LIVE_5XX,
    LG_LIVE_ERRORS,
    LG_LIVE_COUNT
};

struct lg_thread {
    struct lg_run *run;
    const struct lg_config *config; /* the run's copy */
    uint32_t index;
    pthread_t handle;
    int epoll_fd;
    uint32_t conn_count;
    uint32_t free_count;    /* entries of free_stack */
    uint32_t waiting_count; /* connections in LG_CONN_WAITING */
    uint32_t active_count;  /* connections carrying a request */
    struct lg_conn *conns;  /* owned */
    uint32_t *free_stack;   /* owned; READY connections (open loop) */
    int64_t *keys;          /* this thread's slice of run->keys, or NULL */
    uint64_t next_local;    /* the next request number to send */
    uint64_t local_max;     /* this thread's share of requests_max (UINT64_MAX: unbounded) */
    int64_t measure_ns;     /* the measured window is [measure_ns, end_ns) */
    int64_t end_ns;         /* moved earlier by lg_run_stop */
    int64_t drain_end_ns;   /* give up on answers after this */
    int64_t sweep_ns;       /* period of deadline scans */
    int64_t next_sweep_ns;
    int64_t next_reconnect_ns; /* earliest deadline of a WAITING connection */
    double request_ns;         /* open loop: ns between successive run-wide requests */
    bool ended;
    bool keys_exhausted;
    struct lg_hist latency; /* measured requests */
    struct lg_counts counts;
    _Atomic uint64_t live[LG_LIVE_COUNT];
    _Atomic uint64_t live_hist[LG_HIST_BUCKETS];
    atomic_bool finished;
};

/* The only writer of a live counter is its thread, so a relaxed load and store suffice. */
static void lg_live_add(_Atomic uint64_t *counter, uint64_t n)
{
    SVC_ASSERT(n > 0);
    uint64_t value = atomic_load_explicit(counter, memory_order_relaxed);
    atomic_store_explicit(counter, value + n, memory_order_relaxed);
}

/* Open loop: when the thread's request number local is due. */
static int64_t lg_open_intended_ns(const struct lg_thread *t, uint64_t local)
{
    SVC_ASSERT(t->config->mode == LG_MODE_OPEN);
    double n = (double)local * t->config->threads + t->index;
    SVC_ASSERT(t->request_ns > 0.0);
    return t->run->start_ns + (int64_t)(n * t->request_ns);
}

/* Open loop: how many of the thread's requests are due before time at. */
static uint64_t lg_open_count_before(const struct lg_thread *t, int64_t at)
{
    double span = (double)(at - t->run->start_ns) / t->request_ns - t->index;
    uint64_t count = span <= 0.0 ? 0 : (uint64_t)(span / t->config->threads);
    while (count > 0 && lg_open_intended_ns(t, count - 1) >= at) {
        count--;
    }
    while (lg_open_intended_ns(t, count) < at) {
        count++;
    }
    SVC_ASSERT(count == 0 || lg_open_intended_ns(t, count - 1) < at);
    return count;
}

static uint32_t lg_conn_index(const struct lg_thread *t, const struct lg_conn *c)
{
    SVC_ASSERT(c >= t->conns && c < t->conns + t->conn_count);
    return (uint32_t)(c - t->conns);
}

/* Registers or drops interest in writability (connecting, or a send that did not fit). */
static void lg_conn_watch_out(struct lg_thread *t, struct lg_conn *c, bool on)
{
    SVC_ASSERT(c->fd >= 0);
    if (c->want_out == on) {
        return;
    }
    struct epoll_event event = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u),
                                .data.u32 = lg_conn_index(t, c)};
    int rc = epoll_ctl(t->epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
    SVC_ASSERT(rc == 0);
    c->want_out = on;
}

static void lg_conn_close(struct lg_thread *t, struct lg_conn *c)
{
    SVC_ASSERT(c->state != LG_CONN_WAITING);
    if (c->fd >= 0) {
        close(c->fd); /* also leaves the epoll set */
        c->fd = -1;
    }
    if (c->in_free) {
        for (uint32_t i = 0; i < t->free_count; i++) {
            if (t->free_stack[i] == lg_conn_index(t, c)) {
                t->free_stack[i] = t->free_stack[--t->free_count];
                break;
            }
        }
        c->in_free = false;
    }
    c->state = LG_CONN_CLOSED;
    SVC_ASSERT(c->fd == -1);
}

/* Parks c until at, when the loop reconnects it. */
static void lg_conn_wait(struct lg_thread *t, struct lg_conn *c, int64_t at)
{
    SVC_ASSERT(c->state == LG_CONN_CLOSED);
    SVC_ASSERT(c->fd == -1);
    c->state = LG_CONN_WAITING;
    c->deadline_ns = at;
    t->waiting_count++;
    t->next_reconnect_ns = t->waiting_count == 1 ? at : lg_min(at, t->next_reconnect_ns);
}

/* An attempt failed: count it, close, keep the request for a retry or drop it, then park the
 * connection. Never sends, so failures cannot recurse. */
static void lg_conn_fail(struct lg_thread *t, struct lg_conn *c, int64_t now, enum lg_fail kind)
{
    SVC_ASSERT(c->state == LG_CONN_CONNECTING || c->state == LG_CONN_BUSY ||
               c->state == LG_CONN_CLOSED);
    struct lg_request *r = &c->request;
    bool measured = r->active ? r->measured : true;
    lg_live_add(&t->live[LG_LIVE_ERRORS], 1);
    if (measured) {
        t->counts.timeouts += kind == LG_FAIL_TIMEOUT ? 1 : 0;
        t->counts.errors += kind == LG_FAIL_TIMEOUT ? 0 : 1;
    }
    lg_conn_close(t, c);
    if (r->active && t->config->retry && r->attempt < LG_RETRIES_MAX) {
        r->attempt++;
        t->counts.retries += r->measured ? 1 : 0;
    } else if (r->active) {
        r->active = false;
        SVC_ASSERT(t->active_count > 0);
        t->active_count--;
    }
    lg_conn_wait(t, c, now + (kind == LG_FAIL_CONNECT ? LG_RECONNECT_DELAY_NS : 0));
}

/* Starts a non-blocking connect; the epoll loop reports its end (lg_conn_on_connect). */
static void lg_conn_connect(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->state == LG_CONN_CLOSED);
    SVC_ASSERT(c->fd == -1);
    const struct lg_endpoint *e = &t->config->endpoint;
    int fd = socket(e->address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lg_conn_fail(t, c, now, LG_FAIL_CONNECT);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)&e->address, e->address_length) < 0 &&
        errno != EINPROGRESS) {
        close(fd);
        lg_conn_fail(t, c, now, LG_FAIL_CONNECT);
        return;
    }
    struct epoll_event event = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP,
                                .data.u32 = lg_conn_index(t, c)};
    int rc = epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, fd, &event);
    SVC_ASSERT(rc == 0);
    c->fd = fd;
    c->want_out = true;
    c->state = LG_CONN_CONNECTING;
    c->deadline_ns = now + t->config->timeout_ns;
}

/* Sends what is left of c->out; waits for writability if the socket is full. */
static void lg_conn_flush(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->state == LG_CONN_BUSY);
    while (c->out_sent < c->out_length) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_length - c->out_sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            lg_conn_watch_out(t, c, true);
            return;
        } else {
            lg_conn_fail(t, c, now, LG_FAIL_ERROR);
            return;
        }
    }
    SVC_ASSERT(c->out_sent == c->out_length);
    if (c->want_out) {
        lg_conn_watch_out(t, c, false);
    }
}

/* Sends (or resends) the request in c->out on connected c. */
static void lg_conn_send(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->request.active);
    SVC_ASSERT(c->out_length > 0 && c->fd >= 0);
    c->state = LG_CONN_BUSY;
    c->out_sent = 0;
    c->in_length = 0;
    lg_parser_reset(&c->parser);
    c->deadline_ns = now + t->config->timeout_ns;
    lg_conn_flush(t, c, now);
}

/* True if the thread may start another request (its share of requests_max not all sent,
 * and keys left to remember its answer). */
static bool lg_thread_may_send(struct lg_thread *t)
{
    SVC_ASSERT(!t->ended);
    if (t->next_local >= t->local_max) {
        return false;
    }
    if (t->keys != NULL && t->next_local >= t->run->keys_per_thread) {
        t->keys_exhausted = true;
        return false;
    }
    return true;
}

/* Starts the thread's next request on ready c, intended (for latency) at intended_ns. */
static void lg_conn_send_new(struct lg_thread *t, struct lg_conn *c, int64_t intended_ns,
                             int64_t now)
{
    SVC_ASSERT(c->state == LG_CONN_READY && !c->in_free);
    SVC_ASSERT(!c->request.active);
    struct lg_request *r = &c->request;
    *r = (struct lg_request){.local = t->next_local++,
                             .intended_ns = intended_ns,
                             .measured = intended_ns >= t->measure_ns,
                             .active = true};
    t->active_count++;
    t->counts.requests += r->measured ? 1 : 0;
    uint64_t n = r->local * t->config->threads + t->index;
    c->out_length = lg_request_format(t->config, n, c->out, sizeof c->out);
    lg_conn_send(t, c, now);
}

/* c has just become free: closed loop sends the next request, open loop sends a due one or
 * puts c on the free stack. */
static void lg_conn_ready(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->fd >= 0 && !c->request.active);
    c->state = LG_CONN_READY;
    if (t->ended || !lg_thread_may_send(t)) {
        return;
    }
    if (t->config->mode == LG_MODE_CLOSED) {
        lg_conn_send_new(t, c, now, now);
        return;
    }
    int64_t intended = lg_open_intended_ns(t, t->next_local);
    if (intended <= now && intended < t->end_ns) {
        lg_conn_send_new(t, c, intended, now);
        return;
    }
    SVC_ASSERT(!c->in_free && t->free_count < t->conn_count);
    t->free_stack[t->free_count++] = lg_conn_index(t, c);
    c->in_free = true;
}

/* The connect of c has finished, one way or the other. */
static void lg_conn_on_connect(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->state == LG_CONN_CONNECTING);
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0) {
        error = errno;
    }
    if (error != 0) {
        lg_conn_fail(t, c, now, LG_FAIL_CONNECT);
        return;
    }
    lg_conn_watch_out(t, c, false);
    t->counts.connects++;
    if (c->request.active) {
        lg_conn_send(t, c, now); /* a retry, on this fresh connection, with the same bytes */
    } else {
        lg_conn_ready(t, c, now);
    }
    SVC_ASSERT(c->state != LG_CONN_CONNECTING);
}

/* Records the answer c has fully received and frees c for the next request. */
static void lg_conn_complete(struct lg_thread *t, struct lg_conn *c)
{
    SVC_ASSERT(c->parser.state == LG_PARSE_DONE);
    SVC_ASSERT(c->request.active && t->active_count > 0);
    int64_t now = lg_now_ns();
    struct lg_request *r = &c->request;
    int status = c->parser.status;
    int64_t latency_ns = now - r->intended_ns;
    lg_live_add(&t->live[LG_LIVE_COMPLETED], 1);
    if (status / 100 >= 2 && status / 100 <= 5 && status / 100 != 3) {
        lg_live_add(&t->live[status / 100 == 2   ? LG_LIVE_2XX
                             : status / 100 == 4 ? LG_LIVE_4XX
                                                 : LG_LIVE_5XX],
                    1);
    }
    lg_live_add(&t->live_hist[lg_hist_bucket(latency_ns)], 1);
    if (r->measured) {
        lg_hist_record(&t->latency, latency_ns);
        t->counts.completed++;
        t->counts.status[status]++;
    }
    if (t->keys != NULL) {
        lg_key_answer(&t->keys[r->local], status, c->parser.body, c->parser.body_length);
    }
    r->active = false;
    t->active_count--;
    if (c->parser.close || c->in_length > 0) {
        t->counts.reconnects++;
        lg_conn_close(t, c);
        if (!t->ended) {
            lg_conn_connect(t, c, now);
        }
        return;
    }
    lg_conn_ready(t, c, now);
}

/* Reads what the socket has for busy c and completes c when its answer is whole. */
static void lg_conn_read(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->fd >= 0 && c->request.active);
    for (;;) {
        SVC_ASSERT(c->state == LG_CONN_BUSY);
        size_t room = sizeof c->in - c->in_length;
        ssize_t n = room == 0 ? -1 : recv(c->fd, c->in + c->in_length, room, 0);
        if (n < 0 && room > 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && room > 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (n < 0 || (n == 0 && lg_parser_eof(&c->parser) == 0)) {
            lg_conn_fail(t, c, now, LG_FAIL_ERROR); /* reset, closed early, or head too big */
            return;
        }
        c->in_length += (size_t)n;
        SVC_ASSERT(c->in_length <= sizeof c->in);
        size_t used = 0;
        int rc = n == 0 ? 1 : lg_parser_feed(&c->parser, c->in, c->in_length, &used);
        memmove(c->in, c->in + used, c->in_length - used);
        c->in_length -= used;
        if (rc < 0) {
            lg_conn_fail(t, c, now, LG_FAIL_ERROR);
            return;
        }
        if (rc == 1) {
            lg_conn_complete(t, c);
            return;
        }
        if ((size_t)n < room) {
            return; /* level-triggered: epoll reports the rest when it comes */
        }
    }
}

/* A ready connection became readable: the server closed it (or sent bytes nobody asked for). */
static void lg_conn_idle_event(struct lg_thread *t, struct lg_conn *c, int64_t now)
{
    SVC_ASSERT(c->state == LG_CONN_READY);
    SVC_ASSERT(!c->request.active);
    char byte;
    ssize_t n = recv(c->fd, &byte, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return;
    }
    t->counts.reconnects++;
    lg_conn_close(t, c);
    if (!t->ended) {
        lg_conn_connect(t, c, now);
    }
}

static void lg_conn_event(struct lg_thread *t, struct lg_conn *c, uint32_t events, int64_t now)
{
    const uint32_t readable = EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP;
    SVC_ASSERT(events != 0);
    switch (c->state) {
    case LG_CONN_CONNECTING: lg_conn_on_connect(t, c, now); break;
    case LG_CONN_BUSY:
        if ((events & EPOLLOUT) && c->out_sent < c->out_length) {
            lg_conn_flush(t, c, now);
        }
        if (c->state == LG_CONN_BUSY && (events & readable)) {
            lg_conn_read(t, c, now);
        }
        break;
    case LG_CONN_READY:
        if (events & readable) {
            lg_conn_idle_event(t, c, now);
        }
        break;
    case LG_CONN_CLOSED:
    case LG_CONN_WAITING: break; /* an event of a socket closed earlier in this batch */
    }
    SVC_ASSERT(c->state != LG_CONN_CONNECTING || c->fd >= 0);
}

/* Reconnects the WAITING connections whose time has come. */
static void lg_thread_reconnect_due(struct lg_thread *t, int64_t now)
{
    SVC_ASSERT(t->waiting_count > 0);
    t->waiting_count = 0;
    for (uint32_t i = 0; i < t->conn_count; i++) {
        struct lg_conn *c = &t->conns[i];
        if (c->state != LG_CONN_WAITING) {
            continue;
        }
        if (c->deadline_ns > now) {
            t->next_reconnect_ns = t->waiting_count++ == 0
                                       ? c->deadline_ns
                                       : lg_min(t->next_reconnect_ns, c->deadline_ns);
            continue;
        }
        c->state = LG_CONN_CLOSED;
        if (!t->ended || c->request.active) {
            lg_conn_connect(t, c, now); /* may put c back in WAITING, counted there */
        }
    }
    SVC_ASSERT(t->waiting_count <= t->conn_count);
}

/* Fails the attempts and connects whose deadline has passed. */
static void lg_thread_sweep(struct lg_thread *t, int64_t now)
{
    SVC_ASSERT(t->sweep_ns >= LG_SWEEP_NS_MIN);
    for (uint32_t i = 0; i < t->conn_count; i++) {
        struct lg_conn *c = &t->conns[i];
        if ((c->state == LG_CONN_BUSY || c->state == LG_CONN_CONNECTING) && now >= c->deadline_ns) {
            lg_conn_fail(t, c, now, c->state == LG_CONN_BUSY ? LG_FAIL_TIMEOUT : LG_FAIL_CONNECT);
        }
    }
    t->next_sweep_ns = now + t->sweep_ns;
    SVC_ASSERT(t->next_sweep_ns > now);
}

/* Open loop: sends every due request that has a free connection. */
static void lg_thread_issue_due(struct lg_thread *t, int64_t now)
{
    SVC_ASSERT(t->config->mode == LG_MODE_OPEN);
    while (t->free_count > 0 && !t->ended && lg_thread_may_send(t)) {
        int64_t intended = lg_open_intended_ns(t, t->next_local);
        if (intended > now || intended >= t->end_ns) {
            break;
        }
        struct lg_conn *c = &t->conns[t->free_stack[--t->free_count]];
        SVC_ASSERT(c->in_free && c->state == LG_CONN_READY);
        c->in_free = false;
        lg_conn_send_new(t, c, intended, now);
    }
}

/* The window is over (or stopped): no new requests; open loop counts what it never sent. */
static void lg_thread_end(struct lg_thread *t, int64_t now)
{
    SVC_ASSERT(!t->ended);
    t->end_ns = lg_min(t->end_ns, now);
    if (t->config->mode == LG_MODE_OPEN && t->end_ns > t->measure_ns) {
        uint64_t due = lg_open_count_before(t, t->end_ns);
        due = due < t->local_max ? due : t->local_max;
        uint64_t from = lg_open_count_before(t, t->measure_ns);
        from = t->next_local > from ? t->next_local : from;
        t->counts.unsent = due > from ? due - from : 0;
        t->counts.requests += t->counts.unsent;
    }
    int64_t attempt_ns = t->config->timeout_ns + LG_RECONNECT_DELAY_NS;
    t->drain_end_ns = now + (LG_RETRIES_MAX + 1) * attempt_ns + LG_NS_PER_S;
    t->ended = true;
    SVC_ASSERT(t->drain_end_ns > now);
}

/* Gives up on answers still missing at the end of the drain: they count as timeouts. */
static void lg_thread_abandon(struct lg_thread *t)
{
    SVC_ASSERT(t->ended);
    for (uint32_t i = 0; i < t->conn_count; i++) {
        struct lg_request *r = &t->conns[i].request;
        if (r->active) {
            t->counts.timeouts += r->measured ? 1 : 0;
            r->active = false;
            t->active_count--;
        }
    }
    SVC_ASSERT(t->active_count == 0);
}

/* Housekeeping between waits. Returns true when the thread is done. */
static bool lg_thread_tick(struct lg_thread *t, int64_t now)
{
    bool all_answered = t->next_local >= t->local_max && t->active_count == 0;
    if (!t->ended && (now >= t->end_ns || all_answered || atomic_load(&t->run->stop))) {
        lg_thread_end(t, now);
    }
    if (t->ended && t->active_count == 0) {
        return true;
    }
    if (t->ended && now >= t->drain_end_ns) {
        lg_thread_abandon(t);
        return true;
    }
    if (t->waiting_count > 0 && now >= t->next_reconnect_ns) {
        lg_thread_reconnect_due(t, now);
    }
    if (now >= t->next_sweep_ns) {
        lg_thread_sweep(t, now);
    }
    if (t->config->mode == LG_MODE_OPEN) {
        lg_thread_issue_due(t, now);
    }
    SVC_ASSERT(t->active_count <= t->conn_count);
    return false;
}

/* When the loop must wake up next even without socket events. */
static int64_t lg_thread_wake_ns(const struct lg_thread *t)
{
    int64_t wake = t->next_sweep_ns;
    wake = t->ended ? lg_min(wake, t->drain_end_ns) : lg_min(wake, t->end_ns);
    if (t->waiting_count > 0) {
        wake = lg_min(wake, t->next_reconnect_ns);
    }
    if (t->config->mode == LG_MODE_OPEN && !t->ended && t->free_count > 0 && !t->keys_exhausted &&
        t->next_local < t->local_max) {
        wake = lg_min(wake, lg_open_intended_ns(t, t->next_local));
    }
    SVC_ASSERT(wake > 0);
    return wake;
}

/* epoll_pwait2 (ns timeouts, Linux 5.11) with a fallback to epoll_wait (ms, rounded up). */
static int lg_epoll_wait(int epoll_fd, struct epoll_event *events, int64_t timeout_ns)
{
    static atomic_bool no_pwait2;
    timeout_ns = timeout_ns < 0 ? 0 : timeout_ns;
    int n;
    if (!atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
        struct timespec timeout = {.tv_sec = timeout_ns / LG_NS_PER_S,
                                   .tv_nsec = timeout_ns % LG_NS_PER_S};
        n = epoll_pwait2(epoll_fd, events, LG_EPOLL_EVENTS_MAX, &timeout, NULL);
        if (n >= 0 || errno != ENOSYS) {
            SVC_ASSERT(n >= 0 || errno == EINTR);
            return n < 0 ? 0 : n;
        }
        atomic_store(&no_pwait2, true);
    }
    n = epoll_wait(epoll_fd, events, LG_EPOLL_EVENTS_MAX,
                   (int)lg_min((timeout_ns + 999999) / 1000000, 1000));
    SVC_ASSERT(n >= 0 || errno == EINTR);
    return n < 0 ? 0 : n;
}

static void *lg_thread_main(void *arg)
{
    struct lg_thread *t = arg;
    SVC_ASSERT(t->conn_count > 0);
    svc_thread_name("loadgen", (int)t->index);
    int64_t now = lg_now_ns();
    for (uint32_t i = 0; i < t->conn_count; i++) {
        lg_conn_connect(t, &t->conns[i], now);
    }
    struct epoll_event events[LG_EPOLL_EVENTS_MAX];
    for (;;) {
        now = lg_now_ns();
        if (lg_thread_tick(t, now)) {
            break;
        }
        int count = lg_epoll_wait(t->epoll_fd, events, lg_thread_wake_ns(t) - now);
        now = lg_now_ns();
        for (int i = 0; i < count; i++) {
            SVC_ASSERT(events[i].data.u32 < t->conn_count);
            lg_conn_event(t, &t->conns[events[i].data.u32], events[i].events, now);
        }
    }
    for (uint32_t i = 0; i < t->conn_count; i++) {
        if (t->conns[i].fd >= 0) {
            close(t->conns[i].fd);
            t->conns[i].fd = -1;
        }
    }
    SVC_ASSERT(t->active_count == 0);
    SVC_ASSERT(t->ended);
    atomic_store(&t->finished, true);
    return NULL;
}

/* ---- runs ---------------------------------------------------------------------------------- */

static void lg_thread_free(struct lg_thread *t)
{
    if (t == NULL) {
        return;
    }
    SVC_ASSERT(t->active_count == 0);
    if (t->epoll_fd >= 0) {
        close(t->epoll_fd);
    }
    free(t->conns);
    free(t->free_stack);
    free(t);
}

/* Allocates thread index of run with its share of the connections; NULL when out of memory
 * or descriptors (errno says which). */
static struct lg_thread *lg_thread_new(struct lg_run *run, uint32_t index)
{
    const struct lg_config *config = &run->config;
    SVC_ASSERT(index < config->threads);
    struct lg_thread *t = aligned_alloc(64, (sizeof *t + 63) / 64 * 64);
    if (t == NULL) {
        return NULL;
    }
    memset(t, 0, sizeof *t);
    t->run = run;
    t->config = config;
    t->index = index;
    t->conn_count = config->connections / config->threads +
                    (index < config->connections % config->threads ? 1 : 0);
    t->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    t->conns = calloc(t->conn_count, sizeof *t->conns);
    t->free_stack = calloc(t->conn_count, sizeof *t->free_stack);
    if (t->epoll_fd < 0 || t->conns == NULL || t->free_stack == NULL) {
        int error = t->epoll_fd < 0 ? errno : ENOMEM;
        lg_thread_free(t);
        errno = error;
        return NULL;
    }
    for (uint32_t i = 0; i < t->conn_count; i++) {
        t->conns[i].fd = -1;
        t->conns[i].state = LG_CONN_CLOSED;
    }
    t->keys = run->keys == NULL ? NULL : run->keys + (uint64_t)index * run->keys_per_thread;
    /* Key n = local * threads + index: the thread's share is the n below requests_max. */
    uint64_t max = config->requests_max;
    t->local_max = max == 0       ? UINT64_MAX
                   : index >= max ? 0
                                  : (max - index - 1) / config->threads + 1;
    t->measure_ns = run->start_ns + config->warmup_ns;
    t->end_ns = t->measure_ns + config->duration_ns;
    t->drain_end_ns = INT64_MAX;
    int64_t sweep = config->timeout_ns / 4;
    t->sweep_ns = sweep < LG_SWEEP_NS_MIN ? LG_SWEEP_NS_MIN : lg_min(sweep, LG_SWEEP_NS_MAX);
    t->next_sweep_ns = run->start_ns + t->sweep_ns;
    t->request_ns = config->mode == LG_MODE_OPEN ? (double)LG_NS_PER_S / config->rate_rps : 0;
    SVC_ASSERT(t->conn_count > 0);
    return t;
}

static void lg_config_check(const struct lg_config *c)
{
    SVC_ASSERT(c->threads >= 1 && c->threads <= LG_THREADS_MAX);
    SVC_ASSERT(c->connections >= c->threads && c->connections <= LG_CONNECTIONS_MAX);
    SVC_ASSERT(c->mode == LG_MODE_CLOSED || c->rate_rps > 0.0);
    SVC_ASSERT(c->duration_ns > 0 && c->warmup_ns >= 0 && c->timeout_ns > 0);
    SVC_ASSERT(c->qty >= 1);
    SVC_ASSERT(c->skus <= (uint64_t)LG_SKUS_MAX);
    SVC_ASSERT(c->skus <= 1 || strlen(c->sku) + LG_SKU_SUFFIX_BYTES_MAX <= LG_SKU_BYTES_MAX);
    SVC_ASSERT(c->target != LG_TARGET_PRODUCT ||
               (c->requests_max >= 1 && c->requests_max <= (uint64_t)LG_SKUS_MAX &&
                strlen(c->sku) + LG_SKU_SUFFIX_BYTES_MAX <= LG_SKU_BYTES_MAX));
    SVC_ASSERT(c->target != LG_TARGET_GET || c->path[0] == '/');
    SVC_ASSERT(c->endpoint.address_length > 0);
}

/* Joins the threads that were started. */
static void lg_run_join(struct lg_run *run)
{
    SVC_ASSERT(run->started <= run->config.threads);
    SVC_ASSERT(!run->joined);
    for (uint32_t i = 0; i < run->started; i++) {
        pthread_join(run->threads[i]->handle, NULL);
    }
    run->joined = true;
}

int lg_run_start(struct lg_run *run, const struct lg_config *config)
{
    lg_config_check(config);
    memset(run, 0, sizeof *run);
    run->config = *config;
    atomic_init(&run->stop, false);
    run->threads = calloc(config->threads, sizeof *run->threads);
    if (config->record_keys) {
        run->keys = calloc((size_t)LG_KEYS_MAX, sizeof *run->keys); /* pages touched lazily */
        run->keys_per_thread = (uint64_t)LG_KEYS_MAX / config->threads;
    }
    if (run->threads == NULL || (config->record_keys && run->keys == NULL)) {
        lg_run_deinit(run);
        return -ENOMEM;
    }
    run->start_ns = lg_now_ns();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    run->start_wall_ns = (int64_t)wall.tv_sec * 1000000000 + wall.tv_nsec;
    for (uint32_t i = 0; i < config->threads; i++) {
        if ((run->threads[i] = lg_thread_new(run, i)) == NULL) {
            int error = errno;
            lg_run_deinit(run);
            return -error;
        }
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    while (run->started < config->threads && rc == 0) {
        struct lg_thread *t = run->threads[run->started];
        rc = pthread_create(&t->handle, NULL, lg_thread_main, t);
        run->started += rc == 0 ? 1 : 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        lg_run_stop(run);
        lg_run_join(run);
        lg_run_deinit(run);
        return -rc;
    }
    SVC_ASSERT(run->started == config->threads);
    return 0;
}

void lg_run_stop(struct lg_run *run)
{
    SVC_ASSERT(run != NULL);
    atomic_store(&run->stop, true);
}

bool lg_run_finished(const struct lg_run *run)
{
    SVC_ASSERT(run->threads != NULL);
    for (uint32_t i = 0; i < run->config.threads; i++) {
        if (!atomic_load(&run->threads[i]->finished)) {
            return false;
        }
    }
    return true;
}

void lg_run_progress(const struct lg_run *run, struct lg_progress *out)
{
    SVC_ASSERT(run->threads != NULL);
    memset(out, 0, sizeof *out);
    int64_t elapsed = lg_now_ns() - run->start_ns;
    out->elapsed_ns = elapsed;
    out->warmup = elapsed < run->config.warmup_ns;
    out->draining =
        atomic_load(&run->stop) || elapsed >= run->config.warmup_ns + run->config.duration_ns;
    for (uint32_t i = 0; i < run->config.threads; i++) {
        struct lg_thread *t = run->threads[i];
        out->completed += atomic_load_explicit(&t->live[LG_LIVE_COMPLETED], memory_order_relaxed);
        out->class_2xx += atomic_load_explicit(&t->live[LG_LIVE_2XX], memory_order_relaxed);
        out->class_4xx += atomic_load_explicit(&t->live[LG_LIVE_4XX], memory_order_relaxed);
        out->class_5xx += atomic_load_explicit(&t->live[LG_LIVE_5XX], memory_order_relaxed);
        out->errors += atomic_load_explicit(&t->live[LG_LIVE_ERRORS], memory_order_relaxed);
        for (uint32_t b = 0; b < LG_HIST_BUCKETS; b++) {
            uint64_t n = atomic_load_explicit(&t->live_hist[b], memory_order_relaxed);
            out->latency.counts[b] += n;
            out->latency.count += n;
        }
    }
    SVC_ASSERT(out->latency.max_ns == 0);
}

static void lg_counts_merge(struct lg_counts *into, const struct lg_counts *from)
{
    SVC_ASSERT(from->completed <= from->requests);
    uint64_t completed_before = into->completed;
    into->requests += from->requests;
    into->completed += from->completed;
    into->timeouts += from->timeouts;
    into->retries += from->retries;
    into->errors += from->errors;
    into->unsent += from->unsent;
    into->connects += from->connects;
    into->reconnects += from->reconnects;
    for (uint32_t i = 0; i < LG_STATUS_CODES; i++) {
        into->status[i] += from->status[i];
    }
    SVC_ASSERT(into->completed >= completed_before);
}

void lg_run_wait(struct lg_run *run, struct lg_result *out)
{
    SVC_ASSERT(run->started == run->config.threads);
    lg_run_join(run);
    memset(out, 0, sizeof *out);
    out->start_wall_ns = run->start_wall_ns;
    for (uint32_t i = 0; i < run->config.threads; i++) {
        const struct lg_thread *t = run->threads[i];
        SVC_ASSERT(atomic_load(&t->finished));
        lg_hist_merge(&out->latency, &t->latency);
        lg_counts_merge(&out->counts, &t->counts);
        int64_t measured = t->end_ns - t->measure_ns;
        out->measured_ns = measured > out->measured_ns ? measured : out->measured_ns;
        out->keys_exhausted = out->keys_exhausted || t->keys_exhausted;
    }
    SVC_ASSERT(out->latency.count == out->counts.completed);
}

uint64_t lg_run_key_span(const struct lg_run *run)
{
    SVC_ASSERT(run->joined);
    uint64_t span = 0;
    for (uint32_t i = 0; i < run->config.threads; i++) {
        uint64_t end = run->threads[i]->next_local * run->config.threads;
        span = end > span ? end : span;
    }
    return span;
}

int64_t lg_run_key_outcome(const struct lg_run *run, uint64_t n)
{
    SVC_ASSERT(run->joined && run->keys != NULL);
    const struct lg_thread *t = run->threads[n % run->config.threads];
    uint64_t local = n / run->config.threads;
    return local < t->next_local ? t->keys[local] : LG_KEY_NOT_SENT;
}

void lg_run_key_answer(struct lg_run *run, uint64_t n, int status, const struct lg_parser *p)
{
    SVC_ASSERT(run->joined && run->keys != NULL);
    const struct lg_thread *t = run->threads[n % run->config.threads];
    uint64_t local = n / run->config.threads;
    SVC_ASSERT(local < t->next_local);
    lg_key_answer(&t->keys[local], status, p->body, p->body_length);
}

void lg_run_deinit(struct lg_run *run)
{
    SVC_ASSERT(run != NULL);
    SVC_ASSERT(run->joined || run->started == 0); /* never free under a running thread */
    for (uint32_t i = 0; run->threads != NULL && i < run->config.threads; i++) {
        lg_thread_free(run->threads[i]);
    }
    free(run->threads);
    free(run->keys);
    run->threads = NULL;
    run->keys = NULL;
}

/* ---- blocking client ----------------------------------------------------------------------- */

void lg_client_init(struct lg_client *c, const struct lg_endpoint *endpoint, int64_t timeout_ns)
{
    SVC_ASSERT(endpoint != NULL);
    SVC_ASSERT(timeout_ns > 0);
    c->endpoint = endpoint;
    c->fd = -1;
    c->timeout_ns = timeout_ns;
    c->in_length = 0;
    lg_parser_reset(&c->parser);
}

/* Waits until fd is ready for events or deadline_ns passes. Returns 0 or -errno. */
static int lg_client_poll(int fd, short events, int64_t deadline_ns)
{
    SVC_ASSERT(fd >= 0);
    int64_t left_ns = deadline_ns - lg_now_ns();
    if (left_ns <= 0) {
        return -ETIMEDOUT;
    }
    struct pollfd p = {.fd = fd, .events = events};
    int rc = poll(&p, 1, (int)lg_min((left_ns + 999999) / 1000000, INT32_MAX));
    if (rc < 0) {
        return errno == EINTR ? 0 : -errno;
    }
    SVC_ASSERT(rc <= 1);
    return rc == 0 ? -ETIMEDOUT : 0;
}

static int lg_client_connect(struct lg_client *c, int64_t deadline_ns)
{
    SVC_ASSERT(c->fd == -1);
    const struct lg_endpoint *e = c->endpoint;
    int fd = socket(e->address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, (const struct sockaddr *)&e->address, e->address_length) == 0 ? 0
             : errno == EINPROGRESS ? lg_client_poll(fd, POLLOUT, deadline_ns)
                                    : -errno;
    int error = 0;
    socklen_t length = sizeof error;
    if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error != 0) {
        rc = -error;
    }
    if (rc < 0) {
        close(fd);
        return rc;
    }
    c->fd = fd;
    SVC_ASSERT(c->fd >= 0);
    return 0;
}

static int lg_client_send(struct lg_client *c, const char *request, size_t length,
                          int64_t deadline_ns)
{
    SVC_ASSERT(c->fd >= 0 && length > 0);
    size_t sent = 0;
    while (sent < length) {
        ssize_t n = send(c->fd, request + sent, length - sent, MSG_NOSIGNAL);
        int rc = n >= 0            ? 0
                 : errno == EAGAIN ? lg_client_poll(c->fd, POLLOUT, deadline_ns)
                 : errno == EINTR  ? 0
                                   : -errno;
        if (rc < 0) {
            return rc;
        }
        sent += n > 0 ? (size_t)n : 0;
    }
    SVC_ASSERT(sent == length);
    return 0;
}

/* Reads one whole response into c->parser. -ECONNRESET if the server closed before it. */
static int lg_client_receive(struct lg_client *c, int64_t deadline_ns)
{
    SVC_ASSERT(c->fd >= 0);
    lg_parser_reset(&c->parser);
    c->in_length = 0;
    for (;;) {
        size_t room = sizeof c->in - c->in_length;
        if (room == 0) {
            return -EPROTO; /* a head larger than the buffer */
        }
        ssize_t n = recv(c->fd, c->in + c->in_length, room, 0);
        if (n < 0) {
            int rc = errno == EAGAIN  ? lg_client_poll(c->fd, POLLIN, deadline_ns)
                     : errno == EINTR ? 0
                                      : -errno;
            if (rc < 0) {
                return rc;
            }
            continue;
        }
        if (n == 0) {
            return lg_parser_eof(&c->parser) == 1 ? 0 : -ECONNRESET;
        }
        c->in_length += (size_t)n;
        size_t used = 0;
        int rc = lg_parser_feed(&c->parser, c->in, c->in_length, &used);
        memmove(c->in, c->in + used, c->in_length - used);
        c->in_length -= used;
        if (rc != 0) {
            return rc < 0 ? rc : 0;
        }
    }
}

static void lg_client_close(struct lg_client *c)
{
    SVC_ASSERT(c->endpoint != NULL);
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    SVC_ASSERT(c->fd == -1);
}

int lg_client_request(struct lg_client *c, const char *request, size_t length)
{
    SVC_ASSERT(c->endpoint != NULL);
    SVC_ASSERT(length > 0);
    int64_t deadline_ns = lg_now_ns() + c->timeout_ns;
    bool reused = c->fd >= 0;
    SVC_ASSERT(!reused || c->in_length == 0); /* a kept connection has no stray bytes */
    int rc = reused ? 0 : lg_client_connect(c, deadline_ns);
    if (rc == 0 && (rc = lg_client_send(c, request, length, deadline_ns)) == 0) {
        rc = lg_client_receive(c, deadline_ns);
    }
    if (rc < 0 && reused && rc != -ETIMEDOUT) {
        lg_client_close(c); /* the server had closed the kept-alive connection: once more */
        rc = lg_client_connect(c, deadline_ns);
        if (rc == 0 && (rc = lg_client_send(c, request, length, deadline_ns)) == 0) {
            rc = lg_client_receive(c, deadline_ns);
        }
    }
    if (rc < 0 || c->parser.close || c->in_length > 0) {
        lg_client_close(c);
    }
    return rc;
}

int lg_endpoint_probe(const struct lg_endpoint *endpoint, int64_t timeout_ns)
{
    struct lg_client c;
    lg_client_init(&c, endpoint, timeout_ns);
    int rc = lg_client_connect(&c, lg_now_ns() + timeout_ns);
    SVC_ASSERT(rc <= 0);
    lg_client_close(&c);
    return rc;
}

void lg_client_deinit(struct lg_client *c)
{
    SVC_ASSERT(c != NULL);
    lg_client_close(c);
}
