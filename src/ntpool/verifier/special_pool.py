"""Special pool: each allocation alone on a page, beside a guard page, slack filled with a pattern.

ntpool's Windows 7 machine has one special pool region for paged and nonpaged allocations
alike. Windows 10 and 11 (the segment-heap machines) have two, as their kernel's system VA
types say
(_MI_SYSTEM_VA_TYPE's MiVaSpecialPoolPaged and MiVaSpecialPoolNonPaged): nonpaged special
pool at the region's base, paged special pool PAGED_REGION_OFFSET above it; there a page
holding a NonPagedPool (executable) allocation is mapped executable, the others no-execute
(NonPagedPoolNx, paged). The rest is the same on both, as Microsoft's documentation of the
option describes it for every version.

Region layout: slots of two pages. Overrun mode puts the allocation at the END of the
first page (16-byte aligned, so up to 15 bytes of slack follow it) with the guard page
after; underrun mode puts it at the START of the second page with the guard page before.
A 16-byte header (size u16, flags u8, PoolType u8, Tag u32, call site u64) sits at the far
end of the page from the allocation; every other byte of the page holds the pattern and is
checked at free. Freed slots stay unmapped and are reused oldest-first, so a stale pointer
faults for as long as possible. When no slot is left, allocations fall back silently to
normal pool, as Windows' do.
"""

from collections import deque
from fnmatch import fnmatchcase
from typing import NamedTuple

from ..packing import x64_struct
from ..constants import PAGE_SHIFT, PAGE_SIZE, BadPoolCaller, BugCheckCode, SpecialPoolCorruption
from ..hooks import PageFault
from ..tags import PROTECTED_POOL, display

SPECIAL_POOL_BASE = 0xFFFFF98000000000
PAGED_REGION_OFFSET = 1 << 31  # Windows 10/11: paged special pool's region, above nonpaged's
DEFAULT_SLOTS = 4096
SLOT_SIZE = 2 * PAGE_SIZE
HEADER = x64_struct("<HBBIQ")
FLAG_UNDERRUN = 0x1
SLOT_UNUSED, SLOT_LIVE, SLOT_FREED = 0, 1, 2
BLOCK = 16


def pattern_byte(page_va: int) -> int:
    return ((page_va >> PAGE_SHIFT) & 0xFF) | 0x01  # never 0, so zeroed memory is caught


class _PatternPages(dict):
    """A page's fill, a page of ``pattern_byte`` bytes, by the low byte of its page number:
    written at allocation, compared with at free. Each is made at its first use (at most
    128: a pattern byte is odd) and is then one dict subscript away."""

    def __missing__(self, page_number_byte: int) -> bytes:
        page = self[page_number_byte] = bytes([page_number_byte | 0x01]) * PAGE_SIZE
        return page


PATTERN_PAGES = _PatternPages()


def pattern_page(page_va: int) -> bytes:
    """The page of fill bytes special pool writes on the page at ``page_va``."""
    return PATTERN_PAGES[(page_va >> PAGE_SHIFT) & 0xFF]


class SpecialAllocation(NamedTuple):
    """A live special pool allocation. Region.live keeps each as a plain tuple of these
    fields, in this order (a tuple is made with no call); ``SpecialPool.live`` shows them
    as this class."""

    address: int
    size: int
    tag: int
    site: int
    underrun: bool
    base_type: int
    page: int


class Region:
    """One special pool VA region: its slots and what they hold."""

    def __init__(self, base: int, slots: int):
        self.base = base
        self.limit = base + slots * SLOT_SIZE
        self.states = bytearray(slots)
        self.live: dict[int, tuple] = {}  # slot -> its SpecialAllocation's fields, a plain tuple
        self.freed: deque[int] = deque()
        self.cursor = 0

    def contains(self, address: int) -> bool:
        return self.base <= address < self.limit

    def slot_of(self, address: int) -> int:
        return (address - self.base) // SLOT_SIZE

    def take_slot(self) -> int:
        slot = self.states.find(SLOT_UNUSED, self.cursor)
        if slot >= 0:
            self.cursor = slot + 1
            return slot
        while self.freed:
            slot = self.freed.popleft()
            if self.states[slot] == SLOT_FREED:
                return slot
        return -1


