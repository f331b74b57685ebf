/*
 * json_flat_check.h - json_flat.h's promise as a predicate, for test_json_flat.c and
 * fuzz/fuzz_body.c: what json_flat read is, member for member and all the way down, the
 * object jansson read from the same text.
 */
#ifndef STOCKD_JSON_FLAT_CHECK_H
#define STOCKD_JSON_FLAT_CHECK_H

#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#include "base/json_flat.h"

static bool json_flat_check_object(const struct json_flat *flat, json_t *object);

/* Whether m (a member or an element that json_flat read) is the value v. */
static bool json_flat_check_value(const struct json_flat_member *m, json_t *v)
{
    switch (m->type) {
    case JSON_FLAT_STRING:
        return json_is_string(v) && json_string_length(v) == m->length &&
               memcmp(json_string_value(v), m->text, m->length) == 0;
    case JSON_FLAT_INTEGER: return json_is_integer(v) && json_integer_value(v) == m->integer;
    case JSON_FLAT_TRUE: return json_is_true(v);
    case JSON_FLAT_FALSE: return json_is_false(v);
    case JSON_FLAT_NULL: return json_is_null(v);
    case JSON_FLAT_OBJECT: {
        struct json_flat nested;
        return json_flat_parse(m->text, m->length, &nested) && json_flat_check_object(&nested, v);
    }
    case JSON_FLAT_ARRAY: {
        size_t at = 0;
        size_t count = 0;
        struct json_flat_member element;
        while (json_flat_next(m, &at, &element)) {
            if (!json_flat_check_value(&element, json_array_get(v, count))) {
                return false;
            }
            count++;
        }
        return json_is_array(v) && json_array_size(v) == count && m->integer == (int64_t)count;
    }
    }
    return false;
}

static bool json_flat_check_object(const struct json_flat *flat, json_t *object)
{
    if (!json_is_object(object) || json_object_size(object) != flat->count) {
        return false;
    }
    for (uint32_t i = 0; i < flat->count; i++) {
        const struct json_flat_member *m = &flat->members[i];
        json_t *v = json_object_getn(object, m->key, m->key_length);
        if (v == NULL || !json_flat_check_value(m, v)) {
            return false;
        }
    }
    return true;
}

#endif
