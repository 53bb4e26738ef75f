"""Pictures of the pool: a page map, per-tag usage over time, and a self-contained HTML report.

The data (which chunk lies where, which tag holds how much when) is gathered here without
any plotting library; matplotlib is imported only inside the render functions, so the rest
of ntpool never pays for it. SVG text is kept as text, so tags can be searched for in it.
"""

import html
import io
import re
import zlib
from dataclasses import dataclass
from typing import Iterable

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..pool.descriptor import PAGE_FREE, PAGE_SMALL
from ..pool.layout import walk_page
from ..tags import display

ALLOCATED, FREE, LOOKASIDE, BIG, RESERVED = "Allocated", "Free", "Lookaside", "Big", "Reserved"
FREE_COLOUR = "#ffffff"
LOOKASIDE_COLOUR = "#d9d9d9"
RESERVED_COLOUR = "#7f7f7f"
# Distinct colours for the tags that hold most; tags past these get a colour from their name.
MARK_COLOUR = "#d62728"  # kept for marks (the bug check's chunk), so no tag is drawn in it
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
           "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]


@dataclass(frozen=True)
class Segment:
    offset: int  # bytes into the page
    length: int
    state: str  # ALLOCATED, FREE, LOOKASIDE, BIG or RESERVED
    tag: str = ""  # as tools show it; "" for free space


@dataclass(frozen=True)
class PageStrip:
    pool: str  # "NonPagedPool" or "PagedPool"
    va: int
    segments: tuple[Segment, ...]
    note: str = ""  # e.g. "SlRq: 3 pages" on the first page of a big allocation


# --- gathering ---------------------------------------------------------------------------

def live_page_strips(kernel, pool: str = "both") -> list[PageStrip]:
    """Every pool page in use on a live machine, in address order."""
    strips = []
    for descriptor in _pools(kernel, pool):
        big = big_page_strips(descriptor.name, descriptor.big_pages.items())
        cached = descriptor.lookaside_chunks()
        page_blocks = getattr(descriptor, "page_blocks", None)  # the segment heap's pages
        for index, kind in enumerate(descriptor.page_kind):
            if kind == PAGE_FREE:
                continue
            va = descriptor.base + (index << PAGE_SHIFT)
            blocks = page_blocks(va) if page_blocks is not None and kind == PAGE_SMALL else None
            if va in big:
                strips.append(big[va])
            elif blocks is not None:
                strips.append(PageStrip(descriptor.name, va, tuple(
                    Segment(offset, length, state, display(tag) if state != FREE else "")
                    for offset, length, state, tag in blocks)))
            elif kind == PAGE_SMALL:
                strips.append(small_page_strip(descriptor.name, kernel.read(va, PAGE_SIZE), va, cached))
            else:  # reserved by another component (special pool, ...)
                strips.append(PageStrip(descriptor.name, va, (Segment(0, PAGE_SIZE, RESERVED),)))
    return strips


def _pools(kernel, pool: str):
    if pool not in ("both", "nonpaged", "paged"):
        raise ValueError(f"pool must be both, nonpaged or paged, got {pool!r}")
    chosen = []
    if pool in ("both", "nonpaged"):
        chosen.append(kernel.nonpaged_pool)
        if getattr(kernel, "nonpaged_pool_nx", None) is not None:  # Windows 10/11: a heap of its own
            chosen.append(kernel.nonpaged_pool_nx)
    if pool in ("both", "paged"):
        chosen.append(kernel.paged_pool)
    return chosen


def big_page_strips(pool: str, allocations) -> dict[int, PageStrip]:
    """A strip per page of each big allocation ``(va, (tag value, pages))``, by page address."""
    strips = {}
    for va, (tag_value, pages) in allocations:
        tag = display(tag_value)
        segments = (Segment(0, PAGE_SIZE, BIG, tag),)
        strips[va] = PageStrip(pool, va, segments, f"{tag}: {pages} page{'s' if pages > 1 else ''}")
        for index in range(1, pages):
            strips[va + (index << PAGE_SHIFT)] = PageStrip(pool, va + (index << PAGE_SHIFT), segments)
    return strips


