"""The segment-heap design: what a Windows 10/11 machine builds its pools with.

One heap per pool type (NonPagedPool, NonPagedPoolNx, PagedPool; session paged pool goes
to the paged heap), each in its own region of the kernel address space, and the keys a
boot draws at random: HeapKey and LfhKey (RtlpHpHeapGlobals), ExpPoolQuotaCookie and the
LFH's placement data. They come from the machine's seed, so a run repeats exactly.
"""

import random
from dataclasses import dataclass

from .allocator import SegmentHeapAllocator
from .heap import SegmentHeap
from .layout import (
    HEAP_GLOBALS,
    HEAP_NONPAGED,
    HEAP_NONPAGED_NX,
    HEAP_PAGED,
    POOL_STATE,
    SEGMENT_HEAP_SIGNATURE,
    SEGMENT_HEAP_SIGNATURE_OFFSET,
    SEGMENT_HEAP_SIZE,
)

# Where the heaps live (Windows 10/11 places them at random in the dynamic kernel VA
# space; ntpool picks fixed 512 GiB-aligned regions, one per heap).
NONPAGED_NX_HEAP_BASE = 0xFFFFA38000000000
NONPAGED_HEAP_BASE = 0xFFFFA40000000000
PAGED_HEAP_BASE = 0xFFFFC08000000000


@dataclass(frozen=True)
class HeapKeys:
    heap_key: int  # RtlpHpHeapGlobals.HeapKey: VS chunk headers, segment signatures
    lfh_key: int  # RtlpHpHeapGlobals.LfhKey: LFH BlockOffsets
    pool_quota_cookie: int  # ExpPoolQuotaCookie: ProcessBilled, CacheAligned back-pointers
    random_data: bytes  # RtlpLowFragHeapRandomData: 256 bytes for LFH placement


def boot_keys(seed: int) -> HeapKeys:
    rng = random.Random(f"ntpool segment heap {seed}")
    return HeapKeys(rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(64),
                    bytes(rng.getrandbits(8) for _ in range(256)))


class SegmentHeapPools:
    """The pools of a segment-heap machine and where its heap state lives."""

    def __init__(self, version, space, kernel_data, write, crash, call_sites,
                 nonpaged_bytes: int, paged_bytes: int, seed: int = 0, hooks=None):
        self.version = version
        self.keys = boot_keys(seed)
        self.globals_va = kernel_data.reserve(HEAP_GLOBALS.size)
        write(self.globals_va, HEAP_GLOBALS.pack(self.keys.heap_key, self.keys.lfh_key))
        self.cookie_va = kernel_data.reserve(8)  # nt!ExpPoolQuotaCookie
        write(self.cookie_va, self.keys.pool_quota_cookie.to_bytes(8, "little"))
        heaps = []
        for name, base_type, index, base, size in (
                ("NonPagedPool", 0, HEAP_NONPAGED, NONPAGED_HEAP_BASE, nonpaged_bytes),
                ("NonPagedPoolNx", 0, HEAP_NONPAGED_NX, NONPAGED_NX_HEAP_BASE, nonpaged_bytes),
                ("PagedPool", 1, HEAP_PAGED, PAGED_HEAP_BASE, paged_bytes)):
            heap_va = kernel_data.reserve(SEGMENT_HEAP_SIZE, align=64)
            write(heap_va + SEGMENT_HEAP_SIGNATURE_OFFSET, SEGMENT_HEAP_SIGNATURE.to_bytes(4, "little"))
            heaps.append(SegmentHeap(name, base_type, index, base, size, space, crash, self.keys,
                                     heap_va, self.keys.random_data,
                                     version.segment_signature_constant))
        self.nonpaged, self.nonpaged_nx, self.paged = heaps
        self.state_va = kernel_data.reserve(POOL_STATE.size)  # nt!ExPoolState
        write(self.state_va, POOL_STATE.pack(self.globals_va, 1, self.nonpaged.heap_va,
                                             self.nonpaged_nx.heap_va, self.paged.heap_va, 0))
        self.allocator = SegmentHeapAllocator(self.nonpaged, self.nonpaged_nx, self.paged, crash,
                                              call_sites, self.keys, hooks)
