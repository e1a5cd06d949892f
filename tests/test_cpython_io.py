"""CPython's own io tests (Lib/test/test_io.py) run against ConcurrentBufferedWriter.

The interpreter ships the tests io.BufferedWriter must pass; a drop-in must pass them too.  These classes
take CPython's and put cbuffer where io.BufferedWriter was:

* ``ConcurrentBufferedWriterTest``: ``CBufferedWriterTest`` with ``BufferedWriterTest``,
  ``CommonBufferedTests`` and ``SizeofTest``; ``tp`` is ``Writer``.
* ``ConcurrentIOTest``: the ``CIOTest`` methods that open a buffered binary writer; ``self.BufferedWriter``
  is ``Writer`` and ``self.open`` is ``open_writer``.  Its other methods test FileIO, text files, readers
  and the io ABCs and are not collected here.
* ``ConcurrentSignalsTest``: the buffered-write tests of ``CSignalsTest`` (``*_write_buffered``), through
  ``open_writer``, each in a child interpreter bounded in time (``_in_child``).  Its read, text and
  unbuffered tests are not collected here.  ``test_interrupted_write_buffered`` is adapted, not skipped:
  its cleanup may meet the sticky EPIPE of the write the flusher still had in flight (see its comment).

``Writer`` rounds a positive ``buffer_size`` up to a multiple of 4096, which the ring requires.
``open_writer`` is ``io.open`` except that a buffered ``wb``/``ab``/``xb`` open is ``cbuffer.open``.

Every CPython test that cannot apply is skipped by name with the reason in this table (it is read by the
code below; README.rst and the contract document each reason):

=======================================================  ====================================================
test                                                     why it does not apply
=======================================================  ====================================================
CommonBufferedTests.test_detach                          no detach(): the writer is an io.RawIOBase, not a
                                                         BufferedIOBase, and keeps its raw for its life
CommonBufferedTests.test_invalid_args                    seek whence checks: not seekable, seek() raises
                                                         io.UnsupportedOperation whatever its arguments
CommonBufferedTests.test_unseekable                      tell() is the logical stream position, also over an
                                                         unseekable raw (the test wants it to raise)
SizeofTest.test_sizeof                                   memory is buffer_count * buffer_size (a ring of
                                                         4096-aligned buffers), not one buffer_size buffer
SizeofTest.test_buffer_freeing                           memory is buffer_count * buffer_size (a ring of
                                                         4096-aligned buffers), not one buffer_size buffer
BufferedWriterTest.test_detach_flush                     no detach(): the writer is an io.RawIOBase, not a
                                                         BufferedIOBase, and keeps its raw for its life
BufferedWriterTest.test_write_overflow                   buffer_size is a multiple of 4096: the 16 bytes
                                                         never overflow the 8-byte buffer the test relies on
BufferedWriterTest.test_writes_and_seeks                 not seekable: seek() raises io.UnsupportedOperation
BufferedWriterTest.test_writes_and_truncates             write-only, not seekable: truncate() raises
                                                         io.UnsupportedOperation
BufferedWriterTest.test_write_non_blocking               io's raw-call pattern with an 8-byte buffer; a
                                                         RawIOBase raw returning None is waited for and
                                                         retried (never BlockingIOError with auto_flush)
BufferedWriterTest.test_write_and_rewind                 not seekable: seek() raises io.UnsupportedOperation
BufferedWriterTest.test_truncate                         write-only, not seekable: truncate() raises
                                                         io.UnsupportedOperation
BufferedWriterTest.test_truncate_after_write             write-only, not seekable: the test writes, reads and
                                                         truncates an "r+b" file (io's BufferedRandom)
BufferedWriterTest.test_misbehaved_io                    tell() is the logical position (the test wants the
                                                         raw's error); errors are sticky: raised by the next
                                                         call, not by the write() that buffered the bytes
IOTest.test_optional_abilities                           tell() is the logical stream position, also over an
                                                         unseekable raw (the test wants it to raise)
IOTest.test_buffered_file_io                             not seekable, write-only: the test seeks, truncates
                                                         and rewrites the file through the buffered writer
=======================================================  ====================================================
"""
import contextlib
import functools
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
from unittest import mock

import pytest

import cbuffer
from cbuffer.writer import DEFAULT_BUFFER_SIZE, ConcurrentBufferedWriter

try:
    from test import support
except ImportError as exc:  # a Python installed without its test package
    pytest.skip(f"CPython's test package is not installed: {exc}", allow_module_level=True)
try:
    from test.support import os_helper
except ImportError:  # 3.9: TESTFN lives in test.support itself
    os_helper = support


