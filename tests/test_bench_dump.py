"""``ntpool bench-dump`` prints every figure beside its goal (a small run: the figures are
the benchmark's, not the test's)."""

from ntpool.debugger import session as kd
from ntpool.tools import bench_dump as bench


def test_bench_dump_reports_each_figure_beside_its_goal(tmp_path):
    results = bench.run(pool_mib=2, directory=str(tmp_path), volatility=False, sparse_gib=0)
    lines = bench.report_lines(results)
    text = "\n".join(lines)
    assert "machine: 2 MiB of each pool" in lines[0]
    for label in ("write full dump", "!poolused", "!poolfind derF (1 chunk in 6), both pools, in this process:",
                  "!poolfind derF (1 chunk in 6), both pools, in this process alone (no scan worker",
                  "!poolfind Zzzz (no hit)", "!poolfind derF, both pools (ntpool kd",
                  "!poolfind * over both pools (ntpool kd"):
        line = next(line for line in lines if line.startswith(label))
        assert "(goal " in line and (": met" in line or ": MISSED" in line), line
    every = results["poolfind_all"]
    assert every["chunks"] > results["allocations"]  # every live chunk, and the free ones
    assert 0 < every["peak_rss_mib"] < 300
    assert results["tag_in_process"]["pool_pages"] > 0
    assert "volatility3: not run" in text
    assert not list(tmp_path.iterdir())  # the dumps are deleted, and their symbols folder


def test_bench_dump_keeps_a_symbols_folder_that_was_there(tmp_path):
    (tmp_path / "symbols").mkdir()
    (tmp_path / "symbols" / "mine").write_text("kept")
    bench.run(pool_mib=1, directory=str(tmp_path), volatility=False, sparse_gib=0)
    assert (tmp_path / "symbols" / "mine").read_text() == "kept"


def test_the_one_process_row_scans_with_no_worker(tmp_path, monkeypatch):
    """The row for a busy machine: kd told to share no pool's scan while it runs, and told
    as before afterwards."""
    seen = []
    decide = kd.KdSession._scan_workers

    def recording(self, finder, pattern):
        seen.append(kd.PARALLEL_PROCESSES)
        return decide(self, finder, pattern)

    monkeypatch.setattr(kd.KdSession, "_scan_workers", recording)
    path = str(tmp_path / "one.dmp")
    bench._write_filled(path, 1)
    before = kd.PARALLEL_PROCESSES
    result = bench._scan_in_process(path, ["!poolfind derF 0", "!poolfind derF 1"], repeats=1, processes=0)
    assert seen == [0, 0] and kd.PARALLEL_PROCESSES == before
    assert result["output_bytes"] > 5000 and result["workers_cpu_seconds"] == 0
