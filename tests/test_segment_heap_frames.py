"""``LfhSubsegment.frames``: the LFH fast paths' one subscript for a page's frame. An entry
that is not 0 must always be what the TLB holds for that page of the subsegment, and a
resident page must have its entry (else the fast paths would never serve it), through
allocation, frees that release subsegments, full subsegments set aside and taken back,
paging out and in."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import PAGE_SHIFT
from ntpool.pool.segment_heap.heap import LfhSubsegment

NP, PAGED = int(ntpool.PoolType.NonPagedPool), int(ntpool.PoolType.PagedPool)
MiB = 1 << 20


def _check(k) -> None:
    for heap in k.pool.pools:
        seen = set()
        for sub in heap.page_subsegments:  # (the raw index: set-aside marks stay marks)
            if type(sub) is not LfhSubsegment or id(sub) in seen:
                continue
            seen.add(id(sub))
            assert len(sub.frames) == sub.pages
            for offset, frame in enumerate(sub.frames):
                vpn = (sub.va >> PAGE_SHIFT) + offset
                if frame:
                    assert k.space.tlb.get(vpn) == frame, (heap.name, hex(sub.va), offset)
                elif vpn in k.space.tlb:
                    pytest.fail(f"{heap.name} {sub.va:#x} page {offset} is resident but not on the fast path")


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
    sub = heap.subsegment_of(first)
    page = (first - sub.va) >> PAGE_SHIFT
    assert sub.is_current and sub.frames[page]
    assert k.page_out(first) == 1 and sub.frames[page] == 0
    generic = []
    free_generic = k.pool.free_generic
    k.pool.free_generic = lambda *args: (generic.append(args), free_generic(*args))
    k.ExFreePoolWithTag(first, "Lfrm")  # the generic path pages it in (SegmentHeap._pa)
    assert len(generic) == 1 and sub.frames[page] == k.space.tlb[first >> PAGE_SHIFT]
    assert sub.frames[(second - sub.va) >> PAGE_SHIFT]
    k.ExFreePoolWithTag(second, "Lfrm")  # the fast path again (same subsegment, resident)
    assert len(generic) == 1
    _check(k)


def test_a_subsegment_set_aside_and_taken_back_while_paged_out_has_its_frames_from_the_tlb():
    k = ntpool.Kernel(windows="11")
    _activate(k, PAGED, (100,))
    heap = k.paged_pool
    blocks = [k.ExAllocatePoolWithTag(PAGED, 100, "Lfrm") for _ in range(200)]  # several subsegments
    assert k.page_out() > 0
    sub = heap.subsegment_of(blocks[0])  # a full one, set aside: made again, nothing resident
    assert not sub.is_current and sub.frames == [0] * sub.pages
    k.ExFreePoolWithTag(blocks[0], "Lfrm")  # pages its first page back in
    assert sub.frames[0] == k.space.tlb[sub.va >> PAGE_SHIFT]
    _check(k)
    for va in blocks[1:]:
        k.ExFreePoolWithTag(va, "Lfrm")
    _check(k)
