"""WDK constants: POOL_TYPE, pool flags, priorities, IRQL, status codes, bug check codes.

Values follow wdm.h / ntddk.h / ndis.h and the bug check reference; see
shared/reference/pool-internals.md sections 2, 3 and 7.
"""

from enum import IntEnum, IntFlag

PAGE_SIZE = 0x1000
PAGE_SHIFT = 12
MAX_SMALL_ALLOCATION = 0xFE0  # PAGE_SIZE - 2 pool blocks; larger requests are "big"

# The start of system address space on x64 (MmSystemRangeStart).
SYSTEM_RANGE_START = 0xFFFF800000000000

# ntoskrnl's image: the first pages of the kernel's data region (KDBG's KernBase). Its
# globals sit at fixed offsets in it, the symbol addresses of the symbol file analysers load
# (ntpool.dump.image lays out the rest at dump time); the core keeps PsLoadedModuleList there.
KERNEL_IMAGE_BYTES = 0x3000
KERNEL_IMAGE_PS_LOADED_MODULE_LIST = 0x2450  # offset of the LIST_ENTRY head in the image
# The executive's lists of drivers' lookaside lists (WRK lookasid.c) and their spin locks.
KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LIST_HEAD = 0x24C0
KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LOCK = 0x24D0
KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LIST_HEAD = 0x24E0
KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LOCK = 0x24F0
# ExSystemLookasideListHead, the list of the kernel's own GENERAL_LOOKASIDEs (WRK lookasid.c),
# and the I/O manager's system-wide lists (IopSmallIrpLookasideList, IopMediumIrpLookasideList,
# IopLargeIrpLookasideList, IopMdlLookasideList: 0x80 bytes each, cache aligned) after it.
KERNEL_IMAGE_EX_SYSTEM_LOOKASIDE_LIST_HEAD = 0x2820
KERNEL_IMAGE_IOP_LOOKASIDE_LISTS = 0x2840


class PoolType(IntEnum):
    """POOL_TYPE as declared in wdm.h."""

    NonPagedPool = 0
    NonPagedPoolExecute = 0
    PagedPool = 1
    NonPagedPoolMustSucceed = 2
    DontUseThisType = 3
    NonPagedPoolCacheAligned = 4
    PagedPoolCacheAligned = 5
    NonPagedPoolCacheAlignedMustS = 6
    MaxPoolType = 7
    NonPagedPoolBase = 0
    NonPagedPoolBaseMustSucceed = 2
    NonPagedPoolBaseCacheAligned = 4
    NonPagedPoolBaseCacheAlignedMustS = 6
    NonPagedPoolSession = 32
    PagedPoolSession = 33
    NonPagedPoolMustSucceedSession = 34
    DontUseThisTypeSession = 35
    NonPagedPoolCacheAlignedSession = 36
    PagedPoolCacheAlignedSession = 37
    NonPagedPoolCacheAlignedMustSSession = 38
    NonPagedPoolNx = 512
    NonPagedPoolNxCacheAligned = 516
    NonPagedPoolSessionNx = 544


# Bits of a POOL_TYPE value.
BASE_POOL_TYPE_MASK = 1
MUST_SUCCEED_POOL_TYPE_MASK = 2
CACHE_ALIGNED_POOL_TYPE_MASK = 4
QUOTA_POOL_MASK = 8
SESSION_POOL_MASK = 32

# Modifiers that may be OR-ed into a POOL_TYPE argument.
POOL_QUOTA_FAIL_INSTEAD_OF_RAISE = 8
POOL_RAISE_IF_ALLOCATION_FAILURE = 16
POOL_COLD_ALLOCATION = 256
POOL_NX_ALLOCATION = 512
POOL_ZERO_ALLOCATION = 1024


class PoolFlags(IntFlag):
    """POOL_FLAGS for ExAllocatePool2/3 (64-bit: low half required, high half optional)."""

    POOL_FLAG_USE_QUOTA = 0x1
    POOL_FLAG_UNINITIALIZED = 0x2
    POOL_FLAG_SESSION = 0x4
    POOL_FLAG_CACHE_ALIGNED = 0x8
    POOL_FLAG_RAISE_ON_FAILURE = 0x20
    POOL_FLAG_NON_PAGED = 0x40
    POOL_FLAG_NON_PAGED_EXECUTE = 0x80
    POOL_FLAG_PAGED = 0x100
    POOL_FLAG_SPECIAL_POOL = 0x1_0000_0000


