"""poolmon's screen: the model from ``ntpool.tools.poolmon`` drawn with rich, and its keys.

Interactive only on a terminal; otherwise (or with --once / --iterations) it prints one
table per refresh, which is what scripts and tests read.
"""

import os
import select
import sys
import time
from contextlib import contextmanager

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..tools.poolmon import PoolmonModel

COLUMNS = ("Tag", "Type", "Allocs", "(delta)", "Frees", "(delta)", "Diff", "Bytes", "(delta)",
           "Per Alloc", "Owner")
HELP = ("keys: t a f d b m sort (again: reverse)  p paged/nonpaged/both  "
        "/i include  /x exclude  c clear filters  q quit")


def _delta(value: int) -> str:
    return f"({value})" if value else ""


def poolmon_table(model: PoolmonModel, title: str = "", limit: int | None = None,
                  owners: bool = True) -> Table:
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, header_style="bold")
    for column in COLUMNS if owners else COLUMNS[:-1]:
        table.add_column(column, justify="left" if column in ("Tag", "Type", "Owner") else "right",
                         no_wrap=column != "Owner", overflow="ellipsis")
    rows = model.rows()
    for row in rows[:limit] if limit else rows:
        changed = row.allocs_delta or row.frees_delta or row.bytes_delta
        cells = [row.tag, row.type, str(row.allocs), _delta(row.allocs_delta), str(row.frees),
                 _delta(row.frees_delta), str(row.diff), str(row.bytes), _delta(row.bytes_delta),
                 str(row.per_alloc)]
        table.add_row(*cells, *([row.owner] if owners else []),
                      style="bold" if changed else None)
    return table


def poolmon_screen(model: PoolmonModel, status: str, prompt: str = "", limit: int | None = None,
                   owners: bool = True):
    totals = model.totals()
    heading = Text.assemble(("ntpool poolmon", "bold"), f"  {status}\n",
                            f"{model.describe_order()}",
                            f"  include: {' '.join(model.include) or '*'}",
                            f"  exclude: {' '.join(model.exclude) or '-'}\n",
                            f"total: {totals['diff']:,} outstanding allocations, "
                            f"{totals['bytes']:,} bytes")
    parts = [heading, poolmon_table(model, limit=limit, owners=owners),
             Text(prompt or HELP, style="dim")]
    return Group(*parts)


class KeyReader:
    """Single keys from a terminal in cbreak mode; filters typed after /i or /x."""

    def __init__(self, stream=sys.stdin):
        self.stream = stream
        self.pending = ""  # "", "/", "/i" or "/x": a filter being typed
        self.buffer = ""

    def poll(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.stream], [], [], timeout)
        if not ready:
            return None
        return os.read(self.stream.fileno(), 1).decode("latin-1")

    def prompt(self) -> str:
        if self.pending == "/":
            return "/ then i (include) or x (exclude)"
        if self.pending:
            return f"{'include' if self.pending == '/i' else 'exclude'} tags (wildcards * ?): " \
                   f"{self.buffer}_  (Enter to apply, Esc to cancel)"
        return ""


def apply_key(model: PoolmonModel, reader: KeyReader, key: str) -> bool:
    """Feed one key; returns False when the user quits."""
    if reader.pending == "/":
        reader.pending = "/" + key if key in "ix" else ""
        return True
    if reader.pending:
        if key in ("\r", "\n"):
            patterns = reader.buffer.split()
            (model.include if reader.pending == "/i" else model.exclude)[:] = patterns
            reader.pending, reader.buffer = "", ""
        elif key == "\x1b":
            reader.pending, reader.buffer = "", ""
        elif key in ("\x7f", "\b"):
            reader.buffer = reader.buffer[:-1]
        elif key.isprintable():
            reader.buffer += key
        return True
    if key in ("q", "Q", "\x03"):
        return False
    if key == "/":
        reader.pending = "/"
    elif key == "c":
        model.include.clear()
        model.exclude.clear()
    else:
        model.press(key.lower())
    return True


@contextmanager
def cbreak(stream):
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def interactive(model: PoolmonModel, refresh, interval: float, console: Console) -> None:
    """The live view: ``refresh()`` returns a status line (it advances the source)."""
    from rich.live import Live

    reader = KeyReader()
    status = refresh()
    owners = console.width >= 110
    with cbreak(sys.stdin), Live(poolmon_screen(model, status, owners=owners), console=console,
                                 screen=True, auto_refresh=False) as live:
        next_refresh = time.monotonic() + interval
        while True:
            key = reader.poll(max(0.0, next_refresh - time.monotonic()))
            if key is None:
                status = refresh()
                next_refresh = time.monotonic() + interval
            elif not apply_key(model, reader, key):
                return
            live.update(poolmon_screen(model, status, reader.prompt(), owners=owners),
                        refresh=True)


def wide_console() -> Console:
    """A console for tables: the terminal's width, or 132 columns when writing to a file."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=132)
    return console
