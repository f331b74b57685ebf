/*
 * projector.c - see projector.h. Applying events to a projection, replay, rebuild, and the
 * lock-free reader side.
 *
 * Publication: a new store, product, item or reservation row is written completely, then made
 * findable (hash slot, or its predecessor's link on its product's item list, release store),
 * then counted (release store). Nothing is ever unlinked while the projection is readable.
 * Mutable fields (item stock, reservation status) are rewritten under the row's seqlock:
 * odd while the applying thread writes, readers retry until they see an even, unchanged value.
 * Events carry the full item state after the change (core/events.h), so applying one is a
 * copy, not arithmetic, and replaying the log twice gives the same answer. The writer hands
 * events over structured; replays and the follower decode stored rows (event_decode) before
 * they take the apply mutex, so the mutex is held for copies only.
 *
 * Not here: HTTP formatting (api_queries.c), the writer's own state (domain.c).
 */
#include "read/projector.h"

#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_thread.h"
#include "read/projector_internal.h"
#include "store/store_open.h"

/* Reader threads get pin slots in the order they first read; the slot index is per thread and
 * the same for every projector (tests run several). */
static _Atomic uint32_t projector_slots_used;
static _Thread_local int32_t projector_slot = -1;

/* ---- allocation ------------------------------------------------------------------------- */

static void projection_free(struct projection *v)
{
    if (v == NULL) {
        return;
    }
    free(v->stores);
    free((void *)v->store_hash);
    free(v->products);
    free((void *)v->product_hash);
    free(v->items);
    free(v->reservations);
    free((void *)v->reservation_hash);
    free(v->lines);
    free(v);
}

static struct projection *projection_alloc(const struct capacity *c)
{
    struct projection *v = calloc(1, sizeof *v);
    if (v == NULL) {
        return NULL;
    }
    struct projection_limits *l = &v->limits;
    l->stores = c->stores;
    l->products = c->products;
    l->items = c->items;
    l->reservations = capacity_proj_reservations(c);
    l->lines = capacity_proj_lines(c);
    l->store_slots = capacity_hash_slots(l->stores);
    l->product_slots = capacity_hash_slots(l->products);
    l->reservation_slots = capacity_hash_slots(l->reservations);
    v->stores = calloc(l->stores, sizeof *v->stores);
    v->store_hash = calloc(l->store_slots, sizeof *v->store_hash);
    v->products = calloc(l->products, sizeof *v->products);
    v->product_hash = calloc(l->product_slots, sizeof *v->product_hash);
    v->items = calloc(l->items, sizeof *v->items);
    v->reservations = calloc(l->reservations, sizeof *v->reservations);
    v->reservation_hash = calloc(l->reservation_slots, sizeof *v->reservation_hash);
    v->lines = calloc(l->lines, sizeof *v->lines);
    if (!v->stores || !v->store_hash || !v->products || !v->product_hash || !v->items ||
        !v->reservations || !v->reservation_hash || !v->lines) {
        projection_free(v);
        return NULL;
    }
    SVC_ASSERT(atomic_load(&v->applied_seq) == 0);
    return v;
}

/* Empties v for a rebuild: only the used prefix of each table is cleared, so pages never
 * touched stay untouched. Nobody may read v (not live, pinned by no reader). */
void projector__reset(struct projection *v)
{
    SVC_ASSERT(v != NULL);
    uint32_t products = atomic_load(&v->product_count);
    uint32_t items = atomic_load(&v->item_count);
    uint32_t reservations = atomic_load(&v->reservation_count);
    const struct projection_limits *l = &v->limits;
    memset(v->stores, 0, atomic_load(&v->store_count) * sizeof *v->stores);
    memset((void *)v->store_hash, 0, l->store_slots * sizeof *v->store_hash);
    memset(v->products, 0, products * sizeof *v->products);
    memset((void *)v->product_hash, 0, l->product_slots * sizeof *v->product_hash);
    memset(v->items, 0, items * sizeof *v->items);
    memset(v->reservations, 0, reservations * sizeof *v->reservations);
    memset((void *)v->reservation_hash, 0, l->reservation_slots * sizeof *v->reservation_hash);
    memset(v->lines, 0, v->line_count * sizeof *v->lines);
    atomic_store(&v->store_count, 0);
    atomic_store(&v->product_count, 0);
    atomic_store(&v->item_count, 0);
    atomic_store(&v->reservation_count, 0);
    v->line_count = 0;
    atomic_store(&v->dropped, 0);
    atomic_store(&v->applied_seq, 0);
    atomic_store(&v->applied_at_ms, 0);
    SVC_ASSERT(atomic_load(&v->applied_seq) == 0);
}

static void projector_follow_chunk_free(struct projector *p);

