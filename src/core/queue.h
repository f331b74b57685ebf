/*
 * queue.h - the bounded multi-producer single-consumer queue in front of the writer.
 *
 * A ring of QUEUE_DEPTH_MAX cells with per-cell sequence numbers (Vyukov's bounded queue):
 * producers (I/O threads) claim a slot with one CAS and never block; a full ring is an
 * operating error the caller turns into 429. The single consumer (the writer) drains it in
 * batches and sleeps on an eventfd when it is empty; a producer writes the eventfd only when
 * the consumer announced it is going to sleep, so the busy path makes no system call.
 *
 * This is not a general-purpose queue: one consumer thread only. Read command.h next.
 */
#ifndef STOCKD_QUEUE_H
#define STOCKD_QUEUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct queue_cell {
    _Atomic size_t sequence; /* position this cell expects next; see queue.c */
    void *item;              /* owned by the queue between push and pop */
};

struct queue {
    struct queue_cell *cells;                   /* capacity cells, owned, allocated by queue_init */
    size_t capacity;                            /* power of two */
    _Alignas(64) _Atomic size_t head;           /* next position producers claim */
    _Alignas(64) _Atomic size_t tail;           /* next position the consumer reads */
    _Alignas(64) _Atomic int consumer_sleeping; /* 1 while the consumer waits on wake_fd */
    int wake_fd;                                /* eventfd, owned */
};

/* Allocates a ring of capacity (a power of two) cells and the wake eventfd. 0 or -errno. */
int queue_init(struct queue *q, size_t capacity);
/* Frees the ring and closes the eventfd. No thread may use q afterwards. */
void queue_deinit(struct queue *q);

/* Producer side, any thread. Hands item to the queue on success (0); -EAGAIN when full, in
 * which case the caller keeps ownership. Wakes the consumer if it sleeps. */
int queue_push(struct queue *q, void *item);

/* Consumer side, one thread. Moves up to max items into out, returns how many (0 if empty);
 * the caller now owns them. */
size_t queue_pop_batch(struct queue *q, void **out, size_t max);

/* Consumer side: sleeps until an item may be there or timeout_ms passed; may return early. */
void queue_wait(struct queue *q, int timeout_ms);

/* Consumer side: wakes a queue_wait from another thread (used for shutdown). */
void queue_wake(struct queue *q);

/* Approximate number of queued items (for /metrics and tests). */
size_t queue_depth(struct queue *q);

#endif
