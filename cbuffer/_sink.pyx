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
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.uio cimport iovec, writev
from posix.unistd cimport fsync as c_fsync

from cbuffer._state cimport (
    cb_atomic_init, cb_fetch_add_relaxed, cb_load_acquire, cb_load_relaxed, cb_store_relaxed,
    cb_store_release,
)

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


# ---------------------------------------------------------------- pipe

cdef extern from "<limits.h>" nogil:
    const int PIPE_BUF

cdef extern from "<string.h>" nogil:
    void *memrchr(const void *s, int c, size_t n)
    void *memchr(const void *s, int c, size_t n)

cdef enum:
    PIPE_CHUNK_IOV = 64


cdef int pipe_write(cb_sink *s, const iovec *iov, int cnt, uint64_t *taken) noexcept nogil:
    """write(2)s of whole lines, each at most PIPE_BUF bytes (so atomic for
    the kernel), until the batch is taken or one is short.  A line longer
    than PIPE_BUF goes in one write(2) of its own (which may interleave)."""
    cdef iovec chunk[PIPE_CHUNK_IOV]
    cdef int i = 0, k, err
    cdef size_t off = 0, avail, left, size
    cdef const char *base
    cdef const char *p
    cdef long w
    taken[0] = 0
    while i < cnt:
        k = 0
        avail = PIPE_BUF
        size = 0
        while i < cnt and k < PIPE_CHUNK_IOV:
            base = <const char *>iov[i].iov_base + off
            left = iov[i].iov_len - off
            if left <= avail:  # a whole part: it ends at a record boundary
                chunk[k].iov_base = <void *>base
                chunk[k].iov_len = left
                k += 1
                avail -= left
                size += left
                i += 1
                off = 0
                continue
            p = <const char *>memrchr(base, 10, avail)
            if p != NULL:
                left = <size_t>(p - base) + 1
            elif k == 0:  # one line longer than PIPE_BUF: all of it at once
                p = <const char *>memchr(base + avail, 10, left - avail)
                if p != NULL:
                    left = <size_t>(p - base) + 1
            else:
                break
            chunk[k].iov_base = <void *>base
            chunk[k].iov_len = left
            k += 1
            size += left
            off += left
            if off == iov[i].iov_len:
                i += 1
                off = 0
            break
        w = writev(s.fd, chunk, k)
        cb_fetch_add_relaxed(&s.syscalls, 1)
        if w < 0:
            err = errno
            if err == EINTR:
                return SINK_INTR if taken[0] == 0 else SINK_OK
            if err == EAGAIN or err == EWOULDBLOCK:
                return SINK_AGAIN if taken[0] == 0 else SINK_OK
            s.err = err
            return SINK_ERROR if taken[0] == 0 else SINK_OK
        taken[0] += <uint64_t>w
        cb_fetch_add_relaxed(&s.written, <uint64_t>w)
        if <size_t>w < size:
            return SINK_OK  # short: the ring offers the rest again
    return SINK_OK


cdef bint sink_prompt(cb_sink *s) noexcept nogil:
    return s.write == fd_write and s.prompt and not s.fsync


cdef void sink_init_pipe(cb_sink *s, int fd) noexcept nogil:
    sink_init_fd(s, fd, False)
    s.write = pipe_write


# ---------------------------------------------------------------- file

cdef extern from "<sys/stat.h>" nogil:
    cdef struct c_stat_t "stat":
        unsigned long st_dev
        unsigned long st_ino
        unsigned int st_mode
        unsigned long st_rdev
        long st_size
    int c_fstat "fstat"(int fd, c_stat_t *buf)
    bint S_ISREG(unsigned int mode)
    bint S_ISCHR(unsigned int mode)
    int c_stat "stat"(const char *path, c_stat_t *buf)

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_REALTIME

# Why a file sink switches files (passed to the policy).
cdef enum:
    WHY_REOPEN = 1  # reopen() was called (logrotate's "create" mode, SIGHUP)
    WHY_MOVED = 2   # the path names another file now (rotated by another process)
    WHY_TIME = 3    # the rollover time has come
    WHY_SIZE = 4    # the batch would take the file past its size limit

_REASONS = {WHY_REOPEN: "reopen", WHY_MOVED: "moved", WHY_TIME: "time", WHY_SIZE: "size"}


cdef double wall_clock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef int file_switch(cb_sink *s, int why, uint64_t incoming) noexcept nogil:
    with gil:
        return file_switch_gil(s, why, incoming)


