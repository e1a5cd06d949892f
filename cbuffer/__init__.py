"""cbuffer: a latch-free concurrent buffered writer.

Many threads write byte records into one file, pipe or socket; each write
takes space in a ring of 4 KiB-aligned buffers with one atomic step and no
lock, and a background flusher hands sealed buffers to the operating system.
"""
import os as _os

try:
    from cbuffer._buffer import BufferFull, ConcurrentBuffer
    from cbuffer._ring import BufferRing, BufferState
    from cbuffer.text import ConcurrentTextWriter
    from cbuffer.writer import DEFAULT_BUFFER_SIZE, ConcurrentBufferedWriter, open
except ImportError as exc:  # no silent pure-Python fallback
    raise ImportError(
        "cbuffer's compiled extension modules could not be imported; "
        "build them with 'pip install .' (needs a C compiler and Cython>=3.1)"
    ) from exc

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_BUFFER_SIZE", "BufferFull", "BufferRing", "BufferState", "ConcurrentBuffer",
    "ConcurrentBufferedWriter", "ConcurrentTextWriter", "get_include", "open",
]


def get_include():
    """The directory holding cbuffer's .pxd and .h files, for Cython code
    that cimports its C-level API (add it to include_dirs)."""
    return _os.path.dirname(_os.path.abspath(__file__))
