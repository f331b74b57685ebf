/*
 * pay_http.c - the HTTP payment provider of pay_http.h, in three parts: the parsers (the URL
 * and an answer: status line, Content-Length or chunked body, the "status" and "id" members),
 * which are pure functions the unit test calls; the connections of the pool (open, send,
 * receive, end), a small state machine per slot on the provider's thread; and the queues that
 * the payment worker's thread and the provider's thread share under one mutex.
 *
 * A connection slot:
 *
 *   CLOSED --open--> CONNECTING --connected--> SENDING --sent--> RECEIVING --answer--> IDLE
 *      ^                 |                        |                  |                  |
 *      +----refused------+--------broken----------+------broken------+                  |
 *      +-----------------------------------closed by the server or not keep-alive-------+
 *   IDLE --a new charge--> SENDING (the connection is reused)
 *
 * Every slot with a charge (CONNECTING, SENDING, RECEIVING) has a deadline; past it the
 * connection is closed (a late answer cannot be told from the next one) and the charge ends
 * PAY_TIMEOUT. Epoll events carry the slot and the slot's generation, so that an event of a
 * connection closed earlier in the same wait is not taken for its successor's.
 */
#include "pay/pay_http.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"
#include "base/text.h"

/* Epoll events taken per wait. */
#define PAY_HTTP_EVENTS_MAX 64
/* The epoll tag of the wake-up eventfd (no slot has this index). */
#define PAY_HTTP_WAKE_TAG UINT64_MAX
/* pay_http_pick: no slot free, or the provider refuses connections (fail at once). */
#define PAY_HTTP_PICK_NONE UINT32_MAX
#define PAY_HTTP_PICK_DOWN (UINT32_MAX - 1)

_Static_assert(PAY_HTTP_CONNS_MAX < PAY_HTTP_PICK_DOWN, "slot indexes and pick results");

/* ---- parsing: pure functions ---------------------------------------------------------------- */

enum pay_http_parse { PAY_HTTP_MORE = 0, PAY_HTTP_DONE = 1 };

struct pay_http_head {
    int status;
    int64_t content_length; /* -1: absent */
    bool chunked;
    bool keep_alive;
};

struct pay_http_response {
    int status;
    const char *body; /* into the data parsed, or into the scratch of a chunked body */
    size_t body_length;
    size_t consumed; /* bytes of the data that the answer took */
    bool keep_alive;
};

/* http://HOST[:PORT][/PREFIX] into host, port and path (the prefix without a final '/', ""
 * for none). 0 or SVC_EVALIDATION. IPv6 literals ([::1]) are not accepted. */
static int pay_http_parse_url(const char *url, char *host, size_t host_size, int *port, char *path,
                              size_t path_size)
{
    SVC_ASSERT(host_size > 1 && path_size > 1);
    if (strncmp(url, "http://", 7) != 0) {
        return SVC_EVALIDATION;
    }
    const char *p = url + 7;
    size_t host_length = strcspn(p, ":/");
    if (host_length == 0 || host_length >= host_size) {
        return SVC_EVALIDATION;
    }
    memcpy(host, p, host_length);
    host[host_length] = '\0';
    p += host_length;
    *port = 80;
    if (*p == ':') {
        char *end = NULL;
        long value = strtol(p + 1, &end, 10);
        if (end == p + 1 || value < 1 || value > 65535 || (*end != '\0' && *end != '/')) {
            return SVC_EVALIDATION;
        }
        *port = (int)value;
        p = end;
    }
    size_t path_length = strlen(p);
    while (path_length > 0 && p[path_length - 1] == '/') {
        path_length--;
    }
    if (path_length >= path_size) {
        return SVC_EVALIDATION;
    }
    for (size_t i = 0; i < path_length; i++) {
        if (p[i] <= 0x20 || p[i] >= 0x7f) {
            return SVC_EVALIDATION; /* it goes into the request line as it is */
        }
    }
    memcpy(path, p, path_length);
    path[path_length] = '\0';
    SVC_ASSERT(*port >= 1 && *port <= 65535);
    return 0;
}

/* True when the comma-separated header value (length bytes) holds token, in any case. */
static bool pay_http_has_token(const char *value, size_t length, const char *token)
{
    size_t token_length = strlen(token);
    SVC_ASSERT(token_length > 0);
    for (size_t i = 0; i + token_length <= length; i++) {
        if (strncasecmp(value + i, token, token_length) == 0) {
            return true;
        }
    }
    return false;
}

