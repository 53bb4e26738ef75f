"""x64_struct: the host's cheaper native format is used only where it lays out x64's bytes alike."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntpool.machine.memory import PhysicalMemory
from ntpool.packing import QWORD_VIEW, SIGNED_QWORD_VIEW, x64_struct

CODES = "BHIQbhiqx"


@st.composite
def formats_and_values(draw):
    codes = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=12))
    text = "<" + "".join(codes)
    values = []
    for code in codes:
        if code == "x":
            continue
        bits = struct.calcsize("<" + code) * 8
        low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if code.islower() else (0, (1 << bits) - 1)
        values.append(draw(st.integers(low, high)))
    return text, values


@settings(max_examples=400, deadline=None)
@given(formats_and_values())
def test_an_x64_struct_packs_and_unpacks_the_bytes_the_standard_format_does(case):
    text, values = case
    standard, chosen = struct.Struct(text), x64_struct(text)
    assert chosen.size == standard.size
    packed = standard.pack(*values)
    assert chosen.pack(*values) == packed
    assert chosen.unpack(packed) == tuple(values)
    buffer = bytearray(standard.size + 8)
    chosen.pack_into(buffer, 3, *values)
    assert bytes(buffer[3:3 + standard.size]) == packed


def test_aligned_qword_structures_use_the_native_long_where_it_is_8_bytes():
    native = struct.calcsize("@l") == 8
    assert x64_struct("<QQ").format == ("@LL" if native else "<QQ")
    assert x64_struct("<IIQ").format == ("@IIL" if native else "<IIQ")
    assert x64_struct("<4q").format == ("@4l" if native else "<4q")


@pytest.mark.parametrize("text", ["<BQ", "<HQ", "<IQI", "<BIQ", "<xxxxxq", "<QB"])
def test_a_structure_whose_qword_is_not_aligned_keeps_the_standard_format(text):
    # Native formats align each field (and "<QB" is the standard's 9 bytes either way).
    chosen = x64_struct(text)
    assert chosen.size == struct.calcsize(text)
    if struct.calcsize("@" + text[1:].replace("Q", "L").replace("q", "l")) != struct.calcsize(text):
        assert chosen.format == text


def test_a_format_that_is_not_little_endian_is_refused():
    with pytest.raises(ValueError, match="starts with '<'"):
        x64_struct("QQ")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.integers(0, 255))
def test_the_memory_views_read_and_write_x64_little_endian_qwords(value, index):
    memory = PhysicalMemory(16 * 4096)
    unsigned = memoryview(memory.buffer).cast(QWORD_VIEW)
    signed = memoryview(memory.buffer).cast(SIGNED_QWORD_VIEW)
    memory.qwords[index] = value
    assert memory.buffer[index * 8:index * 8 + 8] == value.to_bytes(8, "little")
    assert unsigned[index] == value
    assert signed[index] == int.from_bytes(value.to_bytes(8, "little"), "little", signed=True)
