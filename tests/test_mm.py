"""The memory manager's routines (routines/mm.py) from Python drivers, on Windows 7's pool and
Windows 11's segment heap: contiguous and noncached memory, physical addresses, pages for
MDLs, partial MDLs, I/O space, error log entries, and Windows' bug checks for their misuse."""

import pytest

import ntpool
from ntpool.errors import BugCheck
from ntpool.machine.memory import PTE_CACHE_DISABLE, PTE_WRITE_THROUGH
from ntpool.routines import layouts as L
from ntpool.routines.mm import (ERROR_LOG_MAXIMUM_SIZE, MM_ALLOCATE_FULLY_REQUIRED,
                                MM_DONT_ZERO_ALLOCATION, MmCached, MmNonCached, MmWriteCombined)

PAGE = 4096
WINDOWS = ("7", "11")


def machine(windows):
    return ntpool.Kernel(windows=windows, nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)


def warmed(k):
    """The machine with its system PTEs' page tables built (they stay, as Windows' do)."""
    k.MmFreeNonCachedMemory(k.MmAllocateNonCachedMemory(PAGE), PAGE)
    return k


def tag_use(k, tag):
    for row in k.pool_tags():
        if row.Tag == tag:
            return row.NonPagedAllocs - row.NonPagedFrees, row.NonPagedUsed
    return 0, 0


def bug_check(call):
    with pytest.raises(BugCheck) as caught:
        call()
    return caught.value.code, caught.value.parameters


# --- contiguous memory ------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_contiguous_memory_is_physically_contiguous_tagged_mmcm_and_freed(windows):
    k = machine(windows)
    va = k.MmAllocateContiguousMemory(3 * PAGE + 5, 0xFFFFFFFF)
    first = k.MmGetPhysicalAddress(va)
    assert va and va % PAGE == 0 and first % PAGE == 0
    assert [k.MmGetPhysicalAddress(va + n * PAGE) for n in range(4)] == \
        [first + n * PAGE for n in range(4)]
    assert tag_use(k, "MmCm") == (1, 4 * PAGE)
    k.write(va, b"dma")
    k.MmFreeContiguousMemory(va)
    assert tag_use(k, "MmCm") == (0, 0)
    assert not k.MmIsAddressValid(va) or k.MmGetPhysicalAddress(va) != first


@pytest.mark.parametrize("windows", WINDOWS)
def test_contiguous_memory_lies_between_the_acceptable_addresses(windows):
    k = machine(windows)
    low = 0x200000
    va = k.MmAllocateContiguousMemorySpecifyCache(2 * PAGE, low, low + 0x40000 - 1, 0, MmCached)
    pa = k.MmGetPhysicalAddress(va)
    assert low <= pa and pa + 2 * PAGE <= low + 0x40000
    k.MmFreeContiguousMemorySpecifyCache(va, 2 * PAGE, MmCached)
    # Nothing fits below the first frames the machine uses: NULL, nothing taken.
    assert k.MmAllocateContiguousMemory(PAGE, 0xFFF) == 0
    assert tag_use(k, "MmCm") == (0, 0)


@pytest.mark.parametrize("windows", WINDOWS)
def test_contiguous_memory_crosses_no_boundary_multiple(windows):
    k = machine(windows)
    boundary = 4 * PAGE
    for _ in range(6):
        va = k.MmAllocateContiguousMemorySpecifyCacheNode(3 * PAGE, 0, 0xFFFFFFFF, boundary,
                                                          MmCached, 0)
        pa = k.MmGetPhysicalAddress(va)
        assert pa // boundary == (pa + 3 * PAGE - 1) // boundary
    # A boundary smaller than the request can never hold it.
    assert k.MmAllocateContiguousMemorySpecifyCache(3 * PAGE, 0, -1, 2 * PAGE, MmCached) == 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_contiguous_cache_types_set_the_ptes(windows):
    k = machine(windows)
    for cache_type, bits in ((MmNonCached, PTE_CACHE_DISABLE | PTE_WRITE_THROUGH),
                             (MmWriteCombined, PTE_WRITE_THROUGH), (MmCached, 0)):
        va = k.MmAllocateContiguousMemorySpecifyCache(PAGE, 0, -1, 0, cache_type)
        assert k.space.pte(va) & (PTE_CACHE_DISABLE | PTE_WRITE_THROUGH) == bits
    assert k.MmAllocateContiguousMemorySpecifyCache(PAGE, 0, -1, 0, 6) == 0  # no such type


