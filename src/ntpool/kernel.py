"""The simulated x64 machine a Python "driver" calls into.

``Kernel`` owns physical memory, the kernel address space, the two pools and the bug check
state. The documented routines are methods, gathered from the front-end modules (``ex``
for the executive's, ``fsrtl``, ``ndis``; ``irql``, ``paging`` and ``process`` for the
machine state those contracts depend on); each is a thin translation onto the one
``PoolAllocator``.

After a bug check the machine is halted: its class becomes a halted twin whose attribute
lookup refuses every routine with a clear message, so live machines pay nothing for the
check. Inspection (``bugcheck``, ``read``, ``pool_tags``, dumps) still works.
"""

import os
from typing import NoReturn

from .constants import DISPATCH_LEVEL, KERNEL_IMAGE_BYTES, PAGE_SHIFT, PAGE_SIZE, SYSTEM_RANGE_START, \
    BugCheckCode, NtStatus
from .drivers import DriverRoutines
from .errors import BugCheck, MachineHalted
from .hooks import BugCheckRaised, CopiedToUser, Hooks, MemoryCopied, MemoryWritten, PageFault
from .routines.ex import ExecutiveRoutines
from .routines.fsrtl import FsRtlRoutines
from .machine.irql import IrqlRoutines
from .routines.ndis import NdisRoutines
from .routines.io import IoRoutines
from .routines.ke_sync import SyncRoutines
from .routines.objects import ObjectRoutines
from .routines.registry_keys import RegistryRoutines
from .routines.rtl_strings import StringRoutines
from .routines.security import SecurityRoutines
from .machine.paging import PagingRoutines
from .machine.process import ProcessRoutines
from .machine.memory import AddressSpace, PhysicalMemory, canonical
from .pool.allocator import PoolAllocator
from .pool.descriptor import Pool
from .pool.layout import LIST_HEAD_COUNT
from .pool.segment_heap.design import SegmentHeapPools
from .pool.tracker import PoolTagInfo
from .routines.registry import routine
from .windows import windows_version

# Windows 7 x64 layout of the kernel address space.
NONPAGED_POOL_BASE = 0xFFFFFA8000000000
PAGED_POOL_BASE = 0xFFFFF8A000000000
KERNEL_DATA_BASE = 0xFFFFF80002000000  # stands where ntoskrnl's data would
KERNEL_DATA_BYTES = 16 << 20

DEFAULT_NONPAGED_POOL_BYTES = 256 << 20
DEFAULT_PAGED_POOL_BYTES = 256 << 20
MiB = 1 << 20


class KernelData:
    """A bump allocator for the kernel's own structures (pool descriptors, tables)."""

    def __init__(self, space: AddressSpace, base: int, size: int):
        self.space = space
        self.base = base
        self.limit = base + size
        self.next = base

    def reserve(self, size: int, align: int = 16) -> int:
        va = (self.next + align - 1) & ~(align - 1)
        end = va + size
        if end > self.limit:
            raise MemoryError(f"kernel data region is full ({size} bytes asked)")
        page = va & ~(PAGE_SIZE - 1)
        while page < end:
            if self.space.translate(page) is None:
                pfn = self.space.physical.allocate_frame()
                self.space.physical.zero_frame(pfn)
                self.space.map_page(page, pfn)
            page += PAGE_SIZE
        self.next = end
        return va


