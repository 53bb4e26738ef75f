"""x64 structured exception handling, as RtlDispatchException and RtlUnwindEx do it.

Every x64 function that allocates stack or saves registers has a RUNTIME_FUNCTION in
.pdata and UNWIND_INFO in .xdata; a function with a ``__try`` names a language handler,
``__C_specific_handler``, whose handler data is a scope table: (BeginAddress, EndAddress,
HandlerAddress, JumpTarget) per ``__try`` (HandlerAddress 1 = EXCEPTION_EXECUTE_HANDLER,
otherwise the filter funclet; JumpTarget 0 = a ``__finally``).

Dispatch walks the frames from the faulting context, virtually unwinding each through its
unwind codes. In a frame whose handler is __C_specific_handler the scope records that
cover the frame's instruction pointer are tried in order: a filter is called as native
code with (EXCEPTION_POINTERS *, EstablisherFrame) and its verdict obeyed (execute the
handler, continue the search, or continue execution). To execute a handler, the frames in
between are unwound (their ``__finally`` blocks run with AbnormalTermination true) and the
CPU resumes at JumpTarget in the handler's frame with rax = the exception code, as
RtlUnwindEx leaves it.

No handler: SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (0x7E: code, address, exception record,
context record) in a system thread (DriverEntry, DriverUnload), SYSTEM_SERVICE_EXCEPTION
(0x3B: code, address, context record, 0) while serving a request from user mode, and
KMODE_EXCEPTION_NOT_HANDLED (0x1E: code, address, parameter 0, parameter 1) otherwise.
"""

import bisect
import struct

from ..packing import x64_struct
from ..constants import BugCheckCode
from . import cpu as cpu_module

UNW_FLAG_EHANDLER, UNW_FLAG_UHANDLER, UNW_FLAG_CHAININFO = 1, 2, 4
EXCEPTION_NONCONTINUABLE = 1
EXCEPTION_UNWINDING = 2
EXCEPTION_EXECUTE_HANDLER = 1
EXCEPTION_CONTINUE_EXECUTION = -1
SYSTEM_THREAD_EXCEPTION_NOT_HANDLED = 0x7E
SYSTEM_SERVICE_EXCEPTION = 0x3B
MAX_FRAMES = 256
REGISTERS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# CONTEXT (x64): where each register lives.
CONTEXT_FLAGS = 0x30
CONTEXT_EFLAGS = 0x44
CONTEXT_RAX = 0x78  # then rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15, rip
CONTEXT_FULL = 0x10000B
_Q = x64_struct("<Q")


class UnwindError(Exception):
    """The unwind data of a frame cannot be followed (the dispatch ends there)."""


class Frame:
    """One function's frame during a walk: its context and what its unwind data says."""

    def __init__(self, driver, function, context, establisher, handler, handler_data):
        self.driver = driver
        self.function = function  # (begin, end, unwind) RVAs
        self.context = context  # registers in this frame (rip inside the function)
        self.establisher = establisher
        self.handler = handler  # absolute address of the language handler, or 0
        self.handler_data = handler_data  # RVA of its data (the scope table)


def functions_of(driver) -> list:
    """The driver's RUNTIME_FUNCTIONs, sorted (read once, checked against the image)."""
    table = getattr(driver, "_runtime_functions", None)
    if table is None:
        image = driver.image
        rva, size = image.pdata
        raw = bytearray(image.size_of_image)
        for section in image.sections:
            raw[section.rva:section.rva + len(section.raw)] = section.raw
        table = []
        for offset in range(rva, rva + size - 11, 12):
            begin, end, unwind = struct.unpack_from("<III", raw, offset)
            if begin < end <= image.size_of_image and unwind < image.size_of_image:
                table.append((begin, end, unwind))
        table.sort()
        driver._runtime_functions = table
        driver._runtime_begins = [entry[0] for entry in table]
    return table


def lookup_function(driver, rva: int):
    table = functions_of(driver)
    index = bisect.bisect_right(driver._runtime_begins, rva) - 1
    if index >= 0 and table[index][0] <= rva < table[index][1]:
        return table[index]
    return None


def _read(machine, address: int, size: int) -> bytes:
    return machine.kernel.read(address, size)


def _q(machine, address: int) -> int:
    return _Q.unpack(_read(machine, address, 8))[0]


