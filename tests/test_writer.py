"""Layer 3: cbuffer.ConcurrentBufferedWriter and cbuffer.open().

API, the io behaviours users of io.BufferedWriter rely on (modelled on
CPython's Lib/test/test_io.py BufferedWriterTest), every kind of raw, the
flushing strategies, writes larger than a buffer and bad arguments.

Every check reads the bytes back from the real sink (the file on disk, the
other end of the pipe or socket, the BytesIO, the gzip stream).
"""
import array
import errno
import gc
import gzip
import io
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

import cbuffer
from cbuffer import ConcurrentBufferedWriter as CBW

DEADLINE = 10.0  # seconds: only turns a hang into a failure


def read(path):
    with open(path, "rb") as f:
        return f.read()


def wait_for(predicate, timeout=DEADLINE, interval=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def fd_closed(fd):
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


@pytest.fixture
def path(tmp_path):
    return tmp_path / "out.bin"


# ------------------------------------------------------------------ write()

@pytest.mark.parametrize("obj", [
    b"hello",
    bytearray(b"a bytearray"),
    memoryview(b"a memoryview"),
    memoryview(b"0123456789")[2:7],
    array.array("i", [1, 2, 3, -4]),
    array.array("d", [1.5, 2.5]),
    memoryview(array.array("H", range(10))),
    memoryview(bytearray(b"abcdefgh")).cast("B", (2, 4)),
    b"",
], ids=["bytes", "bytearray", "memoryview", "slice", "array-i", "array-d", "mv-H", "mv-2d", "empty"])
def test_write_returns_byte_length(path, obj):
    expected = bytes(memoryview(obj).cast("B")) if memoryview(obj).ndim == 1 else \
        memoryview(obj).tobytes()
    n_expected = memoryview(obj).nbytes
    with cbuffer.open(path) as w:
        assert w.write(b"<") == 1
        n = w.write(obj)
        assert n == n_expected == len(expected)
        assert w.write(b">") == 1
        assert w.tell() == n + 2
    assert read(path) == b"<" + expected + b">"


def test_write_same_length_as_bufferedwriter(path):
    objs = [b"x" * 7, bytearray(3), array.array("q", [1, 2]), memoryview(b"abc")]
    bio = io.BytesIO()
    bw = io.BufferedWriter(bio)
    with cbuffer.open(path) as w:
        for obj in objs:
            assert w.write(obj) == bw.write(obj)
    bw.flush()
    assert read(path) == bio.getvalue()


@pytest.mark.parametrize("bad", ["text", "", 42, None, 3.5, [1, 2], object()])
def test_write_non_bytes_raises_typeerror(path, bad):
    with cbuffer.open(path) as w:
        w.write(b"before|")
        with pytest.raises(TypeError):
            w.write(bad)
        with pytest.raises(TypeError):
            w.append(bad)
        w.write(b"|after")  # the writer is still usable
    assert read(path) == b"before||after"


def test_write_str_message(path):
    with cbuffer.open(path) as w:
        with pytest.raises(TypeError, match="bytes-like"):
            w.write("str")


def test_non_contiguous_buffer_raises_like_bufferedwriter(path):
    mv = memoryview(bytearray(b"abcdefgh"))[::2]
    with pytest.raises(Exception) as ref:
        io.BufferedWriter(io.BytesIO()).write(mv)
    with cbuffer.open(path) as w:
        w.write(b"a")
        with pytest.raises(type(ref.value)):
            w.write(mv)
        with pytest.raises(type(ref.value)):
            w.append(mv)
        w.write(b"b")
    assert read(path) == b"ab"


# ------------------------------------------------------------------ close

def test_write_after_close(path):
    w = cbuffer.open(path)
    w.write(b"data")
    w.close()
    with pytest.raises(ValueError, match=r"^write to closed file$"):
        w.write(b"more")
    with pytest.raises(ValueError, match=r"^write to closed file$"):
        w.append(b"more")
    with pytest.raises(ValueError):
        w.writelines([b"more"])
    with pytest.raises(ValueError):
        w.flush()
    assert read(path) == b"data"


def test_close_is_idempotent(path):
    w = cbuffer.open(path)
    raw = w.raw
    assert not w.closed
    w.write(b"once")
    w.close()
    assert w.closed and raw.closed
    w.close()
    w.close()
    assert w.closed
    assert read(path) == b"once"


def test_close_flushes(path):
    w = cbuffer.open(path, buffer_size=1 << 20)
    w.write(b"pending bytes")
    w.close()
    assert read(path) == b"pending bytes"


def test_flush_writes_everything_written_before(path):
    with cbuffer.open(path, buffer_size=1 << 20) as w:
        for i in range(100):
            w.write(b"%d," % i)
            if i % 17 == 0:
                w.flush()
                assert read(path) == b"".join(b"%d," % j for j in range(i + 1))


def test_io_after_close(path):
    """Modelled on CPython's MiscIOTest.test_io_after_close: every operation
    on a closed writer raises ValueError, as it does on a closed
    io.BufferedWriter."""
    w = cbuffer.open(path)
    w.close()
    ops = {
        "flush": lambda: w.flush(),
        "isatty": lambda: w.isatty(),
        "tell": lambda: w.tell(),
        "write": lambda: w.write(b"x"),
        "writelines": lambda: w.writelines([b"x"]),
        "writable": lambda: w.writable(),
        "readable": lambda: w.readable(),
        "seekable": lambda: w.seekable(),
        "seek": lambda: w.seek(0),
        "truncate": lambda: w.truncate(),
        "enter": lambda: w.__enter__(),
        "iter": lambda: iter(w),
    }
    for name, op in ops.items():
        with pytest.raises(ValueError):
            op()
            pytest.fail(f"{name} on a closed writer did not raise")


def test_fileno_after_close_raises(path):
    ref = io.BufferedWriter(io.FileIO(path, "wb"))
    ref.close()
    with pytest.raises(ValueError):
        ref.fileno()
    w = cbuffer.open(path)
    w.close()
    with pytest.raises(ValueError):
        w.fileno()


def test_with_block(path):
    with cbuffer.open(path) as w:
        assert w.__enter__() is w
        w.write(b"inside")
        assert not w.closed
    assert w.closed
    assert read(path) == b"inside"


def test_with_block_closes_and_flushes_on_exception(path):
    with pytest.raises(KeyError):
        with cbuffer.open(path) as w:
            w.write(b"before the error")
            raise KeyError("boom")
    assert w.closed and w.raw.closed
    assert read(path) == b"before the error"


def test_destructor_flushes_and_closes(path):
    """CPython's test_destructor: a writer dropped without close() warns
    (ResourceWarning, as io objects do), is flushed and closes its raw."""
    w = cbuffer.open(path, buffer_size=1 << 20)
    raw = w.raw
    w.write(b"dropped without close")
    with pytest.warns(ResourceWarning, match="unclosed file"):
        del w
        gc.collect()
    assert raw.closed
    assert read(path) == b"dropped without close"


def test_readonly_attributes(path):
    with cbuffer.open(path) as w:
        with pytest.raises(AttributeError):
            w.raw = io.BytesIO()
        with pytest.raises(AttributeError):
            w.closed = True


def test_cannot_pickle(path):
    import pickle
    with cbuffer.open(path) as w:
        with pytest.raises(TypeError):
            pickle.dumps(w)


# ------------------------------------------------------------------ io face

def test_is_a_rawiobase(path):
    with cbuffer.open(path) as w:
        assert isinstance(w, io.RawIOBase)
        assert isinstance(w, io.IOBase)
        assert io.RawIOBase in type(w).__mro__
        assert issubclass(CBW, io.RawIOBase)


def test_capabilities(path):
    with cbuffer.open(path) as w:
        assert w.writable() is True
        assert w.readable() is False
        assert w.seekable() is False
        assert w.isatty() is False


@pytest.mark.parametrize("op", [
    lambda w: w.read(),
    lambda w: w.read(10),
    lambda w: w.readall(),
    lambda w: w.readinto(bytearray(10)),
    lambda w: w.seek(0),
    lambda w: w.seek(0, os.SEEK_END),
    lambda w: w.truncate(),
    lambda w: w.truncate(0),
], ids=["read", "read10", "readall", "readinto", "seek", "seek-end", "truncate", "truncate0"])
def test_unsupported_operations(path, op):
    with cbuffer.open(path) as w:
        w.write(b"keep")
        with pytest.raises(io.UnsupportedOperation):
            op(w)
        w.write(b"ing")
    assert read(path) == b"keeping"


def test_writelines(path):
    with cbuffer.open(path) as w:
        w.writelines([b"ab", bytearray(b"cd"), memoryview(b"ef")])
        w.writelines(b"%d" % i for i in range(3))
        w.writelines([])
    assert read(path) == b"abcdef012"


def test_writelines_error(path):
    # CPython's test_writelines_error
    with cbuffer.open(path) as w:
        with pytest.raises(TypeError):
            w.writelines([1, 2, 3])
        with pytest.raises(TypeError):
            w.writelines(None)
        with pytest.raises(TypeError):
            w.writelines("abc")


def test_name_and_fileno(tmp_path):
    p = tmp_path / "named"
    with cbuffer.open(str(p)) as w:
        assert w.name == str(p)
        assert w.fileno() == w.raw.fileno()
        assert isinstance(w.raw, io.FileIO)
    fd = os.open(p, os.O_WRONLY)
    with CBW(fd) as w:
        assert w.name == fd
        assert w.fileno() == fd
        assert w.raw == fd
    assert fd_closed(fd)
    with io.FileIO(p, "wb") as raw:
        with CBW(raw, closefd=False) as w:
            assert w.name == raw.name
            assert os.fspath(w.name) == str(p)
            assert w.fileno() == raw.fileno()
            assert w.raw is raw
    with cbuffer.open(p) as w:  # PathLike
        assert os.fspath(w.name) == str(p)


def test_fileno_of_socket_and_bytesio():
    a, b = socket.socketpair()
    with a, b:
        with CBW(a, closefd=False) as w:
            assert w.fileno() == a.fileno()
    with CBW(io.BytesIO()) as w:
        with pytest.raises(io.UnsupportedOperation):
            w.fileno()


def test_repr(path):
    with cbuffer.open(path) as w:
        assert str(path) in repr(w)


# ------------------------------------------------------------------ tell / append

def test_tell_is_logical_position(path):
    with cbuffer.open(path, buffer_size=4096, buffer_count=2) as w:
        assert w.tell() == 0
        total = 0
        for i in range(300):
            chunk = bytes([i % 256]) * (i % 50 + 1)
            assert w.append(chunk) == total
            total += len(chunk)
            assert w.tell() == total
        big = b"B" * 20000  # larger than a buffer
        assert w.append(big) == total
        total += len(big)
        assert w.tell() == total
        w.flush()
        assert w.tell() == total
    assert len(read(path)) == total


def test_append_positions_match_file(path):
    chunks = [bytes([65 + i % 26]) * (1 + (i * 37) % 300) for i in range(500)]
    with cbuffer.open(path, buffer_size=4096) as w:
        positions = [w.append(c) for c in chunks]
    data = read(path)
    for pos, c in zip(positions, chunks):
        assert data[pos:pos + len(c)] == c
    assert len(data) == sum(map(len, chunks))


def test_append_mode_starts_at_end(path):
    path.write_bytes(b"x" * 1234)
    with cbuffer.open(path, "ab") as w:
        assert w.tell() == 1234
        assert w.append(b"first") == 1234
        assert w.append(b"second") == 1239
    assert read(path) == b"x" * 1234 + b"firstsecond"


def test_append_mode_with_fd_lseeked_elsewhere(path):
    path.write_bytes(b"y" * 500)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND writes go to the end anyway
    with CBW(fd) as w:
        assert w.append(b"tail") == 500
    assert read(path) == b"y" * 500 + b"tail"


def test_fd_lseeked_to_100_starts_at_100(path):
    path.write_bytes(b"." * 300)
    fd = os.open(path, os.O_WRONLY)
    os.lseek(fd, 100, os.SEEK_SET)
    with CBW(fd) as w:
        assert w.tell() == 100
        assert w.append(b"AAAA") == 100
        assert w.append(b"BB") == 104
    data = read(path)
    assert data == b"." * 100 + b"AAAABB" + b"." * 194


def test_seekable_object_starts_at_its_tell():
    bio = io.BytesIO()
    bio.write(b"prefix")
    with CBW(bio, closefd=False) as w:
        assert w.tell() == 6
        assert w.append(b"one") == 6
        assert w.append(b"two") == 9
    assert bio.getvalue() == b"prefixonetwo"
    bio.close()


def test_pipe_starts_at_zero():
    r, wfd = os.pipe()
    try:
        with CBW(wfd) as w:
            assert w.append(b"abc") == 0
            assert w.append(b"de") == 3
        assert os.read(r, 100) == b"abcde"
    finally:
        os.close(r)


# ------------------------------------------------------------------ cbuffer.open

def test_open_wb_truncates(path):
    path.write_bytes(b"old contents that must go")
    with cbuffer.open(path, "wb") as w:
        assert w.append(b"new") == 0
    assert read(path) == b"new"


def test_open_default_mode_is_wb(path):
    path.write_bytes(b"old")
    with cbuffer.open(path) as w:
        w.write(b"N")
    assert read(path) == b"N"


def test_open_ab_appends(path):
    with cbuffer.open(path, "ab") as w:
        assert w.append(b"one") == 0
    with cbuffer.open(path, "ab") as w:
        assert w.append(b"two") == 3
    assert read(path) == b"onetwo"


def test_open_xb(path):
    with cbuffer.open(path, "xb") as w:
        w.write(b"created")
    assert read(path) == b"created"
    with pytest.raises(FileExistsError):
        cbuffer.open(path, "xb")
    assert read(path) == b"created"


@pytest.mark.parametrize("mode", ["r", "rb", "wb+", "r+b", "bw", "w+", "rt", ""])
def test_open_bad_mode(path, mode):
    with pytest.raises(ValueError, match="mode"):
        cbuffer.open(path, mode)
    assert not path.exists()


@pytest.mark.parametrize("mode", ["w", "a", "x", "wt"])
def test_open_text_modes_give_a_text_writer(path, mode):
    with cbuffer.open(path, mode, encoding="utf-8") as w:
        assert isinstance(w, cbuffer.ConcurrentTextWriter)
        assert w.write("caf\u00e9\n") == 5
    assert read(path) == "caf\u00e9\n".encode()


def test_open_mode_not_str(path):
    with pytest.raises(TypeError):
        cbuffer.open(path, b"wb")


def test_open_pathlike(tmp_path):
    class P:
        def __fspath__(self):
            return str(tmp_path / "via-fspath")

    with cbuffer.open(P()) as w:
        w.write(b"fspath")
    with cbuffer.open(pathlib.Path(tmp_path / "via-path")) as w:
        w.write(b"pathlib")
    assert read(tmp_path / "via-fspath") == b"fspath"
    assert read(tmp_path / "via-path") == b"pathlib"


def test_open_bytes_path(tmp_path):
    p = os.fsencode(tmp_path / "bytes-path")
    with cbuffer.open(p) as w:
        w.write(b"b")
    assert read(p) == b"b"


def test_open_int_fd(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with cbuffer.open(fd) as w:
        assert w.fileno() == fd
        w.write(b"via fd")
    assert fd_closed(fd)
    assert read(path) == b"via fd"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        with cbuffer.open(fd, "ab", closefd=False) as w:
            w.write(b"+more")
        assert not fd_closed(fd)
    finally:
        os.close(fd)
    assert read(path) == b"via fd+more"


def test_open_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        cbuffer.open(tmp_path / "no" / "such" / "dir")


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_open_bad_options_leaks_nothing(path):
    before = _open_fds()
    with pytest.raises(ValueError):
        cbuffer.open(path, buffer_size=1000)
    with pytest.raises(TypeError):
        cbuffer.open(path, buffer_count="4")
    with pytest.raises(TypeError):
        cbuffer.open(path, no_such_option=True)
    gc.collect()
    assert _open_fds() == before


# ------------------------------------------------------------------ raw kinds

def test_raw_int_fd(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    w = CBW(fd)
    w.write(b"int fd")
    w.close()
    assert fd_closed(fd)
    assert read(path) == b"int fd"


def test_raw_int_fd_closefd_false(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        with CBW(fd, closefd=False) as w:
            w.write(b"int fd ")
        assert not fd_closed(fd)
        os.write(fd, b"still open")
    finally:
        os.close(fd)
    assert read(path) == b"int fd still open"


@pytest.mark.parametrize("closefd", [True, False])
def test_raw_fileio(path, closefd):
    raw = io.FileIO(path, "wb")
    try:
        with CBW(raw, closefd=closefd) as w:
            w.write(b"fileio")
        assert raw.closed is closefd
        if not closefd:
            raw.write(b"!")
    finally:
        raw.close()
    assert read(path) == (b"fileio" if closefd else b"fileio!")


@pytest.mark.parametrize("closefd", [True, False])
def test_raw_socket(closefd):
    a, b = socket.socketpair()
    with a, b:
        payload = bytes(range(256)) * 1000  # more than the socket buffer
        got = bytearray()

        def reader():
            while True:
                chunk = b.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        try:
            w = CBW(a, buffer_size=8192, closefd=closefd)
            for i in range(0, len(payload), 1000):
                w.write(payload[i:i + 1000])
            w.close()
            if closefd:
                assert a.fileno() == -1
            else:
                assert a.fileno() >= 0
                a.sendall(b"tail")
                a.shutdown(socket.SHUT_WR)
        finally:
            if a.fileno() >= 0:
                a.shutdown(socket.SHUT_WR)
            t.join(DEADLINE)
        assert not t.is_alive()
        assert bytes(got) == payload + (b"" if closefd else b"tail")


def test_raw_pipe_read_by_another_process():
    payload = b"".join(b"line %06d %s\n" % (i, b"z" * (i % 90)) for i in range(20000))
    r, wfd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, hashlib; d = sys.stdin.buffer.read(); "
         "sys.stdout.write(hashlib.sha256(d).hexdigest() + ' ' + str(len(d)))"],
        stdin=r, stdout=subprocess.PIPE)
    os.close(r)
    try:
        with CBW(wfd, buffer_size=4096) as w:
            for line in payload.splitlines(keepends=True):
                w.write(line)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    import hashlib
    assert out.decode() == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}"
    assert proc.returncode == 0


def test_raw_bytesio():
    bio = io.BytesIO()
    w = CBW(bio, closefd=False)
    w.write(b"bytes")
    w.write(bytearray(b"io"))
    w.close()
    assert not bio.closed
    assert bio.getvalue() == b"bytesio"
    bio.close()
    bio2 = io.BytesIO()
    with CBW(bio2) as w:
        w.write(b"x")
    assert bio2.closed


@pytest.mark.parametrize("closefd", [True, False])
def test_raw_bufferedwriter(path, closefd):
    bw = io.BufferedWriter(io.FileIO(path, "wb"), buffer_size=1 << 16)
    try:
        w = CBW(bw, closefd=closefd)
        w.write(b"through a BufferedWriter")
        w.flush()  # also flushes the raw's own buffer
        assert read(path) == b"through a BufferedWriter"
        w.write(b"!")
        w.close()
        assert bw.closed is closefd
        assert read(path) == b"through a BufferedWriter!"
    finally:
        bw.close()


@pytest.mark.parametrize("closefd", [True, False])
def test_raw_gzipfile(tmp_path, closefd):
    p = tmp_path / "out.gz"
    payload = b"".join(b"record %d\n" % i for i in range(20000))
    gz = gzip.GzipFile(p, "wb")
    try:
        with CBW(gz, buffer_size=4096, closefd=closefd) as w:
            for i in range(0, len(payload), 777):
                w.write(payload[i:i + 777])
        assert gz.closed is closefd
    finally:
        gz.close()
    with gzip.open(p, "rb") as f:
        assert f.read() == payload


@pytest.mark.parametrize("closefd", [True, False])
def test_raw_textiowrapper_buffer(path, closefd):
    text = open(path, "w", encoding="utf-8")
    try:
        text.write("text first\n")
        text.flush()
        with CBW(text.buffer, closefd=closefd) as w:
            assert w.tell() == len(b"text first\n")
            w.write("héllo\n".encode())
        assert text.buffer.closed is closefd
        if not closefd:
            text.write("text last\n")
    finally:
        text.close()
    assert read(path).decode() == "text first\nhéllo\n" + ("" if closefd else "text last\n")


class WriteOnly:
    """The least a raw can be: write() only."""

    def __init__(self):
        self.data = bytearray()

    def write(self, b):
        self.data += b


def test_raw_write_only_object():
    raw = WriteOnly()
    with CBW(raw, buffer_size=4096, closefd=False) as w:
        for i in range(3000):
            w.write(b"%05d" % i)
        w.write(b"L" * 10000)
    assert bytes(raw.data) == b"".join(b"%05d" % i for i in range(3000)) + b"L" * 10000


def test_raw_write_called_with_readonly_view():
    views = []

    class Raw:
        def write(self, b):
            views.append((type(b), memoryview(b).readonly))
            return None

    with CBW(Raw(), closefd=False) as w:
        w.write(b"x")
    assert views and all(ro for _, ro in views)


def test_raw_already_closed(path):
    raw = io.FileIO(path, "wb")
    raw.close()
    with pytest.raises(ValueError):
        CBW(raw)
    bio = io.BytesIO()
    bio.close()
    with pytest.raises(ValueError):
        CBW(bio)


# ------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("raw", [None, 3.5, "a/path", b"a/path", True, object(), [1]],
                         ids=["None", "float", "str", "bytes", "bool", "object", "list"])
