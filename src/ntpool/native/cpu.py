"""The x64 CPU that runs compiled drivers: unicorn on ntpool's own memory and page tables.

ntpool's physical memory is one host mmap; ``uc_mem_map_ptr`` hands all of it to unicorn as
the guest's physical memory, with no copy. Paging is on (CR0.PG|PE|WP, CR4.PAE,
EFER.LME|LMA|NXE) and CR3 is ntpool's CR3, so unicorn walks ntpool's real page tables: a
store by machine code is a store into the machine, and the reverse. ntpool tells the CPU
when it unmaps or remaps a page (the ``MappingChanged`` hook), and the CPU flushes its
TLB before it next runs.

Crossings are cheap by design. A call from native code into ntpool goes through a stub that
stores the argument registers into a call block in memory and executes SYSCALL; one SYSCALL
hook (registered with the C library directly, not through the Python binding's wrapper)
reads the block with one ``struct.unpack_from`` and writes the result back the same way:
no register access at all on the normal path, and no per-instruction hook anywhere.

Everything unusual stops the CPU and is handled outside it: a page fault (vector 14, with
CR2) is resolved by ntpool (page-in, special pool) or becomes Windows' bug check; #GP, #UD,
int3 and divide errors become exceptions dispatched through the driver's SEH tables; an
exception a routine raises (ExRaiseStatus, FsRtl's STATUS_INSUFFICIENT_RESOURCES) too.
unicorn never forgets a delivered exception (a second #PF would become #DF), so the CPU
state saved at start-up is restored after each handled fault, with the registers carried
over.

IRQL is CR8. unicorn ignores CR8, so the loader finds each ``mov cr8, reg`` / ``mov reg,
cr8`` (wdm.h inlines them for KeRaiseIrql, KeLowerIrql, KeGetCurrentIrql) and the CPU
hooks exactly those addresses; ``mov cr0/cr3/cr4`` writes likewise. Code the loader did not
scan (anything outside the images' read-only code and ntpool's stubs: executable pool, a
writable code section, code a driver writes at run time) is scanned block by block as the
CPU first runs it (a block hook on those ranges only, so scanned code pays nothing), and
the same hooks go on what it finds before the block runs. GS points at a KPCR whose Prcb.CurrentThread leads to a
KTHREAD whose ApcState.Process is the current process's EPROCESS.
"""

import ctypes
import os
import struct
import threading
import time

import unicorn
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from ..packing import x64_struct
from ..constants import PAGE_SIZE
from .control_registers import CR8_ACCESS, control_register_sites

# Where the machine's own code and data for native drivers live (Windows 7 puts ntoskrnl
# near 0xFFFFF80002800000; ntpool's kernel data starts at 0xFFFFF80002000000).
STUB_BASE = 0xFFFFF80000C00000  # below the I/O manager's stand-in code addresses
STUB_DATA_PAGES = 2  # the call block, exception and context records
STUB_CODE_PAGES = 32
STUB_SIZE = 64
STUB_CODE = STUB_BASE + STUB_DATA_PAGES * PAGE_SIZE
# Where every call from ntpool returns to (unicorn stops there). Not at the start of its
# page: unicorn looks at the byte before the stop address, which must be executable.
RETURN_TRAP = STUB_CODE + 0x20
FIRST_STUB = STUB_CODE + STUB_SIZE
MAX_STUBS = (STUB_CODE_PAGES * PAGE_SIZE) // STUB_SIZE - 1
CALL_BLOCK = STUB_BASE  # routine number, rcx, rdx, r8, r9, rsp, then the return value
CALL_BLOCK_FORMAT = x64_struct("<QQQQQQ")
RETURN_SLOT = CALL_BLOCK + 0x30
EXCEPTION_RECORD_VA = STUB_BASE + 0x100
EXCEPTION_POINTERS_VA = STUB_BASE + 0x200
CONTEXT_VA = STUB_BASE + 0x400  # a CONTEXT is 0x4D0 bytes
DISPATCHER_CONTEXT_VA = STUB_BASE + 0xA00

