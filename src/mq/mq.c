/*
 * mq.c - the AMQP handle of mq.h over rabbitmq-c 0.11: connecting (and again after a loss),
 * the publisher's window and its confirms, the consumer's deliveries and offsets.
 *
 * The window is a ring of MQ_WINDOW_MAX slots in publish order, with their bodies in a byte
 * ring of MQ_WINDOW_BYTES (bodies leave in the order they came, so a ring is enough). A slot's
 * tag is its delivery tag on the current connection (0: not sent on it); tags start at 1 after
 * each confirm.select. rabbitmq-c has no confirm-wait helper: mq_poll reads frames itself and
 * matches basic.ack / basic.nack (`multiple`: every tag up to it) against the slots' tags.
 *
 * Ownership: the handle owns the connection, the slots, the ring and the consumer's last
 * message (freed at the next mq_next or at mq_free). Nothing is shared between threads.
 */
#include "mq/mq.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/svc_assert.h"

/* The one channel of a connection. */
#define MQ_CHANNEL 1
/* The frame size asked for at login (RabbitMQ's default): bodies are split into frames. */
#define MQ_FRAME_BYTES_MAX 131072

struct mq_slot {
    uint64_t tag; /* delivery tag on the current connection; 0: not sent on it */
    bool confirmed;
    uint32_t sends; /* basic.publish of it so far (past 1: republished) */
    int64_t cookie;
    size_t body_offset; /* in ring */
    size_t body_length;
    char id[MQ_ID_BYTES_MAX + 1];
    char type[MQ_TYPE_BYTES_MAX + 1]; /* "": none */
    char keys[MQ_HEADERS_MAX][MQ_HEADER_KEY_BYTES_MAX + 1];
    char values[MQ_HEADERS_MAX][MQ_HEADER_VALUE_BYTES_MAX + 1];
    size_t header_count;
};

struct mq {
    enum mq_role role;
    char url[MQ_URL_BYTES_MAX + 1];
    char url_parsed[MQ_URL_BYTES_MAX + 1]; /* amqp_parse_url's buffer: info points into it */
    struct amqp_connection_info info;
    char queue[MQ_QUEUE_BYTES_MAX + 1];
    int64_t max_length_bytes;
    int64_t max_age_seconds;
    uint16_t prefetch;
    amqp_connection_state_t conn; /* owned; NULL while not connected */
    uint64_t generation;          /* connections made so far */
    int64_t retry_at_us;          /* monotonic: no connect attempt before it */
    int64_t backoff_ms;
    /* Publisher. */
    struct mq_slot *slots; /* MQ_WINDOW_MAX, owned: the window, from head, count of them */
    uint32_t head;
    uint32_t count;
    char *ring;        /* MQ_WINDOW_BYTES, owned: the bodies of the window's slots */
    size_t ring_end;   /* one past the newest body */
    bool ring_wrapped; /* the newest bodies start again at 0, below the oldest */
    uint64_t next_tag; /* the tag the next basic.publish gets */
    int64_t confirmed_cookie;
    /* Consumer. */
    bool consuming;
    int64_t resume_offset;  /* the next connection consumes from here */
    int64_t consume_from;   /* what the current connection's basic.consume asked for */
    amqp_message_t message; /* the last delivery's, owned while message_held */
    bool message_held;
    struct mq_stats stats;
};

/* ---- connection --------------------------------------------------------------------------- */

