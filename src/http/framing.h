/*
 * framing.h - the HTTP/1.1 message-framing rules stockd enforces on top of h2o (RFC 9112
 * sections 5.2, 6.1 and 6.3): what in a request head makes the end of its body ambiguous.
 *
 * h2o 2.2.5 frames request bodies itself and hides the framing headers from handlers: it takes
 * the last Transfer-Encoding over any Content-Length, the first of several Content-Length
 * headers, and keeps the connection open afterwards. A front end that frames the same bytes
 * the other way (by the Content-Length, or by the other Content-Length) would then see our
 * "next request" as part of a body, or the reverse: request smuggling. So the I/O thread
 * re-reads the head h2o parsed (server.c) and refuses, with 400 bad_framing and a close, any
 * head that two readers could frame differently.
 *
 * This file only scans bytes: it knows nothing of h2o, sockets or responses (server.c does
 * that), and it does not check the one framing value h2o uses, which h2o checks itself (a
 * Content-Length of digits only, a Transfer-Encoding of exactly "chunked"). The tests are
 * tests/unit/test_framing.c and tests/blackbox/test_framing.py. Read server.c next.
 */
#ifndef STOCKD_HTTP_FRAMING_H
#define STOCKD_HTTP_FRAMING_H

#include <stdbool.h>
#include <stddef.h>

/* What one request head says about its framing. Counts are of header lines. */
struct framing_head {
    size_t length;                    /* bytes of the head, through its empty line; 0: none */
    unsigned content_length_count;    /* Content-Length lines */
    unsigned transfer_encoding_count; /* Transfer-Encoding lines */
    unsigned folded_count;            /* obs-fold continuation lines (RFC 9112 5.2) */
};

/* Scans the request head at the start of buf[0..size): an optional empty line (which h2o's
 * parser skips too), the request line, header lines up to the empty line. buf must hold a head
 * h2o's parser accepted (lines end in LF or CRLF; a header name is a token right before its
 * colon); the scan neither allocates nor looks past the head. Fills *out; out->length is 0
 * when buf holds no complete head. Called by server.c for every HTTP/1 request. */
void framing_scan(const char *buf, size_t size, struct framing_head *out);

/* The reason a head with these counts must be refused (a sentence for the problem detail),
 * or NULL when its framing is unambiguous. http_1_0: the request line says HTTP/1.0, where a
 * Transfer-Encoding is itself faulty framing (RFC 9112 6.1). Two Content-Length lines are
 * refused even when equal (RFC 9110 8.6 allows either; no client of ours sends two). */
const char *framing_refusal(const struct framing_head *head, bool http_1_0);

#endif
