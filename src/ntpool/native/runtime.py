"""Routines whose native calls need the guest's memory beyond what a C prototype says.

- Variadic routines (DbgPrint, DbgPrintEx, vDbgPrintEx, _snprintf, _snwprintf, ...): the
  format is read from guest memory and its arguments from the registers and the stack,
  as the x64 convention passes them.
- ``__C_specific_handler``: drivers import it for their ``__try`` blocks, but on x64 only
  the exception dispatcher calls it, and ntpool's dispatcher (``seh``) reads the scope
  tables itself; a direct call is reported.
- NDIS registration, whose characteristics and driver objects are structures in memory.

DbgPrint output goes to the kernel's debugger log (``k.debug_output``, with observers
such as the command line, which prints it as it comes).
"""

import re
import struct
from types import SimpleNamespace

from ..constants import BadPoolCaller, BugCheckCode
from ..errors import NtStatusError
from ..routines.runtime import MAX_STRING, read_c_string

_Q = struct.Struct("<Q")
_FORMAT = re.compile(rb"%([-+ #0]*)(\*|\d+)?(?:\.(\*|\d+))?(hh|h|ll|l|w|I64|I32|I|z|j|t|L)?([a-zA-Z%])")
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


class VaList:
    """A va_list: a pointer to consecutive 8-byte slots."""

    def __init__(self, machine, address):
        self.machine = machine
        self.address = address

    def next(self) -> int:
        value = self.machine.read_q(self.address)
        self.address += 8
        return value


def read_cstring(kernel, address: int, limit: int = MAX_STRING) -> bytes:
    """A %s argument's bytes: "(null)" for NULL, as the kernel's CRT prints it."""
    if not address:
        return b"(null)"
    return read_c_string(kernel, address, limit)


def read_wstring(kernel, address: int, limit: int = MAX_STRING) -> str:
    if not address:
        return "(null)"
    out = bytearray()
    while len(out) < limit:
        pair = kernel.read(address + len(out), 2)
        if pair == b"\0\0":
            break
        out += pair
    return out.decode("utf-16-le", "replace")


def read_unicode_string(kernel, address: int) -> str:
    if not address:
        return "(null)"
    length, _, buffer = struct.unpack("<HHxxxxQ", kernel.read(address, 16))
    if not buffer:
        return "(null)"
    return kernel.read(buffer, length & ~1).decode("utf-16-le", "replace")


