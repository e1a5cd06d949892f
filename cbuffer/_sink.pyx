# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Sinks: the destinations a ring hands its sealed bytes to.

Two kinds, one interface (``_sink.pxd``):

* an fd, written with ``writev`` without the GIL;
* a Python object, called with a read-only memoryview of each part, with the
  GIL.  What it returns is read as CONTRACT.md's "Drop-in details" say: an int
  ``0 <= n <= len`` is the bytes taken; ``None`` from an ``io.RawIOBase``
  means "would block, nothing taken" (a ``SocketIO`` on a non-blocking
  socket), ``None`` from anything else means "all taken"; any other value is
  an ``OSError``, as io raises for a misbehaving raw.  ``BlockingIOError``
  took ``characters_written`` bytes; only the rest is offered again.

An exception that is not an ``Exception`` (``KeyboardInterrupt`` raised by a
signal handler while the raw's ``write()`` ran on a caller's thread) is
handed back as SINK_INTR with ``exc`` set: it belongs to that caller, not to
the sink, so it is raised once and not kept.
"""
import errno as _errno
import os
import stat

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from posix.uio cimport iovec, writev
from posix.unistd cimport fsync as c_fsync

from cbuffer._state cimport cb_atomic_init, cb_fetch_add_relaxed, cb_load_relaxed, cb_store_relaxed

cdef extern from "Python.h":
    int PyBUF_READ
    unsigned long PyThread_get_thread_ident() nogil

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLOUT

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned usec)

cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK

cdef extern from "<limits.h>" nogil:
    const int IOV_MAX


# ---------------------------------------------------------------- fd

cdef int fd_write(cb_sink *s, const iovec *iov, int cnt, uint64_t *taken) noexcept nogil:
    cdef long w = writev(s.fd, iov, cnt if cnt < IOV_MAX else IOV_MAX)
    cdef int err
    cb_fetch_add_relaxed(&s.syscalls, 1)
    taken[0] = 0
    if w < 0:
        err = errno
        if err == EINTR:
            return SINK_INTR
        if err == EAGAIN or err == EWOULDBLOCK:
            return SINK_AGAIN
        s.err = err
        return SINK_ERROR
    taken[0] = <uint64_t>w
    cb_fetch_add_relaxed(&s.written, <uint64_t>w)
    return SINK_OK


cdef int fd_sync(cb_sink *s, bint flush_raw) noexcept nogil:
    cdef int err
    if not s.fsync:
        return SINK_OK
    while c_fsync(s.fd) != 0:
        err = errno
        if err != EINTR:
            s.err = err
            return SINK_ERROR
    return SINK_OK


cdef void sink_init_fd(cb_sink *s, int fd, bint fsync) noexcept nogil:
    s.write = fd_write
    s.sync = fd_sync
    s.fd = fd
    s.poll_fd = fd
    s.fsync = fsync
    s.rawio = False
    s.write_obj = NULL
    s.raw = NULL
    cb_atomic_init(&s.owner, 0)
    cb_atomic_init(&s.syscalls, 0)
    cb_atomic_init(&s.written, 0)
    s.err = 0
    s.exc = NULL


# ---------------------------------------------------------------- Python

cdef int python_write(cb_sink *s, const iovec *iov, int cnt, uint64_t *taken) noexcept nogil:
    with gil:
        return python_write_gil(s, iov, cnt, taken)


cdef int python_fail(cb_sink *s, BaseException exc) noexcept:
    if isinstance(exc, InterruptedError):
        return SINK_INTR  # EINTR: nothing taken; offer the same bytes again, as io does
    Py_INCREF(exc)
    Py_XDECREF(s.exc)
    s.exc = <PyObject *>exc
    if not isinstance(exc, Exception):
        return SINK_INTR  # KeyboardInterrupt & co.: the caller's, raised once
    return SINK_ERROR


cdef int python_write_gil(cb_sink *s, const iovec *iov, int cnt, uint64_t *taken) noexcept:
    cdef object write = <object>s.write_obj
    cdef uint64_t total = 0, n, w
    cdef int i, st = SINK_OK
    cdef unsigned long me = PyThread_get_thread_ident()
    cdef unsigned long outer = cb_load_relaxed(&s.owner)
    cb_store_relaxed(&s.owner, me)
    try:
        for i in range(cnt):
            n = iov[i].iov_len
            if n == 0:
                continue
            view = PyMemoryView_FromMemory(<char *>iov[i].iov_base, <Py_ssize_t>n, PyBUF_READ)
            try:
                res = write(view)
            except BlockingIOError as exc:
                cb_fetch_add_relaxed(&s.syscalls, 1)
                w = 0
                try:
                    got = exc.characters_written
                except AttributeError:
                    got = 0
                if not isinstance(got, int) or not 0 <= got <= n:
                    st = python_fail(s, OSError(
                        _errno.EIO, f"raw write() raised BlockingIOError with characters_written="
                        f"{got!r} for a write of {n} bytes"))
                    break
                total += <uint64_t>got
                st = SINK_AGAIN
                break
            except BaseException as exc:
                cb_fetch_add_relaxed(&s.syscalls, 1)
                st = python_fail(s, exc)
                break
            finally:
                try:
                    view.release()
                except BufferError:
                    pass  # the raw kept an export; the view was only valid during the call
            cb_fetch_add_relaxed(&s.syscalls, 1)
            if res is None:
                if s.rawio:
                    st = SINK_AGAIN  # io.RawIOBase: would block, nothing taken
                    break
                w = n
            elif isinstance(res, int) and 0 <= res <= <object>n:
                w = res
            else:
                st = python_fail(s, OSError(
                    _errno.EIO, f"{'raw write()' if s.raw != NULL else 'sink'} returned {res!r} "
                    f"for a write of {n} bytes (should have been between 0 and {n})"))
                break
            total += w
            if w < n:
                if w == 0:
                    st = SINK_AGAIN
                break
    finally:
        cb_store_relaxed(&s.owner, outer)
    taken[0] = total
    cb_fetch_add_relaxed(&s.written, total)
    return st


cdef int python_sync(cb_sink *s, bint flush_raw) noexcept nogil:
    if not flush_raw:
        return SINK_OK  # bytes still in the raw's own buffer gain nothing from fsync
    with gil:
        return python_sync_gil(s, flush_raw)


cdef int python_sync_gil(cb_sink *s, bint flush_raw) noexcept:
    cdef object raw = <object>s.raw if s.raw != NULL else None
    cdef unsigned long outer = cb_load_relaxed(&s.owner)
    if raw is None:
        return SINK_OK
    cb_store_relaxed(&s.owner, PyThread_get_thread_ident())
    try:
        if getattr(raw, "closed", False) is True:
            return SINK_OK  # closed under us (a close() from a signal handler)
        flush = getattr(raw, "flush", None)
        if flush is not None:
            try:
                flush()
            except BlockingIOError:
                return SINK_AGAIN  # a buffered raw over a non-blocking fd: flush again later
        if s.fsync:
            try:
                fileno = raw.fileno()
            except (AttributeError, OSError, ValueError):
                fileno = -1
            if fileno >= 0 and stat.S_ISREG(os.fstat(fileno).st_mode):
                os.fsync(fileno)
    except BaseException as exc:
        return python_fail(s, exc)
    finally:
        cb_store_relaxed(&s.owner, outer)
    return SINK_OK


cdef int sink_init_python(cb_sink *s, object write_obj, object raw, bint rawio,
                          int poll_fd, bint fsync) except -1:
    s.write = python_write
    s.sync = python_sync
    s.fd = -1
    s.poll_fd = poll_fd
    s.fsync = fsync
    s.rawio = rawio
    Py_INCREF(write_obj)
    s.write_obj = <PyObject *>write_obj
    if raw is not None:
        Py_INCREF(raw)
        s.raw = <PyObject *>raw
    else:
        s.raw = NULL
    cb_atomic_init(&s.owner, 0)
    cb_atomic_init(&s.syscalls, 0)
    cb_atomic_init(&s.written, 0)
    s.err = 0
    s.exc = NULL
    return 0


cdef void sink_clear(cb_sink *s) noexcept:
    Py_XDECREF(s.write_obj)
    Py_XDECREF(s.raw)
    Py_XDECREF(s.exc)
    s.write_obj = NULL
    s.raw = NULL
    s.exc = NULL


# ---------------------------------------------------------------- waiting

cdef void sink_wait_writable(cb_sink *s, double timeout) noexcept nogil:
    cdef pollfd pfd
    cdef int ms = <int>(timeout * 1000.0)
    if s.poll_fd >= 0:
        pfd.fd = s.poll_fd
        pfd.events = POLLOUT
        pfd.revents = 0
        poll(&pfd, 1, ms if ms > 0 else 1)
    else:
        usleep(1000)  # no fd to poll: a raw that took nothing gets a moment


cdef bint sink_owned_by_me(cb_sink *s) noexcept nogil:
    return cb_load_relaxed(&s.owner) == PyThread_get_thread_ident()
