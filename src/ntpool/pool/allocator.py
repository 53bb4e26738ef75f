"""The one pool allocator every front end (Ex, FsRtl, NDIS) calls.

``allocate`` and ``free`` open with a fast path, kept apart from the generic path as
mimalloc keeps mi_malloc's: a small request whose tag has been seen before, for a pool type
the fast path serves, taken from or given back to a per-processor lookaside list with a
handful of struct operations and no Python object per allocation. Anything else, and every
error, goes to ``allocate_generic`` / ``free_generic``, which check everything and
diagnose with Windows' bug check codes.

The checks that depend on machine state (IRQL, Driver Verifier) cost nothing on the fast
path: the machine narrows ``fast_pools`` (which pool types the fast path may serve) when
such a check has to run, so those calls reach the generic path.
"""

import sys

from ..constants import (
    BASE_POOL_TYPE_MASK,
    CACHE_ALIGNED_POOL_TYPE_MASK,
    MAX_SMALL_ALLOCATION,
    MUST_SUCCEED_POOL_TYPE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    SYSTEM_RANGE_START,
    BadPoolCaller,
    BugCheckCode,
)
from ..errors import TagError
from ..tags import BIG_TAG, PROTECTED_POOL, from_display, has_letter_or_digit, tag_value
from .descriptor import PAGE_BIG_FIRST, PAGE_BIG_REST, PAGE_FREE, PAGE_SMALL, LOOKASIDE_DEPTH, Pool
from .header import (
    BLOCK_SHIFT,
    HEADER_FIRST8,
    HEADER_SIZE,
    LOOKASIDE_MAX_BLOCKS,
    POOL_IN_USE,
    POOL_QUOTA,
    QWORD,
    TYPE_TAG_BILLED,
    check_block_size,
    check_free_tag,
    check_next_previous_size,
    check_not_already_freed,
    header_value,
)
from .tracker import PoolTracker

BAD_POOL_CALLER = BugCheckCode.BAD_POOL_CALLER
LOOKASIDE_MAX_BYTES = (LOOKASIDE_MAX_BLOCKS << BLOCK_SHIFT) - HEADER_SIZE  # 496
# 'BIG ' is reserved for the kernel's own big-page entries. The kernel's literal is ' GIB'
# (shown "BIG "); a driver that writes 'BIG ' in its source gets " GIB" in memory. Both are
# refused, so that neither spelling can pass for the reserved tag.
RESERVED_TAGS = frozenset({BIG_TAG, from_display(" GIB")})

_unpack_qword = QWORD.unpack_from
_pack_qword = QWORD.pack_into
_pack_type_tag = TYPE_TAG_BILLED.pack_into
_unpack_first8 = HEADER_FIRST8.unpack_from
_getframe = sys._getframe


