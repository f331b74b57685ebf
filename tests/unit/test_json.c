/*
 * test_json.c - the JSON writer (json_out.c) and problem+json bodies (problem.c).
 *
 * Output is checked byte for byte where the shape is fixed, and otherwise parsed back with
 * jansson (the parser the service itself uses for request bodies), so escaping is judged by
 * a real JSON parser rather than by this file's opinion. Overflow is checked with guard bytes
 * around the buffer. Read test_domain.c next.
 */
#include <jansson.h>
#include <time.h>

#include "test_helpers.h"

#include "base/clock.h"
#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_limits.h"
#include "base/problem.h"
#include "base/svc_assert.h"

#define GUARD_BYTES 64
#define GUARD_VALUE 0x5a

/* A buffer of size bytes with GUARD_BYTES of GUARD_VALUE on each side. */
struct guarded {
    char memory[GUARD_BYTES + 4096 + GUARD_BYTES];
    size_t size;
};

static char *guarded_init(struct guarded *g, size_t size)
{
    SVC_ASSERT(size <= 4096);
    memset(g->memory, GUARD_VALUE, sizeof g->memory);
    g->size = size;
    return g->memory + GUARD_BYTES;
}

static void assert_guards_intact(const struct guarded *g)
{
    for (size_t i = 0; i < GUARD_BYTES; i++) {
        ASSERT_EQ_INT((unsigned char)g->memory[i], GUARD_VALUE);
    }
    for (size_t i = GUARD_BYTES + g->size; i < sizeof g->memory; i++) {
        ASSERT_EQ_INT((unsigned char)g->memory[i], GUARD_VALUE);
    }
}

/* Parses text (length bytes) as one JSON value; fails the test with jansson's reason if not. */
static json_t *parse_or_fail(const char *text, size_t length)
{
    json_error_t error;
    json_t *value = json_loadb(text, length, JSON_ALLOW_NUL | JSON_DECODE_ANY, &error);
    if (value == NULL) {
        TEST_FAIL("not JSON (%s at %d): %.*s", error.text, error.position, (int)length, text);
    }
    return value;
}

/* ---- escaping ---------------------------------------------------------------------------- */

static void test_empty_buffer(void **state)
{
    (void)state;
    char data[4] = {'x', 'x', 'x', 'x'};
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    ASSERT_EQ_UINT(b.length, 0);
    ASSERT_EQ_STR(data, "");
    ASSERT_TRUE(jbuf_ok(&b));
    jbuf_str(&b, "");
    ASSERT_EQ_STR(data, "\"\"");
    ASSERT_EQ_UINT(b.length, 2);
}

static void test_escapes_quotes_and_backslash(void **state)
{
    (void)state;
    char data[64];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_str(&b, "a\"b\\c");
    ASSERT_TRUE(jbuf_ok(&b));
    ASSERT_EQ_STR(data, "\"a\\\"b\\\\c\"");
    ASSERT_EQ_UINT(b.length, strlen(data));
    jbuf_init(&b, data, sizeof data);
    jbuf_str(&b, "\"\\\"");
    ASSERT_EQ_STR(data, "\"\\\"\\\\\\\"\"");
}

static void test_escapes_control_characters_as_u00xx(void **state)
{
    (void)state;
    char data[256];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_str(&b, "\x01\n\t\r\x1fx\x7f");
    ASSERT_TRUE(jbuf_ok(&b));
    /* DEL (0x7f) is legal unescaped in JSON and passes through. */
    ASSERT_EQ_STR(data, "\"\\u0001\\u000a\\u0009\\u000d\\u001fx\x7f\"");
    jbuf_init(&b, data, sizeof data);
    jbuf_str_n(&b, "a\0b", 3);
    ASSERT_EQ_STR(data, "\"a\\u0000b\"");
}

static void test_utf8_passes_through(void **state)
{
    (void)state;
    const char *text = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac";
    char data[128];
    char expected[128];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_str(&b, text);
    ASSERT_TRUE(jbuf_ok(&b));
    snprintf(expected, sizeof expected, "\"%s\"", text);
    ASSERT_EQ_STR(data, expected);
}

/* Every byte 0x00..0x7f, and UTF-8 around it, survives a round trip through a JSON parser. */
static void test_every_ascii_byte_round_trips(void **state)
{
    (void)state;
    char input[128 + 16];
    size_t length = 0;
    for (int c = 0; c < 128; c++) {
        input[length++] = (char)c;
    }
    memcpy(input + length, "\xc3\xa9\xf0\x9f\x98\x80", 6);
    length += 6;
    char data[1024];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_str_n(&b, input, length);
    ASSERT_TRUE(jbuf_ok(&b));
    ASSERT_EQ_UINT(strlen(data), b.length); /* no raw NUL inside the output */
    json_t *value = parse_or_fail(data, b.length);
    ASSERT_TRUE(json_is_string(value));
    ASSERT_EQ_UINT(json_string_length(value), length);
    ASSERT_EQ_MEM(json_string_value(value), input, length);
    json_decref(value);
}

