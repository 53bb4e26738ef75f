"""The file system runtime's pool routines (ntifs.h), as methods of the machine.

FsRtlAllocatePoolWithTag is ExAllocatePoolWithTag with POOL_RAISE_IF_ALLOCATION_FAILURE:
it returns the address or raises ``NtStatusError`` (STATUS_INSUFFICIENT_RESOURCES), which a
driver catches with try/except as the documentation's try-except advice says. ntifs.h defines
it as a macro over ExAllocatePoolWithTag, so it passes any POOL_TYPE through (NonPagedPoolNx,
POOL_COLD_ALLOCATION, ...): the four types the page lists are the ones it recommends, not a
check. The obsolete must-succeed types are served as ExAllocatePoolWithTag serves them.
"""

from ..constants import POOL_RAISE_IF_ALLOCATION_FAILURE, NtStatus
from ..errors import NtStatusError
from ..pool.allocator import VALID_POOL_TYPE_BITS, checked_pool_type
from ..tags import DEFAULT_TAG_FSRTL
from .registry import routine

_UNKNOWN_POOL_TYPE_BITS = ~VALID_POOL_TYPE_BITS  # (a negative value has them too)
STATUS_INSUFFICIENT_RESOURCES = NtStatus.STATUS_INSUFFICIENT_RESOURCES


class FsRtlRoutines:
    @routine("PVOID FsRtlAllocatePoolWithTag(_In_ POOL_TYPE PoolType, _In_ ULONG NumberOfBytes, "
             "_In_ ULONG Tag)")
    def FsRtlAllocatePoolWithTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """The address of uninitialized pool; raises NtStatusError(0xC000009A) on failure."""
        # A POOL_TYPE value first (the raise bit added to a bool would make one), checked
        # inline for the common call.
        if type(PoolType) is not int or PoolType & _UNKNOWN_POOL_TYPE_BITS:
            PoolType = checked_pool_type(PoolType)
        # ntifs.h's macro: ExAllocatePoolWithTag with the raise bit, fast path included.
        allocate = self.pool.allocate  # (loaded, then called: a specialized call, see NDIS's)
        return allocate(PoolType | POOL_RAISE_IF_ALLOCATION_FAILURE, NumberOfBytes, Tag)

    # The routines below are the ones above with a default tag, or quota. Each makes its
    # usual call itself, as the routine it is built on makes it: calling that routine would
    # cost a Python call more and, the fast path's frame above being ntpool's own, a walk out
    # of it to find the driver's call site.

    @routine("PVOID FsRtlAllocatePool(_In_ POOL_TYPE PoolType, _In_ ULONG NumberOfBytes)")
    def FsRtlAllocatePool(self, PoolType, NumberOfBytes) -> int:
        """FsRtlAllocatePoolWithTag with the default tag 'FSrt'."""
        if type(PoolType) is not int or PoolType & _UNKNOWN_POOL_TYPE_BITS:
            PoolType = checked_pool_type(PoolType)
        allocate = self.pool.allocate  # (loaded, then called: a specialized call, see NDIS's)
        return allocate(PoolType | POOL_RAISE_IF_ALLOCATION_FAILURE, NumberOfBytes, DEFAULT_TAG_FSRTL)

    @routine("PVOID FsRtlAllocatePoolWithQuotaTag(_In_ POOL_TYPE PoolType, "
             "_In_ ULONG NumberOfBytes, _In_ ULONG Tag)")
    def FsRtlAllocatePoolWithQuotaTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """Charge the current process's quota; raises NtStatusError (STATUS_QUOTA_EXCEEDED or
        STATUS_INSUFFICIENT_RESOURCES) on failure."""
        pool_type = PoolType if type(PoolType) is int and not PoolType & _UNKNOWN_POOL_TYPE_BITS \
            else checked_pool_type(PoolType)
        process = self.current_process
        if process is self.system_process:  # (charged nothing)
            # The System process is charged nothing: ExAllocatePoolWithTag's request, fast path
            # included (called from here, where it finds the driver's frame). The raise bit
            # is left off: the failure raised below names the quota routine.
            allocate = self.pool.allocate  # (loaded, then called: a specialized call, see NDIS's)
            va, status = allocate(pool_type & ~POOL_RAISE_IF_ALLOCATION_FAILURE, NumberOfBytes, Tag), \
                STATUS_INSUFFICIENT_RESOURCES
        else:
            # Charged: the allocator's quota fast path, as ExAllocatePoolWithQuotaTag's.
            allocate_charged = self.pool.allocate_charged  # (loaded, then called: a specialized call, see NDIS's)
            va, status = allocate_charged(pool_type, NumberOfBytes, Tag, process)
        if not va:
            raise self._fsrtl_quota_failure(status, NumberOfBytes)
        return va

    def _fsrtl_quota_failure(self, status: int, number_of_bytes) -> NtStatusError:
        return NtStatusError(status, f"FsRtlAllocatePoolWithQuotaTag of {number_of_bytes} "
                                     f"bytes for {self.current_process.name}")

    @routine("PVOID FsRtlAllocatePoolWithQuota(_In_ POOL_TYPE PoolType, _In_ ULONG NumberOfBytes)")
    def FsRtlAllocatePoolWithQuota(self, PoolType, NumberOfBytes) -> int:
        if type(PoolType) is int and not PoolType & _UNKNOWN_POOL_TYPE_BITS:
            process = self.current_process
            if process is self.system_process:
                allocate = self.pool.allocate  # (loaded, then called: a specialized call, see NDIS's)
                va = allocate(PoolType & ~POOL_RAISE_IF_ALLOCATION_FAILURE, NumberOfBytes, DEFAULT_TAG_FSRTL)
                if not va:
                    raise self._fsrtl_quota_failure(STATUS_INSUFFICIENT_RESOURCES, NumberOfBytes)
                return va
            allocate_charged = self.pool.allocate_charged
            va, status = allocate_charged(PoolType, NumberOfBytes, DEFAULT_TAG_FSRTL, process)
            if not va:
                raise self._fsrtl_quota_failure(status, NumberOfBytes)
            return va
        return self.FsRtlAllocatePoolWithQuotaTag(PoolType, NumberOfBytes, DEFAULT_TAG_FSRTL)
