"""``ntpool report``: one self-contained HTML file (inline SVG, no external assets)."""

import html

from ..tools import pictures
from ..tools.poolmon import PoolmonModel, grown_tags, owner_text
from ..tools.pictures import ReportSection, html_table, inline_svg

POOL_COLUMNS = ["Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Per Alloc", "Owner"]


def build_report(source, pooltags, marks_of) -> str:
    sections = []
    if source.kind == "scenario":
        source.run_to()
    end = source.snapshot()
    if source.bugcheck is not None:
        sections.append(_bugcheck_section(source))
    sections.append(_pool_table_section(end, pooltags, "Pool usage by tag"
                                        + (" at the bug check" if source.bugcheck else
                                           " at the end of the workload")))
    if source.kind == "scenario":
        sections.append(_growth_section(source, pooltags))
        sections.append(ReportSection("Usage over time", inline_svg(pictures.save_figure(
            pictures.usage_figure(source.samples(), f"{source.name}: pool usage by tag"),
            fmt="svg"))))
    strips = source.page_strips("both")
    sections.append(ReportSection("Pool page map", inline_svg(pictures.save_figure(
        pictures.pagemap_figure(strips, f"{source.name}: pool pages", marks=marks_of(source)),
        fmt="svg"))))
    if source.kind == "scenario":
        sections.append(_after_unload_section(source))
    subtitle = f"{source.kind} {source.name}: {source.status()}"
    return pictures.html_report(f"ntpool report: {source.name}", subtitle, sections)


def _bugcheck_section(source) -> ReportSection:
    error = source.bugcheck
    text = html.escape(str(error))
    return ReportSection("Bug check", f'<div class="bugcheck">{text}</div>')


def _pool_table_section(snapshot, pooltags, title: str) -> ReportSection:
    model = PoolmonModel(sort="b", pooltags=pooltags)
    model.update(snapshot)
    rows = [[r.tag, r.type, r.allocs, r.frees, r.diff, r.bytes, r.per_alloc,
             owner_text(pooltags, r.tag)] for r in model.rows()]
    totals = model.totals()
    rows.append(["TOTAL", "", totals["allocs"], totals["frees"], totals["diff"], totals["bytes"],
                 "", ""])
    return ReportSection(title, html_table(POOL_COLUMNS, rows))


def _growth_section(source, pooltags) -> ReportSection:
    snapshots = source.run.snapshots
    after_load = next((s for s in snapshots[1:]), snapshots[0])
    grown = [g for g in grown_tags(after_load, snapshots[-1]) if g.diff_grown > 0]
    if not grown:
        return ReportSection("Tags that grew", "<p>No tag grew during the workload.</p>")
    rows = [[g.tag, g.type, g.diff_before, g.diff_after, g.bytes_before, g.bytes_after,
             f"{g.bytes_grown:+}", owner_text(pooltags, g.tag)] for g in grown]
    intro = (f"<p>From {html.escape(after_load.label)} to {html.escape(snapshots[-1].label)}: "
             f"a tag whose outstanding allocations only climb is a leak suspect.</p>")
    return ReportSection("Tags that grew", intro + html_table(
        ["Tag", "Type", "Diff before", "Diff after", "Bytes before", "Bytes after", "Grown",
         "Owner"], rows))


def _after_unload_section(source) -> ReportSection:
    run = source.run
    if run.bugcheck is not None:
        return ReportSection("After unload", "<p>The machine bug-checked; the drivers were not "
                                             "unloaded.</p>")
    run.finish()
    if run.bugcheck is not None:
        return ReportSection("After unload", f'<div class="bugcheck">'
                                             f"{html.escape(str(run.bugcheck))}</div>")
    left = [u for u in source.snapshot().rows if u.diff > 0]
    if not left:
        return ReportSection("After unload", "<p>The drivers unloaded and left no pool "
                                             "allocated.</p>")
    rows = [[u.tag, u.type, u.diff, u.bytes] for u in left]
    return ReportSection("After unload: leaked", html_table(["Tag", "Type", "Diff", "Bytes"], rows))
