"""The on-disk and in-memory layouts a Windows x64 kernel crash dump is made of.

Offsets follow the DUMP_HEADER64 layout every reader (WinDbg, kdmp-parser, volatility3)
agrees on (reference sheet section 9), KDDEBUGGER_DATA64 as wdbgexts.h declares it, and
the hash functions of the Windows 7 x64 pool tables (their entries are ntpool.pool.layout's). ntpool's own
debugger data block (``NTPL``) carries what Windows finds through symbols instead.
"""

import struct

from ..constants import PAGE_SIZE

# --- DUMP_HEADER64 ------------------------------------------------------------------------

HEADER_SIZE = 0x2000
SIGNATURE = b"PAGE"
VALID_DUMP64 = b"DU64"
FILL = b"PAGE"  # unused header space is filled with it, as Windows does
MAJOR_VERSION_FREE = 0xF  # 0xF free build, 0xC checked build
MINOR_VERSION = 7601  # Windows 7 SP1's build number
MACHINE_AMD64 = 0x8664

DUMP_TYPE_FULL = 1
DUMP_TYPE_BITMAP = 5  # "kernel" dumps here: only the pages in use, listed by a bitmap

OFF_MAJOR = 0x008
OFF_MINOR = 0x00C
OFF_DIRECTORY_TABLE_BASE = 0x010
OFF_PFN_DATABASE = 0x018
OFF_PS_LOADED_MODULE_LIST = 0x020
OFF_PS_ACTIVE_PROCESS_HEAD = 0x028
OFF_MACHINE_IMAGE_TYPE = 0x030
OFF_NUMBER_PROCESSORS = 0x034
OFF_BUGCHECK_CODE = 0x038
OFF_BUGCHECK_PARAMETERS = 0x040
OFF_KD_DEBUGGER_DATA_BLOCK = 0x080
OFF_PHYSICAL_MEMORY_BLOCK = 0x088  # NumberOfRuns u32, pad, NumberOfPages u64, Run[]
OFF_RUNS = 0x098
OFF_CONTEXT_RECORD = 0x348
OFF_EXCEPTION_RECORD = 0xF00
OFF_DUMP_TYPE = 0xF98
OFF_REQUIRED_DUMP_SPACE = 0xFA0
OFF_SYSTEM_TIME = 0xFA8
OFF_COMMENT = 0xFB0
COMMENT_SIZE = 128
OFF_SYSTEM_UP_TIME = 0x1030
MAX_RUNS = (OFF_CONTEXT_RECORD - OFF_RUNS) // 16  # what fits before the context record

PHYSICAL_MEMORY_DESCRIPTOR = struct.Struct("<I4xQ")
PHYSICAL_MEMORY_RUN = struct.Struct("<QQ")

# CONTEXT (x64): kdmp-parser requires MxCsr to equal FltSave.MxCsr.
CONTEXT_SIZE = 0x4D0
CONTEXT_FLAGS_FULL = 0x10000B  # CONTEXT_AMD64 | CONTROL | INTEGER | FLOATING_POINT
CONTEXT_OFF_FLAGS = 0x30
CONTEXT_OFF_MXCSR = 0x34
CONTEXT_OFF_SEG_CS = 0x38
CONTEXT_OFF_SEG_SS = 0x42
CONTEXT_OFF_RSP = 0x98
CONTEXT_OFF_RIP = 0xF8
CONTEXT_OFF_FLTSAVE_MXCSR = 0x118
MXCSR_DEFAULT = 0x1F80
KGDT64_R0_CODE = 0x10
KGDT64_R0_DATA = 0x18

# --- the bitmap ("kernel") dump's summary header at 0x2000 ---------------------------------

SUMMARY_SIGNATURE = b"SDMP"
SUMMARY_SIGNATURE_FULL = b"FDMP"
SUMMARY_VALID_DUMP = b"DUMP"
SUMMARY_OFF_FIRST_PAGE = 0x20  # file offset of the first page (volatility: HeaderSize)
SUMMARY_OFF_PRESENT_PAGES = 0x28
SUMMARY_OFF_BITMAP_BITS = 0x30
SUMMARY_OFF_BITMAP = 0x38

# --- KDDEBUGGER_DATA64 (wdbgexts.h), the block KdDebuggerDataBlock points at ---------------

KDDEBUGGER_DATA64_SIZE = 0x340
DEBUG_DATA_HEADER = struct.Struct("<QQ4sI")  # List.Flink, List.Blink, OwnerTag, Size
KDBG_OWNER_TAG = b"KDBG"