def _positive_bytes(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of bytes, not {type(value).__name__}")
    if value < PAGE_SIZE:
        raise ValueError(f"{name} must be at least one page ({PAGE_SIZE} bytes), got {value}")
    return value & ~(PAGE_SIZE - 1)


class Kernel(ExecutiveRoutines, FsRtlRoutines, NdisRoutines, IrqlRoutines, PagingRoutines,
             ProcessRoutines, DriverRoutines, ObjectRoutines, IoRoutines, StringRoutines,
             RegistryRoutines, SecurityRoutines, SyncRoutines):
    """A fresh simulated x64 Windows machine with nonpaged and paged pool."""

    def __init__(self, nonpaged_pool_bytes: int = DEFAULT_NONPAGED_POOL_BYTES,
                 paged_pool_bytes: int = DEFAULT_PAGED_POOL_BYTES,
                 physical_memory_bytes: int | None = None, processors: int = 1,
                 windows="7", seed: int = 0):
        self.windows = windows_version(windows)  # which Windows, hence which pool design
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        self.seed = seed
        nonpaged_pool_bytes = _positive_bytes("nonpaged_pool_bytes", nonpaged_pool_bytes)
        paged_pool_bytes = _positive_bytes("paged_pool_bytes", paged_pool_bytes)
        if isinstance(processors, bool) or not isinstance(processors, int) or not 1 <= processors <= 64:
            raise ValueError(f"processors must be an int from 1 to 64, got {processors!r}")
        pool_bytes = nonpaged_pool_bytes + paged_pool_bytes
        if physical_memory_bytes is None:
            # Pool, the page tables that map it, and the kernel's own data.
            physical_memory_bytes = pool_bytes + pool_bytes // 256 + KERNEL_DATA_BYTES + 4 * MiB
        physical_memory_bytes = _positive_bytes("physical_memory_bytes", physical_memory_bytes)

        self.hooks = Hooks()  # how layers on top hook in (ntpool.hooks)
        self.bugcheck: BugCheck | None = None
        self.processors = processors
        self.physical = PhysicalMemory(physical_memory_bytes)
        self.space = AddressSpace(self.physical)
        self.kernel_data = KernelData(self.space, KERNEL_DATA_BASE, KERNEL_DATA_BYTES)
        self.kernel_data.reserve(KERNEL_IMAGE_BYTES, align=PAGE_SIZE)  # ntoskrnl's image: at the base
        crash = self.KeBugCheckEx
        self._mem = self.physical.buffer
        self._tlb = self.space.tlb
        if self.windows.segment_heap:
            self._init_drivers()
            self.heap_state = SegmentHeapPools(
                self.windows, self.space, self.kernel_data, self._write_kernel_data, crash,
                self.call_sites, nonpaged_pool_bytes, paged_pool_bytes, seed, self.hooks)
            self.nonpaged_pool = self.heap_state.nonpaged
            self.nonpaged_pool_nx = self.heap_state.nonpaged_nx
            self.paged_pool = self.heap_state.paged
            self.pool = self.heap_state.allocator
        else:
            self._init_windows7_pools(nonpaged_pool_bytes, paged_pool_bytes, processors, crash)
        self.current_processor = 0
        # The loaded driver whose code is running (None: the kernel itself or a test).
        self.current_driver = None
        self.hooks.watch(MemoryWritten, self._publish_writes)
        self._init_irql()
        self._init_paging()
        for pool in (self.nonpaged_pool, self.paged_pool):
            pool.fault = self._pool_access_fault
        self._init_processes()
        self._init_ndis()
        # The I/O, object, configuration and security managers drivers meet (routines/io.py...).
        self._init_objects()
        self._init_registry()
        self._init_io()
        self._init_security()
        self._init_sync()

    def _init_windows7_pools(self, nonpaged_pool_bytes: int, paged_pool_bytes: int,
                             processors: int, crash) -> None:
        """Windows 7's design: two pool descriptors and the classic allocator."""
        self.heap_state = None
        self.nonpaged_pool_nx = None  # Windows 7: NonPagedPoolNx is nonpaged pool
        self.nonpaged_pool = Pool("NonPagedPool", 0, 0, NONPAGED_POOL_BASE, nonpaged_pool_bytes,
                                  self.kernel_data.reserve(LIST_HEAD_COUNT * 16), self.space,
                                  crash, processors)
        self.paged_pool = Pool("PagedPool", 1, 1, PAGED_POOL_BASE, paged_pool_bytes,
                               self.kernel_data.reserve(LIST_HEAD_COUNT * 16), self.space,
                               crash, processors)
        self._init_drivers()
        self.pool = PoolAllocator(self.nonpaged_pool, self.paged_pool, crash, self.call_sites,
                                  self.hooks)

    def _write_kernel_data(self, va: int, data: bytes) -> None:
        """Write the kernel's own structures (the routines' checks do not apply)."""
        for offset in range(0, len(data)):
            pa = self.space.translate(va + offset)
            self._mem[pa] = data[offset]

    # --- bug checks --------------------------------------------------------------------

    @routine("VOID KeBugCheckEx(_In_ ULONG BugCheckCode, _In_ ULONG_PTR BugCheckParameter1, "
             "_In_ ULONG_PTR BugCheckParameter2, _In_ ULONG_PTR BugCheckParameter3, "
             "_In_ ULONG_PTR BugCheckParameter4)")
    def KeBugCheckEx(self, BugCheckCode, BugCheckParameter1=0, BugCheckParameter2=0,
                     BugCheckParameter3=0, BugCheckParameter4=0, *, detail: str = "",
                     culprit=None) -> NoReturn:
        """Stop the machine: record the bug check, halt, publish BugCheckRaised, raise.

        ``culprit`` (a loaded driver) names the driver at fault when the kernel itself finds
        the fault, as at unload (0xC4/0x62): the routine blamed is then its DriverUnload.
        """
        error = BugCheck(BugCheckCode, BugCheckParameter1, BugCheckParameter2,
                         BugCheckParameter3, BugCheckParameter4, detail=detail)
        # The culprit as far as the machine can tell: the code that made the call that stopped it.
        error.site = self.call_sites.site_of_caller()
        entry = self.call_sites.table[error.site]
        owner = self.call_sites.drivers[entry.driver] if entry.driver else None
        error.driver_name = owner.name if owner else ""
        error.call_site = "" if not error.site else \
            f"{entry.function} ({os.path.basename(entry.filename)}:{entry.lineno})"
        if culprit is not None:
            error.site = 0
            error.driver_name = culprit.name
            code = getattr(getattr(culprit.obj, "DriverUnload", None), "__code__", None)
            error.call_site = "" if code is None else \
                f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
        self.bugcheck = error
        self.__class__ = _halted_class(type(self))
        listeners = self.hooks.listening(BugCheckRaised)
        if listeners:
            event = BugCheckRaised(error)
            for listener in listeners:
                listener(event)
        raise error

    @property
    def halted(self) -> bool:
        return self.bugcheck is not None

    # --- memory by virtual address -----------------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes at virtual ``address``; an unmapped page is bug check 0x50."""
        offset = address & 0xFFF
        if 0 <= size and offset + size <= PAGE_SIZE:
            base = self._tlb.get(address >> PAGE_SHIFT)
            if base is not None:
                return self._mem[base + offset:base + offset + size]
        return self._read_slow(address, size)

    def write(self, address: int, data) -> None:
        """Write bytes at virtual ``address``; an unmapped page is bug check 0x50."""
        try:
            offset = address & 0xFFF
            size = len(data)
            if offset + size <= PAGE_SIZE:
                base = self._tlb.get(address >> PAGE_SHIFT)
                if base is not None:
                    self._mem[base + offset:base + offset + size] = data
                    return
        except TypeError:
            pass
        self._write_slow(address, data)

    def _publish_writes(self, active: bool) -> None:
        # k.write is the fastest path: it publishes MemoryWritten only while someone listens.
        if active:
            self.write = self._write_published
        else:
            self.__dict__.pop("write", None)

    def _write_published(self, address: int, data) -> None:
        type(self).write(self, address, data)
        event = MemoryWritten(address, len(data))
        for listener in self.hooks.listening(MemoryWritten):
            listener(event)

    def _read_slow(self, address, size) -> bytes:
        address, size = _checked_span(address, size)
        parts = []
        for va, pa, length in self._pieces(address, size, write=False):
            parts.append(self._mem[pa:pa + length])
        return b"".join(parts)

    def _write_slow(self, address, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        address, size = _checked_span(address, len(data))
        done = 0
        for va, pa, length in self._pieces(address, size, write=True):
            self._mem[pa:pa + length] = data[done:done + length]
            done += length

    def _pieces(self, address: int, size: int, write: bool):
        """(va, pa, length) per page of a span, every page checked before any is touched."""
        pieces = []
        va = address
        end = address + size
        while va < end:
            length = min(PAGE_SIZE - (va & 0xFFF), end - va)
            base = self._tlb.get(va >> PAGE_SHIFT)
            if base is None:
                base = self._page_fault(va, write)
            pieces.append((va, base + (va & 0xFFF), length))
            va += length
        return pieces

    def _page_fault(self, address: int, write: bool) -> int:
        """Resolve a fault (returns the page's physical address) or bug-check.

        Layers on top (special pool) listen for ``PageFault``: each listener returns the
        page's physical address, or None when the address is not its business (it may
        bug-check instead).

        At DISPATCH_LEVEL or above no fault may be resolved: DRIVER_IRQL_NOT_LESS_OR_EQUAL
        (0xD1) when a driver's code made the access, IRQL_NOT_LESS_OR_EQUAL (0xA) otherwise,
        with (address, IRQL, 0 read / 1 write, the accessing instruction's address). Below
        it a paged-out page is paged back in; an unmapped user-mode address (a NULL pointer)
        is KMODE_EXCEPTION_NOT_HANDLED; any other unmapped kernel address is
        PAGE_FAULT_IN_NONPAGED_AREA.
        """
        if self.hooks.listening(PageFault):
            base = self.hooks.ask(PageFault(address, write))
            if base is not None:
                return base
        irql = self.irql_by_processor[self.current_processor]
        if irql >= DISPATCH_LEVEL:
            site = self.call_sites.site_of_caller()
            entry = self.call_sites.table[site]
            by_driver = bool(entry.driver) or self.current_driver is not None
            code = BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL if by_driver else \
                BugCheckCode.IRQL_NOT_LESS_OR_EQUAL
            self.KeBugCheckEx(code, address, irql, int(write), entry.address,
                              detail=f"{'write to' if write else 'read of'} {address:#x} "
                                     f"(not resident) at IRQL {irql}, from "
                                     f"{self.call_sites.describe(site)}")
        if self.pager.is_paged_out(address):
            return self.pager.page_in(address)
        if address < SYSTEM_RANGE_START:
            # Kernel code touching a user-mode address nothing maps (a NULL pointer, most
            # often): an access violation no handler catches.
            site = self.call_sites.site_of_caller()
            self.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, NtStatus.STATUS_ACCESS_VIOLATION,
                              self.call_sites.table[site].address, int(write), address,
                              detail=f"{'write to' if write else 'read of'} {address:#x}: "
                                     f"a NULL or user-mode pointer, from {self.call_sites.describe(site)}")
        self.KeBugCheckEx(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA, address, int(write), 0, 0,
                          detail=f"{'write to' if write else 'read of'} unmapped address {address:#x}")

    def _pool_access_fault(self, address: int, write: bool, lock_irql: int) -> int:
        """An access the pool code itself makes (following a link or a header's sizes) that
        finds no mapping: what Windows 7 raises there (README, "When the pool is corrupted").

        The pool code runs at ``lock_irql`` or the caller's IRQL, whichever is higher. A
        non-canonical address is a general-protection fault no handler catches: 0x1E
        (0xC0000005, instruction, 0, -1). A paged-out page comes back below DISPATCH_LEVEL;
        otherwise the fault is 0xC5 DRIVER_CORRUPTED_EXPOOL at DISPATCH_LEVEL or above
        (address, IRQL, 0 read / 1 write, instruction) and 0x50 PAGE_FAULT_IN_NONPAGED_AREA
        below it (address, 0 read / 1 write, instruction, 0). ntpool has no ntoskrnl code
        addresses: the instruction given is the driver's call into the pool.
        """
        irql = max(self.irql_by_processor[self.current_processor], lock_irql)
        site = self.call_sites.site_of_caller()
        instruction = self.call_sites.table[site].address
        access = "write to" if write else "read of"
        if canonical(address) != address:
            self.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, NtStatus.STATUS_ACCESS_VIOLATION,
                              instruction, 0, 0xFFFFFFFFFFFFFFFF,
                              detail=f"the pool's {access} non-canonical address {address:#x} (a "
                                     f"corrupted pool link): general protection fault, from "
                                     f"{self.call_sites.describe(site)}")
        if self.hooks.listening(PageFault):
            base = self.hooks.ask(PageFault(address, write))
            if base is not None:
                return base
        if irql < DISPATCH_LEVEL and self.pager.is_paged_out(address):
            return self.pager.page_in(address)
        if irql >= DISPATCH_LEVEL:
            self.KeBugCheckEx(BugCheckCode.DRIVER_CORRUPTED_EXPOOL, address, irql, int(write), instruction,
                              detail=f"the pool's {access} {address:#x} at IRQL {irql} found no "
                                     f"page (a corrupted pool link), from {self.call_sites.describe(site)}")
        self.KeBugCheckEx(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA, address, int(write), instruction, 0,
                          detail=f"the pool's {access} unmapped address {address:#x} (a corrupted "
                                 f"pool link), from {self.call_sites.describe(site)}")

    @routine("VOID RtlZeroMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
             "_In_ SIZE_T Length)")
    def RtlZeroMemory(self, Destination: int, Length: int) -> None:
        self.write(Destination, bytes(_checked_length(Length)))

    @routine("VOID RtlFillMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
             "_In_ SIZE_T Length, _In_ UCHAR Fill)")
    def RtlFillMemory(self, Destination: int, Length: int, Fill: int) -> None:
        if not isinstance(Fill, int) or not 0 <= Fill <= 0xFF:
            raise ValueError(f"Fill must be a byte value 0..255, got {Fill!r}")
        self.write(Destination, bytes([Fill]) * _checked_length(Length))

    @routine("VOID RtlCopyMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
             "_In_reads_bytes_(Length) const VOID *Source, _In_ SIZE_T Length)")
    def RtlCopyMemory(self, Destination: int, Source: int, Length: int) -> None:
        data = self.read(Source, _checked_length(Length))
        copied = self.hooks.listening(MemoryCopied)
        if not copied:
            self.write(Destination, data)
            return
        type(self).write(self, Destination, data)  # one event for the copy: MemoryCopied
        event = MemoryCopied(Destination, Source, Length)
        for listener in copied:
            listener(event)

    # Reading the whole source first makes overlap safe: one function serves both.
    RtlMoveMemory = routine("VOID RtlMoveMemory(_Out_writes_bytes_all_(Length) PVOID Destination, "
                            "_In_reads_bytes_(Length) const VOID *Source, _In_ SIZE_T Length)"
                            )(RtlCopyMemory)

    def copy_to_user(self, UserBuffer: bytearray, Source: int, Length: int) -> None:
        """Copy pool bytes out to a user-mode buffer (a Python bytearray stands for it)."""
        if not isinstance(UserBuffer, bytearray):
            raise TypeError(f"UserBuffer must be a bytearray, not {type(UserBuffer).__name__}")
        Length = _checked_length(Length)
        if Length > len(UserBuffer):
            raise ValueError(f"Length {Length} is larger than the user buffer ({len(UserBuffer)} bytes)")
        data = self.read(Source, Length)
        self.hooks.publish(CopiedToUser(Source, Length))
        UserBuffer[:Length] = data

    @routine("SIZE_T RtlCompareMemory(_In_ const VOID *Source1, _In_ const VOID *Source2, "
             "_In_ SIZE_T Length)")
    def RtlCompareMemory(self, Source1: int, Source2: int, Length: int) -> int:
        a = self.read(Source1, _checked_length(Length))
        b = self.read(Source2, Length)
        for index, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return index
        return Length

    # --- pool tracking -------------------------------------------------------------------

    def pool_tags(self) -> list[PoolTagInfo]:
        """SYSTEM_POOLTAG rows (as ZwQuerySystemInformation(SystemPoolTagInformation) gives)."""
        return self.pool.tracker.snapshot()

    def pool_in_use(self) -> dict[str, int]:
        """Pages each pool holds and physical frames in use."""
        return {"NonPagedPool": self.nonpaged_pool.pages_in_use,
                "PagedPool": self.paged_pool.pages_in_use,
                "frames": self.physical.frames_used}