def small_page_strip(pool: str, page: bytes, va: int, lookaside=frozenset()) -> PageStrip:
    """A page of small chunks from its bytes (live memory or a dump alike); ``lookaside``:
    headers of chunks cached on lookaside lists (in memory they look allocated)."""
    segments = []
    end = 0
    for chunk in walk_page(page, va):
        state = LOOKASIDE if chunk.address in lookaside else chunk.state
        segments.append(Segment(chunk.address - va, chunk.size, state,
                                display(chunk.tag) if state != FREE else ""))
        end = chunk.address - va + chunk.size
    if end < PAGE_SIZE:  # the header chain broke: show the rest as unreadable
        segments.append(Segment(end, PAGE_SIZE - end, RESERVED, "?"))
    return PageStrip(pool, va, tuple(segments))


# --- colours -----------------------------------------------------------------------------

def tag_colours(strips: Iterable[PageStrip]) -> dict[str, str]:
    """A colour per tag, the distinct ones to the tags covering most bytes."""
    covered: dict[str, int] = {}
    for strip in strips:
        for segment in strip.segments:
            if segment.state in (ALLOCATED, BIG):
                covered[segment.tag] = covered.get(segment.tag, 0) + segment.length
    ranked = sorted(covered, key=lambda tag: (-covered[tag], tag))
    colours = {}
    for rank, tag in enumerate(ranked):
        colours[tag] = PALETTE[rank] if rank < len(PALETTE) else _colour_from_name(tag)
    return colours


def colours_by_weight(weights: dict[str, int]) -> dict[str, str]:
    """A colour per tag from one ranking (most bytes first), to share between pictures:
    the same tag is the same colour in the page map and the usage picture."""
    ranked = sorted(weights, key=lambda tag: (-weights[tag], tag))
    return {tag: PALETTE[rank] if rank < len(PALETTE) else _colour_from_name(tag)
            for rank, tag in enumerate(ranked)}


def peak_bytes(samples) -> dict[str, int]:
    """Each tag's largest outstanding bytes over a run's samples (the colours' ranking)."""
    peaks: dict[str, int] = {}
    for sample in samples:
        for tag, (nonpaged, paged) in sample.bytes_by_tag.items():
            peaks[tag] = max(peaks.get(tag, 0), nonpaged + paged)
    return peaks


def _colour_from_name(tag: str) -> str:
    value = zlib.crc32(tag.encode("latin-1"))
    r, g, b = 64 + (value & 0x7F), 64 + ((value >> 8) & 0x7F), 64 + ((value >> 16) & 0x7F)
    return f"#{r:02x}{g:02x}{b:02x}"


def segment_colour(segment: Segment, colours: dict[str, str]) -> str:
    if segment.state in (ALLOCATED, BIG):
        return colours.get(segment.tag, RESERVED_COLOUR)
    if segment.state == LOOKASIDE:
        return LOOKASIDE_COLOUR
    if segment.state == FREE:
        return FREE_COLOUR
    return RESERVED_COLOUR


# --- rendering (matplotlib, imported here only) -----------------------------------------------

def _figure(width: float, height: float):
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # keep text as text: tags stay searchable
    matplotlib.rcParams["svg.hashsalt"] = "ntpool"  # the same picture gives the same file
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(figure, path: str | None = None, fmt: str | None = None) -> bytes:
    """Write the figure to ``path`` (format from its suffix) or return its bytes."""
    fmt = fmt or (str(path).rsplit(".", 1)[-1].lower() if path else "svg")
    if fmt not in ("png", "svg"):
        raise ValueError(f"picture format must be .png or .svg, not .{fmt}")
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {}
    figure.savefig(buffer, format=fmt, metadata=metadata)
    data = buffer.getvalue()
    if path:
        with open(path, "wb") as file:
            file.write(data)
    return data


