/*
 * test_pay_http.c - the HTTP payment provider (pay_http.c, included for its statics): the
 * answer parser (Content-Length, chunked, to the end of the connection, fed byte by byte), the
 * outcome of an answer, the URL parser, and the provider's thread against a scripted loopback
 * server (a keep-alive answer then a closed connection, a refused connection, no answer at
 * all). stockd-paysim's request parser (paysim_http.c) is tested at the end. Read
 * test_work.c next.
 */
#include "test_helpers.h"

#include <arpa/inet.h>

#include "../../src/pay/pay_http.c"
#include "../../src/paysim/paysim_http.c"

static int test_pay_http_parse(const char *text, bool eof, struct pay_http_response *out,
                               char *scratch)
{
    return pay_http_parse_response(text, strlen(text), eof, scratch, PAY_HTTP_RESPONSE_BYTES_MAX,
                                   out);
}

static void test_pay_http_content_length(void **state)
{
    (void)state;
    static char scratch[PAY_HTTP_RESPONSE_BYTES_MAX];
    const char *text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 35"
                       "\r\n\r\n{\"id\":\"pay_1\",\"status\":\"succeeded\"}NEXT";
    struct pay_http_response r;
    ASSERT_EQ_INT(test_pay_http_parse(text, false, &r, scratch), PAY_HTTP_DONE);
    ASSERT_EQ_INT(r.status, 200);
    ASSERT_TRUE(r.keep_alive);
    ASSERT_EQ_UINT(r.body_length, 35);
    ASSERT_EQ_UINT(r.consumed, strlen(text) - 4); /* NEXT is the next answer's */
    char ref[PAY_REF_BYTES_MAX + 1];
    ASSERT_EQ_INT(pay_http_outcome(r.status, r.body, r.body_length, ref), PAY_OK);
    ASSERT_EQ_STR(ref, "pay_1");
    /* Every prefix is incomplete, never an error. */
    for (size_t n = 0; n < strlen(text) - 4; n++) {
        ASSERT_EQ_INT(pay_http_parse_response(text, n, false, scratch, sizeof scratch, &r),
                      PAY_HTTP_MORE);
    }
    /* Cut by the end of the connection: an error, not an answer. */
    ASSERT_LT_INT(pay_http_parse_response(text, 60, true, scratch, sizeof scratch, &r), 0);
}

static void test_pay_http_chunked(void **state)
{
    (void)state;
    static char scratch[PAY_HTTP_RESPONSE_BYTES_MAX];
    const char *text = "HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n"
                       "Connection: close\r\n\r\n5;ext=1\r\n{\"sta\r\n"
                       "10\r\ntus\":\"declined\"}\r\n0\r\nX-Trailer: 1\r\n\r\n";
    struct pay_http_response r;
    ASSERT_EQ_INT(test_pay_http_parse(text, false, &r, scratch), PAY_HTTP_DONE);
    ASSERT_EQ_INT(r.status, 402);
    ASSERT_FALSE(r.keep_alive);
    ASSERT_EQ_UINT(r.consumed, strlen(text));
    ASSERT_EQ_MEM(r.body, "{\"status\":\"declined\"}", r.body_length);
    for (size_t n = 0; n < strlen(text); n++) {
        ASSERT_EQ_INT(pay_http_parse_response(text, n, false, scratch, sizeof scratch, &r),
                      PAY_HTTP_MORE);
    }
    const char *bad = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    ASSERT_LT_INT(test_pay_http_parse(bad, false, &r, scratch), 0);
    const char *huge = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n";
    ASSERT_LT_INT(test_pay_http_parse(huge, false, &r, scratch), 0);
}

static void test_pay_http_until_close_and_bad(void **state)
{
    (void)state;
    static char scratch[PAY_HTTP_RESPONSE_BYTES_MAX];
    struct pay_http_response r;
    const char *text = "HTTP/1.0 200 OK\r\n\r\n{\"status\":\"failed\"}";
    ASSERT_EQ_INT(test_pay_http_parse(text, false, &r, scratch), PAY_HTTP_MORE);
    ASSERT_EQ_INT(test_pay_http_parse(text, true, &r, scratch), PAY_HTTP_DONE);
    ASSERT_FALSE(r.keep_alive);
    char ref[PAY_REF_BYTES_MAX + 1];
    ASSERT_EQ_INT(pay_http_outcome(r.status, r.body, r.body_length, ref), PAY_DECLINED);
    ASSERT_EQ_STR(ref, "");
    const char *bad[] = {
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_LT_INT(test_pay_http_parse(bad[i], false, &r, scratch), 0);
    }
    ASSERT_EQ_INT(test_pay_http_parse("HTTP/1.1 204 No Content\r\n\r\n", false, &r, scratch),
                  PAY_HTTP_DONE);
}

