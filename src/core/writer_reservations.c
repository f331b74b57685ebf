/*
 * writer_reservations.c - reservations with a TTL: create (all lines or none, the store chosen
 * by availability when absent), confirm (the held units leave onHand), cancel and expiry (the
 * held units become available again).
 *
 * The TTL is a timer of the writer (reservations.h keeps a min-heap of expiry times): due
 * reservations expire at the start of every batch and, when idle, the writer wakes for the
 * next one. A confirm that arrives after expiresAt finds the reservation expired even if the
 * timer has not fired yet. Called on the writer thread only.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "core/writer_internal.h"

static void reservation_id(int64_t seq, char out[32])
{
    SVC_ASSERT(seq >= 1);
    int length = snprintf(out, 32, "res_%" PRId64, seq);
    SVC_ASSERT(length > 4 && length < 32);
}

/* Writes the reservation's members (no braces) into b: the reply and the events share them. */
static void reservation_members(const struct writer *w, const struct reservation *r, struct jbuf *b)
{
    const struct domain *d = w->config.domain;
    char id[32];
    reservation_id(r->seq, id);
    jbuf_kv_str(b, "reservationId", id);
    jbuf_kv_str(b, "status", res_status_name(r->status));
    jbuf_kv_str(b, "storeId", d->stores[r->store_index].id);
    jbuf_kv_str(b, "customerId", r->customer_id);
    jbuf_key(b, "lines");
    jbuf_lit(b, "[");
    for (uint32_t i = 0; i < r->line_count; i++) {
        jbuf_lit(b, i == 0 ? "{" : ",{");
        jbuf_kv_str(b, "sku", d->products[r->lines[i].product_index].sku);
        jbuf_kv_int(b, "qty", r->lines[i].qty);
        jbuf_lit(b, "}");
    }
    jbuf_lit(b, "]");
    jbuf_kv_time(b, "expiresAt", r->expires_at_ms);
    jbuf_kv_int(b, "expiresAtMs", r->expires_at_ms);
    jbuf_kv_int(b, "version", r->version);
}

static void reservation_reply(const struct writer *w, struct command *cmd, int status,
                              const struct reservation *r)
{
    struct jbuf body;
    writer_reply_begin(cmd, status, &body);
    reservation_members(w, r, &body);
    writer_reply_end(cmd, &body);
}

/* The reservation's row after this batch, and its lifecycle event. */
static void reservation_rows(struct writer *w, const struct reservation *r, const char *type,
                             const char *extra_key, const char *extra_value)
{
    struct writer_batch *b = w->batch;
    const struct domain *d = w->config.domain;
    SVC_ASSERT(b->rows.reservation_count < WRITER_RESERVATION_ROWS_MAX);
    b->reservations[b->rows.reservation_count++] =
        (struct row_reservation){r->seq,           d->stores[r->store_index].id,
                                 r->customer_id,   res_status_name(r->status),
                                 r->expires_at_ms, r->version,
                                 r->created_at_ms, b->now_ms};
    struct jbuf data;
    writer_arena_begin(b, &data);
    jbuf_lit(&data, "{");
    reservation_members(w, r, &data);
    if (extra_key != NULL) {
        jbuf_kv_str(&data, extra_key, extra_value);
    }
    jbuf_lit(&data, "}");
    writer_event(w, type, d->stores[r->store_index].id, NULL, writer_arena_finish(b, &data));
}

/* Moves every line of r: (on_hand, reserved) by (sign_on_hand * qty, sign_reserved * qty). */
static void reservation_move(struct writer *w, const struct reservation *r, const char *type,
                             int sign_on_hand, int sign_reserved, const char *reason)
{
    struct domain *d = w->config.domain;
    char id[32];
    reservation_id(r->seq, id);
    for (uint32_t i = 0; i < r->line_count; i++) {
        int32_t item = dom_item_find(d, r->store_index, r->lines[i].product_index);
        SVC_ASSERT(item >= 0); /* a reservation holds units of an existing item */
        int64_t qty = r->lines[i].qty;
        dom_item_move(d, (uint32_t)item, sign_on_hand * qty, sign_reserved * qty, w->batch->now_ms);
        char members[REASON_BYTES_MAX * 6 + 96];
        struct jbuf prefix;
        jbuf_init(&prefix, members, sizeof members);
        jbuf_kv_str(&prefix, "reservationId", id);
        jbuf_kv_int(&prefix, "qty", qty);
        if (reason != NULL) {
            jbuf_kv_str(&prefix, "reason", reason);
        }
        writer_stock_event(w, type, (uint32_t)item, sign_on_hand * qty, sign_reserved * qty,
                           &prefix);
    }
}

