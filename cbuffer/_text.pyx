# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""The compiled write path of ConcurrentTextWriter (cbuffer/text.py).

Each thread's text since its last newline waits, already encoded, in that
thread's own ``_Line``; a write that completes a line joins it with the rest
and hands it to the byte writer with one ``write()``, so lines land whole.
Text is encoded in ``write()`` itself, so an encoding error is raised by the
write that caused it, which keeps nothing of its text (what earlier writes
accepted stays, as with io).  The pieces are taken from a
``_Line`` (a new list put in its place) before they are joined, so a signal
handler writing in between never sees them twice.
"""
import threading

import weakref

from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact

from cbuffer._state cimport cb_atomic_init, cb_atomic_u64, cb_load_seq_cst, cb_store_seq_cst

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()
    Py_ssize_t PyUnicode_FindChar(object s, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2
    Py_ssize_t PyUnicode_GET_LENGTH(object s)


cdef class _Line:
    """One thread's partial line: encoded pieces since its last newline."""
    cdef public list parts
    cdef cb_atomic_u64 busy   # writes of its thread in progress (close() waits for 0)
    cdef object __weakref__

    def __cinit__(self):
        self.parts = []
        cb_atomic_init(&self.busy, 0)

    @property
    def writing(self):
        return cb_load_seq_cst(&self.busy) != 0


cdef class TextCore:
    """State and write path of a ConcurrentTextWriter."""

    cdef public object buffer       # the byte writer
    cdef object _write              # its write
    cdef public str codec           # what text is encoded with (no BOM)
    cdef public str errors
    cdef public object writenl      # "\n" becomes this on the way out, or None
    cdef public bint line_buffering
    cdef public bint write_through
    cdef public object local        # threading.local: .line, this thread's _Line
    cdef public set pending         # the _Line of every thread with a partial line
    cdef public object lines        # every thread's _Line (weakly), for close()
    cdef cb_atomic_u64 _closing     # close() began: other threads' writes are refused
    cdef public unsigned long closer  # the thread running close()
    cdef public bint closed         # close() finished (or detach())
    cdef public bytes bom           # still to be written before the first byte, or None
    cdef object _bom_lock           # so only one thread writes it

    def __init__(self, buffer, codec, errors, writenl, line_buffering, write_through, local, bom):
        self.buffer = buffer
        self._write = getattr(buffer, "write", None)
        self.codec = codec
        self.errors = errors
        self.writenl = writenl
        self.line_buffering = line_buffering
        self.write_through = write_through
        self.local = local
        self.pending = set()
        self.lines = weakref.WeakSet()
        cb_atomic_init(&self._closing, 0)
        self.closer = 0
        self.closed = False
        self.bom = bom if bom else None
        self._bom_lock = threading.Lock()

    cdef _Line _line(self):
        line = getattr(self.local, "line", None)
        if line is None:
            line = _Line()
            self.local.line = line
            self.lines.add(line)
        return <_Line>line

    @property
    def closing(self):
        return cb_load_seq_cst(&self._closing) != 0

    def begin_close(self):
        """From now on writes of other threads are refused (ValueError)."""
        self.closer = PyThread_get_thread_ident()
        cb_store_seq_cst(&self._closing, 1)

    def abort_close(self):
        cb_store_seq_cst(&self._closing, 0)
        self.closer = 0

    def busy_lines(self):
        """Other threads' lines with a write in progress (begun before
        close() did, so it lands or raises; close() waits for it)."""
        me = getattr(self.local, "line", None)
        while True:
            try:
                lines = list(self.lines)
                break
            except RuntimeError:
                continue
        return [line for line in lines if line is not me and line.writing]

    cdef bytes _encode(self, str text, bint translate):
        if translate and self.writenl is not None:
            text = text.replace("\n", self.writenl)
        return text.encode(self.codec, self.errors)

    cdef _out(self, bytes data):
        if self.bom is not None:
            with self._bom_lock:  # the first output: the BOM goes first, once
                if self.bom is not None:
                    # Sequenced (append()), so no thread's lane can pass it.
                    getattr(self.buffer, "append", self._write)(self.bom)
                    self.bom = None
        self._write(data)

    def write(self, s):
        """write(s) -> int

        Write ``s`` (a str); returns its length.  Complete lines go to the
        byte writer at once, in one ``write()``; a partial line waits in this
        thread's buffer for the rest of it.
        """
        cdef _Line line
        if not PyUnicode_Check(s):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not PyUnicode_CheckExact(s):
            s = str.__str__(s)  # its characters as a plain str (loguru's Message), as io takes them
        if self.closed:
            raise ValueError("write to closed file")
        line = self._line()
        cb_store_seq_cst(&line.busy, cb_load_seq_cst(&line.busy) + 1)
        try:
            # A write that begins once close() has begun is refused (unless
            # it is the closing thread's own): one that began before lands.
            if cb_load_seq_cst(&self._closing) and self.closer != PyThread_get_thread_ident():
                raise ValueError("write to closed file")
            return self._write_text(s, line)
        finally:
            cb_store_seq_cst(&line.busy, cb_load_seq_cst(&line.busy) - 1)

    cdef Py_ssize_t _write_text(self, s, _Line line) except -1:
        cdef Py_ssize_t n, nl
        cdef list parts
        cdef bytes head, tail, data
        n = PyUnicode_GET_LENGTH(s)
        if self.write_through:
            if n:
                self._out(self._encode(s, True))
            if self.line_buffering and (PyUnicode_FindChar(s, 10, 0, n, 1) >= 0
                                        or PyUnicode_FindChar(s, 13, 0, n, 1) >= 0):
                self.buffer.flush()
            return n
        nl = PyUnicode_FindChar(s, 10, 0, n, -1)
        if nl < 0:
            if n:
                tail = self._encode(s, False)  # raises with nothing of s kept
                if not line.parts:
                    self.pending.add(line)
                line.parts.append(tail)
            if self.line_buffering and PyUnicode_FindChar(s, 13, 0, n, 1) >= 0:
                self.hand_over(line)
                self.buffer.flush()
            return n
        if nl + 1 == n:
            head = self._encode(s, True)
            tail = None
        else:
            head = self._encode(s[:nl + 1], True)
            tail = self._encode(s[nl + 1:], False)
        parts = line.parts
        if parts:
            line.parts = [tail] if tail is not None else []
            if tail is None:
                self.pending.discard(line)
            parts.append(head)
            data = b"".join(parts)
        else:
            data = head
            if tail is not None:
                line.parts = [tail]
                self.pending.add(line)
        self._out(data)
        if self.line_buffering:
            self.buffer.flush()
        return n

    def hand_over(self, line):
        """Hand ``line``'s partial text to the byte writer as it is."""
        cdef _Line ln = <_Line>line
        cdef list parts
        if ln is None or not ln.parts:
            return
        parts = ln.parts
        ln.parts = []
        self.pending.discard(ln)
        self._out(b"".join(parts))

    def hand_over_mine(self):
        """This thread's partial line (flush())."""
        line = getattr(self.local, "line", None)
        if line is not None:
            self.hand_over(line)

    def hand_over_all(self):
        """Every thread's partial line (close(), exit)."""
        while True:
            try:
                lines = list(self.pending)
                break
            except RuntimeError:
                continue  # another thread added one meanwhile
        for line in lines:
            self.hand_over(line)
