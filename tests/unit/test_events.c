/*
 * test_events.c - the event catalogue (events.c): its lookups, and the one encoder and the one
 * decoder of an event's data, which the writer, the projector, the follower, the SSE stream
 * and the audit all rely on.
 *
 * The round trip is generated from the catalogue's own X-macros: for every type, every member
 * of its mask is filled with a distinct value (strings that need escaping included), encoded,
 * stored as a struct row_event, decoded and compared, so a new type or member is covered
 * without editing this file. Then the decoder's failures: a type this build does not know
 * (the columns only), data that is not a JSON object or a member of the wrong type
 * (SVC_EVALIDATION), and every arena too small to hold the result (SVC_ECAPACITY, nothing
 * written past it under ASan). Read test_domain.c next.
 */
#include <jansson.h>

#include "test_helpers.h"

#include "core/events.h"
#include "base/errors.h"
#include "base/svc_assert.h"

#define T0_MS 1700000000000LL
#define DATA_BYTES 8192
#define ARENA_BYTES 16384

/* ---- filling and comparing members, generated from EVENT_FIELD_MAP ---------------------- */

/* Text for a string member: distinct per member, with a quote, a backslash, a control
 * character and UTF-8, so that the encoder's escaping and the decoder's unescaping meet. */
#define MEMBER_TEXT_(member) "v\"" #member "\\\n\xc3\xa9"

static const struct event_line test_lines[] = {{"K\"1", 3}, {"K2", 1000000000}, {"", 1}};
static const struct event_adjustment test_adjustments[] = {{"K1", 5, 2, -3}, {"K\\2", 0, 7, 7}};

