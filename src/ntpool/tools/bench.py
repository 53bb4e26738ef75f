"""Benchmarks of the allocation fast path (run with ``ntpool bench``; not part of the tests)."""

import gc
import os
import statistics
import time
from array import array

from ..constants import PoolType

MiB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pair_costs(kernel, size: int, tag: str, batches: int, per_batch: int) -> list[float]:
    allocate = kernel.ExAllocatePoolWithTag
    free = kernel.ExFreePoolWithTag
    costs = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(per_batch):
            free(allocate(PoolType.NonPagedPool, size, tag), tag)
        costs.append((time.perf_counter() - start) / per_batch)
    return costs


def _with_live(live: int, size: int, batches: int, per_batch: int) -> dict:
    """Pair cost with ``live`` allocations outstanding, and the simulator's memory per one."""
    from ..kernel import Kernel

    pool_bytes = max(64 * MiB, live * ((size + 31) // 16 * 16) * 2)
    gc.collect()
    rss_before = _rss_bytes()
    kernel = Kernel(nonpaged_pool_bytes=pool_bytes, paged_pool_bytes=16 * MiB)
    addresses = array("Q")  # 8 bytes a live allocation, charged to the benchmark, not the model
    allocate = kernel.ExAllocatePoolWithTag
    for _ in range(live):
        addresses.append(allocate(PoolType.NonPagedPool, size, "Live"))
    gc.collect()
    simulator_bytes = _rss_bytes() - rss_before - addresses.buffer_info()[1] * addresses.itemsize
    pool_bytes_live = live * ((size + 31) // 16 * 16)
    costs = _pair_costs(kernel, size, "Fred", batches, per_batch)
    return {
        "live": live,
        "median_pair_us": statistics.median(costs) * 1e6,
        "simulator_bytes_per_live": simulator_bytes / live if live else 0.0,
        "memory_ratio": simulator_bytes / pool_bytes_live if live else 0.0,
    }


def run(quick: bool = False) -> dict:
    from ..kernel import Kernel

    per_batch = 2_000 if quick else 10_000
    batches = 10 if quick else 30
    kernel = Kernel()
    costs = _pair_costs(kernel, 100, "Fred", batches, per_batch)
    many = 100_000 if quick else 1_000_000
    return {
        "small_pair_median_us": statistics.median(costs) * 1e6,
        "small_pair_p90_us": statistics.quantiles(costs, n=10)[-1] * 1e6,
        "live_1k": _with_live(1_000, 100, batches, per_batch),
        "live_many": _with_live(many, 100, batches, per_batch),
    }
