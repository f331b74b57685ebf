/*
 * store_events_of_check.h - store_reader_events_of's promise, for both backends' tests
 * (test_store_sqlite.c, test_store_pg.c): a log of mixed event types to commit, and the check
 * of what a typed read of it streams.
 */
#ifndef STOCKD_STORE_EVENTS_OF_CHECK_H
#define STOCKD_STORE_EVENTS_OF_CHECK_H

#include "store/store.h"
#include "test_helpers.h"

/* seqs 1..6: the order events are 2, 4 and 5. */
static const struct row_event events_of_log[] = {
    {1, "StoreCreated", 1, 1000, "S1", NULL, "{\"storeId\":\"S1\"}"},
    {2, "OrderCreated", 1, 1000, "S1", NULL, "{\"orderId\":\"ord_1\"}"},
    {3, "OrderCompleted", 1, 1000, "S1", "P1", "{\"orderId\":\"ord_2\"}"},
    {4, "OrderConfirmed", 1, 1000, NULL, NULL, "{\"orderId\":\"ord_1\"}"},
    {5, "OrderCreated", 1, 1000, "S1", NULL, "{\"orderId\":\"ord_3\"}"},
    {6, "OrderCompleted", 1, 1000, "S1", "P1", "{\"orderId\":\"ord_4\"}"},
};

/* The seqs a read streamed; stop_at: the callback fails with 7 at that seq (0: never). */
struct events_of_seen {
    int64_t seqs[8];
    int count;
    int64_t stop_at;
};

static int events_of_each(void *context, const struct row_event *row)
{
    struct events_of_seen *seen = context;
    ASSERT_LT_INT(seen->count, 8);
    const struct row_event *stored = &events_of_log[row->seq - 1];
    ASSERT_EQ_STR(row->event_type, stored->event_type);
    ASSERT_EQ_STR(row->data_json, stored->data_json);
    seen->seqs[seen->count++] = row->seq;
    return row->seq == seen->stop_at ? 7 : 0;
}

/* Reads (since, until] of types (count of them) with limit into a fresh seen. */
static int events_of_read(struct store_reader *r, int64_t since, int64_t until,
                          const char *const *types, int type_count, int limit,
                          struct events_of_seen *seen)
{
    int streamed = -1;
    int rc = store_reader_events_of(r, since, until, types, type_count, limit, seen, events_of_each,
                                    &streamed);
    ASSERT_EQ_INT(streamed, seen->count);
    return rc;
}

/* r reads a database that holds exactly events_of_log. */
static void check_events_of(struct store_reader *r)
{
    static const char *const order_types[] = {"OrderCreated", "OrderConfirmed"};
    static const char *const confirmed[] = {"OrderConfirmed"};
    struct events_of_seen seen = {0};
    ASSERT_OK(events_of_read(r, 0, 6, order_types, 2, 100, &seen));
    ASSERT_EQ_INT(seen.count, 3);
    ASSERT_EQ_INT(seen.seqs[0], 2);
    ASSERT_EQ_INT(seen.seqs[1], 4);
    ASSERT_EQ_INT(seen.seqs[2], 5);
    seen = (struct events_of_seen){0}; /* the limit: the first ones */
    ASSERT_OK(events_of_read(r, 0, 6, order_types, 2, 2, &seen));
    ASSERT_EQ_INT(seen.count, 2);
    ASSERT_EQ_INT(seen.seqs[1], 4);
    seen = (struct events_of_seen){0}; /* both ends: since excluded, until included */
    ASSERT_OK(events_of_read(r, 2, 4, order_types, 2, 100, &seen));
    ASSERT_EQ_INT(seen.count, 1);
    ASSERT_EQ_INT(seen.seqs[0], 4);
    seen = (struct events_of_seen){0}; /* one type */
    ASSERT_OK(events_of_read(r, 0, 6, confirmed, 1, 100, &seen));
    ASSERT_EQ_INT(seen.count, 1);
    ASSERT_EQ_INT(seen.seqs[0], 4);
    seen = (struct events_of_seen){0}; /* none of the types in the range */
    ASSERT_OK(events_of_read(r, 5, 6, order_types, 2, 100, &seen));
    ASSERT_EQ_INT(seen.count, 0);
    seen = (struct events_of_seen){.stop_at = 4}; /* the callback's error stops the read */
    ASSERT_EQ_INT(events_of_read(r, 0, 6, order_types, 2, 100, &seen), 7);
    ASSERT_EQ_INT(seen.count, 2);
    seen = (struct events_of_seen){0}; /* the handle reads on after a stopped read */
    ASSERT_OK(events_of_read(r, 1, 6, order_types, 2, 100, &seen));
    ASSERT_EQ_INT(seen.count, 3);
}

#endif
