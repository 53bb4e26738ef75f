"""Work shared among forked worker processes, its results read back in the order one process
would make them (``!poolfind`` on a big pool: see ``KdSession._poolfind_pieces``).

The work is a task that makes batches: ``task(take)`` yields, for each batch number ``take``
accepts, in order, its ``("text", str)`` pieces and then one ``("end", [ints])``; every
process enumerates the batches the same way. Of ``n`` processes, the parent makes batches 0,
``n``, ``2n``, ... itself, and worker ``i`` (1 to ``n - 1``) makes batches ``i``, ``i + n``,
... and writes them to a pipe of its own; the parent gives out batch 0, batch 1 read from
worker 1, and so on, so what it yields is exactly what ``task`` yields when it takes every
batch. An exception a worker's task raises is written at its place in that order
and raised there by the parent (the task raises only in a batch it takes: one it skips it
ends quietly); the pieces before it have come out, as one process would have printed them.

Workers are forked: they share the parent's open dump, its caches and its pages (copy on
write) and pay no interpreter start. Each ignores Ctrl-C (the parent decides), writes
without blocking while what it holds unsent stays under ``AHEAD_BYTES`` (so a worker whose
batch the parent is not reading yet keeps working), and ends (``os._exit``: no handler or
buffer of the parent's runs twice) when its work is done or its pipe's reader goes away. The
parent kills and reaps every worker however it stops reading: at the end, on an error, or
when its consumer closes it early (a pager quitting, Ctrl-C). A worker that dies without
finishing (killed from outside) costs nothing but time: the parent makes the rest itself.
"""

import os
import pickle
import select
import signal
import struct
import time
import traceback
from array import array
from collections import deque
from typing import Callable, Iterator

# A message: its kind and its payload's length, then the payload.
_HEADER = struct.Struct("<cQ")
_TEXT, _END, _ERROR, _DONE = b"T", b"E", b"X", b"D"
AHEAD_BYTES = 16 << 20  # unsent bytes a worker may hold before it waits for the parent
PIPE_BYTES = 1 << 20  # asked of the kernel for each pipe (Linux; else its default)
MAX_PROCESSES = 4  # sharing one scan, the parent included