/* One header line (name: value, without its CRLF) into head. 0 or SVC_EVALIDATION. */
static int pay_http_parse_header(const char *line, size_t length, struct pay_http_head *head)
{
    struct text_header h;
    if (!text_header_split(line, length, &h)) {
        return SVC_EVALIDATION;
    }
    if (text_header_is(&h, "content-length")) {
        /* not a number, more than any answer we take, or a second one that differs */
        int64_t n = text_decimal(h.value, h.value_length, PAY_HTTP_RESPONSE_BYTES_MAX);
        if (n < 0 || (head->content_length >= 0 && head->content_length != n)) {
            return SVC_EVALIDATION;
        }
        head->content_length = n;
    } else if (text_header_is(&h, "transfer-encoding")) {
        head->chunked = pay_http_has_token(h.value, h.value_length, "chunked");
        if (!head->chunked) {
            return SVC_EVALIDATION; /* a coding we cannot frame */
        }
    } else if (text_header_is(&h, "connection")) {
        if (pay_http_has_token(h.value, h.value_length, "close")) {
            head->keep_alive = false;
        } else if (pay_http_has_token(h.value, h.value_length, "keep-alive")) {
            head->keep_alive = true;
        }
    }
    return 0;
}

/* The status line and headers of data[0..length), which ends with the blank line. */
static int pay_http_parse_head(const char *data, size_t length, struct pay_http_head *out)
{
    *out = (struct pay_http_head){0, -1, false, true};
    if (length < 16 || memcmp(data, "HTTP/1.", 7) != 0 || (data[7] != '0' && data[7] != '1') ||
        data[8] != ' ') {
        return SVC_EVALIDATION;
    }
    out->keep_alive = data[7] == '1'; /* HTTP/1.0: only with Connection: keep-alive */
    for (int i = 9; i < 12; i++) {
        if (data[i] < '0' || data[i] > '9') {
            return SVC_EVALIDATION;
        }
        out->status = out->status * 10 + (data[i] - '0');
    }
    if (data[12] != ' ' && data[12] != '\r') {
        return SVC_EVALIDATION;
    }
    const char *end = data + length;
    const char *line = memchr(data, '\n', length);
    SVC_ASSERT(line != NULL); /* the blank line is there */
    for (line++; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        SVC_ASSERT(eol != NULL);
        size_t n = (size_t)(eol - line);
        n -= n > 0 && line[n - 1] == '\r';
        if (n == 0) {
            break;
        }
        int rc = pay_http_parse_header(line, n, out);
        if (rc != 0) {
            return rc;
        }
        line = eol + 1;
    }
    SVC_ASSERT(out->status >= 0 && out->status <= 999);
    return 0;
}

/* The chunked body at data[0..length), decoded into out (out_size bytes): PAY_HTTP_DONE with
 * *out_length and *consumed, PAY_HTTP_MORE, or SVC_EVALIDATION. */
static int pay_http_dechunk(const char *data, size_t length, char *out, size_t out_size,
                            size_t *out_length, size_t *consumed)
{
    size_t pos = 0;
    size_t written = 0;
    for (;;) {
        const char *eol = memchr(data + pos, '\n', length - pos);
        if (eol == NULL) {
            return PAY_HTTP_MORE;
        }
        size_t size = 0;
        size_t i = pos;
        for (; i < (size_t)(eol - data) && strchr("0123456789abcdefABCDEF", data[i]) != NULL &&
               data[i] != '\0';
             i++) {
            int digit = data[i] <= '9' ? data[i] - '0' : (data[i] | 0x20) - 'a' + 10;
            size = size * 16 + (size_t)digit;
            if (size > out_size) {
                return SVC_EVALIDATION; /* more than we take (and no overflow) */
            }
        }
        if (i == pos || (data[i] != ';' && data[i] != '\r' && data[i] != '\n')) {
            return SVC_EVALIDATION;
        }
        pos = (size_t)(eol - data) + 1;
        if (size == 0) {
            for (;;) { /* trailers, up to the blank line */
                const char *t = memchr(data + pos, '\n', length - pos);
                if (t == NULL) {
                    return PAY_HTTP_MORE;
                }
                size_t n = (size_t)(t - (data + pos));
                bool blank = n == 0 || (n == 1 && data[pos] == '\r');
                pos = (size_t)(t - data) + 1;
                if (blank) {
                    *out_length = written;
                    *consumed = pos;
                    return PAY_HTTP_DONE;
                }
            }
        }
        if (length - pos < size + 2) {
            return PAY_HTTP_MORE;
        }
        if (written + size > out_size || data[pos + size] != '\r' || data[pos + size + 1] != '\n') {
            return SVC_EVALIDATION;
        }
        memcpy(out + written, data + pos, size);
        written += size;
        pos += size + 2;
    }
}

