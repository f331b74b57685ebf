/*
 * test_framing.c - the request-head scan and the framing rules (framing.c): which header lines
 * it counts (names of any case, CRLF or bare LF line ends, obs-fold continuations), where it
 * says a head ends (never inside a body, nothing without the empty line, h2o's leading empty
 * line skipped), and which combinations framing_refusal refuses.
 *
 * The black-box side (h2o in front, the socket closed after the 400, the smuggled request not
 * run) is tests/blackbox/test_framing.py. Read test_writer.c next.
 */
#include "test_helpers.h"

#include "../../src/http/framing.c"

static struct framing_head scan_str(const char *text)
{
    struct framing_head head;
    framing_scan(text, strlen(text), &head);
    return head;
}

static void test_plain_head_is_counted(void **state)
{
    (void)state;
    const char *text = "POST /v1/purchase HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    struct framing_head head = scan_str(text);
    ASSERT_EQ_UINT(head.length, strlen(text) - 2); /* the body is not part of the head */
    ASSERT_EQ_UINT(head.content_length_count, 1);
    ASSERT_EQ_UINT(head.transfer_encoding_count, 0);
    ASSERT_EQ_UINT(head.folded_count, 0);
    ASSERT_NULL(framing_refusal(&head, false));
}

static void test_names_of_any_case_and_bare_lf(void **state)
{
    (void)state;
    const char *text = "POST / HTTP/1.1\nTRANSFER-encoding: chunked\ncontent-LENGTH: 5\n\n";
    struct framing_head head = scan_str(text);
    ASSERT_EQ_UINT(head.length, strlen(text));
    ASSERT_EQ_UINT(head.content_length_count, 1);
    ASSERT_EQ_UINT(head.transfer_encoding_count, 1);
    ASSERT_NOT_NULL(framing_refusal(&head, false));
}

static void test_similar_names_are_not_framing(void **state)
{
    (void)state;
    /* Prefixes, suffixes and a header named in a value are other headers. */
    struct framing_head head = scan_str("GET / HTTP/1.1\r\nContent-Lengths: 1\r\n"
                                        "X-Transfer-Encoding: chunked\r\nContent-Lengt: 2\r\n"
                                        "X-A: Content-Length: 3\r\nTransfer-Encodin: x\r\n\r\n");
    ASSERT_GT_UINT(head.length, 0);
    ASSERT_EQ_UINT(head.content_length_count, 0);
    ASSERT_EQ_UINT(head.transfer_encoding_count, 0);
    ASSERT_NULL(framing_refusal(&head, false));
}

static void test_head_ends_at_the_first_empty_line(void **state)
{
    (void)state;
    /* Body bytes that look like a head are not scanned. */
    const char *text = "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n"
                       "Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
    struct framing_head head = scan_str(text);
    ASSERT_EQ_UINT(head.length, strlen("POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n"));
    ASSERT_EQ_UINT(head.content_length_count, 1);
    ASSERT_EQ_UINT(head.transfer_encoding_count, 0);
    ASSERT_NULL(framing_refusal(&head, false));
}

static void test_incomplete_head_has_no_length(void **state)
{
    (void)state;
    const char *cases[] = {
        "",
        "POST / HTTP/1.1",
        "POST / HTTP/1.1\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 2\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r",
        "\r",
        "\rPOST / HTTP/1.1\r\n\r\n", /* CR without LF before the request line */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct framing_head head = scan_str(cases[i]);
        ASSERT_EQ_UINT(head.length, 0);
    }
}

static void test_leading_empty_line_is_skipped(void **state)
{
    (void)state;
    /* picohttpparser skips one empty line before the request line; so do we, and the request
     * line after it is not read as a header (here it would look like one). */
    const char *text = "\r\nContent-Length: 5 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    struct framing_head head = scan_str(text);
    ASSERT_EQ_UINT(head.length, strlen(text));
    ASSERT_EQ_UINT(head.content_length_count, 0);
    ASSERT_EQ_UINT(head.transfer_encoding_count, 1);
    ASSERT_NULL(framing_refusal(&head, false));
    head = scan_str("\nGET / HTTP/1.1\nContent-Length: 0\n\n");
    ASSERT_EQ_UINT(head.content_length_count, 1);
}

static void test_refusals(void **state)
{
    (void)state;
    struct {
        const char *text;
        bool http_1_0;
        bool refused;
    } cases[] = {
        {"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 1},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 0, 1},
        {"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0, 1},
        {"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 0, 1},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 1},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 1, 1},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 0},
        {"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\n", 1, 0},
        {"POST / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n", 0, 1},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\tgzip\r\n\r\n", 0, 1},
        {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct framing_head head = scan_str(cases[i].text);
        ASSERT_EQ_UINT(head.length, strlen(cases[i].text));
        const char *why = framing_refusal(&head, cases[i].http_1_0);
        if (cases[i].refused) {
            ASSERT_NOT_NULL(why);
            ASSERT_GT_UINT(strlen(why), 10);
        } else {
            ASSERT_NULL(why);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_head_is_counted),
        cmocka_unit_test(test_names_of_any_case_and_bare_lf),
        cmocka_unit_test(test_similar_names_are_not_framing),
        cmocka_unit_test(test_head_ends_at_the_first_empty_line),
        cmocka_unit_test(test_incomplete_head_has_no_length),
        cmocka_unit_test(test_leading_empty_line_is_skipped),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
