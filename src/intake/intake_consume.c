/*
 * intake_consume.c - the consumer of intake_consume.h: one thread that reads deliveries,
 * decodes them into commands for the writer, and acks them in stream order once answered.
 *
 * The ring holds every delivery handed out and not acked yet, in stream order: its head is
 * the low-water mark every command carries (the offset a restart may resume from), and its
 * answered prefix is acked as soon as it is answered. A batch message (intake.h) is one entry
 * whose commands are all answered before it counts as answered. A reconnect (mq.h) delivers again
 * from the acked prefix: a delivery at an offset the ring holds is the same message, whose command
 * is still with the writer or answered; the ring keeps its new tag, and nothing is pushed.
 *
 * The lease: the thread ticks it at the top of each round and never waits past its next
 * action. A loss drops the connection (mq_consume_stop), the ring, the retries and a held
 * delivery; a command already pushed carries the token it was pushed under, so its answer is
 * told apart when it comes back (a stale one only returns to the pool). A win reads the stored
 * offset again and consumes from there with an empty ring (intake_consume.h says why that is
 * safe).
 *
 * Ownership: the commands and line blocks come from the consumer's pools; a pushed command
 * belongs to the writer until intake_consume_writer_reply queues it back (mutex-guarded); the
 * thread then reads its answer and returns it to the pool, or keeps it for a push again after
 * a 503. The mq handle, the reader and the lease are the thread's (and intake_consume_start's
 * and _stop's before the thread runs and after it was joined); other threads read the lease
 * through work_lease_held / work_lease_holder.
 */
#include "intake/intake_consume.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/json_view.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"
#include "intake/intake.h"
#include "mq/mq.h"
#include "store/store_open.h"
#include "work/work_lease.h"

_Static_assert(INTAKE_CONSUME_COMMANDS_MAX <= 65535, "the prefetch is 16 bits");
_Static_assert(INTAKE_CONSUME_LINE_BLOCKS_MAX <= INTAKE_CONSUME_COMMANDS_MAX, "blocks per command");
_Static_assert(INTAKE_CONSUME_RETRY_MS > INTAKE_CONSUME_BUSY_WAIT_MS, "a retry waits");
_Static_assert(INTAKE_CONSUME_IDLE_WAIT_MS < MQ_HEARTBEAT_SECONDS * 1000 / 2, "heartbeats");
_Static_assert(REASON_BYTES_MAX >= 64, "a dead letter's error says something");
_Static_assert(INTAKE_CONSUME_MESSAGES_MAX <= INTAKE_CONSUME_COMMANDS_MAX, "blocks per command");
_Static_assert(DLT_MESSAGE_ID_BYTES_MAX >= MQ_ID_BYTES_MAX, "a message-id is kept whole");
_Static_assert(DLT_MESSAGE_TYPE_BYTES_MAX >= MQ_TYPE_BYTES_MAX, "a type is kept whole");
_Static_assert(DLT_MESSAGE_PRINCIPAL_BYTES_MAX >= MQ_HEADER_VALUE_BYTES_MAX, "a header whole");
_Static_assert(DLT_MESSAGE_BODY_BYTES_MAX <= MQ_BODY_BYTES_MAX, "a kept body can be published");

/* A delivery handed out and not acked yet. */
struct intake_entry {
    int64_t offset;
    uint64_t delivery_tag;
    uint64_t generation;
    uint32_t pending; /* its commands not answered yet (a batch has several; 0: answered) */
};

struct intake_consume {
    struct intake_consume_config config;
    struct mq *mq;               /* owned: the consumer, used by the thread */
    struct store_reader *reader; /* owned: the thread's (the lease, the stored offset) */
    struct work_lease lease;     /* stage INTAKE_LEASE_STAGE */
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1]; /* this instance's id in worker_leases */
    struct command *pool;                          /* INTAKE_CONSUME_COMMANDS_MAX, owned */
    struct command **free_list;                    /* INTAKE_CONSUME_COMMANDS_MAX */
    uint32_t free_count;
    struct cmd_lines *blocks;          /* INTAKE_CONSUME_LINE_BLOCKS_MAX, owned */
    struct cmd_lines *free_blocks;     /* their free list (next_free) */
    struct cmd_message *messages;      /* INTAKE_CONSUME_MESSAGES_MAX, owned: for dead letters */
    struct cmd_message *free_messages; /* their free list (next_free) */
    uint64_t *entry_of;                /* by pool index: the ring position of its delivery */
    struct intake_entry *ring;         /* INTAKE_CONSUME_COMMANDS_MAX deliveries, in order */
    uint64_t head;                     /* absolute positions: ring[pos % MAX] */
    uint64_t tail;
    int64_t last_offset;    /* the highest offset handed out (-1: none) */
    struct command **retry; /* answered 503/429: pushed again at retry_at_us */
    int64_t *retry_at_us;
    uint32_t retry_count;
    /* A delivery of an order that came while no line block was free: held (its body copied)
     * until an answer frees one, and nothing is read meanwhile. */
    bool held;
    struct mq_delivery held_delivery;
    char *held_body;      /* MQ_BODY_BYTES_MAX, owned */
    pthread_mutex_t lock; /* guards replies, reply_count */
    pthread_cond_t wake;  /* a reply came, or the thread is stopping */
    struct command **replies;
    uint32_t reply_count;
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    struct intake_consume_stats stats;
};

/* ---- decoding ----------------------------------------------------------------------------- */

