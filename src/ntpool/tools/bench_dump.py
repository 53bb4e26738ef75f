"""``ntpool bench-dump``: dump writing speed, !poolfind and !poolused times (not a test)."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ..constants import PoolType
from ..dump import isf

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
    import resource  # the largest peak of the processes it forked (ntpool's scan workers)
    sys.stderr.write("NTPOOL-WORKERS-PEAK-KB %d\\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


# The directory this ntpool package was imported from: a child imports the same ntpool,
# whether it is installed or run from a source tree (PYTHONPATH=src, pytest's pythonpath).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(program: str, arguments: list) -> dict:
    """Run ntpool's or volatility3's command line in a child: wall time and peak memory."""
    start = time.perf_counter()
    command = [sys.executable, "-c", _MEASURED, program, *arguments]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        path for path in (_PACKAGE_PARENT, environment.get("PYTHONPATH")) if path)
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment)
    seconds = time.perf_counter() - start
    error = completed.stderr.decode(errors="replace")
    if completed.returncode:
        raise RuntimeError(f"{program} {' '.join(arguments[:3])}... failed: {error[-300:]}")
    peak = [line for line in error.splitlines() if line.startswith("NTPOOL-PEAK-KB ")]
    workers = [line for line in error.splitlines() if line.startswith("NTPOOL-WORKERS-PEAK-KB ")]
    return {"seconds": seconds, "peak_rss_mib": int(peak[-1].split()[1]) / 1024 if peak else None,
            "workers_peak_rss_mib": int(workers[-1].split()[1]) / 1024 if workers else 0.0,
            "lines": completed.stdout.count(b"\n"), "output": completed.stdout}


def _memory(result: dict) -> tuple[str, float]:
    """A fresh process's peak memory as the report says it, and the total held to the goal: its
    own peak, plus each scan worker's (forked: the parent's pages they share are counted in
    each, so the total is an upper bound)."""
    own, worker = result["peak_rss_mib"], result.get("workers_peak_rss_mib") or 0.0
    if not worker:
        return f"peak memory {own:,.0f} MiB", own
    from ..debugger.forked import MAX_PROCESSES, usable_cpus
    workers = min(usable_cpus(), MAX_PROCESSES) - 1
    total = own + workers * worker
    return (f"peak memory {own:,.0f} MiB, and {workers} scan worker{'s' * (workers > 1)} at most {worker:,.0f} MiB each (the "
            f"parent's pages they share counted in each): at most {total:,.0f} MiB together"), total


def _poolfind_everything(path: str) -> dict:
    """``!poolfind *`` over both pools, in a fresh process (`ntpool kd`), with its memory."""
    result = _child("ntpool", ["kd", "-z", path, "-c", "!poolfind * 0; !poolfind * 1"])
    result["chunks"] = result.pop("output").count(b" previous size: ")  # one per chunk line
    return result


def _poolfind_tag(path: str, tag: str) -> dict:
    """``!poolfind TAG`` over both pools, in a fresh process, with its memory."""
    result = _child("ntpool", ["kd", "-z", path, "-c", f"!poolfind {tag} 0; !poolfind {tag} 1"])
    result["chunks"] = result.pop("output").count(b" previous size: ")
    return result


def _volatility_everything(path: str) -> dict | None:
    """volatility3's scan for every tag (ntpool's plugin on its PoolScanner), when installed."""
    try:
        import volatility3.cli  # noqa: F401
    except ImportError:
        return None
    result = _child("vol", ["--offline", "-q", "-r", "json", "-f", path, "-s", isf.symbols_beside(path),
                            "-p", isf.package_plugins_directory(), "ntpool.tagscan"])
    result["hits"] = result.pop("output").count(b'"Tag":')
    return result


def _cpu_with_workers() -> tuple[float, float]:
    """CPU seconds of this process and of the processes it forked and reaped (the scan's
    workers: see debugger.forked), the latter apart."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = children.ru_utime + children.ru_stime
    return time.process_time() + workers, workers


class _Output:
    """What ``ntpool kd``'s standard output would be handed, encoded as it writes it (UTF-8)
    and counted: the whole output is made, and nothing the user would not see is added (a
    count of its lines cost a fifth as much again as making it)."""

    def __init__(self):
        self.bytes = 0

    def write(self, text: str) -> None:
        self.bytes += len(text.encode("utf-8", "surrogateescape"))


