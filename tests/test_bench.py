"""The benchmark's yardstick and report (the figures themselves are not tested: not timed tests)."""

from ntpool.tools.bench import ROUTINE_FIGURES, BareMinimumPool, report_lines


def test_bare_minimum_pool_reuses_chunks_and_counts_tags():
    pool = BareMinimumPool(size=4096)
    first = pool.allocate(100, "Fred")
    pool.free(first, "Fred")
    assert pool.allocate(100, "Fred") == first  # the free list gives the chunk back
    other = pool.allocate(100, "Fred")
    assert other == first + 128  # 100 bytes + header: 8 blocks of 16
    assert pool.tags["Fred"] == [3, 1, 256]


def test_report_gives_every_figure_its_ratio_and_goal():
    medians = {name: 1.0 for name in ROUTINE_FIGURES}
    medians.update(bare=0.5, ex=1.0, big=20.0, tracking=2.0)
    lines = report_lines({"routines_us": medians})
    assert len(lines) == len(ROUTINE_FIGURES)
    assert all("x bare" in line for line in lines)
    assert "2.00x bare (goal <= 2.2x bare: met)" in lines[1]
    big = next(line for line in lines if line.startswith("64 KiB"))
    assert big.endswith("(goal < 15 us: MISSED)")
    assert next(line for line in lines if "special pool" in line).endswith("(reported)")


def test_fragmented_machines_measure_the_misses_their_rows_name():
    """The fragmented rows measure what they say: a 100-byte miss splits an 11-block chunk
    (no list of 8 to 10 blocks holds one) whose remainder joins the long 3-block list, its
    free coalesces with that remainder and joins the long 11-block list; or it is an exact
    fit from a long 8-block list. A round leaves the pool as it found it."""
    from ntpool.tools.bench import LOOKASIDE_DRAIN, _fragmented_cycle, _fragmented_machine
    from ntpool.windows import windows_version

    k = _fragmented_machine(windows_version("7"), (160, 32))
    pool = k.nonpaged_pool
    inserted, unlinked = [], []
    insert, unlink = pool._insert, pool._unlink
    pool._insert = lambda entry, blocks, *rest: (inserted.append(blocks), insert(entry, blocks, *rest))
    pool._unlink = lambda entry, blocks, *rest: (unlinked.append(blocks), unlink(entry, blocks, *rest))
    _fragmented_cycle(k, 50, "miss")
    lengths = len(pool.free_list(3)), len(pool.free_list(11))
    assert min(lengths) > 2_500 and not any(pool.listed[8:11])
    inserted.clear(), unlinked.clear()
    _fragmented_cycle(k, 50, "miss")
    assert (len(pool.free_list(3)), len(pool.free_list(11))) == lengths
    # Each allocation past the lookasides (the drain's too; they hold 4 + 4 chunks at their
    # first Depth) lists a 3-block remainder; each free past them unlinks it, coalescing, and
    # lists the 11-block chunk again.
    past_lookasides = LOOKASIDE_DRAIN + 50 - 8
    assert inserted.count(3) == unlinked.count(3) == inserted.count(11) == past_lookasides
    exact = _fragmented_machine(windows_version("7"), (100,))
    before = len(exact.nonpaged_pool.free_list(8))
    assert before > 2_500
    _fragmented_cycle(exact, 50, "miss")
    assert len(exact.nonpaged_pool.free_list(8)) == before
