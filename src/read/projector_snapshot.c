/*
 * projector_snapshot.c - snapshots of the read model: the live projection encoded at a known
 * seq, stored in the database (table snapshots, store.h), loaded at start so that only the
 * events after it are replayed.
 *
 * Why a snapshot is honest: a projection is only ever the log applied in seq order, so a copy
 * of it taken under the apply mutex is exactly the replay of events 1..applied_seq, and those
 * events are committed and never change. The body carries that seq, the row's seq column
 * repeats it, and both are written in one transaction (store_snapshot_write), so the snapshot
 * and the log cannot disagree. At start it must also pass its checks: the format version of
 * this build, a checksum over every byte, every count and string within its limits, every
 * index pointing at a row that exists, every stock row possible (0 <= reserved <= onHand),
 * and the log must hold its seq with the same occurredAt (a snapshot of another database, or
 * of a log that was cut, fails). One that fails is logged and skipped; the next older one is
 * tried, and with none the whole log is replayed. The audit (audit.c) replays the whole log
 * and never reads snapshots.
 *
 * Who writes, and when (see also core/writer.c, "snapshots"): the writer thread, between two
 * batches, once the projection is SNAPSHOT_EVERY_EVENTS past the last snapshot, and once more
 * at a clean stop. Encoding under the apply mutex costs about a microsecond per row (tens of
 * microseconds for a shop of a few hundred products); the write is one short transaction of
 * its own on the writer's connection, outside any batch, so a batch's transaction (and on
 * PostgreSQL the sequencer lock every instance waits for) never grows by it. A separate
 * thread and connection would spare the writer the encoding, but on SQLite its transaction
 * would take the one write lock anyway, and the encoding needs the apply mutex, which the
 * writer takes after every batch: it would wait for it all the same.
 *
 * Format 1, every integer little-endian, strings as a u16 length and the bytes:
 *   "STKDSNAP" u32 format, u32 0, i64 seq, i64 applied_at_ms, u64 dropped,
 *   u32 stores, products, items, reservations, lines, u32 0,
 *   stores       str id, str name, i64 latency_ms
 *   products     str sku, str name                                  (in index order)
 *   items        u32 product, u32 store, i64 on_hand, reserved, version, sold, updated_at_ms
 *   reservations str id, str customer_id, u32 store, u32 line_count, i32 status,
 *                i64 expires_at_ms, created_at_ms, version, updated_at_ms,
 *                line_count x (u32 product, i64 qty)
 *   u64 FNV-1a of every byte before it
 * Rows keep their index order, so a loaded projection lists everything as the replay would.
 *
 * This file is not the storage of snapshots (store.h) and not the applier (projector.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/hash.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "read/projector_internal.h"

#define SNAP_MAGIC "STKDSNAP"
#define SNAP_MAGIC_BYTES 8
#define SNAP_HEADER_BYTES (SNAP_MAGIC_BYTES + 4 + 4 + 8 + 8 + 8 + 6 * 4)
#define SNAP_CHECKSUM_BYTES 8
/* The most bytes of one row of each table (strings at their limits). */
#define SNAP_STORE_BYTES_MAX (2 + STORE_ID_BYTES_MAX + 2 + NAME_BYTES_MAX + 8)
#define SNAP_PRODUCT_BYTES_MAX (2 + SKU_BYTES_MAX + 2 + NAME_BYTES_MAX)
#define SNAP_ITEM_BYTES (4 + 4 + 5 * 8)
#define SNAP_RESERVATION_BYTES_MAX \
    (2 + PROJ_RESERVATION_ID_BYTES_MAX + 2 + CUSTOMER_ID_BYTES_MAX + 4 + 4 + 4 + 4 * 8)
#define SNAP_LINE_BYTES (4 + 8)

_Static_assert(PROJ_RESERVATION_ID_BYTES_MAX < 65536 && NAME_BYTES_MAX < 65536,
               "strings are stored with a u16 length");

/* ---- encoding --------------------------------------------------------------------------- */

struct snap_out {
    unsigned char *data; /* the projector's buffer */
    size_t used;
    size_t capacity;
};

