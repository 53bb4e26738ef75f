"""One kernel segment heap (_SEGMENT_HEAP): the heap of one pool type.

Its VA range is cut into 1 MiB segments (a _HEAP_PAGE_SEGMENT and 256 page range
descriptors at the start of each); page runs inside a segment go to LFH subsegments, VS
subsegments and big allocations; runs too long for a segment are large allocations. The
LFH serves fixed-size blocks from subsegments whose busy state is a bitmap in simulated
memory; the VS backend serves variable-size chunks with encoded headers, splitting and
coalescing them, with a delay-free list; the dynamic lookaside keeps freed VS-sized blocks
for reuse. Python keeps an index of what memory already says (a byte per page, the page ->
subsegment map, a mirror of each LFH bitmap, the VS free chunks by size), never an object
per allocation, and none for a full LFH subsegment its bucket has moved past (its pages
name it by shared marks; its object is made again when asked for). The POOL_HEADER, tags, tracking and quota are the allocator's business
(``allocator.py``); the checks that end in 0x13A are ``checks.py``.
"""

from bisect import bisect_left, insort
from itertools import cycle

from ...packing import x64_struct
from ...constants import APC_LEVEL, DISPATCH_LEVEL, PAGE_SHIFT, PAGE_SIZE
from ...hooks import PagedIn, PagedOut
from ...machine.memory import AddressSpace
from ..descriptor import PAGE_BIG_FIRST, PAGE_BIG_REST, PAGE_RESERVED, PAGE_SMALL, _no_machine
from ..tracker import column_of
from . import checks
from .layout import (
    DESCRIPTOR_RANGE_FLAGS,
    DESCRIPTOR_SIZE,
    DESCRIPTOR_UNIT,
    DWORD,
    GRANULARITY,
    HEAP_POOL_TYPES,
    LFH_ACTIVATE_LIVE,
    LFH_ACTIVATE_REQUESTS,
    LFH_BITMAP,
    LFH_BLOCK_OFFSETS,
    LFH_BUCKET_COUNT,
    LFH_COUNTS,
    LFH_FREE_COUNT,
    LFH_FIELDS_OFFSET,
    LFH_SUBSEGMENT_FIELDS,
    LOOKASIDE_BUCKETS,
    LOOKASIDE_MAX_DEPTH,
    LOOKASIDE_MIN_DEPTH,
    POOL_HEADER_SIZE,
    QWORD,
    RANGE_BIG,
    RANGE_LFH,
    RANGE_VS,
    SEGMENT_HEADER_PAGES,
    SEGMENT_PAGES,
    SEGMENT_RUN_MAX_PAGES,
    SEGMENT_SIGNATURE,
    SEG_CONTEXT_OFFSETS,
    VS_DELAY_FREE_DEPTH,
    VS_DELAY_FREE_MAX_CHUNK,
    VS_HEADER_SIZE,
    VS_SUBSEGMENT_HEADER,
    VS_SUBSEGMENT_PAGES,
    VS_SUBSEGMENT_SIZE_OFFSET,
    VS_SUBSEGMENT_SIZE_SIG,
    VS_BIG_MAX_REQUEST,
    encode_vs_bits,
    header_pool_type,
    lfh_block_layout,
    lfh_block_offsets,
    lfh_subsegment_pages,
    lookaside_bucket_bytes,
    segment_signature,
    vs_subsegment_signature,
)

LFH, VS = 1, 2  # what kind of subsegment a page belongs to
# The largest block each dynamic lookaside bucket holds, by bucket (lookaside_take's check).
_LOOKASIDE_BYTES = (0,) + tuple(lookaside_bucket_bytes(index) for index in range(1, LOOKASIDE_BUCKETS + 1))
# The region a PML4 entry maps (512 GiB): the allocator finds a heap by address >> 39.
HEAP_SLOT_BYTES = 1 << 39
_layouts: dict[tuple[int, int], tuple[int, tuple, dict, dict]] = {}


def _layout(block_size: int, pages: int) -> tuple[int, tuple, dict, dict]:
    """Shared per (block size, pages): first offset, block offsets, offset -> index, and the
    offset of a block's body (past its POOL_HEADER) -> index (the free fast path's key)."""
    key = (block_size, pages)
    layout = _layouts.get(key)
    if layout is None:
        first, offsets = lfh_block_layout(block_size, pages)
        layout = _layouts[key] = (first, offsets, {o: i for i, o in enumerate(offsets)},
                                  {o + POOL_HEADER_SIZE: i for i, o in enumerate(offsets)})
    return layout


_unpack_qword = QWORD.unpack_from


