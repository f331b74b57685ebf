/*
 * reservations.c - see reservations.h.
 */
#include "core/reservations.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/hash.h"
#include "base/capacity.h"
#include "base/svc_assert.h"

/* Lazy heap entries: at most two per slot. */
#define RES_HEAP_MAX(t) (2 * (t)->slots_max)

int res_init(struct res_table *t, uint32_t slots_max)
{
    SVC_ASSERT(slots_max >= 1 && slots_max <= CAPACITY_RESERVATIONS_LIMIT);
    memset(t, 0, sizeof *t);
    t->slots_max = slots_max;
    t->index_slots = capacity_hash_slots(slots_max);
    t->slots = calloc(t->slots_max, sizeof *t->slots);
    t->free_slots = calloc(t->slots_max, sizeof *t->free_slots);
    t->index = calloc(t->index_slots, sizeof *t->index);
    t->heap = calloc(RES_HEAP_MAX(t), sizeof *t->heap);
    t->touched = calloc(t->slots_max, sizeof *t->touched);
    if (!t->slots || !t->free_slots || !t->index || !t->heap || !t->touched) {
        res_deinit(t);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < t->slots_max; i++) {
        t->free_slots[i] = t->slots_max - 1 - i;
    }
    t->free_count = t->slots_max;
    SVC_ASSERT(t->heap_count == 0 && t->touched_count == 0);
    return 0;
}

void res_deinit(struct res_table *t)
{
    free(t->slots);
    free(t->free_slots);
    free(t->index);
    free(t->heap);
    free(t->touched);
    memset(t, 0, sizeof *t);
}

static uint32_t res_home(const struct res_table *t, int64_t seq)
{
    uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, &seq, sizeof seq);
    return (uint32_t)(h & (t->index_slots - 1));
}

/* The index position holding seq, or of the empty entry ending its probe. */
static uint32_t res_probe(const struct res_table *t, int64_t seq, bool *found)
{
    uint32_t pos = res_home(t, seq);
    for (uint32_t probes = 0; probes < t->index_slots; probes++) {
        int32_t entry = t->index[pos];
        if (entry == 0) {
            *found = false;
            return pos;
        }
        if (t->slots[entry - 1].seq == seq) {
            *found = true;
            return pos;
        }
        pos = (pos + 1) & (t->index_slots - 1);
    }
    SVC_UNREACHABLE(); /* load <= 0.5 */
}

struct reservation *res_find(const struct res_table *t, int64_t seq)
{
    SVC_ASSERT(seq >= 1);
    bool found = false;
    uint32_t pos = res_probe(t, seq, &found);
    return found ? &t->slots[t->index[pos] - 1] : NULL;
}

struct reservation *res_create(struct res_table *t, int64_t seq)
{
    SVC_ASSERT(seq >= 1);
    bool found = false;
    uint32_t pos = res_probe(t, seq, &found);
    SVC_ASSERT(!found);
    if (t->free_count == 0) {
        return NULL;
    }
    uint32_t slot = t->free_slots[--t->free_count];
    struct reservation *r = &t->slots[slot];
    SVC_ASSERT(r->seq == 0);
    memset(r, 0, offsetof(struct reservation, lines));
    r->seq = seq;
    r->status = RES_ACTIVE;
    r->version = 1;
    t->index[pos] = (int32_t)slot + 1;
    return r;
}

/* Deletes pos from the linear-probing index, shifting later entries back (no tombstones). */
static void res_index_delete(struct res_table *t, uint32_t pos)
{
    uint32_t hole = pos;
    uint32_t next = (pos + 1) & (t->index_slots - 1);
    while (t->index[next] != 0) {
        uint32_t home = res_home(t, t->slots[t->index[next] - 1].seq);
        /* Move next into the hole unless its home lies cyclically in (hole, next]. */
        bool stays = hole < next ? (home > hole && home <= next) : (home > hole || home <= next);
        if (!stays) {
            t->index[hole] = t->index[next];
            hole = next;
        }
        next = (next + 1) & (t->index_slots - 1);
    }
    t->index[hole] = 0;
}

