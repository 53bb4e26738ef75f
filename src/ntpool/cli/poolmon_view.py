"""poolmon's screen: the model from ``ntpool.tools.poolmon`` drawn with rich, and its keys.

The table fits the terminal: the Tag column is never cut; when the columns do not fit,
they are dropped, Owner first (then Per Alloc, the deltas, Frees, Allocs, Type), and Owner
is shortened with an ellipsis only when a useful part of it fits. Above the table, poolmon's
two totals lines (memory, commit, pool usage); with ``e`` a totals row per pool type under
it. More rows than the screen holds scroll (arrows, PgUp/PgDn, Home/End); ``?`` or ``h``
shows the keys.

Keys come through prompt_toolkit's input layer (raw mode, escape sequences decoded into
named keys: "up", "pageup", "escape", ...); the screen is a rich Live that redraws at each
key, each refresh and each resize. Without a terminal (or with --once / --iterations) one
table is printed per refresh, which is what scripts and tests read.
"""

import os
import re
import sys
import time
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group
from rich.table import Table  # the help page
from rich.text import Text

from ..tools.poolmon import NONPAGED, PAGED, PoolmonModel, check_tag_pattern

# (id, header, right-aligned)
COLUMNS = (("tag", "Tag", False), ("type", "Type", False), ("allocs", "Allocs", True),
           ("allocs_delta", "(delta)", True), ("frees", "Frees", True),
           ("frees_delta", "(delta)", True), ("diff", "Diff", True), ("bytes", "Bytes", True),
           ("bytes_delta", "(delta)", True), ("per_alloc", "Per Alloc", True),
           ("owner", "Owner", False))
# Dropped in this order when the terminal is too narrow; Tag, Diff and Bytes always stay.
DROP_ORDER = ("owner", "per_alloc", "frees_delta", "allocs_delta", "bytes_delta", "frees",
              "allocs", "type")
GAP = 2  # spaces between columns
OWNER_MIN = 12  # an Owner narrower than this is dropped rather than cut
HELP = "? help  t a f d b m sort  p pool  /i /x filter  e totals  arrows scroll  q quit"
KEYS_HELP = [
    ("t a f d b m", "sort by Tag (A to Z), Allocs, Frees, Diff, Bytes, Per Alloc (largest "
                    "first); the same key again reverses"),
    ("r", "reverse the order"),
    ("p", "cycle the pool type shown: both, nonpaged, paged"),
    ("/i patterns Enter", "show only tags matching (* and ? wildcards; space-separated)"),
    ("/x patterns Enter", "hide tags matching; Esc cancels a filter being typed"),
    ("c", "clear both filters"),
    ("e", "show or hide the totals rows (per pool type) under the table"),
    ("Up Down PgUp PgDn Home End", "scroll when there are more tags than rows"),
    ("? h", "this help (any key returns)"),
    ("q Ctrl-C", "quit"),
]


@dataclass
class ViewState:
    """What the live view adds to the model: scrolling, the totals rows, the help page."""

    top: int = 0  # first row shown
    show_totals: bool = False
    show_help: bool = False


def _delta(value: int) -> str:
    return f"({value})" if value else ""


def _cells(row) -> dict[str, str]:
    return {"tag": row.tag, "type": row.type, "allocs": str(row.allocs),
            "allocs_delta": _delta(row.allocs_delta), "frees": str(row.frees),
            "frees_delta": _delta(row.frees_delta), "diff": str(row.diff),
            "bytes": str(row.bytes), "bytes_delta": _delta(row.bytes_delta),
            "per_alloc": str(row.per_alloc), "owner": row.owner}


def fit_columns(cell_rows: list[dict[str, str]], width: int | None,
                owners: bool = True) -> tuple[list[str], int | None]:
    """The columns that fit ``width`` (in display order) and the Owner column's width."""
    wanted = [cid for cid, _, _ in COLUMNS if owners or cid != "owner"]
    widths = {cid: max([len(header)] + [len(cells.get(cid, "")) for cells in cell_rows])
              for cid, header, _ in COLUMNS}
    if width is None:
        return wanted, None

    def total(columns):
        return sum(widths[c] for c in columns) + GAP * (len(columns) - 1)

    for victim in DROP_ORDER:
        if total(wanted) <= width:
            break
        if victim == "owner" and "owner" in wanted:
            room = width - total([c for c in wanted if c != "owner"]) - GAP
            if room >= OWNER_MIN:
                return wanted, room  # Owner shortened, everything else whole
        if victim in wanted:
            wanted.remove(victim)
    return wanted, None


