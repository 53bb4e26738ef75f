"""poolmon's drawing costs what it shows: a screen of a table of thousands of tags sorts
them by selection and looks up, builds and formats only the rows on the screen; the whole
table (written to a file) is plain lines, not a rich Table's measured and padded cells."""

import io
import random
import re

import pytest
from rich.console import Console

from ntpool.cli.poolmon_view import TextTable, ViewState, poolmon_screen, poolmon_table
from ntpool.debugger.pooltag import PoolTagDatabase, PoolTagFile
from ntpool.tools.poolmon import NONPAGED, PAGED, PoolmonModel, Snapshot, TagUsage

TAGS = 6000


class CountingDatabase(PoolTagDatabase):
    """pooltag.txt lookups, counted: one per row built."""

    def __init__(self):
        super().__init__([PoolTagFile.parse("Ab* - ab.sys - the Ab tags\n", "test")])
        self.lookups = 0

    def lookup(self, tag):
        self.lookups += 1
        return super().lookup(tag)


def many_tags(count=TAGS, seed=7):
    rng = random.Random(seed)
    rows = [TagUsage(f"{chr(65 + n // 2600 % 26)}{chr(97 + n // 100 % 26)}{n % 100:02d}",
                     NONPAGED if n % 3 else PAGED, rng.randrange(1, 500), rng.randrange(0, 300),
                     rng.randrange(0, 1 << 20)) for n in range(count)]
    rng.shuffle(rows)
    return Snapshot(rows)


def render(screen, width=132, height=60):
    console = Console(width=width, height=height, file=io.StringIO(), record=True)
    console.print(screen)
    return console.export_text().splitlines()


def test_a_screen_builds_and_looks_up_only_the_rows_it_shows(monkeypatch):
    database = CountingDatabase()
    model = PoolmonModel(sort="b", pooltags=database)
    model.update(many_tags())
    model.update(many_tags())  # deltas against the previous refresh
    built = []
    make_row = PoolmonModel._row
    monkeypatch.setattr(PoolmonModel, "_row", lambda self, usage: built.append(usage) or make_row(self, usage))
    lines = render(poolmon_screen(model, "s", width=132, height=40, state=ViewState(show_totals=True)))
    shown = [line for line in lines if re.match(r"^[A-Z][a-z]\d\d  ", line)]
    assert 20 <= len(shown) <= 40
    assert len(built) == len(shown)  # not one per tag (6,000)
    assert database.lookups == len(shown)
    # the largest first, as the full sort puts them
    assert [u.tag for u in built] == [r.tag for r in model.rows()[:len(shown)]]


@pytest.mark.parametrize("sort", ["t", "a", "f", "d", "b", "m"])
@pytest.mark.parametrize("reverse", [False, True])
def test_a_screens_rows_are_the_full_sorts_rows(sort, reverse):
    model = PoolmonModel(sort=sort, reverse=reverse)
    model.update(many_tags(seed=3))
    everything = model.rows()
    assert len(everything) == TAGS
    for start, count in ((0, 30), (17, 25), (TAGS - 10, 30), (100, 0)):
        window = model.rows(start, count)
        assert [r.usage for r in window] == [r.usage for r in everything[start:start + count]]


def test_filters_and_totals_over_a_big_table_match_the_rows():
    model = PoolmonModel(sort="a", include=["A*", "B?0*"], exclude=["*9"], pool_filter="nonpaged")
    model.update(many_tags())
    rows = model.rows()
    assert rows and all(r.type == NONPAGED and r.tag[0] in "AB" and not r.tag.endswith("9") for r in rows)
    totals = model.totals()
    assert totals["bytes"] == sum(r.bytes for r in rows) and totals["diff"] == sum(r.diff for r in rows)
    table = poolmon_table(model, totals=True, width=None)
    total_line = next(text for text, style in table.lines if style == "reverse")
    assert total_line.split()[:3] == ["Total", "Nonp", str(totals["allocs"])]


def test_the_whole_table_is_plain_lines_in_the_columns_rich_drew():
    model = PoolmonModel(pooltags=PoolTagDatabase([PoolTagFile.parse("Aa00 - a.sys - A\n", "t")]))
    model.update(many_tags(count=300))
    table = poolmon_table(model, title="Pool usage", width=None)
    assert isinstance(table, TextTable)
    lines = render(table, width=200, height=400)
    assert lines[0] == "Pool usage"
    assert lines[1].split() == ["Tag", "Type", "Allocs", "(delta)", "Frees", "(delta)", "Diff",
                                "Bytes", "(delta)", "Per", "Alloc", "Owner"]
    assert set(lines[2]) == {"─"} and len(lines[2]) >= len(lines[1])
    rows = lines[3:]
    assert len(rows) == 300 and rows[0].startswith("Aa00  ") and rows[0].endswith("a.sys")
    # numbers right-aligned under their headings: every row's Bytes ends where "Bytes" ends
    end = lines[1].index("Bytes") + len("Bytes")
    assert all(row[end - 1].isdigit() and row[end] == " " for row in rows)
