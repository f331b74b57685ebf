/*
 * mq.h - one AMQP 0.9.1 connection to a RabbitMQ stream queue, over rabbitmq-c (issue 12):
 * a publisher with publisher confirms and a bounded window of unconfirmed messages, or a
 * consumer that resumes from an integer stream offset. It reconnects by itself.
 *
 * A handle is one connection with one channel, used by one thread only (rabbitmq-c is not
 * thread-safe, and it services heartbeats only inside its own calls, so the owner calls
 * mq_poll or mq_next at least every few seconds even when idle). A handle is a publisher or a
 * consumer (config.role), never both: confirm frames and deliveries never share a channel.
 *
 * Publisher: mq_publish copies a message into the window (MQ_WINDOW_MAX messages and
 * MQ_WINDOW_BYTES of bodies) and sends it when connected; mq_poll reads the broker's
 * basic.ack / basic.nack frames (one tag or `multiple`: every tag up to it) and moves the
 * confirmed prefix out of the window, in publish order, advancing mq_confirmed_cookie. A nacked
 * message is sent again. When the connection is lost (socket error, connection.close or
 * channel.close from the broker, a heartbeat timeout), the next mq_poll or mq_publish after a
 * backoff connects again, redoes confirm.select and the queue declaration and republishes every
 * message of the window not yet confirmed, in order: a consumer may see a message twice,
 * never miss a confirmed one.
 *
 * Consumer: mq_next hands out deliveries (basic.qos prefetch, manual ack) starting at the
 * offset given to mq_consume; mq_ack acknowledges one and moves the resume offset past it. A
 * reconnect consumes again from the resume offset (RabbitMQ stores no offset for an AMQP
 * 0.9.1 consumer: the owner keeps it). Frames other than deliveries (a late ack, a
 * channel.close) are handled where they arrive.
 *
 * This file is not the relay (relay/relay.h) that feeds the event log to a publisher.
 * Read mq.c next.
 */
#ifndef STOCKD_MQ_H
#define STOCKD_MQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Unconfirmed messages one publisher holds: enough to keep the broker's confirm pipeline full
 * over loopback or a LAN (a confirm comes back within a few milliseconds, and a few hundred
 * messages of ~1 KiB in flight saturate one connection), small enough that republishing the
 * whole window after a reconnect is cheap. */
#define MQ_WINDOW_MAX 1024
/* The bytes of bodies the window holds (a ring): 1024 messages of 4 KiB on average. */
#define MQ_WINDOW_BYTES (4 * 1024 * 1024)
/* One message body at most: an event's JSON with CMD_LINES_MAX lines stays far below. */
#define MQ_BODY_BYTES_MAX (256 * 1024)
/* Application headers of one message (besides message-id and type): store and sku today. */
#define MQ_HEADERS_MAX 4
#define MQ_HEADER_KEY_BYTES_MAX 32
#define MQ_HEADER_VALUE_BYTES_MAX 128
/* message-id and type (AMQP short strings), as we use them: a seq or an Idempotency-Key (up
 * to 255 bytes, the most a short string holds: intake/intake.h), an event type name. */
#define MQ_ID_BYTES_MAX 255
#define MQ_TYPE_BYTES_MAX 64
/* A queue name and an amqp:// URL. */
#define MQ_QUEUE_BYTES_MAX 127
#define MQ_URL_BYTES_MAX 511
/* A consumer's basic.qos prefetch when the config names none: stream queues require one, and
 * a few hundred unacked messages keep a consumer busy without holding much in memory. */
#define MQ_PREFETCH_DEFAULT 256
/* Timeouts of the broker's handshake, of its RPCs (declare, qos, consume, confirm.select) and
 * of the TCP connect: a broker that does not answer within them is treated as down. */
#define MQ_CONNECT_TIMEOUT_MS 2000
#define MQ_RPC_TIMEOUT_MS 5000
/* The heartbeat asked of the broker: a silent broker is found dead within two of them. */
#define MQ_HEARTBEAT_SECONDS 10
/* Reconnect backoff: doubles from the minimum up to the maximum while connecting fails. */
#define MQ_RECONNECT_BACKOFF_MIN_MS 100
#define MQ_RECONNECT_BACKOFF_MAX_MS 2000

_Static_assert(MQ_WINDOW_BYTES >= 4 * MQ_BODY_BYTES_MAX, "the largest body fits the ring often");
_Static_assert(MQ_PREFETCH_DEFAULT <= 65535, "basic.qos prefetch is 16 bits");
_Static_assert(MQ_RECONNECT_BACKOFF_MIN_MS <= MQ_RECONNECT_BACKOFF_MAX_MS, "backoff range");

enum mq_role { MQ_PUBLISHER, MQ_CONSUMER };

struct mq_config {
    const char *url;   /* amqp://user:password@host:port/vhost (copied) */
    const char *queue; /* the stream queue's name (copied) */
    enum mq_role role;
    int64_t max_length_bytes; /* x-max-length-bytes of the declaration (> 0) */
    int64_t max_age_seconds;  /* x-max-age (0: none) */
    uint16_t prefetch;        /* consumer's basic.qos (0: MQ_PREFETCH_DEFAULT) */
};

struct mq_header {
    const char *key;   /* at most MQ_HEADER_KEY_BYTES_MAX bytes */
    const char *value; /* at most MQ_HEADER_VALUE_BYTES_MAX bytes */
};

