"""CPython's own TextIOWrapper tests (Lib/test/test_io.py) run against ConcurrentTextWriter.

ConcurrentTextWriter is a write-only io.TextIOBase; the interpreter's TextIOWrapper tests that apply to a
write-only text stream must pass against it.  These classes take CPython's and put cbuffer where
io.TextIOWrapper was:

* ``ConcurrentTextWriterTest``: ``CTextIOWrapperTest`` (``TextIOWrapperTest`` and its C-only tests).
  ``self.TextIOWrapper(buffer, ...)`` is ``TextWriter``: a ConcurrentTextWriter over a
  ConcurrentBufferedWriter wrapping the ``BytesIO`` the test made (the stack ``cbuffer.open`` builds), or
  over the buffer as given when it is anything else (a ``self.BufferedWriter``, which is a
  ConcurrentBufferedWriter; a mock raw; a buffered pair).  ``self.open`` is ``open_text``: ``io.open``,
  except that a write-only open (``w``/``a``/``x``, text or binary) is ``cbuffer.open``.  Tests marked
  *adapted* below are overridden with the same checks made through writes only.
* ``ConcurrentTextMiscTest``: the text-writing tests of ``CMiscIOTest`` through ``open_text``; the ones that
  run io itself in a child interpreter are adapted to run cbuffer there instead.
* ``ConcurrentTextSignalsTest``: the text-write tests of ``CSignalsTest`` through ``open_text``, each in a
  child interpreter bounded in time.

Adapted (the same checks through writes only, or through cbuffer where the test ran io itself):
test_constructor, test_uninitialized, test_repr (a writer below; ``mode`` is not an attribute one sets),
test_line_buffering (the text after the last newline of a line-buffered write may wait for its own newline),
test_encoded_writes and test_append_bom (the bytes are read from the buffer or the file instead of through
the wrapper, no tell()), test_reconfigure_defaults and test_reconfigure_newline (their writing halves),
test_create_at_shutdown_* (a ConcurrentTextWriter made at shutdown), test_check_encoding_errors,
test_check_encoding_warning and test_daemon_threads_shutdown_*_deadlock (cbuffer in the child),
test_interrupted_write_text (its text ends in a newline: a partial line waits in its thread's buffer and
would never block; the cleanup may meet the sticky EPIPE of the write the flusher still had in flight).

Every CPython test that cannot apply is skipped by name with the reason in this table (read by the code):

=======================================================  ====================================================
test                                                     why it does not apply
=======================================================  ====================================================
TextIOWrapperTest.test_encoding_errors_reading           reads: the writer is write-only
TextIOWrapperTest.test_newlines                          reads (universal newlines on input)
TextIOWrapperTest.test_newlines_input                    reads (universal newlines on input), seeks
TextIOWrapperTest.test_basic_io                          reads back, seeks and tells through a "w+" file
TextIOWrapperTest.test_telling                           tell() and seek(): no position in a stream that many
                                                         threads write (tell raises io.UnsupportedOperation)
TextIOWrapperTest.test_seeking                           reads through io's reader, seeks and tells
TextIOWrapperTest.test_seeking_too                       reads through io's reader, seeks and tells
TextIOWrapperTest.test_seek_and_tell                     reads through io's reader, seeks and tells
TextIOWrapperTest.test_seek_with_encoder_state           tell() and seek() on the writer
TextIOWrapperTest.test_unreadable                        reads (a read() that must fail; it always does)
TextIOWrapperTest.test_read_one_by_one                   reads
TextIOWrapperTest.test_readlines                         reads
TextIOWrapperTest.test_read_by_chunk                     reads
TextIOWrapperTest.test_issue1395_1                       reads
TextIOWrapperTest.test_issue1395_2                       reads
TextIOWrapperTest.test_issue1395_3                       reads
TextIOWrapperTest.test_issue1395_4                       reads
TextIOWrapperTest.test_issue1395_5                       reads, seeks and tells
TextIOWrapperTest.test_issue2282                         seekable() is False whatever the buffer: a stream
                                                         that many threads write has no position
TextIOWrapperTest.test_seek_bom                          seeks in an "r+" file
TextIOWrapperTest.test_seek_append_bom                   seeks
TextIOWrapperTest.test_rawio                             reads
TextIOWrapperTest.test_bufio_write_through               buffer_size is a multiple of 4096 and a Python raw is
                                                         written by the flusher thread: 11 bytes never
                                                         overflow the 2-byte buffer the test relies on
TextIOWrapperTest.test_read_nonbytes                     reads
TextIOWrapperTest.test_illegal_encoder                   tests io.TextIOWrapper itself, not self.TextIOWrapper
TextIOWrapperTest.test_illegal_decoder                   reads (decoders)
TextIOWrapperTest.test_read_byteslike                    reads
TextIOWrapperTest.test_reconfigure_locale                tests io.TextIOWrapper itself, not self.TextIOWrapper
TextIOWrapperTest.test_reconfigure_encoding_read         reads
TextIOWrapperTest.test_issue25862                        reads and tells
TextIOWrapperTest.test_reconfigure_line_buffering       partial lines wait for their newline: line buffering
                                                         flushes whole lines ("G" of "DEF\nG" stays in its
                                                         thread's buffer, where io writes it)
TextIOWrapperTest.test_reconfigure_errors                reconfigure(line_buffering=x) takes x's truth value,
                                                         as _pyio does (the C version's __index__ is a TODO
                                                         in the test itself); tests/test_text.py checks the
                                                         other argument errors
TextIOWrapperTest.test_reconfigure_write_through         the byte writer below buffers: write_through hands
                                                         text to it, and the raw sees it at the next flush
TextIOWrapperTest.test_reconfigure_write_non_seekable    tell() is the logical position even over an
                                                         unseekable raw, so no BOM is written mid-stream
CTextIOWrapperTest.test_issue119506                      no internal chunk buffer (3.13's test of how it is
                                                         flushed around a write from the raw): a partial line
                                                         goes over whole
TextIOWrapperTest.test_issue35928                        reads (readline through a BufferedRWPair)
TextIOWrapperTest.test_pickling_subclass                 reads the bytes back with self.buffer.getvalue():
                                                         the buffer is the write-only ConcurrentBufferedWriter
                                                         over the BytesIO (3.13)
CTextIOWrapperTest.test_del__CHUNK_SIZE_SystemError      no _CHUNK_SIZE: a partial line is held whole in its
                                                         thread's buffer until its newline, flush() or close()
CTextIOWrapperTest.test_internal_buffer_size             no _CHUNK_SIZE: a partial line is held whole in its
                                                         thread's buffer until its newline, flush() or close()
MiscIOTest.test_attributes                               "w+" and "rb+" modes: the writer is write-only
MiscIOTest.test_warn_on_dealloc                          opens with the builtin open(), not self.open
                                                         (tests/test_text.py checks the writer's warning)
MiscIOTest.test_removed_u_mode                           read modes only
=======================================================  ====================================================
"""
import functools
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import types
import unittest
from unittest import mock

