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
  (``current - count``) has reached the sink.  Anybody may open it (the
  sealer, the dispatcher that freed it, a waiting writer); a CAS of
  ``slot.gen`` from ``current - count`` to ``current`` picks exactly one.  The
  opener writes ``slot.base`` and then releases the state word to 0, so a
  writer's acquiring CAS sees the base of the generation it reserved in.
* At most one slot is open, and it is the slot of ``current``: ``current``
  moves only when its own slot is sealed.
* Seal.  Whoever sets the sealed bit (fetch_or) is the one sealer of that
  generation: a writer that does not fit, ``flush()``/``rotate()``, the
  flusher's interval tick, a large write (which hangs itself on as the tail),
  or ``close()``.  The sealer fixes ``length``, publishes where the next
  generation starts (``open_base``) and then ``current = g + 1`` (release).
* Dispatch.  Generation ``g`` may be handed to the sink only when
  ``g < current`` (sealed and published) and its writer count is 0 (acquire).
  Dispatch happens under ``dispatch_mu``, oldest first, so the sink sees
  buffers in seal order, one thread at a time.  The last writer out of a sealed
  buffer wakes the dispatcher.  After the sink took the bytes the slot is
  closed and then ``flushed`` released to ``g + 1``.
* Ring full.  A writer that finds no open slot spins briefly, then sleeps on
  ``space_ev`` with the GIL released; it never takes space it cannot fill.
* Errors.  A failed sink write sets the sticky ``error``; nothing is retried
  until it is cleared; partly written buffers keep their ``done`` count, so a
  retry resumes where the sink stopped and nothing is written twice.
* Closing.  ``close()`` sets ``closing`` (seq_cst) and then makes sure the
  slot of ``current`` is sealed or marked SHUT.  An opener claims the slot
  (seq_cst CAS on ``gen``) *before* it reads ``closing`` (seq_cst), so either
  it sees ``closing`` and backs off, or ``close()`` sees the claim and either
  seals the opened slot or shuts it before the opener's CAS to 0 can succeed.
