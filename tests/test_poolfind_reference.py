"""``!poolfind``'s fast paths (the step walk in the regular-expression engine, whatever order it
tries chunk sizes in; the lines made a stretch at a time; the scan shared with forked workers)
must print exactly what the plain way prints: every mapped pool page outside big allocations,
in address order, walked header by header (``examine_page``, the allocator's own checks), each
chunk whose tag matches listed with the reader's own per-chunk site lookup. Checked on a churned
machine's dump, sound and with damaged pages, single and shared."""

import pytest

from ntpool.debugger import poolscan, session as kd
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpReader
from ntpool.pool.layout import chunk_at
from test_poolfind_streaming import chunk_lines, churned_kernel

POOLTAGS = PoolTagDatabase.default(environ={})
PATTERNS = ["derF", "?ceR", "d?r*", "tli*", "Filt", "*"]  # Filt: no hit (tags show reversed)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """A churned machine's dump, and a copy with a few pool pages' chains damaged."""
    folder = tmp_path_factory.mktemp("reference")
    sound = folder / "sound.dmp"
    churned_kernel(23).write_dump(sound, "full")
    damaged = folder / "damaged.dmp"
    data = bytearray(sound.read_bytes())
    with DumpReader(sound) as reader:
        finder = poolscan.PoolFinder(reader, reader.pool_ranges()[0], poolscan.BigPageIndex(reader.big_pages()))
        offsets = [offset for _va, offset, count in finder.runs() for offset in range(offset, offset + (count << 12), 4096)]
    # a second header's PreviousSize, a third's BlockSize, a fourth's PoolType on three pages
    for index, nth, byte in ((3, 1, 0), (11, 2, 2), (17, 3, 3)):
        headers = sorted(poolscan.valid_header_offsets(data, offsets[index], 0))
        data[offsets[index] + headers[nth] + byte] ^= 0x5A
    damaged.write_bytes(data)
    return sound, damaged


def plain_listing(reader, session, pool_type: int, pattern: str) -> list[str]:
    """The chunks' lines as the plain walk finds them, page by page (a page whose chain is not
    sound: its salvaged headers, marked, then a line for it at the end when one of them has
    the tag), each Allocated-by line from the reader's per-chunk lookup."""
    pool = reader.pool_ranges()[pool_type]
    finder = poolscan.PoolFinder(reader, pool, poolscan.BigPageIndex(reader.big_pages()))
    regex = None if pattern == "*" else poolscan.tag_bytes_regex(pattern)
    lines, corrupt = [], []
    for va, offset, count in finder.runs():
        for page in range(count):
            page_va = va + (page << 12)
            data = reader.mapping[offset + (page << 12):offset + ((page + 1) << 12)]
            report = poolscan.examine_page(data, page_va, pool.base_type)
            if report.problems:
                salvaged = sorted(poolscan.salvaged_header_offsets(data, 0, pool.base_type))
                chunks = [chunk_at(data, at, page_va + at) for at in salvaged]
                # told when the tag sits where a header's would, in any block of the page
                if regex is None or any(poolscan.tag_display_matches(regex, int.from_bytes(data[at + 4:at + 8], "little"))
                                        for at in range(0, 4096, 16)):
                    corrupt.append(page_va)
            else:
                chunks = report.chunks
            chunks = [chunk for chunk in chunks if regex is None or poolscan.tag_display_matches(regex, chunk.tag)]
            lines += chunk_lines(reader, session, chunks, corrupt_page=bool(report.problems))
    return lines, corrupt


def listing(text: str, pattern: str) -> tuple[list[str], list[int]]:
    body = text.rsplit(f"for Tag: {pattern}\n", 1)[1]  # after the pool's heading
    lines = body.split("\n")
    corrupt = [int(line.split(" ", 1)[0], 16) for line in lines if "header chain is corrupt" in line]
    return [line for line in lines if line and "header chain is corrupt" not in line], corrupt


def run(path, commands, processes: int, monkeypatch, sizes=None) -> dict:
    monkeypatch.setattr(kd, "PARALLEL_PROCESSES", processes)
    with DumpReader(path) as reader:
        session = KdSession(reader, POOLTAGS)
        if sizes is not None:  # the step walk tries chunk sizes in this order in both pools
            for pool_type in (0, 1):
                finder = session._finders[pool_type] = poolscan.PoolFinder(
                    reader, reader.pool_ranges()[pool_type], session.big_pages())
                finder._common_sizes = sizes
        return {command: "".join(session.stream(command)) for command in commands}


