"""A routine pointer a driver overwrote (its lookaside list's Allocate or Free), called on a
machine with no compiled code loaded: Windows jumps there, and the machine answers as x64
Windows does for that address (Kernel.jump_to), never with a Python error. Executable pool
(nonpaged pool on Windows 7, NonPagedPool on Windows 10/11) runs on a CPU made on demand."""

import os
import struct

import pytest

import ntpool
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpReader

NP = ntpool.PoolType.NonPagedPool
NP_NX = ntpool.PoolType.NonPagedPoolNx
PP = ntpool.PoolType.PagedPool
NX = 1 << 63  # the PTE's no-execute bit
MiB = 1 << 20
LA_ALLOCATE, LA_FREE = 0x30, 0x38  # GENERAL_LOOKASIDE: Allocate, Free
UNMAPPED = 0xFFFFF8A0DEAD0000  # a canonical system address nothing maps
ACCESS_VIOLATION = 0xC0000005


class Overwriter:
    """A driver with a lookaside list whose routine pointer it then overwrites."""

    name = "overwriter.sys"

    def DriverEntry(self, k, RegistryPath):
        self.lookaside = k.ExAllocatePoolWithTag(NP, 0x80, "LaLi")
        k.ExInitializeNPagedLookasideList(self.lookaside, 0, 0, 0, 64, "Look", 0)
        return 0

    def overwrite(self, k, field, value):
        k.write(self.lookaside + field, struct.pack("<Q", value))

    def allocate(self, k):
        return k.ExAllocateFromNPagedLookasideList(self.lookaside)

    def free(self, k, entry):
        k.ExFreeToNPagedLookasideList(self.lookaside, entry)


@pytest.fixture(params=["no CPU", "a compiled driver loaded"])
def machine(request):
    """The same answers whether or not a native CPU exists: the kernel decides that no code
    is there (``Kernel.jump_to``); the CPU runs only code."""
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    if request.param != "no CPU":
        from ntpool.native import load_native_driver
        from ntpool.native.build import SOURCE_DIRECTORY

        load_native_driver(k, os.path.join(SOURCE_DIRECTORY, "faults.sys"))
    driver = Overwriter()
    loaded = k.load_driver(driver)
    return k, driver, loaded


def _analyze(k, tmp_path) -> str:
    path = str(tmp_path / "MEMORY.DMP")
    k.write_dump(path, kind="kernel", symbols=False)
    with DumpReader(path) as reader:
        return KdSession(reader).execute("!analyze -v")


def test_allocate_overwritten_with_an_unmapped_address_is_0x50_with_the_execute_bit(machine, tmp_path):
    k, driver, _ = machine
    driver.overwrite(k, LA_ALLOCATE, UNMAPPED)
    with pytest.raises(ntpool.BugCheck) as info:
        driver.allocate(k)  # the list is empty: a miss calls Allocate
    e = info.value
    assert e.code == 0x50
    assert e.parameters == (UNMAPPED, 8, UNMAPPED, 0)
    assert "overwritten routine pointer" in e.detail and "overwriter.sys" in e.detail
    text = _analyze(k, tmp_path)
    assert "PAGE_FAULT_IN_NONPAGED_AREA (50)" in text
    assert f"Arg1: {UNMAPPED:016x}, Memory referenced" in text
    assert "Arg2: 0000000000000008, 0: read operation, 1: write operation, 8: execute" in text


def test_at_dispatch_level_it_is_0xd1_with_the_target_as_the_faulting_instruction(machine, tmp_path):
    k, driver, _ = machine
    driver.overwrite(k, LA_ALLOCATE, UNMAPPED)
    k.KeRaiseIrql(ntpool.DISPATCH_LEVEL)
    with pytest.raises(ntpool.BugCheck) as info:
        driver.allocate(k)
    assert (info.value.code, info.value.parameters) == (0xD1, (UNMAPPED, 2, 8, UNMAPPED))
    assert "DRIVER_IRQL_NOT_LESS_OR_EQUAL (d1)" in _analyze(k, tmp_path)


def test_a_non_canonical_target_is_a_general_protection_fault_0x1e(machine, tmp_path):
    k, driver, loaded = machine
    driver.overwrite(k, LA_ALLOCATE, 0x4141414141414141)
    k.KeRaiseIrql(ntpool.DISPATCH_LEVEL)  # a #GP is no page fault: the same at any IRQL
    with pytest.raises(ntpool.BugCheck) as info:
        driver.allocate(k)
    e = info.value
    assert e.code == 0x1E
    assert (e.parameters[0], e.parameters[2], e.parameters[3]) == (ACCESS_VIOLATION, 0, 2**64 - 1)
    # The call: the driver's call site (a site's address is within 0x1000 + 1 MiB + the
    # instruction's offset of its image's base, so a bound of 1 MiB depended on the path).
    assert k.call_sites.owner(e.site) is loaded
    assert e.parameters[1] == k.call_sites.table[e.site].address >= loaded.image_base
    assert "non-canonical address 0x4141414141414141" in e.detail
    assert "KMODE_EXCEPTION_NOT_HANDLED (1e)" in _analyze(k, tmp_path)


def test_a_null_routine_is_an_access_violation_at_the_target(machine):
    k, driver, _ = machine
    driver.overwrite(k, LA_ALLOCATE, 0)  # zeroed after ExInitialize..., where 0 meant "default"
    with pytest.raises(ntpool.BugCheck) as info:
        driver.allocate(k)
    assert (info.value.code, info.value.parameters) == (0x1E, (ACCESS_VIOLATION, 0, 8, 0))


