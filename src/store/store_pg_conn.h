/*
 * store_pg_conn.h - what the PostgreSQL backend's files share: one connection with its
 * prepared statements, the pipeline round trip with a deadline, and text-array parameters.
 *
 * A connection is opened lazily and again after any failure (at most every
 * PG_RECONNECT_INTERVAL_MS), so that a restarted PostgreSQL is picked up without restarting
 * stockd. Every wait is bounded (PG_ROUND_TRIP_TIMEOUT_MS for the writer, PG_READ_TIMEOUT_MS
 * for the I/O threads' readers): a server that stops answering turns into
 * SVC_ESTORAGE_UNAVAILABLE (503 to clients), never into a hung writer or I/O thread. Statements
 * are prepared once per connection (STYLE 24); no SQL is ever built from user input: values
 * travel as parameters, many rows at once as text arrays (unnest).
 *
 * Read store_pg.c next.
 */
#ifndef STOCKD_STORE_PG_CONN_H
#define STOCKD_STORE_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest connection uri accepted (--store). */
#define PG_URI_BYTES_MAX 512
/* A reconnect is tried at most this often while PostgreSQL is away. */
#define PG_RECONNECT_INTERVAL_MS 250
/* connect_timeout of libpq, in seconds. */
#define PG_CONNECT_TIMEOUT_S 2
/* The longest the writer waits for one pipeline round trip (a batch's locks or its commit). */
#define PG_ROUND_TRIP_TIMEOUT_MS 5000
/* The longest an I/O thread waits for a read (an order, the event log, a key's record); it
 * serves nothing else meanwhile. */
#define PG_READ_TIMEOUT_MS 2000
/* Most statements in one pipeline round trip. */
#define PG_PIPELINE_MAX 16
/* Most parameters of one statement. */
#define PG_PARAMS_MAX 8

struct pg_statement {
    const char *name;
    const char *sql;
};

struct pg_conn {
    char uri[PG_URI_BYTES_MAX];
    const char *role;                      /* "writer", "reader": for logs */
    const struct pg_statement *statements; /* prepared at each connect */
    int statement_count;
    bool pipeline;           /* nonblocking pipeline mode (all but migration) */
    int timeout_ms;          /* deadline of one round trip */
    PGconn *conn;            /* owned; NULL while disconnected */
    int64_t next_attempt_ms; /* monotonic ms of the next reconnect attempt */
    bool was_down;           /* for the "reconnected" log line */
    uint64_t connects;       /* successful connects: a transaction lives on one of them */
};

/* A growable text parameter: an array literal or a number. */
struct pg_text {
    char *data; /* owned */
    size_t length;
    size_t capacity;
};

/* Copies uri; no connection is made yet. */
void pg_conn_init(struct pg_conn *c, const char *uri, const char *role,
                  const struct pg_statement *statements, int statement_count, bool pipeline);
/* Closes the connection if open. */
void pg_conn_close(struct pg_conn *c);
/* Connects (and prepares) if not connected. 0 or SVC_ESTORAGE_UNAVAILABLE. */
int pg_conn_ready(struct pg_conn *c);
/* Drops the connection after a failure; the next pg_conn_ready reconnects. */
void pg_conn_fail(struct pg_conn *c, const char *what);

/* Pipeline mode: queues statement `index` with values (NULL entries are SQL NULL). */
int pg_send(struct pg_conn *c, int index, int count, const char *const *values);
/* Pipeline mode: ends the round trip and collects one result per queued statement into
 * results (count of them), in order. 0 when the round trip completed (results may hold SQL
 * errors; the caller frees them), SVC_ESTORAGE_UNAVAILABLE when the connection failed (results
 * freed, connection dropped). */
int pg_round_trip(struct pg_conn *c, PGresult **results, int count);
/* Frees count results. */
void pg_results_clear(PGresult **results, int count);
/* True when r is a successful result. */
bool pg_result_ok(const PGresult *r);
/* The SQLSTATE of a failed result ("" if none). */
const char *pg_result_state(const PGresult *r);

/* One statement as its own round trip (within the deadline): its result (the caller clears
 * it), or NULL after a failure (connection dropped when it broke). */
PGresult *pg_exec(struct pg_conn *c, int index, int count, const char *const *values);

/* Text parameters. */
void pg_text_reset(struct pg_text *t);
void pg_text_free(struct pg_text *t);
void pg_text_append(struct pg_text *t, const char *bytes, size_t length);
/* Array literals: begin with "{", add elements, end with "}". */
void pg_array_begin(struct pg_text *t);
void pg_array_text(struct pg_text *t, const char *value); /* NULL: SQL NULL */
void pg_array_text_n(struct pg_text *t, const char *value, size_t length);
void pg_array_int(struct pg_text *t, int64_t value);
void pg_array_end(struct pg_text *t);
/* A plain integer parameter. */
void pg_text_int(struct pg_text *t, int64_t value);

/* store_pg_reader.c: the reader operations of the PostgreSQL backend (see store.h). */
struct store_reader;
struct store_idem_view;
struct row_event;
void pg_reader_close(struct store_reader *r);
int pg_reader_order_json(struct store_reader *r, int64_t order_seq, char *out, size_t size,
                         size_t *length_out);
int pg_reader_events(struct store_reader *r, int64_t since_seq, const char *store_id,
                     const char *sku, int limit, void *context,
                     int (*each_event)(void *context, const struct row_event *row));
int pg_reader_items(struct store_reader *r, void *context,
                    int (*each_item)(void *context, const char *store_id, const char *sku,
                                     int64_t on_hand, int64_t reserved));
int pg_reader_event_seq_max(struct store_reader *r, int64_t *out);
int pg_reader_idem(struct store_reader *r, const char *principal, const char *key,
                   struct store_idem_view *out);
int pg_reader_wait(struct store_reader *r, int timeout_ms, int64_t *seq_out);
/* The operations table of store_pg.c, which readers share. */
extern const struct store_ops store_pg_ops;

/* The event of row i of a result whose columns are PG_EVENT_COLUMNS. Its strings point into
 * the result. */
#define PG_EVENT_COLUMNS "seq, event_type, event_version, occurred_at_ms, store_id, sku, data"
void pg_row_event(const PGresult *r, int i, struct row_event *out);

/* Column helpers: an integer column (0 when NULL). */
int64_t pg_int(const PGresult *r, int row, int column);

#endif
