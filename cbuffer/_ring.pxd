# cython: language_level=3
"""Layer 2, C level: the ring of sealed-and-rotated buffers.

Convention: every ``ring_*`` function is ``noexcept nogil`` and reports through
a RingStatus code; none raises.  ``max_wait`` arguments are in seconds: 0
never waits, < 0 waits as long as it takes, > 0 waits at most that long and
then returns RING_WOULD_BLOCK so the caller can run signal handlers.

A caller must not wait (``max_wait != 0``) while holding the GIL: a Python
sink needs the GIL to make the progress it waits for.  Release it first
(``with nogil:``), as ``tests/capi/consumer.pyx`` does.
"""
cimport cython
from libc.stdint cimport uint64_t
from cpython.object cimport PyObject

from cbuffer._sink cimport cb_sink
from cbuffer._state cimport cb_atomic_u64, cb_event, cb_mutex


cdef enum RingStatus:
    RING_OK = 0           # done
    RING_NO_ROOM = 2      # auto_rotate=False and the record does not fit
    RING_WOULD_BLOCK = 4  # not done within max_wait (ring full, sink stalled)
    RING_ERROR = 5        # a sticky sink error is set; nothing was taken
    RING_SHUT = 6         # the ring is closing; nothing was taken
    RING_TOO_BIG = 7      # the record is larger than one buffer
    RING_INTR = 8         # a signal interrupted the sink: run handlers, call again
    RING_OWNED = 9        # this thread is inside the sink's own Python code: cannot wait for it


# How much a dispatch makes durable before it counts as synced.
cdef enum SyncMode:
    SYNC_NONE = 0         # hand the bytes over only
    SYNC_OS = 1           # and fsync them where fsync was asked for
    SYNC_RAW = 2          # and call a Python raw's flush() (then fsync where asked)


cdef struct cb_slot:
    cb_atomic_u64 state     # packed state word (_state.pxd)
    cb_atomic_u64 gen       # generation this slot was last opened for
    cb_atomic_u64 writes    # this generation's writes the state word's count wrapped past (x32)
    cb_atomic_u64 owner     # thread that dispatches this slot's tail itself, or 0
    uint64_t base           # stream position of data[0] in this generation
    uint64_t length         # bytes of data, fixed by the sealer
    const char *tail        # a large write handed over right after data, or NULL
    uint64_t tail_len       # its length
    char *tail_copy         # heap copy of tail when its writer could not wait
    uint64_t done           # bytes of data + tail already taken by the sink
    char *data              # buffer_size bytes, 4096-aligned
    char _pad[40]           # keep neighbouring state words on separate cache lines


cdef struct cb_lane:
    cb_atomic_u64 state     # packed state word (_state.pxd); FLUSHING: being moved
    cb_atomic_u64 writes    # writes moved on, and wraps of the state word's count (statistics)
    char *data              # lane_size bytes
    char _pad[40]           # one cache line per lane: a thread's writes touch only its own


cdef struct cb_ring:
    cb_slot *slots          # buffer_count slots
    char *memory            # the one aligned allocation behind every slot's data
    uint64_t count          # buffer_count
    uint64_t size           # buffer_size
    cb_sink sink            # where sealed bytes go (_sink.pxd)
    bint auto_flush         # a flusher thread dispatches sealed buffers
    bint auto_rotate        # a writer that does not fit seals and moves on
    double interval         # hand the open buffer over this often (<= 0: never)
    cb_atomic_u64 current   # generation accepting writes
    cb_atomic_u64 open_base  # stream position where generation `current` starts
    cb_atomic_u64 flushed   # generations below this have reached the sink
    cb_atomic_u64 written   # stream position of the next byte to reach the sink
    cb_atomic_u64 synced    # bytes before this position are synced (SyncMode)
    cb_atomic_u64 want      # a flush asks the flusher (Python sinks) to sync up to here
    cb_atomic_u64 error     # 0, an errno, or CB_PY_ERROR (see exc)
    PyObject *exc           # the sticky exception of a Python sink (owned)
    cb_mutex exc_mu         # guards error and exc together (never held across a call)
    cb_atomic_u64 closing   # set once by close(): no slot opens again
    cb_atomic_u64 stop      # the flusher thread should drain and exit
    cb_atomic_u64 park      # the flusher thread should exit now (before fork())
    cb_atomic_u64 running   # the flusher thread is inside its loop
    cb_atomic_u64 awake     # the flusher is on a CPU (not asleep on work_ev)
    cb_atomic_u64 inline    # no flusher (interpreter exit): waiters dispatch themselves
    cb_atomic_u64 refs      # owners: the BufferRing object and the flusher thread
    cb_mutex dispatch_mu    # one dispatcher at a time, buffers in seal order
    cb_event space_ev       # a slot opened, an error was set, or closing: writers re-check
    cb_event work_ev        # something to dispatch, or stop: the flusher re-checks
    cb_event done_ev        # written/synced moved, an error was set, a writer left
    cb_lane *lanes          # open buffers of their own for write() (free-threaded), or NULL
    uint64_t nlanes         # how many (0: writes go straight to the ring)
    uint64_t lane_size      # bytes per lane buffer
    cb_atomic_u64 tell_floor  # tell() with lanes never goes below this
    # statistics (relaxed counters, read by stats())
    cb_atomic_u64 st_writes
    cb_atomic_u64 st_flushes
    cb_atomic_u64 st_full_waits
    cb_atomic_u64 st_retries
    cb_atomic_u64 st_used       # data bytes in dispatched buffers
    cb_atomic_u64 st_capacity   # buffer bytes dispatched (size per non-empty buffer)
    cb_atomic_u64 st_dropped    # writes dropped by on_full="drop"
    cb_atomic_u64 st_dropped_bytes


