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
    detail: str = ""  # the first line of the evidence
    verdict: str = ""  # the truth about the run: "bug check 0x1E", "leaked 96 bytes", ...

    def __post_init__(self):
        if not self.verdict:
            self.verdict = self.outcome

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
    """Run the scenario once, failing the first call from each site in ``targets``.

    Returns (kernel, run, error): ``error`` is the exception that stopped the run when it
    was not a bug check (None otherwise).
    """
    scenario = load_scenario(spec)
    run = ScenarioRun(scenario, seed=seed, kernel_options=kernel_options)
    kernel = run.boot()
    for name in _driver_names(scenario):
        kernel.verifier.enable(name, systematic_low_resources=True, pool_tracking=True)
    kernel.verifier.systematic.reset(targets)
    loading = True
    try:
        run.load_drivers()
        loading = False
        for _ in run.checkpoints():
            pass
        run.finish()
    except ScenarioError as problem:
        refused = problem.__cause__
        if loading and isinstance(refused, NtStatusError) and not run.bugcheck:
            # DriverEntry failed cleanly: refusing to load is a handled failure, as long as
            # the driver left nothing behind (checked in _outcome).
            return kernel, run, None
        return kernel, run, problem
    return kernel, run, None


def _site_owner(kernel, key) -> str:
    for entry in kernel.call_sites.table:
        if (entry.filename, entry.lineno, entry.function) == key and entry.driver:
            return kernel.call_sites.drivers[entry.driver].name
    return "?"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _outcome(run, error) -> tuple[str, str, str]:
    """(outcome, verdict, first line of evidence) for one run: what really happened."""
    if error is not None:
        cause = error.__cause__ if error.__cause__ is not None else error
        return "error", f"raised {type(cause).__name__}", _first_line(str(error))
    check: BugCheck | None = run.bugcheck
    if check is not None:
        params = ", ".join(f"{p:#x}" for p in check.parameters)
        if check.code == 0xC4 and check.parameters[0] == 0x62:
            driver = getattr(check, "driver_name", "") or ""
            leaked = _leaked_bytes(run.kernel, driver)
            return "leak", f"leaked {leaked} bytes", _first_line(
                f"bug check 0xC4 (0x62, ...) at unload: {check.parameters[3]} allocation(s) "
                f"outstanding{_leak_evidence(run.kernel, driver)}")
        return "bug check", f"bug check {check.code:#X}".replace("0X", "0x"), _first_line(
            f"{check.code:#x} {check.name} ({params})"
            + (f": {check.detail}" if check.detail else ""))
    left = [row for row in run.kernel.pool_tags()
            if row.NonPagedUsed or row.PagedUsed]
    if run.finished and left:
        # Leaked memory that pool tracking did not attribute (e.g. a driver that refused
        # to load and left its allocations behind).
        leaked = sum(row.NonPagedUsed + row.PagedUsed for row in left)
        return "leak", f"leaked {leaked} bytes", "still allocated after unload: " + ", ".join(
            f"{row.Tag.rstrip()} {row.NonPagedUsed + row.PagedUsed} bytes" for row in left)
    return "survived", "survived", ""


def _leaked_bytes(kernel, driver: str) -> int:
    rows = kernel.verifier.outstanding(driver) if driver else \
        list(kernel.verifier.tracking.allocations.values())
    return sum(row.size for row in rows)


def _leak_evidence(kernel, driver: str) -> str:
    rows = kernel.verifier.outstanding(driver) if driver else \
        list(kernel.verifier.tracking.allocations.values())
    if not rows:
        return ""
    first = rows[0]
    from ..tags import display

    return (f"; first: {display(first.tag)} {first.size} bytes from "
            f"{kernel.call_sites.describe(first.site)}")


def verify(spec: str, seed: int = 1, kernel_options: dict | None = None,
           max_runs: int = MAX_RUNS, progress=None) -> Campaign:
    kernel, run, error = _one_run(spec, seed, set(), kernel_options)
    outcome, verdict, detail = _outcome(run, error)
    baseline = "survived" if outcome == "survived" else f"{verdict}: {detail}"
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
        outcome, verdict, detail = _outcome(run, error)
        if key not in kernel.verifier.systematic.seen_keys:
            outcome, verdict = "not reached", "not reached"
            detail = "this run did not reach the site"
        owners.setdefault(key, _site_owner(kernel, key))
        done[key] = SiteResult(key[0], key[1], key[2], owners[key], outcome, detail, verdict)
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
