"""mm.sys (samples/wdm/mm.c), a compiled driver calling the memory manager's routines: each
routine through the native bridge, their misuse answered with Windows' bug checks and the
driver's line, and code rewritten through a second mapping of its frames (an MDL of its own
.text, MmMapIoSpace of its frame) with CR0.WP never cleared, caught as a code write."""

import os

import pytest

import ntpool
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver, native_machine
from ntpool.native.build import source_directory

PAGE = 4096
MM_SYS = os.path.join(source_directory("mm"), "mm.sys")
WINDOWS = ("7", "11")


def loaded(windows="7"):
    k = ntpool.Kernel(windows=windows, nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)
    return k, load_native_driver(k, MM_SYS)


def source_line(text):
    with open(os.path.join(source_directory("mm"), "mm.c")) as source:
        return next(number for number, line in enumerate(source, 1) if text in line)


def tag_use(k, tag):
    for row in k.pool_tags():
        if row.Tag == tag:
            return row.NonPagedAllocs - row.NonPagedFrees
    return 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_driver_imports_every_routine_and_loads(windows):
    k, driver = loaded(windows)
    imported = {entry.name for entry in driver.image.imports}
    assert {"MmAllocateContiguousMemory", "MmAllocateContiguousMemorySpecifyCacheNode",
            "MmFreeContiguousMemory", "MmFreeContiguousMemorySpecifyCache",
            "MmAllocateNonCachedMemory", "MmFreeNonCachedMemory", "MmGetPhysicalAddress",
            "MmIsAddressValid", "MmGetVirtualForPhysical", "MmSizeOfMdl", "MmCreateMdl",
            "IoBuildPartialMdl", "MmAllocatePagesForMdlEx", "MmFreePagesFromMdl", "MmMapIoSpace",
            "MmUnmapIoSpace", "IoAllocateErrorLogEntry", "IoWriteErrorLogEntry",
            "IoFreeErrorLogEntry", "MmAllocateMappingAddress", "MmFreeMappingAddress",
            "MmMapLockedPagesWithReservedMapping", "MmUnmapReservedMapping"} <= imported


@pytest.mark.parametrize("windows", WINDOWS)
def test_contiguous_memory_from_native_code(windows):
    k, driver = loaded(windows)
    va = driver.call("AllocateContiguous", 2 * PAGE + 1, 0xFFFFFFFF)
    assert k.read(va, 1) == b"\x5a" and k.read(va + 2 * PAGE, 1) == b"\xa5"
    pa = driver.call("PhysicalAddressOf", va)
    assert pa == k.MmGetPhysicalAddress(va) and pa + 3 * PAGE <= 1 << 32
    assert driver.call("PhysicalAddressOf", va + 2 * PAGE) == pa + 2 * PAGE
    assert driver.call("VirtualFor", pa + 9) == va + 9
    assert driver.call("IsAddressValid", va) == 1 and driver.call("IsAddressValid", 0x10000) == 0
    assert tag_use(k, "MmCm") == 1
    if windows == "7":
        assert "AllocateContiguous" in k.call_sites.describe(k.nonpaged_pool.big_sites[va])
    driver.call("FreeContiguous", va)
    boundary = 4 * PAGE
    va = driver.call("AllocateContiguousSpecifyCache", 3 * PAGE, 0x100000, 0xFFFFFFFF, boundary, 0)
    pa = driver.call("PhysicalAddressOf", va)
    assert pa >= 0x100000 and pa // boundary == (pa + 3 * PAGE - 1) // boundary
    driver.call("FreeContiguousSpecifyCache", va, 3 * PAGE)
    assert tag_use(k, "MmCm") == 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_contiguous_memory_left_at_unload_is_named_by_pool_tracking(windows):
    """Driver Verifier sees contiguous memory as it sees NDIS's: a buffer left at unload is
    0xC4/0x62 naming the driver's unload routine; freed, the unload is clean."""
    k = ntpool.Kernel(windows=windows, nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)
    k.verifier.enable("mm.sys", pool_tracking=True)
    driver = load_native_driver(k, MM_SYS)
    driver.call("FreeContiguous", driver.call("AllocateContiguous", PAGE, 0xFFFFFFFF))
    driver.call("AllocateContiguous", PAGE, 0xFFFFFFFF)
    with pytest.raises(BugCheck) as caught:
        k.unload_driver(driver)
    assert caught.value.code == 0xC4 and caught.value.parameters[0] == 0x62
    assert caught.value.parameters[3] == 1 and caught.value.call_site.startswith("mm.sys+0x")


