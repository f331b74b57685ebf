/*
 * writer.c - the single-writer batching core. See writer.h for the contract.
 *
 * 1. State machine of one batch (TigerBeetle prefetch -> commit -> persist -> reply):
 *
 *     +------+ pop  +-------------+ ok  +----------+     +------------+ ok  +----------+
 *     | IDLE | ---> | PREFETCHING | --> | APPLYING | --> | PERSISTING | --> | REPLYING |
 *     +------+      +-------------+     +----------+     +------------+     +----------+
 *        ^            |  ^    failed         lost a race (retry) |  | failed     |
 *        |            |  +-----------------------------------------+  |           v
 *        |            +-----------------------> 503s ------------------+--> +------------+
 *        +----------------------------------------------------------------- | PUBLISHING |
 *                                                                           +------------+
 *
 * 2. Transitions and the functions that perform them:
 *    IDLE -> PREFETCHING   writer_run_batch: batch_reset, then prefetch_batch (core/prefetch.h)
 *                          reads what the batch needs that memory does not hold.
 *    -> APPLYING           writer_attempt: due expiries (apply_expire_due), then each command:
 *                          idempotency (batch-local keys, then the prefetched records), else
 *                          apply_command and reply_format. No storage call: store_apply_begin
 *                          makes any store call an assertion failure until store_apply_end.
 *    -> PERSISTING         writer_attempt: batch_collect_items and ONE store_commit_batch. When
 *                          it answers STORE_COMMIT_RETRY (another instance won a race) the
 *                          batch is undone and runs again from PREFETCHING, at most
 *                          WRITER_COMMIT_ATTEMPTS_MAX times.
 *    -> REPLYING           ok: dom_commit, the sequences commit, acked_seq moves. failed:
 *                          dom_rollback, and every command but a replay from storage becomes
 *                          503 storage_unavailable (nothing of it was written).
 *                          writer_note_recovery counts storage_recoveries when the store's
 *                          session was made again meanwhile (the readers reconnect before
 *                          their next read). Then config.reply for each command, in queue
 *                          order: ownership leaves.
 *    -> PUBLISHING         writer_publish: the read model gets other instances' events that
 *                          the prefetch read, then the batch's own (config.committed). The
 *                          replies are already on their way: this is off their path.
 *    -> IDLE
 *
 * 3. Between batches (IDLE), in this order: store_batch_done (SQLite's WAL), a snapshot of
 *    the read model when one is due (writer_snapshot), and when the queue is empty the
 *    housekeeping (idempotency pruning). At the stop, after the queue is drained, one last
 *    snapshot. Why here: the snapshot must be a copy of the read model at one seq, taken under
 *    its apply mutex, which this thread takes after every batch anyway (projector.h); its
 *    write is a transaction of its own between two batches, so no batch's transaction (nor,
 *    on PostgreSQL, the sequencer lock that every instance's batches wait for) grows by it,
 *    and it costs a batch boundary one short transaction every SNAPSHOT_EVERY_EVENTS events.
 *    read/projector_snapshot.c says more, with the alternative of a thread of its own.
 *
 * 4. Trace ids in the log (log.h): while a batch runs, this thread's log lines carry the list of
 *    its commands' trace ids (writer_run_batch), and while one command applies, and while its
 *    reply is handed back, that command's alone (writer_apply_all, writer_reply_all), so a
 *    line about the batch (a slow one, a failed prefetch or commit) names every request in
 *    it, and one about a command names its request. At debug level each reply is logged.
 *
 * 5. Invariants (writer_invariants_hold), between batches:
 *    - the working sequences equal the committed ones, no item is dirty, no reservation is
 *      touched (the working state is the committed state);
 *    - the domain invariants, reserved = sum of ACTIVE lines included (an O(N) scan:
 *      SVC_DEBUG_ASSERT, debug builds).
 */
#include "core/writer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"
#include "core/apply.h"
#include "core/batch.h"
#include "core/prefetch.h"
#include "core/reply.h"

/* A batch slower than this is logged with where its time went (prefetch, apply, commit). */
#define WRITER_SLOW_BATCH_US (50 * 1000)
/* How often a batch is prefetched and applied again after STORE_COMMIT_RETRY before its
 * commands get 503: each retry finds the winner's rows, so a second run nearly always
 * commits; four covers a burst of instances racing on the same new keys. */
#define WRITER_COMMIT_ATTEMPTS_MAX 4
/* A sweep that prunes idempotency records starts at most this often; its steps then run at the
 * writer's idle moments until it reaches the end of the table. So a record is deleted within
 * about this long (plus the sweep's own time) after its retention ends, and a sweep of a
 * table of millions costs the writer seconds in ten minutes. */
