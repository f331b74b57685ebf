/*
 * sse_ring.h - a single-producer single-consumer byte ring of sequenced text records, with the
 * two flags that make it a wake-up channel: the SSE feed from the projector's tap to one I/O
 * thread (api_stream.c).
 *
 * The producer (the tap, under the projector's apply mutex: one producer at a time, though it
 * may be the writer thread one batch and the follower thread the next) reserves room for one
 * record, formats the text in place, and commits it with its event seq. The consumer (the
 * owning I/O thread) peeks records in order and pops them. Records never wrap: one that does
 * not fit before the end of the buffer starts at its beginning, behind a skip record. Head and
 * tail count bytes ever written and released, so full and empty never look alike.
 *
 * Overflow: a record that does not fit sets `overflowed` and from then on every reservation
 * fails until the consumer takes the overflow. So the records in the ring are always a gap-free
 * run, and the consumer, which takes the overflow only after draining, knows that what follows
 * it has a gap (it drops its subscribers; they reconnect with Last-Event-ID).
 *
 * Wake-up: the producer claims `wake_pending` after committing (sse_ring_wake_claim) and sends
 * its one preallocated wake message only when the flag was clear; the consumer clears it when
 * the message arrives, before draining (sse_ring_wake_done). So one message is never queued
 * twice, and a record committed while the flag was set is found by the drain in progress.
 *
 * This file knows nothing of h2o, SSE framing or events: the text is opaque. Read api_stream.c
 * next; the tests are tests/unit/test_sse_ring.c.
 */
#ifndef STOCKD_SSE_RING_H
#define STOCKD_SSE_RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of a record's header in the ring; records start on multiples of it. */
#define SSE_RING_HEADER_BYTES 16

struct sse_ring {
    char *data;  /* size bytes, owned (sse_ring_init); NULL before init */
    size_t size; /* a power of two, >= 4 * SSE_RING_HEADER_BYTES */
    /* The producer's line: head and its private reservation. */
    _Alignas(64) _Atomic uint64_t head; /* bytes published, ever */
    uint64_t reserved_at;               /* producer only: the reserved record's start, or
                                         * UINT64_MAX when none is reserved */
    size_t reserved_bytes;              /* producer only: text bytes of that reservation */
    _Atomic bool overflowed;            /* set by the producer, taken by the consumer */
    _Atomic bool wake_pending;          /* the wake message is queued or being handled */
    /* The consumer's line. */
    _Alignas(64) _Atomic uint64_t tail; /* bytes released, ever */
};

/* One record as the consumer sees it: text is valid until sse_ring_pop. */
struct sse_ring_entry {
    int64_t seq;        /* >= 1 */
    const char *text;   /* in the ring */
    size_t length;      /* bytes of text */
    uint64_t next_tail; /* private: the tail after this record */
};

/* Allocates size bytes (a power of two, >= 4 * SSE_RING_HEADER_BYTES) and empties ring, which
 * the caller owns. 0 or -ENOMEM (ring is then left unallocated and may be initialised again).
 * Called by the consumer's thread before it hands the ring to any producer. */
int sse_ring_init(struct sse_ring *ring, size_t size);

/* Frees the buffer. No producer or consumer may use the ring any more. */
void sse_ring_deinit(struct sse_ring *ring);

/* ---- the producer ---- */

/* Reserves room for a record of up to bytes_max text bytes and returns where to write the
 * text, or NULL when it does not fit (the ring is now overflowed) or the ring was already
 * overflowed. Exactly one record may be reserved at a time; commit it before the next. */
char *sse_ring_reserve(struct sse_ring *ring, size_t bytes_max);

/* Publishes the reserved record as seq (>= 1) with its first length (<= bytes_max) bytes. */
void sse_ring_commit(struct sse_ring *ring, int64_t seq, size_t length);

/* True when the caller must send the consumer its wake message now: the flag was clear and is
 * now set. Called by the producer after its commits and after an overflow. */
bool sse_ring_wake_claim(struct sse_ring *ring);

/* ---- the consumer ---- */

/* Called when the wake message arrived (and was unlinked), before draining. */
void sse_ring_wake_done(struct sse_ring *ring);

/* The oldest record, or false when the ring is empty. Skip records are passed over. */
bool sse_ring_peek(struct sse_ring *ring, struct sse_ring_entry *out);

/* Releases the record entry (the last one peeked) to the producer. */
void sse_ring_pop(struct sse_ring *ring, const struct sse_ring_entry *entry);

/* True when the producer dropped a record since the last call, clearing the overflow so that
 * the producer writes again. Call it only after draining: every record peeked before it
 * precedes the gap, every one after it follows the gap. */
bool sse_ring_overflow_take(struct sse_ring *ring);

#endif
