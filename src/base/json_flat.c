/*
 * json_flat.c - the allocation-free reader of flat JSON objects (json_flat.h says which and
 * why). A cursor moves over the text once; any byte outside the subset ends the read with
 * false, and the caller falls back to jansson.
 */
#include "base/json_flat.h"

#include <string.h>

#include "base/svc_assert.h"

struct jflat_cursor {
    const char *at;
    const char *end;
};

static void jflat_space(struct jflat_cursor *c)
{
    while (c->at < c->end &&
           (*c->at == ' ' || *c->at == '\t' || *c->at == '\n' || *c->at == '\r')) {
        c->at++;
    }
}

/* Consumes byte ch (after whitespace), or says it is not there. */
static bool jflat_take(struct jflat_cursor *c, char ch)
{
    jflat_space(c);
    if (c->at < c->end && *c->at == ch) {
        c->at++;
        return true;
    }
    return false;
}

/* A string of printable ASCII without escapes, after its opening quote. */
static bool jflat_string(struct jflat_cursor *c, const char **text, size_t *length)
{
    const char *start = c->at;
    while (c->at < c->end && *c->at != '"') {
        unsigned char ch = (unsigned char)*c->at;
        if (ch < 0x20 || ch > 0x7e || ch == '\\') {
            return false;
        }
        c->at++;
    }
    if (c->at == c->end) {
        return false;
    }
    *text = start;
    *length = (size_t)(c->at - start);
    c->at++; /* the closing quote */
    return true;
}

static bool jflat_integer(struct jflat_cursor *c, int64_t *out)
{
    bool negative = c->at < c->end && *c->at == '-';
    c->at += negative ? 1 : 0;
    const char *start = c->at;
    int64_t value = 0;
    while (c->at < c->end && *c->at >= '0' && *c->at <= '9' &&
           c->at - start < JSON_FLAT_DIGITS_MAX) {
        value = value * 10 + (*c->at - '0');
        c->at++;
    }
    size_t digits = (size_t)(c->at - start);
    if (digits == 0 || (digits > 1 && *start == '0')) {
        return false; /* no digit, or a leading zero, which JSON refuses */
    }
    /* A further digit (too long for the subset), a fraction or an exponent: jansson's. */
    if (c->at < c->end &&
        ((*c->at >= '0' && *c->at <= '9') || *c->at == '.' || *c->at == 'e' || *c->at == 'E')) {
        return false;
    }
    *out = negative ? -value : value;
    return true;
}

static bool jflat_word(struct jflat_cursor *c, const char *word)
{
    size_t length = strlen(word);
    if ((size_t)(c->end - c->at) < length || memcmp(c->at, word, length) != 0) {
        return false;
    }
    c->at += length;
    return true;
}

static bool jflat_object(struct jflat_cursor *c, struct json_flat *out, int depth);
static bool jflat_value(struct jflat_cursor *c, struct json_flat_member *m, int depth);

/* An array of values of the subset, after its opening bracket; *count: its elements. */
static bool jflat_array(struct jflat_cursor *c, int depth, int64_t *count)
{
    *count = 0;
    if (jflat_take(c, ']')) {
        return true;
    }
    struct json_flat_member element;
    do {
        if (!jflat_value(c, &element, depth)) {
            return false;
        }
        (*count)++;
    } while (jflat_take(c, ','));
    return jflat_take(c, ']');
}

/* A nested object or array, inside a container at level depth (the outermost object is 1),
 * kept as its text in m. */
static bool jflat_nested(struct jflat_cursor *c, struct json_flat_member *m, int depth)
{
    if (depth >= JSON_FLAT_DEPTH_MAX) {
        return false;
    }
    const char *start = c->at;
    bool ok;
    if (*c->at == '{') {
        struct json_flat members; /* checked and dropped: the caller reads the text again */
        m->type = JSON_FLAT_OBJECT;
        ok = jflat_object(c, &members, depth + 1);
    } else {
        c->at++;
        m->type = JSON_FLAT_ARRAY;
        ok = jflat_array(c, depth + 1, &m->integer);
    }
    m->text = start;
    m->length = (size_t)(c->at - start);
    return ok;
}

