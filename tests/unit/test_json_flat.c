/*
 * test_json_flat.c - the allocation-free reader of flat request bodies (base/json_flat.c).
 *
 * Its promise (json_flat.h): it reads only JSON that jansson reads too, as the same members,
 * and hands everything else back. So every case here is also given to jansson: an accepted
 * body must parse there to the same object, and a refused one is either outside the subset
 * (jansson may read it) or no JSON at all. fuzz/fuzz_body.c checks the same on random input.
 */
#include <jansson.h>
#include <string.h>

#include "test_helpers.h"

#include "base/json_flat.h"
#include "json_flat_check.h"

/* Reads text with both parsers; when flat reads it, jansson must agree member for member. */
static bool read_both(const char *text, struct json_flat *flat)
{
    json_error_t error;
    json_t *json = json_loadb(text, strlen(text), JSON_REJECT_DUPLICATES, &error);
    bool ok = json_flat_parse(text, strlen(text), flat);
    if (ok && !json_flat_check_object(flat, json)) {
        fail_msg("json_flat and jansson read %s differently", text);
    }
    json_decref(json);
    return ok;
}

static void test_reads_a_purchase(void **state)
{
    (void)state;
    struct json_flat flat;
    ASSERT_TRUE(read_both(" {\"sku\": \"SKU-1\", \"qty\": 2,\n\t\"customerId\":\"c 1\","
                          " \"storeId\": null, \"x\": true, \"y\": false, \"n\": -0} \r\n",
                          &flat));
    ASSERT_EQ_UINT(flat.count, 7);
    const struct json_flat_member *sku = json_flat_get(&flat, "sku");
    ASSERT_NOT_NULL(sku);
    ASSERT_EQ_INT(sku->type, JSON_FLAT_STRING);
    ASSERT_EQ_UINT(sku->length, 5);
    ASSERT_EQ_MEM(sku->text, "SKU-1", 5);
    ASSERT_EQ_INT(json_flat_get(&flat, "qty")->integer, 2);
    ASSERT_EQ_INT(json_flat_get(&flat, "storeId")->type, JSON_FLAT_NULL);
    ASSERT_NULL(json_flat_get(&flat, "sk"));
    ASSERT_NULL(json_flat_get(&flat, "skuX"));
    ASSERT_TRUE(read_both("{}", &flat));
    ASSERT_EQ_UINT(flat.count, 0);
    ASSERT_TRUE(read_both("{\"big\": 999999999999999999, \"low\": -999999999999999999}", &flat));
    ASSERT_EQ_INT(json_flat_get(&flat, "low")->integer, -999999999999999999LL);
}

/* A message of the stream of commands (intake.h): objects and arrays nested three deep. */
static void test_reads_nested_objects_and_arrays(void **state)
{
    (void)state;
    const char *batch =
        "{\"v\":2,\"kind\":\"batch\",\"commands\":[{\"v\":1,\"body\":{\"sku\":\"A\","
        "\"qty\":1}},{\"v\":1,\"body\":{\"sku\":\"B\",\"x\":null}}],"
        "\"e\":[],\"o\":{},\"a\":[1,\"s\",[],{}]}";
    struct json_flat flat;
    ASSERT_TRUE(read_both(batch, &flat));
    const struct json_flat_member *commands = json_flat_get(&flat, "commands");
    ASSERT_EQ_INT(commands->type, JSON_FLAT_ARRAY);
    ASSERT_EQ_INT(commands->integer, 2); /* the elements, counted as the array was checked */
    ASSERT_EQ_INT(json_flat_get(&flat, "e")->integer, 0);
    ASSERT_EQ_INT(json_flat_get(&flat, "a")->integer, 4);
    size_t at = 0;
    struct json_flat_member element;
    const char *skus[] = {"A", "B"};
    for (size_t i = 0; i < 2; i++) {
        ASSERT_TRUE(json_flat_next(commands, &at, &element));
        ASSERT_EQ_INT(element.type, JSON_FLAT_OBJECT);
        struct json_flat command;
        struct json_flat body;
        ASSERT_TRUE(json_flat_parse(element.text, element.length, &command));
        const struct json_flat_member *b = json_flat_get(&command, "body");
        ASSERT_TRUE(json_flat_parse(b->text, b->length, &body));
        ASSERT_EQ_MEM(json_flat_get(&body, "sku")->text, skus[i], 1);
    }
    ASSERT_FALSE(json_flat_next(commands, &at, &element));
    ASSERT_FALSE(json_flat_next(commands, &at, &element)); /* stays at the end */
    at = 0;
    ASSERT_FALSE(json_flat_next(json_flat_get(&flat, "e"), &at, &element));
    ASSERT_TRUE(read_both("{\"a\":{\"b\":{\"c\":{}}},\"d\":[[[1]]]}", &flat)); /* the deepest */
}

/* Outside the subset, whether JSON or not: each goes to jansson, which gives the answer. */
static void test_hands_back_what_it_does_not_read(void **state)
{
    (void)state;
    static const char *const refused[] = {
        "",
        "[]",
        "\"s\"",
        "{",
        "}",
        "{\"a\":1",
        "{\"a\":1,}",
        "{,}",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":1}x",
        "{\"a\":1}{}",
        "{\"a\":01}",
        "{\"a\":-}",
        "{\"a\":1.0}",
        "{\"a\":1e3}",
        "{\"a\":1E3}",
        "{\"a\":+1}",
        "{\"a\":1x}",
        "{\"a\":1234567890123456789}",
        "{\"a\":\"\\n\"}",
        "{\"a\":\"\\u0000\"}",
        "{\"a\":\"caf\xc3\xa9\"}",
        "{\"a\":\"tab\there\"}",
        "{\"a\\\"\":1}",
        "{\"a\":tru}",
        "{\"a\":truex}",
        "{\"a\":nul}",
        "{\"a\":{\"b\":1,\"b\":2}}",
        "{\"a\":[{\"b\":1,\"b\":2}]}",
        "{\"a\":[1,]}",
        "{\"a\":[,]}",
        "{\"a\":[1}",
        "{\"a\":{]}",
        "{\"a\":{\"b\":{\"c\":{\"d\":{}}}}}",
        "{\"a\":[[[[1]]]]}",
        "{\"a\":[\"\\n\"]}",
        "{\"a\":1,\"a\":2}",
        "{'a':1}",
        "{\"a\":1}\v",
        "\xef\xbb\xbf{}",
    };
    struct json_flat flat;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        if (read_both(refused[i], &flat)) {
            fail_msg("read %s", refused[i]);
        }
    }
    char nul[] = "{\"a\":1}";
    ASSERT_FALSE(json_flat_parse(nul, sizeof nul, &flat)); /* the NUL after it */
}

static void test_members_are_bounded(void **state)
{
    (void)state;
    char text[1024] = "{";
    struct json_flat flat;
    for (int i = 0; i < JSON_FLAT_MEMBERS_MAX + 1; i++) {
        char member[32];
        snprintf(member, sizeof member, "%s\"m%d\":%d", i > 0 ? "," : "", i, i);
        strcat(text, member);
        char closed[sizeof text + 1];
        snprintf(closed, sizeof closed, "%s}", text);
        bool read = read_both(closed, &flat);
        ASSERT_TRUE(read == (i + 1 <= JSON_FLAT_MEMBERS_MAX));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_a_purchase),
        cmocka_unit_test(test_reads_nested_objects_and_arrays),
        cmocka_unit_test(test_hands_back_what_it_does_not_read),
        cmocka_unit_test(test_members_are_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
