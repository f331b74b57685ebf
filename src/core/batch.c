/*
 * batch.c - see batch.h. Fixed arrays sized by the batch limits, three arenas (the batch's
 * texts, the prefetched records, other instances' events) and two open-addressing tables keyed
 * by (principal, idempotency key): the batch's own keys and the records the prefetch read.
 */
#include "core/batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/hash.h"
#include "base/svc_assert.h"

/* The events and rows of one batch and where their texts live. */
struct batch {
    struct command **commands; /* borrowed for the batch */
    size_t command_count;
    int64_t now_ms;
    struct batch_seqs working;
    struct batch_seqs committed;
    /* rows */
    struct row_store stores[BATCH_COMMANDS_MAX];
    struct row_product products[BATCH_COMMANDS_MAX];
    struct row_item items[BATCH_EVENTS_MAX];
    struct row_order orders[BATCH_COMMANDS_MAX];
    struct row_idem idems[BATCH_COMMANDS_MAX];
    struct row_event event_rows[BATCH_EVENTS_MAX];
    struct row_reservation reservations[BATCH_RESERVATION_ROWS_MAX];
    struct row_reservation_line reservation_lines[BATCH_EVENTS_MAX];
    struct row_order_step order_steps[BATCH_RESERVATION_ROWS_MAX];
    struct row_stage_offset offsets[CMD_STAGE_COUNT];
    struct row_dead_letter dead_letters[BATCH_RESERVATION_ROWS_MAX];
    struct store_batch rows;
    struct event events[BATCH_EVENTS_MAX];
    size_t event_count;
    /* the batch's texts and arrays */
    char *arena; /* BATCH_ARENA_BYTES, owned */
    size_t arena_used;
    /* batch-local idempotency keys: command index + 1, 0 = empty */
    int16_t idem_slots[BATCH_IDEM_SLOTS];
    uint32_t idem_used[BATCH_COMMANDS_MAX]; /* slots to clear at reset */
    uint32_t idem_used_count;
    /* prefetched records: record index + 1, 0 = empty */
    int16_t record_slots[BATCH_IDEM_SLOTS];
    struct batch_idem_record records[BATCH_COMMANDS_MAX];
    uint32_t record_count;
    char *record_text; /* BATCH_PREFETCH_BYTES, owned */
    size_t record_text_used;
    struct batch_ended_reservation ended[BATCH_NAMED_RESERVATIONS_MAX];
    uint32_t ended_count;
    /* the workers' lease tokens (batch_lease_fence) */
    bool lease_fenced;
    int64_t lease_tokens[CMD_STAGE_COUNT];
    /* other instances' events */
    struct row_event gap_rows[STORE_GAP_EVENTS_MAX];
    size_t gap_count;
    char *gap_text; /* BATCH_GAP_TEXT_BYTES, owned */
    size_t gap_text_used;
    struct event gap_events[STORE_GAP_EVENTS_MAX];
    char *gap_decoded; /* BATCH_GAP_TEXT_BYTES * 2, owned: the decoder's arena */
};

struct batch *batch_new(void)
{
    struct batch *b = calloc(1, sizeof *b);
    if (b == NULL) {
        return NULL;
    }
    b->arena = malloc(BATCH_ARENA_BYTES);
    b->record_text = malloc(BATCH_PREFETCH_BYTES);
    b->gap_text = malloc(BATCH_GAP_TEXT_BYTES);
    b->gap_decoded = malloc(2 * BATCH_GAP_TEXT_BYTES);
    if (!b->arena || !b->record_text || !b->gap_text || !b->gap_decoded) {
        batch_free(b);
        return NULL;
    }
    SVC_ASSERT(b->event_count == 0 && b->record_count == 0);
    return b;
}

void batch_free(struct batch *b)
{
    if (b != NULL) {
        free(b->arena);
        free(b->record_text);
        free(b->gap_text);
        free(b->gap_decoded);
        free(b);
    }
}