/* Writes what is wrong (a, then b if not NULL) into why and returns err. */
static int intake_consume_why(char *why, size_t size, int err, const char *a, const char *b)
{
    snprintf(why, size, "%s%s", a, b != NULL ? b : "");
    return err;
}

/* A string member of 1..max bytes without NUL, copied into out (max + 1 bytes), or false. */
static bool intake_consume_string(const struct json_view *object, const char *name, char *out,
                                  size_t max)
{
    struct json_view_member m = json_view_get(object, name);
    if (m.type != JSON_VIEW_STRING || m.length < 1 || m.length > max ||
        memchr(m.text, '\0', m.length) != NULL) {
        out[0] = '\0';
        return false;
    }
    memcpy(out, m.text, m.length);
    out[m.length] = '\0';
    return true;
}

/* An Idempotency-Key as the HTTP side accepts it: printable ASCII without spaces. */
static bool intake_consume_key_valid(const char *key)
{
    for (const char *p = key; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
            return false;
        }
    }
    return true;
}

/* The route's kind: purchase for /v1/purchase and seed 000's /purchase, order for /v1/orders. */
static const char *intake_consume_route_kind(const char *route)
{
    if (strcmp(route, "/v1/purchase") == 0 || strcmp(route, "/purchase") == 0) {
        return INTAKE_KIND_PURCHASE;
    }
    return strcmp(route, "/v1/orders") == 0 ? INTAKE_KIND_ORDER : NULL;
}

/* The envelope of intake.h around the request body; the body is decoded by the caller. */
static int intake_consume_envelope(const struct json_view *root, const char *id, const char *type,
                                   const char *principal_header, struct command *cmd,
                                   char route[INTAKE_ROUTE_BYTES_MAX + 1], char *why,
                                   size_t why_size)
{
    struct json_view_member v = json_view_get(root, "v");
    if (v.type != JSON_VIEW_INTEGER || v.integer != INTAKE_FORMAT_VERSION) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION,
                                  "v must be 1 (the format version)", NULL);
    }
    char kind[INTAKE_KIND_BYTES_MAX + 1];
    bool has_kind = intake_consume_string(root, "kind", kind, INTAKE_KIND_BYTES_MAX);
    bool has_route = intake_consume_string(root, "route", route, INTAKE_ROUTE_BYTES_MAX);
    const char *route_kind = has_route ? intake_consume_route_kind(route) : NULL;
    if (!has_kind || route_kind == NULL || strcmp(kind, route_kind) != 0) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION,
                                  "kind and route must be purchase with /v1/purchase or"
                                  " /purchase, or order with /v1/orders",
                                  NULL);
    }
    if (type != NULL && type[0] != '\0' && strcmp(type, kind) != 0) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION,
                                  "the type is not the kind: ", type);
    }
    char principal[AUTH_PRINCIPAL_BYTES_MAX + 1];
    if (!intake_consume_string(root, "principal", principal, AUTH_PRINCIPAL_BYTES_MAX) ||
        (principal_header != NULL && principal_header[0] != '\0' &&
         strcmp(principal_header, principal) != 0)) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION,
                                  "principal must be 1-64 bytes, as the principal header", NULL);
    }
    char key[IDEM_KEY_BYTES_MAX + 1];
    /* message-id is an AMQP short string that mq.h keeps MQ_ID_BYTES_MAX bytes of. */
    if (!intake_consume_string(root, "idempotencyKey", key, IDEM_KEY_BYTES_MAX) ||
        !intake_consume_key_valid(key) ||
        (id != NULL && id[0] != '\0' && strncmp(id, key, MQ_ID_BYTES_MAX) != 0)) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION,
                                  "idempotencyKey must be 1-255 printable ASCII characters,"
                                  " as the message-id",
                                  NULL);
    }
    strcpy(cmd->principal, principal);
    strcpy(cmd->idem_key, key);
    cmd->has_idem_key = true;
    return 0;
}

/* Decodes the message object root (intake.h, format 1) into cmd; see intake_consume_decode. */
static int intake_consume_decode_object(const struct json_view *root, const char *id,
                                        const char *type, const char *principal_header,
                                        intake_consume_decoder decode, struct command *cmd,
                                        char *why, size_t why_size)
{
    char route[INTAKE_ROUTE_BYTES_MAX + 1];
    int rc = intake_consume_envelope(root, id, type, principal_header, cmd, route, why, why_size);
    struct json_view_member member = json_view_get(root, "body");
    struct json_flat scratch;
    struct json_view request;
    if (rc == 0 && !json_view_object(&member, &scratch, &request)) {
        rc = intake_consume_why(why, why_size, SVC_EVALIDATION,
                                "body must be the request's JSON object", NULL);
    }
    if (rc == 0 && strcmp(intake_consume_route_kind(route), INTAKE_KIND_ORDER) == 0 &&
        cmd->lines == NULL) {
        rc = intake_consume_why(why, why_size, SVC_ECAPACITY, "no line block for an order", NULL);
    }
    if (rc == 0) {
        const char *detail = "refused";
        rc = decode(route, &request, cmd, &detail);
        if (rc != 0) {
            snprintf(why, why_size, "the body of %s: %s", route, detail);
        }
    }
    if (rc != 0) {
        return rc;
    }
    SVC_ASSERT(cmd->kind == CMD_PURCHASE || cmd->kind == CMD_ORDER_CREATE);
    if (cmd->kind != CMD_ORDER_CREATE) {
        cmd->lines = NULL; /* a purchase has none: the fingerprint folds their absence */
    }
    cmd->fingerprint = command_fingerprint(cmd); /* as http_command_submit */
    return 0;
}

