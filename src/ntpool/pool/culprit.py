"""Beyond Windows: name the write that corrupted the pool.

Windows reports the victim (the chunk whose header a check found damaged), never the
culprit. ntpool sees every write a driver makes through the machine (``k.write`` and the
Rtl fill, zero and copy routines publish ``MemoryWritten``), so while recording is on it
keeps the first write that crossed into another chunk's header or landed in freed memory:
the driver and line that made it, the address, the bytes, and what it hit. The bug check's
detail and, from the dump alone, ``!analyze -v`` (CORRUPTED_BY) name it.

Cost: off by default (nothing listens, so ``k.write`` keeps its fastest path). On
(``k.record_corrupting_writes()``), each write walks the headers of its page up to the
written address, and the allocator's fast paths are off (so that it knows which chunks sit
on a lookaside list, where they still look allocated).
"""

import os
from typing import NamedTuple

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..hooks import MemoryWritten
from ..tags import display
from .descriptor import PAGE_SMALL
from .layout import BLOCK_SHIFT, HEADER_FIRST8, HEADER_SIZE, POOL_FREE

BLOCKER = "culprit recording"


class CorruptingWrite(NamedTuple):
    driver: str
    line: str  # "function (file.py:34)"
    address: int
    data: bytes  # the first 16 bytes written
    length: int
    what: str  # "a 2-byte write 0 bytes past the end of its 112-byte SlNm chunk"

    def text(self) -> str:
        return f"corrupted by {self.driver or '(the kernel)'} {self.line}, {self.what}"


class CulpritRecorder:
    """Listens for the machine's writes; keeps the first that corrupted the pool."""

    def __init__(self, kernel):
        self.k = kernel
        self.first: CorruptingWrite | None = None

    def start(self) -> None:
        for pool in (self.k.nonpaged_pool, self.k.paged_pool):
            pool.cached = pool.lookaside_chunks()
        allocator = self.k.pool
        allocator.fast_path_blockers.add(BLOCKER)
        allocator.refresh_fast_paths()
        self.k.hooks.subscribe(MemoryWritten, self.written)

    def stop(self) -> None:
        self.k.hooks.unsubscribe(MemoryWritten, self.written)
        allocator = self.k.pool
        allocator.fast_path_blockers.discard(BLOCKER)
        allocator.refresh_fast_paths()
        for pool in (self.k.nonpaged_pool, self.k.paged_pool):
            pool.cached = None

    # --- each write ---------------------------------------------------------------------

    def written(self, event: MemoryWritten) -> None:
        if self.first is not None or event.length <= 0:
            return
        what = self.classify(event.address, event.length)
        if what:
            self.record(event.address, event.length, what)

    def classify(self, address: int, length: int) -> str:
        """What a write of ``length`` bytes at ``address`` hit, or "" when it stayed inside
        a live chunk (or outside small pool pages)."""
        pool = None
        for candidate in (self.k.nonpaged_pool, self.k.paged_pool):
            if candidate.contains(address):
                pool = candidate
        if pool is None or pool.page_kind_of(address) != PAGE_SMALL:
            return ""
        page = address & ~(PAGE_SIZE - 1)
        base = pool.tlb.get(page >> PAGE_SHIFT)
        if base is None:
            return ""
        mem = pool.mem
        target = address - page
        offset = previous = 0
        while offset < PAGE_SIZE:  # the chain before the write is as it was before it
            if target < offset + HEADER_SIZE:
                return self._onto_header(mem, base, page, offset, previous, target, length)
            _, _, blocks, pool_type, tag = HEADER_FIRST8.unpack_from(mem, base + offset)
            end = offset + (blocks << BLOCK_SHIFT)
            if not blocks or end > PAGE_SIZE:
                return ""  # already damaged: not the first corrupting write
            if target < end:
                body = end - offset - HEADER_SIZE
                freed = pool_type == POOL_FREE or page + offset in (pool.cached or ())
                if freed:
                    return (f"a {length}-byte write into freed memory, {target - offset - HEADER_SIZE} "
                            f"bytes into a freed {body}-byte {display(tag)} chunk")
                if target + length > end:
                    past = target - end
                    where = f"{past} bytes past the end" if past >= 0 else \
                        f"running {target + length - end} bytes past the end"
                    return f"a {length}-byte write {where} of its {body}-byte {display(tag)} chunk"
                return ""
            previous = offset
            offset = end
        return ""

    def _onto_header(self, mem, base, page, offset, previous, target, length) -> str:
        _, _, _, _, tag = HEADER_FIRST8.unpack_from(mem, base + offset)
        if offset == 0:
            return f"a {length}-byte write onto the header of the {display(tag)} chunk at {page:#x}"
        _, _, blocks, _, before_tag = HEADER_FIRST8.unpack_from(mem, base + previous)
        past = target - offset
        body = (blocks << BLOCK_SHIFT) - HEADER_SIZE
        return (f"a {length}-byte write {past} bytes past the end of its {body}-byte "
                f"{display(before_tag)} chunk, onto the header of the {display(tag)} chunk "
                f"at {page + offset:#x}")

    def record(self, address: int, length: int, what: str) -> None:
        calls = self.k.call_sites
        site = calls.site_of_caller()
        entry = calls.table[site]
        owner = calls.owner(site)
        driver = owner.name if owner else ""
        line = f"{entry.function} ({os.path.basename(entry.filename)}:{entry.lineno})" if site else ""
        data = self.k.read(address, min(length, 16)) if self.k.is_resident(address) else b""
        self.first = CorruptingWrite(driver, line, address, bytes(data), length, what)


__all__ = ["BLOCKER", "CorruptingWrite", "CulpritRecorder"]
