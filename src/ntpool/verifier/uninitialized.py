"""Uninitialized memory disclosure: which bytes of each allocation were ever written.

As Bochspwn Reloaded did for Windows, each verified allocation gets a shadow with a byte
per byte (0: never written). Writes through the machine mark bytes written; RtlCopyMemory
and RtlMoveMemory carry the shadow along with the data; ``copy_to_user`` of a range that
holds never-written bytes is reported with the allocation's tag, driver and call site; so is a
copy to a user-mode address, and the I/O manager's METHOD_BUFFERED copy-back of a verified
driver's reply (its SystemBuffer is shadowed from the moment it is made).
It listens for the machine's MemoryWritten, MemoryCopied and CopiedToUser events only while
the option is on (the machine's writes publish nothing otherwise).
"""

from bisect import bisect_right, insort
from typing import NamedTuple

from ..hooks import CopiedToUser, MemoryCopied, MemoryWritten, SystemBufferMade
from ..tags import display

TAG_SYSTEM_BUFFER = int.from_bytes(b"Io  ", "little")


class Disclosure(NamedTuple):
    source: int  # the address copied from
    length: int
    first_uninitialized: int  # address of the first never-written byte copied
    uninitialized_bytes: int
    allocation: int
    tag: int
    site: int
    request_to: str = ""  # a METHOD_BUFFERED SystemBuffer: the driver whose reply it was

    def describe(self, kernel) -> str:
        if self.request_to:
            return (f"{self.uninitialized_bytes} uninitialized byte(s) at {self.first_uninitialized:#x} "
                    f"copied to user mode from the SystemBuffer {self.allocation:#x} (tag "
                    f"{display(self.tag)}) of a METHOD_BUFFERED request to {self.request_to}: its "
                    f"IoStatus.Information covered bytes it never wrote")
        return (f"{self.uninitialized_bytes} uninitialized byte(s) at {self.first_uninitialized:#x} "
                f"copied to user mode from pool allocation {self.allocation:#x} (tag "
                f"{display(self.tag)}), allocated by {kernel.call_sites.describe(self.site)}")


class UninitializedMemoryTracking:
    def __init__(self, kernel, verifies=lambda driver: False):
        self.kernel = kernel
        self.verifies = verifies  # driver image name -> is it verified with this option
        self.request_buffers: dict[int, str] = {}  # SystemBuffer tracked -> the driver
        self.shadows: dict[int, tuple[bytearray, int, int]] = {}  # start -> (shadow, tag, site)
        self.starts: list[int] = []
        self.reports: list[Disclosure] = []
        self._installed = False

    def install(self, on: bool) -> None:
        hooks = self.kernel.hooks
        events = ((MemoryWritten, self._on_written), (MemoryCopied, self._on_copied),
                  (CopiedToUser, self._on_user_copy), (SystemBufferMade, self._on_system_buffer))
        for event_type, listener in events:
            if on:
                hooks.subscribe(event_type, listener)
            else:
                hooks.unsubscribe(event_type, listener)
        self._installed = on

    def track(self, address: int, size: int, tag: int, site: int) -> None:
        self.shadows[address] = (bytearray(size), tag, site)
        insort(self.starts, address)

    def forget(self, address: int) -> None:
        if self.shadows.pop(address, None) is not None:
            self.starts.pop(bisect_right(self.starts, address) - 1)
            if self.request_buffers:  # (each is shadowed: track, then request_buffers)
                self.request_buffers.pop(address, None)

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

    def _on_written(self, event: MemoryWritten) -> None:
        self._mark(event.address, event.length)

    def _on_copied(self, event: MemoryCopied) -> None:
        # The data is copied already; the shadow follows it (the source's shadow is intact:
        # a copy publishes no MemoryWritten).
        source, destination, length = event.source, event.destination, event.length
        source_shadow = bytearray(b"\x01") * length
        for start, shadow, _, _, first, last in self._spans(source, length):
            source_shadow[first - source:last - source] = shadow[first - start:last - start]
        for start, shadow, _, _, first, last in self._spans(destination, length):
            shadow[first - start:last - start] = source_shadow[first - destination:last - destination]

    def _on_system_buffer(self, event: SystemBufferMade) -> None:
        # The I/O manager's SystemBuffer for a request to a verified driver: pool, so its
        # bytes past the caller's input are old contents until the driver writes them.
        if self.verifies(event.driver):
            self.track(event.address, event.length, TAG_SYSTEM_BUFFER, 0)
            self.request_buffers[event.address] = event.driver

    def _on_user_copy(self, event: CopiedToUser) -> None:
        source, length = event.source, event.length
        for start, shadow, tag, site, first, last in self._spans(source, length):
            window = shadow[first - start:last - start]
            missing = window.count(0)
            if missing:
                self.reports.append(Disclosure(source, length, first + window.index(0), missing,
                                               start, tag, site, self.request_buffers.get(start, "")))