int projector_init(struct projector *p, const char *db_path, const struct capacity *capacity)
{
    SVC_ASSERT(p != NULL && db_path != NULL && capacity_valid(capacity));
    SVC_ASSERT(strlen(db_path) < sizeof p->db_path);
    memset(p, 0, sizeof *p);
    strcpy(p->db_path, db_path);
    p->instances[0] = projection_alloc(capacity);
    p->instances[1] = projection_alloc(capacity);
    if (p->instances[0] == NULL || p->instances[1] == NULL) {
        projector_deinit(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->apply_mutex, NULL);
    atomic_store(&p->live, p->instances[0]);
    return 0;
}

void projector_deinit(struct projector *p)
{
    SVC_ASSERT(p != NULL);
    SVC_ASSERT(!atomic_load(&p->rebuilding));
    SVC_ASSERT(!atomic_load(&p->following));
    projector_follow_chunk_free(p);
    free(p->snapshot_buffer);
    p->snapshot_buffer = NULL;
    p->snapshot_capacity = 0;
    projection_free(p->instances[0]);
    projection_free(p->instances[1]);
    p->instances[0] = p->instances[1] = NULL;
    atomic_store(&p->live, NULL);
}

/* ---- lookups shared by the applier and readers ------------------------------------------ */

/* Finds key in an open-addressing hash of slots (a power of two) slots holding row index + 1
 * (release-published); row i's key is the string at keys + i * stride (the rows' array seen
 * as bytes, from the key member of row 0). *slot_out gets the slot it is in or the empty slot
 * ending the probe. */
static int32_t projection_probe(const _Atomic uint32_t *hash, uint32_t slots, const char *keys,
                                size_t stride, const char *key, uint32_t *slot_out)
{
    SVC_ASSERT(key != NULL);
    uint32_t slot = hash_slot(key, slots);
    for (uint32_t probes = 0; probes < slots; probes++) {
        uint32_t entry = atomic_load_explicit(&hash[slot], memory_order_acquire);
        if (entry == 0 || strcmp(keys + (size_t)(entry - 1) * stride, key) == 0) {
            *slot_out = slot;
            return entry == 0 ? -1 : (int32_t)(entry - 1);
        }
        slot = (slot + 1) & (slots - 1);
    }
    SVC_UNREACHABLE(); /* load factor <= 0.5: an empty slot always exists */
}

static int32_t projection_product_probe(const struct projection *v, const char *sku,
                                        uint32_t *slot_out)
{
    const char *keys = (const char *)v->products + offsetof(struct projection_product, sku);
    return projection_probe(v->product_hash, v->limits.product_slots, keys, sizeof v->products[0],
                            sku, slot_out);
}

static int32_t projection_store_probe(const struct projection *v, const char *id,
                                      uint32_t *slot_out)
{
    const char *keys = (const char *)v->stores + offsetof(struct projection_store, id);
    return projection_probe(v->store_hash, v->limits.store_slots, keys, sizeof v->stores[0], id,
                            slot_out);
}

int32_t projector__reservation_probe(const struct projection *v, const char *id, uint32_t *slot_out)
{
    const char *keys = (const char *)v->reservations + offsetof(struct projection_reservation, id);
    return projection_probe(v->reservation_hash, v->limits.reservation_slots, keys,
                            sizeof v->reservations[0], id, slot_out);
}

static int32_t projection_store_find(const struct projection *v, const char *id)
{
    uint32_t slot = 0;
    return projection_store_probe(v, id, &slot);
}

int32_t projector__item_find(const struct projection *v, uint32_t product_index,
                             uint32_t store_index)
{
    SVC_ASSERT(product_index < v->limits.products);
    int32_t index =
        atomic_load_explicit(&v->products[product_index].first_item, memory_order_acquire);
    while (index >= 0 && v->items[index].store_index < store_index) {
        index = atomic_load_explicit(&v->items[index].next, memory_order_acquire);
    }
    return index >= 0 && v->items[index].store_index == store_index ? index : -1;
}

/* ---- applying (one thread per projection at a time) --------------------------------------- */

void projector__copy(char *out, size_t size, const char *text)
{
    SVC_ASSERT(size >= 1);
    size_t length = text ? strlen(text) : 0;
    if (length > size - 1) {
        length = size - 1; /* the writer validated lengths; a cut keeps a corrupt log bounded */
    }
    memcpy(out, text ? text : "", length);
    out[length] = '\0';
}

int32_t projector__store_add(struct projection *v, const char *id, const char *name,
                             int64_t latency_ms)
{
    uint32_t slot = 0;
    int32_t found = projection_store_probe(v, id, &slot);
    if (found >= 0) {
        return found;
    }
    uint32_t count = atomic_load(&v->store_count);
    SVC_ASSERT(count <= v->limits.stores);
    if (count == v->limits.stores || id[0] == '\0') {
        v->dropped++;
        return -1;
    }
    struct projection_store *store = &v->stores[count];
    projector__copy(store->id, sizeof store->id, id);
    projector__copy(store->name, sizeof store->name, name);
    store->latency_ms = latency_ms;
    atomic_store_explicit(&v->store_hash[slot], count + 1, memory_order_release);
    atomic_store_explicit(&v->store_count, count + 1, memory_order_release);
    SVC_ASSERT(projection_store_find(v, id) == (int32_t)count);
    return (int32_t)count;
}

int32_t projector__product_add(struct projection *v, const char *sku, const char *name)
{
    uint32_t slot = 0;
    int32_t found = projection_product_probe(v, sku, &slot);
    if (found >= 0) {
        return found;
    }
    uint32_t count = atomic_load(&v->product_count);
    SVC_ASSERT(count <= v->limits.products);
    if (count == v->limits.products || sku[0] == '\0') {
        v->dropped++;
        return -1;
    }
    struct projection_product *product = &v->products[count];
    projector__copy(product->sku, sizeof product->sku, sku);
    projector__copy(product->name, sizeof product->name, name);
    atomic_store_explicit(&product->first_item, -1, memory_order_relaxed);
    atomic_store_explicit(&v->product_hash[slot], count + 1, memory_order_release);
    atomic_store_explicit(&v->product_count, count + 1, memory_order_release);
    SVC_ASSERT(projection_product_probe(v, sku, &slot) == (int32_t)count);
    return (int32_t)count;
}

/* The writer's walk of a product's items (store-index order): the index of the item of
 * (product, store), or -1 with *link_out the link a new item goes in at. */
static int32_t projection_item_locate(struct projection *v, uint32_t product_index,
                                      uint32_t store_index, _Atomic int32_t **link_out)
{
    SVC_ASSERT(product_index < atomic_load(&v->product_count));
    _Atomic int32_t *link = &v->products[product_index].first_item;
    int32_t next = atomic_load_explicit(link, memory_order_relaxed);
    while (next >= 0 && v->items[next].store_index < store_index) {
        link = &v->items[next].next;
        next = atomic_load_explicit(link, memory_order_relaxed);
    }
    if (next >= 0 && v->items[next].store_index == store_index) {
        return next;
    }
    *link_out = link;
    return -1;
}

/* Writes the item at index, or (index -1) a new one linked in at link, after its first values:
 * a reader reaching it sees a whole item. */
static void projection_item_write(struct projection *v, uint32_t product_index,
                                  uint32_t store_index, int32_t index, _Atomic int32_t *link,
                                  const struct projection_stock *stock, int64_t at_ms)
{
    SVC_ASSERT(store_index < atomic_load(&v->store_count));
    SVC_ASSERT((index >= 0) == (link == NULL));
    if (index < 0) {
        uint32_t count = atomic_load(&v->item_count);
        if (count == v->limits.items) {
            v->dropped++;
            return;
        }
        index = (int32_t)count;
        v->items[index].product_index = product_index;
        v->items[index].store_index = store_index;
        atomic_store_explicit(&v->items[index].next, atomic_load(link), memory_order_relaxed);
        atomic_store_explicit(&v->item_count, count + 1, memory_order_release);
    }
    struct projection_item *item = &v->items[index];
    SVC_ASSERT(item->product_index == product_index && item->store_index == store_index);
    uint32_t seq = atomic_load_explicit(&item->seqlock, memory_order_relaxed);
    SVC_ASSERT(seq % 2 == 0);
    atomic_store_explicit(&item->seqlock, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&item->on_hand, stock->on_hand, memory_order_relaxed);
    atomic_store_explicit(&item->reserved, stock->reserved, memory_order_relaxed);
    atomic_store_explicit(&item->version, stock->version, memory_order_relaxed);
    atomic_store_explicit(&item->sold, stock->sold, memory_order_relaxed);
    atomic_store_explicit(&item->updated_at_ms, at_ms, memory_order_relaxed);
    atomic_store_explicit(&item->seqlock, seq + 2, memory_order_release);
    if (link != NULL) {
        atomic_store_explicit(link, index, memory_order_release);
        SVC_ASSERT(projector__item_find(v, product_index, store_index) == index);
    }
}

void projector__item_set(struct projection *v, uint32_t product_index, uint32_t store_index,
                         const struct projection_stock *stock, int64_t at_ms)
{
    _Atomic int32_t *link = NULL;
    int32_t index = projection_item_locate(v, product_index, store_index, &link);
    projection_item_write(v, product_index, store_index, index, link, stock, at_ms);
}

/* The sold count after e of the item at index (-1: a new item): carried by the event, or (a log
 * written before events carried it) the count before plus what an order sold. */
static int64_t projection_sold(const struct projection *v, int32_t index, const struct event *e)
{
    if (e->present & EVF(SOLD)) {
        return e->sold;
    }
    if (e->type == EVENT_STOCK_ADJUSTED && e->reason != NULL &&
        strcmp(e->reason, EVENT_REASON_RESET) == 0) {
        return 0; /* seed 004's reset restarted the count (the writer zeroes it too) */
    }
    int64_t before = index >= 0 ? atomic_load(&v->items[index].sold) : 0;
    return before + (e->type == EVENT_ORDER_COMPLETED ? e->qty : 0);
}

/* A stock event: the item after the change. ProductCreated also names its product. */
static void projection_apply_stock(struct projection *v, const struct event *e)
{
    SVC_ASSERT(event_type_is_stock(e->type));
    if (e->store_id == NULL || e->sku == NULL) {
        v->dropped++; /* a stock event names its item: a corrupt row */
        return;
    }
    const char *name = e->type == EVENT_PRODUCT_CREATED && e->name != NULL ? e->name : "";
    int32_t store_index = projector__store_add(v, e->store_id, e->store_id, 0);
    int32_t product_index = projector__product_add(v, e->sku, name);
    if (store_index < 0 || product_index < 0) {
        return; /* past a table's capacity: counted by the add */
    }
    bool complete = (e->present & (EVF(ON_HAND) | EVF(VERSION))) == (EVF(ON_HAND) | EVF(VERSION));
    if (!complete || e->reserved < 0 || e->reserved > e->on_hand || e->version < 1) {
        log_warn("projector: event %lld has an impossible item; skipped", (long long)e->seq);
        v->dropped++; /* the log is external data here: refuse it rather than crash */
        return;
    }
    _Atomic int32_t *link = NULL;
    int32_t index =
        projection_item_locate(v, (uint32_t)product_index, (uint32_t)store_index, &link);
    struct projection_stock stock = {e->on_hand, e->reserved, e->version,
                                     projection_sold(v, index, e)};
    projection_item_write(v, (uint32_t)product_index, (uint32_t)store_index, index, link, &stock,
                          e->occurred_at_ms);
}

void projector__reservation_write(struct projection_reservation *r, int32_t status, int64_t version,
                                  int64_t at_ms)
{
    uint32_t seq = atomic_load_explicit(&r->seqlock, memory_order_relaxed);
    SVC_ASSERT(seq % 2 == 0);
    SVC_ASSERT(status >= PROJECTOR_ACTIVE && status <= PROJECTOR_EXPIRED);
    atomic_store_explicit(&r->seqlock, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&r->status, status, memory_order_relaxed);
    atomic_store_explicit(&r->version, version, memory_order_relaxed);
    atomic_store_explicit(&r->updated_at_ms, at_ms, memory_order_relaxed);
    atomic_store_explicit(&r->seqlock, seq + 2, memory_order_release);
}

static int32_t projection_status_parse(const char *text, int32_t fallback)
{
    for (int32_t i = PROJECTOR_ACTIVE; text != NULL && i <= PROJECTOR_EXPIRED; i++) {
        if (strcmp(text, projector_status_name((enum projector_status)i)) == 0) {
            return i;
        }
    }
    return fallback;
}

/* Copies the event's lines into the line pool; false when they do not fit. */
static bool projection_lines_add(struct projection *v, const struct event *e,
                                 struct projection_reservation *r)
{
    if (v->line_count + e->line_count > v->limits.lines) {
        return false;
    }
    r->line_first = v->line_count;
    r->line_count = 0;
    for (uint32_t i = 0; i < e->line_count; i++) {
        const char *sku = e->lines[i].sku != NULL ? e->lines[i].sku : "";
        int32_t product = projector__product_add(v, sku, "");
        if (product < 0) {
            continue;
        }
        v->lines[v->line_count++] = (struct projector_line){(uint32_t)product, e->lines[i].qty};
        r->line_count++;
    }
    SVC_ASSERT(r->line_first + r->line_count == v->line_count);
    return true;
}

static void projection_reservation_create(struct projection *v, const struct event *e)
{
    const char *id = e->reservation_id != NULL ? e->reservation_id : "";
    uint32_t slot = 0;
    uint32_t count = atomic_load(&v->reservation_count);
    if (id[0] == '\0' || strlen(id) > PROJ_RESERVATION_ID_BYTES_MAX ||
        projector__reservation_probe(v, id, &slot) >= 0 || count == v->limits.reservations) {
        v->dropped++;
        return;
    }
    const char *store_id = e->store_id != NULL ? e->store_id : "";
    int32_t store_index = projector__store_add(v, store_id, store_id, 0);
    struct projection_reservation *r = &v->reservations[count];
    if (store_index < 0 || !projection_lines_add(v, e, r)) {
        v->dropped++;
        return;
    }
    projector__copy(r->id, sizeof r->id, id);
    projector__copy(r->customer_id, sizeof r->customer_id, e->customer_id);
    r->store_index = (uint32_t)store_index;
    r->expires_at_ms = e->expires_at_ms;
    r->created_at_ms = e->occurred_at_ms;
    int32_t status = projection_status_parse(e->status, PROJECTOR_ACTIVE);
    int64_t version = (e->present & EVF(VERSION)) ? e->version : 1;
    projector__reservation_write(r, status, version, e->occurred_at_ms);
    atomic_store_explicit(&v->reservation_hash[slot], count + 1, memory_order_release);
    atomic_store_explicit(&v->reservation_count, count + 1, memory_order_release);
    SVC_ASSERT(projector__reservation_probe(v, id, &slot) == (int32_t)count);
}

static void projection_reservation_change(struct projection *v, const struct event *e,
                                          int32_t status)
{
    uint32_t slot = 0;
    const char *id = e->reservation_id != NULL ? e->reservation_id : "";
    int32_t index = strlen(id) <= PROJ_RESERVATION_ID_BYTES_MAX
                        ? projector__reservation_probe(v, id, &slot)
                        : -1;
    if (index < 0) {
        v->dropped++; /* created past the capacity, or a log that starts mid-way */
        return;
    }
    struct projection_reservation *r = &v->reservations[index];
    status = projection_status_parse(e->status, status);
    int64_t version = atomic_load_explicit(&r->version, memory_order_relaxed) + 1;
    if (e->present & EVF(VERSION)) {
        version = e->version; /* the writer's own count */
    }
    projector__reservation_write(r, status, version, e->occurred_at_ms);
    SVC_ASSERT(version >= 1);
}

/* Applies one event to v by its type. */
static void projection_apply_typed(struct projection *v, const struct event *e)
{
    switch (e->type) {
    case EVENT_STORE_CREATED:
        projector__store_add(v, e->store_id != NULL ? e->store_id : "",
                             e->name != NULL ? e->name : "", e->latency_ms);
        return;
    case EVENT_RESERVATION_CREATED: projection_reservation_create(v, e); return;
    case EVENT_RESERVATION_CONFIRMED:
        projection_reservation_change(v, e, PROJECTOR_CONFIRMED);
        return;
    case EVENT_RESERVATION_CANCELLED:
        projection_reservation_change(v, e, PROJECTOR_CANCELLED);
        return;
    case EVENT_RESERVATION_EXPIRED: projection_reservation_change(v, e, PROJECTOR_EXPIRED); return;
    case EVENT_TRANSFER_COMPLETED:
    case EVENT_RECONCILIATION_COMPLETED: return; /* their stock events did the work */
    case EVENT_ORDER_CREATED:
    case EVENT_ORDER_CONFIRMED:
    case EVENT_ORDER_PAYMENT_STARTED:
    case EVENT_ORDER_PAYMENT_RETRIED:
    case EVENT_ORDER_PAID:
    case EVENT_ORDER_PAYMENT_FAILED:
    case EVENT_ORDER_CANCELLED:
    case EVENT_ORDER_EXPIRED:
    case EVENT_ORDER_DEAD_LETTERED:
    case EVENT_ORDER_PAYMENT_REPLAYED:
        return; /* orders are read from storage; stock events did it */
    case EVENT_UNKNOWN: v->dropped++; return; /* a type of a newer build */
    default: break;
    }
    SVC_ASSERT(event_type_is_stock(e->type));
    projection_apply_stock(v, e);
}

/* Applies e to v unless already applied; either way v has seen e->seq. */
static void projection_apply(struct projection *v, const struct event *e)
{
    SVC_ASSERT(e->seq >= 1);
    SVC_ASSERT(e->type <= EVENT_UNKNOWN);
    if (e->seq <= atomic_load_explicit(&v->applied_seq, memory_order_relaxed)) {
        return;
    }
    projection_apply_typed(v, e);
    atomic_store_explicit(&v->applied_at_ms, e->occurred_at_ms, memory_order_relaxed);
    atomic_store_explicit(&v->applied_seq, e->seq, memory_order_release);
}

/* Decodes a stored row into e; a row that does not decode becomes an EVENT_UNKNOWN that only
 * moves the applied seq (logged: the log is external data). false when the arena is full. */
static bool projection_decode(const struct row_event *row, struct event *e,
                              struct event_arena *arena)
{
    int rc = event_decode(row, e, arena);
    if (rc == SVC_ECAPACITY) {
        return false;
    }
    if (rc != 0) {
        log_warn("projector: event %lld has unreadable data; skipped", (long long)row->seq);
        e->type = EVENT_UNKNOWN;
    }
    SVC_ASSERT(e->seq == row->seq);
    return true;
}

/* Bytes to decode one stored event into: its text plus its lines (a 100-line reservation). */
#define PROJ_DECODE_BYTES (64 * 1024)

struct projection_replay_state {
    struct projection *v;
    char *scratch; /* PROJ_DECODE_BYTES, owned by the caller */
};

static int projection_replay_row(void *context, const struct row_event *row)
{
    struct projection_replay_state *st = context;
    struct event_arena arena = {st->scratch, PROJ_DECODE_BYTES, 0};
    struct event e;
    if (!projection_decode(row, &e, &arena)) {
        log_warn("projector: event %lld is too large to project", (long long)row->seq);
        memset(&e, 0, sizeof e);
        e.seq = row->seq;
        e.type = EVENT_UNKNOWN;
        e.occurred_at_ms = row->occurred_at_ms;
    }
    projection_apply(st->v, &e);
    SVC_ASSERT(atomic_load(&st->v->applied_seq) >= row->seq);
    return 0;
}

/* Replays the log after v's applied seq until a chunk comes back short: the end of the log
 * at that moment. */
static int projection_replay(struct projection *v, struct store_reader *reader, char *scratch)
{
    struct projection_replay_state st = {v, scratch};
    for (;;) {
        int64_t before = atomic_load(&v->applied_seq);
        int rc = store_reader_events(reader, before, NULL, NULL, PROJ_REPLAY_CHUNK, &st,
                                     projection_replay_row);
        if (rc != 0) {
            return rc;
        }
        int64_t after = atomic_load(&v->applied_seq);
        SVC_ASSERT(after >= before);
        if (after - before < PROJ_REPLAY_CHUNK) {
            return 0; /* seqs are gap-free, so a short chunk is the end of the log */
        }
    }
}

int projector_load(struct projector *p, struct store_reader *reader)
{
    struct projection *v = atomic_load(&p->live);
    SVC_ASSERT(v != NULL && reader != NULL);
    int64_t from = atomic_load(&v->applied_seq); /* a loaded snapshot's, else 0 */
    int64_t started_us = clock_mono_us();
    char *scratch = malloc(PROJ_DECODE_BYTES);
    int rc = scratch != NULL ? projection_replay(v, reader, scratch) : -ENOMEM;
    free(scratch);
    if (rc == 0) {
        atomic_store(&p->log_seq, atomic_load(&v->applied_seq));
        atomic_store(&p->log_at_ms, atomic_load(&v->applied_at_ms));
        log_info("projector: replayed the event log from seq %lld to seq %lld in %lld ms (%llu"
                 " not projected)",
                 (long long)from, (long long)atomic_load(&v->applied_seq),
                 (long long)((clock_mono_us() - started_us) / 1000),
                 (unsigned long long)atomic_load(&v->dropped));
    }
    return rc;
}

/* Raises the newest known seq of the log (and its time) to seq. */
void projector_note_log(struct projector *p, int64_t seq, int64_t at_ms)
{
    int64_t known = atomic_load(&p->log_seq);
    while (seq > known && !atomic_compare_exchange_weak(&p->log_seq, &known, seq)) {
    }
    if (seq >= known) {
        atomic_store(&p->log_at_ms, at_ms);
    }
}

size_t projector_apply(struct projector *p, const struct event *events, size_t count)
{
    SVC_ASSERT(count >= 1);
    SVC_ASSERT(events[count - 1].seq >= events[0].seq);
    projector_note_log(p, events[count - 1].seq, events[count - 1].occurred_at_ms);
    pthread_mutex_lock(&p->apply_mutex);
    struct projection *v = atomic_load(&p->live);
    int64_t applied = atomic_load_explicit(&v->applied_seq, memory_order_relaxed);
    size_t first = 0;
    while (first < count && events[first].seq <= applied) {
        first++; /* the follower brought these already */
    }
    size_t n = 0;
    while (first + n < count && events[first + n].seq == applied + 1) {
        projection_apply(v, &events[first + n]);
        applied++;
        n++;
    }
    /* Past a gap (another instance's events not yet read) nothing is applied: the log is
     * applied in seq order only, and the follower reads the rest from the events table. */
    for (uint32_t t = 0; n > 0 && t < p->tap_count; t++) {
        p->taps[t].tap(events + first, n, p->taps[t].context);
    }
    pthread_mutex_unlock(&p->apply_mutex);
    return first + n;
}

void projector_durable_hook(int64_t seq, void *context)
{
    struct projector *p = context;
    SVC_ASSERT(p != NULL && seq >= 1);
    int64_t known = atomic_load(&p->own_seq);
    while (seq > known && !atomic_compare_exchange_weak(&p->own_seq, &known, seq)) {
    }
    SVC_ASSERT(atomic_load(&p->own_seq) >= seq);
}

int64_t projector_own_seq(struct projector *p)
{
    int64_t seq = atomic_load(&p->own_seq);
    SVC_ASSERT(seq >= 0);
    return seq;
}

void projector_committed_hook(const struct event *events, size_t count, void *context)
{
    SVC_ASSERT(context != NULL);
    (void)projector_apply(context, events, count);
}

bool projector_wait_seq(struct projector *p, int64_t seq, int64_t timeout_us)
{
    SVC_ASSERT(timeout_us >= 0);
    int64_t deadline_us = 0;
    for (;;) {
        if (projector_live_seq(p) >= seq) {
            return true;
        }
        int64_t now_us = clock_mono_us();
        deadline_us = deadline_us == 0 ? now_us + timeout_us : deadline_us;
        if (now_us >= deadline_us) {
            return false;
        }
        sched_yield(); /* the writer applies right after its replies: microseconds */
    }
}

/* ---- following a shared log ------------------------------------------------------------- */

/* A chunk of the log copied out of the reader (its rows live only during the callback), and
 * the same chunk decoded. */
struct projector_chunk {
    struct row_event rows[PROJ_FOLLOW_CHUNK];
    struct event events[PROJ_FOLLOW_CHUNK];
    size_t count;
    char *text; /* owned arena for the rows' strings */
    size_t used;
    size_t capacity;
    bool full;     /* the arena ran out: stop the chunk here */
    char *decoded; /* owned: the decoder's arena, twice the text */
};

static const char *projector_chunk_copy(struct projector_chunk *c, const char *text)
{
    if (text == NULL) {
        return NULL;
    }
    size_t n = strlen(text) + 1;
    if (c->used + n > c->capacity) {
        c->full = true;
        return NULL;
    }
    char *out = c->text + c->used;
    memcpy(out, text, n);
    c->used += n;
    return out;
}

static int projector_chunk_row(void *context, const struct row_event *row)
{
    struct projector_chunk *c = context;
    SVC_ASSERT(c->count < PROJ_FOLLOW_CHUNK);
    struct row_event copy = *row;
    copy.event_type = projector_chunk_copy(c, row->event_type);
    copy.store_id = projector_chunk_copy(c, row->store_id);
    copy.sku = projector_chunk_copy(c, row->sku);
    copy.data_json = projector_chunk_copy(c, row->data_json);
    if (c->full) {
        return 1; /* stop: the rest comes in the next chunk */
    }
    c->rows[c->count++] = copy;
    return 0;
}

/* Decodes the chunk's rows, outside the apply mutex; returns how many decoded. */
static size_t projector_chunk_decode(struct projector_chunk *c)
{
    struct event_arena arena = {c->decoded, 2 * c->capacity, 0};
    size_t n = 0;
    while (n < c->count && projection_decode(&c->rows[n], &c->events[n], &arena)) {
        n++;
    }
    SVC_ASSERT(n == c->count || n > 0 || c->count == 0); /* twice the text holds one event */
    return n;
}

int64_t projector_live_seq(struct projector *p)
{
    return atomic_load(&atomic_load(&p->live)->applied_seq);
}

int64_t projector_applied_hook(void *context)
{
    return projector_live_seq(context);
}

/* The follower's scratch, allocated once (it is read into on every announcement). */
static struct projector_chunk *projector_follow_chunk(struct projector *p)
{
    if (p->follow_chunk == NULL) {
        struct projector_chunk *c = calloc(1, sizeof *c);
        if (c == NULL || (c->text = malloc(PROJ_FOLLOW_TEXT_BYTES)) == NULL ||
            (c->decoded = malloc(2 * PROJ_FOLLOW_TEXT_BYTES)) == NULL) {
            free(c != NULL ? c->text : NULL);
            free(c);
            return NULL;
        }
        c->capacity = PROJ_FOLLOW_TEXT_BYTES;
        p->follow_chunk = c;
    }
    return p->follow_chunk;
}

static void projector_follow_chunk_free(struct projector *p)
{
    if (p->follow_chunk != NULL) {
        free(p->follow_chunk->text);
        free(p->follow_chunk->decoded);
        free(p->follow_chunk);
        p->follow_chunk = NULL;
    }
}

int64_t projector_follow(struct projector *p, struct store_reader *reader)
{
    bool busy = atomic_exchange(&p->following, true);
    SVC_ASSERT(!busy); /* one caller at a time: the follower thread */
    struct projector_chunk *c = projector_follow_chunk(p);
    int64_t applied = 0;
    while (c != NULL) {
        struct projection *v = atomic_load(&p->live);
        int64_t since = atomic_load(&v->applied_seq);
        c->count = c->used = 0;
        c->full = false;
        /* Read and decode without the apply lock (the writer keeps going), apply under it. */
        int rc = store_reader_events(reader, since, NULL, NULL, PROJ_FOLLOW_CHUNK, c,
                                     projector_chunk_row);
        if ((rc != 0 && rc != 1) || c->count == 0) {
            break;
        }
        size_t decoded = projector_chunk_decode(c);
        size_t done = decoded > 0 ? projector_apply(p, c->events, decoded) : 0;
        applied += (int64_t)done;
        if (done == 0 || (decoded == c->count && c->count < PROJ_FOLLOW_CHUNK && !c->full)) {
            break; /* the end of the log, or nothing new (a rebuild swapped the projection) */
        }
    }
    atomic_store(&p->following, false);
    return applied;
}

int projector_tap_add(struct projector *p, projector_tap tap, void *context)
{
    SVC_ASSERT(tap != NULL);
    pthread_mutex_lock(&p->apply_mutex);
    int rc = SVC_ECAPACITY;
    if (p->tap_count < IO_THREADS_MAX) {
        p->taps[p->tap_count++] = (struct projector_tap_entry){tap, context};
        rc = 0;
    }
    pthread_mutex_unlock(&p->apply_mutex);
    return rc;
}

/* ---- rebuild ---------------------------------------------------------------------------- */

int projector_rebuild_run(struct projector *p)
{
    SVC_ASSERT(atomic_load(&p->rebuilding));
    struct store_reader *reader = NULL;
    int rc = store_reader_open(&reader, p->db_path);
    char *scratch = rc == 0 ? malloc(PROJ_DECODE_BYTES) : NULL;
    if (rc != 0 || scratch == NULL) {
        store_reader_close(reader);
        return rc != 0 ? rc : -ENOMEM;
    }
    struct projection *live = atomic_load(&p->live);
    struct projection *fresh = live == p->instances[0] ? p->instances[1] : p->instances[0];
    uint32_t slots = atomic_load(&projector_slots_used);
    for (uint32_t i = 0; i < slots && i < PROJ_READER_SLOTS; i++) {
        while (atomic_load(&p->pins[i].pinned) == fresh) {
            sched_yield(); /* a reader pinned it before the last swap: microseconds */
        }
    }
    projector__reset(fresh);
    rc = projection_replay(fresh, reader, scratch); /* unlocked: the live one keeps going */
    while (rc == 0 &&
           atomic_load(&p->log_seq) - atomic_load(&fresh->applied_seq) > PROJ_REBUILD_LOCKED_MAX) {
        rc = projection_replay(fresh, reader, scratch);
    }
    if (rc == 0) {
        pthread_mutex_lock(&p->apply_mutex); /* no batch can be applied to the old one now */
        rc = projection_replay(fresh, reader, scratch); /* every committed event is there */
        if (rc == 0) {
            SVC_ASSERT(atomic_load(&fresh->applied_seq) >= atomic_load(&live->applied_seq));
            atomic_store(&p->live, fresh);
            atomic_store(&p->rebuilt_at_ms, clock_wall_ms());
        }
        pthread_mutex_unlock(&p->apply_mutex);
    }
    store_reader_close(reader);
    free(scratch);
    log_info("projector: rebuild %s at seq %lld", rc == 0 ? "finished" : "failed",
             (long long)atomic_load(&fresh->applied_seq));
    return rc;
}

static void *projector_rebuild_main(void *arg)
{
    svc_thread_name("rebuild", -1);
    struct projector *p = arg;
    SVC_ASSERT(atomic_load(&p->rebuilding));
    projector_rebuild_run(p);
    atomic_store(&p->rebuilding, false);
    return NULL;
}

int projector_rebuild_start(struct projector *p)
{
    bool expected = false;
    if (!atomic_compare_exchange_strong(&p->rebuilding, &expected, true)) {
        return 1;
    }
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, projector_rebuild_main, p);
    if (rc != 0) {
        atomic_store(&p->rebuilding, false);
        return -rc;
    }
    pthread_detach(thread);
    return 0;
}

