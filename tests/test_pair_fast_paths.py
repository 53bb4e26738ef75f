"""The small pair's fast paths (``PoolAllocator.fast_allocate`` / ``fast_free``) in the
cases their shortcuts decide, and the tracker's packed totals they update."""

import pytest

import ntpool
from ntpool.constants import PAGE_SIZE
from ntpool.pool.layout import LOOKASIDE_MAX_BLOCKS
from ntpool.tags import tag_value
from ntpool.pool.tracker import BLOCK_CHARGES, COUNT_SHIFT, PoolTracker, charge_of, column_of, row_counts

NP, PAGED = int(ntpool.PoolType.NonPagedPool), int(ntpool.PoolType.PagedPool)
MiB = 1 << 20


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)


def _no_generic_free(k, monkeypatch):
    """Fail the test if a free leaves the fast path (the closure calls the allocator's)."""
    def refuse(*args):
        pytest.fail(f"the free fast path sent {args} to the generic path")
    monkeypatch.setattr(k.pool, "free_generic", refuse)


def _info(k, tag: str):
    return {row.TagUlong: row for row in k.pool_tags()}[tag_value(tag)]


def _blocks(k, body: int) -> int:
    return k.read(body - 16 + 2, 1)[0]


def test_a_chunk_that_ends_its_page_is_freed_by_the_fast_path_onto_the_lookaside(k, monkeypatch):
    # A fresh page's first chunk is at its front; the next is split from the end of what is
    # left on the page (Windows 7's split), so it ends the page: no next header to check.
    k.ExAllocatePoolWithTag(NP, 1000, "Frnt")
    last = k.ExAllocatePoolWithTag(NP, 100, "Last")
    assert (last - 16 + _blocks(k, last) * 16) % PAGE_SIZE == 0
    _no_generic_free(k, monkeypatch)
    k.ExFreePoolWithTag(last, "Last")
    assert k.nonpaged_pool.la.head[8] == last and not k.halted


def test_the_next_headers_previous_size_is_still_compared_on_the_fast_path(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Prev")  # 8 blocks at a fresh page's front
    following = p - 16 + 8 * 16
    k.write(following, bytes([9]))  # the next header's PreviousSize, not our BlockSize
    with pytest.raises(ntpool.BugCheck) as raised:
        k.ExFreePoolWithTag(p, "Prev")
    assert (raised.value.code, raised.value.parameters[:3]) == (0x19, (0x20, p - 16, following))


def test_a_chunk_larger_than_the_lookasides_is_freed_by_the_fast_path_into_the_lists(k, monkeypatch):
    # Depth is 0 for every BlockSize past the lookaside lists': the fast path's count < depth
    # test sends such a chunk on to the pool without a test of its size.
    pool = k.nonpaged_pool
    assert len(pool.la.depth) == len(pool.la.count) == 256
    assert not any(pool.la.depth[LOOKASIDE_MAX_BLOCKS + 1:])
    k.ExAllocatePoolWithTag(NP, 100, "Keep")  # keeps the page in the pool
    p = k.ExAllocatePoolWithTag(NP, 600, "Larg")
    blocks = _blocks(k, p)
    assert blocks == 39 > LOOKASIDE_MAX_BLOCKS
    _no_generic_free(k, monkeypatch)
    k.ExFreePoolWithTag(p, "Larg")
    # On the ListHeads, coalesced with the free space beside it, not on a lookaside.
    assert any(chunk <= p - 16 < chunk + 16 * blocks_listed for blocks_listed in range(1, 256)
               for chunk in pool.free_list(blocks_listed))
    assert not any(pool.la.count[LOOKASIDE_MAX_BLOCKS + 1:])
    assert not any(pool.system_lookaside.count[LOOKASIDE_MAX_BLOCKS + 1:])
    info = _info(k, "Larg")
    assert (info.NonPagedAllocs, info.NonPagedFrees, info.NonPagedUsed) == (1, 1, 0)


def test_depth_past_the_lookaside_sizes_stays_0_through_retuning(k):
    pool = k.nonpaged_pool
    for _ in range(2000):
        k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 100, "Tune"), "Tune")
    for _ in range(6):
        k.advance_time(1.0)
    for lookaside in pool.lookasides:
        assert not any(lookaside.depth[LOOKASIDE_MAX_BLOCKS + 1:])
        assert all(depth >= 4 for depth in lookaside.depth[1:LOOKASIDE_MAX_BLOCKS + 1])


