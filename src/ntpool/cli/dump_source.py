"""A crash dump as a source for poolmon, poolsnap, pictures and reports: one moment.

Everything comes from the file through the dump reader: the tracker table for poolmon's
rows, the page tables and the big page table for the page map, the header for the bug check.
"""

from pathlib import Path

from ..constants import PAGE_SIZE
from ..dump import DumpReader
from ..dump.format import KDBG_MM_NUMBER_OF_PHYSICAL_PAGES
from ..dump.reader import MemoryReadError
from ..errors import BugCheck
from ..debugger.poolscan import BigPageIndex
from ..debugger.segment_heap import SegmentHeapReader
from ..tags import display
from ..tools.pictures import BIG, FREE, RESERVED, PageStrip, Segment, small_page_strip
from ..pool.tracker import PoolTagInfo
from ..tools.poolmon import Snapshot


class DumpSource:
    kind = "dump"
    done = True
    checkpoint = 0

    def __init__(self, path: str):
        self.reader = DumpReader(path)  # DumpFormatError (a ValueError) names what is wrong
        self.name = Path(path).name
        code = self.reader.bugcheck_code
        self.bugcheck = BugCheck(code, *self.reader.bugcheck_parameters) if code else None

    def run_to(self, checkpoint=None) -> None:
        if checkpoint is not None:
            raise ValueError("a crash dump holds one moment: --checkpoint needs a scenario")

    def snapshot(self) -> Snapshot:
        rows = [PoolTagInfo(e.Key, e.PagedAllocs, e.PagedFrees, e.PagedBytes, e.NonPagedAllocs,
                            e.NonPagedFrees, e.NonPagedBytes)
                for e in self.reader.tracker_entries()]
        return Snapshot.from_pool_tags(rows, label="crash dump", source=self.name)

    def status(self) -> str:
        if self.bugcheck:
            return f"{self.name}: crash dump of bug check {self.bugcheck.code:#x} ({self.bugcheck.name})"
        return f"{self.name}: crash dump"

    def page_strips(self, pool: str = "both") -> list[PageStrip]:
        wanted = {"both": (0, 1), "nonpaged": (0,), "paged": (1,)}.get(pool)
        if wanted is None:
            raise ValueError(f"pool must be both, nonpaged or paged, got {pool!r}")
        big = BigPageIndex(self.reader.big_pages())
        strips = []
        if self.reader.segment_heap:
            return self._heap_strips(wanted, big)
        for region in self.reader.pool_ranges():
            if region.base_type not in wanted:
                continue
            for va, _offset in self.reader.mapped_pages(region.start, region.end):
                strip = big_page_strip(region.name, big, va)
                strips.append(strip if strip is not None else
                              small_page_strip(region.name, self.reader.page(va), va))
        return strips

    def machine(self) -> dict:
        """poolmon's top lines from the dump: its memory, and each pool's mapped pages."""
        reader = self.reader
        try:
            frames = int.from_bytes(reader.read(reader.kd_debugger_data_block +
                                                KDBG_MM_NUMBER_OF_PHYSICAL_PAGES, 8), "little")
        except MemoryReadError:
            frames = reader.page_count
        frames = max(frames, reader.page_count)
        pools = {0: 0, 1: 0}  # pages mapped by base type (Windows 10/11: two nonpaged heaps)
        for pool in reader.pool_ranges():
            pools[pool.base_type] += sum(1 for _ in reader.mapped_pages(pool.start, pool.end))
        commit = reader.page_count * PAGE_SIZE  # a kernel dump holds the frames in use
        return {"memory": frames * PAGE_SIZE, "available": frames * PAGE_SIZE - commit,
                "commit": commit, "peak": commit, "nonpaged": pools[0] * PAGE_SIZE,
                "paged": pools[1] * PAGE_SIZE}

    def _heap_strips(self, wanted, big: BigPageIndex) -> list[PageStrip]:
        """The segment heap's pages: blocks from its subsegments, big runs, and the rest
        (segment headers) as reserved."""
        heaps = SegmentHeapReader(self.reader)
        strips = []
        for heap in heaps.heaps:
            if heap.base_type not in wanted:
                continue
            blocks = heaps.page_blocks(heap)
            for va, _offset in self.reader.mapped_pages(heap.start, heap.end):
                strip = big_page_strip(heap.name, big, va)
                if strip is not None:
                    strips.append(strip)
                elif va in blocks:
                    strips.append(PageStrip(heap.name, va, tuple(
                        Segment(offset, length, state, display(tag) if state != FREE else "")
                        for offset, length, state, tag in sorted(blocks[va]))))
                else:
                    strips.append(PageStrip(heap.name, va, (Segment(0, PAGE_SIZE, RESERVED),)))
        return strips

    def samples(self):
        raise ValueError("a crash dump holds one moment; usage over time needs a scenario")


def big_page_strip(pool: str, big: BigPageIndex, va: int) -> PageStrip | None:
    """The strip of a mapped page that a big allocation of the dump's table holds, or None.

    Looked up page by page (the pages the dump maps), never made for every page an entry
    claims: a damaged table's NumberOfBytes may claim terabytes."""
    entry = big.containing(va)
    if entry is None:
        return None
    tag = display(entry.Key)
    note = ""
    if va == entry.Va:
        pages = max(1, -(-entry.NumberOfBytes // PAGE_SIZE))
        note = f"{tag}: {pages} page{'s' if pages > 1 else ''}"
    return PageStrip(pool, va, (Segment(0, PAGE_SIZE, BIG, tag),), note)
