"""``ntpool verify``: prove every allocation failure path of a scenario's drivers is handled.

A baseline run finds the allocation sites the drivers reach. Then, run after run on a fresh
machine, systematic low resources simulation fails the first call from exactly one site
(pool tracking on), so that what happens is that site's doing: the driver survived (no bug
check, nothing leaked at unload), or it crashed, or it leaked. Sites first reached on a
failure path join the queue, until every site has been failed once.
"""

from dataclasses import dataclass

from ..errors import BugCheck, NtStatusError
from .scenario import ScenarioError, ScenarioRun, load_scenario

MAX_RUNS = 500


@dataclass
class SiteResult:
    filename: str
    lineno: int
    function: str
    driver: str
    outcome: str  # "survived", "bug check", "leak", "error", "not reached"
    detail: str = ""

    @property
    def survived(self) -> bool:
        return self.outcome == "survived"


@dataclass
class Campaign:
    scenario: str
    baseline: str
    results: list[SiteResult]
    runs: int

    @property
    def baseline_clean(self) -> bool:
        return self.baseline == "survived"

    @property
    def all_survived(self) -> bool:
        return bool(self.results) and all(r.survived for r in self.results)


def _driver_names(scenario) -> list[str]:
    return [driver.name for driver in scenario.drivers]


def _one_run(spec: str, seed: int, targets, kernel_options):
    """Run the scenario once, failing the first call from each site in ``targets``."""
    scenario = load_scenario(spec)
    run = ScenarioRun(scenario, seed=seed, kernel_options=kernel_options)
    kernel = run.boot()
    for name in _driver_names(scenario):
        kernel.verifier.enable(name, systematic_low_resources=True, pool_tracking=True)
    kernel.verifier.systematic.reset(targets)
    error = None
    try:
        run.load_drivers()
        for _ in run.checkpoints():
            pass
        run.finish()
    except ScenarioError as problem:
        refused = problem.__cause__
        if isinstance(refused, NtStatusError) and not run.bugcheck:
            # DriverEntry failed cleanly and left nothing behind (the verifier checked):
            # refusing to load is a handled failure.
            return kernel, run, None
        error = str(problem)
    return kernel, run, error


def _site_owner(kernel, key) -> str:
    for entry in kernel.call_sites.table:
        if (entry.filename, entry.lineno, entry.function) == key and entry.driver:
            return kernel.call_sites.drivers[entry.driver].name
    return "?"


def _outcome(run, error) -> tuple[str, str]:
    if error is not None:
        return "error", error
    check: BugCheck | None = run.bugcheck
    if check is None:
        return "survived", ""
    if check.code == 0xC4 and check.parameters[0] == 0x62:
        return "leak", f"{check.parameters[3]} allocation(s) left at unload (0xC4/0x62)"
    params = ", ".join(f"{p:#x}" for p in check.parameters)
    return "bug check", f"{check.code:#x} {check.name} ({params})"


def verify(spec: str, seed: int = 1, kernel_options: dict | None = None,
           max_runs: int = MAX_RUNS, progress=None) -> Campaign:
    kernel, run, error = _one_run(spec, seed, set(), kernel_options)
    outcome, detail = _outcome(run, error)
    baseline = "survived" if outcome == "survived" else f"{outcome}: {detail}"
    queue = sorted(kernel.verifier.systematic.seen_keys)
    owners = {key: _site_owner(kernel, key) for key in queue}
    done: dict[tuple, SiteResult] = {}
    runs = 1
    while queue and runs < max_runs:
        key = queue.pop(0)
        if key in done:
            continue
        kernel, run, error = _one_run(spec, seed, {key}, kernel_options)
        runs += 1
        outcome, detail = _outcome(run, error)
        if key not in kernel.verifier.systematic.seen_keys:
            outcome, detail = "not reached", "this run did not reach the site"
        owners.setdefault(key, _site_owner(kernel, key))
        done[key] = SiteResult(key[0], key[1], key[2], owners[key], outcome, detail)
        for new in sorted(kernel.verifier.systematic.seen_keys - set(done) - set(queue)):
            queue.append(new)
            owners[new] = _site_owner(kernel, new)
        if progress is not None:
            progress(done[key], len(queue))
    for key in queue:
        done.setdefault(key, SiteResult(key[0], key[1], key[2], owners.get(key, "?"),
                                        "not reached", f"stopped after {max_runs} runs"))
    return Campaign(spec, baseline, sorted(done.values(), key=lambda r: (r.filename, r.lineno)),
                    runs)