static void test_integers(void **state)
{
    (void)state;
    char data[128];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_lit(&b, "[");
    jbuf_int(&b, 0);
    jbuf_lit(&b, ",");
    jbuf_int(&b, -1);
    jbuf_lit(&b, ",");
    jbuf_int(&b, INT64_MAX);
    jbuf_lit(&b, ",");
    jbuf_int(&b, INT64_MIN);
    jbuf_lit(&b, "]");
    ASSERT_TRUE(jbuf_ok(&b));
    ASSERT_EQ_STR(data, "[0,-1,9223372036854775807,-9223372036854775808]");
}

/* ---- overflow ---------------------------------------------------------------------------- */

/* Writes a fixed document; the same calls whatever the buffer size. */
static void write_document(struct jbuf *b)
{
    jbuf_lit(b, "{");
    jbuf_kv_str(b, "name", "a \"quoted\"\n\x01 caf\xc3\xa9");
    jbuf_kv_int(b, "qty", -1234567890123LL);
    jbuf_key(b, "lines");
    jbuf_lit(b, "[{");
    jbuf_kv_str(b, "sku", "SKU-1");
    jbuf_lit(b, "}]");
    jbuf_kv_time(b, "at", 1700000000123LL);
    jbuf_lit(b, "}");
}

static void test_overflow_marks_and_never_writes_past_size(void **state)
{
    (void)state;
    char full[512];
    struct jbuf b;
    jbuf_init(&b, full, sizeof full);
    write_document(&b);
    ASSERT_TRUE(jbuf_ok(&b));
    size_t full_length = b.length;
    json_decref(parse_or_fail(full, full_length));
    for (size_t size = 1; size <= full_length + 8; size++) {
        struct guarded g;
        char *data = guarded_init(&g, size);
        jbuf_init(&b, data, size);
        write_document(&b);
        assert_guards_intact(&g);
        ASSERT_LT_UINT(b.length, size);
        if (size > full_length) {
            /* The boundary both ways: exactly full_length + 1 bytes is enough. */
            ASSERT_TRUE(jbuf_ok(&b));
            ASSERT_EQ_STR(data, full);
        } else {
            ASSERT_FALSE(jbuf_ok(&b));
            ASSERT_EQ_UINT(strlen(data), b.length); /* still a terminated prefix */
            ASSERT_EQ_MEM(data, full, b.length);
        }
    }
}

static void test_overflow_is_sticky(void **state)
{
    (void)state;
    struct guarded g;
    char *data = guarded_init(&g, 8);
    struct jbuf b;
    jbuf_init(&b, data, 8);
    jbuf_lit(&b, "0123456789"); /* does not fit: nothing of it is written */
    ASSERT_FALSE(jbuf_ok(&b));
    ASSERT_EQ_UINT(b.length, 0);
    jbuf_lit(&b, "ab"); /* would fit, but the buffer is already unusable */
    ASSERT_FALSE(jbuf_ok(&b));
    ASSERT_EQ_UINT(b.length, 0);
    jbuf_str(&b, "\x01\x01\x01");
    jbuf_kv_int(&b, "k", 1);
    ASSERT_FALSE(jbuf_ok(&b));
    assert_guards_intact(&g);
    /* Exactly size - 1 bytes fit (the NUL takes the last). */
    jbuf_init(&b, data, 8);
    jbuf_lit(&b, "0123456");
    ASSERT_TRUE(jbuf_ok(&b));
    ASSERT_EQ_STR(data, "0123456");
    jbuf_lit(&b, "7");
    ASSERT_FALSE(jbuf_ok(&b));
    assert_guards_intact(&g);
}

static void test_escaped_string_overflow(void **state)
{
    (void)state;
    /* Each control byte grows sixfold: 10 of them need 62 bytes with quotes and NUL. */
    const char *controls = "\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c";
    for (size_t size = 1; size <= 64; size++) {
        struct guarded g;
        char *data = guarded_init(&g, size);
        struct jbuf b;
        jbuf_init(&b, data, size);
        jbuf_str(&b, controls);
        assert_guards_intact(&g);
        ASSERT_EQ_INT(jbuf_ok(&b), size >= 63);
        ASSERT_LT_UINT(b.length, size);
    }
}

/* ---- keys -------------------------------------------------------------------------------- */