/* ---- readers ---------------------------------------------------------------------------- */

struct projection *projector_read_begin(struct projector *p)
{
    if (projector_slot < 0) {
        projector_slot = (int32_t)atomic_fetch_add(&projector_slots_used, 1);
    }
    SVC_ASSERT(projector_slot < PROJ_READER_SLOTS);
    struct projector_pin *pin = &p->pins[projector_slot];
    SVC_ASSERT(atomic_load_explicit(&pin->pinned, memory_order_relaxed) == NULL);
    for (;;) {
        struct projection *v = atomic_load(&p->live);
        SVC_ASSERT(v != NULL);
        atomic_store(&pin->pinned, v); /* seq_cst: ordered before the re-check below */
        if (atomic_load(&p->live) == v) {
            return v; /* a rebuild resets only a projection that is not live and unpinned */
        }
    }
}

void projector_read_end(struct projector *p, struct projection *v)
{
    SVC_ASSERT(projector_slot >= 0 && projector_slot < PROJ_READER_SLOTS);
    SVC_ASSERT(atomic_load_explicit(&p->pins[projector_slot].pinned, memory_order_relaxed) == v);
    atomic_store_explicit(&p->pins[projector_slot].pinned, NULL, memory_order_release);
}

int64_t projector_applied_seq(const struct projection *v)
{
    return atomic_load_explicit(&v->applied_seq, memory_order_acquire);
}

