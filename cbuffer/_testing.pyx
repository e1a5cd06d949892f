# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Test and benchmark support built on cbuffer's C-level API.

It ``cimport``s the append paths exported by ``_buffer.pxd`` and
``_ring.pxd`` exactly as outside Cython code would, and runs tight ``nogil``
append loops from several threads at once, so the state words are truly
contended even on an interpreter with a GIL.

Records are self-identifying (little-endian)::

    u32 magic | u32 thread | u32 seq | u32 length | u64 position | payload | u32 crc32

``position`` is what the append returned, written into the reserved bytes
before they are committed, so a reader can check that every record sits where
its writer was told it would.  ``crc32`` (zlib's polynomial) covers all bytes
before it.
"""
import threading
import time

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from posix.stdlib cimport posix_memalign
from libc.string cimport memcpy, memset

from cbuffer._buffer cimport (
    ConcurrentBuffer, cb_region, region_leave, region_reserve,
)
from cbuffer._ring cimport (
    BufferRing, RING_OK, cb_ring, cb_slot, lane_write, lanes_move, ring_append, ring_commit,
    ring_reserve,
)
from cbuffer._state cimport (
    CB_BUSY, CB_CLOSED, CB_FLUSHING, CB_NO_ROOM, CB_OFFSET_MAX, CB_OFFSET_SHIFT,
    CB_SEALED, CB_SHUT, CB_WRITER_MAX, CB_WRITER_ONE, CB_WRITER_SHIFT,
    CB_OK, cb_atomic_init, cb_atomic_u64, cb_cpu_relax, cb_fetch_add_acq_rel,
    cb_load_acquire, cb_store_release, state_leave, state_seal,
    state_try_reserve,
)

# The state word's layout and reservation results, as compiled (tests check
# them against CONTRACT.md's bit layout).
SEALED, FLUSHING, SHUT = CB_SEALED, CB_FLUSHING, CB_SHUT
WRITER_SHIFT, WRITER_ONE, WRITER_MAX = CB_WRITER_SHIFT, CB_WRITER_ONE, CB_WRITER_MAX
OFFSET_SHIFT, OFFSET_MAX = CB_OFFSET_SHIFT, CB_OFFSET_MAX
OK, CLOSED, NO_ROOM, BUSY = CB_OK, CB_CLOSED, CB_NO_ROOM, CB_BUSY

RECORD_MAGIC = 0xCB0FF5E7
cdef uint32_t MAGIC = 0xCB0FF5E7u
HEADER_SIZE = 24
MIN_RECORD = 28
cdef uint32_t CRC_TABLE[256]


cdef void _init_crc() noexcept:
    cdef uint32_t c, n
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320u ^ (c >> 1)) if (c & 1) else (c >> 1)
        CRC_TABLE[n] = c

_init_crc()


cdef inline uint32_t crc32(const uint8_t *p, uint64_t n) noexcept nogil:
    cdef uint32_t c = 0xFFFFFFFFu
    cdef uint64_t i
    for i in range(n):
        c = CRC_TABLE[(c ^ p[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFu


cdef inline void put_u32(char *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline void put_u64(char *p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef inline void fill_record(char *dst, uint32_t tid, uint32_t seq, uint32_t length,
                             uint64_t pos) noexcept nogil:
    cdef uint32_t j
    put_u32(dst, MAGIC)
    put_u32(dst + 4, tid)
    put_u32(dst + 8, seq)
    put_u32(dst + 12, length)
    put_u64(dst + 16, pos)
    for j in range(24, length - 4):
        dst[j] = <char>((tid * 31 + seq * 7 + j) & 0xFF)
    put_u32(dst + length - 4, crc32(<const uint8_t *>dst, length - 4))


cdef inline uint32_t record_length(uint32_t tid, uint32_t seq, uint32_t lo,
                                   uint32_t hi) noexcept nogil:
    # A cheap deterministic spread of sizes in [lo, hi].
    cdef uint64_t x = (<uint64_t>tid * 2654435761u) ^ (<uint64_t>seq * 40503u)
    x ^= x >> 13
    return lo + <uint32_t>(x % (hi - lo + 1))


def make_record(tid, seq, length, pos):
    """One record as bytes, built by the same code the hammer uses."""
    if length < MIN_RECORD:
        raise ValueError(f"records are at least {MIN_RECORD} bytes")
    out = bytearray(length)
    cdef char *p = out
    fill_record(p, tid, seq, length, pos)
    return bytes(out)


cdef class _Start:
    """A start line: workers spin (nogil) until every one is ready."""
    cdef cb_atomic_u64 ready
    cdef cb_atomic_u64 go
    cdef uint64_t n

    def __cinit__(self, n):
        cb_atomic_init(&self.ready, 0)
        cb_atomic_init(&self.go, 0)
        self.n = n

    cdef void arrive(self) noexcept nogil:
        cb_fetch_add_acq_rel(&self.ready, 1)
        while not cb_load_acquire(&self.go):
            if cb_load_acquire(&self.ready) >= self.n:
                cb_store_release(&self.go, 1)
            cb_cpu_relax()


def _run_threads(worker, int threads):
    start = _Start(threads)
    results = [None] * threads
    errors = []

    def body(tid):
        try:
            results[tid] = worker(tid, start)
        except BaseException as exc:  # collected, re-raised below
            errors.append(exc)

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return results, elapsed


def _ring_worker(BufferRing ring, uint32_t per_thread, uint32_t lo, uint32_t hi):
    def worker(uint32_t tid, _Start start):
        cdef cb_ring *r = ring.ring
        cdef uint32_t seq, length
        cdef uint64_t pos
        cdef char *dst
        cdef cb_slot *slot
        cdef int st = RING_OK
        with nogil:
            start.arrive()
            for seq in range(per_thread):
                length = record_length(tid, seq, lo, hi)
                st = ring_reserve(r, length, &pos, &dst, &slot, -1)
                if st != RING_OK:
                    break
                fill_record(dst, tid, seq, length, pos)
                ring_commit(r, slot)
        if st != RING_OK:
            raise RuntimeError(f"ring_reserve failed with status {st} in thread {tid}")
        return per_thread
    return worker


def hammer_ring(BufferRing ring, int threads, int per_thread, int min_size=MIN_RECORD,
                int max_size=64):
    """Append ``per_thread`` records of ``min_size..max_size`` bytes from each
    of ``threads`` threads, in nogil loops.  Returns the seconds taken."""
    if min_size < MIN_RECORD or max_size < min_size or max_size > ring.buffer_size:
        raise ValueError("record sizes out of range")
    _, elapsed = _run_threads(_ring_worker(ring, per_thread, min_size, max_size), threads)
    return elapsed


def park_flusher(BufferRing ring):
    """Stop the ring's flusher thread, as before a fork, and leave it
    stopped: from here on only writers that hand buffers over themselves
    make room (close() drains what is left)."""
    ring._stop_flusher(-1.0)
    if cb_load_acquire(&ring.ring.running):
        raise RuntimeError("the flusher did not stop")


def hammer_ring_plain(BufferRing ring, int threads, int per_thread, bytes payload):
    """Append the same payload with ring_append from each thread (no record
    building: the cost of the append path alone).  Returns seconds."""
    cdef const char *src = payload
    cdef uint64_t n = len(payload)

    def worker(uint32_t tid, _Start start):
        cdef cb_ring *r = ring.ring
        cdef uint64_t pos
        cdef int _i, st = RING_OK
        with nogil:
            start.arrive()
            for _i in range(per_thread):
                st = ring_append(r, src, n, &pos, -1)
                if st != RING_OK:
                    break
        if st != RING_OK:
            raise RuntimeError(f"ring_append failed with status {st}")
    _, elapsed = _run_threads(worker, threads)
    return elapsed


def hammer_lanes_plain(BufferRing ring, int threads, int per_thread, bytes payload):
    """Write the same payload with lane_write (each thread into its own lane:
    a writer's C-level path when no position is needed) from each thread.
    The ring must have lanes (a ConcurrentBufferedWriter's core).  Returns
    seconds, counted until the lanes are moved into the ring."""
    cdef const char *src = payload
    cdef uint64_t n = len(payload)
    if ring.ring.nlanes == 0:
        raise ValueError("the ring has no lanes")
    ring._start_flusher()  # a writer starts it with its first Python-level write

    def worker(uint32_t tid, _Start start):
        cdef cb_ring *r = ring.ring
        cdef int _i, st = RING_OK
        with nogil:
            start.arrive()
            for _i in range(per_thread):
                st = lane_write(r, src, n, -1)
                if st != RING_OK:
                    break
            if st == RING_OK:
                st = lanes_move(r, False, -1)
        if st != RING_OK:
            raise RuntimeError(f"lane_write failed with status {st}")
    _, elapsed = _run_threads(worker, threads)
    return elapsed


def hammer_buffer(ConcurrentBuffer buf, int threads, int per_thread, int min_size=MIN_RECORD,
                  int max_size=64):
    """Append records from ``threads`` nogil threads into a ConcurrentBuffer
    while this thread flushes it over and over.  A writer that finds no room
    retries after the next flush.  Returns the list of flushed chunks; each
    record's position field is its offset inside its chunk."""
    chunks = []
    done = []

    def worker(uint32_t tid, _Start start):
        cdef cb_region *reg = &buf.region
        cdef uint32_t seq, length
        cdef uint64_t off
        cdef char *dst
        cdef int st
        with nogil:
            start.arrive()
            for seq in range(per_thread):
                length = record_length(tid, seq, min_size, max_size)
                while True:
                    st = region_reserve(reg, length, &off, &dst, True)
                    if st == CB_OK:
                        break
                    cb_cpu_relax()  # no room: the flushing thread will empty it
                fill_record(dst, tid, seq, length, off)
                region_leave(reg)
        done.append(tid)

    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            chunks.append(buf.flush())
            time.sleep(0)

    ft = threading.Thread(target=flusher)
    ft.start()
    try:
        _run_threads(worker, threads)
    finally:
        stop.set()
        ft.join()
    chunks.append(buf.flush())
    return [c for c in chunks if c]


def bare_fetch_add(int threads, long iterations):
    """The floor for any shared-word append: ``iterations`` atomic
    fetch_add calls per thread on one shared counter.  Returns seconds."""
    cdef cb_atomic_u64 counter
    cb_atomic_init(&counter, 0)
    cdef cb_atomic_u64 *p = &counter

    def worker(uint32_t tid, _Start start):
        cdef long _i
        with nogil:
            start.arrive()
            for _i in range(iterations):
                cb_fetch_add_acq_rel(p, 1)
    _, elapsed = _run_threads(worker, threads)
    if cb_load_acquire(&counter) != <uint64_t>threads * iterations:
        raise AssertionError("lost increments")
    return elapsed


def bare_copy(bint shared, int threads, long iterations, Py_ssize_t size):
    """The floor for copying records into a ring: each thread copies
    ``size``-byte records ``iterations`` times round a ring of four 64 KiB
    buffers -- one ring for all threads (``shared``) or one each.  Nothing
    is synchronised but the offset (a fetch_add on the ring's own line).
    Returns seconds."""
    cdef Py_ssize_t ring_size = 4 * 65536
    cdef int rings = 1 if shared else threads
    cdef void *memory = NULL
    cdef void *offsets = NULL  # a cache line each
    cdef char *src = <char *>calloc(1, size)
    if (src == NULL or posix_memalign(&memory, 4096, rings * ring_size) != 0
            or posix_memalign(&offsets, 64, rings * 64) != 0):
        free(memory)
        free(src)
        raise MemoryError()
    memset(memory, 0, rings * ring_size)
    memset(offsets, 0, rings * 64)

    def worker(uint32_t tid, _Start start):
        cdef int k = 0 if shared else tid
        cdef char *ring = <char *>memory + k * ring_size
        cdef cb_atomic_u64 *off = <cb_atomic_u64 *>(<char *>offsets + 64 * k)
        cdef long _i
        cdef uint64_t at
        with nogil:
            start.arrive()
            for _i in range(iterations):
                at = cb_fetch_add_acq_rel(off, size) % (ring_size - ring_size % size)
                memcpy(ring + at, src, size)
    try:
        _, elapsed = _run_threads(worker, threads)
    finally:
        free(memory)
        free(src)
        free(offsets)
    return elapsed


cdef class StateWord:
    """One standalone state word, driven through the real transitions, for
    unit tests of the protocol."""
    cdef cb_atomic_u64 word
    cdef readonly uint64_t retries

    def __cinit__(self, uint64_t value=0):
        cb_atomic_init(&self.word, value)

    @property
    def value(self):
        return cb_load_acquire(&self.word)

    def set(self, uint64_t value):
        cb_store_release(&self.word, value)

    def try_reserve(self, uint64_t n, uint64_t capacity):
        """-> (status, offset); offset is None unless status is CB_OK."""
        cdef uint64_t off = 0
        cdef int st = state_try_reserve(&self.word, n, capacity, &off, &self.retries)
        return st, (off if st == CB_OK else None)

    def leave(self):
        return state_leave(&self.word)

    def seal(self):
        return state_seal(&self.word)


cdef class HeldRingReservation:
    """A ring reservation filled but not yet committed: a writer frozen in
    the middle of its copy, for flush-atomicity tests."""
    cdef BufferRing ring
    cdef cb_slot *slot
    cdef readonly uint64_t position

    def __init__(self, BufferRing ring, bytes data):
        cdef char *dst
        cdef uint64_t pos
        cdef int st = ring_reserve(ring.ring, len(data), &pos, &dst, &self.slot, 0)
        if st != RING_OK:
            raise RuntimeError(f"could not reserve: status {st}")
        memcpy(dst, <const char *>data, len(data))
        self.ring = ring
        self.position = pos

    def release(self):
        if self.slot != NULL:
            ring_commit(self.ring.ring, self.slot)
            self.slot = NULL


cdef class HeldBufferReservation:
    """The same for a ConcurrentBuffer."""
    cdef ConcurrentBuffer buf
    cdef bint held
    cdef readonly uint64_t offset

    def __init__(self, ConcurrentBuffer buf, bytes data):
        cdef char *dst
        cdef uint64_t off
        if region_reserve(&buf.region, len(data), &off, &dst, False) != CB_OK:
            raise RuntimeError("could not reserve")
        memcpy(dst, <const char *>data, len(data))
        self.buf = buf
        self.offset = off
        self.held = True

    def release(self):
        if self.held:
            region_leave(&self.buf.region)
            self.held = False


def buffer_state(ConcurrentBuffer buf):
    """The raw state word of a ConcurrentBuffer (acquire load)."""
    return cb_load_acquire(&buf.region.state)
