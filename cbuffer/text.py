"""A thread-safe text writer: whole lines into a ConcurrentBufferedWriter.

``io.TextIOWrapper`` is not thread-safe, and ``print(a, b)`` makes several
``write()`` calls per line, so even a thread-safe byte writer below it cannot
keep a line whole.  ``ConcurrentTextWriter`` keeps each thread's partial line
in that thread's own buffer until its newline (or ``flush()``/``close()``),
then encodes the whole line(s) and hands them to the byte writer with one
``write()``, which lands contiguously.  Encoding, ``errors``, ``newline``
translation and ``line_buffering`` are ``io.TextIOWrapper``'s (as
``_pyio.TextIOWrapper`` defines them).
"""
import atexit
import codecs
import io
import locale
import os
import sys
import threading
import weakref

__all__ = ["ConcurrentTextWriter"]

# Codecs whose encoder starts a stream with a byte order mark: text is encoded
# without it and the mark is written once, at the start of an empty file, as
# io.TextIOWrapper does.
_BOM_CODECS = {
    "utf-8-sig": ("utf-8", codecs.BOM_UTF8),
    "utf-16": ("utf-16-le" if sys.byteorder == "little" else "utf-16-be", codecs.BOM_UTF16),
    "utf-32": ("utf-32-le" if sys.byteorder == "little" else "utf-32-be", codecs.BOM_UTF32),
}


def resolve_encoding(encoding):
    """The codec each piece of text is encoded with and the BOM an empty
    file starts with, for an encoding as ``open()`` takes it (None and
    ``"locale"`` mean the locale's encoding)."""
    if encoding is None or encoding == "locale":
        getencoding = getattr(locale, "getencoding", None)  # 3.11+
        if sys.flags.utf8_mode:
            encoding = "utf-8"
        elif getencoding is not None:
            encoding = getencoding()
        else:
            encoding = locale.getpreferredencoding(False)
    if not isinstance(encoding, str):
        raise ValueError(f"invalid encoding: {encoding!r}")
    info = codecs.lookup(encoding)  # LookupError, as open() raises
    if not getattr(info, "_is_text_encoding", True):
        raise LookupError(f"{encoding!r} is not a text encoding; "
                          "use codecs.open() to handle arbitrary codecs")
    return _BOM_CODECS.get(info.name, (info.name, b""))


class _Line:
    """One thread's partial line (the pieces written since its last newline)."""

    __slots__ = ("parts", "__weakref__")

    def __init__(self):
        self.parts = []


# Text writers alive, so exit and fork can deal with partial lines.
_writers = weakref.WeakSet()