import pytest

import cbuffer
from cbuffer.writer import DEFAULT_BUFFER_SIZE, ConcurrentBufferedWriter

try:
    from test import support
    from test.support import os_helper
    from test.support.script_helper import assert_python_ok, run_python_until_end
except ImportError as exc:  # a Python installed without its test package
    pytest.skip(f"CPython's test package is not installed: {exc}", allow_module_level=True)


def _cpython_modules():
    """test_io is one module up to 3.13 and a package of modules after."""
    try:
        package = importlib.import_module("test.test_io")
    except ImportError as exc:
        pytest.skip(f"CPython's test.test_io cannot be imported: {exc}", allow_module_level=True)
    modules = [package]
    if hasattr(package, "__path__"):
        for sub in ("test_textio", "test_general", "test_signals", "utils"):
            try:
                modules.append(importlib.import_module(f"test.test_io.{sub}"))
            except ImportError:
                pass
    return modules


CPYTHON_MODULES = _cpython_modules()


def _cpython(name):
    for module in CPYTHON_MODULES:
        obj = getattr(module, name, None)
        if isinstance(obj, type):
            return obj
    pytest.skip(f"this Python's test_io has no {name}", allow_module_level=True)


cpython_io = types.SimpleNamespace(
    CTextIOWrapperTest=_cpython("CTextIOWrapperTest"),
    CMiscIOTest=_cpython("CMiscIOTest"),
    CSignalsTest=_cpython("CSignalsTest"),
)

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
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return -(-size // 4096) * 4096
    return size


class Writer(ConcurrentBufferedWriter):
    """ConcurrentBufferedWriter taking any buffer_size io.BufferedWriter takes (8, 13, 1024 ...)."""

    def __init__(self, raw, buffer_size=DEFAULT_BUFFER_SIZE, *args, **kwargs):
        super().__init__(raw, round_buffer_size(buffer_size), *args, **kwargs)


class TextWriter(cbuffer.ConcurrentTextWriter):
    """ConcurrentTextWriter with io.TextIOWrapper's signature: a BytesIO goes behind a
    ConcurrentBufferedWriter (as cbuffer.open stacks them); any other buffer is written as given."""

    def __init__(self, buffer, encoding=None, errors=None, newline=None, line_buffering=False,
                 write_through=False):
        if isinstance(buffer, io.BytesIO):
            buffer = Writer(buffer)
        super().__init__(buffer, encoding, errors, newline, line_buffering, write_through)


_WRITE_MODES = {"w", "a", "x", "wt", "at", "xt", "tw", "ta", "tx"}
_BINARY_WRITE_MODES = {"wb": "wb", "bw": "wb", "ab": "ab", "ba": "ab", "xb": "xb", "bx": "xb"}


def open_text(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
              opener=None):
    """io.open, except that a write-only open (text or buffered binary) is cbuffer.open."""
    text = mode in _WRITE_MODES
    binary = _BINARY_WRITE_MODES.get(mode)
    if opener is not None or not (text or binary) or (binary and buffering == 0):
        return open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    if text and buffering == 0:
        raise ValueError("can't have unbuffered text I/O")  # as io.open
    if not closefd and not isinstance(file, int):
        raise ValueError("Cannot use closefd=False with file name")  # as io.open
    options = {"closefd": closefd}
    if buffering > 1:
        options["buffer_size"] = round_buffer_size(buffering)
    if binary:
        return cbuffer.open(file, binary, **options)
    return cbuffer.open(file, mode.replace("t", ""), encoding=encoding, errors=errors, newline=newline,
                        line_buffering=True if buffering == 1 else None, **options)


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
    tests of the table, and drop the tests not in ``only``."""
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
    """A CPython test that fails skips its own cleanup: collect what it dropped in its own teardown."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        support.gc_collect()


class Isolated:
    """TESTFN in a directory of the test's own, not in the working directory shared by the workers."""

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="cbuffer-cpython-textio-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        patcher = mock.patch.object(os_helper, "TESTFN", os.path.join(directory, "testfn"))
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()


def _child_env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("PYTHONWARNINGS", None)
    return env


@adapt()
class ConcurrentTextWriterTest(Isolated, cpython_io.CTextIOWrapperTest):
    TextIOWrapper = TextWriter
    BufferedWriter = Writer
    open = staticmethod(open_text)

    def test_constructor(self):
        r = self.BytesIO()
        b = self.BufferedWriter(r, 1000)
        t = self.TextIOWrapper(b, encoding="utf-8")
        t.__init__(b, encoding="latin-1", newline="\r\n")
        self.assertEqual(t.encoding, "latin-1")
        self.assertEqual(t.line_buffering, False)
        t.__init__(b, encoding="utf-8", line_buffering=True)
        self.assertEqual(t.encoding, "utf-8")
        self.assertEqual(t.line_buffering, True)
        t.write("\xe9\n")
        self.assertEqual(r.getvalue(), b"\xc3\xa9\n")
        with self.assertRaises(TypeError):
            t.__init__(b, encoding=42)
        with self.assertRaises(UnicodeEncodeError):
            t.__init__(b, encoding="\udcfe")
        with self.assertRaises(ValueError):
            t.__init__(b, encoding="utf-8\0")
        with self.assertRaises(TypeError):
            t.__init__(b, encoding="utf-8", errors=42)
        with self.assertRaises(UnicodeEncodeError):
            t.__init__(b, encoding="utf-8", errors="\udcfe")
        with self.assertRaises(ValueError):
            t.__init__(b, encoding="utf-8", errors="replace\0")
        with self.assertRaises(TypeError):
            t.__init__(b, encoding="utf-8", newline=42)
        with self.assertRaises(ValueError):
            t.__init__(b, encoding="utf-8", newline="\udcfe")
        with self.assertRaises(ValueError):
            t.__init__(b, encoding="utf-8", newline="\n\0")
        with self.assertRaises(ValueError):
            t.__init__(b, encoding="utf-8", newline="xyzzy")

    def test_uninitialized(self):
        t = self.TextIOWrapper.__new__(self.TextIOWrapper)
        del t
        t = self.TextIOWrapper.__new__(self.TextIOWrapper)
        self.assertRaises((ValueError, AttributeError), repr, t)
        self.assertRaisesRegex((ValueError, AttributeError), "uninitialized|has no attribute", t.write, "x")
        t.__init__(self.MockRawIO(), encoding="utf-8")
        self.assertEqual(t.write(""), 0)

    def test_repr(self):
        raw = self.BytesIO()
        t = self.TextIOWrapper(raw, encoding="utf-8")
        what = rf"<({re.escape(type(t).__module__)}\.)?{type(t).__qualname__}"
        self.assertRegex(repr(t), what + r" encoding='utf-8'>")
        raw.name = "dummy"
        self.assertRegex(repr(t), what + r" name='dummy' encoding='utf-8'>")
        raw.name = b"dummy"
        self.assertRegex(repr(t), what + r" name=b'dummy' encoding='utf-8'>")
        t.detach()
        repr(t)  # Should not raise an exception

    def test_line_buffering(self):
        r = self.BytesIO()
        b = self.BufferedWriter(r, 1000)
        t = self.TextIOWrapper(b, encoding="utf-8", newline="\n", line_buffering=True)
        t.write("X")
        self.assertEqual(r.getvalue(), b"")  # No flush happened
        t.write("Y\nZ")
        self.assertIn(r.getvalue(), (b"XY\n", b"XY\nZ"))  # the line got flushed
        t.write("A\rB")
        self.assertEqual(r.getvalue(), b"XY\nZA\rB")

    def test_encoded_writes(self):
        data = "1234567890"
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
            buf = self.BytesIO()
            f = self.TextIOWrapper(buf, encoding=encoding)
            # Check if the BOM is written only once (see issue1753).
            f.write(data)
            f.write(data)
            f.flush()
            self.assertEqual(buf.getvalue(), (data * 2).encode(encoding))

    def test_append_bom(self):
        # The BOM is not written again when appending to a non-empty file
        filename = os_helper.TESTFN
        for charset in ("utf-8-sig", "utf-16", "utf-32"):
            with self.open(filename, "w", encoding=charset) as f:
                f.write("aaa")
            with open(filename, "rb") as f:
                self.assertEqual(f.read(), "aaa".encode(charset))
            with self.open(filename, "a", encoding=charset) as f:
                f.write("xxx")
            with open(filename, "rb") as f:
                self.assertEqual(f.read(), "aaaxxx".encode(charset))

    def test_reconfigure_defaults(self):
        txt = self.TextIOWrapper(self.BytesIO(), "ascii", "replace", "\n")
        txt.reconfigure(encoding=None)
        self.assertEqual(txt.encoding, "ascii")
        self.assertEqual(txt.errors, "replace")
        txt.write("LF\n")
        txt.reconfigure(newline="\r\n")
        self.assertEqual(txt.encoding, "ascii")
        self.assertEqual(txt.errors, "replace")
        txt.reconfigure(errors="ignore")
        self.assertEqual(txt.encoding, "ascii")
        self.assertEqual(txt.errors, "ignore")
        txt.write("CRLF\n")
        txt.reconfigure(encoding="utf-8", newline=None)
        self.assertEqual(txt.errors, "strict")
        self.assertEqual(txt.detach().raw.getvalue(), b"LF\nCRLF\r\n")

    def test_reconfigure_newline(self):
        txt = self.TextIOWrapper(self.BytesIO(), "ascii", newline="\r")
        txt.reconfigure(newline=None)
        txt.write("linesep\n")
        txt.reconfigure(newline="")
        txt.write("LF\n")
        txt.reconfigure(newline="\n")
        txt.write("LF\n")
        txt.reconfigure(newline="\r")
        txt.write("CR\n")
        txt.reconfigure(newline="\r\n")
        txt.write("CRLF\n")
        expected = "linesep" + os.linesep + "LF\nLF\nCR\rCRLF\r\n"
        self.assertEqual(txt.detach().raw.getvalue().decode("ascii"), expected)

    def _check_create_at_shutdown(self, **kwargs):
        # Issue #20037: creating a text writer at shutdown shouldn't crash the interpreter.
        code = f"""if 1:
            import codecs
            import io
            import cbuffer

            # Avoid looking up codecs at shutdown
            codecs.lookup('utf-8')

            class C:
                def __init__(self):
                    self.buf = io.BytesIO()
                def __del__(self):
                    cbuffer.ConcurrentTextWriter(cbuffer.ConcurrentBufferedWriter(self.buf), **{kwargs})
                    print("ok")
            c = C()
            """
        return assert_python_ok("-c", code)


@adapt(only={"test_open_pipe_with_append", "test_io_after_close", "test_pickling", "test_create_fail",
             "test_check_encoding_errors", "test_check_encoding_warning",
             "test_daemon_threads_shutdown_stdout_deadlock", "test_daemon_threads_shutdown_stderr_deadlock",
             "test_attributes", "test_warn_on_dealloc", "test_removed_u_mode"})
class ConcurrentTextMiscTest(Isolated, cpython_io.CMiscIOTest):
    open = staticmethod(open_text)

    def test_check_encoding_errors(self):
        # bpo-37388: open() and TextIOWrapper must check encoding and errors arguments in dev mode
        filename = os_helper.TESTFN
        invalid = "Boom, Shaka Laka, Boom!"
        code = textwrap.dedent(f"""
            import sys
            from cbuffer import open, ConcurrentBufferedWriter, ConcurrentTextWriter

            try:
                open({filename!r}, "w", encoding={invalid!r})
            except LookupError:
                pass
            else:
                sys.exit(21)

            try:
                open({filename!r}, "w", errors={invalid!r})
            except LookupError:
                pass
            else:
                sys.exit(22)

            fp = open({filename!r}, "wb")
            with fp:
                try:
                    ConcurrentTextWriter(fp, encoding={invalid!r})
                except LookupError:
                    pass
                else:
                    sys.exit(23)

                try:
                    ConcurrentTextWriter(fp, errors={invalid!r})
                except LookupError:
                    pass
                else:
                    sys.exit(24)

            sys.exit(10)
        """)
        proc = subprocess.run([sys.executable, "-X", "dev", "-c", code], env=_child_env(),
                              capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 10, proc)

    def test_check_encoding_warning(self):
        # PEP 597: EncodingWarning when encoding is not given and sys.flags.warn_default_encoding is set,
        # pointing at the caller's line.
        filename = os_helper.TESTFN
        code = textwrap.dedent(f"""\
            import sys
            import cbuffer

            with cbuffer.open({filename!r}, "w") as f:           # line 4
                pass

            with cbuffer.open({filename!r}, "wb") as b:
                cbuffer.ConcurrentTextWriter(b).detach()         # line 8
        """)
        proc = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", code], env=_child_env(),
                              capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc)
        warnings = proc.stderr.splitlines()
        self.assertEqual(len(warnings), 2, proc.stderr)
        self.assertTrue(warnings[0].startswith(b"<string>:4: EncodingWarning: "), warnings[0])
        self.assertTrue(warnings[1].startswith(b"<string>:8: EncodingWarning: "), warnings[1])

    def check_daemon_threads_shutdown_deadlock(self, stream_name):
        # Issue #23309: deadlocks at shutdown should be avoided when a daemon thread and the main thread
        # both write to a file -- here a cbuffer text writer in place of sys.stdout / sys.stderr.
        fd = {"stdout": 1, "stderr": 2}[stream_name]
        code = f"""if 1:
            import sys
            import time
            import threading
            import cbuffer

            file = sys.{stream_name} = cbuffer.open({fd}, "w", closefd=False)

            def run():
                while True:
                    file.write('.')
                    file.flush()

            thread = threading.Thread(target=run)
            thread.daemon = True
            thread.start()

            time.sleep(0.5)
            file.write('!')
            file.flush()
            """
        res, _ = run_python_until_end("-c", code)
        out = (res.out if stream_name == "stdout" else res.err).decode()
        self.assertEqual(res.rc, 0, res.err.decode())
        self.assertIn("!", out)
        self.assertFalse(out.strip(".!"), out[-200:])
        if stream_name == "stdout":
            self.assertFalse(res.err.strip(), res.err.decode())