static void test_key_comma_logic(void **state)
{
    (void)state;
    char data[256];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_key(&b, "first"); /* at the very start: no comma */
    ASSERT_EQ_STR(data, "\"first\":");
    jbuf_init(&b, data, sizeof data);
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "a", 1);   /* after '{': no comma */
    jbuf_kv_str(&b, "b", "x"); /* after a value: comma */
    jbuf_key(&b, "c");
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "d", 2); /* nested object: no comma */
    jbuf_lit(&b, "}");
    jbuf_key(&b, "e"); /* after '}': comma */
    jbuf_lit(&b, "[{");
    jbuf_kv_int(&b, "f", 3); /* after '[{': no comma */
    jbuf_lit(&b, "},{");
    jbuf_kv_int(&b, "g", 4);
    jbuf_lit(&b, "}]");
    jbuf_kv_str(&b, "h", ""); /* after ']': comma */
    jbuf_lit(&b, "}");
    ASSERT_TRUE(jbuf_ok(&b));
    ASSERT_EQ_STR(data,
                  "{\"a\":1,\"b\":\"x\",\"c\":{\"d\":2},\"e\":[{\"f\":3},{\"g\":4}],\"h\":\"\"}");
    json_decref(parse_or_fail(data, b.length));
}

static void test_key_is_escaped(void **state)
{
    (void)state;
    char data[64];
    struct jbuf b;
    jbuf_init(&b, data, sizeof data);
    jbuf_lit(&b, "{");
    jbuf_kv_int(&b, "we\"ird", 1);
    jbuf_lit(&b, "}");
    ASSERT_EQ_STR(data, "{\"we\\\"ird\":1}");
}

