"""Every byte layout and encoding of the kernel segment heap, in one place (x64).

Sources are in shared/reference/segment-heap.md; what a source leaves open is marked
"choice" here and listed in the README's departures. The model, the dump writer and the
debugger all read and write these structures through this module only.
"""

import struct
from enum import IntEnum

from ...packing import x64_struct
from ...constants import PAGE_SIZE
from ..layout import POOL_HEADER as WINDOWS7_POOL_HEADER
from ..layout import PoolLayouts, StructLayout

# --- size routing (request bytes, x64) --------------------------------------------------------

GRANULARITY = 16
POOL_HEADER_SIZE = 0x10
VS_HEADER_SIZE = 0x10
# LFH: blocks (POOL_HEADER included) of up to 0x200 bytes. Choice: the 0x200 limit applies to
# the block the heap is asked for, which the pool makes request + POOL_HEADER.
LFH_MAX_BLOCK = 0x200
LFH_MAX_REQUEST = LFH_MAX_BLOCK - POOL_HEADER_SIZE  # 0x1F0
VS_MAX_REQUEST = 0xFE0  # larger requests are big allocations: no POOL_HEADER, in the big page table
# 0xFE1 .. 128 KiB: still the VS backend ("512 B < allocation <= 128 KiB", SSTIC's slides),
# as a big allocation: the chunk's _HEAP_VS_CHUNK_HEADER ends where the page-aligned data
# begins (ExAllocatePool2: PAGE_SIZE or more is page-aligned; PoolViewer reads a VS chunk
# over 0x1000 bytes as [VS header][data], no POOL_HEADER), and the big page table records it.
VS_BIG_MAX_REQUEST = 128 << 10
SEGMENT_CONTEXT0_MIN = VS_BIG_MAX_REQUEST  # above: the segment backend, context 0
SEGMENT_CONTEXT1_MIN = 508 << 10  # above: context 1
CACHE_LINE = 0x40  # ExpCacheLineSize

# LFH bucket activation (choice: the user-mode segment heap's rule, unconfirmed for the
# kernel): a bucket is served by the VS backend until 17 of its blocks are live at once or
# 2040 have been requested.
LFH_ACTIVATE_LIVE = 17
LFH_ACTIVATE_REQUESTS = 2040

# --- the segment backend ----------------------------------------------------------------------

SEGMENT_SIZE = 1 << 20  # SegmentMask 0xFFFFFFFFFFF00000, unit = page
SEGMENT_PAGES = SEGMENT_SIZE // PAGE_SIZE  # 256 page range descriptors
SEGMENT_HEADER_PAGES = 2  # _HEAP_PAGE_SEGMENT: ListEntry, Signature, 256 x 0x20 descriptors
SEGMENT_RUN_MAX_PAGES = SEGMENT_PAGES - SEGMENT_HEADER_PAGES  # larger: a large allocation
SEGMENT_SIGNATURE = 0x10  # u64 at the segment start + 0x10
DESCRIPTOR_SIZE = 0x20
DESCRIPTOR_RANGE_FLAGS = 0x18  # u8
DESCRIPTOR_UNIT = 0x1F  # u8: UnitSize on the first page of a run, UnitOffset on the others

# RangeFlags of the first page of a run (MemProcFS); later pages of a run: 0 (choice).
RANGE_FREE = 0x0
RANGE_BIG = 0x3  # big pool and large allocations
RANGE_LFH = 0xB  # an LFH subsegment
RANGE_VS = 0xF  # a VS subsegment


def segment_signature(segment_va: int, context_va: int, heap_key: int, constant: int) -> int:
    """_HEAP_PAGE_SEGMENT.Signature: segment ^ SegContext ^ HeapKey ^ constant."""
    return (segment_va ^ context_va ^ heap_key ^ constant) & 0xFFFFFFFFFFFFFFFF


# --- _SEGMENT_HEAP and the pool's heap state ---------------------------------------------------