static void snap_put(struct snap_out *o, uint64_t value, size_t bytes)
{
    SVC_ASSERT(o->used + bytes <= o->capacity); /* sized for the counts before encoding */
    for (size_t i = 0; i < bytes; i++) {
        o->data[o->used++] = (unsigned char)(value >> (8 * i));
    }
}

static void snap_put_str(struct snap_out *o, const char *text)
{
    size_t length = strlen(text);
    SVC_ASSERT(length < 65536);
    snap_put(o, length, 2);
    SVC_ASSERT(o->used + length <= o->capacity);
    memcpy(o->data + o->used, text, length);
    o->used += length;
}

/* The bound of a snapshot of these counts. */
static size_t snap_bytes_max(const uint32_t counts[5])
{
    return SNAP_HEADER_BYTES + SNAP_CHECKSUM_BYTES + (size_t)counts[0] * SNAP_STORE_BYTES_MAX +
           (size_t)counts[1] * SNAP_PRODUCT_BYTES_MAX + (size_t)counts[2] * SNAP_ITEM_BYTES +
           (size_t)counts[3] * SNAP_RESERVATION_BYTES_MAX + (size_t)counts[4] * SNAP_LINE_BYTES;
}

static void snap_encode_header(struct snap_out *o, const struct projection *v,
                               const uint32_t counts[5])
{
    memcpy(o->data, SNAP_MAGIC, SNAP_MAGIC_BYTES);
    o->used = SNAP_MAGIC_BYTES;
    snap_put(o, PROJ_SNAPSHOT_FORMAT, 4);
    snap_put(o, 0, 4);
    snap_put(o, (uint64_t)atomic_load(&v->applied_seq), 8);
    snap_put(o, (uint64_t)atomic_load(&v->applied_at_ms), 8);
    snap_put(o, atomic_load(&v->dropped), 8);
    for (int i = 0; i < 5; i++) {
        snap_put(o, counts[i], 4);
    }
    snap_put(o, 0, 4);
    SVC_ASSERT(o->used == SNAP_HEADER_BYTES);
}

/* Items in index order, each naming its product and store. */
static void snap_encode_items(struct snap_out *o, const struct projection *v, uint32_t products,
                              uint32_t stores, uint32_t items)
{
    for (uint32_t i = 0; i < items; i++) {
        const struct projection_item *item = &v->items[i];
        SVC_ASSERT(item->product_index < products && item->store_index < stores);
        snap_put(o, item->product_index, 4);
        snap_put(o, item->store_index, 4);
        snap_put(o, (uint64_t)atomic_load(&item->on_hand), 8);
        snap_put(o, (uint64_t)atomic_load(&item->reserved), 8);
        snap_put(o, (uint64_t)atomic_load(&item->version), 8);
        snap_put(o, (uint64_t)atomic_load(&item->sold), 8);
        snap_put(o, (uint64_t)atomic_load(&item->updated_at_ms), 8);
    }
    SVC_ASSERT(o->used <= o->capacity);
}

static void snap_encode_reservations(struct snap_out *o, const struct projection *v,
                                     uint32_t reservations)
{
    for (uint32_t i = 0; i < reservations; i++) {
        const struct projection_reservation *r = &v->reservations[i];
        snap_put_str(o, r->id);
        snap_put_str(o, r->customer_id);
        snap_put(o, r->store_index, 4);
        snap_put(o, r->line_count, 4);
        snap_put(o, (uint32_t)atomic_load(&r->status), 4);
        snap_put(o, (uint64_t)r->expires_at_ms, 8);
        snap_put(o, (uint64_t)r->created_at_ms, 8);
        snap_put(o, (uint64_t)atomic_load(&r->version), 8);
        snap_put(o, (uint64_t)atomic_load(&r->updated_at_ms), 8);
        for (uint32_t l = 0; l < r->line_count; l++) {
            const struct projector_line *line = &v->lines[r->line_first + l];
            snap_put(o, line->product_index, 4);
            snap_put(o, (uint64_t)line->qty, 8);
        }
    }
}

/* Encodes v into the projector's buffer, growing it to the bound of v's counts. The caller
 * holds the apply mutex (or owns v). 0 or -ENOMEM. */
