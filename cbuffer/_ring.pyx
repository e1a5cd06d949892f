# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Layer 2: BufferRing, a ring of 4096-aligned buffers sealed, rotated and
handed to a sink in order.

Implementation notes (the invariants every function below keeps)
=================================================================

Generations.  Every time a buffer is opened for writing it starts a new
*generation* ``g``; generation ``g`` always lives in slot ``g % count``.
``ring.current`` is the generation accepting writes and only ever grows;
``ring.flushed`` says every generation below it has been handed to the sink.
Generations start at ``count`` (slot ``i`` pretends to have served ``i``).

A slot's life::

    closed (SEALED|FLUSHING, offset 0) --open--> open (0)
      --reserve/leave...--> sealed (SEALED, offset = length)
      --writers == 0, dispatch--> flushing (SEALED|FLUSHING) --> closed

* Open.  The slot of ``current`` is opened once the generation it held before
  (``current - count``) has reached the sink.  Anybody may open it; a CAS of
  ``slot.gen`` from ``current - count`` to ``current`` picks exactly one.  The
  opener writes ``slot.base`` and then releases the state word to 0, so a
  writer's acquiring CAS sees the base of the generation it reserved in.
* At most one slot is open, and it is the slot of ``current``: ``current``
  moves only when its own slot is sealed.
* Seal.  Whoever sets the sealed bit (fetch_or) is the one sealer of that
  generation.  Between a check of ``slot.gen`` and the seal the slot may have
  moved on to a later generation (ABA), so the sealer reads the generation it
  actually sealed *after* the fetch_or: nothing reopens the slot before the
  sealer publishes.  The sealer fixes ``length``, publishes where the next
  generation starts (``open_base``) and then ``current = g + 1`` (release).
* Dispatch.  Generation ``g`` may be handed to the sink only when ``g <
  current`` (sealed and published) and its writer count is 0 (acquire).
  Dispatch happens under ``dispatch_mu``, oldest first, so the sink sees the
  stream in order, one thread at a time.  ``slot.done`` counts what the sink
  took, so a short write, a signal or an error resumes exactly there.
* Who dispatches.  A background flusher thread handles full buffers and the
  ``flush_interval`` tick.  ``flush()`` runs the dispatch on the caller's
  thread (``ring_flush_to``): with nobody dispatching it takes the mutex and
  writes itself; otherwise it waits for the dispatch under way, which takes
  everything ready (group commit).  It may also write the finished prefix of
  the *open* buffer without sealing it (``partial``): when the open buffer's
  writer count is 0, every byte below its offset is copied.
* Large writes.  A write larger than a buffer seals the open buffer with the
  caller's bytes hung on as its ``tail`` and ``owner`` set to the caller's
  thread, which dispatches it itself; no other thread dispatches an owned
  tail (it stops before it), so a caller leaving early (a signal, an error)
  can copy its tail and clear ``owner`` without any lock.  A nested call on
  the owner's own thread (a signal handler) may dispatch it: that frame keeps
  the bytes alive.
* Ring full.  A writer that finds no open slot spins briefly, then sleeps on
  ``space_ev`` with the GIL released; it never takes space it cannot fill.
  Into a regular file or /dev/null, a writer off the interpreter that has
  spun ~20 us while the flusher is still not on a CPU (``awake``) takes the
  mutex if it is free and dispatches one batch itself (``ring_help``).
* Counting.  The reserving CAS also counts the write in the state word's
  bits 7..3 (mod 32); the write that wraps them adds 32 to ``slot.writes``
  (``lane.writes``).  ``ring_finish`` totals a generation's count before
  ``written`` moves; a lane's is totalled when the lane reopens.
* Errors.  A failed sink write sets the sticky ``error`` (with ``exc`` for a
  Python exception, both under ``exc_mu``); nothing is dispatched until it is
  cleared.
* Closing.  ``close()`` sets ``closing`` (seq_cst) and then makes sure the
  slot of ``current`` is sealed or marked SHUT.  An opener claims the slot
  (seq_cst CAS on ``gen``) *before* it reads ``closing`` (seq_cst), so either
  it sees ``closing`` and backs off, or ``close()`` sees the claim and either
  seals the opened slot or shuts it before the opener's CAS to 0 can succeed.
* Waits.  Every wait has a time limit; the Python layer calls again after
  running signal handlers, at least every ``SIGNAL_CHECK`` seconds.
"""
import atexit
import copy
import os
import sys
import threading
import time
import weakref
from collections import namedtuple

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.stdlib cimport posix_memalign
from posix.uio cimport iovec

from cbuffer._buffer import BufferFull
from cbuffer._sink cimport (
    SINK_AGAIN, SINK_ERROR, SINK_INTR, SINK_OK, sink_clear, sink_init_fd,
    sink_init_python, sink_owned_by_me, sink_prompt, sink_wait_writable,
)
from cbuffer._state cimport (
    CB_BUSY, CB_COUNT_MASK, CB_COUNT_WRAP, CB_FLUSHING, CB_NO_ROOM, CB_OFFSET_MAX, CB_OK, CB_SEALED,
    CB_SHUT, cb_atomic_init, cb_backoff, cb_backoff_wait, cb_cas_acq_rel, cb_cas_seq_cst,
    cb_cas_strong_acq_rel, cb_cpu_relax, cb_event_destroy, cb_event_init,
    cb_event_key, cb_event_notify, cb_event_reinit, cb_event_wait, cb_event_waiting,
    cb_fetch_add_relaxed, cb_fetch_and_acq_rel, cb_fetch_or_acq_rel, cb_fetch_sub_release,
    cb_load_acquire,
    cb_load_relaxed, cb_load_seq_cst, cb_monotonic, cb_mutex_destroy,
    cb_mutex_init, cb_mutex_lock, cb_mutex_trylock, cb_mutex_unlock, cb_store_relaxed,
    cb_store_release, cb_store_seq_cst, state_last_out, state_leave,
    state_count, state_offset, state_seal, state_try_reserve, state_writers,
)

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident() nogil
    int PyGILState_Check() nogil  # the calling thread is attached to the interpreter

cdef extern from "_lane.h" nogil:
    uint64_t cb_my_lane(uint64_t nlanes)

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int sigfillset(sigset_t *s)
    int sigdelset(sigset_t *s, int signo)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)
    int SIG_BLOCK, SIG_SETMASK, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT

# error word value meaning "the Python sink raised; see ring.exc".
cdef uint64_t CB_PY_ERROR = (<uint64_t>1) << 40
# A closed slot: sealed so nobody reserves, FLUSHING so close() can tell it
# from a slot whose sealer is still publishing.
cdef uint64_t CB_CLOSED_SLOT = CB_SEALED | CB_FLUSHING
cdef enum:
    MAX_BATCH = 64    # generations (and one open prefix) per sink call
    GROUP_ROUNDS = 4  # extra batches a caller-dispatcher writes for waiters
# Copies at least this large are done with the GIL released.
cdef Py_ssize_t NOGIL_COPY = 64 * 1024
# How long a GIL-released wait lasts before the caller runs signal handlers.
cdef double SIGNAL_CHECK = 0.05
# With an fd sink (a flusher that never needs the GIL) a writer that finds the
# ring full first waits this long *holding* the GIL: under the GIL the other
# writers could only hit the same full ring, and handing the GIL round a crowd
# of woken writers is what makes a lock convoy.  Longer waits release it.
cdef double GIL_HELD_WAIT = 0.002
# How long the flusher waits for a non-blocking sink before it looks at its
# stop/park flags again.
cdef double FLUSHER_SLICE = 0.1
# When buffers fill faster than this apart, the flusher waits for the next
# one spinning (for up to twice the last gap) instead of going to sleep: a
# sleep and its wake-up cost both threads a system call per buffer, which is
# most of a 4 KiB write.  Slower fills -- and a spin that finds nothing --
# end in a real sleep, so an idle or lightly loaded writer burns no CPU.
cdef double FLUSHER_SPIN = 20e-6
# Backoff rounds (about 20 us of spinning) a writer waits for a full ring
# before it dispatches itself, if the flusher is not on a CPU by then.
cdef unsigned HELP_AFTER = 10
# How long exit and fork wait for a sink before giving up on it.  (A C
# constant: finalizers may run after the module's globals are gone.)
cdef double EXIT_WAIT_S = 2.0
EXIT_WAIT = EXIT_WAIT_S

BufferState = namedtuple("BufferState", "index offset writers sealed flushing")
BufferState.__doc__ = "A snapshot of the buffer currently accepting writes."


# ---------------------------------------------------------------- protocol

cdef inline cb_slot *slot_of(cb_ring *r, uint64_t gen) noexcept nogil:
    return &r.slots[gen % r.count]


cdef inline uint64_t slot_count(cb_slot *slot) noexcept nogil:
    """Writes of the slot's generation not yet added to ``st_writes``."""
    return cb_load_relaxed(&slot.writes) + state_count(cb_load_relaxed(&slot.state))


cdef inline uint64_t my_ident() noexcept nogil:
    return <uint64_t>PyThread_get_thread_ident()


cdef bint ring_try_open(cb_ring *r) noexcept nogil:
    """Open the slot of ``current`` if its previous generation has reached
    the sink and nobody opened it yet.  Returns True if this call opened it."""
    cdef uint64_t c = cb_load_acquire(&r.current)
    cdef cb_slot *slot = slot_of(r, c)
    cdef uint64_t prev_gen = c - r.count
    cdef uint64_t closed = CB_CLOSED_SLOT
    if cb_load_acquire(&slot.gen) != prev_gen:
        return False
    if cb_load_acquire(&r.flushed) <= prev_gen:
        return False
    if not cb_cas_seq_cst(&slot.gen, &prev_gen, c):
        return False
    if cb_load_seq_cst(&r.closing):
        return False
    slot.base = cb_load_relaxed(&r.open_base)
    slot.length = 0
    slot.tail = NULL
    slot.tail_len = 0
    slot.done = 0
    cb_store_relaxed(&slot.owner, 0)
    if not cb_cas_strong_acq_rel(&slot.state, &closed, 0):
        return False  # close() shut it first
    cb_event_notify(&r.space_ev)
    return True


