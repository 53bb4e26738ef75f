"""The dump fuzzer itself (python -m ntpool.cli.dump_fuzz): its cases replay, and it reports
what it exists to catch (a traceback, a hang, a blow-up) with the case that replays it."""

import os
import random
import time

import pytest

from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.cli import dump_fuzz


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return dump_fuzz.make_seeds(str(tmp_path_factory.mktemp("seeds")), ("7",), ("kernel",))


def test_seeds_hold_the_structures_the_cases_damage(seeds):
    names = {seed.name: seed for seed in seeds}
    assert set(names) == {"demo-w7-kernel", "verifier-w7-kernel", "corpus-w7-kernel"}
    verifier = names["verifier-w7-kernel"].targets
    for region in ("header", "bitmap", "pml4", "pdpt", "pd", "pt", "kdbg", "ntpl", "tracker", "big_pages",
                   "descriptors", "pool_headers", "modules", "lookasides", "verifier_tracking",
                   "bugcheck_context", "call_sites"):
        assert verifier[region], region
    assert names["corpus-w7-kernel"].truth and "Searching NonPagedPool" in names["corpus-w7-kernel"].poolfind


def test_a_case_is_a_function_of_its_seed_and_number(seeds, tmp_path):
    pooltags = PoolTagDatabase.default(environ={})
    first = [dump_fuzz.run_case(seeds, 9, number, str(tmp_path), pooltags) for number in range(6)]
    again = [dump_fuzz.run_case(seeds, 9, number, str(tmp_path), pooltags) for number in range(6)]
    assert first == again
    assert all(outcome.split()[0] in ("dump", "score") for outcome in first)


def test_an_error_that_is_not_ntpool_s_is_a_failure(seeds, tmp_path, monkeypatch):
    from ntpool.debugger.session import KdSession

    def broken(self, command):
        raise KeyError(command)

    monkeypatch.setattr(KdSession, "run_one", broken)
    seed = next(seed for seed in seeds if seed.name == "verifier-w7-kernel")
    with pytest.raises(dump_fuzz.Failure, match="KeyError"):
        dump_fuzz.run_dump(seed.path, seed, random.Random(1), PoolTagDatabase.default(environ={}))


def _hang(*args):
    time.sleep(60)


def _blow_up(*args):
    _blow_up.kept = bytearray(200 << 20)
    _blow_up.kept[::4096] = b"x" * len(range(0, 200 << 20, 4096))  # resident, not just reserved
    return "dump read"


def test_a_hang_and_a_blow_up_are_reported_and_the_worker_restarted(seeds, monkeypatch):
    monkeypatch.setattr(dump_fuzz, "run_case", _hang)
    pool = dump_fuzz.Pool(seeds, 1, 1.0, 150.0, None)
    try:
        number, outcome, detail, _, _ = pool.run(7, 1.0)
        assert (number, outcome) == (7, "failure") and "a hang" in detail and "_hang" in detail
        hung_in = pool.directory
        monkeypatch.setattr(dump_fuzz, "run_case", _blow_up)
        number, outcome, detail, _, rss = pool.run(8, 5.0)
        assert (number, outcome) == (8, "failure") and "resident memory" in detail and rss > 150
        assert not os.path.exists(hung_in)  # the killed worker's folder (its working copies) is gone
        last = pool.directory
    finally:
        pool.close()
    assert not os.path.exists(last)


def test_damaged_json_never_shares_the_fuzzer_s_values_between_cases():
    # Seed 2000100 (Windows 11), case 282 on: "the fuzzer failed: ValueError: Circular
    # reference detected". A damage put JSON_VALUES' own [] or {} into a document, a later
    # damage wrote into it, changing the constant for every case after (so a case replayed
    # alone was not the case that failed), until one held itself.
    import copy
    import json

    values = copy.deepcopy(dump_fuzz.JSON_VALUES)
    rng = random.Random(2000100)
    for _ in range(3000):
        document = {"tags": [{"tag": "Fred", "sites": [[1, 2]], "meta": {"a": [0]}}] * 3,
                    "pools": [[], {}, [[]]]}
        json.dumps(dump_fuzz._damage_json(json.loads(json.dumps(document)), rng))
    assert repr(dump_fuzz.JSON_VALUES) == repr(values)  # (nan != nan: compared as text)