/* Whether a message json_flat read may be decoded from that reading: an order's lines are read
 * through jansson (api_decode_async), so its message is parsed again by it. */
static bool intake_consume_flat_enough(const struct json_flat *root)
{
    static const char order_route[] = "/v1/orders";
    const struct json_flat_member *route = json_flat_get(root, "route");
    return route == NULL || route->type != JSON_FLAT_STRING ||
           route->length != sizeof order_route - 1 ||
           memcmp(route->text, order_route, route->length) != 0;
}

/* Reads length bytes of body as a JSON object into *out: json_flat's reading (into *flat) when
 * the text is of its subset, else jansson's (the caller decrefs out->json). 0, or
 * SVC_EINVALID_JSON with why. */
static int intake_consume_view(const void *body, size_t length, struct json_flat *flat,
                               struct json_view *out, char *why, size_t why_size)
{
    *out = (struct json_view){NULL, NULL};
    if (body != NULL && json_flat_parse(body, length, flat) && intake_consume_flat_enough(flat)) {
        out->flat = flat;
        return 0;
    }
    json_error_t error;
    json_t *root = body != NULL ? json_loadb(body, length, JSON_REJECT_DUPLICATES, &error) : NULL;
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return intake_consume_why(why, why_size, SVC_EINVALID_JSON, "not a JSON object: ",
                                  body != NULL && root == NULL ? error.text : NULL);
    }
    out->json = root;
    return 0;
}

int intake_consume_decode(const void *body, size_t length, const char *id, const char *type,
                          const char *principal_header, intake_consume_decoder decode,
                          struct command *cmd, char *why, size_t why_size)
{
    SVC_ASSERT(decode != NULL && cmd != NULL && why != NULL && why_size >= 64);
    struct json_flat flat;
    struct json_view root;
    int rc = intake_consume_view(body, length, &flat, &root, why, why_size);
    if (rc != 0) {
        return rc;
    }
    rc =
        intake_consume_decode_object(&root, id, type, principal_header, decode, cmd, why, why_size);
    json_decref(root.json);
    return rc;
}

/* The batch's version, kind and commands array (1..INTAKE_BATCH_COMMANDS_MAX of them). */
static int intake_consume_batch_envelope(const struct json_view *root,
                                         struct json_view_member *commands, char *why,
                                         size_t why_size)
{
    struct json_view_member v = json_view_get(root, "v");
    char kind[INTAKE_KIND_BYTES_MAX + 1];
    bool has_kind = intake_consume_string(root, "kind", kind, INTAKE_KIND_BYTES_MAX);
    *commands = json_view_get(root, "commands");
    if (v.type != JSON_VIEW_INTEGER || v.integer != INTAKE_BATCH_FORMAT_VERSION || !has_kind ||
        strcmp(kind, INTAKE_KIND_BATCH) != 0) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION, "a batch has v 2 and kind batch",
                                  NULL);
    }
    size_t count = commands->type == JSON_VIEW_ARRAY ? json_view_array_size(commands) : 0;
    if (count < 1 || count > INTAKE_BATCH_COMMANDS_MAX) {
        return intake_consume_why(why, why_size, SVC_EVALIDATION,
                                  "commands must hold 1-64 commands", NULL);
    }
    return 0;
}

