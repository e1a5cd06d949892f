"""CPython's own file, rotating, timed, watched and stream handler tests, run against cbuffer's handlers.

The running interpreter's ``Lib/test/test_logging.py`` is imported as a module
object and its test classes are subclassed here (through attribute access, so
pytest collects only these subclasses).  While each test runs,
``logging.FileHandler``, ``logging.StreamHandler``,
``logging.handlers.RotatingFileHandler``,
``logging.handlers.TimedRotatingFileHandler`` and
``logging.handlers.WatchedFileHandler`` are bound to subclasses of
:class:`cbuffer.handlers.ConcurrentFileHandler`,
:class:`~cbuffer.handlers.ConcurrentStreamHandler`,
:class:`~cbuffer.handlers.ConcurrentRotatingFileHandler`,
:class:`~cbuffer.handlers.ConcurrentTimedRotatingFileHandler` and
:class:`~cbuffer.handlers.ConcurrentWatchedFileHandler` that carry the
standard names, so every handler the test body makes -- directly, through
``basicConfig()``, ``fileConfig()`` or ``dictConfig()``, by subclassing, or
in a child interpreter started by ``assert_python_ok`` -- is cbuffer's, and
reprs keep the standard class name.  (logging's own classes call
``StreamHandler.__init__(self, ...)`` and the like through those names; for
instances of the standard classes the stand-ins forward to the standard
methods.)  The test bodies are CPython's, unchanged.

The rotating, timed and watched stand-ins are made with
``line_buffering=True``.  Those tests look at the directory right after each
``emit()`` (is ``<file>.1`` there yet? was the deleted file created again?),
that is, they test where the standard handler's per-record decision puts
each record.  cbuffer's handlers decide once per batch; with
``line_buffering`` every record is a batch of its own, so the sink decides
exactly where the standard handler does, and the tests check cbuffer's
naming, ``namer``/``rotator``, retention, schedule and reopening record by
record.  (``flush_level=logging.DEBUG`` would not do: the records CPython
makes with ``logging.makeLogRecord`` have no level.)  Many records per
batch, several threads and several processes are tests/test_rotation.py's
subject.  The file and stream handler stand-ins keep the defaults.

Every temporary file a test makes goes to a directory of its own, removed
afterwards (the rotating handlers leave ``<file>.lock`` beside the log), and
a handler a failing test left open is closed after it, so that one failure
does not turn into a ResourceWarning in a later test.

Which tests: every test of ``FileHandlerTest``, ``StreamHandlerTest``,
``EncodingTest``, ``BasicConfigTest``, ``RotatingFileHandlerTest`` and
``TimedRotatingFileHandlerTest`` (with the ``test_compute_rollover_*`` tests
the module adds to it), and these others whose subject is one of the
handlers: ``HandlerTest.test_builtin_handlers`` (WatchedFileHandler
recreating a deleted file), ``HandlerTest.test_race`` (WatchedFileHandler
against a file deleted in a loop), ``HandlerTest.test_path_objects`` (3.13:
``test_pathlike_objects``), ``ConfigFileTest.test_config8_ok``,
``ConfigDictTest.test_config15_ok``,
``CustomLevelsAndFiltersTest.test_handler_filter_replaces_record`` (3.12+),
``ModuleLevelMiscTest.test_subclass_logger_cache``,
``test_logging_at_shutdown``, ``test_logging_at_shutdown_open`` and
``test_recursion_error``.  A name the running version does not have is left
out.

Tests that cannot apply, skipped by name:

==================================  ==========================================================
test                                reason
==================================  ==========================================================
BasicConfigTest.test_log_taskName   (3.12+) reads the log file while the handler is still open,
                                    which needs a flush per record; cbuffer's handlers do not
                                    flush per record (no system call per record), the writer's
                                    flush_interval or line_buffering bound the delay instead
==================================  ==========================================================

Every test of the rotating, timed and watched handler classes applies.

The StreamHandler tests pass text streams (``io.StringIO``, ``sys.stderr``, a
stream whose ``write`` raises, a ``codecs`` writer), which
``ConcurrentStreamHandler`` writes as ``logging.StreamHandler`` does; its
lock-free path over a ConcurrentBufferedWriter is held to the same tests in
tests/test_handlers.py.
"""
import inspect
import logging
import logging.handlers
import os
import re
import shutil
import tempfile
import textwrap
import unittest

import pytest

from cbuffer.handlers import (
    ConcurrentFileHandler,
    ConcurrentRotatingFileHandler,
    ConcurrentStreamHandler,
    ConcurrentTimedRotatingFileHandler,
    ConcurrentWatchedFileHandler,
)

try:
    from test import test_logging as cpython
except ImportError:  # a Python built without its test package
    pytest.skip("CPython's test.test_logging is not installed", allow_module_level=True)


NOT_APPLICABLE = {
    "BasicConfigTest.test_log_taskName":
        "reads the log file while the handler is open: needs a flush per record",
}