def pagemap_figure(strips: list[PageStrip], title: str = "", max_pages: int = 96,
                   marks: dict[int, str] | None = None, colours: dict[str, str] | None = None):
    """Each pool page a horizontal strip, each chunk a bar coloured by its tag.

    ``marks`` maps chunk addresses to a note (e.g. the bug check's chunk): the chunk is
    outlined and the note set in the right margin, notes stacked so that none overlaps
    another. ``colours`` (tag -> colour, e.g. ``colours_by_weight``) keeps a tag's colour the
    same as in other pictures; by default the tags covering most bytes here come first.
    """
    from matplotlib.patches import Patch

    shown = strips[:max_pages]
    covered = tag_colours(shown)  # tags drawn here, most bytes first
    colours = {tag: (colours or {}).get(tag) or colour for tag, colour in covered.items()}
    found = _marked_segments(shown, marks or {})
    # Tall enough for the strips, and for every note stacked in the margin (about 0.2 inch each).
    height = max(3.0, 0.2 * len(shown) + 2.2, CALLOUT_INCHES * len(found) + 2.2)
    figure = _figure(13, height)
    axes = figure.add_subplot()
    more = f" (first {len(shown)} of {len(strips)} pages)" if len(strips) > len(shown) else ""
    axes.set_title((title or "Pool pages") + more, loc="left")
    if not shown:
        _nothing_to_draw(axes, "No pool page is in use.")
        return figure
    for row, strip in enumerate(shown):
        for segment in strip.segments:
            axes.broken_barh([(segment.offset, segment.length)], (row - 0.4, 0.8),
                             facecolors=segment_colour(segment, colours), edgecolors="#404040",
                             linewidth=0.4, hatch="////" if segment.state == BIG else None)
            if segment.state == ALLOCATED and segment.length >= 320:
                axes.text(segment.offset + segment.length / 2, row, segment.tag,
                          ha="center", va="center", fontsize=7, family="monospace")
        if strip.note:
            axes.text(PAGE_SIZE / 2, row, strip.note, ha="center", va="center", fontsize=7,
                      family="monospace", bbox={"facecolor": "white", "alpha": 0.8,
                                                "linewidth": 0})
    axes.set_xlim(0, PAGE_SIZE)
    axes.set_ylim(len(shown) - 0.5, -0.5)
    axes.set_xticks(range(0, PAGE_SIZE + 1, 0x200))
    axes.set_xticklabels([f"{x:#05x}" for x in range(0, PAGE_SIZE + 1, 0x200)],
                         family="monospace")
    axes.set_xlabel("offset in page (hex)")
    step = max(1, len(shown) // 40)
    axes.set_yticks(range(0, len(shown), step))
    axes.set_yticklabels([_page_label(shown[i]) for i in range(0, len(shown), step)],
                         family="monospace", fontsize=7)
    legend = [Patch(facecolor=colour, edgecolor="#404040", label=tag)
              for tag, colour in list(colours.items())[:16]]
    legend += [Patch(facecolor=FREE_COLOUR, edgecolor="#404040", label="free"),
               Patch(facecolor=LOOKASIDE_COLOUR, edgecolor="#404040",
                     label="lookaside (freed, cached)"),
               Patch(facecolor="white", edgecolor="#404040", hatch="////",
                     label="big allocation (whole pages)")]
    if any(segment.state == RESERVED for strip in shown for segment in strip.segments):
        # dark grey had no key: a page the pool keeps no chunks on (a segment's metadata,
        # another component's page) or the rest of a page after a header chain broke
        legend.append(Patch(facecolor=RESERVED_COLOUR, edgecolor="#404040",
                            label="no chunks (metadata) or past a broken header chain"))
    # The legend goes under the map: the right margin belongs to the callouts.
    figure.legend(handles=legend, loc="outside lower left", ncol=10, frameon=False,
                  prop={"family": "monospace", "size": 8})
    _draw_marks(axes, shown, found, height)
    return figure


def _nothing_to_draw(axes, message: str) -> None:
    """An empty picture says why instead of showing empty axes."""
    axes.set_axis_off()
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center",
              fontsize=12, color="#555555")