int intake_consume_decode_batch(const void *body, size_t length, intake_consume_decoder decode,
                                struct command *const *cmds, size_t *count_out, char *why,
                                size_t why_size)
{
    SVC_ASSERT(decode != NULL && cmds != NULL && why != NULL && why_size >= 64);
    *count_out = 0;
    struct json_flat flat;
    struct json_view root;
    int rc = intake_consume_view(body, length, &flat, &root, why, why_size);
    if (rc != 0) {
        return rc;
    }
    struct json_view_member commands;
    rc = intake_consume_batch_envelope(&root, &commands, why, why_size);
    struct json_view_items items = {&commands, 0, 0};
    size_t count = 0;
    while (rc == 0) {
        struct json_flat scratch;
        struct json_view command;
        int next = json_view_next_object(&items, &scratch, &command);
        if (next == 0) {
            break;
        }
        SVC_ASSERT(count < INTAKE_BATCH_COMMANDS_MAX);
        memset(cmds[count], 0, sizeof *cmds[count]); /* lines NULL: a batch holds purchases */
        rc = next < 0 ? intake_consume_why(why, why_size, SVC_EVALIDATION,
                                           "a command is a JSON object", NULL)
                      : intake_consume_decode_object(&command, NULL, NULL, NULL, decode,
                                                     cmds[count], why, why_size);
        if (rc == SVC_ECAPACITY) {
            rc = intake_consume_why(why, why_size, SVC_EVALIDATION, "a batch holds purchases only",
                                    NULL);
        }
        count++;
    }
    json_decref(root.json);
    *count_out = rc == 0 ? count : 0;
    return rc;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

struct intake_consume *intake_consume_new(const struct intake_consume_config *config)
{
    SVC_ASSERT(config != NULL && config->db_uri != NULL && config->amqp_url != NULL);
    SVC_ASSERT(config->queue != NULL && config->decode != NULL);
    struct intake_consume *ic = calloc(1, sizeof *ic);
    if (ic == NULL) {
        return NULL;
    }
    ic->config = *config;
    SVC_ASSERT(config->lease_ms == 0 ||
               (config->lease_ms >= WORK_LEASE_MS_MIN && config->lease_ms <= WORK_LEASE_MS_MAX));
    ic->config.lease_ms = config->lease_ms != 0 ? config->lease_ms : WORK_LEASE_MS_DEFAULT;
    if (config->instance_id != NULL && config->instance_id[0] != '\0') {
        snprintf(ic->holder, sizeof ic->holder, "%s", config->instance_id);
    } else {
        work_lease_default_holder(ic->holder, sizeof ic->holder);
    }
    size_t n = INTAKE_CONSUME_COMMANDS_MAX;
    ic->pool = calloc(n, sizeof *ic->pool);
    ic->free_list = calloc(n, sizeof *ic->free_list);
    ic->blocks = calloc(INTAKE_CONSUME_LINE_BLOCKS_MAX, sizeof *ic->blocks);
    ic->messages = calloc(INTAKE_CONSUME_MESSAGES_MAX, sizeof *ic->messages);
    ic->entry_of = calloc(n, sizeof *ic->entry_of);
    ic->ring = calloc(n, sizeof *ic->ring);
    ic->retry = calloc(n, sizeof *ic->retry);
    ic->retry_at_us = calloc(n, sizeof *ic->retry_at_us);
    ic->replies = calloc(n, sizeof *ic->replies);
    ic->held_body = malloc(MQ_BODY_BYTES_MAX);
    struct mq_config mc = {
        config->amqp_url,        INTAKE_QUEUE,           MQ_CONSUMER,
        INTAKE_MAX_LENGTH_BYTES, INTAKE_MAX_AGE_SECONDS, INTAKE_CONSUME_COMMANDS_MAX};
    if (!ic->pool || !ic->free_list || !ic->blocks || !ic->messages || !ic->entry_of || !ic->ring ||
        !ic->retry || !ic->retry_at_us || !ic->replies || !ic->held_body ||
        mq_new(&ic->mq, &mc) != 0) {
        ic->mq = NULL;
        intake_consume_free(ic);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        ic->free_list[ic->free_count++] = &ic->pool[n - 1 - i];
    }
    for (size_t i = 0; i < INTAKE_CONSUME_LINE_BLOCKS_MAX; i++) {
        ic->blocks[i].next_free = ic->free_blocks;
        ic->free_blocks = &ic->blocks[i];
    }
    for (size_t i = 0; i < INTAKE_CONSUME_MESSAGES_MAX; i++) {
        ic->messages[i].next_free = ic->free_messages;
        ic->free_messages = &ic->messages[i];
    }
    ic->last_offset = -1;
    atomic_store(&ic->stats.last_offset, -1);
    work_lease_init(&ic->lease, INTAKE_LEASE_STAGE);
    pthread_mutex_init(&ic->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&ic->wake, &attr);
    pthread_condattr_destroy(&attr);
    SVC_ASSERT(ic->free_count == INTAKE_CONSUME_COMMANDS_MAX);
    return ic;
}

void intake_consume_free(struct intake_consume *ic)
{
    if (ic == NULL) {
        return;
    }
    SVC_ASSERT(!ic->started);
    if (ic->mq != NULL) {
        mq_free(ic->mq);
        pthread_mutex_destroy(&ic->lock);
        pthread_cond_destroy(&ic->wake);
        work_lease_deinit(&ic->lease);
    }
    store_reader_close(ic->reader);
    free(ic->pool);
    free(ic->free_list);
    free(ic->blocks);
    free(ic->messages);
    free(ic->entry_of);
    free(ic->ring);
    free(ic->retry);
    free(ic->retry_at_us);
    free(ic->replies);
    free(ic->held_body);
    free(ic);
}

const struct intake_consume_stats *intake_consume_stats(const struct intake_consume *ic)
{
    return &ic->stats;
}

bool intake_consume_holds(const struct intake_consume *ic)
{
    return work_lease_held(&ic->lease);
}

void intake_consume_holder(struct intake_consume *ic, char *out, size_t size)
{
    work_lease_holder(&ic->lease, out, size);
}

const char *intake_consume_instance_id(const struct intake_consume *ic)
{
    return ic->holder;
}

void intake_consume_writer_reply(struct command *cmd)
{
    struct intake_consume *ic = cmd->owner;
    SVC_ASSERT(cmd->origin == CMD_ORIGIN_INTAKE && ic != NULL);
    pthread_mutex_lock(&ic->lock);
    SVC_ASSERT(ic->reply_count < INTAKE_CONSUME_COMMANDS_MAX); /* at most the pool is out */
    ic->replies[ic->reply_count++] = cmd;
    pthread_cond_signal(&ic->wake);
    pthread_mutex_unlock(&ic->lock);
}

/* ---- the ring of deliveries --------------------------------------------------------------- */

static struct intake_entry *intake_consume_entry(struct intake_consume *ic, uint64_t position)
{
    SVC_ASSERT(position >= ic->head && position < ic->tail);
    return &ic->ring[position % INTAKE_CONSUME_COMMANDS_MAX];
}

/* The offset a command may store: every message before it is answered (0: none to store). */
static int64_t intake_consume_mark(struct intake_consume *ic)
{
    if (ic->head < ic->tail) {
        return intake_consume_entry(ic, ic->head)->offset;
    }
    return ic->last_offset + 1;
}

/* Acks the answered prefix of the ring, in stream order. */
static void intake_consume_ack_prefix(struct intake_consume *ic)
{
    while (ic->head < ic->tail && intake_consume_entry(ic, ic->head)->pending == 0) {
        const struct intake_entry *e = intake_consume_entry(ic, ic->head);
        struct mq_delivery d = {
            .offset = e->offset, .delivery_tag = e->delivery_tag, .generation = e->generation};
        (void)mq_ack(ic->mq, &d); /* a lost connection delivers it again: the ring is gone by
                                   * then, so it counts as a duplicate below */
        ic->head++;
        atomic_fetch_add(&ic->stats.consumed, 1);
    }
    atomic_store(&ic->stats.resume_offset, mq_resume_offset(ic->mq));
}

/* The ring position holding offset, or UINT64_MAX. */
static uint64_t intake_consume_find(struct intake_consume *ic, int64_t offset)
{
    uint64_t lo = ic->head;
    uint64_t hi = ic->tail;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (intake_consume_entry(ic, mid)->offset < offset) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < ic->tail && intake_consume_entry(ic, lo)->offset == offset ? lo : UINT64_MAX;
}

/* ---- commands ----------------------------------------------------------------------------- */

static void intake_consume_push(struct intake_consume *ic, struct command *cmd)
{
    SVC_ASSERT(ic->lease.held && cmd->lease_token == ic->lease.token);
    cmd->stage_seq = intake_consume_mark(ic) >= 1 ? intake_consume_mark(ic) : 0;
    cmd->queued_us = clock_mono_us();
    command_reply_prepare(cmd);
    if (queue_push(ic->config.queue, cmd) != 0) {
        SVC_ASSERT(ic->retry_count < INTAKE_CONSUME_COMMANDS_MAX);
        ic->retry_at_us[ic->retry_count] = clock_mono_us(); /* the queue is full: next round */
        ic->retry[ic->retry_count++] = cmd;
    }
}

static void intake_consume_release(struct intake_consume *ic, struct command *cmd)
{
    if (cmd->message != NULL) {
        size_t index = (size_t)(cmd->message - ic->messages);
        SVC_ASSERT(index < INTAKE_CONSUME_MESSAGES_MAX);
        ic->messages[index].next_free = ic->free_messages;
        ic->free_messages = &ic->messages[index];
        cmd->message = NULL;
    }
    if (cmd->lines != NULL) {
        cmd->lines->next_free = ic->free_blocks;
        ic->free_blocks = cmd->lines;
        cmd->lines = NULL;
    }
    ic->free_list[ic->free_count++] = cmd;
}

/* Keeps the message of delivery d in a message block, for its dead letter. */
static const struct cmd_message *intake_consume_keep(struct intake_consume *ic,
                                                     const struct mq_delivery *d,
                                                     const char *principal_header)
{
    SVC_ASSERT(ic->free_messages != NULL);
    struct cmd_message *m = ic->free_messages;
    ic->free_messages = m->next_free;
    m->next_free = NULL;
    snprintf(m->id, sizeof m->id, "%s", d->id);
    snprintf(m->type, sizeof m->type, "%s", d->type);
    snprintf(m->principal, sizeof m->principal, "%s",
             principal_header != NULL ? principal_header : "");
    m->body_kept = d->body_length <= sizeof m->body;
    m->body_length = m->body_kept ? d->body_length : 0;
    if (m->body_length > 0) {
        memcpy(m->body, d->body, m->body_length);
    }
    SVC_ASSERT(m->body_length <= sizeof m->body);
    return m;
}

/* Holds delivery d (its body copied) until a block is free: an order without a line block, or
 * a dead letter without a message block. */
static void intake_consume_hold(struct intake_consume *ic, const struct mq_delivery *d)
{
    SVC_ASSERT(!ic->held && d->body_length <= MQ_BODY_BYTES_MAX);
    ic->held_delivery = *d;
    memcpy(ic->held_body, d->body, d->body_length);
    ic->held_delivery.body = ic->held_body;
    ic->held = true;
}

/* Hands cmd, decoded from the ring's last entry, to the writer. */
static void intake_consume_hand(struct intake_consume *ic, struct command *cmd)
{
    SVC_ASSERT(cmd->lines == NULL || cmd->kind == CMD_ORDER_CREATE);
    cmd->origin = CMD_ORIGIN_INTAKE;
    cmd->owner = ic;
    cmd->stage = CMD_STAGE_INTAKE;
    cmd->lease_token = ic->lease.token; /* the fence: refused unwritten once it is not current */
    ic->entry_of[cmd - ic->pool] = ic->tail - 1;
    intake_consume_push(ic, cmd);
}

/* Makes cmd the dead letter of delivery d, which cannot be decoded (why); its message goes
 * into a message block (the caller checked one is free). */
static void intake_consume_dead_letter(struct intake_consume *ic, struct command *cmd,
                                       const struct mq_delivery *d, const char *principal_header,
                                       const char *why)
{
    memset(cmd, 0, sizeof *cmd);
    cmd->kind = CMD_INTAKE_DEAD_LETTER;
    cmd->stream_offset = d->offset;
    cmd->message = intake_consume_keep(ic, d, principal_header);
    strcpy(cmd->principal, INTAKE_CONSUME_PRINCIPAL);
    snprintf(cmd->reason, sizeof cmd->reason, "%s", why);
    for (char *c = cmd->reason; *c != '\0'; c++) {
        /* The error may quote the message (its type): stored as text, it must be text
         * (PostgreSQL refuses a TEXT that is not UTF-8, and the batch would fail). */
        *c = (*c >= 0x20 && *c <= 0x7e) ? *c : '?';
    }
    log_warn("intake: message %" PRId64 " (id %s) cannot be decoded: %s", d->offset,
             d->id[0] != '\0' ? d->id : "none", why);
}

/* The commands of batch delivery d (intake.h), pushed, or its one dead letter. */
static void intake_consume_batch(struct intake_consume *ic, const struct mq_delivery *d,
                                 struct intake_entry *e)
{
    struct command *cmds[INTAKE_BATCH_COMMANDS_MAX];
    for (size_t i = 0; i < INTAKE_BATCH_COMMANDS_MAX; i++) {
        cmds[i] = ic->free_list[ic->free_count - 1 - i]; /* zeroed by the decoder, as used */
    }
    char why[REASON_BYTES_MAX + 1];
    size_t count = 0;
    int rc = intake_consume_decode_batch(d->body, d->body_length, ic->config.decode, cmds, &count,
                                         why, sizeof why);
    if (rc != 0 && ic->free_messages == NULL) {
        intake_consume_hold(ic, d); /* until a message block is free for its dead letter */
        return;
    }
    if (rc != 0) {
        SVC_ASSERT(count == 0);
        intake_consume_dead_letter(ic, cmds[0], d, NULL, why);
        count = 1;
    }
    SVC_ASSERT(count >= 1 && count <= INTAKE_BATCH_COMMANDS_MAX);
    ic->free_count -= (uint32_t)count; /* cmds[i] is free_list[free_count - 1 - i] */
    e->pending = (uint32_t)count;
    for (size_t i = 0; i < count; i++) {
        intake_consume_hand(ic, cmds[i]);
    }
}

/* Makes the command(s) of delivery d (a new message, the ring's last entry) and pushes them;
 * holds d instead when it is an order and no line block is free, or a dead letter and no
 * message block is free. */
static void intake_consume_command(struct intake_consume *ic, const struct mq_delivery *d)
{
    /* The loop reads only with room for a whole batch. */
    SVC_ASSERT(ic->free_count >= INTAKE_BATCH_COMMANDS_MAX && !ic->held);
    SVC_ASSERT(ic->tail > ic->head && intake_consume_entry(ic, ic->tail - 1)->offset == d->offset);
    struct intake_entry *e = intake_consume_entry(ic, ic->tail - 1);
    if (strcmp(d->type, INTAKE_KIND_BATCH) == 0) {
        intake_consume_batch(ic, d, e);
        return;
    }
    struct command *cmd = ic->free_list[--ic->free_count];
    memset(cmd, 0, sizeof *cmd);
    cmd->lines = ic->free_blocks; /* kept for an order only, below */
    const char *principal_header = NULL;
    for (size_t i = 0; i < d->header_count; i++) {
        if (strcmp(d->header_keys[i], "principal") == 0) {
            principal_header = d->header_values[i];
        }
    }
    char why[REASON_BYTES_MAX + 1];
    int rc = intake_consume_decode(d->body, d->body_length, d->id, d->type, principal_header,
                                   ic->config.decode, cmd, why, sizeof why);
    if (rc == SVC_ECAPACITY || (rc != 0 && ic->free_messages == NULL)) {
        SVC_ASSERT(rc != SVC_ECAPACITY || ic->free_blocks == NULL);
        cmd->lines = NULL;
        ic->free_list[ic->free_count++] = cmd;
        intake_consume_hold(ic, d);
        return;
    }
    if (rc != 0) {
        intake_consume_dead_letter(ic, cmd, d, principal_header, why);
    }
    if (cmd->kind == CMD_ORDER_CREATE) {
        SVC_ASSERT(cmd->lines == ic->free_blocks);
        ic->free_blocks = cmd->lines->next_free;
        cmd->lines->next_free = NULL;
    }
    e->pending = 1;
    intake_consume_hand(ic, cmd);
}

/* One delivery: a new message, or one the ring holds (a reconnect delivers the unacked again). */
static void intake_consume_delivery(struct intake_consume *ic, const struct mq_delivery *d)
{
    if (d->offset <= ic->last_offset) {
        uint64_t position = intake_consume_find(ic, d->offset);
        if (position == UINT64_MAX) {
            (void)mq_ack(ic->mq, d); /* acked before: the broker sends it again, nothing to do */
            atomic_fetch_add(&ic->stats.consumed, 1);
            return;
        }
        struct intake_entry *e = intake_consume_entry(ic, position);
        e->delivery_tag = d->delivery_tag; /* its command is with the writer, or answered */
        e->generation = d->generation;
        intake_consume_ack_prefix(ic);
        return;
    }
    SVC_ASSERT(ic->tail - ic->head < INTAKE_CONSUME_COMMANDS_MAX); /* a command per entry */
    ic->ring[ic->tail % INTAKE_CONSUME_COMMANDS_MAX] =
        (struct intake_entry){d->offset, d->delivery_tag, d->generation, 0};
    ic->tail++;
    ic->last_offset = d->offset;
    atomic_store(&ic->stats.last_offset, d->offset);
    intake_consume_command(ic, d);
}

static void intake_consume_on_reply(struct intake_consume *ic, struct command *cmd)
{
    SVC_ASSERT(cmd->origin == CMD_ORIGIN_INTAKE);
    if (!ic->lease.held || cmd->lease_token != ic->lease.token) {
        /* Pushed under a lease since lost: its delivery left the ring with the lease, and
         * what it did (if the fence let it) the next holder read from storage. */
        intake_consume_release(ic, cmd);
        return;
    }
    SVC_ASSERT(!cmd->reply_fenced || cmd->reply_status == 409);
    if (cmd->reply_status == 503 || cmd->reply_status == 429 || cmd->reply_fenced) {
        /* Fenced: the lease is lost though this thread has not seen it yet (its next renewal
         * will); until then the command waits as after a 503, and is dropped with the ring. */
        SVC_ASSERT(ic->retry_count < INTAKE_CONSUME_COMMANDS_MAX);
        ic->retry_at_us[ic->retry_count] = clock_mono_us() + INTAKE_CONSUME_RETRY_MS * 1000;
        ic->retry[ic->retry_count++] = cmd; /* nothing of it was written: again, later */
        atomic_fetch_add(&ic->stats.retried, 1);
        return;
    }
    if (cmd->kind == CMD_INTAKE_DEAD_LETTER) {
        atomic_fetch_add(&ic->stats.dead_lettered, 1);
    } else if (cmd->reply_replayed) {
        atomic_fetch_add(&ic->stats.replayed, 1);
    } else if (cmd->reply_status < 300) {
        atomic_fetch_add(&ic->stats.applied, 1);
    } else {
        atomic_fetch_add(&ic->stats.refused, 1);
    }
    struct intake_entry *e = intake_consume_entry(ic, ic->entry_of[cmd - ic->pool]);
    SVC_ASSERT(e->pending > 0);
    e->pending--;
    intake_consume_release(ic, cmd);
    intake_consume_ack_prefix(ic);
}

/* Takes the answers that came back and pushes again the commands whose wait is over. */
static void intake_consume_answers(struct intake_consume *ic)
{
    struct command *taken[256];
    uint32_t n = 0;
    pthread_mutex_lock(&ic->lock);
    while (n < 256 && ic->reply_count > 0) {
        taken[n++] = ic->replies[--ic->reply_count];
    }
    pthread_mutex_unlock(&ic->lock);
    for (uint32_t i = 0; i < n; i++) {
        intake_consume_on_reply(ic, taken[i]);
    }
    int64_t now = clock_mono_us();
    struct command *due[INTAKE_CONSUME_COMMANDS_MAX];
    uint32_t due_count = 0;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < ic->retry_count; i++) {
        if (ic->retry_at_us[i] <= now) {
            due[due_count++] = ic->retry[i];
        } else {
            ic->retry_at_us[kept] = ic->retry_at_us[i];
            ic->retry[kept++] = ic->retry[i];
        }
    }
    ic->retry_count = kept;
    for (uint32_t i = 0; i < due_count; i++) {
        intake_consume_push(ic, due[i]); /* may go back to the list: the queue is full */
    }
}

