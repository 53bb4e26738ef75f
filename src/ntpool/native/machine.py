"""Compiled drivers in the machine: loading a .sys, binding its imports, calling its code.

``load_native_driver(k, path_or_bytes)`` returns a ``NativeDriver``: an object with
``DriverEntry(k, RegistryPath)`` and ``DriverUnload(k)`` like a Python driver's, so
``k.load_driver`` / ``k.unload_driver``, Driver Verifier, scenarios and the command line
treat it exactly as they treat Python drivers; its image is mapped in the machine, and its
KLDR_DATA_TABLE_ENTRY gives its real base, entry point and SizeOfImage.

There is one ``NativeMachine`` per Kernel (``native_machine(k)``), made when the first
image is loaded: the CPU, the import stubs (one per routine, shared by every driver), and
the runner that calls native code and turns what stops it into ntpool's answers.
"""

import os
import struct

from ..packing import x64_struct
from ..constants import DISPATCH_LEVEL, PAGE_SIZE, SYSTEM_RANGE_START, BugCheckCode
from ..errors import BugCheck, MachineHung, NtStatusError
from ..hooks import DriverUnloaded, FramesAliased, MappingChanged, MemoryWritten, PageFault
from ..routines.ke_sync import WaitForever
from unicorn import UcError
from unicorn.unicorn_const import UC_ERR_INSN_INVALID

from . import cpu as cpu_module
from . import msvc
from . import faults, refusals, seh
from .bindings import STRAY_SYSCALL, Bindings, StraySyscall, UnimplementedRoutine
from .cpu import Cpu
from .loader import IMAGE_ALIGNMENT, NATIVE_IMAGE_BASE, MissingImports, map_image, unmap_image
from .pe import BadImage, parse_image
from .symbols import Symbols

_Q = x64_struct("<Q")


class NativeError(RuntimeError):
    """Native code did something ntpool cannot model (the message names it and where)."""


# The DPC watchdog's bug check is Windows 8's (build 9200) and later's.
DPC_WATCHDOG_FIRST_BUILD = 9200
DPC_WATCHDOG_PERIOD_TICKS = 0x1E00
RFLAGS_IF = 0x200
# Calls from ntpool into native code nested inside native code's calls into ntpool. The
# host's C stack bounds them (each is a nested uc_emu_start; the process died at 65), well
# before a real driver's (a few levels: a lookaside list's Free routine, a completion routine).
MAX_NESTED_CALLS = 32


