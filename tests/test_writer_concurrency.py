"""Layer 3 with many threads: guarantees 8 and 9 checked byte by byte.

16 writer threads append self-identifying records (cbuffer._testing
.make_record: magic, thread, seq, length, crc32).  Each thread keeps the
position append() returned for every record; after close() the sink's bytes
are read back and every record must sit exactly where its writer was told,
whole, contiguous with its neighbours, in its thread's order, none missing
and none twice.
"""
import io
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from itertools import cycle

import pytest

import cbuffer
from cbuffer import ConcurrentBufferedWriter as CBW
from cbuffer._testing import MIN_RECORD, make_record
from records import parse

DEADLINE = 30.0
THREADS = 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def run_threads(target, n, *args):
    """Start ``n`` threads on target(tid, barrier, *args); join with a
    deadline (a hang is a failure); re-raise the first error."""
    barrier = threading.Barrier(n)
    errors = []

    def body(tid):
        try:
            target(tid, barrier, *args)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + DEADLINE
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "writer threads hung"
    if errors:
        raise errors[0]


def record_sizes(tid, count, big_every=0, big=(5000, 20000), seed=0):
    rng = random.Random(tid * 7919 + seed)
    sizes = []
    for seq in range(count):
        if big_every and seq % big_every == big_every - 1:
            sizes.append(rng.randint(*big))
        else:
            sizes.append(rng.randint(MIN_RECORD, 300))
    return sizes


def check(data, returned, base=0):
    """``returned``: per thread, a list of (seq, length, position) in the
    order that thread appended.  Checks guarantees 8 and 9 on ``data`` (the
    sink's bytes, starting at stream position ``base``)."""
    records = parse(data, base)  # contiguity + integrity of every record
    at = {}
    for rec in records:
        key = (rec.tid, rec.seq)
        assert key not in at, f"record {key} landed twice"
        at[key] = rec
    expected = sum(len(r) for r in returned)
    assert len(records) == expected, f"{len(records)} records in the sink, {expected} written"
    for tid, mine in enumerate(returned):
        last = -1
        for seq, length, pos in mine:
            rec = at.get((tid, seq))
            assert rec is not None, f"thread {tid} seq {seq} missing"
            assert rec.length == length
            assert rec.at == pos, (
                f"thread {tid} seq {seq}: append() returned {pos}, landed at {rec.at}")
            assert pos > last, f"thread {tid}: seq {seq} landed before its predecessor"
            last = pos
    assert base + len(data) == (records[-1].at + records[-1].length if records else base)


def hammer(w, per_thread, big_every=0, threads=THREADS, flush_every=0):
    """Append records from ``threads`` threads; returns what each was told."""
    returned = [[] for _ in range(threads)]

    def worker(tid, barrier):
        sizes = record_sizes(tid, per_thread, big_every)
        recs = [make_record(tid, seq, n, 0) for seq, n in enumerate(sizes)]
        out = returned[tid]
        append = w.append
        barrier.wait(DEADLINE)
        for seq, rec in enumerate(recs):
            out.append((seq, len(rec), append(rec)))
            if flush_every and seq % flush_every == 0:
                w.flush()

    run_threads(worker, threads)
    return returned


# ------------------------------------------------------------------ sinks

def test_16_threads_regular_file(tmp_path):
    path = tmp_path / "f"
    with cbuffer.open(path, buffer_size=4096, buffer_count=4) as w:
        returned = hammer(w, 400)
    check(read(path), returned)


def test_16_threads_with_large_writes(tmp_path):
    path = tmp_path / "f"
    with cbuffer.open(path, buffer_size=4096, buffer_count=2) as w:
        returned = hammer(w, 150, big_every=10)
    assert any(length > 4096 for r in returned for _, length, _ in r)
    check(read(path), returned)


def test_16_threads_default_geometry(tmp_path):
    path = tmp_path / "f"
    with cbuffer.open(path) as w:
        returned = hammer(w, 400, big_every=50, flush_every=97)
    check(read(path), returned)


