# cython: language_level=3
"""Layer 1, C level: one append-only region shared by many writers.

Convention for every function here: ``noexcept nogil``; they never raise and
never touch Python objects, so Cython code may call them with or without the
GIL.  Results are status codes from cbuffer._state.ReserveStatus.
"""
from libc.stdint cimport uint64_t

from cbuffer._state cimport cb_atomic_u64


cdef struct cb_region:
    cb_atomic_u64 state     # the packed state word (see _state.pxd)
    char *data              # capacity bytes, owned by the ConcurrentBuffer
    uint64_t capacity       # 1 .. CB_OFFSET_MAX
    cb_atomic_u64 retries   # CAS retries on reservation (statistics)


# Reserve n bytes.  CB_OK: *dst points at the reserved bytes, *offset is their
# offset; the caller copies, then calls region_leave exactly once.  While a
# flush holds the region sealed, waits (block=1) or returns CB_CLOSED.
cdef int region_reserve(cb_region *r, uint64_t n, uint64_t *offset,
                        char **dst, bint block) noexcept nogil

# Un-count a writer whose copy is complete (publishes the copy).
cdef void region_leave(cb_region *r) noexcept nogil

# Reserve, copy and leave: the whole append.  CB_OK or CB_NO_ROOM.
cdef int region_append(cb_region *r, const char *src, uint64_t n,
                       uint64_t *offset) noexcept nogil


cdef class ConcurrentBuffer:
    cdef cb_region region   # the shared region; its data is freed on dealloc
    cdef object __weakref__
