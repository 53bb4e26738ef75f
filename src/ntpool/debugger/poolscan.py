"""Pool pages and chunks as a dump holds them: walking, validating, finding by tag.

A small-pool page is trusted only when its whole header chain is consistent (the same
walk the allocator's checks make, ``pool.layout.page_problems``) and every PoolType byte
is one a chunk of that pool can hold. ``PoolFinder`` reads a pool's pages a window at a
time and either walks every page's chain (``*``) or finds the tag's headers: where the tag
is common, by walking every page's chain in the regular-expression engine, which stops before
each header of the tag (``header_step_regex``, the whole window at once; where a page's chain
is not valid, ``header_walk_regex``, a stretch of sound pages at a time); where it is rare, by
searching the window's bytes for the tag first and keeping only hits that sit where a header's
tag sits (offset 4 of a 16-byte block) in a page whose chain is valid and that has a chunk
starting there. A tag-shaped string inside a chunk's body is not a chunk. On a page whose
chain is corrupt, the headers that can still be trusted (``salvaged_header_offsets``) are
reported too, marked.
"""

import re
import struct
import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from functools import lru_cache
from itertools import accumulate, islice, repeat
from operator import rshift, sub
from typing import Iterator, NamedTuple

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..dump.reader import BigPage, DumpReader, MemoryReadError, PoolRange
from ..pool.layout import BLOCK, BLOCK_SHIFT, BLOCKS_PER_PAGE, POOL_HEADER, Chunk, page_problems, \
    pool_type_fits, walk_page
from ..tags import PROTECTED_POOL, is_hex_tag


class PageReport(NamedTuple):
    page: int
    chunks: list  # Chunk, as far as the chain could be walked
    problems: list  # str


def pool_type_problems(chunks, base_type: int) -> list[str]:
    """PoolType bytes no chunk of this pool can hold."""
    problems = []
    for chunk in chunks:
        if not pool_type_fits(chunk.pool_type, base_type):
            problems.append(f"{chunk.address:#x}: PoolType {chunk.pool_type:#x} is not a "
                            f"{'paged' if base_type else 'nonpaged'} pool type")
    return problems


def examine_page(page: bytes, page_va: int, base_type: int) -> PageReport:
    chunks = list(walk_page(page, page_va))
    problems = page_problems(page, page_va) + pool_type_problems(chunks, base_type)
    return PageReport(page_va, chunks, problems)


_PREV_SIZE_TYPE = POOL_HEADER.run("PreviousSize", "PoolType")
# PreviousSize, PoolIndex, BlockSize, PoolType, PoolTag, AllocatorBackTraceIndex in one unpack.
_HEADER_AND_TRACE = struct.Struct("<BBBBIH")
assert [POOL_HEADER.offset(n) for n in ("PreviousSize", "PoolIndex", "BlockSize", "PoolType", "PoolTag",
                                        "AllocatorBackTraceIndex")] == [0, 1, 2, 3, 4, 8]


def valid_header_offsets(page, base: int, base_type: int) -> set | None:
    """Offsets (from ``base``) of a page's headers when its whole chain is valid, else None.

    The same rules as ``examine_page`` (chain consistent and covering the page, PoolType
    bytes of this pool), in one lean pass for scans over many pages.
    """
    chain = _consistent_rest(page, base, base_type, 0, 0)
    return None if chain is None else set(chain)


def _consistent_rest(page, base: int, base_type: int, offset: int, previous: int) -> list | None:
    """Header offsets from ``offset`` to the page's end when that part of the chain is wholly
    consistent (the first header's PreviousSize must be ``previous``), else None."""
    unpack = _PREV_SIZE_TYPE.unpack_from
    offsets = []
    while offset < PAGE_SIZE:
        prev, _index, size, pool_type = unpack(page, base + offset)
        if prev != previous or not size or offset + (size << BLOCK_SHIFT) > PAGE_SIZE or \
                (pool_type and not pool_type_fits(pool_type, base_type)):
            return None
        offsets.append(offset)
        previous = size
        offset += size << BLOCK_SHIFT
    return offsets


def _plausible_tag(page, at: int) -> bool:
    raw = bytes(page[at:at + 4])
    return all(0x20 <= b <= 0x7E for b in raw[:3]) and 0x20 <= raw[3] & 0x7F <= 0x7E


def salvaged_header_offsets(page, base: int, base_type: int) -> set:
    """The headers of a page whose chain is corrupt that can still be trusted.

    The chain is followed from the page's start while it is consistent. One header whose
    PreviousSize disagrees (the byte an overrun of the chunk before it hits first) is still
    a header when everything else about it is sound (BlockSize, PoolType, a printable tag)
    and the chain from it to the page's end is wholly consistent; anything less, and the walk
    stops there: what follows is not reported, so a salvage never invents a chunk.
    """
    unpack = _PREV_SIZE_TYPE.unpack_from
    offsets = set()
    offset = previous = 0
    while offset < PAGE_SIZE:
        prev, _index, size, pool_type = unpack(page, base + offset)
        if not size or offset + (size << BLOCK_SHIFT) > PAGE_SIZE or \
                (pool_type and not pool_type_fits(pool_type, base_type)):
            break
        if prev != previous:
            rest = _consistent_rest(page, base, base_type, offset + (size << BLOCK_SHIFT), size)
            if rest is not None and _plausible_tag(page, base + offset + POOL_HEADER.PoolTag):
                offsets.add(offset)
                offsets.update(rest)
            break
        offsets.add(offset)
        previous = size
        offset += size << BLOCK_SHIFT
    return offsets


def chunk_containing(report: PageReport, va: int) -> Chunk | None:
    for chunk in report.chunks:
        if chunk.address <= va < chunk.address + chunk.size:
            return chunk
    return None


