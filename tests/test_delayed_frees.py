"""Delayed pool frees (Windows 7 on machines with at least 127 * 1024 physical pages):
frees that miss the lookasides are queued on the descriptor's PendingFrees in kernel memory
and coalesced in batches by ExDeferredFreePool, which then finds the corruption."""

import pytest

import ntpool
from ntpool.dump import DumpReader
from ntpool.debugger.session import KdSession
from ntpool.pool.layout import POOL_DESCRIPTOR, POOL_FREE, POOL_HEADER

NP = ntpool.PoolType.NonPagedPool
MiB = 1 << 20
KiB = 1 << 10


def machine(**kwargs):
    kwargs.setdefault("nonpaged_pool_bytes", 4 * MiB)
    kwargs.setdefault("paged_pool_bytes", 4 * MiB)
    kwargs.setdefault("delayed_frees", True)
    return ntpool.Kernel(**kwargs)


def descriptor(k, pool):
    return POOL_DESCRIPTOR.at(k.physical.buffer, k.space.translate(pool.descriptor_va))


def stop(call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def test_the_rule_is_127_times_1024_physical_pages():
    pages = 127 * 1024
    small = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB,
                          physical_memory_bytes=(pages - 1) * 4096)
    large = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB,
                          physical_memory_bytes=pages * 4096)
    assert not small.nonpaged_pool.delay_frees and large.nonpaged_pool.delay_frees
    assert large.paged_pool.delay_frees
    assert ntpool.Kernel().nonpaged_pool.delay_frees  # the default machine has 534 MiB
    assert not machine(delayed_frees=False).nonpaged_pool.delay_frees
    with pytest.raises(TypeError, match="delayed_frees"):
        machine(delayed_frees="yes")


def test_a_freed_chunk_is_not_handed_back_by_the_next_request_of_its_size():
    for delayed, reused in ((False, True), (True, False)):
        k = machine(delayed_frees=delayed)
        a = k.ExAllocatePoolWithTag(NP, 0x400, "Grm1")
        k.ExAllocatePoolWithTag(NP, 0x400, "Grm2")
        k.ExFreePoolWithTag(a, "Grm1")
        assert (k.ExAllocatePoolWithTag(NP, 0x400, "Grm3") == a) is reused


def test_pending_frees_live_in_the_descriptor_and_the_freed_bodies():
    k = machine()
    pool = k.nonpaged_pool
    a, b = (k.ExAllocatePoolWithTag(NP, 0x400, "Pend") for _ in range(2))
    k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    k.ExFreePoolWithTag(a, "Pend")
    k.ExFreePoolWithTag(b, "Pend")
    d = descriptor(k, pool)
    assert d.PendingFrees == b and d.PendingFreeDepth == 2
    assert int.from_bytes(k.read(b, 8), "little") == a  # b's body links to a
    assert int.from_bytes(k.read(a, 8), "little") == 0
    assert pool.pending_frees() == [b - 16, a - 16]
    # Marked free (in-use bit clear) but on no list and not coalesced yet.
    assert k.read(a - 16 + POOL_HEADER.PoolType, 1)[0] == POOL_FREE
    assert pool.descriptor_va + POOL_DESCRIPTOR.ListHeads == pool.list_heads_va
    assert k.pool_tags()[0].NonPagedUsed  # untracked at the free itself
    tags = {row.Tag: row for row in k.pool_tags()}
    assert tags["dneP"].NonPagedFrees == 2 and tags["dneP"].NonPagedUsed == 0


