"""Reading back the self-identifying records written by cbuffer._testing.

Every check reads the bytes the sink actually received; nothing here trusts a
count of successful calls.
"""
import struct
import zlib

from cbuffer._testing import HEADER_SIZE, RECORD_MAGIC

_HEADER = struct.Struct("<IIIIQ")


class Record:
    __slots__ = ("tid", "seq", "length", "position", "at")

    def __init__(self, tid, seq, length, position, at):
        self.tid, self.seq, self.length, self.position, self.at = tid, seq, length, position, at


def parse(data, base=0):
    """Split ``data`` into records, checking each one's magic and crc32.

    ``at`` is where the record really is (``base`` + its index in data).
    Raises AssertionError at the first gap, overlap or corrupted byte.
    """
    view = memoryview(data)
    out = []
    i = 0
    n = len(data)
    while i < n:
        assert n - i >= HEADER_SIZE + 4, f"truncated record at {base + i}"
        magic, tid, seq, length, position = _HEADER.unpack_from(view, i)
        assert magic == RECORD_MAGIC, f"bad magic at {base + i}: gap, overlap or stale bytes"
        assert HEADER_SIZE + 4 <= length <= n - i, f"bad length {length} at {base + i}"
        (crc,) = struct.unpack_from("<I", view, i + length - 4)
        assert zlib.crc32(view[i:i + length - 4]) == crc, f"corrupted record at {base + i}"
        out.append(Record(tid, seq, length, position, base + i))
        i += length
    return out


def check_stream(data, threads, per_thread, base=0, positions=True):
    """Every record of every thread exactly once, in each thread's order, each
    where its writer was told it landed."""
    records = parse(data, base)
    assert len(records) == threads * per_thread, (
        f"{len(records)} records, expected {threads * per_thread}")
    last = {}
    for rec in records:
        assert 0 <= rec.tid < threads, f"unknown thread {rec.tid}"
        expected = last.get(rec.tid, -1) + 1
        assert rec.seq == expected, f"thread {rec.tid}: seq {rec.seq} after {expected - 1}"
        last[rec.tid] = rec.seq
        if positions:
            assert rec.position == rec.at, (
                f"record told position {rec.position} but landed at {rec.at}")
    assert all(last.get(t) == per_thread - 1 for t in range(threads))
    return records
