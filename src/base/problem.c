/*
 * problem.c - see problem.h.
 */
#include "base/problem.h"

#include <string.h>

#include "base/errors.h"
#include "base/json_out.h"
#include "base/svc_limits.h"
#include "base/svc_assert.h"

/* Bytes kept for a detail string, so that the rest of the body always fits. */
#define PROBLEM_DETAIL_BYTES_MAX 300
_Static_assert(PROBLEM_DETAIL_BYTES_MAX * 6 + 200 < REPLY_BODY_BYTES_MAX,
               "an escaped detail plus the fixed members must fit a reply body");

size_t problem_format(char *out, size_t size, int err, const char *detail, const char *extra_key,
                      int64_t extra_value)
{
    SVC_ASSERT(err < 0);
    SVC_ASSERT(size >= REPLY_BODY_BYTES_MAX);
    struct jbuf b;
    jbuf_init(&b, out, size);
    jbuf_lit(&b, "{");
    jbuf_kv_str(&b, "type", "about:blank");
    jbuf_kv_str(&b, "title", svc_err_message(err));
    jbuf_kv_int(&b, "status", svc_err_http_status(err));
    jbuf_kv_str(&b, "code", svc_err_name(err));
    if (detail != NULL) {
        size_t length = strnlen(detail, PROBLEM_DETAIL_BYTES_MAX);
        /* A cut inside a UTF-8 sequence would make the body invalid JSON: when the first
         * byte left out is a continuation byte, drop the partial character as well. */
        while (length > 0 && ((unsigned char)detail[length] & 0xc0) == 0x80) {
            length--;
        }
        SVC_ASSERT(length <= PROBLEM_DETAIL_BYTES_MAX);
        jbuf_key(&b, "detail");
        jbuf_str_n(&b, detail, length);
    }
    if (extra_key != NULL) {
        jbuf_kv_int(&b, extra_key, extra_value);
    }
    jbuf_lit(&b, "}");
    SVC_ASSERT(jbuf_ok(&b));
    return b.length;
}