SEGMENT_HEAP_SIGNATURE = 0xDDEEDDEE  # _SEGMENT_HEAP.Signature, u32 @0x10
SEGMENT_HEAP_SIZE = 0x800
SEGMENT_HEAP_SIGNATURE_OFFSET = 0x10
# Contexts inside _SEGMENT_HEAP, at their 19H1 offsets (SSTIC); other builds move them.
SEG_CONTEXT_OFFSETS = (0x100, 0x1C0)
VS_CONTEXT_OFFSET = 0x280
LFH_CONTEXT_OFFSET = 0x340
# RtlpHpHeapGlobals: HeapKey u64 @0, LfhKey u64 @8.
HEAP_GLOBALS = x64_struct("<QQ")
# ExPoolState (_EX_POOL_HEAP_MANAGER_STATE), as ntpool lays it out (the real offsets come
# from the PDB): HeapManager (-> RtlpHpHeapGlobals) @0, NumberOfPools u32 @8, then
# PoolNode[0].Heaps[4] @0x10 (0 NonPagedPool, 1 NonPagedPoolNx, 2 PagedPool, 3 unused).
POOL_STATE = x64_struct("<QI4xQQQQ")
HEAP_NONPAGED, HEAP_NONPAGED_NX, HEAP_PAGED = 0, 1, 2
HEAP_POOL_TYPES = {HEAP_NONPAGED: 0x0, HEAP_NONPAGED_NX: 0x200, HEAP_PAGED: 0x1}  # POOL_TYPE

# --- the VS backend ---------------------------------------------------------------------------

# _HEAP_VS_CHUNK_HEADER: HeaderBits (8 bytes, stored XORed with HeapKey and the header's
# own address): MemoryCost u16, UnsafeSize u16, UnsafePrevSize u16 (16-byte units, header
# included), Allocated u8 (bit 0), spare u8; then a u32 EncodedSegmentPageOffset:8,
# UnusedBytes:1, SkipDuringWalk:1, Spare:22 and 4 bytes of padding.
VS_HEADER_BITS = struct.Struct("<HHHBB")
QWORD = x64_struct("<Q")
WORD = struct.Struct("<H")
DWORD = struct.Struct("<I")
VS_SUBSEGMENT_HEADER = 0x30  # the first chunk header is at subsegment + 0x30
VS_SUBSEGMENT_SIZE_SIG = struct.Struct("<HH")  # Size u16 @0x20, Signature:15|FullCommit:1 @0x22
VS_SUBSEGMENT_SIZE_OFFSET = 0x20
VS_SUBSEGMENT_SIGNATURE_XOR = 0x2BED
VS_SUBSEGMENT_PAGES = 16  # 64 KiB; a subsegment grows to fit a request (up to 256 KiB)
VS_DELAY_FREE_MAX_CHUNK = 0x400  # chunks smaller than 1 KiB wait in the delay-free list
VS_DELAY_FREE_DEPTH = 32  # ... until 32 are queued, then all are freed


# The fields of VS_HEADER_BITS as bit positions in the little-endian QWORD, so the heap
# encodes and decodes a header with integer operations (no pack/unpack round trip).
_VS_SIZE_SHIFT, _VS_PREVIOUS_SHIFT, _VS_ALLOCATED_SHIFT = 16, 32, 48
assert QWORD.unpack(VS_HEADER_BITS.pack(0x1111, 0x2222, 0x3333, 0x44, 0))[0] == \
    0x1111 | 0x2222 << _VS_SIZE_SHIFT | 0x3333 << _VS_PREVIOUS_SHIFT | 0x44 << _VS_ALLOCATED_SHIFT


def encode_vs_bits(address: int, heap_key: int, size: int, previous_size: int,
                   allocated: bool, memory_cost: int = 0) -> int:
    plain = (memory_cost & 0xFFFF | (size & 0xFFFF) << _VS_SIZE_SHIFT
             | (previous_size & 0xFFFF) << _VS_PREVIOUS_SHIFT
             | (1 if allocated else 0) << _VS_ALLOCATED_SHIFT)
    return (plain ^ heap_key ^ address) & 0xFFFFFFFFFFFFFFFF


def decode_vs_bits(encoded: int, address: int, heap_key: int) -> tuple[int, int, int, int]:
    """(MemoryCost, UnsafeSize, UnsafePrevSize, Allocated) of an encoded chunk header."""
    plain = encoded ^ heap_key ^ address
    return (plain & 0xFFFF, (plain >> _VS_SIZE_SHIFT) & 0xFFFF,
            (plain >> _VS_PREVIOUS_SHIFT) & 0xFFFF, (plain >> _VS_ALLOCATED_SHIFT) & 0xFF)


