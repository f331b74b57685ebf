/*
 * intake.h - asynchronous intake (issue 12): the contract between the HTTP side that publishes
 * a command to the stream stockd.commands (intake_pub.c) and the consumer that applies it
 * through the writer (intake_consume.c).
 *
 * A client asks with `Prefer: respond-async` on POST /v1/purchase, POST /v1/orders or seed
 * 000's POST /purchase, with an Idempotency-Key (required: the key names the command's status
 * URL). The I/O thread validates the request exactly as for a synchronous one (a 4xx is
 * answered at once), then hands the command to the publisher; only after the broker's confirm
 * it answers 202 with `Preference-Applied: respond-async` and `Location: /v1/commands/{key}`.
 * Broker down, or no confirm within INTAKE_CONFIRM_TIMEOUT_MS: 503 broker_unavailable with
 * Retry-After, never a 202 for something not durably queued. Without --amqp the preference
 * is ignored (RFC 7240: a server may), and the request is served synchronously.
 *
 * The message on the stream:
 *   message-id  the Idempotency-Key
 *   type        INTAKE_KIND_PURCHASE or INTAKE_KIND_ORDER
 *   headers     "principal": the authenticated principal's name
 *   body        {"v":1,"kind":"purchase"|"order","principal":"...","idempotencyKey":"...",
 *                "route":"/v1/purchase"|"/v1/orders"|"/purchase","body":{the request's JSON}}
 *   (v: INTAKE_FORMAT_VERSION; body: the request's JSON object as the client sent it, so that
 *   the consumer decodes it with the same decoder as the synchronous route.)
 *
 * Under load the publisher packs the purchases waiting at the same moment into one message,
 * up to INTAKE_BATCH_COMMANDS_MAX (the broker's cost is per message: ~90 us of its CPU for a
 * stream message published with a confirm, delivered and acked, which alone would hold a
 * 2-core machine near 10,000 commands/s):
 *   message-id  the first command's Idempotency-Key
 *   type        INTAKE_KIND_BATCH, no principal header
 *   body        {"v":2,"kind":"batch","commands":[<a message body of the form above>, ...]}
 * Only purchases are packed (an order needs one of the consumer's line blocks, a purchase
 * none). The confirm of the message is the confirm of every command in it; the consumer
 * applies each command as if it had come alone, and passes the stream offset of the message
 * only once all of them are answered, so a crash re-reads a half-applied message, whose
 * applied commands are then replays of their keys. A message whose commands cannot all be
 * decoded is one dead letter, all of it.
 *
 * The consumer reads the stream from its stored offset, decodes each message into the same
 * command a synchronous request makes (principal and key included) and submits it to the
 * writer, which stores the stream offset in the same transaction as the command's effect and
 * its idempotency record: a crash anywhere applies each command once (a message seen again is
 * a replay of its key). A message that cannot be decoded becomes a dead letter of stage
 * INTAKE_STAGE. GET /v1/commands/{key} answers 202 {"status":"pending"} until the key's
 * idempotency record exists, then the record's status and body (the 201 with the order, or
 * the 409), as a replay of the POST would.
 */
#ifndef STOCKD_INTAKE_H
#define STOCKD_INTAKE_H

/* The stream of commands and its retention (declared by both sides with these arguments). */
#define INTAKE_QUEUE "stockd.commands"
#define INTAKE_MAX_LENGTH_BYTES (1024LL * 1024 * 1024)
#define INTAKE_MAX_AGE_SECONDS (7LL * 24 * 3600)

/* The message body's format version, and the kinds (the AMQP type). */
#define INTAKE_FORMAT_VERSION 1
#define INTAKE_KIND_PURCHASE "purchase"
#define INTAKE_KIND_ORDER "order"
#define INTAKE_BATCH_FORMAT_VERSION 2
#define INTAKE_KIND_BATCH "batch"
/* The longest kind and route the consumer reads from an envelope (the longest it knows are
 * "purchase" and "/v1/purchase"; longer ones are refused). */
#define INTAKE_KIND_BYTES_MAX 16
#define INTAKE_ROUTE_BYTES_MAX 32
/* Commands packed into one message at most: a burst of 64 purchases costs the broker one
 * message. A batch also ends before its body would pass MQ_BODY_BYTES_MAX (intake_pub.c). */
#define INTAKE_BATCH_COMMANDS_MAX 64

/* The dead-letter stage of a message that cannot be decoded, and the consumer's offset name. */
#define INTAKE_STAGE "commands"
/* The consumer's row in worker_leases: of several instances on one PostgreSQL, only its
 * holder consumes (intake_consume.h). core/prefetch.c spells it too. */
#define INTAKE_LEASE_STAGE "intake"

/* How long a request waits for the broker's confirm before its 503. */
#define INTAKE_CONFIRM_TIMEOUT_MS 2000

/* The Retry-After of a 503 broker_unavailable, and of a pending status. */
#define INTAKE_RETRY_AFTER_SECONDS 1

/* The status URL's prefix: INTAKE_STATUS_PREFIX + the key (URL-encoded). */
#define INTAKE_STATUS_PREFIX "/v1/commands/"

#endif
