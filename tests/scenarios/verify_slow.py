"""Six allocation sites, each run a little slow: for killing a campaign half-way."""

import time

import ntpool

NP = ntpool.PoolType.NonPagedPool


class Slow:
    name = "slow.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def steps(self, k):
        for p, tag in ((k.ExAllocatePoolWithTag(NP, 32, "Slw0"), "Slw0"),
                       (k.ExAllocatePoolWithTag(NP, 32, "Slw1"), "Slw1"),
                       (k.ExAllocatePoolWithTag(NP, 32, "Slw2"), "Slw2"),
                       (k.ExAllocatePoolWithTag(NP, 32, "Slw3"), "Slw3"),
                       (k.ExAllocatePoolWithTag(NP, 32, "Slw4"), "Slw4"),
                       (k.ExAllocatePoolWithTag(NP, 32, "Slw5"), "Slw5")):
            if p:
                k.ExFreePoolWithTag(p, tag)


DRIVERS = [Slow()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    time.sleep(0.15)
    DRIVERS[0].steps(k)