def test_bad_raw_type(raw):
    with pytest.raises(TypeError, match="raw"):
        CBW(raw)


def test_bad_raw_fd():
    with pytest.raises(ValueError, match="negative"):
        CBW(-1)
    r, wfd = os.pipe()
    os.close(r)
    os.close(wfd)
    with pytest.raises(OSError) as exc:
        CBW(wfd)
    assert exc.value.errno == errno.EBADF


@pytest.mark.parametrize("size", [0, -4096, 1, 1000, 4095, 4097, 6144, 2 ** 32])
def test_buffer_size_value_error(size):
    with pytest.raises(ValueError, match="buffer_size"):
        CBW(io.BytesIO(), size)
    with pytest.raises(ValueError, match="buffer_size"):
        CBW(io.BytesIO(), buffer_size=size)


@pytest.mark.parametrize("size", [4096.0, "4096", None, True])
def test_buffer_size_type_error(size):
    with pytest.raises(TypeError, match="buffer_size"):
        CBW(io.BytesIO(), buffer_size=size)


@pytest.mark.parametrize("count", [0, -1])
def test_buffer_count_value_error(count):
    with pytest.raises(ValueError, match="buffer_count"):
        CBW(io.BytesIO(), buffer_count=count)


@pytest.mark.parametrize("count", [1.0, "2", None])
def test_buffer_count_type_error(count):
    with pytest.raises(TypeError, match="buffer_count"):
        CBW(io.BytesIO(), buffer_count=count)


