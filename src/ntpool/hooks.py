"""One way to hook into the machine: typed events, and one pool layer.

Layers above the core (Driver Verifier, crash dumps, future tools) never replace the
machine's methods or keep lists inside it. They use ``k.hooks``:

Events. The machine publishes a small frozen object at each point a layer may care about:

    ==================  ============================================  ====================
    event               published when                                a listener returns
    ==================  ============================================  ====================
    BugCheckRaised      KeBugCheckEx has halted the machine, before   nothing
                        the BugCheck is raised
    IrqlRaised          a processor's IRQL went up (KeRaiseIrql, a    nothing
                        spin lock)
    DriverUnloading     a driver's image is about to go (after its    nothing
                        DriverUnload, or after a failed DriverEntry)
    PageFault           an access found no mapping, before the        the page's physical
                        machine resolves or bug-checks it             address, or None
    MemoryWritten       bytes were written through the machine        nothing
                        (``k.write``, the Rtl fill/zero routines, an
                        allocation the routine zeroes)
    MemoryCopied        RtlCopyMemory/RtlMoveMemory copied a range    nothing
                        (published instead of MemoryWritten for the
                        copy when anyone listens for copies)
    CopiedToUser        ``copy_to_user`` is about to copy pool bytes  nothing
                        out to a user-mode buffer (so is a copy to a
                        user address, and the I/O manager's
                        METHOD_BUFFERED copy-back)
    SystemBufferMade    the I/O manager made a METHOD_BUFFERED        nothing
                        request's SystemBuffer for a driver's device
    MappingChanged      a present page mapping was removed or         nothing
                        replaced (a CPU's TLB must forget it)
    FramesAliased       frames in use were mapped at a second,        nothing
                        writable address (an MDL's system mapping,
                        MmMapIoSpace of RAM)
    PagedOut            a page went to the page file                  nothing
                        (``Pager.page_out``)
    PagedIn             a paged-out page is back (``Pager.page_in``)  nothing
    DebugPrinted        a driver printed a line (DbgPrint)            nothing
    ==================  ============================================  ====================

    k.hooks.subscribe(IrqlRaised, listener)      # listener(event)
    k.hooks.unsubscribe(IrqlRaised, listener)

Nothing is paid when nobody listens: a publisher asks ``hooks.listening(Event)`` (a dict
lookup giving a tuple, empty when nobody listens) and builds the event only for listeners.
Where even that is too much (``k.write`` is the machine's fastest path), the machine
``watch``-es the event and switches to a publishing variant only while someone listens.

The pool layer. At most one object (Driver Verifier) may stand between the allocator's
generic path and the pools: ``k.pool.set_layer(layer)``, a ``PoolLayer`` (below). While one
is set the allocator's fast paths are off, so every call reaches it, unless it only observes
(its optional ``lane`` / ``record`` / ``forget``): then the allocator keeps the free fast path
and serves in a lane the requests the layer says it only watches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol


class Event:
    """Base of the machine's events (frozen dataclasses with slots: cheap, immutable)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class BugCheckRaised(Event):
    bugcheck: Any  # the ntpool.BugCheck about to be raised (k.bugcheck is already set)


@dataclass(frozen=True, slots=True)
class IrqlRaised(Event):
    processor: int
    old: int
    new: int


@dataclass(frozen=True, slots=True)
class DriverUnloading(Event):
    driver: Any  # the LoadedDriver (name, image base, KLDR entry)


@dataclass(frozen=True, slots=True)
class DriverUnloaded(Event):
    """The driver is gone from PsLoadedModuleList (after DriverUnload, or a failed
    DriverEntry): whoever mapped its image unmaps it now."""

    driver: Any  # the LoadedDriver


@dataclass(frozen=True, slots=True)
class PageFault(Event):
    address: int
    write: bool


@dataclass(frozen=True, slots=True)
class MemoryWritten(Event):
    address: int
    length: int


@dataclass(frozen=True, slots=True)
class MemoryCopied(Event):
    destination: int
    source: int
    length: int


@dataclass(frozen=True, slots=True)
class CopiedToUser(Event):
    source: int
    length: int


@dataclass(frozen=True, slots=True)
class SystemBufferMade(Event):
    address: int
    length: int
    initialized: int  # its first bytes: the caller's input, copied in
    driver: str  # the driver whose device the request is for (its image name)


@dataclass(frozen=True, slots=True)
class MappingChanged(Event):
    address: int  # the page whose mapping went or changed


@dataclass(frozen=True, slots=True)
class FramesAliased(Event):
    """Frames already in use mapped at a second, writable address (an MDL's system mapping,
    MmMapIoSpace of RAM): a store there changes whatever the frames' first mapping holds."""

    address: int  # the first page of the new mapping
    frames: tuple  # its frames, page by page


@dataclass(frozen=True, slots=True)
class PagedOut(Event):
    address: int  # the page, not present now


@dataclass(frozen=True, slots=True)
class PagedIn(Event):
    address: int  # the page, mapped again (at any frame)


@dataclass(frozen=True, slots=True)
class DebugPrinted(Event):
    line: str


