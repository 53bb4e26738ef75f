"""Scenarios: a user's drivers and workload, run on a fresh machine.

A scenario is a Python file that defines

- ``DRIVERS``: a list of driver objects (``name``, ``DriverEntry(k, RegistryPath)``,
  ``DriverUnload(k)``), loaded in order before the workload and unloaded after it;
- ``workload(k, rng)``: the work, with ``k`` the machine and ``rng`` a ``random.Random``
  seeded from ``--seed``. It may be a generator: each ``yield`` (optionally
  ``yield "label"``) is a checkpoint where poolmon refreshes and a usage sample is taken;
- optionally ``KERNEL = dict(nonpaged_pool_bytes=..., paged_pool_bytes=...)``,
  ``VERIFIER = {"driver.sys": dict(special_pool=True, ...)}`` (``k.verifier.enable``
  options per driver) and ``CHECKPOINTS`` (how many yields to expect, for progress bars).

``ScenarioRun`` boots the machine, loads the drivers, steps the workload checkpoint by
checkpoint, records per-tag usage samples there (never in the allocator's path), and
unloads. A bug check stops the run and is kept in ``run.bugcheck``.
"""

import inspect
import random
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import BugCheck
from .poolmon import Snapshot
from ..kernel import Kernel
from ..routines.registry import explain_argument_error

SAMPLES_DIRECTORY = Path(__file__).parent.parent / "samples"
# "demo": the compiled sample drivers; "demo-python": the same story by the Python samples.
SAMPLE_SCENARIOS = {"demo": SAMPLES_DIRECTORY / "demo.py",
                    "demo-python": SAMPLES_DIRECTORY / "demo_python.py"}
MiB = 1 << 20
# How long the machine runs on after the drivers unload: one full round of the balance set
# manager's lookaside scans (three passes, one a second).
AFTER_UNLOAD_SECONDS = 3
_CORE_DIRECTORY = str(Path(__file__).parent.parent)
_SAMPLES_DIRECTORY = str(SAMPLES_DIRECTORY)


class ScenarioError(Exception):
    """The scenario file itself is wrong (cannot be read, does not define what it must)."""


@dataclass
class Scenario:
    name: str
    drivers: list
    workload: Callable
    kernel_options: dict = field(default_factory=dict)
    checkpoints: int | None = None
    path: str = ""
    verifier: dict = field(default_factory=dict)  # driver name -> verifier.enable() options


@dataclass
class UsageSample:
    """Per-tag outstanding bytes at one checkpoint: {tag: (nonpaged, paged)}."""

    index: int
    label: str
    bytes_by_tag: dict[str, tuple[int, int]]


def sys_scenario_source(path: str, verifier: dict | None = None,
                        allow_missing: bool = False, requests=()) -> str:
    """The scenario that runs one compiled driver: load (DriverEntry); open its first device,
    send ``requests`` (IOCTLs, ``ntpool.tools.requests``), close it; unload."""
    from .requests import request_source
    path = str(Path(path).resolve())
    name = Path(path).name
    verify = {name: dict(verifier)} if verifier else {}
    return (f"# {name} as a scenario: loaded (DriverEntry), its first device opened, the\n"
            f"# requests sent, the device closed, then unloaded.\n"
            f"from ntpool.native import NativeDriver\n"
            f"from ntpool.tools.requests import IoctlRequest, run_requests\n\n"
            f"DRIVERS = [NativeDriver({path!r}, allow_missing={allow_missing!r})]\n"
            f"VERIFIER = {verify!r}\n"
            f"REQUESTS = {request_source(list(requests))}\n\n\n"
            f"def workload(k, rng):\n    run_requests(k, DRIVERS[0], REQUESTS, print)\n")


# ntpool.native's refusals of a file as a driver (by name: ntpool.native is not imported here)
LOADER_REFUSALS = ("BadImage", "MissingImports")


def load_scenario(spec: str, verifier: dict | None = None, allow_missing: bool = False,
                  requests=()) -> Scenario:
    """A scenario from a file path, the name of a shipped sample (``demo``), or a compiled
    driver (``.sys``: loaded and unloaded, with ``verifier`` options for it)."""
    path = Path(spec)
    if path.suffix.lower() == ".sys":
        if path.is_dir():
            raise ScenarioError(f"driver {spec} is a directory, not a .sys file")
        if not path.is_file():
            raise ScenarioError(f"driver {spec} does not exist")
        return scenario_from_source(sys_scenario_source(str(path), verifier, allow_missing, requests),
                                    path.stem, str(path), spec)
    if spec in SAMPLE_SCENARIOS:
        # A sample's name has no .py suffix, so no file of that name could be run: the name
        # wins over what the current directory holds (`ntpool demo --out demo` makes a
        # folder named demo there). Loaded like a user's file: fresh drivers each time.
        path = SAMPLE_SCENARIOS[spec]
    choices = f"give a scenario .py file, a compiled driver .sys, or one of: {', '.join(SAMPLE_SCENARIOS)}"
    if path.is_dir():
        raise ScenarioError(f"scenario {spec} is a directory ({choices})")
    if not path.is_file():
        raise ScenarioError(f"scenario {spec} does not exist ({choices})")
    if path.suffix.lower() != ".py":
        # A C source, a header, a PDB or a dump would otherwise be run as Python and fail
        # with a "syntax error" that says nothing of what was wrong.
        raise ScenarioError(f"{spec} is not a scenario ({choices})")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(f"cannot read scenario {spec}: {error}") from None
    return scenario_from_source(source, path.stem, str(path), spec)


