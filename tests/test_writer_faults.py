"""Layer 3 under faults: sink errors, short writes, EINTR, EAGAIN.

Real OS objects wherever the OS can produce the fault (/dev/full for ENOSPC,
a pipe without a reader for EPIPE, an fd closed behind the writer's back for
EBADF, RLIMIT_FSIZE for EFBIG after a partial write, a full non-blocking pipe
for EAGAIN, a signal sent to the flusher thread for EINTR); a raw object that
injects the fault where the OS has no handle for it.  Every check reads the
bytes the sink really got.
"""
import errno
import fcntl
import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import cbuffer
from cbuffer import ConcurrentBufferedWriter as CBW

DEADLINE = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))


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
    """A duplicate of ``fd`` numbered far above what open() hands out, so
    closing it behind the writer's back cannot let another file take its
    number while the test runs."""
    soft, _ = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(64, min(1000, soft - 64)))


def payload(n, seed=0):
    return bytes((i * 131 + seed * 17 + (i >> 8)) % 256 for i in range(n))


# ------------------------------------------------------------------ ENOSPC

@pytest.fixture
def dev_full():
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    fd = os.open("/dev/full", os.O_WRONLY)
    yield fd
    if not fd_closed(fd):
        os.close(fd)


def test_enospc_is_sticky_and_keeps_errno(dev_full):
    w = CBW(dev_full)
    assert w.write(b"x" * 100) == 100  # buffered: the error comes later
    with pytest.raises(OSError) as e1:
        w.flush()
    assert e1.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e2:
        w.write(b"more")
    assert e2.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e3:
        w.append(b"more")
    assert e3.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e4:
        w.flush()
    assert e4.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e5:
        w.close()
    assert e5.value.errno == errno.ENOSPC
    assert w.closed
    assert fd_closed(dev_full)  # close() with an error set still closes raw
    w.close()  # idempotent, and the error is not raised twice
    with pytest.raises(ValueError, match="write to closed file"):
        w.write(b"x")


def test_enospc_from_background_flusher_reaches_a_writer(dev_full):
    with pytest.raises(OSError) as exc:
        w = CBW(dev_full, buffer_size=4096, buffer_count=2, closefd=False)
        try:
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:  # buffers fill, the flusher fails,
                w.write(b"y" * 1000)        # a later write must say so
        finally:
            with pytest.raises(OSError):
                w.close()
    assert exc.value.errno == errno.ENOSPC


def test_nothing_retried_while_error_set(dev_full):
    w = CBW(dev_full, buffer_size=4096, closefd=False)
    w.write(b"z" * 5000)
    with pytest.raises(OSError):
        w.flush()
    calls = w.stats()["syscalls"]
    time.sleep(0.2)
    for _ in range(3):
        with pytest.raises(OSError):
            w.write(b"z")
        with pytest.raises(OSError):
            w.flush()
    assert w.stats()["syscalls"] == calls
    assert w.stats()["bytes_written"] == 0
    with pytest.raises(OSError):
        w.close()


def test_clear_error_retries_queued_bytes_once_in_order_fd(dev_full, tmp_path):
    """ENOSPC on /dev/full, then the fd is pointed at a real file behind the
    writer's back (dup2), clear_error(): every accepted byte lands once, in
    order -- including a write larger than a buffer accepted while failing."""
    path = tmp_path / "recovered"
    fd = high_dup(dev_full)
    w = CBW(fd, buffer_size=4096, buffer_count=4)
    accepted = []
    for i in range(3):
        chunk = b"%02d" % i * 500
        w.write(chunk)
        accepted.append(chunk)
    big = bytearray(payload(20000, 1))
    with pytest.raises(OSError) as exc:
        w.flush()
    assert exc.value.errno == errno.ENOSPC
    w.clear_error()
    # A large write accepted while the sink keeps failing stays queued; the
    # caller's buffer may change after write() returned.
    try:
        assert w.write(big) == len(big)
        accepted.append(bytes(big))
    except OSError as e:  # or the error was already back: then it was refused
        assert e.errno == errno.ENOSPC
    big[:] = b"\0" * len(big)
    with pytest.raises(OSError):
        w.flush()
    with pytest.raises(OSError):
        w.write(b"refused while failing")
    real = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.dup2(real, fd)
    finally:
        os.close(real)
    w.clear_error()
    w.flush()
    assert read(path) == b"".join(accepted)
    w.write(b"|after")
    w.close()
    assert fd_closed(fd)
    assert read(path) == b"".join(accepted) + b"|after"


# ------------------------------------------------------------------ EPIPE / EBADF

