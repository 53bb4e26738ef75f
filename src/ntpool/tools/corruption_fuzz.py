"""A driver that corrupts the pool on purpose, to prove the model never breaks.

Each run boots a small machine and plays a seeded "sloppy driver": ordinary allocations and
frees on both pools (small and big chunks, lookasides on or off) and, between them, the
bugs drivers have: overruns, underruns into the header before the body, writes to freed
chunks, double frees, frees of stale pointers, wild writes into headers and freed memory.
Windows answers such a driver with a bug check, or carries on where it checks nothing; so
the only outcomes allowed are BugCheck, NtStatusError and NULL returns. Anything else (a
KeyError, a struct.error...) is an internal error of the model.

After a bug check the run checks what a user does next: the machine is halted but can be
inspected, and (every ``dump_every``-th bug check) its crash dump opens with ntpool's
reader and ``!analyze -v`` runs on it.

    python -m ntpool.tools.corruption_fuzz --runs 100000 [--seed N] [--steps 400] [--jobs J]
        [--windows 7|10|11] [--pool-mib N] [--memory-mib N] [--targets near,structures,anywhere]
        [--processors N] [--dispatch P] [--quota P]

prints the runs, how each ended, and the count of internal errors (0, or the seeds that
reproduce them); its exit status is 1 when there was any.

The default driver is the tame one: 1 MiB pools (so on Windows 7 frees are not delayed), one
processor, PASSIVE_LEVEL, stray writes near its own chunks. The options make it wilder
(``Wildness``): larger pools and physical memory (Windows 7 delays frees from 508 MiB of
physical memory, as WRK's InitializePool decides), writes into the allocator's own
structures (Windows 7's POOL_DESCRIPTORs: ListHeads, PendingFrees; the segment heap's
segment headers and page range descriptors, LFH and VS subsegment headers) and anywhere in
a pool's address range, several processors it moves between, and steps at DISPATCH_LEVEL
(where it touches only nonpaged memory, as a driver there must), and allocations charged to
a process's pool quota (ExAllocatePoolWithQuotaTag in a user process's context: the header's
quota bit and ProcessBilled, which its stray writes may hit too).
"""

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from ..constants import DISPATCH_LEVEL, PAGE_SIZE, PASSIVE_LEVEL, POOL_QUOTA_FAIL_INSTEAD_OF_RAISE
from ..errors import BugCheck, NtStatusError
from ..windows import CHOICES, windows_version

MiB = 1 << 20
TAGS = ("Fred", "Barn", "Wilm", "Bett")
PATTERNS = ("zeros", "ones", "random", "letters")
OPERATIONS = (
    ("allocate", 30), ("free", 22), ("overrun", 6), ("underrun", 3), ("use_after_free", 8),
    ("double_free", 1), ("stale_free", 1), ("wild_write", 6), ("read", 4), ("flush", 1),
)


TARGETS = ("near", "structures", "anywhere")
# The wild driver's extra operations, each on only when its option asks for it.
WILD_OPERATIONS = (("structure_write", 4, "structures"), ("anywhere_write", 4, "anywhere"))


@dataclass(frozen=True)
class Wildness:
    """How wild the driver is (the defaults: the tame driver of the CI tests)."""

    pool_mib: int = 1  # each pool's size
    memory_mib: int | None = None  # physical memory (None: what the pools need)
    targets: tuple = ("near",)  # where its stray writes go: TARGETS
    processors: int = 1  # it moves between them (their own lookasides and IRQL)
    dispatch: float = 0.0  # the share of its steps made at DISPATCH_LEVEL
    quota: float = 0.0  # the share of its allocations charged to a user process's quota

    def __post_init__(self):
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"targets must be some of {', '.join(TARGETS)}, not "
                             f"{','.join(self.targets)}")
        if not 0.0 <= self.dispatch <= 1.0:
            raise ValueError(f"dispatch must be a share from 0 to 1, not {self.dispatch}")
        if not 0.0 <= self.quota <= 1.0:
            raise ValueError(f"quota must be a share from 0 to 1, not {self.quota}")
        if self.pool_mib < 1 or (self.memory_mib is not None and self.memory_mib < 1):
            raise ValueError("pool and memory sizes are whole MiB, at least 1")

    def operations(self) -> list[tuple[str, int]]:
        chosen = [(name, weight) for name, weight in OPERATIONS
                  if name not in ("overrun", "underrun", "use_after_free", "wild_write")
                  or "near" in self.targets]
        chosen += [(name, weight) for name, weight, target in WILD_OPERATIONS
                   if target in self.targets]
        if self.processors > 1:
            chosen.append(("switch_processor", 4))
        return chosen


