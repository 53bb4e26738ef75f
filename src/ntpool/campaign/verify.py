"""``ntpool verify``: fail allocation sites on purpose, run after run, and say what happened.

A baseline run (nothing failed) finds the allocation sites the drivers reach. A fault plan
then turns them into runs:

- ``each-site`` (the default): fail the first call from one site per run; sites first
  reached on a failure path join the next wave, until every site has been failed once;
- ``pairs:N``: fail two sites in the same run, for every pair among the first N sites;
- ``nth:K``: fail the K-th call from one site per run;
- ``random:P[:SEEDS]``: random failures at probability P (verifier's low resources
  simulation), one run per fault seed 0..SEEDS-1 (default 100).

Every run is a task of the campaign engine, so a campaign runs on one core, every core or a
Dask cluster with the same results, and resumes from its results file.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from ..tools.scenario import SAMPLE_SCENARIOS, ScenarioError, load_scenario
from .engine import Engine, check_time_limit, keyed
from .runs import scenario_task

MAX_RUNS = 500
DEFAULT_RANDOM_SEEDS = 100


class PlanError(ValueError):
    """A fault plan that cannot be read."""


@dataclass(frozen=True)
class FaultPlan:
    kind: str  # each-site, pairs, nth, random
    count: int = 0  # pairs: N; nth: K; random: seeds
    probability: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "FaultPlan":
        name, _, rest = text.partition(":")
        try:
            if name == "each-site" and not rest:
                return cls("each-site")
            if name in ("pairs", "nth"):
                count = int(rest)
                if count < (2 if name == "pairs" else 1):
                    raise ValueError
                return cls(name, count)
            if name == "random":
                probability, _, seeds = rest.partition(":")
                probability = float(probability)
                seeds = int(seeds) if seeds else DEFAULT_RANDOM_SEEDS
                if not 0.0 < probability <= 1.0 or seeds < 1:
                    raise ValueError
                return cls("random", seeds, probability)
        except ValueError:
            pass
        raise PlanError(f"fault plan {text!r} is not one of: each-site, pairs:N (N >= 2), "
                        f"nth:K (K >= 1), random:P[:SEEDS] (0 < P <= 1)")

    def __str__(self) -> str:
        if self.kind == "each-site":
            return "each-site"
        if self.kind == "random":
            return f"random:{self.probability:g}:{self.count}"
        return f"{self.kind}:{self.count}"


@dataclass
class SiteVerdict:
    """One run's outcome, for the site(s) it failed."""

    sites: list[tuple]  # (file, line, function) of each failed site
    owner: str
    result: dict

    @property
    def verdict(self) -> str:
        return self.result["verdict"]

    @property
    def survived(self) -> bool:
        return self.verdict == "survived"

    @property
    def label(self) -> str:
        """The verdict as one phrase: survived / bug check 0x19 / leaked 96 bytes under 'SlRq'..."""
        r = self.result
        if r["verdict"] == "bug check":
            code = f"{r['code']:#X}".replace("0X", "0x")
            return f"bug check {code} {r.get('name', '')}".rstrip()
        if r["verdict"] == "leaked":
            return f"leaked {r['bytes']} bytes under {r['tag']!r}"
        if r["verdict"] == "raised":
            return f"raised {r.get('exception', 'an exception')}"
        return r["verdict"]