def _image(machine, driver, rva: int, size: int) -> bytes:
    """``size`` bytes of the driver's image at ``rva``: unwind data that points outside its
    own image cannot be followed."""
    if not 0 <= rva <= rva + size <= driver.image_size:
        raise UnwindError(f"unwind data at RVA {rva:#x} ({size} bytes) is outside the image")
    return _read(machine, driver.image_base + rva, size)


def stack_limits() -> tuple[int, int]:
    top = cpu_module.KERNEL_STACK_TOP
    return top - cpu_module.KERNEL_STACK_SIZE, top


def _stack_q(machine, address: int) -> int:
    """A saved register or return address on the kernel stack. Unwind data that leads off
    the stack is what RtlDispatchException calls an invalid stack (EXCEPTION_STACK_INVALID):
    the search ends there, the exception unhandled."""
    low, high = stack_limits()
    if not low <= address <= high - 8:
        raise UnwindError(f"the unwind leads off the kernel stack (to {address:#x})")
    return _q(machine, address)


def virtual_unwind(machine, driver, function, context: dict):
    """(caller's context, establisher frame, handler address, handler data RVA, flags)."""
    base = driver.image_base
    begin = function[0]
    offset = context["rip"] - base - begin
    unwind_rva = function[2]
    caller = dict(context)
    handler = handler_data = 0
    flags_seen = 0
    establisher = None
    first = True
    for _ in range(32):
        header = _image(machine, driver, unwind_rva, 4)
        version_flags, prolog_size, count, frame = header
        flags = version_flags >> 3
        frame_register, frame_offset = frame & 0xF, frame >> 4
        codes = _image(machine, driver, unwind_rva + 4, 2 * count)
        if first:
            if frame_register and (offset >= prolog_size or _fp_set(codes, count, offset)):
                establisher = caller[REGISTERS[frame_register]] - 16 * frame_offset
            else:
                establisher = caller["rsp"]
            low, high = stack_limits()
            if not low <= establisher <= high or establisher & 7:
                raise UnwindError(f"establisher frame {establisher:#x} is not on the kernel "
                                  f"stack or not aligned")
            if flags & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER):
                tail = unwind_rva + 4 + 2 * (count + (count & 1))
                handler = base + struct.unpack("<I", _image(machine, driver, tail, 4))[0]
                handler_data = tail + 4
                flags_seen = flags
        index = 0
        while index < count:
            code_offset, op = codes[2 * index], codes[2 * index + 1]
            operation, info = op & 0xF, op >> 4
            # Slots each code takes: UWOP_ALLOC_LARGE 2 or 3, SAVE_NONVOL(_FAR) 2 / 3,
            # SAVE_XMM128(_FAR) 2 / 3, the others 1.
            slots = 3 if operation in (5, 9) or (operation == 1 and info) else \
                2 if operation in (1, 4, 8) else 1
            if index + slots > count:
                raise UnwindError(f"unwind code {operation} needs {slots} slots, past the "
                                  f"{count} the unwind info has")
            applies = not first or code_offset <= offset or offset >= prolog_size
            if operation == 0:  # UWOP_PUSH_NONVOL
                if applies:
                    caller[REGISTERS[info]] = _stack_q(machine, caller["rsp"])
                    caller["rsp"] += 8
            elif operation == 1:  # UWOP_ALLOC_LARGE
                if info == 0:
                    size = struct.unpack_from("<H", codes, 2 * index + 2)[0] * 8
                else:
                    size = struct.unpack_from("<I", codes, 2 * index + 2)[0]
                if applies:
                    caller["rsp"] += size
            elif operation == 2:  # UWOP_ALLOC_SMALL
                if applies:
                    caller["rsp"] += info * 8 + 8
            elif operation == 3:  # UWOP_SET_FPREG
                if applies:
                    caller["rsp"] = caller[REGISTERS[frame_register]] - 16 * frame_offset
            elif operation == 4:  # UWOP_SAVE_NONVOL
                slot = struct.unpack_from("<H", codes, 2 * index + 2)[0] * 8
                if applies:
                    caller[REGISTERS[info]] = _stack_q(machine, caller["rsp"] + slot)
            elif operation == 5:  # UWOP_SAVE_NONVOL_FAR
                slot = struct.unpack_from("<I", codes, 2 * index + 2)[0]
                if applies:
                    caller[REGISTERS[info]] = _stack_q(machine, caller["rsp"] + slot)
            elif operation in (8, 9):  # UWOP_SAVE_XMM128(_FAR): no integer register
                pass
            elif operation == 10:  # UWOP_PUSH_MACHFRAME
                if applies:
                    if info:
                        caller["rsp"] += 8
                    caller["rip"] = _stack_q(machine, caller["rsp"])
                    caller["rsp"] = _stack_q(machine, caller["rsp"] + 24)
                    return caller, establisher, handler, handler_data, flags_seen
            else:
                raise UnwindError(f"unknown unwind operation {operation}")
            index += slots
        if flags & UNW_FLAG_CHAININFO:
            tail = unwind_rva + 4 + 2 * (count + (count & 1))
            _, _, unwind_rva = struct.unpack("<III", _image(machine, driver, tail, 12))
            first = False
            continue
        break
    caller["rip"] = _stack_q(machine, caller["rsp"])
    caller["rsp"] += 8
    return caller, establisher, handler, handler_data, flags_seen