static int snap_encode(struct projector *p, const struct projection *v, size_t *length_out)
{
    uint32_t counts[5] = {atomic_load(&v->store_count), atomic_load(&v->product_count),
                          atomic_load(&v->item_count), atomic_load(&v->reservation_count),
                          v->line_count};
    size_t bound = snap_bytes_max(counts);
    if (bound > p->snapshot_capacity) {
        unsigned char *grown = realloc(p->snapshot_buffer, bound);
        if (grown == NULL) {
            return -ENOMEM;
        }
        p->snapshot_buffer = grown;
        p->snapshot_capacity = bound;
    }
    struct snap_out o = {p->snapshot_buffer, 0, p->snapshot_capacity};
    snap_encode_header(&o, v, counts);
    for (uint32_t i = 0; i < counts[0]; i++) {
        snap_put_str(&o, v->stores[i].id);
        snap_put_str(&o, v->stores[i].name);
        snap_put(&o, (uint64_t)v->stores[i].latency_ms, 8);
    }
    for (uint32_t i = 0; i < counts[1]; i++) {
        snap_put_str(&o, v->products[i].sku);
        snap_put_str(&o, v->products[i].name);
    }
    snap_encode_items(&o, v, counts[1], counts[0], counts[2]);
    snap_encode_reservations(&o, v, counts[3]);
    snap_put(&o, hash_fnv1a(HASH_FNV_OFFSET, o.data, o.used), 8);
    SVC_ASSERT(o.used <= bound);
    *length_out = o.used;
    return 0;
}

/* ---- decoding (the body is external data: every read is bounded, every value checked) ---- */

struct snap_in {
    const unsigned char *data;
    size_t used;
    size_t length; /* without the checksum */
    bool bad;      /* a read past the end, or a value out of bounds */
    const char *why;
};

static void snap_fail(struct snap_in *in, const char *why)
{
    if (!in->bad) {
        in->bad = true;
        in->why = why;
    }
}

static uint64_t snap_get(struct snap_in *in, size_t bytes)
{
    if (in->bad || in->length - in->used < bytes) {
        snap_fail(in, "truncated");
        return 0;
    }
    uint64_t value = 0;
    for (size_t i = 0; i < bytes; i++) {
        value |= (uint64_t)in->data[in->used++] << (8 * i);
    }
    return value;
}

static int64_t snap_get_i64(struct snap_in *in)
{
    return (int64_t)snap_get(in, 8);
}

/* Copies a string of at most max bytes (no NUL inside; not empty when required) into out. */
static void snap_get_str(struct snap_in *in, char *out, size_t max, bool required)
{
    size_t length = (size_t)snap_get(in, 2);
    if (in->bad || length > max || in->length - in->used < length ||
        memchr(in->data + in->used, '\0', length) != NULL || (required && length == 0)) {
        snap_fail(in, "a string out of bounds");
        out[0] = '\0';
        return;
    }
    memcpy(out, in->data + in->used, length);
    out[length] = '\0';
    in->used += length;
}

struct snap_header {
    int64_t seq;
    int64_t applied_at_ms;
    uint64_t dropped;
    uint32_t counts[5]; /* stores, products, items, reservations, lines */
};

static void snap_decode_header(struct snap_in *in, const struct row_snapshot *row,
                               const struct projection_limits *l, struct snap_header *h)
{
    if (row->length < SNAP_HEADER_BYTES + SNAP_CHECKSUM_BYTES ||
        memcmp(row->body, SNAP_MAGIC, SNAP_MAGIC_BYTES) != 0) {
        snap_fail(in, "not a snapshot");
        return;
    }
    in->used = SNAP_MAGIC_BYTES;
    uint32_t format = (uint32_t)snap_get(in, 4);
    (void)snap_get(in, 4);
    h->seq = snap_get_i64(in);
    h->applied_at_ms = snap_get_i64(in);
    h->dropped = snap_get(in, 8);
    for (int i = 0; i < 5; i++) {
        h->counts[i] = (uint32_t)snap_get(in, 4);
    }
    (void)snap_get(in, 4);
    const uint32_t limits[5] = {l->stores, l->products, l->items, l->reservations, l->lines};
    for (int i = 0; i < 5; i++) {
        if (h->counts[i] > limits[i]) {
            snap_fail(in, "a count past its limit (the --max-* flags)");
        }
    }
    if (format != PROJ_SNAPSHOT_FORMAT || h->seq != row->seq || h->seq < 0) {
        snap_fail(in, "its header disagrees with its row");
    }
    struct snap_in tail = {row->body, in->length, row->length, false, NULL};
    uint64_t sum = snap_get(&tail, SNAP_CHECKSUM_BYTES);
    if (sum != hash_fnv1a(HASH_FNV_OFFSET, row->body, in->length)) {
        snap_fail(in, "its checksum does not match");
    }
}

