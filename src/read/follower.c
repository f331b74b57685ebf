/*
 * follower.c - the read model's tail of a shared event log. See follower.h.
 */
#include "read/follower.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "store/store_open.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"

/* True when this instance's writer committed the log up to seq (its hook applies it), or
 * the read model has it. The announcement of our own commit can arrive before the writer has
 * read its COMMIT's answer: give it FOLLOWER_OWN_WAIT_MS to say so. */
static bool follower_writer_has(struct follower *f, int64_t seq)
{
    SVC_ASSERT(seq >= 1);
    for (int waited_ms = 0;; waited_ms++) {
        int64_t own = projector_own_seq(f->projector);
        int64_t live = projector_live_seq(f->projector);
        if (seq <= own || seq <= live) {
            return true;
        }
        if (waited_ms == FOLLOWER_OWN_WAIT_MS) {
            return false; /* another instance's: read it */
        }
        usleep(1000);
    }
}

static void *follower_main(void *arg)
{
    svc_thread_name("follower", -1);
    struct follower *f = arg;
    struct store_reader *reader = NULL;
    while (!atomic_load(&f->stopping)) {
        if (reader == NULL && store_reader_open(&reader, f->uri) != 0) {
            reader = NULL;
            usleep(FOLLOWER_POLL_MS * 1000); /* the database is away; the writer says so */
            continue;
        }
        int64_t announced = 0;
        int rc = store_reader_wait(reader, FOLLOWER_POLL_MS, &announced);
        if (announced > 0) {
            projector_note_log(f->projector, announced, clock_wall_ms());
        }
        if (rc < 0) {
            continue; /* the reader reconnects on its next call */
        }
        if (rc == 1 && announced > 0 && follower_writer_has(f, announced)) {
            /* Our own batch (with what its prefetch read of the others'): the writer's hook
             * applied it already, or is about to, right after its replies. Reading and
             * decoding it here too would only race the writer for the same events. */
            continue;
        }
        /* Timed out, reconnected or announced: read what is there (a NOTIFY can be lost when
         * the connection drops). */
        int64_t applied = projector_follow(f->projector, reader);
        if (applied > 0) {
            atomic_fetch_add_explicit(&f->catch_ups, 1, memory_order_relaxed);
        }
    }
    store_reader_close(reader);
    return NULL;
}

int follower_start(struct follower *f, struct projector *p, const char *uri)
{
    SVC_ASSERT(strlen(uri) < sizeof f->uri);
    memset(f, 0, sizeof *f);
    f->projector = p;
    strcpy(f->uri, uri);
    int rc = pthread_create(&f->thread, NULL, follower_main, f);
    if (rc != 0) {
        return -rc;
    }
    f->started = true;
    return 0;
}

void follower_stop(struct follower *f)
{
    if (!f->started) {
        return;
    }
    atomic_store(&f->stopping, true);
    pthread_join(f->thread, NULL); /* it wakes within FOLLOWER_POLL_MS */
    f->started = false;
}
