"""logging handlers built on ConcurrentBufferedWriter.

``logging.Handler.handle`` takes the handler's lock around every ``emit``;
with a writer that needs no lock that would serialise every logging thread,
so these handlers emit without it.  Each record is formatted, encoded and
written with one ``write()``, so its line lands whole.
"""
import logging

from cbuffer.writer import ConcurrentBufferedWriter
from cbuffer.writer import open as _open


class ConcurrentHandler(logging.Handler):
    """Write log records to a :class:`~cbuffer.ConcurrentBufferedWriter`.

    :param writer: the writer; closed with the handler if ``owns_writer``.
    :param str encoding: how records are encoded (errors: ``backslashreplace``).
    """

    terminator = "\n"

    def __init__(self, writer, encoding="utf-8", level=logging.NOTSET, owns_writer=False):
        if not isinstance(writer, ConcurrentBufferedWriter):
            raise TypeError(
                f"writer must be a ConcurrentBufferedWriter, not {type(writer).__name__}")
        super().__init__(level)
        self.writer = writer
        self.encoding = encoding
        self.owns_writer = owns_writer
        self._write = writer.write

    def handle(self, record):
        # No handler lock: the writer is safe for concurrent writes.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # 3.12+: a filter may return a record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record):
        try:
            line = self.format(record) + self.terminator
            self._write(line.encode(self.encoding, "backslashreplace"))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self):
        if not self.writer.closed:
            self.writer.flush()

    def close(self):
        try:
            if self.owns_writer:
                self.writer.close()
        finally:
            super().close()


class ConcurrentFileHandler(ConcurrentHandler):
    """Log to a file through a writer of its own.

    :param filename: a path or path-like object.
    :param str mode: ``"ab"`` (default) or ``"wb"``.
    :param writer_options: passed on to the writer, e.g. ``flush_interval=0.5``.
    """

    def __init__(self, filename, mode="ab", encoding="utf-8", level=logging.NOTSET,
                 **writer_options):
        writer = _open(filename, mode, **writer_options)
        try:
            super().__init__(writer, encoding, level, owns_writer=True)
        except BaseException:
            writer.close()
            raise
        self.baseFilename = writer.name
