"""Pictures and the report: the data they draw, and the files they hold."""

import re
import shlex
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
    assert main(["picture", "pagemap", "demo", "--pool", "paged", "--checkpoint", "34",
                 "-o", str(svg)]) == 0
    text = svg.read_text()
    assert "FltS" in text and "PP fffff8a0" in text and "NP fffffa80" not in text
    assert main(["picture", "pagemap", "-o", str(tmp_path / "x.jpg")]) == 2
    assert ".png or .svg" in capsys.readouterr().err


def test_report_is_one_self_contained_file(tmp_path, capsys):
    report = tmp_path / "report.html"
    assert main(["report", "demo", "--seed", "1", "-o", str(report)]) == 0
    text = report.read_text()
    # The summary: the culprit (the chunk that overran, and its driver), the seed, the commands.
    culprit = re.search(r"Culprit</th><td class=\"l\"><code>(.*?)</code>", text).group(1)
    assert culprit.startswith("tag SlNm, driver sloppy.sys, ")
    assert re.search(r"Seed</th><td class=\"l\"><code>1</code>", text)
    command = re.search(r"Reproduce</th><td class=\"l\"><code>(.*?)</code>", text).group(1)
    assert shlex.split(command) == ["ntpool", "report", "demo", "--seed", "1", "-o", str(report)]
    dump = re.search(r"Crash dump</th><td class=\"l\"><code>(.*?)</code>", text).group(1)
    assert dump == "ntpool run demo --seed 1 --dump crash.dmp"
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


def test_the_same_tag_is_the_same_colour_in_both_pictures(demo_run):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_hex

    from ntpool.tools.pictures import colours_by_weight, peak_bytes

    colours = colours_by_weight(peak_bytes(demo_run.samples))
    usage = usage_figure(demo_run.samples, colours=colours)
    pagemap = pagemap_figure(live_page_strips(demo_run.kernel), colours=colours)
    for figure in (usage, pagemap):
        FigureCanvasAgg(figure).draw()
    line_colours = {line.get_label(): to_hex(line.get_color()) for line in usage.axes[0].lines
                    if not line.get_label().startswith("_")}
    legend = pagemap.legends[0]
    patch_colours = {text.get_text(): to_hex(patch.get_facecolor())
                     for text, patch in zip(legend.get_texts(), legend.get_patches())}
    shared = set(line_colours) & set(patch_colours)
    assert {"SlRq", "NmRx", "SlNm"} <= shared
    for tag in shared:
        assert line_colours[tag] == patch_colours[tag], tag
    assert len(set(line_colours.values())) == len(line_colours)  # distinct within a picture


def test_page_map_circles_the_chunk_a_double_free_names():
    from types import SimpleNamespace

    import pytest

    import ntpool
    from ntpool.cli.tools import _marks

    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Dbl ")  # past the lookasides
    k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Keep")  # keeps the page in use
    k.ExFreePoolWithTag(p, "Dbl ")
    with pytest.raises(ntpool.BugCheck) as stop:
        k.ExFreePoolWithTag(p, "Dbl ")
    assert stop.value.parameters[0] == 0x07
    assert _marks(SimpleNamespace(bugcheck=stop.value)) == {p - 16: "double free"}


def test_numbered_checkpoints_make_one_phase_not_a_stripe_each():
    # The README's cache.py yields "step 100", "step 200", ...: each was a phase of its own,
    # so the usage picture shaded every other checkpoint.
    from ntpool.tools.pictures import phases_of

    labels = ["boot", "step 100", "step 200", "step 300", "traffic: 40 frames",
              "traffic: 80 frames", "end of workload", "after unload"]
    assert phases_of(labels) == [["boot", 0, 0], ["step", 1, 3], ["traffic", 4, 5],
                                 ["end of workload", 6, 6], ["after unload", 7, 7]]
    assert phases_of(["42"]) == [["42", 0, 0]]  # a label that is only a number keeps it
