"""The poolmon model: per-tag rows, deltas between refreshes, sorting, filters, snapshots.

No terminal I/O here (the rich view lives in ``ntpool.cli.poolmon_view``), so every rule
poolmon users rely on is testable: columns Tag, Type, Allocs, (delta), Frees, (delta),
Diff, Bytes, (delta), Per Alloc; sort keys t a f d b m; ``p`` cycles nonpaged / paged /
both; include and exclude tag filters with ``*`` and ``?``.

A snapshot is the SYSTEM_POOLTAG table at one moment, split into one row per tag and pool
type, as poolmon lists it. It is saved as JSON (``ntpool poolsnap``) and two snapshots
diff into the tags that grew.
"""

import heapq
import json
from dataclasses import dataclass, field
from typing import Iterable

from ..debugger.pooltag import PoolTagDatabase, check_tag_pattern, wildcard_regex
from ..tags import is_hex_tag

NONPAGED = "Nonp"
PAGED = "Paged"
POOL_FILTERS = ("both", "nonpaged", "paged")  # the order 'p' cycles through

SNAPSHOT_FORMAT = "ntpool-poolsnap"
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class TagUsage:
    """One tag in one pool type: poolmon's raw counters."""

    tag: str  # as tools show it, e.g. "derF"
    type: str  # NONPAGED or PAGED
    allocs: int
    frees: int
    bytes: int

    @property
    def diff(self) -> int:
        return self.allocs - self.frees

    @property
    def per_alloc(self) -> int:
        return self.bytes // self.diff if self.diff > 0 else 0

    @property
    def key(self) -> tuple[str, str]:
        return self.tag, self.type


@dataclass(frozen=True)
class PoolmonRow:
    """A displayed row: the counters and the change since the previous refresh."""

    usage: TagUsage
    allocs_delta: int
    frees_delta: int
    bytes_delta: int
    owner: str = ""

    def __getattr__(self, name):  # tag, type, allocs, ... read through to the usage
        return getattr(self.__dict__["usage"], name)


