"""One pool (nonpaged or paged): its pages, ListHeads, lookasides and big pages.

This is the allocator's slow path, built after the Windows 7 x64 design: free chunks are
linked through LIST_ENTRY fields in their own bodies, and the ListHeads live in the
simulated kernel memory, so memory looks as a debugger expects. Python keeps only what a
per-pool index needs: a byte per ListHeads entry (non-empty or not), a byte per pool page,
lookaside list heads, and the big page table. Nothing is kept per small allocation.
"""

import mmap

from ..constants import APC_LEVEL, DISPATCH_LEVEL, PAGE_SHIFT, PAGE_SIZE, BadPoolCaller, BadPoolHeader, \
    BugCheckCode
from ..hooks import MappingChanged, PagedIn, PagedOut
from ..packing import QWORD_VIEW, x64_struct
from ..machine.memory import (
    PTE_ACCESSED,
    PTE_ADDRESS_MASK,
    PTE_DIRTY,
    PTE_NX,
    PTE_PRESENT,
    PTE_WRITABLE,
    AddressSpace,
    PhysicalMemory,
)
from .checks import (
    check_block_size,
    check_fits_its_list,
    check_list_links,
    check_next_previous_size,
    check_not_already_freed,
    check_pool_header,
    check_pool_header_in_page,
    check_previous_neighbour,
    check_previous_size,
    header_ulong,
)
from .layout import (
    BLOCK,
    BLOCK_SHIFT,
    BLOCK_SIZE_SHIFT,
    POOL_DESCRIPTOR,
    BLOCKS_PER_PAGE,
    HEADER_FIRST8,
    HEADER_SIZE,
    LIST_ENTRY,
    LIST_HEAD_COUNT,
    LOOKASIDE_MAX_BLOCKS,
    POINTER,
    POOL_FREE,
    POOL_HEADER,
    POOL_INDEX_SHIFT,
    POOL_TAG_BITS,
    POOL_TAG_SHIFT,
    POOL_TYPE_SHIFT,
    PREVIOUS_SIZE_SHIFT,
    SINGLE_LIST_ENTRY,
    SITE_UNIT_SHIFT,
    SITE_UNITS_PER_PAGE,
    TYPE_TAG_BILLED,
    allocated_type,
)
from .lookaside import Lookaside
from .tracker import column_of

BAD_POOL_CALLER = BugCheckCode.BAD_POOL_CALLER
FLINK = LIST_ENTRY.Flink
BLINK = LIST_ENTRY.Blink
_LINKS = LIST_ENTRY.struct  # (Flink, Blink) in one unpack
_unpack_pointer = POINTER.unpack_from
_pack_pointer = POINTER.pack_into
_pack_header = POOL_HEADER.struct.pack_into
_unpack_first8 = HEADER_FIRST8.unpack_from
# Page offsets where a chunk body can start (a 16-byte boundary past the page's first header).
_BODY_OK = bytes(1 if offset >= HEADER_SIZE and not offset % BLOCK else 0 for offset in range(PAGE_SIZE))
# The same, by the header's page offset (a chunk's header on a block boundary, its body on
# the page), as a tuple of bools: a subscript CPython 3.11 specializes (a bytes one it does not).
_HEADER_OK = tuple(bool(_BODY_OK[offset + HEADER_SIZE]) for offset in range(PAGE_SIZE - HEADER_SIZE)) + \
    (False,) * HEADER_SIZE
_pack_type_tag = TYPE_TAG_BILLED.pack_into
_TYPE_FROM_BODY = POOL_HEADER.PoolType - HEADER_SIZE  # PoolType..ProcessBilled, from the body
_BLOCK_SIZE = POOL_HEADER.BlockSize  # a header's BlockSize byte
# PendingFreeDepth (a ULONG) from PendingFrees, in the descriptor.
_DEPTH_FROM_PENDING = POOL_DESCRIPTOR.PendingFreeDepth - POOL_DESCRIPTOR.PendingFrees
assert not _DEPTH_FROM_PENDING & 3 and POOL_DESCRIPTOR.fields["PendingFreeDepth"].codec.size == 4
assert (FLINK, BLINK) == (0, 8)
PAGE_MASK = PAGE_SIZE - 1
# The ListHeads code writes a header's first QWORD with PreviousSize as its low byte, and a
# next chunk's PreviousSize as its header's first byte.
assert PREVIOUS_SIZE_SHIFT == POOL_HEADER.PreviousSize == 0
LIST_ENTRY_SIZE = LIST_ENTRY.size
_POOL_TYPE = POOL_HEADER.PoolType  # a header's PoolType byte
_PAGE_END = PAGE_SIZE + HEADER_SIZE  # a body's offset, a page's end past the header's
# What coalescing reads of the previous chunk's header: PoolIndex, BlockSize, PoolType
# (PreviousSize, PoolTag and bytes 8-15 skipped: a free leaves them), and its body's links
# (Flink, Blink).
_PREVIOUS_HEADER_LINKS = x64_struct("<xBBB12xQQ")
# What ExDeferredFreePool's batch reads of each queued chunk before coalescing it, in one
# unpack: its header's PreviousSize, PoolIndex and BlockSize and its body's first QWORD,
# the link to the next queued chunk (separate reads cost about 230 instructions more).
_SIZES_LINK = x64_struct("<BBB13xQ")
assert _SIZES_LINK.size == HEADER_SIZE + 8
assert POOL_FREE == 0  # (a free header's USHORT at BlockSize is its BlockSize: size_types)
assert (POOL_HEADER.PreviousSize, POOL_HEADER.PoolIndex, POOL_HEADER.BlockSize, POOL_HEADER.PoolType) == (0, 1, 2, 3)
# Page offsets on a 16-byte boundary, where a healthy list entry is: a tuple subscript
# (specialized) where ``offset & 15`` is an operation that is not.
_ALIGNED = tuple(not offset % LIST_ENTRY_SIZE for offset in range(PAGE_SIZE))
_SITE_UNIT = 1 << SITE_UNIT_SHIFT  # bytes of pool a call site stands for (sites[offset // _SITE_UNIT])
assert POOL_TAG_SHIFT == 32

def _no_machine(va: int, write: bool, irql: int) -> int:
    raise RuntimeError(f"pool access to unmapped {va:#x} with no machine to answer the fault")


_WIDENING_PIECE = 1 << 16  # site map bytes copied at a time by Pool.widen_site_map

# What each pool page holds (one byte a page in Pool.page_kind).
PAGE_FREE = 0
PAGE_SMALL = 1  # chunks with headers
PAGE_BIG_FIRST = 2  # first page of a big allocation
PAGE_BIG_REST = 3  # a later page of a big allocation
PAGE_RESERVED = 4  # taken by another component (special pool, contiguous memory)

# Delayed frees (WRK pool.c, EXP_MAXIMUM_POOL_FREES_PENDING): a pool's pending frees are
# processed in one batch by ExDeferredFreePool when a free finds PendingFreeDepth at 32 or
# more (the LONG in the descriptor, as WRK's ExFreePoolWithTag reads it: a stray write there
# changes when the batch runs, as in Windows), or when an allocation could not get a fresh page.
MAXIMUM_POOL_FREES_PENDING = 32


def add_to_pending_depth(longs, at: int, value: int) -> None:
    """InterlockedExchangeAdd of ``value`` to the LONG ``longs[at]`` (PendingFreeDepth): the
    sum wraps as a LONG's does (0x7FFFFFFF + 1 is -0x80000000)."""
    longs[at] = (longs[at] + value + 0x80000000) % 0x100000000 - 0x80000000


