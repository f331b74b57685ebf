/*
 * test_log.c - log.c: one line per call site per interval, with the count of the lines held
 * back; every line one line. Reads what log_write writes by pointing stderr at a pipe.
 * log_format.c: text and JSON lines (every JSON line parses, whatever the message holds or
 * however long it is), the thread's trace id and a batch's list of them, access lines.
 */
#include "test_helpers.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "base/log_format.h"

#define CAPTURE_BYTES 65536

struct capture {
    int saved_stderr;
    int pipe_fds[2];
    char text[CAPTURE_BYTES];
};

static void capture_begin(struct capture *c)
{
    ASSERT_OK(pipe(c->pipe_fds));
    ASSERT_OK(fcntl(c->pipe_fds[0], F_SETFL, O_NONBLOCK));
    c->saved_stderr = dup(STDERR_FILENO);
    ASSERT_GE_INT(c->saved_stderr, 0);
    ASSERT_GE_INT(dup2(c->pipe_fds[1], STDERR_FILENO), 0);
}

/* Restores stderr and returns the lines written meanwhile. */
static int capture_end(struct capture *c)
{
    ASSERT_GE_INT(dup2(c->saved_stderr, STDERR_FILENO), 0);
    close(c->saved_stderr);
    close(c->pipe_fds[1]);
    ssize_t n = read(c->pipe_fds[0], c->text, sizeof c->text - 1);
    close(c->pipe_fds[0]);
    c->text[n > 0 ? n : 0] = '\0';
    int lines = 0;
    for (const char *p = c->text; *p != '\0'; p++) {
        lines += *p == '\n';
    }
    return lines;
}

static void log_from_one_site(int i)
{
    log_warn("database or disk is full (%d)", i);
}

static void test_a_flood_from_one_site_is_one_line(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(200);
    capture_begin(&c);
    for (int i = 0; i < 1000; i++) {
        log_from_one_site(i);
    }
    log_info("another site prints on its own");
    ASSERT_EQ_INT(capture_end(&c), 2);
    ASSERT_NOT_NULL(strstr(c.text, "database or disk is full (0)"));
    ASSERT_NOT_NULL(strstr(c.text, "another site"));
    usleep(250 * 1000); /* past the interval: the next line tells the count */
    capture_begin(&c);
    log_from_one_site(1000);
    ASSERT_EQ_INT(capture_end(&c), 1);
    ASSERT_NOT_NULL(strstr(c.text, "(1000)"));
    ASSERT_NOT_NULL(strstr(c.text, "(999 more like this in the last interval, not printed)"));
}

static void test_messages_stay_one_line(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(0);
    capture_begin(&c);
    log_error("postgres: ERROR:  relation \"x\" does not exist\nLINE 1: SELECT\r\n   ^\n");
    ASSERT_EQ_INT(capture_end(&c), 1);
    ASSERT_NOT_NULL(strstr(c.text, "does not exist LINE 1: SELECT"));
    ASSERT_TRUE(c.text[strlen(c.text) - 1] == '\n');
}

static void test_no_limit_prints_every_line(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(0);
    capture_begin(&c);
    for (int i = 0; i < 50; i++) {
        log_from_one_site(i);
    }
    ASSERT_EQ_INT(capture_end(&c), 50);
}

/* Parses one line (without its newline) as a JSON object; fails the test otherwise. */
static json_t *parse_line(const char *line, size_t length)
{
    ASSERT_TRUE(length >= 2 && line[length - 1] == '\n');
    json_error_t error;
    json_t *root = json_loadb(line, length - 1, 0, &error);
    if (root == NULL) {
        fail_msg("not JSON (%s): %.*s", error.text, (int)length, line);
    }
    ASSERT_TRUE(json_is_object(root));
    ASSERT_NULL(memchr(line, '\n', length - 1)); /* one line */
    return root;
}

static struct log_record record(const char *message)
{
    struct log_record rec = {.level = "warn", .file = "src/core/writer.c", .line = 42};
    rec.message = message;
    rec.message_length = strlen(message);
    clock_gettime(CLOCK_REALTIME, &rec.time);
    return rec;
}

