/*
 * svc_limits.h - every fixed maximum of stockd, in one place.
 *
 * Each queue, buffer, batch, table and retry has its maximum here, with the reason for the
 * number next to it. Everything sized by these is allocated once at startup (STYLE 10, 12).
 * This file holds no code; read errors.h next.
 */
#ifndef STOCKD_SVC_LIMITS_H
#define STOCKD_SVC_LIMITS_H

#include <assert.h>

/* Request body bytes accepted by a command handler. DESIGN.md fixes 64 KiB; larger gets 413. */
#define BODY_BYTES_MAX (64 * 1024)

/* What h2o itself buffers before our handler sees the body. Above BODY_BYTES_MAX so that our
 * own problem+json 413 answers the usual oversized body; h2o answers past this on its own. */
#define H2O_ENTITY_BYTES_MAX (1024 * 1024)

/* Identifier lengths. A sku is 1..64 of [A-Za-z0-9._-] (DESIGN.md); store ids follow the same
 * alphabet and bound so that both fit fixed fields of a command without allocation. */
#define SKU_BYTES_MAX 64
#define STORE_ID_BYTES_MAX 64
#define NAME_BYTES_MAX 200
#define CUSTOMER_ID_BYTES_MAX 128
#define REASON_BYTES_MAX 200

/* Idempotency-Key length. 255 covers UUIDs, ULIDs and composite client keys with room to spare. */
#define IDEM_KEY_BYTES_MAX 255

/* Quantity bounds per line (DESIGN.md: 1 <= qty <= 1e9). */
#define QTY_MAX 1000000000LL

/* Stock bound per item: qty can be added 1e9 at a time; 1e15 keeps every sum of deltas far from
 * int64 overflow while leaving more room than any warehouse holds. */
#define ON_HAND_MAX 1000000000000000LL

/* Stores in one deployment. Store choice scans them all per purchase, so keep it small; 32
 * covers the seeds' regional setups (seed 003: a handful of stores per region). */
#define STORES_MAX 32

/* Products held in memory. Each has a STORES_MAX-wide item index; 65,536 * 32 * 4 B = 8 MiB. */
#define PRODUCTS_MAX 65536
#define PRODUCT_HASH_SLOTS (2 * PRODUCTS_MAX) /* open addressing, load factor <= 0.5 */

/* Stock items (store, sku) pairs: at most one per product per store. */
#define ITEMS_MAX (PRODUCTS_MAX * 4)

/* Commands the writer takes in one batch (one storage transaction). 1024 amortises one fsync
 * over enough purchases to reach tens of thousands per second at a few ms per fsync, and keeps
 * the transaction small enough that a batch commits in well under 10 ms. */
#define BATCH_COMMANDS_MAX 1024

/* Bytes of per-batch scratch (event payloads, order lines) reset after every batch. */
#define BATCH_ARENA_BYTES (8 * 1024 * 1024)

/* The MPSC command queue in front of the writer. Four full batches: a burst can wait for up
 * to about four commits before clients get 429, which bounds queueing delay. */
#define QUEUE_DEPTH_MAX (4 * BATCH_COMMANDS_MAX)

/* Commands an I/O thread may have in flight (queued or in a batch). Above the queue depth so
 * that one thread alone can still fill the queue; excess gets 429. */
#define THREAD_COMMANDS_MAX (QUEUE_DEPTH_MAX + BATCH_COMMANDS_MAX)

/* HTTP I/O threads. The default is the number of cores; more than 64 buys nothing here. */
#define IO_THREADS_MAX 64

/* Reply body the writer formats for one command; stored verbatim as the idempotency record. */
#define REPLY_BODY_BYTES_MAX 2048

/* Reply bodies of read handlers (availability, order, inventory). */
#define READ_BODY_BYTES_MAX 8192

/* Retry-After seconds sent with 429/503. One second is a few hundred batches: ample to drain. */
#define RETRY_AFTER_SECONDS 1

/* How long the writer sleeps with an empty queue before housekeeping (pruning). */
#define WRITER_IDLE_WAIT_MS 1000

/* Idempotency records are kept this long by default (DESIGN.md: 7 days). */
#define IDEM_RETENTION_MS_DEFAULT (7LL * 24 * 3600 * 1000)

/* Idempotency rows deleted per pruning transaction: bounded so pruning never stalls a batch. */
#define IDEM_PRUNE_ROWS_MAX 10000

/* The seed-004 ticket item is reset to this level by POST /reset. */
#define TICKET_RESET_ON_HAND 100

/* Query string parameters are copied into fixed buffers of this size. */
#define QUERY_VALUE_BYTES_MAX 256

_Static_assert(QUEUE_DEPTH_MAX >= BATCH_COMMANDS_MAX, "a batch must fit in the queue");
_Static_assert((QUEUE_DEPTH_MAX & (QUEUE_DEPTH_MAX - 1)) == 0, "the queue ring is a power of two");
_Static_assert((PRODUCT_HASH_SLOTS & (PRODUCT_HASH_SLOTS - 1)) == 0, "hash slots: power of two");
_Static_assert(PRODUCT_HASH_SLOTS >= 2 * PRODUCTS_MAX, "hash load factor must stay <= 0.5");
_Static_assert(THREAD_COMMANDS_MAX > QUEUE_DEPTH_MAX, "one thread must be able to fill the queue");
_Static_assert(ITEMS_MAX >= PRODUCTS_MAX, "every product has at least one item");
_Static_assert(QTY_MAX * 1000 < ON_HAND_MAX, "stock bound leaves room above the qty bound");
_Static_assert(REPLY_BODY_BYTES_MAX >= 512, "a problem+json body with detail must fit");

#endif