class Pool:
    """A pool descriptor: ``base_type`` 0 for nonpaged, 1 for paged."""

    def __init__(self, name: str, base_type: int, pool_index: int, va_base: int, size_bytes: int,
                 list_heads_va: int, space: AddressSpace, crash, processors: int = 1):
        if size_bytes < PAGE_SIZE:
            raise ValueError(f"{name} of {size_bytes} bytes is smaller than one page")
        self.name = name
        self.base_type = base_type
        self.pool_index = pool_index
        self.base = va_base
        self.page_count = size_bytes // PAGE_SIZE
        self.limit = va_base + self.page_count * PAGE_SIZE
        self.headers_from = va_base + HEADER_SIZE  # an entry's address less this: its header's offset
        self.space = space
        self.physical: PhysicalMemory = space.physical
        self.mem = space.physical.buffer
        # The same bytes as a memoryview, for single-byte writes: an mmap's item assignment
        # costs about twice a memoryview's (reads are cheaper through the mmap).
        self.mem_bytes = memoryview(self.mem)
        self.words = space.physical.qwords  # the same memory as QWORDs: words[pa >> 3]
        # The same QWORDs 8 bytes on: blinks[pa >> 3] is the QWORD at pa + 8 (a LIST_ENTRY's
        # Blink when pa is its Flink's, a header's ProcessBilled), an index without the
        # addition (an int made) on the split's and coalescing's hot paths. (QWORD_VIEW:
        # the host's native long where that is 8 bytes, its cheapest conversion.)
        self.blinks = memoryview(self.mem)[POINTER.size:].cast(QWORD_VIEW)
        # And 16 and 24 bytes on: by a chunk header's QWORD index, its body's LIST_ENTRY.
        self.body_flinks = memoryview(self.mem)[HEADER_SIZE:].cast(QWORD_VIEW)
        self.body_blinks = memoryview(self.mem)[HEADER_SIZE + POINTER.size:].cast(QWORD_VIEW)
        # By a header's physical address, its BlockSize byte (no ``+ 2``).
        self.block_sizes = memoryview(self.mem)[_BLOCK_SIZE:]
        # The same bytes as USHORTs: size_types[pa // 2] is the header at pa's BlockSize and
        # PoolType (the high byte), so a free header's is its BlockSize alone, one small int.
        self.size_types = memoryview(self.mem)[_BLOCK_SIZE:-_BLOCK_SIZE].cast("H")
        self.tlb = space.tlb
        self.crash = crash
        self.allocated_header_type = allocated_type(base_type)
        # Windows 7 maps all of its nonpaged pool executable (Microsoft, "No-Execute (NX)
        # Nonpaged Pool": "In Windows 7 and earlier versions of Windows, all memory allocated
        # from the nonpaged pool is executable"); paged pool is no-execute on x64.
        self.executable = base_type == 0
        # The PTE of a new page of this pool (AddressSpace.map_page's, writable; NX unless
        # executable) but for its frame: ``_allocate_from_fresh_page`` writes it itself.
        self.page_pte_flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY | PTE_WRITABLE | \
            (0 if self.executable else PTE_NX)
        # What every header this pool writes holds beside PreviousSize, BlockSize and PoolTag,
        # as bits of the header's first QWORD (layout.header_first8): PoolIndex, with PoolType
        # free (0) or allocated.
        self.free_header_bits = pool_index << POOL_INDEX_SHIFT | POOL_FREE << POOL_TYPE_SHIFT
        self.allocated_header_bits = pool_index << POOL_INDEX_SHIFT | self.allocated_header_type << POOL_TYPE_SHIFT
        self.track_offset = column_of(base_type)  # this pool's allocations column in a tracker row

        self.page_kind = bytearray(self.page_count)
        # The physical address of each page of small chunks while it is resident, 0 for any
        # other page: for the fast paths, the TLB's translation and the page's kind in one
        # subscript (of a list by page number, cheaper than the TLB's dict). Set as such a
        # page is mapped or paged back in (PagedIn); cleared as the page is freed
        # (``release_pages``) or paged out (PagedOut). Nothing else maps or unmaps pool pages,
        # so an entry that is not 0 is always what the TLB holds for a page of small chunks
        # (tests/test_small_frames.py holds the two to that). The list reaches only as far as
        # the last page of small chunks so far (8 bytes a page up to there: the simulator's
        # memory per allocation stays the pool's); past its end, IndexError sends a fast path
        # to the generic one, as a 0 does. It grows in place (the fast paths hold it).
        self.small_frames: list[int] = []
        # For the same pages, each one's frame less its offset from the pool's base (None
        # where ``small_frames`` holds 0, and past the same end): an address's offset from
        # the base plus its page's entry is its physical address, one addition where the
        # frame takes two (``& PAGE_MASK``, +). Coalescing translates up to four list
        # neighbours a free this way. Kept with ``small_frames``, entry for entry.
        self.small_deltas: list[int | None] = []
        space.hooks.subscribe(PagedOut, self._paged_out)
        space.hooks.subscribe(PagedIn, self._paged_in)
        # Who allocated each chunk: the call site of the allocated chunk whose header starts
        # in each 32-byte unit (at most one does: layout.SITE_UNIT_SHIFT), a USHORT as
        # AllocatorBackTraceIndex is, kept outside the simulated headers: their bytes 8-15 are
        # ProcessBilled, zero unless quota is charged, as on a Windows 7 machine without the
        # kernel stack trace database. The host backs only what is touched: one byte per 32
        # of pool while the machine's call sites are numbered below 256 (most machines: they
        # are counted per calling line), two from the first one past that (``widen_site_map``,
        # before it can be recorded). Private memory, so reading what was never written (the
        # widening does) costs nothing. Crash dumps carry it per block (NTPL's
        # allocation-site table).
        self.site_map = mmap.mmap(-1, self.page_count * SITE_UNITS_PER_PAGE, flags=mmap.MAP_PRIVATE)
        self.sites = memoryview(self.site_map)  # format "B", then "H": indexed the same way
        # 0xFFFF with gflags' kernel stack trace database on (Kernel(stack_trace_database=True)):
        # AllocatorBackTraceIndex in header bytes 8-9 then holds the call site too.
        self.header_site_mask = 0
        self.pages_in_use = 0
        self._page_hint = 0

        if list_heads_va & (LIST_ENTRY_SIZE - 1):  # the list code reads a head's links as QWORDs
            raise ValueError(f"ListHeads at {list_heads_va:#x} are not 16-byte aligned")
        self.list_heads_va = list_heads_va
        # ListHeads[n - 1]'s address at index n (the lists of n-block chunks; 0 unused).
        self.list_head_at = [list_heads_va + (blocks - 1) * LIST_ENTRY_SIZE for blocks in range(LIST_HEAD_COUNT + 1)]
        # listed[n] is 1 while ListHeads[n - 1] (chunks of n blocks) is not empty: a byte per
        # list, so the smallest list that can serve a request is one bytearray.find.
        self.listed = bytearray(LIST_HEAD_COUNT + 1)
        for index in range(LIST_HEAD_COUNT):
            head = list_heads_va + index * LIST_ENTRY_SIZE
            LIST_ENTRY.pack_into(self.mem, self._pa(head), head, head)
        # Where each head's Flink lies, as a QWORD of ``words`` (its Blink is the next one).
        # The ListHeads are in the pool descriptor, in the kernel's nonpaged data, mapped at
        # boot and never unmapped or paged, so their translation is made once, here.
        # Index 0 is ListHeads[-1], the descriptor's QWORDs before them, which only a wrapped
        # BlockSize of 0 reaches (``free_small``).
        self.list_head_word = [self._pa(head) >> 3 for head in self.list_head_at]
        # Both, as one pair per list: the split reads a head's two in one subscript.
        self.list_heads = list(zip(self.list_head_at, self.list_head_word))
        # Each head's address -> what ``small_deltas`` holds for a page: the value that, added
        # to the head's offset from the pool's base, is its physical address (its Flink's QWORD
        # index times 8). The coalescing free's unlinks find a neighbour that is a list's head
        # (its entry is its list's first or last) here, and take its links as they take a
        # chunk's: the ListHeads lie below the pool (in the kernel's data), where
        # ``small_deltas`` has no entry. Any head of this pool's lists: its QWORDs are the ones
        # the generic unlink would read and write there, with the same check.
        self.head_deltas = {head: word * 8 - (head - va_base)
                            for head, word in self.list_heads}
        # A header's first QWORD without PreviousSize and PoolTag (layout.header_first8) for
        # each BlockSize: this pool's PoolIndex and PoolType, free or allocated, with the
        # BlockSize. The split writes its two headers from these, one OR each.
        self.free_size_bits = [self.free_header_bits | blocks << BLOCK_SIZE_SHIFT for blocks in range(256)]
        self.allocated_size_bits = [self.allocated_header_bits | blocks << BLOCK_SIZE_SHIFT
                                    for blocks in range(256)]

        # Lookaside lists (ntpool.pool.lookaside): one set per processor and the system-wide
        # set behind them, singly linked through the chunk bodies. ``la`` is the current
        # processor's; the fast path reads its lists directly.
        self.per_processor = [Lookaside() for _ in range(processors)]
        self.system_lookaside = Lookaside()
        self.select_processor(0)

        # Delayed frees: the POOL_DESCRIPTOR around the ListHeads holds PendingFrees (the body
        # of the last chunk queued; each queued body's first 8 bytes link to the one before)
        # and PendingFreeDepth, in kernel memory as Windows keeps them.
        self.descriptor_va = list_heads_va - POOL_DESCRIPTOR.ListHeads
        # PendingFrees as a QWORD of ``words`` (the descriptor lies with the ListHeads).
        self.pending_frees_word = self._pa(self.descriptor_va + POOL_DESCRIPTOR.PendingFrees) >> 3
        # The same memory as ULONGs: ulongs[pa >> 2] (a header's first ULONG).
        self.ulongs = memoryview(self.mem).cast("I")
        # The same ULONGs 4 bytes on: tags[u] is a header's PoolTag when u is its first ULONG's index.
        self.tags = memoryview(self.mem)[4:].cast("I")
        # PendingFreeDepth, a LONG (signed, as WRK's ExFreePoolWithTag compares it with 32), as
        # an index of the same memory seen as LONGs: a free reads it, compares it and writes it
        # back incremented, one read and one write.
        self.longs = memoryview(self.mem).cast("i")
        self.pending_depth_long = (self.pending_frees_word * 8 + _DEPTH_FROM_PENDING) >> 2
        self.delay_frees = False
        # The queued chunks, an index of the list in memory: each body (what the links hold)
        # and its header's physical address, translated as the chunk was queued (the free had it), so the batch reads
        # the links and coalesces without translating again. Those translations hold while
        # ``pending_translated`` is True: a page of this pool released or paged out while
        # chunks are queued (only a driver's corruption can release one that holds a queued
        # chunk; the pager can page any out) sets it False until the queue is empty, and
        # ExDeferredFreePool then translates each chunk's address again.
        self.pending: dict[int, int] = {}
        self.pending_translated = True
        # While writes are recorded (ntpool.pool.culprit): the headers of the chunks on this
        # pool's lookaside lists, which look allocated in memory. None otherwise.
        self.cached: set[int] | None = None
        # While ExDeferredFreePool runs: its name, so a bug check raised there says so.
        self.found_in = ""

        self.big_pages: dict[int, tuple[int, int]] = {}  # va -> (tag, page count)
        self.big_sites: dict[int, int] = {}  # va -> call site (big pages have no header)
        # The pager of a pageable pool (None: the pool is resident). The allocator runs
        # below DISPATCH_LEVEL whenever it touches pageable pool, so it may fault pages in.
        self.pager = None
        # The machine's answer to an access the pool code makes to an address with no
        # mapping: ``fault(va, write, irql)`` pages it in and returns the page's physical
        # address, or bug-checks as Windows does (0x50, 0xC5, 0x1E). ``irql`` is the IRQL
        # the pool code holds: its descriptor lock's (a spin lock for nonpaged pool, a
        # guarded mutex for paged pool) while it works on lists and headers.
        self.fault = _no_machine
        self.lock_irql = DISPATCH_LEVEL if base_type == 0 else APC_LEVEL

    # --- addresses ----------------------------------------------------------------------

    def _pa(self, va: int, write: bool = False, irql: int | None = None) -> int:
        """The physical address of ``va`` for an access by the pool code (a machine access:
        an unmapped address faults as Windows' pool code would)."""
        base = self.tlb.get(va >> PAGE_SHIFT)
        if base is None:
            base = self.fault(va, write, self.lock_irql if irql is None else irql)
        return base + (va & (PAGE_SIZE - 1))

    def _set_small_frame(self, index: int, frame: int) -> None:
        """``small_frames[index] = frame`` (and its ``small_deltas`` entry), the lists grown
        to reach it."""
        frames, deltas = self.small_frames, self.small_deltas
        if index >= len(frames):
            if not frame:
                return  # past the end already reads as "not on the fast paths"
            frames.extend([0] * (index + 1 - len(frames)))
            deltas.extend([None] * (index + 1 - len(deltas)))
        frames[index] = frame
        deltas[index] = frame - index * PAGE_SIZE if frame else None

    def _paged_out(self, event: PagedOut) -> None:
        if self.base <= event.address < self.limit:
            self._set_small_frame((event.address - self.base) >> PAGE_SHIFT, 0)
            if self.pending:
                self.pending_translated = False

    def _paged_in(self, event: PagedIn) -> None:
        va = event.address
        if self.base <= va < self.limit and self.page_kind_of(va) == PAGE_SMALL:
            self._set_small_frame((va - self.base) >> PAGE_SHIFT, self.tlb[va >> PAGE_SHIFT])

    def read_bytes(self, va: int, size: int, irql: int | None = None) -> bytes:
        """``size`` bytes at ``va`` read by the pool code, page by page."""
        parts = []
        end = va + size
        while va < end:
            length = min(PAGE_SIZE - (va & (PAGE_SIZE - 1)), end - va)
            pa = self._pa(va, False, irql)
            parts.append(bytes(self.mem[pa:pa + length]))
            va += length
        return b"".join(parts)

    def write_bytes(self, va: int, data: bytes, irql: int | None = None) -> None:
        """Write ``data`` at ``va`` as the pool code, every page translated first."""
        pieces, done, end = [], 0, va + len(data)
        while va < end:
            length = min(PAGE_SIZE - (va & (PAGE_SIZE - 1)), end - va)
            pieces.append((self._pa(va, True, irql), done, length))
            va += length
            done += length
        for pa, start, length in pieces:
            self.mem[pa:pa + length] = data[start:start + length]

    def read_pointer(self, va: int, irql: int | None = None) -> int:
        """The pointer at ``va`` (a link in a chunk body or a list head), read by the pool
        code; it may lie anywhere, a corrupted link having put it there."""
        if va & (PAGE_SIZE - 1) <= PAGE_SIZE - POINTER.size:
            return POINTER.unpack_from(self.mem, self._pa(va, False, irql))[0]
        return int.from_bytes(self.read_bytes(va, POINTER.size, irql), "little")

    def write_pointer(self, va: int, value: int, irql: int | None = None) -> None:
        if va & (PAGE_SIZE - 1) <= PAGE_SIZE - POINTER.size:
            POINTER.pack_into(self.mem, self._pa(va, True, irql), value)
        else:
            self.write_bytes(va, POINTER.pack(value), irql)

    def contains(self, va: int) -> bool:
        return self.base <= va < self.limit

    def page_kind_of(self, va: int) -> int:
        return self.page_kind[(va - self.base) >> PAGE_SHIFT]

    def select_processor(self, number: int) -> None:
        self.la = self.per_processor[number]
        self.la_head = self.la.head
        self.la_count = self.la.count
        self.la_limit = self.la.depth
        self.la_allocates = self.la.allocate_hits  # a pop from the list: TotalAllocates' share of hits
        self.la_misses = self.la.allocate_misses

    def widen_site_map(self) -> None:
        """Two bytes a unit from now on: the machine has a call site numbered past 255. The
        sites so far are copied over a piece at a time; pieces never written are skipped."""
        if self.sites.format == "H":
            return
        narrow = self.site_map
        wide = mmap.mmap(-1, 2 * len(narrow), flags=mmap.MAP_PRIVATE)
        zeros = bytes(_WIDENING_PIECE)
        for start in range(0, len(narrow), _WIDENING_PIECE):
            piece = narrow[start:start + _WIDENING_PIECE]
            if piece != zeros[:len(piece)]:
                little_endian = bytearray(2 * len(piece))
                little_endian[0::2] = piece
                wide[2 * start:2 * (start + len(piece))] = little_endian
        self.site_map = wide
        self.sites = memoryview(wide).cast("H")

    @property
    def lookasides(self) -> list[Lookaside]:
        """Every lookaside set of this pool: each processor's, then the system-wide one."""
        return [*self.per_processor, self.system_lookaside]

    # --- pool pages ---------------------------------------------------------------------

    def _find_pages(self, count: int) -> int:
        """Index of the first of ``count`` free pool pages in a row, or -1."""
        want = b"\x00" * count
        index = self.page_kind.find(want, self._page_hint)
        if index < 0:
            index = self.page_kind.find(want)
        return index

    def _map_frames(self, index: int, frames, kind: int, rest_kind: int) -> int:
        """Map pool pages from ``index`` onto ``frames``: the first page ``kind``, the others
        ``rest_kind``."""
        count = len(frames)
        va = self.base + (index << PAGE_SHIFT)
        self.space.map_pages(va, frames, self.executable)
        self.page_kind[index] = kind
        if kind == PAGE_SMALL:
            self._set_small_frame(index, self.tlb[va >> PAGE_SHIFT])
        if count > 1:
            self.page_kind[index + 1:index + count] = bytes([rest_kind]) * (count - 1)
        self.pages_in_use += count
        self._page_hint = index + count
        return va

    def take_pages(self, count: int, kind: int) -> int:
        """Map ``count`` contiguous fresh pool pages; 0 when the pool or memory is exhausted."""
        index = self._find_pages(count)
        if index < 0:
            return 0
        frames = self.physical.allocate_frames(count)
        if frames is None:
            return 0
        return self._map_frames(index, frames, kind, PAGE_BIG_REST)

    def take_pages_with_frames(self, first_pfn: int, count: int, kind: int) -> int:
        """Map ``count`` free pool pages onto frames already taken (first_pfn onwards).

        For physically contiguous memory; 0 (and nothing mapped) when no run of pool
        pages is free.
        """
        index = self._find_pages(count)
        if index < 0:
            return 0
        return self._map_frames(index, range(first_pfn, first_pfn + count), kind, kind)

    def release_pages(self, va: int, count: int) -> None:
        index = (va - self.base) >> PAGE_SHIFT
        first = va >> PAGE_SHIFT
        if count == 1 and first in self.tlb:
            # One resident page, the usual case (a page of small chunks made whole, given
            # back as ExFreePoolWithTag gives it to MiFreePoolPages): the page's own unmap and
            # free, the same steps as the runs' below without their generator, runs and
            # tuples (about 190 of a 1,000-byte pair's 1,430 bytecodes).
            self.physical.free_frame(self.space.unmap_page(va))
        elif self.pager is None or all(self.tlb.get(vpn) is not None
                                       for vpn in range(first, first + count)):
            self.physical.free_frames(self.space.unmap_pages(va, count))  # all resident
        else:
            for offset in range(count):
                page = va + (offset << PAGE_SHIFT)
                if self.tlb.get(page >> PAGE_SHIFT) is None:
                    self.pager.discard(page)  # paged out: nothing resident to give back
                    continue
                pfn = self.space.unmap_page(page)
                self.physical.free_frame(pfn)
        self.page_kind[index:index + count] = bytes(count)
        frames = self.small_frames
        if index < len(frames):  # (past the list's end, no page has an entry)
            end = min(index + count, len(frames))
            frames[index:end] = [0] * (end - index)
            self.small_deltas[index:end] = [None] * (end - index)
        self.pages_in_use -= count
        if index < self._page_hint:
            self._page_hint = index
        if self.pending:
            self.pending_translated = False

    def release_small_page(self, va: int) -> None:
        """``release_pages(va, 1)`` for a page of small chunks a free has made whole, which
        is resident (the free has just read it): MiFreePoolPages' usual case with the
        steps of ``release_pages`` -> ``AddressSpace.unmap_page`` ->
        ``PhysicalMemory.free_frame`` written out here, in their order (the PTE read for its
        frame and cleared, the TLB entry dropped and the change announced, the frame
        freed, the page's own entries cleared), three calls and their set-up less on every
        such free. A page whose page table is not remembered yet, or that is not in the
        TLB, takes ``release_pages``."""
        space, tlb = self.space, self.tlb
        vpn = va >> PAGE_SHIFT
        table_pa = space.page_tables.get(va >> 21)
        if table_pa is None or vpn not in tlb:
            self.release_pages(va, 1)
            return
        words = self.words
        pte_word = (table_pa >> 3) + (vpn & 0x1FF)  # the PTE, a QWORD of ``words``
        pte = words[pte_word]
        words[pte_word] = 0  # (unmap_page's ``keep`` is 0: nothing left in the PTE)
        del tlb[vpn]
        if space.mappings_watched:
            space.hooks.publish(MappingChanged(va))
        pfn = (pte & PTE_ADDRESS_MASK) >> PAGE_SHIFT
        physical = self.physical
        physical.frame_in_use[pfn] = 0  # the frame keeps its bytes, as free_frame leaves them
        physical.frames_used -= 1
        if pfn < physical._hint:
            physical._hint = pfn
        index = (va - self.base) >> PAGE_SHIFT
        self.page_kind[index] = PAGE_FREE
        try:
            self.small_frames[index] = 0
            self.small_deltas[index] = None
        except IndexError:  # (past the list's end, no page has an entry)
            pass
        self.pages_in_use -= 1
        if index < self._page_hint:
            self._page_hint = index
        if self.pending:
            self.pending_translated = False

    # --- ListHeads (LIST_ENTRY at chunk + 16) --------------------------------------------
    #
    # The helpers below are the slow path's hottest code, so each translates its address
    # itself (one TLB lookup; ``fault`` only for a page that is not present) instead of
    # through ``_pa``, and the list operations read each neighbour's link once, keeping its
    # physical address for the write that follows the safe-unlinking check. A link whose
    # 8 bytes span two pages (only a corrupted link can lead there) is read and written
    # through read_pointer / write_pointer, page by page, as before.

    def _list_head(self, block_size: int) -> int:
        return self.list_head_at[block_size]

    def _read_link(self, va: int) -> tuple[int | None, int]:
        """(physical address, value) of the pointer at ``va``, read by the pool code under its
        lock; the address is None when the pointer spans two pages."""
        offset = va & (PAGE_SIZE - 1)
        if offset > PAGE_SIZE - POINTER.size:
            return None, self.read_pointer(va)
        base = self.tlb.get(va >> PAGE_SHIFT)
        if base is None:
            base = self.fault(va, False, self.lock_irql)
        return base + offset, _unpack_pointer(self.mem, base + offset)[0]

    def _write_link(self, pa: int | None, va: int, value: int) -> None:
        """Write the pointer at ``va`` that ``_read_link`` read (``pa`` its answer)."""
        if pa is None:
            self.write_pointer(va, value)
        else:
            _pack_pointer(self.mem, pa, value)

    def _read_links(self, entry: int) -> tuple[int, int]:
        """(Flink, Blink) of the LIST_ENTRY at ``entry``, translated once when it lies in one
        page (a list head or a chunk body always does; a corrupted link may not)."""
        offset = entry & (PAGE_SIZE - 1)
        if offset <= PAGE_SIZE - LIST_ENTRY_SIZE:
            base = self.tlb.get(entry >> PAGE_SHIFT)
            if base is None:
                base = self.fault(entry, False, self.lock_irql)
            return _LINKS.unpack_from(self.mem, base + offset)
        return self.read_pointer(entry + FLINK), self.read_pointer(entry + BLINK)

    def _write_links(self, entry: int, flink: int, blink: int) -> None:
        offset = entry & (PAGE_SIZE - 1)
        if offset <= PAGE_SIZE - LIST_ENTRY_SIZE:
            base = self.tlb.get(entry >> PAGE_SHIFT)
            if base is None:
                base = self.fault(entry, True, self.lock_irql)
            _LINKS.pack_into(self.mem, base + offset, flink, blink)
        else:
            self.write_pointer(entry + FLINK, flink)
            self.write_pointer(entry + BLINK, blink)

    # A healthy list's links are 16-byte aligned, so each link a list operation reads or
    # writes is one QWORD of ``words`` on a present page; a link that is not aligned, or on a
    # page not present (only a corrupted link leads there, or a paged-out chunk), is read and
    # written through ``_read_link`` / ``_write_link``, faulting where Windows would.

    def _insert(self, entry: int, block_size: int, at_tail: bool, entry_pa: int | None = None) -> None:
        """Safe insertion: the list's first entry's Blink and its last entry's Flink must both
        be the head (0x19/0x3: the head, the value read beside the entry's place, the other).
        ``entry_pa``: the entry's physical address, when the caller has translated it."""
        words, tlb = self.words, self.tlb
        head, head_word = self.list_head_at[block_size], self.list_head_word[block_size]
        first, last = words[head_word], words[head_word + 1]
        if first == head and last == head and entry_pa is not None and not entry_pa & 7:
            # An empty list: both neighbours the check reads are the head itself, whose links
            # were just read (both the head), so the check holds; the entry becomes both.
            words[entry_pa >> 3] = head
            words[(entry_pa >> 3) + 1] = head
            words[head_word] = entry
            words[head_word + 1] = entry
            self.listed[block_size] = 1
            return
        # Healthy neighbours are chunk bodies or the head, 16-byte aligned, so each one's
        # links lie on its page, translated once; any other: each access on its own, below.
        first_base, last_base = tlb.get(first >> PAGE_SHIFT), tlb.get(last >> PAGE_SHIFT)
        if first_base is not None and last_base is not None and not (first | last) & 15:
            first_word = (first_base + (first & PAGE_MASK)) >> 3  # its Flink; its Blink follows
            last_word = (last_base + (last & PAGE_MASK)) >> 3
            first_blink, last_flink = words[first_word + 1], words[last_word]
            if first_blink != head or last_flink != head:  # the named check raises the bug check
                check_list_links(self.crash, head, *((last_flink, first_blink) if at_tail else
                                                     (first_blink, last_flink)))
            new_flink, new_blink = (head, last) if at_tail else (first, head)
            if entry_pa is None or entry_pa & 7:
                self._write_links(entry, new_flink, new_blink)
            else:
                words[entry_pa >> 3] = new_flink
                words[(entry_pa >> 3) + 1] = new_blink
            if at_tail:
                words[last_word] = entry
                words[head_word + 1] = entry
            else:
                words[first_word + 1] = entry
                words[head_word] = entry
            self.listed[block_size] = 1
            return
        # The neighbour the entry goes beside (the last chunk at the tail, the first at the
        # head) is read and written; the other one is only read, for the check.
        if at_tail:
            near_field, far_field, new_flink, new_blink, head_field = last + FLINK, first + BLINK, head, last, BLINK
        else:
            near_field, far_field, new_flink, new_blink, head_field = first + BLINK, last + FLINK, first, head, FLINK
        near_pa, near_value = self._read_link(near_field)
        check_list_links(self.crash, head, near_value, self._read_link(far_field)[1])
        self._write_links(entry, new_flink, new_blink)
        self._write_link(near_pa, near_field, entry)
        words[head_word + (head_field >> 3)] = entry
        self.listed[block_size] = 1

    def _unlink(self, entry: int, block_size: int, entry_pa: int | None = None) -> None:
        """Safe unlinking: both neighbours must point back at ``entry`` (0x19/0x3). A link
        that leads nowhere faults as it would in Windows (0x50, 0xC5, 0x1E). ``entry_pa``:
        the entry's physical address, when the caller has translated it."""
        words = self.words
        if entry_pa is None or entry_pa & 7:
            flink, blink = self._read_links(entry)
        else:
            flink, blink = words[entry_pa >> 3], words[(entry_pa >> 3) + 1]
        # Healthy neighbours are other entries' bodies, 16-byte aligned, each one's links on
        # its page, found as ``allocate_from_lists`` finds its entry (the offset from the
        # pool's base, the page's frame in ``small_frames``), or the list's head, whose links
        # are the descriptor's QWORDs at ``head_word``. Any other (a page that is not a
        # resident page of this pool's small chunks, an address below the pool's base, a
        # link not aligned): each access on its own, below.
        head, head_word = self.list_heads[block_size]
        base, frames = self.base, self.small_frames
        flink_at, blink_at = flink - base, blink - base
        try:
            flink_frame = frames[flink_at // PAGE_SIZE] if flink_at >= 0 else 0
            blink_frame = frames[blink_at // PAGE_SIZE] if blink_at >= 0 else 0
        except IndexError:
            flink_frame = blink_frame = 0
        # Each one's Flink as a QWORD of ``words`` (its Blink follows), or None.
        if flink_frame and not flink_at & 15:
            flink_word = (flink_frame + (flink_at & PAGE_MASK)) >> 3
        else:
            flink_word = head_word if flink == head else None
        if blink_frame and not blink_at & 15:
            blink_word = (blink_frame + (blink_at & PAGE_MASK)) >> 3
        else:
            blink_word = head_word if blink == head else None
        if flink_word is not None and blink_word is not None:
            flink_blink, blink_flink = words[flink_word + 1], words[blink_word]
            if flink_blink != entry or blink_flink != entry:  # the named check raises the bug check
                check_list_links(self.crash, entry, flink_blink, blink_flink)
            words[blink_word] = flink
            words[flink_word + 1] = blink
        else:
            flink_field, blink_field = flink + BLINK, blink + FLINK
            flink_pa, flink_blink = self._read_link(flink_field)
            blink_pa, blink_flink = self._read_link(blink_field)
            check_list_links(self.crash, entry, flink_blink, blink_flink)
            self._write_link(blink_pa, blink_field, flink)
            self._write_link(flink_pa, flink_field, blink)
        if flink == blink:  # only the head is left
            self.listed[block_size] = 0

    def free_list(self, block_size: int) -> list[int]:
        """Headers of the chunks on ListHeads[block_size - 1], in list order (for tests)."""
        head = self._list_head(block_size)
        entries = []
        entry = LIST_ENTRY.get(self.mem, self._pa(head), "Flink")
        while entry != head and len(entries) <= self.page_count * BLOCKS_PER_PAGE:
            entries.append(entry - HEADER_SIZE)
            entry = LIST_ENTRY.get(self.mem, self._pa(entry), "Flink")
        return entries

    # --- headers -------------------------------------------------------------------------
    #
    # A header on a block boundary never spans pages. These translate as the list helpers
    # above do (the pool code's header accesses are reads and writes under its lock).

    def _header_pa(self, chunk: int) -> int:
        base = self.tlb.get(chunk >> PAGE_SHIFT)
        if base is None:
            base = self.fault(chunk, False, self.lock_irql)
        return base + (chunk & (PAGE_SIZE - 1))

    def _write_header(self, chunk: int, previous_size: int, block_size: int, pool_type: int,
                      tag: int, billed: int = 0) -> None:
        _pack_header(self.mem, self._header_pa(chunk), previous_size, self.pool_index, block_size,
                     pool_type, tag, billed)

    def _write_block_size(self, chunk: int, block_size: int) -> None:
        """A split free chunk's header keeps all but its BlockSize (WRK's split from the end)."""
        self.block_sizes[self._header_pa(chunk)] = block_size

    def _write_allocated(self, chunk: int, previous_size: int, block_size: int, tag: int,
                         site: int) -> None:
        """An allocated chunk's header, and its call site beside it."""
        _pack_header(self.mem, self._header_pa(chunk), previous_size, self.pool_index, block_size,
                     self.allocated_header_type, tag, site & self.header_site_mask)
        self.sites[(chunk - self.base) >> SITE_UNIT_SHIFT] = site

    def _set_previous_size(self, chunk: int, previous_size: int) -> None:
        """Tell the chunk after ``chunk``'s end (if on the same page) its new PreviousSize."""
        if chunk & (PAGE_SIZE - 1):
            self.mem[self._header_pa(chunk) + POOL_HEADER.PreviousSize] = previous_size

    def _read_first8(self, chunk: int) -> tuple[int, int, int, int, int]:
        """(PreviousSize, PoolIndex, BlockSize, PoolType, PoolTag) of the header at ``chunk``."""
        if not chunk & (HEADER_SIZE - 1):  # a header on a block boundary never spans pages
            base = self.tlb.get(chunk >> PAGE_SHIFT)
            if base is None:
                base = self.fault(chunk, False, self.lock_irql)
            return _unpack_first8(self.mem, base + (chunk & (PAGE_SIZE - 1)))
        return HEADER_FIRST8.unpack(self.read_bytes(chunk, HEADER_FIRST8.size))

    # --- allocation (slow path) ------------------------------------------------------------

    def take_system_lookaside(self, block_size: int, tag: int, site: int, irql: int) -> int:
        """ExAllocatePoolWithTag's small allocation once this processor's lookaside list for
        ``block_size`` was found empty and the system-wide one holds a chunk: the hit is
        counted, the chunk popped and its header written; returns its body. ``irql`` is the
        caller's (a lookaside pop takes no lock). The allocator's fast path counts the
        processor's miss and tests the system-wide head itself, and on a miss there too goes
        on to ``allocate_from_lists`` / ``allocate_past_lists`` (``allocate_small``), so a
        miss that reaches the ListHeads costs one call less."""
        system = self.system_lookaside
        body = system.head[block_size]
        system.allocate_hits[block_size] += 1
        self._pop(system, body, block_size, irql)
        self.write_popped_header(body, tag, site, irql)
        return body

    def write_popped_header(self, body: int, tag: int, site: int, irql: int) -> None:
        """Write the header of a chunk popped from a lookaside list, and its call site.

        Trusted as Windows 7 trusts it: the header is written wherever it lies (in one piece,
        translated once, where a body can start; else page by page)."""
        if _BODY_OK[body & PAGE_MASK]:
            _pack_type_tag(self.mem, self._pa(body + _TYPE_FROM_BODY, True, irql),
                           self.allocated_header_type, tag, site & self.header_site_mask)
        else:
            self.write_bytes(body + _TYPE_FROM_BODY,
                             TYPE_TAG_BILLED.pack(self.allocated_header_type, tag,
                                                  site & self.header_site_mask), irql)
        self.sites[(body - HEADER_SIZE - self.base) >> SITE_UNIT_SHIFT] = site

    def allocate_small(self, block_size: int, tag: int, site: int = 0) -> int:
        """Header address of a new chunk of ``block_size`` blocks, or 0 when exhausted.

        The header is written once, whole: ``site`` (the call site) goes where Windows keeps
        AllocatorBackTraceIndex.
        """
        body = self.allocate_from_lists(block_size, tag, site)
        return body - HEADER_SIZE if body else self.allocate_past_lists(block_size, tag, site)

    def allocate_past_lists(self, block_size: int, tag: int, site: int) -> int:
        """``allocate_small`` when no listed chunk is large enough: a new page, else what
        Windows tries before it fails."""
        chunk = self._allocate_from_fresh_page(block_size, tag, site)
        if chunk:
            return chunk
        # No fresh page: Windows frees what is pending and retries once.
        if self.pending and self.deferred_free():
            chunk = self._allocate_again(block_size, tag, site)
            if chunk:
                return chunk
        # Lookasides may pin free memory; give it back before reporting failure.
        if self.flush_lookasides():
            return self._allocate_again(block_size, tag, site)
        return 0

    def _allocate_again(self, block_size: int, tag: int, site: int) -> int:
        """``allocate_small``'s two steps once more, past what may have freed memory."""
        body = self.allocate_from_lists(block_size, tag, site)
        return body - HEADER_SIZE if body else self._allocate_from_fresh_page(block_size, tag, site)

    def allocate_from_lists(self, block_size: int, tag: int, site: int) -> int:
        """``allocate_small``'s first step: the body address of a chunk of ``block_size``
        blocks taken from the ListHeads (the smallest listed size that fits, split when
        larger), or 0 when no listed chunk fits. The allocator's fast path calls it, and
        ``allocate_past_lists``, itself on a lookaside miss (a call less); the body, what
        it returns, saves it an addition on a 64-bit address (and the exact fit one more).

        Written for CPython 3.11's costs: each int an operation makes that is not a small
        int (-5..256) is allocated and freed (about 150 instructions), an int of a 64-bit
        address (three digits) costs more in each operation, and a list or tuple subscript
        is specialized where a bytes, mmap or memoryview one is not. So the chunk is found
        by its header's offset from the pool's base (small ints), each QWORD read at its
        index (``words`` for a Flink, ``blinks`` for the QWORD after it: no ``+ 1``; the
        chunk's own links through views 16 and 24 bytes on, by its header's index)."""
        found = self.listed.find(1, block_size)  # the smallest listed size that fits
        if found < 0:
            return 0
        head, head_word = self.list_heads[found]
        words, blinks, frames = self.words, self.blinks, self.small_frames
        entry = words[head_word]  # its Flink
        # The chunk's header's offset from the pool's base, and in its page: its page's frame
        # is one subscript of ``small_frames`` (as the allocator's fast path finds it) where
        # the TLB would be a dict lookup keyed by a 64-bit page number. A page that is not a
        # resident page of small chunks of this pool has no frame there (0, or past the
        # list's end); an address below the pool's base would index from the list's end, so
        # it is refused first; a body not on a block boundary of its page, too. Any of these:
        # the long way, which faults or bug-checks as Windows would.
        at = entry - self.headers_from
        offset = at & PAGE_MASK
        if at < 0 or not _HEADER_OK[offset]:
            return self._split_any(entry, found, block_size, tag, site)
        try:
            frame = frames[at // PAGE_SIZE]
        except IndexError:
            frame = 0
        if not frame:
            return self._split_any(entry, found, block_size, tag, site)
        # The usual case: the entry is a chunk body on a present page. The chunk's
        # header, its neighbours' and the remainder's all lie on that page: it is translated
        # once, and the headers are written in the order ``_split_any`` writes them.
        chunk_pa = frame + offset
        header = chunk_pa // 8  # the chunk's header, as a QWORD index of ``words``
        flink, blink = self.body_flinks[header], self.body_blinks[header]
        # RemoveHeadList, safely (as ``_unlink``). A healthy first entry's Blink is its head,
        # and the only entry's Flink is the head too: those neighbours' links are the head's
        # own, read through its translation (the Blink side's is the Flink just read: the
        # entry), so the check reads what ``_unlink`` would. A Flink that is another entry's
        # body (16-byte aligned, so its Blink lies on its page) is read on that page,
        # translated once through ``small_frames`` as the entry's. Any other neighbour:
        # ``_unlink``, each access translated on its own.
        if blink != head:
            self._unlink(entry, found, chunk_pa + HEADER_SIZE)
        elif flink == head:  # the only entry
            if blinks[head_word] != entry:  # the head's Blink; the named check raises the bug check
                check_list_links(self.crash, entry, blinks[head_word], entry)
            words[head_word] = blinks[head_word] = head
            self.listed[found] = 0
        else:
            flink_at = flink - self.base
            try:
                flink_frame = frames[flink_at // PAGE_SIZE] if flink_at >= 0 else 0
            except IndexError:
                flink_frame = 0
            flink_offset = flink_at & PAGE_MASK
            if not (flink_frame and _ALIGNED[flink_offset]):
                self._unlink(entry, found, chunk_pa + HEADER_SIZE)
            else:
                flink_word = (flink_frame + flink_offset) // 8
                if blinks[flink_word] != entry:  # its Blink; the named check raises the bug check
                    check_list_links(self.crash, entry, blinks[flink_word], entry)
                words[head_word] = flink  # the Blink side's Flink
                blinks[flink_word] = head
        # ExpCheckPoolHeader, inline, on the header's sizes: PreviousSize leads to a chunk on
        # this page whose BlockSize agrees (it is 0 only for the page's first chunk);
        # BlockSize is not 0 and ends at the page's end or at a chunk whose PreviousSize
        # agrees. When any of it fails, ``check_pool_header_in_page`` makes the checks in
        # Windows' order and raises the bug check of the first that fails. (``offset`` and
        # ``end`` are the header's and the next header's offsets in the page; all are
        # multiples of 16.) Sizes in bytes by multiplication, which CPython 3.11 specializes.
        # (After the unlink: its writes seen. Bytes through memoryviews, as the writes below:
        # one C path less than the mmap's subscript, for the instruction cache.)
        mem_bytes, block_sizes = self.mem_bytes, self.block_sizes
        previous_size, free_size = mem_bytes[chunk_pa], block_sizes[chunk_pa]
        back, size = previous_size * BLOCK, free_size * BLOCK
        end, next_pa = offset + size, chunk_pa + size  # the next header's offset and address
        if not ((back <= offset and block_sizes[chunk_pa - back] == previous_size
                 if previous_size else not offset)
                and free_size and (end == PAGE_SIZE or end < PAGE_SIZE and mem_bytes[next_pa] == free_size)):
            check_pool_header_in_page(self.crash, entry - HEADER_SIZE, self.mem, chunk_pa)
        if free_size < found:
            check_fits_its_list(self.crash, entry - HEADER_SIZE, free_size, found)
        remainder = free_size - block_size
        if remainder == 0:
            # The header, whole, as below for a split's allocation.
            self.ulongs[header * 2] = self.allocated_size_bits[block_size] + previous_size
            self.tags[header * 2] = tag
            blinks[header] = site & self.header_site_mask
            self.sites[at // _SITE_UNIT] = site
            return entry
        if previous_size == 0:
            # First chunk of its page: split from the front. The free remainder keeps the
            # chunk's PoolTag, as Windows leaves it; the next chunk, if on the page, learns
            # the new PreviousSize (its header's first byte).
            chunk = entry - HEADER_SIZE
            rest_pa = chunk_pa + (block_size << BLOCK_SHIFT)
            old_tag = words[header] & POOL_TAG_BITS  # the remainder's, as Windows leaves it
            words[header] = tag << POOL_TAG_SHIFT | self.allocated_size_bits[block_size]
            blinks[header] = site & self.header_site_mask
            self.sites[at >> SITE_UNIT_SHIFT] = site
            words[rest_pa >> 3] = old_tag | block_size | self.free_size_bits[remainder]
            blinks[rest_pa >> 3] = 0
            if end < PAGE_SIZE:
                mem_bytes[next_pa] = remainder
            if remainder > 1:  # a one-block chunk has no room for links and goes on no list
                self._insert(chunk + (block_size << BLOCK_SHIFT) + HEADER_SIZE, remainder, True,
                             rest_pa + HEADER_SIZE)
            return entry
        # Otherwise the allocation is taken from the end: the chunk's header becomes the free
        # remainder's (it keeps PreviousSize and PoolTag, as Windows leaves them), and the
        # next chunk, if on the page, learns the new PreviousSize (its header's first byte).
        # The remainder's header: its BlockSize, and no other field, as WRK's split writes it
        # (a free header stays free, its PoolTag and bytes 8-15 as a free left them:
        # ``free_small``). Then the allocation's whole header: its first ULONG
        # (layout.header_first8's low half, PreviousSize its low byte), the PoolTag,
        # ProcessBilled, each through a view by index (a struct's pack_into would parse
        # its buffer argument, C code the split runs for nothing else).
        block_sizes[chunk_pa] = remainder
        ulongs = self.ulongs
        mine_word = header + remainder * 2  # the allocation's header, as a QWORD index
        mine_ulong = mine_word * 2
        ulongs[mine_ulong] = self.allocated_size_bits[block_size] + remainder
        self.tags[mine_ulong] = tag
        blinks[mine_word] = site & self.header_site_mask
        mine_at = at + remainder * BLOCK  # the allocation's header's offset from the pool's base
        self.sites[mine_at // _SITE_UNIT] = site
        if end < PAGE_SIZE:
            mem_bytes[next_pa] = block_size
        if remainder > 1:
            # InsertTailList of the remainder (its entry is the one just unlinked), inline as
            # ``_insert`` does it: the check reads the last entry's Flink and the first
            # entry's Blink (on an empty list, the head's own links, just read), both of
            # which must be the head. Entries' bodies are 16-byte aligned, so each one's links
            # lie on its page, translated once through ``small_frames`` as the entry's; a
            # neighbour on no resident page of this pool's small chunks (frame 0, or past the
            # list's end), below its base, or not aligned: ``_insert``, each access translated
            # on its own.
            head, head_word = self.list_heads[remainder]
            first, last = words[head_word], blinks[head_word]
            if first == head and last == head:
                self.body_flinks[header] = self.body_blinks[header] = head  # the entry's Flink and Blink
                words[head_word] = blinks[head_word] = entry
                self.listed[remainder] = 1
                return self.headers_from + mine_at
            base = self.base
            last_at, first_at = last - base, first - base
            try:
                last_frame = frames[last_at // PAGE_SIZE] if last_at >= 0 else 0
                first_frame = frames[first_at // PAGE_SIZE] if first_at >= 0 else 0
            except IndexError:
                last_frame = 0
            last_offset, first_offset = last_at & PAGE_MASK, first_at & PAGE_MASK
            if not (last_frame and first_frame and _ALIGNED[last_offset] and _ALIGNED[first_offset]):
                self._insert(entry, remainder, True, chunk_pa + HEADER_SIZE)
                return self.headers_from + mine_at
            last_word = (last_frame + last_offset) // 8  # its Flink
            first_word = (first_frame + first_offset) // 8  # its Blink: blinks[first_word]
            if words[last_word] != head or blinks[first_word] != head:  # the named check raises
                check_list_links(self.crash, head, words[last_word], blinks[first_word])
            self.body_flinks[header] = head  # the entry's Flink and Blink
            self.body_blinks[header] = last
            words[last_word] = entry
            blinks[head_word] = entry
            self.listed[remainder] = 1
        return self.headers_from + mine_at  # the allocation's body

    def _split_any(self, entry: int, found: int, block_size: int, tag: int, site: int) -> int:
        """``allocate_from_lists`` for an entry that is not a chunk body on a present page
        (a corrupted link put it there, or its page of paged pool is out): every access
        translated on its own, so each faults or bug-checks where Windows' would. Returns
        the body, as ``allocate_from_lists``."""
        self._unlink(entry, found)
        chunk = entry - HEADER_SIZE
        previous_size, _, free_size, _, old_tag = check_pool_header(self.crash, chunk,
                                                                     self._read_first8)
        check_fits_its_list(self.crash, chunk, free_size, found)
        remainder = free_size - block_size
        if remainder == 0:
            self._write_allocated(chunk, previous_size, block_size, tag, site)
            return entry
        if previous_size == 0:
            rest = chunk + (block_size << BLOCK_SHIFT)
            self._write_allocated(chunk, 0, block_size, tag, site)
            self._write_header(rest, block_size, remainder, POOL_FREE, old_tag)
            self._set_previous_size(rest + (remainder << BLOCK_SHIFT), remainder)
            self._list_remainder(rest, remainder)
            return entry
        mine = chunk + (remainder << BLOCK_SHIFT)
        self._write_block_size(chunk, remainder)
        self._write_allocated(mine, remainder, block_size, tag, site)
        self._set_previous_size(mine + (block_size << BLOCK_SHIFT), block_size)
        self._list_remainder(chunk, remainder)
        return mine + HEADER_SIZE

    def allocate_small_aligned(self, block_size: int, tag: int, alignment: int, site: int = 0) -> int:
        """Header address of a chunk whose body is ``alignment``-aligned, or 0.

        As Windows does for the cache-aligned pool types: take a chunk with room to slide,
        then give the unaligned front and the unused tail back as free chunks of their own,
        so every page keeps a consistent header chain.
        """
        slack = alignment // 16 - 1
        total = block_size + slack
        chunk = self.allocate_small(total, tag)
        if not chunk:
            return 0
        lead = ((-(chunk + HEADER_SIZE)) % alignment) >> BLOCK_SHIFT
        tail = slack - lead
        previous_size = self._read_first8(chunk)[0]
        mine = chunk + (lead << BLOCK_SHIFT)
        if lead:
            self._write_header(chunk, previous_size, lead, POOL_FREE, tag)
            self._write_allocated(mine, lead, block_size, tag, site)
        else:
            self._write_allocated(mine, previous_size, block_size, tag, site)
        rest = mine + (block_size << BLOCK_SHIFT)
        if not tail:
            self._set_previous_size(rest, block_size)
        else:
            self._write_header(rest, block_size, tail, POOL_FREE, tag)
            self._set_previous_size(rest + (tail << BLOCK_SHIFT), tail)
            self.free_small(rest + HEADER_SIZE)
        if lead:
            self.free_small(chunk + HEADER_SIZE)
        return mine

    def _list_remainder(self, chunk: int, block_size: int) -> None:
        if block_size > 1:  # a one-block chunk has no room for links and goes on no list
            self._insert(chunk + HEADER_SIZE, block_size, at_tail=True)

    def _allocate_from_fresh_page(self, block_size: int, tag: int, site: int) -> int:
        # ``take_pages(1, PAGE_SMALL)``, its usual case (a free page at or past the pool's
        # hint, a free frame at or past memory's, a page table already remembered, no
        # mapping in the TLB to replace) written out here: the steps of ``_find_pages``,
        # ``PhysicalMemory.allocate_frames``, ``_map_frames`` and ``AddressSpace.map_page``
        # in their order, five calls and their set-up less on each new page of small chunks
        # (the large pair's: a page made whole is given back, and the next allocation maps a
        # new one). Anything else takes ``take_pages``.
        # (Each find starts with the hint's own byte, read first: a page given back, and its
        # frame, become the hints, so the usual new page is found there with a subscript,
        # the search's answer without its call. A hint past the end: take_pages.)
        page_kind, index = self.page_kind, self._page_hint
        physical = self.physical
        in_use, pfn = physical.frame_in_use, physical._hint
        try:
            if page_kind[index]:
                index = page_kind.find(PAGE_FREE, index)
            if in_use[pfn]:
                pfn = in_use.find(0, pfn)
        except IndexError:
            index = -1
        if index < 0:
            pfn = -1
        page = self.base + (index << PAGE_SHIFT)
        vpn = page >> PAGE_SHIFT
        tlb, words = self.tlb, self.words
        table_pa = self.space.page_tables.get(page >> 21)
        if pfn > 0 and table_pa is not None and vpn not in tlb:
            in_use[pfn] = 1
            physical.frames_used += 1
            physical._hint = pfn + 1
            page_pa = pfn << PAGE_SHIFT
            words[(table_pa >> 3) + (vpn & 0x1FF)] = page_pa | self.page_pte_flags  # the PTE
            tlb[vpn] = page_pa
            page_kind[index] = PAGE_SMALL
            try:
                self.small_frames[index] = page_pa
                self.small_deltas[index] = page_pa - index * PAGE_SIZE
            except IndexError:  # (the lists grow to reach it)
                self._set_small_frame(index, page_pa)
            self.pages_in_use += 1
            self._page_hint = index + 1
        else:
            page = self.take_pages(1, PAGE_SMALL)
            if not page:
                return 0
            page_pa = self._header_pa(page)
        # The new page is translated once for both headers (as QWORDs, as in
        # ``allocate_from_lists``) and the remainder's links.
        tag_bits = tag << POOL_TAG_SHIFT
        words[page_pa >> 3] = tag_bits | self.allocated_size_bits[block_size]
        words[(page_pa >> 3) + 1] = site & self.header_site_mask
        self.sites[(page - self.base) >> SITE_UNIT_SHIFT] = site
        remainder = BLOCKS_PER_PAGE - block_size
        if remainder:
            rest_pa = page_pa + (block_size << BLOCK_SHIFT)
            words[rest_pa >> 3] = tag_bits | self.free_size_bits[remainder] | block_size  # PreviousSize
            words[(rest_pa >> 3) + 1] = 0
            if remainder > 1:  # a one-block chunk has no room for links and goes on no list
                entry = page + (block_size << BLOCK_SHIFT) + HEADER_SIZE
                head, head_word = self.list_heads[remainder]
                if words[head_word] == head and words[head_word + 1] == head:
                    # InsertTailList on an empty list (the usual one: a page is taken when no
                    # listed chunk fits), as ``_insert`` makes it: both neighbours the check
                    # reads are the head, whose links were just read (both the head), so the
                    # check holds; the entry becomes both of the head's links.
                    entry_word = (rest_pa >> 3) + 2
                    words[entry_word] = words[entry_word + 1] = head
                    words[head_word] = words[head_word + 1] = entry
                    self.listed[remainder] = 1
                else:
                    self._insert(entry, remainder, True, rest_pa + HEADER_SIZE)
        return page

    # --- free (slow path) ------------------------------------------------------------------

    def free_small(self, body: int, pa: int | None = None, block_size: int = 0,
                   batch: bool = False) -> None:
        """Coalesce a chunk (already checked and untracked) and list it, or return its page.

        ``body``: the chunk's body (its header's address + HEADER_SIZE): what the list entries
        and ``pending`` hold, so the entry the chunk becomes is found with no addition. The
        chunk and the neighbours it may merge with lie on its page, so the page is translated
        once for their headers and links (the checks made before coalescing keep every access
        inside it). Headers are read with one unpack each (the fields coalescing uses; the
        previous chunk's with its links), the next chunk's PoolType alone first; each check's
        condition is tested here, its named check called only to raise its bug check.
        ``pa``: the header's physical address, when the caller has translated it;
        ``block_size``: its BlockSize, when the caller has read it there (0: read here).
        The free header the chunk ends in (its own, or the previous chunk's it merged into)
        gets its BlockSize and PoolType (POOL_FREE) written, as WRK's ExFreePoolWithTag writes
        those fields and no other; ExDeferredFreePool also writes the freed chunk's PoolIndex
        there (WRK: ENCODE_POOL_INDEX), which differs from the previous chunk's only when a
        driver wrote one. PreviousSize, the PoolTag and bytes 8-15 (ProcessBilled,
        AllocatorBackTraceIndex) stay as they were.

        ``batch``: ExDeferredFreePool's batch (``deferred_free``): ``body`` is the chunk
        PendingFrees leads to (taken out of ``pending``); each chunk's link is read before it is
        coalesced, and the chunk it leads to taken out of ``pending`` and coalesced next, in
        this one call (a call and the set-up below less per chunk), until none is left.
        """
        words, mem, blinks = self.words, self.mem, self.blinks
        # The list neighbours below are found by their offsets from the pool's base (small
        # ints): plus their pages' entries in ``small_deltas``, their physical addresses.
        base, deltas = self.base, self.small_deltas
        pending = self.pending  # (the dict is the pool's for good: emptied, never replaced)
        # (Two names an assignment: three or more would build a tuple.)
        list_heads, listed = self.list_heads, self.listed
        mem_bytes, size_types = self.mem_bytes, self.size_types
        while True:  # (once, unless ``batch``)
            if pa is None:
                chunk = body - HEADER_SIZE
                offset = chunk & PAGE_MASK
                pa = self.tlb.get(chunk >> PAGE_SHIFT)
                if pa is None:  # (the batch's first access is the link, in the body: a fault names it)
                    pa = self.fault(body if batch else chunk, False, self.lock_irql)
                pa += offset
            else:
                offset = pa & PAGE_MASK  # (the chunk's: a page's physical address is page-aligned)
            page_pa = pa - offset  # (the chunk's page: ``chunk & ~PAGE_MASK``, made where it is needed)
            if batch:  # ExDeferredFreePool reads the chunk's link before it coalesces the chunk (WRK)
                previous_size, pool_index, block_size, link = _SIZES_LINK.unpack_from(mem, pa)
            else:
                previous_size = mem[pa]
                if not block_size:  # (else the allocator's free fast path has read it)
                    block_size = self.block_sizes[pa]  # (a byte: a small int, none made)
            # (Sizes by *, page offsets by //, QWORD indexes by // 8: CPython 3.11 specializes *,
            # and computes // on a small int with fewer instructions than >> or <<.)
            following = offset + block_size * BLOCK  # offsets in the page from here on
            # POOL_FREE (its PoolType byte, read alone), and not queued (``pending`` is empty
            # without delayed frees)
            if following < PAGE_SIZE and not mem[(next_pa := page_pa + following) + _POOL_TYPE]:
                if not (pending and body + (following - offset) in pending):
                    # ExpCheckPoolHeader on the next chunk, inline as the split makes it (its
                    # conditions on the header's PreviousSize and BlockSize and the neighbours'
                    # bytes, all on this page); ``check_pool_header_in_page`` raises the first
                    # failure's bug check. (Two byte reads: cheaper than a QWORD's, whose
                    # PoolTag makes it a multi-digit int that each shift and mask pays for.)
                    next_previous, next_size = mem[next_pa], mem[next_pa + _BLOCK_SIZE]
                    next_back, next_end = next_previous * BLOCK, following + next_size * BLOCK
                    if not ((next_back <= following and mem[next_pa - next_back + _BLOCK_SIZE] == next_previous
                             if next_previous else not following)
                            and next_size and (next_end == PAGE_SIZE or next_end < PAGE_SIZE
                                               and mem[page_pa + next_end] == next_size)):
                        check_pool_header_in_page(self.crash, body + (following - offset - HEADER_SIZE), mem, next_pa)
                    if next_size > 1:
                        # RemoveEntryList of the next chunk, inline as ``_unlink`` makes it (a call
                        # costs ~400 instructions here), in the shape the previous chunk's below has.
                        next_entry = body + (following - offset)
                        next_word = next_pa // 8 + 2  # its Flink; its Blink follows
                        flink, blink = words[next_word], blinks[next_word]
                        if flink == blink:
                            # Its list's only entry (a page's remainder, the usual next chunk when a
                            # free makes its page whole): both neighbours the head, whose links are
                            # the descriptor's QWORDs at ``head_word``; each must lead back to the
                            # entry. (Equal neighbours that are not the head: ``_unlink``.)
                            head, head_word = list_heads[next_size]
                            if flink == head:
                                head_blink, head_flink = blinks[head_word], words[head_word]
                                if head_blink != next_entry or head_flink != next_entry:  # the named check raises
                                    check_list_links(self.crash, next_entry, head_blink, head_flink)
                                words[head_word] = blinks[head_word] = head
                                listed[next_size] = 0
                            else:
                                self._unlink(next_entry, next_size, next_pa + HEADER_SIZE)
                        else:
                            # Two neighbours: other entries' bodies, 16-byte aligned on their pages,
                            # each page's entry from ``small_deltas``, or the list's head (the
                            # entry its list's first or last: its entry from ``head_deltas``). A
                            # neighbour on no resident page of this pool's small chunks (None, or
                            # past the list's end), below its base and no head, or not aligned:
                            # ``_unlink``, each access translated on its own.
                            flink_at, blink_at = flink - base, blink - base
                            if (flink_at | blink_at) & 15:  # a link not aligned: only a corrupted one
                                self._unlink(next_entry, next_size, next_pa + HEADER_SIZE)
                            else:
                                try:  # (None + an int: TypeError)
                                    flink_word = (flink_at + (deltas[flink_at // PAGE_SIZE] if flink_at >= 0 else self.head_deltas[flink])) // 8
                                    blink_word = (blink_at + (deltas[blink_at // PAGE_SIZE] if blink_at >= 0 else self.head_deltas[blink])) // 8
                                except (LookupError, TypeError):
                                    self._unlink(next_entry, next_size, next_pa + HEADER_SIZE)
                                else:  # the Flink's Blink (``blinks``), the Blink's Flink
                                    if blinks[flink_word] != next_entry or words[blink_word] != next_entry:
                                        check_list_links(self.crash, next_entry, blinks[flink_word],  # raises
                                                         words[blink_word])
                                    words[blink_word] = flink
                                    blinks[flink_word] = blink
                    block_size += next_size
                    following = next_end  # (where the merged chunk ends, below, and the header there)
                    next_pa = page_pa + next_end
            if previous_size:
                back = previous_size * BLOCK
                if back > offset:  # the previous chunk would start before the page (0x6)
                    check_previous_size(self.crash, body - HEADER_SIZE, previous_size)
                before_offset = offset - back
                before_pa = page_pa + before_offset
                # Its header's fields and its links (Flink, Blink; the next header's first bytes
                # when it is one block long, read and not used), in one unpack: all on this page,
                # the previous chunk ending where this one starts.
                before_index, before_size, before_type, flink, blink = \
                    _PREVIOUS_HEADER_LINKS.unpack_from(mem, before_pa)
                if before_size != previous_size:  # 0x5
                    check_previous_neighbour(self.crash, body - HEADER_SIZE, body - HEADER_SIZE - back,
                                             previous_size, before_size)
                # The previous chunk's body (its list entry, its key in ``pending``), which this
                # one merges into (else the chunk's own, below).
                entry = body - back
                if not before_type and not (pending and entry in pending):
                    if before_size > 1:
                        # RemoveEntryList of the previous chunk, inline as ``_unlink`` makes it (a
                        # call costs ~400 instructions here), as the next chunk's above: with
                        # delayed frees, the only entry of its list (the batch lists each chunk
                        # it merges on a list of its own size), else the chunk a split took its
                        # allocation's end from, in a long list.
                        if flink == blink:
                            head, head_word = list_heads[before_size]
                            if flink == head:
                                head_blink, head_flink = blinks[head_word], words[head_word]
                                if head_blink != entry or head_flink != entry:  # the named check raises
                                    check_list_links(self.crash, entry, head_blink, head_flink)
                                words[head_word] = blinks[head_word] = head
                                listed[before_size] = 0
                            else:
                                self._unlink(entry, before_size, before_pa + HEADER_SIZE)
                        else:
                            flink_at, blink_at = flink - base, blink - base
                            if (flink_at | blink_at) & 15:  # a link not aligned: only a corrupted one
                                self._unlink(entry, before_size, before_pa + HEADER_SIZE)
                            else:
                                try:  # (None + an int: TypeError)
                                    flink_word = (flink_at + (deltas[flink_at // PAGE_SIZE] if flink_at >= 0 else self.head_deltas[flink])) // 8
                                    blink_word = (blink_at + (deltas[blink_at // PAGE_SIZE] if blink_at >= 0 else self.head_deltas[blink])) // 8
                                except (LookupError, TypeError):
                                    self._unlink(entry, before_size, before_pa + HEADER_SIZE)
                                else:  # the Flink's Blink (``blinks``), the Blink's Flink
                                    if blinks[flink_word] != entry or words[blink_word] != entry:
                                        check_list_links(self.crash, entry, blinks[flink_word],  # raises
                                                         words[blink_word])
                                    words[blink_word] = flink
                                    blinks[flink_word] = blink
                    offset = before_offset
                    pa = before_pa
                    block_size += before_size
                    if batch and before_index != pool_index:
                        # ExDeferredFreePool writes the chunk's own PoolIndex in the header it
                        # ends in (WRK's ENCODE_POOL_INDEX): the previous chunk's differs only
                        # where a driver wrote one. (Here, where the two are at hand: a merged
                        # chunk that makes a whole page goes back, this byte with it.)
                        mem_bytes[pa + POOL_HEADER.PoolIndex] = pool_index
                else:
                    entry = body
            else:
                if offset:  # PreviousSize 0 on a chunk that is not its page's first (0x7)
                    check_previous_size(self.crash, body - HEADER_SIZE, previous_size)
                entry = body
            # BlockSize is a UCHAR, and ExDeferredFreePool stores each sum in it (WRK pool.c): a
            # whole page's 256 blocks wrap to 0 (a page-aligned chunk reaching its page's end),
            # and a pending chunk whose BlockSize was rewritten while queued can sum past a page
            # and wrap likewise; what follows uses the stored value, as Windows does (0 blocks:
            # the next PreviousSize is its own, and the list is ListHeads[-1]).
            # (The sum tested first: below 256 blocks and not 0, the usual one, costs one comparison.)
            # The merged chunk ends where this one does (``following``), or the next chunk it
            # merged (the previous one ends where this one starts), unless the sum wrapped: then
            # where the stored value leads.
            end = following  # (and ``next_pa`` the header there, when it is on the page)
            if block_size > 0xFF or not block_size:
                block_size &= 0xFF
                end = offset + block_size * BLOCK
                next_pa = page_pa + end
            if not block_size and not offset:
                self.release_small_page((body - HEADER_SIZE) & ~PAGE_MASK)
            else:
                # The free header at ``pa`` (the chunk's, or the previous chunk's it merged
                # into): its BlockSize and POOL_FREE, one USHORT; the rest stays (see above).
                size_types[pa // 2] = block_size
                if end < PAGE_SIZE:  # the next chunk's PreviousSize (its header's first byte)
                    mem_bytes[next_pa] = block_size
                elif end > PAGE_SIZE:  # a BlockSize rewritten while its free was pending: written where it leads
                    self._set_previous_size(((body - HEADER_SIZE) & ~PAGE_MASK) + end, block_size)
                if block_size != 1:  # (0: only a wrapped sum, above)
                    # InsertHeadList, inline as ``_insert`` does it (a call costs ~400
                    # instructions here): the check reads the first entry's Blink and the last
                    # entry's Flink, both of which must be the head.
                    head, head_word = list_heads[block_size]
                    first, last = words[head_word], blinks[head_word]
                    if first == head and last == head:
                        # An empty list (on an unfragmented pool, the usual one; with delayed
                        # frees, the batch's merged chunks often meet one): both neighbours the
                        # check reads are the head, whose links were just read (both the head),
                        # so the check holds; the entry becomes both of its links. (Tested first, on
                        # the head's links alone: the head has no page entry to look up.)
                        _LINKS.pack_into(mem, pa + HEADER_SIZE, head, head)
                        words[head_word] = blinks[head_word] = entry
                        listed[block_size] = 1
                    else:
                        # Entries are 16-byte aligned bodies, each one's links on its page, its
                        # entry from ``small_deltas`` (a list's head from ``head_deltas``: only a
                        # damaged head or link leads to one here). A neighbour on no resident
                        # page of this pool's small chunks (None, or past the list's end), below
                        # its base and no head, or a link not aligned: ``_insert``, which makes
                        # each such access on its own.
                        first_at, last_at = first - base, last - base
                        if (first_at | last_at) & 15:
                            self._insert(entry, block_size, False, pa + HEADER_SIZE)
                        else:
                            try:  # (None + an int: TypeError)
                                first_word = (first_at + (deltas[first_at // PAGE_SIZE] if first_at >= 0 else self.head_deltas[first])) // 8
                                last_word = (last_at + (deltas[last_at // PAGE_SIZE] if last_at >= 0 else self.head_deltas[last])) // 8
                            except (LookupError, TypeError):
                                self._insert(entry, block_size, False, pa + HEADER_SIZE)
                            else:  # the first entry's Blink (``blinks``), the last one's Flink
                                if blinks[first_word] != head or words[last_word] != head:
                                    check_list_links(self.crash, head, blinks[first_word],  # raises
                                                     words[last_word])
                                _LINKS.pack_into(mem, pa + HEADER_SIZE, first, head)  # the entry's Flink and Blink
                                blinks[first_word] = entry
                                words[head_word] = entry
                                listed[block_size] = 1
            if not (batch and pending):
                return
            # ExDeferredFreePool's next chunk: the one the link read above leads to, taken out of
            # ``pending`` (free_small must not merge with one still queued; a link to a chunk
            # not queued, or met already, finds none: the bug check), with the translation made
            # as it was queued while none can have changed (``pending_translated``: a free that
            # returns a page, or a fault that pages one out, clears it; each is then translated
            # again); its header read here.
            body = link
            try:
                pa = pending.pop(body)
            except KeyError:
                self._bad_pending_link(body)
            if not self.pending_translated:
                pa = None
            block_size = 0

    def _free_lookaside_entry(self, entry: int) -> None:
        """Give a chunk popped from a lookaside back to the lists, checked as any free is.

        The entry is what the list held: a corrupted Next may have put any address there.
        """
        chunk = entry - HEADER_SIZE
        if self.cached is not None:
            self.cached.discard(chunk)
        if not (self.contains(chunk) and not entry & (HEADER_SIZE - 1) and entry & (PAGE_SIZE - 1)
                and self.page_kind_of(chunk) == PAGE_SMALL):
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_BAD_ADDRESS, entry, 0, 0,
                       detail=f"a lookaside list of {self.name} held {entry:#x}, which is not "
                              f"a pool block")
        raw = self.read_bytes(chunk, HEADER_FIRST8.size)
        _, _, block_size, pool_type, _ = HEADER_FIRST8.unpack(raw)
        check_not_already_freed(self.crash, pool_type, header_ulong(raw, 0), entry)
        check_block_size(self.crash, chunk, block_size)
        following = chunk + (block_size << BLOCK_SHIFT)
        if following & (PAGE_SIZE - 1):
            check_next_previous_size(self.crash, chunk, block_size, self._read_first8(following)[0])
        self.mem[self._pa(chunk) + POOL_HEADER.PoolType] = POOL_FREE
        self.free_small(entry)

    def lookaside_chunks(self) -> set[int]:
        """Headers of the chunks cached on this pool's lookaside lists (for pictures).

        They keep their in-use PoolType there, as in Windows 7, so only the lists tell.
        """
        chunks: set[int] = set()
        for lookaside in self.lookasides:
            for entry, count in zip(lookaside.head, lookaside.count):
                for _ in range(count):  # a corrupted list may loop or lead anywhere
                    base = self.tlb.get(entry >> PAGE_SHIFT)
                    if base is None or entry & (PAGE_SIZE - 1) > PAGE_SIZE - POINTER.size:
                        break
                    chunks.add(entry - HEADER_SIZE)
                    entry = SINGLE_LIST_ENTRY.get(self.mem, base + (entry & (PAGE_SIZE - 1)), "Next")
        return chunks

    def flush_lookasides(self) -> int:
        """Free every chunk cached on a lookaside into the lists; returns how many."""
        flushed = 0
        for lookaside in self.lookasides:
            heads, counts = lookaside.head, lookaside.count
            for block_size in range(1, LOOKASIDE_MAX_BLOCKS + 1):
                for _ in range(counts[block_size]):  # a double free makes a loop: pop what was pushed
                    entry = heads[block_size]
                    heads[block_size] = self.read_pointer(entry + SINGLE_LIST_ENTRY.Next)
                    counts[block_size] -= 1
                    self._free_lookaside_entry(entry)
                    flushed += 1
                heads[block_size] = 0
                counts[block_size] = 0
        return flushed

    # --- the lookaside lists ----------------------------------------------------------------

    def pop_lookaside(self, block_size: int, irql: int = 0) -> int:
        """A chunk's body from this processor's lookaside list, else the system-wide one, or 0;
        counts the allocation and the misses that ExAdjustLookasideDepth reads.

        As Windows 7, the entry is trusted (nothing is checked): its Next is read at the
        caller's ``irql`` (no lock is held), so a Next a stray write put there is handed
        out by the next pop, and one that leads nowhere faults."""
        for lookaside in (self.la, self.system_lookaside):
            body = lookaside.head[block_size]
            if body:
                lookaside.allocate_hits[block_size] += 1
                return self._pop(lookaside, body, block_size, irql)
            lookaside.allocate_misses[block_size] += 1
        return 0

    def _pop(self, lookaside: Lookaside, body: int, block_size: int, irql: int) -> int:
        """Take ``body``, the head of ``lookaside``'s list of ``block_size`` blocks."""
        lookaside.head[block_size] = self.read_pointer(body + SINGLE_LIST_ENTRY.Next, irql)
        lookaside.count[block_size] -= 1
        if self.cached is not None:
            self.cached.discard(body - HEADER_SIZE)
        return body

    # --- the free path after the checks ----------------------------------------------------

    def release_small(self, chunk: int, block_size: int) -> None:
        """Give back a small chunk the caller has checked and untracked (PoolType still in use).

        As ExFreePoolWithTag: a chunk of up to 32 blocks goes to this processor's lookaside
        list while it holds fewer than its Depth, then to the system-wide list; otherwise
        it is marked free and, with delayed frees on, queued for ExDeferredFreePool (the
        queue is processed first when it already holds 32); else coalesced at once.
        """
        if block_size <= LOOKASIDE_MAX_BLOCKS:
            la = self.la
            if la.count[block_size] < la.depth[block_size]:
                self._push(la, chunk, block_size)
                return
        self.release_past_lookaside(chunk, block_size)

    def release_past_lookaside(self, chunk: int, block_size: int, pa: int | None = None) -> None:
        """``release_small`` once this processor's lookaside list for the size is found full
        (or none serves it): the system-wide list, else the pool. ``pa``: the header's
        physical address, when the caller has translated it."""
        if block_size <= LOOKASIDE_MAX_BLOCKS:
            system = self.system_lookaside
            if system.count[block_size] < system.depth[block_size]:
                self._push(system, chunk, block_size)
                return
        if not self.delay_frees:
            if pa is None:
                pa = self._pa(chunk)
            self.mem_bytes[pa + _POOL_TYPE] = POOL_FREE
            self.free_small(chunk + HEADER_SIZE, pa)
            return
        if self.longs[self.pending_depth_long] >= MAXIMUM_POOL_FREES_PENDING:
            self.deferred_free()  # before this chunk is marked free: the batch must not take it
            pa = None
        if pa is None:
            pa = self._pa(chunk)
        self.mem_bytes[pa + _POOL_TYPE] = POOL_FREE
        self.queue_free(chunk, pa)

    def _push(self, lookaside: Lookaside, chunk: int, block_size: int) -> None:
        heads = lookaside.head
        body = chunk + HEADER_SIZE
        SINGLE_LIST_ENTRY.set(self.mem, self._pa(body), "Next", heads[block_size])
        heads[block_size] = body
        lookaside.count[block_size] += 1
        if self.cached is not None:
            self.cached.add(chunk)

    def queue_free(self, chunk: int, pa: int | None = None) -> None:
        """Push a chunk (marked free) on PendingFrees, in the descriptor in kernel memory.
        ``pa``: the chunk header's physical address, when the caller has translated it (the
        body, where the link goes, is on the same page)."""
        if pa is None:
            pa = self._pa(chunk)
        words, pending_word = self.words, self.pending_frees_word
        words[(pa >> 3) + 2] = words[pending_word]  # the body's first QWORD (HEADER_SIZE on)
        words[pending_word] = chunk + HEADER_SIZE
        # PendingFreeDepth, incremented as InterlockedIncrement does: a value a stray write
        # left there wraps (-1, 0xFFFFFFFF, + 1 is 0; 0x7FFFFFFF + 1 is -0x80000000).
        add_to_pending_depth(self.longs, self.pending_depth_long, 1)  # (InterlockedIncrement)
        self.pending[chunk + HEADER_SIZE] = pa

    def pending_frees(self) -> list[int]:
        """Headers of the chunks queued on PendingFrees, newest first, read from memory.

        The links live in the freed bodies, so a driver writing to memory it freed changes
        them, as in Windows: a link to an unmapped address faults (0x50, or 0xC5 under the
        nonpaged pool's lock; 0x1E when non-canonical); one that leads to
        no queued chunk is BAD_POOL_HEADER (0x3, the descriptor's PendingFrees, the link, 0).
        """
        return [body - HEADER_SIZE for body in self._walk_links()]

    def _walk_links(self) -> list[int]:
        """``pending_frees``' walk (what the debugger and the tests see of the list;
        ExDeferredFreePool follows the links as it coalesces): each queued chunk's body, newest
        first, each link followed to a queued chunk not met yet, else the bug check. Each link
        is read on its chunk's translation made as it was queued (``pending``), unless one may
        have changed since (``pending_translated``): then on the TLB's."""
        bodies: list[int] = []
        append, words = bodies.append, self.words
        # The queued chunks not met yet: a link to a chunk not queued, or to one met already
        # (a loop), finds nothing to take here (one dict operation tests both).
        unmet = self.pending.copy()
        take = unmet.pop
        translated = self.pending_translated
        entry = words[self.pending_frees_word]
        for _ in range(len(unmet)):
            try:
                pa = take(entry)
            except KeyError:
                self._bad_pending_link(entry)
            if not translated:  # a queued chunk's body: 16-byte aligned, on a page of its own pool
                base = self.tlb.get(entry >> PAGE_SHIFT)
                if base is None:  # (not present: the machine's answer)
                    base = self.fault(entry, False, self.lock_irql)
                pa = base + ((entry - HEADER_SIZE) & PAGE_MASK)
            append(entry)
            entry = words[(pa >> 3) + 2]  # its link: the body's first QWORD
        return bodies

    def _bad_pending_link(self, entry: int) -> None:
        """The bug check for a pending free's link that leads to no chunk still queued (the
        freed memory was written to): a link to no page faults (0x50, 0xC5, 0x1E), any other
        is BAD_POOL_HEADER 0x3 (the descriptor's PendingFrees, the link, 0)."""
        self.read_pointer(entry)
        self.crash(BugCheckCode.BAD_POOL_HEADER, BadPoolHeader.LIST_CORRUPT,
                   self.descriptor_va + POOL_DESCRIPTOR.PendingFrees, entry, 0,
                   detail=f"a pending free's link {entry:#x} leads to no queued chunk "
                          f"(the freed memory was written to)")

    def deferred_free(self) -> int:
        """ExDeferredFreePool: coalesce and list every pending chunk, with the checks that
        coalescing makes; returns how many. As WRK's: from PendingFrees, each chunk's link is
        read before the chunk is coalesced, so a link written over is found when the batch
        reaches it (the chunks before it coalesced); once all are done, PendingFrees is
        emptied and PendingFreeDepth lowered by their count (InterlockedExchangeAdd: a value
        a stray write left there stays off by as much). The list is followed until every
        queued chunk is met (its last link is not read). A bug check raised here records
        that the corruption was found in the deferred free (``BugCheck.found_in``)."""
        pending = self.pending
        count = len(pending)
        if not count:
            return 0
        self.found_in = "ExDeferredFreePool"
        try:
            # Each chunk leaves ``pending`` as it is freed (free_small must not merge with one
            # still queued), with the translation made as it was queued while none can have
            # changed (``pending_translated``: a free that returns a page, or a fault that
            # pages one out, clears it; each is then translated again). ``free_small`` takes
            # the first, and the others in the same call.
            body = self.words[self.pending_frees_word]
            try:
                pa = pending.pop(body)
            except KeyError:
                self._bad_pending_link(body)
            self.free_small(body, pa if self.pending_translated else None, 0, True)
            self.words[self.pending_frees_word] = 0
            add_to_pending_depth(self.longs, self.pending_depth_long, -count)
        finally:
            self.found_in = ""
        pending.clear()
        self.pending_translated = True
        return count

    # --- big allocations ---------------------------------------------------------------

    def allocate_big(self, number_of_bytes: int, tag: int) -> int:
        count = (number_of_bytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        if count > self.page_count:
            return 0
        va = self.take_pages(count, PAGE_BIG_FIRST)
        if not va and self.pending and self.deferred_free():  # as Windows: then retry once
            va = self.take_pages(count, PAGE_BIG_FIRST)
        if not va and self.flush_lookasides():
            va = self.take_pages(count, PAGE_BIG_FIRST)
        if va:
            self.big_pages[va] = (tag, count)
        return va

    def free_big(self, va: int) -> tuple[int, int]:
        tag, count = self.big_pages.pop(va)
        self.big_sites.pop(va, None)
        self.release_pages(va, count)
        return tag, count
