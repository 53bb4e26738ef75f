"""The native figure of ``ntpool bench``: ExAllocatePoolWithTag + ExFreePoolWithTag pairs
called by machine code (bench.sys's loop), in microseconds per pair.

Beside it, in the same process and on the same machine, the same pair called from Python
(the ratio is the crossing's cost, whatever the host's load) and the emulated CPU's own
speed (a loop with no calls). speakeasy's figure for the same loop of the same bench.sys
comes from ``ntpool.tools.speakeasy_bench`` (in its own environment: it pins unicorn 1.0.2).
"""

import os
import statistics
import time

from ..constants import PoolType
from .build import SOURCE_DIRECTORY

TAG = 0x68636E42  # 'Bnch' in memory
BYTES = 100


def _median_us(measure, rounds: int, count: int) -> float:
    return statistics.median(measure() for _ in range(rounds)) / count * 1e6


def run(count: int = 20000, rounds: int = 5) -> dict:
    from ..kernel import Kernel
    from .machine import load_native_driver

    k = Kernel(nonpaged_pool_bytes=16 << 20, paged_pool_bytes=16 << 20)
    driver = load_native_driver(k, bench_driver())
    driver.call("AllocateAndFree", 1000, BYTES)  # warm: stubs translated, lookasides filled

    def native():
        start = time.perf_counter()
        failures = driver.call("AllocateAndFree", count, BYTES)
        elapsed = time.perf_counter() - start
        if failures:
            raise RuntimeError(f"{failures} allocations failed in the benchmark")
        return elapsed

    def python():
        allocate, free = k.ExAllocatePoolWithTag, k.ExFreePoolWithTag
        start = time.perf_counter()
        for _ in range(count):
            free(allocate(PoolType.NonPagedPool, BYTES, TAG), TAG)
        return time.perf_counter() - start

    spins = count * 50

    def spin():
        start = time.perf_counter()
        driver.call("Spin", spins)
        return time.perf_counter() - start

    results = {"native_pair_us": _median_us(native, rounds, count),
               "python_pair_us": _median_us(python, rounds, count),
               "loop_iteration_ns": _median_us(spin, rounds, spins) * 1000,
               "pairs": count, "rounds": rounds}
    return results


def bench_driver() -> str:
    return os.path.join(SOURCE_DIRECTORY, "bench.sys")