int64_t projector_applied_at_ms(const struct projection *v)
{
    return atomic_load_explicit(&v->applied_at_ms, memory_order_acquire);
}

int64_t projector_lag_ms(const struct projector *p, const struct projection *v)
{
    int64_t applied = projector_applied_seq(v);
    if (atomic_load(&p->log_seq) <= applied) {
        return 0;
    }
    int64_t lag = atomic_load(&p->log_at_ms) - projector_applied_at_ms(v);
    return lag > 0 ? lag : 0;
}

uint64_t projector_dropped_count(const struct projection *v)
{
    SVC_ASSERT(v != NULL);
    return atomic_load_explicit(&v->dropped, memory_order_relaxed);
}

uint32_t projector_store_count(const struct projection *v)
{
    return atomic_load_explicit(&v->store_count, memory_order_acquire);
}

void projector_store_get(const struct projection *v, uint32_t index, struct projector_store *out)
{
    SVC_ASSERT(index < projector_store_count(v));
    const struct projection_store *store = &v->stores[index];
    out->id = store->id;
    out->name = store->name;
    out->latency_ms = store->latency_ms;
}

int32_t projector_store_find(const struct projection *v, const char *store_id)
{
    SVC_ASSERT(store_id != NULL);
    return projection_store_find(v, store_id);
}