def test_sigpipe_is_ignored_by_python():
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


def test_epipe_read_end_closed():
    r, wfd = os.pipe()
    os.close(r)
    w = CBW(wfd)
    w.write(b"nobody reads this")
    with pytest.raises(BrokenPipeError) as exc:
        w.flush()
    assert exc.value.errno == errno.EPIPE
    with pytest.raises(OSError) as exc:
        w.write(b"x")
    assert exc.value.errno == errno.EPIPE
    with pytest.raises(OSError) as exc:
        w.close()
    assert exc.value.errno == errno.EPIPE
    assert fd_closed(wfd)


def test_epipe_reader_process_exited():
    r, wfd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read(10))"],
                            stdin=r, stdout=subprocess.PIPE)
    os.close(r)
    try:
        w = CBW(wfd, buffer_size=4096)
        w.write(b"0123456789")
        w.flush()
        out, _ = proc.communicate(timeout=30)
        assert out == b"0123456789"
        with pytest.raises(OSError) as exc:
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                w.write(b"after the reader left\n")
                w.flush()
        assert exc.value.errno == errno.EPIPE
        with pytest.raises(OSError):
            w.close()
        assert fd_closed(wfd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_epipe_socket_peer_closed():
    a, b = socket.socketpair()
    with a:
        b.close()
        w = CBW(a, closefd=False)
        w.write(b"to nobody")
        with pytest.raises(OSError) as exc:
            w.flush()
        assert exc.value.errno in (errno.EPIPE, errno.ECONNRESET)
        with pytest.raises(OSError):
            w.close()
        assert a.fileno() >= 0


def test_ebadf_fd_closed_behind_the_writers_back(tmp_path):
    path = tmp_path / "f"
    with open(path, "wb") as f:
        fd = high_dup(f.fileno())
        w = CBW(fd, closefd=False)
        w.write(b"landed")
        w.flush()
        w.write(b"lost sink")
        os.close(fd)
        with pytest.raises(OSError) as exc:
            w.flush()
        assert exc.value.errno == errno.EBADF
        with pytest.raises(OSError) as exc:
            w.write(b"x")
        assert exc.value.errno == errno.EBADF
        with pytest.raises(OSError) as exc:
            w.close()
        assert exc.value.errno == errno.EBADF
    assert read(path) == b"landed"


# ------------------------------------------------------------------ partial write, then EFBIG

EFBIG_SCRIPT = r"""
import errno, os, resource, signal, sys
import cbuffer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (10000, hard))
data = b"".join(b"%08d" % i for i in range(5000))   # 40000 bytes
w = cbuffer.open(path, buffer_size=65536)
assert w.write(data) == len(data)
try:
    w.flush()
except OSError as e:
    assert e.errno == errno.EFBIG, e
else:
    sys.exit("flush did not raise")
assert os.path.getsize(path) == 10000, os.path.getsize(path)   # a partial write
try:
    w.write(b"refused")
except OSError as e:
    assert e.errno == errno.EFBIG, e
else:
    sys.exit("write did not raise")
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
w.clear_error()
w.write(b"END")
w.close()
print("ok")
"""


def test_partial_write_then_error_resumes_where_it_stopped(tmp_path):
    """A real partial writev (RLIMIT_FSIZE), then EFBIG; after the limit is
    lifted and clear_error(), the sink loop resumes at the exact byte."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY and hard < 100000:
        pytest.skip("hard RLIMIT_FSIZE too low")
    path = tmp_path / "fsize"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, str(path)], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"ok"
    assert read(path) == b"".join(b"%08d" % i for i in range(5000)) + b"END"


# ------------------------------------------------------------------ raws that misbehave

class FlakyRaw:
    """write() raises OSError(EIO) the first ``fail`` times, then takes all."""

    def __init__(self, fail, exc_factory=lambda: OSError(errno.EIO, "injected EIO")):
        self.fail = fail
        self.calls = 0
        self.data = bytearray()
        self.closed = False
        self.exc_factory = exc_factory

    def write(self, b):
        self.calls += 1
        if self.calls <= self.fail:
            raise self.exc_factory()
        self.data += b

    def close(self):
        self.closed = True


def test_clear_error_then_retry_exactly_once_in_order():
    raw = FlakyRaw(fail=3)
    w = CBW(raw, buffer_size=4096)
    chunks = [b"<%04d>" % i for i in range(300)]  # 1800 bytes: one buffer
    for c in chunks:
        w.write(c)
    for attempt in range(3):
        with pytest.raises(OSError) as exc:
            w.flush()
        assert exc.value.errno == errno.EIO
        assert raw.calls == attempt + 1
        with pytest.raises(OSError):
            w.write(b"refused")
        with pytest.raises(OSError):
            w.flush()
        assert raw.calls == attempt + 1  # nothing retried while the error is set
        w.clear_error()
    w.flush()
    assert bytes(raw.data) == b"".join(chunks)
    w.write(b"[tail]")
    w.close()
    assert raw.closed
    assert bytes(raw.data) == b"".join(chunks) + b"[tail]"


def test_clear_error_lets_the_flusher_retry():
    raw = FlakyRaw(fail=1)
    w = CBW(raw, buffer_size=4096, closefd=False, lanes=0)  # (the ring's own buffers)
    w.write(b"a" * 3000)
    w.write(b"b" * 3000)  # seals the first buffer: the flusher tries it and fails
    end = time.monotonic() + DEADLINE
    while raw.calls == 0 and time.monotonic() < end:
        time.sleep(0.005)
    with pytest.raises(OSError):
        w.write(b"c")
    w.clear_error()
    end = time.monotonic() + DEADLINE
    while len(raw.data) < 3000 and time.monotonic() < end:
        time.sleep(0.005)
    assert bytes(raw.data) == b"a" * 3000  # the flusher retried without flush()
    w.close()
    assert bytes(raw.data) == b"a" * 3000 + b"b" * 3000


def test_partial_then_exception_resumes_without_duplicates():
    """The raw takes part of a view, then raises; the retry offers exactly the
    rest."""
    got = bytearray()
    state = {"calls": 0}

    class Raw:
        def write(self, b):
            state["calls"] += 1
            if state["calls"] == 1:
                got.extend(b[:100])
                return 100
            if state["calls"] == 2:
                raise OSError(errno.EIO, "second call fails")
            got.extend(b)
            return len(b)

    data = payload(3000)
    w = CBW(Raw(), buffer_size=4096, closefd=False)
    w.write(data)
    with pytest.raises(OSError):
        w.flush()
    assert bytes(got) == data[:100]
    w.clear_error()
    w.flush()
    w.close()
    assert bytes(got) == data


@pytest.mark.parametrize("big", [False, True], ids=["small", "with-large-writes"])
def test_short_writes_from_raw(big):
    rng = random.Random(1234)
    got = bytearray()
    sizes = []

    class ShortRaw:
        def write(self, b):
            n = min(len(b), rng.randint(1, 97))
            got.extend(b[:n])
            sizes.append(n)
            return n

    chunks = [payload(rng.randint(1, 300), i) for i in range(200)]
    if big:
        chunks[50] = payload(10000, 99)
        chunks[120] = payload(4097, 98)
    with CBW(ShortRaw(), buffer_size=4096, closefd=False) as w:
        positions = [w.append(c) for c in chunks]
    assert bytes(got) == b"".join(chunks)
    assert max(sizes) <= 97 and len(sizes) > len(chunks)
    off = 0
    for p, c in zip(positions, chunks):
        assert p == off
        off += len(c)


def test_raw_returning_zero_then_taking():
    got = bytearray()
    calls = []

    class Raw:
        def write(self, b):
            calls.append(len(b))
            if len(calls) % 3:
                return 0  # nothing taken (would block): offered again
            got.extend(b)
            return len(b)

    data = payload(10000)
    with CBW(Raw(), buffer_size=4096, closefd=False) as w:
        for i in range(0, len(data), 1000):
            w.write(data[i:i + 1000])
    assert bytes(got) == data
    assert calls.count(0) == 0 and len(calls) >= 6


def test_raw_returning_none_means_all_taken():
    got = bytearray()

    class Raw:
        def write(self, b):
            got.extend(b)
            return None

    data = payload(50000)
    with CBW(Raw(), buffer_size=4096, closefd=False) as w:
        for i in range(0, len(data), 999):
            w.write(data[i:i + 999])
    assert bytes(got) == data


@pytest.mark.parametrize("bad", [-1, "ten", 10 ** 9, 2.0])
def test_raw_returning_nonsense_is_an_error_not_silence(bad):
    """CPython's test_misbehaved_io: an invalid count from raw.write() is an
    error, not a silent loss or duplication."""
    class Raw:
        def write(self, b):
            return bad

    w = CBW(Raw(), closefd=False)
    w.write(b"data")
    with pytest.raises((OSError, ValueError, TypeError)):
        w.flush()
    with pytest.raises((OSError, ValueError, TypeError)):
        w.close()


def test_raw_raising_other_exception_is_sticky():
    class Boom(RuntimeError):
        pass

    boom = Boom("raw exploded")
    raw = FlakyRaw(fail=10 ** 6, exc_factory=lambda: boom)
    w = CBW(raw)
    w.write(b"data")
    with pytest.raises(Boom) as e1:
        w.flush()
    # Each raise is a fresh exception (its traceback never grows); the
    # raw's own is its cause.
    assert e1.value is not boom and e1.value.args == boom.args
    assert e1.value.__cause__ is boom
    with pytest.raises(Boom):
        w.write(b"x")
    calls = raw.calls
    with pytest.raises(Boom):
        w.close()
    assert raw.calls == calls
    assert raw.closed  # still closed
    assert w.closed


class InterruptingRaw:
    """write() raises InterruptedError (EINTR) in bursts, as a raw over a
    slow device may when a signal arrives."""

    def __init__(self, burst=3):
        self.burst = burst
        self.calls = 0
        self.eintr = 0
        self.data = bytearray()

    def write(self, b):
        self.calls += 1
        if self.calls % (self.burst + 1):
            self.eintr += 1
            raise InterruptedError(errno.EINTR, "injected EINTR")
        self.data += b
        return len(b)


def test_eintr_bursts_from_raw_are_retried():
    raw = InterruptingRaw(burst=3)
    data = payload(30000)
    with CBW(raw, buffer_size=4096, closefd=False) as w:
        for i in range(0, len(data), 500):
            w.write(data[i:i + 500])
    assert raw.eintr >= 3
    assert bytes(raw.data) == data


def test_eintr_on_caller_dispatch_is_retried():
    """Signals sent to a thread while its own large writes and flushes block
    in writev on a full pipe: EINTR and the partial writes it causes are
    retried, and every byte arrives once, in order."""
    hits = []
    old = signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))
    r, wfd = os.pipe()
    got = bytearray()
    stop_reader = threading.Event()

    def reader():
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                return
            got.extend(chunk)
            if not stop_reader.is_set():
                time.sleep(0.0005)

    data = payload(1 << 20, 5)
    errors = []
    w = CBW(wfd, buffer_size=65536, buffer_count=4)

    def writer():
        try:
            for i in range(0, len(data), 200_000):  # larger than a buffer: dispatched here
                w.write(data[i:i + 200_000])
                w.flush()
        except BaseException as exc:
            errors.append(exc)

    rt = threading.Thread(target=reader)
    wt = threading.Thread(target=writer)
    try:
        rt.start()
        wt.start()
        end = time.monotonic() + DEADLINE
        sent = 0
        while wt.is_alive() and time.monotonic() < end:
            if wt.ident is not None:
                try:
                    signal.pthread_kill(wt.ident, signal.SIGUSR1)
                    sent += 1
                except ProcessLookupError:
                    break
            time.sleep(0.0005)
        stop_reader.set()
        wt.join(DEADLINE)
        assert not wt.is_alive()
        w.close()
        rt.join(DEADLINE)
        assert not rt.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, old)
        if not w.closed:
            w.close()
        os.close(r)
    assert not errors, errors
    assert sent > 0 and hits
    assert bytes(got) == data


def test_flusher_thread_blocks_signals(devnull):
    """The kernel never picks the flusher for a signal, so the thread that
    is blocked in the sink on a caller's behalf is the one interrupted."""
    w = CBW(devnull, buffer_size=4096, closefd=False)
    try:
        w.write(b"x" * 5000)  # starts the flusher
        flusher = next(t for t in threading.enumerate() if t.name == "cbuffer-flusher"
                       and t.is_alive())
        status = f"/proc/self/task/{flusher.native_id}/status"
        if not os.path.exists(status):
            pytest.skip("needs /proc")
        with open(status) as f:
            blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        for sig in (signal.SIGINT, signal.SIGALRM, signal.SIGUSR1, signal.SIGTERM):
            assert blocked & (1 << (sig - 1)), sig
        assert not blocked & (1 << (signal.SIGSEGV - 1))
    finally:
        w.close()


# ------------------------------------------------------------------ EAGAIN

def test_nonblocking_pipe_fills_then_drains():
    r, wfd = os.pipe()
    os.set_blocking(wfd, False)
    got = bytearray()
    resume = threading.Event()
    errors = []

    def reader():
        resume.wait(DEADLINE)
        while True:
            # small reads: the pipe is only ever partly free, so the
            # writer's writev calls come back short as well as EAGAIN
            chunk = os.read(r, 3000)
            if not chunk:
                return
            got.extend(chunk)

    data = payload(2 << 20, 3)
    w = CBW(wfd, buffer_size=16384, buffer_count=4)

    def writer():
        try:
            for i in range(0, len(data), 1000):
                assert w.write(data[i:i + 1000]) == len(data[i:i + 1000])
            w.close()
        except BaseException as exc:
            errors.append(exc)

    rt = threading.Thread(target=reader)
    wt = threading.Thread(target=writer)
    rt.start()
    wt.start()
    try:
        time.sleep(0.3)  # the reader pauses: the pipe and then the ring fill
        assert wt.is_alive()  # backpressure, not an error
        assert not errors
    finally:
        resume.set()
        wt.join(DEADLINE)
        rt.join(DEADLINE)
        if not w.closed:
            w.close()
        os.close(r)
    assert not wt.is_alive() and not rt.is_alive()
    assert not errors, errors
    assert bytes(got) == data


def test_nonblocking_socket_fills_then_drains():
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        got = bytearray()
        resume = threading.Event()

        def reader():
            resume.wait(DEADLINE)
            while True:
                chunk = b.recv(3000)  # small reads: short sends as well as EAGAIN
                if not chunk:
                    return
                got.extend(chunk)

        data = payload(1 << 20, 4)
        rt = threading.Thread(target=reader)
        rt.start()
        errors = []
        w = CBW(a, buffer_size=8192, buffer_count=2, closefd=False)

        def writer():
            try:
                for i in range(0, len(data), 3000):
                    w.write(data[i:i + 3000])
                w.close()
            except BaseException as exc:
                errors.append(exc)

        wt = threading.Thread(target=writer)
        wt.start()
        try:
            time.sleep(0.2)
        finally:
            resume.set()
            wt.join(DEADLINE)
            if not w.closed:
                w.close()
            a.shutdown(socket.SHUT_WR)
            rt.join(DEADLINE)
        assert not wt.is_alive() and not rt.is_alive()
        assert not errors, errors
        assert bytes(got) == data


def test_nonblocking_python_raw_returning_none_is_not_would_block():
    """A raw's write() returning None means "all taken" (documented), unlike
    io.RawIOBase where None means "would block"; nothing is duplicated."""
    got = bytearray()

    class Raw:
        def write(self, b):
            got.extend(b)

    with CBW(Raw(), closefd=False) as w:
        w.write(b"abc")
    assert bytes(got) == b"abc"


# ------------------------------------------------------------------ errors on close (CPython models)

def test_write_error_on_close():
    # CPython's BufferedWriterTest.test_write_error_on_close
    raw = FlakyRaw(fail=10 ** 6)
    b = CBW(raw)
    b.write(b"spam")
    with pytest.raises(OSError):  # exception not swallowed
        b.close()
    assert b.closed
    assert raw.closed


def test_flush_error_on_close():
    # CPython's test_flush_error_on_close: closed despite the failed flush,
    # and raw.flush() called before raw is closed.
    seen = []

    class Raw(FlakyRaw):
        def flush(self):
            seen.append(self.closed)
            raise OSError("flush")

    raw = Raw(fail=0)
    b = CBW(raw)
    b.write(b"spam")
    with pytest.raises(OSError, match="flush"):
        b.close()
    assert b.closed
    assert raw.closed
    assert seen == [False]  # flush() called, before raw was closed
    assert bytes(raw.data) == b"spam"


def test_close_error_on_close():
    # CPython's test_close_error_on_close: the close error is raised, with
    # the flush error as its __context__.
    class Raw:
        closed = False

        def write(self, b):
            raise OSError("flush")

        def close(self):
            raise OSError("close")

    b = CBW(Raw())
    b.write(b"spam")
    with pytest.raises(OSError) as err:
        b.close()
    assert err.value.args == ("close",)
    assert isinstance(err.value.__context__, OSError)
    assert err.value.__context__.args == ("flush",)


def test_close_error_alone_on_close():
    class Raw:
        closed = False

        def __init__(self):
            self.data = bytearray()

        def write(self, b):
            self.data += b

        def close(self):
            raise OSError("close")

    raw = Raw()
    b = CBW(raw)
    b.write(b"spam")
    with pytest.raises(OSError, match="close") as err:
        b.close()
    assert err.value.__context__ is None
    assert bytes(raw.data) == b"spam"  # flushed before raw.close()


def test_close_with_sticky_error_closes_fileio(tmp_path):
    raw = io.FileIO(os.open("/dev/full", os.O_WRONLY), "wb") if os.path.exists("/dev/full") \
        else pytest.skip("needs /dev/full")
    w = CBW(raw)
    w.write(b"x")
    with pytest.raises(OSError) as exc:
        w.close()
    assert exc.value.errno == errno.ENOSPC
    assert raw.closed
