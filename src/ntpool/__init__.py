"""ntpool: an executable, faithful model of the Windows kernel's tagged pool."""

# First: under ``python -m ntpool``, a Ctrl-C while the rest loads is noted, then one line.
from . import startup as _startup  # noqa: F401

from .constants import (
    APC_LEVEL,
    DISPATCH_LEVEL,
    HIGH_LEVEL,
    PASSIVE_LEVEL,
    BugCheckCode,
    Irql,
    NdisStatus,
    NtStatus,
    PoolFlags,
    PoolPriority,
    PoolType,
)
from .errors import (
    BugCheck,
    ExecutionError,
    MachineHalted,
    NdisContractError,
    NdisVersionError,
    NtStatusError,
    TagError,
)
from .kernel import Kernel
from . import verifier, dump  # noqa: F401,E402 - layers that attach to every Kernel
from .pool.tracker import PoolTagInfo
from .tags import PROTECTED_POOL, Tag, tag

__version__ = "0.1.0"


def _make_cpu(kernel) -> None:
    """The machine's CPU, made when executable memory must run and no compiled driver made
    one (ntpool.native, imported only then: unicorn is not loaded for machines that never
    run machine code)."""
    try:
        from .native.machine import native_machine
    except ImportError:  # no unicorn here: jump_to's ExecutionError says a CPU is needed
        return
    native_machine(kernel)


Kernel.cpu_maker = _make_cpu

__all__ = [
    "APC_LEVEL", "DISPATCH_LEVEL", "HIGH_LEVEL", "PASSIVE_LEVEL", "PROTECTED_POOL",
    "BugCheck", "BugCheckCode", "ExecutionError", "Irql", "Kernel", "MachineHalted", "NdisContractError",
    "NdisStatus", "NdisVersionError", "NtStatus",
    "NtStatusError", "PoolFlags", "PoolPriority", "PoolTagInfo", "PoolType", "Tag", "TagError",
    "tag",
]