static bool mq_reply_ok(amqp_connection_state_t conn, amqp_rpc_reply_t reply, const char *what)
{
    (void)conn;
    if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
        return true;
    }
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        log_warn("mq: %s failed: %s", what, amqp_error_string2(reply.library_error));
    } else if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
               reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *m = reply.reply.decoded;
        log_warn("mq: %s refused by the broker: %u %.*s", what, m->reply_code,
                 (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    } else if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
               reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *m = reply.reply.decoded;
        log_warn("mq: %s: the broker closed the connection: %u %.*s", what, m->reply_code,
                 (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    } else {
        log_warn("mq: %s failed (reply type %d)", what, (int)reply.reply_type);
    }
    return false;
}

/* The durable stream declaration: x-queue-type, x-max-length-bytes and x-max-age. */
static bool mq_declare(struct mq *mq)
{
    SVC_ASSERT(mq->conn != NULL);
    SVC_ASSERT(mq->max_length_bytes > 0);
    char age[32];
    amqp_table_entry_t entries[3];
    entries[0].key = amqp_cstring_bytes("x-queue-type");
    entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[0].value.value.bytes = amqp_cstring_bytes("stream");
    entries[1].key = amqp_cstring_bytes("x-max-length-bytes");
    entries[1].value.kind = AMQP_FIELD_KIND_I64;
    entries[1].value.value.i64 = mq->max_length_bytes;
    int count = 2;
    if (mq->max_age_seconds > 0) {
        snprintf(age, sizeof age, "%" PRId64 "s", mq->max_age_seconds);
        entries[2].key = amqp_cstring_bytes("x-max-age");
        entries[2].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[2].value.value.bytes = amqp_cstring_bytes(age);
        count = 3;
    }
    amqp_table_t args = {count, entries};
    amqp_queue_declare(mq->conn, MQ_CHANNEL, amqp_cstring_bytes(mq->queue), 0, 1, 0, 0, args);
    return mq_reply_ok(mq->conn, amqp_get_rpc_reply(mq->conn), "queue.declare");
}

/* Socket, login and channel: true with mq->conn open on MQ_CHANNEL. */
static bool mq_open_channel(struct mq *mq)
{
    SVC_ASSERT(mq->conn == NULL);
    mq->conn = amqp_new_connection();
    if (mq->conn == NULL) {
        return false;
    }
    amqp_socket_t *socket = amqp_tcp_socket_new(mq->conn);
    struct timeval connect_tv = {MQ_CONNECT_TIMEOUT_MS / 1000,
                                 (MQ_CONNECT_TIMEOUT_MS % 1000) * 1000};
    struct timeval rpc_tv = {MQ_RPC_TIMEOUT_MS / 1000, (MQ_RPC_TIMEOUT_MS % 1000) * 1000};
    if (socket == NULL || amqp_set_handshake_timeout(mq->conn, &rpc_tv) != AMQP_STATUS_OK ||
        amqp_set_rpc_timeout(mq->conn, &rpc_tv) != AMQP_STATUS_OK) {
        return false;
    }
    int status = amqp_socket_open_noblock(socket, mq->info.host, mq->info.port, &connect_tv);
    if (status != AMQP_STATUS_OK) {
        log_warn("mq: cannot connect to %s:%d: %s", mq->info.host, mq->info.port,
                 amqp_error_string2(status));
        return false;
    }
    amqp_rpc_reply_t reply =
        amqp_login(mq->conn, mq->info.vhost, 0, MQ_FRAME_BYTES_MAX, MQ_HEARTBEAT_SECONDS,
                   AMQP_SASL_METHOD_PLAIN, mq->info.user, mq->info.password);
    if (!mq_reply_ok(mq->conn, reply, "login")) {
        return false;
    }
    amqp_channel_open(mq->conn, MQ_CHANNEL);
    return mq_reply_ok(mq->conn, amqp_get_rpc_reply(mq->conn), "channel.open");
}

/* basic.qos and basic.consume from resume_offset (x-stream-offset). */
static bool mq_start_consumer(struct mq *mq)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER);
    SVC_ASSERT(mq->consuming && mq->resume_offset >= 0);
    amqp_basic_qos(mq->conn, MQ_CHANNEL, 0, mq->prefetch, 0);
    if (!mq_reply_ok(mq->conn, amqp_get_rpc_reply(mq->conn), "basic.qos")) {
        return false;
    }
    amqp_table_entry_t entry;
    entry.key = amqp_cstring_bytes("x-stream-offset");
    entry.value.kind = AMQP_FIELD_KIND_I64;
    entry.value.value.i64 = mq->resume_offset;
    amqp_table_t args = {1, &entry};
    amqp_basic_consume(mq->conn, MQ_CHANNEL, amqp_cstring_bytes(mq->queue), amqp_empty_bytes, 0, 0,
                       0, args);
    if (!mq_reply_ok(mq->conn, amqp_get_rpc_reply(mq->conn), "basic.consume")) {
        return false;
    }
    mq->consume_from = mq->resume_offset;
    return true;
}

