/*
 * test_mq.c - the AMQP handle of src/mq/mq.h against a real RabbitMQ.
 *
 * Without a broker: configs outside the limits are refused, and a publisher that cannot
 * connect keeps exactly MQ_WINDOW_MAX messages in its window and then says -EAGAIN, and
 * mq_drop_unconfirmed empties a full window so that it takes as many again. With a
 * broker ($STOCKD_TEST_AMQP, the amqp:// URL of scripts/rabbitmq-start.sh, which
 * scripts/run-tests.sh starts for the whole run; the tests skip without it, and fail when
 * $STOCKD_TEST_REQUIRE_AMQP says one must be there), each on a stream queue of its own that it
 * deletes again: 1000 messages published with confirms come back from offset 0 and from a
 * middle offset with their id, type, headers and body; connections closed by the broker
 * (`rabbitmqctl close_all_connections`, with the node's environment from
 * $STOCKD_TEST_AMQP_DIR/env) lose no confirmed message and leave no gap in the stream, and a
 * consumer whose connection is closed resumes at the offset after the last one it acked, and
 * messages dropped unconfirmed (a relay that lost its lease) are never counted confirmed while
 * those published after them are, with no gap in the stream.
 *
 * The test links the mq library alone (with base below it). Read tests/blackbox/ next.
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_helpers.h"

#include "mq/mq.h"

#define TEST_MESSAGES 1000
/* How long a test waits for the broker before it fails (not a timing assertion: a bound so
 * that a broken broker fails the test instead of hanging it). */
#define TEST_BROKER_WAIT_MS 60000

struct mq_fixture {
    char url[MQ_URL_BYTES_MAX + 1];
    char queue[MQ_QUEUE_BYTES_MAX + 1];
};

/* ---- without a broker ------------------------------------------------------------------- */

static void test_config_outside_the_limits_is_refused(void **state)
{
    (void)state;
    struct mq *mq = NULL;
    struct mq_config c = {"amqp://guest:guest@127.0.0.1:1/%2f", "q", MQ_PUBLISHER, 1 << 20, 0, 0};
    ASSERT_OK(mq_new(&mq, &c));
    ASSERT_NOT_NULL(mq);
    ASSERT_FALSE(mq_connected(mq));
    mq_free(mq);
    c.url = "http://127.0.0.1/";
    ASSERT_ERR(mq_new(&mq, &c), -EINVAL);
    ASSERT_NULL(mq);
    c.url = "amqps://guest:guest@127.0.0.1:1/%2f"; /* no TLS socket */
    ASSERT_ERR(mq_new(&mq, &c), -EINVAL);
    c.url = "amqp://127.0.0.1:1/%2f";
    c.max_length_bytes = 0;
    ASSERT_ERR(mq_new(&mq, &c), -EINVAL);
    c.max_length_bytes = 1;
    c.queue = "";
    ASSERT_ERR(mq_new(&mq, &c), -EINVAL);
}

