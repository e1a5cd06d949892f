"""Layer 2, BufferRing: geometry, the seal/rotate/dispatch protocol under
contention, backpressure, partial buffers and the sink's view of it all.
Every check reads back the bytes the sink received."""
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cbuffer
from cbuffer._testing import HeldRingReservation, hammer_ring, make_record
from records import check_stream, parse

DEADLINE = 30.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))


class GatedSink:
    """A callable sink that blocks until opened: the sink is slow, so the
    ring fills."""

    def __init__(self):
        self.chunks = []
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, view):
        self.calls += 1
        assert self.gate.wait(DEADLINE)
        self.chunks.append(bytes(view))

    @property
    def data(self):
        return b"".join(self.chunks)


def wait_for(predicate, what):
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("count, size", [(0, 4096), (-1, 4096), (2, 0), (2, 4095), (2, 4097), (2, -4096)])
def test_bad_geometry_is_a_value_error(collector, count, size):
    with pytest.raises(ValueError, match="buffer_count|buffer_size"):
        cbuffer.BufferRing(count, size, collector)


@pytest.mark.parametrize("count, size", [(2.0, 4096), (2, "4096"), (None, 4096)])
def test_geometry_of_the_wrong_type(collector, count, size):
    with pytest.raises(TypeError, match="buffer_count|buffer_size"):
        cbuffer.BufferRing(count, size, collector)


def test_bad_sink():
    with pytest.raises(TypeError, match="sink must be an int file descriptor or a callable"):
        cbuffer.BufferRing(2, 4096, "out.log")
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        cbuffer.BufferRing(2, 4096, w)  # a closed fd fails now, not at the first flush


@pytest.mark.parametrize("count, size", [(1, 4096), (3, 4096), (4, 8192), (5, 65536), (2, 1 << 20)])
def test_every_buffer_is_4096_aligned(collector, count, size):
    ring = cbuffer.BufferRing(count, size, collector)
    addresses = ring.buffer_addresses()
    assert len(addresses) == count == ring.buffer_count
    assert ring.buffer_size == size
    assert all(a % 4096 == 0 for a in addresses)
    assert len(set(addresses)) == count
    assert all(b - a >= size for a, b in zip(sorted(addresses), sorted(addresses)[1:]))
    ring.close()


