/*
 * events.h - the event catalogue: every event the writer appends to the outbox (the events
 * table), its version and its members, with the one encoder and the one decoder of their data.
 *
 * The writer fills a struct event and encodes it (event_encode); the projector, the follower,
 * the SSE stream and the audit get the same struct, from the writer directly or decoded from a
 * stored row (event_decode). No other file spells an event type or a member name. Every event
 * carries the state its readers need, not only the change: a stock event carries the item after
 * it (onHand, reserved, version, sold), a reservation event the whole reservation.
 *
 * Invariants the audit checks by replay, per (store, sku): onHand = the sum of delta,
 * reserved = the sum of reservedDelta, and 0 <= reserved <= onHand after every event.
 *
 * This file is not the event log's storage (store/store.h: struct row_event) and not its
 * readers (read/projector.h). Read domain.h next.
 */
#ifndef STOCKD_EVENTS_H
#define STOCKD_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/json_out.h"
#include "store/store.h"

/* The members an event's data may carry: X(NAME, "jsonName", kind, struct event member). The
 * encoder writes them in this order; the decoder finds them by name. Kinds: STR (a string),
 * OPT_STR (left out when NULL or empty), INT, OPT_INT (left out when 0), TIME_MS (an RFC 3339
 * text written from a ms member; the decoder ignores it, EXPIRES_AT_MS carries the value),
 * LINES ([{sku,qty}]), ADJUSTMENTS ([{sku,before,after,delta}]). */
#define EVENT_FIELD_MAP(X)                                           \
    X(RESERVATION_ID, "reservationId", STR, reservation_id)          \
    X(ORDER_ID, "orderId", STR, order_id)                            \
    X(TRANSFER_ID, "transferId", STR, transfer_id)                   \
    X(RECONCILIATION_ID, "reconciliationId", STR, reconciliation_id) \
    X(STATUS, "status", STR, status)                                 \
    X(STORE_ID, "storeId", STR, store_id)                            \
    X(FROM_STORE, "fromStore", STR, from_store)                      \
    X(TO_STORE, "toStore", STR, to_store)                            \
    X(NAME, "name", STR, name)                                       \
    X(LATENCY_MS, "latencyMs", INT, latency_ms)                      \
    X(CUSTOMER_ID, "customerId", STR, customer_id)                   \
    X(SKU, "sku", STR, sku)                                          \
    X(QTY, "qty", INT, qty)                                          \
    X(REASON, "reason", STR, reason)                                 \
    X(COUNT_REF, "countRef", STR, count_ref)                         \
    X(SOURCE, "source", STR, source)                                 \
    X(PAYMENT_REF, "paymentRef", OPT_STR, payment_ref)               \
    X(LINES, "lines", LINES, lines)                                  \
    X(ADJUSTMENTS, "adjustments", ADJUSTMENTS, adjustments)          \
    X(EXPIRES_AT, "expiresAt", TIME_MS, expires_at_ms)               \
    X(EXPIRES_AT_MS, "expiresAtMs", INT, expires_at_ms)              \
    X(DELTA, "delta", INT, delta)                                    \
    X(RESERVED_DELTA, "reservedDelta", OPT_INT, reserved_delta)      \
    X(ON_HAND, "onHand", INT, on_hand)                               \
    X(RESERVED, "reserved", INT, reserved)                           \
    X(VERSION, "version", INT, version)                              \
    X(SOLD, "sold", INT, sold)                                       \
    X(ATTEMPT, "attempt", OPT_INT, attempt)

enum event_field {
#define EVENT_FIELD_ENUM_(name, json, kind, member) EVENT_FIELD_##name,
    EVENT_FIELD_MAP(EVENT_FIELD_ENUM_)
#undef EVENT_FIELD_ENUM_
        EVENT_FIELD_COUNT
};

_Static_assert(EVENT_FIELD_COUNT <= 32, "a type's members are a 32-bit mask");

#define EVF(name) (1u << EVENT_FIELD_##name)

/* Every stock event (one item changed; the row's store_id and sku are set) carries these. */
#define EVF_STOCK                                                                                 \
    (EVF(STORE_ID) | EVF(SKU) | EVF(DELTA) | EVF(RESERVED_DELTA) | EVF(ON_HAND) | EVF(RESERVED) | \
     EVF(VERSION) | EVF(SOLD))
/* Every reservation lifecycle event carries the reservation after it. */
#define EVF_RESERVATION                                                                  \
    (EVF(RESERVATION_ID) | EVF(STATUS) | EVF(STORE_ID) | EVF(CUSTOMER_ID) | EVF(LINES) | \
     EVF(EXPIRES_AT) | EVF(EXPIRES_AT_MS) | EVF(VERSION))
