"""``ntpool run``, ``poolmon``, ``poolsnap``, ``picture`` and ``report``."""

import sys
from pathlib import Path


from ..tools.poolmon import POOL_FILTERS, SORT_KEYS, PoolmonModel, Snapshot, grown_tags, owner_text
from ..debugger.pooltag import PoolTagDatabase
from ..hooks import DebugPrinted
from ..pool.layout import HEADER_SIZE
from .poolmon_view import ViewState, interactive, poolmon_screen, poolmon_table, table_width, wide_console
from ..tools.scenario import load_scenario
from ..tools.requests import parse_ioctl
from .sources import ScenarioSource, add_windows_argument, check_output_file, kernel_options, \
    open_source

# What a scenario source may be (load_scenario, and a dump for these commands).
SOURCE_HELP = ("a scenario .py, 'demo' (the default) or 'demo-python', a compiled driver .sys, "
               "or a crash dump")


def add_commands(sub) -> None:
    run = sub.add_parser("run", help="run a scenario (your drivers and workload) or a .sys",
                         epilog="exit status: 0 clean; 1 leaks or verifier findings; 2 usage (bad "
                                "arguments, a wrong scenario or .sys, a Python error in the "
                                "drivers or workload); 3 a bug check; 70 ntpool itself failed "
                                "(please report it); 130 interrupted (Ctrl-C); 141 the output "
                                "pipe closed; --fail-on chooses which of 1 and 3 fail the run")
    run.add_argument("scenario", help="a scenario .py file, 'demo', 'demo-python', or a compiled "
                                      "driver .sys (loaded, DriverEntry, unloaded)")
    run.add_argument("--verifier", metavar="OPTIONS", default="",
                     help="for a .sys: Driver Verifier options, comma-separated: "
                          + ", ".join(VERIFIER_OPTIONS))
    run.add_argument("--ioctl", action="append", default=[], metavar="CODE[:INPUT_HEX[:OUTPUT_LENGTH]]",
                     help="for a .sys: after DriverEntry its first device is opened and this "
                          "IOCTL sent (CODE hex, transfer method from its low bits, input as hex "
                          "bytes, output buffer length); repeatable, in order")
    run.add_argument("--allow-missing", action="store_true",
                     help="for a .sys: load it even if it imports routines ntpool does not "
                          "implement (a call to one stops the run, naming it)")
    _machine_arguments(run)
    run.add_argument("--dump", metavar="PATH", help="write a crash dump here on a bug check")
    run.add_argument("--truth", metavar="FILE", help="with --dump: also the manifest of every "
                                                      "chunk in it (JSON, see README 'for forensics')")
    run.add_argument("--top", type=int, default=20, metavar="N",
                     help="rows of the pool table (default 20)")
    run.add_argument("--fail-on", choices=FAIL_ON, default="leak",
                     help="what makes the exit status non-zero: leak (leaks, verifier findings "
                          "and bug checks; the default), bugcheck (bug checks only), none")
    run.set_defaults(func=cmd_run)

    poolmon = sub.add_parser("poolmon", help="watch pool usage by tag, like poolmon")
    _source_arguments(poolmon)
    poolmon.add_argument("--sort", choices=list(SORT_KEYS), default="t",
                         help="t tag (the default, as poolmon), a allocs, f frees, d diff, "
                              "b bytes, m per alloc")
    poolmon.add_argument("--reverse", action="store_true", help="reverse the sort order")
    poolmon.add_argument("--pool", choices=POOL_FILTERS, default="both", help="pool type shown")
    poolmon.add_argument("--include", "-i", action="append", default=[], metavar="TAG",
                         help="show only tags matching (wildcards * ?); repeatable")
    poolmon.add_argument("--exclude", "-x", action="append", default=[], metavar="TAG",
                         help="hide tags matching (wildcards * ?); repeatable")
    poolmon.add_argument("--once", action="store_true", help="print one table at the end and exit")
    poolmon.add_argument("--iterations", type=int, metavar="N",
                         help="print a table at each of the first N checkpoints and exit")
    poolmon.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                         help="seconds between refreshes in the live view (default 1)")
    poolmon.add_argument("--limit", type=int, metavar="N", help="show at most this many rows")
    poolmon.add_argument("--totals", action="store_true",
                         help="add the totals rows per pool type (the live view's e key)")
    poolmon.set_defaults(func=cmd_poolmon)

    poolsnap = sub.add_parser("poolsnap", help="save a pool tag snapshot, or diff two")
    poolsnap.add_argument("source", nargs="?",
                          help=SOURCE_HELP)
    poolsnap.add_argument("-o", "--output", metavar="FILE", help="the snapshot file to write")
    poolsnap.add_argument("--checkpoint", type=int, metavar="N",
                          help="snapshot at checkpoint N (default: the end of the workload)")
    poolsnap.add_argument("--diff", nargs=2, metavar=("BEFORE", "AFTER"),
                          help="print the tags that grew from snapshot BEFORE to AFTER")
    _machine_arguments(poolsnap)
    poolsnap.set_defaults(func=cmd_poolsnap)

    picture = sub.add_parser("picture", help="draw the pool: a page map or usage over time")
    picture.add_argument("kind", choices=("pagemap", "usage"),
                         help="pagemap: each pool page a strip of its chunks, coloured by tag; "
                              "usage: outstanding bytes of the top tags at each checkpoint "
                              "(a scenario only)")
    _source_arguments(picture)
    picture.add_argument("-o", "--output", required=True, metavar="FILE.png|FILE.svg",
                         help="the picture to write (its suffix chooses the format)")
    picture.add_argument("--pool", choices=POOL_FILTERS, default="both",
                         help="the pool types in the page map (default both)")
    picture.add_argument("--max-pages", type=int, default=96, metavar="N",
                         help="pages in the page map (default 96)")
    picture.add_argument("--top", type=int, default=10, metavar="N",
                         help="tags in the usage chart (default 10)")
    picture.add_argument("--checkpoint", type=int, metavar="N",
                         help="page map at checkpoint N (default: the end of the workload)")
    picture.set_defaults(func=cmd_picture)

    report = sub.add_parser("report", help="a self-contained HTML report of a scenario or dump")
    _source_arguments(report)
    report.add_argument("-o", "--output", required=True, metavar="FILE.html",
                        help="the report to write (one self-contained file)")
    report.set_defaults(func=cmd_report)


