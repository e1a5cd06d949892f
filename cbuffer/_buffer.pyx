# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Layer 1: ConcurrentBuffer, the seed primitive.

Appends are lock-free (one CAS to reserve, a memcpy, one atomic decrement).
``flush()`` seals the region so no new reservation can start, waits for the
writers already inside to finish their copies, takes the bytes and resets the
word to 0.  Appends that arrive while a flush holds the region sealed wait for
it (without the GIL) and then go on from offset 0: a flush never contains
bytes of an append that started after it sealed the region, and never copies a
half-written record.
"""
import os
import weakref

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from cbuffer._state cimport (
    CB_BUSY, CB_CLOSED, CB_FLUSHING, CB_NO_ROOM, CB_OFFSET_MAX, CB_OK,
    CB_SEALED, cb_backoff, cb_cas_acq_rel, cb_fetch_add_relaxed,
    cb_load_acquire, cb_load_relaxed, cb_atomic_init, cb_store_release,
    state_leave, state_offset, state_try_reserve, state_writers,
)

# Copies at least this large are done with the GIL released.
cdef Py_ssize_t NOGIL_COPY = 64 * 1024


class BufferFull(BufferError):
    """The data does not fit in the space left; nothing was written."""


cdef int region_reserve(cb_region *r, uint64_t n, uint64_t *offset,
                        char **dst, bint block) noexcept nogil:
    cdef unsigned spins = 0
    cdef uint64_t retries = 0
    cdef int status
    while True:
        status = state_try_reserve(&r.state, n, r.capacity, offset, &retries)
        if status == CB_OK or status == CB_NO_ROOM:
            break
        # CB_CLOSED (a flush is taking the bytes) or CB_BUSY: both end soon.
        if not block:
            break
        if cb_backoff(&spins):
            spins = 40  # stay in the yield phase: a flush is a short memcpy
    if retries:
        cb_fetch_add_relaxed(&r.retries, retries)
    if status == CB_OK:
        dst[0] = r.data + offset[0]
    return status


cdef void region_leave(cb_region *r) noexcept nogil:
    state_leave(&r.state)


cdef int region_append(cb_region *r, const char *src, uint64_t n,
                       uint64_t *offset) noexcept nogil:
    cdef char *dst
    cdef int status = region_reserve(r, n, offset, &dst, True)
    if status == CB_OK:
        memcpy(dst, src, n)
        region_leave(r)
    return status


cdef uint64_t region_seal_for_flush(cb_region *r) noexcept nogil:
    """Seal for a flush (one flush at a time) and wait until no writer is
    inside.  Returns the length to take."""
    cdef uint64_t s = cb_load_relaxed(&r.state)
    cdef unsigned spins = 0
    while True:
        if s & CB_FLUSHING:
            # Another flush owns the region; take ours after it resets.
            cb_backoff(&spins)
            s = cb_load_relaxed(&r.state)
            continue
        if cb_cas_acq_rel(&r.state, &s, s | CB_SEALED | CB_FLUSHING):
            break
    spins = 0
    s = cb_load_acquire(&r.state)
    while state_writers(s) != 0:
        cb_backoff(&spins)
        s = cb_load_acquire(&r.state)
    return state_offset(s)


# Every live buffer, for fork(): see _after_fork_in_child.
_buffers = weakref.WeakSet()


def _after_fork_in_child():
    """A forked child has one thread: an append or flush that another
    thread of the parent was in the middle of will never finish here.  A
    buffer caught that way starts empty (its half-copied bytes are not the
    child's); a quiet one keeps its bytes, like any other memory."""
    cdef ConcurrentBuffer buf
    for obj in list(_buffers):
        buf = <ConcurrentBuffer>obj
        s = cb_load_relaxed(&buf.region.state)
        if state_writers(s) or s & (CB_SEALED | CB_FLUSHING):
            cb_store_release(&buf.region.state, 0)


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef class ConcurrentBuffer:
    """ConcurrentBuffer(capacity)

    An append-only byte region shared by many threads.

    :param int capacity: size of the region in bytes, 1 .. 2**32 - 1.

    ::

        buf = cbuffer.ConcurrentBuffer(1 << 20)
        offset = buf.append(b"record")   # from any thread
        data = buf.flush()               # takes everything, resets to 0
    """

    def __cinit__(self, capacity):
        self.region.data = NULL

    def __init__(self, capacity):
        if not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 1 or capacity > CB_OFFSET_MAX:
            raise ValueError(f"capacity must be between 1 and {CB_OFFSET_MAX}, got {capacity}")
        if self.region.data != NULL:
            raise RuntimeError("ConcurrentBuffer is already initialised")
        self.region.data = <char *>malloc(<size_t>capacity)
        if self.region.data == NULL:
            raise MemoryError(f"cannot allocate {capacity} bytes")
        self.region.capacity = capacity
        cb_atomic_init(&self.region.state, 0)
        cb_atomic_init(&self.region.retries, 0)
        _buffers.add(self)

    def __dealloc__(self):
        free(self.region.data)
        self.region.data = NULL

    @property
    def capacity(self):
        """The region's size in bytes."""
        return self.region.capacity

    def __len__(self):
        return state_offset(cb_load_acquire(&self.region.state))

    def append(self, data):
        """append(data) -> int

        Copy ``data`` (any contiguous bytes-like object) into the region and
        return the offset of its first byte.  Raises :class:`BufferFull`, with
        nothing written, when it does not fit.  A 0-byte append returns the
        current offset.
        """
        cdef Py_buffer view
        cdef uint64_t offset = 0
        cdef char *dst
        cdef int status
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len == 0:
                return state_offset(cb_load_acquire(&self.region.state))
            status = region_reserve(&self.region, view.len, &offset, &dst, False)
            if status == CB_CLOSED or status == CB_BUSY:
                # A flush holds the region: wait for it without the GIL, since
                # the flush needs the GIL to build its bytes object.  Copy and
                # leave in the same nogil block: a writer counted in the region
                # must never wait for the GIL, or the flush waits on it.
                with nogil:
                    status = region_append(&self.region, <const char *>view.buf,
                                           view.len, &offset)
                if status == CB_OK:
                    return offset
            if status == CB_NO_ROOM:
                raise BufferFull(
                    f"{view.len} bytes do not fit: "
                    f"{self.region.capacity - state_offset(cb_load_relaxed(&self.region.state))}"
                    f" of {self.region.capacity} left")
            if view.len >= NOGIL_COPY:
                with nogil:
                    memcpy(dst, view.buf, view.len)
                    region_leave(&self.region)
            else:
                memcpy(dst, view.buf, view.len)
                region_leave(&self.region)
            return offset
        finally:
            PyBuffer_Release(&view)

    def flush(self):
        """flush() -> bytes

        Take every byte appended since the last flush and reset the region to
        offset 0.  Waits for appends already inside the region to finish their
        copies; appends that start meanwhile wait and land after the reset.
        """
        cdef uint64_t length
        with nogil:
            length = region_seal_for_flush(&self.region)
        try:
            return PyBytes_FromStringAndSize(self.region.data, length)
        finally:
            cb_store_release(&self.region.state, 0)

    @property
    def reservation_retries(self):
        """CAS retries appends have made so far (a contention measure)."""
        return cb_load_relaxed(&self.region.retries)

    def __repr__(self):
        return f"<cbuffer.ConcurrentBuffer len={len(self)} capacity={self.region.capacity}>"
