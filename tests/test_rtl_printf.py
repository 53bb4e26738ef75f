"""The printf family (routines/rtl_printf.py) from Python drivers: msvcrt's conversions, flags,
widths and precisions; the counted forms' return convention (-1, no terminator); strings and
counted strings read from the machine; va_lists; hostile formats under hypothesis end in the
routine's answer or a bug check, never a Python error."""

import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import BugCheckCode
from ntpool.errors import BugCheck, MachineHalted
from ntpool.routines.rtl_printf import NotEnoughArguments


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def put(k, data, tag="Strs"):
    address = k.ExAllocatePoolWithTag(0, max(len(data), 1), tag)
    k.write(address, data)
    return address


def narrow(k, text):
    return put(k, text.encode("latin-1") + b"\0")


def wide(k, text):
    return put(k, text.encode("utf-16-le") + b"\0\0")


def unicode_string(k, text):
    buffer = put(k, text.encode("utf-16-le"))
    return put(k, struct.pack("<HH4xQ", 2 * len(text), 2 * len(text), buffer))


def printed(k, fmt, *args, count=200):
    buffer = put(k, b"\xcc" * (count + 8), "Outp")
    result = k._snprintf(buffer, count, narrow(k, fmt), *args)
    text = k.read(buffer, count + 8)
    return result, text[:text.index(b"\0")].decode("latin-1") if b"\0" in text else text


@pytest.mark.parametrize("fmt, args, expected", [
    ("%d|%i|%u", (-5 & 0xFFFFFFFF, 7, -1 & 0xFFFFFFFF), "-5|7|4294967295"),
    ("%x|%X|%#x|%o", (255, 255, 255, 8), "ff|FF|0xff|10"),
    ("%5d|%-5d|%05d|%+d|% d", (42, 42, 42, 42, 42), "   42|42   |00042|+42| 42"),
    ("%.3d|%.0d|%8.3x", (7, 0, 10), "007||     00a"),
    ("%#o|%#x|%05.3d|%#.0o", (8, 0, 7, 0), "010|0|  007|0"),
    ("%I64x|%llx|%I64d|%lld", (1 << 40, 1 << 40, -2 & (1 << 64) - 1, 3), "10000000000|10000000000|-2|3"),
    ("%hd|%hhx|%lx", (0x12345, 0x1FF, 0xDEADBEEF), "9029|ff|deadbeef"),
    ("%p", (0xFFFFFA8000001230,), "FFFFFA8000001230"),
    ("%c%c%C", (ord("o"), ord("k") | 0x100, ord("!")), "ok!"),
    ("%*d|%-*d|%.*d", (4, 1, 3, 2, 3, 5), "   1|2  |005"),
    ("100%%", (), "100%"),
    ("%y%d", (1,), "%y1"),
])
def test_conversions_flags_and_sizes(k, fmt, args, expected):
    assert printed(k, fmt, *args) == (len(expected), expected)


def test_strings_are_read_from_the_machine(k):
    assert printed(k, "[%s][%.3s][%8s][%-4s]", narrow(k, "pool"), narrow(k, "abcdef"),
                   narrow(k, "tag"), narrow(k, "x")) == (27, "[pool][abc][     tag][x   ]")
    assert printed(k, "%S|%ws|%ls|%hs", wide(k, "wide"), wide(k, "w2"), wide(k, "l"),
                   narrow(k, "h")) == (11, "wide|w2|l|h")
    assert printed(k, "%wZ|%.2wZ", unicode_string(k, "Device"), unicode_string(k, "Dev")) == \
        (9, "Device|De")
    ansi_buffer = put(k, b"ANSI!")
    assert printed(k, "%Z", put(k, struct.pack("<HH4xQ", 4, 5, ansi_buffer))) == (4, "ANSI")
    assert printed(k, "%s|%S|%wZ", 0, 0, 0) == (20, "(null)|(null)|(null)")


def test_the_counted_form_returns_minus_one_and_writes_no_terminator_when_it_does_not_fit(k):
    buffer = put(k, b"\xcc" * 16, "Outp")
    fmt = narrow(k, "%s")
    assert k._snprintf(buffer, 8, fmt, narrow(k, "1234567")) == 7  # fits with its NUL
    assert k.read(buffer, 9) == b"1234567\0\xcc"
    k.write(buffer, b"\xcc" * 16)
    assert k._snprintf(buffer, 8, fmt, narrow(k, "12345678")) == 8  # exactly Count: no NUL
    assert k.read(buffer, 9) == b"12345678\xcc"
    k.write(buffer, b"\xcc" * 16)
    assert k._snprintf(buffer, 8, fmt, narrow(k, "123456789")) == -1
    assert k.read(buffer, 9) == b"12345678\xcc"
    assert k._snprintf(0, 0, narrow(k, "")) == 0 and k._snprintf(0, 0, fmt, narrow(k, "a")) == -1


def test_the_wide_forms(k):
    buffer = put(k, b"\xcc" * 64, "Outp")
    result = k._snwprintf(buffer, 20, wide(k, "%s=%d %S %wZ ✓"), wide(k, "n"), 5, narrow(k, "a"),
                          unicode_string(k, "Ü"))
    assert result == 9 and k.read(buffer, 20).decode("utf-16-le") == "n=5 a Ü ✓\0"
    k.write(buffer, b"\xcc" * 64)
    assert k._snwprintf(buffer, 3, wide(k, "%d"), 12345) == -1
    assert k.read(buffer, 8) == "123".encode("utf-16-le") + b"\xcc\xcc"
    assert k.swprintf(buffer, wide(k, "%c%C"), ord("Ω"), ord("x")) == 2
    assert k.read(buffer, 6).decode("utf-16-le") == "Ωx\0"


