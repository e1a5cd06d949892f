"""What a writer opened from a path does to its file: reopen it, rotate it.

A writer opened from a path has a *file sink* (``cbuffer/_sink.pyx``).  Before
each batch it writes, the sink checks in C whether ``reopen()`` was called,
whether the path still names the file it writes (``watch``), whether the
batch would take the file past its size limit and whether the rollover time
has come.  Only when one of these fires does it call the policy here -- with
the GIL, on the thread that dispatches, holding the writer's dispatch lock,
so nothing else writes to the file meanwhile.  Rotation therefore costs one
``fstat`` (and one ``stat`` with ``watch``) per batch, never a system call or
a lock per record, and writers never wait for a rename.  A batch is cut only
between the parts it is made of, so a record never straddles two files.

Several processes may share one path.  Every file is opened ``O_APPEND``.  A
process that must rotate takes an advisory lock (``fcntl.flock`` on
``<path>.lock``) only around the renames, after checking again that nobody
rotated already; the others notice the new file at their next batch (the
path's inode is not their fd's) and reopen it.

Naming, ``namer``/``rotator`` and retention are the standard library's: the
rotating policies run ``logging.handlers``' own ``doRollover`` against a view
of the handler that has no stream to close or reopen.
"""
import contextlib
import fcntl
import gzip
import io
import itertools
import logging.handlers
import os
import queue
import shutil
import threading
import time
import weakref

APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)

# Bound at import: the handler classes may be rebound (CPython's own tests
# are run with cbuffer's handlers in their place).
_RotatingFileHandler = logging.handlers.RotatingFileHandler
_TimedRotatingFileHandler = logging.handlers.TimedRotatingFileHandler