POOL_FLAG_REQUIRED_MASK = 0x0000_0000_FFFF_FFFF
POOL_FLAG_OPTIONAL_MASK = 0xFFFF_FFFF_0000_0000


class PoolPriority(IntEnum):
    """EX_POOL_PRIORITY."""

    LowPoolPriority = 0
    LowPoolPrioritySpecialPoolOverrun = 8
    LowPoolPrioritySpecialPoolUnderrun = 9
    NormalPoolPriority = 16
    NormalPoolPrioritySpecialPoolOverrun = 24
    NormalPoolPrioritySpecialPoolUnderrun = 25
    HighPoolPriority = 32
    HighPoolPrioritySpecialPoolOverrun = 40
    HighPoolPrioritySpecialPoolUnderrun = 41


class Irql(IntEnum):
    """x64 interrupt request levels."""

    PASSIVE_LEVEL = 0
    LOW_LEVEL = 0
    APC_LEVEL = 1
    DISPATCH_LEVEL = 2
    CMCI_LEVEL = 5
    CLOCK_LEVEL = 13
    IPI_LEVEL = 14
    DRS_LEVEL = 14
    POWER_LEVEL = 14
    PROFILE_LEVEL = 15
    HIGH_LEVEL = 15


PASSIVE_LEVEL = Irql.PASSIVE_LEVEL
APC_LEVEL = Irql.APC_LEVEL
DISPATCH_LEVEL = Irql.DISPATCH_LEVEL
HIGH_LEVEL = Irql.HIGH_LEVEL


class NtStatus(IntEnum):
    """NTSTATUS values the pool routines return or raise."""

    STATUS_SUCCESS = 0x00000000
    STATUS_UNSUCCESSFUL = 0xC0000001
    STATUS_NO_MEMORY = 0xC0000017
    STATUS_QUOTA_EXCEEDED = 0xC0000044
    STATUS_INSUFFICIENT_RESOURCES = 0xC000009A
    STATUS_INVALID_PARAMETER = 0xC000000D
    STATUS_INVALID_PARAMETER_5 = 0xC00000F3
    STATUS_ACCESS_VIOLATION = 0xC0000005


class NdisStatus(IntEnum):
    """NDIS_STATUS values (ndis.h); they share NTSTATUS's numbering."""

    NDIS_STATUS_SUCCESS = 0x00000000
    NDIS_STATUS_FAILURE = 0xC0000001
    NDIS_STATUS_RESOURCES = 0xC000009A
    NDIS_STATUS_BAD_VERSION = 0xC0010004
    NDIS_STATUS_BAD_CHARACTERISTICS = 0xC0010005


# NdisAllocateMemory / NdisFreeMemory MemoryFlags (ndis.h).
NDIS_MEMORY_CONTIGUOUS = 0x00000001
NDIS_MEMORY_NONCACHED = 0x00000002


class PoolExtendedParameterType(IntEnum):
    """POOL_EXTENDED_PARAMETER_TYPE (ExAllocatePool3)."""

    PoolExtendedParameterInvalidType = 0
    PoolExtendedParameterPriority = 1
    PoolExtendedParameterSecurePool = 2
    PoolExtendedParameterNumaNode = 3
    PoolExtendedParameterMax = 4