#define WRITER_PRUNE_INTERVAL_MS (10 * 60 * 1000)
/* While a sweep is under way, an idle writer takes its next step after at most this long: 20
 * steps a second, ~80,000 records (a table of 10 million in about two minutes). */
#define WRITER_SWEEP_STEP_WAIT_MS 50

const int64_t writer_commit_bucket_us[WRITER_COMMIT_BUCKETS] = {
    100,   250,    500,    1000,   2500,    5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

/* What a command's reply depends on, for the failure path. */
enum writer_outcome {
    WRITER_OUTCOME_NONE = 0,      /* refused: stands only if the batch commits */
    WRITER_OUTCOME_FRESH,         /* applied in this batch: reply only if the batch commits */
    WRITER_OUTCOME_STORED_REPLAY, /* replayed from storage: reply stands */
    WRITER_OUTCOME_BATCH_REPLAY,  /* copied from an earlier command of this batch */
};

/* The writer's private scratch beside the batch: per-command outcomes and the prefetch keys. */
struct writer_scratch {
    enum writer_outcome outcomes[BATCH_COMMANDS_MAX];
    uint64_t stock_refusals[WRITER_REFUSAL_KINDS]; /* of the attempt in hand */
    const char *trace_ids[BATCH_COMMANDS_MAX];     /* the batch's commands' trace_id (borrowed) */
    struct prefetch *prefetch;                     /* owned */
};

static struct writer_scratch *writer_scratch_of(const struct writer *w);

static bool writer_invariants_hold(const struct writer *w)
{
    const struct batch_seqs *working = batch_seqs_working(w->batch);
    const struct batch_seqs *committed = batch_seqs_committed(w->batch);
    if (memcmp(working, committed, sizeof *working) != 0) {
        return false;
    }
    const struct domain *d = w->config.domain;
    if (d->undo_count != 0 || d->reservations.touched_count != 0) {
        return false;
    }
    if (w->state != WRITER_IDLE || atomic_load(&w->acked_seq) > committed->event) {
        return false;
    }
    SVC_DEBUG_ASSERT(dom_invariants_hold(d));
    return true;
}

/* ---- loading ------------------------------------------------------------------------------ */

/* A stored table larger than its configured capacity: the start fails, naming the flag. */
static int writer_load_capacity(int rc, const char *flag, uint32_t limit)
{
    if (rc == SVC_ECAPACITY) {
        log_error("the database holds more than %s %" PRIu32 " allows: start with a larger %s",
                  flag, limit, flag);
    }
    return rc;
}

static int writer_load_store(void *context, const char *id, const char *name, int64_t latency_ms)
{
    struct domain *d = context;
    return writer_load_capacity(dom_load_store(d, id, name, latency_ms), "--max-stores",
                                d->capacity.stores);
}

static int writer_load_product(void *context, const char *sku, const char *name)
{
    struct domain *d = context;
    return writer_load_capacity(dom_load_product(d, sku, name), "--max-products",
                                d->capacity.products);
}

static int writer_load_item(void *context, const char *store_id, const char *sku, int64_t on_hand,
                            int64_t reserved, int64_t version, int64_t sold, int64_t updated_at_ms)
{
    struct domain *d = context;
    int rc = dom_load_item(d, store_id, sku, on_hand, reserved, version, sold, updated_at_ms);
    return writer_load_capacity(rc, "--max-stock-items", d->capacity.items);
}

static int writer_load_reservation(void *context, int64_t seq, const char *store_id,
                                   const char *customer_id, int64_t expires_at_ms, int64_t version,
                                   int64_t created_at_ms)
{
    struct domain *d = context;
    int rc =
        dom_load_reservation(d, seq, store_id, customer_id, expires_at_ms, version, created_at_ms);
    return writer_load_capacity(rc, "--max-reservations", d->capacity.reservations);
}

static int writer_load_reservation_line(void *context, int64_t seq, const char *sku, int64_t qty)
{
    return dom_load_reservation_line(context, seq, sku, qty);
}

static int writer_load_reservation_order(void *context, int64_t seq, int64_t order_seq,
                                         const char *order_status, int64_t pay_attempts)
{
    return dom_load_reservation_order(context, seq, order_seq, order_status, pay_attempts);
}

/* Reads the whole committed state into the domain. 0 or an error (logged by the caller). */
static int writer_load(struct writer *w)
{
    struct domain *d = w->config.domain;
    struct store_sink sink = {d,
                              writer_load_store,
                              writer_load_product,
                              writer_load_item,
                              writer_load_reservation,
                              writer_load_reservation_line,
                              NULL,
                              NULL,
                              NULL,
                              writer_load_reservation_order,
                              NULL};
    struct store_sequences sequences = {0, 0, 0};
    int rc = store_load(w->config.store, &sink, &sequences);
    dom_commit(d); /* loaded rows are committed state */
    if (rc != 0) {
        return rc;
    }
    struct batch_seqs seqs = {sequences.order_seq_max, sequences.event_seq_max,
                              sequences.reservation_seq_max};
    batch_seqs_set(w->batch, &seqs);
    atomic_store(&w->acked_seq, seqs.event);
    return 0;
}

/* The reply hook of the bootstrap batch: its command is the writer's own. */
static void writer_bootstrap_reply(struct command *cmd, void *context)
{
    (void)context;
    SVC_ASSERT(cmd->kind == CMD_STORE_CREATE && cmd->reply_status >= 200);
}

/* A new database gets its first store, S1 (DESIGN.md: a fresh database has one), through the
 * normal path, so that its StoreCreated event comes from the catalogue like every other. An
 * instance that loses the race for it to another (shared backend) finds S1 there. 0 or
 * SVC_ESTORAGE_UNAVAILABLE. */
static int writer_bootstrap(struct writer *w)
{
    struct command *cmd = calloc(1, sizeof *cmd); /* startup: allocation is fine */
    if (cmd == NULL) {
        return -ENOMEM;
    }
    cmd->kind = CMD_STORE_CREATE;
    strcpy(cmd->store_id, "S1");
    strcpy(cmd->name, "Store 1");
    strcpy(cmd->principal, "stockd");
    struct writer_config config = w->config;
    w->config.reply = writer_bootstrap_reply;
    w->config.reply_context = NULL;
    writer_run_batch(w, &cmd, 1);
    w->config = config;
    int status = cmd->reply_status;
    free(cmd);
    SVC_ASSERT(status != 201 || w->config.domain->store_count >= 1);
    return status == 201 || w->config.domain->store_count >= 1 ? 0 : SVC_ESTORAGE_UNAVAILABLE;
}

int writer_init(struct writer *w, const struct writer_config *config)
{
    SVC_ASSERT(config->store && config->domain && config->queue && config->reply);
    SVC_ASSERT(config->wall_ms != NULL);
    memset(w, 0, sizeof *w);
    w->config = *config;
    w->store_sessions_seen = store_session_count(config->store); /* the first: no recovery */
    w->batch = batch_new();
    struct writer_scratch *scratch = calloc(1, sizeof *scratch);
    w->scratch = scratch;
    if (w->batch == NULL || scratch == NULL ||
        (scratch->prefetch = prefetch_new(config->domain->capacity.stores)) == NULL) {
        writer_deinit(w);
        return -ENOMEM;
    }
    /* On a shared backend other instances make reservations this one never sees. */
    config->domain->reservations_complete = !store_is_shared(config->store);
    int rc = writer_load(w);
    if (rc == 0 && config->domain->store_count == 0 && batch_seqs_committed(w->batch)->event == 0) {
        rc = writer_bootstrap(w);
    }
    if (rc != 0) {
        log_error("writer: loading state failed: %s", svc_err_name(rc));
        writer_deinit(w);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    w->prune_due_ms = config->wall_ms();
    atomic_store(&w->storage_ok, true);
    SVC_ASSERT(dom_invariants_hold(config->domain));
    SVC_ASSERT(writer_invariants_hold(w));
    const struct domain *d = config->domain;
    atomic_store(&w->stats.reservations_held, res_count(&d->reservations));
    log_info("writer: loaded %u stores, %u products, %u items; orders to %" PRId64
             ", events to %" PRId64 "; %u active reservations",
             d->store_count, d->product_count, d->item_count, batch_seqs_committed(w->batch)->order,
             batch_seqs_committed(w->batch)->event, res_count(&d->reservations));
    return 0;
}

void writer_deinit(struct writer *w)
{
    SVC_ASSERT(!w->started);
    struct writer_scratch *scratch = w->scratch;
    if (scratch != NULL) {
        prefetch_free(scratch->prefetch);
        free(scratch);
        w->scratch = NULL;
    }
    batch_free(w->batch);
    w->batch = NULL;
}

static struct writer_scratch *writer_scratch_of(const struct writer *w)
{
    SVC_ASSERT(w->scratch != NULL);
    return w->scratch;
}

/* ---- applying ----------------------------------------------------------------------------- */

/* A stored record is the same request as cmd: the fingerprint of its meaning, or the bytes
 * fingerprint that versions before command_fingerprint stored (still within retention). */
static bool writer_fingerprint_matches(uint64_t stored, const struct command *cmd)
{
    return stored == cmd->fingerprint ||
           (cmd->fingerprint_bytes != 0 && stored == cmd->fingerprint_bytes);
}

/* Decides a keyed command by its key when the key answers it (a replay, a reuse); returns
 * WRITER_OUTCOME_FRESH when the command must apply (the key is then claimed). */
static enum writer_outcome writer_idem_check(struct writer *w, size_t index)
{
    struct batch *b = w->batch;
    struct command *cmd = batch_command(b, index);
    uint32_t slot = 0;
    int32_t earlier = batch_idem_earlier(b, index, &slot);
    if (earlier >= 0) {
        const struct command *first = batch_command(b, (size_t)earlier);
        if (first->fingerprint != cmd->fingerprint) {
            reply_problem(cmd, SVC_EIDEM_KEY_REUSED, "key used with another request");
            return WRITER_OUTCOME_NONE;
        }
        reply_replay(cmd, first->reply_status, first->reply_problem, first->reply_body,
                     first->reply_length, first->reply_location);
        return WRITER_OUTCOME_BATCH_REPLAY;
    }
    const struct batch_idem_record *found =
        batch_idem_record_find(b, cmd->principal, cmd->idem_key);
    if (found != NULL && !writer_fingerprint_matches(found->fingerprint, cmd)) {
        reply_problem(cmd, SVC_EIDEM_KEY_REUSED, "key used with another request");
        return WRITER_OUTCOME_NONE;
    }
    if (found != NULL) {
        bool copied = reply_replay(cmd, found->status, found->problem, found->body,
                                   found->body_length, found->location);
        return copied ? WRITER_OUTCOME_STORED_REPLAY : WRITER_OUTCOME_NONE;
    }
    batch_idem_claim(b, index, slot);
    return WRITER_OUTCOME_FRESH;
}

static enum writer_refusal writer_refusal_of(const struct command *cmd)
{
    switch (cmd->kind) {
    case CMD_PURCHASE: return WRITER_REFUSAL_PURCHASE;
    case CMD_RESERVE: return WRITER_REFUSAL_RESERVATION;
    case CMD_ORDER_CREATE: return WRITER_REFUSAL_ORDER;
    default: return WRITER_REFUSAL_OTHER;
    }
}

static void writer_apply(struct writer *w, size_t index)
{
    struct batch *b = w->batch;
    struct command *cmd = batch_command(b, index);
    enum writer_outcome *outcome = &writer_scratch_of(w)->outcomes[index];
    command_reply_prepare(cmd);
    cmd->reply_replayed = false;
    cmd->reply_fenced = false;
    cmd->reply_location[0] = '\0';
    if (cmd->stage == CMD_STAGE_INTAKE && !batch_lease_valid(b, cmd->stage, cmd->lease_token)) {
        /* The intake consumer that sent it lost its lease (the fence of work/work.h): nothing
         * of it is written, not its effect, its idempotency record nor the stream offset. The
         * holder now reads the stream again from the stored offset and applies it then. */
        reply_problem(cmd, SVC_EVERSION_CONFLICT, "the intake lease was taken over");
        cmd->reply_fenced = true;
        *outcome = WRITER_OUTCOME_NONE;
        return;
    }
    if (cmd->stage == CMD_STAGE_INTAKE && cmd->stage_seq >= 1) {
        /* The intake consumer's offset in the stream of commands, in the batch of the
         * command's effect and idempotency record (a replay moves it too). */
        batch_stream_offset(b, "commands", cmd->stage_seq);
    }
    if (cmd->has_idem_key) {
        *outcome = writer_idem_check(w, index);
        if (*outcome != WRITER_OUTCOME_FRESH) {
            return;
        }
    }
    struct outcome decided;
    apply_command(w->config.domain, b, cmd, &decided);
    if (decided.kind == OUTCOME_PROBLEM && decided.problem.err == SVC_EINSUFFICIENT_STOCK) {
        writer_scratch_of(w)->stock_refusals[writer_refusal_of(cmd)]++;
    }
    reply_format(cmd, &decided, w->config.domain);
    SVC_ASSERT(cmd->reply_status >= 200 && cmd->reply_status <= 599);
    if (decided.kind != OUTCOME_PROBLEM) {
        SVC_ASSERT(decided.changed && cmd->reply_status < 300);
    }
    if (cmd->has_idem_key) {
        batch_add_idem(b, cmd);
    }
    *outcome = decided.changed || cmd->has_idem_key ? WRITER_OUTCOME_FRESH : WRITER_OUTCOME_NONE;
}

/* Undoes the working state of a batch that was not committed. */
static void writer_undo_batch(struct writer *w)
{
    dom_rollback(w->config.domain);
    batch_seqs_rollback(w->batch);
    SVC_ASSERT(w->config.domain->undo_count == 0);
}

static void writer_fail_batch(struct writer *w)
{
    struct batch *b = w->batch;
    const struct writer_scratch *scratch = writer_scratch_of(w);
    writer_undo_batch(w);
    atomic_fetch_add(&w->stats.batch_failures, 1);
    for (size_t i = 0; i < batch_command_count(b); i++) {
        /* Only a replay from storage stands: it answers from durable state. A refusal was
         * decided on the working state, which may hold changes of earlier commands of this
         * batch that were just rolled back (a 409 insufficient_stock after a purchase that
         * never happened), so it is not a true answer either. */
        if (scratch->outcomes[i] != WRITER_OUTCOME_STORED_REPLAY) {
            struct command *cmd = batch_command(b, i);
            command_reply_prepare(cmd); /* it may never have applied (a failed prefetch) */
            reply_problem(cmd, SVC_ESTORAGE_UNAVAILABLE,
                          "the batch could not be made durable; retry with the same key");
            cmd->reply_replayed = false;
        }
    }
}

static void writer_record_stats(struct writer *w, size_t count, int64_t commit_us)
{
    struct writer_stats *st = &w->stats;
    SVC_ASSERT(count >= 1 && commit_us >= 0);
    atomic_fetch_add_explicit(&st->batches, 1, memory_order_relaxed);
    atomic_store_explicit(&st->reservations_held, res_count(&w->config.domain->reservations),
                          memory_order_relaxed);
    atomic_fetch_add_explicit(&st->commands, count, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->commit_us_total, (uint64_t)commit_us, memory_order_relaxed);
    if ((uint64_t)commit_us > atomic_load_explicit(&st->commit_us_max, memory_order_relaxed)) {
        atomic_store_explicit(&st->commit_us_max, (uint64_t)commit_us, memory_order_relaxed);
    }
    if (count > atomic_load_explicit(&st->batch_size_max, memory_order_relaxed)) {
        atomic_store_explicit(&st->batch_size_max, count, memory_order_relaxed);
    }
    unsigned bucket = 0;
    while ((2u << bucket) <= count && bucket + 1 < WRITER_BATCH_BUCKETS) {
        bucket++;
    }
    atomic_fetch_add_explicit(&st->batch_size_buckets[bucket], 1, memory_order_relaxed);
    unsigned slot = 0;
    while (slot < WRITER_COMMIT_BUCKETS && commit_us > writer_commit_bucket_us[slot]) {
        slot++;
    }
    atomic_fetch_add_explicit(&st->commit_us_buckets[slot], 1, memory_order_relaxed);
}

/* Counts what a committed batch did: its refusals for want of stock and its events. */
static void writer_record_committed(struct writer *w)
{
    struct writer_stats *st = &w->stats;
    const struct writer_scratch *scratch = writer_scratch_of(w);
    for (unsigned k = 0; k < WRITER_REFUSAL_KINDS; k++) {
        if (scratch->stock_refusals[k] > 0) {
            atomic_fetch_add_explicit(&st->stock_refusals[k], scratch->stock_refusals[k],
                                      memory_order_relaxed);
        }
    }
    const struct event *events = batch_events(w->batch);
    for (size_t i = 0; i < batch_event_count(w->batch); i++) {
        SVC_ASSERT(events[i].type < EVENT_TYPE_COUNT); /* the writer made it */
        atomic_fetch_add_explicit(&st->events[events[i].type], 1, memory_order_relaxed);
    }
}

size_t writer_batch_fit(struct writer *w, struct command **commands, size_t count)
{
    const struct domain *d = w->config.domain;
    int64_t next = batch_seqs_committed(w->batch)->reservation + 1;
    bool shared = store_is_shared(w->config.store);
    size_t weight = 0;
    size_t fit = 0;
    while (fit < count) {
        size_t more = apply_command_weight(d, commands[fit], next, shared);
        if (weight + more > BATCH_COMMAND_WEIGHT_MAX) {
            break;
        }
        weight += more;
        fit++;
    }
    SVC_ASSERT(fit >= 1 || count == 0); /* any one command fits (batch.h) */
    return fit;
}

/* The apply step: expiries, then every command, in memory only. */
static void writer_apply_all(struct writer *w)
{
    struct batch *b = w->batch;
    w->state = WRITER_APPLYING;
    store_apply_begin(w->config.store);
    if (!atomic_load(&w->expiry_paused)) {
        size_t before = batch_event_count(b);
        apply_expire_due(w->config.domain, b); /* release expired holds before the batch competes */
        atomic_fetch_add(&w->expiry_events, batch_event_count(b) - before);
    }
    for (size_t i = 0; i < batch_command_count(b); i++) {
        const char *trace_id = batch_command(b, i)->trace_id;
        log_trace_set(trace_id[0] != '\0' ? trace_id : NULL); /* section 4 at the top */
        writer_apply(w, i);
        log_trace_set(NULL);
    }
    batch_collect_items(b, w->config.domain);
    store_apply_end(w->config.store);
    SVC_ASSERT(batch_event_count(b) <= BATCH_EVENTS_MAX);
}

/* Prefetches, applies and persists the batch in b once. */
static int writer_attempt(struct writer *w)
{
    struct batch *b = w->batch;
    struct store *s = w->config.store;
    int64_t events_after = batch_seqs_committed(b)->event;
    if (w->config.applied_seq != NULL) {
        int64_t applied = w->config.applied_seq(w->config.committed_context);
        events_after = applied > events_after ? applied : events_after; /* the follower's */
    }
    int64_t t0 = clock_mono_us();
    w->state = WRITER_PREFETCHING;
    if (prefetch_batch(writer_scratch_of(w)->prefetch, s, w->config.domain, b, events_after) != 0) {
        atomic_fetch_add(&w->stats.store_errors[WRITER_STORE_ERROR_PREFETCH], 1);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int64_t t1 = clock_mono_us();
    writer_apply_all(w);
    int64_t t2 = clock_mono_us();
    w->state = WRITER_PERSISTING;
    /* A shared backend's transaction is open since the prefetch: always end it. */
    int rc = batch_has_rows(b) || store_is_shared(s) ? store_commit_batch(s, batch_rows(b)) : 0;
    int64_t t3 = clock_mono_us();
    if (rc != 0 && rc != STORE_COMMIT_RETRY) {
        atomic_fetch_add(&w->stats.store_errors[WRITER_STORE_ERROR_COMMIT], 1);
    }
    if (t3 - t0 >= WRITER_SLOW_BATCH_US) {
        log_warn("writer: slow batch of %zu commands: prefetch %lld us, apply %lld us, commit"
                 " %lld us",
                 batch_command_count(b), (long long)(t1 - t0), (long long)(t2 - t1),
                 (long long)(t3 - t2));
    }
    return rc;
}

/* ---- after the commit --------------------------------------------------------------------- */

/* The read model gets other instances' events (read by the prefetch), then the batch's own. */
static void writer_publish(struct writer *w, bool committed)
{
    struct batch *b = w->batch;
    w->state = WRITER_PUBLISHING;
    if (w->config.committed == NULL) {
        return;
    }
    const struct event *gap = NULL;
    size_t gap_count = batch_gap_count(b) > 0 ? batch_gap_decode(b, &gap) : 0;
    if (gap_count > 0) {
        w->config.committed(gap, gap_count, w->config.committed_context);
    }
    if (committed && batch_event_count(b) > 0) {
        w->config.committed(batch_events(b), batch_event_count(b), w->config.committed_context);
    }
}

/* Hands every command back, in queue order: ownership leaves the writer here. */
static void writer_reply_all(struct writer *w, struct command **commands, size_t count)
{
    const struct writer_scratch *scratch = writer_scratch_of(w);
    w->state = WRITER_REPLYING;
    for (size_t i = 0; i < count; i++) {
        enum writer_outcome outcome = scratch->outcomes[i];
        if (outcome == WRITER_OUTCOME_STORED_REPLAY || outcome == WRITER_OUTCOME_BATCH_REPLAY) {
            atomic_fetch_add_explicit(&w->stats.replays, 1, memory_order_relaxed);
        }
        const struct command *cmd = commands[i];
        SVC_ASSERT(cmd->reply_status >= 200);
        log_trace_set(cmd->trace_id[0] != '\0' ? cmd->trace_id : NULL);
        log_debug("writer: %s of %s answered %d%s", command_kind_name(cmd->kind), cmd->principal,
                  cmd->reply_status, cmd->reply_replayed ? " (a replay)" : "");
        log_trace_set(NULL); /* the reply hook hands cmd over: its trace_id goes with it */
        w->config.reply(commands[i], w->config.reply_context);
    }
    if (w->config.replies_done != NULL) {
        w->config.replies_done(w->config.reply_context);
    }
}

/* Counts a recovery when the store's session was made again since the last batch (by this
 * batch, or by a sweep or housekeeping in between). Before the replies, so that a client told
 * of this batch's commit finds the readers already told to reconnect. */
static void writer_note_recovery(struct writer *w)
{
    uint64_t sessions = store_session_count(w->config.store);
    SVC_ASSERT(sessions >= w->store_sessions_seen); /* a count: it only grows */
    if (sessions != w->store_sessions_seen) {
        w->store_sessions_seen = sessions;
        atomic_fetch_add(&w->storage_recoveries, 1);
    }
    SVC_ASSERT(w->store_sessions_seen == sessions);
}

/* Runs the batch until it commits, fails, or lost WRITER_COMMIT_ATTEMPTS_MAX races. */
static int writer_run_attempts(struct writer *w, struct command **commands, size_t count,
                               int64_t now_ms)
{
    int rc = 0;
    for (int attempt = 1;; attempt++) {
        memset(writer_scratch_of(w)->outcomes, 0, count * sizeof(enum writer_outcome));
        memset(writer_scratch_of(w)->stock_refusals, 0,
               sizeof writer_scratch_of(w)->stock_refusals);
        batch_reset(w->batch, commands, count, now_ms);
        rc = writer_attempt(w);
        if (rc != STORE_COMMIT_RETRY || attempt == WRITER_COMMIT_ATTEMPTS_MAX) {
            break;
        }
        writer_undo_batch(w); /* another instance won a race: read again, apply again */
        atomic_fetch_add_explicit(&w->stats.batch_retries, 1, memory_order_relaxed);
    }
    if (rc == STORE_COMMIT_RETRY) {
        atomic_fetch_add(&w->stats.store_errors[WRITER_STORE_ERROR_CONFLICT], 1);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return rc;
}

void writer_run_batch(struct writer *w, struct command **commands, size_t count)
{
    SVC_ASSERT(count <= BATCH_COMMANDS_MAX);
    SVC_ASSERT(writer_invariants_hold(w));
    SVC_TESTCASE(count == BATCH_COMMANDS_MAX);
    SVC_TESTCASE(count == 0);
    SVC_ASSERT(writer_batch_fit(w, commands, count) == count); /* the loop cuts batches */
    const char **trace_ids = writer_scratch_of(w)->trace_ids;
    for (size_t i = 0; i < count; i++) {
        trace_ids[i] = commands[i]->trace_id;
    }
    log_trace_set_batch(count > 0 ? trace_ids : NULL, count); /* section 4 at the top */
    int64_t started_us = clock_mono_us();
    atomic_store(&w->batch_started_ms, started_us / 1000 + 1); /* never 0 while in hand */
    int rc = writer_run_attempts(w, commands, count, w->config.wall_ms());
    int64_t commit_us = clock_mono_us() - started_us;
    if (rc == 0) {
        dom_commit(w->config.domain);
        batch_seqs_commit(w->batch);
        writer_record_committed(w);
        atomic_store(&w->storage_ok, true);
        int64_t seq = batch_seqs_committed(w->batch)->event;
        atomic_store_explicit(&w->acked_seq, seq, memory_order_release);
        if (w->config.durable != NULL && batch_event_count(w->batch) > 0) {
            w->config.durable(seq, w->config.committed_context);
        }
    } else {
        writer_fail_batch(w);
        atomic_store(&w->storage_ok, false);
    }
    if (count > 0) {
        writer_record_stats(w, count, commit_us);
    }
    writer_note_recovery(w);
    log_trace_set_batch(NULL, 0); /* the replies hand the commands, and their trace ids, over */
    writer_reply_all(w, commands, count);
    writer_publish(w, rc == 0);
    w->state = WRITER_IDLE;
    atomic_store(&w->batch_ended_ms, clock_mono_us() / 1000);
    atomic_store(&w->batch_started_ms, 0);
    SVC_ASSERT(writer_invariants_hold(w));
}

bool writer_stalled(const struct writer *w, size_t queue_depth, int64_t now_ms)
{
    SVC_ASSERT(now_ms >= 0);
    int64_t started_ms = atomic_load(&w->batch_started_ms);
    int64_t ended_ms = atomic_load(&w->batch_ended_ms);
    if (started_ms != 0) {
        return now_ms - started_ms > WRITER_STALL_MS;
    }
    SVC_ASSERT(ended_ms >= 0);
    return queue_depth > 0 && now_ms - ended_ms > WRITER_STALL_MS;
}

int64_t writer_acked_seq(struct writer *w)
{
    int64_t seq = atomic_load_explicit(&w->acked_seq, memory_order_acquire);
    SVC_ASSERT(seq >= 0);
    return seq;
}

/* ---- the thread --------------------------------------------------------------------------- */

void writer_housekeeping(struct writer *w)
{
    int64_t now_ms = w->config.wall_ms();
    SVC_ASSERT(w->state == WRITER_IDLE);
    if (now_ms < w->prune_due_ms) {
        return;
    }
    bool swept = false;
    int deleted = store_idem_prune(w->config.store, now_ms - w->config.idem_retention_ms,
                                   IDEM_PRUNE_ROWS_MAX, &swept);
    w->pruned_in_sweep += deleted > 0 ? (uint64_t)deleted : 0;
    if (deleted >= 0 && !swept) {
        w->prune_due_ms = now_ms; /* the sweep goes on at the next idle moment */
        return;
    }
    if (swept && w->pruned_in_sweep > 0) {
        log_info("writer: pruned %" PRIu64 " expired idempotency records", w->pruned_in_sweep);
    }
    w->pruned_in_sweep = swept ? 0 : w->pruned_in_sweep;
    w->prune_due_ms = now_ms + WRITER_PRUNE_INTERVAL_MS; /* swept, or storage failed */
}

/* Writes a snapshot of the read model when one is due (section 3 at the top). */
static void writer_snapshot(struct writer *w, bool final)
{
    SVC_ASSERT(w->state == WRITER_IDLE);
    SVC_ASSERT((w->config.snapshot == NULL) == (w->config.snapshot_saved == NULL));
    if (w->config.snapshot == NULL) {
        return;
    }
    struct row_snapshot row;
    int64_t keep_from_seq = 0;
    if (w->config.snapshot(w->config.committed_context, final, &row, &keep_from_seq) != 1) {
        return;
    }
    SVC_ASSERT(row.seq <= batch_seqs_committed(w->batch)->event ||
               store_is_shared(w->config.store));
    int64_t started_us = clock_mono_us();
    int rc = store_snapshot_write(w->config.store, &row, keep_from_seq);
    w->config.snapshot_saved(w->config.committed_context, &row, rc, clock_mono_us() - started_us);
}

/* How long the idle writer may sleep: until the next reservation expires or the next step of
 * an idempotency sweep under way, at most a second. */
static int writer_idle_wait_ms(struct writer *w)
{
    int64_t next = res_next_expiry(&w->config.domain->reservations);
    int64_t now = w->config.wall_ms();
    if (w->prune_due_ms <= now && next > now + WRITER_SWEEP_STEP_WAIT_MS) {
        next = now + WRITER_SWEEP_STEP_WAIT_MS;
    }
    if (atomic_load(&w->expiry_paused)) {
        return w->prune_due_ms <= now ? WRITER_SWEEP_STEP_WAIT_MS : WRITER_IDLE_WAIT_MS;
    }
    if (next <= now) {
        return 0;
    }
    return next - now < WRITER_IDLE_WAIT_MS ? (int)(next - now) : WRITER_IDLE_WAIT_MS;
}

static void *writer_loop(void *arg)
{
    svc_thread_name("writer", -1);
    struct writer *w = arg;
    struct command *commands[BATCH_COMMANDS_MAX];
    struct prefetch *p = writer_scratch_of(w)->prefetch;
    size_t carried = 0; /* commands popped but left for the next batch (row budget) */
    SVC_ASSERT(w->started);
    for (;;) {
        size_t count = carried + queue_pop_batch(w->config.queue, (void **)commands + carried,
                                                 BATCH_COMMANDS_MAX - carried);
        if (count > 0) {
            (void)prefetch_sweep(p, w->config.store, w->config.domain, w->config.wall_ms());
            size_t fit = writer_batch_fit(w, commands, count);
            writer_run_batch(w, commands, fit);
            store_batch_done(w->config.store);
            writer_snapshot(w, false);
            carried = count - fit;
            memmove(commands, commands + fit, carried * sizeof commands[0]);
            continue;
        }
        if (atomic_load(&w->stopping)) {
            break; /* the queue is drained: every accepted command got its reply */
        }
        int64_t now_ms = w->config.wall_ms();
        bool expiring = !atomic_load(&w->expiry_paused);
        if ((expiring && res_next_expiry(&w->config.domain->reservations) <= now_ms) ||
            prefetch_sweep(p, w->config.store, w->config.domain, now_ms)) {
            writer_run_batch(w, commands, 0); /* a batch of expiries only */
            continue;
        }
        writer_snapshot(w, false);
        writer_housekeeping(w);
        queue_wait(w->config.queue, writer_idle_wait_ms(w));
    }
    writer_snapshot(w, true); /* the next start replays nothing */
    return NULL;
}

int writer_start(struct writer *w)
{
    SVC_ASSERT(!w->started);
    w->started = true;
    atomic_store(&w->batch_ended_ms, clock_mono_us() / 1000); /* idle from here */
    int rc = pthread_create(&w->thread, NULL, writer_loop, w);
    if (rc != 0) {
        w->started = false;
        return -rc;
    }
    return 0;
}

void writer_stop(struct writer *w)
{
    if (!w->started) {
        return;
    }
    atomic_store(&w->stopping, true);
    queue_wake(w->config.queue);
    pthread_join(w->thread, NULL);
    w->started = false;
}
