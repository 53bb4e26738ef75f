"""The truth about a machine's pools: every chunk, every big allocation, as a manifest.

A dump scanner finds pool allocations by their headers; ntpool knows them from the
allocator's own state. ``manifest(kernel)`` walks every pool page the allocator holds (its
page map: small pages and big allocations), reads each header chain where the allocator keeps
it (physical memory, or the page file for a page that is paged out) and names each chunk's
state from the allocator's lists: ``lookaside`` (cached on a lookaside list), ``pending free``
(waiting on a delayed-free list), ``free`` (PoolType 0: on ListHeads, or a one-block
remainder on no list) or ``allocated``. Big allocations come from the big page table the
allocator keeps. A page whose header chain a driver damaged is marked corrupt (its chunks up
to the damage are listed, ``complete`` says whether that is all of them); damage planted on
purpose after the manifest was made (``mark_corrupt``), and planted decoy headers, are
recorded by whoever planted them (``ntpool.forensics.corpus``).

The manifest is JSON (``write``): addresses as hex strings, chunks as rows of
``CHUNK_FIELDS``. ``check_against_tracker`` proves it agrees with the per-tag counters.
"""

import json
import os
from dataclasses import dataclass, field

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..pool.descriptor import PAGE_BIG_FIRST, PAGE_SMALL
from ..pool.segment_heap.walk import walk
from ..pool.layout import BLOCK_SHIFT, HEADER_FIRST8, HEADER_SIZE, LOOKASIDE_MAX_BLOCKS, POINTER, \
    page_problems
from ..tags import PROTECTED_POOL, display

FORMAT = "ntpool-truth"
VERSION = 1
STATES = ("allocated", "free", "lookaside", "pending free")
CHUNK_FIELDS = ("address", "physical", "pool", "tag_value", "tag", "size", "block_size",
                "previous_size", "pool_type", "state", "paged_out", "corrupt_page")
BIG_FIELDS = ("address", "physical", "pool", "tag_value", "tag", "size", "pages", "paged_out")
# A segment-heap machine's rows carry one more field at the end, which backend holds the
# chunk (Lfh, Vs; big allocations: Vs, Segment, Large); readers find fields by name, so a
# reader that does not know it ignores it, and Windows 7 manifests are unchanged.
SEGMENT_HEAP_CHUNK_FIELDS = CHUNK_FIELDS + ("backend",)
SEGMENT_HEAP_BIG_FIELDS = BIG_FIELDS + ("backend",)


class ManifestUnavailable(ValueError):
    """The manifest cannot be derived honestly from this machine's pool (the message says what
    is missing)."""


def shown(tag_value: int) -> str:
    """A tag as tools show it: the four bytes in memory order, protected bit stripped."""
    return display(tag_value & ~PROTECTED_POOL)


@dataclass
class Truth:
    chunks: list = field(default_factory=list)  # rows of CHUNK_FIELDS
    big: list = field(default_factory=list)  # rows of BIG_FIELDS
    paged_out_pages: list = field(default_factory=list)
    corrupt_pages: list = field(default_factory=list)  # {"page", "pool", "how"}
    decoys: list = field(default_factory=list)  # {"address", "physical", "tag", "aligned", "inside"}
    pages: list = field(default_factory=list)  # [va, pa] of every resident pool page
    pools: list = field(default_factory=list)
    dump: dict = field(default_factory=dict)  # file, kind (filled by whoever writes the dump)
    chunk_fields: tuple = CHUNK_FIELDS
    big_fields: tuple = BIG_FIELDS

    def to_json(self) -> dict:
        def hexed(value):
            return None if value is None else f"{value:#x}"

        return {
            "format": FORMAT, "version": VERSION, "dump": self.dump, "pools": self.pools,
            "chunk_fields": list(self.chunk_fields),
            "chunks": [[hexed(r[0]), hexed(r[1]), *r[2:]] for r in self.chunks],
            "big_fields": list(self.big_fields),
            "big_allocations": [[hexed(r[0]), hexed(r[1]), *r[2:]] for r in self.big],
            "paged_out_pages": [hexed(p) for p in self.paged_out_pages],
            "pages": [[hexed(va), hexed(pa)] for va, pa in self.pages],
            "corrupt_pages": [{**c, "page": hexed(c["page"])} for c in self.corrupt_pages],
            "decoys": [{**d, "address": hexed(d["address"]), "physical": hexed(d["physical"]),
                        "inside": hexed(d["inside"])} for d in self.decoys],
        }


def _lookaside_entries(pool) -> set:
    """Bodies of the chunks cached on the pool's lookaside lists (every processor's)."""
    bodies = set()
    for lookaside in pool.lookasides:  # each processor's set and the system-wide one
        heads = lookaside.head
        for block_size in range(1, LOOKASIDE_MAX_BLOCKS + 1):
            entry = heads[block_size]
            while entry and entry not in bodies:
                bodies.add(entry)
                entry = POINTER.unpack_from(_page_bytes(pool, entry & ~0xFFF)[0], entry & 0xFFF)[0]
    return bodies