CALLOUT_INCHES = 0.21  # one note's height in the margin, with room between notes


def callout_positions(rows: list[float], span: float, gap: float, top: float = 0.0) -> list[float]:
    """Where to put notes for marks at ``rows`` (``top`` at the top, ``span`` at the bottom):
    each as near its row as possible, at least ``gap`` apart, all within [top, span]."""
    placed: list[float] = []
    for row in rows:  # sorted top to bottom
        placed.append(max(row, placed[-1] + gap) if placed else max(top, row))
    overflow = placed[-1] - span if placed else 0
    if overflow > 0:  # pushed past the bottom: shift up, keeping the gaps
        placed = [p - overflow for p in placed]
        for index in range(len(placed) - 2, -1, -1):
            placed[index] = min(placed[index], placed[index + 1] - gap)
    if placed and placed[0] < top:  # more notes than room: spread them evenly
        step = (span - top) / max(1, len(placed) - 1)
        placed = [top + index * step for index in range(len(placed))]
    return placed


def _marked_segments(strips: list[PageStrip], marks: dict[int, str]) -> list:
    found = []
    for row, strip in enumerate(strips):
        for segment in strip.segments:
            note = marks.get(strip.va + segment.offset)
            if note is not None:
                found.append((row, segment, note))
    return found


def _draw_marks(axes, strips: list[PageStrip], found: list, height: float) -> None:
    from matplotlib.patches import Rectangle

    if not found:
        return
    rows = len(strips)
    # A note's height in rows: CALLOUT_INCHES over the inches one row takes.
    gap = CALLOUT_INCHES * rows / max(0.5, height - 2.2)
    positions = callout_positions([row for row, _, _ in found], rows - 0.5, gap, top=-0.5)
    for (row, segment, note), y in zip(found, positions):
        axes.add_patch(Rectangle((segment.offset, row - 0.5), segment.length, 1.0,
                                 fill=False, edgecolor=MARK_COLOUR, linewidth=2.5, zorder=5))
        axes.annotate(note, (segment.offset + segment.length, row), xytext=(PAGE_SIZE * 1.02, y),
                      textcoords="data", color=MARK_COLOUR, fontsize=8, fontweight="bold",
                      zorder=6, va="center", ha="left", annotation_clip=False,
                      bbox={"facecolor": "white", "edgecolor": MARK_COLOUR, "linewidth": 0.8},
                      arrowprops={"arrowstyle": "->", "color": MARK_COLOUR, "linewidth": 1.2})


def _page_label(strip: PageStrip) -> str:
    return f"{'NP' if strip.pool == 'NonPagedPool' else 'PP'} {strip.va:x}"


class UsageSampleLike:
    """The fields ``usage_figure`` reads from a sample (scenario.UsageSample has them)."""

    def __init__(self, index: int, label: str, bytes_by_tag: dict[str, tuple[int, int]]):
        self.index, self.label, self.bytes_by_tag = index, label, bytes_by_tag


