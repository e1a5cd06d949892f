"""Layer 3: ConcurrentBufferedWriter, the io.RawIOBase face of the ring, and
cbuffer.open().

The class is thin Python glue over the compiled WriterCore: ``write`` and
``append`` are bound straight to the core's compiled methods on each
instance (unless a subclass overrides them), so the per-write cost is one
call into C, as for io.BufferedWriter.
"""
import io
import os
import sys
import warnings
import weakref

from cbuffer._writer import WriterCore
from cbuffer.rotation import FileTarget
from cbuffer.text import ConcurrentTextWriter

#: Default size of each buffer in the ring (bytes).  64 KiB measured best on
#: the benchmark machine across 64 B and 4 KiB records (see README.rst).
DEFAULT_BUFFER_SIZE = 64 * 1024

_OPEN_FLAGS = {
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


class ConcurrentBufferedWriter(io.RawIOBase):
    """A buffered binary writer that many threads can write at once without a
    lock; a drop-in for :class:`io.BufferedWriter` on one file, pipe or socket.

    :param raw: an int file descriptor, an :class:`io.FileIO` or a
        :class:`socket.socket` (written through its fd with ``writev``), or any
        object with a ``write()`` method (called from the flusher thread).
    :param int buffer_size: bytes per buffer, a positive multiple of 4096.
    :param int buffer_count: buffers in the ring.
    :param float flush_interval: if set, buffered bytes reach the sink within
        about this many seconds even when no buffer fills.
    :param bool line_buffering: a write containing ``b"\\n"`` returns only
        after a flush.
    :param bool fsync: ``flush()`` also fsyncs a regular file.
    :param bool auto_flush: if False nothing reaches the sink before
        ``flush()``; a write that cannot be held raises BlockingIOError.
    :param bool closefd: close ``raw`` on ``close()``.
    :param str on_full: what a write does when every buffer is waiting for
        the sink: ``"block"`` (wait, the default), ``"drop"`` (return without
        writing; ``stats()`` counts ``dropped`` and ``dropped_bytes``) or
        ``"raise"`` (``BlockingIOError``, ``characters_written == 0``).
    :param bool lazy_flush: ``flush()`` only raises a pending error and
        returns: the bytes go with the next ``flush_interval`` (default 1 s
        here) or a full buffer.  For libraries that flush after every record
        (loguru, structlog): it keeps the batching.  ``close()`` and exit
        still hand everything over.
    :param int lanes: open buffers that threads' ``write()`` calls fill
        without sharing a cache line (each thread keeps one); their bytes
        join the stream when a lane fills, on ``flush()``, every
        ``flush_interval``, on ``close()``, and before the same thread's
        ``append()`` or large write.  Default: 8 on a
        free-threaded build, 0 (every write goes straight to the ring) with
        the GIL.

    ::

        with cbuffer.open("app.log", "ab", flush_interval=0.5) as log:
            log.write(b"started\\n")          # from any number of threads
    """

    _core = None

    def __init__(self, raw, buffer_size=DEFAULT_BUFFER_SIZE, *, buffer_count=4,
                 flush_interval=None, line_buffering=False, fsync=False,
                 auto_flush=True, closefd=True, on_full="block", lanes=None, lazy_flush=False):
        if self._core is not None:
            # Initialised again: until that succeeds the object is unusable,
            # as io's are (the old core flushes when it is dropped).
            for name in ("write", "append", "flush"):
                self.__dict__.pop(name, None)
            self._core = None
        core = WriterCore(raw, buffer_size, buffer_count, flush_interval,
                          line_buffering, fsync, auto_flush, closefd, on_full, lanes,
                          lazy_flush)
        self._core = core
        # The hot path: the compiled methods themselves, no Python frame --
        # unless a subclass overrides them, as io classes honour overrides.
        cls = type(self)
        if cls.write is ConcurrentBufferedWriter.write:
            self.write = core.write
        if cls.append is ConcurrentBufferedWriter.append:
            self.append = core.append
        if cls.flush is ConcurrentBufferedWriter.flush:
            self.flush = core.flush

    def _c(self):
        core = self._core
        if core is None:
            raise ValueError("I/O operation on uninitialized object")
        return core

    def write(self, b):
        """Write ``b`` (a contiguous bytes-like object); returns its length."""
        return self._c().write(b)

    def append(self, b):
        """Write ``b``; returns the absolute sink position of its first byte."""
        return self._c().append(b)

    def flush(self):
        """Every write that returned before this call reaches the sink (and
        is fsynced with ``fsync=True``) before it returns."""
        self._c().flush()

    def close(self):
        """Flush (through ``self.flush()``), stop the flusher and close
        ``raw`` unless ``closefd=False``, even when the flush failed.
        Idempotent; safe while other threads write (each such write lands
        whole or raises ValueError); a close racing another returns when that
        one has finished."""
        core = self._core
        if core is None or not core._begin_close():
            return
        try:
            flush_error = None
            try:
                self.flush()
            except Exception as exc:
                if core._interrupted_by(exc):
                    raise  # a signal handler's: close() stays resumable, as with Ctrl-C
                flush_error = exc
            core._finish_close(flush_error)
        finally:
            core._end_close()

    def __del__(self, _finalizing=sys.is_finalizing,
                _report=sys.flags.dev_mode or sys.version_info >= (3, 13)):
        # (Module globals may be gone by now: what is needed is bound here.)
        core = self._core
        if core is None or core.closed:
            return
        if _finalizing():
            # The exit flush has run; the core hands over what came after
            # when it is freed, and the OS closes the fd.
            return
        try:
            self._dealloc_warn(self)
        finally:
            try:
                self.close()
            except Exception:
                if _report:  # as io: reported from 3.13 on, before only in development mode
                    raise

    def _dealloc_warn(self, source):
        """io's protocol for a stream dropped unclosed: one that owns an OS
        file warns (ResourceWarning), naming ``source``, the outermost stream
        (a text writer over this one passes itself); a raw that owns one is
        asked to."""
        core = self._core
        if core is None or core.closed or not core.closefd:
            return
        if core.fd >= 0:
            warnings.warn(f"unclosed file {source!r}", ResourceWarning, stacklevel=3, source=source)
            return
        dealloc_warn = getattr(core.raw, "_dealloc_warn", None)
        if dealloc_warn is not None:
            dealloc_warn(source)

    @property
    def closed(self):
        return self._c().closed

    def clear_error(self):
        """Forget the sticky sink error; queued bytes are retried in order."""
        self._c().clear_error()

    def reopen(self):
        """Open the path again before the next batch is written (for
        logrotate's ``create`` mode: call it from a SIGHUP handler).  Only for
        a writer opened from a path (:func:`cbuffer.open`); it only sets a
        flag, so it is safe from a signal handler."""
        self._c().reopen()

    def stats(self):
        """A dict: bytes_written, writes, flushes, syscalls, ring_full_waits,
        reservation_retries, utilization, file_switches (reopens and
        rotations), dropped and dropped_bytes (``on_full="drop"``)."""
        return self._c().stats()

    @property
    def raw(self):
        return self._c().raw

    @property
    def name(self):
        raw = self._c().raw
        return raw if isinstance(raw, int) else raw.name

    @property
    def mode(self):
        return getattr(self._c().raw, "mode", "wb")

    @property
    def buffer_size(self):
        return self._c().buffer_size

    @property
    def buffer_count(self):
        return self._c().buffer_count

    def fileno(self):
        core = self._c()
        self._checkClosed()
        if core.fd >= 0:
            return core.fd
        fileno = getattr(core.raw, "fileno", None)
        if fileno is None:
            raise io.UnsupportedOperation("fileno")
        return fileno()

    def isatty(self):
        core = self._c()
        self._checkClosed()
        if core.fd >= 0:
            return os.isatty(core.fd)
        isatty = getattr(core.raw, "isatty", None)
        return bool(isatty()) if isatty is not None else False

    def tell(self):
        """The logical stream position: where the next write's first byte
        would land after everything written so far."""
        return self._c().tell()

    def writable(self):
        self._checkClosed()
        return True

    def readable(self):
        self._checkClosed()
        return False

    def seekable(self):
        self._checkClosed()
        return False

    def read(self, size=-1):
        raise io.UnsupportedOperation("read")

    def readall(self):
        raise io.UnsupportedOperation("read")

    def readinto(self, b):
        raise io.UnsupportedOperation("readinto")

    def seek(self, pos, whence=0):
        raise io.UnsupportedOperation("seek")

    def truncate(self, pos=None):
        raise io.UnsupportedOperation("truncate")

    def __repr__(self):
        cls = type(self)
        what = f"{cls.__module__}.{cls.__qualname__}"
        if self._core is None:
            return f"<{what} (uninitialized)>"
        if self in _repr_running:
            raise RuntimeError(f"reentrant call inside {what}.__repr__")
        _repr_running.add(self)
        try:
            try:
                name = self.name
            except (AttributeError, ValueError):
                return f"<{what}>"
            return f"<{what} name={name!r}>"
        finally:
            _repr_running.discard(self)

    def __getstate__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


# Writers whose repr is being computed (a raw's name may refer back to them).
_repr_running = weakref.WeakSet()


_TEXT_MODES = {"w": "wb", "a": "ab", "x": "xb", "wt": "wb", "at": "ab", "xt": "xb"}


def open(file, mode="wb", *, encoding=None, errors=None, newline=None, line_buffering=None,
         write_through=False, **writer_options):
    """open(file, mode="wb", **writer_options) -> ConcurrentBufferedWriter
    open(file, "w", encoding=None, errors=None, newline=None, **writer_options) -> ConcurrentTextWriter

    Open a path, a path-like object or an int file descriptor for writing
    through a :class:`ConcurrentBufferedWriter`.  Binary modes: ``"wb"``
    (truncate), ``"ab"`` (append: positions start at the file's end),
    ``"xb"`` (create, fail if it exists).  Text modes ``"w"``, ``"a"`` and
    ``"x"`` return a :class:`~cbuffer.text.ConcurrentTextWriter` over it, whose
    lines land whole whatever the number of threads; ``line_buffering``
    defaults to whether the file is a terminal, as for ``open()``.
    ``cbuffer.open(1, "w", closefd=False)`` is a thread-safe ``sys.stdout``.
    """
    if not isinstance(mode, str):
        raise TypeError(f"mode must be str, not {type(mode).__name__}")
    text = mode in _TEXT_MODES
    if text and hasattr(io, "text_encoding"):  # an EncodingWarning points at open()'s caller
        encoding = io.text_encoding(encoding, 2)
    if not text:
        if mode not in _OPEN_FLAGS:
            raise ValueError(f"invalid mode: {mode!r} (cbuffer.open takes 'wb', 'ab', 'xb', "
                             "'w', 'a' or 'x')")
        for name, value in (("encoding", encoding), ("errors", errors), ("newline", newline)):
            if value is not None:
                raise ValueError(f"binary mode doesn't take an {name} argument")
        if line_buffering is not None:
            writer_options["line_buffering"] = line_buffering
        if write_through:
            raise ValueError("binary mode doesn't take a write_through argument")
    binary_mode = _TEXT_MODES.get(mode, mode)
    if isinstance(file, int) and not isinstance(file, bool):
        writer = ConcurrentBufferedWriter(file, **writer_options)
    else:
        path = os.fspath(file)
        fd = os.open(path, _OPEN_FLAGS[binary_mode] | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            raw = io.FileIO(fd, binary_mode, closefd=True)
        except BaseException:
            os.close(fd)
            raise
        raw.name = path
        try:
            writer = ConcurrentBufferedWriter(raw, **writer_options)
        except BaseException:
            raw.close()
            raise
        # The sink knows the path from now on, so reopen() works (rotating
        # handlers put a policy of their own in its place).
        FileTarget(writer._core, path).attach()
    if not text:
        return writer
    try:
        if line_buffering is None:
            line_buffering = writer.isatty()
        text_writer = ConcurrentTextWriter(writer, encoding, errors, newline, line_buffering,
                                           write_through)
        text_writer._mode = mode
        return text_writer
    except BaseException:
        writer.close()
        raise
