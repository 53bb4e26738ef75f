"""Read a Windows x64 kernel crash dump, treating the file as untrusted.

Every count and offset read from the file is checked against the file's size before it is
used, so a truncated, malformed or lying file gives a ``DumpFormatError`` with one clear
sentence, never a crash, a hang or memory out of proportion to the file. The file is
mapped read-only; pages are sliced out of the mapping on demand.

Physical memory is described as runs (first frame, frame count, file offset), sorted and
non-overlapping, whichever the dump type; virtual addresses resolve through the x64 page
tables rooted at the header's DirectoryTableBase.
"""

import mmap
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from itertools import compress, repeat
from operator import and_, ne, sub
from typing import Iterator, NamedTuple

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..drivers import LDR_BASE_DLL_NAME, LDR_DLL_BASE, parse_call_site_table
from ..machine.memory import PTE_ADDRESS_MASK, PTE_PRESENT, canonical
from ..pool.layout import BIG_PAGE_FREE, POOL_TRACKER_BIG_PAGES, WINDOWS7
from ..pool.segment_heap.layout import big_page_type_of, segment_heap_layouts
from ..windows import windows_version
from . import format as f
from . import image as kernel_image

PTE_LARGE = 1 << 7
MAX_PHYSICAL_PAGE = 1 << 40  # 52-bit physical addresses
BITMAP_CHUNK = 1 << 16  # bitmap bytes examined at a time
_QWORD = struct.Struct("<Q")
_DWORD = struct.Struct("<I")


class DumpFormatError(ValueError):
    """The file is not a crash dump this reader can trust (the message says why)."""


class MemoryReadError(LookupError):
    """A virtual or physical address the dump does not hold."""

    def __init__(self, address: int, what: str = "virtual"):
        self.address, self.what = address, what
        super().__init__(f"memory at {what} address {address:#x} is not in the dump")

    def __reduce__(self):  # as its arguments (a forked worker's error is pickled to the parent)
        return type(self), (self.address, self.what), self.__dict__


class Run(NamedTuple):
    first: int  # page frame number
    count: int
    offset: int  # file offset of the first frame


class TrackerEntry(NamedTuple):
    """One POOL_TRACKER_TABLE entry as the dump holds it."""

    Key: int
    NonPagedAllocs: int
    NonPagedFrees: int
    NonPagedBytes: int
    PagedAllocs: int
    PagedFrees: int
    PagedBytes: int


class BigPage(NamedTuple):
    """One POOL_TRACKER_BIG_PAGES entry in use."""

    Va: int
    Key: int
    PoolType: int
    NumberOfBytes: int


class PoolRange(NamedTuple):
    name: str
    base_type: int  # 0 nonpaged, 1 paged
    start: int
    end: int  # exclusive


class HeapRange(NamedTuple):
    """Segment heap: one heap's range and its _SEGMENT_HEAP."""

    name: str
    base_type: int
    start: int
    end: int
    heap_va: int
    index: int  # PoolNode.Heaps[] index: 0 NonPagedPool, 1 NonPagedPoolNx, 2 PagedPool


HEAP_NAMES = {0: "NonPagedPool", 1: "NonPagedPoolNx", 2: "PagedPool"}


_UNICODE_STRING = struct.Struct("<HHxxxxQ")
MAX_MODULES = 4096
MAX_LOOKASIDES = 65536  # lookaside lists read from one list head at most
# GENERAL_LOOKASIDE (Windows 7 x64): Depth .. Size, Allocate, Free, ListEntry, Last* counters.
_GENERAL_LOOKASIDE = struct.Struct("<HHIIIIIIIQQQQII")
GENERAL_LOOKASIDE_FIELDS = ("Depth", "MaximumDepth", "TotalAllocates", "AllocateMisses",
                            "TotalFrees", "FreeMisses", "Type", "Tag", "Size", "Allocate",
                            "Free", "Flink", "Blink", "LastTotalAllocates", "LastAllocateMisses")
GENERAL_LOOKASIDE_LIST_ENTRY = 0x40


_PREADV = getattr(os, "preadv", None)