uint32_t projector_item_count(const struct projection *v)
{
    return atomic_load_explicit(&v->item_count, memory_order_acquire);
}

uint32_t projector_product_count(const struct projection *v)
{
    return atomic_load_explicit(&v->product_count, memory_order_acquire);
}

int32_t projector_product_find(const struct projection *v, const char *sku)
{
    uint32_t slot = 0;
    SVC_ASSERT(sku != NULL);
    return projection_product_probe(v, sku, &slot);
}

const char *projector_product_sku(const struct projection *v, uint32_t index)
{
    SVC_ASSERT(index < v->limits.products);
    return v->products[index].sku;
}

const char *projector_product_name(const struct projection *v, uint32_t index)
{
    SVC_ASSERT(index < v->limits.products);
    return v->products[index].name;
}

/* Copies item out under its seqlock. */
static void projection_item_read(const struct projection_item *item, struct projector_item *out)
{
    for (;;) {
        uint32_t seq = atomic_load_explicit(&item->seqlock, memory_order_acquire);
        if (seq % 2 == 1) {
            continue; /* the applier is copying four values: spin */
        }
        out->on_hand = atomic_load_explicit(&item->on_hand, memory_order_relaxed);
        out->reserved = atomic_load_explicit(&item->reserved, memory_order_relaxed);
        out->version = atomic_load_explicit(&item->version, memory_order_relaxed);
        out->sold = atomic_load_explicit(&item->sold, memory_order_relaxed);
        out->updated_at_ms = atomic_load_explicit(&item->updated_at_ms, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&item->seqlock, memory_order_relaxed) == seq) {
            break;
        }
    }
    SVC_ASSERT(out->reserved >= 0 && out->reserved <= out->on_hand);
}