def test_16_threads_append_mode_offsets_are_absolute(tmp_path):
    path = tmp_path / "f"
    prefix = b"P" * 777
    path.write_bytes(prefix)
    with cbuffer.open(path, "ab", buffer_size=8192) as w:
        returned = hammer(w, 200, big_every=25)
    data = read(path)
    assert data[:777] == prefix
    check(data[777:], returned, base=777)


def test_16_threads_fd_lseeked(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    os.lseek(fd, 100, os.SEEK_SET)
    with CBW(fd, buffer_size=4096) as w:
        returned = hammer(w, 200)
    data = read(path)
    assert data[:100] == b"\0" * 100
    check(data[100:], returned, base=100)


def _drain(fd_or_sock, got):
    recv = fd_or_sock.recv if isinstance(fd_or_sock, socket.socket) else \
        (lambda n: os.read(fd_or_sock, n))
    while True:
        chunk = recv(1 << 16)
        if not chunk:
            return
        got.extend(chunk)


@pytest.mark.parametrize("nonblocking", [False, True], ids=["blocking", "nonblocking"])
def test_16_threads_pipe(nonblocking):
    r, wfd = os.pipe()
    if nonblocking:
        os.set_blocking(wfd, False)
    got = bytearray()
    rt = threading.Thread(target=_drain, args=(r, got))
    rt.start()
    try:
        with CBW(wfd, buffer_size=4096, buffer_count=4) as w:
            returned = hammer(w, 200, big_every=20)
    finally:
        rt.join(DEADLINE)
        os.close(r)
    assert not rt.is_alive()
    check(bytes(got), returned)


def test_16_threads_pipe_read_by_another_process(tmp_path):
    out = tmp_path / "copied"
    r, wfd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, open(sys.argv[1], 'wb'))",
         str(out)], stdin=r)
    os.close(r)
    try:
        with CBW(wfd, buffer_size=8192) as w:
            returned = hammer(w, 200, big_every=30)
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    check(read(out), returned)


def test_16_threads_socketpair():
    a, b = socket.socketpair()
    with a, b:
        got = bytearray()
        rt = threading.Thread(target=_drain, args=(b, got))
        rt.start()
        try:
            with CBW(a, buffer_size=4096, closefd=False) as w:
                returned = hammer(w, 200, big_every=20)
        finally:
            a.shutdown(socket.SHUT_WR)
            rt.join(DEADLINE)
        assert not rt.is_alive()
        check(bytes(got), returned)


def test_16_threads_bytesio():
    bio = io.BytesIO()
    with CBW(bio, buffer_size=4096, closefd=False) as w:
        returned = hammer(w, 200, big_every=20)
    check(bio.getvalue(), returned)
    bio.close()


def test_16_threads_short_writing_raw():
    got = bytearray()
    rng = random.Random(7)

    class ShortRaw:
        def write(self, b):
            n = min(len(b), rng.randint(1, 5000))
            got.extend(b[:n])
            return n

    with CBW(ShortRaw(), buffer_size=4096, buffer_count=3, closefd=False) as w:
        returned = hammer(w, 150, big_every=15)
    check(bytes(got), returned)


def test_16_threads_line_buffered(tmp_path):
    """line_buffering under contention: each record that holds a newline
    byte makes its write flush; positions still hold."""
    path = tmp_path / "f"
    with cbuffer.open(path, buffer_size=4096, line_buffering=True) as w:
        returned = hammer(w, 60)
    check(read(path), returned)


def test_flush_guarantee_under_contention(tmp_path):
    """When flush() returns, this thread's earlier appends are in the file,
    at the positions append() returned, while 15 others keep writing."""
    path = tmp_path / "f"
    rfd = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        with cbuffer.open(path, buffer_size=4096) as w:
            def worker(tid, barrier):
                barrier.wait(DEADLINE)
                for seq in range(60):
                    rec = make_record(tid, seq, MIN_RECORD + (seq * tid) % 200, 0)
                    pos = w.append(rec)
                    if seq % 4 == 0:
                        w.flush()
                        assert os.pread(rfd, len(rec), pos) == rec

            run_threads(worker, THREADS)
    finally:
        os.close(rfd)


