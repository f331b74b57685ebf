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
 * own 413 answers the usual oversized body and keeps the connection; past this h2o refuses the
 * body itself and closes the connection (server.c turns its answer into problem+json). */
#define H2O_ENTITY_BYTES_MAX (1024 * 1024)
/* Out of file descriptors (accept fails with EMFILE or ENFILE): an I/O thread stops accepting
 * for this long, serving its open connections meanwhile, then tries again. Without the pause a
 * readable listener that cannot be accepted from spins the loop. */
#define ACCEPT_PAUSE_MS 100

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

/* Stores, products, stock items and reservations held in memory: sized at start-up by flags
 * (base/capacity.h), not here. */

/* Commands the writer takes in one batch (one storage transaction). 1024 amortises one fsync
 * over enough purchases to reach tens of thousands per second at a few ms per fsync, and keeps
 * the transaction small enough that a batch commits in well under 10 ms. */
#define BATCH_COMMANDS_MAX 1024

/* Bytes of per-batch scratch (event payloads, order lines) reset after every batch: a full
 * batch of events (8192) with the longest members (escaped customer ids, 100-line
 * reservations) stays under it. Pages are touched only as used. */
#define BATCH_ARENA_BYTES (16 * 1024 * 1024)

/* The MPSC command queue in front of the writer. Four full batches: a burst can wait for up
 * to about four commits before clients get 429, which bounds queueing delay. */
#define QUEUE_DEPTH_MAX (4 * BATCH_COMMANDS_MAX)

/* Commands an I/O thread may have in flight (queued or in a batch). Above the queue depth so
 * that one thread alone can still fill the queue; excess gets 429. */
#define THREAD_COMMANDS_MAX (QUEUE_DEPTH_MAX + BATCH_COMMANDS_MAX)

/* HTTP I/O threads. The default is the number of cores; more than 64 buys nothing here. */
#define IO_THREADS_MAX 64

/* Rows of the route table (routes.c): sizes each I/O thread's per-route request counters and
 * latency histograms (http/http_metrics.h), about 200 KiB per thread at this bound. */
#define ROUTES_MAX 96

/* Reply body the writer formats for one command; stored verbatim as the idempotency record. */
#define REPLY_BODY_BYTES_MAX 2048

/* A reply's Location header ("/v1/orders/ord_<seq>"), stored with its idempotency record. */
#define REPLY_LOCATION_BYTES_MAX 64

/* Reply bodies of read handlers (availability, order, inventory). */
#define READ_BODY_BYTES_MAX 8192

/* Retry-After seconds sent with 429/503. One second is a few hundred batches: ample to drain. */
#define RETRY_AFTER_SECONDS 1

/* How long the writer sleeps with an empty queue before housekeeping (pruning). */
#define WRITER_IDLE_WAIT_MS 1000

/* Idempotency records are kept this long by default (DESIGN.md: 7 days). */
#define IDEM_RETENTION_MS_DEFAULT (7LL * 24 * 3600 * 1000)

/* Idempotency records looked at (and the old ones deleted) per step of the pruning sweep, each
 * step its own transaction between batches: bounded so pruning never stalls a batch for long
 * (a few ms). */
#define IDEM_PRUNE_ROWS_MAX 4096

/* The seed-004 ticket item is reset to this level by POST /reset. */
#define TICKET_RESET_ON_HAND 100

/* Lines of one multi-line command (reservation, transfer, reconciliation): DESIGN.md. */
#define CMD_LINES_MAX 100

/* Reply body of a multi-line command: 100 lines of a 64-byte sku with four numbers each. */
#define LINES_REPLY_BYTES_MAX (16 * 1024)

/* Multi-line commands an I/O thread may have in flight; each holds a line block (~23 KiB).
 * Far fewer than single-line purchases: reservations and transfers are not the hot path. */
#define THREAD_LINE_BLOCKS_MAX 512

