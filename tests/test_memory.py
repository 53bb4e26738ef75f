import pytest

import ntpool
from ntpool.machine.memory import SELF_MAP_INDEX, AddressSpace, PhysicalMemory, PTE_PRESENT

MiB = 1 << 20


def test_page_tables_live_in_physical_memory_and_agree_with_the_tlb(k):
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 64, "Tabl")
    pa = k.space.walk(p)
    assert pa is not None and pa == k.space.translate(p)
    k.write(p, b"abcdef")
    assert k.physical.read(pa, 6) == b"abcdef"


def test_self_map_entry_points_at_the_pml4():
    space = AddressSpace(PhysicalMemory(MiB))
    pml4 = space.cr3 << 12
    entry = int.from_bytes(space.physical.read(pml4 + SELF_MAP_INDEX * 8, 8), "little")
    assert entry & PTE_PRESENT and (entry & 0x000FFFFFFFFFF000) == pml4


def test_physical_memory_is_backed_sparsely():
    # 8 GiB of machine: cheap to create because the host only backs touched frames.
    k = ntpool.Kernel(nonpaged_pool_bytes=4 << 30, paged_pool_bytes=4 << 30)
    assert k.physical.size > 8 << 30
    assert k.physical.frames_used < 64


def test_reads_and_writes_cross_page_boundaries(k):
    p = k.ExAllocatePoolWithTag(0, 3 * 4096, "Span")
    data = bytes(range(256)) * 20
    k.write(p + 100, data)
    assert k.read(p + 100, len(data)) == data


def test_unmapped_address_is_bug_check_0x50(k):
    with pytest.raises(ntpool.BugCheck) as info:
        k.read(0xFFFFFA8000000000 + (3 << 20), 8)
    assert info.value.code == 0x50
    assert info.value.parameters[:2] == (0xFFFFFA8000000000 + (3 << 20), 0)


def test_write_fault_reports_a_write(k):
    with pytest.raises(ntpool.BugCheck) as info:
        k.write(0xFFFFF8A000000000 + (2 << 20), b"x")
    assert info.value.parameters[1] == 1


def test_rtl_routines(k):
    a = k.ExAllocatePoolWithTag(0, 64, "RtlA")
    b = k.ExAllocatePoolWithTag(0, 64, "RtlB")
    k.RtlFillMemory(a, 64, 0x41)
    k.RtlCopyMemory(b, a, 32)
    assert k.read(b, 32) == b"A" * 32
    k.RtlZeroMemory(b, 16)
    assert k.read(b, 16) == bytes(16)
    assert k.RtlCompareMemory(a, b, 32) == 0
    assert k.RtlCompareMemory(a, a, 64) == 64


@pytest.mark.parametrize("call", [
    lambda k: k.read(-5, 1), lambda k: k.read(0xFFFFFA8000000000, -1),
    lambda k: k.write(0xFFFFFA8000000000 + 8, "text"), lambda k: k.RtlZeroMemory(0, -1),
])
def test_misuse_of_memory_api_is_a_plain_error(k, call):
    with pytest.raises((ValueError, TypeError)):
        call(k)
    assert not k.halted


def test_allocate_frames_is_all_or_nothing():
    from ntpool.machine.memory import PhysicalMemory

    physical = PhysicalMemory(16 * 4096)  # frame 0 is reserved: 15 free
    assert physical.allocate_frames(16) is None
    assert physical.frames_used == 1  # the frames it had taken were given back
    frames = physical.allocate_frames(15)
    assert sorted(frames) == list(range(1, 16)) and physical.frames_used == 16
    assert physical.allocate_frames(1) is None


def _walked(space, va, count):
    return [space.walk(va + (i << 12)) for i in range(count)]


@pytest.mark.parametrize("frames", [range(40, 50), [77, 41, 90, 42, 43, 60, 61, 62, 30, 31]])
def test_map_pages_across_a_page_table_boundary_agrees_with_the_walk(frames):
    from ntpool.hooks import Hooks, MappingChanged

    hooks = Hooks()
    changed = []
    hooks.subscribe(MappingChanged, lambda event: changed.append(event.address))
    space = AddressSpace(PhysicalMemory(MiB), hooks)
    va = 0xFFFFFA8000000000 + (0x200 - 4) * 4096  # 4 pages in one page table, 6 in the next
    space.map_pages(va, frames)
    assert _walked(space, va, 10) == [pfn << 12 for pfn in frames]
    assert [space.translate(va + (i << 12)) for i in range(10)] == [pfn << 12 for pfn in frames]
    assert changed == []  # nothing was mapped before: nothing for a CPU to forget
    assert list(space.unmap_pages(va, 10)) == list(frames)
    assert _walked(space, va, 10) == [None] * 10
    assert all(space.translate(va + (i << 12)) is None for i in range(10))
    assert changed == [va + (i << 12) for i in range(10)]


