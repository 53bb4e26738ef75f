"""A driver whose failure path passes the memory limit only for a moment (it makes a 320 MiB
buffer, touched, and lets it go at once): a campaign's memory limit must stop that run as it
stops one that keeps what it takes, however seldom its watch reads the run's memory."""

import ntpool

NP = ntpool.PoolType.NonPagedPool


class Spikes:
    name = "spikes.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def steps(self, k):
        p = k.ExAllocatePoolWithTag(NP, 32, "SpOk")
        if p:
            k.ExFreePoolWithTag(p, "SpOk")
        spike = k.ExAllocatePoolWithTag(NP, 32, "SpUp")
        if not spike:
            buffer = b"\xa5" * (256 << 20)  # touched, so resident, and let go at once
            del buffer
        else:
            k.ExFreePoolWithTag(spike, "SpUp")


DRIVERS = [Spikes()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def workload(k, rng):
    DRIVERS[0].steps(k)
