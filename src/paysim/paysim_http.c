/*
 * paysim_http.c - the request parser and answer formatter of paysim_http.h. The parser works
 * on the bytes received so far and is called again when more come (a request is small).
 */
#include "paysim/paysim_http.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "base/errors.h"
#include "base/svc_assert.h"
#include "base/text.h"

/* Copies value (length bytes) into out (size bytes) when it fits; false when it does not. */
static bool paysim_http_copy(char *out, size_t size, const char *value, size_t length)
{
    SVC_ASSERT(size > 0);
    if (length >= size) {
        return false;
    }
    memcpy(out, value, length);
    out[length] = '\0';
    return true;
}

/* The request line "METHOD SP TARGET SP HTTP/1.x" (length bytes, no CRLF) into out. */
static int paysim_http_parse_line(const char *line, size_t length, struct paysim_http_request *out)
{
    const char *sp1 = memchr(line, ' ', length);
    const char *sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', length - (size_t)(sp1 + 1 - line)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1) {
        return SVC_EVALIDATION;
    }
    size_t version_length = length - (size_t)(sp2 + 1 - line);
    if (version_length != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        (sp2[8] != '0' && sp2[8] != '1')) {
        return SVC_EVALIDATION;
    }
    out->keep_alive = sp2[8] == '1';
    if (!paysim_http_copy(out->method, sizeof out->method, line, (size_t)(sp1 - line)) ||
        !paysim_http_copy(out->target, sizeof out->target, sp1 + 1, (size_t)(sp2 - sp1 - 1))) {
        return SVC_EVALIDATION;
    }
    return 0;
}

/* One header line (no CRLF) into out; *content_length gets Content-Length. */
static int paysim_http_parse_header(const char *line, size_t length,
                                    struct paysim_http_request *out, int64_t *content_length)
{
    struct text_header h;
    if (!text_header_split(line, length, &h)) {
        return SVC_EVALIDATION;
    }
    if (text_header_is(&h, "content-length")) {
        int64_t n = text_decimal(h.value, h.value_length, PAYSIM_HTTP_REQUEST_BYTES_MAX);
        if (n < 0 || (*content_length >= 0 && *content_length != n)) {
            return SVC_EVALIDATION;
        }
        *content_length = n;
    } else if (text_header_is(&h, "transfer-encoding")) {
        return SVC_EVALIDATION; /* no chunked requests here */
    } else if (text_header_is(&h, "idempotency-key")) {
        out->key_too_long = !paysim_http_copy(out->key, sizeof out->key, h.value, h.value_length);
    } else if (text_header_is(&h, "connection")) {
        if (h.value_length == 5 && strncasecmp(h.value, "close", 5) == 0) {
            out->keep_alive = false;
        } else if (h.value_length == 10 && strncasecmp(h.value, "keep-alive", 10) == 0) {
            out->keep_alive = true;
        }
    }
    return 0;
}

int paysim_http_parse_request(const char *data, size_t length, struct paysim_http_request *out)
{
    memset(out, 0, sizeof *out);
    const char *blank = length >= 4 ? memmem(data, length, "\r\n\r\n", 4) : NULL;
    if (blank == NULL) {
        return length >= PAYSIM_HTTP_REQUEST_BYTES_MAX ? SVC_EVALIDATION : PAYSIM_HTTP_MORE;
    }
    size_t head_length = (size_t)(blank - data) + 4;
    const char *end = blank + 2; /* the last header line's CRLF included */
    const char *eol = memchr(data, '\n', (size_t)(end - data));
    SVC_ASSERT(eol != NULL);
    size_t n = (size_t)(eol - data);
    int rc = paysim_http_parse_line(data, n - (n > 0 && data[n - 1] == '\r'), out);
    int64_t content_length = -1;
    for (const char *line = eol + 1; rc == 0 && line < end; line = eol + 1) {
        eol = memchr(line, '\n', (size_t)(end - line));
        SVC_ASSERT(eol != NULL);
        n = (size_t)(eol - line);
        rc = paysim_http_parse_header(line, n - (n > 0 && line[n - 1] == '\r'), out,
                                      &content_length);
    }
    if (rc != 0) {
        return rc;
    }
    size_t body_length = content_length > 0 ? (size_t)content_length : 0;
    if (head_length + body_length > PAYSIM_HTTP_REQUEST_BYTES_MAX) {
        return SVC_EVALIDATION;
    }
    if (length < head_length + body_length) {
        return PAYSIM_HTTP_MORE;
    }
    out->body = data + head_length;
    out->body_length = body_length;
    out->consumed = head_length + body_length;
    SVC_ASSERT(out->consumed <= length);
    return PAYSIM_HTTP_DONE;
}

size_t paysim_http_format_answer(char *out, size_t out_size, int status, bool keep_alive,
                                 const char *body, size_t body_length)
{
    SVC_ASSERT(status >= 200 && status <= 599);
    const char *reason = status == 200   ? "OK"
                         : status == 402 ? "Payment Required"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 503 ? "Service Unavailable"
                         : status == 400 ? "Bad Request"
                                         : "Error";
    int n = snprintf(out, out_size,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "%s\r\n",
                     status, reason, body_length, keep_alive ? "" : "Connection: close\r\n");
    SVC_ASSERT(n > 0 && (size_t)n + body_length <= out_size);
    memcpy(out + n, body, body_length);
    return (size_t)n + body_length;
}
