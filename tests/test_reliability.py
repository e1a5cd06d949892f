"""Defects found when cbuffer was tried as its users would, each pinned by a
test that failed before its fix: a large write returning before the sink had
its bytes, sticky errors raised as one ever-growing exception or lost by a
racing clear_error(), a second close() returning early, waits that never end.
(Raw kinds, signals and process life have files of their own.)
"""
import errno
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cbuffer
from cbuffer import ConcurrentBufferedWriter as CBW
from cbuffer._testing import make_record
from records import parse

DEADLINE = 20.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------ large writes

@pytest.mark.parametrize("kind", ["fd", "python-raw"])
def test_large_write_returns_only_once_the_sink_has_it(tmp_path, kind):
    """A write larger than a buffer is handed over without a copy, so the
    caller's buffer must not be read after write() returns.  Writers scribble
    over their bytearray the moment write() returns, with one buffer in the
    ring (where a generation is reused soonest) and small writers racing:
    every record must still arrive intact, once, in each thread's order."""
    path = tmp_path / "large"
    f = open(path, "wb")
    raw = f.fileno() if kind == "fd" else f
    w = CBW(raw, buffer_size=4096, buffer_count=1, closefd=False)
    errors = []

    def worker(tid):
        try:
            rng = random.Random(tid)
            for seq in range(150):
                size = rng.choice([rng.randint(28, 300), rng.randint(5000, 30000)])
                rec = bytearray(make_record(tid, seq, size, 0))
                w.write(rec)
                rec[:] = b"\xee" * len(rec)  # the writer's buffer is ours again
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    w.close()
    f.close()
    assert not errors, errors
    recs = parse(read(path))
    assert len(recs) == 6 * 150
    for tid in range(6):
        assert [r.seq for r in recs if r.tid == tid] == list(range(150))


# ------------------------------------------------------------------ sticky errors

class FullRaw:
    """A write()-only raw that is always out of space."""

    def write(self, b):
        raise OSError(errno.ENOSPC, "no space left (raw)")


@pytest.mark.parametrize("kind", ["fd", "python-raw"])
def test_sticky_error_is_a_fresh_exception_each_time(kind):
    """Raising the same exception object again appends to its traceback
    each time (60,008 entries after 10,000 raises).  Each raise is a new
    exception of the same type, errno and message instead."""
    w = CBW(os.open("/dev/full", os.O_WRONLY) if kind == "fd" else FullRaw())
    w.write(b"x" * 100)
    depths, messages = [], set()
    for _ in range(500):
        try:
            w.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            messages.add(str(exc))
            tb, depth = exc.__traceback__, 0
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
            del exc
    # the first raise comes from inside the failing flush, the rest from the
    # sticky check; none grows
    assert len(depths) == 500 and len(set(depths[1:])) == 1 and depths[1] <= depths[0]
    assert len(messages) == 1
    with pytest.raises(OSError):
        w.close()


