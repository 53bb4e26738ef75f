"""The allocator's design rules (reference section 4)."""

import pytest

import ntpool
from ntpool.pool.descriptor import PAGE_BIG_FIRST
from ntpool.pool.layout import POOL_HEADER, page_problems, walk_page

NP = ntpool.PoolType.NonPagedPool
PP = ntpool.PoolType.PagedPool
MiB = 1 << 20


def header(k, p):
    h = POOL_HEADER.unpack_from(k.read(p - 16, 16))
    return {"prev": h.PreviousSize, "index": h.PoolIndex, "blocks": h.BlockSize, "type": h.PoolType,
            "tag": h.PoolTag}


def page_of(k, p):
    return k.read(p & ~0xFFF, 4096)


def test_header_fields_of_a_fresh_chunk(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Fred")
    h = header(k, p)
    assert h == {"prev": 0, "index": 0, "blocks": 8, "type": 0x2, "tag": 0x46726564}
    assert p % 16 == 0


def test_paged_chunks_carry_paged_type(k):
    p = k.ExAllocatePoolWithTag(PP, 1, "Pg  ")
    assert header(k, p)["type"] == 0x3
    assert header(k, p)["blocks"] == 2  # 1 byte + header, rounded to 16


@pytest.mark.parametrize("size, blocks", [(1, 2), (16, 2), (17, 3), (100, 8), (0xFE0, 255)])
def test_block_size_is_bytes_plus_header_rounded(k, size, blocks):
    assert header(k, k.ExAllocatePoolWithTag(NP, size, "Size"))["blocks"] == blocks


def test_fresh_page_is_split_from_the_front_and_the_rest_listed(k):
    p = k.ExAllocatePoolWithTag(NP, 100, "Frnt")
    assert p & 0xFFF == 0x10
    chunks = list(walk_page(page_of(k, p), p & ~0xFFF))
    assert [c.block_size for c in chunks] == [8, 248]
    assert chunks[1].state == "Free" and chunks[1].previous_size == 8
    assert k.nonpaged_pool.free_list(248) == [chunks[1].address]


def test_later_chunks_are_taken_from_the_end_of_a_free_chunk(k):
    first = k.ExAllocatePoolWithTag(NP, 100, "Frnt")
    second = k.ExAllocatePoolWithTag(NP, 100, "Back")
    # The free remainder (not the first chunk of its page) is split from its end.
    assert second == (first & ~0xFFF) + 4096 - 128 + 16
    chunks = list(walk_page(page_of(k, first), first & ~0xFFF))
    assert [c.block_size for c in chunks] == [8, 240, 8]
    assert chunks[2].previous_size == 240


def test_lookaside_returns_the_last_freed_chunk_first(k):
    a = k.ExAllocatePoolWithTag(NP, 100, "Look")
    k.ExFreePoolWithTag(a, "Look")
    state = header(k, a)
    assert state["type"] == 0x2  # cached on the lookaside: still marked in use, so never coalesced
    b = k.ExAllocatePoolWithTag(NP, 100, "Look")
    assert b == a


def test_memory_comes_back_uninitialized(k):
    a = k.ExAllocatePoolWithTag(NP, 100, "Unin")
    k.write(a + 40, b"secret!")
    k.ExFreePoolWithTag(a, "Unin")
    b = k.ExAllocatePoolWithTag(NP, 100, "Unin")
    assert b == a and k.read(b + 40, 7) == b"secret!"


def test_big_chunks_beyond_lookaside_coalesce_with_free_neighbours(k):
    a = k.ExAllocatePoolWithTag(NP, 1000, "Big1")  # 64 blocks: no lookaside
    b = k.ExAllocatePoolWithTag(NP, 1000, "Big2")
    c = k.ExAllocatePoolWithTag(NP, 1000, "Big3")
    page = a & ~0xFFF
    k.ExFreePoolWithTag(b, "Big2")
    k.ExFreePoolWithTag(c, "Big3")
    chunks = list(walk_page(page_of(k, a), page))
    assert [c.block_size for c in chunks] == [64, 192]
    assert chunks[1].state == "Free"
    assert page_problems(page_of(k, a), page) == []


def test_a_page_that_becomes_wholly_free_is_returned(k):
    before = k.pool_in_use()
    a = k.ExAllocatePoolWithTag(NP, 2000, "Whol")
    during = k.pool_in_use()
    assert during["NonPagedPool"] == before["NonPagedPool"] + 1
    k.ExFreePoolWithTag(a, "Whol")
    after = k.pool_in_use()
    assert after["NonPagedPool"] == before["NonPagedPool"]
    assert after["frames"] == during["frames"] - 1  # the page tables that mapped it stay
    with pytest.raises(ntpool.BugCheck) as info:
        k.read(a, 1)  # the page is unmapped again
    assert info.value.code == 0x50


def test_big_allocation_is_page_aligned_headerless_and_in_the_big_page_table(k):
    p = k.ExAllocatePoolWithTag(NP, 0xFE1, "Huge")
    assert p & 0xFFF == 0
    assert k.nonpaged_pool.page_kind_of(p) == PAGE_BIG_FIRST
    assert k.nonpaged_pool.big_pages[p] == (ntpool.tag("Huge").value, 1)
    q = k.ExAllocatePoolWithTag(NP, 3 * 4096 + 1, "Huge")
    assert k.nonpaged_pool.big_pages[q][1] == 4
    k.ExFreePoolWithTag(q, "Huge")
    assert q not in k.nonpaged_pool.big_pages


def test_exhaustion_returns_null_and_recovers_after_frees():
    k = ntpool.Kernel(nonpaged_pool_bytes=64 * 4096, paged_pool_bytes=4096)
    live = []
    while True:
        p = k.ExAllocatePoolWithTag(NP, 200, "Fill")
        if not p:
            break
        live.append(p)
    assert len(live) > 64 * 15
    assert k.ExAllocatePoolWithTag(NP, 5000, "Fill") == 0
    for p in live:
        k.ExFreePoolWithTag(p, "Fill")
    # Lookasides are flushed when they pin the memory a request needs.
    assert k.ExAllocatePoolWithTag(NP, 60 * 4096, "Fill") != 0


def test_pool_size_is_settable_and_bounds_big_allocations():
    k = ntpool.Kernel(nonpaged_pool_bytes=8 * 4096, paged_pool_bytes=8 * 4096)
    assert k.ExAllocatePoolWithTag(NP, 9 * 4096, "Fit?") == 0
    assert k.ExAllocatePoolWithTag(NP, 8 * 4096, "Fit!") != 0
    assert k.ExAllocatePoolWithTag(NP, 1 << 62, "Huge") == 0


def test_tracker_charges_block_bytes_and_page_rounded_big(k):
    k.ExAllocatePoolWithTag(NP, 1, "Trk1")
    k.ExAllocatePoolWithTag(NP, 100, "Trk1")
    k.ExAllocatePoolWithTag(PP, 5000, "Trk1")
    row = {r.Tag: r for r in k.pool_tags()}["1krT"]
    assert (row.NonPagedAllocs, row.NonPagedFrees, row.NonPagedUsed) == (2, 0, 32 + 128)
    assert (row.PagedAllocs, row.PagedUsed) == (1, 8192)


def test_tracker_counts_frees(k):
    p = k.ExAllocatePoolWithTag(NP, 40, "Trk2")
    k.ExFreePoolWithTag(p, "Trk2")
    row = {r.Tag: r for r in k.pool_tags()}["2krT"]
    assert (row.NonPagedAllocs, row.NonPagedFrees, row.NonPagedUsed) == (1, 1, 0)


def test_protected_tag_is_tracked_without_the_bit(k):
    tag = ntpool.tag("Prot").value | ntpool.PROTECTED_POOL
    p = k.ExAllocatePoolWithTag(NP, 10, tag)
    assert header(k, p)["tag"] == tag
    assert {r.TagUlong for r in k.pool_tags()} == {ntpool.tag("Prot").value}
    k.ExFreePoolWithTag(p, tag)


def test_untagged_routines_use_none(k):
    p = k.ExAllocatePool(PP, 10)
    assert k.read(p - 12, 4) == b"None"
    k.ExFreePool(p)
    assert {r.Tag for r in k.pool_tags()} == {"None"}


def test_processors_have_their_own_lookasides():
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, processors=2)
    a = k.ExAllocatePoolWithTag(NP, 64, "Cpu0")
    k.ExFreePoolWithTag(a, "Cpu0")
    k.set_current_processor(1)  # the machine's switch: the fast paths follow it
    b = k.ExAllocatePoolWithTag(NP, 64, "Cpu0")
    assert b != a
    k.ExFreePoolWithTag(b, "Cpu0")
    assert k.nonpaged_pool.la_head[b_size := (64 + 31) >> 4] == b
    k.set_current_processor(0)
    assert k.ExAllocatePoolWithTag(NP, 64, "Cpu0") == a  # processor 0's list kept its chunk
    assert k.nonpaged_pool.per_processor[1].head[b_size] == b


