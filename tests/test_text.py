"""ConcurrentTextWriter and cbuffer.open()'s text modes, whole records on shared pipes, on_full, and the
logging recipes.

Every check reads back the bytes the sink received (a file, a pipe, the stdout of a child process).
Anything that replaces sys.stdout, exits with lines pending or needs several processes runs in a child
interpreter bounded in time.
"""
import codecs
import contextlib
import fcntl
import functools
import gc
import io
import json
import locale
import logging
import os
import pickle
import pty
import random
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cbuffer
from cbuffer.handlers import ConcurrentFileHandler, ConcurrentRotatingFileHandler

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
TIMEOUT = 60
BUF = 4096  # the smallest buffer: lines of up to 3x it cross buffers often
PIPE_BUF = 4096  # Linux's (select.PIPE_BUF)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# Text of every script: ASCII, Latin-1, BMP and astral characters (1 to 4 bytes in UTF-8).
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_.\u00e9\u00df\u20ac\u4e2d\u3042\U0001d11e\U0001f600"
SURROGATES = "\udc80\udcff"
ERRORS = ("surrogateescape", "surrogatepass", "replace", "ignore", "backslashreplace",
          "xmlcharrefreplace", "namereplace")
NEWLINES = (None, "", "\n", "\r\n")


# ------------------------------------------------------------------ lines that identify themselves

def line_pieces(tid, seq, max_chars, alphabet=ALPHABET):
    """The print() arguments of line ``seq`` of thread ``tid``: 0 to ``max_chars`` characters in 1 to 5
    pieces (some empty), the same in every process."""
    rng = random.Random(f"{tid}/{seq}/{max_chars}/{ascii(alphabet)}")
    text = "".join(rng.choices(alphabet, k=rng.randint(0, max_chars)))
    cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 4)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def expected_line(tid, seq, max_chars, alphabet=ALPHABET):
    """What print(f"<{tid}", seq, *pieces, f"{tid}>") writes, without its newline."""
    return " ".join([f"<{tid}", str(seq), *line_pieces(tid, seq, max_chars, alphabet), f"{tid}>"])


def print_lines(stream, tid, count, max_chars=3 * BUF, alphabet=ALPHABET):
    """``count`` lines of thread ``tid`` with print() (several write() calls each); stream None is
    sys.stdout, as for print()."""
    for seq in range(count):
        print(f"<{tid}", seq, *line_pieces(tid, seq, max_chars, alphabet), f"{tid}>", file=stream)


def run_threads(target, threads=16, timeout=TIMEOUT):
    """target(tid) in ``threads`` threads started together; re-raises the first failure."""
    start = threading.Barrier(threads)
    failures = []

    def body(tid):
        try:
            start.wait()
            target(tid)
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    deadline = time.monotonic() + timeout
    for t in pool:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in pool), "writer threads still running"
    if failures:
        raise failures[0]


def check_lines(data, threads, count, *, newline="\n", encoding="utf-8", errors="strict",
                max_chars=3 * BUF, alphabet=ALPHABET, bom=b""):
    """Every line of every thread exactly once, whole (byte for byte what print() was given, encoded and
    translated), each thread's in its order."""
    assert data.startswith(bom), data[:16]
    data = data[len(bom):]
    nl = ("\n" if newline in (None, "") else newline).encode(encoding)
    assert data.endswith(nl) or not data, f"the output ends in a partial line: {data[-80:]!r}"
    lines = data.split(nl)[:-1]
    head = re.compile(rb"<(\d+) (\d+) ")
    seen = dict.fromkeys(range(threads), 0)
    for i, line in enumerate(lines):
        m = head.match(line)
        assert m, f"line {i} is torn or garbled: {line[:100]!r}"
        tid, seq = int(m[1]), int(m[2])
        assert tid in seen, f"line {i}: unknown thread {tid}"
        assert seq == seen[tid], f"line {i}: thread {tid} line {seq} after line {seen[tid] - 1}"
        want = expected_line(tid, seq, max_chars, alphabet).encode(encoding, errors)
        assert line == want, f"line {i} (thread {tid} line {seq}) is torn or garbled: {line[:100]!r}"
        seen[tid] += 1
    assert seen == dict.fromkeys(range(threads), count), f"lines per thread: {seen}"
    return lines


class PipeReader:
    """A thread that reads a pipe to its end (or, paused, leaves it full)."""

    def __init__(self, fd, start=True):
        self.fd = fd
        self.chunks = []
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if start:
            self.go.set()

    def _run(self):
        self.go.wait()
        while True:
            b = os.read(self.fd, 1 << 16)
            if not b:
                break
            self.chunks.append(b)

    def resume(self):
        self.go.set()

    def data(self, timeout=TIMEOUT):
        self.go.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipe was never closed"
        return b"".join(self.chunks)


def child_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    env.pop("PYTHONWARNINGS", None)
    return env


def run_child(script, *args, stdout=subprocess.PIPE, timeout=TIMEOUT, dev=False, check=True, pass_fds=()):
    """Run ``script`` in a child interpreter (warnings are errors there too); returns the
    CompletedProcess.  ``check``: fail the test unless it exits with status 0."""
    cmd = [sys.executable, "-W", "error", *(["-X", "dev"] if dev else []), "-c",
           textwrap.dedent(script), *map(str, args)]
    try:
        proc = subprocess.run(cmd, env=child_env(), stdout=stdout, stderr=subprocess.PIPE,
                              timeout=timeout, pass_fds=pass_fds)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung ({timeout}s): {exc.stderr!r}")
    if check:
        assert proc.returncode == 0, f"child exit status {proc.returncode}:\n{proc.stderr.decode()}"
    return proc


def read(path):
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def a_pipe(size=None):
    r, w = os.pipe()
    try:
        if size:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def pending(fd):
    """What can be read from ``fd`` now, without waiting."""
    blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    out = b""
    try:
        while True:
            try:
                b = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not b:
                break
            out += b
    finally:
        os.set_blocking(fd, blocking)
    return out


# ------------------------------------------------------------------ 16 threads print()ing whole lines

THREADS = 16
LINES = 20  # per thread


def _open_kwargs(encoding, errors, newline):
    return {"encoding": encoding, "errors": errors, "newline": newline, "buffer_size": BUF}


def threads_into_file(tmp_path, alphabet, **kw):
    path = tmp_path / "out.txt"
    w = cbuffer.open(path, "w", **_open_kwargs(**kw))
    try:
        run_threads(lambda t: print_lines(w, t, LINES, alphabet=alphabet), THREADS)
    finally:
        w.close()
    return read(path)


def threads_into_pipe(tmp_path, alphabet, **kw):
    with a_pipe() as (r, wfd):
        reader = PipeReader(r)
        w = cbuffer.open(wfd, "w", closefd=False, **_open_kwargs(**kw))
        try:
            run_threads(lambda t: print_lines(w, t, LINES, alphabet=alphabet), THREADS)
        finally:
            w.close()
            os.close(wfd)
        return reader.data()