@pytest.mark.parametrize("windows", WINDOWS)
def test_freeing_what_is_not_contiguous_memory_is_bad_pool_caller_0x60(windows):
    k = machine(windows)
    pool = k.ExAllocatePoolWithTag(0, 5000, "Pool")
    assert bug_check(lambda: k.MmFreeContiguousMemory(pool)) == (0xC2, (0x60, pool, 0, 0))


@pytest.mark.parametrize("windows", WINDOWS)
def test_freeing_contiguous_memory_twice_is_0x60(windows):
    k = machine(windows)
    va = k.MmAllocateContiguousMemory(PAGE, -1)
    k.MmFreeContiguousMemory(va)
    assert bug_check(lambda: k.MmFreeContiguousMemory(va)) == (0xC2, (0x60, va, 0, 0))


def test_contiguous_memory_is_charged_to_the_drivers_line():
    k = machine("7")
    va = k.MmAllocateContiguousMemory(PAGE, -1)  # this line
    site = k.nonpaged_pool.big_sites[va]
    assert "test_mm.py" in k.call_sites.describe(site)


# --- noncached memory -------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_noncached_memory_is_zeroed_mapped_noncached_and_freed(windows):
    k = warmed(machine(windows))
    frames = k.physical.frames_used
    va = k.MmAllocateNonCachedMemory(2 * PAGE + 1)
    assert k.read(va, 3 * PAGE) == bytes(3 * PAGE)
    assert k.space.pte(va) & (PTE_CACHE_DISABLE | PTE_WRITE_THROUGH) == \
        PTE_CACHE_DISABLE | PTE_WRITE_THROUGH
    k.write(va, b"ring")
    k.MmFreeNonCachedMemory(va, 2 * PAGE + 1)
    assert not k.MmIsAddressValid(va)
    assert k.physical.frames_used == frames


@pytest.mark.parametrize("windows", WINDOWS)
def test_freeing_noncached_memory_with_the_wrong_size_is_system_pte_misuse(windows):
    k = machine(windows)
    va = k.MmAllocateNonCachedMemory(2 * PAGE)
    assert bug_check(lambda: k.MmFreeNonCachedMemory(va, PAGE)) == (0xDA, (0x305, va, 1, 2))


@pytest.mark.parametrize("windows", WINDOWS)
def test_freeing_pool_as_noncached_memory_is_system_pte_misuse(windows):
    k = machine(windows)
    pool = k.ExAllocatePoolWithTag(0, 100, "Pool")
    code, parameters = bug_check(lambda: k.MmFreeNonCachedMemory(pool, 100))
    assert (code, parameters) == (0xDA, (0x301, pool & ~0xFFF, 0, 0))


# --- physical addresses ----------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_physical_addresses_round_trip(windows):
    k = machine(windows)
    va = k.ExAllocatePoolWithTag(0, 64, "Phys")
    pa = k.MmGetPhysicalAddress(va)
    assert pa == k.space.translate(va)
    assert k.physical.read(pa, 4) == k.read(va, 4)
    assert k.MmGetVirtualForPhysical(pa) == va
    assert k.MmIsAddressValid(va) == 1
    assert k.MmIsAddressValid(0x10000) == 0 and k.MmGetPhysicalAddress(0x10000) == 0


def test_paged_out_memory_is_not_a_valid_address():
    k = machine("7")
    va = k.ExAllocatePoolWithTag(1, 64, "Page")
    k.page_out()
    assert k.MmIsAddressValid(va) == 0 and k.MmGetPhysicalAddress(va) == 0
    k.read(va, 1)  # paged back in
    assert k.MmIsAddressValid(va) == 1


def test_the_virtual_address_of_a_frame_is_its_owners_not_an_alias():
    k = machine("7")
    va = k.ExAllocatePoolWithTag(0, 64, "Phys")
    alias = k.MmMapIoSpace(k.MmGetPhysicalAddress(va), 64, MmCached)
    assert alias != va and k.MmGetVirtualForPhysical(k.MmGetPhysicalAddress(va)) == va


