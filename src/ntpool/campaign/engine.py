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
``timed out``.
"""

from __future__ import annotations

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

    def __enter__(self):
        if self.seconds:
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self):
        if not self._done.wait(self.seconds):
            self.fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id),
                                                       ctypes.py_object(RunTimedOut))

    def __exit__(self, *exc):
        self._done.set()
        if self.fired and exc[0] is None:
            # Fired after the run returned but before we got here: clear the pending one.
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
    return [execute(task) for task in tasks]


def _worker_setup(parent: int) -> None:
    """A local worker's initializer.

    Ctrl-C reaches every process of the terminal's process group: the campaign's process
    handles it (it ends its workers), so a worker ignores it rather than print a traceback.
    And a worker ends when the campaign's process is gone: one killed outright (SIGKILL, a
    crash) cannot stop its workers, which would otherwise wait forever for work on a queue
    nobody writes to any more, holding the campaign's terminal and pipes open.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM ends a worker (the campaign's process ends its workers so): not the handler
    # the campaign's process may have, inherited through fork.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="ntpool-follow-parent", daemon=True).start()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _new_pool(jobs: int) -> ProcessPoolExecutor:
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
        pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_setup,
                                   initargs=(os.getpid(),))
        pool.submit(os.getpid)  # starts the workers and the manager thread now
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pool


WORKER_DEATHS = 2  # a run is judged to kill its worker when it does so this often, alone


def _alone(tasks: list[dict]):
    """Make each run on a worker of its own: a run whose worker dies WORKER_DEATHS times is
    recorded as ``worker died`` (a crash, an exit or the OOM killer: the run's own doing)."""
    pool = None
    try:
        for task in tasks:
            deaths = []
            while len(deaths) < WORKER_DEATHS:
                if pool is None:
                    pool = _new_pool(1)
                future = pool.submit(execute_batch, [task])
                processes = list((getattr(pool, "_processes", None) or {}).values())
                try:
                    yield from future.result()
                    break
                except BrokenProcessPool:
                    _stop_workers(pool)
                    pool = None
                    deaths.append(_exit_code(processes))
            else:
                yield _worker_died(task, _ending(deaths[-1]), WORKER_DEATHS)
    except BaseException:
        if pool is not None:
            _stop_workers(pool)
        raise
    if pool is not None:
        pool.shutdown(wait=True)


def _worker_died(task: dict, ending: str, times: int) -> dict:
    """The record of a run that ended its worker process each time it was made (one wording
    for every engine: nothing in it depends on which worker or when)."""
    return {"key": task["key"], "verdict": "worker died", "_seconds": 0.0,
            "evidence": f"the run's worker process {ending} before the run returned, each of "
                        f"{times} times it was made"}


def _exit_code(processes) -> int | None:
    """The dead worker's exit code. The pool's own thread reaps it too: the code can be
    missing for a moment (its waitpid won, its record is not yet made), so look again."""
    deadline = time.monotonic() + 5
    while True:
        for process in processes:
            process.join(timeout=0.05)
            if process.exitcode is not None:
                return process.exitcode
        if time.monotonic() > deadline:
            return None