def _machine_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload's rng (default 1)")
    parser.add_argument("--nonpaged-pool-mib", type=int, metavar="MIB",
                        help="nonpaged pool size (default: the scenario's, else 64)")
    parser.add_argument("--paged-pool-mib", type=int, metavar="MIB",
                        help="paged pool size (default: the scenario's, else 64)")
    parser.add_argument("--pooltag", metavar="FILE",
                        help="a pooltag.txt naming tag owners (also: NTPOOL_POOLTAG)")
    add_windows_argument(parser)


def _source_arguments(parser) -> None:
    parser.add_argument("source", nargs="?", default="demo",
                        help=SOURCE_HELP)
    _machine_arguments(parser)


def _positive(option: str, value):
    if value is not None and value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")
    return value


# --- ntpool run ----------------------------------------------------------------------------------

VERIFIER_OPTIONS = ("special_pool", "pool_tracking", "low_resources", "systematic_low_resources",
                    "force_irql_checking", "uninitialized_memory", "special_pool_underruns")


def _verifier_options(text: str) -> dict:
    options = {}
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name not in VERIFIER_OPTIONS:
            raise ValueError(f"--verifier: unknown option {name!r} (one of: "
                             f"{', '.join(VERIFIER_OPTIONS)})")
        options[name] = True
    return options

EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE, EXIT_BUGCHECK = 0, 1, 2, 3
FAIL_ON = ("leak", "bugcheck", "none")


