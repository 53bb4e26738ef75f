"""Per-tag accounting, as PoolTrackTable keeps it and poolmon and !poolused show it.

A row per tag (protected bit stripped), a list of four running totals: the nonpaged pool's
allocations and frees, then the paged pool's (``column_of(base_type)`` is a pool's
allocations column, its frees the next one). Each total holds a count above bit 64
(``COUNT_SHIFT``) and the bytes those allocations or frees took below it, so charging an
allocation or releasing a free is one addition to one column (``charge_of(number_of_bytes)``):
the allocator's fast paths update rows in place, a subscript each, and the tracker hands out
the row lists themselves. The low 64 bits cannot carry into the count: that would take
16 EiB through one tag. ``row_counts`` reads a row as Windows' six fields (allocs, frees and
bytes in use, per pool); every reader goes through it.
"""

from typing import NamedTuple

from ..tags import PROTECTED_POOL, display

COUNT_SHIFT = 64  # a total's count is above this bit, its bytes below
ONE = 1 << COUNT_SHIFT  # one allocation or free, of 0 bytes
BYTES_MASK = ONE - 1
COLUMNS = 4  # nonpaged allocations, nonpaged frees, paged allocations, paged frees
_UNPROTECTED = ~PROTECTED_POOL


def column_of(base_type: int) -> int:
    """The column of a pool's allocations in a row (its frees: the next): 0 nonpaged, 2 paged."""
    return 2 * base_type


def charge_of(number_of_bytes: int) -> int:
    """What one allocation or free of ``number_of_bytes`` adds to its column."""
    return ONE | number_of_bytes


# charge_of(blocks x 16) for each BlockSize (a POOL_HEADER's UCHAR): the fast paths' charge,
# one subscript of a tuple.
BLOCK_CHARGES = tuple(charge_of(blocks << 4) for blocks in range(256))


def row_counts(row: list[int]) -> tuple[int, int, int, int, int, int]:
    """(NonPagedAllocs, NonPagedFrees, NonPagedBytes, PagedAllocs, PagedFrees, PagedBytes)
    of a row: the counts, and the bytes allocated less the bytes freed."""
    np_allocs, np_frees, p_allocs, p_frees = row
    return (np_allocs >> COUNT_SHIFT, np_frees >> COUNT_SHIFT,
            (np_allocs & BYTES_MASK) - (np_frees & BYTES_MASK),
            p_allocs >> COUNT_SHIFT, p_frees >> COUNT_SHIFT,
            (p_allocs & BYTES_MASK) - (p_frees & BYTES_MASK))


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
            row = self.rows[key] = [0] * COLUMNS
        return row

    def charge(self, tag: int, column: int, number_of_bytes: int) -> None:
        """An allocation of ``number_of_bytes`` (``column``: its pool's, ``column_of``)."""
        row = self.rows.get(tag & _UNPROTECTED)  # the row of a tag seen before, without a call
        if row is None:
            row = self.row(tag)
        row[column] += ONE | number_of_bytes

    def release(self, tag: int, column: int, number_of_bytes: int) -> None:
        """A free of ``number_of_bytes`` (``column``: its pool's allocations column)."""
        row = self.rows.get(tag & _UNPROTECTED)  # as charge: a tag seen before, without a call
        if row is None:
            row = self.row(tag)
        row[column + 1] += ONE | number_of_bytes

    def counts(self, tag: int) -> tuple[int, int, int, int, int, int]:
        """``row_counts`` of the tag's row (zeros for a tag never charged)."""
        row = self.rows.get(tag & _UNPROTECTED)
        return row_counts(row) if row is not None else (0,) * 6

    def snapshot(self) -> list[PoolTagInfo]:
        infos = []
        for tag, row in sorted(self.rows.items()):
            np_allocs, np_frees, np_bytes, p_allocs, p_frees, p_bytes = row_counts(row)
            infos.append(PoolTagInfo(tag, p_allocs, p_frees, p_bytes, np_allocs, np_frees, np_bytes))
        return infos