cdef void ring_publish(cb_ring *r, cb_slot *slot, uint64_t sealed_from,
                       const char *tail, uint64_t tail_len) noexcept nogil:
    # Only the sealer runs this, and nothing can dispatch or reopen the slot
    # before current moves past it, so the plain fields are ours to write.
    cdef uint64_t g = cb_load_relaxed(&slot.gen)
    slot.length = state_offset(sealed_from)
    slot.tail = tail
    slot.tail_len = tail_len
    cb_store_relaxed(&r.open_base, slot.base + slot.length + tail_len)
    cb_store_release(&r.current, g + 1)
    cb_event_notify(&r.work_ev)
    ring_try_open(r)


cdef bint ring_seal(cb_ring *r, cb_slot *slot) noexcept nogil:
    """Seal ``slot``; if this call is the sealer, publish the next
    generation.  Returns True for the sealer."""
    cdef uint64_t prev = state_seal(&slot.state)
    if prev & CB_SEALED:
        return False
    ring_publish(r, slot, prev, NULL, 0)
    return True


cdef bint ring_help(cb_ring *r, double max_wait) noexcept nogil:
    """A writer that finds every buffer sealed hands them to the sink itself
    when nobody else is, rather than sleep until the flusher gets a CPU (with
    as many busy writers as CPUs it waits its turn, and the writers with it).
    Only a prompt fd sink, and only off the interpreter: a write(2) that
    might wait on a reader must not hold up the GIL or the caller's signal
    handlers.  True when it made room."""
    cdef PyObject *raised = NULL
    cdef int blocked
    cdef uint64_t before
    if not r.auto_flush or not sink_prompt(&r.sink) or PyGILState_Check():
        return False  # (auto_flush=False: buffers wait for flush(), as documented)
    if not cb_mutex_trylock(&r.dispatch_mu):
        return False
    if not sink_prompt(&r.sink) or cb_load_acquire(&r.closing):
        cb_mutex_unlock(&r.dispatch_mu)  # (the sink changed, or close() has the rest)
        return False
    before = cb_load_relaxed(&r.flushed)
    ring_dispatch(r, 0, True, False, SYNC_NONE, max_wait, &blocked, &raised)
    cb_mutex_unlock(&r.dispatch_mu)
    # (raised stays NULL: only a Python sink's code can raise)
    if cb_load_relaxed(&r.flushed) == before:
        return False
    cb_event_notify(&r.done_ev)
    return True


cdef int ring_wait_open(cb_ring *r, uint64_t c, unsigned *spins,
                        double *deadline, double max_wait,
                        bint *counted) noexcept nogil:
    """One step of waiting for an open slot after generation ``c`` was found
    sealed.  RING_OK means "look again"."""
    cdef unsigned key
    cdef double now
    if cb_load_relaxed(&r.closing):
        return RING_SHUT
    if cb_load_relaxed(&r.error):
        return RING_ERROR
    if ring_try_open(r) or cb_load_acquire(&r.current) != c:
        return RING_OK
    # Help once the flusher has had time to wake and still is not on a CPU:
    # while it runs, it writes in parallel with us, which is faster.
    if (max_wait != 0 and spins[0] >= HELP_AFTER and not cb_load_relaxed(&r.awake)
            and ring_help(r, max_wait)):
        return RING_OK
    if not cb_backoff(spins):
        return RING_OK
    if max_wait == 0:
        return RING_WOULD_BLOCK
    if not counted[0]:
        counted[0] = True
        cb_fetch_add_relaxed(&r.st_full_waits, 1)
    key = cb_event_key(&r.space_ev)
    # Re-check after taking the key: a notify from here on wakes us.
    if (ring_try_open(r) or cb_load_acquire(&r.current) != c
            or not (cb_load_acquire(&slot_of(r, c).state) & CB_SEALED)
            or cb_load_relaxed(&r.closing) or cb_load_relaxed(&r.error)):
        return RING_OK
    now = cb_monotonic()
    if max_wait > 0:
        if deadline[0] < 0:
            deadline[0] = now + max_wait
        if now >= deadline[0]:
            return RING_WOULD_BLOCK
        cb_event_wait(&r.space_ev, key, deadline[0] - now)
    else:
        cb_event_wait(&r.space_ev, key, 1.0)
    return RING_OK


cdef int ring_reserve(cb_ring *r, uint64_t n, uint64_t *pos, char **dst,
                      cb_slot **slot_out, double max_wait) noexcept nogil:
    return reserve(r, n, pos, dst, slot_out, max_wait, True)


cdef inline int reserve(cb_ring *r, uint64_t n, uint64_t *pos, char **dst,
                        cb_slot **slot_out, double max_wait, bint count) noexcept nogil:
    # ``count``: count it as a write (in the reserving CAS; a lane's move is
    # many writes, counted in the lane).
    cdef uint64_t c, off, retries = 0
    cdef cb_slot *slot
    cdef int st
    cdef unsigned spins = 0
    cdef double deadline = -1.0
    cdef bint counted = False, wrapped = False
    if n > r.size:
        return RING_TOO_BIG
    if cb_load_relaxed(&r.error):
        return RING_ERROR
    while True:
        c = cb_load_acquire(&r.current)
        slot = slot_of(r, c)
        st = state_try_reserve(&slot.state, n, r.size, &off, &retries,
                               &wrapped if count else NULL)
        if st == CB_OK:
            if wrapped:
                cb_fetch_add_relaxed(&slot.writes, CB_COUNT_WRAP)
            if retries:
                cb_fetch_add_relaxed(&r.st_retries, retries)
            pos[0] = slot.base + off
            dst[0] = slot.data + off
            slot_out[0] = slot
            return RING_OK
        if st == CB_NO_ROOM:
            if not r.auto_rotate:
                return RING_NO_ROOM
            # Whatever generation this seals, sealing it is right: it is the
            # open one and the record does not fit in it.
            ring_seal(r, slot)
            continue
        if st == CB_BUSY:
            cb_cpu_relax()
            continue
        st = ring_wait_open(r, c, &spins, &deadline, max_wait, &counted)
        if st != RING_OK:
            return st


cdef void ring_commit(cb_ring *r, cb_slot *slot) noexcept nogil:
    if state_last_out(state_leave(&slot.state)):
        cb_event_notify(&r.work_ev)
        cb_event_notify(&r.done_ev)  # a caller-dispatcher may wait for it too


cdef int ring_append(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     double max_wait) noexcept nogil:
    return append(r, src, n, pos, max_wait, True)


cdef inline int append(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                       double max_wait, bint count) noexcept nogil:
    cdef char *dst
    cdef cb_slot *slot
    cdef int st = reserve(r, n, pos, &dst, &slot, max_wait, count)
    if st == RING_OK:
        memcpy(dst, src, n)
        ring_commit(r, slot)
    return st


cdef uint64_t ring_seal_current(cb_ring *r) noexcept nogil:
    cdef uint64_t c, s, prev
    cdef cb_slot *slot
    cdef unsigned spins = 0
    while True:
        c = cb_load_acquire(&r.current)
        slot = slot_of(r, c)
        if cb_load_acquire(&slot.gen) != c:
            return c  # not opened yet: generation c holds nothing
        s = cb_load_acquire(&slot.state)
        if s & CB_SEALED:
            if state_offset(s) == 0:
                return c  # sealed empty (or shut): nothing of c to wait for
            # Its sealer is publishing c + 1 right now.
            while cb_load_acquire(&r.current) == c:
                cb_backoff_wait(&spins)
            return c + 1
        if state_offset(s) == 0:
            return c
        prev = state_seal(&slot.state)
        if not (prev & CB_SEALED):
            ring_publish(r, slot, prev, NULL, 0)
            return cb_load_relaxed(&slot.gen) + 1


cdef uint64_t ring_position(cb_ring *r) noexcept nogil:
    cdef uint64_t c, s, base
    cdef cb_slot *slot
    cdef unsigned spins = 0
    while True:
        c = cb_load_acquire(&r.current)
        slot = slot_of(r, c)
        if cb_load_acquire(&slot.gen) == c:
            s = cb_load_acquire(&slot.state)
            if s != CB_CLOSED_SLOT and not (s & CB_SHUT and state_offset(s) == 0):
                base = slot.base
                # Valid only if the slot still holds c and c is still current
                # (else it was sealed and maybe reopened in between).
                if cb_load_acquire(&slot.gen) == c and cb_load_acquire(&r.current) == c:
                    return base + state_offset(s)
                cb_backoff_wait(&spins)
                continue
        base = cb_load_acquire(&r.open_base)
        if cb_load_acquire(&r.current) == c:
            return base
        cb_backoff_wait(&spins)


cdef uint64_t ring_tell(cb_ring *r) noexcept nogil:
    """ring_position() plus what waits in lanes: while a lane moves its bytes
    are briefly counted twice, so the floor keeps the result from going
    backwards."""
    cdef uint64_t pos, floor
    if r.nlanes == 0:
        return ring_position(r)
    pos = ring_position(r) + lanes_pending(r)
    floor = cb_load_acquire(&r.tell_floor)
    while floor < pos:
        if cb_cas_acq_rel(&r.tell_floor, &floor, pos):
            return pos
    return floor


cdef int ring_direct(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     uint64_t *gen, bint own, double max_wait) noexcept nogil:
    cdef uint64_t c, s, prev, g
    cdef cb_slot *slot
    cdef int st
    cdef unsigned spins = 0
    cdef double deadline = -1.0
    cdef bint counted = False
    while True:
        if cb_load_relaxed(&r.error):
            return RING_ERROR
        if cb_load_relaxed(&r.closing):
            return RING_SHUT
        c = cb_load_acquire(&r.current)
        slot = slot_of(r, c)
        if cb_load_acquire(&slot.gen) == c:
            s = cb_load_acquire(&slot.state)
            if not (s & CB_SEALED):
                prev = state_seal(&slot.state)
                if not (prev & CB_SEALED):
                    # The generation really sealed: the slot may have moved on
                    # since the check above, but not since the seal.
                    g = cb_load_relaxed(&slot.gen)
                    if own:
                        cb_store_relaxed(&slot.owner, my_ident())
                    else:
                        slot.tail_copy = <char *>src  # freed by ring_finish
                    gen[0] = g
                    pos[0] = slot.base + state_offset(prev)
                    ring_publish(r, slot, prev, src, n)
                    return RING_OK
                continue
        st = ring_wait_open(r, c, &spins, &deadline, max_wait, &counted)
        if st != RING_OK:
            return st


