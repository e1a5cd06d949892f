# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Layer 3, compiled part: the write path of ConcurrentBufferedWriter.

``WriterCore`` is a BufferRing that knows its raw stream.  Its ``write`` is
what ``ConcurrentBufferedWriter.write`` is bound to, so a write costs one call
into compiled code: check closed, reserve with one CAS, memcpy, leave.  The
GIL is kept for small copies (releasing it costs more than the copy) and
released for large ones and for every wait.

Writes larger than a buffer are not copied: they seal the open buffer with
the caller's bytes hung on as its tail, and the writer waits (without the
GIL) until the flusher handed them to the sink, as io.BufferedWriter does for
its direct writes.
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t
from libc.string cimport memchr

from cbuffer._ring cimport (
    SIGNAL_CHECK, BufferRing, RING_ERROR, RING_OK, RING_WOULD_BLOCK, cb_ring,
    ring_detach_tail, ring_direct, ring_await, ring_lock_dispatch, ring_owned_by_me,
)
from cbuffer._state cimport cb_mutex_unlock, cb_store_relaxed


cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident() nogil

import errno
import io
import os
import socket
import stat
import sys

from cbuffer._ring import EXIT_WAIT, _check_geometry


cdef object _closed_error():
    return ValueError("write to closed file")


def _start_position(raw, int fd):
    """Where the sink's first byte lands: the fd's offset (its end when it
    appends), raw.tell() for a seekable object, else 0."""
    if fd >= 0:
        try:
            import fcntl
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
                return os.lseek(fd, 0, os.SEEK_END)
            return os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            return 0  # pipes and sockets do not seek
    try:
        if raw.seekable():
            return raw.tell()
    except (AttributeError, OSError, ValueError):
        pass
    return 0


