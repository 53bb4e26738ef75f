"""``ntpool bench-dump``: dump writing speed, !poolfind and !poolused times (not a test)."""

import os
import shutil
import subprocess
import sys
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


# Runs a program's main in this child and reports the child's own peak memory (VmHWM: unlike
# ru_maxrss it is not inherited from the forked parent, whose machine is gigabytes).
_MEASURED = """
import sys
target = sys.argv.pop(1)
sys.argv[0] = target
try:
    if target == "ntpool":
        from ntpool.cli.main import main
        code = main(sys.argv[1:])
    else:
        from volatility3.cli import main
        code = main()
except SystemExit as exit:
    code = exit.code
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    sys.stderr.write("\\nNTPOOL-PEAK-KB " + (peak[0].split()[1] if peak else "0") + "\\n")
sys.exit(code)
"""


def _child(program: str, arguments: list) -> dict:
    """Run ntpool's or volatility3's command line in a child: wall time and peak memory."""
    start = time.perf_counter()
    command = [sys.executable, "-c", _MEASURED, program, *arguments]
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    error = completed.stderr.decode(errors="replace")
    if completed.returncode:
        raise RuntimeError(f"{program} {' '.join(arguments[:3])}... failed: {error[-300:]}")
    peak = [line for line in error.splitlines() if line.startswith("NTPOOL-PEAK-KB ")]
    return {"seconds": seconds, "peak_rss_mib": int(peak[-1].split()[1]) / 1024 if peak else None,
            "lines": completed.stdout.count(b"\n"), "output": completed.stdout}


def _poolfind_everything(path: str) -> dict:
    """``!poolfind *`` over both pools, in a fresh process (`ntpool kd`), with its memory."""
    result = _child("ntpool", ["kd", "-z", path, "-c", "!poolfind * 0; !poolfind * 1"])
    result["chunks"] = result.pop("output").count(b" size: ")
    return result


def _volatility_everything(path: str) -> dict | None:
    """volatility3's scan for every tag (ntpool's plugin on its PoolScanner), when installed."""
    try:
        import volatility3.cli  # noqa: F401
    except ImportError:
        return None
    from . import isf

    result = _child("vol", ["--offline", "-q", "-r", "json", "-f", path, "-s", isf.symbols_beside(path),
                            "-p", isf.package_plugins_directory(), "ntpool.tagscan"])
    result["hits"] = result.pop("output").count(b'"Tag":')
    return result


def sparse(gib: int, directory: str) -> dict:
    """A full dump of a machine with ``gib`` GiB of mostly untouched memory, scanned."""
    from ..kernel import Kernel

    kernel = Kernel(nonpaged_pool_bytes=64 * MiB, paged_pool_bytes=64 * MiB,
                    physical_memory_bytes=gib << 30)
    allocations = _fill(kernel, 16 * MiB)
    path = os.path.join(directory, "bench-sparse.dmp")
    kernel.write_dump(path, "full")
    del kernel
    result = {"bytes": os.path.getsize(path), "allocations": allocations,
              "poolfind_all": _poolfind_everything(path),
              "poolfind_tag": _child("ntpool", ["kd", "-z", path, "-c", "!poolfind derF 0; !poolfind derF 1"])}
    result["poolfind_tag"].pop("output")
    os.unlink(path)
    return result


def run(pool_mib: int = 512, directory: str | None = None, windows=None, volatility: bool = True,
        sparse_gib: int = 4) -> dict:
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
        results["poolfind_all"] = _poolfind_everything(path)
        results["volatility"] = _volatility_everything(path) if volatility else None
        for kind in ("full", "kernel"):
            os.unlink(os.path.join(directory, f"bench-{kind}.dmp"))
        del kernel
        results["sparse"] = sparse(sparse_gib, directory) if sparse_gib else None
    finally:
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)
    return results


def run_and_report(pool_mib: int, directory: str | None, windows=None, volatility: bool = True,
                   sparse_gib: int = 4) -> int:
    if pool_mib < 1:
        raise ValueError(f"--pool-mib must be at least 1, got {pool_mib}")
    if sparse_gib < 0:
        raise ValueError(f"--sparse-gib must be 0 (skip) or more, got {sparse_gib}")
    results = run(pool_mib, directory, windows, volatility, sparse_gib)
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
    every = results["poolfind_all"]
    print(f"!poolfind * over both pools of the full dump (ntpool kd, a fresh process): "
          f"{every['seconds']:.2f} s, {every['chunks']:,} chunks, peak memory "
          f"{every['peak_rss_mib']:,.0f} MiB (target <= 5 s for 1 GiB)")
    vol = results["volatility"]
    if vol is None:
        print("volatility3: not run (not installed, or --no-volatility)")
    else:
        print(f"volatility3 scan for every tag (vol ... ntpool.tagscan) on the same dump: "
              f"{vol['seconds']:.2f} s, {vol['hits']:,} hits, peak memory {vol['peak_rss_mib']:,.0f} MiB: "
              f"!poolfind * is {vol['seconds'] / every['seconds']:.1f}x faster (target >= 10x)")
    sparse_result = results["sparse"]
    if sparse_result:
        for name, label in (("poolfind_all", "!poolfind *"), ("poolfind_tag", "!poolfind derF")):
            r = sparse_result[name]
            print(f"{label} over both pools of a sparse {sparse_result['bytes'] / (1 << 30):.1f} GiB "
                  f"full dump: {r['seconds']:.2f} s, peak memory {r['peak_rss_mib']:,.0f} MiB")
    return 0
