"""Routines whose native calls need the guest's memory beyond what a C prototype says.

- Variadic routines (DbgPrint, DbgPrintEx, vDbgPrintEx; the printf family, declared in the
  registry by routines.rtl_printf): the format is read from guest memory and its arguments
  from the registers and the stack, as the x64 convention passes them, or from a va_list.
- ``__C_specific_handler``: drivers import it for their ``__try`` blocks, but on x64 only
  the exception dispatcher calls it, and ntpool's dispatcher (``seh``) reads the scope
  tables itself; a direct call is reported.
- NDIS registration, whose characteristics and driver objects are structures in memory.

DbgPrint output goes to the kernel's debugger log (``k.debug_output``, with observers
such as the command line, which prints it as it comes).
"""

import struct
from types import SimpleNamespace

from ..packing import x64_struct
from ..constants import BadPoolCaller, BugCheckCode
from ..errors import NtStatusError
from ..routines.rtl_printf import VaList, format_c, format_text, print_into, read_cstring

_Q = x64_struct("<Q")
DPFLTR_ERROR_LEVEL = 0
# DbgPrintEx shows a message when its level is ERROR (0) or when the component's mask
# allows it; Windows' default mask shows only errors. ntpool shows every level, marked.


class Arguments:
    """The x64 arguments of a call, from ``first`` on (0: rcx)."""

    def __init__(self, machine, registers, rsp, first):
        self.machine = machine
        self.registers = registers
        self.rsp = rsp
        self.index = first

    def next(self) -> int:
        index = self.index
        self.index += 1
        if index < 4:
            return self.registers[index]
        return self.machine.read_q(self.rsp + 0x28 + 8 * (index - 4))


# --- handlers (factories taking the NativeMachine) ----------------------------------------------

