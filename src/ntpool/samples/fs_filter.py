"""A sample file-system filter: FsRtlAllocatePoolWithTag and STATUS_INSUFFICIENT_RESOURCES.

FsRtlAllocatePoolWithTag never returns NULL: when the pool is exhausted it raises
STATUS_INSUFFICIENT_RESOURCES. The documentation tells the driver to wrap the call in
try/except; here that is Python's ``try``/``except ntpool.NtStatusError``. A failed open
is failed cleanly: nothing half-built is left behind.
"""

from ntpool import NtStatus, NtStatusError, PoolType

INSTANCE_TAG = "ItlF"  # shows "FltI": one per attached volume, nonpaged
STREAM_CONTEXT_TAG = "StlF"  # shows "FltS": one per open file, paged
NAME_TAG = "NtlF"  # shows "FltN": the file's name, paged
STREAM_CONTEXT_BYTES = 200
INSTANCE_BYTES = 256


class FsFilter:
    name = "fsfilter.sys"

    def __init__(self):
        self.instance = 0
        self.open_files: dict[int, int] = {}  # stream context -> name buffer
        self.failed_opens = 0

    def DriverEntry(self, k, RegistryPath) -> int:
        try:
            self.instance = k.FsRtlAllocatePoolWithTag(PoolType.NonPagedPool, INSTANCE_BYTES,
                                                       INSTANCE_TAG)
        except NtStatusError as error:
            return error.status
        k.RtlZeroMemory(self.instance, INSTANCE_BYTES)
        return NtStatus.STATUS_SUCCESS

    def open_file(self, k, name: str) -> int:
        """IRP_MJ_CREATE: attach a stream context holding the name; returns an NTSTATUS."""
        encoded = name.encode("utf-16-le")
        try:
            context = k.FsRtlAllocatePoolWithTag(PoolType.PagedPool, STREAM_CONTEXT_BYTES,
                                                 STREAM_CONTEXT_TAG)
        except NtStatusError as error:
            if error.status != NtStatus.STATUS_INSUFFICIENT_RESOURCES:
                raise
            self.failed_opens += 1
            return error.status
        try:
            name_buffer = k.FsRtlAllocatePoolWithTag(PoolType.PagedPool, len(encoded) + 2,
                                                     NAME_TAG)
        except NtStatusError as error:
            k.ExFreePoolWithTag(context, STREAM_CONTEXT_TAG)  # undo the half-built open
            self.failed_opens += 1
            return error.status
        k.write(name_buffer, encoded + b"\0\0")
        k.write(context, name_buffer.to_bytes(8, "little"))
        self.open_files[context] = name_buffer
        return NtStatus.STATUS_SUCCESS

    @property
    def open_count(self) -> int:
        return len(self.open_files)

    def close_file(self, k, context: int | None = None) -> None:
        """IRP_MJ_CLEANUP: free the stream context of one open file (the oldest by default)."""
        if not self.open_files:
            return
        if context is None:
            context = next(iter(self.open_files))
        name_buffer = self.open_files.pop(context)
        k.ExFreePoolWithTag(name_buffer, NAME_TAG)
        k.ExFreePoolWithTag(context, STREAM_CONTEXT_TAG)

    def DriverUnload(self, k) -> None:
        while self.open_files:
            self.close_file(k)
        if self.instance:
            k.ExFreePoolWithTag(self.instance, INSTANCE_TAG)
            self.instance = 0