/* ---- the thread --------------------------------------------------------------------------- */

static void intake_consume_publish_stats(struct intake_consume *ic)
{
    const struct mq_stats *s = mq_stats(ic->mq);
    atomic_store(&ic->stats.connected, mq_connected(ic->mq));
    atomic_store(&ic->stats.errors, s->losses + s->connect_failures);
}

static int64_t intake_consume_mono_ms(void)
{
    return clock_mono_us() / 1000;
}

/* wait_ms, or less so as not to wait past the lease's next action (0 when it is due). */
static int64_t intake_consume_until_lease(const struct intake_consume *ic, int64_t wait_ms)
{
    SVC_ASSERT(wait_ms >= 0);
    int64_t until_due = work_lease_due_ms(&ic->lease) - intake_consume_mono_ms();
    int64_t wait = until_due < wait_ms ? (until_due > 0 ? until_due : 0) : wait_ms;
    SVC_ASSERT(wait >= 0 && wait <= wait_ms);
    return wait;
}

/* Waits up to wait_ms for an answer of the writer or the stop. */
static void intake_consume_wait(struct intake_consume *ic, int64_t wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    int64_t ns = until.tv_nsec + wait_ms * 1000000;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&ic->lock);
    if (ic->reply_count == 0 && !atomic_load(&ic->stopping)) {
        (void)pthread_cond_timedwait(&ic->wake, &ic->lock, &until);
    }
    pthread_mutex_unlock(&ic->lock);
}