KDBG_KERN_BASE = 0x18
KDBG_PS_LOADED_MODULE_LIST = 0x48
KDBG_PS_ACTIVE_PROCESS_HEAD = 0x50
KDBG_MM_PFN_DATABASE = 0xC0
KDBG_MM_LOWEST_PHYSICAL_PAGE = 0xE8
KDBG_MM_HIGHEST_PHYSICAL_PAGE = 0xF0
KDBG_MM_NUMBER_OF_PHYSICAL_PAGES = 0xF8
KDBG_MM_MAXIMUM_NONPAGED_POOL_IN_BYTES = 0x100
KDBG_MM_NONPAGED_POOL_START = 0x110
KDBG_MM_NONPAGED_POOL_END = 0x118
KDBG_MM_PAGED_POOL_START = 0x120
KDBG_MM_PAGED_POOL_END = 0x128
KDBG_MM_PAGE_SIZE = 0x138
KDBG_MM_SIZE_OF_PAGED_POOL_IN_BYTES = 0x140
KDBG_POOL_TRACK_TABLE = 0x1B8
KDBG_NONPAGED_POOL_DESCRIPTOR = 0x1C0
KDBG_MM_HIGHEST_USER_ADDRESS = 0x1C8
KDBG_MM_SYSTEM_RANGE_START = 0x1D0
KDBG_MM_USER_PROBE_ADDRESS = 0x1D8
KDBG_NT_BUILD_LAB = 0x208  # address of the NtBuildLab string
KDBG_CM_NT_CSD_VERSION = 0x268  # address of the CmNtCSDVersion ULONG

# --- ntpool's own debugger data block (follows KDBG, linked from its List.Flink) ---------

NTPL_OWNER_TAG = b"NTPL"
NTPL_SIZE = 0xC0
NTPL_VERSION = 0x18
NTPL_POOL_TRACK_TABLE = 0x20
NTPL_POOL_TRACK_TABLE_SIZE = 0x28  # entries, the overflow slot included
NTPL_POOL_BIG_PAGE_TABLE = 0x30
NTPL_POOL_BIG_PAGE_TABLE_SIZE = 0x38  # entries
NTPL_NONPAGED_POOL_LIST_HEADS = 0x40
NTPL_PAGED_POOL_LIST_HEADS = 0x48
NTPL_BUGCHECK_CONTEXT = 0x50  # NTPOOL_BUGCHECK_CONTEXT, 0 when the machine did not crash
NTPL_NUMBER_PROCESSORS = 0x58
NTPL_CALL_SITE_TABLE = 0x60  # ntpool's NTCS table (ntpool.drivers.call_site_table)
NTPL_CALL_SITE_TABLE_BYTES = 0x68
# Driver Verifier's pool tracking (what !verifier 3 lists): entries, and how many; 0 when off.
NTPL_VERIFIER_TRACK_TABLE = 0x70
NTPL_VERIFIER_TRACK_COUNT = 0x78
VERIFIER_TRACK_ENTRY = struct.Struct("<QQII")  # address, bytes requested, tag, call site
# Version 2: the machine's Windows and, on the segment heap, where its heap state lies.
NTPL_NT_BUILD_NUMBER = 0x80  # NtBuildNumber (7601: the Windows 7 pool)
NTPL_POOL_STATE = 0x88  # nt!ExPoolState: HeapManager (-> RtlpHpHeapGlobals), Heaps[]
NTPL_POOL_QUOTA_COOKIE = 0x90  # address of nt!ExpPoolQuotaCookie
NTPL_HEAP_RANGES = 0x98  # NTPL_HEAP_RANGE entries: where each heap's segments lie
NTPL_HEAP_RANGE_COUNT = 0xA0
NTPL_BIG_PAGE_ENTRY_SIZE = 0xA8  # 0x18, or 0x20 from build 20348
# ntpool's allocation-site table: who allocated each small chunk, kept outside the POOL_HEADERs
# as the machine keeps it. Version 2: b"NTA2", u32 count, then per pool (base u64, units u64,
# offset u32, length u32, width u32, crc u32) and, at each offset from the table's start, the
# pool's site map compressed with zlib: a call-site number per 32-byte unit (an allocated chunk
# is the only one whose header starts in its unit), ``width`` bytes (1 or 2) little-endian;
# ``crc`` is the CRC-32 of the compressed map. Version 1 (NTAS, dumps before it): b"NTAS", u32
# count, per pool (base u64, blocks u64, offset u32, length u32), each map a USHORT per 16-byte
# block. Either way a site is stale for freed chunks: read it for allocated ones only.
NTPL_ALLOCATION_SITES = 0xB0
NTPL_ALLOCATION_SITES_BYTES = 0xB8
ALLOCATION_SITES_MAGIC = b"NTAS"
ALLOCATION_SITES_V2_MAGIC = b"NTA2"
ALLOCATION_SITES_HEADER = struct.Struct("<4sI")
ALLOCATION_SITES_ENTRY = struct.Struct("<QQII")
ALLOCATION_SITES_V2_ENTRY = struct.Struct("<QQIIII")
NTPL_V1_SIZE = 0x80
NTPL_HEAP_RANGE = struct.Struct("<QQQII")  # _SEGMENT_HEAP, first byte, end, base type, heap index
NTPL_LAYOUT_VERSION = 2

