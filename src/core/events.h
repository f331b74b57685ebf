/*
 * events.h - the event catalog: every event the writer appends to the outbox (events table).
 *
 * Each row: seq (global, gap-free, ascending), event_type, event_version (1), occurred_at_ms,
 * store_id and sku (NULL when not about one item), data (a JSON object). Projections, SSE, the
 * audit and later the RabbitMQ relay read nothing else, so every event carries the state the
 * readers need, not only the change.
 *
 * Stock events (one per stock item changed; store_id and sku set). data members:
 *   storeId, sku, delta (change of onHand), reservedDelta (change of reserved; absent = 0),
 *   onHand, reserved, version (the item after the change), plus per type:
 *   ProductCreated     name                       (the product's first item; delta = initial)
 *   StockAdjusted      reason                     (POST /v1/adjustments, seed-004 reset)
 *   StockCounted       countRef                   (POST /v1/items:set-absolute)
 *   StockReconciled    reconciliationId, source   (POST /v1/reconciliations)
 *   OrderCompleted     orderId, customerId, qty   (buy now; delta = -qty)
 *   StockReserved      reservationId, qty         (reservedDelta = +qty)
 *   StockReleased      reservationId, qty, reason (cancel or expiry; reservedDelta = -qty)
 *   StockCommitted     reservationId, qty         (confirm; delta = reservedDelta = -qty)
 *   StockTransferredOut / StockTransferredIn  transferId, qty, fromStore, toStore
 *   TransferCompleted     transferId, status, fromStore, toStore, lines (no stock change)
 *   ReconciliationCompleted  reconciliationId, storeId, source, adjustments (no stock change)
 *
 * Catalog and lifecycle events (no stock change):
 *   StoreCreated          storeId, name, latencyMs
 *   ReservationCreated    reservationId, storeId, customerId, lines [{sku,qty}], expiresAt
 *                         (RFC 3339), expiresAtMs (ms since the epoch), status "ACTIVE",
 *                         version; the other Reservation* events carry the same members
 *   ReservationConfirmed  reservationId, storeId, paymentRef (may be absent), status
 *   ReservationCancelled  reservationId, storeId, reason, status
 *   ReservationExpired    reservationId, storeId, status
 *
 * Invariants the audit checks by replay, per (store, sku): onHand = sum of delta,
 * reserved = sum of reservedDelta, and 0 <= reserved <= onHand after every event.
 */
#ifndef STOCKD_EVENTS_H
#define STOCKD_EVENTS_H

#define EVENT_VERSION 1

#endif
