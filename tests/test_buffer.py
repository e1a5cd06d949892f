"""Layer 1, ConcurrentBuffer: the seed's six safety and three liveness
properties, each its own test, checked on the bytes flush() returns."""
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cbuffer
from cbuffer import _testing as t
from cbuffer._testing import HeldBufferReservation, buffer_state, hammer_buffer, make_record
from records import parse

THREAD_COUNTS = [2, 4, 8, 16]
DEADLINE = 30.0


def run_threads(target, n):
    """Start n threads together; re-raise the first error any of them hit."""
    errors = []
    barrier = threading.Barrier(n)

    def body(tid):
        try:
            barrier.wait(DEADLINE)
            target(tid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(DEADLINE)
        assert not th.is_alive(), "a writer thread hung"
    if errors:
        raise errors[0]


def python_appends(buf, threads, per_thread):
    """Each thread appends its own records through the Python API; returns
    {(tid, seq): (offset, record)}."""
    told = {}

    def worker(tid):
        append = buf.append
        for seq in range(per_thread):
            rec = make_record(tid, seq, 28 + (tid * 7 + seq * 13) % 100, 0)
            told[(tid, seq)] = (append(rec), rec)

    run_threads(worker, threads)
    return told


def check_hammer_chunks(chunks, threads, per_thread):
    """Every record of every thread exactly once, in order, at the offset
    (within its flush) that its reservation returned."""
    last = {}
    count = 0
    for chunk in chunks:
        for rec in parse(chunk):
            assert rec.position == rec.at, f"record says {rec.position}, found at {rec.at}"
            assert rec.seq == last.get(rec.tid, -1) + 1, f"thread {rec.tid} lost or repeated a record"
            last[rec.tid] = rec.seq
            count += 1
    assert count == threads * per_thread
    assert all(last[tid] == per_thread - 1 for tid in range(threads))


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("capacity", [0, -1, 2**32])
def test_capacity_out_of_range(capacity):
    with pytest.raises(ValueError, match="capacity"):
        cbuffer.ConcurrentBuffer(capacity)


@pytest.mark.parametrize("capacity", [1.5, "10", None])
def test_capacity_not_an_int(capacity):
    with pytest.raises(TypeError, match="capacity must be an int"):
        cbuffer.ConcurrentBuffer(capacity)


def test_append_needs_bytes_like():
    buf = cbuffer.ConcurrentBuffer(64)
    with pytest.raises(TypeError):
        buf.append("text")
    assert len(buf) == 0


def test_buffer_full_writes_nothing():
    buf = cbuffer.ConcurrentBuffer(10)
    assert buf.append(b"12345678") == 0
    with pytest.raises(cbuffer.BufferFull, match="3 bytes do not fit: 2 of 10 left"):
        buf.append(b"abc")
    assert issubclass(cbuffer.BufferFull, BufferError)
    assert len(buf) == 8
    assert buf.append(b"90") == 8
    assert buf.flush() == b"1234567890"


def test_zero_byte_append_returns_offset_and_changes_nothing():
    buf = cbuffer.ConcurrentBuffer(4)
    assert buf.append(b"") == 0
    buf.append(b"abcd")
    assert buf.append(b"") == 4  # even when full
    assert len(buf) == 4
    assert buf.flush() == b"abcd"


def test_accepts_any_contiguous_buffer():
    buf = cbuffer.ConcurrentBuffer(64)
    buf.append(bytearray(b"ab"))
    buf.append(memoryview(b"xcdx")[1:3])
    buf.append(__import__("array").array("B", [101, 102]))
    assert buf.flush() == b"abcdef"
    assert buf.capacity == 64
    assert repr(buf) == "<cbuffer.ConcurrentBuffer len=0 capacity=64>"


# ---------------------------------------------------------------- safety

@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_safety_1_no_overlapping_writes(threads):
    buf = cbuffer.ConcurrentBuffer(1 << 20)
    told = python_appends(buf, threads, 300)
    ranges = sorted((off, off + len(rec)) for off, rec in told.values())
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end <= start, "two appends were given overlapping ranges"
    # And through the nogil path, where threads truly run at once.
    check_hammer_chunks(hammer_buffer(cbuffer.ConcurrentBuffer(1 << 16), threads, 5000), threads, 5000)


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_safety_2_data_integrity(threads):
    buf = cbuffer.ConcurrentBuffer(1 << 20)
    told = python_appends(buf, threads, 300)
    data = buf.flush()
    for off, rec in told.values():
        assert data[off:off + len(rec)] == rec
    parse(data)  # every checksum holds, no stray bytes between records


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_safety_3_no_data_loss(threads):
    buf = cbuffer.ConcurrentBuffer(1 << 20)
    told = python_appends(buf, threads, 300)
    data = buf.flush()
    assert len(data) == sum(len(rec) for _, rec in told.values())
    assert {(r.tid, r.seq) for r in parse(data)} == set(told)


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_safety_4_returned_offset_is_committed(threads):
    # The hammer writes each reservation's offset into its own record before
    # leaving; the flushed bytes must hold every record exactly there.
    chunks = hammer_buffer(cbuffer.ConcurrentBuffer(8192), threads, 20000, 28, 200)
    check_hammer_chunks(chunks, threads, 20000)


def test_safety_5_flush_atomicity():
    buf = cbuffer.ConcurrentBuffer(1024)
    buf.append(b"before-")
    held = HeldBufferReservation(buf, b"in-flight")  # copied, not yet left
    flushed = []
    flusher = threading.Thread(target=lambda: flushed.append(buf.flush()))
    flusher.start()
    deadline = time.monotonic() + DEADLINE
    while not buffer_state(buf) & t.SEALED:  # the flush has begun
        assert time.monotonic() < deadline
        time.sleep(0.001)
    late = []
    latecomer = threading.Thread(target=lambda: late.append(buf.append(b"after")))
    latecomer.start()
    time.sleep(0.05)
    # The flush waits for the writer inside, never taking a half-made record.
    assert not flushed and flusher.is_alive()
    held.release()
    flusher.join(DEADLINE)
    latecomer.join(DEADLINE)
    assert flushed == [b"before-in-flight"]  # nothing of the append that began later
    assert late == [0]
    assert buf.flush() == b"after"


@pytest.mark.parametrize("threads", [2, 16])
def test_safety_5_flush_atomicity_under_contention(threads):
    # A flush that copied a record still being written would break its
    # checksum; one that lost an append would break the sequence.
    chunks = hammer_buffer(cbuffer.ConcurrentBuffer(4096), threads, 30000)
    assert len(chunks) > 1
    check_hammer_chunks(chunks, threads, 30000)


def test_safety_6_consistent_length():
    buf = cbuffer.ConcurrentBuffer(1 << 20)
    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append(len(buf))

    th = threading.Thread(target=sampler)
    th.start()
    try:
        told = python_appends(buf, 8, 300)
    finally:
        stop.set()
        th.join()
    total = sum(len(rec) for _, rec in told.values())
    assert len(buf) == total == max(off + len(rec) for off, rec in told.values())
    assert samples == sorted(samples) and samples[-1] <= total  # never backwards, never past
    buf.flush()
    assert len(buf) == 0


# ---------------------------------------------------------------- liveness

def test_liveness_1_a_stalled_writer_does_not_block_others():
    # Lock-freedom in practice: a writer frozen in the middle of its copy
    # holds nothing the others need.
    buf = cbuffer.ConcurrentBuffer(1 << 20)
    held = HeldBufferReservation(buf, b"x" * 100)
    told = python_appends(buf, 8, 200)
    assert len(told) == 1600
    assert all(off >= 100 for off, _ in told.values())
    held.release()
    data = buf.flush()
    assert data[:100] == b"x" * 100


@pytest.mark.parametrize("threads", [2, 16])
def test_liveness_1_lock_free_appends_oversubscribed(threads):
    # 16 nogil threads on 2 cores, each preempted at random points: every
    # append still completes (a hang fails via pytest-timeout).
    buf = cbuffer.ConcurrentBuffer(1 << 16)
    check_hammer_chunks(hammer_buffer(buf, threads, 20000), threads, 20000)


def test_liveness_2_flush_without_appends_in_progress_returns_everything():
    buf = cbuffer.ConcurrentBuffer(1 << 16)
    assert buf.flush() == b""
    told = python_appends(buf, 4, 100)
    data = buf.flush()  # no append in progress: returns at once, complete
    assert len(parse(data)) == len(told)
    assert buf.flush() == b""


def test_liveness_3_post_flush_progress_from_offset_zero():
    buf = cbuffer.ConcurrentBuffer(4096)
    for cycle in range(200):
        payload = bytes([cycle % 256]) * 4096
        assert buf.append(payload[:4000]) == 0
        assert buf.append(payload[:96]) == 4000  # the full capacity, every cycle
        with pytest.raises(cbuffer.BufferFull):
            buf.append(b"!")
        assert buf.flush() == payload
        assert len(buf) == 0


# ---------------------------------------------------------------- properties

sizes = st.lists(st.integers(0, 256) | st.sampled_from([0, 256]), max_size=40)


@settings(max_examples=200, deadline=None)
@given(sizes=sizes, flush_every=st.integers(1, 10))
def test_property_random_sizes_match_a_model(sizes, flush_every):
    capacity = 256
    buf = cbuffer.ConcurrentBuffer(capacity)
    model = bytearray()
    for i, n in enumerate(sizes):
        payload = bytes((i + k) % 251 for k in range(n))
        if len(model) + n > capacity:
            with pytest.raises(cbuffer.BufferFull):
                buf.append(payload)
        else:
            assert buf.append(payload) == len(model)
            model += payload
        assert len(buf) == len(model)
        if i % flush_every == flush_every - 1:
            assert buf.flush() == model
            model.clear()
    assert buf.flush() == model