static void mq_release_message(struct mq *mq)
{
    if (mq->message_held) {
        amqp_destroy_message(&mq->message);
        mq->message_held = false;
    }
    SVC_ASSERT(!mq->message_held);
}

/* Drops the connection (the broker closed it, or a call on it failed): every message of the
 * window is to be sent again on the next one, which may come at once. */
static void mq_lose(struct mq *mq, const char *why)
{
    SVC_ASSERT(mq->conn != NULL);
    log_warn("mq: connection to %s:%d lost (%s); %u unconfirmed will be sent again", mq->info.host,
             mq->info.port, why, mq->count);
    mq_release_message(mq);
    amqp_destroy_connection(mq->conn);
    mq->conn = NULL;
    mq->stats.losses++;
    for (uint32_t i = 0; i < mq->count; i++) {
        mq->slots[(mq->head + i) % MQ_WINDOW_MAX].tag = 0;
    }
    mq->retry_at_us = clock_mono_us();
    SVC_ASSERT(mq->conn == NULL);
}

static int mq_send_unsent(struct mq *mq);

int mq_connect(struct mq *mq)
{
    if (mq->conn != NULL) {
        return 0;
    }
    bool ok = mq_open_channel(mq) && mq_declare(mq);
    if (ok && mq->role == MQ_PUBLISHER) {
        amqp_confirm_select(mq->conn, MQ_CHANNEL);
        ok = mq_reply_ok(mq->conn, amqp_get_rpc_reply(mq->conn), "confirm.select");
        mq->next_tag = 1;
    }
    if (ok && mq->role == MQ_CONSUMER && mq->consuming) {
        ok = mq_start_consumer(mq);
    }
    if (!ok) {
        if (mq->conn != NULL) {
            amqp_destroy_connection(mq->conn);
            mq->conn = NULL;
        }
        mq->stats.connect_failures++;
        mq->retry_at_us = clock_mono_us() + mq->backoff_ms * 1000;
        mq->backoff_ms = mq->backoff_ms * 2 < MQ_RECONNECT_BACKOFF_MAX_MS
                             ? mq->backoff_ms * 2
                             : MQ_RECONNECT_BACKOFF_MAX_MS;
        return -ENOTCONN;
    }
    mq->generation++;
    mq->stats.connects++;
    mq->backoff_ms = MQ_RECONNECT_BACKOFF_MIN_MS;
    if (mq->role == MQ_PUBLISHER && mq->count > 0) {
        log_info("mq: connected again; republishing %u unconfirmed", mq->count);
        return mq_send_unsent(mq);
    }
    return 0;
}

/* Connects when not connected and the backoff allows it. 0 when connected after it. */
static int mq_ensure(struct mq *mq)
{
    if (mq->conn != NULL) {
        return 0;
    }
    if (clock_mono_us() < mq->retry_at_us) {
        return -ENOTCONN;
    }
    return mq_connect(mq);
}

bool mq_connected(const struct mq *mq)
{
    return mq->conn != NULL;
}

static size_t mq_copy_checked(char *out, size_t out_size, const char *in)
{
    size_t length = in != NULL ? strlen(in) : 0;
    SVC_ASSERT(length < out_size);
    memcpy(out, in != NULL ? in : "", length + 1);
    return length;
}