def _cpython_modules():
    """test_io is one module up to 3.13 and a package of modules after."""
    try:
        package = importlib.import_module("test.test_io")
    except ImportError as exc:
        pytest.skip(f"CPython's test.test_io cannot be imported: {exc}", allow_module_level=True)
    modules = [package]
    for sub in ("test_bufferedio", "test_general", "test_signals", "utils"):
        if hasattr(package, "__path__"):
            with contextlib.suppress(ImportError):
                modules.append(importlib.import_module(f"test.test_io.{sub}"))
    return modules


CPYTHON_MODULES = _cpython_modules()


def _cpython(name):
    for module in CPYTHON_MODULES:
        obj = getattr(module, name, None)
        if isinstance(obj, type):
            return obj
    pytest.skip(f"this Python's test_io has no {name}", allow_module_level=True)


cpython_io = types.SimpleNamespace(
    CBufferedWriterTest=_cpython("CBufferedWriterTest"),
    CIOTest=_cpython("CIOTest"),
    CSignalsTest=_cpython("CSignalsTest"),
)

# What test_io's load_tests gives each C test class besides io's names: the mocks built on io.RawIOBase.
MOCKS = ("MockRawIO", "MisbehavedRawIO", "MockFileIO", "CloseFailureIO", "MockNonBlockWriterIO",
         "MockUnseekableIO", "MockRawIOWithoutRead", "SlowFlushRawIO", "MockCharPseudoDevFileIO")


def _skip_table(doc):
    """{(CPython class, test name): reason} from the module docstring's table."""
    rows, key = {}, None
    for line in doc.splitlines():
        row = re.match(r"(\w+)\.(test_\w+)\s{2,}(\S.*)$", line)
        if row:
            key = row.group(1, 2)
            rows[key] = row.group(3).strip()
        elif key is not None and line.startswith(" ") and line.strip():
            rows[key] += " " + line.strip()
        else:
            key = None
    return rows


SKIPS = _skip_table(__doc__)


def round_buffer_size(size):
    """The next multiple of 4096 for a positive int; anything else as it is, for the writer to refuse."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return -(-size // 4096) * 4096
    return size


class Writer(ConcurrentBufferedWriter):
    """ConcurrentBufferedWriter taking any buffer_size io.BufferedWriter takes (8, 13, 1024 ...)."""

    def __init__(self, raw, buffer_size=DEFAULT_BUFFER_SIZE, *args, **kwargs):
        super().__init__(raw, round_buffer_size(buffer_size), *args, **kwargs)


_WRITE_MODES = {frozenset("wb"): "wb", frozenset("ab"): "ab", frozenset("xb"): "xb"}


def open_writer(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
                opener=None):
    """io.open, except that a buffered binary write-only open gives a cbuffer writer (cbuffer.open)."""
    cb_mode = _WRITE_MODES.get(frozenset(mode)) if len(mode) == 2 else None
    if (cb_mode is None or buffering == 0 or opener is not None
            or (encoding, errors, newline) != (None, None, None)):
        return open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    if not closefd and not isinstance(file, int):
        raise ValueError("Cannot use closefd=False with file name")  # as io.open
    options = {"closefd": closefd}
    if buffering > 1:
        options["buffer_size"] = round_buffer_size(buffering)
    return cbuffer.open(file, cb_mode, **options)


def _c_namespace():
    """load_tests' c_io_ns: io's public names and the C flavour of each mock."""
    names = {name: getattr(io, name) for name in io.__all__}
    for mock_name in MOCKS:
        for module in CPYTHON_MODULES:
            if hasattr(module, "C" + mock_name):
                names[mock_name] = getattr(module, "C" + mock_name)
                break
    names["is_C"] = True
    return names


def adapt(only=None, wrap=None):
    """Give a test class what load_tests gives CPython's C classes (its own attributes win), skip the
    tests of the table, and drop the tests not in ``only``, which do not concern a buffered writer."""
    def decorate(cls):
        for name, value in _c_namespace().items():
            if name not in cls.__dict__:
                setattr(cls, name, value)
        for name in dir(cls):
            if not name.startswith("test") or not callable(getattr(cls, name)):
                continue
            if only is not None and name not in only:
                setattr(cls, name, None)  # unittest and pytest collect only callables
                continue
            test = getattr(cls, name)
            if wrap is not None:
                test = wrap(test)
            for (owner, skipped), reason in SKIPS.items():
                if skipped == name and any(k.__name__ == owner and name in vars(k) for k in cls.__mro__):
                    test = unittest.skip(reason)(test)
            setattr(cls, name, test)
        return cls
    return decorate


@pytest.fixture(autouse=True)
def _collect_after_failure(request):
    """A CPython test that fails skips its own cleanup ("Silence destructor error"), and the mocks it drops
    would make whichever test runs the next garbage collection fail: collect them in this test's teardown."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        support.gc_collect()


