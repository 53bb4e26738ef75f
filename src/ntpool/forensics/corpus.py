"""A corpus of pool dumps with their truth: ``ntpool corpus --out DIR --count N --seed S``.

Each dump comes from its own machine, driven by a seeded workload made to trouble a pool
scanner: both pools, dozens of tags (some protected, some short and space-padded), sizes from
one block to many pages (big allocations), frees that leave chunks on lookaside lists, on
the delayed-free list (half the machines batch their frees) and on ListHeads with their old
contents (and old headers inside coalesced free chunks), paged pool
pages paged out, headers damaged on a few pages (after the manifest was made, so the manifest
keeps the truth), and decoys: tag-shaped headers planted inside allocated buffers, at header
alignment and off it. Bitmap ("kernel") and full dumps alternate; pool sizes are drawn
log-uniformly from a range (1 MiB to 1 GiB and more). Everything is a function of the seed.

Files: ``dump-NNN.dmp`` and ``dump-NNN.truth.json`` per dump, the ``symbols`` folder
volatility3 needs, and ``corpus.json`` listing them with what was planted.
"""

import json
import math
import os
import random
from dataclasses import dataclass, replace

from ..constants import PAGE_SIZE, PoolType
from ..pool.layout import POOL_HEADER, POOL_IN_USE
from ..tags import PROTECTED_POOL, from_display
from ..dump import truth as truth_module

MiB = 1 << 20
CORPUS_EPOCH = 133_801_632_000_000_000  # 2025-01-01 00:00 UTC as a FILETIME
YEAR_SECONDS = 365 * 86_400
# Tags as tools show them. Object-manager tags (Proc, Thre, File, ...) are left out: windows.
# poolscanner would try to build objects from them, which ntpool's dumps do not model.
TAGS = ("Ntfs", "Irp ", "MmSt", "Cc  ", "NDam", "FSrt", "CM31", "IoNm", "AlIn", "Wmi ", "Mdl ",
        "SeAt", "FMfc", "FMsl", "Vi20", "NtFs", "Ipng", "TcpE", "UdpA", "Afd ", "Nb  ", "Ntf0",
        "MiSc", "Even", "Sema", "ObNm", "ObSq", "Gh05", "Usbd", "HdCl", "smNp", "Ppcr", "PfFK",
        "Wfpn", "NEIO", "Dxgk", "KSpp", "Lfs ", "CcBc", "FOCX")


class CorpusError(ValueError):
    """A corpus dump whose run did not make it (it timed out, passed the memory limit, ended
    its process): the campaign's verdict on that run, never an error of ntpool's."""


@dataclass
class CorpusOptions:
    count: int = 4
    seed: int = 1
    min_pool_mib: float = 1
    max_pool_mib: float = 16
    fill: float = 0.5  # of each pool, in live allocations, at the end
    kinds: tuple = ("kernel", "full")
    windows: str = "7"  # the machines' Windows, hence their pool design (Kernel(windows=...))


def parse_mib_range(text: str) -> tuple[float, float]:
    """'1-1024' -> (1, 1024); '8' -> (8, 8)."""
    try:
        low, _, high = text.partition("-")
        low_value, high_value = float(low), float(high or low)
    except ValueError:
        raise ValueError(f"--pool-mib {text!r} is not MIB or MIN-MAX") from None
    if not 1 <= low_value <= high_value:
        raise ValueError(f"--pool-mib {text!r}: sizes must be at least 1 MiB, MIN <= MAX")
    return low_value, high_value


def _pick_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.80:
        return rng.randrange(1, 512)  # lookaside-sized
    if roll < 0.97:
        return rng.randrange(512, 0xFE0)
    return rng.randrange(0xFE1, 6 * PAGE_SIZE)  # big


