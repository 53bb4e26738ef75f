"""Lay out in simulated kernel memory what a dump analyser needs, at recorded addresses.

The live machine keeps its per-tag counters and its big page table in Python (the
allocation fast path needs that); Windows keeps them in kernel memory, where a debugger
reads them. Before a dump is written they are laid out in the kernel's own data region in
the Windows 7 x64 formats, and KDDEBUGGER_DATA64 (and ntpool's ``NTPL`` block after it)
record where they are. Nothing here is on the allocation path.
"""

from dataclasses import dataclass, field

from ..drivers import call_site_table
import struct
import sys
import time
import zlib
from array import array

from ..constants import PAGE_SHIFT, PAGE_SIZE, SYSTEM_RANGE_START
from ..machine.memory import PTE_ADDRESS_MASK
from ..pool.layout import BIG_PAGE_FREE, POOL_TRACKER_BIG_PAGES, POOL_TRACKER_TABLE, SITE_UNITS_PER_PAGE, \
    WINDOWS7
from ..pool.segment_heap.layout import big_page_hash, big_page_type_field, segment_heap_layouts
from ..pool.tracker import row_counts
from ..tags import PROTECTED_POOL
from . import format as f
from . import image as kernel_image
from . import isf


@dataclass
class Region:
    va: int = 0
    capacity: int = 0  # entries


@dataclass
class DebuggerDataLayout:
    """Where this machine's debugger structures live (kept on the machine between dumps)."""

    kdbg: int = 0
    ntpl: int = 0
    ps_active_process_head: int = 0  # an empty list
    bugcheck_context: int = 0
    corrupting_write: int = 0  # NTPOOL_CORRUPTING_WRITE, reserved when one is first written
    tracker: Region = field(default_factory=Region)
    big_pages: Region = field(default_factory=Region)
    call_sites: Region = field(default_factory=Region)  # capacity in bytes
    heap_ranges: int = 0  # segment heap: NTPL_HEAP_RANGE entries
    verifier_tracking: Region = field(default_factory=Region)
    allocation_sites: Region = field(default_factory=Region)  # capacity in bytes


def poke(kernel, va: int, data) -> None:
    """Write kernel memory without the machine's routines (they refuse on a halted machine)."""
    mem = kernel.physical.buffer
    view = memoryview(data)
    done = 0
    while done < len(view):
        here = va + done
        length = min(PAGE_SIZE - (here & 0xFFF), len(view) - done)
        pa = kernel.space.translate(here)
        if pa is None:
            raise ValueError(f"kernel address {here:#x} is not mapped")
        mem[pa:pa + length] = view[done:done + length]
        done += length


def install_shared_data(kernel) -> None:
    """Map KUSER_SHARED_DATA (read-only) with the machine's Windows version numbers in it."""
    if kernel.space.translate(f.KUSER_SHARED_DATA) is not None:
        return
    pfn = kernel.physical.allocate_frame()
    kernel.physical.zero_frame(pfn)
    kernel.space.map_page(f.KUSER_SHARED_DATA, pfn, writable=False)
    windows = kernel.windows
    values = {f.KUSER_NT_BUILD_NUMBER: windows.build, f.KUSER_NT_PRODUCT_TYPE: f.NT_PRODUCT_WIN_NT,
              f.KUSER_PRODUCT_TYPE_IS_VALID: 1, f.KUSER_NT_MAJOR_VERSION: windows.major,
              f.KUSER_NT_MINOR_VERSION: windows.minor}
    for offset, value in values.items():
        poke(kernel, f.KUSER_SHARED_DATA + offset, value.to_bytes(4, "little"))
    poke(kernel, f.KUSER_SHARED_DATA + f.KUSER_NT_SYSTEM_ROOT, f.NT_SYSTEM_ROOT.encode("utf-16-le"))


def system_time(kernel) -> int:
    """The machine's clock as a FILETIME: now, unless ``kernel.dump_system_time`` fixes it
    (``ntpool corpus`` does, so that the same seed gives the same dump, byte for byte)."""
    fixed = getattr(kernel, "dump_system_time", None)
    return fixed if fixed is not None else int(time.time() * 10_000_000) + 116444736000000000