int mq_new(struct mq **out, const struct mq_config *config)
{
    SVC_ASSERT(out != NULL && config != NULL);
    *out = NULL;
    if (config->url == NULL || strlen(config->url) > MQ_URL_BYTES_MAX || config->queue == NULL ||
        strlen(config->queue) > MQ_QUEUE_BYTES_MAX || config->queue[0] == '\0' ||
        config->max_length_bytes <= 0 || config->max_age_seconds < 0) {
        return -EINVAL;
    }
    struct mq *mq = calloc(1, sizeof *mq);
    if (mq == NULL) {
        return -ENOMEM;
    }
    mq_copy_checked(mq->url, sizeof mq->url, config->url);
    mq_copy_checked(mq->url_parsed, sizeof mq->url_parsed, config->url);
    mq_copy_checked(mq->queue, sizeof mq->queue, config->queue);
    if (amqp_parse_url(mq->url_parsed, &mq->info) != AMQP_STATUS_OK || mq->info.ssl) {
        free(mq);
        return -EINVAL; /* amqps:// would need a TLS socket: not supported */
    }
    mq->role = config->role;
    mq->max_length_bytes = config->max_length_bytes;
    mq->max_age_seconds = config->max_age_seconds;
    mq->prefetch = config->prefetch != 0 ? config->prefetch : MQ_PREFETCH_DEFAULT;
    mq->backoff_ms = MQ_RECONNECT_BACKOFF_MIN_MS;
    if (mq->role == MQ_PUBLISHER) {
        mq->slots = calloc(MQ_WINDOW_MAX, sizeof *mq->slots);
        mq->ring = malloc(MQ_WINDOW_BYTES);
        if (mq->slots == NULL || mq->ring == NULL) {
            mq_free(mq);
            return -ENOMEM;
        }
    }
    *out = mq;
    return 0;
}

