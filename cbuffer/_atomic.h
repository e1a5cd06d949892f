/* Typed wrappers over C11 <stdatomic.h> for cbuffer's 64-bit state words.
 *
 * Every wrapper names its memory order, so a reader of the protocol code in
 * _state.pxd / _ring.pyx sees at each call site which ordering it relies on.
 * Cython cannot spell `_Atomic`, so the .pxd side declares cb_atomic_u64 as an
 * opaque name and only ever passes pointers to it through these functions.
 */
#ifndef CBUFFER_ATOMIC_H
#define CBUFFER_ATOMIC_H

#if defined(__STDC_NO_ATOMICS__)
#error "cbuffer needs a C11 compiler with <stdatomic.h>"
#endif

#include <stdatomic.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

typedef _Atomic uint64_t cb_atomic_u64;

static inline void cb_atomic_init(cb_atomic_u64 *p, uint64_t v) {
    atomic_init(p, v);
}

/* Plain reads for statistics and snapshots, where no data is published. */
static inline uint64_t cb_load_relaxed(cb_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}

/* Reads that must see the bytes or fields published by a release. */
static inline uint64_t cb_load_acquire(cb_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_acquire);
}

static inline void cb_store_release(cb_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}

static inline void cb_store_relaxed(cb_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

/* Compare-and-swap: on failure *expected is refreshed with the current value
 * (acquire), so a CAS loop never needs a separate reload. */
static inline int cb_cas_acq_rel(cb_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_weak_explicit(
        p, expected, desired, memory_order_acq_rel, memory_order_acquire);
}

static inline int cb_cas_strong_acq_rel(cb_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(
        p, expected, desired, memory_order_acq_rel, memory_order_acquire);
}

static inline uint64_t cb_fetch_add_relaxed(cb_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}

static inline uint64_t cb_fetch_add_acq_rel(cb_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_acq_rel);
}

/* A writer leaving a buffer publishes the bytes it copied: release. */
static inline uint64_t cb_fetch_sub_release(cb_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_sub_explicit(p, v, memory_order_release);
}

static inline uint64_t cb_fetch_or_acq_rel(cb_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_or_explicit(p, v, memory_order_acq_rel);
}

static inline uint64_t cb_fetch_and_acq_rel(cb_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_and_explicit(p, v, memory_order_acq_rel);
}

/* The few places that need a single total order with another variable
 * (ring closing vs. a slot being opened, see _ring.pyx) use seq_cst. */
static inline uint64_t cb_load_seq_cst(cb_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_seq_cst);
}

static inline void cb_store_seq_cst(cb_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_seq_cst);
}

static inline int cb_cas_seq_cst(cb_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(
        p, expected, desired, memory_order_seq_cst, memory_order_seq_cst);
}

/* Busy-wait hint: lets the sibling hyperthread run and saves power. */
static inline void cb_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

#endif /* CBUFFER_ATOMIC_H */