cdef int ring_detach_tail(cb_ring *r, uint64_t gen) noexcept nogil:
    """Give generation ``gen``'s tail its own copy and let other dispatchers
    take it.  Only its owner calls this, outside any dispatch of its own, so
    nobody reads the tail meanwhile.  Returns -1 if memory ran out."""
    cdef cb_slot *slot = slot_of(r, gen)
    cdef char *own_copy
    if cb_load_acquire(&r.flushed) > gen:
        return 0
    if slot.tail_len and slot.tail_copy == NULL:
        own_copy = <char *>malloc(slot.tail_len)
        if own_copy == NULL:
            return -1
        memcpy(own_copy, slot.tail, slot.tail_len)
        slot.tail = own_copy
        slot.tail_copy = own_copy
    cb_store_release(&slot.owner, 0)
    cb_event_notify(&r.work_ev)
    cb_event_notify(&r.done_ev)
    return 0


cdef void ring_shut(cb_ring *r) noexcept nogil:
    """Make sure no slot opens again and the open one (if any) is sealed."""
    cdef uint64_t c, prev
    cdef cb_slot *slot
    cdef unsigned spins = 0
    cb_store_seq_cst(&r.closing, 1)
    while True:
        c = cb_load_seq_cst(&r.current)
        slot = slot_of(r, c)
        if cb_load_seq_cst(&slot.gen) != c:
            break  # unclaimed: a later opener claims first, then sees closing
        prev = cb_fetch_or_acq_rel(&slot.state, CB_SEALED | CB_SHUT)
        if not (prev & CB_SEALED):
            ring_publish(r, slot, prev, NULL, 0)  # we sealed the open slot
            continue
        if prev & CB_FLUSHING:
            break  # claimed but not yet opened: its opening CAS now fails
        while cb_load_acquire(&r.current) == c:  # a sealer is publishing
            cb_backoff_wait(&spins)
    # Writers waiting for space must see closing now.
    cb_event_notify(&r.space_ev)
    cb_event_notify(&r.work_ev)


# ---------------------------------------------------------------- lanes
# A writer on a free-threaded build gives each thread a lane: an open buffer
# of its own that its write()s fill without touching a cache line another
# thread's writes touch.  A lane's bytes enter the ring's order (and get
# their stream positions) when the lane is moved into the ring -- as one
# append -- because it is full, or a flush, the interval, close() or a
# sequenced call (append(), a large write) of its thread needs it.  Each
# thread keeps its lane, so its writes stay in order; a thread's sequenced
# calls move its lane first.  Lane states use the state word's layout: a
# SEALED lane takes no writes, FLUSHING marks the one thread moving it, SHUT a
# lane closed for good.

cdef int lane_move(cb_ring *r, cb_lane *lane, double max_wait) noexcept nogil:
    """Move ``lane``'s bytes into the ring and open it again.  RING_OK once
    the lane is open again (moved here, or by another thread meanwhile)."""
    cdef uint64_t s = cb_load_acquire(&lane.state), n, pos, opened
    cdef unsigned spins = 0
    cdef double deadline = -1.0
    cdef int st
    while True:
        if s & CB_FLUSHING:
            # Another thread is moving it: wait for that (it may wait for room).
            if max_wait >= 0:
                if deadline < 0:
                    deadline = cb_monotonic() + max_wait
                elif cb_monotonic() >= deadline:
                    return RING_WOULD_BLOCK
            cb_backoff_wait(&spins)
            s = cb_load_acquire(&lane.state)
            if not (s & CB_FLUSHING) and (state_offset(s) == 0 or not (s & CB_SEALED)):
                return RING_OK  # moved (a failed move leaves it sealed and full: take it over)
            continue
        if state_offset(s) == 0 and not (s & CB_SEALED):
            return RING_OK  # open and empty
        if cb_cas_acq_rel(&lane.state, &s, s | CB_SEALED | CB_FLUSHING):
            break
    s = cb_load_acquire(&lane.state)
    while state_writers(s):  # writers still copying in (a short wait)
        cb_backoff_wait(&spins)
        s = cb_load_acquire(&lane.state)
    n = state_offset(s)
    if n:
        st = append(r, lane.data, n, &pos, max_wait, False)
        if st != RING_OK:
            # Keep the bytes: the lane stays sealed, and whoever writes to it
            # next tries the move again.
            cb_fetch_and_acq_rel(&lane.state, ~CB_FLUSHING)
            return st
    s = cb_load_acquire(&lane.state)
    while True:  # open again, or stay shut if close() shut it meanwhile
        opened = (CB_SEALED | CB_SHUT) if s & CB_SHUT else 0
        if cb_cas_acq_rel(&lane.state, &s, opened):
            # The word's count (fixed while the lane was sealed) goes on here.
            cb_fetch_add_relaxed(&lane.writes, state_count(s))
            return RING_OK


cdef int lane_write(cb_ring *r, const char *src, uint64_t n, double max_wait) noexcept nogil:
    cdef cb_lane *lane = &r.lanes[cb_my_lane(r.nlanes)]
    cdef uint64_t off, retries = 0
    cdef int st
    cdef bint wrapped = False
    if cb_load_relaxed(&r.error):  # (a read-only line while all is well)
        return RING_ERROR
    while True:
        st = state_try_reserve(&lane.state, n, r.lane_size, &off, &retries, &wrapped)
        if st == CB_OK:
            memcpy(lane.data + off, src, n)
            if wrapped:
                cb_fetch_add_relaxed(&lane.writes, CB_COUNT_WRAP)
            state_leave(&lane.state)
            return RING_OK
        if st == CB_BUSY:
            cb_cpu_relax()
            continue
        if cb_load_acquire(&lane.state) & CB_SHUT:
            return RING_SHUT
        if cb_load_relaxed(&r.error):
            return RING_ERROR
        st = lane_move(r, lane, max_wait)  # full, or being moved: move it / wait for it
        if st != RING_OK:
            return st


cdef bint lane_clear(cb_ring *r) noexcept nogil:
    cdef uint64_t s = cb_load_acquire(&r.lanes[cb_my_lane(r.nlanes)].state)
    return state_offset(s) == 0 and not (s & (CB_SEALED | CB_FLUSHING))


cdef int lanes_move(cb_ring *r, bint all, double max_wait) noexcept nogil:
    cdef uint64_t i
    cdef int st
    if r.nlanes == 0:
        return RING_OK
    if not all:
        return lane_move(r, &r.lanes[cb_my_lane(r.nlanes)], max_wait)
    for i in range(r.nlanes):
        st = lane_move(r, &r.lanes[i], max_wait)
        if st != RING_OK:
            return st
    return RING_OK


cdef void lanes_shut(cb_ring *r) noexcept nogil:
    """No lane takes a write again (close()); their bytes still move."""
    cdef uint64_t i
    for i in range(r.nlanes):
        cb_fetch_or_acq_rel(&r.lanes[i].state, CB_SEALED | CB_SHUT)


cdef uint64_t lanes_pending(cb_ring *r) noexcept nogil:
    cdef uint64_t i, total = 0
    for i in range(r.nlanes):
        total += state_offset(cb_load_acquire(&r.lanes[i].state))
    return total


# ---------------------------------------------------------------- dispatch

cdef void ring_set_sink_error(cb_ring *r) noexcept nogil:
    """Make the sink's last error sticky: errno, or the exception it holds."""
    cdef PyObject *exc = r.sink.exc
    cdef int err = r.sink.err
    r.sink.exc = NULL
    r.sink.err = 0
    cb_mutex_lock(&r.exc_mu)
    if not cb_load_relaxed(&r.error):
        if exc != NULL:
            r.exc = exc
            exc = NULL
            cb_store_release(&r.error, CB_PY_ERROR)
        else:
            cb_store_release(&r.error, <uint64_t>(err if err else 5))  # EIO
    cb_mutex_unlock(&r.exc_mu)
    if exc != NULL:
        with gil:
            Py_XDECREF(exc)
    cb_event_notify(&r.space_ev)
    cb_event_notify(&r.done_ev)


cdef struct cb_part:
    cb_slot *slot
    uint64_t gen
    uint64_t end      # slot.done once this part is written
    bint last         # sealed, and `end` is all of it: the generation is finished


cdef enum Blocked:
    BLOCK_NONE = 0
    BLOCK_WRITERS = 1   # a sealed generation still has writers copying
    BLOCK_OWNED = 2     # a large write's own thread dispatches it
    BLOCK_OPEN = 3      # the open buffer has writers copying (no partial dispatch)


cdef int ring_collect(cb_ring *r, cb_part *parts, bint partial, uint64_t me,
                      int *blocked) noexcept nogil:
    """Under dispatch_mu: what is ready for the sink, oldest first."""
    cdef uint64_t f = cb_load_acquire(&r.flushed)
    cdef uint64_t c = cb_load_acquire(&r.current)
    cdef uint64_t g = f, s, own
    cdef int k = 0
    cdef cb_slot *slot
    blocked[0] = BLOCK_NONE
    while g < c and k < MAX_BATCH:
        slot = slot_of(r, g)
        s = cb_load_acquire(&slot.state)
        if state_writers(s):
            blocked[0] = BLOCK_WRITERS
            return k
        own = cb_load_acquire(&slot.owner)
        if own != 0 and own != me:
            blocked[0] = BLOCK_OWNED
            return k
        if not (s & CB_FLUSHING):
            cb_fetch_or_acq_rel(&slot.state, CB_FLUSHING)
        parts[k].slot = slot
        parts[k].gen = g
        parts[k].end = slot.length + slot.tail_len
        parts[k].last = True
        k += 1
        g += 1
    if g == c and partial and k < MAX_BATCH:
        slot = slot_of(r, c)
        if cb_load_acquire(&slot.gen) == c:
            s = cb_load_acquire(&slot.state)
            if not (s & CB_SEALED):
                if state_writers(s):
                    blocked[0] = BLOCK_OPEN
                elif state_offset(s) > slot.done:
                    parts[k].slot = slot
                    parts[k].gen = c
                    parts[k].end = state_offset(s)
                    parts[k].last = False
                    k += 1
    return k