def _checked_length(length) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"Length must be a non-negative int, got {length!r}")
    return length


def _checked_span(address, size) -> tuple[int, int]:
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address < 1 << 64:
        raise ValueError(f"address must be a 64-bit int, got {address!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    if address + size > 1 << 64:
        raise ValueError(f"{size} bytes at {address:#x} run past the end of the address space")
    return address, size


# --- the halted machine ----------------------------------------------------------------------

# What may still be asked of a machine after its bug check: looking, not doing.
INSPECTION = frozenset({
    "bugcheck", "halted", "read", "pool_tags", "pool_in_use", "physical", "space",
    "nonpaged_pool", "paged_pool", "nonpaged_pool_nx", "heap_state", "windows", "seed", "pool", "kernel_data", "processors", "current_processor",
    "write_dump", "hooks", "current_driver", "drivers", "call_sites",
    "allocation_site", "allocation_driver", "loaded_module_list", "verifier",
    "crash_dump", "crash_dump_kind", "crash_dump_error",
    "irql_by_processor", "current_irql", "KeGetCurrentIrql", "current_process", "processes",
    "system_process", "is_resident",
})

_halted_classes: dict[type, type] = {}


def _halted_class(cls: type) -> type:
    if getattr(cls, "_is_halted_twin", False):
        return cls
    twin = _halted_classes.get(cls)
    if twin is None:
        def __getattribute__(self, name):
            if name.startswith("_") or name in INSPECTION:
                return object.__getattribute__(self, name)
            check = object.__getattribute__(self, "bugcheck")
            raise MachineHalted(
                f"the machine is halted by bug check {check.code:#x} ({check.name}); "
                f"{name} cannot run on a halted machine (create a new Kernel)")

        twin = type(f"Halted{cls.__name__}", (cls,),
                    {"__getattribute__": __getattribute__, "_is_halted_twin": True})
        _halted_classes[cls] = twin
    return twin
