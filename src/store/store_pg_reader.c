/*
 * store_pg_reader.c - the read-only handles of the PostgreSQL backend: one connection per
 * thread that reads (orders by id, the event log, idempotency lookups, the audit's stock rows)
 * and the follower's LISTEN stockd_events, nonblocking with a deadline per read
 * (STORE_PG_READ_TIMEOUT_MS), so that a PostgreSQL that stops answering costs an I/O thread at
 * most that long. A broken connection is dropped; the next call reconnects (store_pg_conn.c),
 * so reads come back by themselves after PostgreSQL restarts.
 *
 * A reader finds out that its session died (PostgreSQL restarted, the session was terminated)
 * only when it uses it, and an I/O thread may not have read for a while. So a read that finds
 * its session gone - not a deadline that passed, not an error of the statement - reconnects at
 * once and runs once more, and a reader told about the writer's recoveries
 * (store_reader_watch_recoveries) replaces its connection before its next read when the count
 * moved. Neither happens inside a snapshot: a read on another session would be outside it, so
 * the snapshot fails instead (snapshot_end), and the next one begins on a fresh session.
 *
 * This file is not the writer's handle (store_pg.c) and shares no operations table with it.
 * Read schema.h next.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "base/svc_limits.h"
#include "base/text.h"
#include "store/store.h"
#include "store/store_pg.h"
#include "store/store_pg_conn.h"

/* The database's clock in ms: every instance's lease is timed by the one clock. */
#define PG_READER_NOW_MS "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
/* A lease statement's answer: the row it wrote (held), else the row as it is (not held). */
#define PG_READER_LEASE_ANSWER                                                            \
    "SELECT holder, token, 1 FROM t UNION ALL SELECT holder, token, 0 FROM worker_leases" \
    " WHERE stage = $1 AND NOT EXISTS (SELECT 1 FROM t)"

