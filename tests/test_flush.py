"""flush() on the caller's thread: the guarantee, the order, and the races.

For an fd sink flush() writes the finished bytes itself (no round trip to the
flusher), and several threads flushing at once share one hand-over.  Every
check reads what the sink really holds.
"""
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
TESTS = os.path.dirname(os.path.abspath(__file__))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def run_threads(target, n):
    errors = []

    def wrap(tid):
        try:
            target(tid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


@pytest.mark.parametrize("kind", ["fd", "python-raw"])
def test_every_flush_finds_everything_before_it_on_the_sink(tmp_path, kind):
    """8 threads write a record and flush, over and over: when a flush
    returns, the file holds at least every byte of every write that
    returned before the flush was called (by any thread)."""
    path = tmp_path / "f"
    f = open(path, "wb", buffering=0)
    w = CBW(f.fileno() if kind == "fd" else f, buffer_size=4096, closefd=False)
    ends = [0] * 8
    short = []

    def worker(tid):
        rng = random.Random(tid)
        for seq in range(400):
            rec = make_record(tid, seq, rng.randint(28, 700), 0)
            ends[tid] = w.append(rec) + len(rec)
            snap = max(ends)
            w.flush()
            have = os.fstat(f.fileno()).st_size
            if have < snap:
                short.append((have, snap))

    run_threads(worker, 8)
    w.close()
    f.close()
    assert not short, short[:5]
    recs = parse(read(path))
    assert len(recs) == 8 * 400
    for tid in range(8):
        assert [r.seq for r in recs if r.tid == tid] == list(range(400))


def test_flushes_combine_under_contention():
    """While one flush is blocked in the sink (a full pipe), other threads'
    flushes wait for it instead of each writing on their own; when the sink
    moves, their records go in very few system calls, in order."""
    r, wfd = os.pipe()
    os.set_blocking(wfd, False)
    try:
        while True:
            os.write(wfd, b"\0" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(wfd, True)
    w = CBW(wfd, buffer_size=1 << 20, closefd=False)
    first_in = threading.Event()

    def first():
        w.write(make_record(0, 0, 100, 0))
        first_in.set()
        w.flush()  # blocks in writev: the pipe is full

    def others(tid):
        first_in.wait(DEADLINE)
        time.sleep(0.05)
        w.write(make_record(tid, 0, 100, 0))
        w.flush()

    threads = [threading.Thread(target=first)]
    threads += [threading.Thread(target=others, args=(t,)) for t in range(1, 8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    before = w.stats()["syscalls"]
    got = bytearray()
    os.set_blocking(r, False)
    end = time.monotonic() + DEADLINE
    while any(t.is_alive() for t in threads) and time.monotonic() < end:
        try:
            got += os.read(r, 1 << 16)
        except BlockingIOError:
            time.sleep(0.001)
    for t in threads:
        t.join(1)
    assert not any(t.is_alive() for t in threads)
    calls = w.stats()["syscalls"] - before
    w.close()
    os.set_blocking(r, True)
    os.close(wfd)
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        got += chunk
    os.close(r)
    # 8 flushes; the 7 that waited were combined into one or two writev
    # calls after the first one's (plus its short writes as the pipe drains).
    assert calls <= 6, calls
    data = bytes(got).lstrip(b"\0")
    assert sorted((x.tid, x.seq) for x in parse(data)) == [(t, 0) for t in range(8)]


def test_flush_racing_close(tmp_path):
    """flush() from several threads while another closes: each flush returns
    (its bytes on the file) or raises ValueError; nothing hangs or is lost."""
    for round_ in range(10):
        path = tmp_path / f"c{round_}"
        w = cbuffer.open(path, buffer_size=4096, buffer_count=2)
        landed = [[] for _ in range(4)]
        start = threading.Barrier(5)

        def worker(tid):
            start.wait(DEADLINE)
            for seq in range(10 ** 6):
                rec = make_record(tid, seq, 28 + seq % 200, 0)
                try:
                    w.write(rec)
                except ValueError:
                    return
                landed[tid].append(seq)
                try:
                    w.flush()
                except ValueError as exc:
                    assert str(exc) == "flush of closed file"
                    return

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        start.wait(DEADLINE)
        time.sleep(0.01 * (1 + round_ % 3))
        w.close()
        for t in threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in threads)
        recs = parse(read(path))
        for tid in range(4):
            assert [x.seq for x in recs if x.tid == tid] == landed[tid]


def test_flush_racing_a_sticky_error_and_clear_error(tmp_path):
    """The fd is pointed at /dev/full and back under the writer while threads
    write and flush: a flush either raises the sticky ENOSPC or returns with
    its bytes on the file; after clear_error() everything accepted arrives
    once, in order."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    path = tmp_path / "e"
    real = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    full = os.open("/dev/full", os.O_WRONLY)
    fd = os.dup(real)
    w = CBW(fd, buffer_size=4096, closefd=False)
    stop = threading.Event()
    accepted = [[] for _ in range(4)]
    short = []

    def toggler():
        rng = random.Random(1)
        while not stop.wait(rng.uniform(0.001, 0.005)):
            os.dup2(full, fd)
            time.sleep(rng.uniform(0.0002, 0.001))
            os.dup2(real, fd)
            w.clear_error()

    def worker(tid):
        for seq in range(300):
            rec = make_record(tid, seq, 28 + seq % 300, 0)
            while True:
                try:
                    pos = w.append(rec)
                    break
                except OSError:
                    time.sleep(0.0005)  # refused: not accepted; try again
            accepted[tid].append(seq)
            try:
                w.flush()
            except OSError:
                continue
            if os.fstat(real).st_size < pos + len(rec):
                short.append(tid)

    t = threading.Thread(target=toggler)
    t.start()
    run_threads(worker, 4)
    stop.set()
    t.join(DEADLINE)
    os.dup2(real, fd)
    w.clear_error()
    w.close()
    for x in (fd, real, full):
        os.close(x)
    assert not short
    recs = parse(read(path))
    for tid in range(4):
        assert [x.seq for x in recs if x.tid == tid] == accepted[tid]


def test_flush_racing_fork(tmp_path):
    """A thread flushes record after record while the main thread forks:
    the parent's file gets every record once, the child's output only its
    own."""
    script = textwrap.dedent("""
        import os, sys, threading, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        sys.path.insert(0, sys.argv[2])
        import cbuffer
        from cbuffer._testing import make_record
        from records import parse
        path = sys.argv[1]
        w = cbuffer.open(path, "wb", buffer_size=4096)
        stop = threading.Event()
        count = [0]
        def flusher():
            seq = 0
            while not stop.is_set():
                w.write(make_record(0, seq, 100, 0))
                w.flush()
                seq += 1
            count[0] = seq
        t = threading.Thread(target=flusher)
        t.start()
        for k in range(5):
            pid = os.fork()
            if pid == 0:
                out = os.open(path + f".{k}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(out, w.fileno())
                w.write(make_record(9, k, 50, 0))
                w.close()
                os._exit(0)
            os.waitpid(pid, 0)
        stop.set()
        t.join()
        w.close()
        recs = parse(open(path, "rb").read())
        assert [r.seq for r in recs] == list(range(count[0])), "parent records"
        for k in range(5):
            child = parse(open(path + f".{k}", "rb").read())
            assert [(r.tid, r.seq) for r in child] == [(9, k)], child
        print("ok", count[0])
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p"), TESTS],
                              env=env, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("fork during flushes hung")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"ok")


def test_line_buffering_costs_one_write_per_line(tmp_path):
    """A write containing a newline with line_buffering=True goes out on the
    calling thread in about one system call."""
    path = tmp_path / "lb"
    w = cbuffer.open(path, line_buffering=True)
    before = w.stats()["syscalls"]
    for i in range(200):
        w.write(b"line %d\n" % i)
    calls = w.stats()["syscalls"] - before
    w.close()
    assert read(path) == b"".join(b"line %d\n" % i for i in range(200))
    assert calls <= 210, calls


def test_layer2_flush_runs_on_the_caller(tmp_path):
    """BufferRing.flush() with an fd sink hands the buffer over itself: it
    works with the flusher parked (as it is across a fork)."""
    path = tmp_path / "ring"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    ring = cbuffer.BufferRing(2, 4096, fd)
    ring._before_fork()      # park the flusher and hold the dispatch lock ...
    ring._after_fork_in_parent()  # ... and let go of the lock: no flusher now
    for i in range(100):
        ring.append(b"%03d;" % i)
    ring.flush()
    assert read(path) == b"".join(b"%03d;" % i for i in range(100))
    ring.close()
    os.close(fd)
