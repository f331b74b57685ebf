/*
 * store_pg_conn.c - one libpq connection: connect and prepare, the nonblocking pipeline round
 * trip with a deadline, and text-array parameters. See store_pg_conn.h.
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
#include "store/store.h"
#include "base/svc_assert.h"

void pg_conn_init(struct pg_conn *c, const char *uri, const char *role,
                  const struct pg_statement *statements, int statement_count, bool pipeline)
{
    SVC_ASSERT(strlen(uri) < sizeof c->uri);
    SVC_ASSERT(statement_count >= 0);
    memset(c, 0, sizeof *c);
    strcpy(c->uri, uri);
    c->role = role;
    c->statements = statements;
    c->statement_count = statement_count;
    c->pipeline = pipeline;
    c->timeout_ms = PG_ROUND_TRIP_TIMEOUT_MS;
}

void pg_conn_close(struct pg_conn *c)
{
    if (c->conn != NULL) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
}

void pg_conn_fail(struct pg_conn *c, const char *what)
{
    if (c->conn != NULL) {
        log_error("postgres %s: %s: %s", c->role, what, PQerrorMessage(c->conn));
        PQfinish(c->conn);
        c->conn = NULL;
    }
    c->was_down = true;
    c->next_attempt_ms = clock_mono_us() / 1000 + PG_RECONNECT_INTERVAL_MS;
}

static int pg_conn_prepare_all(struct pg_conn *c)
{
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

int pg_conn_ready(struct pg_conn *c)
{
    if (c->conn != NULL) {
        return 0;
    }
    if (clock_mono_us() / 1000 < c->next_attempt_ms) {
        return SVC_ESTORAGE_UNAVAILABLE; /* PostgreSQL was just found away: answer at once */
    }
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", PG_CONNECT_TIMEOUT_S);
    /* Custom plans always: a statement prepared while the tables were small (a fresh
     * database) would otherwise keep a generic plan that scans whole tables (seen: a batch's
     * idempotency lookup read every row until the first ANALYZE, 15k -> 2k purchases/s). */
    const char *const keys[] = {"dbname", "connect_timeout", "application_name", "options", NULL};
    const char *const values[] = {c->uri, timeout, "stockd", "-c plan_cache_mode=force_custom_plan",
                                  NULL};
    c->conn = PQconnectdbParams(keys, values, 1);
    if (c->conn == NULL || PQstatus(c->conn) != CONNECTION_OK) {
        pg_conn_fail(c, "connect");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    if (pg_conn_prepare_all(c) != 0) {
        pg_conn_fail(c, "prepare");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    if (c->pipeline && (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1)) {
        pg_conn_fail(c, "enter pipeline mode");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    c->connects++;
    if (c->was_down) {
        log_info("postgres %s: connected again", c->role);
        c->was_down = false;
    }
    return 0;
}

int pg_send(struct pg_conn *c, int index, int count, const char *const *values)
{
    SVC_ASSERT(c->pipeline && c->conn != NULL);
    SVC_ASSERT(index >= 0 && index < c->statement_count);
    SVC_ASSERT(count >= 0 && count <= PG_PARAMS_MAX);
    if (PQsendQueryPrepared(c->conn, c->statements[index].name, count, values, NULL, NULL, 0) !=
        1) {
        pg_conn_fail(c, c->statements[index].name);
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 0;
}

/* Waits for the socket (events) until deadline_us. 0 ready, -1 timeout or error. */
static int pg_wait_socket(struct pg_conn *c, short events, int64_t deadline_us)
{
    int64_t left_ms = (deadline_us - clock_mono_us()) / 1000;
    if (left_ms <= 0) {
        return -1;
    }
    struct pollfd fd = {PQsocket(c->conn), events, 0};
    int n = poll(&fd, 1, (int)left_ms);
    return n > 0 ? 0 : -1;
}

/* Sends everything queued. 0 or -1. */
static int pg_flush(struct pg_conn *c, int64_t deadline_us)
{
    for (;;) {
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
static int pg_next_result(struct pg_conn *c, int64_t deadline_us, PGresult **out)
{
    while (PQisBusy(c->conn)) {
        if (pg_wait_socket(c, POLLIN, deadline_us) != 0 || PQconsumeInput(c->conn) != 1) {
            return -1;
        }
    }
    *out = PQgetResult(c->conn);
    return 0;
}

void pg_results_clear(PGresult **results, int count)
{
    for (int i = 0; i < count; i++) {
        PQclear(results[i]);
        results[i] = NULL;
    }
}

/* Collects one statement's result and the NULL that ends it. */
static int pg_collect_one(struct pg_conn *c, int64_t deadline_us, PGresult **out)
{
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

int pg_round_trip(struct pg_conn *c, PGresult **results, int count)
{
    SVC_ASSERT(c->pipeline && c->conn != NULL);
    SVC_ASSERT(count >= 0 && count <= PG_PIPELINE_MAX);
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
        pg_results_clear(results, count);
        pg_conn_fail(c, "pipeline round trip");
        return SVC_ESTORAGE_UNAVAILABLE;
    }
    return 0;
}

bool pg_result_ok(const PGresult *r)
{
    ExecStatusType status = PQresultStatus(r);
    return r != NULL && (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK);
}

const char *pg_result_state(const PGresult *r)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL ? state : "";
}

PGresult *pg_exec(struct pg_conn *c, int index, int count, const char *const *values)
{
    SVC_ASSERT(c->pipeline);
    SVC_ASSERT(index >= 0 && index < c->statement_count);
    PGresult *r = NULL;
    if (pg_conn_ready(c) != 0 || pg_send(c, index, count, values) != 0 ||
        pg_round_trip(c, &r, 1) != 0) {
        return NULL; /* the connection was dropped; the next call reconnects */
    }
    if (!pg_result_ok(r)) {
        log_error("postgres %s: %s: %s", c->role, c->statements[index].name,
                  PQresultErrorMessage(r));
        PQclear(r);
        return NULL;
    }
    return r;
}

/* ---- text parameters -------------------------------------------------------------------- */

void pg_text_reset(struct pg_text *t)
{
    t->length = 0;
    if (t->data != NULL) {
        t->data[0] = '\0';
    }
}

void pg_text_free(struct pg_text *t)
{
    free(t->data);
    memset(t, 0, sizeof *t);
}

void pg_text_append(struct pg_text *t, const char *bytes, size_t length)
{
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
}

void pg_array_begin(struct pg_text *t)
{
    pg_text_reset(t);
    pg_text_append(t, "{", 1);
}

static void pg_array_separator(struct pg_text *t)
{
    SVC_ASSERT(t->length >= 1);
    if (t->data[t->length - 1] != '{') {
        pg_text_append(t, ",", 1);
    }
}

void pg_array_text(struct pg_text *t, const char *value)
{
    if (value == NULL) {
        pg_array_separator(t);
        pg_text_append(t, "NULL", 4);
        return;
    }
    pg_array_text_n(t, value, strlen(value));
}

void pg_array_text_n(struct pg_text *t, const char *value, size_t length)
{
    pg_array_separator(t);
    pg_text_append(t, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < length; i++) {
        if (value[i] == '"' || value[i] == '\\') {
            pg_text_append(t, value + run, i - run);
            pg_text_append(t, "\\", 1);
            run = i;
        }
    }
    pg_text_append(t, value + run, length - run);
    pg_text_append(t, "\"", 1);
}

static void pg_append_int(struct pg_text *t, int64_t value)
{
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%" PRId64, value);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof digits);
    pg_text_append(t, digits, (size_t)n);
}

void pg_array_int(struct pg_text *t, int64_t value)
{
    pg_array_separator(t);
    pg_append_int(t, value);
}

void pg_array_end(struct pg_text *t)
{
    pg_text_append(t, "}", 1);
}

void pg_text_int(struct pg_text *t, int64_t value)
{
    pg_text_reset(t);
    pg_append_int(t, value);
}

int64_t pg_int(const PGresult *r, int row, int column)
{
    if (PQgetisnull(r, row, column)) {
        return 0;
    }
    return strtoll(PQgetvalue(r, row, column), NULL, 10);
}

void pg_row_event(const PGresult *r, int i, struct row_event *out)
{
    SVC_ASSERT(i >= 0 && i < PQntuples(r) && PQnfields(r) == 7);
    memset(out, 0, sizeof *out);
    out->seq = pg_int(r, i, 0);
    out->event_type = PQgetvalue(r, i, 1);
    out->event_version = (int)pg_int(r, i, 2);
    out->occurred_at_ms = pg_int(r, i, 3);
    out->store_id = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4);
    out->sku = PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5);
    out->data_json = PQgetvalue(r, i, 6);
    SVC_ASSERT(out->seq >= 1);
}
