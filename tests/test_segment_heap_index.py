"""The segment heap's page -> subsegment index against what memory says.

``SegmentHeap.subsegment_by_page`` (a list by page number from the heap's base) is what the
free fast path and every slow path ask to find a block's subsegment. Memory holds the truth
it mirrors: each segment's page range descriptors say which runs are LFH or VS subsegments
and how long they are, and each LFH subsegment's bitmap says which blocks are busy. Any
sequence of allocations and frees must leave the index and the subsegments' mirrors agreeing
with those bytes.
"""

import pytest
from hypothesis import given, settings, strategies as st

import ntpool
from ntpool.constants import PAGE_SHIFT, PAGE_SIZE
from ntpool.pool.descriptor import PAGE_RESERVED
from ntpool.pool.segment_heap import layout as L
from ntpool.pool.segment_heap.heap import LFH, VS, SegmentHeap

MiB = 1 << 20
POOL_TYPES = (ntpool.PoolType.NonPagedPool, ntpool.PoolType.NonPagedPoolNx,
              ntpool.PoolType.PagedPool)
# LFH sizes (a few, so buckets activate and fill several subsegments), VS sizes, big VS
# chunks and whole-page runs.
SIZES = st.one_of(st.sampled_from([24, 100, 200, 496]), st.integers(1, 0x1F0),
                  st.integers(0x200, 0xFE0), st.integers(0xFE1, 0x20000),
                  st.integers(0x20001, 0x60000))


def _lfh_busy_in_memory(k, sub) -> list[bool]:
    """Each block's busy bit of the LFH subsegment's bitmap, as a debugger reads it."""
    bitmap = k.read(sub.va + L.LFH_BITMAP, (sub.block_count * 2 + 7) // 8)
    return [(bitmap[index >> 2] >> ((index & 3) << 1)) & 3 == 1
            for index in range(sub.block_count)]


def check_index_matches_memory(k, heap: SegmentHeap) -> None:
    listed = list(heap.subsegments())
    assert [sub.va for sub in listed] == sorted({sub.va for sub in listed})  # once each, in order
    assert len(heap.subsegment_by_page) <= heap.page_count
    found = []
    for page in range(heap.page_count):
        va = heap.base + (page << PAGE_SHIFT)
        sub = heap.subsegment_of(va)
        in_segment = heap.segment_state[page // L.SEGMENT_PAGES] == 1
        if not in_segment or heap.page_kind[page] in (0, PAGE_RESERVED):
            assert sub is None, f"page {va:#x} holds no subsegment but the index names one"
            continue
        flags, unit = heap.descriptor(va)
        if flags not in (L.RANGE_LFH, L.RANGE_VS):
            assert sub is None, f"page {va:#x} is a big run but the index names a subsegment"
            continue
        assert sub is not None, f"page {va:#x} is in a subsegment the index does not name"
        assert sub.kind == (LFH if flags == L.RANGE_LFH else VS)
        assert unit == sub.pages and sub.va <= va < sub.va + (sub.pages << PAGE_SHIFT)
        # The free fast path's own subscript gives the same subsegment.
        assert heap.subsegment_by_page[(va - heap.base) >> PAGE_SHIFT] is sub
        if not found or found[-1] is not sub:
            found.append(sub)
    assert found == listed
    for sub in listed:
        if sub.kind == LFH:
            busy = _lfh_busy_in_memory(k, sub)
            assert [not sub.free_bits >> index & 1 for index in range(sub.block_count)] == busy
            assert sub.free_count == busy.count(False)
    # Addresses outside the heap, or past every subsegment page it has used, name nothing.
    assert heap.subsegment_of(heap.base - PAGE_SIZE) is None
    assert heap.subsegment_of(heap.limit) is None
    assert heap.subsegment_of(heap.base + (len(heap.subsegment_by_page) << PAGE_SHIFT)) is None


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("allocate"), st.sampled_from(POOL_TYPES), SIZES, st.integers(1, 150)),
    # Free every ``step``-th live allocation from ``start`` on: holes in many subsegments
    # (frees that are not the current subsegment's), some of them emptied.
    st.tuples(st.just("free"), st.integers(0, 7), st.integers(1, 4))), max_size=12))
def test_the_page_index_always_agrees_with_the_descriptors_and_bitmaps(ops):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows="11")
    live: list[int] = []
    for op in ops:
        if op[0] == "allocate":
            _, pool_type, size, count = op
            for _ in range(count):
                address = k.ExAllocatePoolWithTag(pool_type, size, "Indx")
                if address:
                    live.append(address)
        else:
            _, start, step = op
            for address in live[start::step]:
                k.ExFreePoolWithTag(address, "Indx")
            del live[start::step]
        for heap in k.pool.pools:
            check_index_matches_memory(k, heap)
    for address in live:  # freeing everything empties and releases subsegments
        k.ExFreePoolWithTag(address, "Indx")
    for heap in k.pool.pools:
        check_index_matches_memory(k, heap)


def test_a_released_subsegment_leaves_the_index():
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows="11")
    heap = k.nonpaged_pool
    warm = [k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Warm")
            for _ in range(L.LFH_ACTIVATE_LIVE)]  # VS chunks, until the LFH bucket is active
    blocks = [k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Indx")
              for _ in range(400)]  # several 63-block subsegments of 128 bytes
    first = heap.subsegment_of(blocks[0])
    assert first.kind == LFH and not first.is_current
    in_first = [b for b in warm + blocks if heap.subsegment_of(b) is first]
    assert len(in_first) == first.block_count
    for address in in_first:
        k.ExFreePoolWithTag(address, "Indx" if address in blocks else "Warm")
    assert all(heap.subsegment_of(first.va + (page << PAGE_SHIFT)) is None
               for page in range(first.pages))
    assert first not in list(heap.subsegments())
    check_index_matches_memory(k, heap)
    assert all(heap.subsegment_of(address) is not None for address in warm if address not in in_first)


def test_a_heap_must_start_its_512_gib_slot():
    """The free fast path's subscript is the page's number from the heap's base, found by
    the address's 512 GiB slot: a heap not at its slot's start could give a negative one."""
    k = ntpool.Kernel(windows="11")
    heap = k.nonpaged_pool
    with pytest.raises(ValueError, match="512 GiB"):
        SegmentHeap("Misplaced", 0, 0, heap.base + PAGE_SIZE, 4 * MiB, heap.space, heap.crash,
                    heap.keys, heap.heap_va, heap.random_data, heap.signature_constant)
