"""The pool's structures as they lie in memory: the one module that knows an offset.

Windows 7 x64 layouts, with the field names WinDbg's ``dt nt!_POOL_HEADER`` shows:

    POOL_HEADER (16 bytes)            POOL_TRACKER_BIG_PAGES (0x18)   POOL_TRACKER_TABLE (0x28)
    +0x0 PreviousSize    u8           +0x00 Va             u64        +0x00 Key             u32
    +0x1 PoolIndex       u8           +0x08 Key            u32        +0x04 NonPagedAllocs  u32
    +0x2 BlockSize       u8           +0x0C PoolType       u32        +0x08 NonPagedFrees   u32
    +0x3 PoolType        u8           +0x10 NumberOfBytes  u64        +0x10 NonPagedBytes   u64
    +0x4 PoolTag         u32                                          +0x18 PagedAllocs     u32
    +0x8 ProcessBilled   u64  (union: AllocatorBackTraceIndex u16     +0x1C PagedFrees      u32
                                      @8, PoolTagHash u16 @0xA)       +0x20 PagedBytes      u64

A free chunk's body starts with a LIST_ENTRY (Flink, Blink) linking it into ListHeads; a
chunk on a lookaside list holds a SINGLE_LIST_ENTRY (Next) there instead.

Each structure is a ``StructLayout``: named fields at offsets, read and written in any
buffer (simulated physical memory, a page read from a crash dump) with ``get``/``set`` or a
struct-like view (``POOL_HEADER.at(buffer, offset).BlockSize``). The allocation fast path
cannot afford a view per call, so it takes precompiled runs of adjacent fields
(``POOL_HEADER.run("PoolType", "ProcessBilled")``) whose offsets come from here too.

``PoolLayouts`` bundles one design's layouts and its PoolType encoding; ``WINDOWS7`` is
Windows 7 x64's. A second design (the segment heap) varies what it must (its big page
entry, its PoolType meaning) and keeps the rest.

PoolType encoding (Vista and later; not the Server 2003 one of the WRK): a free chunk on a
ListHeads list holds 0; an allocated chunk holds its base pool type (0 nonpaged, 1 paged)
ORed with the in-use bit 0x2, and 0x8 when ProcessBilled holds a quota owner. So nonpaged
allocations are even and non-zero, paged ones odd, as volatility3's POOL_HEADER_VISTA
reads them. Chunks cached on a lookaside list keep their in-use marking (which is what keeps
them from being coalesced).
"""

import struct
from typing import Iterator, NamedTuple

from ..constants import PAGE_SIZE
from ..packing import x64_struct

BLOCK = 16  # the pool's granularity on x64
BLOCK_SHIFT = 4
BLOCKS_PER_PAGE = PAGE_SIZE // BLOCK  # 256
LIST_HEAD_COUNT = BLOCKS_PER_PAGE  # a free chunk of n blocks is on ListHeads[n - 1]
LOOKASIDE_MAX_BLOCKS = 32  # chunks of up to 512 bytes go to lookaside lists
# The call-site map (Pool.sites) holds one USHORT per 32-byte unit of pool, not per block: an
# allocated chunk is at least 2 blocks (header and a body of 1 to 16 bytes; a 0-byte request
# is served as 1 byte), so no two allocated chunks start in the same 32-byte-aligned unit.
# A chunk's site is at sites[(chunk - pool base) >> SITE_UNIT_SHIFT]; free chunks' are stale.
SITE_UNIT_SHIFT = 5
SITE_UNITS_PER_PAGE = PAGE_SIZE >> SITE_UNIT_SHIFT  # 128

_FORMATS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}


class Field(NamedTuple):
    name: str
    offset: int
    kind: str  # u8, u16, u32, u64
    codec: struct.Struct


