/*
 * command.c - the idempotency fingerprint of a decoded command, and the names of the kinds
 * (for log lines). See command.h.
 *
 * The fingerprint is of what the command means, not of the bytes that carried it: two bodies
 * that differ only in key order, whitespace, escapes or an omitted default decode to the
 * same fields, so they fingerprint the same and the second is a replay, not a 422 (payment
 * APIs compare parameters the same way). Read queue.h next.
 */
#include "core/command.h"

#include <string.h>

#include "base/hash.h"
#include "base/svc_assert.h"

/* Bumped if the canonical form below ever changes meaning; folded in first. */
#define COMMAND_FINGERPRINT_FORM 1

/* Folds v as 8 little-endian bytes: the same value on every machine sharing a database. */
static uint64_t command_fold_int(uint64_t h, int64_t v)
{
    unsigned char bytes[8];
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++) {
        bytes[i] = (unsigned char)(u >> (8 * i));
    }
    return hash_fnv1a(h, bytes, sizeof bytes);
}

/* Folds a field with its terminator, so "ab","c" and "a","bc" differ. */
static uint64_t command_fold_str(uint64_t h, const char *s)
{
    SVC_ASSERT(s != NULL);
    return hash_fnv1a(h, s, strlen(s) + 1);
}

/* The lines: in order for an array (reservations, transfers), in any order for the object of
 * a reconciliation ({"sku": count}), where member order carries no meaning. */
static uint64_t command_fold_lines(uint64_t h, const struct command *cmd)
{
    const struct cmd_lines *lines = cmd->lines;
    if (lines == NULL) {
        return command_fold_int(h, -1);
    }
    SVC_ASSERT(lines->count <= CMD_LINES_MAX);
    h = command_fold_int(h, lines->count);
    uint64_t unordered = 0;
    for (uint32_t i = 0; i < lines->count; i++) {
        const struct cmd_line *line = &lines->items[i];
        if (cmd->kind == CMD_RECONCILE) {
            uint64_t one = command_fold_str(HASH_FNV_OFFSET, line->sku);
            unordered += command_fold_int(one, line->qty); /* commutative: order-free */
        } else {
            h = command_fold_str(h, line->sku);
            h = command_fold_int(h, line->qty);
        }
    }
    return command_fold_int(h, (int64_t)unordered);
}

uint64_t command_fingerprint(const struct command *cmd)
{
    SVC_ASSERT(cmd != NULL && cmd->has_idem_key);
    uint64_t h = command_fold_int(HASH_FNV_OFFSET, COMMAND_FINGERPRINT_FORM);
    h = command_fold_int(h, cmd->kind);
    h = command_fold_int(h, cmd->style); /* /buy_ticket is not /v1/purchase */
    h = command_fold_int(h, cmd->has_store);
    h = command_fold_str(h, cmd->store_id);
    h = command_fold_str(h, cmd->sku);
    h = command_fold_str(h, cmd->name);
    h = command_fold_str(h, cmd->customer_id);
    h = command_fold_str(h, cmd->reason);
    h = command_fold_str(h, cmd->to_store_id);
    h = command_fold_int(h, cmd->policy);
    h = command_fold_int(h, cmd->qty);
    h = command_fold_int(h, cmd->delta);
    h = command_fold_int(h, cmd->latency_ms);
    h = command_fold_int(h, cmd->initial_on_hand);
    h = command_fold_int(h, cmd->has_expected_version); /* If-Match is part of the request */
    h = command_fold_int(h, cmd->expected_version);
    h = command_fold_int(h, cmd->reservation_seq);
    h = command_fold_int(h, cmd->ttl_seconds);
    if (cmd->kind >= CMD_ORDER_CREATE) { /* older kinds keep their stored fingerprints */
        h = command_fold_int(h, cmd->order_seq);
    }
    return command_fold_lines(h, cmd);
}

const char *command_kind_name(enum cmd_kind kind)
{
    static const char *const names[] = {
        [CMD_STORE_CREATE] = "store_create",
        [CMD_PRODUCT_CREATE] = "product_create",
        [CMD_PURCHASE] = "purchase",
        [CMD_ADJUST] = "adjust",
        [CMD_TICKET_RESET] = "ticket_reset",
        [CMD_SET_ABSOLUTE] = "set_absolute",
        [CMD_RESERVE] = "reserve",
        [CMD_CONFIRM] = "confirm",
        [CMD_CANCEL] = "cancel",
        [CMD_TRANSFER] = "transfer",
        [CMD_RECONCILE] = "reconcile",
        [CMD_ORDER_CREATE] = "order_create",
        [CMD_ORDER_CANCEL] = "order_cancel",
        [CMD_ORDER_STEP] = "order_step",
        [CMD_INTAKE_DEAD_LETTER] = "intake_dead_letter",
    };
    _Static_assert(sizeof names / sizeof names[0] == CMD_INTAKE_DEAD_LETTER + 1,
                   "a name for every kind");
    SVC_ASSERT((size_t)kind < sizeof names / sizeof names[0]);
    SVC_ASSERT(names[kind] != NULL);
    return names[kind];
}
