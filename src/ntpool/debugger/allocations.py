"""Who holds what in a dump: special pool allocations, and outstanding allocations by driver.

Special pool (Driver Verifier's) lives in its own region: each allocation alone on a page,
its 16-byte header (size u16, flags u8, PoolType u8, Tag u32, call site u64) at the far end
of the page from the allocation; freed allocations and guard pages are unmapped.

Outstanding allocations are listed as ``!verifier 3`` lists them: from Driver Verifier's
pool tracking list in the dump when pool tracking was on; otherwise every allocated chunk
whose AllocatorBackTraceIndex (header bytes 8-9; ProcessBilled for quota chunks, which are
skipped) names a call site of the driver, plus its special pool allocations. Without the
list, big allocations (no header) are not attributed and chunks cached on a lookaside
(which keep their in-use marking) cannot be told from allocated ones.
"""

import struct
from typing import Iterator, NamedTuple

from ..constants import PAGE_SIZE
from ..dump.reader import DumpReader, MemoryReadError
from ..pool.layout import BLOCK, BLOCK_SHIFT, HEADER_FIRST8, HEADER_SIZE, POOL_HEADER, POOL_IN_USE, \
    POOL_QUOTA, POOL_TYPE_BASE_MASK
from ..verifier.special_pool import FLAG_UNDERRUN, SLOT_SIZE, SPECIAL_POOL_BASE
from .poolscan import BigPageIndex, CallSites, PoolFinder

SPECIAL_POOL_SPAN = 1 << 32  # the region ntpool's special pool can occupy
SPECIAL_HEADER = struct.Struct("<HBBIQ")


class SpecialChunk(NamedTuple):
    page: int
    address: int  # what the driver was given
    size: int  # bytes requested
    underrun: bool
    pool_type: int
    tag: int
    site: int

    @property
    def pool_name(self) -> str:
        return "PagedPool" if self.pool_type & POOL_TYPE_BASE_MASK else "NonPagedPool"


class Allocation(NamedTuple):
    address: int  # what the driver was given
    size: int  # bytes: requested (special pool) or the chunk's usable bytes
    tag: int
    site: int
    where: str  # "NonPagedPool", "PagedPool" or "special pool"


def in_special_pool(va: int) -> bool:
    return SPECIAL_POOL_BASE <= va < SPECIAL_POOL_BASE + SPECIAL_POOL_SPAN


def special_chunk(reader: DumpReader, va: int) -> SpecialChunk | None:
    """The live special pool allocation on the page holding ``va`` (None: unmapped or none)."""
    page_va = va & ~(PAGE_SIZE - 1)
    try:
        page = reader.page(page_va)
    except MemoryReadError:
        return None
    return parse_special_page(page, page_va)


def parse_special_page(page: bytes, page_va: int) -> SpecialChunk | None:
    underrun = (page_va - SPECIAL_POOL_BASE) % SLOT_SIZE >= PAGE_SIZE
    at = PAGE_SIZE - BLOCK if underrun else 0
    size, flags, pool_type, tag, site = SPECIAL_HEADER.unpack_from(page, at)
    if not 0 < size <= PAGE_SIZE - BLOCK or bool(flags & FLAG_UNDERRUN) != underrun \
            or not pool_type & POOL_IN_USE:
        return None
    rounded = (size + BLOCK - 1) & ~(BLOCK - 1)
    address = page_va if underrun else page_va + PAGE_SIZE - rounded
    return SpecialChunk(page_va, address, size, underrun, pool_type, tag, site)


def special_chunks(reader: DumpReader) -> Iterator[SpecialChunk]:
    """Every live special pool allocation the dump holds, in address order."""
    for va, offset in reader.mapped_pages(SPECIAL_POOL_BASE, SPECIAL_POOL_BASE + SPECIAL_POOL_SPAN):
        chunk = parse_special_page(reader.mapping[offset:offset + PAGE_SIZE], va)
        if chunk is not None:
            yield chunk


