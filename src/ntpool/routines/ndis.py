"""NDIS's memory routines (ndis.h), as routines of the machine: declared by the methods
below, served by functions made for each machine (``serve_memory_routines_directly``).

The C routines return their address through an out parameter; here
``status, va = k.NdisAllocateMemoryWithTag(Length, Tag)`` returns both. A failure is
NDIS_STATUS_FAILURE and 0 and leaves nothing behind, so the next call may succeed.

NDIS versions: a driver registers with NdisMRegisterMiniportDriver (NDIS 6.x) or
NdisMInitializeWrapper + NdisMRegisterMiniport (NDIS 5.x); the version is recorded on the
driver object as ``ndis_version = (major, minor)``. When the running driver
(``k.current_driver``) registered as NDIS 6.x, the NDIS 5.x-only routines
(NdisAllocateMemory, NdisAllocateMemoryWithTag) raise ``ntpool.NdisVersionError``; the
NDIS 6.20 routine NdisFreeMemoryWithTagPriority raises it for earlier versions.

NDIS_MEMORY_CONTIGUOUS / NDIS_MEMORY_NONCACHED memory is physically contiguous frames
(below HighestAcceptableAddress) mapped at pool pages of the nonpaged pool's address
range, reserved for it; its tag ('NDam') is in the pool's big page table and the tracker,
so tools see it like any big allocation, but only NdisFreeMemory with the same Length and
MemoryFlags frees it. NONCACHED pages have the PTE's cache-disable and write-through bits.
"""

from typing import NamedTuple

from ..constants import (
    DISPATCH_LEVEL,
    MAX_SMALL_ALLOCATION,
    NDIS_MEMORY_CONTIGUOUS,
    NDIS_MEMORY_NONCACHED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PASSIVE_LEVEL,
    NdisStatus,
    PoolType,
)
from ..errors import NdisContractError, NdisVersionError
from ..pool.allocator import BLOCKS_FOR_BYTES, checked_address
from ..pool.descriptor import PAGE_SMALL
from ..pool.layout import BLOCK_SHIFT, HEADER_FIRST8, HEADER_SIZE, LOOKASIDE_MAX_BLOCKS, is_allocated
from ..tags import DEFAULT_TAG_NDIS
from .registry import routine, serve_directly

NONPAGED_POOL = int(PoolType.NonPagedPool)
_ADDRESS_END = 1 << 64
# The usual MemoryFlags (0) and HighestAcceptableAddress (-1, "anywhere"), tested by
# identity on the common calls: CPython keeps one object for each small int (-5..256), so
# ``MemoryFlags is ZERO`` holds for the int 0 alone (never for False or 0.0), a type and a
# value test in one. A 0 that were some other object would only take the checked way.
ZERO, MINUS_ONE = 0, -1
# The largest Length the usual allocations take inline. CPython 3.11 compares two ints of one
# 30-bit digit without a call (0xFFFFFFFF has two digits: a generic comparison, about 240
# instructions); a longer UINT, rare, meets _uint's full check, which passes it.
INLINE_LENGTH_MAX = (1 << 30) - 1
SUCCESS = NdisStatus.NDIS_STATUS_SUCCESS
FAILURE = NdisStatus.NDIS_STATUS_FAILURE
VALID_MEMORY_FLAGS = NDIS_MEMORY_CONTIGUOUS | NDIS_MEMORY_NONCACHED
LOOKASIDE_MAX_BYTES = (LOOKASIDE_MAX_BLOCKS << BLOCK_SHIFT) - HEADER_SIZE  # the free fast path's sizes
NDIS_HANDLE_BLOCK_SIZE = 0x100  # kernel memory behind each handle NDIS gives out


class NDIS_MINIPORT_DRIVER_CHARACTERISTICS(NamedTuple):
    """The parts of the NDIS 6.x characteristics NdisMRegisterMiniportDriver reads."""

    MajorNdisVersion: int
    MinorNdisVersion: int
    MajorDriverVersion: int = 0
    MinorDriverVersion: int = 0
    Flags: int = 0


class NDIS_MINIPORT_CHARACTERISTICS(NamedTuple):
    """The parts of the NDIS 5.x characteristics NdisMRegisterMiniport reads."""

    MajorNdisVersion: int
    MinorNdisVersion: int


