"""The ListHeads path's common cases against the long way, under a corrupting driver.

A lookaside miss takes a chunk from the pool's ListHeads. Its usual case reads and writes
on pages translated once: the chunk's links and headers as QWORDs of physical memory, the
list head's own links standing in for a neighbour that is the head (a lone entry, an empty
list), the neighbours of a long list's entries read on their pages, a new page's headers on
one translation. A free past the lookasides coalesces on its page's translation, reading
headers as QWORDs, and, with delayed frees, queues the chunk on PendingFrees through the
descriptor's QWORDs. The long way is the one every access takes when a link leads anywhere
else (``Pool._split_any``, ``_insert`` without the entry's physical address, the header
helpers), and, for the free, the same steps written here with those helpers and the
descriptor's fields; RemoveEntryList is written here too, pointer by pointer: each access
translated on its own. Both must leave the same
memory, lists, counters and call sites, and stop with the same bug check at the same step,
whatever the driver wrote where, with delayed frees on and off.
"""

import hashlib
import random
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ntpool.pool.allocator as allocator_module
from ntpool import BugCheck, NtStatusError
from ntpool.constants import PAGE_SIZE
from ntpool.pool.checks import check_list_links, check_pool_header, check_previous_neighbour, check_previous_size
from ntpool.pool.descriptor import MAXIMUM_POOL_FREES_PENDING, PAGE_BIG_FIRST, PAGE_SMALL
from ntpool.pool.layout import (BLOCK_SHIFT, BLOCKS_PER_PAGE, HEADER_SIZE, LIST_ENTRY, LOOKASIDE_MAX_BLOCKS,
                                POOL_DESCRIPTOR, POOL_FREE, POOL_HEADER, SINGLE_LIST_ENTRY)
from ntpool.tools.corruption_fuzz import SloppyDriver

# Mostly allocations and frees, so the lists fill, split and coalesce, with every kind of
# corruption among them (use-after-free writes land on free chunks' links and headers).
OPERATIONS = {"allocate": 40, "free": 30, "overrun": 0.6, "underrun": 0.2, "use_after_free": 2,
              "double_free": 0.05, "stale_free": 0.05, "wild_write": 0.6, "flush": 0.5}


# The fault bug checks' instruction parameter: 0x1E's second, 0x50's third, 0xC5's fourth.
FAULT_INSTRUCTION = {0x1E: 1, 0x50: 2, 0xC5: 3}