def _workload(kernel, rng: random.Random, pool_bytes: int, fill: float) -> list:
    """Allocate and free until about ``fill`` of each pool is live; returns the live list."""
    tags = [from_display(t) for t in TAGS]
    protected = {tag for tag in tags if rng.random() < 0.15}
    live: list = []
    target = int(pool_bytes * fill)
    used = [0, 0]
    failures = 0
    while min(used) < target and failures < 200:
        if live and rng.random() < 0.35:
            address, tag, base, size = live.pop(rng.randrange(len(live)))
            kernel.ExFreePoolWithTag(address, tag)
            used[base] -= size
            continue
        base = rng.randrange(2)
        if used[base] >= target:
            base = 1 - base
        tag = rng.choice(tags)
        if tag in protected:
            tag |= PROTECTED_POOL
        size = _pick_size(rng)
        address = kernel.ExAllocatePoolWithTag(PoolType(base), size, tag)
        if not address:
            failures += 1
            continue
        if rng.random() < 0.3:  # contents; frees keep them (stale data, stale headers)
            kernel.write(address, rng.randbytes(min(size, 256)))
        live.append((address, tag, base, size))
        used[base] += size
    return live


def _plant_decoys(kernel, rng: random.Random, live: list, count: int) -> list:
    """Fake headers inside live buffers: (header va, tag value, aligned, buffer va)."""
    planted = []
    roomy = [entry for entry in live if entry[3] >= 64]
    for _ in range(min(count, len(roomy))):
        address, _tag, base, size = rng.choice(roomy)
        aligned = rng.random() < 0.6
        offset = 16 * rng.randrange(1, max(2, min(size, 4000) // 16 - 1)) if aligned else \
            rng.randrange(1, min(size, 4000) - 20)
        if not aligned and (address + offset) % 16 == 0:
            offset += 1 + rng.randrange(14)
        if offset + 16 > size:
            continue
        fake_tag = from_display(rng.choice(TAGS))
        header = POOL_HEADER.pack(rng.randrange(1, 16), base, rng.randrange(2, 32),
                                  base | POOL_IN_USE, fake_tag, 0)
        kernel.write(address + offset, header)
        planted.append((address + offset, fake_tag, aligned, address))
    return planted


def _page_out(kernel, rng: random.Random, live: list, count: int) -> None:
    paged = [entry[0] for entry in live if entry[2] == 1]
    for address in rng.sample(paged, min(count, len(paged))):
        if kernel.is_resident(address):
            kernel.page_out(address)


def _corrupt(kernel, rng: random.Random, truth, count: int) -> list:
    """Damage a header on ``count`` resident small pages, as overruns do; marks them."""
    pages: dict = {}
    for row in truth.chunks:
        if row[1] is not None and row[0] & (PAGE_SIZE - 1) and not row[11]:
            pages.setdefault(row[0] & ~(PAGE_SIZE - 1), []).append(row)
    done = []
    for page in rng.sample(sorted(pages), min(count, len(pages))):
        row = rng.choice(pages[page])
        how = rng.choice(("PreviousSize overwritten (a one-byte overrun)",
                          "header overwritten with 0x41 bytes (a long overrun)",
                          "BlockSize zeroed"))
        physical = row[1]
        if how.startswith("PreviousSize"):
            kernel.physical.write(physical, bytes([(row[7] + 1 + rng.randrange(200)) & 0xFF]))
        elif how.startswith("header"):
            kernel.physical.write(physical, b"\x41" * 16)
        else:
            kernel.physical.write(physical + POOL_HEADER.BlockSize, b"\0")
        truth_module.mark_corrupt(truth, page, row[2], f"{row[0]:#x}: {how}")
        done.append({"page": f"{page:#x}", "chunk": f"{row[0]:#x}", "how": how})
    return done


def make_dump(directory, number: int, seed: int, pool_mib: float, kind: str, fill: float = 0.5,
              windows: str = "7") -> dict:
    """One dump and its manifest in ``directory``; returns its corpus.json entry."""
    from ..kernel import Kernel

    rng = random.Random(seed)
    pool_bytes = max(PAGE_SIZE * 64, int(pool_mib * MiB) & ~(PAGE_SIZE - 1))
    # Half the machines batch their frees (Windows 7's delayed frees), so chunks wait as
    # pending; the segment heap's VS backend delays its frees whatever the flag.
    kernel = Kernel(nonpaged_pool_bytes=pool_bytes, paged_pool_bytes=pool_bytes,
                    delayed_frees=rng.random() < 0.5, windows=windows)
    live = _workload(kernel, rng, pool_bytes, fill)
    decoys = _plant_decoys(kernel, rng, live, 8 + len(live) // 400)
    _page_out(kernel, rng, live, 2 + len(live) // 2000)
    truth = truth_module.manifest(kernel)
    for header, tag, aligned, inside in decoys:
        truth.decoys.append({"address": header, "physical": kernel.space.translate(header),
                             "tag": truth_module.shown(tag), "aligned": aligned, "inside": inside})
    corrupted = _corrupt(kernel, rng, truth, 1 + len(live) // 4000)
    name = f"dump-{number:03d}"
    dump_path = os.path.join(directory, f"{name}.dmp")
    # The machine's clock, from the seed (not the wall clock): the same seed, the same bytes.
    kernel.dump_system_time = CORPUS_EPOCH + (seed % YEAR_SECONDS) * 10_000_000
    kernel.write_dump(dump_path, kind)
    truth.dump = {"file": os.path.basename(dump_path), "kind": kind, "seed": seed,
                  "pool_bytes": pool_bytes, "windows": str(kernel.windows)}
    truth_path = truth_module.write(truth, os.path.join(directory, f"{name}.truth.json"))
    states: dict = {}
    for row in truth.chunks:
        states[row[9]] = states.get(row[9], 0) + 1
    return {"dump": os.path.basename(dump_path), "truth": os.path.basename(truth_path), "kind": kind,
            "windows": str(kernel.windows), "seed": seed, "pool_mib_each": pool_bytes / MiB, "chunks": len(truth.chunks),
            "states": states, "big_allocations": len(truth.big),
            "paged_out_pages": len(truth.paged_out_pages), "corrupt_pages": corrupted,
            "decoys": len(truth.decoys)}


def corpus_dumps(directory, options: CorpusOptions) -> list[dict]:
    """Each dump of the corpus described completely (its own seed, size and kind), so that
    each can be made independently, in any process, by ``make_dump(**description)``."""
    master = random.Random(options.seed)
    dumps = []
    low, high = math.log(options.min_pool_mib), math.log(options.max_pool_mib)
    for number in range(options.count):
        seed = master.randrange(1 << 32)
        pool_mib = math.exp(low + (high - low) * master.random()) if high > low else options.min_pool_mib
        dumps.append({"directory": os.path.abspath(directory), "number": number, "seed": seed,
                      "pool_mib": pool_mib, "kind": options.kinds[number % len(options.kinds)],
                      "fill": options.fill, "windows": options.windows})
    return dumps


def make_corpus(directory, options: CorpusOptions, progress=None, engine=None) -> dict:
    """Write ``options.count`` dumps with manifests into ``directory``; returns the index.

    The dumps are made by the campaign engine (``engine``; default: in this process), one run
    per dump; ``progress(done, entry)`` is called as each finishes.
    """
    from ..campaign import Engine

    os.makedirs(directory, exist_ok=True)
    tasks = [dict(kind="corpus-dump", dump=d) for d in corpus_dumps(directory, options)]
    engine = engine or Engine(jobs=1)
    if progress is not None:
        finished = [0]
        chained = engine.progress

        def report(state, result):
            finished[0] += 1
            if "entry" in result:
                progress(finished[0], result["entry"])
            if chained is not None:
                chained(state, result)

        engine = replace(engine, progress=report)
    results = engine.run(tasks)
    failed = [(task, r) for task, r in zip(tasks, results) if "entry" not in r]
    if failed:
        task, result = failed[0]
        raise CorpusError(f"{len(failed)} of {len(tasks)} corpus dump(s) not made; the first, "
                          f"dump-{task['dump']['number']:03d}.dmp: {result['verdict']}: "
                          f"{result.get('evidence', '')}")
    index = {"format": "ntpool-corpus", "version": 1, "seed": options.seed,
             "dumps": [r["entry"] for r in results]}
    with open(os.path.join(directory, "corpus.json"), "w") as out:
        json.dump(index, out, indent=1)
    _remove_partial_files(directory)
    return index


def _remove_partial_files(directory) -> None:
    """Temporary files a worker stopped mid-write left (an interrupted corpus, resumed: their
    dumps and manifests have been made again), so that the corpus is only its files."""
    for name in os.listdir(directory):
        if name.endswith(".tmp") and (name.startswith(".ntpool-dump-") or (
                name.startswith("dump-") and ".truth.json." in name)):
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass
