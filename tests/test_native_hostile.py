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
    assert check.name == "DPC_WATCHDOG_VIOLATION"
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


# --- any unwind data ------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=9, max_size=9), st.binary(min_size=0, max_size=32))
def test_any_unwind_info_ends_in_the_handler_or_a_bug_check(codes, scope):
    """CaughtDivide's UNWIND_INFO (still version 1 with its exception handler) given any
    prolog size, code count, frame register and codes, and its scope table any leading
    bytes: dispatching its #DE returns through some __except, or is a bug check (or the
    watchdog's error, for a filter that jumps into a loop): never a Python error."""
    from ntpool.native import NativeError, native_machine
    data = bytearray(sys_bytes("faults"))
    at = unwind_info_offset(data, "CaughtDivide")
    data[at + 1:at + 10] = codes
    scope_at = at + 4 + 2 * 4 + 4  # three codes padded to four, then the handler's RVA
    data[scope_at:scope_at + len(scope)] = scope
    k = machine()
    driver = load_native_driver(k, bytes(data), name="faults.sys")
    native_machine(k).call_timeout = 0.5
    try:
        driver.call("CaughtDivide", 7, 0)
    except (BugCheck, NativeError):
        pass


# --- counts a hostile header makes huge ---------------------------------------------------------------

def test_more_base_relocations_than_the_bound_are_refused_before_they_are_walked():
    """A 60 MiB relocation directory of DIR64 entries took 15 s and 1.5 GiB to read; past
    MAX_RELOCATIONS entries the file is refused (the block's count is checked first)."""
    from ntpool.native import BadImage
    from ntpool.native.pe import MAX_RELOCATIONS, _relocations
    count = MAX_RELOCATIONS + 2
    block = 8 + 2 * count
    image = bytearray(block + 0x1000)
    struct.pack_into("<II", image, 0, 0x1000, block)
    with pytest.raises(BadImage, match="more than 1048576 base relocation entries"):
        _relocations(image, 0, block, len(image), "huge.sys")


def test_an_import_directory_with_no_null_descriptor_is_refused_after_the_bound():
    from ntpool.native import BadImage
    from ntpool.native.pe import MAX_IMPORT_MODULES, _imports
    image = bytearray(0x20000 + 20 * (MAX_IMPORT_MODULES + 10))
    image[0x100:0x10D] = b"ntoskrnl.exe\0"
    for index in range(MAX_IMPORT_MODULES + 5):  # each: a name, an empty thunk list at 0x200
        struct.pack_into("<IIIII", image, 0x20000 + 20 * index, 0x200, 0, 0, 0x100, 0x200)
    with pytest.raises(BadImage, match="more than 1024 import descriptors"):
        _imports(image, 0x20000, 20, len(image), "many.sys")


def test_an_exception_directory_past_the_bound_is_refused():
    from ntpool.native import BadImage, parse_image
    from ntpool.native.pe import MAX_FUNCTIONS
    data = bytearray(sys_bytes("faults"))
    nt = struct.unpack_from("<I", data, 0x3C)[0]
    struct.pack_into("<I", data, nt + 24 + 56, 0x3000000)  # SizeOfImage: room for the directory
    struct.pack_into("<I", data, nt + 24 + 112 + 8 * 3 + 4, 12 * (MAX_FUNCTIONS + 1))
    with pytest.raises(BadImage, match="the exception directory lists 262145 functions"):
        parse_image(bytes(data), "faults.sys")


def test_imports_past_the_stub_pages_room_are_refused_before_any_is_bound(monkeypatch):
    """More distinct imports than the stub pages hold (with allow_missing, each unknown name
    is a stub of its own): refused with the count, nothing bound (was a MemoryError at the
    2048th stub, with the first 2047 kept)."""
    import ntpool.native.machine as machine_module
    from ntpool.native import BadImage, native_machine
    from ntpool.native.cpu import MAX_STUBS
    from ntpool.native.pe import Import, parse_image
    k = machine()
    bindings = native_machine(k).bindings
    image = parse_image(sys_bytes("fsfilter"), "many.sys")
    image = image._replace(imports=tuple(Import("ntoskrnl.exe", f"Missing{n}", None, 0x1000)
                                         for n in range(MAX_STUBS + 1)))
    before = len(bindings.handlers)
    with pytest.raises(BadImage, match=r"many\.sys: imports \d+ distinct routines ntpool has not bound"):
        bindings.check_room(image)
    monkeypatch.setattr(machine_module, "parse_image", lambda data, name: image)
    with pytest.raises(BadImage, match="distinct routines"):
        load_native_driver(k, b"MZ", name="many.sys", allow_missing=True)
    assert len(bindings.handlers) == before and not k.drivers


def test_a_routines_access_violation_unhandled_in_a_system_thread_is_0x7e():
    k, driver = misbehave()
    with pytest.raises(BugCheck) as caught:
        driver.machine.call(driver.address_of("AllocateInto"), (0x1000,), driver, thread="system")
    assert caught.value.code == 0x7E and caught.value.parameters[0] == 0xC0000005
    assert in_function(driver, caught.value.parameters[1], "AllocateInto")


# --- instructions a driver has no business running -----------------------------------------------------

@pytest.mark.parametrize("code, ends", [
    (b"\xf4\xb8\x07\x00\x00\x00\xc3", 7),  # hlt; mov eax, 7; ret: the next tick wakes it
    (b"\xfa\xf4\xc3", "hlt with interrupts disabled"),  # cli; hlt: nothing ever wakes it
], ids=["hlt", "cli-hlt"])
def test_hlt_waits_for_the_next_interrupt(code, ends):
    """unicorn ends a run at hlt; ntpool took that for its watchdog's stop and reported a
    hang at once ("did not return within 60 s" after no time at all)."""
    from ntpool.native import NativeError
    k = machine()
    driver = load_native_driver(k, sys_bytes("faults"), name="faults.sys")
    at = driver.address_of("RaiseAndReport")
    k.write(at, code)
    if isinstance(ends, int):
        assert driver.call(at, 2) == ends
    else:
        with pytest.raises(NativeError, match=ends + r" at faults\.sys\+0x[0-9a-f]+ RaiseAndReport\+0x1"):
            driver.call(at, 2)


def test_an_exception_that_resumes_into_its_own_fault_is_stopped_at_the_deadline():
    """CaughtReadAddress's scope record made to jump back to the faulting read (the fuzzer's
    case 30207 of seed 5): every run of the CPU faults at once, so the watchdog's stop, which
    lands between runs, stopped nothing; the loop went on for seconds past the deadline (up
    to 20 under load). The runner now checks the deadline between runs."""
    import time
    from ntpool.native import NativeError, native_machine
    data = bytearray(sys_bytes("faults"))
    at = unwind_info_offset(data, "CaughtReadAddress")
    target = at + 4 + 2 * 4 + 4 + 4 + 12  # the first scope record's JumpTarget
    jump = struct.unpack_from("<I", data, target)[0]
    struct.pack_into("<I", data, target, jump - 0x10)  # the __try's read itself
    k = machine()
    driver = load_native_driver(k, bytes(data), name="faults.sys")
    native_machine(k).call_timeout = 0.3
    started = time.monotonic()
    with pytest.raises(NativeError, match=r"did not return within 0.3 s .*CaughtReadAddress"):
        driver.call("CaughtReadAddress", 0x1000)
    assert time.monotonic() - started < 3.0


def test_a_driver_that_turns_paging_off_is_named_and_the_cpu_is_set_up_again():
    """xor rax, rax; mov cr0, rax: unicorn can fetch nothing more (UC_ERR_FETCH_UNMAPPED).
    The error says the driver changed CR0, and the next call finds the CPU as ntpool set it."""
    from ntpool.native import NativeError
    k = machine()
    driver = load_native_driver(k, sys_bytes("faults"), name="faults.sys")
    at = driver.address_of("RaiseAndReport")
    k.write(at, b"\x48\x31\xc0\x0f\x22\xc0\xc3")
    with pytest.raises(NativeError, match=r"RaiseAndReport\+0x6\b.*UC_ERR_FETCH_UNMAPPED.*the driver "
                                          r"changed CR0 to 0x[0-9a-f]+ \(ntpool's 0x80010011\)"):
        driver.call(at, 2)
    assert driver.machine.cpu.control_registers_changed() == ""
    assert driver.call("Divide", 6, 3) == 2


def test_a_lookaside_size_past_4_gib_is_kept_as_the_ulong_windows_keeps():
    """ExInitializeNPagedLookasideList's Size is a SIZE_T kept in the list's ULONG Size; a
    value past 4 GiB (the fuzzer's case 2080 of seed 8, --kinds code) raised struct.error."""
    k = machine()
    lookaside = k.ExAllocatePoolWithTag(0, 0x80, "Look")
    k.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, (1 << 32) + 64, "Look", 0)
    from ntpool.routines.runtime import LA_TYPE
    assert struct.unpack("<I", k.read(lookaside + LA_TYPE + 8, 4))[0] == 64  # Type, Tag, Size
    entry = k.ExAllocateFromNPagedLookasideList(lookaside)
    assert entry
    k.ExFreeToNPagedLookasideList(lookaside, entry)
    k.ExDeleteNPagedLookasideList(lookaside)


def test_a_null_out_pointer_faults_where_the_parameter_is_not_optional():
    """NdisAllocateMemoryWithTag's VirtualAddress is _Out_: NULL is the routine's access
    violation at 0 (the bridge skipped the store, as for an _Out_opt_ one, and the call
    succeeded); KeQueryPerformanceCounter's PerformanceFrequency is _Out_opt_: NULL is fine."""
    from ntpool.native import native_machine
    from ntpool.native.bindings import compile_handler
    from ntpool.routines import registry
    k, driver = misbehave()
    assert driver.call("CaughtAllocateInto", 0) & 0xFFFFFFFF == 0xC0000005
    check = bug_check_of(driver, "AllocateInto", 0)
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert check.parameters[2:] == (1, 0)
    k = machine()
    handler = compile_handler(native_machine(k), registry.lookup("KeQueryPerformanceCounter"))
    assert handler(0, 0, 0, 0, 0) >= 0  # no store through the NULL


def test_the_sys_fuzzer_reports_a_python_error_a_hang_and_a_death_with_the_case_to_replay(
        monkeypatch, capsys, tmp_path):
    """The supervisor's own guarantees, with the cases replaced (the worker is forked, so it
    runs the replacements): an exception is a finding with its traceback, a case past the
    time limit is killed and reported, a worker that dies too, and the cases after each
    still run."""
    import os
    import tempfile
    import time
    from ntpool.tools import sys_fuzz

    def case(bases, seed, index, only=None):
        if index == 6:
            raise ValueError("empty range for randrange()")  # the fuzzer's own bug
        return sys_fuzz.Base("fake", b"", None), bytes([index]), None, [f"case {index}"]

    def run(base, data, pdb, directory, native_timeout, done=()):
        assert os.path.isdir(directory)  # the supervisor's, for this worker
        if data == b"\x01":
            raise KeyError("a model bug")
        if data == b"\x03":
            time.sleep(30)
        if data == b"\x05":
            os._exit(9)
        return sys_fuzz.Outcome("ran")

    monkeypatch.setattr(sys_fuzz, "load_bases", lambda names=None: [])
    monkeypatch.setattr(sys_fuzz, "make_case", case)
    monkeypatch.setattr(sys_fuzz, "run_case", run)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert sys_fuzz.main(["--runs", "8", "--seed", "3", "--time-limit", "0.3"]) == 1
    # The killed workers' case directories went too (the supervisor removes each).
    assert not [name for name in os.listdir(tmp_path) if name.startswith("ntpool-sys-fuzz-")]
    out = capsys.readouterr().out
    assert "8 cases in" in out and "ran 4" in out
    assert "FINDING case 6 (?.sys: ): fuzzer-error: making the case: ValueError" in out
    assert "FINDING case 1 (fake.sys: case 1): exception: KeyError: 'a model bug'" in out
    assert "FINDING case 3 (fake.sys: case 3): timeout: the case ran past 0.3 s" in out
    assert "FINDING case 5 (fake.sys: case 5): worker-died: the worker process died" in out
    for index in (1, 3, 5):
        assert f"replay: python -m ntpool.tools.sys_fuzz --seed 3 --case {index}" in out


def test_the_bug_checks_the_fuzzer_met_unnamed_have_their_names():
    """0x44 (an IRP completed twice, which damaged code reaches) was "BUGCHECK_44"."""
    assert BugCheck(0x44).name == "MULTIPLE_IRP_COMPLETE_REQUESTS"


