"""Processes, as far as pool quota needs them: an EPROCESS in kernel memory and its quota.

``k.create_process(name, paged_quota=..., nonpaged_quota=...)`` lays out an EPROCESS
(UniqueProcessId and ImageFileName at their Windows 7 SP1 x64 offsets) and gives it pool
quota limits (None: unlimited). ``k.current_process`` is the process the caller runs in
(the System process at boot); ``k.set_current_process(p)`` switches (KeStackAttachProcess).
Quota-charged allocations put the EPROCESS address in the POOL_HEADER's ProcessBilled and
set the quota bit of its PoolType; freeing returns the charge. As in Windows, the System
process is never charged.
"""

from dataclasses import dataclass, field

from ..constants import BASE_POOL_TYPE_MASK
from ..routines.registry import register_data, routine

EPROCESS_SIZE = 0x4D0  # Windows 7 SP1 x64
EPROCESS_UNIQUE_PROCESS_ID = 0x180
EPROCESS_IMAGE_FILE_NAME = 0x2E0  # UCHAR[15]
PROCESS_OBJECT_TYPE = 3  # DISPATCHER_HEADER.Type at the start of an EPROCESS
NONPAGED, PAGED = 0, 1


@dataclass
class Process:
    name: str
    pid: int
    address: int  # of its EPROCESS in kernel memory
    quota_limit: list = field(default_factory=lambda: [None, None])  # [nonpaged, paged]
    quota_usage: list = field(default_factory=lambda: [0, 0])
    quota_peak: list = field(default_factory=lambda: [0, 0])

    @property
    def nonpaged_quota_used(self) -> int:
        return self.quota_usage[NONPAGED]

    @property
    def paged_quota_used(self) -> int:
        return self.quota_usage[PAGED]


class QuotaLedger:
    """What each process has been charged, looked up by EPROCESS address.

    The allocator's quota fast paths make ``try_charge``'s and ``release``'s steps
    themselves, on the ``Process`` in hand (``PoolAllocator.fast_allocate_charged``,
    ``release_quota``, the segment heap's ``_release_billed``): a change to either rule is a
    change there too (tests/test_quota_fast_path.py holds them to the same answers)."""

    def __init__(self):
        self.by_address: dict[int, Process] = {}

    def try_charge(self, address: int, base_type: int, amount: int) -> bool:
        process = self.by_address[address]
        which = base_type & BASE_POOL_TYPE_MASK
        limit = process.quota_limit[which]
        used = process.quota_usage[which] + amount
        if limit is not None and used > limit:
            return False
        process.quota_usage[which] = used
        process.quota_peak[which] = max(process.quota_peak[which], used)
        return True

    def release(self, address: int, base_type: int, amount: int) -> None:
        process = self.by_address.get(address)
        if process is not None:
            process.quota_usage[base_type & BASE_POOL_TYPE_MASK] -= amount


def _quota(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int number of bytes or None, got {value!r}")
    return value


class ProcessRoutines:
    @property
    def PsInitialSystemProcess(self) -> int:
        """The System process's EPROCESS address (ntoskrnl exports the variable)."""
        return self.system_process.address

    def create_process(self, name: str, paged_quota=None, nonpaged_quota=None) -> Process:
        """A process with its EPROCESS in kernel memory and pool quota limits (bytes)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        limits = [_quota("nonpaged_quota", nonpaged_quota), _quota("paged_quota", paged_quota)]
        address = self.kernel_data.reserve(EPROCESS_SIZE, align=16)
        self.write(address, bytes([PROCESS_OBJECT_TYPE]))  # Pcb.Header.Type: ProcessObject
        pid = self._next_pid
        self._next_pid += 4
        self.write(address + EPROCESS_UNIQUE_PROCESS_ID, pid.to_bytes(8, "little"))
        image = name.encode("ascii", "replace")[:14]
        self.write(address + EPROCESS_IMAGE_FILE_NAME, image + bytes(15 - len(image)))
        process = Process(name, pid, address, limits)
        self.processes.append(process)
        self.quota_ledger.by_address[address] = process
        return process

    def set_current_process(self, process: Process) -> None:
        if not isinstance(process, Process) or process not in self.processes:
            raise ValueError(f"process must be one k.create_process returned, got {process!r}")
        self.current_process = process

    @routine("PEPROCESS PsGetCurrentProcess(VOID)")
    def PsGetCurrentProcess(self) -> int:
        """The current process's EPROCESS address."""
        return self.current_process.address


register_data("PsInitialSystemProcess", "PEPROCESS", lambda kernel: kernel.PsInitialSystemProcess)