class NativeDriver:
    """A .sys, presented to the machine as a driver object.

    Made from a path or the file's bytes, it is mapped into a machine by ``prepare(k)``
    (``k.load_driver`` calls it before it writes the KLDR entry), so a scenario can list
    ``NativeDriver("my.sys")`` in DRIVERS like any Python driver.
    """

    native = True

    def __init__(self, source, name: str | None = None, allow_missing: bool = False):
        if isinstance(source, (bytes, bytearray)):
            self.data = bytes(source)
            self.path = None
            self.name = name or "driver.sys"
        else:
            self.path = os.path.abspath(os.fspath(source))
            self.data = None
            self.name = name or os.path.basename(self.path)
        self.allow_missing = allow_missing
        self.machine = None
        self.image = self.mapped = self.symbols = None
        self.image_base = self.image_size = self.entry_point = None
        self.driver_object = 0
        self.wdm = None  # the I/O manager's record of its DRIVER_OBJECT
        self.unload_address = 0
        self.loaded = None  # the LoadedDriver the kernel keeps
        self.entry_status = None

    def prepare(self, k) -> None:
        """Map the image into ``k`` (BadImage, MissingImports: nothing is mapped)."""
        if self.machine is not None:
            if self.machine.kernel is not k:
                raise ValueError(f"{self.name} is already mapped in another machine")
            if self in self.machine.images:
                return
            # Unloaded before, its image unmapped: a new load maps it afresh, as Windows does.
        data = self.data
        if data is None:
            try:
                with open(self.path, "rb") as handle:
                    data = handle.read()
            except OSError as error:
                raise BadImage(f"{self.path}: cannot read ({error.strerror or error})") from None
        machine = native_machine(k)
        image, mapped = machine.map(data, self.name, self.allow_missing)
        self.machine, self.image, self.mapped = machine, image, mapped
        directory = os.path.dirname(self.path) if self.path else None
        self.symbols = Symbols.for_image(image, directory)
        self.image_base = mapped.base
        self.image_size = mapped.size
        self.entry_point = mapped.base + image.entry_rva
        machine.images.append(self)

    # The two entry points the machine calls.
    def DriverEntry(self, k, RegistryPath):
        """What IopLoadDriver does: the /GS cookie (msvc), a DRIVER_OBJECT and RegistryPath
        from the I/O manager, the image's entry point in a system thread; then the INIT
        sections are freed and the PAGE sections become pageable."""
        msvc.initialize_security_cookie(k, self.image, self.image_base)
        loaded = self.loaded or k.current_driver
        self.wdm = k.create_driver_object(self.name, self.image_base, self.image_size,
                                          loaded.entry_va if loaded else 0,
                                          self.entry_point, loaded, registry_path=RegistryPath)
        self.driver_object = self.wdm.driver_object
        try:
            status = self.machine.call(self.entry_point,
                                       (self.driver_object, self.wdm.registry_path), self,
                                       thread="system") & 0xFFFFFFFF
        finally:
            if not k.halted:
                k.driver_entry_returned(self.wdm)
        self.entry_status = status
        if status & 0x80000000:
            k.delete_driver_object(self.wdm)  # failed: no DriverUnload, the object goes
            self.driver_object = 0
            return status
        msvc.discard_init_sections(k, self.image, self.mapped)
        k.pageable_image_pages.update(msvc.pageable_pages(self.image, self.image_base))
        return status

    def open(self, name: str | None = None):
        """Open the driver's first device (or the device or link ``name``): a FileHandle
        for device_control, read, write, request and close (ntpool.routines.io)."""
        k = self.machine.kernel
        if name is None:
            devices = k.devices_of(self.driver_object) if self.driver_object else []
            named = [d for d in reversed(devices) if k.object_name(d)]  # first created first
            if not named:
                raise ValueError(f"{self.name} has no named device to open")
            name = k.object_name(named[0])
        return k.open(name)

    def DriverUnload(self, k):
        if not self.driver_object:
            return
        unload = k.driver_unload_routine(self.wdm)
        self.unload_address = unload
        if unload:
            self.machine.call(unload, (self.driver_object,), self, thread="system")
        k.delete_driver_object(self.wdm)
        self.driver_object = 0

    def unload_site(self) -> str:
        """Where the unload routine is (what 0xC4/0x62 blames), with its symbol and line."""
        return self.describe(self.unload_address) if self.unload_address else ""

    def address_of(self, name: str) -> int:
        """The address of an exported function (for scenarios that call a driver's routines)."""
        rva = self.image.exports.get(name)
        if rva is None:
            raise KeyError(f"{self.name} exports no routine named {name!r} "
                           f"(exports: {', '.join(sorted(self.image.exports)) or 'none'})")
        return self.image_base + rva

    def call(self, routine, *args) -> int:
        """Call an exported routine (by name or address) with integer arguments."""
        address = self.address_of(routine) if isinstance(routine, str) else routine
        result = self.machine.call(address, args, self)
        if self.machine.cpu.depth == 0:
            self.machine.kernel.return_to_kernel()  # a top-level call returned: work items run
        return result

    def describe(self, address: int) -> str:
        """"driver.sys+0xOFFSET", with the function and line when symbols say."""
        return self.symbols.describe(address - self.image_base)

    def __repr__(self) -> str:
        return f"<native driver {self.name} at {self.image_base:#x}>"