void mq_free(struct mq *mq)
{
    if (mq == NULL) {
        return;
    }
    mq_release_message(mq);
    if (mq->conn != NULL) {
        /* Polite close; a dead broker makes these fail within MQ_RPC_TIMEOUT_MS. */
        amqp_channel_close(mq->conn, MQ_CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(mq->conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(mq->conn);
        mq->conn = NULL;
    }
    free(mq->slots);
    free(mq->ring);
    free(mq);
}

const struct mq_stats *mq_stats(const struct mq *mq)
{
    return &mq->stats;
}

/* ---- publisher: the window ---------------------------------------------------------------- */

/* Where a body of length bytes goes in the ring, or false when the ring has no room for it.
 * Every body takes at least a byte, so that two bodies never start at the same offset. */
static bool mq_ring_place(const struct mq *mq, size_t length, size_t *offset, bool *wraps)
{
    size_t need = length > 0 ? length : 1;
    SVC_ASSERT(need <= MQ_WINDOW_BYTES);
    *wraps = false;
    if (mq->count == 0) {
        *offset = 0;
        return true;
    }
    size_t start = mq->slots[mq->head].body_offset;
    if (mq->ring_wrapped) { /* free: [ring_end, start) */
        SVC_ASSERT(mq->ring_end <= start);
        *offset = mq->ring_end;
        return start - mq->ring_end >= need;
    }
    SVC_ASSERT(mq->ring_end >= start);
    if (MQ_WINDOW_BYTES - mq->ring_end >= need) { /* free: [ring_end, end of the ring) */
        *offset = mq->ring_end;
        return true;
    }
    *offset = 0; /* free: [0, start) */
    *wraps = true;
    return start >= need;
}

static struct mq_slot *mq_slot_at(struct mq *mq, uint32_t i)
{
    SVC_ASSERT(i < mq->count);
    return &mq->slots[(mq->head + i) % MQ_WINDOW_MAX];
}

/* Sends one slot on the current connection, with the next delivery tag. */
static int mq_send(struct mq *mq, struct mq_slot *slot)
{
    SVC_ASSERT(mq->conn != NULL && slot->tag == 0 && !slot->confirmed);
    SVC_ASSERT(slot->header_count <= MQ_HEADERS_MAX);
    amqp_table_entry_t entries[MQ_HEADERS_MAX];
    for (size_t i = 0; i < slot->header_count; i++) {
        entries[i].key = amqp_cstring_bytes(slot->keys[i]);
        entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[i].value.value.bytes = amqp_cstring_bytes(slot->values[i]);
    }
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof props);
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                   AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.message_id = amqp_cstring_bytes(slot->id);
    props.headers = (amqp_table_t){(int)slot->header_count, entries};
    if (slot->type[0] != '\0') {
        props._flags |= AMQP_BASIC_TYPE_FLAG;
        props.type = amqp_cstring_bytes(slot->type);
    }
    amqp_bytes_t body = {slot->body_length, mq->ring + slot->body_offset};
    int status = amqp_basic_publish(mq->conn, MQ_CHANNEL, amqp_cstring_bytes(""),
                                    amqp_cstring_bytes(mq->queue), 0, 0, &props, body);
    if (status != AMQP_STATUS_OK) {
        mq_lose(mq, amqp_error_string2(status));
        return -ENOTCONN;
    }
    slot->tag = mq->next_tag++;
    mq->stats.published++;
    mq->stats.republished += slot->sends > 0 ? 1 : 0;
    slot->sends++;
    return 0;
}

/* Sends, in window order, every slot not sent on the current connection. */
static int mq_send_unsent(struct mq *mq)
{
    SVC_ASSERT(mq->role == MQ_PUBLISHER);
    SVC_ASSERT(mq->conn != NULL);
    for (uint32_t i = 0; i < mq->count; i++) {
        struct mq_slot *slot = mq_slot_at(mq, i);
        if (slot->tag != 0 || slot->confirmed) {
            continue;
        }
        int rc = mq_send(mq, slot);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static int mq_message_check(const struct mq_message *msg)
{
    SVC_ASSERT(msg != NULL && msg->id != NULL);
    if (strlen(msg->id) > MQ_ID_BYTES_MAX || msg->body_length > MQ_BODY_BYTES_MAX ||
        (msg->type != NULL && strlen(msg->type) > MQ_TYPE_BYTES_MAX) ||
        msg->header_count > MQ_HEADERS_MAX) {
        return -EMSGSIZE;
    }
    for (size_t i = 0; i < msg->header_count; i++) {
        if (strlen(msg->headers[i].key) > MQ_HEADER_KEY_BYTES_MAX ||
            strlen(msg->headers[i].value) > MQ_HEADER_VALUE_BYTES_MAX) {
            return -EMSGSIZE;
        }
    }
    return 0;
}

int mq_publish(struct mq *mq, const struct mq_message *msg)
{
    SVC_ASSERT(mq->role == MQ_PUBLISHER);
    int rc = mq_message_check(msg);
    if (rc != 0) {
        return rc;
    }
    size_t offset = 0;
    bool wraps = false;
    if (mq->count == MQ_WINDOW_MAX || !mq_ring_place(mq, msg->body_length, &offset, &wraps)) {
        return -EAGAIN;
    }
    struct mq_slot *slot = &mq->slots[(mq->head + mq->count) % MQ_WINDOW_MAX];
    memset(slot, 0, offsetof(struct mq_slot, id));
    slot->cookie = msg->cookie;
    slot->body_offset = offset;
    slot->body_length = msg->body_length;
    if (msg->body_length > 0) {
        memcpy(mq->ring + offset, msg->body, msg->body_length);
    }
    mq_copy_checked(slot->id, sizeof slot->id, msg->id);
    mq_copy_checked(slot->type, sizeof slot->type, msg->type);
    slot->header_count = msg->header_count;
    for (size_t i = 0; i < msg->header_count; i++) {
        mq_copy_checked(slot->keys[i], sizeof slot->keys[i], msg->headers[i].key);
        mq_copy_checked(slot->values[i], sizeof slot->values[i], msg->headers[i].value);
    }
    mq->ring_wrapped = mq->ring_wrapped || wraps;
    mq->ring_end = offset + (msg->body_length > 0 ? msg->body_length : 1);
    mq->count++;
    SVC_ASSERT(mq->count <= MQ_WINDOW_MAX);
    if (mq_ensure(mq) != 0) {
        return 0; /* sent when a connection comes */
    }
    if (slot->tag == 0) {        /* else a connection just made sent the whole window */
        (void)mq_send(mq, slot); /* a failure is a loss: sent again on the next connection */
    }
    return 0;
}

/* Moves the confirmed prefix of the window out, in publish order. */
static void mq_pop_confirmed(struct mq *mq)
{
    while (mq->count > 0 && mq->slots[mq->head].confirmed) {
        struct mq_slot *slot = &mq->slots[mq->head];
        size_t old_start = slot->body_offset;
        mq->confirmed_cookie = slot->cookie;
        mq->head = (mq->head + 1) % MQ_WINDOW_MAX;
        mq->count--;
        mq->stats.confirmed++;
        if (mq->count == 0) {
            mq->ring_end = 0;
            mq->ring_wrapped = false;
        } else if (mq->ring_wrapped && mq->slots[mq->head].body_offset < old_start) {
            mq->ring_wrapped = false; /* the oldest body is now in the low part */
        }
    }
    SVC_ASSERT(mq->count == 0 || !mq->slots[mq->head].confirmed);
}

/* basic.ack (nack false) or basic.nack (true) of tag, or of every tag up to it (multiple). */
static void mq_on_confirm(struct mq *mq, uint64_t tag, bool multiple, bool nack)
{
    SVC_ASSERT(tag > 0 && tag < mq->next_tag);
    uint32_t matched = 0;
    for (uint32_t i = 0; i < mq->count; i++) {
        struct mq_slot *slot = mq_slot_at(mq, i);
        bool match =
            slot->tag != 0 && !slot->confirmed && (multiple ? slot->tag <= tag : slot->tag == tag);
        if (!match) {
            continue;
        }
        matched++;
        if (nack) {
            slot->tag = 0; /* sent again below */
        } else {
            slot->confirmed = true;
        }
    }
    if (nack) {
        mq->stats.nacked += matched;
        log_warn("mq: the broker nacked %u message(s); sending them again", matched);
    } else {
        mq_pop_confirmed(mq);
    }
}

/* Handles one frame of a publisher's connection. 0, or -ENOTCONN when it closed. */
static int mq_publisher_frame(struct mq *mq, const amqp_frame_t *frame)
{
    SVC_ASSERT(mq->role == MQ_PUBLISHER);
    if (frame->frame_type != AMQP_FRAME_METHOD) {
        return 0; /* a publisher is sent no content */
    }
    const amqp_method_t *method = &frame->payload.method;
    if (method->id == AMQP_BASIC_ACK_METHOD) {
        const amqp_basic_ack_t *ack = method->decoded;
        mq_on_confirm(mq, ack->delivery_tag, ack->multiple, false);
    } else if (method->id == AMQP_BASIC_NACK_METHOD) {
        const amqp_basic_nack_t *nack = method->decoded;
        mq_on_confirm(mq, nack->delivery_tag, nack->multiple, true);
        return mq_send_unsent(mq);
    } else if (method->id == AMQP_CONNECTION_CLOSE_METHOD ||
               method->id == AMQP_CHANNEL_CLOSE_METHOD) {
        mq_lose(mq,
                method->id == AMQP_CONNECTION_CLOSE_METHOD ? "connection.close" : "channel.close");
        return -ENOTCONN;
    }
    return 0;
}

/* Reads one frame within timeout_ms. 1 read, 0 none in time, -ENOTCONN lost. */
static int mq_read_frame(struct mq *mq, int timeout_ms, amqp_frame_t *frame)
{
    SVC_ASSERT(mq->conn != NULL);
    SVC_ASSERT(timeout_ms >= 0);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int status = amqp_simple_wait_frame_noblock(mq->conn, frame, &tv);
    if (status == AMQP_STATUS_TIMEOUT) {
        return 0;
    }
    if (status != AMQP_STATUS_OK) {
        mq_lose(mq, amqp_error_string2(status));
        return -ENOTCONN;
    }
    return 1;
}

int mq_poll(struct mq *mq, int timeout_ms)
{
    SVC_ASSERT(mq->role == MQ_PUBLISHER);
    SVC_ASSERT(timeout_ms >= 0);
    if (mq_ensure(mq) != 0) {
        return -ENOTCONN;
    }
    int wait_ms = timeout_ms;
    for (;;) {
        amqp_frame_t frame;
        int rc = mq_read_frame(mq, wait_ms, &frame);
        if (rc <= 0) {
            break;
        }
        if (mq_publisher_frame(mq, &frame) != 0) {
            break;
        }
        wait_ms = 0; /* then only what is ready */
    }
    if (mq->conn == NULL) {
        return -ENOTCONN;
    }
    amqp_maybe_release_buffers(mq->conn);
    return 0;
}

size_t mq_unconfirmed(const struct mq *mq)
{
    return mq->count;
}

int64_t mq_confirmed_cookie(const struct mq *mq)
{
    return mq->confirmed_cookie;
}

void mq_set_confirmed_cookie(struct mq *mq, int64_t initial)
{
    SVC_ASSERT(mq->role == MQ_PUBLISHER);
    SVC_ASSERT(mq->count == 0);
    mq->confirmed_cookie = initial;
}

size_t mq_drop_unconfirmed(struct mq *mq)
{
    SVC_ASSERT(mq->role == MQ_PUBLISHER);
    size_t dropped = mq->count;
    /* Tags of the dropped slots are below next_tag, so a later ack (even `multiple`) cannot
     * match a slot published after this on the same connection. */
    mq->head = 0;
    mq->count = 0;
    mq->ring_end = 0;
    mq->ring_wrapped = false;
    SVC_ASSERT(mq->count == 0);
    return dropped;
}

/* ---- consumer ----------------------------------------------------------------------------- */

int mq_consume(struct mq *mq, int64_t offset)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER && !mq->consuming);
    SVC_ASSERT(offset >= 0);
    mq->consuming = true;
    mq->resume_offset = offset;
    if (mq->conn != NULL) {
        if (!mq_start_consumer(mq)) {
            mq_lose(mq, "basic.consume failed");
            return -ENOTCONN;
        }
        return 0;
    }
    return mq_connect(mq);
}

void mq_consume_stop(struct mq *mq)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER);
    mq_release_message(mq);
    if (mq->conn != NULL) {
        /* No channel.close: a broker that is down would hold the caller for the RPC timeout,
         * and the broker drops a consumer whose socket is gone. */
        amqp_destroy_connection(mq->conn);
        mq->conn = NULL;
    }
    mq->consuming = false;
    mq->retry_at_us = 0;
    SVC_ASSERT(mq->conn == NULL && !mq->message_held);
}