@pytest.mark.parametrize("interval", [0, 0.0, -1, -0.5, float("nan")])
def test_flush_interval_value_error(interval):
    with pytest.raises(ValueError, match="flush_interval"):
        CBW(io.BytesIO(), flush_interval=interval)


def test_flush_interval_needs_auto_flush():
    with pytest.raises(ValueError, match="auto_flush"):
        CBW(io.BytesIO(), flush_interval=0.5, auto_flush=False)


@pytest.mark.parametrize("interval", ["1", [1]])
def test_flush_interval_type_error(interval):
    with pytest.raises(TypeError, match="flush_interval"):
        CBW(io.BytesIO(), flush_interval=interval)


def test_options_are_keyword_only():
    # CPython's test_args_error: a stray positional is a TypeError
    with pytest.raises(TypeError):
        CBW(io.BytesIO(), 4096, 4)
    with pytest.raises(TypeError):
        CBW(io.BytesIO(), buffer_size=4096, bufsize=4)


def test_buffer_size_and_count_properties():
    with CBW(io.BytesIO(), 8192, buffer_count=3) as w:
        assert w.buffer_size == 8192
        assert w.buffer_count == 3
    with CBW(io.BytesIO()) as w:
        assert w.buffer_size == cbuffer.DEFAULT_BUFFER_SIZE
        assert w.buffer_size % 4096 == 0