def _pending_frees(pool) -> set:
    """Bodies waiting on the pool's delayed-free list (PendingFrees), when it has one."""
    return {chunk + HEADER_SIZE for chunk in getattr(pool, "pending", ())}


def _page_bytes(pool, page_va: int):
    """(the page's bytes, its physical address or None when paged out)."""
    base = pool.tlb.get(page_va >> PAGE_SHIFT)
    if base is not None:
        return memoryview(pool.mem)[base:base + PAGE_SIZE], base
    pager = pool.pager
    if pager is not None and pager.is_paged_out(page_va):
        return pager.page_file[pager.slot_of[page_va >> PAGE_SHIFT]], None
    raise KeyError(f"pool page {page_va:#x} is neither resident nor paged out")


def _walk(pool, truth: Truth, lookaside: set, pending: set) -> None:
    kinds = pool.page_kind
    index = kinds.find(PAGE_SMALL)
    while index >= 0:
        page_va = pool.base + (index << PAGE_SHIFT)
        page, base = _page_bytes(pool, page_va)
        if base is None:
            truth.paged_out_pages.append(page_va)
        else:
            truth.pages.append([page_va, base])
        problems = page_problems(page, page_va)
        offset = 0
        while offset < PAGE_SIZE:
            prev, _index, size, pool_type, tag = HEADER_FIRST8.unpack_from(page, offset)
            if not size or offset + (size << BLOCK_SHIFT) > PAGE_SIZE:
                break  # a header a driver destroyed: what follows it is not known here
            body = page_va + offset + HEADER_SIZE
            if body in lookaside:
                state = "lookaside"
            elif body in pending:
                state = "pending free"
            elif pool_type == 0:
                state = "free"
            else:
                state = "allocated"
            truth.chunks.append([page_va + offset, None if base is None else base + offset, pool.name,
                                 tag, shown(tag), size << BLOCK_SHIFT, size, prev, pool_type, state,
                                 base is None, bool(problems)])
            offset += size << BLOCK_SHIFT
        if problems:
            truth.corrupt_pages.append({"page": page_va, "pool": pool.name, "how": "; ".join(problems),
                                        "complete": offset == PAGE_SIZE})
        index = kinds.find(PAGE_SMALL, index + 1)


def mark_corrupt(truth: Truth, page_va: int, pool: str, how: str) -> None:
    """Record that a page's headers were damaged after the manifest was made (its chunks as
    they were stay the truth)."""
    for row in truth.chunks:
        if row[0] & ~(PAGE_SIZE - 1) == page_va:
            row[11] = True
    truth.corrupt_pages.append({"page": page_va, "pool": pool, "how": how, "complete": True})


def manifest(kernel) -> Truth:
    """Every chunk and big allocation of every pool, from the allocator's state (ManifestUnavailable
    when this machine's pool is one the manifest cannot walk)."""
    if getattr(kernel.windows, "segment_heap", False):
        return _segment_heap_manifest(kernel)
    truth = Truth()
    for pool in (kernel.nonpaged_pool, kernel.paged_pool):
        if not hasattr(pool, "lookasides") or not hasattr(pool, "page_kind"):
            raise ManifestUnavailable(f"no truth manifest for {kernel.windows}: its {pool.name} "
                                      f"({type(pool).__name__}) is neither Windows 7's pool nor the "
                                      f"segment heap, and only those two can be walked")
        truth.pools.append({"name": pool.name, "base_type": pool.base_type,
                            "start": f"{pool.base:#x}", "end": f"{pool.limit:#x}"})
        _walk(pool, truth, _lookaside_entries(pool), _pending_frees(pool))
        for va, (tag, pages) in sorted(pool.big_pages.items()):
            if pool.page_kind[(va - pool.base) >> PAGE_SHIFT] != PAGE_BIG_FIRST:
                continue
            try:
                _, base = _page_bytes(pool, va)
            except KeyError:
                base = None
            for page in range(pages):
                frame = pool.tlb.get((va >> PAGE_SHIFT) + page)
                if frame is not None:
                    truth.pages.append([va + (page << PAGE_SHIFT), frame])
            truth.big.append([va, base, pool.name, tag, shown(tag), pages << PAGE_SHIFT, pages,
                              base is None])
    return truth


