"""Windows 7's integrity checks on the pool, each a small named function.

In the manner of ReactOS's ExpCheckPoolHeader family: each takes ``crash`` (the machine's
KeBugCheckEx) and raises through it with the bug check Windows raises at that point. The
layouts they read are ``pool.layout``'s.
"""

from ..constants import PAGE_SIZE, BadPoolCaller, BadPoolHeader, BugCheckCode
from ..tags import PROTECTED_POOL
from .layout import BLOCK_SHIFT, POOL_HEADER, POOL_IN_USE

BAD_POOL_HEADER = BugCheckCode.BAD_POOL_HEADER
BAD_POOL_CALLER = BugCheckCode.BAD_POOL_CALLER


# BAD_POOL_CALLER 0x07's second parameter is "Reserved": Windows puts the source line of the
# check there. 0x11C1 is the value in Microsoft's Windows 7 x64 example (NTDebugging blog,
# "Understanding Pool Corruption Part 3").
DOUBLE_FREE_LINE = 0x11C1


def header_ulong(buffer, offset: int) -> int:
    """The header's first ULONG (Ulong1: PreviousSize, PoolIndex, BlockSize, PoolType), which
    BAD_POOL_CALLER 0x07 and BAD_POOL_HEADER 0x20 show."""
    return int.from_bytes(buffer[offset:offset + 4], "little")


# --- the checks ---------------------------------------------------------------------------

def check_not_already_freed(crash, pool_type_byte: int, header_ulong: int, address: int) -> None:
    """0xC2 (0x07, source line, the header's first ULONG, address), as WRK's free path."""
    if not pool_type_byte & POOL_IN_USE:
        crash(BAD_POOL_CALLER, BadPoolCaller.DOUBLE_FREE, DOUBLE_FREE_LINE, header_ulong, address,
              detail=f"{address:#x} was already freed")


def check_free_tag(crash, address: int, stored_tag: int, passed_tag: int) -> None:
    """Windows 7 compares tags on free only for a protected allocation (bit 31 of its tag), and
    with bit 31 masked on both sides; parameter 3 is the allocation's tag without the bit. A
    mismatch on an unprotected tag is not checked: the tag is then ignored when freeing."""
    if not stored_tag & PROTECTED_POOL:
        return
    if (stored_tag ^ passed_tag) & ~PROTECTED_POOL & 0xFFFFFFFF:
        crash(BAD_POOL_CALLER, BadPoolCaller.WRONG_TAG_ON_FREE, address, stored_tag & ~PROTECTED_POOL,
              passed_tag, detail=f"protected pool freed with tag {passed_tag:#010x}, allocated with "
                                 f"{stored_tag:#010x}")


# BAD_POOL_HEADER 0x5's parameter 3 is a source line in Windows (ExCheckPoolHeader's __LINE__).
NEIGHBOUR_CHECK_LINE = 0x5E5


def check_next_pool_index(crash, entry: int, block_size: int, pool_index: int,
                          next_pool_index: int) -> None:
    """The next chunk on the page must belong to the same pool descriptor (PoolIndex), as
    ExCheckPoolHeader checks: else 0x19 (0x5, next entry, line, entry)."""
    if next_pool_index != pool_index:
        next_entry = entry + (block_size << BLOCK_SHIFT)
        crash(BAD_POOL_HEADER, BadPoolHeader.NEIGHBOURS_DISAGREE, next_entry, NEIGHBOUR_CHECK_LINE,
              entry, detail=f"next chunk {next_entry:#x} has PoolIndex {next_pool_index:#x}, chunk "
                            f"{entry:#x} has {pool_index:#x}")


def check_block_size(crash, entry: int, block_size: int) -> None:
    """BlockSize 0 (0x19/0x8: 0, reserved, entry) or running past the page (0x19/0x9: the
    miscalculated next entry, reserved, entry)."""
    if block_size == 0:
        crash(BAD_POOL_HEADER, BadPoolHeader.BLOCK_SIZE_ZERO, 0, 0, entry,
              detail=f"pool header at {entry:#x} has BlockSize 0")
    if (entry & (PAGE_SIZE - 1)) + (block_size << BLOCK_SHIFT) > PAGE_SIZE:
        crash(BAD_POOL_HEADER, BadPoolHeader.BLOCK_CROSSES_PAGE,
              entry + (block_size << BLOCK_SHIFT), 0, entry,
              detail=f"pool header at {entry:#x} has BlockSize {block_size:#x}, past its page")