def _ending(exitcode) -> str:
    if exitcode is None:
        return "ended"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


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
        if self.dask is not None:
            yield from self._dask(tasks)
        elif (self.jobs or default_jobs()) <= 1 or len(tasks) == 1:
            for task in tasks:
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
        jobs = min(self.jobs or default_jobs(), len(tasks))
        size = max(1, min(self.batch, len(tasks) // (jobs * 4) or 1))
        waiting = deque(tasks[i:i + size] for i in range(0, len(tasks), size))
        window = jobs * 2  # batches in flight: enough to keep every worker busy
        pool = _new_pool(jobs)
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
                    yield from _alone([task for batch in failed for task in batch])
                    pool = _new_pool(jobs)
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
        ended. A lost worker (killed, out of memory) is the scheduler's to answer: the batches
        it held go to other workers."""
        try:
            from distributed import Client, as_completed
        except ImportError:
            # A missing extra is the user's to install: one line (ValueError), not an error of ntpool.
            raise MissingExtra("--dask needs dask.distributed: pip install 'ntpool[dask]'") from None
        client = self.dask if isinstance(self.dask, Client) else Client(self.dask)
        try:
            # Batches, larger than the local pool's: a Dask task costs milliseconds of
            # scheduling and messaging, more than a short run. Four batches per worker keep
            # the load balanced; a lost worker's batch is retried elsewhere.
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            size = max(1, min(self.batch * 8, len(tasks) // (workers * 4) or 1))
            futures = [client.submit(execute_apart, batch, pure=False, retries=2,
                                     key=f"ntpool-runs-{batch[0]['key']}-{len(batch)}")
                       for batch in (tasks[i:i + size] for i in range(0, len(tasks), size))]
            for future in as_completed(futures):
                try:
                    results = future.result()
                except Exception as error:  # noqa: BLE001 - the cluster's, never a run's (see ClusterError)
                    where = f" at {self.dask}" if isinstance(self.dask, str) else ""
                    raise ClusterError(
                        f"the Dask cluster{where} gave no result for a batch of runs "
                        f"({_first_line(f'{type(error).__name__}: {error}')}); its scheduler and "
                        f"every worker need ntpool installed, the version this campaign runs") from error
                yield from results
        finally:
            if client is not self.dask:
                client.close()


# A Dask worker's runs are made in a process of its own (a run server, one per worker thread):
# a run that ends its process (os._exit, a crash in native code, the OOM killer) must not end
# the Dask worker, whose death the scheduler answers by making the whole batch again on
# another worker, up to distributed.scheduler.allowed-failures times, then stopping the
# campaign with KilledWorker; and whose nanny, in a cluster that deploys workers itself (a
# LocalCluster), is closed for good when it is found restarting often.
_SERVERS = threading.local()

_SERVE = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
          "from ntpool.campaign.engine import serve_runs; serve_runs()")


def execute_apart(tasks: list[dict]) -> list[dict]:
    """``execute_batch`` made by this thread's run server: one task sent, its result read,
    then the next. A run whose process dies is made again in a new one; one that ends it
    WORKER_DEATHS times is recorded as ``worker died``, as ``_alone`` records it."""
    results = []
    for task in tasks:
        deaths = []
        while len(deaths) < WORKER_DEATHS:
            answer = _ask_server(task)
            if "key" in answer:
                results.append(answer)
                break
            deaths.append(answer["ended"])
        else:
            results.append(_worker_died(task, _ending(deaths[-1]), WORKER_DEATHS))
    return results


def _ask_server(task: dict) -> dict:
    """The run's result, or ``{"ended": exit code}`` when the process making it died."""
    import subprocess
    import sys

    server = getattr(_SERVERS, "process", None)
    if server is None or server.poll() is not None:
        server = subprocess.Popen([sys.executable, "-c", _SERVE, json.dumps(sys.path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        _SERVERS.process = server
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
    for stream in (server.stdin, server.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        return {"ended": server.wait(timeout=5)}
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return {"ended": None}


def serve_runs() -> None:
    """A run server: a task per line in, its result per line out, until its input ends.

    The server imports ntpool once, then forks the process that makes the runs; when a run
    ends that process, the server says how (``{"ended": code}``) and forks another, in
    milliseconds, so that a run ending its process costs no interpreter start. It ends when
    its Dask worker is gone. The server starts no thread (it forks); the forked process
    follows it as a local worker follows the campaign (``_worker_setup``)."""
    import sys

    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what a run prints goes to the worker's error stream, never into the results
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(os, "fork"):  # pragma: no cover - not a POSIX system: the runs are made here
        _serve_forked(results, sys.stdin)
        return
    import ntpool  # noqa: F401 - imported once here rather than in each forked process

    worker, server = os.getppid(), os.getpid()
    while True:
        child = os.fork()
        if child == 0:
            _worker_setup(server)
            _serve_forked(results, sys.stdin)
            os._exit(0)
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                break
            if os.getppid() != worker:  # the Dask worker is gone: so are its runs
                os.kill(child, signal.SIGKILL)
                os._exit(1)
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:  # its input ended
            return
        results.write(json.dumps({"ended": code}) + "\n")
        results.flush()


def _serve_forked(results, tasks) -> None:
    for line in iter(tasks.readline, ""):
        result = execute(json.loads(line))
        try:
            text = json.dumps(result)
        except (TypeError, ValueError) as error:  # the run's own doing, not its process's end
            text = json.dumps({"key": result["key"], "verdict": "raised",
                               "exception": type(error).__name__,
                               "evidence": f"the run's result is not JSON: {error}",
                               "_seconds": result.get("_seconds", 0.0)})
        results.write(text + "\n")
        results.flush()