@pytest.mark.parametrize("which", ["sound", "damaged"])
def test_serial_shared_and_plain_print_the_same(dumps, which, monkeypatch):
    path = dumps[0] if which == "sound" else dumps[1]
    commands = [f"!poolfind {pattern} {pool_type}" for pattern in PATTERNS for pool_type in (0, 1)]
    serial = run(path, commands, 0, monkeypatch)
    backwards = run(path, commands, 0, monkeypatch, sizes=tuple(range(255, 0, -1)))
    monkeypatch.setattr(poolscan, "WINDOW_PAGES", 5)
    monkeypatch.setattr(poolscan, "BATCH_PAGES", 7)
    monkeypatch.setattr(kd, "PARALLEL_MIN_PAGES", 0)
    shared = run(path, commands, 2, monkeypatch)
    assert serial == backwards == shared
    with DumpReader(path) as reader:
        session = KdSession(reader, POOLTAGS)
        hits = 0
        for pattern in PATTERNS:
            for pool_type in (0, 1):
                expected, corrupt = plain_listing(reader, session, pool_type, pattern)
                lines, told = listing(serial[f"!poolfind {pattern} {pool_type}"], pattern)
                assert lines == expected
                if pattern != "*":
                    assert told == corrupt
                hits += len(expected)
    assert hits > 5000
    if which == "damaged":
        assert "corrupt page" in serial["!poolfind * 0"]


def every_kind_kernel(seed: int):
    """Chunks of every kind a hit's line shows, mostly of one tag (so its scan walks stretches
    of pages): nonpaged and paged, session pool, quota-charged (no Allocated-by line), the
    tag with its protected bit (shown without it), free ones, and big allocations."""
    import random

    import ntpool
    from ntpool.constants import PoolType

    k = ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)
    process = k.create_process("app.exe")
    fred = int.from_bytes(b"derF", "little")  # the ULONG of the tag "Fred" (shown derF)
    rng = random.Random(seed)
    live = []
    kinds = [PoolType.NonPagedPool, PoolType.PagedPool, PoolType.NonPagedPoolSession, PoolType.PagedPoolSession]
    for step in range(5000):
        kind = step % 6
        tag = "Fred" if kind < 4 else ("Recv" if kind == 4 else fred | 0x80000000)
        pool = kinds[step % 4]
        if step % 5 == 0:
            k.set_current_process(process)
            address = k.ExAllocatePoolWithQuotaTag(pool, rng.randrange(8, 600), "Fred")
            k.set_current_process(k.system_process)
        else:
            address = k.ExAllocatePoolWithTag(pool, rng.randrange(8, 600), tag)
        if address:
            live.append((address, tag))
        if live and rng.random() < 0.3:
            address, tag = live.pop(rng.randrange(len(live)))
            if isinstance(tag, int):  # a protected tag is freed with it
                k.ExFreePoolWithTag(address, tag)
            else:
                k.ExFreePool(address)
        if step % 700 == 0:
            k.ExAllocatePoolWithTag(kinds[step % 2], 3 * 4096, "Fred")
    return k


def test_every_kind_of_hit_line_is_the_plain_walks(tmp_path, monkeypatch):
    """Each kind of chunk's line (nonpaged, paged, session, quota-charged, protected tag, free,
    and the big allocations' lines before them), for a tag given as text and as its ULONG (the
    stretch's texts looked up by header's first ULONG: see HitLines.one_tag) and a wildcard
    (by the whole header): what the plain walk prints, line for line."""
    path = tmp_path / "kinds.dmp"
    every_kind_kernel(5).write_dump(path, "full")
    patterns = ["derF", "0x46726564", "d?r*"]
    commands = [f"!poolfind {pattern} {pool_type}" for pattern in patterns for pool_type in (0, 1)]
    serial = run(path, commands, 0, monkeypatch)
    text = "\n".join(serial.values())
    for kind in ("(Allocated)", "(Free)", ":large page allocation, Tag is derF", "Allocated by"):
        assert kind in text, kind
    with DumpReader(path) as reader:
        session = KdSession(reader, POOLTAGS)
        for pattern in patterns:
            for pool_type in (0, 1):
                expected, _corrupt = plain_listing(reader, session, pool_type, pattern)
                lines, _told = listing(serial[f"!poolfind {pattern} {pool_type}"], pattern)
                assert lines == expected and len(lines) > 500
        chunks = [chunk for pool in (0, 1) for chunk in poolscan.PoolFinder(
            reader, reader.pool_ranges()[pool], session.big_pages()).find("derF")]
    types = {chunk.pool_type for chunk in chunks}
    assert any(t & 0x20 for t in types) and any(t & 0x08 for t in types)  # session, quota-charged
    assert any(chunk.tag & 0x80000000 for chunk in chunks) and any(not t for t in types)  # protected, free