@pytest.mark.parametrize("number_of_bytes", [1, 100, 240, 496])
def test_the_allocation_fast_path_takes_blocks_for_the_request(k, number_of_bytes):
    p = k.ExAllocatePoolWithTag(NP, number_of_bytes, "Blks")
    assert _blocks(k, p) == (number_of_bytes + 16 + 15) // 16
    k.ExFreePoolWithTag(p, "Blks")
    q = k.ExAllocatePoolWithTag(NP, number_of_bytes, "Blks")  # from the lookaside: same chunk
    assert q == p and _blocks(k, q) == (number_of_bytes + 16 + 15) // 16
    assert k.read(q - 16 + 3, 13) == bytes([2]) + tag_value("Blks").to_bytes(4, "little") + bytes(8)  # PoolType, tag, ProcessBilled


def test_a_float_size_is_refused_as_before(k):
    with pytest.raises(TypeError, match="NumberOfBytes must be an int, not float"):
        k.ExAllocatePoolWithTag(NP, 100.0, "Flot")


# --- the tracker's packed totals --------------------------------------------------------------

def test_a_row_is_four_totals_read_as_windows_six_fields():
    tracker = PoolTracker()
    tag = int.from_bytes(b"Trak", "little")
    for number_of_bytes in (128, 4096, 16):
        tracker.charge(tag, column_of(0), number_of_bytes)
    tracker.release(tag, column_of(0), 128)
    tracker.charge(tag, column_of(1), 64)
    row = tracker.rows[tag]
    assert len(row) == 4 and row[0] >> COUNT_SHIFT == 3
    assert row_counts(row) == (3, 1, 4096 + 16, 1, 0, 64)
    assert tracker.counts(tag) == (3, 1, 4112, 1, 0, 64)
    assert tracker.counts(tag ^ 1) == (0,) * 6
    [info] = tracker.snapshot()
    assert (info.NonPagedAllocs, info.NonPagedFrees, info.NonPagedUsed) == (3, 1, 4112)
    assert (info.PagedAllocs, info.PagedFrees, info.PagedUsed) == (1, 0, 64)
    assert BLOCK_CHARGES[8] == charge_of(128) == 1 << COUNT_SHIFT | 128


def test_the_fast_paths_and_the_generic_paths_keep_the_same_counts(k):
    live = [k.ExAllocatePoolWithTag(pool_type, size, "Mixd")
            for pool_type in (NP, PAGED) for size in (100, 100, 600, 5000)]
    live.append(k.ExAllocatePoolWithQuotaTag(NP, 100, "Mixd"))  # the generic path
    for body in live[:3] + live[4:6]:
        k.ExFreePoolWithTag(body, "Mixd")
    info = _info(k, "Mixd")
    assert (info.NonPagedAllocs, info.NonPagedFrees, info.NonPagedUsed) == (5, 3, 8192 + 128)
    assert (info.PagedAllocs, info.PagedFrees, info.PagedUsed) == (4, 2, 624 + 8192)


# --- Windows 10/11: the segment heap's LFH fast paths ------------------------------------------

