/*
 * work.c - the workers of work.h: one loop that reads the event log for both stages, sends
 * their steps to the writer, handles the writer's replies and the provider's results.
 *
 * Ownership: the commands come from the workers' pool (free list); a pushed command belongs
 * to the writer until work_writer_reply queues it back (mutex-guarded ring); the loop then
 * reads its reply and returns it to the pool, or pushes it again after a 503.
 */
#include "work/work.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"
#include "store/store_open.h"

/* The events a stage sent steps for, in seq order, until their steps are answered: the stage's
 * stored offset is its low-water mark (just below the first one not yet answered), never an
 * event past a step that may still fail. A step whose batch failed (503) keeps its mark until it
 * is answered; a crash then reads it again (a step whose order moved on is refused as stale). */
struct work_mark {
    int64_t seq;
    bool done;
};

struct work_marks {
    struct work_mark *ring; /* WORK_MARKS_MAX, owned */
    uint32_t head;
    uint32_t count;
};

/* A dead letter to replay, from work_replay. */
struct work_replay_item {
    int64_t order_seq;
    int64_t reservation_seq;
};

/* A charge the payment stage tracks: started, waiting for its result or its retry. */
struct work_item {
    int64_t order_seq; /* 0: free */
    int64_t reservation_seq;
    int64_t attempts;
    int64_t retry_at_ms; /* 0: in flight or waiting for the writer */
    /* The charge is asked again at retry_at_ms without a new stored attempt: the provider
     * refused it (full, or its circuit open), or it timed out while the circuit was open (the
     * outage is not counted against the order). */
    bool held;
    int64_t lease_token; /* the payment lease's token it was started under */
};

struct work {
    struct work_config config;
    struct store_reader *reader; /* owned, the thread's */
    struct command *pool;        /* WORK_COMMANDS_MAX, owned */
    struct command **free_list;  /* WORK_COMMANDS_MAX */
    uint32_t free_count;
    struct command **backlog; /* commands to push again (queue full or 503) */
    uint32_t backlog_count;
    pthread_mutex_t lock;     /* guards replies, woken */
    pthread_cond_t wake;      /* a reply came or the writer committed events */
    bool woken;               /* under lock: wake was signalled since the last wait */
    struct command **replies; /* WORK_COMMANDS_MAX: handed back by the writer */
    uint32_t reply_count;
    struct work_replay_item *replays; /* WORK_REPLAYS_MAX, under lock: work_replay's requests */
    uint32_t replay_count;
    int64_t *step_event;                      /* WORK_COMMANDS_MAX, by pool index: the event a
                                               * step answers (0: none) */
    struct work_marks marks[CMD_STAGE_COUNT]; /* CMD_STAGE_ORDER, CMD_STAGE_PAYMENT */
    struct work_item *items;                  /* WORK_PAY_ITEMS_MAX */
    uint32_t *item_free;
    uint32_t item_free_count;
    uint32_t retry_waiting; /* items with a retry due later (retry_at_ms != 0) */
    int64_t retry_next_ms;  /* wall clock: no retry is due before (a lower bound) */
    int64_t order_pos;      /* the last event the order stage read */
    int64_t payment_pos;    /* the last event the payment stage read */
    uint64_t rng;
    pthread_t thread;
    bool started;
    _Atomic bool stopping;
    _Atomic bool paused[CMD_STAGE_COUNT];      /* work_pause: set by any thread */
    bool round_paused[CMD_STAGE_COUNT];        /* paused or not held, as the read round saw it */
    struct work_lease leases[CMD_STAGE_COUNT]; /* [CMD_STAGE_ORDER], [CMD_STAGE_PAYMENT] */
    char holder[STORE_LEASE_HOLDER_BYTES_MAX + 1]; /* this instance's id in worker_leases */
    struct work_stats stats;
    char arena_data[64 * 1024]; /* event decoding */
};

