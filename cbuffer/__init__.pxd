# cython: language_level=3
# cbuffer's C-level API, for ``from cbuffer cimport ...`` in other Cython code.
# Every function is ``noexcept nogil`` and returns a status code; see the
# .pxd of each layer for the meaning of each argument.
from cbuffer._state cimport (
    CB_BUSY, CB_CLOSED, CB_NO_ROOM, CB_OK, ReserveStatus,
)
from cbuffer._buffer cimport (
    ConcurrentBuffer, cb_region, region_append, region_leave, region_reserve,
)
from cbuffer._ring cimport (
    RING_ERROR, RING_NO_ROOM, RING_OK, RING_SHUT, RING_TOO_BIG,
    RING_WOULD_BLOCK, BufferRing, RingStatus, cb_ring, cb_slot, lane_write, lanes_move,
    ring_append, ring_commit, ring_reserve, ring_seal_current, ring_wait_flushed,
)