def _scan_in_process(path: str, commands: list[str], repeats: int = 3, processes: int | None = None) -> dict:
    """The commands' time in this process, the median of ``repeats`` runs each on a newly
    opened dump, their output consumed as ``ntpool kd`` consumes it (each piece written as it
    comes, a newline after each command, to an ``_Output``; CPU time: this process's and its
    scan workers'); and the pool pages the scans read. ``processes``: how many share a pool's
    scan (0: this one alone, as when no processor is free; None: as kd decides)."""
    from ..debugger import session as kd
    from ..debugger.poolscan import PoolFinder
    from ..debugger.pooltag import PoolTagDatabase
    from ..debugger.session import KdSession
    from ..dump.reader import DumpReader

    pooltags = PoolTagDatabase.default()
    runs = []
    chosen, kd.PARALLEL_PROCESSES = kd.PARALLEL_PROCESSES, processes if processes is not None else kd.PARALLEL_PROCESSES
    try:
        for _ in range(repeats):
            wall, (cpu, workers) = time.perf_counter(), _cpu_with_workers()
            output = _Output()
            with DumpReader(path) as reader:
                session = KdSession(reader, pooltags)
                for command in commands:
                    for piece in session.stream(command):  # as ntpool kd writes it (cli.kd.run_script)
                        output.write(piece)
                    output.write("\n")
            cpu_after, workers_after = _cpu_with_workers()
            runs.append((time.perf_counter() - wall, cpu_after - cpu, workers_after - workers))
    finally:
        kd.PARALLEL_PROCESSES = chosen
    with DumpReader(path) as reader:
        big = KdSession(reader, pooltags).big_pages()
        pages = sum(count for pool in reader.pool_ranges()
                    for _, _, count in PoolFinder(reader, pool, big).runs())
    return {"seconds": statistics.median(r[0] for r in runs),
            "cpu_seconds": statistics.median(r[1] for r in runs),
            "workers_cpu_seconds": statistics.median(r[2] for r in runs), "output_bytes": output.bytes,
            "pool_pages": pages}


def _write_filled(path: str, pool_mib: int, kind: str = "full", **machine) -> int:
    from ..kernel import Kernel

    kernel = Kernel(nonpaged_pool_bytes=pool_mib * MiB, paged_pool_bytes=pool_mib * MiB, **machine)
    allocations = _fill(kernel, pool_mib * MiB)
    kernel.write_dump(path, kind)
    return allocations


SPARSE_FILL = 3 * MiB  # fills about 770 pool pages: issue 18 measured a dump of 743


def sparse(gib: int, directory: str) -> dict:
    """A full dump of a machine with ``gib`` GiB of mostly untouched memory and a few hundred
    pool pages, scanned."""
    from ..kernel import Kernel

    kernel = Kernel(nonpaged_pool_bytes=64 * MiB, paged_pool_bytes=64 * MiB,
                    physical_memory_bytes=gib << 30)
    allocations = _fill(kernel, SPARSE_FILL)
    path = os.path.join(directory, "bench-sparse.dmp")
    kernel.write_dump(path, "full")
    del kernel
    try:
        result = {"bytes": os.path.getsize(path), "allocations": allocations,
                  "tag_in_process": _scan_in_process(path, ["!poolfind derF 0", "!poolfind derF 1"]),
                  "all_in_process": _scan_in_process(path, ["!poolfind * 0", "!poolfind * 1"]),
                  "poolfind_all": _poolfind_everything(path),
                  "poolfind_tag": _poolfind_tag(path, "derF")}
    finally:
        os.unlink(path)
    return result