def test_an_in_pointer_to_unmapped_user_memory_is_the_routines_read_access_violation():
    k, driver = misbehave()
    string = k.ExAllocatePoolWithTag(0, 64, "Strg")
    k.write(string, "hello".encode("utf-16-le") + b"\0\0")
    assert driver.call("MeasureString", string) == 10
    check = bug_check_of(driver, "MeasureString", 0x2000)
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert in_function(driver, check.parameters[1], "MeasureString")
    assert check.parameters[2:] == (0, 0x2000)  # a read of 0x2000


def test_a_filter_that_cannot_be_called_on_the_drivers_stack_is_a_double_fault():
    """Inside CaughtRaise's __try (whose filter is a funclet), rsp set to 0x40 and then
    ud2: the frame unwinds through rbp, so the search finds the filter, but its call cannot
    push a frame at rsp 0x40; Windows' push would fault again: a double fault, 0x7F (8).
    ntpool wrote the filter's frame at 0x40 - 0x108 (ValueError, the fuzzer's case 6500 of
    seed 12, --drivers faults --kinds table,region,code)."""
    k = machine()
    driver = load_native_driver(k, sys_bytes("faults"), name="faults.sys")
    at = driver.address_of("CaughtRaise") + 0xD  # the first byte of its __try
    k.write(at, b"\x48\xc7\xc4\x40\x00\x00\x00\x0f\x0b")  # mov rsp, 0x40; ud2
    with pytest.raises(BugCheck) as caught:
        driver.call("CaughtRaise", 0xC000009A)
    assert caught.value.code == 0x7F and caught.value.parameters[0] == 8
    assert "rsp 0x40 is not on the kernel stack" in caught.value.detail


RECURSION_SCRIPT = r"""
import struct, sys
import ntpool
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver
k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
driver = load_native_driver(k, sys.argv[1], name="faults.sys")
machine = driver.machine
at = driver.address_of("Divide")  # 16 bytes, no mov cr8 the loader hooks
slot = driver.image_base + next(i.iat_rva for i in driver.image.imports if i.name == "ExRaiseStatus")
call = at + 4
code = b"\x48\x83\xec\x28" + b"\xff\x15" + struct.pack("<i", slot - (call + 6)) + b"\x48\x83\xc4\x28\xc3"
k.write(at, code)  # sub rsp, 0x28; call [ExRaiseStatus]; add rsp, 0x28; ret
number = machine.bindings.names.index("ExRaiseStatus")
machine.bindings.handlers[number] = lambda *registers: machine.call(at)  # ntpool calls back
try:
    driver.call(at)
except BugCheck as error:
    print(hex(error.code), hex(error.parameters[0]), error.detail)
"""


def test_native_code_and_ntpool_calling_each_other_without_end_is_a_stack_overflow(tmp_path):
    """A routine that calls back into the code that called it, for ever (the fuzzer's seed 13,
    case 5832: a lookaside list's Free routine damaged into deleting its own list): the
    process died of a C stack overflow at 65 nested runs. Now 0x7F (8), a kernel stack
    overflow, as on Windows. Run in a child process, so that a regression kills only it."""
    import subprocess
    import sys
    script = tmp_path / "recurse.py"
    script.write_text(RECURSION_SCRIPT)
    src = os.path.dirname(os.path.dirname(ntpool.__file__))
    result = subprocess.run([sys.executable, str(script), os.path.join(SOURCE_DIRECTORY, "faults.sys")],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=src))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("0x7f 0x8 kernel stack overflow: more than 32 calls nested")


# --- Ctrl-C while native code waits on a routine ---------------------------------------------------

def test_ctrl_c_inside_a_routine_native_code_called_is_a_keyboard_interrupt():
    """A KeyboardInterrupt raised in a routine (Ctrl-C lands in Python code, which is where
    native code's calls run) is carried out of unicorn's hook; the runner made it a
    NativeError, so a library user's Ctrl-C did not stop the program as Ctrl-C does."""
    k, driver = misbehave()
    machine = driver.machine
    number = machine.bindings.names.index("NdisAllocateMemoryWithTag")

    def interrupted(*args):
        raise KeyboardInterrupt

    machine.bindings.handlers[number] = interrupted
    with pytest.raises(KeyboardInterrupt):
        driver.call("AllocateInto", k.ExAllocatePoolWithTag(0, 8, "Outp"))
    assert machine.cpu.depth == 0


# --- a syscall outside the import stubs -------------------------------------------------------------

def test_a_syscall_outside_the_import_stubs_is_an_illegal_instruction_not_the_last_routine_again():
    """Native code's own `syscall` (not an import stub's) made the bridge call whatever routine
    the call block named last, with whatever the block held. Windows' system call entry is
    for user mode; ntpool raises STATUS_ILLEGAL_INSTRUCTION at the driver's instruction."""
    k, driver = misbehave()
    out = k.ExAllocatePoolWithTag(0, 8, "Outp")
    assert driver.call("AllocateInto", out) == 0  # NdisAllocateMemoryWithTag: the last routine
    rows = [(row.Tag, row.NonPagedAllocs) for row in k.pool_tags()]
    check = bug_check_of(driver, "Syscall")
    assert check.code == 0x1E and check.parameters[0] == 0xC000001D
    assert in_function(driver, check.parameters[1], "Syscall")
    assert k.read(check.parameters[1], 2) == b"\x0f\x05"  # the syscall itself
    assert "Syscall+" in check.detail and "misbehave.c:" in check.detail
    assert [(row.Tag, row.NonPagedAllocs) for row in k.pool_tags()] == rows  # nothing called again


def test_a_stray_syscall_is_caught_by_a_try_and_is_0x7e_in_a_system_thread():
    k, driver = misbehave()
    assert driver.call("CaughtSyscall") == 0xC000001D
    with pytest.raises(BugCheck) as caught:
        driver.machine.call(driver.address_of("Syscall"), (), driver, thread="system")
    assert (caught.value.code, caught.value.parameters[0]) == (0x7E, 0xC000001D)


# --- arguments a routine refuses from Python, passed by native code: Windows' answers ---------------

def test_unknown_pool_type_bits_from_native_code_are_ignored_as_windows_ignores_them():
    """ExAllocatePoolWithTag(0x8000 | NonPagedPool): WRK selects the pool by the base type and
    never looks at the other bits; ntpool stopped with NativeError (the Python ValueError)."""
    k, driver = misbehave()
    nonpaged = driver.call("AllocateOfType", 0x8000)
    paged = driver.call("AllocateOfType", 0xFFFFFFFF)  # every bit: PagedPool's base bit among them
    assert nonpaged >> 40 == 0xFFFFFA and paged >> 40 == 0xFFFFF8  # nonpaged, paged pool
    with pytest.raises(ValueError, match="not a POOL_TYPE value"):  # a Python caller: API misuse
        k.ExAllocatePoolWithTag(0x8000, 64, "Misv")


