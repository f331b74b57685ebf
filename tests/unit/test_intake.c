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

#include "intake/intake.h"
#include "intake/intake_consume.h"

static char seen_route[32];

/* Reads {sku, qty >= 1} (the lines of an order: qty into its first line). */
static int stub_decode(const char *route, const struct json_view *body, struct command *cmd,
                       const char **why)
{
    snprintf(seen_route, sizeof seen_route, "%s", route);
    struct json_view_member sku = json_view_get(body, "sku");
    struct json_view_member qty = json_view_get(body, "qty");
    if (sku.type != JSON_VIEW_STRING || qty.type != JSON_VIEW_INTEGER || qty.integer < 1) {
        *why = "qty must be at least 1";
        return SVC_EVALIDATION;
    }
    bool order = strcmp(route, "/v1/orders") == 0;
    cmd->kind = order ? CMD_ORDER_CREATE : CMD_PURCHASE;
    snprintf(cmd->sku, sizeof cmd->sku, "%.*s", (int)sku.length, sku.text);
    cmd->qty = qty.integer;
    if (order) {
        cmd->lines->count = 1;
        cmd->lines->items[0].qty = cmd->qty;
    }
    return 0;
}

static struct command cmd;
static struct cmd_lines lines;
static char why[REASON_BYTES_MAX + 1];

/* The same message with the first letter of its first key spelled as a \u escape: the same
 * JSON, outside json_flat's subset, so that the consumer reads it with jansson. false when the
 * text has no such key. */
static bool escaped(const char *body, char *out, size_t size)
{
    const char *at = body;
    while ((at = strchr(at, '"')) != NULL && !(at[1] >= 'a' && at[1] <= 'z')) {
        at++;
    }
    if (at == NULL || strlen(body) + 6 >= size) {
        return false;
    }
    size_t head = (size_t)(at - body) + 1;
    snprintf(out, size, "%.*s\\u%04x%s", (int)head, body, (unsigned)at[1], at + 2);
    return true;
}

/* Messages decoded through json_flat (the others were jansson's alone). */
static int flat_reads;

static int decode_once(const char *body, const char *id, const char *type, const char *principal,
                       bool with_lines)
{
    memset(&cmd, 0, sizeof cmd);
    cmd.lines = with_lines ? &lines : NULL;
    why[0] = '\0';
    return intake_consume_decode(body, strlen(body), id, type, principal, stub_decode, &cmd, why,
                                 sizeof why);
}

/* Decodes body as it is, and (when it can be spelled so) once more as jansson alone reads it:
 * both readings must give the same answer, reason and command. */
