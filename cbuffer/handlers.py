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
import logging.handlers
import os
import sys

from cbuffer import rotation
from cbuffer.writer import DEFAULT_BUFFER_SIZE, ConcurrentBufferedWriter
from cbuffer.writer import open as _open_writer

__all__ = [
    "ConcurrentFileHandler", "ConcurrentHandler", "ConcurrentRotatingFileHandler",
    "ConcurrentStreamHandler", "ConcurrentTimedRotatingFileHandler", "ConcurrentWatchedFileHandler",
]

#: The file handlers' default ``flush_interval`` (seconds).
DEFAULT_FLUSH_INTERVAL = 1.0

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
    :param int flush_level: records at or above this level are on the file
        before ``emit`` returns (default ``logging.ERROR``; None: never).
    :param writer_options: passed on to the writer; ``flush_interval``
        defaults to one second here, so lines reach the file within about a
        second on a quiet service.

    ::

        handler = ConcurrentFileHandler("app.log", encoding="utf-8", flush_interval=1.0)
        logging.getLogger().addHandler(handler)
    """

    def __init__(self, filename, mode="a", encoding=None, delay=False, errors=None, *,
                 level=logging.NOTSET, flush_level=logging.ERROR, **writer_options):
        try:
            self._writer_mode = _WRITER_MODES[mode]
        except (KeyError, TypeError):
            raise ValueError(
                f"invalid mode: {mode!r} (ConcurrentFileHandler takes 'a', 'w' or 'x')") from None
        for name in writer_options:
            if name not in _WRITER_PARAMETERS or name in ("self", "raw"):
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {name!r}")
        if writer_options.get("auto_flush", True):
            # Lines reach the file within about a second on a quiet service.
            writer_options.setdefault("flush_interval", DEFAULT_FLUSH_INTERVAL)
        self._writer_options = writer_options
        self.flush_level = flush_level
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
                except ValueError:
                    # close() lets go of the writer before closing it, so a
                    # writer refusing writes that is still the stream was
                    # closed behind the handler's back: as with FileHandler,
                    # that is an error.
                    if self.stream is stream:
                        raise
                else:
                    level = record.levelno
                    if (self.flush_level is not None and isinstance(level, int)
                            and level >= self.flush_level):
                        stream.flush()  # on the file before emit returns
                    return
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


def _gz_namer(name):
    return name + ".gz"


class _FileSize:
    """A stream as RotatingFileHandler.shouldRollover uses it: tell() is the
    file's size."""

    def __init__(self, path):
        self.path = path

    def seek(self, offset, whence=0):
        return self.tell()

    def tell(self):
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0


def _check_compress(compress):
    if compress not in (None, False, "gzip"):
        raise ValueError(f"compress must be None or 'gzip', not {compress!r}")
    return bool(compress)


