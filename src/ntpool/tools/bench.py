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


WARM_UP_PAIRS = 3_000  # the segment heap's LFH serves a size from its 2040th request


def _pair_costs(kernel, size: int, tag: str, batches: int, per_batch: int,
                reference=None) -> tuple[list[float], list[float]]:
    """Pair costs per batch on ``kernel`` (and, batch by batch in turn, on ``reference``, so
    both see the same machine load)."""
    kernels = (kernel,) if reference is None else (kernel, reference)
    for machine in kernels:
        allocate, free = machine.ExAllocatePoolWithTag, machine.ExFreePoolWithTag
        for _ in range(WARM_UP_PAIRS):
            free(allocate(PoolType.NonPagedPool, size, tag), tag)
    costs: tuple[list[float], list[float]] = ([], [])
    for _ in range(batches):
        for machine, out in zip(kernels, costs):
            allocate, free = machine.ExAllocatePoolWithTag, machine.ExFreePoolWithTag
            start = time.perf_counter()
            for _ in range(per_batch):
                free(allocate(PoolType.NonPagedPool, size, tag), tag)
            out.append((time.perf_counter() - start) / per_batch)
    return costs


def _with_live(live: int, size: int, batches: int, per_batch: int, windows: str = "7") -> dict:
    """Pair cost with ``live`` allocations outstanding, and the simulator's memory per one."""
    from ..kernel import Kernel

    pool_bytes = max(64 * MiB, live * ((size + 31) // 16 * 16) * 2)
    gc.collect()
    rss_before = _rss_bytes()
    kernel = Kernel(nonpaged_pool_bytes=pool_bytes, paged_pool_bytes=16 * MiB, windows=windows)
    addresses = array("Q")  # 8 bytes a live allocation, charged to the benchmark, not the model
    allocate = kernel.ExAllocatePoolWithTag
    for _ in range(live):
        addresses.append(allocate(PoolType.NonPagedPool, size, "Live"))
    gc.collect()
    simulator_bytes = _rss_bytes() - rss_before - addresses.buffer_info()[1] * addresses.itemsize
    pool_bytes_live = live * ((size + 31) // 16 * 16)
    costs, _ = _pair_costs(kernel, size, "Fred", batches, per_batch)
    return {
        "live": live,
        "median_pair_us": statistics.median(costs) * 1e6,
        "simulator_bytes_per_live": simulator_bytes / live if live else 0.0,
        "memory_ratio": simulator_bytes / pool_bytes_live if live else 0.0,
    }


def run(quick: bool = False, windows=None) -> dict:
    """The figures ``ntpool bench`` prints. On a segment-heap Windows the small pair is also
    measured on a Windows 7 machine in the same run, batch for batch, for the ratio."""
    from ..kernel import Kernel
    from ..windows import windows_version

    version = windows_version("7" if windows is None else windows)
    per_batch = 2_000 if quick else 10_000
    batches = 10 if quick else 30
    kernel = Kernel(windows=version)
    reference = Kernel() if version.segment_heap else None
    costs, reference_costs = _pair_costs(kernel, 100, "Fred", batches, per_batch, reference)
    many = 100_000 if quick else 1_000_000
    results = {
        "windows": str(version),
        "small_pair_median_us": statistics.median(costs) * 1e6,
        "small_pair_p90_us": statistics.quantiles(costs, n=10)[-1] * 1e6,
        "live_1k": _with_live(1_000, 100, batches, per_batch, version),
        "live_many": _with_live(many, 100, batches, per_batch, version),
    }
    if reference_costs:
        results["windows7_pair_median_us"] = statistics.median(reference_costs) * 1e6
    from ..native.bench import run as native_run  # the same pair called by machine code
    results["native"] = native_run(count=5_000 if quick else 20_000, rounds=3 if quick else 5)
    return results