def _stamp_system_time(kernel) -> None:
    """KUSER_SHARED_DATA.SystemTime, as the clock interrupt would have left it."""
    now = system_time(kernel)
    poke(kernel, f.KUSER_SHARED_DATA + f.KUSER_SYSTEM_TIME,
         struct.pack("<Iii", now & 0xFFFFFFFF, now >> 32, now >> 32))


def _layout_of(kernel) -> DebuggerDataLayout:
    layout = getattr(kernel, "_debugger_data_layout", None)
    if layout is None:
        layout = DebuggerDataLayout()
        data = kernel.kernel_data
        layout.kdbg = data.base + kernel_image.KDBG_RVA  # globals of the kernel image
        layout.ntpl = data.base + kernel_image.NTPL_RVA
        layout.ps_active_process_head = kernel_image.global_address(data.base, "PsActiveProcessHead")
        layout.bugcheck_context = data.reserve(f.BUGCHECK_CONTEXT.size)
        head = layout.ps_active_process_head
        poke(kernel, head, head.to_bytes(8, "little") * 2)  # an empty LIST_ENTRY
        kernel._debugger_data_layout = layout
    return layout


def _region_for(kernel, region: Region, entries: int, entry_size: int) -> None:
    if region.capacity < entries:
        region.va = kernel.kernel_data.reserve(entries * entry_size, align=PAGE_SIZE)
        region.capacity = entries


# --- the tables -----------------------------------------------------------------------------

def build_tracker_table(rows: dict, size: int, entry=POOL_TRACKER_TABLE) -> bytearray:
    """PoolTrackTable image: ``size`` hashed slots plus one overflow slot (Windows 7's entries
    by default; ``entry`` another design's, filled by field name)."""
    if entry is not POOL_TRACKER_TABLE:
        return _build_named_tracker_table(rows, size, entry)
    image = bytearray((size + 1) * entry.size)
    for slot, key, r in _tracker_slots(rows, size):
        entry.pack_into(image, slot * entry.size, key, r[0] & 0xFFFFFFFF, r[1] & 0xFFFFFFFF,
                        r[2] & 0xFFFFFFFFFFFFFFFF, r[3] & 0xFFFFFFFF, r[4] & 0xFFFFFFFF,
                        r[5] & 0xFFFFFFFFFFFFFFFF)
    return image


def _tracker_slots(rows: dict, size: int):
    """(slot, key, counts) for each tag: its hash slot, or the next free one (linear probing),
    and its row's six counts (``tracker.row_counts``); the protected bit is not part of the key.
    The table is kept at most half full: the tags past that (only a table of
    ``MAX_TRACKER_TABLE_SIZE`` slots is too small) are summed in the overflow slot, after the
    hashed ones, its key ``OVERFLOW_TAG``."""
    used = bytearray(size)
    mask = size - 1
    room = size // 2
    overflow = [0] * 6
    for count, (key, r) in enumerate(rows.items()):
        if count >= room:
            overflow = [total + value for total, value in zip(overflow, row_counts(r))]
            continue
        key &= ~PROTECTED_POOL
        slot = f.tracker_hash(key, mask)
        while used[slot]:
            slot = (slot + 1) & mask
        used[slot] = 1
        yield slot, key, row_counts(r)
    if len(rows) > room:
        yield size, f.OVERFLOW_TAG, tuple(overflow)


def _build_named_tracker_table(rows: dict, size: int, entry) -> bytearray:
    image = bytearray((size + 1) * entry.size)
    for slot, key, r in _tracker_slots(rows, size):
        base = slot * entry.size
        for name, value in (("Key", key), ("NonPagedAllocs", r[0]), ("NonPagedFrees", r[1]),
                            ("NonPagedBytes", r[2]), ("PagedAllocs", r[3]), ("PagedFrees", r[4]),
                            ("PagedBytes", r[5])):
            entry.set(image, base, name, value & ((1 << 8 * entry.fields[name].codec.size) - 1))
    return image


def build_segment_heap_big_page_table(pools, size: int, entry) -> bytearray:
    """Windows 10/11's PoolBigPageTable: PoolType in bits 8-19 of its u32, NumberOfBytes the
    bytes asked for, and (0x20-byte entries) ProcessBilled, the EPROCESS charged."""
    image = bytearray(size * entry.size)
    for index in range(size):
        entry.set(image, index * entry.size, "Va", BIG_PAGE_FREE)
    mask = size - 1
    for pool in pools:
        for va, (tag, pages) in pool.big_pages.items():
            length, pool_type, process = pool.big_details.get(va, (pages << PAGE_SHIFT, pool.pool_type, 0))
            slot = big_page_hash(va, mask)
            while not image[slot * entry.size] & BIG_PAGE_FREE:
                slot = (slot + 1) & mask
            base = slot * entry.size
            entry.set(image, base, "Va", va)
            entry.set(image, base, "Key", tag)
            entry.set(image, base, "PoolType", big_page_type_field(pool_type))
            entry.set(image, base, "NumberOfBytes", length)
            if "ProcessBilled" in entry.fields:
                entry.set(image, base, "ProcessBilled", process)
    return image


def build_big_page_table(pools, size: int) -> bytearray:
    """PoolBigPageTable image: every free slot holds Va 1 (bit 0 set means free)."""
    entry = POOL_TRACKER_BIG_PAGES
    image = bytearray(entry.pack(BIG_PAGE_FREE, 0, 0, 0) * size)
    mask = size - 1
    for pool in pools:
        for va, (tag, pages) in pool.big_pages.items():
            slot = f.big_page_hash(va, mask)
            while not image[slot * entry.size] & BIG_PAGE_FREE:  # taken: probe on
                slot = (slot + 1) & mask
            entry.pack_into(image, slot * entry.size, va, tag, pool.base_type, pages << PAGE_SHIFT)
    return image


def _lay_out_tables(kernel, layout: DebuggerDataLayout) -> tuple[int, int]:
    layouts = pool_layouts(kernel)
    rows = kernel.pool.tracker.rows
    tracker_size = min(f.table_size_for(len(rows), f.MIN_TRACKER_TABLE_SIZE), f.MAX_TRACKER_TABLE_SIZE)
    _region_for(kernel, layout.tracker, tracker_size + 1, layouts.tracker.size)
    poke(kernel, layout.tracker.va, build_tracker_table(rows, tracker_size, layouts.tracker))

    pools = [pool for pool in (kernel.nonpaged_pool, kernel.paged_pool,
                               getattr(kernel, "nonpaged_pool_nx", None)) if pool is not None]
    big_count = sum(len(pool.big_pages) for pool in pools)
    big_size = f.table_size_for(big_count, f.MIN_BIG_PAGE_TABLE_SIZE)
    _region_for(kernel, layout.big_pages, big_size, layouts.big_page.size)
    if layouts.big_page is POOL_TRACKER_BIG_PAGES:
        image = build_big_page_table(pools, big_size)
    else:
        image = build_segment_heap_big_page_table(pools, big_size, layouts.big_page)
    poke(kernel, layout.big_pages.va, image)
    return tracker_size + 1, big_size


def pool_layouts(kernel):
    """The structure layouts of the machine's pool design (its tracker, its big page entry)."""
    return segment_heap_layouts(kernel.windows) if kernel.windows.segment_heap else WINDOWS7


def _lay_out_heap_ranges(kernel, layout: DebuggerDataLayout) -> int:
    """Segment heap: where each heap's segments lie (ntpool's NTPL_HEAP_RANGE table)."""
    state = getattr(kernel, "heap_state", None)
    if state is None:
        return 0
    heaps = (state.nonpaged, state.nonpaged_nx, state.paged)
    if not layout.heap_ranges:
        layout.heap_ranges = kernel.kernel_data.reserve(len(heaps) * f.NTPL_HEAP_RANGE.size)
    poke(kernel, layout.heap_ranges, b"".join(
        f.NTPL_HEAP_RANGE.pack(heap.heap_va, heap.base, heap.limit, heap.base_type, heap.heap_index)
        for heap in heaps))
    return len(heaps)


SITE_TABLE_VERSION = 2  # 1: the NTAS table (a USHORT per block), written only when asked (tests)


def allocation_site_table(kernel, version: int = 0) -> bytes:
    """The allocation-site table (see dump.format): each Windows 7 pool's site map, up to its
    last page in use, zlib-compressed (the maps are mostly runs). Version 2 (NTA2, the default)
    holds the pool's own map, a byte or a USHORT per 32-byte unit, and the CRC-32 of each
    compressed map, so a reader checks it without inflating it; version 1 (NTAS, older dumps) a
    USHORT per 16-byte block."""
    version = version or SITE_TABLE_VERSION
    pools = [pool for pool in (kernel.nonpaged_pool, kernel.paged_pool)
             if getattr(pool, "site_map", None) is not None]
    if not pools:
        return b""
    entry = f.ALLOCATION_SITES_ENTRY if version == 1 else f.ALLOCATION_SITES_V2_ENTRY
    entries, blobs = [], []
    offset = f.ALLOCATION_SITES_HEADER.size + entry.size * len(pools)
    for pool in pools:
        units = len(pool.page_kind.rstrip(b"\0")) * SITE_UNITS_PER_PAGE
        if version == 1:
            blob = _per_block_sites(pool.sites, units)
            entries.append(entry.pack(pool.base, 2 * units, offset, len(blob)))
        else:
            blob = _per_unit_sites(pool.sites, units)
            entries.append(entry.pack(pool.base, units, offset, len(blob), pool.sites.itemsize, zlib.crc32(blob)))
        blobs.append(blob)
        offset += len(blob)
    magic = f.ALLOCATION_SITES_MAGIC if version == 1 else f.ALLOCATION_SITES_V2_MAGIC
    return b"".join([f.ALLOCATION_SITES_HEADER.pack(magic, len(pools)), *entries, *blobs])


SITE_UNITS_PER_PIECE = 1 << 20  # units expanded and compressed at a time (a few MiB of copies)


def _per_unit_sites(sites: memoryview, units: int) -> bytes:
    """The first ``units`` of a pool's site map (``Pool.sites``) as they are, little-endian,
    zlib-compressed a piece at a time (no copy of the whole map)."""
    width = sites.itemsize
    raw = sites.cast("B")
    compressor = zlib.compressobj(1)
    parts = []
    for start in range(0, units, SITE_UNITS_PER_PIECE):
        piece = raw[start * width:min(start + SITE_UNITS_PER_PIECE, units) * width]
        if width == 2 and sys.byteorder != "little":
            swapped = array("H", piece)
            swapped.byteswap()
            piece = swapped
        parts.append(compressor.compress(piece))
    parts.append(compressor.flush())
    return b"".join(parts)


def _per_block_sites(sites: memoryview, units: int) -> bytes:
    """The first ``units`` of a pool's site map (a byte or a USHORT per 32-byte unit:
    ``Pool.sites``) as the dump's per-block map, a USHORT per block, zlib-compressed: each
    unit's site for both of its blocks. An allocated chunk is the only one starting in its
    unit, so a reader asking for the block its header starts at gets its site, whichever of
    the two it is. Done a piece at a time, so a dump of a large pool copies little. The
    table's version 1 (NTAS), as dumps before version 2 hold it."""
    width = sites.itemsize
    raw = sites.cast("B")
    compressor = zlib.compressobj(1)
    parts = []
    for start in range(0, units, SITE_UNITS_PER_PIECE):
        piece = bytes(raw[start * width:min(start + SITE_UNITS_PER_PIECE, units) * width])
        count = len(piece) // width
        blocks = bytearray(4 * count)  # per unit: its site twice, little-endian USHORTs
        for byte in range(width):
            blocks[byte::4] = piece[byte::width]
            blocks[2 + byte::4] = piece[byte::width]
        parts.append(compressor.compress(blocks))
    parts.append(compressor.flush())
    return b"".join(parts)


