"""logging handlers built on ConcurrentBufferedWriter.

They mirror the standard library's handlers so that a dictConfig or fileConfig
notices the swap only in speed:

- :class:`ConcurrentFileHandler` is a :class:`logging.FileHandler` (same
  signature, attributes, delay, modes, reopen after ``close()``) whose stream
  is a :class:`~cbuffer.ConcurrentBufferedWriter` of its own.
- :class:`ConcurrentStreamHandler` is a :class:`logging.StreamHandler`; given
  a writer it writes records to it without a lock, given any other stream it
  behaves exactly as :class:`logging.StreamHandler`.
- :class:`ConcurrentHandler` writes to a writer you made (the original API).

What makes them fast: ``logging.Handler.handle`` takes the handler's lock
around every ``emit``, which with a writer that needs no lock would serialise
every logging thread again, so these handlers emit without it.  Each record
is formatted, encoded and written with one ``write()``, so its line lands
whole, and nothing is flushed per record: records reach the file when a
buffer fills, every ``flush_interval`` seconds, on ``flush()`` or
``close()``, or with each line when the writer has ``line_buffering=True``.
"""
import codecs
import inspect
import io
import locale
import logging
import os
import sys

from cbuffer.writer import ConcurrentBufferedWriter
from cbuffer.writer import open as _open_writer

__all__ = ["ConcurrentFileHandler", "ConcurrentHandler", "ConcurrentStreamHandler"]

# Bound at import: logging.StreamHandler may be rebound to a class of this
# module (as CPython's own tests are run against it), and the methods here
# must still reach the standard implementation.
_StreamHandler = logging.StreamHandler

# FileHandler's text modes and the writer mode each opens with; the binary
# modes are accepted because cbuffer 0.1's handler took them.
_WRITER_MODES = {
    "a": "ab", "at": "ab", "ab": "ab",
    "w": "wb", "wt": "wb", "wb": "wb",
    "x": "xb", "xt": "xb", "xb": "xb",
}

_WRITER_PARAMETERS = inspect.signature(ConcurrentBufferedWriter.__init__).parameters

# Codecs whose encoder starts a stream with a byte order mark: records are
# encoded without it and the mark is written once, at the start of an empty
# file, as io.TextIOWrapper does.
_BOM_CODECS = {
    "utf-8-sig": ("utf-8", codecs.BOM_UTF8),
    "utf-16": ("utf-16-le" if sys.byteorder == "little" else "utf-16-be", codecs.BOM_UTF16),
    "utf-32": ("utf-32-le" if sys.byteorder == "little" else "utf-32-be", codecs.BOM_UTF32),
}


def _resolve_encoding(encoding):
    """The codec each record is encoded with and the BOM an empty file
    starts with, for an encoding as ``open()`` takes it (None and
    ``"locale"`` mean the locale's encoding)."""
    if encoding is None or encoding == "locale":
        getencoding = getattr(locale, "getencoding", None)  # 3.11+
        if sys.flags.utf8_mode:
            encoding = "utf-8"
        elif getencoding is not None:
            encoding = getencoding()
        else:
            encoding = locale.getpreferredencoding(False)
    name = codecs.lookup(encoding).name  # LookupError, as open() raises
    return _BOM_CODECS.get(name, (name, b""))


class _DirectFile(io.FileIO):
    """An unbuffered file whose ``write()`` writes all it is given."""

    def write(self, b):
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            done += io.FileIO.write(self, view[done:])
        return done


def _is_writer(stream):
    return isinstance(stream, ConcurrentBufferedWriter)