static int decode(const char *body, const char *id, const char *type, const char *principal,
                  bool with_lines)
{
    static char other[4096];
    static struct json_flat flat;
    flat_reads += json_flat_parse(body, strlen(body), &flat) ? 1 : 0;
    if (!escaped(body, other, sizeof other)) {
        return decode_once(body, id, type, principal, with_lines);
    }
    int rc_json = decode_once(other, id, type, principal, with_lines);
    static struct command cmd_json;
    static char why_json[sizeof why];
    cmd_json = cmd;
    memcpy(why_json, why, sizeof why);
    int rc = decode_once(body, id, type, principal, with_lines);
    ASSERT_EQ_INT(rc, rc_json);
    ASSERT_EQ_STR(why, why_json);
    ASSERT_EQ_MEM(&cmd, &cmd_json, sizeof cmd);
    return rc;
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

/* A batch message (intake.h): its commands, in order, each as if it had come alone; one
 * command that cannot be decoded refuses the whole message. */
static struct command batch_cmds[INTAKE_BATCH_COMMANDS_MAX];

static int decode_batch_once(const char *body, size_t *count)
{
    struct command *cmds[INTAKE_BATCH_COMMANDS_MAX];
    for (size_t i = 0; i < INTAKE_BATCH_COMMANDS_MAX; i++) {
        memset(&batch_cmds[i], 0xA5, sizeof batch_cmds[i]); /* the decoder zeroes what it uses */
        cmds[i] = &batch_cmds[i];
    }
    why[0] = '\0';
    return intake_consume_decode_batch(body, strlen(body), stub_decode, cmds, count, why,
                                       sizeof why);
}

/* As decode: the batch as it is and as jansson alone reads it, with the same outcome. */
static int decode_batch(const char *body, size_t *count)
{
    static char other[(sizeof GOOD + 1) * (INTAKE_BATCH_COMMANDS_MAX + 1) + 64 + 8];
    static struct command cmds_json[INTAKE_BATCH_COMMANDS_MAX];
    static char why_json[sizeof why];
    static struct json_flat flat;
    flat_reads += json_flat_parse(body, strlen(body), &flat) ? 1 : 0;
    if (!escaped(body, other, sizeof other)) {
        return decode_batch_once(body, count);
    }
    size_t count_json = 0;
    int rc_json = decode_batch_once(other, &count_json);
    memcpy(cmds_json, batch_cmds, sizeof batch_cmds);
    memcpy(why_json, why, sizeof why);
    int rc = decode_batch_once(body, count);
    ASSERT_EQ_INT(rc, rc_json);
    ASSERT_EQ_UINT(*count, count_json);
    ASSERT_EQ_STR(why, why_json);
    ASSERT_EQ_MEM(batch_cmds, cmds_json, sizeof batch_cmds);
    return rc;
}

#define BATCH_OF(a, b) "{\"v\":2,\"kind\":\"batch\",\"commands\":[" a "," b "]}"
#define SECOND                                                                         \
    "{\"v\":1,\"kind\":\"purchase\",\"principal\":\"bob\",\"idempotencyKey\":\"k-2\"," \
    "\"route\":\"/purchase\",\"body\":{\"sku\":\"T\",\"qty\":3}}"
#define ORDER                                                                       \
    "{\"v\":1,\"kind\":\"order\",\"principal\":\"bob\",\"idempotencyKey\":\"k-3\"," \
    "\"route\":\"/v1/orders\",\"body\":{\"sku\":\"T\",\"qty\":3}}"

static void test_batch(void **state)
{
    (void)state;
    size_t count = 99;
    ASSERT_EQ_INT(decode_batch(BATCH_OF(GOOD, SECOND), &count), 0);
    ASSERT_EQ_UINT(count, 2);
    ASSERT_EQ_STR(batch_cmds[0].principal, "alice");
    ASSERT_EQ_STR(batch_cmds[0].idem_key, "k-1");
    ASSERT_EQ_STR(batch_cmds[0].sku, "S");
    ASSERT_EQ_INT(batch_cmds[0].qty, 2);
    ASSERT_EQ_STR(batch_cmds[1].principal, "bob");
    ASSERT_EQ_STR(batch_cmds[1].idem_key, "k-2");
    ASSERT_EQ_STR(batch_cmds[1].sku, "T");
    ASSERT_EQ_INT(batch_cmds[1].qty, 3);
    ASSERT_TRUE(batch_cmds[1].kind == CMD_PURCHASE && batch_cmds[1].has_idem_key);
    /* Each command's fingerprint is the one it has alone. */
    ASSERT_EQ_INT(decode(SECOND, "k-2", "purchase", "bob", true), 0);
    ASSERT_EQ_UINT(cmd.fingerprint, batch_cmds[1].fingerprint);

    static const struct {
        const char *body, *word;
    } refused[] = {
        {BATCH_OF(GOOD, ORDER), "purchases only"},
        {BATCH_OF(GOOD, "{\"v\":3}"), "v must be 1"},
        {BATCH_OF(GOOD, "[]"), "a command is a JSON object"},
        {"{\"v\":1,\"kind\":\"batch\",\"commands\":[" GOOD "]}", "v 2"},
        {"{\"v\":2,\"kind\":\"purchase\",\"commands\":[" GOOD "]}", "kind batch"},
        {"{\"v\":2,\"kind\":\"batch\",\"commands\":[]}", "1-64"},
        {"{\"v\":2,\"kind\":\"batch\"}", "1-64"},
        {"{\"v\":2,", "JSON"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        count = 99;
        if (decode_batch(refused[i].body, &count) == 0 || count != 0 ||
            strstr(why, refused[i].word) == NULL) {
            fail_msg("case %zu: \"%s\" does not refuse with %s", i, why, refused[i].word);
        }
    }
    /* INTAKE_BATCH_COMMANDS_MAX commands, and one more. */
    char big[(sizeof GOOD + 1) * (INTAKE_BATCH_COMMANDS_MAX + 1) + 64];
    for (size_t n = INTAKE_BATCH_COMMANDS_MAX; n <= INTAKE_BATCH_COMMANDS_MAX + 1; n++) {
        size_t used =
            (size_t)snprintf(big, sizeof big, "{\"v\":2,\"kind\":\"batch\",\"commands\":[");
        for (size_t i = 0; i < n; i++) {
            used += (size_t)snprintf(big + used, sizeof big - used, "%s%s", i > 0 ? "," : "", GOOD);
        }
        snprintf(big + used, sizeof big - used, "]}");
        count = 99;
        int rc = decode_batch(big, &count);
        ASSERT_EQ_INT(rc == 0, n == INTAKE_BATCH_COMMANDS_MAX);
        ASSERT_EQ_UINT(count, rc == 0 ? n : 0);
    }
    ASSERT_GE_INT(flat_reads, 10); /* most of the messages above went through json_flat */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_purchase),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
