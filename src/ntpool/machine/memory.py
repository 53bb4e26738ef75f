"""The machine's memory: physical page frames and x64 4-level page tables.

Physical memory is one anonymous mapping, so the host backs only the frames that are
touched: a machine with gigabytes of pool costs what it uses. The page tables are real
PML4/PDPT/PD/PT pages in that physical memory, rooted at CR3, so a crash dump of the
frames is a faithful machine image. A software TLB (virtual page number -> physical page
address) keeps translation to one dict lookup; it is kept exactly in step with the tables.

This module knows nothing of pools.
"""

import mmap
import struct

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..hooks import Hooks, MappingChanged

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_WRITE_THROUGH = 1 << 3
PTE_CACHE_DISABLE = 1 << 4
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_NX = 1 << 63
PTE_ADDRESS_MASK = 0x000F_FFFF_FFFF_F000

# Windows 7 x64 maps its page tables through PML4 entry 0x1ED (PTE base 0xFFFFF68000000000).
SELF_MAP_INDEX = 0x1ED
# ... and keeps its PML4 at physical 0x187000. Analysers that ignore the dump header's
# DirectoryTableBase (volatility3) look for a self-mapping PML4 only in fixed physical windows,
# this frame among them; a machine too small to have it takes its first free frame.
WINDOWS7_PML4_PFN = 0x187

_QWORD = struct.Struct("<Q")
_ZERO_PAGE = bytes(PAGE_SIZE)


def canonical(va: int) -> int:
    """Sign-extend bit 47, as x64 requires of every address."""
    va &= 0xFFFF_FFFF_FFFF
    return va | 0xFFFF_0000_0000_0000 if va & (1 << 47) else va


