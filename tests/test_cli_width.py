"""Tables written to a file or a pipe are as wide as their content (rich would make them 80
columns there, folding and cutting them); COLUMNS, when set, is honoured."""

import re
from pathlib import Path

import pytest

from ntpool.cli.main import main
from ntpool.cli.poolmon_view import FittingConsole, wide_console

SCENARIO = str(Path(__file__).parent / "scenarios" / "verify_mixed.py")
LONG = "a-folder-name-long-enough-that-an-80-column-table-must-fold-it"


@pytest.fixture
def junk(tmp_path):
    folder = tmp_path / LONG
    folder.mkdir()
    path = folder / "junk.dmp"
    path.write_bytes(b"not a dump at all" * 100)
    return path


def test_triage_into_a_pipe_keeps_each_row_on_one_line(junk, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["triage", str(junk), "-j", "1"]) == 1
    lines = capsys.readouterr().out.splitlines()
    row = [line for line in lines if str(junk) in line]
    assert len(row) == 1 and "too short for a crash dump" in row[0], lines
    assert max(len(line) for line in lines) > 80


def test_columns_still_sets_the_width(junk, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["triage", str(junk), "-j", "1"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert not any(str(junk) in line for line in lines)  # folded to fit, as asked


def test_triage_titles_are_one_line_over_narrow_tables(tmp_path, capsys, monkeypatch):
    # "Culprits (driver running at the bug check)" over a two-column table was folded into
    # "Culprits (driver running" and "at the bug check)", on a terminal and in a file alike.
    import ntpool

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Tiny")
    dump = tmp_path / "running.dmp"
    k.write_dump(dump, kind="kernel")
    for columns in (None, "100"):
        if columns:
            monkeypatch.setenv("COLUMNS", columns)
        else:
            monkeypatch.delenv("COLUMNS", raising=False)
        assert main(["triage", str(dump), "-j", "1"]) == 0
        lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
        assert "Culprits (driver running at the bug check)" in lines
        assert "Largest tags over the fleet" in lines


def test_verify_into_a_pipe_keeps_the_evidence_whole(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["verify", SCENARIO, "-j", "1"]) == 1
    out = capsys.readouterr().out
    leaked = [line for line in out.splitlines() if "leaked 32 bytes under 'dHxM'" in line]
    assert leaked and all(re.search(r"mixed\.sys .* leaked", line) for line in leaked), out


def test_a_fitting_console_leaves_what_fills_any_width_at_its_own(monkeypatch):
    import io

    from rich.panel import Panel
    from rich.table import Table

    monkeypatch.delenv("COLUMNS", raising=False)
    console = wide_console()
    assert isinstance(console, FittingConsole) and console.width == 132
    console = FittingConsole(file=io.StringIO(), width=132)
    table = Table("a", "b")
    table.add_row("x" * 300, "y" * 10)
    console.print(table)
    console.print(Panel("inside"))
    console.print("z" * 500)
    lines = console.file.getvalue().splitlines()
    assert any("x" * 300 in line for line in lines)
    assert max(len(line) for line in lines if "inside" in line) == 132
    assert "z" * 500 in lines


def test_triage_counts_are_right_aligned_as_verify_s_runs_are(tmp_path, capsys, monkeypatch):
    # Every count column of `ntpool triage` (Dumps, Bytes, Largest, Median) reads down its
    # digits, as `verify`'s triage "Runs" column does: a count narrower than its heading
    # ends one space before its cell's right edge.
    import ntpool

    dumps = []
    for index in range(3):
        k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
        k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100 + 1000 * index, "Tiny")
        dumps.append(str(tmp_path / f"m{index}.dmp"))
        k.write_dump(dumps[-1], kind="kernel")
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["triage", *dumps, "-j", "1"]) == 0
    out = capsys.readouterr().out
    bugchecks = out[out.index("Bug checks"):out.index("Culprits")]
    assert re.search(r"^│ .+ │ +3 │$", bugchecks, re.M), bugchecks
    culprits = out[out.index("Culprits"):out.index("Largest")]
    assert re.search(r"^│ .+ │ +3 │$", culprits, re.M), culprits
    largest = out[out.index("Largest"):]
    assert re.search(r"^│ yniT +│ +[\d,]+ │ +3 │$", largest, re.M), largest
