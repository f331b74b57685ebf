/*
 * framing.c - see framing.h: a scan of one request head for its framing header lines, and the
 * rules that refuse ambiguous framing. Pure functions over bytes; server.c calls them. Read
 * server.c next.
 */
#include "http/framing.h"

#include <string.h>
#include <strings.h>

#include "base/svc_assert.h"

/* The end of the line that starts at p (the byte after its LF), its length without the CR LF
 * or LF in *length; NULL when no LF is left before end. */
static const char *framing_line(const char *p, const char *end, size_t *length)
{
    SVC_ASSERT(p <= end);
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL) {
        return NULL;
    }
    size_t n = (size_t)(lf - p);
    if (n > 0 && p[n - 1] == '\r') {
        n--;
    }
    *length = n;
    SVC_ASSERT(lf + 1 <= end);
    return lf + 1;
}

static bool framing_name_is(const char *line, size_t name_length, const char *name)
{
    size_t length = strlen(name);
    SVC_ASSERT(length > 0);
    return name_length == length && strncasecmp(line, name, length) == 0;
}

/* Counts one header line of length bytes (no line end) into *out. */
static void framing_count_line(const char *line, size_t length, struct framing_head *out)
{
    SVC_ASSERT(length > 0);
    if (line[0] == ' ' || line[0] == '\t') {
        out->folded_count++; /* h2o keeps it as a header without a name */
        return;
    }
    const char *colon = memchr(line, ':', length);
    size_t name_length = colon != NULL ? (size_t)(colon - line) : length;
    if (framing_name_is(line, name_length, "content-length")) {
        out->content_length_count++;
    } else if (framing_name_is(line, name_length, "transfer-encoding")) {
        out->transfer_encoding_count++;
    }
}

void framing_scan(const char *buf, size_t size, struct framing_head *out)
{
    SVC_ASSERT(buf != NULL || size == 0);
    memset(out, 0, sizeof *out);
    const char *p = buf;
    const char *end = buf + size;
    size_t length = 0;
    /* picohttpparser skips one empty line before the request line (a client's CRLF after a
     * body); skipping it the same way keeps a request line from being read as a header. */
    if (p < end && (*p == '\r' || *p == '\n')) {
        p = framing_line(p, end, &length);
        if (p == NULL || length != 0) {
            return;
        }
    }
    p = framing_line(p, end, &length); /* the request line */
    while (p != NULL) {
        const char *next = framing_line(p, end, &length);
        if (next == NULL) {
            break;
        }
        if (length == 0) {
            out->length = (size_t)(next - buf);
            break;
        }
        framing_count_line(p, length, out);
        p = next;
    }
    SVC_ASSERT(out->length <= size);
}

const char *framing_refusal(const struct framing_head *head, bool http_1_0)
{
    SVC_ASSERT(head->length > 0);
    if (head->folded_count > 0) {
        return "obsolete line folding (a header line starting with a space or tab) is refused";
    }
    if (head->content_length_count > 0 && head->transfer_encoding_count > 0) {
        return "a request may not carry both Content-Length and Transfer-Encoding";
    }
    if (head->content_length_count > 1) {
        return "a request may carry one Content-Length header only";
    }
    if (head->transfer_encoding_count > 1) {
        return "a request may carry one Transfer-Encoding header only";
    }
    if (http_1_0 && head->transfer_encoding_count > 0) {
        return "Transfer-Encoding is not defined in HTTP/1.0";
    }
    SVC_ASSERT(head->content_length_count <= 1 && head->transfer_encoding_count <= 1);
    return NULL;
}