def _fp_set(codes: bytes, count: int, offset: int) -> bool:
    for index in range(count):
        if codes[2 * index + 1] & 0xF == 3 and codes[2 * index] <= offset:
            return True
    return False


def is_c_specific_handler(machine, handler: int, driver=None) -> bool:
    """Whether ``handler`` is __C_specific_handler (through the driver's import thunk; a
    handler or thunk slot outside the driver's image is not)."""
    stub = machine.bindings.stub_of.get("__C_specific_handler")
    if not stub or not handler:
        return False
    if handler == stub:
        return True
    driver = driver or machine.driver_at(handler)
    if driver is None or not driver.mapped.contains(handler):
        return False
    code = _image(machine, driver, handler - driver.image_base, 6)
    if code[:2] == b"\xFF\x25":  # jmp [rip+disp32]
        slot = handler + 6 + struct.unpack("<i", code[2:6])[0]
        return driver.mapped.contains(slot) and \
            _Q.unpack(_image(machine, driver, slot - driver.image_base, 8))[0] == stub
    return False


def scopes(machine, frame: Frame) -> list:
    """The frame's scope table (as many records as its count says and the image holds)."""
    driver = frame.driver
    count = struct.unpack("<I", _image(machine, driver, frame.handler_data, 4))[0]
    count = max(0, min(count, 1024, (driver.image_size - frame.handler_data - 4) // 16))
    data = _image(machine, driver, frame.handler_data + 4, 16 * count)
    return [struct.unpack_from("<IIII", data, 16 * index) for index in range(count)]


def walk(machine, context: dict):
    """The frames from ``context`` outwards, while they are in a loaded native image."""
    current = dict(context)
    for _ in range(MAX_FRAMES):
        rip = current["rip"]
        driver = machine.driver_at(rip)
        if driver is None:
            return
        function = lookup_function(driver, rip - driver.image_base)
        if function is None:  # a leaf function: the return address is at [rsp]
            frame = Frame(driver, None, current, current["rsp"], 0, 0)
            caller = dict(current)
            caller["rip"] = _stack_q(machine, current["rsp"])
            caller["rsp"] += 8
        else:
            caller, establisher, handler, data, _ = virtual_unwind(machine, driver, function, current)
            frame = Frame(driver, function, current, establisher, handler, data)
        yield frame
        current = caller


def write_records(machine, code: int, address: int, parameters, context: dict, flags: int = 0):
    kernel = machine.kernel
    parameters = tuple(parameters)[:15]
    record = struct.pack("<IIQQI4x", code & 0xFFFFFFFF, flags, 0, address, len(parameters))
    record += b"".join(_Q.pack(p & 0xFFFFFFFFFFFFFFFF) for p in parameters)
    kernel.write(cpu_module.EXCEPTION_RECORD_VA, record.ljust(0x98, b"\0"))
    image = bytearray(0x4D0)
    struct.pack_into("<I", image, CONTEXT_FLAGS, CONTEXT_FULL)
    struct.pack_into("<I", image, CONTEXT_EFLAGS, context.get("rflags", 0x202) & 0xFFFFFFFF)
    for index, name in enumerate(REGISTERS):
        struct.pack_into("<Q", image, CONTEXT_RAX + 8 * index, context[name] & 0xFFFFFFFFFFFFFFFF)
    struct.pack_into("<Q", image, CONTEXT_RAX + 8 * 16, context["rip"])
    kernel.write(cpu_module.CONTEXT_VA, bytes(image))
    kernel.write(cpu_module.EXCEPTION_POINTERS_VA,
                 struct.pack("<QQ", cpu_module.EXCEPTION_RECORD_VA, cpu_module.CONTEXT_VA))


def raise_exception(machine, context: dict, code: int, parameters, thread, address=None) -> int:
    """Dispatch an exception raised in native code; returns where the CPU resumes."""
    address = context["rip"] if address is None else address
    write_records(machine, code, address, parameters, context)
    frames = []
    try:
        for frame in walk(machine, context):
            frames.append(frame)
            if not frame.handler or not is_c_specific_handler(machine, frame.handler, frame.driver):
                continue
            rva = frame.context["rip"] - frame.driver.image_base
            for index, (begin, end, filter_rva, target) in enumerate(scopes(machine, frame)):
                if not begin <= rva < end or not target:
                    continue
                if filter_rva == EXCEPTION_EXECUTE_HANDLER:
                    verdict = EXCEPTION_EXECUTE_HANDLER
                else:
                    verdict = machine.call(frame.driver.image_base + filter_rva,
                                           (cpu_module.EXCEPTION_POINTERS_VA, frame.establisher),
                                           frame.driver) & 0xFFFFFFFF
                    verdict = verdict - (1 << 32) if verdict & 0x80000000 else verdict
                if verdict == EXCEPTION_CONTINUE_EXECUTION:
                    machine.cpu.write_context(context)
                    return context["rip"]
                if verdict > 0:
                    return _unwind_to(machine, frames, index, target, code)
                # 0: EXCEPTION_CONTINUE_SEARCH
    except UnwindError:
        pass
    return _unhandled(machine, context, code, address, parameters, thread)


def _unwind_to(machine, frames: list, scope_index: int, target: int, code: int) -> int:
    """Run the __finally blocks between the exception and the handler; resume at it."""
    kernel = machine.kernel
    kernel_record = cpu_module.EXCEPTION_RECORD_VA
    flags = struct.unpack("<I", kernel.read(kernel_record + 4, 4))[0]
    kernel.write(kernel_record + 4, struct.pack("<I", flags | EXCEPTION_UNWINDING))
    handler_frame = frames[-1]
    for frame in frames:
        if not frame.handler or not is_c_specific_handler(machine, frame.handler, frame.driver):
            continue
        rva = frame.context["rip"] - frame.driver.image_base
        records = scopes(machine, frame)
        limit = scope_index if frame is handler_frame else len(records)
        for begin, end, handler_rva, jump in records[:limit]:
            if begin <= rva < end and not jump and handler_rva:
                # A termination handler: (AbnormalTermination = TRUE, EstablisherFrame).
                machine.call(frame.driver.image_base + handler_rva, (1, frame.establisher),
                             frame.driver)
    resume = dict(handler_frame.context)
    resume["rip"] = handler_frame.driver.image_base + target
    resume["rax"] = code & 0xFFFFFFFF
    machine.cpu.write_context(resume)
    return resume["rip"]


def _unhandled(machine, context, code, address, parameters, thread) -> int:
    kernel = machine.kernel
    where = machine.describe(address)
    code &= 0xFFFFFFFF
    detail = f"exception {code:#010x} at {where} not handled"
    machine.location = address
    params = tuple(parameters) + (0, 0)
    if thread == "system":
        kernel.KeBugCheckEx(SYSTEM_THREAD_EXCEPTION_NOT_HANDLED, code, address,
                            cpu_module.EXCEPTION_RECORD_VA, cpu_module.CONTEXT_VA,
                            detail=detail + " in a system thread")
    if thread == "service":
        kernel.KeBugCheckEx(SYSTEM_SERVICE_EXCEPTION, code, address, cpu_module.CONTEXT_VA, 0,
                            detail=detail + " in a system service")
    kernel.KeBugCheckEx(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, code, address, params[0],
                        params[1], detail=detail)
    raise AssertionError("unreachable")