def usable_cpus() -> int:
    """The processors this process may run on (its affinity where the system says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_processors(cpus: int) -> int:
    """Of ``cpus`` processors, how many other work leaves free now: the tasks the kernel has
    runnable (/proc/loadavg's fourth field, this process among them), the fewest of a few
    looks a millisecond apart. A worker on a processor another task is using shares it, and
    the scan then costs more than one process alone (measured: 0.60 s against 0.49 s beside
    one busy process on 2 cores); where the count cannot be read, all are taken as free."""
    seen = []
    try:
        for look in range(LOOKS):
            if look:
                time.sleep(0.001)
            with open("/proc/loadavg") as loadavg:
                seen.append(int(loadavg.read().split()[3].split("/")[0]))
    except (OSError, ValueError, IndexError):
        return cpus
    return max(0, min(cpus, cpus - (min(seen) - 1)))


LOOKS = 3


def can_fork() -> bool:
    return hasattr(os, "fork") and hasattr(os, "preadv") and hasattr(signal, "pthread_sigmask")


def in_order(task: Callable[[Callable[[int], bool]], Iterator[tuple]], processes: int) -> Iterator[tuple]:
    """What ``task(lambda batch: True)`` yields, made by ``processes`` processes: this one
    (batches 0, n, 2n, ...: it has the text at hand, nothing to send) and n - 1 forked ones."""
    workers: list[_Worker] = []
    own = None
    try:
        try:
            for index in range(1, processes):
                workers.append(_Worker.fork(task, index, processes, [w.fd for w in workers]))
        except OSError:  # no process to be had (a limit reached): all of it here
            _stop(workers)
            yield from task(_every)
            return
        own = task(lambda batch: batch % processes == 0)
        batch = 0
        while True:
            if not batch % processes:
                for item in own:
                    yield item
                    if item[0] == "end":
                        break
                else:
                    return  # no such batch: the task is done
                batch += 1
                continue
            worker = workers[batch % processes - 1]
            texts = 0  # of this batch, given out
            while True:
                kind, payload = worker.receive()
                if kind == _TEXT:
                    texts += 1
                    yield "text", payload.decode("utf-8", "surrogatepass")
                elif kind == _END:
                    yield "end", array("Q", payload).tolist()
                    break
                elif kind == _DONE:
                    return
                elif kind == _ERROR:
                    raise _exception(payload)
                else:  # the worker died without finishing: the rest made here
                    own.close()
                    _stop(workers)
                    yield from _resumed(task, batch, texts)
                    return
            batch += 1
    finally:
        if own is not None:
            own.close()
        _stop(workers)


def _every(batch: int) -> bool:
    return True


def _resumed(task, batch: int, texts: int) -> Iterator[tuple]:
    """The task's items from batch ``batch`` on, less that batch's first ``texts`` pieces."""
    for item in task(batch.__le__):
        if texts and item[0] == "text":
            texts -= 1
            continue
        yield item


def _stop(workers: list) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


def _exception(payload: bytes) -> BaseException:
    try:
        error = pickle.loads(payload)
    except Exception as failure:  # noqa: BLE001 - a worker's error that does not unpickle
        return RuntimeError(f"a worker process failed, and its error could not be read back: {failure}")
    return error if isinstance(error, BaseException) else RuntimeError(repr(error))


class _Worker:
    """The parent's end of one worker: its process and the pipe it writes to."""

    def __init__(self, pid: int, fd: int):
        self.pid, self.fd = pid, fd
        self.pipe = os.fdopen(fd, "rb", buffering=1 << 16)

    @classmethod
    def fork(cls, task, index: int, count: int, inherited: list) -> "_Worker":
        read_fd, write_fd = os.pipe()
        _widen(write_fd)
        # Ctrl-C held back across the fork: a KeyboardInterrupt in the new process before it
        # ignores Ctrl-C would run the parent's code on in it; the parent gets it just after.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # the worker: never returns
            _work(task, index, count, write_fd, [read_fd, *inherited], mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
        return cls(pid, read_fd)

    def receive(self) -> tuple[bytes | None, bytes]:
        """The next message; (None, b"") when the pipe ended before the worker said it was done."""
        header = self.pipe.read(_HEADER.size)
        if len(header) != _HEADER.size:
            return None, b""
        kind, length = _HEADER.unpack(header)
        payload = self.pipe.read(length) if length else b""
        if len(payload) != length:
            return None, b""
        return kind, payload

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pipe.close()
        while True:
            try:
                os.waitpid(self.pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
        self.pid = None


def _widen(fd: int) -> None:
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # the default size works, with more waiting


def _work(task, index: int, count: int, fd: int, not_ours: list, mask) -> None:
    """A worker's life: its batches written to ``fd``, then ``os._exit``."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C held back is dropped now
        for other in not_ours:  # the parent's ends: the pipe must end when the parent goes
            os.close(other)
        outbox = _Outbox(fd)
        try:
            for kind, value in task(lambda batch: batch % count == index):
                if kind == "text":
                    outbox.put(_TEXT, value.encode("utf-8", "surrogatepass"))
                else:
                    outbox.put(_END, array("Q", value).tobytes())
            outbox.put(_DONE, b"")
        except Exception as error:  # noqa: BLE001 - raised again by the parent, at its place
            outbox.put(_ERROR, _pickled(error))
        outbox.flush(0)
        code = 0
    except BaseException:  # noqa: BLE001 - the reader went away, or worse: end quietly
        pass
    finally:
        os._exit(code)


def _pickled(error: Exception) -> bytes:
    if hasattr(error, "add_note"):
        error.add_note("(in a worker process)\n" + "".join(traceback.format_tb(error.__traceback__)).rstrip())
    try:
        return pickle.dumps(error)
    except Exception:  # noqa: BLE001 - an error that does not pickle: its type and text
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))


class _Outbox:
    """A worker's pipe, written without blocking while less than AHEAD_BYTES wait."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.pending: deque = deque()
        self.held = 0

    def put(self, kind: bytes, payload: bytes) -> None:
        self.pending.append(_HEADER.pack(kind, len(payload)))
        self.pending.append(memoryview(payload))
        self.held += _HEADER.size + len(payload)
        self.flush(AHEAD_BYTES)

    def flush(self, most: int) -> None:
        """Write what the pipe takes; wait for it while more than ``most`` bytes are unsent."""
        pending = self.pending
        while pending:
            try:
                written = os.write(self.fd, pending[0])
            except BlockingIOError:
                if self.held <= most:
                    return
                select.select([], [self.fd], [])
                continue
            self.held -= written
            if written == len(pending[0]):
                pending.popleft()
            else:
                pending[0] = memoryview(pending[0])[written:]
