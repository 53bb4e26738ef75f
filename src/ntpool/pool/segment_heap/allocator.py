"""The pool on the segment heap: what ExAllocatePoolWithTag / ExFreePool do on Windows 10/11.

The same interface as the Windows 7 ``PoolAllocator`` (the routines, the verifier and the
tools call both alike): request checks, tags, IRQL rules, priorities, quota and the
verifier's interceptor are inherited; what is this design's own is here: routing a
request to the LFH, the VS backend or whole pages, the POOL_HEADER the pool still writes
in front of blocks up to 0xFE0 bytes (PoolType as it encodes it, ProcessBilled encoded
with ExpPoolQuotaCookie, CacheAligned's second header), the dynamic lookaside on free,
and the free path's checks. The fast paths serve the LFH: a block from an active bucket's
current subsegment, and its free, with no Python object per allocation.
"""

import struct
import sys

from ...packing import x64_struct
from ...constants import (
    PAGE_SHIFT,
    PAGE_SIZE,
    POOL_NX_ALLOCATION,
    BadPoolCaller,
    BugCheckCode,
)
from ...tags import PROTECTED_POOL, tag_value
from ...machine.irql import pool_usable_at
from ..allocator import STATUS_QUOTA_EXCEEDED, ZERO_PACKERS, PoolAllocator, _zero_packer, checked_address
from ..checks import check_free_tag
from ..tracker import BLOCK_CHARGES, ONE
from .heap import LFH, SegmentHeap, VsSubsegment
from .layout import (
    CACHE_LINE,
    EPROCESS_MIN_ADDRESS,
    LFH_ACTIVATE_LIVE,
    LFH_ACTIVATE_REQUESTS,
    LFH_BITMAP,
    LFH_BUCKET_COUNT,
    LFH_COUNTS,
    LFH_MAX_REQUEST,
    LFH_MOST_BLOCKS,
    POOL_HEADER,
    POOL_HEADER_FIRST8,
    POOL_HEADER_SIZE,
    POOL_TYPE_ALIGNED,
    POOL_TYPE_QUOTA,
    PROCESS_OBJECT_TYPE,
    QWORD,
    VS_DELAY_FREE_DEPTH,
    VS_DELAY_FREE_MAX_CHUNK,
    VS_HEADER_SIZE,
    VS_MAX_REQUEST,
    WORD,
    encode_process_billed,
    header_pool_type,
    lookaside_bucket,
    lookaside_bucket_bytes,
)

BAD_POOL_CALLER = BugCheckCode.BAD_POOL_CALLER
BAD_POOL_HEADER = BugCheckCode.BAD_POOL_HEADER
BAD_PROCESS_BILLED = 0x0E  # BAD_POOL_HEADER P1 for a ProcessBilled that does not decode
BALANCE_SET_INTERVAL = 256  # generic frees between two Balance Set Manager passes

