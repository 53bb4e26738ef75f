"""``Pool.small_frames``: the fast paths' one subscript for a page's frame and kind. An entry
that is not 0 must always be what the TLB holds for a resident page of small chunks, through
allocation, frees that release pages, paging out and in, and big allocations reusing pages;
``Pool.small_deltas`` must follow it entry for entry."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import PAGE_SHIFT, PAGE_SIZE
from ntpool.pool.descriptor import PAGE_SMALL

NP, PAGED = int(ntpool.PoolType.NonPagedPool), int(ntpool.PoolType.PagedPool)
MiB = 1 << 20


def _check(k) -> None:
    for pool in (k.nonpaged_pool, k.paged_pool):
        assert len(pool.small_frames) <= pool.page_count
        # small_deltas: each frame less its page's offset from the base, None for a 0
        assert pool.small_deltas == [frame - index * PAGE_SIZE if frame else None
                                     for index, frame in enumerate(pool.small_frames)], pool.name
        for index in range(pool.page_count):
            frame = pool.small_frames[index] if index < len(pool.small_frames) else 0
            vpn = (pool.base >> PAGE_SHIFT) + index
            if frame:
                assert pool.page_kind[index] == PAGE_SMALL, (pool.name, index)
                assert k.space.tlb.get(vpn) == frame, (pool.name, index)
            elif pool.page_kind[index] == PAGE_SMALL and vpn in k.space.tlb:
                # Allowed only for a page paged back in by another way than the pool's own
                # access (none in this workload): the fast path would skip it, never misuse it.
                pytest.fail(f"{pool.name} page {index} is resident small but not on the fast path")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_entries_agree_with_the_tlb_and_the_page_kinds(seed):
    rng = random.Random(seed)
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    live = []
    for _ in range(300):
        action = rng.random()
        if action < 0.5 or not live:
            pool_type = rng.choice((NP, PAGED))
            size = rng.choice((rng.randrange(1, 500), rng.randrange(500, 4000), rng.randrange(4000, 20000)))
            va = k.ExAllocatePoolWithTag(pool_type, size, "Smfr")
            if va:
                live.append(va)
        elif action < 0.95:
            k.ExFreePoolWithTag(live.pop(rng.randrange(len(live))), "Smfr")
        else:
            k.page_out()  # every resident paged pool page goes out
        _check(k)
    for va in live:
        k.ExFreePoolWithTag(va, "Smfr")
    _check(k)


def test_a_page_paged_back_in_by_the_pool_is_on_the_fast_path_again():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    first, second = (k.ExAllocatePoolWithTag(PAGED, 100, "Smfr") for _ in range(2))
    pool = k.paged_pool
    index = (first - pool.base) >> PAGE_SHIFT
    assert (second - pool.base) >> PAGE_SHIFT == index and pool.small_frames[index]
    assert k.page_out(first) == 1 and pool.small_frames[index] == 0
    generic = []
    free_generic = k.pool.free_generic
    k.pool.free_generic = lambda *args: (generic.append(args), free_generic(*args))
    k.ExFreePoolWithTag(first, "Smfr")  # the generic path pages it in (Pool._pa)
    assert len(generic) == 1 and pool.small_frames[index] == k.space.tlb[first >> PAGE_SHIFT]
    k.ExFreePoolWithTag(second, "Smfr")  # the fast path again
    assert len(generic) == 1
    _check(k)


def test_a_page_paged_back_in_any_way_is_published_and_on_the_fast_path_again():
    from ntpool.hooks import PagedIn

    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    va = k.ExAllocatePoolWithTag(PAGED, 100, "Smfr")
    pool = k.paged_pool
    index = (va - pool.base) >> PAGE_SHIFT
    paged_in = []
    k.hooks.subscribe(PagedIn, paged_in.append)
    assert k.page_out(va) == 1 and pool.small_frames[index] == 0
    k.read(va, 8)  # a driver's read brings it back: not the pool's own access
    assert paged_in == [PagedIn(va & ~0xFFF)]
    assert pool.small_frames[index] == k.space.tlb[va >> PAGE_SHIFT]
    _check(k)


def test_a_windows_11_lfh_page_paged_out_loses_no_block():
    # The segment heap's allocation fast path translated the subsegment's pages after taking
    # the block from its free bits: a page paged out sent the request to the generic path
    # with that block gone from the bits but free in memory's bitmap.
    from ntpool.pool.segment_heap.layout import LFH_BITMAP

    k = ntpool.Kernel(windows="11")
    live = [k.ExAllocatePoolWithTag(PAGED, 100, "Lfhp") for _ in range(3000)]
    for va in live[:-10]:
        k.ExFreePoolWithTag(va, "Lfhp")
    sub = k.paged_pool.lfh_current[(100 + 31) >> 4]
    assert sub is not None and k.page_out() > 0
    k.ExAllocatePoolWithTag(PAGED, 100, "Lfhp")
    bitmap = k.read(sub.va + LFH_BITMAP, 16)
    free_in_memory = [i for i in range(len(sub.offsets))
                      if (bitmap[i >> 2] >> ((i & 3) << 1)) & 3 != 1]
    free_in_bits = [i for i in range(len(sub.offsets)) if sub.free_bits >> i & 1]
    assert free_in_bits == free_in_memory