/* Reservation TTL bounds: a second to a week. */
#define RESERVATION_TTL_SECONDS_MAX (7 * 24 * 3600)
/* A checkout order's time to be paid when POST /v1/orders names none: 15 minutes, a common
 * checkout hold. */
#define ORDER_TTL_SECONDS_DEFAULT (15 * 60)
_Static_assert(ORDER_TTL_SECONDS_DEFAULT <= RESERVATION_TTL_SECONDS_MAX, "a default TTL is valid");

/* The projector (read model fed by events, projector.c): its tables are sized by capacity.h. */
/* Reservation ids the projector keeps ("res_<seq>" today; room for client-visible formats). */
#define PROJ_RESERVATION_ID_BYTES_MAX 64
/* Events read per query while replaying the log (startup, rebuild): large enough to amortise
 * the statement, small enough that the read transaction stays short. */
#define PROJ_REPLAY_CHUNK 4096
/* A rebuild catches up unlocked until fewer than this many events remain, then finishes under
 * the apply mutex, stalling the writer only for that many events (well under a millisecond). */
#define PROJ_REBUILD_LOCKED_MAX 256
/* Snapshots of the read model (projector_snapshot.c): one is written every this many events
 * (and at a clean stop), so a start replays at most about this many events after loading it.
 * A replay runs at roughly 200k-1M events a second on this kind of machine, so 100k events
 * keep the tail well under a second, and at a few thousand purchases a second a snapshot is
 * written every half minute or so, a cost of one short transaction (--snapshot-every-events
 * changes it; tests make it small). */
#define SNAPSHOT_EVERY_EVENTS 100000
/* The snapshot format this build writes and reads; a stored one of another is ignored. */
#define PROJ_SNAPSHOT_FORMAT 1
/* Snapshot rows a start tries, newest first, before it replays the whole log. The writer
 * keeps two (the newest and the one before), so a damaged newest still has a fallback. */
#define PROJ_SNAPSHOT_LOAD_TRIES 3
/* Threads that may read projections over the life of the process, each with its own pin slot
 * (one cache line): the I/O threads plus room for tests and tools. */
/* The follower of a shared log reads this many events at a time, their strings in an arena of
 * PROJ_FOLLOW_TEXT_BYTES (a chunk stops early when the arena is full). */
#define PROJ_FOLLOW_CHUNK 1024
#define PROJ_FOLLOW_TEXT_BYTES (4 * 1024 * 1024)
#define PROJ_READER_SLOTS (2 * IO_THREADS_MAX)
/* Response bodies of list queries (events, totals, per-sku breakdown): 1000 events of a few
 * hundred bytes, or 200 products with 64-byte skus and 200-byte names, fit in 1 MiB. */
#define LIST_BODY_BYTES_MAX (1024 * 1024)
/* GET /v1/events: limit bounds (DESIGN.md / issue 4). */
#define EVENTS_PAGE_MAX 1000
#define EVENTS_PAGE_DEFAULT 100
/* GET /v1/products/totals: size bounds. */
#define TOTALS_PAGE_MAX 200
#define TOTALS_PAGE_DEFAULT 50
/* SSE (GET /v1/stream): bytes a subscriber may have queued and not yet sent. A subscriber that
 * falls this far behind is disconnected (it reconnects with Last-Event-ID) rather than making
 * anyone wait or the server grow. */
#define SSE_BUFFER_BYTES (256 * 1024)
/* SSE subscribers per I/O thread; the next one is refused with 503 too_many_subscribers. */
#define SSE_SUBSCRIBERS_MAX 256
/* SSE: a subscriber whose socket has not taken a handed-over buffer within this long stopped
 * reading: its connection is reset, freeing its slot and buffers (issue 10). */
#define SSE_WRITE_TIMEOUT_MS 10000
/* SSE: an idle stream gets a comment line this often, so that a peer that vanished without a
 * FIN is found (the write fails) and proxies keep the connection. */
