"""Allocator designs: what builds a machine's pools.

A design builds the pools of one Windows version and the allocator the routines call
(``allocate`` / ``free`` / ``allocate_generic`` ...). The machine asks its design once, at
boot, and knows nothing of headers, lists or segments: a second design (Windows 10/11's
segment heap) is a second class with the same ``build``.
"""

from typing import Protocol

from .allocator import PoolAllocator
from .descriptor import Pool
from .layout import LIST_HEAD_COUNT

# Windows 7 x64 layout of the kernel address space.
NONPAGED_POOL_BASE = 0xFFFFFA8000000000
PAGED_POOL_BASE = 0xFFFFF8A000000000


class PoolDesign(Protocol):
    name: str

    def build(self, *, space, kernel_data, crash, processors: int, call_sites, hooks,
              nonpaged_pool_bytes: int, paged_pool_bytes: int) -> PoolAllocator:
        """The allocator, with its nonpaged and paged pool (``.nonpaged``, ``.paged``)."""


class Windows7Pools:
    """Windows 7 x64: POOL_DESCRIPTORs with 256 ListHeads, per-processor lookasides, big
    pages in PoolBigPageTable, 16-byte POOL_HEADERs in front of every small chunk."""

    name = "Windows 7"

    def build(self, *, space, kernel_data, crash, processors: int, call_sites, hooks,
              nonpaged_pool_bytes: int, paged_pool_bytes: int) -> PoolAllocator:
        nonpaged = Pool("NonPagedPool", 0, 0, NONPAGED_POOL_BASE, nonpaged_pool_bytes,
                        kernel_data.reserve(LIST_HEAD_COUNT * 16), space, crash, processors)
        paged = Pool("PagedPool", 1, 1, PAGED_POOL_BASE, paged_pool_bytes,
                     kernel_data.reserve(LIST_HEAD_COUNT * 16), space, crash, processors)
        return PoolAllocator(nonpaged, paged, crash, call_sites, hooks)


WINDOWS_7 = Windows7Pools()