static void test_pay_http_outcomes(void **state)
{
    (void)state;
    char ref[PAY_REF_BYTES_MAX + 1];
    const char *ok = "{\"id\":\"pay_9\",\"status\":\"succeeded\"}";
    ASSERT_EQ_INT(pay_http_outcome(201, ok, strlen(ok), ref), PAY_OK);
    ASSERT_EQ_STR(ref, "pay_9");
    ASSERT_EQ_INT(pay_http_outcome(402, "", 0, ref), PAY_DECLINED);
    const char *declined = "{\"id\":\"pay_9\",\"status\":\"declined\"}";
    ASSERT_EQ_INT(pay_http_outcome(200, declined, strlen(declined), ref), PAY_DECLINED);
    ASSERT_EQ_STR(ref, "");
    /* Technical or unclear: in doubt. */
    ASSERT_EQ_INT(pay_http_outcome(500, ok, strlen(ok), ref), PAY_TIMEOUT);
    ASSERT_EQ_INT(pay_http_outcome(503, "", 0, ref), PAY_TIMEOUT);
    ASSERT_EQ_INT(pay_http_outcome(429, "", 0, ref), PAY_TIMEOUT);
    ASSERT_EQ_INT(pay_http_outcome(409, ok, strlen(ok), ref), PAY_TIMEOUT);
    ASSERT_EQ_INT(pay_http_outcome(200, "not json", 8, ref), PAY_TIMEOUT);
    const char *pending = "{\"id\":\"pay_9\",\"status\":\"processing\"}";
    ASSERT_EQ_INT(pay_http_outcome(200, pending, strlen(pending), ref), PAY_TIMEOUT);
    const char *no_id = "{\"status\":\"succeeded\"}";
    ASSERT_EQ_INT(pay_http_outcome(200, no_id, strlen(no_id), ref), PAY_TIMEOUT);
    const char *bad_id = "{\"id\":\"a\\\"b\",\"status\":\"succeeded\"}";
    ASSERT_EQ_INT(pay_http_outcome(200, bad_id, strlen(bad_id), ref), PAY_TIMEOUT);
    ASSERT_EQ_STR(ref, "");
}

static void test_pay_http_urls(void **state)
{
    (void)state;
    char host[PAY_HTTP_HOST_BYTES_MAX + 1];
    char path[PAY_HTTP_PATH_BYTES_MAX + 1];
    int port = 0;
    ASSERT_EQ_INT(
        pay_http_parse_url("http://127.0.0.1:8080", host, sizeof host, &port, path, sizeof path),
        0);
    ASSERT_EQ_STR(host, "127.0.0.1");
    ASSERT_EQ_INT(port, 8080);
    ASSERT_EQ_STR(path, "");
    ASSERT_EQ_INT(
        pay_http_parse_url("http://pay.example/v1/", host, sizeof host, &port, path, sizeof path),
        0);
    ASSERT_EQ_STR(host, "pay.example");
    ASSERT_EQ_INT(port, 80);
    ASSERT_EQ_STR(path, "/v1");
    const char *bad[] = {"https://x",   "http://",      "http://x:0", "http://x:70000",
                         "http://x:1a", "http://x/a b", "x:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_LT_INT(pay_http_parse_url(bad[i], host, sizeof host, &port, path, sizeof path), 0);
    }
}

/* ---- the provider against a scripted loopback server -------------------------------------- */

enum test_pay_http_act { TEST_ANSWER_THEN_CLOSE, TEST_ANSWER_402, TEST_SILENT };

struct test_pay_http_server {
    int listen_fd;
    int port;
    enum test_pay_http_act acts[4]; /* one per connection accepted */
    int act_count;
    int requests; /* requests read, all connections */
    char last_request[1024];
};

/* Reads one request (head and Content-Length body) from fd into s->last_request. */
static bool test_pay_http_read_request(int fd, struct test_pay_http_server *s)
{
    size_t length = 0;
    for (;;) {
        ssize_t n = recv(fd, s->last_request + length, sizeof s->last_request - 1 - length, 0);
        if (n <= 0) {
            return false;
        }
        length += (size_t)n;
        s->last_request[length] = '\0';
        const char *blank = strstr(s->last_request, "\r\n\r\n");
        const char *cl = strstr(s->last_request, "Content-Length: ");
        if (blank != NULL && cl != NULL &&
            length >= (size_t)(blank + 4 - s->last_request) + (size_t)atoi(cl + 16)) {
            s->requests++;
            return true;
        }
    }
}

