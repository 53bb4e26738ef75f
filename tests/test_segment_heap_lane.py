"""Driver Verifier's pool-tracking lane on the segment heap: a request the verifier only
watches takes its block from the active LFH bucket's current subsegment as the allocation
fast path does (``SegmentHeapAllocator.allocate_small_plain``), charges the tag's row it is
handed, and falls back to ``allocate_plain`` when the bucket has no such block."""

import ntpool
from ntpool.pool.segment_heap import layout as L
from ntpool.tags import tag_value

NP = int(ntpool.PoolType.NonPagedPool)
MiB = 1 << 20


class Tracked:
    name = "tracked11.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def allocate(self, k, count, size=100, tag="Lane"):
        return [k.ExAllocatePoolWithTag(NP, size, tag) for _ in range(count)]


def _info(k, tag: str):
    return {row.TagUlong: row for row in k.pool_tags()}[tag_value(tag)]


def _busy(k, heap, body: int) -> int:
    sub = heap.subsegment_of(body)
    index = sub.index_of[body - 16 - sub.va]
    return (k.read(sub.va + L.LFH_BITMAP + index // 4, 1)[0] >> (index % 4 * 2)) & 3


def test_the_tracking_lane_takes_lfh_blocks_and_charges_the_tags_row():
    k = ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows="11")
    heap = k.pool.pool_for(NP)
    d = Tracked()
    k.load_driver(d)
    k.verifier.enable(Tracked.name, pool_tracking=True)
    calls = []
    plain = k.pool.allocate_plain
    k.pool.allocate_plain = lambda *args: (calls.append(args), plain(*args))[1]
    warm = d.allocate(k, L.LFH_ACTIVATE_LIVE + 3)  # VS chunks (allocate_plain) until the LFH is active
    assert calls and heap.lfh_current[(100 + 31) >> 4].free_bits
    before = len(calls)
    taken = d.allocate(k, 10)
    assert len(calls) == before  # every one from the current subsegment, inline
    for body in taken:
        assert heap.subsegment_of(body).is_current and _busy(k, heap, body) == L.LFH_BUSY
        assert k.read(body - 16, 8) == bytes([0, 0, 8, 2]) + tag_value("Lane").to_bytes(4, "little")
    outstanding = {row.address for row in k.verifier.outstanding(Tracked.name)}
    assert set(taken) <= outstanding and set(warm) <= outstanding
    info = _info(k, "Lane")
    assert info.NonPagedAllocs == len(warm) + len(taken)
    for body in warm + taken:
        k.ExFreePoolWithTag(body, "Lane")
    info = _info(k, "Lane")
    assert (info.NonPagedAllocs, info.NonPagedFrees, info.NonPagedUsed) == (len(warm) + 10, len(warm) + 10, 0)
    assert not k.verifier.outstanding(Tracked.name)


def test_the_lane_falls_back_when_the_current_subsegment_is_paged_out():
    k = ntpool.Kernel(windows="11")
    heap = k.paged_pool
    d = Tracked()
    k.load_driver(d)
    k.verifier.enable(Tracked.name, pool_tracking=True)
    paged = int(ntpool.PoolType.PagedPool)
    held = [k.ExAllocatePoolWithTag(paged, 100, "Lane") for _ in range(L.LFH_ACTIVATE_LIVE + 3)]
    sub = heap.lfh_current[(100 + 31) >> 4]
    assert sub.free_bits and k.page_out() > 0
    calls = []
    plain = k.pool.allocate_plain
    k.pool.allocate_plain = lambda *args: (calls.append(args), plain(*args))[1]
    body = k.ExAllocatePoolWithTag(paged, 100, "Lane")
    assert len(calls) == 1 and body  # the generic path pages the subsegment back in
    assert _busy(k, heap, body) == L.LFH_BUSY
    free_in_bits = {i for i in range(sub.block_count) if sub.free_bits >> i & 1}
    busy_in_memory = {i for i in range(sub.block_count)
                      if _busy(k, heap, sub.va + sub.offsets[i] + 16) == L.LFH_BUSY}
    assert not free_in_bits & busy_in_memory
    for va in held + [body]:
        k.ExFreePoolWithTag(va, "Lane")
