/*
 * intake_consume.h - the consuming side of asynchronous intake (issue 12, contract in
 * intake.h): one thread that reads the stream INTAKE_QUEUE from its stored offset and applies
 * each command through the writer (stockd --amqp URL).
 *
 * Each delivery is decoded (intake_consume_decode: the envelope of intake.h, then the request
 * body with the decoder of its route, the same as the synchronous request's) into the command
 * a synchronous request makes, with the message's principal and Idempotency-Key, and pushed to
 * the writer's queue (origin CMD_ORIGIN_INTAKE). A message that cannot be decoded (not JSON,
 * another format version, an unknown kind or route, a missing or malformed principal or key,
 * a principal or key that disagrees with the message's header or id, or a body its route's
 * decoder refuses with a 4xx) becomes a CMD_INTAKE_DEAD_LETTER: the writer writes it into the
 * dead-letter table with stage INTAKE_STAGE, keyed by its stream offset, with the message as
 * it came (message-id, type, principal header and body, up to DLT_MESSAGE_BODY_BYTES_MAX: what
 * POST /v1/dlt/replay publishes again, http/api_dlt_stream.c), and its status URL
 * stays pending (the publisher validated the same body with the same decoder before it
 * published, so such a message is not one of ours, or of another version). A command the
 * writer refuses with a business answer (409 insufficient_stock) is no dead letter: that
 * answer is its idempotency record.
 *
 * Exactly once in effect. Every command carries the consumer's low-water mark in the stream
 * (cmd->stage_seq, stage CMD_STAGE_INTAKE): the offset of the first delivery not answered yet
 * when it was pushed. The writer stores it (worker_offsets, row INTAKE_STAGE; the highest
 * wins) in the SAME transaction as the command's effect and idempotency record, and a start
 * resumes from it. So a crash anywhere (before the commit, between the commit and the ack)
 * makes the consumer read again only messages at or after the mark, each of which either left
 * no trace (it is applied now) or committed its idempotency record (it is a replay now: no
 * second effect). A delivery is acked after its writer's answer, in stream order (the acked
 * prefix is the resume offset of a reconnect). An answer 503 or 429 (nothing written) pushes
 * the command again after INTAKE_CONSUME_RETRY_MS. INTAKE_CONSUME_COMMANDS_MAX commands may
 * be with the writer at once (the broker's prefetch), so the writer batches them.
 *
 * Several instances on one PostgreSQL, each with --amqp: only the holder of the consumer's
 * lease (work/work_lease.h, stage INTAKE_LEASE_STAGE of table worker_leases, --lease-ms and
 * --instance-id as for the workers and the relay) consumes; the others hold no broker
 * connection for it and wait to take over. A holder that loses its lease (a renewal found it
 * taken, or none succeeded before its local deadline) stops consuming at once: its connection
 * is dropped (nothing more is delivered), the deliveries it had not pushed and the commands
 * waiting for a retry are dropped, and the answers still to come of the commands it pushed
 * are dropped as they arrive. Those commands may still be in the writer's queue: each carries
 * the lease token it was pushed under, and on PostgreSQL the writer reads the lease row FOR
 * SHARE in the command's batch and refuses, unwritten, a command whose token is not the
 * current one (the fence of work/work.h; reply_fenced). Why this is safe: the new holder's
 * acquisition (an UPDATE of the row) waits for every batch that read the old token, and only
 * then does the new holder read the stored offset; so it sees everything the old holder
 * committed, offsets included, and nothing of the old holder commits after it. It then reads
 * the stream from that offset: a message the old holder applied past its stored low-water
 * mark is read again and answered from its idempotency record (the same key, the same
 * fingerprint: a replay, no second effect), and a dead letter is counted again (attempts).
 * Without the fence each command would still take effect once (two writers apply one key
 * once: the sequencer lock orders their batches and the second finds the first's record), but
 * the old holder's late commands would interleave with the new holder's, applying the stream
 * out of its order (who gets the last unit), from an instance that no longer consumes. A clean stop
 * gives the lease up, so another instance takes it at once. On SQLite (one process per data
 * directory) the lease is always held and nothing of it is stored. Read intake_consume.c
 * next.
 */
#ifndef STOCKD_INTAKE_CONSUME_H
#define STOCKD_INTAKE_CONSUME_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/json_view.h"
#include "core/command.h"
#include "core/queue.h"

/* Commands the consumer may have with the writer at once: the broker's prefetch too. */
#define INTAKE_CONSUME_COMMANDS_MAX 1024
/* Line blocks for checkout orders among them (a block is ~24 KiB): reading waits for one. */
#define INTAKE_CONSUME_LINE_BLOCKS_MAX 128
/* Message blocks for dead letters among them (a block is ~73 KiB: the message kept with its
 * dead letter, for a replay): messages that cannot be decoded are rare, and reading waits for
 * one while all are with the writer. */
