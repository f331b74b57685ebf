/*
 * store_sqlite_reader.c - the read-only handles of the SQLite backend: one connection per
 * thread that reads (the I/O threads' order and idempotency lookups, the event log for the
 * projector's replays and the audit, the audit's stock rows).
 *
 * Each handle has its own read-only connection with every statement prepared at open; WAL
 * lets it read while the writer commits. A statement is always reset before a call returns,
 * so a handle never holds a read transaction between calls (that would pin the WAL and keep
 * the handle on an old snapshot): what a caller keeps past a row's callback is copied into
 * the handle's buffers, allocated at open and grown only for an outsized row, whose failure
 * to grow answers SVC_ESTORAGE_UNAVAILABLE like any other storage failure.
 *
 * This file is not the writer's handle (store_sqlite.c) and has no wait: no other process
 * writes the file. Read store_pg.h next.
 */
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "store/store.h"
#include "store/store_sqlite.h"
#include "store/store_sqlite_internal.h"

/* The reader's statements, prepared at open (STYLE 24). */
#define STORE_SQLITE_READER_STMT_MAP(X)                                                      \
    X(ORDER, "SELECT customer_id, store_id, status, lines, history, created_at_ms,"          \
             " COALESCE(reservation_seq, 0), COALESCE(expires_at_ms, 0),"                    \
             " COALESCE(updated_at_ms, created_at_ms) FROM orders WHERE order_seq = ?1")     \
    X(RESERVATION, "SELECT r.store_id, r.customer_id, r.status, r.expires_at_ms, r.version," \
                   " r.created_at_ms, r.updated_at_ms, l.sku, l.qty FROM reservations r"     \
                   " LEFT JOIN reservation_lines l ON l.reservation_seq = r.reservation_seq" \
                   " WHERE r.reservation_seq = ?1 ORDER BY l.line_no")                       \
    X(STAGE_OFFSET, "SELECT event_seq FROM worker_offsets WHERE stage = ?1")                 \
    X(RELAY_OFFSET, "SELECT seq FROM relay_offsets WHERE name = ?1")                         \
    X(PAYMENTS_IN_DOUBT, "SELECT order_seq, reservation_seq, pay_attempts,"                  \
                         " EXISTS (SELECT 1 FROM dead_letters d WHERE d.stage = 'payment'"   \
                         " AND d.order_seq = reservations.order_seq) FROM reservations"      \
                         " WHERE status = 'ACTIVE' AND order_status = 'PAYING'"              \
                         " ORDER BY order_seq")                                              \
    X(DEAD_LETTERS, "SELECT * FROM (SELECT stage, order_seq, reservation_seq, error,"        \
                    " attempts, first_failed_at_ms, last_failed_at_ms, -1 AS stream_offset"  \
                    " FROM dead_letters WHERE (?1 IS NULL OR stage = ?1) UNION ALL"          \
                    " SELECT stage, 0, 0, error, attempts, first_failed_at_ms,"              \
                    " last_failed_at_ms, stream_offset FROM stream_dead_letters"             \
                    " WHERE (?1 IS NULL OR stage = ?1) AND replayed_at_ms IS NULL)"          \
                    " ORDER BY order_seq, stream_offset, stage LIMIT ?2")                    \
    X(STREAM_MESSAGES, "SELECT stage, stream_offset, message_id, message_type, principal,"   \
                       " body FROM stream_dead_letters WHERE stage = ?1"                     \
                       " AND replayed_at_ms IS NULL ORDER BY stream_offset LIMIT ?2")        \
    X(EVENTS, "SELECT seq, event_type, event_version, occurred_at_ms, store_id, sku, data"   \
              " FROM events WHERE seq > ?1 AND (?2 IS NULL OR store_id = ?2)"                \
              " AND (?3 IS NULL OR sku = ?3) ORDER BY seq LIMIT ?4")                         \
    X(EVENTS_OF, "SELECT seq, event_type, event_version, occurred_at_ms, store_id, sku,"     \
                 " data FROM events WHERE seq > ?1 AND seq <= ?2"                            \
                 " AND event_type IN (?3, ?4) ORDER BY seq LIMIT ?5")                        \
    X(SEQ_MAX, "SELECT COALESCE(MAX(seq), 0) FROM events")                                   \
    X(IDEM, "SELECT status, problem, body, created_at_ms, location FROM idempotency"         \
            " WHERE principal = ?1 AND idem_key = ?2")                                       \
    X(ITEMS, "SELECT store_id, sku, on_hand, reserved FROM stock_items")                     \
    X(BEGIN, "BEGIN DEFERRED")                                                               \
    X(COMMIT, "COMMIT")

