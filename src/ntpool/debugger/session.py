"""A kd-like session on a crash dump: commands in, WinDbg-style text out.

``KdSession(reader, pooltags).execute("!analyze -v; !poolused 2")`` returns the text the
commands print. Commands never raise on what the dump holds: an address the dump lacks or
a corrupt structure is reported in the output, as kd reports it.
"""

import sys
import struct
from operator import itemgetter
from typing import Iterator

from ..constants import PAGE_SIZE
from ..dump.reader import DumpFormatError, DumpReader, MemoryReadError, sites_by_block
from ..errors import bugcheck_name
from ..pool.layout import BLOCK_SHIFT, BLOCKS_PER_PAGE, HEADER_SIZE, POOL_HEADER, POOL_QUOTA, chunk_state
from ..tags import display, is_hex_tag
from . import bugchecks, display as show, forked
from .allocations import in_special_pool, outstanding_by_driver, special_chunk, special_chunks, \
    SPECIAL_POOL_SPAN
from ..verifier.special_pool import SLOT_SIZE, SPECIAL_POOL_BASE
from .pooltag import PoolTagDatabase, check_tag_pattern, tag_matches
from .segment_heap import SegmentHeapReader, block_containing
from .poolscan import BigPageIndex, CallSites, PoolFinder, chunk_containing, lanes_array, lanes_list, read_page_report, \
    lane_ones, lanes_of_ones, shows_one_tag, tag_bytes_regex, tag_display_matches, ulong_lanes

STAR_LINE = "*" * 79


def _error_text(error: Exception) -> str:
    if isinstance(error, MemoryReadError):
        return f"Memory read error: {error}"
    if isinstance(error, DumpFormatError):
        return f"Cannot analyse: {error}"
    return str(error)


def file_name(path: str) -> str:
    """A source file's name without its folders (a Python driver's path, or the one a PDB
    recorded, '/' or '\\' separated): how CALL_SITE and "Probably caused by" show it."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]

class CommandError(ValueError):
    """A command line kd would refuse (bad syntax, bad number)."""


def qualified(module: str, function: str) -> str:
    """module!function, as the debugger names a code address; a compiled driver's site text
    already starts with its module ("sloppy.sys+0x1054 HandleRequest+0x54"), so it stands
    alone rather than read "sloppy.sys!sloppy.sys+0x1054 ..."."""
    if function.startswith(module + "+"):
        return function
    return f"{module}!{function}"


def parse_number(text: str, what: str) -> int:
    """kd's default radix is 16: ``fffffa80`00000010``, ``0x10`` and ``10`` are all hex."""
    cleaned = text.replace("`", "")
    if cleaned.lower().startswith("0n"):
        base, digits = 10, cleaned[2:]
    else:
        base, digits = 16, cleaned[2:] if cleaned.lower().startswith("0x") else cleaned
    try:
        value = int(digits, base)
    except ValueError:
        raise CommandError(f"Couldn't resolve error at '{text}' ({what} must be a number)") from None
    if not 0 <= value < 1 << 64:
        raise CommandError(f"{what} {text} does not fit in 64 bits")
    return value


# !poolused's count columns, as WinDbg lays them out: NonPaged then Paged.
POOLUSED_WIDTHS = (10, 13, 11, 13)  # Allocs (outstanding), Used
POOLUSED_VERBOSE_WIDTHS = (10, 10, 10, 13) * 2  # Allocs, Frees, Diff, Used


def _columns(first: str, first_width: int, values, widths) -> str:
    """``first`` left-aligned in ``first_width`` characters, then each value right-aligned in
    its width; a ``first`` longer than its column ("TOTAL") takes room from the next one
    while that one's value leaves it, so the columns stay where they are."""
    line = first.ljust(first_width)
    for value, width in zip(values, widths):
        text = str(value)
        line += text.rjust(max(len(text), first_width + width - len(line)))
        first_width += width
    return line


def _checked_tag(pattern: str) -> str:
    """A tag argument that can name some tag (as poolmon's filters: ``check_tag_pattern``),
    else a one-line CommandError naming it: kd would otherwise list nothing without a word.
    A TagValue (0x and 1 to 8 hex digits, WinDbg's) is a tag's ULONG, whatever its length."""
    if is_hex_tag(pattern):
        return pattern
    try:
        return check_tag_pattern(pattern)
    except ValueError as error:
        raise CommandError(str(error)) from None


def pool_region_name(base_type: int) -> str:
    return "Paged pool" if base_type else "Nonpaged pool"


def _length_argument(words: list[str]) -> int | None:
    """kd's ``L Count`` / ``LCount`` / ``L?Count`` after an address (None: the default)."""
    text = "".join(words).strip()
    if not text:
        return None
    if text[0] not in "lL":
        raise CommandError(f"Syntax error at '{text}': expected L Count")
    digits = text[1:].lstrip("?")
    if not digits:
        raise CommandError(f"Syntax error at '{text}': expected L Count")
    count = parse_number(digits, "Count")
    if count == 0:
        raise CommandError("Count must be at least 1")
    return count


def evaluate_expression(text: str) -> int:
    """kd's ``?``: numbers in kd's radix joined by + - * / (left to right, * and / first)."""
    import re

    tokens = re.findall(r"[+\-*/]|[^+\-*/\s]+", text)
    if not tokens:
        raise CommandError("Syntax error: an expression is needed")
    values: list = []
    for token in tokens:
        values.append(token if token in "+-*/" else parse_number(token, "Expression"))
    # unary minus at the front
    if values[0] == "-":
        values = [0] + values
    stack = [values[0]]
    index = 1
    while index < len(values):
        operator, operand = values[index], values[index + 1] if index + 1 < len(values) else None
        if operand is None or isinstance(operand, str) or not isinstance(operator, str):
            raise CommandError(f"Syntax error in '{text}'")
        if operator == "*":
            stack[-1] *= operand
        elif operator == "/":
            if operand == 0:
                raise CommandError("Divide by zero error")
            stack[-1] //= operand
        else:
            stack += [operator, operand]
        index += 2
    result = stack[0]
    for position in range(1, len(stack), 2):
        result = result + stack[position + 1] if stack[position] == "+" else result - stack[position + 1]
    return result & 0xFFFFFFFFFFFFFFFF


