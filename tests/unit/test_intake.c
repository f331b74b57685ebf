/*
 * test_intake.c - the decoding of a message of the stream of commands (intake_consume_decode,
 * the envelope of intake/intake.h): a well-formed message becomes the keyed command with the
 * message's principal and key and the fingerprint of what it asks; every envelope error is a
 * refusal that names its cause (the consumer's dead letters); the route's body decoder is the
 * one called, and its refusal is passed on with its reason.
 *
 * The body decoder here is a stub that reads sku and qty: the routes' own decoders
 * (api_decode_async) are exercised end to end by tests/blackbox/test_intake.py.
 */
#include <string.h>

#include "test_helpers.h"

#include "intake/intake_consume.h"

static char seen_route[32];

/* Reads {sku, qty >= 1} (the lines of an order: qty into its first line). */
static int stub_decode(const char *route, json_t *body, struct command *cmd, const char **why)
{
    snprintf(seen_route, sizeof seen_route, "%s", route);
    json_t *sku = json_object_get(body, "sku");
    json_t *qty = json_object_get(body, "qty");
    if (!json_is_string(sku) || !json_is_integer(qty) || json_integer_value(qty) < 1) {
        *why = "qty must be at least 1";
        return SVC_EVALIDATION;
    }
    bool order = strcmp(route, "/v1/orders") == 0;
    cmd->kind = order ? CMD_ORDER_CREATE : CMD_PURCHASE;
    snprintf(cmd->sku, sizeof cmd->sku, "%s", json_string_value(sku));
    cmd->qty = json_integer_value(qty);
    if (order) {
        cmd->lines->count = 1;
        cmd->lines->items[0].qty = cmd->qty;
    }
    return 0;
}

static struct command cmd;
static struct cmd_lines lines;
static char why[REASON_BYTES_MAX + 1];

static int decode(const char *body, const char *id, const char *type, const char *principal,
                  bool with_lines)
{
    memset(&cmd, 0, sizeof cmd);
    cmd.lines = with_lines ? &lines : NULL;
    why[0] = '\0';
    return intake_consume_decode(body, strlen(body), id, type, principal, stub_decode, &cmd, why,
                                 sizeof why);
}

#define GOOD                                                                             \
    "{\"v\":1,\"kind\":\"purchase\",\"principal\":\"alice\",\"idempotencyKey\":\"k-1\"," \
    "\"route\":\"/v1/purchase\",\"body\":{\"sku\":\"S\",\"qty\":2}}"

static void test_purchase(void **state)
{
    (void)state;
    ASSERT_EQ_INT(decode(GOOD, "k-1", "purchase", "alice", true), 0);
    ASSERT_EQ_INT(cmd.kind, CMD_PURCHASE);
    ASSERT_EQ_STR(seen_route, "/v1/purchase");
    ASSERT_EQ_STR(cmd.principal, "alice");
    ASSERT_EQ_STR(cmd.idem_key, "k-1");
    ASSERT_TRUE(cmd.has_idem_key);
    ASSERT_EQ_INT(cmd.qty, 2);
    ASSERT_EQ_UINT(cmd.fingerprint, command_fingerprint(&cmd));
    uint64_t first = cmd.fingerprint;
    /* Absent id, type and header are no error; the same request fingerprints the same. */
    ASSERT_EQ_INT(decode(GOOD, "", "", NULL, false), 0);
    ASSERT_EQ_UINT(cmd.fingerprint, first);
    /* Seed 000's /purchase is the same command. */
    const char *seed = "{\"v\":1,\"kind\":\"purchase\",\"principal\":\"alice\",\"idempotencyKey\":"
                       "\"k-1\",\"route\":\"/purchase\",\"body\":{\"sku\":\"S\",\"qty\":2}}";
    ASSERT_EQ_INT(decode(seed, "k-1", "purchase", "alice", true), 0);
    ASSERT_EQ_UINT(cmd.fingerprint, first);
}

static void test_order(void **state)
{
    (void)state;
    const char *order = "{\"v\":1,\"kind\":\"order\",\"principal\":\"bob\",\"idempotencyKey\":"
                        "\"o/1\",\"route\":\"/v1/orders\",\"body\":{\"sku\":\"S\",\"qty\":3}}";
    ASSERT_EQ_INT(decode(order, "o/1", "order", "bob", true), 0);
    ASSERT_EQ_INT(cmd.kind, CMD_ORDER_CREATE);
    ASSERT_EQ_INT(lines.count, 1);
    /* Without a line block an order cannot be decoded now (the consumer waits for one). */
    ASSERT_EQ_INT(decode(order, "o/1", "order", "bob", false), SVC_ECAPACITY);
}

/* Each refusal and the words its reason must contain. */
static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *body, *id, *type, *principal, *word;
        int err;
    } cases[] = {
        {"{not json", "k-1", "purchase", "alice", "JSON", SVC_EINVALID_JSON},
        {"[1,2]", "k-1", "purchase", "alice", "JSON", SVC_EINVALID_JSON},
        {GOOD, "k-2", "purchase", "alice", "message-id", SVC_EVALIDATION},
        {GOOD, "k-1", "order", "alice", "type", SVC_EVALIDATION},
        {GOOD, "k-1", "purchase", "mallory", "principal", SVC_EVALIDATION},
        {"{\"v\":2,\"kind\":\"purchase\",\"principal\":\"a\",\"idempotencyKey\":\"k\","
         "\"route\":\"/v1/purchase\",\"body\":{}}",
         "", "", NULL, "version", SVC_EVALIDATION},
        {"{\"v\":1,\"kind\":\"refund\",\"principal\":\"a\",\"idempotencyKey\":\"k\","
         "\"route\":\"/v1/purchase\",\"body\":{}}",
         "", "", NULL, "kind", SVC_EVALIDATION},
        {"{\"v\":1,\"kind\":\"order\",\"principal\":\"a\",\"idempotencyKey\":\"k\","
         "\"route\":\"/v1/purchase\",\"body\":{}}",
         "", "", NULL, "route", SVC_EVALIDATION},
        {"{\"v\":1,\"kind\":\"purchase\",\"idempotencyKey\":\"k\","
         "\"route\":\"/v1/purchase\",\"body\":{}}",
         "", "", NULL, "principal", SVC_EVALIDATION},
        {"{\"v\":1,\"kind\":\"purchase\",\"principal\":\"a\",\"idempotencyKey\":\"a b\","
         "\"route\":\"/v1/purchase\",\"body\":{}}",
         "", "", NULL, "idempotencyKey", SVC_EVALIDATION},
        {"{\"v\":1,\"kind\":\"purchase\",\"principal\":\"a\",\"idempotencyKey\":\"k\","
         "\"route\":\"/v1/purchase\",\"body\":\"{}\"}",
         "", "", NULL, "body", SVC_EVALIDATION},
        {"{\"v\":1,\"kind\":\"purchase\",\"principal\":\"a\",\"idempotencyKey\":\"k\","
         "\"route\":\"/v1/purchase\",\"body\":{\"sku\":\"S\",\"qty\":0}}",
         "", "", NULL, "qty must be at least 1", SVC_EVALIDATION},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ASSERT_EQ_INT(decode(cases[i].body, cases[i].id, cases[i].type, cases[i].principal, true),
                      cases[i].err);
        if (strstr(why, cases[i].word) == NULL) {
            fail_msg("case %zu: \"%s\" does not say %s", i, why, cases[i].word);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_purchase),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