def cmd_run(args) -> int:
    console = wide_console()
    _positive("--top", args.top)
    pooltags = PoolTagDatabase.default(args.pooltag)  # a missing --pooltag is said before the run
    if args.truth is not None:
        if args.dump is None:
            raise ValueError("--truth FILE describes the dump: it needs --dump PATH")
        check_output_file("--truth", args.truth)
    spec = args.scenario
    if spec.lower().endswith(".sys"):
        spec = load_scenario(spec, verifier=_verifier_options(args.verifier),
                             allow_missing=args.allow_missing,
                             requests=[parse_ioctl(text) for text in args.ioctl])
    elif args.verifier or args.allow_missing or args.ioctl:
        raise ValueError("--verifier, --allow-missing and --ioctl are for a .sys (a scenario "
                         "file says VERIFIER itself and sends its own requests)")
    source = ScenarioSource(spec, args.seed, kernel_options(args), args.dump)
    run = source.run
    run.truth_path = args.truth
    run.boot()
    # What the drivers print (DbgPrint), as it comes.
    run.kernel.hooks.subscribe(DebugPrinted, lambda event: console.print(
        f"DbgPrint: {event.line}", markup=False, highlight=False))
    run.load_drivers()
    names = ", ".join(_driver_name(d) for d in run.loaded) or "none"
    if run.bugcheck:  # the driver being loaded stopped the machine: say which, not just "none"
        names += f" ({_driver_name(run.scenario.drivers[len(run.loaded)])} bug-checked while " \
                 f"loading, in its DriverEntry)"
    console.print(f"[bold]{source.name}[/bold] (seed {args.seed}): drivers loaded: {names}",
                  highlight=False)
    with checkpoint_progress(source, "running the workload"):
        source.run_to()
    end = source.snapshot()
    when = "when the machine stopped" if run.bugcheck else "at the end of the workload"
    run.finish()
    model = PoolmonModel(sort="b", pooltags=pooltags)
    model.update(end)
    console.print(poolmon_table(model, title=f"Pool usage by tag {when} "
                                             f"({_checkpoints(source.checkpoint)})",
                                limit=args.top, width=table_width(console)))
    if run.bugcheck:
        console.print(f"[bold red]{run.bugcheck}[/bold red]", highlight=False)
        culprit = getattr(run.bugcheck, "driver_name", "")
        if culprit:
            where = getattr(run.bugcheck, "call_site", "")
            console.print(f"Probably caused by: {culprit}" + (f" ({where})" if where else ""),
                          markup=False, highlight=False)
        if run.dump_written:
            console.print(f"Wrote {run.dump_written}.")
        if run.dump_error:
            print(f"ntpool: --dump {args.dump}: cannot write the dump: {run.dump_error}",
                  file=sys.stderr)
        return EXIT_BUGCHECK if args.fail_on in ("leak", "bugcheck") else EXIT_CLEAN
    findings = 0
    # What the I/O manager's IRP and MDL lookaside lists keep is still allocated ("Irp ",
    # "Mdl ", nonpaged), as on Windows: the kernel's cache, not a leak.
    kept = run.kernel.io_lookaside_holdings()
    left = []
    for u in Snapshot.from_pool_tags(run.kernel.pool_tags()).rows:
        count, size = kept.get(u.tag, (0, 0)) if u.type == "Nonp" else (0, 0)
        if u.diff - count > 0:
            left.append((u.tag, u.type, u.diff - count, u.bytes - size))
    if left:
        findings += 1
        console.print("[yellow]Still allocated after the drivers unloaded (leaks):[/yellow] " +
                      ", ".join(f"{tag.rstrip()} ({kind}) {diff} x, {size} bytes"
                                for tag, kind, diff, size in left), highlight=False)
    else:
        console.print("The drivers unloaded and left no pool allocated.")
    if kept:
        console.print("Kept on the I/O manager's lookaside lists (not leaks): " +
                      ", ".join(f"{tag.rstrip()} {count} x, {size} bytes"
                                for tag, (count, size) in sorted(kept.items())), highlight=False)
    for report in run.kernel.verifier.disclosures:
        findings += 1
        console.print(f"[yellow]Driver Verifier:[/yellow] {report.describe(run.kernel)}",
                      highlight=False)
    if args.dump:  # asked for, and not made: say so, rather than leave no file without a word
        console.print(f"No bug check, so no dump: --dump {args.dump} is written when the "
                      f"machine bug-checks" + (" (and --truth with it)" if args.truth else "")
                      + ".", markup=False, highlight=False)
    if findings and args.fail_on == "leak":
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _driver_name(driver) -> str:
    return getattr(driver, "name", None) or repr(driver)


