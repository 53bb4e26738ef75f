"""The command line as a new user misuses it: wrong files, directories, unknown options,
Ctrl-C and closed pipes. Each ends with one line naming what was wrong and a non-zero
status, never a traceback."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ntpool
from ntpool.cli import main as cli
from ntpool.cli.main import main
from ntpool.native.bench import bench_driver

SRC = str(Path(__file__).resolve().parents[1] / "src")
MARKER_SCENARIO = '''
import pathlib
DRIVERS = []


def workload(k, rng):
    pathlib.Path(MARKER).write_text("the workload ran")
    yield "one"
'''


def _ntpool(*arguments: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ntpool", *arguments],
                            env={**os.environ, "PYTHONPATH": SRC}, **options)


def _marker_scenario(tmp_path) -> tuple[str, Path]:
    marker = tmp_path / "ran"
    path = tmp_path / "marker.py"
    path.write_text(MARKER_SCENARIO.replace("MARKER", repr(str(marker))))
    return str(path), marker


def test_an_unknown_option_is_named_by_its_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "demo", "--bogus"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == \
        "ntpool run: unrecognized arguments: --bogus (see ntpool run -h)\n"


def test_a_directory_or_a_c_source_is_not_a_scenario(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert f"scenario {tmp_path} is a directory" in capsys.readouterr().err
    source = tmp_path / "driver.c"
    source.write_text("NTSTATUS DriverEntry(void) { return 0; }\n")
    assert main(["run", str(source)]) == 2
    err = capsys.readouterr().err
    assert f"{source} is not a scenario" in err and "syntax error" not in err
    assert main(["poolmon", str(source), "--once"]) == 2  # poolmon also takes dumps: says so
    assert "neither a crash dump" in capsys.readouterr().err


def test_a_folder_named_like_a_sample_does_not_hide_the_sample(tmp_path, monkeypatch, capsys):
    # The README's forensics example, `ntpool demo --out demo --truth demo/truth.json`, makes
    # a folder named demo in the current directory: the sample's name still means the sample
    # (the demo and every command whose default source is the demo were "a directory", 2).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-python").mkdir()
    assert main(["demo", "--out", "demo", "--steps", "50", "--python-drivers",
                 "--truth", "demo/truth.json"]) == 0
    assert (tmp_path / "demo" / "MEMORY.DMP").is_file()
    assert (tmp_path / "demo" / "truth.json").is_file()
    capsys.readouterr()
    for scenario in ("demo", "demo-python"):
        assert main(["poolsnap", scenario, "-o", "snap.json", "--checkpoint", "1"]) == 0
        assert "wrote snap.json" in capsys.readouterr().out


def test_verify_of_a_sample_is_not_hidden_by_a_folder_of_its_name(tmp_path, monkeypatch):
    # verify reads its scenario by content (campaign.verify.scenario_content), with a rule of
    # its own that a folder named demo hid: "cannot read scenario demo: Is a directory", 2.
    from ntpool.campaign.verify import scenario_content
    from ntpool.tools.scenario import SAMPLE_SCENARIOS

    monkeypatch.chdir(tmp_path)
    for name in ("demo", "demo-python"):
        (tmp_path / name).mkdir()
        content = scenario_content(name)
        assert content["source"] == SAMPLE_SCENARIOS[name].read_text(encoding="utf-8")


def test_verify_of_a_file_that_is_no_driver_is_one_line_as_run_answers(tmp_path, capsys):
    bad = tmp_path / "bad.sys"
    bad.write_bytes(b"MZ not a driver")
    for command in ("run", "verify"):
        assert main([command, str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ntpool: {bad}: ") and len(err.strip().splitlines()) == 1
        # the refusal names the file once, in words ("x.sys: BadImage: x.sys: ..." before)
        assert err.count("bad.sys") == 1 and "BadImage" not in err, err


def test_output_paths_are_refused_before_the_run(tmp_path, capsys):
    scenario, marker = _marker_scenario(tmp_path)
    missing = str(tmp_path / "no-such-directory" / "out")
    for arguments, expected in (
            (["poolsnap", scenario, "-o", str(tmp_path)], f"-o {tmp_path}: a directory"),
            (["picture", "pagemap", scenario, "-o", missing + ".svg"], "no such directory"),
            (["report", scenario, "-o", missing + ".html"], "no such directory"),
            (["run", scenario, "--dump", missing + ".dmp", "--truth", str(tmp_path)],
             f"--truth {tmp_path}: a directory"),
            (["run", scenario, "--truth", str(tmp_path / "t.json")], "it needs --dump"),
            (["demo", "--truth", str(tmp_path)], f"--truth {tmp_path}: a directory"),
            (["demo", "--out", scenario], f"--out {scenario}: not a directory")):
        assert main(arguments) == 2, arguments
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (arguments, err)
    assert not marker.exists()  # nothing was run for an output that could not be written


def test_the_demo_without_its_dump_shows_the_bug_check_then_one_line(tmp_path, capsys,
                                                                      monkeypatch):
    from ntpool.tools.scenario import ScenarioRun

    crashed = ScenarioRun._crashed

    def crash_without_a_dump(run, error):
        run.dump_path = str(tmp_path / "gone" / "MEMORY.DMP")  # its directory vanished
        crashed(run, error)

    monkeypatch.setattr(ScenarioRun, "_crashed", crash_without_a_dump)
    assert main(["demo", "--python-drivers", "--steps", "100", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "BAD_POOL_HEADER" in captured.out and "Wrote None" not in captured.out
    assert captured.err == (f"ntpool: cannot write {tmp_path / 'gone' / 'MEMORY.DMP'}: "
                            f"No such file or directory\n")


def test_a_missing_file_is_named_without_python_s_errno(tmp_path, capsys):
    missing = str(tmp_path / "before.json")
    assert main(["poolsnap", "--diff", missing, missing]) == 2
    assert capsys.readouterr().err == f"ntpool: {missing}: No such file or directory\n"


def test_poolmon_counts_both_nonpaged_heaps_live_and_from_a_dump(tmp_path):
    from ntpool.cli.dump_source import DumpSource
    from ntpool.cli.sources import machine_totals

    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)
    for _ in range(50):
        k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPoolNx, 3000, "NxNx")
    nx_only = machine_totals(k, object.__new__(type("Holder", (), {})))["nonpaged"]
    assert nx_only >= 50 * 3000  # the NX heap's pages (it was not counted at all)
    for _ in range(50):
        k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 3000, "ExEx")
    live = machine_totals(k, object.__new__(type("Holder", (), {})))["nonpaged"]
    assert live >= nx_only + 50 * 3000
    k.write_dump(tmp_path / "nx.dmp", kind="kernel")
    assert DumpSource(str(tmp_path / "nx.dmp")).machine()["nonpaged"] == live


@pytest.mark.parametrize("cause, status, line", [
    (KeyboardInterrupt(), 130, "ntpool: interrupted\n"),
    (BrokenPipeError(32, "Broken pipe"), 141, ""),
])
def test_ctrl_c_and_a_closed_pipe_wrapped_on_their_way_out(capsys, monkeypatch, cause, status,
                                                           line):
    """A driver's routine, native code or a scenario's line may catch them and raise its own
    error from them: the command still ends as interrupted, or quietly on a closed pipe."""
    monkeypatch.setattr(cli, "_silence_stdout", lambda: None)  # keep pytest's capture

    def command(args):
        try:
            raise cause
        except BaseException as error:
            raise ValueError("ExAllocatePoolWithTag called ... refuses") from error

    def wrapped(args):
        try:
            command(args)
        except ValueError as error:
            raise RuntimeError("scenario.py:3 in workload") from error

    monkeypatch.setattr(cli, "_cmd_kd", wrapped)
    assert main(["kd", "-z", "x.dmp"]) == status
    assert capsys.readouterr().err == line


def test_an_internal_error_is_one_line_unless_asked_for_the_traceback(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(cli, "_cmd_kd", broken)
    assert main(["kd", "-z", "x.dmp"]) == 70
    assert capsys.readouterr().err == ("ntpool: internal error: RuntimeError: an invariant broke "
                                       "(a bug in ntpool; NTPOOL_TRACEBACK=1 shows where)\n")
    monkeypatch.setenv("NTPOOL_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        main(["kd", "-z", "x.dmp"])


def test_run_into_a_closed_pipe_exits_quietly_even_from_a_drivers_dbgprint():
    """The compiled demo's drivers DbgPrint while they load: the first write into the closed
    pipe happens inside a routine native code called."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = _ntpool("run", "demo", stdout=write_end, stderr=subprocess.PIPE)
        _, err = process.communicate(timeout=120)
    finally:
        os.close(write_end)
    assert (process.returncode, err) == (141, b"")


