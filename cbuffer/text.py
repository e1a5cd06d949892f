"""A thread-safe text writer: whole lines into a ConcurrentBufferedWriter.

``io.TextIOWrapper`` is not thread-safe, and ``print(a, b)`` makes several
``write()`` calls per line, so even a thread-safe byte writer below it cannot
keep a line whole.  ``ConcurrentTextWriter`` keeps each thread's partial line
in that thread's own buffer until its newline (or ``flush()``/``close()``),
then hands the whole line(s) to the byte writer with one ``write()``, which
lands contiguously.  Encoding, ``errors``, ``newline`` translation,
``line_buffering`` and ``write_through`` are ``io.TextIOWrapper``'s (as
``_pyio.TextIOWrapper`` defines them).  The write path is compiled
(``_text.pyx``).
"""
import atexit
import codecs
import io
import locale
import os
import sys
import threading
import time
import weakref

from cbuffer._text import TextCore

__all__ = ["ConcurrentTextWriter"]

# Codecs whose encoder starts a stream with a byte order mark: text is encoded
# without it and the mark is written once, before the first byte of an empty
# file, as io.TextIOWrapper does.
_BOM_CODECS = {
    "utf-8-sig": ("utf-8", codecs.BOM_UTF8),
    "utf-16": ("utf-16-le" if sys.byteorder == "little" else "utf-16-be", codecs.BOM_UTF16),
    "utf-32": ("utf-32-le" if sys.byteorder == "little" else "utf-32-be", codecs.BOM_UTF32),
}


def locale_encoding():
    getencoding = getattr(locale, "getencoding", None)  # 3.11+
    if sys.flags.utf8_mode:
        return "utf-8"
    if getencoding is not None:
        return getencoding()
    return locale.getpreferredencoding(False)


def resolve_encoding(encoding):
    """The codec each piece of text is encoded with and the BOM an empty
    file starts with, for an encoding as ``open()`` takes it (None and
    ``"locale"`` mean the locale's encoding)."""
    if encoding is None or encoding == "locale":
        encoding = locale_encoding()
    if not isinstance(encoding, str):
        raise TypeError(f"encoding must be str or None, not {type(encoding).__name__}")
    encoding.encode("utf-8")  # UnicodeEncodeError for a lone surrogate, as io
    info = codecs.lookup(encoding)  # LookupError (ValueError for a null), as open() raises
    if not getattr(info, "_is_text_encoding", True):
        raise LookupError(f"{encoding!r} is not a text encoding; "
                          "use codecs.open() to handle arbitrary codecs")
    return _BOM_CODECS.get(info.name, (info.name, b""))


def _check_errors(errors):
    if errors is None:
        return "strict"
    if not isinstance(errors, str):
        raise TypeError(f"errors must be str or None, not {type(errors).__name__}")
    if "\0" in errors:
        raise ValueError("embedded null character")
    try:
        errors.encode("utf-8")
    except UnicodeEncodeError:
        raise UnicodeEncodeError("utf-8", errors, 0, len(errors), "surrogates not allowed") from None
    if sys.flags.dev_mode:  # as io: the handler is looked up early in development mode
        codecs.lookup_error(errors)
    return errors


def _same_sticky_error(a, b):
    """Two raises of one sticky error of the byte writer (each is a fresh
    copy with the sink's own exception as its cause)."""
    cause = getattr(a, "__cause__", None)
    return cause is not None and cause is getattr(b, "__cause__", None) or (
        type(a) is type(b) and isinstance(a, OSError) and a.errno == b.errno
        and a.args == b.args)


def _check_newline(newline):
    if newline is not None and not isinstance(newline, str):
        raise TypeError(f"illegal newline type: {type(newline).__name__}")
    if newline not in (None, "", "\n", "\r", "\r\n"):
        raise ValueError(f"illegal newline value: {newline!r}")
    nl = None if newline in ("", "\n") else (newline or os.linesep)
    return None if nl == "\n" else nl


