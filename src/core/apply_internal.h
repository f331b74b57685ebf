/*
 * apply_internal.h - what the appliers share, and nothing else includes: one entry point per
 * command kind (apply.c dispatches to them) and the product creation that the seed-004 reset
 * reuses. The appliers sit below apply.c: they include this, never apply.h.
 */
#ifndef STOCKD_APPLY_INTERNAL_H
#define STOCKD_APPLY_INTERNAL_H

#include "core/batch.h"
#include "core/command.h"
#include "core/domain.h"
#include "core/outcome.h"

/* apply_catalog.c */
void apply_store_create(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out);
void apply_product_create(struct domain *d, struct batch *b, const struct command *cmd,
                          struct outcome *out);
/* Creates product sku in store_index (< 0: the lowest-stock store) with its ProductCreated
 * event; out is OUTCOME_PRODUCT (index: the item) or a refusal. */
void apply_new_product(struct domain *d, struct batch *b, const char *sku, const char *name,
                       int64_t initial_on_hand, int32_t store_index, struct outcome *out);

/* apply_stock.c */
void apply_purchase(struct domain *d, struct batch *b, const struct command *cmd,
                    struct outcome *out);
void apply_adjust(struct domain *d, struct batch *b, const struct command *cmd,
                  struct outcome *out);
void apply_ticket_reset(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out);
void apply_set_absolute(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out);
void apply_transfer(struct domain *d, struct batch *b, const struct command *cmd,
                    struct outcome *out);
void apply_reconcile(struct domain *d, struct batch *b, const struct command *cmd,
                     struct outcome *out);

/* apply_reservations.c; apply_expire_due (apply.c) sweeps the due ones. */
void apply_reserve(struct domain *d, struct batch *b, const struct command *cmd,
                   struct outcome *out);
void apply_confirm(struct domain *d, struct batch *b, const struct command *cmd,
                   struct outcome *out);
void apply_cancel(struct domain *d, struct batch *b, const struct command *cmd,
                  struct outcome *out);
/* Creates a reservation of cmd's lines (store by cmd or by availability) with its rows and
 * events, holding stock for order_seq when not 0 (then PENDING); NULL with the refusal in
 * out. */
struct reservation *apply_reservation_open(struct domain *d, struct batch *b,
                                           const struct command *cmd, int64_t order_seq,
                                           struct outcome *out);
/* The status of reservation reservation_seq: r's (the one in memory, or NULL), else what the
 * batch's prefetch said became of it; NULL when there is no such reservation. */
const char *apply_reservation_status(const struct batch *b, int64_t reservation_seq,
                                     const struct reservation *r);
/* Ends an ACTIVE reservation with status (stock events, its row and lifecycle event). */
void apply_reservation_end(struct domain *d, struct batch *b, struct reservation *r,
                           enum res_status status, const char *payment_ref, const char *reason);

/* apply_orders.c: checkout orders (issue 11) on top of the reservations. */
void apply_order_create(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out);
void apply_order_cancel(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out);
void apply_order_step(struct domain *d, struct batch *b, const struct command *cmd,
                      struct outcome *out);
/* The order whose hold r just expired becomes EXPIRED (its row and event). */
void apply_order_expired(struct domain *d, struct batch *b, const struct reservation *r);

#endif