/* One answer at the start of data[0..length) (eof: the connection was closed after it).
 * PAY_HTTP_DONE with out filled (a chunked body is decoded into scratch), PAY_HTTP_MORE, or
 * SVC_EVALIDATION. */
static int pay_http_parse_response(const char *data, size_t length, bool eof, char *scratch,
                                   size_t scratch_size, struct pay_http_response *out)
{
    const char *blank = length >= 4 ? memmem(data, length, "\r\n\r\n", 4) : NULL;
    if (blank == NULL) {
        return eof ? SVC_EVALIDATION : PAY_HTTP_MORE;
    }
    size_t head_length = (size_t)(blank - data) + 4;
    struct pay_http_head head;
    int rc = pay_http_parse_head(data, head_length, &head);
    if (rc != 0 || head.status < 200) {
        return SVC_EVALIDATION; /* 1xx: we never send Expect, so none is due */
    }
    *out = (struct pay_http_response){head.status, data + head_length, 0, head_length,
                                      head.keep_alive};
    const char *rest = data + head_length;
    size_t rest_length = length - head_length;
    if (head.status == 204 || head.status == 304) {
        return PAY_HTTP_DONE;
    }
    if (head.chunked) {
        size_t used = 0;
        rc = pay_http_dechunk(rest, rest_length, scratch, scratch_size, &out->body_length, &used);
        if (rc == PAY_HTTP_MORE) {
            return eof ? SVC_EVALIDATION : PAY_HTTP_MORE;
        }
        out->body = scratch;
        out->consumed += used;
        return rc;
    }
    if (head.content_length >= 0) {
        if (rest_length < (size_t)head.content_length) {
            return eof ? SVC_EVALIDATION : PAY_HTTP_MORE;
        }
        out->body_length = (size_t)head.content_length;
        out->consumed += out->body_length;
        return PAY_HTTP_DONE;
    }
    if (!eof) {
        return PAY_HTTP_MORE; /* the body runs to the end of the connection */
    }
    out->body_length = rest_length;
    out->consumed = length;
    out->keep_alive = false;
    return PAY_HTTP_DONE;
}

/* A payment id we pass on as the order's reference: printable, no quote or backslash. */
static bool pay_http_ref_ok(const char *id)
{
    size_t length = strlen(id);
    if (length == 0 || length > PAY_REF_BYTES_MAX) {
        return false;
    }
    for (size_t i = 0; i < length; i++) {
        if (id[i] <= 0x20 || id[i] >= 0x7f || id[i] == '"' || id[i] == '\\') {
            return false;
        }
    }
    return true;
}

/* The outcome of an answer of the given status and body; ref (PAY_REF_BYTES_MAX + 1 bytes)
 * gets the payment's id when PAY_OK, "" otherwise. Anything but a clear success or a clear
 * decline is PAY_TIMEOUT: in doubt, asked again with the same key. */
static enum pay_outcome pay_http_outcome(int status, const char *body, size_t length, char *ref)
{
    ref[0] = '\0';
    if (status == 402) {
        return PAY_DECLINED;
    }
    if (status != 200 && status != 201) {
        return PAY_TIMEOUT; /* 5xx, 429 (and 409: the same key still in progress) */
    }
    json_t *root = json_loadb(body, length, 0, NULL);
    const char *state = json_string_value(json_object_get(root, "status"));
    const char *id = json_string_value(json_object_get(root, "id"));
    enum pay_outcome outcome = PAY_TIMEOUT;
    if (state != NULL && (strcmp(state, "declined") == 0 || strcmp(state, "failed") == 0)) {
        outcome = PAY_DECLINED;
    } else if (state != NULL && strcmp(state, "succeeded") == 0 && id != NULL &&
               pay_http_ref_ok(id)) {
        outcome = PAY_OK;
        strcpy(ref, id);
    }
    json_decref(root);
    if (outcome == PAY_TIMEOUT) {
        log_warn("payment provider: a %d answer without a clear outcome (in doubt)", status);
    }
    SVC_ASSERT(outcome != PAY_OK || ref[0] != '\0');
    return outcome;
}

/* ---- the provider's state ---------------------------------------------------------------- */

enum pay_http_state {
    PAY_HTTP_CLOSED = 0,
    PAY_HTTP_CONNECTING,
    PAY_HTTP_SENDING,
    PAY_HTTP_RECEIVING,
    PAY_HTTP_IDLE,
};

struct pay_http_request {
    uint64_t token; /* the worker's */
    char key[PAY_KEY_BYTES_MAX + 1];
};

