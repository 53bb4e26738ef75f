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
from functools import lru_cache

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


@lru_cache(maxsize=128)  # a pattern byte is odd: 128 pages at most
def pattern_page(fill: int) -> bytes:
    """A page of ``fill`` bytes: written at allocation, compared with at free."""
    return bytes([fill]) * PAGE_SIZE


class SpecialAllocation:
    __slots__ = ("address", "size", "tag", "site", "underrun", "base_type", "page")

    def __init__(self, address, size, tag, site, underrun, base_type, page):
        self.address, self.size, self.tag, self.site = address, size, tag, site
        self.underrun, self.base_type, self.page = underrun, base_type, page


class Region:
    """One special pool VA region: its slots and what they hold."""

    def __init__(self, base: int, slots: int):
        self.base = base
        self.limit = base + slots * SLOT_SIZE
        self.states = bytearray(slots)
        self.live: dict[int, SpecialAllocation] = {}  # slot -> allocation
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
        return {(region.base, slot): allocation for region in self.regions
                for slot, allocation in region.live.items()}

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
        for region in self.regions:
            if region.contains(address):
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
        for offset in (0, PAGE_SIZE):  # the guard page of a reused slot stays unmapped
            if kernel.space.translate(slot_va + offset) is not None:
                kernel.space.unmap_page(slot_va + offset)
        # Windows 10/11 keep NonPagedPool executable and NonPagedPoolNx and paged pool not.
        kernel.space.map_page(page, pfn, executable=self.split and pool is kernel.nonpaged_pool)
        rounded = (number_of_bytes + BLOCK - 1) & ~(BLOCK - 1)
        if underrun:
            address, header_at = page, page + PAGE_SIZE - BLOCK
        else:
            address, header_at = page + PAGE_SIZE - rounded, page
        pa = pfn << PAGE_SHIFT
        fill = pattern_byte(page)
        kernel.physical.buffer[pa:pa + PAGE_SIZE] = pattern_page(fill)
        flags = FLAG_UNDERRUN if underrun else 0
        HEADER.pack_into(kernel.physical.buffer, pa + (header_at - page), number_of_bytes, flags,
                         pool.allocated_header_type, tag, site)
        region.states[slot] = SLOT_LIVE
        region.live[slot] = SpecialAllocation(address, number_of_bytes, tag, site, underrun,
                                              pool.base_type, page)
        kernel.pool.track_layer_allocation(tag, pool.base_type, rounded + BLOCK)
        return address

    # --- free ----------------------------------------------------------------------------

    def free(self, address: int, passed_tag: int | None) -> bool:
        region = self.region_of(address)
        if region is None:
            return False
        kernel = self.kernel
        slot = region.slot_of(address)
        allocation = region.live.get(slot)
        if allocation is None or allocation.address != address:
            kernel.KeBugCheckEx(BugCheckCode.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION, address, 0, 0,
                                SpecialPoolCorruption.FREE_NOT_ALLOCATED, detail=f"free of special pool {address:#x}, which is not allocated")
        # As the pool's own free: only a protected tag is compared, bit 31 masked on both sides.
        if allocation.tag & PROTECTED_POOL and \
                ((passed_tag or 0) ^ allocation.tag) & ~PROTECTED_POOL & 0xFFFFFFFF:
            kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.WRONG_TAG_ON_FREE, address,
                                allocation.tag & ~PROTECTED_POOL, passed_tag or 0,
                                detail="protected special pool freed with the wrong tag")
        self._check_pattern(allocation)
        kernel.pool.untrack_layer_allocation(allocation.tag, allocation.base_type,
                                    ((allocation.size + BLOCK - 1) & ~(BLOCK - 1)) + BLOCK)
        pfn = kernel.space.unmap_page(allocation.page)
        kernel.physical.free_frame(pfn)
        del region.live[slot]
        region.states[slot] = SLOT_FREED
        region.freed.append(slot)
        return True

    def _check_pattern(self, allocation: SpecialAllocation) -> None:
        """Every byte of the page outside the allocation and its header still holds the fill."""
        page = self.kernel.read(allocation.page, PAGE_SIZE)
        intact = pattern_page(pattern_byte(allocation.page))
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
            allocation = region.live[slot]
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
        allocation = region.live.get(region.slot_of(address))
        return allocation.site if allocation and allocation.address == address else 0


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