class SpecialPool:
    def __init__(self, kernel, slots: int = DEFAULT_SLOTS):
        self.kernel = kernel
        self.base = SPECIAL_POOL_BASE
        self.slot_count = slots
        windows = getattr(kernel, "windows", None)
        # Windows 10/11: paged and nonpaged special pool are regions of their own.
        self.split = windows is not None and windows.segment_heap
        self.nonpaged_region = Region(SPECIAL_POOL_BASE, slots)
        self.paged_region = Region(SPECIAL_POOL_BASE + PAGED_REGION_OFFSET, slots) \
            if self.split else self.nonpaged_region
        self.regions = (self.nonpaged_region, self.paged_region) if self.split else \
            (self.nonpaged_region,)
        self.limit = self.regions[-1].limit
        self.fallbacks = 0
        self._installed = False

    @property
    def live(self) -> dict:
        """Every live allocation, by (region base, slot)."""
        return {(region.base, slot): SpecialAllocation(*record) for region in self.regions
                for slot, record in region.live.items()}

    def resize(self, slots: int) -> None:
        """Set how many allocations special pool holds at once (only while it holds none)."""
        if any(region.live for region in self.regions):
            raise ValueError("special pool can only be resized while it holds no allocation")
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive int, got {slots!r}")
        self.__init__(self.kernel, slots)

    def install(self, on: bool) -> None:
        if on:
            self.kernel.hooks.subscribe(PageFault, self.fault)
        else:
            self.kernel.hooks.unsubscribe(PageFault, self.fault)
        self._installed = on

    def region_of(self, address: int) -> Region | None:
        # The regions lie in address order within [base, limit): nonpaged special pool's,
        # then (Windows 10/11) paged special pool's, which is the same on Windows 7.
        if self.base <= address < self.limit:
            paged = self.paged_region
            region = paged if address >= paged.base else self.nonpaged_region
            if address < region.limit:
                return region
        return None

    def contains(self, address: int) -> bool:
        return self.region_of(address) is not None

    def wants(self, options, number_of_bytes: int, tag: int) -> bool:
        if number_of_bytes > PAGE_SIZE - BLOCK:
            return False  # a page or more: never special pool
        if options.special_pool_sizes is not None:
            low, high = options.special_pool_sizes
            if not low <= number_of_bytes <= high:
                return False
        if options.special_pool_tags:
            shown = display(tag)
            return any(fnmatchcase(shown, p) for p in options.special_pool_tags)
        return True

    # --- allocation ----------------------------------------------------------------------

    def allocate(self, pool, number_of_bytes: int, tag: int, site: int, underrun: bool) -> int:
        region = self.paged_region if pool.base_type else self.nonpaged_region
        slot = region.take_slot()
        if slot < 0:
            self.fallbacks += 1
            return 0
        kernel = self.kernel
        try:
            pfn = kernel.physical.allocate_frame()
        except MemoryError:
            self.fallbacks += 1
            return 0
        slot_va = region.base + slot * SLOT_SIZE
        page = slot_va + PAGE_SIZE if underrun else slot_va
        space = kernel.space
        if _slot_mapped(space.tlb, slot_va):
            _unmap_slot(space, slot_va)  # (a free unmaps its page: the guard page stays unmapped)
        # Windows 10/11 keep NonPagedPool executable and NonPagedPoolNx and paged pool not.
        space.map_page(page, pfn, executable=self.split and pool is kernel.nonpaged_pool)
        rounded = (number_of_bytes + BLOCK - 1) & ~(BLOCK - 1)
        if underrun:
            address, header_at = page, PAGE_SIZE - BLOCK
        else:
            address, header_at = page + PAGE_SIZE - rounded, 0
        pa = pfn << PAGE_SHIFT
        buffer = kernel.physical.buffer
        buffer[pa:pa + PAGE_SIZE] = PATTERN_PAGES[(page >> PAGE_SHIFT) & 0xFF]  # pattern_page(page)
        HEADER.pack_into(buffer, pa + header_at, number_of_bytes, FLAG_UNDERRUN if underrun else 0,
                         pool.allocated_header_type, tag, site)
        region.states[slot] = SLOT_LIVE
        base_type = pool.base_type
        region.live[slot] = (address, number_of_bytes, tag, site, underrun, base_type, page)
        kernel.pool.track_layer_allocation(tag, base_type, rounded + BLOCK)
        return address

    # --- free ----------------------------------------------------------------------------

    def free(self, address: int, passed_tag: int | None) -> bool:
        region = self.region_of(address)
        if region is None:
            return False
        slot = (address - region.base) // SLOT_SIZE  # Region.slot_of
        record = region.live.get(slot)
        if record is None or record[0] != address:
            self._crash_not_allocated(address)
        _, size, tag, _, underrun, base_type, page = record
        if tag & PROTECTED_POOL:
            self._check_protected_tag(address, tag, passed_tag)
        kernel = self.kernel
        space = kernel.space
        # The usual page, still mapped (its frame's address in hand), with its fill intact:
        # two comparisons at most. Anything else is looked at the general way (a page read
        # through the machine, every range scanned), which raises the bug check.
        pa = space.tlb.get(page >> PAGE_SHIFT)
        if pa is None or not _fill_intact(kernel.physical.buffer, pa, page, address - page,
                                          size, underrun):
            self._check_pattern(SpecialAllocation(*record))
        kernel.pool.untrack_layer_allocation(tag, base_type, ((size + BLOCK - 1) & ~(BLOCK - 1)) + BLOCK)
        kernel.physical.free_frame(space.unmap_page(page))
        del region.live[slot]
        region.states[slot] = SLOT_FREED
        region.freed.append(slot)
        return True

    def _crash_not_allocated(self, address: int) -> None:
        self.kernel.KeBugCheckEx(BugCheckCode.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION, address, 0, 0,
                                 SpecialPoolCorruption.FREE_NOT_ALLOCATED,
                                 detail=f"free of special pool {address:#x}, which is not allocated")

    def _check_protected_tag(self, address: int, tag: int, passed_tag: int | None) -> None:
        """As the pool's own free: only a protected tag is compared, bit 31 masked on both sides."""
        if ((passed_tag or 0) ^ tag) & ~PROTECTED_POOL & 0xFFFFFFFF:
            self.kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.WRONG_TAG_ON_FREE,
                                     address, tag & ~PROTECTED_POOL, passed_tag or 0,
                                     detail="protected special pool freed with the wrong tag")

    def _check_pattern(self, allocation: SpecialAllocation) -> None:
        """Every byte of the page outside the allocation and its header still holds the fill
        (the general way: the page read through the machine, each slack range compared)."""
        page = self.kernel.read(allocation.page, PAGE_SIZE)
        intact = pattern_page(allocation.page)
        start = allocation.address - allocation.page
        end = start + allocation.size
        header_at = PAGE_SIZE - BLOCK if allocation.underrun else 0
        for low, high in _slack_ranges(start, end, header_at):
            # One comparison of the range (a memcmp); only a damaged range is scanned for
            # its first overwritten byte.
            if page[low:high] != intact[low:high]:
                rest = page[low:high].lstrip(intact[:1])
                offset = high - len(rest)
                after_end = offset >= end
                self.kernel.KeBugCheckEx(
                    BugCheckCode.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION, allocation.address,
                    allocation.page + offset, 0,
                    SpecialPoolCorruption.BYTES_AFTER_END_CORRUPTED if after_end else
                    SpecialPoolCorruption.NEARBY_BYTES_CORRUPTED,
                    detail=f"byte {allocation.page + offset:#x} "
                           f"{'after the end of' if after_end else 'near'} special pool "
                           f"allocation {allocation.address:#x} ({allocation.size} bytes, tag "
                           f"{display(allocation.tag)}) was overwritten")

    # --- faults --------------------------------------------------------------------------

    def fault(self, event: PageFault):
        address, write = event.address, event.write
        region = self.region_of(address)
        if region is None:
            return None
        kernel = self.kernel
        slot = region.slot_of(address)
        state = region.states[slot]
        site = kernel.call_sites.site_of_caller()
        ip = kernel.call_sites.table[site].address if site else 0
        if state == SLOT_LIVE:
            allocation = SpecialAllocation(*region.live[slot])
            where = "before the start" if address < allocation.address else "past the end"
            # As for freed special pool: the DRIVER_ code when the access is a driver's.
            by_driver = kernel.call_sites.owner(site) is not None
            code = (BugCheckCode.DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION if by_driver
                    else BugCheckCode.PAGE_FAULT_BEYOND_END_OF_ALLOCATION)
            kernel.KeBugCheckEx(code, address, int(write),
                                ip, 0, detail=f"{'write' if write else 'read'} at {address:#x}, "
                                f"{where} of special pool allocation {allocation.address:#x} "
                                f"({allocation.size} bytes, tag {display(allocation.tag)})")
        if state == SLOT_FREED:
            by_driver = kernel.call_sites.owner(site) is not None
            code = (BugCheckCode.DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL if by_driver
                    else BugCheckCode.PAGE_FAULT_IN_FREED_SPECIAL_POOL)
            kernel.KeBugCheckEx(code, address, int(write), ip, 0,
                                detail=f"{'write' if write else 'read'} at {address:#x}, "
                                       f"in special pool that was freed")
        return None

    def site_of(self, address: int):
        region = self.region_of(address)
        if region is None:
            return None
        record = region.live.get(region.slot_of(address))
        return record[3] if record and record[0] == address else 0  # its site