def _standing_in(std, ours, defaults=None):
    """A subclass of ``ours`` named like the standard class ``std``, to bind
    in its place.  logging's own classes call ``StreamHandler.__init__(self,
    ...)``, ``logging.FileHandler.emit(self, ...)`` and the like through the
    module globals; for their instances (a RotatingFileHandler, the standard
    FileHandler) those calls go on to the standard methods.  ``defaults``:
    keyword arguments ``ours`` is constructed with unless the caller passes
    them."""
    import inspect

    def forward(name):
        def method(self, *args, **kwargs):
            cls = ours if isinstance(self, ours) else std
            return getattr(cls, name)(self, *args, **kwargs)
        method.__name__ = name
        return method

    methods = {name: forward(name) for name, value in vars(std).items()
               if inspect.isfunction(value)}
    if defaults:
        def __init__(self, *args, **kwargs):
            if isinstance(self, ours):
                ours.__init__(self, *args, **dict(defaults, **kwargs))
            else:
                std.__init__(self, *args, **kwargs)
        methods["__init__"] = __init__
    return type(std.__name__, (ours,), dict(methods, __module__=__name__))


FileHandler = _standing_in(logging.FileHandler, ConcurrentFileHandler)
StreamHandler = _standing_in(logging.StreamHandler, ConcurrentStreamHandler)
# One record, one batch: see the module's docstring.
FILE_POLICY_DEFAULTS = {"line_buffering": True}
RotatingFileHandler = _standing_in(
    logging.handlers.RotatingFileHandler, ConcurrentRotatingFileHandler, FILE_POLICY_DEFAULTS)
TimedRotatingFileHandler = _standing_in(
    logging.handlers.TimedRotatingFileHandler, ConcurrentTimedRotatingFileHandler, FILE_POLICY_DEFAULTS)
WatchedFileHandler = _standing_in(
    logging.handlers.WatchedFileHandler, ConcurrentWatchedFileHandler, FILE_POLICY_DEFAULTS)


class _RecordingStreamHandler(StreamHandler):
    """CPython's TestStreamHandler (a StreamHandler recording the failed
    record), over cbuffer's handler."""

    def handleError(self, record):
        self.error_record = record


# What a child interpreter of assert_python_ok runs first: the same binding.
# _standing_in is defined in a namespace of its own: functions of __main__
# referenced from the logging module would keep __main__'s globals alive at
# exit, and the objects some tests delete then would never be finalized.
_CHILD_PRELUDE = textwrap.dedent(f"""
    import logging
    import logging.handlers
    import cbuffer.handlers
    _namespace = {{"__name__": "cbuffer_stand_ins"}}
    exec({inspect.getsource(_standing_in)!r}, _namespace)
    logging.FileHandler = _namespace["_standing_in"](
        logging.FileHandler, cbuffer.handlers.ConcurrentFileHandler)
    logging.StreamHandler = _namespace["_standing_in"](
        logging.StreamHandler, cbuffer.handlers.ConcurrentStreamHandler)
    for _std, _ours in (
            ("RotatingFileHandler", cbuffer.handlers.ConcurrentRotatingFileHandler),
            ("TimedRotatingFileHandler", cbuffer.handlers.ConcurrentTimedRotatingFileHandler),
            ("WatchedFileHandler", cbuffer.handlers.ConcurrentWatchedFileHandler)):
        setattr(logging.handlers, _std, _namespace["_standing_in"](
            getattr(logging.handlers, _std), _ours, {FILE_POLICY_DEFAULTS!r}))
    del _namespace, _std, _ours
""")

_assert_python_ok = cpython.assert_python_ok
_assert_python_failure = cpython.assert_python_failure


def _with_prelude(run):
    def run_with_prelude(*args, **env_vars):
        args = list(args)
        code = args.index("-c") + 1
        args[code] = _CHILD_PRELUDE + args[code]
        return run(*args, **env_vars)
    return run_with_prelude


def _close_handlers_made_since(before):
    """Close the file handlers a test left open (one that failed before its
    own close()), so that its writer does not turn into a ResourceWarning in
    whichever test next collects garbage."""
    for ref in list(logging._handlerList):
        handler = ref()
        if (isinstance(handler, ConcurrentFileHandler) and handler.stream is not None
                and not any(ref is old for old in before)):
            handler.close()