struct pay_http_conn {
    int fd; /* -1 when CLOSED */
    enum pay_http_state state;
    uint32_t generation; /* counts opens: tags the epoll events */
    uint32_t watched;    /* the epoll events registered (0: not registered) */
    bool reused;         /* the connection answered a charge before this one */
    bool resent;         /* this charge was sent again on a new connection */
    int64_t deadline_ms; /* monotonic; a charge's */
    struct pay_http_request request;
    uint32_t out_length; /* bytes of out, and how many were sent */
    uint32_t out_sent;
    uint32_t in_length; /* bytes received of the answer */
    char out[PAY_HTTP_REQUEST_BYTES_MAX];
    char in[PAY_HTTP_RESPONSE_BYTES_MAX];
};

struct pay_http {
    struct pay_provider provider;
    char host[PAY_HTTP_HOST_BYTES_MAX + 1];
    int port;
    char path[PAY_HTTP_PATH_BYTES_MAX + 1];
    struct sockaddr_storage addr; /* resolved once, at start */
    socklen_t addr_length;
    int64_t timeout_ms;
    int epoll_fd;
    int wake_fd; /* an eventfd: charge() wakes the loop */
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    pthread_mutex_t lock;           /* guards the two rings and outstanding */
    struct pay_http_request *queue; /* PAY_HTTP_INFLIGHT_MAX, owned: charges to send */
    uint32_t queue_head;
    uint32_t queue_count;
    struct pay_result *results; /* PAY_HTTP_INFLIGHT_MAX, owned: for poll() */
    uint32_t results_head;
    uint32_t results_count;
    uint32_t outstanding;        /* charged and not polled yet: queued, sending or a result */
    struct pay_http_conn *conns; /* PAY_HTTP_CONNS_MAX, owned; the loop's only */
    uint32_t busy_count;         /* slots with a charge */
    int64_t down_until_ms;       /* monotonic: no new connection before (after a refusal) */
    int64_t down_delay_ms;       /* the next refusal's delay */
    char scratch[PAY_HTTP_RESPONSE_BYTES_MAX]; /* a chunked body, decoded */
};

static int64_t pay_http_now_ms(void)
{
    return clock_mono_us() / 1000;
}

/* ---- the queues shared with the worker's thread ------------------------------------------ */

/* A finished charge for poll(). */
static void pay_http_report(struct pay_http *h, uint64_t token, enum pay_outcome outcome,
                            const char *ref)
{
    SVC_ASSERT(strlen(ref) <= PAY_REF_BYTES_MAX);
    pthread_mutex_lock(&h->lock);
    SVC_ASSERT(h->results_count < PAY_HTTP_INFLIGHT_MAX);
    SVC_ASSERT(h->queue_count + h->results_count < h->outstanding);
    struct pay_result *r =
        &h->results[(h->results_head + h->results_count) % PAY_HTTP_INFLIGHT_MAX];
    *r = (struct pay_result){token, outcome, {0}};
    strcpy(r->ref, ref);
    h->results_count++;
    pthread_mutex_unlock(&h->lock);
}

/* The next charge to send; false when none waits. */
static bool pay_http_dequeue(struct pay_http *h, struct pay_http_request *out)
{
    pthread_mutex_lock(&h->lock);
    bool any = h->queue_count > 0;
    if (any) {
        *out = h->queue[h->queue_head];
        h->queue_head = (h->queue_head + 1) % PAY_HTTP_INFLIGHT_MAX;
        h->queue_count--;
    }
    pthread_mutex_unlock(&h->lock);
    return any;
}

static int pay_http_charge(void *self, const char *key, uint64_t token, int64_t now_ms)
{
    struct pay_http *h = self;
    (void)now_ms; /* deadlines run on the provider's monotonic clock */
    size_t length = strlen(key);
    SVC_ASSERT(length >= 1 && length <= PAY_KEY_BYTES_MAX);
    SVC_ASSERT(strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
               length); /* it goes into a header and a JSON string as it is */
    pthread_mutex_lock(&h->lock);
    if (h->outstanding == PAY_HTTP_INFLIGHT_MAX) {
        pthread_mutex_unlock(&h->lock);
        return SVC_ECAPACITY;
    }
    bool was_empty = h->queue_count == 0;
    struct pay_http_request *r =
        &h->queue[(h->queue_head + h->queue_count) % PAY_HTTP_INFLIGHT_MAX];
    r->token = token;
    memcpy(r->key, key, length + 1);
    h->queue_count++;
    h->outstanding++;
    pthread_mutex_unlock(&h->lock);
    if (was_empty) { /* else the loop has it already: it takes charges while it has slots */
        uint64_t one = 1;
        ssize_t n = write(h->wake_fd, &one, sizeof one);
        SVC_ASSERT(n == (ssize_t)sizeof one || errno == EAGAIN); /* EAGAIN: woken already */
    }
    return 0;
}