class StructLayout:
    """A C structure's layout: fields at offsets, little-endian, possibly overlapping (unions).

    ``fields`` are (name, offset, kind); the ones marked ``primary`` (all, unless a union
    overlays them) make up ``unpack_from``'s tuple, in offset order.
    """

    def __init__(self, name: str, size: int, fields, union: tuple[str, ...] = ()):
        self.name = name
        self.size = size
        self.fields: dict[str, Field] = {}
        for field_name, offset, kind in fields:
            if offset + struct.calcsize(_FORMATS[kind]) > size:
                raise ValueError(f"{name}.{field_name} runs past the structure's {size} bytes")
            self.fields[field_name] = Field(field_name, offset, kind, x64_struct("<" + _FORMATS[kind]))
        primary = sorted((f for f in self.fields.values() if f.name not in union), key=lambda f: f.offset)
        self.primary_names = tuple(f.name for f in primary)
        self.struct = self._struct_for(primary, 0, size)
        self.Tuple = NamedTuple(name.title().replace("_", ""), [(n, int) for n in self.primary_names])
        for field in self.fields.values():  # POOL_HEADER.BlockSize is that field's offset
            setattr(self, field.name, field.offset)

    @staticmethod
    def _struct_for(fields, start: int, end: int) -> struct.Struct:
        text, at = "<", start
        for field in fields:
            if field.offset < at:
                raise ValueError(f"field {field.name} overlaps the one before it")
            text += "x" * (field.offset - at) + _FORMATS[field.kind]
            at = field.offset + field.codec.size
        return x64_struct(text + "x" * (end - at))

    def offset(self, name: str) -> int:
        return self.fields[name].offset

    def run(self, first: str, last: str) -> struct.Struct:
        """A Struct for the adjacent fields ``first``..``last`` (at ``offset(first)``)."""
        start, end = self.fields[first].offset, self.fields[last].offset + self.fields[last].codec.size
        inside = sorted((f for f in self.fields.values() if start <= f.offset and
                         f.offset + f.codec.size <= end and f.name in self.primary_names),
                        key=lambda f: f.offset)
        return self._struct_for(inside, start, end)

    # --- reading and writing a whole structure or one field -------------------------------

    def unpack_from(self, buffer, offset: int = 0):
        return self.Tuple._make(self.struct.unpack_from(buffer, offset))

    def iter_unpack(self, buffer):
        """The primary fields of each structure in an array of them."""
        return self.struct.iter_unpack(buffer)

    def pack(self, *values) -> bytes:
        return self.struct.pack(*values)

    def pack_into(self, buffer, offset: int, *values) -> None:
        self.struct.pack_into(buffer, offset, *values)

    def get(self, buffer, base: int, name: str) -> int:
        field = self.fields[name]
        return field.codec.unpack_from(buffer, base + field.offset)[0]

    def set(self, buffer, base: int, name: str, value: int) -> None:
        field = self.fields[name]
        field.codec.pack_into(buffer, base + field.offset, value)

    def at(self, buffer, base: int = 0) -> "StructView":
        """A struct-like accessor: ``view.BlockSize``, ``view.PoolType = 2``."""
        return StructView(self, buffer, base)

    def __repr__(self) -> str:
        return f"StructLayout({self.name}, {self.size:#x} bytes)"


class StructView:
    """One structure at ``base`` in ``buffer``, its fields as attributes (reads are live)."""

    __slots__ = ("_layout", "_buffer", "_base")

    def __init__(self, layout: StructLayout, buffer, base: int):
        object.__setattr__(self, "_layout", layout)
        object.__setattr__(self, "_buffer", buffer)
        object.__setattr__(self, "_base", base)

    def __getattr__(self, name: str) -> int:
        layout = object.__getattribute__(self, "_layout")
        if name not in layout.fields:
            raise AttributeError(f"{layout.name} has no field {name}")
        return layout.get(self._buffer, self._base, name)

    def __setattr__(self, name: str, value: int) -> None:
        if name not in self._layout.fields:
            raise AttributeError(f"{self._layout.name} has no field {name}")
        self._layout.set(self._buffer, self._base, name, value)

    def __repr__(self) -> str:
        values = ", ".join(f"{n}={getattr(self, n):#x}" for n in self._layout.primary_names)
        return f"{self._layout.name}({values})"