enum sqlite_reader_stmt {
#define STORE_SQLITE_READER_ENUM_(name, sql) STORE_SQLITE_READER_##name,
    STORE_SQLITE_READER_STMT_MAP(STORE_SQLITE_READER_ENUM_)
#undef STORE_SQLITE_READER_ENUM_
        STORE_SQLITE_READER_COUNT
};

static const char *const sqlite_reader_sql[STORE_SQLITE_READER_COUNT] = {
#define STORE_SQLITE_READER_SQL_(name, sql) sql,
    STORE_SQLITE_READER_STMT_MAP(STORE_SQLITE_READER_SQL_)
#undef STORE_SQLITE_READER_SQL_
};

/* How long a reader waits for a lock (only a checkpoint that restarts the WAL takes one a
 * reader must wait for, and briefly). */
#define STORE_SQLITE_READER_BUSY_MS 1000

/* A buffer the handle owns; what the last call returned points into it. */
struct sqlite_reader_buffer {
    char *data; /* owned */
    size_t size;
};

struct sqlite_reader {
    struct store_reader base;                       /* first: the backend's operations */
    sqlite3 *db;                                    /* owned, read-only */
    sqlite3_stmt *stmts[STORE_SQLITE_READER_COUNT]; /* owned, prepared at open */
    struct sqlite_reader_buffer order_text;         /* the last order's five strings */
    struct sqlite_reader_buffer reservation_text;   /* the last reservation's strings */
    struct sqlite_reader_buffer idem_body;          /* the last idempotency record's body */
    char idem_location[REPLY_LOCATION_BYTES_MAX];   /* and its Location */
    sqlite3 *writable;      /* owned: the read-write connection, opened on first write */
    sqlite3_stmt *save;     /* owned, on writable (prepared on first use): the relay's upsert */
    sqlite3_stmt *replayed; /* owned, on writable (prepared on first use): the replay's mark */
};

/* The mark of replayed stream dead letters (?2: a JSON array of offsets). */
#define STORE_SQLITE_READER_REPLAYED_SQL                                                       \
    "UPDATE stream_dead_letters SET replayed_at_ms = ?3 WHERE stage = ?1 AND stream_offset IN" \
    " (SELECT value FROM json_each(?2)) AND replayed_at_ms IS NULL"

/* The relay's upsert; it only moves a position forward. */
#define STORE_SQLITE_READER_RELAY_SAVE_SQL                                                         \
    "INSERT INTO relay_offsets (name, seq, updated_at_ms) VALUES (?1, ?2, ?3)"                     \
    " ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at_ms = excluded.updated_at_ms" \
    " WHERE relay_offsets.seq < excluded.seq"

/* The strings of a reservation the writer wrote, each with its terminator: storeId,
 * customerId, status and its skus. */
#define SQLITE_READER_STATUS_BYTES_MAX 16
#define SQLITE_READER_RESERVATION_TEXT_BYTES                                               \
    (STORE_ID_BYTES_MAX + 1 + CUSTOMER_ID_BYTES_MAX + 1 + SQLITE_READER_STATUS_BYTES_MAX + \
     CMD_LINES_MAX * (SKU_BYTES_MAX + 1))

static void sqlite_reader_close(struct store_reader *base);
static const struct store_reader_ops sqlite_reader_ops;

/* Makes b at least size bytes. 0, or SVC_ESTORAGE_UNAVAILABLE when memory is short (a request
 * path: an answer, never an assertion). */