def test_ctrl_c_while_native_code_runs_is_one_line_and_130(tmp_path):
    scenario = tmp_path / "spin.py"
    started = tmp_path / "started"
    scenario.write_text(
        "import pathlib\n"
        "from ntpool.native import NativeDriver\n"
        f"driver = NativeDriver({bench_driver()!r})\n"
        "DRIVERS = [driver]\n\n"
        "def workload(k, rng):\n"
        f"    pathlib.Path({str(started)!r}).write_text('')\n"
        "    driver.call('AllocateAndFree', 0xFFFFFFFF, 100)  # minutes of machine code\n")
    process = _ntpool("run", str(scenario), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside AllocateAndFree's loop: machine code and the routines it calls
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (130, b"ntpool: interrupted\n")


@pytest.fixture
def python_s_ctrl_c():
    """Python's own SIGINT handler in this process for the test, as in a terminal's
    foreground command: a suite started in the background by a shell without job control
    has SIGINT ignored (Python then installs no handler), which is the caller's shell's
    doing, not ntpool's."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_ntpool_is_being_imported_is_one_line(monkeypatch, capsys, python_s_ctrl_c):
    """The ``ntpool`` script's entry point is outside the package: a Ctrl-C while the
    package loads (a moment on a busy machine) is noted, then the command ends as
    interrupted, where Python's handler would print a traceback from inside the import."""
    import importlib.abc
    import tomllib

    import ntpool_launch

    scripts = tomllib.loads((Path(SRC).parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ntpool"] == "ntpool_launch:main"

    class CtrlCWhileImporting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "ntpool.cli.main":
                os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, mid-import
            return None  # the normal finders import it

    monkeypatch.delitem(sys.modules, "ntpool.cli.main")
    monkeypatch.setattr(sys, "meta_path", [CtrlCWhileImporting(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["ntpool", "--version"])
    assert ntpool_launch.main() == 130
    assert capsys.readouterr().err == "ntpool: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_every_subcommand_s_help_says_what_it_does_and_what_each_option_is():
    from ntpool.cli.main import build_parser
    from ntpool.cli.tools import VERIFIER_OPTIONS

    commands = build_parser().subcommands
    for name, parser in commands.items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help, (name, action.option_strings or action.dest)
    text = " ".join(commands["run"].format_help().split())
    assert all(option in text for option in VERIFIER_OPTIONS) and "..." not in text
    assert "exit status: 0 clean; 1 leaks" in text and "3 a bug check" in text


@pytest.mark.parametrize("pattern, fits", [
    ("SlRq", True), ("Sl*", True), ("S?R", True), ("*", True), ("0x5eadbeef", True),
    ("0x5e*", True), ("*beef", True), ("*deadbe", True),
    ("ABCDE", False), ("SlRqX*", False), ("?????", False), ("0x12345678X", False),
    ("", False), ("Fré", False), ("€abc", False)])
def test_a_tag_pattern_that_can_match_no_tag_is_refused(capsys, pattern, fits):
    from ntpool.tools.poolmon import check_tag_pattern

    if fits:
        assert check_tag_pattern(pattern) == pattern
        return
    with pytest.raises(ValueError):
        check_tag_pattern(pattern)
    assert main(["poolmon", "demo", "--once", "--include", pattern]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(pattern) in err or "empty tag pattern" in err


def test_poolmon_s_live_filter_stays_open_on_a_pattern_that_matches_nothing():
    from ntpool.cli.poolmon_view import KeyReader, apply_key
    from ntpool.tools.poolmon import PoolmonModel

    model, reader = PoolmonModel(), KeyReader()
    for key in "/iABCDE":
        apply_key(model, reader, key)
    apply_key(model, reader, "enter")
    assert reader.pending == "/i" and "cannot match a tag" in reader.prompt()
    assert model.include == []
    for key in ("backspace", "*", "enter"):
        apply_key(model, reader, key)
    assert reader.pending == "" and model.include == ["ABCD*"]


def test_every_subcommand_prints_the_version(capsys):
    from ntpool.cli.main import build_parser

    for name in build_parser().subcommands:
        with pytest.raises(SystemExit) as stop:
            main([name, "--version"])
        assert stop.value.code == 0, name
        assert capsys.readouterr().out == f"ntpool {ntpool.__version__}\n", name


@pytest.mark.parametrize("extra, expected", [
    ("KERNEL = dict(nonpaged_pool_bytes=-5)", "KERNEL: nonpaged_pool_bytes must be at least"),
    ("KERNEL = dict(windows='8')", "KERNEL: windows must be one of"),
    ("CHECKPOINTS = 'x'", "CHECKPOINTS must be how many checkpoints"),
    ("KERNEL = dict(nonpaged_pool_bytes=1 << 50)", "the host cannot make this machine"),
])
def test_a_scenario_s_bad_machine_is_one_line_naming_the_file(tmp_path, capsys, extra, expected):
    scenario, marker = _marker_scenario(tmp_path)
    with open(scenario, "a") as file:
        file.write(extra + "\n")
    assert main(["run", scenario]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ntpool: {scenario}: ") and expected in err and err.count("\n") == 1


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_poolmon_s_interval_must_be_a_positive_number_of_seconds(capsys, interval):
    assert main(["poolmon", "demo", "--once", "--interval", interval]) == 2
    assert "--interval must be a positive number of seconds" in capsys.readouterr().err


def test_kd_history_in_a_folder_or_nowhere_is_kept_in_memory(tmp_path, monkeypatch):
    """$NTPOOL_KD_HISTORY naming a folder made prompt_toolkit's history thread fail with a
    traceback and 'Press ENTER to continue' at the first prompt."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    from ntpool.cli.kd import _history

    monkeypatch.setenv("NTPOOL_KD_HISTORY", str(tmp_path))
    assert isinstance(_history(), InMemoryHistory)
    monkeypatch.setenv("NTPOOL_KD_HISTORY", str(tmp_path / "missing" / "history"))
    assert isinstance(_history(), InMemoryHistory)
    monkeypatch.setenv("NTPOOL_KD_HISTORY", str(tmp_path / "history"))
    assert isinstance(_history(), FileHistory)


def test_the_readme_s_demo_command_with_a_new_out_folder_works_as_written(tmp_path, monkeypatch):
    """`ntpool demo --out demo --truth demo/truth.json` (README, "For forensics") in a folder
    where demo/ does not exist yet: --out is made, then the dump, symbols and manifest."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--python-drivers", "--steps", "100", "--out", "demo",
                 "--truth", "demo/truth.json"]) == 0
    assert {path.name for path in (tmp_path / "demo").iterdir()} == \
        {"MEMORY.DMP", "symbols", "truth.json"}


def test_poolsnap_diff_s_header_sits_over_its_columns(tmp_path, capsys):
    from ntpool.tools.poolmon import Snapshot, TagUsage

    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(Snapshot([TagUsage("SlRq", "Nonp", 300, 273, 13392)]).to_json())
    after.write_text(Snapshot([TagUsage("SlRq", "Nonp", 3001, 2751, 124000)]).to_json())
    assert main(["poolsnap", "--diff", str(before), str(after)]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert header.index("Owner") == row.index("+110608") + len("+110608") + 2
    for title, cell in (("Diff", "27 -> 250"), ("Bytes", "13392 -> 124000")):
        assert row.index(cell) <= header.index(title) < row.index(cell) + len(cell), title


@pytest.mark.parametrize("tags, expected", [
    ("ABCDE", "--tags: 'ABCDE' is not a tag"), ("Sl€", "--tags: 'Sl€' is not a tag"),
    (",", "--tags ',' names no tag")])
def test_score_refuses_tags_that_are_no_tag(tmp_path, capsys, tags, expected):
    truth, found = tmp_path / "truth.json", tmp_path / "found.csv"
    truth.write_text("{}")
    found.write_text("")
    assert main(["score", str(truth), str(found), "--tags", tags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_the_corruption_fuzzer_with_its_counts_so_far(tmp_path, jobs):
    """The README's long fuzzing run (`python -m ntpool.tools.corruption_fuzz --runs 100000`):
    Ctrl-C printed a traceback, and with --jobs it waited for every queued batch."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ntpool.tools.corruption_fuzz", "--runs", "100000", "--seed", "0",
         "--jobs", jobs], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC, "TMPDIR": str(tmp_path)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Running: ntpool imported, runs under way (their dump folder made), not a time that a
    # loaded machine may need for Python's start alone (Ctrl-C then is Python's traceback).
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("ntpool-fuzz-*")) and time.monotonic() < deadline and \
            process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None and list(tmp_path.glob("ntpool-fuzz-*")), "no run under way"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)  # returns once every worker let go of the pipes
    assert process.returncode == 130, err
    assert b"Traceback" not in err and b"interrupted (Ctrl-C) after" in out
    assert b"internal errors: 0" in out
    assert not list(tmp_path.glob("ntpool-fuzz-*"))  # the workers' dump folders removed


def test_a_full_disk_under_the_output_is_one_line_without_python_s_errno():
    with open("/dev/full", "w") as full:
        process = _ntpool("symbols", stdout=full,
                          stderr=subprocess.PIPE)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and err == b"ntpool: No space left on device\n"