def test_a_priority_that_is_no_ex_pool_priority_is_checked_as_low():
    """WRK's MmResourcesAvailable applies Normal's limit to NormalPoolPriority and Low's to
    anything else that is not HighPoolPriority."""
    from ntpool.native.runtime import native_priority
    assert [native_priority(p) for p in (0, 16, 32, 8, 9, 24, 41, 0x12345, 17, 1, 0xFFFFFFFF)] == \
        [0, 16, 32, 8, 9, 24, 41, 0, 0, 0, 9]
    k, driver = misbehave()
    assert driver.call("AllocateWithPriority", 0x12345)
    assert driver.call("AllocateWithParameter", 16)  # ExAllocatePool3's parameter, from memory
    assert driver.call("AllocateWithParameter", 77)


def test_a_routine_access_that_wraps_past_2_64_faults_where_the_cpu_would():
    """RtlInitUnicodeString of a string at 0xFFFFFFFFFFFFFFFF: its 2-byte read runs past the
    end of the address space (ValueError for Python) and wraps; the page there is not mapped:
    0x50 (address, read, 0 for a routine's access, 0)."""
    k, driver = misbehave()
    check = bug_check_of(driver, "MeasureString", 0xFFFFFFFFFFFFFFFF)
    assert check.code == 0x50 and check.parameters == (0xFFFFFFFFFFFFFFFF, 0, 0, 0)


def test_a_length_no_memory_holds_runs_to_the_first_unmapped_page():
    """memset(p, 0x5A, 2**63 - 1) from a pool allocation: Python could not even build the
    bytes (OverflowError); Windows writes until the first page nothing maps, 0x50 there."""
    k, driver = misbehave()
    p = k.ExAllocatePoolWithTag(0, 64, "Fill")
    check = bug_check_of(driver, "FillEverything", p)
    first_unmapped = next(page for page in range(p & ~0xFFF, 1 << 64, 0x1000)
                          if k.space.translate(page) is None)
    assert check.code == 0x50 and check.parameters == (first_unmapped, 1, 0, 0)


def test_an_irql_past_high_level_through_cr8_is_a_general_protection_fault():
    """wdm.h's inline KeRaiseIrql(0x45): mov cr8 with reserved bits set is #GP; ntpool set
    IRQL 5 (the value's low four bits)."""
    k, driver = misbehave()
    check = bug_check_of(driver, "RaiseIrqlTo", 0x45)
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert in_function(driver, check.parameters[1], "RaiseIrqlTo")
    assert check.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF)
    k, driver = misbehave()
    assert driver.call("RaiseIrqlTo", 2) == 0 and k.current_irql == 0


def test_a_null_spin_lock_faults_at_dispatch_level():
    k, driver = misbehave()
    check = bug_check_of(driver, "AcquireLockAt", 0)
    assert check.code == 0xD1 and check.parameters[:3] == (0, 2, 1)
    assert in_function(driver, check.parameters[3], "AcquireLockAt")


def test_an_irql_routine_given_a_value_past_high_level_raises_the_gp_fault_in_the_routine():
    """KeLowerIrql called through its import (the registry's form) with 69."""
    from ntpool.native import native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    with pytest.raises(BugCheck) as caught:
        machine.call(machine.bindings.stub("KeLowerIrql"), (69,), driver)
    assert caught.value.code == 0x1E
    assert caught.value.parameters[0] == 0xC0000005 and caught.value.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF)


def test_what_ntpool_cannot_model_is_one_error_naming_the_routine_and_the_argument():
    """An NDIS handle that is mapped but is no block NDIS gave out (what NDIS reads there is
    not public): NativeError naming the routine, its call site and the refusal, listed in
    README's departures."""
    from ntpool.native import NativeError, native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    not_a_handle = k.ExAllocatePoolWithTag(0, 0x40, "Hndl")
    with pytest.raises(NativeError, match=r"NdisAllocateMemoryWithTagPriority called from .* "
                                          r"with arguments ntpool cannot model"):
        machine.call(machine.bindings.stub("NdisAllocateMemoryWithTagPriority"),
                     (not_a_handle, 64, 0x7473694D, 16), driver)


@pytest.mark.parametrize("offset", [1, 3, 5, 7])
def test_a_misaligned_spin_lock_is_taken_and_freed_in_its_own_bytes_as_on_x64(offset):
    """x64 Windows takes a KSPIN_LOCK with `lock bts qword [SpinLock], 0`, which the CPU
    runs at any address, and no Windows check refuses a misaligned lock. ntpool stopped the
    run with NativeError ("ntpool keeps locks by their aligned QWORD"); the lock is now the
    8 bytes at its address: held, bit 0 there is set; freed, they are 0; the bytes around
    it are untouched."""
    from ntpool.native import native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    block = k.ExAllocatePoolWithTag(0, 0x20, "Lock")
    k.write(block, bytes(range(0xA0, 0xC0)))
    lock = block + 8 + offset
    machine.call(machine.bindings.stub("KeInitializeSpinLock"), (lock,), driver)
    old = machine.call(machine.bindings.stub("KeAcquireSpinLockRaiseToDpc"), (lock,), driver)
    assert (old, k.current_irql) == (0, 2)
    held = k.read(block, 0x20)
    assert held[8 + offset] & 1 and held[8 + offset + 1:16 + offset] == bytes(7)
    assert held[:8 + offset] == bytes(range(0xA0, 0xA8 + offset))
    assert held[16 + offset:] == bytes(range(0xB0 + offset, 0xC0))
    machine.call(machine.bindings.stub("KeReleaseSpinLock"), (lock, old), driver)
    assert k.current_irql == 0 and k.read(lock, 8) == bytes(8)
    assert driver.call("AcquireLockAt", lock) == 0 and k.current_irql == 0  # the inline pair
    with pytest.raises(BugCheck) as caught:  # still a lock: released twice is 0x10
        machine.call(machine.bindings.stub("KeReleaseSpinLockFromDpcLevel"), (lock,), driver)
    assert caught.value.code == 0x10 and caught.value.parameters[0] == lock


