"""Pool lookaside lists as Windows 7 keeps them: per processor, a system-wide list behind,
depth 4 to start, retuned once a simulated second (ExAdjustLookasideDepth)."""

import pytest

import ntpool
from ntpool.pool.layout import POOL_FREE, POOL_HEADER
from ntpool.pool.lookaside import Lookaside, target_depth

NP = ntpool.PoolType.NonPagedPool
MiB = 1 << 20
BLOCKS = 8  # a 100-byte request: (100 + 31) >> 4


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, delayed_frees=False)


def pool_type_of(k, p):
    return k.read(p - 16 + POOL_HEADER.PoolType, 1)[0]


def test_every_list_starts_at_depth_4_and_the_system_list_takes_the_overflow(k):
    pool = k.nonpaged_pool
    chunks = [k.ExAllocatePoolWithTag(NP, 100, "Look") for _ in range(10)]
    for p in chunks:
        k.ExFreePoolWithTag(p, "Look")
    assert pool.la.depth[BLOCKS] == pool.system_lookaside.depth[BLOCKS] == 4
    assert pool.la.count[BLOCKS] == 4 and pool.system_lookaside.count[BLOCKS] == 4
    # The first four went to this processor's list, the next four to the system list
    # (both keep them marked in use); the last two went back to the pool's lists.
    assert all(pool_type_of(k, p) != POOL_FREE for p in chunks[:8])
    assert pool.lookaside_chunks() == {p - 16 for p in chunks[:8]}
    assert all(pool_type_of(k, p) == POOL_FREE or p - 16 not in pool.lookaside_chunks()
               for p in chunks[8:])


def test_allocation_pops_this_processors_list_then_the_system_list(k):
    chunks = [k.ExAllocatePoolWithTag(NP, 100, "Look") for _ in range(8)]
    for p in chunks:
        k.ExFreePoolWithTag(p, "Look")
    again = [k.ExAllocatePoolWithTag(NP, 100, "Look") for _ in range(8)]
    # Last in, first out: processor list (chunks 3..0), then system list (chunks 7..4).
    assert again == chunks[3::-1] + chunks[7:3:-1]
    pool = k.nonpaged_pool
    assert pool.la.total_allocates[BLOCKS] == 8 + 8 and pool.la.allocate_misses[BLOCKS] == 8 + 4
    assert pool.system_lookaside.hits(BLOCKS) == 4


def test_each_processor_has_its_own_list():
    k = ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, processors=2,
                      delayed_frees=False)
    p = k.ExAllocatePoolWithTag(NP, 100, "Cpu0")
    k.ExFreePoolWithTag(p, "Cpu0")
    k.set_current_processor(1)
    assert k.nonpaged_pool.la.count[BLOCKS] == 0
    q = k.ExAllocatePoolWithTag(NP, 100, "Cpu1")
    assert q != p  # processor 1's list is empty; the system list too: a new chunk
    k.set_current_processor(0)
    assert k.ExAllocatePoolWithTag(NP, 100, "Cpu0") == p


@pytest.mark.parametrize("depth, allocates, misses, period, expected", [
    (4, 10, 10, 3, 4),          # fewer than 25 a second: down by 10, not below 4
    (40, 10, 10, 3, 30),
    (40, 1000, 4, 3, 39),       # miss rate under 0.5%: down by 1
    (4, 1000, 500, 3, 34),      # 50% misses: 500 * 252 / 2000 + 5 = 68, at most 30
    (4, 1000, 20, 3, 11),       # 2% misses: 20 * 252 // 2000 + 5 = 7
    (250, 1000, 1000, 3, 256),  # never above MaximumDepth
])
def test_the_retuning_rule(depth, allocates, misses, period, expected):
    assert target_depth(depth, 256, allocates, misses, period) == expected


def test_busy_lists_deepen_and_idle_ones_shrink_on_the_simulated_clock(k):
    pool = k.nonpaged_pool
    live = []
    for _ in range(200):  # 200 allocations of one size, most of them misses
        live.append(k.ExAllocatePoolWithTag(NP, 100, "Busy"))
    for p in live:
        k.ExFreePoolWithTag(p, "Busy")
    assert pool.la.depth[BLOCKS] == 4
    k.advance_time(2)  # scans 0 and 1 are the drivers' own lookaside lists
    assert pool.la.depth[BLOCKS] == 4
    k.advance_time(1)  # scan 2: processor 0's pool lists, over a 3-second period
    misses = pool.la.allocate_misses[BLOCKS]
    expected = target_depth(4, 256, 200, misses, 3)
    assert expected > 4 and pool.la.depth[BLOCKS] == expected
    assert pool.system_lookaside.depth[BLOCKS] == 4  # its turn is the next pool scan
    system = pool.system_lookaside
    k.advance_time(3)  # the system lists: every processor-list miss was an allocation there
    assert system.total_allocates[BLOCKS] == misses
    assert system.depth[BLOCKS] == target_depth(4, 256, misses, system.allocate_misses[BLOCKS], 3) > 4
    k.advance_time(3)  # processor 0 again: no allocations since, so down by 10
    assert pool.la.depth[BLOCKS] == max(expected - 10, 4)
    k.advance_time(60)
    assert pool.la.depth[BLOCKS] == 4


def test_a_deeper_list_holds_more(k):
    pool = k.nonpaged_pool
    pool.la.depth[BLOCKS] = 100
    chunks = [k.ExAllocatePoolWithTag(NP, 100, "Deep") for _ in range(120)]
    for p in chunks:
        k.ExFreePoolWithTag(p, "Deep")
    assert pool.la.count[BLOCKS] == 100 and pool.system_lookaside.count[BLOCKS] == 4


def test_exhaustion_still_flushes_every_lookaside():
    k = ntpool.Kernel(nonpaged_pool_bytes=64 * 1024, paged_pool_bytes=64 * 1024, delayed_frees=False)
    chunks = []
    while True:
        p = k.ExAllocatePoolWithTag(NP, 100, "Fill")
        if not p:
            break
        chunks.append(p)
    for p in chunks:
        k.ExFreePoolWithTag(p, "Fill")
    assert k.ExAllocatePoolWithTag(NP, 3000, "Big1")  # needs the lookasides' chunks back


def test_advance_time_refuses_nonsense(k):
    for bad in (-1, "1", None, True):
        with pytest.raises(ValueError, match="seconds"):
            k.advance_time(bad)
    k.advance_time(0.5)
    k.advance_time(0.5)
    assert k.system_time - k.boot_time == 10_000_000 and k.lookaside_scan_count == 1
    k.advance_clock(2 * 10_000_000)  # the one simulated clock, in 100 ns units
    assert k.lookaside_scan_count == 0 and k.pool.lookaside_scanner.pool_scan_count == 1


def test_lookaside_set_defaults():
    lookaside = Lookaside()
    assert lookaside.depth[1] == 4 and lookaside.maximum_depth == 256 and len(lookaside.head) == 33