class PoolLayer(Protocol):
    """What a layer between the allocator's generic path and the pools provides.

    No object is built per allocation: the allocator passes what it already has.
    """

    def allocate(self, pool, number_of_bytes: int, tag: int, site: int, aligned: bool,
                 contiguous=None) -> int | None:
        """The address it allocated, 0 to fail the request, None to leave it to the pool.

        ``contiguous`` (a ``pool.allocator.Contiguous``) marks a request for physically
        contiguous pages (NDIS): the layer may fail or record it, and allocates it, when it
        does, with the allocator's ``allocate_contiguous_plain``, never from its own pages.
        """

    def check_allocate(self, pool_type: int, number_of_bytes: int, tag: int, site: int) -> None:
        """Checks made before the pool sees a request (Driver Verifier's stops); may bug-check."""

    def check_free(self, address: int, site: int) -> None:
        """Checks made before the pool sees a free (Driver Verifier's stops); may bug-check."""

    def free(self, address: int, tag: int | None) -> bool:
        """True when the address was the layer's own and it freed it."""

    def site_of(self, address: int) -> int | None:
        """The call site of an allocation the layer made, None when it is not the layer's."""

    # Optional, together: a layer with ``lane`` and ``forget`` only observes some calls, and
    # the allocator keeps its fast paths for them (``PoolAllocator.refresh_fast_paths``).

    def lane(self, site: int, tag: int) -> int | None:
        """For a request the fast path would serve: 0 to serve it as with no layer, another
        int to serve it so and ``record`` it (what to keep, the layer's own bits), None to
        send it through ``check_allocate`` and ``allocate``."""

    def record(self, address: int, base_type: int, number_of_bytes: int, tag: int,
               site: int, kept: int) -> None:
        """A request ``lane`` answered ``kept`` (not 0) for was allocated at ``address``."""

    def forget(self, address: int) -> None:
        """The free fast path freed the small chunk at ``address``."""


Listener = Callable[[Event], Any]


class Hooks:
    """The machine's subscriptions: event type -> listeners, in subscription order."""

    __slots__ = ("_listeners", "_watchers")

    def __init__(self):
        self._listeners: dict[type, tuple[Listener, ...]] = {}
        self._watchers: dict[type, list[Callable[[bool], None]]] = {}

    def listening(self, event_type: type) -> tuple[Listener, ...]:
        """The listeners for ``event_type`` (an empty tuple when nobody listens)."""
        return self._listeners.get(event_type, ())

    def subscribe(self, event_type: type, listener: Listener) -> None:
        _checked_event_type(event_type)
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {type(listener).__name__}")
        before = self.listening(event_type)
        if listener in before:
            return
        self._listeners[event_type] = before + (listener,)
        if not before:
            self._notify(event_type, True)

    def unsubscribe(self, event_type: type, listener: Listener) -> None:
        """Stop calling ``listener`` (nothing happens if it was not subscribed)."""
        before = self.listening(event_type)
        if listener not in before:
            return
        after = tuple(x for x in before if x != listener)
        if after:
            self._listeners[event_type] = after
        else:
            del self._listeners[event_type]
            self._notify(event_type, False)

    def publish(self, event: Event) -> None:
        for listener in self.listening(type(event)):
            listener(event)

    def ask(self, event: Event):
        """The first listener's answer that is not None (None if no listener answers)."""
        for listener in self.listening(type(event)):
            answer = listener(event)
            if answer is not None:
                return answer
        return None

    def watch(self, event_type: type, changed: Callable[[bool], None]) -> None:
        """Call ``changed(True)`` when the first listener subscribes, ``changed(False)``
        when the last one leaves (the machine switches a fast path on and off so)."""
        _checked_event_type(event_type)
        self._watchers.setdefault(event_type, []).append(changed)

    def _notify(self, event_type: type, active: bool) -> None:
        for changed in self._watchers.get(event_type, ()):
            changed(active)


# --- layers that attach to every machine -----------------------------------------------------

_LAYERS: list[Callable[[Any], None]] = []


def attach_to_every_kernel(attach: Callable[[Any], None]) -> Callable[[Any], None]:
    """Register ``attach(kernel)``, called at the end of every new Kernel's construction.

    The layers above the core (Driver Verifier, crash dumps) register themselves when they
    are imported (``ntpool/__init__`` imports them), so the core never imports them.
    """
    if attach not in _LAYERS:
        _LAYERS.append(attach)
    return attach


def kernel_layers() -> tuple[Callable[[Any], None], ...]:
    return tuple(_LAYERS)


def _checked_event_type(event_type) -> None:
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise TypeError(f"event_type must be an ntpool.hooks event class, not {event_type!r}")


__all__ = ["attach_to_every_kernel", "kernel_layers", "BugCheckRaised", "CopiedToUser", "DriverUnloading", "Event", "FramesAliased", "Hooks",
           "IrqlRaised", "MappingChanged", "DebugPrinted", "MemoryCopied", "MemoryWritten", "PageFault", "PoolLayer",
           "SystemBufferMade"]