cdef void ring_finish(cb_ring *r, cb_slot *slot, uint64_t gen) noexcept nogil:
    # Move the generation's write count to the total before written moves, so
    # stats() read after a flush counts each write once.
    cdef uint64_t writes = (cb_load_relaxed(&slot.writes)
                            + state_count(cb_fetch_and_acq_rel(&slot.state, ~CB_COUNT_MASK)))
    cb_store_relaxed(&slot.writes, 0)
    cb_fetch_add_relaxed(&r.st_writes, writes + (1 if slot.tail_len else 0))
    if slot.length:
        cb_fetch_add_relaxed(&r.st_used, slot.length)
        cb_fetch_add_relaxed(&r.st_capacity, r.size)
    if slot.tail_copy != NULL:
        free(slot.tail_copy)
        slot.tail_copy = NULL
    slot.tail = NULL
    cb_store_relaxed(&slot.owner, 0)
    cb_store_release(&r.written, slot.base + slot.length + slot.tail_len)
    cb_store_release(&slot.state, CB_CLOSED_SLOT)
    cb_store_release(&r.flushed, gen + 1)


cdef int build_iov(cb_part *parts, int first, int k, iovec *iov) noexcept nogil:
    cdef int cnt = 0, i
    cdef cb_slot *slot
    cdef uint64_t lo, hi
    for i in range(first, k):
        slot = parts[i].slot
        lo = slot.done
        hi = parts[i].end
        if not parts[i].last:
            # The open buffer's finished prefix: length is not fixed yet.
            iov[cnt].iov_base = slot.data + lo
            iov[cnt].iov_len = hi - lo
            cnt += 1
            continue
        if lo < slot.length:
            iov[cnt].iov_base = slot.data + lo
            iov[cnt].iov_len = (hi if hi < slot.length else slot.length) - lo
            cnt += 1
            lo = slot.length
        if lo < hi:
            iov[cnt].iov_base = <void *>(slot.tail + (lo - slot.length))
            iov[cnt].iov_len = hi - lo
            cnt += 1
    return cnt


cdef int ring_write_parts(cb_ring *r, cb_part *parts, int k, bint caller,
                          double max_wait, uint64_t *finished,
                          PyObject **raised) noexcept nogil:
    """Hand ``parts`` to the sink, resuming after short writes.  A caller
    gets RING_INTR / RING_WOULD_BLOCK back (progress kept) so it can run
    signal handlers; the flusher retries by itself."""
    cdef iovec iov[2 * MAX_BATCH]
    cdef int first = 0, cnt, i, st
    cdef uint64_t taken, left, take
    cdef cb_slot *slot
    cdef double deadline = cb_monotonic() + max_wait if max_wait >= 0 else -1.0
    cdef double now
    while first < k:
        cnt = build_iov(parts, first, k, iov)
        if cnt:
            st = r.sink.write(&r.sink, iov, cnt, &taken)
        else:
            st = SINK_OK  # only empty generations: nothing for the sink
            taken = 0
        i = first
        while taken > 0 and i < k:
            slot = parts[i].slot
            left = parts[i].end - slot.done
            take = left if left < taken else taken
            slot.done += take
            taken -= take
            i += 1
        while first < k and parts[first].slot.done == parts[first].end:
            cb_fetch_add_relaxed(&r.st_flushes, 1)
            if parts[first].last:
                ring_finish(r, parts[first].slot, parts[first].gen)
                finished[0] += 1
            else:
                cb_store_release(&r.written, parts[first].slot.base + parts[first].slot.done)
            first += 1
        if first < k and parts[first].slot.done:
            cb_store_release(&r.written, parts[first].slot.base + parts[first].slot.done)
        if st == SINK_OK:
            if caller and first < k:
                # Short: a signal may have cut it (a blocking pipe writes all
                # or is interrupted).  Let the caller run handlers first.
                return RING_INTR
            continue
        if st == SINK_ERROR:
            ring_set_sink_error(r)
            return RING_ERROR
        if st == SINK_INTR:
            if r.sink.exc != NULL:
                if not caller:
                    ring_set_sink_error(r)  # nobody to raise it to: keep it
                    return RING_ERROR
                raised[0] = r.sink.exc
                r.sink.exc = NULL
                return RING_INTR
            if caller:
                return RING_INTR
            continue
        # SINK_AGAIN: wait for the destination, a slice at a time.
        now = cb_monotonic()
        if deadline >= 0 and now >= deadline:
            return RING_WOULD_BLOCK
        sink_wait_writable(&r.sink, FLUSHER_SLICE if deadline < 0 else
                           min(deadline - now, FLUSHER_SLICE))
        if not caller and (cb_load_relaxed(&r.park) or cb_load_relaxed(&r.inline)):
            return RING_WOULD_BLOCK
    return RING_OK


cdef int ring_dispatch(cb_ring *r, uint64_t target, bint caller, bint partial, int sync,
                       double max_wait, int *blocked, PyObject **raised) noexcept nogil:
    """Under dispatch_mu: write what is ready, then sync it per ``sync``.  A
    caller goes on for up to GROUP_ROUNDS more batches while others wait."""
    cdef cb_part parts[MAX_BATCH]
    cdef uint64_t me = my_ident(), finished = 0, pos
    cdef int k, st = RING_OK, rounds = 0
    cdef bint wrote = False
    cdef double deadline, now
    blocked[0] = BLOCK_NONE
    while True:
        if cb_load_acquire(&r.error):
            return RING_ERROR
        k = ring_collect(r, parts, partial, me, blocked)
        if k == 0:
            break
        st = ring_write_parts(r, parts, k, caller, max_wait, &finished, raised)
        wrote = True
        if finished:
            finished = 0
            ring_try_open(r)
            cb_event_notify(&r.done_ev)
        if st != RING_OK:
            return st
        rounds += 1
        if not caller:
            continue
        if cb_load_acquire(&r.written) >= target and (
                rounds > GROUP_ROUNDS or not cb_event_waiting(&r.done_ev)):
            break
    pos = cb_load_acquire(&r.written)
    if pos <= cb_load_acquire(&r.synced):
        return RING_OK
    if r.sink.raw == NULL and not r.sink.fsync:
        cb_store_release(&r.synced, pos)  # nothing to sync: taken is synced
        return RING_OK
    if sync == SYNC_NONE or (sync == SYNC_OS and not wrote):
        return RING_OK
    deadline = cb_monotonic() + max_wait if max_wait >= 0 else -1.0
    while True:
        st = r.sink.sync(&r.sink, sync == SYNC_RAW)
        if st != SINK_AGAIN:
            break
        # A buffered raw over a non-blocking fd could not flush yet.
        now = cb_monotonic()
        if deadline >= 0 and now >= deadline:
            return RING_WOULD_BLOCK
        sink_wait_writable(&r.sink, FLUSHER_SLICE if deadline < 0 else
                           min(deadline - now, FLUSHER_SLICE))
        if not caller and (cb_load_relaxed(&r.park) or cb_load_relaxed(&r.inline)):
            return RING_WOULD_BLOCK
    if st == SINK_ERROR:
        ring_set_sink_error(r)
        return RING_ERROR
    if st == SINK_INTR:
        if r.sink.exc != NULL:
            if not caller:
                ring_set_sink_error(r)
                return RING_ERROR
            raised[0] = r.sink.exc
            r.sink.exc = NULL
        return RING_INTR
    if sync == SYNC_RAW or r.sink.raw == NULL:
        cb_store_release(&r.synced, pos)
    return RING_OK


cdef int ring_flush_to(cb_ring *r, uint64_t target, double max_wait, bint partial,
                       int sync, PyObject **raised) noexcept nogil:
    cdef unsigned key, spins = 0
    cdef int st, blocked
    cdef double deadline = -1.0, now
    cdef bint sealed = False
    cdef cb_atomic_u64 *goal = &r.written if sync == SYNC_NONE else &r.synced
    cdef uint64_t want, before
    while True:
        if cb_load_acquire(goal) >= target:
            return RING_OK
        if cb_load_acquire(&r.error):
            return RING_ERROR
        key = cb_event_key(&r.done_ev)
        if (r.sink.fd < 0 and cb_load_acquire(&r.running) and not cb_load_acquire(&r.inline)
                and not cb_load_acquire(&r.park)):
            if sink_owned_by_me(&r.sink):
                return RING_OWNED
            # A Python sink: ask the flusher (want only grows) and wait.
            want = cb_load_acquire(&r.want)
            while want < target and not cb_cas_strong_acq_rel(&r.want, &want, target):
                pass
            cb_event_notify(&r.work_ev)
        elif cb_mutex_trylock(&r.dispatch_mu):
            before = cb_load_relaxed(&r.written) + cb_load_relaxed(&r.synced)
            st = ring_dispatch(r, target, True, partial, sync, max_wait, &blocked, raised)
            cb_mutex_unlock(&r.dispatch_mu)
            if cb_load_relaxed(&r.written) + cb_load_relaxed(&r.synced) != before:
                # Progress: wake who waits for it (only then, or our own
                # notify would end the wait below at once: a busy loop).
                cb_event_notify(&r.done_ev)
                spins = 0
            if st != RING_OK:
                return st
            if cb_load_acquire(goal) >= target:
                return RING_OK
            if blocked == BLOCK_OPEN and not sealed:
                # A writer is copying into the open buffer: seal it, so it
                # goes as soon as the copies are done (its last writer out
                # wakes us).
                ring_seal_current(r)
                sealed = True
                continue
        elif sink_owned_by_me(&r.sink):
            return RING_OWNED
        if not cb_backoff(&spins):
            continue
        now = cb_monotonic()
        if max_wait >= 0:
            if deadline < 0:
                deadline = now + max_wait
            if now >= deadline:
                return RING_WOULD_BLOCK
            cb_event_wait(&r.done_ev, key, min(deadline - now, 0.01))
        else:
            cb_event_wait(&r.done_ev, key, 0.01)


