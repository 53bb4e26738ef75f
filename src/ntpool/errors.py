"""The exceptions ntpool raises.

BugCheck models KeBugCheckEx: it derives from BaseException so that a driver's
``except Exception`` cannot swallow it, just as __except cannot catch a bug check.
"""

from .constants import BugCheckCode


def bugcheck_name(code: int) -> str:
    try:
        return BugCheckCode(code).name
    except ValueError:
        return f"BUGCHECK_{code:X}"


class BugCheck(BaseException):
    """The machine stopped: ``code`` and the four ``parameters`` of KeBugCheckEx."""

    def __init__(self, code: int, p1: int = 0, p2: int = 0, p3: int = 0, p4: int = 0,
                 detail: str = ""):
        self.code = code
        self.parameters = (p1 & 0xFFFFFFFFFFFFFFFF, p2 & 0xFFFFFFFFFFFFFFFF,
                           p3 & 0xFFFFFFFFFFFFFFFF, p4 & 0xFFFFFFFFFFFFFFFF)
        self.name = bugcheck_name(code)
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        params = ", ".join(f"{p:#x}" for p in self.parameters)
        text = f"*** STOP: {self.code:#010x} ({params}) {self.name}"
        return f"{text}: {self.detail}" if self.detail else text

    def __repr__(self) -> str:
        return f"BugCheck({self.code:#x}, {', '.join(hex(p) for p in self.parameters)})"


class MachineHalted(RuntimeError):
    """A call on a machine that has already bug-checked."""


ALLOWED_WHEN_HALTED = "_allowed_when_halted"


def allowed_when_halted(method):
    """Mark a machine method as inspection, which a halted machine still answers (every
    other public method of a halted machine raises MachineHalted)."""
    setattr(method, ALLOWED_WHEN_HALTED, True)
    return method


class MachineHung(RuntimeError):
    """Kernel code would spin forever at raised IRQL (a list a driver damaged into a loop
    that never returns to its head): Windows 7 hangs there, with no bug check to give."""


class NtStatusError(Exception):
    """A raised NTSTATUS, as ExRaiseStatus raises it (e.g. STATUS_INSUFFICIENT_RESOURCES)."""

    def __init__(self, status: int, message: str = ""):
        self.status = status
        from .constants import NtStatus  # leaf import; kept local to avoid a cycle at import time
        try:
            name = NtStatus(status).name
        except ValueError:
            name = f"NTSTATUS {status:#010x}"
        self.status_name = name
        super().__init__(f"{name} ({status:#010x})" + (f": {message}" if message else ""))


class AddressRangeError(ValueError):
    """A memory access whose span is not in the 64-bit address space (a negative address,
    or one that runs past 2**64): Python API misuse for a Python caller; for native code, the
    access wraps as the CPU's would (``ntpool.native`` answers it as the fault Windows takes).
    ``address`` and ``size`` are as asked; ``write`` says which access it was."""

    def __init__(self, message: str, address, size, write: bool):
        self.address, self.size, self.write = address, size, write
        super().__init__(message)


class TagError(ValueError):
    """A pool tag that is not a valid ULONG tag (Python API misuse, not a bug check)."""


class ExecutionError(RuntimeError):
    """Code the machine was asked to run and cannot: executable memory that holds no routine
    of its own, where no CPU can be made (``Kernel.cpu_maker`` unset: no ntpool.native)."""


class NdisVersionError(RuntimeError):
    """An NDIS routine called by a driver whose registered NDIS version may not call it."""


class NdisContractError(ValueError):
    """An NDIS call that breaks the routine's documented contract (e.g. NdisFreeMemory's
    Length or MemoryFlags not matching the allocation); nothing is freed or changed."""


def shown_argument(value) -> str:
    """An argument as an error message quotes it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
