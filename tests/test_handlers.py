"""cbuffer.handlers against the standard library's handlers.

Wherever the standard handler defines the behaviour, the same scenario runs
with both and the files are compared byte for byte.
"""
import copy
import inspect
import io
import logging
import logging.config
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import cbuffer
from cbuffer.handlers import ConcurrentFileHandler, ConcurrentHandler, ConcurrentStreamHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cbuffer.__file__)))
TIMEOUT = 60
KINDS = {"stdlib": logging.FileHandler, "cbuffer": ConcurrentFileHandler}
# 3.9's FileHandler reopens after close() in mode 'w' too (truncating what it
# wrote; CPython issue 42378): the cbuffer handler does what 3.10+ do.
STDLIB_DROPS_AFTER_CLOSE_IN_W = sys.version_info >= (3, 10)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def record(msg, *args, level=logging.INFO):
    return logging.LogRecord("cbuffer.test", level, __file__, 1, msg, args, None)


def plain(handler):
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def run_python(script, *args, timeout=TIMEOUT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYTHONWARNINGS", None)
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                              env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"subprocess hung: {exc}")


@pytest.fixture
def both(tmp_path):
    """Run a scenario with logging.FileHandler and ConcurrentFileHandler on
    files of their own; returns {kind: file bytes} (None: no file)."""
    def run(scenario, prepare=None):
        out = {}
        for kind, cls in KINDS.items():
            path = tmp_path / f"{kind}.log"
            if prepare is not None:
                prepare(path)
            scenario(cls, path)
            out[kind] = read(path) if path.exists() else None
        return out
    return run


class Recorder:
    """A handleError that keeps the failed records and their exceptions."""

    def __init__(self, handler):
        self.failures = []
        handler.handleError = self

    def __call__(self, record):
        self.failures.append((record, sys.exc_info()[1]))


# ------------------------------------------------------------------ signature and attributes

def test_signature_is_filehandlers():
    std = list(inspect.signature(logging.FileHandler).parameters.values())
    ours = list(inspect.signature(ConcurrentFileHandler).parameters.values())
    assert [(p.name, p.default, p.kind) for p in ours[:len(std)]] == \
        [(p.name, p.default, p.kind) for p in std]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in ours[len(std):])


def test_is_a_filehandler_and_streamhandler(tmp_path):
    h = ConcurrentFileHandler(tmp_path / "a.log", delay=True)
    try:
        assert isinstance(h, logging.FileHandler)
        assert isinstance(h, logging.StreamHandler)
        assert isinstance(h, ConcurrentHandler)
    finally:
        h.close()


@pytest.mark.parametrize("kwargs", [
    {},
    {"mode": "w"},
    {"mode": "a", "encoding": "utf-8"},
    {"encoding": "latin-1", "errors": "replace"},
    {"delay": True},
    {"mode": "w", "encoding": "utf-16", "delay": True, "errors": "strict"},
])
def test_attributes_are_filehandlers(tmp_path, monkeypatch, kwargs):
    monkeypatch.chdir(tmp_path)
    handlers = [cls("rel.log", **kwargs) for cls in KINDS.values()]
    try:
        std, ours = handlers
        for name in ("baseFilename", "mode", "encoding", "errors", "delay", "terminator", "level"):
            assert getattr(ours, name) == getattr(std, name), name
        assert ours.baseFilename == os.path.join(str(tmp_path), "rel.log")
        assert (ours.stream is None) == (std.stream is None) == bool(kwargs.get("delay"))
        if ours.stream is not None:
            assert isinstance(ours.stream, cbuffer.ConcurrentBufferedWriter)
            assert ours.stream.name == std.stream.name
        assert repr(ours) == repr(std).replace("<FileHandler", "<ConcurrentFileHandler")
    finally:
        for h in handlers:
            h.close()


def test_path_like_filename(tmp_path):
    h = plain(ConcurrentFileHandler(tmp_path / "p.log", encoding="utf-8"))
    h.handle(record("via a Path"))
    h.close()
    assert read(tmp_path / "p.log") == b"via a Path\n"
    assert h.baseFilename == str(tmp_path / "p.log")


def test_level_keyword_kept(tmp_path):
    h = ConcurrentFileHandler(tmp_path / "l.log", level=logging.WARNING, delay=True)
    h.close()
    assert h.level == logging.WARNING


