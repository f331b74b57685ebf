/*
 * test_command.c - the idempotency fingerprint of a decoded command (command.c): equal
 * commands fingerprint equal, every argument changes it, field boundaries count, a
 * reconciliation's lines are order-free while a reservation's are not, and the value of one
 * command is pinned, since stored records keep fingerprints across versions.
 *
 * The black-box side (a re-serialised body is a replay, another value a 422) is
 * tests/blackbox/test_idempotency.py. Read test_queue.c next.
 */
#include <string.h>

#include "test_helpers.h"

#include "core/command.h"

static struct cmd_lines lines_a;
static struct cmd_lines lines_b;

/* A keyed purchase, every unused field zeroed as http_command_alloc leaves it. */
static void purchase(struct command *cmd)
{
    memset(cmd, 0, sizeof *cmd);
    cmd->kind = CMD_PURCHASE;
    cmd->style = CMD_STYLE_V1;
    cmd->has_idem_key = true;
    strcpy(cmd->idem_key, "k-1");
    strcpy(cmd->principal, "alice");
    strcpy(cmd->sku, "SKU-1");
    strcpy(cmd->customer_id, "c-42");
    cmd->qty = 2;
    cmd->policy = DOM_POLICY_HIGHEST_AVAILABLE;
}

static void set_lines(struct cmd_lines *lines, const char *sku0, int64_t qty0, const char *sku1,
                      int64_t qty1)
{
    memset(lines, 0, sizeof *lines);
    lines->count = 2;
    strcpy(lines->items[0].sku, sku0);
    lines->items[0].qty = qty0;
    strcpy(lines->items[1].sku, sku1);
    lines->items[1].qty = qty1;
}

static void test_equal_commands(void **state)
{
    (void)state;
    static struct command a;
    static struct command b;
    purchase(&a);
    purchase(&b);
    ASSERT_EQ_UINT(command_fingerprint(&a), command_fingerprint(&b));
    strcpy(b.idem_key, "k-2"); /* the key and the principal name the record, not the request */
    strcpy(b.principal, "bob");
    b.queued_us = 12345;
    ASSERT_EQ_UINT(command_fingerprint(&a), command_fingerprint(&b));
}

/* One mutation per argument; each must move the fingerprint. */
static void mutate(struct command *cmd, int which)
{
    switch (which) {
    case 0: cmd->kind = CMD_ADJUST; break;
    case 1: cmd->style = CMD_STYLE_SEED004; break;
    case 2: cmd->has_store = true; break;
    case 3: strcpy(cmd->store_id, "S1"); break;
    case 4: strcpy(cmd->sku, "SKU-2"); break;
    case 5: strcpy(cmd->name, "n"); break;
    case 6: strcpy(cmd->customer_id, "c-43"); break;
    case 7: strcpy(cmd->reason, "r"); break;
    case 8: strcpy(cmd->to_store_id, "S2"); break;
    case 9: cmd->policy = DOM_POLICY_LOWEST_LATENCY; break;
    case 10: cmd->qty = 3; break;
    case 11: cmd->delta = -1; break;
    case 12: cmd->latency_ms = 5; break;
    case 13: cmd->initial_on_hand = 100; break;
    case 14: cmd->has_expected_version = true; break;
    case 15: cmd->expected_version = 7; break;
    case 16: cmd->reservation_seq = 1; break;
    case 17: cmd->ttl_seconds = 60; break;
    case 18:
        set_lines(&lines_a, "A", 1, "B", 2);
        cmd->lines = &lines_a;
        break;
    default: fail();
    }
}

static void test_every_argument_counts(void **state)
{
    (void)state;
    static struct command base;
    static struct command changed;
    purchase(&base);
    uint64_t want = command_fingerprint(&base);
    for (int which = 0; which <= 18; which++) {
        purchase(&changed);
        mutate(&changed, which);
        ASSERT_NE_UINT(command_fingerprint(&changed), want);
    }
}

static void test_field_boundaries(void **state)
{
    (void)state;
    static struct command a;
    static struct command b;
    purchase(&a);
    purchase(&b);
    strcpy(a.sku, "AB");
    strcpy(a.customer_id, "C");
    strcpy(b.sku, "A");
    strcpy(b.customer_id, "BC");
    ASSERT_NE_UINT(command_fingerprint(&a), command_fingerprint(&b));
}

static void test_line_order(void **state)
{
    (void)state;
    static struct command a;
    static struct command b;
    purchase(&a);
    purchase(&b);
    a.kind = b.kind = CMD_RECONCILE;
    set_lines(&lines_a, "A", 1, "B", 2);
    set_lines(&lines_b, "B", 2, "A", 1);
    a.lines = &lines_a;
    b.lines = &lines_b;
    /* {"A":1,"B":2} and {"B":2,"A":1}: one snapshot, whatever the member order. */
    ASSERT_EQ_UINT(command_fingerprint(&a), command_fingerprint(&b));
    set_lines(&lines_b, "A", 2, "B", 1);
    ASSERT_NE_UINT(command_fingerprint(&a), command_fingerprint(&b));
    a.kind = b.kind = CMD_RESERVE; /* an array: its order is the client's */
    set_lines(&lines_b, "B", 2, "A", 1);
    ASSERT_NE_UINT(command_fingerprint(&a), command_fingerprint(&b));
    b.lines = NULL;
    ASSERT_NE_UINT(command_fingerprint(&a), command_fingerprint(&b));
}

/* Records keep their fingerprint in the database for the retention time: a change of the
 * canonical form turns every retry across an upgrade into a 422. Change this value only
 * with COMMAND_FINGERPRINT_FORM and a way to match the old records. */
static void test_pinned_value(void **state)
{
    (void)state;
    static struct command a;
    purchase(&a);
    ASSERT_EQ_UINT(command_fingerprint(&a), 14884897395958025587ULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_commands),   cmocka_unit_test(test_every_argument_counts),
        cmocka_unit_test(test_field_boundaries), cmocka_unit_test(test_line_order),
        cmocka_unit_test(test_pinned_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