@pytest.mark.parametrize("windows", WINDOWS)
def test_freeing_pool_as_contiguous_memory_from_native_code_is_0x60_at_its_line(windows):
    k, driver = loaded(windows)
    pool = k.ExAllocatePoolWithTag(0, 100, "Pool")
    with pytest.raises(BugCheck) as caught:
        driver.call("FreeContiguous", pool)
    assert (caught.value.code, caught.value.parameters) == (0xC2, (0x60, pool, 0, 0))
    assert caught.value.driver_name == "mm.sys"
    assert "FreeContiguous+0x" in caught.value.call_site
    assert f"(mm.c:{source_line('MmFreeContiguousMemory(Buffer);')})" in caught.value.call_site


@pytest.mark.parametrize("windows", WINDOWS)
def test_noncached_memory_pages_for_mdls_and_mdls_from_native_code(windows):
    k, driver = loaded(windows)
    assert driver.call("NonCachedRoundTrip", 3 * PAGE) == 1
    assert driver.call("PagesForMdlRoundTrip", 3 * PAGE) == 3
    buffer = k.ExAllocatePoolWithTag(0, 5000, "Buff")
    assert driver.call("CreateMdlFor", buffer, 5000) == 1
    # (an MDL the MDL lookaside list keeps is the I/O manager's, still allocated: Windows 7)
    kept = k.io_lookaside_holdings().get("Mdl ", (0, 0))[0]
    assert tag_use(k, "Mdl ") == kept and not k.mdl_page_frames and not k.noncached_blocks


@pytest.mark.parametrize("windows", WINDOWS)
def test_a_wrong_size_to_free_noncached_memory_from_native_code_is_0xda(windows):
    k, driver = loaded(windows)
    va = driver.call("AllocateNonCached", 2 * PAGE)
    with pytest.raises(BugCheck) as caught:
        driver.call("FreeNonCached", va, PAGE)
    assert (caught.value.code, caught.value.parameters) == (0xDA, (0x305, va, 1, 2))


@pytest.mark.parametrize("windows", WINDOWS)
def test_io_space_from_native_code_and_unmapping_it_twice(windows):
    k, driver = loaded(windows)
    pool = k.ExAllocatePoolWithTag(0, 64, "Regs")
    k.write(pool, b"status")
    alias = driver.call("MapIoSpace", k.MmGetPhysicalAddress(pool), 64, 0)
    assert k.read(alias, 6) == b"status"
    driver.call("UnmapIoSpace", alias, 64)
    with pytest.raises(BugCheck) as caught:
        driver.call("UnmapIoSpace", alias, 64)
    assert (caught.value.code, caught.value.parameters) == (0xDA, (0x302, alias & ~0xFFF, 0, 0))


@pytest.mark.parametrize("windows", WINDOWS)
def test_io_space_past_memory_from_native_code_names_the_routine(windows):
    from ntpool.native import NativeError
    k, driver = loaded(windows)
    with pytest.raises(NativeError, match="MmMapIoSpace"):
        driver.call("MapIoSpace", k.physical.frame_count * PAGE, PAGE, 0)


@pytest.mark.parametrize("windows", WINDOWS)
def test_an_error_log_entry_from_native_code(windows):
    k, driver = loaded(windows)
    size = driver.call("LogError", 0xC0040001, 7)
    assert size == 0x30 + 4 + 14
    (record,) = k.error_log
    assert record.error_code == 0xC0040001 and record.unique_error_value == 7
    assert record.final_status == 0xC000009A
    assert record.dump_data == bytes.fromhex("1111111122222222") and record.strings == ["mm.sys"]
    assert k._get16(record.driver) == 4 and record.device == 0  # its DRIVER_OBJECT
    assert tag_use(k, "IoEr") == 0
    entry = driver.call("AllocateErrorLogEntry", 0x40)
    assert entry and tag_use(k, "IoEr") == 1
    driver.call("FreeErrorLogEntry", entry)
    assert driver.call("AllocateErrorLogEntry", 241) == 0 and tag_use(k, "IoEr") == 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_a_reserved_mapping_from_native_code(windows):
    k, driver = loaded(windows)
    assert driver.call("ReservedMappingRoundTrip", 2 * PAGE) == 0x3C
    assert not k.reserved_mappings and not k.mdl_page_frames
    with pytest.raises(BugCheck) as caught:
        driver.call("FreeReservedWhileMapped", PAGE)
    assert caught.value.code == 0xDA and caught.value.parameters[0] == 0x103
    assert caught.value.parameters[2:] == (0x7673524D, 1)  # 'vsRM' (shown MRsv), one page
    assert "FreeReservedWhileMapped+0x" in caught.value.call_site


# --- code rewritten through a second mapping ---------------------------------------------------

def fixed(machine, address):
    return any(start <= address < end for start, end in machine.fixed_code)