STDOUT_CHILD = """
    import sys
    import cbuffer
    from test_text import print_lines, run_threads
    encoding, errors, newline, alphabet = {args!r}
    sys.stdout = cbuffer.open(1, "w", closefd=False, buffer_size={buf}, encoding=encoding, errors=errors,
                              newline=newline)
    run_threads(lambda t: print_lines(None, t, {lines}, alphabet=alphabet), {threads})
    # no close(): what is accepted reaches stdout at exit
"""


def threads_into_stdout(tmp_path, alphabet, *, encoding, errors, newline, to_file=False):
    script = STDOUT_CHILD.format(args=(encoding, errors, newline, alphabet), buf=BUF, lines=LINES,
                                 threads=THREADS)
    if not to_file:
        return run_child(script).stdout
    path = tmp_path / "stdout.txt"
    with open(path, "wb") as out:
        run_child(script, stdout=out)
    return read(path)


SINKS = {
    "file": threads_into_file,
    "pipe": threads_into_pipe,
    "stdout-pipe": threads_into_stdout,
    "stdout-file": lambda tmp_path, alphabet, **kw: threads_into_stdout(tmp_path, alphabet, to_file=True,
                                                                        **kw),
}


@pytest.mark.parametrize("newline", NEWLINES, ids=["None", "empty", "lf", "crlf"])
@pytest.mark.parametrize("sink", SINKS)
def test_threads_print_whole_lines(tmp_path, sink, newline):
    """16 threads print() lines of 0 to 3x the buffer size in up to 7 arguments: every line lands whole
    (encoded and translated as io would), each thread's lines in order."""
    data = SINKS[sink](tmp_path, ALPHABET, encoding="utf-8", errors="strict", newline=newline)
    check_lines(data, THREADS, LINES, newline=os.linesep if newline is None else newline)


@pytest.mark.parametrize("errors", ERRORS)
@pytest.mark.parametrize("sink", ["file", "pipe", "stdout-pipe"])
def test_threads_print_surrogates(tmp_path, sink, errors):
    """Lone surrogates in every line, with each errors mode: each line encoded whole with that mode."""
    alphabet = ALPHABET + SURROGATES
    data = SINKS[sink](tmp_path, alphabet, encoding="utf-8", errors=errors, newline=None)
    check_lines(data, THREADS, LINES, errors=errors, alphabet=alphabet)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16-le", "cp1252"])
def test_threads_print_other_encodings(tmp_path, encoding):
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789\u00e9\u00df"
    if encoding != "latin-1":
        alphabet += "\u20ac"
    data = threads_into_file(tmp_path, alphabet, encoding=encoding, errors="strict", newline="\n")
    if encoding == "utf-16-le":  # the checks read ASCII heads: compare in UTF-8
        data = data.decode(encoding).encode("utf-8")
        encoding = "utf-8"
    check_lines(data, THREADS, LINES, encoding=encoding, alphabet=alphabet)


