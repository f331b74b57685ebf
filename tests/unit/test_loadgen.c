/*
 * test_loadgen.c - how the load generator (src/load/loadgen.c, included) spreads requests over
 * skus and formats the catalogue's product requests: key n's sku is the same every time (a
 * replay buys what the first attempt did), covers all of 0..skus-1 about evenly, and is the
 * --sku itself for a single sku; key n of --target product creates "<sku>-<n>". The engine's
 * sockets are exercised by stockbench and tests/blackbox/test_load_test.py, not here.
 */
#include "test_helpers.h"

#include "../../src/load/loadgen.c"

#define TEST_LOADGEN_SKUS 100
#define TEST_LOADGEN_KEYS 200000

static void test_loadgen_config(struct lg_config *c, uint64_t skus)
{
    memset(c, 0, sizeof *c);
    strcpy(c->endpoint.host_header, "127.0.0.1:1");
    c->target = LG_TARGET_PURCHASE;
    strcpy(c->sku, "G");
    strcpy(c->key_prefix, "k");
    c->qty = 1;
    c->skus = skus;
}

/* One sku (0 or 1): every key buys --sku itself. */
static void test_loadgen_single_sku(void **state)
{
    (void)state;
    struct lg_config c;
    char sku[LG_SKU_BYTES_MAX + 1];
    for (uint64_t skus = 0; skus <= 1; skus++) {
        test_loadgen_config(&c, skus);
        for (uint64_t n = 0; n < 1000; n++) {
            ASSERT_EQ_UINT(lg_request_sku_index(&c, n), 0);
        }
        lg_sku_format(&c, 0, sku);
        ASSERT_EQ_STR(sku, "G");
        char request[LG_REQUEST_BYTES_MAX];
        lg_request_format(&c, 7, request, sizeof request);
        ASSERT_NOT_NULL(strstr(request, "{\"sku\":\"G\",\"qty\":1,\"customerId\":\"c7\"}"));
    }
}

/* N skus: the same key always picks the same sku, every sku is picked, and none more than
 * 1.3x or less than 0.7x its share (binomial spread of 2000 +- 45: far inside that). */
static void test_loadgen_spread(void **state)
{
    (void)state;
    struct lg_config c;
    test_loadgen_config(&c, TEST_LOADGEN_SKUS);
    static uint32_t counts[TEST_LOADGEN_SKUS];
    memset(counts, 0, sizeof counts);
    for (uint64_t n = 0; n < TEST_LOADGEN_KEYS; n++) {
        uint64_t j = lg_request_sku_index(&c, n);
        ASSERT_LT_UINT(j, TEST_LOADGEN_SKUS);
        ASSERT_EQ_UINT(lg_request_sku_index(&c, n), j);
        counts[j]++;
    }
    uint32_t share = TEST_LOADGEN_KEYS / TEST_LOADGEN_SKUS;
    for (uint32_t j = 0; j < TEST_LOADGEN_SKUS; j++) {
        ASSERT_GT_UINT(counts[j], share * 7 / 10);
        ASSERT_LT_UINT(counts[j], share * 13 / 10);
    }
    /* Consecutive keys (the requests in flight at once) do not walk the skus in order. */
    uint32_t in_order = 0;
    for (uint64_t n = 0; n + 1 < 1000; n++) {
        uint64_t next = (lg_request_sku_index(&c, n) + 1) % TEST_LOADGEN_SKUS;
        in_order += lg_request_sku_index(&c, n + 1) == next ? 1 : 0;
    }
    ASSERT_LT_UINT(in_order, 50);
    /* The request names the sku its index formats to. */
    char sku[LG_SKU_BYTES_MAX + 1];
    char request[LG_REQUEST_BYTES_MAX];
    char want[LG_SKU_BYTES_MAX + 16];
    lg_sku_format(&c, lg_request_sku_index(&c, 12345), sku);
    snprintf(want, sizeof want, "{\"sku\":\"%s\",", sku);
    lg_request_format(&c, 12345, request, sizeof request);
    ASSERT_NOT_NULL(strstr(request, want));
    ASSERT_EQ_INT(strncmp(sku, "G-", 2), 0);
    lg_sku_format(&c, 99, sku);
    ASSERT_EQ_STR(sku, "G-99");
}

/* The largest spread formats its largest index within LG_SKU_BYTES_MAX, with a 55-byte prefix. */
static void test_loadgen_longest_sku(void **state)
{
    (void)state;
    struct lg_config c;
    test_loadgen_config(&c, LG_SKUS_MAX);
    memset(c.sku, 'x', LG_SKU_BYTES_MAX - LG_SKU_SUFFIX_BYTES_MAX);
    c.sku[LG_SKU_BYTES_MAX - LG_SKU_SUFFIX_BYTES_MAX] = '\0';
    char sku[LG_SKU_BYTES_MAX + 1];
    lg_sku_format(&c, LG_SKUS_MAX - 1, sku);
    ASSERT_EQ_UINT(strlen(sku), LG_SKU_BYTES_MAX);
    ASSERT_EQ_STR(sku + LG_SKU_BYTES_MAX - LG_SKU_SUFFIX_BYTES_MAX, "-16777215");
}

/* --target product: key n creates "<sku>-<n>" with qty units; the same n gives the same bytes. */
static void test_loadgen_product(void **state)
{
    (void)state;
    struct lg_config c;
    test_loadgen_config(&c, 0);
    c.target = LG_TARGET_PRODUCT;
    c.qty = 1000;
    c.requests_max = 100;
    char a[LG_REQUEST_BYTES_MAX];
    char b[LG_REQUEST_BYTES_MAX];
    size_t length = lg_request_format(&c, 42, a, sizeof a);
    ASSERT_EQ_UINT(lg_request_format(&c, 42, b, sizeof b), length);
    ASSERT_EQ_INT(memcmp(a, b, length), 0);
    ASSERT_EQ_INT(strncmp(a, "POST /v1/products HTTP/1.1\r\n", 28), 0);
    ASSERT_NOT_NULL(strstr(a, "Idempotency-Key: k-42\r\n"));
    ASSERT_NOT_NULL(strstr(a, "{\"sku\":\"G-42\",\"name\":\"G 42\",\"initialOnHand\":1000}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loadgen_single_sku),
        cmocka_unit_test(test_loadgen_spread),
        cmocka_unit_test(test_loadgen_longest_sku),
        cmocka_unit_test(test_loadgen_product),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