cdef int file_switch_gil(cb_sink *s, int why, uint64_t incoming) noexcept:
    cdef unsigned long outer = cb_load_relaxed(&s.owner)
    cb_store_relaxed(&s.owner, PyThread_get_thread_ident())
    try:
        fd, roll_at = (<object>s.policy)._switch(_REASONS[why], incoming)
        s.fd = fd
        s.poll_fd = fd
        s.roll_at = roll_at
        cb_fetch_add_relaxed(&s.switches, 1)
    except BaseException as exc:
        return python_fail(s, exc)
    finally:
        cb_store_relaxed(&s.owner, outer)
    return SINK_OK


cdef int file_write(cb_sink *s, const iovec *iov, int cnt, uint64_t *taken) noexcept nogil:
    """An fd write preceded by the file checks; a batch that would take the
    file past ``limit`` is cut at an iovec boundary (a record boundary) and
    the rest goes to the next file."""
    cdef c_stat_t st, pst
    cdef int why, k, rounds = 0, rc
    cdef uint64_t size = 0, total
    taken[0] = 0
    while True:
        why = 0
        if cb_load_acquire(&s.reopen):
            cb_store_release(&s.reopen, 0)
            why = WHY_REOPEN
        elif s.watch or s.limit:
            if c_fstat(s.fd, &st) != 0:
                s.err = errno
                return SINK_ERROR
            size = <uint64_t>st.st_size
            if s.watch and (c_stat(s.path, &pst) != 0 or pst.st_ino != st.st_ino
                            or pst.st_dev != st.st_dev):
                why = WHY_MOVED
        if not why and s.roll_at > 0 and wall_clock() >= s.roll_at:
            why = WHY_TIME
        if not why and s.limit and size > 0 and size + iov[0].iov_len >= s.limit:
            why = WHY_SIZE  # as RotatingFileHandler: a file stays below maxBytes
        if not why or rounds == 2:
            break  # (after two switches a batch goes where it is: never a loop)
        rc = file_switch(s, why, iov[0].iov_len)
        if rc != SINK_OK:
            return rc
        rounds += 1
        size = 0
    k = cnt
    if s.limit:
        total = iov[0].iov_len
        k = 1  # one part larger than the limit goes alone (the documented slack)
        while k < cnt and size + total + iov[k].iov_len < s.limit:
            total += iov[k].iov_len
            k += 1
    return s.base(s, iov, k, taken)


cdef int sink_init_file(cb_sink *s, object policy, bytes path, uint64_t limit,
                        double roll_at, bint watch) except -1:
    cdef char *copy = NULL
    if watch:
        copy = <char *>malloc(len(path) + 1)
        if copy == NULL:
            raise MemoryError()
        memcpy(copy, <const char *>path, len(path))
        copy[len(path)] = 0
    Py_INCREF(policy)
    s.policy = <PyObject *>policy
    s.path = copy
    s.limit = limit
    s.roll_at = roll_at
    s.watch = watch
    cb_atomic_init(&s.reopen, 0)
    cb_atomic_init(&s.switches, 0)
    if s.write != file_write:
        s.base = s.write  # the fd or pipe writer the checks lead to
    s.write = file_write
    return 0


cdef void sink_start(cb_sink *s) noexcept nogil:
    """The state both kinds of sink start from: no error, no file policy."""
    cb_atomic_init(&s.owner, 0)
    cb_atomic_init(&s.syscalls, 0)
    cb_atomic_init(&s.written, 0)
    s.err = 0
    s.exc = NULL
    s.policy = NULL
    s.path = NULL
    s.limit = 0
    s.roll_at = 0
    s.watch = False
    cb_atomic_init(&s.reopen, 0)
    cb_atomic_init(&s.switches, 0)


cdef void sink_init_fd(cb_sink *s, int fd, bint fsync) noexcept nogil:
    cdef c_stat_t st
    s.write = fd_write
    s.sync = fd_sync
    s.fd = fd
    s.poll_fd = fd
    s.fsync = fsync
    cdef c_stat_t null
    # Not any character device: a terminal can stall on its reader.
    s.prompt = fd >= 0 and c_fstat(fd, &st) == 0 and (
        S_ISREG(st.st_mode) or (S_ISCHR(st.st_mode) and c_stat("/dev/null", &null) == 0
                                and st.st_rdev == null.st_rdev))
    s.rawio = False
    s.write_obj = NULL
    s.raw = NULL
    sink_start(s)


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
    sink_start(s)
    return 0


cdef void sink_clear_file(cb_sink *s) noexcept:
    Py_XDECREF(s.policy)
    free(s.path)
    s.policy = NULL
    s.path = NULL


cdef void sink_clear(cb_sink *s) noexcept:
    Py_XDECREF(s.write_obj)
    Py_XDECREF(s.raw)
    Py_XDECREF(s.exc)
    Py_XDECREF(s.policy)
    free(s.path)
    s.write_obj = NULL
    s.raw = NULL
    s.exc = NULL
    s.policy = NULL
    s.path = NULL


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
