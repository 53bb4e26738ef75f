"""Allocator designs: what builds a machine's pools.

A design builds the pools of one Windows version and the one allocator the routines call
(``allocate`` / ``free`` / ``allocate_generic`` ...). The machine asks its design once, at
boot (``pool_design_for(windows, seed)``), and knows nothing of headers, lists or segments:
Windows 7's classic pool and Windows 10/11's segment heap are two classes with the same
``build``.
"""

from typing import Any, NamedTuple, Protocol

from .allocator import PoolAllocator
from .descriptor import Pool
from .layout import POOL_DESCRIPTOR
from .lookaside import LookasideScanner
from .segment_heap.design import SegmentHeapPools
from .segment_heap.walk import walk as walk_segment_heap
from .walk import PoolWalk, walk_windows7

# Windows 7 x64 layout of the kernel address space.
NONPAGED_POOL_BASE = 0xFFFFFA8000000000
PAGED_POOL_BASE = 0xFFFFF8A000000000


class BuiltPools(NamedTuple):
    allocator: Any  # what the routines call: PoolAllocator, SegmentHeapAllocator
    nonpaged: Any
    paged: Any
    nonpaged_nx: Any = None  # a pool of its own only where Windows has one (10/11)
    state: Any = None  # the design's own boot state (the segment heap's globals and keys)


class PoolDesign(Protocol):
    name: str

    def build(self, *, space, kernel_data, write_kernel_data, crash, processors: int,
              call_sites, hooks, nonpaged_pool_bytes: int, paged_pool_bytes: int) -> BuiltPools:
        """The allocator and its pools."""

    def walk(self, pool) -> PoolWalk:
        """Every chunk and big allocation of one of its pools, from the allocator's state."""


class Windows7Pools:
    """Windows 7 x64: POOL_DESCRIPTORs with 256 ListHeads, per-processor lookasides, big
    pages in PoolBigPageTable, 16-byte POOL_HEADERs in front of every small chunk."""

    name = "Windows 7 pool"

    def build(self, *, space, kernel_data, write_kernel_data, crash, processors: int,
              call_sites, hooks, nonpaged_pool_bytes: int, paged_pool_bytes: int) -> BuiltPools:
        # Each pool's POOL_DESCRIPTOR (PendingFrees, ListHeads, ...) lives in kernel memory.
        nonpaged = Pool("NonPagedPool", 0, 0, NONPAGED_POOL_BASE, nonpaged_pool_bytes,
                        kernel_data.reserve(POOL_DESCRIPTOR.size) + POOL_DESCRIPTOR.ListHeads,
                        space, crash, processors)
        paged = Pool("PagedPool", 1, 1, PAGED_POOL_BASE, paged_pool_bytes,
                     kernel_data.reserve(POOL_DESCRIPTOR.size) + POOL_DESCRIPTOR.ListHeads,
                     space, crash, processors)
        allocator = PoolAllocator(nonpaged, paged, crash, call_sites, hooks)
        call_sites.when_sites_outgrow_a_byte(allocator.widen_site_maps)
        # The balance set manager's once-a-second lookaside retuning (ExAdjustLookasideDepth).
        allocator.lookaside_scanner = LookasideScanner((nonpaged, paged), processors)
        return BuiltPools(allocator, nonpaged, paged)

    def walk(self, pool) -> PoolWalk:
        return walk_windows7(pool)


class SegmentHeapDesign:
    """Windows 10/11: one kernel segment heap per pool type (ntpool.pool.segment_heap)."""

    name = "segment heap"

    def __init__(self, windows, seed: int = 0):
        self.windows = windows
        self.seed = seed

    def build(self, *, space, kernel_data, write_kernel_data, crash, processors: int,
              call_sites, hooks, nonpaged_pool_bytes: int, paged_pool_bytes: int) -> BuiltPools:
        state = SegmentHeapPools(self.windows, space, kernel_data, write_kernel_data, crash,
                                 call_sites, nonpaged_pool_bytes, paged_pool_bytes, self.seed,
                                 hooks)
        return BuiltPools(state.allocator, state.nonpaged, state.paged, state.nonpaged_nx, state)

    def walk(self, pool) -> PoolWalk:
        return walk_segment_heap(pool)


WINDOWS_7 = Windows7Pools()


def pool_design_for(windows, seed: int = 0) -> PoolDesign:
    """The design a Windows version's kernel pool has (``windows.segment_heap``: 19H1+)."""
    return SegmentHeapDesign(windows, seed) if windows.segment_heap else WINDOWS_7