# --- Windows 7 x64 ----------------------------------------------------------------------------

POOL_HEADER = StructLayout("POOL_HEADER", 16, [
    ("PreviousSize", 0, "u8"), ("PoolIndex", 1, "u8"), ("BlockSize", 2, "u8"),
    ("PoolType", 3, "u8"), ("PoolTag", 4, "u32"), ("ProcessBilled", 8, "u64"),
    ("AllocatorBackTraceIndex", 8, "u16"), ("PoolTagHash", 10, "u16"),
], union=("AllocatorBackTraceIndex", "PoolTagHash"))

POOL_TRACKER_BIG_PAGES = StructLayout("POOL_TRACKER_BIG_PAGES", 0x18, [
    ("Va", 0x0, "u64"), ("Key", 0x8, "u32"), ("PoolType", 0xC, "u32"), ("NumberOfBytes", 0x10, "u64"),
])
BIG_PAGE_FREE = 0x1  # Va bit 0 set: the slot is free

POOL_TRACKER_TABLE = StructLayout("POOL_TRACKER_TABLE", 0x28, [
    ("Key", 0x0, "u32"), ("NonPagedAllocs", 0x4, "u32"), ("NonPagedFrees", 0x8, "u32"),
    ("NonPagedBytes", 0x10, "u64"), ("PagedAllocs", 0x18, "u32"), ("PagedFrees", 0x1C, "u32"),
    ("PagedBytes", 0x20, "u64"),
])

# The pool descriptor (Windows 7 x64, 0x1140 bytes), the fields ntpool keeps in memory:
# PoolType, PoolIndex, PendingFrees (a SINGLE_LIST_ENTRY: the body of the last chunk queued
# for ExDeferredFreePool), PendingFreeDepth, and the 256 LIST_ENTRY ListHeads (the first
# Flink stands for the array). RunningAllocs, TotalBytes and the rest are not kept.
POOL_DESCRIPTOR = StructLayout("POOL_DESCRIPTOR", 0x1140, [
    ("PoolType", 0x0, "u32"), ("PoolIndex", 0x80, "u32"), ("PendingFrees", 0x100, "u64"),
    ("PendingFreeDepth", 0x108, "u32"), ("ListHeads", 0x140, "u64"),
])

LIST_ENTRY = StructLayout("LIST_ENTRY", 16, [("Flink", 0, "u64"), ("Blink", 8, "u64")])
SINGLE_LIST_ENTRY = StructLayout("SINGLE_LIST_ENTRY", 8, [("Next", 0, "u64")])

HEADER_SIZE = POOL_HEADER.size
POINTER = x64_struct("<Q")  # a pointer field, wherever a layout puts one

# PoolType byte encoding.
POOL_FREE = 0
POOL_IN_USE = 0x2
POOL_QUOTA = 0x8
POOL_TYPE_BASE_MASK = 0x1  # 0 nonpaged, 1 paged
POOL_SESSION = 0x20  # a session pool type's chunk (SESSION_POOL_MASK, kept in the header)
POOL_TYPE_KNOWN_BITS = POOL_TYPE_BASE_MASK | POOL_IN_USE | POOL_QUOTA | POOL_SESSION

# Runs the fast path packs in one call (offsets relative to the header).
HEADER_FIRST8 = POOL_HEADER.run("PreviousSize", "PoolTag")  # the four bytes and the tag
TYPE_TAG_BILLED = POOL_HEADER.run("PoolType", "ProcessBilled")  # bytes 3..15

# The header's first 8 bytes as one little-endian QWORD (PhysicalMemory.qwords), for the
# ListHeads code: each field's shift is 8 x its offset.
PREVIOUS_SIZE_SHIFT = 8 * POOL_HEADER.PreviousSize
POOL_INDEX_SHIFT = 8 * POOL_HEADER.PoolIndex
BLOCK_SIZE_SHIFT = 8 * POOL_HEADER.BlockSize
POOL_TYPE_SHIFT = 8 * POOL_HEADER.PoolType
POOL_TAG_SHIFT = 8 * POOL_HEADER.PoolTag
POOL_TAG_BITS = 0xFFFFFFFF << POOL_TAG_SHIFT
assert HEADER_FIRST8.size == 8 and POOL_HEADER.ProcessBilled == 8  # the second QWORD