def test_writer_options_reach_the_writer(tmp_path):
    h = ConcurrentFileHandler(tmp_path / "o.log", buffer_size=8192, buffer_count=2,
                              flush_interval=0.25)
    try:
        assert (h.stream.buffer_size, h.stream.buffer_count) == (8192, 2)
    finally:
        h.close()


def test_bad_writer_options_fail_at_construction(tmp_path):
    with pytest.raises(TypeError, match="no_such_option"):
        ConcurrentFileHandler(tmp_path / "o.log", delay=True, no_such_option=1)
    with pytest.raises(ValueError):
        ConcurrentFileHandler(tmp_path / "o.log", flush_interval=-1)
    assert not (tmp_path / "o.log").exists() or read(tmp_path / "o.log") == b""


# ------------------------------------------------------------------ delay

def test_delay_creates_the_file_at_the_first_record(tmp_path):
    path = tmp_path / "d.log"
    h = plain(ConcurrentFileHandler(path, encoding="utf-8", delay=True))
    try:
        assert h.stream is None
        assert not path.exists()
        h.handle(record("first"))
        assert isinstance(h.stream, cbuffer.ConcurrentBufferedWriter)
        assert path.exists()
    finally:
        h.close()
    assert read(path) == b"first\n"


def test_delay_close_without_record_creates_nothing(tmp_path):
    path = tmp_path / "d.log"
    h = ConcurrentFileHandler(path, delay=True)
    h.close()
    assert not path.exists()


# ------------------------------------------------------------------ modes

@pytest.mark.parametrize("mode", ["a", "w", "x", "at", "wt"])
def test_text_modes_match_stdlib(both, mode):
    def prepare(path):
        if mode != "x":
            path.write_bytes(b"existing\n")

    def scenario(cls, path):
        h = plain(cls(path, mode=mode, encoding="utf-8"))
        h.handle(record("r1"))
        h.handle(record("caf\u00e9"))
        h.close()
    out = both(scenario, prepare)
    assert out["cbuffer"] == out["stdlib"]
    assert out["cbuffer"].endswith(b"r1\ncaf\xc3\xa9\n")