def _checkpoints(count: int) -> str:
    return "1 checkpoint" if count == 1 else f"{count} checkpoints"


class checkpoint_progress:
    """A progress bar over the scenario's checkpoints, on stderr and only on a terminal."""

    def __init__(self, source, description: str):
        self.source = source
        self.description = description
        self.progress = None

    def __enter__(self):
        from rich.console import Console

        console = Console(stderr=True)
        if self.source.kind != "scenario" or not console.is_terminal:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 transient=True)
        self.progress.start()
        task = self.progress.add_task(self.description,
                                      total=self.source.run.scenario.checkpoints)
        self.source.on_checkpoint = lambda label: self.progress.update(
            task, advance=1, description=f"{self.description}: {label}"[:60])
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.source.on_checkpoint = None
            self.progress.stop()
        return False


# --- ntpool poolmon -------------------------------------------------------------------------

def cmd_poolmon(args) -> int:
    _positive("--iterations", args.iterations)
    _positive("--limit", args.limit)
    if not 0 < args.interval < float("inf"):  # nan and inf too: the live view waits on it
        raise ValueError(f"--interval must be a positive number of seconds, got {args.interval}")
    model = PoolmonModel(sort=args.sort, reverse=args.reverse, pool_filter=args.pool,
                         include=list(args.include), exclude=list(args.exclude),
                         pooltags=PoolTagDatabase.default(args.pooltag))
    source = open_source(args.source, args.seed, kernel_options(args))
    console = wide_console()
    live = console.is_terminal and sys.stdin.isatty() and not args.once and not args.iterations
    if live:
        def refresh() -> str:
            if source.kind == "scenario":
                source.advance()
            model.update(source.snapshot())
            return source.status()

        interactive(model, refresh, args.interval, console, machine=source.machine)
        return 0
    state = ViewState(show_totals=args.totals)

    def screen():
        return poolmon_screen(model, source.status(), prompt=None, limit=args.limit,
                              width=table_width(console), state=state, machine=source.machine())

    if args.iterations and source.kind == "scenario":
        for iteration in range(args.iterations):
            if not source.advance():
                break
            model.update(source.snapshot())
            if iteration:
                console.print()  # a blank line between the tables
            console.print(screen())
        return 0
    # A crash dump is one moment: one table, however many iterations were asked for.
    if source.kind == "scenario":
        with checkpoint_progress(source, "running the scenario"):
            source.run_to()
    model.update(source.snapshot())
    console.print(screen())
    return 0


# --- ntpool poolsnap -----------------------------------------------------------------------

def cmd_poolsnap(args) -> int:
    if args.diff:
        if args.source or args.output:
            raise ValueError("poolsnap --diff BEFORE AFTER takes no source and no -o")
        before, after = (_read_snapshot(path) for path in args.diff)
        return _print_growth(before, after, PoolTagDatabase.default(args.pooltag))
    if not args.output:
        raise ValueError("poolsnap needs -o FILE (or --diff BEFORE AFTER)")
    check_output_file("-o", args.output)
    source = open_source(args.source or "demo", args.seed, kernel_options(args))
    with checkpoint_progress(source, "running the scenario"):
        source.run_to(args.checkpoint)
    snapshot = source.snapshot()
    Path(args.output).write_text(snapshot.to_json() + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(snapshot.rows)} tag rows ({snapshot.label})")
    return 0


def _read_snapshot(path: str) -> Snapshot:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a poolsnap file (not UTF-8 text)") from None
    return Snapshot.from_json(text, name=path)


