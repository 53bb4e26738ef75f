"""What Windows does where a routine refuses what native code passed it.

A routine's checks are written for Python callers: an argument no C caller could pass is a
ValueError or TypeError naming it (API misuse). Native code passes registers, and there the
same refusal has Windows' answer instead, decided here after the routine has refused (the
call itself costs nothing more):

- an access the routine makes through a pointer whose span leaves the 64-bit address space
  (a pointer near 2**64 plus an offset, a huge length) wraps, as the CPU's own would, and
  the first page of it that nothing maps is the fault Windows takes there: 0x50 for a kernel
  address (0x0 for the instruction, as for any access a routine makes), 0xD1 at
  DISPATCH_LEVEL, an access violation raised to the driver's frames for a user address;
- a length no memory could hold (memset, RtlFillMemory, strncpy ... of 2**63 bytes): the
  routine runs through the buffer until the first page that nothing maps, and faults there;
- an IRQL past HIGH_LEVEL given to KeRaiseIrql / KeLowerIrql: ``mov cr8`` with reserved
  bits set is a general-protection fault in the routine, an access violation (0, -1) raised
  to the caller;
- a spin lock at an address nothing maps (NULL): the lock's interlocked store faults, at
  DISPATCH_LEVEL for the acquiring routines, which raise the IRQL first (0xD1);
- an NDIS handle at an address nothing maps (NULL): NDIS's read of its block faults there;
- lookaside or other list links that never lead back to their head: the list code spins at
  DISPATCH_LEVEL, which Windows 8 and later stop with their DPC watchdog (0x133).

POOL_TYPE and EX_POOL_PRIORITY values are normalized before the call instead (``bindings``:
unknown POOL_TYPE bits are ignored, as WRK's ExAllocatePoolWithTag ignores them, and a
priority that is neither Normal nor High is checked as Low, as MmResourcesAvailable checks
it). Any other refusal has no public Windows answer ntpool can give; the runner stops with a
NativeError that names the routine, its call site and what was refused (README, departures).
"""

from ..constants import DISPATCH_LEVEL, PAGE_SIZE, BugCheckCode
from ..errors import AddressRangeError, MachineHung
from . import cpu as cpu_module
from . import faults, seh

MASK64 = 0xFFFFFFFFFFFFFFFF
STATUS_ACCESS_VIOLATION = 0xC0000005
IRQL_ROUTINES = frozenset({"KeRaiseIrql", "KeLowerIrql", "KfRaiseIrql", "KfLowerIrql"})
# Spin lock routines: those that raise to DISPATCH_LEVEL before they touch the lock.
SPIN_LOCK_ACQUIRE = frozenset({"KeAcquireSpinLock", "KeAcquireSpinLockRaiseToDpc",
                               "KeAcquireSpinLockAtDpcLevel", "KefAcquireSpinLockAtDpcLevel"})
SPIN_LOCK_OTHERS = frozenset({"KeReleaseSpinLock", "KeReleaseSpinLockFromDpcLevel",
                              "KefReleaseSpinLockFromDpcLevel", "KeInitializeSpinLock"})
# NDIS routines whose first argument is a handle NDIS gave out (a pointer to its own block).
NDIS_HANDLE_ROUTINES = frozenset({"NdisAllocateMemoryWithTagPriority",
                                  "NdisFreeMemoryWithTagPriority", "NdisMRegisterMiniport"})
DPC_WATCHDOG_FIRST_BUILD = 9200
DPC_WATCHDOG_PERIOD_TICKS = 0x1E00


def answer(machine, routine: str, error: BaseException, thread) -> int | None:
    """Where the CPU resumes (an exception dispatched through the driver's frames), or a
    bug check raised; None when Windows' answer is not one ntpool can give."""
    if isinstance(error, AddressRangeError):
        return fault_in_span(machine, error.address, error.size, error.write, thread)
    if isinstance(error, (OverflowError, MemoryError)):
        return _huge_length(machine, routine, thread)
    if isinstance(error, MachineHung):
        return _spins_at_dispatch(machine, routine, error)
    if isinstance(error, ValueError) and routine in IRQL_ROUTINES:
        # mov cr8 with bits 63:4 set: #GP, raised in the routine as an access violation.
        return raise_in_caller(machine, STATUS_ACCESS_VIOLATION, (0, MASK64), thread)
    if isinstance(error, ValueError) and routine in SPIN_LOCK_ACQUIRE | SPIN_LOCK_OTHERS:
        return _bad_spin_lock(machine, routine, thread)
    if isinstance(error, ValueError) and routine in NDIS_HANDLE_ROUTINES:
        handle = _arguments(machine)[0]
        if (handle >> 12) not in machine.tlb:
            # NDIS reads the block its handle points to: nothing is mapped there.
            return fault_at(machine, handle, False, thread)
    return None