static void mq_copy_bytes(char *out, size_t out_size, amqp_bytes_t in)
{
    SVC_ASSERT(out_size > 0);
    size_t length = in.len < out_size - 1 ? in.len : out_size - 1;
    if (length > 0) {
        memcpy(out, in.bytes, length);
    }
    out[length] = '\0';
}

/* Fills out from the message just read: its offset and string headers, id, type, body. */
static bool mq_fill_delivery(struct mq *mq, uint64_t tag, struct mq_delivery *out)
{
    const amqp_basic_properties_t *props = &mq->message.properties;
    memset(out, 0, offsetof(struct mq_delivery, delivery_tag));
    out->offset = -1;
    out->delivery_tag = tag;
    out->generation = mq->generation;
    out->body = mq->message.body.bytes;
    out->body_length = mq->message.body.len;
    if (props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
        mq_copy_bytes(out->id, sizeof out->id, props->message_id);
    }
    if (props->_flags & AMQP_BASIC_TYPE_FLAG) {
        mq_copy_bytes(out->type, sizeof out->type, props->type);
    }
    int n = (props->_flags & AMQP_BASIC_HEADERS_FLAG) ? props->headers.num_entries : 0;
    for (int i = 0; i < n; i++) {
        const amqp_table_entry_t *e = &props->headers.entries[i];
        if (e->key.len == 15 && memcmp(e->key.bytes, "x-stream-offset", 15) == 0) {
            out->offset = e->value.kind == AMQP_FIELD_KIND_I64   ? e->value.value.i64
                          : e->value.kind == AMQP_FIELD_KIND_U64 ? (int64_t)e->value.value.u64
                                                                 : -1;
        } else if (e->value.kind == AMQP_FIELD_KIND_UTF8 && out->header_count < MQ_HEADERS_MAX) {
            mq_copy_bytes(out->header_keys[out->header_count], MQ_HEADER_KEY_BYTES_MAX + 1, e->key);
            mq_copy_bytes(out->header_values[out->header_count], MQ_HEADER_VALUE_BYTES_MAX + 1,
                          e->value.value.bytes);
            out->header_count++;
        }
    }
    return out->offset >= 0;
}