static size_t pay_http_poll(void *self, int64_t now_ms, struct pay_result *out, size_t max)
{
    struct pay_http *h = self;
    (void)now_ms;
    pthread_mutex_lock(&h->lock);
    size_t n = h->results_count < max ? h->results_count : max;
    for (size_t i = 0; i < n; i++) {
        out[i] = h->results[h->results_head];
        h->results_head = (h->results_head + 1) % PAY_HTTP_INFLIGHT_MAX;
    }
    h->results_count -= (uint32_t)n;
    SVC_ASSERT(h->outstanding >= n);
    h->outstanding -= (uint32_t)n;
    SVC_ASSERT(h->outstanding >= h->queue_count + h->results_count);
    pthread_mutex_unlock(&h->lock);
    return n;
}

/* ---- the connections (the provider's thread) --------------------------------------------- */

static void pay_http_watch(struct pay_http *h, uint32_t slot, uint32_t events)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(c->fd >= 0 && events != 0);
    if (c->watched == events) {
        return;
    }
    struct epoll_event ev = {.events = events};
    ev.data.u64 = (uint64_t)c->generation << 32 | slot;
    int rc = epoll_ctl(h->epoll_fd, c->watched == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c->fd, &ev);
    SVC_ASSERT(rc == 0); /* a valid descriptor of ours: only ENOMEM could fail */
    c->watched = events;
}

static void pay_http_close(struct pay_http *h, uint32_t slot)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(c->state != PAY_HTTP_CLOSED && c->fd >= 0);
    close(c->fd); /* leaves the epoll set with it */
    c->fd = -1;
    c->watched = 0;
    c->state = PAY_HTTP_CLOSED;
}

/* The charge of slot ends with outcome; the connection is left as the caller says. */
static void pay_http_end(struct pay_http *h, uint32_t slot, enum pay_outcome outcome,
                         const char *ref)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(h->busy_count > 0);
    SVC_ASSERT(c->request.key[0] != '\0');
    pay_http_report(h, c->request.token, outcome, ref);
    c->request.key[0] = '\0';
    h->busy_count--;
}

static void pay_http_open(struct pay_http *h, uint32_t slot);

/* The connection broke before a full answer: sent again once on a new connection when a
 * reused one failed before any byte came (the server had closed it), else PAY_TIMEOUT. */
static void pay_http_broken(struct pay_http *h, uint32_t slot)
{
    struct pay_http_conn *c = &h->conns[slot];
    bool again = c->reused && c->in_length == 0 && !c->resent;
    pay_http_close(h, slot);
    if (again) {
        c->resent = true;
        pay_http_open(h, slot);
        return;
    }
    log_warn("payment provider: the connection broke during charge %s (in doubt)", c->request.key);
    pay_http_end(h, slot, PAY_TIMEOUT, "");
}

/* The connection was refused: PAY_TIMEOUT, and no new connection for a while. */
static void pay_http_refused(struct pay_http *h, uint32_t slot, int error)
{
    pay_http_close(h, slot);
    h->down_until_ms = pay_http_now_ms() + h->down_delay_ms;
    log_warn("payment provider %s:%d: cannot connect (%s); no new connection for %" PRId64 " ms",
             h->host, h->port, strerror(error), h->down_delay_ms);
    h->down_delay_ms *= 2;
    if (h->down_delay_ms > PAY_HTTP_RECONNECT_DELAY_MAX_MS) {
        h->down_delay_ms = PAY_HTTP_RECONNECT_DELAY_MAX_MS;
    }
    pay_http_end(h, slot, PAY_TIMEOUT, "");
}

static void pay_http_send(struct pay_http *h, uint32_t slot)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(c->state == PAY_HTTP_SENDING && c->out_sent < c->out_length);
    while (c->out_sent < c->out_length) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_length - c->out_sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_sent += (uint32_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pay_http_watch(h, slot, EPOLLOUT);
            return;
        } else {
            pay_http_broken(h, slot);
            return;
        }
    }
    c->state = PAY_HTTP_RECEIVING;
    c->in_length = 0;
    pay_http_watch(h, slot, EPOLLIN | EPOLLRDHUP);
}

/* A connection is up: the provider answers connections again. */
static void pay_http_connected(struct pay_http *h, uint32_t slot)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(c->state == PAY_HTTP_CONNECTING);
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
        error = errno;
    }
    if (error != 0) {
        pay_http_refused(h, slot, error);
        return;
    }
    if (h->down_delay_ms != PAY_HTTP_RECONNECT_DELAY_MIN_MS) {
        log_info("payment provider %s:%d: connected again", h->host, h->port);
    }
    h->down_delay_ms = PAY_HTTP_RECONNECT_DELAY_MIN_MS;
    h->down_until_ms = 0;
    c->state = PAY_HTTP_SENDING;
    pay_http_send(h, slot);
}

