/*
 * test_errors.c - the SVC_ERR_MAP table and its lookups (errors.c).
 *
 * Every operating error must map to a 4xx/5xx status, a distinct non-empty machine code and a
 * title; anything outside the table (0, -errno, neighbours of the range) is "internal" with
 * status 500. The expected values are generated from the same X-macro, so a new row is
 * covered without editing this file. Read test_json.c next.
 */
#include <errno.h>

#include "test_helpers.h"

#include "base/errors.h"

struct expected_err {
    const char *name; /* the enum name, for messages */
    int err;
    int status;
    const char *code;
    const char *title;
};

static const struct expected_err expected_errs[] = {
#define EXPECTED_ROW_(name, status, code, title) {#name, SVC_E##name, status, code, title},
    SVC_ERR_MAP(EXPECTED_ROW_)
#undef EXPECTED_ROW_
};

#define EXPECTED_COUNT (sizeof expected_errs / sizeof expected_errs[0])

static void test_table_has_every_row(void **state)
{
    (void)state;
    ASSERT_EQ_UINT(EXPECTED_COUNT, SVC_ERR_INDEX_COUNT);
    ASSERT_GE_UINT(EXPECTED_COUNT, 1);
    for (size_t i = 0; i < EXPECTED_COUNT; i++) {
        /* Values are dense, negative and far below every errno, so -errno never collides. */
        ASSERT_EQ_INT(expected_errs[i].err, -(SVC_ERR_BASE + (int)i));
        ASSERT_LT_INT(expected_errs[i].err, -4095);
    }
}

static void test_every_error_maps_to_a_status_code_and_title(void **state)
{
    (void)state;
    for (size_t i = 0; i < EXPECTED_COUNT; i++) {
        const struct expected_err *e = &expected_errs[i];
        ASSERT_EQ_INT(svc_err_is_known(e->err), 1);
        int status = svc_err_http_status(e->err);
        ASSERT_EQ_INT(status, e->status);
        ASSERT_GE_INT(status, 400);
        ASSERT_LE_INT(status, 599);
        ASSERT_EQ_STR(svc_err_name(e->err), e->code);
        ASSERT_EQ_STR(svc_err_message(e->err), e->title);
        ASSERT_GT_UINT(strlen(svc_err_name(e->err)), 0);
        ASSERT_GT_UINT(strlen(svc_err_message(e->err)), 0);
        ASSERT_NE_STR(svc_err_name(e->err), "internal"); /* reserved for unknown values */
    }
}

static void test_codes_are_distinct_and_machine_readable(void **state)
{
    (void)state;
    for (size_t i = 0; i < EXPECTED_COUNT; i++) {
        const char *code = svc_err_name(expected_errs[i].err);
        for (const char *c = code; *c != '\0'; c++) {
            ASSERT_TRUE((*c >= 'a' && *c <= 'z') || *c == '_'); /* stable snake_case codes */
        }
        for (size_t j = i + 1; j < EXPECTED_COUNT; j++) {
            ASSERT_NE_STR(code, svc_err_name(expected_errs[j].err));
        }
    }
}

static void test_statuses_of_key_errors(void **state)
{
    (void)state;
    /* The statuses clients and the black-box tests rely on (DESIGN.md, STYLE 8). */
    ASSERT_EQ_INT(svc_err_http_status(SVC_EVALIDATION), 400);
    ASSERT_EQ_INT(svc_err_http_status(SVC_EUNKNOWN_SKU), 404);
    ASSERT_EQ_INT(svc_err_http_status(SVC_EINSUFFICIENT_STOCK), 409);
    ASSERT_EQ_INT(svc_err_http_status(SVC_EBODY_TOO_LARGE), 413);
    ASSERT_EQ_INT(svc_err_http_status(SVC_EIDEM_KEY_REUSED), 422);
    ASSERT_EQ_INT(svc_err_http_status(SVC_EQUEUE_FULL), 429);
    ASSERT_EQ_INT(svc_err_http_status(SVC_ESTORAGE_UNAVAILABLE), 503);
    ASSERT_EQ_STR(svc_err_name(SVC_EINSUFFICIENT_STOCK), "insufficient_stock");
    ASSERT_EQ_STR(svc_err_name(SVC_ESTORAGE_UNAVAILABLE), "storage_unavailable");
}

static void test_unknown_values_are_internal_500(void **state)
{
    (void)state;
    const int unknown[] = {
        0,
        1,
        -1,
        -EAGAIN,
        -ENOMEM,
        -4095,
        SVC_ERR_BASE,
        -(SVC_ERR_BASE - 1),                   /* just above the first code */
        -(SVC_ERR_BASE + SVC_ERR_INDEX_COUNT), /* just below the last code */
        -(SVC_ERR_BASE + SVC_ERR_INDEX_COUNT + 1),
        -(2 * SVC_ERR_BASE),
        INT32_MIN,
        INT32_MAX,
    };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        ASSERT_EQ_INT(svc_err_is_known(unknown[i]), 0);
        ASSERT_EQ_INT(svc_err_http_status(unknown[i]), 500);
        ASSERT_EQ_STR(svc_err_name(unknown[i]), "internal");
        ASSERT_EQ_STR(svc_err_message(unknown[i]), "Internal error");
    }
}

static void test_range_boundaries_are_known(void **state)
{
    (void)state;
    /* Both ends of the table, the boundaries svc_err_lookup's range check must include. */
    int first = -SVC_ERR_BASE;
    int last = -(SVC_ERR_BASE + SVC_ERR_INDEX_COUNT - 1);
    ASSERT_TRUE(svc_err_is_known(first));
    ASSERT_TRUE(svc_err_is_known(last));
    ASSERT_EQ_STR(svc_err_name(first), expected_errs[0].code);
    ASSERT_EQ_STR(svc_err_name(last), expected_errs[EXPECTED_COUNT - 1].code);
    ASSERT_EQ_INT(svc_err_http_status(last), expected_errs[EXPECTED_COUNT - 1].status);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_has_every_row),
        cmocka_unit_test(test_every_error_maps_to_a_status_code_and_title),
        cmocka_unit_test(test_codes_are_distinct_and_machine_readable),
        cmocka_unit_test(test_statuses_of_key_errors),
        cmocka_unit_test(test_unknown_values_are_internal_500),
        cmocka_unit_test(test_range_boundaries_are_known),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
