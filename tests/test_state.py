"""The packed state word: every transition and the limits of every field,
driven through the same inline functions the append paths use."""
import pytest

from cbuffer import _testing as t
from cbuffer._testing import StateWord


def word(offset=0, writers=0, flags=0):
    return (offset << 32) | (writers << 8) | flags


def fields(value):
    return value >> 32, (value >> 8) & 0xFFFFFF, value & 0xFF


def test_layout_is_the_contracts():
    # bits 63..32 offset, 31..8 writers, 7..2 reserved, 1 flushing, 0 sealed
    assert t.SEALED == 1 << 0
    assert t.FLUSHING == 1 << 1
    assert t.SHUT & 0b11111100 and t.SHUT & (t.SEALED | t.FLUSHING) == 0
    assert t.WRITER_SHIFT == 8 and t.WRITER_ONE == 1 << 8
    assert t.WRITER_MAX == (1 << 24) - 1
    assert t.OFFSET_SHIFT == 32 and t.OFFSET_MAX == (1 << 32) - 1
    assert len({t.OK, t.CLOSED, t.NO_ROOM, t.BUSY}) == 4


def test_reserve_moves_offset_and_counts_writer_in_one_step():
    w = StateWord()
    assert w.try_reserve(10, 100) == (t.OK, 0)
    assert fields(w.value) == (10, 1, 0)
    assert w.try_reserve(5, 100) == (t.OK, 10)
    assert fields(w.value) == (15, 2, 0)


def test_zero_byte_reservation_counts_a_writer_but_takes_no_space():
    w = StateWord(word(offset=7))
    assert w.try_reserve(0, 7) == (t.OK, 7)
    assert fields(w.value) == (7, 1, 0)


def test_writer_leaves():
    w = StateWord()
    w.try_reserve(3, 100)
    w.try_reserve(4, 100)
    before = w.leave()
    assert fields(before) == (7, 2, 0)
    assert fields(w.value) == (7, 1, 0)
    w.leave()
    assert fields(w.value) == (7, 0, 0)


def test_seal_freezes_the_offset_and_refuses_reservations():
    w = StateWord()
    w.try_reserve(40, 100)
    before = w.seal()
    assert before & t.SEALED == 0  # this caller is the sealer
    assert fields(before)[0] == 40  # and learns the final length
    assert w.seal() & t.SEALED  # a second sealer sees it already sealed
    assert w.try_reserve(1, 100) == (t.CLOSED, None)
    assert fields(w.value) == (40, 1, t.SEALED)  # refused: nothing changed


def test_last_writer_out_of_sealed_buffer_sees_it():
    w = StateWord()
    w.try_reserve(8, 100)
    w.try_reserve(8, 100)
    w.seal()
    first = w.leave()
    assert first & t.SEALED and fields(first)[1] == 2  # not the last
    last = w.leave()
    assert last & t.SEALED and fields(last)[1] == 1  # the last one out
    assert fields(w.value) == (16, 0, t.SEALED)


def test_flush_in_progress_refuses_reservations():
    w = StateWord(word(offset=12, flags=t.SEALED | t.FLUSHING))
    assert w.try_reserve(1, 100) == (t.CLOSED, None)
    assert w.value == word(offset=12, flags=t.SEALED | t.FLUSHING)


def test_reset_starts_again_from_offset_zero():
    w = StateWord(word(offset=90, flags=t.SEALED | t.FLUSHING))
    w.set(0)
    assert w.try_reserve(10, 100) == (t.OK, 0)


def test_no_room_takes_nothing():
    w = StateWord(word(offset=95))
    assert w.try_reserve(6, 100) == (t.NO_ROOM, None)
    assert w.value == word(offset=95)
    assert w.try_reserve(5, 100) == (t.OK, 95)  # exactly the rest fits
    assert fields(w.value) == (100, 1, 0)
    assert w.try_reserve(1, 100) == (t.NO_ROOM, None)


def test_more_than_capacity_on_an_empty_word():
    w = StateWord()
    assert w.try_reserve(101, 100) == (t.NO_ROOM, None)
    assert w.value == 0


def test_offset_up_to_the_top_of_its_field():
    top = t.OFFSET_MAX
    w = StateWord(word(offset=top - 3))
    assert w.try_reserve(3, top) == (t.OK, top - 3)
    assert fields(w.value) == (top, 1, 0)  # no carry out of the field
    assert w.try_reserve(1, top) == (t.NO_ROOM, None)
    assert w.try_reserve(2**32, top) == (t.NO_ROOM, None)  # no wrap-around either


def test_huge_request_does_not_wrap():
    w = StateWord(word(offset=10))
    assert w.try_reserve(2**64 - 5, t.OFFSET_MAX) == (t.NO_ROOM, None)
    assert w.value == word(offset=10)


def test_writer_count_up_to_its_limit_then_busy():
    w = StateWord(word(offset=0, writers=t.WRITER_MAX - 1))
    assert w.try_reserve(1, 100) == (t.OK, 0)
    assert fields(w.value) == (1, t.WRITER_MAX, 0)
    # At the limit the word is left alone rather than overflowing into the offset.
    assert w.try_reserve(1, 100) == (t.BUSY, None)
    assert fields(w.value) == (1, t.WRITER_MAX, 0)
    w.leave()
    assert w.try_reserve(1, 100) == (t.OK, 1)


def test_shut_bit_survives_reservations_and_leaves():
    w = StateWord(word(flags=t.SHUT))
    assert w.try_reserve(4, 100) == (t.OK, 0)
    w.leave()
    assert fields(w.value) == (4, 0, t.SHUT)


@pytest.mark.parametrize("flags", [0, t.SHUT])
def test_seal_keeps_every_other_field(flags):
    w = StateWord(word(offset=1234, writers=3, flags=flags))
    w.seal()
    assert w.value == word(offset=1234, writers=3, flags=flags | t.SEALED)