# ------------------------------------------------------------------ flushing strategies

def test_buffer_fill_triggers_flush(path):
    with cbuffer.open(path, buffer_size=4096, buffer_count=4) as w:
        chunk = b"f" * 1000
        for _ in range(20):
            w.write(chunk)
        # at least the first sealed buffers reach the file without flush()
        assert wait_for(lambda: len(read(path)) >= 4000)
        data = read(path)
        assert data == b"f" * len(data)
    assert read(path) == b"f" * 20000


def test_line_buffering_newline_is_on_disk_when_write_returns(path):
    with cbuffer.open(path, buffer_size=1 << 20, line_buffering=True) as w:
        w.write(b"no newline yet ")
        w.write(b"line one\n")
        assert read(path) == b"no newline yet line one\n"
        w.write(b"partial")
        w.append(b" and\nmore")
        assert read(path) == b"no newline yet line one\npartial and\nmore"
        w.write(bytearray(b"x\n"))
        assert read(path).endswith(b"morex\n")


def test_line_buffering_includes_other_threads_writes(path):
    # (lanes=0: with lanes, writes of different threads land in the order
    # their lanes move; this is the ring's own order)
    with cbuffer.open(path, buffer_size=1 << 20, line_buffering=True, lanes=0) as w:
        t = threading.Thread(target=w.write, args=(b"[other thread]",))
        t.start()
        t.join(DEADLINE)
        assert not t.is_alive()
        w.write(b"mine\n")
        assert read(path) == b"[other thread]mine\n"


