/*
 * apply_catalog.c - the catalogue commands: a new store, a new product with its first stock.
 *
 * Each checks first, changes nothing when it refuses, and on success adds the row, the event
 * and an outcome. Called through apply_command on the writer thread. Read apply_stock.c next.
 */
#include "base/errors.h"
#include "base/svc_assert.h"
#include "core/apply_internal.h"

void apply_store_create(struct domain *d, struct batch *b, const struct command *cmd,
                        struct outcome *out)
{
    SVC_ASSERT(cmd->kind == CMD_STORE_CREATE);
    uint32_t index = 0;
    int rc = dom_store_create(d, cmd->store_id, cmd->name, cmd->latency_ms, &index);
    if (rc != 0) {
        outcome_problem(out, rc,
                        rc == SVC_ESTORE_EXISTS ? "a store with this storeId exists"
                                                : "the store table is full (--max-stores)");
        return;
    }
    const struct dom_store *store = &d->stores[index];
    batch_add_store(b, store);
    struct event e;
    event_init(&e, EVENT_STORE_CREATED);
    e.store_id = store->id;
    e.name = store->name;
    e.latency_ms = store->latency_ms;
    batch_emit(b, &e);
    out->kind = OUTCOME_STORE;
    out->index = index;
    out->changed = true;
    SVC_ASSERT(index < d->store_count);
}

void apply_new_product(struct domain *d, struct batch *b, const char *sku, const char *name,
                       int64_t initial_on_hand, int32_t store_index, struct outcome *out)
{
    SVC_ASSERT(initial_on_hand >= 0 && initial_on_hand <= QTY_MAX);
    uint32_t item_index = 0;
    int rc = dom_product_create(d, sku, name, initial_on_hand, store_index, batch_now_ms(b),
                                &item_index);
    if (rc != 0) {
        outcome_problem(out, rc,
                        rc == SVC_EPRODUCT_EXISTS ? "a product with this sku exists"
                                                  : "the product or item table is full");
        return;
    }
    const struct dom_item *item = &d->items[item_index];
    batch_add_product(b, &d->products[item->product_index]);
    struct event e;
    event_init(&e, EVENT_PRODUCT_CREATED);
    e.name = d->products[item->product_index].name;
    batch_emit_stock(b, &e, d, item_index, item->on_hand, 0);
    out->kind = OUTCOME_PRODUCT;
    out->index = item_index;
    out->changed = true;
    SVC_ASSERT(item->version == 1);
}

void apply_product_create(struct domain *d, struct batch *b, const struct command *cmd,
                          struct outcome *out)
{
    SVC_ASSERT(cmd->kind == CMD_PRODUCT_CREATE);
    int32_t store_index = -1;
    if (cmd->has_store && (store_index = dom_store_find(d, cmd->store_id)) < 0) {
        outcome_problem(out, SVC_EUNKNOWN_STORE, "no store with this storeId");
        return;
    }
    apply_new_product(d, b, cmd->sku, cmd->name, cmd->initial_on_hand, store_index, out);
    SVC_ASSERT(out->kind == OUTCOME_PRODUCT || out->kind == OUTCOME_PROBLEM);
}