@pytest.mark.parametrize("windows", WINDOWS)
@pytest.mark.parametrize("patch", ["PatchThroughMdl", "PatchThroughIoSpace"])
def test_code_rewritten_through_a_second_mapping_is_scanned_again(windows, patch):
    """Victim (read-only .text, scanned at load) runs once, then the driver writes `mov cr0,
    rcx; ret` over it through a writable alias of its frame, CR0.WP on all along, and calls
    it with paging off in rcx: #GP at the new mov (0x1E), as for a mov the loader found.
    Before, the page stayed fixed code, never scanned again, and unicorn ran the mov."""
    k, driver = loaded(windows)
    machine = native_machine(k)
    victim = driver.address_of("Victim")
    assert driver.call("Victim", 5) == 16 and fixed(machine, victim)
    assert driver.call(patch, victim) == 1
    assert k.read(victim, 4) == b"\x0f\x22\xc1\xc3"
    assert not fixed(machine, victim)
    assert machine.cpu.control_registers_changed() == ""  # WP was never touched
    with pytest.raises(BugCheck) as caught:
        driver.call("Victim", 0x12)
    check = caught.value
    assert check.code == 0x1E and check.parameters[:2] == (0xC0000005, victim)
    assert check.parameters[2:] == (0, 0xFFFFFFFFFFFFFFFF)


def test_only_the_aliased_page_leaves_the_fixed_code():
    k, driver = loaded("7")
    machine = native_machine(k)
    victim = driver.address_of("Victim")
    others = [address for address in (driver.address_of("AllocateContiguous"),
                                      driver.address_of("LogError"))
              if address >> 12 != victim >> 12]
    driver.call("PatchThroughIoSpace", victim)
    assert not fixed(machine, victim) and all(fixed(machine, a) for a in others)


def test_an_alias_made_before_the_driver_loaded_counts_too():
    """MmMapIoSpace of free memory that the loader then gives the image: the alias exists
    before the code does, and the image's page on that frame is not fixed code."""
    k = ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)
    first_free = k.physical.frame_in_use.find(0, 1)
    aliases = k.MmMapIoSpace(first_free << 12, 64 * PAGE, 1)
    driver = load_native_driver(k, MM_SYS)
    machine = native_machine(k)
    aliased = [driver.mapped.base + (index << 12) for index, pfn in enumerate(driver.mapped.frames)
               if first_free <= pfn < first_free + 64]
    assert aliased and aliases
    assert not any(fixed(machine, address) for address in aliased)


# --- hostile arguments ----------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ntpool.native import NativeError  # noqa: E402

HOSTILE = st.one_of(st.sampled_from([0, 1, 0xFFF, 0x1000, 0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF,
                                      0x8000000000000000, 0xFFFFFFFFFFFFFFFF,
                                      0xFFFFF88F00000000, 0xFFFFFA8000000000]),
                    st.integers(0, 2**64 - 1))
ROUTINES = {
    "MmAllocateContiguousMemory": 2, "MmAllocateContiguousMemorySpecifyCache": 5,
    "MmAllocateContiguousMemorySpecifyCacheNode": 6, "MmFreeContiguousMemory": 1,
    "MmFreeContiguousMemorySpecifyCache": 3, "MmAllocateNonCachedMemory": 1,
    "MmFreeNonCachedMemory": 2, "MmGetPhysicalAddress": 1, "MmIsAddressValid": 1,
    "MmGetVirtualForPhysical": 1, "MmSizeOfMdl": 2, "MmCreateMdl": 3, "IoBuildPartialMdl": 4,
    "MmAllocatePagesForMdl": 4, "MmAllocatePagesForMdlEx": 6, "MmFreePagesFromMdl": 1,
    "MmMapIoSpace": 3, "MmUnmapIoSpace": 2, "IoAllocateErrorLogEntry": 2,
    "IoWriteErrorLogEntry": 1, "IoFreeErrorLogEntry": 1, "MmAllocateMappingAddress": 2,
    "MmFreeMappingAddress": 2, "MmMapLockedPagesWithReservedMapping": 4,
    "MmUnmapReservedMapping": 3,
}
_HOSTILE_MACHINE = {}


@pytest.mark.parametrize("routine", sorted(ROUTINES))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_arguments_from_native_code_end_in_an_answer(routine, data):
    """Whatever a compiled driver passes, the routine returns, bug-checks as Windows would,
    or stops with NativeError naming what ntpool cannot model: never a Python error."""
    k, driver = _HOSTILE_MACHINE.get(routine) or (None, None)
    if k is None or k.halted:
        k, driver = _HOSTILE_MACHINE[routine] = loaded()
    arguments = tuple(data.draw(HOSTILE) for _ in range(ROUTINES[routine]))
    machine = native_machine(k)
    try:
        machine.call(machine.bindings.stub(routine), arguments, driver)
    except BugCheck:
        pass
    except NativeError as error:  # only a refusal ntpool names (a ValueError), no Python error
        assert "cannot model (README, departures): ValueError: " in str(error), str(error)