# --- MDLs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_pages_for_an_mdl_are_zeroed_frames_in_range_mapped_and_freed(windows):
    k = machine(windows)
    mdl = k.MmAllocatePagesForMdl(0x100000, 0x3FFFFFF, 0, 3 * PAGE)
    assert k._get32(mdl + L.MDL.ByteCount) == 3 * PAGE
    pfns = [k._get64(mdl + L.MDL.SIZE + 8 * n) for n in range(3)]
    assert all(0x100 <= pfn <= 0x3FFF for pfn in pfns)
    assert k.pool_tags() and tag_use(k, "Mdl ")[0] == 1
    va = k.MmMapLockedPagesSpecifyCache(mdl, 0, MmCached, 0, 0, 16)
    assert k.read(va, 3 * PAGE) == bytes(3 * PAGE)
    k.write(va + PAGE, b"sg")
    assert k.physical.read(pfns[1] * PAGE, 2) == b"sg"
    k.MmUnmapLockedPages(va, mdl)
    k.MmFreePagesFromMdl(mdl)
    k.ExFreePool(mdl)
    assert not any(k.physical.frame_in_use[pfn] for pfn in pfns)
    assert tag_use(k, "Mdl ") == (0, 0)


@pytest.mark.parametrize("windows", WINDOWS)
def test_pages_for_an_mdl_fully_required_or_partial(windows):
    k = machine(windows)
    free = k.physical.frame_count - k.physical.frames_used
    too_many = (free + 10) * PAGE
    assert k.MmAllocatePagesForMdlEx(0, -1, 0, too_many, MmCached, MM_ALLOCATE_FULLY_REQUIRED) == 0
    mdl = k.MmAllocatePagesForMdlEx(0, -1, 0, 4 * PAGE, MmCached, MM_DONT_ZERO_ALLOCATION)
    assert k._get32(mdl + L.MDL.ByteCount) == 4 * PAGE
    k.MmFreePagesFromMdl(mdl)
    with pytest.raises(ValueError, match="not an MDL MmAllocatePagesForMdl returned"):
        k.MmFreePagesFromMdl(mdl)


@pytest.mark.parametrize("windows", WINDOWS)
def test_mm_size_of_mdl_and_mm_create_mdl(windows):
    k = machine(windows)
    buffer = k.ExAllocatePoolWithTag(0, 3 * PAGE, "Buff")
    assert k.MmSizeOfMdl(buffer + 0xFF0, 0x20) == L.MDL.SIZE + 16
    mdl = k.MmCreateMdl(0, buffer, 5000)
    assert k._get16(mdl + L.MDL.Size) == k.MmSizeOfMdl(buffer, 5000)
    assert k._get32(mdl + L.MDL.ByteCount) == 5000
    assert k._get64(mdl + L.MDL.StartVa) == buffer & ~0xFFF
    assert tag_use(k, "Mdl ")[0] == 1
    k.ExFreePool(mdl)
    # No MDL holds 2**40 bytes (its Size is a CSHORT): NULL, the given MDL left alone.
    before = k.read(buffer, L.MDL.SIZE)
    assert k.MmCreateMdl(buffer, 0, 1 << 40) == 0 and k.read(buffer, L.MDL.SIZE) == before
    assert k.MmAllocateContiguousMemory(1 << 60, -1) == 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_a_partial_mdl_has_the_sources_frames_and_mapping(windows):
    k = machine(windows)
    buffer = k.ExAllocatePoolWithTag(0, 3 * PAGE, "Buff")
    source = k.IoAllocateMdl(buffer, 3 * PAGE)
    k.MmBuildMdlForNonPagedPool(source)
    part = k.IoAllocateMdl(buffer + PAGE + 8, 100)
    k.IoBuildPartialMdl(source, part, buffer + PAGE + 8, 100)
    flags = k._get16(part + L.MDL.MdlFlags)
    assert flags & L.MDL_PARTIAL and flags & L.MDL_SOURCE_IS_NONPAGED_POOL
    assert k._get64(part + L.MDL.SIZE) == k._get64(source + L.MDL.SIZE + 8 * (
        ((buffer + PAGE + 8) >> 12) - (buffer >> 12)))
    assert k.MmMapLockedPagesSpecifyCache(part, 0, MmCached, 0, 0, 16) == buffer + PAGE + 8
    # Length 0: the rest of the source.
    k.IoBuildPartialMdl(source, part, buffer + 2 * PAGE, 0)
    assert k._get32(part + L.MDL.ByteCount) == PAGE
    with pytest.raises(ValueError, match="not inside the source MDL"):
        k.IoBuildPartialMdl(source, part, buffer + 3 * PAGE, 16)
    k.IoFreeMdl(part)
    k.IoFreeMdl(source)


