"""``ntpool verify`` and ``ntpool triage``: campaigns on the campaign engine, with progress."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..debugger.session import file_name
from .poolmon_view import wide_console
from .sources import add_windows_argument


def add_engine_arguments(parser) -> None:
    group = parser.add_argument_group("where the runs execute")
    group.add_argument("-j", "--jobs", type=int, default=None,
                       help="worker processes (default: every core; 1: in this process, or in "
                            "one worker process with --memory-limit)")
    group.add_argument("--dask", metavar="SCHEDULER", default=None,
                       help="run on a Dask cluster at this scheduler address "
                            "(pip install 'ntpool[dask]')")
    group.add_argument("--results", metavar="FILE", default=None,
                       help="append each finished run to this SQLite file as it finishes")
    group.add_argument("--resume", action="store_true",
                       help="finish the campaign in --results, redoing nothing that finished")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="stop a run after this long and record it as timed out")
    group.add_argument("--memory-limit", type=float, default=None, metavar="MIB",
                       help="stop a run whose process's resident memory passes this many MiB "
                            "and record it as out of memory (locally and on Dask alike)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interruption so that a campaign stops as on Ctrl-C: its
    workers ended, its results file closed, and a word on how to finish it."""


PER_RUN_ROWS = 50  # a table row per run up to this many runs; past it, the triage only
TRIAGE_SITES = 3  # failed sites shown per triage row
PROGRESS_LINE_SECONDS = 10.0  # without a terminal (a CI log): a progress line this often


@contextlib.contextmanager
def _terminated_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


CORPUS_PROGRESS = ".ntpool-corpus-runs.sqlite"


def _corpus_progress(description: dict) -> str:
    """The results file a corpus keeps in its folder while it is made; one left by another
    corpus (other options) is dropped, as that corpus's dumps are being replaced."""
    from ..campaign import ResultStore, ResultsFileError

    os.makedirs(description["out"], exist_ok=True)
    path = os.path.join(description["out"], CORPUS_PROGRESS)
    try:
        store = ResultStore(path, description, resume=True)
        if store.recovered is not None:  # damaged: what it still held is kept, not the rest
            _remove_results_file(store.recovered[1])
        store.close()
    except ResultsFileError:
        _remove_results_file(path)
    return path


