"""poolmon, poolsnap, the page map and the report of a crash dump (the demo's MEMORY.DMP)."""

import json
from dataclasses import replace
from functools import partial

import pytest

from ntpool.cli.main import main
from ntpool.tools.pictures import ALLOCATED, LOOKASIDE, live_page_strips
from ntpool.tools.poolmon import Snapshot
from ntpool.tools.scenario import ScenarioRun, load_scenario


@pytest.fixture(scope="module")
def demo_dump(tmp_path_factory):
    """The demo's crash, as a dump file, and the machine that wrote it."""
    scenario = load_scenario("demo")
    scenario.workload = partial(scenario.workload, steps=300)
    path = tmp_path_factory.mktemp("dump") / "MEMORY.DMP"
    run = ScenarioRun(scenario, seed=2, dump_path=str(path))
    run.run()
    assert run.dump_written == str(path)
    return path, run


def test_poolmon_reads_the_dumps_tracker_table(demo_dump, capsys):
    path, run = demo_dump
    assert main(["poolmon", str(path), "--sort", "t", "--pool", "nonpaged"]) == 0
    out = capsys.readouterr().out
    assert "MEMORY.DMP: crash dump of bug check 0x19 (BAD_POOL_HEADER)" in out
    live = {r.Tag: r for r in run.kernel.pool_tags()}
    line = next(line for line in out.splitlines() if line.startswith("SlRq"))
    assert line.split()[:5] == ["SlRq", "Nonp", str(live["SlRq"].NonPagedAllocs),
                                str(live["SlRq"].NonPagedFrees),
                                str(live["SlRq"].NonPagedAllocs - live["SlRq"].NonPagedFrees)]
    assert "FltS" not in out  # paged rows are filtered out


def test_poolsnap_of_a_dump_equals_the_machine_at_the_crash(demo_dump, tmp_path):
    path, run = demo_dump
    out = tmp_path / "dump.json"
    assert main(["poolsnap", str(path), "-o", str(out)]) == 0
    from_dump = Snapshot.from_json(out.read_text())
    assert json.loads(out.read_text())["label"] == "crash dump"
    assert from_dump.by_key() == Snapshot.from_pool_tags(run.kernel.pool_tags()).by_key()


def test_pagemap_of_a_dump_matches_the_live_pages(demo_dump, tmp_path):
    from ntpool.cli.dump_source import DumpSource

    path, run = demo_dump
    live = live_page_strips(run.kernel)
    assert any(s.state == LOOKASIDE for strip in live for s in strip.segments)
    # Lookaside chunks keep their in-use PoolType (Windows 7): a dump shows them allocated.
    as_in_memory = [replace(strip, segments=tuple(replace(s, state=ALLOCATED) if s.state == LOOKASIDE
                                                  else s for s in strip.segments)) for strip in live]
    assert DumpSource(str(path)).page_strips() == as_in_memory
    svg = tmp_path / "map.svg"
    assert main(["picture", "pagemap", str(path), "-o", str(svg)]) == 0
    text = svg.read_text()
    assert "SlNm" in text and "overrun (0x19/0x20)" in text and "damaged header" in text


def test_report_of_a_dump(demo_dump, tmp_path):
    path, _ = demo_dump
    report = tmp_path / "r.html"
    assert main(["report", str(path), "-o", str(report)]) == 0
    text = report.read_text()
    assert text.count("<svg") == 1  # the page map; a dump has no usage over time
    assert "0x00000019 (0x20," in text and "<td class=\"l\">SlRq</td>" in text


@pytest.mark.parametrize("argv, message", [
    (["picture", "usage", "{dump}", "-o", "u.png"], "usage over time needs a scenario"),
    (["poolsnap", "{dump}", "--checkpoint", "2", "-o", "x.json"], "--checkpoint needs a scenario"),
    (["poolmon", "{dump}", "--paged-pool-mib", "4"], "a crash dump has its own"),
    (["poolmon", "{short}"], "too short for a crash dump"),
])
def test_dump_misuse_is_one_line(demo_dump, tmp_path, monkeypatch, capsys, argv, message):
    path, _ = demo_dump
    short = tmp_path / "short.dmp"
    short.write_bytes(path.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    assert main([a.format(dump=path, short=short) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1



def test_a_big_page_entry_claiming_terabytes_costs_only_the_mapped_pages(tmp_path):
    """A damaged big page table entry whose NumberOfBytes claims 1 TiB: the page map draws
    the pages the dump maps (it made a strip for every claimed page and ran out of memory)."""
    import struct

    import ntpool
    from ntpool.cli.dump_source import DumpSource
    from ntpool.dump import DumpReader

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    big = k.ExAllocatePoolWithTag(0, 3 * 4096, "Bigg")
    k.ExAllocatePoolWithTag(0, 100, "Smal")
    path = tmp_path / "MEMORY.DMP"
    k.write_dump(path, "kernel")
    raw = bytearray(path.read_bytes())
    with DumpReader(str(path)) as reader:
        data = reader.debugger_data()
        table, count = data["PoolBigPageTable"], data["PoolBigPageTableSize"]
        size = 0x18  # Windows 7's POOL_TRACKER_BIG_PAGES: Va, Key, PoolType, NumberOfBytes
        slot = next(i for i in range(count) if struct.unpack("<Q", reader.read(table + i * size, 8))[0] == big)
        va = table + slot * size + 0x10
        at = reader.frame_offset(reader.translate(va) >> 12) + (va & 0xFFF)
    before = DumpSource(str(path)).page_strips()
    assert [strip.note for strip in before if strip.va == big] == ["ggiB: 3 pages"]
    raw[at:at + 8] = struct.pack("<Q", 1 << 40)
    damaged = tmp_path / "damaged.dmp"
    damaged.write_bytes(bytes(raw))
    after = DumpSource(str(damaged)).page_strips()
    assert [strip.va for strip in after] == [strip.va for strip in before]
    assert [strip.note for strip in after if strip.va == big] == [f"ggiB: {1 << 28} pages"]
    assert main(["picture", "pagemap", str(damaged), "-o", str(tmp_path / "map.svg")]) == 0