/* Ends r as EXPIRED: its units become available again. */
static void reservation_expire(struct writer *w, struct reservation *r)
{
    SVC_ASSERT(r->status == RES_ACTIVE);
    reservation_move(w, r, "StockReleased", 0, -1, "expired");
    r->status = RES_EXPIRED;
    r->version += 1;
    res_touch(&w->reservations, r);
    reservation_rows(w, r, "ReservationExpired", NULL, NULL);
}

void writer_expire_due(struct writer *w)
{
    struct writer_batch *b = w->batch;
    size_t budget_end = b->rows.event_count + WRITER_EXPIRY_EVENTS_MAX;
    while (b->rows.event_count + 1 + CMD_LINES_MAX <= budget_end) {
        struct reservation *r = res_pop_due(&w->reservations, b->now_ms);
        if (r == NULL) {
            break;
        }
        reservation_expire(w, r);
    }
    SVC_ASSERT(b->rows.event_count <= budget_end);
}

/* Resolves cmd's lines to products (404 on an unknown sku). Duplicate skus stay separate
 * lines; availability is checked on their sums by reserve_fits. */
static bool reserve_resolve(struct writer *w, struct command *cmd, struct res_line *out)
{
    const struct domain *d = w->config.domain;
    SVC_ASSERT(cmd->lines != NULL && cmd->lines->count >= 1);
    for (uint32_t i = 0; i < cmd->lines->count; i++) {
        int32_t product = dom_product_find(d, cmd->lines->items[i].sku);
        if (product < 0) {
            writer_reply_problem(cmd, SVC_EUNKNOWN_SKU, cmd->lines->items[i].sku, NULL, 0);
            return false;
        }
        out[i] = (struct res_line){(uint32_t)product, cmd->lines->items[i].qty};
    }
    return true;
}

/* The smallest slack (available - wanted) over the lines at store, or -1 if one is short;
 * *short_out names the first short line. */
static int64_t reserve_slack(const struct domain *d, uint32_t store, const struct res_line *lines,
                             uint32_t count, uint32_t *short_out)
{
    int64_t slack = INT64_MAX;
    for (uint32_t i = 0; i < count; i++) {
        int64_t wanted = 0;
        for (uint32_t j = 0; j < count; j++) {
            if (lines[j].product_index == lines[i].product_index) {
                wanted += lines[j].qty;
            }
        }
        int32_t item = dom_item_find(d, store, lines[i].product_index);
        int64_t available = item >= 0 ? dom_item_available(&d->items[item]) : 0;
        if (available < wanted) {
            *short_out = i;
            return -1;
        }
        slack = available - wanted < slack ? available - wanted : slack;
    }
    return slack;
}

/* The store for a reservation without storeId: the one with the most slack after it. */
static int32_t reserve_choose_store(const struct domain *d, const struct res_line *lines,
                                    uint32_t count)
{
    int32_t best = -1;
    int64_t best_slack = -1;
    for (uint32_t s = 0; s < d->store_count; s++) {
        uint32_t ignored = 0;
        int64_t slack = reserve_slack(d, s, lines, count, &ignored);
        if (slack > best_slack) {
            best = (int32_t)s;
            best_slack = slack;
        }
    }
    return best;
}

/* The line to name when no store can hold a reservation without storeId: the first line no
 * store has enough of, with the most any store has available; when each line fits somewhere
 * but no store fits them all, the first short line of the first store. */