#define INTAKE_CONSUME_MESSAGES_MAX 8
/* How long a command answered 503 or 429 (nothing written) waits before it is pushed again. */
#define INTAKE_CONSUME_RETRY_MS 50
/* How long the thread waits for a delivery while commands are with the writer (their answers
 * are picked up after it), and while idle (the heartbeat and reconnects need these calls). */
#define INTAKE_CONSUME_BUSY_WAIT_MS 2
#define INTAKE_CONSUME_IDLE_WAIT_MS 100
/* The principal of a dead letter's command (no client sent it). */
#define INTAKE_CONSUME_PRINCIPAL "stockd-intake"

/* The body decoder of the routes (api_decode_async of http/api.h): fills kind, style and the
 * arguments of cmd from the request body published for route. 0 or an svc_err with *why. */
typedef int (*intake_consume_decoder)(const char *route, const struct json_view *body,
                                      struct command *cmd, const char **why);

struct intake_consume_config {
    const char *db_uri;   /* the consumer's own reader: its lease and the stored offset */
    const char *amqp_url; /* amqp://user:password@host:port/vhost */
    struct queue *queue;  /* the writer's (borrowed) */
    intake_consume_decoder decode;
    const char *instance_id; /* the lease's holder id; NULL or "": hostname:pid:start-ms */
    int64_t lease_ms;        /* WORK_LEASE_MS_MIN..MAX; 0: WORK_LEASE_MS_DEFAULT */
};

/* What /health and /metrics show; written by the consumer's thread, read by any. */
struct intake_consume_stats {
    _Atomic bool connected;
    _Atomic int64_t resume_offset;  /* every message before it is answered and acked */
    _Atomic int64_t last_offset;    /* the last delivered (-1: none yet) */
    _Atomic uint64_t consumed;      /* answered and acked (the four below, and duplicates) */
    _Atomic uint64_t applied;       /* answered 2xx, not a replay */
    _Atomic uint64_t refused;       /* answered 4xx by the writer (409 insufficient_stock...) */
    _Atomic uint64_t replayed;      /* answered from an earlier idempotency record */
    _Atomic uint64_t dead_lettered; /* written into the dead-letter table */
    _Atomic uint64_t retried;       /* pushed again after a 503 or 429 */
    _Atomic uint64_t errors;        /* lost connections and failed connects */
};

struct intake_consume; /* opaque: intake_consume.c */

/* Allocates the consumer (no thread, no connection yet); NULL when out of memory or when the
 * URL is not an amqp:// URL. The caller owns it: intake_consume_stop, then _free. */
struct intake_consume *intake_consume_new(const struct intake_consume_config *config);
/* Opens the consumer's reader, tries the lease (reading the stored offset and consuming from
 * it if it is won) and starts the thread; the broker may be down (it connects when it can).
 * 0 or an error (storage unreachable, no thread). */
int intake_consume_start(struct intake_consume *ic);
/* Stops and joins the thread and gives the lease up. Commands still with the writer are left
 * to it (their answers come back to memory nobody reads; what was not acked is read again at
 * the next start, or by the next holder: fenced if it took the lease meanwhile). */
void intake_consume_stop(struct intake_consume *ic);
/* Frees a consumer that never started (NULL is fine); a stopped one lives until the exit. */
void intake_consume_free(struct intake_consume *ic);
const struct intake_consume_stats *intake_consume_stats(const struct intake_consume *ic);
/* Whether this instance holds the consumer's lease now (only the holder consumes), the holder
 * it last saw ("" when unknown), and this instance's holder id (any thread). */
bool intake_consume_holds(const struct intake_consume *ic);
void intake_consume_holder(struct intake_consume *ic, char *out, size_t size);
const char *intake_consume_instance_id(const struct intake_consume *ic);

/* The writer's reply hook for a command of origin CMD_ORIGIN_INTAKE (any thread: it only
 * queues it back to the consumer's thread). */
void intake_consume_writer_reply(struct command *cmd);

/* Decodes one message (intake.h) into cmd, zeroed by the caller but for cmd->lines (a line
 * block, or NULL: then an order is refused with SVC_ECAPACITY): principal, key, kind,
 * arguments and the fingerprint, the same as the synchronous request's (cmd->lines is left
 * NULL unless it is an order).
 * id, type and principal_header are the message's (empty or NULL: absent). 0, or SVC_EVALIDATION
 * or SVC_EINVALID_JSON with why (why_size bytes) saying what is wrong. */
int intake_consume_decode(const void *body, size_t length, const char *id, const char *type,
                          const char *principal_header, intake_consume_decoder decode,
                          struct command *cmd, char *why, size_t why_size);
/* Decodes a batch message (intake.h: type INTAKE_KIND_BATCH) into cmds[0..*count_out), at most
 * INTAKE_BATCH_COMMANDS_MAX of them; each one used is zeroed here first (lines NULL: a batch
 * holds purchases only), the others are left as they are. 0, or an error with why and
 * *count_out 0: one command that cannot be decoded makes the whole message a dead letter. */
int intake_consume_decode_batch(const void *body, size_t length, intake_consume_decoder decode,
                                struct command *const *cmds, size_t *count_out, char *why,
                                size_t why_size);

#endif