static int sqlite_reader_reserve(struct sqlite_reader_buffer *b, size_t size)
{
    SVC_ASSERT(size >= 1);
    if (size <= b->size) {
        return 0;
    }
    char *grown = realloc(b->data, size); /* an outsized row: grows to the largest once */
    if (grown == NULL) {
        log_error("sqlite reader: out of memory for a %zu-byte row", size);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    b->data = grown;
    b->size = size;
    SVC_ASSERT(b->size >= size);
    return 0;
}

static int sqlite_reader_prepare(struct sqlite_reader *r)
{
    SVC_ASSERT(r->db != NULL);
    for (int i = 0; i < STORE_SQLITE_READER_COUNT; i++) {
        SVC_ASSERT(r->stmts[i] == NULL);
        if (sqlite3_prepare_v3(r->db, sqlite_reader_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                               &r->stmts[i], NULL) != SQLITE_OK) {
            return store_sqlite_fail(r->db, sqlite_reader_sql[i]);
        }
    }
    /* The usual rows fit from the start: the request path does not allocate. */
    int rc = sqlite_reader_reserve(&r->order_text, READ_BODY_BYTES_MAX);
    if (rc == 0) {
        rc = sqlite_reader_reserve(&r->reservation_text, SQLITE_READER_RESERVATION_TEXT_BYTES);
    }
    return rc == 0 ? sqlite_reader_reserve(&r->idem_body, REPLY_BODY_BYTES_MAX + 1) : rc;
}

/* Opens a read-only handle (see store_sqlite.h). */
int store_sqlite_reader_open(struct store_reader **out, const char *path)
{
    SVC_ASSERT(out != NULL && path != NULL);
    struct sqlite_reader *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    r->base.ops = &sqlite_reader_ops;
    store_sqlite_pcache_install(); /* before SQLite's first connection in this process */
    int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
    int rc = 0;
    if (sqlite3_open_v2(path, &r->db, flags, NULL) != SQLITE_OK) {
        rc = store_sqlite_fail(r->db, path);
    } else {
        sqlite3_busy_timeout(r->db, STORE_SQLITE_READER_BUSY_MS);
        rc = sqlite_reader_prepare(r);
    }
    if (rc != 0) {
        sqlite_reader_close(&r->base);
        return rc;
    }
    *out = &r->base;
    SVC_ASSERT((*out)->ops == &sqlite_reader_ops);
    return 0;
}

static void sqlite_reader_close(struct store_reader *base)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    if (r == NULL) {
        return;
    }
    SVC_ASSERT(r->base.ops == &sqlite_reader_ops);
    for (int i = 0; i < STORE_SQLITE_READER_COUNT; i++) {
        sqlite3_finalize(r->stmts[i]);
    }
    sqlite3_close(r->db);
    sqlite3_finalize(r->save);
    sqlite3_finalize(r->replayed);
    sqlite3_close(r->writable);
    free(r->order_text.data);
    free(r->reservation_text.data);
    free(r->idem_body.data);
    free(r);
}

/* Copies the order on stmt's current row into the handle's buffer and points out at it. */
static int sqlite_reader_order_copy(struct sqlite_reader *r, sqlite3_stmt *stmt,
                                    struct store_order_row *out)
{
    enum { TEXTS = 5 };
    const char *texts[TEXTS];
    size_t lengths[TEXTS];
    size_t total = 0;
    for (int i = 0; i < TEXTS; i++) {
        texts[i] = store_sqlite_column_text(stmt, i);
        lengths[i] = (size_t)sqlite3_column_bytes(stmt, i);
        total += lengths[i] + 1;
    }
    int rc = sqlite_reader_reserve(&r->order_text, total);
    if (rc != 0) {
        return rc;
    }
    char *copies[TEXTS];
    size_t used = 0;
    for (int i = 0; i < TEXTS; i++) {
        copies[i] = r->order_text.data + used;
        memcpy(copies[i], texts[i], lengths[i]);
        copies[i][lengths[i]] = '\0';
        used += lengths[i] + 1;
    }
    SVC_ASSERT(used == total && used <= r->order_text.size);
    *out = (struct store_order_row){copies[0],
                                    copies[1],
                                    copies[2],
                                    copies[3],
                                    copies[4],
                                    sqlite3_column_int64(stmt, 5),
                                    sqlite3_column_int64(stmt, 6),
                                    sqlite3_column_int64(stmt, 7),
                                    sqlite3_column_int64(stmt, 8)};
    return 1;
}

