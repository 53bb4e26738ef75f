"""Campaigns interrupted as users interrupt them, then resumed: real processes, real signals.

Each case starts ``ntpool verify`` on every core with a results file, stops it part-way
(Ctrl-C to its process group, SIGTERM or SIGKILL to the campaign's process), and checks that
it stopped at once, left no worker behind, and that ``--resume`` finished it to the same rows
as an uninterrupted campaign, making only the runs that were missing. The results file is
then damaged (truncated, overwritten) and must give a clear error, or be recovered with
``--resume``, never a traceback.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ntpool.campaign import Engine, ResultStore, ResultsFileError
from ntpool.campaign.engine import keyed

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "tests" / "scenarios" / "verify_slow.py")  # baseline + 6 sites, 0.15 s each
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), COLUMNS="200")
COMMAND = [sys.executable, "-m", "ntpool", "verify", SCENARIO, "-j", "2", "--quiet"]


def rows(path) -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT key, result FROM runs ORDER BY key").fetchall()
    finally:
        db.close()


def count_rows(path) -> int:
    try:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def children(pid: int) -> set[int]:
    found = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.update(int(child) for child in listing.read().split())
    except OSError:
        pass
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _ctrl_c_as_at_a_terminal() -> None:
    """A command started in the background by a shell inherits SIGINT ignored (and Python
    then leaves it so): the campaign is started as a terminal's foreground command is."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "whole.sqlite"
    done = subprocess.run(COMMAND + ["--results", str(path)], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert count_rows(path) == 7
    return rows(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the workers")
@pytest.mark.parametrize("how, after", [("ctrl-c", 3), ("sigterm", 4), ("sigkill", 2)])
def test_a_campaign_stopped_by_a_signal_stops_whole_and_resumes_to_the_same_rows(
        whole, tmp_path, how, after):
    part = tmp_path / "part.sqlite"
    child = subprocess.Popen(COMMAND + ["--results", str(part)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_ctrl_c_as_at_a_terminal)
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while count_rows(part) < after and time.monotonic() < deadline and child.poll() is None:
        workers |= children(child.pid)
        time.sleep(0.02)
    workers |= children(child.pid)
    assert child.poll() is None, "the campaign finished before it could be interrupted"
    if how == "ctrl-c":  # the terminal sends SIGINT to the whole foreground process group
        os.killpg(child.pid, signal.SIGINT)
    else:  # kill, timeout, systemd, the OOM killer: the campaign's own process only
        child.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    try:
        # Its output ends when every process holding it has ended: the workers too.
        out, err = child.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail(f"after {how} the campaign's processes kept running")
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)], f"workers left running after {how}"
    kept = count_rows(part)
    assert 1 <= kept < 7
    if how == "ctrl-c":
        assert child.returncode == 130
        assert f"{kept} finished run(s) are kept in {part}" in err and "--resume" in err
    elif how == "sigterm":
        assert child.returncode == 128 + signal.SIGTERM
        assert "verify terminated" in err and "--resume" in err
    else:
        assert child.returncode == -signal.SIGKILL
    assert "Traceback" not in err
    resumed = subprocess.run(COMMAND + ["--results", str(part), "--resume"], env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    # Only the missing runs were made; every run is in the file once, as in the whole one.
    assert f"Resuming: {kept} finished run(s)" in resumed.stdout
    assert f"{7 - kept} run(s) made" in resumed.stdout
    assert f"{kept} taken from {part}" in resumed.stdout
    assert rows(part) == whole


def _store_with_runs(path, count: int = 200):
    tasks = [keyed({"kind": "sleep", "seconds": 0.0, "value": i}) for i in range(count)]
    store = ResultStore(path, {"test": "damage"})
    Engine(jobs=1, store=store).run(tasks)
    expected = dict(store.rows())
    store.close()
    return tasks, expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), garbage=st.booleans(), length=st.integers(1, 9000))
