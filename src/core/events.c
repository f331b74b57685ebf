/*
 * events.c - the catalogue's tables, the encoder and the decoder. See events.h.
 *
 * Both directions walk the same member table (EVENT_FIELD_MAP): the encoder writes the members
 * of an event's type in table order with json_out (no allocation), the decoder parses the
 * stored JSON with jansson and copies what it finds into a caller's arena. Not here: which
 * events a command appends (core/apply_*.c), how they are stored (store/) or projected
 * (read/projector.c).
 */
#include "core/events.h"

#include <jansson.h>
#include <stddef.h>
#include <string.h>

#include "base/errors.h"
#include "base/svc_assert.h"

enum event_field_kind {
    EVENT_KIND_STR,
    EVENT_KIND_OPT_STR,
    EVENT_KIND_INT,
    EVENT_KIND_OPT_INT,
    EVENT_KIND_TIME_MS,
    EVENT_KIND_LINES,
    EVENT_KIND_ADJUSTMENTS,
};

struct event_field_info {
    const char *json;
    enum event_field_kind kind;
    size_t offset; /* of the member in struct event */
};

static const struct event_field_info event_fields[EVENT_FIELD_COUNT] = {
#define EVENT_FIELD_INFO_(name, json_name, kind, member) \
    {json_name, EVENT_KIND_##kind, offsetof(struct event, member)},
    EVENT_FIELD_MAP(EVENT_FIELD_INFO_)
#undef EVENT_FIELD_INFO_
};

struct event_type_info {
    const char *name;
    int version;
    bool stock;
    uint32_t members;
};

static const struct event_type_info event_types[EVENT_TYPE_COUNT] = {
#define EVENT_TYPE_INFO_(name, text, version, stock, members) {text, version, stock, members},
    EVENT_TYPE_MAP(EVENT_TYPE_INFO_)
#undef EVENT_TYPE_INFO_
};

/* ---- the catalogue ---------------------------------------------------------------------- */

const char *event_type_name(enum event_type type)
{
    SVC_ASSERT((unsigned)type < EVENT_TYPE_COUNT);
    SVC_ASSERT(event_types[type].name != NULL);
    return event_types[type].name;
}

int event_type_version(enum event_type type)
{
    SVC_ASSERT((unsigned)type < EVENT_TYPE_COUNT);
    SVC_ASSERT(event_types[type].version >= 1);
    return event_types[type].version;
}

bool event_type_is_stock(enum event_type type)
{
    SVC_ASSERT((unsigned)type < EVENT_TYPE_COUNT);
    /* A stock event names its item: the catalogue gives it every stock member. */
    if (event_types[type].stock) {
        SVC_ASSERT((event_types[type].members & EVF_STOCK) == EVF_STOCK);
    }
    return event_types[type].stock;
}

uint32_t event_type_members(enum event_type type)
{
    SVC_ASSERT((unsigned)type < EVENT_TYPE_COUNT);
    SVC_ASSERT(event_types[type].members != 0);
    return event_types[type].members;
}

enum event_type event_type_parse(const char *text)
{
    SVC_ASSERT(text != NULL);
    for (unsigned t = 0; t < EVENT_TYPE_COUNT; t++) {
        if (strcmp(event_types[t].name, text) == 0) {
            return (enum event_type)t;
        }
    }
    return EVENT_UNKNOWN;
}

void event_init(struct event *e, enum event_type type)
{
    SVC_ASSERT((unsigned)type < EVENT_TYPE_COUNT);
    memset(e, 0, sizeof *e);
    e->type = type;
    e->event_version = event_types[type].version;
    e->type_name = event_types[type].name;
    e->present = event_types[type].members; /* an event made in code has all of them */
    SVC_ASSERT(e->seq == 0 && e->data_json == NULL);
}

void event_row(const struct event *e, struct row_event *out)
{
    SVC_ASSERT(e->seq >= 1);
    SVC_ASSERT(e->data_json != NULL && e->type_name != NULL);
    *out = (struct row_event){e->seq,      e->type_name, e->event_version, e->occurred_at_ms,
                              e->store_id, e->sku,       e->data_json};
}

void event_copy_strings(struct event *e, const char *(*copy)(void *context, const char *text),
                        void *context)
{
    uint32_t members = event_type_members(e->type);
    for (unsigned f = 0; f < EVENT_FIELD_COUNT; f++) {
        const struct event_field_info *info = &event_fields[f];
        bool text = info->kind == EVENT_KIND_STR || info->kind == EVENT_KIND_OPT_STR;
        const char **member = (const char **)((char *)e + info->offset);
        if ((members & (1u << f)) != 0 && text && *member != NULL) {
            *member = copy(context, *member);
            SVC_ASSERT(*member != NULL);
        }
    }
    /* The row's store column may be set without the member (TransferCompleted). */
    if ((members & EVF(STORE_ID)) == 0 && e->store_id != NULL) {
        e->store_id = copy(context, e->store_id);
    }
}

/* ---- encoding ----------------------------------------------------------------------------- */

static const char *event_member_str(const struct event *e, const struct event_field_info *f)
{
    return *(const char *const *)((const char *)e + f->offset);
}

static int64_t event_member_int(const struct event *e, const struct event_field_info *f)
{
    return *(const int64_t *)((const char *)e + f->offset);
}

static void event_encode_lines(const struct event *e, struct jbuf *out)
{
    SVC_ASSERT(e->line_count == 0 || e->lines != NULL);
    jbuf_lit(out, "[");
    for (uint32_t i = 0; i < e->line_count; i++) {
        jbuf_lit(out, i == 0 ? "{" : ",{");
        jbuf_kv_str(out, "sku", e->lines[i].sku);
        jbuf_kv_int(out, "qty", e->lines[i].qty);
        jbuf_lit(out, "}");
    }
    jbuf_lit(out, "]");
}

static void event_encode_adjustments(const struct event *e, struct jbuf *out)
{
    SVC_ASSERT(e->adjustment_count == 0 || e->adjustments != NULL);
    jbuf_lit(out, "[");
    for (uint32_t i = 0; i < e->adjustment_count; i++) {
        const struct event_adjustment *a = &e->adjustments[i];
        jbuf_lit(out, i == 0 ? "{" : ",{");
        jbuf_kv_str(out, "sku", a->sku);
        jbuf_kv_int(out, "before", a->before);
        jbuf_kv_int(out, "after", a->after);
        jbuf_kv_int(out, "delta", a->delta);
        jbuf_lit(out, "}");
    }
    jbuf_lit(out, "]");
}

static void event_encode_field(const struct event *e, const struct event_field_info *f,
                               struct jbuf *out)
{
    switch (f->kind) {
    case EVENT_KIND_OPT_STR:
        if (event_member_str(e, f) == NULL || event_member_str(e, f)[0] == '\0') {
            return;
        }
        /* fall through */
    case EVENT_KIND_STR:
        SVC_ASSERT(event_member_str(e, f) != NULL); /* the applier fills every member */
        jbuf_kv_str(out, f->json, event_member_str(e, f));
        return;
    case EVENT_KIND_OPT_INT:
        if (event_member_int(e, f) == 0) {
            return;
        }
        /* fall through */
    case EVENT_KIND_INT: jbuf_kv_int(out, f->json, event_member_int(e, f)); return;
    case EVENT_KIND_TIME_MS: jbuf_kv_time(out, f->json, event_member_int(e, f)); return;
    case EVENT_KIND_LINES:
        jbuf_key(out, f->json);
        event_encode_lines(e, out);
        return;
    case EVENT_KIND_ADJUSTMENTS:
        jbuf_key(out, f->json);
        event_encode_adjustments(e, out);
        return;
    }
    SVC_UNREACHABLE();
}

void event_encode(const struct event *e, struct jbuf *out)
{
    uint32_t members = event_type_members(e->type);
    SVC_ASSERT(!event_type_is_stock(e->type) || (e->store_id != NULL && e->sku != NULL));
    jbuf_lit(out, "{");
    for (unsigned f = 0; f < EVENT_FIELD_COUNT; f++) {
        if (members & (1u << f)) {
            event_encode_field(e, &event_fields[f], out);
        }
    }
    jbuf_lit(out, "}");
}

/* ---- decoding ----------------------------------------------------------------------------- */

/* Copies length bytes of text into the arena, NUL-terminated; NULL when it is full. */
static const char *event_arena_copy(struct event_arena *a, const char *text, size_t length)
{
    SVC_ASSERT(a->used <= a->size);
    if (text == NULL) {
        return NULL;
    }
    if (length + 1 > a->size - a->used) {
        return NULL;
    }
    char *out = a->data + a->used;
    memcpy(out, text, length);
    out[length] = '\0';
    a->used += length + 1;
    return out;
}

/* Room for count items of size bytes, aligned for int64_t; NULL when it is full. */
static void *event_arena_array(struct event_arena *a, size_t count, size_t size)
{
    size_t start = (a->used + 7) & ~(size_t)7;
    if (start > a->size || count * size > a->size - start) {
        return NULL;
    }
    a->used = start + count * size;
    return a->data + start;
}

static const char *event_json_str(struct event_arena *a, json_t *value, int *rc)
{
    if (!json_is_string(value)) {
        *rc = SVC_EVALIDATION;
        return NULL;
    }
    const char *copy = event_arena_copy(a, json_string_value(value), json_string_length(value));
    if (copy == NULL) {
        *rc = SVC_ECAPACITY;
    }
    return copy;
}

static int64_t event_json_int(json_t *value, int *rc)
{
    if (!json_is_integer(value)) {
        *rc = SVC_EVALIDATION;
        return 0;
    }
    return (int64_t)json_integer_value(value);
}

static int event_decode_lines(json_t *array, struct event *out, struct event_arena *a)
{
    if (!json_is_array(array)) {
        return SVC_EVALIDATION;
    }
    size_t count = json_array_size(array);
    struct event_line *lines = event_arena_array(a, count, sizeof *lines);
    if (lines == NULL && count > 0) {
        return SVC_ECAPACITY;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        json_t *line = json_array_get(array, i);
        lines[i].sku = event_json_str(a, json_object_get(line, "sku"), &rc);
        lines[i].qty = event_json_int(json_object_get(line, "qty"), &rc);
    }
    out->lines = lines;
    out->line_count = (uint32_t)count;
    return rc;
}

static int event_decode_adjustments(json_t *array, struct event *out, struct event_arena *a)
{
    if (!json_is_array(array)) {
        return SVC_EVALIDATION;
    }
    size_t count = json_array_size(array);
    struct event_adjustment *adjustments = event_arena_array(a, count, sizeof *adjustments);
    if (adjustments == NULL && count > 0) {
        return SVC_ECAPACITY;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        json_t *item = json_array_get(array, i);
        adjustments[i].sku = event_json_str(a, json_object_get(item, "sku"), &rc);
        adjustments[i].before = event_json_int(json_object_get(item, "before"), &rc);
        adjustments[i].after = event_json_int(json_object_get(item, "after"), &rc);
        adjustments[i].delta = event_json_int(json_object_get(item, "delta"), &rc);
    }
    out->adjustments = adjustments;
    out->adjustment_count = (uint32_t)count;
    return rc;
}

/* Decodes one present member into out. */
static int event_decode_field(const struct event_field_info *f, json_t *value, struct event *out,
                              struct event_arena *a)
{
    int rc = 0;
    char *member = (char *)out + f->offset;
    switch (f->kind) {
    case EVENT_KIND_STR:
    case EVENT_KIND_OPT_STR: *(const char **)member = event_json_str(a, value, &rc); return rc;
    case EVENT_KIND_INT:
    case EVENT_KIND_OPT_INT: *(int64_t *)member = event_json_int(value, &rc); return rc;
    case EVENT_KIND_TIME_MS: return json_is_string(value) ? 0 : SVC_EVALIDATION;
    case EVENT_KIND_LINES: return event_decode_lines(value, out, a);
    case EVENT_KIND_ADJUSTMENTS: return event_decode_adjustments(value, out, a);
    }
    SVC_UNREACHABLE();
}

/* The row's columns into out (strings copied). */
static int event_decode_columns(const struct row_event *row, struct event *out,
                                struct event_arena *a)
{
    memset(out, 0, sizeof *out);
    out->seq = row->seq;
    out->type = event_type_parse(row->event_type);
    out->event_version = row->event_version;
    out->occurred_at_ms = row->occurred_at_ms;
    out->type_name = out->type == EVENT_UNKNOWN
                         ? event_arena_copy(a, row->event_type, strlen(row->event_type))
                         : event_types[out->type].name;
    out->store_id =
        row->store_id ? event_arena_copy(a, row->store_id, strlen(row->store_id)) : NULL;
    out->sku = row->sku ? event_arena_copy(a, row->sku, strlen(row->sku)) : NULL;
    out->data_json = event_arena_copy(a, row->data_json, strlen(row->data_json));
    bool copied = out->type_name != NULL && out->data_json != NULL &&
                  (row->store_id == NULL || out->store_id != NULL) &&
                  (row->sku == NULL || out->sku != NULL);
    return copied ? 0 : SVC_ECAPACITY;
}

int event_decode(const struct row_event *row, struct event *out, struct event_arena *arena)
{
    SVC_ASSERT(row->seq >= 1 && row->event_type != NULL && row->data_json != NULL);
    int rc = event_decode_columns(row, out, arena);
    if (rc != 0 || out->type == EVENT_UNKNOWN) {
        return rc; /* a type of a newer build: the columns are all a reader can use */
    }
    json_t *data = json_loads(row->data_json, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(data)) {
        json_decref(data);
        return SVC_EVALIDATION;
    }
    const char *store_column = out->store_id;
    const char *sku_column = out->sku;
    uint32_t members = event_types[out->type].members;
    for (unsigned f = 0; rc == 0 && f < EVENT_FIELD_COUNT; f++) {
        json_t *value = json_object_get(data, event_fields[f].json);
        if ((members & (1u << f)) == 0 || value == NULL) {
            continue;
        }
        rc = event_decode_field(&event_fields[f], value, out, arena);
        out->present |= 1u << f;
    }
    json_decref(data);
    /* The columns win over the members: they are what the store filters on. */
    out->store_id = store_column != NULL ? store_column : out->store_id;
    out->sku = sku_column != NULL ? sku_column : out->sku;
    return rc;
}
