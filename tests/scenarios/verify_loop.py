"""One site called three times; the third result is used unchecked."""

import ntpool

NP = ntpool.PoolType.NonPagedPool


class Loop:
    name = "loop.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def work(self, k):
        for call in ("first", "second", "third"):
            p = k.ExAllocatePoolWithTag(NP, 32, "Loop")
            if call != "third" and not p:
                return
            k.write(p, b"x")  # the third allocation's result is used unchecked
            k.ExFreePoolWithTag(p, "Loop")


DRIVERS = [Loop()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    DRIVERS[0].work(k)