class PoolAllocator:
    def __init__(self, nonpaged: Pool, paged: Pool, crash, call_sites):
        self.call_sites = call_sites
        self.site_index = call_sites.index
        self.nonpaged = nonpaged
        self.paged = paged
        self.pools = (nonpaged, paged)
        self.crash = crash
        self.tracker = PoolTracker()
        self.mem = nonpaged.mem
        self.tlb = nonpaged.tlb
        # Tag arguments already validated -> (ULONG value, tracker row).
        self.known_tags: dict = {}
        # The pool types the fast path may serve right now -> their pool.
        self.fast_pools: dict[int, Pool] = {}
        self.pools_by_slot = {pool.base >> 39: pool for pool in self.pools}
        # A layer on top (Driver Verifier) that sees every allocation and free on the
        # generic path: ``allocate(pool, bytes, tag, site) -> address | None`` (None: not
        # its business) and ``free(address, tag) -> bool`` (True: it freed it).
        self.interceptor = None
        self.restore_fast_pools()

    def restore_fast_pools(self, paged_allowed: bool = True) -> None:
        """Let the fast paths serve what they may; none at all while an interceptor is set."""
        if self.interceptor is not None:
            self.fast_pools = {}
            self.pools_by_slot = {}
            return
        self.fast_pools = {0: self.nonpaged}
        if paged_allowed:
            self.fast_pools[1] = self.paged
        self.pools_by_slot = {pool.base >> 39: pool for pool in self.pools}

    def set_interceptor(self, interceptor) -> None:
        self.interceptor = interceptor
        self.restore_fast_pools()

    # --- fast paths ----------------------------------------------------------------------

    def allocate(self, pool_type, number_of_bytes, tag) -> int:
        """ExAllocatePoolWithTag's contract: the body address, or 0 when the pool is exhausted.

        Called directly by a front-end routine, so the driver's call is two frames up.
        """
        frame = _getframe(2)
        site = self.site_index.get((frame.f_code, frame.f_lasti))
        if site is None:
            site = self.call_sites.lookup(frame)
        try:
            tag_ulong, row = self.known_tags[tag]
            pool = self.fast_pools[pool_type]
            if 0 < number_of_bytes <= LOOKASIDE_MAX_BYTES:
                block_size = (number_of_bytes + 31) >> 4
                heads = pool.la_head
                body = heads[block_size]
                if body:
                    mem = self.mem
                    pa = self.tlb[body >> PAGE_SHIFT] + (body & 0xFFF)
                    heads[block_size] = _unpack_qword(mem, pa)[0]
                    pool.la_depth[block_size] -= 1
                    _pack_type_tag(mem, pa - 13, pool.allocated_header_type, tag_ulong, site)
                    column = pool.track_offset
                    row[column] += 1
                    row[column + 2] += block_size << 4
                    return body
        except (KeyError, TypeError):
            pass
        return self.allocate_generic(pool_type, number_of_bytes, tag, site)

    def free(self, address, tag=None) -> None:
        """ExFreePoolWithTag's contract (``tag`` None: ExFreePool, no tag to compare)."""
        try:
            pool = self.pools_by_slot[address >> 39]
            if address & 0xFFF and address >= pool.base and \
                    pool.page_kind[(address - pool.base) >> PAGE_SHIFT] == PAGE_SMALL:
                mem = self.mem
                pa = self.tlb[address >> PAGE_SHIFT] + (address & 0xFFF) - 16
                _, _, block_size, type_byte, stored = _unpack_first8(mem, pa)
                if tag is None:
                    passed = stored if not stored & PROTECTED_POOL else None
                else:
                    passed = self.known_tags[tag][0]
                end = (address & 0xFFF) - 16 + (block_size << 4)
                if type_byte & 0xC == POOL_IN_USE and stored == passed and not address & 15 \
                        and block_size and (end == PAGE_SIZE or
                                            (end < PAGE_SIZE and mem[pa + (block_size << 4)] == block_size)):
                    row = self.tracker.rows[stored & ~PROTECTED_POOL]
                    column = pool.track_offset
                    row[column + 1] += 1
                    row[column + 2] -= block_size << 4
                    depths = pool.la_depth
                    if block_size <= LOOKASIDE_MAX_BLOCKS and depths[block_size] < LOOKASIDE_DEPTH:
                        heads = pool.la_head
                        _pack_qword(mem, pa + 16, heads[block_size])
                        heads[block_size] = address
                        depths[block_size] += 1
                        mem[pa + 3] = type_byte & 3  # still owned by the lookaside: not in use
                        return
                    pool.free_small(address - 16)
                    return
        except (KeyError, TypeError, IndexError):
            pass
        self.free_generic(address, tag)

    # --- tags ----------------------------------------------------------------------------

    def validate_tag(self, tag, pool_type: int, number_of_bytes: int) -> int:
        """The tag's ULONG, or the bug check Windows raises for a tag it refuses."""
        if tag is None or tag == 0:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.TAG_ZERO, pool_type, number_of_bytes, 0,
                       detail="allocation with pool tag 0")
        value = tag_value(tag)
        bare = value & ~PROTECTED_POOL
        if bare == 0:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.TAG_ZERO, pool_type, number_of_bytes, 0,
                       detail="allocation with pool tag 0")
        if bare in RESERVED_TAGS:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.TAG_BIG, pool_type, number_of_bytes, 0,
                       detail="allocation with the reserved pool tag 'BIG '")
        if not has_letter_or_digit(bare):
            self.crash(BAD_POOL_CALLER, BadPoolCaller.TAG_NO_ALNUM, value, pool_type, 0,
                       detail=f"pool tag {value:#010x} has no letter or digit")
        return value

    def remember_tag(self, tag, value: int) -> None:
        if type(tag) in (str, int):
            self.known_tags[tag] = (value, self.tracker.row(value))

    # --- generic allocation --------------------------------------------------------------

    def pool_for(self, pool_type: int) -> Pool:
        return self.pools[pool_type & BASE_POOL_TYPE_MASK]

    def caller_site(self, depth: int = 2) -> int:
        """Call site of the driver code ``depth`` frames above the caller of this method."""
        frame = _getframe(depth + 1)
        site = self.site_index.get((frame.f_code, frame.f_lasti))
        return self.call_sites.lookup(frame) if site is None else site

    def allocate_generic(self, pool_type, number_of_bytes, tag, site: int | None = None) -> int:
        """Every check, then ``allocate_checked``. Without ``site``, the caller's caller is
        taken as the driver's call (a front-end routine calling this directly)."""
        if site is None:
            site = self.caller_site(2)
        pool_type = _checked_pool_type(pool_type)
        number_of_bytes = _checked_size(number_of_bytes)
        if pool_type & MUST_SUCCEED_POOL_TYPE_MASK:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.MUST_SUCCEED, pool_type, number_of_bytes,
                       tag_value(tag) if tag else 0,
                       detail="must-succeed pool types are obsolete")
        value = self.validate_tag(tag, pool_type, number_of_bytes)
        if number_of_bytes == 0:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.ZERO_BYTES, 0, pool_type, value,
                       detail="zero-byte pool allocation")
        self.remember_tag(tag, value)
        return self.allocate_checked(self.pool_for(pool_type), number_of_bytes, value, site)

    def allocate_checked(self, pool: Pool, number_of_bytes: int, tag: int, site: int = 0) -> int:
        """Allocate with every argument already validated; 0 when the pool is exhausted."""
        if self.interceptor is not None:
            address = self.interceptor.allocate(pool, number_of_bytes, tag, site)
            if address is not None:
                return address
        return self.allocate_plain(pool, number_of_bytes, tag, site)

    def allocate_plain(self, pool: Pool, number_of_bytes: int, tag: int, site: int = 0) -> int:
        """The allocation itself, with no layer consulted."""
        if number_of_bytes > MAX_SMALL_ALLOCATION:
            va = pool.allocate_big(number_of_bytes, tag)
            if va:
                pool.big_sites[va] = site
                self.tracker.charge(tag, pool.track_offset, pool.big_pages[va][1] << PAGE_SHIFT)
            return va
        block_size = (number_of_bytes + 31) >> 4
        if block_size <= LOOKASIDE_MAX_BLOCKS:
            body = pool.la_head[block_size]
            if body:
                pa = self.tlb[body >> PAGE_SHIFT] + (body & 0xFFF)
                pool.la_head[block_size] = _unpack_qword(self.mem, pa)[0]
                pool.la_depth[block_size] -= 1
                _pack_type_tag(self.mem, pa - 13, pool.allocated_header_type, tag, site)
                self.tracker.charge(tag, pool.track_offset, block_size << BLOCK_SHIFT)
                return body
        chunk = pool.allocate_small(block_size, tag)
        if not chunk:
            return 0
        if site:
            _pack_qword(self.mem, self.tlb[chunk >> PAGE_SHIFT] + (chunk & 0xFFF) + 8, site)
        self.tracker.charge(tag, pool.track_offset, block_size << BLOCK_SHIFT)
        return chunk + HEADER_SIZE

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
        address = _checked_address(address)
        passed = None if tag is None or tag == 0 else tag_value(tag)
        if self.interceptor is not None and self.interceptor.free(address, passed):
            return
        pool = self.locate(address)
        kind = pool.page_kind_of(address)
        if kind == PAGE_SMALL:
            self._free_small_checked(pool, address, passed)
        elif kind == PAGE_BIG_FIRST and not address & (PAGE_SIZE - 1):
            self._free_big_checked(pool, address, passed)
        else:
            self._crash_not_allocated(pool, address, kind)

    def _crash_not_allocated(self, pool: Pool, address: int, kind: int) -> None:
        page_offset = (address - pool.base) >> PAGE_SHIFT
        if kind == PAGE_FREE and pool.base_type == 1:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_PAGED_NOT_ALLOCATED, address,
                       page_offset, pool.page_count << PAGE_SHIFT,
                       detail=f"free of {address:#x}: that paged pool page is not allocated")
        if kind == PAGE_FREE:
            self.crash(BAD_POOL_CALLER, BadPoolCaller.FREE_NONPAGED_NOT_ALLOCATED, address, 0,
                       pool.physical.frame_count - 1,
                       detail=f"free of {address:#x}: that nonpaged pool page is not allocated")
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
        pa = self.tlb[chunk >> PAGE_SHIFT] + (chunk & 0xFFF)
        raw = header_value(self.mem[pa:pa + 8])
        _, _, block_size, type_byte, stored = _unpack_first8(self.mem, pa)
        check_not_already_freed(self.crash, type_byte, raw, address)
        check_block_size(self.crash, chunk, block_size)
        if passed is not None or stored & PROTECTED_POOL:
            check_free_tag(self.crash, address, stored, 0 if passed is None else passed)
        end = chunk + (block_size << BLOCK_SHIFT)
        if end & (PAGE_SIZE - 1):
            check_next_previous_size(self.crash, chunk, block_size, self.mem[pa + (block_size << 4)])
        if type_byte & POOL_QUOTA:
            self.release_quota(chunk)
        self.tracker.release(stored, pool.track_offset, block_size << BLOCK_SHIFT)
        depths = pool.la_depth
        if block_size <= LOOKASIDE_MAX_BLOCKS and depths[block_size] < LOOKASIDE_DEPTH:
            _pack_qword(self.mem, pa + 16, pool.la_head[block_size])
            pool.la_head[block_size] = address
            depths[block_size] += 1
            self.mem[pa + 3] = type_byte & 3
            return
        self.mem[pa + 3] = type_byte & 3
        pool.free_small(chunk)

    def release_quota(self, chunk: int) -> None:
        """Return a quota charge; the contracts layer installs the real one."""

    def _free_big_checked(self, pool: Pool, address: int, passed: int | None) -> None:
        stored, count = pool.big_pages[address]
        if passed is not None or stored & PROTECTED_POOL:
            check_free_tag(self.crash, address, stored, 0 if passed is None else passed)
        self.tracker.release(stored, pool.track_offset, count << PAGE_SHIFT)
        pool.free_big(address)

    # --- queries -------------------------------------------------------------------------

    def site_of(self, address: int) -> int:
        """The call-site number recorded for the allocation at ``address`` (0 if none)."""
        if self.interceptor is not None:
            site = self.interceptor.site_of(address)
            if site is not None:
                return site
        pool = self.locate(address)
        if address in pool.big_pages:
            return pool.big_sites.get(address, 0)
        chunk = address - HEADER_SIZE
        pa = self.tlb[chunk >> PAGE_SHIFT] + (chunk & 0xFFF)
        if self.mem[pa + 3] & POOL_QUOTA:
            return 0  # ProcessBilled holds the quota owner instead, as in Windows
        return int.from_bytes(self.mem[pa + 8:pa + 10], "little")

    def allocation_size(self, address: int) -> int:
        """Bytes the chunk at ``address`` can hold (body of a small chunk, pages of a big one)."""
        pool = self.locate(address)
        if pool.page_kind_of(address) == PAGE_BIG_FIRST and address in pool.big_pages:
            return pool.big_pages[address][1] << PAGE_SHIFT
        pa = self.tlb[(address - HEADER_SIZE) >> PAGE_SHIFT] + ((address - HEADER_SIZE) & 0xFFF)
        return (self.mem[pa + 2] << BLOCK_SHIFT) - HEADER_SIZE