def usage_figure(samples, title: str = "", top: int = 10, colours: dict[str, str] | None = None):
    """Outstanding bytes per tag at each checkpoint: a leak is the line that only climbs.

    ``colours`` (tag -> colour) keeps each tag's colour the page map's; by default the
    ranking is this picture's own (largest peak first).
    """
    from matplotlib.ticker import MaxNLocator

    totals: dict[str, list[int]] = {}
    for position, sample in enumerate(samples):
        for tag, (nonpaged, paged) in sample.bytes_by_tag.items():
            totals.setdefault(tag, [0] * len(samples))[position] = nonpaged + paged
    ranked = [tag for tag in sorted(totals, key=lambda tag: (-max(totals[tag]), tag))
              if max(totals[tag])][:top]
    colours = colours or colours_by_weight(peak_bytes(samples))
    figure = _figure(11, 5)
    axes = figure.add_subplot()
    axes.set_title(title or "Pool usage by tag over time", loc="left")
    if not ranked:
        _nothing_to_draw(axes, "No pool memory was outstanding at any checkpoint.")
        return figure
    xs = list(range(len(samples)))
    # KiB once there is a KiB or more to show; a few small chunks read better in bytes.
    scale, unit = (1024, "KiB") if max(max(totals[tag]) for tag in ranked) >= 10 * 1024 else \
        (1, "bytes")
    for tag in ranked:
        axes.plot(xs, [value / scale for value in totals[tag]], label=tag,
                  color=colours.get(tag) or _colour_from_name(tag),
                  linewidth=1.6, marker="o" if len(xs) <= 30 else None, markersize=3)
    _shade_phases(axes, samples)
    for position, sample in enumerate(samples):
        if sample.label == "bug check":
            axes.axvline(position, color=MARK_COLOUR, linestyle="--", linewidth=1)
            axes.text(position, 0.5, "bug check ", color=MARK_COLOUR, va="center",
                      ha="right", rotation=90, fontsize=8,
                      transform=axes.get_xaxis_transform())
    axes.set_xlim(-0.5, max(len(samples) - 0.5, 0.5))
    axes.set_ylim(bottom=0)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # checkpoints are counted
    axes.set_xlabel("checkpoint")
    axes.set_ylabel(f"outstanding {unit} (nonpaged + paged)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False,
                prop={"family": "monospace", "size": 8})
    return figure


def phase_of(label: str) -> str:
    """A checkpoint's phase: the text before a colon ("traffic: 40 frames" is "traffic"), or,
    with no colon, the label without a number that ends it ("step 100" is "step"), so a
    workload's numbered checkpoints make one phase, not one stripe each."""
    if ":" in label:
        return label.split(":")[0]
    return re.sub(r"[\s\d#.,]+$", "", label) or label


def phases_of(labels) -> list[list]:
    """[phase, first position, last position] for each run of checkpoints of one phase."""
    phases: list[list] = []
    for position, label in enumerate(labels):
        name = phase_of(label)
        if phases and phases[-1][0] == name:
            phases[-1][2] = position
        else:
            phases.append([name, position, position])
    return phases


def _shade_phases(axes, samples) -> None:
    """Label runs of checkpoints that share a phase (``phase_of``), shading every other one."""
    import matplotlib.transforms as transforms

    blend = transforms.blended_transform_factory(axes.transData, axes.transAxes)
    phases = phases_of(sample.label for sample in samples)
    for number, (name, first, last) in enumerate(phases):
        if number % 2:
            axes.axvspan(first - 0.5, last + 0.5, color="#000000", alpha=0.04, linewidth=0)
        if last > first and name not in ("bug check",):
            axes.text((first + last) / 2, 0.98, name, transform=blend, ha="center", va="top",
                      fontsize=8, color="#555555")


# --- the HTML report ---------------------------------------------------------------------------

def inline_svg(svg: bytes) -> str:
    """An SVG document as an element to put inside HTML (no XML prologue or DOCTYPE)."""
    text = svg.decode("utf-8")
    return text[text.index("<svg"):]


@dataclass
class ReportSection:
    title: str
    body_html: str


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 0.85em; }
th, td { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.bugcheck { background: #fde8e8; border: 1px solid #d62728; padding: 0.8em; white-space: pre-wrap;
            font-family: ui-monospace, monospace; }
table.summary th, table.summary td { text-align: left; border: none; padding: 3px 12px 3px 0; }
table.summary th { background: none; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
svg { max-width: 100%; height: auto; }
"""


def html_table(headers: list[str], rows: list[list], left_columns: int = 2) -> str:
    head = "".join(f'<th class="{"l" if i < left_columns or h == "Owner" else ""}">'
                   f"{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"l" if i < left_columns or headers[i] == "Owner" else ""}">'
                        f"{html.escape(str(c))}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(title: str, subtitle: str, sections: list[ReportSection]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>{section.body_html}</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
