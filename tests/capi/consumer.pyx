# cython: language_level=3, freethreading_compatible=True
# An outside Cython module using cbuffer's exported C API, as a user would.
from libc.stdint cimport uint64_t

from cbuffer cimport RING_OK, BufferRing, ConcurrentBuffer, region_append, ring_append


def append_many(BufferRing ring, bytes record, int count):
    """Append ``record`` ``count`` times without the GIL; returns positions."""
    cdef const char *src = record
    cdef uint64_t n = len(record)
    cdef uint64_t pos
    cdef int _i, st = RING_OK
    positions = []
    for _i in range(count):
        with nogil:
            st = ring_append(ring.ring, src, n, &pos, -1)
        if st != RING_OK:
            raise RuntimeError(f"ring_append: status {st}")
        positions.append(pos)
    return positions


def region_put(ConcurrentBuffer buf, bytes record):
    cdef const char *src = record
    cdef uint64_t n = len(record)
    cdef uint64_t off = 0
    cdef int st
    with nogil:
        st = region_append(&buf.region, src, n, &off)
    return st, off
