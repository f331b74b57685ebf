-- The row-lock baseline users would write (seed 004, seed 000 "synchronous baseline"):
-- one stock row per SKU with a CHECK, an orders table with a unique idempotency key.
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS stock;
CREATE TABLE stock (
  sku text PRIMARY KEY,
  on_hand bigint NOT NULL CHECK (on_hand >= 0)
);
CREATE TABLE orders (
  order_id bigserial PRIMARY KEY,
  idem_key text NOT NULL UNIQUE,
  sku text NOT NULL,
  qty int NOT NULL,
  customer_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO stock VALUES ('HOT', 1000000000);
