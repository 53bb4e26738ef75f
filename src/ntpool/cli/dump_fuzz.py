"""Fuzz everything that reads a file a user hands ntpool: crash dumps and forensics JSON.

    python -m ntpool.cli.dump_fuzz --runs 2000 [--seed S] [--windows 7,11] [--kinds kernel,full]
        [--timeout SECONDS] [--memory-mib 300] [--case N] [--keep DIR] [--seeds-dir DIR]

It makes real dumps first (per Windows design: the demo's drivers and crash; a machine with
Driver Verifier's special pool and tracking, drivers' lookaside lists and big allocations;
a forensics corpus dump with its truth manifest; a 256 MiB machine), as kernel (bitmap) and
full dumps (in a child process: the machines never weigh on the workers). Each case then
takes one of them, damages it in a targeted way and runs every reader on it, in a worker
process (one at a time, forked, restarted after a hang or a blow-up; a seed's working copy
is damaged in place and mended after the case):

- the dump header's fields (signature, DirectoryTableBase, PfnDataBase, the runs, the bitmap
  summary, the bitmap, DumpType, the KdDebuggerDataBlock pointer), sizes that claim terabytes;
- the page tables: PML4, PDPT, PD and PT entries pointed at themselves, at other tables, at
  frames past the dump, made large pages, stripped of their present bit;
- KDBG and ntpool's NTPL block (every pointer and count: the PFN database, the pool ranges,
  the tables' addresses and sizes), the pool descriptors (PendingFrees, ListHeads links),
  POOL_HEADERs on pool pages, the big page table, PoolTrackTable, the loaded module list,
  drivers' lookaside lists, the bug check context, the call-site and allocation-site tables,
  Verifier's tracking list, and on the segment heap ExPoolState, the heap globals, the heap
  ranges, segment headers and page range descriptors, LFH and VS subsegments and VS chunk
  headers;
- a forged 1 GiB page mapping every frame of a full dump, and a table (tracker, big pages,
  Verifier's list, call and allocation sites, heap ranges, modules, lookasides, pool state,
  a pool's range) pointed there, claiming as much as the file holds or about the reader's
  limits;
- storms of edits in one structure; truncation at many offsets (in the header, the bitmap,
  a page table, a pool page);
- and random bytes anywhere, a few at a time.

Then every ``ntpool kd`` command runs on it (``!analyze -v``, ``!pool`` with each flag,
``!poolval``, ``!poolused``, ``!poolfind`` by tag, wildcard and TagValue on both pools,
``!verifier 3``, ``!vm``, ``!pte``, ``!lookaside``, ``db``/``dw``/``dd``/``dq``/``dps``,
``dt`` of every structure, ``lm``, ``k``, ``r``, ``.bugcheck``, ``?``), kd's Tab completion,
``ntpool poolmon DUMP``'s model and screen and the page map's strips; now and then
``!poolfind`` shared with forked workers, whose text must be one process's. Every few cases,
``ntpool score`` gets a damaged truth manifest or scanner results instead, or ``poolsnap
--diff`` a damaged snapshot file.

A failure is anything that is not ntpool's own clear error: the reader may refuse a dump
with one line (``DumpFormatError``), a command prints its error (its output says what the
dump lacks), score refuses with one line naming the file (``ValueError``); any other
exception (a traceback), a case running past ``--timeout`` (a hang: the worker is killed,
its stack printed) or a case that takes the worker's peak resident memory past
``--memory-mib`` is reported with the command that replays it (``--seed S --case N``, with
the same version of this tool and the same ``--windows``/``--kinds``). The exit status is 1
when there was any failure.
"""

import argparse
import copy
import faulthandler
import io
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

MiB = 1 << 20
PAGE = 0x1000
QWORD = struct.Struct("<Q")

# --- the seed dumps ---------------------------------------------------------------------------


@dataclass
class Seed:
    name: str
    windows: str
    kind: str
    path: str
    truth: str | None = None  # a manifest for score cases
    targets: dict = field(default_factory=dict)  # region name -> [(file offset, length)]
    addresses: list = field(default_factory=list)  # addresses worth giving commands
    poolfind: str = ""  # !poolfind * output of the intact dump (score's results)
    # A full dump's forgery kit: the file offset of an unused PDPT entry (a 1 GiB page forged
    # there maps every frame from 0 at ``forge_va``, so a table pointed there is as large as
    # the file), and per table the file offsets of its pointer and its size and its entry size.
    forge_entry: int | None = None
    forge_va: int = 0
    forge_tables: dict = field(default_factory=dict)
    snapshot: str = ""  # poolsnap's file of the intact dump (poolsnap --diff's input)


class _Leaky:
    name = "leaky.sys"

    def DriverEntry(self, k, path):
        from ..constants import PoolType

        self.kept = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 40 + 16 * i, "LkNp") for i in range(3)]
        self.kept.append(k.ExAllocatePoolWithTag(PoolType.PagedPool, 200, "LkPg"))
        self.big = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 3 * PAGE, "LkBg")
        return 0

    def DriverUnload(self, k):
        k.ExFreePoolWithTag(self.kept[0], "LkNp")  # the rest leaks: DRIVER_VERIFIER_DETECTED_VIOLATION


class _Special:
    name = "special.sys"

    def DriverEntry(self, k, path):
        return 0

    def allocate(self, k, size):
        from ..constants import PoolType

        return k.ExAllocatePoolWithTag(PoolType.NonPagedPool, size, "SpPl")

    def free(self, k, va):
        k.ExFreePoolWithTag(va, "SpPl")


