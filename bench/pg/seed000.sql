-- Seed 000's schema (bench/seedfront.c, both modes): one stock row per SKU that may never go
-- below zero, the orders with a unique idempotency key (the seed's duplicate guard), and the
-- offset of the asynchronous consumer, updated in the same transaction as each order.
-- The benchmark loads this file with psql, then inserts its stock, e.g.
--   INSERT INTO stock VALUES ('HOT', 100);
-- orders.status is COMPLETED for an order applied, REJECTED (with qty 0) for a command the
-- asynchronous consumer could not fill (out of stock or unknown SKU): the key is then taken
-- and a redelivery of it changes nothing. The synchronous mode writes COMPLETED rows only
-- (a short purchase rolls back and answers 409).
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS stock;
DROP TABLE IF EXISTS consumer_offsets;
CREATE TABLE stock (
  sku text PRIMARY KEY,
  available bigint NOT NULL CHECK (available >= 0)
);
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  idempotency_key text NOT NULL UNIQUE,
  sku text NOT NULL,
  qty int NOT NULL,
  customer_id text NOT NULL,
  status text NOT NULL DEFAULT 'COMPLETED',
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- next_offset: the stream offset the consumer reads next (one past the last one applied).
CREATE TABLE consumer_offsets (
  name text PRIMARY KEY,
  next_offset bigint NOT NULL CHECK (next_offset >= 0)
);