class DumpReader:
    """An open crash dump: header fields, physical and virtual reads, the pool structures."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = None
        self._map = None
        try:
            self._file = open(self.path, "rb")
            self.size = os.fstat(self._file.fileno()).st_size
            if self.size < f.HEADER_SIZE:
                raise DumpFormatError(f"{self.path}: {self.size} bytes is too short for a crash "
                                      f"dump (the header alone is {f.HEADER_SIZE:#x} bytes)")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse_header()
        except OSError as error:
            self.close()
            raise DumpFormatError(f"{self.path}: cannot read: {error.strerror or error}") from None
        except BaseException:
            self.close()
            raise
        self._translations: dict[int, int | None] = {}
        self._kdbg: dict | None = None
        self._call_sites: list | None = None
        self._site_lookups: list | None = None
        self._site_streams: list | None = None
        self._tracker_entries: list | None = None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, reason: str):
        raise DumpFormatError(f"{self.path}: {reason}")

    # --- header --------------------------------------------------------------------------

    def _u32(self, offset: int) -> int:
        return _DWORD.unpack_from(self._map, offset)[0]

    def _u64(self, offset: int) -> int:
        return _QWORD.unpack_from(self._map, offset)[0]

    def _parse_header(self) -> None:
        m = self._map
        if m[0:4] != f.SIGNATURE:
            self._fail("not a crash dump (no PAGE signature)")
        if m[4:8] != f.VALID_DUMP64:
            if m[4:8] == b"DUMP":
                self._fail("a 32-bit crash dump; only x64 (DU64) dumps are read")
            self._fail("not a 64-bit crash dump (no DU64 signature)")
        machine = self._u32(f.OFF_MACHINE_IMAGE_TYPE)
        if machine != f.MACHINE_AMD64:
            self._fail(f"machine type {machine:#x} is not x64 ({f.MACHINE_AMD64:#x})")
        self.major_version = self._u32(f.OFF_MAJOR)
        self.minor_version = self._u32(f.OFF_MINOR)
        self.directory_table_base = self._u64(f.OFF_DIRECTORY_TABLE_BASE) & PTE_ADDRESS_MASK
        self.number_processors = self._u32(f.OFF_NUMBER_PROCESSORS)
        self.bugcheck_code = self._u32(f.OFF_BUGCHECK_CODE)
        self.bugcheck_parameters = tuple(self._u64(f.OFF_BUGCHECK_PARAMETERS + 8 * i) for i in range(4))
        self.kd_debugger_data_block = self._u64(f.OFF_KD_DEBUGGER_DATA_BLOCK)
        comment = bytes(m[f.OFF_COMMENT:f.OFF_COMMENT + f.COMMENT_SIZE])
        self.comment = comment.split(b"\0", 1)[0].decode("ascii", "replace")
        if comment.startswith(f.FILL):
            self.comment = ""
        self.dump_type = self._u32(f.OFF_DUMP_TYPE)
        if self.dump_type == f.DUMP_TYPE_FULL:
            self.runs = self._full_runs()
        elif self.dump_type == f.DUMP_TYPE_BITMAP:
            self.runs = self._bitmap_runs()
        else:
            self._fail(f"dump type {self.dump_type} is not supported (1 full or 5 bitmap)")
        self._run_firsts = [run.first for run in self.runs]
        self._run_offsets = [run.offset for run in self.runs]
        self.page_count = sum(run.count for run in self.runs)

    def _full_runs(self) -> list[Run]:
        count, pages = f.PHYSICAL_MEMORY_DESCRIPTOR.unpack_from(self._map, f.OFF_PHYSICAL_MEMORY_BLOCK)
        if count == 0 or count > f.MAX_RUNS:
            self._fail(f"the header lists {count} physical memory runs (1 to {f.MAX_RUNS} fit)")
        room = (self.size - f.HEADER_SIZE) // PAGE_SIZE
        runs, total, end = [], 0, 0
        for index in range(count):
            first, length = f.PHYSICAL_MEMORY_RUN.unpack_from(self._map, f.OFF_RUNS + 16 * index)
            if length == 0 or first >= MAX_PHYSICAL_PAGE or length > MAX_PHYSICAL_PAGE:
                self._fail(f"physical memory run {index} ({first:#x}, {length:#x} pages) is impossible")
            if first < end:
                self._fail(f"physical memory run {index} overlaps or precedes the one before it")
            if total + length > room:
                self._fail(f"truncated: the runs promise at least {total + length} pages, "
                           f"the file holds {room}")
            runs.append(Run(first, length, f.HEADER_SIZE + total * PAGE_SIZE))
            total += length
            end = first + length
        if pages != total:
            self._fail(f"the header says {pages} pages but its runs add up to {total}")
        return runs

    def _bitmap_runs(self) -> list[Run]:
        base = f.HEADER_SIZE
        if self.size < base + f.SUMMARY_OFF_BITMAP:
            self._fail("truncated: the bitmap dump's summary header is missing")
        signature = self._map[base:base + 4]
        if signature not in (f.SUMMARY_SIGNATURE, f.SUMMARY_SIGNATURE_FULL) or \
                self._map[base + 4:base + 8] != f.SUMMARY_VALID_DUMP:
            self._fail("bitmap dump without its SDMP/FDMP DUMP summary header")
        first_page = self._u64(base + f.SUMMARY_OFF_FIRST_PAGE)
        present = self._u64(base + f.SUMMARY_OFF_PRESENT_PAGES)
        bits = self._u64(base + f.SUMMARY_OFF_BITMAP_BITS)
        bitmap_start = base + f.SUMMARY_OFF_BITMAP
        bitmap_bytes = (bits + 7) // 8
        if bits == 0 or bitmap_start + bitmap_bytes > self.size:
            self._fail(f"truncated: the bitmap of {bits} pages does not fit in the file")
        if first_page < bitmap_start + bitmap_bytes or first_page > self.size:
            self._fail(f"the first page offset {first_page:#x} is outside the file's page area")
        if present > (self.size - first_page) // PAGE_SIZE:
            self._fail(f"truncated: the summary promises {present} pages, the file holds "
                       f"{(self.size - first_page) // PAGE_SIZE}")
        runs = self._runs_from_bitmap(bitmap_start, bits, first_page, present)
        listed = sum(run.count for run in runs)
        if listed != present:
            self._fail(f"the summary says {present} pages but the bitmap lists {listed}")
        return runs

    def _runs_from_bitmap(self, start: int, bits: int, first_page: int, present: int) -> list[Run]:
        """Runs of set bits, read a chunk at a time; stops as soon as more than ``present``."""
        runs: list[Run] = []
        run_first = -1
        listed = 0
        offset = first_page
        for chunk_start in range(0, bits, BITMAP_CHUNK * 8):
            chunk_bits = min(BITMAP_CHUNK * 8, bits - chunk_start)
            raw = self._map[start + chunk_start // 8:start + (chunk_start + chunk_bits + 7) // 8]
            value = int.from_bytes(raw, "little") & ((1 << chunk_bits) - 1)
            text = format(value, "b").zfill(chunk_bits)[::-1] if value else "0" * chunk_bits
            pos = 0
            while pos < chunk_bits:
                want = "0" if run_first >= 0 else "1"
                found = text.find(want, pos)
                stop = chunk_bits if found < 0 else found
                if run_first >= 0:
                    listed += stop - pos
                    if listed > present:
                        self._fail(f"the summary says {present} pages but the bitmap lists more")
                    if found >= 0:
                        runs.append(Run(run_first, chunk_start + stop - run_first, offset))
                        offset += (chunk_start + stop - run_first) * PAGE_SIZE
                        run_first = -1
                elif found >= 0:
                    run_first = chunk_start + found
                pos = stop
        if run_first >= 0:
            runs.append(Run(run_first, bits - run_first, offset))
        return runs

    # --- physical memory -----------------------------------------------------------------

    def frame_offset(self, pfn: int) -> int | None:
        """File offset of page frame ``pfn``, or None when the dump does not hold it."""
        index = bisect_right(self._run_firsts, pfn) - 1
        if index < 0:
            return None
        run = self.runs[index]
        if pfn - run.first >= run.count:
            return None
        return run.offset + ((pfn - run.first) << PAGE_SHIFT)

    def frame_at_offset(self, offset: int) -> int | None:
        """The page frame whose bytes are at file ``offset`` (inverse of ``frame_offset``)."""
        index = bisect_right(self._run_offsets, offset) - 1
        if index < 0:
            return None
        run = self.runs[index]
        page = (offset - run.offset) >> PAGE_SHIFT
        return run.first + page if page < run.count else None

    def read_physical(self, pa: int, size: int) -> bytes:
        out = []
        while size > 0:
            offset = self.frame_offset(pa >> PAGE_SHIFT)
            if offset is None:
                raise MemoryReadError(pa, "physical")
            length = min(size, PAGE_SIZE - (pa & 0xFFF))
            start = offset + (pa & 0xFFF)
            out.append(self._map[start:start + length])
            pa += length
            size -= length
        return b"".join(out)

    def read_file_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the file's bytes from ``offset`` (bulk scans: a read into a
        reused buffer faults no page of the mapping in, so memory stays flat)."""
        if offset < 0 or offset + len(view) > self.size:
            self._fail(f"truncated: {len(view)} bytes at file offset {offset:#x} are past its end")
        done = 0
        while done < len(view):
            if _PREADV is not None:  # at an offset of its own: forked workers share the file
                got = _PREADV(self._file.fileno(), [view[done:]], offset + done)
            else:
                self._file.seek(offset + done)
                got = self._file.readinto(view[done:])
            if not got:
                self._fail(f"truncated: the file ended at {offset + done:#x} while being read")
            done += got

    @property
    def mapping(self):
        """The read-only mapping of the whole file (for bulk scans)."""
        return self._map

    # --- virtual memory ------------------------------------------------------------------

    def _entry(self, table_pa: int, index: int) -> int | None:
        offset = self.frame_offset(table_pa >> PAGE_SHIFT)
        if offset is None:
            return None
        return _QWORD.unpack_from(self._map, offset + index * 8)[0]

    def _translate_page(self, vpn: int) -> int | None:
        va = vpn << PAGE_SHIFT
        table = self.directory_table_base
        shifts = (39, 30, 21, 12)
        for level, shift in enumerate(shifts):
            entry = self._entry(table, (va >> shift) & 0x1FF)
            if entry is None or not entry & PTE_PRESENT:
                return None
            if level in (1, 2) and entry & PTE_LARGE:
                span = (1 << shift) - 1
                return (entry & PTE_ADDRESS_MASK & ~span) | (va & span & ~0xFFF)
            table = entry & PTE_ADDRESS_MASK
        return table

    def translate(self, va: int) -> int | None:
        """The physical address of ``va`` through the dump's page tables, or None."""
        vpn = canonical(va) >> PAGE_SHIFT
        if vpn not in self._translations:
            if len(self._translations) > 1 << 20:
                self._translations.clear()
            self._translations[vpn] = self._translate_page(vpn)
        base = self._translations[vpn]
        return None if base is None else base | (va & 0xFFF)

    def read(self, va: int, size: int) -> bytes:
        """``size`` bytes at virtual ``va``; MemoryReadError where the dump does not hold them."""
        if size < 0 or size > self.size:
            raise MemoryReadError(va)
        if size >= BULK_READ_BYTES:  # a table of megabytes (the allocation-site maps)
            whole = self._read_by_runs(va, size)
            if whole is not None:
                return whole
        out = []
        while size > 0:
            pa = self.translate(va)
            if pa is None:
                raise MemoryReadError(va)
            length = min(size, PAGE_SIZE - (va & 0xFFF))
            try:
                out.append(self.read_physical(pa, length))
            except MemoryReadError:
                raise MemoryReadError(va) from None
            va += length
            size -= length
        return b"".join(out)

    def _read_by_runs(self, va: int, size: int) -> bytes | None:
        """``read``'s bytes, a run of pages at a time (``mapped_runs``: the page tables cut
        where their frames stop following on in the file), not a page at a time; None where
        the runs do not hold all of them (a page not mapped, or mapped by a large page: the
        page-by-page way then gives the bytes, or says which page is missing)."""
        end = va + size
        parts = []
        at = va
        for run_va, offset, count in self.mapped_runs(va, end):
            run_end = run_va + (count << PAGE_SHIFT)
            if run_end <= at:
                continue
            if run_va > at:
                return None
            taken = min(end, run_end) - at
            start = offset + (at - run_va)
            parts.append(self._map[start:start + taken])
            at += taken
            if at >= end:
                return b"".join(parts)
        return None

    def page(self, va: int) -> bytes:
        return self.read(va & ~0xFFF, PAGE_SIZE)

    def read_u64(self, va: int) -> int:
        return _QWORD.unpack(self.read(va, 8))[0]

    def mapped_pages(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """(page va, file offset) of every 4 KiB page mapped in [start, end) and in the dump."""
        for va, offset, count in self.mapped_runs(start, end):
            for page in range(count):
                yield va + (page << PAGE_SHIFT), offset + (page << PAGE_SHIFT)

    def mapped_runs(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(first page va, its file offset, pages) for the 4 KiB pages mapped in [start, end)
        and in the dump, in address order, a run where both address and file offset follow
        on (within one page table: a caller may join runs that meet)."""
        start &= ~0xFFF
        # Each table is walked once: a lying dump whose tables point back at each other
        # (as the self-map does) cannot make the walk loop or explode.
        yield from self._walk_level(self.directory_table_base, 0, start, end, 0, set())

    def _walk_level(self, table_pa: int, level: int, start: int, end: int, prefix: int,
                    visited: set):
        offset = self.frame_offset(table_pa >> PAGE_SHIFT)
        if offset is None or table_pa in visited:
            return
        visited.add(table_pa)
        shift = 39 - 9 * level
        span = 1 << shift
        first = (start >> shift) & 0x1FF if canonical(prefix) <= start else 0
        if level == 3:  # its entries read from its bytes only where they are needed
            raw = self._map[offset:offset + PAGE_SIZE]
            yield from self._page_table_runs(None if len(raw) == PAGE_SIZE else struct.unpack_from("<512Q", raw),
                                             canonical(prefix), first, start, end, raw)
            return
        entries = struct.unpack_from("<512Q", self._map, offset)
        for index in range(first, 512):
            va = canonical(prefix | (index << shift))
            if va >= end:
                return
            if va + span <= start:
                continue
            entry = entries[index]
            if entry & PTE_PRESENT and not entry & PTE_LARGE:
                yield from self._walk_level(entry & PTE_ADDRESS_MASK, level + 1, start, end,
                                            prefix | (index << shift), visited)

    def _page_table_runs(self, entries, base: int, first: int, start: int, end: int, raw: bytes = b""):
        """The runs of one page table's present entries whose frames the dump holds (``raw``:
        the table's bytes, for finding a few stretches of consecutive frames quickly;
        ``entries`` None: read from them where needed)."""
        last = min(512, (end - base + PAGE_SIZE - 1) >> PAGE_SHIFT)
        first = max(first, (start - base) >> PAGE_SHIFT, 0)
        if first >= last:
            return
        # A table of a few stretches of consecutive frames (the common case; ntpool's own tables
        # have two: the frame of the next table is taken between two pool pages'): the
        # stretches found on all entries at once, each looked up in the dump's runs.
        stretches = _consecutive_stretches(raw, first, last) if len(raw) == PAGE_SIZE else None
        if stretches is not None:
            yield from self._stretch_runs(raw, stretches, base)
            return
        if entries is None:
            entries = struct.unpack("<512Q", raw)
        entry = entries[first]
        pfn = (entry & PTE_ADDRESS_MASK) >> PAGE_SHIFT
        count = last - first
        # The same, for a caller without the table's bytes: one comparison made in C.
        if entry & PTE_PRESENT and pfn + count <= MAX_PHYSICAL_PAGE and \
                entries[first:last] == tuple(range(entry, entry + (count << PAGE_SHIFT), PAGE_SIZE)):
            held = bisect_right(self._run_firsts, pfn) - 1
            if held >= 0 and pfn + count <= self.runs[held].first + self.runs[held].count:
                yield base + (first << PAGE_SHIFT), \
                    self.runs[held].offset + ((pfn - self.runs[held].first) << PAGE_SHIFT), count
                return
        # Otherwise the table is cut where its frames stop following on, found in C (an entry's
        # address and present bit less the one before it is a page), and each stretch of
        # consecutive frames is looked up in the dump's runs at once (``_held``).
        kept = list(map(and_, entries[first:last], repeat(PTE_ADDRESS_MASK | PTE_PRESENT)))
        cuts = [0, *compress(range(1, len(kept)), map(ne, map(sub, kept[1:], kept), repeat(PAGE_SIZE))),
                len(kept)]
        yield from _joined(piece for begin, stop in zip(cuts, cuts[1:]) if kept[begin] & PTE_PRESENT
                           for piece in self._held(kept[begin] >> PAGE_SHIFT, stop - begin,
                                                   base + ((first + begin) << PAGE_SHIFT)))

    def _stretch_runs(self, raw: bytes, stretches: list, base: int):
        """The dump's runs for stretches of a page table (``raw``, its bytes) whose entries map
        consecutive frames, joined where they follow on in memory and in the file (as the cut
        path joins them)."""
        firsts = [_QWORD.unpack_from(raw, begin << 3)[0] for begin, _stop in stretches]
        yield from _joined(piece for (begin, stop), entry in zip(stretches, firsts) if entry & PTE_PRESENT
                           for piece in self._held((entry & PTE_ADDRESS_MASK) >> PAGE_SHIFT,
                                                   stop - begin, base + (begin << PAGE_SHIFT)))

    def _held(self, pfn: int, pages: int, va: int):
        """(va, file offset, pages): the parts of frames [pfn, pfn + pages), mapped from ``va``,
        that the dump holds, each frame found as ``frame_offset`` finds it."""
        end = pfn + pages
        firsts = self._run_firsts
        while pfn < end:
            held = bisect_right(firsts, pfn) - 1
            following = firsts[held + 1] if held + 1 < len(firsts) else end  # the next run's first frame
            run = self.runs[held] if held >= 0 else None
            if run is not None and pfn - run.first < run.count:
                take = min(end, run.first + run.count, following) - pfn
                yield va, run.offset + ((pfn - run.first) << PAGE_SHIFT), take
            else:  # not held up to the next run
                take = min(end, following) - pfn
            pfn += take
            va += take << PAGE_SHIFT

    # --- the debugger data -----------------------------------------------------------------

    def debugger_data(self) -> dict:
        """Fields of KDDEBUGGER_DATA64 and ntpool's NTPL block (DumpFormatError if absent)."""
        if self._kdbg is None:
            self._kdbg = self._read_debugger_data()
        return self._kdbg

    def _block(self, va: int, tag: bytes, size: int) -> bytes:
        try:
            raw = self.read(va, size)
        except MemoryReadError:
            self._fail(f"the {tag.decode()} debugger data block at {va:#x} is not in the dump")
        _, _, owner, declared = f.DEBUG_DATA_HEADER.unpack_from(raw)
        if owner != tag or declared < size:
            self._fail(f"no {tag.decode()} debugger data block at {va:#x}")
        return raw

    def _read_debugger_data(self) -> dict:
        kdbg = self._block(self.kd_debugger_data_block, f.KDBG_OWNER_TAG, f.KDDEBUGGER_DATA64_SIZE)
        ntpl_va = _QWORD.unpack_from(kdbg, 0)[0]
        ntpl = self._block(ntpl_va, f.NTPL_OWNER_TAG, f.NTPL_V1_SIZE)
        declared = f.DEBUG_DATA_HEADER.unpack_from(ntpl)[3]
        if declared >= f.NTPL_SIZE:
            ntpl = self._block(ntpl_va, f.NTPL_OWNER_TAG, f.NTPL_SIZE)
        else:  # a version-1 block: a Windows 7 machine
            ntpl = ntpl + bytes(f.NTPL_SIZE - len(ntpl))

        def q(raw, offset):
            return _QWORD.unpack_from(raw, offset)[0]

        return {
            "KernBase": q(kdbg, f.KDBG_KERN_BASE),
            "MmNonPagedPoolStart": q(kdbg, f.KDBG_MM_NONPAGED_POOL_START),
            "MmNonPagedPoolEnd": q(kdbg, f.KDBG_MM_NONPAGED_POOL_END),
            "MmPagedPoolStart": q(kdbg, f.KDBG_MM_PAGED_POOL_START),
            "MmPagedPoolEnd": q(kdbg, f.KDBG_MM_PAGED_POOL_END),
            "PoolTrackTable": q(kdbg, f.KDBG_POOL_TRACK_TABLE),
            "PoolTrackTableSize": q(ntpl, f.NTPL_POOL_TRACK_TABLE_SIZE),
            "PoolBigPageTable": q(ntpl, f.NTPL_POOL_BIG_PAGE_TABLE),
            "PoolBigPageTableSize": q(ntpl, f.NTPL_POOL_BIG_PAGE_TABLE_SIZE),
            "NonPagedPoolListHeads": q(ntpl, f.NTPL_NONPAGED_POOL_LIST_HEADS),
            "PagedPoolListHeads": q(ntpl, f.NTPL_PAGED_POOL_LIST_HEADS),
            "BugCheckContext": q(ntpl, f.NTPL_BUGCHECK_CONTEXT),
            "PsLoadedModuleList": q(kdbg, f.KDBG_PS_LOADED_MODULE_LIST),
            "CallSiteTable": q(ntpl, f.NTPL_CALL_SITE_TABLE),
            "CallSiteTableBytes": q(ntpl, f.NTPL_CALL_SITE_TABLE_BYTES),
            "VerifierTrackTable": q(ntpl, f.NTPL_VERIFIER_TRACK_TABLE),
            "VerifierTrackCount": q(ntpl, f.NTPL_VERIFIER_TRACK_COUNT),
            "NtBuildNumber": q(ntpl, f.NTPL_NT_BUILD_NUMBER) or f.MINOR_VERSION,
            "PoolState": q(ntpl, f.NTPL_POOL_STATE),
            "PoolQuotaCookie": q(ntpl, f.NTPL_POOL_QUOTA_COOKIE),
            "HeapRanges": q(ntpl, f.NTPL_HEAP_RANGES),
            "HeapRangeCount": q(ntpl, f.NTPL_HEAP_RANGE_COUNT),
            "BigPageEntrySize": q(ntpl, f.NTPL_BIG_PAGE_ENTRY_SIZE),
            "AllocationSites": q(ntpl, f.NTPL_ALLOCATION_SITES),
            "AllocationSitesBytes": q(ntpl, f.NTPL_ALLOCATION_SITES_BYTES),
        }

    @property
    def windows(self):
        """The dump's Windows (from its build number); None for a build ntpool does not know."""
        try:
            return windows_version(self.debugger_data()["NtBuildNumber"])
        except ValueError:
            return None

    @property
    def segment_heap(self) -> bool:
        """The dump's kernel pool is the segment heap (Windows 10 19H1 and later)."""
        return self.debugger_data()["PoolState"] != 0

    def pool_layouts(self):
        windows = self.windows
        if self.segment_heap and windows is not None and windows.segment_heap:
            return segment_heap_layouts(windows)
        return WINDOWS7

    def heap_ranges(self) -> list[PoolRange]:
        """Segment heap: each heap's range (empty for a Windows 7 dump)."""
        data = self.debugger_data()
        count = data["HeapRangeCount"]
        if not data["PoolState"] or not count:
            return []
        if count > 16:
            self._fail(f"HeapRangeCount {count} is impossible")
        try:
            raw = self.read(data["HeapRanges"], count * f.NTPL_HEAP_RANGE.size)
        except MemoryReadError:
            self._fail(f"the heap range table at {data['HeapRanges']:#x} is not in the dump")
        ranges = []
        for heap_va, start, end, base_type, index in f.NTPL_HEAP_RANGE.iter_unpack(raw):
            name = HEAP_NAMES.get(index, f"Heap{index}")
            if not start < end <= 1 << 64 or base_type > 1:
                self._fail(f"{name} heap range {start:#x}..{end:#x} is impossible")
            ranges.append(HeapRange(name, base_type, start, end, heap_va, index))
        return ranges

    def pool_ranges(self) -> list[PoolRange]:
        """The pools: [nonpaged, paged] on Windows 7; each heap on the segment heap
        ([NonPagedPool, NonPagedPoolNx, PagedPool])."""
        heaps = self.heap_ranges()
        if heaps:
            return [PoolRange(h.name, h.base_type, h.start, h.end) for h in heaps]
        data = self.debugger_data()
        ranges = [PoolRange("NonPagedPool", 0, data["MmNonPagedPoolStart"], data["MmNonPagedPoolEnd"]),
                  PoolRange("PagedPool", 1, data["MmPagedPoolStart"], data["MmPagedPoolEnd"] + 1)]
        for pool in ranges:
            if not pool.start < pool.end <= 1 << 64:
                self._fail(f"{pool.name} range {pool.start:#x}..{pool.end:#x} is impossible")
        return ranges

    def pool_of(self, va: int) -> PoolRange | None:
        for pool in self.pool_ranges():
            if pool.start <= va < pool.end:
                return pool
        return None

    def _table(self, va_key: str, size_key: str, entry: struct.Struct, most: int) -> bytes:
        data = self.debugger_data()
        count = data[size_key]
        if count * entry.size > self.size:
            self._fail(f"{size_key} {count} is larger than the file could hold")
        if count > most:
            self._fail(f"{size_key} {count} is more than the {most} entries ntpool reads")
        try:
            return self.read(data[va_key], count * entry.size)
        except MemoryReadError:
            self._fail(f"{va_key} at {data[va_key]:#x} is not in the dump")

    def _tracker_entry(self, layout, raw, offset: int) -> TrackerEntry:
        return TrackerEntry(*(layout.get(raw, offset, name) for name in TrackerEntry._fields))

    def tracker_entries(self) -> list[TrackerEntry]:
        """PoolTrackTable entries in use (Key non-zero), in table order (read once: a table of
        a quarter million slots takes seconds, and !poolused, poolmon and kd's completion
        each ask)."""
        if self._tracker_entries is None:
            layout = self.pool_layouts().tracker
            raw = self._table("PoolTrackTable", "PoolTrackTableSize", layout, MAX_TRACKER_SLOTS)
            self._tracker_entries = [self._tracker_entry(layout, raw, offset)
                                     for offset in range(0, len(raw) - layout.size + 1, layout.size)
                                     if layout.get(raw, offset, "Key")]
        return self._tracker_entries

    def tracker_lookup(self, key: int) -> TrackerEntry | None:
        """The entry for a tag, found as the kernel finds it: hash, then linear probing."""
        layout = self.pool_layouts().tracker
        raw = self._table("PoolTrackTable", "PoolTrackTableSize", layout, MAX_TRACKER_SLOTS)
        slots = len(raw) // layout.size - 1
        if slots <= 0 or slots & (slots - 1):
            return None
        slot = f.tracker_hash(key, slots - 1)
        for _ in range(slots):
            found = layout.get(raw, slot * layout.size, "Key")
            if found == key:
                return self._tracker_entry(layout, raw, slot * layout.size)
            if found == 0:
                return None
            slot = (slot + 1) & (slots - 1)
        return None

    def big_pages(self) -> list[BigPage]:
        layout = self.pool_layouts().big_page
        raw = self._table("PoolBigPageTable", "PoolBigPageTableSize", layout, MAX_BIG_PAGE_SLOTS)
        if layout is POOL_TRACKER_BIG_PAGES:
            return [BigPage(*row) for row in POOL_TRACKER_BIG_PAGES.iter_unpack(raw)
                    if row[0] and not row[0] & BIG_PAGE_FREE]  # (a Va of 0 is no allocation)
        pages = []
        for offset in range(0, len(raw) - layout.size + 1, layout.size):
            va = layout.get(raw, offset, "Va")
            if va and not va & BIG_PAGE_FREE:
                pages.append(BigPage(va, layout.get(raw, offset, "Key"),
                                     big_page_type_of(layout.get(raw, offset, "PoolType")),
                                     layout.get(raw, offset, "NumberOfBytes")))
        return pages

    def unicode_string(self, va: int) -> str:
        """A UNICODE_STRING's text ('' when it cannot be read)."""
        try:
            length, _, buffer = _UNICODE_STRING.unpack(self.read(va, _UNICODE_STRING.size))
            return self.read(buffer, min(length, 1024) & ~1).decode("utf-16-le", "replace")
        except MemoryReadError:
            return ""

    def loaded_modules(self) -> list[tuple[str, int, int]]:
        """(name, DllBase, SizeOfImage) from PsLoadedModuleList, in load order."""
        head = self.debugger_data()["PsLoadedModuleList"]
        modules, seen = [], {head}
        try:
            entry = self.read_u64(head)
            while entry not in seen and len(modules) < MAX_MODULES:
                seen.add(entry)
                base, _, size = struct.unpack("<QQQ", self.read(entry + LDR_DLL_BASE, 24))
                modules.append((self.unicode_string(entry + LDR_BASE_DLL_NAME), base, size))
                entry = self.read_u64(entry)
        except MemoryReadError:
            pass
        return modules

    def kernel_global(self, name: str) -> int:
        """The address of one of ntoskrnl's globals (its symbol: KernBase + its RVA)."""
        return self.debugger_data()["KernBase"] + kernel_image.GLOBALS[name][0]

    def general_lookaside(self, address: int) -> dict:
        """The fields of the GENERAL_LOOKASIDE at ``address`` (MemoryReadError if absent)."""
        raw = self.read(address, 0x10 + _GENERAL_LOOKASIDE.size)
        fields = dict(zip(GENERAL_LOOKASIDE_FIELDS, _GENERAL_LOOKASIDE.unpack_from(raw, 0x10)))
        fields["ListHeadDepth"] = raw[0] | raw[1] << 8  # entries held (the SLIST_HEADER's Depth)
        fields["Address"] = address
        return fields

    def lookaside_lists(self, head_name: str = "ExNPagedLookasideListHead") -> list[dict]:
        """The drivers' lookaside lists linked on ``head_name`` (ExNPagedLookasideListHead or
        ExPagedLookasideListHead), in list order, each as ``general_lookaside`` gives it;
        the walk stops at a link that leads nowhere the dump holds, or back on itself."""
        return self.lookaside_walk(head_name)[0]

    def lookaside_walk(self, head_name: str = "ExNPagedLookasideListHead") -> tuple[list[dict], int | None]:
        """``lookaside_lists`` and where the walk broke off: the link (a list's ListEntry
        address) whose memory the dump does not hold, e.g. a list left linked in the image
        of a driver that unloaded (None: the chain led back to its head)."""
        head = self.kernel_global(head_name)
        lists, seen = [], {head}
        entry = head
        try:
            entry = self.read_u64(head)
            while entry not in seen and len(lists) < MAX_LOOKASIDES:
                seen.add(entry)
                lists.append(self.general_lookaside((entry - GENERAL_LOOKASIDE_LIST_ENTRY) & (1 << 64) - 1))
                entry = self.read_u64(entry)
        except MemoryReadError:
            return lists, entry
        return lists, None

    def call_sites(self) -> list[tuple[str, int, int, str, str]]:
        """(driver, address, line, function, file) per allocation call site ([] if none)."""
        if self._call_sites is None:
            self._call_sites = self._read_call_sites()
        return self._call_sites

    def _read_call_sites(self) -> list:
        data = self.debugger_data()
        va, size = data["CallSiteTable"], data["CallSiteTableBytes"]
        if not va or not size:
            return []
        if size > self.size:
            self._fail(f"the call-site table claims {size} bytes, more than the file holds")
        if size > MAX_CALL_SITE_TABLE_BYTES:
            self._fail(f"the call-site table claims {size} bytes, more than the "
                       f"{MAX_CALL_SITE_TABLE_BYTES} ntpool reads")
        try:
            table = parse_call_site_table(self.read(va, size))
        except (MemoryReadError, ValueError) as error:
            self._fail(f"the call-site table at {va:#x} is unreadable: {error}")
        names: dict[int, str] = {0: ""}
        sites = []
        for ldr, address, line, function, filename in table:
            if ldr not in names:
                names[ldr] = self.unicode_string(ldr + LDR_BASE_DLL_NAME)
            sites.append((names[ldr], address, line, function, filename))
        return sites

    def verifier_tracking(self) -> list[tuple[int, int, int, int]] | None:
        """Driver Verifier's tracked allocations (address, bytes, tag, call site), or None
        when the dump has no tracking list (pool tracking was off)."""
        data = self.debugger_data()
        va, count = data["VerifierTrackTable"], data["VerifierTrackCount"]
        if not va or not count:
            return None
        entry = f.VERIFIER_TRACK_ENTRY
        if count * entry.size > self.size or count > MAX_VERIFIER_TRACKED:
            self._fail(f"the verifier tracking list claims {count} entries, more than "
                       f"{'the file holds' if count <= MAX_VERIFIER_TRACKED else f'the {MAX_VERIFIER_TRACKED} ntpool reads'}")
        try:
            raw = self.read(va, count * entry.size)
        except MemoryReadError:
            self._fail(f"the verifier tracking list at {va:#x} is not in the dump")
        return list(entry.iter_unpack(raw))

    def corrupting_write(self) -> dict | None:
        """The first write that corrupted the pool, as the machine recorded it (None if not)."""
        context = self.bugcheck_context()
        va = context.get("corrupting_write", 0) if context else 0
        if not va:
            return None
        try:
            raw = self.read(va, f.CORRUPTING_WRITE.size)
        except MemoryReadError:
            return None
        address, length, data, driver, line, what = f.CORRUPTING_WRITE.unpack(raw)

        def text(value: bytes) -> str:
            return value.split(b"\0", 1)[0].decode("ascii", "replace")

        return {"address": address, "length": length, "data": data[:min(length, 16)],
                "driver": text(driver), "line": text(line), "what": text(what)}
    def allocation_site(self, header_va: int) -> int | None:
        """The call-site number of the small chunk whose header is at ``header_va``, from
        ntpool's allocation-site table; None when the dump has no table covering it (an
        older dump: its AllocatorBackTraceIndex, header bytes 8-9, held the site).

        The map is inflated from its start up to the piece holding the block, and that piece
        kept: lookups in address order cost one pass, and memory stays a piece, not the map."""
        if self._site_lookups is None:  # streams of their own: a scan's stay where they are
            self._site_lookups = [(base, blocks, stream.copy(), {})
                                  for base, blocks, stream in self.allocation_site_streams()]
        for base, blocks, stream, piece in self._site_lookups:
            index = (header_va - base) >> 4
            if not 0 <= index < blocks:
                continue
            first = index & ~(SITE_PIECE_BLOCKS - 1)
            if piece.get("first") != first:
                try:
                    piece["first"], piece["sites"] = first, stream.read(first, SITE_PIECE_BLOCKS)
                except zlib.error:  # a map whose CRC is right but whose stream is not (hostile)
                    piece["first"], piece["sites"] = first, b""
            at = 2 * (index - first)
            sites = piece["sites"]
            if at + 2 <= len(sites):
                return sites[at] | sites[at + 1] << 8
        return None

    def allocation_site_streams(self) -> list:
        """(pool base, blocks declared, SiteMapStream) per pool of ntpool's NTAS table ([] when
        the dump has none, or a damaged one): for reading the sites of a scan's pages in
        address order without holding the whole map (2 bytes per 16 of pool) in memory."""
        if self._site_streams is None:
            self._site_streams = []
            data = self.debugger_data()
            va, size = data.get("AllocationSites", 0), data.get("AllocationSitesBytes", 0)
            if va and 0 < size <= MAX_SITE_TABLE_BYTES:
                try:
                    # Its magic first: a table of anything else costs 4 bytes, not its size.
                    if self.read(va, 4) not in (f.ALLOCATION_SITES_MAGIC, f.ALLOCATION_SITES_V2_MAGIC):
                        raise ValueError("not an allocation-site table")
                    tables = _parse_site_tables(self.read(va, size))
                    for _base, _blocks, stream in tables:
                        stream.check()  # damage anywhere: no sites at all, whoever asks
                    self._site_streams = tables
                except (MemoryReadError, struct.error, zlib.error, ValueError):
                    pass  # a hostile or damaged table: no sites, no crash
        return self._site_streams

    def bugcheck_context(self) -> dict | None:
        """ntpool's NTPOOL_BUGCHECK_CONTEXT (driver, call site), or None when there is none."""
        va = self.debugger_data()["BugCheckContext"]
        if not va:
            return None
        try:
            raw = self.read(va, f.BUGCHECK_CONTEXT.size)
            code, p1, p2, p3, p4, driver, call_site, found_in, written = f.BUGCHECK_CONTEXT.unpack(raw)
        except MemoryReadError:
            try:  # an older dump's context ends before the corrupting write's address
                raw = self.read(va, f.BUGCHECK_CONTEXT_V1.size)
            except MemoryReadError:
                return None
            code, p1, p2, p3, p4, driver, call_site, found_in = f.BUGCHECK_CONTEXT_V1.unpack(raw)
            written = 0
        return {"code": code, "parameters": (p1, p2, p3, p4), "corrupting_write": written,
                "driver": driver.split(b"\0", 1)[0].decode("ascii", "replace"),
                "call_site": call_site.split(b"\0", 1)[0].decode("ascii", "replace"),
                "found_in": found_in.split(b"\0", 1)[0].decode("ascii", "replace")}


def sites_by_block(per_unit):
    """A map's sites per 32-byte unit (bytes, or an array of USHORTs) as a site per block."""
    if isinstance(per_unit, array):
        sites = array("H", bytes(4 * len(per_unit)))
    else:
        sites = bytearray(2 * len(per_unit))
    sites[0::2] = per_unit
    sites[1::2] = per_unit
    return sites


STRETCHES_SOUGHT = 8  # a page table in more stretches of consecutive frames is cut entry by entry


def _consecutive_stretches(raw: bytes, first: int, last: int) -> list | None:
    """[begin, stop) stretches of a page table's entries ``first`` to ``last`` (``raw``: the
    table's 4 KiB), in order, each of entries mapping consecutive frames with the same flags
    (each entry the one before it plus a page); None past STRETCHES_SOUGHT stretches, or when
    a page added to some entry's frame would carry into its top byte (its flags).

    Found on all entries at once: the table is one integer, an entry in each 64-bit lane (each
    big-integer operation one C loop). Each lane is compared (XOR) with the lane below it plus
    a page, which is 0 where the next entry follows on: a stretch ends at the first lane from
    its start that is not 0 (its lowest set bit). The last lane is never 0 (it is compared with
    nothing), so no stretch runs past the table."""
    table = int.from_bytes(raw, "little")
    if ((table & _LOW_56_LANES) + _PAGE_LANES) & _BIT_56_LANES:
        return None  # (adding a page to each lane then carries into no other lane)
    breaks = (table >> 64) ^ (table + _PAGE_LANES)
    stretches = []
    begin = first
    while begin < last:
        if len(stretches) == STRETCHES_SOUGHT:
            return None
        rest = breaks >> (begin << 6)
        stop = min(last, begin + (((rest & -rest).bit_length() - 1) >> 6) + 1)
        stretches.append((begin, stop))
        begin = stop
    return stretches


_LOW_56 = (1 << 56) - 1
_ONE_IN_EACH_LANE = int.from_bytes(_QWORD.pack(1) * 512, "little")  # a page table's 512 entries as 64-bit lanes
_PAGE_LANES = PAGE_SIZE * _ONE_IN_EACH_LANE
_LOW_56_LANES = _LOW_56 * _ONE_IN_EACH_LANE
_BIT_56_LANES = (1 << 56) * _ONE_IN_EACH_LANE


MAX_SITE_TABLE_BYTES = 64 << 20
# The most entries the tables a kernel keeps can hold here; a dump that claims more is refused
# (every entry in use would be a Python object: memory past a few hundred MiB, minutes of CPU).
# ntpool's own tables: a power of two at least twice what they hold (the tracker's at most
# MAX_TRACKER_TABLE_SIZE slots, 131,072 tags, where a Windows machine has a few thousand, plus
# its overflow slot; 262,144 big allocations, a GiB of single-page ones).
MAX_TRACKER_SLOTS = f.MAX_TRACKER_TABLE_SIZE + 1
MAX_BIG_PAGE_SLOTS = 1 << 19
MAX_VERIFIER_TRACKED = 1 << 19  # Driver Verifier's tracked allocations outstanding
MAX_CALL_SITE_TABLE_BYTES = 1 << 20  # about 10,000 call sites
BULK_READ_BYTES = 16 * PAGE_SIZE  # a read this long is made a run of pages at a time
SITE_PIECE_BLOCKS = 1 << 14  # sites kept for lookups: 32 KiB, 256 KiB of pool


def _joined(pieces):
    """(va, file offset, pages) pieces, joined where one follows on from the last in memory
    and in the file."""
    run_va = run_offset = count = 0
    for va, offset, pages in pieces:
        if count and va == run_va + (count << PAGE_SHIFT) and offset == run_offset + (count << PAGE_SHIFT):
            count += pages
            continue
        if count:
            yield run_va, run_offset, count
        run_va, run_offset, count = va, offset, pages
    if count:
        yield run_va, run_offset, count


def _ushorts(raw: bytes, count: int):
    """``count`` little-endian USHORTs as an array, or None when ``raw`` holds fewer."""
    if len(raw) != 2 * count:
        return None
    values = array("H", raw)
    if sys.byteorder != "little":
        values.byteswap()
    return values


class SiteMapStream:
    """One pool's map of call-site numbers as version 1 of the table holds it (a USHORT per
    16-byte block), inflated as it is read: reading forward costs nothing but the bytes read;
    reading back starts over."""

    ITEM = 2  # bytes per entry of the stored map

    def __init__(self, compressed: bytes, blocks: int):
        self.compressed = compressed
        self.blocks = blocks  # declared; the stream may hold fewer
        self.items = blocks  # entries of the stored map declared
        self._start()

    def copy(self) -> "SiteMapStream":
        """The same map, read from its start by a reader of its own."""
        return SiteMapStream(self.compressed, self.blocks)

    def _start(self) -> None:
        self._inflate = zlib.decompressobj()
        self._fed = 0  # compressed bytes handed to the decompressor
        self._tail = b""  # handed, not yet used (bounded: at most INPUT_PIECE)
        self._pending = b""  # inflated, not yet read
        self._at = 0  # the byte of the inflated map _pending starts at

    # Compressed bytes fed at a time: the input a call leaves (it stops at the bytes asked for)
    # is copied for the next, and the output made in larger steps; 8 KiB inflated a 128 MiB
    # pool's map 2.5 times as fast as 64 KiB (3.9 against 10.0 ms), no faster at 4 KiB.
    INPUT_PIECE = 1 << 13

    def read(self, first: int, count: int) -> bytes:
        """The sites of blocks [first, first + count) as little-endian USHORTs; shorter where
        the map ends. zlib.error on a damaged stream."""
        return self._read_items(first, count)

    def sites(self, first: int, count: int):
        """The sites of blocks [first, first + count), indexable by block from ``first``; None
        when the map holds fewer. zlib.error on a damaged stream."""
        return _ushorts(self._read_items(first, count), count)

    def _read_items(self, first: int, count: int) -> bytes:
        item = self.ITEM
        if first * item < self._at:
            self._start()
        count = max(0, min(count, self.items - first))
        self._discard(first * item - self._at)
        out = self._take(count * item)
        self._at = first * item + len(out)
        return out[:len(out) - len(out) % item]

    def check(self) -> None:
        """Inflate the whole map, a piece at a time (zlib.error if it is damaged)."""
        self._start()
        self._discard(self.ITEM * self.items)
        self._start()

    def _discard(self, length: int) -> None:
        """Inflate and drop ``length`` bytes, a bounded piece at a time."""
        while length > 0:
            dropped = len(self._take(min(length, 1 << 20)))
            if not dropped:
                return
            length -= dropped

    def _take(self, length: int) -> bytes:
        parts, have = [self._pending], len(self._pending)
        while have < length and not self._inflate.eof:
            if not self._tail:
                self._tail = self.compressed[self._fed:self._fed + self.INPUT_PIECE]
                self._fed += len(self._tail)
            produced = self._inflate.decompress(self._tail, length - have)
            self._tail = self._inflate.unconsumed_tail
            if not produced and (self._tail or self._fed >= len(self.compressed)):
                break  # the stream ended early (or is stuck): what it held is all there is
            parts.append(produced)
            have += len(produced)
        joined = b"".join(parts) if len(parts) > 1 else parts[0]
        self._pending = joined[length:]
        return joined[:length]


class UnitSiteMapStream(SiteMapStream):
    """One pool's map as version 2 of the table holds it: a site per 32-byte unit (both of its
    16-byte blocks have it), ``width`` bytes each, with the CRC-32 of the compressed map, so
    ``check`` needs no inflating. Read by block, as version 1's."""

    def __init__(self, compressed: bytes, units: int, width: int, crc: int):
        self.width, self.crc = width, crc
        self.ITEM = width
        super().__init__(compressed, 2 * units)
        self.items = units

    def copy(self) -> "UnitSiteMapStream":
        return UnitSiteMapStream(self.compressed, self.items, self.width, self.crc)

    def _start(self) -> None:
        """Inflated as raw deflate past a well-formed zlib header: the CRC-32 of the whole
        compressed map (``check``) already vouches for its bytes, so the Adler-32 of what it
        inflates to (a fifth of the inflating) is not worked out again. A header zlib would
        refuse is left to zlib, which then refuses it as before."""
        super()._start()
        if _plain_zlib_header(self.compressed):
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            self._fed = 2

    def check(self) -> None:
        if zlib.crc32(self.compressed) != self.crc:
            raise zlib.error("allocation-site map: CRC-32 mismatch")

    def units(self, first: int, count: int):
        """The sites of blocks [first, first + count) (``first`` and ``count`` even) as the map
        holds them, one per unit: indexable by (block - first) >> 1; None when it holds fewer.
        zlib.error on a damaged stream."""
        units = count >> 1
        raw = self._read_items(first >> 1, units)
        if len(raw) != units * self.width:
            return None
        if self.width == 1:
            return raw
        per_unit = array("H", raw)
        if sys.byteorder != "little":
            per_unit.byteswap()
        return per_unit

    def _unit_sites(self, first: int, count: int):
        """Each unit's site over blocks [first, first + count) (``first`` and ``count`` even),
        expanded to a site per block; None when the map holds fewer."""
        per_unit = self.units(first, count)
        return None if per_unit is None else sites_by_block(per_unit)

    def sites(self, first: int, count: int):
        if not (first & 1 or count & 1):
            return self._unit_sites(first, count)
        return _ushorts(self.read(first, count), count)  # not whole units: by block

    def read(self, first: int, count: int) -> bytes:
        count = max(0, min(count, self.blocks - first))
        if not count:
            return b""
        first_unit = first >> 1
        raw = self._read_items(first_unit, ((first + count - 1) >> 1) - first_unit + 1)
        per_unit = array("H", raw) if self.width == 2 else array("H", iter(raw))
        if self.width == 2 and sys.byteorder != "little":
            per_unit.byteswap()
        blocks = array("H", bytes(4 * len(per_unit)))
        blocks[0::2] = per_unit
        blocks[1::2] = per_unit
        if sys.byteorder != "little":
            blocks.byteswap()
        skip = first - 2 * first_unit
        return blocks[skip:skip + count].tobytes()


def _plain_zlib_header(compressed: bytes) -> bool:
    """Whether a stream starts with a zlib header zlib accepts and that asks for no preset
    dictionary (RFC 1950: deflate, a window of at most 32 KiB, the check bits right)."""
    if len(compressed) < 2:
        return False
    method, flags = compressed[0], compressed[1]
    return method & 0x0F == 8 and method >> 4 <= 7 and not (method << 8 | flags) % 31 and not flags & 0x20


def _parse_site_tables(raw: bytes) -> list:
    """(pool base, blocks, SiteMapStream) per pool of an NTAS (or NTA2) table; ValueError if
    malformed."""
    magic, count = f.ALLOCATION_SITES_HEADER.unpack_from(raw)
    if magic not in (f.ALLOCATION_SITES_MAGIC, f.ALLOCATION_SITES_V2_MAGIC) or count > 16:
        raise ValueError("not an allocation-site table")
    if magic == f.ALLOCATION_SITES_V2_MAGIC:
        return _parse_site_tables_v2(raw, count)
    tables = []
    for index in range(count):
        base, blocks, offset, length = f.ALLOCATION_SITES_ENTRY.unpack_from(
            raw, f.ALLOCATION_SITES_HEADER.size + index * f.ALLOCATION_SITES_ENTRY.size)
        if offset + length > len(raw) or blocks > (1 << 31):
            raise ValueError("allocation-site entry out of range")
        tables.append((base, blocks, SiteMapStream(raw[offset:offset + length], blocks)))
    return tables


def _parse_site_tables_v2(raw: bytes, count: int) -> list:
    """(pool base, blocks, UnitSiteMapStream) per pool of an NTA2 table; ValueError if malformed."""
    tables = []
    for index in range(count):
        base, units, offset, length, width, crc = f.ALLOCATION_SITES_V2_ENTRY.unpack_from(
            raw, f.ALLOCATION_SITES_HEADER.size + index * f.ALLOCATION_SITES_V2_ENTRY.size)
        if offset + length > len(raw) or units > (1 << 30) or width not in (1, 2):
            raise ValueError("allocation-site entry out of range")
        tables.append((base, 2 * units, UnitSiteMapStream(raw[offset:offset + length], units, width, crc)))
    return tables
