/*
 * store_pg_conn.h - what the PostgreSQL backend's three files share: one connection with its
 * prepared statements, the pipeline round trip with a deadline, text-array parameters and two
 * result helpers (store_pg_conn.c).
 *
 * A connection is opened lazily and again after any failure (at most every
 * STORE_PG_RECONNECT_INTERVAL_MS, unless store_pg_conn_reset says now: a reader whose session
 * was found gone reads again at once), so that a restarted PostgreSQL is picked up without
 * restarting stockd. Every wait is bounded (STORE_PG_ROUND_TRIP_TIMEOUT_MS for the writer,
 * STORE_PG_READ_TIMEOUT_MS for the readers): a server that stops answering turns into
 * SVC_ESTORAGE_UNAVAILABLE (503 to clients), never into a hung writer or I/O thread. Statements
 * are prepared once per connection (STYLE 24); no SQL is ever built from user input: values
 * travel as parameters, many rows at once as text arrays (unnest).
 *
 * This file is not an interface for anything outside the backend (store_pg.h opens it).
 * store_pg.c is the writer's handle, store_pg_reader.c the read-only handles. Read store_pg.c
 * next.
 */
#ifndef STOCKD_STORE_PG_CONN_H
#define STOCKD_STORE_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct row_event;

/* Longest connection uri accepted (--store). */
#define STORE_PG_URI_BYTES_MAX 512
/* A reconnect is tried at most this often while PostgreSQL is away. */
#define STORE_PG_RECONNECT_INTERVAL_MS 250
/* connect_timeout of libpq, in seconds. */
#define STORE_PG_CONNECT_TIMEOUT_S 2
/* The longest the writer waits for one pipeline round trip (a batch's locks or its commit). */
#define STORE_PG_ROUND_TRIP_TIMEOUT_MS 5000
/* The longest an I/O thread waits for a read (an order, the event log, a key's record); it
 * serves nothing else meanwhile. */
#define STORE_PG_READ_TIMEOUT_MS 2000
/* Most statements in one pipeline round trip. */
#define STORE_PG_PIPELINE_MAX 16
/* Most parameters of one statement. */
#define STORE_PG_PARAMS_MAX 12

struct store_pg_statement {
    const char *name;
    const char *sql;
};

struct store_pg_conn {
    char uri[STORE_PG_URI_BYTES_MAX];
    const char *role;                            /* "writer", "reader": for logs */
    const struct store_pg_statement *statements; /* prepared at each connect */
    int statement_count;
    bool pipeline;           /* nonblocking pipeline mode (all but migration) */
    int timeout_ms;          /* deadline of one round trip */
    PGconn *conn;            /* owned; NULL while disconnected */
    int64_t next_attempt_ms; /* monotonic ms of the next reconnect attempt */
    bool was_down;           /* for the "reconnected" log line */
    bool lost;         /* the last failure found the session gone (closed, reset, SQLSTATE 08xxx or
                        * 57P01-57P03), not a deadline nor an error of the statement itself */
    uint64_t connects; /* successful connects: a transaction lives on one of them */
};

/* A growable text parameter: an array literal or a number. */
struct store_pg_text {
    char *data; /* owned */
    size_t length;
    size_t capacity;
};

/* Copies uri (shorter than STORE_PG_URI_BYTES_MAX); no connection is made yet. statements
 * must outlive c. Called by the opens of both handles. */
void store_pg_conn_init(struct store_pg_conn *c, const char *uri, const char *role,
                        const struct store_pg_statement *statements, int statement_count,
                        bool pipeline);
/* Closes the connection if open; c can be connected again. */
void store_pg_conn_close(struct store_pg_conn *c);
/* Connects (and prepares) if not connected. 0 or SVC_ESTORAGE_UNAVAILABLE (at once, without
 * trying, within STORE_PG_RECONNECT_INTERVAL_MS of the last failure). */
int store_pg_conn_ready(struct store_pg_conn *c);
/* Logs what failed and drops the connection; the next store_pg_conn_ready reconnects. Sets
 * c->lost when libpq found the session gone (not when a deadline passed). */
void store_pg_conn_fail(struct store_pg_conn *c, const char *what);
/* Drops the connection if any, without a log line, and lets the next store_pg_conn_ready
 * connect at once instead of after STORE_PG_RECONNECT_INTERVAL_MS: for a reader that is about
 * to read again on a fresh session (store_pg_reader.c). */
void store_pg_conn_reset(struct store_pg_conn *c);

/* Pipeline mode: queues statement `index` with count values (NULL entries are SQL NULL; they
 * must stay valid until the round trip). 0 or SVC_ESTORAGE_UNAVAILABLE (connection dropped). */
int store_pg_send(struct store_pg_conn *c, int index, int count, const char *const *values);
/* Pipeline mode: ends the round trip and collects one result per queued statement into
 * results (count of them), in order. 0 when the round trip completed (results may hold SQL
 * errors; the caller frees them), SVC_ESTORAGE_UNAVAILABLE when the connection failed (results
 * freed, connection dropped). */
int store_pg_round_trip(struct store_pg_conn *c, PGresult **results, int count);
/* Frees count results and sets them to NULL. */
void store_pg_results_clear(PGresult **results, int count);
/* True when r is a successful result. */
bool store_pg_result_ok(const PGresult *r);
/* The SQLSTATE of a failed result ("" if none). */
const char *store_pg_result_state(const PGresult *r);

/* One statement as its own round trip (within the deadline), connecting first if needed: its
 * result (the caller clears it), or NULL after a failure (logged; connection dropped when it
 * broke, and c->lost set when the session was gone: an error result whose SQLSTATE says so
 * counts too). */
PGresult *store_pg_exec(struct store_pg_conn *c, int index, int count, const char *const *values);

/* Text parameters. A store_pg_text starts zeroed; growth past the largest batch so far
 * reallocates, and running out of memory there is fatal (asserted). */
void store_pg_text_reset(struct store_pg_text *t);
void store_pg_text_free(struct store_pg_text *t);
void store_pg_text_append(struct store_pg_text *t, const char *bytes, size_t length);
/* Array literals: begin with "{", add elements, end with "}". */
void store_pg_array_begin(struct store_pg_text *t);
void store_pg_array_text(struct store_pg_text *t, const char *value); /* NULL: SQL NULL */
void store_pg_array_text_n(struct store_pg_text *t, const char *value, size_t length);
void store_pg_array_int(struct store_pg_text *t, int64_t value);
/* length bytes as a quoted hex string (decode(x, 'hex') makes them bytea again); NULL bytes:
 * SQL NULL. */
void store_pg_array_hex(struct store_pg_text *t, const void *bytes, size_t length);
void store_pg_array_end(struct store_pg_text *t);
/* A plain integer parameter. */
void store_pg_text_int(struct store_pg_text *t, int64_t value);

/* The event of row i of a result whose columns are STORE_PG_EVENT_COLUMNS. Its strings point
 * into the result. Called by the writer's gap events and the readers' event reads. */
#define STORE_PG_EVENT_COLUMNS "seq, event_type, event_version, occurred_at_ms, store_id, sku, data"
void store_pg_row_event(const PGresult *r, int i, struct row_event *out);

/* An integer column (0 when NULL). */
int64_t store_pg_int(const PGresult *r, int row, int column);

#endif