def _segment_heap_manifest(kernel) -> Truth:
    """Windows 10/11: each heap's own walk (``ntpool.pool.segment_heap.walk``), one row per LFH
    block and VS chunk, the big page table's allocations, with the backend of each."""
    truth = Truth(chunk_fields=SEGMENT_HEAP_CHUNK_FIELDS, big_fields=SEGMENT_HEAP_BIG_FIELDS)
    heaps = [heap for heap in (kernel.nonpaged_pool, getattr(kernel, "nonpaged_pool_nx", None),
                               kernel.paged_pool) if heap is not None]
    for heap in heaps:
        try:
            found = walk(heap)
        except KeyError as error:  # a page the heap's index names that memory does not hold
            raise ManifestUnavailable(f"no truth manifest: {error.args[0]}") from None
        truth.pools.append({"name": heap.name, "base_type": heap.base_type,
                            "start": f"{heap.base:#x}", "end": f"{heap.limit:#x}"})
        for c in found.chunks:
            truth.chunks.append([c.address, c.physical, heap.name, c.tag_value, shown(c.tag_value), c.size,
                                 c.block_size, c.previous_size, c.pool_type, c.state, c.paged_out, False,
                                 c.backend])
        for b in found.big:
            truth.big.append([b.address, b.physical, heap.name, b.tag_value, shown(b.tag_value), b.size,
                              b.pages, b.paged_out, b.backend])
        truth.pages += [[va, pa] for va, pa in found.pages]
        truth.paged_out_pages += found.paged_out_pages
        for corrupt in found.corrupt:
            truth.corrupt_pages.append({"page": corrupt.page, "pool": heap.name, "how": corrupt.how,
                                        "complete": corrupt.complete})
    corrupt = {c["page"] for c in truth.corrupt_pages}
    for row in truth.chunks:
        row[11] = row[0] & ~(PAGE_SIZE - 1) in corrupt
    return truth


def _tracker_pool(name: str) -> str:
    """The tracker's column for a pool or heap (NonPagedPoolNx is counted as nonpaged pool)."""
    return "PagedPool" if name.startswith("Paged") else "NonPagedPool"


def check_against_tracker(truth, tracker_rows) -> list[str]:
    """Disagreements between a manifest's live allocations and per-tag counters.

    ``truth`` is a Truth or a loaded manifest; ``tracker_rows`` a machine's ``pool_tags()``
    or a dump's ``DumpReader.tracker_entries()`` (or a machine, for its pool_tags())."""
    if hasattr(tracker_rows, "pool_tags"):
        tracker_rows = tracker_rows.pool_tags()
    if isinstance(truth, Truth):
        chunks, big = truth.chunks, truth.big
    else:
        chunks, big = truth["chunks"], truth["big_allocations"]
    counted: dict = {}
    for row in chunks:
        if row[9] == "allocated":
            key = (row[3] & ~PROTECTED_POOL, _tracker_pool(row[2]))
            allocs, used = counted.get(key, (0, 0))
            counted[key] = (allocs + 1, used + row[5])
    for row in big:
        key = (row[3] & ~PROTECTED_POOL, _tracker_pool(row[2]))
        allocs, used = counted.get(key, (0, 0))
        counted[key] = (allocs + 1, used + row[5])
    problems = []
    for info in tracker_rows:
        key = getattr(info, "TagUlong", None)
        key = info.Key if key is None else key
        nonpaged_used = getattr(info, "NonPagedUsed", None)
        nonpaged_used = info.NonPagedBytes if nonpaged_used is None else nonpaged_used
        paged_used = getattr(info, "PagedUsed", None)
        paged_used = info.PagedBytes if paged_used is None else paged_used
        for pool, allocs, frees, used in (("NonPagedPool", info.NonPagedAllocs, info.NonPagedFrees,
                                           nonpaged_used),
                                          ("PagedPool", info.PagedAllocs, info.PagedFrees, paged_used)):
            seen = counted.pop((key, pool), (0, 0))
            if seen != (allocs - frees, used):
                problems.append(f"{shown(key)} in {pool}: tracker says {allocs - frees} live, "
                                f"{used} bytes; the manifest {seen[0]}, {seen[1]} bytes")
    for (key, pool), seen in counted.items():
        problems.append(f"{shown(key)} in {pool}: {seen[0]} live in the manifest, unknown to the tracker")
    return problems


def write_for_dump(kernel, truth_path, dump_path, kind: str) -> str:
    """The manifest of ``kernel`` as its dump at ``dump_path`` holds it, written to ``truth_path``."""
    truth = manifest(kernel)
    truth.dump = {"file": os.path.basename(os.fspath(dump_path)), "kind": kind}
    return write(truth, truth_path)


def write(truth: Truth, path) -> str:
    """Write the manifest as JSON (atomically); returns the path."""
    path = os.fspath(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as out:
        json.dump(truth.to_json(), out, separators=(",", ":"))
    os.replace(temporary, path)
    return path


def load(path) -> dict:
    """A manifest written by ``write`` (ValueError when it is not one)."""
    try:
        with open(path) as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a truth manifest ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a truth manifest (no format {FORMAT!r})")
    return document