def test_freeing_a_partial_mdl_leaves_its_sources_mapping():
    k = machine("7")
    mdl = k.MmAllocatePagesForMdl(0, -1, 0, 2 * PAGE)
    va = k.MmMapLockedPagesSpecifyCache(mdl, 0, MmCached, 0, 0, 16)
    part = k.IoAllocateMdl(0, 16)
    k.IoBuildPartialMdl(mdl, part, 0, 16)
    assert k.MmMapLockedPagesSpecifyCache(part, 0, MmCached, 0, 0, 16) == va
    k.IoFreeMdl(part)
    k.write(va, b"still mapped")
    k.MmUnmapLockedPages(va, mdl)
    k.MmFreePagesFromMdl(mdl)


# --- I/O space --------------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_mapping_ram_as_io_space_is_a_second_mapping_of_the_same_bytes(windows):
    k = machine(windows)
    va = k.ExAllocatePoolWithTag(0, 64, "Reg ")
    k.write(va, b"before")
    pa = k.MmGetPhysicalAddress(va)
    alias = k.MmMapIoSpace(pa, 64, MmNonCached)
    assert alias & 0xFFF == pa & 0xFFF and alias != va
    assert k.read(alias, 6) == b"before"
    k.write(alias, b"after!")
    assert k.read(va, 6) == b"after!"
    assert k.space.pte(alias) & PTE_CACHE_DISABLE
    k.MmUnmapIoSpace(alias, 64)
    assert not k.MmIsAddressValid(alias)
    assert k.MmMapIoSpace(pa, 0, MmCached) == 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_io_space_past_the_machines_memory_is_refused(windows):
    k = machine(windows)
    with pytest.raises(ValueError, match="device memory"):
        k.MmMapIoSpace(k.physical.frame_count * PAGE, PAGE, MmNonCached)


@pytest.mark.parametrize("windows", WINDOWS)
def test_unmapping_what_was_not_mapped_is_system_pte_misuse(windows):
    k = machine(windows)
    alias = k.MmMapIoSpace(0x5000, 2 * PAGE, MmNonCached)
    # The middle of the mapping; the wrong size; twice; never mapped; pool.
    assert bug_check(lambda: machine(windows).MmUnmapIoSpace(alias, PAGE)) == \
        (0xDA, (0x302, alias, 0, 0))
    k2 = machine(windows)
    alias2 = k2.MmMapIoSpace(0x5000, 2 * PAGE, MmNonCached)
    assert bug_check(lambda: k2.MmUnmapIoSpace(alias2 + PAGE, PAGE)) == \
        (0xDA, (0x304, alias2 + PAGE, 1, 0))
    k3 = machine(windows)
    alias3 = k3.MmMapIoSpace(0x5000, 2 * PAGE, MmNonCached)
    assert bug_check(lambda: k3.MmUnmapIoSpace(alias3, 3 * PAGE)) == (0xDA, (0x305, alias3, 3, 2))
    k.MmUnmapIoSpace(alias, 2 * PAGE)
    assert bug_check(lambda: k.MmUnmapIoSpace(alias, 2 * PAGE)) == (0xDA, (0x302, alias, 0, 0))
    k4 = machine(windows)
    pool = k4.ExAllocatePoolWithTag(0, 64, "Pool")
    assert bug_check(lambda: k4.MmUnmapIoSpace(pool, 64)) == (0xDA, (0x301, pool & ~0xFFF, 0, 0))


def test_unmapping_an_mdl_mapping_as_io_space_is_not_permitted():
    k = machine("7")
    mdl = k.MmAllocatePagesForMdl(0, -1, 0, PAGE)
    va = k.MmMapLockedPagesSpecifyCache(mdl, 0, MmCached, 0, 0, 16)
    assert bug_check(lambda: k.MmUnmapIoSpace(va, PAGE)) == (0xDA, (0x301, va, 0, 0))


# --- error log entries ------------------------------------------------------------------------

def driver_object(k):
    return k.create_driver_object("ErrLog").driver_object


