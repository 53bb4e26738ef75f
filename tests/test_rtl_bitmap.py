"""RTL_BITMAP and its routines (routines/rtl_bitmap.py) from Python drivers: the header and the
bits in the machine's memory, the searches with their hint and wrap-around, against a plain
model of the bits under hypothesis; hostile headers fault as the driver's own access would."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import BugCheckCode
from ntpool.errors import BugCheck
from ntpool.routines.rtl_bitmap import NO_INDEX

WINDOWS = ("7", "11")


def machine(windows="7"):
    return ntpool.Kernel(windows=windows, nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)


def bitmap(k, size, fill=b""):
    """(header, buffer): a header in pool over a buffer in pool, the bits from ``fill``."""
    header = k.ExAllocatePoolWithTag(0, 16, "BmpH")
    buffer = k.ExAllocatePoolWithTag(0, max(4, (size + 31) // 32 * 4), "BmpB")
    k.RtlInitializeBitMap(header, buffer, size)
    k.write(buffer, fill.ljust((size + 31) // 32 * 4, b"\0"))
    return header, buffer


def bits_of(k, buffer, size):
    value = int.from_bytes(k.read(buffer, (size + 7) // 8), "little")
    return [value >> n & 1 for n in range(size)]


def model_find(bits, count, hint, want):
    """The documented search: from the hint (0 if past the end) to the end, then from 0 for
    a run ending before hint + count."""
    size = len(bits)
    start = hint if hint < size else 0
    if count == 0:
        return start & ~7
    if count > size:
        return NO_INDEX

    def first(low, high):
        for index in range(low, high - count + 2):
            if all(bits[n] == want for n in range(index, index + count)):
                return index
        return NO_INDEX

    found = first(start, size - 1)
    if found == NO_INDEX and start:
        found = first(0, min(hint + count, size) - 1)
    return found


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_header_is_the_wdks_layout_and_the_bits_are_in_the_buffer(windows):
    k = machine(windows)
    header, buffer = bitmap(k, 70)
    assert k.read(header, 16) == (70).to_bytes(4, "little") + bytes(4) + buffer.to_bytes(8, "little")
    k.RtlSetBits(header, 3, 10)
    k.RtlSetBit(header, 69)
    assert k.read(buffer, 9) == bytes([0xF8, 0x1F, 0, 0, 0, 0, 0, 0, 0x20])
    assert k.RtlNumberOfSetBits(header) == 11 and k.RtlNumberOfClearBits(header) == 59
    assert k.RtlTestBit(header, 12) == 1 and k.RtlTestBit(header, 13) == 0
    k.RtlClearBit(header, 3)
    k.RtlClearBits(header, 10, 3)
    assert bits_of(k, buffer, 16) == [0] * 4 + [1] * 6 + [0] * 6


def test_set_and_clear_all_write_whole_ulongs():
    k = machine()
    header, buffer = bitmap(k, 33)
    k.write(buffer + 8, b"\xaa")  # the byte after the two ULONGs 33 bits take
    k.RtlSetAllBits(header)
    assert k.read(buffer, 9) == b"\xff" * 8 + b"\xaa"
    assert k.RtlNumberOfSetBits(header) == 33  # the bits past SizeOfBitMap are not counted
    k.RtlClearAllBits(header)
    assert k.read(buffer, 9) == bytes(8) + b"\xaa"


def test_are_bits_clear_and_set_refuse_an_empty_range_or_one_past_the_end():
    k = machine()
    header, _ = bitmap(k, 64, b"\x0f")
    assert k.RtlAreBitsSet(header, 0, 4) == 1 and k.RtlAreBitsSet(header, 0, 5) == 0
    assert k.RtlAreBitsClear(header, 4, 60) == 1 and k.RtlAreBitsClear(header, 3, 2) == 0
    assert k.RtlAreBitsClear(header, 4, 0) == 0 and k.RtlAreBitsClear(header, 60, 5) == 0
    assert k.RtlAreBitsClear(header, 0xFFFFFFFF, 2) == 0  # no wrap past 2**32 either


def test_the_search_wraps_from_the_hint_to_the_start():
    k = machine()
    header, buffer = bitmap(k, 64)
    k.RtlSetBits(header, 40, 24)  # clear: 0..39
    assert k.RtlFindClearBits(header, 8, 50) == 0  # nothing after 50: wraps to the start
    assert k.RtlFindClearBits(header, 8, 10) == 10
    assert k.RtlFindClearBits(header, 8, 64) == 0  # a hint past the end starts at 0
    assert k.RtlFindClearBits(header, 41, 0) == NO_INDEX
    assert k.RtlFindClearBits(header, 65, 0) == NO_INDEX
    assert k.RtlFindClearBits(header, 0, 13) == 8  # NumberToFind 0: the hint's byte
    assert k.RtlFindSetBits(header, 24, 5) == 40
    # From inside a run too short after the hint: the wrapped search finds the run's start.
    k.RtlSetAllBits(header)
    k.RtlClearBits(header, 10, 20)  # clear: 10..29
    assert k.RtlFindClearBits(header, 15, 20) == 10
    assert k.RtlFindClearBits(header, 15, 12) == 12


def test_find_and_set_hands_out_runs_until_none_is_left():
    k = machine()
    header, buffer = bitmap(k, 32)
    taken = [k.RtlFindClearBitsAndSet(header, 8, 0) for _ in range(5)]
    assert taken == [0, 8, 16, 24, NO_INDEX]
    assert k.read(buffer, 4) == b"\xff" * 4
    assert k.RtlFindSetBitsAndClear(header, 8, 9) == 9
    assert k.RtlFindFirstRunClear(header) == (8, 9)
    assert k.RtlFindNextForwardRunClear(header, 12) == (5, 12)
    k.RtlSetAllBits(header)
    assert k.RtlFindFirstRunClear(header)[0] == 0


OPERATIONS = st.lists(st.tuples(st.sampled_from(["set", "clear", "find_clear", "find_set",
                                                 "find_clear_set", "find_set_clear"]),
                                st.integers(0, 100), st.integers(0, 100)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 100), operations=OPERATIONS, seed=st.binary(min_size=13, max_size=13))
def test_every_routine_agrees_with_a_model_of_the_bits(size, operations, seed):
    k = machine()
    header, buffer = bitmap(k, size, seed[: (size + 7) // 8])
    model = bits_of(k, buffer, size)
    for name, a, b in operations:
        if name in ("set", "clear"):
            first = a % size
            count = min(b, size - first)
            (k.RtlSetBits if name == "set" else k.RtlClearBits)(header, first, count)
            model[first:first + count] = [int(name == "set")] * count
        else:
            want = int(name in ("find_set", "find_set_clear"))
            expected = model_find(model, a % (size + 2), b, want)
            routine = {"find_clear": k.RtlFindClearBits, "find_set": k.RtlFindSetBits,
                       "find_clear_set": k.RtlFindClearBitsAndSet,
                       "find_set_clear": k.RtlFindSetBitsAndClear}[name]
            assert routine(header, a % (size + 2), b) == expected
            if name in ("find_clear_set", "find_set_clear") and expected != NO_INDEX:
                count = a % (size + 2)
                model[expected:expected + count] = [1 - want] * count
        assert bits_of(k, buffer, size) == model
    assert k.RtlNumberOfSetBits(header) == sum(model)
    assert k.RtlNumberOfClearBits(header) == size - sum(model)
    length, index = k.RtlFindFirstRunClear(header)
    if 0 in model:
        first = model.index(0)
        end = model.index(1, first) if 1 in model[first:] else size
        assert (length, index) == (end - first, first)
    else:
        assert length == 0


def test_bits_past_the_buffer_overrun_the_next_chunk_as_on_windows():
    k = machine()
    header = k.ExAllocatePoolWithTag(0, 16, "BmpH")
    later = k.ExAllocatePoolWithTag(0, 600, "Next")  # past the lookasides: frees are checked
    buffer = k.ExAllocatePoolWithTag(0, 600, "BmpB")  # split below it: its chunk is next
    assert later == buffer + 0x270
    k.RtlInitializeBitMap(header, buffer, 600 * 8)
    k.RtlSetBits(header, 608 * 8, 8)  # no check of the range: the free build only ASSERTs
    assert k.read(buffer + 608, 1) == b"\xff"  # the next chunk's POOL_HEADER.PreviousSize
    with pytest.raises(BugCheck) as caught:
        k.ExFreePoolWithTag(buffer, "BmpB")
    assert (caught.value.code, caught.value.parameters[0]) == (BugCheckCode.BAD_POOL_HEADER, 0x20)


def test_a_null_header_or_an_unmapped_buffer_is_the_bug_check_of_the_access():
    k = machine()
    with pytest.raises(BugCheck) as caught:
        k.RtlNumberOfSetBits(0)
    assert caught.value.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    k = machine()
    header = k.ExAllocatePoolWithTag(0, 16, "BmpH")
    k.RtlInitializeBitMap(header, 0xFFFFF80FFFF00000, 64)
    with pytest.raises(BugCheck) as caught:
        k.RtlSetBits(header, 0, 5)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA


def test_a_bitmap_over_freed_big_pool_faults():
    k = machine()
    header = k.ExAllocatePoolWithTag(0, 16, "BmpH")
    buffer = k.ExAllocatePoolWithTag(0, 3 * 4096, "BmpB")
    k.RtlInitializeBitMap(header, buffer, 3 * 4096 * 8)
    k.RtlClearAllBits(header)
    k.ExFreePoolWithTag(buffer, "BmpB")
    with pytest.raises(BugCheck) as caught:
        k.RtlFindClearBitsAndSet(header, 4, 0)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA


def test_python_arguments_no_c_caller_could_pass_are_named():
    k = machine()
    header, _ = bitmap(k, 8)
    with pytest.raises(TypeError):
        k.RtlSetBit(header, "3")
