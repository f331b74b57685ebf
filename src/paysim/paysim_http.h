/*
 * paysim_http.h - the HTTP/1.1 of stockd-paysim, the standalone payment simulator: a request
 * parser (request line, Content-Length, Idempotency-Key, Connection; no chunked request
 * bodies: our client never sends one) and the answer formatter. Pure functions on buffers; the
 * connections and routes are paysim.c's. Not stockd's HTTP (that is h2o, src/http/).
 */
#ifndef STOCKD_PAYSIM_HTTP_H
#define STOCKD_PAYSIM_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "pay/pay.h"

/* A request's head and body: a charge is a few hundred bytes; the knobs a few dozen. */
#define PAYSIM_HTTP_REQUEST_BYTES_MAX 8192
/* An answer: a small JSON object. */
#define PAYSIM_HTTP_ANSWER_BYTES_MAX 1024
/* Bytes of a request's method and target that paysim.c routes on. */
#define PAYSIM_HTTP_METHOD_BYTES_MAX 7
#define PAYSIM_HTTP_TARGET_BYTES_MAX 127

enum paysim_http_parse { PAYSIM_HTTP_MORE = 0, PAYSIM_HTTP_DONE = 1 };

struct paysim_http_request {
    char method[PAYSIM_HTTP_METHOD_BYTES_MAX + 1];
    char target[PAYSIM_HTTP_TARGET_BYTES_MAX + 1];
    char key[PAY_KEY_BYTES_MAX + 1]; /* Idempotency-Key; "" when absent */
    bool key_too_long;               /* an Idempotency-Key longer than PAY_KEY_BYTES_MAX */
    bool keep_alive;                 /* HTTP/1.1 without Connection: close */
    const char *body;                /* into the data parsed */
    size_t body_length;
    size_t consumed; /* bytes of the data the request took */
};

/* Parses one request at the start of data[0..length): PAYSIM_HTTP_DONE with out filled,
 * PAYSIM_HTTP_MORE (a partial request), or SVC_EVALIDATION (not HTTP/1.x we take, a method or
 * target too long, a chunked body, or a request over PAYSIM_HTTP_REQUEST_BYTES_MAX). */
int paysim_http_parse_request(const char *data, size_t length, struct paysim_http_request *out);

/* Writes an answer with a JSON body (body_length bytes) into out (out_size bytes): status
 * line, Content-Type, Content-Length and Connection: close unless keep_alive. The length
 * written; the caller gives room (asserted). */
size_t paysim_http_format_answer(char *out, size_t out_size, int status, bool keep_alive,
                                 const char *body, size_t body_length);

#endif
