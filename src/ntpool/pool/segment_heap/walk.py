"""Every chunk of one kernel segment heap, from the heap's own state: the truth a manifest
(``ntpool.dump.truth``) is made of on a Windows 10/11 machine.

The heap's index says where its subsegments are and which LFH blocks are busy (the mirror of
each bitmap), which blocks wait on the dynamic lookaside or the VS delay-free list, and what
the big page table holds; memory says the rest (the POOL_HEADERs, the encoded VS chunk
headers). Nothing here changes the machine: a page that is paged out is read from the page
file, never paged in. Rows are the plain tuples of ``ntpool.pool.walk`` (with the backend of
each); the manifest's format is the forensics layer's business.
"""

from ...constants import PAGE_SHIFT, PAGE_SIZE
from ..walk import Big, Chunk, Corruption, PoolWalk, page_bytes
from .heap import LFH, SegmentHeap
from .layout import (
    POOL_HEADER_FIRST8,
    POOL_TYPE_ALLOCATED,
    QWORD,
    SEGMENT_RUN_MAX_PAGES,
    VS_HEADER_SIZE,
    decode_vs_bits,
)


class _Reader:
    """Bytes of the heap's pages without paging anything in."""

    def __init__(self, heap: SegmentHeap):
        self.heap = heap

    def page(self, va: int):
        """(the page's bytes, its physical address or None when paged out)."""
        return page_bytes(self.heap, va & ~(PAGE_SIZE - 1))

    def qword(self, va: int) -> int:
        data, _ = self.page(va)
        return QWORD.unpack_from(data, va & (PAGE_SIZE - 1))[0]

    def header(self, va: int):
        """(PreviousSize, PoolIndex, BlockSize, PoolType, PoolTag, physical address or None)."""
        data, base = self.page(va)
        offset = va & (PAGE_SIZE - 1)
        return (*POOL_HEADER_FIRST8.unpack_from(data, offset), None if base is None else base + offset)


def front_end_blocks(heap: SegmentHeap, read: _Reader) -> tuple[set, set, list]:
    """(POOL_HEADER addresses on the dynamic lookaside, VS chunk addresses on the delay-free
    list, damaged lookaside links as (entry, how)): both front ends look busy in memory. A
    link a driver overwrote (a write after free) is followed no further."""
    lookaside, damaged = set(), []
    for index, bucket in enumerate(heap.lookaside[1:], 1):
        entry, count, previous = bucket.head, bucket.count, None
        while entry and count and entry not in lookaside:
            if not _busy_vs_block(heap, read, entry):
                unknown = (f"not a block of the heap: the {count} blocks its bucket still holds "
                           f"cannot be found (they are listed as allocated)")
                if previous is None:  # the head itself (nt's copy of it, in the heap's state)
                    damaged.append((heap.heap_va, f"dynamic lookaside bucket {index}'s head is "
                                                  f"{entry:#x}, {unknown}"))
                else:
                    damaged.append((previous, f"its dynamic lookaside link is {entry:#x}, {unknown}"))
                break
            lookaside.add(entry)
            previous, entry, count = entry, read.qword(entry), count - 1
    return lookaside, set(heap.delay_free), damaged


def _busy_vs_block(heap: SegmentHeap, read: _Reader, header: int) -> bool:
    """``header`` is the POOL_HEADER of a busy VS chunk of ``heap`` (what a lookaside holds)."""
    sub = heap.subsegment_of(header)
    if sub is None or sub.kind == LFH or header & 15 or not sub.first < header < sub.end:
        return False
    chunk = header - VS_HEADER_SIZE
    _, units, _, allocated = decode_vs_bits(read.qword(chunk), chunk, heap.keys.heap_key)
    return bool(allocated) and 0 < units and chunk + (units << 4) <= sub.end


def _header_problem(stored, size: int) -> str | None:
    """What is wrong with a busy block's POOL_HEADER (the segment heap writes PreviousSize 0,
    PoolIndex 0, BlockSize its size in 16-byte units, PoolType with bit 1 set)."""
    previous, index, block_size, pool_type = stored[:4]
    if previous or index:
        return f"PreviousSize {previous:#x} / PoolIndex {index:#x}, the segment heap writes 0"
    if block_size != size >> 4:
        return f"BlockSize {block_size:#x}, the block has {size >> 4:#x}"
    if not pool_type & POOL_TYPE_ALLOCATED:
        return f"PoolType {pool_type:#x} lacks the allocated bit"
    return None


