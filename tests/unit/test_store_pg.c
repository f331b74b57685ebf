/*
 * test_store_pg.c - the parts of the PostgreSQL backend that need no server: text-array
 * parameters (store_pg_conn.c), the schema's two dialects (schema.c) and backend selection by
 * uri (store.c). The backend itself runs against a real PostgreSQL in the blackbox-pg suite.
 */
#include <string.h>

#include "test_helpers.h"

#include "base/errors.h"
#include "store/schema.h"
#include "store/store.h"
#include "store/store_pg_conn.h"

static void test_array_quotes_and_escapes(void **state)
{
    (void)state;
    struct pg_text t = {NULL, 0, 0};
    pg_array_begin(&t);
    pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{}");
    pg_array_begin(&t);
    pg_array_text(&t, "plain");
    pg_array_text(&t, "with \"quotes\" and \\backslash\\");
    pg_array_text(&t, NULL);
    pg_array_text(&t, "");
    pg_array_text(&t, "{braces},commas");
    pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{\"plain\",\"with \\\"quotes\\\" and \\\\backslash\\\\\",NULL,\"\","
                          "\"{braces},commas\"}");
    pg_text_free(&t);
}

static void test_array_text_n_stops_at_length(void **state)
{
    (void)state;
    struct pg_text t = {NULL, 0, 0};
    pg_array_begin(&t);
    pg_array_text_n(&t, "{\"a\":1}garbage", 7);
    pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{\"{\\\"a\\\":1}\"}");
    pg_text_free(&t);
}

static void test_array_ints_and_growth(void **state)
{
    (void)state;
    struct pg_text t = {NULL, 0, 0};
    pg_array_begin(&t);
    pg_array_int(&t, -9223372036854775807LL - 1);
    pg_array_int(&t, 0);
    pg_array_int(&t, 42);
    pg_array_end(&t);
    ASSERT_EQ_STR(t.data, "{-9223372036854775808,0,42}");
    pg_array_begin(&t); /* reuse: starts over */
    for (int i = 0; i < 10000; i++) {
        pg_array_int(&t, i);
    }
    pg_array_end(&t);
    ASSERT_EQ_UINT(t.length, strlen(t.data));
    ASSERT_TRUE(strncmp(t.data, "{0,1,2,", 7) == 0);
    ASSERT_TRUE(strcmp(t.data + t.length - 6, ",9999}") == 0);
    pg_text_int(&t, 123);
    ASSERT_EQ_STR(t.data, "123");
    pg_text_free(&t);
}

static void test_schema_renders_both_dialects(void **state)
{
    (void)state;
    char out[SCHEMA_STATEMENT_BYTES_MAX];
    int tokens = 0;
    for (int m = 0; m < schema_migration_count; m++) {
        ASSERT_EQ_INT(schema_migrations[m].version, m + 1);
        for (int i = 0; schema_migrations[m].statements[i] != NULL; i++) {
            const char *statement = schema_migrations[m].statements[i];
            tokens += strchr(statement, '@') != NULL;
            ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, statement, out, sizeof out), 0);
            ASSERT_NULL(strchr(out, '@'));
            ASSERT_NULL(strstr(out, "BIGINT"));
            ASSERT_EQ_INT(schema_render(SCHEMA_POSTGRES, statement, out, sizeof out), 0);
            ASSERT_NULL(strchr(out, '@'));
            ASSERT_NULL(strstr(out, "WITHOUT ROWID"));
            ASSERT_NULL(strstr(out, "julianday"));
        }
    }
    ASSERT_GT_INT(tokens, 5);
    ASSERT_EQ_INT(schema_render(SCHEMA_POSTGRES, "a @INT@ b", out, sizeof out), 0);
    ASSERT_EQ_STR(out, "a BIGINT b");
    ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, "x INTEGER PRIMARY KEY", out, sizeof out), 0);
    ASSERT_EQ_STR(out, "x INTEGER PRIMARY KEY");
    ASSERT_EQ_INT(schema_render(SCHEMA_SQLITE, "@INT@", out, 5), SVC_ECAPACITY);
}

static void test_uri_selects_the_backend(void **state)
{
    (void)state;
    ASSERT_TRUE(store_uri_is_postgres("postgres://u@127.0.0.1:5432/db"));
    ASSERT_TRUE(store_uri_is_postgres("postgresql://u@h/db"));
    ASSERT_FALSE(store_uri_is_postgres("./data/stockd.db"));
    ASSERT_FALSE(store_uri_is_postgres("postgres:/missing-slash"));
    ASSERT_FALSE(store_uri_is_postgres(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_quotes_and_escapes),
        cmocka_unit_test(test_array_text_n_stops_at_length),
        cmocka_unit_test(test_array_ints_and_growth),
        cmocka_unit_test(test_schema_renders_both_dialects),
        cmocka_unit_test(test_uri_selects_the_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