void batch_reset(struct batch *b, struct command **commands, size_t count, int64_t now_ms)
{
    SVC_ASSERT(count <= BATCH_COMMANDS_MAX);
    SVC_ASSERT(count == 0 || commands != NULL);
    for (uint32_t i = 0; i < b->idem_used_count; i++) {
        b->idem_slots[b->idem_used[i]] = 0;
    }
    b->idem_used_count = 0;
    if (b->record_count > 0) {
        memset(b->record_slots, 0, sizeof b->record_slots);
    }
    b->record_count = 0;
    b->record_text_used = 0;
    b->ended_count = 0;
    b->lease_fenced = false;
    memset(b->lease_tokens, 0, sizeof b->lease_tokens);
    b->gap_count = 0;
    b->gap_text_used = 0;
    memset(&b->rows, 0, sizeof b->rows);
    b->rows.stores = b->stores;
    b->rows.products = b->products;
    b->rows.items = b->items;
    b->rows.orders = b->orders;
    b->rows.idems = b->idems;
    b->rows.events = b->event_rows;
    b->rows.reservations = b->reservations;
    b->rows.reservation_lines = b->reservation_lines;
    b->rows.order_steps = b->order_steps;
    b->rows.offsets = b->offsets;
    b->rows.dead_letters = b->dead_letters;
    b->event_count = 0;
    b->commands = commands;
    b->command_count = count;
    b->arena_used = 0;
    b->now_ms = now_ms;
    b->working = b->committed;
}

int64_t batch_now_ms(const struct batch *b)
{
    SVC_ASSERT(b->now_ms > 0);
    return b->now_ms;
}

size_t batch_command_count(const struct batch *b)
{
    SVC_ASSERT(b->command_count <= BATCH_COMMANDS_MAX);
    return b->command_count;
}

struct command *batch_command(const struct batch *b, size_t index)
{
    SVC_ASSERT(index < b->command_count);
    SVC_ASSERT(b->commands[index] != NULL);
    return b->commands[index];
}

/* ---- sequences ---------------------------------------------------------------------------- */

void batch_seqs_set(struct batch *b, const struct batch_seqs *seqs)
{
    SVC_ASSERT(seqs->order >= 0 && seqs->event >= 0 && seqs->reservation >= 0);
    SVC_ASSERT(b->event_count == 0); /* between batches, or before this one applies */
    b->working = b->committed = *seqs;
}

const struct batch_seqs *batch_seqs_working(const struct batch *b)
{
    SVC_ASSERT(b->working.event >= b->committed.event);
    return &b->working;
}

const struct batch_seqs *batch_seqs_committed(const struct batch *b)
{
    SVC_ASSERT(b->working.order >= b->committed.order);
    return &b->committed;
}

void batch_seqs_commit(struct batch *b)
{
    SVC_ASSERT(b->working.reservation >= b->committed.reservation);
    b->committed = b->working;
}

void batch_seqs_rollback(struct batch *b)
{
    SVC_ASSERT(b->working.event >= b->committed.event);
    b->working = b->committed;
}

int64_t batch_next_order_seq(struct batch *b)
{
    SVC_ASSERT(b->working.order >= b->committed.order);
    return ++b->working.order;
}

int64_t batch_next_reservation_seq(struct batch *b)
{
    SVC_ASSERT(b->working.reservation >= b->committed.reservation);
    return ++b->working.reservation;
}

int64_t batch_peek_reservation_seq(const struct batch *b)
{
    SVC_ASSERT(b->working.reservation >= b->committed.reservation);
    return b->working.reservation + 1;
}

int64_t batch_peek_event_seq(const struct batch *b)
{
    SVC_ASSERT(b->working.event >= b->committed.event);
    return b->working.event + 1;
}

/* ---- arena -------------------------------------------------------------------------------- */

void batch_arena_begin(struct batch *b, struct jbuf *out)
{
    SVC_ASSERT(b->arena_used < BATCH_ARENA_BYTES);
    jbuf_init(out, b->arena + b->arena_used, BATCH_ARENA_BYTES - b->arena_used);
}

const char *batch_arena_finish(struct batch *b, struct jbuf *text)
{
    SVC_ASSERT(jbuf_ok(text)); /* the arena holds a full batch's worst-case payloads */
    SVC_ASSERT(text->data == b->arena + b->arena_used);
    b->arena_used += text->length + 1;
    SVC_ASSERT(b->arena_used <= BATCH_ARENA_BYTES);
    return text->data;
}

