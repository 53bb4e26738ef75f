"""The calling process's user address space: user-mode buffers a request hands a driver.

A request from "user mode" (``ntpool run --ioctl``, ``FileHandle.device_control``) puts its
buffers here, below MmUserProbeAddress, mapped with the user bit in the same page tables
the kernel uses (x64 Windows maps a process's user half beside the kernel half under one
CR3). A driver that uses METHOD_NEITHER's pointers therefore touches real user pages: a
probe of a kernel address or of an unmapped page fails as on Windows, and a page the
buffer does not cover is not there.

Each buffer gets its own pages and a guard page after them, so a driver that runs past a
user buffer faults instead of reading the next one.
"""

from ..constants import PAGE_SHIFT, PAGE_SIZE

PTE_USER = 1 << 2
USER_BUFFER_BASE = 0x0000000010000000
MM_USER_PROBE_ADDRESS = 0x7FFFFFFF0000  # MmUserProbeAddress on x64
MM_HIGHEST_USER_ADDRESS = 0x7FFFFFFEFFFF


class UserSpace:
    """Buffers in the user half of the address space, each with a guard page after it."""

    def __init__(self, space):
        self.space = space
        self.next = USER_BUFFER_BASE
        self.buffers: dict[int, tuple[int, int]] = {}  # va -> (first page, page count)

    def allocate(self, size: int, writable: bool = True, tail: bool = True) -> int:
        """A zeroed user buffer of ``size`` bytes; with ``tail`` it ends at its last page's
        end (overruns fault at once), else it starts on a page."""
        pages = max(1, (size + PAGE_SIZE - 1) >> PAGE_SHIFT)
        first = self.next
        self.next += (pages + 1) << PAGE_SHIFT  # one unmapped guard page after
        for index in range(pages):
            pfn = self.space.physical.allocate_frame()
            self.space.physical.zero_frame(pfn)
            va = first + (index << PAGE_SHIFT)
            self.space.map_page(va, pfn, writable=writable)
            self.space.set_pte_bits(va, PTE_USER)
        va = first + (pages << PAGE_SHIFT) - size if tail and size else first
        self.buffers[va] = (first, pages)
        return va

    def free(self, va: int) -> None:
        first, pages = self.buffers.pop(va)
        for index in range(pages):
            pfn = self.space.unmap_page(first + (index << PAGE_SHIFT))
            self.space.physical.free_frame(pfn)

    def free_all(self) -> None:
        for va in list(self.buffers):
            self.free(va)


def is_user_address(va: int) -> bool:
    return 0 <= va <= MM_HIGHEST_USER_ADDRESS