def test_cpython_test_threads(tmp_path):
    """CPython's BufferedWriterTest.test_threads, with 20 threads popping 1-
    and 19-byte slices of a byte pattern off a shared queue."""
    N = 1000
    contents = bytes(range(256)) * N
    sizes = cycle([1, 19])
    n = 0
    queue = deque()
    while n < len(contents):
        size = next(sizes)
        queue.append(contents[n:n + size])
        n += size
    del contents
    path = tmp_path / "f"
    with open(path, "wb", buffering=0) as raw:
        bufio = CBW(raw, 4096, closefd=False)

        def f(tid, barrier):
            while True:
                try:
                    s = queue.popleft()
                except IndexError:
                    return
                assert bufio.write(s) == len(s)

        run_threads(f, 20)
        bufio.close()
    s = read(path)
    assert len(s) == 256 * N
    for i in range(256):
        assert s.count(bytes([i])) == N


# ------------------------------------------------------------------ close() racing writers

@pytest.mark.parametrize("big", [False, True], ids=["small", "with-large"])
def test_close_racing_writers(tmp_path, big):
    """close() while 8 threads write: each write either lands whole (and
    where append() said) or raises ValueError('write to closed file'),
    never both; nothing crashes or hangs."""
    for round_ in range(5):
        path = tmp_path / f"race{round_}"
        w = cbuffer.open(path, buffer_size=4096, buffer_count=2)
        landed = [[] for _ in range(8)]
        refused = [[] for _ in range(8)]
        errors = []
        started = threading.Barrier(9)

        def worker(tid):
            try:
                rng = random.Random(tid * 31 + round_)
                started.wait(DEADLINE)
                for seq in range(10 ** 7):
                    n = rng.randint(5000, 20000) if big and seq % 7 == 6 else \
                        rng.randint(MIN_RECORD, 300)
                    rec = make_record(tid, seq, n, 0)
                    try:
                        pos = w.append(rec)
                    except ValueError as exc:
                        assert str(exc) == "write to closed file"
                        refused[tid].append(seq)
                        return
                    landed[tid].append((seq, n, pos))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        started.wait(DEADLINE)
        time.sleep(0.01 + 0.01 * round_)
        w.close()
        w.close()
        for t in threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in threads), "a racing writer hung"
        assert not errors, errors
        assert all(len(r) == 1 for r in refused), "every writer ends on ValueError"
        data = read(path)
        check(data, landed)  # each landed write is there, whole and where told
        present = {(rec.tid, rec.seq) for rec in parse(data)}
        for tid, seqs in enumerate(refused):
            for seq in seqs:
                assert (tid, seq) not in present, "a refused write landed too"


def test_flush_and_tell_racing_close(tmp_path):
    path = tmp_path / "f"
    w = cbuffer.open(path, buffer_size=4096)
    outcomes = []
    go = threading.Event()

    def flusher():
        go.wait(DEADLINE)
        while True:
            try:
                w.write(b"x")
                w.flush()
                w.tell()
            except ValueError:
                outcomes.append("closed")
                return

    threads = [threading.Thread(target=flusher) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.05)
    w.close()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert outcomes == ["closed"] * 4
    data = read(path)
    assert data == b"x" * len(data)


def test_close_while_writers_wait_for_ring_space(tmp_path):
    """Writers blocked on a full ring (slow sink) when close() comes: they
    either land or get ValueError; close() does not hang."""
    got = bytearray()

    class SlowRaw:
        def write(self, b):
            time.sleep(0.002)
            got.extend(b)

    w = CBW(SlowRaw(), buffer_size=4096, buffer_count=1, closefd=False)
    landed = [[] for _ in range(8)]
    closed = []

    def worker(tid, barrier):
        barrier.wait(DEADLINE)
        for seq in range(10 ** 6):
            rec = make_record(tid, seq, 1000, 0)
            try:
                landed[tid].append((seq, 1000, w.append(rec)))
            except ValueError:
                closed.append(tid)
                return

    closer = threading.Timer(0.2, w.close)
    closer.start()
    run_threads(worker, 8)
    closer.join(DEADLINE)
    assert not closer.is_alive()
    assert sorted(closed) == list(range(8))
    check(bytes(got), landed)


# ------------------------------------------------------------------ signal handler re-entry

