"""``ntpool report``: one self-contained HTML file (inline SVG, no external assets)."""

import html
import shlex

from ..debugger import bugchecks
from ..pool.layout import HEADER_SIZE
from ..tags import display
from ..tools import pictures
from ..tools.poolmon import PoolmonModel, grown_tags, owner_text
from ..tools.pictures import ReportSection, html_table, inline_svg

POOL_COLUMNS = ["Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Per Alloc", "Owner"]


def build_report(source, pooltags, marks_of, command: list[str] | None = None) -> str:
    """The report; ``command`` is the command line that reproduces it (shown with the seed)."""
    if source.kind == "scenario":
        source.run_to()
    end = source.snapshot()
    strips = source.page_strips("both")  # the pool as the workload left it
    marks = marks_of(source)
    colours = source_colours(source)
    after_unload = _after_unload_section(source) if source.kind == "scenario" else None
    sections = [_summary_section(source, pooltags, strips, marks, command)]
    if source.bugcheck is not None:
        sections.append(_bugcheck_section(source))
    when = (" at the bug check" if source.bugcheck else " at the end of the workload"
            if source.kind == "scenario" else " when the dump was written")  # on demand
    sections.append(_pool_table_section(end, pooltags, "Pool usage by tag" + when))
    if source.kind == "scenario":
        sections.append(_growth_section(source, pooltags))
        sections.append(ReportSection("Usage over time", inline_svg(pictures.save_figure(
            pictures.usage_figure(source.samples(), f"{source.name}: pool usage by tag",
                                  colours=colours), fmt="svg"))))
    sections.append(ReportSection("Pool page map", inline_svg(pictures.save_figure(
        pictures.pagemap_figure(strips, f"{source.name}: pool pages", marks=marks,
                                colours=colours), fmt="svg"))))
    if after_unload is not None:
        sections.append(after_unload)
    subtitle = f"{source.kind} {source.status()}"  # the status opens with the name
    return pictures.html_report(f"ntpool report: {source.name}", subtitle, sections)


def source_colours(source) -> dict[str, str]:
    """One colour per tag for every picture of this source (ranked by peak bytes)."""
    if source.kind == "scenario":
        return pictures.colours_by_weight(pictures.peak_bytes(source.samples()))
    weights: dict[str, int] = {}
    for usage in source.snapshot().rows:
        weights[usage.tag] = weights.get(usage.tag, 0) + usage.bytes
    return pictures.colours_by_weight(weights)


def culprit(source, pooltags, strips, marks) -> tuple[str, str] | None:
    """(tag, driver) at fault, as far as the run or the dump tells; None when all was well."""
    error = source.bugcheck
    if error is not None:
        driver, call_site = _bugcheck_driver(source)
        tag = _bugcheck_tag(source, strips, marks)
        who = driver or "(no driver's code was running)"
        if call_site:
            who += f", {call_site}"
        return tag or "(no pool chunk named)", who
    if source.kind != "scenario" or not source.run.finished:
        return None
    left = [u for u in source.snapshot().rows if u.diff > 0]
    if left:
        worst = max(left, key=lambda u: (u.bytes, u.tag))
        driver = _driver_holding(source.kernel, worst.tag) or owner_text(pooltags, worst.tag)
        return (f"{worst.tag} (leaked {worst.diff} allocation(s), {worst.bytes} bytes after "
                f"unload)", driver or "(unknown: no call site or pooltag.txt entry names it)")
    return None


def _driver_holding(kernel, tag: str) -> str:
    """The driver (and line) that allocated a chunk of ``tag`` still allocated, if any."""
    for strip in pictures.live_page_strips(kernel):
        for segment in strip.segments:
            if segment.tag != tag or segment.state not in (pictures.ALLOCATED, pictures.BIG):
                continue
            address = strip.va + segment.offset
            if segment.state == pictures.ALLOCATED:
                address += HEADER_SIZE
            site = kernel.allocation_site(address)
            owner = kernel.allocation_driver(address)
            if owner is not None:
                return f"{owner.name}, {site.function} ({site.filename.rsplit('/', 1)[-1]}:" \
                       f"{site.lineno})"
    return ""


def _bugcheck_driver(source) -> tuple[str, str]:
    if source.kind == "scenario":
        error = source.bugcheck
        return getattr(error, "driver_name", "") or "", getattr(error, "call_site", "") or ""
    context = source.reader.bugcheck_context()
    return (context["driver"], context["call_site"]) if context else ("", "")


def _bugcheck_tag(source, strips, marks) -> str:
    """The tag of the chunk the bug check names (the first mark, else its pool argument)."""
    error = source.bugcheck
    code, parameters = error.code, error.parameters
    addresses = list(marks)
    index = bugchecks.pool_argument(code, parameters)
    if index:
        addresses.append(parameters[index - 1])
    for address in addresses:
        for strip in strips:
            if strip.va <= address < strip.va + pictures.PAGE_SIZE:
                for segment in strip.segments:
                    if strip.va + segment.offset <= address < strip.va + segment.offset + \
                            segment.length and segment.tag and segment.tag != "?":
                        return segment.tag
    if code == 0xC4 and parameters[0] == 0x62:
        driver, _ = _bugcheck_driver(source)
        rows = _outstanding(source, driver) if driver else []
        tags = sorted({display(row.tag) for row in rows})
        if tags:
            total = sum(row.size for row in rows)
            return f"{', '.join(tags)} ({len(rows)} allocation(s), {total} bytes outstanding)"
    for tag_index in bugchecks.tag_arguments(code, parameters):
        return display(parameters[tag_index - 1] & 0xFFFFFFFF)
    return ""


def _outstanding(source, driver: str) -> list:
    """What the driver left allocated (Driver Verifier's tracking), live or from the dump."""
    if source.kind == "scenario":
        return source.kernel.verifier.outstanding(driver)
    from ..debugger.allocations import outstanding_by_driver
    from ..debugger.poolscan import BigPageIndex

    reader = source.reader
    return outstanding_by_driver(reader, BigPageIndex(reader.big_pages())).get(driver.lower(), [])


def _summary_section(source, pooltags, strips, marks, command) -> ReportSection:
    found = culprit(source, pooltags, strips, marks)
    rows = []
    if found:
        tag, driver = found
        rows.append(("Culprit", f"tag {tag}, driver {driver}"))
    else:
        # A dump written on demand cannot say what a driver left behind: its table can only
        # say what was allocated when it was written.
        rows.append(("Culprit", "none: no bug check, and nothing was left allocated"
                     if source.kind == "scenario" else "none named: the dump records no bug "
                     "check (written on demand); the pool table below is what was allocated "
                     "when it was written"))
    if source.kind == "scenario":
        rows.append(("Seed", str(source.run.seed)))
    if command:
        rows.append(("Reproduce", shlex.join(command)))
        if source.kind == "scenario" and source.bugcheck is not None:
            rows.append(("Crash dump", shlex.join(_dump_command(command))))
    else:
        rows.append(("Source", source.name))
    body = "".join(f'<tr><th class="l">{html.escape(k)}</th><td class="l"><code>'
                   f"{html.escape(v)}</code></td></tr>" for k, v in rows)
    return ReportSection("Summary", f'<table class="summary">{body}</table>')


def _dump_command(command: list[str]) -> list[str]:
    """The same run as ``ntpool run ... --dump crash.dmp``: a dump to open in ntpool kd."""
    rest, skip = [], False
    for word in command[2:]:
        if skip:
            skip = False
            continue
        if word in ("-o", "--output"):
            skip = True
            continue
        rest.append(word)
    return ["ntpool", "run", *rest, "--dump", "crash.dmp"]


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