def _print_growth(before: Snapshot, after: Snapshot, pooltags) -> int:
    grown = grown_tags(before, after)
    if not grown:
        print(f"No tag grew from {before.label or 'BEFORE'} to {after.label or 'AFTER'}.")
        return 0
    print(f"Tags that grew from {before.label or 'BEFORE'} to {after.label or 'AFTER'} "
          f"(most bytes first):")
    print(f"{'Tag':<5} {'Type':<5} {'Diff':^16} {'Bytes':^22} {'Grown':>10}  Owner")
    for g in grown:
        print(f"{g.tag:<5} {g.type:<5} {g.diff_before:>6} -> {g.diff_after:<6}"
              f" {g.bytes_before:>9} -> {g.bytes_after:<9} {g.bytes_grown:>+10}  "
              f"{owner_text(pooltags, g.tag)}".rstrip())  # a tag no one owns: no padding
    return 0


# --- pictures and the report ---------------------------------------------------------------

def cmd_picture(args) -> int:
    from ..tools import pictures
    from .report import source_colours

    _picture_format(args.output, ("png", "svg"))
    check_output_file("-o", args.output)
    _positive("--max-pages", args.max_pages)
    _positive("--top", args.top)
    source = open_source(args.source, args.seed, kernel_options(args))
    if args.kind == "usage":
        if source.kind != "scenario":
            raise ValueError("a crash dump holds one moment; usage over time needs a scenario")
        with checkpoint_progress(source, "running the scenario"):
            source.run_to()
        if source.bugcheck is None:
            # The end of the workload and what the unload left are samples too, as in the
            # report: a .sys has no checkpoints, and its chart showed the boot alone, empty.
            source.run.finish()
        figure = pictures.usage_figure(source.samples(), f"{source.name}: pool usage by tag",
                                       top=args.top, colours=source_colours(source))
    else:
        with checkpoint_progress(source, "running the scenario"):
            source.run_to(args.checkpoint)
        figure = pictures.pagemap_figure(source.page_strips(args.pool),
                                         f"Pool pages, {source.status()}",
                                         max_pages=args.max_pages, marks=_marks(source),
                                         colours=source_colours(source))
    pictures.save_figure(figure, args.output)
    print(f"wrote {args.output}")
    return 0


def reproduce_command(args, command: str) -> list[str]:
    """The command line that gives the same output again (seed and machine included)."""
    words = ["ntpool", command]
    if command == "picture":
        words.append(args.kind)
    words.append(args.source)
    from .sources import is_dump

    if not is_dump(args.source):
        words += ["--seed", str(args.seed)]
        for option in ("nonpaged_pool_mib", "paged_pool_mib", "windows"):
            value = getattr(args, option, None)
            if value is not None:
                words += ["--" + option.replace("_", "-"), str(value)]
    if getattr(args, "pooltag", None):
        words += ["--pooltag", args.pooltag]
    return words + ["-o", args.output]


def _marks(source) -> dict[int, str]:
    """The chunk a pool bug check names, to circle in the page map."""
    error = source.bugcheck
    if error is None:
        return {}
    code, (p1, p2, p3, p4) = error.code, error.parameters
    if code == 0x19 and p1 == 0x20:
        return {p2: f"overrun ({code:#x}/{p1:#x})", p3: "damaged header"}
    if code == 0xC2 and p1 == 0x07:  # (0x07, line, the header's first ULONG, address)
        return {p4 - HEADER_SIZE: "double free"}
    if code == 0xC2 and p1 in (0x0A, 0x99):
        return {p2 - HEADER_SIZE: f"bug check {code:#x}/{p1:#x}"}
    return {}


def _picture_format(path: str, allowed: tuple[str, ...]) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in allowed:
        raise ValueError(f"-o {path}: the file must end in "
                         f"{' or '.join('.' + a for a in allowed)}")
    return suffix


def cmd_report(args) -> int:
    from .report import build_report

    _picture_format(args.output, ("html", "htm"))
    check_output_file("-o", args.output)
    source = open_source(args.source, args.seed, kernel_options(args))
    with checkpoint_progress(source, "running the scenario"):
        source.run_to()
    text = build_report(source, PoolTagDatabase.default(args.pooltag), _marks,
                        command=reproduce_command(args, "report"))
    Path(args.output).write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0
