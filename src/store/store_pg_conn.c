/*
 * store_pg_conn.c - the PostgreSQL backend's shared internals (store_pg_conn.h): one libpq
 * connection (connect and prepare, the nonblocking pipeline round trip with a deadline),
 * text-array parameters and result helpers.
 *
 * This file holds no statement and knows neither handle: store_pg.c (the writer) and
 * store_pg_reader.c (the readers) bring their statements. Read store_pg.c next.
 */
#include "store/store_pg_conn.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/errors.h"
#include "base/log.h"
#include "base/svc_assert.h"
#include "store/store.h"

/* See store_pg_conn.h; called by store_pg_open and store_pg_reader_open. */
void store_pg_conn_init(struct store_pg_conn *c, const char *uri, const char *role,
                        const struct store_pg_statement *statements, int statement_count,
                        bool pipeline)
{
    SVC_ASSERT(strlen(uri) < sizeof c->uri);
    SVC_ASSERT(statement_count >= 0);
    SVC_ASSERT(statement_count == 0 || statements != NULL);
    memset(c, 0, sizeof *c);
    strcpy(c->uri, uri);
    c->role = role;
    c->statements = statements;
    c->statement_count = statement_count;
    c->pipeline = pipeline;
    c->timeout_ms = STORE_PG_ROUND_TRIP_TIMEOUT_MS;
}

/* See store_pg_conn.h; called when a handle closes and after the migration. */
void store_pg_conn_close(struct store_pg_conn *c)
{
    SVC_ASSERT(c != NULL);
    if (c->conn != NULL) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    SVC_ASSERT(c->conn == NULL);
}

/* Drops the connection after a failure (already logged); lost: the session was gone. */
static void pg_conn_drop(struct store_pg_conn *c, bool lost)
{
    SVC_ASSERT(c != NULL);
    if (c->conn != NULL) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    c->lost = lost;
    c->was_down = true;
    c->next_attempt_ms = clock_mono_us() / 1000 + STORE_PG_RECONNECT_INTERVAL_MS;
    SVC_ASSERT(c->conn == NULL);
}

/* See store_pg_conn.h; called on every broken connection. */
void store_pg_conn_fail(struct store_pg_conn *c, const char *what)
{
    SVC_ASSERT(c != NULL && what != NULL);
    bool lost = false;
    if (c->conn != NULL) {
        log_error("postgres %s: %s: %s", c->role, what, PQerrorMessage(c->conn));
        /* End of file, a reset or the server's FATAL make libpq's status BAD; a deadline that
         * passed leaves it OK (the server may still be there, only slow or frozen). */
        lost = PQstatus(c->conn) == CONNECTION_BAD;
    }
    pg_conn_drop(c, lost);
    SVC_ASSERT(c->conn == NULL);
}

/* See store_pg_conn.h; called by the readers before they read again on a fresh session. */
void store_pg_conn_reset(struct store_pg_conn *c)
{
    SVC_ASSERT(c != NULL);
    store_pg_conn_close(c);
    c->next_attempt_ms = 0;
    c->was_down = false; /* the caller logs why it reconnects: no "connected again" too */
    c->lost = false;
    SVC_ASSERT(c->conn == NULL);
}

/* True when a failed result says the session is gone rather than the statement wrong:
 * SQLSTATE class 08 (connection exception), 57P01 admin shutdown (a fast shutdown or
 * pg_terminate_backend), 57P02 crash shutdown, 57P03 cannot connect now. */
static bool pg_result_says_gone(const PGresult *r)
{
    if (r == NULL || store_pg_result_ok(r)) {
        return false;
    }
    const char *state = store_pg_result_state(r);
    SVC_ASSERT(state != NULL);
    return strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
           strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0;
}

/* libpq's notices (the server's WARNINGs, a FATAL that arrives while the connection is idle)
 * go to the log as one line instead of raw to stderr. */
static void pg_conn_notice(void *context, const char *message)
{
    const struct store_pg_conn *c = context;
    SVC_ASSERT(c != NULL && message != NULL);
    log_warn("postgres %s: %s", c->role, message);
}

static int pg_conn_prepare_all(struct store_pg_conn *c)
{
    SVC_ASSERT(c->conn != NULL);
    SVC_ASSERT(!PQisnonblocking(c->conn)); /* PQprepare blocks: before nonblocking mode */
    for (int i = 0; i < c->statement_count; i++) {
        PGresult *r = PQprepare(c->conn, c->statements[i].name, c->statements[i].sql, 0, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) {
            log_error("postgres %s: prepare %s: %s", c->role, c->statements[i].name,
                      PQresultErrorMessage(r));
        }
        PQclear(r);
        if (!ok) {
            return SVC_ESTORAGE_UNAVAILABLE;
        }
    }
    return 0;
}