# Bytes that are not UTF-8 in the schema: sqlite3 raised UnicodeDecodeError, not DatabaseError.
@example(cut=0.0747, garbage=True, length=4)
def test_a_damaged_results_file_is_refused_clearly_or_recovered_never_misread(
        tmp_path_factory, cut, garbage, length):
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "runs.sqlite"
    tasks, expected = _store_with_runs(path)
    data = path.read_bytes()
    offset = int(cut * len(data))
    if garbage:  # overwritten in place (a bad sector, another program's write)
        data = data[:offset] + bytes((offset + i) * 37 % 256 for i in range(length)) + \
            data[offset + length:]
    else:  # truncated (a copy cut short, a full disk)
        data = data[:offset]
    path.write_bytes(data)
    try:
        refused = ResultStore(path, {"test": "damage"})
    except ResultsFileError as error:
        assert str(path) in str(error)
    else:  # the damage left a readable file: it was another campaign's or an empty one
        refused.close()
    try:
        store = ResultStore(path, {"test": "damage"}, resume=True)
    except ResultsFileError as error:  # only a file that no longer looks like one
        assert "not an ntpool results file" in str(error) or "different campaign" in str(error)
        return
    recovered = dict(store.rows())
    # Whatever was recovered is exactly what the runs wrote: no row altered or invented.
    assert all(expected[key] == result for key, result in recovered.items())
    ran = []
    Engine(jobs=1, store=store, progress=lambda state, result: ran.append(result["key"])).run(tasks)
    assert len(ran) == len(expected) - len(recovered)  # the rest made once, none twice
    assert dict(store.rows()) == expected
    store.close()
    assert dict(ResultStore(path, {"test": "damage"}, resume=True).rows()) == expected