static int sqlite_reader_order(struct store_reader *base, int64_t order_seq,
                               struct store_order_row *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(order_seq >= 1);
    SVC_ASSERT(out != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_ORDER];
    sqlite3_bind_int64(stmt, 1, order_seq);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        rc = sqlite_reader_order_copy(r, stmt, out);
    } else if (step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "order lookup");
    }
    sqlite3_reset(stmt);
    return rc;
}

/* Appends the text of stmt's column to the handle's reservation buffer at *used; its offset,
 * or -1 when memory is short. */
static ptrdiff_t sqlite_reader_reservation_text(struct sqlite_reader *r, sqlite3_stmt *stmt,
                                                int column, size_t *used)
{
    const char *text = store_sqlite_column_text(stmt, column);
    size_t length = (size_t)sqlite3_column_bytes(stmt, column);
    if (sqlite_reader_reserve(&r->reservation_text, *used + length + 1) != 0) {
        return -1;
    }
    size_t at = *used;
    memcpy(r->reservation_text.data + at, text, length);
    r->reservation_text.data[at + length] = '\0';
    *used = at + length + 1;
    SVC_ASSERT(*used <= r->reservation_text.size);
    return (ptrdiff_t)at;
}

/* Copies the reservation's rows (one per line, the reservation's columns on each) into the
 * handle's buffer; the buffer may grow meanwhile, so strings are kept as offsets until the
 * last row. 1, or SVC_ESTORAGE_UNAVAILABLE. */
static int sqlite_reader_reservation_copy(struct sqlite_reader *r, sqlite3_stmt *stmt,
                                          int64_t reservation_seq,
                                          struct store_reservation_row *out)
{
    size_t used = 0;
    ptrdiff_t heads[3];
    for (int i = 0; i < 3; i++) {
        heads[i] = sqlite_reader_reservation_text(r, stmt, i, &used);
        if (heads[i] < 0) {
            return SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    out->expires_at_ms = sqlite3_column_int64(stmt, 3);
    out->version = sqlite3_column_int64(stmt, 4);
    out->created_at_ms = sqlite3_column_int64(stmt, 5);
    out->updated_at_ms = sqlite3_column_int64(stmt, 6);
    out->line_count = 0;
    ptrdiff_t skus[CMD_LINES_MAX];
    int step = SQLITE_ROW;
    for (; step == SQLITE_ROW; step = sqlite3_step(stmt)) {
        if (sqlite3_column_type(stmt, 7) == SQLITE_NULL) {
            continue; /* a reservation without lines: refused below */
        }
        if (out->line_count == CMD_LINES_MAX) {
            log_error("sqlite reader: reservation res_%" PRId64 " has more than %d lines",
                      reservation_seq, CMD_LINES_MAX);
            return SVC_ESTORAGE_UNAVAILABLE;
        }
        skus[out->line_count] = sqlite_reader_reservation_text(r, stmt, 7, &used);
        if (skus[out->line_count] < 0) {
            return SVC_ESTORAGE_UNAVAILABLE;
        }
        out->lines[out->line_count++].qty = sqlite3_column_int64(stmt, 8);
    }
    if (step != SQLITE_DONE) {
        return store_sqlite_fail(r->db, "reservation lookup");
    }
    if (out->line_count == 0) {
        log_error("sqlite reader: reservation res_%" PRId64 " has no lines", reservation_seq);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    const char *text = r->reservation_text.data; /* it will not move any more */
    out->store_id = text + heads[0];
    out->customer_id = text + heads[1];
    out->status = text + heads[2];
    for (uint32_t i = 0; i < out->line_count; i++) {
        out->lines[i].sku = text + skus[i];
    }
    return 1;
}

static int sqlite_reader_reservation(struct store_reader *base, int64_t reservation_seq,
                                     struct store_reservation_row *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(reservation_seq >= 1);
    SVC_ASSERT(out != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_RESERVATION];
    sqlite3_bind_int64(stmt, 1, reservation_seq);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        rc = sqlite_reader_reservation_copy(r, stmt, reservation_seq, out);
    } else if (step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "reservation lookup");
    }
    sqlite3_reset(stmt);
    return rc;
}

/* Streams the rows stmt (bound, of the events columns in seq order after since_seq) yields to
 * each_event and resets it; *count_out: how many. */
static int sqlite_reader_stream_events(
    struct sqlite_reader *r, sqlite3_stmt *stmt, int64_t since_seq, void *context,
    int (*each_event)(void *context, const struct row_event *row), int *count_out)
{
    int rc = 0;
    int step = SQLITE_ROW;
    int64_t last_seq = since_seq;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct row_event row;
        row.seq = sqlite3_column_int64(stmt, 0);
        row.event_type = store_sqlite_column_text(stmt, 1);
        row.event_version = sqlite3_column_int(stmt, 2);
        row.occurred_at_ms = sqlite3_column_int64(stmt, 3);
        row.store_id = (const char *)sqlite3_column_text(stmt, 4); /* NULL stays NULL */
        row.sku = (const char *)sqlite3_column_text(stmt, 5);
        row.data_json = store_sqlite_column_text(stmt, 6);
        SVC_ASSERT(row.seq > last_seq); /* in seq order, after since_seq */
        last_seq = row.seq;
        (*count_out)++;
        rc = each_event(context, &row);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "read events");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

static int sqlite_reader_events(struct store_reader *base, int64_t since_seq, const char *store_id,
                                const char *sku, int limit, void *context,
                                int (*each_event)(void *context, const struct row_event *row))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(since_seq >= 0);
    SVC_ASSERT(limit >= 1);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_EVENTS];
    sqlite3_bind_int64(stmt, 1, since_seq);
    store_sqlite_bind_text(stmt, 2, store_id);
    store_sqlite_bind_text(stmt, 3, sku);
    sqlite3_bind_int(stmt, 4, limit);
    int count = 0;
    return sqlite_reader_stream_events(r, stmt, since_seq, context, each_event, &count);
}