/* A free loopback port: nothing listens there, so connecting is refused at once. */
static int test_closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ASSERT_EQ_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t length = sizeof a;
    ASSERT_EQ_INT(getsockname(fd, (struct sockaddr *)&a, &length), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_window_is_bounded_without_a_broker(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:%d/%%2f", test_closed_port());
    struct mq_config c = {url, "q", MQ_PUBLISHER, 1 << 20, 0, 0};
    struct mq *mq = NULL;
    ASSERT_OK(mq_new(&mq, &c));
    ASSERT_ERR(mq_connect(mq), -ENOTCONN);
    char big[MQ_BODY_BYTES_MAX + 1];
    memset(big, 'x', sizeof big);
    struct mq_message m = {.id = "1", .type = "T", .body = big, .body_length = sizeof big};
    ASSERT_ERR(mq_publish(mq, &m), -EMSGSIZE);
    m.body_length = 3;
    for (int i = 0; i < MQ_WINDOW_MAX; i++) {
        m.cookie = i + 1;
        ASSERT_OK(mq_publish(mq, &m));
    }
    ASSERT_EQ_UINT(mq_unconfirmed(mq), MQ_WINDOW_MAX);
    ASSERT_ERR(mq_publish(mq, &m), -EAGAIN);
    ASSERT_ERR(mq_poll(mq, 0), -ENOTCONN);
    ASSERT_EQ_INT(mq_confirmed_cookie(mq), 0);
    ASSERT_EQ_UINT(mq_stats(mq)->published, 0);
    ASSERT_GE_UINT(mq_stats(mq)->connect_failures, 1);
    mq_free(mq); /* frees the window's messages */
}

/* A relay that lost its lease drops its window: nothing of it is left to send, the confirmed
 * cookie stays, and the window takes MQ_WINDOW_MAX messages again from a new position. */
static void test_drop_empties_the_window_without_a_broker(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:%d/%%2f", test_closed_port());
    struct mq_config c = {url, "q", MQ_PUBLISHER, 1 << 20, 0, 0};
    struct mq *mq = NULL;
    ASSERT_OK(mq_new(&mq, &c));
    mq_set_confirmed_cookie(mq, 7);
    ASSERT_EQ_UINT(mq_drop_unconfirmed(mq), 0);
    char body[3000];
    memset(body, 'y', sizeof body);
    struct mq_message m = {.id = "1", .type = "T", .body = body, .body_length = sizeof body};
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < MQ_WINDOW_MAX; i++) {
            m.cookie = 8 + i;
            ASSERT_OK(mq_publish(mq, &m));
        }
        ASSERT_ERR(mq_publish(mq, &m), -EAGAIN);
        ASSERT_EQ_UINT(mq_drop_unconfirmed(mq), MQ_WINDOW_MAX);
        ASSERT_EQ_UINT(mq_unconfirmed(mq), 0);
        ASSERT_EQ_INT(mq_confirmed_cookie(mq), 7);
    }
    mq_set_confirmed_cookie(mq, 100); /* allowed: the window is empty */
    ASSERT_EQ_INT(mq_confirmed_cookie(mq), 100);
    ASSERT_EQ_UINT(mq_stats(mq)->published, 0);
    mq_free(mq);
}

/* ---- with a broker ------------------------------------------------------------------------ */

static int mq_setup(void **state)
{
    const char *url = getenv("STOCKD_TEST_AMQP");
    if (url == NULL || url[0] == '\0') {
        *state = NULL;
        return 0;
    }
    static int queues;
    struct mq_fixture *f = calloc(1, sizeof *f);
    snprintf(f->url, sizeof f->url, "%s", url);
    snprintf(f->queue, sizeof f->queue, "stockd.test.%d.%d", (int)getpid(), ++queues);
    *state = f;
    return 0;
}

/* Deletes the test's queue with rabbitmq-c directly (the module has no delete: stockd never
 * deletes its streams). */