def poolmon_table(model: PoolmonModel, title: str = "", limit: int | None = None,
                  owners: bool = True, width: int | None = None, top: int = 0,
                  height: int | None = None, totals: bool = False,
                  usages: list | None = None) -> "TextTable":
    """The rows (``top`` onwards, at most ``height``/``limit``) in the columns that fit.

    Only the rows shown are sorted out, looked up and formatted (``PoolmonModel.rows``), and
    the table is plain lines (``TextTable``): a screen of a dump with 44,000 tags costs what a
    screen costs, and a table of every tag written to a file a few microseconds a row."""
    usages = model.usages() if usages is None else usages
    count = min(len(usages), limit) if limit else len(usages)
    shown = model.rows(top, max(0, min(count - top, height if height is not None else count)),
                       usages=usages)
    cell_rows = [_cells(row) for row in shown]
    total_rows = _total_rows(usages) if totals else []
    columns, owner_width = fit_columns(cell_rows + total_rows, width, owners)
    headers = {cid: (header, right) for cid, header, right in COLUMNS}
    widths = {cid: max([len(headers[cid][0])] + [len(cells.get(cid, "")) for cells in cell_rows + total_rows])
              for cid in columns}
    if owner_width is not None:
        widths["owner"] = min(widths["owner"], owner_width)

    def line(cells: dict) -> str:
        parts = []
        for cid in columns:
            text, right = cells.get(cid, ""), headers[cid][1]
            if len(text) > widths[cid]:  # only Owner is ever cut: with an ellipsis
                text = text[:widths[cid] - 1] + "…"
            parts.append(text.rjust(widths[cid]) if right else text.ljust(widths[cid]))
        return (" " * GAP).join(parts)

    header = line({cid: headers[cid][0] for cid in columns})
    lines = [(header.rstrip(), "bold"), ("─" * len(header), None)]
    for row, cells in zip(shown, cell_rows):
        changed = row.allocs_delta or row.frees_delta or row.bytes_delta
        lines.append((line(cells).rstrip(), "bold" if changed else None))
    for cells in total_rows:
        lines.append((line(cells), "reverse"))
    return TextTable(lines, title or "", len(header))


class TextTable:
    """A table as lines of text, each with its style (a rich renderable): what poolmon's
    columns need (fit_columns has cut them to the width) at a few microseconds a line, where
    rich's Table measures and pads every cell (about 650 us a row of 11 cells)."""

    def __init__(self, lines: list, title: str, width: int):
        self.lines = lines  # (text, style or None)
        self.title = title
        self.width = max([width, len(title)])

    def __rich_console__(self, console, options):
        from rich.segment import Segment
        from rich.style import Style

        styles = {}
        new_line = Segment.line()
        if self.title:
            yield Segment(self.title, Style.parse("italic"))
            yield new_line
        for text, style in self.lines:
            if style is not None and style not in styles:
                styles[style] = Style.parse(style)
            yield Segment(text, styles.get(style))
            yield new_line

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(self.width, self.width)

    def text(self) -> str:
        """The lines as plain text."""
        return "\n".join(([self.title] if self.title else []) + [text for text, _ in self.lines])


def _total_rows(usages: list) -> list[dict[str, str]]:
    """A totals row per pool type, over the rows the filters let through (one pass)."""
    sums = {NONPAGED: [0, 0, 0, 0], PAGED: [0, 0, 0, 0]}
    seen = set()
    for usage in usages:
        total = sums[usage.type]
        total[0] += usage.allocs
        total[1] += usage.frees
        total[2] += usage.allocs - usage.frees
        total[3] += usage.bytes
        seen.add(usage.type)
    rows = []
    for kind, label in ((NONPAGED, "Nonp"), (PAGED, "Paged")):
        if kind in seen:
            allocs, frees, diff, size = sums[kind]
            rows.append({"tag": "Total", "type": label, "allocs": str(allocs),
                         "frees": str(frees), "diff": str(diff), "bytes": str(size)})
    return rows


