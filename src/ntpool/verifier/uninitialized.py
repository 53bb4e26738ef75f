"""Uninitialized memory disclosure: which bytes of each allocation were ever written.

As Bochspwn Reloaded did for Windows, each verified allocation gets a shadow with a byte
per byte (0: never written). Writes through the machine mark bytes written; RtlCopyMemory
and RtlMoveMemory carry the shadow along with the data; ``copy_to_user`` of a range that
holds never-written bytes is reported with the allocation's tag, driver and call site.
Only while the option is on are the machine's write routines wrapped.
"""

from bisect import bisect_right, insort
from typing import NamedTuple

from ..tags import display


class Disclosure(NamedTuple):
    source: int  # the address copied from
    length: int
    first_uninitialized: int  # address of the first never-written byte copied
    uninitialized_bytes: int
    allocation: int
    tag: int
    site: int

    def describe(self, kernel) -> str:
        return (f"{self.uninitialized_bytes} uninitialized byte(s) at {self.first_uninitialized:#x} "
                f"copied to user mode from pool allocation {self.allocation:#x} (tag "
                f"{display(self.tag)}), allocated by {kernel.call_sites.describe(self.site)}")


class UninitializedMemoryTracking:
    def __init__(self, kernel):
        self.kernel = kernel
        self.shadows: dict[int, tuple[bytearray, int, int]] = {}  # start -> (shadow, tag, site)
        self.starts: list[int] = []
        self.reports: list[Disclosure] = []
        self._installed = False

    def install(self, on: bool) -> None:
        kernel = self.kernel
        if on and not self._installed:
            kernel.write = self._write
            kernel.RtlCopyMemory = kernel.RtlMoveMemory = self._copy
            kernel.user_copy_observers.append(self._on_user_copy)
        elif not on and self._installed:
            for name in ("write", "RtlCopyMemory", "RtlMoveMemory"):
                kernel.__dict__.pop(name, None)
            kernel.user_copy_observers.remove(self._on_user_copy)
        self._installed = on

    def track(self, address: int, size: int, tag: int, site: int) -> None:
        self.shadows[address] = (bytearray(size), tag, site)
        insort(self.starts, address)

    def forget(self, address: int) -> None:
        if self.shadows.pop(address, None) is not None:
            self.starts.pop(bisect_right(self.starts, address) - 1)

    def _covering(self, address: int):
        """(start, shadow, tag, site) of the tracked allocation holding ``address``, or None."""
        index = bisect_right(self.starts, address) - 1
        if index < 0:
            return None
        start = self.starts[index]
        shadow, tag, site = self.shadows[start]
        return (start, shadow, tag, site) if address < start + len(shadow) else None

    def _spans(self, address: int, length: int):
        """(start, shadow, tag, site, first, last) for each tracked allocation the range touches."""
        end = address + length
        index = max(bisect_right(self.starts, address) - 1, 0)
        while index < len(self.starts) and self.starts[index] < end:
            start = self.starts[index]
            shadow, tag, site = self.shadows[start]
            first, last = max(address, start), min(end, start + len(shadow))
            if first < last:
                yield start, shadow, tag, site, first, last
            index += 1

    def _mark(self, address: int, length: int, value: int = 1) -> None:
        for start, shadow, _, _, first, last in self._spans(address, length):
            shadow[first - start:last - start] = bytes([value]) * (last - first)

    def mark_written(self, address: int, length: int) -> None:
        if self.shadows:
            self._mark(address, length)

    def _write(self, address, data) -> None:
        type(self.kernel).write(self.kernel, address, data)
        self._mark(address, len(data))

    def _copy(self, Destination: int, Source: int, Length: int) -> None:
        kernel = self.kernel
        source_shadow = bytearray(b"\x01") * Length
        for start, shadow, _, _, first, last in self._spans(Source, Length):
            source_shadow[first - Source:last - Source] = shadow[first - start:last - start]
        type(kernel).write(kernel, Destination, kernel.read(Source, Length))
        for start, shadow, _, _, first, last in self._spans(Destination, Length):
            shadow[first - start:last - start] = source_shadow[first - Destination:last - Destination]

    def _on_user_copy(self, kernel, source: int, length: int) -> None:
        for start, shadow, tag, site, first, last in self._spans(source, length):
            window = shadow[first - start:last - start]
            missing = window.count(0)
            if missing:
                self.reports.append(Disclosure(source, length, first + window.index(0), missing,
                                               start, tag, site))
