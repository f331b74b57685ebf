/*
 * follower.h - keeps this instance's read model up with the events other stockd instances
 * commit to a shared database.
 *
 * The writer's committed hook feeds the projector this instance's own batches, each preceded by
 * the events other instances committed since the previous one (read in the batch's prepare);
 * the projector applies the log in seq order only (projector_apply stops at a gap). That
 * covers an instance that writes; the follower thread covers one that is idle or only reads:
 * it waits for the backend's announcement of new events (PostgreSQL LISTEN/NOTIFY, or
 * FOLLOWER_POLL_MS at the latest), reads the events table after the projection's applied seq
 * and applies them (projector_follow). X-Projection-Lag-ms and
 * /v1/projections report how far behind it is. Not started on SQLite (one writer only).
 */
#ifndef STOCKD_FOLLOWER_H
#define STOCKD_FOLLOWER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "read/projector.h"

/* The longest the follower sleeps without an announcement (a lost NOTIFY costs this much). */
#define FOLLOWER_POLL_MS 500
/* How long an announcement the writer may have made waits for the writer to claim it before
 * the follower reads it: our own COMMIT's NOTIFY can arrive before the writer has its answer,
 * and reading (and decoding) the batch here too was 15% of stockd's instructions on
 * PostgreSQL. Another instance's events wait this much longer to be seen. */
#define FOLLOWER_OWN_WAIT_MS 5

struct follower {
    struct projector *projector; /* borrowed */
    char uri[600];
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    _Atomic uint64_t catch_ups; /* reads of the log that found something */
};

/* Starts the thread on uri's database. 0 or -errno. */
int follower_start(struct follower *f, struct projector *p, const char *uri);
/* Stops and joins it. */
void follower_stop(struct follower *f);

#endif