static void test_kv_time_format(void **state)
{
    (void)state;
    static const struct {
        int64_t wall_ms;
        const char *text;
    } cases[] = {
        {0, "1970-01-01T00:00:00.000Z"},
        {1, "1970-01-01T00:00:00.001Z"},
        {999, "1970-01-01T00:00:00.999Z"},
        {1700000000123LL, "2023-11-14T22:13:20.123Z"},
        {951868799999LL, "2000-02-29T23:59:59.999Z"}, /* leap day, last millisecond */
        {4102444800000LL, "2100-01-01T00:00:00.000Z"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char data[64];
        char expected[64];
        struct jbuf b;
        jbuf_init(&b, data, sizeof data);
        jbuf_lit(&b, "{");
        jbuf_kv_time(&b, "at", cases[i].wall_ms);
        jbuf_lit(&b, "}");
        snprintf(expected, sizeof expected, "{\"at\":\"%s\"}", cases[i].text);
        ASSERT_EQ_STR(data, expected);
    }
}

/* ---- problem+json ------------------------------------------------------------------------ */

static const char *member_string(json_t *object, const char *key)
{
    json_t *member = json_object_get(object, key);
    if (!json_is_string(member)) {
        TEST_FAIL("member \"%s\" is not a string", key);
    }
    return json_string_value(member);
}

static int64_t member_int(json_t *object, const char *key)
{
    json_t *member = json_object_get(object, key);
    if (!json_is_integer(member)) {
        TEST_FAIL("member \"%s\" is not an integer", key);
    }
    return (int64_t)json_integer_value(member);
}

static void test_problem_every_error(void **state)
{
    (void)state;
    for (int i = 0; i < SVC_ERR_INDEX_COUNT; i++) {
        int err = -(SVC_ERR_BASE + i);
        char out[REPLY_BODY_BYTES_MAX];
        size_t length = problem_format(out, sizeof out, err, "some \"detail\"\n", "available", 7);
        ASSERT_EQ_UINT(length, strlen(out));
        json_t *body = parse_or_fail(out, length);
        ASSERT_TRUE(json_is_object(body));
        ASSERT_EQ_UINT(json_object_size(body), 6);
        ASSERT_EQ_STR(member_string(body, "type"), "about:blank");
        ASSERT_EQ_STR(member_string(body, "title"), svc_err_message(err));
        ASSERT_EQ_INT(member_int(body, "status"), svc_err_http_status(err));
        ASSERT_EQ_STR(member_string(body, "code"), svc_err_name(err));
        ASSERT_EQ_STR(member_string(body, "detail"), "some \"detail\"\n");
        ASSERT_EQ_INT(member_int(body, "available"), 7);
        json_decref(body);
    }
}

static void test_problem_without_detail_or_extra(void **state)
{
    (void)state;
    char out[REPLY_BODY_BYTES_MAX];
    size_t length = problem_format(out, sizeof out, SVC_ESTORAGE_UNAVAILABLE, NULL, NULL, 0);
    ASSERT_EQ_STR(out, "{\"type\":\"about:blank\",\"title\":\"Storage unavailable\","
                       "\"status\":503,\"code\":\"storage_unavailable\"}");
    ASSERT_EQ_UINT(length, strlen(out));
    length = problem_format(out, sizeof out, SVC_EINSUFFICIENT_STOCK, NULL, "available", -5);
    json_t *body = parse_or_fail(out, length);
    ASSERT_EQ_UINT(json_object_size(body), 5);
    ASSERT_NULL(json_object_get(body, "detail"));
    ASSERT_EQ_INT(member_int(body, "available"), -5);
    json_decref(body);
}

/* A 10 KB detail is cut, the body still fits REPLY_BODY_BYTES_MAX and stays valid JSON. */
static void check_long_detail(const char *detail)
{
    struct guarded g;
    char *out = guarded_init(&g, REPLY_BODY_BYTES_MAX);
    size_t length = problem_format(out, REPLY_BODY_BYTES_MAX, SVC_EVALIDATION, detail,
                                   "currentVersion", INT64_MAX);
    assert_guards_intact(&g);
    ASSERT_LT_UINT(length, REPLY_BODY_BYTES_MAX);
    ASSERT_EQ_UINT(length, strlen(out));
    json_t *body = parse_or_fail(out, length);
    const char *kept = member_string(body, "detail");
    size_t kept_length = json_string_length(json_object_get(body, "detail"));
    ASSERT_GT_UINT(kept_length, 0);
    ASSERT_LT_UINT(kept_length, strlen(detail));
    ASSERT_EQ_MEM(kept, detail, kept_length); /* a prefix of what was given */
    ASSERT_EQ_INT(member_int(body, "currentVersion"), INT64_MAX);
    ASSERT_EQ_STR(member_string(body, "code"), "validation_failed");
    json_decref(body);
}

static void test_problem_long_detail_is_cut(void **state)
{
    (void)state;
    static char detail[10 * 1024 + 1];
    memset(detail, 'x', sizeof detail - 1);
    check_long_detail(detail);
    /* The worst case for escaping: every byte becomes \u00XX. */
    memset(detail, '\x01', sizeof detail - 1);
    check_long_detail(detail);
    memset(detail, '"', sizeof detail - 1);
    check_long_detail(detail);
}

/* The cut must not split a UTF-8 sequence: the body would no longer be valid JSON. */
static void test_problem_long_detail_cut_keeps_utf8_whole(void **state)
{
    (void)state;
    static char detail[10 * 1024 + 8];
    for (size_t shift = 0; shift < 4; shift++) {
        size_t used = 0;
        memset(detail, 'a', shift);
        used = shift;
        while (used + 4 < sizeof detail) {
            memcpy(detail + used, "\xe2\x82\xac", 3); /* the euro sign, 3 bytes */
            used += 3;
        }
        detail[used] = '\0';
        check_long_detail(detail);
        used = shift;
        while (used + 5 < sizeof detail) {
            memcpy(detail + used, "\xf0\x9f\x98\x80", 4); /* an emoji, 4 bytes */
            used += 4;
        }
        detail[used] = '\0';
        check_long_detail(detail);
    }
}

/* RFC 3339 times: the same text as gmtime's for any millisecond, also when the second changes
 * between calls (the formatter keeps the last second's prefix). */
static void test_rfc3339_matches_gmtime(void **state)
{
    (void)state;
    const int64_t times[] = {0,
                             999,
                             1000,
                             1764633600123,
                             1764633600999,
                             1764633601000,
                             1764633599999,
                             951782400007,
                             253402300799999,
                             1764633600123};
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        char got[32];
        clock_format_rfc3339(times[i], got, sizeof got);
        time_t seconds = (time_t)(times[i] / 1000);
        struct tm tm;
        gmtime_r(&seconds, &tm);
        char want[96];
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(times[i] % 1000));
        ASSERT_EQ_STR(got, want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_buffer),
        cmocka_unit_test(test_rfc3339_matches_gmtime),
        cmocka_unit_test(test_escapes_quotes_and_backslash),
        cmocka_unit_test(test_escapes_control_characters_as_u00xx),
        cmocka_unit_test(test_utf8_passes_through),
        cmocka_unit_test(test_every_ascii_byte_round_trips),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_overflow_marks_and_never_writes_past_size),
        cmocka_unit_test(test_overflow_is_sticky),
        cmocka_unit_test(test_escaped_string_overflow),
        cmocka_unit_test(test_key_comma_logic),
        cmocka_unit_test(test_key_is_escaped),
        cmocka_unit_test(test_kv_time_format),
        cmocka_unit_test(test_problem_every_error),
        cmocka_unit_test(test_problem_without_detail_or_extra),
        cmocka_unit_test(test_problem_long_detail_is_cut),
        cmocka_unit_test(test_problem_long_detail_cut_keeps_utf8_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