/* Opens slot's connection for the charge it holds (a fresh one or a resend). */
static void pay_http_open(struct pay_http *h, uint32_t slot)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(c->state == PAY_HTTP_CLOSED && c->fd < 0);
    int fd = socket(h->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_warn("payment provider: no socket (%s)", strerror(errno));
        pay_http_end(h, slot, PAY_TIMEOUT, ""); /* out of descriptors: try again later */
        return;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->generation++;
    c->watched = 0;
    c->reused = false;
    c->out_sent = 0;
    c->in_length = 0;
    c->state = PAY_HTTP_CONNECTING;
    if (connect(fd, (const struct sockaddr *)&h->addr, h->addr_length) == 0) {
        pay_http_connected(h, slot);
    } else if (errno == EINPROGRESS) {
        pay_http_watch(h, slot, EPOLLOUT);
    } else {
        pay_http_refused(h, slot, errno);
    }
}

/* A full answer came: the charge ends; the connection is kept when it may be. */
static void pay_http_answered(struct pay_http *h, uint32_t slot, const struct pay_http_response *r)
{
    struct pay_http_conn *c = &h->conns[slot];
    char ref[PAY_REF_BYTES_MAX + 1];
    enum pay_outcome outcome = pay_http_outcome(r->status, r->body, r->body_length, ref);
    SVC_ASSERT(r->consumed <= c->in_length);
    pay_http_end(h, slot, outcome, ref);
    if (r->keep_alive && r->consumed == c->in_length) {
        c->state = PAY_HTTP_IDLE;
        c->reused = true;
        c->in_length = 0;
        return;
    }
    pay_http_close(h, slot); /* closing, or bytes after the answer that nothing asked for */
}

