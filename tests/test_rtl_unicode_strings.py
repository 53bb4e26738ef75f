"""Counted UNICODE_STRINGs compared, copied and upcased WCHAR by WCHAR, as Windows does: a
surrogate is one unit like any other, and case-insensitive comparison upcases each WCHAR
to one WCHAR (so "ß" is not "SS"). The UNICODE_STRING itself is read in one piece when it
lies in one page, field by field when a page boundary falls inside it."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.errors import BugCheck
from ntpool.routines.rtl_strings import upcase_table

NP, PAGED = 0, 1


def _string(k, units, maximum=None, pool=NP):
    """A UNICODE_STRING (and its buffer) holding ``units`` (a list of WCHARs)."""
    data = struct.pack(f"<{len(units)}H", *units)
    maximum = len(data) + 2 if maximum is None else maximum
    buffer = k.ExAllocatePoolWithTag(pool, max(maximum, 2), "Strg")
    k.write(buffer, data)
    header = k.ExAllocatePoolWithTag(pool, 16, "Strg")
    k.write(header, struct.pack("<HH4xQ", len(data), maximum, buffer))
    return header


def _upcased(unit):
    """The reference: one WCHAR to one WCHAR, Unicode's simple uppercase where Python's
    uppercase of it is one BMP character."""
    upper = chr(unit).upper()
    return ord(upper) if len(upper) == 1 and ord(upper) < 0x10000 else unit


def _expected_compare(a, b, case_insensitive):
    if case_insensitive:
        a, b = [_upcased(u) for u in a], [_upcased(u) for u in b]
    for x, y in zip(a, b):
        if x != y:
            return x - y
    return len(a) - len(b)


# WCHARs from the interesting places: ASCII letters, Latin-1 (ß, ÿ), Greek, surrogates.
WCHAR = st.one_of(st.integers(0x41, 0x5A), st.integers(0x61, 0x7A), st.sampled_from(
    [0xDF, 0xFF, 0x178, 0x3C3, 0x3A3, 0x130, 0x131, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xE000, 0xFFFF, 0]))
UNITS = st.lists(WCHAR, max_size=12)


@settings(max_examples=200, deadline=None)
@given(UNITS, UNITS, st.booleans(), st.booleans())
def test_compare_equal_and_prefix_go_wchar_by_wchar(a, b, case_insensitive, share_prefix):
    if share_prefix:
        b = a + b
    k = ntpool.Kernel()
    one, two = _string(k, a), _string(k, b)
    expected = _expected_compare(a, b, case_insensitive)
    assert k.RtlCompareUnicodeString(one, two, case_insensitive) == expected
    assert k.RtlEqualUnicodeString(one, two, case_insensitive) == int(len(a) == len(b) and expected == 0)
    assert k.RtlPrefixUnicodeString(one, two, case_insensitive) == \
        int(len(a) <= len(b) and _expected_compare(a, b[:len(a)], case_insensitive) == 0)


def test_known_answers(k):
    def compare(a, b, ci):
        return k.RtlCompareUnicodeString(_string(k, [ord(c) for c in a]),
                                         _string(k, [ord(c) for c in b]), ci)
    assert compare("abc", "ABD", True) == ord("C") - ord("D")
    assert compare("straße", "STRASSE", True) != 0  # ß upcases to itself, not to "SS"
    assert compare("ÿ", "Ÿ", True) == 0  # U+00FF's uppercase is U+0178, outside Latin-1
    assert compare("ab", "abc", False) == -1
    # U+E000 against U+10000 (the surrogates D800 DC00): by WCHAR, not by code point.
    assert k.RtlCompareUnicodeString(_string(k, [0xE000]), _string(k, [0xD800, 0xDC00]), False) == 0x800
    assert k.RtlEqualUnicodeString(_string(k, [0xD800]), _string(k, [0xD801]), False) == 0


def test_strings_of_different_lengths_are_unequal_before_a_buffer_is_read(k):
    one = _string(k, [0x41])
    two = k.ExAllocatePoolWithTag(NP, 16, "Strg")
    k.write(two, struct.pack("<HH4xQ", 4, 4, 0xFFFFF8A0DEAD0000))  # a Buffer on no page
    assert k.RtlEqualUnicodeString(one, two, True) == 0
    assert k.RtlPrefixUnicodeString(two, one, True) == 0  # String1 longer: no read either
    k.write(two, struct.pack("<HH4xQ", 2, 4, 0xFFFFF8A0DEAD0000))  # the same Length: it is read
    with pytest.raises(BugCheck) as caught:
        k.RtlEqualUnicodeString(one, two, True)
    assert caught.value.code == 0x50


def test_upcasing_keeps_the_length_and_each_wchar_maps_to_one(k):
    source = _string(k, [ord(c) for c in "straße"] + [0xD800, 0x3C3])
    destination = k.ExAllocatePoolWithTag(NP, 16, "Strg")
    assert k.RtlUpcaseUnicodeString(destination, source, True) == 0
    length, maximum, buffer = struct.unpack("<HH4xQ", k.read(destination, 16))
    assert length == 16
    assert struct.unpack("<8H", k.read(buffer, 16)) == tuple(ord(c) for c in "STRAßE") + (0xD800, 0x3A3)
    assert k.towupper(0xDF) == 0xDF and k.towupper(ord("a")) == ord("A")
    assert k.towlower(0x130) == 0x130  # İ lowers to "i" and a combining dot (two): left as it is
    assert k.towlower(ord("Q")) == ord("q")
    assert upcase_table()[0x3C2] == 0x3A3  # final sigma


@settings(max_examples=60, deadline=None)
@given(UNITS, st.integers(0, 30), st.integers(0xF00, 0xFFC))
def test_a_copy_truncates_to_the_destination_and_terminates_when_there_is_room(units, maximum, offset):
    k = ntpool.Kernel()
    source = _string(k, units)
    page = k.ExAllocatePoolWithTag(NP, 0x2000, "Strg")
    buffer = page + offset  # near the end of the allocation's first page
    k.write(buffer, b"\xEE" * 40)
    destination = k.ExAllocatePoolWithTag(NP, 16, "Strg")
    k.write(destination, struct.pack("<HH4xQ", 0, maximum, buffer))
    k.RtlCopyUnicodeString(destination, source)
    count = min(2 * len(units), maximum) & ~1
    data = struct.pack(f"<{len(units)}H", *units)[:count]
    expected = data + (b"\0\0" if count + 2 <= maximum else b"")
    assert k.read(buffer, 40) == expected + b"\xEE" * (40 - len(expected))
    assert struct.unpack("<H", k.read(destination, 2))[0] == count


@pytest.mark.parametrize("offset", [0xFF0, 0xFF4, 0xFF8, 0xFFC])
def test_a_string_across_a_page_boundary_faults_at_the_field_windows_reads(k, offset):
    """Field by field: the first field on the page not present is where the fault is."""
    region = k.ExAllocatePoolWithTag(PAGED, 0x3000, "Strg")
    page = (region + 0xFFF) & ~0xFFF
    header = page + offset
    k.write(header, struct.pack("<HH4xQ", 2, 2, region))
    k.write(region, "A".encode("utf-16-le"))
    k.pager.page_out(page + 0x1000)
    k.KeRaiseIrql(2)
    one = _string(k, [0x41])
    if offset == 0xFF0:  # all of it on the first page: no fault
        assert k.RtlEqualUnicodeString(header, one, False) == 1
        return
    with pytest.raises(BugCheck) as caught:
        k.RtlEqualUnicodeString(header, one, False)
    assert caught.value.code == 0x0A
    first_field_past = {0xFF4: page + 0x1000, 0xFF8: page + 0x1000, 0xFFC: page + 0x1004}[offset]
    assert caught.value.parameters[0] == first_field_past