class KdSession:
    def __init__(self, reader: DumpReader, pooltags: PoolTagDatabase | None = None):
        self.reader = reader
        self.pooltags = pooltags or PoolTagDatabase.default()
        self._big_pages: BigPageIndex | None = None
        self._finders: dict = {}
        self._outstanding: dict | None = None
        self._segment_heap: SegmentHeapReader | None = None
        self.commands = {
            "!analyze": self.analyze,
            "!pool": self.pool,
            "!poolval": self.poolval,
            "!poolused": self.poolused,
            "!poolfind": self.poolfind,
            "!verifier": self.verifier,
            "!pte": self.pte,
            "!vm": self.vm,
            "!lookaside": self.lookaside,
            **{command: None for command in show.DISPLAY_FORMATS},
            "dt": self.display_type,
            "lm": self.lm,
            "k": self.stack, "kb": self.stack, "kv": self.stack,
            "r": self.registers,
            ".bugcheck": self.bugcheck,
            "?": self.evaluate,
            ".help": self.help,
        }

    # --- running commands ---------------------------------------------------------------

    def execute(self, line: str) -> str:
        """Run ``;``-separated commands; returns what they print."""
        outputs = []
        for command in line.split(";"):
            command = command.strip()
            if command.lower() in ("q", "qq", "qd", "quit", "exit"):
                break  # kd scripts end with q
            if command:
                outputs.append(self.run_one(command))
        return "\n".join(outputs)

    def run_one(self, command: str) -> str:
        """One command's output (no trailing newline)."""
        try:
            return "".join(self._pieces(command))
        except (CommandError, MemoryReadError, DumpFormatError) as error:
            return _error_text(error)

    def stream(self, command: str) -> Iterator[str]:
        """One command's output in pieces, as it is made (``!poolfind *`` on a big dump prints
        hundreds of megabytes: the pieces go out as they come, so memory stays bounded). The
        pieces join to ``run_one``'s text; an error after some output is its last piece, on a
        line of its own."""
        started = False
        try:
            for piece in self._pieces(command):
                started = True
                yield piece
        except (CommandError, MemoryReadError, DumpFormatError) as error:
            yield ("\n" if started else "") + _error_text(error)

    def _pieces(self, command: str) -> Iterator[str]:
        # Words split at white space, as kd hands an extension its arguments: a quote or a
        # backslash is a character like any other (a tag may hold one: !poolused 0 '/M/).
        words = command.split()
        name, args = words[0].lower(), words[1:]
        if name not in self.commands and name.startswith("?"):
            name, args = "?", [name[1:]] + args  # "?1+2" as kd reads it
        handler = self.commands.get(name)
        if name in show.DISPLAY_FORMATS:
            handler = lambda arguments: self._display(name, arguments)  # noqa: E731
        if handler is None:
            yield f"No export {name.lstrip('!')} found (try .help)"
            return
        output = handler(args)
        if isinstance(output, str):
            yield output
        else:
            yield from output

    HELP = [
        ("!analyze [-v]", "explain the bug check: parameters, pool chunk, tag owner, culprit"),
        ("!pool Address [Flags]", "walk the pool page holding Address (1: contents, 2: only "
                                  "that chunk); special pool too"),
        ("!poolval Address", "validate the headers of the page holding Address"),
        ("!poolused [Flags [Tag]]", "usage by tag (1: verbose, 2: sort by nonpaged, 4: by paged)"),
        ("!poolfind Tag [PoolType]", "find chunks by tag (0: nonpaged, 1: paged), big pages "
                                     "and special pool first"),
        ("!verifier 3 [Driver]", "outstanding pool allocations per driver: tag, size, call site"),
        ("!vm", "physical memory and each pool's pages in use, maximum and charge"),
        ("!pte Address", "the PXE, PPE, PDE and PTE that map Address"),
        ("!lookaside [Address] [-all]", "a lookaside list's depth, counters and hit rates; "
                                        "without Address the drivers' lists (Ex(N)PagedLookasideListHead) "
                                        "and the system's (ExSystemLookasideListHead)"),
        ("db/dw/dd/dq Address [L Count]", "display memory as bytes, words, dwords, qwords"),
        ("dps Address [L Count]", "display pointers with what they point at"),
        ("dt Type [Address]", "display a structure: " + ", ".join(show.structure_names())),
        ("lm", "loaded modules (drivers) with their address ranges"),
        ("k / r", "the bug check context: the driver and line running when it stopped"),
        (".bugcheck", "the bug check code and its four arguments"),
        ("? Expression", "evaluate a number (hex by default, 0n for decimal, + - * /)"),
        (".help (or ?)", "this list"),
        ("q", "quit"),
    ]

    def help(self, args) -> str:
        return "\n".join(f"{command:<30} {text}" for command, text in self.HELP)

    # --- shared helpers -------------------------------------------------------------------

    def big_pages(self) -> BigPageIndex:
        if self._big_pages is None:
            self._big_pages = BigPageIndex(self.reader.big_pages())
        return self._big_pages

    def segment_heap(self) -> SegmentHeapReader | None:
        """The dump's segment heap (None for a Windows 7 dump)."""
        if self._segment_heap is None and self.reader.segment_heap:
            self._segment_heap = SegmentHeapReader(self.reader)
        return self._segment_heap

    def owner(self, tag_text: str) -> str:
        return self.pooltags.describe(tag_text)

    def _chunk_line(self, chunk, marked: bool) -> str:
        mark = "*" if marked else " "
        state = f"({chunk.state})"
        return (f"{mark}{chunk.address:016x} size: {chunk.size:4x} previous size: "
                f"{chunk.previous_size << 4:4x}  {state:<12}{mark}{display(chunk.tag)}")

    # --- !pool / !poolval ---------------------------------------------------------------

    def pool(self, args) -> str:
        if not args:
            raise CommandError("Usage: !pool Address [Flags]")
        address = parse_number(args[0], "Address")
        flags = parse_number(args[1], "Flags") if len(args) > 1 else 0
        return "\n".join(self.pool_lines(address, flags))

    def pool_lines(self, address: int, flags: int = 0) -> list[str]:
        if in_special_pool(address):
            return self.special_pool_lines(address, flags)
        pool = self.reader.pool_of(address)
        if pool is None:
            return [f"{address:016x} is not a valid pool address (it is in no pool of this dump)"]
        big = self.big_pages().containing(address)
        if big is not None:
            tag = display(big.Key)
            return [f"Pool page {address:016x} region is {pool_region_name(pool.base_type)}",
                    f"*{big.Va:016x} : large page allocation, tag is {tag}, size is "
                    f"{big.NumberOfBytes:#x} bytes",
                    f"\t\tPooltag {tag} : {self.owner(tag)}"]
        if self.segment_heap() is not None:
            return self.heap_pool_lines(address, pool, flags)
        try:
            report = read_page_report(self.reader, address, pool.base_type)
        except MemoryReadError:
            return self._unreadable_page(address, pool)
        lines = [f"Pool page {address:016x} region is {pool_region_name(pool.base_type)}"]
        for chunk in report.chunks:
            marked = chunk.address <= address < chunk.address + chunk.size
            if flags & 2 and not marked:
                continue
            lines.append(self._chunk_line(chunk, marked))
            if marked:
                lines += self._marked_details(chunk, flags)
        for problem in report.problems:
            lines.append(f"*** Bad pool header: {problem}")
        if chunk_containing(report, address) is None:
            lines.append(f"{address:016x} is not inside any chunk the header chain reaches")
        return lines

    def _unreadable_page(self, address: int, pool) -> list[str]:
        """!pool and !poolval of a pool page the dump lacks: paged out (its PTE names the page
        file's offset; a dump has no page file), or not written."""
        slot = show.page_file_offset(self.reader, address)
        why = (f"its page is paged out, at page-file offset {slot:#x}, and a dump holds no "
               f"page file: see !pte {address:x}" if slot is not None else
               "its page is not in the dump")
        return [f"Pool page {address:016x} region is {pool_region_name(pool.base_type)}",
                f"{address:016x} is not a valid pool address ({why})"]

    def _marked_details(self, chunk, flags: int, untagged: bool = True) -> list[str]:
        """What !pool says under the chunk holding the address: its tag's owner (a block with
        no tag has none to name, unless ``untagged``), who allocated it, and with flag 1 its
        contents."""
        lines = []
        if chunk.tag or untagged:
            tag = display(chunk.tag)
            lines.append(f"\t\tPooltag {tag} : {self.owner(tag)}")
        if chunk.state == "Allocated":
            lines += [f"\t\tAllocated by {text.split(':  ', 1)[1]}"
                      for text in self._allocated_by(chunk)]
        if flags & 1:
            lines += self._contents(chunk)
        return lines

    def heap_pool_lines(self, address: int, pool, flags: int = 0) -> list[str]:
        """!pool on the segment heap: the subsegment's blocks, VS headers decoded with the
        heap key found in the dump."""
        lines = [f"Pool page {address:016x} region is {pool.name} (segment heap)"]
        found = self.segment_heap().around(address)
        if found is None:
            return lines + [f"{address:016x} is not in an LFH or VS subsegment of this heap "
                            f"(a free page, or a segment header)"]
        blocks, problems = found
        marked_block = block_containing(blocks, address)
        page = address & ~0xFFF
        for block in blocks:
            marked = block is marked_block
            if not marked and (flags & 2 or not page <= block.address < page + 0x1000):
                continue
            lines.append(self._heap_block_line(block, marked))
            if marked:
                lines += self._marked_details(block, flags, untagged=False)
        lines += [f"*** Bad segment heap entry: {problem}" for problem in problems]
        if marked_block is None:
            lines.append(f"{address:016x} is not inside any block the subsegment's headers reach")
        return lines

    def _heap_block_line(self, block, marked: bool) -> str:
        mark = "*" if marked else " "
        state = f"({block.state})"
        return (f"{mark}{block.address:016x} size: {block.size:4x} previous size: "
                f"{block.previous_size << 4:4x}  {state:<12}{mark}{display(block.tag) if block.tag else '    '}"
                f"  {block.backend}")

    def special_pool_lines(self, address: int, flags: int = 0) -> list[str]:
        """!pool on Driver Verifier's special pool: the allocation, its mode, who made it."""
        lines = [f"Pool page {address:016x} region is Special pool"]
        chunk, relation = self.special_near(address)
        if chunk is None:
            return lines + [f"{address:016x} is on a special pool page that is not mapped: the "
                            f"page of a freed allocation, or the guard page of one (any access "
                            f"faults: 0xCC/0xD5 after a free, 0xCD/0xD6 past an end)"]
        tag = display(chunk.tag)
        kind = "Paged" if chunk.pool_name == "PagedPool" else "NonPaged"
        lines += [f"*{chunk.address:016x} size: {chunk.size:4x} data: {chunk.address:016x} "
                  f"({kind}) *{tag}",
                  f"\t\tPooltag {tag} : {self.owner(tag)}"]
        site = self._site_text(chunk.site)
        if site:
            lines.append(f"\t\tAllocated by {site}")
        mode = ("underrun-checking: the allocation starts the page, the guard page is before it"
                if chunk.underrun else
                "overrun-checking: the allocation ends the page, the guard page is after it")
        lines.append(f"\t\tSpecial pool, {mode}")
        if relation:
            lines.append(f"{address:016x} {relation}")
        if flags & 1:
            body = self.reader.read(chunk.address, min(chunk.size, 64))
            for offset in range(0, len(body), 16):
                row = body[offset:offset + 16]
                text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
                lines.append(f"    {chunk.address + offset:016x}  {row.hex(' ')}  {text}")
        return lines

    def special_near(self, address: int):
        """(special pool allocation, how ``address`` relates to it) for an address on its page
        or on its guard page; (None, "") when neither is mapped."""
        chunk = special_chunk(self.reader, address)
        if chunk is not None:
            if address < chunk.address:
                return chunk, f"is {chunk.address - address:#x} bytes before the allocation"
            if address >= chunk.address + chunk.size:
                return chunk, (f"is {address - chunk.address - chunk.size:#x} bytes past the end "
                               f"of the allocation")
            return chunk, ""
        slot = SPECIAL_POOL_BASE + (address - SPECIAL_POOL_BASE) // SLOT_SIZE * SLOT_SIZE
        for page in (slot, slot + PAGE_SIZE):
            if page != address & ~(PAGE_SIZE - 1):
                chunk = special_chunk(self.reader, page)
                if chunk is not None:
                    side = "past the end of" if address > chunk.address else "before"
                    return chunk, f"is on the guard page {side} the allocation"
        return None, ""

    def _contents(self, chunk) -> list[str]:
        body = self.reader.read(chunk.body, min(chunk.size - HEADER_SIZE, 64))
        lines = []
        for offset in range(0, len(body), 16):
            row = body[offset:offset + 16]
            text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
            lines.append(f"    {chunk.body + offset:016x}  {row.hex(' ')}  {text}")
        return lines

    def poolval(self, args) -> str:
        if not args:
            raise CommandError("Usage: !poolval Address")
        address = parse_number(args[0], "Address")
        pool = self.reader.pool_of(address)
        page = address & ~(PAGE_SIZE - 1)
        if pool is None:
            return f"{address:016x} is not a valid pool address (it is in no pool of this dump)"
        if self.big_pages().containing(address) is not None:
            return f"{address:016x} is in a large page allocation: it has no pool headers to validate"
        if self.segment_heap() is not None:
            return self.heap_poolval(address, pool)
        try:
            report = read_page_report(self.reader, address, pool.base_type)
        except MemoryReadError:
            return "\n".join(self._unreadable_page(address, pool))
        lines = [f"Pool page {address:016x} region is {pool_region_name(pool.base_type)}", "",
                 f"Validating Pool headers for pool page: {page:016x}", ""]
        if not report.problems:
            lines.append(f"Pool page [ {page:016x} ] is VALID.")
            return "\n".join(lines)
        lines += [f"Pool page [ {page:016x} ] is __inVALID.", "", "Analyzing linked list..."]
        lines += [f"[ {problem} ]" for problem in report.problems]
        return "\n".join(lines)

    def heap_poolval(self, address: int, pool) -> str:
        """!poolval on the segment heap: its pages have no Windows 7 header chain to walk; what
        is validated is the subsegment holding the page (LFH BlockOffsets and bitmap, or the
        chain of VS headers decoded with the heap key), as !pool reads it."""
        page = address & ~(PAGE_SIZE - 1)
        lines = [f"Pool page {address:016x} region is {pool.name} (segment heap)", "",
                 f"Validating the subsegment holding pool page: {page:016x}", ""]
        found = self.segment_heap().around(address)
        if found is None:
            return "\n".join(lines + [f"{address:016x} is not in an LFH or VS subsegment of this "
                                      f"heap (a free page, or a segment header): it has no block "
                                      f"headers to validate"])
        _, problems = found
        if not problems:
            lines.append(f"Pool page [ {page:016x} ] is VALID.")
            return "\n".join(lines)
        lines += [f"Pool page [ {page:016x} ] is __inVALID.", "", "Analyzing the subsegment..."]
        lines += [f"[ {problem} ]" for problem in problems]
        return "\n".join(lines)

    # --- !poolused ------------------------------------------------------------------------

    def poolused(self, args) -> str:
        flags = parse_number(args[0], "Flags") if args else 0
        pattern = _checked_tag(args[1]) if len(args) > 1 else None
        entries = self.reader.tracker_entries()
        # A tag given as its ULONG (0x...) is compared as a value, bit 31 masked on both sides.
        value = int(pattern, 16) & 0x7FFFFFFF if pattern is not None and is_hex_tag(pattern) else None
        rows = []
        for e in entries:
            tag = display(e.Key)
            if value is not None:
                if e.Key & 0x7FFFFFFF != value:
                    continue
            elif pattern is not None and not tag_matches(pattern, tag):
                continue
            np_diff = (e.NonPagedAllocs - e.NonPagedFrees) & 0xFFFFFFFF
            p_diff = (e.PagedAllocs - e.PagedFrees) & 0xFFFFFFFF
            if not flags & 1 and not (np_diff or p_diff or e.NonPagedBytes or e.PagedBytes):
                continue
            rows.append((tag, e, np_diff, p_diff))
        if flags & 2:
            order, rows = "NonPaged Pool Usage", sorted(rows, key=lambda r: (-r[1].NonPagedBytes, r[0]))
        elif flags & 4:
            order, rows = "Paged Pool Usage", sorted(rows, key=lambda r: (-r[1].PagedBytes, r[0]))
        else:
            order, rows = "Tag", sorted(rows, key=lambda r: r[0])
        return "\n".join(self._poolused_table(order, rows, verbose=bool(flags & 1)))

    def _poolused_table(self, order: str, rows, verbose: bool) -> list[str]:
        # WinDbg's columns: the tag, then each count right-aligned under its heading. The Tag
        # column is four characters, wider when a tag is shown as its ULONG in hex
        # (0x5072e966), so that every row's numbers stay under their headings.
        width = max([4] + [len(tag) for tag, *_ in rows])
        widths = POOLUSED_VERBOSE_WIDTHS if verbose else POOLUSED_WIDTHS
        headings = ("Allocs", "Frees", "Diff", "Used") * 2 if verbose else ("Allocs", "Used") * 2
        half = sum(widths) // 2
        lines = [f"   Sorting by {order}", ""]
        if verbose:
            lines.append(" " * (1 + width) + "NonPaged".center(half) + "Paged".center(half).rstrip())
        else:
            lines.append(" " * (width - 4) + "                            NonPaged                  Paged")
        lines += [_columns(" Tag", 1 + width, headings, widths), ""]
        totals = [0] * len(widths)
        for tag, e, np_diff, p_diff in rows:
            if verbose:
                numbers = (e.NonPagedAllocs, e.NonPagedFrees, np_diff, e.NonPagedBytes,
                           e.PagedAllocs, e.PagedFrees, p_diff, e.PagedBytes)
            else:
                numbers = (np_diff, e.NonPagedBytes, p_diff, e.PagedBytes)
            for i, n in enumerate(numbers):
                totals[i] += n
            lines.append(f"{_columns(' ' + tag, 1 + width, numbers, widths)}\t{self.owner(tag)}")
        lines.append(_columns(" TOTAL", 1 + width, totals, widths))
        return lines

    # --- !poolfind ------------------------------------------------------------------------

    def poolfind(self, args):
        """The text in pieces (a generator): see ``stream``."""
        if not args:
            raise CommandError("Usage: !poolfind Tag [PoolType]  (PoolType 0 nonpaged, 1 paged)")
        pattern = _checked_tag(args[0])
        pool_type = parse_number(args[1], "PoolType") if len(args) > 1 else 0
        if pool_type not in (0, 1):
            raise CommandError(f"PoolType {pool_type} is not searched (0 nonpaged, 1 paged)")
        try:
            regex = tag_bytes_regex(pattern)
        except ValueError as error:
            if pattern[:2].lower() == "0x":  # 0x5072*: wildcards in a tag's hex ULONG
                raise CommandError(f"'{pattern}': !poolfind takes a tag's ULONG whole (0x and 1 "
                                   "to 8 hex digits, no wildcards); !poolused matches it with "
                                   "wildcards") from None
            raise CommandError(str(error)) from None
        heap = self.segment_heap()
        if heap is not None:
            return self._heap_poolfind(pattern, regex, pool_type, heap)
        return self._poolfind_pieces(pattern, regex, pool_type)

    def _poolfind_pieces(self, pattern: str, regex, pool_type: int) -> Iterator[str]:
        pool = self.reader.pool_ranges()[pool_type]
        big = self.big_pages()
        data = self.reader.debugger_data()
        table_end = data["PoolBigPageTable"] + data["PoolBigPageTableSize"] * 0x18
        lines = [f"Scanning large pool allocation table for Tag: {pattern} "
                 f"({data['PoolBigPageTable']:016x} : {table_end:016x})", ""]
        for entry in big.entries:
            if tag_display_matches(regex, entry.Key) and pool.start <= entry.Va < pool.end:
                lines.append(f"*{entry.Va:016x} :large page allocation, Tag is {display(entry.Key)}, "
                             f"size is {entry.NumberOfBytes:#x} bytes")
        special = [chunk for chunk in special_chunks(self.reader)
                   if (chunk.pool_name == pool.name) and tag_display_matches(regex, chunk.tag)]
        lines += ["", f"Searching special pool ({SPECIAL_POOL_BASE:016x} : "
                      f"{SPECIAL_POOL_BASE + SPECIAL_POOL_SPAN:016x}) for Tag: {pattern}", ""]
        for chunk in special:
            lines.append(f"*{chunk.address:016x} :special pool allocation, Tag is "
                         f"{display(chunk.tag)}, size is {chunk.size:#x} bytes")
            site = self._site_text(chunk.site)
            if site:
                lines.append(f"\t\tAllocated by {site}")
        lines += ["", f"Searching {pool.name} ({pool.start:016x} : {pool.end:016x}) for Tag: {pattern}", ""]
        yield "\n".join(lines)
        finder = self._finders.get(pool_type)
        if finder is None:
            finder = self._finders[pool_type] = PoolFinder(self.reader, pool, big)
        workers = self._scan_workers(finder, pattern)
        if workers:
            corrupt = []
            for kind, value in forked.in_order(lambda take: self._poolfind_batches(finder, pattern, take), workers):
                if kind == "text":
                    yield value
                else:
                    corrupt += value
            finder.corrupt_pages = corrupt
        else:
            lines = HitLines(self, shows_one_tag(pattern))
            for window in finder.scan(pattern):
                yield lines.window(window)
        for page in finder.corrupt_pages:
            yield (f"\n{page:016x} : the tag sits at a header position on this page, but its "
                   f"header chain is corrupt (see !poolval {page:x})")

    def _scan_workers(self, finder: PoolFinder, pattern: str) -> int:
        """How many processes share a pool's scan (this one and forked workers): one per
        processor other work leaves free (``forked.free_processors``); 0 (this one scans
        alone, as it always did) on one processor, when fewer than two are free, or for a
        pool of fewer than PARALLEL_MIN_PAGES pages (starting workers costs more than they
        save there)."""
        workers = PARALLEL_PROCESSES
        if workers == 0 or workers is None and forked.usable_cpus() < 2:
            return 0
        if not forked.can_fork() or not finder.holds_pages(PARALLEL_MIN_PAGES):
            return 0
        if workers is None:
            workers = min(forked.free_processors(forked.usable_cpus()), forked.MAX_PROCESSES)
            if workers < 2:
                return 0
        finder.searchers(pattern)  # compiled once here, not in every worker
        self.reader.allocation_site_streams()  # read once here, not in every worker
        try:
            self.reader.call_sites()
        except (MemoryReadError, DumpFormatError):
            pass  # a worker meets it where a single scan would, and says so there
        return workers

    def _poolfind_batches(self, finder: PoolFinder, pattern: str, take) -> Iterator[tuple]:
        """A share of a pool's scan, as ``forked.in_order`` runs it: for each batch of windows
        ``take`` accepts, each window's text, then the batch's pages whose chains are corrupt."""
        lines = HitLines(self, shows_one_tag(pattern))
        batch = None  # the batch being made
        told = done = 0  # the corrupt pages told at batch ends, and found by windows made
        try:
            for window in finder.scan(pattern, take):
                if window.batch != batch:
                    if batch is not None:
                        yield "end", finder.corrupt_pages[told:done]
                        told = done
                    batch = window.batch
                yield "text", lines.window(window)
                done = len(finder.corrupt_pages)
        except Exception:
            if batch is not None and finder.batch != batch:  # the error is in a batch of its own
                yield "end", finder.corrupt_pages[told:done]
            raise
        if batch is not None:
            yield "end", finder.corrupt_pages[told:]

    def _heap_poolfind(self, pattern: str, regex, pool_type: int, heap) -> str:
        heaps = [h for h in heap.heaps if h.base_type == pool_type]
        data = self.reader.debugger_data()
        entry_size = data["BigPageEntrySize"] or 0x18
        table_end = data["PoolBigPageTable"] + data["PoolBigPageTableSize"] * entry_size
        lines = [f"Scanning large pool allocation table for Tag: {pattern} "
                 f"({data['PoolBigPageTable']:016x} : {table_end:016x})", ""]
        for entry in self.big_pages().entries:
            if tag_display_matches(regex, entry.Key) and any(h.start <= entry.Va < h.end for h in heaps):
                lines.append(f"*{entry.Va:016x} :large page allocation, Tag is {display(entry.Key)}, "
                             f"size is {entry.NumberOfBytes:#x} bytes")
        lines += ["", f"Searching special pool ({SPECIAL_POOL_BASE:016x} : "
                      f"{SPECIAL_POOL_BASE + SPECIAL_POOL_SPAN:016x}) for Tag: {pattern}", ""]
        for chunk in special_chunks(self.reader):
            if bool(chunk.pool_type & 1) == bool(pool_type) and tag_display_matches(regex, chunk.tag):
                lines.append(f"*{chunk.address:016x} :special pool allocation, Tag is "
                             f"{display(chunk.tag)}, size is {chunk.size:#x} bytes")
                site = self._site_text(chunk.site)
                if site:
                    lines.append(f"\t\tAllocated by {site}")
        for h in heaps:
            lines += ["", f"Searching {h.name} heap {h.heap_va:016x} ({h.start:016x} : "
                          f"{h.end:016x}) for Tag: {pattern}", ""]
            for block in heap.find([h], lambda tag: tag_display_matches(regex, tag), free=True):
                lines.append(self._heap_block_line(block, False)[1:])
                if block.state == "Allocated":
                    lines += [f"\t\tAllocated by {text.split(':  ', 1)[1]}"
                              for text in self._allocated_by(block)]
        return "\n".join(lines)

    # --- display commands ------------------------------------------------------------------

    def _display(self, command: str, args) -> str:
        if not args:
            raise CommandError(f"Usage: {command} Address [L Count]")
        address = parse_number(args[0], "Address")
        count = _length_argument(args[1:])
        return "\n".join(show.display_memory(self.reader, command, address, count, self.symbol))

    def symbol(self, pointer: int) -> str:
        """What a pointer points at: a call site, a module offset, a pool chunk."""
        for driver, address, line, function, filename in self.reader.call_sites()[1:]:
            if address == pointer:
                return (f"{qualified(driver or 'nt', function)} "
                        f"({file_name(filename)}:{line})")
        for name, base, size in self.reader.loaded_modules():
            if base <= pointer < base + size:
                return f"{name.rsplit('.', 1)[0]}+{pointer - base:#x}"
        if self.reader.pool_of(pointer) is not None or in_special_pool(pointer):
            return "(pool)"
        return ""

    def display_type(self, args) -> str:
        if not args:
            raise CommandError("Usage: dt Type [Address]  (Types: "
                               + ", ".join(show.structure_names()) + ")")
        name = args[0].split("!", 1)[-1]
        address = parse_number(args[1], "Address") if len(args) > 1 else None
        return "\n".join(show.display_type(self.reader, name, address))

    def pte(self, args) -> str:
        if not args:
            raise CommandError("Usage: !pte Address")
        return "\n".join(show.display_pte(self.reader, parse_number(args[0], "Address")))

    def lm(self, args) -> str:
        return "\n".join(show.loaded_modules(self.reader))

    def bugcheck(self, args) -> str:
        return "\n".join(show.bugcheck_lines(self.reader))

    # --- !lookaside -------------------------------------------------------------------------

    _POOL_TYPE_BASES = {0: "NonPagedPool", 1: "PagedPool", 2: "NonPagedPoolMustSucceed",
                        3: "DontUseThisType", 4: "NonPagedPoolCacheAligned",
                        5: "PagedPoolCacheAligned", 6: "NonPagedPoolCacheAlignedMustS"}
    _POOL_TYPE_FLAGS = ((0x8, "QuotaFailInsteadOfRaise"), (0x10, "RaiseIfAllocationFailure"),
                        (0x20, "Session"), (0x200, "Nx"))

    def lookaside(self, args) -> str:
        """!lookaside [Address [Options [Depth]]] | [0] [-all]: one GENERAL_LOOKASIDE's fields,
        or every list on ExNPagedLookasideListHead and ExPagedLookasideListHead. Options 1 and 2
        (reset the counters, set the depth) write to the target: a dump is read-only."""
        words = [word for word in args if word.lower() != "-all"]
        address = parse_number(words[0], "Address") if words else 0
        options = parse_number(words[1], "Options") if len(words) > 1 else 0
        if options not in (0, 1, 2) or (options == 2 and not address):
            raise CommandError("Usage: !lookaside [Address [Options [Depth]]] | [0] [-all]")
        if options:
            raise CommandError("!lookaside options 1 and 2 change the target's memory: a crash "
                               "dump is read-only")
        if address:
            return "\n".join(self._lookaside_lines(self.reader.general_lookaside(address)))
        lines = []
        for head in ("ExNPagedLookasideListHead", "ExPagedLookasideListHead", "ExSystemLookasideListHead"):
            lists, broken = self.reader.lookaside_walk(head)
            whose = "system (the I/O manager's IRP and MDL)" if head == "ExSystemLookasideListHead" \
                else "driver"
            lines.append(f"{head} @ {show.kd_address(self.reader.kernel_global(head))}: "
                         f"{len(lists)} {whose} lookaside list(s)")
            for fields in lists:
                lines += [""] + self._lookaside_lines(fields)
            if broken is not None:
                # What a 0xD4 is about: a list still linked in an image that is gone.
                owner = self._unloaded_owner(broken)
                lines += ["", f"*** The list goes on to {show.kd_address(broken)}, which is not "
                              f"in the dump{owner}: the walk stops there"]
            lines.append("")
        lines.append("(the pool's own lookaside lists are kept by ntpool's allocator, not in "
                     "the dump's memory: not listed)")
        return "\n".join(lines)

    def _unloaded_owner(self, address: int) -> str:
        """Who left the link, when a 0xD4's context names a driver that is no longer loaded."""
        context = self.reader.bugcheck_context() or {}
        driver = context.get("driver", "")
        loaded = {name.lower() for name, _, _ in self.reader.loaded_modules()}
        if driver and driver.lower() not in loaded and self.reader.bugcheck_code == 0xD4:
            return f" (the bug check blames {driver}, which unloaded)"
        return ""

    def _lookaside_lines(self, fields: dict) -> list[str]:
        pool_type = fields["Type"]
        names = [self._POOL_TYPE_BASES.get(pool_type & 7, "")]
        names += [name for bit, name in self._POOL_TYPE_FLAGS if pool_type & bit]
        held = fields["ListHeadDepth"]

        def rate(total: int, misses: int) -> str:
            return f"{(total - misses) * 100 // total if total else 0:>10}%"

        return [
            f'Lookaside "" @ {show.kd_address(fields["Address"])}  Tag(hex): {fields["Tag"]:#010x} '
            f'"{display(fields["Tag"])}"',
            f"    Type           = {format(pool_type, '04x'):>10}  {' '.join(name for name in names if name)}",
            f"    Current Depth  = {held:>10}  Max Depth  = {fields['Depth']:>10}",
            f"    Size           = {fields['Size']:>10}  Max Alloc  = {fields['Size'] * fields['Depth']:>10}",
            f"    AllocateMisses = {fields['AllocateMisses']:>10}  FreeMisses = {fields['FreeMisses']:>10}",
            f"    TotalAllocates = {fields['TotalAllocates']:>10}  TotalFrees = {fields['TotalFrees']:>10}",
            f"    Hit Rate       = {rate(fields['TotalAllocates'], fields['AllocateMisses'])} "
            f"Hit Rate   = {rate(fields['TotalFrees'], fields['FreeMisses'])}",
        ]

    def vm(self, args) -> str:
        return "\n".join(show.virtual_memory(self.reader))

    def _context(self) -> tuple[str, str, int]:
        """(driver, call site text, its instruction address) where the machine stopped."""
        context = self.reader.bugcheck_context()
        driver = context["driver"] if context else ""
        call_site = context["call_site"] if context else ""
        address = 0
        for owner, site_address, line, function, filename in self.reader.call_sites()[1:]:
            text = f"{function} ({file_name(filename)}:{line})"
            if text == call_site and (not driver or owner == driver):
                address = site_address
                break
        else:
            # A compiled driver's site names its offset ("leak.sys+0x1080 Unload+0x0 (...)"):
            # where no allocation was made from it (an unload, a fault), it is in no table of
            # call sites, but the module's base is in PsLoadedModuleList.
            address = self._module_address(call_site.split(" ", 1)[0])
        return driver, call_site, address

    def _module_address(self, text: str) -> int:
        """The address ``module.sys+0xOFFSET`` names (0: no such module in the dump)."""
        name, plus, offset = text.partition("+0x")
        if not plus:
            return 0
        try:
            offset = int(offset, 16)
            modules = self.reader.loaded_modules()
        except (ValueError, DumpFormatError):
            return 0
        for module, base, size in modules:
            if module.lower() == name.lower() and offset < size:
                return base + offset
        return 0

    def stack(self, args) -> str:
        if not self.reader.bugcheck_code:
            return "The machine did not bug-check: no stack was recorded."
        driver, call_site, address = self._context()
        lines = [" # Call Site", f"00 nt!KeBugCheckEx ({self.reader.bugcheck_code:#x})"]
        if call_site:
            lines.append(f"01 {qualified(driver or 'nt', call_site)}"
                         + (f"  [{show.kd_address(address)}]" if address else ""))
        else:
            lines.append("01 (the caller was not recorded)")
        return "\n".join(lines)

    def registers(self, args) -> str:
        driver, call_site, address = self._context()
        where = qualified(driver or "nt", call_site) if call_site else "(not recorded)"
        # rip only when the dump says where the code was (never a made-up 0)
        lines = ["ntpool's processor model keeps no general registers; where it stopped:",
                 f"rip={show.kd_address(address)} {where}" if address else where]
        if self.reader.bugcheck_code:
            lines.append(f"bug check {self.reader.bugcheck_code:#x} "
                         f"({bugcheck_name(self.reader.bugcheck_code)})")
        return "\n".join(lines)

    def evaluate(self, args) -> str:
        if not args or not "".join(args).strip():
            return self.help(args)
        value = evaluate_expression("".join(args))
        return f"Evaluate expression: {value} = {show.kd_address(value)}"

    # --- !verifier ------------------------------------------------------------------------

    def outstanding(self) -> dict:
        if self._outstanding is None:
            self._outstanding = outstanding_by_driver(self.reader, self.big_pages())
        return self._outstanding

    def verifier(self, args) -> str:
        flags = parse_number(args[0], "Flags") if args else 0
        driver = args[1].lower() if len(args) > 1 else None
        modules = [name for name, _, _ in self.reader.loaded_modules() if name]
        source = ("Driver Verifier's pool tracking list" if self.reader.verifier_tracking()
                  is not None else "the pool headers (pool tracking was off: chunks cached on "
                                   "a lookaside look allocated, big allocations are not listed)")
        lines = ["Driver Verification List", f"Outstanding pool allocations, from {source}", ""]
        names = [driver] if driver else sorted({m.lower() for m in modules} |
                                              set(self.outstanding()))
        if driver and driver not in {m.lower() for m in modules} | set(self.outstanding()):
            return f"Module {args[1]} is not loaded in this dump (see lm)"
        for name in names:
            lines += self.outstanding_lines(name, detailed=bool(flags & 3))
        return "\n".join(lines)

    def outstanding_lines(self, driver: str, detailed: bool = True) -> list[str]:
        rows = sorted(self.outstanding().get(driver.lower(), []))
        total = sum(row.size for row in rows)
        lines = [f"Module: {driver}", f"    Current Pool Allocations  {len(rows):8d}",
                 f"    Current Pool Bytes        {total:8d}"]
        if detailed and rows:
            lines += ["", "      Address             Size     Tag   Where          Call site"]
            for row in rows:
                lines.append(f"      {show.kd_address(row.address)} {row.size:#8x}  "
                             f"{display(row.tag)}  {row.where:<14} "
                             f"{self._site_text(row.site) or '(not recorded)'}")
        lines.append("")
        return lines

    # --- !analyze -------------------------------------------------------------------------

    def analyze(self, args) -> str:
        reader = self.reader
        code, parameters = reader.bugcheck_code, reader.bugcheck_parameters
        lines = [STAR_LINE, "*" + " " * 77 + "*", "*" + "Bugcheck Analysis".center(77) + "*",
                 "*" + " " * 77 + "*", STAR_LINE, ""]
        if code == 0:
            lines.append("This dump was written on demand: the machine did not bug-check.")
            return "\n".join(lines)
        name = bugcheck_name(code)
        lines.append(f"{name} ({code:x})")
        description = bugchecks.DESCRIPTIONS.get(code)
        if description:
            lines.append(description)
        meanings = bugchecks.arguments(code, parameters)
        lines.append("Arguments:")
        for index, (value, meaning) in enumerate(zip(parameters, meanings), start=1):
            lines.append(f"Arg{index}: {value:016x}" + (f", {meaning}" if meaning else ""))
        if "-v" not in args:
            return "\n".join(lines)
        lines += ["", "Debugging Details:", "------------------", "",
                  f"BUGCHECK_CODE:  {code:x}", ""]
        for index, value in enumerate(parameters, start=1):
            lines.append(f"BUGCHECK_P{index}: {value:x}")
        lines.append("")
        for index in bugchecks.tag_arguments(code, parameters):
            tag = display(parameters[index - 1] & 0xFFFFFFFF)
            lines.append(f"TAG_IN_ARG{index}: {tag}  ({self.owner(tag)})")
        lines += self._analyze_pool(code, parameters)
        lines += self._faulting_source(code, parameters)
        lines += self._leaking_driver(code, parameters)
        lines += self._analyze_culprit()
        return "\n".join(lines)

    def _pool_address(self, code: int, parameters) -> int | None:
        index = bugchecks.pool_argument(code, parameters)
        candidates = [parameters[index - 1]] if index else list(parameters[1:]) + [parameters[0]]
        for value in candidates:
            if self.reader.pool_of(value) is not None or in_special_pool(value):
                return value
        return None

    def _analyze_pool(self, code: int, parameters) -> list[str]:
        address = self._pool_address(code, parameters)
        if address is None:
            return ["", "POOL_ADDRESS: (no parameter of this bug check lies in a pool)"]
        if in_special_pool(address):
            return self._analyze_special(address)
        pool = self.reader.pool_of(address)
        lines = ["", f"POOL_ADDRESS:  {address:016x} {pool_region_name(pool.base_type)}"]
        big = self.big_pages().containing(address)
        if big is not None:
            tag = display(big.Key)
            lines += [f"POOL_CHUNK:  {big.Va:016x} large page allocation, {big.NumberOfBytes:#x} bytes",
                      f"POOL_TAG:  {tag}", f"POOL_TAG_OWNER:  {self.owner(tag)}"]
            return lines
        if self.segment_heap() is not None:
            return lines + self._analyze_heap_block(address)
        try:
            report = read_page_report(self.reader, address, pool.base_type)
        except MemoryReadError:
            return lines + ["POOL_CHUNK: (the page is not in the dump)"]
        chunk = chunk_containing(report, address)
        if chunk is not None:
            tag = display(chunk.tag)
            position = report.chunks.index(chunk)
            before = report.chunks[position - 1] if position else None
            after = report.chunks[position + 1] if position + 1 < len(report.chunks) else None
            lines += [f"POOL_CHUNK:  {chunk.address:016x} size {chunk.size:#x} ({chunk.state})",
                      f"POOL_TAG:  {tag}", f"POOL_TAG_OWNER:  {self.owner(tag)}"]
            lines += self._allocated_by(chunk)
            for label, neighbour in (("PREVIOUS_CHUNK", before), ("NEXT_CHUNK", after)):
                if neighbour is None:
                    lines.append(f"{label}:  (none on this page)")
                else:
                    ntag = display(neighbour.tag)
                    lines.append(f"{label}:  {neighbour.address:016x} size {neighbour.size:#x} "
                                 f"({neighbour.state}) tag {ntag} ({self.owner(ntag)})")
        lines += ["", "POOL_PAGE:"] + self.pool_lines(address)
        return lines

    def _analyze_heap_block(self, address: int) -> list[str]:
        lines = []
        heap = self.segment_heap()
        found = heap.around(address)
        if found is not None:
            blocks, problems = found
            run = heap.run_of(address)
            lines.append(f"SUBSEGMENT:  {run[0]:016x} {'LFH' if run[1] == 0xB else 'VS'}, "
                         f"{run[2]} pages")
            block = block_containing(blocks, address)
            candidates = [b for b in blocks if b.address + b.size <= address]
            before = block if block is not None else (candidates[-1] if candidates else None)
            if block is None and before is not None:
                lines.append(f"CORRUPTION_AFTER:  {before.address:016x} ({before.state}, tag "
                             f"{display(before.tag)} ({self.owner(display(before.tag))})): the "
                             f"block whose end precedes the corrupt address; the likely culprit")
                lines += self._allocated_by(before)
            if block is not None:
                tag = display(block.tag)
                lines.append(f"POOL_CHUNK:  {block.address:016x} size {block.size:#x} ({block.state}, "
                             f"{block.backend})")
                if block.tag:
                    lines += [f"POOL_TAG:  {tag}", f"POOL_TAG_OWNER:  {self.owner(tag)}"]
                else:  # as !pool shows it: a free VS chunk keeps no POOL_HEADER, so no tag
                    lines.append("POOL_TAG:  (none: the block has no pool header with a tag)")
                lines += self._allocated_by(block)
                index = blocks.index(block)
                for label, neighbour in (("PREVIOUS_CHUNK", blocks[index - 1] if index else None),
                                         ("NEXT_CHUNK", blocks[index + 1] if index + 1 < len(blocks) else None)):
                    if neighbour is not None:
                        ntag = display(neighbour.tag) if neighbour.tag else "----"
                        lines.append(f"{label}:  {neighbour.address:016x} size {neighbour.size:#x} "
                                     f"({neighbour.state}) tag {ntag}")
            lines += [f"HEAP_PROBLEM:  {problem}" for problem in problems]
        return lines + ["", "POOL_PAGE:"] + self.pool_lines(address)

    def _analyze_special(self, address: int) -> list[str]:
        lines = ["", f"POOL_ADDRESS:  {address:016x} Special pool"]
        chunk, relation = self.special_near(address)
        if chunk is None:
            lines.append("POOL_CHUNK:  (the page is not mapped: a freed special pool allocation, "
                         "or the guard page of one)")
        else:
            tag = display(chunk.tag)
            lines += [f"POOL_CHUNK:  {chunk.address:016x} size {chunk.size:#x} (special pool, "
                      f"{'underrun' if chunk.underrun else 'overrun'}-checking)",
                      f"POOL_TAG:  {tag}", f"POOL_TAG_OWNER:  {self.owner(tag)}"]
            site = self._site_text(chunk.site)
            if site:
                lines.append(f"ALLOCATED_BY:  {site}")
            if relation:
                lines.append(f"ACCESS:  {address:016x} {relation}")
        return lines + ["", "POOL_PAGE:"] + self.special_pool_lines(address)

    def _site_text(self, site: int) -> str | None:
        sites = self.reader.call_sites()
        if not 0 < site < len(sites):
            return None
        driver, _, line, function, filename = sites[site]
        return f"{qualified(driver or '(no driver)', function)} ({file_name(filename)}:{line})"

    def _allocated_by(self, chunk) -> list[str]:
        """Who allocated the chunk: its number in ntpool's allocation-site table (an older
        dump: its AllocatorBackTraceIndex), looked up in the call-site table."""
        index = self.reader.allocation_site(chunk.address)
        if index is None:
            if chunk.pool_type & POOL_QUOTA:  # quota-charged: ProcessBilled is there instead
                return []
            try:
                header = POOL_HEADER.at(self.reader.read(chunk.address, POOL_HEADER.size))
                index = header.AllocatorBackTraceIndex
            except MemoryReadError:
                return []
        text = self._site_text(index)
        return [f"ALLOCATED_BY:  {text}"] if text else []

    def _faulting_source(self, code: int, parameters) -> list[str]:
        """For faults whose parameters hold an instruction address: the line that ran."""
        position = {0xCD: 3, 0xCC: 3, 0xD5: 3, 0xD6: 3, 0x1E: 2, 0x50: 3, 0xD1: 4, 0x0A: 4}.get(code)
        if position is None:
            return []
        address = parameters[position - 1]
        for index, site in enumerate(self.reader.call_sites()):
            if index and site[1] == address:
                return [f"FAULTING_SOURCE:  {self._site_text(index)}"]
        for name, base, size in self.reader.loaded_modules():
            if base <= address < base + size:
                return [f"FAULTING_MODULE:  {name}"]
        return []

    def _leaking_driver(self, code: int, parameters) -> list[str]:
        if code != 0xC4 or parameters[0] != 0x62:
            return []
        name = self.reader.unicode_string(parameters[1])
        if not name:
            context = self.reader.bugcheck_context()
            name = context["driver"] if context else ""
        lines = ["", f"LEAKING_DRIVER:  {name or '(name unreadable)'} left {parameters[3]} "
                     f"allocation(s) behind"]
        if name:
            lines += ["", "OUTSTANDING_ALLOCATIONS (as !verifier 3 lists them):"]
            lines += self.outstanding_lines(name)
        return lines

    def _analyze_culprit(self) -> list[str]:
        # The driver and call site come from ntpool's NTPOOL_BUGCHECK_CONTEXT (see README).
        context = self.reader.bugcheck_context()
        driver = context["driver"] if context else ""
        call_site = context["call_site"] if context else ""
        lines = ["", f"DRIVER:  {driver or '(not recorded)'}",
                 f"CALL_SITE:  {call_site or '(not recorded)'}", ""]
        found_in = context.get("found_in", "") if context else ""
        if found_in == "ExDeferredFreePool":
            lines[-1:-1] = [f"FOUND_IN:  nt!{found_in}",
                            "  The corruption was found in the deferred free: delayed pool frees "
                            "are on, so chunks freed earlier",
                            "  were queued on the pool's PendingFrees and coalesced in one batch "
                            "later. The check that failed",
                            "  is that batch's, so the driver and call site below made the call "
                            "that ran the batch, not",
                            "  necessarily the one that corrupted the pool: look at the chunk "
                            "and its neighbours above."]
        elif found_in:
            lines[-1:-1] = [f"FOUND_IN:  nt!{found_in}"]
        write = self.reader.corrupting_write()
        if write:
            # Beyond Windows: the machine saw the write that did it (ntpool.pool.culprit).
            culprit = f"{write['driver'] or '(the kernel)'} {write['line']}".strip()
            lines[-1:-1] = [f"CORRUPTED_BY:  {culprit}, {write['what']}",
                            f"CORRUPTING_WRITE:  {write['length']} bytes at {write['address']:016x}: "
                            f"{write['data'].hex(' ')}"]
            lines.append(f"Probably caused by : {culprit} (the write that corrupted the pool)")
            return lines
        if driver:
            lines.append(f"Probably caused by : {driver}" + (f" ( {call_site} )" if call_site else ""))
        return lines


