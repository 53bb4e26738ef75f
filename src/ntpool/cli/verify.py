"""``ntpool verify SCENARIO``: fail every allocation site once and show who survived."""

from rich.console import Console
from rich.table import Table


def cmd_verify(args) -> int:
    from ..tools.campaign import verify
    from ..tools.scenario import load_scenario

    load_scenario(args.scenario)  # a broken file is a one-line error before anything runs
    console = Console()
    console.print(f"Systematic low resources simulation of [bold]{args.scenario}[/bold]: "
                  f"one allocation site failed per run, pool tracking on.")

    def progress(result, waiting):
        mark = "ok" if result.survived else result.outcome.upper()
        console.print(f"  {mark:>10}  {result.function} ({result.filename}:{result.lineno})"
                      f"{f'  [{waiting} to go]' if waiting else ''}", highlight=False)

    campaign = verify(args.scenario, seed=args.seed, max_runs=args.max_runs,
                      progress=None if args.quiet else progress)
    console.print(f"baseline run (no failure injected): {campaign.baseline}")
    if not campaign.baseline_clean:
        console.print("[yellow]The scenario fails even with no failure injected: fix that first; "
                      "the verdicts below include it.[/yellow]")
    table = Table(title=f"{len(campaign.results)} allocation sites, {campaign.runs} runs")
    for column in ("Driver", "Call site", "Failed once, the driver...", "Detail"):
        table.add_column(column, overflow="fold")
    for result in campaign.results:
        verdict = {"survived": "[green]survived[/green]", "leak": "[red]leaked[/red]",
                   "bug check": "[red]crashed[/red]", "error": "[red]raised[/red]",
                   "not reached": "[yellow]not reached[/yellow]"}[result.outcome]
        table.add_row(result.driver, f"{result.function} ({result.filename}:{result.lineno})",
                      verdict, result.detail)
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