def scenario_from_source(source: str, name: str, path: str, spec: str | None = None) -> Scenario:
    """A scenario from its source text; ``path`` names it in errors and call sites (it need
    not exist here: campaigns carry scenarios to their workers by content)."""
    spec = spec or path
    try:
        code = compile(source, path, "exec")
    except SyntaxError as error:
        raise ScenarioError(f"{spec}:{error.lineno}: syntax error: {error.msg}") from None
    namespace = {"__name__": f"ntpool_scenario_{name}", "__file__": path}
    try:
        exec(code, namespace)
    except Exception as error:  # the user's module failed while being defined
        raise ScenarioError(f"{spec}:{_user_line(error, path)}: "
                            f"{type(error).__name__}: {error}") from None
    return scenario_from_namespace(namespace, name, path)


def scenario_from_namespace(namespace: dict, name: str, path: str) -> Scenario:
    workload = namespace.get("workload")
    if not callable(workload):
        raise ScenarioError(f"{path} defines no workload(k, rng) function")
    drivers = namespace.get("DRIVERS", [])
    if not isinstance(drivers, (list, tuple)):
        raise ScenarioError(f"{path}: DRIVERS must be a list of drivers")
    for driver in drivers:
        if not callable(getattr(driver, "DriverEntry", None)):
            raise ScenarioError(f"{path}: driver {driver!r} has no DriverEntry")
    checkpoints = namespace.get("CHECKPOINTS")
    if checkpoints is not None and (isinstance(checkpoints, bool) or not isinstance(checkpoints, int)
                                    or checkpoints < 0):
        raise ScenarioError(f"{path}: CHECKPOINTS must be how many checkpoints the workload "
                            f"yields (an int), got {checkpoints!r}")
    options = namespace.get("KERNEL", {})
    if not isinstance(options, dict):
        raise ScenarioError(f"{path}: KERNEL must be a dict of Kernel() arguments")
    verifier = namespace.get("VERIFIER", {})
    if not isinstance(verifier, dict) or not all(isinstance(v, dict) for v in verifier.values()):
        raise ScenarioError(f"{path}: VERIFIER must map driver names to dicts of options")
    return Scenario(name, list(drivers), workload, dict(options),
                    namespace.get("CHECKPOINTS"), path, dict(verifier))


def _machine_size(options: dict) -> str:
    """The sizes a scenario's machine asked for, as its KERNEL and the options gave them."""
    sizes = [f"{name}={options[name]:,}" for name in
             ("nonpaged_pool_bytes", "paged_pool_bytes", "physical_memory_bytes")
             if isinstance(options.get(name), int)]
    return ", ".join(sizes) or "the default sizes"


def _user_line(error: BaseException, path: str) -> str:
    """The line of the user's file where ``error`` was raised (innermost frame in it)."""
    line = "?"
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == path:
            line = str(frame.lineno)
    return line


