"""Pictures and the report: the data they draw, and the files they hold."""

import re
import struct

import pytest

import ntpool
from ntpool.cli.main import main
from ntpool.constants import PAGE_SIZE
from ntpool.tools.pictures import (
    ALLOCATED, BIG, FREE, LOOKASIDE, Segment, live_page_strips, pagemap_figure, save_figure, tag_colours,
    usage_figure)
from ntpool.tools.scenario import ScenarioRun, load_scenario


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_page_strips_cover_each_page_exactly(k):
    a = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Fred")
    b = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 3000, "Wilm")
    c = k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 40, "Barn")
    big = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 3 * PAGE_SIZE, "Huge")
    k.ExFreePoolWithTag(a, "Fred")  # onto a lookaside
    strips = live_page_strips(k)
    assert [s.pool for s in strips] == ["NonPagedPool"] * 4 + ["PagedPool"]
    for strip in strips:
        assert sum(seg.length for seg in strip.segments) == PAGE_SIZE
        assert [seg.offset for seg in strip.segments] == sorted(seg.offset for seg in strip.segments)
    small = {(seg.tag, seg.state) for seg in strips[0].segments}
    assert ("derF", LOOKASIDE) in small and ("mliW", ALLOCATED) in small
    assert any(seg.state == FREE for seg in strips[0].segments)
    big_strips = [s for s in strips if s.segments[0].state == BIG]
    assert [s.va for s in big_strips] == [big, big + PAGE_SIZE, big + 2 * PAGE_SIZE]
    assert {s.segments[0].tag for s in big_strips} == {"eguH"}
    assert big_strips[0].note == "eguH: 3 pages" and big_strips[1].note == ""
    assert live_page_strips(k, "paged")[0].segments[0] == Segment(0, 64, ALLOCATED, "nraB")
    assert b and c
    with pytest.raises(ValueError, match="pool must be"):
        live_page_strips(k, "session")


def test_colours_go_to_the_biggest_tags_first(k):
    for _ in range(3):
        k.ExAllocatePoolWithTag(0, 1000, "Big1")
    k.ExAllocatePoolWithTag(0, 10, "Tiny")
    colours = tag_colours(live_page_strips(k))
    assert list(colours) == ["1giB", "yniT"]
    assert len(set(colours.values())) == 2


@pytest.fixture(scope="module")
def demo_run():
    run = ScenarioRun(load_scenario("demo"), seed=1)
    for _ in run.checkpoints():
        pass
    return run


def test_pagemap_png_and_svg(demo_run, tmp_path):
    strips = live_page_strips(demo_run.kernel, "nonpaged")
    figure = pagemap_figure(strips, "demo", max_pages=40, marks={demo_run.bugcheck.parameters[1]: "overrun"})
    png, svg = tmp_path / "map.png", tmp_path / "map.svg"
    save_figure(figure, str(png))
    save_figure(figure, str(svg))
    width, height = png_size(png)
    assert width == 1300 and height == round(100 * (0.2 * 40 + 2.2))
    text = svg.read_text()
    for tag in ("NmRx", "SlRq", "SlNm", "overrun", "first 40 of"):
        assert tag in text
    assert "fffffa8000000000" in text  # pages are labelled by address


def test_usage_svg_names_the_tags_and_the_bug_check(demo_run, tmp_path):
    svg = tmp_path / "usage.svg"
    save_figure(usage_figure(demo_run.samples, "demo usage", top=3), str(svg))
    text = svg.read_text()
    for word in ("FltS", "FltN", "SlRq", "bug check", "traffic", "backup", "demo usage"):
        assert word in text
    assert "NmTx" not in text  # only the top 3 tags by peak bytes
    assert save_figure(usage_figure(demo_run.samples), fmt="svg") == \
        save_figure(usage_figure(demo_run.samples), fmt="svg")  # reproducible


def test_picture_commands(tmp_path, capsys):
    png = tmp_path / "usage.png"
    assert main(["picture", "usage", "demo", "-o", str(png)]) == 0
    assert png_size(png) == (1100, 500)
    svg = tmp_path / "map.svg"
    assert main(["picture", "pagemap", "demo", "--pool", "paged", "--checkpoint", "40",
                 "-o", str(svg)]) == 0
    text = svg.read_text()
    assert "FltS" in text and "PP fffff8a0" in text and "NP fffffa80" not in text
    assert main(["picture", "pagemap", "-o", str(tmp_path / "x.jpg")]) == 2
    assert ".png or .svg" in capsys.readouterr().err


def test_report_is_one_self_contained_file(tmp_path, capsys):
    report = tmp_path / "report.html"
    assert main(["report", "demo", "-o", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<svg") == 2 and "<?xml" not in text
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(css|js|png))""", text)
    assert "<script" not in text
    assert "0x00000019 (0x20," in text
    assert re.search(r"<tr><td class=\"l\">SlRq</td><td class=\"l\">Nonp</td>"
                     r"<td class=\"\">\d+</td>", text)
    assert "<td class=\"l\">TOTAL</td>" in text
    assert "Tags that grew" in text and "sloppy.sys" in text


def test_report_of_a_clean_scenario_lists_what_unload_left(tmp_path):
    scenario = tmp_path / "leaky.py"
    scenario.write_text("class D:\n"
                        "    name = 'leaky.sys'\n"
                        "    def DriverEntry(self, k, path):\n"
                        "        self.p = k.ExAllocatePoolWithTag(0, 64, 'kaeL')\n"
                        "    def DriverUnload(self, k): pass\n"
                        "DRIVERS = [D()]\n"
                        "def workload(k, rng):\n"
                        "    yield 'one'\n")
    report = tmp_path / "r.html"
    assert main(["report", str(scenario), "-o", str(report)]) == 0
    text = report.read_text()
    assert "After unload: leaked" in text and "<td class=\"l\">Leak</td>" in text