/* Handles a method frame that is not a delivery. 0, or -ENOTCONN when it closed. */
static int mq_consumer_other(struct mq *mq, const amqp_frame_t *frame)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER);
    if (frame->frame_type != AMQP_FRAME_METHOD) {
        return 0; /* stray content of nothing we asked for */
    }
    amqp_method_number_t id = frame->payload.method.id;
    if (id == AMQP_CONNECTION_CLOSE_METHOD || id == AMQP_CHANNEL_CLOSE_METHOD ||
        id == AMQP_BASIC_CANCEL_METHOD) {
        mq_lose(mq, id == AMQP_BASIC_CANCEL_METHOD ? "the broker cancelled the consumer"
                                                   : "the broker closed the channel");
        return -ENOTCONN;
    }
    return 0;
}

/* basic.ack of one delivery tag. 0, or -ENOTCONN when the connection failed. */
static int mq_ack_tag(struct mq *mq, uint64_t tag)
{
    SVC_ASSERT(mq->conn != NULL);
    SVC_ASSERT(tag > 0);
    int status = amqp_basic_ack(mq->conn, MQ_CHANNEL, tag, 0);
    if (status != AMQP_STATUS_OK) {
        mq_lose(mq, amqp_error_string2(status));
        return -ENOTCONN;
    }
    return 0;
}

