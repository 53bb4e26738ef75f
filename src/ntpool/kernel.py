"""The simulated x64 machine a Python "driver" calls into: ``ntpool.Kernel``.

One class, composed in ``Kernel.__init__`` in the order a reader meets the parts:

- the machine: physical memory, the kernel address space, the kernel's own data region,
  processors and their IRQL, the pager, processes and their quota;
- the drivers: loaded images and the call-site table (who allocated what);
- the pools: built by an allocator design (``ntpool.pool.design``; Windows 7's by default),
  one ``PoolAllocator`` that every routine calls;
- the routine families drivers call, as methods (``routines.ex``, ``fsrtl``, ``ndis``,
  ``rtl``, ``ke_irql``'s IRQL and spin lock routines, ``ps``'s process routines), each declared
  in ``routines.registry`` with its C prototype. The families hold no state of their own:
  everything they use is made here;
- the layers on top (Driver Verifier, crash dumps), which attach themselves to every new
  machine (``ntpool.hooks.attach_to_every_kernel``) and hook in through ``k.hooks``: this
  module never imports them.

After a bug check the machine is halted: its class becomes a halted twin whose attribute
lookup refuses every method not marked ``allowed_when_halted``, with a clear message, so
live machines pay nothing for the check. Inspection (``bugcheck``, ``read``, ``pool_tags``,
dumps, every data attribute) still works.
"""

import inspect
import os
from collections.abc import Callable
from typing import ClassVar, NoReturn

from .constants import (
    DISPATCH_LEVEL,
    PAGE_SHIFT,
    PAGE_SIZE,
    PASSIVE_LEVEL,
    SYSTEM_RANGE_START,
    KERNEL_IMAGE_BYTES,
    KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LIST_HEAD,
    KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LIST_HEAD,
    KERNEL_IMAGE_PS_LOADED_MODULE_LIST,
    BugCheckCode,
    NtStatus,
)
from .drivers import LIST_ENTRY, CallSites, DriverRoutines
from .errors import (ALLOWED_WHEN_HALTED, AddressRangeError, BugCheck, ExecutionError, MachineHalted,
                     allowed_when_halted, shown_argument)
from .hooks import BugCheckRaised, Hooks, MemoryWritten, PageFault, kernel_layers
from .machine.memory import PTE_NX, PTE_PRESENT, AddressSpace, PhysicalMemory, canonical
from .machine.pager import Pager
from .machine.process import QuotaLedger
from .pool.design import pool_design_for
from .pool.paging import PagingRoutines
from .pool.tracker import PoolTagInfo
from .routines.ex import ExecutiveRoutines, serve_pool_routines_directly
from .routines.fsrtl import FsRtlRoutines
from .routines.ndis import NdisRoutines, serve_memory_routines_directly
from .routines.io import IoRoutines
from .routines.ke_dpc import DeferredRoutines
from .routines.ke_irql import IrqlRoutines
from .routines.ke_sync import SyncRoutines
from .routines.mm import MmRoutines
from .routines.objects import ObjectRoutines
from .routines.ps import ProcessRoutines
from .routines.registry_keys import RegistryRoutines
from .routines.rtl_strings import StringRoutines
from .routines.security import SecurityRoutines
from .routines.sysinfo import SystemInformationRoutines
from .routines import registry
from .routines.registry import routine
from .routines.runtime import MINIMUM_LOOKASIDE_DEPTH, RuntimeRoutines, serve_lookaside_routines_directly
from .routines.rtl import RtlRoutines
from .routines.ps_notify import NotifyRoutines
from .routines.ps_threads import ThreadRoutines
from .routines.io_build import IrpBuilderRoutines
from .routines.rtl_bitmap import BitmapRoutines
from .routines.rtl_printf import PrintfRoutines
from .routines.rtl_splay import SplayTableRoutines
from .routines.rtl_tables import GenericTableRoutines
from .routines.rtl_time import TimeRoutines
from .routines.rundown import RundownRoutines
from .windows import windows_version

KERNEL_DATA_BASE = 0xFFFFF80002000000  # stands where ntoskrnl's data would
KERNEL_DATA_BYTES = 16 << 20