TAME = Wildness()


def _pattern(rng: random.Random, length: int) -> bytes:
    kind = rng.choice(PATTERNS)
    if kind == "zeros":
        return bytes(length)
    if kind == "ones":
        return b"\xff" * length
    if kind == "letters":
        return b"A" * length
    return rng.randbytes(length)


class SloppyDriver:
    """One run's state: the machine, the chunks it holds, the chunks it freed."""

    def __init__(self, rng: random.Random, lookasides: bool, windows: str = "7",
                 wildness: Wildness = TAME):
        import ntpool  # the whole package (dump layer included), as a user has it

        self.rng = rng
        self.wildness = wildness
        memory = None if wildness.memory_mib is None else wildness.memory_mib * MiB
        self.k = ntpool.Kernel(nonpaged_pool_bytes=wildness.pool_mib * MiB,
                               paged_pool_bytes=wildness.pool_mib * MiB,
                               physical_memory_bytes=memory, processors=wildness.processors,
                               windows=windows)
        self.heaps = [pool for pool in (self.k.nonpaged_pool, self.k.nonpaged_pool_nx,
                                        self.k.paged_pool) if pool is not None]
        # The pool types a request picks from (the segment heap's NonPagedPoolNx is a heap
        # of its own).
        self.pool_types = (0, 1, 0x200) if self.k.windows.segment_heap else (0, 1)
        # Sizes half the segment heap's requests take, each with its LFH bucket active from
        # the start (the LFH serves a size from its 2040th request: warmed by pairs), so the
        # LFH and its fast paths meet the damage too. Windows 7: none (its lookasides serve
        # every small size from the first request).
        self.hot_sizes: tuple = ()
        if self.k.windows.segment_heap:
            self.hot_sizes = (0x50, 0x120)
            warm_lfh(self.k, self.pool_types, self.hot_sizes)
        if not lookasides:
            disable_lookasides(self.k)
        if wildness.quota:
            # The driver runs in a user process's context, whose quota its charged requests
            # take (no limit: a request fails only when the pool does).
            self.k.set_current_process(self.k.create_process("sloppy.exe"))
        self.live: list[tuple[int, int, int, str]] = []  # (address, size, pool type, tag)
        self.freed: list[tuple[int, int, int, str]] = []

    # --- the operations (each one step of the driver) ----------------------------------------

    def at_dispatch(self) -> bool:
        return self.k.irql_by_processor[self.k.current_processor] >= DISPATCH_LEVEL

    def set_irql(self) -> None:
        """Before a step: DISPATCH_LEVEL for the wildness's share of steps, else PASSIVE."""
        k = self.k
        wanted = DISPATCH_LEVEL if self.rng.random() < self.wildness.dispatch else PASSIVE_LEVEL
        current = k.irql_by_processor[k.current_processor]
        if wanted > current:
            k.KeRaiseIrql(wanted)
        elif wanted < current:
            k.KeLowerIrql(wanted)

    def _usable(self, chunks: list) -> list:
        """The chunks a step may touch: at DISPATCH_LEVEL the nonpaged ones only."""
        if not self.at_dispatch():
            return chunks
        return [chunk for chunk in chunks if not chunk[2] & 1]

    def allocate(self) -> None:
        rng = self.rng
        pool_type = rng.choice([t for t in self.pool_types if not t & 1]
                               if self.at_dispatch() else self.pool_types)
        if self.hot_sizes and rng.random() < 0.5:
            size = rng.choice(self.hot_sizes)
        else:
            size = rng.choice((rng.randint(1, 496), rng.randint(497, 0xFE0),
                               rng.randint(0xFE1, 3 * PAGE_SIZE)))
        tag = rng.choice(TAGS)
        if self.wildness.quota and rng.random() < self.wildness.quota:
            p = self.k.ExAllocatePoolWithQuotaTag(pool_type | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE, size, tag)
        else:
            p = self.k.ExAllocatePoolWithTag(pool_type, size, tag)
        if p:
            self.live.append((p, size, pool_type, tag))

    def free(self) -> None:
        usable = self._usable(self.live)
        if usable:
            entry = usable[self.rng.randrange(len(usable))]
            self.live.remove(entry)
            self.freed.append(entry)
            self.k.ExFreePoolWithTag(entry[0], entry[3])

    def _target(self, pool: list):
        pool = self._usable(pool)
        return pool[self.rng.randrange(len(pool))] if pool else None

    def _write_near(self, address: int, data: bytes) -> None:
        """A stray write, mostly kept on mapped pool pages (a write to no page is the
        driver's own 0x50 and would end most runs before the pool is ever corrupted)."""
        if self.rng.random() < 0.9:
            page = address & ~(PAGE_SIZE - 1)
            if not (self.k.is_resident(page) or self.k.pager.is_paged_out(page)):
                return
            end = page + PAGE_SIZE
            data = data[:max(0, end - address)]
            if not data:
                return
        self.k.write(address, data)

    def overrun(self) -> None:
        target = self._target(self.live)
        if target:
            p, size, _, _ = target
            length = self.rng.randint(1, 16)
            self._write_near(p + size + self.rng.randint(-4, 16), _pattern(self.rng, length))

    def underrun(self) -> None:
        target = self._target(self.live)
        if target:
            length = self.rng.randint(1, 16)
            self._write_near(target[0] - self.rng.randint(1, 16), _pattern(self.rng, length))

    def use_after_free(self) -> None:
        target = self._target(self.freed)
        if target:
            p, size, _, _ = target
            offset = self.rng.randint(0, max(0, min(size, 64) - 1))
            self._write_near(p + offset, _pattern(self.rng, self.rng.randint(1, 16)))

    def double_free(self) -> None:
        target = self._target(self.freed)
        if target:
            self.k.ExFreePoolWithTag(target[0], target[3])

    def stale_free(self) -> None:
        target = self._target(self.freed)
        if target:
            self.k.ExFreePool(target[0] + self.rng.choice((0, 0, 16, -16, 8)))

    def wild_write(self) -> None:
        """Bytes anywhere near a chunk: on its header, its neighbour's, in freed memory."""
        target = self._target(self.live + self.freed)
        if target:
            address = target[0] + self.rng.randint(-64, 64)
            self._write_near(address, _pattern(self.rng, self.rng.randint(1, 16)))

    def read(self) -> None:
        target = self._target(self.live)
        if target:
            self.k.read(target[0], min(target[1], 64))

    def flush(self) -> None:
        for pool in self.k.pool.pools:
            pool.flush_lookasides()

    # --- the wild driver's operations (Wildness) ---------------------------------------------

    def _structures(self) -> list[tuple[int, int]]:
        """(address, length) of the allocator's own structures in memory now."""
        found = []
        for heap in self.heaps:
            if hasattr(heap, "descriptor_va"):  # Windows 7: the POOL_DESCRIPTOR
                from ..pool.layout import POOL_DESCRIPTOR

                found.append((heap.descriptor_va, POOL_DESCRIPTOR.size))
                continue
            from ..pool.segment_heap.layout import SEGMENT_HEADER_PAGES

            for segment, state in enumerate(heap.segment_state):
                if state == 1:  # a segment: its header and page range descriptors
                    found.append((heap._segment_va(segment), SEGMENT_HEADER_PAGES * PAGE_SIZE))
            seen = set()
            for sub in heap.subsegment_by_page:
                if sub is None or id(sub) in seen:
                    continue
                seen.add(id(sub))
                first = sub.va + sub.offsets[0] if sub.kind == 1 else sub.first
                found.append((sub.va, max(8, first - sub.va)))  # its header
        return found

    def structure_write(self) -> None:
        """Bytes over the pool's own bookkeeping: a list head, a descriptor, a bitmap."""
        structures = self._structures()
        if structures:
            address, length = structures[self.rng.randrange(len(structures))]
            offset = self.rng.randrange(length) & ~self.rng.choice((0, 7))  # often a field start
            self._write_near(address + offset, _pattern(self.rng, self.rng.randint(1, 16)))

    def anywhere_write(self) -> None:
        """Bytes at any address in a pool's range (on a page that is there, mostly)."""
        heap = self.heaps[self.rng.randrange(len(self.heaps))]
        address = self.rng.randrange(heap.base, heap.limit)
        self._write_near(address, _pattern(self.rng, self.rng.randint(1, 16)))

    def switch_processor(self) -> None:
        """Move to another processor; it runs at its own IRQL (set before the next step)."""
        self.k.set_current_processor(self.rng.randrange(self.wildness.processors))