#define SSE_HEARTBEAT_MS 15000
/* SSE: how often each I/O thread with subscribers checks the two times above. */
#define SSE_TICK_MS 1000
/* SSE: the kernel send buffer of a stream's socket (Linux doubles it). Bounds what a stuck
 * reader pins in the kernel, beside its two SSE_BUFFER_BYTES buffers, and how much it must
 * leave unread before the write timeout can see it. */
#define SSE_SOCKET_SNDBUF_BYTES (64 * 1024)
/* SSE: the per-I/O-thread byte ring (http/sse_ring.h) into which the projector's tap writes
 * every applied event as "id:/event:/data:" text for that thread to copy to its subscribers.
 * Allocated once, at the thread's first subscriber. A full batch of BATCH_COMMANDS_MAX events
 * of about 1 KiB each is 1 MiB, so 4 MiB lets a busy thread drain a few batches late before
 * the ring overflows; then its subscribers are dropped (they reconnect with Last-Event-ID)
 * rather than making the writer wait or the server grow. A power of two (index masking). */
#define SSE_RING_BYTES (4 * 1024 * 1024)

/* How long a query answered from the read model waits for it to reach the last seq whose
 * replies the writer released (replies leave before their batch is projected, and a client
 * must read its own write). One batch's projection normally takes microseconds, so 20 ms is
 * only reached when the applying thread is stalled (descheduled, or waiting for the apply
 * mutex); on timeout the query serves what is there, its lag in X-Projection-Lag-ms. */
#define API_READ_WAIT_US_MAX (20 * 1000)

/* Query string parameters are copied into fixed buffers of this size. */
#define QUERY_VALUE_BYTES_MAX 256

/* Bearer tokens configured at once (file, env or the generated admin token). The check hashes
 * the presented token once and compares it with every entry, so the cost is linear: 64 entries
 * cover one token per client or team with room to spare and keep the check well under 10 us. */
#define AUTH_TOKENS_MAX 64

/* A principal name: 1..64 of [A-Za-z0-9._-], the alphabet of the other identifiers, so that it
 * fits a fixed field of a command and an idempotency row without escaping. */
#define AUTH_PRINCIPAL_BYTES_MAX 64

/* A writer that has had a batch in hand, or commands waiting with no batch ending, for this
 * long is stalled: GET /health says "down" (503). A healthy batch that meets a failing store
 * gives up well before: SQLite's busy wait after 5 s, PostgreSQL's round trips after 5 s each
 * (a batch makes at most a few), so 15 s is a writer that no longer moves. */
#define WRITER_STALL_MS 15000

/* The projection lag (ms behind the event log) past which GET /health calls the projection
 * "degraded": reads answer from an older state than a second or two of catch-up explains. */
#define HEALTH_PROJECTION_LAG_MS 5000

/* The longest X-Trace-Id taken from a client (a longer one, or one with bytes other than
 * printable ASCII, is replaced by stockd's own): W3C traceparent is 55 bytes, 128 leaves room
 * for other schemes. Each command carries one (struct command), so it stays small. */
#define TRACE_ID_BYTES_MAX 128

/* A plaintext bearer token: 1..256 printable ASCII bytes. The generated one is 64 hex digits;
 * 256 leaves room for JWT-sized opaque tokens a deployment may already have. */
#define AUTH_TOKEN_BYTES_MAX 256

/* One line of a tokens file: principal, role, token (or "sha256:" and 64 hex) and spaces. */
#define AUTH_LINE_BYTES_MAX 1024