def _verifier_machine(windows: str):
    """Driver Verifier's tracking and special pool, drivers' lookaside lists, big allocations,
    frees of every kind, and a leak found at unload (bug check 0xC4)."""
    from ..constants import PoolType
    from ..errors import BugCheck
    from ..kernel import Kernel

    k = Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, windows=windows)
    k.verifier.enable("leaky.sys", pool_tracking=True)
    k.verifier.enable("special.sys", special_pool=True)
    special, leaky = _Special(), _Leaky()
    k.load_driver(special)
    kept = [special.allocate(k, size) for size in (24, 100, 700)]
    special.free(k, kept[1])
    rng = random.Random(7)
    live = []
    for step in range(400):
        if live and rng.random() < 0.4:
            va, tag = live.pop(rng.randrange(len(live)))
            k.ExFreePoolWithTag(va, tag)
            continue
        pool = rng.choice((PoolType.NonPagedPool, PoolType.PagedPool))
        size = rng.choice((8, 30, 64, 200, 500, 1000, 3000, 5000, 9000))
        tag = rng.choice(("Fred", "Barn", "Wilm", "Bett", "Ab c"))
        live.append((k.ExAllocatePoolWithTag(pool, size, tag), tag))
    lookasides = []
    for paged, tag in ((False, "kooL"), (True, "gaPL")):
        lookaside = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0xC0, "Lkas")  # an NPAGED_LOOKASIDE_LIST
        (k.ExInitializePagedLookasideList if paged else k.ExInitializeNPagedLookasideList)(
            lookaside, 0, 0, 0, 64, tag, 0)
        allocate = k.ExAllocateFromPagedLookasideList if paged else k.ExAllocateFromNPagedLookasideList
        free = k.ExFreeToPagedLookasideList if paged else k.ExFreeToNPagedLookasideList
        for entry in [allocate(lookaside) for _ in range(6)][:4]:
            free(lookaside, entry)
        lookasides.append(lookaside)
    k.load_driver(leaky)
    try:
        k.unload_driver(leaky)
    except BugCheck:
        pass
    return k, [va for va, _ in live] + kept + lookasides + [leaky.big]


def _demo_machine(windows: str):
    """The demo's story (the Python drivers) on small pools: traffic, a backup, the crash."""
    from ..tools.scenario import ScenarioRun, load_scenario

    run = ScenarioRun(load_scenario("demo-python"), seed=1,
                      kernel_options={"windows": windows, "nonpaged_pool_bytes": 4 * MiB,
                                      "paged_pool_bytes": 4 * MiB, "physical_memory_bytes": 32 * MiB})
    run.run()
    k = run.kernel
    return k, []


def _large_machine(windows: str):
    """256 MiB of physical memory, small pools, a few chunks of each size: a full dump whose
    size makes a forged table's claims cost what they would on a real machine."""
    from ..constants import PoolType
    from ..kernel import Kernel

    k = Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB, physical_memory_bytes=256 * MiB,
               windows=windows)
    for size in (16, 100, 600, 5000):
        for pool in (PoolType.NonPagedPool, PoolType.PagedPool):
            k.ExAllocatePoolWithTag(pool, size, "Larg")
    return k


def make_seeds(directory: str, windows_list=("7", "11"), kinds=("kernel", "full")) -> list[Seed]:
    from ..forensics.corpus import make_dump

    seeds = []
    for windows in windows_list:
        for name, build in (("demo", _demo_machine), ("verifier", _verifier_machine)):
            k, addresses = build(windows)
            for kind in kinds:
                path = os.path.join(directory, f"{name}-w{windows}-{kind}.dmp")
                k.write_dump(path, kind)
                seeds.append(Seed(f"{name}-w{windows}-{kind}", windows, kind, path, addresses=list(addresses)))
        if "full" in kinds:  # a 256 MiB full dump: tables forged as large as the file
            k = _large_machine(windows)
            path = os.path.join(directory, f"large-w{windows}-full.dmp")
            k.write_dump(path, "full")
            seeds.append(Seed(f"large-w{windows}-full", windows, "full", path))
        for number, kind in enumerate(kinds):
            entry = make_dump(directory, number + (10 if windows == "7" else 20), seed=5 + number, pool_mib=1,
                              kind=kind, windows=windows)
            path = os.path.join(directory, entry["dump"])
            seeds.append(Seed(f"corpus-w{windows}-{kind}", windows, kind, path,
                              truth=os.path.join(directory, entry["truth"])))
    for seed in seeds:
        locate(seed)
    return seeds


# --- where the structures are in the file -------------------------------------------------------


def _file_pieces(reader, va: int, length: int) -> list:
    """(file offset, length) pieces of [va, va + length) that the dump holds."""
    pieces = []
    end = va + length
    while va < end:
        take = min(end - va, PAGE - (va & 0xFFF))
        pa = reader.translate(va)
        if pa is not None:
            offset = reader.frame_offset(pa >> 12)
            if offset is not None:
                pieces.append((offset + (pa & 0xFFF), take))
        va += take
    return pieces


def _table_pages(reader) -> dict:
    """File offsets of each page-table level's pages (pml4, pdpt, pd, pt) holding kernel space."""
    levels = {"pml4": [], "pdpt": [], "pd": [], "pt": []}
    names = list(levels)
    seen = set()

    def walk(table_pa, level):
        offset = reader.frame_offset(table_pa >> 12)
        if offset is None or table_pa in seen or len(seen) > 4096:
            return
        seen.add(table_pa)
        levels[names[level]].append((offset, PAGE))
        if level == 3:
            return
        entries = struct.unpack_from("<512Q", reader.mapping, offset)
        for index, entry in enumerate(entries):
            if level == 0 and index == 0x1ED:
                continue  # the self-map
            if entry & 1 and not entry & 0x80:
                walk(entry & 0x000FFFFFFFFFF000, level + 1)

    walk(reader.directory_table_base, 0)
    return levels


FORGE_VA = 0xFFFFF80040000000  # an unused 1 GiB slot of the kernel's PDPT


