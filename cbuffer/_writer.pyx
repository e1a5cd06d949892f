# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Layer 3, compiled part: the write path of ConcurrentBufferedWriter.

``WriterCore`` is a BufferRing that knows its raw stream.  Its ``write`` is
what ``ConcurrentBufferedWriter.write`` is bound to, so a write costs one call
into compiled code: check closed, reserve with one CAS, memcpy, leave.  The
GIL is kept for small copies (releasing it costs more than the copy) and
released for large ones and for every wait.

``flush()`` runs on the caller's thread: it writes the finished bytes of the
open buffer (and any sealed ones) to the sink itself, with the GIL released
around the system call, or joins a dispatch already under way.

Writes larger than a buffer are not copied: they seal the open buffer with
the caller's bytes hung on as its tail, and the writer hands them to the sink
itself before it returns, as io.BufferedWriter does for its direct writes.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcpy

from cbuffer._ring cimport (
    RING_ERROR, RING_OK, RING_OWNED, RING_SHUT, RING_WOULD_BLOCK, SIGNAL_CHECK, SYNC_NONE,
    SYNC_RAW,
    BufferRing, cb_ring, ring_detach_tail, ring_direct, ring_flush_to, ring_owned_by_me,
    ring_position,
)
from cbuffer._ring cimport lane_clear, lane_write, ring_lock_dispatch, ring_set_lanes, ring_tell
from cbuffer._sink cimport (
    sink_clear_file, sink_init_fd, sink_init_file, sink_init_pipe, sink_init_python,
)
from cbuffer._state cimport (
    cb_fetch_add_relaxed, cb_load_acquire, cb_load_relaxed, cb_mutex_unlock, cb_store_release,
)

import errno
import fcntl
import io
import os
import socket
import stat
import sys
import time

from cbuffer._ring import _check_geometry, _register


cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()


cdef enum:
    ON_FULL_BLOCK = 0
    ON_FULL_DROP = 1
    ON_FULL_RAISE = 2

_ON_FULL = {"block": ON_FULL_BLOCK, "drop": ON_FULL_DROP, "raise": ON_FULL_RAISE}


def _lanes(lanes, auto_flush, on_full):
    """How many lanes a writer gets: by default 8 where threads really run
    at once (free-threaded builds with 2 CPUs or more: more lanes than CPUs,
    so that threads seldom share one), none with the GIL; none when writes
    must not wait (auto_flush=False, on_full not "block")."""
    if lanes is None:
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        lanes = 0 if gil or (os.cpu_count() or 1) < 2 else 8
    elif isinstance(lanes, bool) or not isinstance(lanes, int):
        raise TypeError(f"lanes must be an int or None, not {type(lanes).__name__}")
    elif lanes < 0 or lanes > 256:
        raise ValueError(f"lanes must be between 0 and 256, got {lanes}")
    if not auto_flush or on_full != "block":
        return 0
    return lanes


cdef object _closed_error():
    return ValueError("write to closed file")


def _start_position(raw, int fd):
    """Where the sink's first byte lands: the fd's offset (its end when it
    appends), raw.tell() for a seekable object, else 0 (a raw that reports a
    negative position is treated as unseekable)."""
    pos = 0
    if fd >= 0:
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
                pos = os.lseek(fd, 0, os.SEEK_END)
            else:
                pos = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            return 0  # pipes and sockets do not seek
    else:
        try:
            if raw.seekable():
                pos = raw.tell()
        except (AttributeError, OSError, ValueError):
            return 0
    if not isinstance(pos, int) or pos < 0 or pos >= 1 << 63:
        return 0
    return pos


def _poll_fd(raw):
    """The fd to wait on when a Python raw would block, or -1."""
    try:
        fd = raw.fileno()
    except (AttributeError, OSError, ValueError):
        return -1
    return fd if isinstance(fd, int) and fd >= 0 else -1