def header_first8(previous_size: int, pool_index: int, block_size: int, pool_type: int,
                  tag: int) -> int:
    """HEADER_FIRST8's fields as the QWORD they make in memory."""
    return (previous_size << PREVIOUS_SIZE_SHIFT | pool_index << POOL_INDEX_SHIFT
            | block_size << BLOCK_SIZE_SHIFT | pool_type << POOL_TYPE_SHIFT | tag << POOL_TAG_SHIFT)


def allocated_type(base_type: int) -> int:
    """The PoolType byte of an allocated chunk of pool ``base_type`` (0 nonpaged, 1 paged)."""
    return (base_type & POOL_TYPE_BASE_MASK) | POOL_IN_USE


def is_allocated(pool_type_byte: int) -> bool:
    return bool(pool_type_byte & POOL_IN_USE)


def chunk_state(pool_type_byte: int) -> str:
    return "Allocated" if pool_type_byte & POOL_IN_USE else "Free"


def pool_type_fits(pool_type_byte: int, base_type: int) -> bool:
    """Whether a chunk of pool ``base_type`` may hold this PoolType byte (0, or in use)."""
    if pool_type_byte == POOL_FREE:
        return True
    return pool_type_byte & ~POOL_TYPE_KNOWN_BITS == 0 and pool_type_byte & POOL_IN_USE and \
        pool_type_byte & POOL_TYPE_BASE_MASK == base_type


def blocks_for(number_of_bytes: int) -> int:
    """Blocks a small request takes, header included: (bytes + 16 + 15) // 16."""
    return (number_of_bytes + HEADER_SIZE + BLOCK - 1) >> BLOCK_SHIFT


class PoolLayouts(NamedTuple):
    """One allocator design's layouts and PoolType encoding (segment heap: another one)."""

    name: str
    pool_header: StructLayout
    big_page: StructLayout
    tracker: StructLayout
    in_use: int
    quota: int


WINDOWS7 = PoolLayouts("Windows 7 x64", POOL_HEADER, POOL_TRACKER_BIG_PAGES, POOL_TRACKER_TABLE,
                       POOL_IN_USE, POOL_QUOTA)


# --- walking a page (the model's tests, the dump reader and the debugger alike) -------------

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


def chunk_at(buffer, offset: int, address: int) -> Chunk:
    """The chunk whose header is at ``offset`` in ``buffer`` (``address`` in memory)."""
    return Chunk(address, *HEADER_FIRST8.unpack_from(buffer, offset))


def walk_page(page: bytes, page_va: int) -> Iterator[Chunk]:
    """Chunks of a small-pool page in order; stops where a header is unusable."""
    offset = 0
    while offset < PAGE_SIZE:
        chunk = chunk_at(page, offset, page_va + offset)
        if chunk.block_size == 0 or offset + chunk.size > PAGE_SIZE:
            return
        yield chunk
        offset += chunk.size


def page_problems(page: bytes, page_va: int) -> list[str]:
    """Every way the page's header chain is inconsistent; empty for a healthy page."""
    problems = []
    offset = 0
    previous_size = 0
    while offset < PAGE_SIZE:
        chunk = chunk_at(page, offset, page_va + offset)
        if chunk.previous_size != previous_size:
            problems.append(f"{chunk.address:#x}: PreviousSize {chunk.previous_size:#x}, "
                            f"previous chunk has {previous_size:#x}")
        if chunk.block_size == 0:
            problems.append(f"{chunk.address:#x}: BlockSize 0")
            break
        if offset + chunk.size > PAGE_SIZE:
            problems.append(f"{chunk.address:#x}: BlockSize {chunk.block_size:#x} runs past the page")
            break
        previous_size = chunk.block_size
        offset += chunk.size
    return problems
