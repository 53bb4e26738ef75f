"""What a CPU fault in native code becomes: ntpool's answer, as Windows would give it.

A page fault (vector 14) on a page that is not present goes where ntpool's own accesses go:
special pool's guard pages (its fault handlers), then at DISPATCH_LEVEL or above
DRIVER_IRQL_NOT_LESS_OR_EQUAL (0xD1: address, IRQL, 0 read / 1 write / 8 execute, the
instruction), then a page-in for a paged-out page, then for a user-mode address an access
violation exception (which a driver's __try can catch, as ProbeForRead relies on), and
for any other kernel address PAGE_FAULT_IN_NONPAGED_AREA (0x50: address, 0 read / 1
write / 8 execute, the instruction, 0: the fault status MmAccessFault passes, WRK). A fault on a present page is a protection fault:
ATTEMPTED_WRITE_TO_READONLY_MEMORY (0xBE) or ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY (0xFC),
(address, PTE, 0, 0).

#DE, #UD, int3 and #GP become the exceptions Windows raises for them
(STATUS_INTEGER_DIVIDE_BY_ZERO, STATUS_ILLEGAL_INSTRUCTION, STATUS_BREAKPOINT,
STATUS_ACCESS_VIOLATION), dispatched through the driver's SEH; unhandled, they are
Windows' bug checks (see ``seh``). A double fault (a stack overflow into the guard page)
is UNEXPECTED_KERNEL_MODE_TRAP (0x7F, 8).

The fault's read/write/execute kind is not in what unicorn reports; the faulting
instruction is decoded (capstone) and the memory operand that covers CR2 gives it.
Faults are rare, so the decoding costs nothing that matters.
"""

import capstone
from capstone import x86 as cs_x86
from unicorn import x86_const as X

from ..constants import DISPATCH_LEVEL, PAGE_SIZE, SYSTEM_RANGE_START, BugCheckCode
from ..errors import NtStatusError
from ..hooks import PageFault
from ..machine.memory import PTE_NX, PTE_PRESENT
from . import cpu as cpu_module
from . import seh

VECTOR_DIVIDE, VECTOR_BREAKPOINT, VECTOR_INVALID_OPCODE = 0, 3, 6
VECTOR_DOUBLE_FAULT, VECTOR_GENERAL_PROTECTION, VECTOR_PAGE_FAULT = 8, 13, 14
STATUS_BREAKPOINT = 0x80000003
STATUS_ACCESS_VIOLATION = 0xC0000005
STATUS_ILLEGAL_INSTRUCTION = 0xC000001D
STATUS_INTEGER_DIVIDE_BY_ZERO = 0xC0000094
STATUS_PRIVILEGED_INSTRUCTION = 0xC0000096
ATTEMPTED_WRITE_TO_READONLY_MEMORY = 0xBE
ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY = 0xFC
UNEXPECTED_KERNEL_MODE_TRAP = 0x7F
KERNEL_SECURITY_CHECK_FAILURE = 0x139
VECTOR_FAST_FAIL = 0x29
READ, WRITE, EXECUTE = 0, 1, 8

_disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_disassembler.detail = True


class RoutineAccessViolation(NtStatusError):
    """A routine native code called touched a user-mode address nothing maps (a NULL or
    stray out-pointer): the access violation Windows raises in the routine, dispatched to
    its caller with the exception's parameters (0 read / 1 write, the address)."""

    def __init__(self, write: bool, address: int):
        self.parameters = (int(write), address)
        super().__init__(STATUS_ACCESS_VIOLATION,
                         f"{'write to' if write else 'read of'} {address:#x} by a routine")


def handle(machine, vector: int, thread) -> int:
    """Resolve or dispatch a fault; returns where the CPU resumes (or raises BugCheck)."""
    try:
        return _handle(machine, vector, thread)
    finally:
        machine.location = 0


def _handle(machine, vector: int, thread) -> int:
    cpu = machine.cpu
    regs = cpu.read_context()
    rip = regs["rip"]
    machine.location = rip
    kernel = machine.kernel
    if vector == VECTOR_PAGE_FAULT:
        address = cpu.cr2()
        access = access_kind(machine, regs, address)
        outcome = page_fault(machine, regs, address, access)
        cpu.recover(regs)
        if outcome is None:
            return rip  # resolved: run the instruction again
        return seh.raise_exception(machine, regs, STATUS_ACCESS_VIOLATION, outcome, thread,
                                   rip)
    cpu.recover(regs)
    if vector == VECTOR_DIVIDE:
        return seh.raise_exception(machine, regs, STATUS_INTEGER_DIVIDE_BY_ZERO, (), thread, rip)
    if vector == VECTOR_INVALID_OPCODE:
        return seh.raise_exception(machine, regs, STATUS_ILLEGAL_INSTRUCTION, (), thread, rip)
    if vector == VECTOR_BREAKPOINT:
        # int3 has executed: the exception names the int3 itself, and resuming goes past it.
        regs["rip"] = rip - 1 if kernel.read(rip - 1, 1) == b"\xCC" else rip
        return seh.raise_exception(machine, regs, STATUS_BREAKPOINT, (0,), thread, regs["rip"])
    if vector == VECTOR_GENERAL_PROTECTION:
        return seh.raise_exception(machine, regs, STATUS_ACCESS_VIOLATION,
                                   (0, 0xFFFFFFFFFFFFFFFF), thread, rip)
    if vector == VECTOR_FAST_FAIL:
        # __fastfail (int 29h), e.g. a /GS cookie that the loader never initialised: the
        # code is in ecx; Windows stops with KERNEL_SECURITY_CHECK_FAILURE.
        code = regs["rcx"] & 0xFFFFFFFF
        kernel.KeBugCheckEx(KERNEL_SECURITY_CHECK_FAILURE, code, regs["rsp"], 0, 0,
                            detail=f"__fastfail({code}) at {machine.describe(rip)}")
    kernel.KeBugCheckEx(UNEXPECTED_KERNEL_MODE_TRAP, vector, 0, 0, 0,
                        detail=f"trap {vector} at {machine.describe(rip)}"
                               + (" (a kernel stack overflow?)" if vector == VECTOR_DOUBLE_FAULT else ""))
    raise AssertionError("unreachable")