class ConcurrentTextWriter(io.TextIOBase):
    """A write-only text stream that many threads may write at once: each
    thread's lines land whole, never interleaved with another's, in the
    order that thread wrote them.

    :param buffer: the :class:`~cbuffer.ConcurrentBufferedWriter` below.
    :param str encoding: as ``io.TextIOWrapper`` (None: the locale's).
    :param str errors: the encoding error handler (None: ``"strict"``).
    :param str newline: ``None`` (``"\\n"`` becomes ``os.linesep``), ``""`` or
        ``"\\n"`` (no translation), ``"\\r"`` or ``"\\r\\n"``.
    :param bool line_buffering: a write containing a newline (or ``"\\r"``)
        flushes the byte writer.
    :param bool write_through: text goes to the byte writer at every
        ``write()`` instead of line by line (a line written in pieces may
        then be torn by another thread's, as with ``io.TextIOWrapper``).

    ``cbuffer.open(path, "w")`` (or ``"a"``, ``"x"``) makes one; so does
    ``cbuffer.open(1, "w", closefd=False)``, a thread-safe ``sys.stdout``.
    """

    def __init__(self, buffer, encoding=None, errors=None, newline=None, line_buffering=False,
                 write_through=False):
        if newline is not None and not isinstance(newline, str):
            raise TypeError(f"illegal newline type: {type(newline).__name__}")
        if newline not in (None, "", "\n", "\r", "\r\n"):
            raise ValueError(f"illegal newline value: {newline!r}")
        if errors is None:
            errors = "strict"
        elif not isinstance(errors, str):
            raise ValueError(f"invalid errors: {errors!r}")
        if hasattr(io, "text_encoding"):  # 3.10+: EncodingWarning with -X warn_default_encoding
            encoding = io.text_encoding(encoding)
        self._codec, bom = resolve_encoding(encoding)
        self._buffer = buffer
        self._encoding = encoding if encoding != "locale" else self._codec
        self._errors = errors
        self._newline = newline
        self._writenl = None if newline in ("", "\n") else (newline or os.linesep)
        if self._writenl == "\n":
            self._writenl = None
        self._line_buffering = bool(line_buffering)
        self._write_through = bool(write_through)
        self._local = threading.local()
        self._pending = set()  # the _Line of every thread with a partial line
        self._write = buffer.write
        if bom:
            try:
                at_start = buffer.tell() == 0
            except (OSError, ValueError):
                at_start = False
            if at_start:
                buffer.write(bom)
        _writers.add(self)

    # -- writing

    def write(self, s):
        """write(s) -> int

        Write ``s`` (a str); returns its length.  Complete lines go to the
        byte writer at once, in one ``write()``; a partial line waits in this
        thread's buffer for the rest of it.
        """
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if self._buffer.closed:
            raise ValueError("write to closed file")
        n = len(s)
        if self._write_through:
            self._emit(s)
            return n
        nl = s.rfind("\n")
        line = getattr(self._local, "line", None)
        if nl < 0:
            if n:
                if line is None:
                    line = self._local.line = _Line()
                if not line.parts:
                    self._pending.add(line)
                line.parts.append(s)
            if self._line_buffering and "\r" in s:
                self._flush_line(line)
                self._buffer.flush()
            return n
        end = nl + 1
        if line is not None and line.parts:
            line.parts.append(s[:end] if end < n else s)
            text = "".join(line.parts)
            line.parts.clear()
            if end == n:
                self._pending.discard(line)
            else:
                line.parts.append(s[end:])
        elif end == n:
            text = s
        else:
            text = s[:end]
            if line is None:
                line = self._local.line = _Line()
            line.parts.append(s[end:])
            self._pending.add(line)
        self._emit(text)
        if self._line_buffering:
            self._buffer.flush()
        return n

    def _emit(self, text):
        if self._writenl is not None and "\n" in text:
            text = text.replace("\n", self._writenl)
        self._write(text.encode(self._codec, self._errors))

    def _flush_line(self, line):
        """Hand this thread's partial line over as it is."""
        if line is not None and line.parts:
            text = "".join(line.parts)
            line.parts.clear()
            self._pending.discard(line)
            self._emit(text)

    def _flush_all_lines(self):
        """Every thread's partial line (close(), exit)."""
        while True:
            try:
                lines = list(self._pending)
                break
            except RuntimeError:
                continue  # another thread added one meanwhile
        for line in lines:
            self._flush_line(line)

    def flush(self):
        """Hand this thread's partial line and everything written before it
        to the byte writer, and flush that (every write that returned before
        this call is on the sink when it returns)."""
        if self._buffer.closed:
            raise ValueError("I/O operation on closed file.")
        self._flush_line(getattr(self._local, "line", None))
        self._buffer.flush()

    def close(self):
        """Hand every thread's partial line over, then close the byte writer
        (and its raw, unless ``closefd=False``).  Idempotent."""
        buffer = self._buffer
        if buffer.closed:
            return
        try:
            self._flush_all_lines()
        finally:
            _writers.discard(self)
            buffer.close()

    def detach(self):
        """Flush every partial line and return the byte writer; this text
        writer is unusable afterwards."""
        self._flush_all_lines()
        buffer, self._buffer = self._buffer, _Detached()
        buffer.flush()
        return buffer

    def __del__(self):
        buffer = getattr(self, "_buffer", None)
        if buffer is None or isinstance(buffer, _Detached) or buffer.closed:
            return
        try:
            self._flush_all_lines()
        except Exception:
            pass  # the byte writer's own finalizer flushes and closes what it has

    # -- io.TextIOWrapper's attributes

    @property
    def buffer(self):
        return self._buffer

    @property
    def closed(self):
        return self._buffer.closed

    @property
    def encoding(self):
        return self._encoding

    @property
    def errors(self):
        return self._errors

    @property
    def newlines(self):
        return None  # write-only: no newlines seen

    @property
    def line_buffering(self):
        return self._line_buffering

    @property
    def write_through(self):
        return self._write_through

    @property
    def name(self):
        return self._buffer.name

    @property
    def mode(self):
        mode = getattr(self._buffer, "mode", "wb")
        return mode.replace("b", "") if isinstance(mode, str) else mode

    def fileno(self):
        return self._buffer.fileno()

    def isatty(self):
        return self._buffer.isatty()

    def writable(self):
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def tell(self):
        raise io.UnsupportedOperation("tell: a text writer shared by threads has no position")

    def read(self, size=-1):
        raise io.UnsupportedOperation("read")

    def readline(self, size=-1):
        raise io.UnsupportedOperation("readline")

    def seek(self, offset, whence=0):
        raise io.UnsupportedOperation("seek")

    def truncate(self, pos=None):
        raise io.UnsupportedOperation("truncate")

    def __repr__(self):
        cls = type(self)
        try:
            name = self.name
        except (AttributeError, ValueError):
            return f"<{cls.__module__}.{cls.__qualname__} encoding={self.encoding!r}>"
        return f"<{cls.__module__}.{cls.__qualname__} name={name!r} encoding={self.encoding!r}>"

    def __getstate__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


class _Detached:
    closed = True

    def __getattr__(self, name):
        raise ValueError("underlying buffer has been detached")


def _at_exit():
    for writer in list(_writers):
        try:
            if not writer.closed:
                writer._flush_all_lines()
        except Exception:
            pass  # the byte writer's exit flush runs after this


def _after_fork_in_child():
    # Partial lines belong to the parent's threads (the parent writes them).
    for writer in list(_writers):
        writer._pending.clear()
        writer._local = threading.local()


os.register_at_fork(after_in_child=_after_fork_in_child)
# Registered after the ring's exit flush, so it runs before it (atexit is LIFO).
atexit.register(_at_exit)
