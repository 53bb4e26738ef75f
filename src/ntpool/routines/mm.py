"""The memory manager's routines drivers import: physically contiguous and noncached memory,
physical addresses, pages for MDLs, partial MDLs, I/O space mappings, and the I/O manager's
error log entries.

Contiguous memory is the allocator's (``PoolAllocator.allocate_contiguous``, as NDIS's is):
page-aligned nonpaged pool pages on frames in a row, in the big page table with tag "MmCm"
(pooltag.txt: "Calls made to MmAllocateContiguousMemory"), charged to the driver's line.
Noncached memory, I/O space and MDL mappings are system PTE mappings
(``IoRoutines._map_system_ptes``), which carry no pool tag on Windows either. A release of
system PTEs that were never mapped, in the middle of a mapping or of the wrong size is
SYSTEM_PTE_MISUSE (0xDA) with the subcodes of Microsoft's table.

Mapping frames already in use at a second address (MmMapIoSpace of RAM, an MDL's mapping)
publishes ``FramesAliased``: the native CPU then watches code it scanned on those frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..constants import PAGE_SHIFT, PAGE_SIZE, BadPoolCaller, BugCheckCode, PoolType, SystemPteMisuse
from ..tags import tag_value
from ..machine.memory import PTE_CACHE_DISABLE, PTE_PRESENT, PTE_WRITE_THROUGH
from ..pool.allocator import Contiguous
from . import layouts as L
from .io import MM_EMPTY_LIST, SYSTEM_PTE_BASE, _span_pages
from .registry import register_type, routine

# MEMORY_CACHING_TYPE (wdm.h).
MmNonCached, MmCached, MmWriteCombined, MmHardwareCoherentCached, MmNonCachedUnordered, \
    MmUSWCCached, MmMaximumCacheType = range(7)
# MmAllocatePagesForMdlEx's Flags (wdm.h).
MM_DONT_ZERO_ALLOCATION = 0x1
MM_ALLOCATE_FROM_LOCAL_NODE_ONLY = 0x2
MM_ALLOCATE_FULLY_REQUIRED = 0x4
MM_ANY_NODE_OK = 0x80000000
# IoAllocateErrorLogEntry: the largest EntrySize (wdm.h: ERROR_LOG_LIMIT_SIZE, 256 - 16), and
# the most error log memory outstanding at once (ReactOS's IOP_MAXIMUM_LOG_SIZE).
ERROR_LOG_MAXIMUM_SIZE = 240
ERROR_LOG_MAXIMUM_OUTSTANDING = 100 * PAGE_SIZE
# The end of Windows 7 x64's system PTE range (0xFFFFF880`00000000 up), where MDL, I/O space and
# noncached mappings live.
SYSTEM_PTE_END = 0xFFFFF8A000000000

for _name, _size in (("NODE_REQUIREMENT", 4), ("PFN_NUMBER", 8)):
    register_type(_name, _size)


def _cache_bits(cache_type: int) -> int:
    """PTE bits for a MEMORY_CACHING_TYPE: noncached is PCD|PWT; write-combined is PWT, the
    PAT entry Windows programs as write-combining; cached (and the rest) none."""
    if cache_type in (MmNonCached, MmNonCachedUnordered):
        return PTE_CACHE_DISABLE | PTE_WRITE_THROUGH
    if cache_type in (MmWriteCombined, MmUSWCCached):
        return PTE_WRITE_THROUGH
    return 0


@dataclass
class ErrorLogRecord:
    """An entry IoWriteErrorLogEntry posted: what the Event Viewer would show."""

    device: int  # the DEVICE_OBJECT (0 when a driver object logged it)
    driver: int  # the DRIVER_OBJECT
    major_function: int
    retry_count: int
    error_code: int
    unique_error_value: int
    final_status: int
    sequence_number: int
    io_control_code: int
    device_offset: int
    event_category: int
    dump_data: bytes
    strings: list[str]
    time: int  # KeQuerySystemTime when it was written


class MmRoutines:
    """Mm routines and error log entries, mixed into the machine."""

    def _init_mm(self) -> None:
        self.contiguous_blocks: set[int] = set()  # MmAllocateContiguousMemory* addresses
        self.noncached_blocks: dict[int, tuple[int, Sequence[int]]] = {}  # base -> (pages, frames)
        self.io_space_mappings: set[int] = set()  # MmMapIoSpace bases
        # MmAllocateMappingAddress reservations: base -> [pages, tag, pages mapped now].
        self.reserved_mappings: dict[int, list[int]] = {}
        self.mdl_page_frames: dict[int, tuple] = {}  # MmAllocatePagesForMdl MDL -> frames
        self.error_log: list[ErrorLogRecord] = []
        self.error_log_bytes = 0  # error log entries outstanding (allocated, not written)

    # --- physically contiguous memory --------------------------------------------------

    @routine("PVOID MmAllocateContiguousMemory(_In_ SIZE_T NumberOfBytes, "
             "_In_ PHYSICAL_ADDRESS HighestAcceptableAddress)")
    def MmAllocateContiguousMemory(self, NumberOfBytes, HighestAcceptableAddress) -> int:
        """Cached nonpaged memory on frames in a row, none above HighestAcceptableAddress;
        NULL when none fit."""
        return self._contiguous(NumberOfBytes, 0, HighestAcceptableAddress, 0, MmCached)

    @routine("PVOID MmAllocateContiguousMemorySpecifyCache(_In_ SIZE_T NumberOfBytes, "
             "_In_ PHYSICAL_ADDRESS LowestAcceptableAddress, "
             "_In_ PHYSICAL_ADDRESS HighestAcceptableAddress, "
             "_In_opt_ PHYSICAL_ADDRESS BoundaryAddressMultiple, "
             "_In_ MEMORY_CACHING_TYPE CacheType)")
    def MmAllocateContiguousMemorySpecifyCache(self, NumberOfBytes, LowestAcceptableAddress,
                                               HighestAcceptableAddress,
                                               BoundaryAddressMultiple, CacheType) -> int:
        """As MmAllocateContiguousMemory, between the two addresses, crossing no multiple
        of BoundaryAddressMultiple (0: any), mapped with CacheType."""
        return self._contiguous(NumberOfBytes, LowestAcceptableAddress, HighestAcceptableAddress,
                                BoundaryAddressMultiple, CacheType)

    @routine("PVOID MmAllocateContiguousMemorySpecifyCacheNode(_In_ SIZE_T NumberOfBytes, "
             "_In_ PHYSICAL_ADDRESS LowestAcceptableAddress, "
             "_In_ PHYSICAL_ADDRESS HighestAcceptableAddress, "
             "_In_opt_ PHYSICAL_ADDRESS BoundaryAddressMultiple, "
             "_In_ MEMORY_CACHING_TYPE CacheType, _In_ NODE_REQUIREMENT PreferredNode)")
    def MmAllocateContiguousMemorySpecifyCacheNode(self, NumberOfBytes, LowestAcceptableAddress,
                                                   HighestAcceptableAddress,
                                                   BoundaryAddressMultiple, CacheType,
                                                   PreferredNode) -> int:
        """The machine is one NUMA node: any PreferredNode (a preference, or MM_ANY_NODE_OK)
        is served from it."""
        return self._contiguous(NumberOfBytes, LowestAcceptableAddress, HighestAcceptableAddress,
                                BoundaryAddressMultiple, CacheType)

    def _contiguous(self, size: int, lowest: int, highest: int, boundary: int,
                    cache_type: int) -> int:
        if not 0 <= cache_type < MmMaximumCacheType or not 0 < size <= self.physical.size:
            return 0  # no such cache type, nothing asked, or more than the machine's memory
        if boundary and (boundary & (PAGE_SIZE - 1) or boundary < size):
            return 0  # a boundary that is not whole pages, or smaller than the request
        highest &= 0xFFFFFFFFFFFFFFFF
        lowest = max(lowest, 0)
        request = Contiguous(highest >> PAGE_SHIFT, cache_type in (MmNonCached, MmNonCachedUnordered),
                             (lowest + PAGE_SIZE - 1) >> PAGE_SHIFT, boundary >> PAGE_SHIFT,
                             cache_type in (MmWriteCombined, MmUSWCCached))
        va = self.pool.allocate_contiguous(size, L.TAG_CONTIGUOUS, request.highest_pfn,
                                           request.noncached, request=request)
        if va:
            self.contiguous_blocks.add(va)
        return va

    @routine("VOID MmFreeContiguousMemory(_In_ PVOID BaseAddress)")
    def MmFreeContiguousMemory(self, BaseAddress) -> None:
        """Free what MmAllocateContiguousMemory* returned; anything else is BAD_POOL_CALLER
        0x60 (address, 0, 0), as Windows answers a bad pointer."""
        self._free_contiguous_memory(BaseAddress)

    @routine("VOID MmFreeContiguousMemorySpecifyCache(_In_ PVOID BaseAddress, "
             "_In_ SIZE_T NumberOfBytes, _In_ MEMORY_CACHING_TYPE CacheType)")
    def MmFreeContiguousMemorySpecifyCache(self, BaseAddress, NumberOfBytes, CacheType) -> None:
        """As MmFreeContiguousMemory: the whole allocation goes, whatever NumberOfBytes and
        CacheType say (WRK's frees by the address alone)."""
        self._free_contiguous_memory(BaseAddress)

    def _free_contiguous_memory(self, va: int) -> None:
        if va in self.contiguous_blocks:
            self.contiguous_blocks.discard(va)
        elif va in self.ndis_blocks:  # NDIS's contiguous memory is the memory manager's too
            del self.ndis_blocks[va]
        else:
            self.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.FREE_INVALID_CONTIGUOUS,
                              va, 0, 0, detail=f"MmFreeContiguousMemory of {va:#x}: not memory "
                                               f"MmAllocateContiguousMemory returned")
        self.pool.free_contiguous(va)

    # --- noncached memory --------------------------------------------------------------------

    @routine("PVOID MmAllocateNonCachedMemory(_In_ SIZE_T NumberOfBytes)")
    def MmAllocateNonCachedMemory(self, NumberOfBytes) -> int:
        """Zeroed pages (any frames) mapped noncached at system PTEs; NULL when memory or
        system PTEs run out."""
        if NumberOfBytes <= 0:
            return 0
        pages = (NumberOfBytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        if pages > self.physical.frame_count:
            return 0
        frames = self.physical.allocate_frames(pages)
        if frames is None:
            return 0
        # A run of frames (the usual case) stays a range: zeroed, mapped and freed whole.
        self.physical.zero_frames(frames)
        base = self._map_system_ptes(frames, pages, PTE_CACHE_DISABLE | PTE_WRITE_THROUGH,
                                     aliased=False)
        self.noncached_blocks[base] = (pages, frames)
        return base

    @routine("VOID MmFreeNonCachedMemory(_In_ PVOID BaseAddress, _In_ SIZE_T NumberOfBytes)")
    def MmFreeNonCachedMemory(self, BaseAddress, NumberOfBytes) -> None:
        """Unmap and free what MmAllocateNonCachedMemory returned; a release of anything else,
        or of another size, is SYSTEM_PTE_MISUSE (0xDA)."""
        pages = _span_pages(BaseAddress, NumberOfBytes)
        base = BaseAddress & ~(PAGE_SIZE - 1)
        self._check_system_pte_release(base, pages, self.noncached_blocks,
                                       "MmFreeNonCachedMemory")
        _, frames = self.noncached_blocks.pop(base)
        self._unmap_system(base)
        self.physical.free_frames(frames)

    def _check_system_pte_release(self, base: int, pages: int, owned, routine_name: str) -> None:
        """SYSTEM_PTE_MISUSE for a release of system PTEs from ``base`` (page-aligned) that
        ``owned`` (the routine's own mappings, by base) does not hold as given."""
        va = base
        mapped = self._system_ptes.get(base)
        if base in owned and mapped == pages:
            return
        if base in owned:
            subcode, parameters = SystemPteMisuse.RELEASE_WRONG_COUNT, (va, pages, mapped)
            why = f"{pages} page(s) of a mapping of {mapped}"
        elif mapped is None and any(start < base <= start + ((count - 1) << PAGE_SHIFT)
                                    for start, count in self._system_ptes.items()):
            subcode, parameters = SystemPteMisuse.RELEASE_MIDDLE, (va, pages, 0)
            why = "an address inside another mapping"
        elif SYSTEM_PTE_BASE <= base < SYSTEM_PTE_END and mapped is None:
            subcode, parameters = SystemPteMisuse.RELEASE_NOT_MAPPED, (va, 0, 0)
            why = "system PTEs that are not mapped"
        else:
            subcode, parameters = SystemPteMisuse.RELEASE_NOT_PERMITTED, (va, 0, 0)
            why = "an address this routine did not map"
        self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, subcode, *parameters,
                          detail=f"{routine_name} of {va:#x}: {why}")

    # --- physical addresses ------------------------------------------------------------------

    @routine("PHYSICAL_ADDRESS MmGetPhysicalAddress(_In_ PVOID BaseAddress)")
    def MmGetPhysicalAddress(self, BaseAddress) -> int:
        """The physical address BaseAddress maps (through the page tables); 0 when no valid
        PTE maps it."""
        pa = self.space.walk(BaseAddress & 0xFFFFFFFFFFFFFFFF)
        return 0 if pa is None else pa

    @routine("BOOLEAN MmIsAddressValid(_In_ PVOID VirtualAddress)")
    def MmIsAddressValid(self, VirtualAddress) -> int:
        """Whether a read of VirtualAddress would fault: its PTE is present (a paged-out
        page is not)."""
        return int(bool(self.space.pte(VirtualAddress & 0xFFFFFFFFFFFFFFFF) & PTE_PRESENT))

    @routine("PVOID MmGetVirtualForPhysical(_In_ PHYSICAL_ADDRESS PhysicalAddress)")
    def MmGetVirtualForPhysical(self, PhysicalAddress) -> int:
        """The virtual address the frame's owner maps it at (Windows reads the frame's PFN
        entry): its mapping outside the system PTEs' second mappings if it has one, else the
        lowest; 0 for a frame nothing maps. A walk of the machine's translations."""
        page = PhysicalAddress & ~(PAGE_SIZE - 1) & 0x000FFFFFFFFFF000
        found = [vpn << PAGE_SHIFT for vpn, base in self.space.tlb.items() if base == page]
        if not found:
            return 0
        owners = [va for va in found if not SYSTEM_PTE_BASE <= va < self._next_system_pte]
        return min(owners or found) | (PhysicalAddress & (PAGE_SIZE - 1))

    # --- MDLs ----------------------------------------------------------------------------------

    @routine("SIZE_T MmSizeOfMdl(_In_opt_ PVOID Base, _In_ SIZE_T Length)")
    def MmSizeOfMdl(self, Base, Length) -> int:
        """sizeof(MDL) and a PFN_NUMBER for each page the range spans."""
        return L.MDL.SIZE + 8 * _span_pages(Base or 0, Length)

    @routine("PMDL MmCreateMdl(_Inout_opt_ PMDL MemoryDescriptorList, "
             "_In_opt_ PVOID Base, _In_ SIZE_T Length)")
    def MmCreateMdl(self, MemoryDescriptorList, Base, Length) -> int:
        """Initialize an MDL for the range; with MemoryDescriptorList NULL one is allocated
        from nonpaged pool ("Mdl "), NULL when none is left."""
        Base = Base or 0
        size = self.MmSizeOfMdl(Base, Length)
        if size > 0x7FFF or Length > 0xFFFFFFFF:
            return 0  # no MDL holds it: its Size is a CSHORT, its ByteCount a ULONG
        mdl = MemoryDescriptorList
        if not mdl:
            mdl = self._io_allocate(PoolType.NonPagedPool, size, L.TAG_MDL)
            if not mdl:
                return 0
        self._mm_initialize_mdl(mdl, Base, Length, size)
        return mdl

    @routine("VOID IoBuildPartialMdl(_In_ PMDL SourceMdl, _Inout_ PMDL TargetMdl, "
             "_In_ PVOID VirtualAddress, _In_ ULONG Length)")
    def IoBuildPartialMdl(self, SourceMdl, TargetMdl, VirtualAddress, Length) -> None:
        """TargetMdl describes [VirtualAddress, +Length) of SourceMdl's buffer (Length 0:
        to its end), with the source's frames for those pages; MDL_PARTIAL, and the source's
        system mapping shifted when it has one."""
        start, offset, count = self._mdl_span(SourceMdl)
        first = start + offset
        if Length == 0:
            Length = first + count - VirtualAddress
        if not first <= VirtualAddress or VirtualAddress + Length > first + count or Length <= 0:
            raise ValueError(f"IoBuildPartialMdl of {Length} byte(s) at {VirtualAddress:#x}: not "
                             f"inside the source MDL's {count} byte(s) at {first:#x}")
        pages = _span_pages(VirtualAddress, Length)
        target_size = self._get16(TargetMdl + L.MDL.Size)
        if target_size < L.MDL.SIZE + 8 * pages:
            raise ValueError(f"IoBuildPartialMdl: the target MDL {TargetMdl:#x} is {target_size} "
                             f"bytes; {pages} page(s) need {L.MDL.SIZE + 8 * pages}")
        skip = ((VirtualAddress & ~(PAGE_SIZE - 1)) - start) >> PAGE_SHIFT
        source_flags = self._get16(SourceMdl + L.MDL.MdlFlags)
        flags = self._get16(TargetMdl + L.MDL.MdlFlags) & L.MDL_ALLOCATED_FIXED_SIZE
        flags |= source_flags & (L.MDL_SOURCE_IS_NONPAGED_POOL | L.MDL_MAPPED_TO_SYSTEM_VA |
                                 L.MDL_IO_PAGE_READ | L.MDL_IO_SPACE) | L.MDL_PARTIAL
        self._put64(TargetMdl + L.MDL.Process, self._get64(SourceMdl + L.MDL.Process))
        self._put64(TargetMdl + L.MDL.StartVa, VirtualAddress & ~(PAGE_SIZE - 1))
        self._put32(TargetMdl + L.MDL.ByteCount, Length)
        self._put32(TargetMdl + L.MDL.ByteOffset, VirtualAddress & (PAGE_SIZE - 1))
        self._put16(TargetMdl + L.MDL.MdlFlags, flags)
        if source_flags & L.MDL_MAPPING_FLAGS:
            self._put64(TargetMdl + L.MDL.MappedSystemVa,
                        self._get64(SourceMdl + L.MDL.MappedSystemVa) + VirtualAddress - first)
        self.write(TargetMdl + L.MDL.SIZE, self.read(SourceMdl + L.MDL.SIZE + 8 * skip, 8 * pages))

    @routine("PMDL MmAllocatePagesForMdl(_In_ PHYSICAL_ADDRESS LowAddress, "
             "_In_ PHYSICAL_ADDRESS HighAddress, _In_ PHYSICAL_ADDRESS SkipBytes, "
             "_In_ SIZE_T TotalBytes)")
    def MmAllocatePagesForMdl(self, LowAddress, HighAddress, SkipBytes, TotalBytes) -> int:
        """An MDL of zeroed frames between the two addresses, as many as there are up to
        TotalBytes (not contiguous, not mapped); NULL when none."""
        return self._pages_for_mdl(LowAddress, HighAddress, TotalBytes, MmCached, 0)

    @routine("PMDL MmAllocatePagesForMdlEx(_In_ PHYSICAL_ADDRESS LowAddress, "
             "_In_ PHYSICAL_ADDRESS HighAddress, _In_ PHYSICAL_ADDRESS SkipBytes, "
             "_In_ SIZE_T TotalBytes, _In_ MEMORY_CACHING_TYPE CacheType, _In_ ULONG Flags)")
    def MmAllocatePagesForMdlEx(self, LowAddress, HighAddress, SkipBytes, TotalBytes, CacheType,
                                Flags) -> int:
        """As MmAllocatePagesForMdl; MM_DONT_ZERO_ALLOCATION leaves the frames as they are,
        MM_ALLOCATE_FULLY_REQUIRED gives all of TotalBytes or NULL."""
        return self._pages_for_mdl(LowAddress, HighAddress, TotalBytes, CacheType, Flags)

    def _pages_for_mdl(self, low: int, high: int, total: int, cache_type: int, flags: int) -> int:
        if total <= 0 or not 0 <= cache_type < MmMaximumCacheType:
            return 0
        wanted = (total + PAGE_SIZE - 1) >> PAGE_SHIFT
        physical = self.physical
        first = max(1, (max(low, 0) + PAGE_SIZE - 1) >> PAGE_SHIFT)
        limit = min(physical.frame_count, ((high & 0xFFFFFFFFFFFFFFFF) >> PAGE_SHIFT) + 1)
        in_use = physical.frame_in_use
        wanted = min(wanted, (0x7FFF - L.MDL.SIZE) // 8)  # an MDL's Size is a CSHORT
        frames = []
        pfn = in_use.find(0, first, limit)
        while pfn >= 0 and len(frames) < wanted:
            frames.append(physical.claim_frame(pfn))  # taken now: the MDL's pool may need one
            pfn = in_use.find(0, pfn + 1, limit)
        full = len(frames) == wanted and wanted << PAGE_SHIFT >= total
        size = L.MDL.SIZE + 8 * len(frames)
        mdl = 0
        if frames and (full or not flags & MM_ALLOCATE_FULLY_REQUIRED):
            mdl = self._io_allocate(PoolType.NonPagedPool, size, L.TAG_MDL)
        if not mdl:
            for pfn in frames:
                physical.free_frame(pfn)
            return 0
        if not flags & MM_DONT_ZERO_ALLOCATION:
            for pfn in frames:
                physical.zero_frame(pfn)
        self._mm_initialize_mdl(mdl, 0, len(frames) << PAGE_SHIFT, size)
        self.write(mdl + L.MDL.SIZE, b"".join(p.to_bytes(8, "little") for p in frames))
        self._put16(mdl + L.MDL.MdlFlags, L.MDL_PAGES_LOCKED)
        self.mdl_page_frames[mdl] = tuple(frames)
        return mdl

    @routine("VOID MmFreePagesFromMdl(_Inout_ PMDL MemoryDescriptorList)")
    def MmFreePagesFromMdl(self, MemoryDescriptorList) -> None:
        """Give back the frames MmAllocatePagesForMdl(Ex) put in the MDL (its system mapping,
        if it has one, goes first); the MDL itself is the caller's to ExFreePool."""
        mdl = MemoryDescriptorList
        frames = self.mdl_page_frames.pop(mdl, None)
        if frames is None:
            raise ValueError(f"MmFreePagesFromMdl of {mdl:#x}: not an MDL MmAllocatePagesForMdl "
                             f"returned (or its pages were freed already)")
        flags = self._get16(mdl + L.MDL.MdlFlags)
        if flags & L.MDL_MAPPED_TO_SYSTEM_VA:
            self._unmap_system(self._get64(mdl + L.MDL.MappedSystemVa) & ~(PAGE_SIZE - 1))
        for pfn in frames:
            self.physical.free_frame(pfn)
        self.write(mdl + L.MDL.SIZE, MM_EMPTY_LIST.to_bytes(8, "little") * len(frames))
        self._put16(mdl + L.MDL.MdlFlags,
                    flags & ~(L.MDL_MAPPED_TO_SYSTEM_VA | L.MDL_PAGES_LOCKED))

    # --- I/O space -------------------------------------------------------------------------------

    @routine("PVOID MmMapIoSpace(_In_ PHYSICAL_ADDRESS PhysicalAddress, _In_ SIZE_T NumberOfBytes, "
             "_In_ MEMORY_CACHING_TYPE CacheType)")
    def MmMapIoSpace(self, PhysicalAddress, NumberOfBytes, CacheType) -> int:
        """The physical range mapped writable at system PTEs with CacheType; NULL for 0
        bytes or a CacheType past MmUSWCCached. The machine has RAM only: a range past its
        memory is device memory ntpool has not got (ValueError; README, departures). RAM in
        use gets a second mapping of the same bytes."""
        if NumberOfBytes <= 0 or not 0 <= CacheType < MmMaximumCacheType or PhysicalAddress < 0:
            return 0
        first = PhysicalAddress >> PAGE_SHIFT
        pages = _span_pages(PhysicalAddress, NumberOfBytes)
        if first + pages > self.physical.frame_count:
            raise ValueError(f"MmMapIoSpace of {NumberOfBytes} byte(s) at physical "
                             f"{PhysicalAddress:#x}: past the machine's "
                             f"{self.physical.frame_count:#x} frames of memory (device memory, "
                             f"which ntpool's machine has not got)")
        frames = range(first, first + pages)
        aliased = any(self.physical.frame_in_use[first:first + pages])
        base = self._map_system_ptes(frames, pages, _cache_bits(CacheType), aliased=aliased)
        self.io_space_mappings.add(base)
        return base | (PhysicalAddress & (PAGE_SIZE - 1))

    @routine("VOID MmUnmapIoSpace(_In_ PVOID BaseAddress, _In_ SIZE_T NumberOfBytes)")
    def MmUnmapIoSpace(self, BaseAddress, NumberOfBytes) -> None:
        """Unmap what MmMapIoSpace mapped; anything else, or another size, is
        SYSTEM_PTE_MISUSE (0xDA)."""
        pages = _span_pages(BaseAddress, NumberOfBytes)
        base = BaseAddress & ~(PAGE_SIZE - 1)
        self._check_system_pte_release(base, pages, self.io_space_mappings, "MmUnmapIoSpace")
        self.io_space_mappings.discard(base)
        self._unmap_system(base)

    # --- reserved mappings -------------------------------------------------------------------
    #
    # A reservation is system PTEs with two before it that hold its size and its tag (ReactOS,
    # whose checks and 0xDA parameters these follow; the subcodes are Microsoft's table's).

    @routine("PVOID MmAllocateMappingAddress(_In_ SIZE_T NumberOfBytes, _In_ ULONG PoolTag)")
    def MmAllocateMappingAddress(self, NumberOfBytes, PoolTag) -> int:
        """System PTEs reserved for MmMapLockedPagesWithReservedMapping, under PoolTag; NULL
        when there is not room; 0 bytes is SYSTEM_PTE_MISUSE (0x100, 0, tag, 0)."""
        tag = tag_value(PoolTag)
        pages = _span_pages(0, NumberOfBytes)
        if not pages:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, SystemPteMisuse.RESERVE_ZERO, 0,
                              tag, 0, detail="MmAllocateMappingAddress of 0 bytes")
        if self._next_system_pte + ((pages + 3) << PAGE_SHIFT) > SYSTEM_PTE_END:
            return 0
        base = self._next_system_pte + 2 * PAGE_SIZE  # after the size and tag PTEs
        self._next_system_pte += (pages + 3) << PAGE_SHIFT
        self.reserved_mappings[base] = [pages, tag, 0]
        return base

    def _reservation(self, address: int, tag: int, not_owner: int, empty: int,
                     routine_name: str) -> list[int]:
        reservation = self.reserved_mappings.get(address)
        if reservation is None:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, empty, address, tag, 0,
                              detail=f"{routine_name} of {address:#x}: no mapping address "
                                     f"MmAllocateMappingAddress reserved")
        if reservation[1] != tag:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, not_owner, address, tag,
                              reservation[1] & ~1,
                              detail=f"{routine_name} of {address:#x} with tag {tag:#x}: it was "
                                     f"reserved with tag {reservation[1]:#x}")
        return reservation

    @routine("VOID MmFreeMappingAddress(_In_ PVOID BaseAddress, _In_ ULONG PoolTag)")
    def MmFreeMappingAddress(self, BaseAddress, PoolTag) -> None:
        """Give back a reservation: another tag is 0xDA/0x101, no reservation 0x102, one
        still mapped 0x103."""
        tag = tag_value(PoolTag)
        pages, _, mapped = self._reservation(BaseAddress, tag, SystemPteMisuse.FREE_NOT_OWNER,
                                             SystemPteMisuse.FREE_EMPTY, "MmFreeMappingAddress")
        if mapped:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, SystemPteMisuse.FREE_STILL_MAPPED,
                              BaseAddress, tag, pages,
                              detail=f"MmFreeMappingAddress of {BaseAddress:#x}: still mapped "
                                     f"(MmUnmapReservedMapping first)")
        del self.reserved_mappings[BaseAddress]

    @routine("PVOID MmMapLockedPagesWithReservedMapping(_In_ PVOID MappingAddress, "
             "_In_ ULONG PoolTag, _Inout_ PMDL MemoryDescriptorList, "
             "_In_ MEMORY_CACHING_TYPE CacheType)")
    def MmMapLockedPagesWithReservedMapping(self, MappingAddress, PoolTag, MemoryDescriptorList,
                                            CacheType) -> int:
        """The MDL's pages mapped at the reservation; NULL when they do not fit in it.
        Another tag is 0xDA/0x104, no reservation 0x105, one mapped already 0x107."""
        tag = tag_value(PoolTag)
        mdl = MemoryDescriptorList
        reservation = self._reservation(MappingAddress, tag, SystemPteMisuse.MAP_NOT_OWNER,
                                        SystemPteMisuse.MAP_INVALID,
                                        "MmMapLockedPagesWithReservedMapping")
        pages, _, mapped = reservation
        if mapped:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, SystemPteMisuse.MAP_NOT_EMPTY,
                              MappingAddress, MappingAddress,
                              MappingAddress + ((pages - 1) << PAGE_SHIFT),
                              detail=f"MmMapLockedPagesWithReservedMapping at {MappingAddress:#x}: "
                                     f"mapped already (MmUnmapReservedMapping first)")
        start, offset, count = self._mdl_span(mdl)
        needed = _span_pages(start + offset, count)
        if needed > pages or not 0 <= CacheType < MmMaximumCacheType:
            return 0
        flags = self._get16(mdl + L.MDL.MdlFlags)
        frames = self._mdl_frames_to_map(mdl, flags, needed)
        self._map_system_ptes(frames, needed, _cache_bits(CacheType), base=MappingAddress)
        reservation[2] = needed
        self._put64(mdl + L.MDL.MappedSystemVa, MappingAddress)
        self._put16(mdl + L.MDL.MdlFlags, flags | L.MDL_MAPPED_TO_SYSTEM_VA |
                    (L.MDL_PARTIAL_HAS_BEEN_MAPPED if flags & L.MDL_PARTIAL else 0))
        return MappingAddress + offset

    @routine("VOID MmUnmapReservedMapping(_In_ PVOID BaseAddress, _In_ ULONG PoolTag, "
             "_Inout_ PMDL MemoryDescriptorList)")
    def MmUnmapReservedMapping(self, BaseAddress, PoolTag, MemoryDescriptorList) -> None:
        """Unmap what MmMapLockedPagesWithReservedMapping mapped there, keeping the
        reservation. Another tag is 0xDA/0x108, no reservation 0x109, an MDL larger than the
        reservation 0x10A, nothing mapped 0x10B, an MDL of another size 0x10C."""
        tag = tag_value(PoolTag)
        mdl = MemoryDescriptorList
        reservation = self._reservation(BaseAddress, tag, SystemPteMisuse.UNMAP_NOT_OWNER,
                                        SystemPteMisuse.UNMAP_EMPTY, "MmUnmapReservedMapping")
        pages, _, mapped = reservation
        start, offset, count = self._mdl_span(mdl)
        unmapping = _span_pages(start + offset, count)
        subcode = SystemPteMisuse.UNMAP_TOO_MANY if unmapping > pages else \
            SystemPteMisuse.UNMAP_NOT_MAPPED if not mapped else \
            SystemPteMisuse.UNMAP_NOT_ALL if unmapping != mapped else None
        if subcode is not None:
            self.KeBugCheckEx(BugCheckCode.SYSTEM_PTE_MISUSE, subcode, BaseAddress,
                              pages if subcode == SystemPteMisuse.UNMAP_TOO_MANY else tag,
                              unmapping, detail=f"MmUnmapReservedMapping of {unmapping} page(s) "
                                                f"at {BaseAddress:#x}: {mapped} of its {pages} "
                                                f"are mapped")
        self._unmap_system(BaseAddress)
        reservation[2] = 0
        self._put16(mdl + L.MDL.MdlFlags, self._get16(mdl + L.MDL.MdlFlags) & ~(
            L.MDL_MAPPED_TO_SYSTEM_VA | L.MDL_PARTIAL_HAS_BEEN_MAPPED))

    # --- error log entries -------------------------------------------------------------------

    @routine("PVOID IoAllocateErrorLogEntry(_In_ PVOID IoObject, _In_ UCHAR EntrySize)")
    def IoAllocateErrorLogEntry(self, IoObject, EntrySize) -> int:
        """A zeroed IO_ERROR_LOG_PACKET of EntrySize bytes ("IoEr", nonpaged, charged to the
        driver) for a device or driver object; NULL for another object, a size below the
        packet's or past ERROR_LOG_MAXIMUM_SIZE, or when the error log already holds its
        most."""
        if not IoObject or not L.IO_ERROR_LOG_PACKET.SIZE <= EntrySize <= ERROR_LOG_MAXIMUM_SIZE:
            return 0
        object_type = self._get16(IoObject)
        if object_type == L.IO_TYPE_DEVICE:
            device, driver = IoObject, self._get64(IoObject + L.DEVICE_OBJECT.DriverObject)
        elif object_type == L.IO_TYPE_DRIVER:
            device, driver = 0, IoObject
        else:
            return 0
        size = L.ERROR_LOG_ENTRY.SIZE + EntrySize
        if self.error_log_bytes + size > ERROR_LOG_MAXIMUM_OUTSTANDING:
            return 0
        entry = self._io_allocate(PoolType.NonPagedPool, size, L.TAG_ERROR_LOG)
        if not entry:
            return 0
        self.error_log_bytes += size
        self.write(entry, bytes(size))
        self._put16(entry + L.ERROR_LOG_ENTRY.Type, L.IO_TYPE_ERROR_LOG)
        self._put16(entry + L.ERROR_LOG_ENTRY.Size, size)
        self._put64(entry + L.ERROR_LOG_ENTRY.DeviceObject, device)
        self._put64(entry + L.ERROR_LOG_ENTRY.DriverObject, driver)
        return entry + L.ERROR_LOG_ENTRY.SIZE

    @routine("VOID IoWriteErrorLogEntry(_In_ PVOID ElEntry)")
    def IoWriteErrorLogEntry(self, ElEntry) -> None:
        """Post the entry: it is read into ``k.error_log`` (an ErrorLogRecord: codes, dump
        data, insertion strings) and its pool freed with ExFreePool's checks, as the error
        log thread frees it."""
        entry = ElEntry - L.ERROR_LOG_ENTRY.SIZE
        record = self._read_error_log_entry(entry, ElEntry)
        self._free_error_log_entry(entry)
        self.error_log.append(record)

    @routine("VOID IoFreeErrorLogEntry(_In_ PVOID ElEntry)")
    def IoFreeErrorLogEntry(self, ElEntry) -> None:
        """Free an entry that will not be written."""
        self._free_error_log_entry(ElEntry - L.ERROR_LOG_ENTRY.SIZE)

    def _free_error_log_entry(self, entry: int) -> None:
        size = self._get16(entry + L.ERROR_LOG_ENTRY.Size)
        self.pool.free(entry, L.TAG_ERROR_LOG)
        self.error_log_bytes = max(0, self.error_log_bytes - size)

    def _read_error_log_entry(self, entry: int, packet: int) -> ErrorLogRecord:
        P = L.IO_ERROR_LOG_PACKET
        size = self._get16(entry + L.ERROR_LOG_ENTRY.Size) - L.ERROR_LOG_ENTRY.SIZE
        body = self.read(packet, max(P.SIZE, min(size, ERROR_LOG_MAXIMUM_SIZE)))

        def field(offset: int, width: int) -> int:
            return int.from_bytes(body[offset:offset + width], "little")

        dump_size = min(field(P.DumpDataSize, 2), max(0, len(body) - P.DumpData))
        strings = []
        offset = field(P.StringOffset, 2)
        for _ in range(field(P.NumberOfStrings, 2)):
            if not P.DumpData <= offset < len(body):
                break  # the event log service would drop what lies outside the entry
            end = offset
            while end + 1 < len(body) and body[end:end + 2] != b"\0\0":
                end += 2
            strings.append(body[offset:end].decode("utf-16-le", "replace"))
            offset = end + 2
        return ErrorLogRecord(
            device=self._get64(entry + L.ERROR_LOG_ENTRY.DeviceObject),
            driver=self._get64(entry + L.ERROR_LOG_ENTRY.DriverObject),
            major_function=body[P.MajorFunctionCode], retry_count=body[P.RetryCount],
            error_code=field(P.ErrorCode, 4), unique_error_value=field(P.UniqueErrorValue, 4),
            final_status=field(P.FinalStatus, 4), sequence_number=field(P.SequenceNumber, 4),
            io_control_code=field(P.IoControlCode, 4), device_offset=field(P.DeviceOffset, 8),
            event_category=field(P.EventCategory, 2),
            dump_data=bytes(body[P.DumpData:P.DumpData + dump_size]), strings=strings,
            time=self.KeQuerySystemTime())