struct work *work_new(const struct work_config *config)
{
    SVC_ASSERT(config->queue != NULL && config->provider != NULL && config->wall_ms != NULL);
    struct work *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return NULL;
    }
    w->config = *config;
    SVC_ASSERT(config->lease_ms == 0 ||
               (config->lease_ms >= WORK_LEASE_MS_MIN && config->lease_ms <= WORK_LEASE_MS_MAX));
    w->config.lease_ms = config->lease_ms != 0 ? config->lease_ms : WORK_LEASE_MS_DEFAULT;
    if (config->instance_id != NULL && config->instance_id[0] != '\0') {
        snprintf(w->holder, sizeof w->holder, "%s", config->instance_id);
    } else {
        work_lease_default_holder(w->holder, sizeof w->holder);
    }
    work_lease_init(&w->leases[CMD_STAGE_ORDER], "order");
    work_lease_init(&w->leases[CMD_STAGE_PAYMENT], "payment");
    w->pool = calloc(WORK_COMMANDS_MAX, sizeof *w->pool);
    w->free_list = calloc(WORK_COMMANDS_MAX, sizeof *w->free_list);
    w->backlog = calloc(WORK_COMMANDS_MAX, sizeof *w->backlog);
    w->replies = calloc(WORK_COMMANDS_MAX, sizeof *w->replies);
    w->items = calloc(WORK_PAY_ITEMS_MAX, sizeof *w->items);
    w->item_free = calloc(WORK_PAY_ITEMS_MAX, sizeof *w->item_free);
    w->step_event = calloc(WORK_COMMANDS_MAX, sizeof *w->step_event);
    w->replays = calloc(WORK_REPLAYS_MAX, sizeof *w->replays);
    w->marks[CMD_STAGE_ORDER].ring = calloc(WORK_MARKS_MAX, sizeof(struct work_mark));
    w->marks[CMD_STAGE_PAYMENT].ring = calloc(WORK_MARKS_MAX, sizeof(struct work_mark));
    if (!w->pool || !w->free_list || !w->backlog || !w->replies || !w->items || !w->item_free ||
        !w->step_event || !w->replays || !w->marks[CMD_STAGE_ORDER].ring ||
        !w->marks[CMD_STAGE_PAYMENT].ring) {
        return NULL; /* startup: the process exits */
    }
    for (uint32_t i = 0; i < WORK_COMMANDS_MAX; i++) {
        w->free_list[w->free_count++] = &w->pool[WORK_COMMANDS_MAX - 1 - i];
    }
    for (uint32_t i = 0; i < WORK_PAY_ITEMS_MAX; i++) {
        w->item_free[w->item_free_count++] = WORK_PAY_ITEMS_MAX - 1 - i;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &attr);
    pthread_condattr_destroy(&attr);
    w->rng = 0x2545f4914f6cdd1dULL;
    return w;
}

void work_free(struct work *w)
{
    if (w == NULL) {
        return;
    }
    SVC_ASSERT(!w->started); /* never started, or stopped */
    store_reader_close(w->reader);
    free(w->pool);
    free(w->free_list);
    free(w->backlog);
    free(w->replies);
    free(w->items);
    free(w->item_free);
    free(w->step_event);
    free(w->replays);
    free(w->marks[CMD_STAGE_ORDER].ring);
    free(w->marks[CMD_STAGE_PAYMENT].ring);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    work_lease_deinit(&w->leases[CMD_STAGE_ORDER]);
    work_lease_deinit(&w->leases[CMD_STAGE_PAYMENT]);
    free(w);
}

const struct work_stats *work_stats(const struct work *w)
{
    return &w->stats;
}

void work_pause(struct work *w, enum cmd_stage stage, bool paused)
{
    SVC_ASSERT(stage == CMD_STAGE_ORDER || stage == CMD_STAGE_PAYMENT);
    atomic_store(&w->paused[stage], paused);
    work_notify(w);
}

bool work_paused(const struct work *w, enum cmd_stage stage)
{
    SVC_ASSERT(stage == CMD_STAGE_ORDER || stage == CMD_STAGE_PAYMENT);
    return atomic_load(&w->paused[stage]);
}

bool work_holds(const struct work *w, enum cmd_stage stage)
{
    SVC_ASSERT(stage == CMD_STAGE_ORDER || stage == CMD_STAGE_PAYMENT);
    return work_lease_held(&w->leases[stage]);
}

void work_holder(struct work *w, enum cmd_stage stage, char *out, size_t size)
{
    SVC_ASSERT(stage == CMD_STAGE_ORDER || stage == CMD_STAGE_PAYMENT);
    work_lease_holder(&w->leases[stage], out, size);
}

const char *work_instance_id(const struct work *w)
{
    return w->holder;
}

int work_replay(struct work *w, int64_t order_seq, int64_t reservation_seq)
{
    SVC_ASSERT(order_seq >= 1 && reservation_seq >= 1);
    pthread_mutex_lock(&w->lock);
    int rc = SVC_ECAPACITY;
    if (w->replay_count < WORK_REPLAYS_MAX) {
        w->replays[w->replay_count++] = (struct work_replay_item){order_seq, reservation_seq};
        w->woken = true;
        pthread_cond_signal(&w->wake);
        rc = 0;
    }
    pthread_mutex_unlock(&w->lock);
    return rc;
}