static int sqlite_reader_events_of(struct store_reader *base, int64_t since_seq, int64_t until_seq,
                                   const char *const *types, int type_count, int limit,
                                   void *context,
                                   int (*each_event)(void *context, const struct row_event *row),
                                   int *count_out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(type_count >= 1 && type_count <= STORE_EVENT_TYPES_MAX);
    _Static_assert(STORE_EVENT_TYPES_MAX == 2, "the statement names ?3 and ?4");
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_EVENTS_OF];
    sqlite3_bind_int64(stmt, 1, since_seq);
    sqlite3_bind_int64(stmt, 2, until_seq);
    store_sqlite_bind_text(stmt, 3, types[0]);
    store_sqlite_bind_text(stmt, 4, type_count > 1 ? types[1] : NULL); /* NULL matches none */
    sqlite3_bind_int(stmt, 5, limit);
    return sqlite_reader_stream_events(r, stmt, since_seq, context, each_event, count_out);
}

static int sqlite_reader_items(struct store_reader *base, void *context,
                               int (*each_item)(void *context, const char *store_id,
                                                const char *sku, int64_t on_hand, int64_t reserved))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(each_item != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_ITEMS];
    int rc = 0;
    int step = SQLITE_ROW;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        int64_t on_hand = sqlite3_column_int64(stmt, 2);
        int64_t reserved = sqlite3_column_int64(stmt, 3);
        SVC_ASSERT(reserved >= 0 && reserved <= on_hand); /* the table's CHECKs */
        rc = each_item(context, store_sqlite_column_text(stmt, 0),
                       store_sqlite_column_text(stmt, 1), on_hand, reserved);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "read stock items");
    }
    sqlite3_reset(stmt);
    return rc;
}

static int sqlite_reader_event_seq_max(struct store_reader *base, int64_t *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(out != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_SEQ_MAX];
    int rc = 0;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
        *out = sqlite3_column_int64(stmt, 0);
        SVC_ASSERT(*out >= 0);
    } else {
        rc = store_sqlite_fail(r->db, "read the event seq");
    }
    sqlite3_reset(stmt);
    return rc;
}