SIGNAL_SCRIPT = r"""
import os, signal, sys, time, io
sys.path.insert(0, sys.argv[2])
import cbuffer
from cbuffer._testing import make_record
from records import parse

kind = sys.argv[3]
path = sys.argv[1]
if kind == "fd":
    w = cbuffer.open(path, buffer_size=4096, buffer_count=2)
elif kind == "raw-line":
    w = cbuffer.ConcurrentBufferedWriter(io.BufferedWriter(io.FileIO(path, "wb")),
                                         buffer_size=4096, buffer_count=2, line_buffering=True)
else:
    class SlowRaw:
        def __init__(self):
            self.f = open(path, "wb")
        def write(self, b):
            time.sleep(0.0005)
            self.f.write(b)
        def close(self):
            self.f.close()
    w = cbuffer.ConcurrentBufferedWriter(SlowRaw(), buffer_size=4096, buffer_count=1)

told = {}
handler_seq = [0]

def handler(signum, frame):
    seq = handler_seq[0]
    handler_seq[0] += 1
    # tid 1: the handler's records; a newline byte in the payload makes
    # line-buffered writers flush from inside the handler
    rec = make_record(1, seq, 60 + seq % 50, 0)
    told[(1, seq)] = w.append(rec)

signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
end = time.monotonic() + 0.7
seq = 0
while time.monotonic() < end or handler_seq[0] < 20:
    rec = make_record(0, seq, 28 + seq % 400, 0)
    told[(0, seq)] = w.append(rec)
    if seq % 50 == 0:
        w.flush()
    seq += 1
signal.setitimer(signal.ITIMER_REAL, 0, 0)
signal.signal(signal.SIGALRM, signal.SIG_DFL)
w.close()
with open(path, "rb") as f:
    data = f.read()
recs = parse(data)
assert len(recs) == len(told), (len(recs), len(told))
last = -1
for r in recs:
    assert told[(r.tid, r.seq)] == r.at, (r.tid, r.seq)
    if r.tid == 0:   # the main thread's order; handlers may nest, so their
        assert r.seq == last + 1, (r.seq, last)   # records need not be in seq order
        last = r.seq
assert last == seq - 1
assert sorted(r.seq for r in recs if r.tid == 1) == list(range(handler_seq[0]))
print(seq, handler_seq[0])
"""


@pytest.mark.parametrize("kind", ["fd", "raw-line",
                                  "slow-raw"])
def test_signal_handler_writes_while_main_thread_writes(tmp_path, kind):
    """A SIGALRM handler appends to the writer the main thread is appending
    to (and flushing): no deadlock, and the handler's records land where
    append() said.  Run in a subprocess so a deadlock is a timeout here."""
    path = tmp_path / "sig"
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, str(path), TESTS, kind],
                              env=env, capture_output=True, timeout=12)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a signal handler writing to the writer hung the process")
    assert proc.returncode == 0, proc.stderr.decode()
    main_n, handler_n = map(int, proc.stdout.split())
    assert main_n > 0 and handler_n >= 20


REENTRY_SCRIPT = r"""
import io, os, signal, cbuffer

class Raw(io.BytesIO):
    signalled = False
    def flush(self):
        if not Raw.signalled:   # a signal arrives while the first raw.flush() runs
            Raw.signalled = True
            os.kill(os.getpid(), signal.SIGUSR1)
        super().flush()

w = cbuffer.ConcurrentBufferedWriter(Raw(), line_buffering=True, closefd=False)
signal.signal(signal.SIGUSR1, lambda *a: w.write(b"from handler\n"))
w.write(b"main\n")
signal.signal(signal.SIGUSR1, signal.SIG_DFL)
w.close()
os.write(1, w.raw.getvalue())
"""


def test_signal_handler_writes_during_raw_flush():
    """The deterministic core of the raw-line case above: a line-buffered
    write's flush calls raw.flush(); a signal handler that runs inside it
    (io.BufferedWriter.flush runs handlers between its raw writes) writes a
    line to the same writer."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run([sys.executable, "-c", REENTRY_SCRIPT], env=env,
                              capture_output=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a handler's write inside raw.flush() never returns")
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(proc.stdout.splitlines()) == [b"from handler", b"main"]