static void res_free(struct res_table *t, struct reservation *r)
{
    bool found = false;
    uint32_t pos = res_probe(t, r->seq, &found);
    SVC_ASSERT(found);
    res_index_delete(t, pos);
    r->seq = 0;
    SVC_ASSERT(t->free_count < t->slots_max);
    t->free_slots[t->free_count++] = (uint32_t)(r - t->slots);
}

static void res_heap_swap(struct res_heap_entry *a, struct res_heap_entry *b)
{
    struct res_heap_entry tmp = *a;
    *a = *b;
    *b = tmp;
}

/* Moves heap[i] down until neither child is earlier. */
static void res_heap_sift_down(struct res_table *t, uint32_t i)
{
    for (;;) {
        uint32_t smallest = i;
        uint32_t left = 2 * i + 1;
        uint32_t right = left + 1;
        if (left < t->heap_count && t->heap[left].expires_at_ms < t->heap[smallest].expires_at_ms) {
            smallest = left;
        }
        if (right < t->heap_count &&
            t->heap[right].expires_at_ms < t->heap[smallest].expires_at_ms) {
            smallest = right;
        }
        if (smallest == i) {
            break;
        }
        res_heap_swap(&t->heap[i], &t->heap[smallest]);
        i = smallest;
    }
}

/* Rebuilds the heap from the ACTIVE slots: one entry each, every stale entry gone. Stale
 * entries leave only when they reach the top, so a long-lived reservation at the top lets
 * the entries of confirmed or cancelled ones behind it pile up until the heap is full. */
static void res_heap_rebuild(struct res_table *t)
{
    t->heap_count = 0;
    for (uint32_t s = 0; s < t->slots_max; s++) {
        const struct reservation *r = &t->slots[s];
        if (r->seq != 0 && r->status == RES_ACTIVE) {
            t->heap[t->heap_count++] = (struct res_heap_entry){r->expires_at_ms, r->seq};
        }
    }
    SVC_ASSERT(t->heap_count <= t->slots_max);
    for (uint32_t i = t->heap_count / 2; i > 0; i--) {
        res_heap_sift_down(t, i - 1);
    }
}

void res_schedule(struct res_table *t, const struct reservation *r)
{
    SVC_ASSERT(r->status == RES_ACTIVE);
    if (t->heap_count == RES_HEAP_MAX(t)) {
        /* Full of stale entries. Dropping r's entry would leave it ACTIVE forever: rebuild,
         * which schedules r too (it is an ACTIVE slot). At most once per
         * slots_max pushes, as at most that many entries survive. */
        SVC_ASSERT(r->seq >= 1 && r >= t->slots && r < t->slots + t->slots_max);
        res_heap_rebuild(t);
        return;
    }
    uint32_t i = t->heap_count++;
    t->heap[i] = (struct res_heap_entry){r->expires_at_ms, r->seq};
    while (i > 0 && t->heap[(i - 1) / 2].expires_at_ms > t->heap[i].expires_at_ms) {
        res_heap_swap(&t->heap[(i - 1) / 2], &t->heap[i]);
        i = (i - 1) / 2;
    }
}

static void res_heap_pop(struct res_table *t)
{
    SVC_ASSERT(t->heap_count > 0);
    t->heap[0] = t->heap[--t->heap_count];
    res_heap_sift_down(t, 0);
}

/* True when the heap top names an ACTIVE reservation with that very expiry. */
static bool res_heap_top_live(struct res_table *t)
{
    const struct res_heap_entry *top = &t->heap[0];
    struct reservation *r = res_find(t, top->seq);
    return r != NULL && r->status == RES_ACTIVE && r->expires_at_ms == top->expires_at_ms;
}

int64_t res_next_expiry(struct res_table *t)
{
    while (t->heap_count > 0 && !res_heap_top_live(t)) {
        res_heap_pop(t);
    }
    return t->heap_count > 0 ? t->heap[0].expires_at_ms : INT64_MAX;
}

struct reservation *res_pop_due(struct res_table *t, int64_t now_ms)
{
    if (res_next_expiry(t) > now_ms || t->heap_count == 0) {
        return NULL; /* INT64_MAX means nothing scheduled, even at now_ms INT64_MAX */
    }
    struct reservation *r = res_find(t, t->heap[0].seq);
    SVC_ASSERT(r != NULL && r->status == RES_ACTIVE);
    res_heap_pop(t);
    return r;
}