class BugCheckCode(IntEnum):
    """Bug check codes (bugcodes.h) the pool and Driver Verifier raise."""

    IRQL_NOT_GREATER_OR_EQUAL = 0x09
    IRQL_NOT_LESS_OR_EQUAL = 0x0A
    MAXIMUM_WAIT_OBJECTS_EXCEEDED = 0x0C
    THREAD_NOT_MUTEX_OWNER = 0x11
    REFERENCE_BY_POINTER = 0x18
    KMODE_EXCEPTION_NOT_HANDLED = 0x1E
    SPIN_LOCK_ALREADY_OWNED = 0x0F
    SPIN_LOCK_NOT_OWNED = 0x10
    BAD_POOL_HEADER = 0x19
    SYSTEM_SERVICE_EXCEPTION = 0x3B
    SYSTEM_THREAD_EXCEPTION_NOT_HANDLED = 0x7E
    UNEXPECTED_KERNEL_MODE_TRAP = 0x7F
    ATTEMPTED_WRITE_TO_READONLY_MEMORY = 0xBE
    ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY = 0xFC
    MUST_SUCCEED_POOL_EMPTY = 0x41
    MULTIPLE_IRP_COMPLETE_REQUESTS = 0x44
    NO_PAGES_AVAILABLE = 0x4D
    PFN_LIST_CORRUPT = 0x4E
    PAGE_FAULT_IN_NONPAGED_AREA = 0x50
    SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION = 0xC1
    BAD_POOL_CALLER = 0xC2
    DRIVER_VERIFIER_DETECTED_VIOLATION = 0xC4
    TIMER_OR_DPC_INVALID = 0xC7
    DRIVER_CORRUPTED_EXPOOL = 0xC5
    DRIVER_CAUGHT_MODIFYING_FREED_POOL = 0xC6
    PAGE_FAULT_IN_FREED_SPECIAL_POOL = 0xCC
    PAGE_FAULT_BEYOND_END_OF_ALLOCATION = 0xCD
    DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS = 0xCE
    DRIVER_IRQL_NOT_LESS_OR_EQUAL = 0xD1
    DRIVER_PORTION_MUST_BE_NONPAGED = 0xD3
    SYSTEM_SCAN_AT_RAISED_IRQL_CAUGHT_IMPROPER_DRIVER_UNLOAD = 0xD4
    DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL = 0xD5
    DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION = 0xD6
    SYSTEM_PTE_MISUSE = 0xDA
    MANUALLY_INITIATED_CRASH = 0xE2
    RESOURCE_NOT_OWNED = 0xE3
    WORKER_INVALID = 0xE4
    DPC_WATCHDOG_VIOLATION = 0x133
    KERNEL_SECURITY_CHECK_FAILURE = 0x139
    KERNEL_MODE_HEAP_CORRUPTION = 0x13A


# BAD_POOL_CALLER (0xC2) parameter 1 subcodes.
class BadPoolCaller(IntEnum):
    ZERO_BYTES = 0x00
    ALREADY_FREED_HEADER = 0x06
    DOUBLE_FREE = 0x07
    ALLOCATE_AT_BAD_IRQL = 0x08
    FREE_AT_BAD_IRQL = 0x09
    WRONG_TAG_ON_FREE = 0x0A
    FREE_USER_ADDRESS = 0x40
    FREE_NONPAGED_NOT_ALLOCATED = 0x41
    FREE_NEVER_IN_POOL = 0x42
    FREE_NONPAGED_NOT_ALLOCATED_2 = 0x44
    FREE_INVALID_POOL_ADDRESS = 0x46
    FREE_PAGED_NOT_ALLOCATED = 0x50
    FREE_INVALID_CONTIGUOUS = 0x60  # MmFreeContiguousMemory of an address it did not give
    FREE_BAD_ADDRESS = 0x99
    MUST_SUCCEED = 0x9A
    TAG_ZERO = 0x9B
    TAG_BIG = 0x9C
    TAG_NO_ALNUM = 0x9D
    FREE_PAGED_MIDDLE_OF_ALLOCATION = 0x41286


# BAD_POOL_HEADER (0x19) parameter 1 subcodes.
class BadPoolHeader(IntEnum):
    SPECIAL_PATTERN = 0x2
    LIST_CORRUPT = 0x3
    NEIGHBOURS_DISAGREE = 0x5
    PREVIOUS_SIZE_TOO_LARGE = 0x6
    BAD_SIZE = 0x7
    BLOCK_SIZE_ZERO = 0x8
    BLOCK_CROSSES_PAGE = 0x9
    NOT_FOUND_IN_PAGE = 0xA
    NEXT_PREVIOUS_SIZE_MISMATCH = 0x20
    DATA_AFTER_CHUNK = 0x21
    NO_TRACKING_ENTRY = 0x22


# SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION (0xC1) parameter 4 subcodes.
class SpecialPoolCorruption(IntEnum):
    FREE_NOT_ALLOCATED = 0x20  # a free of special pool that is not allocated
    FREE_BAD_ADDRESS = 0x21
    FREE_BAD_ADDRESS_SIZE = 0x22
    NEARBY_BYTES_CORRUPTED = 0x23  # bytes in the page near the allocation were overwritten
    BYTES_AFTER_END_CORRUPTED = 0x24  # bytes after the allocation's end were overwritten


# DRIVER_VERIFIER_DETECTED_VIOLATION (0xC4) parameter 1 values of the pool checks.
class VerifierStop(IntEnum):
    ZERO_BYTES = 0x00
    ALLOCATE_PAGED_AT_BAD_IRQL = 0x01
    ALLOCATE_NONPAGED_AT_BAD_IRQL = 0x02
    FREE_BAD_ADDRESS = 0x10
    FREE_PAGED_AT_BAD_IRQL = 0x11
    FREE_NONPAGED_AT_BAD_IRQL = 0x12
    DOUBLE_FREE = 0x13
    UNLOAD_WITH_ALLOCATIONS = 0x62
    MDL_PAGE_NOT_MEMORY = 0x89  # an MDL (not MDL_IO_SPACE) names a frame that is no RAM


# PFN_LIST_CORRUPT (0x4E) parameter 1 subcodes.
class PfnListCorrupt(IntEnum):
    UNLOCK_PAGES_NOT_LOCKED = 0x07  # a page's lock count would go below zero


# SYSTEM_PTE_MISUSE (0xDA) parameter 1 subcodes: a release of system PTE mappings (Microsoft's
# "Bug Check 0xDA" table).
class SystemPteMisuse(IntEnum):
    RESERVE_ZERO = 0x100  # (mappings requested, tag, caller's caller): MmAllocateMappingAddress(0)
    FREE_NOT_OWNER = 0x101  # (first address, caller's tag, owner's tag)
    FREE_EMPTY = 0x102  # (first address, caller's tag, reserved): no reservation there
    FREE_STILL_MAPPED = 0x103  # (mapping, caller's tag, mappings): unmap before freeing
    MAP_NOT_OWNER = 0x104  # (first address, caller's tag, owner's tag)
    MAP_INVALID = 0x105  # (first address, caller's tag, reserved): no reservation there
    MAP_NOT_EMPTY = 0x107  # (first address, the mapping there, last address): mapped already
    UNMAP_NOT_OWNER = 0x108  # (first address, caller's tag, owner's tag)
    UNMAP_EMPTY = 0x109  # (first address, caller's tag, reserved): no reservation there
    UNMAP_TOO_MANY = 0x10A  # (first address, mappings reserved, mappings to unmap)
    UNMAP_NOT_MAPPED = 0x10B  # (first address, caller's tag, mappings to unmap)
    UNMAP_NOT_ALL = 0x10C  # (first address, caller's tag, mappings to unmap)
    RELEASE_NOT_PERMITTED = 0x301  # (address, 0, 0): a mapping the caller may not release
    RELEASE_NOT_MAPPED = 0x302  # (address, reserved, reserved): a system address not mapped
    RELEASE_MIDDLE = 0x304  # (first address, mappings, 0): begins inside another allocation
    RELEASE_WRONG_COUNT = 0x305  # (first address, mappings released, mappings it has)


# Each bug check code's table of parameter-1 (or -4) subcodes, for tools that explain them.
SUBCODES = {
    BugCheckCode.BAD_POOL_HEADER: BadPoolHeader,
    BugCheckCode.BAD_POOL_CALLER: BadPoolCaller,
    BugCheckCode.SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION: SpecialPoolCorruption,
    BugCheckCode.DRIVER_VERIFIER_DETECTED_VIOLATION: VerifierStop,
    BugCheckCode.PFN_LIST_CORRUPT: PfnListCorrupt,
    BugCheckCode.SYSTEM_PTE_MISUSE: SystemPteMisuse,
}