def _forge_kit(seed: Seed, reader, ntpl: int) -> None:
    from ..dump import format as f

    def at(va):
        pa = reader.translate(va)
        return None if pa is None else reader.frame_offset(pa >> 12) + (pa & 0xFFF)

    pml4 = reader.frame_offset(reader.directory_table_base >> 12)
    pxe = QWORD.unpack_from(reader.mapping, pml4 + ((FORGE_VA >> 39) & 0x1FF) * 8)[0]
    pdpt = reader.frame_offset((pxe & 0x000FFFFFFFFFF000) >> 12) if pxe & 1 else None
    if pdpt is None or QWORD.unpack_from(reader.mapping, pdpt + ((FORGE_VA >> 30) & 0x1FF) * 8)[0]:
        return
    seed.forge_entry, seed.forge_va = pdpt + ((FORGE_VA >> 30) & 0x1FF) * 8, FORGE_VA
    kdbg = reader.kd_debugger_data_block
    layouts = reader.pool_layouts()
    for name, pointer, size, entry in (
            ("tracker", kdbg + f.KDBG_POOL_TRACK_TABLE, ntpl + f.NTPL_POOL_TRACK_TABLE_SIZE, layouts.tracker.size),
            ("big pages", ntpl + f.NTPL_POOL_BIG_PAGE_TABLE, ntpl + f.NTPL_POOL_BIG_PAGE_TABLE_SIZE,
             layouts.big_page.size),
            ("verifier tracking", ntpl + f.NTPL_VERIFIER_TRACK_TABLE, ntpl + f.NTPL_VERIFIER_TRACK_COUNT,
             f.VERIFIER_TRACK_ENTRY.size),
            ("call sites", ntpl + f.NTPL_CALL_SITE_TABLE, ntpl + f.NTPL_CALL_SITE_TABLE_BYTES, 1),
            ("allocation sites", ntpl + f.NTPL_ALLOCATION_SITES, ntpl + f.NTPL_ALLOCATION_SITES_BYTES, 1),
            ("heap ranges", ntpl + f.NTPL_HEAP_RANGES, ntpl + f.NTPL_HEAP_RANGE_COUNT, f.NTPL_HEAP_RANGE.size),
            ("modules", kdbg + f.KDBG_PS_LOADED_MODULE_LIST, None, 0x100),
            ("lookasides", reader.kernel_global("ExNPagedLookasideListHead"), None, 0x80),
            ("pool state", ntpl + f.NTPL_POOL_STATE, None, 0x40),
            ("nonpaged pool", kdbg + f.KDBG_MM_NONPAGED_POOL_START, kdbg + f.KDBG_MM_NONPAGED_POOL_END, 0),
            ("paged pool", kdbg + f.KDBG_MM_PAGED_POOL_START, kdbg + f.KDBG_MM_PAGED_POOL_END, 0)):
        pointer_at = at(pointer)
        if pointer_at is not None:
            seed.forge_tables[name] = (pointer_at, None if size is None else at(size), entry)


