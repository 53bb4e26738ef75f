"""``ntpool`` subcommands. Every error is one line on stderr and a non-zero exit."""

import argparse
import linecache
import os
import signal
import sys

# Only the standard library here: the subcommands' modules are imported in build_parser(),
# after main() has set up Ctrl-C, so an interrupt while they load is one line too.

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a C tool killed by a closed pipe
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: ntpool itself failed (not the model, not the input)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(seed=args.seed, out_dir=args.out, steps=args.steps, windows=args.windows,
                    truth=args.truth, python_drivers=args.python_drivers)


def _cmd_bench(args) -> int:
    from ..tools.bench import WINDOWS7_PAIR_GOAL, report_lines, run

    results = run(quick=args.quick, windows=args.windows)
    print(f"{results['windows']} (medians; 'bare' is the bare-minimum pure-Python pool "
          f"measured in the same rounds)")
    for line in report_lines(results):
        print(line)
    print(f"small pair p90: {results['small_pair_p90_us']:.2f} us")
    segment_heap = "windows7_pair_median_us" in results
    if segment_heap:
        reference = results["windows7_pair_median_us"]
        print(f"the same pair on Windows 7's allocator in this run: median {reference:.2f} us "
              f"(ratio {results['small_pair_median_us'] / reference:.2f}, target <= {WINDOWS7_PAIR_GOAL})")
    few, many = results["live_1k"], results["live_many"]
    ratio = many["median_pair_us"] / few["median_pair_us"]
    flat_goal = 1.3 if segment_heap else 1.2
    print(f"pair with {few['live']:,} live: {few['median_pair_us']:.2f} us "
          f"({few['median_pair_us'] / few['bare_pair_us']:.2f}x bare); "
          f"with {many['live']:,} live: {many['median_pair_us']:.2f} us "
          f"({many['median_pair_us'] / many['bare_pair_us']:.2f}x bare): flat ratio {ratio:.2f} "
          f"(goal <= {flat_goal}: {'met' if ratio <= flat_goal else 'MISSED'})")
    native = results.get("native")
    if native:
        print(f"native (bench.sys, machine code calling through the bridge): "
              f"{native['native_pair_us']:.2f} us per pair (target <= 6 us); the same pair "
              f"from Python in this run {native['python_pair_us']:.2f} us (ratio "
              f"{native['native_pair_us'] / native['python_pair_us']:.2f}); the CPU alone "
              f"{native['loop_iteration_ns']:.1f} ns per loop iteration")
        _print_speakeasy(native, args)
    memory = many["memory_ratio"]
    print(f"simulator memory per live 100-byte allocation (128 pool bytes), {many['live']:,} live: "
          f"{many['simulator_bytes_per_live']:.0f} bytes = {memory:.2f}x "
          f"(goal <= 1.1x: {'met' if memory <= 1.1 else 'MISSED'})")
    return 0


def _print_speakeasy(native: dict, args) -> None:
    """The same bench.sys loop under speakeasy (its own environment: it pins unicorn 1.0.2)."""
    from ..native.bench import bench_driver
    from ..tools.speakeasy_bench import compare

    python = args.speakeasy_python or os.environ.get("NTPOOL_SPEAKEASY_PYTHON") or None
    figures = compare(bench_driver(), python, pairs=300 if args.quick else 1000)
    if figures is None:
        print("speakeasy comparison: not measured (speakeasy does not import here; give "
              "--speakeasy-python with the python of a venv that has speakeasy-emulator)")
    elif "error" in figures:
        print(f"speakeasy comparison: failed ({figures['error']})")
    else:
        ratio = figures["pair_us"] / native["native_pair_us"]
        print(f"speakeasy {figures['speakeasy_version']} (unicorn {figures['unicorn_version']}), "
              f"the same loop of bench.sys through its ExAllocatePoolWithTag/ExFreePoolWithTag "
              f"handlers: {figures['pair_us']:.0f} us per pair, {figures['loop_iteration_ns']:.0f} "
              f"ns per empty loop iteration; ntpool's native pair is {ratio:.0f}x faster "
              f"(goal >= 200x: {'met' if ratio >= 200 else 'MISSED'})")


def _cmd_kd(args) -> int:
    from .kd import run_kd

    return run_kd(args.dump, args.commands, args.pooltag)


def _cmd_bench_campaign(args) -> int:
    from ..campaign.bench import run_and_report

    if args.runs < 1:
        raise ValueError(f"--runs must be at least 1, got {args.runs}")
    return run_and_report(args.runs, args.jobs, args.windows)