def _dbg_print(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        args = Arguments(machine, (rcx, rdx, r8, r9), rsp, 1)
        kernel.DbgPrint(format_c(kernel, read_cstring(kernel, rcx).decode("latin-1"), args))
        return 0

    return handler


def _dbg_print_ex(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        args = Arguments(machine, (rcx, rdx, r8, r9), rsp, 3)
        kernel.DbgPrintEx(rcx & 0xFFFFFFFF, rdx & 0xFFFFFFFF,
                          format_c(kernel, read_cstring(kernel, r8).decode("latin-1"), args))
        return 0

    return handler


def _vdbg_print_ex(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        kernel.DbgPrintEx(rcx & 0xFFFFFFFF, rdx & 0xFFFFFFFF,
                          format_c(kernel, read_cstring(kernel, r8).decode("latin-1"),
                                   VaList(kernel, r9)))
        return 0

    return handler


def _printf(wide: bool, counted: bool, va: bool = False):
    """The printf family's handler (routines.rtl_printf): the arguments after the format from
    the registers and the stack, or from the va_list the caller passes."""
    def factory(machine):
        kernel = machine.kernel

        def handler(rcx, rdx, r8, r9, rsp):
            registers = (rcx, rdx, r8, r9)
            if counted:
                count, fmt = rdx, r8
                args = VaList(kernel, r9) if va else Arguments(machine, registers, rsp, 3)
            else:
                count, fmt = None, rdx
                args = VaList(kernel, r8) if va else Arguments(machine, registers, rsp, 2)
            return print_into(kernel, rcx, count, format_text(kernel, fmt, wide), args, wide) & 0xFFFFFFFF

        return handler

    return factory


def _c_specific_handler(machine):
    def handler(rcx, rdx, r8, r9, rsp):
        raise NtStatusError(0xC0000025, "__C_specific_handler called directly: only the "
                                        "exception dispatcher calls it")  # NONCONTINUABLE

    return handler


def _characteristics(machine, address: int, offset: int):
    major, minor = machine.kernel.read(address + offset, 2) if address else (0, 0)
    return SimpleNamespace(MajorNdisVersion=major, MinorNdisVersion=minor)


def _ndis_register_miniport_driver(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        # NDIS_MINIPORT_DRIVER_CHARACTERISTICS starts with an NDIS_OBJECT_HEADER (4 bytes).
        status, handle = kernel.NdisMRegisterMiniportDriver(
            kernel.current_driver, rdx, r8, _characteristics(machine, r9, 4))
        out = machine.read_q(rsp + 0x28)
        if out:
            kernel.write(out, _Q.pack(handle))
        return status

    return handler


def _ndis_initialize_wrapper(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        handle = kernel.NdisMInitializeWrapper(kernel.current_driver, r8, r9)
        if rcx:
            kernel.write(rcx, _Q.pack(handle))
        return 0

    return handler


def _ndis_register_miniport(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        return kernel.NdisMRegisterMiniport(rcx, _characteristics(machine, rdx, 0), r8 & 0xFFFFFFFF)

    return handler


POOL_EXTENDED_PARAMETER_SIZE = 16  # {Type:8, Optional:1, Reserved:55} ULONG64, then the union


def read_extended_parameters(kernel, address: int, count: int) -> tuple:
    """ExAllocatePool3's POOL_EXTENDED_PARAMETER array, read from the caller's memory as the
    routine reads it (a count the memory cannot hold faults where the memory ends)."""
    from ..routines.ex import POOL_EXTENDED_PARAMETER
    if not address or not count:
        return ()
    data = kernel.read(address, POOL_EXTENDED_PARAMETER_SIZE * count)
    parameters = []
    for at in range(0, len(data), POOL_EXTENDED_PARAMETER_SIZE):
        header, value = struct.unpack_from("<QQ", data, at)
        parameters.append(POOL_EXTENDED_PARAMETER(
            Type=header & 0xFF, Optional=bool(header >> 8 & 1),
            Priority=native_priority(value), PreferredNode=value & 0xFFFFFFFF,
            SecurePoolParams=value))
    return tuple(parameters)


def _ex_allocate_pool3(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        count = machine.read_q(rsp + 0x28) & 0xFFFFFFFF
        parameters = read_extended_parameters(kernel, r9, count)
        return kernel.ExAllocatePool3(rcx, rdx, r8 & 0xFFFFFFFF, parameters, len(parameters))

    return handler


def _ex_free_pool2(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        parameters = read_extended_parameters(kernel, r8, r9 & 0xFFFFFFFF)
        kernel.ExFreePool2(rcx, rdx & 0xFFFFFFFF, parameters, len(parameters))
        return 0

    return handler


def _ndis_free_memory(machine):
    """NdisFreeMemory as NDIS makes it (ReactOS's ndis reads the same): MemoryFlags say which
    free it is (MmFreeContiguousMemory / MmFreeNonCachedMemory, else ExFreePool), and Length
    matters to none of them for pool memory. Memory NDIS never allocated as contiguous,
    freed as such, is BAD_POOL_CALLER 0x60 (address, 0, 0): MmFreeContiguousMemory's bad
    pointer. Python callers get ntpool's contract checks instead (NdisContractError)."""
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        va, flags = rcx, r8 & 3
        block = kernel.ndis_blocks.get(va)
        if not flags:
            kernel.ExFreePool(va)  # pool memory, or ExFreePool's answer for what is not
        elif block is None:
            kernel.KeBugCheckEx(BugCheckCode.BAD_POOL_CALLER, BadPoolCaller.FREE_INVALID_CONTIGUOUS,
                                va, 0, 0, detail=f"NdisFreeMemory of {va:#x} with MemoryFlags "
                                                 f"{flags:#x}: not contiguous memory NDIS "
                                                 f"allocated (MmFreeContiguousMemory)")
        else:
            kernel.NdisFreeMemory(va, *block)  # freed whole, as the memory manager frees it
        return 0

    return handler


# name -> (module, handler factory): routines only native code can call this way.
def native_priority(value: int) -> int:
    """An EX_POOL_PRIORITY from native code as Windows reads it (WRK's
    ExAllocatePoolWithTagPriority and MmResourcesAvailable): the special-pool bits (8, and 1
    with it) ask for special pool; what remains is HighPoolPriority (32), NormalPoolPriority
    (16), or, any other value, checked as LowPoolPriority."""
    value &= 0xFFFFFFFF
    special = value & 9 if value & 8 else 0
    rest = value & ~special
    return (rest if rest in (16, 32) else 0) | special


NATIVE_ONLY = {
    "DbgPrint": ("ntoskrnl.exe", _dbg_print),
    "DbgPrintEx": ("ntoskrnl.exe", _dbg_print_ex),
    "vDbgPrintEx": ("ntoskrnl.exe", _vdbg_print_ex),
    "__C_specific_handler": ("ntoskrnl.exe", _c_specific_handler),
}

# name -> handler factory: registry routines whose arguments are structures in memory.
NATIVE_OVERRIDES = {
    "NdisMRegisterMiniportDriver": _ndis_register_miniport_driver,
    "NdisMInitializeWrapper": _ndis_initialize_wrapper,
    "NdisMRegisterMiniport": _ndis_register_miniport,
    "ExAllocatePool3": _ex_allocate_pool3,
    "ExFreePool2": _ex_free_pool2,
    "NdisFreeMemory": _ndis_free_memory,
    "_snprintf": _printf(False, True),
    "_snwprintf": _printf(True, True),
    "_vsnprintf": _printf(False, True, va=True),
    "_vsnwprintf": _printf(True, True, va=True),
    "sprintf": _printf(False, False),
    "swprintf": _printf(True, False),
    "vsprintf": _printf(False, False, va=True),
}
