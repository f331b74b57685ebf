/*
 * json_view.h - a JSON object as the decoders read it: jansson's, or json_flat's reading of the
 * same text (base/json_flat.h). The hot paths try json_flat first and fall back to jansson; the
 * decoders read either through this one interface, so each member's checks are one code
 * whichever parser read the text.
 */
#ifndef STOCKD_JSON_VIEW_H
#define STOCKD_JSON_VIEW_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/json_flat.h"

/* Exactly one of the two is set. */
struct json_view {
    json_t *json;                 /* borrowed */
    const struct json_flat *flat; /* borrowed */
};

enum json_view_type {
    JSON_VIEW_ABSENT, /* no such member, or null (as the decoders have always read it) */
    JSON_VIEW_STRING,
    JSON_VIEW_INTEGER,
    JSON_VIEW_OBJECT,
    JSON_VIEW_ARRAY,
    JSON_VIEW_OTHER, /* true, false, a real number */
};

struct json_view_member {
    enum json_view_type type;
    const char *text; /* a string's bytes (length of them, no NUL added); a flat container's */
    size_t length;
    int64_t integer; /* an integer's value; a flat array's number of elements */
    json_t *json;    /* an object or array of a jansson view, else NULL */
};

/* Where a walk over the elements of an array member stands (json_view_next_object). */
struct json_view_items {
    const struct json_view_member *array;
    size_t at;   /* json_flat_next's position in a flat array */
    size_t next; /* the index of the next element of a jansson array */
};

/* The member called name of view. */
struct json_view_member json_view_get(const struct json_view *view, const char *name);

/* The object member m as a view of its own, read into *scratch when it came from json_flat
 * (scratch must then outlive out). false when m is no object. */
bool json_view_object(const struct json_view_member *m, struct json_flat *scratch,
                      struct json_view *out);

/* The number of elements of array member m. */
size_t json_view_array_size(const struct json_view_member *m);

/* The next element of the array that items walks (start it as {&member, 0, 0}), as an object
 * view read into *scratch when flat: 1, or 0 after the last, or -1 when the element is no
 * object (out is then unset). */
int json_view_next_object(struct json_view_items *items, struct json_flat *scratch,
                          struct json_view *out);

#endif