/* Every checkout order event (issue 11) names the order, its reservation and its new status. */
#define EVF_ORDER (EVF(ORDER_ID) | EVF(RESERVATION_ID) | EVF(STATUS) | EVF(CUSTOMER_ID))
#define EVF_TRANSFER_LEG (EVF(TRANSFER_ID) | EVF(QTY) | EVF(FROM_STORE) | EVF(TO_STORE))

/* X(NAME, "TypeName", version, is_stock, members). A new version of a type keeps the old
 * members readable: the decoder treats a missing member as 0 / NULL and says so in present. */
#define EVENT_TYPE_MAP(X)                                                                          \
    X(STORE_CREATED, "StoreCreated", 1, false, EVF(STORE_ID) | EVF(NAME) | EVF(LATENCY_MS))        \
    X(PRODUCT_CREATED, "ProductCreated", 1, true, EVF_STOCK | EVF(NAME))                           \
    X(STOCK_ADJUSTED, "StockAdjusted", 1, true, EVF_STOCK | EVF(REASON))                           \
    X(STOCK_COUNTED, "StockCounted", 1, true, EVF_STOCK | EVF(COUNT_REF))                          \
    X(STOCK_RECONCILED, "StockReconciled", 1, true,                                                \
      EVF_STOCK | EVF(RECONCILIATION_ID) | EVF(SOURCE))                                            \
    X(ORDER_COMPLETED, "OrderCompleted", 1, true,                                                  \
      EVF_STOCK | EVF(ORDER_ID) | EVF(CUSTOMER_ID) | EVF(QTY))                                     \
    X(STOCK_RESERVED, "StockReserved", 1, true, EVF_STOCK | EVF(RESERVATION_ID) | EVF(QTY))        \
    X(STOCK_RELEASED, "StockReleased", 1, true,                                                    \
      EVF_STOCK | EVF(RESERVATION_ID) | EVF(QTY) | EVF(REASON))                                    \
    X(STOCK_COMMITTED, "StockCommitted", 1, true, EVF_STOCK | EVF(RESERVATION_ID) | EVF(QTY))      \
    X(STOCK_TRANSFERRED_OUT, "StockTransferredOut", 1, true, EVF_STOCK | EVF_TRANSFER_LEG)         \
    X(STOCK_TRANSFERRED_IN, "StockTransferredIn", 1, true, EVF_STOCK | EVF_TRANSFER_LEG)           \
    X(TRANSFER_COMPLETED, "TransferCompleted", 1, false,                                           \
      EVF(TRANSFER_ID) | EVF(STATUS) | EVF(FROM_STORE) | EVF(TO_STORE) | EVF(LINES))               \
    X(RECONCILIATION_COMPLETED, "ReconciliationCompleted", 1, false,                               \
      EVF(RECONCILIATION_ID) | EVF(STORE_ID) | EVF(SOURCE) | EVF(ADJUSTMENTS))                     \
    X(RESERVATION_CREATED, "ReservationCreated", 1, false, EVF_RESERVATION)                        \
    X(RESERVATION_CONFIRMED, "ReservationConfirmed", 1, false, EVF_RESERVATION | EVF(PAYMENT_REF)) \
    X(RESERVATION_CANCELLED, "ReservationCancelled", 1, false, EVF_RESERVATION | EVF(REASON))      \
    X(RESERVATION_EXPIRED, "ReservationExpired", 1, false, EVF_RESERVATION)                        \
    X(ORDER_CREATED, "OrderCreated", 1, false,                                                     \
      EVF_ORDER | EVF(STORE_ID) | EVF(LINES) | EVF(EXPIRES_AT) | EVF(EXPIRES_AT_MS))               \
    X(ORDER_CONFIRMED, "OrderConfirmed", 1, false, EVF_ORDER)                                      \
    X(ORDER_PAYMENT_STARTED, "OrderPaymentStarted", 1, false, EVF_ORDER | EVF(ATTEMPT))            \
    X(ORDER_PAYMENT_RETRIED, "OrderPaymentRetried", 1, false,                                      \
      EVF_ORDER | EVF(ATTEMPT) | EVF(REASON))                                                      \
    X(ORDER_PAID, "OrderPaid", 1, false, EVF_ORDER | EVF(PAYMENT_REF))                             \
    X(ORDER_PAYMENT_FAILED, "OrderPaymentFailed", 1, false, EVF_ORDER | EVF(REASON))               \
    X(ORDER_CANCELLED, "OrderCancelled", 1, false, EVF_ORDER | EVF(REASON))                        \
    X(ORDER_EXPIRED, "OrderExpired", 1, false, EVF_ORDER)                                          \
    X(ORDER_DEAD_LETTERED, "DeadLettered", 1, false, EVF_ORDER | EVF(ATTEMPT) | EVF(REASON))       \
    X(ORDER_PAYMENT_REPLAYED, "OrderPaymentReplayed", 1, false, EVF_ORDER | EVF(ATTEMPT))