def warm_lfh(k, pool_types, sizes) -> None:
    """Make each size's LFH bucket active in each pool type's heap (allocation and free pairs
    up to the LFH's activation)."""
    from ..pool.segment_heap.layout import LFH_ACTIVATE_REQUESTS

    for pool_type in pool_types:
        for size in sizes:
            for _ in range(LFH_ACTIVATE_REQUESTS + 1):
                k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(pool_type, size, "Warm"), "Warm")


def disable_lookasides(k) -> None:
    """Every lookaside list of both pools at depth 0: frees go to the lists at once. (The
    segment heap's dynamic lookaside starts disabled, until its Balance Set Manager passes
    turn it on: left as Windows runs it.)"""
    if k.windows.segment_heap:
        return
    for pool in (k.nonpaged_pool, k.paged_pool):
        for lookaside in pool.lookasides:
            lookaside.depth[:] = [0] * len(lookaside.depth)
            lookaside.maximum_depth = 0


def check_after_bugcheck(k, dump_dir: str | None) -> None:
    """What a user does after a bug check must work: inspect, dump, analyze."""
    from ..debugger.session import KdSession
    from ..dump.reader import DumpReader

    assert k.halted and k.bugcheck is not None
    k.pool_tags()
    k.read(k.nonpaged_pool.base, 0)
    if dump_dir is None:
        return
    path = os.path.join(dump_dir, "MEMORY.DMP")
    k.write_dump(path, kind="kernel", symbols=False)
    with DumpReader(path) as reader:
        text = KdSession(reader).execute("!analyze -v")
    assert "BUGCHECK" in text.upper() or "Bugcheck" in text, text[:200]


