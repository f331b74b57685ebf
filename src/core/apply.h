/*
 * apply.h - deciding commands: the pure step of a batch.
 *
 * apply_command decides one command against the domain's working state and writes down what
 * it decided: the domain changes (core/domain.h), the rows and events of the batch
 * (core/batch.h) and a typed outcome (core/outcome.h) that the reply module spells. It calls no
 * storage at all: everything it may look at that memory does not hold was prefetched into the
 * batch before (a reservation that ended, core/prefetch.h). Idempotency is not decided here
 * either: the writer only calls apply for a command whose key is new.
 *
 * The appliers, one file per concern: apply_catalog.c (stores, products), apply_stock.c
 * (purchase, adjustments, set-absolute, transfers, reconciliations, the seed-004 reset),
 * apply_reservations.c (reservations and their expiry). Read batch.h for where their decisions
 * go, and outcome.h for what they return.
 */
#ifndef STOCKD_APPLY_H
#define STOCKD_APPLY_H

#include <stdbool.h>
#include <stddef.h>

#include "core/batch.h"
#include "core/command.h"
#include "core/domain.h"
#include "core/outcome.h"

/* Decides cmd: on success the domain and the batch hold its effects and out->changed is set;
 * a refusal leaves them as they were (out->kind OUTCOME_PROBLEM), except that a command naming
 * a reservation past its time expires it first (then out->changed is set too). */
void apply_command(struct domain *d, struct batch *b, const struct command *cmd,
                   struct outcome *out);

/* Expires the reservations due at the batch's time, as many as BATCH_EXPIRY_EVENTS_MAX
 * events allow (the rest in the next batch). Runs before the batch's commands, so that their
 * units compete for stock again. */
void apply_expire_due(struct domain *d, struct batch *b);

/* The most events cmd can append (its weight against BATCH_COMMAND_WEIGHT_MAX). A confirm or
 * cancel counts the lines of the reservation it names; one not in memory counts as the
 * largest unless it is known to have ended (next_reservation_seq: the first seq not yet
 * given; shared: another instance may hold it). */
size_t apply_command_weight(const struct domain *d, const struct command *cmd,
                            int64_t next_reservation_seq, bool shared);

#endif