static void snap_decode_catalog(struct snap_in *in, struct projection *v,
                                const struct snap_header *h)
{
    char id[PROJ_RESERVATION_ID_BYTES_MAX + SKU_BYTES_MAX + STORE_ID_BYTES_MAX + 1];
    char name[NAME_BYTES_MAX + 1];
    for (uint32_t i = 0; !in->bad && i < h->counts[0]; i++) {
        snap_get_str(in, id, STORE_ID_BYTES_MAX, true);
        snap_get_str(in, name, NAME_BYTES_MAX, false);
        int64_t latency_ms = snap_get_i64(in);
        if (!in->bad &&
            (latency_ms < 0 || projector__store_add(v, id, name, latency_ms) != (int32_t)i)) {
            snap_fail(in, "a store twice or out of bounds");
        }
    }
    for (uint32_t i = 0; !in->bad && i < h->counts[1]; i++) {
        snap_get_str(in, id, SKU_BYTES_MAX, true);
        snap_get_str(in, name, NAME_BYTES_MAX, false);
        if (!in->bad && projector__product_add(v, id, name) != (int32_t)i) {
            snap_fail(in, "a product twice");
        }
    }
}

static void snap_decode_items(struct snap_in *in, struct projection *v, const struct snap_header *h)
{
    for (uint32_t i = 0; !in->bad && i < h->counts[2]; i++) {
        uint32_t product = (uint32_t)snap_get(in, 4);
        uint32_t store = (uint32_t)snap_get(in, 4);
        struct projection_stock stock;
        stock.on_hand = snap_get_i64(in);
        stock.reserved = snap_get_i64(in);
        stock.version = snap_get_i64(in);
        stock.sold = snap_get_i64(in);
        int64_t at_ms = snap_get_i64(in);
        if (in->bad || product >= h->counts[1] || store >= h->counts[0] ||
            projector__item_find(v, product, store) >= 0) {
            snap_fail(in, "an item of no product or store, or twice");
            return;
        }
        if (stock.reserved < 0 || stock.reserved > stock.on_hand || stock.on_hand > ON_HAND_MAX ||
            stock.version < 1 || stock.sold < 0) {
            snap_fail(in, "an impossible item");
            return;
        }
        projector__item_set(v, product, store, &stock, at_ms);
        SVC_ASSERT(projector__item_find(v, product, store) == (int32_t)i);
    }
}

/* One reservation's fields after its id, and its lines; false when out of bounds. */
static bool snap_decode_reservation_row(struct snap_in *in, struct projection *v,
                                        const struct snap_header *h,
                                        struct projection_reservation *r, int32_t *status,
                                        int64_t *version, int64_t *updated_at_ms)
{
    snap_get_str(in, r->customer_id, CUSTOMER_ID_BYTES_MAX, false);
    r->store_index = (uint32_t)snap_get(in, 4);
    r->line_count = (uint32_t)snap_get(in, 4);
    *status = (int32_t)snap_get(in, 4);
    r->expires_at_ms = snap_get_i64(in);
    r->created_at_ms = snap_get_i64(in);
    *version = snap_get_i64(in);
    *updated_at_ms = snap_get_i64(in);
    r->line_first = v->line_count;
    if (in->bad || r->store_index >= h->counts[0] || *status < PROJECTOR_ACTIVE ||
        *status > PROJECTOR_EXPIRED || *version < 1 ||
        r->line_count > h->counts[4] - v->line_count) {
        return false;
    }
    for (uint32_t l = 0; l < r->line_count; l++) {
        uint32_t product = (uint32_t)snap_get(in, 4);
        int64_t qty = snap_get_i64(in);
        if (in->bad || product >= h->counts[1] || qty < 1) {
            return false;
        }
        v->lines[v->line_count++] = (struct projector_line){product, qty};
    }
    return true;
}