class ConcurrentRotatingFileHandler(ConcurrentFileHandler, logging.handlers.RotatingFileHandler):
    """A :class:`logging.handlers.RotatingFileHandler` on a
    :class:`~cbuffer.ConcurrentBufferedWriter`: the same signature, file
    names, ``namer``/``rotator`` and ``backupCount``, with rotation decided
    by the writer's sink once per batch instead of once per record.

    A batch that would bring the file to ``maxBytes`` goes to a fresh file,
    cut between the buffers it is made of, so every file holds whole records
    and stays below ``maxBytes``, unless one buffer (or one record larger than
    a buffer) alone is larger: that goes into a file of its own.  The default
    ``buffer_size`` here is a quarter of ``maxBytes`` (a multiple of 4096,
    at least 4096, at most 64 KiB), so only records over 4 KiB, or
    ``maxBytes`` under 4 KiB, make a file larger than ``maxBytes``.

    Several processes may log to one path: the one that rotates holds
    ``<path>.lock`` (``fcntl.flock``) only around the renames, and the others
    move to the new file at their next batch; until then a batch of theirs
    may still land in the file just rotated.

    :param compress: ``"gzip"`` to compress rotated files in a background
        thread: backups are ``<path>.N.gz``, the newest ``<path>.1`` until
        it is compressed (a ``.gz`` appears only complete); ``namer`` and
        ``rotator`` are not used then.
    The other parameters are :class:`ConcurrentFileHandler`'s.
    """

    def __init__(self, filename, mode="a", maxBytes=0, backupCount=0, encoding=None, delay=False,
                 errors=None, *, compress=None, level=logging.NOTSET, flush_level=logging.ERROR,
                 **writer_options):
        if maxBytes > 0:
            mode = "a"  # as RotatingFileHandler: a truncating mode would lose backups
            # A file is cut between buffers: buffers of at most a quarter of
            # maxBytes keep every file within it (and nearly full).
            writer_options.setdefault("buffer_size", max(
                4096, min(DEFAULT_BUFFER_SIZE, maxBytes // 4 // 4096 * 4096)))
        self.maxBytes = maxBytes
        self.backupCount = backupCount
        self.compress = _check_compress(compress)
        ConcurrentFileHandler.__init__(self, filename, mode, encoding, delay, errors, level=level,
                                       flush_level=flush_level, **writer_options)

    def _open(self):
        writer = ConcurrentFileHandler._open(self)
        if _is_writer(writer):
            policy = rotation.SizeRotation(writer._core, self, self.compress)
            policy.attach(limit=policy.limit)
        return writer

    def shouldRollover(self, record):
        """Whether ``record`` would bring the file to ``maxBytes``: the
        standard handler's own answer, with the file's size standing in for
        the stream position it asks for (a writer has none)."""
        return rotation._RotatingFileHandler.shouldRollover(
            rotation._View(self, stream=_FileSize(self.baseFilename)), record)

    def doRollover(self):
        """Rotate now: what is buffered goes to the current file first."""
        stream = self.stream
        if _is_writer(stream):
            stream._core._switch_file("rollover")
        else:
            with rotation.path_lock(self.baseFilename):
                rotation._RotatingFileHandler.doRollover(rotation._View(self))

    def close(self):
        ConcurrentFileHandler.close(self)
        if self.compress:
            rotation.compress_leftovers(rotation.SizeRotation(None, self, True))


class ConcurrentTimedRotatingFileHandler(ConcurrentFileHandler,
                                         logging.handlers.TimedRotatingFileHandler):
    """A :class:`logging.handlers.TimedRotatingFileHandler` on a
    :class:`~cbuffer.ConcurrentBufferedWriter`: the same signature,
    schedule, file names, ``namer``/``rotator`` and ``backupCount``; the
    writer's sink looks at the clock once per batch, and the first batch at
    or after the rollover time goes to a fresh file.  Several processes may
    share the path, as for :class:`ConcurrentRotatingFileHandler`.

    :param compress: ``"gzip"`` to compress each rotated file in a background
        thread into ``<its name>.gz`` (which appears only complete).
    The other parameters are :class:`ConcurrentFileHandler`'s.
    """

    def __init__(self, filename, when="h", interval=1, backupCount=0, encoding=None, delay=False,
                 utc=False, atTime=None, errors=None, *, compress=None, level=logging.NOTSET,
                 flush_level=logging.ERROR, **writer_options):
        # The schedule (interval, suffix, extMatch, the first rolloverAt) is
        # the standard handler's own, computed by it without opening a file.
        schedule = rotation._TimedRotatingFileHandler(
            filename, when, interval, backupCount, encoding=encoding, delay=True, utc=utc,
            atTime=atTime, errors=errors)
        schedule.close()
        keep = set(vars(logging.FileHandler(os.devnull, delay=True)))
        for name, value in vars(schedule).items():
            if name not in keep:
                setattr(self, name, value)
        self.compress = _check_compress(compress)
        if self.compress and self.namer is None:
            self.namer = _gz_namer  # so retention (getFilesToDelete) counts the .gz files
        ConcurrentFileHandler.__init__(self, filename, "a", encoding, delay, errors, level=level,
                                       flush_level=flush_level, **writer_options)

    def _open(self):
        writer = ConcurrentFileHandler._open(self)
        if _is_writer(writer):
            policy = rotation.TimedRotation(writer._core, self, self.compress)
            policy.attach(roll_at=policy.roll_at())
        return writer

    def doRollover(self):
        """Rotate now: what is buffered goes to the current file first."""
        stream = self.stream
        if _is_writer(stream):
            stream._core._switch_file("rollover")
        else:
            with rotation.path_lock(self.baseFilename):
                rotation._TimedRotatingFileHandler.doRollover(rotation._View(self))

    def _rotated_files(self):
        """Rotated files not compressed yet: the standard handler's own
        match of its suffix, without a ``.gz``."""
        dirname, basename = os.path.split(self.baseFilename)
        prefix = basename + "."
        out = []
        for name in os.listdir(dirname or "."):
            if name.startswith(prefix) and not name.endswith(".gz"):
                suffix = name[len(prefix):]
                if self.extMatch.match(suffix) and not suffix.endswith(".gz-part"):
                    out.append(os.path.join(dirname, name))
        return out

    def close(self):
        ConcurrentFileHandler.close(self)
        if self.compress:
            rotation.compress_leftovers(rotation.TimedRotation(None, self, True))


class _WatchTarget(rotation.FileTarget):
    watch = True


class ConcurrentWatchedFileHandler(ConcurrentFileHandler, logging.handlers.WatchedFileHandler):
    """A :class:`logging.handlers.WatchedFileHandler` on a
    :class:`~cbuffer.ConcurrentBufferedWriter`: when the path names another
    file (moved by logrotate, or deleted) the writer's sink reopens it before
    its next batch -- one ``stat`` per batch, not per record.
    The parameters are :class:`ConcurrentFileHandler`'s.
    """

    def __init__(self, filename, mode="a", encoding=None, delay=False, errors=None, *,
                 level=logging.NOTSET, flush_level=logging.ERROR, **writer_options):
        self.dev, self.ino = -1, -1
        ConcurrentFileHandler.__init__(self, filename, mode, encoding, delay, errors, level=level,
                                       flush_level=flush_level, **writer_options)

    def _open(self):
        writer = ConcurrentFileHandler._open(self)
        if _is_writer(writer):
            _WatchTarget(writer._core, self.baseFilename).attach()
            st = os.fstat(writer.fileno())
            self.dev, self.ino = st.st_dev, st.st_ino
        return writer

    def _statstream(self):
        stream = self.stream
        if stream is not None:
            st = os.fstat(stream.fileno())
            self.dev, self.ino = st.st_dev, st.st_ino

    def reopenIfNeeded(self):
        """Reopen the file before the next batch if the path names another
        file (the sink checks this at every batch anyway)."""
        stream = self.stream
        if _is_writer(stream) and not rotation.same_file(self.baseFilename, stream.fileno()):
            stream.reopen()
