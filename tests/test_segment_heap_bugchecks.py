"""The segment heap's checks: what it catches (0x13A and the 0xC2 stops that remain), when,
and what it misses, each shown by a small buggy driver; the same driver on Windows 7 for
contrast where the designs differ."""

import struct

import pytest

import ntpool
from ntpool.pool.segment_heap import layout as L
from ntpool.tags import tag_value

MiB = 1 << 20
NX = ntpool.PoolType.NonPagedPoolNx
NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
HEAP_CORRUPTION = 0x13A


def machine(windows="11", **options):
    return ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows=windows,
                         **options)


def stop(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


class Driver:
    """A driver with a pool habit; each test gives it one bug."""

    name = "buggy.sys"
    tag = "Bugy"

    def DriverEntry(self, k, path):
        return 0

    def allocate(self, k, size, pool_type=NX):
        return k.ExAllocatePoolWithTag(pool_type, size, self.tag)

    def free(self, k, p):
        k.ExFreePoolWithTag(p, self.tag)

    def warm_up(self, k, size, pool_type=NX):
        """Enough live blocks of one size for the LFH to serve it (17)."""
        return [self.allocate(k, size, pool_type) for _ in range(L.LFH_ACTIVATE_LIVE)]


@pytest.fixture
def k11():
    k = machine()
    k.load_driver(Driver())
    return k


def lfh_neighbours(k, d, size):
    """Two busy LFH blocks, the second right after the first."""
    d.warm_up(k, size)
    blocks = [d.allocate(k, size) for _ in range(40)]
    step = (size + 31) & ~15
    for a in blocks:
        if a + step in blocks:
            return a, a + step
    raise AssertionError("no two adjacent LFH blocks")


# --- overruns ---------------------------------------------------------------------------------

def test_lfh_overrun_into_the_next_header_goes_unnoticed_but_windows_7_stops_at_the_free():
    """A NUL-terminated copy 4 bytes too long zeroes the next header's sizes and type."""
    k, d = machine(), Driver()
    a, b = lfh_neighbours(k, d, 0x70)
    k.write(a, b"n" * 0x70 + bytes(4))
    d.free(k, a)
    d.free(k, b)  # its header's PoolType and BlockSize are 0 now: nothing checks them
    assert not k.halted
    k7 = machine("7")
    a = d.allocate(k7, 0x70)
    d.allocate(k7, 0x70)
    k7.write(a, b"n" * 0x70 + bytes(4))
    error = stop(lambda: d.free(k7, a))
    assert (error.code, error.parameters[0]) == (0x19, 0x20)


def test_vs_overrun_into_the_next_encoded_header_is_0x13a_at_the_free(k11):
    d = Driver()
    a = d.allocate(k11, 0x500)
    b = d.allocate(k11, 0x500)
    held = k11.pool.allocation_size(a)
    k11.write(a, b"v" * (held + 0x10))  # through the next chunk's _HEAP_VS_CHUNK_HEADER
    error = stop(lambda: d.free(k11, a))
    assert error.code == HEAP_CORRUPTION
    assert error.parameters == (L.HeapFailure.ENTRY_CORRUPTION, k11.nonpaged_pool_nx.heap_va,
                                b - 0x20, 0)


def test_small_vs_overrun_is_caught_later_when_the_delay_free_list_drains(k11):
    d = Driver()
    a = d.allocate(k11, 0x250)
    d.allocate(k11, 0x250)
    others = [d.allocate(k11, 0x250) for _ in range(L.VS_DELAY_FREE_DEPTH)]
    k11.write(a, b"v" * (k11.pool.allocation_size(a) + 0x10))
    d.free(k11, a)  # queued: nothing looked at its neighbour yet
    for other in others[:L.VS_DELAY_FREE_DEPTH - 2]:
        d.free(k11, other)
    assert not k11.halted
    error = stop(lambda: d.free(k11, others[-1]))  # the 32nd: the list is freed, a first
    assert (error.code, error.parameters[0]) == (HEAP_CORRUPTION, L.HeapFailure.ENTRY_CORRUPTION)


# --- double frees in each backend -------------------------------------------------------------

def test_lfh_double_free(k11):
    d = Driver()
    d.warm_up(k11, 64)
    p = d.allocate(k11, 64)
    d.free(k11, p)
    error = stop(lambda: d.free(k11, p))
    assert error.code == HEAP_CORRUPTION
    assert error.parameters == (L.HeapFailure.SEGMENT_LFH_DOUBLE_FREE, k11.nonpaged_pool_nx.heap_va,
                                p - 16, 0)


def test_vs_double_free_of_a_large_chunk_is_caught_at_once(k11):
    d = Driver()
    p = d.allocate(k11, 0xF80)  # 1 KiB or more and past the lookaside: freed at once
    d.free(k11, p)
    error = stop(lambda: d.free(k11, p))
    assert error.parameters[:3] == (L.HeapFailure.BLOCK_NOT_BUSY, k11.nonpaged_pool_nx.heap_va,
                                    p - 0x20)


def test_vs_double_free_of_a_small_chunk_is_caught_when_the_delay_list_drains(k11):
    d = Driver()
    p = d.allocate(k11, 0x100 + 0x1F0)
    others = [d.allocate(k11, 0x300) for _ in range(L.VS_DELAY_FREE_DEPTH)]
    d.free(k11, p)
    d.free(k11, p)  # the chunk is still busy in its header: queued again
    for other in others[:L.VS_DELAY_FREE_DEPTH - 3]:
        d.free(k11, other)
    assert not k11.halted
    error = stop(lambda: d.free(k11, others[-1]))
    assert error.parameters[:3] == (L.HeapFailure.BLOCK_NOT_BUSY, k11.nonpaged_pool_nx.heap_va,
                                    p - 0x20)


def test_big_double_free_is_bad_pool_caller_0x99(k11):
    d = Driver()
    p = d.allocate(k11, 0x30000)  # over 128 KiB: pages from the segment backend
    d.free(k11, p)
    error = stop(lambda: d.free(k11, p))
    assert (error.code, error.parameters[:2]) == (0xC2, (0x99, p))


def test_overrun_into_a_big_allocations_vs_header_is_0x13a_at_its_free(k11):
    d = Driver()
    d.allocate(k11, 0xF80)  # a VS block, then a 0x1800-byte big allocation behind it
    big = d.allocate(k11, 0x1800)
    assert big & 0xFFF == 0 and k11.nonpaged_pool_nx.big_in_vs(big)
    header = big - 16  # the big allocation's _HEAP_VS_CHUNK_HEADER, just before its page
    k11.write(header, b"v" * 16)  # an overrun from below reaches it first
    error = stop(lambda: d.free(k11, big))
    assert error.code == HEAP_CORRUPTION
    assert error.parameters == (L.HeapFailure.ENTRY_CORRUPTION, k11.nonpaged_pool_nx.heap_va,
                                header, 0)


def test_overrun_past_a_big_vs_allocation_is_caught_at_its_free_not_windows_7():
    # Windows 7: the big allocation's pages end at a page boundary and the write stays in
    # its slack (missed). The segment heap's VS chunk ends at the 16-byte boundary and
    # the next chunk's encoded header follows.
    k, d = machine(), Driver()
    k.load_driver(d)
    big = d.allocate(k, 0x1800)
    d.allocate(k, 0x300)  # its neighbour, in the same page after it
    k.write(big, b"o" * (0x1800 + 0x10))
    error = stop(lambda: d.free(k, big))
    assert (error.code, error.parameters[0]) == (HEAP_CORRUPTION, L.HeapFailure.ENTRY_CORRUPTION)
    k7, d7 = machine("7"), Driver()
    k7.load_driver(d7)
    big7 = d7.allocate(k7, 0x1800, NP)
    k7.write(big7, b"o" * (0x1800 + 0x10))
    d7.free(k7, big7)
    assert not k7.halted


def test_double_free_of_a_big_vs_allocation_is_bad_pool_caller_0x99(k11):
    d = Driver()
    p = d.allocate(k11, 0x1800)
    assert k11.nonpaged_pool_nx.big_in_vs(p)
    d.free(k11, p)
    error = stop(lambda: d.free(k11, p))
    assert (error.code, error.parameters[:2]) == (0xC2, (0x99, p))


# --- bitmap, lookaside and quota corruption --------------------------------------------------

def test_bad_lfh_bitmap_state_is_0x13a_0x10(k11):
    d = Driver()
    d.warm_up(k11, 64)
    p = d.allocate(k11, 64)
    sub = k11.nonpaged_pool_nx.subsegment_of(p)
    k11.write(sub.va + L.LFH_BITMAP, b"\xFF" * 8)  # a wild write over the block bitmap
    victim = sub.va + sub.offsets[min(31, sub.block_count - 1)] + 16
    error = stop(lambda: d.free(k11, victim if victim != p else p))
    assert error.parameters[0] == L.HeapFailure.SEGMENT_LFH_BITMAP_CORRUPTION


def enable_lookaside(k, heap, size):
    bucket = L.lookaside_bucket(size + 16)
    for _ in range(3):
        heap.lookaside[bucket].frees = 1
        k.pool.balance_set_pass()
    return bucket


def test_use_after_free_of_a_lookaside_entry_is_0x13a_at_the_next_allocation(k11):
    d = Driver()
    enable_lookaside(k11, k11.nonpaged_pool_nx, 0x300)
    a, b = d.allocate(k11, 0x300), d.allocate(k11, 0x300)
    d.free(k11, a)
    d.free(k11, b)
    k11.write(b - 16, struct.pack("<Q", 0x4141414141414141))  # over b's SLIST link
    error = stop(lambda: d.allocate(k11, 0x300))
    assert error.parameters[:3] == (L.HeapFailure.LISTENTRY_CORRUPTION, k11.nonpaged_pool_nx.heap_va,
                                    b - 16)


def test_corrupt_block_size_sends_an_lfh_block_to_the_lookaside_and_is_caught_at_its_reuse(k11):
    d = Driver()
    enable_lookaside(k11, k11.nonpaged_pool_nx, 0x3F0)
    a, b = lfh_neighbours(k11, d, 0x70)
    k11.write(a + 0x70, bytes([0, 0, 0x40]))  # b's BlockSize now says 0x400 bytes
    d.free(k11, b)  # goes to the 0x400 lookaside bucket, unchecked
    assert not k11.halted
    error = stop(lambda: d.allocate(k11, 0x3F0))
    assert error.parameters[:3] == (L.HeapFailure.LISTENTRY_CORRUPTION, k11.nonpaged_pool_nx.heap_va,
                                    b - 16)


def test_process_billed_that_does_not_decode_is_bad_pool_header_0xe(k11):
    k11.set_current_process(k11.create_process("app.exe"))
    p = k11.ExAllocatePoolWithQuotaTag(PP, 0x80, "Quot")
    k11.write(p - 8, struct.pack("<Q", 0xFFFF800012345678))  # an underrun over ProcessBilled
    error = stop(lambda: k11.ExFreePoolWithTag(p, "Quot"))
    assert (error.code, error.parameters[0], error.parameters[1]) == (0x19, 0x0E, p - 16)


# --- the stops that remain: contracts, IRQL, tags ---------------------------------------------

def test_wrong_tag_is_still_bad_pool_caller_0xa(k11):
    # Tags are compared on free only for protected allocations (bit 31), as in Windows 7.
    p = k11.ExAllocatePoolWithTag(NX, 0x40, 0x80000000 | 0x476F6F64)  # 'Good', protected
    error = stop(lambda: k11.ExFreePoolWithTag(p, "Evil"))
    assert (error.code, error.parameters[0]) == (0xC2, 0x0A)


def test_paged_allocation_at_dispatch_is_0xc2_8(k11):
    k11.KeRaiseIrql(ntpool.DISPATCH_LEVEL)
    error = stop(lambda: k11.ExAllocatePoolWithTag(PP, 0x40, "Irql"))
    assert (error.code, error.parameters[0]) == (0xC2, 0x08)


def test_paged_free_at_dispatch_is_0xc2_9(k11):
    p = k11.ExAllocatePoolWithTag(PP, 0x40, "Page")
    k11.KeRaiseIrql(ntpool.DISPATCH_LEVEL)
    error = stop(lambda: k11.ExFreePoolWithTag(p, "Page"))
    assert (error.code, error.parameters[0]) == (0xC2, 0x09)


def test_fsrtl_raises_when_the_paged_heap_is_exhausted():
    k = ntpool.Kernel(nonpaged_pool_bytes=MiB, paged_pool_bytes=MiB, windows="11")
    with pytest.raises(ntpool.NtStatusError):
        for _ in range(10_000):
            k.FsRtlAllocatePoolWithTag(PP, 0x8000, "Fsrt")
    assert not k.halted


def test_ndis_memory_round_trips_with_its_length_checked():
    k = machine()
    status, va = k.NdisAllocateMemoryWithTag(0x250, "Ndis")
    assert status == 0 and k.read(va - 12, 4) == struct.pack("<I", tag_value("Ndis"))
    with pytest.raises(ntpool.NdisContractError):
        k.NdisFreeMemory(va, 0x10, 0)
    k.NdisFreeMemory(va, 0x250, 0)
    assert not k.halted


def test_verifier_special_pool_catches_the_overrun_the_heap_misses():
    k, d = machine(), Driver()
    k.verifier.enable(d.name, special_pool=True)
    k.load_driver(d)
    p = d.allocate(k, 0x70)
    error = stop(lambda: k.write(p, b"n" * 0x74))
    assert error.code in (0xCD, 0xD6)


def test_verifier_pool_tracking_reports_a_leak_at_unload():
    k, d = machine(), Driver()
    k.verifier.enable(d.name, pool_tracking=True)
    loaded = k.load_driver(d)
    d.allocate(k, 0x70)
    error = stop(lambda: k.unload_driver(loaded))
    assert (error.code, error.parameters[0]) == (0xC4, 0x62)


# --- Driver Verifier's special pool as Windows 10/11 lay it out --------------------------------

def test_special_pool_has_a_paged_and_a_nonpaged_region_and_nx_pages_on_windows_11(tmp_path):
    from ntpool.debugger.session import KdSession
    from ntpool.dump.reader import DumpReader
    from ntpool.machine.memory import PTE_NX
    from ntpool.verifier.special_pool import PAGED_REGION_OFFSET, SPECIAL_POOL_BASE

    k, d = machine(), Driver()
    k.verifier.enable(d.name, special_pool=True)
    k.load_driver(d)
    nonpaged, nx, paged = (d.allocate(k, 0x70, pool_type) for pool_type in (NP, NX, PP))
    paged_base = SPECIAL_POOL_BASE + PAGED_REGION_OFFSET
    assert SPECIAL_POOL_BASE <= nonpaged < paged_base and SPECIAL_POOL_BASE <= nx < paged_base
    assert paged_base <= paged < paged_base + PAGED_REGION_OFFSET
    # NonPagedPool stays executable on Windows 10/11; NonPagedPoolNx and paged pool do not.
    assert [bool(k.space.pte(p) & PTE_NX) for p in (nonpaged, nx, paged)] == [False, True, True]
    error = stop(lambda: k.write(paged, b"p" * 0x71))  # the guard page after a paged one
    assert error.code in (0xCD, 0xD6) and error.parameters[0] == paged + 0x70
    path = tmp_path / "MEMORY.DMP"
    k.write_dump(path, "kernel")
    session = KdSession(DumpReader(path))
    text = session.execute(f"!pool {paged:x}")
    assert "region is Special pool" in text and f"*{paged:016x} size:   70" in text
    assert "(Paged)" in text
    found = session.execute(f"!poolfind {d.tag[::-1]} 1")
    assert f"*{paged:016x} :special pool allocation" in found


def test_windows_7_keeps_one_special_pool_region_with_nx_pages():
    from ntpool.machine.memory import PTE_NX
    from ntpool.verifier.special_pool import PAGED_REGION_OFFSET, SPECIAL_POOL_BASE

    k, d = machine("7"), Driver()
    k.verifier.enable(d.name, special_pool=True)
    k.load_driver(d)
    nonpaged, paged = d.allocate(k, 0x70, NP), d.allocate(k, 0x70, PP)
    assert SPECIAL_POOL_BASE <= nonpaged < SPECIAL_POOL_BASE + PAGED_REGION_OFFSET
    assert SPECIAL_POOL_BASE <= paged < SPECIAL_POOL_BASE + PAGED_REGION_OFFSET
    assert k.space.pte(nonpaged) & PTE_NX and k.space.pte(paged) & PTE_NX


# --- an LFH block charged to a process, freed on the free fast path ---------------------------

def _charged_lfh_block(k, process):
    from ntpool.tools.corruption_fuzz import warm_lfh

    warm_lfh(k, (PP,), (0x80,))  # the bucket active: the block comes from the LFH
    k.set_current_process(process)
    p = k.ExAllocatePoolWithQuotaTag(PP, 0x80, "Quot")
    from ntpool.pool.segment_heap.heap import LFH

    assert k.paged_pool.subsegment_of(p).kind == LFH
    return p


def test_a_charged_lfh_block_is_freed_on_the_fast_path_and_its_charge_returned(monkeypatch):
    k = machine()
    process = k.create_process("app.exe")
    p = _charged_lfh_block(k, process)
    assert process.quota_usage[1] == 0x90
    monkeypatch.setattr(k.pool, "free_generic", lambda *args: pytest.fail(f"generic free of {args}"))
    k.ExFreePoolWithTag(p, "Quot")
    assert process.quota_usage[1] == 0


def test_a_charged_lfh_block_whose_process_billed_is_damaged_stops_as_on_the_generic_path():
    outcomes = []
    for free in ("fast", "generic"):
        k = machine()
        p = _charged_lfh_block(k, k.create_process("app.exe"))
        k.write(p - 8, struct.pack("<Q", 0xFFFF800012345678))  # an underrun over ProcessBilled
        error = stop(lambda: k.ExFreePoolWithTag(p, "Quot") if free == "fast" else
                     k.pool.free_generic(p, "Quot"))
        outcomes.append((error.code, error.parameters[0], error.parameters[1] - p))
    assert outcomes[0] == outcomes[1] == (0x19, 0x0E, -16)  # (BAD_POOL_HEADER, 0xE, the header)