def _uint(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (UINT), not {type(value).__name__}")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} {value} does not fit in a UINT (0..0xFFFFFFFF)")
    return value


def _memory_flags(value) -> int:
    flags = _uint("MemoryFlags", value)
    if flags & ~VALID_MEMORY_FLAGS:
        raise ValueError(f"MemoryFlags {flags:#x} has bits other than NDIS_MEMORY_CONTIGUOUS (1) "
                         f"and NDIS_MEMORY_NONCACHED (2)")
    return flags


def _highest_pfn(highest) -> int | None:
    """The last frame wholly at or below HighestAcceptableAddress (None: anywhere)."""
    if isinstance(highest, bool) or not isinstance(highest, int):
        raise TypeError(f"HighestAcceptableAddress must be an int (-1 for any address), "
                        f"not {type(highest).__name__}")
    if highest in (-1, 0xFFFFFFFFFFFFFFFF):
        return None
    if not 0 <= highest < 1 << 64:
        raise ValueError(f"HighestAcceptableAddress {highest:#x} is not a physical address or -1")
    return ((highest + 1) >> PAGE_SHIFT) - 1


def _version(characteristics, routine: str) -> tuple[int, int]:
    try:
        major, minor = characteristics.MajorNdisVersion, characteristics.MinorNdisVersion
    except AttributeError:
        raise TypeError(f"{routine}: the characteristics must have MajorNdisVersion and "
                        f"MinorNdisVersion") from None
    for name, value in (("MajorNdisVersion", major), ("MinorNdisVersion", minor)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
            raise ValueError(f"{routine}: {name} must be a UCHAR, got {value!r}")
    return major, minor


class NdisRoutines:
    # --- registration and versions --------------------------------------------------------

    def _new_ndis_handle(self, driver) -> int:
        handle = self.kernel_data.reserve(NDIS_HANDLE_BLOCK_SIZE)
        self.ndis_handles[handle] = driver
        return handle

    @staticmethod
    def _record_version(driver, version: tuple[int, int], routine: str) -> None:
        if driver is None:
            raise ValueError(f"{routine}: DriverObject must be the driver object, not None")
        try:
            driver.ndis_version = version
        except AttributeError:
            raise TypeError(f"{routine}: DriverObject must be a driver object that can record "
                            f"its NDIS version, not {type(driver).__name__}") from None

    @routine("NDIS_STATUS NdisMRegisterMiniportDriver(_In_ PDRIVER_OBJECT DriverObject, "
             "_In_ PUNICODE_STRING RegistryPath, _In_opt_ NDIS_HANDLE MiniportDriverContext, "
             "_In_ PNDIS_MINIPORT_DRIVER_CHARACTERISTICS MiniportDriverCharacteristics, "
             "_Out_ PNDIS_HANDLE NdisMiniportDriverHandle)", module="NDIS.SYS")
    def NdisMRegisterMiniportDriver(self, DriverObject, RegistryPath, MiniportDriverContext,
                                    MiniportDriverCharacteristics) -> tuple[int, int]:
        """Register an NDIS 6.x miniport; returns (status, NdisMiniportDriverHandle)."""
        major, minor = _version(MiniportDriverCharacteristics, "NdisMRegisterMiniportDriver")
        if major != 6:
            return NdisStatus.NDIS_STATUS_BAD_VERSION, 0
        self._record_version(DriverObject, (major, minor), "NdisMRegisterMiniportDriver")
        return SUCCESS, self._new_ndis_handle(DriverObject)

    @routine("VOID NdisMInitializeWrapper(_Out_ PNDIS_HANDLE NdisWrapperHandle, "
             "_In_ PVOID SystemSpecific1, _In_opt_ PVOID SystemSpecific2, "
             "_In_opt_ PVOID SystemSpecific3)", module="NDIS.SYS")
    def NdisMInitializeWrapper(self, SystemSpecific1, SystemSpecific2=None,
                               SystemSpecific3=None) -> int:
        """NDIS 5.x: the NdisWrapperHandle for a driver object (SystemSpecific1)."""
        if SystemSpecific1 is None:
            raise ValueError("NdisMInitializeWrapper: SystemSpecific1 must be the driver object")
        return self._new_ndis_handle(SystemSpecific1)

    @routine("NDIS_STATUS NdisMRegisterMiniport(_In_ NDIS_HANDLE NdisWrapperHandle, "
             "_In_ PNDIS_MINIPORT_CHARACTERISTICS MiniportCharacteristics, "
             "_In_ UINT CharacteristicsLength)", module="NDIS.SYS")
    def NdisMRegisterMiniport(self, NdisWrapperHandle, MiniportCharacteristics,
                              CharacteristicsLength=None) -> int:
        """Register an NDIS 5.x (or earlier) miniport; returns the status."""
        driver = self._ndis_driver(NdisWrapperHandle, "NdisWrapperHandle")
        major, minor = _version(MiniportCharacteristics, "NdisMRegisterMiniport")
        if major not in (3, 4, 5):
            return NdisStatus.NDIS_STATUS_BAD_VERSION
        self._record_version(driver, (major, minor), "NdisMRegisterMiniport")
        return SUCCESS

    def _ndis_driver(self, handle, name: str):
        if isinstance(handle, bool) or not isinstance(handle, int) or handle not in self.ndis_handles:
            raise ValueError(f"{name} {handle!r} is not a handle NDIS gave out "
                             f"(NdisMRegisterMiniportDriver or NdisMInitializeWrapper)")
        return self.ndis_handles[handle]

    def _caller_ndis_version(self):
        driver = self.current_driver
        # (None first: getattr's default on a missing attribute costs an exception inside)
        return None if driver is None else getattr(driver, "ndis_version", None)

    def _driver_name(self) -> str:
        return str(getattr(self.current_driver, "name", self.current_driver))

    def _only_ndis5(self, routine: str) -> None:
        version = self._caller_ndis_version()
        if version is not None and version[0] >= 6:
            raise NdisVersionError(
                f"{routine} is an NDIS 5.x routine; driver {self._driver_name()} registered "
                f"as NDIS {version[0]}.{version[1]} and must use "
                f"NdisAllocateMemoryWithTagPriority instead")

    def _at_least_ndis(self, routine: str, needed: tuple[int, int]) -> None:
        version = self._caller_ndis_version()
        if version is not None and tuple(version) < needed:
            raise NdisVersionError(
                f"{routine} needs NDIS {needed[0]}.{needed[1]} or later; driver "
                f"{self._driver_name()} registered as NDIS {version[0]}.{version[1]}")

    # --- allocation ------------------------------------------------------------------------
    #
    # The memory routines' bodies are the functions ``_memory_routines`` makes for each
    # machine, which it serves as its own (``serve_memory_routines_directly``). The methods
    # below declare the routines (their WDK prototypes, for the registry and the native
    # bridge) and call the machine's function: a call through the class does the same.

    @routine("NDIS_STATUS NdisAllocateMemoryWithTag(_Out_ PVOID *VirtualAddress, "
             "_In_ UINT Length, _In_ ULONG Tag)", module="NDIS.SYS")
    def NdisAllocateMemoryWithTag(self, Length, Tag) -> tuple[int, int]:
        """(NDIS_STATUS_SUCCESS, address) or (NDIS_STATUS_FAILURE, 0); nonpaged pool."""
        return self.__dict__["NdisAllocateMemoryWithTag"](Length, Tag)

    @routine("NDIS_STATUS NdisAllocateMemory(_Out_ PVOID *VirtualAddress, _In_ UINT Length, "
             "_In_ UINT MemoryFlags, _In_ NDIS_PHYSICAL_ADDRESS HighestAcceptableAddress)", module="NDIS.SYS")
    def NdisAllocateMemory(self, Length, MemoryFlags, HighestAcceptableAddress) -> tuple[int, int]:
        """Tag 'NDam'; MemoryFlags 0 is nonpaged pool, CONTIGUOUS / NONCACHED are physically
        contiguous pages below HighestAcceptableAddress (-1: anywhere)."""
        return self.__dict__["NdisAllocateMemory"](Length, MemoryFlags, HighestAcceptableAddress)

    @routine("PVOID NdisAllocateMemoryWithTagPriority(_In_ NDIS_HANDLE NdisHandle, "
             "_In_ UINT Length, _In_ ULONG Tag, _In_ EX_POOL_PRIORITY Priority)", module="NDIS.SYS")
    def NdisAllocateMemoryWithTagPriority(self, NdisHandle, Length, Tag, Priority) -> int:
        """Nonpaged pool, or 0 (NULL) when the pool is too low for ``Priority``."""
        return self.__dict__["NdisAllocateMemoryWithTagPriority"](NdisHandle, Length, Tag, Priority)

    def _require_passive(self, what: str) -> None:
        irql = self.KeGetCurrentIrql()
        if irql != PASSIVE_LEVEL:
            raise NdisContractError(f"{what} must run at PASSIVE_LEVEL, not IRQL {irql}")

    def _allocate_contiguous(self, length: int, flags: int, highest_pfn: int | None) -> int:
        va = self.pool.allocate_contiguous(length, DEFAULT_TAG_NDIS, highest_pfn,
                                           noncached=bool(flags & NDIS_MEMORY_NONCACHED))
        if va:
            self.ndis_blocks[va] = (length, flags)  # what NdisFreeMemory must be given again
        return va

    # --- free ------------------------------------------------------------------------------

    @routine("VOID NdisFreeMemory(_In_ PVOID VirtualAddress, _In_ UINT Length, "
             "_In_ UINT MemoryFlags)", module="NDIS.SYS")
    def NdisFreeMemory(self, VirtualAddress, Length, MemoryFlags) -> None:
        """Free NDIS memory; Length and MemoryFlags must be what allocated it (else
        NdisContractError, nothing freed)."""
        return self.__dict__["NdisFreeMemory"](VirtualAddress, Length, MemoryFlags)

    def _free_contiguous(self, va: int, length: int, flags: int, block) -> None:
        allocated_length, allocated_flags = block
        if flags != allocated_flags:
            raise NdisContractError(
                f"NdisFreeMemory of {va:#x} with MemoryFlags {flags:#x}: it was allocated with "
                f"MemoryFlags {allocated_flags:#x}")
        if length != allocated_length:
            raise NdisContractError(
                f"NdisFreeMemory of {va:#x} with Length {length}: it was allocated with Length "
                f"{allocated_length} (a sub-range cannot be freed)")
        irql = self.KeGetCurrentIrql()
        if flags & NDIS_MEMORY_CONTIGUOUS:
            self._require_passive("NdisFreeMemory of contiguous memory")
        elif irql >= DISPATCH_LEVEL:
            raise NdisContractError(f"NdisFreeMemory of noncached memory must run below "
                                    f"DISPATCH_LEVEL, not IRQL {irql}")
        del self.ndis_blocks[va]
        self.pool.free_contiguous(va)

    def _check_pool_length(self, va: int, length: int) -> None:
        """Length must be the one allocated: Windows keeps no copy, so compare what the
        pool recorded (the chunk's BlockSize, or a big allocation's page count)."""
        pool = self.nonpaged_pool
        if not pool.contains(va):
            return  # not nonpaged pool: the free itself diagnoses it
        kind = pool.page_kind_of(va)
        if kind == PAGE_SMALL and va & 0xFFF and not va & 0xF:
            _, _, blocks, header_type, _ = HEADER_FIRST8.unpack_from(
                self.pool.mem, pool._pa(va - HEADER_SIZE))  # one unpack, no accessor object
            if not is_allocated(header_type):
                return  # a double free: the free diagnoses it
            held = (blocks << BLOCK_SHIFT) - HEADER_SIZE
            # A zero Length was allocated as one byte, as ExAllocatePoolWithTag does. A
            # BlockSize a stray write changed says nothing of the Length: the free that
            # follows finds the damage, as it would on Windows.
            if (not length <= MAX_SMALL_ALLOCATION or self.pool.blocks_for(max(length, 1)) != blocks) \
                    and self.pool.block_size_agrees(pool, va, blocks):
                raise NdisContractError(
                    f"NdisFreeMemory of {va:#x} with Length {length}: the allocation holds "
                    f"{held} bytes ({blocks} pool blocks), so it was not allocated with that "
                    f"Length")
        elif not va & 0xFFF and va in pool.big_pages:  # (segment heap: may be a VS chunk)
            pages = pool.big_pages[va][1]
            if length <= MAX_SMALL_ALLOCATION or (length + PAGE_SIZE - 1) >> PAGE_SHIFT != pages:
                raise NdisContractError(
                    f"NdisFreeMemory of {va:#x} with Length {length}: the allocation is {pages} "
                    f"pages, so it was not allocated with that Length")

    @routine("VOID NdisFreeMemoryWithTag(_In_ PVOID VirtualAddress, _In_ ULONG Tag)", module="NDIS.SYS")
    def NdisFreeMemoryWithTag(self, VirtualAddress, Tag) -> None:
        """Free memory from NdisAllocateMemoryWithTag; Tag must match (else 0xC2/0x0A)."""
        return self.__dict__["NdisFreeMemoryWithTag"](VirtualAddress, Tag)

    @routine("VOID NdisFreeMemoryWithTagPriority(_In_ NDIS_HANDLE NdisHandle, "
             "_In_ PVOID VirtualAddress, _In_ ULONG Tag)", module="NDIS.SYS")
    def NdisFreeMemoryWithTagPriority(self, NdisHandle, VirtualAddress, Tag) -> None:
        """Free memory from NdisAllocateMemoryWithTagPriority; Tag must match."""
        return self.__dict__["NdisFreeMemoryWithTagPriority"](NdisHandle, VirtualAddress, Tag)

    # --- memory helpers (macros over the Rtl routines) -------------------------------------

    @routine("VOID NdisZeroMemory(_In_ PVOID Destination, _In_ UINT Length)", module="NDIS.SYS")
    def NdisZeroMemory(self, Destination, Length) -> None:
        self.RtlZeroMemory(Destination, _uint("Length", Length))

    @routine("VOID NdisMoveMemory(_In_ PVOID Destination, _In_ PVOID Source, _In_ UINT Length)", module="NDIS.SYS")
    def NdisMoveMemory(self, Destination, Source, Length) -> None:
        self.RtlMoveMemory(Destination, Source, _uint("Length", Length))

    @routine("VOID NdisFillMemory(_In_ PVOID Destination, _In_ UINT Length, _In_ UCHAR Fill)", module="NDIS.SYS")
    def NdisFillMemory(self, Destination, Length, Fill) -> None:
        self.RtlFillMemory(Destination, _uint("Length", Length), Fill)


# --- the memory routines, made for each machine ----------------------------------------------

NDIS_6_20 = (6, 20)  # NdisFreeMemoryWithTagPriority's version


def serve_memory_routines_directly(kernel) -> None:
    """Make ``kernel``'s NDIS memory routines (``_memory_routines``) and serve them as its
    own (``registry.serve_directly``), as ExAllocatePoolWithTag is served. A driver calls
    them more than any other NDIS routine; as functions made for the machine, what they
    use on every call is a cell of their closure, where a method loads it from ``self`` (the
    allocator's fast path: two attribute loads), and the priority test is made inline, where
    a method calls ``refuses_for_priority`` (issue 18: the NDIS 6 pair 1.42-1.48x the Ex pair
    before, 1.23-1.26x after, in CPU time). Needs the allocator, ``ndis_handles`` and
    ``ndis_blocks``."""
    for name, function in _memory_routines(kernel).items():
        serve_directly(kernel, getattr(NdisRoutines, name), function)


def _memory_routines(kernel) -> dict:
    """NdisAllocateMemoryWithTag, NdisAllocateMemory, NdisAllocateMemoryWithTagPriority and
    their frees, as functions of ``kernel``'s (by name).

    What they hold does not change in a machine's life: the allocator's fast paths (made once
    by the allocator; a change of IRQL, of the Verifier or of a layer changes their tables in
    place, so the routines follow it), the dicts of NDIS handles and contiguous blocks, the
    nonpaged pool and its priority table (a pool's size is fixed). What the running driver
    is, they read on each call (``kernel.current_driver``). Each calls the fast path itself,
    so the driver's frame is the one the fast path looks at for the call site; the rare
    cases and the diagnoses call the machine's methods."""
    allocator = kernel.pool
    allocate, free = allocator.allocate, allocator.free
    refuses_for_priority = allocator.refuses_for_priority
    ndis_handles, ndis_blocks = kernel.ndis_handles, kernel.ndis_blocks
    nonpaged = allocator.pool_for(NONPAGED_POOL)  # the pool NDIS memory comes from
    most_pages = allocator.priority_table(nonpaged)

    def NdisAllocateMemoryWithTag(Length, Tag):
        # A running driver registered as NDIS 6.x may not call it (the kernel's own calls
        # are no driver's); ``_only_ndis5`` says why.
        if kernel.current_driver is not None and \
                (version := getattr(kernel.current_driver, "ndis_version", None)) is not None and \
                version[0] >= 6:
            kernel._only_ndis5("NdisAllocateMemoryWithTag")  # raises
        if type(Length) is not int or not 0 <= Length <= INLINE_LENGTH_MAX:  # the common case inline
            Length = _uint("Length", Length)
        va = allocate(NONPAGED_POOL, Length, Tag)
        return (SUCCESS, va) if va else (FAILURE, 0)

    def NdisAllocateMemory(Length, MemoryFlags, HighestAcceptableAddress):
        if kernel.current_driver is not None and \
                (version := getattr(kernel.current_driver, "ndis_version", None)) is not None and \
                version[0] >= 6:
            kernel._only_ndis5("NdisAllocateMemory")  # raises (as NdisAllocateMemoryWithTag)
        # The usual call inline: nonpaged pool (MemoryFlags the int 0) anywhere
        # (HighestAcceptableAddress the int -1: ZERO and MINUS_ONE say why by identity), the
        # Length a UINT (up to INLINE_LENGTH_MAX); anything else is checked below.
        if MemoryFlags is ZERO and HighestAcceptableAddress is MINUS_ONE and type(Length) is int \
                and 0 <= Length <= INLINE_LENGTH_MAX:
            va = allocate(NONPAGED_POOL, Length, DEFAULT_TAG_NDIS)
            return (SUCCESS, va) if va else (FAILURE, 0)
        length = _uint("Length", Length)
        flags = _memory_flags(MemoryFlags)
        highest_pfn = _highest_pfn(HighestAcceptableAddress)
        if not flags:
            va = allocate(NONPAGED_POOL, length, DEFAULT_TAG_NDIS)
            return (SUCCESS, va) if va else (FAILURE, 0)
        kernel._require_passive("NdisAllocateMemory of contiguous or noncached memory")
        va = kernel._allocate_contiguous(length, flags, highest_pfn)
        return (SUCCESS, va) if va else (FAILURE, 0)

    # The last handle found among those NDIS gave out, an argument tested by identity first:
    # a driver passes the object its registration returned, and a handle, once given out,
    # stays valid for the machine's life (ntpool models no deregistration), so the type test
    # and the dict lookup (a hash of a 64-bit int) are made once per handle object. (At
    # first an object no caller holds.)
    known_handle = object()

    def NdisAllocateMemoryWithTagPriority(NdisHandle, Length, Tag, Priority):
        nonlocal known_handle
        if NdisHandle is not known_handle:
            if type(NdisHandle) is not int or NdisHandle not in ndis_handles:
                kernel._ndis_driver(NdisHandle, "NdisHandle")  # raises: no handle NDIS gave out
            known_handle = NdisHandle
        # The usual request inline, ExAllocatePoolWithTagPriority's step before the
        # allocation made here (a call less): a small Length (a UINT that counts no pages:
        # only a big allocation's are counted) and a Priority whose share of the nonpaged
        # pool's pages is not all in use (``resources_available``'s sum, by the table).
        # The table holds only the valid EX_POOL_PRIORITY values (the type test keeps a
        # bool or a float from matching one).
        if type(Length) is int and 0 <= Length <= MAX_SMALL_ALLOCATION and type(Priority) is int:
            try:
                tried = nonpaged.pages_in_use <= most_pages[Priority]
            except KeyError:  # no EX_POOL_PRIORITY: ``refuses_for_priority`` says so
                tried = False
            if tried:
                return allocate(NONPAGED_POOL, Length, Tag)
        # Anything else as ExAllocatePoolWithTagPriority decides it: NULL when the pool is
        # too low for the priority, after the bug check of a caller's error.
        if type(Length) is not int or not 0 <= Length <= 0xFFFFFFFF:
            Length = _uint("Length", Length)
        if refuses_for_priority(NONPAGED_POOL, Length, Tag, Priority):
            return 0
        return allocate(NONPAGED_POOL, Length, Tag)

    def NdisFreeMemory(VirtualAddress, Length, MemoryFlags):
        # The common call first, before any other check: MemoryFlags the int 0 (ZERO says
        # why by identity) and a Length a lookaside size. The allocator's free fast path
        # frees a small chunk of exactly that Length only when every check it makes passes,
        # so nothing else needs checking (a contiguous block is page-aligned: never such a
        # chunk), whoever calls: the kernel and a driver not registered as NDIS 6 must give
        # the allocation's Length, and a driver registered as NDIS 6 passes one that is not
        # compared, whose chunk the diagnosis below frees anyway. Anything else is
        # diagnosed below.
        if MemoryFlags is ZERO and type(Length) is int and 0 < Length <= LOOKASIDE_MAX_BYTES:
            if free(VirtualAddress, None, BLOCKS_FOR_BYTES[Length]):
                return
        # The argument checks of the common call (ints in range, MemoryFlags 0) inline.
        va = VirtualAddress if type(VirtualAddress) is int and 0 <= VirtualAddress < _ADDRESS_END \
            else checked_address(VirtualAddress, "VirtualAddress")
        length = Length if type(Length) is int and 0 <= Length <= 0xFFFFFFFF else _uint("Length", Length)
        flags = 0 if MemoryFlags == 0 and type(MemoryFlags) is int else _memory_flags(MemoryFlags)
        block = ndis_blocks.get(va)
        if block is not None:
            kernel._free_contiguous(va, length, flags, block)
            return
        if flags:
            raise NdisContractError(
                f"NdisFreeMemory of {va:#x} with MemoryFlags {flags:#x}: that memory was "
                f"allocated without NDIS_MEMORY_CONTIGUOUS/NONCACHED (MemoryFlags must be 0)")
        if kernel.current_driver is None or (kernel._caller_ndis_version() or (5, 0))[0] < 6:
            # Length must be the allocation's: a small one's BlockSize is what the allocator's
            # free fast path reads anyway, so it compares it there, freeing only on a match;
            # anything else (a mismatch, a big allocation, any error) is diagnosed here first.
            if 0 < length <= LOOKASIDE_MAX_BYTES and free(va, None, (length + 31) >> 4):
                return
            kernel._check_pool_length(va, length)
        free(va, None)

    def NdisFreeMemoryWithTag(VirtualAddress, Tag):
        # The free first, the address checked only when it raises (the common call pays
        # nothing for the check): an address that is no 64-bit int fails the free's first
        # step (its generic path's ``checked_address``), before anything is done, as an
        # error naming it P. It is named here as this routine names it; any other error
        # (the tag's) is the free's own.
        try:
            free(VirtualAddress, Tag)
            return
        except (TypeError, ValueError) as error:
            failure = error
        checked_address(VirtualAddress, "VirtualAddress")  # raises for no address (outside the handler)
        raise failure

    def NdisFreeMemoryWithTagPriority(NdisHandle, VirtualAddress, Tag):
        # NDIS 6.20's: a running driver registered as an earlier version may not call it.
        if kernel.current_driver is not None and \
                (version := getattr(kernel.current_driver, "ndis_version", None)) is not None and \
                tuple(version) < NDIS_6_20:
            kernel._at_least_ndis("NdisFreeMemoryWithTagPriority", NDIS_6_20)  # raises
        nonlocal known_handle
        if NdisHandle is not known_handle:  # (as NdisAllocateMemoryWithTagPriority tests it)
            if type(NdisHandle) is not int or NdisHandle not in ndis_handles:
                kernel._ndis_driver(NdisHandle, "NdisHandle")  # raises
            known_handle = NdisHandle
        try:  # the free first, the address checked when it raises (as NdisFreeMemoryWithTag)
            free(VirtualAddress, Tag)
            return
        except (TypeError, ValueError) as error:
            failure = error
        checked_address(VirtualAddress, "VirtualAddress")  # raises for no address
        raise failure

    return {function.__name__: function for function in (
        NdisAllocateMemoryWithTag, NdisAllocateMemory, NdisAllocateMemoryWithTagPriority,
        NdisFreeMemory, NdisFreeMemoryWithTag, NdisFreeMemoryWithTagPriority)}