cdef class WriterCore(BufferRing):
    """The compiled half of :class:`cbuffer.ConcurrentBufferedWriter`."""

    cdef readonly object raw        # what the caller passed
    cdef readonly int fd            # the fd written with writev, or -1
    cdef readonly bint closefd
    cdef readonly bint line_buffering
    cdef readonly bint fsync
    cdef readonly object flush_interval
    cdef bint _closed               # close() has begun: writes raise
    cdef bint _close_done           # close() has finished
    cdef cython.pymutex _close_lock

    def __init__(self, raw, buffer_size, buffer_count=4, flush_interval=None,
                 line_buffering=False, fsync=False, auto_flush=True, closefd=True):
        _check_geometry(buffer_count, buffer_size)
        interval = 0.0
        if flush_interval is not None:
            if isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float)):
                raise TypeError(
                    f"flush_interval must be a number of seconds or None, "
                    f"not {type(flush_interval).__name__}")
            if not flush_interval > 0:
                raise ValueError(f"flush_interval must be > 0, got {flush_interval!r}")
            if not auto_flush:
                raise ValueError("flush_interval needs auto_flush=True")
            interval = float(flush_interval)

        cdef int fd = -1
        sink = None
        if isinstance(raw, bool):
            raise TypeError("raw must be a file descriptor, a file, a socket or an object "
                            "with a write() method, not bool")
        if isinstance(raw, int):
            if raw < 0:
                raise ValueError(f"negative file descriptor: {raw}")
            os.fstat(raw)  # EBADF now, not at the first flush
            fd = raw
        elif isinstance(raw, (io.FileIO, socket.socket)):
            if raw.fileno() < 0:
                raise ValueError("raw is closed")
            fd = raw.fileno()
        elif callable(getattr(raw, "write", None)):
            if getattr(raw, "closed", False) is True:
                raise ValueError("raw is closed")
            sink = raw.write
        else:
            raise TypeError(
                "raw must be a file descriptor, a file, a socket or an object with a "
                f"write() method, not {type(raw).__name__}")

        sync = False
        if fsync and fd >= 0:
            sync = stat.S_ISREG(os.fstat(fd).st_mode)  # pipes and sockets: no-op
        self._setup(buffer_count, buffer_size, fd, sink, bool(auto_flush), True,
                    _start_position(raw, fd), sync, interval)
        self.raw = raw
        self.fd = fd
        self.closefd = bool(closefd)
        self.line_buffering = bool(line_buffering)
        self.fsync = bool(fsync)
        self.flush_interval = flush_interval
        self._closed = False
        self._close_done = False

    # -- the write path

    cdef int _put(self, const char *src, Py_ssize_t n, uint64_t *pos) except -1:
        cdef cb_ring *r = self.ring
        cdef int st
        if self._closed:
            raise _closed_error()
        if not self._started and r.auto_flush:
            self._start_flusher()
        if <uint64_t>n > r.size:
            return self._put_direct(src, n, pos)
        st = self._put_small(src, n, pos, r.auto_flush)
        if st == RING_OK:
            return 0
        if st == RING_WOULD_BLOCK:
            raise BlockingIOError(errno.EAGAIN, "every buffer is sealed and waiting "
                                  "for flush() (auto_flush=False)", 0)
        return self._raise_status(st, n)

    cdef int _put_direct(self, const char *src, Py_ssize_t n, uint64_t *pos) except -1:
        """A write larger than a buffer: handed over without a copy, in order."""
        cdef cb_ring *r = self.ring
        cdef uint64_t gen = 0
        cdef int st
        if not r.auto_flush:
            raise BlockingIOError(errno.EAGAIN, f"a write of {n} bytes is larger than a "
                                  "buffer and cannot be held until flush() (auto_flush=False)", 0)
        while True:
            with nogil:
                st = ring_direct(r, src, n, pos, &gen, SIGNAL_CHECK)
            if st != RING_WOULD_BLOCK:
                break
            if ring_owned_by_me(r):
                raise RuntimeError("reentrant write: the ring is full while this thread is "
                                   "handing it to the sink (a signal handler writing?)")
            PyErr_CheckSignals()
        if st != RING_OK:
            return self._raise_status(st, n)
        # The bytes are accepted; stay until the sink has them, since they are
        # the caller's.  If we must leave early they get a copy of their own.
        try:
            while not ring_owned_by_me(r):  # (else it cannot be dispatched before we return)
                with nogil:
                    st = ring_await(r, gen + 1, SIGNAL_CHECK)
                if st == RING_OK:
                    return 0
                if st == RING_ERROR:
                    break  # stays queued; the next call raises the error
                PyErr_CheckSignals()
        except BaseException:
            self._detach(gen)
            raise
        self._detach(gen)
        return 0

    cdef int _detach(self, uint64_t gen) except -1:
        cdef int rc
        with nogil:
            rc = ring_detach_tail(self.ring, gen)
        if rc != 0:
            raise MemoryError("cannot copy a pending large write")
        return 0

    def write(self, b):
        """write(b) -> int

        Write ``b`` (any contiguous bytes-like object) and return its length
        in bytes.  Thread-safe and lock-free.
        """
        cdef Py_buffer view
        cdef uint64_t pos
        cdef Py_ssize_t n
        if PyBytes_CheckExact(b):
            n = PyBytes_GET_SIZE(b)
            self._put(PyBytes_AS_STRING(b), n, &pos)
            if self.line_buffering and memchr(PyBytes_AS_STRING(b), 10, n) != NULL:
                self._flush_all()
            return n
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE)
        try:
            self._put(<const char *>view.buf, view.len, &pos)
            if self.line_buffering and memchr(view.buf, 10, view.len) != NULL:
                self._flush_all()
            return view.len
        finally:
            PyBuffer_Release(&view)

    def append(self, b):
        """append(b) -> int

        Write ``b`` and return the absolute position in the sink where its
        first byte lands.
        """
        cdef Py_buffer view
        cdef uint64_t pos = 0
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE)
        try:
            self._put(<const char *>view.buf, view.len, &pos)
            if self.line_buffering and memchr(view.buf, 10, view.len) != NULL:
                self._flush_all()
        finally:
            PyBuffer_Release(&view)
        return pos

    # -- flushing

    cdef int _flush_all(self) except -1:
        if self._closed:
            raise ValueError("flush of closed file")
        self._flush()
        self._flush_raw()
        return 0

    cdef int _flush_raw(self) except -1:
        """Push a Python raw's own buffer on (and fsync it when asked), under
        the dispatch mutex so it never runs beside the flusher's raw.write."""
        if self.fd >= 0 or self.ring.sink == NULL:
            return 0
        if ring_owned_by_me(self.ring):
            return 0  # a signal handler that interrupted this thread's dispatch
        cdef double max_wait = EXIT_WAIT if sys.is_finalizing() else -1.0
        cdef bint locked
        with nogil:
            locked = ring_lock_dispatch(self.ring, max_wait)
        if not locked:
            return 0  # at exit, held by a daemon thread the interpreter stopped
        cb_store_relaxed(&self.ring.py_owner, PyThread_get_thread_ident())
        try:
            flush = getattr(self.raw, "flush", None)
            if flush is not None:
                flush()
            if self.fsync:
                try:
                    fileno = self.raw.fileno()
                except (AttributeError, OSError, ValueError):
                    fileno = -1
                if fileno >= 0 and stat.S_ISREG(os.fstat(fileno).st_mode):
                    os.fsync(fileno)
        finally:
            cb_store_relaxed(&self.ring.py_owner, 0)
            cb_mutex_unlock(&self.ring.dispatch_mu)
        return 0

    def flush(self):
        """Hand every write that returned before this call to the sink (and
        fsync it with ``fsync=True``); raise the sticky error if one is set."""
        self._flush_all()

    # -- closing

    def close(self):
        """Flush, stop the flusher and close raw (unless closefd=False).
        Idempotent.  Raises the sticky error, if any, after closing raw."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        flush_error = None
        try:
            try:
                BufferRing.close(self)
            finally:
                self._flush_raw()
        except BaseException as exc:
            flush_error = exc
        try:
            if self.closefd:
                if isinstance(self.raw, int):
                    os.close(self.raw)
                else:
                    self.raw.close()
        except BaseException as exc:
            if flush_error is not None:
                exc.__context__ = flush_error
            raise
        finally:
            self._close_done = True
        if flush_error is not None:
            raise flush_error

    @property
    def closed(self):
        return self._closed

    def tell(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return BufferRing.tell(self)
