"""``ntpool verify SCENARIO``: fail every allocation site once and show who survived."""

from rich.console import Console
from rich.table import Table
from rich.text import Text


def cmd_verify(args) -> int:
    from ..tools.campaign import verify
    from ..tools.scenario import load_scenario

    load_scenario(args.scenario)  # a broken file is a one-line error before anything runs
    console = Console()
    console.print(f"Systematic low resources simulation of [bold]{args.scenario}[/bold]: "
                  f"one allocation site failed per run, pool tracking on.")

    runs = [1]

    def progress(result, waiting):
        runs[0] += 1
        console.print(f"  run {runs[0]:>3}: {result.verdict:<22} {result.function} "
                      f"({result.filename}:{result.lineno})"
                      f"{f'  [{waiting} to go]' if waiting else ''}", highlight=False)

    status = console.status("baseline run (no failure injected)") if console.is_terminal \
        and not args.quiet else None
    if status is not None:
        status.start()

    def progress_and_status(result, waiting):
        if status is not None:
            status.update(f"{waiting} site(s) to go")
        progress(result, waiting)

    try:
        campaign = verify(args.scenario, seed=args.seed, max_runs=args.max_runs,
                          progress=None if args.quiet else progress_and_status)
    finally:
        if status is not None:
            status.stop()
    console.print(f"baseline run (no failure injected): {campaign.baseline}")
    if not campaign.baseline_clean:
        console.print("[yellow]The scenario fails even with no failure injected: fix that first; "
                      "the verdicts below include it.[/yellow]")
    table = Table(title=f"{len(campaign.results)} allocation sites, {campaign.runs} runs")
    for column in ("Driver", "Call site", "Failed once, the run...", "Evidence"):
        table.add_column(column, overflow="fold")
    for result in campaign.results:
        colour = {"survived": "green", "not reached": "yellow"}.get(result.outcome, "red")
        table.add_row(result.driver, f"{result.function} ({result.filename}:{result.lineno})",
                      Text(result.verdict, style=colour), Text(result.detail))
    console.print(table)
    if campaign.all_survived:
        console.print("Every allocation failure path is handled.")
        return 0
    failed = sum(1 for r in campaign.results if not r.survived)
    console.print(f"{failed} of {len(campaign.results)} failure paths are not handled.")
    return 1


def add_verify_command(sub) -> None:
    verify = sub.add_parser("verify", help="fail each allocation site once (systematic low "
                                           "resources simulation) and report per site")
    verify.add_argument("scenario", help="a scenario .py file (or 'demo')")
    verify.add_argument("--seed", type=int, default=1, help="seed of the workload (default 1)")
    verify.add_argument("--max-runs", type=int, default=500, help="stop after this many runs")
    verify.add_argument("--quiet", action="store_true", help="only the final table")
    verify.set_defaults(func=cmd_verify)
