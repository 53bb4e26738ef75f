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
