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


def hold(fd):
    """Mark the file open at ``fd`` as one this process writes: a shared
    ``flock`` on it, released when the fd is closed.  The compressor takes a
    rotated file only when it can lock it exclusively, so never while a
    process (which may not have noticed the rotation yet) can still append a
    batch to it."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)


def open_append(path):
    """The file at ``path`` for appending (created if missing), as the
    FileIO a writer's ``raw`` is."""
    fd = os.open(path, APPEND, 0o666)
    hold(fd)
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
        self._core = weakref.ref(core) if core is not None else type(None)
        self._orphans = []  # files opened after the writer went away

    def attach(self, limit=0, roll_at=0.0):
        core = self._core()
        hold(core.fd)
        core._attach_file(self, self.path, limit, roll_at, self.watch)

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
    close and ``delay`` set, so it renames and nothing else (``overrides``
    replace other attributes); what it sets (``rolloverAt``) lands on the
    handler."""

    def __init__(self, handler, **overrides):
        object.__setattr__(self, "_handler", handler)
        object.__setattr__(self, "_overrides", {"stream": None, "delay": True, **overrides})

    def __getattr__(self, name):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_handler"), name)

    def __setattr__(self, name, value):
        setattr(object.__getattribute__(self, "_handler"), name, value)


class _Compressor:
    """One background thread per process gzips rotated files in place, so
    neither a writer nor the flusher ever waits for it: ``name`` becomes
    ``name.gz``, written under a temporary name and renamed when complete.
    The file is found again by its inode under the path lock (a later
    rotation may have renamed it meanwhile).  The thread leaves when idle,
    and before fork(), so no cbuffer thread is alive across one."""

    IDLE = 0.5  # seconds without work before the thread leaves

    def __init__(self):
        self._queue = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()
        self._pending = 0
        self._keys = set()  # queued or in hand: a sweep must not queue them again
        self._idle = threading.Condition(self._lock)

    def submit(self, target, name):
        """Compress the backup of ``target``'s path now called ``name`` soon
        (found again by its inode, whatever it is called by then)."""
        key = _inode_of(name)
        if key is None:
            return
        with self._lock:
            if key in self._keys:
                return
            self._keys.add(key)
            self._pending += 1
            self._queue.put((target, key))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cbuffer-gzip", daemon=True)
                self._thread.start()

    def _run(self):
        while True:
            try:
                target, key = self._queue.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if target is None:  # stop (before fork): the queue stays for later
                with self._lock:
                    self._thread = None
                return
            try:
                target.compress_backup(key)
            except Exception:  # the uncompressed file stays: nothing is lost
                logging.getLogger("cbuffer").exception("compressing a backup of %s failed",
                                                       target.path)
            finally:
                with self._lock:
                    self._keys.discard(key)
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def wait(self, timeout=None):
        """Wait until everything submitted is compressed (tests, close())."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def before_fork(self):
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            # Stop after the file in hand (bounded: a fork must not hang).
            items = []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._queue.put((None, None))
            thread.join(2.0)
            for item in items:
                self._queue.put(item)

    def after_fork_in_parent(self):
        with self._lock:
            if self._pending and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="cbuffer-gzip", daemon=True)
                self._thread.start()

    def after_fork_in_child(self):
        # The parent compresses what it rotated.
        self._queue = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()
        self._pending = 0
        self._keys = set()
        self._idle = threading.Condition(self._lock)


compressor = _Compressor()


