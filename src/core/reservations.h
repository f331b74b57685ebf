/*
 * reservations.h - the ACTIVE reservations, held by the writer in memory.
 *
 * A fixed table of slots (as many as --max-reservations) with their lines, an id index (open
 * addressing on res_<seq>), and a min-heap of expiry times that drives the writer's TTL timer
 * (no scan of a table). Heap entries are lazy: an entry whose reservation is gone or whose
 * time changed is skipped when it surfaces, and a heap full of them is rebuilt from the ACTIVE
 * slots. The domain owns the table (core/domain.h) and keeps item.reserved equal to the sum of
 * the ACTIVE lines; only the writer thread touches it, and the read model learns about
 * reservations from events. Read events.h next.
 */
#ifndef STOCKD_RESERVATIONS_H
#define STOCKD_RESERVATIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "base/svc_limits.h"

enum res_status {
    RES_ACTIVE = 0,
    RES_CONFIRMED,
    RES_CANCELLED,
    RES_EXPIRED,
};

/* The state of the checkout order a reservation holds stock for (issue 11): an order lives in
 * memory exactly while its reservation is ACTIVE, so the writer keeps it on the reservation.
 * PAYING is CONFIRMED with a charge in doubt: the reservation's expiry is then suspended
 * (RES_EXPIRES_NEVER) until the payment ends. Stored in reservations.order_status. */
enum res_order_state {
    RES_ORDER_NONE = 0, /* a plain reservation (POST /v1/reservations) */
    RES_ORDER_PENDING,
    RES_ORDER_CONFIRMED,
    RES_ORDER_PAYING,
};

/* The expiry of a reservation whose order has a charge in doubt: never (9999-12-31). */
#define RES_EXPIRES_NEVER INT64_C(253402300799000)

/* What a batch may change of an order reservation without ending it, as it was before the
 * batch's first change (res_rollback puts it back). */
struct res_order_saved {
    enum res_order_state order_state;
    int32_t pay_attempts;
    int64_t expires_at_ms;
    int64_t version;
};

struct res_line {
    uint32_t product_index;
    int64_t qty;
};

struct reservation {
    int64_t seq;            /* res_<seq>; 0 marks a free slot */
    enum res_status status; /* ACTIVE, or its final status until the batch commits */
    uint32_t store_index;
    uint32_t line_count;
    int64_t expires_at_ms;
    int64_t created_at_ms;
    int64_t version; /* 1 when created, +1 on every change */
    bool touched;    /* changed by the current batch (listed in touched[]) */
    bool created;    /* created by the current batch */
    bool loading;    /* read from storage by the current load or prefetch: lines to come */
    char customer_id[CUSTOMER_ID_BYTES_MAX + 1];
    int64_t order_seq;                /* ord_<seq> this reservation holds stock for, or 0 */
    enum res_order_state order_state; /* RES_ORDER_NONE when order_seq is 0 */
    int32_t pay_attempts;             /* charges started for the order (PAYING) */
    struct res_order_saved saved;     /* before the current batch (valid while touched) */
    struct res_line lines[CMD_LINES_MAX];
};

struct res_heap_entry {
    int64_t expires_at_ms;
    int64_t seq;
};

struct res_table {
    uint32_t slots_max;        /* ACTIVE at once (capacity.reservations) */
    uint32_t index_slots;      /* capacity_hash_slots(slots_max): a power of two */
    struct reservation *slots; /* slots_max, owned */
    uint32_t *free_slots;      /* stack of free slot indexes, owned */
    uint32_t free_count;
    int32_t *index;              /* index_slots of slot + 1 (0 empty), owned */
    struct res_heap_entry *heap; /* 2 * slots_max, owned */
    uint32_t heap_count;
    uint32_t *touched; /* slots changed by the current batch, owned */
    uint32_t touched_count;
};

/* Allocates the fixed tables for slots_max ACTIVE reservations (1..CAPACITY_RESERVATIONS_LIMIT).
 * 0 or -ENOMEM. */
int res_init(struct res_table *t, uint32_t slots_max);
void res_deinit(struct res_table *t);

/* The reservation res_<seq> if it is in memory (ACTIVE or finished in this batch), or NULL.
 * (Like strchr, a const table gives a mutable slot: the writer owns both.) */
struct reservation *res_find(const struct res_table *t, int64_t seq);

/* Takes a free slot for a new reservation seq and indexes it; NULL when full. The caller fills
 * the lines and times, then calls res_schedule. */
struct reservation *res_create(struct res_table *t, int64_t seq);

/* Pushes r's expiry onto the heap. */
void res_schedule(struct res_table *t, const struct reservation *r);

/* Writes the seqs of up to max heap entries due at now_ms into out (stale entries too: a
 * shared backend locks and re-reads them before the batch). Returns how many. */
uint32_t res_due_seqs(const struct res_table *t, int64_t now_ms, int64_t *out, uint32_t max);

/* Marks r as changed by the current batch (for commit and rollback). */
void res_touch(struct res_table *t, struct reservation *r);

/* The earliest scheduled expiry, or INT64_MAX when none. Stale entries are dropped. */
int64_t res_next_expiry(struct res_table *t);

/* Pops the earliest ACTIVE reservation due at now_ms, or NULL. */
struct reservation *res_pop_due(struct res_table *t, int64_t now_ms);

/* After a durable commit: frees the slots of reservations that left ACTIVE, clears marks. */
void res_commit(struct res_table *t);

/* After a failed commit: frees created slots, returns changed ones to ACTIVE at their prior
 * version and reschedules them. */
void res_rollback(struct res_table *t);

/* Number of ACTIVE or touched reservations in memory. */
uint32_t res_count(const struct res_table *t);

const char *res_status_name(enum res_status status);
/* The stored name of an order state ("PENDING", ...; NULL for RES_ORDER_NONE) and back (0 or
 * SVC_EVALIDATION). */
const char *res_order_state_name(enum res_order_state state);
int res_order_state_parse(const char *text, enum res_order_state *out);

#endif