def _lay_out_allocation_sites(kernel, layout: DebuggerDataLayout) -> int:
    table = allocation_site_table(kernel)
    if not table:
        return 0
    _region_for(kernel, layout.allocation_sites, len(table), 1)
    poke(kernel, layout.allocation_sites.va, table)
    return len(table)


def _lay_out_call_sites(kernel, layout: DebuggerDataLayout) -> int:
    """The allocation call-site table (who allocated each chunk), in ntpool's NTCS format."""
    table = call_site_table(kernel.call_sites)
    _region_for(kernel, layout.call_sites, len(table), 1)
    poke(kernel, layout.call_sites.va, table)
    return len(table)


# --- the debugger data blocks ------------------------------------------------------------

def _kdbg_image(kernel, layout: DebuggerDataLayout) -> bytearray:
    image = bytearray(f.KDDEBUGGER_DATA64_SIZE)
    f.DEBUG_DATA_HEADER.pack_into(image, 0, layout.ntpl, layout.ntpl, f.KDBG_OWNER_TAG,
                                  f.KDDEBUGGER_DATA64_SIZE)
    nonpaged, paged = kernel.nonpaged_pool, kernel.paged_pool
    fields = {
        f.KDBG_KERN_BASE: kernel.kernel_data.base,
        f.KDBG_PS_LOADED_MODULE_LIST: kernel.loaded_module_list,
        f.KDBG_PS_ACTIVE_PROCESS_HEAD: layout.ps_active_process_head,
        f.KDBG_NT_BUILD_LAB: kernel.kernel_data.base + kernel_image.NT_BUILD_LAB,
        f.KDBG_CM_NT_CSD_VERSION: kernel_image.global_address(kernel.kernel_data.base, "CmNtCSDVersion"),
        f.KDBG_MM_LOWEST_PHYSICAL_PAGE: 1,
        f.KDBG_MM_HIGHEST_PHYSICAL_PAGE: kernel.physical.frame_count - 1,
        f.KDBG_MM_NUMBER_OF_PHYSICAL_PAGES: kernel.physical.frame_count,
        f.KDBG_MM_MAXIMUM_NONPAGED_POOL_IN_BYTES: nonpaged.page_count << PAGE_SHIFT,
        f.KDBG_MM_NONPAGED_POOL_START: nonpaged.base,
        f.KDBG_MM_NONPAGED_POOL_END: nonpaged.limit,
        f.KDBG_MM_PAGED_POOL_START: paged.base,
        f.KDBG_MM_PAGED_POOL_END: paged.limit - 1,  # Windows records the last byte here
        f.KDBG_MM_PAGE_SIZE: PAGE_SIZE,
        f.KDBG_MM_SIZE_OF_PAGED_POOL_IN_BYTES: paged.page_count << PAGE_SHIFT,
        f.KDBG_POOL_TRACK_TABLE: layout.tracker.va,
        f.KDBG_NONPAGED_POOL_DESCRIPTOR: nonpaged.list_heads_va,
        f.KDBG_MM_HIGHEST_USER_ADDRESS: f.MM_HIGHEST_USER_ADDRESS,
        f.KDBG_MM_SYSTEM_RANGE_START: SYSTEM_RANGE_START,
        f.KDBG_MM_USER_PROBE_ADDRESS: f.MM_USER_PROBE_ADDRESS,
    }
    for offset, value in fields.items():
        image[offset:offset + 8] = value.to_bytes(8, "little")
    return image