# Write n bytes (n <= lane_size) into the calling thread's lane, when the
# ring has lanes: no cache line shared with other threads' writes.  The bytes
# enter the ring's order when the lane is moved into it (lane full, flush,
# interval, close).  RING_OK, or what moving a full lane met.
cdef int lane_write(cb_ring *r, const char *src, uint64_t n, double max_wait) noexcept nogil

# Move every lane's bytes (all=True) or the calling thread's (all=False)
# into the ring, so they are ordered before anything appended after.
cdef int lanes_move(cb_ring *r, bint all, double max_wait) noexcept nogil
# True when this thread's lane holds nothing to move (a write that bypasses
# the lane need not move it first).
cdef bint lane_clear(cb_ring *r) noexcept nogil

# Give the ring lanes (before any write; 0: none).
cdef int ring_set_lanes(cb_ring *r, uint64_t nlanes, uint64_t lane_size) except -1

# tell(): ring_position() plus the bytes waiting in lanes, never backwards.
cdef uint64_t ring_tell(cb_ring *r) noexcept nogil

# Reserve n bytes (n <= size).  RING_OK: *dst is where to copy, *pos the stream
# position, *slot what to pass to ring_commit once the copy is done.  The
# caller must not wait for anything (least of all the GIL) between the two.
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

# The stream position just after every byte reserved so far (a consistent
# snapshot: it never goes backwards).
cdef uint64_t ring_position(cb_ring *r) noexcept nogil

# Dispatch on the calling thread (joining a dispatch already under way, as a
# group commit) until the sink has every byte before ``target`` and, per
# ``sync``, has synced it.  A Python sink is called only by the flusher thread
# while one runs (a signal handler must never find its own thread inside the
# sink's code): then this asks the flusher and waits.  ``partial``: the open buffer's finished bytes may
# go without sealing it.  A Python exception that is the caller's (raised by a
# signal handler inside the sink) comes back as RING_INTR with *raised set.
cdef int ring_flush_to(cb_ring *r, uint64_t target, double max_wait, bint partial,
                       int sync, PyObject **raised) noexcept nogil

# Large write without a copy: seal the open buffer with src hung on as its
# tail.  ``own``: the calling thread owns it and dispatches it itself with
# ring_flush_to(r, *pos + n, ...); until flushed > *gen src must stay valid,
# or ring_detach_tail(r, *gen) must give the tail its own copy.  Not ``own``:
# src is a malloc'd copy the ring frees once the sink has it.
cdef int ring_direct(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     uint64_t *gen, bint own, double max_wait) noexcept nogil
cdef int ring_detach_tail(cb_ring *r, uint64_t gen) noexcept nogil

# Make sure no slot opens again and the open one (if any) is sealed (close()).
cdef void ring_shut(cb_ring *r) noexcept nogil

# Wait until every generation below `target` reached the sink (dispatching on
# the calling thread when nobody else does).
cdef int ring_wait_flushed(cb_ring *r, uint64_t target, double max_wait) noexcept nogil

# Take dispatch_mu within max_wait seconds (False: not taken).
cdef bint ring_lock_dispatch(cb_ring *r, double max_wait) noexcept nogil

# True when the calling thread runs Python code of the sink (a signal handler
# interrupted a raw.write()/flush(), or the raw called back): it must not wait
# for dispatch.
cdef bint ring_owned_by_me(cb_ring *r) noexcept nogil


# Waits of the Python-level write path (seconds); see _ring.pyx.
cdef double SIGNAL_CHECK
cdef double GIL_HELD_WAIT


cdef class BufferRing:
    cdef cb_ring *ring          # shared with the flusher thread (refcounted)
    cdef object _flusher        # the flusher threading.Thread, or None
    cdef object _signal_exc     # what a signal handler raised last inside a wait
    cdef int _close_state       # 0 open, 1 closing, 2 closed
    cdef unsigned long _close_owner  # thread running close() now, or 0
    cdef bint _close_deferred   # close() ran inside this ring's own dispatch
    cdef bint _fork_locked      # dispatch_mu is held across a fork() by this object
    cdef cython.pymutex _lock   # cold state (close()); never held while Python code runs
    cdef object __weakref__
    cdef _setup(self, uint64_t count, uint64_t size, bint auto_flush,
                bint auto_rotate, uint64_t start, double interval)
    cdef _check_open(self)
    cdef int _put_small(self, const char *src, Py_ssize_t n, uint64_t *pos,
                        bint wait) except -1
    cdef int _raise_status(self, int st, Py_ssize_t n) except -1
    cdef int _flush_to(self, uint64_t target, bint partial, int sync) except -1
    cdef int _raise_error(self) except -1
    cdef int _raise_raised(self, PyObject *raised) except -1
    cdef int _signals(self) except -1
    cdef int _move_lanes(self, bint all, double timeout) except -1
    cdef _start_flusher(self)
    cdef _stop_flusher(self, double timeout)