/* See store_pg_conn.h; called before every round trip. */
int store_pg_conn_ready(struct store_pg_conn *c)
{
    SVC_ASSERT(c != NULL && c->uri[0] != '\0');
    if (c->conn != NULL) {
        return 0;
    }
    if (clock_mono_us() / 1000 < c->next_attempt_ms) {
        return SVC_ESTORAGE_UNAVAILABLE; /* PostgreSQL was just found away: answer at once */
    }
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", STORE_PG_CONNECT_TIMEOUT_S);
    /* Custom plans always: a statement prepared while the tables were small (a fresh
     * database) would otherwise keep a generic plan that scans whole tables (seen: a batch's
     * idempotency lookup read every row until the first ANALYZE, 15k -> 2k purchases/s). */
    const char *const keys[] = {"dbname", "connect_timeout", "application_name", "options", NULL};
    const char *const values[] = {c->uri, timeout, "stockd", "-c plan_cache_mode=force_custom_plan",
                                  NULL};
    c->conn = PQconnectdbParams(keys, values, 1);
    if (c->conn == NULL || PQstatus(c->conn) != CONNECTION_OK) {
        store_pg_conn_fail(c, "connect");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    PQsetNoticeProcessor(c->conn, pg_conn_notice, c);
    if (pg_conn_prepare_all(c) != 0) {
        store_pg_conn_fail(c, "prepare");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    if (c->pipeline && (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1)) {
        store_pg_conn_fail(c, "enter pipeline mode");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    c->connects++;
    if (c->was_down) {
        log_info("postgres %s: connected again", c->role);
        c->was_down = false;
    }
    SVC_ASSERT(c->conn != NULL && c->connects >= 1);
    return 0;
}

/* See store_pg_conn.h; called for every statement of a round trip. */
int store_pg_send(struct store_pg_conn *c, int index, int count, const char *const *values)
{
    SVC_ASSERT(c->pipeline && c->conn != NULL);
    SVC_ASSERT(index >= 0 && index < c->statement_count);
    SVC_ASSERT(count >= 0 && count <= STORE_PG_PARAMS_MAX);
    if (PQsendQueryPrepared(c->conn, c->statements[index].name, count, values, NULL, NULL, 0) !=
        1) {
        store_pg_conn_fail(c, c->statements[index].name);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 0;
}

/* Waits for the socket (events) until deadline_us. 0 ready, -1 timeout or error. */
static int pg_wait_socket(struct store_pg_conn *c, short events, int64_t deadline_us)
{
    SVC_ASSERT(c->conn != NULL && deadline_us > 0);
    SVC_ASSERT(events != 0);
    int64_t left_ms = (deadline_us - clock_mono_us()) / 1000;
    if (left_ms <= 0) {
        return -1;
    }
    struct pollfd fd = {PQsocket(c->conn), events, 0};
    int n = poll(&fd, 1, (int)left_ms);
    return n > 0 ? 0 : -1;
}

/* Sends everything queued. 0 or -1. */
static int pg_flush(struct store_pg_conn *c, int64_t deadline_us)
{
    SVC_ASSERT(c->conn != NULL && PQisnonblocking(c->conn));
    for (;;) { /* bounded: pg_wait_socket fails past deadline_us */
        int rc = PQflush(c->conn);
        if (rc == 0) {
            return 0;
        }
        if (rc < 0 || pg_wait_socket(c, POLLIN | POLLOUT, deadline_us) != 0 ||
            PQconsumeInput(c->conn) != 1) {
            return -1;
        }
    }
}

/* The next result without blocking past deadline_us; *out NULL is libpq's separator. 0 or
 * -1. */
static int pg_next_result(struct store_pg_conn *c, int64_t deadline_us, PGresult **out)
{
    SVC_ASSERT(c->conn != NULL && out != NULL);
    while (PQisBusy(c->conn)) {
        if (pg_wait_socket(c, POLLIN, deadline_us) != 0 || PQconsumeInput(c->conn) != 1) {
            return -1;
        }
    }
    *out = PQgetResult(c->conn);
    return 0;
}

/* See store_pg_conn.h. */
void store_pg_results_clear(PGresult **results, int count)
{
    SVC_ASSERT(count >= 0 && count <= STORE_PG_PIPELINE_MAX);
    SVC_ASSERT(count == 0 || results != NULL);
    for (int i = 0; i < count; i++) {
        PQclear(results[i]);
        results[i] = NULL;
    }
}

/* Collects one statement's result and the NULL that ends it. */
static int pg_collect_one(struct store_pg_conn *c, int64_t deadline_us, PGresult **out)
{
    SVC_ASSERT(c->pipeline && out != NULL);
    PGresult *end = NULL;
    if (pg_next_result(c, deadline_us, out) != 0 || *out == NULL) {
        return -1;
    }
    if (pg_next_result(c, deadline_us, &end) != 0 || end != NULL) {
        PQclear(end);
        return -1;
    }
    return 0;
}

/* See store_pg_conn.h; the one place that waits for PostgreSQL (with a deadline). */
int store_pg_round_trip(struct store_pg_conn *c, PGresult **results, int count)
{
    SVC_ASSERT(c->pipeline && c->conn != NULL);
    SVC_ASSERT(count >= 0 && count <= STORE_PG_PIPELINE_MAX);
    SVC_ASSERT(c->timeout_ms > 0);
    int64_t deadline_us = clock_mono_us() + (int64_t)c->timeout_ms * 1000;
    memset(results, 0, (size_t)count * sizeof results[0]);
    int rc = PQpipelineSync(c->conn) == 1 ? pg_flush(c, deadline_us) : -1;
    for (int i = 0; rc == 0 && i < count; i++) {
        rc = pg_collect_one(c, deadline_us, &results[i]);
    }
    PGresult *sync = NULL;
    if (rc == 0 && (pg_next_result(c, deadline_us, &sync) != 0 || sync == NULL ||
                    PQresultStatus(sync) != PGRES_PIPELINE_SYNC)) {
        rc = -1;
    }
    PQclear(sync);
    if (rc != 0) {
        bool gone = false;
        for (int i = 0; i < count; i++) {
            gone = gone || pg_result_says_gone(results[i]);
        }
        store_pg_results_clear(results, count);
        store_pg_conn_fail(c, "pipeline round trip");
        c->lost = c->lost || gone;
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    for (int i = 0; i < count; i++) {
        SVC_ASSERT(results[i] != NULL); /* one result per statement, errors included */
    }
    return 0;
}

/* See store_pg_conn.h. */
bool store_pg_result_ok(const PGresult *r)
{
    ExecStatusType status = PQresultStatus(r);
    return r != NULL && (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK);
}

/* See store_pg_conn.h; called by the commit's verdict. */
const char *store_pg_result_state(const PGresult *r)
{
    SVC_ASSERT(r == NULL || !store_pg_result_ok(r)); /* asked of failures only */
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL ? state : "";
}

/* See store_pg_conn.h; called by the readers and the writer's housekeeping. */
PGresult *store_pg_exec(struct store_pg_conn *c, int index, int count, const char *const *values)
{
    SVC_ASSERT(c->pipeline);
    SVC_ASSERT(index >= 0 && index < c->statement_count);
    PGresult *r = NULL;
    c->lost = false;
    if (store_pg_conn_ready(c) != 0 || store_pg_send(c, index, count, values) != 0 ||
        store_pg_round_trip(c, &r, 1) != 0) {
        return NULL; /* the connection was dropped; the next call reconnects */
    }
    if (!store_pg_result_ok(r)) {
        log_error("postgres %s: %s: %s", c->role, c->statements[index].name,
                  PQresultErrorMessage(r));
        /* The server's FATAL can come as the statement's answer before libpq sees the end of
         * the connection: the session is gone all the same. */
        bool gone = pg_result_says_gone(r) || PQstatus(c->conn) == CONNECTION_BAD;
        PQclear(r);
        if (gone) {
            pg_conn_drop(c, true);
        }
        SVC_ASSERT(!gone || c->conn == NULL);
        return NULL;
    }
    SVC_ASSERT(r != NULL);
    return r;
}

/* ---- text parameters -------------------------------------------------------------------- */

/* See store_pg_conn.h (text parameters). */
void store_pg_text_reset(struct store_pg_text *t)
{
    SVC_ASSERT(t != NULL);
    SVC_ASSERT(t->length < t->capacity || t->data == NULL);
    t->length = 0;
    if (t->data != NULL) {
        t->data[0] = '\0';
    }
}

/* See store_pg_conn.h (text parameters). */
void store_pg_text_free(struct store_pg_text *t)
{
    SVC_ASSERT(t != NULL);
    SVC_ASSERT(t->data != NULL || t->capacity == 0);
    free(t->data);
    memset(t, 0, sizeof *t);
}

/* See store_pg_conn.h (text parameters). */
void store_pg_text_append(struct store_pg_text *t, const char *bytes, size_t length)
{
    SVC_ASSERT(bytes != NULL || length == 0);
    SVC_ASSERT(t->length + length + 1 > t->length); /* no overflow */
    if (t->length + length + 1 > t->capacity) {
        size_t capacity = t->capacity ? t->capacity : 256;
        while (t->length + length + 1 > capacity) {
            capacity *= 2;
        }
        char *grown = realloc(t->data, capacity);
        SVC_ASSERT(grown != NULL); /* bounded by a batch's rows; out of memory is fatal */
        t->data = grown;
        t->capacity = capacity;
    }
    memcpy(t->data + t->length, bytes, length);
    t->length += length;
    t->data[t->length] = '\0';
    SVC_ASSERT(t->length < t->capacity);
}

/* See store_pg_conn.h (array literals). */
void store_pg_array_begin(struct store_pg_text *t)
{
    store_pg_text_reset(t);
    store_pg_text_append(t, "{", 1);
    SVC_ASSERT(t->length == 1);
}

static void pg_array_separator(struct store_pg_text *t)
{
    SVC_ASSERT(t->length >= 1);
    SVC_ASSERT(t->data[0] == '{'); /* inside an array literal */
    if (t->data[t->length - 1] != '{') {
        store_pg_text_append(t, ",", 1);
    }
}

/* See store_pg_conn.h (array literals). */
void store_pg_array_text(struct store_pg_text *t, const char *value)
{
    SVC_ASSERT(t != NULL && t->length >= 1);
    if (value == NULL) {
        pg_array_separator(t);
        store_pg_text_append(t, "NULL", 4);
        return;
    }
    store_pg_array_text_n(t, value, strlen(value));
}

/* See store_pg_conn.h (array literals): exactly length bytes of value, quoted. */
void store_pg_array_text_n(struct store_pg_text *t, const char *value, size_t length)
{
    SVC_ASSERT(value != NULL);
    size_t before = t->length;
    pg_array_separator(t);
    store_pg_text_append(t, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < length; i++) {
        if (value[i] == '"' || value[i] == '\\') {
            store_pg_text_append(t, value + run, i - run);
            store_pg_text_append(t, "\\", 1);
            run = i;
        }
    }
    store_pg_text_append(t, value + run, length - run);
    store_pg_text_append(t, "\"", 1);
    SVC_ASSERT(t->length >= before + length + 2);
}

/* See store_pg_conn.h (array literals). */
void store_pg_array_hex(struct store_pg_text *t, const void *bytes, size_t length)
{
    SVC_ASSERT(t != NULL && t->length >= 1);
    pg_array_separator(t);
    if (bytes == NULL) {
        store_pg_text_append(t, "NULL", 4);
        return;
    }
    static const char digits[] = "0123456789abcdef";
    const unsigned char *in = bytes;
    char chunk[256];
    size_t used = 0;
    store_pg_text_append(t, "\"", 1);
    for (size_t i = 0; i < length; i++) {
        if (used + 2 > sizeof chunk) {
            store_pg_text_append(t, chunk, used);
            used = 0;
        }
        chunk[used++] = digits[in[i] >> 4];
        chunk[used++] = digits[in[i] & 15];
    }
    store_pg_text_append(t, chunk, used);
    store_pg_text_append(t, "\"", 1);
    SVC_ASSERT(t->length >= 2 * length + 2);
}

static void pg_append_int(struct store_pg_text *t, int64_t value)
{
    SVC_ASSERT(t != NULL);
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%" PRId64, value);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof digits);
    store_pg_text_append(t, digits, (size_t)n);
}

/* See store_pg_conn.h (array literals). */
void store_pg_array_int(struct store_pg_text *t, int64_t value)
{
    SVC_ASSERT(t->length >= 1);
    pg_array_separator(t);
    pg_append_int(t, value);
}

/* See store_pg_conn.h (array literals). */
void store_pg_array_end(struct store_pg_text *t)
{
    SVC_ASSERT(t->length >= 1 && t->data[0] == '{');
    store_pg_text_append(t, "}", 1);
}

/* See store_pg_conn.h (text parameters). */
void store_pg_text_int(struct store_pg_text *t, int64_t value)
{
    store_pg_text_reset(t);
    pg_append_int(t, value);
    SVC_ASSERT(t->length >= 1);
}

/* See store_pg_conn.h (result helpers). */
int64_t store_pg_int(const PGresult *r, int row, int column)
{
    SVC_ASSERT(row >= 0 && row < PQntuples(r));
    SVC_ASSERT(column >= 0 && column < PQnfields(r));
    if (PQgetisnull(r, row, column)) {
        return 0;
    }
    return strtoll(PQgetvalue(r, row, column), NULL, 10);
}

/* See store_pg_conn.h (result helpers). */
void store_pg_row_event(const PGresult *r, int i, struct row_event *out)
{
    SVC_ASSERT(i >= 0 && i < PQntuples(r) && PQnfields(r) == 7);
    memset(out, 0, sizeof *out);
    out->seq = store_pg_int(r, i, 0);
    out->event_type = PQgetvalue(r, i, 1);
    out->event_version = (int)store_pg_int(r, i, 2);
    out->occurred_at_ms = store_pg_int(r, i, 3);
    out->store_id = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4);
    out->sku = PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5);
    out->data_json = PQgetvalue(r, i, 6);
    SVC_ASSERT(out->seq >= 1);
}