def test_threads_strict_errors_lose_only_the_bad_line(tmp_path):
    """errors='strict': a print() with a lone surrogate raises UnicodeEncodeError and writes nothing of
    that argument or after it; what the print() wrote before it stays, as io keeps it (it is the start
    of that thread's next line); every other line is whole."""
    path = tmp_path / "out.txt"
    w = cbuffer.open(path, "w", encoding="utf-8", buffer_size=BUF)
    raised = []

    def body(tid):
        for seq in range(LINES):
            if seq % 3 == 1:
                try:
                    print(f"<{tid}", "BAD", "BEFORE", "\udc80", "AFTER", f"{tid}>", file=w)
                except UnicodeEncodeError:
                    raised.append(tid)
                continue
            print(f"<{tid}", seq // 3, *line_pieces(tid, seq // 3, BUF), f"{tid}>", file=w)

    try:
        run_threads(body, 8)
    finally:
        w.close()
    data = read(path)
    assert len(raised) == 8 * len(range(1, LINES, 3))
    assert b"AFTER" not in data and b"\xed" not in data
    good = data.split(b"\n")[:-1]
    assert len(good) == 8 * (LINES - len(range(1, LINES, 3)))
    for line in good:
        tid = int(re.match(rb"<(\d+) ", line).group(1))
        line = re.sub(rb"^(<%d BAD BEFORE )+" % tid, b"", line)  # this thread's own pieces
        tid, seq = map(int, re.match(rb"<(\d+) (\d+) ", line).groups())
        assert line == expected_line(tid, seq, BUF).encode()


# ------------------------------------------------------------------ io.TextIOWrapper's behaviour

@pytest.fixture
def path(tmp_path):
    return tmp_path / "t.txt"


def io_twin(path, mode="w", **kwargs):
    """io's text file for the same arguments (the reference)."""
    return open(path, mode, **kwargs)


def test_is_a_write_only_text_stream(path):
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        assert isinstance(w, io.TextIOBase) and isinstance(w, cbuffer.ConcurrentTextWriter)
        assert w.writable() and not w.readable() and not w.seekable()
        assert isinstance(w.buffer, cbuffer.ConcurrentBufferedWriter)
        for call in (w.read, w.readline, lambda: w.seek(0), w.tell, w.truncate):
            with pytest.raises(io.UnsupportedOperation):
                call()
        assert w.write("caf\u00e9\n") == 5
    assert read(path) == "caf\u00e9\n".encode()


def test_default_encoding_and_errors(path, tmp_path):
    with cbuffer.open(path, "w") as w, io_twin(tmp_path / "io.txt") as ref:
        assert codecs.lookup(w.encoding).name == codecs.lookup(ref.encoding).name
        assert codecs.lookup(w.encoding).name == codecs.lookup(locale.getpreferredencoding(False)).name
        assert w.errors == ref.errors == "strict"
        assert w.newlines is None


def test_encoding_attribute_spelled_as_io(path, tmp_path):
    """encoding=None: the attribute is what io.TextIOWrapper reports (the locale's name for it)."""
    with cbuffer.open(path, "w") as w, io_twin(tmp_path / "io.txt") as ref:
        assert w.encoding == ref.encoding


@pytest.mark.parametrize("encoding,errors", [("latin-1", "strict"), ("ascii", "replace"),
                                             ("utf-16", "surrogatepass"), ("UTF8", "ignore")])
def test_encoding_and_errors_as_given(path, encoding, errors):
    with cbuffer.open(path, "w", encoding=encoding, errors=errors) as w:
        assert (w.encoding, w.errors) == (encoding, errors)


@pytest.mark.parametrize("kwargs,exc", [
    ({"encoding": 42}, TypeError),
    ({"encoding": "\udcfe"}, UnicodeEncodeError),
    ({"encoding": "utf-8\0"}, ValueError),
    ({"encoding": "no-such-codec"}, LookupError),
    ({"encoding": "hex"}, LookupError),
    ({"encoding": "utf-8", "errors": 42}, TypeError),
    ({"encoding": "utf-8", "errors": "\udcfe"}, UnicodeEncodeError),
    ({"encoding": "utf-8", "errors": "replace\0"}, ValueError),
    ({"encoding": "utf-8", "newline": 42}, TypeError),
    ({"encoding": "utf-8", "newline": "xyzzy"}, ValueError),
    ({"encoding": "utf-8", "newline": "\udcfe"}, ValueError),
    ({"encoding": "utf-8", "newline": "\n\0"}, ValueError),
], ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__)
def test_argument_validation_as_io(path, kwargs, exc):
    """The argument errors io.TextIOWrapper (the C one, what open() makes) raises, from both
    cbuffer.open() and ConcurrentTextWriter()."""
    with pytest.raises(exc):
        io.TextIOWrapper(io.BytesIO(), **kwargs)
    raises(exc, lambda: cbuffer.open(path, "w", **kwargs), lambda w: w.close())
    with cbuffer.open(path, "wb") as b:
        raises(exc, lambda: cbuffer.ConcurrentTextWriter(b, **kwargs), lambda w: w.detach())


def raises(exc, make, dispose):
    """pytest.raises(exc) around make(); what make() returned when it did not raise is disposed of."""
    try:
        made = make()
    except exc:
        return
    except Exception as other:
        pytest.fail(f"raised {type(other).__name__}: {other} (io raises {exc.__name__})")
    dispose(made)
    pytest.fail(f"did not raise {exc.__name__} (io does)")


def test_unknown_errors_handler_in_dev_mode(tmp_path):
    """In development mode io checks ``errors`` when the stream is made (LookupError)."""
    script = """
        import io, sys, cbuffer
        for make in (lambda: io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="Boom"),
                     lambda: cbuffer.open(sys.argv[1], "w", encoding="utf-8", errors="Boom")):
            try:
                make().close()
            except LookupError:
                print("LookupError")
            else:
                print("accepted")
    """
    out = run_child(script, tmp_path / "t.txt", dev=True).stdout.decode().split()
    assert out == ["LookupError", "LookupError"]


def test_encoding_error_raised_by_the_write_that_carries_it(path):
    """As io: write() of text that cannot be encoded raises UnicodeEncodeError itself (not some later
    write), and text written before it is not lost with it."""
    w = cbuffer.open(path, "w", encoding="ascii")
    try:
        w.write("kept ")
        with pytest.raises(UnicodeEncodeError):
            w.write("\xff")
        w.write("line\n")
    finally:
        w.close()
    assert read(path) == b"kept line\n"


@pytest.mark.parametrize("newline,expected", [
    (None, b"AAA\nBBB\nCCC\nX\rY\r\nZ"),
    ("", b"AAA\nBBB\nCCC\nX\rY\r\nZ"),
    ("\n", b"AAA\nBBB\nCCC\nX\rY\r\nZ"),
    ("\r", b"AAA\rBBB\rCCC\rX\rY\r\rZ"),
    ("\r\n", b"AAA\r\nBBB\r\nCCC\r\nX\rY\r\r\nZ"),
], ids=["None", "empty", "lf", "cr", "crlf"])
def test_newline_translation(path, tmp_path, newline, expected):
    """CPython's test_newlines_output, checked against io too."""
    for opener, target in ((cbuffer.open, path), (io_twin, tmp_path / "io.txt")):
        with opener(target, "w", encoding="ascii", newline=newline) as w:
            w.write("AAA\nB")
            w.write("BB\nCCC\n")
            w.write("X\rY\r\nZ")
        assert read(target) == expected


def test_line_buffering_flushes_on_newline_and_carriage_return():
    with a_pipe() as (r, wfd):
        w = cbuffer.open(wfd, "w", closefd=False, encoding="utf-8", newline="\n", line_buffering=True)
        try:
            assert w.line_buffering
            w.write("X")
            seen = pending(r)
            assert seen == b""
            w.write("Y\nZ")
            seen += pending(r)
            assert seen.startswith(b"XY\n")  # the line is on the pipe (the "Z" after it may wait)
            w.write("A\rB")
            seen += pending(r)
            assert seen == b"XY\nZA\rB"
            w.write("progress 50%\r")
            assert pending(r) == b"progress 50%\r"
        finally:
            w.close()


def test_without_line_buffering_nothing_reaches_the_pipe_before_flush():
    with a_pipe() as (r, wfd):
        w = cbuffer.open(wfd, "w", closefd=False, encoding="utf-8")
        try:
            assert not w.line_buffering
            w.write("one\n")
            w.write("two\r")
            time.sleep(0.05)
            assert pending(r) == b""
            w.flush()
            assert pending(r) == b"one\ntwo\r"
        finally:
            w.close()


def test_write_through(path):
    """write_through: each write() goes to the byte writer at once (its stats count it) without flushing
    it, as io.TextIOWrapper's write_through passes text to its buffer."""
    with cbuffer.open(path, "w", encoding="utf-8", write_through=True) as w:
        assert w.write_through
        w.write("a")
        w.write("b\nc")
        assert w.buffer.stats()["writes"] == 2
        assert read(path) == b""
        w.flush()
        assert read(path) == b"ab\nc"
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        assert not w.write_through
        w.write("a")
        assert w.buffer.stats()["writes"] == 0


@pytest.mark.parametrize("mode", ["w", "a", "x"])
def test_attributes_of_a_path(tmp_path, mode):
    path = tmp_path / f"{mode}.txt"
    with cbuffer.open(path, mode, encoding="utf-8") as w, io_twin(tmp_path / f"io-{mode}.txt", mode,
                                                                  encoding="utf-8") as ref:
        assert w.mode == ref.mode == mode
        assert w.name == os.fspath(path)
        assert isinstance(w.buffer, cbuffer.ConcurrentBufferedWriter)
        assert w.fileno() == w.buffer.fileno()
        assert os.path.samestat(os.fstat(w.fileno()), os.stat(path))
        assert w.isatty() is False
        assert repr(w).startswith("<cbuffer.text.ConcurrentTextWriter") and str(path) in repr(w)


def test_mode_wt_as_io(tmp_path):
    with cbuffer.open(tmp_path / "a", "wt", encoding="utf-8") as w, \
            io_twin(tmp_path / "b", "wt", encoding="utf-8") as ref:
        assert w.mode == ref.mode


def test_attributes_of_an_fd():
    with a_pipe() as (r, wfd):
        with cbuffer.open(wfd, "w", closefd=False, encoding="utf-8") as w:
            assert w.name == wfd and w.fileno() == wfd and w.mode == "w"
            assert not w.isatty() and not w.line_buffering
            w.write("x\n")
        assert pending(r) == b"x\n"
        os.fstat(wfd)  # closefd=False left it open


def test_a_tty_is_line_buffered():
    """cbuffer.open(fd, "w") on a terminal is line-buffered, as open() is: a line is on the tty at once."""
    master, slave = pty.openpty()
    try:
        w = cbuffer.open(slave, "w", closefd=False, encoding="utf-8")
        try:
            assert w.isatty() and w.line_buffering
            w.write("hello\n")
            deadline = time.monotonic() + 5
            got = b""
            while b"hello" not in got and time.monotonic() < deadline:
                got += pending(master)
                time.sleep(0.01)
            assert b"hello" in got
        finally:
            w.close()
    finally:
        os.close(master)
        os.close(slave)


def test_stdout_child_on_a_tty_is_line_buffered():
    master, slave = pty.openpty()
    try:
        script = """
            import sys, cbuffer
            sys.stdout = cbuffer.open(1, "w", closefd=False)
            sys.stderr.write(f"{sys.stdout.isatty()} {sys.stdout.line_buffering}\\n")
            print("first")
            sys.stdin.readline()  # hold: the line must already be on the tty
        """
        proc = subprocess.Popen([sys.executable, "-W", "error", "-c", textwrap.dedent(script)],
                                env=child_env(), stdin=subprocess.PIPE, stdout=slave, stderr=subprocess.PIPE)
        got = b""
        try:
            deadline = time.monotonic() + TIMEOUT
            while b"first" not in got and time.monotonic() < deadline and proc.poll() is None:
                got += pending(master)
                time.sleep(0.02)
            assert b"first" in got
        finally:
            _, err = proc.communicate(b"\n", timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert err.split() == [b"True", b"True"]
    finally:
        os.close(master)
        os.close(slave)


def test_close_is_idempotent_and_everything_after_it_raises(path):
    w = cbuffer.open(path, "w", encoding="utf-8")
    w.write("x\n")
    assert not w.closed
    w.close()
    assert w.closed and w.buffer.closed
    w.close()
    w.close()
    for call in (lambda: w.write("y\n"), lambda: w.write(""), w.flush, w.fileno, w.isatty,
                 lambda: w.writelines(["z\n"]), w.writable):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        with w:
            pass
    assert read(path) == b"x\n"


@pytest.mark.parametrize("value", [b"bytes\n", bytearray(b"x"), 1, None, ["a"]], ids=repr)
def test_write_non_str_raises_type_error(path, value):
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        w.write("a")
        with pytest.raises(TypeError):
            w.write(value)
        w.write("b\n")
    assert read(path) == b"ab\n"


class Message(str):
    """A str subclass, as loguru hands its sinks (with a different str())."""

    def __str__(self):
        return "not the characters"


def test_write_str_subclass_writes_its_characters(path):
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        assert w.write(Message("partial ")) == 8
        assert w.write(Message("line\nnext\n")) == 10
    got = read(path)
    with open(path, "w", encoding="utf-8") as ref:  # what io writes for it
        ref.write(Message("partial "))
        ref.write(Message("line\nnext\n"))
    assert got == read(path) == b"partial line\nnext\n"


def test_writelines(path):
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        w.writelines(["a", "b\n", "c\n"])
        with pytest.raises(TypeError):
            w.writelines([1, 2])
    assert read(path) == b"ab\nc\n"


def test_detach(path):
    w = cbuffer.open(path, "w", encoding="ascii")
    w.write("line\n")
    w.write("partial")
    other = threading.Thread(target=w.write, args=("other thread's partial",))
    other.start()
    other.join()
    b = w.detach()
    assert isinstance(b, cbuffer.ConcurrentBufferedWriter) and not b.closed
    assert read(path).startswith(b"line\n")
    assert b"partial" in read(path) and b"other thread's partial" in read(path)
    with pytest.raises(ValueError):
        w.detach()
    with pytest.raises(ValueError):
        w.write("x\n")
    repr(w)
    assert (w.encoding, w.errors, w.line_buffering, w.write_through) == ("ascii", "strict", False, False)
    b.write(b"\nstill usable\n")
    b.close()
    assert read(path).endswith(b"still usable\n")
    w.close()  # nothing to close any more


def test_pickling_is_refused(path):
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(w, protocol)


def test_buffer_is_read_only(path):
    with cbuffer.open(path, "w", encoding="utf-8") as w:
        with pytest.raises(AttributeError):
            w.buffer = io.BytesIO()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_bom_once_at_the_start_and_not_when_appending(path, tmp_path, encoding):
    """A BOM once at the start of an empty file (in mode "a" too), none in the middle of the lines of
    several threads, none when appending to a file that has text: byte for byte what io writes."""
    ref = tmp_path / "io.txt"
    for target, opener in ((path, cbuffer.open), (ref, io_twin)):
        with opener(target, "a", encoding=encoding) as w:  # "a" on a new, empty file
            w.write("first\n")
        with opener(target, "a", encoding=encoding) as w:
            w.write("second\n")
    assert read(path) == read(ref) == "first\nsecond\n".encode(encoding)
    with cbuffer.open(path, "w", encoding=encoding) as w:
        run_threads(lambda t: print_lines(w, t, 4, 300, "abc\u00e9\u20ac"), 4)
    data = read(path)
    bom = {"utf-8-sig": codecs.BOM_UTF8, "utf-16": codecs.BOM_UTF16, "utf-32": codecs.BOM_UTF32}[encoding]
    assert data.startswith(bom) and data.count(bom) == 1
    check_lines(data.decode(encoding).encode("utf-8"), 4, 4, max_chars=300, alphabet="abc\u00e9\u20ac")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_no_bom_in_a_file_never_written(path, tmp_path, encoding):
    """io writes the BOM with the first text: a text file opened and closed unwritten stays empty."""
    with io_twin(tmp_path / "io.txt", "w", encoding=encoding):
        pass
    with cbuffer.open(path, "w", encoding=encoding):
        pass
    assert read(tmp_path / "io.txt") == b""
    assert read(path) == b""


def test_bom_on_a_pipe_once():
    with a_pipe() as (r, wfd):
        reader = PipeReader(r)
        w = cbuffer.open(wfd, "w", encoding="utf-16", closefd=False)
        w.write("a\n")
        w.write("b\n")
        w.close()
        os.close(wfd)
        assert reader.data() == "a\nb\n".encode("utf-16")


def test_partial_line_waits_for_its_newline_or_this_threads_flush():
    with a_pipe() as (r, wfd):
        w = cbuffer.open(wfd, "w", closefd=False, encoding="utf-8")
        try:
            w.write("half ")
            w.buffer.flush()  # the byte writer has nothing of it yet
            assert pending(r) == b""
            w.write("a line\nand more")
            w.buffer.flush()
            assert pending(r) == b"half a line\n"
            w.flush()  # this thread's partial line goes too
            assert pending(r) == b"and more"
        finally:
            w.close()


def test_close_hands_over_every_threads_partial_line(path):
    w = cbuffer.open(path, "w", encoding="utf-8")
    parked = threading.Barrier(9)
    release = threading.Event()

    def body(tid):
        w.write(f"[partial {tid} ")
        w.write(f"of thread {tid}]")
        parked.wait()
        release.wait(TIMEOUT)

    pool = [threading.Thread(target=body, args=(t,)) for t in range(8)]
    for t in pool:
        t.start()
    parked.wait()
    try:
        w.write("[main's own]")
        w.close()  # while the threads are alive: their partial lines are handed over
    finally:
        release.set()
        for t in pool:
            t.join(TIMEOUT)
    data = read(path).decode()
    pieces = re.findall(r"\[[^\]]*\]", data)
    assert sorted(pieces) == sorted(["[main's own]", *(f"[partial {t} of thread {t}]" for t in range(8))])
    assert "".join(pieces) == data


def test_close_racing_writers_loses_nothing_a_write_accepted(tmp_path):
    """close() while threads write pieces of lines: each write() either raises ValueError or its text
    reaches the file, exactly once (the byte writer's promise for a write racing close())."""
    script = """
        import os, random, sys, threading, time, cbuffer
        sys.setswitchinterval(1e-5)
        bad = []
        for rnd in range(12):
            path = os.path.join(sys.argv[1], f"r{rnd}.txt")
            w = cbuffer.open(path, "w", encoding="utf-8")
            accepted = [[] for _ in range(4)]
            go = threading.Barrier(5)
            def body(t):
                go.wait()
                i = 0
                while True:
                    token = f"[{t}:{i}]"
                    try:
                        w.write(token)
                        accepted[t].append(token)
                        if i % 7 == 6:
                            w.write("\\n")
                    except ValueError:
                        return
                    i += 1
            threads = [threading.Thread(target=body, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            go.wait()
            time.sleep(random.random() * 0.002)
            w.close()
            for t in threads:
                t.join()
            with open(path, encoding="utf-8") as f:
                data = f.read()
            bad += [(rnd, tok, data.count(tok)) for a in accepted for tok in a if data.count(tok) != 1]
        print(len(bad), bad[:5])
    """
    out = run_child(script, tmp_path).stdout.decode()
    assert out.startswith("0 "), f"accepted text lost or repeated (count, first cases): {out}"


def test_partial_line_of_a_thread_that_ended(path):
    w = cbuffer.open(path, "w", encoding="utf-8")
    t = threading.Thread(target=w.write, args=("left behind",))
    t.start()
    t.join()
    w.write("main\n")
    w.close()
    assert read(path) in (b"main\nleft behind", b"left behindmain\n")


def test_partial_lines_of_every_thread_at_exit(tmp_path):
    """A process that exits with partial lines pending (no flush, no close): each lands whole at exit,
    the main thread's and those of threads that ended, in a file and on a replaced sys.stdout."""
    path = tmp_path / "t.txt"
    script = """
        import sys, threading, cbuffer
        log = cbuffer.open(sys.argv[1], "w", encoding="utf-8")
        sys.stdout = cbuffer.open(1, "w", closefd=False, encoding="utf-8")
        def body(tid):
            log.write(f"[file {tid} ")
            log.write(f"{tid}]")
            print(f"[stdout {tid}", end="")
            print(f" {tid}]", end="")
        threads = [threading.Thread(target=body, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.write("[file main]")
        print("[stdout main]", end="")
    """
    out = run_child(script, path).stdout.decode()
    data = read(path).decode()
    for text, kind in ((data, "file"), (out, "stdout")):
        pieces = re.findall(r"\[[^\]]*\]", text)
        assert sorted(pieces) == sorted([f"[{kind} main]", *(f"[{kind} {t} {t}]" for t in range(4))]), text
        assert "".join(pieces) == text


def test_partial_line_of_a_multiprocessing_worker(tmp_path):
    """What a multiprocessing worker wrote reaches the sink when it ends normally (through os._exit),
    as the byte writer promises: its partial line too."""
    path = tmp_path / "t.txt"
    script = """
        import multiprocessing, sys, cbuffer
        def work(path):
            w = cbuffer.open(path, "a", encoding="utf-8")
            w.write("whole line\\n")
            w.write("no newline")
            global keep
            keep = w
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            p = ctx.Process(target=work, args=(sys.argv[1],))
            p.start()
            p.join(30)
            assert p.exitcode == 0, p.exitcode
    """
    script_path = tmp_path / "mp_child.py"
    script_path.write_text(textwrap.dedent(script))
    try:
        proc = subprocess.run([sys.executable, "-W", "error", str(script_path), str(path)], env=child_env(),
                              capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung: {exc}")
    assert proc.returncode == 0, proc.stderr.decode()
    assert read(path) == b"whole line\nno newline"


def test_unclosed_text_writer_warns_and_flushes(tmp_path):
    """Dropped unclosed, a text writer over a file it owns says so (ResourceWarning, as io's text files
    do) and its text, partial line included, reaches the file."""
    script = """
        import gc, sys, warnings, cbuffer
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            w = cbuffer.open(sys.argv[1], "w", encoding="utf-8")
            w.write("line\\npartial")
            del w
            gc.collect()
        print(sorted({c.category.__name__ for c in caught}))
    """
    out = run_child(script, tmp_path / "t.txt").stdout.decode().strip()
    assert out == "['ResourceWarning']"
    assert read(tmp_path / "t.txt") == b"line\npartial"


def test_subclass_flush_and_close_are_called(path):
    """As io.IOBase: close() calls self.flush(), and dropping the object calls close()."""
    calls = []

    class Traced(cbuffer.ConcurrentTextWriter):
        def flush(self):
            calls.append("flush")
            super().flush()

        def close(self):
            calls.append("close")
            super().close()

    t = Traced(cbuffer.open(path, "wb"), encoding="utf-8")
    t.write("x")
    t.close()
    assert calls == ["close", "flush"]
    assert read(path) == b"x"
    calls.clear()
    t = Traced(cbuffer.open(path, "wb"), encoding="utf-8")
    with pytest.warns(ResourceWarning):  # its file was left open, as io's would say
        del t
        gc.collect()
    assert calls[:2] == ["close", "flush"]


def test_signal_handler_writing_a_line_mid_print(tmp_path):
    """A signal handler that prints a line while its thread is inside print() (the same thread's
    partial line, as with io): no text of either is lost or repeated."""
    script = """
        import os, signal, sys, cbuffer
        w = cbuffer.open(sys.argv[1], "w", encoding="utf-8")
        count = 0
        busy = False
        def handler(signum, frame):
            # A signal can land while an earlier handler is itself mid-print; its line would then
            # sit inside the other's, which io does too.  One handler line at a time.
            global count, busy
            if busy:
                return
            busy = True
            count += 1
            print("handler", count, file=w)
            busy = False
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        for i in range(200000):
            print("main", i, "x" * 20, file=w)
            if count >= 200:
                break
        signal.setitimer(signal.ITIMER_REAL, 0)
        w.close()
        print(count)
    """
    count = int(run_child(script, tmp_path / "t.txt").stdout)
    assert count >= 200
    data = read(tmp_path / "t.txt").decode()
    handlers = re.findall(r"handler (\d+)\n", data)
    assert handlers == [str(i) for i in range(1, count + 1)], "a handler's line was lost or repeated"
    main = re.sub(r"handler \d+\n", "", data).split("\n")
    assert main[-1] == ""
    assert main[:-1] == [f"main {i} {'x' * 20}" for i in range(len(main) - 1)], "main's lines lost text"


# ------------------------------------------------------------------ whole records on a shared pipe

def packets_check(stream, boundaries, long_line=PIPE_BUF):
    """``boundaries``: offsets in ``stream`` where a write(2) may have ended.  Each must be at a line end,
    unless it is inside a line longer than PIPE_BUF."""
    line_starts = [0] + [m.end() for m in re.finditer(b"\n", stream)]
    ends = set(line_starts)
    long_spans = [(a, b) for a, b in zip(line_starts, line_starts[1:]) if b - a > long_line]
    for pos in boundaries:
        if pos in ends:
            continue
        inside = [(a, b) for a, b in long_spans if a < pos < b]
        assert inside, f"a write(2) ended at {pos}, inside a line of at most PIPE_BUF bytes: " \
                       f"{stream[max(0, pos - 40):pos + 40]!r}"


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_pipe_writes_are_whole_lines_of_at_most_pipe_buf(kind):
    """On a pipe each write(2) carries whole lines and at most PIPE_BUF bytes; a line longer than
    PIPE_BUF goes alone.  Seen through a packet-mode pipe (O_DIRECT): each read returns one write(2)'s
    bytes, or a PIPE_BUF piece of a longer one."""
    r, wfd = os.pipe2(os.O_DIRECT)
    try:
        packets = []

        def read_packets():
            while True:
                b = os.read(r, PIPE_BUF)
                if not b:
                    return
                packets.append(b)

        reader = threading.Thread(target=read_packets, daemon=True)
        reader.start()
        w = cbuffer.open(wfd, "w" if kind == "text" else "wb", closefd=False, buffer_size=BUF)

        def body(tid):
            rng = random.Random(tid)
            for seq in range(150):
                size = rng.choice([rng.randint(10, 300), rng.randint(10, 4000), rng.randint(4000, 9000)])
                line = f"<{tid} {seq} " + "x" * size + f" {tid}>\n"
                w.write(line if kind == "text" else line.encode())

        run_threads(body, 4)
        w.close()
        os.close(wfd)
        wfd = -1
        reader.join(TIMEOUT)
        assert not reader.is_alive()
    finally:
        os.close(r)
        if wfd >= 0:
            os.close(wfd)
    stream = b"".join(packets)
    boundaries, pos = [], 0
    for p in packets:
        assert len(p) <= PIPE_BUF
        pos += len(p)
        boundaries.append(pos)
    packets_check(stream, boundaries)
    assert len(stream.split(b"\n")) - 1 == 4 * 150


@pytest.mark.parametrize("sink", ["file", "socket", "pipe"])
def test_batching_kept(tmp_path, sink):
    """Whole lines from 8 threads, and still few system calls: a file or a socket gets whole buffers per
    writev, a pipe at most PIPE_BUF bytes (whole lines) per write(2)."""
    closers = []
    if sink == "file":
        w = cbuffer.open(tmp_path / "t.txt", "w", encoding="utf-8")
        collect = None
    else:
        if sink == "socket":
            a, b = socket.socketpair()
            closers += [a.close, b.close]
            rfd, wfd = b.fileno(), a.fileno()
            end_of_data = functools.partial(a.shutdown, socket.SHUT_WR)
        else:
            rfd, wfd = os.pipe()
            closers += [functools.partial(os.close, rfd), functools.partial(os.close, wfd)]
            end_of_data = functools.partial(os.close, wfd)
        reader = PipeReader(rfd)
        w = cbuffer.open(wfd, "w", closefd=False, encoding="utf-8")

        def collect():
            end_of_data()
            return reader.data()
    try:
        run_threads(lambda t: print_lines(w, t, 2000, max_chars=50, alphabet="abcdef"), 8)
        w.flush()
        stats = w.buffer.stats()
        w.close()
        data = read(tmp_path / "t.txt") if collect is None else collect()
    finally:
        for close in closers:
            with contextlib.suppress(OSError):
                close()
    check_lines(data, 8, 2000, max_chars=50, alphabet="abcdef")
    per_call = len(data) / stats["syscalls"]
    assert per_call >= (PIPE_BUF // 2 if sink == "pipe" else cbuffer.DEFAULT_BUFFER_SIZE // 2), (
        f"{stats['syscalls']} system calls for {len(data)} bytes")


JSON_WRITER = """
    import json, os, random, sys, threading
    import cbuffer
    proc = int(sys.argv[1])
    kind = sys.argv[2]
    if kind == "fifo":
        sys.stdout = cbuffer.open(sys.argv[4], "a", encoding="utf-8")
    else:
        sys.stdout = cbuffer.open(1, "w", closefd=False, encoding="utf-8")
    lines = int(sys.argv[3])
    def body(tid):
        rng = random.Random(proc * 100 + tid)
        for seq in range(lines):
            size = rng.randint(10, 4000)
            head = json.dumps([proc, tid, seq, ""])
            pad = "x" * max(0, size - len(head) - 1)
            print(json.dumps([proc, tid, seq, pad]))
    threads = [threading.Thread(target=body, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stdout.flush()
"""

JSON_CHECKER = """
    import json, sys
    bad, seen, order_ok, lines = 0, {}, True, 0
    stream = open(sys.argv[1], "rb") if len(sys.argv) > 1 else sys.stdin.buffer
    for raw in stream:
        lines += 1
        try:
            proc, tid, seq, pad = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        key = f"{proc}/{tid}"
        if seq != seen.get(key, -1) + 1:
            order_ok = False
        seen[key] = seq
    print(json.dumps({"lines": lines, "bad": bad, "order_ok": order_ok, "last": seen}))
"""


def json_lines_on_one_pipe(kind, lines, tmp_path=None, processes=4, pipe_size=16384):
    """4 processes x 4 threads print JSON lines of 10..4000 bytes into one pipe (their stdout, or a FIFO
    each opens by path) read by a checker process; returns its report.  The pipe holds ``pipe_size``
    bytes, so writers often find it full."""
    keep = -1
    if kind == "fifo":
        fifo = os.path.join(tmp_path, "fifo")
        os.mkfifo(fifo)
        checker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(JSON_CHECKER), fifo],
                                   stdout=subprocess.PIPE, env=child_env())
        deadline = time.monotonic() + TIMEOUT
        while keep < 0:  # held open until every writer is done: the checker sees one end of file
            try:
                keep = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: the checker has not opened it yet
                assert time.monotonic() < deadline and checker.poll() is None
                time.sleep(0.01)
        fcntl.fcntl(keep, F_SETPIPE_SZ, pipe_size)
        writers = [subprocess.Popen([sys.executable, "-W", "error", "-c", textwrap.dedent(JSON_WRITER),
                                     str(p), kind, str(lines), fifo], env=child_env())
                   for p in range(processes)]
    else:
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, pipe_size)
        checker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(JSON_CHECKER)], stdin=r,
                                   stdout=subprocess.PIPE, env=child_env())
        os.close(r)
        writers = [subprocess.Popen([sys.executable, "-W", "error", "-c", textwrap.dedent(JSON_WRITER),
                                     str(p), kind, str(lines)], stdout=w, env=child_env())
                   for p in range(processes)]
        os.close(w)
    try:
        for p in writers:
            assert p.wait(TIMEOUT) == 0
        if keep >= 0:
            os.close(keep)
            keep = -1
        out, _ = checker.communicate(timeout=TIMEOUT)
    finally:
        if keep >= 0:
            os.close(keep)
        for p in (*writers, checker):
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads(out)


