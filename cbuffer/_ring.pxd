# cython: language_level=3
"""Layer 2, C level: the ring of sealed-and-rotated buffers.

Convention: every ``ring_*`` function is ``noexcept nogil`` and reports through
a RingStatus code; none raises or needs the GIL (a Python sink is called by the
flusher thread, which takes the GIL itself).  ``max_wait`` arguments are in
seconds: 0 never waits, < 0 waits as long as it takes, > 0 waits at most that
long and then returns RING_WOULD_BLOCK so the caller can check for signals.
"""
cimport cython
from libc.stdint cimport uint64_t
from cpython.object cimport PyObject

from cbuffer._state cimport cb_atomic_u64, cb_event, cb_mutex


cdef enum RingStatus:
    RING_OK = 0           # done
    RING_NO_ROOM = 2      # auto_rotate=False and the record does not fit
    RING_WOULD_BLOCK = 4  # no open buffer within max_wait (ring full)
    RING_ERROR = 5        # a sticky sink error is set; nothing was taken
    RING_SHUT = 6         # the ring is closing; nothing was taken
    RING_TOO_BIG = 7      # the record is larger than one buffer


cdef struct cb_slot:
    cb_atomic_u64 state     # packed state word (_state.pxd)
    cb_atomic_u64 gen       # generation this slot was last opened for
    cb_atomic_u64 appends   # reservations made in this generation
    uint64_t base           # stream position of data[0] in this generation
    uint64_t length         # bytes of data, fixed by the sealer
    const char *tail        # a large write handed over right after data, or NULL
    uint64_t tail_len       # its length
    char *tail_copy         # heap copy of tail when its writer could not wait
    uint64_t done           # bytes of data + tail already taken by the sink
    char *data              # buffer_size bytes, 4096-aligned
    char _pad[48]           # keep neighbouring state words on separate cache lines


cdef struct cb_ring:
    cb_slot *slots          # buffer_count slots
    char *memory            # the one aligned allocation behind every slot's data
    uint64_t count          # buffer_count
    uint64_t size           # buffer_size
    int fd                  # sink file descriptor, or -1 for a Python sink
    PyObject *sink          # the Python callable (owned reference), or NULL
    bint auto_flush         # a flusher thread dispatches sealed buffers
    bint auto_rotate        # a writer that does not fit seals and moves on
    bint fsync              # fsync(fd) after each dispatched batch
    double interval         # seal the open buffer this often (<= 0: never)
    cb_atomic_u64 current   # generation accepting writes
    uint64_t open_base      # stream position where generation `current` starts
    cb_atomic_u64 flushed   # generations below this have reached the sink
    cb_atomic_u64 written   # stream position of the next byte to reach the sink
    cb_atomic_u64 error     # 0, an errno, or CB_PY_ERROR (see exc)
    PyObject *exc           # the sticky exception of a Python sink (owned)
    cb_mutex exc_mu  # guards exc (never held across a call)
    cb_atomic_u64 closing   # set once by close(): no slot opens again
    cb_atomic_u64 stop      # the flusher thread should drain and exit
    cb_atomic_u64 inline    # no flusher (interpreter exit): waiters dispatch themselves
    cb_atomic_u64 py_owner  # ident of a thread in Python code under dispatch_mu, or 0
    cb_atomic_u64 refs      # owners: the BufferRing object and the flusher thread
    cb_mutex dispatch_mu  # one dispatcher at a time, buffers in seal order
    cb_event space_ev       # a slot opened or an error was set: writers re-check
    cb_event work_ev        # something to dispatch, or stop: the flusher re-checks
    cb_event done_ev        # `flushed` moved or an error was set: flush() re-checks
    # statistics (relaxed counters, read by stats())
    cb_atomic_u64 st_writes
    cb_atomic_u64 st_bytes_written
    cb_atomic_u64 st_flushes
    cb_atomic_u64 st_syscalls
    cb_atomic_u64 st_full_waits
    cb_atomic_u64 st_retries
    cb_atomic_u64 st_used       # data bytes in dispatched buffers
    cb_atomic_u64 st_capacity   # buffer bytes dispatched (size per non-empty buffer)


# Reserve n bytes (n <= size).  RING_OK: *dst is where to copy, *pos the stream
# position, *slot what to pass to ring_commit once the copy is done.
cdef int ring_reserve(cb_ring *r, uint64_t n, uint64_t *pos, char **dst,
                      cb_slot **slot, double max_wait) noexcept nogil

# Leave the slot after copying: publishes the copy, wakes the dispatcher when
# this was the last writer of a sealed buffer.
cdef void ring_commit(cb_ring *r, cb_slot *slot) noexcept nogil

# Reserve, copy and commit.
cdef int ring_append(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     double max_wait) noexcept nogil

# Seal the open buffer if it holds data (rotate).  Returns the generation
# bound: every byte reserved before the call is in a generation below it.
cdef uint64_t ring_seal_current(cb_ring *r) noexcept nogil

# Reserve-free large write: seal the open buffer with src hung on as its tail
# (handed to the sink right after it, no copy).  src must stay valid until
# flushed > *gen, or until ring_detach_tail(r, *gen) gave it its own copy.
cdef int ring_direct(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     uint64_t *gen, double max_wait) noexcept nogil
cdef int ring_detach_tail(cb_ring *r, uint64_t gen) noexcept nogil

# Make sure no slot opens again and the open one is sealed (close()).
cdef void ring_shut(cb_ring *r) noexcept nogil

# Take dispatch_mu, waiting at most max_wait (< 0: as long as it takes).
cdef bint ring_lock_dispatch(cb_ring *r, double max_wait) noexcept nogil

# Hand every sealed buffer below `target` to the sink, on the calling thread.
cdef int ring_dispatch_until(cb_ring *r, uint64_t target, double max_wait) noexcept nogil

# Wait until the flusher thread has handed every generation below `target`.
cdef int ring_wait_flushed(cb_ring *r, uint64_t target, double max_wait) noexcept nogil

# Wait until every generation below `target` reached the sink: by the flusher,
# or on the calling thread when there is none (auto_flush=False, or inline).
cdef int ring_await(cb_ring *r, uint64_t target, double max_wait) noexcept nogil

# True when the calling thread runs Python code under dispatch_mu (a signal
# handler interrupted a sink call or raw.flush()): it must not wait for dispatch.
cdef bint ring_owned_by_me(cb_ring *r) noexcept nogil


# Waits of the Python-level write path (seconds); see _ring.pyx.
cdef double SIGNAL_CHECK
cdef double GIL_HELD_WAIT


cdef class BufferRing:
    cdef cb_ring *ring          # shared with the flusher thread (refcounted)
    cdef object _flusher        # the flusher threading.Thread, or None
    cdef bint _started          # the flusher was started (it starts lazily)
    cdef cython.pymutex _start_lock  # one flusher even when two threads start it
    cdef object __weakref__
    cdef _setup(self, uint64_t count, uint64_t size, int fd, object sink,
                bint auto_flush, bint auto_rotate, uint64_t start, bint fsync,
                double interval)
    cdef _check_open(self)
    cdef int _put_small(self, const char *src, Py_ssize_t n, uint64_t *pos,
                        bint wait) except -1
    cdef int _raise_status(self, int st, Py_ssize_t n) except -1
    cdef int _flush(self) except -1
    cdef int _raise_error(self) except -1
    cdef _start_flusher(self)