def run(pool_mib: int = 512, directory: str | None = None, windows=None, volatility: bool = True,
        sparse_gib: int = 4, volatility_pool_mib: int = 8) -> dict:
    from ..debugger.pooltag import PoolTagDatabase
    from ..debugger.session import KdSession
    from ..dump.reader import DumpReader
    from ..kernel import Kernel

    pool_bytes = pool_mib * MiB
    kernel = Kernel(nonpaged_pool_bytes=pool_bytes, paged_pool_bytes=pool_bytes,
                    windows="7" if windows is None else windows)
    allocations = _fill(kernel, pool_bytes)
    own_directory = directory is None
    directory = directory or tempfile.mkdtemp(prefix="ntpool-bench-")
    # The dumps' symbol folder (written beside each dump for volatility3) goes when the
    # bench's dumps go, unless it was the user's before.
    symbols = isf.symbols_beside(os.path.join(directory, "bench-full.dmp"))
    own_symbols = not os.path.exists(symbols)
    results = {"allocations": allocations, "pool_mib": pool_mib}
    try:
        for kind in ("full", "kernel"):
            path = os.path.join(directory, f"bench-{kind}.dmp")
            start = time.perf_counter()
            kernel.write_dump(path, kind)
            elapsed = time.perf_counter() - start
            size = os.path.getsize(path)
            results[kind] = {"bytes": size, "seconds": elapsed, "mb_per_s": size / elapsed / 1e6}
        del kernel
        os.unlink(os.path.join(directory, "bench-kernel.dmp"))
        path = os.path.join(directory, "bench-full.dmp")
        with DumpReader(path) as reader:
            session = KdSession(reader, PoolTagDatabase.default())
            for name, command in (("poolfind", "!poolfind derF"), ("poolfind_paged", "!poolfind derF 1"),
                                  ("poolfind_wildcard", "!poolfind d?r*"), ("poolused", "!poolused 2")):
                start = time.perf_counter()
                lines = sum(piece.count("\n") for piece in session.stream(command)) + 1
                results[name] = {"seconds": time.perf_counter() - start, "lines": lines}
        results["tag_in_process"] = _scan_in_process(path, ["!poolfind derF 0", "!poolfind derF 1"])
        results["tag_one_process"] = _scan_in_process(path, ["!poolfind derF 0", "!poolfind derF 1"], processes=0)
        results["rare_in_process"] = _scan_in_process(path, ["!poolfind Zzzz 0", "!poolfind Zzzz 1"])
        results["poolfind_tag"] = _poolfind_tag(path, "derF")
        results["poolfind_all"] = _poolfind_everything(path)
        results["volatility"] = None
        if volatility and volatility_pool_mib:
            if volatility_pool_mib != pool_mib:
                os.unlink(path)
                path = os.path.join(directory, "bench-volatility.dmp")
                _write_filled(path, volatility_pool_mib, windows="7" if windows is None else windows)
            vol = _volatility_everything(path)
            if vol is not None:
                vol["pool_mib"] = volatility_pool_mib
                vol["bytes"] = os.path.getsize(path)
                vol["poolfind_all"] = (results["poolfind_all"] if volatility_pool_mib == pool_mib
                                       else _poolfind_everything(path))
            results["volatility"] = vol
        os.unlink(path)
        results["sparse"] = sparse(sparse_gib, directory) if sparse_gib else None
    finally:
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)
        elif own_symbols:
            shutil.rmtree(symbols, ignore_errors=True)
    return results


MEMORY_GOAL_MB = 300  # resident memory of any !poolfind, whatever the dump's size


def _goal(met: bool) -> str:
    return "met" if met else "MISSED"