static void reserve_short_anywhere(const struct domain *d, const struct res_line *lines,
                                   uint32_t count, uint32_t *line_out, int64_t *available_out)
{
    SVC_ASSERT(d->store_count >= 1);
    for (uint32_t i = 0; i < count; i++) {
        int64_t wanted = 0;
        for (uint32_t j = 0; j < count; j++) {
            if (lines[j].product_index == lines[i].product_index) {
                wanted += lines[j].qty;
            }
        }
        int64_t best = 0;
        for (uint32_t s = 0; s < d->store_count; s++) {
            int32_t item = dom_item_find(d, s, lines[i].product_index);
            int64_t available = item >= 0 ? dom_item_available(&d->items[item]) : 0;
            best = available > best ? available : best;
        }
        if (best < wanted) {
            *line_out = i;
            *available_out = best;
            return;
        }
    }
    int64_t slack = reserve_slack(d, 0, lines, count, line_out);
    SVC_ASSERT(slack < 0); /* no store fits, the first one neither */
    int32_t item = dom_item_find(d, 0, lines[*line_out].product_index);
    *available_out = item >= 0 ? dom_item_available(&d->items[item]) : 0;
}

/* Picks and checks the store; replies and returns -1 when the reservation cannot be made. */
static int32_t reserve_store(struct writer *w, struct command *cmd, const struct res_line *lines)
{
    const struct domain *d = w->config.domain;
    uint32_t count = cmd->lines->count;
    int32_t store =
        cmd->has_store ? dom_store_find(d, cmd->store_id) : reserve_choose_store(d, lines, count);
    if (cmd->has_store && store < 0) {
        writer_reply_problem(cmd, SVC_EUNKNOWN_STORE, cmd->store_id, NULL, 0);
        return -1;
    }
    uint32_t short_line = 0;
    int64_t available = 0;
    if (store < 0) {
        reserve_short_anywhere(d, lines, count, &short_line, &available);
    } else if (reserve_slack(d, (uint32_t)store, lines, count, &short_line) < 0) {
        int32_t item = dom_item_find(d, (uint32_t)store, lines[short_line].product_index);
        available = item >= 0 ? dom_item_available(&d->items[item]) : 0;
    } else {
        return store;
    }
    char detail[SKU_BYTES_MAX + 48];
    snprintf(detail, sizeof detail, "not enough available of %s to hold every line",
             cmd->lines->items[short_line].sku);
    writer_reply_problem(cmd, SVC_EINSUFFICIENT_STOCK, detail, "available", available);
    return -1;
}

static void reserve_line_rows(struct writer *w, const struct reservation *r)
{
    struct writer_batch *b = w->batch;
    const struct domain *d = w->config.domain;
    for (uint32_t i = 0; i < r->line_count; i++) {
        SVC_ASSERT(b->rows.reservation_line_count < WRITER_EVENTS_MAX);
        b->reservation_lines[b->rows.reservation_line_count++] = (struct row_reservation_line){
            r->seq, (int)i + 1, d->products[r->lines[i].product_index].sku, r->lines[i].qty};
    }
}

bool writer_apply_reserve(struct writer *w, struct command *cmd)
{
    struct res_line lines[CMD_LINES_MAX];
    if (!reserve_resolve(w, cmd, lines)) {
        return false;
    }
    int32_t store = reserve_store(w, cmd, lines);
    if (store < 0) {
        return false;
    }
    struct reservation *r = res_create(&w->reservations, w->reservation_seq + 1);
    if (r == NULL) {
        writer_reply_problem(cmd, SVC_ECAPACITY, "too many active reservations", NULL, 0);
        return false;
    }
    w->reservation_seq += 1;
    r->store_index = (uint32_t)store;
    r->line_count = cmd->lines->count;
    memcpy(r->lines, lines, r->line_count * sizeof lines[0]);
    r->created_at_ms = w->batch->now_ms;
    r->expires_at_ms = w->batch->now_ms + cmd->ttl_seconds * 1000;
    strcpy(r->customer_id, cmd->customer_id);
    r->created = true;
    res_touch(&w->reservations, r);
    res_schedule(&w->reservations, r);
    reservation_move(w, r, "StockReserved", 0, 1, NULL);
    reservation_rows(w, r, "ReservationCreated", NULL, NULL);
    reserve_line_rows(w, r);
    reservation_reply(w, cmd, 201, r);
    return true;
}

