"""Every writer behaviour that takes a raw, over every kind of raw.

The ``sink`` fixture yields one raw of one kind and the means to read back
what its far end really received: a file on disk, the other end of a pipe or
socket (drained slowly by a reader thread, so the writer side really fills
and sees EAGAIN and short writes), a BytesIO's value, a gzip stream
decompressed, or the bytes a Python raw was handed.  Nothing here counts
successful calls: every check compares the bytes the sink got.
"""
import errno
import fcntl
import gc
import gzip
import io
import os
import random
import select
import socket
import struct
import threading
import time
import warnings
import weakref
import zlib

import pytest

from cbuffer import ConcurrentBufferedWriter as CBW
from cbuffer._testing import HEADER_SIZE, make_record
from records import check_stream, parse

DEADLINE = 10.0  # seconds: only turns a hang into a failure
THREADS = 8
PER_THREAD = 120
RING = 16384  # ring geometry for the thread tests: many rotations, some direct writes
SIZES = [0, 1, 100, 4095, 4096, 65535, 65536, 65537, 3 * 65536]
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def payload(n, seed=0):
    return random.Random(seed).randbytes(n)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def fd_closed(fd):
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def high_dup(fd):
    """Move ``fd`` far above what open() hands out, so that once the writer
    closes it no other file can take its number before teardown looks."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 600)
    os.close(fd)
    return new


def small_pipe():
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)  # one page: EAGAIN and short writes come early
    except OSError:
        pass
    return r, high_dup(w)


def small_socketpair():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def whole_records(data):
    """The records of ``data`` up to the last whole one: a sink read while
    writers go on may hold only part of a later write."""
    i = 0
    while i + HEADER_SIZE <= len(data):
        (length,) = struct.unpack_from("<I", data, i + 12)
        if length < HEADER_SIZE or i + length > len(data):
            break
        i += length
    return parse(data[:i])


def run_threads(target, n):
    errors = []

    def body(tid):
        try:
            target(tid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + DEADLINE
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "writer threads hung"
    if errors:
        raise errors[0]


# ------------------------------------------------------------------ far ends

class Drain:
    """Reads the far end of a pipe or socket in a thread, slowly (a pause
    after every 4 KiB), until EOF.  ``received()`` also takes whatever is
    readable right now, so it is exactly what was handed to the OS."""

    def __init__(self, fd, recv, delay=0.0005):
        os.set_blocking(fd, False)
        self.fd = fd
        self.recv = recv
        self.delay = delay
        self.data = bytearray()
        self.eof = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self, n):
        try:
            chunk = self.recv(n)
        except BlockingIOError:
            return False
        if not chunk:
            self.eof = True
            return False
        self.data += chunk
        return True

    def _run(self):
        while not self.eof:
            select.select([self.fd], [], [], 0.05)
            with self.lock:
                self._read(4096)
            time.sleep(self.delay)

    def received(self):
        with self.lock:
            while not self.eof and self._read(1 << 16):
                pass
            return bytes(self.data)

    def wait_eof(self):
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the far end never saw EOF: something still holds it open"
        return bytes(self.data)


class KeptBytesIO(io.BytesIO):
    """A BytesIO whose value can still be read after close()."""

    kept = None

    def close(self):
        if not self.closed:
            self.kept = self.getvalue()
        super().close()

    def value(self):
        return self.kept if self.closed else self.getvalue()


class ShortRaw(io.RawIOBase):
    """Takes at most a few bytes per call (1, 7, 100, 997, 4095 in turn).
    ``data`` is read from another thread: a lock keeps that safe on a
    free-threaded build."""

    def __init__(self):
        self._data = bytearray()
        self._lock = threading.Lock()
        self.takes = [1, 7, 100, 997, 4095]
        self.calls = 0

    @property
    def data(self):
        with self._lock:
            return bytes(self._data)

    def writable(self):
        return True

    def write(self, b):
        n = min(len(b), self.takes[self.calls % len(self.takes)])
        self.calls += 1
        with self._lock:
            self._data += bytes(memoryview(b)[:n])
        return n


class WriteOnlyCount:
    """Only a write() method, returning the byte count; nothing else.  (The
    lock: the test reads ``data`` from another thread, and on a free-threaded
    build bytes(bytearray) racing += raises BufferError.)"""

    __slots__ = ("_data", "_lock")

    def __init__(self):
        self._data = bytearray()
        self._lock = threading.Lock()

    @property
    def data(self):
        with self._lock:
            return bytes(self._data)

    def write(self, b):
        with self._lock:
            self._data += b
        return len(b)


class WriteOnlyNone(WriteOnlyCount):
    """Only a write() method, returning None (duck-typed: all taken)."""

    __slots__ = ()

    def write(self, b):
        super().write(b)


class Sink:
    """One raw and its far end.  ``received()``: what the far end holds now;
    ``final()``: everything, once our side is closed too; ``raw_closed()``:
    True/False, or None for a raw that has no close()."""

    def __init__(self, kind, raw, received, close_raw, raw_closed, write_direct,
                 drain=None, cleanup=()):
        self.kind = kind
        self.raw = raw
        self.received = received
        self._close_raw = close_raw
        self.raw_closed = raw_closed
        self.write_direct = write_direct
        self.drain = drain
        self._cleanup = list(cleanup)
        self.writers = weakref.WeakSet()

    def writer(self, **options):
        w = CBW(self.raw, **options)
        self.writers.add(w)
        return w

    def final(self):
        if self.raw_closed() is False:
            self._close_raw()
        if self.drain is not None:
            return self.drain.wait_eof()
        return self.received()

    def teardown(self):
        for w in list(self.writers):
            try:
                w.close()
            except Exception:
                pass  # the test already judged the writer; only release the raw
        try:
            if self.raw_closed() is False:
                self._close_raw()
        except Exception:
            pass
        if self.drain is not None:
            self.drain.thread.join(DEADLINE)
        for f in self._cleanup:
            f()


def make_fd(tmp_path):
    path = tmp_path / "fd.out"
    fd = high_dup(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
    return Sink("fd", fd, lambda: read(path), lambda: os.close(fd), lambda: fd_closed(fd),
                lambda b: os.write(fd, b))


def make_fileio(tmp_path):
    path = tmp_path / "fileio.out"
    raw = io.FileIO(path, "wb")
    return Sink("fileio", raw, lambda: read(path), raw.close, lambda: raw.closed, raw.write)


def make_socket(tmp_path):
    a, b = small_socketpair()
    drain = Drain(b.fileno(), b.recv)
    return Sink("socket", a, drain.received, a.close, lambda: a.fileno() == -1, a.sendall,
                drain, [b.close])


def make_socketio(tmp_path, nonblocking=False):
    a, b = small_socketpair()
    if nonblocking:
        a.setblocking(False)
    raw = a.makefile("wb", buffering=0)
    a.close()  # the SocketIO holds the socket; closing it closes the connection
    drain = Drain(b.fileno(), b.recv)

    def write_direct(data):
        view = memoryview(data)
        while view:
            n = raw.write(view)
            if n is None:
                select.select([], [raw], [], 1.0)
                continue
            view = view[n:]

    return Sink("socketio-nonblocking" if nonblocking else "socketio", raw, drain.received,
                raw.close, lambda: raw.closed, write_direct, drain, [b.close])


def make_pipe_nonblocking(tmp_path):
    r, w = small_pipe()
    os.set_blocking(w, False)
    drain = Drain(r, lambda n: os.read(r, n))

    def write_direct(data):
        os.set_blocking(w, True)
        os.write(w, data)

    return Sink("pipe-nonblocking", w, drain.received, lambda: os.close(w), lambda: fd_closed(w),
                write_direct, drain, [lambda: os.close(r)])


def make_buffered_pipe_nonblocking(tmp_path):
    r, w = small_pipe()
    os.set_blocking(w, False)
    raw = io.BufferedWriter(io.FileIO(w, "wb"), buffer_size=8192)
    drain = Drain(r, lambda n: os.read(r, n))

    def close_raw():
        os.set_blocking(w, True)  # a non-blocking BufferedWriter.close() may refuse to flush
        raw.close()

    def write_direct(data):
        os.set_blocking(w, True)
        raw.write(data)
        raw.flush()

    return Sink("buffered-pipe-nonblocking", raw, drain.received, close_raw, lambda: raw.closed,
                write_direct, drain, [lambda: os.close(r)])


def make_bytesio(tmp_path):
    raw = KeptBytesIO()
    return Sink("bytesio", raw, raw.value, raw.close, lambda: raw.closed, raw.write)


def make_gzip(tmp_path):
    inner = KeptBytesIO()
    raw = gzip.GzipFile(fileobj=inner, mode="wb", mtime=0)
    # what a reader can decompress so far (raw.flush() makes it a sync point)
    return Sink("gzip", raw, lambda: zlib.decompressobj(31).decompress(inner.value()),
                raw.close, lambda: raw.closed, raw.write)


def make_short_raw(tmp_path):
    raw = ShortRaw()

    def write_direct(data):
        view = memoryview(data)
        while view:
            view = view[raw.write(view):]

    return Sink("short-rawiobase", raw, lambda: bytes(raw.data), raw.close, lambda: raw.closed,
                write_direct)


def make_write_only(cls):
    def make(tmp_path):
        raw = cls()
        return Sink(cls.__name__, raw, lambda: bytes(raw.data), None, lambda: None, raw.write)
    return make


KINDS = {
    "fd": make_fd,
    "fileio": make_fileio,
    "socket": make_socket,
    "socketio": make_socketio,
    "pipe-nonblocking": make_pipe_nonblocking,
    "buffered-pipe-nonblocking": make_buffered_pipe_nonblocking,
    "socketio-nonblocking": lambda tmp_path: make_socketio(tmp_path, nonblocking=True),
    "bytesio": make_bytesio,
    "gzip": make_gzip,
    "short-rawiobase": make_short_raw,
    "write-only-int": make_write_only(WriteOnlyCount),
    "write-only-none": make_write_only(WriteOnlyNone),
}


@pytest.fixture(params=list(KINDS))
def sink(request, tmp_path):
    s = KINDS[request.param](tmp_path)
    yield s
    s.teardown()


# ------------------------------------------------------------------ the matrix

def test_mixed_sizes_single_thread_in_order(sink):
    """0 bytes to 3x buffer_size, small and large interleaved, as bytes,
    bytearray and memoryview: the sink gets exactly the concatenation."""
    sizes = SIZES + SIZES[::-1]
    kinds = [bytes, bytearray, memoryview]
    chunks = [kinds[i % 3](payload(n, i)) for i, n in enumerate(sizes)]
    w = sink.writer()
    for c in chunks:
        assert w.write(c) == len(c)
    w.close()
    assert sink.final() == b"".join(bytes(c) for c in chunks)


def test_threads_every_record_once_whole_in_order(sink):
    """8 threads of self-identifying records (some larger than a buffer):
    each record exactly once, whole, each thread's in order, each where
    append() said it would land."""
    w = sink.writer(buffer_size=RING, buffer_count=4)
    told = {}

    def worker(tid):
        for seq in range(PER_THREAD):
            size = 20000 if seq % 30 == 29 else 28 + (seq * 37 + tid * 11) % 1500
            told[(tid, seq)] = w.append(make_record(tid, seq, size, 0))

    run_threads(worker, THREADS)
    w.close()
    records = check_stream(sink.final(), THREADS, PER_THREAD, positions=False)
    for r in records:
        assert told[(r.tid, r.seq)] == r.at, f"record {(r.tid, r.seq)} not where append() said"


def test_flush_guarantee(sink):
    """When flush() returns, every write that returned before it was called
    is at the far end -- read straight from the sink, not counted."""
    w = sink.writer(buffer_size=RING)
    first = [payload(n, n) for n in (1, 100, 5000, 70000)]
    for c in first:
        w.write(c)
    w.flush()
    prefix = b"".join(first)
    assert sink.received() == prefix

    stop = threading.Event()
    returned = [-1] * 4

    def worker(tid):
        for seq in range(600):
            if stop.is_set():
                return
            w.write(make_record(tid, seq, 28 + (seq * 53) % 3000, 0))
            returned[tid] = seq
            if seq % 20 == 19:
                time.sleep(0.0005)  # paced, so flush() rounds overlap the writes

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            time.sleep(0.02)
            before = list(returned)
            w.flush()
            got = sink.received()
            assert got[:len(prefix)] == prefix
            seen = {}
            for r in whole_records(got[len(prefix):]):
                seen.setdefault(r.tid, []).append(r.seq)
            for tid, last in enumerate(before):
                assert seen.get(tid, [])[:last + 1] == list(range(last + 1)), (
                    f"thread {tid}: write {last} returned before flush() but is not in the sink")
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    w.close()
    data = sink.final()
    assert data[:len(prefix)] == prefix
    records = parse(data[len(prefix):])
    for tid in range(4):
        assert [r.seq for r in records if r.tid == tid] == list(range(returned[tid] + 1))


def test_close_idempotent_and_with(sink):
    data = [payload(n, n) for n in (10, 5000, 100000, 3)]
    with sink.writer() as w:
        for c in data:
            w.write(c)
    assert w.closed
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.write(b"x")
    assert sink.raw_closed() in (True, None), "close() left raw open (closefd=True)"
    assert sink.final() == b"".join(data)


def test_closefd_false_leaves_raw_usable(sink):
    w = sink.writer(closefd=False)
    w.write(b"through the writer|")
    w.write(payload(70000, 1))  # a direct write too
    w.close()
    w.close()
    assert sink.raw_closed() in (False, None), "closefd=False closed raw"
    sink.write_direct(b"|straight to raw")
    assert sink.final() == b"through the writer|" + payload(70000, 1) + b"|straight to raw"


def test_stats_bytes_written_is_what_the_sink_got(sink):
    w = sink.writer(buffer_size=RING)
    chunks = [payload(n, i) for i, n in enumerate([1, 4095, 4096, 30000, 17, 100000, 999])]
    for c in chunks:
        w.write(c)
    w.flush()
    got = sink.received()
    assert got == b"".join(chunks)
    assert w.stats()["bytes_written"] == len(got)
    w.write(b"tail")
    w.close()
    assert sink.final() == got + b"tail"


def test_zero_byte_write_returns_at_once_when_ring_full(sink):
    """auto_flush=False: fill every buffer until a write is refused; a
    0-byte write (of any buffer type) still returns 0 at once."""
    w = sink.writer(buffer_size=4096, buffer_count=2, auto_flush=False)
    held = []
    with pytest.raises(BlockingIOError) as exc:
        for i in range(10):
            chunk = bytes([65 + i]) * 4096
            w.write(chunk)
            held.append(chunk)
    assert exc.value.characters_written == 0
    assert held
    for empty in (b"", bytearray(), memoryview(b"abc")[:0]):
        t0 = time.monotonic()
        assert w.write(empty) == 0
        assert time.monotonic() - t0 < 0.1
    w.flush()
    assert sink.received() == b"".join(held)  # the refused write wrote nothing
    w.close()
    assert sink.final() == b"".join(held)


def test_tell_never_goes_backwards(sink):
    """A thread samples tell() while 8 threads write small and large
    records: the samples never decrease, and the last equals the bytes
    written."""
    w = sink.writer(buffer_size=RING, buffer_count=4)
    done = threading.Event()
    samples = []

    def sampler():
        while not done.is_set():
            samples.append(w.tell())
            time.sleep(0)  # lets the far end's reader have the GIL too

    total = [0] * THREADS

    def worker(tid):
        for seq in range(PER_THREAD):
            size = 20000 if seq % 20 == 19 else 28 + (seq * 41 + tid) % 2000
            w.write(make_record(tid, seq, size, 0))
            total[tid] += size

    st = threading.Thread(target=sampler)
    st.start()
    try:
        run_threads(worker, THREADS)
    finally:
        done.set()
        st.join(DEADLINE)
    samples.append(w.tell())
    back = [(a, b) for a, b in zip(samples, samples[1:]) if b < a]
    assert not back, f"tell() went backwards {len(back)} times, e.g. {back[:3]}"
    assert samples[-1] == sum(total)
    w.close()
    check_stream(sink.final(), THREADS, PER_THREAD, positions=False)


def redact(b):
    return bytes(b).replace(b"secret", b"XXXXXX")


class Redacting(CBW):
    def write(self, b):
        return super().write(redact(b))

    def append(self, b):
        return super().append(redact(b))


class FlushRecording(CBW):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.flushes = []

    def flush(self):
        self.flushes.append(self.closed)
        super().flush()


def test_subclass_write_override_is_honoured(sink):
    w = Redacting(sink.raw)
    sink.writers.add(w)
    w.write(b"user=alice password=secret\n")
    w.writelines([b"token secret\n", bytearray(b"no secret here\n")])
    w.append(b"secret appended\n")
    w.write(b"big " + b"secret " * 20000 + b"\n")  # larger than a buffer
    w.close()
    got = sink.final()
    assert b"secret" not in got
    assert got == (b"user=alice password=XXXXXX\ntoken XXXXXX\nno XXXXXX here\n"
                   b"XXXXXX appended\nbig " + b"XXXXXX " * 20000 + b"\n")


def test_close_calls_subclass_flush(sink):
    w = FlushRecording(sink.raw)
    sink.writers.add(w)
    w.write(b"flushed by close")
    w.close()
    assert w.flushes, "close() did not call the subclass's flush()"
    assert w.flushes[0] is False, "flush() ran after the writer was already closed"
    assert sink.final() == b"flushed by close"


# Kinds whose writer owns an OS file, directly (an fd written with writev) or
# through a raw that says so itself (io's _dealloc_warn: a FileIO under a
# BufferedWriter).  io.BufferedWriter over BytesIO, GzipFile, SocketIO or a
# plain object warns about nothing, and neither does cbuffer.
OWNS_OS_FILE = {"fd", "fileio", "socket", "pipe-nonblocking", "buffered-pipe-nonblocking"}


def test_dropped_unclosed_writer_warns_as_io_does(sink):
    """A dropped writer warns (ResourceWarning) exactly where io does, and
    what was written still reaches the sink (the finalizer flushes and
    closes)."""
    data = payload(3000, 7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = CBW(sink.raw)
        w.write(data)
        del w
        gc.collect()
    warned = [c for c in caught if issubclass(c.category, ResourceWarning)]
    assert bool(warned) == (sink.kind in OWNS_OS_FILE), (sink.kind, warned)
    assert sink.final() == data


# ------------------------------------------------------------------ stalled sink

def test_zero_byte_write_never_waits_on_stalled_pipe():
    """The ring is full behind a pipe nobody reads: a 0-byte write returns 0
    at once (the reader resumes after 3 s only so a failure cannot hang)."""
    r, wfd = small_pipe()
    resume = threading.Event()
    got = bytearray()

    def reader():
        resume.wait(DEADLINE)
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                return
            got.extend(chunk)

    rt = threading.Thread(target=reader)
    rt.start()
    safety = threading.Timer(3.0, resume.set)
    safety.start()
    w = CBW(wfd, buffer_size=4096, buffer_count=2)
    written = []

    def filler():
        for i in range(64):
            w.write(bytes([i]) * 1000)
            written.append(i)

    ft = threading.Thread(target=filler)
    ft.start()
    try:
        # the filler is stuck once it stops making progress
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            n = len(written)
            time.sleep(0.1)
            if len(written) == n:
                break
        assert len(written) < 64, "the ring never filled"
        result = []
        zt = threading.Thread(target=lambda: result.append((w.write(b""), time.monotonic())))
        t0 = time.monotonic()
        zt.start()
        zt.join(2.0)
        waited = not result
    finally:
        resume.set()
        safety.cancel()
        ft.join(DEADLINE)
    zt.join(DEADLINE)
    w.close()
    rt.join(DEADLINE)
    os.close(r)
    assert not waited, "a 0-byte write waited for ring space"
    assert result[0][0] == 0 and result[0][1] - t0 < 0.1
    assert bytes(got) == b"".join(bytes([i]) * 1000 for i in range(64))
