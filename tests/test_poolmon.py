"""The poolmon model (sorting, filters, deltas, snapshots), pooltag.txt, and the CLI."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.cli.main import main
from ntpool.cli.poolmon_view import KeyReader, apply_key
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.tools.poolmon import (
    NONPAGED, PAGED, PoolmonModel, Snapshot, TagUsage, grown_tags, tag_matches)


def snap(*rows, label=""):
    return Snapshot([TagUsage(*row) for row in rows], label=label)


def tags_in_order(model):
    return [(row.tag, row.type) for row in model.rows()]


# --- the model -----------------------------------------------------------------------------

def test_snapshot_from_kernel_splits_pool_types_and_charges_blocks(k):
    a = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Fred")
    k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 1, "Fred")
    k.ExFreePoolWithTag(a, "Fred")
    rows = Snapshot.from_pool_tags(k.pool_tags()).by_key()
    assert rows[("derF", NONPAGED)] == TagUsage("derF", NONPAGED, 1, 1, 0)
    assert rows[("derF", PAGED)] == TagUsage("derF", PAGED, 1, 0, 32)


def test_diff_and_per_alloc():
    usage = TagUsage("Abcd", NONPAGED, 10, 4, 600)
    assert usage.diff == 6 and usage.per_alloc == 100
    assert TagUsage("Abcd", NONPAGED, 3, 3, 0).per_alloc == 0


def test_deltas_are_since_the_previous_refresh():
    model = PoolmonModel()
    model.update(snap(("Aaaa", NONPAGED, 5, 1, 400)))
    assert [(r.allocs_delta, r.bytes_delta) for r in model.rows()] == [(0, 0)]
    model.update(snap(("Aaaa", NONPAGED, 9, 2, 700), ("Bbbb", PAGED, 2, 0, 64)))
    deltas = {r.tag: (r.allocs_delta, r.frees_delta, r.bytes_delta) for r in model.rows()}
    assert deltas == {"Aaaa": (4, 1, 300), "Bbbb": (2, 0, 64)}
    model.update(snap(("Aaaa", NONPAGED, 9, 2, 700), ("Bbbb", PAGED, 2, 2, 0)))
    deltas = {r.tag: (r.allocs_delta, r.frees_delta, r.bytes_delta) for r in model.rows()}
    assert deltas == {"Aaaa": (0, 0, 0), "Bbbb": (0, 2, -64)}


ROWS = [("Aaaa", NONPAGED, 10, 9, 64), ("Bbbb", PAGED, 3, 0, 900),
        ("Cccc", NONPAGED, 50, 48, 6000), ("Dddd", NONPAGED, 7, 1, 120)]


@pytest.mark.parametrize("key, expected", [
    ("t", ["Aaaa", "Bbbb", "Cccc", "Dddd"]),
    ("a", ["Cccc", "Aaaa", "Dddd", "Bbbb"]),
    ("f", ["Cccc", "Aaaa", "Dddd", "Bbbb"]),
    ("d", ["Dddd", "Bbbb", "Cccc", "Aaaa"]),
    ("b", ["Cccc", "Bbbb", "Dddd", "Aaaa"]),
    ("m", ["Cccc", "Bbbb", "Aaaa", "Dddd"]),
])
def test_sort_keys(key, expected):
    model = PoolmonModel(sort="t")
    model.update(snap(*ROWS))
    model.press(key) if key != "t" else None
    assert [tag for tag, _ in tags_in_order(model)] == expected
    model.press(key)  # the same key again reverses
    assert [tag for tag, _ in tags_in_order(model)] == expected[::-1]


def test_r_reverses_and_p_cycles_pool_types():
    model = PoolmonModel(sort="b")
    model.update(snap(*ROWS))
    model.press("r")
    assert tags_in_order(model)[0] == ("Aaaa", NONPAGED)
    model.press("p")
    assert model.pool_filter == "nonpaged"
    assert {t for _, t in tags_in_order(model)} == {NONPAGED}
    model.press("p")
    assert tags_in_order(model) == [("Bbbb", PAGED)]
    model.press("p")
    assert len(model.rows()) == 4


def test_include_and_exclude_wildcards():
    model = PoolmonModel(sort="t", include=["A*", "?ccc"], exclude=["C*"])
    model.update(snap(*ROWS))
    assert [t for t, _ in tags_in_order(model)] == ["Aaaa"]
    model.exclude.clear()
    assert [t for t, _ in tags_in_order(model)] == ["Aaaa", "Cccc"]


def test_tag_matching_treats_trailing_spaces_as_optional():
    assert tag_matches("Irp", "Irp ")
    assert tag_matches("Ir?", "Irp ")
    assert not tag_matches("Ir", "Irp ")
    assert tag_matches("*", "Fred")
    assert tag_matches("F[x]", "F[x]")  # only * and ? are special


def test_model_rejects_unknown_sort_and_pool():
    with pytest.raises(ValueError, match="sort"):
        PoolmonModel(sort="z")
    with pytest.raises(ValueError, match="pool type"):
        PoolmonModel(pool_filter="session")


def test_interactive_keys_type_filters():
    model = PoolmonModel(sort="t")
    model.update(snap(*ROWS))
    reader = KeyReader(stream=None)
    for key in "/iB* D*\r":
        assert apply_key(model, reader, key)
    assert model.include == ["B*", "D*"]
    assert [t for t, _ in tags_in_order(model)] == ["Bbbb", "Dddd"]
    for key in "/xD\x7fB*\r":  # backspace edits the pattern
        apply_key(model, reader, key)
    assert model.exclude == ["B*"]
    assert [t for t, _ in tags_in_order(model)] == ["Dddd"]
    apply_key(model, reader, "c")
    assert len(model.rows()) == 4
    apply_key(model, reader, "d")
    assert model.sort == "d"
    assert apply_key(model, reader, "q") is False


# --- snapshots -----------------------------------------------------------------------------

def test_snapshot_json_round_trip():
    original = snap(*ROWS, label="checkpoint 3")
    again = Snapshot.from_json(original.to_json())
    assert again.rows == original.rows and again.label == "checkpoint 3"
    assert json.loads(original.to_json())["format"] == "ntpool-poolsnap"


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    ("[]", "format"),
    ('{"format": "ntpool-poolsnap", "version": 9, "tags": []}', "version 9"),
    ('{"format": "ntpool-poolsnap", "version": 1, "tags": {}}', "must be a list"),
    ('{"format": "ntpool-poolsnap", "version": 1, "tags": [{"tag": "Abcde", "type": "Nonp",'
     ' "allocs": 1, "frees": 0, "bytes": 32}]}', "1 to 4"),
    ('{"format": "ntpool-poolsnap", "version": 1, "tags": [{"tag": "Abcd", "type": "Nonp",'
     ' "allocs": -1, "frees": 0, "bytes": 32}]}', "allocs"),
    # found by python -m ntpool.cli.dump_fuzz: a RecursionError traceback, an error naming no file
    pytest.param("[" * 100000 + "]" * 100000, r"x.json is not a poolsnap file \(JSON nested too deeply",
                 id="nested-too-deeply"),
    pytest.param('{"format": "ntpool-poolsnap", "version": ' + "9" * 5000 + "}",
                 r"x.json is not a poolsnap file \(not JSON", id="a-5000-digit-number"),
])
def test_bad_snapshot_files_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Snapshot.from_json(text, name="x.json")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["format", "version", "tags", "tag", "type", "allocs", "frees", "bytes"]),
        children, max_size=8), max_leaves=20).map(json.dumps)))
def test_snapshot_parser_never_fails_unexpectedly(text):
    try:
        Snapshot.from_json(text)
    except ValueError:
        pass


def test_grown_tags_finds_the_leak_first():
    before = snap(("Leak", NONPAGED, 10, 5, 500), ("Flat", NONPAGED, 100, 90, 1000),
                  ("Gone", PAGED, 4, 0, 400))
    after = snap(("Leak", NONPAGED, 50, 5, 4500), ("Flat", NONPAGED, 200, 190, 1000),
                 ("Gone", PAGED, 4, 4, 0), ("New ", PAGED, 1, 0, 64))
    grown = grown_tags(before, after)
    assert [(g.tag, g.diff_grown, g.bytes_grown) for g in grown] == [
        ("Leak", 40, 4000), ("New ", 1, 64)]


# --- owners ------------------------------------------------------------------------------

def test_owners_come_from_ntpools_pooltag_and_the_environment(tmp_path, monkeypatch):
    extra = tmp_path / "mine.txt"
    extra.write_text("Mine - mine.sys - my tag\n")
    monkeypatch.setenv("NTPOOL_POOLTAG", str(extra))
    model = PoolmonModel(pooltags=PoolTagDatabase.default())
    model.update(snap(("SlNm", NONPAGED, 1, 0, 64), ("Mine", PAGED, 1, 0, 32),
                      ("Zzzz", PAGED, 1, 0, 32)))
    owners = {row.tag: row.owner for row in model.rows()}
    assert owners == {"SlNm": "sloppy.sys", "Mine": "mine.sys", "Zzzz": ""}


# --- the commands --------------------------------------------------------------------------

def test_poolmon_once_prints_the_final_table(capsys):
    assert main(["poolmon", "--once", "--sort", "d"]) == 0
    out = capsys.readouterr().out
    for column in ("Tag", "Type", "Allocs", "(delta)", "Frees", "Diff", "Bytes", "Per Alloc"):
        assert column in out
    assert "SlRq" in out and "sloppy.sys" in out
    assert "stopped by bug check 0x19" in out


def test_poolmon_iterations_show_deltas_and_filters(capsys):
    assert main(["poolmon", "--iterations", "2", "-i", "Sl*", "-x", "SlNm"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("checkpoint 2")
    assert "checkpoint 1 (traffic)" in first
    rows = [line.split()[0] for line in out.splitlines() if line[:4].strip() and
            line.split()[0] in ("SlRq", "SlNm", "NmRx", "FltS")]
    assert set(rows) == {"SlRq"}
    assert "(100)" in second  # 100 requests between the two refreshes


def test_poolsnap_and_diff_find_the_leak(tmp_path, capsys):
    early, late = tmp_path / "early.json", tmp_path / "late.json"
    assert main(["poolsnap", "demo", "--checkpoint", "2", "-o", str(early)]) == 0
    assert main(["poolsnap", "demo", "--checkpoint", "20", "-o", str(late)]) == 0
    assert json.loads(early.read_text())["label"] == "checkpoint 2: traffic"
    capsys.readouterr()
    assert main(["poolsnap", "--diff", str(early), str(late)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Tags that grew from checkpoint 2")
    assert lines[2].startswith("SlRq") and "sloppy.sys" in lines[2]


@pytest.mark.parametrize("argv, message", [
    (["poolsnap", "demo"], "needs -o"),
    (["poolsnap", "--diff", "a.json"], "expected 2 arguments"),
    (["poolmon", "--iterations", "0"], "--iterations must be at least 1"),
    (["poolsnap", "two.py", "--checkpoint", "3", "-o", "x.json"], "two has 2 checkpoints (valid: 1 to 2)"),
])
def test_poolmon_and_poolsnap_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.py").write_text("def workload(k, rng):\n    yield\n    yield\n")
    with pytest.raises(SystemExit) if "expected" in message else _no_exit():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_live_view_on_a_terminal_takes_keys_and_quits():
    pty = pytest.importorskip("pty")
    import os
    import select
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: poolmon on a pseudo-terminal
        os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
        os.execvp(sys.executable, [sys.executable, "-m", "ntpool", "poolmon", "--interval", "0.1"])
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

    read_for(1.5)  # started and refreshing
    for key in [b"p", b"/", b"i", b"S", b"l", b"*", b"\r", b"t", b"q"]:
        os.write(fd, key)
        read_for(0.2)
    read_for(2.0)
    _, status = os.waitpid(pid, 0)
    text = screen.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0
    assert "pool: nonpaged" in text and "include: Sl*" in text and "sorted by Tag" in text
    assert "Traceback" not in text