/* Reads deliveries while nothing is held and a whole batch's commands are free; -ENOTCONN
 * when the connection is lost. Each delivery takes one command, or a batch's up to
 * INTAKE_BATCH_COMMANDS_MAX: every command out has its unacked entry in the ring, so the ring
 * (INTAKE_CONSUME_COMMANDS_MAX, the prefetch) never holds more entries than commands. */
static int intake_consume_read(struct intake_consume *ic)
{
    int wait = ic->head < ic->tail ? INTAKE_CONSUME_BUSY_WAIT_MS : INTAKE_CONSUME_IDLE_WAIT_MS;
    wait = (int)intake_consume_until_lease(ic, wait);
    while (!ic->held && ic->free_count >= INTAKE_BATCH_COMMANDS_MAX &&
           ic->tail - ic->head < INTAKE_CONSUME_COMMANDS_MAX) {
        struct mq_delivery d;
        int rc = mq_next(ic->mq, wait, &d);
        if (rc <= 0) {
            return rc;
        }
        intake_consume_delivery(ic, &d);
        wait = 0; /* take what is there, then look at the answers */
    }
    return 0;
}

/* ---- the lease ---------------------------------------------------------------------------- */

/* The lease was lost: consuming stops at once. The connection goes (nothing more is
 * delivered), and with it the ring: its deliveries not answered are read again by the next
 * holder from the stored offset. The commands waiting for a retry and a held delivery go too;
 * the commands with the writer come back fenced or answered, and only return to the pool. */