_getframe = sys._getframe
_pack_header = POOL_HEADER.struct.pack_into  # the Struct's own (the layout's adds a Python call: 200 ns)
_unpack_first8 = POOL_HEADER_FIRST8.unpack_from
# The fast paths' header runs, with PreviousSize and PoolIndex as pad bytes (an LFH block's
# are 0; struct writes pad bytes as zeros): fewer arguments to convert, fewer values made.
_LFH_HEADER = x64_struct("<2xBBIQ")  # BlockSize, PoolType, PoolTag, the call site
assert _LFH_HEADER.pack(8, 2, 5, 7) == POOL_HEADER.struct.pack(0, 0, 8, 2, 5, 7)
_pack_lfh_header = _LFH_HEADER.pack_into
_SIZE_TYPE_TAG = struct.Struct("<2xBBI")  # BlockSize, PoolType, PoolTag
assert _SIZE_TYPE_TAG.unpack(POOL_HEADER_FIRST8.pack(1, 2, 3, 4, 5)) == (3, 4, 5)
_unpack_size_type_tag = _SIZE_TYPE_TAG.unpack_from
_unpack_qword = QWORD.unpack_from
_pack_qword = QWORD.pack_into
_PROCESS_BILLED = POOL_HEADER.ProcessBilled  # its offset in a POOL_HEADER
_pack_word = WORD.pack_into
_pack_counts = LFH_COUNTS.pack_into  # FreeCount, BlockCount, FreeHint
# The fast paths' constants (CPython 3.11 specializes a tuple subscript, not << or >>): a
# request's 16-byte units (the LFH's bucket) for each NumberOfBytes the LFH serves, and a
# block's busy bit in its byte of the LFH bitmap (2 bits a block, 01 busy) by index & 3.
_UNITS_FOR = tuple((number_of_bytes + POOL_HEADER_SIZE + 15) >> 4 for number_of_bytes in range(LFH_MAX_REQUEST + 1))
# Block n's bit in a subsegment's free bits, 1 << n, made once (not a new int every call);
# and, by n too, where its two bits are in the LFH bitmap: the byte's offset in the
# subsegment (LFH_BITMAP + n // 4), its busy bit (01) in that byte and both bits' mask.
_FREE_BIT = tuple(1 << index for index in range(LFH_MOST_BLOCKS))
_BITMAP_BYTE = tuple(LFH_BITMAP + index // 4 for index in range(LFH_MOST_BLOCKS))
_BUSY_BIT = tuple(1 << ((index & 3) << 1) for index in range(LFH_MOST_BLOCKS))
_BLOCK_BITS = tuple(3 << ((index & 3) << 1) for index in range(LFH_MOST_BLOCKS))
# A random pick's start, FreeHint's group of 32 plus 0..31, may pass the last block: its bit
# in the free bits by start, made once, for every start there can be.
_START_BIT = tuple(1 << start for start in range(LFH_MOST_BLOCKS + 32))
# A body at an offset below this from its subsegment's start has its POOL_HEADER on the
# subsegment's first page, with the bitmap.
_FIRST_PAGE_BODIES = PAGE_SIZE + POOL_HEADER_SIZE


def _take_lfh_block(heap: SegmentHeap, mem, units: int, tag: int, site: int, row: list,
                    process: int = 0, cookie: int = 0) -> int:
    """The body of a block of ``units`` from its active LFH bucket's current subsegment, its
    POOL_HEADER written and its tag's ``row`` charged; 0 (nothing changed) when the bucket has
    no current subsegment with a free block or a page of it is paged out. The same steps as
    the allocation fast path (``fast_allocate``), which has them inline: see its comments.
    ``process``: the EPROCESS charged for it (0: none), whose header then has the quota bit
    and ProcessBilled encoded with ``cookie`` (ExpPoolQuotaCookie) in place of the call
    site, written in the same pack (as ``bill`` marks it)."""
    sub = heap.lfh_current[units]
    free = sub.free_bits
    if not free:
        return 0
    start = (sub.free_hint & ~31) + next(heap.random_slots)
    if free & _START_BIT[start]:
        index = start
    elif later := free >> start:
        index = start + (later ^ (later - 1)).bit_length() - 1
    else:
        index = (free ^ (free - 1)).bit_length() - 1
    block_offset = sub.bucket.offsets[index]
    header = sub.start + block_offset
    frames = sub.frames
    bitmap_frame = frames[0]
    frame = bitmap_frame if block_offset < PAGE_SIZE else frames[block_offset // PAGE_SIZE]
    if not (bitmap_frame and frame):
        return 0
    sub.free_bits = free ^ _FREE_BIT[index]
    mem[bitmap_frame + _BITMAP_BYTE[index]] |= _BUSY_BIT[index]
    if process:
        # (encode_process_billed, inline: the EPROCESS, the cookie and the header's address
        # XORed, all 64-bit values, so no mask is needed)
        _pack_lfh_header(mem, frame + (header & 0xFFF), units, heap.header_type | POOL_TYPE_QUOTA, tag,
                         process ^ cookie ^ (heap.base + header))
    else:
        _pack_lfh_header(mem, frame + (header & 0xFFF), units, heap.header_type, tag, site)
    row[heap.track_offset] += BLOCK_CHARGES[units]
    return heap.bodies_from + header


def block_units(number_of_bytes: int, aligned: bool = False) -> int:
    """16-byte units of the block (POOL_HEADER included) a small request gets."""
    if aligned:
        number_of_bytes += CACHE_LINE
    units = (number_of_bytes + POOL_HEADER_SIZE + 15) >> 4
    if units > LFH_BUCKET_COUNT:
        bucket = lookaside_bucket(units << 4)
        if bucket:
            units = lookaside_bucket_bytes(bucket) >> 4
    return units


# allocate_vs's tables, by NumberOfBytes (1..0xFE0): block_units; and by a block's 16-byte
# units (a POOL_HEADER's BlockSize, 0..255): its dynamic lookaside bucket (0: none).
_BLOCK_UNITS = (0,) + tuple(block_units(number_of_bytes) for number_of_bytes in range(1, VS_MAX_REQUEST + 1))
_LOOKASIDE_BUCKET_OF = tuple(lookaside_bucket(units << 4) for units in range(256))


class SegmentHeapAllocator(PoolAllocator):
    def __init__(self, nonpaged: SegmentHeap, nonpaged_nx: SegmentHeap, paged: SegmentHeap,
                 crash, call_sites, keys, hooks=None):
        self.nonpaged_nx = nonpaged_nx
        self.keys = keys
        self.balance_passes = 0
        self._frees_since_pass = 0
        super().__init__(nonpaged, paged, crash, call_sites, hooks)
        self.pools = (nonpaged, paged, nonpaged_nx)
        self.pools_by_slot = {heap.base >> 39: heap for heap in self.pools}
        self.refresh_fast_paths()

    def usable_pools(self) -> dict:
        usable: dict = {}
        if pool_usable_at(self.irql, 0):
            usable[0] = self.nonpaged
            usable[POOL_NX_ALLOCATION] = self.nonpaged_nx
            if pool_usable_at(self.irql, 1):
                usable[1] = self.paged
        return usable

    def fast_lists_for(self, fast_pools: dict) -> dict:
        return {}  # the LFH fast path reads each heap's current subsegments instead

    def fast_frees_for(self, free_slots: dict) -> dict:
        return {}  # the LFH free fast path reads ``fast_free_slots`` and the subsegments

    def pool_for(self, pool_type: int) -> SegmentHeap:
        if pool_type & 1:
            return self.paged
        return self.nonpaged_nx if pool_type & POOL_NX_ALLOCATION else self.nonpaged

    # --- fast paths ----------------------------------------------------------------------

    def fast_allocate(self, caller_depth: int = 2, zero: bool = False):
        """PoolAllocator.fast_allocate for this design: the fast path takes a block from an
        active LFH bucket's current subsegment."""
        allocator = self
        site_index_get = self.site_index.get
        lookup_site = self.call_sites.lookup
        known_tags = self.known_tags
        fast_pools = self.fast_pools
        mem = self.mem

        # The last indexed call site, as PoolAllocator.fast_allocate keeps it.
        last_code = last_lasti = last_site = None

        def forget_last_site() -> None:
            nonlocal last_code
            last_code = None

        self.call_sites.when_index_cleared(forget_last_site)

        def allocate(PoolType, NumberOfBytes, Tag):
            nonlocal last_code, last_lasti, last_site
            frame = _getframe(caller_depth)
            code = frame.f_code
            lasti = frame.f_lasti
            if code is last_code and lasti == last_lasti:
                site = last_site
            else:
                site = site_index_get(id(code) + lasti)  # drivers.site_key
                if site is None:
                    site = lookup_site(frame)
                else:
                    last_code, last_lasti, last_site = code, lasti, site
            try:
                tag_ulong, row = known_tags[Tag]
                heap = fast_pools[PoolType]
                if 0 < NumberOfBytes <= LFH_MAX_REQUEST:
                    units = _UNITS_FOR[NumberOfBytes]
                    free = (sub := heap.lfh_current[units]).free_bits  # 0 until the bucket is active
                    if free:
                        # The LFH's randomised pick (SegmentHeap.lfh_allocate), inline.
                        # (next(), a builtin CPython 3.11 calls directly, not the iterator's
                        # __next__, a method-wrapper it calls through a tuple of arguments.)
                        start = (sub.free_hint & ~31) + next(heap.random_slots)
                        if free & _START_BIT[start]:  # the block picked is free (most are, in a fresh subsegment)
                            index = start
                        elif later := free >> start:  # the first free one after it: later's lowest bit set
                            index = start + (later ^ (later - 1)).bit_length() - 1
                        else:  # none after it: the first free one
                            index = (free ^ (free - 1)).bit_length() - 1
                        # Offsets from the heap's base (small ints, cheaper than the 64-bit
                        # address): the subsegment's, which starts a page, and the block's.
                        block_offset = sub.bucket.offsets[index]
                        header = sub.start + block_offset
                        # Both pages' frames before anything changes: one paged out (0) sends
                        # the request to the generic path with the free bits intact. (A block
                        # on the subsegment's first page, with its bitmap, has its frame.)
                        frames = sub.frames
                        bitmap_frame = frames[0]
                        frame = bitmap_frame if block_offset < PAGE_SIZE else frames[block_offset // PAGE_SIZE]
                        if bitmap_frame and frame:
                            sub.free_bits = free ^ _FREE_BIT[index]  # FreeCount in memory: synced before a dump
                            mem[bitmap_frame + _BITMAP_BYTE[index]] |= _BUSY_BIT[index]
                            pa = frame + (header & 0xFFF)
                            _pack_lfh_header(mem, pa, units, heap.header_type, tag_ulong, site)
                            row[heap.track_offset] += BLOCK_CHARGES[units]  # one allocation, its bytes
                            body = heap.bodies_from + header  # the block's body, as an address
                            if zero:
                                if allocator.writes_watched:
                                    allocator.zero(body, NumberOfBytes)
                                else:
                                    (ZERO_PACKERS[NumberOfBytes] or _zero_packer(NumberOfBytes))(mem, pa + POOL_HEADER_SIZE)
                            return body
                        onward = False  # a page paged out: the generic path faults it in
                    else:
                        onward = True  # no active LFH subsegment with a free block
                else:  # VS chunks, or pages
                    onward = type(NumberOfBytes) is int and LFH_MAX_REQUEST < NumberOfBytes < 1 << 64
                if onward:
                    # Everything the generic path would validate is known good here (tag, type,
                    # size, IRQL, no layer): the request goes straight on to the heap, as on
                    # Windows 7 (PoolAllocator.fast_allocate); a small one to allocate_vs,
                    # allocate_plain's steps with the VS backend's usual case taken.
                    if NumberOfBytes <= VS_MAX_REQUEST:
                        body = allocator.allocate_vs(heap, NumberOfBytes, tag_ulong, site, row)
                    else:
                        body = allocator.allocate_plain(heap, NumberOfBytes, tag_ulong, site)
                    if not body:
                        return allocator.fast_failure(PoolType, NumberOfBytes)
                    if zero:
                        allocator.zero(body, NumberOfBytes)
                    return body
            except (KeyError, TypeError, IndexError, AttributeError):
                pass
            body = allocator.allocate_generic(PoolType, NumberOfBytes, Tag, site)
            if zero and body:
                allocator.zero(body, NumberOfBytes)
            return body

        return allocate

    def fast_free(self):
        """PoolAllocator.fast_free for this design: the fast path gives back a block of an
        LFH subsegment its bucket allocates from. ``blocks``: as there (NdisFreeMemory)."""
        allocator = self
        fast_free_slots = self.fast_free_slots
        known_tags = self.known_tags
        tracker_rows = self.tracker.rows
        mem = self.mem

        def free(P, Tag, blocks: int = 0) -> bool | None:
            try:
                heap = fast_free_slots[P >> 39]
                # P as an offset from the heap's base (a small int from here on; never
                # negative: the heap starts the slot), its offset in its page, its page's index.
                relative = P - heap.base
                offset = relative & 0xFFF
                if offset:
                    page = relative // PAGE_SIZE
                    sub = heap.page_subsegments[page]
                    bucket = sub.bucket
                    free = sub.free_bits
                    # An LFH subsegment its bucket allocates from, or another with a free
                    # block already (on its bucket's partial list, where it stays); not a full
                    # one (a free puts it on that list: the generic path), whose mark has no
                    # free bits, nor a VS subsegment (no free bits, no current). P's page
                    # resident: its frame from the subsegment's (0, paged out: the generic
                    # path pages it in).
                    if bucket.current is sub or free:
                        body_offset = relative - sub.start  # in the subsegment
                        frames = sub.frames
                        frame = frames[body_offset // PAGE_SIZE]
                    else:
                        frame = 0
                    if frame:
                        pa = frame + offset - POOL_HEADER_SIZE
                        block_size, type_byte, stored = _unpack_size_type_tag(mem, pa)
                        if Tag is None:
                            # ExFreePool: the stored tag is the one passed. A protected one must be
                            # named (the generic path insists): it has no tracker row under its own
                            # value (a row is by the tag without bit 31), so KeyError sends it there.
                            passed, row = stored, tracker_rows[stored]
                        else:
                            passed, row = known_tags[Tag]
                        if stored == passed and not type_byte & POOL_TYPE_ALIGNED \
                                and block_size <= LFH_BUCKET_COUNT and (not blocks or block_size == blocks):
                            index = bucket.index_of_body[body_offset]
                            # The bitmap is on the subsegment's first page: P's, translated
                            # above, when the block's header is there too.
                            bitmap_frame = frame if body_offset < _FIRST_PAGE_BODIES else frames[0]
                            at = bitmap_frame + _BITMAP_BYTE[index]
                            busy = _BUSY_BIT[index]
                            # (A bitmap page paged out, frame 0; a subsegment not current that
                            # this free empties, which the generic path releases: not here.)
                            if bitmap_frame and (bits := mem[at]) & _BLOCK_BITS[index] == busy and \
                                    (bucket.current is sub or free | _FREE_BIT[index] != bucket.all_free):
                                if type_byte & POOL_TYPE_QUOTA:
                                    # Charged to a process: ProcessBilled decoded and checked, the
                                    # charge returned, before anything changes (as the generic
                                    # path does it, before the block's free).
                                    allocator._release_billed(heap, P - POOL_HEADER_SIZE, pa,
                                                              bucket.block_size)
                                mem[at] = bits ^ busy
                                sub.free_bits = free | _FREE_BIT[index]  # FreeCount, FreeHint in memory: synced before a dump
                                sub.free_hint = index
                                if allocator.layer is not None:
                                    allocator.layer.forget(P)  # an observing layer's record of it
                                # One free, its bytes (the subsegment's block size: its bucket's
                                # index is its 16-byte units).
                                row[heap.track_free_offset] += BLOCK_CHARGES[bucket.index]
                                return True
                    elif type(sub) is VsSubsegment and not blocks and allocator.layer is None:
                        # A VS chunk's block: free_generic's steps, its usual case shortcut.
                        allocator.free_vs(heap, sub, P, Tag)
                        return None
                elif not blocks and allocator.layer is None and P in heap.big_pages:
                    # A big allocation (pages, or a VS chunk): nothing for the generic path to
                    # validate first (the heap and IRQL are the fast path's); its own checks follow.
                    allocator._free_big_checked(heap, P, None if Tag is None or Tag == 0 else
                                                known_tags[Tag][0])
                    return None
            except (KeyError, TypeError, IndexError, AttributeError):
                pass
            if blocks:
                return False
            allocator.free_generic(P, Tag)
            return None

        return free

    def fast_allocate_charged(self, caller_depth: int = 2, zero: bool = False):
        """PoolAllocator.fast_allocate_charged for this design: the usual charged request
        takes a block from an active LFH bucket's current subsegment (``_take_lfh_block``),
        its header written once with the quota bit and ProcessBilled encoded."""
        allocator = self
        site_index_get = self.site_index.get
        lookup_site = self.call_sites.lookup
        known_tags = self.known_tags
        fast_pools = self.fast_pools
        mem = self.mem
        cookie = self.keys.pool_quota_cookie  # (the keys are fixed at boot)

        # The last indexed call site, as PoolAllocator.fast_allocate keeps it.
        last_code = last_lasti = last_site = None

        def forget_last_site() -> None:
            nonlocal last_code
            last_code = None

        self.call_sites.when_index_cleared(forget_last_site)

        def allocate_charged(PoolType, NumberOfBytes, Tag, process):
            nonlocal last_code, last_lasti, last_site
            frame = _getframe(caller_depth)
            code = frame.f_code
            lasti = frame.f_lasti
            if code is last_code and lasti == last_lasti:
                site = last_site
            else:
                site = site_index_get(id(code) + lasti)  # drivers.site_key
                if site is None:
                    site = lookup_site(frame)
                else:
                    last_code, last_lasti, last_site = code, lasti, site
            try:
                tag_ulong, row = known_tags[Tag]
                heap = fast_pools[PoolType]
                # (Only a size and a tag of the exact types allocate_with_quota takes as they
                # are: see PoolAllocator.fast_allocate_charged.)
                if type(NumberOfBytes) is int and (type(Tag) is str or type(Tag) is int) and \
                        0 < NumberOfBytes <= LFH_MAX_REQUEST:
                    units = _UNITS_FOR[NumberOfBytes]
                    # The charge (quota_charge_for: the block's bytes), decided as
                    # QuotaLedger.try_charge decides it on the process in hand (no ledger
                    # lookup), and made once the block is taken: a block it cannot take (no
                    # active subsegment with a free one, a page paged out) goes to the generic
                    # path with nothing charged.
                    which = heap.base_type
                    usage = process.quota_usage
                    used = usage[which] + units * 16
                    limit = process.quota_limit[which]
                    if limit is not None and used > limit:
                        return 0, STATUS_QUOTA_EXCEEDED
                    body = _take_lfh_block(heap, mem, units, tag_ulong, site, row, process.address, cookie)
                    if body:
                        usage[which] = used
                        peak = process.quota_peak
                        if used > peak[which]:
                            peak[which] = used
                        if zero:
                            allocator.zero(body, NumberOfBytes)
                        return body, 0
            except (KeyError, TypeError, IndexError, AttributeError):
                pass
            return allocator.allocate_with_quota(PoolType, NumberOfBytes, Tag, process.address, zero=zero,
                                                 site=site)

        return allocate_charged

    # --- generic allocation ----------------------------------------------------------------

    def allocate_plain(self, pool: SegmentHeap, number_of_bytes: int, tag: int, site: int = 0,
                       aligned: bool = False) -> int:
        if aligned and number_of_bytes + CACHE_LINE > VS_MAX_REQUEST:
            aligned = False  # dropped above 0xFE0: big allocations are page-aligned anyway
        if number_of_bytes > VS_MAX_REQUEST:
            va = pool.allocate_big(number_of_bytes, tag)
            if va:
                pool.big_sites[va] = site
                pool.big_details[va] = (number_of_bytes, pool.pool_type, 0)
                self.tracker.charge(tag, pool.track_offset, pool.big_pages[va][1] << PAGE_SHIFT)
            return va
        units = block_units(number_of_bytes, aligned)
        header = self.small_block(pool, units)
        if not header:
            return 0
        pa = pool._pa(header)
        _pack_header(self.mem, pa, 0, 0, units, pool.header_type, tag, site)
        self.tracker.charge(tag, pool.track_offset, units << 4)
        body = header + POOL_HEADER_SIZE
        if aligned:
            body = self._align(pool, header, units, tag, site)
        return body

    def allocate_vs(self, heap: SegmentHeap, number_of_bytes: int, tag: int, site: int,
                    row: list) -> int:
        """``allocate_plain`` (not cache-aligned) for a request of 1..0xFE0 bytes the LFH fast
        path did not serve, the tag's tracker ``row`` given: the same steps, with the VS
        backend's usual case taken (``SegmentHeap.vs_take``, else ``vs_allocate``). A bucket
        of the LFH that is active, or not yet made, takes ``allocate_plain`` itself."""
        units = _BLOCK_UNITS[number_of_bytes]
        header = 0
        if units <= LFH_BUCKET_COUNT:
            bucket = heap.lfh_buckets[units]
            # (once the bucket is active, allocate_plain's call of lfh_wants changes nothing)
            if bucket is None or bucket.active:
                return self.allocate_plain(heap, number_of_bytes, tag, site)
            # SegmentHeap.lfh_wants, inline: the request counted; the bucket enabled by it
            # (its 17th live block, or its 2,040th request) takes allocate_plain's LFH block.
            requests = bucket.requests = bucket.requests + 1
            if bucket.live_elsewhere + 1 >= LFH_ACTIVATE_LIVE or requests >= LFH_ACTIVATE_REQUESTS:
                bucket.active = True
                return self.allocate_plain(heap, number_of_bytes, tag, site)
            bucket.live_elsewhere += 1  # small_block's count: a VS chunk of this bucket's size
        else:
            bucket_index = _LOOKASIDE_BUCKET_OF[units]
            if bucket_index:
                lookaside = heap.lookaside[bucket_index]
                if lookaside.head:
                    header = heap.lookaside_take(bucket_index) or heap.lookaside_pop(bucket_index)
                else:
                    # lookaside_pop of an empty bucket, inline: a request and a miss counted
                    lookaside.allocates += 1
                    lookaside.misses += 1
        if not header:
            chunk = heap.vs_take(units + 1) or heap.vs_allocate(units + 1)
            if not chunk:
                return 0
            header = chunk + VS_HEADER_SIZE
        # allocate_plain's last steps: the POOL_HEADER written (PreviousSize and PoolIndex 0:
        # the LFH header's pack), the tag charged.
        base = self.tlb.get(header >> PAGE_SHIFT)
        pa = base + (header & 0xFFF) if base is not None else heap._pa(header)
        _pack_lfh_header(self.mem, pa, units, heap.header_type, tag, site)
        row[heap.track_offset] += BLOCK_CHARGES[units]
        return header + POOL_HEADER_SIZE

    def free_vs(self, heap: SegmentHeap, sub: VsSubsegment, address: int, tag) -> None:
        """free_generic's steps for a block of ``sub`` (a VS subsegment of ``heap``, which the
        free fast path serves: the IRQL allows it, no layer) when they are the usual ones:
        the address a block's, its header's tag the one passed (or ExFreePool's), not
        cache-aligned nor charged to a process, its chunk's header decoding busy inside the
        subsegment. Anything else goes to free_generic with nothing changed (it checks and
        bug-checks as ever)."""
        header = address - POOL_HEADER_SIZE
        chunk = header - VS_HEADER_SIZE
        tlb = self.tlb
        base = tlb.get(header >> PAGE_SHIFT)  # (P's page: P is not a page's first byte)
        chunk_base = tlb.get(chunk >> PAGE_SHIFT)
        if address & 0xF or base is None or chunk_base is None or chunk < sub.first:
            self.free_generic(address, tag)
            return
        mem = self.mem
        pa = base + (header & 0xFFF)
        block_size, type_byte, stored = _unpack_size_type_tag(mem, pa)
        if tag is None:
            passed, row = stored, self.tracker.rows.get(stored)  # (None: a protected tag)
        else:
            passed, row = self.known_tags[tag]
        plain = _unpack_qword(mem, chunk_base + (chunk & 0xFFF))[0] ^ heap.heap_key ^ chunk
        size = plain >> 16 & 0xFFFF
        if stored != passed or row is None or type_byte & (POOL_TYPE_ALIGNED | POOL_TYPE_QUOTA) or \
                not size or chunk + (size << 4) > sub.end or not plain >> 48 & 0xFF:
            self.free_generic(address, tag)
            return
        # From here on free_generic's steps as it takes them for such a block.
        block_bytes = (size << 4) - VS_HEADER_SIZE
        row[heap.track_free_offset] += ONE | block_bytes  # tracker.release
        self._frees_since_pass += 1
        if self._frees_since_pass >= BALANCE_SET_INTERVAL:
            self.balance_set_pass()
            # The pass may have freed the dynamic lookaside's blocks (whose coalescing may
            # tell this chunk a new previous size) and paged memory in: the pages are
            # translated and the chunk's header read again; anything unusual takes the rest
            # of free_generic's steps as it takes them.
            base = tlb.get(header >> PAGE_SHIFT)
            chunk_base = tlb.get(chunk >> PAGE_SHIFT)
            if base is None or chunk_base is None:
                self._free_vs_rest(heap, sub, header, block_size, block_bytes)
                return
            pa = base + (header & 0xFFF)
            plain = _unpack_qword(mem, chunk_base + (chunk & 0xFFF))[0] ^ heap.heap_key ^ chunk
            if plain >> 16 & 0xFFFF != size or not plain >> 48 & 0xFF:
                self._free_vs_rest(heap, sub, header, block_size, block_bytes)
                return
        bucket_index = _LOOKASIDE_BUCKET_OF[block_size]  # from the header's BlockSize
        if bucket_index:
            lookaside = heap.lookaside[bucket_index]
            # SegmentHeap.lookaside_push, inline: a free counted; while the bucket is enabled
            # and not full, the block kept, its SLIST_ENTRY (the header's first 8 bytes, on
            # the page translated above) linking to the bucket's head.
            lookaside.frees += 1
            if lookaside.enabled and lookaside.count < lookaside.depth:
                _pack_qword(mem, pa, lookaside.head)
                lookaside.head = header
                lookaside.count += 1
                return
        units = block_bytes >> 4
        if units <= LFH_BUCKET_COUNT:
            bucket = heap.lfh_buckets[units] or heap.lfh_bucket(units)
            if bucket.live_elsewhere:
                bucket.live_elsewhere -= 1
        # SegmentHeap.vs_free, inline: a small chunk to the delay-free list (flushed at 32:
        # vs_flush), another coalesced now (_vs_merge, else _vs_coalesce).
        previous = plain >> 32 & 0xFFFF
        if (size << 4) < VS_DELAY_FREE_MAX_CHUNK:
            delay_free = heap.delay_free
            delay_free.append(chunk)
            if len(delay_free) >= VS_DELAY_FREE_DEPTH:
                heap.vs_flush()
        elif not heap._vs_merge(sub, chunk, size, previous):
            heap._vs_coalesce(sub, chunk, size, previous)

    def _free_vs_rest(self, heap: SegmentHeap, sub: VsSubsegment, header: int, block_size: int,
                      block_bytes: int) -> None:
        """free_generic's steps after the Balance Set pass, for a VS block: the dynamic
        lookaside's push, the LFH bucket's count, the backend's free (its checks)."""
        bucket_index = lookaside_bucket(block_size << 4)
        if bucket_index and heap.lookaside_push(bucket_index, header):
            return
        units = block_bytes >> 4
        if units <= LFH_BUCKET_COUNT:
            bucket = heap.lfh_bucket(units)
            if bucket.live_elsewhere:
                bucket.live_elsewhere -= 1
        heap.free_block(header, sub)

    def allocate_small_plain(self, pool: SegmentHeap, number_of_bytes: int, tag: int, row: list,
                             site: int) -> int:
        """PoolAllocator.allocate_small_plain for this design (Driver Verifier's pool-tracking
        lane, quota charged with no layer): a block of an active LFH bucket's current
        subsegment taken as the allocation fast path takes it, the tag's tracker ``row``
        given (the common case: no lookup of the row, no translation helpers), else
        ``allocate_plain``."""
        if number_of_bytes <= LFH_MAX_REQUEST:
            body = _take_lfh_block(pool, self.mem, _UNITS_FOR[number_of_bytes], tag, site, row)
            if body:
                return body
        return self.allocate_plain(pool, number_of_bytes, tag, site)

    def small_block(self, heap: SegmentHeap, units: int) -> int:
        """POOL_HEADER address of a free block of ``units`` (LFH, lookaside or VS), or 0."""
        if units <= LFH_BUCKET_COUNT:
            bucket = heap.lfh_bucket(units)
            if heap.lfh_wants(bucket):
                block = heap.lfh_allocate(bucket)
                if block:
                    return block
            else:
                bucket.live_elsewhere += 1
        else:
            bucket_index = lookaside_bucket(units << 4)
            if bucket_index:
                entry = heap.lookaside_pop(bucket_index)
                if entry:
                    return entry
        chunk = heap.vs_allocate(units + 1)
        return chunk + VS_HEADER_SIZE if chunk else 0

    def _align(self, heap: SegmentHeap, header: int, units: int, tag: int, site: int) -> int:
        """CacheAligned: the body moves to the next cache line, behind a second header."""
        body = header + POOL_HEADER_SIZE
        aligned_body = (body + CACHE_LINE - 1) & ~(CACHE_LINE - 1)
        if aligned_body == body:
            return body
        second = aligned_body - POOL_HEADER_SIZE
        back = (second - header) >> 4
        _pack_header(self.mem, heap._pa(second), back, 0, units - back,
                     heap.header_type | POOL_TYPE_ALIGNED, tag, 0)
        if back >= 2:
            QWORD.pack_into(self.mem, heap._pa(header + POOL_HEADER_SIZE),
                            second ^ self.keys.pool_quota_cookie)
        return aligned_body

    def blocks_for(self, number_of_bytes: int) -> int:
        return block_units(number_of_bytes)

    # --- quota ------------------------------------------------------------------------------

    def quota_charge_for(self, number_of_bytes: int, aligned: bool) -> int:
        if aligned and number_of_bytes + CACHE_LINE > VS_MAX_REQUEST:
            aligned = False
        if number_of_bytes > VS_MAX_REQUEST:
            return ((number_of_bytes + PAGE_SIZE - 1) >> PAGE_SHIFT) << PAGE_SHIFT
        return block_units(number_of_bytes, aligned) << 4

    def first_header(self, heap: SegmentHeap, address: int) -> int:
        """The POOL_HEADER of the block whose body is at ``address`` (the first header of a
        cache-aligned block: the second one says how far back it is, unchecked as in 19H1)."""
        header = address - POOL_HEADER_SIZE
        previous, _, _, type_byte, _ = _unpack_first8(self.mem, heap._pa(header))
        if type_byte & POOL_TYPE_ALIGNED:
            header -= previous << 4
        return header

    def bill(self, pool: SegmentHeap, va: int, process: int, charge: int) -> None:
        if va & (PAGE_SIZE - 1):
            header = self.first_header(pool, va)
            pa = pool._pa(header)
            self.mem[pa + POOL_HEADER.PoolType] |= POOL_TYPE_QUOTA
            QWORD.pack_into(self.mem, pa + POOL_HEADER.ProcessBilled,
                            encode_process_billed(process, self.keys.pool_quota_cookie, header))
        else:
            self.big_quota[va] = (process, charge)
            length, pool_type, _ = pool.big_details[va]
            pool.big_details[va] = (length, pool_type | POOL_TYPE_QUOTA, process)

    def _release_billed(self, heap: SegmentHeap, header: int, pa: int, block_bytes: int) -> None:
        """Decode ProcessBilled and return the charge; a value that does not decode to a
        process is BAD_POOL_HEADER (0xE, header, decoded, stored)."""
        stored = _unpack_qword(self.mem, pa + _PROCESS_BILLED)[0]
        # decode_process_billed, inline (a call less on every charged free): XOR is its own
        # inverse, and every operand is a 64-bit value, so no mask is needed.
        process = stored ^ self.keys.pool_quota_cookie ^ header
        if not process:
            return
        # The ledger's process, looked up once: QuotaLedger.release's step, made here on it.
        ledger = self.quota
        charged = ledger.by_address.get(process) if ledger is not None else None
        if process < EPROCESS_MIN_ADDRESS or charged is None or \
                self._object_type(process) & 0x7F != PROCESS_OBJECT_TYPE:
            self.crash(BAD_POOL_HEADER, BAD_PROCESS_BILLED, header, process, stored,
                       detail=f"ProcessBilled of the pool header at {header:#x} decodes to "
                              f"{process:#x}, which is not a process")
        charged.quota_usage[heap.base_type] -= block_bytes

    def _object_type(self, address: int) -> int:
        pa = self.tlb.get(address >> PAGE_SHIFT)
        return 0 if pa is None else self.mem[pa + (address & 0xFFF)]

    # --- generic free ------------------------------------------------------------------------

    def free_generic(self, address, tag) -> None:
        address = checked_address(address)
        passed = None if tag is None or tag == 0 else tag_value(tag)
        if self.layer is not None and self.layer.free(address, passed):
            return
        heap = self.locate(address)
        irql = self.irql
        if not pool_usable_at(irql, heap.base_type):
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_AT_BAD_IRQL, irql, heap.base_type,
                       address, detail=f"free of {heap.name} at IRQL {irql}")
        if not address & (PAGE_SIZE - 1):
            # No small block's body starts a page (a POOL_HEADER never ends one): a page-
            # aligned address is a big allocation, pages or a VS chunk, or no allocation.
            if address in heap.big_pages:
                self._free_big_checked(heap, address, passed)
                return
            sub = None
        else:
            sub = heap.subsegment_of(address)
        if sub is None or address & 0xF:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_BAD_ADDRESS, address, 0, 0,
                       detail=f"free of {address:#x}, which is not the start of an allocation")
        header = self.first_header(heap, address)
        pa = heap._pa(header)
        _, _, block_size, type_byte, stored = _unpack_first8(self.mem, pa)
        if passed is not None or stored & PROTECTED_POOL:
            check_free_tag(self.crash, address, stored, 0 if passed is None else passed)
        # The header's subsegment: the body's, unless a cache-aligned block's first header
        # is a page before its body.
        owner = sub if header >> PAGE_SHIFT == address >> PAGE_SHIFT else heap.subsegment_of(header)
        if owner is None:
            heap.free_block(header)  # bug-checks: not a block
        block_bytes = self._block_bytes(heap, owner, header)
        if type_byte & POOL_TYPE_QUOTA:
            self._release_billed(heap, header, pa, block_bytes)
        self.tracker.release(stored, heap.track_offset, block_bytes)
        self._frees_since_pass += 1
        if self._frees_since_pass >= BALANCE_SET_INTERVAL:
            self.balance_set_pass()
        bucket_index = lookaside_bucket(block_size << 4)  # as Windows: from the header's BlockSize
        if bucket_index and heap.lookaside_push(bucket_index, header):
            return
        if owner.kind != LFH:
            units = (block_bytes >> 4)
            if units <= LFH_BUCKET_COUNT:
                bucket = heap.lfh_bucket(units)
                if bucket.live_elsewhere:
                    bucket.live_elsewhere -= 1
        heap.free_block(header, owner)

    def _block_bytes(self, heap: SegmentHeap, owner, header: int) -> int:
        """Bytes of the block as its backend knows it (the tracker's charge)."""
        if owner.kind == LFH:
            return owner.bucket.block_size
        _, size, _, _ = heap.vs_read(header - VS_HEADER_SIZE)
        return max(0, (size << 4) - VS_HEADER_SIZE)

    def block_size_agrees(self, heap: SegmentHeap, address: int, block_size: int) -> bool:
        """Whether a small block's POOL_HEADER BlockSize agrees with its backend: its LFH
        bucket's block size, or its VS chunk's (split to the request's units exactly). A
        BlockSize a stray write changed does not; the segment heap's free reads it only to
        pick a lookaside bucket."""
        header = self.first_header(heap, address)
        owner = heap.subsegment_of(header)
        return owner is not None and block_size << 4 == self._block_bytes(heap, owner, header)

    def sync_to_memory(self) -> None:
        """Bring what the fast paths keep in Python into memory (before a dump is written)."""
        for heap in self.pools:
            heap.sync_lfh_counts()

    def balance_set_pass(self) -> None:
        """A Balance Set Manager pass over the heaps' dynamic lookasides."""
        self.balance_passes += 1
        self._frees_since_pass = 0
        for heap in self.pools:
            heap.balance_set_pass(self.balance_passes)

    # --- queries -------------------------------------------------------------------------------

    def small_site_of(self, heap, address: int) -> int:
        """A small block's call site: in its POOL_HEADER's ProcessBilled when no quota is
        charged (the segment heap keeps no site map)."""
        pa = heap._pa(self.first_header(heap, address))
        if self.mem[pa + POOL_HEADER.PoolType] & POOL_TYPE_QUOTA:
            return 0
        return _unpack_qword(self.mem, pa + POOL_HEADER.ProcessBilled)[0]

    def allocation_size(self, address: int) -> int:
        """Bytes the block at ``address`` holds: a small block's body, a big allocation's
        VS chunk after its header, or its pages."""
        heap = self.locate(address)
        if address in heap.big_pages:
            if heap.big_in_vs(address):
                return (heap.vs_read(address - VS_HEADER_SIZE)[1] << 4) - VS_HEADER_SIZE
            return heap.big_pages[address][1] << PAGE_SHIFT
        pa = heap._pa(address - POOL_HEADER_SIZE)
        return (self.mem[pa + POOL_HEADER.BlockSize] << 4) - POOL_HEADER_SIZE


__all__ = ["SegmentHeapAllocator", "block_units", "header_pool_type"]