class NativeMachine:
    def __init__(self, kernel):
        self.kernel = kernel
        self.mem = kernel.physical.buffer
        self._map_support_pages()
        self.bindings = Bindings(self)
        self.cpu = Cpu(self)
        # Code nothing rewrites whose mov crN are hooked already: the stubs, then each
        # image's read-only code. The CPU scans every other block it runs.
        stubs = cpu_module.STUB_CODE
        self.fixed_code = [(stubs, stubs + cpu_module.STUB_CODE_PAGES * PAGE_SIZE)]
        self.cpu.scan_blocks(self.fixed_code)
        self.images: list[NativeDriver] = []
        self.next_base = NATIVE_IMAGE_BASE
        self.call_rsp = 0
        # Seconds a call from ntpool into native code may run before it is stopped as a hang.
        self.call_timeout = 60.0
        self.site_cache: dict[int, int] = {}  # faulting instruction -> call-site number
        self.call_site_cache: dict[int, int] = {}  # return address -> call-site number
        self.call_number = 0  # the stub number of the routine called last
        self.tlb = kernel.space.tlb
        self.running: list[NativeDriver] = []  # the driver whose code each nested call runs
        self.location = 0  # the code address ntpool is answering for (call return or fault)
        kernel.hooks.subscribe(MappingChanged, self._pte_changed)
        # A second, writable mapping of frames an image's read-only code lies on (an MDL's
        # system mapping, MmMapIoSpace): a store there rewrites that code with WP on.
        kernel.hooks.subscribe(FramesAliased, self._frames_aliased)
        self._fixed_code_pages: dict[int, int] = {}  # frame -> its image's fixed code page
        # However a compiled driver leaves (k.unload_driver, a failed DriverEntry), its
        # image goes with it, as Windows unmaps it: a later touch there faults.
        kernel.hooks.subscribe(DriverUnloaded, self._driver_unloaded)
        # A routine's own access to an unmapped user-mode address, made for native code,
        # is an exception raised to the driver's frames (see routine_fault).
        self.resolving_cpu_fault = False
        kernel.hooks.subscribe(PageFault, self.routine_fault)
        # Stores by native code are published while a layer listens for writes (the
        # uninitialized-memory checker); otherwise no memory hook exists.
        kernel.hooks.watch(MemoryWritten, self.cpu.publish_writes)
        self.cpu.publish_writes(bool(kernel.hooks.listening(MemoryWritten)))
        kernel.call_sites.native_resolver = self.current_site
        # The I/O manager calls driver code (dispatch, completion routines) through these.
        kernel.native_call = lambda address, args: self.call(address, args)
        kernel.system_routine_resolver = self.system_routine
        self._kpcrs = [self._make_kpcr(n) for n in range(kernel.processors)]
        self._synced_thread = None  # (processor, EPROCESS) last written to its KTHREAD
        self._frame_pages: dict | None = None  # physical page -> the virtual pages mapping it

    # --- memory the machine's own native parts use ---------------------------------------------

    def _map_support_pages(self) -> None:
        kernel = self.kernel
        physical, space = kernel.physical, kernel.space

        def fresh(va, writable, executable):
            pfn = physical.allocate_frame()
            physical.zero_frame(pfn)
            space.map_page(va, pfn, writable=writable, executable=executable)
            return pfn

        for index in range(cpu_module.STUB_DATA_PAGES):
            fresh(cpu_module.STUB_BASE + index * PAGE_SIZE, True, False)
        for index in range(cpu_module.STUB_CODE_PAGES):
            fresh(cpu_module.STUB_CODE + index * PAGE_SIZE, False, True)
        kernel.write(cpu_module.STUB_CODE, b"\xF4" * cpu_module.STUB_SIZE)  # hlt: never run
        top = cpu_module.KERNEL_STACK_TOP
        for va in range(top - cpu_module.KERNEL_STACK_SIZE, top, PAGE_SIZE):
            fresh(va, True, False)
        self.call_block_pa = kernel.space.translate(cpu_module.CALL_BLOCK)
        self.return_pa = kernel.space.translate(cpu_module.RETURN_SLOT)

    def write_code(self, va: int, code: bytes) -> None:
        pa = self.kernel.space.translate(va)
        self.mem[pa:pa + len(code)] = code

    def _make_kpcr(self, number: int) -> int:
        kernel = self.kernel
        kpcr = kernel.kernel_data.reserve(cpu_module.KPCR_SIZE, align=PAGE_SIZE)
        thread = kernel.kernel_data.reserve(cpu_module.KTHREAD_SIZE, align=16)
        kernel.write(kpcr + cpu_module.KPCR_SELF, _Q.pack(kpcr))
        kernel.write(kpcr + cpu_module.KPCR_CURRENT_PRCB, _Q.pack(kpcr + cpu_module.KPCR_PRCB))
        prcb = kpcr + cpu_module.KPCR_PRCB
        kernel.write(prcb + cpu_module.KPRCB_CURRENT_THREAD, _Q.pack(thread))
        kernel.write(prcb + cpu_module.KPRCB_NUMBER, struct.pack("<H", number))
        return kpcr

    def _pte_changed(self, event: MappingChanged) -> None:
        self.cpu.tlb_stale = True
        self._frame_pages = None

    def native_store(self, pa: int, size: int) -> None:
        """Publish a store by native code as MemoryWritten at every virtual address that maps
        it (called by the CPU's write hook, which exists only while someone listens).

        unicorn's memory hooks give the physical address of a store made through the page
        tables, so the frame is looked up in a reverse of the machine's translations, built
        when first needed and dropped whenever a mapping changes (a frame mapped afresh
        without an announcement is not in it yet: the reverse is then rebuilt)."""
        while size > 0:
            page, offset = pa & ~(PAGE_SIZE - 1), pa & (PAGE_SIZE - 1)
            part = min(size, PAGE_SIZE - offset)
            reverse = self._frame_pages
            pages = None if reverse is None else reverse.get(page)
            if pages is None:
                reverse = self._frame_pages = {}
                for vpn, base in self.tlb.items():
                    reverse.setdefault(base, []).append(vpn << 12)
                pages = reverse.get(page, ())
            listeners = self.kernel.hooks.listening(MemoryWritten)
            for va_page in pages:
                event = MemoryWritten(va_page | offset, part)
                for listener in listeners:
                    listener(event)
            pa, size = pa + part, size - part

    def routine_fault(self, event: PageFault):
        """While native code waits on a routine (a call through its import stub), the
        routine's access to a user-mode address that nothing maps, below DISPATCH_LEVEL, is
        what it is on Windows: an access violation raised in the routine and dispatched
        through the caller's frames (its ``__try`` may catch it; unhandled, 0x7E in
        DriverEntry, 0x1E or 0x3B otherwise), not a bug check made on the spot. The CPU's
        own faults are handled in ``faults`` (``resolving_cpu_fault``)."""
        if self.resolving_cpu_fault or not self.cpu.depth or event.address >= SYSTEM_RANGE_START:
            return None
        kernel = self.kernel
        if kernel.current_irql >= DISPATCH_LEVEL or kernel.pager.is_paged_out(event.address):
            return None  # 0xD1, or a page-in: the kernel's own answers
        raise faults.RoutineAccessViolation(event.write, event.address)

    # --- loading -------------------------------------------------------------------------------

    def map(self, data: bytes, name: str, allow_missing: bool = False):
        image = parse_image(data, name)
        missing = self.bindings.missing(image)
        if missing and not allow_missing:
            raise MissingImports(name, missing)
        self.bindings.check_room(image)
        base = self.next_base
        mapped = map_image(self.kernel, image, base, self.bindings.resolve)
        self.next_base = (base + image.size_of_image + IMAGE_ALIGNMENT) & ~(IMAGE_ALIGNMENT - 1)
        for address in mapped.cr8_sites:
            self.cpu.hook_cr8(address)
        for address in mapped.cr_write_sites:
            self.cpu.hook_cr_write(address)
        self.fixed_code += mapped.fixed_code
        for start, end in mapped.fixed_code:
            for va in range(start, end, PAGE_SIZE):
                self._fixed_code_pages[mapped.frames[(va - mapped.base) >> 12]] = va
        # Its frames may be mapped elsewhere already (MmMapIoSpace of free memory, before).
        self._unfix_aliased_code(self._system_pte_frames(), [mapped], rescan=False)
        self.cpu.scan_blocks(self.fixed_code)
        return image, mapped

    # --- code rewritten through another mapping ------------------------------------------------

    def _frames_aliased(self, event: FramesAliased) -> None:
        self._unfix_aliased_code(set(event.frames))

    def _system_pte_frames(self) -> set:
        """The frames the system PTEs map now (MDL mappings, I/O space, noncached memory)."""
        tlb = self.tlb
        frames = set()
        for base, pages in self.kernel._system_ptes.items():
            for page in range(pages):
                pa = tlb.get((base >> 12) + page)
                if pa is not None:
                    frames.add(pa >> 12)
        return frames

    def _unfix_aliased_code(self, frames: set, images=None, rescan: bool = True) -> None:
        """Code pages scanned once at load (an image's read-only code, in ``fixed_code``)
        that lie on one of ``frames``, now mapped at a second, writable address, leave the
        fixed code: a store through the alias counts as a write of the code, so from now on
        their blocks are scanned as they run, as any code that can be rewritten (each block
        compared with its bytes when last scanned; translated code on them dropped).
        ``images``: look only at these (a MappedImage list), else every loaded image's
        fixed code pages, found by frame (``_fixed_code_pages``)."""
        if images is not None:
            pages = [mapped.base + (index << 12) for mapped in images
                     for index, pfn in enumerate(mapped.frames) if pfn in frames]
        else:
            code_pages = self._fixed_code_pages
            pages = [code_pages[pfn] for pfn in frames if pfn in code_pages]
        pages = [va for va in pages if any(start <= va < end for start, end in self.fixed_code)]
        for pfn in [pfn for pfn, va in self._fixed_code_pages.items() if va in pages]:
            del self._fixed_code_pages[pfn]
        if not pages:
            return
        for va in pages:
            fixed = []
            for start, end in self.fixed_code:
                if start <= va < end:
                    fixed += [(a, b) for a, b in ((start, va), (va + PAGE_SIZE, end)) if a < b]
                else:
                    fixed.append((start, end))
            self.fixed_code = fixed
        if rescan:
            self.cpu.scan_blocks(self.fixed_code)
            for va in pages:
                self.cpu.forget_code(va, va + PAGE_SIZE)

    def _driver_unloaded(self, event: DriverUnloaded) -> None:
        for driver in self.images:
            if driver.loaded is event.driver:
                self.unload_image(driver)
                return

    def unload_image(self, driver: NativeDriver) -> None:
        for index, pfn in enumerate(driver.mapped.frames):
            if self._fixed_code_pages.get(pfn) == driver.mapped.base + (index << 12):
                del self._fixed_code_pages[pfn]
        if driver.mapped.frames:
            self.cpu.forget_code(driver.mapped.base, driver.mapped.end)
            unmap_image(self.kernel, driver.mapped)
            self.cpu.tlb_stale = True
        if driver in self.images:
            self.images.remove(driver)

    def driver_at(self, address: int) -> NativeDriver | None:
        for driver in self.images:
            if driver.mapped.contains(address):
                return driver
        return None

    def describe(self, address: int) -> str:
        driver = self.driver_at(address)
        if driver is not None:
            return driver.describe(address)
        number = (address - cpu_module.FIRST_STUB) // cpu_module.STUB_SIZE
        if address >= cpu_module.FIRST_STUB and number < len(self.bindings.names):
            # Inside an import's stub: name the routine (the driver's call is the caller).
            return f"{address:#x} (the import stub of {self.bindings.names[number]})"
        return f"{address:#x}"

    # --- what native code asks the kernel for ----------------------------------------------

    def system_routine(self, name: str) -> int:
        """MmGetSystemRoutineAddress for native code: the routine's stub, or its data."""
        bindings = self.bindings
        for module in ("ntoskrnl.exe", "HAL.dll"):
            if bindings.implemented(module, name):
                return bindings.data_address(name) if name in bindings.data else bindings.stub(name)
        return 0

    # --- calls from ntpool into native code ----------------------------------------------------

    def call(self, address: int, args=(), driver: NativeDriver | None = None,
             thread: str | None = None) -> int:
        """Run native code at ``address`` with integer ``args`` (x64 convention); its rax.

        ``thread`` says what Windows would call an unhandled exception in it: "system"
        (a system thread: DriverEntry, DriverUnload) is 0x7E, "service" (a request from user
        mode) is 0x3B, anything else 0x1E.
        """
        kernel = self.kernel
        cpu = self.cpu
        driver = driver or self.driver_at(address)
        nested = cpu.depth > 0
        if cpu.depth >= MAX_NESTED_CALLS:
            # Native code and ntpool calling each other without end (a lookaside Free
            # routine that deletes its own list...): on Windows the kernel stack runs out
            # first; here the host's C stack would, each nested run being unicorn's own.
            self.location = cpu.rip_register.read()[0]
            kernel.KeBugCheckEx(BugCheckCode.UNEXPECTED_KERNEL_MODE_TRAP, 8, 0, 0, 0,
                                detail=f"kernel stack overflow: more than {MAX_NESTED_CALLS} "
                                       f"calls nested between ntpool and native code, the "
                                       f"last into {self.describe(address)}")
        saved = cpu.uc.context_save() if nested else None
        outer_rsp = cpu.stack_register.read()[0] if nested else cpu_module.KERNEL_STACK_TOP
        args = [int(a) & 0xFFFFFFFFFFFFFFFF for a in args]
        rsp = (outer_rsp - 0x100 - 8 * max(0, len(args) - 4)) & ~0xF
        rsp -= 8  # the return address: at a function's entry rsp is 8 modulo 16
        if nested and not seh.stack_limits()[0] <= rsp < outer_rsp <= seh.stack_limits()[1]:
            # The frame for a filter, a __finally or a callback cannot be pushed where the
            # driver's rsp points (off the kernel stack, or at its end): on Windows that push
            # faults again and the fault becomes a double fault.
            self.location = self.cpu.rip_register.read()[0]
            kernel.KeBugCheckEx(BugCheckCode.UNEXPECTED_KERNEL_MODE_TRAP, 8, 0, 0, 0,
                                detail=f"a call into native code at {self.describe(address)} "
                                       f"cannot push its frame: rsp {outer_rsp:#x} is not on "
                                       f"the kernel stack (a double fault)")
        kernel.write(rsp, _Q.pack(cpu_module.RETURN_TRAP))
        for index, value in enumerate(args[4:]):
            kernel.write(rsp + 0x28 + 8 * index, _Q.pack(value))
        # Only what a call defines is written (arguments, stack, entry): the callee owes the
        # other registers nothing, and a nested call's caller gets its own back from `saved`.
        registers = args[:4] + [0] * (4 - min(4, len(args)))
        cpu.call_registers.write(registers + [rsp, address, 0x202])
        cpu.set_gs_base(self._kpcrs[kernel.current_processor])
        self._sync_thread()
        cpu.depth += 1
        self.running.append(driver)
        saved_location, self.location = self.location, 0  # its calls are sites of their own
        saved_rsp = self.call_rsp
        previous_driver = kernel.current_driver
        if driver is not None and driver.loaded is not None:
            kernel.current_driver = driver.loaded
        try:
            self._run(address, thread)
            return cpu.result_registers.read()[0]
        finally:
            self.location, self.call_rsp = saved_location, saved_rsp
            kernel.current_driver = previous_driver
            self.running.pop()
            cpu.depth -= 1
            if saved is not None:
                cpu.uc.context_restore(saved)

    def _sync_thread(self) -> None:
        """The current thread's ApcState.Process is the current process (written when either
        changed since the last call)."""
        kernel = self.kernel
        current = (kernel.current_processor, kernel.current_process.address)
        if current == self._synced_thread:
            return
        kpcr = self._kpcrs[current[0]]
        thread = _Q.unpack(kernel.read(kpcr + cpu_module.KPCR_PRCB + cpu_module.KPRCB_CURRENT_THREAD, 8))[0]
        kernel.write(thread + cpu_module.KTHREAD_APC_STATE_PROCESS, _Q.pack(current[1]))
        self._synced_thread = current

    def _run(self, rip: int, thread: str | None) -> None:
        cpu = self.cpu
        # Only the outermost call is timed: the watchdog stops whatever runs past its deadline.
        timed = cpu.depth == 1 and self.call_timeout
        if cpu.depth == 1:
            cpu.timed_out = False  # an earlier call's deadline is not this one's
        if timed:
            cpu_module.WATCHDOG.arm(cpu, self.call_timeout)
        relayed = cpu_module.INTERRUPTS.enter(cpu) if cpu.depth == 1 else None
        try:
            self._run_until_return(rip, thread)
        finally:
            if timed:
                cpu_module.WATCHDOG.disarm(cpu)
            if cpu.depth == 1:
                cpu_module.INTERRUPTS.leave(cpu, relayed)

    def _run_until_return(self, rip: int, thread: str | None) -> None:
        cpu = self.cpu
        while True:
            if cpu.timed_out:
                self._hung(rip)
            stop = cpu.start(rip)
            if stop is None:
                return
            kind, detail = stop
            if kind == "timeout":
                self._hung(cpu.read_context()["rip"])
            if kind == "halt":
                # hlt waits for an interrupt: the next clock tick wakes the processor and it
                # goes on past the hlt. With interrupts off (IF clear) none ever comes.
                if not cpu.read_context()["rflags"] & RFLAGS_IF:
                    raise NativeError(f"hlt with interrupts disabled at {self.describe(detail - 1)}: "
                                      f"the processor never wakes (a hang)")
                rip = detail
                continue
            if kind == "error":
                if isinstance(detail, StraySyscall):
                    rip = self._stray_syscall(detail.address, thread)
                    continue
                if isinstance(detail, NtStatusError):
                    # Raised by a routine: dispatched from the driver's call site.
                    rip = refusals.raise_in_caller(self, detail.status,
                                                   getattr(detail, "parameters", ()), thread)
                    continue
                if isinstance(detail, (BugCheck, UnimplementedRoutine, NativeError)) or \
                        not isinstance(detail, Exception):
                    # A bug check, ntpool's own answers, and what is no error of the call
                    # (KeyboardInterrupt, SystemExit: Ctrl-C during a routine) go on as they are.
                    raise detail
                # The routine refused what native code passed it: Windows' answer, if any.
                rip = refusals.answer(self, self.bindings.names[self.call_number], detail, thread)
                if rip is not None:
                    continue
                raise self._call_error(detail) from detail
            if kind == "interrupt":
                rip = faults.handle(self, detail, thread)
                continue
            if kind == "sysenter":
                rip = self._stray_syscall(detail, thread)
                continue
            if kind == "address-space":
                address, control, value = detail
                self.location = address
                raise NativeError(
                    f"mov cr{control}, {value:#x} at {self.describe(address)}: another page "
                    f"table, where ntpool has one address space (on Windows the processor walks "
                    f"it; unless it maps this code and the interrupt handlers, the next fault "
                    f"triple-faults and resets the machine, with no bug check and no dump)")
            if kind == "unicorn" and detail == UC_ERR_INSN_INVALID:
                # unicorn stops at an opcode it cannot decode (ud2 among them) instead of
                # raising #UD: the fault Windows takes there, STATUS_ILLEGAL_INSTRUCTION.
                rip = faults.handle(self, faults.VECTOR_INVALID_OPCODE, thread)
                continue
            regs = cpu.read_context()
            changed = cpu.control_registers_changed()
            if changed:
                # A driver that rewrote CR0, CR3 or CR4 (paging off, another page table):
                # say so, and give the next call a CPU set up as ntpool sets it.
                cpu.recover(regs, keep_control=False)
                changed = f"; the driver changed {changed}"
            raise NativeError(f"the CPU stopped at {self.describe(regs['rip'])}: unicorn error "
                              f"{detail} ({UcError(detail)}){changed}")

    def _stray_syscall(self, address: int, thread: str | None) -> int:
        """A ``syscall`` outside the import stubs: ring 0 entering the system service
        dispatcher, which is written for entry from user mode only (KiSystemCall64 starts
        with swapgs). What follows on Windows is not documented; ntpool raises the nearest
        defined outcome at the driver's instruction, the invalid-opcode fault (#UD, which
        SYSCALL raises where system calls are not enabled): STATUS_ILLEGAL_INSTRUCTION,
        dispatched through the driver's frames (unhandled: 0x1E, 0x7E or 0x3B naming it).
        SYSENTER is answered the same: in 64-bit mode it is #UD on AMD's processors (AMD64
        APM), and x64 Windows makes no system call through it."""
        regs = self.cpu.read_context()
        regs["rip"] = address
        self.cpu.write_context(regs)
        return faults.handle(self, faults.VECTOR_INVALID_OPCODE, thread)

    def _hung(self, rip: int) -> None:
        """Native code ran past ``call_timeout``. At DISPATCH_LEVEL or above, Windows 8 and
        later stop it with their DPC watchdog: DPC_WATCHDOG_VIOLATION (0x133) with 1 (the
        time spent at DISPATCH_LEVEL or above, cumulatively, passed the watchdog period),
        the period in clock ticks (0x1E00, what their dumps show; ntpool's own limit is
        ``call_timeout``), 0 for the triage block ntpool does not keep. Windows 7 has no such
        watchdog, and at PASSIVE_LEVEL no Windows stops a loop: ntpool does (NativeError)."""
        kernel = self.kernel
        irql = kernel.current_irql
        where = self.describe(rip)
        if irql >= DISPATCH_LEVEL and kernel.windows.build >= DPC_WATCHDOG_FIRST_BUILD:
            self.location = rip
            kernel.KeBugCheckEx(BugCheckCode.DPC_WATCHDOG_VIOLATION, 1, DPC_WATCHDOG_PERIOD_TICKS,
                                0, 0, detail=f"native code ran at IRQL {irql} past the watchdog "
                                             f"({self.call_timeout:g} s in ntpool): stopped at {where}")
        raise NativeError(f"native code did not return within {self.call_timeout:g} s "
                          f"(a hang?): stopped at {where}, IRQL {irql}")

    def _call_error(self, error: BaseException) -> NativeError:
        routine = self.bindings.names[self.call_number]
        where = self.describe(self.return_address())
        if isinstance(error, MachineHung):  # (Windows 8 and later: 0x133, see refusals)
            return NativeError(f"{routine} called from {where} never returns (a hang at "
                               f"DISPATCH_LEVEL; Windows 7 has no DPC watchdog): {error}")
        if isinstance(error, WaitForever):
            return NativeError(f"{routine} called from {where} never returns (a hang no "
                               f"Windows stops at IRQL {self.kernel.current_irql}): {error}")
        return NativeError(f"{routine} called from {where} with arguments ntpool cannot model "
                           f"(README, departures): {type(error).__name__}: {error}")

    # --- calls from native code into ntpool ----------------------------------------------------

    def syscall_hook(self, cpu):
        """The SYSCALL hook: one import call, from the call block to the routine and back.

        This is the crossing every native call pays, so it is one closure with everything
        it touches bound locally (see ``bench``'s native figure)."""
        unpack = cpu_module.CALL_BLOCK_FORMAT.unpack_from
        pack = _Q.pack_into
        mem, block, returned = self.mem, self.call_block_pa, self.return_pa
        handlers = self.bindings.handlers
        stop = cpu_module.uclib.uc_emu_stop
        mask = 0xFFFFFFFFFFFFFFFF
        machine = self

        def on_syscall(uch, user_data):
            try:
                number, rcx, rdx, r8, r9, rsp = unpack(mem, block)
                machine.call_rsp = rsp
                machine.call_number = number
                pack(mem, returned, (handlers[number](rcx, rdx, r8, r9, rsp) or 0) & mask)
            except BaseException as error:  # noqa: BLE001 - carried out of the C callback
                # This call's, not a nested one's (a work item that ran during its wait).
                try:
                    machine.call_number, machine.call_rsp = number, rsp
                except NameError:  # a Ctrl-C before the block was read: the last call's stand
                    pass
                if isinstance(error, IndexError) and machine.call_number >= len(handlers):
                    # A number no stub wrote (native code's own store into the call block,
                    # then a syscall of its own): a stray syscall, as the number 0 is.
                    machine.call_number = STRAY_SYSCALL
                    try:
                        handlers[STRAY_SYSCALL](rcx, rdx, r8, r9, rsp)
                    except BaseException as stray:  # noqa: BLE001
                        error = stray
                cpu.stop = ("error", error)
                stop(uch)
                return
            if cpu.tlb_stale:
                cpu.flush_tlb()

        return on_syscall

    def read_q(self, address: int) -> int:
        return _Q.unpack(self.kernel.read(address, 8))[0]

    def return_address(self) -> int:
        return _Q.unpack(self.kernel.read(self.call_rsp, 8))[0]

    def set_irql_from_cr8(self, irql: int, address: int) -> None:
        self.location = address
        try:
            self.kernel._set_irql(irql)
        finally:
            self.location = 0

    # --- attribution ---------------------------------------------------------------------------

    def current_site(self) -> int:
        """The call-site number of the native code ntpool is answering for right now."""
        if self.location:
            return self.site_for(self.location, call=False)
        rsp = self.call_rsp
        base = self.tlb.get(rsp >> 12)
        if base is None or not self.cpu.depth:
            return 0  # no native code is calling: ntpool's own work (the I/O manager's)
        address = _Q.unpack_from(self.mem, base + (rsp & 0xFFF))[0]
        site = self.call_site_cache.get(address)
        return self.site_for(address, call=True) if site is None else site

    def site_for(self, address: int, call: bool = True) -> int:
        """The site of a call (``address`` is its return address: its line is the call's,
        the byte before) or of an instruction (a fault)."""
        cache = self.call_site_cache if call else self.site_cache
        site = cache.get(address)
        if site is not None:
            return site
        driver = self.driver_at(address)
        if driver is None or driver.loaded is None:
            return 0
        site = self.kernel.call_sites.add_native_site(
            driver.loaded, address, *driver.symbols.site(address - driver.image_base, call))
        cache[address] = site
        return site


def native_machine(kernel) -> NativeMachine:
    machine = kernel.__dict__.get("_native")
    if machine is None:
        machine = NativeMachine(kernel)
        kernel.__dict__["_native"] = machine
    return machine


def load_native_driver(kernel, source, name: str | None = None, allow_missing: bool = False,
                       RegistryPath: str | None = None, call_entry: bool = True) -> NativeDriver:
    """Map a .sys (a path or its bytes) and load it as a driver (DriverEntry is called).

    Returns the NativeDriver; ``driver.loaded`` is the kernel's LoadedDriver. Raises BadImage
    for a malformed file, MissingImports for routines ntpool does not implement, and
    NtStatusError when DriverEntry fails.
    """
    driver = NativeDriver(source, name, allow_missing)
    driver.prepare(kernel)
    if call_entry:
        kernel.load_driver(driver, RegistryPath)
    return driver


def unload_native_driver(kernel, driver: NativeDriver) -> None:
    """Unload the driver (DriverUnload, verifier's checks) and unmap its image: the same as
    ``kernel.unload_driver(driver)``, kept for the callers that name it."""
    kernel.unload_driver(driver)