def _page_up(va: int) -> int:
    return (va + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class BigPageIndex:
    """The big page table's allocations, sorted by address, for 'which allocation holds va'."""

    def __init__(self, entries: list[BigPage]):
        self.entries = sorted(entries)
        self.starts = [entry.Va for entry in self.entries]
        # reach[i]: the furthest end of entries[0..i] (an entry may run past later starts)
        self.reach = list(accumulate((entry.Va + max(entry.NumberOfBytes, PAGE_SIZE)
                                      for entry in self.entries), max))
        self.disjoint = all(self.reach[i] <= self.starts[i + 1] for i in range(len(self.starts) - 1))

    def outside(self, va: int, count: int) -> Iterator[tuple[int, int]]:
        """(va, pages): the parts of ``count`` pages from ``va`` that no allocation holds (as
        ``containing`` sees them), in order."""
        end = va + (count << PAGE_SHIFT)
        index = bisect_left(self.starts, end) - 1
        if index < 0 or self.reach[index] <= va:
            yield va, count  # no allocation reaches the range: the common case
            return
        if not self.disjoint:  # a table whose entries overlap: page by page, as containing
            for page in range(count):
                if self.containing(va + (page << PAGE_SHIFT)) is None:
                    yield va + (page << PAGE_SHIFT), 1
            return
        at = va  # a page is held when an allocation starts at or before it and ends after it
        for entry in self.entries[max(bisect_right(self.starts, va) - 1, 0):]:
            if entry.Va >= end:
                break
            held_from = max(_page_up(entry.Va), at)
            held_to = _page_up(entry.Va + max(entry.NumberOfBytes, PAGE_SIZE))
            if held_to <= at:
                continue
            if held_from >= end:
                break
            if held_from > at:
                yield at, (held_from - at) >> PAGE_SHIFT
            at = held_to
            if at >= end:
                return
        yield at, (end - at) >> PAGE_SHIFT

    def containing(self, va: int) -> BigPage | None:
        index = bisect_right(self.starts, va) - 1
        if index >= 0:
            entry = self.entries[index]
            if va < entry.Va + max(entry.NumberOfBytes, PAGE_SIZE):
                return entry
        return None


def _expansions(pattern: str) -> list[str]:
    """Every four-character form of a pattern whose ``*`` stand for any number of '?'; a tag
    given as its ULONG (``0xdeadbeef``) is its four bytes (as Latin-1 text), no wildcards."""
    if is_hex_tag(pattern):
        return [int(pattern, 16).to_bytes(4, "little").decode("latin-1")]
    return _text_forms(pattern)


def _text_forms(pattern: str) -> list[str]:
    """The four-character forms of a text pattern. A form that reads like a ULONG ('0x50',
    from '0x50*') is text here: only a tag given whole is taken as its value."""
    if "*" not in pattern:
        return [pattern.ljust(4)] if len(pattern) <= 4 else []
    head, tail = pattern.split("*", 1)
    results = []
    for count in range(0, 5):
        results += _text_forms(head + "?" * count + tail)
    return sorted({r for r in results if len(r) == 4})


def shows_one_tag(pattern: str) -> bool:
    """Whether every tag the pattern matches is shown alike (one form, no wildcard: a tag's
    bit 31, which the match allows, is not shown), so a hit's line needs no look at its tag."""
    if is_hex_tag(pattern):
        return True
    forms = _expansions(pattern)
    return len(forms) == 1 and "?" not in forms[0]


def tag_bytes_regex(pattern: str, skip: int = 0) -> re.Pattern:
    """Bytes regex for a tag as tools show it, the protected bit allowed in its last byte;
    with ``skip``, for the tag's bytes after its first ``skip`` (which the pattern leaves
    free: see ``search_plan``)."""
    alternatives = []
    exact = is_hex_tag(pattern)
    for form in _expansions(pattern):
        parts = []
        for index, ch in enumerate(form):
            if index < skip:
                continue
            if ch == "?" and not exact:
                parts.append(b".")
                continue
            code = ord(ch)
            if index == 3:
                code &= 0x7F
                parts.append(b"[" + re.escape(bytes([code])) + re.escape(bytes([code | 0x80])) + b"]")
            else:
                parts.append(re.escape(bytes([code])))
        alternatives.append(b"".join(parts))
    if not alternatives:
        raise ValueError(f"tag pattern {pattern!r} cannot match a four-character tag")
    return re.compile(b"|".join(alternatives), re.DOTALL)


def search_plan(pattern: str) -> tuple[re.Pattern, int] | None:
    """How to search raw pool bytes for a tag pattern: a regex that starts with a literal
    byte (the engine skips ahead to it fast) and the tag byte it starts at; None when the
    pattern has no such byte at one place in every form (then only the tags are searched)."""
    if is_hex_tag(pattern):
        return tag_bytes_regex(pattern), 0
    forms = _expansions(pattern)
    for skip in range(4):
        if forms and all(form[:skip] == "?" * skip and form[skip] != "?" for form in forms):
            return tag_bytes_regex(pattern, skip), skip
        if not forms or any(form[skip] != "?" for form in forms):
            return None
    return None


def tag_display_matches(regex: re.Pattern, tag_value: int) -> bool:
    return regex.match((tag_value & ~PROTECTED_POOL).to_bytes(4, "little")) is not None or \
        regex.match(tag_value.to_bytes(4, "little")) is not None


class PageHits(NamedTuple):
    """The chunks a scan found on one page of a window, or on a stretch of whole pages whose
    chains are all valid (a tag's scan: see ``header_walk_regex``)."""

    va: int  # of the page (of the stretch)
    first: int  # the window's 16-byte block number of the page's (the stretch's) first block
    blocks: list  # block numbers from ``first`` where the headers found start, ascending
    salvaged: bool  # the page's chain is corrupt: these are the headers it could still trust
    lanes: int | None = None  # ``blocks`` as ``ulong_lanes``' integer, when the walk made them so


class Window(NamedTuple):
    """One stretch of a pool, contiguous in memory and in the file, as a scan read it."""

    va: int  # of its first page
    data: memoryview  # its bytes: only valid until the scan reads the next window
    pages: list  # PageHits, in address order, pages without hits left out
    batch: int = 0  # the batch of windows it belongs to (see PoolFinder.scan)


def _block_bytes(buffer: bytearray, length: int) -> tuple[bytearray, bytearray, bytearray]:
    """The PreviousSize, BlockSize and PoolType bytes of every 16-byte block of the first
    ``length`` bytes, three strings (a bytearray's strided slice is a plain C loop; a
    memoryview's is several times slower)."""
    return buffer[0:length:BLOCK], buffer[2:length:BLOCK], buffer[3:length:BLOCK]


def _page_chain(previous_sizes, sizes, pool_types, first: int, allowed) -> list | None:
    """The blocks of a page (0-255) where its headers start, when its whole chain is valid,
    else None: the rules of ``valid_header_offsets``, on the PreviousSize, BlockSize and
    PoolType bytes of every block of a window, sliced out at once (the page's first block is
    ``first`` in them)."""
    block = first
    end = first + BLOCKS_PER_PAGE
    expected = 0
    blocks = []
    append = blocks.append
    while block < end:
        size = sizes[block]
        if previous_sizes[block] != expected or not size or block + size > end or \
                not allowed[pool_types[block]]:
            return None
        append(block - first)
        expected = size
        block += size
    return blocks


# The rest of a chunk after its BlockSize byte, by that byte: sizes 1-255 in ascending order,
# as the regular-expression engine tries them (it rejects a wrong one on its first byte, so a
# small chunk, the common case, costs a few tries).
_CHUNK_BODIES = b"|".join(re.escape(bytes([size])) + b".{%d}" % ((size << BLOCK_SHIFT) - 3)
                          for size in range(1, 256))


def header_walk_regex(allowed, tag_regex: bytes) -> re.Pattern:
    """A regex that walks header chains, the rules of ``_page_chain``, in the engine.

    Matched again and again where the last match ended (a ``scanner``'s ``match``), from a
    page's first header, each match is one step of the walk: the chunks of other tags, then
    one chunk whose tag ``tag_regex`` matches (its header's offset is the group ``hit``) or the
    page's last chunk (the group ``end``, at the page's end). Every header walked has a
    BlockSize (1-255) whose chunk fits what follows, a PoolType ``allowed`` (a table by byte),
    and the next header's PreviousSize is its BlockSize. The engine cannot see pages: it takes a
    header whose PreviousSize is 0 (or the end of the text) to start the next page, which the
    caller checks: the ``end`` offsets must be exactly the pages' ends (see ``_walk_pages``); a
    chunk that crosses a page's end, or a PreviousSize of 0 inside a page, breaks that.
    """
    types = b"[" + b"".join(re.escape(bytes([t])) for t in range(256) if allowed[t]) + b"]"

    def chunk(size_group: bytes) -> bytes:
        # PreviousSize and PoolIndex (any); BlockSize (kept in the group) and PoolType looked
        # at without moving; then BlockSize and the rest of the chunk, by its size
        return b"..(?=(?P<" + size_group + b">.)" + types + b")(?:" + _CHUNK_BODIES + b")"

    tag = b".{4}(?:" + tag_regex + b")"  # PoolTag, at byte 4 of the header
    return re.compile(
        # chunks of other tags, each followed in the page by a header naming its size as previous;
        # possessive (*+): a walk never backtracks
        b"(?:(?!" + tag + b")" + chunk(b"size") + b"(?=(?P=size)))*+"
        # then a chunk of the tag (marked by the empty group `hit`), or one that ends the page
        b"(?:(?=" + tag + b")(?P<hit>)|)" + chunk(b"last") +
        b"(?:(?=(?P=last))|(?=\\x00|\\Z)(?P<end>))",
        re.DOTALL)


# The type of match objects: its methods (start), mapped over a walk's steps, are C calls.
_Match = type(re.match(b"", b""))


STEP_BATCH = 1 << 14  # a walk's steps held at a time (memory stays bounded whatever the pages)


def _walk_pages(walker: re.Pattern, buffer: bytearray, start: int, length: int) -> tuple[int, list]:
    """The walk (``header_walk_regex``) of the pages of ``buffer`` from offset ``start`` (a
    page's) to ``length``: how many pages from ``start`` have a valid chain before the first
    that has not (all, when none fails), and the blocks (from ``start``) of their headers
    whose tag matches."""
    if buffer[start]:  # the page's first header has a PreviousSize: not a valid chain
        return 0, []
    hit, end = walker.groupindex["hit"], walker.groupindex["end"]
    # The steps, each matched where the last ended (a scanner's match: iter calls it until it
    # finds none, so the loop runs in C), up to the last page's end or the first failure;
    # STEP_BATCH of them held at a time (a match object is about 150 bytes).
    steps = iter(walker.scanner(buffer, start, length).match, None)
    hits: list = []  # the offsets of the tag's headers the steps stopped at
    page_ends: list = []  # the offsets where steps ended a page (as the engine saw pages)
    while batch := list(islice(steps, STEP_BATCH)):
        hits += filter((0).__le__, map(_Match.start, batch, repeat(hit)))  # -1: no such group
        page_ends += filter((0).__le__, map(_Match.start, batch, repeat(end)))
    expected = list(range(start + PAGE_SIZE, length + 1, PAGE_SIZE))
    sound = len(expected)
    if page_ends != expected:
        # The pages before the first whose walk did not end at its end are sound; the hits
        # after their end are not to be trusted (a walk that ran over a page's end).
        sound = 0
        while sound < min(len(page_ends), len(expected)) and page_ends[sound] == expected[sound]:
            sound += 1
        del hits[bisect_left(hits, start + (sound << PAGE_SHIFT)):]
    if start:
        hits = list(map(sub, hits, repeat(start)))
    return sound, list(map(rshift, hits, repeat(BLOCK_SHIFT)))

# A chunk from its BlockSize byte to the next header's BlockSize byte, by that byte (1-255): the
# chunk, then the next header's PreviousSize (the same BlockSize, a literal, so no backreference)
# and PoolIndex; or, for a page's last chunk, the chunk alone, where a PreviousSize of 0 or the
# text's end follows. The alternative whose BlockSize matches never fails on a sound chain, so
# the engine does not go on trying the others. The engine tries the alternatives in order, and
# rejects one whose BlockSize differs on its first byte (about 1 ns each, more for those far into
# the pattern): ``sizes``, the sizes a pool holds most (see ``PoolFinder.common_sizes``), come
# first, each as a chunk followed by a header only (no inner alternative for a page's end: one
# step of the engine less per chunk); a page's last chunk of such a size fails there and is
# matched by the full alternatives after them. Any order matches the same: alternatives for two
# sizes differ in their first byte, a common size's short one matches exactly what the first
# branch of its full one matches, and a walk never backtracks into a chunk it took. The chunk's
# body is skipped possessively (``.{n}+``: a fixed count, one step of the engine).
def _units(sizes: tuple = ()) -> bytes:
    def chunk(size: int) -> bytes:
        return re.escape(bytes([size])) + b".{%d}+" % ((size << BLOCK_SHIFT) - 3)

    order = [*sizes, *(size for size in range(1, 256) if size not in sizes)]
    common = [chunk(size) + re.escape(bytes([size])) + b"." for size in sizes]
    every = [chunk(size) + b"(?:" + re.escape(bytes([size])) + b".|(?=\\x00|\\Z))" for size in order]
    return b"(?:" + b"|".join(common + every) + b")"


def header_step_regex(allowed, tag_regex: bytes, sizes: tuple = ()) -> re.Pattern:
    """A regex that walks header chains in the engine, stopping before each header whose tag
    ``tag_regex`` matches, and needs no group: its steps' ends say everything (``_step_pages``).

    Each chunk is matched from its BlockSize byte to the next header's (``_units``, ``sizes`` first), after a
    look at its header: a BlockSize that is not 0, a PoolType ``allowed`` (a table by byte).
    A step starts at a page's first header (its PreviousSize 0 and PoolIndex taken first) or
    at a header of the tag (where the step before stopped), takes that chunk, then chunks while
    the next is not of the tag and has a BlockSize. A page whose first header is of the tag
    (with a BlockSize and a PoolType allowed) is a step of its own, its PreviousSize and
    PoolIndex: it stops before that header as before any other of the tag, so every hit is a
    step's end, in order. The engine cannot see pages: the caller checks that the steps ended
    exactly at every page's end and that the other ends are headers of the tag (``_step_pages``).
    """
    types = b"[" + b"".join(re.escape(bytes([t])) for t in range(256) if allowed[t]) + b"]"
    units = _units(sizes)
    return re.compile(b"\\x00.(?=[^\\x00]" + types + b"(?:" + tag_regex + b"))"
                      b"|(?:\\x00.|)(?=." + types + b")" + units + b"(?:(?=[^\\x00]" + types + b"(?!" + tag_regex +
                      b"))" + units + b")*+", re.DOTALL)


def _step_pages(stepper: re.Pattern, buffer: bytearray, length: int) -> list | None:
    """The walk (``header_step_regex``) of the pages of ``buffer`` up to ``length``: the blocks
    of the headers whose tag matches, in order, when every page's chain is valid; else None
    (then a slower walk finds which page is not, see ``PoolFinder._search_window``)."""
    walked = _step_walk(stepper, buffer, length)
    return None if walked is None else walked[0]


def _step_walk(stepper: re.Pattern, buffer: bytearray, length: int) -> tuple[list, int] | None:
    """``_step_pages``' blocks, and the same as ``ulong_lanes``' integer.

    A step of a sound chain ends at a page's end (a multiple of the page size), or at the
    BlockSize byte of a header of the tag (2 bytes into a block). The chains are all valid when
    the steps reached ``length``, ended at every page's end, every other end is 2 bytes into a
    block, and every page's first PreviousSize is 0. Nothing else need be looked at: a step
    that stops where the chain breaks (a BlockSize of 0, a PoolType not allowed, a PreviousSize
    that is not the chunk's size, or of 0 inside a page) ends at the next header's start or its
    BlockSize, and the step after it either fails there (so the steps do not reach ``length``)
    or takes that header's first two bytes as a page's start (``\\x00.``) and ends 2 bytes
    further into the block, 4 bytes into it, or 14 (a page's last chunk).

    The ends are checked, and the page ends dropped, on all of them at once (``ulong_lanes``):
    ``inside`` has 1 in the lane of each end inside a page (one whose low 12 bits, plus 0xFFF,
    reach bit 12), 0 in a page end's. The page ends' lanes are then set to all ones and cut out
    of the lanes' bytes with one ``bytes.replace``: a block number's lane has a top byte below
    0x10, so 4 bytes of 0xFF never start inside one, nor run into one."""
    ends = array(_ULONG, map(_Match.end, iter(stepper.scanner(buffer, 0, length).match, None)))
    count = len(ends)
    if not count or ends[-1] != length or any(buffer[0:length:PAGE_SIZE]):
        return None
    lanes, ones = int.from_bytes(ends, sys.byteorder), lane_ones(count)
    inside = (((lanes & (ones * (PAGE_SIZE - 1))) + ones * (PAGE_SIZE - 1)) >> PAGE_SHIFT) & ones
    if count - inside.bit_count() != length >> PAGE_SHIFT or \
            lanes & (ones * (BLOCK - 1)) != inside * POOL_HEADER.BlockSize:  # the stops 2 bytes into their blocks
        return None
    blocks = ((lanes >> BLOCK_SHIFT) & (ones * (0xFFFFFFFF >> BLOCK_SHIFT))) | lanes_of_ones(ones - inside, 32)
    kept = blocks.to_bytes(count << 2, sys.byteorder).replace(_ALL_ONES, b"")
    return array(_ULONG, kept).tolist(), int.from_bytes(kept, sys.byteorder)


_ULONG = next(code for code in "IL" if array(code).itemsize == 4)  # an array of 4-byte unsigned integers
_ALL_ONES = b"\xff" * 4


def ulong_lanes(values) -> tuple[int, int]:
    """``values`` (ints below 2**32) as one integer, a 32-bit lane each, and the integer
    with 1 in each lane: arithmetic on all of them at once, each step one C loop over the
    integer's bytes (a shift then a mask of every lane by ``ones * mask`` is a shift of every
    value; adding ``ones * n`` adds n to each), where ``map`` makes and frees an int per value.
    The caller keeps each lane below 2**32 (no carry into the next). ``lanes_list`` reads the
    values back."""
    return int.from_bytes(array(_ULONG, values), sys.byteorder), lane_ones(len(values))


def lane_ones(count: int) -> int:
    """The integer of ``count`` 32-bit lanes that each hold 1 (see ``ulong_lanes``): the
    largest made so far, shifted right past the lanes not wanted (a shift is a cheap C loop;
    converting bytes to an integer costs a dozen instructions a byte)."""
    global _LANE_ONES
    held, ones = _LANE_ONES
    if count > held:
        held = max(count, 2 * held)
        ones = int.from_bytes(array(_ULONG, (1,)) * held, sys.byteorder)
        _LANE_ONES = held, ones
    return ones >> ((held - count) << 5)


def lanes_of_ones(lanes: int, bits: int) -> int:
    """``lanes`` (each lane 0 or 1) with each 1 made ``bits`` ones: times 2**bits - 1, as a
    shift and a subtraction (a multiplier of two of the integer's 30-bit digits takes the slow
    general multiplication)."""
    return (lanes << bits) - lanes


_LANE_ONES = (0, 0)  # (lanes, the integer): see lane_ones


def lanes_array(lanes: int, count: int) -> array:
    """The ``count`` values of ``ulong_lanes``' integer ``lanes``, as an array of ULONGs."""
    return array(_ULONG, lanes.to_bytes(count << 2, sys.byteorder))


def lanes_list(lanes: int, count: int) -> list:
    """The ``count`` values of ``ulong_lanes``' integer ``lanes``, as a list."""
    return lanes_array(lanes, count).tolist()


# A tag found this often (hits per page) in a window is looked for in the next window by
# walking every page; a rarer one by searching the bytes first (see PoolFinder.scan).
DENSE_HITS_PER_PAGE = 0.25
WINDOW_PAGES = 4096  # pages read at a time (16 MiB): memory stays bounded whatever the dump
BATCH_PAGES = 2048  # pages of windows in a batch, the share of work a forked worker takes at a time
_ALL_TAGS_PATTERN = re.compile(r"[*?]*")


SIZE_SAMPLE_PAGES = 64  # a pool's first pages whose chains say which chunk sizes it holds most
COMMON_SIZES = 16  # of those, the most found, tried first by the step walk (see _units)


@lru_cache(maxsize=16)
def _searchers(allowed: tuple, pattern: str, sizes: tuple = ()) -> tuple:
    every, regex, plan, walker, stepper = _lazy_searchers(allowed, pattern, sizes)
    return every, regex, plan, walker and walker.compiled(), stepper and stepper.compiled()


@lru_cache(maxsize=16)
def _lazy_searchers(allowed: tuple, pattern: str, sizes: tuple = ()) -> tuple:
    """``_searchers``, the walks' regexes compiled when a scan first uses them (``_Compiled``)."""
    every = _ALL_TAGS_PATTERN.fullmatch(pattern) is not None
    regex = None if every else tag_bytes_regex(pattern)
    plan = None if every else search_plan(pattern)
    walker = None if every else _Compiled(header_walk_regex, allowed, regex.pattern)
    stepper = None if every else _Compiled(header_step_regex, allowed, regex.pattern, sizes)
    return every, regex, plan, walker, stepper


class _Compiled:
    """A walk's regex, compiled the first time a scan uses it (``scanner``, ``groupindex``): a
    scan may need neither walk (a rare tag found nowhere; the page-by-page walk only where a
    chain is corrupt), and compiling one takes 10 to 30 ms, most of a small scan in a fresh
    ``ntpool kd``."""

    def __init__(self, make, *arguments):
        self.make, self.arguments, self.regex = make, arguments, None

    def compiled(self) -> re.Pattern:
        if self.regex is None:
            self.regex = self.make(*self.arguments)
        return self.regex

    def scanner(self, *arguments):
        return self.compiled().scanner(*arguments)

    @property
    def groupindex(self):
        return self.compiled().groupindex


def tag_blocks(regex: re.Pattern, data, plan: tuple[re.Pattern, int] | None) -> list[int]:
    """The 16-byte blocks of ``data`` whose tag (bytes 4-7) the regex matches.

    With a search plan (a literal tag byte at one place) its regex runs over the bytes as they
    are (the engine skips to that byte quickly) and matches where that byte of a tag sits are
    kept; otherwise ``regex`` runs over the tags alone, copied out (a quarter of the bytes).
    """
    if plan is not None:
        regex, skip = plan
        return _aligned_matches(regex, data, BLOCK, POOL_HEADER.PoolTag + skip)
    return _aligned_matches(regex, memoryview(data).cast("I")[1::4].tobytes(), 4, 0)


def _aligned_matches(regex: re.Pattern, text, stride: int, at: int) -> list[int]:
    """``(position - at) // stride`` of the regex's matches in ``text`` that start ``at`` bytes
    into a ``stride``-byte record. Matches elsewhere are not tags, but one may overlap a tag's
    match and hide it from a non-overlapping pass: then the search goes match by match."""
    positions = list(map(_Match.start, regex.finditer(text)))
    if any(map((stride - 1).__and__, map(sub, positions, repeat(at)))):
        positions = []
        search = regex.search
        position = 0
        while (match := search(text, position)) is not None:
            position = match.start()
            if (position - at) % stride == 0:
                positions.append(position)
            position += 1
    return [position // stride for position in positions]


def _cut(va: int, offset: int, count: int, limit: int):
    """A run in pieces of at most ``limit`` pages."""
    for done in range(0, count, limit):
        yield va + (done << PAGE_SHIFT), offset + (done << PAGE_SHIFT), min(limit, count - done)


class PoolFinder:
    """``!poolfind``'s search of one pool of a dump.

    The pool's pages are found through the dump's page tables (pages inside big allocations
    left out) and read a window at a time into one reused buffer, in address order, so the
    results come out sorted and can be printed while the scan goes on. ``scan`` yields each
    window's hits; ``find`` collects them as ``Chunk``s.
    """

    def __init__(self, reader: DumpReader, pool: PoolRange, big_pages: BigPageIndex):
        self.reader = reader
        self.pool = pool
        self.big_pages = big_pages
        self._allowed = tuple(t == 0 or bool(pool_type_fits(t, pool.base_type)) for t in range(256))
        self.corrupt_pages: list[int] = []  # pages of the last search with hits but a bad chain
        self.salvaged: set[int] = set()  # chunks of the last search found on such pages
        self.back_traces: list[int] = []  # AllocatorBackTraceIndex of each chunk found, in order
        self.batch = 0  # of the window the last scan is at (see scan)
        self._common_sizes: tuple | None = None

    def runs(self) -> Iterator[tuple[int, int, int]]:
        """(first page va, its file offset, pages): the pool's mapped pages outside big
        allocations, in address order, grouped where both address and file offset follow on,
        at most WINDOW_PAGES at a time. A file page mapped twice is scanned once."""
        limit = WINDOW_PAGES
        seen = bytearray((self.reader.size >> PAGE_SHIFT) + 1)
        first_va = first_offset = count = 0
        for va, offset, pages in self._pool_runs(seen):
            if count and va == first_va + (count << PAGE_SHIFT) and \
                    offset == first_offset + (count << PAGE_SHIFT):
                count += pages  # joins the run before it
            else:
                if count:
                    yield from _cut(first_va, first_offset, count, limit)
                first_va, first_offset, count = va, offset, pages
        if count:
            yield from _cut(first_va, first_offset, count, limit)

    def _pool_runs(self, seen: bytearray):
        """The page tables' runs in the pool, less big allocations' pages and pages already
        seen at another address (then page by page)."""
        for va, offset, count in self.reader.mapped_runs(self.pool.start, self.pool.end):
            for part_va, part_count in self.big_pages.outside(va, count):
                part_offset = offset + (part_va - va)
                index = part_offset >> PAGE_SHIFT
                if seen.find(1, index, index + part_count) < 0:
                    seen[index:index + part_count] = b"\x01" * part_count
                    yield part_va, part_offset, part_count
                    continue
                for page in range(part_count):
                    if not seen[index + page]:
                        seen[index + page] = 1
                        yield part_va + (page << PAGE_SHIFT), part_offset + (page << PAGE_SHIFT), 1

    def searchers(self, pattern: str) -> tuple:
        """(every tag, tag regex, search plan, walker, stepper) for ``pattern``: compiled once
        (the walks' regexes take milliseconds), before forked workers share a scan."""
        if _ALL_TAGS_PATTERN.fullmatch(pattern) is not None:
            return _searchers(self._allowed, pattern)  # walked chunk by chunk in Python: no stepper
        return _searchers(self._allowed, pattern, self.common_sizes())

    def common_sizes(self) -> tuple:
        """The chunk sizes (BlockSize) the pool's first SIZE_SAMPLE_PAGES pages with a valid
        chain hold most, most first (ties: the smaller first), at most COMMON_SIZES: the order
        the step walk tries sizes in. Speed only: in any order it finds the same chunks. Found
        once per pool; a dump that fails while being read here just leaves the order as it is
        (the scan meets the error at its place)."""
        if self._common_sizes is None:
            counts = [0] * 256
            try:
                taken = 0
                for _va, offset, count in self.runs():
                    count = min(count, SIZE_SAMPLE_PAGES - taken)
                    buffer = bytearray(count << PAGE_SHIFT)
                    self.reader.read_file_into(offset, memoryview(buffer))
                    fields = _block_bytes(buffer, len(buffer))
                    for page in range(count):
                        for block in _page_chain(*fields, page << 8, self._allowed) or ():
                            counts[fields[1][(page << 8) + block]] += 1
                    taken += count
                    if taken >= SIZE_SAMPLE_PAGES:
                        break
            except Exception:  # noqa: BLE001 - whatever it is, the scan raises it at its place
                pass
            found = sorted((size for size in range(1, 256) if counts[size]), key=lambda size: (-counts[size], size))
            self._common_sizes = tuple(found[:COMMON_SIZES])
        return self._common_sizes

    def holds_pages(self, pages: int) -> bool:
        """Whether the scan would read at least ``pages`` pages (the runs counted only so far;
        False when finding them fails first: the scan meets that error at its place)."""
        held = 0
        try:
            for _va, _offset, count in self.runs():
                held += count
                if held >= pages:
                    return True
        except Exception:  # noqa: BLE001 - whatever it is, the scan raises it after what comes before
            return False
        return pages <= 0

    def scan(self, pattern: str, take=None) -> Iterator[Window]:
        """Each window's chunks whose tag matches ``pattern`` (``*`` and ``?`` wildcards).

        ``corrupt_pages`` is complete once the generator is exhausted. A hit is a header: on a
        page whose whole chain is valid, or one of the headers a corrupt page's salvage trusts.

        The windows come in batches of about BATCH_PAGES pages (runs in order, a batch closed
        once it holds that many), numbered from 0; with ``take``, only the windows of the
        batches ``take(number)`` accepts are read (forked workers share a scan so: see
        ``forked``). ``batch`` is the batch being made; an error finding the runs is raised
        only when ``take`` accepts the batch it falls in (else the scan ends there).
        """
        sizes = () if _ALL_TAGS_PATTERN.fullmatch(pattern) is not None else self.common_sizes()
        every, regex, plan, walker, stepper = _lazy_searchers(self._allowed, pattern, sizes)
        self.corrupt_pages = corrupt = []
        buffer = bytearray()
        read = self.reader.read_file_into
        # whether to walk every page of the next window: when the last window had many hits, or
        # when the bytes cannot be searched fast (no literal byte at one place: see search_plan)
        dense = plan is None
        runs = self.runs()
        batch = held = 0  # the batch, the pages it holds
        self.batch = 0
        while True:
            try:
                run = next(runs, None)
            except Exception:
                self.batch = batch + (held >= BATCH_PAGES)
                if take is None or take(self.batch):
                    raise
                return
            if run is None:
                return
            va, offset, count = run
            if held >= BATCH_PAGES:
                batch, held = batch + 1, 0
            held += count
            self.batch = batch
            if take is not None and not take(batch):
                continue
            length = count << PAGE_SHIFT
            if len(buffer) < length:  # grown as runs need, up to a window
                buffer = bytearray(min(max(length, 2 * len(buffer)), WINDOW_PAGES << PAGE_SHIFT))
            data = memoryview(buffer)[:length]
            read(offset, data)
            if every:
                pages = self._walk_window(buffer, data, va, count, corrupt)
            else:
                if dense:
                    pages = self._search_window(buffer, data, va, count, regex, plan, walker, corrupt, stepper)
                else:
                    pages = self._search_candidates(buffer, data, va, regex, plan, walker, corrupt)
                dense = plan is None or sum(len(page.blocks) for page in pages) >= count * DENSE_HITS_PER_PAGE
            yield Window(va, data, pages, batch)

    def _walk_window(self, buffer: bytearray, data: memoryview, va: int, count: int,
                     corrupt: list) -> list[PageHits]:
        """Every chunk of every page whose chain can be trusted (wholly, or salvaged)."""
        fields = _block_bytes(buffer, len(data))
        pages = []
        for page in range(count):
            page_va = va + (page << PAGE_SHIFT)
            blocks = _page_chain(*fields, page << 8, self._allowed)
            if blocks is not None:
                pages.append(PageHits(page_va, page << 8, blocks, False))
                continue
            corrupt.append(page_va)
            blocks = self._salvage(data, page)
            if blocks:
                pages.append(PageHits(page_va, page << 8, blocks, True))
        return pages

    def _salvage(self, data, page: int) -> list:
        salvaged = salvaged_header_offsets(data, page << PAGE_SHIFT, self.pool.base_type)
        return [offset >> BLOCK_SHIFT for offset in sorted(salvaged)]

    def _search_window(self, buffer: bytearray, data: memoryview, va: int, count: int, regex: re.Pattern,
                       plan, walker: re.Pattern, corrupt: list, stepper: re.Pattern | None = None) -> list[PageHits]:
        """The chunks whose header's tag matches: the walk of every page's chain in the engine,
        the whole window at once (``header_step_regex``); when some page's chain is not valid,
        one stretch of sound pages at a time (``header_walk_regex``); a page where that walk
        fails is searched on its own (``_search_page``), and the walk goes on after it."""
        pages: list[PageHits] = []
        length = count << PAGE_SHIFT
        if stepper is not None:
            walked = _step_walk(stepper, buffer, length)
            if walked is not None:
                return [PageHits(va, 0, walked[0], False, walked[1])] if walked[0] else []
        start = 0
        while start < length:
            sound, blocks = _walk_pages(walker, buffer, start, length)
            if blocks:
                pages.append(PageHits(va + start, start >> BLOCK_SHIFT, blocks, False))
            start += sound << PAGE_SHIFT
            if start < length:
                hits = self._search_page(buffer, data, va, start >> PAGE_SHIFT, regex, plan, corrupt)
                if hits is not None:
                    pages.append(hits)
                start += PAGE_SIZE
        return pages

    def _search_candidates(self, buffer: bytearray, data: memoryview, va: int, regex: re.Pattern,
                           plan, walker: re.Pattern, corrupt: list) -> list[PageHits]:
        """The same as ``_search_window`` for a rare tag: the blocks whose tag matches
        (``tag_blocks``: the engine skips ahead through the bytes faster than it walks), then
        the walk of those pages only."""
        pages: list[PageHits] = []
        blocks = tag_blocks(regex, data, plan)
        for page in dict.fromkeys(map(rshift, blocks, repeat(8))):  # each page once, in order
            at = page << PAGE_SHIFT
            sound, found = _walk_pages(walker, buffer, at, at + PAGE_SIZE)
            if sound:
                if found:
                    pages.append(PageHits(va + at, page << 8, found, False))
            elif (hits := self._search_page(buffer, data, va, page, regex, plan, corrupt)) is not None:
                pages.append(hits)
        return pages

    def _search_page(self, buffer: bytearray, data: memoryview, va: int, page: int, regex: re.Pattern,
                     plan, corrupt: list) -> PageHits | None:
        """One page's chunks whose header's tag matches, found as the walk cannot: the blocks
        whose tag matches (``tag_blocks``), then the page's chain, or its salvage when the chain
        is corrupt (the page is then listed in ``corrupt``)."""
        at = page << PAGE_SHIFT
        blocks = tag_blocks(regex, data[at:at + PAGE_SIZE], plan)
        if not blocks:
            return None
        chain = _page_chain(*_block_bytes(buffer[at:at + PAGE_SIZE], PAGE_SIZE), 0, self._allowed)
        hits = PageHits(va + at, page << 8, [], chain is None)
        if chain is None:
            corrupt.append(hits.va)
            chain = self._salvage(data, page)
        starts = set(chain)
        hits.blocks.extend(block for block in blocks if block in starts)
        return hits if hits.blocks else None

    def find(self, pattern: str) -> list[Chunk]:
        """The whole result as a list (``back_traces`` and ``salvaged`` beside it)."""
        hits, traces, salvaged = [], [], set()
        unpack = _HEADER_AND_TRACE.unpack_from
        make = Chunk._make
        for window in self.scan(pattern):
            data = window.data
            for page in window.pages:
                for block in page.blocks:
                    prev, index, size, pool_type, tag, trace = unpack(data, (page.first + block) << BLOCK_SHIFT)
                    address = page.va + (block << BLOCK_SHIFT)
                    hits.append(make((address, prev, index, size, pool_type, tag)))
                    traces.append(trace)
                    if page.salvaged:
                        salvaged.add(address)
        self.back_traces = traces
        self.salvaged = salvaged
        return hits


class CallSites:
    """The call-site number of each chunk a scan finds: ntpool's allocation-site table's (a
    window's at once, inflated forward as the scan goes), else (an older dump) the header's
    AllocatorBackTraceIndex. Read them for allocated chunks only: a free one's are stale."""

    def __init__(self, reader: DumpReader):
        self.reader = reader

    def window(self, window: Window):
        """Every block's site, indexable by the window's block number; None when no single
        table holds the whole window (then ask ``one`` chunk by chunk)."""
        tables = self.reader.allocation_site_streams()
        if not tables:  # an older dump: the header names the site
            return _back_trace_indexes(window.data)
        blocks = len(window.data) >> BLOCK_SHIFT
        for base, declared, stream in tables:
            first = (window.va - base) >> BLOCK_SHIFT
            if first + blocks <= 0 or first >= declared:
                continue  # this table does not reach the window
            if first < 0 or first + blocks > declared:
                return None
            try:
                return stream.sites(first, blocks)
            except zlib.error:
                return None
        return None

    def window_units(self, window: Window) -> tuple:
        """(sites, shift): the window's sites indexable by its block number >> shift: per
        32-byte unit (shift 1) when the table holds them so (NTA2), saving their expansion to
        a site per block; else ``window``'s (shift 0, or None)."""
        tables = self.reader.allocation_site_streams()
        blocks = len(window.data) >> BLOCK_SHIFT
        for base, declared, stream in tables:
            first = (window.va - base) >> BLOCK_SHIFT
            if first + blocks <= 0 or first >= declared:
                continue
            if hasattr(stream, "units") and 0 <= first and first + blocks <= declared and not first & 1:
                try:
                    return stream.units(first, blocks), 1
                except zlib.error:
                    return None, 0
            break
        return self.window(window), 0

    def one(self, address: int, data, block: int) -> int:
        """The site of the chunk whose header is at ``address`` (block ``block`` of ``data``)."""
        recorded = self.reader.allocation_site(address)
        if recorded is not None:
            return recorded
        return int.from_bytes(data[(block << BLOCK_SHIFT) + 8:(block << BLOCK_SHIFT) + 10], "little")


def _back_trace_indexes(data):
    """Each 16-byte block's bytes 8-9 (AllocatorBackTraceIndex) as a little-endian USHORT."""
    if sys.byteorder == "little":
        return memoryview(data).cast("H")[4::8]
    return [trace for trace, in struct.iter_unpack("<8xH6x", data)]


def read_page_report(reader: DumpReader, va: int, base_type: int) -> PageReport:
    """The page holding ``va``, walked and checked (MemoryReadError when not in the dump)."""
    page_va = va & ~(PAGE_SIZE - 1)
    return examine_page(reader.page(page_va), page_va, base_type)


__all__ = ["BigPageIndex", "CallSites", "MemoryReadError", "PageHits", "PageReport", "PoolFinder", "Window", "chunk_containing",
           "examine_page", "read_page_report", "shows_one_tag", "tag_bytes_regex", "tag_display_matches"]