static void pay_http_receive(struct pay_http *h, uint32_t slot)
{
    struct pay_http_conn *c = &h->conns[slot];
    SVC_ASSERT(c->state == PAY_HTTP_RECEIVING);
    for (;;) {
        if (c->in_length == sizeof c->in) {
            log_warn("payment provider: an answer over %d bytes", PAY_HTTP_RESPONSE_BYTES_MAX);
            pay_http_close(h, slot);
            pay_http_end(h, slot, PAY_TIMEOUT, "");
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->in_length, sizeof c->in - c->in_length, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (n < 0) {
            pay_http_broken(h, slot);
            return;
        }
        c->in_length += (uint32_t)n;
        struct pay_http_response r;
        int rc =
            pay_http_parse_response(c->in, c->in_length, n == 0, h->scratch, sizeof h->scratch, &r);
        if (rc == PAY_HTTP_DONE) {
            pay_http_answered(h, slot, &r);
            return;
        }
        if (rc < 0 || n == 0) {
            if (rc < 0 && n > 0) { /* at the end of the connection, broken says it */
                log_warn("payment provider: an answer that is not HTTP/1.x (in doubt)");
            }
            pay_http_broken(h, slot);
            return;
        }
    }
}

static void pay_http_on_event(struct pay_http *h, uint64_t tag)
{
    uint32_t slot = (uint32_t)(tag & UINT32_MAX);
    SVC_ASSERT(slot < PAY_HTTP_CONNS_MAX);
    struct pay_http_conn *c = &h->conns[slot];
    if (c->fd < 0 || c->generation != (uint32_t)(tag >> 32)) {
        return; /* an event of a connection closed earlier in this round */
    }
    switch (c->state) {
    case PAY_HTTP_CONNECTING: pay_http_connected(h, slot); break;
    case PAY_HTTP_SENDING: pay_http_send(h, slot); break;
    case PAY_HTTP_RECEIVING: pay_http_receive(h, slot); break;
    case PAY_HTTP_IDLE: pay_http_close(h, slot); break; /* the server closed it (or spoke) */
    case PAY_HTTP_CLOSED: SVC_ASSERT(!"an open descriptor in a closed slot"); break;
    }
}

/* Charges past their deadline: the connection is closed and the charge is in doubt. */
static void pay_http_expire(struct pay_http *h, int64_t now_ms)
{
    for (uint32_t slot = 0; slot < PAY_HTTP_CONNS_MAX && h->busy_count > 0; slot++) {
        struct pay_http_conn *c = &h->conns[slot];
        bool busy = c->state != PAY_HTTP_CLOSED && c->state != PAY_HTTP_IDLE;
        if (busy && c->deadline_ms <= now_ms) {
            log_warn("payment provider: no answer to charge %s within %" PRId64 " ms (in doubt)",
                     c->request.key, h->timeout_ms);
            pay_http_close(h, slot);
            pay_http_end(h, slot, PAY_TIMEOUT, "");
        }
    }
}

/* A slot for the next charge: an idle connection, else a closed slot (unless connections are
 * refused: PAY_HTTP_PICK_DOWN), else PAY_HTTP_PICK_NONE. */
static uint32_t pay_http_pick(struct pay_http *h, int64_t now_ms)
{
    uint32_t closed = PAY_HTTP_PICK_NONE;
    for (uint32_t slot = 0; slot < PAY_HTTP_CONNS_MAX; slot++) {
        enum pay_http_state state = h->conns[slot].state;
        if (state == PAY_HTTP_IDLE) {
            return slot;
        }
        if (state == PAY_HTTP_CLOSED && closed == PAY_HTTP_PICK_NONE) {
            closed = slot;
        }
    }
    if (closed != PAY_HTTP_PICK_NONE && now_ms < h->down_until_ms) {
        return PAY_HTTP_PICK_DOWN;
    }
    return closed;
}

/* Writes the request of slot's charge into its out buffer. */
static void pay_http_format(struct pay_http *h, struct pay_http_conn *c)
{
    char body[2 * PAY_KEY_BYTES_MAX + 32];
    int body_length =
        snprintf(body, sizeof body, "{\"orderId\":\"%s\",\"amount\":0}", c->request.key);
    SVC_ASSERT(body_length > 0 && (size_t)body_length < sizeof body);
    int n = snprintf(c->out, sizeof c->out,
                     "POST %s/payments HTTP/1.1\r\nHost: %s:%d\r\nIdempotency-Key: %s\r\n"
                     "Content-Type: application/json\r\nAccept: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     h->path, h->host, h->port, c->request.key, body_length, body);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof c->out); /* PAY_HTTP_REQUEST_BYTES_MAX */
    c->out_length = (uint32_t)n;
    c->out_sent = 0;
}

/* Hands queued charges to free slots; while connections are refused, a charge that would need
 * a new one ends PAY_TIMEOUT at once. */
static void pay_http_dispatch(struct pay_http *h, int64_t now_ms)
{
    for (;;) {
        uint32_t slot = pay_http_pick(h, now_ms);
        struct pay_http_request request;
        if (slot == PAY_HTTP_PICK_NONE || !pay_http_dequeue(h, &request)) {
            return;
        }
        if (slot == PAY_HTTP_PICK_DOWN) {
            pay_http_report(h, request.token, PAY_TIMEOUT, "");
            continue;
        }
        struct pay_http_conn *c = &h->conns[slot];
        c->request = request;
        c->deadline_ms = now_ms + h->timeout_ms;
        c->resent = false;
        pay_http_format(h, c);
        h->busy_count++;
        SVC_ASSERT(h->busy_count <= PAY_HTTP_CONNS_MAX);
        if (c->state == PAY_HTTP_IDLE) {
            c->state = PAY_HTTP_SENDING;
            pay_http_send(h, slot);
        } else {
            pay_http_open(h, slot);
        }
    }
}

/* The wait until the next deadline, at most PAY_HTTP_IDLE_WAIT_MS. */
static int pay_http_wait_ms(const struct pay_http *h, int64_t now_ms)
{
    int64_t wait = PAY_HTTP_IDLE_WAIT_MS;
    for (uint32_t slot = 0; slot < PAY_HTTP_CONNS_MAX && h->busy_count > 0; slot++) {
        const struct pay_http_conn *c = &h->conns[slot];
        if (c->state != PAY_HTTP_CLOSED && c->state != PAY_HTTP_IDLE) {
            int64_t left = c->deadline_ms - now_ms + 1;
            wait = left < wait ? (left < 0 ? 0 : left) : wait;
        }
    }
    SVC_ASSERT(wait >= 0 && wait <= PAY_HTTP_IDLE_WAIT_MS);
    return (int)wait;
}

static void *pay_http_loop(void *arg)
{
    svc_thread_name("pay-http", -1);
    struct pay_http *h = arg;
    struct epoll_event events[PAY_HTTP_EVENTS_MAX];
    while (!atomic_load(&h->stopping)) {
        int n = epoll_wait(h->epoll_fd, events, PAY_HTTP_EVENTS_MAX,
                           pay_http_wait_ms(h, pay_http_now_ms()));
        SVC_ASSERT(n >= 0 || errno == EINTR);
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == PAY_HTTP_WAKE_TAG) {
                uint64_t count = 0;
                (void)read(h->wake_fd, &count, sizeof count);
            } else {
                pay_http_on_event(h, events[i].data.u64);
            }
        }
        int64_t now = pay_http_now_ms();
        pay_http_expire(h, now);
        pay_http_dispatch(h, now);
    }
    return NULL;
}

