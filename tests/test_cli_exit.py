"""The command line as scripts use it: exit codes, --fail-on, --version, pipes, bad --dump and
--checkpoint, verify's verdicts and the progress display."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ntpool
from ntpool.cli.main import main
from ntpool.campaign import verify

SRC = str(Path(__file__).resolve().parents[1] / "src")

DRIVER = '''
import ntpool
NP = ntpool.PoolType.NonPagedPool


class Small:
    name = "small.sys"

    def DriverEntry(self, k, path):
        self.kept = []
        return 0

    def work(self, k):
        self.kept.append(k.ExAllocatePoolWithTag(NP, 40, "SmLk"))

    def DriverUnload(self, k):
        for p in self.kept[LEAK:]:
            k.ExFreePoolWithTag(p, "SmLk")


DRIVERS = [Small()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    for _ in range(3):
        DRIVERS[0].work(k)
        yield "work"
'''


def scenario(tmp_path, leak: bool, tracking: bool = False, name: str = "small.py") -> str:
    text = DRIVER.replace("LEAK", "1" if leak else "0")
    if tracking:
        text += '\nVERIFIER = {"small.sys": dict(pool_tracking=True)}\n'
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("leak, tracking, fail_on, status", [
    (False, False, "leak", 0),
    (True, False, "leak", 1),
    (True, False, "bugcheck", 0),
    (True, False, "none", 0),
    (True, True, "leak", 3),
    (True, True, "bugcheck", 3),
    (True, True, "none", 0),
])
def test_run_exit_codes_and_fail_on(tmp_path, capsys, leak, tracking, fail_on, status):
    path = scenario(tmp_path, leak, tracking)
    assert main(["run", path, "--fail-on", fail_on]) == status
    out = capsys.readouterr().out
    if tracking:
        assert "0x000000c4 (0x62" in out
    elif leak:
        assert "kLmS (Nonp) 1 x" in out  # the tag as tools show it


def test_run_usage_errors_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    with pytest.raises(SystemExit) as stop:
        main(["run", "demo", "--fail-on", "sometimes"])
    assert stop.value.code == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"ntpool {ntpool.__version__}"


def test_unwritable_dump_prints_the_bug_check_then_one_line_naming_the_path(tmp_path, capsys):
    path = scenario(tmp_path, leak=True, tracking=True)
    target = tmp_path / "no-such-directory" / "crash.dmp"
    assert main(["run", path, "--dump", str(target)]) == 3
    captured = capsys.readouterr()
    assert "0x000000c4 (0x62" in captured.out  # the bug check is shown, not hidden
    assert captured.err.count("\n") == 1
    assert str(target) in captured.err and "No such file or directory" in captured.err
    assert ".ntpool-dump" not in captured.err  # no temporary file's name
    assert not target.parent.exists()


def test_checkpoint_out_of_range_is_an_error_naming_the_range(tmp_path, capsys):
    path = scenario(tmp_path, leak=False)
    out = str(tmp_path / "snap.json")
    assert main(["poolsnap", path, "-o", out, "--checkpoint", "9"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint 9 is out of range" in err and "1 to 3" in err
    assert main(["poolsnap", path, "-o", out, "--checkpoint", "0"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["poolsnap", path, "-o", out, "--checkpoint", "3"]) == 0


def test_checkpoint_past_a_bug_check_names_it(capsys):
    assert main(["poolsnap", "demo", "-o", os.devnull, "--checkpoint", "999"]) == 2
    err = capsys.readouterr().err
    assert "stopped by bug check 0x19 after 35 checkpoints (valid: 1 to 35)" in err


def _into_closed_pipe(*arguments: str) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (head) is already gone: every write is EPIPE
    try:
        return subprocess.run([sys.executable, "-m", "ntpool", *arguments], stdout=write_end,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC},
                              timeout=120)
    finally:
        os.close(write_end)


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    dump = tmp_path / "small.dmp"
    assert main(["run", scenario(tmp_path, leak=True, tracking=True), "--dump", str(dump)]) == 3
    for arguments in (("kd", "-z", str(dump), "-c", "!poolused 1"),  # plain print()
                      ("poolmon", str(dump), "--once")):  # rich's console
        result = _into_closed_pipe(*arguments)
        assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr, \
            result.stderr
        assert result.returncode != 0


FAILING = '''
import ntpool
P = ntpool.PoolType.PagedPool


class Raiser:
    name = "raiser.sys"

    def DriverEntry(self, k, path):
        return 0

    def open(self, k):
        p = k.FsRtlAllocatePoolWithTag(P, 64, "RsOp")  # raises when it fails: nobody catches it
        k.ExFreePoolWithTag(p, "RsOp")


DRIVERS = [Raiser()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    DRIVERS[0].open(k)
'''


def test_verify_verdict_is_the_truth_when_the_run_raised(tmp_path):
    path = tmp_path / "raiser.py"
    path.write_text(FAILING)
    campaign = verify(str(path))
    assert campaign.baseline["verdict"] == "survived"
    (result,) = campaign.verdicts
    assert not result.survived
    assert result.label == "raised NtStatusError"
    evidence = result.result["evidence"]
    assert "STATUS_INSUFFICIENT_RESOURCES" in evidence and "\n" not in evidence


def test_verify_verdicts_name_code_and_bytes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    scenario_path = str(Path(__file__).parent / "scenarios" / "verify_mixed.py")
    assert main(["verify", scenario_path]) == 1
    out = capsys.readouterr().out
    assert "bug check 0x1E" in out and "leaked 32 bytes" in out
    flat = " ".join(out.replace("│", " ").split())
    assert "first: dHxM 32 bytes from mixed.sys Mixed.leaky" in flat


def test_verify_names_failed_sites_by_file_name_as_kd_and_the_evidence_do(capsys, monkeypatch):
    # A compiled sample's PDB records /ntpool/samples/native/unchecked_failure.c, a path on no
    # user's machine; the row's evidence and kd say unchecked_failure.c.
    monkeypatch.setenv("COLUMNS", "400")
    driver = Path(ntpool.__file__).parent / "samples" / "native" / "unchecked_failure.sys"
    assert main(["verify", str(driver), "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert "DriverEntry+0x1d (unchecked_failure.c:7)" in out
    assert "(/ntpool/samples/native/unchecked_failure.c" not in out
    # the by-site and triage tables of a random plan too (line 21 is the failed allocation)
    scenario_path = str(Path(__file__).parent / "scenarios" / "verify_mixed.py")
    assert main(["verify", scenario_path, "--plan", "random:0.5:60", "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert out.count("Mixed.careless (verify_mixed.py:21)") == 2  # by site, and triage (x N)
    assert "scenarios/verify_mixed.py:21" not in out


def test_verify_quiet_shows_no_progress_on_a_terminal(capsys, monkeypatch):
    # --quiet was documented as the tables alone, but the progress bar came all the same.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    scenario_path = str(Path(__file__).parent / "scenarios" / "verify_mixed.py")
    assert main(["verify", scenario_path, "-j", "1"]) == 1
    assert "not survived" in capsys.readouterr().out  # the bar: "verify ... 2 not survived"
    assert main(["verify", scenario_path, "-j", "1", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "not survived" not in out and "leaked 32 bytes" in out


def test_progress_is_shown_on_a_terminal_and_not_in_files(tmp_path, capsys, monkeypatch):
    path = scenario(tmp_path, leak=False)
    picture = str(tmp_path / "usage.svg")
    assert main(["picture", "usage", path, "-o", picture]) == 0
    assert "running the scenario" not in capsys.readouterr().err
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["picture", "usage", path, "-o", picture]) == 0
    err = capsys.readouterr().err
    assert "running the scenario" in err and "work" in err