def _ntpl_image(kernel, layout: DebuggerDataLayout, tracker_entries: int, big_entries: int,
                bugcheck_context: int, call_site_bytes: int) -> bytearray:
    image = bytearray(f.NTPL_SIZE)
    f.DEBUG_DATA_HEADER.pack_into(image, 0, layout.kdbg, layout.kdbg, f.NTPL_OWNER_TAG, f.NTPL_SIZE)
    fields = {
        f.NTPL_VERSION: f.NTPL_LAYOUT_VERSION,
        f.NTPL_POOL_TRACK_TABLE: layout.tracker.va,
        f.NTPL_POOL_TRACK_TABLE_SIZE: tracker_entries,
        f.NTPL_POOL_BIG_PAGE_TABLE: layout.big_pages.va,
        f.NTPL_POOL_BIG_PAGE_TABLE_SIZE: big_entries,
        f.NTPL_NONPAGED_POOL_LIST_HEADS: kernel.nonpaged_pool.list_heads_va,
        f.NTPL_PAGED_POOL_LIST_HEADS: kernel.paged_pool.list_heads_va,
        f.NTPL_BUGCHECK_CONTEXT: bugcheck_context,
        f.NTPL_NUMBER_PROCESSORS: kernel.processors,
        f.NTPL_CALL_SITE_TABLE: layout.call_sites.va,
        f.NTPL_CALL_SITE_TABLE_BYTES: call_site_bytes,
        f.NTPL_NT_BUILD_NUMBER: kernel.windows.build,
    }
    state = getattr(kernel, "heap_state", None)
    if state is not None:
        count = _lay_out_heap_ranges(kernel, layout)
        fields.update({
            f.NTPL_POOL_STATE: state.state_va,
            f.NTPL_POOL_QUOTA_COOKIE: state.cookie_va,
            f.NTPL_HEAP_RANGES: layout.heap_ranges,
            f.NTPL_HEAP_RANGE_COUNT: count,
            f.NTPL_BIG_PAGE_ENTRY_SIZE: kernel.windows.big_page_entry_size,
        })
    for offset, value in fields.items():
        image[offset:offset + 8] = value.to_bytes(8, "little")
    return image


def _text(value, size: int) -> bytes:
    return str(value).encode("ascii", "replace")[:size - 1].ljust(size, b"\0")


def driver_and_call_site(kernel, bugcheck) -> tuple[str, str]:
    """The driver whose code made the call that stopped the machine, and that call's site."""
    name = getattr(bugcheck, "driver_name", None)
    if not name:
        driver = getattr(kernel, "current_driver", None)
        name = getattr(driver, "name", driver)
    call_site = getattr(bugcheck, "call_site", None)
    return ("" if name is None else str(name)), ("" if call_site is None else str(call_site))


def _lay_out_bugcheck_context(kernel, layout: DebuggerDataLayout) -> int:
    bugcheck = kernel.bugcheck
    if bugcheck is None:
        return 0
    driver, call_site = driver_and_call_site(kernel, bugcheck)
    poke(kernel, layout.bugcheck_context, f.BUGCHECK_CONTEXT.pack(
        bugcheck.code & 0xFFFFFFFF, *bugcheck.parameters,
        _text(driver, f.DRIVER_NAME_SIZE), _text(call_site, f.CALL_SITE_SIZE),
        _text(getattr(bugcheck, "found_in", "") or "", f.FOUND_IN_SIZE),
        _lay_out_corrupting_write(kernel, layout)))
    return layout.bugcheck_context


def _lay_out_image(kernel, layout: DebuggerDataLayout, tracker_entries: int, big_entries: int) -> None:
    """The kernel image's headers, CodeView record and globals (see ``ntpool.dump.image``)."""
    base = kernel.kernel_data.base
    poke(kernel, base, kernel_image.headers_and_rdata(base, isf.guid_bytes(kernel.windows),
                                                       kernel.windows))
    poke(kernel, kernel_image.global_address(base, "KdVersionBlock"),
         kernel_image.version_block(base, kernel.windows))
    nonpaged, paged = kernel.nonpaged_pool, kernel.paged_pool
    for name, value, size in (
            ("PoolBigPageTable", layout.big_pages.va, 8), ("PoolBigPageTableSize", big_entries, 8),
            ("PoolTrackTable", layout.tracker.va, 8), ("PoolTrackTableSize", tracker_entries, 8),
            ("KeNumberProcessors", kernel.processors, 4), ("CmNtCSDVersion", kernel.windows.csd_version, 4),
            ("MmSystemRangeStart", SYSTEM_RANGE_START, 8),
            ("MmHighestUserAddress", f.MM_HIGHEST_USER_ADDRESS, 8),
            ("MmUserProbeAddress", f.MM_USER_PROBE_ADDRESS, 8),
            ("MmNonPagedPoolStart", nonpaged.base, 8), ("MmNonPagedPoolEnd", nonpaged.limit, 8),
            ("MmPagedPoolStart", paged.base, 8), ("MmPagedPoolEnd", paged.limit - 1, 8)):
        poke(kernel, kernel_image.global_address(base, name), value.to_bytes(size, "little"))