"""
import atexit
import os
import sys
import threading
import time
import weakref
from collections import namedtuple

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.stdlib cimport posix_memalign
from posix.uio cimport iovec, writev
from posix.unistd cimport fsync as c_fsync

from cbuffer._buffer import BufferFull
from cbuffer._state cimport (
    CB_BUSY, CB_FLUSHING, CB_NO_ROOM, CB_OFFSET_MAX, CB_OK, CB_SEALED,
    CB_SHUT, cb_atomic_init, cb_backoff, cb_cas_seq_cst, cb_cas_strong_acq_rel,
    cb_cpu_relax, cb_event_destroy, cb_event_init, cb_event_key,
    cb_event_notify, cb_event_reinit, cb_event_wait, cb_fetch_add_relaxed,
    cb_fetch_or_acq_rel, cb_fetch_sub_release, cb_load_acquire,
    cb_load_relaxed, cb_load_seq_cst, cb_monotonic, cb_mutex_destroy,
    cb_mutex_init, cb_mutex_lock, cb_mutex_trylock, cb_mutex_unlock, cb_store_relaxed,
    cb_store_release, cb_store_seq_cst, state_last_out, state_leave,
    state_offset, state_seal, state_try_reserve, state_writers,
)

cdef extern from "Python.h":
    int PyBUF_READ
    unsigned long PyThread_get_thread_ident() nogil

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLOUT

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned usec)

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

# error word value meaning "the Python sink raised; see ring.exc".
cdef uint64_t CB_PY_ERROR = (<uint64_t>1) << 40
# A closed slot: sealed so nobody reserves, FLUSHING so close() can tell it
# from a slot whose sealer is still publishing.
cdef uint64_t CB_CLOSED_SLOT = CB_SEALED | CB_FLUSHING
# Generations written by one writev.
cdef enum:
    MAX_BATCH = 64
# Copies at least this large are done with the GIL released.
cdef Py_ssize_t NOGIL_COPY = 64 * 1024
# How long a GIL-released wait lasts before the caller checks for signals.
cdef double SIGNAL_CHECK = 0.05
# With an fd sink (a flusher that never needs the GIL) a writer that finds the
# ring full first waits this long *holding* the GIL: under the GIL the other
# writers could only hit the same full ring, and handing the GIL round a crowd
# of woken writers is what makes a lock convoy.  Longer waits release it.
cdef double GIL_HELD_WAIT = 0.002
# After dispatching, the flusher polls this long for the next sealed buffer
# before it sleeps: a wake-up costs more than a buffer takes to fill.  It polls
# with pause, not sched_yield(): yielding let GIL hand-offs through ~5% faster
# on 2 CPUs but starved the flusher behind truly parallel writers (nogil or
# free-threaded), whose appends then fell to a sixth.
cdef double FLUSHER_POLL = 0.00005
# How long a close() run by a finalizer during interpreter exit waits.
EXIT_WAIT = 2.0

BufferState = namedtuple("BufferState", "index offset writers sealed flushing")
BufferState.__doc__ = "A snapshot of the buffer currently accepting writes."


# ---------------------------------------------------------------- protocol

cdef inline cb_slot *slot_of(cb_ring *r, uint64_t gen) noexcept nogil:
    return &r.slots[gen % r.count]


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
    slot.base = r.open_base
    slot.length = 0
    slot.tail = NULL
    slot.tail_len = 0
    slot.done = 0
    if not cb_cas_strong_acq_rel(&slot.state, &closed, 0):
        return False  # close() shut it first
    cb_event_notify(&r.space_ev)
    return True


cdef bint ring_seal(cb_ring *r, cb_slot *slot, const char *tail,
                    uint64_t tail_len) noexcept nogil:
    """Seal ``slot``; if this call is the sealer, attach ``tail`` and publish
    the next generation.  Returns True for the sealer."""
    cdef uint64_t prev = state_seal(&slot.state)
    if prev & CB_SEALED:
        return False
    ring_publish(r, slot, prev, tail, tail_len)
    return True


cdef void ring_publish(cb_ring *r, cb_slot *slot, uint64_t sealed_from,
                       const char *tail, uint64_t tail_len) noexcept nogil:
    # Only the sealer runs this, and nothing can dispatch or reopen the slot
    # before current moves past it, so the plain fields are ours to write.
    cdef uint64_t g = cb_load_relaxed(&slot.gen)
    slot.length = state_offset(sealed_from)
    slot.tail = tail
    slot.tail_len = tail_len
    r.open_base = slot.base + slot.length + tail_len
    cb_store_release(&r.current, g + 1)
    cb_event_notify(&r.work_ev)
    ring_try_open(r)


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
    cdef uint64_t c, off, retries = 0
    cdef cb_slot *slot
    cdef int st
    cdef unsigned spins = 0
    cdef double deadline = -1.0
    cdef bint counted = False
    if n > r.size:
        return RING_TOO_BIG
    if cb_load_relaxed(&r.error):
        return RING_ERROR
    while True:
        c = cb_load_acquire(&r.current)
        slot = slot_of(r, c)
        st = state_try_reserve(&slot.state, n, r.size, &off, &retries)
        if st == CB_OK:
            cb_fetch_add_relaxed(&slot.appends, 1)
            if retries:
                cb_fetch_add_relaxed(&r.st_retries, retries)
            pos[0] = slot.base + off
            dst[0] = slot.data + off
            slot_out[0] = slot
            return RING_OK
        if st == CB_NO_ROOM:
            if not r.auto_rotate:
                return RING_NO_ROOM
            ring_seal(r, slot, NULL, 0)
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


cdef int ring_append(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     double max_wait) noexcept nogil:
    cdef char *dst
    cdef cb_slot *slot
    cdef int st = ring_reserve(r, n, pos, &dst, &slot, max_wait)
    if st == RING_OK:
        memcpy(dst, src, n)
        ring_commit(r, slot)
    return st


cdef uint64_t ring_seal_current(cb_ring *r) noexcept nogil:
    cdef uint64_t c, s
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
                cb_backoff(&spins)
            return c + 1
        if state_offset(s) == 0:
            return c
        if ring_seal(r, slot, NULL, 0):
            return c + 1


cdef int ring_direct(cb_ring *r, const char *src, uint64_t n, uint64_t *pos,
                     uint64_t *gen, double max_wait) noexcept nogil:
    """Hang ``src`` on the open buffer as its tail and seal it, so the sink
    gets it right after that buffer's bytes, with no copy.  The caller must
    keep ``src`` alive until ``flushed > *gen`` or ring_detach_tail()."""
    cdef uint64_t c, s, prev
    cdef cb_slot *slot
    cdef int st
    cdef unsigned spins = 0
    cdef double deadline = -1.0
    cdef bint counted = False
    while True:
        if cb_load_relaxed(&r.error):
            return RING_ERROR
        c = cb_load_acquire(&r.current)
        slot = slot_of(r, c)
        if cb_load_acquire(&slot.gen) == c:
            s = cb_load_acquire(&slot.state)
            if not (s & CB_SEALED):
                prev = state_seal(&slot.state)
                if not (prev & CB_SEALED):
                    gen[0] = c
                    pos[0] = slot.base + state_offset(prev)
                    ring_publish(r, slot, prev, src, n)
                    return RING_OK
                continue
        st = ring_wait_open(r, c, &spins, &deadline, max_wait, &counted)
        if st != RING_OK:
            return st


cdef int ring_detach_tail(cb_ring *r, uint64_t gen) noexcept nogil:
    """Give generation ``gen``'s tail its own copy so its writer can leave
    before the sink took it.  Returns -1 if memory ran out."""
    cdef cb_slot *slot = slot_of(r, gen)
    cdef char *copy
    cdef int rc = 0
    cb_mutex_lock(&r.dispatch_mu)
    if cb_load_acquire(&r.flushed) <= gen and slot.tail_copy == NULL and slot.tail_len:
        copy = <char *>malloc(slot.tail_len)
        if copy == NULL:
            rc = -1
        else:
            memcpy(copy, slot.tail, slot.tail_len)
            slot.tail = copy
            slot.tail_copy = copy
    cb_mutex_unlock(&r.dispatch_mu)
    return rc


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
            return  # unclaimed: a later opener claims first, then sees closing
        prev = cb_fetch_or_acq_rel(&slot.state, CB_SEALED | CB_SHUT)
        if not (prev & CB_SEALED):
            ring_publish(r, slot, prev, NULL, 0)  # we sealed the open slot
            continue
        if prev & CB_FLUSHING:
            return  # claimed but not yet opened: its opening CAS now fails
        while cb_load_acquire(&r.current) == c:  # a sealer is publishing
            cb_backoff(&spins)


# ---------------------------------------------------------------- dispatch

cdef void ring_set_errno(cb_ring *r, int err) noexcept nogil:
    cb_store_release(&r.error, <uint64_t>err)
    cb_event_notify(&r.space_ev)
    cb_event_notify(&r.done_ev)


cdef void ring_set_exception(cb_ring *r, object exc) noexcept:
    cdef PyObject *old
    Py_INCREF(exc)
    cb_mutex_lock(&r.exc_mu)
    old = r.exc
    r.exc = <PyObject *>exc
    cb_mutex_unlock(&r.exc_mu)
    Py_XDECREF(old)
    cb_store_release(&r.error, CB_PY_ERROR)
    cb_event_notify(&r.space_ev)
    cb_event_notify(&r.done_ev)


cdef uint64_t write_fd(cb_ring *r, cb_slot **batch, uint64_t k) noexcept nogil:
    """Write the batch with writev, continuing partial writes, retrying EINTR
    and waiting for POLLOUT on EAGAIN.  Returns how many generations were
    written whole; on another error sets the sticky errno."""
    cdef iovec iov[2 * MAX_BATCH]
    cdef uint64_t first = 0, i, left, take, total
    cdef long w
    cdef int cnt, err
    cdef cb_slot *slot
    cdef pollfd pfd
    while True:
        while first < k and batch[first].done >= batch[first].length + batch[first].tail_len:
            first += 1
        if first == k:
            return k
        cnt = 0
        for i in range(first, k):
            slot = batch[i]
            if slot.done < slot.length:
                iov[cnt].iov_base = slot.data + slot.done
                iov[cnt].iov_len = slot.length - slot.done
                cnt += 1
                if slot.tail_len:
                    iov[cnt].iov_base = <void *>slot.tail
                    iov[cnt].iov_len = slot.tail_len
                    cnt += 1
            elif slot.done < slot.length + slot.tail_len:
                iov[cnt].iov_base = <void *>(slot.tail + (slot.done - slot.length))
                iov[cnt].iov_len = slot.length + slot.tail_len - slot.done
                cnt += 1
        w = writev(r.fd, iov, cnt)
        cb_fetch_add_relaxed(&r.st_syscalls, 1)
        if w < 0:
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN or err == EWOULDBLOCK:
                pfd.fd = r.fd
                pfd.events = POLLOUT
                pfd.revents = 0
                poll(&pfd, 1, 100)
                continue
            ring_set_errno(r, err)
            return first
        cb_fetch_add_relaxed(&r.st_bytes_written, <uint64_t>w)
        i = first
        while w > 0:
            slot = batch[i]
            total = slot.length + slot.tail_len
            left = total - slot.done
            take = left if left < <uint64_t>w else <uint64_t>w
            slot.done += take
            w -= <long>take
            i += 1


cdef uint64_t write_python(cb_ring *r, cb_slot **batch, uint64_t k) noexcept nogil:
    with gil:
        return write_python_gil(r, batch, k)


cdef uint64_t write_python_gil(cb_ring *r, cb_slot **batch, uint64_t k) noexcept:
    # Marks this thread as the owner so that a signal handler run inside the
    # sink call and writing to this ring does not wait for itself.
    cdef object sink = <object>r.sink
    cb_store_relaxed(&r.py_owner, PyThread_get_thread_ident())
    try:
        return python_sink_calls(r, sink, batch, k)
    finally:
        cb_store_relaxed(&r.py_owner, 0)


cdef uint64_t python_sink_calls(cb_ring *r, object sink, cb_slot **batch, uint64_t k) noexcept:
    """Call the Python sink with a read-only view of each part, continuing
    when it reports a short write.  A raised exception becomes sticky."""
    cdef uint64_t i, total, n, w
    cdef const char *p
    cdef cb_slot *slot
    for i in range(k):
        slot = batch[i]
        total = slot.length + slot.tail_len
        while slot.done < total:
            if slot.done < slot.length:
                p = slot.data + slot.done
                n = slot.length - slot.done
            else:
                p = slot.tail + (slot.done - slot.length)
                n = total - slot.done
            view = PyMemoryView_FromMemory(<char *>p, <Py_ssize_t>n, PyBUF_READ)
            try:
                res = sink(view)
                if res is None:
                    w = n
                elif isinstance(res, int) and 0 <= res <= n:
                    w = res
                else:
                    raise ValueError(f"sink returned {res!r} for a write of {n} bytes")
            except InterruptedError:
                continue  # EINTR: nothing written; offer the same bytes again, as io does
            except BaseException as exc:
                ring_set_exception(r, exc)
                return i
            finally:
                try:
                    view.release()
                except BufferError:
                    pass  # the sink kept an export; the view was only valid during the call
            cb_fetch_add_relaxed(&r.st_syscalls, 1)
            if w == 0:
                with nogil:
                    usleep(1000)  # a non-blocking raw that would block: try again shortly
                continue
            slot.done += w
            cb_fetch_add_relaxed(&r.st_bytes_written, w)
    return k


cdef void ring_finish(cb_ring *r, cb_slot *slot, uint64_t gen) noexcept nogil:
    cb_fetch_add_relaxed(&r.st_flushes, 1)
    cb_fetch_add_relaxed(&r.st_writes, cb_load_relaxed(&slot.appends) + (1 if slot.tail_len else 0))
    if slot.length:
        cb_fetch_add_relaxed(&r.st_used, slot.length)
        cb_fetch_add_relaxed(&r.st_capacity, r.size)
    cb_store_relaxed(&slot.appends, 0)
    if slot.tail_copy != NULL:
        free(slot.tail_copy)
        slot.tail_copy = NULL
    slot.tail = NULL
    cb_store_relaxed(&r.written, slot.base + slot.length + slot.tail_len)
    cb_store_release(&slot.state, CB_CLOSED_SLOT)
    cb_store_release(&r.flushed, gen + 1)


cdef uint64_t ring_dispatch_ready(cb_ring *r) noexcept nogil:
    """Hand every sealed generation whose writers are done to the sink.
    The caller holds dispatch_mu.  Returns how many were handed over."""
    cdef cb_slot *batch[MAX_BATCH]
    cdef uint64_t f, c, k, w, i, total = 0
    cdef cb_slot *slot
    while not cb_load_acquire(&r.error):
        f = cb_load_acquire(&r.flushed)
        c = cb_load_acquire(&r.current)
        k = 0
        while k < MAX_BATCH and f + k < c:
            slot = slot_of(r, f + k)
            if state_writers(cb_load_acquire(&slot.state)) != 0:
                break
            cb_fetch_or_acq_rel(&slot.state, CB_FLUSHING)
            batch[k] = slot
            k += 1
        if k == 0:
            break
        if r.fd >= 0:
            w = write_fd(r, batch, k)
            # Synced before they count as flushed: flush() promises both.
            if w and r.fsync and c_fsync(r.fd) != 0:
                ring_set_errno(r, errno)
        else:
            w = write_python(r, batch, k)
        for i in range(w):
            ring_finish(r, batch[i], f + i)
        total += w
        if w:
            cb_event_notify(&r.done_ev)
            ring_try_open(r)
        if w < k:
            break
    return total


cdef bint ring_lock_dispatch(cb_ring *r, double max_wait) noexcept nogil:
    cdef double deadline
    if max_wait < 0:
        cb_mutex_lock(&r.dispatch_mu)
        return True
    deadline = cb_monotonic() + max_wait
    while not cb_mutex_trylock(&r.dispatch_mu):
        if cb_monotonic() >= deadline:
            return False
        usleep(200)
    return True


cdef int ring_dispatch_until(cb_ring *r, uint64_t target, double max_wait) noexcept nogil:
    cdef unsigned key
    cdef double deadline = -1.0, now
    cdef bint dispatched
    while True:
        key = cb_event_key(&r.work_ev)
        # Never block on the mutex: its holder may be a daemon thread that the
        # interpreter stopped at exit.  Whoever holds it is dispatching anyway.
        dispatched = cb_mutex_trylock(&r.dispatch_mu)
        if dispatched:
            ring_dispatch_ready(r)
            cb_mutex_unlock(&r.dispatch_mu)
        if cb_load_acquire(&r.error):
            return RING_ERROR
        if cb_load_acquire(&r.flushed) >= target:
            return RING_OK
        now = cb_monotonic()
        if max_wait >= 0:
            if deadline < 0:
                deadline = now + max_wait
            if now >= deadline:
                return RING_WOULD_BLOCK
            cb_event_wait(&r.work_ev, key, deadline - now if dispatched else min(deadline - now, 0.001))
        else:
            cb_event_wait(&r.work_ev, key, 1.0 if dispatched else 0.001)


cdef int ring_wait_flushed(cb_ring *r, uint64_t target, double max_wait) noexcept nogil:
    cdef unsigned key
    cdef double deadline = -1.0, now
    while True:
        key = cb_event_key(&r.done_ev)
        if cb_load_acquire(&r.error):
            return RING_ERROR
        if cb_load_acquire(&r.flushed) >= target:
            return RING_OK
        now = cb_monotonic()
        if max_wait >= 0:
            if deadline < 0:
                deadline = now + max_wait
            if now >= deadline:
                return RING_WOULD_BLOCK
            cb_event_wait(&r.done_ev, key, deadline - now)
        else:
            cb_event_wait(&r.done_ev, key, 1.0)


cdef int ring_await(cb_ring *r, uint64_t target, double max_wait) noexcept nogil:
    if r.auto_flush and not cb_load_acquire(&r.inline):
        return ring_wait_flushed(r, target, max_wait)
    return ring_dispatch_until(r, target, max_wait)


cdef bint ring_owned_by_me(cb_ring *r) noexcept nogil:
    return cb_load_relaxed(&r.py_owner) == PyThread_get_thread_ident()


cdef void flusher_loop(cb_ring *r) noexcept nogil:
    """The background flusher: dispatch what is ready, seal the open buffer
    every ``interval``, sleep on work_ev otherwise; exit once stopped and
    drained (or stopped with an error set, which leaves the bytes queued)."""
    cdef unsigned key
    cdef double now, timeout, poll_until = -1.0
    cdef double next_tick = cb_monotonic() + r.interval if r.interval > 0 else -1.0
    cdef uint64_t dispatched
    while True:
        key = cb_event_key(&r.work_ev)
        cb_mutex_lock(&r.dispatch_mu)
        dispatched = ring_dispatch_ready(r)
        cb_mutex_unlock(&r.dispatch_mu)
        if dispatched:
            poll_until = cb_monotonic() + FLUSHER_POLL
        if poll_until >= 0 and not cb_load_acquire(&r.stop):
            if cb_monotonic() < poll_until:
                cb_cpu_relax()
                continue
            poll_until = -1.0
        timeout = 1.0
        if next_tick >= 0:
            now = cb_monotonic()
            if now >= next_tick:
                next_tick = now + r.interval
                if not cb_load_acquire(&r.error):
                    ring_seal_current(r)
                continue
            timeout = next_tick - now
        if cb_load_acquire(&r.inline):
            return  # dispatch is the waiters' job from now on
        if cb_load_acquire(&r.stop):
            if cb_load_acquire(&r.error) or cb_load_acquire(&r.flushed) >= cb_load_acquire(&r.current):
                return
        cb_event_wait(&r.work_ev, key, timeout)


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
    r.fd = -1
    for i in range(count):
        r.slots[i].data = r.memory + i * size
    if (cb_event_init(&r.space_ev) or cb_event_init(&r.work_ev) or cb_event_init(&r.done_ev)
            or cb_mutex_init(&r.dispatch_mu) or cb_mutex_init(&r.exc_mu)):
        free(r.memory)
        free(r.slots)
        free(r)
        raise OSError("cannot initialise the ring's wait primitives")
    cb_atomic_init(&r.refs, 1)
    ring_reset(r, start)
    return r


cdef void ring_reset(cb_ring *r, uint64_t base) noexcept nogil:
    """Every slot closed, generation `count` about to open at stream
    position ``base``.  Used at creation and in a forked child."""
    cdef uint64_t i
    for i in range(r.count):
        cb_atomic_init(&r.slots[i].state, CB_CLOSED_SLOT)
        cb_atomic_init(&r.slots[i].gen, i)
        cb_atomic_init(&r.slots[i].appends, 0)
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
    cb_atomic_init(&r.error, 0)
    cb_atomic_init(&r.closing, 0)
    cb_atomic_init(&r.stop, 0)
    r.open_base = base
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
    Py_XDECREF(r.sink)
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
    with nogil:
        flusher_loop(handle.ring)


# Every ring, for the exit flush (auto_flush rings) and for fork().
_live_rings = weakref.WeakSet()


def _flush_live_rings():
    for ring in list(_live_rings):
        try:
            ring._exit_flush()
        except Exception:
            pass  # an error is sticky on the ring; exit goes on


def _at_exit():
    _flush_live_rings()
    for ring in list(_live_rings):
        ring._stop_python_flusher()


def _after_fork_in_child():
    for ring in list(_live_rings):
        ring._after_fork()


os.register_at_fork(before=_flush_live_rings, after_in_child=_after_fork_in_child)
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


cdef class BufferRing:
    """BufferRing(buffer_count, buffer_size, sink, *, auto_flush=True, auto_rotate=True)

    A fixed ring of 4096-aligned buffers that many threads append to without a
    lock.  A full buffer is sealed, the ring rotates, and the sealed buffer is
    handed to ``sink`` (in seal order, one call at a time) by a background
    flusher thread.

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
        self._started = False

    def __init__(self, buffer_count, buffer_size, sink, *, auto_flush=True, auto_rotate=True):
        _check_geometry(buffer_count, buffer_size)
        if isinstance(sink, int) and not isinstance(sink, bool):
            os.fstat(sink)  # EBADF now rather than on the first flush
            self._setup(buffer_count, buffer_size, sink, None, auto_flush, auto_rotate, 0, False, 0.0)
        elif callable(sink):
            self._setup(buffer_count, buffer_size, -1, sink, auto_flush, auto_rotate, 0, False, 0.0)
        else:
            raise TypeError(
                f"sink must be an int file descriptor or a callable, not {type(sink).__name__}")
        if auto_flush:
            self._start_flusher()

    cdef _setup(self, uint64_t count, uint64_t size, int fd, object sink,
                bint auto_flush, bint auto_rotate, uint64_t start, bint fsync,
                double interval):
        if self.ring != NULL:
            raise RuntimeError("the ring is already initialised")
        cdef cb_ring *r = ring_new(count, size, start)
        r.fd = fd
        if sink is not None:
            Py_INCREF(sink)
            r.sink = <PyObject *>sink
        r.auto_flush = auto_flush
        r.auto_rotate = auto_rotate
        r.fsync = fsync
        r.interval = interval
        self.ring = r
        _live_rings.add(self)

    cdef _start_flusher(self):
        with self._start_lock:
            if (self._started or cb_load_relaxed(&self.ring.stop)
                    or cb_load_relaxed(&self.ring.inline)):
                return
            self._started = True
        cdef _RingHandle handle = _RingHandle.__new__(_RingHandle)
        cb_fetch_add_relaxed(&self.ring.refs, 1)
        handle.ring = self.ring
        thread = threading.Thread(target=_flusher_main, args=(handle,),
                                  name="cbuffer-flusher", daemon=True)
        thread.start()
        self._flusher = thread

    def __dealloc__(self):
        if self.ring != NULL:
            # Dropped without close(): hand what is buffered to the sink (the
            # flusher drains before it exits), then let go.
            ring_seal_current(self.ring)
            cb_store_release(&self.ring.stop, 1)
            cb_event_notify(&self.ring.work_ev)
            ring_decref(self.ring)
            self.ring = NULL

    # -- appending

    cdef int _put_small(self, const char *src, Py_ssize_t n, uint64_t *pos,
                        bint wait) except -1:
        """Copy n <= buffer_size bytes in; returns the RingStatus.  With
        ``wait`` a full ring is waited out (raising only for a signal)."""
        cdef cb_ring *r = self.ring
        cdef char *dst
        cdef cb_slot *slot
        cdef int st = ring_reserve(r, n, pos, &dst, &slot, 0)
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
        if st == RING_WOULD_BLOCK and r.fd >= 0 and r.auto_flush:
            st = ring_append(r, src, n, pos, GIL_HELD_WAIT)
        while st == RING_WOULD_BLOCK:
            if ring_owned_by_me(r):
                raise RuntimeError("reentrant write: the ring is full while this thread is "
                                   "handing it to the sink (a signal handler writing?)")
            # Wait without the GIL (a Python sink needs it) and look for
            # signals now and then.  Reserve, copy and leave in one nogil
            # block: a writer counted in a buffer must never wait for the
            # GIL, or that buffer cannot be dispatched.
            with nogil:
                if cb_load_acquire(&r.inline):
                    ring_dispatch_until(r, cb_load_acquire(&r.flushed) + 1, SIGNAL_CHECK)
                st = ring_append(r, src, n, pos, SIGNAL_CHECK)
            if st == RING_WOULD_BLOCK:
                PyErr_CheckSignals()
        return st

    cdef int _raise_status(self, int st, Py_ssize_t n) except -1:
        """Raise what a refused append means to a Python caller."""
        if st == RING_TOO_BIG:
            raise ValueError(f"a record of {n} bytes does not fit in a buffer of {self.ring.size} bytes")
        if st == RING_NO_ROOM:
            raise BufferFull(f"{n} bytes do not fit in the current buffer; rotate() first")
        if st == RING_ERROR:
            self._raise_error()
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
            st = self._put_small(<const char *>view.buf, view.len, &pos, True)
            if st != RING_OK:
                self._raise_status(st, view.len)
        finally:
            PyBuffer_Release(&view)
        return pos

    cdef _check_open(self):
        if self.ring == NULL:
            raise ValueError("BufferRing is not initialised")

    # -- flushing

    cdef int _flush(self) except -1:
        cdef cb_ring *r = self.ring
        cdef uint64_t target
        cdef int st
        if cb_load_acquire(&r.error):
            return self._raise_error()
        with nogil:
            target = ring_seal_current(r)
        if ring_owned_by_me(r):
            # A signal handler inside this thread's own dispatch: what it
            # sealed is dispatched once the interrupted call returns.
            cb_event_notify(&r.work_ev)
            return 0
        if r.auto_flush:
            self._start_flusher()
            cb_event_notify(&r.work_ev)
        while True:
            with nogil:
                st = ring_await(r, target, SIGNAL_CHECK)
            if st == RING_OK:
                return 0
            if st == RING_ERROR:
                return self._raise_error()
            PyErr_CheckSignals()

    def flush(self):
        """Seal the current buffer if it holds data, wait for its writers, and
        return once every sealed buffer has been handed to the sink."""
        self._check_open()
        self._flush()

    def rotate(self):
        """Seal the current buffer (if it holds data) and move on to the next;
        with ``auto_flush`` the sealed buffer then goes to the sink."""
        self._check_open()
        with nogil:
            ring_seal_current(self.ring)

    def _exit_flush(self):
        # At exit and before fork(); auto_flush=False rings wait for flush().
        if self.ring != NULL and self.ring.auto_flush and not self.closed:
            self.flush()

    def _stop_python_flusher(self):
        """At exit: a flusher calling a Python sink would need the GIL while
        the interpreter finalizes, so stop it; writes made from here on are
        dispatched by the threads that wait for them."""
        cdef cb_ring *r = self.ring
        if r == NULL or r.sink == NULL:
            return
        cb_store_release(&r.inline, 1)
        cb_event_notify(&r.work_ev)
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()

    def _after_fork(self):
        """In a forked child: an empty ring (the parent owns what was
        pending) and a flusher of its own."""
        cdef cb_ring *r = self.ring
        if r == NULL:
            return
        cb_event_reinit(&r.space_ev)
        cb_event_reinit(&r.work_ev)
        cb_event_reinit(&r.done_ev)
        cb_mutex_init(&r.dispatch_mu)
        cb_mutex_init(&r.exc_mu)
        closing = cb_load_relaxed(&r.closing)
        ring_reset(r, cb_load_relaxed(&r.written))
        self._flusher = None
        self._started = False
        if closing:
            with nogil:
                ring_shut(r)
            cb_store_release(&r.stop, 1)
        elif r.auto_flush:
            self._start_flusher()

    # -- errors

    cdef int _raise_error(self) except -1:
        cdef cb_ring *r = self.ring
        cdef uint64_t err = cb_load_acquire(&r.error)
        cdef object exc = None
        if err == CB_PY_ERROR:
            cb_mutex_lock(&r.exc_mu)
            if r.exc != NULL:
                exc = <object>r.exc
            cb_mutex_unlock(&r.exc_mu)
            if exc is not None:
                raise exc
        elif err:
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

    @property
    def error(self):
        """The sticky error (an exception instance) or None."""
        try:
            self._raise_error()
        except BaseException as exc:
            return exc
        return None

    # -- closing

    def close(self):
        """Flush, stop the flusher and refuse further appends.  Idempotent;
        raises the sticky error if one is set (the ring is closed anyway)."""
        cdef cb_ring *r = self.ring
        cdef int st
        if r == NULL or cb_load_acquire(&r.stop):
            return
        if ring_owned_by_me(r):
            raise RuntimeError("reentrant close: this thread is handing the ring to the sink "
                               "(a signal handler closing it?)")
        with nogil:
            ring_shut(r)
        if self._flusher is None:
            cb_store_release(&r.inline, 1)  # never started: nothing to wait for
        # Closed by a finalizer at exit: daemon threads may have been stopped
        # holding buffers or the dispatch mutex, so wait a bounded time.
        give_up = time.monotonic() + EXIT_WAIT if sys.is_finalizing() else None
        try:
            while True:
                cb_event_notify(&r.work_ev)
                with nogil:
                    st = ring_await(r, cb_load_acquire(&r.current), SIGNAL_CHECK)
                if st == RING_OK:
                    break
                if st == RING_ERROR:
                    self._raise_error()
                if give_up is not None and time.monotonic() > give_up:
                    break
                PyErr_CheckSignals()
        finally:
            cb_store_release(&r.stop, 1)
            cb_event_notify(&r.work_ev)
            if (self._flusher is not None and self._flusher is not threading.current_thread()
                    and not sys.is_finalizing()):
                self._flusher.join()
            _live_rings.discard(self)

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
        appended so far)."""
        cdef cb_ring *r = self.ring
        cdef uint64_t c = cb_load_acquire(&r.current)
        cdef cb_slot *slot = slot_of(r, c)
        if cb_load_acquire(&slot.gen) == c:
            return slot.base + state_offset(cb_load_acquire(&slot.state))
        return r.open_base

    def stats(self):
        """Counters: bytes_written (to the sink), writes, flushes (buffers
        handed over), syscalls, ring_full_waits, reservation_retries and
        utilization (useful bytes / bytes of buffer dispatched)."""
        cdef cb_ring *r = self.ring
        cdef uint64_t live = 0, i
        for i in range(r.count):
            live += cb_load_relaxed(&r.slots[i].appends)
        cap = cb_load_relaxed(&r.st_capacity)
        return {
            "bytes_written": cb_load_relaxed(&r.st_bytes_written),
            "writes": cb_load_relaxed(&r.st_writes) + live,
            "flushes": cb_load_relaxed(&r.st_flushes),
            "syscalls": cb_load_relaxed(&r.st_syscalls),
            "ring_full_waits": cb_load_relaxed(&r.st_full_waits),
            "reservation_retries": cb_load_relaxed(&r.st_retries),
            "utilization": (cb_load_relaxed(&r.st_used) / cap) if cap else 1.0,
        }

    def __repr__(self):
        if self.ring == NULL:
            return "<cbuffer.BufferRing (uninitialised)>"
        return (f"<cbuffer.BufferRing buffer_count={self.ring.count} "
                f"buffer_size={self.ring.size} closed={self.closed}>")
