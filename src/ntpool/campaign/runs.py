"""Run functions: one campaign task in, one small result record out.

``run_scenario`` runs a scenario (its source carried in the task) on a fresh machine with a
fault plan, and returns the verdict that is the truth about that run: survived, bug check
CODE (with its parameters), leaked N bytes under TAG, raised EXC, or (from the engine) timed
out, each with its first line of evidence, and which allocation sites the run reached.
"""

from __future__ import annotations

import json
import os
import time

from ..errors import BugCheck, NtStatusError
from ..tags import display
from ..tools.scenario import ScenarioError, ScenarioRun, scenario_from_source, sys_scenario_source


def scenario_task(scenario: dict, seed: int = 1, plan: dict | None = None,
                  kernel: dict | None = None, windows: str | None = None,
                  timeout: float | None = None) -> dict:
    """A task that runs ``scenario`` ({"name", "path", "source"}) once."""
    task = {"kind": "scenario", "scenario": scenario, "seed": seed, "plan": plan or {},
            "kernel": kernel or {}}
    if windows is not None:
        task["windows"] = windows
    if timeout:
        task["timeout"] = timeout
    return task


def run_scenario(task: dict) -> dict:
    spec = task["scenario"]
    source = spec["source"]
    if spec.get("files"):  # a compiled driver, carried by content: its scenario loads it here
        source = sys_scenario_source(materialize(spec["files"], spec["name"] + ".sys"))
    scenario = scenario_from_source(source, spec["name"], spec["path"])
    plan = task.get("plan") or {}
    options = dict(task.get("kernel") or {})
    if task.get("windows"):
        options["windows"] = task["windows"]
    run = ScenarioRun(scenario, seed=task.get("seed", 1), kernel_options=options)
    kernel = run.boot()
    _apply_plan(kernel, scenario, plan)
    error = None
    loading = True
    try:
        run.load_drivers()
        loading = False
        for _ in run.checkpoints():
            pass
        run.finish()
    except ScenarioError as problem:
        refused = problem.__cause__
        if not (loading and isinstance(refused, NtStatusError) and not run.bugcheck):
            error = problem
        # else: DriverEntry failed cleanly: refusing to load is a handled failure, as long
        # as the driver left nothing behind (checked in _verdict).
    result = _verdict(kernel, run, error)
    systematic = kernel.verifier.systematic
    result["seen"] = sorted(list(k) for k in systematic.seen_keys)
    failed = systematic.failed_sites or [f.site for f in kernel.verifier.low_resources.injected]
    result["failed"] = [list(k) for k in sorted({tuple(systematic.site_key(s)) for s in failed})]
    result["owners"] = {_key_text(k): _site_owner(kernel, k) for k in systematic.seen_keys}
    return result


def materialize(files: dict[str, str], main: str) -> str:
    """Write files a task carries (base64) into a folder named by their digest, once per
    worker machine; returns the path of ``main`` there. The same content is always the same
    folder, so nothing a run reports depends on where its task came from."""
    import base64
    import hashlib
    import os
    import tempfile

    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:20]
    folder = os.path.join(tempfile.gettempdir(), "ntpool-campaign", digest)
    if not os.path.isfile(os.path.join(folder, main)):
        partial = f"{folder}.{os.getpid()}"
        os.makedirs(partial, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(partial, os.path.basename(name)), "wb") as out:
                out.write(base64.b64decode(data))
        try:
            os.rename(partial, folder)
        except OSError:  # another worker got there first: its copy is the same bytes
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return os.path.join(folder, main)


def _apply_plan(kernel, scenario, plan: dict) -> None:
    names = [driver.name for driver in scenario.drivers]
    if "random" in plan:
        probability, seed = plan["random"]["probability"], plan["random"]["seed"]
        for name in names:
            kernel.verifier.enable(name, low_resources=True, fault_probability=probability,
                                   fault_seed=seed, pool_tracking=True,
                                   systematic_low_resources=True)
        kernel.verifier.systematic.reset(targets=set())  # record sites; fail none of them
        return
    for name in names:
        kernel.verifier.enable(name, systematic_low_resources=True, pool_tracking=True)
    targets = {tuple(key) for key in plan.get("fail", [])}
    kernel.verifier.systematic.reset(targets, nth=plan.get("nth", 1))