void work_writer_reply(struct command *cmd)
{
    struct work *w = cmd->owner;
    SVC_ASSERT(cmd->origin == CMD_ORIGIN_WORKER && w != NULL);
    pthread_mutex_lock(&w->lock);
    SVC_ASSERT(w->reply_count < WORK_COMMANDS_MAX); /* at most the pool is out */
    w->replies[w->reply_count++] = cmd;
    w->woken = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

/* The event types a stage acts on (work_on_event): the only ones the workers read from the log
 * and wake for; a purchase's events are neither. */
static const enum event_type work_event_types[STORE_EVENT_TYPES_MAX] = {EVENT_ORDER_CREATED,
                                                                        EVENT_ORDER_CONFIRMED};

/* True when a stage acts on events of this type (one of work_event_types). */
static bool work_acts_on(enum event_type type)
{
    for (size_t t = 0; t < STORE_EVENT_TYPES_MAX; t++) {
        if (type == work_event_types[t]) {
            return true;
        }
    }
    return false;
}

void work_notify_events(struct work *w, const struct event *events, size_t count)
{
    for (size_t i = 0; w != NULL && i < count; i++) {
        if (work_acts_on(events[i].type)) {
            work_notify(w);
            return;
        }
    }
}

void work_notify(struct work *w)
{
    if (w == NULL) {
        return;
    }
    pthread_mutex_lock(&w->lock);
    w->woken = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

/* ---- the stages' low-water marks ---------------------------------------------------------- */

static struct work_marks *work_marks_of(struct work *w, enum cmd_stage stage)
{
    SVC_ASSERT(stage == CMD_STAGE_ORDER || stage == CMD_STAGE_PAYMENT);
    return &w->marks[stage];
}

/* The offset stage may store: every event up to it was either no work of the stage or its
 * step was answered. */
static int64_t work_mark_low(struct work *w, enum cmd_stage stage)
{
    const struct work_marks *m = work_marks_of(w, stage);
    if (m->count > 0) {
        return m->ring[m->head].seq - 1;
    }
    return stage == CMD_STAGE_ORDER ? w->order_pos : w->payment_pos;
}

/* Notes a step sent for event seq (increasing per stage); the caller checked for room. */
static void work_mark_add(struct work *w, enum cmd_stage stage, int64_t seq)
{
    struct work_marks *m = work_marks_of(w, stage);
    SVC_ASSERT(m->count < WORK_MARKS_MAX);
    SVC_ASSERT(m->count == 0 || m->ring[(m->head + m->count - 1) % WORK_MARKS_MAX].seq < seq);
    m->ring[(m->head + m->count) % WORK_MARKS_MAX] = (struct work_mark){seq, false};
    m->count++;
}

/* The step for event seq was answered (committed, or refused in a committed batch). */
static void work_mark_done(struct work *w, enum cmd_stage stage, int64_t seq)
{
    struct work_marks *m = work_marks_of(w, stage);
    uint32_t lo = 0;
    uint32_t hi = m->count;
    while (lo < hi) { /* the ring is sorted by seq: the first entry >= seq */
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->ring[(m->head + mid) % WORK_MARKS_MAX].seq < seq) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    struct work_mark *mark = &m->ring[(m->head + lo) % WORK_MARKS_MAX];
    SVC_ASSERT(lo < m->count && mark->seq == seq && !mark->done);
    mark->done = true;
    while (m->count > 0 && m->ring[m->head].done) {
        m->head = (m->head + 1) % WORK_MARKS_MAX;
        m->count--;
    }
}

/* ---- sending steps ------------------------------------------------------------------------ */

static void work_push(struct work *w, struct command *cmd)
{
    cmd->queued_us = 0;
    if (queue_push(w->config.queue, cmd) != 0) {
        SVC_ASSERT(w->backlog_count < WORK_COMMANDS_MAX);
        w->backlog[w->backlog_count++] = cmd; /* the queue is full: again next round */
    }
}

/* Pushes a step answering event event_seq (0: none, e.g. a charge's result); attempts (the
 * charges so far) rides in cmd->qty, which steps leave unused. The step carries its stage's
 * low-water mark as the offset to store (cmd->stage_seq), taken after event_seq was noted. */
static void work_step(struct work *w, int64_t order_seq, int64_t reservation_seq,
                      enum cmd_order_step step, enum cmd_stage stage, int64_t event_seq,
                      const char *reason, int64_t attempts)
{
    SVC_ASSERT(w->free_count > 0); /* the caller checked */
    SVC_ASSERT(order_seq >= 1 && reservation_seq >= 1);
    struct command *cmd = w->free_list[--w->free_count];
    if (event_seq >= 1) {
        work_mark_add(w, stage, event_seq);
    }
    w->step_event[cmd - w->pool] = event_seq;
    memset(cmd, 0, sizeof *cmd);
    cmd->kind = CMD_ORDER_STEP;
    cmd->origin = CMD_ORIGIN_WORKER;
    cmd->owner = w;
    strcpy(cmd->principal, "stockd-worker");
    cmd->order_seq = order_seq;
    cmd->reservation_seq = reservation_seq;
    cmd->order_step = step;
    cmd->stage = stage;
    cmd->stage_seq = work_mark_low(w, stage);
    cmd->lease_token = w->leases[stage].token;
    cmd->qty = attempts;
    snprintf(cmd->reason, sizeof cmd->reason, "%s", reason != NULL ? reason : "");
    work_push(w, cmd);
}

/* ---- reading the log ---------------------------------------------------------------------- */

/* n of "<prefix><n>", or 0. */
static int64_t work_id_seq(const char *id, const char *prefix)
{
    size_t n = strlen(prefix);
    if (id == NULL || strncmp(id, prefix, n) != 0) {
        return 0;
    }
    return strtoll(id + n, NULL, 10);
}

static int work_on_event(void *context, const struct row_event *row)
{
    struct work *w = context;
    bool created = strcmp(row->event_type, event_type_name(work_event_types[0])) == 0;
    bool confirmed = strcmp(row->event_type, event_type_name(work_event_types[1])) == 0;
    SVC_ASSERT(created || confirmed); /* the read selects these (work_read) */
    bool order_runs = !w->round_paused[CMD_STAGE_ORDER];
    bool payment_runs = !w->round_paused[CMD_STAGE_PAYMENT];
    bool for_order = order_runs && created && row->seq > w->order_pos;
    bool for_payment = payment_runs && confirmed && row->seq > w->payment_pos;
    if (for_order || for_payment) {
        struct event e;
        struct event_arena arena = {w->arena_data, sizeof w->arena_data, 0};
        if (event_decode(row, &e, &arena) != 0) {
            log_error("work: event %" PRId64 " cannot be decoded", row->seq);
            return SVC_EVALIDATION;
        }
        int64_t order_seq = work_id_seq(e.order_id, "ord_");
        int64_t reservation_seq = work_id_seq(e.reservation_id, "res_");
        char reason[REASON_BYTES_MAX + 1] = "";
        bool accepted = !for_order || w->config.rule == NULL ||
                        w->config.rule(w->config.rule_context, &e, reason, sizeof reason);
        enum cmd_order_step step = for_payment ? CMD_STEP_PAY_BEGIN
                                   : accepted  ? CMD_STEP_CONFIRM
                                               : CMD_STEP_REJECT;
        work_step(w, order_seq, reservation_seq, step,
                  for_payment ? CMD_STAGE_PAYMENT : CMD_STAGE_ORDER, row->seq, reason, 0);
    }
    if (order_runs && row->seq > w->order_pos) {
        w->order_pos = row->seq;
    }
    if (payment_runs && row->seq > w->payment_pos) {
        w->payment_pos = row->seq;
    }
    return 0;
}

/* Reads the next events if the pool has room for a step per event; true when it read some. */
static bool work_read(struct work *w)
{
    if (w->free_count < WORK_READ_EVENTS_MAX ||
        w->marks[CMD_STAGE_ORDER].count > WORK_MARKS_MAX - WORK_READ_EVENTS_MAX ||
        w->marks[CMD_STAGE_PAYMENT].count > WORK_MARKS_MAX - WORK_READ_EVENTS_MAX) {
        return false; /* no room for a step per event, or a failing step holds the marks */
    }
    /* A paused stage, or one whose lease another instance holds, neither reads nor moves its
     * position this round; nor does the payment stage while the charges in doubt (waiting out
     * an open circuit) leave too few work items for the steps it may have out and a round of
     * events. */
    for (int s = CMD_STAGE_ORDER; s <= CMD_STAGE_PAYMENT; s++) {
        w->round_paused[s] = atomic_load(&w->paused[s]) || !w->leases[s].held;
    }
    w->round_paused[CMD_STAGE_PAYMENT] |= w->item_free_count < WORK_PAY_ITEMS_RESERVE;
    bool order_runs = !w->round_paused[CMD_STAGE_ORDER];
    bool payment_runs = !w->round_paused[CMD_STAGE_PAYMENT];
    if (!order_runs && !payment_runs) {
        return false;
    }
    int64_t since = !order_runs                     ? w->payment_pos
                    : !payment_runs                 ? w->order_pos
                    : w->order_pos < w->payment_pos ? w->order_pos
                                                    : w->payment_pos;
    int64_t before_order = w->order_pos;
    int64_t before_payment = w->payment_pos;
    /* Only the stages' event types, up to the log's end as it is now (every event up to it is
     * committed: seqs are given in commit order); when fewer than a round came back, each
     * running stage has looked at every event up to that end. */
    int64_t top = 0;
    int rc = store_reader_event_seq_max(w->reader, &top);
    if (rc == 0 && top > since) {
        const char *types[STORE_EVENT_TYPES_MAX];
        for (int i = 0; i < STORE_EVENT_TYPES_MAX; i++) {
            types[i] = event_type_name(work_event_types[i]);
        }
        int count = 0;
        rc = store_reader_events_of(w->reader, since, top, types, STORE_EVENT_TYPES_MAX,
                                    WORK_READ_EVENTS_MAX, w, work_on_event, &count);
        if (rc == 0 && count < WORK_READ_EVENTS_MAX) {
            w->order_pos = order_runs && top > w->order_pos ? top : w->order_pos;
            w->payment_pos = payment_runs && top > w->payment_pos ? top : w->payment_pos;
        }
    }
    if (rc != 0) {
        log_warn("work: reading the event log failed (%d); trying again", rc);
        return false;
    }
    atomic_store(&w->stats.order_offset, w->order_pos);
    atomic_store(&w->stats.payment_offset, w->payment_pos);
    return w->order_pos > before_order || w->payment_pos > before_payment;
}

/* ---- payments ----------------------------------------------------------------------------- */

/* The item's charge is asked again at at_ms (wall clock). */
static void work_retry_at(struct work *w, struct work_item *item, int64_t at_ms)
{
    SVC_ASSERT(item->order_seq != 0 && item->retry_at_ms == 0 && at_ms > 0);
    item->retry_at_ms = at_ms;
    w->retry_waiting++;
    if (w->retry_waiting == 1 || at_ms < w->retry_next_ms) {
        w->retry_next_ms = at_ms;
    }
}

/* The item's charge waits, and is asked again later without a new stored attempt. */
static void work_hold(struct work *w, struct work_item *item)
{
    SVC_ASSERT(item->order_seq != 0 && item->retry_at_ms == 0);
    item->held = true;
    work_retry_at(w, item, w->config.wall_ms() + WORK_PAY_BACKOFF_BASE_MS);
}

static void work_charge(struct work *w, uint32_t index)
{
    struct work_item *item = &w->items[index];
    char key[PAY_KEY_BYTES_MAX + 1];
    snprintf(key, sizeof key, "ord_%" PRId64, item->order_seq);
    SVC_ASSERT(item->retry_at_ms == 0);
    const struct pay_provider *p = w->config.provider;
    item->held = false;
    if (p->charge(p->self, key, index, w->config.wall_ms()) != 0) {
        work_hold(w, item); /* refused: later */
    }
}

/* The provider's circuit breaker lets a charge start now (pay_provider.admits). */
static bool work_admits(struct work *w, int64_t now_ms)
{
    const struct pay_provider *p = w->config.provider;
    return p->admits == NULL || p->admits(p->self, now_ms);
}

/* Takes a work item for a charge in doubt; UINT32_MAX when none is free. */
static uint32_t work_item_take(struct work *w, int64_t order_seq, int64_t reservation_seq,
                               int64_t attempts)
{
    if (w->item_free_count == 0) {
        return UINT32_MAX;
    }
    uint32_t index = w->item_free[--w->item_free_count];
    w->items[index] = (struct work_item){.order_seq = order_seq,
                                         .reservation_seq = reservation_seq,
                                         .attempts = attempts,
                                         .retry_at_ms = 0,
                                         .held = false,
                                         .lease_token = w->leases[CMD_STAGE_PAYMENT].token};
    return index;
}

/* True when item was started under the payment lease this instance holds now. */
static bool work_item_current(const struct work *w, const struct work_item *item)
{
    const struct work_lease *l = &w->leases[CMD_STAGE_PAYMENT];
    return l->held && item->lease_token == l->token;
}

static void work_item_free(struct work *w, uint32_t index)
{
    SVC_ASSERT(w->items[index].order_seq != 0);
    w->items[index].order_seq = 0;
    w->item_free[w->item_free_count++] = index;
}

static int64_t work_backoff_ms(struct work *w, int64_t attempts)
{
    int64_t delay = WORK_PAY_BACKOFF_BASE_MS;
    for (int64_t i = 1; i < attempts && delay < WORK_PAY_BACKOFF_CAP_MS; i++) {
        delay *= 2;
    }
    delay = delay < WORK_PAY_BACKOFF_CAP_MS ? delay : WORK_PAY_BACKOFF_CAP_MS;
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return delay + (int64_t)(w->rng % (uint64_t)(delay / 2 + 1)); /* jitter: up to 50% */
}

/* The provider's results: the outcome goes to the writer; a timeout waits for its retry. */
static bool work_poll_payments(struct work *w)
{
    struct pay_result results[256];
    size_t max = w->free_count < 256 ? w->free_count : 256;
    const struct pay_provider *p = w->config.provider;
    size_t n = p->poll(p->self, w->config.wall_ms(), results, max);
    for (size_t i = 0; i < n; i++) {
        uint32_t index = (uint32_t)results[i].token;
        struct work_item *item = &w->items[index];
        SVC_ASSERT(index < WORK_PAY_ITEMS_MAX && item->order_seq != 0);
        if (!work_item_current(w, item)) {
            /* Started under a lease since lost: whoever holds the stage now asked the charge
             * again with the same key (it was in doubt in storage), or will. */
            work_item_free(w, index);
            continue;
        }
        SVC_ASSERT(!item->held && item->retry_at_ms == 0); /* its charge was in flight */
        if (results[i].outcome == PAY_TIMEOUT && !work_admits(w, w->config.wall_ms())) {
            work_hold(w, item); /* the circuit is open: wait for it, no attempt, no dead letter */
            continue;
        }
        if (results[i].outcome == PAY_TIMEOUT) {
            if (item->attempts >= WORK_PAY_ATTEMPTS_MAX) {
                atomic_fetch_add(&w->stats.parked, 1);
                log_warn("work: ord_%" PRId64 " still in doubt after %" PRId64
                         " attempts: dead letter (stays CONFIRMED, never expires)",
                         item->order_seq, item->attempts);
                work_step(w, item->order_seq, item->reservation_seq, CMD_STEP_DEAD_LETTER,
                          CMD_STAGE_PAYMENT, 0, "payment timed out", item->attempts);
                work_item_free(w, index);
                continue;
            }
            work_retry_at(w, item, w->config.wall_ms() + work_backoff_ms(w, item->attempts));
            continue;
        }
        bool ok = results[i].outcome == PAY_OK;
        work_step(w, item->order_seq, item->reservation_seq,
                  ok ? CMD_STEP_PAID : CMD_STEP_PAY_FAILED, CMD_STAGE_PAYMENT, 0,
                  ok ? results[i].ref : "payment declined", item->attempts);
        work_item_free(w, index);
    }
    return n > 0;
}

/* Retries due: each counted in storage (PAY_RETRY) before the charge is asked again, but for
 * a held charge, whose stored attempt is still unspent. None while the provider's circuit is
 * open: the items wait, their orders stay in doubt, no attempt is spent. */
static void work_retry_due(struct work *w)
{
    if (w->retry_waiting == 0 || atomic_load(&w->paused[CMD_STAGE_PAYMENT])) {
        return; /* paused: a retry due waits for the resume */
    }
    SVC_ASSERT(w->leases[CMD_STAGE_PAYMENT].held); /* a loss drops the retries waiting */
    int64_t now = w->config.wall_ms();
    if (now < w->retry_next_ms) {
        return; /* none is due yet: no walk over every item (this runs every WORK_POLL_MS) */
    }
    int64_t next = INT64_MAX;     /* the earliest retry left waiting, if the walk goes through */
    w->retry_next_ms = INT64_MAX; /* lowered by a charge held again during the walk */
    uint32_t i = 0;
    for (; i < WORK_PAY_ITEMS_MAX && w->free_count > 0; i++) {
        struct work_item *item = &w->items[i];
        if (item->order_seq != 0 && item->retry_at_ms > now) {
            next = item->retry_at_ms < next ? item->retry_at_ms : next;
        }
        if (item->order_seq != 0 && item->retry_at_ms != 0 && item->retry_at_ms <= now) {
            if (!work_admits(w, now)) {
                break; /* the circuit is open, or its probes are out: the rest waits too */
            }
            item->retry_at_ms = 0;
            w->retry_waiting--;
            if (item->held) {
                work_charge(w, i); /* may be held again */
                continue;
            }
            atomic_fetch_add(&w->stats.retries, 1);
            work_step(w, item->order_seq, item->reservation_seq, CMD_STEP_PAY_RETRY,
                      CMD_STAGE_PAYMENT, 0, "payment timed out", item->attempts);
            work_item_free(w, i); /* PAY_RETRY's reply takes a new one */
        }
    }
    /* A walk cut short may have left due or earlier retries unseen: walk again next time. */
    if (i < WORK_PAY_ITEMS_MAX) {
        w->retry_next_ms = now;
    } else if (next < w->retry_next_ms) {
        w->retry_next_ms = next;
    }
}

/* ---- replies ------------------------------------------------------------------------------ */

static void work_on_reply(struct work *w, struct command *cmd)
{
    SVC_ASSERT(cmd->kind == CMD_ORDER_STEP);
    const struct work_lease *lease = &w->leases[cmd->stage];
    if (!lease->held || cmd->lease_token != lease->token) {
        /* Sent under a lease since lost: its marks were dropped with the stage's state, and
         * what it did (if the fence let it) the next holder reads from storage. */
        w->free_list[w->free_count++] = cmd;
        return;
    }
    if (cmd->reply_status == 503 || cmd->reply_status == 429) {
        cmd->stage_seq = work_mark_low(w, cmd->stage); /* its own mark holds it below */
        work_push(w, cmd);                             /* nothing of it was written: again */
        return;
    }
    int64_t event_seq = w->step_event[cmd - w->pool];
    if (event_seq >= 1) {
        work_mark_done(w, cmd->stage, event_seq);
    }
    bool ok = cmd->reply_status == 200;
    enum cmd_order_step step = cmd->order_step;
    if (ok && (step == CMD_STEP_DEAD_LETTER || step == CMD_STEP_PAY_REPLAY)) {
        atomic_fetch_add(&w->stats.dead_letters, step == CMD_STEP_DEAD_LETTER ? 1 : -1);
        atomic_fetch_add(&w->stats.replayed, step == CMD_STEP_PAY_REPLAY ? 1 : 0);
    }
    if (!ok && cmd->stage == CMD_STAGE_ORDER) {
        atomic_fetch_add(&w->stats.order_refused, 1);
    }
    if (ok && step == CMD_STEP_REJECT) {
        atomic_fetch_add(&w->stats.rejected, 1);
    }
    if (ok &&
        (step == CMD_STEP_PAY_BEGIN || step == CMD_STEP_PAY_RETRY || step == CMD_STEP_PAY_REPLAY)) {
        /* The charge is in doubt now, durably: start it. The attempts are the stored ones. */
        uint32_t index = work_item_take(w, cmd->order_seq, cmd->reservation_seq, cmd->qty + 1);
        SVC_ASSERT(index != UINT32_MAX); /* WORK_PAY_ITEMS_MAX > the pool */
        work_charge(w, index);
    }
    if (ok) {
        atomic_fetch_add(step == CMD_STEP_CONFIRM      ? &w->stats.confirmed
                         : step == CMD_STEP_PAID       ? &w->stats.paid
                         : step == CMD_STEP_PAY_FAILED ? &w->stats.payment_failed
                                                       : &w->stats.retries,
                         step == CMD_STEP_PAY_BEGIN || step == CMD_STEP_PAY_RETRY ||
                                 step == CMD_STEP_REJECT || step == CMD_STEP_DEAD_LETTER ||
                                 step == CMD_STEP_PAY_REPLAY
                             ? 0
                             : 1);
    }
    w->free_list[w->free_count++] = cmd;
}

static bool work_drain_replies(struct work *w)
{
    struct command *taken[256];
    uint32_t n = 0;
    pthread_mutex_lock(&w->lock);
    while (n < 256 && w->reply_count > 0) {
        taken[n++] = w->replies[--w->reply_count];
    }
    pthread_mutex_unlock(&w->lock);
    for (uint32_t i = 0; i < n; i++) {
        work_on_reply(w, taken[i]);
    }
    struct work_replay_item replays[64];
    uint32_t replay_n = 0;
    pthread_mutex_lock(&w->lock);
    while (replay_n < 64 && w->replay_count > 0 && w->free_count > replay_n &&
           w->leases[CMD_STAGE_PAYMENT].held) {
        replays[replay_n++] = w->replays[--w->replay_count];
    }
    pthread_mutex_unlock(&w->lock);
    for (uint32_t i = 0; i < replay_n; i++) {
        /* A second replay of the same order is refused by the writer as stale. */
        work_step(w, replays[i].order_seq, replays[i].reservation_seq, CMD_STEP_PAY_REPLAY,
                  CMD_STAGE_PAYMENT, 0, "replayed from the dead-letter table", 0);
    }
    uint32_t backlog = w->backlog_count;
    w->backlog_count = 0;
    for (uint32_t i = 0; i < backlog; i++) {
        work_push(w, w->backlog[i]);
    }
    return n > 0 || replay_n > 0;
}

/* ---- the thread --------------------------------------------------------------------------- */

static int work_resume_one(void *context, const struct store_payment_row *row)
{
    struct work *w = context;
    if (row->pay_attempts >= WORK_PAY_ATTEMPTS_MAX) {
        /* Its last attempt started before the stop: a dead letter as it was (or would have
         * been after that attempt's timeout), never asked again here but by a replay. */
        if (row->dead_lettered) {
            atomic_fetch_add(&w->stats.dead_letters, 1);
            return 0;
        }
        if (w->free_count == 0) {
            return SVC_ECAPACITY;
        }
        atomic_fetch_add(&w->stats.parked, 1);
        log_warn("work: ord_%" PRId64 " in doubt after %" PRId64 " attempts: dead letter",
                 row->order_seq, row->pay_attempts);
        work_step(w, row->order_seq, row->reservation_seq, CMD_STEP_DEAD_LETTER, CMD_STAGE_PAYMENT,
                  0, "payment timed out", row->pay_attempts);
        return 0;
    }
    uint32_t index = work_item_take(w, row->order_seq, row->reservation_seq, row->pay_attempts);
    if (index == UINT32_MAX) {
        return SVC_ECAPACITY;
    }
    work_charge(w, index); /* the same key: the provider answers what it decided */
    return 0;
}

/* ---- the stages' leases ------------------------------------------------------------------- */

static int64_t work_mono_ms(void)
{
    return clock_mono_us() / 1000;
}

/* The stage's lease was lost: it stops at once. Its marks go (the replies of its steps are
 * dropped as they come back, work_on_reply); for the payment stage, the retries waiting are
 * dropped and the charges at the provider are left to end unheard (work_poll_payments). */
static void work_stage_drop(struct work *w, enum cmd_stage stage)
{
    w->marks[stage].head = 0;
    w->marks[stage].count = 0;
    if (stage != CMD_STAGE_PAYMENT) {
        return;
    }
    for (uint32_t i = 0; i < WORK_PAY_ITEMS_MAX && w->retry_waiting > 0; i++) {
        if (w->items[i].order_seq != 0 && w->items[i].retry_at_ms != 0) {
            w->items[i].retry_at_ms = 0;
            w->retry_waiting--;
            work_item_free(w, i);
        }
    }
    SVC_ASSERT(w->retry_waiting == 0);
}

/* The stage's lease was won: its state comes from storage, as another instance may have moved
 * it meanwhile: the stored offset and, for the payment stage, every charge left in doubt (by
 * this instance before a loss, by a stopped one, or by a holder that lost the stage), asked
 * again with the same key. 0 or an error (the stage is then dropped again). */
static int work_stage_load(struct work *w, enum cmd_stage stage)
{
    SVC_ASSERT(w->marks[stage].count == 0);
    int64_t *pos = stage == CMD_STAGE_ORDER ? &w->order_pos : &w->payment_pos;
    int rc = store_reader_stage_offset(w->reader, w->leases[stage].stage, pos);
    if (rc == 0 && stage == CMD_STAGE_PAYMENT) {
        atomic_store(&w->stats.dead_letters, 0); /* counted again by the resume */
        rc = store_reader_payments_in_doubt(w->reader, w, work_resume_one);
    }
    atomic_store(stage == CMD_STAGE_ORDER ? &w->stats.order_offset : &w->stats.payment_offset,
                 *pos);
    if (rc == 0) {
        log_info("work: %s stage from event %" PRId64 "%s", w->leases[stage].stage, *pos,
                 stage == CMD_STAGE_PAYMENT ? ", the charges in doubt resumed" : "");
    }
    return rc;
}

/* Acquires, renews or notices the loss of each stage's lease when due. */
static void work_leases_tick(struct work *w)
{
    for (int s = CMD_STAGE_ORDER; s <= CMD_STAGE_PAYMENT; s++) {
        struct work_lease *l = &w->leases[s];
        enum work_lease_change change =
            work_lease_tick(l, w->reader, w->holder, w->config.lease_ms, work_mono_ms());
        if (change == WORK_LEASE_LOST) {
            work_stage_drop(w, (enum cmd_stage)s);
        } else if (change == WORK_LEASE_WON && work_stage_load(w, (enum cmd_stage)s) != 0) {
            log_warn("work: cannot read the %s stage's state; its lease is tried again", l->stage);
            work_stage_drop(w, (enum cmd_stage)s);
            work_lease_forget(l, work_mono_ms(), w->config.lease_ms / WORK_LEASE_RENEW_DIVISOR);
        }
    }
}

/* Waits for a reply or newly committed events, at most WORK_POLL_MS while charges are in
 * flight or retries wait (the provider and the clock do not signal), else WORK_IDLE_WAIT_MS
 * (events other instances committed on a shared database do not signal either), and never
 * past the next lease action. */
static void work_wait(struct work *w)
{
    bool charging = w->item_free_count < WORK_PAY_ITEMS_MAX || w->backlog_count > 0;
    int64_t wait_ms = charging ? WORK_POLL_MS : WORK_IDLE_WAIT_MS;
    int64_t now_ms = work_mono_ms();
    for (int s = CMD_STAGE_ORDER; s <= CMD_STAGE_PAYMENT; s++) {
        int64_t until_due = work_lease_due_ms(&w->leases[s]) - now_ms;
        wait_ms = until_due < wait_ms ? (until_due > 0 ? until_due : 0) : wait_ms;
    }
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    int64_t ns = until.tv_nsec + wait_ms * 1000000;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&w->lock);
    if (!w->woken && w->reply_count == 0 && !atomic_load(&w->stopping)) {
        (void)pthread_cond_timedwait(&w->wake, &w->lock, &until);
    }
    w->woken = false;
    pthread_mutex_unlock(&w->lock);
}

static void *work_loop(void *arg)
{
    svc_thread_name("workers", -1);
    struct work *w = arg;
    while (!atomic_load(&w->stopping)) {
        work_leases_tick(w);
        bool busy = work_drain_replies(w);
        busy |= work_poll_payments(w);
        work_retry_due(w);
        busy |= work_read(w);
        if (!busy) {
            work_wait(w);
        }
    }
    return NULL;
}

int work_start(struct work *w)
{
    SVC_ASSERT(!w->started);
    int rc = store_reader_open(&w->reader, w->config.db_uri);
    if (rc != 0) {
        log_error("work: cannot open the workers' reader (%d)", rc);
        return rc;
    }
    /* Each stage's state is read when its lease is won: here, before the thread starts, with
     * a backend no other process writes or a lease no live instance holds (a restart after a
     * clean stop: so a start serves with its charges in doubt resumed, as before leases);
     * else later, when the holder stops renewing (work_leases_tick). */
    log_info("work: instance %s, leases of %" PRId64 " ms", w->holder, w->config.lease_ms);
    work_leases_tick(w);
    w->started = true;
    rc = pthread_create(&w->thread, NULL, work_loop, w);
    if (rc != 0) {
        w->started = false;
        return -rc;
    }
    return 0;
}

void work_stop(struct work *w)
{
    if (w == NULL || !w->started) {
        return;
    }
    atomic_store(&w->stopping, true);
    work_notify(w);
    pthread_join(w->thread, NULL);
    w->started = false;
    for (int s = CMD_STAGE_ORDER; s <= CMD_STAGE_PAYMENT; s++) {
        work_lease_release(&w->leases[s], w->reader, w->holder); /* the thread has ended */
    }
}
