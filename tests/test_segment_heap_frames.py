"""``SegmentHeap.lfh_frames``: the LFH fast paths' one subscript for a page's frame. An entry
that is not 0 must always be what the TLB holds for a resident page of a live LFH subsegment,
through allocation, frees that release subsegments, paging out and in; and a resident page
of a live LFH subsegment must have its entry (else the fast paths would never serve it)."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import PAGE_SHIFT
from ntpool.pool.segment_heap.heap import LFH

NP, PAGED = int(ntpool.PoolType.NonPagedPool), int(ntpool.PoolType.PagedPool)
MiB = 1 << 20


def _check(k) -> None:
    for heap in k.pool.pools:
        by_page = heap.subsegment_by_page
        assert len(heap.lfh_frames) <= heap.page_count
        for index in range(max(len(by_page), len(heap.lfh_frames))):
            frame = heap.lfh_frames[index] if index < len(heap.lfh_frames) else 0
            sub = by_page[index] if index < len(by_page) else None
            lfh = sub is not None and sub.kind == LFH
            vpn = heap.first_page + index
            if frame:
                assert lfh, (heap.name, index)
                assert k.space.tlb.get(vpn) == frame, (heap.name, index)
            elif lfh and vpn in k.space.tlb:
                pytest.fail(f"{heap.name} page {index} is a resident LFH page but not on the fast path")


def _activate(k, pool_type: int, sizes) -> None:
    """Make the LFH buckets of ``sizes`` active (17 live at once), then free those blocks."""
    for size in sizes:
        held = [k.ExAllocatePoolWithTag(pool_type, size, "Warm") for _ in range(20)]
        for va in held:
            k.ExFreePoolWithTag(va, "Warm")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_entries_agree_with_the_tlb_and_the_subsegments(seed):
    rng = random.Random(seed)
    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    sizes = (24, 100, 200, 480)
    for pool_type in (NP, PAGED):
        _activate(k, pool_type, sizes)
    live = []
    for _ in range(400):
        action = rng.random()
        if action < 0.55 or not live:
            va = k.ExAllocatePoolWithTag(rng.choice((NP, PAGED)), rng.choice(sizes), "Lfrm")
            if va:
                live.append(va)
        elif action < 0.97:
            k.ExFreePoolWithTag(live.pop(rng.randrange(len(live))), "Lfrm")
        else:
            k.page_out()  # every resident paged pool page goes out
        _check(k)
    for va in live:
        k.ExFreePoolWithTag(va, "Lfrm")
    _check(k)


def test_a_page_paged_out_takes_the_generic_path_then_the_fast_path_again():
    k = ntpool.Kernel(windows="11")
    _activate(k, PAGED, (100,))
    first, second = (k.ExAllocatePoolWithTag(PAGED, 100, "Lfrm") for _ in range(2))
    heap = k.paged_pool
    index = (first - heap.base) >> PAGE_SHIFT
    sub = heap.subsegment_by_page[index]
    assert sub.is_current and heap.lfh_frames[index]
    assert k.page_out(first) == 1 and heap.lfh_frames[index] == 0
    generic = []
    free_generic = k.pool.free_generic
    k.pool.free_generic = lambda *args: (generic.append(args), free_generic(*args))
    k.ExFreePoolWithTag(first, "Lfrm")  # the generic path pages it in (SegmentHeap._pa)
    assert len(generic) == 1 and heap.lfh_frames[index] == k.space.tlb[first >> PAGE_SHIFT]
    assert heap.lfh_frames[(second - heap.base) >> PAGE_SHIFT]
    k.ExFreePoolWithTag(second, "Lfrm")  # the fast path again (same subsegment, resident)
    assert len(generic) == 1
    _check(k)


def test_a_subsegment_released_clears_its_entries():
    k = ntpool.Kernel(windows="11")
    _activate(k, NP, (100,))
    heap = k.nonpaged_pool
    blocks = [k.ExAllocatePoolWithTag(NP, 100, "Lfrm") for _ in range(200)]  # several subsegments
    pages = {(va - heap.base) >> PAGE_SHIFT for va in blocks}
    assert all(heap.lfh_frames[page] for page in pages)
    for va in blocks:
        k.ExFreePoolWithTag(va, "Lfrm")
    released = [page for page in pages if heap.subsegment_by_page[page] is None]
    assert released and all(heap.lfh_frames[page] == 0 for page in released)
    _check(k)