static void snap_decode_reservations(struct snap_in *in, struct projection *v,
                                     const struct snap_header *h)
{
    for (uint32_t i = 0; !in->bad && i < h->counts[3]; i++) {
        struct projection_reservation *r = &v->reservations[i];
        snap_get_str(in, r->id, PROJ_RESERVATION_ID_BYTES_MAX, true);
        uint32_t slot = 0;
        if (in->bad || projector__reservation_probe(v, r->id, &slot) >= 0) {
            snap_fail(in, "a reservation twice or out of bounds");
            return;
        }
        int32_t status = 0;
        int64_t version = 0;
        int64_t updated_at_ms = 0;
        bool ok = snap_decode_reservation_row(in, v, h, r, &status, &version, &updated_at_ms);
        if (!ok || in->bad) {
            snap_fail(in, "an impossible reservation");
            return;
        }
        projector__reservation_write(r, status, version, updated_at_ms);
        atomic_store_explicit(&v->reservation_hash[slot], i + 1, memory_order_release);
        atomic_store_explicit(&v->reservation_count, i + 1, memory_order_release);
    }
}

/* Decodes row into the empty projection v. True when every check passed; else v is left
 * partly filled (the caller resets it) and *why says what failed. */
static bool snap_decode(struct projection *v, const struct row_snapshot *row, const char **why)
{
    SVC_ASSERT(atomic_load(&v->applied_seq) == 0 && atomic_load(&v->product_count) == 0);
    struct snap_in in = {row->body, 0, 0, false, NULL};
    in.length = row->length >= SNAP_CHECKSUM_BYTES ? row->length - SNAP_CHECKSUM_BYTES : 0;
    struct snap_header h;
    memset(&h, 0, sizeof h);
    snap_decode_header(&in, row, &v->limits, &h);
    if (!in.bad) {
        snap_decode_catalog(&in, v, &h);
        snap_decode_items(&in, v, &h);
        snap_decode_reservations(&in, v, &h);
    }
    if (!in.bad && (in.used != in.length || v->line_count != h.counts[4])) {
        snap_fail(&in, "its rows do not fill it");
    }
    if (in.bad) {
        *why = in.why;
        return false;
    }
    atomic_store(&v->dropped, h.dropped);
    atomic_store(&v->applied_at_ms, h.applied_at_ms);
    atomic_store(&v->applied_seq, h.seq);
    return true;
}

/* ---- loading at start --------------------------------------------------------------------- */

struct snap_load {
    struct projection *v;
    struct store_reader *reader;
    int64_t log_seq_max;
    bool loaded;
    int64_t seq; /* the row's seq: the next try reads below it */
    int format;
};

static int snap_event_time(void *context, const struct row_event *row)
{
    int64_t *at_ms = context;
    *at_ms = row->occurred_at_ms;
    return 1; /* one row is all */
}

/* The log must hold the snapshot's last event, with the time the snapshot says. */
static bool snap_matches_log(struct snap_load *st, const char **why)
{
    int64_t seq = atomic_load(&st->v->applied_seq);
    if (seq > st->log_seq_max) {
        *why = "its seq is past the end of the event log";
        return false;
    }
    if (seq == 0) {
        return true;
    }
    int64_t at_ms = -1;
    int rc = store_reader_events(st->reader, seq - 1, NULL, NULL, 1, &at_ms, snap_event_time);
    if ((rc != 0 && rc != 1) || at_ms != atomic_load(&st->v->applied_at_ms)) {
        *why = "its last event is not the log's";
        return false;
    }
    return true;
}