def test_free_overwritten_with_a_pool_address_is_0xfc_attempted_execute_of_noexecute(machine, tmp_path):
    k, driver, _ = machine
    data = k.ExAllocatePoolWithTag(PP, 64, "Data")  # paged pool: no-execute on x64
    driver.overwrite(k, LA_FREE, data)
    entries = [driver.allocate(k) for _ in range(5)]
    for entry in entries[:4]:
        driver.free(k, entry)  # kept: the list is below its depth (4)
    with pytest.raises(ntpool.BugCheck) as info:
        driver.free(k, entries[4])  # the list is full: Free is called
    e = info.value
    assert e.code == 0xFC
    assert e.parameters == (data, k.space.pte(data), 0, 0)
    assert e.parameters[1] & (1 << 63) and e.parameters[1] & 1  # present, no-execute
    text = _analyze(k, tmp_path)
    assert "ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY (fc)" in text
    assert "Arg1: " + f"{data:016x}, Virtual address for the attempted execute" in text


def test_a_python_routine_the_driver_registered_as_allocate_is_called():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    calls = []

    def allocate(k, pool_type, size, tag):
        calls.append((pool_type, size, tag))
        return k.ExAllocatePoolWithTag(pool_type, size, tag)

    lookaside = k.ExAllocatePoolWithTag(NP, 0x80, "LaLi")
    k.ExInitializeNPagedLookasideList(lookaside, k.code_address(allocate), 0, 0, 64, "Look", 0)
    entry = k.ExAllocateFromNPagedLookasideList(lookaside)
    assert entry and calls == [(NP, 64, ntpool.tag("Look").value)]


@pytest.mark.parametrize("windows", ["7", "11"])
def test_nonpaged_pool_is_executable_as_windows_maps_it_nx_pool_and_paged_pool_are_not(windows):
    """Windows 7: all of the nonpaged pool executable, small chunks and big pages alike (it
    has no NX pool: NonPagedPoolNx is the same pool); Windows 10/11: the NonPagedPool heap
    executable, NonPagedPoolNx's and paged pool's pages no-execute."""
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows)
    nx_pool_executable = windows == "7"
    for size in (64, 0x1800, 64 << 10, 256 << 10):  # lookaside/list, VS, big, segment pages
        for pool_type, executable in ((NP, True), (NP_NX, nx_pool_executable), (PP, False)):
            address = k.ExAllocatePoolWithTag(pool_type, size, "Exec")
            for page in range(address & ~0xFFF, address + size, 0x1000):
                pte = k.space.pte(page)
                assert pte & 1, (pool_type, size)
                assert bool(pte & NX) != executable, (windows, pool_type, size, hex(page))


@pytest.mark.parametrize("windows", ["7", "11"])
def test_a_routine_overwritten_with_nonpaged_pool_bytes_runs_them_and_bug_checks(windows, tmp_path):
    """No compiled driver is loaded: the kernel makes its CPU on demand, the pool bytes (ud2)
    run and raise #UD, which no driver frame handles: 0x1E (STATUS_ILLEGAL_INSTRUCTION, the
    ud2, 0, 0), as on x64. Before, this was an ExecutionError: no CPU to run it."""
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, windows=windows)
    driver = Overwriter()
    k.load_driver(driver)
    code = k.ExAllocatePoolWithTag(NP, 64, "Code")
    k.write(code, b"\x0F\x0B" * 32)  # ud2
    assert not k.space.pte(code) & NX
    driver.overwrite(k, LA_ALLOCATE, code)
    with pytest.raises(ntpool.BugCheck) as info:
        driver.allocate(k)
    assert (info.value.code, info.value.parameters) == (0x1E, (0xC000001D, code, 0, 0))
    assert k.halted
    text = _analyze(k, tmp_path)
    assert "KMODE_EXCEPTION_NOT_HANDLED (1e)" in text


def test_executable_memory_is_a_clear_error_only_where_no_cpu_can_be_made(monkeypatch):
    # Windows 11 keeps NonPagedPool executable; a special pool page of it is mapped so.
    monkeypatch.setattr(ntpool.Kernel, "cpu_maker", None)  # a build without ntpool.native
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, windows="11")
    driver = Overwriter()
    k.verifier.enable(driver.name, special_pool=True)
    k.load_driver(driver)
    code = driver.lookaside  # the driver's own NonPagedPool allocation, in special pool
    assert not k.space.pte(code) & NX
    driver.overwrite(k, LA_ALLOCATE, code)
    with pytest.raises(ntpool.ExecutionError, match=f"called {code:#x}, executable memory"):
        driver.allocate(k)
    assert not k.halted


def test_native_code_jumping_into_no_execute_pool_is_0xfc_and_to_no_page_0x50_execute():
    # Machine code of its own on an executable page: mov rax, TARGET; jmp rax.
    from ntpool.native import native_machine

    for target, code, parameter2 in ((None, 0xFC, None), (UNMAPPED, 0x50, 8)):
        k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
        cpu = native_machine(k)
        target = target or k.ExAllocatePoolWithTag(PP, 64, "Data")
        page = 0xFFFFF8A000100000
        k.space.map_page(page, k.physical.allocate_frame(), writable=False, executable=True)
        cpu.write_code(page, b"\x48\xB8" + struct.pack("<Q", target) + b"\xFF\xE0")
        with pytest.raises(ntpool.BugCheck) as info:
            k.call_code(page)
        e = info.value
        assert (e.code, e.parameters[0]) == (code, target)
        assert e.parameters[1] == (k.space.pte(target) if parameter2 is None else parameter2)
