/* cb_event: an event count, the one blocking primitive cbuffer uses.
 *
 * It is never touched on the append fast path.  A thread that must wait (ring
 * full, flush pending, flusher idle) takes a key, re-checks its condition, and
 * only then sleeps until the key changes.  A notifier bumps the count and takes
 * the mutex only when somebody sleeps, so a notify with no waiter is one atomic
 * add and one load.  Both sides use seq_cst so that either the notifier sees
 * the waiter or the waiter sees the new count (no lost wake-up).
 */
#ifndef CBUFFER_EVENT_H
#define CBUFFER_EVENT_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

typedef struct {
    _Atomic uint32_t seq;
    _Atomic int32_t waiters;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
} cb_event;

static inline int cb_event_init(cb_event *e) {
    pthread_condattr_t attr;
    atomic_init(&e->seq, 0);
    atomic_init(&e->waiters, 0);
    if (pthread_mutex_init(&e->mutex, NULL) != 0) return -1;
    if (pthread_condattr_init(&attr) != 0) return -1;
#if !defined(__APPLE__)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
#endif
    int rc = pthread_cond_init(&e->cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

static inline void cb_event_destroy(cb_event *e) {
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->mutex);
}

/* After fork() the child has one thread; whatever the others held is void. */
static inline int cb_event_reinit(cb_event *e) {
    atomic_store(&e->waiters, 0);
    return cb_event_init(e);
}

static inline uint32_t cb_event_key(cb_event *e) {
    return atomic_load_explicit(&e->seq, memory_order_seq_cst);
}

static inline void cb_event_notify(cb_event *e) {
    atomic_fetch_add_explicit(&e->seq, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&e->waiters, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&e->mutex);
        pthread_cond_broadcast(&e->cond);
        pthread_mutex_unlock(&e->mutex);
    }
}

static inline double cb_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleep until the count moves past `key` or `timeout` seconds pass (timeout
 * < 0: no limit).  Returns 1 when woken by a notify, 0 on timeout. */
static inline int cb_event_wait(cb_event *e, uint32_t key, double timeout) {
    int woken = 1;
    struct timespec ts;
    if (timeout >= 0) {
#if defined(__APPLE__)
        clock_gettime(CLOCK_REALTIME, &ts);
#else
        clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
        double whole = (double)(long)timeout;
        ts.tv_sec += (time_t)whole;
        ts.tv_nsec += (long)((timeout - whole) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1000000000L;
        }
    }
    atomic_fetch_add_explicit(&e->waiters, 1, memory_order_seq_cst);
    pthread_mutex_lock(&e->mutex);
    while (atomic_load_explicit(&e->seq, memory_order_seq_cst) == key) {
        int rc = timeout >= 0 ? pthread_cond_timedwait(&e->cond, &e->mutex, &ts)
                              : pthread_cond_wait(&e->cond, &e->mutex);
        if (rc == ETIMEDOUT) {
            woken = atomic_load_explicit(&e->seq, memory_order_seq_cst) != key;
            break;
        }
    }
    pthread_mutex_unlock(&e->mutex);
    atomic_fetch_sub_explicit(&e->waiters, 1, memory_order_seq_cst);
    return woken;
}

static inline int cb_event_waiting(cb_event *e) {
    return atomic_load_explicit(&e->waiters, memory_order_seq_cst) > 0;
}

/* Bounded spinning before a real wait: a few pauses, then a few yields.
 * Returns 0 while the caller should keep spinning, 1 once it should sleep. */
static inline int cb_backoff(unsigned *round) {
    unsigned r = (*round)++;
    if (r < 32) {
        for (unsigned i = 0; i < (1u << (r < 6 ? r : 6)); i++) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        return 0;
    }
    if (r < 48) {
        sched_yield();
        return 0;
    }
    return 1;
}

/* For loops with no event to sleep on: spin, then yield, then sleep for
 * growing intervals (50 us .. 1 ms), so a long wait never burns a CPU. */
static inline void cb_backoff_wait(unsigned *round) {
    if (!cb_backoff(round)) return;
    unsigned r = *round - 48;
    struct timespec ts = {0, (long)(r < 20 ? 50000L * (r + 1) : 1000000L)};
    nanosleep(&ts, NULL);
}

/* A plain mutex for cold paths (dispatch order, the sticky exception). */
typedef pthread_mutex_t cb_mutex;
static inline int cb_mutex_init(cb_mutex *m) { return pthread_mutex_init(m, NULL) == 0 ? 0 : -1; }
static inline void cb_mutex_destroy(cb_mutex *m) { pthread_mutex_destroy(m); }
static inline void cb_mutex_lock(cb_mutex *m) { pthread_mutex_lock(m); }
static inline void cb_mutex_unlock(cb_mutex *m) { pthread_mutex_unlock(m); }
static inline int cb_mutex_trylock(cb_mutex *m) { return pthread_mutex_trylock(m) == 0; }

#endif /* CBUFFER_EVENT_H */