def test_line_buffering_with_python_raw(path):
    bw = io.BufferedWriter(io.FileIO(path, "wb"), buffer_size=1 << 16)
    with CBW(bw, line_buffering=True) as w:
        w.write(b"through raw\n")
        assert read(path) == b"through raw\n"  # raw.flush() was called too


def test_flush_interval_reaches_disk_without_flush(path):
    with cbuffer.open(path, buffer_size=1 << 20, flush_interval=0.05) as w:
        w.write(b"tick")
        assert wait_for(lambda: read(path) == b"tick", timeout=5)
        w.write(b"tock")
        assert wait_for(lambda: read(path) == b"ticktock", timeout=5)
        assert w.stats()["flushes"] >= 2


def test_flush_interval_python_raw():
    bio = io.BytesIO()
    with CBW(bio, flush_interval=0.05, closefd=False) as w:
        w.write(b"stale?")
        assert wait_for(lambda: bio.getvalue() == b"stale?", timeout=5)
    bio.close()


def test_auto_flush_false_nothing_before_flush(path):
    with cbuffer.open(path, buffer_size=4096, buffer_count=4, auto_flush=False) as w:
        for i in range(10):
            w.write(b"%03d" % i * 100)  # 300 bytes each: fills and seals one buffer
        time.sleep(0.2)
        assert read(path) == b""
        assert w.stats()["bytes_written"] == 0
        w.flush()
        assert read(path) == b"".join(b"%03d" % i * 100 for i in range(10))