def take_the_long_way(pool) -> None:
    """Make ``pool`` take every ListHeads allocation and every new page the long way."""

    def allocate_from_lists(block_size, tag, site):
        found = pool.listed.find(1, block_size)  # the smallest listed size that fits
        if found < 0:
            return 0
        entry = pool.read_pointer(pool._list_head(found))  # the head's Flink
        return pool._split_any(entry, found, block_size, tag, site)

    def allocate_from_fresh_page(block_size, tag, site):
        page = pool.take_pages(1, PAGE_SMALL)
        if not page:
            return 0
        pool._write_allocated(page, 0, block_size, tag, site)
        remainder = BLOCKS_PER_PAGE - block_size
        if remainder:
            rest = page + (block_size << BLOCK_SHIFT)
            pool._write_header(rest, block_size, remainder, POOL_FREE, tag)
            pool._list_remainder(rest, remainder)
        return page

    def unlink(entry, block_size, entry_pa=None):  # Pool._unlink, pointer by pointer
        flink, blink = pool.read_pointer(entry + LIST_ENTRY.Flink), pool.read_pointer(entry + LIST_ENTRY.Blink)
        flink_blink = pool.read_pointer(flink + LIST_ENTRY.Blink)
        blink_flink = pool.read_pointer(blink + LIST_ENTRY.Flink)
        check_list_links(pool.crash, entry, flink_blink, blink_flink)
        pool.write_pointer(blink + LIST_ENTRY.Flink, flink)
        pool.write_pointer(flink + LIST_ENTRY.Blink, blink)
        if flink == blink:  # only the head is left
            pool.listed[block_size] = 0

    def free_small(body, pa=None, block_size=0, batch=False):  # Pool.free_small, each chunk a call
        while True:  # ExDeferredFreePool's batch: each chunk's link read through the machine, then the chunk coalesced
            link = pool.read_pointer(body) if batch else None
            coalesce(body, batch)
            if not (batch and pool.pending):
                return
            body = link
            if body not in pool.pending:
                pool._bad_pending_link(body)
            del pool.pending[body]

    def coalesce(body, batch):  # every header read on its own
        chunk = body - HEADER_SIZE
        previous_size, pool_index, block_size, _, _ = pool._read_first8(chunk)
        following = chunk + (block_size << BLOCK_SHIFT)
        if (chunk & (PAGE_SIZE - 1)) + (block_size << BLOCK_SHIFT) < PAGE_SIZE:  # on the page
            _, _, next_size, next_type, _ = pool._read_first8(following)
            if next_type == POOL_FREE and following + HEADER_SIZE not in pool.pending:  # (by body)
                check_pool_header(pool.crash, following, pool._read_first8)
                if next_size > 1:
                    pool._unlink(following + HEADER_SIZE, next_size)
                block_size += next_size
        before = check_previous_size(pool.crash, chunk, previous_size)
        if before:
            _, _, before_size, before_type, _ = pool._read_first8(before)
            check_previous_neighbour(pool.crash, chunk, before, previous_size, before_size)
            if before_type == POOL_FREE and before + HEADER_SIZE not in pool.pending:
                if before_size > 1:
                    pool._unlink(before + HEADER_SIZE, before_size)
                chunk = before
                block_size += before_size
                if batch:  # ExDeferredFreePool: the chunk's PoolIndex in the header it ends in
                    pool.mem[pool._pa(chunk) + POOL_HEADER.PoolIndex] = pool_index
        # The sum is stored in the UCHAR BlockSize (ExDeferredFreePool, WRK pool.c): a whole
        # page wraps to 0 at the page's start, and a pending chunk whose BlockSize a driver
        # rewrote can sum past a page and wrap anywhere (0 elsewhere: ListHeads[-1]).
        block_size &= 0xFF
        if not block_size and not chunk & (PAGE_SIZE - 1):
            pool.release_pages(chunk, 1)
            return
        header = pool._pa(chunk)  # BlockSize and PoolType written, the rest left (as WRK's free)
        pool.mem[header + POOL_HEADER.BlockSize] = block_size
        pool.mem[header + POOL_HEADER.PoolType] = POOL_FREE
        end = (chunk & (PAGE_SIZE - 1)) + (block_size << BLOCK_SHIFT)
        if end != PAGE_SIZE:
            pool._set_previous_size(chunk + (block_size << BLOCK_SHIFT), block_size)
        if block_size != 1:
            pool._insert(chunk + HEADER_SIZE, block_size, False)

    def release_past_lookaside(chunk, block_size, pa=None):  # the descriptor through its fields
        if block_size <= LOOKASIDE_MAX_BLOCKS:
            system = pool.system_lookaside
            if system.count[block_size] < system.depth[block_size]:
                pool._push(system, chunk, block_size)
                return
        depth = POOL_DESCRIPTOR.at(pool.mem, pool._pa(pool.descriptor_va)).PendingFreeDepth
        if pool.delay_frees and depth - (depth & 0x80000000) * 2 >= MAXIMUM_POOL_FREES_PENDING:  # (a LONG)
            pool.deferred_free()
        pool.mem[pool._pa(chunk) + POOL_HEADER.PoolType] = POOL_FREE
        if not pool.delay_frees:
            pool.free_small(chunk + HEADER_SIZE)
            return
        pool.queue_free(chunk)

    def queue_free(chunk, pa=None):  # PendingFrees through the descriptor's fields
        descriptor = POOL_DESCRIPTOR.at(pool.mem, pool._pa(pool.descriptor_va))
        SINGLE_LIST_ENTRY.set(pool.mem, pool._pa(chunk + HEADER_SIZE), "Next", descriptor.PendingFrees)
        descriptor.PendingFrees = chunk + HEADER_SIZE
        descriptor.PendingFreeDepth = descriptor.PendingFreeDepth + 1 & 0xFFFFFFFF  # (0x7FFFFFFF + 1: the LONG's wrap)
        pool.pending[chunk + HEADER_SIZE] = pool._pa(chunk)  # (by body: the header's translation, for the batch)

    pool.allocate_from_lists = allocate_from_lists
    pool._unlink = unlink
    pool._allocate_from_fresh_page = allocate_from_fresh_page
    pool.free_small = free_small
    pool.release_past_lookaside = release_past_lookaside
    pool.queue_free = queue_free