cdef int ring_wait_flushed(cb_ring *r, uint64_t target, double max_wait) noexcept nogil:
    cdef PyObject *raised = NULL
    cdef unsigned key, spins = 0
    cdef int st, blocked
    cdef double deadline = -1.0, now
    cdef uint64_t before
    while cb_load_acquire(&r.flushed) < target:
        if cb_load_acquire(&r.error):
            return RING_ERROR
        key = cb_event_key(&r.done_ev)
        if cb_mutex_trylock(&r.dispatch_mu):
            before = cb_load_relaxed(&r.flushed)
            st = ring_dispatch(r, 0, True, False, SYNC_OS, max_wait, &blocked, &raised)
            cb_mutex_unlock(&r.dispatch_mu)
            if cb_load_relaxed(&r.flushed) != before:
                cb_event_notify(&r.done_ev)
            if raised != NULL:
                with gil:
                    Py_XDECREF(raised)  # a C caller has nobody to raise it to
                raised = NULL
            if st == RING_ERROR:
                return st
            if cb_load_acquire(&r.flushed) >= target:
                break
        elif sink_owned_by_me(&r.sink):
            return RING_OWNED
        if not cb_backoff(&spins):
            continue
        now = cb_monotonic()
        if max_wait >= 0:
            if deadline < 0:
                deadline = now + max_wait
            if now >= deadline:
                return RING_WOULD_BLOCK
            cb_event_wait(&r.done_ev, key, min(deadline - now, 0.01))
        else:
            cb_event_wait(&r.done_ev, key, 0.01)
    return RING_OK


cdef bint ring_lock_dispatch(cb_ring *r, double max_wait) noexcept nogil:
    """Take dispatch_mu within max_wait seconds (its holder may be stuck in
    a stalled sink, or be a thread the interpreter stopped at exit)."""
    cdef double deadline = cb_monotonic() + max_wait
    cdef unsigned spins = 0
    while not cb_mutex_trylock(&r.dispatch_mu):
        if cb_monotonic() >= deadline:
            return False
        cb_backoff_wait(&spins)
    return True


cdef int ring_drain_locked(cb_ring *r, uint64_t target, double max_wait,
                           PyObject **raised) noexcept nogil:
    """With dispatch_mu held: hand everything before ``target`` over (and
    sync it), retrying interruptions, within max_wait seconds."""
    cdef double deadline = cb_monotonic() + max_wait
    cdef int st = RING_OK, blocked
    cdef unsigned spins = 0
    while cb_load_acquire(&r.synced) < target and not cb_load_acquire(&r.error):
        st = ring_dispatch(r, target, True, True, SYNC_RAW, SIGNAL_CHECK, &blocked, raised)
        if raised[0] != NULL:
            return RING_INTR
        if st == RING_ERROR or blocked == BLOCK_OWNED or cb_monotonic() >= deadline:
            break  # (an owned tail's writer waits for this very lock)
        if st == RING_OK and blocked != BLOCK_NONE:
            if blocked == BLOCK_OPEN:
                ring_seal_current(r)
            cb_backoff_wait(&spins)  # writers are finishing their copies
    return st


cdef bint ring_owned_by_me(cb_ring *r) noexcept nogil:
    return sink_owned_by_me(&r.sink)


cdef void block_signals(sigset_t *blocked, sigset_t *old) noexcept nogil:
    """Block every signal but the faults in the calling thread: signals go to
    threads that can run Python handlers, so a caller blocked in the sink is
    the one the kernel interrupts."""
    sigfillset(blocked)
    sigdelset(blocked, SIGSEGV)  # faults stay deliverable
    sigdelset(blocked, SIGBUS)
    sigdelset(blocked, SIGFPE)
    sigdelset(blocked, SIGILL)
    sigdelset(blocked, SIGABRT)
    pthread_sigmask(SIG_BLOCK, blocked, old)


cdef void flusher_loop(cb_ring *r) noexcept nogil:
    """The background flusher: dispatch full buffers, hand the open buffer
    over every ``interval``, sleep on work_ev otherwise (no polling); exit
    when parked, or stopped and drained (or stopped with an error set)."""
    cdef unsigned key
    cdef double now, timeout
    cdef double next_tick = cb_monotonic() + r.interval if r.interval > 0 else -1.0
    cdef int blocked
    cdef bint tick, got, want
    cdef PyObject *raised = NULL
    cdef sigset_t all_signals
    cdef uint64_t done_before
    cdef double last_work = 0.0, gap = 1.0
    block_signals(&all_signals, NULL)  # (already blocked from birth: see _start_flusher)
    cb_store_relaxed(&r.awake, 1)
    while True:
        key = cb_event_key(&r.work_ev)
        if cb_load_acquire(&r.park) or cb_load_acquire(&r.inline):
            return
        tick = False
        if next_tick >= 0:
            now = cb_monotonic()
            if now >= next_tick:
                tick = True
                next_tick = now + r.interval
        if tick:
            lanes_move(r, True, 0)  # never waits for room: this thread makes it
        # A flush() waiting on a Python sink wants its bytes written and synced.
        want = cb_load_acquire(&r.want) > cb_load_acquire(&r.synced)
        got = cb_mutex_trylock(&r.dispatch_mu)
        if got:
            done_before = cb_load_acquire(&r.flushed)
            ring_dispatch(r, 0, False, tick or want, SYNC_RAW if want else SYNC_OS,
                          -1.0, &blocked, &raised)
            cb_mutex_unlock(&r.dispatch_mu)
            cb_event_notify(&r.done_ev)
            if cb_load_acquire(&r.flushed) != done_before:
                now = cb_monotonic()
                gap = now - last_work
                last_work = now
            if (tick or want) and blocked == BLOCK_OPEN and not cb_load_acquire(&r.error):
                ring_seal_current(r)
                continue
        if cb_load_acquire(&r.stop):
            if cb_load_acquire(&r.error) or cb_load_acquire(&r.flushed) >= cb_load_acquire(&r.current):
                return
        timeout = 1.0
        if not got:
            timeout = 0.005  # somebody else dispatches; look again soon
        if next_tick >= 0:
            now = cb_monotonic()
            if next_tick - now < timeout:
                timeout = next_tick - now if next_tick > now else 0.0
        if timeout > 0 and got and gap < FLUSHER_SPIN and flusher_spin(r, key, last_work + 2 * gap):
            continue
        if timeout > 0:
            cb_store_relaxed(&r.awake, 0)
            cb_event_wait(&r.work_ev, key, timeout)
            cb_store_relaxed(&r.awake, 1)


cdef bint flusher_spin(cb_ring *r, unsigned key, double until) noexcept nogil:
    """Spin until work_ev moves past ``key`` (True) or ``until`` (False)."""
    cdef unsigned i = 0
    while cb_event_key(&r.work_ev) == key:
        cb_cpu_relax()
        i += 1
        if i % 16 == 0 and cb_monotonic() >= until:
            return False
    return True


# ---------------------------------------------------------------- lifetime

cdef cb_ring *ring_new(uint64_t count, uint64_t size, uint64_t start) except NULL:
    cdef cb_ring *r = <cb_ring *>calloc(1, sizeof(cb_ring))
    cdef void *mem = NULL
    cdef uint64_t i
    if r == NULL:
        raise MemoryError()
    r.slots = <cb_slot *>calloc(count, sizeof(cb_slot))
    if r.slots == NULL or posix_memalign(&mem, 4096, count * size) != 0:
        free(r.slots)
        free(r)
        raise MemoryError(f"cannot allocate {count} buffers of {size} bytes")
    r.memory = <char *>mem
    r.count = count
    r.size = size
    for i in range(count):
        r.slots[i].data = r.memory + i * size
    if (cb_event_init(&r.space_ev) or cb_event_init(&r.work_ev) or cb_event_init(&r.done_ev)
            or cb_mutex_init(&r.dispatch_mu) or cb_mutex_init(&r.exc_mu)):
        free(r.memory)
        free(r.slots)
        free(r)
        raise OSError("cannot initialise the ring's wait primitives")
    cb_atomic_init(&r.refs, 1)
    sink_init_fd(&r.sink, -1, False)
    ring_reset(r, start)
    return r


cdef int ring_set_lanes(cb_ring *r, uint64_t nlanes, uint64_t lane_size) except -1:
    """Give the ring ``nlanes`` lanes of ``lane_size`` bytes (before use)."""
    cdef void *mem = NULL
    cdef void *data = NULL
    cdef uint64_t i
    if nlanes == 0:
        return 0
    if (posix_memalign(&mem, 64, nlanes * sizeof(cb_lane)) != 0
            or posix_memalign(&data, 4096, nlanes * lane_size) != 0):
        free(mem)
        raise MemoryError(f"cannot allocate {nlanes} lanes of {lane_size} bytes")
    r.lanes = <cb_lane *>mem
    for i in range(nlanes):
        cb_atomic_init(&r.lanes[i].state, 0)
        cb_atomic_init(&r.lanes[i].writes, 0)
        r.lanes[i].data = <char *>data + i * lane_size
    r.lane_size = lane_size
    r.nlanes = nlanes
    return 0