def test_a_misaligned_spin_lock_that_runs_onto_an_unmapped_page_faults_there_as_a_write():
    """The lock's 8 bytes span two pages and the second is not there: the locked bts faults
    on it, after the raise to DISPATCH_LEVEL, as a write: 0xD1 (the page, 2, 1, the call)."""
    k, driver = misbehave()
    block = k.ExAllocatePoolWithTag(0, 0x2000, "Lock")  # two pages of big pool
    after = block + 0x2000
    assert k.space.translate(after) is None
    check = bug_check_of(driver, "AcquireLockAt", after - 4)
    assert check.code == 0xD1 and check.parameters[:3] == (after, 2, 1)
    assert in_function(driver, check.parameters[3], "AcquireLockAt")


def test_a_lookaside_size_below_an_slist_entry_from_native_code_is_kept_as_8():
    """Windows keeps any Size (its 16-byte pool block holds the SLIST_ENTRY a free pushes);
    ntpool refused a Size below 8 with NativeError; it now keeps 8."""
    from ntpool.native import native_machine
    from ntpool.routines.runtime import LA_TYPE
    k, driver = misbehave()
    machine = native_machine(k)
    lookaside = k.ExAllocatePoolWithTag(0, 0x80, "Look")
    machine.call(machine.bindings.stub("ExInitializeNPagedLookasideList"),
                 (lookaside, 0, 0, 0, 4, 0x6B6F6F4C, 0), driver)
    assert struct.unpack("<I", k.read(lookaside + LA_TYPE + 8, 4))[0] == 8
    entry = machine.call(machine.bindings.stub("ExAllocateFromNPagedLookasideList"), (lookaside,), driver)
    assert entry
    with pytest.raises(ValueError, match="smaller than an SLIST_ENTRY"):  # a Python caller
        k.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, 4, "Look", 0)


def test_ndis_free_memory_from_native_code_frees_as_its_memory_flags_say():
    """NdisFreeMemory as NDIS makes it: pool memory freed with any Length (ExFreePool takes
    none), pool memory freed as contiguous memory is MmFreeContiguousMemory's bad pointer,
    0xC2/0x60. ntpool stopped both with NativeError (NdisContractError)."""
    from ntpool.native import native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    free = machine.bindings.stub("NdisFreeMemory")
    p = k.NdisAllocateMemoryWithTag(64, "Ndis")[1]
    machine.call(free, (p, 300, 0), driver)  # the wrong Length: freed all the same
    assert k.pool_tags()[0] is not None and not [r for r in k.pool_tags() if r.Tag == "Ndis" and r.NonPagedUsed]
    q = k.NdisAllocateMemoryWithTag(64, "Ndis")[1]
    with pytest.raises(BugCheck) as caught:
        machine.call(free, (q, 64, 1), driver)  # NDIS_MEMORY_CONTIGUOUS: it is pool memory
    assert caught.value.code == 0xC2 and caught.value.parameters == (0x60, q, 0, 0)


# --- control registers ------------------------------------------------------------------------------

def test_clearing_cr0_wp_lets_the_driver_write_read_only_memory_as_the_processor_does():
    """The rootkit's trick: CR0.WP off, a store into read-only memory (its own .rdata here),
    WP on again. With WP on the same store is 0xBE."""
    k, driver = misbehave()
    assert driver.call("PatchConstant", 0x22) == 0x22
    assert driver.machine.cpu.control_registers_changed() == ""  # WP is back on
    check = bug_check_of(driver, "WriteConstant", 0x33)
    assert check.code == 0xBE


def test_a_handled_fault_leaves_cr0_as_the_driver_set_it():
    """ntpool restores the CPU's clean state after each fault (unicorn keeps delivered
    exceptions); it set CR0.WP again, so the store after the driver's __except was 0xBE."""
    k, driver = misbehave()
    assert driver.call("PatchConstantAfterFault", 0x44, 0x1000) == 0x44


def test_cr0_wp_left_clear_stays_clear_for_the_next_call_as_on_the_processor():
    k, driver = misbehave()
    driver.call("ClearWriteProtect")
    assert driver.machine.cpu.control_registers_changed() == "CR0 to 0x80000011 (ntpool's 0x80010011)"
    driver.call("WriteConstant", 0x55)  # no 0xBE: the processor's WP is off
    assert k.read(driver.address_of("WriteConstant"), 1)  # the machine runs on


def test_an_ndis_handle_nothing_maps_faults_where_ndis_reads_its_block():
    from ntpool.native import native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    with pytest.raises(BugCheck) as caught:
        machine.call(machine.bindings.stub("NdisAllocateMemoryWithTagPriority"),
                     (0, 64, 0x7473694D, 16), driver)
    assert caught.value.code == 0x1E and caught.value.parameters[0] == 0xC0000005
    assert caught.value.parameters[2:] == (0, 0)  # a read of NULL


def test_ctrl_c_stops_native_code_that_never_calls_out_at_once(tmp_path):
    """A driver's endless loop never returns to Python, where CPython runs the SIGINT
    handler: the KeyboardInterrupt waited for the 60 s watchdog. The signal's wakeup byte now
    stops the CPU, and the interrupt is raised at once."""
    import signal
    import subprocess
    import sys
    import time
    script = tmp_path / "hang.py"
    script.write_text(
        "import time, ntpool\n"
        "from ntpool.native import load_native_driver\n"
        "k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)\n"
        f"d = load_native_driver(k, {os.path.join(SOURCE_DIRECTORY, 'faults.sys')!r})\n"
        "print('calling', flush=True)\n"
        "try:\n"
        "    d.call('Hang')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    source = os.path.dirname(os.path.dirname(ntpool.__file__))
    # SIGINT at its default in the child, as in a terminal's foreground command (a suite
    # started in the background by a shell without job control would hand it down ignored).
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": source},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(0.5)  # inside uc_emu_start, in the loop
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().strip() == "interrupted"
        assert time.monotonic() - sent < 10  # not the watchdog's 60 s
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("windows, ends", [("7", "hang"), ("11", 0x133)])
def test_list_links_that_never_lead_back_spin_at_dispatch_level(windows, ends):
    """KeDelayExecutionThread lets a second pass: the balance set manager's scan follows a
    lookaside link a driver made point at itself and never gets back to the head. Windows 8
    and later stop the spin with the DPC watchdog; Windows 7 hangs (ntpool says so)."""
    from ntpool.native import NativeError, native_machine
    from ntpool.routines.runtime import LA_LIST_ENTRY
    k, driver = misbehave(windows)
    machine = native_machine(k)
    lookaside = k.ExAllocatePoolWithTag(0, 0x80, "Look")
    k.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, 64, "Look", 0)
    entry = lookaside + LA_LIST_ENTRY
    k.write(entry, struct.pack("<Q", entry))  # Flink to itself
    interval = k.ExAllocatePoolWithTag(0, 8, "Wait")
    k.write(interval, struct.pack("<q", -30_000_000))  # 3 s: every scan comes round
    delay = machine.bindings.stub("KeDelayExecutionThread")
    if ends == "hang":
        with pytest.raises(NativeError, match="never returns .*DISPATCH_LEVEL.*no DPC watchdog"):
            machine.call(delay, (0, 0, interval), driver)
    else:
        with pytest.raises(BugCheck) as caught:
            machine.call(delay, (0, 0, interval), driver)
        assert caught.value.code == 0x133 and caught.value.parameters == (1, 0x1E00, 0, 0)