class ConcurrentStreamHandler(logging.StreamHandler):
    """A :class:`logging.StreamHandler` that writes to a
    :class:`~cbuffer.ConcurrentBufferedWriter` without a lock.

    When ``stream`` is a writer each record is formatted, encoded and written
    with one ``write()`` and no handler lock, and the handler does not flush
    per record (the writer's ``flush_interval`` or ``line_buffering`` say
    when bytes reach the sink).  Any other stream (``None`` means
    ``sys.stderr``) is written exactly as :class:`logging.StreamHandler`
    writes it: text, under the handler's lock, flushed per record, because
    such a stream is not known to be safe for concurrent writes.  Like
    :class:`logging.StreamHandler`, ``close()`` leaves the stream open.

    :param stream: a :class:`~cbuffer.ConcurrentBufferedWriter`, or a text
        stream as :class:`logging.StreamHandler` takes it.
    :param str encoding: how records are encoded for a writer.
    :param str errors: the encoding error handler for a writer; the default
        never loses a record over an unencodable character.

    ::

        writer = cbuffer.ConcurrentBufferedWriter(sys.stdout.fileno(), closefd=False,
                                                  flush_interval=0.5)
        logging.getLogger().addHandler(ConcurrentStreamHandler(writer))
    """

    terminator = "\n"

    def __init__(self, stream=None, *, encoding="utf-8", errors="backslashreplace"):
        _StreamHandler.__init__(self, stream)
        self.encoding = encoding
        self.errors = errors
        self._codec = _resolve_encoding(encoding)[0]
        self._codec_errors = "strict" if errors is None else errors

    def handle(self, record):
        """Filter ``record`` and emit it if it passes, without the handler
        lock (:meth:`emit` takes it only for a stream that is not a writer).
        Returns what :meth:`logging.Handler.handle` returns: the record that
        was emitted (3.12+: a filter may return a replacement) or a false
        value."""
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record):
        """Write ``record``: one ``write()`` of its encoded line to a writer,
        or as :meth:`logging.StreamHandler.emit` (under the lock) to any
        other stream.  Failures go to :meth:`handleError`."""
        stream = self.stream
        if not _is_writer(stream):
            self._emit_locked(record)
            return
        try:
            stream.write((self.format(record) + self.terminator).encode(
                self._codec, self._codec_errors))
        except RecursionError:  # as logging.StreamHandler: see CPython issue 36272
            raise
        except Exception:
            self.handleError(record)

    def _emit_locked(self, record):
        # The lock logging.Handler.handle would have taken; setStream takes it
        # too, so the stream read under it is the one written.
        self.acquire()
        try:
            stream = self.stream
            if _is_writer(stream):
                try:
                    stream.write((self.format(record) + self.terminator).encode(
                        self._codec, self._codec_errors))
                except RecursionError:
                    raise
                except Exception:
                    self.handleError(record)
            else:
                _StreamHandler.emit(self, record)
        finally:
            self.release()

    def flush(self):
        """Flush the stream: a writer hands every record written so far to
        its sink (no lock); another stream is flushed under the lock."""
        stream = self.stream
        if _is_writer(stream):
            _flush_writer(self, stream)
        else:
            _StreamHandler.flush(self)


def _flush_writer(handler, stream):
    if stream.closed:
        return
    try:
        stream.flush()
    except ValueError:
        # A close() raced this flush and flushes instead: the writer says it
        # is closed, or the handler already let go of it.
        if not stream.closed and handler.stream is stream:
            raise


class ConcurrentHandler(ConcurrentStreamHandler):
    """Write log records to a :class:`~cbuffer.ConcurrentBufferedWriter` you
    made.

    :param writer: the writer; closed with the handler if ``owns_writer``.
    :param str encoding: how records are encoded.
    :param level: the handler's level.
    :param bool owns_writer: ``close()`` closes the writer too.
    :param str errors: the encoding error handler.

    ::

        writer = cbuffer.open("app.log", "ab", flush_interval=1.0)
        handler = ConcurrentHandler(writer, owns_writer=True)
    """

    def __init__(self, writer, encoding="utf-8", level=logging.NOTSET, owns_writer=False, *,
                 errors="backslashreplace"):
        if not _is_writer(writer):
            raise TypeError(
                f"writer must be a ConcurrentBufferedWriter, not {type(writer).__name__}")
        ConcurrentStreamHandler.__init__(self, writer, encoding=encoding, errors=errors)
        self.setLevel(level)
        self.owns_writer = owns_writer

    @property
    def writer(self):
        """The writer records go to (the same object as ``stream``)."""
        return self.stream

    @writer.setter
    def writer(self, writer):
        self.stream = writer

    def close(self):
        """Close the writer if the handler owns it, then the handler."""
        try:
            stream = self.stream
            if self.owns_writer and stream is not None:
                stream.close()
        finally:
            _StreamHandler.close(self)