# A pool's !poolfind is shared with forked processes (see forked) when it holds this many pages;
# PARALLEL_PROCESSES: by how many, this one included (None: one per processor other work leaves
# free, at most forked.MAX_PROCESSES; no sharing on one processor, or with one free).
PARALLEL_MIN_PAGES = 8192
PARALLEL_PROCESSES = None


class HitLines:
    """``!poolfind``'s lines for a scan's windows: each chunk's line, and for an allocated
    chunk (not quota-charged) the line saying who allocated it.

    `!poolfind *` on a gigabyte of pool lists millions of chunks, so a line is never
    formatted per chunk. On a page, the text after the page's address comes from a cache by
    header and place in the page (``tails``), the Allocated-by line from one by call site
    (``site_lines``); a chunk costs a few list appends. A stretch of pages (a tag's walk) is
    made by ``map``, every step a C function, and one ``%`` (``_stretch``). The window's text
    is joined at once; its call sites come from the allocation-site table in one read.
    """

    CACHE_LIMIT = 1 << 18  # texts kept by header (and place) (a text is rebuilt when dropped)

    def __init__(self, session: KdSession, one_tag: bool = False):
        self.session = session
        self.reader = session.reader
        self.middles = _Middles()
        self.tails: dict[int, tuple[str, bool]] = {}
        self.site_lines = _SiteLines(session)
        self.site_texts = _SiteTexts(self.middles, self.site_lines)
        self.call_sites = CallSites(session.reader)
        # the hits' tags are all shown alike (see shows_one_tag): a stretch's texts are looked
        # up by the headers' first ULONG alone (``_stretch``), by site, then by that ULONG
        self.one_tag = one_tag
        self.dword_texts: _SiteDwordTexts | None = None

    def window(self, window) -> str:
        if not window.pages:
            return ""
        data = window.data
        heads = _first_eight_bytes(data)
        sites, shift = self.call_sites.window_units(window)
        tails, site_lines = self.tails, self.site_lines
        if len(tails) > self.CACHE_LIMIT or len(self.middles) > self.CACHE_LIMIT or \
                self.site_texts.held > self.CACHE_LIMIT or \
                self.dword_texts is not None and self.dword_texts.held > self.CACHE_LIMIT:
            tails.clear()
            self.middles.clear()
            self.site_texts.clear()
            self.dword_texts = None
        pieces = []
        append = pieces.append
        for page in window.pages:
            if page.salvaged or sites is None:
                append(self._page_one_by_one(page, heads, data))
                continue
            if page.blocks[-1] >= BLOCKS_PER_PAGE:  # a stretch of pages (see PoolFinder.scan)
                append(self._stretch(page, heads, sites, shift, data))
                continue
            if shift:  # a page on its own: its sites by block, the window's made once
                sites, shift = sites_by_block(sites), 0
            prefix = f"\n{page.va >> 12:013x}"
            first = page.first
            for block in page.blocks:
                head = heads[first + block]
                key = head << 8 | block
                tail = tails.get(key)
                if tail is None:
                    tail = tails[key] = self._tail(head, block)
                append(prefix)
                append(tail[0])
                if tail[1]:  # allocated: who allocated it
                    append(site_lines[sites[first + block]])
        return "".join(pieces)

    def _stretch(self, page, heads, sites, shift: int = 0, data=None) -> str:
        """The lines of a stretch of pages, with no Python statement per chunk: the address,
        and the text after it from a cache by call site, then header (``site_texts``: the
        chunk's text and, when it is allocated, its site's Allocated-by line), joined at once
        (a join sizes the text once; a ``%`` over the stretch grew it a quarter at a time,
        copying it each time). The chunks' headers and sites are taken by one ``itemgetter``
        each; the sites' places (block >> shift) and the addresses are worked out on all
        chunks at once (``ulong_lanes``). An address is the stretch's top 8 hex digits, the
        same for all of its chunks unless the stretch crosses a multiple of 4 GiB, and its
        low 8, from one ``bytes.hex`` over them all, as big-endian ULONGs."""
        blocks = page.blocks
        count = len(blocks)
        low = page.va & 0xFFFFFFFF
        if count < 2 or low + (blocks[-1] << BLOCK_SHIFT) > 0xFFFFFFFF or page.va >> 64 or \
                page.first + blocks[-1] > 0xFFFFFFFF:  # (itemgetter of one index gives no tuple)
            return self._stretch_one_by_one(page, heads, sites, shift)
        lanes, ones = ulong_lanes(blocks) if page.lanes is None else (page.lanes, lane_ones(count))
        index = lanes + ones * page.first if page.first else lanes  # the window's blocks
        places = (index >> shift) & lanes_of_ones(ones, 32 - shift) if shift else index  # by unit: see window_units
        chunks = lanes_list(index, count) if page.first else blocks  # the window's blocks, a list
        site_numbers = itemgetter(*(lanes_list(places, count) if shift else chunks))(sites)
        if self.one_tag and data is not None:
            # by site, then by the header's first ULONG (the tag is shown alike in every hit):
            # a smaller key than the whole head (mostly an int of one digit), found faster
            by_site = self.dword_texts
            if by_site is None:
                by_site = self.dword_texts = _SiteDwordTexts(self.middles, self.site_lines,
                                                             heads[page.first + blocks[0]] >> 32)
            texts = map(dict.__getitem__, by_site.dicts(site_numbers), itemgetter(*chunks)(_first_four_bytes(data)))
        else:
            texts = map(dict.__getitem__, map(self.site_texts.__getitem__, site_numbers), itemgetter(*chunks)(heads))
        lows = lanes_array((lanes << BLOCK_SHIFT) + ones * low, count)
        if sys.byteorder == "little":
            lows.byteswap()
        values = [None] * (3 * count)
        values[0::3] = (f"\n{page.va >> 32:08x}",) * count
        values[1::3] = lows.tobytes().hex(" ", 4).split(" ")
        values[2::3] = texts
        return "".join(values)

    def _stretch_one_by_one(self, page, heads, sites, shift: int) -> str:
        """``_stretch`` for one chunk, or for a stretch that crosses a multiple of 4 GiB (rare)."""
        middles, site_lines = self.middles, self.site_lines
        lines = []
        for block in page.blocks:
            head = heads[page.first + block]
            lines.append(f"\n{page.va + (block << BLOCK_SHIFT):016x}{middles[head]}")
            if middles.allocated[head]:
                lines.append(site_lines[sites[(page.first + block) >> shift]])
        return "".join(lines)

    def _tail(self, head: int, block: int) -> tuple[str, bool]:
        """The text of a chunk's line after its page's address; whether it is allocated."""
        return OFFSET_TEXTS[block] + self.middles[head], self.middles.allocated[head]

    def _page_one_by_one(self, page, heads, data) -> str:
        """A page whose sites cannot be read with the window's, or a salvaged page."""
        lines = []
        mark = "  (corrupt page: see !poolval {:x})" if page.salvaged else ""
        for block in page.blocks:
            address = page.va + (block << 4)
            head = heads[page.first + block]
            lines.append(f"\n{address:016x}{self.middles[head]}{mark.format(address)}")
            if self.middles.allocated[head]:
                lines.append(self.site_lines[self.call_sites.one(address, data, page.first + block)])
        return "".join(lines)