class Isolated:
    """TESTFN in a directory of the test's own, not in the working directory shared by the workers."""

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="cbuffer-cpython-io-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        patcher = mock.patch.object(os_helper, "TESTFN", os.path.join(directory, "testfn"))
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()


@adapt()
class ConcurrentBufferedWriterTest(Isolated, cpython_io.CBufferedWriterTest):
    tp = Writer
    BufferedWriter = Writer
    open = staticmethod(open_writer)


IOTEST_WRITER_TESTS = frozenset({
    "test_invalid_operations", "test_optional_abilities", "test_buffered_file_io", "test_readline",
    "test_with_open", "test_append_mode_tell", "test_close_flushes", "test_array_writes",
    "test_closefd_attr", "test_flush_error_on_close",
})


@adapt(only=IOTEST_WRITER_TESTS)
class ConcurrentIOTest(Isolated, cpython_io.CIOTest):
    BufferedWriter = Writer
    open = staticmethod(open_writer)


# Each signal test runs in a child interpreter: SIGALRM handlers and a write blocked on a full pipe stay
# out of the pytest worker, and a hang ends at the bound with the child's stacks instead of killing it.
SIGNAL_TEST_BOUND = 15.0
_CHILD_ENV = "CBUFFER_CPYTHON_IO_CHILD"
_CHILD_CODE = """\
import faulthandler, sys, unittest
faulthandler.dump_traceback_later({dump}, exit=True)
sys.path.insert(0, {tests!r})
import test_cpython_io
suite = unittest.defaultTestLoader.loadTestsFromName({name!r}, test_cpython_io)
result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
if result.skipped and result.wasSuccessful():
    print("SKIPPED:", result.skipped[0][1])
    sys.exit(3)
sys.exit(0 if result.wasSuccessful() else 1)
"""


def _in_child(test):
    @functools.wraps(test)
    def bounded(self):
        if os.environ.get(_CHILD_ENV):
            return test(self)
        code = _CHILD_CODE.format(dump=SIGNAL_TEST_BOUND, tests=os.path.dirname(os.path.abspath(__file__)),
                                  name=f"{type(self).__name__}.{test.__name__}")
        try:
            child = subprocess.run([sys.executable, "-W", "error", "-c", code],
                                   env={**os.environ, _CHILD_ENV: "1"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=SIGNAL_TEST_BOUND + 15)
        except subprocess.TimeoutExpired as exc:
            self.fail(f"no result within {SIGNAL_TEST_BOUND + 15:g}s:\n{exc.output}")
        if child.returncode == 3:
            self.skipTest(child.stdout.rpartition("SKIPPED: ")[2].strip())
        if child.returncode != 0:
            self.fail(f"in the child interpreter (exit status {child.returncode}):\n{child.stdout}")
    return bounded


SIGNAL_WRITER_TESTS = frozenset({
    "test_interrupted_write_buffered", "test_reentrant_write_buffered",
    "test_interrupted_write_retry_buffered",
})


@adapt(only=SIGNAL_WRITER_TESTS, wrap=_in_child)
class ConcurrentSignalsTest(cpython_io.CSignalsTest):
    io = types.SimpleNamespace(open=open_writer)

    def test_interrupted_write_buffered(self):
        # The cleanup closes both pipe ends while the flusher is still writing the bytes the interrupted
        # write queued, so close() raises that write's EPIPE (errors are sticky: raised by the next call)
        # where io, which writes in the caller, meets EBADF.  Only that error, with nothing before it, passes.
        try:
            super().test_interrupted_write_buffered()
        except BrokenPipeError as exc:
            if exc.__context__ is not None:
                raise


def test_skip_table_names_existing_tests():
    """A row of the table that matches no CPython test is a typo, unless this Python lacks that test."""
    classes = (ConcurrentBufferedWriterTest, ConcurrentIOTest, ConcurrentSignalsTest)
    owners = {k.__name__: k for cls in classes for k in cls.__mro__}
    assert SKIPS
    missing = [f"{owner}.{name}" for owner, name in SKIPS if name not in vars(owners.get(owner, object))]
    assert all(owner in owners for owner, _ in SKIPS), sorted(SKIPS)
    if missing:
        pytest.skip(f"not in this Python's test_io: {', '.join(missing)}")

