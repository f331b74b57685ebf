/*
 * sse_ring.c - the SPSC byte ring of sse_ring.h: record layout, reservation, draining.
 *
 * A record is a 16-byte header (seq, text length, kind) and its text, padded to a multiple of
 * the header size. Only the producer writes head and only the consumer writes tail; the bytes
 * between tail and head belong to the consumer, the rest to the producer. Head and tail use
 * sequentially consistent stores and loads where they pair with the wake flag (a Dekker pair:
 * the producer publishes head then claims the flag, the consumer clears the flag then loads
 * head, so one of them always sees the other). This file is not the SSE stream (api_stream.c).
 */
#include "http/sse_ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/svc_assert.h"

#define SSE_RING_KIND_TEXT 0x54455854u /* "TEXT": a record */
#define SSE_RING_KIND_SKIP 0x534b4950u /* "SKIP": the rest of the buffer is unused */
#define SSE_RING_NONE UINT64_MAX       /* reserved_at when nothing is reserved */

struct sse_ring_header {
    int64_t seq;     /* >= 1 for text, 0 for skip */
    uint32_t length; /* text bytes that follow; for skip, the bytes to the buffer's end */
    uint32_t kind;   /* SSE_RING_KIND_* */
};

_Static_assert(sizeof(struct sse_ring_header) == SSE_RING_HEADER_BYTES, "the header is 16 bytes");

/* The ring bytes a record of length text bytes takes, header and padding included. */
static size_t sse_ring_record_bytes(size_t length)
{
    size_t bytes = SSE_RING_HEADER_BYTES + length;
    size_t padded = (bytes + SSE_RING_HEADER_BYTES - 1) & ~(size_t)(SSE_RING_HEADER_BYTES - 1);
    SVC_ASSERT(padded >= bytes && padded % SSE_RING_HEADER_BYTES == 0);
    return padded;
}

static struct sse_ring_header *sse_ring_header_at(const struct sse_ring *ring, uint64_t position)
{
    size_t index = (size_t)(position & (ring->size - 1));
    SVC_ASSERT(index % SSE_RING_HEADER_BYTES == 0);
    return (struct sse_ring_header *)(void *)(ring->data + index);
}

int sse_ring_init(struct sse_ring *ring, size_t size)
{
    SVC_ASSERT(size >= 4 * SSE_RING_HEADER_BYTES);
    SVC_ASSERT((size & (size - 1)) == 0);
    memset(ring, 0, sizeof *ring);
    ring->data = malloc(size); /* 16-byte aligned: every header is aligned */
    if (ring->data == NULL) {
        return -ENOMEM;
    }
    ring->size = size;
    ring->reserved_at = SSE_RING_NONE;
    atomic_init(&ring->head, 0);
    atomic_init(&ring->tail, 0);
    atomic_init(&ring->overflowed, false);
    atomic_init(&ring->wake_pending, false);
    return 0;
}

void sse_ring_deinit(struct sse_ring *ring)
{
    SVC_ASSERT(ring->reserved_at == SSE_RING_NONE || ring->data == NULL);
    free(ring->data);
    ring->data = NULL;
    ring->size = 0;
}

char *sse_ring_reserve(struct sse_ring *ring, size_t bytes_max)
{
    SVC_ASSERT(ring->data != NULL);
    SVC_ASSERT(ring->reserved_at == SSE_RING_NONE); /* one reservation at a time */
    if (atomic_load(&ring->overflowed)) {
        return NULL; /* nothing is written past a gap until the consumer took it */
    }
    size_t need = sse_ring_record_bytes(bytes_max);
    uint64_t head = atomic_load_explicit(&ring->head, memory_order_relaxed); /* ours */
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_acquire);
    SVC_ASSERT(head >= tail && head - tail <= ring->size);
    size_t to_end = ring->size - (size_t)(head & (ring->size - 1));
    size_t skip = to_end < need ? to_end : 0; /* a record never wraps */
    size_t free_bytes = ring->size - (size_t)(head - tail);
    SVC_TESTCASE(skip > 0);
    SVC_TESTCASE(skip + need == free_bytes);
    if (need > ring->size || skip + need > free_bytes) {
        atomic_store(&ring->overflowed, true);
        return NULL;
    }
    if (skip > 0) {
        /* Published with the record by sse_ring_commit's head store. */
        struct sse_ring_header *header = sse_ring_header_at(ring, head);
        header->seq = 0;
        header->length = (uint32_t)(skip - SSE_RING_HEADER_BYTES);
        header->kind = SSE_RING_KIND_SKIP;
    }
    ring->reserved_at = head + skip;
    ring->reserved_bytes = bytes_max;
    return (char *)sse_ring_header_at(ring, ring->reserved_at) + SSE_RING_HEADER_BYTES;
}