def table_indices(va: int) -> tuple[int, int, int, int]:
    return ((va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF)


class OutOfFrames(MemoryError):
    """No free physical page frame is left."""


class PhysicalMemory:
    """Page frames backed sparsely by the host; frame 0 is never handed out."""

    def __init__(self, size_bytes: int):
        if size_bytes < 16 * PAGE_SIZE:
            raise ValueError(f"physical memory of {size_bytes} bytes is too small (16 pages minimum)")
        self.frame_count = size_bytes // PAGE_SIZE
        self.size = self.frame_count * PAGE_SIZE
        self.buffer = mmap.mmap(-1, self.size)
        # One byte a frame: 1 while the frame holds something the machine uses.
        self.frame_in_use = bytearray(self.frame_count)
        self.frame_in_use[0] = 1
        self.frames_used = 1
        self._hint = 1

    def allocate_frame(self) -> int:
        pfn = self.frame_in_use.find(0, self._hint)
        if pfn < 0:
            pfn = self.frame_in_use.find(0, 1)
            if pfn < 0:
                raise OutOfFrames("no free physical page frame")
        self.frame_in_use[pfn] = 1
        self.frames_used += 1
        self._hint = pfn + 1
        return pfn

    def allocate_frames(self, count: int) -> list[int] | None:
        """``count`` frames, anywhere, or None (and none taken) when memory runs out."""
        frames = []
        try:
            for _ in range(count):
                frames.append(self.allocate_frame())
        except OutOfFrames:
            for pfn in frames:
                self.free_frame(pfn)
            return None
        return frames

    def claim_frame(self, pfn: int) -> int | None:
        """Take frame ``pfn`` itself if it exists and is free (None otherwise)."""
        if not 0 < pfn < self.frame_count or self.frame_in_use[pfn]:
            return None
        self.frame_in_use[pfn] = 1
        self.frames_used += 1
        return pfn

    def allocate_contiguous(self, count: int, highest_pfn: int | None = None) -> int:
        """The first of ``count`` free frames in a row, all at or below ``highest_pfn``."""
        limit = self.frame_count if highest_pfn is None else min(self.frame_count, highest_pfn + 1)
        first = self.frame_in_use.find(bytes(count), 1, limit)
        if first < 0:
            raise OutOfFrames(f"no {count} contiguous free frames below pfn {limit:#x}")
        self.frame_in_use[first:first + count] = b"\x01" * count
        self.frames_used += count
        return first

    def free_frame(self, pfn: int) -> None:
        # The frame keeps its bytes: memory handed out again comes back uninitialized.
        self.frame_in_use[pfn] = 0
        self.frames_used -= 1
        if pfn < self._hint:
            self._hint = pfn

    def zero_frame(self, pfn: int) -> None:
        base = pfn << PAGE_SHIFT
        self.buffer[base:base + PAGE_SIZE] = _ZERO_PAGE

    def _checked(self, pa, size) -> None:
        if isinstance(pa, bool) or not isinstance(pa, int) or isinstance(size, bool) or \
                not isinstance(size, int):
            raise TypeError(f"a physical address and size are ints, not {type(pa).__name__} "
                            f"and {type(size).__name__}")
        if pa < 0 or size < 0 or pa + size > len(self.buffer):
            raise ValueError(f"{size} bytes at physical address {pa:#x} are not in this "
                             f"machine's {len(self.buffer):#x} bytes of physical memory")

    def read(self, pa: int, size: int) -> bytes:
        self._checked(pa, size)
        return bytes(self.buffer[pa:pa + size])

    def write(self, pa: int, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self._checked(pa, len(data))
        self.buffer[pa:pa + len(data)] = data


class AddressSpace:
    """The kernel's virtual address space: page tables in physical memory, rooted at CR3."""

    def __init__(self, physical: PhysicalMemory, hooks: Hooks | None = None):
        self.physical = physical
        root = physical.claim_frame(WINDOWS7_PML4_PFN)
        if root is None:
            root = physical.allocate_frame()
        physical.zero_frame(root)
        self.cr3 = root
        # The self-map entry lets a reader find the tables from CR3 alone. No NX bit, as on
        # Windows 7: volatility3 rejects a PML4 whose entries (NX included) point past the dump.
        self._write_entry(self.cr3 << PAGE_SHIFT, SELF_MAP_INDEX,
                          (self.cr3 << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED | PTE_DIRTY)
        self.tlb: dict[int, int] = {}  # virtual page number -> physical address of the page
        # MappingChanged is published when a present mapping is removed or replaced (a
        # hardware TLB, the native CPU's, must forget it).
        self.hooks = hooks if hooks is not None else Hooks()

    def _new_table(self) -> int:
        pfn = self.physical.allocate_frame()
        self.physical.zero_frame(pfn)
        return pfn

    def _read_entry(self, table_pa: int, index: int) -> int:
        return _QWORD.unpack_from(self.physical.buffer, table_pa + index * 8)[0]

    def _write_entry(self, table_pa: int, index: int, value: int) -> None:
        _QWORD.pack_into(self.physical.buffer, table_pa + index * 8, value)

    def _pte_address(self, va: int, create: bool) -> int | None:
        """Physical address of the PTE for ``va``; builds missing tables when ``create``."""
        table_pa = self.cr3 << PAGE_SHIFT
        indices = table_indices(va)
        for index in indices[:3]:
            entry = self._read_entry(table_pa, index)
            if not entry & PTE_PRESENT:
                if not create:
                    return None
                pfn = self._new_table()
                entry = (pfn << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITABLE
                self._write_entry(table_pa, index, entry)
            table_pa = entry & PTE_ADDRESS_MASK
        return table_pa + indices[3] * 8

    def map_page(self, va: int, pfn: int, writable: bool = True, executable: bool = False) -> None:
        flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY
        if writable:
            flags |= PTE_WRITABLE
        if not executable:
            flags |= PTE_NX
        pte_pa = self._pte_address(va, create=True)
        _QWORD.pack_into(self.physical.buffer, pte_pa, (pfn << PAGE_SHIFT) | flags)
        if self.tlb.get(va >> PAGE_SHIFT, pfn << PAGE_SHIFT) != pfn << PAGE_SHIFT:
            self.hooks.publish(MappingChanged(va))
        self.tlb[va >> PAGE_SHIFT] = pfn << PAGE_SHIFT

    def map_pages(self, va: int, frames) -> None:
        """``map_page`` (writable, NX) for consecutive pages from ``va`` onto ``frames``.

        The PTEs of one page table are consecutive, 8 bytes apart: the tables are walked
        once per page table (512 pages), not once per page."""
        flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY | PTE_WRITABLE | PTE_NX
        buffer, tlb, pack = self.physical.buffer, self.tlb, _QWORD.pack_into
        pte_pa = 0
        for offset, pfn in enumerate(frames):
            page = va + (offset << PAGE_SHIFT)
            vpn = page >> PAGE_SHIFT
            if not offset or not vpn & 0x1FF:  # the first page, or the next page table's
                pte_pa = self._pte_address(page, create=True)
            else:
                pte_pa += 8
            pack(buffer, pte_pa, (pfn << PAGE_SHIFT) | flags)
            if tlb.get(vpn, pfn << PAGE_SHIFT) != pfn << PAGE_SHIFT:
                self.hooks.publish(MappingChanged(page))
            tlb[vpn] = pfn << PAGE_SHIFT

    def unmap_pages(self, va: int, count: int) -> list[int]:
        """``unmap_page`` for ``count`` consecutive mapped pages; their frames, in order."""
        buffer, tlb = self.physical.buffer, self.tlb
        unpack, pack = _QWORD.unpack_from, _QWORD.pack_into
        publish = self.hooks.listening(MappingChanged)
        frames = []
        pte_pa = None
        for offset in range(count):
            page = va + (offset << PAGE_SHIFT)
            vpn = page >> PAGE_SHIFT
            if pte_pa is None or not vpn & 0x1FF:  # the first page, or the next page table's
                pte_pa = self._pte_address(page, create=False)
                if pte_pa is None:
                    raise KeyError(f"{page:#x} is not mapped")
            else:
                pte_pa += 8
            frames.append((unpack(buffer, pte_pa)[0] & PTE_ADDRESS_MASK) >> PAGE_SHIFT)
            pack(buffer, pte_pa, 0)
            tlb.pop(vpn, None)
            if publish:
                self.hooks.publish(MappingChanged(page))
        return frames

    def set_pte_bits(self, va: int, bits: int) -> None:
        """OR ``bits`` into a mapped page's PTE (e.g. PTE_CACHE_DISABLE for noncached memory)."""
        pte_pa = self._pte_address(va, create=False)
        if pte_pa is None:
            raise KeyError(f"{va:#x} is not mapped")
        entry = _QWORD.unpack_from(self.physical.buffer, pte_pa)[0]
        _QWORD.pack_into(self.physical.buffer, pte_pa, entry | bits)

    def unmap_page(self, va: int, keep: int = 0) -> int:
        """Clear the PTE (leaving ``keep`` in its non-present bits) and return the frame."""
        pte_pa = self._pte_address(va, create=False)
        if pte_pa is None:
            raise KeyError(f"{va:#x} is not mapped")
        entry = _QWORD.unpack_from(self.physical.buffer, pte_pa)[0]
        _QWORD.pack_into(self.physical.buffer, pte_pa, keep & ~PTE_PRESENT)
        self.tlb.pop(va >> PAGE_SHIFT, None)
        if self.hooks.listening(MappingChanged):
            self.hooks.publish(MappingChanged(va))
        return (entry & PTE_ADDRESS_MASK) >> PAGE_SHIFT

    def pte(self, va: int) -> int:
        """The raw PTE for ``va`` (0 when no table covers it)."""
        pte_pa = self._pte_address(va, create=False)
        return 0 if pte_pa is None else _QWORD.unpack_from(self.physical.buffer, pte_pa)[0]

    def walk(self, va: int) -> int | None:
        """Translate through the page tables themselves (not the TLB)."""
        entry = self.pte(va)
        if not entry & PTE_PRESENT:
            return None
        return (entry & PTE_ADDRESS_MASK) | (va & (PAGE_SIZE - 1))

    def translate(self, va: int) -> int | None:
        base = self.tlb.get(va >> PAGE_SHIFT)
        return None if base is None else base | (va & (PAGE_SIZE - 1))
