/*
 * queue.c - see queue.h.
 *
 * Cell protocol: cell i starts with sequence i. A producer at position p may write cell
 * p & mask when its sequence equals p; it then stores p + 1. The consumer at position t may
 * read when the sequence equals t + 1, and then stores t + capacity, freeing the cell for the
 * producer one lap later. A sequence below p means the ring is full.
 */
#include "core/queue.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/svc_assert.h"

int queue_init(struct queue *q, size_t capacity)
{
    SVC_ASSERT(capacity >= 2);
    SVC_ASSERT((capacity & (capacity - 1)) == 0);
    q->cells = calloc(capacity, sizeof *q->cells);
    if (q->cells == NULL) {
        return -ENOMEM;
    }
    q->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->wake_fd < 0) {
        int err = -errno;
        free(q->cells);
        return err;
    }
    for (size_t i = 0; i < capacity; i++) {
        atomic_init(&q->cells[i].sequence, i);
        q->cells[i].item = NULL;
    }
    q->capacity = capacity;
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    atomic_init(&q->consumer_sleeping, 0);
    return 0;
}

void queue_deinit(struct queue *q)
{
    SVC_ASSERT(q->cells != NULL);
    free(q->cells);
    q->cells = NULL;
    close(q->wake_fd);
    q->wake_fd = -1;
}

void queue_wake(struct queue *q)
{
    uint64_t one = 1;
    ssize_t written = write(q->wake_fd, &one, sizeof one);
    SVC_ASSERT(written == sizeof one || errno == EAGAIN);
}

int queue_push(struct queue *q, void *item)
{
    SVC_ASSERT(item != NULL);
    size_t mask = q->capacity - 1;
    size_t position = atomic_load_explicit(&q->head, memory_order_relaxed);
    for (;;) {
        struct queue_cell *cell = &q->cells[position & mask];
        size_t sequence = atomic_load_explicit(&cell->sequence, memory_order_acquire);
        intptr_t difference = (intptr_t)sequence - (intptr_t)position;
        if (difference == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->head, &position, position + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                cell->item = item;
                atomic_store_explicit(&cell->sequence, position + 1, memory_order_release);
                break;
            }
        } else if (difference < 0) {
            return -EAGAIN;
        } else {
            position = atomic_load_explicit(&q->head, memory_order_relaxed);
        }
    }
    /* Dekker pairing with queue_wait: our sequence store above, then this load (seq_cst). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&q->consumer_sleeping, memory_order_relaxed) &&
        atomic_exchange(&q->consumer_sleeping, 0)) {
        queue_wake(q);
    }
    return 0;
}

size_t queue_pop_batch(struct queue *q, void **out, size_t max)
{
    SVC_ASSERT(out != NULL);
    SVC_ASSERT(max >= 1);
    size_t mask = q->capacity - 1;
    size_t count = 0;
    size_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    while (count < max) {
        struct queue_cell *cell = &q->cells[tail & mask];
        size_t sequence = atomic_load_explicit(&cell->sequence, memory_order_acquire);
        if (sequence != tail + 1) {
            SVC_ASSERT(sequence == tail); /* empty: the producer has not published it */
            break;
        }
        out[count++] = cell->item;
        SVC_ASSERT(cell->item != NULL);
        cell->item = NULL;
        atomic_store_explicit(&cell->sequence, tail + q->capacity, memory_order_release);
        tail++;
    }
    atomic_store_explicit(&q->tail, tail, memory_order_relaxed);
    SVC_ASSERT(count <= max);
    return count;
}

static bool queue_looks_empty(struct queue *q)
{
    size_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    struct queue_cell *cell = &q->cells[tail & (q->capacity - 1)];
    return atomic_load_explicit(&cell->sequence, memory_order_acquire) != tail + 1;
}

void queue_wait(struct queue *q, int timeout_ms)
{
    SVC_ASSERT(timeout_ms >= 0);
    atomic_store(&q->consumer_sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (queue_looks_empty(q)) {
        struct pollfd pfd = {.fd = q->wake_fd, .events = POLLIN};
        int ready = poll(&pfd, 1, timeout_ms);
        SVC_ASSERT(ready >= 0 || errno == EINTR);
    }
    atomic_store(&q->consumer_sleeping, 0);
    uint64_t drained = 0;
    ssize_t got = read(q->wake_fd, &drained, sizeof drained);
    SVC_ASSERT(got == sizeof drained || errno == EAGAIN);
}

size_t queue_depth(struct queue *q)
{
    size_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
    size_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed); /* approximate */
    return head >= tail ? head - tail : 0;
}