class _Local(threading.local):
    # The class attribute makes a thread's first lookup as cheap as the rest
    # (a missing attribute on a threading.local costs ten times more).
    line = None


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

    _core = None
    _detached = False

    def __init__(self, buffer, encoding=None, errors=None, newline=None, line_buffering=False,
                 write_through=False):
        if encoding is not None and not isinstance(encoding, str):
            raise TypeError(f"encoding must be str or None, not {type(encoding).__name__}")
        if hasattr(io, "text_encoding"):  # 3.10+: EncodingWarning with -X warn_default_encoding
            encoding = io.text_encoding(encoding, 2)
        if encoding == "locale":
            encoding = locale_encoding()
        codec, bom = resolve_encoding(encoding)
        errors = _check_errors(errors)
        writenl = _check_newline(newline)
        if bom:
            try:
                bom = bom if buffer.tell() == 0 else b""
            except (AttributeError, OSError, ValueError):
                bom = b""
        self._encoding = encoding
        self._newline = newline
        self._core = core = TextCore(buffer, codec, errors, writenl, bool(line_buffering),
                                     bool(write_through), _Local(), bom)
        self._close_lock = threading.Lock()
        if type(self).write is ConcurrentTextWriter.write:
            self.write = core.write  # the compiled write, no Python frame
        _writers.add(self)

    def _c(self):
        core = self._core
        if core is None:
            raise ValueError("I/O operation on uninitialized object")
        return core

    # -- writing

    def write(self, s):
        """write(s) -> int

        Write ``s`` (a str); returns its length.  Complete lines go to the
        byte writer at once, in one ``write()``; a partial line waits in this
        thread's buffer for the rest of it.
        """
        return self._c().write(s)

    def flush(self):
        """Hand this thread's partial line and everything written before it
        to the byte writer, and flush that (every write that returned before
        this call is on the sink when it returns)."""
        core = self._c()
        if core.closed:
            raise ValueError("I/O operation on closed file.")
        core.hand_over_mine()
        core.buffer.flush()

    def close(self):
        """``flush()`` (a subclass's too), every thread's partial line, then
        close the byte writer (and its raw, unless ``closefd=False``), even
        when the flush failed, chaining the errors as io does.  Idempotent."""
        core = self._core
        if core is None or core.closed:
            return
        with self._close_lock:
            if core.closed or core.closing:
                return
            core.begin_close()  # writes of other threads are refused from now on
        try:
            flush_error = None
            try:
                self.flush()
                # Writes that began before close() did land (or raise): wait
                # for them, then hand every partial line over.
                while core.busy_lines():
                    time.sleep(0.0005)
                core.hand_over_all()
            except Exception as exc:
                flush_error = exc
            buffer = core.buffer
            close_error = None
            try:
                if not getattr(buffer, "closed", False):
                    buffer.close()
            except BaseException as exc:
                close_error = exc
            if close_error is not None and not (
                    flush_error is not None and _same_sticky_error(close_error, flush_error)):
                if flush_error is not None and close_error.__context__ is None:
                    close_error.__context__ = flush_error
                raise close_error
            if flush_error is not None:  # (raised once, not again by the byte writer's close)
                raise flush_error
        finally:
            core.closed = bool(getattr(core.buffer, "closed", True))
            if not core.closed:
                core.abort_close()  # the close failed: it may be called again
            _writers.discard(self)

    def detach(self):
        """Hand every partial line over, flush, and return the byte writer;
        this text writer is unusable afterwards (its attributes stay)."""
        core = self._c()
        if core.closed:
            raise ValueError("underlying buffer has been detached" if self._detached
                             else "I/O operation on closed file.")
        core.hand_over_all()
        core.buffer.flush()
        core.closed = True
        self._detached = True
        _writers.discard(self)
        return core.buffer

    def reconfigure(self, *, encoding=None, errors=None, newline=Ellipsis, line_buffering=None,
                    write_through=None):
        """Change encoding, errors, newline, line_buffering or write_through
        for what is written from now on (partial lines already written keep
        their encoding), as ``io.TextIOWrapper.reconfigure``."""
        core = self._c()
        if encoding is not None and not isinstance(encoding, str):
            raise TypeError(f"encoding must be str or None, not {type(encoding).__name__}")
        if newline is not Ellipsis:
            _check_newline(newline)  # before anything changes
        self.flush()  # as io: what was written so far goes with the old settings
        if encoding is None:
            if errors is not None:
                errors = _check_errors(errors)
        else:
            if encoding == "locale":
                encoding = locale_encoding()
            try:
                codec, _ = resolve_encoding(encoding)
            except ValueError:  # as io's reconfigure: a null in the name is an unknown one
                raise LookupError(f"unknown encoding: {encoding!r}") from None
            errors = _check_errors(errors)
        writenl = core.writenl if newline is Ellipsis else _check_newline(newline)
        if encoding is not None:
            core.codec = codec
            self._encoding = encoding
        if errors is not None:
            core.errors = errors
        if newline is not Ellipsis:
            core.writenl = writenl
            self._newline = newline
        if line_buffering is not None:
            core.line_buffering = bool(line_buffering)
        if write_through is not None:
            core.write_through = bool(write_through)

    def __del__(self, _report=sys.flags.dev_mode or sys.version_info >= (3, 13),
                _finalizing=sys.is_finalizing):
        core = self._core
        try:
            if core is None or self.closed:
                return
        except Exception:
            return  # as io: a stream whose state cannot be read is left alone
        if _finalizing():
            return  # the exit flush has handed the lines over
        try:
            # As io: the file a dropped text stream owned says so.
            dealloc_warn = getattr(core.buffer, "_dealloc_warn", None)
            if dealloc_warn is not None:
                dealloc_warn(self)
        finally:
            try:
                self.close()
            except Exception:
                if _report:  # as io: reported from 3.13 on, before only in development mode
                    raise

    # -- io.TextIOWrapper's attributes

    @property
    def buffer(self):
        if self._detached:
            raise ValueError("underlying buffer has been detached")
        return self._c().buffer

    @property
    def closed(self):
        core = self._core
        return core is None or core.closed or bool(core.buffer.closed)

    @property
    def encoding(self):
        return self._encoding

    @property
    def errors(self):
        return self._c().errors

    @property
    def newlines(self):
        return None  # write-only: no newlines seen

    @property
    def line_buffering(self):
        return self._c().line_buffering

    @property
    def write_through(self):
        return self._c().write_through

    @property
    def name(self):
        return self._c().buffer.name

    @property
    def mode(self):
        mode = getattr(self, "_mode", None)
        if mode is not None:
            return mode
        mode = getattr(self._c().buffer, "mode", "wb")
        return mode.replace("b", "") if isinstance(mode, str) else mode

    def fileno(self):
        return self._c().buffer.fileno()

    def isatty(self):
        return self._c().buffer.isatty()

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
        what = f"{cls.__module__}.{cls.__qualname__}"
        try:
            name = self.name
        except (AttributeError, ValueError):
            return f"<{what} encoding={self._encoding!r}>"
        return f"<{what} name={name!r} encoding={self._encoding!r}>"

    def __getstate__(self):
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")


def _at_exit():
    for writer in list(_writers):
        try:
            core = writer._core
            if core is not None and not core.closed:
                core.hand_over_all()
        except Exception:
            pass  # the byte writer's exit flush runs after this


def _after_fork_in_child():
    # Partial lines belong to the parent's threads (the parent writes them).
    for writer in list(_writers):
        core = writer._core
        if core is not None:
            core.pending.clear()
            core.local = _Local()


os.register_at_fork(after_in_child=_after_fork_in_child)
# Registered after the ring's exit flush, so it runs first (atexit is LIFO).
atexit.register(_at_exit)