static void snap_load_row(void *context, const struct row_snapshot *row)
{
    struct snap_load *st = context;
    st->seq = row->seq;
    st->format = row->format;
    const char *why = NULL;
    if (row->format != PROJ_SNAPSHOT_FORMAT) {
        log_warn("projector: snapshot at seq %" PRId64 " has format %d, this build reads %d;"
                 " ignored",
                 row->seq, row->format, PROJ_SNAPSHOT_FORMAT);
        return;
    }
    if (snap_decode(st->v, row, &why) && snap_matches_log(st, &why)) {
        st->loaded = true;
        return;
    }
    log_warn("projector: snapshot at seq %" PRId64 " ignored: %s", row->seq, why);
    projector__reset(st->v);
}

int projector_snapshot_load(struct projector *p, struct store *s, struct store_reader *reader)
{
    struct projection *v = atomic_load(&p->live);
    SVC_ASSERT(v != NULL && s != NULL && reader != NULL);
    SVC_ASSERT(atomic_load(&v->applied_seq) == 0); /* before the replay */
    struct snap_load st = {v, reader, 0, false, INT64_MAX, 0};
    int rc = store_reader_event_seq_max(reader, &st.log_seq_max);
    int64_t started_us = clock_mono_us();
    for (int tries = 0; rc == 0 && !st.loaded && tries < PROJ_SNAPSHOT_LOAD_TRIES; tries++) {
        int64_t below = st.seq;
        rc = store_snapshot_read(s, below, &st, snap_load_row);
        if (rc != 1) {
            break; /* none (left) */
        }
        rc = 0;
        SVC_ASSERT(st.seq < below);
    }
    if (rc < 0) {
        projector__reset(v);
        return rc;
    }
    if (st.loaded) {
        atomic_store(&p->snapshot_seq, st.seq);
        p->snapshot_tried_seq = st.seq;
        log_info("projector: loaded the snapshot at seq %" PRId64 " in %" PRId64 " us", st.seq,
                 clock_mono_us() - started_us);
    }
    SVC_ASSERT(st.loaded || atomic_load(&v->applied_seq) == 0);
    return 0;
}

/* ---- writing (the writer thread) ---------------------------------------------------------- */

int projector_snapshot_take(void *context, bool final, struct row_snapshot *out,
                            int64_t *keep_from_seq)
{
    struct projector *p = context;
    SVC_ASSERT(p != NULL && out != NULL && keep_from_seq != NULL);
    int64_t every = p->snapshot_every_events;
    int64_t live = projector_live_seq(p);
    bool due = every > 0 && live > p->snapshot_tried_seq &&
               (final || live - p->snapshot_tried_seq >= every);
    if (!due || atomic_load(&p->rebuilding)) {
        return 0; /* a rebuild swaps the live projection: the next boundary will do */
    }
    size_t length = 0;
    pthread_mutex_lock(&p->apply_mutex); /* no batch is applied while it is copied */
    struct projection *v = atomic_load(&p->live);
    int64_t seq = atomic_load(&v->applied_seq);
    int rc = snap_encode(p, v, &length);
    pthread_mutex_unlock(&p->apply_mutex);
    p->snapshot_tried_seq = seq; /* a failure is tried again SNAPSHOT_EVERY_EVENTS later */
    if (rc != 0) {
        log_warn("projector: no memory for a snapshot at seq %" PRId64, seq);
        return rc;
    }
    *out = (struct row_snapshot){seq, PROJ_SNAPSHOT_FORMAT, clock_wall_ms(), p->snapshot_buffer,
                                 length};
    *keep_from_seq = atomic_load(&p->snapshot_seq);
    SVC_ASSERT(*keep_from_seq <= seq);
    return 1;
}

void projector_snapshot_saved(void *context, const struct row_snapshot *row, int rc,
                              int64_t took_us)
{
    struct projector *p = context;
    SVC_ASSERT(row->body == p->snapshot_buffer); /* the one projector_snapshot_take made */
    if (rc != 0) {
        log_warn("projector: the snapshot at seq %" PRId64 " was not written", row->seq);
        return;
    }
    atomic_store(&p->snapshot_seq, row->seq);
    atomic_fetch_add(&p->snapshots_written, 1);
    atomic_store(&p->snapshot_bytes, (int64_t)row->length);
    log_info("projector: snapshot at seq %" PRId64 " written (%zu bytes, %" PRId64 " us)", row->seq,
             row->length, took_us);
}