# NTPOOL_BUGCHECK_CONTEXT: what the machine knew when it stopped.
# code, parameters, DriverName, CallSite, FoundIn (the kernel routine whose check stopped the
# machine when it is not the one the driver called, e.g. "ExDeferredFreePool"; empty if so).
# Then the address of the NTPOOL_CORRUPTING_WRITE record (0: none was recorded).
BUGCHECK_CONTEXT = struct.Struct("<I4x4Q64s128s32sQ")
BUGCHECK_CONTEXT_V1 = struct.Struct("<I4x4Q64s128s32s")  # before the corrupting write
BUGCHECK_CONTEXT_DRIVER = 0x28
BUGCHECK_CONTEXT_CALL_SITE = 0x68
BUGCHECK_CONTEXT_FOUND_IN = 0xE8
# NTPOOL_CORRUPTING_WRITE: the first write that crossed into another chunk's header or into
# freed memory: address, length, the first 16 bytes, driver, line, what it hit.
CORRUPTING_WRITE = struct.Struct("<QI4x16s64s128s256s")
DRIVER_NAME_SIZE = 64
CALL_SITE_SIZE = 128
FOUND_IN_SIZE = 32

# --- the pool tables (Windows 7 x64) ----------------------------------------------------

# POOL_TRACKER_TABLE and POOL_TRACKER_BIG_PAGES are laid out in ntpool.pool.layout.
TRACKER_HASH_MULTIPLIER = 40543
MIN_TRACKER_TABLE_SIZE = 1024  # power of two; one overflow slot follows
# The most hashed slots a dump's PoolTrackTable has (the most ntpool's reader reads: each
# entry in use becomes a Python object). Kept at most half full, it holds 131,072 tags; a
# machine that made more puts the rest in the overflow slot, as Windows does when its table
# cannot grow: that slot's Key is OVERFLOW_TAG and it sums their counts.
MAX_TRACKER_TABLE_SIZE = 1 << 18
OVERFLOW_TAG = 0x6C66764F  # 'Ovfl', the key of Windows' overflow bucket

MIN_BIG_PAGE_TABLE_SIZE = 512

# --- KUSER_SHARED_DATA ---------------------------------------------------------------------

KUSER_SHARED_DATA = 0xFFFFF78000000000
KUSER_SYSTEM_TIME = 0x14  # KSYSTEM_TIME: LowPart, High1Time, High2Time
KUSER_NT_SYSTEM_ROOT = 0x30  # WCHAR[260]
NT_SYSTEM_ROOT = "C:\\Windows"
KUSER_NT_BUILD_NUMBER = 0x260
KUSER_NT_PRODUCT_TYPE = 0x264
KUSER_PRODUCT_TYPE_IS_VALID = 0x268
KUSER_NT_MAJOR_VERSION = 0x26C
KUSER_NT_MINOR_VERSION = 0x270
NT_MAJOR_VERSION = 6  # Windows 7 is NT 6.1
NT_MINOR_VERSION = 1
NT_PRODUCT_WIN_NT = 1

MM_HIGHEST_USER_ADDRESS = 0x000007FFFFFEFFFF
MM_USER_PROBE_ADDRESS = 0x000007FFFFFF0000

PAGE = PAGE_SIZE


def tracker_hash(key: int, mask: int) -> int:
    """PoolTrackTable's hash of a tag (protected bit already stripped)."""
    product = key * TRACKER_HASH_MULTIPLIER
    return ((product & 0xFFFFFFFF) ^ (product >> 32)) & mask


def big_page_hash(va: int, mask: int) -> int:
    """PoolBigPageTable's hash of a page-aligned address."""
    return (va >> 12) & mask


def table_size_for(count: int, minimum: int) -> int:
    """A power of two at least twice ``count`` (tables stay at most half full)."""
    size = minimum
    while size < 2 * count:
        size *= 2
    return size
