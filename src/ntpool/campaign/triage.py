"""``ntpool triage DUMPS...``: what a fleet of crash dumps says, across all of them.

Each dump is read in its own campaign run (``read_dump``), which returns a small record: the
bug check, the culprit driver ntpool recorded, the largest tags of its PoolTrackTable. The
fleet report counts bug checks, culprits and tags across the records:

- *largest*: tags by outstanding bytes summed over the fleet, with how many dumps hold them;
- *swollen*: tags that, in some dumps, hold more than SWOLLEN_FACTOR times their own median
  over the fleet (and at least SWOLLEN_MINIMUM bytes): the tag that grew on the machines that
  crashed. A fleet's dumps come from different machines, so a tag is compared with itself.

Dumps travel to workers by path (a fleet's dumps sit on storage the workers share).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

from ..dump import DumpFormatError, DumpReader, MemoryReadError
from ..errors import bugcheck_name
from ..tags import display

TOP_TAGS = 20  # per dump, by outstanding bytes
SWOLLEN_FACTOR = 4
SWOLLEN_MINIMUM = 64 << 10
NO_BUGCHECK = "none (the machine was running)"


def dump_task(path: str, timeout: float | None = None) -> dict:
    stat = os.stat(path)
    task = {"kind": "triage", "path": os.path.abspath(path), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}
    if timeout:
        task["timeout"] = timeout
    return task


def read_dump(task: dict) -> dict:
    """One dump's record (a dump that cannot be read is a verdict, not an error)."""
    path = task["path"]
    try:
        with DumpReader(path) as dump:
            code, parameters = dump.bugcheck_code, list(dump.bugcheck_parameters)
            try:
                context = dump.bugcheck_context() or {}
            except (DumpFormatError, MemoryReadError):
                context = {}
            try:
                entries = dump.tracker_entries()
            except (DumpFormatError, MemoryReadError):
                entries = []
    except (OSError, DumpFormatError) as error:
        return {"verdict": "unreadable", "path": path, "evidence": str(error).splitlines()[0]}
    tags = sorted(((display(e.Key & 0x7FFFFFFF), e.NonPagedBytes, e.PagedBytes) for e in entries),
                  key=lambda row: (-(row[1] + row[2]), row[0]))[:TOP_TAGS]
    return {"verdict": "read", "path": path, "code": code, "name": bugcheck_name(code),
            "parameters": parameters, "driver": context.get("driver", ""),
            "call_site": context.get("call_site", ""), "tags": [list(t) for t in tags],
            "evidence": f"{code:#x} {bugcheck_name(code)}"}


@dataclass
class FleetReport:
    dumps: int
    unreadable: list[tuple[str, str]]
    bugchecks: list[tuple[str, int]]  # "0x19 BAD_POOL_HEADER", count
    culprits: list[tuple[str, int]]  # driver, count
    largest: list[tuple[str, int, int]]  # tag, bytes over the fleet, dumps holding it
    swollen: list[tuple[str, int, int, int]]  # tag, dumps where swollen, largest bytes, median


def fleet_report(records: list[dict], top: int = 10) -> FleetReport:
    read = [r for r in records if r["verdict"] == "read"]
    # Not read: a dump its reader refused, or one whose run the campaign stopped (timed out,
    # out of memory, its worker died), which has the verdict in front of its evidence.
    unreadable = sorted((r.get("path", "?"), r.get("evidence", "") if r["verdict"] == "unreadable"
                         else f"{r['verdict']}: {r.get('evidence', '')}")
                        for r in records if r["verdict"] != "read")

    def counted(values) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    # A dump written with no bug check (a running machine's, as ntpool corpus writes them)
    # has code 0, which names no stop.
    bugchecks = counted(f"{r['code']:#x} {r['name']}" if r["code"] else NO_BUGCHECK for r in read)
    culprits = counted(r["driver"] or "(not recorded)" for r in read)
    per_tag: dict[str, list[int]] = {}
    for r in read:
        for tag, nonpaged, paged in r["tags"]:
            per_tag.setdefault(tag, []).append(nonpaged + paged)
    largest = sorted(((tag, sum(v), len(v)) for tag, v in per_tag.items()),
                     key=lambda row: (-row[1], row[0]))[:top]
    swollen = []
    for tag, values in per_tag.items():
        median = statistics.median(values)
        high = [v for v in values if v >= SWOLLEN_MINIMUM and v > SWOLLEN_FACTOR * median]
        if high:
            swollen.append((tag, len(high), max(high), int(median)))
    swollen.sort(key=lambda row: (-row[1], -row[2], row[0]))
    return FleetReport(len(records), unreadable, bugchecks, culprits, largest, swollen[:top])