def page_fault(machine, regs: dict, address: int, access: int):
    """None when the page is now there; the access violation's parameters for a user
    address; otherwise the bug check (raised)."""
    kernel = machine.kernel
    rip = regs["rip"]
    write = access == WRITE
    pte = kernel.space.pte(address)
    where = machine.describe(rip)
    if pte & PTE_PRESENT:
        if access == EXECUTE:
            kernel.KeBugCheckEx(ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY, address, pte, 0, 0,
                                detail=f"execution of no-execute memory {address:#x} from {where}")
        kernel.KeBugCheckEx(ATTEMPTED_WRITE_TO_READONLY_MEMORY, address, pte, 0, 0,
                            detail=f"write to read-only memory {address:#x} at {where}")
    if kernel.hooks.listening(PageFault):
        machine.resolving_cpu_fault = True
        try:
            if kernel.hooks.ask(PageFault(address, write)) is not None:
                return None  # a layer (special pool) mapped it, or bug-checked
        finally:
            machine.resolving_cpu_fault = False
    stack_bottom = cpu_module.KERNEL_STACK_TOP - cpu_module.KERNEL_STACK_SIZE
    if stack_bottom - PAGE_SIZE <= address < stack_bottom:
        # The kernel stack's guard page: on Windows the fault cannot push its frame and
        # becomes a double fault.
        kernel.KeBugCheckEx(UNEXPECTED_KERNEL_MODE_TRAP, 8, 0, 0, 0,
                            detail=f"kernel stack overflow at {where} ({address:#x} is the "
                                   f"stack's guard page)")
    irql = kernel.current_irql
    kind = {READ: "read of", WRITE: "write to", EXECUTE: "execution of"}[access]
    if irql >= DISPATCH_LEVEL:
        kernel.KeBugCheckEx(BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL, address, irql, access, rip,
                            detail=f"{kind} {address:#x} (not resident) at IRQL {irql}, at {where}")
    if kernel.pager.is_paged_out(address):
        kernel.pager.page_in(address)
        return None
    if address < SYSTEM_RANGE_START:
        return (access, address)  # an access violation, for the driver's __except to catch
    kernel.KeBugCheckEx(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA, address, access, rip, 0,
                        detail=f"{kind} unmapped address {address:#x} at {where}")
    raise AssertionError("unreachable")


def _register(machine, name: str) -> int:
    reg = getattr(X, "UC_X86_REG_" + name.upper(), None)
    return machine.cpu.uc.reg_read(reg) if reg is not None else 0


def access_kind(machine, regs: dict, address: int) -> int:
    """READ, WRITE or EXECUTE: what the instruction at rip did at ``address``."""
    rip = regs["rip"]
    kernel = machine.kernel
    if kernel.space.pte(rip) & (PTE_PRESENT | PTE_NX) == PTE_PRESENT | PTE_NX:
        return EXECUTE  # no instruction runs from a no-execute page: its fetch faulted
    if kernel.space.translate(rip) is None or rip <= address < rip + 16 and \
            kernel.space.translate(address) is None and (address >> 12) != (rip >> 12):
        if kernel.space.translate(rip) is None:
            return EXECUTE
    try:
        code = kernel.read(rip, min(16, PAGE_SIZE - (rip & 0xFFF)))
        if len(code) < 16 and kernel.space.translate(rip + 16) is not None:
            code = kernel.read(rip, 16)
    except BaseException:  # noqa: BLE001 - an unreadable instruction is an execute fault
        return EXECUTE
    instruction = next(_disassembler.disasm(code, rip, 1), None)
    if instruction is None:
        return READ
    best = None
    for operand in instruction.operands:
        if operand.type != cs_x86.X86_OP_MEM:
            continue
        mem = operand.mem
        base = 0
        if mem.base:
            name = instruction.reg_name(mem.base)
            base = rip + instruction.size if name == "rip" else _register(machine, name)
        index = _register(machine, instruction.reg_name(mem.index)) * mem.scale if mem.index else 0
        segment = _register(machine, "gs_base") if mem.segment == cs_x86.X86_REG_GS else 0
        start = (base + index + mem.disp + segment) & 0xFFFFFFFFFFFFFFFF
        writes = bool(operand.access & capstone.CS_AC_WRITE)
        distance = 0 if start <= address < start + max(operand.size, 1) else abs(address - start)
        if best is None or distance < best[0]:
            best = (distance, writes)
    if best is None:
        return READ
    return WRITE if best[1] else READ
