"""The campaign engine: many independent, deterministic runs, on one core, all cores or Dask.

A campaign is a list of *tasks*. A task is a plain dict (JSON-able) that describes one run
completely: which run function (``kind``), what it runs (a scenario's source travels in the
task, by content, never by path), its seed, fault plan, verifier options and Windows
version. ``execute(task)`` is a pure function of the task: its result is a small dict, the
same in whatever process, machine, order or parallelism it runs. Each task has a ``key``,
its identity in the results store, so an interrupted campaign resumes without redoing a
finished run.

Executors: ``serial`` (in this process), ``local`` (a process pool sized to the machine)
and ``dask`` (a dask.distributed scheduler address; each worker thread hands its runs to a
process of its own, so a run that ends its process never ends a Dask worker). All three call
the same ``execute``, and record a run that ends its process each time as ``worker died``.
A run longer than its time limit is interrupted inside the worker and recorded as
``timed out``. A run whose process's peak resident memory passes the campaign's memory limit
(``Engine.memory_mib``) is stopped by the process that watches it (the campaign's process
for its local workers, the run server on Dask) and recorded as ``out of memory``: on Dask the
cluster's own per-worker limit watches only the Dask worker, never the run apart from it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .store import ResultStore

# kind -> "module:function"; looked up in the worker, so tasks stay plain data.
RUN_FUNCTIONS = {
    "scenario": "ntpool.campaign.runs:run_scenario",
    "triage": "ntpool.campaign.triage:read_dump",
    "sleep": "ntpool.campaign.runs:run_sleep",
    "corpus-dump": "ntpool.forensics.tasks:run_corpus_dump",
    "score": "ntpool.forensics.tasks:run_score",
}


class MissingExtra(ValueError):
    """An option needs a package that is not installed (an extra of ntpool's)."""


class ClusterError(ValueError):
    """The Dask cluster gave no result for a batch of runs (a run's own failure is its result,
    never this): ntpool not importable by its scheduler or workers, a worker killed again and
    again from outside, a cluster closed under the campaign."""


class RunTimedOut(BaseException):
    """Raised inside a run that exceeded its time limit (a BaseException, like BugCheck, so
    that a driver's ``except Exception`` cannot swallow it)."""


def task_key(task: dict) -> str:
    """A task's identity: a digest of its description (minus its key)."""
    body = {k: v for k, v in task.items() if k != "key"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def keyed(task: dict) -> dict:
    if "key" not in task:
        task = dict(task, key=task_key(task))
    return task


def _run_function(kind: str) -> Callable[[dict], dict]:
    try:
        module_name, function = RUN_FUNCTIONS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown run kind {kind!r} (known: {', '.join(RUN_FUNCTIONS)})") from None
    module = __import__(module_name, fromlist=[function])
    return getattr(module, function)


class _Watchdog:
    """Interrupts the thread that runs a task once its time limit has passed.

    The interruption is an asynchronous exception (RunTimedOut) delivered to that thread,
    which works in a pool process's main thread and in a Dask worker's task thread alike. It
    lands at the next Python bytecode of the run; a run stuck inside one C call (e.g. an
    emulator loop) is stopped by that call's own limit.
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.thread_id = threading.get_ident()
        self.fired = False
        self._done = threading.Event()
        # Firing and leaving exclude each other: a watch that fired after __exit__ looked
        # would leave its exception pending, to land later anywhere in the campaign's own
        # code (a time limit of 0.1 ms made `ntpool triage` an internal error so).
        self._lock = threading.Lock()

    def __enter__(self):
        if self.seconds:
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self):
        if not self._done.wait(self.seconds):
            with self._lock:
                if self._done.is_set():  # the run left meanwhile
                    return
                self.fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id),
                                                           ctypes.py_object(RunTimedOut))

    def __exit__(self, *exc):
        with self._lock:
            self._done.set()
            delivered = exc[0] is not None and issubclass(exc[0], RunTimedOut)
            if self.fired and not delivered:
                # Fired after the run returned (or as it raised something else): the pending
                # exception is cleared, never delivered past this point.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)
        return False


def execute(task: dict) -> dict:
    """Run one task to its result record (never raises for a run's own failure)."""
    limit = task.get("timeout")
    started = time.perf_counter()
    try:
        with _Watchdog(limit):
            result = _run_function(task["kind"])(task)
    except RunTimedOut:
        result = {"verdict": "timed out", "evidence": f"no result within {limit:g} s"}
    except BaseException as error:  # noqa: BLE001 - a run's failure is its result, whatever it is
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C: the campaign stops, not the run
            raise
        result = {"verdict": "raised", "exception": type(error).__name__,
                  "evidence": _first_line(f"{type(error).__name__}: {error}")}
    result["key"] = task["key"]
    result["_seconds"] = time.perf_counter() - started  # kept out of the stored record
    return result


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def execute_batch(tasks: list[dict]) -> list[dict]:
    results = []
    for task in tasks:
        results.append(execute(task))
        _held_if_past_memory_limit()
    return results


# The memory limit of the process making runs (bytes; None: no limit), set by _worker_setup.
_RUN_MEMORY_LIMIT: int | None = None


def _held_if_past_memory_limit() -> None:
    """Called after each run in a watched process: a run whose process's peak resident memory
    passed the limit gives no result. It may have passed the limit and let its memory go
    again between two looks of the watch (a moment on a loaded machine, when the watch is
    not scheduled): the process waits here for the watch, which reads the same peak, to end
    it, so that the run is recorded as ``out of memory`` whenever the watch looks."""
    if _RUN_MEMORY_LIMIT is None or peak_resident_bytes("self") <= _RUN_MEMORY_LIMIT:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(MEMORY_POLL_SECONDS)
    os._exit(1)  # (no watch came: a death, never a result past the limit)


def _worker_setup(parent: int, memory_limit: int | None = None) -> None:
    """A local worker's initializer.

    Ctrl-C reaches every process of the terminal's process group: the campaign's process
    handles it (it ends its workers), so a worker ignores it rather than print a traceback.
    And a worker ends when the campaign's process is gone: one killed outright (SIGKILL, a
    crash) cannot stop its workers, which would otherwise wait forever for work on a queue
    nobody writes to any more, holding the campaign's terminal and pipes open.

    ``memory_limit`` (bytes): the limit the process watching this one holds it to; a run
    past it gives no result (``_held_if_past_memory_limit``).
    """
    global _RUN_MEMORY_LIMIT
    _RUN_MEMORY_LIMIT = memory_limit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM ends a worker (the campaign's process ends its workers so): not the handler
    # the campaign's process may have, inherited through fork.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    parent = parent or os.getppid()  # (0: a forkserver's worker follows the forkserver)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="ntpool-follow-parent", daemon=True).start()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _new_pool(jobs: int, memory_limit: int | None = None) -> ProcessPoolExecutor:
    """A pool whose workers are started with Ctrl-C and SIGTERM held back.

    A signal that came while a worker was being forked would otherwise reach the new
    worker before its _worker_setup (a traceback from it), or this process inside fork's
    own handlers, which drop the KeyboardInterrupt (the campaign went on). Held back, it is
    ignored by the workers and raised here once they are started. The pool's manager
    thread, started here too, keeps them held: signals go to the main thread."""
    hold = hasattr(signal, "pthread_sigmask")
    if hold:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if memory_limit is None:
            pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_setup,
                                       initargs=(os.getpid(), None))
        else:
            # Watched workers are new interpreters, never forked from this process: a worker
            # forked from the campaign's process holds its memory too (a test suite's, a
            # notebook's: 150 MiB and more), so runs that hold little passed a limit of
            # 200 MiB there, and on Dask they did not. (A forkserver's workers would import
            # ntpool from the default path, not this process's: Python 3.11 drops it.)
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                       initializer=_worker_setup, initargs=(0, memory_limit))
        pool.submit(os.getpid)  # starts the workers and the manager thread now
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pool


WORKER_DEATHS = 2  # a run is judged to kill its worker when it does so this often, alone


def _alone(tasks: list[dict], watch: "_MemoryWatch | None" = None):
    """Make each run on a worker of its own: a run whose worker dies WORKER_DEATHS times is
    recorded as ``worker died`` (a crash, an exit or the OOM killer: the run's own doing), or
    ``out of memory`` when ``watch`` stopped it for passing the memory limit. A death makes a
    new worker, so the last attempt is always in a fresh process, with no earlier run's
    memory in it."""
    pool = None
    try:
        for task in tasks:
            deaths = []
            while len(deaths) < WORKER_DEATHS:
                if pool is None:
                    pool = _new_pool(1, watch.limit if watch is not None else None)
                    if watch is not None:
                        watch.pool = pool
                future = pool.submit(execute_batch, [task])
                processes = list((getattr(pool, "_processes", None) or {}).values())
                try:
                    yield from future.result()
                    break
                except BrokenProcessPool:
                    _stop_workers(pool)
                    pool = None
                    process, code = _exit_code(processes)
                    deaths.append({"ended": code, "memory_mib":
                                   watch.stopped(process) if watch is not None else None})
            else:
                yield _worker_died(task, deaths[-1], WORKER_DEATHS)
    except BaseException:
        if pool is not None:
            _stop_workers(pool)
        raise
    if pool is not None:
        pool.shutdown(wait=True)


def _worker_died(task: dict, death: dict, times: int) -> dict:
    """The record of a run that ended its worker process each time it was made (one wording
    for every engine: nothing in it depends on which worker or when). ``death`` is the last
    one: ``{"ended": exit code, "memory_mib": the limit it passed, or None}``."""
    if death.get("memory_mib"):
        whose = f"; {death['whose']}" if death.get("whose") else ""
        return {"key": task["key"], "verdict": "out of memory", "_seconds": 0.0,
                "evidence": f"the run's process passed the memory limit of "
                            f"{death['memory_mib']:g} MiB (resident{whose}) and was stopped, "
                            f"each of {times} times it was made"}
    return {"key": task["key"], "verdict": "worker died", "_seconds": 0.0,
            "evidence": f"the run's worker process {_ending(death.get('ended'))} before the run "
                        f"returned, each of {times} times it was made"}


def _exit_code(processes) -> tuple:
    """The dead worker process and its exit code. The pool's own thread reaps it too: the
    code can be missing for a moment (its waitpid won, its record is not yet made), so look
    again."""
    deadline = time.monotonic() + 5
    while True:
        for process in processes:
            process.join(timeout=0.05)
            if process.exitcode is not None:
                return process, process.exitcode
        if time.monotonic() > deadline:
            return None, None


def _ending(exitcode) -> str:
    if exitcode is None:
        return "ended"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


MEMORY_POLL_SECONDS = 0.02  # how often a run's peak resident memory is read: ~40 us a read


def peak_resident_bytes(pid: int | str) -> int:
    """A process's peak resident memory so far (VmHWM in Linux's /proc/PID/status; 0 once it
    is gone). The peak, not the resident memory of the moment: a run that passes the limit
    and lets its memory go between two looks of its watch (a loaded machine, a watch not
    scheduled for a while) has passed it all the same."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) << 10  # kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_time_limit(seconds: float | None) -> None:
    """A run's time limit is a positive, finite number of seconds (or None: no limit). Zero
    would mean no limit to the watchdog and NaN or infinity a watch that never fires or fails,
    so they are refused, as the memory limit's are."""
    if seconds is not None and not 0 < seconds < float("inf"):
        raise ValueError(f"the time limit must be a positive number of seconds, got {seconds:g}")


def check_memory_limit(memory_mib: float | None) -> None:
    if memory_mib is None:
        return
    if not 0 < memory_mib < float("inf"):
        raise ValueError(f"the memory limit must be a positive number of MiB, got {memory_mib:g}")
    if not peak_resident_bytes("self"):
        raise ValueError("a memory limit needs Linux's /proc/PID/status to read a run's memory")


class _MemoryWatch:
    """The campaign process's watch over its local workers' memory: a worker whose peak
    resident memory passes the limit is ended at once (SIGKILL) and remembered, so that the
    run it was making is recorded as ``out of memory``. Read from outside the worker, so a run
    that swells inside one C call (which a thread of its own could not interrupt) is stopped
    as well as one that swells in Python; the peak, so that a run past the limit for less
    than a look's interval is stopped too (its worker holds back its result until then)."""

    def __init__(self, memory_mib: float):
        self.memory_mib = memory_mib
        self.limit = int(memory_mib * (1 << 20))
        self.pool: ProcessPoolExecutor | None = None  # the pool whose workers are watched
        self._killed: set = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ntpool-memory-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False

    def stopped(self, process) -> float | None:
        """The limit, when the watch ended ``process`` (a pool's worker) for passing it."""
        return self.memory_mib if process is not None and process in self._killed else None

    def _watch(self):
        while not self._done.wait(MEMORY_POLL_SECONDS):
            pool = self.pool
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                pid = process.pid  # (the process objects, not their ids, which are reused)
                if pid and process not in self._killed and peak_resident_bytes(pid) > self.limit:
                    self._killed.add(process)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:  # it ended by itself meanwhile
                        pass


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    # The executor has no public way to end a running call; its worker processes are
    # terminated, as multiprocessing.Pool.terminate does.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
    # The pool's thread ends once it sees its workers gone. Waited for here: left running,
    # it could close its wake-up pipe while the interpreter's exit hook writes to it
    # ("OSError: Bad file descriptor" at exit, Python 3.11).
    if manager is not None:
        manager.join(timeout=5)


@dataclass
class Progress:
    total: int
    done: int = 0
    failures: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def remaining_seconds(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate else None


@dataclass
class Tally:
    """Over every run() of an engine: runs made now, runs taken from its store (finished
    before an interruption), and the seconds spent making them."""

    executed: int = 0
    reused: int = 0
    seconds: float = 0.0
    in_process: int = 0  # of the runs made, those made in this process (no worker)

    @property
    def rate(self) -> float:
        return self.executed / self.seconds if self.seconds > 0 else 0.0


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class Engine:
    """Where a campaign's runs execute: ``jobs`` processes locally, or a Dask scheduler."""

    jobs: int | None = None  # None: every core; 1: in this process
    dask: str | None = None  # a scheduler address, or a distributed.Client
    store: ResultStore | None = None
    progress: Callable[[Progress, dict], None] | None = None
    batch: int = 8  # tasks sent to a local worker at a time (amortises the IPC)
    tally: Tally = field(default_factory=Tally)  # shared by copies (dataclasses.replace)
    # A run whose process's resident memory passes this many MiB is stopped and recorded as
    # ``out of memory`` (None: no limit). With a limit no run is made in this process.
    memory_mib: float | None = None
    no_worker_seconds: float = 120.0  # on Dask: a cluster with no worker this long stops the campaign

    def run(self, tasks: Iterable[dict]) -> list[dict]:
        """Run every task (skipping those the store already holds); results in task order."""
        tasks = [keyed(t) for t in tasks]
        results: dict[str, dict] = {}
        pending: dict[str, dict] = {}
        for task in tasks:
            stored = self.store.get(task["key"]) if self.store else None
            if stored is not None:
                if task["key"] not in results:
                    self.tally.reused += 1
                results[task["key"]] = stored
            else:
                pending.setdefault(task["key"], task)
        pending = list(pending.values())
        progress = Progress(total=len(pending))
        finished = self._execute(pending)
        try:
            for result in finished:
                seconds = result.pop("_seconds", 0.0)
                # As the store keeps it (keys sorted, tuples as lists): a result is the same
                # object whether made now or taken from the store of an interrupted campaign.
                result = json.loads(json.dumps(result, sort_keys=True))
                if self.store is not None:
                    self.store.put(result["key"], result)
                results[result["key"]] = result
                self.tally.executed += 1
                progress.done += 1
                if result.get("verdict") not in ("survived", "read"):
                    progress.failures += 1
                if self.progress is not None:
                    self.progress(progress, dict(result, seconds=seconds))
        finally:
            # Stops the executor now, also when the interruption came while a result was
            # being stored or reported (outside the generator).
            finished.close()
            self.tally.seconds += time.perf_counter() - progress.started
        return [results[t["key"]] for t in tasks]

    def _execute(self, tasks: list[dict]):
        if not tasks:
            return
        check_memory_limit(self.memory_mib)
        if self.dask is not None:
            yield from self._dask(tasks)
        elif ((self.jobs or default_jobs()) <= 1 or len(tasks) == 1) and self.memory_mib is None:
            for task in tasks:
                self.tally.in_process += 1
                yield execute(task)
        else:
            yield from self._local(tasks)

    def _local(self, tasks: list[dict]):
        """Batches on a pool of worker processes, a few per worker in flight at a time.

        A worker that dies (a run that crashes or exits its process, the OOM killer, a
        kill) breaks the pool and every batch in flight with it: those runs are made again
        one at a time on a worker of their own, so that a run that kills its worker is
        found and recorded (``worker died``) and the others are made as usual; the campaign
        goes on with a new pool. Nothing in flight is lost, nothing is counted twice."""
        with contextlib.ExitStack() as stack:
            watch = None
            if self.memory_mib is not None:
                watch = stack.enter_context(_MemoryWatch(self.memory_mib))
            yield from self._local_pool(tasks, watch)

    def _local_pool(self, tasks: list[dict], watch: "_MemoryWatch | None"):
        jobs = min(self.jobs or default_jobs(), len(tasks))
        size = max(1, min(self.batch, len(tasks) // (jobs * 4) or 1))
        waiting = deque(tasks[i:i + size] for i in range(0, len(tasks), size))
        window = jobs * 2  # batches in flight: enough to keep every worker busy
        limit = watch.limit if watch is not None else None
        pool = _new_pool(jobs, limit)
        if watch is not None:
            watch.pool = pool
        in_flight: dict = {}
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < window:
                    batch = waiting.popleft()
                    in_flight[pool.submit(execute_batch, batch)] = batch
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                failed = []
                for future in done:
                    batch = in_flight.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool:
                        failed.append(batch)
                        continue
                    yield from results
                if failed:  # the pool is broken: what is still in flight is lost with it
                    failed.extend(in_flight.values())
                    in_flight.clear()
                    _stop_workers(pool)
                    yield from _alone([task for batch in failed for task in batch], watch)
                    pool = _new_pool(jobs, limit)
                    if watch is not None:
                        watch.pool = pool
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, an error): the runs in flight are not stored, so
            # a resumed campaign makes them again; waiting for them would only delay the
            # stop by up to a batch of runs.
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)

    def _dask(self, tasks: list[dict]):
        """Batches on the cluster's workers, each made in a run server beside the worker
        (``execute_apart``): a run that ends its process ends that server, never the Dask
        worker, and is recorded as ``worker died`` as on local cores, with how its process
        ended; the run server watches the run's memory against ``memory_mib``.

        A Dask worker lost (killed from outside, its machine gone) is the scheduler's to
        answer: the batch it held goes to another worker, until the scheduler gives up on it
        (KilledWorker, after distributed.scheduler.allowed-failures deaths). Such a batch is
        then cut in two and each half sent again, down to single runs; a single run the
        scheduler gives up on is recorded as ``worker died``. So every run ends as a row:
        none is lost with its batch, and the campaign goes on. A cluster left with no worker
        for ``no_worker_seconds`` stops the campaign (ClusterError) rather than wait forever."""
        try:
            from distributed import Client, KilledWorker, wait
        except ImportError:
            # A missing extra is the user's to install: one line (ValueError), not an error of ntpool.
            raise MissingExtra("--dask needs dask.distributed: pip install 'ntpool[dask]'") from None
        client = self.dask if isinstance(self.dask, Client) else Client(self.dask)
        where = f" at {self.dask}" if isinstance(self.dask, str) else ""

        def submit(batch: list[dict]):
            return client.submit(execute_apart, batch, self.memory_mib, pure=False, retries=2,
                                 key=f"ntpool-runs-{batch[0]['key']}-{len(batch)}")

        try:
            # Batches, larger than the local pool's: a Dask task costs milliseconds of
            # scheduling and messaging, more than a short run. Four batches per worker keep
            # the load balanced; a lost worker's batch is retried elsewhere.
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            size = max(1, min(self.batch * 8, len(tasks) // (workers * 4) or 1))
            outstanding = {submit(batch): batch
                           for batch in (tasks[i:i + size] for i in range(0, len(tasks), size))}
            alone_since = None  # when the cluster was last seen with no worker
            while outstanding:
                try:
                    done, _ = wait(list(outstanding), timeout=DASK_POLL_SECONDS,
                                   return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = ()
                if not done:
                    if client.scheduler_info(n_workers=1).get("workers"):
                        alone_since = None
                    elif alone_since is None:
                        alone_since = time.monotonic()
                    elif time.monotonic() - alone_since > self.no_worker_seconds:
                        raise ClusterError(
                            f"the Dask cluster{where} has had no worker for "
                            f"{self.no_worker_seconds:g} s; {sum(map(len, outstanding.values())):,} "
                            f"run(s) not made")
                    continue
                for future in done:
                    batch = outstanding.pop(future)
                    try:
                        results = future.result()
                    except KilledWorker:
                        if len(batch) == 1:
                            yield _killed_worker(batch[0])
                        else:
                            half = len(batch) // 2
                            outstanding.update({submit(part): part
                                                for part in (batch[:half], batch[half:])})
                        continue
                    except Exception as error:  # noqa: BLE001 - the cluster's, never a run's (see ClusterError)
                        raise ClusterError(
                            f"the Dask cluster{where} gave no result for a batch of runs "
                            f"({_first_line(f'{type(error).__name__}: {error}')}); its scheduler and "
                            f"every worker need ntpool installed, the version this campaign runs") from error
                    yield from results
        finally:
            if client is not self.dask:
                client.close()


DASK_POLL_SECONDS = 2.0  # how often a campaign waiting on Dask looks for a cluster with no worker


def _killed_worker(task: dict) -> dict:
    """The record of a run whose Dask worker died each time the scheduler gave it the run, until
    it gave up on it (KilledWorker). The run is made apart from the worker, so what ended the
    worker came from outside (a kill, the OOM killer, a lost machine), yet the run is a row."""
    return {"key": task["key"], "verdict": "worker died", "_seconds": 0.0,
            "evidence": "the Dask worker holding the run died each time the scheduler gave it "
                        "the run, until the scheduler gave up on it (KilledWorker)"}


# A Dask worker's runs are made in a process of its own (a run server, one per worker thread):
# a run that ends its process (os._exit, a crash in native code, the OOM killer) must not end
# the Dask worker, whose death the scheduler answers by making the whole batch again on
# another worker, up to distributed.scheduler.allowed-failures times, then stopping the
# campaign with KilledWorker; and whose nanny, in a cluster that deploys workers itself (a
# LocalCluster), is closed for good when it is found restarting often.
_SERVERS = threading.local()

_SERVE = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
          "from ntpool.campaign.engine import serve_runs; serve_runs(json.loads(sys.argv[2]))")


def execute_apart(tasks: list[dict], memory_mib: float | None = None) -> list[dict]:
    """``execute_batch`` made by this thread's run server: one task sent, its result read,
    then the next. A run whose process dies is made again in a new one; one that ends it
    WORKER_DEATHS times is recorded as ``worker died`` (``out of memory`` when the server
    stopped it for passing ``memory_mib``), as ``_alone`` records it. A campaign that states
    no limit is held to the Dask worker's own (``dask worker --memory-limit``, its share for
    each of the worker's threads): that limit watches only the worker's process, never the
    runs made apart from it, which it covered when they were made in the worker."""
    whose = None
    if memory_mib is None:
        memory_mib, whose = _dask_worker_limit()
    results = []
    for task in tasks:
        deaths = []
        while len(deaths) < WORKER_DEATHS:
            answer = _ask_server(task, memory_mib)
            if "key" in answer:
                results.append(answer)
                break
            deaths.append(answer)
        else:
            results.append(_worker_died(task, dict(deaths[-1], whose=whose), WORKER_DEATHS))
    return results


def _dask_worker_limit() -> tuple[float | None, str | None]:
    """The memory limit of the Dask worker running this thread, in MiB, shared among its
    threads (each has a run server), and how a row names it; (None, None) when it has none."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a Dask worker
        return None, None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    if not limit:
        return None, None
    threads = max(1, getattr(getattr(worker, "state", None), "nthreads", 1) or 1)
    share = "" if threads == 1 else f", shared by its {threads} threads"
    return limit / threads / (1 << 20), f"the Dask worker's --memory-limit{share}"


def _ask_server(task: dict, memory_mib: float | None = None) -> dict:
    """The run's result, or ``{"ended": exit code, "memory_mib": limit or None}`` when the
    process making it died (stopped by the server for passing the limit, or not)."""
    import subprocess
    import sys

    server = getattr(_SERVERS, "process", None)
    if server is not None and getattr(_SERVERS, "memory_mib", None) != memory_mib:
        _close_server(server)  # another campaign's limit: a server watching this one's
        server = None
    if server is None or server.poll() is not None:
        server = subprocess.Popen([sys.executable, "-c", _SERVE, json.dumps(sys.path),
                                   json.dumps(memory_mib)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        _SERVERS.process, _SERVERS.memory_mib = server, memory_mib
    try:
        server.stdin.write(json.dumps(task) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
    except OSError:
        line = ""
    if line:
        return json.loads(line)
    # The server itself is gone (killed from outside): a new one makes the run again.
    _SERVERS.process = None
    return {"ended": _close_server(server), "memory_mib": None}


def _close_server(server) -> int | None:
    """Ends a run server (its input closed, it ends) and gives its exit code."""
    import subprocess

    for stream in (server.stdin, server.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        return server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return None


def serve_runs(memory_mib: float | None = None) -> None:
    """A run server: a task per line in, its result per line out, until its input ends.

    The server imports ntpool once, then forks the process that makes the runs; when a run
    ends that process, the server says how (``{"ended": code}``) and forks another, in
    milliseconds, so that a run ending its process costs no interpreter start. While a run
    is made the server reads the process's peak resident memory; past ``memory_mib`` it ends it
    (``{"ended": -9, "memory_mib": limit}``): the Dask worker's own memory limit watches only
    the worker's process. It ends when its Dask worker is gone (quietly: nobody reads what it
    would say). The server starts no thread (it forks); the forked process follows it as a
    local worker follows the campaign (``_worker_setup``)."""
    import sys

    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what a run prints goes to the worker's error stream, never into the results
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(os, "fork"):  # pragma: no cover - not a POSIX system: the runs are made here
        _serve_forked(results, sys.stdin)
        return
    import ntpool  # noqa: F401 - imported once here rather than in each forked process

    limit = int(memory_mib * (1 << 20)) if memory_mib else None
    worker, server = os.getppid(), os.getpid()
    while True:
        child = os.fork()
        if child == 0:
            _worker_setup(server, limit)
            _serve_forked(results, sys.stdin)
            os._exit(0)
        stopped = None
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                break
            if os.getppid() != worker:  # the Dask worker is gone: so are its runs
                os.kill(child, signal.SIGKILL)
                os._exit(1)
            if limit is not None and stopped is None and peak_resident_bytes(child) > limit:
                stopped = memory_mib
                os.kill(child, signal.SIGKILL)
            time.sleep(MEMORY_POLL_SECONDS)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:  # its input ended
            return
        try:
            results.write(json.dumps({"ended": code, "memory_mib": stopped}) + "\n")
            results.flush()
        except OSError:  # the worker that reads it is gone
            os._exit(1)


def _serve_forked(results, tasks) -> None:
    for line in iter(tasks.readline, ""):
        result = execute(json.loads(line))
        _held_if_past_memory_limit()
        try:
            text = json.dumps(result)
        except (TypeError, ValueError) as error:  # the run's own doing, not its process's end
            text = json.dumps({"key": result["key"], "verdict": "raised",
                               "exception": type(error).__name__,
                               "evidence": f"the run's result is not JSON: {error}",
                               "_seconds": result.get("_seconds", 0.0)})
        try:
            results.write(text + "\n")
            results.flush()
        except OSError:  # the worker that reads it is gone: nobody to tell
            os._exit(0)
