"""What the segment heap checks, each a small named function ending in 0x13A.

KERNEL_MODE_HEAP_CORRUPTION (0x13A): parameter 1 the _HEAP_FAILURE_TYPE, 2 the heap
(_SEGMENT_HEAP) that found it, 3 the address where it was found, 4 reserved (0). Which
failure type each check reports is ntpool's reading of the enumeration's names (the
sources do not say per case); the README lists the choices.
"""

from ...constants import BugCheckCode
from .layout import HeapFailure

KERNEL_MODE_HEAP_CORRUPTION = BugCheckCode.KERNEL_MODE_HEAP_CORRUPTION


def heap_corruption(heap, failure: HeapFailure, address: int, detail: str) -> None:
    heap.crash(KERNEL_MODE_HEAP_CORRUPTION, failure, heap.heap_va, address, 0,
               detail=f"{heap.name} heap: {detail}")


def lfh_bitmap_corrupt(heap, sub, index: int, bits: int) -> None:
    """Allocation found a block the subsegment's index thinks free marked otherwise."""
    heap_corruption(heap, HeapFailure.SEGMENT_LFH_BITMAP_CORRUPTION, sub.va + sub.offsets[index],
                    f"LFH bitmap of subsegment {sub.va:#x} has state {bits:#04b} for free "
                    f"block {index}")


def lfh_not_busy(heap, sub, block: int, bits: int) -> None:
    """Free of an LFH block whose bitmap bits are not busy (01)."""
    if bits == 0:
        heap_corruption(heap, HeapFailure.SEGMENT_LFH_DOUBLE_FREE, block,
                        f"LFH block {block:#x} freed twice (its bitmap says free)")
    heap_corruption(heap, HeapFailure.SEGMENT_LFH_BITMAP_CORRUPTION, block,
                    f"LFH block {block:#x} has bitmap state {bits:#04b}")


def bad_free_address(heap, address: int) -> None:
    heap_corruption(heap, HeapFailure.INVALID_ARGUMENT, address,
                    f"free of {address:#x}, which is not the start of a block")


def vs_header_sane(heap, sub, chunk: int, size: int) -> None:
    """A decoded VS chunk header must describe a chunk inside its subsegment."""
    if sub is None or size == 0 or chunk + (size << 4) > sub.end or chunk < sub.first:
        heap_corruption(heap, HeapFailure.ENTRY_CORRUPTION, chunk,
                        f"VS chunk header at {chunk:#x} does not decode (size {size:#x} units)")


def vs_big_header(heap, chunk: int, size: int, expected: int) -> None:
    """A VS chunk holding a big allocation must be as long as the big page table says."""
    if size != expected:
        heap_corruption(heap, HeapFailure.ENTRY_CORRUPTION, chunk,
                        f"VS chunk header at {chunk:#x} of a big allocation does not decode "
                        f"(size {size:#x} units, the big page table says {expected:#x})")


def vs_not_busy(heap, chunk: int) -> None:
    heap_corruption(heap, HeapFailure.BLOCK_NOT_BUSY, chunk,
                    f"VS chunk {chunk:#x} is freed but not busy (a double free)")


def vs_neighbour(heap, sub, chunk: int, following: int, size: int, next_size: int,
                 next_previous: int) -> None:
    """The next chunk's header must decode and name this chunk's size as its previous."""
    if next_previous != size or next_size == 0 or following + (next_size << 4) > sub.end:
        heap_corruption(heap, HeapFailure.ENTRY_CORRUPTION, following,
                        f"VS chunk header at {following:#x} (after {chunk:#x}) does not decode: "
                        f"overwritten")


def vs_previous_neighbour(heap, sub, before: int, chunk: int, previous: int, before_size: int) -> None:
    if before < sub.first or before_size != previous:
        heap_corruption(heap, HeapFailure.ENTRY_CORRUPTION, chunk,
                        f"VS chunk {chunk:#x} and the chunk before it at {before:#x} disagree")


def vs_free_tree_corrupt(heap, chunk: int, size: int) -> None:
    heap_corruption(heap, HeapFailure.FREELISTS_CORRUPTION, chunk,
                    f"VS free chunk {chunk:#x} ({size:#x} units) is not in the free tree")


def lookaside_entry(heap, bucket: int, entry: int, bucket_bytes: int) -> None:
    """An entry popped from the dynamic lookaside must be a busy VS chunk that fits."""
    sub = heap.subsegment_of(entry)
    if sub is not None and sub.kind == 2 and entry - 0x10 >= sub.first:
        _, size, _, allocated = heap.vs_read(entry - 0x10)
        if allocated and (size << 4) - 0x10 >= bucket_bytes and entry - 0x10 + (size << 4) <= sub.end:
            return
    heap_corruption(heap, HeapFailure.LISTENTRY_CORRUPTION, entry,
                    f"dynamic lookaside bucket {bucket} holds {entry:#x}, which is not a free "
                    f"block of that size")


def lookaside_link(heap, bucket: int, entry: int, link: int) -> None:
    """The next link of a lookaside entry must point at a block of the same heap."""
    if link & 0xF or not heap.contains(link) or heap.subsegment_of(link) is None:
        heap_corruption(heap, HeapFailure.LISTENTRY_CORRUPTION, entry,
                        f"dynamic lookaside bucket {bucket}: entry {entry:#x} links to {link:#x}")
