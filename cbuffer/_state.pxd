# cython: language_level=3
"""The packed state word and every transition of it.

Layout (one 64-bit word per buffer, CONTRACT.md)::

    bits 63..32  write offset      bits 31..8  active writers
    bits  7..3   writes, mod 32    bit 2 shut (ring closing)
    bit 1 flush in progress        bit 0 sealed

(Bits 7..2 are the contract's reserved bits: the ring keeps its own
bookkeeping there, and layer 1 leaves them 0.)

Invariants the protocol keeps:

* Only ``state_try_reserve`` raises the offset, and only on an unsealed word,
  in the same compare-and-swap that counts the caller as a writer.  Two
  reservations therefore never overlap, and an offset once returned is
  committed: nothing can undo a successful CAS.
* Once the sealed bit is set the offset is frozen; it is the buffer's length.
  A writer that does not fit never takes space it will not fill: it gets
  ``CB_NO_ROOM`` and nothing changes (the seed's "reservation crosses the
  end, success returned, bytes never copied" bug cannot happen).
* A buffer may be read out (flushed or dispatched) only when it is sealed and
  its writer count is 0, observed with an acquire load; each writer leaves with
  a release decrement after its memcpy, so that load sees every copied byte.
* The writer count is bounded: at CB_WRITER_MAX the reservation reports
  ``CB_BUSY`` instead of overflowing into the offset field.

Memory orders: reservation CAS is acq_rel (acquire: see the buffer fields the
opener published before un-sealing it; release: order the count before the
copy).  Leaving is release (publish the copy).  Sealing is acq_rel fetch_or
(its result fixes the length the sealer publishes).
"""
from libc.stdint cimport uint64_t


cdef extern from "_atomic.h" nogil:
    ctypedef uint64_t cb_atomic_u64
    void cb_atomic_init(cb_atomic_u64 *p, uint64_t v)
    uint64_t cb_load_relaxed(cb_atomic_u64 *p)
    uint64_t cb_load_acquire(cb_atomic_u64 *p)
    void cb_store_release(cb_atomic_u64 *p, uint64_t v)
    void cb_store_relaxed(cb_atomic_u64 *p, uint64_t v)
    bint cb_cas_acq_rel(cb_atomic_u64 *p, uint64_t *expected, uint64_t desired)
    bint cb_cas_strong_acq_rel(cb_atomic_u64 *p, uint64_t *expected, uint64_t desired)
    uint64_t cb_fetch_add_relaxed(cb_atomic_u64 *p, uint64_t v)
    uint64_t cb_fetch_add_acq_rel(cb_atomic_u64 *p, uint64_t v)
    uint64_t cb_fetch_sub_release(cb_atomic_u64 *p, uint64_t v)
    uint64_t cb_fetch_or_acq_rel(cb_atomic_u64 *p, uint64_t v)
    uint64_t cb_fetch_and_acq_rel(cb_atomic_u64 *p, uint64_t v)
    uint64_t cb_load_seq_cst(cb_atomic_u64 *p)
    void cb_store_seq_cst(cb_atomic_u64 *p, uint64_t v)
    bint cb_cas_seq_cst(cb_atomic_u64 *p, uint64_t *expected, uint64_t desired)
    void cb_cpu_relax()


cdef extern from "_event.h" nogil:
    ctypedef struct cb_event:
        pass
    int cb_event_init(cb_event *e)
    int cb_event_reinit(cb_event *e)
    void cb_event_destroy(cb_event *e)
    unsigned cb_event_key(cb_event *e)
    void cb_event_notify(cb_event *e)
    bint cb_event_wait(cb_event *e, unsigned key, double timeout)
    bint cb_event_waiting(cb_event *e)
    bint cb_backoff(unsigned *round)
    void cb_backoff_wait(unsigned *round)
    double cb_monotonic()
    ctypedef struct cb_mutex:
        pass
    int cb_mutex_init(cb_mutex *m)
    void cb_mutex_destroy(cb_mutex *m)
    void cb_mutex_lock(cb_mutex *m)
    void cb_mutex_unlock(cb_mutex *m)
    bint cb_mutex_trylock(cb_mutex *m)


