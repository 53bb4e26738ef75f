"""``!poolfind`` on a big pool is shared with forked worker processes (``debugger.forked``):
the text must be exactly the single process's, piece by piece, whatever the damage, whatever
the number of processes sharing it (1: this one, in batches; 2 and 3: one or two workers); an error in a worker must come out as the single process gives it, at the
same place; no worker may outlive the command, however its reader stops; one processor, or a
small pool, forks nothing. Set NTPOOL_FUZZ_EXAMPLES (e.g. 500) for a longer run on demand."""

import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ntpool
from ntpool.debugger import forked, poolscan, session as kd
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpFormatError, DumpReader, MemoryReadError
from test_poolfind_streaming import churned_kernel

MiB = 1 << 20
NP, PP = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool
COMMANDS = ["!poolfind * 0", "!poolfind * 1", "!poolfind derF 0", "!poolfind derF 1", "!poolfind ?ec* 1",
            "!poolfind Filt", "!poolfind Zzzz"]
EXAMPLES = max(10, int(os.environ.get("NTPOOL_FUZZ_EXAMPLES", "60")) // 4)
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
POOLTAGS = PoolTagDatabase.default(environ={})


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    k = churned_kernel(11)
    path = tmp_path_factory.mktemp("parallel") / "parallel.dmp"
    k.write_dump(path, "full")
    return path


@pytest.fixture
def small_batches(monkeypatch):
    """Windows of 3 pages, batches of 4: a small pool in many batches, shared at any size."""
    monkeypatch.setattr(poolscan, "WINDOW_PAGES", 3)
    monkeypatch.setattr(poolscan, "BATCH_PAGES", 4)
    monkeypatch.setattr(kd, "PARALLEL_MIN_PAGES", 0)


def pieces(path, commands, workers) -> dict:
    """Each command's streamed pieces, the scan shared by ``workers`` processes (this one and
    forked ones; 1: this one, in batches; 0: this one, the single scan)."""
    kd.PARALLEL_PROCESSES = workers
    try:
        with DumpReader(path) as reader:
            session = KdSession(reader, POOLTAGS)
            return {command: list(session.stream(command)) for command in commands}
    finally:
        kd.PARALLEL_PROCESSES = None


@pytest.fixture
def forks(monkeypatch):
    """The pids of the workers forked, as they start."""
    started = []
    fork = forked._Worker.fork.__func__

    def recording(cls, *args):
        worker = fork(cls, *args)
        started.append(worker.pid)
        return worker

    monkeypatch.setattr(forked._Worker, "fork", classmethod(recording))
    return started


def gone(pid: int) -> bool:
    """The process is reaped, or a zombie (it ran no more)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_shared_scan_prints_what_one_process_prints(dump, small_batches, forks, workers):
    serial = pieces(dump, COMMANDS, 0)
    assert not forks
    shared = pieces(dump, COMMANDS, workers)
    assert len(forks) == (workers - 1) * len(COMMANDS)
    assert shared == serial  # the same pieces, in the same order
    assert serial["!poolfind * 0"].count("") < len(serial["!poolfind * 0"])
    assert "".join(serial["!poolfind derF 0"]).count("derF") > 100
    assert all(gone(pid) for pid in forks)


def _damaged(dump, tmp_path, edits) -> str:
    """A copy of the dump with bytes of its pool pages overwritten: (page, offset, bytes)."""
    raw = bytearray(dump.read_bytes())
    with DumpReader(dump) as reader:
        offsets = [offset + (page << 12) for pool in reader.pool_ranges()
                   for _va, offset, count in poolscan.PoolFinder(reader, pool, poolscan.BigPageIndex(reader.big_pages())).runs()
                   for page in range(count)]
    for page, at, patch in edits:
        start = offsets[page % len(offsets)] + at
        raw[start:start + len(patch)] = patch
    path = tmp_path / f"damaged-{random.getrandbits(32):08x}.dmp"
    path.write_bytes(bytes(raw))
    return path


def test_damaged_pages_print_the_same_with_workers(dump, small_batches, tmp_path):
    rng = random.Random(3)
    # in chunk bodies and headers alike; and a page's first header (always a header)
    edits = [(rng.randrange(1 << 20), rng.randrange(0, 4096, 16) + rng.choice([0, 2, 3, 4]), bytes([rng.randrange(256)]))
             for _ in range(200)]
    edits += [(rng.randrange(1 << 20), rng.choice([0, 2, 3]), bytes([rng.randrange(1, 256)])) for _ in range(20)]
    path = _damaged(dump, tmp_path, edits)
    serial = pieces(path, COMMANDS, 0)
    text = "".join(serial["!poolfind * 0"] + serial["!poolfind * 1"])
    assert "header chain is corrupt" in text and "(corrupt page: see !poolval" in text
    for workers in (1, 2, 3):
        assert pieces(path, COMMANDS, workers) == serial


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 4095), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=12),
       workers=st.sampled_from([1, 2, 3]), command=st.sampled_from(COMMANDS))
def test_any_damage_prints_the_same_with_workers(dump, small_batches, tmp_path, edits, workers, command):
    path = _damaged(dump, tmp_path, edits)
    try:
        assert pieces(path, [command], workers) == pieces(path, [command], 0)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("error", [lambda offset: MemoryReadError(offset, "physical"),
                                   lambda offset: DumpFormatError(f"d.dmp: truncated at file offset {offset:#x}")])
def test_an_error_in_a_worker_is_the_single_process_s_error_at_its_place(dump, small_batches, monkeypatch, error):
    """One window's read fails (by its file offset, the same in every process): the shared
    scan prints exactly what the single scan prints, the error last."""
    with DumpReader(dump) as reader:
        runs = list(poolscan.PoolFinder(reader, reader.pool_ranges()[0],
                                        poolscan.BigPageIndex(reader.big_pages())).runs())
    read = DumpReader.read_file_into
    for bad in (runs[0][1], runs[len(runs) // 2][1], runs[-1][1]):
        def failing(reader, offset, view, bad=bad):
            if offset == bad:
                raise error(offset)
            return read(reader, offset, view)

        monkeypatch.setattr(DumpReader, "read_file_into", failing)
        commands = ["!poolfind * 0", "!poolfind Fred 0"]
        serial = pieces(dump, commands, 0)
        assert all(got[-1].endswith(str(error(bad))) for got in serial.values())
        assert all(got[-1].lstrip("\n").startswith(("Memory read error: ", "Cannot analyse: ")) for got in serial.values())
        for workers in (1, 2, 3):
            assert pieces(dump, commands, workers) == serial


def test_an_error_finding_the_runs_is_raised_at_its_place(dump, small_batches, monkeypatch):
    """The page tables fail part way (a hostile dump): every worker finds the runs itself and
    meets the error; only the one whose batch it falls in says so, after the runs before it."""
    runs = poolscan.PoolFinder.runs
    monkeypatch.setattr(kd, "PARALLEL_MIN_PAGES", 20)  # counted before the workers start: the error too
    for after in (0, 1, 2, 7, 8, 9, 30):
        def failing(finder, after=after):
            for index, run in enumerate(runs(finder)):
                if index == after:
                    raise MemoryReadError(0xFFFFF6FB7DBED000 + index)
                yield run

        monkeypatch.setattr(poolscan.PoolFinder, "runs", failing)
        commands = ["!poolfind * 0", "!poolfind derF 0"]
        serial = pieces(dump, commands, 0)
        assert all(got[-1].lstrip("\n").startswith("Memory read error: ") for got in serial.values())
        for workers in (1, 2, 3):
            assert pieces(dump, commands, workers) == serial, (after, workers)


def test_an_unexpected_error_in_a_worker_is_raised_with_its_type(dump, small_batches, monkeypatch):
    def broken(self, window):
        if window.batch == 3:
            raise ZeroDivisionError("a bug in the formatting")
        return ""

    monkeypatch.setattr(kd.HitLines, "window", broken)
    for workers in (0, 1, 2, 3):
        with pytest.raises(ZeroDivisionError, match="a bug in the formatting"):
            pieces(dump, ["!poolfind * 0"], workers)


def test_a_reader_that_stops_early_leaves_no_worker(dump, small_batches, forks, monkeypatch):
    monkeypatch.setattr(forked, "AHEAD_BYTES", 0)  # the worker waits on a full pipe: it cannot
    monkeypatch.setattr(forked, "PIPE_BYTES", 4096)  # be done before the reader stops
    kd.PARALLEL_PROCESSES = 2
    try:
        with DumpReader(dump) as reader:
            stream = KdSession(reader, POOLTAGS).stream("!poolfind * 0")
            for _ in range(3):
                next(stream)
            assert len(forks) == 1 and not any(gone(pid) for pid in forks)
            stream.close()
            assert all(gone(pid) for pid in forks)
    finally:
        kd.PARALLEL_PROCESSES = None


_KD_PARALLEL = """
import sys
from ntpool.debugger import forked, poolscan, session
poolscan.WINDOW_PAGES, poolscan.BATCH_PAGES = 3, 4
session.PARALLEL_MIN_PAGES, session.PARALLEL_PROCESSES = 0, 3
fork = forked._Worker.fork.__func__
def recording(cls, *args):
    worker = fork(cls, *args)
    sys.stderr.write(f"worker {worker.pid}\\n")
    sys.stderr.flush()
    return worker
forked._Worker.fork = classmethod(recording)
from ntpool.cli.main import main
sys.exit(main(["kd", "-z", sys.argv[1], "-c", "!poolfind * 0; !poolfind * 1"]))
"""


def _workers_of(stderr: str) -> list[int]:
    return [int(line.split()[1]) for line in stderr.splitlines() if line.startswith("worker ")]


def _all_gone(pids, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _kd_process(dump, stdout):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", _KD_PARALLEL, str(dump)], stdout=stdout,
                            stderr=subprocess.PIPE, env=environment, text=True)


def test_kd_paged_into_head_leaves_no_worker(dump):
    kd_process = _kd_process(dump, subprocess.PIPE)
    kd_process.stdout.read(4000)  # a pager that reads a screen and quits
    kd_process.stdout.close()
    _, stderr = kd_process.communicate(timeout=60)
    assert kd_process.returncode == 141, stderr  # stopped quietly, as kd does for a closed pipe
    assert "Traceback" not in stderr
    pids = _workers_of(stderr)
    assert pids and _all_gone(pids)


def test_kd_killed_outright_leaves_no_worker(dump):
    read_fd, write_fd = os.pipe()
    kd_process = _kd_process(dump, write_fd)
    os.close(write_fd)
    os.read(read_fd, 4000)  # workers are writing now, and kd waits on the pipe we do not read
    pids = []
    line = ""
    while not pids:  # the workers of the first command
        line = kd_process.stderr.readline()
        assert line, "kd ended before it started workers"
        pids = _workers_of(line)
    kd_process.send_signal(signal.SIGKILL)
    kd_process.wait(timeout=60)
    os.close(read_fd)
    kd_process.stderr.close()
    assert _all_gone(pids)  # each finds its pipe's reader gone and ends


def test_ctrl_c_while_kd_prints_leaves_no_worker(dump):
    read_fd, write_fd = os.pipe()
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # SIGINT at its default in kd, as in a terminal's foreground command (a suite started in
    # the background by a shell without job control would hand it down ignored).
    kd_process = subprocess.Popen([sys.executable, "-c", _KD_PARALLEL, str(dump)], stdout=write_fd,
                                  stderr=subprocess.PIPE, env=environment, text=True, start_new_session=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(write_fd)
    os.read(read_fd, 4000)
    pids = []
    while not pids:
        line = kd_process.stderr.readline()
        assert line, "kd ended before it started workers"
        pids = _workers_of(line)
    os.killpg(kd_process.pid, signal.SIGINT)  # as a terminal sends it: to kd and its workers
    deadline = time.monotonic() + 60  # read on (a closed pipe would end kd first, as a pager's
    while time.monotonic() < deadline:  # quitting does): to the end, kd's and its workers'
        if select.select([read_fd], [], [], 1)[0] and not os.read(read_fd, 1 << 16):
            break
    os.close(read_fd)
    stderr = kd_process.stderr.read()
    assert kd_process.wait(timeout=60) == 130 and "ntpool: interrupted" in stderr, stderr
    assert "Traceback" not in stderr
    assert _all_gone(pids)


def test_one_processor_and_a_small_pool_fork_nothing(dump, monkeypatch):
    def no_fork():
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(forked, "usable_cpus", lambda: 1)
    monkeypatch.setattr(kd, "PARALLEL_MIN_PAGES", 0)
    with DumpReader(dump) as reader:  # one processor: the scan stays here, whatever the pool
        assert "derF" in KdSession(reader, POOLTAGS).run_one("!poolfind derF")
    monkeypatch.setattr(forked, "usable_cpus", lambda: 2)
    monkeypatch.setattr(forked, "free_processors", lambda cpus: cpus)
    monkeypatch.setattr(kd, "PARALLEL_MIN_PAGES", 1 << 20)
    with DumpReader(dump) as reader:  # a pool smaller than the threshold stays here too
        assert "derF" in KdSession(reader, POOLTAGS).run_one("!poolfind derF")
    monkeypatch.setattr(kd, "PARALLEL_MIN_PAGES", 0)
    monkeypatch.setattr(forked, "free_processors", lambda cpus: 1)
    with DumpReader(dump) as reader:  # two processors, one of them busy with other work
        assert "derF" in KdSession(reader, POOLTAGS).run_one("!poolfind derF")
    monkeypatch.setattr(forked, "free_processors", lambda cpus: cpus)
    with DumpReader(dump) as reader, pytest.raises(AssertionError, match="forked"):
        KdSession(reader, POOLTAGS).run_one("!poolfind derF")


def test_free_processors_count_the_others_runnable_tasks(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for running, cpus, free in [(1, 2, 2), (2, 2, 1), (3, 2, 0), (9, 2, 0), (2, 4, 3), (1, 1, 1)]:
        loadavg = tmp_path / f"loadavg-{running}"
        loadavg.write_text(f"0.50 0.60 0.70 {running}/321 4242\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, loadavg=loadavg, **k:
                            real_open(loadavg if path == "/proc/loadavg" else path, *a, **k))
        assert forked.free_processors(cpus) == free
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(tmp_path / "absent", *a, **k))
    assert forked.free_processors(2) == 2  # no count to be had: all taken as free


def _numbered(take):
    """A toy task: batch b is the texts 'b.0' .. 'b.3' and the end [b]; in a worker (not
    the test's process), batch 5 kills its process after two texts."""
    for batch in range(12):
        if not take(batch):
            continue
        for piece in range(4):
            if batch == 5 and piece == 2 and os.getpid() != _numbered.parent:
                os.kill(os.getpid(), signal.SIGKILL)
            yield "text", f"{batch}.{piece}"
        yield "end", [batch]


@pytest.mark.parametrize("workers", [2, 3])
def test_a_worker_killed_from_outside_costs_nothing_but_time(workers):
    _numbered.parent = os.getpid()
    assert list(forked.in_order(_numbered, workers)) == list(_numbered(lambda batch: True))


def test_no_process_to_be_had_scans_here(dump, small_batches, monkeypatch):
    """A limit on processes (fork fails): the scan is made here, the same."""
    serial = pieces(dump, COMMANDS[:3], 0)

    def no_process():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_process)
    assert pieces(dump, COMMANDS[:3], 2) == serial


def test_a_memory_read_error_crosses_processes_as_it_was():
    import pickle

    error = pickle.loads(pickle.dumps(MemoryReadError(0x1000, "physical")))
    assert isinstance(error, MemoryReadError) and error.address == 0x1000
    assert str(error) == "memory at physical address 0x1000 is not in the dump"