@pytest.mark.parametrize("windows", WINDOWS)
def test_an_error_log_entry_is_written_read_and_freed(windows):
    k = machine(windows)
    driver = driver_object(k)
    text = "disk0\0".encode("utf-16-le")
    size = L.IO_ERROR_LOG_PACKET.SIZE + 4 + len(text)
    packet = k.IoAllocateErrorLogEntry(driver, size)
    assert packet and k.read(packet, size) == bytes(size)
    assert tag_use(k, "IoEr")[0] == 1
    P = L.IO_ERROR_LOG_PACKET
    k._put32(packet + P.ErrorCode, 0xC0040005)
    k._put32(packet + P.UniqueErrorValue, 42)
    k._put16(packet + P.DumpDataSize, 8)
    k._put32(packet + P.DumpData, 0x1234)
    k._put32(packet + P.DumpData + 4, 0x5678)
    k._put16(packet + P.NumberOfStrings, 1)
    k._put16(packet + P.StringOffset, P.SIZE + 4)
    k.write(packet + P.SIZE + 4, text)
    k.IoWriteErrorLogEntry(packet)
    assert tag_use(k, "IoEr") == (0, 0)
    (record,) = k.error_log
    assert (record.driver, record.device, record.error_code, record.unique_error_value) == \
        (driver, 0, 0xC0040005, 42)
    assert record.dump_data == (0x1234).to_bytes(4, "little") + (0x5678).to_bytes(4, "little")
    assert record.strings == ["disk0"]


@pytest.mark.parametrize("windows", WINDOWS)
def test_error_log_entry_sizes_and_objects(windows):
    k = machine(windows)
    driver = driver_object(k)
    assert k.IoAllocateErrorLogEntry(driver, ERROR_LOG_MAXIMUM_SIZE + 1) == 0
    assert k.IoAllocateErrorLogEntry(driver, L.IO_ERROR_LOG_PACKET.SIZE - 1) == 0
    assert k.IoAllocateErrorLogEntry(0, 0x40) == 0
    pool = k.ExAllocatePoolWithTag(0, 64, "NotO")
    k.write(pool, bytes(64))
    assert k.IoAllocateErrorLogEntry(pool, 0x40) == 0  # neither a device nor a driver object
    entry = k.IoAllocateErrorLogEntry(driver, ERROR_LOG_MAXIMUM_SIZE)
    k.IoFreeErrorLogEntry(entry)
    assert tag_use(k, "IoEr") == (0, 0) and not k.error_log


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_error_log_holds_a_limited_amount_outstanding(windows):
    k = ntpool.Kernel(windows=windows, nonpaged_pool_bytes=16 << 20, paged_pool_bytes=4 << 20)
    driver = driver_object(k)
    entries = []
    while True:
        entry = k.IoAllocateErrorLogEntry(driver, ERROR_LOG_MAXIMUM_SIZE)
        if not entry:
            break
        entries.append(entry)
    assert len(entries) == 100 * PAGE // (ERROR_LOG_MAXIMUM_SIZE + L.ERROR_LOG_ENTRY.SIZE)
    k.IoFreeErrorLogEntry(entries.pop())
    assert k.IoAllocateErrorLogEntry(driver, ERROR_LOG_MAXIMUM_SIZE)


# --- reserved mappings ------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_a_reserved_mapping_maps_unmaps_and_maps_again(windows):
    k = machine(windows)
    reserved = k.MmAllocateMappingAddress(3 * PAGE, "Resv")
    mdl = k.MmAllocatePagesForMdl(0, -1, 0, 2 * PAGE)
    va = k.MmMapLockedPagesWithReservedMapping(reserved, "Resv", mdl, MmCached)
    assert va == reserved and k._get64(mdl + L.MDL.MappedSystemVa) == reserved
    assert k._get16(mdl + L.MDL.MdlFlags) & L.MDL_MAPPED_TO_SYSTEM_VA
    k.write(va + PAGE, b"kept")
    k.MmUnmapReservedMapping(reserved, "Resv", mdl)
    assert not k.MmIsAddressValid(va) and not k._get16(mdl + L.MDL.MdlFlags) & 1
    assert k.MmMapLockedPagesWithReservedMapping(reserved, "Resv", mdl, MmCached) == reserved
    assert k.read(reserved + PAGE, 4) == b"kept"
    k.MmUnmapReservedMapping(reserved, "Resv", mdl)
    k.MmFreeMappingAddress(reserved, "Resv")
    # An MDL larger than the reservation: NULL, nothing mapped.
    small = k.MmAllocateMappingAddress(PAGE, "Resv")
    assert k.MmMapLockedPagesWithReservedMapping(small, "Resv", mdl, MmCached) == 0
    k.MmFreeMappingAddress(small, "Resv")