def _slot_mapped(tlb: dict, slot_va: int) -> bool:
    """Is either page of the slot at ``slot_va`` mapped (the TLB knows every mapped page)?"""
    vpn = slot_va >> PAGE_SHIFT
    return vpn in tlb or vpn + 1 in tlb


def _unmap_slot(space, slot_va: int) -> None:
    for page in (slot_va, slot_va + PAGE_SIZE):
        if space.translate(page) is not None:
            space.unmap_page(page)


def _fill_intact(buffer, pa: int, page: int, start: int, size: int, underrun: bool) -> bool:
    """Does the page at ``page`` (physical address ``pa``) hold its fill everywhere but the
    allocation (``size`` bytes from ``start`` in the page) and its header? The slack is
    ``_slack_ranges``': in underrun mode, from the allocation's end to the header at the
    page's end; in overrun mode, from the header (the page's first 16 bytes) to the
    allocation, and past the allocation's end (its rounding) to the page's end."""
    intact = PATTERN_PAGES[(page >> PAGE_SHIFT) & 0xFF]  # pattern_page(page)
    end = start + size
    if underrun:
        return buffer[pa + end:pa + PAGE_SIZE - BLOCK] == intact[end:PAGE_SIZE - BLOCK]
    return buffer[pa + BLOCK:pa + start] == intact[BLOCK:start] and \
        buffer[pa + end:pa + PAGE_SIZE] == intact[end:]


def _slack_ranges(start: int, end: int, header_at: int) -> list[tuple[int, int]]:
    """The page's byte ranges that hold only the fill: all but the allocation and header."""
    taken = sorted([(start, end), (header_at, header_at + BLOCK)])
    ranges, cursor = [], 0
    for low, high in taken:
        if cursor < low:
            ranges.append((cursor, low))
        cursor = max(cursor, high)
    if cursor < PAGE_SIZE:
        ranges.append((cursor, PAGE_SIZE))
    return ranges