@contextmanager
def queueing_the_long_way(long_way: bool):
    """The allocator's free fast path queues a delayed free itself (``Pool.queue_free``
    inline) while PendingFreeDepth is below MAXIMUM_POOL_FREES_PENDING: the long way bounds that
    below any LONG there, so every free it would queue goes to ``release_past_lookaside``
    (replaced by ``take_the_long_way``) and ``queue_free``."""
    allocator_module.MAXIMUM_POOL_FREES_PENDING = -(1 << 31) if long_way else MAXIMUM_POOL_FREES_PENDING
    try:
        yield
    finally:
        allocator_module.MAXIMUM_POOL_FREES_PENDING = MAXIMUM_POOL_FREES_PENDING


def run(seed: int, steps: int, long_way: bool, delayed: bool | None = None):
    """What the run ends with: the step and bug check, and digests of the machine.
    ``delayed``: delayed frees on (Windows' default from 508 MiB) or off; None: by the
    seed's parity."""
    rng = random.Random(seed)
    driver = SloppyDriver(rng, lookasides=rng.random() < 0.75)
    k = driver.k
    pools = (k.nonpaged_pool, k.paged_pool)
    if delayed is None:
        delayed = seed % 2 == 1
    for pool in pools:
        pool.delay_frees = delayed
    if long_way:
        for pool in pools:
            take_the_long_way(pool)
    names, weights = list(OPERATIONS), list(OPERATIONS.values())
    stop = None
    step = 0
    try:
        with queueing_the_long_way(long_way):
            for step in range(steps):
                try:
                    getattr(driver, rng.choices(names, weights)[0])()
                except NtStatusError:
                    pass
    except BugCheck as error:
        parameters = list(error.parameters)
        if error.code in FAULT_INSTRUCTION:  # names the nearest code on the stack not ntpool's:
            parameters[FAULT_INSTRUCTION[error.code]] = None  # the long way's is this file's
        stop = (error.code, tuple(parameters), error.found_in)
    state = hashlib.sha256(bytes(k.nonpaged_pool.mem))
    for pool in pools:
        for lookaside in pool.lookasides:
            state.update(repr((lookaside.head, lookaside.count, lookaside.allocate_hits,
                               lookaside.allocate_misses)).encode())
        state.update(repr((bytes(pool.listed), pool.pages_in_use, sorted(pool.pending))).encode())
        state.update(bytes(pool.page_kind) + bytes(pool.site_map))
    state.update(repr(sorted(k.pool.tracker.rows.items())).encode())
    return step, stop, state.hexdigest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_the_fast_cases_leave_what_the_long_way_leaves(seed):
    assert run(seed, 600, long_way=False) == run(seed, 600, long_way=True)


def test_the_long_way_is_taken_and_the_fast_cases_are_exercised():
    """The comparison means something: the long way replaces the fast cases, and runs of the
    driver reach them (splits from the lists and new pages, frees past the lookasides that
    coalesce, queued frees and their batches) many times."""
    for delayed in (False, True):
        calls = dict.fromkeys(("allocate_from_lists", "_allocate_from_fresh_page", "free_small",
                               "release_past_lookaside", "queue_free", "deferred_free"), 0)
        rng = random.Random(7)
        driver = SloppyDriver(rng, lookasides=False)  # every free reaches the pool
        pool = driver.k.nonpaged_pool
        pool.delay_frees = delayed
        take_the_long_way(pool)

        def counting(name, function):
            def count(*args):
                calls[name] += 1
                return function(*args)
            return count

        for name in calls:
            setattr(pool, name, counting(name, getattr(pool, name)))
        with queueing_the_long_way(True):
            for step in range(600):
                driver.allocate() if step < 300 or rng.random() < 0.3 else driver.free()
        assert calls["allocate_from_lists"] > 50 and calls["_allocate_from_fresh_page"] > 3
        # (Past full lookasides, the allocator's fast path coalesces a free itself, through
        # free_small, or, with frees delayed, queues it, the long way through
        # release_past_lookaside, which runs the batch first when 32 are queued, and queue_free.)
        assert calls["release_past_lookaside"] > 50 if delayed else not calls["release_past_lookaside"]
        assert calls["queue_free"] > 50 if delayed else not calls["queue_free"]
        # (With frees delayed, free_small coalesces each batch, in one call.)
        assert calls["free_small"] > 50 if not delayed else calls["free_small"] == calls["deferred_free"]
        assert calls["deferred_free"] > 1 if delayed else not calls["deferred_free"]


