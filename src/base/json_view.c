/*
 * json_view.c - members of a JSON object read through jansson or json_flat alike (json_view.h).
 */
#include "base/json_view.h"

#include "base/svc_assert.h"

static struct json_view_member json_view_flat(const struct json_flat *flat, const char *name)
{
    const struct json_flat_member *m = json_flat_get(flat, name);
    struct json_view_member out = {JSON_VIEW_ABSENT, NULL, 0, 0, NULL};
    if (m == NULL || m->type == JSON_FLAT_NULL) {
        return out;
    }
    out.type = m->type == JSON_FLAT_STRING    ? JSON_VIEW_STRING
               : m->type == JSON_FLAT_INTEGER ? JSON_VIEW_INTEGER
               : m->type == JSON_FLAT_OBJECT  ? JSON_VIEW_OBJECT
               : m->type == JSON_FLAT_ARRAY   ? JSON_VIEW_ARRAY
                                              : JSON_VIEW_OTHER;
    out.text = m->text;
    out.length = m->length;
    out.integer = m->integer;
    return out;
}

struct json_view_member json_view_get(const struct json_view *view, const char *name)
{
    SVC_ASSERT(view != NULL && name != NULL);
    SVC_ASSERT((view->json == NULL) != (view->flat == NULL));
    if (view->flat != NULL) {
        return json_view_flat(view->flat, name);
    }
    struct json_view_member out = {JSON_VIEW_OTHER, NULL, 0, 0, NULL};
    json_t *member = json_object_get(view->json, name);
    if (member == NULL || json_is_null(member)) {
        out.type = JSON_VIEW_ABSENT;
    } else if (json_is_string(member)) {
        out.type = JSON_VIEW_STRING;
        out.text = json_string_value(member);
        out.length = json_string_length(member);
    } else if (json_is_integer(member)) {
        out.type = JSON_VIEW_INTEGER;
        out.integer = json_integer_value(member);
    } else if (json_is_object(member) || json_is_array(member)) {
        out.type = json_is_object(member) ? JSON_VIEW_OBJECT : JSON_VIEW_ARRAY;
        out.json = member;
    }
    return out;
}

bool json_view_object(const struct json_view_member *m, struct json_flat *scratch,
                      struct json_view *out)
{
    SVC_ASSERT(m != NULL && scratch != NULL && out != NULL);
    *out = (struct json_view){NULL, NULL};
    if (m->type != JSON_VIEW_OBJECT) {
        return false;
    }
    if (m->json != NULL) {
        out->json = m->json;
        return true;
    }
    /* json_flat checked the object when it read the text around it. */
    bool ok = json_flat_parse(m->text, m->length, scratch);
    SVC_ASSERT(ok);
    out->flat = scratch;
    return true;
}

/* The flat member that json_view_flat read m from (its type back in json_flat's terms). */
static struct json_flat_member json_view_flat_array(const struct json_view_member *m)
{
    SVC_ASSERT(m->type == JSON_VIEW_ARRAY && m->json == NULL && m->text != NULL);
    struct json_flat_member array = {NULL, 0, JSON_FLAT_ARRAY, m->text, m->length, m->integer};
    return array;
}

size_t json_view_array_size(const struct json_view_member *m)
{
    SVC_ASSERT(m != NULL && m->type == JSON_VIEW_ARRAY);
    if (m->json != NULL) {
        return json_array_size(m->json);
    }
    SVC_ASSERT(m->integer >= 0);
    return (size_t)m->integer; /* counted when json_flat checked the array */
}

int json_view_next_object(struct json_view_items *items, struct json_flat *scratch,
                          struct json_view *out)
{
    SVC_ASSERT(items != NULL && items->array != NULL && items->array->type == JSON_VIEW_ARRAY);
    struct json_view_member element = {JSON_VIEW_OTHER, NULL, 0, 0, NULL};
    if (items->array->json != NULL) {
        if (items->next >= json_array_size(items->array->json)) {
            return 0;
        }
        json_t *value = json_array_get(items->array->json, items->next++);
        element.type = json_is_object(value) ? JSON_VIEW_OBJECT : JSON_VIEW_OTHER;
        element.json = value;
    } else {
        struct json_flat_member array = json_view_flat_array(items->array);
        struct json_flat_member next;
        if (!json_flat_next(&array, &items->at, &next)) {
            return 0;
        }
        element.type = next.type == JSON_FLAT_OBJECT ? JSON_VIEW_OBJECT : JSON_VIEW_OTHER;
        element.text = next.text;
        element.length = next.length;
    }
    return json_view_object(&element, scratch, out) ? 1 : -1;
}
