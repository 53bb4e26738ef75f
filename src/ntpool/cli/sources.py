"""Where poolmon, poolsnap, pictures and reports get the pool from: a scenario or a dump.

A scenario is run on a fresh machine, one checkpoint at a time; a crash dump is one
moment, read through the dump reader.
"""

from pathlib import Path

from ..constants import PAGE_SIZE
from ..pool.descriptor import PAGE_FREE
from ..tools.pictures import live_page_strips
from ..tools.poolmon import Snapshot
from ..tools.scenario import SAMPLE_SCENARIOS, Scenario, ScenarioRun, load_scenario
from ..windows import CHOICES as WINDOWS_CHOICES

DUMP_SIGNATURE = b"PAGEDU64"  # DUMP_HEADER64's Signature and ValidDump
MiB = 1 << 20


def is_dump(spec: str) -> bool:
    path = Path(spec)
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(8) == DUMP_SIGNATURE


class ScenarioSource:
    """A scenario being run: ``advance()`` runs it to its next checkpoint."""

    kind = "scenario"

    def __init__(self, spec: str, seed: int = 1, kernel_options: dict | None = None,
                 dump_path: str | None = None):
        scenario = spec if isinstance(spec, Scenario) else load_scenario(spec)
        self.run = ScenarioRun(scenario, seed=seed, kernel_options=kernel_options,
                               dump_path=dump_path)
        self.name = self.run.scenario.name
        self._steps = self.run.checkpoints()
        self.checkpoint = 0
        self.label = "boot"
        self.done = False
        self.on_checkpoint = None  # called with each checkpoint's label (progress displays)

    def advance(self) -> bool:
        """Run to the next checkpoint; False (and nothing run) once the workload is over."""
        if self.done:
            return False
        label = next(self._steps, None)
        if label is None:
            self.done = True
            self.label = "bug check" if self.run.bugcheck else "end of workload"
            return False
        self.checkpoint += 1
        self.label = label
        if self.on_checkpoint is not None:
            self.on_checkpoint(label)
        return True

    def run_to(self, checkpoint: int | None = None) -> None:
        """Run to checkpoint number ``checkpoint`` (1 is the first), or to the end."""
        if checkpoint is not None and checkpoint < 1:
            raise ValueError(f"--checkpoint {checkpoint} is out of range: checkpoints are "
                             f"numbered from 1")
        while (checkpoint is None or self.checkpoint < checkpoint) and self.advance():
            pass
        if checkpoint is not None and self.checkpoint < checkpoint:
            ended = (f"stopped by bug check {self.run.bugcheck.code:#x} after"
                     if self.run.bugcheck else "has")
            valid = f"1 to {self.checkpoint}" if self.checkpoint else "none"
            raise ValueError(f"--checkpoint {checkpoint} is out of range: {self.name} {ended} "
                             f"{self.checkpoint} checkpoints (valid: {valid})")

    @property
    def kernel(self):
        return self.run.kernel

    @property
    def bugcheck(self):
        return self.run.bugcheck

    def snapshot(self) -> Snapshot:
        label = self.label if self.checkpoint == 0 or self.done else \
            f"checkpoint {self.checkpoint}: {self.label}"
        return Snapshot.from_pool_tags(self.kernel.pool_tags(), label=label, source=self.name)

    def status(self) -> str:
        if self.run.bugcheck:
            error = self.run.bugcheck
            return f"{self.name}: stopped by bug check {error.code:#x} ({error.name})"
        if self.done:
            return f"{self.name}: workload finished after {self.checkpoint} checkpoints"
        return f"{self.name}: checkpoint {self.checkpoint} ({self.label})"

    def page_strips(self, pool: str = "both"):
        return live_page_strips(self.kernel, pool)

    def machine(self) -> dict:
        """poolmon's top lines: memory, commit and each pool's pages in use (bytes)."""
        return machine_totals(self.kernel, self)

    def samples(self):
        return self.run.samples