def test_mode_x_refuses_an_existing_file(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes(b"")
    for cls in KINDS.values():
        with pytest.raises(FileExistsError):
            cls(path, mode="x")


def test_mode_x_with_delay_raises_from_emit_as_stdlib(tmp_path):
    # FileHandler.emit opens outside its error handling: the open error
    # reaches the caller instead of handleError.
    path = tmp_path / "x.log"
    path.write_bytes(b"")
    for cls in KINDS.values():
        h = cls(path, mode="x", delay=True)
        with pytest.raises(FileExistsError):
            h.handle(record("r"))
        h.close()


@pytest.mark.parametrize("mode", ["ab", "wb", "xb"])
def test_binary_modes_accepted_for_compatibility(tmp_path, mode):
    path = tmp_path / "b.log"
    if mode != "xb":
        path.write_bytes(b"existing\n")
    h = plain(ConcurrentFileHandler(path, mode))
    assert (h.mode, h.encoding, h.errors) == (mode, "utf-8", "backslashreplace")
    h.handle(record("caf\u00e9 \udc80"))
    h.close()
    expected = b"caf\xc3\xa9 \\udc80\n"
    assert read(path) == (b"existing\n" + expected if mode == "ab" else expected)


@pytest.mark.parametrize("mode", ["r", "a+", "rb", "", "wa", None, 1])
def test_invalid_modes(tmp_path, mode):
    with pytest.raises(ValueError, match="invalid mode"):
        ConcurrentFileHandler(tmp_path / "m.log", mode)
    assert not (tmp_path / "m.log").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_bom_encodings_write_one_bom_as_stdlib(both, encoding):
    def scenario(cls, path):
        for _ in range(2):  # the second handler appends: no second BOM
            h = plain(cls(path, encoding=encoding))
            h.handle(record("one"))
            h.handle(record("tw\u00f6"))
            h.close()
    out = both(scenario)
    assert out["cbuffer"] == out["stdlib"]
    assert out["cbuffer"].decode(encoding) == "one\ntw\u00f6\n" * 2


# ------------------------------------------------------------------ reopen after close

@pytest.mark.parametrize("mode", ["a", "w"])
@pytest.mark.parametrize("delay", [False, True])
def test_emit_after_close_matches_stdlib(both, mode, delay):
    def scenario(cls, path):
        h = plain(cls(path, mode=mode, encoding="utf-8", delay=delay))
        h.handle(record("before close"))
        h.close()
        assert h.stream is None
        h.handle(record("after close"))  # 'a' reopens, 'w' drops it (CPython issue 42378)
        if cls is ConcurrentFileHandler or STDLIB_DROPS_AFTER_CLOSE_IN_W:
            assert (h.stream is None) == (mode == "w")
        h.emit(record("emitted directly"))
        h.close()
        h.close()  # idempotent
    out = both(scenario)
    if mode == "a" or STDLIB_DROPS_AFTER_CLOSE_IN_W:
        assert out["cbuffer"] == out["stdlib"]
    if mode == "a":
        assert out["cbuffer"] == b"before close\nafter close\nemitted directly\n"
    else:
        assert out["cbuffer"] == b"before close\n"


@pytest.mark.parametrize("mode", ["a", "w"])
def test_closed_before_any_record_with_delay_matches_stdlib(both, mode):
    def scenario(cls, path):
        h = plain(cls(path, mode=mode, encoding="utf-8", delay=True))
        h.close()
        h.handle(record("after close"))
        h.close()
    out = both(scenario)
    if mode == "a" or STDLIB_DROPS_AFTER_CLOSE_IN_W:
        assert out["cbuffer"] == out["stdlib"]
    assert out["cbuffer"] == (b"after close\n" if mode == "a" else None)


def test_writer_closed_behind_the_handlers_back_goes_to_handle_error(tmp_path):
    h = plain(ConcurrentFileHandler(tmp_path / "c.log", encoding="utf-8"))
    errors = Recorder(h)
    h.stream.close()
    r = record("lost")
    h.handle(r)
    assert [(rec, type(exc)) for rec, exc in errors.failures] == [(r, ValueError)]
    h.close()


def test_logging_shutdown_then_a_late_record_in_process(tmp_path):
    path = tmp_path / "s.log"
    h = plain(ConcurrentFileHandler(path, encoding="utf-8"))
    errors = Recorder(h)
    h.handle(record("before"))
    logging.shutdown([weakref.ref(h)])
    h.handle(record("late"))
    h.close()
    assert errors.failures == []
    assert read(path) == b"before\nlate\n"


@pytest.mark.parametrize("kind", list(KINDS))
def test_logging_shutdown_then_a_late_record(tmp_path, kind):
    if kind == "stdlib" and sys.version_info < (3, 10):
        pytest.skip("3.9's FileHandler cannot reopen while the interpreter finalizes "
                    "(CPython issue 26789)")
    if kind == "cbuffer" and not getattr(sys, "_is_gil_enabled", lambda: True)():
        pytest.skip("free-threaded 3.13 wipes the logging module's own globals before this "
                    "__del__ runs when a writer is still alive at exit: logging.warning is None "
                    "there, before any handler is reached")
    path = tmp_path / "s.log"
    proc = run_python("""
        import logging, sys
        from cbuffer.handlers import ConcurrentFileHandler
        cls = logging.FileHandler if sys.argv[2] == "stdlib" else ConcurrentFileHandler
        logging.basicConfig(handlers=[cls(sys.argv[1], encoding="utf-8")], format="%(message)s")
        logging.warning("before shutdown")
        logging.shutdown()
        logging.warning("after shutdown")

        class Late:
            def __del__(self, logging=logging):  # the module's globals may be gone by then
                logging.warning("while finalizing")

        late = Late()
        """, path, kind)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    assert read(path) == b"before shutdown\nafter shutdown\nwhile finalizing\n"


# ------------------------------------------------------------------ errors

MESSAGE = "caf\u00e9 \u2603 \U0001f600 ok"


@pytest.mark.parametrize("errors", [None, "strict", "ignore", "replace", "backslashreplace",
                                    "xmlcharrefreplace", "namereplace", "surrogateescape"])
def test_unencodable_record_matches_stdlib(both, capsys, errors):
    failures = {}

    def scenario(cls, path):
        h = plain(cls(path, encoding="ascii", errors=errors))
        h.handle(record("first"))
        h.handle(record(MESSAGE))
        h.handle(record("last"))
        h.close()
        failures[cls] = capsys.readouterr().err
    out = both(scenario)
    assert out["cbuffer"] == out["stdlib"]
    std, ours = failures.values()
    if errors in (None, "strict", "surrogateescape"):
        assert out["cbuffer"] == b"first\nlast\n"
        for err in (std, ours):
            assert err.startswith("--- Logging error ---\n")
            assert "UnicodeEncodeError: 'ascii' codec can't encode character '\\xe9'" in err
        # the same exception, message and arguments (the frames differ)
        pick = re.compile(r"^(UnicodeEncodeError: .*|Message: .*|Arguments: .*)$", re.MULTILINE)
        assert pick.findall(ours) == pick.findall(std) and len(pick.findall(ours)) == 3
    else:
        assert ours == std == ""
        assert out["cbuffer"].startswith(b"first\ncaf") and out["cbuffer"].endswith(b" ok\nlast\n")


def test_handle_error_gets_the_failing_record(tmp_path):
    h = plain(ConcurrentFileHandler(tmp_path / "e.log", encoding="ascii"))
    errors = Recorder(h)
    bad = record("\u00e9")
    h.handle(bad)
    h.handle(record("%d", "not a number"))
    h.close()
    assert [(r.msg, type(e)) for r, e in errors.failures] == \
        [("\u00e9", UnicodeEncodeError), ("%d", TypeError)]
    assert read(tmp_path / "e.log") == b""


def test_raise_exceptions_false_is_silent(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", False)
    h = plain(ConcurrentFileHandler(tmp_path / "e.log", encoding="ascii"))
    h.handle(record("\u00e9"))
    h.close()
    assert capsys.readouterr().err == ""


def test_recursion_error_propagates(tmp_path):
    class Deep(logging.Formatter):
        def format(self, record):
            raise RecursionError("deep")
    h = ConcurrentFileHandler(tmp_path / "r.log", encoding="utf-8")
    h.setFormatter(Deep())
    try:
        with pytest.raises(RecursionError):
            h.handle(record("x"))
    finally:
        h.close()


# ------------------------------------------------------------------ handle(): filters, no lock

def test_filters_as_stdlib(both):
    def replace(rec):
        rec = copy.copy(rec)
        rec.msg = "replaced"
        return rec  # 3.12+: the handler emits this record instead

    def drop(rec):
        return rec.msg != "dropped"

    results = {}

    def scenario(cls, path):
        h = plain(cls(path, encoding="utf-8"))
        h.addFilter(drop)
        h.addFilter(replace)
        kept, dropped = record("original"), record("dropped")
        results[cls] = (h.handle(kept), h.handle(dropped))
        h.close()
        assert kept.msg == "original"
    out = both(scenario)
    assert out["cbuffer"] == out["stdlib"]
    (std_kept, std_dropped), (kept, dropped) = results.values()
    assert not std_dropped and not dropped
    assert type(kept) is type(std_kept)
    if sys.version_info >= (3, 12):
        assert out["cbuffer"] == b"replaced\n" and kept.msg == "replaced"


@pytest.mark.parametrize("make", ["file", "stream", "handler"])
def test_emit_takes_no_handler_lock(tmp_path, make):
    if make == "file":
        h = ConcurrentFileHandler(tmp_path / "n.log", encoding="utf-8")
    else:
        writer = cbuffer.open(tmp_path / "n.log", "wb")
        h = ConcurrentStreamHandler(writer) if make == "stream" else ConcurrentHandler(writer)
    plain(h)
    held, release = threading.Event(), threading.Event()

    def hold():
        with h.lock:
            held.set()
            release.wait(TIMEOUT)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(TIMEOUT)
    logged = threading.Thread(target=lambda: [h.handle(record("r %d", i)) for i in range(100)])
    logged.start()
    logged.join(TIMEOUT)
    alive = logged.is_alive()
    release.set()
    holder.join()
    logged.join()
    h.close()
    if make != "file":
        writer.close()
    assert not alive, "handle() waited for the handler lock"
    assert read(tmp_path / "n.log") == b"".join(b"r %d\n" % i for i in range(100))


def test_one_write_and_no_system_call_per_record(tmp_path):
    h = plain(ConcurrentFileHandler(tmp_path / "w.log", encoding="utf-8"))
    try:
        before = h.stream.stats()
        for i in range(1000):
            h.handle(record("record %d", i))
        after = h.stream.stats()
    finally:
        h.close()
    assert after["writes"] - before["writes"] == 1000
    assert after["syscalls"] == before["syscalls"]


# ------------------------------------------------------------------ threads and close()

THREADS, RECORDS = 8, 10_000
LINE = re.compile(rb"t(\d) (\d{5}) ([a-z]+) (\d+)")


def payload(t, i):
    word = "abcdefghijklmnopqrstuvwxyz"[(t + i) % 26] * (1 + (i * 7 + t) % 60)
    return f"t{t} {i:05d} {word} {len(word)}"


def log_while_closing(path, mode, closes=None):
    """THREADS threads log RECORDS records each through one handler while
    another thread closes it over and over; returns the file's lines per
    thread and the failures handleError saw."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # more thread switches: more writes racing close()
    try:
        return _log_while_closing(path, mode, closes)
    finally:
        sys.setswitchinterval(interval)


def _log_while_closing(path, mode, closes):
    h = plain(ConcurrentFileHandler(path, mode=mode, encoding="utf-8"))
    errors = Recorder(h)
    logger = logging.getLogger(f"cbuffer.test.close.{mode}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(h)
    start, done = threading.Barrier(THREADS + 1), threading.Event()
    crashes = []
    closed = [0]

    def work(t):
        try:
            start.wait()
            for i in range(RECORDS):
                logger.info(payload(t, i))
        except BaseException as exc:
            crashes.append(exc)

    def closer():
        start.wait()
        while not done.is_set() and (closes is None or closed[0] < closes):
            if h.stream is None:
                time.sleep(0)  # closed: wait for a record to reopen it
                continue
            h.close()
            closed[0] += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    closing = threading.Thread(target=closer)
    for th in threads + [closing]:
        th.start()
    for th in threads:
        th.join()
    done.set()
    closing.join()
    logger.removeHandler(h)
    h.close()
    assert crashes == []
    assert closed[0] >= 1
    per_thread = {t: [] for t in range(THREADS)}
    for line in read(path).split(b"\n")[:-1]:
        m = LINE.fullmatch(line)
        assert m, line  # whole: never torn or interleaved
        t, i = int(m[1]), int(m[2])
        assert line.decode() == payload(t, i)
        per_thread[t].append(i)
    return per_thread, errors.failures


def test_threads_logging_while_another_closes_lose_nothing(tmp_path):
    per_thread, failures = log_while_closing(tmp_path / "t.log", "a")
    assert failures == []
    for t, seen in per_thread.items():
        assert seen == list(range(RECORDS)), f"thread {t}: every record once, in order"


def test_threads_logging_while_closed_in_write_mode_drop_only_after(tmp_path):
    # Mode 'w' does not reopen after close(): each thread's records that
    # landed are the ones before the close, a prefix of what it logged.
    per_thread, failures = log_while_closing(tmp_path / "t.log", "w", closes=1)
    assert failures == []
    for t, seen in per_thread.items():
        assert seen == list(range(len(seen))), f"thread {t}"


# ------------------------------------------------------------------ configuration

@pytest.fixture
def isolated_logging(monkeypatch):
    """dictConfig and fileConfig close every handler logging knows and
    reconfigure the root logger: give them an empty world."""
    root = logging.getLogger()
    monkeypatch.setattr(logging, "_handlerList", [])
    monkeypatch.setattr(logging, "_handlers", weakref.WeakValueDictionary())
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    yield
    for h in logging._handlerList:
        h = h()
        if h is not None:
            h.close()


def dict_config(cls_name, path):
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
        "handlers": {"file": {
            "class": cls_name, "formatter": "plain", "level": "INFO",
            "filename": str(path), "mode": "a", "encoding": "utf-8", "delay": True,
            **({"flush_interval": 0.5} if "cbuffer" in cls_name else {}),
        }},
        "loggers": {"cbuffer.test.config": {"handlers": ["file"], "level": "DEBUG",
                                            "propagate": False}},
    }


FILE_CONFIG = """
[loggers]
keys=root,app

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=

[logger_app]
level=DEBUG
handlers=file
qualname=cbuffer.test.config
propagate=0

[handler_file]
class={cls}
level=INFO
formatter=plain
args=({path!r}, 'a', 'utf-8', True)
kwargs={kwargs}

[formatter_plain]
format=%(levelname)s %(message)s
"""


def configure(how, cls_name, path, tmp_path):
    if how == "dictConfig":
        logging.config.dictConfig(dict_config(cls_name, path))
    else:
        ini = tmp_path / "logging.ini"
        kwargs = {"flush_interval": 0.5} if "cbuffer" in cls_name else {}
        ini.write_text(FILE_CONFIG.format(cls=cls_name, path=str(path), kwargs=kwargs))
        logging.config.fileConfig(ini, disable_existing_loggers=False)


@pytest.mark.parametrize("how", ["dictConfig", "fileConfig"])
def test_config_swap_is_invisible(isolated_logging, tmp_path, how):
    out = {}
    for kind, cls_name in (("stdlib", "logging.FileHandler"),
                           ("cbuffer", "cbuffer.handlers.ConcurrentFileHandler")):
        path = tmp_path / f"{kind}.log"
        configure(how, cls_name, path, tmp_path)
        logger = logging.getLogger("cbuffer.test.config")
        h, = logger.handlers
        assert type(h).__name__ == cls_name.rpartition(".")[2]
        assert (h.baseFilename, h.mode, h.encoding, h.delay, h.stream, h.level) == \
            (str(path), "a", "utf-8", True, None, logging.INFO)
        assert not path.exists()
        logger.debug("filtered out by the handler's level")
        logger.info("caf\u00e9")
        logger.warning("second")
        if kind == "cbuffer":
            # flush_interval reached the writer: the records reach the file
            # with the handler still open (polled, bounded by the timeout)
            expected = "INFO caf\u00e9\nWARNING second\n".encode()
            while read(path) != expected:
                time.sleep(0.05)
        out[kind] = path
        # a second configuration closes the first's handlers, as for stdlib
        configure(how, cls_name, tmp_path / f"{kind}-2.log", tmp_path)
        assert h.stream is None
        logger.handlers[0].close()
    assert read(out["cbuffer"]) == read(out["stdlib"]) == "INFO caf\u00e9\nWARNING second\n".encode()


# ------------------------------------------------------------------ process life

POOL_SCRIPT = """
    import logging, multiprocessing, sys
    from cbuffer.handlers import ConcurrentFileHandler

    path, kind = sys.argv[1], sys.argv[2]
    cls = logging.FileHandler if kind == "stdlib" else ConcurrentFileHandler
    handler = cls(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("pool")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)

    def work(n):
        for i in range(100):
            log.info("worker task %d record %d", n, i)
        return n

    if __name__ == "__main__":
        log.info("parent before")
        pool = multiprocessing.get_context("fork").Pool(2)
        assert pool.map(work, range(8)) == list(range(8))
        pool.close()
        pool.join()
        log.info("parent after")
        handler.close()
"""


@pytest.mark.parametrize("kind", list(KINDS))
def test_fork_pool_workers_records_reach_the_file(tmp_path, kind):
    path = tmp_path / "pool.log"
    proc = run_python(POOL_SCRIPT, path, kind)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = read(path).decode().splitlines()
    assert lines[0] == "parent before" and lines[-1] == "parent after"
    workers = sorted(lines[1:-1])
    expected = sorted(f"worker task {n} record {i}" for n in range(8) for i in range(100))
    assert len(workers) == len(expected), f"{len(expected) - len(workers)} worker records lost"
    assert workers == expected


# ------------------------------------------------------------------ ConcurrentStreamHandler

@pytest.fixture
def writer(tmp_path):
    w = cbuffer.open(tmp_path / "s.log", "wb")
    yield w
    w.close()


def test_stream_handler_writes_to_a_writer_and_leaves_it_open(tmp_path, writer):
    h = plain(ConcurrentStreamHandler(writer))
    assert isinstance(h, logging.StreamHandler) and h.stream is writer
    before = writer.stats()
    h.handle(record("caf\u00e9 \udc80"))
    h.handle(record("two"))
    assert writer.stats()["writes"] - before["writes"] == 2
    assert writer.stats()["syscalls"] == before["syscalls"]
    h.flush()
    assert read(tmp_path / "s.log") == b"caf\xc3\xa9 \\udc80\ntwo\n"
    h.close()
    assert not writer.closed


def test_stream_handler_encoding_and_errors(tmp_path, writer):
    h = plain(ConcurrentStreamHandler(writer, encoding="latin-1", errors="replace"))
    h.handle(record("caf\u00e9 \u2603"))
    h.flush()
    h.close()
    assert read(tmp_path / "s.log") == b"caf\xe9 ?\n"


def test_stream_handler_default_is_stderr_as_stdlib(capsys):
    h = plain(ConcurrentStreamHandler())
    assert h.stream is sys.stderr
    h.handle(record("to stderr"))
    h.close()
    assert capsys.readouterr().err == "to stderr\n"


@pytest.mark.parametrize("make", [io.StringIO, lambda: io.TextIOWrapper(io.BytesIO(), "utf-8")])
def test_stream_handler_text_streams_as_stdlib(make):
    out = []
    for cls in (logging.StreamHandler, ConcurrentStreamHandler):
        stream = make()
        h = plain(cls(stream))
        h.handle(record("one"))
        h.handle(record("caf\u00e9"))
        h.close()
        out.append(stream.getvalue() if isinstance(stream, io.StringIO) else stream.buffer.getvalue())
    assert out[0] == out[1]


def test_stream_handler_set_stream(tmp_path, writer):
    h = ConcurrentStreamHandler()
    other = io.StringIO()
    assert h.setStream(other) is sys.stderr
    assert h.setStream(writer) is other
    assert h.setStream(writer) is None
    plain(h).handle(record("now to the writer"))
    assert h.setStream(other) is writer  # flushes the old stream
    assert read(tmp_path / "s.log") == b"now to the writer\n"
    h.close()


def test_stream_handler_repr_with_int_name(tmp_path):
    fd = os.open(tmp_path / "fd.log", os.O_WRONLY | os.O_CREAT)
    w = cbuffer.ConcurrentBufferedWriter(fd)
    try:
        h = ConcurrentStreamHandler(w)
        assert repr(h) == f"<ConcurrentStreamHandler {fd} (NOTSET)>"
        h.close()
    finally:
        w.close()


def test_stream_handler_error_handling(capsys, monkeypatch, writer):
    h = plain(ConcurrentStreamHandler(writer))
    errors = Recorder(h)
    writer.close()
    r = record("x")
    h.handle(r)
    assert [(rec, str(exc)) for rec, exc in errors.failures] == [(r, "write to closed file")]
    del h.handleError
    h.handle(r)
    assert "\nValueError: write to closed file\n" in capsys.readouterr().err
    monkeypatch.setattr(logging, "raiseExceptions", False)
    h.handle(r)
    assert capsys.readouterr().err == ""
    h.flush()  # a closed writer: nothing to flush, no error
    h.close()


# ------------------------------------------------------------------ ConcurrentHandler (cbuffer 0.1 API)

def test_concurrent_handler_api_kept(tmp_path):
    w = cbuffer.open(tmp_path / "h.log", "ab")
    h = plain(ConcurrentHandler(w, level=logging.INFO))
    assert h.writer is w and h.stream is w and h.encoding == "utf-8" and not h.owns_writer
    assert h.level == logging.INFO
    h.handle(record("caf\u00e9 \udc80"))  # backslashreplace: no record lost
    h.close()
    assert not w.closed
    w.close()
    assert read(tmp_path / "h.log") == b"caf\xc3\xa9 \\udc80\n"


def test_concurrent_handler_owns_writer(tmp_path):
    w = cbuffer.open(tmp_path / "h.log", "ab")
    h = plain(ConcurrentHandler(w, "latin-1", owns_writer=True))
    h.handle(record("caf\u00e9"))
    h.close()
    assert w.closed
    assert read(tmp_path / "h.log") == b"caf\xe9\n"


def test_concurrent_handler_wants_a_writer():
    with pytest.raises(TypeError, match="ConcurrentBufferedWriter"):
        ConcurrentHandler(io.BytesIO())
