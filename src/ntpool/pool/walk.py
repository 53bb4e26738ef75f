"""Every chunk of one pool, from the allocator's own state: what a truth manifest
(``ntpool.dump.truth``) is made of. Each design walks its own pools (``design.walk``):
Windows 7's classic pool here, the segment heap in ``segment_heap/walk.py``; both give a
``PoolWalk`` of plain rows. Nothing here changes the machine: a page that is paged out is read
from the page file, never paged in.
"""

from typing import NamedTuple

from ..constants import PAGE_SHIFT, PAGE_SIZE
from .descriptor import PAGE_BIG_FIRST, PAGE_SMALL
from .layout import BLOCK_SHIFT, HEADER_FIRST8, HEADER_SIZE, LOOKASIDE_MAX_BLOCKS, POINTER, page_problems


class Chunk(NamedTuple):
    address: int  # its POOL_HEADER (a free segment-heap VS chunk: its VS chunk header)
    physical: int | None  # None while its page is paged out
    tag_value: int  # as stored
    size: int  # bytes from ``address``
    block_size: int  # the POOL_HEADER's BlockSize as stored
    previous_size: int  # the POOL_HEADER's PreviousSize as stored
    pool_type: int  # the POOL_HEADER's PoolType byte as stored
    state: str  # allocated, free, lookaside, pending free
    paged_out: bool
    backend: str | None = None  # the segment heap's: Lfh, Vs


class Big(NamedTuple):
    address: int
    physical: int | None
    tag_value: int
    size: int  # whole pages, as the tracker charges them
    pages: int
    paged_out: bool
    backend: str | None = None  # the segment heap's: Vs, Segment, Large


class Corruption(NamedTuple):
    page: int
    how: str
    complete: bool  # every chunk of the page is still known


class PoolWalk(NamedTuple):
    chunks: list  # Chunk
    big: list  # Big
    pages: list  # (va, pa) of every resident page the pool holds
    paged_out_pages: list
    corrupt: list  # Corruption


def page_bytes(pool, page_va: int):
    """(the page's bytes, its physical address or None when paged out); KeyError when the
    page is neither resident nor in the page file."""
    base = pool.tlb.get(page_va >> PAGE_SHIFT)
    if base is not None:
        return memoryview(pool.mem)[base:base + PAGE_SIZE], base
    pager = pool.pager
    if pager is not None and pager.is_paged_out(page_va):
        return pager.page_file[pager.slot_of[page_va >> PAGE_SHIFT]], None
    raise KeyError(f"{pool.name} page {page_va:#x} is neither resident nor paged out")


# --- Windows 7 ---------------------------------------------------------------------------------

def lookaside_entries(pool, damaged: list | None = None) -> set:
    """Bodies of the chunks cached on the pool's lookaside lists (every processor's). A link
    that leads out of the pool's small pages (a write after free) is followed no further;
    ``damaged`` gets (address, how) for each."""
    bodies = set()
    for lookaside in pool.lookasides:  # each processor's set and the system-wide one
        heads = lookaside.head
        for block_size in range(1, LOOKASIDE_MAX_BLOCKS + 1):
            entry, previous = heads[block_size], None
            while entry and entry not in bodies:
                if not _small_body(pool, entry):
                    if damaged is not None:
                        where = (f"its lookaside link is {entry:#x}" if previous else
                                 f"the lookaside head for BlockSize {block_size} is {entry:#x}")
                        damaged.append((previous or pool.base, f"{where}, not a chunk of the pool: "
                                                              f"the chunks after it on that list "
                                                              f"cannot be found"))
                    break
                bodies.add(entry)
                previous = entry
                entry = POINTER.unpack_from(page_bytes(pool, entry & ~0xFFF)[0], entry & 0xFFF)[0]
    return bodies


def _small_body(pool, body: int) -> bool:
    """``body`` can be a chunk's body on one of the pool's small pages, which memory holds."""
    if body & 15 or not pool.base <= body < pool.limit or not body & 0xFFF:
        return False
    if pool.page_kind[(body - pool.base) >> PAGE_SHIFT] != PAGE_SMALL:
        return False
    page_va = body & ~0xFFF
    pager = pool.pager
    return page_va >> PAGE_SHIFT in pool.tlb or (pager is not None and pager.is_paged_out(page_va))


def pending_frees(pool) -> set:
    """Bodies waiting on the pool's delayed-free list (PendingFrees), when it has one."""
    return set(getattr(pool, "pending", ()))  # (keyed by body)


def walk_windows7(pool) -> PoolWalk:
    """Every chunk of every small page of a Windows 7 pool (its header chain, states from the
    allocator's lists), and its big allocations from the big page table it keeps."""
    result = PoolWalk([], [], [], [], [])
    bad_links: list = []
    lookaside, pending = lookaside_entries(pool, bad_links), pending_frees(pool)
    kinds = pool.page_kind
    index = kinds.find(PAGE_SMALL)
    while index >= 0:
        page_va = pool.base + (index << PAGE_SHIFT)
        page, base = page_bytes(pool, page_va)
        if base is None:
            result.paged_out_pages.append(page_va)
        else:
            result.pages.append((page_va, base))
        problems = page_problems(page, page_va)
        offset = 0
        while offset < PAGE_SIZE:
            prev, _index, size, pool_type, tag = HEADER_FIRST8.unpack_from(page, offset)
            if not size or offset + (size << BLOCK_SHIFT) > PAGE_SIZE:
                break  # a header a driver destroyed: what follows it is not known here
            body = page_va + offset + HEADER_SIZE
            if body in lookaside:
                state = "lookaside"
            elif body in pending:
                state = "pending free"
            elif pool_type == 0:
                state = "free"
            else:
                state = "allocated"
            result.chunks.append(Chunk(page_va + offset, None if base is None else base + offset, tag,
                                       size << BLOCK_SHIFT, size, prev, pool_type, state, base is None))
            offset += size << BLOCK_SHIFT
        problems += [f"{at:#x}: {how}" for at, how in bad_links if at & ~0xFFF == page_va]
        if problems:
            result.corrupt.append(Corruption(page_va, "; ".join(problems), offset == PAGE_SIZE))
        index = kinds.find(PAGE_SMALL, index + 1)
    for at, how in bad_links:
        if not pool.base <= at < pool.limit or pool.page_kind[(at - pool.base) >> PAGE_SHIFT] != PAGE_SMALL:
            result.corrupt.append(Corruption(at & ~0xFFF, f"{at:#x}: {how}", True))  # a head: no page
    for va, (tag, pages) in sorted(pool.big_pages.items()):
        if pool.page_kind[(va - pool.base) >> PAGE_SHIFT] != PAGE_BIG_FIRST:
            continue
        try:
            _, base = page_bytes(pool, va)
        except KeyError:
            base = None
        for page in range(pages):
            frame = pool.tlb.get((va >> PAGE_SHIFT) + page)
            if frame is not None:
                result.pages.append((va + (page << PAGE_SHIFT), frame))
        result.big.append(Big(va, base, tag, pages << PAGE_SHIFT, pages, base is None))
    return result