def test_sysenter_is_answered_as_a_stray_syscall():
    """unicorn went on past SYSENTER as if nothing happened; 64-bit code cannot enter the
    kernel that way (AMD64: #UD in long mode), so it is STATUS_ILLEGAL_INSTRUCTION there."""
    k, driver = misbehave()
    at = driver.address_of("AllocateOfType")
    k.write(at, b"\x0f\x34\xc3")  # sysenter; ret
    check = bug_check_of(driver, at)
    assert check.code == 0x1E and check.parameters[:2] == (0xC000001D, at)


@pytest.mark.parametrize("value", [0x12, 0x1_8001_0011, 0xA001_0011],
                         ids=["paging-off", "reserved-bits", "nw-without-cd"])
def test_a_cr0_write_the_processor_refuses_in_64_bit_mode_is_a_general_protection_fault(value):
    """mov cr0 that turns paging off (or sets reserved bits): #GP at the instruction (Intel
    SDM, MOV to CR0 in 64-bit mode); ntpool let unicorn run it and stopped with its
    'fetch unmapped' error (NativeError)."""
    k, driver = misbehave()
    check = bug_check_of(driver, "SetCr0", value)
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert in_function(driver, check.parameters[1], "SetCr0")
    assert check.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF)


def test_a_cr3_reload_flushes_and_another_page_table_is_named():
    from ntpool.native import NativeError
    k, driver = misbehave()
    assert driver.call("ReloadCr3") == k.space.cr3 << 12  # the same table: a TLB flush
    with pytest.raises(NativeError, match=r"mov cr3, 0x1000 at misbehave\.sys\+0x[0-9a-f]+ SetCr3\+.*"
                                          r"one address space.*triple-faults"):
        driver.call("SetCr3", 0x1000)
    assert driver.call("AllocateOfType", 0)  # the CPU is as ntpool set it


# --- MDLs that name frames the machine has not got --------------------------------------------------

def mdl_naming_frame(k, machine, driver, frame: int, flags: int = 0x0002) -> int:
    """An MDL over two pages of nonpaged pool, locked, its first frame replaced by ``frame``."""
    from ntpool.routines import layouts as L
    buffer = k.ExAllocatePoolWithTag(0, 0x2000, "MdlB")
    mdl = machine.call(machine.bindings.stub("IoAllocateMdl"), (buffer, 0x2000, 0, 0, 0), driver)
    k.MmBuildMdlForNonPagedPool(mdl)
    k.write(mdl + L.MDL.MdlFlags, struct.pack("<H", flags))  # locked, not nonpaged pool
    k.write(mdl + L.MDL.SIZE, struct.pack("<Q", frame))
    return mdl


@pytest.mark.parametrize("past", [0, 5, 1 << 40])
def test_an_mdl_frame_past_the_machines_memory_is_named_where_windows_would_map_it(past):
    """Windows maps whatever frame an MDL names (WRK iosup.c): device memory, or addresses
    nothing decodes, which the machine has not got. ntpool mapped it and a read of the mapping
    returned b'' (Python) or stopped unicorn (native); it now refuses the mapping, naming the
    MDL and the frame (NativeError from native code; README, departures)."""
    from ntpool.native import NativeError, native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    frame = k.physical.frame_count + past
    mdl = mdl_naming_frame(k, machine, driver, frame)
    with pytest.raises(NativeError, match=rf"MmMapLockedPagesSpecifyCache called from .* MDL "
                                          rf"{mdl:#x} names frame {frame:#x} .*past the machine's"):
        machine.call(machine.bindings.stub("MmMapLockedPagesSpecifyCache"),
                     (mdl, 0, 1, 0, 0, 16), driver)
    with pytest.raises(ValueError, match=f"names frame {frame:#x}"):  # a Python caller
        k.MmMapLockedPagesSpecifyCache(mdl, 0, 1, 0, 0, 16)


def test_a_verified_drivers_mdl_naming_no_memory_is_driver_verifiers_0xc4_0x89():
    """Driver Verifier checks the MDL's frames before it maps them (WRK verifier.c,
    ViCheckMdlPages): a frame that is no RAM, in an MDL without MDL_IO_SPACE, is 0xC4/0x89
    (the MDL, the address of its PFN array entry, the frame)."""
    from ntpool.native import native_machine
    from ntpool.routines import layouts as L

    class Mapper:
        name = "mapper.sys"

        def DriverEntry(self, k, path):
            return 0

        def map(self, k, mdl):
            return k.MmMapLockedPagesSpecifyCache(mdl, 0, 1, 0, 0, 16)

    k, native = misbehave()
    machine = native_machine(k)
    mapper = Mapper()
    k.load_driver(mapper)
    k.verifier.enable("mapper.sys", pool_tracking=True)
    frame = k.physical.frame_count + 3
    good = mdl_naming_frame(k, machine, native, 0x100)
    assert mapper.map(k, good)  # a frame of the machine: mapped
    io_space = mdl_naming_frame(k, machine, native, frame, flags=0x0002 | 0x0800)
    with pytest.raises(ValueError, match="names frame"):  # MDL_IO_SPACE: no Verifier stop
        mapper.map(k, io_space)
    mdl = mdl_naming_frame(k, machine, native, frame)
    with pytest.raises(BugCheck) as caught:
        mapper.map(k, mdl)
    assert caught.value.code == 0xC4
    assert caught.value.parameters == (0x89, mdl, mdl + L.MDL.SIZE, frame)