const char *batch_text(struct batch *b, const char *text)
{
    SVC_ASSERT(text != NULL);
    size_t n = strlen(text) + 1;
    SVC_ASSERT(n <= BATCH_ARENA_BYTES - b->arena_used);
    char *out = b->arena + b->arena_used;
    memcpy(out, text, n);
    b->arena_used += n;
    return out;
}

void *batch_arena_array(struct batch *b, size_t count, size_t size)
{
    size_t start = (b->arena_used + 7) & ~(size_t)7;
    SVC_ASSERT(start <= BATCH_ARENA_BYTES && count * size <= BATCH_ARENA_BYTES - start);
    b->arena_used = start + count * size;
    return b->arena + start;
}

/* ---- events ------------------------------------------------------------------------------- */

/* event_copy_strings' copier: strings already in the arena stay; others (a command's, gone
 * once its reply leaves; the domain's, cheap to copy) are copied. */
static const char *batch_keep_text(void *context, const char *text)
{
    struct batch *b = context;
    if (text >= b->arena && text < b->arena + BATCH_ARENA_BYTES) {
        return text;
    }
    return batch_text(b, text);
}

void batch_emit(struct batch *b, struct event *e)
{
    SVC_ASSERT(b->event_count < BATCH_EVENTS_MAX); /* writer_batch_fit keeps batches within */
    SVC_ASSERT(e->seq == 0 && e->data_json == NULL);
    event_copy_strings(e, batch_keep_text, b); /* the read model gets it after the replies */
    e->seq = ++b->working.event;
    e->occurred_at_ms = b->now_ms;
    struct jbuf data;
    batch_arena_begin(b, &data);
    event_encode(e, &data);
    e->data_json = batch_arena_finish(b, &data);
    b->events[b->event_count] = *e;
    event_row(&b->events[b->event_count], &b->event_rows[b->event_count]);
    b->event_count++;
    b->rows.event_count = b->event_count;
}

void batch_emit_stock(struct batch *b, struct event *e, const struct domain *d, uint32_t item_index,
                      int64_t delta, int64_t reserved_delta)
{
    SVC_ASSERT(event_type_is_stock(e->type));
    SVC_ASSERT(item_index < d->item_count);
    const struct dom_item *item = &d->items[item_index];
    e->store_id = d->stores[item->store_index].id;
    e->sku = d->products[item->product_index].sku;
    e->delta = delta;
    e->reserved_delta = reserved_delta;
    e->on_hand = item->on_hand;
    e->reserved = item->reserved;
    e->version = item->version;
    e->sold = item->sold;
    batch_emit(b, e);
}

size_t batch_event_count(const struct batch *b)
{
    SVC_ASSERT(b->event_count <= BATCH_EVENTS_MAX);
    return b->event_count;
}

const struct event *batch_events(const struct batch *b)
{
    SVC_ASSERT(b->rows.event_count == b->event_count);
    return b->events;
}

/* ---- rows --------------------------------------------------------------------------------- */

void batch_add_store(struct batch *b, const struct dom_store *store)
{
    SVC_ASSERT(b->rows.store_count < b->command_count);
    SVC_ASSERT(store->id[0] != '\0');
    b->stores[b->rows.store_count++] =
        (struct row_store){store->id, store->name, store->latency_ms, b->now_ms};
}

void batch_add_product(struct batch *b, const struct dom_product *product)
{
    SVC_ASSERT(b->rows.product_count < b->command_count);
    SVC_ASSERT(product->sku[0] != '\0');
    b->products[b->rows.product_count++] =
        (struct row_product){product->sku, product->name, b->now_ms};
}

void batch_add_order(struct batch *b, const struct row_order *order)
{
    SVC_ASSERT(b->rows.order_count < b->command_count);
    SVC_ASSERT(order->order_seq >= 1 && order->order_seq <= b->working.order);
    b->orders[b->rows.order_count++] = *order;
}