/* A message to publish; everything is borrowed for the call and copied. */
struct mq_message {
    const char *id;   /* message-id, at most MQ_ID_BYTES_MAX bytes */
    const char *type; /* type, at most MQ_TYPE_BYTES_MAX bytes (NULL: none) */
    const void *body; /* content type application/json */
    size_t body_length;
    struct mq_header headers[MQ_HEADERS_MAX];
    size_t header_count;
    int64_t cookie; /* the owner's value, reported back by mq_confirmed_cookie (e.g. a seq) */
};

/* A delivery to a consumer. The caller owns the struct; body points into the handle's memory
 * and stays valid until the next mq_next on the same handle. */
struct mq_delivery {
    int64_t offset; /* the message's stream offset (x-stream-offset) */
    char id[MQ_ID_BYTES_MAX + 1];
    char type[MQ_TYPE_BYTES_MAX + 1];
    const void *body;
    size_t body_length;
    char header_keys[MQ_HEADERS_MAX][MQ_HEADER_KEY_BYTES_MAX + 1];
    char header_values[MQ_HEADERS_MAX][MQ_HEADER_VALUE_BYTES_MAX + 1];
    size_t header_count; /* string headers copied (others, and those past the max, skipped) */
    uint64_t delivery_tag;
    uint64_t generation; /* the connection it came on (an ack on a later one is not sent) */
};

/* Counters, read by the owner's thread (or copied out by it). */
struct mq_stats {
    uint64_t published; /* basic.publish sent, republishes included */
    uint64_t confirmed; /* messages confirmed (acked) and out of the window */
    uint64_t nacked;    /* basic.nack received (those messages were sent again) */
    uint64_t republished;
    uint64_t connects; /* connections established */
    uint64_t losses;   /* connections lost */
    uint64_t connect_failures;
    uint64_t delivered; /* consumer: deliveries handed out */
};

struct mq; /* opaque: mq.c */

/* Allocates a handle and its window (no connection yet: the first mq_poll, mq_publish or
 * mq_consume connects). *out is the caller's, freed by mq_free. 0, -EINVAL for a config that
 * does not fit the limits or a URL amqp_parse_url refuses, or -ENOMEM. Startup only. */
int mq_new(struct mq **out, const struct mq_config *config);
/* Closes the connection (if any) and frees the handle and every message still in its window
 * (NULL is fine). */
void mq_free(struct mq *mq);

/* Connects now if not connected (the backoff does not apply). 0 or -ENOTCONN (logged). */
int mq_connect(struct mq *mq);
/* True while the handle has a connection it has not seen fail. */
bool mq_connected(const struct mq *mq);

/* Publisher: copies msg into the window and sends it if connected. 0 (in the window: sent,
 * or to be sent on the next connection), -EAGAIN when the window is full (call mq_poll until
 * confirms make room), -EMSGSIZE when msg exceeds the limits above. A lost connection is not an
 * error here: the message waits in the window. */
int mq_publish(struct mq *mq, const struct mq_message *msg);
/* Publisher: connects again if the connection is lost and the backoff allows, then waits up
 * to timeout_ms for frames (0: only what is ready) and handles them all: confirms, nacks, the
 * broker's close. 0, or -ENOTCONN when the handle has no connection afterwards. */
int mq_poll(struct mq *mq, int timeout_ms);
/* Publisher: messages in the window (published, not yet confirmed). */
size_t mq_unconfirmed(const struct mq *mq);
/* Publisher: the cookie of the last message of the confirmed prefix (every message published
 * before it is confirmed too), or `initial` of mq_set_confirmed_cookie until one is. */
int64_t mq_confirmed_cookie(const struct mq *mq);
void mq_set_confirmed_cookie(struct mq *mq, int64_t initial);
/* Publisher: forgets every message of the window, sent or not, as if it had never been
 * published: none is sent again (an owner that may no longer publish, e.g. a relay that lost
 * its lease). The connection stays; confirms of those already sent match nothing when they
 * come. The confirmed cookie stays where the confirmed prefix left it. Returns how many. */
size_t mq_drop_unconfirmed(struct mq *mq);

/* Consumer: consume the queue from stream offset `offset` (0: the first message kept). Called
 * once (again after mq_consume_stop); a reconnect consumes again from the resume offset. 0 or
 * -ENOTCONN (it keeps trying in mq_next). */
int mq_consume(struct mq *mq, int64_t offset);
/* Consumer: stops consuming at once (an owner that may no longer consume, e.g. an intake
 * consumer that lost its lease): the connection is dropped without a word to the broker, so
 * nothing more is delivered and nothing delivered is acked (a stream keeps its messages
 * whatever the acks). mq_consume may be called again afterwards, from any offset. */
void mq_consume_stop(struct mq *mq);
/* Consumer: waits up to timeout_ms for the next delivery at or past the resume offset.
 * 1 with *out filled, 0 when none came in time, or -ENOTCONN (lost; the next call connects
 * again after the backoff). */
int mq_next(struct mq *mq, int timeout_ms, struct mq_delivery *out);
/* Consumer: acknowledges d (basic.ack, if its connection is still the current one) and moves
 * the resume offset to d->offset + 1. 0 or -ENOTCONN (the offset moved anyway). */
int mq_ack(struct mq *mq, const struct mq_delivery *d);
/* Consumer: the offset the next connection would consume from. */
int64_t mq_resume_offset(const struct mq *mq);

const struct mq_stats *mq_stats(const struct mq *mq);

#endif