def compress_leftovers(policy, timeout=5.0):
    """At a handler's close: queue every backup not compressed yet (this
    process's and other processes' leftovers) and wait for them.  The
    compressor tries a file once per queueing and leaves it while a writer
    still holds it, and a queueing is skipped while the same file is in
    hand; so queue again, three rounds within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(3):
        policy.sweep()
        if not compressor.wait(max(0.0, deadline - time.monotonic())):
            return
os.register_at_fork(before=compressor.before_fork, after_in_parent=compressor.after_fork_in_parent,
                    after_in_child=compressor.after_fork_in_child)
_names = itertools.count()


def _gzip_in_place(path, key, find):
    """Compress the backup with inode ``key`` into ``<its name>.gz``.
    ``find(key)`` names it (under the path lock: a later rotation may rename
    it meanwhile); the ``.gz`` is written under a temporary name and appears
    only complete."""
    with path_lock(path):
        name = find(key)
        if name is None:
            return  # deleted (retention) or compressed by another process
        src = open(name, "rb")
        try:
            fcntl.flock(src.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # A process still holds it as its file and may append a batch:
            # the next sweep (a rotation, a handler's close) tries again.
            src.close()
            return
        except BaseException:
            src.close()
            raise
    with src:
        part = f"{path}.{os.getpid()}-{next(_names)}.gz-part"
        try:
            with gzip.open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            with path_lock(path):
                now = find(key)
                if now is None:
                    os.remove(part)  # gone meanwhile: nothing to keep
                    return
                os.replace(part, now + ".gz")
                os.remove(now)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(part)
            raise


def _inode_of(name):
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_dev


class SizeRotation(FileTarget):
    """Rotation by size, as ``logging.handlers.RotatingFileHandler`` names
    and keeps files: a batch that would bring the file to ``maxBytes`` goes
    to a fresh one.  With ``compress`` the backups are ``<path>.N.gz``: the
    newest is ``<path>.1`` until the background thread has compressed it."""

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
                    if self.compress:
                        self._rotate_compressed(handler)
                    else:
                        _RotatingFileHandler.doRollover(_View(handler))
            fd = self.install(open_append(self.path))
        if self.compress:
            self.sweep()  # now that this process no longer holds the old file
        return fd, 0.0

    def _names(self, i):
        return (f"{self.path}.{i}", f"{self.path}.{i}.gz")

    def _rotate_compressed(self, handler):
        # doRollover's renames for backups that are .N while waiting for the
        # compressor and .N.gz after: either name moves up one.
        n = handler.backupCount
        for name in self._names(n):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
        for i in range(n - 1, 0, -1):
            for src, dst in zip(self._names(i), self._names(i + 1)):
                if os.path.exists(src):
                    os.replace(src, dst)
        os.rename(self.path, self._names(1)[0])

    def _plain_backups(self):
        handler = self._handler()
        count = handler.backupCount if handler is not None else 0
        return [self._names(i)[0] for i in range(1, count + 1)]

    def sweep(self):
        """Queue every backup not compressed yet (the one just rotated, and
        any another process left behind when it ended)."""
        for name in self._plain_backups():
            if os.path.exists(name):
                compressor.submit(self, name)

    def compress_backup(self, key):
        def find(key):
            for name in self._plain_backups():
                if _inode_of(name) == key:
                    return name
            return None

        _gzip_in_place(self.path, key, find)


def _advance(handler):
    """Move ``rolloverAt`` past now, as doRollover does (3.13's returns early
    when another process rotated already, leaving it behind)."""
    now = int(time.time())
    at = handler.rolloverAt
    if at <= now:
        at = handler.computeRollover(now)
        while at <= now:
            at += handler.interval
        handler.rolloverAt = at
    return float(handler.rolloverAt)


class TimedRotation(FileTarget):
    """Rotation by time, as ``logging.handlers.TimedRotatingFileHandler``
    names and keeps files: the first batch at or after the rollover time goes
    to a fresh file.  With ``compress`` each rotated file is gzipped in the
    background (``<name>.gz``)."""

    watch = True

    def __init__(self, core, handler, compress=False):
        super().__init__(core, handler.baseFilename)
        self._handler = weakref.ref(handler)
        self.compress = compress

    def roll_at(self):
        return float(self._handler().rolloverAt)

    def _switch(self, reason, incoming):
        handler = self._handler()
        if handler is None:
            return super()._switch(reason, incoming)
        if reason not in ("time", "rollover"):
            # Reopened (or another process rotated): our next rollover moves
            # on too, or this process would rotate the new file again.
            fd, _ = super()._switch(reason, incoming)
            return fd, _advance(handler)
        with path_lock(self.path):
            if reason == "rollover" or same_file(self.path, self.current_fd()):
                overrides = {"rotate": self._rotate_and_compress,
                             "getFilesToDelete": self._files_to_delete} if self.compress else {}
                _TimedRotatingFileHandler.doRollover(_View(handler, **overrides))
            fd = self.install(open_append(self.path))
        if self.compress:
            self.sweep()  # now that this process no longer holds the old file
        return fd, _advance(handler)

    def _rotate_and_compress(self, source, dest):
        # dest is the name of the finished .gz: the file waits beside it,
        # uncompressed, until the compressor has written that.
        plain = dest[:-3] if dest.endswith(".gz") else dest
        os.rename(source, plain)

    def _files_to_delete(self):
        # Retention counts the rotated files still waiting for the compressor
        # as well as the .gz files (3.12+ matches only namer's names).
        handler = self._handler()
        every = _TimedRotatingFileHandler.getFilesToDelete(_View(handler, backupCount=0))
        names = sorted(set(every) | set(handler._rotated_files()),
                       key=lambda n: n[:-3] if n.endswith(".gz") else n)
        return names[:max(0, len(names) - handler.backupCount)]

    def sweep(self):
        """Queue every rotated file not compressed yet (also those another
        process left behind when it ended)."""
        handler = self._handler()
        if handler is None:
            return
        for name in handler._rotated_files():
            compressor.submit(self, name)

    def compress_backup(self, key):
        handler = self._handler()

        def find(key):
            if handler is None:
                return None
            for name in handler._rotated_files():
                if _inode_of(name) == key:
                    return name
            return None

        _gzip_in_place(self.path, key, find)