void batch_add_reservation(struct batch *b, const struct domain *d, const struct reservation *r,
                           bool with_lines)
{
    SVC_ASSERT(b->rows.reservation_count < BATCH_RESERVATION_ROWS_MAX);
    SVC_ASSERT(r->seq >= 1 && r->version >= 1);
    b->reservations[b->rows.reservation_count++] = (struct row_reservation){
        r->seq,           d->stores[r->store_index].id,
        r->customer_id,   res_status_name(r->status),
        r->expires_at_ms, r->version,
        r->created_at_ms, b->now_ms,
        r->order_seq,     r->status == RES_ACTIVE ? res_order_state_name(r->order_state) : NULL,
        r->pay_attempts};
    for (uint32_t i = 0; with_lines && i < r->line_count; i++) {
        SVC_ASSERT(b->rows.reservation_line_count < BATCH_EVENTS_MAX);
        b->reservation_lines[b->rows.reservation_line_count++] = (struct row_reservation_line){
            r->seq, (int)i + 1, d->products[r->lines[i].product_index].sku, r->lines[i].qty};
    }
}

void batch_add_idem(struct batch *b, const struct command *cmd)
{
    SVC_ASSERT(cmd->has_idem_key);
    SVC_ASSERT(b->rows.idem_count < b->command_count);
    b->idems[b->rows.idem_count++] = (struct row_idem){
        cmd->principal,     cmd->idem_key,
        cmd->fingerprint,   cmd->reply_status,
        cmd->reply_problem, cmd->reply_body,
        cmd->reply_length,  cmd->reply_location[0] != '\0' ? cmd->reply_location : NULL,
        b->now_ms};
}

void batch_collect_items(struct batch *b, const struct domain *d)
{
    SVC_ASSERT(d->undo_count <= b->event_count); /* every changed item made an event */
    for (uint32_t k = 0; k < d->undo_count; k++) {
        const struct dom_item *item = &d->items[d->undo[k].item_index];
        SVC_ASSERT(item->dirty && item->version >= 1);
        b->items[k] = (struct row_item){d->stores[item->store_index].id,
                                        d->products[item->product_index].sku,
                                        item->on_hand,
                                        item->reserved,
                                        item->version,
                                        item->sold,
                                        item->updated_at_ms};
    }
    b->rows.item_count = d->undo_count;
}

const struct store_batch *batch_rows(struct batch *b)
{
    SVC_ASSERT(b->rows.event_count == b->event_count);
    SVC_ASSERT(b->rows.item_count <= b->rows.event_count);
    return &b->rows;
}

bool batch_has_rows(const struct batch *b)
{
    const struct store_batch *r = &b->rows;
    return r->store_count + r->product_count + r->item_count + r->order_count + r->idem_count +
               r->event_count + r->reservation_count + r->order_step_count + r->offset_count +
               r->dead_letter_count >
           0;
}

void batch_add_order_step(struct batch *b, const struct row_order_step *step)
{
    SVC_ASSERT(b->rows.order_step_count < BATCH_RESERVATION_ROWS_MAX);
    SVC_ASSERT(step->order_seq >= 1 && step->order_seq <= b->working.order);
    b->order_steps[b->rows.order_step_count++] = *step;
}

void batch_add_dead_letter(struct batch *b, const struct row_dead_letter *row)
{
    SVC_ASSERT(b->rows.dead_letter_count < BATCH_RESERVATION_ROWS_MAX);
    SVC_ASSERT(row->stage != NULL);
    /* An order's (by order and hold), or a stream message's (order_seq 0: by stream offset). */
    SVC_ASSERT((row->order_seq >= 1 && row->reservation_seq >= 1) ||
               (row->order_seq == 0 && row->stream_offset >= 0 && !row->remove));
    SVC_ASSERT(row->remove || row->error != NULL);
    b->dead_letters[b->rows.dead_letter_count++] = *row;
}

void batch_stage_offset(struct batch *b, const char *stage, int64_t seq)
{
    SVC_ASSERT(seq <= b->committed.event); /* a stage consumes committed events only */
    batch_stream_offset(b, stage, seq);
}

void batch_stream_offset(struct batch *b, const char *stage, int64_t seq)
{
    SVC_ASSERT(stage != NULL && seq >= 1);
    for (size_t i = 0; i < b->rows.offset_count; i++) {
        if (strcmp(b->offsets[i].stage, stage) == 0) {
            b->offsets[i].seq = seq > b->offsets[i].seq ? seq : b->offsets[i].seq;
            return;
        }
    }
    SVC_ASSERT(b->rows.offset_count < CMD_STAGE_COUNT);
    b->offsets[b->rows.offset_count++] = (struct row_stage_offset){stage, seq, b->now_ms};
}

