"""The one pool allocator every front end (Ex, FsRtl, NDIS) calls.

``allocate`` and ``free`` open with a fast path, kept apart from the generic path as
mimalloc keeps mi_malloc's: a small request whose tag has been seen before, for a pool type
the fast path serves, taken from or given back to a per-processor lookaside list with a
handful of struct operations and no Python object per allocation. Anything else, and every
error, goes to ``allocate_generic`` / ``free_generic``, which check everything and
diagnose with Windows' bug check codes.

The checks that depend on machine state (IRQL, Driver Verifier) cost nothing on the fast
path: the machine narrows ``fast_pools`` (which pool types the fast path may serve) and
``fast_free_slots`` (which pools the free fast path may serve) when such a check has to
run, so those calls reach the generic path. ``refresh_fast_paths`` recomputes both from
the current IRQL and ``fast_path_blockers`` (a set other layers add a name to while they
need every call to reach the generic path).

The POOL_TYPE variants (cache-aligned, zeroed, raise-on-failure, quota-charged,
priorities) are options of the generic path; the front ends (ex, fsrtl, ndis) only
translate their routine's contract onto it.
"""

import math
import struct
import sys
from typing import NamedTuple

from ..constants import (
    BASE_POOL_TYPE_MASK,
    CACHE_ALIGNED_POOL_TYPE_MASK,
    MAX_SMALL_ALLOCATION,
    MUST_SUCCEED_POOL_TYPE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    POOL_COLD_ALLOCATION,
    POOL_NX_ALLOCATION,
    POOL_QUOTA_FAIL_INSTEAD_OF_RAISE,
    POOL_RAISE_IF_ALLOCATION_FAILURE,
    POOL_ZERO_ALLOCATION,
    SESSION_POOL_MASK,
    SYSTEM_RANGE_START,
    BadPoolCaller,
    BugCheckCode,
    NtStatus,
    PoolPriority,
)
from ..errors import NtStatusError, TagError
from ..hooks import Hooks, MemoryWritten, PoolLayer
from ..packing import QWORD_VIEW, x64_struct
from ..tags import PROTECTED_POOL, tag_value
from ..machine.irql import pool_usable_at
from ..machine.memory import PTE_CACHE_DISABLE, PTE_WRITE_THROUGH, OutOfFrames
from .descriptor import MAXIMUM_POOL_FREES_PENDING, PAGE_BIG_FIRST, PAGE_BIG_REST, PAGE_FREE, PAGE_RESERVED, PAGE_SMALL, Pool
from .checks import (
    check_block_size,
    check_free_tag,
    check_next_pool_index,
    check_next_previous_size,
    check_not_already_freed,
    header_ulong,
)
from .layout import (
    BLOCK,
    BLOCK_SHIFT,
    HEADER_FIRST8,
    HEADER_SIZE,
    LOOKASIDE_MAX_BLOCKS,
    POOL_FREE,
    POOL_HEADER,
    POOL_IN_USE,
    POOL_QUOTA,
    POOL_SESSION,
    SINGLE_LIST_ENTRY,
    SITE_UNIT_SHIFT,
    TYPE_TAG_BILLED,
    blocks_for,
)
from .tracker import BLOCK_CHARGES, PoolTracker, column_of

BAD_POOL_CALLER = BugCheckCode.BAD_POOL_CALLER
LOOKASIDE_MAX_BYTES = (LOOKASIDE_MAX_BLOCKS << BLOCK_SHIFT) - HEADER_SIZE  # 496

# The fast paths work on physical addresses with precompiled runs of header fields; every
# offset comes from the layout. They read the next header's PreviousSize as its first byte
# and PoolIndex as its second, and a lookaside entry's Next as the QWORD just past a header:
# asserted here against the layout.
assert (POOL_HEADER.PreviousSize, POOL_HEADER.PoolIndex, SINGLE_LIST_ENTRY.Next) == (0, 1, 0)
assert 1 << SITE_UNIT_SHIFT == 32 and 1 << BLOCK_SHIFT == 16
_unpack_next = SINGLE_LIST_ENTRY.struct.unpack_from  # a lookaside entry's Next: the body's start
_pack_next = SINGLE_LIST_ENTRY.struct.pack_into
_unpack_first8 = HEADER_FIRST8.unpack_from
# The allocation's header write: PoolType, PoolTag, and ProcessBilled as 8 pad bytes, which
# struct writes as zeros (TYPE_TAG_BILLED with ProcessBilled 0, one argument less to convert).
_TYPE_TAG_UNBILLED = struct.Struct("<BI8x")
assert _TYPE_TAG_UNBILLED.pack(2, 0x64657246) == TYPE_TAG_BILLED.pack(2, 0x64657246, 0)
_pack_type_tag = _TYPE_TAG_UNBILLED.pack_into
_pack_type_tag_billed = TYPE_TAG_BILLED.pack_into  # a charged chunk's: PoolType, PoolTag, ProcessBilled
# The free's header read, from the header's start: PoolIndex, BlockSize, PoolType, PoolTag
# (HEADER_FIRST8 without PreviousSize, a pad byte: one value less to make).
_INDEX_SIZE_TYPE_TAG = struct.Struct("<xBBBI")
assert _INDEX_SIZE_TYPE_TAG.unpack(HEADER_FIRST8.pack(1, 2, 3, 4, 5)) == (2, 3, 4, 5)
_unpack_index_size_type_tag = _INDEX_SIZE_TYPE_TAG.unpack_from
_POOL_TYPE = POOL_HEADER.PoolType  # a header's PoolType byte
_POOL_INDEX = POOL_HEADER.PoolIndex
_PROCESS_BILLED = POOL_HEADER.ProcessBilled
_QWORD = x64_struct("<Q")
assert POOL_HEADER.PreviousSize == 0
_BODY = HEADER_SIZE
_IN_USE_OR_QUOTA = POOL_IN_USE | POOL_QUOTA
# The free fast path's two questions of a header's PoolType byte, by its value: in use, and
# charged to a process's quota. A tuple subscript each, which CPython 3.11 specializes (the
# & it replaces it does not), so the charged chunk's test costs the plain free nothing.
_IN_USE_TYPE = tuple(bool(type_byte & POOL_IN_USE) for type_byte in range(256))
_CHARGED_TYPE = tuple(bool(type_byte & POOL_QUOTA) for type_byte in range(256))
# BlockSize for each NumberOfBytes the lookasides serve (1..496), by one subscript of a
# tuple: (bytes + 31) >> 4 is two operations CPython 3.11 does not specialize. Only an int
# in range reaches it (a float raises TypeError, as the arithmetic did).
BLOCKS_FOR_BYTES = tuple(blocks_for(number_of_bytes) for number_of_bytes in range(LOOKASIDE_MAX_BYTES + 1))
# Page offsets where a small chunk's header can be for the fast paths: a block boundary
# with the body on the same page (a page-aligned body is a big allocation's, and its
# "header" would be on the page before). Whatever else a lookaside head holds (a corrupted
# Next put it there) goes the generic way, which accesses it as Windows would. A tuple of
# bools: a subscript and a truth test CPython 3.11 specializes (a bytes subscript it does not).
_HEADER_OK = tuple(offset % BLOCK == 0 and offset + HEADER_SIZE < PAGE_SIZE for offset in range(PAGE_SIZE))
_getframe = sys._getframe
# Number of bytes (up to a page) -> pack_into of a Struct of that many pad bytes, made on
# first use: a fast path indexes it (``ZERO_PACKERS[n] or _zero_packer(n)``: no call once made).
ZERO_PACKERS: list = [None] * (PAGE_SIZE + 1)


def _zero_packer(number_of_bytes: int):
    """pack_into of a Struct of ``number_of_bytes`` pad bytes, which struct writes as zeros
    (a third cheaper than a slice assignment; one Struct per size, at most a page's worth)."""
    pack_zeros = ZERO_PACKERS[number_of_bytes]
    if pack_zeros is None:
        pack_zeros = ZERO_PACKERS[number_of_bytes] = struct.Struct(f"{number_of_bytes}x").pack_into
    return pack_zeros

CACHE_LINE = 64  # x64: cache-aligned pool types return 64-byte aligned memory
# Every bit a POOL_TYPE argument may carry (base, must-succeed, cache-aligned, the quota /
# fail-instead-of-raise bit, raise-on-failure, session, cold, NX, zero).
VALID_POOL_TYPE_BITS = (BASE_POOL_TYPE_MASK | MUST_SUCCEED_POOL_TYPE_MASK
                        | CACHE_ALIGNED_POOL_TYPE_MASK | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE
                        | POOL_RAISE_IF_ALLOCATION_FAILURE | SESSION_POOL_MASK
                        | POOL_COLD_ALLOCATION | POOL_NX_ALLOCATION | POOL_ZERO_ALLOCATION)

# "Resources are low" for EX_POOL_PRIORITY: the share of a pool's pages in use beyond which
# a request of that priority fails (High fails only when the pool is exhausted).
LOW_PRIORITY_LIMIT = 0.80
NORMAL_PRIORITY_LIMIT = 0.95
PRIORITY_BASES = {0: LOW_PRIORITY_LIMIT, 16: NORMAL_PRIORITY_LIMIT, 32: None}
VALID_PRIORITIES = frozenset(int(p) for p in PoolPriority)