def vs_page_offset_field(chunk: int, segment: int, heap_key: int, unused_bytes: bool) -> int:
    """The u32 at header + 8. Choice: EncodedSegmentPageOffset is the chunk's page within its
    segment XORed with the low byte of (HeapKey ^ chunk address)."""
    encoded = (((chunk - segment) >> 12) ^ heap_key ^ chunk) & 0xFF
    return encoded | (0x100 if unused_bytes else 0)


def vs_subsegment_signature(size_units: int) -> int:
    """Size and Signature of a _HEAP_VS_SUBSEGMENT are valid when Size == Signature ^ 0x2BED."""
    return (size_units ^ VS_SUBSEGMENT_SIGNATURE_XOR) & 0x7FFF


# --- the LFH ----------------------------------------------------------------------------------

# _HEAP_LFH_SUBSEGMENT from +0x20: FreeCount u16, BlockCount u16, FreeHint u16, Location u8,
# WitheldBlockCount u8, BlockOffsets u32 (encoded), CommitUnitShift u8, CommitUnitCount u8,
# CommitStateOffset u16; BlockBitmap at +0x30, two bits a block (busy = 01, MemProcFS and
# PoolViewer; a single bit is reported for 26100 by one secondary source: choice, 2 bits).
LFH_SUBSEGMENT_FIELDS = struct.Struct("<HHHBBIBBH")
LFH_FIELDS_OFFSET = 0x20
LFH_COUNTS = struct.Struct("<HHH")  # FreeCount, BlockCount, FreeHint at +0x20
LFH_FREE_COUNT = 0x20
LFH_FREE_HINT = 0x24
LFH_BLOCK_OFFSETS = 0x28
LFH_BITMAP = 0x30
LFH_BUSY = 0b01
LFH_BUCKET_COUNT = LFH_MAX_BLOCK // GRANULARITY  # buckets 1..32 serve the pool


def lfh_block_offsets(block_size: int, first_offset: int, subsegment: int, lfh_key: int) -> int:
    """BlockOffsets: BlockSize (bytes, low u16) | FirstBlockOffset (high u16), XORed with the
    LfhKey and the subsegment's page number (low 32 bits of each)."""
    return ((block_size | first_offset << 16) ^ lfh_key ^ (subsegment >> 12)) & 0xFFFFFFFF


def decode_lfh_block_offsets(encoded: int, subsegment: int, lfh_key: int) -> tuple[int, int]:
    plain = (encoded ^ lfh_key ^ (subsegment >> 12)) & 0xFFFFFFFF
    return plain & 0xFFFF, plain >> 16