KERNEL_STACK_TOP = 0xFFFFF88000200000
KERNEL_STACK_SIZE = 0x6000  # KERNEL_STACK_SIZE on x64; the page below is a guard
KPCR_SIZE = 0x5000
KPCR_SELF = 0x18
KPCR_CURRENT_PRCB = 0x20
KPCR_PRCB = 0x180
KPRCB_CURRENT_THREAD = 0x08
KPRCB_NUMBER = 0x24
KTHREAD_SIZE = 0x400
KTHREAD_APC_STATE_PROCESS = 0x70

CR0_PE, CR0_ET, CR0_WP, CR0_NW, CR0_CD, CR0_PG = 1, 1 << 4, 1 << 16, 1 << 29, 1 << 30, 1 << 31
CR4_PAE, CR4_OSFXSR = 1 << 5, 1 << 9
# ET reads as 1 on every x64 processor (and unicorn sets it on any mov to CR0): a driver that
# writes back the CR0 it read has changed nothing.
CR0_INITIAL = CR0_PE | CR0_ET | CR0_WP | CR0_PG
CR4_INITIAL = CR4_PAE | CR4_OSFXSR
MASK64 = 0xFFFFFFFFFFFFFFFF
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
MSR_EFER = 0xC0000080
VECTOR_GENERAL_PROTECTION = 13

# The registers a CONTEXT carries, in one batch.
GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CONTEXT_REGS = GPRS + ("rip", "rflags")
_REG_IDS = {name: getattr(X, "UC_X86_REG_" + name.upper()) for name in CONTEXT_REGS}
_REG_IDS["rflags"] = X.UC_X86_REG_EFLAGS

_SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
_MEM_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                           ctypes.c_int64, ctypes.c_void_p)


def stub_code(number: int, stub_va: int) -> bytes:
    """The import stub: spill the argument registers into the call block, SYSCALL, clear
    the number, load rax."""
    code = bytearray()

    def rip_relative(prefix: bytes, target: int, tail: bytes = b"") -> None:
        end = stub_va + len(code) + len(prefix) + 4 + len(tail)
        code.extend(prefix + struct.pack("<i", target - end) + tail)

    rip_relative(b"\x48\x89\x0D", CALL_BLOCK + 0x08)  # mov [rcx slot], rcx
    rip_relative(b"\x48\x89\x15", CALL_BLOCK + 0x10)  # mov [rdx slot], rdx
    rip_relative(b"\x4C\x89\x05", CALL_BLOCK + 0x18)  # mov [r8 slot], r8
    rip_relative(b"\x4C\x89\x0D", CALL_BLOCK + 0x20)  # mov [r9 slot], r9
    rip_relative(b"\x48\x89\x25", CALL_BLOCK + 0x28)  # mov [rsp slot], rsp
    # mov qword [number], N: all 8 bytes, whatever a routine given a pointer into the call
    # block left in them (a dword store kept a stray upper half: an index past every routine).
    rip_relative(b"\x48\xC7\x05", CALL_BLOCK, struct.pack("<I", number))
    code += b"\x0F\x05"  # syscall
    # and qword [number], 0: the number is the stub's only until its call is made, so a
    # syscall no stub prepared finds 0, the slot of no routine (bindings.STRAY_SYSCALL).
    rip_relative(b"\x48\x83\x25", CALL_BLOCK, b"\x00")
    rip_relative(b"\x48\x8B\x05", RETURN_SLOT)  # mov rax, [return slot]
    code += b"\xC3"  # ret
    assert len(code) <= STUB_SIZE
    return bytes(code.ljust(STUB_SIZE, b"\xCC"))


def control_register_write_faults(control: int, value: int, cr3: int) -> str:
    """What a mov to CR0, CR3 or CR4 of ``value`` does in 64-bit mode (Intel SDM, MOV to
    control registers): "gp" for the general-protection fault (reserved bits 63:32 of CR0 or
    CR4; CR0.PG cleared, which 64-bit code cannot do; PG without PE; NW without CD; CR4.PAE
    cleared), "cr3" for a page table other than ntpool's (its one address space: the runner
    says so), "" for a write the CPU runs as the processor would (CR0.WP cleared, say)."""
    if control == 0:
        if value >> 32 or not value & CR0_PG or not value & CR0_PE or \
                value & CR0_NW and not value & CR0_CD:
            return "gp"
    elif control == 4:
        if value >> 32 or not value & CR4_PAE:
            return "gp"
    elif control == 3:
        if value >> 52:
            return "gp"  # reserved bits (no PCID in ntpool's processor)
        if value & ~0xFFF != cr3:
            return "cr3"
    return ""


