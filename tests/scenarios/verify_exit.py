"""A driver whose failure paths end the process that runs it: one exits it outright (as a
crash in native code or the OOM killer would end it), one calls sys.exit."""

import os
import sys

import ntpool

NP = ntpool.PoolType.NonPagedPool


class Exits:
    name = "exits.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def steps(self, k):
        for tag in ("Ex0a", "Ex0b", "Ex0c", "Ex0d"):
            p = k.ExAllocatePoolWithTag(NP, 32, tag)
            if p:
                k.ExFreePoolWithTag(p, tag)
        gone = k.ExAllocatePoolWithTag(NP, 32, "ExDi")
        if not gone:
            os._exit(9)
        k.ExFreePoolWithTag(gone, "ExDi")
        asked = k.ExAllocatePoolWithTag(NP, 32, "ExSy")
        if not asked:
            sys.exit(3)
        k.ExFreePoolWithTag(asked, "ExSy")


DRIVERS = [Exits()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    DRIVERS[0].steps(k)