class _AgainstCbuffer:
    """Runs the CPython test with cbuffer's handlers bound to the standard
    names, in a fresh working directory (some tests write ``test.log`` there)."""

    def setUp(self):
        # pytest's logging plugin has handlers on the root logger; CPython's
        # BaseTest asserts there are none, and closes what it finds there.
        root = logging.getLogger()
        self.addCleanup(setattr, root, "handlers", root.handlers)
        root.handlers = []
        # The test's temporary files (and the rotating handlers' <path>.lock
        # beside them) go to a directory removed afterwards.
        tmp = tempfile.mkdtemp(prefix="cpython-logging-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.addCleanup(setattr, tempfile, "tempdir", tempfile.tempdir)
        tempfile.tempdir = tmp
        super().setUp()
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(tmp)
        for owner, name, value in (
                (logging, "FileHandler", FileHandler),
                (logging, "StreamHandler", StreamHandler),
                (logging.handlers, "RotatingFileHandler", RotatingFileHandler),
                (logging.handlers, "TimedRotatingFileHandler", TimedRotatingFileHandler),
                (logging.handlers, "WatchedFileHandler", WatchedFileHandler),
                (cpython, "TestStreamHandler", _RecordingStreamHandler),
                (cpython, "assert_python_ok", _with_prelude(_assert_python_ok)),
                (cpython, "assert_python_failure", _with_prelude(_assert_python_failure))):
            self.addCleanup(setattr, owner, name, getattr(owner, name))
            setattr(owner, name, value)
        self._handlers_before = list(logging._handlerList)

    def tearDown(self):
        # Before BaseTest.tearDown, which puts logging's list of handlers back.
        _close_handlers_made_since(self._handlers_before)
        super().tearDown()


def _against_cbuffer(base, only=None):
    """A subclass of CPython's test class ``base`` running against cbuffer:
    only the tests named in ``only`` (all when None), those in
    NOT_APPLICABLE skipped with their reason; None if this version's class
    has none of them."""
    namespace = {}
    selected = False
    for name in dir(base):
        if not name.startswith("test") or not callable(getattr(base, name)):
            continue
        key = f"{base.__name__}.{name}"
        if only is not None and name not in only:
            namespace[name] = None  # not a test of these handlers: not collected
            continue
        selected = True
        if key in NOT_APPLICABLE:
            namespace[name] = unittest.skip(NOT_APPLICABLE[key])(getattr(base, name))
    if not selected:
        return None
    namespace["__module__"] = __name__
    return type(f"CPython{base.__name__}", (_AgainstCbuffer, base), namespace)


# CPython's test classes and, where not all of a class's tests are about
# these handlers, the ones that are (a name this version lacks is left out).
SUITE = {
    "FileHandlerTest": None,
    "StreamHandlerTest": None,
    "EncodingTest": None,
    "BasicConfigTest": None,
    "HandlerTest": {"test_path_objects", "test_pathlike_objects", "test_builtin_handlers", "test_race"},
    "RotatingFileHandlerTest": None,
    "TimedRotatingFileHandlerTest": None,
    "ConfigFileTest": {"test_config8_ok"},
    "ConfigDictTest": {"test_config15_ok"},
    "CustomLevelsAndFiltersTest": {"test_handler_filter_replaces_record"},
    "ModuleLevelMiscTest": {"test_subclass_logger_cache", "test_logging_at_shutdown",
                            "test_logging_at_shutdown_open", "test_recursion_error"},
}

for _name, _only in SUITE.items():
    _cls = _against_cbuffer(getattr(cpython, _name), _only)
    if _cls is not None:
        globals()[_cls.__name__] = _cls
del _name, _only, _cls


def test_not_applicable_table_matches_the_skips():
    """The docstring's table names exactly the tests skipped here."""
    table = set(re.findall(r"^(\w+\.test\w*)\s", __doc__, re.MULTILINE))
    assert table == set(NOT_APPLICABLE)


def test_the_handlers_under_test_are_cbuffers():
    for stand_in, ours in ((FileHandler, ConcurrentFileHandler),
                           (StreamHandler, ConcurrentStreamHandler),
                           (RotatingFileHandler, ConcurrentRotatingFileHandler),
                           (TimedRotatingFileHandler, ConcurrentTimedRotatingFileHandler),
                           (WatchedFileHandler, ConcurrentWatchedFileHandler)):
        assert issubclass(stand_in, ours)
        assert stand_in.__name__ == ours.__name__.replace("Concurrent", "")
    for name in ("FileHandlerTest", "StreamHandlerTest", "RotatingFileHandlerTest",
                 "TimedRotatingFileHandlerTest", "HandlerTest"):
        assert unittest.TestLoader().getTestCaseNames(globals()[f"CPython{name}"])


def test_file_policy_stand_ins_write_each_record_as_a_batch(tmp_path):
    """The rotating, timed and watched stand-ins are line buffered unless
    told otherwise; the file and stream ones keep the defaults."""
    for cls in (RotatingFileHandler, TimedRotatingFileHandler, WatchedFileHandler):
        h = cls(tmp_path / "a.log", encoding="utf-8")
        other = cls(tmp_path / "b.log", encoding="utf-8", line_buffering=False)
        try:
            h.emit(logging.makeLogRecord({"msg": "one", "levelno": logging.DEBUG}))
            assert (tmp_path / "a.log").read_bytes() == b"one\n"
            assert other.stream._core.line_buffering is False
        finally:
            h.close()
            other.close()
        os.remove(tmp_path / "a.log")
        os.remove(tmp_path / "b.log")
    h = FileHandler(tmp_path / "c.log", encoding="utf-8")
    try:
        assert h.stream._core.line_buffering is False
    finally:
        h.close()