def test_auto_flush_false_blocking_io_error(path):
    accepted = []
    with cbuffer.open(path, buffer_size=4096, buffer_count=2, auto_flush=False) as w:
        err = None
        for i in range(100):
            chunk = bytes([48 + i % 10]) * 1000
            try:
                assert w.write(chunk) == len(chunk)
            except BlockingIOError as exc:
                err = exc
                rejected = chunk
                break
            accepted.append(chunk)
        assert err is not None, "every buffer sealed and waiting, yet the write was taken"
        assert err.characters_written == 0
        assert 0 < len(accepted) <= 8
        with pytest.raises(BlockingIOError) as again:
            w.write(b"x")
        assert again.value.characters_written == 0
        assert read(path) == b""
        w.flush()
        assert read(path) == b"".join(accepted)
        assert w.write(rejected) == 1000  # works again after flush()
        accepted.append(rejected)
        assert w.tell() == sum(map(len, accepted))
    assert read(path) == b"".join(accepted)


def test_auto_flush_false_large_write_raises(path):
    with cbuffer.open(path, buffer_size=4096, auto_flush=False) as w:
        w.write(b"small")
        with pytest.raises(BlockingIOError) as exc:
            w.write(b"L" * 5000)
        assert exc.value.characters_written == 0
        w.write(b"-after")
    assert read(path) == b"small-after"