def allocations(reader: DumpReader, big_pages: BigPageIndex) -> Iterator[Allocation]:
    """Every allocated small chunk on a page whose header chain is sound, then special pool."""
    if reader.segment_heap:  # Windows 10/11: the segment heap's LFH and VS blocks
        yield from _heap_allocations(reader)
        for chunk in special_chunks(reader):
            yield Allocation(chunk.address, chunk.size, chunk.tag, chunk.site, "special pool")
        return
    # The scan !poolfind * makes (a window of pages at a time: memory stays bounded), keeping
    # pages whose whole chain is sound.
    call_sites = CallSites(reader)
    for pool in reader.pool_ranges():
        for window in PoolFinder(reader, pool, big_pages).scan("*"):
            data = window.data
            sites = None
            for page in window.pages:
                if page.salvaged:
                    continue
                for block in page.blocks:
                    at = (page.first + block) << BLOCK_SHIFT
                    _, _, size, pool_type, tag = HEADER_FIRST8.unpack_from(data, at)
                    if not pool_type & POOL_IN_USE or pool_type & POOL_QUOTA:
                        continue
                    if sites is None:
                        sites = call_sites.window(window) or _ChunkByChunk(call_sites, window)
                    address = page.va + (block << BLOCK_SHIFT)
                    yield Allocation(address + HEADER_SIZE, (size << BLOCK_SHIFT) - HEADER_SIZE, tag,
                                     sites[page.first + block], pool.name)
    for chunk in special_chunks(reader):
        yield Allocation(chunk.address, chunk.size, chunk.tag, chunk.site, "special pool")


class _ChunkByChunk:
    """A window's sites asked one chunk at a time (no single table holds the window)."""

    def __init__(self, call_sites: CallSites, window):
        self.call_sites, self.window = call_sites, window

    def __getitem__(self, block: int) -> int:
        address = self.window.va + (block << BLOCK_SHIFT)
        return self.call_sites.one(address, self.window.data, block)


def _heap_allocations(reader: DumpReader) -> Iterator[Allocation]:
    from .segment_heap import SegmentHeapReader

    heaps = SegmentHeapReader(reader)
    for heap in heaps.heaps:
        for block in heaps.find([heap], lambda tag: True):
            if block.pool_type & POOL_QUOTA:
                continue  # ProcessBilled holds the quota owner there instead
            try:
                site = POOL_HEADER.get(reader.read(block.address, HEADER_SIZE), 0,
                                       "AllocatorBackTraceIndex")
            except MemoryReadError:
                continue
            yield Allocation(block.body, block.size - HEADER_SIZE, block.tag, site, heap.name)


def tracked_allocations(reader: DumpReader) -> list[Allocation] | None:
    """Driver Verifier's own list, when pool tracking was on (None otherwise)."""
    rows = reader.verifier_tracking()
    if rows is None:
        return None
    result = []
    for address, size, tag, site in rows:
        if in_special_pool(address):
            where = "special pool"
        else:
            pool = reader.pool_of(address)
            where = pool.name if pool is not None else "?"
        result.append(Allocation(address, size, tag, site, where))
    return result


def outstanding_by_driver(reader: DumpReader, big_pages: BigPageIndex) -> dict[str, list[Allocation]]:
    """Driver name (lower case) -> its outstanding allocations, by the call-site table.

    Driver Verifier's tracking list when the dump has one (exact: requested sizes, big
    allocations, nothing cached on a lookaside); else a scan of the pool's headers.
    """
    sites = reader.call_sites()
    result: dict[str, list[Allocation]] = {}
    tracked = tracked_allocations(reader)
    for allocation in tracked if tracked is not None else allocations(reader, big_pages):
        if not 0 < allocation.site < len(sites):
            continue
        driver = sites[allocation.site][0]
        if driver:
            result.setdefault(driver.lower(), []).append(allocation)
    return result
