"""``ntpool verify`` and ``ntpool triage``: campaigns on the campaign engine, with progress."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .poolmon_view import PipeConsole
from .sources import add_windows_argument


def add_engine_arguments(parser) -> None:
    group = parser.add_argument_group("where the runs execute")
    group.add_argument("-j", "--jobs", type=int, default=None,
                       help="worker processes (default: every core; 1: in this process)")
    group.add_argument("--dask", metavar="SCHEDULER", default=None,
                       help="run on a Dask cluster at this scheduler address "
                            "(pip install 'ntpool[dask]')")
    group.add_argument("--results", metavar="FILE", default=None,
                       help="append each finished run to this SQLite file as it finishes")
    group.add_argument("--resume", action="store_true",
                       help="finish the campaign in --results, redoing nothing that finished")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="stop a run after this long and record it as timed out")


@contextlib.contextmanager
def engine_for(args, description: dict, console: Console, what: str):
    """The engine the arguments ask for, with a progress bar, and its results file."""
    from ..campaign import Engine, ResultStore

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.resume and not args.results:
        raise ValueError("--resume needs --results FILE (the campaign to finish)")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    store = ResultStore(args.results, description, resume=args.resume) if args.results else None
    bar = Progress(TextColumn(f"[bold]{what}[/bold]"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failures]} not survived"),
                   TextColumn("{task.fields[rate]:.1f} runs/s"), TimeRemainingColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    task_id = bar.add_task(what, total=None, failures=0, rate=0.0)

    def progress(state, result):
        bar.update(task_id, total=state.total, completed=state.done, failures=state.failures,
                   rate=state.rate)

    try:
        with bar:
            yield Engine(jobs=args.jobs, dask=args.dask, store=store, progress=progress)
    finally:
        if store is not None:
            store.close()


def cmd_verify(args) -> int:
    from ..campaign.verify import FaultPlan, campaign_description, verify

    plan = FaultPlan.parse(args.plan)
    description = campaign_description(args.scenario, plan, args.seed, None, args.windows,
                                       args.timeout)
    console = PipeConsole()
    console.print(f"Low resources campaign on [bold]{args.scenario}[/bold]: fault plan {plan}, "
                  f"pool tracking on.")
    with engine_for(args, description, console, "verify") as engine:
        campaign = verify(args.scenario, seed=args.seed, max_runs=args.max_runs, plan=plan,
                          engine=engine, timeout=args.timeout, windows=args.windows)
    baseline = campaign.baseline
    console.print(f"baseline run (no failure injected): {baseline['verdict']}"
                  f"{': ' + baseline['evidence'] if baseline.get('evidence') else ''}", highlight=False)
    if not campaign.baseline_clean:
        console.print("[yellow]The scenario fails even with no failure injected: fix that first; "
                      "the verdicts below include it.[/yellow]")
    table = Table(title=f"{len(campaign.verdicts)} runs with failures injected "
                        f"({campaign.runs} runs in all)")
    for column in ("Driver", "Call site failed", "Verdict", "Evidence"):
        table.add_column(column, overflow="fold")
    colour = {"survived": "green", "not reached": "yellow"}
    for v in campaign.verdicts:
        sites = "; ".join(f"{f} ({file}:{line})" for file, line, f in v.sites) or "-"
        table.add_row(v.owner, sites, f"[{colour.get(v.verdict, 'red')}]{v.label}[/]",
                      v.result.get("evidence", ""))
    if not args.quiet or campaign.verdicts:
        console.print(table)
    if plan.kind in ("random", "pairs"):  # several runs fail each site: group them by site
        by_site = Table(title="By site: the runs that failed it, by verdict")
        for column in ("Call site", "Runs by verdict"):
            by_site.add_column(column, overflow="fold")
        for (file, line, function), counts in campaign.by_site().items():
            by_site.add_row(f"{function} ({file}:{line})",
                            ", ".join(f"{n} {label}" for label, n in sorted(counts.items())))
        console.print(by_site)
    summary = ", ".join(f"{count} {verdict}" for verdict, count in campaign.by_verdict().items())
    console.print(f"By verdict: {summary or 'no runs'}.", highlight=False)
    if campaign.unfinished:
        console.print(f"[yellow]{campaign.unfinished} run(s) not made: --max-runs "
                      f"{args.max_runs} reached.[/yellow]")
    if campaign.all_survived and not campaign.unfinished:
        console.print("Every allocation failure path is handled.")
        return 0
    failed = sum(1 for v in campaign.verdicts if not v.survived)
    console.print(f"{failed} of {len(campaign.verdicts)} runs did not survive.")
    return 1


def cmd_triage(args) -> int:
    from ..campaign.triage import dump_task, fleet_report

    console = PipeConsole()
    tasks = []
    for path in args.dumps:
        try:
            tasks.append(dump_task(path, args.timeout))
        except OSError as error:
            raise ValueError(f"{path}: {error.strerror or error}") from None
    description = {"command": "triage", "dumps": tasks}
    with engine_for(args, description, console, "triage") as engine:
        records = engine.run(tasks)
    report = fleet_report(records, top=args.top)
    console.print(f"[bold]{report.dumps} dump(s)[/bold], {len(report.unreadable)} unreadable")
    for title, columns, rows in (
            ("Bug checks", ("Bug check", "Dumps"), report.bugchecks),
            ("Culprits (driver running at the bug check)", ("Driver", "Dumps"), report.culprits),
            ("Largest tags over the fleet", ("Tag", "Bytes", "Dumps"), report.largest),
            (f"Swollen tags (over {4}x their fleet median)", ("Tag", "Dumps", "Largest", "Median"),
             report.swollen),
            ("Unreadable dumps", ("Dump", "Why"), report.unreadable)):
        if not rows:
            continue
        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
        console.print(table)
    return 1 if report.unreadable else 0


def add_verify_command(sub) -> None:
    verify = sub.add_parser("verify", help="fail allocation sites on purpose (low resources "
                                           "simulation) and report what each run did")
    verify.add_argument("scenario", help="a scenario .py file (or 'demo')")
    verify.add_argument("--seed", type=int, default=1, help="seed of the workload (default 1)")
    verify.add_argument("--plan", default="each-site",
                        help="fault plan: each-site (default), pairs:N, nth:K, random:P[:SEEDS]")
    verify.add_argument("--max-runs", type=int, default=500, help="stop after this many runs")
    verify.add_argument("--quiet", action="store_true", help="only the final table")
    add_windows_argument(verify)
    add_engine_arguments(verify)
    verify.set_defaults(func=cmd_verify)
    triage = sub.add_parser("triage", help="read many crash dumps and report across them")
    triage.add_argument("dumps", nargs="+", help="crash dump files")
    triage.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    add_engine_arguments(triage)
    triage.set_defaults(func=cmd_triage)
