"""CPython's own FileHandler and StreamHandler tests, run against cbuffer's handlers.

The running interpreter's ``Lib/test/test_logging.py`` is imported as a module
object and its test classes are subclassed here (through attribute access, so
pytest collects only these subclasses).  While each test runs,
``logging.FileHandler`` and ``logging.StreamHandler`` are bound to subclasses
of :class:`cbuffer.handlers.ConcurrentFileHandler` and
:class:`cbuffer.handlers.ConcurrentStreamHandler` that carry the standard
names, so every handler the test body makes -- directly, through
``basicConfig()``, ``fileConfig()`` or ``dictConfig()``, or in a child
interpreter started by ``assert_python_ok`` -- is cbuffer's, and reprs keep
the standard class name.  (logging's own classes call
``StreamHandler.__init__(self, ...)`` and the like through those names; for
instances of the standard classes the stand-ins forward to the standard
methods.)  The test bodies are CPython's, unchanged.

Which tests: every test of ``FileHandlerTest``, ``StreamHandlerTest``,
``EncodingTest`` and ``BasicConfigTest``, and these others whose subject is a
FileHandler or StreamHandler: ``HandlerTest.test_path_objects`` (3.13:
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

The StreamHandler tests pass text streams (``io.StringIO``, ``sys.stderr``, a
stream whose ``write`` raises, a ``codecs`` writer), which
``ConcurrentStreamHandler`` writes as ``logging.StreamHandler`` does; its
lock-free path over a ConcurrentBufferedWriter is held to the same tests in
tests/test_handlers.py.
"""
import inspect
import logging
import os
import re
import shutil
import tempfile
import textwrap
import unittest

import pytest

from cbuffer.handlers import ConcurrentFileHandler, ConcurrentStreamHandler

try:
    from test import test_logging as cpython
except ImportError:  # a Python built without its test package
    pytest.skip("CPython's test.test_logging is not installed", allow_module_level=True)


NOT_APPLICABLE = {
    "BasicConfigTest.test_log_taskName":
        "reads the log file while the handler is open: needs a flush per record",
}


def _standing_in(std, ours):
    """A subclass of ``ours`` named like the standard class ``std``, to bind
    in its place.  logging's own classes call ``StreamHandler.__init__(self,
    ...)``, ``logging.FileHandler.emit(self, ...)`` and the like through the
    module globals; for their instances (a RotatingFileHandler, the standard
    FileHandler) those calls go on to the standard methods."""
    import inspect

    def forward(name):
        def method(self, *args, **kwargs):
            cls = ours if isinstance(self, ours) else std
            return getattr(cls, name)(self, *args, **kwargs)
        method.__name__ = name
        return method

    methods = {name: forward(name) for name, value in vars(std).items()
               if inspect.isfunction(value)}
    return type(std.__name__, (ours,), dict(methods, __module__=__name__))


FileHandler = _standing_in(logging.FileHandler, ConcurrentFileHandler)
StreamHandler = _standing_in(logging.StreamHandler, ConcurrentStreamHandler)


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
    import cbuffer.handlers
    _namespace = {{"__name__": "cbuffer_stand_ins"}}
    exec({inspect.getsource(_standing_in)!r}, _namespace)
    logging.FileHandler = _namespace["_standing_in"](
        logging.FileHandler, cbuffer.handlers.ConcurrentFileHandler)
    logging.StreamHandler = _namespace["_standing_in"](
        logging.StreamHandler, cbuffer.handlers.ConcurrentStreamHandler)
    del _namespace
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


class _AgainstCbuffer:
    """Runs the CPython test with cbuffer's handlers bound to the standard
    names, in a fresh working directory (some tests write ``test.log`` there)."""

    def setUp(self):
        # pytest's logging plugin has handlers on the root logger; CPython's
        # BaseTest asserts there are none, and closes what it finds there.
        root = logging.getLogger()
        self.addCleanup(setattr, root, "handlers", root.handlers)
        root.handlers = []
        super().setUp()
        cwd = os.getcwd()
        tmp = tempfile.mkdtemp(prefix="cpython-logging-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.addCleanup(os.chdir, cwd)
        os.chdir(tmp)
        for owner, name, value in (
                (logging, "FileHandler", FileHandler),
                (logging, "StreamHandler", StreamHandler),
                (cpython, "TestStreamHandler", _RecordingStreamHandler),
                (cpython, "assert_python_ok", _with_prelude(_assert_python_ok)),
                (cpython, "assert_python_failure", _with_prelude(_assert_python_failure))):
            self.addCleanup(setattr, owner, name, getattr(owner, name))
            setattr(owner, name, value)


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
    "HandlerTest": {"test_path_objects", "test_pathlike_objects"},
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
    assert issubclass(FileHandler, ConcurrentFileHandler)
    assert issubclass(StreamHandler, ConcurrentStreamHandler)
    assert FileHandler.__name__ == "FileHandler" and StreamHandler.__name__ == "StreamHandler"
    for name in ("FileHandlerTest", "StreamHandlerTest"):
        assert unittest.TestLoader().getTestCaseNames(globals()[f"CPython{name}"])