/* Copies the record on stmt's current row into the handle's buffer and points out at it. */
static int sqlite_reader_idem_copy(struct sqlite_reader *r, sqlite3_stmt *stmt,
                                   struct store_idem_view *out)
{
    const char *body = store_sqlite_column_text(stmt, 2);
    size_t length = (size_t)sqlite3_column_bytes(stmt, 2);
    int rc = sqlite_reader_reserve(&r->idem_body, length + 1);
    if (rc != 0) {
        return rc;
    }
    memcpy(r->idem_body.data, body, length);
    r->idem_body.data[length] = '\0';
    out->status = sqlite3_column_int(stmt, 0);
    out->problem = sqlite3_column_int(stmt, 1) != 0;
    out->body = r->idem_body.data;
    out->body_length = length;
    out->created_at_ms = sqlite3_column_int64(stmt, 3);
    const char *location = (const char *)sqlite3_column_text(stmt, 4);
    size_t location_length = (size_t)sqlite3_column_bytes(stmt, 4);
    out->location = NULL; /* none, or longer than the writer writes one */
    if (location != NULL && location_length < sizeof r->idem_location) {
        memcpy(r->idem_location, location, location_length + 1);
        out->location = r->idem_location;
    }
    SVC_ASSERT(out->status >= 100 && out->status <= 599); /* as the writer wrote it */
    return 1;
}

static int sqlite_reader_idem(struct store_reader *base, const char *principal, const char *key,
                              struct store_idem_view *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(principal != NULL && key != NULL);
    SVC_ASSERT(out != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_IDEM];
    sqlite3_bind_text(stmt, 1, principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 2, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(stmt);
    int rc = 0;
    if (step == SQLITE_ROW) {
        rc = sqlite_reader_idem_copy(r, stmt, out);
    } else if (step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "find idempotency record");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

/* A read transaction: in WAL mode every read in it sees the snapshot of its first read. */
static int sqlite_reader_snapshot_begin(struct store_reader *base)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(sqlite3_get_autocommit(r->db)); /* no snapshot open already */
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_BEGIN];
    int step = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    return step == SQLITE_DONE ? 0 : store_sqlite_fail(r->db, "begin a read snapshot");
}

static int sqlite_reader_snapshot_end(struct store_reader *base)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    if (sqlite3_get_autocommit(r->db)) {
        return SVC_ESTORAGE_UNAVAILABLE; /* the begin failed: there was no snapshot */
    }
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_COMMIT];
    int step = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    int rc = step == SQLITE_DONE ? 0 : store_sqlite_fail(r->db, "end a read snapshot");
    SVC_ASSERT(rc != 0 || sqlite3_get_autocommit(r->db));
    return rc;
}

static int sqlite_reader_stage_offset(struct store_reader *base, const char *stage, int64_t *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(stage != NULL && out != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_STAGE_OFFSET];
    sqlite3_bind_text(stmt, 1, stage, -1, SQLITE_STATIC);
    int step = sqlite3_step(stmt);
    int rc = 0;
    *out = step == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "stage offset");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

static int sqlite_reader_relay_offset(struct store_reader *base, const char *name, int64_t *out)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(name != NULL && out != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_RELAY_OFFSET];
    sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(stmt);
    int rc = 0;
    *out = step == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
    if (step != SQLITE_ROW && step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "relay offset");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

/* Prepares *stmt (sql) on the read-write connection of the reader's writes, opening it on
 * the reader's file first if needed (WAL: it waits for the writer's transaction like the
 * checkpointer does, for at most the busy timeout). */
static int sqlite_reader_writable(struct sqlite_reader *r, sqlite3_stmt **stmt, const char *sql)
{
    if (r->writable == NULL) {
        SVC_ASSERT(r->save == NULL && r->replayed == NULL);
        const char *path = sqlite3_db_filename(r->db, "main");
        SVC_ASSERT(path != NULL && path[0] != '\0');
        if (sqlite3_open_v2(path, &r->writable, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                            NULL) != SQLITE_OK) {
            int rc = store_sqlite_fail(r->writable, path);
            sqlite3_close(r->writable);
            r->writable = NULL;
            return rc;
        }
        sqlite3_busy_timeout(r->writable, STORE_SQLITE_READER_BUSY_MS);
    }
    if (*stmt == NULL && sqlite3_prepare_v3(r->writable, sql, -1, SQLITE_PREPARE_PERSISTENT, stmt,
                                            NULL) != SQLITE_OK) {
        *stmt = NULL;
        return store_sqlite_fail(r->writable, sql);
    }
    SVC_ASSERT(r->writable != NULL && *stmt != NULL);
    return 0;
}