def test_a_truncated_results_file_is_one_clear_line_then_recovered_by_resume(tmp_path):
    from ntpool.campaign.store import ResultStore as Store

    path = tmp_path / "runs.sqlite"
    tasks, expected = _store_with_runs(path, 2000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultsFileError, match="is damaged .*pass --resume to recover"):
        Store(path, {"test": "damage"})
    store = Store(path, {"test": "damage"}, resume=True)
    count, kept = store.recovered
    assert 0 < count < len(expected) and kept == f"{path}.damaged"
    assert Path(kept).read_bytes() == data[: len(data) // 2]  # the damaged file is kept as it was
    store.close()


def test_the_command_recovers_a_damaged_results_file_and_says_so(whole, tmp_path):
    path = tmp_path / "runs.sqlite"
    done = subprocess.run(COMMAND + ["--results", str(path)], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = path.read_bytes()
    path.write_bytes(data[:4096] + b"\xff" * 4096 + data[8192:])  # its second page overwritten
    refused = subprocess.run(COMMAND + ["--results", str(path)], env=ENV, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and str(path) in refused.stderr
    resumed = subprocess.run(COMMAND + ["--results", str(path), "--resume"], env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "was damaged" in resumed.stdout and f"{path}.damaged" in resumed.stdout
    assert rows(path) == whole


def test_a_run_that_ends_its_worker_is_recorded_and_the_campaign_goes_on():
    from ntpool.campaign import verify

    scenario = str(ROOT / "tests" / "scenarios" / "verify_exit.py")
    campaign = verify(scenario, engine=Engine(jobs=2))
    by_line = {v.sites[0][1]: v for v in campaign.verdicts}
    assert by_line[23].verdict == "survived"
    assert by_line[26].verdict == "worker died"
    assert "exited with status 9" in by_line[26].result["evidence"]
    assert by_line[30].label == "raised SystemExit"  # the run's own failure, not the campaign's
    assert by_line[30].result["evidence"] == "SystemExit: 3"
    # Many runs, some ending their worker: every run recorded once, the others as usual.
    many = verify(scenario, plan="random:0.3:40", engine=Engine(jobs=2))
    assert len(many.verdicts) == 40 and many.runs == 41
    died = [v for v in many.verdicts if v.verdict == "worker died"]
    assert died and all("exited with status 9" in v.result["evidence"] for v in died)
    keys = [v.result["key"] for v in many.verdicts]
    assert len(set(keys)) == 40


def test_a_worker_killed_mid_campaign_loses_no_run():
    import multiprocessing

    tasks = [keyed({"kind": "sleep", "seconds": 0.004, "value": i}) for i in range(300)]
    seen = []

    def kill_a_worker(state, result):
        seen.append(result["value"])
        if len(seen) == 40:
            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)

    results = Engine(jobs=2, progress=kill_a_worker).run(tasks)
    assert [r["value"] for r in results] == list(range(300))
    assert sorted(seen) == list(range(300))  # each run reported once
    assert {r["verdict"] for r in results} == {"survived"}  # made again, not judged


def test_a_dask_worker_killed_mid_campaign_loses_no_run():
    distributed = pytest.importorskip("distributed")
    tasks = [keyed({"kind": "sleep", "seconds": 0.01, "value": i}) for i in range(200)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        victim = sorted(client.run(os.getpid).values())[0]
        seen = []

        def kill_a_worker(state, result):
            seen.append(result["value"])
            if len(seen) == 30:
                os.kill(victim, signal.SIGKILL)

        results = Engine(dask=client, progress=kill_a_worker).run(tasks)
        assert victim not in client.run(os.getpid).values()  # it really died
    assert [r["value"] for r in results] == list(range(200))
    assert sorted(seen) == list(range(200))


def test_a_corpus_made_twice_from_one_seed_is_the_same_bytes(tmp_path):
    import hashlib

    from ntpool.forensics.corpus import CorpusOptions, make_corpus

    options = CorpusOptions(count=2, seed=11, min_pool_mib=1, max_pool_mib=1)
    make_corpus(tmp_path / "a", options, engine=Engine(jobs=1))
    time.sleep(0.01)  # a dump that carried the wall clock would differ now
    make_corpus(tmp_path / "b", options, engine=Engine(jobs=2))

    def digests(folder):
        return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(folder.rglob("*")) if path.is_file()}

    first = digests(tmp_path / "a")
    assert {"dump-000.dmp", "dump-001.dmp", "dump-000.truth.json", "corpus.json"} <= set(first)
    assert first == digests(tmp_path / "b")


def test_a_corpus_killed_part_way_is_finished_by_the_same_command(tmp_path):
    import hashlib

    from ntpool.forensics.corpus import CorpusOptions, make_corpus

    out = tmp_path / "corpus"
    progress = out / ".ntpool-corpus-runs.sqlite"
    command = [sys.executable, "-m", "ntpool", "corpus", "--out", str(out), "--count", "24",
               "--seed", "4", "--pool-mib", "1-1", "--kinds", "kernel", "-j", "2"]
    child = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 60
    while count_rows(progress) < 4 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    assert child.poll() is None, "the corpus was finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=20)
    kept = count_rows(progress)
    assert 4 <= kept < 24 and not (out / "corpus.json").exists()
    # What a worker stopped mid-write may leave: the corpus is only its files at the end.
    (out / "dump-001.truth.json.99999.tmp").write_text("{")
    (out / ".ntpool-dump-x.tmp").write_bytes(b"PAGE")
    finished = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"Resuming: {kept} finished run(s)" in finished.stderr
    assert f"{24 - kept} run(s) made" in finished.stderr
    make_corpus(tmp_path / "whole", CorpusOptions(24, 4, 1, 1, 0.5, ("kernel",), "7"),
                engine=Engine(jobs=2))

    def digests(folder):
        return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(folder.rglob("*")) if path.is_file()}

    whole = digests(tmp_path / "whole")
    assert len([name for name in whole if name.endswith(".truth.json")]) == 24
    assert digests(out).keys() == whole.keys()  # no progress file, no partial file left
    # corpus.json too: the entries taken from the progress file are those made now.
    assert digests(out) == whole


def test_a_run_that_ends_its_process_on_dask_is_recorded_and_the_campaign_resumes(tmp_path, capsys):
    """On Dask as on local cores: the run that ends its process each time is a row (its worker
    died, and how), the others are made as usual, the Dask workers live on, and --resume
    finds the campaign finished."""
    distributed = pytest.importorskip("distributed")
    from ntpool.campaign import verify
    from ntpool.cli.main import main

    scenario = str(ROOT / "tests" / "scenarios" / "verify_exit.py")
    path = tmp_path / "runs.sqlite"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        workers = client.run(os.getpid)
        command = ["verify", scenario, "--dask", cluster.scheduler_address,
                   "--results", str(path), "--quiet", "--plan", "random:0.3:12"]
        assert main(command) == 1  # finished: the runs that did not survive are the verdicts
        first = capsys.readouterr().out
        made = rows(path)
        assert main(command + ["--resume"]) == 1
        again = capsys.readouterr().out
        assert client.run(os.getpid) == workers  # no Dask worker died
    assert "13 run(s) made" in first  # the baseline and 12 with failures injected
    assert "Resuming: 13 finished run(s)" in again
    assert f"0 run(s) made; 13 taken from {path}." in again  # no rate of nothing made
    assert rows(path) == made and len(made) == 13
    # Row for row what local cores record.
    local = verify(scenario, plan="random:0.3:12", engine=Engine(jobs=2))
    assert {key: json.loads(result) for key, result in made} == \
        {r["key"]: r for r in [local.baseline] + [v.result for v in local.verdicts]}
    died = [v for v in local.verdicts if v.verdict == "worker died"]
    assert died and all(v.result["evidence"] == "the run's worker process exited with status 9 "
                        "before the run returned, each of 2 times it was made" for v in died)
    assert "worker died" in first.split("By verdict:")[1]


SWELL = str(ROOT / "tests" / "scenarios" / "verify_swell.py")
SWELL_OUT = ("the run's process passed the memory limit of 200 MiB (resident) and was stopped, "
             "each of 2 times it was made")


def test_a_run_past_the_memory_limit_is_stopped_and_recorded_on_local_cores():
    from ntpool.campaign import verify

    for jobs in (1, 2):  # -j 1 too: with a limit, the runs are made in a process of their own
        campaign = verify(SWELL, engine=Engine(jobs=jobs, memory_mib=200))
        by_line = {v.sites[0][1]: v.result for v in campaign.verdicts}
        assert by_line[23]["verdict"] == "survived"
        for line in (26, 32):  # 8 MiB at a time in Python, 2 GiB in one C call
            assert by_line[line]["verdict"] == "out of memory"
            assert by_line[line]["evidence"] == SWELL_OUT
        assert campaign.baseline["verdict"] == "survived"


def test_a_memory_limit_holds_the_runs_not_the_memory_of_the_campaign_s_own_process():
    """Workers forked from the campaign's process held its memory too: from a process holding
    190 MiB (a test suite's, a notebook's) every run passed a limit of 200 MiB, where on Dask
    and from the command line they survived."""
    from ntpool.campaign import verify

    held = b"\x5a" * (190 << 20)  # touched, so resident in this process
    campaign = verify(SWELL, engine=Engine(jobs=2, memory_mib=200))
    assert campaign.baseline["verdict"] == "survived" and len(held) == 190 << 20
    assert [(v.sites[0][1], v.verdict) for v in campaign.verdicts] == [
        (23, "survived"), (26, "out of memory"), (32, "out of memory")]


SPIKE = str(ROOT / "tests" / "scenarios" / "verify_spike.py")


def test_a_run_past_the_memory_limit_for_a_moment_is_stopped_however_seldom_the_watch_looks(
        monkeypatch):
    """The watch reads a run's memory now and then: on a loaded machine it can go unscheduled
    while a run passes the limit and lets its memory go again. A watch looking once a second
    (a 0.3 s spike fell between its looks most times: the run survived) still stops it."""
    from ntpool.campaign import engine, verify

    monkeypatch.setattr(engine, "MEMORY_POLL_SECONDS", 1.0)
    campaign = verify(SPIKE, engine=Engine(jobs=2, memory_mib=200))
    by_line = {v.sites[0][1]: v.result for v in campaign.verdicts}
    assert by_line[20]["verdict"] == "survived"
    assert by_line[23]["verdict"] == "out of memory" and by_line[23]["evidence"] == SWELL_OUT
    assert campaign.baseline["verdict"] == "survived"


def test_a_run_past_the_memory_limit_is_stopped_on_dask_and_recorded_as_locally(tmp_path, capsys):
    """Dask's own memory limit watches the Dask worker's process, not the run made apart from
    it: the campaign's limit is watched by the run server, and the row is the local one; a
    campaign with no limit of its own is held to the Dask worker's."""
    distributed = pytest.importorskip("distributed")
    from ntpool.campaign import verify
    from ntpool.cli.main import main

    path = tmp_path / "runs.sqlite"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  memory_limit="300MiB", dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        workers = client.run(os.getpid)
        status = main(["verify", SWELL, "--dask", cluster.scheduler_address, "--memory-limit",
                       "200", "--results", str(path), "--quiet"])
        out = capsys.readouterr().out
        # A campaign that states no limit is held to the Dask worker's own.
        held = verify(SWELL, engine=Engine(dask=client))
        spiked = verify(SPIKE, engine=Engine(dask=client, memory_mib=200))
        assert client.run(os.getpid) == workers  # the Dask worker lived on
    assert status == 1 and "By verdict: 2 out of memory, 1 survived." in out.replace("\n", " ")
    assert [v.result["evidence"] for v in held.verdicts if v.verdict == "out of memory"] == [
        "the run's process passed the memory limit of 300 MiB (resident; the Dask worker's "
        "--memory-limit) and was stopped, each of 2 times it was made"] * 2
    # Past the limit for a moment only: stopped as well (the run server reads the peak).
    assert [(v.sites[0][1], v.verdict) for v in spiked.verdicts] == [(20, "survived"),
                                                                    (23, "out of memory")]
    local = verify(SWELL, engine=Engine(jobs=2, memory_mib=200))
    made = {key: json.loads(result) for key, result in rows(path)}
    assert made == {r["key"]: r for r in [local.baseline] + [v.result for v in local.verdicts]}
    assert [r["evidence"] for r in made.values() if r["verdict"] == "out of memory"] == [SWELL_OUT] * 2


def test_a_memory_limit_is_part_of_the_campaign_and_checked(tmp_path, capsys):
    from ntpool.cli.main import main

    path = tmp_path / "runs.sqlite"
    assert main(["verify", SWELL, "--memory-limit", "0", "--quiet"]) == 2
    assert "--memory-limit must be a positive number of MiB, got 0" in capsys.readouterr().err
    for wrong in ("inf", "nan", "-5"):
        assert main(["verify", SWELL, f"--memory-limit={wrong}", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--memory-limit must be a positive number" in err
    with pytest.raises(ValueError, match="the memory limit must be a positive number of MiB"):
        Engine(jobs=2, memory_mib=float("inf")).run([{"kind": "sleep"}])
    assert main(["verify", str(ROOT / "tests" / "scenarios" / "verify_exit.py"), "-j", "1",
                 "--memory-limit", "300", "--results", str(path), "--quiet"]) == 1
    capsys.readouterr()
    # Resumed under another limit it is another campaign: refused, not mixed.
    assert main(["verify", str(ROOT / "tests" / "scenarios" / "verify_exit.py"), "-j", "1",
                 "--memory-limit", "400", "--results", str(path), "--resume", "--quiet"]) == 2


def test_dask_workers_killed_until_the_scheduler_gives_up_lose_no_run():
    """A batch whose worker dies more often than distributed.scheduler.allowed-failures allows
    (KilledWorker; 0 here, so one kill does it) is cut in two and sent again, down to single
    runs; a single run the scheduler gives up on is a ``worker died`` row. Before, KilledWorker
    stopped the campaign and the batch's runs were lost with it."""
    distributed = pytest.importorskip("distributed")
    import dask

    from ntpool.campaign.engine import _killed_worker

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        def killer(after: int, seen: list):
            client.wait_for_workers(2)  # the one killed before is back (its nanny restarts it)

            def kill(state, result):
                seen.append(result.get("value"))
                if len(seen) == after:
                    # A worker holding runs at this moment: an idle one (a worker just
                    # restarted, on a loaded machine) would die with no run to lose.
                    busy = [address for address, keys in client.processing().items() if keys]
                    assert busy, "runs remain, so a worker holds some"
                    pid, = client.run(os.getpid, workers=busy[:1]).values()
                    os.kill(pid, signal.SIGKILL)
            return kill

        # Batches of 5 runs: the killed worker's batches are halved and made again.
        tasks = [keyed({"kind": "sleep", "seconds": 0.05, "value": i}) for i in range(40)]
        seen: list = []
        results = Engine(dask=client, progress=killer(6, seen)).run(tasks)
        assert [r["value"] for r in results] == list(range(40))
        assert sorted(seen) == list(range(40))  # each run reported once
        assert {r["verdict"] for r in results} == {"survived"}
        # Single runs: the one(s) the killed worker held are rows saying so; the rest made.
        tasks = [keyed({"kind": "sleep", "seconds": 0.3, "value": i}) for i in range(8)]
        seen = []
        results = Engine(dask=client, progress=killer(1, seen)).run(tasks)
    assert [r["key"] for r in results] == [t["key"] for t in tasks] and len(seen) == 8
    died = [r for r in results if r["verdict"] == "worker died"]
    assert 1 <= len(died) <= 2
    for row in died:
        expected = _killed_worker({"key": row["key"]})
        del expected["_seconds"]  # (the engine's, never stored)
        assert row == expected
    assert "until the scheduler gave up on it (KilledWorker)" in died[0]["evidence"]
    assert [r["value"] for r in results if r["verdict"] == "survived"] == \
        [t["value"] for t, r in zip(tasks, results) if r["verdict"] == "survived"]


def test_a_dask_cluster_left_with_no_worker_stops_the_campaign_rather_than_hang(monkeypatch):
    """A LocalCluster closes for good a worker still down distributed.deploy.lost-worker-timeout
    after it died (one killed again and again); with none left the campaign waited forever."""
    distributed = pytest.importorskip("distributed")
    from ntpool.campaign import ClusterError, engine

    monkeypatch.setattr(engine, "DASK_POLL_SECONDS", 0.3)  # (2 s: a quick test's whole time)

    tasks = [keyed({"kind": "sleep", "seconds": 0.0, "value": i}) for i in range(4)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        cluster.scale(0)
        while client.scheduler_info()["workers"]:
            time.sleep(0.05)
        ended = []

        def campaign():
            try:
                Engine(dask=client, no_worker_seconds=1).run(tasks)
            except ClusterError as error:
                ended.append(str(error))

        thread = threading.Thread(target=campaign, daemon=True)  # (a hang fails, not hangs)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the campaign waits forever for a worker"
    assert ended == ["the Dask cluster has had no worker for 1 s; 4 run(s) not made"]


def test_a_run_server_whose_worker_is_gone_ends_quietly():
    """A Dask worker killed mid-run leaves its run server writing into a closed pipe: it ends
    with nothing on the worker's error stream (a kill could print two BrokenPipeError
    tracebacks there, the forked process's and the server's)."""
    from ntpool.campaign.engine import _SERVE

    server = subprocess.Popen([sys.executable, "-c", _SERVE, json.dumps(sys.path), "null"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    server.stdout.close()  # the reader is gone
    server.stdin.write(json.dumps(keyed({"kind": "sleep", "seconds": 0.0})) + "\n")
    server.stdin.close()
    err = server.stderr.read()
    assert server.wait(timeout=30) in (0, 1)
    assert err == ""


def test_a_corpus_dump_the_campaign_could_not_make_is_one_line_not_an_internal_error(tmp_path, capsys):
    from ntpool.cli.main import main

    # 1 MiB: no process holds less, so each dump's run is stopped, twice.
    status = main(["corpus", "--out", str(tmp_path / "c"), "--count", "2", "--seed", "1",
                   "--pool-mib", "1-1", "--kinds", "kernel", "-j", "1", "--memory-limit", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "internal error" not in err and err.count("\n") == 1
    assert err == ("ntpool: 2 of 2 corpus dump(s) not made; the first, dump-000.dmp: out of memory: "
                   "the run's process passed the memory limit of 1 MiB (resident) and was stopped, "
                   "each of 2 times it was made\n")
