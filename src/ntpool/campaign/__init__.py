"""Campaigns: many independent, deterministic runs on every core or a Dask cluster.

``engine`` (tasks, executors, time limits), ``store`` (the resumable results file),
``runs`` (what one run of a scenario is and its verdict), ``verify`` (fault plans over a
scenario's allocation sites), ``triage`` (a fleet of crash dumps).
"""

from .engine import ClusterError, Engine, Progress, RunTimedOut, execute, keyed, task_key
from .store import ResultStore, ResultsFileError
from .verify import Campaign, FaultPlan, PlanError, SiteVerdict, verify

__all__ = ["Campaign", "ClusterError", "Engine", "FaultPlan", "PlanError", "Progress", "ResultStore",
           "ResultsFileError", "RunTimedOut", "SiteVerdict", "execute", "keyed", "task_key",
           "verify"]
