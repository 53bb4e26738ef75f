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

from ..constants import PAGE_SIZE
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
    """A tag as tools show it (``ntpool.tags.display``): the four bytes in memory order, or
    the ULONG in hex when one is not printable ASCII; protected bit stripped."""
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


def mark_corrupt(truth: Truth, page_va: int, pool: str, how: str) -> None:
    """Record that a page's headers were damaged after the manifest was made (its chunks as
    they were stay the truth)."""
    for row in truth.chunks:
        if row[0] & ~(PAGE_SIZE - 1) == page_va:
            row[11] = True
    truth.corrupt_pages.append({"page": page_va, "pool": pool, "how": how, "complete": True})


def manifest(kernel) -> Truth:
    """Every chunk and big allocation of every pool, each pool walked by its allocator design
    (``kernel.pool_design.walk``); ManifestUnavailable when that cannot be done honestly."""
    design = getattr(kernel, "pool_design", None)
    pools = [pool for pool in (kernel.nonpaged_pool, getattr(kernel, "nonpaged_pool_nx", None),
                               kernel.paged_pool) if pool is not None]
    if not hasattr(design, "walk"):
        raise ManifestUnavailable(f"no truth manifest for {kernel.windows}: its pool design "
                                  f"({getattr(design, 'name', type(design).__name__)}) cannot walk "
                                  f"its pools")
    walks = []
    for pool in pools:
        try:
            walks.append((pool, design.walk(pool)))
        except KeyError as error:  # a page the allocator's state names that memory does not hold
            raise ManifestUnavailable(f"no truth manifest: {error.args[0]}") from None
    with_backend = any(row.backend for _, found in walks for row in (*found.chunks, *found.big))
    truth = Truth(chunk_fields=SEGMENT_HEAP_CHUNK_FIELDS if with_backend else CHUNK_FIELDS,
                  big_fields=SEGMENT_HEAP_BIG_FIELDS if with_backend else BIG_FIELDS)
    for pool, found in walks:
        truth.pools.append({"name": pool.name, "base_type": pool.base_type,
                            "start": f"{pool.base:#x}", "end": f"{pool.limit:#x}"})
        corrupt = {c.page for c in found.corrupt}
        for c in found.chunks:
            row = [c.address, c.physical, pool.name, c.tag_value, shown(c.tag_value), c.size, c.block_size,
                   c.previous_size, c.pool_type, c.state, c.paged_out,
                   c.address & ~(PAGE_SIZE - 1) in corrupt]
            truth.chunks.append(row + [c.backend] if with_backend else row)
        for b in found.big:
            row = [b.address, b.physical, pool.name, b.tag_value, shown(b.tag_value), b.size, b.pages,
                   b.paged_out]
            truth.big.append(row + [b.backend] if with_backend else row)
        truth.pages += [[va, pa] for va, pa in found.pages]
        truth.paged_out_pages += found.paged_out_pages
        truth.corrupt_pages += [{"page": c.page, "pool": pool.name, "how": c.how, "complete": c.complete}
                                for c in found.corrupt]
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
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a truth manifest (not UTF-8 text)") from None
    except RecursionError:
        raise ValueError(f"{path}: not a truth manifest (JSON nested too deeply to read)") from None
    except ValueError as error:  # broken JSON, or a number of thousands of digits
        raise ValueError(f"{path}: not a truth manifest ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a truth manifest (no format {FORMAT!r})")
    return document