def _remove_results_file(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def _where(args, tally) -> str:
    from ..campaign.engine import default_jobs

    if args.dask:
        return f"on the Dask cluster at {args.dask}"
    if tally.in_process == tally.executed:  # -j 1, or a single run (a baseline) at a time
        return "in this process"
    jobs = args.jobs or default_jobs()
    return f"on {jobs} worker process" + ("es" if jobs > 1 else "")


def check_engine_arguments(args) -> None:
    """Refuses, in one line, the engine options no campaign can run with. A command that
    prints before its campaign starts calls this first, so the refusal is all it prints."""
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.resume and not args.results:
        raise ValueError("--resume needs --results FILE (the campaign to finish)")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.memory_limit is not None and not 0 < args.memory_limit < float("inf"):
        raise ValueError(f"--memory-limit must be a positive number of MiB, got {args.memory_limit:g}")


@contextlib.contextmanager
def engine_for(args, description: dict, console: Console, what: str):
    """The engine the arguments ask for, with a progress bar, and its results file.

    At the end it says how many runs were made and how fast; interrupted (Ctrl-C, SIGTERM)
    it says what was kept and how to finish."""
    from ..campaign import Engine, ResultStore

    check_engine_arguments(args)
    if args.memory_limit is not None:
        # A resumed campaign keeps the limit it was made under (another is another campaign).
        description = dict(description, memory_mib=args.memory_limit)
    results, resume, own = args.results, args.resume, False
    if results is None and description.get("command") == "corpus":
        # A corpus resumes by itself: which dumps are made is kept in its folder until the
        # corpus is complete (then the file goes, leaving only the corpus).
        results, resume, own = _corpus_progress(description), True, True
    store = ResultStore(results, description, resume=resume) if results else None
    if store is not None and store.recovered is not None:
        count, kept = store.recovered
        console.print(f"[yellow]{results} was damaged ({store.damage}): {count} finished "
                      f"run(s) recovered from it; the damaged file is kept as {kept}.[/yellow]",
                      highlight=False)
    if store is not None and len(store) and resume:
        console.print(f"Resuming: {len(store):,} finished run(s) in {results}.", highlight=False)
    quiet = getattr(args, "quiet", False)  # verify --quiet: no progress, bar or lines
    bar = Progress(TextColumn(f"[bold]{what}[/bold]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failures]} not survived"),
                   TextColumn("{task.fields[rate]:.1f} runs/s"), TimeRemainingColumn(),
                   console=console, transient=True, disable=quiet or not console.is_terminal)
    task_id = bar.add_task(what, total=None, failures=0, rate=0.0)
    last_line = [time.perf_counter()]

    def progress(state, result):
        bar.update(task_id, total=state.total, completed=state.done, failures=state.failures,
                   rate=state.rate)
        now = time.perf_counter()
        if not (quiet or console.is_terminal) and now - last_line[0] >= PROGRESS_LINE_SECONDS:
            last_line[0] = now
            left = state.remaining_seconds
            print(f"{what}: {state.done:,}/{state.total:,} runs, {state.failures:,} not survived, "
                  f"{state.rate:.1f} runs/s" + (f", about {left:.0f} s left" if left else ""),
                  file=sys.stderr, flush=True)

    engine = Engine(jobs=args.jobs, dask=args.dask, store=store, progress=progress,
                    memory_mib=args.memory_limit)
    try:
        with _terminated_as_interrupt(), bar:
            yield engine
    except KeyboardInterrupt as stop:
        kept = (f"{len(store):,} finished run(s) are kept in {results}: the same command"
                f"{'' if own else ' with --resume'} finishes the campaign without making them again"
                if store is not None else
                "nothing was kept: with --results FILE the finished runs are kept and --resume "
                "finishes the campaign")
        print(f"ntpool: {what} {'terminated' if isinstance(stop, Terminated) else 'interrupted'} "
              f"after {engine.tally.executed:,} run(s); {kept}.", file=sys.stderr, flush=True)
        if isinstance(stop, Terminated):
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        if store is not None:
            store.close()
    if own:
        _remove_results_file(results)
    tally = engine.tally
    reused = f"; {tally.reused:,} taken from {results}" if tally.reused else ""
    if not tally.executed:  # every run taken from --results: no time or rate to give
        console.print(f"0 run(s) made{reused}.", highlight=False)
        return
    console.print(f"{tally.executed:,} run(s) made in {tally.seconds:.1f} s {_where(args, tally)}: "
                  f"{tally.rate:.1f} runs/s{reused}.", highlight=False)


# A baseline run that raised one of these never loaded the driver (ntpool.native's refusals).
IMAGE_REFUSED = ("BadImage", "MissingImports")


def cmd_verify(args) -> int:
    from ..campaign.verify import FaultPlan, campaign_description, verify

    check_engine_arguments(args)  # before the campaign's first line, not after it
    plan = FaultPlan.parse(args.plan)
    if args.max_runs is not None and args.max_runs < 1:
        raise ValueError(f"--max-runs must be at least 1, got {args.max_runs}")
    description = campaign_description(args.scenario, plan, args.seed, None, args.windows,
                                       args.timeout)
    console = wide_console()
    console.print(f"Low resources campaign on [bold]{args.scenario}[/bold]: fault plan {plan}, "
                  f"pool tracking on.")
    with engine_for(args, description, console, "verify") as engine:
        campaign = verify(args.scenario, seed=args.seed, max_runs=args.max_runs, plan=plan,
                          engine=engine, timeout=args.timeout, windows=args.windows)
    baseline = campaign.baseline
    if baseline.get("exception") in IMAGE_REFUSED:
        # The driver never loaded (a file that is not a driver ntpool can map, or imports it
        # lacks): nothing was verified; one line and status 2, as `ntpool run` answers.
        print(f"ntpool: {baseline['evidence']}", file=sys.stderr)
        return 2
    console.print(f"baseline run (no failure injected): {baseline['verdict']}"
                  f"{': ' + baseline['evidence'] if baseline.get('evidence') else ''}", highlight=False)
    if not campaign.baseline_clean:
        console.print("[yellow]The scenario fails even with no failure injected: fix that first; "
                      "the verdicts below include it.[/yellow]")
    colour = {"survived": "green", "not reached": "yellow"}
    if len(campaign.verdicts) <= PER_RUN_ROWS:
        table = Table(title=f"{_runs(len(campaign.verdicts))} with failures injected "
                            f"({_runs(campaign.runs)} in all)")
        for column in ("Driver", "Call site failed", "Verdict", "Evidence"):
            table.add_column(column, overflow="fold")
        for v in campaign.verdicts:
            sites = "; ".join(_site_text(site) for site in v.sites) or "-"
            table.add_row(v.owner, sites, f"[{colour.get(v.verdict, 'red')}]{v.label}[/]",
                          v.result.get("evidence", ""))
        if not args.quiet or campaign.verdicts:
            console.print(table)
    if plan.kind in ("random", "pairs"):  # several runs fail each site: group them by site
        by_site = Table(title="By site: the runs that failed it, by verdict")
        for column in ("Call site", "Runs by verdict"):
            by_site.add_column(column, overflow="fold")
        for site, counts in campaign.by_site().items():
            by_site.add_row(_site_text(site),
                            ", ".join(f"{n} {label}" for label, n in sorted(counts.items())))
        console.print(by_site)
    failures = campaign.triage()
    if failures and (len(campaign.verdicts) > PER_RUN_ROWS or len(failures) < len(
            [v for v in campaign.verdicts if not v.survived])):
        _print_triage(console, failures)
    summary = ", ".join(f"{count:,} {verdict}" for verdict, count in campaign.by_verdict().items())
    console.print(f"By verdict: {summary or 'no runs'}.", highlight=False)
    console.print(f"Runs: {campaign.runs:,} = the baseline + {len(campaign.verdicts):,} with "
                  f"failures injected" + (f"; {campaign.unfinished:,} more not made" if
                                          campaign.unfinished else "") + ".", highlight=False)
    if len(campaign.verdicts) > PER_RUN_ROWS:
        console.print("(Each run's verdict and evidence: " + (
            f"the rows of {args.results}" if args.results else
            "pass --results FILE to keep them") + ".)", highlight=False)
    if campaign.unfinished:
        console.print(f"[yellow]{campaign.unfinished:,} run(s) not made: --max-runs "
                      f"{campaign.max_runs} reached.[/yellow]")
    if campaign.all_survived and not campaign.unfinished:
        console.print("Every allocation failure path is handled.")
        return 0
    if not campaign.verdicts and not campaign.unfinished:  # not "0 of 0 runs did not survive"
        if campaign.baseline_clean:
            console.print("The baseline reached no allocation site: there was nothing to fail.")
            return 0
        console.print("No site was failed: the baseline, which finds them, did not survive.")
        return 1
    failed = sum(1 for v in campaign.verdicts if not v.survived)
    console.print(f"{failed:,} of {len(campaign.verdicts):,} runs did not survive.")
    return 1


def _site_text(site) -> str:
    """An allocation site as the verdicts' evidence and kd name a call site: "Function
    (file.c:line)", the file without the folders the PDB or Python recorded (a compiled
    sample's PDB says /ntpool/samples/native/leak.c, a path on no user's machine)."""
    file, line, function = site
    return f"{function} ({file_name(file)}:{line})"


def _print_triage(console: Console, failures) -> None:
    table = Table(title="Triage: the runs that did not survive, by what happened and where")
    table.add_column("Runs", justify="right")  # counts, read down their digits
    for column in ("Verdict", "Where (driver, call site)", "Sites failed in those runs",
                   "First run's evidence"):
        table.add_column(column, overflow="fold")
    for group in failures:
        sites = sorted(group.sites_failed.items(), key=lambda item: (-item[1], item[0]))
        shown = "; ".join(f"{_site_text(site)} x{count}" for site, count in sites[:TRIAGE_SITES])
        if len(sites) > TRIAGE_SITES:
            shown += f"; {len(sites) - TRIAGE_SITES} more"
        table.add_row(f"{group.runs:,}", f"[red]{group.label}[/]", group.where or "-",
                      shown or "-", group.example.result.get("evidence", ""))
    console.print(table)


def cmd_triage(args) -> int:
    from ..campaign import triage as fleet
    from ..campaign.triage import dump_task, fleet_report

    console = wide_console()
    tasks = []
    for path in args.dumps:
        try:
            tasks.append(dump_task(path, args.timeout))
        except OSError as error:
            raise ValueError(f"{path}: {error.strerror or error}") from None
    description = {"command": "triage", "dumps": tasks}
    with engine_for(args, description, console, "triage") as engine:
        records = engine.run(tasks)
    # A run the campaign stopped is the engine's record, which does not carry its dump's path.
    records = [dict(record, path=task["path"]) if "path" not in record else record
               for task, record in zip(tasks, records)]
    report = fleet_report(records, top=args.top)
    console.print(f"[bold]{report.dumps} dump(s)[/bold], {len(report.unreadable)} unreadable")
    # The reader's error names the dump first: said once, in the Dump column.
    unreadable = [(path, why.removeprefix(f"{path}: ")) for path, why in report.unreadable]
    swollen = (f"Swollen tags (over {fleet.SWOLLEN_FACTOR}x their fleet median and at least "
               f"{fleet.SWOLLEN_MINIMUM >> 10:,} KiB)")
    for title, columns, rows in (
            ("Bug checks", ("Bug check", "Dumps"), report.bugchecks),
            ("Culprits (driver running at the bug check)", ("Driver", "Dumps"), report.culprits),
            ("Largest tags over the fleet", ("Tag", "Bytes", "Dumps"), report.largest),
            (swollen, ("Tag", "Dumps", "Largest", "Median"), report.swollen),
            ("Unreadable dumps", ("Dump", "Why"), unreadable)):
        if not rows:
            continue
        table = Table(title=title, min_width=len(title))  # the title on one line
        for index, column in enumerate(columns):
            counts = all(isinstance(row[index], int) for row in rows)  # numbers line up right
            table.add_column(column, overflow="fold", justify="right" if counts else "left")
        for row in rows:
            table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
        console.print(table)
    return 1 if report.unreadable else 0


def add_verify_command(sub) -> None:
    verify = sub.add_parser("verify", help="fail allocation sites on purpose (low resources "
                                           "simulation) and report what each run did")
    verify.add_argument("scenario", help="a scenario .py file, 'demo', 'demo-python', or a "
                                            "compiled driver .sys")
    verify.add_argument("--seed", type=int, default=1, help="seed of the workload (default 1)")
    verify.add_argument("--plan", default="each-site",
                        help="fault plan: each-site (default), pairs:N, nth:K, random:P[:SEEDS]")
    verify.add_argument("--max-runs", type=int, default=None,
                        help="stop after this many runs, the baseline included (default: 500 "
                             "for each-site; the plan's own size for the others)")
    verify.add_argument("--quiet", action="store_true",
                        help="no progress (the bar on a terminal, a line every 10 s in a log)")
    add_windows_argument(verify)
    add_engine_arguments(verify)
    verify.set_defaults(func=cmd_verify)
    triage = sub.add_parser("triage", help="read many crash dumps and report across them")
    triage.add_argument("dumps", nargs="+", help="crash dump files")
    triage.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    add_engine_arguments(triage)
    triage.set_defaults(func=cmd_triage)


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"