cdef extern from "_state.h" nogil:
    const uint64_t CB_SEALED
    const uint64_t CB_FLUSHING
    const uint64_t CB_SHUT
    const uint64_t CB_WRITER_SHIFT
    const uint64_t CB_WRITER_ONE
    const uint64_t CB_WRITER_MAX
    const uint64_t CB_WRITER_MASK
    const uint64_t CB_OFFSET_SHIFT
    const uint64_t CB_OFFSET_MAX
    const uint64_t CB_COUNT_SHIFT
    const uint64_t CB_COUNT_ONE
    const uint64_t CB_COUNT_MASK
    const uint64_t CB_COUNT_WRAP


# Results of state_try_reserve (and of the C-level append paths built on it).
cdef enum ReserveStatus:
    CB_OK = 0         # reserved: the caller owns [offset, offset+n)
    CB_CLOSED = 1     # sealed (full, flushing or closed): nothing taken
    CB_NO_ROOM = 2    # open, but n bytes do not fit: nothing taken
    CB_BUSY = 3       # writer count at its limit: nothing taken, retry


cdef inline uint64_t state_offset(uint64_t s) noexcept nogil:
    return s >> CB_OFFSET_SHIFT


cdef inline uint64_t state_writers(uint64_t s) noexcept nogil:
    return (s & CB_WRITER_MASK) >> CB_WRITER_SHIFT


cdef inline int state_try_reserve(cb_atomic_u64 *word, uint64_t n,
                                  uint64_t capacity, uint64_t *offset,
                                  uint64_t *retries, bint *wrapped=NULL) noexcept nogil:
    """Reserve n bytes and count the caller as a writer, in one CAS.

    Lock-free: a failed CAS means another thread changed the word, i.e. made
    progress.  ``capacity`` must be <= CB_OFFSET_MAX so the sum cannot wrap.

    With ``wrapped`` the same CAS counts the write in bits 7..3, modulo 32;
    ``wrapped[0]`` tells the caller its write took that count round to 0, so
    it carries CB_COUNT_WRAP to a counter of its own.
    """
    cdef uint64_t s = cb_load_relaxed(word)
    cdef uint64_t off, nxt
    while True:
        if s & CB_SEALED:
            return CB_CLOSED
        off = s >> CB_OFFSET_SHIFT
        if n > capacity - off:
            return CB_NO_ROOM
        if (s & CB_WRITER_MASK) == CB_WRITER_MASK:
            return CB_BUSY
        nxt = s + (n << CB_OFFSET_SHIFT) + CB_WRITER_ONE
        if wrapped != NULL:
            nxt = (nxt & ~CB_COUNT_MASK) | ((s + CB_COUNT_ONE) & CB_COUNT_MASK)
        if cb_cas_acq_rel(word, &s, nxt):
            offset[0] = off
            if wrapped != NULL:
                wrapped[0] = (nxt & CB_COUNT_MASK) == 0
            return CB_OK
        retries[0] += 1


cdef inline uint64_t state_count(uint64_t s) noexcept nogil:
    """The writes counted in the word since its buffer opened, modulo 32."""
    return (s & CB_COUNT_MASK) >> CB_COUNT_SHIFT


cdef inline uint64_t state_leave(cb_atomic_u64 *word) noexcept nogil:
    """Un-count a writer after its copy; returns the word before the change.

    The caller that sees ``sealed and writers == 1`` in the result was the last
    writer out of a sealed buffer and must wake whoever dispatches it.
    """
    return cb_fetch_sub_release(word, CB_WRITER_ONE)


cdef inline bint state_last_out(uint64_t before_leave) noexcept nogil:
    return (before_leave & CB_SEALED) != 0 and state_writers(before_leave) == 1


cdef inline uint64_t state_seal(cb_atomic_u64 *word) noexcept nogil:
    """Set the sealed bit; returns the word before.  The one caller that sees
    the bit clear in the result is the sealer, and the offset in the result is
    the buffer's final length."""
    return cb_fetch_or_acq_rel(word, CB_SEALED)