def test_map_pages_over_a_mapped_page_announces_the_change():
    from ntpool.hooks import Hooks, MappingChanged

    hooks = Hooks()
    changed = []
    hooks.subscribe(MappingChanged, lambda event: changed.append(event.address))
    space = AddressSpace(PhysicalMemory(MiB), hooks)
    va = 0xFFFFFA8000000000
    space.map_page(va + 4096, 20)
    space.map_pages(va, range(30, 33))
    assert changed == [va + 4096]
    assert _walked(space, va, 3) == [30 << 12, 31 << 12, 32 << 12]


@pytest.mark.parametrize("frames", [range(40, 50), [77, 41, 90, 42, 43, 60, 61, 62, 30, 31]])
def test_map_pages_writes_the_ptes_map_page_writes(frames):
    """map_pages writes a run's PTEs at once (as signed integers, NX their sign bit): each
    must be the bits map_page writes for its page, NX included, in both page tables."""
    from ntpool.machine.memory import PTE_NX

    va = 0xFFFFFA8000000000 + (0x200 - 4) * 4096  # 4 pages in one page table, 6 in the next
    at_once, one_by_one = AddressSpace(PhysicalMemory(MiB)), AddressSpace(PhysicalMemory(MiB))
    at_once.map_pages(va, frames)
    for offset, pfn in enumerate(frames):
        one_by_one.map_page(va + (offset << 12), pfn)
    ptes = [at_once.pte(va + (i << 12)) for i in range(10)]
    assert ptes == [one_by_one.pte(va + (i << 12)) for i in range(10)]
    assert all(pte & PTE_NX and pte & PTE_PRESENT and pte >> 12 & 0xFFFFFFFFFF == pfn
               for pte, pfn in zip(ptes, frames))


def test_unmap_pages_gives_a_run_back_as_a_range_only_when_its_ptes_step_alike():
    """unmap_pages answers a run of frames whose PTEs differ only by the frame with a range
    (freed with one slice); a page whose PTE carries other flags makes it a list."""
    from ntpool.machine.memory import PTE_CACHE_DISABLE

    space = AddressSpace(PhysicalMemory(MiB))
    va = 0xFFFFFA8000000000
    space.map_pages(va, range(30, 34))
    assert space.unmap_pages(va, 4) == range(30, 34)
    space.map_pages(va, range(30, 34))
    space.set_pte_bits(va + 4096, PTE_CACHE_DISABLE)
    frames = space.unmap_pages(va, 4)
    assert frames == [30, 31, 32, 33] and not isinstance(frames, range)
    assert [space.pte(va + (i << 12)) for i in range(4)] == [0] * 4
    space.map_page(va, 50, executable=True)  # no NX: a PTE that is not negative as signed
    space.map_page(va + 4096, 51)
    assert space.unmap_pages(va, 2) == [50, 51]


def test_unmap_pages_of_a_missing_table_changes_nothing():
    space = AddressSpace(PhysicalMemory(MiB))
    va = 0xFFFFFA8000000000 + (0x200 - 2) * 4096
    space.map_pages(va, range(30, 32))  # only the first table exists
    with pytest.raises(KeyError):
        space.unmap_pages(va, 4)
    assert _walked(space, va, 2) == [30 << 12, 31 << 12]


def test_frames_are_taken_in_allocate_frame_order_and_given_back_in_runs():
    physical = PhysicalMemory(64 * 4096)
    taken = physical.allocate_frame()  # frame 1
    run = physical.allocate_frames(4)
    assert list(run) == [2, 3, 4, 5]
    physical.free_frame(3)  # a hole: the next grab starts there, as allocate_frame would
    assert list(physical.allocate_frames(3)) == [3, 6, 7]
    physical.free_frames(range(2, 6))
    physical.free_frames([6, 7, taken])
    assert physical.frames_used == 1 and not any(physical.frame_in_use[1:])
    assert physical.allocate_frame() == 1


@pytest.mark.parametrize("listening", [False, True])
def test_a_page_of_small_chunks_made_whole_gives_its_frame_back(listening):
    """ExFreePoolWithTag hands a page its free made whole to MiFreePoolPages: the frame is
    free again, the PTE cleared, the TLB forgets the page, a MappingChanged is published to
    whoever listens, the address translates no more; the next page taken reuses the frame. (A 1,000-byte pair on an empty pool does all of it each time.)"""
    from ntpool.hooks import MappingChanged

    k = ntpool.Kernel(nonpaged_pool_bytes=MiB, paged_pool_bytes=MiB)
    changed = []
    if listening:
        k.hooks.subscribe(MappingChanged, lambda event: changed.append(event.address))
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Whol"), "Whol")
    changed.clear()  # the pool's page tables made by the first page: the frames counted after
    used = k.physical.frames_used
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Whol")
    page = p & ~0xFFF
    pfn = k.space.translate(p) >> 12
    assert k.physical.frames_used == used + 1 and k.physical.frame_in_use[pfn]
    k.ExFreePoolWithTag(p, "Whol")
    assert k.physical.frames_used == used and not k.physical.frame_in_use[pfn]
    assert k.space.pte(page) == 0 and (page >> 12) not in k.space.tlb
    assert changed == ([page] if listening else []) and k.space.translate(p) is None
    again = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Whol")
    assert k.space.translate(again) >> 12 == pfn
