"""``ntpool demo``: three sample drivers, a workload, a leak, a crash, a dump, the analysis.

The drivers and the workload are the shipped sample scenario: ``ntpool/samples/demo.py``
(the compiled drivers, the default) or ``demo_python.py`` (``--python-drivers``); this
module only shows them: a progress display, poolmon's table, the tags that grew, the
bug check, MEMORY.DMP and the debugger's verdict.
"""

from functools import partial
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..constants import PAGE_SIZE
from ..debugger.pooltag import PoolTagDatabase
from ..debugger.session import KdSession
from ..pool.segment_heap.layout import POOL_HEADER_SIZE, VS_HEADER_SIZE
from ..tags import tag_value
from ..dump import DumpReader
from ..tools.poolmon import PoolmonModel, grown_tags, owner_text
from ..tools.scenario import ScenarioRun, load_scenario
from .poolmon_view import poolmon_table, table_width, wide_console
from .sources import check_output_file

DUMP_NAME = "MEMORY.DMP"


def run_demo(seed: int = 1, out_dir: str = ".", steps: int | None = None,
             console: Console | None = None, windows: str | None = None,
             truth: str | None = None, python_drivers: bool = False) -> int:
    console = console or wide_console()
    if steps is not None and steps < 1:  # before --out is made: a refused run leaves nothing
        raise ValueError(f"--steps must be at least 1, got {steps}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OSError(f"--out {out_dir}: not a directory")
    out.mkdir(parents=True, exist_ok=True)  # as `ntpool demo --out demo --truth demo/t.json` expects
    check_output_file("--out", str(out / DUMP_NAME))  # a folder that takes no file: said now
    if truth is not None:  # refused now, not after the run that the manifest describes
        check_output_file("--truth", truth)
    scenario = load_scenario("demo-python" if python_drivers else "demo")
    if steps is not None:
        scenario.workload = partial(scenario.workload, steps=steps)
        scenario.checkpoints = None
    options = {} if windows is None else {"windows": windows}
    run = ScenarioRun(scenario, seed=seed, dump_path=str(out / DUMP_NAME), kernel_options=options)
    run.truth_path = truth
    pooltags = PoolTagDatabase.default()

    kernel = run.boot()
    console.print(f"[bold]ntpool demo[/bold] (seed {seed}): booted an x64 {kernel.windows} machine, "
                  f"CR3 {kernel.space.cr3 << 12:#x}, {kernel.nonpaged_pool.page_count * PAGE_SIZE >> 20} MiB "
                  f"nonpaged and {kernel.paged_pool.page_count * PAGE_SIZE >> 20} MiB paged pool")
    run.load_drivers()
    console.print(_driver_table(run, pooltags))
    if any(getattr(driver, "native", False) for driver in run.loaded):
        console.print("The drivers are compiled C (ntpool/samples/native/*.c, built by clang "
                      "for x86_64-windows-msvc): their own machine code runs on this machine's "
                      "pool, and their PDBs name their lines.")
    _run_workload(run, console, pooltags)
    run.finish()
    if run.bugcheck is None:
        console.print("[yellow]The workload ended without a bug check.[/yellow]")
        if kernel.windows.segment_heap:
            _show_missed(run, console, out / DUMP_NAME)
        return 0
    _show_crash(run, console)
    return 0


def _driver_table(run: ScenarioRun, pooltags) -> Table:
    table = Table(title="Loaded drivers", title_justify="left")
    table.add_column("Driver")
    table.add_column("Its tags (pooltag.txt)")
    for driver in run.loaded:
        tags = sorted(tag for source in pooltags.files for tag, owner in source.exact.items()
                      if owner.binary == driver.name)
        table.add_row(driver.name, " ".join(tags))
    return table


def _run_workload(run: ScenarioRun, console: Console, pooltags) -> None:
    phase = None
    phase_start = run.snapshots[-1]
    progress = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    with progress:
        task = progress.add_task("starting", total=run.scenario.checkpoints)
        for label in run.checkpoints():
            name = label.split(":")[0]
            if name != phase:
                if phase is not None:
                    _phase_report(run, phase, phase_start, run.snapshots[-2], progress.console,
                                  pooltags)
                phase, phase_start = name, run.snapshots[-1]
            progress.update(task, advance=1, description=label)
        progress.update(task, total=progress.tasks[0].completed)
    if phase is not None:  # the phase the workload ended (or crashed) in
        last = run.snapshots[-2] if run.bugcheck else run.snapshots[-1]
        _phase_report(run, phase, phase_start, last, console, pooltags)


def _phase_report(run: ScenarioRun, phase: str, start, end, console: Console, pooltags) -> None:
    """What a phase showed, from its first checkpoint's snapshot to its last."""
    if phase == "traffic":
        model = PoolmonModel(sort="b", pooltags=pooltags)
        model.update(start)
        model.update(end)
        console.print(poolmon_table(model, title="Pool usage by tag after the traffic "
                                                 "(deltas: since the traffic began)",
                                    width=table_width(console)))
        grown = [g for g in grown_tags(start, end) if g.diff_grown > 0]
        if grown:
            leak = grown[0]
            console.print(f"Tag [bold]{leak.tag}[/bold] ({owner_text(pooltags, leak.tag) or 'unknown owner'}) "
                          f"grew by {leak.diff_grown:,} allocations and {leak.bytes_grown:,} bytes while "
                          f"traffic was steady: a leak (ntpool poolsnap --diff finds the same).")
    elif phase == "backup":
        fs_filter = next((d for d in run.loaded if d.name == "fsfilter.sys"), None)
        if fs_filter is not None and fs_filter.failed_opens:
            how = ("caught it in its compiled __try/__except" if getattr(fs_filter, "native", False)
                   else "caught it")
            console.print(f"The backup exhausted paged pool: FsRtlAllocatePoolWithTag raised "
                          f"STATUS_INSUFFICIENT_RESOURCES {fs_filter.failed_opens:,} times; "
                          f"fsfilter.sys {how} and failed those opens, so the machine ran on.")


def _show_missed(run: ScenarioRun, console: Console, path: Path) -> None:
    """The segment heap let sloppy.sys's overrun pass: say so, and show it from a dump."""
    kernel = run.kernel
    sloppy = next((d for d in run.scenario.drivers if d.name == "sloppy.sys"), None)
    address = getattr(sloppy, "last_name", 0)
    kernel.write_dump(path, kind="kernel", truth=run.truth_path)
    with DumpReader(path) as reader:
        session = KdSession(reader)
        found = session.segment_heap().around(address) if address else None
        backend = next((b.backend for b in found[0] if b.address <= address < b.address + b.size),
                       "") if found else ""
        where = {"Vs": "the low bytes of the next VS chunk's encoded header (its MemoryCost)",
                 "Lfh": "the next LFH block's PreviousSize and PoolIndex, which the segment heap "
                        "keeps 0"}.get(backend, "the two bytes after its block")
        console.print(f"On {kernel.windows} the segment heap did not stop the machine: "
                      f"sloppy.sys's NUL landed on {where}, and nothing there is checked. On "
                      f"Windows 7 (ntpool demo) the same bug is BAD_POOL_HEADER 0x19/0x20 at the "
                      f"free; Driver Verifier's special pool catches it at the write on both.")
        console.print(f"Wrote {path} on demand. {_last_name_now(kernel, address)} Its chunk, "
                      f"read from the file alone (ntpool kd -z {path} -c \"!pool {address:x} 2\"):\n")
        if address:
            console.print(session.execute(f"!pool {address:x} 2"), highlight=False, markup=False)


def _last_name_now(kernel, address: int) -> str:
    """What became of sloppy.sys's last name buffer by the time of the dump. The driver frees
    every name buffer before its request returns, so "the last name buffer" alone read as a
    live allocation: the heap may still hold the chunk in a front end (its header then still
    says Allocated), may have freed it for real, or given it to another allocation."""
    freed = "sloppy.sys freed its last name buffer as its last request returned"
    page = address & ~0xFFF
    for pool in (kernel.nonpaged_pool, getattr(kernel, "nonpaged_pool_nx", None), kernel.paged_pool):
        blocks = pool.page_blocks(page) if hasattr(pool, "page_blocks") else None
        for offset, length, state, tag in blocks or ():
            if not page + offset <= address < page + offset + length:
                continue
            if state == "Lookaside":  # the header still says Allocated: say why
                chunk = address - POOL_HEADER_SIZE - VS_HEADER_SIZE
                front = ("delay-free list" if chunk in getattr(pool, "delay_free", ())
                         else "dynamic lookaside")
                return (f"{freed}, but the segment heap keeps that chunk on its {front} before "
                        f"freeing it for real, so its header still says Allocated.")
            if state == "Free":
                return f"{freed}; the segment heap has freed its chunk for real since."
            if tag != tag_value("SlNm"):
                return f"{freed}; the segment heap has given its chunk to another allocation since."
    return f"{freed}."


def _show_crash(run: ScenarioRun, console: Console) -> None:
    console.print(Panel(str(run.bugcheck), title="bug check", style="bold red"))
    explanation = _who_found_it(run)
    if explanation:
        console.print(explanation)
    if run.dump_written is None:  # the bug check is shown; then why there is no analysis
        raise OSError(f"cannot write {run.dump_path}: {run.dump_error or 'no dump written'}")
    console.print(f"Wrote {run.dump_written}. The debugger's analysis, read from the file alone "
                  f"(ntpool kd -z {run.dump_written} -c \"!analyze -v\"):\n")
    with DumpReader(run.dump_written) as reader:
        console.print(KdSession(reader).execute("!analyze -v"), highlight=False, markup=False)


def _who_found_it(run: ScenarioRun) -> str:
    """Which check found the corruption, and what delayed frees mean for the culprit."""
    bugcheck = run.bugcheck
    pool = getattr(run.kernel, "nonpaged_pool", None)
    if bugcheck.code != 0x19 or pool is None:
        return ""
    if getattr(bugcheck, "found_in", "") == "ExDeferredFreePool":
        return ("Found by ExDeferredFreePool: this machine delays pool frees (Windows 7 does on "
                "machines with 127 * 1024 physical pages or more), so frees were queued and "
                "coalesced later in one batch, and the batch's check found the damage. The driver "
                "named below made the call that ran the batch; the chunk and its neighbours "
                "name the victim.")
    if pool.delay_frees:
        return ("Found by ExFreePoolWithTag's check of the next chunk's header, at the overrunning "
                "driver's own free: delayed pool frees are on (as on any Windows 7 machine with "
                "127 * 1024 physical pages or more), but this check runs before a free is queued.")
    return "Found by ExFreePoolWithTag's check of the next chunk's header, at the overrunning driver's own free."

