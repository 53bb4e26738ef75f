"""Paged pool that really pages: a working-set trim and transparent page-in.

``k.page_out(address)`` pages out the paged pool page holding ``address``;
``k.page_out()`` trims every resident page of paged pool (as the working-set manager
would under memory pressure). Touching a paged-out page below DISPATCH_LEVEL faults it
back in; at DISPATCH_LEVEL or above it is the bug check Windows raises (see
``Kernel._page_fault``). The allocator pages in what it needs itself: it only touches
paged pool on its generic path, which has already refused DISPATCH_LEVEL callers.
"""

from ..constants import PAGE_SHIFT, PAGE_SIZE, BugCheckCode
from ..errors import allowed_when_halted
from .descriptor import PAGE_BIG_FIRST, PAGE_BIG_REST, PAGE_SMALL

PAGEABLE_KINDS = frozenset({PAGE_SMALL, PAGE_BIG_FIRST, PAGE_BIG_REST})


class PagingRoutines:
    def _no_pages_available(self, va: int) -> None:
        self.KeBugCheckEx(BugCheckCode.NO_PAGES_AVAILABLE, 0, self.physical.frame_count, 0, 0,
                          detail=f"no free frame to page {va:#x} back in")

    def page_out(self, address=None) -> int:
        """Page out the paged pool page holding ``address`` (None: every resident one).

        Returns how many pages went out. Only allocated paged pool pages are pageable.
        """
        pool = self.paged_pool
        if address is None:
            count = 0
            for index, kind in enumerate(pool.page_kind):
                if kind in PAGEABLE_KINDS:
                    count += self.pager.page_out(pool.base + (index << PAGE_SHIFT))
            for page in sorted(self.pageable_image_pages):
                count += self.pager.page_out(page)
            return count
        if isinstance(address, bool) or not isinstance(address, int):
            raise TypeError(f"address must be an int, not {type(address).__name__}")
        if address & ~(PAGE_SIZE - 1) in self.pageable_image_pages:
            return int(self.pager.page_out(address & ~(PAGE_SIZE - 1)))
        if not pool.contains(address) or pool.page_kind_of(address) not in PAGEABLE_KINDS:
            raise ValueError(f"address {address:#x} is not in an allocated paged pool page")
        return int(self.pager.page_out(address & ~(PAGE_SIZE - 1)))

    @allowed_when_halted
    def is_resident(self, address: int) -> bool:
        """Whether the page holding ``address`` is mapped (present) right now."""
        return self.space.translate(address) is not None