class Registers:
    """Batch access to the registers a CONTEXT holds, through the C library directly."""

    def __init__(self, uch):
        self.uch = uch
        count = len(CONTEXT_REGS)
        self.count = count
        self.ids = (ctypes.c_int * count)(*(_REG_IDS[name] for name in CONTEXT_REGS))
        self.values = (ctypes.c_uint64 * count)()
        base = ctypes.addressof(self.values)
        self.pointers = (ctypes.c_void_p * count)(*(base + 8 * i for i in range(count)))

    def read(self) -> dict:
        uclib.uc_reg_read_batch(self.uch, self.ids, self.pointers, self.count)
        return dict(zip(CONTEXT_REGS, self.values))

    def write(self, regs: dict) -> None:
        for index, name in enumerate(CONTEXT_REGS):
            self.values[index] = regs[name] & 0xFFFFFFFFFFFFFFFF
        uclib.uc_reg_write_batch(self.uch, self.ids, self.pointers, self.count)


class RegisterBatch:
    """A fixed list of registers read or written in one C call (a call's entry and result)."""

    def __init__(self, uch, names):
        count = len(names)
        self.uch, self.count = uch, count
        self.ids = (ctypes.c_int * count)(*(_REG_IDS[name] for name in names))
        self.values = (ctypes.c_uint64 * count)()
        base = ctypes.addressof(self.values)
        self.pointers = (ctypes.c_void_p * count)(*(base + 8 * i for i in range(count)))

    def read(self) -> list:
        uclib.uc_reg_read_batch(self.uch, self.ids, self.pointers, self.count)
        return self.values[:]

    def write(self, values) -> None:
        self.values[:] = values
        uclib.uc_reg_write_batch(self.uch, self.ids, self.pointers, self.count)


