"""Per-tag accounting, as PoolTrackTable keeps it and poolmon and !poolused show it.

A row per tag (protected bit stripped): [NonPagedAllocs, NonPagedFrees, NonPagedBytes,
PagedAllocs, PagedFrees, PagedBytes]. The allocation fast path updates rows in place,
so the tracker hands out the row lists themselves.
"""

from typing import NamedTuple

from ..tags import PROTECTED_POOL, display

NONPAGED = 0
PAGED = 3
ALLOCS, FREES, BYTES = 0, 1, 2
_UNPROTECTED = ~PROTECTED_POOL


class PoolTagInfo(NamedTuple):
    """One SYSTEM_POOLTAG row."""

    TagUlong: int
    PagedAllocs: int
    PagedFrees: int
    PagedUsed: int
    NonPagedAllocs: int
    NonPagedFrees: int
    NonPagedUsed: int

    @property
    def Tag(self) -> str:
        return display(self.TagUlong)


class PoolTracker:
    def __init__(self):
        self.rows: dict[int, list[int]] = {}

    def row(self, tag: int) -> list[int]:
        key = tag & ~PROTECTED_POOL
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0, 0, 0, 0, 0, 0]
        return row

    def charge(self, tag: int, pool_offset: int, number_of_bytes: int) -> None:
        row = self.rows.get(tag & _UNPROTECTED)  # the row of a tag seen before, without a call
        if row is None:
            row = self.row(tag)
        row[pool_offset + ALLOCS] += 1
        row[pool_offset + BYTES] += number_of_bytes

    def release(self, tag: int, pool_offset: int, number_of_bytes: int) -> None:
        row = self.row(tag)
        row[pool_offset + FREES] += 1
        row[pool_offset + BYTES] -= number_of_bytes

    def snapshot(self) -> list[PoolTagInfo]:
        return [PoolTagInfo(tag, r[3], r[4], r[5], r[0], r[1], r[2])
                for tag, r in sorted(self.rows.items())]
