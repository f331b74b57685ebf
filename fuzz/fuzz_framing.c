/*
 * fuzz_framing.c - libFuzzer harness for the request-head scan and the framing rules
 * (src/http/framing.c, included here). The input is the bytes at the start of a connection's
 * input buffer, as h2o would leave them; in stockd the scan only ever sees heads h2o's parser
 * accepted, so arbitrary bytes are a superset of what it meets.
 *
 * Properties, besides "no crash, no sanitizer report": a head found ends with LF inside the
 * input; scanning only that head gives the same result (the scan never looks past it, so body
 * bytes cannot change what it says); the counts are bounded by the lines there are; and
 * framing_refusal refuses every head with more than one framing line. See fuzz/README.md.
 */
#include "../src/http/framing.c"

#include <stdint.h>
#include <stdlib.h>

static size_t fuzz_count_lf(const uint8_t *data, size_t size)
{
    size_t count = 0;
    for (size_t i = 0; i < size; i++) {
        count += data[i] == '\n';
    }
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct framing_head head;
    framing_scan((const char *)data, size, &head);
    if (head.length == 0) {
        return 0;
    }
    if (head.length > size || data[head.length - 1] != '\n') {
        abort();
    }
    struct framing_head again;
    framing_scan((const char *)data, head.length, &again);
    if (again.length != head.length || again.content_length_count != head.content_length_count ||
        again.transfer_encoding_count != head.transfer_encoding_count ||
        again.folded_count != head.folded_count) {
        abort();
    }
    size_t lines = fuzz_count_lf(data, head.length);
    if (head.content_length_count + head.transfer_encoding_count + head.folded_count > lines) {
        abort();
    }
    const char *why = framing_refusal(&head, false);
    unsigned framing_lines = head.content_length_count + head.transfer_encoding_count;
    if (framing_lines > 1 && why == NULL) {
        abort();
    }
    if (head.folded_count > 0 && why == NULL) {
        abort();
    }
    if (head.transfer_encoding_count > 0 && framing_refusal(&head, true) == NULL) {
        abort();
    }
    return 0;
}