static void intake_consume_drop(struct intake_consume *ic)
{
    mq_consume_stop(ic->mq);
    uint32_t dropped = (uint32_t)(ic->tail - ic->head);
    ic->head = ic->tail;
    for (uint32_t i = 0; i < ic->retry_count; i++) {
        intake_consume_release(ic, ic->retry[i]);
    }
    ic->retry_count = 0;
    ic->held = false;
    SVC_ASSERT(ic->head == ic->tail && ic->retry_count == 0);
    log_warn("intake: stopped consuming at offset %" PRId64 " (%u deliveries not answered"
             " dropped)",
             ic->last_offset, dropped);
}

/* The lease was won: the stored offset is read again (another holder may have moved it, or
 * this instance's last answers were never stored) and consuming starts there. 0 or an error
 * (storage unreachable). */
static int intake_consume_load(struct intake_consume *ic)
{
    SVC_ASSERT(ic->head == ic->tail && ic->retry_count == 0 && !ic->held);
    int64_t offset = 0;
    int rc = store_reader_stage_offset(ic->reader, INTAKE_STAGE, &offset);
    if (rc != 0) {
        return rc;
    }
    SVC_ASSERT(offset >= 0);
    ic->last_offset = offset - 1;
    atomic_store(&ic->stats.resume_offset, offset);
    atomic_store(&ic->stats.last_offset, offset - 1);
    if (mq_consume(ic->mq, offset) != 0) {
        log_warn("intake: the broker is not reachable yet; commands wait in the stream");
    }
    log_info("intake: instance %s consumes stream %s from offset %" PRId64, ic->holder,
             INTAKE_QUEUE, offset);
    return 0;
}