class Watchdog:
    """Stops native code that runs past its deadline: one thread for the whole process.

    unicorn's own timeout (``uc_emu_start``'s ``timeout``) starts a thread for every run,
    about 90 µs a call from ntpool into a driver; this thread is started once, sleeps until
    the earliest deadline, and is woken only when a deadline earlier than that one is set.
    ``uc_emu_stop`` from another thread is how unicorn's own timeout stops a run; a stop for
    a run that has just ended is ignored by unicorn. A CPU past its deadline is stopped again
    every tenth of a second until the runner disarms it (a stop that lands between two
    ``uc_emu_start`` calls would otherwise be lost)."""

    RETRY_SECONDS = 0.1

    def __init__(self):
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.deadlines: dict = {}  # Cpu -> time.monotonic() deadline
        self.sleeping_until: float | None = None  # None: asleep with nothing to watch
        self.thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forget_in_child)

    def arm(self, cpu, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self.lock:
            cpu.timed_out = False
            self.deadlines[cpu] = deadline
            if self.thread is None:
                self.thread = threading.Thread(target=self._watch, name="ntpool-native-watchdog",
                                               daemon=True)
                self.thread.start()
            elif self.sleeping_until is None or deadline < self.sleeping_until:
                self.wake.notify()

    def disarm(self, cpu) -> None:
        with self.lock:
            self.deadlines.pop(cpu, None)

    def _watch(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                for cpu, deadline in self.deadlines.items():
                    if deadline <= now:
                        self.deadlines[cpu] = now + self.RETRY_SECONDS
                        cpu.timed_out = True  # what tells this stop from a hlt's
                        uclib.uc_emu_stop(cpu.uch)
                self.sleeping_until = min(self.deadlines.values(), default=None)
                self.wake.wait(None if self.sleeping_until is None else self.sleeping_until - now)

    def _forget_in_child(self) -> None:
        # A forked child has no watchdog thread (threads do not survive fork): start afresh.
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.deadlines = {}
        self.sleeping_until = None
        self.thread = None


WATCHDOG = Watchdog()


class InterruptRelay:
    """Ctrl-C while native code runs. CPython runs a signal's Python handler only when the
    main thread next runs Python code, and a driver's loop never leaves unicorn's C code: the
    KeyboardInterrupt waited for the watchdog (60 s). While an outermost call runs, the
    signal's wakeup byte (``signal.set_wakeup_fd``, written by CPython's C handler at once)
    goes to a pipe a thread reads; on SIGINT it stops the running CPUs, the main thread
    returns to Python, and the handler raises KeyboardInterrupt there. The previous wakeup fd
    is put back after the call, and gets the bytes that came meanwhile."""

    NOT_SET = object()

    def __init__(self):
        self.lock = threading.Lock()
        self.running: set = set()
        self.pipe: tuple | None = None
        self.forward = -1  # the wakeup fd there was before ours (asyncio's, say)
        os.register_at_fork(after_in_child=self._forget_in_child)

    def enter(self, cpu):
        """Relay SIGINT to ``cpu`` (from the main thread only); returns what ``leave`` needs."""
        import signal
        if threading.current_thread() is not threading.main_thread():
            return self.NOT_SET
        with self.lock:
            if self.pipe is None:
                read, write = os.pipe()
                os.set_blocking(write, False)
                self.pipe = (read, write)
                threading.Thread(target=self._watch, args=(read,), name="ntpool-native-interrupt",
                                 daemon=True).start()
            self.running.add(cpu)
        try:
            previous = signal.set_wakeup_fd(self.pipe[1], warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter's main thread
            with self.lock:
                self.running.discard(cpu)
            return self.NOT_SET
        self.forward = previous
        return previous

    def leave(self, cpu, previous) -> None:
        import signal
        if previous is self.NOT_SET:
            return
        with self.lock:
            self.running.discard(cpu)
        self.forward = -1
        signal.set_wakeup_fd(previous)

    def _watch(self, read: int) -> None:
        import signal
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                with self.lock:
                    for cpu in self.running:
                        uclib.uc_emu_stop(cpu.uch)
            forward = self.forward
            if forward >= 0:
                try:
                    os.write(forward, data)
                except OSError:
                    pass

    def _forget_in_child(self) -> None:
        # A forked child has no relay thread: a new pipe and thread when first needed.
        self.lock = threading.Lock()
        self.running = set()
        self.pipe = None
        self.forward = -1


INTERRUPTS = InterruptRelay()


class CpuStop(Exception):
    """Why the CPU stopped before the called function returned (handled by the runner)."""


class Cpu:
    """One unicorn x64 CPU on the machine's memory. ``machine`` is the NativeMachine."""

    def __init__(self, machine):
        self.machine = machine
        kernel = machine.kernel
        self.kernel = kernel
        physical = kernel.physical
        self.uc = uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self.uch = uc._uch
        self._memory_anchor = ctypes.c_char.from_buffer(physical.buffer)
        uc.mem_map_ptr(0, physical.size, unicorn.UC_PROT_ALL, ctypes.addressof(self._memory_anchor))
        self.registers = Registers(self.uch)
        self.call_registers = RegisterBatch(self.uch, ("rcx", "rdx", "r8", "r9", "rsp", "rip", "rflags"))
        self.result_registers = RegisterBatch(self.uch, ("rax",))
        self.stack_register = RegisterBatch(self.uch, ("rsp",))
        self.rip_register = RegisterBatch(self.uch, ("rip",))
        self.gs_base = 0
        self.cr3 = kernel.space.cr3 << 12
        uc.reg_write(X.UC_X86_REG_CR3, self.cr3)
        uc.reg_write(X.UC_X86_REG_CR4, CR4_INITIAL)
        uc.msr_write(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_INITIAL)
        self.tlb_stale = False
        # Set by the watchdog when this CPU's deadline has passed (cleared when it is armed):
        # the runner checks it between runs too, since a stop that lands between two
        # uc_emu_start calls (code that faults over and over) stops nothing.
        self.timed_out = False
        self.stop: tuple | None = None  # why the CPU stopped inside a hook
        self.depth = 0  # nested calls (ntpool -> driver -> ntpool -> driver)
        self._hooks = []  # (handle, callback) kept alive
        self._cr8_hooked: set = set()
        self._cr_write_hooked: set = set()
        self._block_callback = _CODE_CB(self._on_block)
        self._block_hooks: list[int] = []
        self._fixed_code: list[tuple[int, int]] = []
        # Set once native code clears CR0.WP: from then on it may have rewritten read-only
        # code, so every block but the stubs' is scanned (ntpool never sets it back).
        self.code_rewritable = False
        self._blocks_seen: dict[int, bytes] = {}  # block address -> its bytes when scanned
        self._add_hook(unicorn.UC_HOOK_INSN, _SYSCALL_CB(machine.syscall_hook(self)), 1, 0,
                       X.UC_X86_INS_SYSCALL)
        self._add_hook(unicorn.UC_HOOK_INTR, _INTR_CB(self._on_interrupt), 1, 0)
        # SYSENTER, which no import stub uses: the runner answers it as a stray SYSCALL.
        self._add_hook(unicorn.UC_HOOK_INSN, _SYSCALL_CB(self._on_sysenter), 1, 0,
                       X.UC_X86_INS_SYSENTER)
        self._clean = uc.context_save()  # no exception pending: restored after each fault
        self._write_hook = None  # (handle, callback) while stores are published

    # --- hooks -------------------------------------------------------------------------------

    def _add_hook(self, kind: int, callback, begin: int, end: int, *extra) -> int:
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self.uch, ctypes.byref(handle), kind, callback, None,
                                   ctypes.c_uint64(begin), ctypes.c_uint64(end),
                                   *(ctypes.c_int(e) for e in extra))
        if status:
            raise unicorn.UcError(status)
        self._hooks.append((handle.value, callback))
        return handle.value

    def publish_writes(self, on: bool) -> None:
        """Publish every store native code makes as ``MemoryWritten`` (on while a layer
        listens: the uninitialized-memory checker), or stop. A memory hook is a call into
        Python per store, so it exists only while someone listens; translated code is
        flushed either way, because unicorn decides at translation whether a store calls
        the hooks."""
        if on == (self._write_hook is not None):
            return
        if on:
            callback = _MEM_CB(self._on_write)
            handle = self._add_hook(unicorn.UC_HOOK_MEM_WRITE, callback, 1, 0)
            self._write_hook = (handle, callback)
        else:
            handle, callback = self._write_hook
            self._write_hook = None
            uclib.uc_hook_del(self.uch, ctypes.c_size_t(handle))
            self._hooks.remove((handle, callback))
        self.uc.ctl_flush_tb()

    def _on_write(self, uch, access, address, size, value, user_data) -> None:
        try:
            self.machine.native_store(address, size)
        except BaseException as error:  # noqa: BLE001 - carried out of the C callback
            self.stop = ("error", error)
            uclib.uc_emu_stop(self.uch)

    def hook_cr8(self, address: int) -> None:
        """Emulate the ``mov cr8, reg`` / ``mov reg, cr8`` at ``address`` (found by the loader)."""
        if address not in self._cr8_hooked:
            self._cr8_hooked.add(address)
            self._add_hook(unicorn.UC_HOOK_CODE, _CODE_CB(self._on_cr8), address, address)

    def hook_cr_write(self, address: int) -> None:
        """Check the ``mov cr0/cr3/cr4, reg`` at ``address`` (found by the loader) as the
        processor checks it in 64-bit mode, before unicorn runs it."""
        if address not in self._cr_write_hooked:
            self._cr_write_hooked.add(address)
            self._add_hook(unicorn.UC_HOOK_CODE, _CODE_CB(self._on_cr_write), address, address)

    def _on_cr_write(self, uch, address, size, user_data) -> None:
        try:
            code = self.kernel.read(address, 4)
            rex = code[0] if 0x40 <= code[0] <= 0x4F else 0
            if rex:
                code = code[1:]
            if code[:2] != b"\x0F\x22" or rex & 4:
                return  # not the instruction the loader saw (code changed, or a prefix)
            modrm = code[2]
            control = (modrm >> 3) & 7
            source = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10",
                      "r11", "r12", "r13", "r14", "r15")[(modrm & 7) | ((rex & 1) << 3)]
            value = self.uc.reg_read(_REG_IDS[source])
            refused = control_register_write_faults(control, value, self.cr3)
        except BaseException as error:  # noqa: BLE001 - carried out of the C callback
            self.stop = ("error", error)
            uclib.uc_emu_stop(self.uch)
            return
        if refused == "gp":
            self.stop = ("interrupt", VECTOR_GENERAL_PROTECTION)
            uclib.uc_emu_stop(self.uch)
        elif refused:
            self.stop = ("address-space", (address, control, value))
            uclib.uc_emu_stop(self.uch)
        elif control == 0 and not value & CR0_WP and not self.code_rewritable:
            # WP off: the driver may now write its own read-only code. The mov is done here,
            # then every block is scanned from the next instruction on (the translated code
            # is dropped; the write to rip quits this block first).
            try:
                self.code_rewritable = True
                self.uc.reg_write(X.UC_X86_REG_CR0, value)
                self.scan_blocks(self._fixed_code)
                self.uc.ctl_flush_tb()
                self.uc.reg_write(X.UC_X86_REG_RIP, address + (4 if rex else 3))
            except BaseException as error:  # noqa: BLE001
                self.stop = ("error", error)
                uclib.uc_emu_stop(self.uch)

    def scan_blocks(self, fixed_code: list[tuple[int, int]]) -> None:
        """Hook the blocks of every address outside ``fixed_code`` ([start, end) ranges of
        code already scanned that nothing rewrites): ``_on_block`` scans each before it runs.
        unicorn decides at translation whether a block calls the hook, so code in those
        ranges (the images' code, the stubs) runs as fast as before; once native code has
        cleared CR0.WP only the stubs are left out (``code_rewritable``)."""
        self._fixed_code = list(fixed_code)
        if self.code_rewritable:
            fixed_code = [(STUB_CODE, STUB_CODE + STUB_CODE_PAGES * PAGE_SIZE)]
        for handle in self._block_hooks:
            uclib.uc_hook_del(self.uch, ctypes.c_size_t(handle))
            self._hooks.remove((handle, self._block_callback))
        self._block_hooks = []
        begin = 0
        for start, end in sorted(fixed_code):
            if start > begin:
                self._block_hooks.append(self._add_hook(unicorn.UC_HOOK_BLOCK, self._block_callback,
                                                        begin, start - 1))
            begin = max(begin, end)
        if begin <= MASK64:
            self._block_hooks.append(self._add_hook(unicorn.UC_HOOK_BLOCK, self._block_callback,
                                                    begin, MASK64))

    def _on_block(self, uch, address, size, user_data) -> None:
        """A block of code the loader did not scan, about to run: its ``mov crN`` get the
        hooks the loader's would; if any is new (or the bytes changed since the block was
        translated: a routine, not the CPU, rewrote them), the block is translated again
        before any of it runs (a write to rip quits it)."""
        if not size:
            return
        try:
            code = self.kernel.read(address, size)
            seen = self._blocks_seen.get(address)
            if seen == code:
                return
            self._blocks_seen[address] = code
            cr8_sites, cr_write_sites = control_register_sites(code, address)
            fresh = seen is not None or \
                not self._cr8_hooked.issuperset(cr8_sites) or \
                not self._cr_write_hooked.issuperset(cr_write_sites)
            for site in cr8_sites:
                self.hook_cr8(site)
            for site in cr_write_sites:
                self.hook_cr_write(site)
            if fresh:
                self.uc.ctl_remove_cache(address, address + size)
                self.uc.reg_write(X.UC_X86_REG_RIP, address)
        except BaseException as error:  # noqa: BLE001 - carried out of the C callback
            self.stop = ("error", error)
            uclib.uc_emu_stop(self.uch)

    def _on_sysenter(self, uch, user_data) -> None:
        self.stop = ("sysenter", self.rip_register.read()[0])
        uclib.uc_emu_stop(self.uch)

    def _on_interrupt(self, uch, vector, user_data) -> None:
        self.stop = ("interrupt", vector)
        uclib.uc_emu_stop(self.uch)

    def _on_cr8(self, uch, address, size, user_data) -> None:
        try:
            code = self.kernel.read(address, 4)
            if not CR8_ACCESS.fullmatch(code):
                return  # no longer the instruction found there (code written at run time)
            rex, opcode, modrm = code[0], code[2], code[3]
            register = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")[
                (modrm & 7) | ((rex & 1) << 3)]
            reg_id = _REG_IDS[register]
            if opcode == 0x20:  # mov reg, cr8: KeGetCurrentIrql
                self.uc.reg_write(reg_id, self.kernel.current_irql)
            else:  # mov cr8, reg: KeRaiseIrql / KeLowerIrql, inlined
                value = self.uc.reg_read(reg_id)
                if value > 15:
                    # CR8's bits 63:4 are reserved: setting one is a general-protection
                    # fault at the instruction (Intel SDM, MOV to CR8), not an IRQL.
                    self.stop = ("interrupt", VECTOR_GENERAL_PROTECTION)
                    uclib.uc_emu_stop(self.uch)
                    return
                self.machine.set_irql_from_cr8(value, address)
            self.uc.reg_write(X.UC_X86_REG_RIP, address + 4)
        except BaseException as error:  # noqa: BLE001
            self.stop = ("error", error)
            uclib.uc_emu_stop(self.uch)
        if self.tlb_stale:
            self.flush_tlb()

    # --- state -------------------------------------------------------------------------------

    def flush_tlb(self) -> None:
        self.tlb_stale = False
        self.uc.reg_write(X.UC_X86_REG_CR3, self.cr3)

    def forget_code(self, start: int, end: int) -> None:
        """Drop translated code for a range whose frames are about to hold something else."""
        self.uc.ctl_remove_cache(start, end)

    def read_context(self) -> dict:
        return self.registers.read()

    def write_context(self, regs: dict) -> None:
        self.registers.write(regs)

    def recover(self, regs: dict, keep_control: bool = True) -> None:
        """Forget a delivered exception (restore the clean state), keeping ``regs`` and GS,
        and CR0 and CR4 as the driver left them (a fault changes neither: a driver that
        cleared CR0.WP still writes read-only pages after its __except ran); with
        ``keep_control`` False, every control register is set up again as ntpool sets it."""
        control = (self.uc.reg_read(X.UC_X86_REG_CR0), self.uc.reg_read(X.UC_X86_REG_CR4)) \
            if keep_control else None
        self.uc.context_restore(self._clean)
        if control is not None and control != (CR0_INITIAL, CR4_INITIAL):
            self.uc.reg_write(X.UC_X86_REG_CR4, control[1])
            self.uc.reg_write(X.UC_X86_REG_CR0, control[0])
        if self.tlb_stale:
            self.tlb_stale = False
        self.registers.write(regs)
        self.uc.reg_write(X.UC_X86_REG_GS_BASE, self.gs_base)

    def set_gs_base(self, value: int) -> None:
        if value != self.gs_base:
            self.gs_base = value
            self.uc.reg_write(X.UC_X86_REG_GS_BASE, value)

    def control_registers_changed(self) -> str:
        """"CR0 0x... (ntpool's 0x...)" for each of CR0, CR3, CR4 that is not what ntpool set
        (native code may execute mov crN itself); "" when none is."""
        expected = {"CR0": CR0_INITIAL, "CR3": self.cr3, "CR4": CR4_INITIAL}
        changed = []
        for name, value in expected.items():
            now = self.uc.reg_read(getattr(X, f"UC_X86_REG_{name}"))
            if now != value:
                changed.append(f"{name} to {now:#x} (ntpool's {value:#x})")
        return ", ".join(changed)

    def cr2(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_CR2)

    def start(self, rip: int) -> tuple | None:
        """Run from ``rip`` until the return trap, a stop, or an error; returns the stop
        (None: the called function returned). A run stopped elsewhere was stopped by the
        watchdog (``WATCHDOG.arm``): ("timeout", None), or by a hlt: ("halt", rip after it)."""
        if self.tlb_stale:
            self.flush_tlb()
        self.stop = None
        status = uclib.uc_emu_start(self.uch, rip, RETURN_TRAP, 0, 0)
        stop = self.stop
        self.stop = None
        if stop is None and status:
            return ("unicorn", status)
        if stop is None:
            rip = self.rip_register.read()[0]
            if rip != RETURN_TRAP:
                if self.timed_out:
                    return ("timeout", None)
                # unicorn ends a run at hlt, with rip past it.
                return ("halt", rip)
        return stop