bool projector_item_get(const struct projection *v, uint32_t product_index, uint32_t store_index,
                        struct projector_item *out)
{
    SVC_ASSERT(product_index < v->limits.products);
    SVC_ASSERT(store_index < v->limits.stores);
    int32_t index = projector__item_find(v, product_index, store_index);
    if (index < 0) {
        return false;
    }
    projection_item_read(&v->items[index], out);
    return true;
}

int32_t projector_item_next(const struct projection *v, uint32_t product_index, int32_t cursor,
                            uint32_t *store_index_out, struct projector_item *out)
{
    SVC_ASSERT(product_index < v->limits.products);
    SVC_ASSERT(cursor == -1 || (cursor >= 0 && (uint32_t)cursor < v->limits.items));
    int32_t index = cursor < 0 ? atomic_load_explicit(&v->products[product_index].first_item,
                                                      memory_order_acquire)
                               : atomic_load_explicit(&v->items[cursor].next, memory_order_acquire);
    if (index < 0) {
        return -1;
    }
    const struct projection_item *item = &v->items[index];
    SVC_ASSERT(item->product_index == product_index);
    *store_index_out = item->store_index;
    projection_item_read(item, out);
    return index;
}

uint32_t projector_reservation_count(const struct projection *v)
{
    return atomic_load_explicit(&v->reservation_count, memory_order_acquire);
}