/* Acquires, renews or notices the loss of the lease when due. */
static void intake_consume_lease_tick(struct intake_consume *ic)
{
    enum work_lease_change change = work_lease_tick(&ic->lease, ic->reader, ic->holder,
                                                    ic->config.lease_ms, intake_consume_mono_ms());
    if (change == WORK_LEASE_LOST) {
        intake_consume_drop(ic);
    } else if (change == WORK_LEASE_WON && intake_consume_load(ic) != 0) {
        log_warn("intake: cannot read its offset; its lease is tried again");
        work_lease_forget(&ic->lease, intake_consume_mono_ms(),
                          ic->config.lease_ms / WORK_LEASE_RENEW_DIVISOR);
    }
}

static void *intake_consume_loop(void *arg)
{
    svc_thread_name("intake-consume", -1);
    struct intake_consume *ic = arg;
    while (!atomic_load(&ic->stopping)) {
        intake_consume_lease_tick(ic);
        intake_consume_answers(ic);
        if (!ic->lease.held) {
            /* Not the holder: only the answers of commands pushed before a loss come back. */
            intake_consume_publish_stats(ic);
            intake_consume_wait(ic, intake_consume_until_lease(ic, INTAKE_CONSUME_IDLE_WAIT_MS));
            continue;
        }
        if (ic->held && ic->free_blocks != NULL && ic->free_messages != NULL) {
            ic->held = false;
            intake_consume_command(ic, &ic->held_delivery);
        }
        int rc = 0;
        if (ic->held || ic->free_count < INTAKE_BATCH_COMMANDS_MAX) {
            intake_consume_wait(ic, INTAKE_CONSUME_BUSY_WAIT_MS); /* for an answer */
        } else {
            rc = intake_consume_read(ic);
        }
        intake_consume_publish_stats(ic);
        if (rc < 0) {
            /* The broker is away. */
            intake_consume_wait(ic, intake_consume_until_lease(ic, INTAKE_CONSUME_IDLE_WAIT_MS));
        }
    }
    return NULL;
}

int intake_consume_start(struct intake_consume *ic)
{
    SVC_ASSERT(!ic->started && ic->reader == NULL);
    int rc = store_reader_open(&ic->reader, ic->config.db_uri);
    if (rc != 0) {
        log_error("intake: cannot open its reader (%d)", rc);
        return rc;
    }
    /* The lease is tried now: on SQLite, or when no live instance holds it, consuming starts
     * from the stored offset at once, as before leases. */
    log_info("intake: instance %s, lease of %" PRId64 " ms", ic->holder, ic->config.lease_ms);
    intake_consume_lease_tick(ic);
    if (!ic->lease.held) {
        char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1];
        work_lease_holder(&ic->lease, holder, sizeof holder);
        log_info("intake: another instance (%s) holds the consumer's lease; this one waits",
                 holder[0] != '\0' ? holder : "unknown");
    }
    intake_consume_publish_stats(ic);
    ic->started = true;
    rc = pthread_create(&ic->thread, NULL, intake_consume_loop, ic);
    if (rc != 0) {
        ic->started = false;
        return -rc;
    }
    return 0;
}

void intake_consume_stop(struct intake_consume *ic)
{
    if (ic == NULL || !ic->started) {
        return;
    }
    atomic_store(&ic->stopping, true);
    pthread_mutex_lock(&ic->lock);
    pthread_cond_signal(&ic->wake);
    pthread_mutex_unlock(&ic->lock);
    pthread_join(ic->thread, NULL);
    work_lease_release(&ic->lease, ic->reader, ic->holder); /* the thread has ended */
    SVC_ASSERT(!ic->lease.held);
}
