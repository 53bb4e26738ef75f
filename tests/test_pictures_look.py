"""What the pictures look like: rendered, then their elements checked (no empty axes,
integer ticks on counts, one colour per tag across pictures, hex offsets, callouts apart),
and the report's summary (culprit, seed, the command that reproduces it)."""

import re

import pytest

from ntpool.cli.main import main
from ntpool.constants import PAGE_SIZE
from ntpool.tools.pictures import ALLOCATED, FREE, PageStrip, Segment, UsageSampleLike, \
    callout_positions, pagemap_figure, usage_figure

SMALL = '''
import ntpool


class Two:
    name = "two.sys"

    def DriverEntry(self, k, path):
        self.kept = []
        return 0

    def grow(self, k):
        self.kept.append(k.ExAllocatePoolWithTag(0, 200, "TwAa"))

    def DriverUnload(self, k):
        for p in self.kept:
            k.ExFreePoolWithTag(p, "TwAa")


DRIVERS = [Two()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    for _ in range(3):
        DRIVERS[0].grow(k)
        yield "step"
'''


def drawn(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).draw()  # lay the figure out, as saving it would
    return figure


def test_usage_with_nothing_outstanding_says_so_instead_of_empty_axes():
    samples = [UsageSampleLike(0, "boot", {}), UsageSampleLike(1, "one", {"Abcd": (0, 0)})]
    axes = drawn(usage_figure(samples, "empty")).axes[0]
    assert not axes.axison
    assert any("No pool memory was outstanding" in t.get_text() for t in axes.texts)


def test_pagemap_with_no_pages_says_so():
    axes = drawn(pagemap_figure([], "nothing")).axes[0]
    assert not axes.axison and any("No pool page" in t.get_text() for t in axes.texts)


def test_checkpoint_ticks_are_whole_numbers():
    samples = [UsageSampleLike(i, f"s{i}", {"Abcd": (100 * i, 0)}) for i in range(3)]
    axes = drawn(usage_figure(samples)).axes[0]
    ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert axes.get_ylim()[0] == 0
    assert axes.get_ylabel().startswith("outstanding bytes")  # 200 bytes: not 0.2 KiB


def test_pagemap_offsets_are_hex():
    strip = PageStrip("NonPagedPool", 0xFFFFFA8000000000,
                      (Segment(0, 0x100, ALLOCATED, "Abcd"), Segment(0x100, PAGE_SIZE - 0x100, FREE)))
    axes = drawn(pagemap_figure([strip])).axes[0]
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert labels[0] == "0x000" and labels[-1] == "0x1000" and "0x200" in labels
    assert "hex" in axes.get_xlabel()


def test_callouts_on_a_busy_page_do_not_overlap():
    strips = [PageStrip("NonPagedPool", 0xFFFFFA8000000000 + n * PAGE_SIZE,
                        tuple(Segment(o, 0x100, ALLOCATED, "Abcd") for o in range(0, PAGE_SIZE, 0x100)))
              for n in range(4)]
    marks = {strip.va + offset: f"note {n}-{offset:#x}" for n, strip in enumerate(strips)
             for offset in (0x100, 0x300, 0x500)}
    figure = drawn(pagemap_figure(strips, marks=marks))
    renderer = figure.canvas.get_renderer()
    from matplotlib.text import Text

    # The notes' own boxes (an Annotation's extent would include its arrow).
    boxes = [Text.get_window_extent(t, renderer) for t in figure.axes[0].texts
             if t.get_text().startswith("note")]
    assert len(boxes) == len(marks)
    for index, first in enumerate(boxes):
        for second in boxes[index + 1:]:
            assert not first.overlaps(second), (first, second)
    figure_box = figure.bbox
    assert all(box.x1 <= figure_box.x1 + 1 and box.y0 >= -1 and box.y1 <= figure_box.y1 + 1
               for box in boxes), (boxes, figure_box)


def test_callout_positions_keep_their_gap_and_stay_inside():
    assert callout_positions([0, 0, 0], 10, 2) == [0, 2, 4]
    placed = callout_positions([9, 9.5, 10], 10, 2)
    assert placed == [6, 8, 10]
    assert callout_positions([1, 8], 10, 2) == [1, 8]
    crowded = callout_positions([0, 0, 0, 0], 3, 2)  # no room for the gap: spread evenly
    assert crowded == [0, 1, 2, 3]


@pytest.mark.parametrize("tracking", [False, True])
def test_report_culprit_for_a_leak(tmp_path, tracking):
    scenario = tmp_path / "two.py"
    scenario.write_text(SMALL.replace("for p in self.kept:", "for p in self.kept[1:]:")
                        + ('\nVERIFIER = {"two.sys": dict(pool_tracking=True)}\n' if tracking else ""))
    report = tmp_path / "r.html"
    assert main(["report", str(scenario), "--seed", "7", "-o", str(report)]) == 0
    text = report.read_text()
    culprit = re.search(r"Culprit</th><td class=\"l\"><code>(.*?)</code>", text).group(1)
    assert "aAwT" in culprit and "two.sys" in culprit
    assert "<code>7</code>" in text
    if tracking:  # 0xC4/0x62 at unload: DriverUnload is blamed
        assert "Two.DriverUnload" in culprit
    else:
        assert "Two.grow" in culprit and "leaked 1 allocation" in culprit


def test_report_of_a_dump_names_the_culprit_from_the_dump(tmp_path):
    scenario = tmp_path / "two.py"
    scenario.write_text(SMALL.replace("for p in self.kept:", "for p in self.kept[1:]:")
                        + '\nVERIFIER = {"two.sys": dict(pool_tracking=True)}\n')
    dump = tmp_path / "two.dmp"
    assert main(["run", str(scenario), "--dump", str(dump)]) == 3
    report = tmp_path / "r.html"
    assert main(["report", str(dump), "-o", str(report)]) == 0
    text = report.read_text()
    assert re.search(r"Culprit</th><td class=\"l\"><code>tag aAwT \(1 allocation\(s\), 200 bytes "
                     r"outstanding\), driver two.sys, Two.DriverUnload", text)