#define FILL_STR_(field, member) e->member = MEMBER_TEXT_(member);
#define FILL_OPT_STR_(field, member) FILL_STR_(field, member)
/* Distinct per member, signs alternating; EXPIRES_AT_MS (even) stays a plausible time. */
#define FILL_INT_(field, member) \
    e->member = (EVENT_FIELD_##field % 2 ? -1 : 1) * (T0_MS + (int64_t)EVENT_FIELD_##field);
#define FILL_OPT_INT_(field, member) FILL_INT_(field, member)
#define FILL_TIME_MS_(field, member) /* the ms member is filled by its INT twin */
#define FILL_LINES_(field, member) \
    e->lines = test_lines;         \
    e->line_count = (uint32_t)(sizeof test_lines / sizeof test_lines[0]);
#define FILL_ADJUSTMENTS_(field, member) \
    e->adjustments = test_adjustments;   \
    e->adjustment_count = (uint32_t)(sizeof test_adjustments / sizeof test_adjustments[0]);

/* Fills every member of e's type (event_init made the rest 0 / NULL). */
static void fill_members(struct event *e)
{
    uint32_t members = event_type_members(e->type);
#define FILL_(name, json, kind, member) \
    if (members & EVF(name)) {          \
        FILL_##kind##_(name, member)    \
    }
    EVENT_FIELD_MAP(FILL_)
#undef FILL_
    if (e->store_id == NULL) {
        e->store_id = "S-column"; /* the row's column, set without the member */
    }
}

static void assert_lines_equal(const struct event *a, const struct event *b)
{
    ASSERT_EQ_UINT(a->line_count, b->line_count);
    for (uint32_t i = 0; i < a->line_count; i++) {
        ASSERT_EQ_STR(a->lines[i].sku, b->lines[i].sku);
        ASSERT_EQ_INT(a->lines[i].qty, b->lines[i].qty);
    }
}

static void assert_adjustments_equal(const struct event *a, const struct event *b)
{
    ASSERT_EQ_UINT(a->adjustment_count, b->adjustment_count);
    for (uint32_t i = 0; i < a->adjustment_count; i++) {
        ASSERT_EQ_STR(a->adjustments[i].sku, b->adjustments[i].sku);
        ASSERT_EQ_INT(a->adjustments[i].before, b->adjustments[i].before);
        ASSERT_EQ_INT(a->adjustments[i].after, b->adjustments[i].after);
        ASSERT_EQ_INT(a->adjustments[i].delta, b->adjustments[i].delta);
    }
}

#define CMP_STR_(member) ASSERT_EQ_STR(want->member, got->member);
#define CMP_OPT_STR_(member) CMP_STR_(member)
#define CMP_INT_(member) ASSERT_EQ_INT(want->member, got->member);
#define CMP_OPT_INT_(member) CMP_INT_(member)
#define CMP_TIME_MS_(member) ASSERT_EQ_INT(want->member, got->member);
#define CMP_LINES_(member) assert_lines_equal(want, got);
#define CMP_ADJUSTMENTS_(member) assert_adjustments_equal(want, got);

/* Every member of the catalogue: got equals want (members outside a type stay 0 / NULL in
 * both, so this also checks the decoder set nothing it should not). */
static void assert_members_equal(const struct event *want, const struct event *got)
{
#define CMP_(name, json, kind, member) CMP_##kind##_(member)
    EVENT_FIELD_MAP(CMP_)
#undef CMP_
}

/* True when text lies in the arena: the decoder copies, it never borrows from the row. */
static bool in_arena(const struct event_arena *arena, const void *text)
{
    const char *p = text;
    return p >= arena->data && p < arena->data + arena->size;
}

#define CHECK_COPIED_STR_(member)                  \
    if (got->member != NULL) {                     \
        ASSERT_TRUE(in_arena(arena, got->member)); \
    }
#define CHECK_COPIED_OPT_STR_(member) CHECK_COPIED_STR_(member)
#define CHECK_COPIED_INT_(member)
#define CHECK_COPIED_OPT_INT_(member)
#define CHECK_COPIED_TIME_MS_(member)
#define CHECK_COPIED_LINES_(member)                      \
    for (uint32_t i = 0; i < got->line_count; i++) {     \
        ASSERT_TRUE(in_arena(arena, &got->lines[i]));    \
        ASSERT_TRUE(in_arena(arena, got->lines[i].sku)); \
    }
#define CHECK_COPIED_ADJUSTMENTS_(member)                      \
    for (uint32_t i = 0; i < got->adjustment_count; i++) {     \
        ASSERT_TRUE(in_arena(arena, &got->adjustments[i]));    \
        ASSERT_TRUE(in_arena(arena, got->adjustments[i].sku)); \
    }

static void assert_copied(const struct event *got, const struct event_arena *arena)
{
#define CHECK_(name, json, kind, member) CHECK_COPIED_##kind##_(member)
    EVENT_FIELD_MAP(CHECK_)
#undef CHECK_
    ASSERT_TRUE(in_arena(arena, got->data_json));
    ASSERT_TRUE(got->sku == NULL || in_arena(arena, got->sku));
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Encodes e into data and sets its seq, time and data_json as batch_emit does. */
static void encode(struct event *e, int64_t seq, char *data, size_t size)
{
    struct jbuf out;
    jbuf_init(&out, data, size);
    event_encode(e, &out);
    ASSERT_TRUE(jbuf_ok(&out));
    e->seq = seq;
    e->occurred_at_ms = T0_MS + seq;
    e->data_json = data;
}

/* The number of keys of the JSON object text, failing the test when it is not one. */
static size_t object_key_count(const char *text)
{
    json_error_t error;
    json_t *value = json_loads(text, JSON_REJECT_DUPLICATES, &error);
    if (!json_is_object(value)) {
        TEST_FAIL("not a JSON object (%s): %s", error.text, text);
    }
    size_t count = json_object_size(value);
    json_decref(value);
    return count;
}

static unsigned bit_count(uint32_t mask)
{
    unsigned n = 0;
    for (; mask != 0; mask &= mask - 1) {
        n++;
    }
    return n;
}

/* Decodes a row of type_name with data and the given columns into out (arena of 4 KiB). */
static int decode_text(const char *type_name, const char *data, const char *store_id,
                       const char *sku, struct event *out, char *scratch, size_t size)
{
    struct row_event row = {7, type_name, 1, T0_MS, store_id, sku, data};
    struct event_arena arena = {scratch, size, 0};
    return event_decode(&row, out, &arena);
}

/* ---- the catalogue ------------------------------------------------------------------------ */

static void test_catalogue_lookups(void **state)
{
    (void)state;
    for (unsigned t = 0; t < EVENT_TYPE_COUNT; t++) {
        enum event_type type = (enum event_type)t;
        const char *name = event_type_name(type);
        ASSERT_NOT_NULL(name);
        ASSERT_GT_UINT(strlen(name), 0);
        ASSERT_EQ_INT(event_type_parse(name), type);
        ASSERT_GE_INT(event_type_version(type), 1);
        uint32_t members = event_type_members(type);
        ASSERT_NE_UINT(members, 0);
        ASSERT_EQ_UINT(members >> EVENT_FIELD_COUNT, 0);
        if (event_type_is_stock(type)) {
            ASSERT_EQ_UINT(members & EVF_STOCK, EVF_STOCK);
        }
        for (unsigned u = 0; u < t; u++) {
            ASSERT_NE_STR(event_type_name((enum event_type)u), name);
        }
        struct event e;
        event_init(&e, type);
        ASSERT_EQ_INT(e.type, type);
        ASSERT_EQ_STR(e.type_name, name);
        ASSERT_EQ_INT(e.event_version, event_type_version(type));
        ASSERT_EQ_UINT(e.present, members);
        ASSERT_NULL(e.data_json);
        ASSERT_EQ_INT(e.seq, 0);
    }
    ASSERT_EQ_INT(event_type_parse("NoSuchEvent"), EVENT_UNKNOWN);
    ASSERT_EQ_INT(event_type_parse(""), EVENT_UNKNOWN);
    ASSERT_EQ_INT(event_type_parse("orderCompleted"), EVENT_UNKNOWN); /* case-sensitive */
    ASSERT_TRUE(event_type_is_stock(EVENT_ORDER_COMPLETED));
    ASSERT_FALSE(event_type_is_stock(EVENT_RESERVATION_CREATED));
    ASSERT_TRUE(event_type_members(EVENT_ORDER_COMPLETED) & EVF(SOLD));
}

/* ---- round trip --------------------------------------------------------------------------- */

/* Every type, every member: encode, store as a row, decode, compare. */
static void test_round_trip_every_type(void **state)
{
    (void)state;
    char *data = malloc(DATA_BYTES);
    char *scratch = malloc(ARENA_BYTES);
    for (unsigned t = 0; t < EVENT_TYPE_COUNT; t++) {
        struct event in;
        event_init(&in, (enum event_type)t);
        fill_members(&in);
        encode(&in, 100 + t, data, DATA_BYTES);
        uint32_t members = event_type_members(in.type);
        /* One key per member (expiresAt and expiresAtMs are two members of one value). */
        ASSERT_EQ_UINT(object_key_count(data), bit_count(members));
        struct row_event row;
        event_row(&in, &row);
        ASSERT_EQ_INT(row.seq, 100 + t);
        ASSERT_EQ_STR(row.event_type, event_type_name(in.type));
        ASSERT_EQ_INT(row.event_version, event_type_version(in.type));
        ASSERT_EQ_INT(row.occurred_at_ms, in.occurred_at_ms);
        ASSERT_TRUE(row.store_id == in.store_id);
        ASSERT_TRUE(row.sku == in.sku);
        ASSERT_TRUE(row.data_json == data);
        struct event out;
        memset(&out, 0xa5, sizeof out); /* the decoder must set every field */
        struct event_arena arena = {scratch, ARENA_BYTES, 0};
        ASSERT_OK(event_decode(&row, &out, &arena));
        ASSERT_LE_UINT(arena.used, arena.size);
        ASSERT_EQ_INT(out.seq, in.seq);
        ASSERT_EQ_INT(out.type, in.type);
        ASSERT_EQ_INT(out.event_version, in.event_version);
        ASSERT_EQ_INT(out.occurred_at_ms, in.occurred_at_ms);
        ASSERT_EQ_STR(out.type_name, in.type_name);
        ASSERT_EQ_STR(out.data_json, data);
        ASSERT_EQ_UINT(out.present, members);
        assert_members_equal(&in, &out);
        assert_copied(&out, &arena);
        /* Decoded and encoded again, the data is the same text: the read side and the
         * write side agree byte for byte (the SSE stream relies on it). */
        char *again = malloc(DATA_BYTES);
        struct jbuf buf;
        jbuf_init(&buf, again, DATA_BYTES);
        event_encode(&out, &buf);
        ASSERT_TRUE(jbuf_ok(&buf));
        ASSERT_EQ_STR(again, data);
        free(again);
    }
    free(data);
    free(scratch);
}

/* Optional members are left out when empty, and decode as absent. */
static void test_optional_members_left_out(void **state)
{
    (void)state;
    char data[DATA_BYTES];
    char scratch[ARENA_BYTES];
    struct event in;
    event_init(&in, EVENT_RESERVATION_CONFIRMED);
    fill_members(&in);
    in.payment_ref = NULL;
    encode(&in, 3, data, sizeof data);
    ASSERT_NULL(strstr(data, "paymentRef"));
    ASSERT_NOT_NULL(strstr(data, "\"expiresAt\":\"20")); /* RFC 3339 text */
    struct row_event row;
    event_row(&in, &row);
    struct event out;
    struct event_arena arena = {scratch, sizeof scratch, 0};
    ASSERT_OK(event_decode(&row, &out, &arena));
    ASSERT_NULL(out.payment_ref);
    ASSERT_EQ_UINT(out.present, event_type_members(in.type) & ~EVF(PAYMENT_REF));
    in.payment_ref = ""; /* empty is left out too */
    encode(&in, 3, data, sizeof data);
    ASSERT_NULL(strstr(data, "paymentRef"));
    event_init(&in, EVENT_STOCK_ADJUSTED);
    fill_members(&in);
    in.reserved_delta = 0;
    encode(&in, 4, data, sizeof data);
    ASSERT_NULL(strstr(data, "reservedDelta"));
    event_row(&in, &row);
    arena.used = 0;
    ASSERT_OK(event_decode(&row, &out, &arena));
    ASSERT_EQ_INT(out.reserved_delta, 0);
    ASSERT_EQ_UINT(out.present & EVF(RESERVED_DELTA), 0);
    ASSERT_EQ_UINT(out.present & EVF(DELTA), EVF(DELTA)); /* a plain INT is always written */
}

/* An older event lacks a member: decoded as 0 / NULL and missing from present. Members of
 * other types are ignored, and the columns win over the members. */
static void test_missing_and_foreign_members(void **state)
{
    (void)state;
    char scratch[ARENA_BYTES];
    struct event out;
    ASSERT_OK(decode_text("OrderCompleted",
                          "{\"storeId\":\"S1\",\"sku\":\"K1\",\"orderId\":\"ord_1\",\"qty\":2,"
                          "\"delta\":-2,\"onHand\":8,\"reserved\":0,\"version\":3,"
                          "\"latencyMs\":77,\"reason\":\"not mine\"}",
                          "S1", "K1", &out, scratch, sizeof scratch));
    ASSERT_EQ_INT(out.type, EVENT_ORDER_COMPLETED);
    ASSERT_EQ_UINT(out.present & EVF(SOLD), 0);
    ASSERT_EQ_INT(out.sold, 0);
    ASSERT_EQ_UINT(out.present & EVF(CUSTOMER_ID), 0);
    ASSERT_NULL(out.customer_id);
    ASSERT_EQ_INT(out.qty, 2);
    ASSERT_EQ_INT(out.on_hand, 8);
    ASSERT_EQ_INT(out.latency_ms, 0); /* not a member of OrderCompleted */
    ASSERT_NULL(out.reason);
    ASSERT_EQ_UINT(out.present & (EVF(LATENCY_MS) | EVF(REASON)), 0);
    /* The store and sku columns are what the table filters on: they win. */
    ASSERT_OK(decode_text("StockAdjusted", "{\"storeId\":\"member\",\"sku\":\"member\"}", "S2",
                          "K2", &out, scratch, sizeof scratch));
    ASSERT_EQ_STR(out.store_id, "S2");
    ASSERT_EQ_STR(out.sku, "K2");
    ASSERT_EQ_UINT(out.present & (EVF(ON_HAND) | EVF(VERSION)), 0);
    /* Without columns, the members give them. */
    ASSERT_OK(decode_text("StoreCreated", "{\"storeId\":\"S3\",\"name\":\"Three\"}", NULL, NULL,
                          &out, scratch, sizeof scratch));
    ASSERT_EQ_STR(out.store_id, "S3");
    ASSERT_NULL(out.sku);
    ASSERT_EQ_STR(out.name, "Three");
}

/* A type this build does not know: only the columns, whatever the data holds. */
static void test_unknown_type(void **state)
{
    (void)state;
    char scratch[ARENA_BYTES];
    struct event out;
    const char *datas[] = {"{\"storeId\":\"S1\",\"qty\":5}", "not json", "[]"};
    for (size_t i = 0; i < sizeof datas / sizeof datas[0]; i++) {
        memset(&out, 0xa5, sizeof out);
        ASSERT_OK(
            decode_text("StockTeleported", datas[i], "S1", "K1", &out, scratch, sizeof scratch));
        ASSERT_EQ_INT(out.type, EVENT_UNKNOWN);
        ASSERT_EQ_STR(out.type_name, "StockTeleported");
        ASSERT_TRUE(out.type_name >= scratch && out.type_name < scratch + sizeof scratch);
        ASSERT_EQ_INT(out.seq, 7);
        ASSERT_EQ_INT(out.event_version, 1);
        ASSERT_EQ_INT(out.occurred_at_ms, T0_MS);
        ASSERT_EQ_STR(out.store_id, "S1");
        ASSERT_EQ_STR(out.sku, "K1");
        ASSERT_EQ_STR(out.data_json, datas[i]);
        ASSERT_EQ_UINT(out.present, 0);
        ASSERT_NULL(out.reservation_id);
        ASSERT_EQ_INT(out.qty, 0);
        ASSERT_NULL(out.lines);
        ASSERT_EQ_INT(out.on_hand, 0);
    }
}

/* Data that is not a JSON object, or a member of the wrong type: SVC_EVALIDATION. */
static void test_invalid_data(void **state)
{
    (void)state;
    char scratch[ARENA_BYTES];
    struct event out;
    const char *not_objects[] = {"not json",
                                 "",
                                 "[1,2]",
                                 "\"text\"",
                                 "42",
                                 "null",
                                 "{\"storeId\":\"S1\"",
                                 "{\"storeId\":\"S1\",\"storeId\":\"S2\"}"};
    for (size_t i = 0; i < sizeof not_objects / sizeof not_objects[0]; i++) {
        ASSERT_ERR(
            decode_text("StoreCreated", not_objects[i], "S1", NULL, &out, scratch, sizeof scratch),
            SVC_EVALIDATION);
    }
    struct {
        const char *type;
        const char *data;
    } wrong[] = {
        {"StoreCreated", "{\"storeId\":5}"},
        {"StoreCreated", "{\"latencyMs\":\"10\"}"},
        {"StockAdjusted", "{\"onHand\":1.5}"},
        {"StockAdjusted", "{\"version\":null}"},
        {"ReservationCreated", "{\"lines\":{\"sku\":\"K\"}}"},
        {"ReservationCreated", "{\"lines\":[{\"sku\":\"K\"}]}"},
        {"ReservationCreated", "{\"lines\":[{\"qty\":1}]}"},
        {"ReservationCreated", "{\"lines\":[7]}"},
        {"ReservationCreated", "{\"expiresAt\":1700000000000}"},
        {"ReconciliationCompleted", "{\"adjustments\":[{\"sku\":\"K\",\"before\":1}]}"},
        {"ReconciliationCompleted", "{\"adjustments\":\"none\"}"},
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        int rc =
            decode_text(wrong[i].type, wrong[i].data, "S1", NULL, &out, scratch, sizeof scratch);
        if (rc != SVC_EVALIDATION) {
            TEST_FAIL("%s %s: %d, not SVC_EVALIDATION", wrong[i].type, wrong[i].data, rc);
        }
    }
}

/* Every arena smaller than what an event needs: SVC_ECAPACITY and nothing written past the
 * arena (each one is its own allocation, so ASan sees an overflow); from that size up, 0. */
static void test_small_arenas(void **state)
{
    (void)state;
    char data[DATA_BYTES];
    const enum event_type types[] = {EVENT_RESERVATION_CREATED, EVENT_RECONCILIATION_COMPLETED,
                                     EVENT_ORDER_COMPLETED};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        struct event in;
        event_init(&in, types[k]);
        fill_members(&in);
        encode(&in, 9, data, sizeof data);
        struct row_event row;
        event_row(&in, &row);
        size_t needed = 0;
        for (size_t size = 0; needed == 0; size++) {
            ASSERT_LT_UINT(size, ARENA_BYTES);
            char *scratch = malloc(size > 0 ? size : 1);
            struct event_arena arena = {scratch, size, 0};
            struct event out;
            int rc = event_decode(&row, &out, &arena);
            ASSERT_LE_UINT(arena.used, size);
            if (rc == 0) {
                needed = size;
                assert_members_equal(&in, &out);
            } else {
                ASSERT_ERR(rc, SVC_ECAPACITY);
            }
            free(scratch);
        }
        ASSERT_GT_UINT(needed, strlen(data)); /* the data's own copy at least */
    }
    struct event out;
    char tiny[8];
    ASSERT_ERR(decode_text("StockTeleported", "{}", "S1", "K1", &out, tiny, sizeof tiny),
               SVC_ECAPACITY); /* an unknown type's columns need room too */
}

/* event_copy_strings gives every string member (and the store column) to the copier. */
static const char *copy_counting(void *context, const char *text)
{
    unsigned *copies = context;
    (*copies)++;
    static char pool[64][64];
    SVC_ASSERT(*copies <= 64 && strlen(text) < 64);
    strcpy(pool[*copies - 1], text);
    return pool[*copies - 1];
}

static void test_copy_strings(void **state)
{
    (void)state;
    for (unsigned t = 0; t < EVENT_TYPE_COUNT; t++) {
        struct event in;
        event_init(&in, (enum event_type)t);
        fill_members(&in);
        struct event copy = in;
        unsigned copies = 0;
        event_copy_strings(&copy, copy_counting, &copies);
        ASSERT_GT_UINT(copies, 0);
        assert_members_equal(&in, &copy);
        ASSERT_EQ_STR(copy.store_id, in.store_id);
        ASSERT_TRUE(copy.store_id != in.store_id); /* the column too, member or not */
        ASSERT_TRUE(copy.lines == in.lines);       /* arrays are not copied */
    }
}

/* A buffer too small for the data is marked, not overrun: the writer checks jbuf_ok. */
static void test_encode_overflow_is_marked(void **state)
{
    (void)state;
    struct event in;
    event_init(&in, EVENT_RESERVATION_CREATED);
    fill_members(&in);
    char small[32];
    struct jbuf out;
    jbuf_init(&out, small, sizeof small);
    event_encode(&in, &out);
    ASSERT_FALSE(jbuf_ok(&out));
    ASSERT_LT_UINT(out.length, sizeof small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalogue_lookups),
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_optional_members_left_out),
        cmocka_unit_test(test_missing_and_foreign_members),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_invalid_data),
        cmocka_unit_test(test_small_arenas),
        cmocka_unit_test(test_copy_strings),
        cmocka_unit_test(test_encode_overflow_is_marked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
