"""The x64 POOL_HEADER, its encoding, and the small checks made on it.

Layout (16 bytes, little-endian): PreviousSize u8 @0, PoolIndex u8 @1, BlockSize u8 @2,
PoolType u8 @3, PoolTag u32 @4, ProcessBilled u64 @8 (for quota charges; otherwise
AllocatorBackTraceIndex u16 @8 and PoolTagHash u16 @10). Sizes count 16-byte blocks,
header included.

The checks are small named functions in the manner of ReactOS's ExpCheckPoolHeader
family; each takes ``crash`` (the machine's KeBugCheckEx) and raises through it.
The page walkers take plain bytes so the crash-dump reader can use them too.
"""

import struct
from typing import Iterator, NamedTuple

from ..constants import PAGE_SIZE, BadPoolCaller, BadPoolHeader, BugCheckCode

BLOCK = 16
BLOCK_SHIFT = 4
HEADER_SIZE = 16
BLOCKS_PER_PAGE = PAGE_SIZE // BLOCK  # 256
LIST_HEAD_COUNT = BLOCKS_PER_PAGE  # a free chunk of n blocks is on ListHeads[n - 1]
LOOKASIDE_MAX_BLOCKS = 32  # chunks of up to 512 bytes go to lookaside lists

POOL_IN_USE = 0x4
POOL_QUOTA = 0x8
POOL_FREE = 0

HEADER = struct.Struct("<BBBBIQ")  # the whole header
HEADER_FIRST8 = struct.Struct("<BBBBI")  # PreviousSize, PoolIndex, BlockSize, PoolType, Tag
TYPE_TAG_BILLED = struct.Struct("<BIQ")  # PoolType, Tag, ProcessBilled: bytes 3..15
LIST_ENTRY = struct.Struct("<QQ")  # Flink, Blink
QWORD = struct.Struct("<Q")
ULONG = struct.Struct("<I")
# BAD_POOL_CALLER 0x07's second parameter is "Reserved": Windows puts the source line of the
# check there. 0x11C1 is the value in Microsoft's Windows 7 x64 example (NTDebugging blog,
# "Understanding Pool Corruption Part 3").
DOUBLE_FREE_LINE = 0x11C1

BAD_POOL_HEADER = BugCheckCode.BAD_POOL_HEADER
BAD_POOL_CALLER = BugCheckCode.BAD_POOL_CALLER


def blocks_for(number_of_bytes: int) -> int:
    """Blocks a small request takes, header included: (bytes + 16 + 15) // 16."""
    return (number_of_bytes + HEADER_SIZE + BLOCK - 1) >> BLOCK_SHIFT


def allocated_type(base_type: int) -> int:
    """PoolType byte of an allocated chunk: (type & BASE_POOL_TYPE_MASK) + 1, in use."""
    return ((base_type & 1) + 1) | POOL_IN_USE


def is_allocated(pool_type_byte: int) -> bool:
    return bool(pool_type_byte & POOL_IN_USE)


def chunk_state(pool_type_byte: int) -> str:
    if pool_type_byte & POOL_IN_USE:
        return "Allocated"
    return "Free" if pool_type_byte == POOL_FREE else "Lookaside"


def header_value(raw8: bytes) -> int:
    """The first eight header bytes as one number, as bug check parameters show them."""
    return int.from_bytes(raw8, "little")


# --- the checks ---------------------------------------------------------------------------

def check_not_already_freed(crash, pool_type_byte: int, header_ulong: int, address: int) -> None:
    """0xC2 (0x07, source line, the header's first ULONG, address), as WRK's free path."""
    if not pool_type_byte & POOL_IN_USE:
        crash(BAD_POOL_CALLER, BadPoolCaller.DOUBLE_FREE, DOUBLE_FREE_LINE, header_ulong, address,
              detail=f"{address:#x} was already freed")


def check_free_tag(crash, address: int, stored_tag: int, passed_tag: int) -> None:
    if stored_tag != passed_tag:
        crash(BAD_POOL_CALLER, BadPoolCaller.WRONG_TAG_ON_FREE, address, stored_tag, passed_tag,
              detail=f"freed with tag {passed_tag:#010x}, allocated with {stored_tag:#010x}")


