"""The kernel segment heap read out of a crash dump: what ``!pool`` and ``!poolfind`` need.

A Windows 10/11 dump records (in ntpool's NTPL block) where ExPoolState and each heap's
segments lie. The heap keys are read from RtlpHpHeapGlobals through ExPoolState, as
WinDbg would; the page range descriptors say which runs are LFH or VS subsegments; LFH
blocks are found from the subsegment's encoded BlockOffsets and its bitmap, VS chunks by
walking their encoded headers. Only the layouts module knows an offset.
"""

from typing import Iterator, NamedTuple

from ..dump.reader import DumpReader, HeapRange, MemoryReadError
from ..pool.segment_heap.layout import (
    DESCRIPTOR_RANGE_FLAGS,
    DESCRIPTOR_SIZE,
    DESCRIPTOR_UNIT,
    DWORD,
    HEAP_GLOBALS,
    LFH_BITMAP,
    LFH_BLOCK_OFFSETS,
    LFH_MAX_BLOCK,
    POOL_HEADER,
    QWORD,
    RANGE_LFH,
    RANGE_VS,
    SEGMENT_HEADER_PAGES,
    SEGMENT_PAGES,
    SEGMENT_SIZE,
    VS_HEADER_SIZE,
    VS_SUBSEGMENT_HEADER,
    decode_lfh_block_offsets,
    decode_vs_bits,
    lfh_block_layout,
)

PAGE = 0x1000


class HeapBlock(NamedTuple):
    """One LFH block or VS chunk, as ``!pool`` lists it."""

    address: int  # its POOL_HEADER (a free VS chunk: its chunk header; Big: its data)
    size: int  # bytes from ``address``
    state: str  # Allocated, Free
    tag: int
    pool_type: int
    backend: str  # Lfh, Vs, Big (a VS chunk holding a big allocation: no POOL_HEADER)
    previous_size: int = 0  # the POOL_HEADER's PreviousSize (!pool prints it)

    @property
    def body(self) -> int:
        """Where the caller's bytes start (after the POOL_HEADER; a free VS chunk's header)."""
        return self.address if self.backend == "Big" else self.address + 0x10