def _checked_pool_type(pool_type) -> int:
    if isinstance(pool_type, bool) or not isinstance(pool_type, int):
        raise TypeError(f"PoolType must be a POOL_TYPE value, not {type(pool_type).__name__}")
    if pool_type < 0 or pool_type > 0xFFFF:
        raise ValueError(f"PoolType {pool_type} is not a POOL_TYPE value")
    return int(pool_type)


def _checked_size(number_of_bytes) -> int:
    if isinstance(number_of_bytes, bool) or not isinstance(number_of_bytes, int):
        raise TypeError(f"NumberOfBytes must be an int, not {type(number_of_bytes).__name__}")
    if number_of_bytes < 0:
        raise ValueError(f"NumberOfBytes must not be negative (got {number_of_bytes})")
    if number_of_bytes >= 1 << 64:
        raise ValueError(f"NumberOfBytes {number_of_bytes:#x} does not fit in a SIZE_T")
    return number_of_bytes


def _checked_address(address) -> int:
    if isinstance(address, bool) or not isinstance(address, int):
        raise TypeError(f"P must be an address (int), not {type(address).__name__}")
    if not 0 <= address < 1 << 64:
        raise ValueError(f"P {address:#x} is not a 64-bit address")
    return address


__all__ = ["PoolAllocator", "CACHE_ALIGNED_POOL_TYPE_MASK", "TagError"]