def report_lines(results: dict) -> list[str]:
    """Every figure beside its goal (issue 16's and 18's), as ``ntpool bench`` prints them."""
    lines = [f"machine: {results['pool_mib']} MiB of each pool, {results['allocations']:,} live allocations"]
    for kind in ("full", "kernel"):
        r = results[kind]
        lines.append(f"write {kind} dump: {r['bytes'] / MiB:,.0f} MiB in {r['seconds']:.2f} s = "
                     f"{r['mb_per_s']:,.0f} MB/s (goal >= 200 MB/s: {_goal(r['mb_per_s'] >= 200)})")
    gib = results["full"]["bytes"] / (1 << 30)
    for name in ("poolfind", "poolfind_paged", "poolfind_wildcard"):
        r = results[name]
        lines.append(f"!poolfind ({name}) on the full dump, in this process: {r['seconds']:.2f} s, "
                     f"{r['lines']:,} lines")
    used = results["poolused"]["seconds"]
    lines.append(f"!poolused on the full dump: {used * 1000:.0f} ms (goal < 1 s: {_goal(used < 1)})")
    for name, label, where in (("tag_in_process", "!poolfind derF (1 chunk in 6)", "in this process"),
                               ("tag_one_process", "!poolfind derF (1 chunk in 6)",
                                "in this process alone (no scan worker, as when no processor is free)"),
                               ("rare_in_process", "!poolfind Zzzz (no hit)", "in this process")):
        r = results[name]
        pool_gib = r["pool_pages"] * 4096 / (1 << 30)
        per_gib = r["seconds"] / pool_gib if pool_gib else 0.0
        shared = f", {r['workers_cpu_seconds']:.2f} s of it in scan workers" if r.get("workers_cpu_seconds") else \
            ", no scan worker"
        lines.append(f"{label}, both pools, {where}: {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s "
                     f"CPU{shared}) for {r['pool_pages'] * 4096 / MiB:,.0f} MiB of pool pages = {per_gib:.2f} s per GiB "
                     f"of pool (goal <= 1 s per GiB: {_goal(per_gib <= 1)})")
    tag = results["poolfind_tag"]
    memory, total = _memory(tag)
    lines.append(f"!poolfind derF, both pools (ntpool kd, a fresh process): {tag['seconds']:.2f} s, "
                 f"{tag['chunks']:,} chunks, {memory} "
                 f"(goal < {MEMORY_GOAL_MB} MB: {_goal(total * 1.048576 < MEMORY_GOAL_MB)})")
    every = results["poolfind_all"]
    per_100k = every["seconds"] / max(every["chunks"], 1) * 100_000
    memory, total = _memory(every)
    lines.append(f"!poolfind * over both pools (ntpool kd, a fresh process): {every['seconds']:.2f} s for "
                 f"{gib:.2f} GiB (goal <= 5 s for 1 GiB: {_goal(every['seconds'] <= 5 * max(gib, 1))}), "
                 f"{every['chunks']:,} chunks = {per_100k:.2f} s per 100,000 (goal <= 1 s: {_goal(per_100k <= 1)}), "
                 f"{memory} (goal < {MEMORY_GOAL_MB} MB: {_goal(total * 1.048576 < MEMORY_GOAL_MB)})")
    vol = results["volatility"]
    if vol is None:
        lines.append("volatility3: not run (not installed, --no-volatility or --volatility-pool-mib 0)")
    else:
        ours = vol["poolfind_all"]
        ratio = vol["seconds"] / ours["seconds"]
        lines.append(f"volatility3's scan for every tag (vol ... ntpool.tagscan) on a full dump of "
                     f"{vol['bytes'] / MiB:,.0f} MiB ({vol['pool_mib']} MiB pools): {vol['seconds']:.2f} s, "
                     f"{vol['hits']:,} hits, peak memory {vol['peak_rss_mib']:,.0f} MiB; !poolfind * on it: "
                     f"{ours['seconds']:.2f} s, {ours['chunks']:,} chunks, peak {ours['peak_rss_mib']:,.0f} MiB: "
                     f"{ratio:.1f}x faster (goal >= 10x: {_goal(ratio >= 10)})")
    sparse_result = results["sparse"]
    if sparse_result:
        size = f"{sparse_result['bytes'] / (1 << 30):.1f} GiB"
        for name, label in (("tag_in_process", "!poolfind derF"), ("all_in_process", "!poolfind *")):
            r = sparse_result[name]
            lines.append(f"{label} over both pools of a sparse {size} full dump holding {r['pool_pages']:,} pool "
                         f"pages, in this process: {r['seconds']:.3f} s ({r['cpu_seconds']:.3f} s CPU; goal "
                         f"< 0.2 s: {_goal(r['seconds'] < 0.2)})")
        for name, label in (("poolfind_tag", "!poolfind derF"), ("poolfind_all", "!poolfind *")):
            r = sparse_result[name]
            lines.append(f"{label} over both pools of the sparse {size} dump (ntpool kd, a fresh process, "
                         f"interpreter start included): {r['seconds']:.2f} s, peak memory "
                         f"{r['peak_rss_mib']:,.0f} MiB (goal < {MEMORY_GOAL_MB} MB: "
                         f"{_goal(r['peak_rss_mib'] * 1.048576 < MEMORY_GOAL_MB)})")
    return lines


def run_and_report(pool_mib: int, directory: str | None, windows=None, volatility: bool = True,
                   sparse_gib: int = 4, volatility_pool_mib: int = 8) -> int:
    if pool_mib < 1:
        raise ValueError(f"--pool-mib must be at least 1, got {pool_mib}")
    if sparse_gib < 0:
        raise ValueError(f"--sparse-gib must be 0 (skip) or more, got {sparse_gib}")
    if volatility_pool_mib < 0:
        raise ValueError(f"--volatility-pool-mib must be 0 (skip) or more, got {volatility_pool_mib}")
    results = run(pool_mib, directory, windows, volatility, sparse_gib, volatility_pool_mib)
    print("\n".join(report_lines(results)))
    return 0
