/*
 * tool_mq_tail.c - reads a RabbitMQ stream through src/mq and prints each message as one JSON
 * line, for the black-box tests of the outbox relay and of asynchronous intake
 * (tests/blackbox/test_relay.py, test_intake_pub.py): python3-pika is not among our packages,
 * and this reads the stream the way any AMQP 0.9.1 consumer would.
 *
 *   mq_tail URL QUEUE OFFSET UNTIL_ID WAIT_MS
 *
 * consumes QUEUE (declared as its producer declares it: the relay, or intake.h) from stream
 * offset OFFSET and prints {"offset":N,"id":"..","type":"..","headers":{..},"body":<the body>}
 * per message, until it printed a message whose id is UNTIL_ID (exit 0), or none came for
 * WAIT_MS (exit 1: the caller decides whether that is a failure). Not a test by itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "intake/intake.h"
#include "mq/mq.h"
#include "relay/relay.h"

/* Prints s as a JSON string (our ids, types and header values are printable ASCII). */
static void tail_string(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c < 0x20) {
            printf("\\u%04x", c);
        } else {
            putchar(c);
        }
    }
    putchar('"');
}

static void tail_print(const struct mq_delivery *d)
{
    printf("{\"offset\":%lld,\"id\":", (long long)d->offset);
    tail_string(d->id);
    printf(",\"type\":");
    tail_string(d->type);
    printf(",\"headers\":{");
    for (size_t i = 0; i < d->header_count; i++) {
        printf(i > 0 ? "," : "");
        tail_string(d->header_keys[i]);
        putchar(':');
        tail_string(d->header_values[i]);
    }
    printf("},\"body\":%.*s}\n", (int)d->body_length, (const char *)d->body);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: mq_tail URL QUEUE OFFSET UNTIL_ID WAIT_MS\n");
        return 2;
    }
    /* Declared with the arguments of its producer: a declaration that differs is refused. */
    struct mq_config c = {argv[1], argv[2], MQ_CONSUMER, RELAY_STREAM_BYTES_MAX, 0, 0};
    if (strcmp(argv[2], INTAKE_QUEUE) == 0) {
        c.max_length_bytes = INTAKE_MAX_LENGTH_BYTES;
        c.max_age_seconds = INTAKE_MAX_AGE_SECONDS;
    }
    struct mq *mq = NULL;
    if (mq_new(&mq, &c) != 0) {
        fprintf(stderr, "mq_tail: bad URL or queue\n");
        return 2;
    }
    int wait_ms = atoi(argv[5]);
    (void)mq_consume(mq, atoll(argv[3]));
    struct mq_delivery d;
    int rc = 1;
    int down_ms = 0; /* time spent without a connection */
    while (down_ms <= wait_ms) {
        int got = mq_next(mq, wait_ms, &d);
        if (got == 0) {
            break; /* nothing for WAIT_MS */
        }
        if (got < 0) {
            usleep(50 * 1000); /* lost: mq_next connects again after its backoff */
            down_ms += 50;
            continue;
        }
        down_ms = 0;
        tail_print(&d);
        (void)mq_ack(mq, &d);
        if (strcmp(d.id, argv[4]) == 0) {
            rc = 0;
            break;
        }
    }
    fflush(stdout);
    mq_free(mq);
    return rc;
}