static int mq_teardown(void **state)
{
    struct mq_fixture *f = *state;
    if (f == NULL) {
        return 0;
    }
    char parsed[MQ_URL_BYTES_MAX + 1];
    snprintf(parsed, sizeof parsed, "%s", f->url);
    struct amqp_connection_info info;
    ASSERT_EQ_INT(amqp_parse_url(parsed, &info), AMQP_STATUS_OK);
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    ASSERT_EQ_INT(amqp_socket_open(socket, info.host, info.port), AMQP_STATUS_OK);
    amqp_rpc_reply_t reply = amqp_login(conn, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                                        info.user, info.password);
    ASSERT_EQ_INT(reply.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(conn, 1);
    amqp_queue_delete(conn, 1, amqp_cstring_bytes(f->queue), 0, 0);
    ASSERT_EQ_INT(amqp_get_rpc_reply(conn).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
    free(f);
    return 0;
}

static struct mq_fixture *mq_fixture_or_skip(void **state)
{
    const char *required = getenv("STOCKD_TEST_REQUIRE_AMQP");
    if (*state == NULL && required != NULL && required[0] != '\0') {
        fail_msg("$STOCKD_TEST_REQUIRE_AMQP is set but $STOCKD_TEST_AMQP is not");
    }
    if (*state == NULL) {
        print_message("no $STOCKD_TEST_AMQP: skipped\n");
        skip();
    }
    return *state;
}

/* Closes every client connection of the broker (as an operator or a broker restart would). */
static void test_close_all_connections(void)
{
    const char *dir = getenv("STOCKD_TEST_AMQP_DIR");
    if (dir == NULL || dir[0] == '\0') {
        TEST_FAIL("$STOCKD_TEST_AMQP_DIR (the node's directory) is needed to close connections");
    }
    char command[1024];
    snprintf(command, sizeof command,
             ". '%s/env' && /usr/lib/rabbitmq/bin/rabbitmqctl -q close_all_connections "
             "'test_mq closes connections' >/dev/null",
             dir);
    char *argv[] = {"bash", "-c", command, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        execvp("bash", argv);
        _exit(127);
    }
    int status = 0;
    ASSERT_EQ_INT(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static struct mq *test_open(const struct mq_fixture *f, enum mq_role role)
{
    struct mq_config c = {f->url, f->queue, role, 64 << 20, 3600, 64};
    struct mq *mq = NULL;
    ASSERT_OK(mq_new(&mq, &c));
    return mq;
}

/* Publishes message n (id "n", cookie n, body {"n":n}, two headers). */
static int test_publish_n(struct mq *mq, int n)
{
    char id[32];
    char body[64];
    char store[32];
    snprintf(id, sizeof id, "%d", n);
    snprintf(body, sizeof body, "{\"n\":%d}", n);
    snprintf(store, sizeof store, "S%d", n % 7);
    struct mq_message m = {.id = id,
                           .type = n % 2 ? "Odd" : "Even",
                           .body = body,
                           .body_length = strlen(body),
                           .cookie = n};
    m.headers[0] = (struct mq_header){"store", store};
    m.headers[1] = (struct mq_header){"sku", "SKU-1"};
    m.header_count = 2;
    return mq_publish(mq, &m);
}

/* Publishes messages first..last, polling for confirms whenever the window is full. */
static void test_publish_range(struct mq *mq, int first, int last)
{
    for (int n = first; n <= last; n++) {
        int rc;
        for (int tries = 0; (rc = test_publish_n(mq, n)) == -EAGAIN; tries++) {
            ASSERT_LT_INT(tries, TEST_BROKER_WAIT_MS / 10);
            (void)mq_poll(mq, 10);
        }
        ASSERT_OK(rc);
    }
}

/* Polls until every message of the window is confirmed. */
static void test_confirm_all(struct mq *mq)
{
    for (int tries = 0; mq_unconfirmed(mq) > 0; tries++) {
        ASSERT_LT_INT(tries, TEST_BROKER_WAIT_MS / 10);
        (void)mq_poll(mq, 10);
    }
}

/* The next delivery, failing the test when none comes within TEST_BROKER_WAIT_MS. */
static void test_next(struct mq *mq, struct mq_delivery *d)
{
    for (int tries = 0;; tries++) {
        ASSERT_LT_INT(tries, TEST_BROKER_WAIT_MS / 100);
        int rc = mq_next(mq, 100, d);
        if (rc == 1) {
            return;
        }
    }
}

/* A delivery's header by key (the broker keeps no order among them), or NULL. */
static const char *test_header(const struct mq_delivery *d, const char *key)
{
    for (size_t i = 0; i < d->header_count; i++) {
        if (strcmp(d->header_keys[i], key) == 0) {
            return d->header_values[i];
        }
    }
    return NULL;
}

static void test_check_delivery(const struct mq_delivery *d, int n)
{
    char want[64];
    snprintf(want, sizeof want, "%d", n);
    ASSERT_EQ_STR(d->id, want);
    ASSERT_EQ_STR(d->type, n % 2 ? "Odd" : "Even");
    snprintf(want, sizeof want, "{\"n\":%d}", n);
    ASSERT_EQ_UINT(d->body_length, strlen(want));
    ASSERT_EQ_MEM(d->body, want, d->body_length);
    ASSERT_EQ_UINT(d->header_count, 2);
    snprintf(want, sizeof want, "S%d", n % 7);
    ASSERT_EQ_STR(test_header(d, "store"), want);
    ASSERT_EQ_STR(test_header(d, "sku"), "SKU-1");
}

static void test_publish_and_consume_from_offsets(void **state)
{
    struct mq_fixture *f = mq_fixture_or_skip(state);
    struct mq *pub = test_open(f, MQ_PUBLISHER);
    ASSERT_OK(mq_connect(pub));
    test_publish_range(pub, 1, TEST_MESSAGES);
    test_confirm_all(pub);
    ASSERT_EQ_INT(mq_confirmed_cookie(pub), TEST_MESSAGES);
    ASSERT_EQ_UINT(mq_stats(pub)->confirmed, TEST_MESSAGES);
    ASSERT_EQ_UINT(mq_stats(pub)->published, TEST_MESSAGES);
    ASSERT_EQ_UINT(mq_stats(pub)->losses, 0);
    mq_free(pub);

    /* From offset 0: every message once, in order (a new stream's first offset is 0). */
    struct mq *sub = test_open(f, MQ_CONSUMER);
    ASSERT_OK(mq_consume(sub, 0));
    struct mq_delivery d;
    for (int n = 1; n <= TEST_MESSAGES; n++) {
        test_next(sub, &d);
        ASSERT_EQ_INT(d.offset, n - 1);
        test_check_delivery(&d, n);
        ASSERT_OK(mq_ack(sub, &d));
    }
    ASSERT_EQ_INT(mq_resume_offset(sub), TEST_MESSAGES);
    ASSERT_EQ_INT(mq_next(sub, 200, &d), 0); /* nothing past the end */
    mq_free(sub);

    /* From a middle offset, inside a chunk: the messages before it are not handed out. */
    sub = test_open(f, MQ_CONSUMER);
    ASSERT_OK(mq_consume(sub, 617));
    for (int n = 618; n <= TEST_MESSAGES; n++) {
        test_next(sub, &d);
        ASSERT_EQ_INT(d.offset, n - 1);
        test_check_delivery(&d, n);
        ASSERT_OK(mq_ack(sub, &d));
    }
    ASSERT_EQ_INT(mq_next(sub, 200, &d), 0);
    ASSERT_EQ_UINT(mq_stats(sub)->delivered, TEST_MESSAGES - 617);
    mq_free(sub);
}

/* Reads the stream from offset 0 up to the last message `last` and checks that no message is
 * missing and none comes before every earlier one was there once (no gap, duplicates only
 * of messages already seen). Returns how many duplicates it read. */
static int test_read_no_gap(const struct mq_fixture *f, int last)
{
    struct mq *sub = test_open(f, MQ_CONSUMER);
    ASSERT_OK(mq_consume(sub, 0));
    struct mq_delivery d;
    int highest = 0;
    int duplicates = 0;
    int64_t offset = -1;
    while (highest < last) {
        test_next(sub, &d);
        ASSERT_EQ_INT(d.offset, offset + 1);
        offset = d.offset;
        int n = atoi(d.id);
        test_check_delivery(&d, n);
        ASSERT_LE_INT(n, highest + 1); /* never past a message not yet in the stream */
        duplicates += n <= highest ? 1 : 0;
        highest = n > highest ? n : highest;
        ASSERT_OK(mq_ack(sub, &d));
    }
    mq_free(sub);
    return duplicates;
}

static void test_publisher_reconnects_and_loses_nothing_confirmed(void **state)
{
    struct mq_fixture *f = mq_fixture_or_skip(state);
    struct mq *pub = test_open(f, MQ_PUBLISHER);
    ASSERT_OK(mq_connect(pub));
    test_publish_range(pub, 1, 400);
    test_confirm_all(pub);
    /* 300 more sent without waiting for their confirms, then every connection is closed. */
    test_publish_range(pub, 401, 700);
    test_close_all_connections();
    test_publish_range(pub, 701, TEST_MESSAGES);
    test_confirm_all(pub);
    ASSERT_EQ_INT(mq_confirmed_cookie(pub), TEST_MESSAGES);
    ASSERT_EQ_UINT(mq_stats(pub)->confirmed, TEST_MESSAGES);
    ASSERT_GE_UINT(mq_stats(pub)->losses, 1);
    ASSERT_GE_UINT(mq_stats(pub)->connects, 2);
    ASSERT_EQ_UINT(mq_stats(pub)->published, TEST_MESSAGES + mq_stats(pub)->republished);
    mq_free(pub);
    int duplicates = test_read_no_gap(f, TEST_MESSAGES);
    print_message("republished after the close: duplicates in the stream %d\n", duplicates);
}

/* A publisher drops 300 messages sent and not yet confirmed, then publishes from its last
 * confirmed one again (a relay that lost its lease and won it back): the confirms of the
 * dropped ones count nothing and advance nothing; the new ones are all confirmed; the stream
 * has no gap. */
static void test_dropped_messages_are_never_confirmed(void **state)
{
    struct mq_fixture *f = mq_fixture_or_skip(state);
    struct mq *pub = test_open(f, MQ_PUBLISHER);
    ASSERT_OK(mq_connect(pub));
    test_publish_range(pub, 1, 400);
    test_confirm_all(pub);
    ASSERT_EQ_INT(mq_confirmed_cookie(pub), 400);
    test_publish_range(pub, 401, 700);
    ASSERT_EQ_UINT(mq_drop_unconfirmed(pub) + mq_stats(pub)->confirmed, 700);
    ASSERT_EQ_UINT(mq_unconfirmed(pub), 0);
    uint64_t confirmed = mq_stats(pub)->confirmed;
    (void)mq_poll(pub, 100); /* the dropped ones' confirms come: they match nothing */
    ASSERT_EQ_UINT(mq_stats(pub)->confirmed, confirmed);
    mq_set_confirmed_cookie(pub, 400);
    test_publish_range(pub, 401, TEST_MESSAGES);
    test_confirm_all(pub);
    ASSERT_EQ_INT(mq_confirmed_cookie(pub), TEST_MESSAGES);
    ASSERT_EQ_UINT(mq_stats(pub)->confirmed, confirmed + TEST_MESSAGES - 400);
    mq_free(pub);
    int duplicates = test_read_no_gap(f, TEST_MESSAGES);
    print_message("after the drop: duplicates in the stream %d\n", duplicates);
}

static void test_consumer_resumes_after_its_last_ack(void **state)
{
    struct mq_fixture *f = mq_fixture_or_skip(state);
    struct mq *pub = test_open(f, MQ_PUBLISHER);
    test_publish_range(pub, 1, TEST_MESSAGES);
    test_confirm_all(pub);
    mq_free(pub);
    struct mq *sub = test_open(f, MQ_CONSUMER);
    ASSERT_OK(mq_consume(sub, 0));
    struct mq_delivery d;
    for (int n = 1; n <= 300; n++) {
        test_next(sub, &d);
        ASSERT_OK(mq_ack(sub, &d));
    }
    ASSERT_EQ_INT(mq_resume_offset(sub), 300);
    test_close_all_connections();
    /* Deliveries already buffered may still come; after them the loss, then offset 300 on. */
    int64_t offset = 299;
    for (int n = 301; n <= TEST_MESSAGES; n++) {
        test_next(sub, &d);
        ASSERT_EQ_INT(d.offset, offset + 1);
        offset = d.offset;
        test_check_delivery(&d, n);
        (void)mq_ack(sub, &d); /* may find the connection closed: the offset moves anyway */
    }
    ASSERT_GE_UINT(mq_stats(sub)->losses, 1);
    ASSERT_EQ_INT(mq_resume_offset(sub), TEST_MESSAGES);
    mq_free(sub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_outside_the_limits_is_refused),
        cmocka_unit_test(test_window_is_bounded_without_a_broker),
        cmocka_unit_test(test_drop_empties_the_window_without_a_broker),
        cmocka_unit_test_setup_teardown(test_publish_and_consume_from_offsets, mq_setup,
                                        mq_teardown),
        cmocka_unit_test_setup_teardown(test_publisher_reconnects_and_loses_nothing_confirmed,
                                        mq_setup, mq_teardown),
        cmocka_unit_test_setup_teardown(test_dropped_messages_are_never_confirmed, mq_setup,
                                        mq_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_resumes_after_its_last_ack, mq_setup,
                                        mq_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