_Static_assert(QUEUE_DEPTH_MAX >= BATCH_COMMANDS_MAX, "a batch must fit in the queue");
_Static_assert((QUEUE_DEPTH_MAX & (QUEUE_DEPTH_MAX - 1)) == 0, "the queue ring is a power of two");
_Static_assert(THREAD_COMMANDS_MAX > QUEUE_DEPTH_MAX, "one thread must be able to fill the queue");
_Static_assert(QTY_MAX * 1000 < ON_HAND_MAX, "stock bound leaves room above the qty bound");
_Static_assert(REPLY_BODY_BYTES_MAX >= 512, "a problem+json body with detail must fit");
_Static_assert(LIST_BODY_BYTES_MAX >= TOTALS_PAGE_MAX * (SKU_BYTES_MAX + 6 * NAME_BYTES_MAX),
               "a full totals page of escaped names must fit");
_Static_assert(AUTH_LINE_BYTES_MAX > AUTH_PRINCIPAL_BYTES_MAX + AUTH_TOKEN_BYTES_MAX + 16,
               "a tokens-file line must hold the longest principal and token");
_Static_assert(LINES_REPLY_BYTES_MAX >= CMD_LINES_MAX * (SKU_BYTES_MAX + 96),
               "a 100-line reply with four numbers per line must fit");
_Static_assert((SSE_RING_BYTES & (SSE_RING_BYTES - 1)) == 0, "the SSE ring is a power of two");
_Static_assert(SSE_RING_BYTES >= 4 * SSE_BUFFER_BYTES, "the ring holds what a subscriber may");

/* Payment attempts of one checkout order before its work item goes to the dead-letter table
 * (issue 11): the workers give up there, and the writer checks it before it dead-letters or
 * replays an order. */
#define PAY_ATTEMPTS_MAX 8
/* Dead letters one GET /v1/dlt lists at most, and one POST /v1/dlt/replay re-queues at most. */
#define DLT_LIST_MAX 1000
#define DLT_LIMIT_DEFAULT 100
/* A stream message that became a dead letter (issue 12) is kept with it, so that a replay can
 * publish it again: its message-id, type and principal header as AMQP short strings hold them
 * (intake/intake.h), and a body up to what asynchronous intake publishes for the largest
 * request (BODY_BYTES_MAX and its envelope, intake_pub.h's bound: < 68 KiB); a larger body,
 * not ours, is not kept and that dead letter cannot be replayed. */
#define DLT_MESSAGE_ID_BYTES_MAX 255
#define DLT_MESSAGE_TYPE_BYTES_MAX 64
#define DLT_MESSAGE_PRINCIPAL_BYTES_MAX 128
#define DLT_MESSAGE_BODY_BYTES_MAX (72 * 1024)
/* Stream dead letters one POST /v1/dlt/replay republishes at most: each waits for its confirm
 * with its body on the heap (72 KiB at worst, far less for a request's command); a replay of
 * more answers the rest as deferred, for the next call. */
#define DLT_REPLAY_MESSAGES_MAX 256

/* POST /v1/admin/load-test (issue 11): the in-tree load generator against this server.
 * Virtual users are keep-alive connections, each with one request in flight: 256 is four
 * times the 64 that already saturate the writer on this 2-core machine, and each costs the
 * server a connection and the generator ~16 KiB. */
#define LOAD_TEST_VUS_MAX 256
/* Requests of one load test in all (a million: ~1-2 minutes at the measured rates). */
#define LOAD_TEST_ITERATIONS_MAX 1000000LL
/* The generator's threads: its epoll loops share the cores with the server's own threads, so
 * at most two, whatever the number of virtual users. */
#define LOAD_TEST_THREADS_MAX 2
/* A request unanswered this long counts as a timeout (and is not sent again). */
#define LOAD_TEST_REQUEST_TIMEOUT_MS 30000
/* The whole run is cut after this long: what is unanswered then counts as timeouts. */
#define LOAD_TEST_DURATION_MS_MAX (30LL * 60 * 1000)
/* How often the load test's thread reports progress (and checks for shutdown). */
#define LOAD_TEST_PROGRESS_MS 200
_Static_assert(LOAD_TEST_THREADS_MAX >= 1 && LOAD_TEST_VUS_MAX >= LOAD_TEST_THREADS_MAX,
               "every generator thread gets a connection");

#endif
