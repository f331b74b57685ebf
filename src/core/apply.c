/*
 * apply.c - the dispatch of apply.h and the weight of a command. The decisions themselves are
 * in apply_catalog.c, apply_stock.c and apply_reservations.c.
 */
#include "core/apply.h"

#include <stddef.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "core/apply_internal.h"

/* A stream message the intake consumer could not decode (intake/intake_consume.h): its row in
 * the dead-letter table, keyed by its stream offset, with the message as it came (for a
 * replay), written with the consumer's offset past it (writer.c stores that for every intake
 * command). The command is refused (no event, no
 * state), so its answer stands only when the batch commits; the consumer then acks it. */
static void apply_intake_dead_letter(struct batch *b, const struct command *cmd,
                                     struct outcome *out)
{
    SVC_ASSERT(!cmd->has_idem_key && cmd->stage == CMD_STAGE_INTAKE && cmd->stream_offset >= 0);
    SVC_ASSERT(cmd->message != NULL);
    const struct cmd_message *m = cmd->message;
    SVC_ASSERT(m->body_length <= sizeof m->body);
    /* The message's parts point into the consumer's block, lent with the command until its
     * reply, which comes after the commit. */
    struct row_dead_letter row = {.stage = "commands",
                                  .error = batch_text(b, cmd->reason),
                                  .attempts = 1,
                                  .at_ms = batch_now_ms(b),
                                  .stream_offset = cmd->stream_offset,
                                  .message_id = m->id[0] != '\0' ? m->id : NULL,
                                  .message_type = m->type[0] != '\0' ? m->type : NULL,
                                  .message_principal =
                                      m->principal[0] != '\0' ? m->principal : NULL,
                                  .message_body = m->body_kept ? m->body : NULL,
                                  .message_body_length = m->body_kept ? m->body_length : 0};
    batch_add_dead_letter(b, &row);
    outcome_problem(out, SVC_EVALIDATION, "dead-lettered: %s", cmd->reason);
}

void apply_command(struct domain *d, struct batch *b, const struct command *cmd,
                   struct outcome *out)
{
    memset(out, 0, sizeof *out);
    size_t events_before = batch_event_count(b);
    switch (cmd->kind) {
    case CMD_STORE_CREATE: apply_store_create(d, b, cmd, out); break;
    case CMD_PRODUCT_CREATE: apply_product_create(d, b, cmd, out); break;
    case CMD_PURCHASE: apply_purchase(d, b, cmd, out); break;
    case CMD_ADJUST: apply_adjust(d, b, cmd, out); break;
    case CMD_TICKET_RESET: apply_ticket_reset(d, b, cmd, out); break;
    case CMD_SET_ABSOLUTE: apply_set_absolute(d, b, cmd, out); break;
    case CMD_RESERVE: apply_reserve(d, b, cmd, out); break;
    case CMD_CONFIRM: apply_confirm(d, b, cmd, out); break;
    case CMD_CANCEL: apply_cancel(d, b, cmd, out); break;
    case CMD_TRANSFER: apply_transfer(d, b, cmd, out); break;
    case CMD_RECONCILE: apply_reconcile(d, b, cmd, out); break;
    case CMD_ORDER_CREATE: apply_order_create(d, b, cmd, out); break;
    case CMD_ORDER_CANCEL: apply_order_cancel(d, b, cmd, out); break;
    case CMD_ORDER_STEP: apply_order_step(d, b, cmd, out); break;
    case CMD_INTAKE_DEAD_LETTER: apply_intake_dead_letter(b, cmd, out); break;
    default: SVC_UNREACHABLE();
    }
    /* A change always leaves an event; a refusal that changed nothing leaves none. */
    SVC_ASSERT(out->changed == (batch_event_count(b) > events_before));
    SVC_ASSERT(out->kind != OUTCOME_PROBLEM || out->problem.err < 0);
}

/* The sweep lives here, not in apply_reservations.c, so that an order's expiry (apply_orders.c)
 * is dispatched from above both and the orders stay the only ones calling into reservations. */
void apply_expire_due(struct domain *d, struct batch *b)
{
    SVC_ASSERT(d != NULL && b != NULL);
    size_t budget_end = batch_event_count(b) + BATCH_EXPIRY_EVENTS_MAX;
    /* Each: its lines, its own event and, for a checkout order's hold, the order's. */
    while (batch_event_count(b) + 2 + CMD_LINES_MAX <= budget_end) {
        struct reservation *r = res_pop_due(&d->reservations, batch_now_ms(b));
        if (r == NULL) {
            break;
        }
        SVC_ASSERT(r->order_state != RES_ORDER_PAYING); /* never due: RES_EXPIRES_NEVER */
        apply_reservation_end(d, b, r, RES_EXPIRED, NULL, "expired");
        if (r->order_seq != 0) {
            apply_order_expired(d, b, r);
        }
    }
    SVC_ASSERT(batch_event_count(b) <= budget_end);
}

size_t apply_command_weight(const struct domain *d, const struct command *cmd,
                            int64_t next_reservation_seq, bool shared)
{
    size_t lines = cmd->lines != NULL ? cmd->lines->count : 0;
    if (cmd->kind == CMD_CONFIRM || cmd->kind == CMD_CANCEL || cmd->kind == CMD_ORDER_CANCEL ||
        cmd->kind == CMD_ORDER_STEP) {
        /* Ending a reservation makes one stock event per line of the reservation, which the
         * command does not carry: count its lines. One not in memory has ended (no events),
         * unless its id is still to come (an earlier command of the batch may create it) or
         * another instance holds it. */
        SVC_ASSERT(lines == 0 && cmd->reservation_seq >= 1);
        const struct reservation *r = res_find(&d->reservations, cmd->reservation_seq);
        bool may_exist = cmd->reservation_seq >= next_reservation_seq || shared;
        lines = r != NULL ? r->line_count : may_exist ? CMD_LINES_MAX : 0;
    }
    SVC_ASSERT(lines <= CMD_LINES_MAX);
    /* A transfer line makes two stock events, others at most one; a checkout order's command
     * adds the order's event to the reservation's (2 + lines <= 2 + 2 * lines for lines >= 1;
     * a step that ends nothing makes one). */
    return 2 + 2 * lines;
}
