"""The forensics runs the campaign engine carries out: one dump of a corpus and its manifest
(``ntpool corpus``), and one scanner scored on one dump (``ntpool score --corpus``).

The engine finds them by name (``campaign.engine.RUN_FUNCTIONS``) in the worker process;
like every run function, each takes one task (plain data) and returns one small record.
"""

from __future__ import annotations

import os
from itertools import chain

from ..debugger.session import KdSession
from ..dump import DumpReader
from .corpus import make_dump
from .score import Results, parse_poolfind, read_results, score
from ..dump.truth import load


def run_corpus_dump(task: dict) -> dict:
    """One dump of a forensic corpus and its manifest (``ntpool corpus``)."""
    entry = make_dump(**task["dump"])
    return {"verdict": "survived", "evidence": entry["dump"], "entry": entry}


def _lines(pieces):
    """Whole lines from text pieces that may break anywhere."""
    pending = ""
    for piece in pieces:
        *complete, pending = (pending + piece).split("\n")
        yield from complete
    if pending:
        yield pending


def run_score(task: dict) -> dict:
    """Score a scanner on one dump of a corpus against its manifest (``ntpool score
    --corpus``): the scanner's output files if the task names them, else ntpool's own
    ``!poolfind *`` over both pools, run here on the dump."""
    document = load(task["truth"])
    if task.get("results"):
        results = read_results(task["results"])
    else:
        dump = os.path.join(os.path.dirname(task["truth"]), document["dump"]["file"])
        results = Results()
        with DumpReader(dump) as reader:
            session = KdSession(reader)
            # Streamed, as execute("!poolfind * 0; !poolfind * 1") would print it: a 1 GiB
            # dump's text would take hundreds of MB.
            pieces = chain(session.stream("!poolfind * 0"), ["\n"], session.stream("!poolfind * 1"))
            parse_poolfind(_lines(pieces), results, "ntpool !poolfind *")
    return {"verdict": "read", "truth": os.path.basename(task["truth"]),
            "score": score(document, results, task.get("tags"), task["truth"]), "evidence": ""}