OFFSET_TEXTS = tuple(f"{block << 4:03x}" for block in range(BLOCKS_PER_PAGE))  # address, last 3


class _Middles(dict):
    """A chunk line's text after the address, by the header's first 8 bytes (as a u64);
    ``allocated`` says whether an Allocated-by line follows."""

    def __init__(self):
        super().__init__()
        self.allocated: dict[int, bool] = {}

    def __missing__(self, head: int) -> str:
        previous, size, pool_type, tag = head & 0xFF, head >> 16 & 0xFF, head >> 24 & 0xFF, head >> 32
        state = chunk_state(pool_type)
        text = self[head] = (f" size: {size << 4:4x} previous size: {previous << 4:4x}  "
                             f"{'(' + state + ')':<12} {display(tag)}")
        self.allocated[head] = state == "Allocated" and not pool_type & POOL_QUOTA
        return text

    def clear(self) -> None:
        super().clear()
        self.allocated.clear()


class _SiteLines(dict):
    """The Allocated-by line of each call-site number ('' for one that names no site)."""

    def __init__(self, session: KdSession):
        super().__init__()
        self.session = session

    def __missing__(self, site: int) -> str:
        text = self.session._site_text(site)
        line = self[site] = f"\n\t\tAllocated by {text}" if text else ""
        return line