/* The reason of the StockAdjusted event of seed 004's reset: it restarts the item's sold count
 * (a reader of a log written before events carried sold needs to know). */
#define EVENT_REASON_RESET "reset"

enum event_type {
#define EVENT_TYPE_ENUM_(name, text, version, stock, members) EVENT_##name,
    EVENT_TYPE_MAP(EVENT_TYPE_ENUM_)
#undef EVENT_TYPE_ENUM_
        EVENT_TYPE_COUNT,
    EVENT_UNKNOWN = EVENT_TYPE_COUNT, /* decoded from a type this build does not know */
};

/* One line of a reservation or transfer. */
struct event_line {
    const char *sku;
    int64_t qty;
};

/* One counted sku of a reconciliation. */
struct event_adjustment {
    const char *sku;
    int64_t before;
    int64_t after;
    int64_t delta;
};

/* An event, structured. Which members mean something depends on the type (its mask in
 * EVENT_TYPE_MAP); the others stay 0 / NULL. Strings and arrays are borrowed: from the writer's
 * batch arena, the domain, or a decoder's arena; they live as long as their owner says. */
struct event {
    int64_t seq;
    enum event_type type;
    int event_version;      /* the type's version this event was written with */
    int64_t occurred_at_ms; /* wall ms */
    const char *data_json;  /* the encoded members: set by event_encode or the decoder */
    uint32_t present;       /* the members it has (EVF bits): all of its type's when made
                             * by event_init, those the stored data had when decoded */
    const char *type_name;  /* decoded EVENT_UNKNOWN: the stored name; else the catalogue's */
    /* members (EVENT_FIELD_MAP) */
    const char *reservation_id;
    const char *order_id;
    const char *transfer_id;
    const char *reconciliation_id;
    const char *status;
    const char *store_id; /* also the row's store_id column */
    const char *from_store;
    const char *to_store;
    const char *name;
    int64_t latency_ms;
    const char *customer_id;
    const char *sku; /* also the row's sku column (stock events) */
    int64_t qty;
    const char *reason;
    const char *count_ref;
    const char *source;
    const char *payment_ref;
    const struct event_line *lines;
    uint32_t line_count;
    const struct event_adjustment *adjustments;
    uint32_t adjustment_count;
    int64_t expires_at_ms;
    int64_t delta;          /* change of onHand */
    int64_t reserved_delta; /* change of reserved */
    int64_t on_hand;        /* the item after the event */
    int64_t reserved;
    int64_t version; /* the item's (stock events) or the reservation's version after it */
    int64_t sold;
    int64_t attempt; /* a checkout order's payment attempt (1, 2, ...) */
};

/* The catalogue. */
const char *event_type_name(enum event_type type);
int event_type_version(enum event_type type);
bool event_type_is_stock(enum event_type type);
uint32_t event_type_members(enum event_type type);
/* The type named text, or EVENT_UNKNOWN. */
enum event_type event_type_parse(const char *text);

/* An empty event of type (every member 0 / NULL, version the catalogue's). */
void event_init(struct event *e, enum event_type type);

/* Replaces every string member of e's type (not the skus inside lines or adjustments) by
 * copy(context, member): how the writer makes an event outlive the command it came from. */
void event_copy_strings(struct event *e, const char *(*copy)(void *context, const char *text),
                        void *context);

/* Writes e's data object (the members of its type) into out. The caller checks jbuf_ok. */
void event_encode(const struct event *e, struct jbuf *out);

/* The events table row of e (borrowing e's strings; data_json must be set). */
void event_row(const struct event *e, struct row_event *out);

/* Scratch for decoded strings and arrays: a caller-owned buffer, reset by the caller. */
struct event_arena {
    char *data;
    size_t size;
    size_t used;
};

/* Decodes a stored row into out, copying strings into arena. 0 (a known type, or EVENT_UNKNOWN
 * with only the columns set), SVC_EVALIDATION when the data is not a JSON object or a member
 * has the wrong type, SVC_ECAPACITY when the arena is full (out is then unusable). */
int event_decode(const struct row_event *row, struct event *out, struct event_arena *arena);

#endif