/* Replies why the reservation cmd names is not ACTIVE: 404, 409 expired or not active. */
static void reservation_refuse(struct writer *w, struct command *cmd, const struct reservation *r)
{
    char status[16];
    int64_t version = 0;
    if (r != NULL) {
        snprintf(status, sizeof status, "%s", res_status_name(r->status));
    } else {
        int rc = store_reservation_status(w->config.store, cmd->reservation_seq, status, &version);
        if (rc < 0) {
            writer_reply_problem(cmd, SVC_ESTORAGE_UNAVAILABLE, NULL, NULL, 0);
            return;
        }
        if (rc == 0) {
            writer_reply_problem(cmd, SVC_EUNKNOWN_RESERVATION, "no reservation with this id", NULL,
                                 0);
            return;
        }
    }
    if (strcmp(status, "EXPIRED") == 0) {
        writer_reply_problem(cmd, SVC_ERESERVATION_EXPIRED, "the reservation expired", NULL, 0);
        return;
    }
    char detail[64];
    snprintf(detail, sizeof detail, "the reservation is %s", status);
    writer_reply_problem(cmd, SVC_ERESERVATION_NOT_ACTIVE, detail, NULL, 0);
}

/* The ACTIVE reservation cmd names, or NULL with the reply set. One past its expiry is
 * expired first, which changes state: *changed tells the caller. */
static struct reservation *reservation_target(struct writer *w, struct command *cmd, bool *changed)
{
    SVC_ASSERT(cmd->reservation_seq >= 1);
    *changed = false;
    struct reservation *r = res_find(&w->reservations, cmd->reservation_seq);
    if (r != NULL && r->status == RES_ACTIVE && r->expires_at_ms <= w->batch->now_ms) {
        reservation_expire(w, r);
        *changed = true;
    }
    if (r == NULL || r->status != RES_ACTIVE) {
        reservation_refuse(w, cmd, r);
        return NULL;
    }
    if (cmd->has_expected_version && cmd->expected_version != r->version) {
        writer_reply_problem(cmd, SVC_EVERSION_CONFLICT, "the reservation changed",
                             "currentVersion", r->version);
        return NULL;
    }
    return r;
}

bool writer_apply_confirm(struct writer *w, struct command *cmd)
{
    bool changed = false;
    struct reservation *r = reservation_target(w, cmd, &changed);
    if (r == NULL) {
        return changed;
    }
    reservation_move(w, r, "StockCommitted", -1, -1, NULL);
    r->status = RES_CONFIRMED;
    r->version += 1;
    res_touch(&w->reservations, r);
    reservation_rows(w, r, "ReservationConfirmed", cmd->reason[0] ? "paymentRef" : NULL,
                     cmd->reason);
    reservation_reply(w, cmd, 200, r);
    return true;
}

bool writer_apply_cancel(struct writer *w, struct command *cmd)
{
    bool changed = false;
    struct reservation *r = reservation_target(w, cmd, &changed);
    if (r == NULL) {
        return changed;
    }
    reservation_move(w, r, "StockReleased", 0, -1, cmd->reason);
    r->status = RES_CANCELLED;
    r->version += 1;
    res_touch(&w->reservations, r);
    reservation_rows(w, r, "ReservationCancelled", "reason", cmd->reason);
    reservation_reply(w, cmd, 200, r);
    return true;
}

int writer_load_reservation(void *context, int64_t seq, const char *store_id,
                            const char *customer_id, int64_t expires_at_ms, int64_t version,
                            int64_t created_at_ms)
{
    struct writer *w = context;
    int32_t store = dom_store_find(w->config.domain, store_id);
    if (store < 0 || seq < 1 || version < 1 || strlen(customer_id) > CUSTOMER_ID_BYTES_MAX) {
        return SVC_EVALIDATION; /* foreign keys and CHECKs make this unreachable */
    }
    struct reservation *r = res_create(&w->reservations, seq);
    if (r == NULL) {
        return SVC_ECAPACITY;
    }
    r->store_index = (uint32_t)store;
    r->expires_at_ms = expires_at_ms;
    r->created_at_ms = created_at_ms;
    r->version = version;
    strcpy(r->customer_id, customer_id);
    res_schedule(&w->reservations, r);
    return 0;
}

int writer_load_reservation_line(void *context, int64_t seq, const char *sku, int64_t qty)
{
    struct writer *w = context;
    struct reservation *r = res_find(&w->reservations, seq);
    int32_t product = dom_product_find(w->config.domain, sku);
    if (r == NULL || product < 0 || qty < 1 || r->line_count == CMD_LINES_MAX) {
        return SVC_EVALIDATION;
    }
    r->lines[r->line_count++] = (struct res_line){(uint32_t)product, qty};
    return 0;
}
