/* A thread's lane ticket: which of a writer's lanes (open buffers of their
 * own) the calling thread writes into.  Each thread draws one ticket, from a
 * process-wide counter, the first time it writes through a laned writer, so
 * threads spread over the lanes round-robin and each keeps its lane (its
 * writes stay in order, and its cache line stays its own).
 */
#ifndef CBUFFER_LANE_H
#define CBUFFER_LANE_H

#include <stdatomic.h>
#include <stdint.h>

static _Atomic uint64_t cb_lane_tickets;
static _Thread_local uint64_t cb_lane_ticket;

static inline uint64_t cb_my_lane(uint64_t nlanes) {
    if (!cb_lane_ticket)
        cb_lane_ticket = atomic_fetch_add_explicit(&cb_lane_tickets, 1, memory_order_relaxed) + 1;
    return (cb_lane_ticket - 1) % nlanes;
}

#endif /* CBUFFER_LANE_H */