@dataclass
class Campaign:
    scenario: str
    plan: FaultPlan
    baseline: dict
    verdicts: list[SiteVerdict]
    runs: int
    unfinished: int = 0  # runs the campaign did not get to (max_runs)
    max_runs: int | None = None  # the bound the campaign ran under (None: the plan's own size)

    @property
    def baseline_clean(self) -> bool:
        return self.baseline["verdict"] == "survived"

    @property
    def all_survived(self) -> bool:
        return bool(self.verdicts) and all(v.survived for v in self.verdicts)

    def by_verdict(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in self.verdicts:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
        return dict(sorted(counts.items()))

    def by_site(self) -> dict[tuple, dict[str, int]]:
        """Per failed site: how many runs ended in each verdict."""
        table: dict[tuple, dict[str, int]] = {}
        for v in self.verdicts:
            for site in v.sites:
                row = table.setdefault(site, {})
                row[v.label] = row.get(v.label, 0) + 1
        return dict(sorted(table.items()))

    def triage(self) -> list["Failure"]:
        """The runs that did not survive, grouped by what happened and where: the bug check
        and the call site that stopped the machine, the leak and the line that allocated
        what was left, the exception; most runs first."""
        groups: dict[tuple[str, str], Failure] = {}
        for v in self.verdicts:
            if v.survived:
                continue
            where = _failure_place(v)
            group = groups.get((v.label, where))
            if group is None:
                group = groups[(v.label, where)] = Failure(v.label, where, 0, {}, v)
            group.runs += 1
            for site in v.sites:
                group.sites_failed[site] = group.sites_failed.get(site, 0) + 1
        return sorted(groups.values(), key=lambda g: (-g.runs, g.label, g.where))


@dataclass
class Failure:
    """Runs that ended the same way at the same place (Campaign.triage)."""

    label: str  # bug check 0x1E KMODE_EXCEPTION_NOT_HANDLED, leaked 32 bytes under 'dHxM', ...
    where: str  # the driver and call site that stopped the machine or allocated the leak
    runs: int
    sites_failed: dict[tuple, int]  # the allocation sites failed in those runs, with counts
    example: SiteVerdict  # the first such run (its evidence, its fault plan)


def _failure_place(v: SiteVerdict) -> str:
    r = v.result
    if r["verdict"] in ("bug check", "leaked"):
        return " ".join(part for part in (r.get("driver", ""), r.get("call_site", "")) if part)
    if r["verdict"] == "not reached":
        return "; ".join(f"{function} ({file}:{line})" for file, line, function in v.sites)
    if r["verdict"] == "raised":
        return r.get("evidence", "")
    return ""


def scenario_content(spec: str) -> dict:
    """The scenario as a task carries it: by content, not by path."""
    # A sample's name (no .py suffix) always means the sample, as for ntpool run: a folder
    # called demo (ntpool demo --out demo makes one) does not hide it.
    path = SAMPLE_SCENARIOS[spec] if spec in SAMPLE_SCENARIOS else Path(spec)
    load_scenario(str(path))  # a broken file is a clear error here, before any run
    if path.suffix.lower() == ".sys":  # a compiled driver: the scenario that loads it
        return {"name": path.stem, "path": str(path), "source": "", "files": driver_files(path)}
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError(f"cannot read scenario {spec}: {error}") from None
    return {"name": path.stem, "path": str(path), "source": source}


def driver_files(path: Path) -> dict[str, str]:
    """A compiled driver and its symbols (the .pdb beside it), as a task carries them:
    {file name: base64 of its bytes}."""
    files = {}
    for candidate in (path, path.with_suffix(".pdb")):
        if candidate.is_file():
            try:
                files[candidate.name] = base64.b64encode(candidate.read_bytes()).decode("ascii")
            except OSError as error:
                raise ScenarioError(f"cannot read {candidate}: {error.strerror or error}") from None
    return files


def campaign_description(spec: str, plan: FaultPlan, seed: int, kernel_options, windows,
                         timeout) -> dict:
    """What a results file is for: resuming needs the same description."""
    content = scenario_content(spec)
    return {"command": "verify", "scenario": content, "plan": str(plan), "seed": seed,
            "kernel": kernel_options or {}, "windows": windows, "timeout": timeout}


def verify(spec: str, seed: int = 1, kernel_options: dict | None = None,
           max_runs: int | None = None, plan: FaultPlan | str = "each-site",
           engine: Engine | None = None, windows: str | None = None,
           timeout: float | None = None) -> Campaign:
    """Run the campaign. ``max_runs`` bounds the runs, the baseline included; by default an
    each-site campaign (whose waves the scenario decides) stops at MAX_RUNS, and the other
    plans, whose size is in the plan itself, make every run they name."""
    plan = FaultPlan.parse(plan) if isinstance(plan, str) else plan
    check_time_limit(timeout)
    if max_runs is None:
        max_runs = MAX_RUNS if plan.kind == "each-site" else None
    limit = max_runs if max_runs is not None else float("inf")
    engine = engine or Engine(jobs=1)
    content = scenario_content(spec)

    def task(fault: dict) -> dict:
        return keyed(scenario_task(content, seed, fault, kernel_options, windows, timeout))

    baseline, = engine.run([task({})])
    runs = 1
    owners = dict(baseline.get("owners", {}))
    sites = [tuple(k) for k in baseline.get("seen", [])]
    verdicts: list[SiteVerdict] = []
    unfinished = 0

    def collect(tasks, results):
        for t, r in zip(tasks, results):
            owners.update(r.get("owners", {}))
            planned = [tuple(k) for k in t["plan"].get("fail", [])]
            failed = [tuple(k) for k in r.get("failed", [])]
            if planned and not failed and "failed" in r:  # a run that ended (not timed out, not lost)
                r = dict(r, verdict="not reached", evidence="this run did not reach the site")
            sites = planned or failed  # a random plan's sites are those it happened to fail
            owner = ", ".join(sorted({owners.get(_key_text(k), "?") for k in sites})) or "-"
            verdicts.append(SiteVerdict(sites, owner, r))

    if plan.kind == "each-site":
        done: set[tuple] = set()
        wave = sorted(sites)
        while wave:
            budget = int(max(0, min(limit - runs, len(wave))))
            batch, rest = wave[:budget], wave[budget:]
            unfinished += len(rest)
            if not batch:
                break
            tasks = [task({"fail": [list(k)]}) for k in batch]
            results = engine.run(tasks)
            runs += len(tasks)
            collect(tasks, results)
            done.update(batch)
            reached = {tuple(k) for r in results for k in r.get("seen", [])}
            wave = sorted(reached - done - set(rest))
    else:
        if plan.kind == "pairs":
            faults = [{"fail": [list(a), list(b)]} for a, b in combinations(sorted(sites)[:plan.count], 2)]
        elif plan.kind == "nth":
            faults = [{"fail": [list(k)], "nth": plan.count} for k in sorted(sites)]
        else:
            faults = [{"random": {"probability": plan.probability, "seed": s}} for s in range(plan.count)]
        budget = int(max(0, min(limit - runs, len(faults))))
        unfinished = max(0, len(faults) - budget)
        tasks = [task(f) for f in faults[:budget]]
        results = engine.run(tasks)
        runs += len(tasks)
        collect(tasks, results)
    verdicts.sort(key=lambda v: (v.sites, v.result.get("key", "")))
    return Campaign(spec, plan, baseline, verdicts, runs, unfinished, max_runs)


def _key_text(key) -> str:
    return f"{key[0]}:{key[1]}:{key[2]}"
