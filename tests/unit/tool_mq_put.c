/*
 * tool_mq_put.c - publishes messages to a RabbitMQ stream through src/mq and waits for the
 * broker's confirms, for the black-box tests of asynchronous intake (tests/blackbox/
 * test_intake.py), which publish the commands themselves (python3-pika is not among our
 * packages).
 *
 *   mq_put URL QUEUE WAIT_MS < lines
 *
 * declares QUEUE as the stream of commands (intake/intake.h) and publishes one message per
 * line of stdin, each "ID<TAB>TYPE<TAB>HEADERS<TAB>BODY": TYPE "-" for none, HEADERS "-" or
 * "key=value" pairs joined by ';', BODY the rest of the line as it is (raw bytes, not
 * checked). Exits 0 once every message is confirmed and prints their count, 1 when WAIT_MS
 * passed first, 2 on a usage error or a malformed line. Not a test by itself.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "intake/intake.h"
#include "mq/mq.h"

#define PUT_LINE_BYTES_MAX (MQ_BODY_BYTES_MAX + 1024)

static long long put_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Splits "k=v;k=v" (in place) into m's headers; false when malformed. */
static bool put_headers(char *text, struct mq_message *m)
{
    if (strcmp(text, "-") == 0) {
        return true;
    }
    for (char *save = NULL, *pair = strtok_r(text, ";", &save); pair != NULL;
         pair = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(pair, '=');
        if (eq == NULL || m->header_count == MQ_HEADERS_MAX) {
            return false;
        }
        *eq = '\0';
        m->headers[m->header_count++] = (struct mq_header){pair, eq + 1};
    }
    return true;
}

/* Publishes one line's message, polling for confirms while the window is full. */
static int put_line(struct mq *mq, char *line, long long deadline_ms)
{
    char *fields[4];
    char *rest = line;
    for (int i = 0; i < 3; i++) {
        char *tab = strchr(rest, '\t');
        if (tab == NULL) {
            return 2;
        }
        *tab = '\0';
        fields[i] = rest;
        rest = tab + 1;
    }
    fields[3] = rest;
    struct mq_message m = {.id = fields[0], .type = strcmp(fields[1], "-") == 0 ? NULL : fields[1]};
    m.body = fields[3];
    m.body_length = strlen(fields[3]);
    if (!put_headers(fields[2], &m)) {
        return 2;
    }
    for (;;) {
        int rc = mq_publish(mq, &m);
        if (rc == 0) {
            return 0;
        }
        if (rc != -EAGAIN || put_now_ms() > deadline_ms) {
            fprintf(stderr, "mq_put: publish failed (%d)\n", rc);
            return rc == -EAGAIN ? 1 : 2;
        }
        (void)mq_poll(mq, 10);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: mq_put URL QUEUE WAIT_MS < lines\n");
        return 2;
    }
    struct mq_config c = {
        argv[1], argv[2], MQ_PUBLISHER, INTAKE_MAX_LENGTH_BYTES, INTAKE_MAX_AGE_SECONDS, 0};
    struct mq *mq = NULL;
    if (mq_new(&mq, &c) != 0) {
        fprintf(stderr, "mq_put: bad URL or queue\n");
        return 2;
    }
    long long deadline_ms = put_now_ms() + atoll(argv[3]);
    (void)mq_connect(mq);
    static char line[PUT_LINE_BYTES_MAX];
    long count = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '\0') {
            continue;
        }
        rc = put_line(mq, line, deadline_ms);
        count++;
    }
    while (rc == 0 && mq_unconfirmed(mq) > 0) {
        if (put_now_ms() > deadline_ms) {
            fprintf(stderr, "mq_put: %zu messages not confirmed in time\n", mq_unconfirmed(mq));
            rc = 1;
            break;
        }
        (void)mq_poll(mq, 50);
    }
    if (rc == 0) {
        printf("%ld\n", count);
    }
    mq_free(mq);
    return rc;
}
