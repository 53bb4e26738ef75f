"""Hostile and unusual .sys files and driver code: each ends as Windows would end it, or as
one clear error, never a Python traceback (the regressions the .sys fuzzer found, and the
misbehaving drivers; ``python -m ntpool.tools.sys_fuzz`` runs the fuzzer long)."""

import os
import struct

import pytest

import ntpool
from ntpool import BugCheck
from ntpool.native import load_native_driver
from ntpool.native.build import SOURCE_DIRECTORY

MiB = 1 << 20
STATUS_INTEGER_DIVIDE_BY_ZERO = 0xC0000094


def sys_bytes(name: str) -> bytes:
    with open(os.path.join(SOURCE_DIRECTORY, name + ".sys"), "rb") as handle:
        return handle.read()


def machine():
    return ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)


def unwind_info_offset(data: bytes, export: str) -> int:
    """The file offset of the UNWIND_INFO of an exported function (through .pdata)."""
    import pefile
    pe = pefile.PE(data=data)
    rva = next(s.address for s in pe.DIRECTORY_ENTRY_EXPORT.symbols if s.name == export.encode())
    directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[3]
    table = pe.get_data(directory.VirtualAddress, directory.Size)
    for at in range(0, len(table), 12):
        begin, end, unwind = struct.unpack_from("<III", table, at)
        if begin <= rva < end:
            return pe.get_offset_from_rva(unwind)
    raise AssertionError(f"{export} has no RUNTIME_FUNCTION")


# --- exception dispatch through damaged unwind data ----------------------------------------------

@pytest.mark.parametrize("frame", [0x10, 0xF0], ids=["frame-rax", "frame-rax-far"])
def test_unwind_data_that_leads_off_the_stack_ends_the_search_unhandled(frame):
    """CaughtDivide's __except would catch its #DE; with its UNWIND_INFO's frame register
    made rax (the dividend), the unwind moves rsp to a user-mode or negative address. Windows'
    RtlDispatchException ends the search there (EXCEPTION_STACK_INVALID) and the divide is
    unhandled: 0x1E with the divide's own code. ntpool read the stack at that address: an
    access violation's code in the bug check, or a ValueError (address -217)."""
    data = bytearray(sys_bytes("faults"))
    data[unwind_info_offset(data, "CaughtDivide") + 3] = frame  # FrameRegister 0, FrameOffset
    k = machine()
    driver = load_native_driver(k, bytes(data), name="faults.sys")
    with pytest.raises(BugCheck) as caught:
        driver.call("CaughtDivide", 7, 0)
    assert caught.value.code == 0x1E
    assert caught.value.parameters[0] == STATUS_INTEGER_DIVIDE_BY_ZERO
    assert "CaughtDivide" in caught.value.detail


def test_an_unwind_code_with_its_slots_missing_ends_the_search_unhandled():
    """An UNWIND_INFO whose CountOfCodes leaves a UWOP_ALLOC_LARGE without its size slot."""
    data = bytearray(sys_bytes("faults"))
    at = unwind_info_offset(data, "CaughtDivide")
    count = data[at + 2]
    data[at + 4 + 2 * (count - 1) + 1] = 0x11  # the last code: UWOP_ALLOC_LARGE, info 1
    k = machine()
    driver = load_native_driver(k, bytes(data), name="faults.sys")
    with pytest.raises(BugCheck) as caught:
        driver.call("CaughtDivide", 7, 0)
    assert (caught.value.code, caught.value.parameters[0]) == (0x1E, STATUS_INTEGER_DIVIDE_BY_ZERO)


# --- the fuzzer itself ------------------------------------------------------------------------------

def test_the_sys_fuzzer_runs_cases_and_reports_none_on_the_fixed_tree():
    from ntpool.tools.sys_fuzz import ALLOWED, supervise
    counts, findings = supervise(40, seed=0, time_limit=30, native_timeout=1.0)
    assert sum(counts.values()) == 40
    assert findings == []
    assert set(counts) <= set(ALLOWED) and counts["refused"] and counts["ran"]


# --- names from the file in messages ----------------------------------------------------------------

def test_a_module_name_with_a_newline_is_refused_in_one_printable_line():
    from ntpool.native import BadImage
    data = sys_bytes("fsfilter")
    assert data.count(b"ntoskrnl.exe\0") == 1
    with pytest.raises(BadImage) as caught:
        load_native_driver(machine(), data.replace(b"ntoskrnl.exe\0", b"nto\nkrnl.\xd6e\0"),
                           name="fsfilter.sys")
    text = str(caught.value)
    assert text.isprintable() and text.isascii()
    assert "imports from nto\\x0akrnl.\\xd6e, a module ntpool does not provide" in text


def test_an_import_name_with_a_control_character_is_listed_escaped():
    from ntpool.native import MissingImports
    data = sys_bytes("fsfilter")
    with pytest.raises(MissingImports) as caught:
        load_native_driver(machine(), data.replace(b"\0DbgPrint\0", b"\0Dbg\rrint\0"),
                           name="fsfilter.sys")
    assert "ntoskrnl.exe!Dbg\\x0drint" in str(caught.value) and str(caught.value).isprintable()