def test_mm_empty_list_ends_the_frames_an_mdl_maps():
    """A PFN array entry of MM_EMPTY_LIST (-1) ends the MDL's frames: Windows maps none past
    it (WRK iosup.c), and it is no frame to refuse."""
    from ntpool.native import native_machine
    from ntpool.routines import layouts as L
    k, driver = misbehave()
    machine = native_machine(k)
    mdl = mdl_naming_frame(k, machine, driver, 0x100)
    k.write(mdl + L.MDL.SIZE + 8, struct.pack("<Q", 0xFFFFFFFFFFFFFFFF))
    mapped = k.MmMapLockedPagesSpecifyCache(mdl, 0, 1, 0, 0, 16)
    assert k.space.translate(mapped) == 0x100 << 12 | mapped & 0xFFF
    assert k.space.translate((mapped | 0xFFF) + 1) is None


# --- control registers in code written at run time ----------------------------------------------------

MOV_CR8_ROUND_TRIP = bytes.fromhex("b802000000" "440f22c0" "440f20c0" "31c9" "440f22c1" "c3")
PAGING_OFF = bytes.fromhex("0f20c0" "25ffffff7f" "0f22c0" "c3")  # mov rax, cr0; and; mov cr0, rax
OTHER_PAGE_TABLE = bytes.fromhex("b800100000" "0f22d8" "c3")  # mov eax, 0x1000; mov cr3, rax
IRQL_0X45 = bytes.fromhex("b845000000" "440f22c0" "c3")  # mov eax, 0x45; mov cr8, rax


def run_copied_code(code: bytes, windows: str = "10", special_pool: bool = False):
    """misbehave.sys's RunCopiedCode: the driver copies ``code`` into NonPagedPool with its own
    stores and calls it. NonPagedPool is executable memory on every Windows ntpool models
    (all of Windows 7's nonpaged pool; Windows 10/11's NonPagedPool heap), as in Windows."""
    k, driver = misbehave(windows)
    if special_pool:
        k.verifier.enable("misbehave.sys", special_pool=True)
    source = k.ExAllocatePoolWithTag(0, len(code), "Src ")
    k.write(source, code)
    return k, driver, lambda: driver.call("RunCopiedCode", source, len(code), 0)


@pytest.mark.parametrize("windows, special_pool", [("7", False), ("10", False), ("10", True)])
def test_code_a_driver_copies_into_nonpaged_pool_runs_there(windows, special_pool):
    """lea rax, [rip]; ret: the copy runs in place and returns its own address, an
    executable NonPagedPool page (ordinary pool, or special pool's page on request)."""
    k, driver, call = run_copied_code(bytes.fromhex("488d0500000000" "c3"), windows, special_pool)
    address = call() - 7  # (the copy is freed by then)
    region = k.verifier.special_pool.nonpaged_region if special_pool else k.nonpaged_pool
    assert region.base <= address < region.limit
    assert not k.halted


def test_a_mov_cr8_in_code_written_at_run_time_is_the_irql():
    """The loader finds the inline KeRaiseIrql's mov cr8 in the image; in code a driver
    writes at run time it went unseen and unicorn ignored it (IRQL 0 read back); the CPU now
    scans such code as it first runs it: mov cr8, 2 then mov rax, cr8 reads 2."""
    k, driver, call = run_copied_code(MOV_CR8_ROUND_TRIP)
    assert call() == 2 and k.current_irql == 0


def test_a_cr0_write_in_code_written_at_run_time_is_checked_as_the_loaders_are():
    """Paging off: #GP at the mov, in the pool copy (0x1E, as SetCr0's); unicorn had run it
    and the run stopped with NativeError on the next fetch."""
    k, driver, call = run_copied_code(PAGING_OFF)
    with pytest.raises(BugCheck) as caught:
        call()
    check = caught.value
    assert check.code == 0x1E and check.parameters[0] == 0xC0000005
    assert check.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF)
    mov = check.parameters[1]
    assert not driver.mapped.contains(mov) and mov & 0xF == 8  # the copy's third instruction


def test_a_cr3_write_in_code_written_at_run_time_is_named_as_the_loaders_are():
    from ntpool.native import NativeError
    k, driver, call = run_copied_code(OTHER_PAGE_TABLE)
    with pytest.raises(NativeError, match=r"mov cr3, 0x1000 at 0x[0-9a-f]+5: another page table"):
        call()
    assert driver.call("AllocateOfType", 0)  # the CPU is as ntpool set it


def test_an_irql_past_high_level_in_code_written_at_run_time_is_a_general_protection_fault():
    k, driver, call = run_copied_code(IRQL_0X45)
    with pytest.raises(BugCheck) as caught:
        call()
    assert caught.value.code == 0x1E and caught.value.parameters[0] == 0xC0000005
    assert caught.value.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF) and k.current_irql == 0


def test_the_images_read_only_code_is_not_scanned_again_and_the_rest_is():
    """The block hook covers everything but the stubs and each image's executable read-only
    pages (scanned at load): the image's code runs with no hook call."""
    from ntpool.native import native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    text = driver.address_of("AllocateOfType") & ~0xFFF
    assert any(start <= text < end for start, end in machine.fixed_code)
    driver.call("AllocateOfType", 0)
    assert not any(driver.mapped.contains(block) for block in machine.cpu._blocks_seen)


# --- sleeps of years -----------------------------------------------------------------------------------

def _lookaside_state(k, lookaside: int):
    scanner = k.pool.lookaside_scanner
    pools = [(list(pool.system_lookaside.depth), [list(p.depth) for p in pool.per_processor])
             for pool in scanner.pools]
    return k.read(lookaside, 0x80), pools, k.lookaside_scan_count, scanner.pool_scan_count


def _busy_machine():
    from ntpool.routines.runtime import LA_DEPTH
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB, processors=2)
    lookaside = k.ExAllocatePoolWithTag(0, 0x80, "Look")
    k.ExInitializeNPagedLookasideList(lookaside, 0, 0, 0, 64, "Look", 0)
    k.write(lookaside + LA_DEPTH, struct.pack("<HH", 0xFFF3, 0xFFFF))  # a Depth a stray write left
    for size in (40, 100, 200):
        for _ in range(300):
            k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(0, size, "Busy"), "Busy")
    return k, lookaside


