"""``ntpool bench-dump``: dump writing speed, !poolfind and !poolused times (not a test)."""

import os
import shutil
import tempfile
import time

from ..constants import PoolType

MiB = 1 << 20


def _fill(kernel, pool_bytes: int) -> int:
    """Fill about half of each pool with small and big allocations; returns how many."""
    allocate = kernel.ExAllocatePoolWithTag
    count = 0
    tags = ["Fred", "Recv", "Filt", "Irp ", "Mdl ", "File"]
    for pool_type in (PoolType.NonPagedPool, PoolType.PagedPool):
        used = 0
        while used < pool_bytes // 2:
            size = 100 + (count % 7) * 60
            address = allocate(pool_type, size, tags[count % len(tags)])
            if not address:
                break
            used += (size + 31) // 16 * 16
            count += 1
            if count % 5000 == 0:
                allocate(pool_type, 3 * 4096, "Bigg")
    return count


def run(pool_mib: int = 512, directory: str | None = None, windows=None) -> dict:
    from ..debugger.pooltag import PoolTagDatabase
    from ..debugger.session import KdSession
    from .reader import DumpReader
    from ..kernel import Kernel

    pool_bytes = pool_mib * MiB
    kernel = Kernel(nonpaged_pool_bytes=pool_bytes, paged_pool_bytes=pool_bytes,
                    windows="7" if windows is None else windows)
    allocations = _fill(kernel, pool_bytes)
    own_directory = directory is None
    directory = directory or tempfile.mkdtemp(prefix="ntpool-bench-")
    results = {"allocations": allocations}
    try:
        for kind in ("full", "kernel"):
            path = os.path.join(directory, f"bench-{kind}.dmp")
            start = time.perf_counter()
            kernel.write_dump(path, kind)
            elapsed = time.perf_counter() - start
            size = os.path.getsize(path)
            results[kind] = {"bytes": size, "seconds": elapsed, "mb_per_s": size / elapsed / 1e6}
        path = os.path.join(directory, "bench-full.dmp")
        with DumpReader(path) as reader:
            session = KdSession(reader, PoolTagDatabase.default())
            for name, command in (("poolfind", "!poolfind derF"), ("poolfind_paged", "!poolfind derF 1"),
                                  ("poolfind_wildcard", "!poolfind d?r*"), ("poolused", "!poolused 2")):
                start = time.perf_counter()
                output = session.execute(command)
                results[name] = {"seconds": time.perf_counter() - start,
                                 "lines": output.count("\n") + 1}
    finally:
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)
    return results


def run_and_report(pool_mib: int, directory: str | None, windows=None) -> int:
    if pool_mib < 1:
        raise ValueError(f"--pool-mib must be at least 1, got {pool_mib}")
    results = run(pool_mib, directory, windows)
    print(f"machine: {pool_mib} MiB of each pool, {results['allocations']:,} live allocations")
    for kind in ("full", "kernel"):
        r = results[kind]
        print(f"write {kind} dump: {r['bytes'] / MiB:,.0f} MiB in {r['seconds']:.2f} s = "
              f"{r['mb_per_s']:,.0f} MB/s (target >= 200 MB/s)")
    for name in ("poolfind", "poolfind_paged", "poolfind_wildcard"):
        r = results[name]
        print(f"!{name.split('_')[0]} ({name}) on the full dump: {r['seconds']:.2f} s, "
              f"{r['lines']:,} lines (target <= 5 s for 1 GiB)")
    print(f"!poolused on the full dump: {results['poolused']['seconds'] * 1000:.0f} ms (target < 1 s)")
    return 0
