/*
 * json_flat.h - a reader of the common shape of a request body, without allocation: one JSON
 * object whose members are plain strings, integers, true, false or null. The hot routes
 * (POST /v1/purchase, seed 000's POST /purchase) try it first and hand anything else to
 * jansson, whose answers (and error texts) stay the contract. So this reader may refuse more
 * than JSON does, never accept what jansson refuses, and must read every member as jansson
 * would (fuzz/fuzz_body.c checks both on every input).
 *
 * The subset: whitespace as JSON's (space, tab, CR, LF) around tokens; keys and strings of
 * printable ASCII without escapes (0x20-0x7e but '"' and '\\'); integers as JSON writes them
 * (-?(0|[1-9][0-9]*), at most JSON_FLAT_DIGITS_MAX digits: no fraction, no exponent); objects
 * of at most JSON_FLAT_MEMBERS_MAX members, no key twice (jansson is asked to refuse
 * duplicates); nothing after the closing brace but whitespace. A member's value may itself be
 * an object or an array of values of the subset, JSON_FLAT_DEPTH_MAX levels at most: the
 * whole text is checked, and such a member keeps its text (brackets included), which
 * json_flat_parse reads again when the caller wants its members (the stream's messages of
 * intake.h carry the request's body that way). Strings point into the caller's text, which
 * must outlive the result.
 */
#ifndef STOCKD_JSON_FLAT_H
#define STOCKD_JSON_FLAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* More members than a flat body of ours has (a purchase has five at most). */
#define JSON_FLAT_MEMBERS_MAX 16
/* 18 digits always fit an int64_t; longer numbers go to jansson (its range check). */
#define JSON_FLAT_DIGITS_MAX 18
/* Objects and arrays nested, the outermost object included: a batch message of the stream
 * has four (batch, its array of commands, a command, its body); deeper text goes to jansson.
 * Each level costs a struct json_flat of stack. */
#define JSON_FLAT_DEPTH_MAX 4

enum json_flat_type {
    JSON_FLAT_STRING,
    JSON_FLAT_INTEGER,
    JSON_FLAT_TRUE,
    JSON_FLAT_FALSE,
    JSON_FLAT_NULL,
    JSON_FLAT_OBJECT, /* text and length: the object's text, braces included */
    JSON_FLAT_ARRAY,  /* text and length: the array's text, brackets included */
};

struct json_flat_member {
    const char *key; /* not NUL-terminated: key_length bytes */
    size_t key_length;
    enum json_flat_type type;
    const char *text; /* a string's bytes (not NUL-terminated), an object's or an array's text */
    size_t length;
    int64_t integer; /* an integer's value, an array's number of elements, else 0 */
};

struct json_flat {
    uint32_t count;
    struct json_flat_member members[JSON_FLAT_MEMBERS_MAX];
};

/* Reads length bytes of text into out: true, or false when the text is not of the subset
 * above (then out says nothing and the caller parses it with jansson). */
bool json_flat_parse(const char *text, size_t length, struct json_flat *out);

/* The member called name (a C string), or NULL. */
const struct json_flat_member *json_flat_get(const struct json_flat *flat, const char *name);

/* The elements of an array member that json_flat_parse read: *at starts at 0 (and is advanced
 * here); each call sets *element to the next one (an object or array keeps its text) and
 * returns true, or returns false after the last. */
bool json_flat_next(const struct json_flat_member *array, size_t *at,
                    struct json_flat_member *element);

#endif