static bool jflat_value(struct jflat_cursor *c, struct json_flat_member *m, int depth)
{
    jflat_space(c);
    if (c->at == c->end) {
        return false;
    }
    m->text = NULL;
    m->length = 0;
    m->integer = 0;
    switch (*c->at) {
    case '"':
        c->at++;
        m->type = JSON_FLAT_STRING;
        return jflat_string(c, &m->text, &m->length);
    case 't': m->type = JSON_FLAT_TRUE; return jflat_word(c, "true");
    case 'f': m->type = JSON_FLAT_FALSE; return jflat_word(c, "false");
    case 'n': m->type = JSON_FLAT_NULL; return jflat_word(c, "null");
    case '{':
    case '[': return jflat_nested(c, m, depth);
    default: m->type = JSON_FLAT_INTEGER; return jflat_integer(c, &m->integer);
    }
}

static bool jflat_key_seen(const struct json_flat *flat, const char *key, size_t length)
{
    for (uint32_t i = 0; i < flat->count; i++) {
        const struct json_flat_member *m = &flat->members[i];
        if (m->key_length == length && memcmp(m->key, key, length) == 0) {
            return true;
        }
    }
    return false;
}

/* One "key": value pair of an object at level depth, appended to out. */
static bool jflat_member(struct jflat_cursor *c, struct json_flat *out, int depth)
{
    if (out->count == JSON_FLAT_MEMBERS_MAX || !jflat_take(c, '"')) {
        return false;
    }
    struct json_flat_member *m = &out->members[out->count];
    if (!jflat_string(c, &m->key, &m->key_length) || jflat_key_seen(out, m->key, m->key_length) ||
        !jflat_take(c, ':') || !jflat_value(c, m, depth)) {
        return false;
    }
    out->count++;
    return true;
}

/* An object at level depth, from its opening brace (after whitespace) to its closing one. */
static bool jflat_object(struct jflat_cursor *c, struct json_flat *out, int depth)
{
    out->count = 0;
    if (!jflat_take(c, '{')) {
        return false;
    }
    if (jflat_take(c, '}')) {
        return true;
    }
    do {
        if (!jflat_member(c, out, depth)) {
            return false;
        }
    } while (jflat_take(c, ','));
    SVC_ASSERT(out->count <= JSON_FLAT_MEMBERS_MAX);
    return jflat_take(c, '}');
}

bool json_flat_parse(const char *text, size_t length, struct json_flat *out)
{
    SVC_ASSERT(out != NULL && (text != NULL || length == 0));
    struct jflat_cursor c = {text, text + length};
    if (!jflat_object(&c, out, 1)) {
        return false;
    }
    jflat_space(&c);
    return c.at == c.end;
}

bool json_flat_next(const struct json_flat_member *array, size_t *at,
                    struct json_flat_member *element)
{
    SVC_ASSERT(array != NULL && array->type == JSON_FLAT_ARRAY && array->length >= 2);
    SVC_ASSERT(*at < array->length);
    struct jflat_cursor c = {array->text + *at, array->text + array->length};
    if (*at == 0) {
        c.at++; /* the opening bracket */
    }
    if (jflat_take(&c, ']')) {
        *at = (size_t)(c.at - 1 - array->text); /* stays on the closing bracket */
        return false;
    }
    /* The array was checked when its object was read: its elements are of the subset. */
    bool ok = jflat_value(&c, element, 1);
    SVC_ASSERT(ok);
    (void)jflat_take(&c, ',');
    *at = (size_t)(c.at - array->text);
    return true;
}

const struct json_flat_member *json_flat_get(const struct json_flat *flat, const char *name)
{
    SVC_ASSERT(flat != NULL && name != NULL && flat->count <= JSON_FLAT_MEMBERS_MAX);
    size_t length = strlen(name);
    for (uint32_t i = 0; i < flat->count; i++) {
        const struct json_flat_member *m = &flat->members[i];
        if (m->key_length == length && memcmp(m->key, name, length) == 0) {
            return m;
        }
    }
    return NULL;
}
