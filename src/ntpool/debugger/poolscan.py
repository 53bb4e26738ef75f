"""Pool pages and chunks as a dump holds them: walking, validating, finding by tag.

A small-pool page is trusted only when its whole header chain is consistent (the same
walk the allocator's checks make, ``pool.layout.page_problems``) and every PoolType byte
is one a chunk of that pool can hold. ``find_tag`` scans the dump's bytes for the tag with
one regular-expression pass over the mapping and keeps only hits that sit where a header's
tag sits (offset 4 of a 16-byte block) in a page whose chain is valid and that has a chunk
starting there; a tag-shaped string inside a chunk's body is not a chunk. On a page whose
chain is corrupt, the headers that can still be trusted (``salvaged_header_offsets``) are
reported too, marked.
"""

import mmap
import re
import struct
from bisect import bisect_right
from typing import NamedTuple

from ..constants import PAGE_SIZE
from ..dump.reader import BigPage, DumpReader, MemoryReadError, PoolRange
from ..pool.layout import BLOCK, BLOCK_SHIFT, POOL_HEADER, Chunk, chunk_at, page_problems, \
    pool_type_fits, walk_page
from ..tags import PROTECTED_POOL


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
_HEADER_FIRST8_UNPACK = POOL_HEADER.run("PreviousSize", "PoolTag").unpack_from
_BACK_TRACE = POOL_HEADER.fields["AllocatorBackTraceIndex"].codec  # at its offset in the header
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


class BigPageIndex:
    """The big page table's allocations, sorted by address, for 'which allocation holds va'."""

    def __init__(self, entries: list[BigPage]):
        self.entries = sorted(entries)
        self.starts = [entry.Va for entry in self.entries]

    def containing(self, va: int) -> BigPage | None:
        index = bisect_right(self.starts, va) - 1
        if index >= 0:
            entry = self.entries[index]
            if va < entry.Va + max(entry.NumberOfBytes, PAGE_SIZE):
                return entry
        return None


def _expansions(pattern: str) -> list[str]:
    """Every four-character form of a pattern whose ``*`` stand for any number of '?'."""
    if "*" not in pattern:
        return [pattern.ljust(4)] if len(pattern) <= 4 else []
    head, tail = pattern.split("*", 1)
    results = []
    for count in range(0, 5):
        results += _expansions(head + "?" * count + tail)
    return sorted({r for r in results if len(r) == 4})


def tag_bytes_regex(pattern: str) -> re.Pattern:
    """Bytes regex for a tag as tools show it, the protected bit allowed in its last byte."""
    alternatives = []
    for form in _expansions(pattern):
        parts = []
        for index, ch in enumerate(form):
            if ch == "?":
                parts.append(b".")
                continue
            code = ord(ch) & 0x7F
            if index == 3:
                parts.append(b"[" + re.escape(bytes([code])) + re.escape(bytes([code | 0x80])) + b"]")
            else:
                parts.append(re.escape(bytes([code])))
        alternatives.append(b"".join(parts))
    if not alternatives:
        raise ValueError(f"tag pattern {pattern!r} cannot match a four-character tag")
    return re.compile(b"|".join(alternatives), re.DOTALL)


def tag_display_matches(regex: re.Pattern, tag_value: int) -> bool:
    return regex.match((tag_value & ~PROTECTED_POOL).to_bytes(4, "little")) is not None or \
        regex.match(tag_value.to_bytes(4, "little")) is not None