def _forgery(seed: Seed, size: int, rng: random.Random) -> tuple[list, list]:
    """Edits that map every frame of the file at forge_va (one forged 1 GiB page) and point a
    table there, claiming as many entries as the file could hold, or about a limit."""
    from ..dump import reader as limits

    name = rng.choice(sorted(seed.forge_tables))
    pointer_at, size_at, entry = seed.forge_tables[name]
    edits = [(seed.forge_entry, QWORD.pack(rng.choice((0x83, 0xE3, 0x8000000000000083)) | 0x63))]
    start = seed.forge_va + rng.choice((0, PAGE, 0x100000, rng.randrange(size // 2) & ~7))
    if entry == 0:  # a pool range: the whole forged gigabyte
        edits += [(pointer_at, QWORD.pack(seed.forge_va)), (size_at, QWORD.pack(seed.forge_va + (1 << 30) - 1))]
        return edits, [f"forged a 1 GiB page and made {name} span it"]
    edits.append((pointer_at, QWORD.pack(start)))
    done = f"forged a 1 GiB page and pointed {name} at {start:#x}"
    if size_at is not None:
        capacity = max(1, (size - (start - seed.forge_va)) // entry)
        most = {"tracker": "MAX_TRACKER_SLOTS", "big pages": "MAX_BIG_PAGE_SLOTS",  # about the reader's limits
                "verifier tracking": "MAX_VERIFIER_TRACKED", "call sites": "MAX_CALL_SITE_TABLE_BYTES",
                "allocation sites": "MAX_SITE_TABLE_BYTES"}.get(name)
        most = getattr(limits, most, 1 << 18) if most else 16
        count = rng.choice((capacity, capacity - 1, capacity // 2, most, most - 1, most + 1, rng.randrange(capacity)))
        edits.append((size_at, QWORD.pack(max(0, count))))
        done += f", {count} entries"
    return edits, [done]


def locate(seed: Seed) -> None:
    """Find the seed's structures in its file (its targets) and addresses worth asking about."""
    from ..debugger.poolscan import examine_page
    from ..debugger.session import KdSession
    from ..debugger.pooltag import PoolTagDatabase
    from ..dump import format as f
    from ..dump.reader import DumpReader, MemoryReadError

    with DumpReader(seed.path) as reader:
        t = seed.targets
        header = [(f.OFF_DIRECTORY_TABLE_BASE, 8), (f.OFF_PFN_DATABASE, 8), (f.OFF_PS_LOADED_MODULE_LIST, 8),
                  (f.OFF_MACHINE_IMAGE_TYPE, 4), (f.OFF_NUMBER_PROCESSORS, 4), (f.OFF_BUGCHECK_CODE, 4),
                  (f.OFF_BUGCHECK_PARAMETERS, 32), (f.OFF_KD_DEBUGGER_DATA_BLOCK, 8), (f.OFF_MAJOR, 8),
                  (f.OFF_DUMP_TYPE, 4), (f.OFF_REQUIRED_DUMP_SPACE, 8), (f.OFF_COMMENT, 16), (0, 8)]
        if reader.dump_type == f.DUMP_TYPE_FULL:
            header += [(f.OFF_PHYSICAL_MEMORY_BLOCK, 16), (f.OFF_RUNS, 16 * len(reader.runs) + 16)]
        else:
            base = f.HEADER_SIZE
            bits = QWORD.unpack_from(reader.mapping, base + f.SUMMARY_OFF_BITMAP_BITS)[0]
            header += [(base, 8), (base + f.SUMMARY_OFF_FIRST_PAGE, 24)]
            t["bitmap"] = [(base + f.SUMMARY_OFF_BITMAP, (bits + 7) // 8)]
        t["header"] = header
        t.update(_table_pages(reader))
        data = reader.debugger_data()
        t["kdbg"] = _file_pieces(reader, reader.kd_debugger_data_block, f.KDDEBUGGER_DATA64_SIZE)
        ntpl = QWORD.unpack(reader.read(reader.kd_debugger_data_block, 8))[0]
        t["ntpl"] = _file_pieces(reader, ntpl, f.NTPL_SIZE)
        t["pfn"] = [(f.OFF_PFN_DATABASE, 8)] + _file_pieces(reader, reader.kd_debugger_data_block +
                                                            f.KDBG_MM_PFN_DATABASE, 8)
        layouts = reader.pool_layouts()
        t["tracker"] = _file_pieces(reader, data["PoolTrackTable"], data["PoolTrackTableSize"] * layouts.tracker.size)
        t["big_pages"] = _file_pieces(reader, data["PoolBigPageTable"],
                                      data["PoolBigPageTableSize"] * layouts.big_page.size)
        t["descriptors"] = []
        for key in ("NonPagedPoolListHeads", "PagedPoolListHeads"):
            if data[key]:
                t["descriptors"] += _file_pieces(reader, data[key] - 0x140, 0x140 + 0x1000)
        if data["BugCheckContext"]:
            t["bugcheck_context"] = _file_pieces(reader, data["BugCheckContext"], f.BUGCHECK_CONTEXT.size)
        for key, size_key, name in (("CallSiteTable", "CallSiteTableBytes", "call_sites"),
                                    ("AllocationSites", "AllocationSitesBytes", "allocation_sites")):
            if data[key] and data[size_key]:
                t[name] = _file_pieces(reader, data[key], min(data[size_key], 1 << 16))
        if data["VerifierTrackTable"]:
            t["verifier_tracking"] = _file_pieces(reader, data["VerifierTrackTable"],
                                                  data["VerifierTrackCount"] * f.VERIFIER_TRACK_ENTRY.size)
        modules = [data["PsLoadedModuleList"]]
        try:
            entry = reader.read_u64(modules[0])
            while entry not in modules and len(modules) < 64:
                modules.append(entry)
                entry = reader.read_u64(entry)
        except MemoryReadError:
            pass
        t["modules"] = [piece for va in modules for piece in _file_pieces(reader, va, 0x100)]
        t["lookasides"] = []
        for head in ("ExNPagedLookasideListHead", "ExPagedLookasideListHead"):
            t["lookasides"] += _file_pieces(reader, reader.kernel_global(head), 16)
        for lookaside in reader.lookaside_lists() + reader.lookaside_lists("ExPagedLookasideListHead"):
            t["lookasides"] += _file_pieces(reader, lookaside["Address"], 0x80)
            seed.addresses.append(lookaside["Address"])
        t["kernel_image"] = _file_pieces(reader, data["KernBase"], 0x400)
        session = KdSession(reader, PoolTagDatabase.default(environ={}))
        headers, pool_pages = [], []
        seed.addresses += [p for p in reader.bugcheck_parameters if p > 0xFFFF]
        seed.addresses += [entry.Va for entry in reader.big_pages()]
        seed.addresses += [base for _, base, _ in reader.loaded_modules()]
        for pool in reader.pool_ranges():
            for va, offset in list(reader.mapped_pages(pool.start, pool.end))[:2048]:
                pool_pages.append((offset, PAGE))
                if reader.segment_heap:
                    continue
                report = examine_page(reader.page(va), va, pool.base_type)
                for chunk in report.chunks[:64]:
                    headers.append((offset + (chunk.address & 0xFFF), 16))
                    if len(seed.addresses) < 4000:
                        seed.addresses.append(chunk.address + 16)
        t["pool_pages"] = pool_pages
        if reader.segment_heap:
            heap = session.segment_heap()
            t["pool_state"] = _file_pieces(reader, data["PoolState"], 0x40)
            manager = reader.read_u64(data["PoolState"])
            t["heap_globals"] = _file_pieces(reader, manager, 16)
            t["heap_ranges"] = _file_pieces(reader, data["HeapRanges"],
                                            data["HeapRangeCount"] * f.NTPL_HEAP_RANGE.size)
            t["segment_heaps"], t["segments"], t["subsegments"] = [], [], []
            for each in heap.heaps:
                t["segment_heaps"] += _file_pieces(reader, each.heap_va, 0x800)
                for segment in heap.segments(each):
                    t["segments"] += _file_pieces(reader, segment, 2 * PAGE)
                for start, flags, pages in heap.runs(each):
                    t["subsegments"] += _file_pieces(reader, start, 0x80)
                    for block in heap.blocks((start, flags, pages), []):
                        if len(headers) < 20000:
                            headers += _file_pieces(reader, block.address - (16 if block.backend != "Lfh" else 0),
                                                    32 if block.backend != "Lfh" else 16)
                        if len(seed.addresses) < 4000:
                            seed.addresses.append(block.body)
        t["pool_headers"] = headers
        if reader.dump_type == f.DUMP_TYPE_FULL and reader.runs[0].first == 0:
            _forge_kit(seed, reader, ntpl)
        seed.addresses = sorted(set(seed.addresses))
        from .dump_source import DumpSource

        seed.snapshot = DumpSource(seed.path).snapshot().to_json()
        seed.poolfind = "\n".join(session.run_one(command) for command in ("!poolfind * 0", "!poolfind * 1"))
    for name in [name for name, pieces in seed.targets.items() if not pieces]:
        del seed.targets[name]


# --- damage ------------------------------------------------------------------------------------

# Addresses a lying pointer or range bound may take: the kernel half's edges, the page-table
# self-map (PML4 index 0x1ED), KUSER_SHARED_DATA, a user address, the top of memory.
ADDRESSES = (0xFFFF800000000000, 0xFFFFF68000000000, 0xFFFFF6FB7DBED000, 0xFFFFF78000000000,
             0xFFFFF80000000000, 0xFFFFFA8000000000, 0xFFFFFFFFFFFFF000, 0x7FFFFFFEFFFF, 0x10000,
             0x0000800000000000)
HUGE = (1 << 40, 1 << 48, 1 << 52, 1 << 62, (1 << 63) + 1, (1 << 64) - 1, (1 << 32) - 1, 1 << 31,
        0x7FFFFFFF, 0x80000000, 0xFFFFFFFF00000000)


def _value(rng: random.Random, old: int, width: int, seed: Seed, reader_info: dict) -> int:
    mask = (1 << (8 * width)) - 1
    choice = rng.randrange(15)
    if choice == 14:
        value = rng.choice(ADDRESSES) + rng.choice((0, 0, 8, 0x1000, -0x1000))
    elif choice == 0:
        value = 0
    elif choice == 1:
        value = mask
    elif choice == 2:
        value = rng.choice(HUGE)
    elif choice == 3:
        value = old ^ (1 << rng.randrange(8 * width))
    elif choice == 4:
        value = old + rng.choice((-1, 1, -16, 16, -PAGE, PAGE, 1 << 20))
    elif choice == 5:
        value = rng.getrandbits(8 * width)
    elif choice == 6 and seed.addresses:
        value = rng.choice(seed.addresses) + rng.choice((0, 0, -16, 8, PAGE))
    elif choice == 7:  # a page-table entry to a table, the DTB, or a frame past the dump
        frame = rng.choice((reader_info["dtb"] >> 12, reader_info["frames"], reader_info["frames"] - 1,
                            rng.randrange(max(1, reader_info["frames"])), (1 << 40) - 1))
        value = frame << 12 | rng.choice((0x63, 0x62, 0xE3, 0x1, 0x8000000000000063))
    elif choice == 8:
        value = old | 0x80 if rng.random() < 0.5 else old & ~1
    elif choice == 9:
        value = rng.randrange(1 << 16)
    elif choice == 10:
        value = old * rng.choice((2, 16, 1 << 12, 1 << 20))
    elif choice == 11:
        value = (old & ~0xFF) | rng.randrange(256)
    elif choice == 12:
        value = -old
    else:
        value = old >> rng.randrange(1, 8 * width)
    return value & mask


def mutate(seed: Seed, size: int, read, rng: random.Random, info: dict) -> tuple[list, int | None, list]:
    """Damage for a file of ``size`` bytes (``read(offset, length)`` gives its bytes):
    (edits [(offset, bytes)], where to cut it or None, what was done)."""
    edits, done = [], []
    plan = rng.random()
    regions = sorted(seed.targets)
    if seed.forge_entry is not None and rng.random() < 0.5:
        edits, done = _forgery(seed, size, rng)
        plan = 1.0  # and a few targeted edits besides
    storm = None
    if 0.1 <= plan < 0.25:  # many edits in one structure
        storm = rng.choice(regions)
    for _ in range(rng.randrange(20, 80) if storm else rng.choice((1, 1, 1, 2, 3, 5, 12))):
        if plan < 0.1:  # random bytes anywhere
            at = rng.randrange(size)
            patch = rng.randbytes(rng.randrange(1, 9))
            edits.append((at, patch))
            done.append(f"random {len(patch)} bytes at {at:#x}")
            continue
        region = storm or rng.choice(regions)
        offset, length = rng.choice(seed.targets[region])
        width = rng.choice((8, 8, 8, 4, 2, 1)) if length >= 8 else min(length, rng.choice((1, 2, 4)))
        at = offset + rng.randrange(max(1, length - width + 1))
        if width >= 2 and rng.random() < 0.8:
            at -= (at - offset) % width
        if at + width > size:
            continue
        old = int.from_bytes(read(at, width), "little")
        new = _value(rng, old, width, seed, info)
        edits.append((at, new.to_bytes(width, "little")))
        done.append(f"{region} {width}@{at:#x}: {old:#x} -> {new:#x}")
    cut = None
    if rng.random() < 0.12:
        region = rng.choice(regions + ["anywhere", "anywhere"])
        if region == "anywhere":
            cut = rng.randrange(size + 1)
        else:
            offset, length = rng.choice(seed.targets[region])
            cut = offset + rng.randrange(length + 1)
        done.append(f"truncated at {cut:#x} ({region})")
    return edits, cut, done


def write_damaged(source: str, path: str, edits: list, cut: int | None) -> None:
    """A copy of ``source`` at ``path`` with ``edits`` made and cut at ``cut`` (a page of
    memory at a time, whatever the dump's size)."""
    with open(source, "rb") as original, open(path, "wb") as out:
        left = os.fstat(original.fileno()).st_size if cut is None else cut
        while left > 0:
            piece = original.read(min(left, 1 << 20))
            if not piece:
                break
            out.write(piece)
            left -= len(piece)
    with open(path, "r+b") as out:
        for at, patch in edits:  # in order: a later edit over an earlier one wins
            out.seek(at)
            out.write(patch)
        if cut is not None:
            out.truncate(cut)  # (an edit past the cut is cut off again)


# --- running the readers ------------------------------------------------------------------------


class Failure(Exception):
    """What a reader did that is not one clear error."""


def _commands(seed: Seed, rng: random.Random) -> list:
    from ..debugger import display as show

    addresses = list(rng.sample(seed.addresses, min(3, len(seed.addresses))))
    addresses += [rng.getrandbits(64), 0xFFFFFA8000000000 + rng.randrange(1 << 24) * 16,
                  rng.choice((0, 0xFFFFFFFFFFFFFFFF, 0xFFFFF6FB7DBED000))]
    a = rng.choice(addresses)
    commands = ["!analyze -v", "!poolused", "!poolused 1", "!poolused 2", "!poolused 4 Fr*",
                "!poolfind *", "!poolfind * 1", "!poolfind Fred", "!poolfind ?erF 1", "!poolfind 0x64657246",
                "!verifier 3", "!verifier 3 leaky.sys", "!vm", "!lookaside", "!lookaside -all",
                "lm", "k", "r", ".bugcheck", "? 1+2*3", ".help"]
    for address in addresses:
        commands += [f"!pool {address:x}", f"!pool {address:x} 1", f"!pool {address:x} 2",
                     f"!poolval {address:x}", f"!pte {address:x}", f"db {address:x}",
                     f"dq {address:x} L{rng.choice((1, 0x20, 0x400))}", f"dps {address:x} L8",
                     f"!lookaside {address:x}"]
    for name in show.structure_names():
        commands.append(f"dt {name} {a:x}")
    for command in ("dw", "dd"):
        commands.append(f"{command} {a:x}")
    return commands


def run_dump(path: str, seed: Seed, rng: random.Random, pooltags) -> str:
    """Every reader on the dump at ``path``: "refused" / "read"; Failure otherwise."""
    from .kd import completion_words
    from ..debugger.session import KdSession
    from ..dump.reader import DumpFormatError, DumpReader

    try:
        reader = DumpReader(path)
    except DumpFormatError as error:
        _one_line(error, "DumpReader")
        return "refused"
    except Exception as error:
        raise Failure(f"DumpReader: {_described(error)}") from error
    with reader:
        session = KdSession(reader, pooltags)
        if rng.random() < 0.2:
            _forked_poolfind(session, rng)
        for command in _commands(seed, rng):
            try:
                if command.startswith("!poolfind"):
                    for piece in session.stream(command):  # as ntpool kd prints it
                        if not isinstance(piece, str):
                            raise Failure(f"{command}: a piece that is not text: {piece!r}")
                else:
                    output = session.run_one(command)
                    if not isinstance(output, str):
                        raise Failure(f"{command}: output that is not text")
            except Failure:
                raise
            except Exception as error:
                raise Failure(f"kd {command}: {_described(error)}") from error
        for line in ("", "!poolfind ", "!poolused ", "!pool ", "dt ", "!verifier 3 "):
            try:
                completion_words(session, line)
            except Exception as error:
                raise Failure(f"kd's Tab completion of {line!r}: {_described(error)}") from error
    run_poolmon(path, pooltags)
    return "read"


def _forked_poolfind(session, rng: random.Random) -> None:
    """!poolfind shared with forked workers (as on a big pool: here on any pool) must print
    what one process prints, errors included."""
    from ..debugger import session as kd

    command = rng.choice(("!poolfind *", "!poolfind * 1", "!poolfind Fred", "!poolfind ?e*"))
    try:
        alone = "".join(session.stream(command))
        saved = kd.PARALLEL_MIN_PAGES, kd.PARALLEL_PROCESSES
        kd.PARALLEL_MIN_PAGES, kd.PARALLEL_PROCESSES = 1, rng.choice((2, 3))
        try:
            shared = "".join(session.stream(command))
        finally:
            kd.PARALLEL_MIN_PAGES, kd.PARALLEL_PROCESSES = saved
    except Exception as error:
        raise Failure(f"kd {command} (forked): {_described(error)}") from error
    if shared != alone:
        at = next((i for i, (a, b) in enumerate(zip(alone, shared)) if a != b), min(len(alone), len(shared)))
        raise Failure(f"kd {command}: forked workers printed other text than one process, from "
                      f"character {at}: {alone[at:at + 80]!r} against {shared[at:at + 80]!r}")


def run_poolmon(path: str, pooltags) -> None:
    """``ntpool poolmon DUMP --once`` as the command runs it, and the page map's strips."""
    from rich.console import Console

    from .dump_source import DumpSource
    from .poolmon_view import ViewState, poolmon_screen
    from ..dump.reader import DumpFormatError
    from ..tools.poolmon import PoolmonModel

    try:
        source = DumpSource(path)
        model = PoolmonModel(pooltags=pooltags)
        model.update(source.snapshot())
        screen = poolmon_screen(model, source.status(), prompt=" ", limit=None, width=120,
                                state=ViewState(), machine=source.machine())
        Console(file=io.StringIO(), width=120).print(screen)
        source.page_strips("both")
    except DumpFormatError as error:
        _one_line(error, "poolmon")
    except Exception as error:
        raise Failure(f"poolmon: {_described(error)}") from error


def _one_line(error: Exception, who: str) -> None:
    text = str(error)
    if not text or "\n" in text:
        raise Failure(f"{who}: an error that is not one line: {text!r}")


def _described(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = "; ".join(f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.name}" for frame in frames[-3:])
    return f"{type(error).__name__}: {str(error)[:200]} (at {where})"


# --- score -----------------------------------------------------------------------------------------

JSON_VALUES = (None, True, 0, -1, 1 << 70, 1.5, float("nan"), float("inf"), "", "0x", "0xfffffa8000000000", "zz",
               [], {}, [[]], {"a": 1}, "x" * 300)


def _json_paths(document, prefix=()):
    yield prefix
    if isinstance(document, dict):
        for key, value in list(document.items())[:40]:
            yield from _json_paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index in sorted({0, len(document) // 2, len(document) - 1}):
            if 0 <= index < len(document):
                yield from _json_paths(document[index], prefix + (index,))


def _json_value(rng: random.Random):
    """One of JSON_VALUES, a copy: a list or dict put into a document may be written into by
    a later damage, which must change neither the constant (every later case, and a case
    replayed alone would not be the one that failed) nor make a document hold itself."""
    return copy.deepcopy(rng.choice(JSON_VALUES))


def _damage_json(document, rng: random.Random):
    paths = list(_json_paths(document))
    for _ in range(rng.choice((1, 1, 2, 4))):
        path = rng.choice(paths)
        if not path:
            return _json_value(rng)
        parent = document
        try:
            for step in path[:-1]:
                parent = parent[step]
            if rng.random() < 0.2 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = _json_value(rng)
        except (KeyError, IndexError, TypeError):
            pass
    return document


def _damage_text(text: str, rng: random.Random) -> str:
    raw = bytearray(text.encode("utf-8", "replace"))
    for _ in range(rng.choice((1, 3, 8))):
        if not raw:
            break
        at = rng.randrange(len(raw))
        raw[at:at + 1] = rng.choice((rng.randbytes(1), b"\xff", b"[", b"{", b"9" * 5000, b"\0", b"\n",
                                     b"[" * 100000 + b"]" * 100000, b'{"a":' * 5000 + b"1" + b"}" * 5000))
    if rng.random() < 0.3:
        del raw[rng.randrange(len(raw) + 1):]
    return raw.decode("latin-1")


def run_score(seed: Seed, rng: random.Random, directory: str) -> str:
    from ..forensics.score import format_score, score_files

    with open(seed.truth) as handle:
        truth_text = handle.read()
    results = {"poolfind": seed.poolfind,
               "csv": "\n".join(f"{a:#x},Fred,allocated" for a in seed.addresses[:50]),
               "vol": json.dumps([{"Offset": a, "Tag": "Fred", "Layer": "layer_name", "State": "Allocated"}
                                  for a in seed.addresses[:50]]),
               "bigpools": json.dumps([{"Allocation": a, "Tag": "LkBg", "NumberOfBytes": 12288,
                                        "Status": "Allocated"} for a in seed.addresses[:5]])}
    which = rng.choice(sorted(results))
    result_text = results[which]
    how = rng.randrange(4)
    if how in (0, 2):
        truth_text = json.dumps(_damage_json(json.loads(truth_text), rng)) if rng.random() < 0.7 \
            else _damage_text(truth_text, rng)
    if how in (1, 2):
        if which in ("vol", "bigpools") and rng.random() < 0.7:
            result_text = json.dumps(_damage_json(json.loads(result_text), rng))
        else:
            result_text = _damage_text(result_text, rng)
    truth_path = os.path.join(directory, "truth.json")
    results_path = os.path.join(directory, f"results.{which}")
    with open(truth_path, "w", encoding="latin-1", errors="replace") as out:
        out.write(truth_text)
    with open(results_path, "w", encoding="latin-1", errors="replace") as out:
        out.write(result_text)
    try:
        format_score(score_files(truth_path, [results_path], rng.choice((None, ["Fred"], ["LkBg", "zz"]))))
    except ValueError as error:
        text = str(error)
        if "\n" in text or directory not in text and "manifest" not in text:
            raise Failure(f"score: a ValueError that names no file: {_described(error)}") from error
        return "refused"
    except Exception as error:
        raise Failure(f"score: {_described(error)}") from error
    return "scored"


def run_poolsnap(seed: Seed, rng: random.Random, directory: str) -> str:
    """``ntpool poolsnap --diff BEFORE AFTER`` on a damaged snapshot file."""
    from ..tools.poolmon import Snapshot, grown_tags

    text = json.dumps(_damage_json(json.loads(seed.snapshot), rng)) if rng.random() < 0.6 \
        else _damage_text(seed.snapshot, rng)
    path = os.path.join(directory, "after.json")
    try:
        after = Snapshot.from_json(text, name=path)
        grown_tags(Snapshot.from_json(seed.snapshot), after)
    except ValueError as error:
        if "\n" in str(error) or path not in str(error):
            raise Failure(f"poolsnap: a ValueError that names no file: {_described(error)}") from error
        return "refused"
    except Exception as error:
        raise Failure(f"poolsnap: {_described(error)}") from error
    return "read"


# --- cases and workers ------------------------------------------------------------------------------


LAST_DAMAGE: list = []  # the last dump case's seed and damage


def run_case(seeds: list, master: int, number: int, directory: str, pooltags, keep: str | None = None) -> str:
    """One case, a function of (master seed, number): its outcome, or Failure."""
    rng = random.Random(f"{master}:{number}")
    seed = rng.choice(seeds)
    LAST_DAMAGE[:] = [seed.name]
    if seed.truth and rng.random() < 0.5:
        return "score " + run_score(seed, rng, directory)
    if rng.random() < 0.05:
        return "poolsnap " + run_poolsnap(seed, rng, directory)
    info = _reader_info(seed)
    with open(seed.path, "rb") as handle:
        def read(offset, length):
            handle.seek(offset)
            return handle.read(length)

        edits, cut, done = mutate(seed, os.fstat(handle.fileno()).st_size, read, rng, info)
    if cut is None:  # the seed's working copy, damaged for the case and mended after it
        path = os.path.join(directory, os.path.basename(seed.path))
        if not os.path.exists(path):
            shutil.copyfile(seed.path, path)
        mend = _patch(path, edits)
    else:
        path = os.path.join(directory, "case.dmp")
        write_damaged(seed.path, path, edits, cut)
        mend = []
    LAST_DAMAGE[:] = [seed.name, *done]  # for a blow-up found after the case
    try:
        if keep:
            shutil.copy(path, os.path.join(keep, f"case-{master}-{number}.dmp"))
        outcome = run_dump(path, seed, rng, pooltags)
    except Failure as failure:
        raise Failure(f"{failure} [{seed.name}: {'; '.join(done)}]") from failure
    finally:
        _patch(path, mend)
    return f"dump {outcome}"


def _patch(path: str, edits: list) -> list:
    """Make ``edits`` in the file at ``path``; returns the edits that undo them."""
    undo = []
    with open(path, "r+b") as out:
        for at, patch in edits:
            out.seek(at)
            undo.append((at, out.read(len(patch))))
            out.seek(at)
            out.write(patch)
    return undo[::-1]


_INFO: dict = {}


def _reader_info(seed: Seed) -> dict:
    if seed.path not in _INFO:
        from ..dump.reader import DumpReader

        with DumpReader(seed.path) as reader:
            _INFO[seed.path] = {"dtb": reader.directory_table_base,
                                "frames": max(run.first + run.count for run in reader.runs)}
    return _INFO[seed.path]


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(connection, seeds, master, timeout, memory_mib, stacks_path, keep, directory) -> None:
    from ..debugger.pooltag import PoolTagDatabase

    # Address space capped well above the limit: a runaway allocation is a MemoryError here,
    # never the machine's memory.
    try:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    except (ValueError, OSError):
        pass
    pooltags = PoolTagDatabase.default(environ={})
    stacks = open(stacks_path, "w")
    while True:
        try:
            number = connection.recv()
        except EOFError:  # the parent is gone
            return
        if number is None:
            return
        faulthandler.dump_traceback_later(timeout, exit=True, file=stacks)
        started = time.process_time()
        try:
            outcome, detail = "ok", run_case(seeds, master, number, directory, pooltags, keep)
        except Failure as failure:
            outcome, detail = "failure", str(failure)
        except MemoryError:
            outcome, detail = "failure", "MemoryError (address space past 8 GiB)"
        except Exception as error:  # the fuzzer's own mistake: say so, carry on
            outcome, detail = "failure", f"the fuzzer failed: {_described(error)}"
        faulthandler.cancel_dump_traceback_later()
        rss = max(_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # (peak: Linux KiB)
        if rss > memory_mib:
            outcome, detail = "failure", (f"resident memory {rss:.0f} MiB in the case ({detail}) "
                                          f"[{LAST_DAMAGE[0]}: {'; '.join(LAST_DAMAGE[1:])}]")
        connection.send((number, outcome, detail, time.process_time() - started, rss))
        if outcome == "failure" and rss > memory_mib:
            return


class Pool:
    """One worker process at a time, restarted after a hang or a blow-up."""

    def __init__(self, seeds, master, timeout, memory_mib, keep):
        self.args = (seeds, master, timeout, memory_mib)
        self.keep = keep
        self.stacks = tempfile.NamedTemporaryFile(prefix="dump-fuzz-stacks-", delete=False).name
        self.process = None
        self.outcome_ended_it = False  # the last case's report ended the worker (a blow-up)
        self.directory = None

    def _start(self):
        context = multiprocessing.get_context("fork")
        self.connection, child = context.Pipe()
        # The worker's folder (its seeds' working copies, 256 MiB each) is this process's to
        # remove: a worker killed after a hang cannot.
        self._remove_directory()
        self.directory = tempfile.mkdtemp(prefix="dump-fuzz-")
        self.process = context.Process(target=_worker, args=(child, *self.args, self.stacks, self.keep,
                                                             self.directory), daemon=True)
        self.process.start()

    def _remove_directory(self):
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def run(self, number: int, timeout: float):
        if self.process is not None and self.outcome_ended_it:
            self.process.join(10)  # a worker that reported a blow-up ends itself
        if self.process is None or not self.process.is_alive():
            self._start()
        self.outcome_ended_it = False
        try:
            self.connection.send(number)
            answered = self.connection.poll(timeout + 30)  # (faulthandler ends a hang at timeout)
            if answered:
                result = self.connection.recv()
                self.outcome_ended_it = result[1] == "failure" and "resident memory" in result[2]
                return result
        except (EOFError, OSError):  # the worker died: its stack says where
            answered = True
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        with open(self.stacks) as handle:
            stack = handle.read().strip()
        code = self.process.exitcode
        self.process = None
        if "Timeout" in stack or not answered:
            what = f"a hang (past the time limit of {timeout:g} s)"
        else:
            what = f"the worker died (exit code {code})"
        # faulthandler prints the innermost frame first: that is where it hung
        return number, "failure", f"{what}: {stack[:2000]}" if stack else what, timeout, 0.0

    def close(self):
        if self.process is not None and self.process.is_alive():
            try:
                self.connection.send(None)
            except OSError:
                pass
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self._remove_directory()
        os.unlink(self.stacks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntpool.cli.dump_fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="master seed (case N is a function of it)")
    parser.add_argument("--case", type=int, help="replay only this case")
    parser.add_argument("--first", type=int, default=0, help="the first case number")
    parser.add_argument("--windows", default="7,11", help="the seed dumps' Windows (7, 10, 11)")
    parser.add_argument("--kinds", default="kernel,full")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a case may take")
    parser.add_argument("--memory-mib", type=float, default=300.0, help="resident memory allowed")
    parser.add_argument("--seeds-dir", help="keep the seed dumps here (made once)")
    parser.add_argument("--keep", help="copy each damaged dump here (to replay by hand)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    windows = tuple(w for w in args.windows.split(",") if w)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    directory = args.seeds_dir or tempfile.mkdtemp(prefix="dump-fuzz-seeds-")
    os.makedirs(directory, exist_ok=True)
    started = time.time()
    # Made in a child process: the machines behind them would stay in this one's memory (and
    # in every worker forked from it).
    with multiprocessing.get_context("fork").Pool(1) as maker:
        seeds = maker.apply(make_seeds, (directory, windows, kinds))
    print(f"{len(seeds)} seed dumps ({', '.join(seed.name for seed in seeds)}) in {time.time() - started:.0f} s",
          flush=True)
    numbers = [args.case] if args.case is not None else range(args.first, args.first + args.runs)
    pool = Pool(seeds, args.seed, args.timeout, args.memory_mib, args.keep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill PID: the worker is stopped too
    outcomes: dict = {}
    failures = []
    slowest = (0.0, None)
    peak = 0.0
    try:
        for number in numbers:
            number, outcome, detail, seconds, rss = pool.run(number, args.timeout)
            peak = max(peak, rss)
            slowest = max(slowest, (seconds, number))
            key = detail if outcome == "ok" else "failure"
            outcomes[key] = outcomes.get(key, 0) + 1
            if outcome == "failure":
                failures.append((number, detail))
                print(f"FAILURE case {number}: {detail}\n  replay: python -m ntpool.cli.dump_fuzz "
                      f"--seed {args.seed} --case {number} --windows {args.windows} --kinds {args.kinds}",
                      flush=True)
            elif not args.quiet and (number + 1) % 100 == 0:
                print(f"... {number + 1} cases, {len(failures)} failures, {time.time() - started:.0f} s", flush=True)
    finally:
        pool.close()
        if not args.seeds_dir:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"{len(numbers)} cases (seed {args.seed}): " +
          ", ".join(f"{count} {name}" for name, count in sorted(outcomes.items())) +
          f"; slowest case {slowest[1]} ({slowest[0]:.1f} s CPU); peak resident {peak:.0f} MiB; "
          f"{len(failures)} failures; {time.time() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