/* ---- idempotency -------------------------------------------------------------------------- */

static uint32_t batch_key_slot(const char *principal, const char *key)
{
    SVC_ASSERT(principal[0] != '\0');
    uint64_t h = hash_fnv1a(HASH_FNV_OFFSET, principal, strlen(principal));
    return (uint32_t)hash_fnv1a(h ^ 0xff, key, strlen(key)) & (BATCH_IDEM_SLOTS - 1);
}

int32_t batch_idem_earlier(const struct batch *b, size_t index, uint32_t *slot_out)
{
    const struct command *cmd = batch_command(b, index);
    SVC_ASSERT(cmd->has_idem_key);
    uint32_t slot = batch_key_slot(cmd->principal, cmd->idem_key);
    for (uint32_t probes = 0; probes < BATCH_IDEM_SLOTS; probes++) {
        int16_t entry = b->idem_slots[slot];
        if (entry == 0) {
            *slot_out = slot;
            return -1;
        }
        const struct command *other = b->commands[entry - 1];
        if (strcmp(other->idem_key, cmd->idem_key) == 0 &&
            strcmp(other->principal, cmd->principal) == 0) {
            SVC_ASSERT((size_t)(entry - 1) < index);
            *slot_out = slot;
            return entry - 1;
        }
        slot = (slot + 1) & (BATCH_IDEM_SLOTS - 1);
    }
    SVC_UNREACHABLE(); /* load <= 0.25 */
}

void batch_idem_claim(struct batch *b, size_t index, uint32_t slot)
{
    SVC_ASSERT(slot < BATCH_IDEM_SLOTS && b->idem_slots[slot] == 0);
    SVC_ASSERT(index < b->command_count && b->idem_used_count < BATCH_COMMANDS_MAX);
    b->idem_slots[slot] = (int16_t)(index + 1);
    b->idem_used[b->idem_used_count++] = slot;
}

/* Copies length bytes into the record text; NULL when full. */
static const char *batch_record_copy(struct batch *b, const char *text, size_t length)
{
    if (length + 1 > BATCH_PREFETCH_BYTES - b->record_text_used) {
        return NULL;
    }
    char *out = b->record_text + b->record_text_used;
    memcpy(out, text, length);
    out[length] = '\0';
    b->record_text_used += length + 1;
    return out;
}

int batch_idem_record_add(struct batch *b, const struct store_idem_record *record)
{
    SVC_ASSERT(record->principal != NULL && record->key != NULL && record->body != NULL);
    if (b->record_count == BATCH_COMMANDS_MAX ||
        batch_idem_record_find(b, record->principal, record->key) != NULL) {
        return SVC_ECAPACITY; /* the store reports each asked key at most once */
    }
    const char *location = record->location != NULL ? record->location : "";
    struct batch_idem_record *copy = &b->records[b->record_count];
    copy->principal = batch_record_copy(b, record->principal, strlen(record->principal));
    copy->key = batch_record_copy(b, record->key, strlen(record->key));
    copy->body = batch_record_copy(b, record->body, record->body_length);
    copy->location = batch_record_copy(b, location, strlen(location));
    if (!copy->principal || !copy->key || !copy->body || !copy->location) {
        return SVC_ECAPACITY;
    }
    copy->fingerprint = record->fingerprint;
    copy->status = record->status;
    copy->problem = record->problem;
    copy->body_length = record->body_length;
    uint32_t slot = batch_key_slot(copy->principal, copy->key);
    while (b->record_slots[slot] != 0) {
        slot = (slot + 1) & (BATCH_IDEM_SLOTS - 1);
    }
    b->record_slots[slot] = (int16_t)(++b->record_count);
    return 0;
}

const struct batch_idem_record *batch_idem_record_find(const struct batch *b, const char *principal,
                                                       const char *key)
{
    uint32_t slot = batch_key_slot(principal, key);
    for (uint32_t probes = 0; probes < BATCH_IDEM_SLOTS; probes++) {
        int16_t entry = b->record_slots[slot];
        if (entry == 0) {
            return NULL;
        }
        const struct batch_idem_record *r = &b->records[entry - 1];
        if (strcmp(r->key, key) == 0 && strcmp(r->principal, principal) == 0) {
            return r;
        }
        slot = (slot + 1) & (BATCH_IDEM_SLOTS - 1);
    }
    SVC_UNREACHABLE(); /* load <= 0.25 */
}

