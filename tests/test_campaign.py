"""Campaigns: ``ntpool verify`` fault plans and ``ntpool triage``, on the campaign engine."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntpool.campaign import Engine, FaultPlan, PlanError, ResultStore, ResultsFileError, verify
from ntpool.campaign.engine import execute, keyed
from ntpool.cli.main import main

SCENARIOS = Path(__file__).parent / "scenarios"
SCENARIO = str(SCENARIOS / "verify_mixed.py")


def verdicts_by_function(campaign):
    return {(v.sites[0][2], v.sites[0][1]): v for v in campaign.verdicts}


@pytest.fixture(scope="module")
def serial_campaign():
    return verify(SCENARIO, engine=Engine(jobs=1))


def test_every_site_is_failed_once_and_judged(serial_campaign):
    campaign = serial_campaign
    assert campaign.baseline["verdict"] == "survived"
    functions = {key[0] for key in verdicts_by_function(campaign)}
    assert functions == {"Mixed.DriverEntry", "Mixed.careless", "Mixed.leaky"}
    assert len(campaign.verdicts) == 4  # leaky has two sites
    assert campaign.runs == 1 + 4


def test_each_verdict_is_the_truth_about_its_run(serial_campaign):
    by_function = verdicts_by_function(serial_campaign)
    entry = [v for (f, _), v in by_function.items() if f == "Mixed.DriverEntry"][0]
    careless = [v for (f, _), v in by_function.items() if f == "Mixed.careless"][0]
    header, body = [v for (f, _), v in sorted(by_function.items()) if f == "Mixed.leaky"]
    assert entry.survived and entry.owner == "mixed.sys"
    assert careless.verdict == "bug check" and careless.result["code"] == 0x1E
    assert careless.label == "bug check 0x1E KMODE_EXCEPTION_NOT_HANDLED"
    assert careless.result["evidence"].startswith("0x1e KMODE_EXCEPTION_NOT_HANDLED (0xc0000005,")
    assert header.survived
    # The header's 32 bytes were left behind when the body's allocation failed; the tag as
    # tools show it (the C literal 'MxHd' is stored, and shown, byte-reversed).
    assert body.verdict == "leaked" and body.result["tag"] == "dHxM"
    assert body.label == "leaked 32 bytes under 'dHxM'"
    assert serial_campaign.by_verdict() == {"bug check": 1, "leaked": 1, "survived": 2}


def test_results_do_not_depend_on_parallelism(serial_campaign):
    parallel = verify(SCENARIO, engine=Engine(jobs=2))
    assert [v.result for v in parallel.verdicts] == [v.result for v in serial_campaign.verdicts]


def test_a_real_dask_cluster_gives_the_same_results(serial_campaign, tmp_path):
    import hashlib

    from ntpool.campaign.triage import dump_task
    from ntpool.forensics.corpus import CorpusOptions, make_corpus

    distributed = pytest.importorskip("distributed")
    options = CorpusOptions(count=3, seed=5, min_pool_mib=1, max_pool_mib=1.5)
    here = make_corpus(tmp_path / "here", options, engine=Engine(jobs=2))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        on_dask = verify(SCENARIO, engine=Engine(dask=client))
        tasks = [keyed({"kind": "sleep", "seconds": 0.0, "value": i}) for i in range(6)]
        values = [r["value"] for r in Engine(dask=client).run(tasks)]
        there = make_corpus(tmp_path / "there", options, engine=Engine(dask=client))
        score_tasks = [{"kind": "score", "truth": str(tmp_path / "here" / entry["truth"])}
                       for entry in here["dumps"]]
        scored_there = Engine(dask=client).run(score_tasks)
        triage_tasks = [dump_task(str(tmp_path / "here" / entry["dump"])) for entry in here["dumps"]]
        triaged_there = Engine(dask=client).run(triage_tasks)
    assert [v.result for v in on_dask.verdicts] == [v.result for v in serial_campaign.verdicts]
    assert values == list(range(6))
    # ntpool corpus on the cluster writes the same dumps and manifests as on local cores.
    assert there == here

    def digest(folder, name):
        return hashlib.sha256((tmp_path / folder / name).read_bytes()).hexdigest()

    for entry in here["dumps"]:
        assert digest("here", entry["truth"]) == digest("there", entry["truth"])
    # ntpool score --corpus: !poolfind * scored per dump, the same on the cluster as here.
    scored_here = Engine(jobs=2).run(score_tasks)
    assert scored_there == scored_here
    assert all(r["score"]["headers"]["precision"] == 1.0 for r in scored_here)
    # ntpool triage: the same records from the cluster as from local cores.
    assert triaged_there == Engine(jobs=2).run(triage_tasks)
    assert [r["verdict"] for r in triaged_there] == ["read"] * len(here["dumps"])


def test_fault_plans_pairs_nth_and_random():
    pairs = verify(SCENARIO, plan="pairs:3", engine=Engine(jobs=1))
    assert len(pairs.verdicts) == 3 and all(len(v.sites) == 2 for v in pairs.verdicts)
    nth = verify(SCENARIO, plan="nth:2", engine=Engine(jobs=1))
    # Every site is called once per run: its second call never comes.
    assert {v.verdict for v in nth.verdicts} == {"not reached"}
    random_plan = verify(SCENARIO, plan="random:0.5:20", engine=Engine(jobs=1))
    assert len(random_plan.verdicts) == 20
    assert any(not v.survived for v in random_plan.verdicts)
    assert all(v.sites or v.survived for v in random_plan.verdicts)
    with pytest.raises(PlanError):
        FaultPlan.parse("pairs:1")


def test_nth_call_of_a_site_is_the_one_that_fails():
    campaign = verify(str(SCENARIOS / "verify_loop.py"), plan="nth:3", engine=Engine(jobs=1))
    verdict, = campaign.verdicts
    assert verdict.verdict == "bug check" and verdict.result["code"] == 0x1E
    assert "third" in Path(SCENARIOS / "verify_loop.py").read_text()


def test_a_hanging_run_is_stopped_and_recorded():
    campaign = verify(str(SCENARIOS / "verify_hang.py"), timeout=0.5, engine=Engine(jobs=1))
    assert campaign.baseline["verdict"] == "timed out"
    assert campaign.baseline["evidence"] == "no result within 0.5 s"
    result = execute(keyed({"kind": "sleep", "seconds": 5.0, "timeout": 0.2}))
    assert result["verdict"] == "timed out"


def test_an_interrupted_campaign_resumes_to_the_same_results(tmp_path):
    description = {"test": "resume"}
    tasks = [keyed({"kind": "sleep", "seconds": 0.0, "value": i}) for i in range(10)]
    whole = ResultStore(tmp_path / "whole.sqlite", description)
    Engine(jobs=1, store=whole).run(tasks)

    def stop_after_four(state, result):
        if state.done == 4:
            raise KeyboardInterrupt

    part = ResultStore(tmp_path / "part.sqlite", description)
    with pytest.raises(KeyboardInterrupt):
        Engine(jobs=1, store=part, progress=stop_after_four).run(tasks)
    part.close()
    with pytest.raises(ResultsFileError, match="--resume"):
        ResultStore(tmp_path / "part.sqlite", description)
    with pytest.raises(ResultsFileError, match="different campaign"):
        ResultStore(tmp_path / "part.sqlite", {"other": 1}, resume=True)
    resumed = ResultStore(tmp_path / "part.sqlite", description, resume=True)
    ran = []
    Engine(jobs=1, store=resumed, progress=lambda state, result: ran.append(result["key"])).run(tasks)
    assert len(ran) == 6  # the four finished runs were not redone
    assert resumed.rows() == whole.rows()
    resumed.close()
    whole.close()
    rows = sqlite3.connect(tmp_path / "part.sqlite").execute("SELECT COUNT(*) FROM runs").fetchone()
    assert rows == (10,)


def test_verify_command_prints_a_row_per_site_and_fails(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")
    results = tmp_path / "runs.sqlite"
    assert main(["verify", SCENARIO, "-j", "2", "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert out.count("mixed.sys") >= 4
    assert "leaked 32 bytes under 'dHxM'" in out and "KMODE_EXCEPTION_NOT_HANDLED" in out
    assert "By verdict: 1 bug check, 1 leaked, 2 survived." in out
    assert main(["verify", SCENARIO, "--results", str(results)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["verify", SCENARIO, "--results", str(results), "--resume"]) == 1


def test_verify_command_on_a_missing_file_or_bad_plan_is_one_line(capsys):
    assert main(["verify", "no/such/scenario.py"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main(["verify", SCENARIO, "--plan", "sometimes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fault plan" in err


def test_triage_counts_bug_checks_culprits_and_tags_across_dumps(tmp_path, capsys):
    import ntpool
    from ntpool.campaign.triage import dump_task, fleet_report

    paths = []
    for index, (tag, count) in enumerate((("Tiny", 1), ("Tiny", 1), ("Huge", 40))):
        k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
        for _ in range(count):
            k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 4000, tag)
        k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Base")
        p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 1000, "Dbl ")  # past the lookasides
        k.ExFreePoolWithTag(p, "Dbl ")
        with pytest.raises(ntpool.BugCheck):
            k.ExFreePoolWithTag(p, "Dbl ")
        path = tmp_path / f"crash{index}.dmp"
        k.write_dump(path, kind="kernel")
        paths.append(str(path))
    junk = tmp_path / "junk.dmp"
    junk.write_bytes(b"not a dump at all" * 100)
    records = Engine(jobs=2).run([dump_task(p) for p in paths + [str(junk)]])
    report = fleet_report(records)
    assert report.dumps == 4
    assert report.bugchecks == [("0xc2 BAD_POOL_CALLER", 3)]
    assert report.unreadable[0][0].endswith("junk.dmp")
    assert "too short for a crash dump" in report.unreadable[0][1]
    largest = {tag: (total, dumps) for tag, total, dumps in report.largest}
    assert largest["eguH"][1] == 1 and largest["yniT"][1] == 2
    assert [row[0] for row in report.swollen] == []  # Huge is in one dump only: its own median
    assert main(["triage", *paths, str(junk), "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert "BAD_POOL_CALLER" in out and "eguH" in out and "junk.dmp" in out



def test_a_tag_far_above_its_own_fleet_median_is_swollen():
    from ntpool.campaign.triage import fleet_report

    def record(index, leak_bytes):
        return {"verdict": "read", "path": f"d{index}", "code": 0x19, "name": "BAD_POOL_HEADER",
                "parameters": [0x20, 0, 0, 0], "driver": "leaky.sys" if leak_bytes > 1 << 20 else "",
                "call_site": "", "tags": [["Leak", leak_bytes, 0], ["Norm", 50_000, 0]]}

    records = [record(i, 4096) for i in range(5)] + [record(5, 8 << 20)]
    report = fleet_report(records)
    assert report.swollen == [("Leak", 1, 8 << 20, 4096)]  # Norm never strays from its median
    assert report.culprits == [("(not recorded)", 5), ("leaky.sys", 1)]
    assert report.bugchecks == [("0x19 BAD_POOL_HEADER", 6)]


def test_a_campaign_killed_half_way_resumes_to_the_same_results_file(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    scenario = str(SCENARIOS / "verify_slow.py")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    command = [sys.executable, "-m", "ntpool", "verify", scenario, "-j", "1", "--quiet"]
    whole, part = tmp_path / "whole.sqlite", tmp_path / "part.sqlite"
    subprocess.run(command + ["--results", str(whole)], env=env, capture_output=True, check=False)
    child = subprocess.Popen(command + ["--results", str(part)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished = 0
    deadline = time.monotonic() + 60
    while finished < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
        try:
            finished = sqlite3.connect(part).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.Error:
            finished = 0
    child.send_signal(signal.SIGKILL)  # a killed machine: no cleanup at all
    child.wait()

    def rows(path):
        return sqlite3.connect(path).execute("SELECT key, result FROM runs ORDER BY key").fetchall()

    done_before = len(rows(part))
    assert 3 <= done_before < len(rows(whole)) == 7  # baseline + six sites
    resumed = subprocess.run(command + ["--results", str(part), "--resume"], env=env,
                             capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(part) == rows(whole)


def test_score_command_scores_every_dump_of_a_corpus(tmp_path, capsys):
    from ntpool.forensics.corpus import CorpusOptions, make_corpus

    make_corpus(tmp_path / "c", CorpusOptions(count=2, seed=3, min_pool_mib=1, max_pool_mib=1))
    assert main(["score", "--corpus", str(tmp_path / "c"), "-j", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("dump-", "all dumps"))]
    assert [line.split()[0] for line in lines] == ["dump-000", "dump-001", "all"]
    assert all(line.split()[-9] == "1.000" for line in lines)  # header precision: never wrong
    assert main(["score", "--corpus", str(tmp_path / "c"), str(tmp_path / "x.json")]) == 2
    assert main(["score", "--corpus", str(tmp_path)]) == 2
    assert "corpus.json" in capsys.readouterr().err


def test_a_compiled_driver_travels_by_content(tmp_path):
    import shutil

    import ntpool

    samples = Path(ntpool.__file__).parent / "samples" / "native"
    for name in ("fsfilter.sys", "fsfilter.pdb"):
        shutil.copy(samples / name, tmp_path / name)
    here = verify(str(samples / "fsfilter.sys"), max_runs=10, engine=Engine(jobs=1))
    moved = verify(str(tmp_path / "fsfilter.sys"), max_runs=10, engine=Engine(jobs=2))
    # The same verdicts (a task's key names its path too, so it is left out).
    results = [[{k: v for k, v in verdict.result.items() if k != "key"} for verdict in c.verdicts]
               for c in (here, moved)]
    assert results[0] == results[1] and results[0]
    (file, line, function), = {site for v in here.verdicts for site in v.sites}
    assert file.endswith("fsfilter.c") and "DriverEntry+" in function  # from the carried .pdb


def test_verify_groups_a_random_plan_by_site(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["verify", SCENARIO, "--plan", "random:0.5:20", "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert "By site: the runs that failed it, by verdict" in out
    by_site = out[out.index("By site"):out.index("By verdict")]
    assert "Mixed.careless" in by_site and "bug check 0x1E KMODE_EXCEPTION_NOT_HANDLED" in by_site


@given(st.text(alphabet="ab\n", max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_streamed_lines_are_the_text_split_at_newlines(text, cuts):
    from ntpool.forensics.tasks import _lines

    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()
    assert list(_lines(pieces)) == expected


def test_score_of_a_corpus_dump_reads_poolfind_streamed_as_from_whole_text(tmp_path):
    # run_score feeds !poolfind *'s pieces line by line (bounded memory on a big dump): the
    # findings must be those of the whole text.
    import json

    from ntpool.forensics.tasks import run_score
    from ntpool.debugger.session import KdSession
    from ntpool.dump import DumpReader
    from ntpool.forensics.corpus import CorpusOptions, make_corpus
    from ntpool.forensics.score import Results, parse_poolfind, score
    from ntpool.dump.truth import load

    make_corpus(tmp_path / "c", CorpusOptions(count=1, seed=5, min_pool_mib=1, max_pool_mib=1))
    entry = json.loads((tmp_path / "c" / "corpus.json").read_text())["dumps"][0]
    truth = str(tmp_path / "c" / entry["truth"])
    with DumpReader(str(tmp_path / "c" / entry["dump"])) as reader:
        text = KdSession(reader).execute("!poolfind * 0; !poolfind * 1")
    whole = Results()
    parse_poolfind(text.splitlines(), whole, "ntpool !poolfind *")
    assert len(whole.findings) > 100
    streamed = run_score({"truth": truth})["score"]
    assert streamed == score(load(truth), whole, None, truth)


def test_a_windows_11_corpus_scores_ntpools_scanner_without_a_false_header(tmp_path, capsys):
    import json

    from ntpool.dump import DumpReader
    from ntpool.dump.truth import check_against_tracker, load

    assert main(["corpus", "--out", str(tmp_path / "c"), "--count", "2", "--windows", "11",
                 "--pool-mib", "1-2", "-j", "1"]) == 0
    index = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert [entry["windows"] for entry in index["dumps"]] == ["Windows 11 (build 22621, 22H2)"] * 2
    for entry in index["dumps"]:
        truth = load(tmp_path / "c" / entry["truth"])
        assert truth["dump"]["windows"].startswith("Windows 11")
        assert {row[-1] for row in truth["chunks"]} >= {"Lfh", "Vs"}  # the segment heap's backends
        with DumpReader(str(tmp_path / "c" / entry["dump"])) as reader:
            assert check_against_tracker(truth, reader.tracker_entries()) == []
    capsys.readouterr()
    assert main(["score", "--corpus", str(tmp_path / "c"), "-j", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("dump-", "all"))]
    assert len(lines) == 3 and all(line.split()[-9] == "1.000" for line in lines)


def test_bench_campaign_runs_its_short_scenario_on_the_windows_asked(capsys):
    from ntpool.campaign import bench as campaign_bench

    assert all(task["windows"] == "11" for task in campaign_bench.short_tasks(3, "11"))
    assert "windows" not in campaign_bench.short_tasks(1)[0]
    figures = campaign_bench.measure(4, jobs=1, dask=False, windows="11")
    assert figures["windows"] == "11" and figures["same_results"]
    # The command takes --windows as every command that boots machines does.
    from ntpool.cli.main import build_parser
    assert build_parser().parse_args(["bench-campaign", "--windows", "11"]).windows == "11"


def test_a_campaign_of_hundreds_of_runs_is_triaged_counted_and_timed(capsys, monkeypatch, tmp_path):
    import re
    import sqlite3

    monkeypatch.setenv("COLUMNS", "250")
    results = tmp_path / "runs.sqlite"
    # 520 seeds: past the 500 runs that bound an each-site campaign, all made, as the plan says.
    assert main(["verify", SCENARIO, "--plan", "random:0.5:520", "-j", "2",
                 "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert sqlite3.connect(results).execute("SELECT COUNT(*) FROM runs").fetchone() == (521,)
    assert "not made" not in out
    assert re.search(r"^521 run\(s\) made in [0-9.]+ s on 2 worker processes: [0-9.]+ runs/s\.$",
                     out, re.M)
    assert "Runs: 521 = the baseline + 520 with failures injected." in out
    # No table row per run: the triage groups the failures by verdict and call site.
    assert "runs with failures injected (" not in out
    triage = out[out.index("Triage"):out.index("By verdict")]
    # A cell is read whatever its padding (the counts are right-aligned): the test fails on
    # a wrong count, not on where the table puts it.
    rows = re.findall(r"^│ *([\d,]+) *│ (bug check 0x1E KMODE_EXCEPTION_NOT_HANDLED|leaked 32 bytes "
                      r"under 'dHxM') +│ mixed\.sys (Mixed\.careless \(verify_mixed\.py:22\)|"
                      r"Mixed\.leaky \(verify_mixed\.py:26\))", triage, re.M)
    assert [(label[:8], where.split()[0]) for _, label, where in rows] in (
        [("bug chec", "Mixed.careless"), ("leaked 3", "Mixed.leaky")],
        [("leaked 3", "Mixed.leaky"), ("bug chec", "Mixed.careless")])
    by_verdict = dict((v, int(n.replace(",", ""))) for n, v in
                      re.findall(r"([\d,]+) (bug check|leaked|survived)", out[out.index("By verdict"):]))
    counts = {label[:8]: int(n.replace(",", "")) for n, label, _ in rows}
    assert counts == {"bug chec": by_verdict["bug check"], "leaked 3": by_verdict["leaked"]}
    # The counts are right-aligned: each ends one space before its cell's edge (the two add up
    # to 520, so one at least is shorter than the column's heading, "Runs").
    assert len(re.findall(r"^│ +[\d,]+ │ ", triage, re.M)) == len(rows) == 2
    assert sum(by_verdict.values()) == 520
    assert main(["verify", SCENARIO, "--max-runs", "0"]) == 2


def test_triage_of_dumps_written_with_no_bug_check_says_so():
    from ntpool.campaign.triage import NO_BUGCHECK, fleet_report

    record = {"verdict": "read", "path": "d0", "code": 0, "name": "BUGCHECK_0", "parameters": [0] * 4,
              "driver": "", "call_site": "", "tags": []}
    assert fleet_report([record, dict(record, path="d1")]).bugchecks == [(NO_BUGCHECK, 2)]


def test_dask_without_its_extra_is_one_line_naming_the_extra(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    assert main(["verify", SCENARIO, "--dask", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'ntpool[dask]'" in err


def test_a_cluster_that_gives_no_result_is_one_line_naming_it(monkeypatch, capsys):
    # What a scheduler without ntpool answers (it cannot read the tasks), on a real cluster of
    # threads in this process, where the batch function can be replaced.
    distributed = pytest.importorskip("distributed")
    from ntpool.campaign import engine

    def unreadable(tasks, memory_mib):
        raise RuntimeError("Error during deserialization of the task graph. This frequently\n"
                           "occurs if the Scheduler and Client have different environments.")

    monkeypatch.setattr(engine, "execute_apart", unreadable)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        status = main(["verify", SCENARIO, "--dask", cluster.scheduler_address, "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and "a bug in ntpool" not in err
    assert f"the Dask cluster at {cluster.scheduler_address} gave no result" in err
    assert "(RuntimeError: Error during deserialization of the task graph. This frequently)" in err
    assert "need ntpool installed" in err and err.count("\n") == 1


def test_the_verify_table_counts_one_run_in_the_singular():
    from ntpool.cli.verify import _runs

    assert (_runs(1), _runs(2), _runs(0)) == ("1 run", "2 runs", "0 runs")


def test_verify_with_no_site_to_fail_says_why_not_0_of_0(capsys, tmp_path):
    quiet = tmp_path / "quiet.py"
    quiet.write_text("class Quiet:\n    name = 'quiet.sys'\n\n    def DriverEntry(self, k, path):\n"
                     "        return 0\n\n    def DriverUnload(self, k):\n        pass\n\n\n"
                     "DRIVERS = [Quiet()]\n\n\ndef workload(k, rng):\n    pass\n")
    assert main(["verify", str(quiet), "-j", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "The baseline reached no allocation site: there was nothing to fail." in out
    assert "0 of 0" not in out
    # A lone baseline is made in this process, whatever -j says, and the line says so.
    assert "1 run(s) made in" in out and "s in this process:" in out
    assert main(["verify", str(SCENARIOS / "verify_hang.py"), "--timeout", "0.2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "baseline run (no failure injected): timed out: no result within 0.2 s" in out
    assert "No site was failed: the baseline, which finds them, did not survive." in out
    assert "0 of 0" not in out


@pytest.mark.parametrize("option", ["--timeout=0", "--timeout=-1", "--timeout=nan",
                                    "--timeout=inf", "--jobs=0", "--memory-limit=0"])
def test_a_bad_engine_option_is_refused_in_one_line_before_the_campaign_says_anything(option, capsys):
    """verify printed its campaign's header ("Low resources campaign on ...") and then the
    refusal; now the refusal is all it prints. A time limit of 0, NaN or infinity is refused,
    not taken as no limit (0) or a watch that never fires (NaN) or fails (infinity)."""
    assert main(["verify", SCENARIO, option]) == 2
    out, err = capsys.readouterr()
    name, value = option.split("=")
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"ntpool: {name} must be ")
    assert err.rstrip().endswith(f"got {value}")


def test_the_campaign_api_refuses_a_time_limit_that_is_no_limit():
    for seconds in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="the time limit must be a positive number of seconds"):
            verify(SCENARIO, engine=Engine(jobs=1), timeout=seconds)


def test_triage_names_a_dump_whose_run_was_stopped_and_a_time_limit_never_lands_late(tmp_path, capsys):
    """A triage run stopped by --timeout is a row of the unreadable table naming its dump (it
    was a KeyError: the engine's record has no path); and a time limit that fires as a run
    returns never lands later in the campaign's own code (it did, as an internal error)."""
    from ntpool.campaign.triage import dump_task, fleet_report

    dump = tmp_path / "d.dmp"
    dump.write_bytes(b"\0" * 0x3000)
    task = keyed(dump_task(str(dump)))
    stopped = {"key": task["key"], "verdict": "timed out", "evidence": "no result within 1 s"}
    report = fleet_report([dict(stopped, path=task["path"])])
    assert report.unreadable == [(task["path"], "timed out: no result within 1 s")]
    for _ in range(3):  # 0.1 ms: the limit fires around the run's end, one way or the other
        status = main(["triage", str(dump), str(dump), "--timeout", "0.0001", "-j", "1"])
        captured = capsys.readouterr()
        assert status == 1 and "internal error" not in captured.err, captured.err
        assert str(dump) in captured.out
    # Runs that end as their limit fires, 600 of them one after another: the limit's exception
    # was left pending, to land in the campaign's code or in the thread the next run's watch
    # started (its start then waited forever: a hang). In a process of its own, so a hang
    # fails the test rather than hold it.
    loop = ("import json\nfrom ntpool.campaign.engine import execute, keyed\nverdicts = []\n"
            "for i in range(200):\n    for s in (0.0005, 0.001, 0.002):\n"
            "        verdicts.append(execute(keyed({'kind': 'sleep', 'seconds': s, 'timeout': s, "
            "'value': i}))['verdict'])\nprint(json.dumps(sorted(set(verdicts))))\n")
    done = subprocess.run([sys.executable, "-c", loop], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert set(json.loads(done.stdout)) <= {"survived", "timed out"}