# Each signal test runs in a child interpreter: SIGALRM handlers and a write blocked on a full pipe stay
# out of the pytest worker, and a hang ends at the bound with the child's stacks instead of killing it.
SIGNAL_TEST_BOUND = 15.0
_CHILD_ENV = "CBUFFER_CPYTHON_TEXTIO_CHILD"
_CHILD_CODE = """\
import faulthandler, sys, unittest
faulthandler.dump_traceback_later({dump}, exit=True)
sys.path.insert(0, {tests!r})
import test_cpython_textio
suite = unittest.defaultTestLoader.loadTestsFromName({name!r}, test_cpython_textio)
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


class _Line(str):
    """A str whose repetition ends in a newline: the text a test writes is one whole line."""

    def __mul__(self, n):
        return str.__mul__(self, n) + "\n"


@adapt(only={"test_interrupted_write_text", "test_reentrant_write_text", "test_interrupted_write_retry_text"},
       wrap=_in_child)
class ConcurrentTextSignalsTest(cpython_io.CSignalsTest):
    io = types.SimpleNamespace(open=open_text)

    def test_interrupted_write_text(self):
        try:
            self.check_interrupted_write(_Line("xy"), b"xy", mode="w", encoding="ascii")
        except BrokenPipeError as exc:
            if exc.__context__ is not None:
                raise


def test_skip_table_names_existing_tests():
    """A row of the table that matches no CPython test is a typo, unless this Python lacks that test."""
    classes = (ConcurrentTextWriterTest, ConcurrentTextMiscTest, ConcurrentTextSignalsTest)
    owners = {k.__name__: k for cls in classes for k in cls.__mro__}
    assert SKIPS
    assert all(owner in owners for owner, _ in SKIPS), sorted(SKIPS)
    missing = [f"{owner}.{name}" for owner, name in SKIPS if name not in vars(owners[owner])]
    if missing:
        pytest.skip(f"not in this Python's test_io: {', '.join(missing)}")


def test_open_text_maps_write_modes_to_cbuffer(tmp_path):
    with open_text(tmp_path / "a", "w", encoding="utf-8") as t:
        assert isinstance(t, cbuffer.ConcurrentTextWriter)
    with open_text(tmp_path / "a", "w", encoding="utf-8", buffering=1) as t:
        assert t.line_buffering
    with open_text(tmp_path / "a", "wb") as b:
        assert isinstance(b, ConcurrentBufferedWriter)
    with open_text(tmp_path / "a", "r", encoding="utf-8") as r:
        assert isinstance(r, io.TextIOWrapper)
    with pytest.raises(ValueError):
        open_text(tmp_path / "a", "w", buffering=0)