@pytest.mark.parametrize("kind", ["stdout", "fifo"])
def test_json_lines_from_four_processes_on_one_pipe(tmp_path, kind):
    """Every line the checker reads parses, and each thread's lines arrive in order ("fifo": each
    process opens a named pipe by its path)."""
    report = json_lines_on_one_pipe(kind, 400, tmp_path)
    assert report["bad"] == 0, report
    assert report["lines"] == 4 * 4 * 400
    assert report["order_ok"]
    assert report["last"] == {f"{p}/{t}": 399 for p in range(4) for t in range(4)}


# ------------------------------------------------------------------ on_full with a stalled pipe

RECORD = re.compile(rb"<(\d+):(\d+)>(x*)\n")


def numbered(seq, size):
    """A record that says its number and length: <seq:size>xxx...\\n"""
    head = b"<%d:%d>" % (seq, size)
    return head + b"x" * max(0, size - len(head) - 1) + b"\n"


def parse_records(data):
    """The numbers of the records in ``data``, asserting that each is whole."""
    out, pos = [], 0
    for m in RECORD.finditer(data):
        assert m.start() == pos, f"garbage at {pos}: {data[pos:pos + 60]!r}"
        seq, size = int(m[1]), int(m[2])
        assert m[0] == numbered(seq, size), f"record {seq} torn: {len(m[0])} bytes"
        out.append(seq)
        pos = m.end()
    assert pos == len(data), f"partial record at the end: {data[pos:pos + 60]!r}"
    return out