static void *test_pay_http_serve(void *arg)
{
    struct test_pay_http_server *s = arg;
    for (int i = 0; i < s->act_count; i++) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0 || !test_pay_http_read_request(fd, s)) {
            break;
        }
        const char *answer = s->acts[i] == TEST_ANSWER_THEN_CLOSE
                                 ? "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   "23\r\n{\"id\":\"pay_a\",\"status\":\"succeeded\"}\r\n0\r\n\r\n"
                                 : "HTTP/1.1 402 Payment Required\r\nContent-Length: 2\r\n\r\n{}";
        if (s->acts[i] != TEST_SILENT) {
            ssize_t n = send(fd, answer, strlen(answer), MSG_NOSIGNAL);
            (void)n;
        } else {
            char drain[64];
            while (recv(fd, drain, sizeof drain, 0) > 0) { /* until the client gives up */
            }
        }
        close(fd); /* a keep-alive answer, then the server closes the idle connection */
    }
    return NULL;
}

static int test_pay_http_listen(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof addr;
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 8) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &length) != 0) {
        return -1;
    }
    *port = ntohs(addr.sin_port);
    return fd;
}

/* Polls p until one result comes (at most 10 s: a bound, not a timing). */
static struct pay_result test_pay_http_one(const struct pay_provider *p)
{
    struct pay_result r = {0};
    for (int i = 0; i < 10000; i++) {
        if (p->poll(p->self, 0, &r, 1) == 1) {
            return r;
        }
        usleep(1000);
    }
    TEST_FAIL("no result within 10 s");
    return r;
}

static struct pay_http *test_pay_http_provider_on(int port, int64_t timeout_ms)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    struct pay_http_config config = {url, timeout_ms};
    return pay_http_new(&config);
}

static void test_pay_http_against_a_server(void **state)
{
    (void)state;
    static struct test_pay_http_server s = {
        .acts = {TEST_ANSWER_THEN_CLOSE, TEST_ANSWER_402, TEST_SILENT}, .act_count = 3};
    s.listen_fd = test_pay_http_listen(&s.port);
    ASSERT_GE_INT(s.listen_fd, 0);
    pthread_t thread;
    ASSERT_EQ_INT(pthread_create(&thread, NULL, test_pay_http_serve, &s), 0);
    struct pay_http *h = test_pay_http_provider_on(s.port, 300);
    ASSERT_NOT_NULL(h);
    const struct pay_provider *p = pay_http_provider(h);
    ASSERT_EQ_INT(p->charge(p->self, "ord_1", 11, 0), 0);
    struct pay_result r = test_pay_http_one(p);
    ASSERT_EQ_UINT(r.token, 11);
    ASSERT_EQ_INT(r.outcome, PAY_OK);
    ASSERT_EQ_STR(r.ref, "pay_a");
    ASSERT_NOT_NULL(strstr(s.last_request, "POST /payments HTTP/1.1\r\n"));
    ASSERT_NOT_NULL(strstr(s.last_request, "\r\nIdempotency-Key: ord_1\r\n"));
    ASSERT_NOT_NULL(strstr(s.last_request, "{\"orderId\":\"ord_1\",\"amount\":0}"));
    /* The server closed the connection it answered on: the next charge goes on a new one
     * (sent again there if it went out on the closed one first). */
    ASSERT_EQ_INT(p->charge(p->self, "ord_2", 12, 0), 0);
    r = test_pay_http_one(p);
    ASSERT_EQ_UINT(r.token, 12);
    ASSERT_EQ_INT(r.outcome, PAY_DECLINED);
    /* No answer: past the deadline the charge is in doubt. */
    ASSERT_EQ_INT(p->charge(p->self, "ord_3", 13, 0), 0);
    r = test_pay_http_one(p);
    ASSERT_EQ_UINT(r.token, 13);
    ASSERT_EQ_INT(r.outcome, PAY_TIMEOUT);
    pay_http_free(h); /* closes the silent connection: the server's thread ends */
    pthread_join(thread, NULL);
    ASSERT_EQ_INT(s.requests, 3);
    close(s.listen_fd);
}

static void test_pay_http_refused(void **state)
{
    (void)state;
    int port = 0;
    int fd = test_pay_http_listen(&port);
    ASSERT_GE_INT(fd, 0);
    close(fd); /* nothing listens on port now */
    struct pay_http *h = test_pay_http_provider_on(port, 2000);
    ASSERT_NOT_NULL(h);
    const struct pay_provider *p = pay_http_provider(h);
    for (uint64_t token = 1; token <= 3; token++) {
        ASSERT_EQ_INT(p->charge(p->self, "ord_7", token, 0), 0);
    }
    for (uint64_t token = 1; token <= 3; token++) {
        struct pay_result r = test_pay_http_one(p);
        ASSERT_EQ_INT(r.outcome, PAY_TIMEOUT);
        ASSERT_LE_UINT(r.token, 3);
    }
    ASSERT_EQ_UINT(h->outstanding, 0);
    pay_http_free(h);
}

/* ---- stockd-paysim's request parser ------------------------------------------------------- */