class SegmentHeapReader:
    def __init__(self, reader: DumpReader):
        self.reader = reader
        data = reader.debugger_data()
        try:
            manager = reader.read_u64(data["PoolState"])
            self.heap_key, self.lfh_key = HEAP_GLOBALS.unpack(reader.read(manager, HEAP_GLOBALS.size))
        except MemoryReadError:
            reader._fail("ExPoolState or RtlpHpHeapGlobals is not in the dump: the heap keys "
                         "cannot be read")
        self.heaps = reader.heap_ranges()
        self._big: dict | None = None

    def big_allocations(self) -> dict:
        """Va -> entry of the big page table: VS chunks holding these have no POOL_HEADER."""
        if self._big is None:
            self._big = {entry.Va: entry for entry in self.reader.big_pages()}
        return self._big

    def heap_of(self, va: int) -> HeapRange | None:
        for heap in self.heaps:
            if heap.start <= va < heap.end:
                return heap
        return None

    # --- runs of pages --------------------------------------------------------------------

    def _segment(self, heap: HeapRange, va: int) -> int:
        return heap.start + (va - heap.start) // SEGMENT_SIZE * SEGMENT_SIZE

    def run_of(self, va: int) -> tuple[int, int, int] | None:
        """(first page, RangeFlags, pages) of the LFH/VS run holding ``va``; None otherwise."""
        heap = self.heap_of(va)
        if heap is None:
            return None
        segment = self._segment(heap, va)
        page = (va - segment) >> 12
        if page < SEGMENT_HEADER_PAGES:
            return None
        try:
            raw = self.reader.read(segment + page * DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)
            flags, unit = raw[DESCRIPTOR_RANGE_FLAGS], raw[DESCRIPTOR_UNIT]
            if not flags and unit and unit <= page - SEGMENT_HEADER_PAGES:
                page -= unit
                raw = self.reader.read(segment + page * DESCRIPTOR_SIZE, DESCRIPTOR_SIZE)
                flags, unit = raw[DESCRIPTOR_RANGE_FLAGS], raw[DESCRIPTOR_UNIT]
        except MemoryReadError:
            return None
        if flags not in (RANGE_LFH, RANGE_VS) or not unit:
            return None
        return segment + (page << 12), flags, unit

    def segments(self, heap: HeapRange) -> list[int]:
        """The segments of a heap whose first page the dump maps (found by walking the page
        tables, so a lying heap range of any width costs no more than the dump's pages)."""
        return [va for va, _ in self.reader.mapped_pages(heap.start, heap.end)
                if not (va - heap.start) % SEGMENT_SIZE]

    def runs(self, heap: HeapRange) -> Iterator[tuple[int, int, int]]:
        """Every LFH and VS run of a heap, from the page range descriptors of its segments."""
        for segment in self.segments(heap):
            try:
                table = self.reader.read(segment, SEGMENT_PAGES * DESCRIPTOR_SIZE)
            except MemoryReadError:
                continue
            page = SEGMENT_HEADER_PAGES
            while page < SEGMENT_PAGES:
                at = page * DESCRIPTOR_SIZE
                flags, unit = table[at + DESCRIPTOR_RANGE_FLAGS], table[at + DESCRIPTOR_UNIT]
                if flags in (RANGE_LFH, RANGE_VS) and unit:
                    yield segment + (page << 12), flags, unit
                page += unit if flags and unit else 1

    # --- blocks -------------------------------------------------------------------------------

    def blocks(self, run: tuple[int, int, int], problems: list[str]) -> Iterator[HeapBlock]:
        start, flags, pages = run
        try:
            if flags == RANGE_LFH:
                yield from self._lfh_blocks(start, pages, problems)
            else:
                yield from self._vs_blocks(start, pages, problems)
        except MemoryReadError as error:
            problems.append(f"{start:016x}: part of the subsegment is not in the dump ({error})")

    def _pool_header(self, address: int):
        return POOL_HEADER.unpack_from(self.reader.read(address, POOL_HEADER.size))

    def _lfh_blocks(self, start: int, pages: int, problems: list[str]) -> Iterator[HeapBlock]:
        encoded = DWORD.unpack(self.reader.read(start + LFH_BLOCK_OFFSETS, 4))[0]
        block_size, first = decode_lfh_block_offsets(encoded, start, self.lfh_key)
        if not 16 <= block_size <= LFH_MAX_BLOCK or block_size & 15:
            problems.append(f"{start:016x}: LFH subsegment BlockOffsets do not decode "
                            f"(block size {block_size:#x})")
            return
        _, offsets = lfh_block_layout(block_size, pages)
        bitmap = self.reader.read(start + LFH_BITMAP, (len(offsets) * 2 + 7) // 8)
        for index, offset in enumerate(offsets):
            bits = (bitmap[index >> 2] >> ((index & 3) << 1)) & 3
            header = self._pool_header(start + offset)
            state = "Allocated" if bits == 1 else "Free"
            if bits > 1:
                problems.append(f"{start + offset:016x}: LFH bitmap state {bits:#04b}")
            yield HeapBlock(start + offset, block_size, state, header.PoolTag, header.PoolType, "Lfh",
                            header.PreviousSize)

    def _vs_blocks(self, start: int, pages: int, problems: list[str]) -> Iterator[HeapBlock]:
        end = start + pages * PAGE
        chunk = start + VS_SUBSEGMENT_HEADER
        while chunk < end:
            encoded = QWORD.unpack(self.reader.read(chunk, 8))[0]
            _, size, _, allocated = decode_vs_bits(encoded, chunk, self.heap_key)
            if size == 0 or chunk + (size << 4) > end:
                problems.append(f"{chunk:016x}: VS chunk header does not decode with the heap key "
                                f"(size {size:#x}): overwritten")
                return
            body = chunk + VS_HEADER_SIZE
            big = self.big_allocations().get(body) if allocated and not body & (PAGE - 1) else None
            if big is not None:  # 0xFE1 .. 128 KiB: page-aligned data, the tag in the table
                yield HeapBlock(body, (size << 4) - VS_HEADER_SIZE, "Allocated", big.Key,
                                big.PoolType, "Big")
            elif allocated:
                header = self._pool_header(body)
                yield HeapBlock(body, (size << 4) - VS_HEADER_SIZE, "Allocated",
                                header.PoolTag, header.PoolType, "Vs", header.PreviousSize)
            else:
                yield HeapBlock(chunk, size << 4, "Free", 0, 0, "Vs")
            chunk += size << 4

    def around(self, va: int) -> tuple[list[HeapBlock], list[str]] | None:
        """The blocks of the subsegment holding ``va`` and what did not decode; None when
        ``va`` is in no LFH or VS subsegment."""
        run = self.run_of(va)
        if run is None:
            return None
        problems: list[str] = []
        return list(self.blocks(run, problems)), problems

    def find(self, heaps, matches, free: bool = False) -> Iterator[HeapBlock]:
        """Allocated blocks of ``heaps`` whose tag ``matches`` (not the big allocations VS
        chunks hold: the big page table lists those); with ``free``, free LFH blocks too whose
        stale POOL_HEADER still holds a matching tag (as Windows 7's !poolfind lists free
        chunks: the bitmap says they are free, the header says whose they were)."""
        for heap in heaps:
            for run in self.runs(heap):
                for block in self.blocks(run, []):
                    if block.backend == "Big" or not matches(block.tag):
                        continue
                    if block.state == "Allocated" or (free and block.backend == "Lfh" and block.tag):
                        yield block


    def page_blocks(self, heap: HeapRange) -> dict[int, list[tuple[int, int, str, int]]]:
        """Page address -> (offset, length, state, tag) of the blocks on it, clipped to the
        page, for every LFH and VS page of ``heap`` (the page map)."""
        pages: dict[int, list[tuple[int, int, str, int]]] = {}
        for run in self.runs(heap):
            start, _, count = run
            for page in range(start, start + count * PAGE, PAGE):
                pages[page] = []
            for block in self.blocks(run, []):
                at, end = block.address, block.address + block.size
                if block.backend in ("Vs", "Big") and block.state == "Allocated":
                    at -= VS_HEADER_SIZE  # the chunk's own header belongs to it
                while at < end:
                    page = at & ~(PAGE - 1)
                    stop = min(end, page + PAGE)
                    if page in pages:
                        pages[page].append((at - page, stop - at, block.state, block.tag))
                    at = stop
        return pages


def block_containing(blocks: list[HeapBlock], va: int) -> HeapBlock | None:
    for block in blocks:
        if block.address <= va < block.address + block.size:
            return block
    return None