def test_explicit_flush_many_times(path):
    with cbuffer.open(path, buffer_size=4096) as w:
        expected = bytearray()
        for i in range(200):
            chunk = b"<%d>" % i
            w.write(chunk)
            expected += chunk
            w.flush()
            assert read(path) == expected
        w.flush()
        w.flush()
        assert read(path) == expected


def test_fsync_regular_file(path):
    with cbuffer.open(path, fsync=True, buffer_size=4096) as w:
        for i in range(50):
            w.write(b"sync %d\n" % i * 20)
        w.flush()
        assert read(path) == b"".join(b"sync %d\n" % i * 20 for i in range(50))


def test_fsync_pipe_and_socket_are_noops():
    r, wfd = os.pipe()
    try:
        with CBW(wfd, fsync=True) as w:
            w.write(b"pipe")
            w.flush()
            assert os.read(r, 100) == b"pipe"
    finally:
        os.close(r)
    a, b = socket.socketpair()
    with a, b:
        with CBW(a, fsync=True, closefd=False) as w:
            w.write(b"sock")
            w.flush()
            assert b.recv(100) == b"sock"


def test_fsync_python_raw_calls_os_fsync(path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    bw = io.BufferedWriter(io.FileIO(path, "wb"))
    with CBW(bw, fsync=True) as w:
        w.write(b"synced")
        w.flush()
        assert calls and calls[-1] == bw.fileno()
        assert read(path) == b"synced"
    calls.clear()
    bw = io.BufferedWriter(io.FileIO(path, "wb"))
    with CBW(bw, fsync=False) as w:
        w.write(b"x")
        w.flush()
    assert calls == []


def test_fsync_python_raw_over_pipe_is_noop():
    r, wfd = os.pipe()
    try:
        raw = io.FileIO(wfd, "wb")
        bw = io.BufferedWriter(raw)
        with CBW(bw, fsync=True) as w:
            w.write(b"p")
            w.flush()
            assert os.read(r, 10) == b"p"
    finally:
        os.close(r)


# ------------------------------------------------------------------ large writes

@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_large_write_lands_whole_and_in_order(path, kind):
    bs = 4096
    big = bytes((i * 7) % 251 for i in range(3 * bs + 123))
    obj = {"bytes": big, "bytearray": bytearray(big), "memoryview": memoryview(big)}[kind]
    with cbuffer.open(path, buffer_size=bs, buffer_count=2) as w:
        assert w.append(b"before") == 0
        assert w.write(obj) == len(big)
        assert w.append(b"after") == 6 + len(big)
        assert w.tell() == 11 + len(big)
    assert read(path) == b"before" + big + b"after"


def test_large_write_buffer_can_be_reused_after_return(path):
    """The no-copy path: once write() returned, the caller may change the
    buffer; the sink must still get the bytes as they were."""
    ba = bytearray(b"A" * 50000)
    with cbuffer.open(path, buffer_size=4096) as w:
        w.write(b"<")
        w.write(ba)
        ba[:] = b"Z" * 50000
        w.write(ba[:10])
    assert read(path) == b"<" + b"A" * 50000 + b"Z" * 10


def test_many_large_and_small_writes(path):
    chunks = []
    for i in range(60):
        n = [10, 5000, 4096, 4097, 12000, 1][i % 6]
        chunks.append(bytes([i]) * n)
    with cbuffer.open(path, buffer_size=4096, buffer_count=2) as w:
        positions = [w.append(c) for c in chunks]
    data = read(path)
    assert data == b"".join(chunks)
    off = 0
    for p, c in zip(positions, chunks):
        assert p == off
        off += len(c)


def test_large_write_python_raw():
    raw = WriteOnly()
    big = os.urandom(100000)
    with CBW(raw, buffer_size=4096, closefd=False) as w:
        w.write(b"a")
        w.write(big)
        w.write(b"b")
    assert bytes(raw.data) == b"a" + big + b"b"


def test_large_write_to_pipe():
    big = os.urandom(1 << 20)
    r, wfd = os.pipe()
    got = bytearray()

    def reader():
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                return
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    try:
        with CBW(wfd, buffer_size=8192) as w:
            w.write(b"[")
            w.write(big)
            w.write(b"]")
    finally:
        t.join(DEADLINE)
        os.close(r)
    assert not t.is_alive()
    assert bytes(got) == b"[" + big + b"]"


# ------------------------------------------------------------------ stats

def test_stats(path):
    n_writes = 0
    with cbuffer.open(path, buffer_size=4096, buffer_count=2) as w:
        s = w.stats()
        assert set(s) >= {"bytes_written", "writes", "flushes", "syscalls", "ring_full_waits",
                          "reservation_retries", "utilization"}
        assert s["bytes_written"] == 0
        for i in range(1000):
            w.write(b"s%04d" % i)
            n_writes += 1
        w.write(b"x" * 10000)
        n_writes += 1
        w.flush()
        s = w.stats()
    data = read(path)
    assert len(data) == 5 * 1000 + 10000
    assert s["bytes_written"] == len(data)
    assert s["writes"] == n_writes
    assert s["flushes"] >= 2
    assert 1 <= s["syscalls"]
    for key in ("ring_full_waits", "reservation_retries"):
        assert isinstance(s[key], int) and s[key] >= 0
    assert 0 < s["utilization"] <= 1
    final = w.stats()  # still readable after close
    assert final["bytes_written"] == len(data)


@pytest.mark.parametrize("lanes", [0, 2])
def test_stats_counts_each_write_once(path, lanes):
    """``writes`` is exact whether the writes still sit in the open buffer or a lane, or the sink
    took them; each buffer counts its writes 32 at a time, so runs straddle every multiple."""
    runs = [1, 30, 1, 1, 31, 32, 33, 64, 65, 100, 1000]
    n = 0
    # One buffer larger than all of it (and no flush_interval): nothing moves until flush().
    with cbuffer.open(path, buffer_size=1 << 20, lanes=lanes) as w:
        for k in runs:
            for i in range(k):
                w.write(b"%d," % i)
            n += k
            assert w.stats()["writes"] == n
        w.flush()
        assert w.stats()["writes"] == n
    assert w.stats()["writes"] == n
    # Small buffers: hundreds of them sealed and handed over on the way.
    n = 0
    with cbuffer.open(path, buffer_size=4096, buffer_count=2, lanes=lanes) as w:
        for k in runs * 5:
            for i in range(k):
                w.write(b"%d," % i)
            n += k
            w.flush()
            assert w.stats()["writes"] == n
    assert w.stats()["writes"] == n
    assert read(path) == b"".join(b"%d," % i for k in runs * 5 for i in range(k))


def test_stats_python_raw():
    bio = io.BytesIO()
    with CBW(bio, buffer_size=4096, closefd=False) as w:
        for i in range(100):
            w.write(b"%d;" % i)
    s = w.stats()
    assert s["bytes_written"] == len(bio.getvalue())
    assert s["writes"] == 100
    bio.close()
