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
        [--windows 7|10|11]

prints the runs, how each ended, and the count of internal errors (0, or the seeds that
reproduce them); its exit status is 1 when there was any.
"""

import argparse
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from ..constants import PAGE_SIZE
from ..errors import BugCheck, NtStatusError
from ..windows import CHOICES, windows_version

MiB = 1 << 20
TAGS = ("Fred", "Barn", "Wilm", "Bett")
PATTERNS = ("zeros", "ones", "random", "letters")
OPERATIONS = (
    ("allocate", 30), ("free", 22), ("overrun", 6), ("underrun", 3), ("use_after_free", 8),
    ("double_free", 1), ("stale_free", 1), ("wild_write", 6), ("read", 4), ("flush", 1),
)


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

    def __init__(self, rng: random.Random, lookasides: bool, windows: str = "7"):
        import ntpool  # the whole package (dump layer included), as a user has it

        self.rng = rng
        self.k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB,
                               windows=windows)
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
        self.live: list[tuple[int, int, int, str]] = []  # (address, size, pool type, tag)
        self.freed: list[tuple[int, int, int, str]] = []

    # --- the operations (each one step of the driver) ----------------------------------------

    def allocate(self) -> None:
        rng = self.rng
        pool_type = rng.choice(self.pool_types)
        if self.hot_sizes and rng.random() < 0.5:
            size = rng.choice(self.hot_sizes)
        else:
            size = rng.choice((rng.randint(1, 496), rng.randint(497, 0xFE0),
                               rng.randint(0xFE1, 3 * PAGE_SIZE)))
        tag = rng.choice(TAGS)
        p = self.k.ExAllocatePoolWithTag(pool_type, size, tag)
        if p:
            self.live.append((p, size, pool_type, tag))

    def free(self) -> None:
        if self.live:
            entry = self.live.pop(self.rng.randrange(len(self.live)))
            self.freed.append(entry)
            self.k.ExFreePoolWithTag(entry[0], entry[3])

    def _target(self, pool: list):
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
            windows: str = "7") -> tuple[str, str]:
    """One run: ("bugcheck 0x19", "") or ("survived", "") or ("internal", traceback)."""
    rng = random.Random(seed)
    driver = SloppyDriver(rng, lookasides=rng.random() < 0.75, windows=windows)
    names = [name for name, _ in OPERATIONS]
    weights = [weight for _, weight in OPERATIONS]
    try:
        for _ in range(steps):
            operation = rng.choices(names, weights)[0]
            try:
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


def run_many(seeds, steps: int, dump_every: int, windows: str = "7") -> tuple[Counter, list[str]]:
    outcomes: Counter = Counter()
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ntpool-fuzz-") as dump_dir:
        bugchecks = 0
        for seed in seeds:
            dump = bool(dump_every) and bugchecks % dump_every == 0
            outcome, text = run_one(seed, steps, dump, dump_dir, windows)
            outcomes[outcome] += 1
            if outcome.startswith("bugcheck"):
                bugchecks += 1
                if dump:
                    outcomes["dumps opened and analyzed"] += 1
            if text:
                errors.append(text)
    return outcomes, errors


def _batch(arguments) -> tuple[Counter, list[str]]:
    seeds, steps, dump_every, windows = arguments
    return run_many(seeds, steps, dump_every, windows)


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
    args = parser.parse_args(argv)
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    seeds = range(first, first + args.runs)
    started = time.monotonic()
    outcomes: Counter = Counter()
    errors: list[str] = []
    if args.jobs > 1:
        size = max(1, args.runs // (args.jobs * 8))
        batches = [(seeds[i:i + size], args.steps, args.dump_every, args.windows)
                   for i in range(0, args.runs, size)]
        with ProcessPoolExecutor(args.jobs) as pool:
            for counted, found in pool.map(_batch, batches):
                outcomes.update(counted)
                errors.extend(found)
    else:
        outcomes, errors = run_many(seeds, args.steps, args.dump_every, args.windows)
    for text in errors[:5]:
        print(text, file=sys.stderr)
    elapsed = time.monotonic() - started
    print(f"{windows_version(args.windows)}: seeds {first}..{first + args.runs - 1}, "
          f"{args.steps} steps a run, {elapsed:.0f} s")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome}: {count}")
    print(f"internal errors: {len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