static void test_text_lines_are_as_before_and_carry_the_trace_id(void **state)
{
    (void)state;
    char out[LOG_FORMAT_LINE_BYTES_MIN];
    struct log_record rec = record("slow\nbatch");
    size_t n = log_format_line(LOG_FORMAT_TEXT, &rec, out, sizeof out);
    out[n] = '\0';
    /* "<time> warn writer.c:42 slow batch": the time is 24 bytes. */
    ASSERT_EQ_UINT(n, 24 + strlen(" warn writer.c:42 slow batch\n"));
    ASSERT_EQ_STR(out + 24, " warn writer.c:42 slow batch\n");
    rec.trace_id = "abc-1";
    rec.suppressed = 3;
    n = log_format_line(LOG_FORMAT_TEXT, &rec, out, sizeof out);
    out[n] = '\0';
    ASSERT_EQ_STR(out + 24, " warn writer.c:42 trace=abc-1 slow batch (3 more like this in the "
                            "last interval, not printed)\n");
}

static void test_json_lines_parse_whatever_the_message(void **state)
{
    (void)state;
    static const char nasty[] = "quote \" backslash \\ tab \t nl \n bad \xff\xfe utf8 \xc3\xa9 "
                                "\x01 end";
    char out[LOG_FORMAT_LINE_BYTES_MIN];
    struct log_record rec = record(nasty);
    rec.trace_id = "t\"1";
    rec.suppressed = 7;
    size_t n = log_format_line(LOG_FORMAT_JSON, &rec, out, sizeof out);
    json_t *root = parse_line(out, n);
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "level")), "warn");
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "file")), "writer.c");
    ASSERT_EQ_INT(json_integer_value(json_object_get(root, "line")), 42);
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "traceId")), "t\"1");
    ASSERT_EQ_INT(json_integer_value(json_object_get(root, "suppressed")), 7);
    const char *msg = json_string_value(json_object_get(root, "msg"));
    ASSERT_NOT_NULL(strstr(msg, "quote \" backslash \\ tab \t nl \n bad "));
    ASSERT_NOT_NULL(strstr(msg, "\xef\xbf\xbd\xef\xbf\xbd utf8 \xc3\xa9 \x01 end")); /* U+FFFD */
    const char *time = json_string_value(json_object_get(root, "time"));
    ASSERT_EQ_UINT(strlen(time), 24);
    ASSERT_TRUE(time[10] == 'T' && time[23] == 'Z');
    json_decref(root);
}

static void test_a_cut_json_line_still_parses(void **state)
{
    (void)state;
    char message[4000];
    for (size_t i = 0; i < sizeof message - 1; i++) {
        message[i] = "\"a\\\x01"[i % 4]; /* every kind of escape, cut anywhere */
    }
    message[sizeof message - 1] = '\0';
    for (size_t size = LOG_FORMAT_LINE_BYTES_MIN; size < LOG_FORMAT_LINE_BYTES_MIN + 8; size++) {
        char out[LOG_FORMAT_LINE_BYTES_MIN + 8];
        struct log_record rec = record(message);
        rec.suppressed = 1;
        size_t n = log_format_line(LOG_FORMAT_JSON, &rec, out, size);
        ASSERT_LE_UINT(n, size);
        json_t *root = parse_line(out, n);
        ASSERT_GT_UINT(strlen(json_string_value(json_object_get(root, "msg"))), 100);
        ASSERT_EQ_INT(json_integer_value(json_object_get(root, "suppressed")), 1);
        json_decref(root);
    }
}

static void test_a_batch_lists_its_trace_ids_within_a_budget(void **state)
{
    (void)state;
    enum { IDS = 100 };
    char storage[IDS][32];
    const char *ids[IDS];
    size_t known = 0;
    for (size_t i = 0; i < IDS; i++) {
        snprintf(storage[i], sizeof storage[i], i % 10 == 9 ? "" : "trace-%018zu", i);
        ids[i] = storage[i];
        known += storage[i][0] != '\0';
    }
    char out[2048];
    struct log_record rec = record("batch failed");
    rec.trace_ids = ids;
    rec.trace_id_count = IDS;
    size_t n = log_format_line(LOG_FORMAT_JSON, &rec, out, sizeof out);
    json_t *root = parse_line(out, n);
    json_t *list = json_object_get(root, "traceIds");
    ASSERT_TRUE(json_is_array(list));
    ASSERT_GE_UINT(json_array_size(list), 10);
    ASSERT_EQ_STR(json_string_value(json_array_get(list, 0)), "trace-000000000000000000");
    ASSERT_EQ_UINT(json_array_size(list) +
                       (size_t)json_integer_value(json_object_get(root, "traceIdsOmitted")),
                   known); /* the empty ones (workers' steps) are left out, not counted */
    json_decref(root);
    n = log_format_line(LOG_FORMAT_TEXT, &rec, out, sizeof out);
    out[n] = '\0';
    ASSERT_NOT_NULL(strstr(out, " traces=trace-000000000000000000,trace-000000000000000001,"));
    ASSERT_NOT_NULL(strstr(out, " more) batch failed\n"));
    const char *none[] = {"", ""};
    rec.trace_ids = none;
    rec.trace_id_count = 2;
    n = log_format_line(LOG_FORMAT_JSON, &rec, out, sizeof out);
    root = parse_line(out, n);
    ASSERT_NULL(json_object_get(root, "traceIds")); /* none known: no list */
    json_decref(root);
}