def raise_in_caller(machine, status: int, parameters, thread) -> int:
    """An exception the routine raised: dispatched from the driver's call (the return
    address the import stub's caller pushed)."""
    regs = machine.cpu.read_context()
    regs["rip"] = machine.read_q(regs["rsp"])
    regs["rsp"] += 8
    return seh.raise_exception(machine, regs, status, tuple(parameters), thread)


def fault_at(machine, address: int, write: bool, thread) -> int | None:
    """The routine's access to ``address`` faults: what the kernel's fault handling answers
    (a bug check raised, or for a user address the access violation raised to the driver's
    frames, see ``NativeMachine.routine_fault``). None: the page was brought in."""
    try:
        machine.kernel._page_fault(address & MASK64, write)
    except faults.RoutineAccessViolation as violation:
        return raise_in_caller(machine, violation.status, violation.parameters, thread)
    return None


def fault_in_span(machine, address: int, size: int, write: bool, thread) -> int | None:
    """The first page of ``size`` bytes at ``address`` (wrapping at 2**64, as the CPU's
    addresses do) that nothing maps is where the routine's access faults."""
    tlb = machine.tlb
    start = address & MASK64
    pages = ((start & (PAGE_SIZE - 1)) + max(size, 1) + PAGE_SIZE - 1) // PAGE_SIZE
    # More pages than the machine has frames cannot all be mapped: one past them is enough.
    pages = min(pages, machine.kernel.physical.frame_count + 2)
    page = start & ~(PAGE_SIZE - 1)
    for index in range(pages):
        va = (page + index * PAGE_SIZE) & MASK64
        if (va >> 12) in tlb:
            continue
        resumed = fault_at(machine, start if index == 0 else va, write, thread)
        if resumed is not None:
            return resumed
    return None  # every page is there: the wrapped access would succeed (not modelled)


def _arguments(machine) -> tuple[int, int, int, int, int]:
    """The refused call's rcx, rdx, r8, r9 and rsp, from the call block its stub wrote."""
    return cpu_module.CALL_BLOCK_FORMAT.unpack_from(machine.mem, machine.call_block_pa)[1:]


def _huge_length(machine, routine: str, thread) -> int | None:
    """A length no memory can hold: the routine goes through its buffer (its first pointer
    argument) until the first page nothing maps."""
    entry = machine.bindings.routines.get(routine)
    if entry is None:
        return None
    registers = _arguments(machine)
    for index, param in enumerate(entry.params[:4]):
        if param.ctype.pointer:
            write = not param.ctype.name.startswith(("PC", "const"))
            return fault_in_span(machine, registers[index], 1 << 64, write, thread)
    return None


def _bad_spin_lock(machine, routine: str, thread) -> int | None:
    """A KSPIN_LOCK at an address nothing maps faults where the routine touches it (a
    misaligned one that is there is taken and freed as any other, before any refusal)."""
    lock, new_irql = _arguments(machine)[:2]
    if (lock >> 12) in machine.tlb:
        if routine == "KeReleaseSpinLock" and new_irql & 0xFF > 15:
            # The lock is released first; lowering to NewIrql is then mov cr8 with reserved
            # bits set: #GP, an access violation raised to the caller.
            machine.kernel._drop_lock(lock)
            return raise_in_caller(machine, STATUS_ACCESS_VIOLATION, (0, MASK64), thread)
        return None
    kernel = machine.kernel
    if routine in SPIN_LOCK_ACQUIRE and kernel.current_irql < DISPATCH_LEVEL:
        kernel._set_irql(DISPATCH_LEVEL)  # the raise comes first, then the lock's store
    return fault_at(machine, lock, True, thread)


def _spins_at_dispatch(machine, routine: str, error: MachineHung) -> None:
    """List code that never gets back to the list's head spins under the list's lock."""
    kernel = machine.kernel
    if kernel.windows.build >= DPC_WATCHDOG_FIRST_BUILD:
        kernel.KeBugCheckEx(BugCheckCode.DPC_WATCHDOG_VIOLATION, 1, DPC_WATCHDOG_PERIOD_TICKS,
                            0, 0, detail=f"{routine} spins at DISPATCH_LEVEL: {error}")
    return None