def test_record_larger_than_a_buffer(collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    with pytest.raises(ValueError, match="4097 bytes does not fit in a buffer of 4096"):
        ring.append(b"x" * 4097)
    assert ring.append(b"y" * 4096) == 0  # exactly one buffer is fine
    ring.flush()
    assert collector.data == b"y" * 4096


# ---------------------------------------------------------------- protocol

def test_positions_and_dispatch_in_seal_order(collector):
    ring = cbuffer.BufferRing(3, 4096, collector)
    expected = bytearray()
    for i in range(1000):
        rec = make_record(0, i, 28 + i % 300, len(expected))
        assert ring.append(rec) == len(expected)
        expected += rec
    assert ring.tell() == len(expected)
    ring.flush()
    assert collector.data == expected
    assert all(len(c) <= 4096 for c in collector.chunks)
    assert len(collector.chunks) >= len(expected) // 4096  # it really rotated
    ring.close()


def test_a_record_never_straddles_two_buffers(collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    for i in range(500):
        ring.append(make_record(0, i, 1000, 0))
    ring.flush()
    for chunk in collector.chunks:
        assert len(chunk) % 1000 == 0  # whole records only: 4 per buffer, 96 bytes unused
        parse(chunk)
    ring.close()


def test_partial_buffer_on_manual_flush_has_no_stale_bytes(collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    ring.append(b"A" * 4096)
    ring.append(b"B" * 4096)
    ring.flush()
    # The same memory again, now holding a few bytes: the sink gets just those.
    for i in range(4):
        ring.append(b"c%d" % i)
        ring.flush()
    assert collector.chunks == [b"A" * 4096, b"B" * 4096, b"c0", b"c1", b"c2", b"c3"]
    ring.flush()  # nothing pending: nothing handed over
    assert len(collector.chunks) == 6
    ring.close()


def test_flush_waits_for_writers_in_the_buffer(collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    ring.append(b"first-")
    held = HeldRingReservation(ring, b"held")
    assert ring.current_buffer.writers == 1
    done = threading.Event()
    th = threading.Thread(target=lambda: (ring.flush(), done.set()))
    th.start()
    wait_for(lambda: ring.current_buffer.index == 1 or ring.current_buffer.sealed, "the seal")
    time.sleep(0.05)
    assert not done.is_set() and collector.chunks == []  # never a half-copied buffer
    ring.append(b"later")  # goes on in the next buffer meanwhile
    held.release()
    th.join(DEADLINE)
    assert done.is_set()
    assert collector.chunks[0] == b"first-held"
    ring.flush()
    assert collector.data == b"first-heldlater"
    ring.close()


def test_current_buffer_snapshot(collector):
    ring = cbuffer.BufferRing(2, 4096, collector, auto_flush=False)
    assert ring.current_buffer == cbuffer.BufferState(0, 0, 0, False, False)
    ring.append(b"x" * 10)
    held = HeldRingReservation(ring, b"y" * 5)
    snap = ring.current_buffer
    assert (snap.index, snap.offset, snap.writers, snap.sealed, snap.flushing) == (0, 15, 1, False, False)
    held.release()
    assert ring.current_buffer.writers == 0
    ring.rotate()
    assert ring.current_buffer == cbuffer.BufferState(1, 0, 0, False, False)
    ring.append(b"z" * 4096)
    ring.rotate()  # both sealed, nothing dispatched: the current one is still closed
    snap = ring.current_buffer
    assert snap.index == 0 and snap.sealed and snap.flushing
    ring.flush()
    assert ring.current_buffer == cbuffer.BufferState(0, 0, 0, False, False)
    assert collector.data == b"x" * 10 + b"y" * 5 + b"z" * 4096
    ring.close()


def test_auto_flush_false_waits_for_flush(collector):
    ring = cbuffer.BufferRing(2, 4096, collector, auto_flush=False)
    for i in range(2 * 4096 // 64):
        ring.append(bytes([i % 256]) * 64)
    time.sleep(0.05)
    assert collector.chunks == []  # sealed buffers wait for flush()
    # The ring is full: the next append waits (GIL released) for a flush.
    appended = threading.Event()
    th = threading.Thread(target=lambda: (ring.append(b"next"), appended.set()))
    th.start()
    time.sleep(0.05)
    assert not appended.is_set()
    ring.flush()
    th.join(DEADLINE)
    assert appended.is_set()
    ring.flush()
    assert collector.data[:8192] == b"".join(bytes([i % 256]) * 64 for i in range(128))
    assert collector.data[8192:] == b"next"
    ring.close()


def test_auto_rotate_false_raises_buffer_full_until_rotate(collector):
    ring = cbuffer.BufferRing(2, 4096, collector, auto_rotate=False)
    assert not ring.auto_rotate and ring.auto_flush
    ring.append(b"a" * 4000)
    with pytest.raises(cbuffer.BufferFull):
        ring.append(b"b" * 100)
    assert ring.tell() == 4000  # nothing written
    ring.append(b"c" * 96)  # what fits still goes in
    ring.rotate()
    assert ring.append(b"b" * 100) == 4096
    ring.flush()
    assert collector.data == b"a" * 4000 + b"c" * 96 + b"b" * 100
    ring.close()


# ---------------------------------------------------------------- backpressure

def test_exhaustion_waits_then_recovers():
    sink = GatedSink()
    ring = cbuffer.BufferRing(2, 4096, sink)
    told = {}

    def writer(tid):
        for seq in range(200):
            rec = make_record(tid, seq, 100, 0)
            told[(tid, seq)] = ring.append(rec)

    threads = [threading.Thread(target=writer, args=(tid,)) for tid in range(4)]
    for th in threads:
        th.start()
    # The sink is stuck on the first buffer; the writers fill the second and
    # then wait -- without the GIL, or this thread could not run.
    wait_for(lambda: ring.stats()["ring_full_waits"] > 0, "a writer to wait for space")
    assert sink.calls == 1 and all(th.is_alive() for th in threads)
    assert len(told) < 800
    sink.gate.set()
    for th in threads:
        th.join(DEADLINE)
        assert not th.is_alive()
    ring.flush()
    records = parse(sink.data)
    assert len(records) == 800
    for rec in records:
        assert told[(rec.tid, rec.seq)] == rec.at
    ring.close()


def test_exhaustion_does_not_grow_memory():
    sink = GatedSink()
    ring = cbuffer.BufferRing(2, 4096, sink)
    th = threading.Thread(target=lambda: [ring.append(b"x" * 512) for _ in range(100)])
    th.start()
    wait_for(lambda: ring.stats()["ring_full_waits"] > 0, "the writer to wait")
    # 2 buffers of 4096: 16 appends in, the 17th waits.
    assert ring.tell() == 2 * 4096
    sink.gate.set()
    th.join(DEADLINE)
    ring.flush()
    assert sink.data == b"x" * 51200
    ring.close()


# ---------------------------------------------------------------- contention

@pytest.mark.parametrize("threads", [2, 4, 8, 16])
def test_seal_and_rotate_under_contention(collector, threads):
    ring = cbuffer.BufferRing(4, 4096, collector)
    hammer_ring(ring, threads, 10000, 28, 300)
    ring.flush()
    check_stream(collector.data, threads, 10000)
    stats = ring.stats()
    assert stats["writes"] == threads * 10000
    assert stats["bytes_written"] == len(collector.data)
    ring.close()


@pytest.mark.parametrize("threads", [2, 16])
def test_a_million_appends_lose_and_corrupt_nothing(tmp_path, threads):
    path = tmp_path / "million"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        ring = cbuffer.BufferRing(4, 16384, fd)
        per_thread = -(-1_000_000 // threads)
        hammer_ring(ring, threads, per_thread, 28, 64)
        ring.close()
    finally:
        os.close(fd)
    records = check_stream(read_file(path), threads, per_thread)
    assert len(records) >= 1_000_000


HELP_SCRIPT = r"""
import os, sys
import cbuffer
from cbuffer._testing import hammer_ring, park_flusher

path, threads, per_thread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
ring = cbuffer.BufferRing(4, 4096, fd)
park_flusher(ring)
hammer_ring(ring, threads, per_thread, 28, 64)
print(ring.stats()["syscalls"])
ring.close()
os.close(fd)
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_writers_hand_full_buffers_to_a_file_themselves(tmp_path, threads):
    """C-level appends into a regular file: a writer that finds every buffer sealed writes
    them out itself when no flusher does, instead of waiting for one (a flusher that cannot
    get a CPU while the writers have them all; here, none at all).  In a child process: if
    the writers waited, they would wait forever."""
    path = tmp_path / "helped"
    per_thread = 20000
    try:
        proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT, str(path), str(threads),
                               str(per_thread)], capture_output=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    except subprocess.TimeoutExpired:
        pytest.fail("the writers waited for a flusher that was not there")
    assert proc.returncode == 0, proc.stderr.decode()
    assert int(proc.stdout) > 0  # the writers' own writev()s, before close()
    check_stream(read_file(path), threads, per_thread)


def test_writers_and_explicit_flushes_race(collector):
    ring = cbuffer.BufferRing(3, 4096, collector)
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            ring.flush()

    th = threading.Thread(target=flusher)
    th.start()
    try:
        hammer_ring(ring, 8, 10000, 28, 100)
    finally:
        stop.set()
        th.join(DEADLINE)
    ring.flush()
    check_stream(collector.data, 8, 10000)
    ring.close()


# ---------------------------------------------------------------- sinks

def test_fd_sink(tmp_path):
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    ring = cbuffer.BufferRing(2, 4096, fd)
    for i in range(3000):
        ring.append(b"line %06d\n" % i)
    ring.close()
    os.close(fd)
    assert read_file(path) == b"".join(b"line %06d\n" % i for i in range(3000))


def test_sink_short_writes_are_continued():
    got = []

    def sink(view):
        got.append(bytes(view[:7]))
        return min(7, len(view))

    ring = cbuffer.BufferRing(2, 4096, sink)
    payload = bytes(range(256)) * 20
    for i in range(0, len(payload), 100):
        ring.append(payload[i:i + 100])
    ring.flush()
    assert b"".join(got) == payload
    ring.close()


def test_sink_view_is_read_only_and_only_valid_during_the_call():
    kept = []
    ring = cbuffer.BufferRing(2, 4096, kept.append)
    ring.append(b"abc")
    ring.flush()
    assert len(kept) == 1
    with pytest.raises(ValueError):
        bytes(kept[0])  # released after the call: no dangling pointer into the ring
    ring.close()


def test_sink_error_is_sticky_and_clear_error_retries_once_in_order():
    calls = []
    fail = [True]

    def sink(view):
        if fail[0]:
            raise OSError(28, "No space left on device")
        calls.append(bytes(view))

    ring = cbuffer.BufferRing(2, 4096, sink)
    ring.append(b"one ")
    with pytest.raises(OSError, match="No space"):
        ring.flush()
    with pytest.raises(OSError, match="No space"):
        ring.flush()  # sticky: raised again, nothing retried behind our back
    assert isinstance(ring.error, OSError)
    fail[0] = False
    ring.clear_error()
    assert ring.error is None
    ring.append(b"two")
    ring.flush()
    assert calls == [b"one ", b"two"]
    ring.close()


def test_sink_returning_nonsense_is_an_error():
    ring = cbuffer.BufferRing(2, 4096, lambda view: "all of it")
    ring.append(b"abc")
    with pytest.raises(OSError, match="sink returned 'all of it' for a write of 3 bytes"):
        ring.flush()
    with pytest.raises(OSError):
        ring.close()
    assert ring.closed


def test_close_flushes_and_refuses_appends(collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    ring.append(b"tail")
    ring.close()
    assert collector.data == b"tail" and ring.closed
    with pytest.raises(ValueError, match="closed"):
        ring.append(b"more")
    ring.close()  # idempotent


def test_stats_utilization(collector):
    ring = cbuffer.BufferRing(2, 4096, collector)
    for _ in range(100):
        ring.append(b"x" * 1000)  # 4 per buffer: 4000 of 4096 used
    ring.flush()
    stats = ring.stats()
    assert stats["writes"] == 100 and stats["bytes_written"] == 100_000
    assert stats["flushes"] == 25
    assert stats["utilization"] == pytest.approx(100_000 / (25 * 4096))
    ring.close()


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 4096) | st.sampled_from([0, 4096]), max_size=30),
       flush_every=st.integers(1, 12))
def test_property_random_sizes_reach_the_sink_in_order(sizes, flush_every):
    chunks = []
    ring = cbuffer.BufferRing(2, 4096, lambda v: chunks.append(bytes(v)))
    expected = bytearray()
    for i, n in enumerate(sizes):
        payload = bytes([i % 256]) * n
        assert ring.append(payload) == len(expected)
        expected += payload
        if i % flush_every == 0:
            ring.flush()
            assert b"".join(chunks) == expected
    ring.close()
    assert b"".join(chunks) == expected
    assert all(0 < len(c) <= 4096 for c in chunks)