def pages_for_priority(page_count: int) -> dict[int, int]:
    """Each valid EX_POOL_PRIORITY -> the most pages a pool of ``page_count`` pages may have
    in use for a small request of that priority to be tried (``resources_available``)."""
    return {priority: page_count if share is None else math.floor(share * page_count)
            for priority in VALID_PRIORITIES
            for share in (PRIORITY_BASES[priority & ~0xF],)}

STATUS_INSUFFICIENT_RESOURCES = NtStatus.STATUS_INSUFFICIENT_RESOURCES
STATUS_QUOTA_EXCEEDED = NtStatus.STATUS_QUOTA_EXCEEDED


def fast_lists_of(pool: Pool) -> tuple:
    """What the allocation fast path touches of ``pool``, in the order it unpacks them: the
    current processor's lookaside heads, counts and hits (TotalAllocates less AllocateMisses),
    the site map, the address chunk headers are counted from (a body less this is its
    header's offset from the pool's base: the site map's and ``Pool.small_frames``' index),
    the resident pages of small chunks, the allocated PoolType byte, and the pool's
    allocations column in a tracker row. Rebuilt when the processor changes."""
    return (pool.la_head, pool.la_count, pool.la_allocates, pool.sites, pool.base + HEADER_SIZE,
            pool.small_frames, pool.allocated_header_type, pool.track_offset)


def fast_frees_of(pool: Pool) -> tuple:
    """What the free fast path touches of ``pool``, in the order it unpacks them: the pool,
    the address chunk headers are counted from (as ``fast_lists_of``), its resident pages of
    small chunks (``Pool.small_frames``), the current processor's lookaside heads, counts
    and depths, and the pool's frees column in a tracker row. Rebuilt when the processor
    changes."""
    return (pool, pool.base + HEADER_SIZE, pool.small_frames, pool.la_head, pool.la_count,
            pool.la_limit, pool.track_offset + 1)


# Each IRQL's rule: whether the nonpaged and the paged pool may be used at it.
IRQL_RULES = tuple((pool_usable_at(irql, 0), pool_usable_at(irql, 1)) for irql in range(16))


def _same_entry(held, value) -> bool:
    """Whether a table's entry may stay for ``value``: the same object, or a tuple of the
    same objects (ints equal): the fast paths change the lists an entry holds in place, so
    an equal list that is another object would not do."""
    if held is value:
        return True
    return type(held) is tuple and type(value) is tuple and len(held) == len(value) and \
        all(x is y or type(x) is int and type(y) is int and x == y for x, y in zip(held, value))


def _table_changes(tables: tuple, lane_pools: dict) -> tuple:
    """What makes each table of ``tables`` ((table, entries) pairs) hold its entries, in
    ``_use_fast_tables``' order: the (table, key) pairs to delete, the (table, key, value)
    entries to add or replace; and ``lane_pools``."""
    deletions = [(table, key) for table, entries in tables for key in table if key not in entries]
    additions = [(table, key, value) for table, entries in tables for key, value in entries.items()
                 if key not in table or not _same_entry(table[key], value)]
    return deletions, additions, lane_pools


def _refill(table: dict, entries: dict) -> None:
    """Give a fast path's table new entries in place: the fast paths hold the dict itself."""
    table.clear()
    table.update(entries)


class Contiguous(NamedTuple):
    """A request for physically contiguous pages (NdisAllocateMemory's CONTIGUOUS/NONCACHED)."""

    highest_pfn: int | None  # the last acceptable frame (None: anywhere)
    noncached: bool  # PTEs with cache-disable and write-through
    lowest_pfn: int = 0  # the first acceptable frame (MmAllocateContiguousMemorySpecifyCache)
    boundary_pages: int = 0  # a multiple of this many frames the run may not cross (0: any)
    write_combined: bool = False  # PTEs with write-through alone (PAT entry 1: Windows' WC)


