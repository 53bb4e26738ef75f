"""The machine's memory: physical page frames and x64 4-level page tables.

Physical memory is one anonymous mapping, so the host backs only the frames that are
touched: a machine with gigabytes of pool costs what it uses. The page tables are real
PML4/PDPT/PD/PT pages in that physical memory, rooted at CR3, so a crash dump of the
frames is a faithful machine image. A software TLB (virtual page number -> physical page
address) keeps translation to one dict lookup; it is kept exactly in step with the tables. The page
table of each 2 MiB is remembered too, so a PTE is found without a walk: multi-page mappings
(big pool allocations) write each page table's share of PTEs in one go.

This module knows nothing of pools.
"""

import mmap
from collections.abc import Sequence

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..hooks import Hooks, MappingChanged
from ..packing import QWORD_VIEW, x64_struct

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

_QWORD = x64_struct("<Q")
# A page table's share of PTEs, read and written as SIGNED 64-bit integers: a PTE with NX
# (bit 63) is then a negative number within a C long, where as an unsigned one it is past
# sys.maxsize, and CPython steps a range of such numbers (a run of PTEs) and converts them
# in its slow big-integer arithmetic, several times the cost of the pack or unpack itself.
# The bits are the same; ``entry & PTE_ADDRESS_MASK`` reads a negative entry's frame alike.
_PTE_RUNS = [x64_struct(f"<{count}q") for count in range(0x201)]
_PTE_NX_SIGNED = PTE_NX - (1 << 64)  # PTE_NX as a signed 64-bit integer: -2**63
# map_pages' PTE flags, writable, with and without NX (signed, as _PTE_RUNS packs them).
_PTE_FLAGS_EXECUTABLE = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY | PTE_WRITABLE
_PTE_FLAGS_NX = _PTE_FLAGS_EXECUTABLE | _PTE_NX_SIGNED
_ZERO_PAGE = bytes(PAGE_SIZE)
# Zeros for a run of up to 16 frames, sliced without a copy (``bytes(n)`` for each run was an
# allocation and a memset before the copy into memory).
_ZERO_RUN = memoryview(bytes(16 * PAGE_SIZE))


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
        # Private: a page the machine never touched stays the host's zero page, never
        # faulted in, and reads as zeros (the crash dump writer leaves such pages as holes:
        # ``ntpool.dump.writer``); a forked process gets its own copy of what was written.
        self.private_mapping = hasattr(mmap, "MAP_PRIVATE")
        self.buffer = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE) if self.private_mapping \
            else mmap.mmap(-1, self.size)
        # The same bytes as an array of QWORDs (qwords[pa >> 3] is the 8 bytes at an 8-aligned
        # pa): one index reads or writes an aligned pointer or a POOL_HEADER's first 8 bytes,
        # about half what a Struct's unpack_from / pack_into costs. The view is in the host's
        # byte order, which must be x64's, and in its cheapest 8-byte integer (``packing``).
        self.qwords = memoryview(self.buffer).cast(QWORD_VIEW)
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

    def allocate_frames(self, count: int) -> Sequence[int] | None:
        """``count`` frames, anywhere, or None (and none taken) when memory runs out.

        The frames are the ones ``allocate_frame`` would give one call at a time; when they
        are a run of free frames (the usual case: memory is handed out in order), the run is
        taken with one slice and returned as a ``range``, which ``map_pages`` maps without
        a per-page step."""
        in_use = self.frame_in_use
        first = in_use.find(0, self._hint)
        if first > 0 and in_use.startswith(bytes(count), first):
            in_use[first:first + count] = b"\x01" * count
            self.frames_used += count
            self._hint = first + count
            return range(first, first + count)
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

    def allocate_contiguous(self, count: int, highest_pfn: int | None = None,
                            lowest_pfn: int = 0, boundary_pages: int = 0) -> int:
        """The first of ``count`` free frames in a row, all at or above ``lowest_pfn`` and at
        or below ``highest_pfn``, crossing no multiple of ``boundary_pages`` (0: any)."""
        limit = self.frame_count if highest_pfn is None else min(self.frame_count, highest_pfn + 1)
        run = bytes(count)
        first = self.frame_in_use.find(run, max(1, lowest_pfn), limit)
        if boundary_pages:
            if count > boundary_pages:
                first = -1
            while first >= 0 and first // boundary_pages != (first + count - 1) // boundary_pages:
                first = self.frame_in_use.find(run, (first // boundary_pages + 1) * boundary_pages,
                                               limit)
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

    def free_frames(self, frames: Sequence[int]) -> None:
        """``free_frame`` for each of ``frames`` (a run given as a ``range``: one slice)."""
        if not frames:
            return
        in_use = self.frame_in_use
        if isinstance(frames, range) and frames.step == 1:
            in_use[frames.start:frames.stop] = bytes(len(frames))
            lowest = frames.start
        else:
            for pfn in frames:
                in_use[pfn] = 0
            lowest = min(frames)
        self.frames_used -= len(frames)
        if lowest < self._hint:
            self._hint = lowest

    def zero_frame(self, pfn: int) -> None:
        base = pfn << PAGE_SHIFT
        self.buffer[base:base + PAGE_SIZE] = _ZERO_PAGE

    def zero_frames(self, frames: Sequence[int]) -> None:
        """``zero_frame`` for each of ``frames`` (a run given as a ``range``: one slice)."""
        if type(frames) is range and frames.step == 1:
            size = len(frames) << PAGE_SHIFT
            if size == PAGE_SIZE:  # one frame: the zero page itself, cheaper than a view's slice
                zeros = _ZERO_PAGE
            else:
                zeros = _ZERO_RUN[:size] if size <= len(_ZERO_RUN) else bytes(size)
            self.buffer[frames.start << PAGE_SHIFT:frames.stop << PAGE_SHIFT] = zeros
            return
        for pfn in frames:
            self.zero_frame(pfn)

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
        self.page_tables: dict[int, int] = {}  # va >> 21 -> physical address of its page table
        # MappingChanged is published when a present mapping is removed or replaced (a
        # hardware TLB, the native CPU's, must forget it).
        self.hooks = hooks if hooks is not None else Hooks()
        # Whether anyone listens for MappingChanged, kept by the hooks' watcher: the pool's
        # page give-back reads this bool instead of asking the hooks on every page.
        self.mappings_watched = bool(self.hooks.listening(MappingChanged))
        self.hooks.watch(MappingChanged, self._watch_mappings)

    def _watch_mappings(self, active: bool) -> None:
        self.mappings_watched = active

    def _new_table(self) -> int:
        pfn = self.physical.allocate_frame()
        self.physical.zero_frame(pfn)
        return pfn

    def _read_entry(self, table_pa: int, index: int) -> int:
        return _QWORD.unpack_from(self.physical.buffer, table_pa + index * 8)[0]

    def _write_entry(self, table_pa: int, index: int, value: int) -> None:
        _QWORD.pack_into(self.physical.buffer, table_pa + index * 8, value)

    def _pte_address(self, va: int, create: bool) -> int | None:
        """Physical address of the PTE for ``va``; builds missing tables when ``create``.

        A page table, once built, stays where it is for the machine's life (ntpool never
        frees one and only this method writes the entries above it), so the page table of
        each 2 MiB of address space is remembered after its first walk."""
        table_pa = self.page_tables.get(va >> 21)
        if table_pa is None:
            table_pa = self._walk_to_page_table(va, create)
            if table_pa is None:
                return None
            self.page_tables[va >> 21] = table_pa
        return table_pa + ((va >> PAGE_SHIFT) & 0x1FF) * 8

    def _walk_to_page_table(self, va: int, create: bool) -> int | None:
        table_pa = self.cr3 << PAGE_SHIFT
        for index in table_indices(va)[:3]:
            entry = self._read_entry(table_pa, index)
            if not entry & PTE_PRESENT:
                if not create:
                    return None
                pfn = self._new_table()
                entry = (pfn << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITABLE
                self._write_entry(table_pa, index, entry)
            table_pa = entry & PTE_ADDRESS_MASK
        return table_pa

    def map_page(self, va: int, pfn: int, writable: bool = True, executable: bool = False,
                 bits: int = 0) -> None:
        """Map ``va`` onto frame ``pfn``; ``bits``: more PTE bits (a cache attribute, PTE_USER)."""
        flags = PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY | bits
        if writable:
            flags |= PTE_WRITABLE
        if not executable:
            flags |= PTE_NX
        vpn = va >> PAGE_SHIFT
        base = pfn << PAGE_SHIFT
        # The PTE's address as _pte_address finds it, its usual case (a table known) inline.
        table_pa = self.page_tables.get(va >> 21)
        pte_pa = self._pte_address(va, create=True) if table_pa is None else \
            table_pa + (vpn & 0x1FF) * 8
        _QWORD.pack_into(self.physical.buffer, pte_pa, base | flags)
        tlb = self.tlb
        if tlb.get(vpn, base) != base:
            self.hooks.publish(MappingChanged(va))
        tlb[vpn] = base

    def _pte_runs(self, va: int, count: int, create: bool) -> list[tuple[int, int]]:
        """(PTE physical address, pages) for each page table's share of ``count`` pages from
        ``va``: a table's PTEs are consecutive, 8 bytes apart, so each table is walked to
        once, not once per page. Raises KeyError, before anything changes, when a table is
        missing and ``create`` is false."""
        first_vpn = va >> PAGE_SHIFT
        if count <= 0x200 - (first_vpn & 0x1FF):  # the usual case: all in one page table
            pte_pa = self._pte_address(va, create)
            if pte_pa is None:
                raise KeyError(f"{va:#x} is not mapped")
            return [(pte_pa, count)]
        runs = []
        done = 0
        while done < count:
            run = min(count - done, 0x200 - ((first_vpn + done) & 0x1FF))
            page = va + (done << PAGE_SHIFT)
            pte_pa = self._pte_address(page, create)
            if pte_pa is None:
                raise KeyError(f"{page:#x} is not mapped")
            runs.append((pte_pa, run))
            done += run
        return runs

    def map_pages(self, va: int, frames, executable: bool = False, bits: int = 0) -> None:
        """``map_page`` (writable; NX unless ``executable``; ``bits`` more in each PTE) for
        consecutive pages from ``va`` onto ``frames``.

        Each page table's share of the PTEs is written with one pack and the TLB learns the
        pages in one update. Pages mapped already take ``map_page``'s way (a replaced
        mapping must be announced to the native CPU)."""
        if len(frames) == 1:  # one page (a new page of small pool): map_page is that, cheaper
            self.map_page(va, frames[0], executable=executable, bits=bits)
            return
        first_vpn = va >> PAGE_SHIFT
        vpns = range(first_vpn, first_vpn + len(frames))
        if not self.tlb.keys().isdisjoint(vpns):
            for offset, pfn in enumerate(frames):
                self.map_page(va + (offset << PAGE_SHIFT), pfn, executable=executable, bits=bits)
            return
        flags = (_PTE_FLAGS_EXECUTABLE if executable else _PTE_FLAGS_NX) | bits
        if isinstance(frames, range) and frames.step == 1:
            # A run of frames: page addresses and PTEs both step by a page (the flags are
            # bits no page address uses).
            bases = range(frames.start << PAGE_SHIFT, frames.stop << PAGE_SHIFT, PAGE_SIZE)
            entries = range(bases.start | flags, bases.stop | flags, PAGE_SIZE)
        else:
            bases = [pfn << PAGE_SHIFT for pfn in frames]
            entries = [base | flags for base in bases]
        buffer = self.physical.buffer
        done = 0
        for pte_pa, run in self._pte_runs(va, len(frames), create=True):
            _PTE_RUNS[run].pack_into(buffer, pte_pa, *entries[done:done + run])
            done += run
        self.tlb.update(zip(vpns, bases))

    def unmap_pages(self, va: int, count: int) -> Sequence[int]:
        """``unmap_page`` for ``count`` consecutive mapped pages; their frames, in order (a
        ``range`` when they are a run, as ``allocate_frames`` gives them).

        As ``map_pages``: one read and one clear per page table's share of the PTEs."""
        buffer = self.physical.buffer
        entries: tuple[int, ...] = ()
        for pte_pa, run in self._pte_runs(va, count, create=False):
            entries += _PTE_RUNS[run].unpack_from(buffer, pte_pa)
            buffer[pte_pa:pte_pa + 8 * run] = bytes(8 * run)
        pop = self.tlb.pop
        first_vpn = va >> PAGE_SHIFT
        for vpn in range(first_vpn, first_vpn + count):
            pop(vpn, None)
        if self.hooks.listening(MappingChanged):
            for offset in range(count):
                self.hooks.publish(MappingChanged(va + (offset << PAGE_SHIFT)))
        first = entries[0] if entries else 0
        if entries == tuple(range(first, first + (count << PAGE_SHIFT), PAGE_SIZE)):
            pfn = (first & PTE_ADDRESS_MASK) >> PAGE_SHIFT  # a run of frames, flags alike
            return range(pfn, pfn + count)
        return [(entry & PTE_ADDRESS_MASK) >> PAGE_SHIFT for entry in entries]

    def set_pte_bits(self, va: int, bits: int) -> None:
        """OR ``bits`` into a mapped page's PTE (e.g. PTE_CACHE_DISABLE for noncached memory)."""
        pte_pa = self._pte_address(va, create=False)
        if pte_pa is None:
            raise KeyError(f"{va:#x} is not mapped")
        entry = _QWORD.unpack_from(self.physical.buffer, pte_pa)[0]
        _QWORD.pack_into(self.physical.buffer, pte_pa, entry | bits)

    def unmap_page(self, va: int, keep: int = 0) -> int:
        """Clear the PTE (leaving ``keep`` in its non-present bits) and return the frame."""
        table_pa = self.page_tables.get(va >> 21)  # as map_page: _pte_address's usual case inline
        pte_pa = self._pte_address(va, create=False) if table_pa is None else \
            table_pa + ((va >> PAGE_SHIFT) & 0x1FF) * 8
        if pte_pa is None:
            raise KeyError(f"{va:#x} is not mapped")
        buffer = self.physical.buffer
        entry = _QWORD.unpack_from(buffer, pte_pa)[0]
        _QWORD.pack_into(buffer, pte_pa, keep & ~PTE_PRESENT)
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
