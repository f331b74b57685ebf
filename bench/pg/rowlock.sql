-- One purchase per transaction, as a request handler with row locks does it:
-- lock the hot row, check, decrement, insert the order under a unique key, commit (fsync).
\set r random(1, 9000000000000000000)
BEGIN;
SELECT on_hand FROM stock WHERE sku = 'HOT' FOR UPDATE \gset
\if :on_hand >= 1
UPDATE stock SET on_hand = on_hand - 1 WHERE sku = 'HOT';
INSERT INTO orders (idem_key, sku, qty, customer_id)
  VALUES (:client_id || '-' || :r, 'HOT', 1, 'c' || :client_id) ON CONFLICT (idem_key) DO NOTHING;
\endif
COMMIT;