bool projector_reservation_find(const struct projection *v, const char *id,
                                struct projector_reservation *out)
{
    uint32_t slot = 0;
    if (strlen(id) > PROJ_RESERVATION_ID_BYTES_MAX) {
        return false;
    }
    int32_t index = projector__reservation_probe(v, id, &slot);
    if (index < 0) {
        return false;
    }
    const struct projection_reservation *r = &v->reservations[index];
    out->id = r->id;
    out->customer_id = r->customer_id;
    out->store_index = r->store_index;
    out->expires_at_ms = r->expires_at_ms;
    out->created_at_ms = r->created_at_ms;
    out->lines = &v->lines[r->line_first];
    out->line_count = r->line_count;
    for (;;) {
        uint32_t seq = atomic_load_explicit(&r->seqlock, memory_order_acquire);
        if (seq % 2 == 1) {
            continue;
        }
        out->status = (enum projector_status)atomic_load_explicit(&r->status, memory_order_relaxed);
        out->version = atomic_load_explicit(&r->version, memory_order_relaxed);
        out->updated_at_ms = atomic_load_explicit(&r->updated_at_ms, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&r->seqlock, memory_order_relaxed) == seq) {
            break;
        }
    }
    SVC_ASSERT(out->version >= 1);
    return true;
}

const char *projector_status_name(enum projector_status status)
{
    static const char *const names[] = {"ACTIVE", "CONFIRMED", "CANCELLED", "EXPIRED"};
    SVC_ASSERT((unsigned)status < 4);
    return names[status];
}

void projector_totals_get(const struct projection *v, struct projector_totals *out)
{
    memset(out, 0, sizeof *out);
    uint32_t items = atomic_load_explicit(&v->item_count, memory_order_acquire);
    SVC_ASSERT(items <= v->limits.items);
    for (uint32_t i = 0; i < items; i++) {
        out->units_sold += atomic_load_explicit(&v->items[i].sold, memory_order_relaxed);
    }
    uint32_t reservations = atomic_load_explicit(&v->reservation_count, memory_order_acquire);
    SVC_ASSERT(reservations <= v->limits.reservations);
    for (uint32_t i = 0; i < reservations; i++) {
        int32_t status = atomic_load_explicit(&v->reservations[i].status, memory_order_relaxed);
        SVC_ASSERT(status >= PROJECTOR_ACTIVE && status <= PROJECTOR_EXPIRED);
        out->reservations[status]++;
    }
}
