/*
 * test_intake_pub.c - the contract helpers of src/intake/intake_pub.h and its publisher
 * without a broker.
 *
 * Prefer (RFC 7240): respond-async is found in any case, among other preferences, with OWS
 * around it, but not as a parameter of another preference, inside a quoted value, or as the
 * prefix of a longer token. The message body is the format of intake.h with the request's
 * object verbatim and strings escaped, and does not overflow its buffer; the status URL
 * percent-encodes all but RFC 3986's unreserved characters. A publisher whose broker is not
 * there refuses a job at once (-ENOTCONN) and never calls its done. The broker side is
 * tests/blackbox/test_intake_pub.py. The test links the intake_pub library alone (with mq and
 * base below it).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_helpers.h"

#include "intake/intake.h"
#include "intake/intake_pub.h"

static bool test_prefers(const char *value)
{
    return intake_pub_prefers_async(value, strlen(value));
}

static void test_prefer_names_respond_async(void **state)
{
    (void)state;
    ASSERT_TRUE(test_prefers("respond-async"));
    ASSERT_TRUE(test_prefers("Respond-Async"));
    ASSERT_TRUE(test_prefers("  respond-async  "));
    ASSERT_TRUE(test_prefers("wait=10, respond-async"));
    ASSERT_TRUE(test_prefers("return=minimal; foo=\"a, b\",respond-async;x=1"));
    ASSERT_TRUE(test_prefers("handling=lenient,,\trespond-async"));
    ASSERT_FALSE(test_prefers(""));
    ASSERT_FALSE(test_prefers("respond-asyncx"));
    ASSERT_FALSE(test_prefers("respond-asyn"));
    ASSERT_FALSE(test_prefers("return=respond-async"));
    ASSERT_FALSE(test_prefers("return=minimal; respond-async"));
    ASSERT_FALSE(test_prefers("foo=\"x, respond-async\""));
    ASSERT_FALSE(test_prefers("foo=\"x\\\", respond-async\""));
    ASSERT_FALSE(test_prefers("x-respond-async"));
    /* Not NUL-terminated: only length bytes count. */
    ASSERT_FALSE(intake_pub_prefers_async("respond-async", 7));
}

static void test_format_is_the_contract(void **state)
{
    (void)state;
    static const char body[] = " {\"sku\":\"A\",\"qty\":1} ";
    char out[512];
    size_t n = intake_pub_format(out, sizeof out, INTAKE_KIND_PURCHASE, "admin", "k\"1\\",
                                 "/v1/purchase", body, sizeof body - 1);
    static const char want[] = "{\"v\":1,\"kind\":\"purchase\",\"principal\":\"admin\","
                               "\"idempotencyKey\":\"k\\\"1\\\\\",\"route\":\"/v1/purchase\","
                               "\"body\": {\"sku\":\"A\",\"qty\":1} }";
    ASSERT_EQ_UINT(n, sizeof want - 1);
    ASSERT_EQ_MEM(out, want, n);
    ASSERT_EQ_UINT(intake_pub_format(out, 40, INTAKE_KIND_ORDER, "admin", "k", "/v1/orders", body,
                                     sizeof body - 1),
                   0);
    ASSERT_LE_UINT(sizeof want - 1, INTAKE_PUB_FORMAT_BOUND(5, 4, 12, sizeof body - 1));
}

/* A batch (intake.h) is the commands' own messages in an array, in the jobs' order. */
static void test_batch_format_is_the_contract(void **state)
{
    (void)state;
    static const char a[] = "{\"v\":1,\"kind\":\"purchase\",\"idempotencyKey\":\"a\"}";
    static const char b[] = "{\"v\":1,\"kind\":\"purchase\",\"idempotencyKey\":\"b\"}";
    struct intake_pub_job ja = {.body = a, .body_length = sizeof a - 1};
    struct intake_pub_job jb = {.body = b, .body_length = sizeof b - 1};
    struct intake_pub_job *jobs[] = {&ja, &jb};
    char out[512];
    size_t n = intake_pub_batch_format(out, sizeof out, jobs, 2);
    static const char want[] = "{\"v\":2,\"kind\":\"batch\",\"commands\":["
                               "{\"v\":1,\"kind\":\"purchase\",\"idempotencyKey\":\"a\"},"
                               "{\"v\":1,\"kind\":\"purchase\",\"idempotencyKey\":\"b\"}]}";
    ASSERT_EQ_UINT(n, sizeof want - 1);
    ASSERT_EQ_MEM(out, want, n);
    ASSERT_EQ_UINT(intake_pub_batch_format(out, 1, jobs, 1), 0); /* does not fit: 0 */
    ASSERT_EQ_UINT(intake_pub_batch_format(out, sizeof want - 1, jobs, 2), 0);
}

static void test_status_url_percent_encodes(void **state)
{
    (void)state;
    char out[64];
    ASSERT_EQ_UINT(intake_pub_status_url(out, sizeof out, "a-Z_0.~"), 20);
    ASSERT_EQ_STR(out, "/v1/commands/a-Z_0.~");
    ASSERT_GT_UINT(intake_pub_status_url(out, sizeof out, "k:1/2%?#"), 0);
    ASSERT_EQ_STR(out, "/v1/commands/k%3A1%2F2%25%3F%23");
    ASSERT_EQ_UINT(intake_pub_status_url(out, 16, "abc"), 0);
    ASSERT_EQ_UINT(intake_pub_status_url(out, 17, "abc"), 16);
}

static int test_done_calls;

static void test_done(struct intake_pub_job *job)
{
    (void)job;
    test_done_calls++;
}

static void test_without_a_broker_jobs_are_refused_at_once(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof a;
    ASSERT_OK(bind(fd, (struct sockaddr *)&a, sizeof a));
    ASSERT_OK(getsockname(fd, (struct sockaddr *)&a, &length));
    char url[128];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:%d/%%2f", ntohs(a.sin_port));
    struct intake_pub_config c = {url};
    struct intake_pub *pub = intake_pub_new(&c);
    ASSERT_NOT_NULL(pub);
    ASSERT_OK(intake_pub_start(pub)); /* a broker that is down is no failure */
    ASSERT_FALSE(atomic_load(&intake_pub_stats(pub)->connected));
    struct intake_pub_job job = {.key = "k",
                                 .kind = INTAKE_KIND_PURCHASE,
                                 .principal = "admin",
                                 .body = "{}",
                                 .body_length = 2,
                                 .done = test_done};
    ASSERT_ERR(intake_pub_submit(pub, &job), -ENOTCONN);
    intake_pub_stop(pub);
    ASSERT_EQ_INT(test_done_calls, 0);
    intake_pub_free(pub);
    close(fd); /* bound, never listening: connections to it are refused */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefer_names_respond_async),
        cmocka_unit_test(test_format_is_the_contract),
        cmocka_unit_test(test_batch_format_is_the_contract),
        cmocka_unit_test(test_status_url_percent_encodes),
        cmocka_unit_test(test_without_a_broker_jobs_are_refused_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