def run_one(seed: int, steps: int = 400, dump: bool = False, dump_dir: str | None = None,
            windows: str = "7", wildness: Wildness = TAME) -> tuple[str, str]:
    """One run: ("bugcheck 0x19", "") or ("survived", "") or ("internal", traceback)."""
    rng = random.Random(seed)
    operations = wildness.operations()
    names = [name for name, _ in operations]
    weights = [weight for _, weight in operations]
    try:
        driver = SloppyDriver(rng, lookasides=rng.random() < 0.75, windows=windows,
                              wildness=wildness)
        for _ in range(steps):
            operation = rng.choices(names, weights)[0]
            try:
                if wildness.dispatch:
                    driver.set_irql()
                getattr(driver, operation)()
            except NtStatusError:
                pass
    except BugCheck as error:
        try:
            check_after_bugcheck(driver.k, dump_dir if dump else None)
        except Exception:  # noqa: BLE001 - every failure after the bug check is ours
            return "internal", f"seed {seed}: after bug check {error.code:#x}:\n{traceback.format_exc()}"
        return f"bugcheck {error.code:#x}", ""
    except Exception:  # noqa: BLE001 - anything but BugCheck/NtStatusError is an internal error
        return "internal", f"seed {seed}:\n{traceback.format_exc()}"
    return "survived", ""


def run_many(seeds, steps: int, dump_every: int, windows: str = "7",
             wildness: Wildness = TAME, outcomes: Counter | None = None,
             errors: list[str] | None = None) -> tuple[Counter, list[str]]:
    """The runs of ``seeds``, counted into ``outcomes`` and ``errors`` as each ends (given
    them, a caller keeps the counts of the runs made when Ctrl-C stops the rest)."""
    outcomes = Counter() if outcomes is None else outcomes
    errors = [] if errors is None else errors
    with tempfile.TemporaryDirectory(prefix="ntpool-fuzz-") as dump_dir:
        bugchecks = 0
        for seed in seeds:
            dump = bool(dump_every) and bugchecks % dump_every == 0
            outcome, text = run_one(seed, steps, dump, dump_dir, windows, wildness)
            outcomes[outcome] += 1
            if outcome.startswith("bugcheck"):
                bugchecks += 1
                if dump:
                    outcomes["dumps opened and analyzed"] += 1
            if text:
                errors.append(text)
    return outcomes, errors