def _verdict(kernel, run, error) -> dict:
    """What really happened in the run, with the first line of its evidence."""
    if error is not None:
        cause = error.__cause__ if error.__cause__ is not None else error
        return {"verdict": "raised", "exception": type(cause).__name__,
                "evidence": _first_line(str(error))}
    check: BugCheck | None = run.bugcheck
    if check is not None:
        result = {"code": check.code, "name": check.name, "parameters": list(check.parameters),
                  # Where the machine stopped: the driver and the line whose call stopped it.
                  "driver": getattr(check, "driver_name", "") or "",
                  "call_site": getattr(check, "call_site", "") or ""}
        if check.code == 0xC4 and check.parameters[0] == 0x62:
            driver = getattr(check, "driver_name", "") or ""
            rows = kernel.verifier.outstanding(driver) if driver else \
                sorted(kernel.verifier.tracking.allocations.values())
            result.update(_leak(rows, kernel), verdict="leaked")
            first = rows[0] if rows else None
            # A leak's place is the line that allocated what was left (the first of them).
            result["call_site"] = _site_text(kernel, first.site) if first else ""
            result["evidence"] = _first_line(
                f"bug check 0xC4 (0x62, ...) at unload: {check.parameters[3]} allocation(s) "
                f"outstanding" + (f"; first: {display(first.tag)} {first.size} bytes from "
                                  f"{kernel.call_sites.describe(first.site)}" if first else ""))
            return result
        params = ", ".join(f"{p:#x}" for p in check.parameters)
        result.update(verdict="bug check", evidence=_first_line(
            f"{check.code:#x} {check.name} ({params})" + (f": {check.detail}" if check.detail else "")))
        return result
    # (What the I/O manager's IRP and MDL lookaside lists keep is its cache, not a leak.)
    kept = kernel.io_lookaside_holdings()
    by_tag = {row.Tag: row.NonPagedUsed + row.PagedUsed - kept.get(row.Tag, (0, 0))[1]
              for row in kernel.pool_tags()}
    by_tag = {tag: used for tag, used in by_tag.items() if used}
    if run.finished and by_tag:
        # Memory left that pool tracking did not attribute (e.g. a driver that refused to
        # load and left its allocations behind).
        tag = max(by_tag, key=lambda t: (by_tag[t], t))
        return {"verdict": "leaked", "bytes": sum(by_tag.values()), "tag": tag.rstrip(),
                "evidence": "still allocated after unload: " + ", ".join(
                    f"{t.rstrip()} {b} bytes" for t, b in sorted(by_tag.items()))}
    return {"verdict": "survived", "evidence": ""}


def _leak(rows, kernel) -> dict:
    by_tag: dict[str, int] = {}
    for row in rows:
        by_tag[display(row.tag)] = by_tag.get(display(row.tag), 0) + row.size
    tag = max(by_tag, key=lambda t: (by_tag[t], t)) if by_tag else ""
    return {"bytes": sum(by_tag.values()), "tag": tag}


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def _site_text(kernel, site: int) -> str:
    """A call site as a bug check names its culprit's: "Function (file.py:line)"."""
    sites = kernel.call_sites
    if not 0 < site < len(sites.table):
        return ""
    entry = sites.table[site]
    if not entry.lineno:
        return entry.function
    return f"{entry.function} ({os.path.basename(entry.filename)}:{entry.lineno})"


def _key_text(key) -> str:
    return f"{key[0]}:{key[1]}:{key[2]}"


def _site_owner(kernel, key) -> str:
    sites = kernel.call_sites
    for number, entry in enumerate(sites.table):
        owner = sites.owner(number)
        if (entry.filename, entry.lineno, entry.function) == tuple(key) and owner is not None:
            return owner.name
    return "?"


def run_sleep(task: dict) -> dict:
    """A run that only waits (benchmarks of the engine itself, tests of time limits)."""
    deadline = time.perf_counter() + task.get("seconds", 0.0)
    while time.perf_counter() < deadline:
        pass
    return {"verdict": "survived", "evidence": "", "value": task.get("value")}