class _SiteTexts(dict):
    """By call-site number, the texts after a chunk line's address by header (its first 8
    bytes as a u64): the header's text (``_Middles``) and, for an allocated chunk, the site's
    Allocated-by line (``_SiteLines``)."""

    def __init__(self, middles: _Middles, site_lines: _SiteLines):
        super().__init__()
        self.middles, self.site_lines = middles, site_lines
        self.held = 0  # texts held, all sites together

    def __missing__(self, site: int) -> "_HeaderTexts":
        texts = self[site] = _HeaderTexts(self, site)
        return texts

    def clear(self) -> None:
        super().clear()
        self.held = 0


class _HeaderTexts(dict):
    """One call site's texts after a chunk line's address, by header (see ``_SiteTexts``)."""

    def __init__(self, owner: _SiteTexts, site: int):
        super().__init__()
        self.owner, self.site = owner, site

    def __missing__(self, head: int) -> str:
        middles = self.owner.middles
        text = middles[head]
        if middles.allocated[head]:
            text += self.owner.site_lines[self.site]
        self[head] = text
        self.owner.held += 1
        return text


class _SiteDwordTexts:
    """By call-site number (a USHORT), the texts after a chunk line's address by the header's
    first ULONG (PreviousSize, PoolIndex, BlockSize, PoolType), for hits whose tags are all
    shown as ``tag``'s (see ``HitLines.one_tag``): ``_SiteTexts``' texts by a smaller key.
    The sites' tables are in a plain list (``tables``), taken by index: an item of a dict's or
    list's subclass, taken by ``itemgetter``, goes through a Python-level slot."""

    def __init__(self, middles: _Middles, site_lines: _SiteLines, tag: int):
        self.middles, self.site_lines, self.tag = middles, site_lines, tag
        self.held = 0
        self.tables = [_DwordTexts(self, site) for site in range(256)]

    def dicts(self, sites: tuple) -> tuple:
        """Each site's table (``sites``: two or more); the list grows to the largest site."""
        tables = self.tables
        try:
            return itemgetter(*sites)(tables)
        except IndexError:  # a site past the list (a map of USHORTs)
            tables.extend(_DwordTexts(self, site) for site in range(len(tables), max(sites) + 1))
            return itemgetter(*sites)(tables)


class _DwordTexts(dict):
    """One call site's texts by the header's first ULONG (see ``_SiteDwordTexts``)."""

    def __init__(self, owner: _SiteDwordTexts, site: int):
        super().__init__()
        self.owner, self.site = owner, site

    def __missing__(self, dword: int) -> str:
        owner = self.owner
        head = owner.tag << 32 | dword
        text = owner.middles[head]
        if owner.middles.allocated[head]:
            text += owner.site_lines[self.site]
        self[dword] = text
        owner.held += 1
        return text


def _first_eight_bytes(data):
    """Each 16-byte block's first 8 bytes as a little-endian integer, indexable by block."""
    if sys.byteorder == "little":
        return memoryview(data).cast("Q")[0::2]
    return [head for head, in struct.iter_unpack("<Q8x", data)]


def _first_four_bytes(data):
    """Each 16-byte block's first 4 bytes (PreviousSize, PoolIndex, BlockSize, PoolType) as a
    little-endian integer, indexable by block."""
    if sys.byteorder == "little":
        return memoryview(data).cast("I")[0::4]
    return [dword for dword, in struct.iter_unpack("<I12x", data)]