def _batch(arguments) -> tuple[Counter, list[str]]:
    seeds, steps, dump_every, windows, wildness = arguments
    return run_many(seeds, steps, dump_every, windows, wildness)


def _worker_signals() -> None:
    """A worker leaves Ctrl-C to the parent (which stops the campaign), and ends on the
    parent's SIGTERM through SystemExit, so that its temporary dump folder is removed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _run_parallel(batches, jobs: int, outcomes: Counter, errors: list[str]) -> None:
    pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_signals)
    try:
        for counted, found in pool.imap(_batch, batches):
            outcomes.update(counted)
            errors.extend(found)
    except BaseException:  # Ctrl-C: the batches in flight are dropped, the workers ended now
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntpool.tools.corruption_fuzz",
                                     description="Run the corrupting driver; count internal errors.")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--dump-every", type=int, default=50,
                        help="write a dump and run !analyze -v after every Nth bug check (0: never)")
    parser.add_argument("--windows", choices=CHOICES, default="7",
                        help="the Windows the machines run (10 and 11: the segment heap)")
    wild = parser.add_argument_group("a wilder driver")
    wild.add_argument("--pool-mib", type=int, default=1, metavar="N",
                      help="each pool's size in MiB (default 1)")
    wild.add_argument("--memory-mib", type=int, default=None, metavar="N",
                      help="physical memory in MiB (default: what the pools need); Windows 7 "
                           "delays frees from 508 MiB")
    wild.add_argument("--targets", default="near", metavar="LIST",
                      help="where stray writes go, comma-separated: near (around the driver's "
                           "chunks, the default), structures (the pool descriptors / the "
                           "segment heap's segment and subsegment headers), anywhere (any "
                           "address in a pool)")
    wild.add_argument("--processors", type=int, default=1, metavar="N",
                      help="processors the driver moves between (default 1)")
    wild.add_argument("--dispatch", type=float, default=0.0, metavar="P",
                      help="share of steps made at DISPATCH_LEVEL, on nonpaged memory only "
                           "(default 0)")
    wild.add_argument("--quota", type=float, default=0.0, metavar="P",
                      help="share of allocations charged to the quota of the user process the "
                           "driver runs in (default 0)")
    args = parser.parse_args(argv)
    try:
        wildness = Wildness(args.pool_mib, args.memory_mib,
                            tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                            args.processors, args.dispatch, args.quota)
        if not 1 <= wildness.processors <= 64:
            raise ValueError("processors must be from 1 to 64")
    except ValueError as error:
        parser.error(str(error))
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    seeds = range(first, first + args.runs)
    started = time.monotonic()
    outcomes: Counter = Counter()
    errors: list[str] = []
    interrupted = False
    try:
        if args.jobs > 1:
            size = max(1, args.runs // (args.jobs * 8))
            batches = [(seeds[i:i + size], args.steps, args.dump_every, args.windows, wildness)
                       for i in range(0, args.runs, size)]
            _run_parallel(batches, args.jobs, outcomes, errors)
        else:
            run_many(seeds, args.steps, args.dump_every, args.windows, wildness, outcomes, errors)
    except KeyboardInterrupt:  # Ctrl-C: the counts of the runs made so far, then status 130
        interrupted = True
    for text in errors[:5]:
        print(text, file=sys.stderr)
    elapsed = time.monotonic() - started
    made = sum(count for outcome, count in outcomes.items() if outcome != "dumps opened and analyzed")
    print(f"{windows_version(args.windows)}: seeds {first}..{first + args.runs - 1}, "
          f"{args.steps} steps a run, {elapsed:.0f} s"
          + (f"; interrupted (Ctrl-C) after {made} of {args.runs} runs" if interrupted else ""))
    if wildness != TAME:
        print(f"  driver: {wildness}")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome}: {count}")
    print(f"internal errors: {len(errors)}")
    if interrupted:
        return 130
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
