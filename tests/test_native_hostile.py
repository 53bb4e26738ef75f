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


# --- sizes the machine cannot give -------------------------------------------------------------------

def test_an_image_larger_than_free_memory_fails_the_load_as_windows_does_and_takes_nothing():
    """SizeOfImage 64 MiB (ntpool's largest) in a machine with less free memory: the load
    fails with STATUS_INSUFFICIENT_RESOURCES, as MmLoadSystemImage's does, naming the image
    and the frames; no frame is kept (was OutOfFrames, a MemoryError, mid-mapping)."""
    data = bytearray(sys_bytes("leak"))
    nt = struct.unpack_from("<I", data, 0x3C)[0]
    struct.pack_into("<I", data, nt + 24 + 56, 0x4000000)  # OptionalHeader.SizeOfImage
    k = machine()
    from ntpool.native import native_machine
    native_machine(k)  # the CPU's own pages are made first
    used = k.physical.frames_used
    with pytest.raises(ntpool.NtStatusError) as caught:
        load_native_driver(k, bytes(data), name="leak.sys")
    assert caught.value.status == 0xC000009A
    assert "leak.sys: its image of 0x4000000 bytes" in str(caught.value)
    assert k.physical.frames_used == used and not k.drivers and not k.halted


# --- misbehave.sys: a driver's worst habits, each ending as Windows ends it ------------------------

def misbehave(windows: str = "7"):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB, windows=windows)
    return k, load_native_driver(k, os.path.join(SOURCE_DIRECTORY, "misbehave.sys"))


def bug_check_of(driver, export: str, *args) -> BugCheck:
    with pytest.raises(BugCheck) as caught:
        driver.call(export, *args)
    return caught.value


def in_function(driver, address: int, export: str) -> bool:
    start = driver.address_of(export)
    return start <= address < start + 0x40


UNMAPPED_KERNEL = 0xFFFFF8A012345678


def test_a_wild_store_to_an_unmapped_kernel_address_is_0x50_naming_the_line():
    k, driver = misbehave()
    check = bug_check_of(driver, "WildWrite", UNMAPPED_KERNEL)
    assert check.code == 0x50 and check.parameters[:2] == (UNMAPPED_KERNEL, 1)
    assert in_function(driver, check.parameters[2], "WildWrite") and check.parameters[3] == 0
    assert "misbehave.sys+0x" in check.detail and "misbehave.c:" in check.detail


@pytest.mark.parametrize("address, parameters", [
    (0x1000, (1, 0x1000)),  # a user-mode address: an access violation (write, address)
    (0x8000000000000000, (0, 0xFFFFFFFFFFFFFFFF)),  # non-canonical: #GP, as Windows reports it
], ids=["user", "non-canonical"])
def test_a_wild_store_elsewhere_is_an_unhandled_access_violation(address, parameters):
    k, driver = misbehave()
    check = bug_check_of(driver, "WildWrite", address)
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert in_function(driver, check.parameters[1], "WildWrite")
    assert check.parameters[2:] == parameters


def test_a_wild_store_at_dispatch_level_is_0xd1():
    k, driver = misbehave()
    check = bug_check_of(driver, "WildWriteAtDispatch", UNMAPPED_KERNEL)
    assert check.code == 0xD1 and check.parameters[:3] == (UNMAPPED_KERNEL, 2, 1)
    assert in_function(driver, check.parameters[3], "WildWriteAtDispatch")


def test_a_call_through_a_null_function_pointer_is_an_access_violation_at_zero():
    k, driver = misbehave()
    check = bug_check_of(driver, "CallPointer", 0)
    assert check.code == 0x1E and check.parameters == (0xC0000005, 0, 8, 0)


def test_a_call_into_unmapped_kernel_memory_is_0x50_for_an_instruction_fetch():
    k, driver = misbehave()
    check = bug_check_of(driver, "CallPointer", UNMAPPED_KERNEL)
    assert check.code == 0x50 and check.parameters[:3] == (UNMAPPED_KERNEL, 8, UNMAPPED_KERNEL)


def test_an_out_pointer_to_unmapped_user_memory_raises_in_the_routine_to_the_callers_frames():
    """NdisAllocateMemoryWithTag writes its result through the driver's pointer: to a user-mode
    address nothing maps, the routine's store is an access violation raised to its caller
    (unhandled: 0x1E naming the call; inside __try: caught). ntpool bug-checked at once, so
    the driver's __except never ran."""
    k, driver = misbehave()
    assert driver.call("CaughtAllocateInto", 0x1000) & 0xFFFFFFFF == 0xC0000005
    check = bug_check_of(driver, "AllocateInto", 0x1000)
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert in_function(driver, check.parameters[1], "AllocateInto")
    assert check.parameters[2:] == (1, 0x1000) and "AllocateInto" in check.detail


def test_an_out_pointer_to_unmapped_kernel_memory_is_0x50():
    k, driver = misbehave()
    check = bug_check_of(driver, "AllocateInto", UNMAPPED_KERNEL)
    assert check.code == 0x50 and check.parameters[:2] == (UNMAPPED_KERNEL, 1)


def test_an_endless_loop_at_dispatch_level_is_the_dpc_watchdog_on_windows_10():
    from ntpool.native import native_machine
    k, driver = misbehave("11")
    native_machine(k).call_timeout = 0.2
    check = bug_check_of(driver, "SpinAtDispatch")
    assert check.code == 0x133 and check.parameters == (1, 0x1E00, 0, 0)
    assert "SpinAtDispatch" in check.detail


def test_an_endless_loop_on_windows_7_is_stopped_with_a_clear_error_naming_the_irql():
    from ntpool.native import NativeError, native_machine
    k, driver = misbehave("7")
    native_machine(k).call_timeout = 0.2
    with pytest.raises(NativeError, match=r"did not return within 0.2 s .*SpinAtDispatch.*IRQL 2"):
        driver.call("SpinAtDispatch")


def test_an_unresolved_import_is_refused_with_the_loaders_status():
    from ntpool.native import MissingImports
    data = sys_bytes("fsfilter").replace(b"\0DbgPrint\0", b"\0DbgPrinX\0")
    with pytest.raises(MissingImports) as caught:
        load_native_driver(machine(), data, name="fsfilter.sys")
    assert caught.value.status == 0xC0000263  # STATUS_DRIVER_ENTRYPOINT_NOT_FOUND
    assert "ntoskrnl.exe!DbgPrinX" in str(caught.value)
    assert "STATUS_DRIVER_ENTRYPOINT_NOT_FOUND" in str(caught.value)