cdef class WriterCore(BufferRing):
    """The compiled half of :class:`cbuffer.ConcurrentBufferedWriter`."""

    cdef readonly object raw        # what the caller passed (a file sink: the current file)
    cdef readonly bint closefd
    cdef readonly bint line_buffering
    cdef readonly bint fsync
    cdef readonly object flush_interval
    cdef readonly object on_full
    cdef readonly bint lazy_flush
    cdef int _on_full               # ON_FULL_BLOCK, ON_FULL_DROP or ON_FULL_RAISE

    def __init__(self, raw, buffer_size, buffer_count=4, flush_interval=None,
                 line_buffering=False, fsync=False, auto_flush=True, closefd=True,
                 on_full="block", lanes=None, lazy_flush=False):
        _check_geometry(buffer_count, buffer_size)
        lanes = _lanes(lanes, auto_flush, on_full)
        if lazy_flush:
            if not auto_flush:
                raise ValueError("lazy_flush needs auto_flush=True")
            if flush_interval is None:
                flush_interval = 1.0  # lazily flushed bytes still go within a second
        if on_full not in _ON_FULL:
            raise ValueError(f"on_full must be 'block', 'drop' or 'raise', not {on_full!r}")
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
        write = None
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
            write = raw.write
        else:
            raise TypeError(
                "raw must be a file descriptor, a file, a socket or an object with a "
                f"write() method, not {type(raw).__name__}")

        start = _start_position(raw, fd)
        self._setup(buffer_count, buffer_size, bool(auto_flush), True, start, interval)
        ring_set_lanes(self.ring, lanes, max(4096, min(16384, buffer_size // 4 // 4096 * 4096)))
        if fd >= 0:
            mode = os.fstat(fd).st_mode
            if stat.S_ISFIFO(mode):
                # Processes sharing a pipe (workers' stdout): whole lines, at
                # most PIPE_BUF bytes per write(2), never interleaved.
                sink_init_pipe(&self.ring.sink, fd)
            else:
                # fsync is for regular files; on sockets it is a no-op.
                sink_init_fd(&self.ring.sink, fd, bool(fsync) and stat.S_ISREG(mode))
        else:
            sink_init_python(&self.ring.sink, write, raw, isinstance(raw, io.RawIOBase),
                             _poll_fd(raw), bool(fsync))
        self.raw = raw
        self.closefd = bool(closefd)
        self.line_buffering = bool(line_buffering)
        self.fsync = bool(fsync)
        self.flush_interval = flush_interval
        self._on_full = _ON_FULL[on_full]
        self.on_full = on_full
        self.lazy_flush = bool(lazy_flush)
        _register(self)

    # -- the write path

    cdef int _put(self, const char *src, Py_ssize_t n, uint64_t *pos, bint sequenced) except -1:
        cdef cb_ring *r = self.ring
        cdef int st
        if self._close_state:
            self._closing_write()
        if n == 0:
            return 0  # nothing to take, nothing to wait for
        if not cb_load_relaxed(&r.running) and r.auto_flush:
            self._start_flusher()
        if r.nlanes:
            # Small writes only: a lane costs a second copy, which for a
            # large write outweighs the shared cache line it saves.
            if not sequenced and <uint64_t>n <= r.lane_size // 8:
                return self._put_lane(src, n)
            if not lane_clear(r):
                self._move_lanes(False, -1.0)  # this thread's earlier writes go first
        if <uint64_t>n > r.size:
            if self._on_full != ON_FULL_BLOCK:
                return self._put_queued(src, n, pos)
            return self._put_direct(src, n, pos)
        while True:
            st = self._put_small(src, n, pos, r.auto_flush and self._on_full == ON_FULL_BLOCK)
            if st == RING_OK:
                return 0
            if st == RING_WOULD_BLOCK:
                return self._full(n)
            if not self._raise_status(st, n):
                return 0

    cdef int _put_lane(self, const char *src, Py_ssize_t n) except -1:
        """A write into this thread's lane (no position needed)."""
        cdef cb_ring *r = self.ring
        cdef int st = lane_write(r, src, n, 0)
        while st != RING_OK:
            if st == RING_WOULD_BLOCK:
                self._signals()
            elif st == RING_ERROR:
                self._raise_error()  # (or it was cleared meanwhile: try again)
            elif st == RING_SHUT:
                raise _closed_error()
            else:
                return self._raise_status(st, n)
            with nogil:
                st = lane_write(r, src, n, SIGNAL_CHECK)
        return 0

    cdef int _full(self, Py_ssize_t n) except -1:
        """The ring cannot take n bytes now: drop them or raise, nothing written."""
        if self._on_full == ON_FULL_DROP:
            cb_fetch_add_relaxed(&self.ring.st_dropped, 1)
            cb_fetch_add_relaxed(&self.ring.st_dropped_bytes, <uint64_t>n)
            return 0
        if self.ring.auto_flush:
            raise BlockingIOError(errno.EAGAIN, "every buffer is waiting for the sink "
                                  "(on_full='raise')", 0)
        raise BlockingIOError(errno.EAGAIN, "every buffer is sealed and waiting "
                              "for flush() (auto_flush=False)", 0)

    cdef int _put_queued(self, const char *src, Py_ssize_t n, uint64_t *pos) except -1:
        """A write larger than a buffer that must not wait (on_full='drop' or
        'raise'): a copy of it is queued behind the open buffer, if one is
        open; else it is dropped or refused like any write that finds the
        ring full."""
        cdef cb_ring *r = self.ring
        cdef uint64_t gen = 0
        cdef int st
        cdef char *copy
        if not r.auto_flush:
            return self._full(n)
        copy = <char *>malloc(n)
        if copy == NULL:
            raise MemoryError(f"cannot copy a write of {n} bytes")
        memcpy(copy, src, n)
        while True:
            with nogil:
                st = ring_direct(r, copy, n, pos, &gen, False, 0)
            if st == RING_OK:
                return 0
            if st == RING_ERROR:
                try:
                    self._raise_error()
                except BaseException:
                    free(copy)
                    raise
                continue
            free(copy)
            if st == RING_WOULD_BLOCK:
                return self._full(n)
            return self._raise_status(st, n)

    cdef int _closing_write(self) except -1:
        """A write once close() has begun: the closing thread itself may
        still write (its flush(), a signal handler); any other waits for the
        close to finish and gets ValueError, as with io.BufferedWriter."""
        cdef unsigned long me = PyThread_get_thread_ident()
        while self._close_state == 1:
            if self._close_owner == me:
                return 0
            if self._close_owner == 0:
                break  # interrupted or deferred: nobody to wait for
            time.sleep(0.001)
        raise _closed_error()

    cdef int _put_direct(self, const char *src, Py_ssize_t n, uint64_t *pos) except -1:
        """A write larger than a buffer: handed over without a copy, in order,
        by this thread; if it must leave early its bytes get a copy and stay
        queued."""
        cdef cb_ring *r = self.ring
        cdef uint64_t gen = 0, target
        cdef PyObject *raised = NULL
        cdef int st
        cdef bint own = r.sink.fd >= 0
        cdef char *copy = NULL
        if not r.auto_flush:
            raise BlockingIOError(errno.EAGAIN, f"a write of {n} bytes is larger than a "
                                  "buffer and cannot be held until flush() (auto_flush=False)", 0)
        if not own:
            # A Python raw is called by the flusher thread only: it gets a
            # copy, so this thread may leave (a signal) while it is in flight.
            copy = <char *>malloc(n)
            if copy == NULL:
                raise MemoryError(f"cannot copy a write of {n} bytes")
            memcpy(copy, src, n)
            src = copy
        while True:
            with nogil:
                st = ring_direct(r, src, n, pos, &gen, own, SIGNAL_CHECK)
            if st == RING_ERROR:
                try:
                    self._raise_error()
                except BaseException:
                    free(copy)
                    raise
                continue  # cleared meanwhile: nothing was taken, try again
            if st != RING_WOULD_BLOCK:
                break
            if ring_owned_by_me(r):
                free(copy)
                raise RuntimeError("reentrant write: the ring is full and this thread is inside "
                                   "the sink's own write(), so it cannot wait for room")
            if not cb_load_relaxed(&r.running):
                self._start_flusher()
            try:
                self._signals()
            except BaseException:
                free(copy)
                raise
        if st != RING_OK:
            free(copy)
            return self._raise_status(st, n)
        # Accepted.  Hand it over; leaving any other way gives it a copy.
        target = pos[0] + <uint64_t>n
        try:
            while True:
                with nogil:
                    st = ring_flush_to(r, target, SIGNAL_CHECK, False, SYNC_NONE, &raised)
                if st == RING_OK or st == RING_ERROR or st == RING_OWNED:
                    break  # ERROR: stays queued, the next call raises it
                if raised != NULL:
                    self._raise_raised(raised)
                self._signals()
        finally:
            if st != RING_OK and own:
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
            self._put(PyBytes_AS_STRING(b), n, &pos, False)
            if self.line_buffering and memchr(PyBytes_AS_STRING(b), 10, n) != NULL:
                self._flush_all()
            return n
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE)
        try:
            self._put(<const char *>view.buf, view.len, &pos, False)
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
            if view.len == 0:
                if self._close_state == 2:
                    raise _closed_error()
                self._move_lanes(False, -1.0)  # after this thread's writes, as a write would be
                return ring_position(self.ring)
            self._put(<const char *>view.buf, view.len, &pos, True)
            if self.line_buffering and memchr(view.buf, 10, view.len) != NULL:
                self._flush_all()
        finally:
            PyBuffer_Release(&view)
        return pos

    # -- flushing

    cdef int _flush_all(self) except -1:
        if self._close_state == 2:
            raise ValueError("flush of closed file")
        if cb_load_acquire(&self.ring.error):
            self._raise_error()
        self._move_lanes(True, -1.0)
        return self._flush_to(ring_position(self.ring), True, SYNC_RAW)

    def flush(self):
        """Hand every write that returned before this call to the sink (and
        fsync it with ``fsync=True``; call a Python raw's ``flush()``); raise
        the sticky error if one is set.  With ``lazy_flush`` only the error
        is raised: the flusher hands the bytes over within flush_interval."""
        if self.lazy_flush and self._close_state == 0:
            if cb_load_acquire(&self.ring.error):
                self._raise_error()
            return
        self._flush_all()

    # -- the file behind a writer opened from a path

    @property
    def fd(self):
        """The fd written with writev (it changes when the file is reopened
        or rotated), or -1 for a Python raw."""
        return self.ring.sink.fd

    def _attach_file(self, policy, path, uint64_t limit=0, double roll_at=0.0, bint watch=False):
        """Make the sink a file sink driven by ``policy`` (cbuffer.rotation),
        or give it another policy: before each batch it reopens on request,
        when the path names another file (``watch``), past ``limit`` bytes or
        at ``roll_at``."""
        cdef cb_ring *r = self.ring
        cdef bint locked
        if r.sink.fd < 0:
            raise ValueError("only a writer over an fd has a file policy")
        while True:  # no batch may be under way while the policy changes
            with nogil:
                locked = ring_lock_dispatch(r, SIGNAL_CHECK)
            if locked:
                break
            self._signals()
        try:
            sink_clear_file(&r.sink)
            sink_init_file(&r.sink, policy, os.fsencode(path), limit, roll_at, watch)
        finally:
            cb_mutex_unlock(&r.dispatch_mu)

    def _set_raw(self, raw):
        """The file object of the current file (set by a file policy)."""
        self.raw = raw

    def _set_roll_at(self, double roll_at):
        self.ring.sink.roll_at = roll_at

    def reopen(self):
        """Open the file's path again before the next batch (after logrotate
        moved it away, say).  Only sets a flag: safe from a signal handler."""
        if self.ring.sink.policy == NULL:
            raise io.UnsupportedOperation("reopen: the writer was not opened from a path")
        cb_store_release(&self.ring.sink.reopen, 1)

    def _switch_file(self, reason):
        """Switch files now, under the dispatch lock (doRollover() called by
        hand): what is buffered goes to the current file first."""
        cdef cb_ring *r = self.ring
        cdef bint locked
        if r.sink.policy == NULL:
            raise io.UnsupportedOperation("the writer was not opened from a path")
        self._flush_all()
        while True:
            with nogil:
                locked = ring_lock_dispatch(r, SIGNAL_CHECK)
            if locked:
                break
            self._signals()
        try:
            fd, roll_at = (<object>r.sink.policy)._switch(reason, 0)
            r.sink.fd = fd
            r.sink.poll_fd = fd
            r.sink.roll_at = roll_at
        finally:
            cb_mutex_unlock(&r.dispatch_mu)

    # -- closing

    def _close_steps(self, bint raise_sticky):
        """Shut and drain the ring, stop the flusher, close raw (unless
        closefd=False), then raise: the close error chained to the drain's
        sticky error, or that error alone."""
        drain_error = None
        try:
            done, error = self._close_ring()
        except Exception as exc:  # not KeyboardInterrupt: close() stays resumable
            done, error, drain_error = True, False, exc
        if not done:
            return False  # inside the sink's own call: finished when it returns
        if error and raise_sticky:
            try:
                self._raise_error()
            except Exception as exc:
                drain_error = exc
        try:
            self._close_raw()
        except BaseException as exc:
            # Not closed, as with io: close() may be called again to retry.
            if drain_error is not None and exc.__context__ is None:
                exc.__context__ = drain_error
            raise
        self._mark_closed()
        if drain_error is not None:
            raise drain_error
        return True

    def _close_raw(self):
        if not self.closefd:
            return
        if sys.is_finalizing() and cb_load_acquire(&self.ring.running):
            return  # the flusher may still be writing to it: the OS closes it at exit
        if isinstance(self.raw, int):
            os.close(self.raw)
            return
        close = getattr(self.raw, "close", None)
        if close is not None:
            close()

    def _finish_close(self, flush_error):
        """The rest of ConcurrentBufferedWriter.close() after its flush()."""
        try:
            self._close_steps(flush_error is None)
        except BaseException as exc:
            if flush_error is not None and exc is not flush_error and exc.__context__ is None:
                exc.__context__ = flush_error
            raise
        if flush_error is not None:
            raise flush_error

    def close(self):
        """Flush, stop the flusher and close raw (unless closefd=False).
        Idempotent.  Raises the sticky error, if any, after closing raw."""
        if not self._begin_close():
            return
        try:
            flush_error = None
            try:
                self._flush_all()
            except Exception as exc:
                if self._interrupted_by(exc):
                    raise  # a signal handler's: close() stays resumable, as with Ctrl-C
                flush_error = exc
            self._finish_close(flush_error)
        finally:
            self._end_close()

    @property
    def closed(self):
        if self._close_state == 2:
            return True
        raw = self.raw
        return not isinstance(raw, int) and getattr(raw, "closed", False) is True

    @property
    def closing(self):
        return self._close_state != 0

    def tell(self):
        if self._close_state == 2:
            raise ValueError("I/O operation on closed file.")
        return ring_tell(self.ring)

    @property
    def lanes(self):
        """Lanes (open buffers of their own) threads write() into; 0: none."""
        return self.ring.nlanes