def _cmd_bench_dump(args) -> int:
    from ..tools.bench_dump import run_and_report

    return run_and_report(args.pool_mib, args.directory, args.windows, not args.no_volatility,
                          args.sparse_gib, args.volatility_pool_mib)


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``ntpool CMD -h`` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .forensics import add_forensics_commands
    from .sources import add_windows_argument
    from .tools import add_commands
    from .verify import add_verify_command

    parser = OneLineErrorParser(prog="ntpool", description="A faithful model of the Windows kernel pool.")
    parser.add_argument("--version", action="version", version=f"ntpool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.subcommands = sub.choices  # name -> its parser, for errors that name the subcommand
    demo = sub.add_parser("demo", help="boot a machine, run drivers, watch the pool")
    demo.add_argument("--seed", type=int, default=1, help="seed of the workload (default 1)")
    demo.add_argument("--out", default=".", metavar="DIR", help="where MEMORY.DMP goes (made if missing; default .)")
    demo.add_argument("--truth", metavar="FILE", help="also write the manifest of every chunk in "
                                                       "MEMORY.DMP (JSON)")
    demo.add_argument("--steps", type=int, default=None,
                      help="traffic steps (default 4000; fewer for a quick run)")
    demo.add_argument("--python-drivers", action="store_true",
                      help="run the Python sample drivers instead of the compiled ones")
    add_windows_argument(demo)
    demo.set_defaults(func=_cmd_demo)
    bench = sub.add_parser("bench", help="measure the allocator's speed and memory")
    bench.add_argument("--quick", action="store_true", help="smaller runs (100K live, not 1M)")
    bench.add_argument("--speakeasy-python", metavar="PYTHON",
                       help="the python of an environment with speakeasy-emulator, to time the "
                            "same native loop under speakeasy (default $NTPOOL_SPEAKEASY_PYTHON)")
    add_windows_argument(bench)
    bench.set_defaults(func=_cmd_bench)
    kd = sub.add_parser("kd", help="analyse a crash dump as kd does (!analyze -v, !pool, !poolfind ...)")
    kd.add_argument("-z", dest="dump", required=True, metavar="DUMP", help="the crash dump file")
    kd.add_argument("-c", dest="commands", metavar="COMMANDS",
                    help='commands to run, separated by ";" (default: an interactive prompt)')
    kd.add_argument("--pooltag", metavar="FILE",
                    help="a pooltag.txt naming tag owners (also: NTPOOL_POOLTAG)")
    kd.set_defaults(func=_cmd_kd)
    bench_dump = sub.add_parser("bench-dump", help="measure dump writing, !poolfind and !poolused")
    bench_dump.add_argument("--pool-mib", type=int, default=512,
                            help="MiB of each pool; the full dump is a bit over twice that (default 512)")
    bench_dump.add_argument("--directory", default=None, help="where to write the dumps (default: a temp dir)")
    bench_dump.add_argument("--no-volatility", action="store_true",
                            help="skip volatility3's scan for every tag")
    bench_dump.add_argument("--volatility-pool-mib", type=int, default=8,
                            help="MiB of each pool of the dump volatility3 and !poolfind * both scan "
                                 "(default 8: a full dump of 36 MiB, which volatility3 scans in "
                                 "about 9-16 s, more with more hits; equal to --pool-mib: the "
                                 "same dump; 0 skips)")
    bench_dump.add_argument("--sparse-gib", type=int, default=4,
                            help="also scan a full dump of this many GiB of mostly empty memory, "
                                 "for peak memory (default 4; 0 skips)")
    add_windows_argument(bench_dump)
    bench_dump.set_defaults(func=_cmd_bench_dump)
    bench_campaign = sub.add_parser("bench-campaign",
                                    help="measure the campaign engine: serial, all cores, Dask")
    bench_campaign.add_argument("--runs", type=int, default=1000, help="short runs (default 1000)")
    bench_campaign.add_argument("-j", "--jobs", type=int, default=None,
                                help="worker processes (default: every core)")
    add_windows_argument(bench_campaign)
    bench_campaign.set_defaults(func=_cmd_bench_campaign)
    add_commands(sub)
    add_verify_command(sub)
    add_forensics_commands(sub)
    for choice in sub._choices_actions:  # `ntpool CMD -h` opens with what CMD does
        command = sub.choices[choice.dest]
        if command.description is None:
            command.description = choice.help
        command.add_argument("--version", action="version", version=f"ntpool {__version__}",
                             help="print ntpool's version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    interrupt = _InterruptWatch()
    try:
        with interrupt:
            parser = build_parser()
            args, unknown = parser.parse_known_args(argv)
            if unknown:  # named by the subcommand's parser: "ntpool run: unrecognized ..."
                parser.subcommands.get(args.command, parser).error(
                    f"unrecognized arguments: {' '.join(unknown)}")
            try:
                status = args.func(args)
            except SystemExit as stop:
                raise _scenario_exit(stop) or stop
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return status
    except SystemExit:
        raise  # argparse's usage errors, --help and --version: already one line
    except BaseException as error:  # noqa: BLE001 - every way out is one line and a status
        return _report(error, interrupt.seen)


def _report(error: BaseException, interrupted: bool) -> int:
    """The one line (or none) and the exit status for what stopped a command."""
    from ..errors import BugCheck, MachineHalted, NtStatusError, TagError
    from ..tools.scenario import ScenarioError

    # Ctrl-C and a closed pipe first, however deep they were caught and wrapped (a driver's
    # routine, native code, a scenario's line): they are the user's doing, not an error.
    if interrupted or _caused_by(error, KeyboardInterrupt):
        print("ntpool: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _caused_by(error, BrokenPipeError):
        # The reader (head, less) went away: stop quietly, as a C tool dies of SIGPIPE.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if isinstance(error, BugCheck):
        print(f"ntpool: the machine bug-checked: {error}", file=sys.stderr)
        return 3
    if isinstance(error, OSError) and error.strerror:
        # "ntpool: out/x.json: No such file or directory", not "[Errno 2] ...: 'out/x.json'";
        # without a file (the output itself: a full disk), the system's words alone
        where = f"{error.filename}: " if error.filename is not None else ""
        print(f"ntpool: {where}{error.strerror}", file=sys.stderr)
        return 2
    if isinstance(error, (TagError, NtStatusError, ScenarioError, MachineHalted, ValueError,
                          TypeError, OSError, MemoryError)):
        print(f"ntpool: {error}", file=sys.stderr)
        return 2
    if os.environ.get("NTPOOL_TRACEBACK"):
        raise error
    print(f"ntpool: internal error: {type(error).__name__}: {error} (a bug in ntpool; "
          f"NTPOOL_TRACEBACK=1 shows where)", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def _scenario_exit(stop: SystemExit) -> BaseException | None:
    """A scenario's or driver's own ``sys.exit(3)`` as the Python error in it that it is (one
    line naming the place, status 2): it ended the command with its status, 3 ("the machine
    bug-checked") and no word. None for ntpool's own exits (the code raising is ntpool's)."""
    import traceback

    frames = traceback.extract_tb(stop.__traceback__)
    if not frames or frames[-1].filename.startswith(_PACKAGE_DIRECTORY):
        return None
    from ..tools.scenario import ScenarioError

    frame = frames[-1]
    return ScenarioError(f"{frame.filename}:{frame.lineno} in {frame.name}: SystemExit"
                         f"({stop.code!r}): a scenario ends by returning, not by sys.exit")


_PACKAGE_DIRECTORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caused_by(error: BaseException | None, kind: type) -> bool:
    """Whether ``error`` is ``kind`` or was raised while handling one (its chain of causes)."""
    seen, waiting = set(), [error]
    while waiting:
        error = waiting.pop()
        if error is None or id(error) in seen:
            continue
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        waiting += (error.__cause__, error.__context__)
    return False


class _InterruptWatch:
    """Notes a Ctrl-C (SIGINT) while a command runs, so that however the KeyboardInterrupt is
    caught and wrapped on its way out (inside a routine a driver called, in native code), the
    command still ends as interrupted. Installed only over Python's default handler."""

    def __init__(self):
        self.seen = False
        self.previous = None

    def _handler(self, signum, frame):
        self.seen = True
        if frame is not None and frame.f_lineno == frame.f_code.co_firstlineno:
            # A function about to run its first line. If C called it (a CPU hook through
            # ctypes, while a compiled driver runs), an exception raised here, before its
            # own ``try``, would be printed and dropped by ctypes: raise it from that
            # frame's first line instead, inside the ``try``.
            _raise_at_next_line(frame)
            return
        raise KeyboardInterrupt

    def __enter__(self):
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: signals are not ours to handle
            pass
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _raise_at_next_line(frame) -> None:
    """KeyboardInterrupt from the next line Python runs in ``frame`` or in a frame called
    after it (a ctypes callback may return to C first and be called again), through a
    one-shot trace function. A ``try:`` line is passed over: it lies before the block its
    handler protects."""
    previous = sys.gettrace()
    done = False

    def interrupt(traced, event, arg):
        nonlocal done
        if done:
            return None
        if event != "line" or linecache.getline(traced.f_code.co_filename,
                                                traced.f_lineno).strip() == "try:":
            return interrupt  # a call (trace it too), a return, or a try: keep waiting
        done = True
        sys.settrace(previous)
        raise KeyboardInterrupt

    frame.f_trace = interrupt
    frame.f_trace_lines = True
    sys.settrace(interrupt)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