static void test_access_lines_have_every_field(void **state)
{
    (void)state;
    char out[LOG_FORMAT_LINE_BYTES_MIN];
    struct log_access a = {.method = "POST",
                           .method_length = 4,
                           .route = "/v1/orders/{id}",
                           .status = 201,
                           .duration_us = 1234567,
                           .trace_id = "abc",
                           .principal = "alice"};
    clock_gettime(CLOCK_REALTIME, &a.time);
    size_t n = log_format_access(LOG_FORMAT_JSON, &a, out, sizeof out);
    json_t *root = parse_line(out, n);
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "type")), "access");
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "method")), "POST");
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "route")), "/v1/orders/{id}");
    ASSERT_EQ_INT(json_integer_value(json_object_get(root, "status")), 201);
    ASSERT_TRUE(json_real_value(json_object_get(root, "durationMs")) == 1234.567);
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "traceId")), "abc");
    ASSERT_EQ_STR(json_string_value(json_object_get(root, "principal")), "alice");
    json_decref(root);
    a.route = NULL;
    a.principal = NULL;
    a.status = 0;
    n = log_format_access(LOG_FORMAT_JSON, &a, out, sizeof out);
    root = parse_line(out, n);
    ASSERT_TRUE(json_is_null(json_object_get(root, "route")));
    ASSERT_TRUE(json_is_null(json_object_get(root, "principal")));
    json_decref(root);
    n = log_format_access(LOG_FORMAT_TEXT, &a, out, sizeof out);
    out[n] = '\0';
    ASSERT_EQ_STR(out + 24, " access method=POST route=- status=0 durationMs=1234.567 trace=abc "
                            "principal=-\n");
}

static void log_from_a_traced_site(void)
{
    log_debug("applying");
}

static void test_log_write_carries_the_threads_trace_id(void **state)
{
    (void)state;
    struct capture c;
    log_set_repeat_interval_ms(1000); /* debug lines are never held back all the same */
    log_set_level(LOG_DEBUG);
    log_set_format(LOG_FORMAT_JSON);
    const char *batch[] = {"b-1", "b-2"};
    capture_begin(&c);
    log_trace_set("req-7");
    ASSERT_EQ_STR(log_trace_current(), "req-7");
    log_from_a_traced_site();
    log_from_a_traced_site();
    log_trace_set(NULL);
    log_trace_set_batch(batch, 2);
    log_info("the batch");
    log_trace_set_batch(NULL, 0);
    log_info("nothing");
    ASSERT_EQ_INT(capture_end(&c), 4);
    log_set_format(LOG_FORMAT_TEXT);
    log_set_level(LOG_INFO);
    const char *line = c.text;
    for (int i = 0; i < 4; i++) {
        const char *end = strchr(line, '\n');
        json_t *root = parse_line(line, (size_t)(end - line) + 1);
        json_t *trace = json_object_get(root, "traceId");
        json_t *list = json_object_get(root, "traceIds");
        if (i < 2) {
            ASSERT_EQ_STR(json_string_value(trace), "req-7");
            ASSERT_EQ_STR(json_string_value(json_object_get(root, "level")), "debug");
        } else if (i == 2) {
            ASSERT_NULL(trace);
            ASSERT_EQ_UINT(json_array_size(list), 2);
            ASSERT_EQ_STR(json_string_value(json_array_get(list, 1)), "b-2");
        } else {
            ASSERT_TRUE(trace == NULL && list == NULL);
        }
        json_decref(root);
        line = end + 1;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_flood_from_one_site_is_one_line),
        cmocka_unit_test(test_messages_stay_one_line),
        cmocka_unit_test(test_no_limit_prints_every_line),
        cmocka_unit_test(test_text_lines_are_as_before_and_carry_the_trace_id),
        cmocka_unit_test(test_json_lines_parse_whatever_the_message),
        cmocka_unit_test(test_a_cut_json_line_still_parses),
        cmocka_unit_test(test_a_batch_lists_its_trace_ids_within_a_budget),
        cmocka_unit_test(test_access_lines_have_every_field),
        cmocka_unit_test(test_log_write_carries_the_threads_trace_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