def lay_out_debugger_data(kernel) -> int:
    """Bring the in-memory tables up to date; returns KdDebuggerDataBlock's address."""
    install_shared_data(kernel)
    _stamp_system_time(kernel)
    sync = getattr(kernel.pool, "sync_to_memory", None)  # the segment heap's LFH counts
    if sync is not None:
        sync()
    layout = _layout_of(kernel)
    tracker_entries, big_entries = _lay_out_tables(kernel, layout)
    _lay_out_image(kernel, layout, tracker_entries, big_entries)
    context = _lay_out_bugcheck_context(kernel, layout)
    call_site_bytes = _lay_out_call_sites(kernel, layout)
    tracked = _lay_out_verifier_tracking(kernel, layout)
    poke(kernel, layout.kdbg, _kdbg_image(kernel, layout))
    ntpl = _ntpl_image(kernel, layout, tracker_entries, big_entries, context, call_site_bytes)
    site_bytes = _lay_out_allocation_sites(kernel, layout)
    for offset, value in ((f.NTPL_VERIFIER_TRACK_TABLE, layout.verifier_tracking.va if tracked else 0),
                          (f.NTPL_VERIFIER_TRACK_COUNT, tracked),
                          (f.NTPL_ALLOCATION_SITES, layout.allocation_sites.va if site_bytes else 0),
                          (f.NTPL_ALLOCATION_SITES_BYTES, site_bytes)):
        ntpl[offset:offset + 8] = value.to_bytes(8, "little")
    poke(kernel, layout.ntpl, ntpl)
    return layout.kdbg


def _lay_out_corrupting_write(kernel, layout: DebuggerDataLayout) -> int:
    """The write ntpool.pool.culprit recorded (0 when none was, or recording was off)."""
    recorder = getattr(kernel, "culprit_recorder", None)
    first = recorder.first if recorder is not None else None
    if first is None:
        return 0
    if not layout.corrupting_write:
        layout.corrupting_write = kernel.kernel_data.reserve(f.CORRUPTING_WRITE.size)
    poke(kernel, layout.corrupting_write, f.CORRUPTING_WRITE.pack(
        first.address, first.length & 0xFFFFFFFF, first.data[:16], _text(first.driver, 64),
        _text(first.line, 128), _text(first.what, 256)))
    return layout.corrupting_write


def _lay_out_verifier_tracking(kernel, layout: DebuggerDataLayout) -> int:
    """Driver Verifier's pool tracking list, as !verifier 3 reads it; returns the entry count."""
    verifier = getattr(kernel, "verifier", None)
    rows = sorted(getattr(getattr(verifier, "tracking", None), "allocations", {}).values())
    if not rows:
        return 0
    entry = f.VERIFIER_TRACK_ENTRY
    _region_for(kernel, layout.verifier_tracking, len(rows), entry.size)
    image = bytearray(len(rows) * entry.size)
    for index, row in enumerate(rows):
        entry.pack_into(image, index * entry.size, row.address, row.size, row.tag & 0xFFFFFFFF,
                        row.site & 0xFFFFFFFF)
    poke(kernel, layout.verifier_tracking.va, image)
    return len(rows)


def directory_table_base(kernel) -> int:
    return (kernel.space.cr3 << PAGE_SHIFT) & PTE_ADDRESS_MASK