#define PG_READER_STMT_MAP(X)                                                                  \
    X(ORDER, "SELECT customer_id, store_id, status, lines, history, created_at_ms,"            \
             " COALESCE(reservation_seq, 0), COALESCE(expires_at_ms, 0),"                      \
             " COALESCE(updated_at_ms, created_at_ms) FROM orders WHERE order_seq = $1")       \
    X(RESERVATION, "SELECT r.store_id, r.customer_id, r.status, r.expires_at_ms, r.version,"   \
                   " r.created_at_ms, r.updated_at_ms, l.sku, l.qty FROM reservations r"       \
                   " LEFT JOIN reservation_lines l ON l.reservation_seq = r.reservation_seq"   \
                   " WHERE r.reservation_seq = $1 ORDER BY l.line_no LIMIT $2")                \
    X(STAGE_OFFSET, "SELECT event_seq FROM worker_offsets WHERE stage = $1")                   \
    X(RELAY_OFFSET, "SELECT seq FROM relay_offsets WHERE name = $1")                           \
    X(RELAY_OFFSET_SAVE, "INSERT INTO relay_offsets (name, seq, updated_at_ms)"                \
                         " VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE"                   \
                         " SET seq = excluded.seq, updated_at_ms = excluded.updated_at_ms"     \
                         " WHERE relay_offsets.seq < excluded.seq")                            \
    X(STREAM_MESSAGES, "SELECT stage, stream_offset, encode(message_id, 'hex'),"               \
                       " encode(message_type, 'hex'), encode(principal, 'hex'),"               \
                       " encode(body, 'hex') FROM stream_dead_letters WHERE stage = $1"        \
                       " AND replayed_at_ms IS NULL ORDER BY stream_offset LIMIT $2")          \
    X(STREAM_REPLAYED, "UPDATE stream_dead_letters SET replayed_at_ms = $3 WHERE stage = $1"   \
                       " AND stream_offset = ANY ($2::bigint[]) AND replayed_at_ms IS NULL")   \
    X(PAYMENTS_IN_DOUBT, "SELECT order_seq, reservation_seq, pay_attempts,"                    \
                         " (EXISTS (SELECT 1 FROM dead_letters d WHERE d.stage = 'payment'"    \
                         " AND d.order_seq = reservations.order_seq))::int FROM reservations"  \
                         " WHERE status = 'ACTIVE' AND order_status = 'PAYING'"                \
                         " ORDER BY order_seq")                                                \
    X(DEAD_LETTERS, "SELECT * FROM (SELECT stage, order_seq, reservation_seq, error,"          \
                    " attempts, first_failed_at_ms, last_failed_at_ms,"                        \
                    " -1::bigint AS stream_offset FROM dead_letters"                           \
                    " WHERE ($1::text IS NULL OR stage = $1) UNION ALL"                        \
                    " SELECT stage, 0, 0, error, attempts, first_failed_at_ms,"                \
                    " last_failed_at_ms, stream_offset FROM stream_dead_letters"               \
                    " WHERE ($1::text IS NULL OR stage = $1) AND replayed_at_ms IS NULL) d"    \
                    " ORDER BY order_seq, stream_offset, stage LIMIT $2")                      \
    X(EVENTS, "SELECT " STORE_PG_EVENT_COLUMNS                                                 \
              " FROM events WHERE seq > $1 AND ($2::text IS NULL OR store_id = $2)"            \
              " AND ($3::text IS NULL OR sku = $3) ORDER BY seq LIMIT $4")                     \
    X(EVENTS_ALL,                                                                              \
      "SELECT " STORE_PG_EVENT_COLUMNS " FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")    \
    X(EVENTS_OF, "SELECT " STORE_PG_EVENT_COLUMNS " FROM events WHERE seq > $1 AND seq <= $2"  \
                 " AND event_type IN ($3, $4) ORDER BY seq LIMIT $5")                          \
    X(SEQ_MAX, "SELECT COALESCE(MAX(seq), 0) FROM events")                                     \
    X(IDEM, "SELECT status, problem, body, created_at_ms, location FROM idempotency"           \
            " WHERE principal = $1 AND idem_key = $2")                                         \
    X(ITEMS, "SELECT store_id, sku, on_hand, reserved FROM stock_items")                       \
    X(LEASE_ACQUIRE,                                                                           \
      "WITH c AS (SELECT " PG_READER_NOW_MS " AS now_ms), t AS (INSERT INTO worker_leases"     \
      " (stage, holder, token, expires_at_ms, acquired_at_ms) SELECT $1, $2, 1, now_ms + $3,"  \
      " now_ms FROM c ON CONFLICT (stage) DO UPDATE SET holder = excluded.holder,"             \
      " token = worker_leases.token + 1, expires_at_ms = excluded.expires_at_ms,"              \
      " acquired_at_ms = excluded.acquired_at_ms WHERE worker_leases.holder = excluded.holder" \
      " OR worker_leases.expires_at_ms < excluded.acquired_at_ms RETURNING holder, "           \
      "token) " PG_READER_LEASE_ANSWER)                                                        \
    X(LEASE_RENEW, "WITH t AS (UPDATE worker_leases SET expires_at_ms = " PG_READER_NOW_MS     \
                   " + $4 WHERE stage = $1 AND holder = $2 AND token = $3"                     \
                   " RETURNING holder, token) " PG_READER_LEASE_ANSWER)                        \
    X(LISTEN, "LISTEN stockd_events")                                                          \
    X(BEGIN, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")                               \
    X(COMMIT, "COMMIT")

enum pg_reader_stmt {
#define PG_READER_ENUM_(name, sql) PG_READER_##name,
    PG_READER_STMT_MAP(PG_READER_ENUM_)
#undef PG_READER_ENUM_
        PG_READER_COUNT
};

static const struct store_pg_statement pg_reader_statements[PG_READER_COUNT] = {
#define PG_READER_ENTRY_(name, sql) {"stockd_r_" #name, sql},
    PG_READER_STMT_MAP(PG_READER_ENTRY_)
#undef PG_READER_ENTRY_
};

/* Events per round trip of a long read (the audit, a replay). */
#define PG_READ_EVENTS_CHUNK 4096

struct pg_reader {
    struct store_reader base; /* first: the backend's operations */
    struct store_pg_conn conn;
    uint64_t listening_connect;  /* conn.connects when LISTEN ran; 0: not listening */
    PGresult *order_found;       /* owned: the last order read, which store_order_row points into */
    PGresult *reservation_found; /* owned: the last reservation read, its row points in */
    char *idem_body;             /* owned copy of the last found idempotency body */
    char idem_location[REPLY_LOCATION_BYTES_MAX]; /* and of its Location */
    size_t idem_body_size;
    uint64_t snapshot_connect;          /* conn.connects at snapshot_begin; 0 outside a snapshot */
    const _Atomic uint64_t *recoveries; /* borrowed (store_reader_watch_recoveries), or NULL */
    uint64_t recoveries_seen;           /* *recoveries when this handle last looked */
};

static const struct store_reader_ops pg_reader_ops;

/* Opens a read-only handle (see store_pg.h). */
int store_pg_reader_open(struct store_reader **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    if (strlen(uri) >= STORE_PG_URI_BYTES_MAX) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    struct pg_reader *r = calloc(1, sizeof *r);
    if (r == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    r->base.ops = &pg_reader_ops;
    store_pg_conn_init(&r->conn, uri, "reader", pg_reader_statements, PG_READER_COUNT, true);
    r->conn.timeout_ms = STORE_PG_READ_TIMEOUT_MS;
    /* The first connection is made here so that a wrong uri fails at startup; later ones come
     * back by themselves. */
    if (store_pg_conn_ready(&r->conn) != 0) {
        free(r);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    *out = &r->base;
    SVC_ASSERT(r->conn.conn != NULL);
    return 0;
}

static void pg_reader_close(struct store_reader *base)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(r != NULL && r->base.ops == &pg_reader_ops);
    store_pg_conn_close(&r->conn);
    PQclear(r->order_found);
    PQclear(r->reservation_found);
    free(r->idem_body);
    free(r);
}

static void pg_reader_watch_recoveries(struct store_reader *base,
                                       const _Atomic uint64_t *recoveries)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(r->base.ops == &pg_reader_ops);
    SVC_ASSERT(recoveries != NULL);
    r->recoveries = recoveries;
    r->recoveries_seen = atomic_load_explicit(recoveries, memory_order_relaxed);
}

/* Before a read outside a snapshot: when the writer recovered since this handle last looked,
 * the session it holds is likely one that died with the outage. Replaced now, it costs a
 * connect; found dead by the read, it would cost a failed round trip first. */
static void pg_reader_refresh(struct pg_reader *r)
{
    SVC_ASSERT(r->snapshot_connect == 0);
    if (r->recoveries == NULL) {
        return;
    }
    uint64_t now = atomic_load_explicit(r->recoveries, memory_order_relaxed);
    if (now == r->recoveries_seen) {
        return;
    }
    r->recoveries_seen = now;
    log_info("postgres reader: storage came back; reconnecting before the next read");
    store_pg_conn_reset(&r->conn);
    SVC_ASSERT(r->conn.conn == NULL && r->conn.next_attempt_ms == 0);
}

/* Runs one of the reader's statements (store_pg_exec). Outside a snapshot, a session found
 * gone is replaced at once and the statement runs once more on the new one; a deadline that
 * passed or an error of the statement is not retried (the server is frozen or the read is
 * wrong: trying again would only double the wait). Inside a snapshot a lost session fails the
 * read and every later one until snapshot_end, without reconnecting; the next read after it
 * connects at once. */
static PGresult *pg_reader_exec(struct pg_reader *r, enum pg_reader_stmt which, int count,
                                const char *const *values)
{
    SVC_ASSERT(which >= 0 && which < PG_READER_COUNT);
    if (r->snapshot_connect != 0) {
        if (r->conn.conn == NULL || r->conn.connects != r->snapshot_connect) {
            return NULL; /* the snapshot's session is gone: so is the snapshot */
        }
        PGresult *res = store_pg_exec(&r->conn, which, count, values);
        if (res == NULL && r->conn.conn == NULL && r->conn.lost) {
            log_info("postgres reader: the snapshot's session was gone; the snapshot fails");
            store_pg_conn_reset(&r->conn); /* the next snapshot begins on a new one at once */
        }
        return res;
    }
    pg_reader_refresh(r);
    bool had_session = r->conn.conn != NULL;
    PGresult *res = store_pg_exec(&r->conn, which, count, values);
    if (res != NULL || !had_session || r->conn.conn != NULL || !r->conn.lost) {
        return res; /* done, or failed on a fresh session, at a deadline or in the statement */
    }
    log_info("postgres reader: the session was gone; reconnecting to read again");
    store_pg_conn_reset(&r->conn);
    res = store_pg_exec(&r->conn, which, count, values);
    SVC_ASSERT(res == NULL || r->conn.conn != NULL);
    return res;
}

/* Reads order_seq's row; the strings of *out point into the result, which the handle keeps
 * until its next order read (or close). */
static int pg_reader_order(struct store_reader *base, int64_t order_seq,
                           struct store_order_row *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(order_seq >= 1 && out != NULL);
    PQclear(r->order_found); /* the previous answer's strings end here */
    r->order_found = NULL;
    char seq[24];
    snprintf(seq, sizeof seq, "%" PRId64, order_seq);
    const char *values[] = {seq};
    PGresult *res = pg_reader_exec(r, PG_READER_ORDER, 1, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    SVC_ASSERT(PQntuples(res) == 1 && PQnfields(res) == 9); /* order_seq is the key */
    r->order_found = res;
    *out = (struct store_order_row){
        PQgetvalue(res, 0, 0),   PQgetvalue(res, 0, 1),   PQgetvalue(res, 0, 2),
        PQgetvalue(res, 0, 3),   PQgetvalue(res, 0, 4),   store_pg_int(res, 0, 5),
        store_pg_int(res, 0, 6), store_pg_int(res, 0, 7), store_pg_int(res, 0, 8)};
    return 1;
}

/* Points out at the reservation's rows in res (one per line, the reservation's columns on
 * each). 1, or SVC_ESTORAGE_UNAVAILABLE for rows the writer cannot have written. */
static int pg_reader_reservation_rows(const PGresult *res, int64_t reservation_seq,
                                      struct store_reservation_row *out)
{
    int rows = PQntuples(res);
    SVC_ASSERT(rows >= 1 && rows <= CMD_LINES_MAX + 1 && PQnfields(res) == 9);
    if (rows > CMD_LINES_MAX) {
        log_error("postgres reader: reservation res_%" PRId64 " has more than %d lines",
                  reservation_seq, CMD_LINES_MAX);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    out->store_id = PQgetvalue(res, 0, 0);
    out->customer_id = PQgetvalue(res, 0, 1);
    out->status = PQgetvalue(res, 0, 2);
    out->expires_at_ms = store_pg_int(res, 0, 3);
    out->version = store_pg_int(res, 0, 4);
    out->created_at_ms = store_pg_int(res, 0, 5);
    out->updated_at_ms = store_pg_int(res, 0, 6);
    out->line_count = 0;
    for (int i = 0; i < rows; i++) {
        if (PQgetisnull(res, i, 7)) {
            continue; /* a reservation without lines: refused below */
        }
        out->lines[out->line_count].sku = PQgetvalue(res, i, 7);
        out->lines[out->line_count++].qty = store_pg_int(res, i, 8);
    }
    if (out->line_count == 0) {
        log_error("postgres reader: reservation res_%" PRId64 " has no lines", reservation_seq);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 1;
}

static int pg_reader_reservation(struct store_reader *base, int64_t reservation_seq,
                                 struct store_reservation_row *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(reservation_seq >= 1 && out != NULL);
    PQclear(r->reservation_found); /* the previous answer's strings end here */
    r->reservation_found = NULL;
    char seq[24];
    char limit[24];
    snprintf(seq, sizeof seq, "%" PRId64, reservation_seq);
    snprintf(limit, sizeof limit, "%d", CMD_LINES_MAX + 1); /* one more shows a row too many */
    const char *values[] = {seq, limit};
    PGresult *res = pg_reader_exec(r, PG_READER_RESERVATION, 2, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    int rc = pg_reader_reservation_rows(res, reservation_seq, out);
    if (rc != 1) {
        PQclear(res);
        return rc;
    }
    r->reservation_found = res;
    return 1;
}

/* Reads at most limit events after *since (filtered), hands them to each_event and moves
 * *since to the last one. Returns the callback's non-zero answer, SVC_ESTORAGE_UNAVAILABLE, or
 * 0 with *count_out rows read. */
/* Streams the rows of res (of STORE_PG_EVENT_COLUMNS in seq order after *since, at most limit;
 * NULL: the read failed) to each_event and clears it; *since: the last seq, *count_out: how
 * many. */
static int pg_reader_event_rows(PGresult *res, int64_t *since, int limit, void *context,
                                int (*each_event)(void *context, const struct row_event *row),
                                int *count_out)
{
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int rc = 0;
    int rows = PQntuples(res);
    SVC_ASSERT(rows <= limit);
    *count_out = 0;
    for (int i = 0; rc == 0 && i < rows; i++) {
        struct row_event row;
        store_pg_row_event(res, i, &row);
        SVC_ASSERT(row.seq > *since);
        *since = row.seq;
        (*count_out)++;
        rc = each_event(context, &row);
    }
    PQclear(res);
    return rc;
}

static int pg_reader_event_chunk(struct pg_reader *r, int64_t *since, const char *store_id,
                                 const char *sku, int limit, void *context,
                                 int (*each_event)(void *context, const struct row_event *row),
                                 int *count_out)
{
    SVC_ASSERT(limit >= 1 && limit <= PG_READ_EVENTS_CHUNK);
    SVC_ASSERT(*since >= 0);
    char since_text[24];
    char count[24];
    snprintf(since_text, sizeof since_text, "%" PRId64, *since);
    snprintf(count, sizeof count, "%d", limit);
    const char *values[] = {since_text, store_id, sku, count};
    const char *all_values[] = {since_text, count};
    bool filtered = store_id != NULL || sku != NULL; /* the follower's and replay's read: not */
    PGresult *res = filtered ? pg_reader_exec(r, PG_READER_EVENTS, 4, values)
                             : pg_reader_exec(r, PG_READER_EVENTS_ALL, 2, all_values);
    return pg_reader_event_rows(res, since, limit, context, each_event, count_out);
}

static int pg_reader_events(struct store_reader *base, int64_t since_seq, const char *store_id,
                            const char *sku, int limit, void *context,
                            int (*each_event)(void *context, const struct row_event *row))
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(since_seq >= 0 && limit >= 1);
    /* In chunks: every round trip stays within the read deadline and a long log (the audit
     * reads all of it) is never one result in memory. */
    int64_t since = since_seq;
    int left = limit;
    while (left > 0) {
        int chunk = left < PG_READ_EVENTS_CHUNK ? left : PG_READ_EVENTS_CHUNK;
        int count = 0;
        int rc =
            pg_reader_event_chunk(r, &since, store_id, sku, chunk, context, each_event, &count);
        if (rc != 0 || count < chunk) {
            return rc;
        }
        left -= count;
    }
    return 0;
}

static int pg_reader_events_of(struct store_reader *base, int64_t since_seq, int64_t until_seq,
                               const char *const *types, int type_count, int limit, void *context,
                               int (*each_event)(void *context, const struct row_event *row),
                               int *count_out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(type_count >= 1 && type_count <= STORE_EVENT_TYPES_MAX);
    _Static_assert(STORE_EVENT_TYPES_MAX == 2, "the statement names $3 and $4");
    char until_text[24];
    snprintf(until_text, sizeof until_text, "%" PRId64, until_seq);
    int64_t since = since_seq;
    int left = limit; /* in chunks, as pg_reader_events */
    while (left > 0) {
        int chunk = left < PG_READ_EVENTS_CHUNK ? left : PG_READ_EVENTS_CHUNK;
        char since_text[24];
        char count[24];
        snprintf(since_text, sizeof since_text, "%" PRId64, since);
        snprintf(count, sizeof count, "%d", chunk);
        const char *values[] = {since_text, until_text, types[0],
                                type_count > 1 ? types[1] : NULL, /* NULL matches none */
                                count};
        int got = 0;
        int rc = pg_reader_event_rows(pg_reader_exec(r, PG_READER_EVENTS_OF, 5, values), &since,
                                      chunk, context, each_event, &got);
        *count_out += got;
        if (rc != 0 || got < chunk) {
            return rc;
        }
        left -= got;
    }
    return 0;
}

static int pg_reader_items(struct store_reader *base, void *context,
                           int (*each_item)(void *context, const char *store_id, const char *sku,
                                            int64_t on_hand, int64_t reserved))
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(each_item != NULL);
    PGresult *res = pg_reader_exec(r, PG_READER_ITEMS, 0, NULL);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    SVC_ASSERT(PQnfields(res) == 4);
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(res); i++) {
        int64_t on_hand = store_pg_int(res, i, 2);
        int64_t reserved = store_pg_int(res, i, 3);
        SVC_ASSERT(reserved >= 0 && reserved <= on_hand); /* the table's CHECKs */
        rc = each_item(context, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), on_hand, reserved);
    }
    PQclear(res);
    return rc;
}

static int pg_reader_event_seq_max(struct store_reader *base, int64_t *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(out != NULL);
    PGresult *res = pg_reader_exec(r, PG_READER_SEQ_MAX, 0, NULL);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    SVC_ASSERT(PQntuples(res) == 1); /* an aggregate: one row */
    *out = store_pg_int(res, 0, 0);
    SVC_ASSERT(*out >= 0);
    PQclear(res);
    return 0;
}

static int pg_reader_idem(struct store_reader *base, const char *principal, const char *key,
                          struct store_idem_view *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(principal != NULL && key != NULL);
    SVC_ASSERT(out != NULL);
    const char *values[] = {principal, key};
    PGresult *res = pg_reader_exec(r, PG_READER_IDEM, 2, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int rc = 0;
    if (PQntuples(res) == 1) {
        size_t length = (size_t)PQgetlength(res, 0, 2);
        if (length + 1 > r->idem_body_size) {
            char *grown = realloc(r->idem_body, length + 1);
            if (grown == NULL) {
                PQclear(res);
                return SVC_ESTORAGE_UNAVAILABLE;
            }
            r->idem_body = grown;
            r->idem_body_size = length + 1;
        }
        memcpy(r->idem_body, PQgetvalue(res, 0, 2), length + 1);
        out->status = (int)store_pg_int(res, 0, 0);
        out->problem = store_pg_int(res, 0, 1) != 0;
        out->body = r->idem_body;
        out->body_length = length;
        out->created_at_ms = store_pg_int(res, 0, 3);
        size_t location_length = (size_t)PQgetlength(res, 0, 4);
        out->location = NULL; /* none, or longer than the writer writes one */
        if (!PQgetisnull(res, 0, 4) && location_length < sizeof r->idem_location) {
            memcpy(r->idem_location, PQgetvalue(res, 0, 4), location_length + 1);
            out->location = r->idem_location;
        }
        SVC_ASSERT(out->status >= 100 && out->status <= 599); /* as the writer wrote it */
        rc = 1;
    }
    PQclear(res);
    return rc;
}

/* Drains the notifications received; *seq_out gets the newest seq announced. */
static int pg_reader_drain(struct pg_reader *r, int64_t *seq_out)
{
    SVC_ASSERT(r->conn.conn != NULL && seq_out != NULL);
    int got = 0;
    PGnotify *n;
    while ((n = PQnotifies(r->conn.conn)) != NULL) {
        int64_t seq = strtoll(n->extra, NULL, 10);
        *seq_out = seq > *seq_out ? seq : *seq_out;
        got = 1;
        PQfreemem(n);
    }
    SVC_ASSERT(*seq_out >= 0);
    return got;
}

static int pg_reader_wait(struct store_reader *base, int timeout_ms, int64_t *seq_out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(timeout_ms >= 0 && seq_out != NULL);
    /* By connect count, not by PGconn pointer: a new connection may get a freed one's address. */
    if (r->conn.conn == NULL || r->listening_connect != r->conn.connects) {
        PGresult *res = pg_reader_exec(r, PG_READER_LISTEN, 0, NULL);
        if (res == NULL) {
            poll(NULL, 0, timeout_ms); /* PostgreSQL is away: try again after the wait */
            return SVC_ESTORAGE_UNAVAILABLE;
        }
        PQclear(res);
        r->listening_connect = r->conn.connects;
        SVC_ASSERT(r->conn.conn != NULL && r->listening_connect >= 1);
        return 1; /* (re)connected: whatever was announced meanwhile is unknown; look */
    }
    if (pg_reader_drain(r, seq_out)) {
        return 1;
    }
    struct pollfd fd = {PQsocket(r->conn.conn), POLLIN, 0};
    if (poll(&fd, 1, timeout_ms) <= 0) {
        return 0;
    }
    if (PQconsumeInput(r->conn.conn) != 1) {
        store_pg_conn_fail(&r->conn, "listen");
        r->listening_connect = 0;
        if (r->conn.lost) { /* the next wait LISTENs on a fresh session at once */
            log_info("postgres reader: the listening session was gone; reconnecting");
            store_pg_conn_reset(&r->conn);
        }
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return pg_reader_drain(r, seq_out);
}

/* Runs BEGIN or COMMIT of the read-only snapshot. 0 or SVC_ESTORAGE_UNAVAILABLE. */
static int pg_reader_transaction(struct pg_reader *r, enum pg_reader_stmt which)
{
    SVC_ASSERT(which == PG_READER_BEGIN || which == PG_READER_COMMIT);
    PGresult *res = pg_reader_exec(r, which, 0, NULL);
    int rc = res != NULL && store_pg_result_ok(res) ? 0 : SVC_ESTORAGE_UNAVAILABLE;
    PQclear(res);
    return rc;
}

/* REPEATABLE READ: every read until the COMMIT sees the snapshot of the first. */
static int pg_reader_snapshot_begin(struct store_reader *base)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(r->snapshot_connect == 0);
    int rc = pg_reader_transaction(r, PG_READER_BEGIN);
    r->snapshot_connect = rc == 0 ? r->conn.connects : 0;
    SVC_ASSERT(rc != 0 || r->snapshot_connect >= 1);
    return rc;
}

/* A connection lost since the BEGIN took the snapshot with it: the reads after it failed
 * (pg_reader_exec reconnects for none of them), and so does the end. The COMMIT is the
 * snapshot's last statement: on its session or not at all. */
static int pg_reader_snapshot_end(struct store_reader *base)
{
    struct pg_reader *r = (struct pg_reader *)base;
    uint64_t began = r->snapshot_connect;
    int rc = began != 0 ? pg_reader_transaction(r, PG_READER_COMMIT) : SVC_ESTORAGE_UNAVAILABLE;
    SVC_ASSERT(rc != 0 || r->conn.connects == began);
    r->snapshot_connect = 0;
    return rc;
}

static int pg_reader_stage_offset(struct store_reader *base, const char *stage, int64_t *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(stage != NULL && out != NULL);
    const char *values[] = {stage};
    PGresult *res = pg_reader_exec(r, PG_READER_STAGE_OFFSET, 1, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    *out = PQntuples(res) == 1 ? store_pg_int(res, 0, 0) : 0;
    PQclear(res);
    SVC_ASSERT(*out >= 0);
    return 0;
}

static int pg_reader_relay_offset(struct store_reader *base, const char *name, int64_t *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(name != NULL && out != NULL);
    const char *values[] = {name};
    PGresult *res = pg_reader_exec(r, PG_READER_RELAY_OFFSET, 1, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    *out = PQntuples(res) == 1 ? store_pg_int(res, 0, 0) : 0;
    PQclear(res);
    SVC_ASSERT(*out >= 0);
    return 0;
}

/* An upsert outside any transaction (the reader's snapshots are read-only, and the relay
 * never saves inside one): retried on a new session like a read, which is safe because it
 * only ever moves the position forward. */
static int pg_reader_relay_offset_save(struct store_reader *base, const char *name, int64_t seq,
                                       int64_t at_ms)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(name != NULL && seq >= 0);
    SVC_ASSERT(r->snapshot_connect == 0);
    char seq_text[24];
    char at_text[24];
    snprintf(seq_text, sizeof seq_text, "%" PRId64, seq);
    snprintf(at_text, sizeof at_text, "%" PRId64, at_ms);
    const char *values[] = {name, seq_text, at_text};
    PGresult *res = pg_reader_exec(r, PG_READER_RELAY_OFFSET_SAVE, 3, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    PQclear(res);
    return 0;
}

/* Decodes the hex of column (encode(x, 'hex')) of row i into out (size bytes, NUL-terminated
 * after *length bytes); *present false for SQL NULL. false when it does not fit or is not hex. */
static bool pg_reader_unhex(const PGresult *res, int i, int column, char *out, size_t size,
                            size_t *length, bool *present)
{
    SVC_ASSERT(size >= 1);
    *length = 0;
    *present = !PQgetisnull(res, i, column);
    const char *hex = PQgetvalue(res, i, column);
    size_t hex_length = (size_t)PQgetlength(res, i, column);
    if (!*present) {
        out[0] = '\0';
        return true;
    }
    if (hex_length % 2 != 0 || hex_length / 2 >= size) {
        return false;
    }
    for (size_t k = 0; k < hex_length; k += 2) {
        int hi = text_hex_value(hex[k]);
        int lo = text_hex_value(hex[k + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out[k / 2] = (char)(hi * 16 + lo);
    }
    *length = hex_length / 2;
    out[*length] = '\0';
    SVC_ASSERT(*length < size);
    return true;
}

/* The decoded parts of one row of STREAM_MESSAGES (heap: a body is up to 72 KiB). */
struct pg_reader_message {
    char id[DLT_MESSAGE_ID_BYTES_MAX + 1];
    char type[DLT_MESSAGE_TYPE_BYTES_MAX + 1];
    char principal[DLT_MESSAGE_PRINCIPAL_BYTES_MAX + 1];
    char body[DLT_MESSAGE_BODY_BYTES_MAX + 1];
};

/* Row i of STREAM_MESSAGES into out, its parts decoded into m. false when the row breaks the
 * limits the writer keeps (a part too long, not hex). */
static bool pg_reader_message_row(const PGresult *res, int i, struct pg_reader_message *m,
                                  struct store_stream_message_row *out)
{
    char *parts[] = {m->id, m->type, m->principal, m->body};
    size_t sizes[] = {sizeof m->id, sizeof m->type, sizeof m->principal, sizeof m->body};
    const char *values[4];
    size_t lengths[4];
    for (int p = 0; p < 4; p++) {
        bool present = false;
        if (!pg_reader_unhex(res, i, 2 + p, parts[p], sizes[p], &lengths[p], &present)) {
            return false;
        }
        values[p] = present ? parts[p] : NULL;
    }
    *out = (struct store_stream_message_row){PQgetvalue(res, i, 0),
                                             store_pg_int(res, i, 1),
                                             values[0],
                                             values[1],
                                             values[2],
                                             values[3],
                                             lengths[3]};
    return true;
}

static int
pg_reader_stream_messages(struct store_reader *base, const char *stage, int limit, void *context,
                          int (*each)(void *context, const struct store_stream_message_row *row))
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(stage != NULL && each != NULL && limit >= 1);
    char limit_text[24];
    snprintf(limit_text, sizeof limit_text, "%d", limit);
    const char *values[] = {stage, limit_text};
    PGresult *res = pg_reader_exec(r, PG_READER_STREAM_MESSAGES, 2, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    struct pg_reader_message *m = malloc(sizeof *m);
    int rc = m != NULL ? 0 : SVC_ESTORAGE_UNAVAILABLE;
    for (int i = 0; rc == 0 && i < PQntuples(res); i++) {
        struct store_stream_message_row row;
        if (!pg_reader_message_row(res, i, m, &row)) {
            log_error("postgres: the stream dead letter at %s breaks its limits",
                      PQgetvalue(res, i, 1));
            rc = SVC_ESTORAGE_UNAVAILABLE;
            break;
        }
        SVC_ASSERT(row.stream_offset >= 0);
        rc = each(context, &row);
    }
    free(m);
    PQclear(res);
    return rc;
}

/* One statement outside any transaction, like the relay's save: setting a mark that is set
 * already changes nothing, so a retry on a new session is safe. */
static int pg_reader_stream_replayed(struct store_reader *base, const char *stage,
                                     const int64_t *offsets, size_t count, int64_t at_ms)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(stage != NULL && count >= 1);
    SVC_ASSERT(r->snapshot_connect == 0);
    struct store_pg_text list = {0};
    store_pg_array_begin(&list);
    for (size_t i = 0; i < count; i++) {
        store_pg_array_int(&list, offsets[i]);
    }
    store_pg_array_end(&list);
    char at_text[24];
    snprintf(at_text, sizeof at_text, "%" PRId64, at_ms);
    const char *values[] = {stage, list.data, at_text};
    PGresult *res = pg_reader_exec(r, PG_READER_STREAM_REPLAYED, 3, values);
    store_pg_text_free(&list);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    PQclear(res);
    return 0;
}

static int pg_reader_payments_in_doubt(struct store_reader *base, void *context,
                                       int (*each)(void *context,
                                                   const struct store_payment_row *row))
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(each != NULL);
    PGresult *res = pg_reader_exec(r, PG_READER_PAYMENTS_IN_DOUBT, 0, NULL);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(res); i++) {
        struct store_payment_row row = {store_pg_int(res, i, 0), store_pg_int(res, i, 1),
                                        store_pg_int(res, i, 2), store_pg_int(res, i, 3) != 0};
        SVC_ASSERT(row.order_seq >= 1 && row.reservation_seq >= 1);
        rc = each(context, &row);
    }
    PQclear(res);
    return rc;
}

static int
pg_reader_dead_letters(struct store_reader *base, const char *stage, int limit, void *context,
                       int (*each)(void *context, const struct store_dead_letter_row *row))
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(each != NULL && limit >= 1);
    char limit_text[24];
    snprintf(limit_text, sizeof limit_text, "%d", limit);
    const char *values[] = {stage, limit_text};
    PGresult *res = pg_reader_exec(r, PG_READER_DEAD_LETTERS, 2, values);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(res); i++) {
        struct store_dead_letter_row row = {PQgetvalue(res, i, 0),   store_pg_int(res, i, 1),
                                            store_pg_int(res, i, 2), PQgetvalue(res, i, 3),
                                            store_pg_int(res, i, 4), store_pg_int(res, i, 5),
                                            store_pg_int(res, i, 6), store_pg_int(res, i, 7)};
        SVC_ASSERT(row.order_seq >= 1 || row.stream_offset >= 0);
        rc = each(context, &row);
    }
    PQclear(res);
    return rc;
}

/* See store_reader_lease: one statement in its own transaction (autocommit). */
static int pg_reader_lease(struct store_reader *base, const char *stage, const char *holder,
                           int64_t token, int64_t ttl_ms, struct store_lease *out)
{
    struct pg_reader *r = (struct pg_reader *)base;
    SVC_ASSERT(r->snapshot_connect == 0); /* never inside the audit's read-only snapshot */
    char token_text[24];
    char ttl_text[24];
    snprintf(token_text, sizeof token_text, "%" PRId64, token);
    snprintf(ttl_text, sizeof ttl_text, "%" PRId64, ttl_ms);
    const char *acquire[] = {stage, holder, ttl_text};
    const char *renew[] = {stage, holder, token_text, ttl_text};
    PGresult *res = token == 0 ? pg_reader_exec(r, PG_READER_LEASE_ACQUIRE, 3, acquire)
                               : pg_reader_exec(r, PG_READER_LEASE_RENEW, 4, renew);
    if (res == NULL) {
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    SVC_ASSERT(PQntuples(res) <= 1 && PQnfields(res) == 3);
    if (PQntuples(res) == 1) {
        const char *row_holder = PQgetvalue(res, 0, 0);
        snprintf(out->holder, sizeof out->holder, "%s", row_holder);
        out->token = store_pg_int(res, 0, 1);
        out->held = store_pg_int(res, 0, 2) == 1;
    }
    PQclear(res);
    SVC_ASSERT(!out->held || out->token >= 1);
    return 0;
}

static const struct store_reader_ops pg_reader_ops = {
    .name = "postgres",
    .close = pg_reader_close,
    .order = pg_reader_order,
    .reservation = pg_reader_reservation,
    .events = pg_reader_events,
    .items = pg_reader_items,
    .event_seq_max = pg_reader_event_seq_max,
    .events_of = pg_reader_events_of,
    .idem = pg_reader_idem,
    .wait = pg_reader_wait,
    .snapshot_begin = pg_reader_snapshot_begin,
    .snapshot_end = pg_reader_snapshot_end,
    .watch_recoveries = pg_reader_watch_recoveries,
    .stage_offset = pg_reader_stage_offset,
    .relay_offset = pg_reader_relay_offset,
    .relay_offset_save = pg_reader_relay_offset_save,
    .payments_in_doubt = pg_reader_payments_in_doubt,
    .dead_letters = pg_reader_dead_letters,
    .stream_messages = pg_reader_stream_messages,
    .stream_replayed = pg_reader_stream_replayed,
    .lease = pg_reader_lease,
};