/* ---- start and stop ---------------------------------------------------------------------- */

static int pay_http_resolve(struct pay_http *h)
{
    char port[16];
    snprintf(port, sizeof port, "%d", h->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *found = NULL;
    int rc = getaddrinfo(h->host, port, &hints, &found);
    if (rc != 0 || found == NULL) {
        log_error("payment provider: cannot resolve %s (%s)", h->host, gai_strerror(rc));
        return SVC_EVALIDATION;
    }
    SVC_ASSERT(found->ai_addrlen <= sizeof h->addr);
    memcpy(&h->addr, found->ai_addr, found->ai_addrlen);
    h->addr_length = found->ai_addrlen;
    freeaddrinfo(found);
    return 0;
}

/* The descriptors, the tables and the thread; 0 or an error (h is freed by the caller). */
static int pay_http_start(struct pay_http *h)
{
    h->queue = calloc(PAY_HTTP_INFLIGHT_MAX, sizeof *h->queue);
    h->results = calloc(PAY_HTTP_INFLIGHT_MAX, sizeof *h->results);
    h->conns = calloc(PAY_HTTP_CONNS_MAX, sizeof *h->conns);
    if (h->queue == NULL || h->results == NULL || h->conns == NULL) {
        return -ENOMEM;
    }
    for (uint32_t slot = 0; slot < PAY_HTTP_CONNS_MAX; slot++) {
        h->conns[slot].fd = -1;
    }
    h->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->epoll_fd < 0 || h->wake_fd < 0) {
        return -errno;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = PAY_HTTP_WAKE_TAG;
    if (epoll_ctl(h->epoll_fd, EPOLL_CTL_ADD, h->wake_fd, &ev) != 0) {
        return -errno;
    }
    int rc = pthread_create(&h->thread, NULL, pay_http_loop, h);
    h->started = rc == 0;
    return -rc;
}

struct pay_http *pay_http_new(const struct pay_http_config *config)
{
    SVC_ASSERT(config->url != NULL);
    SVC_ASSERT(config->timeout_ms >= 1 && config->timeout_ms <= PAY_HTTP_TIMEOUT_MS_MAX);
    struct pay_http *h = calloc(1, sizeof *h);
    if (h == NULL) {
        return NULL;
    }
    h->epoll_fd = -1;
    h->wake_fd = -1;
    h->timeout_ms = config->timeout_ms;
    h->down_delay_ms = PAY_HTTP_RECONNECT_DELAY_MIN_MS;
    pthread_mutex_init(&h->lock, NULL);
    h->provider = (struct pay_provider){
        .name = "http", .self = h, .charge = pay_http_charge, .poll = pay_http_poll};
    int rc =
        pay_http_parse_url(config->url, h->host, sizeof h->host, &h->port, h->path, sizeof h->path);
    if (rc != 0) {
        log_error("payment provider: %s is not http://HOST[:PORT][/PREFIX]", config->url);
    }
    rc = rc == 0 ? pay_http_resolve(h) : rc;
    rc = rc == 0 ? pay_http_start(h) : rc;
    if (rc != 0) {
        log_error("payment provider: cannot start (%d)", rc);
        pay_http_free(h);
        return NULL;
    }
    log_info("payment provider: POST http://%s:%d%s/payments, %" PRId64
             " ms per charge, %d connections",
             h->host, h->port, h->path, h->timeout_ms, PAY_HTTP_CONNS_MAX);
    return h;
}

void pay_http_free(struct pay_http *h)
{
    if (h == NULL) {
        return;
    }
    if (h->started) {
        atomic_store(&h->stopping, true);
        uint64_t one = 1;
        (void)write(h->wake_fd, &one, sizeof one);
        pthread_join(h->thread, NULL);
        h->started = false;
    }
    for (uint32_t slot = 0; h->conns != NULL && slot < PAY_HTTP_CONNS_MAX; slot++) {
        if (h->conns[slot].fd >= 0) {
            close(h->conns[slot].fd);
        }
    }
    if (h->epoll_fd >= 0) {
        close(h->epoll_fd);
    }
    if (h->wake_fd >= 0) {
        close(h->wake_fd);
    }
    free(h->queue);
    free(h->results);
    free(h->conns);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

const struct pay_provider *pay_http_provider(struct pay_http *h)
{
    SVC_ASSERT(h != NULL && h->provider.self == h);
    SVC_ASSERT(h->started);
    return &h->provider;
}
