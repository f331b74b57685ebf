/*
 * errors.c - lookups generated from the SVC_ERR_MAP table in errors.h.
 */
#include "base/errors.h"

#include "base/svc_assert.h"

struct svc_err_entry {
    int status;
    const char *code;
    const char *title;
};

static const struct svc_err_entry svc_err_table[SVC_ERR_INDEX_COUNT] = {
#define SVC_ERR_ROW_(name, status, code, title) {status, code, title},
    SVC_ERR_MAP(SVC_ERR_ROW_)
#undef SVC_ERR_ROW_
};

static const struct svc_err_entry *svc_err_lookup(int err)
{
    if (err > -SVC_ERR_BASE || err <= -(SVC_ERR_BASE + SVC_ERR_INDEX_COUNT)) {
        return 0;
    }
    int index = -err - SVC_ERR_BASE;
    SVC_ASSERT(index >= 0);
    SVC_ASSERT(index < SVC_ERR_INDEX_COUNT);
    return &svc_err_table[index];
}

int svc_err_is_known(int err)
{
    return svc_err_lookup(err) != 0;
}

const char *svc_err_name(int err)
{
    const struct svc_err_entry *entry = svc_err_lookup(err);
    return entry ? entry->code : "internal";
}

const char *svc_err_message(int err)
{
    const struct svc_err_entry *entry = svc_err_lookup(err);
    return entry ? entry->title : "Internal error";
}

int svc_err_http_status(int err)
{
    const struct svc_err_entry *entry = svc_err_lookup(err);
    if (entry) {
        SVC_ASSERT(entry->status >= 400 && entry->status <= 599);
        return entry->status;
    }
    return 500;
}
