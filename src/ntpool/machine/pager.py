"""Paging pageable memory out and back in, with the page tables kept faithful.

A page paged out has a non-present PTE holding a software "page file" entry (the slot of
its contents in the page file in bits 32-63, protection MM_READWRITE in bits 5-9, as an x64
software PTE lays them out); its frame goes back to the free list and its contents wait in
the page file (a dict here: slot -> bytes). A crash dump therefore shows the page as not
present, as a real dump would. Paging in takes any free frame, so a page may come back at
a different physical address.

This module knows nothing of pools or IRQL: the machine decides when a fault may be
resolved (below DISPATCH_LEVEL) and the pool decides which pages are pageable.
"""

from ..constants import PAGE_SHIFT, PAGE_SIZE
from ..hooks import PagedIn, PagedOut
from .memory import PTE_NX, PTE_WRITABLE, AddressSpace, OutOfFrames

MM_READWRITE = 4  # the protection a pageable pool page has
SOFTWARE_PTE_PROTECTION_SHIFT = 5
PAGE_FILE_SLOT_SHIFT = 32


class Pager:
    def __init__(self, space: AddressSpace, out_of_frames):
        self.space = space
        self.physical = space.physical
        self.mem = space.physical.buffer
        self.out_of_frames = out_of_frames  # called when no frame is left to page into
        self.page_file: dict[int, bytes] = {}  # slot -> page contents
        self.slot_of: dict[int, int] = {}  # virtual page number -> page file slot
        self._next_slot = 1
        self.protection: dict[int, tuple[bool, bool]] = {}  # vpn -> (writable, executable) when out
        self.pages_out = 0  # counters a working-set view can show
        self.pages_in = 0

    def is_paged_out(self, va: int) -> bool:
        return (va >> PAGE_SHIFT) in self.slot_of

    def page_out(self, va: int) -> bool:
        """Write a resident page to the page file and unmap it; False if it is not resident."""
        va &= ~(PAGE_SIZE - 1)
        vpn = va >> PAGE_SHIFT
        base = self.space.tlb.get(vpn)
        if base is None:
            return False
        slot = self._next_slot
        self._next_slot += 1
        pte = self.space.pte(va)
        # A page comes back as it went: pageable driver code stays executable and read-only.
        self.protection[vpn] = (bool(pte & PTE_WRITABLE), not pte & PTE_NX)
        self.page_file[slot] = bytes(self.mem[base:base + PAGE_SIZE])
        software_pte = (slot << PAGE_FILE_SLOT_SHIFT) | (MM_READWRITE << SOFTWARE_PTE_PROTECTION_SHIFT)
        pfn = self.space.unmap_page(va, keep=software_pte)
        self.physical.free_frame(pfn)
        self.slot_of[vpn] = slot
        self.pages_out += 1
        if self.space.hooks.listening(PagedOut):
            self.space.hooks.publish(PagedOut(va))
        return True

    def page_in(self, va: int) -> int:
        """Bring a paged-out page back; returns its new physical page address.

        Raises KeyError when ``va`` is not a paged-out page (so callers that treat an
        unmapped address as an error keep doing so).
        """
        vpn = va >> PAGE_SHIFT
        slot = self.slot_of[vpn]
        try:
            pfn = self.physical.allocate_frame()
        except OutOfFrames:
            self.out_of_frames(va)
            raise
        base = pfn << PAGE_SHIFT
        self.mem[base:base + PAGE_SIZE] = self.page_file.pop(slot)
        del self.slot_of[vpn]
        writable, executable = self.protection.pop(vpn, (True, False))
        self.space.map_page(vpn << PAGE_SHIFT, pfn, writable=writable, executable=executable)
        self.pages_in += 1
        if self.space.hooks.listening(PagedIn):
            self.space.hooks.publish(PagedIn(vpn << PAGE_SHIFT))
        return base

    def discard(self, va: int) -> None:
        """Forget a paged-out page that is being freed: drop its page file copy, clear the PTE."""
        vpn = va >> PAGE_SHIFT
        slot = self.slot_of.pop(vpn)
        self.protection.pop(vpn, None)
        del self.page_file[slot]
        self.space.unmap_page(vpn << PAGE_SHIFT, keep=0)