def check_next_previous_size(crash, entry: int, block_size: int, next_previous_size: int) -> None:
    """ExFreePoolWithTag's own check: the next chunk's PreviousSize must be this chunk's
    BlockSize (0x19/0x20: entry, next entry, reserved), the usual sign of an overrun."""
    if next_previous_size != block_size:
        next_entry = entry + (block_size << BLOCK_SHIFT)
        crash(BAD_POOL_HEADER, BadPoolHeader.NEXT_PREVIOUS_SIZE_MISMATCH, entry, next_entry, 0,
              detail=f"next chunk {next_entry:#x} says PreviousSize {next_previous_size:#x}, "
                     f"chunk {entry:#x} has BlockSize {block_size:#x}: the chunk was overrun")


def check_previous_size(crash, entry: int, previous_size: int) -> int:
    """PreviousSize must keep the previous chunk on this page (0x19/0x6: the miscalculated
    previous entry, reserved, entry), and be 0 only for a page's first chunk (0x19/0x7: 0,
    reserved, entry). Returns the previous chunk's address (0 when there is none)."""
    offset = entry & (PAGE_SIZE - 1)
    if previous_size:
        previous_entry = entry - (previous_size << BLOCK_SHIFT)
        if previous_size << BLOCK_SHIFT > offset:
            crash(BAD_POOL_HEADER, BadPoolHeader.PREVIOUS_SIZE_TOO_LARGE, previous_entry, 0, entry,
                  detail=f"chunk {entry:#x} says PreviousSize {previous_size:#x}: the previous "
                         f"chunk would start before its page")
        return previous_entry
    if offset:
        crash(BAD_POOL_HEADER, BadPoolHeader.BAD_SIZE, 0, 0, entry,
              detail=f"chunk {entry:#x} says PreviousSize 0 but is not its page's first chunk")
    return 0


def check_previous_neighbour(crash, entry: int, previous_entry: int, previous_size: int,
                             previous_block_size: int) -> None:
    """The previous chunk's BlockSize must be this chunk's PreviousSize (0x19/0x5: previous
    entry, reserved, entry)."""
    if previous_block_size != previous_size:
        crash(BAD_POOL_HEADER, BadPoolHeader.NEIGHBOURS_DISAGREE, previous_entry, 0, entry,
              detail=f"chunk {entry:#x} says PreviousSize {previous_size:#x}, chunk "
                     f"{previous_entry:#x} has BlockSize {previous_block_size:#x}")


def check_next_neighbour(crash, entry: int, block_size: int, next_previous_size: int) -> None:
    """The next chunk's PreviousSize must be this chunk's BlockSize (0x19/0x5: next entry,
    reserved, entry): ExpCheckPoolHeader's form of the check, made where a chunk is taken."""
    if next_previous_size != block_size:
        next_entry = entry + (block_size << BLOCK_SHIFT)
        crash(BAD_POOL_HEADER, BadPoolHeader.NEIGHBOURS_DISAGREE, next_entry, 0, entry,
              detail=f"chunk {entry:#x} has BlockSize {block_size:#x}, chunk {next_entry:#x} "
                     f"says PreviousSize {next_previous_size:#x}")