static int sqlite_reader_relay_offset_save(struct store_reader *base, const char *name, int64_t seq,
                                           int64_t at_ms)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(name != NULL && seq >= 0);
    int rc = sqlite_reader_writable(r, &r->save, STORE_SQLITE_READER_RELAY_SAVE_SQL);
    if (rc != 0) {
        return rc;
    }
    SVC_ASSERT(r->save != NULL);
    sqlite3_bind_text(r->save, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(r->save, 2, seq);
    sqlite3_bind_int64(r->save, 3, at_ms);
    if (sqlite3_step(r->save) != SQLITE_DONE) {
        rc = store_sqlite_fail(r->writable, "save the relay offset");
    }
    sqlite3_reset(r->save);
    sqlite3_clear_bindings(r->save);
    return rc;
}

/* Column i of stmt as bytes (a blob, NUL-terminated by SQLite like any text), or NULL. */
static const char *sqlite_reader_bytes(sqlite3_stmt *stmt, int i, size_t *length)
{
    const char *bytes = NULL;
    if (sqlite3_column_type(stmt, i) != SQLITE_NULL) {
        bytes = (const char *)sqlite3_column_text(stmt, i); /* "" for an empty blob */
    }
    *length = bytes != NULL ? (size_t)sqlite3_column_bytes(stmt, i) : 0;
    return bytes;
}

static int sqlite_reader_stream_messages(struct store_reader *base, const char *stage, int limit,
                                         void *context,
                                         int (*each)(void *context,
                                                     const struct store_stream_message_row *row))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(stage != NULL && each != NULL && limit >= 1);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_STREAM_MESSAGES];
    sqlite3_bind_text(stmt, 1, stage, -1, SQLITE_STATIC);
    sqlite3_bind_int(stmt, 2, limit);
    int rc = 0;
    int step = SQLITE_DONE;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        size_t lengths[4];
        const char *parts[4];
        for (int p = 0; p < 4; p++) {
            parts[p] = sqlite_reader_bytes(stmt, 2 + p, &lengths[p]);
        }
        struct store_stream_message_row row = {(const char *)sqlite3_column_text(stmt, 0),
                                               sqlite3_column_int64(stmt, 1),
                                               parts[0],
                                               parts[1],
                                               parts[2],
                                               parts[3],
                                               lengths[3]};
        SVC_ASSERT(row.stage != NULL && row.stream_offset >= 0);
        SVC_ASSERT(lengths[0] <= DLT_MESSAGE_ID_BYTES_MAX &&
                   lengths[1] <= DLT_MESSAGE_TYPE_BYTES_MAX);
        SVC_ASSERT(lengths[2] <= DLT_MESSAGE_PRINCIPAL_BYTES_MAX);
        SVC_ASSERT(lengths[3] <= DLT_MESSAGE_BODY_BYTES_MAX);
        rc = each(context, &row);
    }
    if (rc == 0 && step != SQLITE_DONE && step != SQLITE_ROW) {
        rc = store_sqlite_fail(r->db, "stream dead letters");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

static int sqlite_reader_stream_replayed(struct store_reader *base, const char *stage,
                                         const int64_t *offsets, size_t count, int64_t at_ms)
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(stage != NULL && count >= 1 && count <= DLT_REPLAY_MESSAGES_MAX);
    int rc = sqlite_reader_writable(r, &r->replayed, STORE_SQLITE_READER_REPLAYED_SQL);
    if (rc != 0) {
        return rc;
    }
    char list[DLT_REPLAY_MESSAGES_MAX * 21 + 2]; /* [n,n,...]: 20 digits and a comma each */
    size_t used = 0;
    list[used++] = '[';
    for (size_t i = 0; i < count; i++) {
        int n =
            snprintf(list + used, sizeof list - used, "%s%" PRId64, i > 0 ? "," : "", offsets[i]);
        SVC_ASSERT(n > 0 && (size_t)n < sizeof list - used);
        used += (size_t)n;
    }
    list[used++] = ']';
    SVC_ASSERT(used < sizeof list);
    sqlite3_bind_text(r->replayed, 1, stage, -1, SQLITE_STATIC);
    sqlite3_bind_text(r->replayed, 2, list, (int)used, SQLITE_STATIC);
    sqlite3_bind_int64(r->replayed, 3, at_ms);
    if (sqlite3_step(r->replayed) != SQLITE_DONE) {
        rc = store_sqlite_fail(r->writable, "mark stream dead letters replayed");
    }
    sqlite3_reset(r->replayed);
    sqlite3_clear_bindings(r->replayed);
    return rc;
}

