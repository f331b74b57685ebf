/*
 * problem.h - application/problem+json bodies (RFC 9457) for every operating error.
 *
 * Both the writer (refused commands) and the I/O threads (bad input) format errors here, so
 * the shape is the same everywhere: type, title, status, code, detail, and one optional
 * integer member such as "available" or "currentVersion".
 */
#ifndef STOCKD_PROBLEM_H
#define STOCKD_PROBLEM_H

#include <stddef.h>
#include <stdint.h>

/* Formats the problem for err (an svc_err) into out; returns the length. detail may be NULL;
 * extra_key NULL means no extra member. The output always fits REPLY_BODY_BYTES_MAX: a detail
 * that would not fit is cut. */
size_t problem_format(char *out, size_t size, int err, const char *detail, const char *extra_key,
                      int64_t extra_value);

#endif