def test_a_batch_is_processed_when_32_are_pending():
    k = machine()
    pool = k.nonpaged_pool
    chunks = [k.ExAllocatePoolWithTag(NP, 0x400, "Btch") for _ in range(40)]
    for p in chunks[:32]:
        k.ExFreePoolWithTag(p, "Btch")
    assert len(pool.pending) == 32 and descriptor(k, pool).PendingFreeDepth == 32
    k.ExFreePoolWithTag(chunks[32], "Btch")  # finds 32 queued: ExDeferredFreePool first
    assert set(pool.pending) == {chunks[32]}  # (by body)
    d = descriptor(k, pool)
    assert d.PendingFrees == chunks[32] and d.PendingFreeDepth == 1
    # The batch was coalesced: those chunks are free and on ListHeads (or their pages gone).
    for p in chunks[:32]:
        page_gone = k.space.translate(p) is None
        assert page_gone or k.read(p - 16 + POOL_HEADER.PoolType, 1)[0] == POOL_FREE


@pytest.mark.parametrize("depth, batched", [(40, True), (32, True), (31, False), (-5, False), (0x7FFFFFFF, True)])
def test_pending_free_depth_in_memory_decides_when_the_batch_runs(depth, batched):
    """ExFreePoolWithTag compares the descriptor's PendingFreeDepth, a LONG, with 32 (WRK):
    a value a stray write left there decides whether the free runs ExDeferredFreePool first,
    a negative one never does; the batch lowers it by the chunks it took (one here), and the
    free queued raises it by one. Both ways (the allocator's fast path and the pool's own) agree."""
    for fast in (True, False):
        k = machine()
        pool = k.nonpaged_pool
        a, b, c = (k.ExAllocatePoolWithTag(NP, 0x400, "Dpt" + str(n)) for n in range(3))
        k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
        k.ExFreePoolWithTag(a, "Dpt0")  # queued: depth 1
        k.write(pool.descriptor_va + POOL_DESCRIPTOR.PendingFreeDepth, (depth & 0xFFFFFFFF).to_bytes(4, "little"))
        if fast:
            k.ExFreePoolWithTag(b, "Dpt1")
        else:
            pool.release_small(b - 16, 0x410 // 16)
        d = descriptor(k, pool)
        if batched:  # a went through the batch, then b was queued on an emptied list
            assert set(pool.pending) == {b} and (d.PendingFrees, d.PendingFreeDepth) == (b, depth & 0xFFFFFFFF)
            assert k.read(a - 16 + POOL_HEADER.PoolType, 1)[0] == POOL_FREE and a not in pool.pending
        else:  # b joins a on the list, and the depth goes on from the value written
            assert set(pool.pending) == {a, b} and pool.pending_frees() == [b - 16, a - 16]
            assert (d.PendingFrees, d.PendingFreeDepth) == (b, depth + 1 & 0xFFFFFFFF)
        k.ExFreePoolWithTag(c, "Dpt2")  # (the list still walks and coalesces)
        assert pool.deferred_free() == len(pool.pending) or not pool.pending


@pytest.mark.parametrize("written, after", [(0x7FFFFFFF, 0x80000000), (0xFFFFFFFE, 0xFFFFFFFF)])
def test_pending_free_depth_wraps_at_the_long_s_end_as_interlocked_increment_does(written, after):
    """With nothing queued, a depth of 0x7FFFFFFF a stray write left sends the free to
    ExDeferredFreePool, which finds no list, and the free is queued: 0x7FFFFFFF + 1 wraps to
    -0x80000000, as InterlockedIncrement does; -2 + 1 is -1. The allocator's fast path and the
    pool's own agree."""
    for fast in (True, False):
        k = machine()
        pool = k.nonpaged_pool
        a = k.ExAllocatePoolWithTag(NP, 0x400, "Wrap")
        k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
        k.write(pool.descriptor_va + POOL_DESCRIPTOR.PendingFreeDepth, written.to_bytes(4, "little"))
        if fast:
            k.ExFreePoolWithTag(a, "Wrap")
        else:
            pool.release_small(a - 16, 0x410 // 16)
        d = descriptor(k, pool)
        assert (d.PendingFrees, d.PendingFreeDepth) == (a, after) and pool.pending_frees() == [a - 16]


def test_an_allocation_that_would_fail_processes_the_pending_frees_first():
    k = machine(nonpaged_pool_bytes=64 * KiB)
    pool = k.nonpaged_pool

    def fill():  # 0x800 bytes are 130 blocks: one a page, and nothing else fits beside it
        chunks = []
        while (p := k.ExAllocatePoolWithTag(NP, 0x800, "Full")):
            chunks.append(p)
        return chunks

    chunks = fill()
    for p in chunks[:4]:
        k.ExFreePoolWithTag(p, "Full")
    assert len(pool.pending) == 4
    big = k.ExAllocatePoolWithTag(NP, 0x3000, "Big ")  # no free page: the pending ones first
    assert big and not pool.pending
    fill()
    for p in chunks[4:6]:
        k.ExFreePoolWithTag(p, "Full")
    assert len(pool.pending) == 2
    assert k.ExAllocatePoolWithTag(NP, 0xF00, "Smll") and not pool.pending


def test_double_free_of_a_pending_chunk_is_0x07():
    k = machine()
    p = k.ExAllocatePoolWithTag(NP, 0x400, "Dbl ")
    k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    k.ExFreePoolWithTag(p, "Dbl ")
    e = stop(lambda: k.ExFreePoolWithTag(p, "Dbl "))
    assert (e.code, e.parameters[0], e.parameters[3]) == (0xC2, 0x07, p)


def _corrupt_a_free_neighbour_of_a_pending_chunk(k):
    """A page: A (64 blocks) at the front, a free chunk X, B (64 blocks) at the end; B is
    queued, then a stray write smashes X's Flink. Returns (X's header, B)."""
    a = k.ExAllocatePoolWithTag(NP, 1000, "Nbr1")
    b = k.ExAllocatePoolWithTag(NP, 1000, "Nbr2")
    assert b == a + 3 * 1024  # taken from the end of the page's free remainder
    x = a - 16 + 1024
    k.ExFreePoolWithTag(b, "Nbr2")
    k.write(x + 16, a.to_bytes(8, "little"))  # a mapped address (an unmapped one faults: 0xC5)
    return x, b


def test_the_corruption_is_found_by_the_deferred_free(tmp_path):
    path = tmp_path / "MEMORY.DMP"
    k = machine(crash_dump=str(path))
    x, b = _corrupt_a_free_neighbour_of_a_pending_chunk(k)
    others = [k.ExAllocatePoolWithTag(NP, 0x900, "Othr") for _ in range(32)]  # X cannot hold one
    for p in others[:31]:
        k.ExFreePoolWithTag(p, "Othr")  # 32 pending now
    e = stop(lambda: k.ExFreePoolWithTag(others[31], "Othr"))
    assert (e.code, e.parameters[0], e.parameters[1]) == (0x19, 0x3, x + 16)
    assert e.found_in == "ExDeferredFreePool"
    with DumpReader(str(path)) as reader:
        assert reader.bugcheck_context()["found_in"] == "ExDeferredFreePool"
        text = KdSession(reader).execute("!analyze -v")
    assert "FOUND_IN:  nt!ExDeferredFreePool" in text
    assert "found in the deferred free" in text


def test_without_delayed_frees_the_same_corruption_is_found_by_the_free_itself():
    k = machine(delayed_frees=False)
    a = k.ExAllocatePoolWithTag(NP, 1000, "Nbr1")
    b = k.ExAllocatePoolWithTag(NP, 1000, "Nbr2")
    x = a - 16 + 1024
    k.write(x + 16, a.to_bytes(8, "little"))
    e = stop(lambda: k.ExFreePoolWithTag(b, "Nbr2"))
    assert (e.code, e.parameters[:2]) == (0x19, (0x3, x + 16)) and e.found_in == ""


def test_a_write_to_a_queued_chunk_breaks_the_pending_list():
    k = machine()
    a = k.ExAllocatePoolWithTag(NP, 0x400, "Uaf1")
    b = k.ExAllocatePoolWithTag(NP, 0x400, "Uaf2")
    k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    k.ExFreePoolWithTag(a, "Uaf1")
    k.ExFreePoolWithTag(b, "Uaf2")
    k.write(b, (0xFFFFFA8003000000).to_bytes(8, "little"))  # use after free: b's link
    e = stop(lambda: k.nonpaged_pool.deferred_free())
    # ExDeferredFreePool follows the link under the nonpaged pool's lock: DISPATCH_LEVEL.
    assert (e.code, e.parameters[:3]) == (0xC5, (0xFFFFFA8003000000, 2, 0))
    assert e.found_in == "ExDeferredFreePool"


@pytest.mark.parametrize("target", ["queued_before", "itself", "live_chunk"])
def test_a_queued_link_to_a_chunk_not_waiting_its_turn_is_0x19_in_the_deferred_free(target):
    # ExDeferredFreePool meets each queued chunk once: a link (rewritten after the free)
    # back to a chunk it met already (a loop, or the chunk itself) or to a chunk that is not
    # queued at all is BAD_POOL_HEADER 0x19, code 3 (the descriptor's PendingFrees, the
    # link, 0), found in ExDeferredFreePool. As WRK's, it reads each link just before it
    # coalesces that chunk, so c and b are coalesced when b's link is found wrong; a is still
    # queued, and PendingFrees and PendingFreeDepth (updated once the batch is done) unchanged.
    k = machine()
    pool = k.nonpaged_pool
    a = k.ExAllocatePoolWithTag(NP, 0x400, "Loo1")
    b = k.ExAllocatePoolWithTag(NP, 0x400, "Loo2")
    c = k.ExAllocatePoolWithTag(NP, 0x400, "Loo3")
    live = k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    for va, tag in ((a, "Loo1"), (b, "Loo2"), (c, "Loo3")):
        k.ExFreePoolWithTag(va, tag)
    assert pool.pending_frees() == [c - 16, b - 16, a - 16]
    # c links to b, b to a: b's link is rewritten to lead elsewhere.
    link = {"queued_before": c, "itself": b, "live_chunk": live}[target]
    k.write(b, link.to_bytes(8, "little"))
    e = stop(pool.deferred_free)
    assert (e.code, e.parameters) == (0x19, (0x3, pool.descriptor_va + POOL_DESCRIPTOR.PendingFrees, link, 0))
    assert e.found_in == "ExDeferredFreePool"
    assert set(pool.pending) == {a}
    d = descriptor(k, pool)
    assert (d.PendingFrees, d.PendingFreeDepth) == (c, 3)
    # a starts the page, then its free remainder, c and b to the page's end: c merged into
    # the remainder, and b into both, one free chunk of 61 + 65 + 65 blocks, listed.
    remainder = a - 16 + 0x410
    assert b - 16 == remainder + (61 + 65) * 16 and b - 16 + 65 * 16 == (a - 16) + 0x1000
    header = k.read(remainder, 4)
    assert (header[POOL_HEADER.PoolType], header[POOL_HEADER.BlockSize]) == (POOL_FREE, 191)
    assert remainder in pool.free_list(191)


def test_a_queued_list_a_driver_reordered_is_followed_as_written():
    """A list whose links were rewritten to visit every queued chunk once, in another order
    than they were queued, is no corruption the walk can tell: ExDeferredFreePool follows
    it, and coalesces in that order."""
    k = machine()
    pool = k.nonpaged_pool
    a, b, c = (k.ExAllocatePoolWithTag(NP, 0x400, "Ord" + str(n)) for n in range(3))
    kept = k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    for va, n in ((a, 0), (b, 1), (c, 2)):
        k.ExFreePoolWithTag(va, "Ord" + str(n))
    k.write(c, a.to_bytes(8, "little"))  # c leads to a, and a to b (which leads nowhere)
    k.write(a, b.to_bytes(8, "little"))
    k.write(b, (0x1234).to_bytes(8, "little"))  # the last link is not followed
    assert pool.pending_frees() == [c - 16, a - 16, b - 16]
    pages = k.nonpaged_pool.pages_in_use
    assert pool.deferred_free() == 3 and not pool.pending
    # a, b and c were the page's only chunks (Kept is on the next): with the free chunk
    # between them, they coalesced into the whole page, given back.
    assert {(va - 16) & ~0xFFF for va in (a, b, c)} == {a - 16} != {(kept - 16) & ~0xFFF}
    assert k.space.translate(a) is None and pool.pages_in_use == pages - 1


def test_driver_verifier_turns_delayed_frees_off():
    k = machine()
    p = k.ExAllocatePoolWithTag(NP, 0x400, "Vrfy")
    k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    k.ExFreePoolWithTag(p, "Vrfy")
    assert k.nonpaged_pool.pending
    k.verifier.enable("some.sys", pool_tracking=True)
    assert not k.nonpaged_pool.pending and not k.nonpaged_pool.delay_frees
    k.verifier.disable()
    assert k.nonpaged_pool.delay_frees


def test_a_pending_free_depth_a_driver_overwrote_wraps_as_interlocked_increment_does():
    """PendingFreeDepth is a LONG in kernel memory that a stray write can reach; queuing a
    free increments it as InterlockedIncrement does (0xFFFFFFFF + 1 is 0), never a Python error."""
    k = machine()
    pool = k.nonpaged_pool
    a = k.ExAllocatePoolWithTag(NP, 0x400, "Wrap")
    k.ExAllocatePoolWithTag(NP, 0x400, "Kept")
    k.write(pool.descriptor_va + POOL_DESCRIPTOR.PendingFreeDepth, b"\xff\xff\xff\xff")
    k.ExFreePoolWithTag(a, "Wrap")
    d = descriptor(k, pool)
    assert d.PendingFrees == a and d.PendingFreeDepth == 0
    assert pool.pending_frees() == [a - 16]


def test_a_pending_chunk_whose_block_size_was_rewritten_coalesces_to_a_wrapped_block_size():
    """BlockSize is a UCHAR and ExDeferredFreePool stores its sums there: a queued chunk
    whose BlockSize a driver rewrote to lead past its page, merged with its free previous
    neighbour, sums past 255 blocks and wraps (189 + 255 = 444 -> 188), and the deferred
    free goes on with the stored value (the chunk listed as 188 blocks), as Windows would."""
    k = machine()
    pool = k.nonpaged_pool
    p = k.ExAllocatePoolWithTag(NP, 3000, "Wrp1")  # 189 blocks, from a fresh page
    q = k.ExAllocatePoolWithTag(NP, 1056, "Wrp2")  # the 67 blocks behind it
    page = p - 16
    assert page % 4096 == 0 and q - 16 == page + 189 * 16
    k.ExFreePoolWithTag(p, "Wrp1")
    pool.deferred_free()  # p is free and listed
    k.ExFreePoolWithTag(q, "Wrp2")  # queued
    k.write(q - 16 + POOL_HEADER.BlockSize, bytes([255]))  # a use after free: its BlockSize
    assert pool.deferred_free() == 1
    header = k.read(page, 4)
    assert (header[POOL_HEADER.BlockSize], header[POOL_HEADER.PoolType]) == (188, POOL_FREE)
    assert page in pool.free_list(188)
    assert k.read(page + 188 * 16 + POOL_HEADER.PreviousSize, 1)[0] == 188


def test_a_sum_that_wraps_to_zero_blocks_lists_on_the_descriptor_before_list_heads():
    """A wrapped sum of 0 blocks, not at its page's start, goes to ListHeads[-1]: the
    descriptor's QWORDs there hold 0, so the safe insertion's read of the first entry's Blink
    faults under the nonpaged pool's lock (0xC5 at address 8), found in the deferred free."""
    k = machine()
    pool = k.nonpaged_pool
    p = k.ExAllocatePoolWithTag(NP, 3000, "Wrp1")  # 189 blocks, from a fresh page
    q = k.ExAllocatePoolWithTag(NP, 800, "Wrp2")  # 51 blocks, from the end of the other 67
    remainder = p - 16 + 189 * 16  # the 16 free blocks left between them, listed
    assert q - 16 == remainder + 16 * 16 and remainder in pool.free_list(16)
    k.ExFreePoolWithTag(q, "Wrp2")  # queued
    k.write(q - 16 + POOL_HEADER.BlockSize, bytes([240]))  # 16 + 240 = 256 -> 0, at offset 189
    e = stop(pool.deferred_free)
    assert (e.code, e.parameters[:3]) == (0xC5, (8, 2, 0)) and e.found_in == "ExDeferredFreePool"


def _queued_then_paged_out(page_out: bool):
    """A paged pool machine with frees queued on chunks spread over several pages, every
    page paged out (``page_out``) before the batch runs; the pool's pages and lists after it."""
    k = machine()
    pool = k.paged_pool
    chunks = [k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 600, "Pout") for _ in range(24)]
    for p in chunks[::2]:  # 39 blocks: past the lookasides, each queued between live ones
        k.ExFreePoolWithTag(p, "Pout")
    assert len(pool.pending) == 12 and pool.pending_translated
    if page_out:
        assert k.page_out() >= 4
        assert not pool.pending_translated  # the queue's translations are stale
    before = k.pager.pages_in
    assert pool.deferred_free() == 12
    assert pool.pending_translated and not pool.pending
    pages = sorted({p & ~0xFFF for p in chunks})
    return (k.pager.pages_in - before, [k.read(page, 4096) for page in pages],
            [pool.free_list(blocks) for blocks in range(1, 256)])


def test_a_batch_whose_pages_were_paged_out_translates_them_again():
    """ExDeferredFreePool reads each link and coalesces each chunk on the translation made
    as it was queued, unless a page was paged out since: then it faults each back in, and the
    pool ends as if nothing had been paged (its writes land in the pages, not in frames given
    back)."""
    paged_in, contents, lists = _queued_then_paged_out(True)
    assert paged_in >= 4
    assert (0, contents, lists) == _queued_then_paged_out(False)


def test_a_page_given_back_under_a_queued_chunk_faults_the_deferred_free():
    """A stray write can make a free return a page that still holds a queued chunk: here
    the free chunk between P (at the page's start) and a queued Q is given a BlockSize that
    reaches over Q to the page's end, so P's free (from the lookaside, flushed) merges all
    256 blocks and gives the page back. ExDeferredFreePool then reads Q's link on a page
    that is gone and faults under the pool's lock (0xC5 at Q's body, found in the deferred
    free): it translates again once a page was released, never reading a frame given back."""
    k = machine()
    pool = k.nonpaged_pool
    p = k.ExAllocatePoolWithTag(NP, 496, "Frnt")  # 32 blocks at a fresh page's start
    q = k.ExAllocatePoolWithTag(NP, 1008, "Back")  # 64 blocks, from the page's end
    page, free = p - 16, p - 16 + 32 * 16  # the 160 free blocks between them
    assert page % 4096 == 0 and q - 16 == free + 160 * 16
    k.ExFreePoolWithTag(q, "Back")  # queued
    k.ExFreePoolWithTag(p, "Frnt")  # cached on a lookaside
    k.write(free + POOL_HEADER.BlockSize, bytes([160 + 64]))
    pool.flush_lookasides()
    assert k.space.translate(p) is None and set(pool.pending) == {q}  # (by body)
    e = stop(pool.deferred_free)
    assert (e.code, e.parameters[0], e.found_in) == (0xC5, q, "ExDeferredFreePool")
