"""poolmon's screen on a terminal: 80 columns, totals lines, e, scrolling, help, keys."""

import io
import os
import re
import select
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from ntpool.cli.main import main
from ntpool.cli.poolmon_view import ViewState, apply_key, fit_columns, poolmon_screen, \
    KeyReader
from ntpool.debugger.pooltag import PoolTagDatabase, PoolTagFile
from ntpool.tools.poolmon import NONPAGED, PAGED, PoolmonModel, Snapshot, TagUsage

LONG_OWNER = "averyveryverylongdrivername.sys"
POOLTAG = f"Ab01 - {LONG_OWNER} - a tag with a long owner\n"
MACHINE = {"memory": 64 << 20, "available": 60 << 20, "commit": 4 << 20, "peak": 5 << 20,
           "nonpaged": 1 << 20, "paged": 2 << 20, "page_faults": 7}


def model_with(count: int, sort: str | None = None) -> PoolmonModel:
    pooltags = PoolTagDatabase([PoolTagFile.parse(POOLTAG, "test")])
    model = PoolmonModel(pooltags=pooltags) if sort is None else \
        PoolmonModel(sort=sort, pooltags=pooltags)
    rows = [TagUsage(f"Ab{n:02d}", NONPAGED if n % 2 else PAGED, 123456 + n, 120000, 9876543 + n)
            for n in range(count)]
    model.update(Snapshot(list(reversed(rows))))
    return model


def render(screen, width: int, height: int = 200) -> list[str]:
    console = Console(width=width, height=height, file=io.StringIO(), record=True)
    console.print(screen)
    return console.export_text().splitlines()


def test_default_sort_is_by_tag():
    model = model_with(5)
    assert [row.tag for row in model.rows()] == ["Ab00", "Ab01", "Ab02", "Ab03", "Ab04"]


@pytest.mark.parametrize("width", [80, 60, 40, 24])
def test_tags_are_never_cut_and_lines_fit_the_width(width):
    model = model_with(5)
    lines = render(poolmon_screen(model, "status", width=width, machine=MACHINE), width)
    assert all(len(line) <= width for line in lines), lines
    table = [line for line in lines if re.match(r"^Ab\d\d ", line)]
    assert [line[:4] for line in table] == ["Ab00", "Ab01", "Ab02", "Ab03", "Ab04"]


def test_columns_drop_owner_first():
    model = model_with(3)
    cells = [{"tag": r.tag, "type": r.type, "allocs": str(r.allocs), "allocs_delta": "",
              "frees": str(r.frees), "frees_delta": "", "diff": str(r.diff),
              "bytes": str(r.bytes), "bytes_delta": "", "per_alloc": str(r.per_alloc),
              "owner": r.owner} for r in model.rows()]
    everything, _ = fit_columns(cells, 200)
    assert everything[-1] == "owner"
    at_80, owner_width = fit_columns(cells, 80)
    assert "owner" not in at_80 and owner_width is None
    assert {"tag", "diff", "bytes"} <= set(at_80)
    shortened, owner_width = fit_columns(cells, 100)
    assert "owner" in shortened and 12 <= owner_width < len(LONG_OWNER)
    narrow, _ = fit_columns(cells, 20)
    assert narrow == ["tag", "diff", "bytes"]
    lines = render(poolmon_screen(model, "status", width=100), 100)
    assert any("averyveryver" in line and "…" in line for line in lines)


def test_header_has_poolmons_totals_lines():
    lines = render(poolmon_screen(model_with(2), "status", width=80, machine=MACHINE), 80)
    assert lines[0] == " Memory:    65536K Avail:    61440K  PageFlts:     7"
    assert lines[1] == " Commit:     4096K Limit:    65536K Peak:     5120K  Pool N:   1024K P:   2048K"


def test_e_shows_a_totals_row_per_pool_type():
    model, reader, state = model_with(4), KeyReader(stream=None), ViewState()
    assert not any(line.startswith("Total") for line in
                   render(poolmon_screen(model, "s", width=120, state=state), 120))
    apply_key(model, reader, "e", state)
    lines = render(poolmon_screen(model, "s", width=120, state=state), 120)
    totals = [line.split() for line in lines if line.startswith("Total")]
    nonpaged = [r for r in model.rows() if r.type == NONPAGED]
    assert totals[0][:3] == ["Total", "Nonp", str(sum(r.allocs for r in nonpaged))]
    assert totals[0][-1] == str(sum(r.bytes for r in nonpaged))
    assert totals[1][1] == "Paged"
    apply_key(model, reader, "e", state)
    assert not state.show_totals


def test_scrolling_when_there_are_more_tags_than_rows():
    model, reader, state = model_with(50), KeyReader(stream=None), ViewState()

    def shown():
        lines = render(poolmon_screen(model, "s", width=80, height=20, state=state,
                                      machine=MACHINE), 80, height=20)
        assert len(lines) <= 20
        return [line[:4] for line in lines if re.match(r"^Ab\d\d ", line)], lines[-1]

    tags, footer = shown()
    room = len(tags)
    assert tags[0] == "Ab00" and footer.startswith(f"rows 1-{room} of 50")
    apply_key(model, reader, "down", state)
    assert shown()[0][0] == "Ab01"
    apply_key(model, reader, "pagedown", state, page=10)
    assert shown()[0][0] == "Ab11"
    apply_key(model, reader, "end", state)
    tags, footer = shown()
    assert tags[-1] == "Ab49" and footer.startswith(f"rows {51 - room}-50 of 50")
    apply_key(model, reader, "home", state)
    assert shown()[0][0] == "Ab00"


def test_question_mark_and_h_show_the_keys_and_any_key_returns():
    model, reader, state = model_with(3), KeyReader(stream=None), ViewState()
    for key in ("?", "h"):
        assert apply_key(model, reader, key, state)
        text = "\n".join(render(poolmon_screen(model, "s", width=80, state=state), 80))
        assert "ntpool poolmon keys" in text and "PgUp" in text and "totals" in text
        assert apply_key(model, reader, "x", state)  # any key returns; x is not a filter here
        assert not state.show_help and not reader.pending


def test_once_prints_the_totals_lines_and_fits_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["poolmon", "demo", "--once", "--totals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(" Memory:") and lines[1].startswith(" Commit:")
    assert all(len(line) <= 80 for line in lines)
    tags = [line.split()[0] for line in lines if re.match(r"^(Flt|Nm|Sl)\w\w ", line)]
    assert tags == sorted(tags) and "SlRq" in tags
    assert any(line.startswith("Total  Nonp") for line in lines)


def test_live_view_scrolls_and_shows_help_on_a_small_terminal():
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    import subprocess

    fd, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 12, 80, 0, 0))  # 80 x 12
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    child = subprocess.Popen([sys.executable, "-m", "ntpool", "poolmon", "--interval", "5"],
                             stdin=child_end, stdout=child_end, stderr=child_end, env=env,
                             start_new_session=True)
    os.close(child_end)
    screen = b""

    def read_for(seconds):
        nonlocal screen
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    return

    read_for(2.0)
    for key in [b"\x1b[B", b"\x1b[6~", b"?", b" ", b"q"]:  # Down, PgDn, help, back, quit
        os.write(fd, key)
        read_for(0.4)
    read_for(1.5)
    assert child.wait(timeout=20) == 0
    os.close(fd)
    text = screen.decode("utf-8", "replace")
    assert "rows 1-" in text and "rows 2-" in text  # the Down arrow scrolled one row
    assert "ntpool poolmon keys" in text
    assert "Traceback" not in text