@pytest.mark.parametrize("args, error", [
    (("NonPaged", 10, "Fred"), TypeError), ((0, -1, "Fred"), ValueError),
    ((0, 1.5, "Fred"), TypeError), ((0, 10, "TooLong"), ntpool.TagError), ((-3, 10, "Fred"), ValueError),
])
def test_misuse_gets_a_plain_error_and_no_bug_check(k, args, error):
    with pytest.raises(error):
        k.ExAllocatePoolWithTag(*args)
    assert not k.halted


def test_requests_past_the_lookasides_keep_the_generic_answers_on_the_fast_path(k):
    # A tag seen before: misses and sizes no lookaside serves go from the fast path straight
    # to the pool, and must answer as the generic path does.
    from ntpool.tags import PROTECTED_POOL, tag_value

    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 100, "Fast"), "Fast")
    assert k.ExAllocatePoolWithTag(NP, 64 * MiB, "Fast") == 0
    with pytest.raises(ntpool.NtStatusError) as info:
        k.FsRtlAllocatePoolWithTag(NP, 64 * MiB, "Fast")
    assert info.value.status == ntpool.NtStatus.STATUS_INSUFFICIENT_RESOURCES
    with pytest.raises(TypeError):
        k.ExAllocatePoolWithTag(NP, 600.0, "Fast")
    protected = tag_value("Fast") | PROTECTED_POOL
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(NP, 8192, protected), protected)
    p = k.ExAllocatePoolWithTag(NP, 8192, protected)
    assert p and not p & 0xFFF
    with pytest.raises(ntpool.BugCheck) as stop:
        k.ExFreePoolWithTag(p, tag_value("Slow") | PROTECTED_POOL)
    assert (stop.value.code, stop.value.parameters[0]) == (0xC2, 0xA)