def walk(heap: SegmentHeap) -> PoolWalk:
    """Every LFH block and VS chunk of ``heap`` (big allocations apart), its big
    allocations, its pages and the pages whose headers a driver damaged."""
    read = _Reader(heap)
    result = PoolWalk([], [], [], [], [])
    problems: dict[int, list[str]] = {}
    incomplete: set[int] = set()

    def damaged(at: int, how: str, complete: bool = True) -> None:
        page = at & ~(PAGE_SIZE - 1)
        problems.setdefault(page, []).append(f"{at:#x}: {how}")
        if not complete:
            incomplete.add(page)

    lookaside, pending, bad_links = front_end_blocks(heap, read)
    for entry, how in bad_links:
        damaged(entry, how)

    for sub in heap.subsegments():
        if sub.kind == LFH:
            for index, offset in enumerate(sub.offsets):
                block = sub.va + offset
                stored = read.header(block)
                busy = not sub.free_bits >> index & 1
                state = ("lookaside" if block in lookaside else "allocated") if busy else "free"
                if state == "allocated":
                    how = _header_problem(stored, sub.block_size)
                    if how:
                        damaged(block, how)
                result.chunks.append(Chunk(block, stored[5], stored[4], sub.block_size, stored[2],
                                               stored[0], stored[3], state, stored[5] is None, "Lfh"))
            continue
        chunk, previous_units = sub.first, 0
        while chunk < sub.end:
            memory_cost, units, previous, allocated = decode_vs_bits(read.qword(chunk), chunk,
                                                                     heap.keys.heap_key)
            if not units or chunk + (units << 4) > sub.end:
                damaged(chunk, f"VS chunk header does not decode with the heap key (size {units:#x}): "
                               f"the rest of the subsegment ({sub.end - chunk:#x} bytes) is not known",
                        complete=False)
                break
            if memory_cost != units:
                damaged(chunk, f"VS chunk header's MemoryCost {memory_cost:#x} is not its size {units:#x}")
            if previous != previous_units:
                damaged(chunk, f"VS chunk header's UnsafePrevSize {previous:#x}, the chunk before "
                               f"has {previous_units:#x}")
            body = chunk + VS_HEADER_SIZE
            if not allocated:
                _, base = read.page(chunk)
                physical = None if base is None else base + (chunk & (PAGE_SIZE - 1))
                result.chunks.append(Chunk(chunk, physical, 0, units << 4, units, previous, 0, "free",
                                               base is None, "Vs"))
            elif body not in heap.big_pages:  # a big allocation's chunk: the big page table has it
                size = (units << 4) - VS_HEADER_SIZE
                stored = read.header(body)
                state = ("lookaside" if body in lookaside else
                         "pending free" if chunk in pending else "allocated")
                if state == "allocated":  # a lookaside link overwrites the first 8 bytes of a
                    # cached block's header, and a pending block may have come off the lookaside
                    how = _header_problem(stored, size)
                    if how:
                        damaged(body, how)
                result.chunks.append(Chunk(body, stored[5], stored[4], size, stored[2], stored[0],
                                               stored[3], state, stored[5] is None, "Vs"))
            chunk, previous_units = chunk + (units << 4), units

    for va, (tag, pages) in sorted(heap.big_pages.items()):
        in_vs = heap.big_in_vs(va)
        _, base = read.page(va)
        backend = "Vs" if in_vs else "Large" if pages > SEGMENT_RUN_MAX_PAGES else "Segment"
        result.big.append(Big(va, base, tag, pages << PAGE_SHIFT, pages, base is None, backend))

    for index, kind in enumerate(heap.page_kind):
        if kind:
            va = heap.base + (index << PAGE_SHIFT)
            base = heap.tlb.get(va >> PAGE_SHIFT)
            if base is not None:
                result.pages.append((va, base))
            elif heap.pager is not None and heap.pager.is_paged_out(va):
                result.paged_out_pages.append(va)
    for page, found in sorted(problems.items()):
        result.corrupt.append(Corruption(page, "; ".join(found), page not in incomplete))
    return result