def test_a_long_advance_runs_only_the_lookaside_scans_that_change_anything(monkeypatch):
    """Past the bound every list has settled and only the scans' rotation moves: the lists
    and the rotation are exactly what every second's scan would have left."""
    from ntpool.routines.ke_sync import SyncRoutines
    k, lookaside = _busy_machine()
    seconds = k._lookaside_scans_that_matter(10**9) + 20_000
    assert k._lookaside_scans_that_matter(seconds) < seconds
    k.advance_time(seconds)
    bounded = _lookaside_state(k, lookaside)
    monkeypatch.setattr(SyncRoutines, "_lookaside_scans_that_matter", lambda self, n: n)
    k, lookaside = _busy_machine()
    k.advance_time(seconds)
    assert bounded == _lookaside_state(k, lookaside)


def test_a_sleep_of_years_from_native_code_returns():
    """KeDelayExecutionThread of -2**63 (relative, 100 ns units): ntpool ran one lookaside
    scan per simulated second, about 9 * 10**11 of them (a hang in ntpool, found by calling
    every routine with drawn arguments); the sleep now returns, the clock moved on to the
    latest time a LARGE_INTEGER holds (2024 plus 2**63 units is past it)."""
    import time
    from ntpool.native import native_machine
    from ntpool.routines.ke_sync import CLOCK_END
    k, driver = misbehave()
    machine = native_machine(k)
    interval = k.ExAllocatePoolWithTag(0, 8, "Wait")
    k.write(interval, struct.pack("<q", -(1 << 63)))
    before, started = k.system_time, time.process_time()
    assert machine.call(machine.bindings.stub("KeDelayExecutionThread"), (0, 0, interval), driver) == 0
    assert before < k.system_time == CLOCK_END and time.process_time() - started < 10


# --- the call block, ntpool's own page that native code can reach ----------------------------------------

def test_a_routine_writing_into_the_call_block_leaves_the_next_call_its_routine():
    """KeSetEvent given the call block's address sets SignalState at +4: the upper half of
    the routine number's QWORD, which the stubs wrote and cleared as a DWORD. The next import
    call then looked up routine 2**32 + N: IndexError out of the runner (found by calling
    every routine through its stub with drawn arguments). The stubs write the whole QWORD."""
    from ntpool.native import native_machine
    from ntpool.native.cpu import CALL_BLOCK
    k, driver = misbehave()
    machine = native_machine(k)
    machine.call(machine.bindings.stub("KeSetEvent"), (CALL_BLOCK, 0, 0), driver)
    assert driver.call("AllocateOfType", 0)  # an import call after it: the right routine


def test_a_syscall_after_native_code_wrote_the_call_blocks_number_is_a_stray_syscall():
    """Native code's own store of a number past every routine, then its own syscall: the
    stray syscall's answer (STATUS_ILLEGAL_INSTRUCTION), as for the number 0."""
    from ntpool.native.cpu import CALL_BLOCK
    k, driver = misbehave()
    at = driver.address_of("AllocateOfType")
    # mov rax, CALL_BLOCK; mov qword [rax], -1; syscall; ret
    k.write(at, b"\x48\xB8" + struct.pack("<Q", CALL_BLOCK) + b"\x48\xC7\x00\xFF\xFF\xFF\xFF"
            b"\x0F\x05\xC3")
    check = bug_check_of(driver, at)
    assert check.code == 0x1E and check.parameters[0] == 0xC000001D


@pytest.mark.parametrize("windows, ends", [("7", "hang"), ("10", 0x133)])
def test_a_spin_lock_whose_lock_bit_a_stray_write_set_spins_as_on_windows(windows, ends):
    """x64's acquire spins while bit 0 of the QWORD is set: garbage with bit 0 set is a lock
    held by no one who will free it, a spin at DISPATCH_LEVEL (0x133 on Windows 8 and later,
    a hang on Windows 7). ntpool read any value but its own as another processor's (the
    NativeError "held by processor 8532476605449043967", found by calling every routine)."""
    from ntpool.native import NativeError, native_machine
    k, driver = misbehave(windows)
    machine = native_machine(k)
    lock = k.ExAllocatePoolWithTag(0, 8, "Lock")
    k.write(lock, struct.pack("<Q", 0x7669_0000_1234_5679))
    acquire = machine.bindings.stub("KeAcquireSpinLockRaiseToDpc")
    if ends == "hang":
        with pytest.raises(NativeError, match="never returns .*DISPATCH_LEVEL.*lock bit is set"):
            machine.call(acquire, (lock,), driver)
    else:
        with pytest.raises(BugCheck) as caught:
            machine.call(acquire, (lock,), driver)
        assert caught.value.code == 0x133 and caught.value.parameters == (1, 0x1E00, 0, 0)


def test_a_spin_lock_whose_lock_bit_is_clear_is_free_whatever_else_it_holds():
    """Bit 0 clear: x64's lock bts takes the lock, whatever a stray write left above it."""
    from ntpool.native import native_machine
    k, driver = misbehave()
    machine = native_machine(k)
    lock = k.ExAllocatePoolWithTag(0, 8, "Lock")
    k.write(lock, struct.pack("<Q", 0xDEAD_BEEF_0000_0000))
    old = machine.call(machine.bindings.stub("KeAcquireSpinLockRaiseToDpc"), (lock,), driver)
    assert k.current_irql == 2 and k.read(lock, 8)[0] & 1
    machine.call(machine.bindings.stub("KeReleaseSpinLock"), (lock, old), driver)
    assert k.current_irql == 0 and k.read(lock, 8) == bytes(8)


def test_a_mov_cr0_written_into_the_images_own_code_with_wp_cleared_is_checked():
    """CR0.WP cleared, native code writes `mov cr0, rcx; ret` over the start of SetCr3 (its
    read-only .text, scanned at load) and calls it with paging off: #GP at the new mov, as
    for a mov the loader found. Once WP has been cleared every block is scanned; before,
    the page's code was never scanned again and unicorn ran the mov (NativeError)."""
    k, driver, _ = run_copied_code(b"\xC3")
    target = driver.address_of("SetCr3")
    patcher = b"\x48\xB8" + struct.pack("<Q", target) + b"\xC7\x00\x0F\x22\xC1\xC3\xC3"
    source = k.ExAllocatePoolWithTag(0, len(patcher), "Src ")
    k.write(source, patcher)  # mov rax, target; mov dword [rax], <mov cr0, rcx; ret>; ret
    driver.call("ClearWriteProtect")
    driver.call("RunCopiedCode", source, len(patcher), 0)
    assert k.read(target, 4) == b"\x0F\x22\xC1\xC3"
    check = bug_check_of(driver, "SetCr3", 0x12)  # mov cr0 of 0x12: paging off
    assert check.code == 0x1E and check.parameters[:2] == (0xC0000005, target)
    assert check.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF)
