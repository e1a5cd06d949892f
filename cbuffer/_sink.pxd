# cython: language_level=3
"""Sinks, C level: what happens to a batch of sealed bytes.

A sink is one small interface chosen once, when the ring is made: ``write``
takes as much of an iovec batch as the destination accepts, ``sync`` makes
what was written durable (fsync, a Python raw's ``flush()``).  The ring never
branches on the kind of sink; each kind is a pair of functions here.

Convention: every function is ``noexcept nogil`` and returns a SinkStatus.  A
Python sink takes the GIL itself.  On SINK_ERROR the sink holds the errno in
``err`` or a new reference to the exception in ``exc``; the ring takes it
from there (``sink_take_error``).
"""
from libc.stdint cimport uint64_t
from cpython.object cimport PyObject
from posix.uio cimport iovec

from cbuffer._state cimport cb_atomic_u64


cdef enum SinkStatus:
    SINK_OK = 0       # *taken bytes went to the destination (maybe fewer than offered)
    SINK_AGAIN = 1    # would block: nothing taken; wait with sink_wait_writable
    SINK_INTR = 2     # a signal interrupted the call: nothing taken
    SINK_ERROR = 3    # failed: see err / exc; nothing more is offered until cleared


cdef struct cb_sink
ctypedef int (*sink_write_fn)(cb_sink *s, const iovec *iov, int cnt,
                              uint64_t *taken) noexcept nogil
ctypedef int (*sink_sync_fn)(cb_sink *s, bint flush_raw) noexcept nogil


cdef struct cb_sink:
    sink_write_fn write     # take bytes of a batch
    sink_write_fn base      # a file sink's own writer (fd or pipe), after its checks
    sink_sync_fn sync       # make them durable (fsync where asked; raw.flush())
    int fd                  # destination fd (writev), or -1 for a Python raw
    int poll_fd             # fd to poll for writability, or -1 (sleep instead)
    bint fsync              # fsync after each batch (regular files only)
    bint prompt             # fd is a regular file or /dev/null: a write(2) to it
                            # never waits on a reader
    bint rawio              # raw is an io.RawIOBase: write() -> None means "would block"
    PyObject *write_obj     # raw.write or the layer-2 callable (owned), or NULL
    PyObject *raw           # the raw object, for flush() and fileno() (owned), or NULL
    cb_atomic_u64 owner     # ident of a thread running Python code for this sink, or 0
    cb_atomic_u64 syscalls  # write()/writev() calls (statistics)
    cb_atomic_u64 written   # bytes taken (statistics)
    int err                 # errno of the last SINK_ERROR, or 0
    PyObject *exc           # exception of the last SINK_ERROR (owned), or NULL
    # A file sink (an fd sink that knows its path), checked before each batch:
    PyObject *policy        # decides rotation and reopens the path (owned), or NULL
    cb_atomic_u64 reopen    # reopen the path before the next batch (set by reopen())
    uint64_t limit          # rotate before a batch that would pass this size (0: never)
    double roll_at          # rotate before a batch at or after this time.time() (0: never)
    bint watch              # stat the path per batch: reopen when it names another file
    char *path              # the path, for watch (malloc'd), or NULL
    cb_atomic_u64 switches  # files opened by rotation or reopen (statistics)


# Set up ``s`` to writev into ``fd``.
cdef void sink_init_fd(cb_sink *s, int fd, bint fsync) noexcept nogil

# Set up ``s`` to write into a pipe ``fd`` that other processes may share:
# each write(2) carries whole lines and at most PIPE_BUF bytes, so lines up
# to PIPE_BUF are never interleaved with another writer's.
cdef void sink_init_pipe(cb_sink *s, int fd) noexcept nogil

# Set up ``s`` to call ``write_obj(memoryview)`` with the GIL.  ``rawio``:
# None from it means "nothing taken, would block" (io.RawIOBase), else "all".
cdef int sink_init_python(cb_sink *s, object write_obj, object raw, bint rawio,
                          int poll_fd, bint fsync) except -1

# Make ``s`` (an fd sink) a file sink: before each batch it checks for a
# reopen request, a moved path (``watch``), the size ``limit`` and the time
# ``roll_at``, and calls ``policy._switch(reason, incoming)`` with the GIL
# when one fires; that returns the new fd and the next roll_at.
cdef int sink_init_file(cb_sink *s, object policy, bytes path, uint64_t limit,
                        double roll_at, bint watch) except -1

# Drop a file sink's policy and path (needs the GIL).
cdef void sink_clear_file(cb_sink *s) noexcept

# Drop the Python references (needs the GIL).
cdef void sink_clear(cb_sink *s) noexcept

# True when any thread may hand ``s`` a batch at no risk of a long wait: a
# plain fd sink on a regular file or /dev/null, no fsync (a pipe, a socket or
# a terminal can block on its reader; a file sink runs Python policy code).
cdef bint sink_prompt(cb_sink *s) noexcept nogil

# Wait at most ``timeout`` seconds for the destination to take bytes again.
cdef void sink_wait_writable(cb_sink *s, double timeout) noexcept nogil

# True when the calling thread runs Python code of this sink right now (a
# signal handler, or the raw's own write(), calling back into the writer).
cdef bint sink_owned_by_me(cb_sink *s) noexcept nogil