class PoolAllocator:
    def __init__(self, nonpaged: Pool, paged: Pool, crash, call_sites, hooks: Hooks | None = None):
        # Who allocated: the caller's (code, instruction) -> call-site number, and the table.
        self.call_sites = call_sites
        self.site_index = call_sites.index
        # The layer on top (Driver Verifier) that sees every allocation and free on the
        # generic path (an ntpool.hooks.PoolLayer). While one is set the fast paths are off
        # (but for an observing layer's lane: ``refresh_fast_paths``).
        self.layer: PoolLayer | None = None
        self.hooks = hooks if hooks is not None else Hooks()
        self.nonpaged = nonpaged
        self.paged = paged
        self.pools = (nonpaged, paged)
        self.crash = crash
        self.tracker = PoolTracker()
        self.mem = nonpaged.mem
        self.tlb = nonpaged.tlb
        # Tag arguments already validated -> (ULONG value, tracker row).
        self.known_tags: dict = {}
        # The IRQL of the processor the caller runs on (the machine keeps it current).
        self.irql = 0
        # Names of layers that need every call on the generic path while they are active.
        self.fast_path_blockers: set = set()
        # The pool types the fast path may serve right now -> their pool, and -> what the
        # allocation fast path touches of it (``fast_lists_of``), unpacked in one step.
        self.fast_pools: dict[int, Pool] = {}
        self.fast_lists: dict[int, tuple] = {}
        self.pools_by_slot = {pool.base >> 39: pool for pool in self.pools}
        # The pools (by address >> 39) the free fast path may serve right now, and -> what
        # the free fast path touches of each (``fast_frees_of``).
        self.fast_free_slots: dict[int, Pool] = {}
        self.fast_frees: dict[int, tuple] = {}
        # While a layer that only observes is set (see ``allocate_in_lane``): the pool types
        # the fast path would serve but for the layer -> their pool. Empty otherwise.
        self.lane_pools: dict[int, Pool] = {}
        # The IRQL rule the tables above hold now (None: to be refilled whole), and for each
        # change of rule the entries that change (``_use_fast_tables``), until the next
        # ``refresh_fast_paths``.
        self.fast_rule: tuple[bool, bool] | None = None
        self.table_changes: dict[tuple, tuple] = {}
        # Each pool's ``pages_for_priority`` (by its name), made when first asked for, for
        # ``refuses_for_priority``'s usual case (``priority_table``).
        self.most_pages_for_priority: dict[str, dict[int, int]] = {}
        # Quota charges: a ledger with try_charge/release (the machine installs it) and the
        # process billed for each quota-charged big allocation (big pages have no header).
        self.quota = None
        self.big_quota: dict[int, tuple[int, int]] = {}  # va -> (EPROCESS address, bytes)
        # Whether anyone listens for MemoryWritten (zeroing a new allocation publishes it):
        # kept as a bool by the hooks' watcher, so a zeroing call reads one attribute.
        self.writes_watched = bool(self.hooks.listening(MemoryWritten))
        self.hooks.watch(MemoryWritten, self._watch_writes)
        self.refresh_fast_paths()
        # The fast paths the front-end routines call (see "fast paths" below).
        self.allocate = self.fast_allocate()
        self.allocate_zeroed = self.fast_allocate(zero=True)
        self.free = self.fast_free()
        self.allocate_charged = self.fast_allocate_charged()
        self.allocate_charged_zeroed = self.fast_allocate_charged(zero=True)

    def widen_site_maps(self) -> None:
        """The pools' site maps go to two bytes a unit (a site numbered past 255 is made),
        and the fast paths take the new maps."""
        for pool in self.pools:
            pool.widen_site_map()
        self.refresh_fast_paths()

    def _watch_writes(self, active: bool) -> None:
        self.writes_watched = active

    def refresh_fast_paths(self) -> None:
        """Let the fast paths serve exactly what needs no check at the current IRQL.

        A layer that only observes (it has ``lane`` and ``forget``: Driver Verifier) keeps
        the free fast path on, which tells it each chunk freed, and the pool types the
        allocation fast path would serve become ``lane_pools`` for ``allocate_in_lane``.

        The tables are made anew here (a processor, a layer, a site map changed), and what
        changes between two IRQL rules is kept, so that ``set_irql`` only changes the
        entries that differ: a spin lock raises to DISPATCH_LEVEL and lowers again, and
        making the tables each time was 8 of the 17 us a KeAcquireSpinLock +
        KeReleaseSpinLock pair took (refilling them whole, 2 of the 7 us left)."""
        self.table_changes.clear()
        self.fast_rule = None
        self._use_fast_tables()

    def _use_fast_tables(self) -> None:
        """Make the fast paths' tables what the current IRQL's rule (which pools
        ``pool_usable_at`` allows) needs: refilled whole after ``refresh_fast_paths``; from
        one rule to another only the entries that differ change (``_table_changes``, worked
        out once per pair of rules): raising to DISPATCH_LEVEL takes the paged pool's out,
        lowering puts them back."""
        rule = IRQL_RULES[self.irql]
        if rule == self.fast_rule:
            return
        changes = self.table_changes.get((self.fast_rule, rule))
        if changes is None:
            fast_pools, fast_lists, lane_pools, free_slots, fast_frees = self._make_fast_tables()
            if self.fast_rule is None:  # just refreshed: the tables are refilled whole
                _refill(self.fast_pools, fast_pools)
                _refill(self.fast_lists, fast_lists)
                _refill(self.fast_free_slots, free_slots)
                _refill(self.fast_frees, fast_frees)
                self.lane_pools = lane_pools
                self.fast_rule = rule
                return
            changes = self.table_changes[(self.fast_rule, rule)] = _table_changes(
                ((self.fast_pools, fast_pools), (self.fast_lists, fast_lists),
                 (self.fast_free_slots, free_slots), (self.fast_frees, fast_frees)), lane_pools)
        deletions, additions, self.lane_pools = changes
        for table, key in deletions:
            del table[key]
        for table, key, value in additions:
            table[key] = value
        self.fast_rule = rule

    def _make_fast_tables(self) -> tuple:
        """(fast_pools, fast_lists, lane_pools, fast_free_slots, fast_frees) as they must be
        at the current IRQL, with the current layer, blockers and processor."""
        usable = self.usable_pools()
        # FsRtlAllocatePoolWithTag passes the raise bit. The fast path never fails (a miss
        # goes to the generic path, which raises), so it serves those types as the plain ones.
        for pool_type in list(usable):
            usable[pool_type | POOL_RAISE_IF_ALLOCATION_FAILURE] = usable[pool_type]
        blockers = self.fast_path_blockers
        observed = blockers == {"layer"} and hasattr(self.layer, "lane") and \
            hasattr(self.layer, "forget")
        fast_pools = usable if not blockers else {}
        free_slots = {pool.base >> 39: pool for pool in set(usable.values())} \
            if not blockers or observed else {}
        return (fast_pools, self.fast_lists_for(fast_pools), usable if observed else {},
                free_slots, self.fast_frees_for(free_slots))

    def usable_pools(self) -> dict:
        """The pool types no IRQL check stops at the current IRQL -> their pool."""
        usable: dict[int, Pool] = {}
        if pool_usable_at(self.irql, 0):
            usable[0] = usable[POOL_NX_ALLOCATION] = self.nonpaged
            if pool_usable_at(self.irql, 1):
                usable[1] = self.paged
        return usable

    def fast_lists_for(self, fast_pools: dict) -> dict:
        """What the allocation fast path unpacks for each pool type it serves."""
        return {pool_type: fast_lists_of(pool) for pool_type, pool in fast_pools.items()}

    def fast_frees_for(self, free_slots: dict) -> dict:
        """What the free fast path unpacks for each pool (by address >> 39) it serves."""
        return {slot: fast_frees_of(pool) for slot, pool in free_slots.items()}

    def set_layer(self, layer: PoolLayer | None) -> None:
        """Put ``layer`` between the generic path and the pools (None: remove it)."""
        self.layer = layer
        if layer is None:
            self.fast_path_blockers.discard("layer")
        else:
            self.fast_path_blockers.add("layer")
        self.refresh_fast_paths()

    def set_irql(self, irql: int) -> None:
        if irql != self.irql:
            self.irql = irql
            if IRQL_RULES[irql] != self.fast_rule:
                self._use_fast_tables()

    # --- fast paths ----------------------------------------------------------------------
    #
    # ``allocate`` and ``free`` are closures, made by ``fast_allocate`` and ``fast_free``, not
    # methods, for two reasons. What they touch on every call (the tables below, memory, the
    # TLB, the tag table) is a cell of the closure, which costs less to read than an
    # attribute of ``self``. And a routine can be the closure itself, with no Python call
    # between the driver and the fast path: the Kernel's ExAllocatePoolWithTag and
    # ExFreePoolWithTag are (``routines.ex.bind_fast_routines``). A closure holds the tables
    # themselves, so ``refresh_fast_paths`` only ever changes them in place.

    def fast_allocate(self, caller_depth: int = 2, zero: bool = False):
        """ExAllocatePoolWithTag's contract as a function: (PoolType, NumberOfBytes, Tag) ->
        the body address, or 0 when the pool is exhausted.

        ``caller_depth``: how many frames up the driver's call is. 2 for ``allocate``, which
        a front-end routine calls; 1 for a routine that is the function itself. When that
        frame is ntpool's own (a routine built on another), the site lookup walks out.
        ``zero``: the body is zeroed (``allocate_zeroed``, for ExAllocatePool2): from the
        lookaside through the physical address the pop already has, without a translation
        and a call more.
        """
        allocator = self
        site_index_get = self.site_index.get
        lookup_site = self.call_sites.lookup
        known_tags = self.known_tags
        fast_lists = self.fast_lists
        fast_pools = self.fast_pools
        mem = self.mem
        zero_packers = ZERO_PACKERS
        # The same memory as QWORDs from byte 16 on: bodies[header_pa // 8] is the QWORD
        # just past that header, a lookaside entry's Next (no addition on the fast path).
        bodies = memoryview(mem)[_BODY:].cast(QWORD_VIEW)

        # The call site of the last allocation whose site the index held. A driver allocates
        # from one call in a loop far more often than it alternates, and comparing the code
        # object and the instruction costs less than the index's key (the code's id plus the
        # instruction, hashed): a hit saves about 50 ns. Only an indexed site is kept (a
        # frame of ntpool's own, walked out of, has no site of its own), and it is forgotten
        # with the index (a driver loaded or unloaded: sites are resolved again).
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
                heads, counts, allocates, sites, headers_from, frames, header_type, \
                    column = fast_lists[PoolType]
                if 0 < NumberOfBytes <= LOOKASIDE_MAX_BYTES:
                    block_size = BLOCKS_FOR_BYTES[NumberOfBytes]
                    body = heads[block_size]
                    if not body:
                        # This processor's lookaside is empty: on to the pool, as
                        # ExAllocatePoolWithTag goes, inline here (a call less on every miss):
                        # the miss is counted, the system-wide list's chunk taken if it holds
                        # one, else (that miss counted too) a chunk from the ListHeads or a new
                        # page (Pool.allocate_small's two steps, called directly). Tested before
                        # the header's offsets: an empty head's would come from a negative
                        # 64-bit int, the costliest case of & (about 1,000 instructions a miss).
                        pool = fast_pools[PoolType]
                        pool.la_misses[block_size] += 1
                        system = pool.system_lookaside
                        if system.head[block_size]:
                            body = pool.take_system_lookaside(block_size, tag_ulong, site, allocator.irql)
                        else:
                            system.allocate_misses[block_size] += 1
                            body = pool.allocate_from_lists(block_size, tag_ulong, site)
                            if not body:
                                chunk = pool.allocate_past_lists(block_size, tag_ulong, site)
                                if not chunk:
                                    return allocator.fast_failure(PoolType, NumberOfBytes)
                                body = chunk + _BODY
                        row[column] += BLOCK_CHARGES[block_size]
                        if zero:
                            allocator.zero(body, NumberOfBytes)
                        return body
                    # The chunk's header, as an offset from the pool's base (small ints from
                    # here on: cheaper than the 64-bit address), and its offset in its page.
                    header = body - headers_from
                    offset = header & 0xFFF
                    # A block boundary with the body on its page, on a resident page of small
                    # chunks of this pool: its frame's address, not 0 (else, a head a driver
                    # damaged or a page paged out, the generic path pops it as Windows would).
                    # (Floor division: CPython 3.11 computes // on a small int with fewer
                    # instructions than >>; the same result for a non-negative one.)
                    if _HEADER_OK[offset] and header >= 0 and (frame := frames[header // PAGE_SIZE]):
                        pa = frame + offset  # the header's physical address
                        heads[block_size] = bodies[pa // 8]  # the entry's Next: the body's first QWORD
                        counts[block_size] -= 1
                        allocates[block_size] += 1
                        _pack_type_tag(mem, pa + _POOL_TYPE, header_type,
                                       tag_ulong)  # and ProcessBilled 0: no quota (the fast path serves none)
                        sites[header // 32] = site  # one per 32 bytes: SITE_UNIT_SHIFT
                        row[column] += BLOCK_CHARGES[block_size]  # one allocation, its bytes
                        if zero:
                            if allocator.writes_watched:
                                allocator.zero(body, NumberOfBytes)  # (it publishes MemoryWritten)
                            else:
                                (zero_packers[NumberOfBytes] or _zero_packer(NumberOfBytes))(mem, pa + _BODY)
                        return body
                    onward = False  # a head no chunk body starts at: the generic path pops it
                elif type(NumberOfBytes) is int and LOOKASIDE_MAX_BYTES < NumberOfBytes <= MAX_SMALL_ALLOCATION:
                    # A small chunk no lookaside serves. Everything the generic path would
                    # validate is known good here (tag, type, size, IRQL, no layer), so the
                    # request goes straight on to the pool's lists, as ExAllocatePoolWithTag
                    # goes on: ``allocate_plain``'s steps for it (Pool.allocate_small's two,
                    # the tracker's charge) inline, three calls less.
                    block_size = (NumberOfBytes + 31) >> 4
                    pool = fast_pools[PoolType]
                    body = pool.allocate_from_lists(block_size, tag_ulong, site)  # (a body)
                    if not body:
                        chunk = pool.allocate_past_lists(block_size, tag_ulong, site)
                        if not chunk:
                            return allocator.fast_failure(PoolType, NumberOfBytes)
                        body = chunk + _BODY
                    row[column] += BLOCK_CHARGES[block_size]
                    if zero:
                        allocator.zero(body, NumberOfBytes)
                    return body
                else:  # a size past the small chunks': big pages (or one no allocation has)
                    onward = type(NumberOfBytes) is int and MAX_SMALL_ALLOCATION < NumberOfBytes < 1 << 64
                if onward:
                    # As above, straight on to the pool, here its big pages (or, from a
                    # lookaside head no chunk body starts at, ``onward`` is False: the generic
                    # path pops it).
                    body = allocator.allocate_plain(fast_pools[PoolType], NumberOfBytes, tag_ulong, site)
                    if not body:
                        return allocator.fast_failure(PoolType, NumberOfBytes)
                    if zero:
                        allocator.zero(body, NumberOfBytes)
                    return body
            except (KeyError, TypeError, IndexError):  # (IndexError: a head past the pool's pages)
                pass
            body = allocator.allocate_generic(PoolType, NumberOfBytes, Tag, site)
            if zero and body:
                allocator.zero(body, NumberOfBytes)
            return body

        return allocate

    def fast_free(self):
        """ExFreePoolWithTag's contract as a function: (P, Tag), ``Tag`` None for ExFreePool
        (no tag to compare).

        ``blocks``: from a caller that knows the chunk's BlockSize (NdisFreeMemory, from its
        Length): the fast path then frees only a chunk of exactly that size and returns True;
        anything else returns False with nothing freed, for the caller to diagnose and free
        through the generic path (``blocks`` 0). It is a positional parameter with a default,
        not a keyword-only one: CPython 3.11 specializes no call to a function that has one
        (every call would cost about 35 ns more), so the machine's ExFreePoolWithTag, this
        function, accepts a third argument Windows' does not have.
        """
        allocator = self
        fast_frees = self.fast_frees
        known_tags = self.known_tags
        tracker_rows = self.tracker.rows
        mem = self.mem
        bodies = memoryview(mem)[_BODY:].cast(QWORD_VIEW)  # bodies[header_pa // 8]: as fast_allocate's
        # The same memory one byte on: pool_indexes[header_pa] is that header's PoolIndex
        # (the next header's, read with no addition).
        pool_indexes = memoryview(mem)[POOL_HEADER.PoolIndex:]
        # And 3 on: pool_types[header_pa] is its PoolType (marked free past the lookasides
        # with no addition).
        pool_types = memoryview(mem)[_POOL_TYPE:]
        # The same memory as QWORDs and as LONGs: a pool descriptor's PendingFrees and
        # PendingFreeDepth by their indexes (Pool.pending_frees_word, Pool.pending_depth_long).
        words = memoryview(mem).cast(QWORD_VIEW)
        longs = memoryview(mem).cast("i")

        def free(P, Tag, blocks: int = 0) -> bool | None:
            try:
                pool, headers_from, frames, heads, counts, depths, column = fast_frees[P >> 39]
                # The chunk's header, as an offset from the pool's base (small ints from here
                # on), and its offset in its page.
                header = P - headers_from
                offset = header & 0xFFF
                # _HEADER_OK: a block boundary with the body on the same page (a page-aligned
                # address is a big allocation's); on a resident page of small chunks of this
                # pool: its frame's address, not 0.
                if _HEADER_OK[offset] and header >= 0 and (frame := frames[header // PAGE_SIZE]):
                    pa = frame + offset  # the header's physical address
                    pool_index, block_size, type_byte, stored = _unpack_index_size_type_tag(mem, pa)
                    if Tag is None:
                        # ExFreePool: the stored tag is the one passed. A protected one must be
                        # named (the generic path insists): it has no tracker row under its own
                        # value (a row is by the tag without bit 31), so KeyError sends it there.
                        passed, row = stored, tracker_rows[stored]
                    else:
                        passed, row = known_tags[Tag]  # the tag's ULONG and its tracker row
                    size = block_size * 16  # (CPython 3.11 specializes *, not <<)
                    end = offset + size  # where the chunk ends in its page
                    # The next header, unless the chunk ends its page: PreviousSize our
                    # BlockSize, PoolIndex ours (the page's end tested second: it is rare).
                    if stored == passed and _IN_USE_TYPE[type_byte] \
                            and block_size and (not blocks or block_size == blocks) and \
                            (end < PAGE_SIZE and mem[(following := pa + size)] == block_size
                             and pool_indexes[following] == pool_index or end == PAGE_SIZE):
                        if _CHARGED_TYPE[type_byte]:
                            # Charged to a process's quota (ExAllocatePoolWithQuotaTag): the
                            # charge goes back to the process ProcessBilled names, first.
                            allocator.release_quota(pool, pa, block_size)
                        if allocator.layer is not None:
                            allocator.layer.forget(P)  # an observing layer's record of it
                        row[column] += BLOCK_CHARGES[block_size]  # one free, its bytes
                        # Depth is 0 past the lists' sizes (Lookaside), so a larger chunk
                        # fails this test with no test of its size.
                        if counts[block_size] < depths[block_size]:
                            # The chunk keeps its in-use PoolType on the lookaside, as in Windows 7;
                            # the list's head goes in its Next, the body's first QWORD.
                            bodies[pa // 8] = heads[block_size]
                            heads[block_size] = P
                            counts[block_size] += 1
                            return True
                        # The system-wide lookaside, the pending frees, or the lists
                        # (Pool.release_past_lookaside). Past a full system-wide list, its last
                        # step inline (a call less on every such free): the chunk is marked
                        # free and coalesced at once, or, with frees delayed, queued on
                        # PendingFrees while fewer than 32 are (the 32nd runs the batch first:
                        # release_past_lookaside).
                        system = pool.system_lookaside
                        if block_size > LOOKASIDE_MAX_BLOCKS or system.count[block_size] >= system.depth[block_size]:
                            if not pool.delay_frees:
                                pool_types[pa] = POOL_FREE
                                pool.free_small(P, pa, block_size)  # (what it has read)
                                return True
                            # PendingFreeDepth, the LONG that decides (a value a stray write
                            # left there too, as in Windows)
                            depth_at = pool.pending_depth_long
                            depth = longs[depth_at]
                            if depth < MAXIMUM_POOL_FREES_PENDING:
                                pool_types[pa] = POOL_FREE
                                # Pool.queue_free, inline: the body's first QWORD links to
                                # PendingFrees' chunk, PendingFrees to the body, and
                                # PendingFreeDepth is incremented (below 32 here: no wrap);
                                # ``pending`` keeps the header's translation for ExDeferredFreePool.
                                pending_word = pool.pending_frees_word
                                bodies[pa // 8] = words[pending_word]
                                words[pending_word] = P
                                longs[depth_at] = depth + 1
                                pool.pending[P] = pa
                                return True
                        pool.release_past_lookaside(P - _BODY, block_size, pa)
                        return True
                    if type_byte & _IN_USE_OR_QUOTA == _IN_USE_OR_QUOTA and not blocks and \
                            allocator.layer is None:
                        # In use and charged to a process's quota: nothing the generic path
                        # validates first needs it (the pool and IRQL are the fast path's, the
                        # address a block boundary on a page of small chunks); the checks, the
                        # quota's release and the free follow as on the generic path.
                        allocator._free_small_checked(pool, P, None if Tag is None else passed)
                        return None
                elif not P & 0xFFF and not blocks and allocator.layer is None and P >= pool.base \
                        and pool.page_kind[(P - pool.base) >> PAGE_SHIFT] == PAGE_BIG_FIRST:
                    # A big allocation's first page: nothing for the generic path to validate
                    # first (the pool and IRQL are the fast path's); its own checks follow.
                    allocator._free_big_checked(pool, P, None if Tag is None or Tag == 0 else
                                                known_tags[Tag][0])
                    return None
            except (KeyError, TypeError, IndexError):
                pass
            if blocks:
                return False
            allocator.free_generic(P, Tag)
            return None

        return free

    def fast_allocate_charged(self, caller_depth: int = 2, zero: bool = False):
        """``allocate_with_quota`` for a process that is charged, as a function: (PoolType,
        NumberOfBytes, Tag, process) -> (address, 0) or (0, NTSTATUS). ``process`` is the
        charged process's ``Process`` (the System process is never charged: its routines
        allocate as ExAllocatePoolWithTag).

        A driver running in a user process's context (a file system allocating for a user's
        request) makes this request often, so its usual case takes the allocation fast
        path's steps: the last call site compared, the process charged, a chunk popped from
        this processor's lookaside, and its header written once with the quota bit and
        ProcessBilled (``allocate_with_quota`` writes an unbilled header, then translates it
        again to bill it). Anything else (a pool type the fast path does not serve, so a
        layer is set or the IRQL needs a check; a tag not yet validated; a size past the
        lookasides; an empty lookaside or a head no chunk starts at) goes to
        ``allocate_with_quota``, with every check. ``caller_depth`` and ``zero``: as
        ``fast_allocate``'s (2: a routine calls this; ``zero``: ExAllocatePoolQuotaZero's).
        """
        allocator = self
        site_index_get = self.site_index.get
        lookup_site = self.call_sites.lookup
        known_tags = self.known_tags
        fast_lists = self.fast_lists
        fast_pools = self.fast_pools
        mem = self.mem
        zero_packers = ZERO_PACKERS
        bodies = memoryview(mem)[_BODY:].cast(QWORD_VIEW)  # bodies[header_pa // 8]: as fast_allocate's

        # The last indexed call site, as fast_allocate keeps it (its own: the two are called
        # from different routines).
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
                heads, counts, allocates, sites, headers_from, frames, header_type, \
                    column = fast_lists[PoolType]
                # Only a size and a tag of the exact types ``allocate_with_quota`` takes as
                # they are: a bool or a float equal to a size or to a known tag would pass
                # the lookups here, and the generic path refuses it (TypeError, TagError).
                # (Two ``is`` tests: ``type(Tag) in (str, int)`` costs 300 instructions more.)
                if type(NumberOfBytes) is int and (type(Tag) is str or type(Tag) is int) and \
                        0 < NumberOfBytes <= LOOKASIDE_MAX_BYTES:
                    block_size = BLOCKS_FOR_BYTES[NumberOfBytes]
                    body = heads[block_size]
                    # The head's header, tested as fast_allocate tests it (the empty head
                    # first: see there), before anything changes.
                    if body:
                        header = body - headers_from
                        offset = header & 0xFFF
                        if _HEADER_OK[offset] and header >= 0 and (frame := frames[header // PAGE_SIZE]):
                            # The charge, as QuotaLedger.try_charge makes it (quota_charge_for:
                            # the chunk's bytes), on the process in hand: no ledger lookup.
                            which = fast_pools[PoolType].base_type
                            usage = process.quota_usage
                            used = usage[which] + block_size * 16
                            limit = process.quota_limit[which]
                            if limit is not None and used > limit:
                                return 0, STATUS_QUOTA_EXCEEDED
                            usage[which] = used
                            peak = process.quota_peak
                            if used > peak[which]:
                                peak[which] = used
                            # fast_allocate's pop, its header written with the quota bit and
                            # ProcessBilled in the same pack (as ``bill`` marks it).
                            pa = frame + offset
                            heads[block_size] = bodies[pa // 8]
                            counts[block_size] -= 1
                            allocates[block_size] += 1
                            _pack_type_tag_billed(mem, pa + _POOL_TYPE, header_type | POOL_QUOTA,
                                                  tag_ulong, process.address)
                            sites[header // 32] = site  # one per 32 bytes: SITE_UNIT_SHIFT
                            row[column] += BLOCK_CHARGES[block_size]
                            if zero:  # (as fast_allocate zeroes)
                                if allocator.writes_watched:
                                    allocator.zero(body, NumberOfBytes)  # (it publishes MemoryWritten)
                                else:
                                    (zero_packers[NumberOfBytes] or _zero_packer(NumberOfBytes))(mem, pa + _BODY)
                            return body, 0
            except (KeyError, TypeError, IndexError):
                pass
            return allocator.allocate_with_quota(PoolType, NumberOfBytes, Tag, process.address, zero=zero,
                                                 site=site)

        return allocate_charged

    # --- tags ----------------------------------------------------------------------------

    def validate_tag(self, tag) -> int:
        """The tag's ULONG. Retail Windows accepts any tag (its checks are ASSERTs of the
        checked build); Driver Verifier refuses 0, 'BIG ' and tags with no letter or digit
        for the drivers it verifies (``DriverVerifier.check_allocate``)."""
        if tag is None:
            return 0
        if type(tag) in (str, int):  # (not bool; remember_tag keeps only these)
            known = self.known_tags.get(tag)
            if known is not None:
                return known[0]
        return tag_value(tag)

    def remember_tag(self, tag, value: int) -> None:
        if type(tag) in (str, int):
            self.known_tags[tag] = (value, self.tracker.row(value))

    # --- generic allocation --------------------------------------------------------------

    def pool_for(self, pool_type: int) -> Pool:
        return self.pools[pool_type & BASE_POOL_TYPE_MASK]

    def caller_site(self, depth: int = 1) -> int:
        """The call site of the driver code that called into ntpool (walking out of ntpool).
        ``depth``: how many frames up from this method's to start (1: its caller's; a routine
        that asks for its own caller's site passes 2, and no walk is needed)."""
        return self.call_sites.lookup(_getframe(depth))

    def allocate_generic(self, pool_type, number_of_bytes, tag, site: int | None = None) -> int:
        """ExAllocatePoolWithTag for any POOL_TYPE, every check made; 0 when exhausted.

        POOL_RAISE_IF_ALLOCATION_FAILURE raises NtStatusError(STATUS_INSUFFICIENT_RESOURCES)
        instead of returning 0; POOL_ZERO_ALLOCATION zeroes the memory.
        """
        if site is None:
            site = self.caller_site()
        if self.lane_pools:
            va = self.allocate_in_lane(pool_type, number_of_bytes, tag, site)
            if va:
                return va
        pool_type, number_of_bytes, value = self.admit(pool_type, number_of_bytes, tag, site)
        va = self.allocate_checked(self.pool_for(pool_type), number_of_bytes, value,
                                   aligned=bool(pool_type & CACHE_ALIGNED_POOL_TYPE_MASK), site=site)
        if not va and pool_type & MUST_SUCCEED_POOL_TYPE_MASK:
            self.must_succeed_pool_empty(self.pool_for(pool_type), number_of_bytes)
        if va and pool_type & SESSION_POOL_MASK:
            self.mark_session(self.pool_for(pool_type), va)
        return self.finish(va, number_of_bytes, zero=bool(pool_type & POOL_ZERO_ALLOCATION),
                           raise_on_failure=bool(pool_type & POOL_RAISE_IF_ALLOCATION_FAILURE))

    def allocate_in_lane(self, pool_type, number_of_bytes, tag, site: int) -> int:
        """A request the fast path would serve but for an observing layer, when the layer
        says it needs no check (``layer.lane(site, tag)``: Driver Verifier for a driver it
        does not verify, or for one verified with options that only observe and a tag it
        has checked): allocated as with no layer set, and recorded when the layer asks. 0: the
        request takes the generic path (every check, the layer's allocate)."""
        try:
            pool = self.lane_pools[pool_type]
            value, row = self.known_tags[tag]
        except (KeyError, TypeError):
            return 0
        if type(number_of_bytes) is not int or not 0 < number_of_bytes <= LOOKASIDE_MAX_BYTES:
            return 0
        lane = self.layer.lane(site, value)
        if lane is None:
            return 0
        va = self.allocate_small_plain(pool, number_of_bytes, value, row, site)
        if va and lane:
            self.layer.record(va, pool.base_type, number_of_bytes, value, site, lane)
        return va

    def allocate_small_plain(self, pool: Pool, number_of_bytes: int, tag: int, row: list,
                             site: int) -> int:
        """``allocate_plain`` for a request of 1..496 bytes, the tag's tracker ``row`` given:
        its lookaside pop inline (the common case: the tracker's row lookup and a call less),
        else ``allocate_plain``."""
        block_size = BLOCKS_FOR_BYTES[number_of_bytes]
        heads = pool.la_head
        body = heads[block_size]
        if body:
            # The allocation fast path's pop (see ``fast_allocate``): a chunk body on a
            # resident page of this pool's small chunks, its header written in one pack.
            header = body - pool.base - _BODY  # from the pool's base: the site map's index
            offset = header & 0xFFF
            try:
                frame = pool.small_frames[header // PAGE_SIZE] if _HEADER_OK[offset] and header >= 0 else 0
            except IndexError:  # past the last page of small chunks
                frame = 0
            if frame:
                pa = frame + offset
                heads[block_size] = _unpack_next(self.mem, pa + _BODY)[0]
                pool.la_count[block_size] -= 1
                pool.la_allocates[block_size] += 1
                _pack_type_tag(self.mem, pa + _POOL_TYPE, pool.allocated_header_type, tag)
                pool.sites[header // 32] = site  # one per 32 bytes: SITE_UNIT_SHIFT
                row[pool.track_offset] += BLOCK_CHARGES[block_size]
                return body
        body = pool.pop_lookaside(block_size, self.irql)
        if not body:
            return self.allocate_plain(pool, number_of_bytes, tag, site)
        pool.write_popped_header(body, tag, site, self.irql)
        row[pool.track_offset] += BLOCK_CHARGES[block_size]
        return body

    def admit(self, pool_type, number_of_bytes, tag, site: int | None = None) -> tuple[int, int, int]:
        """Validate a request as Windows does, in its order: (type, bytes, tag value).

        A verified driver's request meets Driver Verifier's checks first (its own stops);
        then the pool's: the IRQL, and a zero-byte request becomes a one-byte one, as the
        retail kernel does (0xC2/0x00 is a checked-build stop; WRK pool.c)."""
        pool_type = checked_pool_type(pool_type)
        number_of_bytes = _checked_size(number_of_bytes)
        value = self.validate_tag(tag)
        if self.layer is not None:
            self.layer.check_allocate(pool_type, number_of_bytes, value,
                                      self.caller_site() if site is None else site)
        self.check_allocate_irql(pool_type, number_of_bytes)
        if number_of_bytes == 0:
            number_of_bytes = 1
        self.remember_tag(tag, value)
        return pool_type, number_of_bytes, value

    def must_succeed_pool_empty(self, pool: Pool, number_of_bytes: int) -> None:
        """Retail Windows serves the obsolete must-succeed types like any other and stops only
        when it cannot: MUST_SUCCEED_POOL_EMPTY (bytes, pages used from nonpaged pool, big
        pages, pages available), as WRK's ExAllocatePoolWithTag and Microsoft's 0x41 page."""
        big_pages = sum(count for _, count in pool.big_pages.values())
        self.crash(BugCheckCode.MUST_SUCCEED_POOL_EMPTY, number_of_bytes,
                   self.nonpaged.pages_in_use, big_pages,
                   pool.physical.frame_count - pool.physical.frames_used,
                   detail=f"no {pool.name} left for a must-succeed request of "
                          f"{number_of_bytes} bytes")

    def check_allocate_irql(self, pool_type: int, number_of_bytes: int) -> None:
        irql = self.irql
        if not pool_usable_at(irql, pool_type & BASE_POOL_TYPE_MASK):
            self.crash(BAD_POOL_CALLER, BadPoolCaller.ALLOCATE_AT_BAD_IRQL, irql, pool_type,
                       number_of_bytes,
                       detail=f"allocation of {'paged' if pool_type & 1 else 'nonpaged'} pool "
                              f"at IRQL {irql}")

    def finish(self, va: int, number_of_bytes: int, zero: bool, raise_on_failure: bool) -> int:
        if not va:
            if raise_on_failure:
                raise NtStatusError(STATUS_INSUFFICIENT_RESOURCES,
                                    f"no pool for {number_of_bytes} bytes")
            return 0
        if zero:
            self.zero(va, number_of_bytes)
        return va

    def zero(self, va: int, number_of_bytes: int) -> None:
        """Zero a new allocation (POOL_ZERO_ALLOCATION, ExAllocatePool2, ...)."""
        offset = va & 0xFFF
        if offset + number_of_bytes <= PAGE_SIZE and not self.writes_watched:
            # Every small chunk lies in one page, resident (its header was just written):
            # one translation and one pack of that many pad bytes, which struct writes as
            # zeros (a third cheaper than a slice assignment; one Struct per size, at most
            # a page's worth of sizes).
            page = self.tlb.get(va >> PAGE_SHIFT)
            if page is not None:
                _zero_packer(number_of_bytes)(self.mem, page + offset)
                return
        pool = self.pools_by_slot.get(va >> 39)
        start, end = va, va + number_of_bytes
        while va < end:
            length = min(PAGE_SIZE - (va & 0xFFF), end - va)
            # Pool pages may be paged out (the pool pages them in); special pool's never are.
            pa = pool._pa(va) if pool is not None else self.tlb[va >> PAGE_SHIFT] + (va & 0xFFF)
            self.mem[pa:pa + length] = bytes(length)
            va += length
        if self.hooks.listening(MemoryWritten):
            self.hooks.publish(MemoryWritten(start, number_of_bytes))

    def allocate_checked(self, pool: Pool, number_of_bytes: int, tag: int,
                         aligned: bool = False, site: int | None = None) -> int:
        """Allocate with every argument already validated; 0 when the pool is exhausted."""
        if site is None:
            site = self.caller_site()
        if self.layer is not None:
            address = self.layer.allocate(pool, number_of_bytes, tag, site, aligned)
            if address is not None:
                return address
        return self.allocate_plain(pool, number_of_bytes, tag, site, aligned)

    # --- a layer's own allocations -----------------------------------------------------------

    def track_layer_allocation(self, tag: int, base_type: int, charge: int) -> None:
        """Count an allocation a layer made from its own pages (special pool) in the pool
        tag table, as Windows does: only the allocator writes the tracker."""
        self.tracker.charge(tag, column_of(base_type), charge)

    def untrack_layer_allocation(self, tag: int, base_type: int, charge: int) -> None:
        self.tracker.release(tag, column_of(base_type), charge)

    # --- physically contiguous memory (NDIS) ---------------------------------------------

    def allocate_contiguous(self, number_of_bytes: int, tag: int, highest_pfn: int | None,
                            noncached: bool, site: int | None = None,
                            request: Contiguous | None = None) -> int:
        """Physically contiguous nonpaged pages carrying ``tag``; 0 when none fit.

        The one entry for contiguous memory, as ``allocate_checked`` is for the rest: the
        layer (Driver Verifier) sees it (low resources may fail it, pool tracking records
        it; special pool never takes it: its pages are not contiguous), the call site is
        kept beside the big page table, and the tracker is charged.
        """
        if site is None:
            site = self.caller_site()
        if request is None:
            request = Contiguous(highest_pfn, noncached)
        if self.layer is not None:
            address = self.layer.allocate(self.nonpaged, number_of_bytes, tag, site, False,
                                          request)
            if address is not None:
                return address
        return self.allocate_contiguous_plain(self.nonpaged, number_of_bytes, tag, site, request)

    def allocate_contiguous_plain(self, pool: Pool, number_of_bytes: int, tag: int, site: int,
                                  request: Contiguous) -> int:
        """The contiguous allocation itself: frames below the limit, mapped at reserved pool
        pages, recorded in the big page table with the tag and the site."""
        pages = (number_of_bytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        if not pages or (request.highest_pfn is not None and request.highest_pfn < 1):
            return 0
        physical = pool.physical
        try:
            first = physical.allocate_contiguous(pages, request.highest_pfn, request.lowest_pfn,
                                                 request.boundary_pages)
        except OutOfFrames:
            return 0
        va = pool.take_pages_with_frames(first, pages, PAGE_RESERVED)
        if not va:
            for pfn in range(first, first + pages):
                physical.free_frame(pfn)
            return 0
        cache_bits = PTE_CACHE_DISABLE | PTE_WRITE_THROUGH if request.noncached else \
            PTE_WRITE_THROUGH if request.write_combined else 0
        if cache_bits:
            for page in range(pages):
                pool.space.set_pte_bits(va + (page << PAGE_SHIFT), cache_bits)
        pool.big_pages[va] = (tag, pages)
        pool.big_sites[va] = site
        self.tracker.charge(tag, pool.track_offset, pages << PAGE_SHIFT)
        return va

    def free_contiguous(self, address: int) -> None:
        """Give back what allocate_contiguous returned (the front end checked the address)."""
        pool = self.nonpaged
        if self.layer is not None:
            self.layer.free(address, None)
        tag, pages = pool.big_pages.pop(address)
        pool.big_sites.pop(address, None)
        self.tracker.release(tag, pool.track_offset, pages << PAGE_SHIFT)
        pool.release_pages(address, pages)

    def fast_failure(self, pool_type: int, number_of_bytes: int) -> int:
        """What the fast path answers when the pool is exhausted: NULL, or the raised status
        for a pool type with the raise bit (FsRtlAllocatePoolWithTag's)."""
        return self.finish(0, number_of_bytes, zero=False,
                           raise_on_failure=bool(pool_type & POOL_RAISE_IF_ALLOCATION_FAILURE))

    def allocate_plain(self, pool: Pool, number_of_bytes: int, tag: int, site: int = 0,
                       aligned: bool = False) -> int:
        """The allocation itself, no layer consulted; the call site goes to the pool's site map
        (``Pool.sites``; beside the big page table for big ones), outside the header."""
        if aligned and (number_of_bytes + 31) >> 4 > 0xFF - (CACHE_LINE // 16 - 1):
            number_of_bytes = max(number_of_bytes, MAX_SMALL_ALLOCATION + 1)  # page-aligned
        if number_of_bytes > MAX_SMALL_ALLOCATION:
            va = pool.allocate_big(number_of_bytes, tag)
            if va:
                pool.big_sites[va] = site
                self.tracker.charge(tag, pool.track_offset, pool.big_pages[va][1] << PAGE_SHIFT)
            return va
        block_size = (number_of_bytes + 31) >> 4
        if aligned:
            chunk = pool.allocate_small_aligned(block_size, tag, CACHE_LINE, site)
            if not chunk:
                return 0
            self.tracker.charge(tag, pool.track_offset, block_size << BLOCK_SHIFT)
            return chunk + HEADER_SIZE
        if block_size <= LOOKASIDE_MAX_BLOCKS:
            body = pool.pop_lookaside(block_size, self.irql)
            if body:
                pool.write_popped_header(body, tag, site, self.irql)
                self.tracker.charge(tag, pool.track_offset, block_size << BLOCK_SHIFT)
                return body
        chunk = pool.allocate_small(block_size, tag, site)
        if not chunk:
            return 0
        self.tracker.charge(tag, pool.track_offset, block_size << BLOCK_SHIFT)
        return chunk + HEADER_SIZE

    def blocks_for(self, number_of_bytes: int) -> int:
        """The BlockSize a small request of this many bytes gets (header included)."""
        return blocks_for(number_of_bytes)

    # --- priorities and quota --------------------------------------------------------------

    def resources_available(self, pool: Pool, number_of_bytes: int, priority: int) -> bool:
        """Whether a request of this EX_POOL_PRIORITY may be tried (High: always)."""
        limit = PRIORITY_BASES[priority & ~0xF]
        if limit is None:
            return True
        pages = (number_of_bytes + PAGE_SIZE - 1) >> PAGE_SHIFT if \
            number_of_bytes > MAX_SMALL_ALLOCATION else 0
        return pool.pages_in_use + pages <= limit * pool.page_count

    def allocate_with_priority(self, pool_type, number_of_bytes, tag, priority) -> int:
        """ExAllocatePoolWithTagPriority: 0 when the pool is too low for this priority.
        (The routines call ``refuses_for_priority`` and the fast path themselves: from
        here the driver's frame is one more up than the fast path looks.)"""
        if self.refuses_for_priority(pool_type, number_of_bytes, tag, priority):
            return 0
        return self.allocate(pool_type, number_of_bytes, tag)

    def refuses_for_priority(self, pool_type, number_of_bytes, tag, priority) -> bool:
        """ExAllocatePoolWithTagPriority's step before the allocation: True when the pool is
        too low for this EX_POOL_PRIORITY, so the request gets NULL (after the checks a
        caller's error meets, whose bug check comes first); False: allocate as
        ExAllocatePoolWithTag. Raises for a Priority that is no EX_POOL_PRIORITY."""
        # The usual request first: a pool type the fast path serves (no must-succeed type
        # among them), a small size (no pages counted), a valid priority whose share of the
        # pool's pages is not all in use.
        pool = self.fast_pools.get(pool_type)
        if pool is not None and type(number_of_bytes) is int and type(priority) is int and \
                0 < number_of_bytes <= LOOKASIDE_MAX_BYTES:
            most_pages = self.most_pages_for_priority.get(pool.name)
            if most_pages is None:
                most_pages = self.priority_table(pool)
            if pool.pages_in_use <= most_pages.get(priority, -1):
                return False
        priority = checked_priority(priority)
        pool_type = checked_pool_type(pool_type)
        # Must-succeed requests ignore the priority (WRK ExAllocatePoolWithTagPriority).
        if priority & ~0xF != 32 and not pool_type & MUST_SUCCEED_POOL_TYPE_MASK:
            size = _checked_size(number_of_bytes)
            if not self.resources_available(self.pool_for(pool_type), size, priority):
                self.admit(pool_type, size, tag)  # a caller error still bug-checks first
                return True
        return False

    def priority_table(self, pool) -> dict[int, int]:
        """``pool``'s ``pages_for_priority``: each valid EX_POOL_PRIORITY -> the most pages it
        may have in use for a small request of that priority to be tried. Made when first
        asked for and kept (a pool's size never changes), for ``refuses_for_priority``'s
        usual case and for routines that make that test themselves (the NDIS routines)."""
        most_pages = self.most_pages_for_priority.get(pool.name)
        if most_pages is None:
            most_pages = self.most_pages_for_priority[pool.name] = pages_for_priority(pool.page_count)
        return most_pages

    def quota_charge_for(self, number_of_bytes: int, aligned: bool) -> int:
        """What a quota allocation charges: its chunk (BlockSize x 16) or its pages."""
        blocks = (number_of_bytes + 31) >> 4
        if aligned and blocks > 0xFF - (CACHE_LINE // 16 - 1):
            number_of_bytes = max(number_of_bytes, MAX_SMALL_ALLOCATION + 1)
        if number_of_bytes > MAX_SMALL_ALLOCATION:
            return ((number_of_bytes + PAGE_SIZE - 1) >> PAGE_SHIFT) << PAGE_SHIFT
        return blocks << BLOCK_SHIFT

    def allocate_with_quota(self, pool_type, number_of_bytes, tag, process: int,
                            zero: bool = False, site: int | None = None) -> tuple[int, int]:
        """A quota-charged allocation for the process whose EPROCESS is at ``process``.

        Returns (address, 0) or (0, NTSTATUS): STATUS_QUOTA_EXCEEDED when the charge does not
        fit the process's quota, STATUS_INSUFFICIENT_RESOURCES when the pool is exhausted. The
        front end decides whether to raise or to return NULL. ``process`` 0 charges nothing
        (the System process is not charged, as in Windows).
        """
        site = self.caller_site() if site is None else site  # (found once, walking out of the routine)
        # The usual request first: a pool type the fast path serves at this IRQL (so no layer
        # is set), a tag already validated, a lookaside size. Everything ``admit`` checks is
        # then known good, as the fast path knows it.
        pool = self.fast_pools.get(pool_type)
        known = self.known_tags.get(tag) if type(tag) in (str, int) else None
        if pool is not None and known is not None and type(number_of_bytes) is int and \
                0 < number_of_bytes <= LOOKASIDE_MAX_BYTES:
            value, aligned, small = known[0], False, True
        else:
            pool_type, number_of_bytes, value = self.admit(pool_type, number_of_bytes, tag, site)
            pool = self.pool_for(pool_type)
            aligned = bool(pool_type & CACHE_ALIGNED_POOL_TYPE_MASK)
            known = self.known_tags.get(tag) if type(tag) in (str, int) else None  # (admit may add it)
            small = known is not None and self.layer is None and not aligned and \
                number_of_bytes <= LOOKASIDE_MAX_BYTES
        charge = self.quota_charge_for(number_of_bytes, aligned)
        if process and not self.quota.try_charge(process, pool.base_type, charge):
            return 0, STATUS_QUOTA_EXCEEDED
        if small:
            # A small request no layer watches: its chunk taken as the fast path takes it
            # (the pool-tracking lane's ``allocate_small_plain``), the tag's row in hand.
            va = self.allocate_small_plain(pool, number_of_bytes, value, known[1], site)
        else:
            va = self.allocate_checked(pool, number_of_bytes, value, aligned=aligned, site=site)
        if not va:
            if process:
                self.quota.release(process, pool.base_type, charge)
            return 0, STATUS_INSUFFICIENT_RESOURCES
        if process:
            self.bill(pool, va, process, charge)
        if pool_type & SESSION_POOL_MASK:
            self.mark_session(pool, va)
        if zero or pool_type & POOL_ZERO_ALLOCATION:
            self.zero(va, number_of_bytes)
        return va, 0

    def mark_session(self, pool: Pool, va: int) -> None:
        """A session pool type's chunk keeps the session bit (0x20) in its header's PoolType,
        as Windows 7's allocator stores SESSION_POOL_MASK there. ntpool has no session space:
        the chunk itself comes from the system pool of its base type (see the README)."""
        if va & (PAGE_SIZE - 1) and pool.contains(va):
            header = POOL_HEADER.at(self.mem, pool._pa(va - HEADER_SIZE))
            header.PoolType |= POOL_SESSION

    def bill(self, pool: Pool, va: int, process: int, charge: int) -> None:
        """Record who pays: ProcessBilled and the quota bit in the header, as Windows 7 does."""
        if va & (PAGE_SIZE - 1):
            pa = pool._pa(va - HEADER_SIZE)
            self.mem[pa + _POOL_TYPE] |= POOL_QUOTA
            _QWORD.pack_into(self.mem, pa + _PROCESS_BILLED, process)
        else:
            self.big_quota[va] = (process, charge)

    def release_quota(self, pool: Pool, pa: int, block_size: int) -> None:
        """Return a small chunk's quota charge (its ``block_size`` blocks' bytes) to the
        process its header's ProcessBilled names (``pa``: the header's physical address). A
        ProcessBilled that names no process (0, or a value a stray write left) returns
        nothing, as the ledger finds no process there."""
        # QuotaLedger.release, made here (a call less on every charged free).
        ledger = self.quota
        if ledger is not None:
            charged = ledger.by_address.get(_QWORD.unpack_from(self.mem, pa + _PROCESS_BILLED)[0])
            if charged is not None:
                charged.quota_usage[pool.base_type] -= block_size << BLOCK_SHIFT

    # --- generic free --------------------------------------------------------------------

    def locate(self, address: int) -> Pool:
        """The pool an address being freed belongs to, or the bug check for one it does not."""
        if address < SYSTEM_RANGE_START:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_USER_ADDRESS, address,
                       SYSTEM_RANGE_START, 0, detail=f"free of user-mode address {address:#x}")
        for pool in self.pools:
            if pool.contains(address):
                return pool
        self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_NEVER_IN_POOL, address, 0, 0,
                   detail=f"free of {address:#x}, which was never in any pool")

    def free_generic(self, address, tag) -> None:
        address = checked_address(address)
        passed = None if tag is None or tag == 0 else self.validate_tag(tag)
        if self.layer is not None:
            self.layer.check_free(address, self.caller_site())
            if self.layer.free(address, passed):
                return
        pool = self.locate(address)
        irql = self.irql
        if not pool_usable_at(irql, pool.base_type):
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_AT_BAD_IRQL, irql, pool.base_type,
                       address, detail=f"free of {pool.name} at IRQL {irql}")
        kind = pool.page_kind_of(address)
        if kind == PAGE_SMALL:
            self._free_small_checked(pool, address, passed)
        elif kind == PAGE_BIG_FIRST and not address & (PAGE_SIZE - 1):
            self._free_big_checked(pool, address, passed)
        else:
            self._crash_not_allocated(pool, address, kind)

    def pool_at(self, address: int) -> Pool | None:
        """The pool whose range holds ``address``, or None."""
        for pool in self.pools:
            if pool.contains(address):
                return pool
        return None

    def _crash_not_allocated(self, pool: Pool, address: int, kind: int) -> None:
        page_offset = (address - pool.base) >> PAGE_SHIFT
        if kind == PAGE_FREE and pool.base_type == 1:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_PAGED_NOT_ALLOCATED, address,
                       page_offset, pool.page_count << PAGE_SHIFT,
                       detail=f"free of {address:#x}: that paged pool page is not allocated")
        if kind == PAGE_FREE or (kind == PAGE_BIG_REST and pool.base_type == 0
                                 and not address & (PAGE_SIZE - 1)):
            # Parameter 3 is the page's frame (its PFN does not start an allocation). A free
            # nonpaged page has no frame here: ntpool unmaps released pool pages, so it is 0.
            pfn = pool.space.translate(address & ~(PAGE_SIZE - 1))
            pfn = pfn >> PAGE_SHIFT if pfn is not None else 0
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_NONPAGED_NOT_ALLOCATED, address, pfn,
                       pool.physical.frame_count - 1,
                       detail=f"free of {address:#x}: no nonpaged pool allocation starts on "
                              f"that page")
        if kind == PAGE_BIG_REST and pool.base_type == 1:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_PAGED_MIDDLE_OF_ALLOCATION, 0, 0,
                       page_offset, detail=f"free of {address:#x}, inside a big allocation")
        self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_BAD_ADDRESS, address, 0, 0,
                   detail=f"free of {address:#x}, which is not the start of an allocation")

    def _free_small_checked(self, pool: Pool, address: int, passed: int | None) -> None:
        if address & (HEADER_SIZE - 1) or not address & (PAGE_SIZE - HEADER_SIZE):
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_BAD_ADDRESS, address, 0, 0,
                       detail=f"free of {address:#x}, which is not a pool block boundary")
        chunk = address - HEADER_SIZE
        mem = self.mem
        pa = pool._pa(chunk)
        _, pool_index, block_size, type_byte, stored = _unpack_first8(mem, pa)
        # The usual chunk passes every check below: in use, a BlockSize that ends in its page
        # at a chunk whose PreviousSize and PoolIndex agree (or at the page's end), a tag that
        # is not protected (the only kind whose tag is compared). That is tested first, in
        # one condition; when any of it fails, the named checks run in Windows' order and
        # the first that fails raises its bug check.
        end = (chunk & (PAGE_SIZE - 1)) + (block_size << BLOCK_SHIFT)  # in the chunk's page
        following = pa + (block_size << BLOCK_SHIFT)
        if not (type_byte & POOL_IN_USE and block_size and not stored & PROTECTED_POOL and
                (end < PAGE_SIZE and mem[following] == block_size and
                 mem[following + _POOL_INDEX] == pool_index or end == PAGE_SIZE)):
            check_not_already_freed(self.crash, type_byte, header_ulong(mem, pa), address)
            check_block_size(self.crash, chunk, block_size)
            check_free_tag(self.crash, address, stored, 0 if passed is None else passed)
            if end & (PAGE_SIZE - 1):
                check_next_previous_size(self.crash, chunk, block_size, mem[following])  # its PreviousSize
                check_next_pool_index(self.crash, chunk, block_size, pool_index,
                                      mem[following + _POOL_INDEX])
        if type_byte & POOL_QUOTA:
            self.release_quota(pool, pa, block_size)
        self.tracker.release(stored, pool.track_offset, block_size << BLOCK_SHIFT)
        pool.release_small(chunk, block_size)

    def _free_big_checked(self, pool: Pool, address: int, passed: int | None) -> None:
        stored, count = pool.big_pages[address]
        check_free_tag(self.crash, address, stored, 0 if passed is None else passed)
        self.tracker.release(stored, pool.track_offset, count << PAGE_SHIFT)
        billed = self.big_quota.pop(address, None)
        if billed is not None and self.quota is not None:
            self.quota.release(billed[0], pool.base_type, billed[1])
        pool.free_big(address)

    # --- queries -------------------------------------------------------------------------

    def site_of(self, address: int) -> int:
        """The call-site number recorded for the allocation at ``address`` (0 if none)."""
        if self.layer is not None:
            site = self.layer.site_of(address)
            if site is not None:
                return site
        pool = self.locate(address)
        if address in pool.big_pages:
            return pool.big_sites.get(address, 0)
        return self.small_site_of(pool, address)

    def small_site_of(self, pool, address: int) -> int:
        """The call site of a small chunk: kept in the pool's site map, outside the header."""
        if not pool.contains(address - HEADER_SIZE):
            return 0
        return pool.sites[(address - HEADER_SIZE - pool.base) >> SITE_UNIT_SHIFT]

    def block_size_agrees(self, pool, address: int, block_size: int) -> bool:
        """Whether the BlockSize ``block_size`` read from the header of the small chunk whose
        body is at ``address`` agrees with what the free checks beside it: it stays in its
        page and the next chunk on the page says it as PreviousSize (ExFreePoolWithTag's
        0x8, 0x9, 0x20). One a stray write changed does not, and the free bug-checks."""
        chunk = address - HEADER_SIZE
        end = (chunk & (PAGE_SIZE - 1)) + (block_size << BLOCK_SHIFT)
        if not block_size or end > PAGE_SIZE:
            return False
        return end == PAGE_SIZE or \
            POOL_HEADER.get(self.mem, pool._pa(chunk + (block_size << BLOCK_SHIFT)), "PreviousSize") == block_size

    def allocation_size(self, address: int) -> int:
        """Bytes the chunk at ``address`` can hold (body of a small chunk, pages of a big one)."""
        pool = self.locate(address)
        if pool.page_kind_of(address) == PAGE_BIG_FIRST and address in pool.big_pages:
            return pool.big_pages[address][1] << PAGE_SHIFT
        block_size = POOL_HEADER.get(self.mem, pool._pa(address - HEADER_SIZE), "BlockSize")
        return (block_size << BLOCK_SHIFT) - HEADER_SIZE


def checked_pool_type(pool_type) -> int:
    if isinstance(pool_type, bool) or not isinstance(pool_type, int):
        raise TypeError(f"PoolType must be a POOL_TYPE value, not {type(pool_type).__name__}")
    if pool_type < 0 or pool_type & ~VALID_POOL_TYPE_BITS:
        raise ValueError(f"PoolType {pool_type:#x} is not a POOL_TYPE value "
                         f"(unknown bits {pool_type & ~VALID_POOL_TYPE_BITS:#x})")
    return int(pool_type)


def checked_priority(priority) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"Priority must be an EX_POOL_PRIORITY value, not {type(priority).__name__}")
    if priority not in VALID_PRIORITIES:
        raise ValueError(f"Priority {priority} is not an EX_POOL_PRIORITY value "
                         f"(LowPoolPriority 0, NormalPoolPriority 16, HighPoolPriority 32, "
                         f"+8/+9 for the special pool variants)")
    return int(priority)


def _checked_size(number_of_bytes) -> int:
    if isinstance(number_of_bytes, bool) or not isinstance(number_of_bytes, int):
        raise TypeError(f"NumberOfBytes must be an int, not {type(number_of_bytes).__name__}")
    if number_of_bytes < 0:
        raise ValueError(f"NumberOfBytes must not be negative (got {number_of_bytes})")
    if number_of_bytes >= 1 << 64:
        raise ValueError(f"NumberOfBytes {number_of_bytes:#x} does not fit in a SIZE_T")
    return number_of_bytes


def checked_address(address, name: str = "P") -> int:
    """An address argument, or a plain error naming the parameter."""
    if isinstance(address, bool) or not isinstance(address, int):
        raise TypeError(f"{name} must be an address (int), not {type(address).__name__}")
    if not 0 <= address < 1 << 64:
        raise ValueError(f"{name} {address:#x} is not a 64-bit address")
    return address


__all__ = ["PoolAllocator", "CACHE_ALIGNED_POOL_TYPE_MASK", "TagError", "checked_pool_type",
           "checked_priority"]