/* ---- ended reservations ------------------------------------------------------------------- */

void batch_ended_add(struct batch *b, int64_t seq, const char *status, int64_t version)
{
    SVC_ASSERT(seq >= 1);
    SVC_ASSERT(b->ended_count < BATCH_NAMED_RESERVATIONS_MAX);
    struct batch_ended_reservation *e = &b->ended[b->ended_count++];
    e->seq = seq;
    e->version = version;
    snprintf(e->status, sizeof e->status, "%s", status != NULL ? status : "");
}

const struct batch_ended_reservation *batch_ended_find(const struct batch *b, int64_t seq)
{
    SVC_ASSERT(seq >= 1);
    for (uint32_t i = 0; i < b->ended_count; i++) { /* a handful: confirms of ended ones */
        if (b->ended[i].seq == seq) {
            return &b->ended[i];
        }
    }
    return NULL;
}

/* ---- other instances' events -------------------------------------------------------------- */

static const char *batch_gap_copy(struct batch *b, const char *text)
{
    if (text == NULL) {
        return NULL;
    }
    size_t n = strlen(text) + 1;
    if (n > BATCH_GAP_TEXT_BYTES - b->gap_text_used) {
        return NULL;
    }
    char *out = b->gap_text + b->gap_text_used;
    memcpy(out, text, n);
    b->gap_text_used += n;
    return out;
}

size_t batch_gap_add(struct batch *b, const struct row_event *rows, size_t count)
{
    size_t kept = 0;
    while (kept < count && b->gap_count < STORE_GAP_EVENTS_MAX) {
        const struct row_event *row = &rows[kept];
        SVC_ASSERT(b->gap_count == 0 || row->seq > b->gap_rows[b->gap_count - 1].seq);
        struct row_event copy = *row;
        copy.event_type = batch_gap_copy(b, row->event_type);
        copy.store_id = batch_gap_copy(b, row->store_id);
        copy.sku = batch_gap_copy(b, row->sku);
        copy.data_json = batch_gap_copy(b, row->data_json);
        if (copy.event_type == NULL || copy.data_json == NULL ||
            (row->store_id != NULL && copy.store_id == NULL) ||
            (row->sku != NULL && copy.sku == NULL)) {
            break; /* full: the follower reads the rest from the events table */
        }
        b->gap_rows[b->gap_count++] = copy;
        kept++;
    }
    return kept;
}

size_t batch_gap_count(const struct batch *b)
{
    SVC_ASSERT(b->gap_count <= STORE_GAP_EVENTS_MAX);
    return b->gap_count;
}

size_t batch_gap_decode(struct batch *b, const struct event **out)
{
    struct event_arena arena = {b->gap_decoded, 2 * BATCH_GAP_TEXT_BYTES, 0};
    size_t n = 0;
    for (; n < b->gap_count; n++) {
        int rc = event_decode(&b->gap_rows[n], &b->gap_events[n], &arena);
        if (rc == SVC_ECAPACITY) {
            break; /* the rest are left to the follower */
        }
        if (rc != 0) {
            b->gap_events[n].type = EVENT_UNKNOWN; /* corrupt data: the seq still counts */
        }
    }
    *out = b->gap_events;
    SVC_ASSERT(n <= b->gap_count);
    return n;
}

void batch_lease_fence(struct batch *b)
{
    b->lease_fenced = true;
    memset(b->lease_tokens, 0, sizeof b->lease_tokens);
}

void batch_lease_set(struct batch *b, enum cmd_stage stage, int64_t token)
{
    SVC_ASSERT(b->lease_fenced && token >= 1);
    SVC_ASSERT(stage > CMD_STAGE_NONE && stage < CMD_STAGE_COUNT);
    b->lease_tokens[stage] = token;
}

bool batch_lease_valid(const struct batch *b, enum cmd_stage stage, int64_t token)
{
    SVC_ASSERT(stage > CMD_STAGE_NONE && stage < CMD_STAGE_COUNT);
    return !b->lease_fenced || (token >= 1 && token == b->lease_tokens[stage]);
}