def stalled(on_full, text=False, **kwargs):
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BUF)
    writer = cbuffer.open(w, "w" if text else "wb", buffer_size=BUF, buffer_count=2, closefd=False,
                          on_full=on_full, **kwargs)
    return r, w, writer


def sizes(n, seed=0):
    rng = random.Random(seed)
    return [rng.choice([rng.randint(20, 200), rng.randint(200, 3000), rng.randint(5000, 10000)])
            for _ in range(n)]


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_on_full_block_waits_then_goes_on(text):
    r, w, writer = stalled("block", text)
    try:
        reader = PipeReader(r, start=False)
        recs = [numbered(i, s) for i, s in enumerate(sizes(120))]
        done = threading.Event()

        def body():
            for rec in recs:
                writer.write(rec.decode() if text else rec)
            done.set()

        t = threading.Thread(target=body, daemon=True)
        t.start()
        assert not done.wait(0.5), "the writer did not wait for the stalled pipe"
        reader.resume()
        assert done.wait(TIMEOUT)
        stats = (writer.buffer if text else writer).stats()
        writer.close()
        os.close(w)
        assert parse_records(reader.data()) == list(range(120))
        assert stats["dropped"] == 0
    finally:
        os.close(r)


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_on_full_drop_counts_exactly_and_never_writes_part_of_a_record(text):
    r, w, writer = stalled("drop", text)
    byte_writer = writer.buffer if text else writer
    try:
        reader = PipeReader(r, start=False)
        recs = [numbered(i, s) for i, s in enumerate(sizes(300))]
        t0 = time.monotonic()
        for rec in recs:
            if text:  # print() with several arguments: several write() calls per line
                head, _, rest = rec.decode().partition(">")
                print(head + ">", rest[:-1], sep="", file=writer)
            else:
                writer.write(rec)
        assert time.monotonic() - t0 < 5, "drop waited for the stalled pipe"
        stats = byte_writer.stats()
        assert stats["dropped"] > 0
        reader.resume()
        writer.flush()
        more = [numbered(300 + i, s) for i, s in enumerate(sizes(50, 1))]
        for rec in more:  # recovered: the reader keeps up, nothing more is dropped
            writer.write(rec.decode() if text else rec)
            writer.flush()
        final = byte_writer.stats()
        writer.close()
        os.close(w)
        got = parse_records(reader.data())
        assert got == sorted(got)
        assert set(range(300, 350)) <= set(got)
        lost = [recs[i] for i in range(300) if i not in set(got)]
        assert final["dropped"] == stats["dropped"] == len(lost)
        assert final["dropped_bytes"] == stats["dropped_bytes"] == sum(map(len, lost))
    finally:
        os.close(r)


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_on_full_raise_writes_nothing_then_recovers(text):
    r, w, writer = stalled("raise", text)
    try:
        reader = PipeReader(r, start=False)
        recs = [numbered(i, s) for i, s in enumerate(sizes(300))]
        accepted = []
        error = None
        for i, rec in enumerate(recs):
            try:
                writer.write(rec.decode() if text else rec)
            except BlockingIOError as exc:
                error = exc
                break
            accepted.append(i)
        assert error is not None, "the stalled pipe never refused a write"
        assert error.characters_written == 0
        refused = len(accepted)
        reader.resume()
        writer.flush()
        for i in range(refused, 300):  # recovered: the refused record and the rest land
            writer.write(recs[i].decode() if text else recs[i])
            writer.flush()
        writer.close()
        os.close(w)
        assert parse_records(reader.data()) == list(range(300))
    finally:
        os.close(r)