class PoolFinder:
    """``!poolfind``'s search of one pool of a dump."""

    def __init__(self, reader: DumpReader, pool: PoolRange, big_pages: BigPageIndex):
        self.reader = reader
        self.pool = pool
        self.big_pages = big_pages
        self._page_at_offset: dict[int, int] | None = None
        self.corrupt_pages: list[int] = []  # pages of the last search with hits but a bad chain
        self.salvaged: set[int] = set()  # chunks of the last search found on such pages
        self.back_traces: list[int] = []  # AllocatorBackTraceIndex of each chunk found, in order
        self._offset_of_page: dict[int, int] = {}

    def pages_by_file_offset(self) -> dict[int, int]:
        """File offset of each mapped page of the pool (outside big allocations) -> its va."""
        if self._page_at_offset is None:
            pages = {}
            for va, offset in self.reader.mapped_pages(self.pool.start, self.pool.end):
                if self.big_pages.containing(va) is None:
                    pages[offset] = va
            self._page_at_offset = pages
        return self._page_at_offset

    def find(self, pattern: str) -> list[Chunk]:
        regex = tag_bytes_regex(pattern)
        if not pattern.strip("*?"):
            return self._walk_every_page()  # every tag: walking the chains beats matching every byte
        pages = self.pages_by_file_offset()
        mapping = self.reader.mapping
        reports: dict[int, set] = {}
        hits, corrupt, salvaged = [], [], set()
        # Every page of a dump sits at the same distance from a 4 KiB boundary of the file.
        skew = self.reader.runs[0].offset & (PAGE_SIZE - 1)
        search = regex.search
        for start, end in _runs_of_pages(pages):
            # Only the pool's pages are searched, a window at a time, and let go of after:
            # a dump of many gigabytes is scanned in a bounded amount of memory.
            match = search(mapping, start, end)
            while match is not None:
                position = match.start()
                # Search on from the next byte: a match must not hide an overlapping one.
                match = search(mapping, position + 1, end)
                self._hit(mapping, position, skew, pages, reports, hits, corrupt, salvaged)
            _release(mapping, start, end)
        hits.sort()
        self.back_traces = [_BACK_TRACE.unpack_from(mapping, offset)[0]
                            for offset in (self._header_offset(chunk.address, pages) for chunk in hits)]
        self.corrupt_pages = sorted(corrupt)
        self.salvaged = salvaged
        return hits

    def _header_offset(self, address: int, pages: dict) -> int:
        page_offset = self._offset_of_page.get(address & ~(PAGE_SIZE - 1))
        if page_offset is None:
            self._offset_of_page = {va: offset for offset, va in pages.items()}
            page_offset = self._offset_of_page[address & ~(PAGE_SIZE - 1)]
        return page_offset + (address & (PAGE_SIZE - 1)) + POOL_HEADER.AllocatorBackTraceIndex

    def _hit(self, mapping, position, skew, pages, reports, hits, corrupt, salvaged) -> None:
        """Keep a tag match at ``position`` if a trustworthy header holds it there."""
        in_page = (position - skew) & (PAGE_SIZE - 1)
        if in_page & (BLOCK - 1) != POOL_HEADER.PoolTag:
            return
        page_offset = position - in_page
        page_va = pages.get(page_offset)
        if page_va is None:
            return
        starts = reports.get(page_offset)
        if starts is None:
            starts = valid_header_offsets(mapping, page_offset, self.pool.base_type)
            if starts is None:
                corrupt.append(page_va)
                starts = salvaged_header_offsets(mapping, page_offset, self.pool.base_type)
                starts = {offset: True for offset in starts}
            else:
                starts = dict.fromkeys(starts, False)
            reports[page_offset] = starts
        header = in_page - POOL_HEADER.PoolTag
        if header in starts:
            hits.append(chunk_at(mapping, page_offset + header, page_va + header))
            if starts[header]:
                salvaged.add(page_va + header)


    def _walk_every_page(self) -> list[Chunk]:
        """Every chunk of every page whose chain can be trusted (wholly, or salvaged)."""
        mapping = self.reader.mapping
        base_type = self.pool.base_type
        allowed = frozenset(t for t in range(256) if t == 0 or pool_type_fits(t, base_type))
        unpack = _HEADER_AND_TRACE.unpack_from
        make = Chunk._make
        hits, traces, corrupt, salvaged = [], [], [], set()
        walked = 0
        for page_va, page_offset in sorted((va, offset) for offset, va in
                                           self.pages_by_file_offset().items()):
            walked += 1
            if walked % RELEASE_PAGES == 0:
                _release(mapping, 0, len(mapping))
            first = len(hits)
            offset = previous = 0
            while offset < PAGE_SIZE:  # the chain, as valid_header_offsets walks it, inline
                prev, index, size, pool_type, tag, trace = unpack(mapping, page_offset + offset)
                if prev != previous or not size or offset + (size << BLOCK_SHIFT) > PAGE_SIZE or \
                        pool_type not in allowed:
                    break
                hits.append(make((page_va + offset, prev, index, size, pool_type, tag)))
                traces.append(trace)
                previous = size
                offset += size << BLOCK_SHIFT
            if offset < PAGE_SIZE:
                del hits[first:], traces[first:]
                corrupt.append(page_va)
                for offset in sorted(salvaged_header_offsets(mapping, page_offset, base_type)):
                    prev, index, size, pool_type, tag, trace = unpack(mapping, page_offset + offset)
                    hits.append(make((page_va + offset, prev, index, size, pool_type, tag)))
                    traces.append(trace)
                    salvaged.add(page_va + offset)
        self.back_traces = traces
        self.corrupt_pages = corrupt
        self.salvaged = salvaged
        return hits


RELEASE_PAGES = 4096  # pages read between two releases of the mapping (16 MiB)
WINDOW = RELEASE_PAGES * PAGE_SIZE


def _runs_of_pages(pages: dict):
    """(start, end) file ranges covering the pages (file offsets), at most WINDOW long."""
    start = end = None
    for offset in sorted(pages):
        if offset == end and end - start < WINDOW:
            end += PAGE_SIZE
            continue
        if start is not None:
            yield start, end
        start, end = offset, offset + PAGE_SIZE
    if start is not None:
        yield start, end


def _release(mapping, start: int, end: int) -> None:
    """Drop a range of the file's mapping from this process's memory (it is read again from
    the page cache if needed): scanning reads each page once."""
    first = start & ~(mmap.PAGESIZE - 1)
    length = min(end, len(mapping)) - first
    if length > 0:
        try:
            mapping.madvise(mmap.MADV_DONTNEED, first, length)
        except (AttributeError, ValueError, OSError):
            pass  # a platform without madvise: the page cache still bounds it


def read_page_report(reader: DumpReader, va: int, base_type: int) -> PageReport:
    """The page holding ``va``, walked and checked (MemoryReadError when not in the dump)."""
    page_va = va & ~(PAGE_SIZE - 1)
    return examine_page(reader.page(page_va), page_va, base_type)


__all__ = ["BigPageIndex", "MemoryReadError", "PageReport", "PoolFinder", "chunk_containing",
           "examine_page", "read_page_report", "tag_bytes_regex", "tag_display_matches"]
