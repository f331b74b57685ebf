/*
 * store.c - picks a backend by uri and forwards the store.h calls to its operations.
 *
 * "postgres://..." and "postgresql://..." go to store_pg.c; anything else is a SQLite file path
 * (store_sqlite.c). The writer and the I/O threads never know which one they talk to, except
 * through store_is_shared: a shared backend needs store_prepare_batch before every batch.
 */
#include "store/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_assert.h"

bool store_uri_is_postgres(const char *uri)
{
    SVC_ASSERT(uri != NULL);
    return strncmp(uri, "postgres://", 11) == 0 || strncmp(uri, "postgresql://", 13) == 0;
}

int store_open(struct store **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    int rc = store_uri_is_postgres(uri) ? store_pg_open(out, uri) : store_sqlite_open(out, uri);
    SVC_ASSERT(rc != 0 || ((*out)->ops != NULL && (*out)->ops->commit_batch != NULL));
    return rc;
}

void store_close(struct store *s)
{
    if (s != NULL) {
        s->ops->close(s);
    }
}

const char *store_backend_name(const struct store *s)
{
    return s->ops->name;
}

bool store_is_shared(const struct store *s)
{
    return s->ops->prepare_batch != NULL;
}

int store_load(struct store *s, const struct store_loader *loader, struct store_sequences *out)
{
    return s->ops->load(s, loader, out);
}

int store_prepare_batch(struct store *s, const struct store_batch_keys *keys,
                        const struct store_loader *fresh, struct store_sequences *out)
{
    SVC_ASSERT(store_is_shared(s));
    SVC_ASSERT(fresh->on_reservation_ended != NULL && fresh->on_events != NULL);
    return s->ops->prepare_batch(s, keys, fresh, out);
}

int store_idem_find(struct store *s, const char *principal, const char *key,
                    struct store_idem_found *out)
{
    return s->ops->idem_find(s, principal, key, out);
}

int store_reservation_status(struct store *s, int64_t seq, char status_out[16],
                             int64_t *version_out)
{
    return s->ops->reservation_status(s, seq, status_out, version_out);
}

int store_commit_batch(struct store *s, const struct store_batch *batch)
{
    int rc = s->ops->commit_batch(s, batch);
    SVC_ASSERT(rc == 0 || rc == STORE_COMMIT_RETRY || rc == SVC_ESTORAGE_UNAVAILABLE);
    return rc;
}

void store_batch_done(struct store *s)
{
    s->ops->batch_done(s);
}

int store_idem_prune(struct store *s, int64_t before_ms, int max_rows)
{
    return s->ops->idem_prune(s, before_ms, max_rows);
}

int store_reservations_due(struct store *s, int64_t before_ms, int64_t *out, int max)
{
    SVC_ASSERT(store_is_shared(s) && s->ops->reservations_due != NULL);
    SVC_ASSERT(max >= 1);
    int rc = s->ops->reservations_due(s, before_ms, out, max);
    SVC_ASSERT(rc <= max);
    return rc;
}

uint64_t store_busy_wait_count(void)
{
    return store_sqlite_busy_wait_count();
}

int store_reader_open(struct store_reader **out, const char *uri)
{
    SVC_ASSERT(out != NULL && uri != NULL);
    return store_uri_is_postgres(uri) ? store_pg_reader_open(out, uri)
                                      : store_sqlite_reader_open(out, uri);
}

void store_reader_close(struct store_reader *r)
{
    if (r != NULL) {
        r->ops->reader_close(r);
    }
}

int store_reader_order_json(struct store_reader *r, int64_t order_seq, char *out, size_t size,
                            size_t *length_out)
{
    return r->ops->reader_order_json(r, order_seq, out, size, length_out);
}

int store_order_json(int64_t order_seq, const char *const columns[5], int64_t created_at_ms,
                     char *out, size_t size, size_t *length_out)
{
    SVC_ASSERT(order_seq >= 1 && size > 0);
    char order_id[32];
    snprintf(order_id, sizeof order_id, "ord_%" PRId64, order_seq);
    struct jbuf b;
    jbuf_init(&b, out, size);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "orderId", order_id);
    jbuf_kv_str(&b, "customerId", columns[0]);
    jbuf_kv_str(&b, "storeId", columns[1]);
    jbuf_kv_str(&b, "status", columns[2]);
    jbuf_key(&b, "lines");
    jbuf_lit(&b, columns[3]); /* stored JSON, written by the writer */
    jbuf_key(&b, "history");
    jbuf_lit(&b, columns[4]);
    jbuf_kv_time(&b, "createdAt", created_at_ms);
    jbuf_lit(&b, "}");
    *length_out = b.length;
    return jbuf_ok(&b) ? 1 : SVC_ECAPACITY;
}

int store_reader_events(struct store_reader *r, int64_t since_seq, const char *store_id,
                        const char *sku, int limit, void *context,
                        int (*each_event)(void *context, const struct row_event *row))
{
    return r->ops->reader_events(r, since_seq, store_id, sku, limit, context, each_event);
}

int store_reader_items(struct store_reader *r, void *context,
                       int (*each_item)(void *context, const char *store_id, const char *sku,
                                        int64_t on_hand, int64_t reserved))
{
    return r->ops->reader_items(r, context, each_item);
}

int store_reader_event_seq_max(struct store_reader *r, int64_t *out)
{
    return r->ops->reader_event_seq_max(r, out);
}

int store_reader_idem(struct store_reader *r, const char *principal, const char *key,
                      struct store_idem_view *out)
{
    return r->ops->reader_idem(r, principal, key, out);
}

int store_reader_wait(struct store_reader *r, int timeout_ms, int64_t *seq_out)
{
    SVC_ASSERT(timeout_ms >= 0);
    *seq_out = 0;
    return r->ops->reader_wait != NULL ? r->ops->reader_wait(r, timeout_ms, seq_out) : 0;
}