class ScenarioRun:
    """One run of a scenario on a fresh machine."""

    def __init__(self, scenario: Scenario, seed: int = 1, kernel_options: dict | None = None,
                 dump_path: str | None = None):
        self.scenario = scenario
        self.seed = seed
        options = {"nonpaged_pool_bytes": 64 * MiB, "paged_pool_bytes": 64 * MiB}
        options.update(scenario.kernel_options)
        options.update(kernel_options or {})
        self.kernel_options = options
        self.dump_path = dump_path
        self.truth_path: str | None = None  # the truth manifest to write beside the dump
        self.kernel: Kernel | None = None
        self.samples: list[UsageSample] = []
        self.snapshots: list[Snapshot] = []
        self.bugcheck: BugCheck | None = None
        self.loaded: list = []
        self.dump_written: str | None = None
        self.dump_error: str | None = None  # why the dump could not be written (the OS's words)
        self.finished = False

    # --- stages ----------------------------------------------------------------------------

    def boot(self) -> Kernel:
        try:
            self.kernel = Kernel(**self.kernel_options)
        except (TypeError, ValueError) as error:
            raise ScenarioError(f"{self.scenario.path}: KERNEL: {error}") from None
        except (MemoryError, OSError) as error:  # the host cannot hold the machine asked for
            why = error.strerror if isinstance(error, OSError) and error.strerror else "out of memory"
            raise ScenarioError(f"{self.scenario.path}: the host cannot make this machine "
                                f"({why}): {_machine_size(self.kernel_options)}") from None
        for driver, options in self.scenario.verifier.items():
            try:
                self.kernel.verifier.enable(driver, **options)
            except TypeError as error:
                raise ScenarioError(f"{self.scenario.path}: VERIFIER[{driver!r}]: {error}") from None
        self.sample("boot")
        return self.kernel

    def load_drivers(self) -> None:
        for driver in self.scenario.drivers:
            self._call_driver(lambda: self.kernel.load_driver(driver))
            if self.bugcheck:
                return
            self.loaded.append(driver)

    def checkpoints(self) -> Iterator[str]:
        """Run the workload, yielding each checkpoint's label after its sample is taken."""
        if self.kernel is None:
            self.boot()
            self.load_drivers()
        if self.bugcheck:
            return
        rng = random.Random(self.seed)
        try:
            result = self._call_user(lambda: self.scenario.workload(self.kernel, rng))
            if inspect.isgenerator(result):
                while True:
                    label = self._call_user(lambda: next(result, StopIteration))
                    if label is StopIteration:
                        break
                    label = "" if label is None else str(label)
                    self.sample(label)
                    yield label
        except BugCheck as error:
            self._crashed(error)

    def unload_drivers(self) -> None:
        if self.bugcheck:
            return
        for driver in reversed(self.loaded):
            self._call_driver(lambda: self.kernel.unload_driver(driver))
            if self.bugcheck:
                return
        self.loaded.clear()

    def finish(self) -> None:
        """Unload the drivers (unless the machine is down) and take the last sample."""
        if self.finished:
            return
        self.sample("end of workload")
        self.unload_drivers()
        if not self.bugcheck:
            # Windows runs on after the unload: within AFTER_UNLOAD_SECONDS the balance set
            # manager has scanned every lookaside list once (ExAdjustLookasideDepth scans the
            # drivers' nonpaged lists, their paged lists and the pool's in turn, one a second),
            # so a list left linked in an unloaded image is found (0xD4), as are timers due.
            self._call_driver(lambda: self.kernel.advance_time(AFTER_UNLOAD_SECONDS))
        if not self.bugcheck:
            self.sample("after unload")
        self.finished = True

    def run(self) -> "ScenarioRun":
        for _ in self.checkpoints():
            pass
        self.finish()
        return self

    # --- samples ---------------------------------------------------------------------------

    def sample(self, label: str) -> None:
        rows = self.kernel.pool_tags()
        index = len(self.samples)
        self.samples.append(UsageSample(index, label, {
            row.Tag: (row.NonPagedUsed, row.PagedUsed) for row in rows}))
        self.snapshots.append(Snapshot.from_pool_tags(rows, label=label or f"checkpoint {index}",
                                                      source=self.scenario.name))

    # --- errors ----------------------------------------------------------------------------

    def _call_driver(self, action) -> None:
        try:
            self._call_user(action)
        except BugCheck as error:
            self._crashed(error)

    def _call_user(self, action):
        """Run user code; a Python error in it becomes a ScenarioError naming the line."""
        try:
            return action()
        except (BugCheck, ScenarioError):
            raise
        except Exception as error:
            raise ScenarioError(self._describe_user_error(error)) from error

    def _describe_user_error(self, error: Exception) -> str:
        """Where in the user's code (the innermost frame outside ntpool's core) it failed."""
        frames = traceback.extract_tb(error.__traceback__)
        user = [f for f in frames if not f.filename.startswith(_CORE_DIRECTORY)
                or f.filename.startswith(_SAMPLES_DIRECTORY)]
        # A routine given a value its C parameter cannot hold: the routine and the parameter,
        # where the error's own message would name neither.
        what = explain_argument_error(error) or f"{type(error).__name__}: {error}"
        if user:
            frame = user[-1]
            return f"{frame.filename}:{frame.lineno} in {frame.name}: {what}"
        name, message = Path(self.scenario.path).name, str(error)
        if type(error).__name__ in LOADER_REFUSALS and message.startswith(name):
            # The loader's refusal is a sentence that opens with the file's name: "x.sys:
            # BadImage: x.sys: not a PE image" said the file twice, with the class between.
            return self.scenario.path + message[len(name):]
        return f"{self.scenario.path}: {what}"

    def _crashed(self, error: BugCheck) -> None:
        self.bugcheck = error
        self.sample("bug check")
        if self.dump_path and self.dump_written is None and self.dump_error is None:
            try:
                self.kernel.write_dump(self.dump_path, kind="kernel", truth=self.truth_path)
            except OSError as error:
                # The bug check is the news; the dump's failure is reported after it.
                self.dump_error = error.strerror or str(error)
                return
            self.dump_written = self.dump_path