def machine_totals(kernel, holder) -> dict:
    physical = kernel.physical
    in_use = physical.frame_count - physical.frame_in_use.count(0)
    commit = in_use * PAGE_SIZE
    holder.peak_commit = max(getattr(holder, "peak_commit", 0), commit)
    pager = vars(kernel).get("pager")  # read directly: a halted machine refuses routines

    def pool_bytes(pool) -> int:
        return (len(pool.page_kind) - pool.page_kind.count(PAGE_FREE)) * PAGE_SIZE

    # Windows 10/11 have two nonpaged heaps (NonPagedPool and NonPagedPoolNx): both count.
    nonpaged = [pool for pool in (kernel.nonpaged_pool, getattr(kernel, "nonpaged_pool_nx", None))
                if pool is not None]
    return {"memory": physical.frame_count * PAGE_SIZE,
            "available": (physical.frame_count - in_use) * PAGE_SIZE,
            "commit": commit, "peak": holder.peak_commit,
            "nonpaged": sum(pool_bytes(pool) for pool in nonpaged), "paged": pool_bytes(kernel.paged_pool),
            "page_faults": getattr(pager, "pages_in", 0)}


def open_source(spec: str, seed: int = 1, kernel_options: dict | None = None,
                dump_path: str | None = None):
    if is_dump(spec):
        from .dump_source import DumpSource

        if kernel_options:
            raise ValueError("pool sizes and --windows are for scenarios; a crash dump has its own")
        return DumpSource(spec)
    path = Path(spec)
    if not path.exists() and spec not in SAMPLE_SCENARIOS and \
            path.suffix.lower() not in (".py", ".sys"):
        # These commands read dumps too: a mistyped dump's name is not "a scenario" missing
        raise ValueError(f"{spec} does not exist (give a crash dump, a scenario .py file, a "
                         f"compiled driver .sys, or one of: {', '.join(SAMPLE_SCENARIOS)})")
    if path.suffix.lower() == ".dmp" and path.is_file():
        raise ValueError(f"{spec} is not a crash dump (no {DUMP_SIGNATURE.decode()} signature)")
    if path.is_file() and path.suffix.lower() not in (".py", ".sys"):
        raise ValueError(f"{spec} is neither a crash dump (no {DUMP_SIGNATURE.decode()} "
                         f"signature) nor a scenario .py file nor a compiled driver .sys")
    return ScenarioSource(spec, seed, kernel_options, dump_path)


def kernel_options(args) -> dict:
    options = {}
    if getattr(args, "nonpaged_pool_mib", None) is not None:
        options["nonpaged_pool_bytes"] = _mib("--nonpaged-pool-mib", args.nonpaged_pool_mib)
    if getattr(args, "paged_pool_mib", None) is not None:
        options["paged_pool_bytes"] = _mib("--paged-pool-mib", args.paged_pool_mib)
    if getattr(args, "windows", None) is not None:
        options["windows"] = args.windows
    return options


def check_output_file(option: str, path: str) -> None:
    """Refuse an output path that cannot be a file before any work is done for it (the run
    it would describe can take minutes), with one line naming the option and the path."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path}: a directory (give a file name)")
    if not target.parent.is_dir():
        what = "not a directory" if target.parent.exists() else "no such directory"
        raise ValueError(f"{option} {path}: {what}: {str(target.parent)!r}")
    # A folder that exists may still refuse a new file (read-only, not ours, /proc): try it,
    # and take away the empty file made (an existing one is opened and left as it was).
    existed = target.exists()
    try:
        with open(target, "ab"):
            pass
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot be written: "
                         f"{error.strerror or error}") from None
    if not existed:
        try:
            target.unlink()
        except OSError:
            pass


def add_windows_argument(parser) -> None:
    """``--windows``: which Windows the machine runs, hence which pool design."""
    parser.add_argument("--windows", choices=WINDOWS_CHOICES, default=None, metavar="VERSION",
                        help="7 (the default: the classic pool), 10 (build 19041), 11 (build "
                             "22621: the segment heap), or a build number such as 26100")


def _mib(option: str, value: int) -> int:
    if not 1 <= value <= 65536:
        raise ValueError(f"{option} must be from 1 to 65536 MiB, got {value}")
    return value * MiB