class ConcurrentFileHandler(ConcurrentHandler, logging.FileHandler):
    """A :class:`logging.FileHandler` whose stream is a
    :class:`~cbuffer.ConcurrentBufferedWriter`: many threads log to one file
    without a lock.

    The signature, the attributes (``baseFilename``, ``mode``, ``encoding``,
    ``errors``, ``delay``, ``stream``, ``terminator``) and the behaviour are
    :class:`logging.FileHandler`'s: ``delay`` opens the file at the first
    record; ``emit`` after ``close()`` reopens it, except in a truncating
    mode; an open that fails in ``emit`` raises, a record that fails to
    format, encode or write goes to :meth:`handleError`.  The differences:
    no handler lock per record; records are not flushed one by one (pass
    ``flush_interval`` or ``line_buffering=True`` to bound how long they
    wait); ``stream`` is the writer (binary), and ``setStream`` takes only a
    writer.

    :param filename: a path or path-like object.
    :param str mode: ``"a"`` (default), ``"w"`` or ``"x"``, as for
        :class:`logging.FileHandler` (``"ab"``, ``"wb"``, ``"xb"`` are also
        accepted; with them ``encoding`` defaults to UTF-8 and ``errors`` to
        ``"backslashreplace"``, cbuffer 0.1's behaviour).
    :param str encoding: the file's encoding; None means what
        :class:`logging.FileHandler` uses (the locale's, or UTF-8 in UTF-8
        mode).
    :param bool delay: open the file at the first record, not now.
    :param str errors: the encoding error handler (None: ``"strict"``).
    :param level: the handler's level (kept from cbuffer 0.1).
    :param writer_options: passed on to the writer, e.g.
        ``flush_interval=0.5``.

    ::

        handler = ConcurrentFileHandler("app.log", encoding="utf-8", flush_interval=1.0)
        logging.getLogger().addHandler(handler)
    """

    def __init__(self, filename, mode="a", encoding=None, delay=False, errors=None, *,
                 level=logging.NOTSET, **writer_options):
        try:
            self._writer_mode = _WRITER_MODES[mode]
        except (KeyError, TypeError):
            raise ValueError(
                f"invalid mode: {mode!r} (ConcurrentFileHandler takes 'a', 'w' or 'x')") from None
        for name in writer_options:
            if name not in _WRITER_PARAMETERS or name in ("self", "raw"):
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {name!r}")
        self._writer_options = writer_options
        self.owns_writer = True
        self._codec = self._codec_errors = None  # set by _open
        if "b" in mode:
            encoding = "utf-8" if encoding is None else encoding
            errors = "backslashreplace" if errors is None else errors
        # logging.FileHandler.__init__, step by step: it calls
        # StreamHandler.__init__ through the module global, which need not be
        # the standard class when this one is used in its place.
        self.baseFilename = os.path.abspath(os.fspath(filename))
        self.mode = mode
        self.encoding = encoding
        if "b" not in mode and hasattr(io, "text_encoding"):  # 3.10+
            self.encoding = io.text_encoding(encoding)
        self.errors = errors
        self.delay = delay
        if delay:
            logging.Handler.__init__(self)
            self.stream = None
        else:
            _StreamHandler.__init__(self, self._open())
        if not hasattr(self, "_closed"):  # 3.9: logging.Handler has no _closed
            self._closed = False
        if level != logging.NOTSET:
            self.setLevel(level)

    def _open(self):
        """Open the file with the handler's mode and encoding; returns the
        writer (as :meth:`logging.FileHandler._open` returns the stream)."""
        codec, bom = _resolve_encoding(self.encoding)
        if sys.is_finalizing():
            # A record logged while the interpreter finalizes (from a __del__,
            # after logging.shutdown() closed the file): no flusher thread can
            # start now and nothing would close a writer later, so it goes
            # straight to the file, as FileHandler's reopened stream is
            # flushed when it is freed (CPython issue 26789).
            writer = _DirectFile(self.baseFilename, self._writer_mode)
        else:
            writer = _open_writer(self.baseFilename, self._writer_mode, **self._writer_options)
        try:
            if bom and writer.tell() == 0:
                writer.write(bom)
        except BaseException:
            writer.close()
            raise
        self._codec = codec
        self._codec_errors = "strict" if self.errors is None else self.errors
        return writer

    def _reopen(self):
        """The writer to write to now that the one read from ``stream`` was
        None or closed: the one another thread opened, a new one (emit after
        close() reopens, as FileHandler's does), or None when the record is
        dropped (closed in a truncating mode, CPython issue 42378).  Waits
        for a close() in progress to finish, so a thread's records never
        reach the file before those it wrote to the writer being closed."""
        self.acquire()
        try:
            stream = self.stream
            if stream is None:
                if self._closed and self._writer_mode == "wb":
                    return None
                stream = self.stream = self._open()
            return stream
        finally:
            self.release()

    def emit(self, record):
        """Write ``record`` with one ``write()``, opening the file first if
        it is not open (delay, or after ``close()``).  A write that races
        ``close()`` lands in the closed writer or, if that refused it, in the
        reopened file."""
        stream = self.stream  # read once: close() may set it to None meanwhile
        if stream is None:
            stream = self._reopen()  # an open error propagates, as in FileHandler.emit
            if stream is None:
                return
        try:
            data = (self.format(record) + self.terminator).encode(self._codec, self._codec_errors)
            while True:
                try:
                    stream.write(data)
                    return
                except ValueError:
                    # close() lets go of the writer before closing it, so a
                    # writer refusing writes that is still the stream was
                    # closed behind the handler's back: as with FileHandler,
                    # that is an error.
                    if self.stream is stream:
                        raise
                stream = self._reopen()
                if stream is None:
                    return
        except RecursionError:  # as logging.StreamHandler: see CPython issue 36272
            raise
        except Exception:
            self.handleError(record)

    def flush(self):
        """Hand every record written so far to the file (no lock)."""
        stream = self.stream
        if stream is not None:
            _flush_writer(self, stream)

    def close(self):
        """Flush and close the writer, as :meth:`logging.FileHandler.close`
        closes its stream; a later record reopens the file (mode ``"a"``)."""
        self.acquire()
        try:
            try:
                stream = self.stream
                if stream is not None:
                    try:
                        self.flush()
                    finally:
                        self.stream = None
                        stream.close()
            finally:
                # Also sets _closed (3.10+), which emit consults; CPython issue 19523
                _StreamHandler.close(self)
                self._closed = True
        finally:
            self.release()

    def setStream(self, stream):
        """Replace the writer (flushing the old one, which stays open) and
        return the old one, or None if ``stream`` is already the stream."""
        if stream is not None and not _is_writer(stream):
            raise TypeError(
                f"stream must be a ConcurrentBufferedWriter or None, not {type(stream).__name__}")
        if stream is not None and self._codec is None:
            self._codec, _ = _resolve_encoding(self.encoding)
            self._codec_errors = "strict" if self.errors is None else self.errors
        return _StreamHandler.setStream(self, stream)