def lfh_subsegment_pages(block_size: int) -> int:
    """Pages of a new LFH subsegment (choice): room for about 64 blocks, at least a page."""
    return max(1, (block_size * 64 + PAGE_SIZE - 1) // PAGE_SIZE)


def lfh_block_layout(block_size: int, pages: int) -> tuple[int, tuple[int, ...]]:
    """(FirstBlockOffset, every block's offset): blocks follow the header and bitmap and
    never straddle a page (a block that would is moved to the next page)."""
    size = pages * PAGE_SIZE
    # The bitmap needs 2 bits per block; count blocks with a bitmap sized for the most.
    most = (size - LFH_BITMAP) // block_size
    first = (LFH_BITMAP + (most * 2 + 7) // 8 + GRANULARITY - 1) & ~(GRANULARITY - 1)
    offsets = []
    offset = first
    while offset + block_size <= size:
        if (offset & (PAGE_SIZE - 1)) + block_size > PAGE_SIZE:
            offset = (offset | (PAGE_SIZE - 1)) + 1
            continue
        offsets.append(offset)
        offset += block_size
    return first, tuple(offsets)


# The most blocks an LFH subsegment of any bucket holds (the length of its free bits).
LFH_MOST_BLOCKS = max(len(lfh_block_layout(units * GRANULARITY, lfh_subsegment_pages(units * GRANULARITY))[1])
                      for units in range(1, LFH_BUCKET_COUNT + 1))


# --- the dynamic lookaside -------------------------------------------------------------------

LOOKASIDE_MIN_BLOCK = 0x200  # sizes above this ...
LOOKASIDE_MAX_BLOCK = 0xF80  # ... up to this go to the dynamic lookaside (POOL_HEADER.BlockSize)
LOOKASIDE_BUCKETS = 64
LOOKASIDE_MIN_DEPTH = 4
LOOKASIDE_MAX_DEPTH = 256


def lookaside_bucket(block_bytes: int) -> int:
    """Bucket 1-64 for a block of ``block_bytes`` (0x200 < size <= 0xF80), 0 for none."""
    if block_bytes <= LOOKASIDE_MIN_BLOCK or block_bytes > LOOKASIDE_MAX_BLOCK:
        return 0
    if block_bytes <= 1024:
        return (block_bytes - 512 + 15) // 16
    if block_bytes <= 2048:
        return 32 + (block_bytes - 1024 + 63) // 64
    return 48 + (block_bytes - 2048 + 127) // 128


def lookaside_bucket_bytes(bucket: int) -> int:
    """The largest block a lookaside bucket holds (choice: blocks are rounded up to it)."""
    if bucket <= 32:
        return 512 + 16 * bucket
    if bucket <= 48:
        return 1024 + 64 * (bucket - 32)
    return 2048 + 128 * (bucket - 48)


# --- the POOL_HEADER kept on small chunks ----------------------------------------------------

# The same 16-byte POOL_HEADER as Windows 7 (pool.layout's); what the segment heap writes in it:
POOL_HEADER = WINDOWS7_POOL_HEADER  # PreviousSize, PoolIndex, BlockSize, PoolType, Tag, 8 bytes
POOL_HEADER_FIRST8 = WINDOWS7_POOL_HEADER.run("PreviousSize", "PoolTag")
POOL_TYPE_ALLOCATED = 0x2  # what the segment heap ORs into every header it writes
POOL_TYPE_ALIGNED = 0x4  # set only on the second header of a cache-aligned chunk
POOL_TYPE_QUOTA = 0x8
POOL_TYPE_KEPT = 0x6D  # the requested POOL_TYPE bits a header keeps


def header_pool_type(pool_type: int, quota: bool = False) -> int:
    """PoolType byte: requested type & 0x6D, OR 0x2; the quota bit when billed; bit 2 (cache
    aligned) only ever on the second header of an aligned chunk."""
    value = (pool_type & POOL_TYPE_KEPT & ~(POOL_TYPE_ALIGNED | POOL_TYPE_QUOTA)) | POOL_TYPE_ALLOCATED
    return value | POOL_TYPE_QUOTA if quota else value


def encode_process_billed(process: int, cookie: int, header: int) -> int:
    """ProcessBilled: EPROCESS ^ ExpPoolQuotaCookie ^ the header's address."""
    return (process ^ cookie ^ header) & 0xFFFFFFFFFFFFFFFF


decode_process_billed = encode_process_billed  # XOR is its own inverse

EPROCESS_MIN_ADDRESS = 0xFFFF800000000000
PROCESS_OBJECT_TYPE = 3  # DISPATCHER_HEADER.Type of a process


# --- the big page table and the tracker, as Windows 10/11 keep them --------------------------

# 0x18 bytes before build 20348: Va u64, Key u32, {Pattern:8, PoolType:12, SlushSize:12} u32,
# NumberOfBytes u64 (the bytes asked for); 0x20 from 20348: + ProcessBilled u64.
POOL_TRACKER_BIG_PAGES_10 = StructLayout("POOL_TRACKER_BIG_PAGES", 0x18, [
    ("Va", 0x0, "u64"), ("Key", 0x8, "u32"), ("PoolType", 0xC, "u32"), ("NumberOfBytes", 0x10, "u64"),
])
POOL_TRACKER_BIG_PAGES_20348 = StructLayout("POOL_TRACKER_BIG_PAGES", 0x20, [
    ("Va", 0x0, "u64"), ("Key", 0x8, "u32"), ("PoolType", 0xC, "u32"), ("NumberOfBytes", 0x10, "u64"),
    ("ProcessBilled", 0x18, "u64"),
])
BIG_PAGE_FREE = 1

# _POOL_TRACKER_TABLE from Windows 10: 64-bit counters, 0x38 bytes.
POOL_TRACKER_TABLE_10 = StructLayout("POOL_TRACKER_TABLE", 0x38, [
    ("Key", 0x0, "u32"), ("NonPagedBytes", 0x8, "u64"), ("NonPagedAllocs", 0x10, "u64"),
    ("NonPagedFrees", 0x18, "u64"), ("PagedBytes", 0x20, "u64"), ("PagedAllocs", 0x28, "u64"),
    ("PagedFrees", 0x30, "u64"),
])


def segment_heap_layouts(version) -> PoolLayouts:
    """The layouts a segment-heap build keeps (POOL_HEADER as Windows 7's) and varies."""
    big_page = POOL_TRACKER_BIG_PAGES_20348 if version.big_page_entry_size == 0x20 else \
        POOL_TRACKER_BIG_PAGES_10
    return PoolLayouts(f"Windows {version.name} build {version.build} x64 (segment heap)",
                       WINDOWS7_POOL_HEADER, big_page, POOL_TRACKER_TABLE_10,
                       POOL_TYPE_ALLOCATED, POOL_TYPE_QUOTA)


# The u32 at +0xC of a Windows 10/11 big page entry is three bit fields (name, first bit,
# bits), as the PDB's _POOL_TRACKER_BIG_PAGES has them: Pattern:8, PoolType:12, SlushSize:12.
# PoolType is the POOL_TYPE the caller asked for (NonPagedPoolNx 0x200, PagedPool 1, ...),
# not the POOL_HEADER's encoding (a public WinDbg session shows 0x200, 0x1, 0x5, 0x401).
BIG_PAGE_TYPE_BITS = (("Pattern", 0, 8), ("PoolType", 8, 12), ("SlushSize", 20, 12))
_BITS = {name: (first, (1 << bits) - 1) for name, first, bits in BIG_PAGE_TYPE_BITS}


def big_page_type_field(pool_type: int, pattern: int = 0, slush: int = 0) -> int:
    value = 0
    for name, field in (("Pattern", pattern), ("PoolType", pool_type), ("SlushSize", slush)):
        first, mask = _BITS[name]
        value |= (field & mask) << first
    return value


def big_page_type_of(field: int) -> int:
    first, mask = _BITS["PoolType"]
    return (field >> first) & mask


def big_page_hash(va: int, mask: int) -> int:
    """PoolViewer's hash: (u32)(Va >> 12) * 0x9E5F, high half folded in, masked."""
    h = ((va >> 12) & 0xFFFFFFFF) * 0x9E5F
    return (h ^ (h >> 32)) & mask


# --- KERNEL_MODE_HEAP_CORRUPTION (0x13A) parameter 1 -----------------------------------------

class HeapFailure(IntEnum):
    """_HEAP_FAILURE_TYPE, the value 0x13A reports in parameter 1 (the Windows 10 2004+ /
    11 enumeration, which has heap_failure_invalid_allocation_type at 0xA)."""

    INTERNAL = 0x0
    UNKNOWN = 0x1
    GENERIC = 0x2
    ENTRY_CORRUPTION = 0x3
    MULTIPLE_ENTRIES_CORRUPTION = 0x4
    VIRTUAL_BLOCK_CORRUPTION = 0x5
    BUFFER_OVERRUN = 0x6
    BUFFER_UNDERRUN = 0x7
    BLOCK_NOT_BUSY = 0x8
    INVALID_ARGUMENT = 0x9
    INVALID_ALLOCATION_TYPE = 0xA
    USAGE_AFTER_FREE = 0xB
    CROSS_HEAP_OPERATION = 0xC
    FREELISTS_CORRUPTION = 0xD
    LISTENTRY_CORRUPTION = 0xE
    LFH_BITMAP_MISMATCH = 0xF
    SEGMENT_LFH_BITMAP_CORRUPTION = 0x10
    SEGMENT_LFH_DOUBLE_FREE = 0x11
    VS_SUBSEGMENT_CORRUPTION = 0x12
    NULL_HEAP = 0x13
    ALLOCATION_LIMIT = 0x14
    COMMIT_LIMIT = 0x15
    INVALID_VA_MGR_QUERY = 0x16
