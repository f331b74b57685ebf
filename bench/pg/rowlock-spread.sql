-- bench/pg/rowlock.sql with the sku drawn uniformly among :skus rows 'G-0' .. 'G-<skus-1>'
-- (pgbench -D skus=N; bench/growth inserts those rows): one purchase per transaction, lock the
-- row, check, decrement, insert the order under a unique key, commit (fsync).
\set r random(1, 9000000000000000000)
\set j random(0, :skus - 1)
BEGIN;
SELECT on_hand FROM stock WHERE sku = 'G-' || :j::text FOR UPDATE \gset
\if :on_hand >= 1
UPDATE stock SET on_hand = on_hand - 1 WHERE sku = 'G-' || :j::text;
INSERT INTO orders (idem_key, sku, qty, customer_id)
  VALUES (:client_id || '-' || :r, 'G-' || :j::text, 1, 'c' || :client_id)
  ON CONFLICT (idem_key) DO NOTHING;
\endif
COMMIT;