def fragmented(long_way: bool, delayed: bool = False):
    """A machine whose lists of 3-block and 11-block chunks hold several entries each, on
    pages of their own, and whose lists of 8 to 10 blocks are empty: a 100-byte (8-block)
    allocation splits an 11-block chunk and lists its remainder with the 3-block ones; its
    free coalesces with that remainder and lists the 11-block chunk again."""
    import ntpool
    from ntpool.tools.corruption_fuzz import disable_lookasides

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, delayed_frees=delayed)
    disable_lookasides(k)
    pool = k.nonpaged_pool
    if long_way:
        take_the_long_way(pool)
    to_free = []
    for _ in range(40):
        for size in (160, 32):  # 11 and 3 blocks, each between live 2-block chunks
            k.ExAllocatePoolWithTag(0, 16, "Live")
            to_free.append(k.ExAllocatePoolWithTag(0, size, "Frag"))
    k.ExAllocatePoolWithTag(0, 16, "Live")
    for address in to_free:
        k.ExFreePoolWithTag(address, "Frag")
    for blocks in (8, 9, 10):  # a page's leftover on these lists: taken
        while pool.listed[blocks]:
            k.ExAllocatePoolWithTag(0, (blocks << BLOCK_SHIFT) - HEADER_SIZE, "Left")
    pool.deferred_free()
    return k, pool


def list_entry(pool, blocks: int, last: bool) -> int:
    """The body of the first (or last) chunk on the list of ``blocks``-block chunks."""
    chunks = pool.free_list(blocks)
    return chunks[-1 if last else 0] + HEADER_SIZE


# (what is done, the list whose entry is corrupted, which entry, which link (0 Flink, 8 Blink))
LIST_DAMAGE = [
    ("allocate", 3, True, 0),  # the split's remainder joins the 3-block list: its last Flink
    ("allocate", 3, False, 8),  # ... the first entry's Blink
    ("allocate", 11, False, 0),  # the split chunk's own Flink (RemoveHeadList's check)
    ("allocate", 11, False, 8),
    ("free", 11, False, 8),  # the coalesced chunk joins the 11-block list at its head
    ("free", 11, True, 0),
    ("free", 3, None, 0),  # the remainder the free coalesces with is unlinked: its Flink
    ("free", 3, None, 8),
    ("free_next", 5, None, 0),  # the free chunk after it, merged forward (Pool._unlink)
    ("free_next", 5, None, 8),
]


def stop_on_damaged_list(action: str, blocks: int, last: bool | None, link: int, delayed: bool,
                         leads_to) -> list:
    """For ``LIST_DAMAGE``'s row: on each way (the fast cases, the long way), the bug check,
    its parameters and a hash of memory when the damaged link leads to ``leads_to(k, pool,
    live)`` (``live``: a live chunk's body); ``link`` None: both links do."""
    stops = []
    for long_way in (False, True):
        k, pool = fragmented(long_way, delayed)
        live = k.ExAllocatePoolWithTag(0, 16, "Live")
        if action == "free":
            mine = k.ExAllocatePoolWithTag(0, 100, "Mine")
            remainder = mine - (3 << BLOCK_SHIFT)  # the 3-block chunk left before it
            target = remainder if last is None else list_entry(pool, blocks, last)
        elif action == "free_next":
            mine = k.ExAllocatePoolWithTag(0, 100, "Mine")  # the end of an 11-block chunk
            spacer = mine + (8 << BLOCK_SHIFT)  # the live 2-block chunk after it, then a 3-block free one
            k.ExFreePoolWithTag(spacer, "Live")  # coalesces with that one: a 5-block free chunk
            pool.deferred_free()
            target = spacer  # its body: its links
        else:
            target = list_entry(pool, blocks, last)
        for offset in (FLINK_AND_BLINK if link is None else (link,)):
            k.write(target + offset, leads_to(k, pool, live).to_bytes(8, "little"))
        with pytest.raises(BugCheck) as stop:
            if action in ("free", "free_next"):
                k.ExFreePoolWithTag(mine, "Mine")
                pool.deferred_free()
            else:
                k.ExAllocatePoolWithTag(0, 100, "Mine")
        error = stop.value
        parameters = list(error.parameters)
        if error.code in FAULT_INSTRUCTION:  # (as ``run``: the long way's is this file's)
            parameters[FAULT_INSTRUCTION[error.code]] = None
        stops.append((error.code, tuple(parameters), hashlib.sha256(bytes(pool.mem)).hexdigest()))
    return stops