static void test_paysim_http_requests(void **state)
{
    (void)state;
    const char *text = "POST /payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key:  ord_5 \r\n"
                       "Content-Length: 4\r\n\r\n{}{}GET /stats HTTP/1.1\r\n\r\n";
    struct paysim_http_request r;
    size_t first = strlen(text) - strlen("GET /stats HTTP/1.1\r\n\r\n");
    for (size_t n = 0; n < first; n++) {
        ASSERT_EQ_INT(paysim_http_parse_request(text, n, &r), PAYSIM_HTTP_MORE);
    }
    ASSERT_EQ_INT(paysim_http_parse_request(text, strlen(text), &r), PAYSIM_HTTP_DONE);
    ASSERT_EQ_STR(r.method, "POST");
    ASSERT_EQ_STR(r.target, "/payments");
    ASSERT_EQ_STR(r.key, "ord_5");
    ASSERT_TRUE(r.keep_alive);
    ASSERT_EQ_UINT(r.body_length, 4);
    ASSERT_EQ_UINT(r.consumed, first);
    ASSERT_EQ_INT(paysim_http_parse_request(text + first, strlen(text) - first, &r),
                  PAYSIM_HTTP_DONE);
    ASSERT_EQ_STR(r.target, "/stats");
    ASSERT_EQ_STR(r.key, "");
    const char *close_it = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    ASSERT_EQ_INT(paysim_http_parse_request(close_it, strlen(close_it), &r), PAYSIM_HTTP_DONE);
    ASSERT_FALSE(r.keep_alive);
    const char *long_key = "POST /payments HTTP/1.1\r\nIdempotency-Key: "
                           "0123456789012345678901234567890123456789\r\n\r\n";
    ASSERT_EQ_INT(paysim_http_parse_request(long_key, strlen(long_key), &r), PAYSIM_HTTP_DONE);
    ASSERT_TRUE(r.key_too_long);
    const char *bad[] = {"GET /\r\n\r\n", "GET / HTTP/2.0\r\n\r\n",
                         "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                         "POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
                         "GET / HTTP/1.1\r\nbad header\r\n\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ASSERT_LT_INT(paysim_http_parse_request(bad[i], strlen(bad[i]), &r), 0);
    }
    char answer[PAYSIM_HTTP_ANSWER_BYTES_MAX];
    size_t n = paysim_http_format_answer(answer, sizeof answer, 402, false, "{}", 2);
    const char *want = "HTTP/1.1 402 Payment Required\r\nContent-Type: application/json\r\n"
                       "Content-Length: 2\r\nConnection: close\r\n\r\n{}";
    ASSERT_EQ_UINT(n, strlen(want));
    ASSERT_EQ_MEM(answer, want, n);
}

/* The header-line pieces both parsers share (base/text.h). */
static void test_text_header_and_decimal(void **state)
{
    (void)state;
    struct text_header h;
    const char *line = "Content-Length: \t 42 \t";
    ASSERT_TRUE(text_header_split(line, strlen(line), &h));
    ASSERT_TRUE(text_header_is(&h, "content-length"));
    ASSERT_FALSE(text_header_is(&h, "content-lengt"));
    ASSERT_EQ_INT((int64_t)h.value_length, 2);
    ASSERT_EQ_INT(text_decimal(h.value, h.value_length, 100), 42);
    ASSERT_FALSE(text_header_split(": x", 3, &h));     /* no name */
    ASSERT_FALSE(text_header_split("NoColon", 7, &h)); /* no colon */
    ASSERT_TRUE(text_header_split("X:", 2, &h));       /* an empty value */
    ASSERT_EQ_INT((int64_t)h.value_length, 0);
    ASSERT_EQ_INT(text_decimal("", 0, 100), -1);                               /* no digit */
    ASSERT_EQ_INT(text_decimal("100", 3, 100), 100);                           /* the max itself */
    ASSERT_EQ_INT(text_decimal("101", 3, 100), -1);                            /* past it */
    ASSERT_EQ_INT(text_decimal("1x", 2, 100), -1);                             /* not a number */
    ASSERT_EQ_INT(text_decimal("99999999999999999999999", 23, INT64_MAX), -1); /* overflow */
    ASSERT_EQ_INT(text_decimal("9223372036854775807", 19, INT64_MAX), INT64_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_header_and_decimal),
        cmocka_unit_test(test_pay_http_content_length),
        cmocka_unit_test(test_pay_http_chunked),
        cmocka_unit_test(test_pay_http_until_close_and_bad),
        cmocka_unit_test(test_pay_http_outcomes),
        cmocka_unit_test(test_pay_http_urls),
        cmocka_unit_test(test_pay_http_against_a_server),
        cmocka_unit_test(test_pay_http_refused),
        cmocka_unit_test(test_paysim_http_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