void sse_ring_commit(struct sse_ring *ring, int64_t seq, size_t length)
{
    SVC_ASSERT(ring->reserved_at != SSE_RING_NONE);
    SVC_ASSERT(seq >= 1);
    SVC_ASSERT(length <= ring->reserved_bytes && length <= UINT32_MAX);
    struct sse_ring_header *header = sse_ring_header_at(ring, ring->reserved_at);
    header->seq = seq;
    header->length = (uint32_t)length;
    header->kind = SSE_RING_KIND_TEXT;
    uint64_t head = ring->reserved_at + sse_ring_record_bytes(length);
    ring->reserved_at = SSE_RING_NONE;
    atomic_store(&ring->head, head); /* seq_cst: pairs with sse_ring_wake_done's load order */
}

bool sse_ring_wake_claim(struct sse_ring *ring)
{
    SVC_ASSERT(ring->data != NULL);
    SVC_ASSERT(ring->reserved_at == SSE_RING_NONE); /* wake only for committed records */
    return !atomic_exchange(&ring->wake_pending, true);
}

void sse_ring_wake_done(struct sse_ring *ring)
{
    SVC_ASSERT(ring->data != NULL);
    SVC_ASSERT(atomic_load_explicit(&ring->wake_pending, memory_order_relaxed));
    atomic_store(&ring->wake_pending, false); /* before the drain loads head (seq_cst) */
}

bool sse_ring_peek(struct sse_ring *ring, struct sse_ring_entry *out)
{
    SVC_ASSERT(ring->data != NULL);
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed); /* ours */
    uint64_t head = atomic_load(&ring->head);
    SVC_ASSERT(head >= tail && head - tail <= ring->size);
    while (tail != head) {
        const struct sse_ring_header *header = sse_ring_header_at(ring, tail);
        if (header->kind == SSE_RING_KIND_SKIP) {
            size_t index = (size_t)(tail & (ring->size - 1));
            SVC_ASSERT(index + SSE_RING_HEADER_BYTES + header->length == ring->size);
            tail += SSE_RING_HEADER_BYTES + header->length; /* to the buffer's start */
            atomic_store_explicit(&ring->tail, tail, memory_order_release);
            continue;
        }
        SVC_ASSERT(header->kind == SSE_RING_KIND_TEXT && header->seq >= 1);
        out->seq = header->seq;
        out->text = (const char *)header + SSE_RING_HEADER_BYTES;
        out->length = header->length;
        out->next_tail = tail + sse_ring_record_bytes(header->length);
        SVC_ASSERT(out->next_tail <= head);
        return true;
    }
    return false;
}

void sse_ring_pop(struct sse_ring *ring, const struct sse_ring_entry *entry)
{
    uint64_t tail = atomic_load_explicit(&ring->tail, memory_order_relaxed);
    SVC_ASSERT(entry->next_tail > tail);
    SVC_ASSERT(entry->next_tail - tail == sse_ring_record_bytes(entry->length));
    /* release: the producer may reuse the bytes only after we are done reading them */
    atomic_store_explicit(&ring->tail, entry->next_tail, memory_order_release);
}

bool sse_ring_overflow_take(struct sse_ring *ring)
{
    SVC_ASSERT(ring->data != NULL);
    bool overflowed = atomic_exchange(&ring->overflowed, false);
    SVC_TESTCASE(overflowed);
    return overflowed;
}
