"""Scenarios: the README's example, the runner's stages and samples, and bad scenario files."""

import re
from pathlib import Path

import pytest

from ntpool.cli.main import main
from ntpool.tools.scenario import ScenarioError, ScenarioRun, load_scenario

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The complete scenario example in the README's Scenarios section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Scenarios"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture
def cache_py(tmp_path):
    path = tmp_path / "cache.py"
    path.write_text(readme_example())
    return path


def test_readme_example_runs_and_reports_its_leak(cache_py, capsys):
    assert main(["run", str(cache_py)]) == 1  # the leak is a finding
    out = capsys.readouterr().out
    assert "drivers loaded: cache.sys" in out
    assert "Pool usage by tag at the end of the workload (20 checkpoints)" in out
    leak = re.search(r"Still allocated after the drivers unloaded \(leaks\): Cche \(Paged\) 1 x", out)
    assert leak, out


def test_readme_example_under_pool_tracking_bugchecks_at_unload(cache_py, capsys):
    cache_py.write_text(cache_py.read_text() + '\nVERIFIER = {"cache.sys": dict(pool_tracking=True)}\n')
    assert main(["run", str(cache_py)]) == 3
    out = capsys.readouterr().out
    assert "0x000000c4 (0x62" in out


def test_runner_samples_at_each_yield(cache_py):
    run = ScenarioRun(load_scenario(str(cache_py)), seed=3)
    labels = list(run.checkpoints())
    assert labels == [f"step {n}" for n in range(100, 2001, 100)]
    run.finish()
    assert [s.label for s in run.samples][:2] == ["boot", "step 100"]
    assert run.samples[-1].label == "after unload"
    nonpaged, paged = run.samples[5].bytes_by_tag["Cche"]
    assert nonpaged == 0 and paged > 100 * 32  # about 100 entries live, each >= 32 bytes
    assert run.samples[-1].bytes_by_tag["Cche"][1] < 32 * 30  # one entry left after unload


def test_same_seed_same_run(cache_py):
    def final(seed):
        run = ScenarioRun(load_scenario(str(cache_py)), seed=seed).run()
        return [s.bytes_by_tag for s in run.samples]

    assert final(7) == final(7)
    assert final(7) != final(8)


def test_plain_function_workload_and_kernel_options(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("KERNEL = dict(nonpaged_pool_bytes=1 << 20)\n"
                    "def workload(k, rng):\n"
                    "    k.ExAllocatePoolWithTag(0, 2 << 20, 'Huge')\n")
    run = ScenarioRun(load_scenario(str(path))).run()
    assert run.kernel.nonpaged_pool.page_count == 256
    assert run.bugcheck is None
    assert [s.label for s in run.samples] == ["boot", "end of workload", "after unload"]


def test_a_bug_check_stops_the_run_and_is_kept(tmp_path):
    path = tmp_path / "crash.py"
    path.write_text("def workload(k, rng):\n"
                    "    p = k.ExAllocatePoolWithTag(0, 1000, 'Fred')\n"
                    "    k.ExAllocatePoolWithTag(0, 1000, 'Kept')\n"
                    "    yield 'allocated'\n"
                    "    k.ExFreePoolWithTag(p, 'Fred')\n"
                    "    k.ExFreePoolWithTag(p, 'Fred')\n"
                    "    yield 'never'\n")
    run = ScenarioRun(load_scenario(str(path)))
    assert list(run.checkpoints()) == ["allocated"]
    assert run.bugcheck.code == 0xC2 and run.bugcheck.parameters[0] == 0x07
    assert run.samples[-1].label == "bug check"


@pytest.mark.parametrize("source, message", [
    ("def workload(k, rng:\n    pass\n", r"bad\.py:1: syntax error"),
    ("X = 1\n", r"defines no workload\(k, rng\) function"),
    ("import nosuchmodule\ndef workload(k, rng): pass\n", r"bad\.py:1: ModuleNotFoundError"),
    ("DRIVERS = [object()]\ndef workload(k, rng): pass\n", "has no DriverEntry"),
    ("KERNEL = 5\ndef workload(k, rng): pass\n", "KERNEL must be a dict"),
    ("def workload(k, rng):\n    yield\n    1 / 0\n", r"bad\.py:3 in workload: ZeroDivisionError"),
    ("KERNEL = dict(pool_bytes=1)\ndef workload(k, rng): pass\n", "KERNEL: .*pool_bytes"),
])
def test_bad_scenarios_are_one_line_errors(tmp_path, capsys, source, message):
    path = tmp_path / "bad.py"
    path.write_text(source)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_scenario(capsys):
    assert main(["run", "no/such/scenario.py"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_driver_error_names_the_driver_line(tmp_path):
    path = tmp_path / "drv.py"
    path.write_text("class D:\n"
                    "    name = 'd.sys'\n"
                    "    def DriverEntry(self, k, path):\n"
                    "        return {}['missing']\n"
                    "    def DriverUnload(self, k): pass\n"
                    "DRIVERS = [D()]\n"
                    "def workload(k, rng): pass\n")
    with pytest.raises(ScenarioError, match=r"drv\.py:4 in DriverEntry: KeyError"):
        ScenarioRun(load_scenario(str(path))).run()


def test_run_writes_a_dump_naming_the_running_driver(tmp_path, capsys):
    from ntpool.debugger.session import KdSession
    from ntpool.dump import DumpReader

    path = tmp_path / "wrongtag.py"
    path.write_text("class D:\n"
                    "    name = 'wrongtag.sys'\n"
                    "    def DriverEntry(self, k, path): pass\n"
                    "    def DriverUnload(self, k): pass\n"
                    "    def work(self, k):\n"
                    "        p = k.ExAllocatePoolWithTag(0, 10, 0x80000000 | 0x46726564)\n"
                    "        k.ExFreePoolWithTag(p, 'Oops')\n"
                    "d = D()\n"
                    "DRIVERS = [d]\n"
                    "def workload(k, rng):\n"
                    "    d.work(k)\n")
    dump = tmp_path / "crash.dmp"
    assert main(["run", str(path), "--dump", str(dump)]) == 3
    assert f"Wrote {dump}" in capsys.readouterr().out
    with DumpReader(dump) as reader:
        analysis = KdSession(reader).execute("!analyze -v")
    assert "BAD_POOL_CALLER (c2)" in analysis
    assert "DRIVER:  wrongtag.sys" in analysis
    assert "D.work (" in analysis and "wrongtag.py:7" in analysis