cdef void ring_reset(cb_ring *r, uint64_t base) noexcept nogil:
    """Every slot closed, generation `count` about to open at stream
    position ``base``.  Used at creation and in a forked child."""
    cdef uint64_t i, pending = 0
    # Writes the parent had counted but not yet totalled stay counted: the
    # child's statistics go on from the parent's at the fork.
    for i in range(r.count):
        pending += slot_count(&r.slots[i])
    for i in range(r.nlanes):
        pending += state_count(cb_load_relaxed(&r.lanes[i].state))
    cb_fetch_add_relaxed(&r.st_writes, pending)
    for i in range(r.count):
        cb_atomic_init(&r.slots[i].state, CB_CLOSED_SLOT)
        cb_atomic_init(&r.slots[i].gen, i)
        cb_atomic_init(&r.slots[i].writes, 0)
        cb_atomic_init(&r.slots[i].owner, 0)
        r.slots[i].length = 0
        r.slots[i].tail = NULL
        r.slots[i].tail_len = 0
        if r.slots[i].tail_copy != NULL:
            free(r.slots[i].tail_copy)
            r.slots[i].tail_copy = NULL
        r.slots[i].done = 0
    cb_atomic_init(&r.current, r.count)
    cb_atomic_init(&r.flushed, r.count)
    cb_atomic_init(&r.written, base)
    cb_atomic_init(&r.synced, base)
    cb_atomic_init(&r.want, base)
    cb_atomic_init(&r.open_base, base)
    cb_atomic_init(&r.error, 0)
    cb_atomic_init(&r.closing, 0)
    cb_atomic_init(&r.stop, 0)
    cb_atomic_init(&r.park, 0)
    cb_atomic_init(&r.running, 0)
    cb_atomic_init(&r.awake, 0)
    cb_atomic_init(&r.inline, 0)
    cb_atomic_init(&r.tell_floor, base)
    for i in range(r.nlanes):  # (a forked child: the lanes' bytes are the parent's)
        cb_atomic_init(&r.lanes[i].state, 0)
    ring_try_open(r)


cdef void ring_decref(cb_ring *r) noexcept:
    """Drop one owner; the last one frees the ring (needs the GIL for the
    sink and the sticky exception)."""
    cdef uint64_t i
    if cb_fetch_sub_release(&r.refs, 1) != 1:
        return
    cb_load_acquire(&r.refs)
    for i in range(r.count):
        free(r.slots[i].tail_copy)
    if r.nlanes:
        free(r.lanes[0].data)
        free(r.lanes)
    sink_clear(&r.sink)
    Py_XDECREF(r.exc)
    cb_event_destroy(&r.space_ev)
    cb_event_destroy(&r.work_ev)
    cb_event_destroy(&r.done_ev)
    cb_mutex_destroy(&r.dispatch_mu)
    cb_mutex_destroy(&r.exc_mu)
    free(r.memory)
    free(r.slots)
    free(r)


cdef class _RingHandle:
    """The flusher thread's own reference to a ring."""
    cdef cb_ring *ring

    def __dealloc__(self):
        if self.ring != NULL:
            ring_decref(self.ring)
            self.ring = NULL


def _flusher_main(_RingHandle handle):
    cdef cb_ring *r = handle.ring
    try:
        with nogil:
            flusher_loop(r)
    finally:
        cb_store_relaxed(&r.awake, 0)
        cb_store_release(&r.running, 0)
        cb_event_notify(&r.done_ev)


# ---------------------------------------------------------------- process life
# One registry of live rings for exit, fork and multiprocessing workers,
# iterated over a snapshot taken under its lock.

_registry_lock = threading.RLock()
_registry = {}  # id(ring) -> weakref to it


def _register(ring):
    with _registry_lock:
        _registry[id(ring)] = weakref.ref(ring)
    _ensure_mp_finalizer()


def _unregister(ring):
    with _registry_lock:
        ref = _registry.get(id(ring))
        if ref is not None and ref() is ring:
            del _registry[id(ring)]


def _live_rings():
    """A snapshot of the rings alive now (dead entries are dropped)."""
    with _registry_lock:
        while True:
            try:
                items = list(_registry.items())
                break
            except RuntimeError:
                continue  # a finalizer on this thread changed it mid-copy
        out = []
        for key, ref in items:
            ring = ref()
            if ring is None:
                _registry.pop(key, None)
            else:
                out.append(ring)
    return out


def _flush_live_rings():
    for ring in _live_rings():
        try:
            ring._exit_flush()
        except Exception:
            pass  # an error is sticky on its ring; the others are flushed all the same


def _at_exit():
    _flush_live_rings()
    for ring in _live_rings():
        try:
            ring._stop_python_flusher()
        except Exception:
            pass


def _before_fork():
    _ensure_mp_after_fork()
    for ring in _live_rings():
        try:
            ring._before_fork()
        except Exception:
            pass


def _after_fork_in_parent():
    for ring in _live_rings():
        try:
            ring._after_fork_in_parent()
        except Exception:
            pass


def _after_fork_in_child():
    global _registry_lock
    _registry_lock = threading.RLock()  # another thread may have held it
    for ring in _live_rings():
        ring._after_fork_in_child()


# multiprocessing workers end in os._exit() after running multiprocessing's
# own finalizers, never atexit: flush there.  Forked workers clear that
# registry when they start and then run their after-fork callbacks, so the
# finalizer is registered again from one.
class _Token:
    pass


_MP_TOKEN = _Token()
_mp_finalizer_pid = 0
_mp_checked_pid = 0
_mp_after_fork_set = False


def _ensure_mp_finalizer():
    global _mp_finalizer_pid, _mp_checked_pid
    # Once per process (a forked worker is a new pid; its after-fork callback
    # comes here), not at every writer: sys.modules is locked by the exit
    # that empties it, and on free-threaded 3.13 a daemon thread handed that
    # lock while it waits to re-attach never gives it back (the exit hangs).
    pid = os.getpid()
    if _mp_checked_pid == pid or sys.is_finalizing():
        return
    _mp_checked_pid = pid
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    _mp_finalizer_pid = os.getpid()
    util.Finalize(None, _flush_live_rings, exitpriority=-100)


def _mp_after_fork(_token):
    global _mp_checked_pid
    _mp_checked_pid = 0  # multiprocessing has just emptied its finalizers
    _ensure_mp_finalizer()


def _ensure_mp_after_fork():
    global _mp_after_fork_set
    util = sys.modules.get("multiprocessing.util")
    if util is None or _mp_after_fork_set:
        return
    _mp_after_fork_set = True
    util.register_after_fork(_MP_TOKEN, _mp_after_fork)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
# Runs after non-daemon threads were joined, while the flushers still run.
atexit.register(_at_exit)


# ---------------------------------------------------------------- Python API