def check_pool_header(crash, entry: int, read_first8, delta: int = 0) -> tuple:
    """ExpCheckPoolHeader: a chunk's header against its page and both neighbours.

    ``read_first8(address + delta)`` gives a header's (PreviousSize, PoolIndex, BlockSize,
    PoolType, PoolTag): the pool's reader of virtual addresses (``delta`` 0), or an unpack
    from physical memory when the caller has translated the entry's page (``delta`` its
    physical minus its virtual address: every header read here lies on that page). In
    order: PreviousSize (0x6, 0x7, then 0x5 against the previous chunk), BlockSize (0x8,
    0x9, then 0x5 against the next chunk). Returns the entry's fields.
    """
    fields = read_first8(entry + delta)
    previous_size, block_size = fields[0], fields[2]
    offset = entry & (PAGE_SIZE - 1)
    # The slow path's hottest check: each condition is tested here and its named check is
    # called only when it fails, to raise its bug check.
    if previous_size:
        if previous_size << BLOCK_SHIFT > offset:
            check_previous_size(crash, entry, previous_size)
        previous_entry = entry - (previous_size << BLOCK_SHIFT)
        previous_block_size = read_first8(previous_entry + delta)[2]
        if previous_block_size != previous_size:
            check_previous_neighbour(crash, entry, previous_entry, previous_size, previous_block_size)
    elif offset:
        check_previous_size(crash, entry, previous_size)
    next_offset = offset + (block_size << BLOCK_SHIFT)
    if not block_size or next_offset > PAGE_SIZE:
        check_block_size(crash, entry, block_size)
    if next_offset < PAGE_SIZE:
        next_previous_size = read_first8(entry + (block_size << BLOCK_SHIFT) + delta)[0]
        if next_previous_size != block_size:
            check_next_neighbour(crash, entry, block_size, next_previous_size)
    return fields


def check_pool_header_in_page(crash, entry: int, mem, pa: int) -> tuple[int, int]:
    """``check_pool_header`` for a header on a page the caller has translated: ``mem[pa]`` is
    the header's first byte in physical memory, and every header the check reads lies on
    that page. The same checks in the same order; each field it needs is one byte read.
    Returns the entry's (PreviousSize, BlockSize)."""
    previous_size, block_size = mem[pa + _PREVIOUS_SIZE], mem[pa + _BLOCK_SIZE]
    offset = entry & _PAGE_MASK
    if previous_size:
        back = previous_size << BLOCK_SHIFT
        if back > offset:
            check_previous_size(crash, entry, previous_size)
        previous_block_size = mem[pa - back + _BLOCK_SIZE]
        if previous_block_size != previous_size:
            check_previous_neighbour(crash, entry, entry - back, previous_size, previous_block_size)
    elif offset:
        check_previous_size(crash, entry, previous_size)
    size = block_size << BLOCK_SHIFT
    if block_size and offset + size < PAGE_SIZE:  # a next chunk on the page (0x8 and 0x9 hold)
        next_previous_size = mem[pa + size + _PREVIOUS_SIZE]
        if next_previous_size != block_size:
            check_next_neighbour(crash, entry, block_size, next_previous_size)
    elif not block_size or offset + size > PAGE_SIZE:
        check_block_size(crash, entry, block_size)
    return previous_size, block_size


_PREVIOUS_SIZE, _BLOCK_SIZE = POOL_HEADER.PreviousSize, POOL_HEADER.BlockSize
_PAGE_MASK = PAGE_SIZE - 1


def check_fits_its_list(crash, entry: int, block_size: int, list_blocks: int) -> None:
    """A chunk taken from ListHeads[n - 1] must hold at least n blocks (0x19/0x7: 0,
    reserved, entry): a smaller one has had its BlockSize rewritten while free."""
    if block_size < list_blocks:
        crash(BAD_POOL_HEADER, BadPoolHeader.BAD_SIZE, 0, 0, entry,
              detail=f"free chunk {entry:#x} on the list of {list_blocks}-block chunks says "
                     f"BlockSize {block_size:#x}")


def check_list_links(crash, entry: int, flink_blink: int, blink_flink: int) -> None:
    """Safe unlinking and insertion: Flink->Blink and Blink->Flink must both be ``entry``
    (0x19/0x3: entry, the read-back values)."""
    if flink_blink != entry or blink_flink != entry:
        crash(BAD_POOL_HEADER, BadPoolHeader.LIST_CORRUPT, entry, flink_blink, blink_flink,
              detail=f"free-list links around {entry:#x} are corrupt")
