"""Processes, as far as pool quota needs them: an EPROCESS in kernel memory and its quota.

A process's EPROCESS layout (UniqueProcessId and ImageFileName at their Windows 7 SP1 x64
offsets), its quota limits and usage, and the ledger of charges; ``routines/ps.py`` creates
processes (``k.create_process``) and has the Ps routines. ``k.current_process`` is the
process the caller runs in (the System process at boot). Quota-charged allocations put the EPROCESS address in the POOL_HEADER's ProcessBilled and
set the quota bit of its PoolType; freeing returns the charge. As in Windows, the System
process is never charged.
"""

from dataclasses import dataclass, field

from ..constants import BASE_POOL_TYPE_MASK

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
