/*
 * outcome.h - what deciding one command came to: a typed result, before any byte of a reply.
 *
 * The appliers (core/apply_*.c) return an outcome and never format a body; the reply module
 * (core/reply.h) turns an outcome into the bytes of the command's style (the v1 contract, the
 * seed shapes). Keeping the decision apart from its spelling is what lets a new command or a
 * new client shape touch one side only. Read reply.h next.
 */
#ifndef STOCKD_OUTCOME_H
#define STOCKD_OUTCOME_H

#include <stdbool.h>
#include <stdint.h>

#include "core/reservations.h"

enum outcome_kind {
    OUTCOME_PROBLEM = 0,    /* refused: problem below */
    OUTCOME_STORE,          /* a store was created: index */
    OUTCOME_PRODUCT,        /* a product was created: index is its first item */
    OUTCOME_PURCHASE,       /* a sale: index is the item, order_seq, available */
    OUTCOME_ITEM,           /* a stock item changed: index */
    OUTCOME_TICKET_RESET,   /* seed 004's reset: available is the new level */
    OUTCOME_RESERVATION,    /* a reservation created or ended: reservation, created */
    OUTCOME_TRANSFER,       /* a transfer: id (the lines are the command's) */
    OUTCOME_RECONCILIATION, /* a reconciliation: id, adjustments */
    OUTCOME_ORDER,          /* a checkout order: reservation, order_seq, order_status, created */
};

/* Longest problem detail an applier writes (a sku or a store id with a sentence). */
#define OUTCOME_DETAIL_BYTES_MAX 160

struct outcome_problem {
    int err; /* an svc_err */
    char detail[OUTCOME_DETAIL_BYTES_MAX];
    const char *extra_key; /* one integer member of the problem, or NULL */
    int64_t extra_value;
};

/* One counted line of a reconciliation, in the command's order. */
struct outcome_adjustment {
    uint32_t product_index;
    int64_t before;
    int64_t after;
    int64_t delta;
};

struct outcome {
    enum outcome_kind kind;
    bool changed; /* state changed (rows were added); a refusal may have changed state too: a
                   * confirm that found its reservation past due expired it first */
    struct outcome_problem problem;
    uint32_t index; /* store or item index, by kind */
    int64_t order_seq;
    int64_t available;
    const struct reservation *reservation;        /* valid until the batch commits */
    bool created;                                 /* the reservation is new (201) */
    const char *order_status;                     /* OUTCOME_ORDER: its status after it */
    char id[32];                                  /* trf_<seq>, rec_<seq> */
    const struct outcome_adjustment *adjustments; /* the batch's arena */
    uint32_t adjustment_count;
};

/* Sets o to a refusal with err and a detail (printf format; may be NULL), keeping o->changed. */
void outcome_problem(struct outcome *o, int err, const char *detail_format, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds the problem's integer member (available, currentVersion, reserved). */
void outcome_problem_extra(struct outcome *o, const char *key, int64_t value);

#endif
