"""The ListHeads path's common cases against the long way, under a corrupting driver.

A lookaside miss takes a chunk from the pool's ListHeads. Its usual case reads and writes
on pages translated once: the chunk's links and headers as QWORDs of physical memory, the
list head's own links standing in for a neighbour that is the head (a lone entry, an empty
list), a new page's headers on one translation. The long way is the one every access takes
when a link leads anywhere else (``Pool._split_any``, ``_insert`` without the entry's physical
address, the header helpers): each access translated on its own. Both must leave the same
memory, lists, counters and call sites, and stop with the same bug check at the same step,
whatever the driver wrote where.
"""

import hashlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntpool import BugCheck, NtStatusError
from ntpool.pool.descriptor import PAGE_SMALL
from ntpool.pool.layout import BLOCK_SHIFT, BLOCKS_PER_PAGE, POOL_FREE
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

    pool._allocate_from_lists = allocate_from_lists
    pool._allocate_from_fresh_page = allocate_from_fresh_page


def run(seed: int, steps: int, long_way: bool):
    """What the run ends with: the step and bug check, and digests of the machine."""
    rng = random.Random(seed)
    driver = SloppyDriver(rng, lookasides=rng.random() < 0.75)
    k = driver.k
    pools = (k.nonpaged_pool, k.paged_pool)
    if long_way:
        for pool in pools:
            take_the_long_way(pool)
    names, weights = list(OPERATIONS), list(OPERATIONS.values())
    stop = None
    step = 0
    try:
        for step in range(steps):
            try:
                getattr(driver, rng.choices(names, weights)[0])()
            except NtStatusError:
                pass
    except BugCheck as error:
        parameters = list(error.parameters)
        if error.code in FAULT_INSTRUCTION:  # names the nearest code on the stack not ntpool's:
            parameters[FAULT_INSTRUCTION[error.code]] = None  # the long way's is this file's
        stop = (error.code, tuple(parameters))
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
    driver reach them (splits from the lists and new pages) many times."""
    calls = {"lists": 0, "fresh": 0}
    rng = random.Random(7)
    driver = SloppyDriver(rng, lookasides=True)
    pool = driver.k.nonpaged_pool
    take_the_long_way(pool)
    lists, fresh = pool._allocate_from_lists, pool._allocate_from_fresh_page

    def counting_lists(*args):
        calls["lists"] += 1
        return lists(*args)

    def counting_fresh(*args):
        calls["fresh"] += 1
        return fresh(*args)

    pool._allocate_from_lists, pool._allocate_from_fresh_page = counting_lists, counting_fresh
    for _ in range(300):
        driver.allocate()
        if rng.random() < 0.4:
            driver.free()
    assert calls["lists"] > 50 and calls["fresh"] > 3
