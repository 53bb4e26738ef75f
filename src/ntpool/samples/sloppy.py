"""A sample driver with two real bugs, for poolmon and the debugger to find.

1. A leak: a cancelled request returns early without freeing its context (tag ``SlRq``).
2. An overrun: the name buffer has no room for the terminating NUL (tag ``SlNm``). When
   the name fills its chunk exactly, the NUL lands on the next chunk's POOL_HEADER, and
   the free that follows is BAD_POOL_HEADER 0x19/0x20.
"""

from ntpool import NtStatus, PoolType

REQUEST_TAG = "qRlS"  # shows "SlRq"
NAME_TAG = "mNlS"  # shows "SlNm"
REQUEST_BYTES = 480  # an IRP context with its buffers
STATUS_CANCELLED = 0xC0000120


class SloppyDriver:
    name = "sloppy.sys"

    def __init__(self):
        self.handled = 0
        self.last_name = 0  # the last name buffer (freed by now), for the debugger to look at

    def DriverEntry(self, k, RegistryPath) -> int:
        return NtStatus.STATUS_SUCCESS

    def handle_request(self, k, name: str, cancelled: bool = False) -> int:
        request = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, REQUEST_BYTES, REQUEST_TAG)
        if not request:
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES
        if cancelled:
            return STATUS_CANCELLED  # BUG: `request` is never freed on this path
        encoded = name.encode("utf-16-le")
        buffer = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, len(encoded), NAME_TAG)
        if not buffer:
            k.ExFreePoolWithTag(request, REQUEST_TAG)
            return NtStatus.STATUS_INSUFFICIENT_RESOURCES
        k.write(buffer, encoded + b"\0\0")  # BUG: two bytes past the end of the allocation
        self.last_name = buffer
        k.write(request, buffer.to_bytes(8, "little"))
        self.handled += 1
        k.ExFreePoolWithTag(buffer, NAME_TAG)
        k.ExFreePoolWithTag(request, REQUEST_TAG)
        return NtStatus.STATUS_SUCCESS

    def DriverUnload(self, k) -> None:
        pass  # nothing tracked, so the leaked requests stay behind
