"""A driver whose failure paths swell the memory of the process that runs it (one keeps 8 MiB
after 8 MiB, up to 2 GiB, as a driver leaking a GiB would; one makes 2 GiB in one C call), and
whose other path is handled: a campaign's memory limit must stop those runs, wherever they
are made."""

import ntpool

NP = ntpool.PoolType.NonPagedPool
HELD = []


class Swells:
    name = "swells.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def steps(self, k):
        for tag in ("Sw0a", "Sw0b"):
            p = k.ExAllocatePoolWithTag(NP, 32, tag)
            if p:
                k.ExFreePoolWithTag(p, tag)
        grown = k.ExAllocatePoolWithTag(NP, 32, "SwGr")
        if not grown:
            for _ in range(256):  # touched, so resident: 8 MiB a step
                HELD.append(b"\xa5" * (8 << 20))
        else:
            k.ExFreePoolWithTag(grown, "SwGr")
        once = k.ExAllocatePoolWithTag(NP, 32, "SwOn")
        if not once:  # 2 GiB in one C call: no thread of the run's own could interrupt it
            HELD.append(b"\x5a" * (2 << 30))
        else:
            k.ExFreePoolWithTag(once, "SwOn")


DRIVERS = [Swells()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    DRIVERS[0].steps(k)