@dataclass
class Snapshot:
    """The pool tag table at one moment (``label`` says when: a checkpoint, a dump)."""

    rows: list[TagUsage]
    label: str = ""
    source: str = ""

    @classmethod
    def from_pool_tags(cls, pool_tags: Iterable, label: str = "", source: str = "") -> "Snapshot":
        """From SYSTEM_POOLTAG rows (``Kernel.pool_tags()`` or a dump's tracker table)."""
        rows = []
        for entry in pool_tags:
            if entry.NonPagedAllocs or entry.NonPagedUsed:
                rows.append(TagUsage(entry.Tag, NONPAGED, entry.NonPagedAllocs,
                                     entry.NonPagedFrees, entry.NonPagedUsed))
            if entry.PagedAllocs or entry.PagedUsed:
                rows.append(TagUsage(entry.Tag, PAGED, entry.PagedAllocs,
                                     entry.PagedFrees, entry.PagedUsed))
        return cls(rows, label, source)

    def by_key(self) -> dict[tuple[str, str], TagUsage]:
        return {row.key: row for row in self.rows}

    def to_json(self) -> str:
        return json.dumps({
            "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION,
            "label": self.label, "source": self.source,
            "tags": [{"tag": r.tag, "type": r.type, "allocs": r.allocs, "frees": r.frees,
                      "bytes": r.bytes} for r in self.rows],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, name: str = "snapshot") -> "Snapshot":
        """Parse a poolsnap file; anything malformed is a ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError(f"{name} is not a poolsnap file (JSON nested too deeply)") from None
        except ValueError as error:  # not JSON, not text, a number of thousands of digits
            raise ValueError(f"{name} is not a poolsnap file (not JSON: {error})") from None
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{name} is not a poolsnap file (no \"format\": \"{SNAPSHOT_FORMAT}\")")
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"{name} has poolsnap version {data.get('version')!r}; "
                             f"this ntpool reads version {SNAPSHOT_VERSION}")
        tags = data.get("tags")
        if not isinstance(tags, list):
            raise ValueError(f"{name}: \"tags\" must be a list")
        rows = [_usage_from_json(entry, name, index) for index, entry in enumerate(tags)]
        return cls(rows, str(data.get("label", "")), str(data.get("source", "")))


def _usage_from_json(entry, name: str, index: int) -> TagUsage:
    where = f"{name}: tags[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    tag, kind = entry.get("tag"), entry.get("type")
    if not isinstance(tag, str) or not (1 <= len(tag) <= 4 or len(tag) == 10 and is_hex_tag(tag)):
        raise ValueError(f"{where}: \"tag\" must be a string of 1 to 4 characters (or 0x and "
                         "8 hex digits)")
    if kind not in (NONPAGED, PAGED):
        raise ValueError(f"{where}: \"type\" must be \"{NONPAGED}\" or \"{PAGED}\"")
    counts = []
    for key in ("allocs", "frees", "bytes"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: \"{key}\" must be a non-negative integer")
        counts.append(value)
    return TagUsage(tag.ljust(4), kind, *counts)


# --- sorting and filtering ---------------------------------------------------------------

def tag_matches(pattern: str, tag: str) -> bool:
    """poolmon's filter: ``*`` and ``?`` wildcards; a tag's trailing spaces are optional."""
    regex = wildcard_regex(pattern)
    return bool(regex.fullmatch(tag) or regex.fullmatch(tag.rstrip(" ")))


def owner_text(pooltags: PoolTagDatabase | None, tag: str) -> str:
    """``binary - description`` from pooltag.txt, or "" for a tag no file knows."""
    owner = pooltags.lookup(tag) if pooltags else None
    return str(owner) if owner else ""


SORT_KEYS = {
    "t": ("Tag", lambda row: (row.tag, row.type)),
    "a": ("Allocs", lambda row: row.allocs),
    "f": ("Frees", lambda row: row.frees),
    "d": ("Diff", lambda row: row.diff),
    "b": ("Bytes", lambda row: row.bytes),
    "m": ("Per Alloc", lambda row: row.per_alloc),
}


@dataclass
class PoolmonModel:
    """What poolmon shows and how its keys change it."""

    sort: str = "t"  # poolmon's default: by tag
    reverse: bool = False  # numeric columns list largest first unless reversed
    pool_filter: str = "both"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    pooltags: PoolTagDatabase | None = None
    previous: dict[tuple[str, str], TagUsage] | None = None  # None until a second refresh
    current: Snapshot | None = None

    def __post_init__(self):
        if self.sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, got {self.sort!r}")
        if self.pool_filter not in POOL_FILTERS:
            raise ValueError(f"pool type must be one of {', '.join(POOL_FILTERS)}, "
                             f"got {self.pool_filter!r}")
        for pattern in (*self.include, *self.exclude):
            check_tag_pattern(pattern)

    def update(self, snapshot: Snapshot) -> None:
        """A refresh: deltas are now measured against the snapshot shown before."""
        if self.current is not None:
            self.previous = self.current.by_key()
        self.current = snapshot

    def press(self, key: str) -> bool:
        """A poolmon key: a sort key (again: reverse), ``r`` reverse, ``p`` pool type."""
        if key in SORT_KEYS:
            if key == self.sort:
                self.reverse = not self.reverse
            else:
                self.sort, self.reverse = key, False
            return True
        if key == "r":
            self.reverse = not self.reverse
            return True
        if key == "p":
            self.pool_filter = POOL_FILTERS[(POOL_FILTERS.index(self.pool_filter) + 1) % 3]
            return True
        return False

    def visible(self, usage: TagUsage) -> bool:
        if self.pool_filter == "nonpaged" and usage.type != NONPAGED:
            return False
        if self.pool_filter == "paged" and usage.type != PAGED:
            return False
        if self.include and not any(tag_matches(p, usage.tag) for p in self.include):
            return False
        return not any(tag_matches(p, usage.tag) for p in self.exclude)

    def owner_of(self, tag: str) -> str:
        """The owning binary (poolmon's Mapped Driver column), else the description."""
        owner = self.pooltags.lookup(tag) if self.pooltags else None
        if owner is None:
            return ""
        return owner.binary if owner.binary and owner.binary != "<unknown>" else owner.description

    def usages(self) -> list[TagUsage]:
        """The current snapshot's rows the filters let through, in no particular order."""
        if self.current is None:
            return []
        if self.pool_filter == "both" and not self.include and not self.exclude:
            return self.current.rows
        return [usage for usage in self.current.rows if self.visible(usage)]

    def rows(self, start: int = 0, count: int | None = None,
             usages: list[TagUsage] | None = None) -> list[PoolmonRow]:
        """The rows shown, in order: all of them, or ``count`` from ``start`` (a screen).

        A screen of a large table costs one pass over it (a heap keeps the first rows, where
        sorting all of them would cost more) and the deltas and owners of the rows it shows,
        not of every tag. ``usages``: ``self.usages()``, when the caller has it already."""
        usages = self.usages() if usages is None else usages
        _, key = SORT_KEYS[self.sort]
        # Tags read A to Z; counts read largest first, as poolmon lists them.
        descending = (self.sort != "t") != self.reverse

        def order(usage):
            return key(usage), usage.tag, usage.type

        wanted = len(usages) if count is None else min(len(usages), start + max(count, 0))
        if wanted < len(usages) // 4:  # a screen of a big table: select, do not sort it all
            chosen = (heapq.nlargest if descending else heapq.nsmallest)(wanted, usages, key=order)
        else:
            chosen = sorted(usages, key=order, reverse=descending)[:wanted]
        return [self._row(usage) for usage in chosen[start:]]

    def _row(self, usage: TagUsage) -> PoolmonRow:
        before = None if self.previous is None else \
            self.previous.get(usage.key, TagUsage(usage.tag, usage.type, 0, 0, 0))
        return PoolmonRow(usage,
                          usage.allocs - before.allocs if before else 0,
                          usage.frees - before.frees if before else 0,
                          usage.bytes - before.bytes if before else 0,
                          self.owner_of(usage.tag))

    def totals(self, usages: list[TagUsage] | None = None) -> dict[str, int]:
        usages = self.usages() if usages is None else usages
        return {"allocs": sum(u.allocs for u in usages), "frees": sum(u.frees for u in usages),
                "diff": sum(u.diff for u in usages), "bytes": sum(u.bytes for u in usages)}

    def describe_order(self) -> str:
        name, _ = SORT_KEYS[self.sort]
        direction = ("A-Z" if not self.reverse else "Z-A") if self.sort == "t" else \
            ("largest first" if not self.reverse else "smallest first")
        return f"sorted by {name} ({direction}), pool: {self.pool_filter}"


# --- snapshot diff (leak hunting) ---------------------------------------------------------

@dataclass(frozen=True)
class Growth:
    tag: str
    type: str
    diff_before: int
    diff_after: int
    bytes_before: int
    bytes_after: int

    @property
    def bytes_grown(self) -> int:
        return self.bytes_after - self.bytes_before

    @property
    def diff_grown(self) -> int:
        return self.diff_after - self.diff_before


def grown_tags(before: Snapshot, after: Snapshot) -> list[Growth]:
    """Tags whose outstanding bytes or allocations grew, most bytes first."""
    old = before.by_key()
    grown = []
    for usage in after.rows:
        was = old.get(usage.key)
        diff_before = was.diff if was else 0
        bytes_before = was.bytes if was else 0
        if usage.bytes > bytes_before or usage.diff > diff_before:
            grown.append(Growth(usage.tag, usage.type, diff_before, usage.diff,
                                bytes_before, usage.bytes))
    grown.sort(key=lambda g: (-g.bytes_grown, -g.diff_grown, g.tag, g.type))
    return grown
