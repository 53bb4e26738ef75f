"""A full LFH subsegment its bucket has moved past keeps no Python object: its pages' index
entries are its bucket's shared FullLfhPage marks and its counts are in memory
(``SegmentHeap._lfh_set_aside``); anything that asks for it (a free of one of its blocks, a
walk, ``subsegment_of``) gets its object back with the same state (``_lfh_take_back``)."""

import struct

import ntpool
from ntpool.constants import PAGE_SHIFT
from ntpool.pool.segment_heap import layout as L
from ntpool.pool.segment_heap.heap import LFH as L_LFH, FullLfhPage, LfhSubsegment
from ntpool.tags import tag_value

NP = int(ntpool.PoolType.NonPagedPool)
MiB = 1 << 20


def _machine():
    k = ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows="11")
    warm = [k.ExAllocatePoolWithTag(NP, 100, "Warm") for _ in range(L.LFH_ACTIVATE_LIVE)]
    return k, k.pool.pool_for(NP), warm


def _counts(k, va):
    return struct.unpack("<HHH", k.read(va + L.LFH_FREE_COUNT, 6))  # FreeCount, BlockCount, FreeHint


def test_full_subsegments_are_marks_in_the_index_and_come_back_on_a_free():
    k, heap, _ = _machine()
    blocks = [k.ExAllocatePoolWithTag(NP, 100, "Full") for _ in range(300)]  # about 5 subsegments
    index = (blocks[0] - heap.base) >> PAGE_SHIFT
    first_page = index - heap.page_subsegments[index].page
    marks = heap.page_subsegments[first_page:first_page + 2]
    assert all(type(mark) is FullLfhPage for mark in marks) and [m.page for m in marks] == [0, 1]
    objects = {id(sub) for sub in heap.page_subsegments if type(sub) is LfhSubsegment}
    assert len(objects) == 1  # the current subsegment alone keeps an object
    va = heap.base + (first_page << PAGE_SHIFT)
    assert _counts(k, va)[:2] == (0, 63)
    # A free of one of its blocks (not the current subsegment's: the generic path) takes it back.
    k.ExFreePoolWithTag(blocks[0], "Full")
    sub = heap.subsegment_of(blocks[0])
    assert type(sub) is LfhSubsegment and sub.va == va and sub.free_count == 1
    assert heap.page_subsegments[first_page:first_page + 2] == [sub, sub]
    assert sub in sub.bucket.partial and not sub.is_current
    slot = sub.index_of[blocks[0] - 16 - va]
    assert sub.free_hint == slot and sub.free_bits == 1 << slot
    assert _counts(k, va) == (1, 63, slot)
    # and the bitmap says free; the block is allocated again from it once it is current.
    again = [k.ExAllocatePoolWithTag(NP, 100, "Full") for _ in range(200)]
    assert blocks[0] in again


def test_a_set_aside_subsegment_keeps_its_free_hint_in_memory_and_in_walks():
    k, heap, warm = _machine()
    blocks = [k.ExAllocatePoolWithTag(NP, 100, "Hint") for _ in range(63 * 3)]
    sub = heap.subsegment_of(blocks[70])  # a full subsegment, not current: taken back
    assert sub.free_bits == 0 and not sub.is_current
    mine = [b for b in blocks if heap.subsegment_of(b) is sub]
    k.ExFreePoolWithTag(mine[5], "Hint")  # FreeHint: that block's index
    hint = sub.free_hint
    current = heap.lfh_current[sub.bucket.index]
    # Fill the current subsegment and every other one, so this one is current, fills
    # and is set aside again behind a new one.
    more = []
    while type(heap.page_subsegments[(sub.va - heap.base) >> PAGE_SHIFT]) is not FullLfhPage:
        more.append(k.ExAllocatePoolWithTag(NP, 100, "Hint"))
        assert len(more) < 1000
    assert mine[5] in more and current is not heap.lfh_current[sub.bucket.index]
    assert _counts(k, sub.va) == (0, 63, hint)
    k.pool.sync_to_memory()  # before a dump: memory's counts stand
    assert _counts(k, sub.va) == (0, 63, hint)
    walked = [s for s in heap.subsegments() if s.va == sub.va]
    assert len(walked) == 1 and walked[0].free_count == 0
    assert heap.subsegment_of(sub.va + 0x1000) is walked[0]  # one object once taken back
    for va in dict.fromkeys(blocks + more + warm):  # (the freed block was allocated again)
        k.ExFreePoolWithTag(va, "Warm" if va in warm else "Hint")
    # Every LFH subsegment emptied is released but the current one (a bucket keeps it).
    left = {s for s in heap.page_subsegments if s is not None and s.kind == L_LFH}
    assert left == {heap.lfh_current[sub.bucket.index]}


def test_frees_into_a_subsegment_with_room_take_the_fast_path_but_the_one_that_empties_it():
    k, heap, warm = _machine()
    blocks = [k.ExAllocatePoolWithTag(NP, 100, "Part") for _ in range(63 * 3)]
    sub = heap.subsegment_of(blocks[100])  # full, not current (the first one holds a warm block)
    mine = [b for b in blocks if heap.subsegment_of(b) is sub]
    assert len(mine) == sub.block_count and not sub.is_current
    generic = []
    free_generic = k.pool.free_generic
    k.pool.free_generic = lambda *args: (generic.append(args[0]), free_generic(*args))
    k.ExFreePoolWithTag(mine[0], "Part")  # its first free: onto the bucket's partial list
    assert generic == [mine[0]] and sub in sub.bucket.partial
    for body in mine[1:-1]:  # the fast path: the bitmap, the free bits, FreeHint, the row
        k.ExFreePoolWithTag(body, "Part")
    assert generic == [mine[0]]
    assert sub.free_count == len(mine) - 1 and sub.free_hint == sub.index_of[mine[-2] - 16 - sub.va]
    busy = [b for b in mine if (k.read(sub.va + L.LFH_BITMAP + sub.index_of[b - 16 - sub.va] // 4, 1)[0]
                                >> (sub.index_of[b - 16 - sub.va] % 4 * 2)) & 3 == L.LFH_BUSY]
    assert busy == [mine[-1]]
    k.ExFreePoolWithTag(mine[-1], "Part")  # empties it: the generic path releases it
    assert generic == [mine[0], mine[-1]]
    assert heap.subsegment_of(sub.va) is None and sub not in sub.bucket.partial
    info = {row.TagUlong: row for row in k.pool_tags()}[tag_value("Part")]
    assert (info.NonPagedAllocs, info.NonPagedFrees) == (63 * 3, len(mine))