def format_c(kernel, fmt: bytes, args, wide: bool = False) -> str:
    """printf as the kernel's CRT does it (%s narrow / %S wide in a narrow format, the
    reverse in a wide one; %wZ a UNICODE_STRING; %Z an ANSI_STRING)."""
    out = []
    position = 0
    text = fmt
    for match in _FORMAT.finditer(text):
        out.append(text[position:match.start()].decode("latin-1"))
        position = match.end()
        flags, width, precision, size, conversion = match.groups()
        flags = (flags or b"").decode()
        conv = conversion.decode()
        if conv == "%":
            out.append("%")
            continue
        if width == b"*":
            width = str(_signed(args.next(), 4)).encode()
        if precision == b"*":
            precision = str(_signed(args.next(), 4)).encode()
        spec = "%" + flags + (width.decode() if width else "") + \
            ("." + precision.decode() if precision is not None else "")
        value = args.next()
        size = (size or b"").decode()
        if conv == "Z" and size == "w":
            piece = read_unicode_string(kernel, value)
            out.append((spec + "s") % piece)
            continue
        if conv == "Z":
            length, _, buffer = struct.unpack("<HHxxxxQ", kernel.read(value, 16)) if value else (0, 0, 0)
            out.append((spec + "s") % (kernel.read(buffer, length).decode("latin-1") if buffer else "(null)"))
            continue
        if conv in "sS":
            narrow = (conv == "s") != wide
            if size in ("w", "l"):
                narrow = False
            elif size == "h":
                narrow = True
            piece = read_cstring(kernel, value).decode("latin-1") if narrow else read_wstring(kernel, value)
            out.append((spec + "s") % piece)
            continue
        if conv in "cC":
            out.append(chr(value & (0xFF if (conv == "c") != wide else 0xFFFF)))
            continue
        if conv == "p":
            out.append(f"{value:016X}")
            continue
        if conv in "diuxXo":
            bits = 64 if size in ("ll", "I64", "I", "z", "j", "t", "L") else 16 if size == "h" else \
                8 if size == "hh" else 32
            value &= (1 << bits) - 1
            if conv in "di":
                value = _signed(value, bits // 8)
            out.append((spec + ("d" if conv in "diu" else conv)) % value)
            continue
        if conv in "eEfgG":
            out.append((spec + conv) % struct.unpack("<d", _Q.pack(value))[0])
            continue
        out.append(match.group(0).decode("latin-1"))
    out.append(text[position:].decode("latin-1"))
    return "".join(out)


def _signed(value: int, size: int) -> int:
    bits = size * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


# --- handlers (factories taking the NativeMachine) ----------------------------------------------

def _dbg_print(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        args = Arguments(machine, (rcx, rdx, r8, r9), rsp, 1)
        kernel.DbgPrint(format_c(kernel, read_cstring(kernel, rcx), args))
        return 0

    return handler


def _dbg_print_ex(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        args = Arguments(machine, (rcx, rdx, r8, r9), rsp, 3)
        kernel.DbgPrintEx(rcx & 0xFFFFFFFF, rdx & 0xFFFFFFFF,
                          format_c(kernel, read_cstring(kernel, r8), args))
        return 0

    return handler


def _vdbg_print_ex(machine):
    kernel = machine.kernel

    def handler(rcx, rdx, r8, r9, rsp):
        kernel.DbgPrintEx(rcx & 0xFFFFFFFF, rdx & 0xFFFFFFFF,
                          format_c(kernel, read_cstring(kernel, r8), VaList(machine, r9)))
        return 0

    return handler


def _snprintf(wide: bool, counted: bool, va: bool = False):
    def factory(machine):
        kernel = machine.kernel

        def handler(rcx, rdx, r8, r9, rsp):
            registers = (rcx, rdx, r8, r9)
            buffer = rcx
            if counted:
                count, fmt_address = rdx, r8
                args = VaList(machine, r9) if va else Arguments(machine, registers, rsp, 3)
            else:
                count, fmt_address = None, rdx
                args = VaList(machine, r8) if va else Arguments(machine, registers, rsp, 2)
            fmt = (read_wstring(kernel, fmt_address).encode("utf-16-le").decode("utf-16-le")
                   .encode("latin-1", "replace") if wide else read_cstring(kernel, fmt_address))
            text = format_c(kernel, fmt, args, wide)
            data = text.encode("utf-16-le", "replace") if wide else text.encode("latin-1", "replace")
            unit = 2 if wide else 1
            length = len(data) // unit
            if count is None:
                kernel.write(buffer, data + b"\0" * unit)
                return length
            count &= 0xFFFFFFFFFFFFFFFF
            if length < count:
                kernel.write(buffer, data + b"\0" * unit)
                return length
            if count:
                kernel.write(buffer, data[:count * unit])  # no terminator, as MSVC's CRT
            return 0xFFFFFFFF  # -1 as an int: it did not fit

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
    "_snprintf": ("ntoskrnl.exe", _snprintf(False, True)),
    "_snwprintf": ("ntoskrnl.exe", _snprintf(True, True)),
    "_vsnprintf": ("ntoskrnl.exe", _snprintf(False, True, va=True)),
    "_vsnwprintf": ("ntoskrnl.exe", _snprintf(True, True, va=True)),
    "sprintf": ("ntoskrnl.exe", _snprintf(False, False)),
    "swprintf": ("ntoskrnl.exe", _snprintf(True, False)),
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
}