DELAYED_FREES_MINIMUM_PAGES = 127 * 1024
DEFAULT_NONPAGED_POOL_BYTES = 256 << 20
DEFAULT_PAGED_POOL_BYTES = 256 << 20
MiB = 1 << 20
EXECUTE_FAULT = 8  # the x64 fault status's execute bit (MI_FAULT_STATUS_INDICATES_EXECUTION)
CRASH_DUMP_KINDS = ("kernel", "full")  # the bitmap dump Windows writes by default, or full


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


class Kernel(ExecutiveRoutines, FsRtlRoutines, NdisRoutines, RtlRoutines, IrqlRoutines,
             ProcessRoutines, PagingRoutines, DriverRoutines, ObjectRoutines, IoRoutines,
             StringRoutines, RegistryRoutines, SecurityRoutines, SyncRoutines, DeferredRoutines,
             RuntimeRoutines, MmRoutines, SystemInformationRoutines, RundownRoutines,
             NotifyRoutines, ThreadRoutines, IrpBuilderRoutines,
             BitmapRoutines, TimeRoutines, PrintfRoutines, GenericTableRoutines,
             SplayTableRoutines):
    """A fresh simulated x64 Windows machine with nonpaged and paged pool.

    ``k.verifier`` is Driver Verifier: ``k.verifier.enable("driver.sys", special_pool=True)``.
    ``crash_dump=PATH`` writes a crash dump (``crash_dump_kind``: 'kernel', the bitmap dump
    Windows writes by default, or 'full') when the machine bug-checks.
    """

    # Makes the machine's CPU when code on an executable page must run and no compiled
    # driver has made one: ``maker(kernel)`` sets ``kernel.native_call``. The floor that has
    # a CPU (ntpool.native, through the package's __init__) registers it, since the core
    # never imports the floors above it; None (no CPU can be made) leaves ExecutionError.
    cpu_maker: ClassVar[Callable[["Kernel"], object] | None] = None

    def __init__(self, nonpaged_pool_bytes: int = DEFAULT_NONPAGED_POOL_BYTES,
                 paged_pool_bytes: int = DEFAULT_PAGED_POOL_BYTES,
                 physical_memory_bytes: int | None = None, processors: int = 1,
                 windows="7", seed: int = 0, *, crash_dump=None,
                 crash_dump_kind: str = "kernel", delayed_frees: bool | None = None,
                 stack_trace_database: bool = False):
        self.windows = windows_version(windows)  # which Windows, hence which pool design
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        self.seed = seed
        nonpaged_pool_bytes = _positive_bytes("nonpaged_pool_bytes", nonpaged_pool_bytes)
        paged_pool_bytes = _positive_bytes("paged_pool_bytes", paged_pool_bytes)
        if isinstance(processors, bool) or not isinstance(processors, int) or not 1 <= processors <= 64:
            raise ValueError(f"processors must be an int from 1 to 64, got {processors!r}")
        if crash_dump_kind not in CRASH_DUMP_KINDS:
            raise ValueError(f"crash_dump_kind must be 'full' or 'kernel', not {crash_dump_kind!r}")
        if crash_dump is not None and not isinstance(crash_dump, (str, os.PathLike)):
            raise TypeError(f"crash_dump must be a path, not {type(crash_dump).__name__}")
        pool_bytes = nonpaged_pool_bytes + paged_pool_bytes
        if physical_memory_bytes is None:
            # Pool, the page tables that map it, and the kernel's own data.
            physical_memory_bytes = pool_bytes + pool_bytes // 256 + KERNEL_DATA_BYTES + 4 * MiB
        physical_memory_bytes = _positive_bytes("physical_memory_bytes", physical_memory_bytes)

        self.hooks = Hooks()  # how the layers on top hook in (ntpool.hooks)
        self.bugcheck: BugCheck | None = None

        # --- the machine: memory, processors and IRQL -------------------------------------
        self.physical = PhysicalMemory(physical_memory_bytes)
        self.space = AddressSpace(self.physical, self.hooks)
        self._mem = self.physical.buffer
        # The same memory as QWORDs (an aligned QWORD's physical address // 8): what a spin
        # lock's usual acquire and release read and write (routines.ke_irql).
        self._words = self.physical.qwords
        self._tlb = self.space.tlb
        self.kernel_data = KernelData(self.space, KERNEL_DATA_BASE, KERNEL_DATA_BYTES)
        self.kernel_data.reserve(KERNEL_IMAGE_BYTES, align=PAGE_SIZE)  # ntoskrnl's image: at the base
        self.processors = processors
        self.current_processor = 0
        self.irql_by_processor = [int(PASSIVE_LEVEL)] * processors
        # Whether ``write`` publishes MemoryWritten (someone listens): a routine that writes
        # memory through ``_words`` itself does so only while it does not.
        self._writes_published = False
        self.hooks.watch(MemoryWritten, self._publish_writes)

        # Who called from where: the pools record it in each allocation.
        self.call_sites = CallSites()

        # --- the pools, built by the allocator design of this Windows ----------------------
        self.pool_design = pool_design_for(self.windows, seed)
        pools = self.pool_design.build(space=self.space, kernel_data=self.kernel_data,
                                       write_kernel_data=self._write_kernel_data,
                                       crash=self.KeBugCheckEx, processors=processors,
                                       call_sites=self.call_sites, hooks=self.hooks,
                                       nonpaged_pool_bytes=nonpaged_pool_bytes,
                                       paged_pool_bytes=paged_pool_bytes)
        self.pool = pools.allocator  # the one allocator every routine calls
        serve_pool_routines_directly(self)  # ExAllocatePoolWithTag, ExFreePoolWithTag
        self.nonpaged_pool = pools.nonpaged
        self.nonpaged_pool_nx = pools.nonpaged_nx  # None: NonPagedPoolNx is nonpaged pool
        self.paged_pool = pools.paged
        self.heap_state = pools.state  # the segment heap's globals and keys (None on 7)
        self.pager = Pager(self.space, self._no_pages_available)
        self.paged_pool.pager = self.pager
        for pool in (self.nonpaged_pool, self.nonpaged_pool_nx, self.paged_pool):
            if pool is not None:  # Windows 7 and the segment heap alike: one rule
                pool.fault = self._pool_access_fault  # what a pool access to no page raises
        # Windows 7 delays pool frees on machines with at least 127 * 1024 physical pages
        # (about 508 MiB) unless special pool or Driver Verifier is on at boot (WRK
        # InitializePool); ``delayed_frees`` True/False overrides the rule.
        if delayed_frees is None:
            delayed_frees = self.physical.frame_count >= DELAYED_FREES_MINIMUM_PAGES
        elif not isinstance(delayed_frees, bool):
            raise TypeError(f"delayed_frees must be True, False or None, not {delayed_frees!r}")
        self.delayed_frees_at_boot = delayed_frees
        for pool in (self.nonpaged_pool, self.paged_pool):
            if hasattr(pool, "delay_frees"):  # the Windows 7 design's pools
                pool.delay_frees = delayed_frees
        # gflags' "Create kernel mode stack trace database": with it, a chunk's header holds
        # its AllocatorBackTraceIndex (bytes 8-9); without it (the default), bytes 8-15 are
        # ProcessBilled, zero unless quota is charged. ntpool keeps call sites either way.
        if not isinstance(stack_trace_database, bool):
            raise TypeError(f"stack_trace_database must be True or False, not {stack_trace_database!r}")
        self.stack_trace_database = stack_trace_database
        for pool in (self.nonpaged_pool, self.paged_pool):
            if hasattr(pool, "header_site_mask"):
                pool.header_site_mask = 0xFFFF if stack_trace_database else 0
        if stack_trace_database:  # the allocation fast path writes no site into headers
            self.pool.fast_path_blockers.add("stack trace database")
            self.pool.refresh_fast_paths()
        # Pages of drivers' PAGE sections (ntpool.native.msvc): pageable like paged pool.
        self.pageable_image_pages: set[int] = set()

        # --- the drivers: loaded images on PsLoadedModuleList -------------------------------
        self.drivers = []
        self.current_driver = None  # the loaded driver whose code is running (None: kernel)
        # PsLoadedModuleList, a global in ntoskrnl's image
        self.loaded_module_list = self.kernel_data.base + KERNEL_IMAGE_PS_LOADED_MODULE_LIST
        self.write(self.loaded_module_list, LIST_ENTRY.pack(self.loaded_module_list,
                                                            self.loaded_module_list))
        # ExNPagedLookasideListHead / ExPagedLookasideListHead, globals in ntoskrnl's image:
        # every driver's lookaside list is linked there until it is deleted (runtime.py).
        self.npaged_lookaside_list_head = self.kernel_data.base + KERNEL_IMAGE_EX_NPAGED_LOOKASIDE_LIST_HEAD
        self.paged_lookaside_list_head = self.kernel_data.base + KERNEL_IMAGE_EX_PAGED_LOOKASIDE_LIST_HEAD
        for head in (self.npaged_lookaside_list_head, self.paged_lookaside_list_head):
            self.write(head, LIST_ENTRY.pack(head, head))
        self.lookaside_scan_count = 0  # ExpScanCount: ExAdjustLookasideDepth's 0, 1, 2
        self.io_lookaside_scan_count = 0  # on the segment heap: the I/O lists' set scan 2 retunes
        self.minimum_lookaside_depth = MINIMUM_LOOKASIDE_DEPTH  # ExMinimumLookasideDepth (0: Verifier on)
        # (name, DllBase, end) of drivers that unloaded, as MmUnloadedDrivers keeps them.
        self.unloaded_drivers: list[tuple[str, int, int]] = []

        # --- processes and their pool quota ------------------------------------------------
        self.quota_ledger = QuotaLedger()
        self.pool.quota = self.quota_ledger
        self.processes = []
        self._next_pid = 4
        self.system_process = self.create_process("System")
        self.current_process = self.system_process

        # --- what the routine families keep ------------------------------------------------
        self.ndis_handles: dict[int, object] = {}  # handle -> driver object
        self.ndis_blocks: dict[int, tuple[int, int]] = {}  # contiguous va -> (Length, flags)
        serve_memory_routines_directly(self)  # NdisAllocateMemory*, NdisFreeMemory*: made for this machine
        serve_lookaside_routines_directly(self)  # ExAllocateFrom*/ExFreeTo* a driver's lookaside list

        # --- the managers drivers meet, in dependency order: objects (types, names, handles),
        # the configuration registry, I/O (driver and device objects, IRPs), security (SIDs in
        # SeExports), the clock. Each boots its own state in its _init_ method, called only here.
        self._init_irql()
        self._init_objects()
        self._init_registry()
        self._init_io()
        self._init_security()
        self._init_sync()
        self._init_deferred()
        self._init_mm()
        self._init_sysinfo()
        self._init_rundown()
        self._init_notify()
        self._init_threads()
        self._init_irp_builders()

        # --- the layers on top (Driver Verifier, crash dumps) ------------------------------
        self.crash_dump = crash_dump
        self.crash_dump_kind = crash_dump_kind
        self.crash_dump_error: OSError | None = None
        self.dump_writer = None  # write_dump(kernel, path, kind), from the dump layer
        self.verifier = None  # the DriverVerifier, from the verifier layer
        for attach in kernel_layers():
            attach(self)

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
        the fault, as at unload (0xC4/0x62): the routine blamed is then its DriverUnload. A
        name (str) is a driver that has unloaded (0xD4).
        """
        error = BugCheck(BugCheckCode, BugCheckParameter1, BugCheckParameter2,
                         BugCheckParameter3, BugCheckParameter4, detail=detail)
        # The culprit as far as the machine can tell: the code that made the call that stopped it.
        error.site = self.call_sites.site_of_caller()
        entry = self.call_sites.table[error.site]
        owner = self.call_sites.owner(error.site)
        error.driver_name = owner.name if owner else ""
        error.call_site = "" if not error.site else entry.function if not entry.lineno else \
            f"{entry.function} ({os.path.basename(entry.filename)}:{entry.lineno})"
        # The kernel routine that found the problem, when it is not the one called: a check
        # made while ExDeferredFreePool processes frees queued earlier.
        error.found_in = next((pool.found_in for pool in getattr(getattr(self, "pool", None), "pools", ())
                               if getattr(pool, "found_in", "")), "")
        if isinstance(culprit, str):
            # A driver that has unloaded (its name from the unloaded-drivers list, as
            # !analyze names it for 0xD4): no routine of its own is left to blame.
            error.site = 0
            error.driver_name, error.call_site = culprit, ""
        elif culprit is not None:
            error.site = 0
            error.driver_name = culprit.name
            code = getattr(getattr(culprit.obj, "DriverUnload", None), "__code__", None)
            error.call_site = "" if code is None else \
                f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
            unload_site = getattr(culprit.obj, "unload_site", None)  # a compiled driver's
            if callable(unload_site):
                error.call_site = unload_site()
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

    @allowed_when_halted
    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes at virtual ``address``; an unmapped page is bug check 0x50."""
        try:  # free in the common case; an argument of the wrong type is named the slow way
            offset = address & 0xFFF
            if 0 <= size and offset + size <= PAGE_SIZE:
                base = self._tlb.get(address >> PAGE_SHIFT)
                if base is not None:
                    return self._mem[base + offset:base + offset + size]
        except TypeError:
            pass
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
        except TypeError:  # not bytes, or not an int address: named by the slow way
            pass
        self._write_slow(address, data)

    def _publish_writes(self, active: bool) -> None:
        # k.write is the fastest path: it publishes MemoryWritten only while someone listens.
        self._writes_published = active
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
        address, size = _checked_span(address, size, False)
        parts = []
        for va, pa, length in self._pieces(address, size, write=False):
            parts.append(self._mem[pa:pa + length])
        return b"".join(parts)

    def _write_slow(self, address, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        address, size = _checked_span(address, len(data), True)
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
            by_driver = self.call_sites.owner(site) is not None or self.current_driver is not None
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

    def jump_to(self, address: int, args=()) -> int:
        """Call machine code at ``address`` (no Python function is registered there): a
        driver's routine, or a routine pointer it overwrote (a lookaside list's Allocate or
        Free, a dispatch, completion or DPC routine). Code on an executable page runs on the
        native CPU (``native_call``, set when a compiled driver is loaded); anything else is
        what the jump does on x64, decided here whether or not a CPU exists. With no
        compiled driver loaded, the CPU is made on demand (``cpu_maker``): executable pool
        bytes run as they would on x64, and a fault there is the bug check Windows gives.

        x64 refuses a non-canonical target with a general-protection fault at the call:
        0x1E KMODE_EXCEPTION_NOT_HANDLED (0xC0000005, the call, 0, 0xFFFFFFFFFFFFFFFF).
        Otherwise the instruction fetch faults, and MmAccessFault gives its answer with the
        fault status's execute bit (8 on x64, WRK mi/amd64 miamd.h): a present no-execute
        page is 0xFC ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY (address, PTE, 0, 0) at any IRQL;
        a page not present is, at DISPATCH_LEVEL or above, DRIVER_IRQL_NOT_LESS_OR_EQUAL
        (0xD1: address, IRQL, 8, address): the trap's 0xA, which KeBugCheckEx turns into
        0xD1 when the faulting instruction (for a jump, the target itself) is not kernel or
        HAL code (WRK ke/bugcheck.c); below it a paged-out page comes back, a user-mode
        address is the access violation no handler catches, 0x1E (0xC0000005, address, 8,
        address), and any other address 0x50 PAGE_FAULT_IN_NONPAGED_AREA (address, 8,
        address, 0). Executable memory when no CPU can be made is ``ExecutionError``.
        """
        try:
            noncanonical = canonical(address) != address
        except TypeError:
            _checked_address(address)
            raise
        site = self.call_sites.site_of_caller()
        caller = self.call_sites.describe(site)
        if noncanonical:
            self.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, NtStatus.STATUS_ACCESS_VIOLATION,
                              self.call_sites.table[site].address, 0, 0xFFFFFFFFFFFFFFFF,
                              detail=f"call to the non-canonical address {address:#x} (an "
                                     f"overwritten routine pointer): general protection fault, "
                                     f"from {caller}")
        pte = self.space.pte(address)
        if not pte & PTE_PRESENT and self.hooks.listening(PageFault) and \
                self.hooks.ask(PageFault(address, False)) is not None:  # special pool's pages
            pte = self.space.pte(address)
        if not pte & PTE_PRESENT:
            irql = self.irql_by_processor[self.current_processor]
            if irql >= DISPATCH_LEVEL:
                self.KeBugCheckEx(BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL, address, irql,
                                  EXECUTE_FAULT, address,
                                  detail=f"execution of {address:#x} (not resident) at IRQL "
                                         f"{irql}: an overwritten routine pointer, called from {caller}")
            if self.pager.is_paged_out(address):
                self.pager.page_in(address)
                pte = self.space.pte(address)
            elif address < SYSTEM_RANGE_START:
                self.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED,
                                  NtStatus.STATUS_ACCESS_VIOLATION, address, EXECUTE_FAULT, address,
                                  detail=f"execution of the user-mode address {address:#x} (an "
                                         f"overwritten routine pointer), called from {caller}")
            else:
                self.KeBugCheckEx(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA, address, EXECUTE_FAULT,
                                  address, 0,
                                  detail=f"execution of unmapped address {address:#x} (an "
                                         f"overwritten routine pointer), called from {caller}")
        if pte & PTE_NX:
            self.KeBugCheckEx(BugCheckCode.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY, address, pte, 0, 0,
                              detail=f"execution of no-execute memory {address:#x} (an "
                                     f"overwritten routine pointer), called from {caller}")
        if self.native_call is None and Kernel.cpu_maker is not None:
            Kernel.cpu_maker(self)  # executable pool, say, with no compiled driver loaded
        if self.native_call is None:
            raise ExecutionError(f"{caller} called {address:#x}, executable memory that holds "
                                 f"no routine of this machine: running it needs a CPU, and "
                                 f"none can be made here (ntpool.native, with unicorn)")
        return self.native_call(address, args)

    def _pool_access_fault(self, address: int, write: bool, lock_irql: int) -> int:
        """An access the pool code itself makes (following a link or a header's sizes) that
        finds no mapping: what Windows 7 raises there (README, "When the pool is corrupted").
        Both designs use it: Windows 7's descriptors and the segment heap (``pool.fault``).

        The pool code runs at ``lock_irql`` or the caller's IRQL, whichever is higher. A
        non-canonical address is a general-protection fault no handler catches: 0x1E
        (0xC0000005, instruction, 0, -1). A paged-out page comes back below DISPATCH_LEVEL;
        otherwise the fault is 0xC5 DRIVER_CORRUPTED_EXPOOL at DISPATCH_LEVEL or above
        (address, IRQL, 0 read / 1 write, instruction) and 0x50 PAGE_FAULT_IN_NONPAGED_AREA
        below it (address, 0 read / 1 write, instruction, 0), or for a user-mode address the
        access violation no handler catches, 0x1E (0xC0000005, instruction, 0 / 1, address).
        ntpool has no ntoskrnl code addresses: the instruction given is the driver's call
        into the pool.
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
        if address < SYSTEM_RANGE_START:
            # MmAccessFault raises 0x50 for system addresses only: a user-mode one (a link
            # zeroed to NULL + 8, most often) is an access violation no handler catches.
            self.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, NtStatus.STATUS_ACCESS_VIOLATION,
                              instruction, int(write), address,
                              detail=f"the pool's {access} user-mode address {address:#x} (a "
                                     f"corrupted pool link), from {self.call_sites.describe(site)}")
        self.KeBugCheckEx(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA, address, int(write), instruction, 0,
                          detail=f"the pool's {access} unmapped address {address:#x} (a corrupted "
                                 f"pool link), from {self.call_sites.describe(site)}")

    def record_corrupting_writes(self, enabled: bool = True) -> None:
        """Record the first write that crosses into another chunk's header or into freed
        memory (driver, line, address, bytes): a bug check's detail and ``!analyze -v``
        then name it. Off by default; see ntpool.pool.culprit for what it costs."""
        from .pool.culprit import CulpritRecorder

        recorder = getattr(self, "culprit_recorder", None)
        if enabled and recorder is None:
            if not hasattr(self.nonpaged_pool, "lookaside_chunks"):
                raise NotImplementedError("recording corrupting writes needs the Windows 7 pool")
            self.culprit_recorder = CulpritRecorder(self)
            self.culprit_recorder.start()
            self.hooks.subscribe(BugCheckRaised, self._name_the_culprit)
        elif not enabled and recorder is not None:
            recorder.stop()
            self.hooks.unsubscribe(BugCheckRaised, self._name_the_culprit)
            self.culprit_recorder = None

    def _name_the_culprit(self, event) -> None:
        first = self.culprit_recorder.first if self.culprit_recorder is not None else None
        if first is not None:
            event.bugcheck.corrupted_by = first
            event.bugcheck.detail = f"{event.bugcheck.detail} ({first.text()})".lstrip()

    # --- pool tracking -------------------------------------------------------------------

    @allowed_when_halted
    def pool_tags(self) -> list[PoolTagInfo]:
        """SYSTEM_POOLTAG rows (as ZwQuerySystemInformation(SystemPoolTagInformation) gives)."""
        return self.pool.tracker.snapshot()

    @allowed_when_halted
    def pool_in_use(self) -> dict[str, int]:
        """Pages each pool holds and physical frames in use."""
        return {"NonPagedPool": self.nonpaged_pool.pages_in_use,
                "PagedPool": self.paged_pool.pages_in_use,
                "frames": self.physical.frames_used}

    @allowed_when_halted
    def write_dump(self, path, kind: str = "full", symbols: bool = True, truth=None) -> str:
        """Write this machine's crash dump to ``path`` ('full' or 'kernel'); works when halted.

        The symbol file volatility3 needs goes in a ``symbols`` folder beside it (``symbols``);
        ``truth=FILE.json`` also writes the manifest of every chunk (``ntpool.forensics``).
        The dump layer (``ntpool.dump``) attaches the writer to every machine."""
        for name, value in (("path", path), ("truth", truth)):
            if not isinstance(value, (str, bytes, os.PathLike)) and (value is not None or name == "path"):
                raise TypeError(f"{name} must be a file name (str or os.PathLike), not "
                                f"{type(value).__name__}: {shown_argument(value)}")
        if self.dump_writer is None:
            raise RuntimeError("no dump writer is attached (import ntpool.dump)")
        return self.dump_writer(self, path, kind, symbols, truth)


def _checked_address(address, name: str = "address") -> int:
    """A virtual address argument: an int (TypeError naming what it got), 64 bits (ValueError)."""
    if isinstance(address, bool) or not isinstance(address, int):
        raise TypeError(f"{name} must be an int (a virtual address), not "
                        f"{type(address).__name__}: {shown_argument(address)}")
    if not 0 <= address < 1 << 64:
        raise ValueError(f"{name} must be a 64-bit virtual address, got {address!r}")
    return address


def _checked_span(address, size, write: bool) -> tuple[int, int]:
    if isinstance(address, bool) or not isinstance(address, int):
        _checked_address(address)  # the TypeError
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int (a number of bytes), not {type(size).__name__}: "
                        f"{shown_argument(size)}")
    if size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    if not 0 <= address < 1 << 64:
        raise AddressRangeError(f"address must be a 64-bit virtual address, got {address!r}",
                                address, size, write)
    if address + size > 1 << 64:
        raise AddressRangeError(f"{size} bytes at {address:#x} run past the end of the address "
                                f"space", address, size, write)
    return address, size


# --- the halted machine ----------------------------------------------------------------------

_halted_classes: dict[type, type] = {}


def _refused_when_halted(cls: type) -> frozenset:
    """The methods a halted machine refuses: every public one not marked allowed_when_halted
    (data and properties stay readable: looking, not doing)."""
    refused = set()
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(cls, name)
        if isinstance(attribute, (staticmethod, classmethod)):
            attribute = attribute.__func__
        if inspect.isfunction(attribute) and not getattr(attribute, ALLOWED_WHEN_HALTED, False):
            refused.add(name)
    return frozenset(refused)


def _halted_class(cls: type) -> type:
    if getattr(cls, "_is_halted_twin", False):
        return cls
    twin = _halted_classes.get(cls)
    if twin is None:
        refused = _refused_when_halted(cls)

        def __getattribute__(self, name):
            if name in refused:
                check = object.__getattribute__(self, "bugcheck")
                raise MachineHalted(
                    f"the machine is halted by bug check {check.code:#x} ({check.name}); "
                    f"{name} cannot run on a halted machine (create a new Kernel)")
            return object.__getattribute__(self, name)

        twin = type(f"Halted{cls.__name__}", (cls,),
                    {"__getattribute__": __getattribute__, "_is_halted_twin": True})
        _halted_classes[cls] = twin
    return twin


registry.surface_complete()  # every routine family is imported above
