"""``ntpool bench-campaign``: the campaign engine's speed-up and per-run overhead.

A campaign of short scenario runs (a driver allocating and freeing a few hundred chunks, one
fault seed per run) runs serially, on a local process pool, and (with dask.distributed
installed) on a LocalCluster of worker processes; the per-run overhead is the serial
engine's time per run minus the time of calling the run function directly.
"""

from __future__ import annotations

import time

from .engine import Engine, default_jobs, execute, keyed
from .runs import scenario_task

SHORT_SCENARIO = '''
import ntpool

class Short:
    name = "short.sys"
    def DriverEntry(self, k, path):
        return 0
    def DriverUnload(self, k):
        pass

DRIVERS = [Short()]
KERNEL = dict(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)

def workload(k, rng):
    live = []
    for _ in range(300):
        p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, rng.randrange(16, 500), "Shrt")
        if p:
            live.append(p)
        if len(live) > 20:
            k.ExFreePoolWithTag(live.pop(rng.randrange(len(live))), "Shrt")
    for p in live:
        k.ExFreePoolWithTag(p, "Shrt")
'''


def short_tasks(runs: int, windows: str | None = None) -> list[dict]:
    content = {"name": "short", "path": "<bench-campaign>", "source": SHORT_SCENARIO}
    return [keyed(scenario_task(content, seed=1, plan={"random": {"probability": 0.01, "seed": s}},
                                windows=windows))
            for s in range(runs)]


def measure(runs: int = 1000, jobs: int | None = None, dask: bool = True,
            windows: str | None = None) -> dict:
    tasks = short_tasks(runs, windows)
    figures: dict = {"runs": runs, "jobs": jobs or default_jobs(), "windows": windows}
    start = time.perf_counter()
    direct = [execute(task) for task in tasks[: max(1, runs // 10)]]
    figures["direct_per_run_ms"] = (time.perf_counter() - start) * 1000 / len(direct)
    start = time.perf_counter()
    serial = Engine(jobs=1).run(tasks)
    figures["serial_s"] = time.perf_counter() - start
    start = time.perf_counter()
    local = Engine(jobs=jobs).run(tasks)
    figures["local_s"] = time.perf_counter() - start
    figures["same_results"] = serial == local
    figures["overhead_per_run_ms"] = max(0.0, figures["serial_s"] * 1000 / runs
                                         - figures["direct_per_run_ms"])
    if dask:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            figures["dask_s"] = None
        else:
            import logging

            logging.getLogger("distributed").setLevel(logging.CRITICAL)  # shutdown chatter
            with LocalCluster(n_workers=figures["jobs"], threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                Engine(dask=client).run(tasks[:10])  # workers import ntpool first
                start = time.perf_counter()
                on_dask = Engine(dask=client).run(tasks)
                figures["dask_s"] = time.perf_counter() - start
                figures["same_results"] = figures["same_results"] and on_dask == serial
    return figures


def run_and_report(runs: int, jobs: int | None, windows: str | None = None) -> int:
    f = measure(runs, jobs, windows=windows)
    on = f" on Windows {windows}" if windows else ""
    print(f"{f['runs']:,} short runs{on} ({f['direct_per_run_ms']:.1f} ms each, called directly)")
    print(f"serial: {f['serial_s']:.2f} s; engine overhead per run {f['overhead_per_run_ms']:.2f} ms "
          f"(target < 20 ms)")
    print(f"local pool of {f['jobs']} processes: {f['local_s']:.2f} s, "
          f"{f['serial_s'] / f['local_s']:.2f}x serial (target >= 1.8x on 2 cores)")
    if f.get("dask_s"):
        print(f"Dask LocalCluster of {f['jobs']} workers: {f['dask_s']:.2f} s, "
              f"{f['serial_s'] / f['dask_s']:.2f}x serial (target >= 1.6x)")
    else:
        print("Dask: not installed (pip install 'ntpool[dask]')")
    print(f"results identical across executors: {f['same_results']}")
    return 0 if f["same_results"] else 1