@pytest.mark.parametrize("delayed", [False, True])
@pytest.mark.parametrize("action, blocks, last, link", LIST_DAMAGE)
def test_a_damaged_long_list_stops_both_ways_with_the_same_bug_check(action, blocks, last, link,
                                                                     delayed):
    """A corrupted link on a list that holds many entries (it leads to a live chunk, which
    does not point back), met by a miss that splits or by a free that coalesces:
    BAD_POOL_HEADER 0x19 with code 3 (the list entry or head, and the two values read
    back), the same bug check, parameters and memory the long way and the fast cases."""
    stops = stop_on_damaged_list(action, blocks, last, link, delayed, lambda k, pool, live: live)
    assert stops[0] == stops[1]
    code, parameters, _ = stops[0]
    assert (code, parameters[0]) == (0x19, 3)


def _big_body(k, pool, live) -> int:
    body = k.ExAllocatePoolWithTag(0, 2 * PAGE_SIZE, "Bigg")
    assert pool.page_kind[(body - pool.base) // PAGE_SIZE] == PAGE_BIG_FIRST
    return body


# Where a damaged link may lead that the fast cases find no frame for in ``small_frames``
# (they translate list neighbours by their offsets from the pool's base): a ListHeads entry,
# in the descriptor below the pool (mapped: a negative offset, which must not index the
# list from its end); unmapped memory just below the pool; a big allocation's first page
# (mapped, not small chunks: frame 0); the pool's last page, never used (past the list's
# end); a live chunk's body plus 8, and its header's PoolTag (not aligned; the second, not
# even on a QWORD), and the last QWORD of a page of small chunks (its Blink would be on the
# next page).
ELSEWHERE = {
    "list head below the pool": lambda k, pool, live: pool.list_head_at[7],
    "unmapped below the pool": lambda k, pool, live: pool.base - 2 * HEADER_SIZE,
    "a big allocation": _big_body,
    "past the small pages": lambda k, pool, live: pool.limit - 2 * HEADER_SIZE,
    "not aligned": lambda k, pool, live: live + 8,
    "not on a QWORD": lambda k, pool, live: live - 12,  # (in its header: bytes that differ)
    "a page's last QWORD": lambda k, pool, live: (live | (PAGE_SIZE - 1)) - 7,
}


@pytest.mark.parametrize("where", ELSEWHERE)
@pytest.mark.parametrize("action, blocks, last, link", LIST_DAMAGE)
def test_a_link_to_where_no_small_frame_is_stops_both_ways_alike(action, blocks, last, link, where):
    """A damaged link that leads out of the pool's pages of small chunks takes the long way
    from the fast cases too: the same bug check (a fault where it leads nowhere, else the
    safe-unlinking check), parameters and memory both ways."""
    stops = stop_on_damaged_list(action, blocks, last, link, False, ELSEWHERE[where])
    assert stops[0] == stops[1]


FLINK_AND_BLINK = (0, 8)


@pytest.mark.parametrize("delayed", [False, True])
@pytest.mark.parametrize("where", ["a live chunk", *ELSEWHERE])
@pytest.mark.parametrize("action", ["free", "free_next"])
def test_a_chunk_whose_two_links_agree_on_another_place_stops_both_ways_alike(action, where, delayed):
    """A free chunk a free merges with (the previous one, or the next) whose Flink and Blink
    both lead to one place that is not its list's head (its list's only entry has both on the
    head, which the fast cases take at once): not that case; the same bug check, parameters
    and memory both ways, wherever they lead (another list's head among them)."""
    leads_to = (lambda k, pool, live: live) if where == "a live chunk" else ELSEWHERE[where]
    stops = stop_on_damaged_list(action, 3 if action == "free" else 5, None, None, delayed, leads_to)
    assert stops[0] == stops[1]


@pytest.mark.parametrize("delayed", [False, True])
@pytest.mark.parametrize("where", ["a live chunk", *ELSEWHERE])
@pytest.mark.parametrize("link", FLINK_AND_BLINK)
@pytest.mark.parametrize("emptied", [True, False])
def test_a_list_whose_head_has_one_link_damaged_stops_both_ways_alike(emptied, link, where, delayed):
    """A free whose merged chunk joins a list (emptied, or long) whose head has one link
    damaged, leading to a live chunk or out of the pool's pages of small chunks: an empty
    list is not empty to InsertHeadList's check (the fast cases take one whose head's links
    are both the head at once), a long one's first or last entry is not one: the same bug
    check, parameters and memory both ways (0x19 code 3 where the link leads to a live
    chunk)."""
    stops = []
    for long_way in (False, True):
        k, pool = fragmented(long_way, delayed)
        live = k.ExAllocatePoolWithTag(0, 16, "Live")
        mine = k.ExAllocatePoolWithTag(0, 100, "Mine")  # an 11-block chunk's end, its 3-block rest before it
        while emptied and pool.listed[11]:  # the 11-block list, where the merged chunk goes, emptied
            k.ExAllocatePoolWithTag(0, (11 << BLOCK_SHIFT) - HEADER_SIZE, "Rest")
        leads_to = live if where == "a live chunk" else ELSEWHERE[where](k, pool, live)
        k.write(pool.list_head_at[11] + link, leads_to.to_bytes(8, "little"))
        with pytest.raises(BugCheck) as stop:
            k.ExFreePoolWithTag(mine, "Mine")
            pool.deferred_free()
        error = stop.value
        parameters = list(error.parameters)
        if error.code in FAULT_INSTRUCTION:  # (as ``run``: the long way's is this file's)
            parameters[FAULT_INSTRUCTION[error.code]] = None
        stops.append((error.code, tuple(parameters), hashlib.sha256(bytes(pool.mem)).hexdigest()))
    assert stops[0] == stops[1]
    if where == "a live chunk":
        assert (stops[0][0], stops[0][1][0]) == (0x19, 3)


# A damaged header on the free chunk a free coalesces forward with (its offset from that
# header, the byte written there, BAD_POOL_HEADER's code): its BlockSize 0, past its page,
# one more (the chunk after it disagrees), and the PreviousSize of the chunk after it.
NEXT_HEADER_DAMAGE = [(2, 0, 0x8), (2, 0xFF, 0x9), (2, "+1", 0x5), ("after", 0x7F, 0x5)]


@pytest.mark.parametrize("delayed", [False, True])
@pytest.mark.parametrize("where, value, code", NEXT_HEADER_DAMAGE)
def test_a_damaged_next_header_stops_a_coalescing_free_both_ways(where, value, code, delayed):
    """A free whose next chunk is free tests that chunk's header as ExpCheckPoolHeader does
    before merging with it (inline in ``free_small``, ``check_pool_header`` the long way):
    the same bug check, parameters and memory both ways, whichever field was damaged."""
    stops = []
    for long_way in (False, True):
        k, pool = fragmented(long_way, delayed)
        mine = k.ExAllocatePoolWithTag(0, 100, "Mine")  # the end of an 11-block chunk
        spacer = mine + (8 << BLOCK_SHIFT)  # the live 2-block chunk after it, then a 3-block free one
        k.ExFreePoolWithTag(spacer, "Live")  # coalesces with that one: a 5-block free chunk
        pool.deferred_free()
        header = spacer - HEADER_SIZE
        assert pool._read_first8(header)[2:4] == (5, POOL_FREE)
        if where == "after":
            k.write(header + (5 << BLOCK_SHIFT), bytes([value]))
        else:
            k.write(header + where, bytes([6 if value == "+1" else value]))
        with pytest.raises(BugCheck) as stop:
            k.ExFreePoolWithTag(mine, "Mine")
            pool.deferred_free()
        error = stop.value
        stops.append((error.code, error.parameters, hashlib.sha256(bytes(pool.mem)).hexdigest()))
    assert stops[0] == stops[1]
    assert (stops[0][0], stops[0][1][0]) == (0x19, code)