def reserved_with(windows, pages=2, mapped=True):
    k = machine(windows)
    reserved = k.MmAllocateMappingAddress(pages * PAGE, "Resv")
    mdl = k.MmAllocatePagesForMdl(0, -1, 0, 2 * PAGE)
    if mapped:
        k.MmMapLockedPagesWithReservedMapping(reserved, "Resv", mdl, MmCached)
    return k, reserved, mdl


RESV, OTHR = 0x52657376, 0x4F746872  # 'Resv', 'Othr'


@pytest.mark.parametrize("windows", WINDOWS)
@pytest.mark.parametrize("misuse, expected", [
    (lambda k, r, m: k.MmAllocateMappingAddress(0, "Resv"), lambda r: (0x100, 0, RESV, 0)),
    (lambda k, r, m: k.MmFreeMappingAddress(r, "Othr"), lambda r: (0x101, r, OTHR, RESV)),
    (lambda k, r, m: k.MmFreeMappingAddress(r + PAGE, "Resv"), lambda r: (0x102, r + PAGE, RESV, 0)),
    (lambda k, r, m: k.MmFreeMappingAddress(r, "Resv"), lambda r: (0x103, r, RESV, 2)),
    (lambda k, r, m: k.MmMapLockedPagesWithReservedMapping(r, "Othr", m, 1),
     lambda r: (0x104, r, OTHR, RESV)),
    (lambda k, r, m: k.MmMapLockedPagesWithReservedMapping(r - PAGE, "Resv", m, 1),
     lambda r: (0x105, r - PAGE, RESV, 0)),
    (lambda k, r, m: k.MmMapLockedPagesWithReservedMapping(r, "Resv", m, 1),
     lambda r: (0x107, r, r, r + PAGE)),
    (lambda k, r, m: k.MmUnmapReservedMapping(r, "Othr", m), lambda r: (0x108, r, OTHR, RESV)),
    (lambda k, r, m: k.MmUnmapReservedMapping(0xFFFFF88F7FFF0000, "Resv", m),
     lambda r: (0x109, 0xFFFFF88F7FFF0000, RESV, 0)),
], ids=["zero", "free-other-tag", "free-nothing", "free-mapped", "map-other-tag",
        "map-nothing", "map-twice", "unmap-other-tag", "unmap-nothing"])
def test_reserved_mapping_misuse_is_system_pte_misuse(windows, misuse, expected):
    k, reserved, mdl = reserved_with(windows)
    code, parameters = bug_check(lambda: misuse(k, reserved, mdl))
    assert (code, parameters) == (0xDA, expected(reserved))


@pytest.mark.parametrize("windows", WINDOWS)
def test_unmapping_a_reserved_mapping_wrongly(windows):
    k, reserved, mdl = reserved_with(windows, pages=1, mapped=False)
    assert bug_check(lambda: k.MmUnmapReservedMapping(reserved, "Resv", mdl)) == \
        (0xDA, (0x10A, reserved, 1, 2))  # an MDL of 2 pages, a reservation of 1
    k, reserved, mdl = reserved_with(windows, mapped=False)
    assert bug_check(lambda: k.MmUnmapReservedMapping(reserved, "Resv", mdl)) == \
        (0xDA, (0x10B, reserved, RESV, 2))  # nothing mapped
    k, reserved, mdl = reserved_with(windows, pages=3)
    one = k.MmCreateMdl(0, 0, PAGE)
    assert bug_check(lambda: k.MmUnmapReservedMapping(reserved, "Resv", one)) == \
        (0xDA, (0x10C, reserved, RESV, 1))  # 1 page of the 2 mapped


def test_freeing_the_mdl_leaves_the_reserved_mapping_to_its_owner():
    k, reserved, mdl = reserved_with("7")
    part = k.IoAllocateMdl(0, PAGE)
    k.IoBuildPartialMdl(mdl, part, 0, PAGE)
    k.IoFreeMdl(part)
    assert k.MmIsAddressValid(reserved)


def test_poolmon_names_the_owners_of_the_new_tags():
    from ntpool.debugger.pooltag import PoolTagDatabase
    database = PoolTagDatabase.default(environ={})
    assert database.lookup("MmCm").binary == "nt!mm"
    assert database.lookup("IoEr").binary == "nt!io"