def check_block_size(crash, entry: int, block_size: int) -> None:
    if block_size == 0:
        crash(BAD_POOL_HEADER, BadPoolHeader.BLOCK_SIZE_ZERO, 0, 0, entry,
              detail=f"pool header at {entry:#x} has BlockSize 0")
    if (entry & (PAGE_SIZE - 1)) + (block_size << BLOCK_SHIFT) > PAGE_SIZE:
        crash(BAD_POOL_HEADER, BadPoolHeader.BLOCK_CROSSES_PAGE, entry, 0, entry,
              detail=f"pool header at {entry:#x} has BlockSize {block_size:#x}, past its page")


def check_next_previous_size(crash, entry: int, block_size: int, next_previous_size: int) -> None:
    if next_previous_size != block_size:
        next_entry = entry + (block_size << BLOCK_SHIFT)
        crash(BAD_POOL_HEADER, BadPoolHeader.NEXT_PREVIOUS_SIZE_MISMATCH, entry, next_entry, 0,
              detail=f"next chunk {next_entry:#x} says PreviousSize {next_previous_size:#x}, "
                     f"chunk {entry:#x} has BlockSize {block_size:#x}: the chunk was overrun")


def check_previous_neighbour(crash, entry: int, previous_entry: int, previous_size: int,
                             previous_block_size: int) -> None:
    if previous_block_size != previous_size:
        crash(BAD_POOL_HEADER, BadPoolHeader.NEIGHBOURS_DISAGREE, previous_entry, 0, entry,
              detail=f"chunk {entry:#x} says PreviousSize {previous_size:#x}, chunk "
                     f"{previous_entry:#x} has BlockSize {previous_block_size:#x}")


def check_list_links(crash, entry: int, flink_blink: int, blink_flink: int) -> None:
    if flink_blink != entry or blink_flink != entry:
        crash(BAD_POOL_HEADER, BadPoolHeader.LIST_CORRUPT, entry, flink_blink, blink_flink,
              detail=f"free-list links around {entry:#x} are corrupt")


# --- walking a page (shared with the dump reader) ------------------------------------------

class Chunk(NamedTuple):
    address: int  # of the header
    previous_size: int
    pool_index: int
    block_size: int
    pool_type: int
    tag: int

    @property
    def size(self) -> int:
        return self.block_size << BLOCK_SHIFT

    @property
    def body(self) -> int:
        return self.address + HEADER_SIZE

    @property
    def state(self) -> str:
        return chunk_state(self.pool_type)


def walk_page(page: bytes, page_va: int) -> Iterator[Chunk]:
    """Chunks of a small-pool page in order; stops where a header is unusable."""
    offset = 0
    while offset < PAGE_SIZE:
        prev, index, size, ptype, tag = HEADER_FIRST8.unpack_from(page, offset)
        if size == 0 or offset + (size << BLOCK_SHIFT) > PAGE_SIZE:
            return
        yield Chunk(page_va + offset, prev, index, size, ptype, tag)
        offset += size << BLOCK_SHIFT


def page_problems(page: bytes, page_va: int) -> list[str]:
    """Every way the page's header chain is inconsistent; empty for a healthy page."""
    problems = []
    offset = 0
    previous_size = 0
    while offset < PAGE_SIZE:
        prev, _index, size, _ptype, _tag = HEADER_FIRST8.unpack_from(page, offset)
        address = page_va + offset
        if prev != previous_size:
            problems.append(f"{address:#x}: PreviousSize {prev:#x}, previous chunk has {previous_size:#x}")
        if size == 0:
            problems.append(f"{address:#x}: BlockSize 0")
            break
        if offset + (size << BLOCK_SHIFT) > PAGE_SIZE:
            problems.append(f"{address:#x}: BlockSize {size:#x} runs past the page")
            break
        previous_size = size
        offset += size << BLOCK_SHIFT
    return problems
