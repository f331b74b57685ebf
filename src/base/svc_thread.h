/*
 * svc_thread.h - names stockd's threads ("writer", "http-0", "relay", ...) so that top -H,
 * ps -L, perf --sort comm and /proc/PID/task/TID/comm tell them apart; bench/hot-sku reads
 * the CPU per purchase of each one from there. A name is cosmetic: failing to set one is
 * not an error.
 */
#ifndef STOCKD_SVC_THREAD_H
#define STOCKD_SVC_THREAD_H

#include <pthread.h>
#include <stdio.h>

#include "base/svc_assert.h"

/* Linux keeps 15 bytes of a thread's name (16 with the NUL). */
#define SVC_THREAD_NAME_BYTES_MAX 15

/* Names the calling thread role, or role-index when index >= 0 ("http-1"). */
static inline void svc_thread_name(const char *role, int index)
{
    SVC_ASSERT(role != NULL && role[0] != '\0');
    char name[SVC_THREAD_NAME_BYTES_MAX + 1];
    int n = index >= 0 ? snprintf(name, sizeof name, "%s-%d", role, index)
                       : snprintf(name, sizeof name, "%s", role);
    SVC_ASSERT(n > 0 && n <= SVC_THREAD_NAME_BYTES_MAX);
    (void)pthread_setname_np(pthread_self(), name);
}

#endif