def _check_geometry(buffer_count, buffer_size):
    for name, value in (("buffer_count", buffer_count), ("buffer_size", buffer_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if buffer_count < 1:
        raise ValueError(f"buffer_count must be at least 1, got {buffer_count}")
    if buffer_size < 4096 or buffer_size % 4096 or buffer_size > CB_OFFSET_MAX:
        raise ValueError(
            f"buffer_size must be a positive multiple of 4096 below 2**32, got {buffer_size}")


def _fresh(exc):
    """A new exception like ``exc`` (same type, args, errno), so raising the
    sticky error again never grows one traceback; ``exc`` is its cause."""
    try:
        new = copy.copy(exc)
    except Exception:
        return exc.with_traceback(None)
    if new is exc or type(new) is not type(exc):
        return exc.with_traceback(None)
    new.__traceback__ = None
    new.__context__ = None
    new.__cause__ = exc
    return new


cdef class BufferRing:
    """BufferRing(buffer_count, buffer_size, sink, *, auto_flush=True, auto_rotate=True)

    A fixed ring of 4096-aligned buffers that many threads append to without a
    lock.  A full buffer is sealed, the ring rotates, and the sealed buffer is
    handed to ``sink`` (in seal order, one call at a time) by a background
    flusher thread; ``flush()`` hands them over on the calling thread.

    :param int buffer_count: buffers in the ring (>= 1).
    :param int buffer_size: bytes per buffer, a positive multiple of 4096.
    :param sink: an int file descriptor, or a callable ``sink(view)`` given a
        read-only memoryview valid only during the call.  It may return the
        number of bytes it took (the rest is offered again) or None (all).
    :param bool auto_flush: dispatch sealed buffers in the background;
        if False they wait for :meth:`flush`.
    :param bool auto_rotate: seal and move on when a record does not fit;
        if False such an append raises :class:`BufferFull` until
        :meth:`rotate`.

    ::

        chunks = []
        ring = cbuffer.BufferRing(4, 4096, lambda view: chunks.append(bytes(view)))
        position = ring.append(b"record")
        ring.flush()
    """

    def __cinit__(self, *args, **kwargs):
        self.ring = NULL
        self._flusher = None
        self._signal_exc = None
        self._fork_locked = False
        self._close_state = 0
        self._close_owner = 0
        self._close_deferred = False

    def __init__(self, buffer_count, buffer_size, sink, *, auto_flush=True, auto_rotate=True):
        _check_geometry(buffer_count, buffer_size)
        if isinstance(sink, int) and not isinstance(sink, bool):
            os.fstat(sink)  # EBADF now rather than on the first flush
            self._setup(buffer_count, buffer_size, auto_flush, auto_rotate, 0, 0.0)
            sink_init_fd(&self.ring.sink, sink, False)
        elif callable(sink):
            self._setup(buffer_count, buffer_size, auto_flush, auto_rotate, 0, 0.0)
            sink_init_python(&self.ring.sink, sink, None, False, -1, False)
        else:
            raise TypeError(
                f"sink must be an int file descriptor or a callable, not {type(sink).__name__}")
        _register(self)
        if auto_flush:
            self._start_flusher()

    cdef _setup(self, uint64_t count, uint64_t size, bint auto_flush, bint auto_rotate,
                uint64_t start, double interval):
        if self.ring != NULL:
            raise RuntimeError("the ring is already initialised")
        cdef cb_ring *r = ring_new(count, size, start)
        r.auto_flush = auto_flush
        r.auto_rotate = auto_rotate
        r.interval = interval
        self.ring = r

    cdef _start_flusher(self):
        """Start the flusher unless one runs (it starts lazily, and again after
        a fork).  Exactly one: ``running`` goes from 0 to 1 in one CAS, and
        only the winner starts a thread.  No lock is held while Python code
        runs, since a signal handler may write from inside it."""
        cdef cb_ring *r = self.ring
        cdef uint64_t idle = 0
        cdef _RingHandle handle
        cdef sigset_t blocked, old
        if (not r.auto_flush or cb_load_relaxed(&r.stop)
                or cb_load_relaxed(&r.inline) or cb_load_relaxed(&r.park)):
            return
        if not cb_cas_seq_cst(&r.running, &idle, 1):
            return
        handle = _RingHandle.__new__(_RingHandle)
        cb_fetch_add_relaxed(&r.refs, 1)
        handle.ring = r
        thread = threading.Thread(target=_flusher_main, args=(handle,),
                                  name="cbuffer-flusher", daemon=True)
        # The thread inherits this mask: no signal can reach it before it
        # would block them itself.  One arriving meanwhile waits for us.
        block_signals(&blocked, &old)
        try:
            thread.start()
        except BaseException:
            cb_store_release(&r.running, 0)
            raise
        finally:
            pthread_sigmask(SIG_SETMASK, &old, NULL)
        with self._lock:
            self._flusher = thread

    cdef _stop_flusher(self, double timeout):
        """Park the flusher and wait for it to leave (at most ``timeout``
        seconds; < 0: as long as it takes, running signal handlers)."""
        cdef cb_ring *r = self.ring
        with self._lock:
            thread = self._flusher
        cb_store_release(&r.park, 1)
        cb_event_notify(&r.work_ev)
        if thread is None or thread is threading.current_thread():
            return
        give_up = time.monotonic() + timeout if timeout >= 0 else None
        while thread.is_alive():
            thread.join(SIGNAL_CHECK)
            if give_up is not None and time.monotonic() >= give_up:
                return
            if give_up is None:
                self._signals()
        # join() returns when the Python thread is done; the OS thread still
        # has a few instructions to run, and fork() counts OS threads.
        task = f"/proc/self/task/{thread.native_id}"
        for _ in range(400):
            if not os.path.exists(task):
                break
            time.sleep(0.00025)

    def __dealloc__(self):
        cdef cb_ring *r = self.ring
        cdef PyObject *raised = NULL
        if r == NULL:
            return
        # Dropped without close(): hand what is buffered to the sink.  The
        # flusher drains before it exits; without one, do it here.
        ring_seal_current(r)
        if r.auto_flush and not cb_load_acquire(&r.running) and not cb_load_acquire(&r.error):
            with nogil:
                ring_flush_to(r, ring_position(r), EXIT_WAIT_S, False, SYNC_NONE, &raised)
            Py_XDECREF(raised)
        cb_store_release(&r.stop, 1)
        cb_event_notify(&r.work_ev)
        ring_decref(r)
        self.ring = NULL

    # -- appending

    cdef int _put_small(self, const char *src, Py_ssize_t n, uint64_t *pos,
                        bint wait) except -1:
        """Copy n <= buffer_size bytes in; returns the RingStatus.  With
        ``wait`` a full ring is waited out (raising only for a signal)."""
        cdef cb_ring *r = self.ring
        cdef char *dst
        cdef cb_slot *slot
        cdef int st = reserve(r, n, pos, &dst, &slot, 0, True)
        if st == RING_OK:
            if n >= NOGIL_COPY:
                with nogil:
                    memcpy(dst, src, n)
                    ring_commit(r, slot)
            else:
                memcpy(dst, src, n)
                ring_commit(r, slot)
            return st
        if not wait:
            return st
        if (st == RING_WOULD_BLOCK and r.sink.fd >= 0 and cb_load_relaxed(&r.running)
                and not sink_prompt(&r.sink)):
            # (A prompt sink: better hand buffers over below, off the interpreter.)
            st = ring_append(r, src, n, pos, GIL_HELD_WAIT)
        while st == RING_WOULD_BLOCK:
            if ring_owned_by_me(r):
                raise RuntimeError("reentrant write: the ring is full and this thread is inside "
                                   "the sink's own write(), so it cannot wait for room")
            if not cb_load_relaxed(&r.running):
                self._start_flusher()
            # Wait without the GIL (a Python sink needs it) and run signal
            # handlers now and then.  Reserve, copy and leave in one nogil
            # block: a writer counted in a buffer must never wait for the
            # GIL, or that buffer cannot be dispatched.  With no flusher (at
            # exit) the waiter dispatches.
            with nogil:
                if r.auto_flush and (cb_load_acquire(&r.inline)
                                     or not cb_load_acquire(&r.running)):
                    ring_wait_flushed(r, cb_load_acquire(&r.flushed) + 1, SIGNAL_CHECK)
                st = ring_append(r, src, n, pos, SIGNAL_CHECK)
            if st == RING_WOULD_BLOCK:
                self._signals()
        return st

    cdef int _raise_status(self, int st, Py_ssize_t n) except -1:
        """Raise what a refused append means to a Python caller."""
        if st == RING_TOO_BIG:
            raise ValueError(f"a record of {n} bytes does not fit in a buffer of {self.ring.size} bytes")
        if st == RING_NO_ROOM:
            raise BufferFull(f"{n} bytes do not fit in the current buffer; rotate() first")
        if st == RING_ERROR:
            self._raise_error()
            return 1  # cleared meanwhile: nothing was taken, try again
        if st == RING_SHUT:
            raise ValueError("write to closed file")
        raise RuntimeError(f"unexpected ring status {st}")

    def append(self, data):
        """append(data) -> int

        Copy ``data`` (any contiguous bytes-like object, at most
        ``buffer_size`` bytes) into the ring and return its stream position:
        the number of bytes appended to the ring before it.  Waits, without
        the GIL, while every buffer is sealed and waiting for the sink.
        """
        cdef Py_buffer view
        cdef uint64_t pos = 0
        self._check_open()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len == 0:
                return ring_position(self.ring)
            if not cb_load_relaxed(&self.ring.running) and self.ring.auto_flush:
                self._start_flusher()
            st = self._put_small(<const char *>view.buf, view.len, &pos, True)
            while st != RING_OK and self._raise_status(st, view.len):
                st = self._put_small(<const char *>view.buf, view.len, &pos, True)
        finally:
            PyBuffer_Release(&view)
        return pos

    cdef _check_open(self):
        if self.ring == NULL:
            raise ValueError("BufferRing is not initialised")

    # -- flushing

    cdef int _flush_to(self, uint64_t target, bint partial, int sync) except -1:
        """Dispatch on this thread until the sink has everything before
        ``target``; raises the sticky error, or what a signal handler raised."""
        cdef cb_ring *r = self.ring
        cdef PyObject *raised = NULL
        cdef int st
        try:
            while True:
                with nogil:
                    st = ring_flush_to(r, target, SIGNAL_CHECK, partial, sync, &raised)
                if st == RING_OK or st == RING_OWNED:
                    # OWNED: a signal handler inside this thread's own sink
                    # call; what it wrote goes once that call returns.
                    return 0
                if st == RING_ERROR:
                    self._raise_error()
                    continue  # cleared meanwhile: go on flushing
                if raised != NULL:
                    return self._raise_raised(raised)
                self._signals()
        finally:
            if self._close_deferred and not ring_owned_by_me(r):
                self._finish_deferred_close()

    cdef int _signals(self) except -1:
        """Run signal handlers; what one raises is remembered, so close()
        can tell an interruption (it stops, resumable) from a failed flush
        (it goes on to close raw)."""
        try:
            PyErr_CheckSignals()
        except BaseException as exc:
            self._signal_exc = exc
            raise
        return 0

    def _interrupted_by(self, exc):
        return exc is self._signal_exc

    cdef int _raise_raised(self, PyObject *raised) except -1:
        exc = <object>raised
        Py_XDECREF(raised)
        self._signal_exc = exc
        raise exc

    def _finish_deferred_close(self):
        with self._lock:
            if not self._close_deferred or self._close_owner:
                return
            self._close_deferred = False
            self._close_owner = PyThread_get_thread_ident()
        try:
            self._close_steps(True)
        finally:
            with self._lock:
                self._close_owner = 0

    def flush(self):
        """Seal the current buffer if it holds data, wait for its writers, and
        return once every sealed buffer has been handed to the sink (this
        thread hands them over itself when nobody else is doing it)."""
        self._check_open()
        cdef cb_ring *r = self.ring
        cdef uint64_t target = ring_position(r)
        if cb_load_acquire(&r.error):
            self._raise_error()
        with nogil:
            ring_seal_current(r)
        self._flush_to(target, False, SYNC_OS)

    def rotate(self):
        """Seal the current buffer (if it holds data) and move on to the next;
        with ``auto_flush`` the sealed buffer then goes to the sink."""
        self._check_open()
        with nogil:
            ring_seal_current(self.ring)

    def _exit_flush(self, double timeout=EXIT_WAIT):
        """At exit, before fork() and at the end of a multiprocessing worker:
        what is accepted goes to the sink, waiting at most ``timeout``
        seconds for it (auto_flush=False rings wait for flush())."""
        cdef cb_ring *r = self.ring
        cdef PyObject *raised = NULL
        cdef int st
        if r == NULL:
            return
        if self._close_deferred:
            self._finish_deferred_close()
            return
        if not r.auto_flush or self._close_state == 2 or cb_load_acquire(&r.error):
            return
        give_up = time.monotonic() + timeout
        if not self._move_lanes(True, timeout):
            return
        cdef uint64_t target = ring_position(r)
        while True:
            with nogil:
                st = ring_flush_to(r, target, SIGNAL_CHECK, True, SYNC_RAW, &raised)
            if raised != NULL:
                self._raise_raised(raised)
            if st != RING_WOULD_BLOCK and st != RING_INTR:
                return
            if time.monotonic() >= give_up:
                return
            self._signals()

    cdef int _move_lanes(self, bint all, double timeout) except -1:
        """Move the lanes' bytes into the ring (every lane, or this thread's),
        running signal handlers while it waits for room; ``timeout`` >= 0
        bounds the wait (then 0 is returned if it ran out), else it waits as
        long as it takes.  Raises the sticky error if one stops it."""
        cdef cb_ring *r = self.ring
        cdef int st
        if r.nlanes == 0:
            return 1
        give_up = time.monotonic() + timeout if timeout >= 0 else None
        while True:
            with nogil:
                st = lanes_move(r, all, SIGNAL_CHECK)
            if st == RING_OK or st == RING_SHUT:
                return 1
            if st == RING_ERROR:
                self._raise_error()
                continue  # cleared meanwhile
            if give_up is not None and time.monotonic() >= give_up:
                return 0
            self._signals()

    def _stop_python_flusher(self):
        """At exit: a flusher calling a Python sink would need the GIL while
        the interpreter finalizes, so stop it; writes made from here on are
        dispatched by the threads that wait for them."""
        cdef cb_ring *r = self.ring
        if r == NULL or r.sink.fd >= 0:
            return
        cb_store_release(&r.inline, 1)
        self._stop_flusher(EXIT_WAIT_S)

    def _before_fork(self):
        """No flusher thread may be alive across fork(), and no thread may be
        inside the sink (a Python raw's own buffer would reach the child
        half-written): park the flusher, take the dispatch lock, hand over
        what is accepted, and hold the lock through the fork.  Every wait is
        bounded, so a stalled sink delays fork() but cannot hang it."""
        cdef cb_ring *r = self.ring
        cdef PyObject *raised = NULL
        cdef double wait = EXIT_WAIT_S
        cdef uint64_t target
        cdef bint locked
        if r == NULL or self._close_state == 2:
            return
        if r.auto_flush and not cb_load_acquire(&r.error):
            try:
                self._move_lanes(True, EXIT_WAIT_S)  # while the flusher still makes room
            except Exception:
                pass  # sticky on the ring
        self._stop_flusher(EXIT_WAIT_S)
        with nogil:
            locked = ring_lock_dispatch(r, wait)
        if not locked:
            return
        self._fork_locked = True
        if r.auto_flush and not cb_load_acquire(&r.error):
            target = ring_position(r)
            with nogil:
                ring_drain_locked(r, target, wait, &raised)
            Py_XDECREF(raised)

    def _after_fork_in_parent(self):
        cdef cb_ring *r = self.ring
        if r == NULL:
            return
        if self._fork_locked:
            self._fork_locked = False
            cb_mutex_unlock(&r.dispatch_mu)
        cb_store_release(&r.park, 0)
        # A flusher that never left (a stalled sink) just goes on; else one
        # starts with the next write, or now if full buffers wait for it.
        if cb_load_acquire(&r.flushed) < cb_load_acquire(&r.current):
            self._start_flusher()

    def _after_fork_in_child(self):
        """In a forked child: an empty ring (the parent owns what was
        pending), no flusher until one is needed."""
        cdef cb_ring *r = self.ring
        if r == NULL:
            return
        cb_event_reinit(&r.space_ev)
        cb_event_reinit(&r.work_ev)
        cb_event_reinit(&r.done_ev)
        cb_mutex_init(&r.dispatch_mu)
        cb_mutex_init(&r.exc_mu)
        closing = cb_load_relaxed(&r.closing)
        # The sticky error belongs to the parent's queued bytes, not the child's.
        Py_XDECREF(r.exc)
        r.exc = NULL
        ring_reset(r, cb_load_relaxed(&r.written))
        cb_store_relaxed(&r.sink.owner, 0)
        self._flusher = None
        self._fork_locked = False
        self._close_owner = 0
        if closing:
            with nogil:
                ring_shut(r)
            cb_store_release(&r.stop, 1)

    # -- errors

    cdef int _raise_error(self) except -1:
        cdef cb_ring *r = self.ring
        cdef uint64_t err
        cdef object exc = None
        cb_mutex_lock(&r.exc_mu)
        err = cb_load_acquire(&r.error)
        if err == CB_PY_ERROR and r.exc != NULL:
            exc = <object>r.exc
        cb_mutex_unlock(&r.exc_mu)
        if exc is not None:
            raise _fresh(exc)
        if err:
            raise OSError(<int>err, os.strerror(<int>err))
        return 0

    def clear_error(self):
        """Forget the sticky error; the flusher (or the next flush()) then
        hands the queued bytes to the sink again, in order."""
        cdef cb_ring *r = self.ring
        cdef PyObject *old
        self._check_open()
        cb_mutex_lock(&r.exc_mu)
        old = r.exc
        r.exc = NULL
        cb_store_release(&r.error, 0)
        cb_mutex_unlock(&r.exc_mu)
        Py_XDECREF(old)
        cb_event_notify(&r.work_ev)
        cb_event_notify(&r.space_ev)
        cb_event_notify(&r.done_ev)

    @property
    def error(self):
        """The sticky error (an exception instance) or None."""
        try:
            self._raise_error()
        except BaseException as exc:
            return exc
        return None

    # -- closing

    def _begin_close(self):
        """Claim the close: True when this call must run it; False when it is
        done (after waiting for a close running on another thread) or when
        this thread is already inside close() (a signal handler)."""
        cdef unsigned long me = PyThread_get_thread_ident()
        while True:
            with self._lock:
                if self.ring == NULL or self._close_state == 2:
                    return False
                if self._close_state == 1 and self._close_owner == me:
                    return False
                if self._close_state == 0 or self._close_owner == 0:
                    self._close_state = 1
                    self._close_owner = me
                    return True
            # Another thread is closing: return only once it has finished.
            time.sleep(0.005)

    def _end_close(self):
        with self._lock:
            self._close_owner = 0

    def _close_ring(self):
        """Shut the ring, hand everything to the sink, stop the flusher.
        Returns (done, error): done is False when the rest must wait (this
        thread is inside the sink's own call); error tells a sticky error
        stopped the drain."""
        cdef cb_ring *r = self.ring
        cdef PyObject *raised = NULL
        cdef int st
        if r.nlanes:
            with nogil:
                lanes_shut(r)
            try:
                self._move_lanes(True, EXIT_WAIT_S if sys.is_finalizing() else -1.0)
            except Exception:
                pass  # a sticky error: raised below, after the ring is shut
        with nogil:
            ring_shut(r)
        if ring_owned_by_me(r):
            with self._lock:
                self._close_deferred = True
            return False, False
        # Closed by a finalizer at exit: daemon threads may have been stopped
        # holding buffers, so wait a bounded time.
        give_up = time.monotonic() + EXIT_WAIT_S if sys.is_finalizing() else None
        cdef uint64_t target = ring_position(r)
        error = False
        while True:
            with nogil:
                st = ring_flush_to(r, target, SIGNAL_CHECK, False, SYNC_NONE, &raised)
            if raised != NULL:
                self._raise_raised(raised)
            if st == RING_OK:
                break
            if st == RING_ERROR:
                error = True
                break
            if st == RING_OWNED:
                with self._lock:
                    self._close_deferred = True
                return False, False
            if give_up is not None and time.monotonic() > give_up:
                break
            self._signals()
        cb_store_release(&r.stop, 1)
        cb_event_notify(&r.work_ev)
        self._stop_flusher(EXIT_WAIT_S if give_up is not None else -1.0)
        _unregister(self)
        return True, error

    def _mark_closed(self):
        with self._lock:
            self._close_state = 2

    def _close_steps(self, bint raise_sticky):
        """The whole close after _begin_close(); False if deferred."""
        done, error = self._close_ring()
        if not done:
            return False
        self._mark_closed()
        if error and raise_sticky:
            self._raise_error()
        return True

    def close(self):
        """Flush, stop the flusher and refuse further appends.  Idempotent;
        raises the sticky error if one is set (the ring is closed anyway)."""
        if not self._begin_close():
            return
        try:
            self._close_steps(True)
        finally:
            self._end_close()

    @property
    def closed(self):
        return self.ring == NULL or bool(cb_load_relaxed(&self.ring.closing))

    # -- inspection

    @property
    def buffer_count(self):
        return self.ring.count

    @property
    def buffer_size(self):
        return self.ring.size

    @property
    def auto_flush(self):
        return bool(self.ring.auto_flush)

    @property
    def auto_rotate(self):
        return bool(self.ring.auto_rotate)

    @property
    def current_buffer(self):
        """A :class:`BufferState` snapshot (index, offset, writers, sealed,
        flushing) of the buffer currently accepting writes."""
        cdef uint64_t c = cb_load_acquire(&self.ring.current)
        cdef cb_slot *slot = slot_of(self.ring, c)
        cdef uint64_t s = cb_load_acquire(&slot.state)
        if cb_load_acquire(&slot.gen) != c:
            s = CB_CLOSED_SLOT  # still holding its previous generation
        return BufferState(<Py_ssize_t>(c % self.ring.count), state_offset(s), state_writers(s),
                           bool(s & CB_SEALED), bool(s & CB_FLUSHING))

    def buffer_addresses(self):
        """The address of every buffer (to check their alignment)."""
        return [<size_t>self.ring.slots[i].data for i in range(self.ring.count)]

    def tell(self):
        """Stream position of the next byte appended (after everything
        appended so far).  Never goes backwards."""
        return ring_tell(self.ring)

    def stats(self):
        """Counters: bytes_written (to the sink), writes, flushes (buffers
        handed over), syscalls, ring_full_waits, reservation_retries and
        utilization (useful bytes / bytes of buffer dispatched)."""
        cdef cb_ring *r = self.ring
        cdef uint64_t live = 0, i
        for i in range(r.count):
            live += slot_count(&r.slots[i])
        cap = cb_load_relaxed(&r.st_capacity)
        for i in range(r.nlanes):
            live += (cb_load_relaxed(&r.lanes[i].writes)
                     + state_count(cb_load_relaxed(&r.lanes[i].state)))
        return {
            "bytes_written": cb_load_relaxed(&r.sink.written),
            "writes": cb_load_relaxed(&r.st_writes) + live,
            "flushes": cb_load_relaxed(&r.st_flushes),
            "syscalls": cb_load_relaxed(&r.sink.syscalls),
            "file_switches": cb_load_relaxed(&r.sink.switches),
            "dropped": cb_load_relaxed(&r.st_dropped),
            "dropped_bytes": cb_load_relaxed(&r.st_dropped_bytes),
            "ring_full_waits": cb_load_relaxed(&r.st_full_waits),
            "reservation_retries": cb_load_relaxed(&r.st_retries),
            "utilization": (cb_load_relaxed(&r.st_used) / cap) if cap else 1.0,
        }

    def __repr__(self):
        if self.ring == NULL:
            return "<cbuffer.BufferRing (uninitialised)>"
        return (f"<cbuffer.BufferRing buffer_count={self.ring.count} "
                f"buffer_size={self.ring.size} closed={self.closed}>")