def open_append(path):
    """The file at ``path`` for appending (created if missing), as the
    FileIO a writer's ``raw`` is."""
    fd = os.open(path, APPEND, 0o666)
    try:
        raw = io.FileIO(fd, "ab", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    raw.name = path
    return raw


@contextlib.contextmanager
def path_lock(path):
    """An exclusive advisory lock on ``<path>.lock``, for the renames of a
    rotation shared by several processes."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def same_file(path, fd):
    """True when ``path`` names the file open at ``fd``."""
    try:
        p, f = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (p.st_dev, p.st_ino) == (f.st_dev, f.st_ino)


class FileTarget:
    """The file of a writer opened from a path: reopened (``O_APPEND``,
    created if missing) when ``reopen()`` asks, and -- with ``watch`` --
    when the path names another file than the one being written."""

    watch = False

    def __init__(self, core, path):
        self.path = os.fspath(path)
        self._core = weakref.ref(core)
        self._orphans = []  # files opened after the writer went away

    def attach(self, limit=0, roll_at=0.0):
        self._core()._attach_file(self, self.path, limit, roll_at, self.watch)

    def current_fd(self):
        core = self._core()
        return core.fd if core is not None else -1

    def install(self, raw):
        """Make ``raw`` the writer's file and close the one it replaces;
        returns its fd for the sink."""
        core = self._core()
        if core is None:  # the writer is gone; its flusher finishes the queue
            self._orphans.append(raw)
            return raw.fileno()
        old = core.raw
        core._set_raw(raw)
        if old is not raw:
            with contextlib.suppress(OSError):
                old.close()
        return raw.fileno()

    def _switch(self, reason, incoming):
        """The sink's call (dispatch lock held): returns (fd, roll_at)."""
        return self.install(open_append(self.path)), 0.0


class _View:
    """The handler as logging.handlers' doRollover sees it here: no stream to
    close and ``delay`` set, so it renames and nothing else; what it sets
    (``rolloverAt``) lands on the handler."""

    stream = None
    delay = True

    def __init__(self, handler, **overrides):
        object.__setattr__(self, "_handler", handler)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_handler"), name)

    def __setattr__(self, name, value):
        setattr(object.__getattribute__(self, "_handler"), name, value)


class _Compressor:
    """One background thread per process gzips rotated files, so neither a
    writer nor the flusher ever waits for it.  A file is compressed into a
    temporary name and renamed into place when complete; ``place`` then runs
    under the path lock."""

    def __init__(self):
        self._queue = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def submit(self, source, place):
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cbuffer-gzip", daemon=True)
                self._thread.start()
        self._queue.put((source, place))

    def _run(self):
        while True:
            source, place = self._queue.get()
            try:
                packed = source + ".gz-part"
                with open(source, "rb") as src, gzip.open(packed, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                place(packed)
                os.remove(source)
            except Exception:  # the uncompressed file stays: nothing is lost
                logging.getLogger("cbuffer").exception("compressing %s failed", source)
            finally:
                with self._lock:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def wait(self, timeout=None):
        """Wait until everything submitted is compressed (tests, close())."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._pending, timeout)


compressor = _Compressor()
_names = itertools.count()


def _pending_name(path):
    return f"{path}.{os.getpid()}-{next(_names)}.rotating"


class SizeRotation(FileTarget):
    """Rotation by size, as ``logging.handlers.RotatingFileHandler`` names
    and keeps files: a batch that would bring the file to ``maxBytes`` goes
    to a fresh one.  With ``compress`` the file is moved aside at once and
    the renaming and gzip happen in the background."""

    watch = True  # another process sharing the path may rotate it

    def __init__(self, core, handler, compress=False):
        super().__init__(core, handler.baseFilename)
        self._handler = weakref.ref(handler)
        self.compress = compress

    @property
    def limit(self):
        h = self._handler()
        return h.maxBytes if h.maxBytes > 0 and h.backupCount > 0 else 0

    def _switch(self, reason, incoming):
        if reason not in ("size", "rollover"):
            return super()._switch(reason, incoming)
        handler = self._handler()
        with path_lock(self.path):
            fd = self.current_fd()
            if handler is not None and same_file(self.path, fd):
                # Still the file we write, so nobody rotated it meanwhile:
                # check the size again (other processes append to it too).
                size = os.fstat(fd).st_size
                if reason == "rollover" or (size and size + incoming >= self.limit):
                    self._rollover(handler)
            return self.install(open_append(self.path)), 0.0

    def _rollover(self, handler):
        if not self.compress:
            _RotatingFileHandler.doRollover(_View(handler))
            return
        aside = _pending_name(self.path)
        os.rename(self.path, aside)

        def place(packed):
            # Shift the backups as doRollover does and put this one first.
            with path_lock(self.path):
                _RotatingFileHandler.doRollover(
                    _View(handler, rotate=lambda source, dest: os.replace(packed, dest)))

        compressor.submit(aside, place)


class TimedRotation(FileTarget):
    """Rotation by time, as ``logging.handlers.TimedRotatingFileHandler``
    names and keeps files: the first batch at or after the rollover time goes
    to a fresh file.  With ``compress`` the rotated file is gzipped in the
    background."""

    watch = True

    def __init__(self, core, handler, compress=False):
        super().__init__(core, handler.baseFilename)
        self._handler = weakref.ref(handler)
        self.compress = compress

    def roll_at(self):
        return float(self._handler().rolloverAt)

    def _switch(self, reason, incoming):
        handler = self._handler()
        if reason not in ("time", "rollover") or handler is None:
            fd, _ = super()._switch(reason, incoming)
            return fd, self.roll_at() if handler is not None else 0.0
        with path_lock(self.path):
            if same_file(self.path, self.current_fd()):
                overrides = {}
                if self.compress:
                    overrides["rotate"] = self._rotate_aside
                _TimedRotatingFileHandler.doRollover(_View(handler, **overrides))
            else:
                # Another process rotated: only move our next rollover on.
                now = int(time.time())
                at = handler.computeRollover(now)
                while at <= now:
                    at += handler.interval
                handler.rolloverAt = at
            return self.install(open_append(self.path)), float(handler.rolloverAt)

    def _rotate_aside(self, source, dest):
        aside = _pending_name(source)
        os.rename(source, aside)
        compressor.submit(aside, lambda packed: os.replace(packed, dest))
