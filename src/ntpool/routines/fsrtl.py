"""The file system runtime's pool routines (ntifs.h), as methods of the machine.

FsRtlAllocatePoolWithTag is ExAllocatePoolWithTag with POOL_RAISE_IF_ALLOCATION_FAILURE:
it returns the address or raises ``NtStatusError`` (STATUS_INSUFFICIENT_RESOURCES), which a
driver catches with try/except as the documentation's try-except advice says. Only the
four documented pool types are accepted (plus the obsolete must-succeed ones, which are
bug check 0xC2/0x9A as in Windows).
"""

from ..constants import POOL_RAISE_IF_ALLOCATION_FAILURE, PoolType
from ..errors import NtStatusError
from ..tags import DEFAULT_TAG_FSRTL
from .registry import routine

DOCUMENTED_TYPES = frozenset({PoolType.NonPagedPool, PoolType.PagedPool,
                              PoolType.NonPagedPoolCacheAligned, PoolType.PagedPoolCacheAligned})
# Obsolete; accepted here only so that the allocator can bug-check them as Windows does.
MUST_SUCCEED_TYPES = frozenset({PoolType.NonPagedPoolMustSucceed,
                                PoolType.NonPagedPoolCacheAlignedMustS})


def _fsrtl_pool_type(pool_type) -> int:
    if isinstance(pool_type, bool) or not isinstance(pool_type, int):
        raise TypeError(f"PoolType must be a POOL_TYPE value, not {type(pool_type).__name__}")
    if pool_type not in DOCUMENTED_TYPES and pool_type not in MUST_SUCCEED_TYPES:
        raise ValueError(f"PoolType {pool_type} is not one of FsRtlAllocatePoolWithTag's "
                         f"documented types (NonPagedPool, PagedPool, NonPagedPoolCacheAligned, "
                         f"PagedPoolCacheAligned)")
    return int(pool_type)


class FsRtlRoutines:
    @routine("PVOID FsRtlAllocatePoolWithTag(_In_ POOL_TYPE PoolType, _In_ ULONG NumberOfBytes, "
             "_In_ ULONG Tag)")
    def FsRtlAllocatePoolWithTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """The address of uninitialized pool; raises NtStatusError(0xC000009A) on failure."""
        pool_type = _fsrtl_pool_type(PoolType)
        return self.pool.allocate_generic(pool_type | POOL_RAISE_IF_ALLOCATION_FAILURE,
                                          NumberOfBytes, Tag)

    @routine("PVOID FsRtlAllocatePool(_In_ POOL_TYPE PoolType, _In_ ULONG NumberOfBytes)")
    def FsRtlAllocatePool(self, PoolType, NumberOfBytes) -> int:
        """FsRtlAllocatePoolWithTag with the default tag 'FSrt'."""
        return self.FsRtlAllocatePoolWithTag(PoolType, NumberOfBytes, DEFAULT_TAG_FSRTL)

    @routine("PVOID FsRtlAllocatePoolWithQuotaTag(_In_ POOL_TYPE PoolType, "
             "_In_ ULONG NumberOfBytes, _In_ ULONG Tag)")
    def FsRtlAllocatePoolWithQuotaTag(self, PoolType, NumberOfBytes, Tag) -> int:
        """Charge the current process's quota; raises NtStatusError (STATUS_QUOTA_EXCEEDED or
        STATUS_INSUFFICIENT_RESOURCES) on failure."""
        pool_type = _fsrtl_pool_type(PoolType)
        va, status = self.pool.allocate_with_quota(pool_type, NumberOfBytes, Tag,
                                                   self._billed_process())
        if not va:
            raise NtStatusError(status, f"FsRtlAllocatePoolWithQuotaTag of {NumberOfBytes} "
                                        f"bytes for {self.current_process.name}")
        return va

    @routine("PVOID FsRtlAllocatePoolWithQuota(_In_ POOL_TYPE PoolType, _In_ ULONG NumberOfBytes)")
    def FsRtlAllocatePoolWithQuota(self, PoolType, NumberOfBytes) -> int:
        return self.FsRtlAllocatePoolWithQuotaTag(PoolType, NumberOfBytes, DEFAULT_TAG_FSRTL)