def test_va_lists_are_8_byte_slots_in_memory(k):
    buffer = put(k, b"\xcc" * 64, "Outp")
    slots = put(k, struct.pack("<QQQ", 0xFFFFFFFF, narrow(k, "va"), 1 << 33), "Args")
    assert k._vsnprintf(buffer, 64, narrow(k, "%d %s %I64x"), slots) == 15
    assert k.read(buffer, 16) == b"-1 va 200000000\0"
    assert k.vsprintf(buffer, narrow(k, "%s!"), slots + 8) == 3
    assert k._vsnwprintf(buffer, 4, wide(k, "%u"), slots) == -1
    assert k.read(buffer, 8).decode("utf-16-le") == "4294"


def test_an_uncounted_sprintf_overruns_its_buffer_as_on_windows(k):
    fmt = narrow(k, "%700d")
    buffer, later = sorted(k.ExAllocatePoolWithTag(0, 600, "Outp") for _ in range(2))
    assert later == buffer + 0x270  # past the lookasides: frees are checked
    assert k.sprintf(buffer, fmt, 1) == 700  # runs over the next POOL_HEADER
    with pytest.raises(BugCheck) as caught:
        k.ExFreePoolWithTag(buffer, "Outp")
    assert caught.value.code == BugCheckCode.BAD_POOL_HEADER


def test_a_huge_width_into_a_counted_buffer_is_minus_one_at_once(k):
    buffer = put(k, b"\xcc" * 16, "Outp")
    assert k._snprintf(buffer, 8, narrow(k, "%2147483647d"), 1) == -1
    assert k.read(buffer, 9) == b" " * 8 + b"\xcc"


def test_bad_string_pointers_and_a_null_format_are_bug_checks(k):
    buffer = put(k, b"\0" * 16, "Outp")
    with pytest.raises(BugCheck) as caught:
        k._snprintf(buffer, 16, narrow(k, "%s"), 0xFFFFF80FFFF00000)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    with pytest.raises(BugCheck) as caught:
        k._snprintf(put(k, b"\0" * 16), 16, 0)
    assert caught.value.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED


@pytest.mark.parametrize("fmt, address", [("%Z", 0xFFFFFFFFFFFFFFF1), ("%wZ", 0xFFFFFFFFFFFFFFF9),
                                          ("%S", 0xFFFFFFFFFFFFFFFF)])
def test_a_string_argument_at_the_top_of_the_address_space_faults(fmt, address):
    """A string (or its counted header) that would run past the top of the address space
    starts on the top page, never mapped: the page fault's bug check, not an error."""
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    with pytest.raises(BugCheck) as caught:
        k._snprintf(put(k, b"\0" * 16, "Outp"), 16, narrow(k, fmt), address)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA


def test_a_python_caller_short_of_arguments_is_told(k):
    with pytest.raises(NotEnoughArguments):
        k._snprintf(put(k, b"\0" * 16), 16, narrow(k, "%d %d"), 1)


@settings(max_examples=150, deadline=None)
@given(spec=st.tuples(st.sampled_from(["", "-", "0", "+", " ", "#", "-0", "+0", "#0"]),
                      st.one_of(st.none(), st.integers(0, 30)), st.one_of(st.none(), st.integers(0, 30)),
                      st.sampled_from("diuxXo")),
       value=st.integers(-(1 << 31), (1 << 31) - 1))
def test_integer_conversions_follow_the_c_rules(spec, value):
    """Python's % is C's printf for these, but for what C says otherwise: the 0 flag is
    ignored with a precision, + and space only sign signed conversions (and %u is %d of the
    unsigned value); the cases where Python differs (#o, # of 0, precision 0 of 0) are the
    parametrized test's."""
    flags, width, precision, conversion = spec
    assume(not ("#" in flags and (conversion == "o" or value == 0)))
    assume(not (precision == 0 and value == 0))
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    tail = ("" if width is None else str(width)) + ("" if precision is None else "." + str(precision))
    python_flags = flags.replace("0", "") if precision is not None else flags
    if conversion not in "di":
        python_flags = python_flags.replace("+", "").replace(" ", "")
    shown = value if conversion in "di" else value & 0xFFFFFFFF
    expected = ("%" + python_flags + tail + ("d" if conversion == "u" else conversion)) % shown
    assert printed(k, "%" + flags + tail + conversion, value & 0xFFFFFFFF, count=100) == \
        (len(expected), expected)


@settings(max_examples=300, deadline=None)
@given(fmt=st.text(alphabet=st.sampled_from(list("%-+ #0123456789.*hlwIZzjtLdiuxXocCsSpneEfgG6432 ab")),
                   max_size=24),
       args=st.lists(st.integers(0, (1 << 64) - 1), max_size=6), count=st.integers(0, 64))
def test_any_format_ends_in_an_answer_or_a_bug_check(fmt, args, count):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    buffer = put(k, bytes(80), "Outp")
    arguments = [a if a & 1 else narrow(k, "s") for a in args]  # some strings, some junk
    try:
        result = k._snprintf(buffer, count, narrow(k, fmt), *arguments)
    except (BugCheck, MachineHalted, NotEnoughArguments):
        return
    assert result == -1 or 0 <= result <= count
    assert k.read(buffer + count, 80 - count) == bytes(80 - count)  # nothing past Count


def test_the_family_is_declared_variadic_in_the_registry():
    import inspect

    from ntpool.routines import registry
    for name in ("_snprintf", "_snwprintf", "sprintf", "swprintf"):
        entry = registry.lookup(name)
        assert entry.variadic and entry.signature.endswith("...)")
        kinds = [p.kind for p in inspect.signature(entry.function).parameters.values()]
        assert kinds[-1] == inspect.Parameter.VAR_POSITIONAL
    assert not registry.lookup("_vsnprintf").variadic