def _segment_end(pages: int) -> int:
    """``pages`` rounded up to a whole segment's: the page lists (``page_subsegments``,
    ``page_kind``) grow a segment at a time, not a subsegment's pages at a time (fewer copies
    of the list left behind in the host's heap)."""
    return -(-pages // SEGMENT_PAGES) * SEGMENT_PAGES
# A VS chunk header: the encoded bits, then the u32 of vs_page_offset_field and 4 bytes of
# padding, written at once.
_pack_vs_header = x64_struct("<QQ").pack_into

class LfhSubsegment:
    """Index of one _HEAP_LFH_SUBSEGMENT (the bytes in memory are the truth).

    One lives for every 63 blocks of 128 bytes, so it keeps only what changes from one
    subsegment to the next: where it starts, as its offset from the heap's base (a small int,
    32 bytes where the 64-bit address took 40, and the fast paths' arithmetic on it is
    small-int arithmetic), its blocks' free bits and FreeHint, and its bucket. Four slots, 64
    bytes. Everything its bucket says alike of all its subsegments (block size, pages, the
    block offsets both ways) is read through the bucket, and whether its bucket allocates
    from it is the bucket's ``current``; its address and what the slow paths alone ask (how
    many blocks, how many free) are worked out on demand.
    """

    __slots__ = ("start", "bucket", "free_bits", "free_hint", "frames")
    kind = LFH

    def __init__(self, start: int, bucket, frames: list | None = None):
        self.start = start  # va - the heap's base
        self.bucket = bucket
        self.free_bits = bucket.all_free  # bit n set while block n is free
        self.free_hint = 0
        # The physical address of each of its pages while resident, 0 while paged out: for
        # the fast paths, the TLB's translation in one subscript of a list by a small int
        # (not the TLB dict's hash of a 64-bit page number), as Windows 7's
        # Pool.small_frames. Set as the object is made (SegmentHeap._lfh_frames_of), kept
        # as a page is paged out or back in (PagedOut, PagedIn); nothing else maps or unmaps
        # a subsegment's pages while it lives, so an entry that is not 0 is what the TLB
        # holds (tests/test_segment_heap_frames.py holds the two to that).
        self.frames = frames

    @property
    def va(self) -> int:
        return self.bucket.heap_base + self.start

    @property
    def is_current(self) -> bool:
        """Its bucket allocates from it (the fast paths serve only such a subsegment's blocks)."""
        return self.bucket.current is self

    @property
    def block_size(self) -> int:
        return self.bucket.block_size

    @property
    def offsets(self) -> tuple:
        return self.bucket.offsets

    @property
    def index_of(self) -> dict:
        return self.bucket.index_of

    @property
    def pages(self) -> int:
        return self.bucket.pages

    @property
    def block_count(self) -> int:
        return self.bucket.block_count

    @property
    def free_count(self) -> int:
        """FreeCount: the free bits set."""
        return self.free_bits.bit_count()


# What ``SegmentHeap.lfh_current`` holds for a bucket with no current subsegment: a
# subsegment with no free block and nothing else (an LfhSubsegment, as the fast path's
# attribute read expects).
NO_SUBSEGMENT = LfhSubsegment.__new__(LfhSubsegment)
NO_SUBSEGMENT.free_bits = 0


class FullLfhPage:
    """What the page index holds for page ``page`` of a full LFH subsegment of ``bucket``
    that its bucket does not allocate from (``SegmentHeap._lfh_set_aside``): one per page of
    a bucket's subsegments, shared by all of them, so such a subsegment keeps no object of
    its own. Most subsegments of a pool holding many blocks are full."""

    __slots__ = ("bucket", "page")
    kind = LFH
    free_bits = 0  # (what the free fast path reads first: none, so it passes)

    def __init__(self, bucket, page: int):
        self.bucket = bucket  # (its ``current`` is never a mark: the free fast path passes)
        self.page = page


class LfhBucket:
    __slots__ = ("index", "heap_base", "block_size", "active", "requests", "live_elsewhere",
                 "current", "partial", "pages", "first_block", "offsets", "index_of",
                 "index_of_body", "block_count", "all_free", "full_pages")

    def __init__(self, index: int, heap_base: int = 0):
        self.index = index
        self.heap_base = heap_base  # its subsegments' starts are offsets from it
        self.block_size = index << 4
        self.active = False
        self.requests = 0
        self.live_elsewhere = 0  # blocks of this size the VS backend holds before activation
        self.current: LfhSubsegment | None = None
        # Other subsegments with a free block: a list from the bucket's first subsegment on
        # (an empty tuple till then: most buckets of most heaps never make one).
        self.partial: list[LfhSubsegment] | tuple = ()
        # Every subsegment of the bucket has one layout: its pages, where its first block
        # starts, its block offsets (and the index of each offset), how many blocks; laid
        # out when the bucket makes its first subsegment (most buckets never do).
        self.pages = lfh_subsegment_pages(self.block_size)
        self.offsets = None

    def lay_out(self) -> None:
        self.first_block, self.offsets, self.index_of, self.index_of_body = \
            _layout(self.block_size, self.pages)
        self.block_count = len(self.offsets)
        self.all_free = (1 << self.block_count) - 1
        self.partial = []
        self.full_pages = [FullLfhPage(self, page) for page in range(self.pages)]


class _NoBucket:
    """What a VS subsegment answers for its LFH bucket: none, whose current subsegment is
    none (so the free fast path's ``sub.bucket.current is sub`` is False for it)."""

    __slots__ = ()
    current = None


class VsSubsegment:
    __slots__ = ("va", "pages", "end", "first")
    kind = VS
    bucket = _NoBucket()
    is_current = False
    free_bits = 0  # (no LFH blocks: the free fast path passes)

    def __init__(self, va: int, pages: int):
        self.va = va
        self.pages = pages
        self.end = va + (pages << PAGE_SHIFT)
        self.first = va + VS_SUBSEGMENT_HEADER


class LookasideBucket:
    __slots__ = ("head", "count", "depth", "allocates", "misses", "frees", "enabled")

    def __init__(self):
        self.head = 0
        self.count = 0
        self.depth = LOOKASIDE_MIN_DEPTH
        self.allocates = 0
        self.misses = 0
        self.frees = 0
        self.enabled = False


class SegmentHeap:
    """The heap of one pool type; also the pool-pages interface the machine uses."""

    def __init__(self, name: str, base_type: int, heap_index: int, va_base: int, size_bytes: int,
                 space: AddressSpace, crash, keys, heap_va: int, random_data: bytes,
                 signature_constant: int):
        if size_bytes < 2 * PAGE_SIZE * SEGMENT_PAGES:
            size_bytes = 2 * PAGE_SIZE * SEGMENT_PAGES  # at least two segments
        self.name = name
        self.base_type = base_type
        self.heap_index = heap_index
        self.pool_index = 0
        self.base = va_base
        self.page_count = size_bytes >> PAGE_SHIFT
        self.page_count -= self.page_count % SEGMENT_PAGES
        self.limit = va_base + (self.page_count << PAGE_SHIFT)
        self.space = space
        self.physical = space.physical
        self.mem = space.physical.buffer
        self.tlb = space.tlb
        self.crash = crash
        self.keys = keys
        self.heap_key = keys.heap_key  # (the VS headers' key, read without the keys object)
        self.heap_va = heap_va  # the _SEGMENT_HEAP in kernel data
        self.list_heads_va = heap_va  # what the Windows 7 dump fields point at
        self.signature_constant = signature_constant
        self.track_offset = column_of(base_type)  # its allocations column in a tracker row
        self.track_free_offset = self.track_offset + 1  # and its frees column
        # The POOL_TYPE its big page entries record (NonPagedPool, NonPagedPoolNx, PagedPool).
        self.pool_type = HEAP_POOL_TYPES[heap_index]
        # NonPagedPool (NonPagedPoolExecute) is executable memory on Windows 8 and later;
        # NonPagedPoolNx and paged pool are no-execute (Microsoft, "No-Execute (NX) Nonpaged
        # Pool"). Every page this heap maps takes this.
        self.executable = HEAP_POOL_TYPES[heap_index] == 0
        self.header_type = header_pool_type(base_type)  # PoolType byte of its POOL_HEADERs
        self.allocated_header_type = self.header_type  # the name the Windows 7 pool gives it
        # The kind of each page (descriptor.py's PAGE_* values), by page index, listed as far
        # as the segments the heap has reached (a page past the end is free): grown a segment
        # at a time, so a heap the machine sizes for a large pool and uses little of (the
        # NonPagedPoolNx heap of most runs) does not hold a byte for every page of it.
        self.page_kind = bytearray()
        self.pages_in_use = 0
        self._page_hint = 0
        self.segment_state = bytearray(self.page_count // SEGMENT_PAGES)  # 0 unused, 1 segment, 2 large
        # The page -> subsegment index: the LFH or VS subsegment holding each page, by the
        # page's number from the heap's base (None for any other page; a FullLfhPage mark for
        # a page of a full LFH subsegment set aside, which ``subsegment_of`` and the public
        # ``subsegment_by_page`` turn back into its object). A list, grown to the
        # last subsegment page the heap has used, costs 8 bytes a page where a dict keyed by
        # page number cost about 80 (an entry and a key int); the free fast path reads it with
        # one subscript. The index is never negative: a heap starts its 512 GiB slot (the
        # fast path picks the heap by slot).
        if va_base & (HEAP_SLOT_BYTES - 1):
            raise ValueError(f"{name}: a segment heap must start a 512 GiB slot, not {va_base:#x}")
        self.page_subsegments: list = []
        self.first_page = va_base >> PAGE_SHIFT  # the page number index 0 stands for
        self.bodies_from = va_base + POOL_HEADER_SIZE  # + a header's offset: its body's address
        space.hooks.subscribe(PagedOut, self._paged_out)
        space.hooks.subscribe(PagedIn, self._paged_in)
        self.big_pages: dict[int, tuple[int, int]] = {}  # va -> (tag, pages)
        self.big_sites: dict[int, int] = {}
        self.big_details: dict[int, tuple[int, int, int]] = {}  # va -> (bytes, pool type, process)
        self.pager = None
        # The machine's answer to the heap's code touching a page that is not there (the
        # kernel sets it), and the IRQL that code holds: the heap lock's, a spin lock for
        # the nonpaged heaps, APC_LEVEL for the paged one (as Windows 7's descriptors).
        self.fault = _no_machine
        self.lock_irql = APC_LEVEL if base_type & 1 else DISPATCH_LEVEL
        # The LFH: buckets 1..32 (16 bytes apart), seeded "random data" for placement.
        # (Each made when a request of its size first comes: ``lfh_bucket``.)
        self.lfh_buckets: list[LfhBucket | None] = [None] * (LFH_BUCKET_COUNT + 1)
        # Bucket -> its current subsegment; NO_SUBSEGMENT (no free bits) until it has one, so
        # the allocation fast path reads the free bits with no test for None first.
        self.lfh_current: list = [NO_SUBSEGMENT] * (LFH_BUCKET_COUNT + 1)
        self.random_data = random_data
        # Each pick starts at a random block of FreeHint's group of 32 (RtlpLowFragHeapRandomData
        # read in turn, as the LFH does, so a seeded boot repeats its placement).
        self.random_slots = cycle(b % 32 for b in random_data)
        self.next_random_slot = self.random_slots.__next__  # (the same sequence: one iterator)
        # The VS backend: free chunks by size (16-byte units), sizes kept sorted.
        self.vs_free_chunks: dict[int, dict[int, None]] = {}
        self.vs_sizes: list[int] = []
        self.vs_subsegments = 0
        self.vs_spare: VsSubsegment | None = None  # an empty subsegment kept for reuse
        self.delay_free: list[int] = []  # chunk addresses waiting in DelayFreeContext
        self.lookaside = [LookasideBucket() for _ in range(LOOKASIDE_BUCKETS + 1)]

    # --- addresses (the interface the machine shares with the Windows 7 pool) ---------------

    def _pa(self, va: int, write: bool = False) -> int:
        """The physical address of ``va`` for an access by the heap's code: a page that is
        not there is the machine's ``fault`` (the rule Windows 7's pool accesses follow,
        ``Kernel._pool_access_fault``: paged back in, or the bug check for a pointer or
        size a driver damaged), at the heap lock's IRQL."""
        base = self.tlb.get(va >> PAGE_SHIFT)
        if base is None:
            base = self.fault(va, write, self.lock_irql)
        return base + (va & (PAGE_SIZE - 1))

    def contains(self, va: int) -> bool:
        return self.base <= va < self.limit

    # --- the page -> subsegment index ---------------------------------------------------------

    def subsegment_of(self, va: int):
        """The LFH or VS subsegment whose pages hold ``va``, or None."""
        if va >= self.base:
            index = (va - self.base) >> PAGE_SHIFT
            try:
                sub = self.page_subsegments[index]
            except IndexError:  # past the last subsegment page the heap has used
                return None
            if type(sub) is FullLfhPage:
                sub = self._lfh_take_back(index, sub)
            return sub
        return None

    @property
    def subsegment_by_page(self) -> list:
        """The page index with every subsegment's object in it (a full LFH subsegment's
        made, ``_lfh_take_back``): the LFH or VS subsegment holding each page, by the page's
        number from the heap's base, None for any other page."""
        by_page = self.page_subsegments
        for index, sub in enumerate(by_page):
            if type(sub) is FullLfhPage:
                self._lfh_take_back(index, sub)
        return by_page

    def _lfh_set_aside(self, sub: LfhSubsegment) -> None:
        """A full LFH subsegment its bucket no longer allocates from keeps no Python object:
        its counts go to memory (FreeCount 0, BlockCount, FreeHint) and its pages' index
        entries become its bucket's shared FullLfhPage marks, until something asks for it
        (a free of one of its blocks, a walk: ``_lfh_take_back``)."""
        LFH_COUNTS.pack_into(self.mem, self._pa(sub.va, True) + LFH_FREE_COUNT, 0,
                             sub.bucket.block_count, sub.free_hint)
        first = sub.start >> PAGE_SHIFT
        self.page_subsegments[first:first + sub.pages] = sub.bucket.full_pages

    def _lfh_take_back(self, index: int, mark) -> LfhSubsegment:
        """The object of the full LFH subsegment whose page ``index`` holds ``mark``, made
        again and put back in the index (its FreeHint stays memory's until a free sets it)."""
        first = index - mark.page
        bucket = mark.bucket
        sub = LfhSubsegment(first << PAGE_SHIFT, bucket, self._lfh_frames_of(first << PAGE_SHIFT, bucket.pages))
        sub.free_bits = 0
        sub.free_hint = None
        self.page_subsegments[first:first + bucket.pages] = [sub] * bucket.pages
        return sub

    def _index_subsegment(self, sub) -> None:
        """Point the index's entries for ``sub``'s pages at it, growing the list to hold them."""
        first = (sub.va - self.base) >> PAGE_SHIFT
        end = first + sub.pages
        by_page = self.page_subsegments
        if len(by_page) < end:
            by_page.extend([None] * (_segment_end(end) - len(by_page)))
        by_page[first:end] = [sub] * sub.pages

    def _lfh_frames_of(self, start: int, pages: int) -> list:
        """The frames of the ``pages`` pages from offset ``start``: the TLB's, 0 if paged out."""
        vpn = (self.base + start) >> PAGE_SHIFT
        return [self.tlb.get(vpn + offset, 0) for offset in range(pages)]

    def _paged_out(self, event: PagedOut) -> None:
        self._lfh_page_moved(event.address, 0)

    def _paged_in(self, event: PagedIn) -> None:
        self._lfh_page_moved(event.address, self.tlb[event.address >> PAGE_SHIFT])

    def _lfh_page_moved(self, address: int, frame: int) -> None:
        """A page paged out (``frame`` 0) or back in: the frames of its LFH subsegment's object."""
        index = (address - self.base) >> PAGE_SHIFT
        if 0 <= index < len(self.page_subsegments):
            sub = self.page_subsegments[index]
            if type(sub) is LfhSubsegment:  # (a set-aside one's frames are made with its object)
                sub.frames[index - (sub.start >> PAGE_SHIFT)] = frame

    def _unindex_subsegment(self, sub) -> None:
        first = (sub.va - self.base) >> PAGE_SHIFT
        self.page_subsegments[first:first + sub.pages] = [None] * sub.pages

    def subsegments(self):
        """Each live LFH and VS subsegment once, in address order."""
        previous = None
        for sub in self.subsegment_by_page:
            if sub is not None and sub is not previous:
                yield sub
            previous = sub

    def page_kind_of(self, va: int) -> int:
        index = (va - self.base) >> PAGE_SHIFT
        return self.page_kind[index] if index < len(self.page_kind) else 0  # past it: free

    def _cover(self, end: int) -> None:
        """List ``page_kind`` as far as page index ``end`` (a whole segment at a time)."""
        kinds = self.page_kind
        if len(kinds) < end:
            kinds.extend(bytes(_segment_end(end) - len(kinds)))

    def select_processor(self, number: int) -> None:
        """The segment heap's front ends are per heap, not per processor."""

    def read_qword(self, va: int) -> int:
        return QWORD.unpack_from(self.mem, self._pa(va))[0]

    def write_qword(self, va: int, value: int) -> None:
        QWORD.pack_into(self.mem, self._pa(va, True), value & 0xFFFFFFFFFFFFFFFF)

    # --- the segment backend: page runs --------------------------------------------------

    def _segment_va(self, index: int) -> int:
        return self.base + index * SEGMENT_PAGES * PAGE_SIZE

    def _init_segment(self, index: int) -> bool:
        """Map a segment's header (signature and descriptors); False when out of frames."""
        first = index * SEGMENT_PAGES
        frames = self.physical.allocate_frames(SEGMENT_HEADER_PAGES)
        if frames is None:
            return False
        va = self._segment_va(index)
        for offset, pfn in enumerate(frames):
            self.physical.zero_frame(pfn)
            self.space.map_page(va + (offset << PAGE_SHIFT), pfn, executable=self.executable)
        self._cover(first + SEGMENT_PAGES)
        self.page_kind[first:first + SEGMENT_HEADER_PAGES] = bytes([PAGE_RESERVED]) * SEGMENT_HEADER_PAGES
        self.pages_in_use += SEGMENT_HEADER_PAGES
        context = self.heap_va + SEG_CONTEXT_OFFSETS[0]
        QWORD.pack_into(self.mem, self._pa(va), va)  # ListEntry: alone on its list
        QWORD.pack_into(self.mem, self._pa(va) + 8, va)
        QWORD.pack_into(self.mem, self._pa(va) + SEGMENT_SIGNATURE,
                        segment_signature(va, context, self.keys.heap_key, self.signature_constant))
        self.segment_state[index] = 1
        return True

    def _find_run(self, count: int) -> int:
        """Index of the first page of ``count`` free pages inside one segment, or -1."""
        kinds = self.page_kind
        want = bytes(count)
        for start in (self._page_hint, 0):
            index = kinds.find(want, start)
            while True:
                if index < 0:
                    # None in the segments listed so far: the next segment, never used, is
                    # listed (all free), as if every page had been listed from the start.
                    covered = len(kinds) // SEGMENT_PAGES
                    if covered >= len(self.segment_state):
                        break
                    self._cover((covered + 1) * SEGMENT_PAGES)
                    index = kinds.find(want, max(start, covered * SEGMENT_PAGES))
                    continue
                segment = index // SEGMENT_PAGES
                if not self.segment_state[segment]:
                    if not self._init_segment(segment):
                        return -1
                    index = kinds.find(want, index)
                    continue
                if self.segment_state[segment] == 1 and (index + count - 1) // SEGMENT_PAGES == segment:
                    return index
                index = kinds.find(want, (segment + 1) * SEGMENT_PAGES)
        return -1

    def _find_large(self, count: int) -> int:
        """First page of whole unused segments holding ``count`` pages, or -1."""
        segments = -(-count // SEGMENT_PAGES)
        index = self.segment_state.find(bytes(segments))
        return -1 if index < 0 else index * SEGMENT_PAGES

    def _map_run(self, index: int, frames, kind: int, rest_kind: int, range_flags: int) -> int:
        count = len(frames)
        va = self.base + (index << PAGE_SHIFT)
        self.space.map_pages(va, frames, self.executable)  # a page table's share of PTEs at a time
        self._cover(index + count)
        self.page_kind[index] = kind
        if count > 1:
            self.page_kind[index + 1:index + count] = bytes([rest_kind]) * (count - 1)
        self.pages_in_use += count
        self._page_hint = index + count
        self._describe_run(index, count, range_flags)
        return va

    def _describe_run(self, index: int, count: int, range_flags: int) -> None:
        """Write the run's page range descriptors (nothing for a large allocation)."""
        segment = index // SEGMENT_PAGES
        if self.segment_state[segment] != 1:
            return
        for offset in range(count):
            at = self._descriptor_pa(segment, index % SEGMENT_PAGES + offset)
            self.mem[at + DESCRIPTOR_RANGE_FLAGS] = range_flags if offset == 0 else 0
            self.mem[at + DESCRIPTOR_UNIT] = min(count, 0xFF) if offset == 0 else min(offset, 0xFF)

    def _descriptor_pa(self, segment: int, page: int) -> int:
        return self._pa(self._segment_va(segment) + page * DESCRIPTOR_SIZE)

    def descriptor(self, va: int) -> tuple[int, int]:
        """(RangeFlags, UnitSize) of the run holding ``va``, from its page range descriptors
        (a later page of a run has RangeFlags 0 and its UnitOffset back to the first)."""
        index = (va - self.base) >> PAGE_SHIFT
        segment, page = divmod(index, SEGMENT_PAGES)
        at = self._descriptor_pa(segment, page)
        flags, unit = self.mem[at + DESCRIPTOR_RANGE_FLAGS], self.mem[at + DESCRIPTOR_UNIT]
        if not flags and unit and unit <= page:
            at = self._descriptor_pa(segment, page - unit)
            flags, unit = self.mem[at + DESCRIPTOR_RANGE_FLAGS], self.mem[at + DESCRIPTOR_UNIT]
        return flags, unit

    def take_pages(self, count: int, kind: int = PAGE_BIG_FIRST, range_flags: int = RANGE_BIG) -> int:
        """Map ``count`` fresh pages in a row; 0 when the heap or memory is exhausted."""
        if count > self.page_count:
            return 0
        index = self._find_run(count) if count <= SEGMENT_RUN_MAX_PAGES else self._find_large(count)
        if index < 0:
            return 0
        frames = self.physical.allocate_frames(count)
        if frames is None:
            return 0
        if count > SEGMENT_RUN_MAX_PAGES:
            first = index // SEGMENT_PAGES
            self.segment_state[first:first + -(-count // SEGMENT_PAGES)] = \
                b"\x02" * -(-count // SEGMENT_PAGES)
        rest_kind = PAGE_SMALL if kind == PAGE_SMALL else PAGE_BIG_REST  # subsegments: all small
        return self._map_run(index, frames, kind, rest_kind, range_flags)

    def take_pages_with_frames(self, first_pfn: int, count: int, kind: int) -> int:
        """Map ``count`` pages onto frames already taken (physically contiguous memory)."""
        index = self._find_run(count) if count <= SEGMENT_RUN_MAX_PAGES else self._find_large(count)
        if index < 0:
            return 0
        if count > SEGMENT_RUN_MAX_PAGES:
            first = index // SEGMENT_PAGES
            self.segment_state[first:first + -(-count // SEGMENT_PAGES)] = \
                b"\x02" * -(-count // SEGMENT_PAGES)
        return self._map_run(index, range(first_pfn, first_pfn + count), kind, kind, RANGE_BIG)

    def release_pages(self, va: int, count: int) -> None:
        index = (va - self.base) >> PAGE_SHIFT
        self._describe_run(index, count, 0)
        first_vpn = va >> PAGE_SHIFT
        if self.pager is None or all(vpn in self.tlb for vpn in range(first_vpn, first_vpn + count)):
            self.physical.free_frames(self.space.unmap_pages(va, count))  # all resident
        else:
            for offset in range(count):
                page = va + (offset << PAGE_SHIFT)
                if self.tlb.get(page >> PAGE_SHIFT) is None:
                    self.pager.discard(page)
                    continue
                self.physical.free_frame(self.space.unmap_page(page))
        self.page_kind[index:index + count] = bytes(count)
        self.pages_in_use -= count
        if count > SEGMENT_RUN_MAX_PAGES:
            first = index // SEGMENT_PAGES
            self.segment_state[first:first + -(-count // SEGMENT_PAGES)] = bytes(-(-count // SEGMENT_PAGES))
        if index < self._page_hint:
            self._page_hint = index

    # --- big and large allocations -----------------------------------------------------------

    def allocate_big(self, number_of_bytes: int, tag: int) -> int:
        """A big allocation (over 0xFE0 bytes), page-aligned with no POOL_HEADER: a VS chunk
        up to 128 KiB, whole pages from the segment backend above; 0 when exhausted."""
        count = (number_of_bytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        if number_of_bytes <= VS_BIG_MAX_REQUEST:
            units = (VS_HEADER_SIZE + number_of_bytes + GRANULARITY - 1) >> 4
            chunk = self.vs_allocate(units, page_aligned=True)
            va = chunk + VS_HEADER_SIZE if chunk else 0
        else:
            va = self.take_pages(count, PAGE_BIG_FIRST, RANGE_BIG)
            if not va and self.flush_lookasides():
                va = self.take_pages(count, PAGE_BIG_FIRST, RANGE_BIG)
        if va:
            self.big_pages[va] = (tag, count)
        return va

    def big_in_vs(self, va: int) -> bool:
        """The big allocation at ``va`` is a VS chunk (not pages of its own)."""
        owner = self.subsegment_of(va)
        return owner is not None and owner.kind == VS

    def free_big(self, va: int) -> tuple[int, int]:
        sub = self.subsegment_of(va)
        if sub is not None and sub.kind == VS:  # a VS chunk (big_in_vs), not pages of its own
            # The VS chunk's header is checked as any VS free's (0x13A on a bad one).
            chunk = va - VS_HEADER_SIZE  # (in the same subsegment: its data starts a later page)
            _, size, previous, allocated = self.vs_read(chunk)
            checks.vs_header_sane(self, sub, chunk, size)
            length = self.big_details.get(va, (0,))[0]
            if length:  # the table says how long it is: the header must agree
                checks.vs_big_header(self, chunk, size,
                                     (VS_HEADER_SIZE + length + GRANULARITY - 1) >> 4)
            if not allocated:
                checks.vs_not_busy(self, chunk)
            tag, count = self.big_pages.pop(va)
            self.big_sites.pop(va, None)
            self.big_details.pop(va, None)
            self.vs_free(sub, chunk, size, previous)
            return tag, count
        tag, count = self.big_pages.pop(va)
        self.big_sites.pop(va, None)
        self.big_details.pop(va, None)
        self.release_pages(va, count)
        return tag, count

    # --- the LFH ------------------------------------------------------------------------------

    def lfh_bucket(self, units: int) -> LfhBucket:
        """The LFH bucket of blocks of ``units`` 16-byte units (1..32), made on first use."""
        bucket = self.lfh_buckets[units]
        if bucket is None:
            bucket = self.lfh_buckets[units] = LfhBucket(units, self.base)
        return bucket

    def lfh_wants(self, bucket: LfhBucket) -> bool:
        """Count a request of the bucket's size; True once the bucket is active."""
        if bucket.active:
            return True
        bucket.requests += 1
        if bucket.live_elsewhere + 1 >= LFH_ACTIVATE_LIVE or bucket.requests >= LFH_ACTIVATE_REQUESTS:
            bucket.active = True
        return bucket.active

    def lfh_allocate(self, bucket: LfhBucket) -> int:
        """Address of a free block of the bucket (its POOL_HEADER goes there), or 0."""
        sub = bucket.current
        if sub is None or not sub.free_bits:
            sub = self._lfh_next_subsegment(bucket)
            if sub is None:
                return 0
        index = self._lfh_pick(sub)
        self._lfh_mark_busy(sub, index)
        return self.base + sub.start + sub.bucket.offsets[index]

    def _lfh_pick(self, sub: LfhSubsegment) -> int:
        """Randomised placement: a random slot in FreeHint's group of 32, then the first free
        block from there on (wrapping to the first free block)."""
        start = (sub.free_hint & ~31) + self.next_random_slot()
        free = sub.free_bits
        later = free >> start
        if later:
            return start + (later & -later).bit_length() - 1
        return (free & -free).bit_length() - 1

    def _lfh_mark_busy(self, sub: LfhSubsegment, index: int) -> None:
        pa = self._pa(self.base + sub.start)
        at = pa + LFH_BITMAP + (index >> 2)
        shift = (index & 3) << 1
        bits = (self.mem[at] >> shift) & 3
        if bits:
            checks.lfh_bitmap_corrupt(self, sub, index, bits)
        self.mem[at] |= 1 << shift
        free = sub.free_bits = sub.free_bits & ~(1 << index)
        self.mem[pa + 0x20:pa + 0x22] = free.bit_count().to_bytes(2, "little")  # FreeCount

    def _lfh_next_subsegment(self, bucket: LfhBucket) -> LfhSubsegment | None:
        while bucket.partial:
            sub = bucket.partial.pop()
            if sub.free_bits and self.page_subsegments[sub.start >> PAGE_SHIFT] is sub:
                self._lfh_make_current(bucket, sub)
                return sub
        sub = self._lfh_new_subsegment(bucket)
        if sub is not None:
            self._lfh_make_current(bucket, sub)
        return sub

    def _lfh_make_current(self, bucket: LfhBucket, sub: LfhSubsegment) -> None:
        old = bucket.current
        if old is not None:
            if old.free_bits == bucket.all_free:
                self._lfh_release(old)
            elif old.free_bits:
                bucket.partial.append(old)
            else:
                self._lfh_set_aside(old)
        bucket.current = sub
        self.lfh_current[bucket.index] = sub

    def _lfh_new_subsegment(self, bucket: LfhBucket) -> LfhSubsegment | None:
        va = self.take_pages(bucket.pages, PAGE_SMALL, RANGE_LFH)
        if not va:
            return None
        if bucket.offsets is None:
            bucket.lay_out()
        sub = LfhSubsegment(va - self.base, bucket, self._lfh_frames_of(va - self.base, bucket.pages))
        first = bucket.first_block
        pa = self._pa(va)
        self.mem[pa:pa + first] = bytes(first)  # header and an all-free bitmap
        QWORD.pack_into(self.mem, pa, va)
        QWORD.pack_into(self.mem, pa + 8, va)
        QWORD.pack_into(self.mem, pa + 0x10, self.heap_va)  # Owner
        LFH_SUBSEGMENT_FIELDS.pack_into(
            self.mem, pa + LFH_FIELDS_OFFSET, sub.block_count, sub.block_count, 0, 0, 0,
            lfh_block_offsets(bucket.block_size, first, va, self.keys.lfh_key), 0, 0, 0)
        self._index_subsegment(sub)
        return sub

    def lfh_free(self, sub: LfhSubsegment, block: int) -> None:
        """Free the block at ``block`` (its POOL_HEADER address): bitmap checks, then clear.
        (The subsegment's fields and its bucket's are read directly here, not through the
        properties the slow paths' readers use: this is every generic LFH free.)"""
        bucket = sub.bucket
        va = self.base + sub.start
        index = bucket.index_of.get(block - va)
        if index is None:
            checks.bad_free_address(self, block)
        pa = self._pa(va)
        at = pa + LFH_BITMAP + (index >> 2)
        shift = (index & 3) << 1
        bits = (self.mem[at] >> shift) & 3
        if bits != 1:
            checks.lfh_not_busy(self, sub, block, bits)
        self.mem[at] &= ~(3 << shift) & 0xFF
        free = sub.free_bits = sub.free_bits | 1 << index
        sub.free_hint = index
        self.mem[pa + 0x20:pa + 0x22] = free.bit_count().to_bytes(2, "little")  # FreeCount
        self.mem[pa + 0x24:pa + 0x26] = index.to_bytes(2, "little")
        if sub is not bucket.current:
            if free == bucket.all_free:
                self._lfh_release(sub)
            elif free == 1 << index:  # its first free block: allocatable again
                bucket.partial.append(sub)

    def sync_lfh_counts(self) -> None:
        """Write every LFH subsegment's FreeCount, BlockCount and FreeHint to memory (the fast
        paths keep them in Python; a dump is written after this, as the tracker is laid out)."""
        for sub in self.subsegments():
            if sub.kind == LFH and sub.free_hint is not None:  # (None: memory's are current)
                LFH_COUNTS.pack_into(self.mem, self._pa(sub.va) + LFH_FREE_COUNT, sub.free_count,
                                     sub.block_count, sub.free_hint)

    def _lfh_release(self, sub: LfhSubsegment) -> None:
        self._unindex_subsegment(sub)
        if sub in sub.bucket.partial:
            sub.bucket.partial.remove(sub)
        self.release_pages(sub.va, sub.pages)

    def lfh_block_offsets(self, sub: LfhSubsegment) -> int:
        return DWORD.unpack_from(self.mem, self._pa(sub.va) + LFH_BLOCK_OFFSETS)[0]

    # --- the VS backend --------------------------------------------------------------------

    # vs_read and vs_write work out layout.py's decode_vs_bits / encode_vs_bits and
    # vs_page_offset_field in place, with no call to them: a big VS allocation and its free
    # read and write nine headers between them. (tests/test_segment_heap.py holds the two
    # to layout.py's functions.)

    def vs_read(self, chunk: int) -> tuple[int, int, int, int]:
        """Decoded (MemoryCost, size, previous size, allocated) of the chunk header."""
        base = self.tlb.get(chunk >> PAGE_SHIFT)  # _pa, inline for a resident page
        pa = base + (chunk & 0xFFF) if base is not None else self._pa(chunk)
        plain = _unpack_qword(self.mem, pa)[0] ^ self.heap_key ^ chunk  # HeaderBits, decoded
        return plain & 0xFFFF, plain >> 16 & 0xFFFF, plain >> 32 & 0xFFFF, plain >> 48 & 0xFF

    def vs_write(self, chunk: int, size: int, previous_size: int, allocated: bool,
                 unused_bytes: bool = False) -> None:
        """Write the chunk header: HeaderBits (MemoryCost is the size) and the u32 after it.
        (No mask on the sizes: a VS subsegment is at most 256 KiB, 0x4000 units, so every
        size fits its u16.)"""
        # Both fields are XORed with HeapKey ^ the header's address; the chunk's page within
        # its 1 MiB segment is the low 8 bits of its page number.
        key = self.heap_key ^ chunk
        base = self.tlb.get(chunk >> PAGE_SHIFT)  # _pa, inline for a resident page
        _pack_vs_header(self.mem, base + (chunk & 0xFFF) if base is not None else self._pa(chunk),
                        (size | size << 16 | previous_size << 32 | allocated << 48) ^ key,
                        (((chunk >> PAGE_SHIFT) ^ key) & 0xFF) | (0x100 if unused_bytes else 0))

    def _vs_index_add(self, chunk: int, size: int) -> None:
        bucket = self.vs_free_chunks.get(size)
        if bucket is None:
            bucket = self.vs_free_chunks[size] = {}
            insort(self.vs_sizes, size)
        bucket[chunk] = None

    def _vs_index_remove(self, chunk: int, size: int) -> None:
        bucket = self.vs_free_chunks.get(size)
        if bucket is None or chunk not in bucket:
            checks.vs_free_tree_corrupt(self, chunk, size)
        self._vs_index_drop(bucket, chunk, size)

    def _vs_index_drop(self, bucket: dict, chunk: int, size: int) -> None:
        """``chunk`` out of ``bucket``, the index's free chunks of ``size`` units, known to hold
        it; the size out of the index with its last chunk."""
        del bucket[chunk]
        if not bucket:
            del self.vs_free_chunks[size]
            del self.vs_sizes[bisect_left(self.vs_sizes, size)]

    def vs_allocate(self, units: int, page_aligned: bool = False) -> int:
        """Header address of an allocated chunk of ``units`` 16-byte units (VS header
        included) whose POOL_HEADER and data do not straddle a page, or (``page_aligned``,
        a big allocation) whose data starts a page; 0 when exhausted."""
        placed = self._vs_place(units, page_aligned)
        if placed is None:
            if not self._vs_new_subsegment(units + (PAGE_SIZE >> 4 if page_aligned else 0)):
                if not self.flush_lookasides() and not self.flush_delay_free():
                    return 0
            placed = self._vs_place(units, page_aligned)
            if placed is None:
                return 0
        chunk, size, shift = placed
        sub = self.subsegment_of(chunk)
        self._vs_index_remove(chunk, size)
        _, _, previous, _ = self.vs_read(chunk)
        if shift:
            # The front stays free, so the POOL_HEADER can start the next page.
            self.vs_write(chunk, shift, previous, False)
            self._vs_index_add(chunk, shift)
            previous = shift
            chunk += shift << 4
            size -= shift
        rest = size - units
        self.vs_write(chunk, units, previous, True)
        following = chunk + (size << 4)
        if rest:
            self.vs_write(chunk + (units << 4), rest, units, False)
            self._vs_index_add(chunk + (units << 4), rest)
            self._vs_set_previous(sub, following, rest)
        elif shift:
            self._vs_set_previous(sub, following, units)
        return chunk

    def _vs_place(self, units: int, page_aligned: bool = False):
        """(free chunk, its size, front units to skip) for a chunk of ``units``, or None."""
        sizes = self.vs_sizes
        at = bisect_left(sizes, units)
        data_bytes = (units << 4) - VS_HEADER_SIZE
        candidates = sizes[at:at + 8]
        if page_aligned:
            # Any free chunk a page longer than the request fits, wherever it starts.
            roomy = bisect_left(sizes, units + (PAGE_SIZE >> 4))
            candidates += sizes[roomy:roomy + 1]
        for size in candidates:
            for chunk in self.vs_free_chunks[size]:
                body = chunk + VS_HEADER_SIZE
                shift = 0
                if page_aligned:
                    shift = (-body & 0xFFF) >> 4
                elif data_bytes <= PAGE_SIZE and (body & 0xFFF) + data_bytes > PAGE_SIZE:
                    shift = (((body | 0xFFF) + 1) - body) >> 4
                if shift + units <= size:
                    return chunk, size, shift
        return None

    def _vs_set_previous(self, sub: VsSubsegment, chunk: int, previous: int) -> None:
        """Tell the chunk at ``chunk`` (if still inside ``sub``) its new UnsafePrevSize."""
        if chunk >= sub.end:
            return
        _, size, _, allocated = self.vs_read(chunk)
        checks.vs_header_sane(self, sub, chunk, size)
        pa = self._pa(chunk)
        QWORD.pack_into(self.mem, pa, encode_vs_bits(chunk, self.keys.heap_key, size, previous,
                                                     bool(allocated), size))

    def _vs_new_subsegment(self, units: int) -> bool:
        pages = max(VS_SUBSEGMENT_PAGES,
                    (VS_SUBSEGMENT_HEADER + (units << 4) + 2 * PAGE_SIZE - 1) >> PAGE_SHIFT)
        va = self.take_pages(pages, PAGE_SMALL, RANGE_VS)
        if not va:
            return False
        sub = VsSubsegment(va, pages)
        pa = self._pa(va)
        QWORD.pack_into(self.mem, pa, va)
        QWORD.pack_into(self.mem, pa + 8, va)
        size_units = (pages << PAGE_SHIFT) >> 4
        VS_SUBSEGMENT_SIZE_SIG.pack_into(self.mem, pa + VS_SUBSEGMENT_SIZE_OFFSET, size_units & 0xFFFF,
                                         vs_subsegment_signature(size_units & 0xFFFF))
        self._index_subsegment(sub)
        self.vs_subsegments += 1
        first_units = ((pages << PAGE_SHIFT) - VS_SUBSEGMENT_HEADER) >> 4
        self.vs_write(sub.first, first_units, 0, False)
        self._vs_index_add(sub.first, first_units)
        return True

    def vs_free(self, sub: VsSubsegment, chunk: int, size: int, previous: int) -> None:
        """Free a busy chunk of ``sub`` whose header its caller has read (``size``,
        ``previous``) and checked: small ones wait in the delay-free list first (their
        headers are read and checked again as it drains), the others coalesce now."""
        if (size << 4) < VS_DELAY_FREE_MAX_CHUNK:
            self.delay_free.append(chunk)
            if len(self.delay_free) >= VS_DELAY_FREE_DEPTH:
                self.flush_delay_free()
            return
        self._vs_coalesce(sub, chunk, size, previous)

    def flush_delay_free(self) -> int:
        pending, self.delay_free = self.delay_free, []
        for chunk in pending:
            self.vs_free_now(chunk)
        return len(pending)

    def vs_free_now(self, chunk: int) -> None:
        """Check the chunk's header (busy, inside its subsegment), then free it."""
        sub = self.subsegment_of(chunk)
        _, size, previous, allocated = self.vs_read(chunk)
        checks.vs_header_sane(self, sub, chunk, size)
        if not allocated:
            checks.vs_not_busy(self, chunk)
        self._vs_coalesce(sub, chunk, size, previous)

    def _vs_coalesce(self, sub: VsSubsegment, chunk: int, size: int, previous: int) -> None:
        """Mark a checked, busy chunk free, coalesce it with free neighbours (checking their
        headers), index it."""
        following = chunk + (size << 4)
        if following < sub.end:
            _, next_size, next_previous, next_allocated = self.vs_read(following)
            checks.vs_neighbour(self, sub, chunk, following, size, next_size, next_previous)
        self.vs_write(chunk, size, previous, False)  # checked: now it is free
        if following < sub.end:
            if not next_allocated:
                self._vs_index_remove(following, next_size)
                size += next_size
        if previous:
            before = chunk - (previous << 4)
            _, before_size, before_previous, before_allocated = self.vs_read(before)
            checks.vs_previous_neighbour(self, sub, before, chunk, previous, before_size)
            if not before_allocated:
                self._vs_index_remove(before, before_size)
                chunk, size, previous = before, before_size + size, before_previous
        if chunk == sub.first and chunk + (size << 4) == sub.end:
            self._vs_release(sub, chunk, size)
            return
        self.vs_write(chunk, size, previous, False)
        self._vs_set_previous(sub, chunk + (size << 4), size)
        self._vs_index_add(chunk, size)

    # --- the VS backend's usual cases ------------------------------------------------------
    #
    # The allocator's fast paths call these (the generic paths call vs_allocate, vs_free and
    # flush_delay_free, the general code they shortcut): each first reads and checks every
    # header the general code would read or check, and only then changes anything; anything
    # else (a chunk that must move to keep its data on one page, a page not resident, a
    # header that does not decode, a neighbour not in the free tree, a subsegment emptied
    # that may go back) answers "not the usual case" with nothing changed, and the caller
    # takes the general code, which does the same and ends the same way (its bug check
    # included). tests/test_segment_heap_vs_fast.py runs both ways and compares.

    def vs_take(self, units: int) -> int:
        """vs_allocate(units)'s usual case: the first chunk of the best-fitting size, whose
        data stays on one page where it is (no shift), split; 0 (nothing changed) otherwise."""
        sizes = self.vs_sizes
        at = bisect_left(sizes, units)
        try:
            size = sizes[at]
        except IndexError:
            return 0  # none large enough: vs_allocate makes a subsegment
        chunks = self.vs_free_chunks[size]
        chunk = next(iter(chunks))  # (_vs_place's first candidate: dicts keep insertion order)
        if ((chunk + VS_HEADER_SIZE) & 0xFFF) + (units << 4) - VS_HEADER_SIZE > PAGE_SIZE:
            return 0  # its data would straddle a page: _vs_place shifts it or looks further
        tlb, mem, key = self.tlb, self.mem, self.heap_key
        base = tlb.get(chunk >> PAGE_SHIFT)
        if base is None:
            return 0
        rest = size - units
        if rest:
            remainder = chunk + (units << 4)
            remainder_base = tlb.get(remainder >> PAGE_SHIFT)
            if remainder_base is None:
                return 0
            # The chunk after the free one learns the remainder's size (_vs_set_previous),
            # after a check of its header (vs_header_sane), made here before any change.
            following = chunk + (size << 4)
            end = self.page_subsegments[(chunk - self.base) >> PAGE_SHIFT].end
            if following < end:
                following_base = tlb.get(following >> PAGE_SHIFT)
                if following_base is None:
                    return 0
                following_pa = following_base + (following & 0xFFF)
                plain = _unpack_qword(mem, following_pa)[0] ^ key ^ following
                next_size = plain >> 16 & 0xFFFF
                if not next_size or following + (next_size << 4) > end:
                    return 0
        # The usual case: _vs_index_remove, the headers written as vs_allocate writes them.
        del chunks[chunk]
        if not chunks:
            del self.vs_free_chunks[size]
            del sizes[at]
        pa = base + (chunk & 0xFFF)
        previous = (_unpack_qword(mem, pa)[0] ^ key ^ chunk) >> 32 & 0xFFFF
        chunk_key = key ^ chunk
        _pack_vs_header(mem, pa, (units | units << 16 | previous << 32 | 1 << 48) ^ chunk_key,
                        ((chunk >> PAGE_SHIFT) ^ chunk_key) & 0xFF)
        if rest:
            # vs_write(remainder, rest, units, False) and _vs_index_add(remainder, rest), inline
            remainder_key = key ^ remainder
            _pack_vs_header(mem, remainder_base + (remainder & 0xFFF), (rest | rest << 16 | units << 32) ^ remainder_key,
                            ((remainder >> PAGE_SHIFT) ^ remainder_key) & 0xFF)
            same_size = self.vs_free_chunks.get(rest)
            if same_size is not None:
                same_size[remainder] = None
            else:  # (a size the index lists anew)
                self.vs_free_chunks[rest] = {remainder: None}
                insort(sizes, rest)
            if following < end:
                # encode_vs_bits(following, key, next_size, rest, allocated, next_size)
                QWORD.pack_into(mem, following_pa, (next_size | next_size << 16 | rest << 32 |
                                                    (1 if plain >> 48 & 0xFF else 0) << 48) ^ key ^ following)
        return chunk

    def vs_flush(self) -> int:
        """flush_delay_free (for the allocator's free fast path), each chunk's usual case taken: a chunk
        whose header decodes, busy, inside its subsegment, merged by ``_vs_merge``; any
        other by vs_free_now (its checks, then the general coalescing) or _vs_coalesce."""
        pending, self.delay_free = self.delay_free, []
        tlb, mem, key, by_page, first_page = \
            self.tlb, self.mem, self.heap_key, self.page_subsegments, self.first_page
        for chunk in pending:
            sub = by_page[(chunk >> PAGE_SHIFT) - first_page]
            base = tlb.get(chunk >> PAGE_SHIFT)
            if base is not None and type(sub) is VsSubsegment:
                plain = _unpack_qword(mem, base + (chunk & 0xFFF))[0] ^ key ^ chunk
                size = plain >> 16 & 0xFFFF
                if size and plain >> 48 & 0xFF and chunk >= sub.first and chunk + (size << 4) <= sub.end:
                    previous = plain >> 32 & 0xFFFF
                    if not self._vs_merge(sub, chunk, size, previous):
                        self._vs_coalesce(sub, chunk, size, previous)
                    continue
            self.vs_free_now(chunk)
        return len(pending)

    def _vs_merge(self, sub: VsSubsegment, chunk: int, size: int, previous: int) -> bool:
        """_vs_coalesce's usual case: the neighbours' headers read and checked first (as
        vs_neighbour, vs_previous_neighbour, _vs_index_remove and _vs_set_previous check
        them), then the same headers and index entries written; False (nothing changed)
        when a check would fail, a page is not resident, or the subsegment empties while
        another lives (_vs_release may give its pages back)."""
        tlb, mem, key, end = self.tlb, self.mem, self.heap_key, sub.end
        free_chunks = self.vs_free_chunks
        base = tlb.get(chunk >> PAGE_SHIFT)
        if base is None:
            return False
        following = chunk + (size << 4)
        merged_next = merged_before = 0  # the sizes of the free chunks after and before it, merged
        if following < end:
            following_base = tlb.get(following >> PAGE_SHIFT)
            if following_base is None:
                return False
            following_pa = following_base + (following & 0xFFF)
            plain = _unpack_qword(mem, following_pa)[0] ^ key ^ following
            next_size = plain >> 16 & 0xFFFF
            if plain >> 32 & 0xFFFF != size or not next_size or following + (next_size << 4) > end:
                return False  # vs_neighbour's bug check
            next_allocated = plain >> 48 & 0xFF
            if not next_allocated:
                if following not in free_chunks.get(next_size, ()):
                    return False  # vs_free_tree_corrupt
                merged_next = next_size
        start, total, start_previous = chunk, size + merged_next, previous
        if previous:
            before = chunk - (previous << 4)
            before_base = tlb.get(before >> PAGE_SHIFT) if before >= sub.first else None
            if before_base is None:
                return False  # (before the first chunk: vs_previous_neighbour's bug check)
            before_plain = _unpack_qword(mem, before_base + (before & 0xFFF))[0] ^ key ^ before
            before_size = before_plain >> 16 & 0xFFFF
            if before_size != previous:
                return False
            if not before_plain >> 48 & 0xFF:
                if before not in free_chunks.get(before_size, ()):
                    return False
                merged_before = before_size
                start, total, start_previous = before, before_size + total, before_plain >> 32 & 0xFFFF
        stop = start + (total << 4)
        whole = start == sub.first and stop == end
        if whole and self.vs_subsegments > 1:
            return False  # _vs_release: kept as the spare or given back
        if stop < end:
            if merged_next:
                # The chunk after the merged one: its header checked now (vs_header_sane in
                # _vs_set_previous), rewritten below.
                after_base = tlb.get(stop >> PAGE_SHIFT)
                if after_base is None:
                    return False
                after_pa = after_base + (stop & 0xFFF)
                plain = _unpack_qword(mem, after_pa)[0] ^ key ^ stop
                next_size = plain >> 16 & 0xFFFF
                if not next_size or stop + (next_size << 4) > end:
                    return False
                next_allocated = plain >> 48 & 0xFF
            else:
                after_pa = following_pa  # (stop is the chunk after it, read above)
        # The usual case, from here on as _vs_coalesce: the chunk's own header marked free
        # (kept in memory when the chunk before absorbs it; else rewritten below), the free
        # neighbours out of the index, the merged chunk's header, its next chunk's previous
        # size, the merged chunk into the index.
        if merged_before:
            # vs_write(chunk, size, previous, False), inline: its header, marked free, stays
            # inside the merged chunk (as the general code leaves it)
            chunk_key = key ^ chunk
            _pack_vs_header(mem, base + (chunk & 0xFFF), (size | size << 16 | previous << 32) ^ chunk_key,
                            ((chunk >> PAGE_SHIFT) ^ chunk_key) & 0xFF)
        # _vs_index_remove of each merged neighbour, without its check (each was found in the
        # index above)
        if merged_next:
            self._vs_index_drop(free_chunks[merged_next], following, merged_next)
        if merged_before:
            self._vs_index_drop(free_chunks[merged_before], start, merged_before)
        if whole:
            # _vs_release with one subsegment: kept, its header's previous size 0.
            self.vs_spare = sub
            start_previous = 0
        # vs_write(start, total, start_previous, False), inline (start's page: the chunk's, or
        # the chunk before's, both translated above)
        start_key = key ^ start
        _pack_vs_header(mem, (base if start == chunk else before_base) + (start & 0xFFF),
                        (total | total << 16 | start_previous << 32) ^ start_key,
                        ((start >> PAGE_SHIFT) ^ start_key) & 0xFF)
        if stop < end:
            QWORD.pack_into(mem, after_pa, (next_size | next_size << 16 | total << 32 |
                                            (1 if next_allocated else 0) << 48) ^ key ^ stop)
        same_size = free_chunks.get(total)  # _vs_index_add(start, total), inline
        if same_size is not None:
            same_size[start] = None
        else:
            free_chunks[total] = {start: None}
            insort(self.vs_sizes, total)
        return True

    def _vs_empty(self, spare, other: VsSubsegment) -> bool:
        """``spare`` is another live subsegment, wholly one free chunk."""
        if spare is None or spare is other or self.subsegment_of(spare.va) is not spare:
            return False
        _, size, _, allocated = self.vs_read(spare.first)
        return not allocated and spare.first + (size << 4) == spare.end

    def _vs_release(self, sub: VsSubsegment, chunk: int, size: int) -> None:
        if self.vs_subsegments <= 1 or not self._vs_empty(self.vs_spare, sub):
            # Keep the last subsegment, and one more that emptied, empty: a heap does not
            # give all its memory back (and a big VS allocation freed and made again does
            # not map and unmap its pages each time).
            self.vs_spare = sub
            self.vs_write(chunk, size, 0, False)
            self._vs_index_add(chunk, size)
            return
        self.vs_subsegments -= 1
        self._unindex_subsegment(sub)
        self.release_pages(sub.va, sub.pages)

    # --- the dynamic lookaside ---------------------------------------------------------------

    def lookaside_push(self, bucket_index: int, entry: int) -> bool:
        """Keep a freed block (its POOL_HEADER address) on its bucket; False when full."""
        bucket = self.lookaside[bucket_index]
        bucket.frees += 1
        if not bucket.enabled or bucket.count >= bucket.depth:
            return False
        self.write_qword(entry, bucket.head)  # SLIST_ENTRY over the header's first 8 bytes
        bucket.head = entry
        bucket.count += 1
        return True

    def lookaside_take(self, bucket_index: int) -> int:
        """lookaside_pop's usual case, for the allocation fast path (allocate_vs): a bucket
        whose head is a busy VS chunk that fits (checks.lookaside_entry), resident, linking
        to nothing or to a block of the heap's subsegments (checks.lookaside_link); 0 with
        nothing changed otherwise (an empty bucket too), and the caller calls lookaside_pop,
        which checks and bug-checks as ever."""
        bucket = self.lookaside[bucket_index]
        entry = bucket.head
        chunk = entry - VS_HEADER_SIZE
        by_page = self.page_subsegments
        base = self.base
        if entry < base or (entry - base) >> PAGE_SHIFT >= len(by_page):
            return 0
        sub = by_page[(entry - base) >> PAGE_SHIFT]
        if type(sub) is not VsSubsegment or chunk < sub.first:
            return 0
        tlb, mem = self.tlb, self.mem
        chunk_base = tlb.get(chunk >> PAGE_SHIFT)
        entry_base = tlb.get(entry >> PAGE_SHIFT)
        if chunk_base is None or entry_base is None:
            return 0
        plain = _unpack_qword(mem, chunk_base + (chunk & 0xFFF))[0] ^ self.heap_key ^ chunk
        size = plain >> 16 & 0xFFFF
        if not plain >> 48 & 0xFF or (size << 4) - VS_HEADER_SIZE < _LOOKASIDE_BYTES[bucket_index] \
                or chunk + (size << 4) > sub.end:
            return 0
        link = _unpack_qword(mem, entry_base + (entry & 0xFFF))[0]  # the SLIST_ENTRY's Next
        if link:
            if link & 0xF or not base <= link < self.limit or (link - base) >> PAGE_SHIFT >= len(by_page):
                return 0
            linked = by_page[(link - base) >> PAGE_SHIFT]
            if linked is None or type(linked) is FullLfhPage:
                return 0  # (a mark: subsegment_of makes its subsegment's object again)
        bucket.allocates += 1
        bucket.head = link
        bucket.count -= 1
        return entry

    def lookaside_pop(self, bucket_index: int) -> int:
        bucket = self.lookaside[bucket_index]
        bucket.allocates += 1
        entry = bucket.head
        if not entry:
            bucket.misses += 1
            return 0
        checks.lookaside_entry(self, bucket_index, entry, lookaside_bucket_bytes(bucket_index))
        bucket.head = self.read_qword(entry)
        bucket.count -= 1
        if bucket.head:
            checks.lookaside_link(self, bucket_index, entry, bucket.head)
        return entry

    def balance_set_pass(self, number: int) -> None:
        """What the Balance Set Manager does each pass: adjust depths (ExAdjustLookasideDepth's
        rule); every third pass, enable the buckets that were used."""
        for bucket in self.lookaside[1:]:
            allocates, misses = bucket.allocates, bucket.misses
            if not (allocates or bucket.frees or bucket.count) and bucket.depth == LOOKASIDE_MIN_DEPTH:
                # A bucket unused since the last pass, at its least depth (most of the 64):
                # nothing below changes it (its depth stays the least, it is not enabled).
                continue
            if allocates < 25:
                depth = bucket.depth - 10
            else:
                ratio = misses * 1000 // allocates
                if ratio < 5:
                    depth = bucket.depth - 1
                else:
                    depth = bucket.depth + (ratio * (LOOKASIDE_MAX_DEPTH - bucket.depth)) // 2000 + 5
            bucket.depth = max(LOOKASIDE_MIN_DEPTH, min(LOOKASIDE_MAX_DEPTH, depth))
            if number % 3 == 0 and bucket.frees:
                bucket.enabled = True
            bucket.allocates = bucket.misses = bucket.frees = 0
            while bucket.count > bucket.depth:
                self._lookaside_drop_one(bucket)

    def _lookaside_drop_one(self, bucket: LookasideBucket) -> None:
        entry = bucket.head
        bucket.head = self.read_qword(entry)
        bucket.count -= 1
        self.free_block(entry)

    def flush_lookasides(self) -> int:
        flushed = 0
        for bucket in self.lookaside[1:]:
            while bucket.count:
                self._lookaside_drop_one(bucket)
                flushed += 1
            bucket.head = 0
        return flushed

    # --- what a page holds (for pictures) ---------------------------------------------------

    def page_blocks(self, page_va: int) -> list[tuple[int, int, str, int]] | None:
        """(offset in the page, length, state, tag) of each block on an LFH or VS page, clipped
        to the page; None for a page that holds no blocks (a segment header, a big run).
        State: Allocated, Free, or Lookaside for a block the front ends hold (the dynamic
        lookaside, the delay-free list), which memory shows as busy."""
        sub = self.subsegment_of(page_va)
        if sub is None:
            return None
        end = page_va + PAGE_SIZE
        held = self._front_end_blocks()
        found = []
        if sub.kind == LFH:
            for index, offset in enumerate(sub.offsets):
                block = sub.va + offset
                if page_va <= block < end:
                    busy = not sub.free_bits >> index & 1
                    tag = DWORD.unpack_from(self.mem, self._pa(block) + 4)[0]
                    state = ("Lookaside" if block in held else "Allocated") if busy else "Free"
                    found.append((block - page_va, sub.block_size, state, tag if busy else 0))
            return found
        chunk = sub.first
        while chunk < end:
            _, size, _, allocated = self.vs_read(chunk)
            if not size:
                break
            stop = chunk + (size << 4)
            if stop > page_va:
                first, last = max(chunk, page_va), min(stop, end)
                big = self.big_pages.get(chunk + VS_HEADER_SIZE) if allocated else None
                if big is not None:  # a big allocation: no POOL_HEADER, the tag is the table's
                    tag = big[0]
                else:
                    tag = DWORD.unpack_from(self.mem, self._pa(chunk + VS_HEADER_SIZE) + 4)[0] \
                        if allocated else 0
                state = ("Lookaside" if chunk + VS_HEADER_SIZE in held else "Allocated") \
                    if allocated else "Free"
                found.append((first - page_va, last - first, state, tag))
            chunk = stop
        return found

    def _front_end_blocks(self) -> set[int]:
        """POOL_HEADER addresses of blocks on the dynamic lookaside or the delay-free list."""
        held = {chunk + VS_HEADER_SIZE for chunk in self.delay_free}
        for bucket in self.lookaside[1:]:
            entry, count = bucket.head, bucket.count
            while entry and count:
                held.add(entry)
                entry, count = self.read_qword(entry), count - 1
        return held

    def lookaside_chunks(self) -> set[int]:
        return self._front_end_blocks()

    # --- freeing a block to its backend -----------------------------------------------------

    def free_block(self, header: int, sub=None) -> None:
        """Give the block whose POOL_HEADER is at ``header`` back to the backend owning it
        (``sub``: its subsegment, from a caller that has looked it up)."""
        if sub is None:
            sub = self.subsegment_of(header)
        if sub is None:
            checks.bad_free_address(self, header)
        if sub.kind == LFH:
            self.lfh_free(sub, header)
            return
        chunk = header - VS_HEADER_SIZE
        if chunk < sub.first:
            checks.bad_free_address(self, header)
        _, size, previous, allocated = self.vs_read(chunk)
        checks.vs_header_sane(self, sub, chunk, size)
        if not allocated:
            checks.vs_not_busy(self, chunk)
        self.vs_free(sub, chunk, size, previous)