static void res_due_visit(const struct res_table *t, uint32_t i, int64_t now_ms, int64_t *out,
                          uint32_t max, uint32_t *n)
{
    if (i >= t->heap_count || t->heap[i].expires_at_ms > now_ms || *n == max) {
        return; /* a heap: nothing below a later entry is due */
    }
    out[(*n)++] = t->heap[i].seq;
    res_due_visit(t, 2 * i + 1, now_ms, out, max, n);
    res_due_visit(t, 2 * i + 2, now_ms, out, max, n);
}

uint32_t res_due_seqs(const struct res_table *t, int64_t now_ms, int64_t *out, uint32_t max)
{
    uint32_t n = 0;
    res_due_visit(t, 0, now_ms, out, max, &n); /* depth: log2 of the heap, about 15 */
    SVC_ASSERT(n <= max);
    return n;
}

void res_touch(struct res_table *t, struct reservation *r)
{
    if (!r->touched) {
        r->touched = true;
        r->saved =
            (struct res_order_saved){r->order_state, r->pay_attempts, r->expires_at_ms, r->version};
        SVC_ASSERT(t->touched_count < t->slots_max);
        t->touched[t->touched_count++] = (uint32_t)(r - t->slots);
    }
}

void res_commit(struct res_table *t)
{
    for (uint32_t k = 0; k < t->touched_count; k++) {
        struct reservation *r = &t->slots[t->touched[k]];
        SVC_ASSERT(r->touched && r->seq >= 1);
        r->touched = false;
        r->created = false;
        r->loading = false;
        if (r->status != RES_ACTIVE) {
            res_free(t, r);
        }
    }
    t->touched_count = 0;
}

void res_rollback(struct res_table *t)
{
    for (uint32_t k = t->touched_count; k > 0; k--) {
        struct reservation *r = &t->slots[t->touched[k - 1]];
        SVC_ASSERT(r->touched && r->seq >= 1);
        r->touched = false;
        r->loading = false;
        if (r->created) {
            r->created = false;
            res_free(t, r);
            continue;
        }
        bool rescheduled = r->status != RES_ACTIVE || r->expires_at_ms != r->saved.expires_at_ms;
        /* The writer touches a reservation before it changes it, so saved.version is the one
         * before the batch; one touched only after its end (the version already moved) goes
         * one step back: ending is a single step. */
        bool saved_before = r->saved.version < r->version;
        if (r->status != RES_ACTIVE) {
            r->status = RES_ACTIVE;
            r->version = saved_before ? r->saved.version : r->version - 1;
        } else {
            r->version = r->saved.version;
        }
        /* An order's steps change the reservation without ending it (res_order_saved). */
        r->order_state = r->saved.order_state;
        r->pay_attempts = r->saved.pay_attempts;
        r->expires_at_ms = r->saved.expires_at_ms;
        if (rescheduled) {
            res_schedule(t, r);
        }
    }
    t->touched_count = 0;
}

uint32_t res_count(const struct res_table *t)
{
    return t->slots_max - t->free_count;
}

const char *res_status_name(enum res_status status)
{
    switch (status) {
    case RES_ACTIVE: return "ACTIVE";
    case RES_CONFIRMED: return "CONFIRMED";
    case RES_CANCELLED: return "CANCELLED";
    case RES_EXPIRED: return "EXPIRED";
    }
    SVC_UNREACHABLE();
}

const char *res_order_state_name(enum res_order_state state)
{
    switch (state) {
    case RES_ORDER_NONE: return NULL;
    case RES_ORDER_PENDING: return "PENDING";
    case RES_ORDER_CONFIRMED: return "CONFIRMED";
    case RES_ORDER_PAYING: return "PAYING";
    }
    SVC_UNREACHABLE();
}

int res_order_state_parse(const char *text, enum res_order_state *out)
{
    SVC_ASSERT(out != NULL);
    for (int s = RES_ORDER_PENDING; s <= RES_ORDER_PAYING; s++) {
        if (text != NULL && strcmp(text, res_order_state_name((enum res_order_state)s)) == 0) {
            *out = (enum res_order_state)s;
            return 0;
        }
    }
    return SVC_EVALIDATION;
}
