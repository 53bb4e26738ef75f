"""A driver with one handled and one unhandled allocation failure, and a leak on a failure path."""

import ntpool

NP = ntpool.PoolType.NonPagedPool


class Mixed:
    name = "mixed.sys"

    def DriverEntry(self, k, path):
        self.context = k.ExAllocatePoolWithTag(NP, 64, "MxCt")
        if not self.context:
            return ntpool.NtStatus.STATUS_INSUFFICIENT_RESOURCES  # handled
        return 0

    def DriverUnload(self, k):
        k.ExFreePoolWithTag(self.context, "MxCt")

    def careless(self, k):
        p = k.ExAllocatePoolWithTag(NP, 32, "MxCa")
        k.write(p, b"unchecked")  # NULL when the allocation failed
        k.ExFreePoolWithTag(p, "MxCa")

    def leaky(self, k):
        header = k.ExAllocatePoolWithTag(NP, 32, "MxHd")
        if not header:
            return
        body = k.ExAllocatePoolWithTag(NP, 32, "MxBd")
        if not body:
            return  # forgets header: a leak on the failure path
        k.ExFreePoolWithTag(body, "MxBd")
        k.ExFreePoolWithTag(header, "MxHd")


DRIVERS = [Mixed()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    DRIVERS[0].careless(k)
    DRIVERS[0].leaky(k)