def test_on_full_raise_text_retry_of_print(tmp_path):
    """A print() refused with BlockingIOError wrote nothing of its line: printing it again after the
    reader resumes gives the line once."""
    r, w, writer = stalled("raise", text=True)
    try:
        reader = PipeReader(r, start=False)
        refused = None
        for i in range(2000):
            try:
                print(f"<{i}:", "x" * 100, ">", sep="", file=writer)
            except BlockingIOError as exc:
                assert exc.characters_written == 0
                refused = i
                break
        assert refused is not None
        reader.resume()
        writer.flush()
        print(f"<{refused}:", "x" * 100, ">", sep="", file=writer)
        writer.close()
        os.close(w)
        lines = reader.data().decode().split("\n")[:-1]
        assert lines == [f"<{i}:{'x' * 100}>" for i in range(refused + 1)]
    finally:
        os.close(r)


def test_on_full_validation(path):
    for value in ("wait", "", None, 1):
        with pytest.raises(ValueError):
            cbuffer.open(path, "wb", on_full=value)
        with pytest.raises(ValueError):
            cbuffer.open(path, "w", on_full=value)
        with pytest.raises(ValueError):
            ConcurrentFileHandler(path, on_full=value)


@pytest.mark.parametrize("on_full", ["drop", "raise"])
def test_file_handler_on_full_with_a_stalled_fifo(tmp_path, on_full):
    """ConcurrentFileHandler(..., on_full=...) over a named pipe whose reader stalls: each record lands
    whole or not at all (dropped and counted, or handed to handleError), and logging goes on once the
    reader resumes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_BUF)
    failed = []
    handler = ConcurrentFileHandler(fifo, encoding="utf-8", on_full=on_full, buffer_size=BUF,
                                    buffer_count=2, flush_level=None)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handleError = lambda record: failed.append(record.getMessage())
    try:
        recs = [numbered(i, s).decode()[:-1] for i, s in enumerate(sizes(200))]

        def emit(msg):
            handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, msg, None, None))

        run_threads(lambda t: [emit(m) for m in recs[t::4]], 4)
        os.set_blocking(r, True)
        reader = PipeReader(r)
        handler.flush()
        for m in ("<1000:40>" + "x" * 30, "<1001:40>" + "x" * 30):  # the reader keeps up again
            emit(m)
        handler.flush()
        stats = handler.stream.stats()
        handler.close()
        got = parse_records(reader.data())
        assert {1000, 1001} <= set(got)
        lost = len(recs) - (len(got) - 2)
        assert lost > 0
        if on_full == "drop":
            assert stats["dropped"] == lost and not failed
        else:
            assert len(failed) == lost and stats["dropped"] == 0
    finally:
        handler.close()
        os.close(r)


def test_rotating_handler_accepts_on_full(tmp_path):
    handler = ConcurrentRotatingFileHandler(tmp_path / "r.log", maxBytes=1 << 20, backupCount=1,
                                            on_full="drop", encoding="utf-8")
    try:
        handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None))
        handler.flush()
    finally:
        handler.close()
    assert read(tmp_path / "r.log") == b"hello\n"


# ------------------------------------------------------------------ recipes

RECIPE_THREADS = 8
RECIPE_RECORDS = 300  # per thread

LOGURU = """
    import json, sys, threading
    from loguru import logger
    import cbuffer
    logger.remove()
    sink = cbuffer.open(sys.argv[1], "a", encoding="utf-8", lazy_flush=True)
    logger.add(sink, format="{message}")
    def body(tid):
        for seq in range(%(records)d):
            logger.info("<{} {} {} {}>", tid, seq, "x" * (seq %% 97), tid)
    threads = [threading.Thread(target=body, args=(t,)) for t in range(%(threads)d)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.remove()
    sink.flush()
    print(json.dumps(sink.buffer.stats()))
    sink.close()
"""

STRUCTLOG = """
    import json, sys, threading
    import structlog
    import cbuffer
    kind = sys.argv[2]
    if kind == "bytes":
        out = cbuffer.open(sys.argv[1], "ab", lazy_flush=True)
        renderer = structlog.processors.JSONRenderer(serializer=lambda o, **kw: json.dumps(o).encode())
        factory = structlog.BytesLoggerFactory(file=out)
        stats = out.stats
    else:
        out = cbuffer.open(sys.argv[1], "a", encoding="utf-8", lazy_flush=True)
        renderer = structlog.processors.JSONRenderer()
        factory = structlog.WriteLoggerFactory(file=out)
        stats = out.buffer.stats
    structlog.configure(processors=[renderer], logger_factory=factory, cache_logger_on_first_use=True)
    def body(tid):
        log = structlog.get_logger()
        for seq in range(%(records)d):
            log.info("event", tid=tid, seq=seq, pad="x" * (seq %% 97))
    threads = [threading.Thread(target=body, args=(t,)) for t in range(%(threads)d)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.flush()
    print(json.dumps(stats()))
    out.close()
"""

STREAM_HANDLER = """
    import json, logging, sys, threading
    import cbuffer
    sys.stdout = cbuffer.open(1, "w", closefd=False, encoding="utf-8", lazy_flush=True)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%%(message)s"))
    log = logging.getLogger("recipe")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    def body(tid):
        for seq in range(%(records)d):
            log.info("<%%d %%d %%s %%d>", tid, seq, "x" * (seq %% 97), tid)
    threads = [threading.Thread(target=body, args=(t,)) for t in range(%(threads)d)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stdout.flush()
    sys.stderr.write(json.dumps(sys.stdout.buffer.stats()))
"""


def _recipe(name, tmp_path):
    """Run a recipe in a child; returns (the lines it wrote, the byte writer's stats)."""
    params = {"records": RECIPE_RECORDS, "threads": RECIPE_THREADS}
    path = tmp_path / "app.log"
    if name == "loguru":
        pytest.importorskip("loguru", reason="loguru is not installed (pip install loguru)")
        proc = run_child(LOGURU % params, path)
        return read(path), json.loads(proc.stdout)
    if name.startswith("structlog"):
        pytest.importorskip("structlog", reason="structlog is not installed (pip install structlog)")
        proc = run_child(STRUCTLOG % params, path, name.split("-")[1])
        return read(path), json.loads(proc.stdout)
    proc = run_child(STREAM_HANDLER % params)
    return proc.stdout, json.loads(proc.stderr)


RECIPES = ["loguru", "structlog-bytes", "structlog-text", "logging.StreamHandler"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_lines_whole(tmp_path, name):
    data, _ = _recipe(name, tmp_path)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    last = {}
    for line in lines[:-1]:
        if name.startswith("structlog"):
            event = json.loads(line)
            tid, seq, pad = event["tid"], event["seq"], event["pad"]
        else:
            m = re.fullmatch(rb"<(\d+) (\d+) (x*) (\d+)>", line)
            assert m and m[1] == m[4], f"torn line: {line[:80]!r}"
            tid, seq, pad = int(m[1]), int(m[2]), m[3].decode()
        assert pad == "x" * (seq % 97)
        assert seq == last.get(tid, -1) + 1
        last[tid] = seq
    assert last == dict.fromkeys(range(RECIPE_THREADS), RECIPE_RECORDS - 1)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_keeps_batching(tmp_path, name):
    """The recipes keep cbuffer's batching: far fewer system calls than records (these libraries flush
    their stream after every record; lazy_flush=True makes that flush leave the timing to the
    writer's flush_interval)."""
    _, stats = _recipe(name, tmp_path)
    records = RECIPE_THREADS * RECIPE_RECORDS
    assert stats["syscalls"] <= records // 10, (
        f"{stats['syscalls']} system calls for {records} records ({stats['bytes_written']} bytes): "
        "a write(2) per record, no batching")