/* Reads the delivery announced by frame. 1 handed out, 0 skipped, -ENOTCONN lost. */
static int mq_consumer_delivery(struct mq *mq, const amqp_frame_t *frame, struct mq_delivery *out)
{
    SVC_ASSERT(!mq->message_held);
    const amqp_basic_deliver_t *deliver = frame->payload.method.decoded;
    uint64_t tag = deliver->delivery_tag;
    amqp_rpc_reply_t reply = amqp_read_message(mq->conn, frame->channel, &mq->message, 0);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        mq_lose(mq, "reading a delivery failed");
        return -ENOTCONN;
    }
    mq->message_held = true;
    bool has_offset = mq_fill_delivery(mq, tag, out);
    if (!has_offset || out->offset < mq->consume_from) {
        /* A stream sends whole chunks: messages before the asked offset are skipped. */
        if (!has_offset) {
            log_warn("mq: a delivery without x-stream-offset on %s: skipped", mq->queue);
        }
        mq_release_message(mq);
        return mq_ack_tag(mq, tag);
    }
    mq->stats.delivered++;
    return 1;
}

int mq_next(struct mq *mq, int timeout_ms, struct mq_delivery *out)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER && mq->consuming);
    SVC_ASSERT(timeout_ms >= 0);
    mq_release_message(mq);
    if (mq_ensure(mq) != 0) {
        return -ENOTCONN;
    }
    amqp_maybe_release_buffers(mq->conn);
    int64_t deadline_us = clock_mono_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        int64_t left_us = deadline_us - clock_mono_us();
        amqp_frame_t frame;
        int rc = mq_read_frame(mq, left_us > 0 ? (int)(left_us / 1000) : 0, &frame);
        if (rc <= 0) {
            return rc;
        }
        if (frame.frame_type == AMQP_FRAME_METHOD &&
            frame.payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
            rc = mq_consumer_delivery(mq, &frame, out);
        } else {
            rc = mq_consumer_other(mq, &frame);
        }
        if (rc != 0) {
            return rc;
        }
    }
}

int mq_ack(struct mq *mq, const struct mq_delivery *d)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER);
    SVC_ASSERT(d->generation <= mq->generation);
    if (d->offset >= mq->resume_offset) {
        mq->resume_offset = d->offset + 1;
    }
    if (mq->conn == NULL || d->generation != mq->generation) {
        return mq->conn == NULL ? -ENOTCONN : 0; /* its channel is gone: nothing to ack */
    }
    return mq_ack_tag(mq, d->delivery_tag);
}

int64_t mq_resume_offset(const struct mq *mq)
{
    SVC_ASSERT(mq->role == MQ_CONSUMER);
    SVC_ASSERT(mq->resume_offset >= 0);
    return mq->resume_offset;
}