def totals_lines(machine: dict | None) -> list[str]:
    """poolmon's two top lines: memory, and commit with each pool's use (in K)."""
    if not machine:
        return []
    k = {name: value // 1024 for name, value in machine.items()}
    faults = f"  PageFlts:{machine['page_faults']:>6}" if "page_faults" in machine else ""
    return [f" Memory:{k['memory']:>9}K Avail:{k['available']:>9}K{faults}",
            f" Commit:{k['commit']:>9}K Limit:{k['memory']:>9}K Peak:{k['peak']:>9}K  "
            f"Pool N:{k['nonpaged']:>7}K P:{k['paged']:>7}K"]


def poolmon_screen(model: PoolmonModel, status: str, prompt: str | None = "", limit: int | None = None,
                   owners: bool = True, width: int | None = None, height: int | None = None,
                   state: ViewState | None = None, machine: dict | None = None):
    """The whole screen: totals lines, status, the table (scrolled to ``state.top``), keys."""
    state = state or ViewState()
    if state.show_help:
        return help_screen()
    usages = model.usages()
    count = min(len(usages), limit) if limit else len(usages)
    heading_lines = totals_lines(machine) + [
        f" {status}",
        f" {model.describe_order()}  include: {' '.join(model.include) or '*'}  "
        f"exclude: {' '.join(model.exclude) or '-'}"]
    room = None
    if height is not None:
        # heading, the table's header and rule, the totals rows, the footer line
        room = max(1, height - len(heading_lines) - 2 - (2 if state.show_totals else 0) - 1)
        state.top = max(0, min(state.top, count - room))
    else:
        state.top = 0
    table = poolmon_table(model, limit=limit, owners=owners, width=width, top=state.top,
                          height=room, totals=state.show_totals, usages=usages)
    footer = prompt or HELP
    if room is not None and count > room:
        footer = f"rows {state.top + 1}-{min(count, state.top + room)} of {count}  " + footer
    # One line each, cut to a narrow terminal (wrapped, they pushed the table off the screen
    # the rows were counted for)
    parts = [Text("\n".join(heading_lines), no_wrap=True, overflow="ellipsis"), table]
    if prompt is not None:  # None: a table printed to be read later, with no keys to press
        parts.append(Text(footer if width is None else footer[:width], style="dim"))
    return Group(*parts)


def help_screen():
    table = Table(title="ntpool poolmon keys", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False)
    table.add_column("key", no_wrap=True)
    table.add_column("does")
    for key, text in KEYS_HELP:
        table.add_row(key, text)
    return Group(table, Text("any key returns to the table", style="dim"))


# --- keys ---------------------------------------------------------------------------------

class KeyReader:
    """Keys from a terminal through prompt_toolkit's input layer; filters typed after /i, /x."""

    def __init__(self, stream=sys.stdin):
        self.stream = stream
        self.pending = ""  # "", "/", "/i" or "/x": a filter being typed
        self.buffer = ""
        self.error = ""  # why the filter typed cannot be applied (shown until the next key)
        self._input = None
        self._queue: list[str] = []

    def __enter__(self):
        from prompt_toolkit.input import create_input

        self._input = create_input(self.stream)
        self._raw = self._input.raw_mode()
        self._raw.__enter__()
        return self

    def __exit__(self, *exc):
        self._raw.__exit__(*exc)
        return False

    def poll(self, timeout: float) -> str | None:
        """The next key's name ("a", "up", "escape", "enter", ...), or None after ``timeout``."""
        import select

        if not self._queue:
            ready, _, _ = select.select([self._input.fileno()], [], [], timeout)
            if not ready:
                return None
            self._queue += [key_name(press.key, press.data) for press in self._input.read_keys()]
            # An Esc alone stays in the parser until it knows no sequence follows.
            self._queue += [key_name(press.key, press.data) for press in self._input.flush_keys()]
        return self._queue.pop(0) if self._queue else None

    def prompt(self) -> str:
        if self.pending == "/":
            return "/ then i (include) or x (exclude)"
        if self.pending:
            return f"{'include' if self.pending == '/i' else 'exclude'} tags (wildcards * ?): " \
                   f"{self.buffer}_  " + (self.error or "(Enter to apply, Esc to cancel)")
        return ""


def key_name(key, data: str) -> str:
    """prompt_toolkit's key as apply_key reads it: the character, or a name."""
    value = getattr(key, "value", key)
    names = {"c-m": "enter", "c-j": "enter", "c-h": "backspace", "escape": "escape",
             "c-c": "c-c", "up": "up", "down": "down", "pageup": "pageup",
             "pagedown": "pagedown", "home": "home", "end": "end"}
    if value in names:
        return names[value]
    return data if len(data) == 1 else value


_CHARACTER_NAMES = {"\r": "enter", "\n": "enter", "\x1b": "escape", "\x7f": "backspace",
                    "\b": "backspace", "\x03": "c-c"}


def apply_key(model: PoolmonModel, reader: KeyReader, key: str,
              state: ViewState | None = None, page: int = 20) -> bool:
    """Feed one key (a character or a key name); returns False when the user quits."""
    key = _CHARACTER_NAMES.get(key, key)
    state = state if state is not None else ViewState()
    if state.show_help:
        state.show_help = False  # any key returns to the table
        return key not in ("q", "c-c")
    if reader.pending == "/":
        reader.pending = "/" + key if key in ("i", "x") else ""
        return True
    if reader.pending:
        reader.error = ""
        if key == "enter":
            patterns = reader.buffer.split()
            try:
                for pattern in patterns:
                    check_tag_pattern(pattern)
            except ValueError as error:  # kept open, saying why, for the user to mend
                reader.error = str(error)
                return True
            (model.include if reader.pending == "/i" else model.exclude)[:] = patterns
            reader.pending, reader.buffer = "", ""
            state.top = 0
        elif key == "escape":
            reader.pending, reader.buffer = "", ""
        elif key == "backspace":
            reader.buffer = reader.buffer[:-1]
        elif len(key) == 1 and key.isprintable():
            reader.buffer += key
        return True
    scroll = {"up": -1, "down": 1, "pageup": -page, "pagedown": page,
              "home": -(1 << 30), "end": 1 << 30}
    if key in ("q", "Q", "c-c"):
        return False
    if key in scroll:
        state.top = max(0, state.top + scroll[key])
    elif key in ("?", "h", "H"):
        state.show_help = True
    elif key == "e":
        state.show_totals = not state.show_totals
    elif key == "/":
        reader.pending = "/"
    elif key == "c":
        model.include.clear()
        model.exclude.clear()
    elif len(key) == 1:
        model.press(key.lower())
    return True


def interactive(model: PoolmonModel, refresh, interval: float, console: Console,
                machine=None) -> None:
    """The live view: ``refresh()`` returns a status line (it advances the source);
    ``machine()`` returns the totals for the top lines."""
    from rich.live import Live

    state = ViewState()
    status = refresh()

    def screen(prompt: str = ""):
        width, height = console.size
        return poolmon_screen(model, status, prompt, width=width, height=height, state=state,
                              machine=machine() if machine else None)

    with KeyReader() as reader, Live(screen(), console=console, screen=True,
                                     auto_refresh=False) as live:
        next_refresh = time.monotonic() + interval
        size = console.size
        while True:
            key = reader.poll(max(0.0, min(0.25, next_refresh - time.monotonic())))
            if key is None:
                if time.monotonic() >= next_refresh:
                    status = refresh()
                    next_refresh = time.monotonic() + interval
                elif console.size == size:
                    continue  # nothing happened: no redraw
            elif not apply_key(model, reader, key, state, page=max(1, console.size[1] - 8)):
                return
            size = console.size  # a resize redraws at the new size
            live.update(screen(reader.prompt()), refresh=True)


class PipeConsole(Console):
    """rich's Console, but a closed output pipe (``| head``) raises BrokenPipeError, which
    ``ntpool``'s main turns into a quiet exit (141), where rich would exit with status 1,
    a status ``ntpool run`` gives to leaks. Nothing more is written once the pipe is gone."""

    fits_content = False  # see FittingConsole

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError("the output pipe was closed")

    def _render_buffer(self, buffer) -> str:
        # Written to a file or a pipe, no line ends in spaces: rich pads a centred table
        # title, a table's last cell and a Text to the width, which a terminal hides and a
        # file keeps (diffs, `grep ' $'`, editors that strip them show every line changed).
        text = super()._render_buffer(buffer)
        return text if self.is_terminal else _TRAILING_SPACES.sub("", text)


_TRAILING_SPACES = re.compile(r" +(?=\n)")


class FittingConsole(PipeConsole):
    """A console writing to a file or a pipe: each table as wide as its content, each line of
    text whole (no wrapping), as users who redirect output expect; rich alone would make
    everything 80 columns wide there, folding and cutting wide tables. Something that fills
    whatever width it is given (a panel, a rule) gets the console's width."""

    fits_content = True
    widest = 4096  # a table wider still is folded at this width

    def print(self, *objects, **options):
        from rich.measure import Measurement

        if all(isinstance(renderable, str) for renderable in objects):
            options.setdefault("soft_wrap", True)  # a line of text is never wrapped
        natural = 0
        for renderable in objects:
            if isinstance(renderable, str):
                continue
            measured = Measurement.get(self, self.options.update_width(self.widest), renderable)
            if measured.maximum < self.widest:  # one that fills any width is left as it is
                natural = max(natural, measured.maximum)
        if natural <= self.width:
            return super().print(*objects, **options)
        saved, self._width = self._width, natural
        try:
            return super().print(*objects, **options)
        finally:
            self._width = saved



def wide_console() -> Console:
    """A console for tables: the terminal's width (or COLUMNS, when set); writing to a file
    or a pipe, as wide as each table (``FittingConsole``; 132 columns for what fills any)."""
    console = PipeConsole()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = FittingConsole(width=132)
    return console


def table_width(console: Console) -> int | None:
    """The width a poolmon table is fitted to (columns dropped, Owner shortened): the
    terminal's; None (every column whole) for a console that fits its content."""
    return None if getattr(console, "fits_content", False) else console.width
