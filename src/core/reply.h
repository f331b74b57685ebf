/*
 * reply.h - the one place a command's outcome becomes the bytes a client gets back.
 *
 * reply_format writes the status, content type, body and Location of a command from its
 * outcome, in the command's style: the v1 contract (DESIGN.md bodies, problem+json errors) or
 * a seed's own shapes (seed 004's {success,message,remaining_stock}, 410 when sold out). The
 * writer stores those bytes as the idempotency record, so a replay sends them again as they
 * were (reply_replay), Location included, without looking inside. Called on the writer thread
 * only, between apply and persist. Read prefetch.h next.
 */
#ifndef STOCKD_REPLY_H
#define STOCKD_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#include "core/command.h"
#include "core/domain.h"
#include "core/outcome.h"

/* Formats o into cmd's reply fields (status, problem flag, body, Location). d gives the names
 * the outcome points at by index. cmd->reply_body must have been prepared. */
void reply_format(struct command *cmd, const struct outcome *o, const struct domain *d);

/* Sets a problem+json reply for err (no outcome: the writer's own refusals, e.g. a reused key
 * or storage trouble). */
void reply_problem(struct command *cmd, int err, const char *detail);

/* Copies an earlier answer (a stored record or an earlier command of the batch) into cmd as
 * a replay. false when body does not fit cmd's reply buffer (then a problem is set: only a
 * 64-bit fingerprint collision can get there). */
bool reply_replay(struct command *cmd, int status, bool problem, const char *body, size_t length,
                  const char *location);

#endif