def test_clear_error_racing_flush_never_fakes_a_flush():
    """The error word and its exception change together: a flush() that
    meets an error cleared meanwhile goes on flushing, and never returns
    without having handed its bytes over."""
    got = bytearray()
    fail = [True]
    lock = threading.Lock()

    def sink(view):
        with lock:
            if fail[0] and random.random() < 0.5:
                raise OSError(errno.EIO, "flaky sink")
            got.extend(view)

    ring = cbuffer.BufferRing(4, 4096, sink)
    stop = threading.Event()
    bad, errors, accepted = [], [], []

    def flusher(tid):
        try:
            for i in range(300):
                try:
                    ring.append(b"%d:%d;" % (tid, i))
                except OSError:
                    continue  # refused while the error was set: not accepted
                accepted.append(b"%d:%d" % (tid, i))
                target = ring.tell()
                try:
                    ring.flush()
                except OSError:
                    continue
                with lock:
                    if len(got) < target:
                        bad.append((len(got), target))
        except BaseException as exc:
            errors.append(exc)

    def clearer():
        while not stop.is_set():
            ring.clear_error()
            time.sleep(0.0002)

    c = threading.Thread(target=clearer)
    c.start()
    threads = [threading.Thread(target=flusher, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    stop.set()
    c.join(DEADLINE)
    fail[0] = False
    ring.clear_error()
    ring.close()
    assert not errors, errors
    assert not bad, bad[:5]
    # nothing lost or doubled in the end
    parts = bytes(got).split(b";")[:-1]
    assert sorted(parts) == sorted(accepted)


def test_layer2_clear_error_after_failed_close_then_flush_returns():
    """After close() raised the sticky error, clear_error() and flush() hand
    the queued bytes over (on the calling thread: the flusher has gone)
    instead of waiting forever for it."""
    got = bytearray()
    broken = [True]

    def sink(view):
        if broken[0]:
            raise OSError(errno.ENOSPC, "full")
        got.extend(view)

    ring = cbuffer.BufferRing(2, 4096, sink)
    ring.append(b"queued before close")
    with pytest.raises(OSError):
        ring.close()
    broken[0] = False
    ring.clear_error()
    done = threading.Event()
    t = threading.Thread(target=lambda: (ring.flush(), done.set()))
    t.start()
    t.join(5)
    assert done.is_set(), "flush() after clear_error() on a closed ring hung"
    assert bytes(got) == b"queued before close"


# ------------------------------------------------------------------ close

def test_second_close_returns_only_when_the_first_has_finished():
    """A close() racing another returns once the first has flushed and
    closed raw, not as soon as it sees the writer closing."""
    class SlowFlush:
        def __init__(self):
            self.data = bytearray()
            self.closed = False
            self.in_flush = threading.Event()

        def write(self, b):
            self.data += b
            return len(b)

        def flush(self):
            self.in_flush.set()
            time.sleep(0.3)

        def close(self):
            self.closed = True

    raw = SlowFlush()
    w = CBW(raw)
    w.write(b"payload")
    first = threading.Thread(target=w.close)
    first.start()
    assert raw.in_flush.wait(5)
    w.close()  # the second
    assert raw.closed and bytes(raw.data) == b"payload" and w.closed
    first.join(5)


def test_writer_waiting_for_room_is_woken_by_close():
    """close() wakes writers waiting for ring space: once it has shut the
    ring they get ValueError at once, not after a wait of their own."""
    r, wfd = os.pipe()
    os.set_blocking(wfd, False)
    try:
        while True:
            os.write(wfd, b"\0" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(wfd, True)
    w = CBW(wfd, buffer_size=4096, buffer_count=2, closefd=False)
    outcome = []

    def blocked_writer():
        try:
            while True:
                w.write(b"y" * 3000)
        except ValueError as exc:
            outcome.append((time.monotonic(), str(exc)))

    t = threading.Thread(target=blocked_writer)
    t.start()
    time.sleep(0.3)  # the ring is full by now and the writer waits for room
    closing = threading.Thread(target=w.close)
    closing.start()
    time.sleep(0.2)
    drained = bytearray()
    os.set_blocking(r, False)
    end = time.monotonic() + DEADLINE
    while closing.is_alive() and time.monotonic() < end:  # the reader resumes
        try:
            drained += os.read(r, 1 << 16)
        except BlockingIOError:
            time.sleep(0.002)
    closed_at = time.monotonic()
    t.join(5)
    os.close(wfd)
    os.close(r)
    assert not closing.is_alive()
    assert outcome and outcome[0][1] == "write to closed file"
    assert outcome[0][0] - closed_at < 0.5


# ------------------------------------------------------------------ odd raws

def test_raw_with_negative_tell_is_treated_as_unseekable():
    """A raw whose tell() is negative made the constructor raise
    OverflowError; positions simply start at 0 then."""
    class Odd:
        def __init__(self):
            self.data = bytearray()

        def seekable(self):
            return True

        def tell(self):
            return -1

        def write(self, b):
            self.data += b

    raw = Odd()
    w = CBW(raw)
    assert w.append(b"abc") == 0 and w.tell() == 3
    w.close()
    assert bytes(raw.data) == b"abc"


def test_zero_byte_write_on_a_full_ring_returns_at_once():
    w = CBW(os.open(os.devnull, os.O_WRONLY), buffer_size=4096, buffer_count=1, auto_flush=False)
    w.write(b"z" * 4096)  # the one buffer is full and waits for flush()
    with pytest.raises(BlockingIOError):
        w.write(b"z")
    assert w.write(b"") == 0
    assert w.append(b"") == 4096
    w.close()


# ------------------------------------------------------------------ exit

def test_exit_with_a_stuck_python_raw_is_bounded(tmp_path):
    """At exit, a flusher stuck inside a Python raw's write() is waited for
    a bounded time, not forever."""
    script = textwrap.dedent("""
        import sys, time, threading, cbuffer
        entered = threading.Event()
        class Stuck:
            def write(self, b):
                entered.set()
                while True:
                    time.sleep(0.05)
        w = cbuffer.ConcurrentBufferedWriter(Stuck(), buffer_size=4096)
        for _ in range(3):
            w.write(b"x" * 3000)   # fills a buffer: the flusher calls write() and sticks
        entered.wait(5)
        w.write(b"more")
        print("exiting", flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: its exit waited for a stuck raw forever")
    assert b"exiting" in proc.stdout
    assert time.monotonic() - t0 < 25