def test_lfh_blocks_on_a_subsegments_later_pages_keep_their_bitmap_on_its_first(monkeypatch):
    from ntpool.pool.segment_heap import layout as L
    from ntpool.pool.segment_heap.heap import LFH

    k11 = ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows="11")
    [k11.ExAllocatePoolWithTag(NP, 100, "Warm") for _ in range(L.LFH_ACTIVATE_LIVE)]
    heap = k11.pool.pool_for(NP)
    live = [k11.ExAllocatePoolWithTag(NP, 100, "Lfhp") for _ in range(40)]
    on_lfh = [body for body in live if heap.subsegment_of(body).kind == LFH]
    sub = heap.subsegment_of(on_lfh[-1])
    mine = [body for body in on_lfh if heap.subsegment_of(body) is sub]
    pages = {(body - sub.va) // PAGE_SIZE for body in mine}
    assert {0, 1} <= pages  # blocks on its first page and on the next

    def bits(body):
        index = sub.index_of[body - 16 - sub.va]
        return (k11.read(sub.va + L.LFH_BITMAP + index // 4, 1)[0] >> (index % 4 * 2)) & 3

    for body in mine:  # each allocated by the fast path: busy, its header written
        assert bits(body) == L.LFH_BUSY
        assert k11.read(body - 16, 8) == bytes([0, 0, 8, 2]) + tag_value("Lfhp").to_bytes(4, "little")
    monkeypatch.setattr(k11.pool, "free_generic", lambda *args: pytest.fail(f"generic free {args}"))
    for body in mine:
        k11.ExFreePoolWithTag(body, "Lfhp")
        assert bits(body) == 0
    assert all(sub.free_bits >> sub.index_of[body - 16 - sub.va] & 1 for body in mine)
    info = _info(k11, "Lfhp")
    assert (info.NonPagedAllocs, info.NonPagedFrees, info.NonPagedUsed) == (40, len(mine), (40 - len(mine)) * 128)


# --- Driver Verifier's pool-tracking lane ----------------------------------------------------

class Tracked:
    name = "tracked.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def allocate(self, k, count, size=64, tag="Lane"):
        return [k.ExAllocatePoolWithTag(NP, size, tag) for _ in range(count)]


def test_the_tracking_lane_pops_the_lookaside_and_charges_the_tags_row(k):
    d = Tracked()
    k.load_driver(d)
    k.verifier.enable("tracked.sys", pool_tracking=True)
    [first] = d.allocate(k, 1)  # meets the tag stops (the verifier's own path)
    k.ExFreePoolWithTag(first, "Lane")  # onto the lookaside
    assert k.nonpaged_pool.la.head[5] == first
    calls = []
    plain = k.pool.allocate_plain
    k.pool.allocate_plain = lambda *args: (calls.append(args), plain(*args))[1]
    [again, fresh] = d.allocate(k, 2)  # both in the lane: a pop, then (list empty) a new chunk
    assert again == first and len(calls) == 1 and fresh != first
    assert k.read(again - 16 + 3, 13) == bytes([2]) + tag_value("Lane").to_bytes(4, "little") + bytes(8)
    info = _info(k, "Lane")
    assert (info.NonPagedAllocs, info.NonPagedFrees, info.NonPagedUsed) == (3, 1, 2 * 80)
    assert sorted(row.address for row in k.verifier.outstanding("tracked.sys")) == sorted([again, fresh])


# --- a chunk charged to a process's quota -------------------------------------------------

PROTECTED = 0x80000000


def _charged(k, tag="Quot"):
    """A 100-byte chunk charged to app.exe's quota, and a chunk after it on its page."""
    app = k.create_process("app.exe")
    k.set_current_process(app)
    p = k.ExAllocatePoolWithQuotaTag(NP, 100, tag)
    k.ExAllocatePoolWithQuotaTag(NP, 100, "Next")
    assert k.read(p - 16 + 3, 1)[0] & 0x8  # POOL_QUOTA
    return app, p


def test_a_charged_chunk_is_freed_without_the_generic_path(k, monkeypatch):
    app, p = _charged(k)
    assert app.nonpaged_quota_used == 256
    _no_generic_free(k, monkeypatch)
    k.ExFreePoolWithTag(p, "Quot")
    assert app.nonpaged_quota_used == 128  # the charge returned (the other chunk's is held)
    assert _info(k, "Quot").NonPagedFrees == 1 and _info(k, "Quot").NonPagedUsed == 0
    k.set_current_process(k.system_process)
    assert k.ExAllocatePoolWithTag(NP, 100, "Back") == p  # it went to the lookaside


@pytest.mark.parametrize("damage, expected", [
    (lambda k, p: k.write(p + 112, b"\x01"), (0x19, 0x20)),  # the next chunk's PreviousSize
    (lambda k, p: k.write(p + 113, b"\x07"), (0x19, 0x05)),  # the next chunk's PoolIndex
    (lambda k, p: k.write(p - 14, b"\x00"), (0x19, 0x08)),  # its BlockSize 0
])
def test_a_damaged_charged_chunk_gets_the_bug_check_the_generic_path_gives(damage, expected):
    outcomes = []
    for free in ("fast", "generic"):
        k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
        app, p = _charged(k)
        damage(k, p)
        with pytest.raises(ntpool.BugCheck) as info:
            k.ExFreePoolWithTag(p, "Quot") if free == "fast" else k.pool.free_generic(p, "Quot")
        outcomes.append((info.value.code, info.value.parameters))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0][0], outcomes[0][1][0]) == expected


def test_a_protected_charged_chunk_freed_with_another_tag_bug_checks(k):
    app, p = _charged(k, tag=tag_value("Prot") | PROTECTED)
    with pytest.raises(ntpool.BugCheck) as info:
        k.ExFreePoolWithTag(p, tag_value("Othr") | PROTECTED)
    assert (info.value.code, info.value.parameters[0]) == (0xC2, 0x0A)
    assert app.nonpaged_quota_used == 256  # nothing returned before the check