static int sqlite_reader_payments_in_doubt(struct store_reader *base, void *context,
                                           int (*each)(void *context,
                                                       const struct store_payment_row *row))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(each != NULL);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_PAYMENTS_IN_DOUBT];
    int rc = 0;
    int step = SQLITE_DONE;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct store_payment_row row = {
            sqlite3_column_int64(stmt, 0), sqlite3_column_int64(stmt, 1),
            sqlite3_column_int64(stmt, 2), sqlite3_column_int64(stmt, 3) != 0};
        SVC_ASSERT(row.order_seq >= 1 && row.reservation_seq >= 1);
        rc = each(context, &row);
    }
    if (rc == 0 && step != SQLITE_DONE) {
        rc = store_sqlite_fail(r->db, "payments in doubt");
    }
    sqlite3_reset(stmt);
    return rc;
}

static int
sqlite_reader_dead_letters(struct store_reader *base, const char *stage, int limit, void *context,
                           int (*each)(void *context, const struct store_dead_letter_row *row))
{
    struct sqlite_reader *r = (struct sqlite_reader *)base;
    SVC_ASSERT(each != NULL && limit >= 1);
    sqlite3_stmt *stmt = r->stmts[STORE_SQLITE_READER_DEAD_LETTERS];
    if (stage != NULL) {
        sqlite3_bind_text(stmt, 1, stage, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int(stmt, 2, limit);
    int rc = 0;
    int step = SQLITE_DONE;
    while (rc == 0 && (step = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct store_dead_letter_row row = {(const char *)sqlite3_column_text(stmt, 0),
                                            sqlite3_column_int64(stmt, 1),
                                            sqlite3_column_int64(stmt, 2),
                                            (const char *)sqlite3_column_text(stmt, 3),
                                            sqlite3_column_int64(stmt, 4),
                                            sqlite3_column_int64(stmt, 5),
                                            sqlite3_column_int64(stmt, 6),
                                            sqlite3_column_int64(stmt, 7)};
        SVC_ASSERT(row.stage != NULL && row.error != NULL);
        SVC_ASSERT(row.order_seq >= 1 || row.stream_offset >= 0);
        rc = each(context, &row);
    }
    if (rc == 0 && step != SQLITE_DONE && step != SQLITE_ROW) {
        rc = store_sqlite_fail(r->db, "dead letters");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return rc;
}

static const struct store_reader_ops sqlite_reader_ops = {
    .name = "sqlite",
    .close = sqlite_reader_close,
    .order = sqlite_reader_order,
    .reservation = sqlite_reader_reservation,
    .events = sqlite_reader_events,
    .items = sqlite_reader_items,
    .event_seq_max = sqlite_reader_event_seq_max,
    .events_of = sqlite_reader_events_of,
    .idem = sqlite_reader_idem,
    .wait = NULL, /* no other writer to follow */
    .snapshot_begin = sqlite_reader_snapshot_begin,
    .snapshot_end = sqlite_reader_snapshot_end,
    .stage_offset = sqlite_reader_stage_offset,
    .relay_offset = sqlite_reader_relay_offset,
    .relay_offset_save = sqlite_reader_relay_offset_save,
    .payments_in_doubt = sqlite_reader_payments_in_doubt,
    .dead_letters = sqlite_reader_dead_letters,
    .stream_messages = sqlite_reader_stream_messages,
    .stream_replayed = sqlite_reader_stream_replayed,
    .lease = NULL, /* one process by nature: its workers always hold their stages */
};
