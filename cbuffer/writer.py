"""Layer 3: ConcurrentBufferedWriter, the io.RawIOBase face of the ring, and
cbuffer.open().

The class is thin Python glue over the compiled WriterCore: ``write`` and
``append`` are bound straight to the core's compiled methods on each
instance, so the per-write cost is one call into C, as for
io.BufferedWriter.
"""
import io
import os

from cbuffer._writer import WriterCore

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

    ::

        with cbuffer.open("app.log", "ab", flush_interval=0.5) as log:
            log.write(b"started\\n")          # from any number of threads
    """

    _core = None

    def __init__(self, raw, buffer_size=DEFAULT_BUFFER_SIZE, *, buffer_count=4,
                 flush_interval=None, line_buffering=False, fsync=False,
                 auto_flush=True, closefd=True):
        core = WriterCore(raw, buffer_size, buffer_count, flush_interval,
                          line_buffering, fsync, auto_flush, closefd)
        self._core = core
        # The hot path: the compiled methods themselves, no Python frame.
        self.write = core.write
        self.append = core.append

    # Reached only through the class (ConcurrentBufferedWriter.write(w, b));
    # instances use the bound compiled methods set in __init__.
    def write(self, b):
        """Write ``b`` (a contiguous bytes-like object); returns its length."""
        return self._core.write(b)

    def append(self, b):
        """Write ``b``; returns the absolute sink position of its first byte."""
        return self._core.append(b)

    def flush(self):
        """Every write that returned before this call reaches the sink (and
        is fsynced with ``fsync=True``) before it returns."""
        self._core.flush()

    def close(self):
        """Flush, stop the flusher and close ``raw`` unless ``closefd=False``.
        Idempotent; safe while other threads write (each such write lands
        whole or raises ValueError)."""
        if self._core is not None:
            self._core.close()

    @property
    def closed(self):
        return self._core is None or self._core.closed

    def clear_error(self):
        """Forget the sticky sink error; queued bytes are retried in order."""
        self._core.clear_error()

    def stats(self):
        """A dict: bytes_written, writes, flushes, syscalls, ring_full_waits,
        reservation_retries, utilization."""
        return self._core.stats()

    @property
    def raw(self):
        return self._core.raw

    @property
    def name(self):
        raw = self._core.raw
        return raw if isinstance(raw, int) else raw.name

    @property
    def mode(self):
        return getattr(self._core.raw, "mode", "wb")

    @property
    def buffer_size(self):
        return self._core.buffer_size

    @property
    def buffer_count(self):
        return self._core.buffer_count

    def fileno(self):
        self._checkClosed()
        if self._core.fd >= 0:
            return self._core.fd
        return self._core.raw.fileno()

    def isatty(self):
        self._checkClosed()
        return os.isatty(self.fileno()) if self._core.fd >= 0 else self._core.raw.isatty()

    def tell(self):
        """The logical stream position: where the next write's first byte
        would land after everything written so far."""
        return self._core.tell()

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
        try:
            name = self.name
        except AttributeError:
            return f"<cbuffer.ConcurrentBufferedWriter raw={self._core.raw!r}>"
        return f"<cbuffer.ConcurrentBufferedWriter name={name!r}>"

    def __getstate__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


def open(file, mode="wb", **writer_options):
    """open(file, mode="wb", **writer_options) -> ConcurrentBufferedWriter

    Open a path, a path-like object or an int file descriptor for writing
    through a :class:`ConcurrentBufferedWriter`.  Modes: ``"wb"`` (truncate),
    ``"ab"`` (append: positions start at the file's end), ``"xb"`` (create,
    fail if it exists).
    """
    if not isinstance(mode, str):
        raise TypeError(f"mode must be str, not {type(mode).__name__}")
    if mode not in _OPEN_FLAGS:
        raise ValueError(f"invalid mode: {mode!r} (cbuffer.open takes 'wb', 'ab' or 'xb')")
    if isinstance(file, int) and not isinstance(file, bool):
        return ConcurrentBufferedWriter(file, **writer_options)
    path = os.fspath(file)
    fd = os.open(path, _OPEN_FLAGS[mode] | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        raw = io.FileIO(fd, mode, closefd=True)
    except BaseException:
        os.close(fd)
        raise
    raw.name = path
    try:
        return ConcurrentBufferedWriter(raw, **writer_options)
    except BaseException:
        raw.close()
        raise
