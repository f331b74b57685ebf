/*
 * work_lease.c - a stage's lease: see work_lease.h. Only the thread that runs the stage (the
 * workers', the relay's or the intake consumer's) ticks it; other threads read held_shared
 * and, under lock, holder.
 */
#include "work/work_lease.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/svc_assert.h"

void work_lease_default_holder(char *out, size_t size)
{
    SVC_ASSERT(size >= 1);
    char host[64] = "";
    (void)gethostname(host, sizeof host - 1);
    snprintf(out, size, "%s:%ld:%" PRId64, host[0] != '\0' ? host : "host", (long)getpid(),
             clock_wall_ms());
}

void work_lease_init(struct work_lease *l, const char *stage)
{
    memset(l, 0, sizeof *l);
    l->stage = stage;
    pthread_mutex_init(&l->lock, NULL);
}

void work_lease_deinit(struct work_lease *l)
{
    pthread_mutex_destroy(&l->lock);
}

static void work_lease_publish(struct work_lease *l, bool held, const char *holder)
{
    l->held = held;
    atomic_store(&l->held_shared, held);
    if (holder != NULL) {
        pthread_mutex_lock(&l->lock);
        snprintf(l->holder, sizeof l->holder, "%s", holder);
        pthread_mutex_unlock(&l->lock);
    }
}

enum work_lease_change work_lease_tick(struct work_lease *l, struct store_reader *r,
                                       const char *holder, int64_t lease_ms, int64_t now_ms)
{
    SVC_ASSERT(lease_ms >= WORK_LEASE_MS_MIN && lease_ms <= WORK_LEASE_MS_MAX);
    if (l->held && now_ms >= l->valid_until_ms) {
        log_warn("lease: the %s lease was not renewed in time: stopped", l->stage);
        work_lease_publish(l, false, NULL);
        l->next_try_ms = now_ms; /* nobody may have taken it: try at once */
        return WORK_LEASE_LOST;
    }
    if (now_ms < l->next_try_ms) {
        return WORK_LEASE_SAME;
    }
    struct store_lease got;
    int rc = store_reader_lease(r, l->stage, holder, l->held ? l->token : 0, lease_ms, &got);
    if (rc != 0) {
        l->next_try_ms = now_ms + lease_ms / WORK_LEASE_RETRY_DIVISOR;
        return WORK_LEASE_SAME; /* a held lease is lost at its deadline if this lasts */
    }
    l->next_try_ms = now_ms + lease_ms / WORK_LEASE_RENEW_DIVISOR;
    if (!got.held) {
        bool was_held = l->held;
        work_lease_publish(l, false, got.holder);
        if (was_held) {
            log_warn("lease: the %s lease was taken over (by %s): stopped", l->stage,
                     got.holder[0] != '\0' ? got.holder : "another instance");
        }
        return was_held ? WORK_LEASE_LOST : WORK_LEASE_SAME;
    }
    SVC_ASSERT(!l->held || got.token == l->token); /* a renewal keeps the token */
    bool won = !l->held;
    l->token = got.token;
    l->valid_until_ms = now_ms + lease_ms; /* counted from before the statement */
    work_lease_publish(l, true, got.holder);
    if (won) {
        log_info("lease: took the %s lease (token %" PRId64 ")", l->stage, l->token);
    }
    return won ? WORK_LEASE_WON : WORK_LEASE_SAME;
}

void work_lease_forget(struct work_lease *l, int64_t now_ms, int64_t retry_ms)
{
    SVC_ASSERT(l->held && retry_ms >= 0);
    work_lease_publish(l, false, NULL);
    l->next_try_ms = now_ms + retry_ms;
}

void work_lease_release(struct work_lease *l, struct store_reader *r, const char *holder)
{
    if (!l->held) {
        return;
    }
    struct store_lease got;
    if (store_reader_lease(r, l->stage, holder, l->token, 0, &got) == 0) {
        log_info("lease: gave the %s lease up", l->stage);
    }
    work_lease_publish(l, false, NULL);
}

int64_t work_lease_due_ms(const struct work_lease *l)
{
    if (l->held && l->valid_until_ms < l->next_try_ms) {
        return l->valid_until_ms;
    }
    return l->next_try_ms;
}

bool work_lease_held(const struct work_lease *l)
{
    return atomic_load(&l->held_shared);
}

void work_lease_holder(struct work_lease *l, char *out, size_t size)
{
    SVC_ASSERT(size >= 1);
    pthread_mutex_lock(&l->lock);
    snprintf(out, size, "%s", l->holder);
    pthread_mutex_unlock(&l->lock);
}
