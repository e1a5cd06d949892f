"""cbuffer: a latch-free concurrent buffered writer."""
from cbuffer._buffer import BufferFull, ConcurrentBuffer
from cbuffer._ring import BufferRing, BufferState

__all__ = ["BufferFull", "BufferRing", "BufferState", "ConcurrentBuffer"]
