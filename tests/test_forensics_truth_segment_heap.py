"""The truth manifest on Windows 10/11: every LFH block, VS chunk and big allocation of the
segment heap, from the heap's own state, agreeing with the tracker and with what `!poolfind *`
reads from the dump written beside it."""

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ntpool
from ntpool import PoolType
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpReader
from ntpool.dump import truth as t
from ntpool.forensics.score import read_results, score, score_files, tag_forms
from ntpool.machine.memory import canonical
from ntpool.pool.segment_heap.layout import VS_HEADER_SIZE, decode_vs_bits

MiB = 1 << 20
TAGS = ["Aaaa", "Bbbb", "Cc", "Dddd", ntpool.tag("Prot").value | ntpool.PROTECTED_POOL]
KINDS = (PoolType.NonPagedPool, PoolType.NonPagedPoolNx, PoolType.PagedPool)


def busy_machine(windows, seed=3, steps=4000):
    """LFH sizes (often enough to activate buckets), VS sizes, 0xFE1..128 KiB (VS-held big
    allocations), whole-page and large (several segments) allocations, frees."""
    k = ntpool.Kernel(nonpaged_pool_bytes=8 * MiB, paged_pool_bytes=8 * MiB, windows=windows)
    rng = random.Random(seed)
    live = []
    huge = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x180000, "Huge")  # a large allocation
    assert huge
    for _ in range(steps):
        if live and rng.random() < 0.45:
            p, tag = live.pop(rng.randrange(len(live)))
            k.ExFreePoolWithTag(p, tag)
            continue
        tag = rng.choice(TAGS)
        size = rng.choice((rng.choice((0x20, 0x40, 0x90, 0x1D0)), rng.choice((0x20, 0x40, 0x90)),
                           rng.randrange(1, 0x1F0), rng.randrange(0x200, 0xFE1),
                           rng.randrange(0xFE1, 0x20001), rng.randrange(0x20001, 0x60000)))
        p = k.ExAllocatePoolWithTag(rng.choice(KINDS), size, tag)
        if p:
            live.append((p, tag))
    # Free LFH blocks whose stale POOL_HEADERs still name their tag (every other one freed).
    stale = [k.ExAllocatePoolWithTag(PoolType.PagedPool, 0x60, "Stal") for _ in range(64)]
    for p in stale[::2]:
        k.ExFreePoolWithTag(p, "Stal")
    return k


@pytest.fixture(scope="module", params=["10", "11"])
def machine(request):
    return busy_machine(request.param)


def test_every_chunk_agrees_with_the_tracker_and_the_heap(machine):
    k = machine
    truth = t.manifest(k)
    assert t.check_against_tracker(truth, k) == []
    assert truth.chunk_fields == t.SEGMENT_HEAP_CHUNK_FIELDS and truth.chunk_fields[-1] == "backend"
    states = Counter((row[9], row[12]) for row in truth.chunks)
    for state in (("allocated", "Lfh"), ("free", "Lfh"), ("allocated", "Vs"), ("free", "Vs"),
                  ("pending free", "Vs"), ("lookaside", "Vs")):
        assert states[state], state
    assert {row[8] for row in truth.big} == {"Vs", "Segment", "Large"}
    assert {row[2] for row in truth.chunks} == {"NonPagedPool", "NonPagedPoolNx", "PagedPool"}
    assert any(row[3] & ntpool.PROTECTED_POOL and row[4] == "torP" for row in truth.chunks + truth.big)
    assert truth.corrupt_pages == []
    heaps = {heap.name: heap for heap in (k.nonpaged_pool, k.nonpaged_pool_nx, k.paged_pool)}
    held = set().union(*(heap.lookaside_chunks() for heap in heaps.values()))  # both front ends
    pending = {chunk + VS_HEADER_SIZE for heap in heaps.values() for chunk in heap.delay_free}
    for row in truth.chunks:
        address, physical, pool, tag, _, size, blocks, prev, ptype, state, out, _, backend = row
        assert k.space.translate(address) == physical and not out
        heap = heaps[pool]
        if backend == "Vs" and state == "free":  # no POOL_HEADER: the chunk's own encoded header
            _, units, _, allocated = decode_vs_bits(heap.read_qword(address), address, heap.keys.heap_key)
            assert units << 4 == size and not allocated and tag == 0
            continue
        header = k.physical.read(physical, 8)
        assert int.from_bytes(header[4:], "little") == tag and header[3] == ptype and header[2] == blocks
        assert (address in held) == (state in ("lookaside", "pending free"))
        assert (address in pending) == (state == "pending free")
        if state == "allocated":
            assert blocks << 4 == size and prev == 0 and ptype & 2
            assert k.pool.allocation_size(address + 16) <= size
    for row in truth.big:
        va, physical, pool, tag, _, size, pages, out, backend = row
        assert heaps[pool].big_pages[va] == (tag, pages) and size == pages << 12
        assert k.space.translate(va) == physical


def test_the_manifest_agrees_with_poolfind_on_the_dump_beside_it(machine, tmp_path):
    k = machine
    path = k.write_dump(tmp_path / "MEMORY.DMP", "kernel", truth=tmp_path / "truth.json")
    document = t.load(tmp_path / "truth.json")
    assert document["chunk_fields"][-1] == "backend" and document["dump"]["file"] == "MEMORY.DMP"
    with DumpReader(path) as reader:
        assert t.check_against_tracker(document, reader.tracker_entries()) == []
        text = "\n".join(KdSession(reader).execute(f"!poolfind * {pool}") for pool in (0, 1))
    (tmp_path / "poolfind.txt").write_text(text)
    found = read_results([tmp_path / "poolfind.txt"])
    # Memory shows every block the heap holds busy: allocated, on the lookaside, pending free;
    # and a free LFH block keeps the header it had (kd lists it Free when it has a tag).
    busy = {(int(r[0], 16), r[3]) for r in document["chunks"] if r[9] != "free"}
    stale = {(int(r[0], 16), r[3]) for r in document["chunks"]
             if r[9] == "free" and r[12] == "Lfh" and r[3]}
    # (the first 16 'Stal' blocks went to the VS backend, before their LFH bucket was active)
    assert 16 <= len({a for a, tag in stale if t.shown(tag) == "latS"}) < 32
    big = {(int(r[0], 16), r[3]) for r in document["big_allocations"]}
    shown = {canonical(f.address): f.tag for f in found.findings}
    assert {a for a, _ in busy} == {canonical(f.address) for f in found.findings
                                    if not f.big and f.state != "free"}
    assert {a for a, _ in stale} == {canonical(f.address) for f in found.findings if f.state == "free"}
    assert {a for a, _ in big} == {canonical(f.address) for f in found.findings if f.big}
    for address, tag in busy | stale | big:  # a lookaside link over a header's tag is read as kd reads it
        assert shown[address] in tag_forms(tag)
    result = score_files(tmp_path / "truth.json", [tmp_path / "poolfind.txt"])
    assert result["headers"]["precision"] == 1.0
    assert result["big allocations"]["precision"] == result["big allocations"]["recall"] == 1.0
    assert result["live allocations"]["recall"] == 1.0
    assert set(result["misses"]) == {"free segment-heap block (no live header)"}


def test_paged_out_pages_are_read_from_the_page_file_not_paged_in():
    k = ntpool.Kernel(windows="11", paged_pool_bytes=4 * MiB)
    blocks = [k.ExAllocatePoolWithTag(PoolType.PagedPool, 0x100, "Pgd ") for _ in range(100)]
    page = blocks[50] & ~0xFFF
    assert k.page_out(page) == 1
    truth = t.manifest(k)
    assert page in truth.paged_out_pages and k.paged_pool.tlb.get(page >> 12) is None  # still out
    out = [row for row in truth.chunks if row[10]]
    assert out and all(row[1] is None and row[0] & ~0xFFF == page for row in out)
    assert blocks[50] - 16 in {row[0] for row in out if row[9] == "allocated"}
    assert t.check_against_tracker(truth, k) == []


def test_damaged_headers_mark_their_pages_corrupt():
    k = ntpool.Kernel(windows="10", nonpaged_pool_bytes=4 * MiB)
    lfh = [k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 0x30, "Lfhb") for _ in range(60)]
    vs = [k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 0x500, "Vsch") for _ in range(4)]
    before = t.manifest(k)
    backend = {row[0]: row[12] for row in before.chunks}
    assert before.corrupt_pages == [] and backend[lfh[50] - 16] == "Lfh"  # its bucket is active
    k.write(lfh[50] - 16, b"\x07")  # an overrun of the block before: PreviousSize
    k.write(vs[2] - 32, b"\xff" * 8)  # the next VS chunk's encoded header, destroyed
    after = t.manifest(k)
    pages = {c["page"]: c for c in after.corrupt_pages}
    lfh_page, vs_page = (lfh[50] - 16) & ~0xFFF, (vs[2] - 32) & ~0xFFF
    assert "PreviousSize 0x7" in pages[lfh_page]["how"] and pages[lfh_page]["complete"]
    assert "does not decode with the heap key" in pages[vs_page]["how"] and not pages[vs_page]["complete"]
    assert all(row[11] == (row[0] & ~0xFFF in pages) for row in after.chunks)
    # The chunks before the damage are still listed; nothing past it is invented.
    listed = {row[0] for row in after.chunks}
    assert vs[1] - 16 in listed and vs[2] - 16 not in listed and vs[3] - 16 not in listed


def test_a_pool_no_design_walks_is_refused_with_a_clear_error(monkeypatch):
    k = ntpool.Kernel(windows="11")
    monkeypatch.delattr(type(k.pool_design), "walk")
    with pytest.raises(t.ManifestUnavailable, match="segment heap.*cannot walk its pools"):
        t.manifest(k)


def test_a_page_the_heap_names_but_memory_lacks_is_refused():
    k = ntpool.Kernel(windows="11")
    block = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x700, "Gone")
    k.space.unmap_page(block & ~0xFFF)  # behind the heap's back
    with pytest.raises(t.ManifestUnavailable, match="neither resident nor paged out"):
        t.manifest(k)


def test_windows_11_demo_writes_its_manifest_and_poolfind_scores_on_it(tmp_path, capsys):
    from ntpool.cli.main import main

    truth = tmp_path / "truth.json"
    assert main(["demo", "--windows", "11", "--steps", "400", "--out", str(tmp_path),
                 "--truth", str(truth)]) == 0
    capsys.readouterr()
    document = t.load(truth)
    assert document["dump"] == {"file": "MEMORY.DMP", "kind": "kernel"}
    with DumpReader(tmp_path / "MEMORY.DMP") as reader:
        assert t.check_against_tracker(document, reader.tracker_entries()) == []
    assert main(["kd", "-z", str(tmp_path / "MEMORY.DMP"), "-c", "!poolfind * 0; !poolfind * 1"]) == 0
    (tmp_path / "poolfind.txt").write_text(capsys.readouterr().out)
    result = score(document, read_results([tmp_path / "poolfind.txt"]))
    assert result["headers"]["precision"] == 1.0
    assert result["live allocations"]["recall"] == 1.0
    # Missed: only free blocks with no tag to find (free VS chunks, LFH blocks never used).
    tagless = sum(1 for r in document["chunks"] if r[9] == "free" and (r[12] == "Vs" or not r[3]))
    assert result["misses"] == {"free segment-heap block (no live header)": tagless}
    assert result["headers"]["right"] == len(document["chunks"]) - tagless
    assert main(["score", str(truth), str(tmp_path / "poolfind.txt")]) == 0
    assert "precision" in capsys.readouterr().out


def test_a_lookaside_link_a_driver_overwrote_is_named_not_followed():
    k = ntpool.Kernel(windows="11")
    for _ in range(12):  # enough frees for the Balance Set Manager to enable the bucket
        blocks = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x300, "Lkas") for _ in range(100)]
        for p in blocks:
            k.ExFreePoolWithTag(p, "Lkas")
    heap = k.nonpaged_pool
    bucket = max(heap.lookaside[1:], key=lambda b: b.count)
    assert bucket.count > 2
    before = t.manifest(k)
    assert sum(row[9] == "lookaside" for row in before.chunks) == bucket.count
    assert t.check_against_tracker(before, k) == []
    heap.write_qword(bucket.head, 0x4141414141414140)  # a write after free over the link
    after = t.manifest(k)
    page = next(c for c in after.corrupt_pages if c["page"] == bucket.head & ~0xFFF)
    assert f"{bucket.head:#x}: its dynamic lookaside link is 0x4141414141414140" in page["how"]
    assert f"the {bucket.count - 1} blocks its bucket still holds" in page["how"]
    assert sum(row[9] == "lookaside" for row in after.chunks) == 1
    assert t.check_against_tracker(after, k)  # the blocks it cannot find disagree, visibly


def test_each_design_walks_its_own_pools_and_windows_7_manifests_keep_their_fields():
    seven, eleven = ntpool.Kernel(), ntpool.Kernel(windows="11")
    for k in (seven, eleven):
        k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x40, "Mine")
    assert type(seven.pool_design).walk is not type(eleven.pool_design).walk
    assert t.manifest(seven).chunk_fields == t.CHUNK_FIELDS
    assert t.manifest(seven).big_fields == t.BIG_FIELDS
    assert t.manifest(eleven).big_fields == t.SEGMENT_HEAP_BIG_FIELDS


def test_a_lookaside_head_outside_the_heap_is_named_not_read():
    k = ntpool.Kernel(windows="11")
    for _ in range(12):
        blocks = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x300, "Lkas") for _ in range(100)]
        for p in blocks:
            k.ExFreePoolWithTag(p, "Lkas")
    heap = k.nonpaged_pool
    bucket = max(heap.lookaside[1:], key=lambda b: b.count)
    bucket.head = 0x4141414141414140  # what a pop leaves when it read a damaged link
    truth = t.manifest(k)
    assert any("head is 0x4141414141414140" in c["how"] for c in truth.corrupt_pages)
    assert not any(row[9] == "lookaside" for row in truth.chunks)


USE_AFTER_FREE = '''
from ntpool import PoolType


class UseAfterFree:
    name = "uaf.sys"

    def DriverEntry(self, k, path):
        return 0


def workload(k, rng):
    for _ in range(12):  # enough frees for the Balance Set Manager to enable the bucket
        blocks = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x300, "Lkas") for _ in range(100)]
        for p in blocks:
            k.ExFreePoolWithTag(p, "Lkas")
    k.write(blocks[-1] - 16, b"A" * 16)  # a write after free over the lookaside link
    for _ in range(5):
        k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x300, "Lkas")


DRIVERS = [UseAfterFree()]
'''


def test_run_writes_the_manifest_beside_a_0x13a_dump(tmp_path, capsys):
    from ntpool.cli.main import main

    (tmp_path / "uaf.py").write_text(USE_AFTER_FREE)
    main(["run", str(tmp_path / "uaf.py"), "--windows", "11", "--dump", str(tmp_path / "d.dmp"),
          "--truth", str(tmp_path / "t.json")])
    assert "KERNEL_MODE_HEAP_CORRUPTION" in " ".join(capsys.readouterr().out.split())
    document = t.load(tmp_path / "t.json")
    assert document["dump"]["file"] == "d.dmp" and document["chunk_fields"][-1] == "backend"
    assert any("head is 0x4141414141414141" in c["how"] or "link is 0x4141414141414141" in c["how"]
               for c in document["corrupt_pages"])


# --- an invariant, for any workload (hypothesis) ------------------------------------------------

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("allocate"), st.sampled_from(KINDS),
              st.one_of(st.integers(1, 0x1F0), st.integers(0x1F1, 0xFE0), st.integers(0xFE1, 0x22000)),
              st.sampled_from(TAGS)),
    st.tuples(st.just("free"), st.integers(0, 1 << 16))), min_size=1, max_size=120)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows=st.sampled_from(["10", "11"]), operations=OPERATIONS)
def test_any_workload_gives_a_manifest_that_agrees_and_covers_every_live_block(windows, operations):
    k = ntpool.Kernel(windows=windows, nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    live = []
    for operation in operations:
        if operation[0] == "allocate":
            _, kind, size, tag = operation
            p = k.ExAllocatePoolWithTag(kind, size, tag)
            if p:
                live.append((p, tag))
        elif live:
            p, tag = live.pop(operation[1] % len(live))
            k.ExFreePoolWithTag(p, tag)
    truth = t.manifest(k)
    assert t.check_against_tracker(truth, k) == []
    assert truth.corrupt_pages == []
    allocated = {row[0] + 16 for row in truth.chunks if row[9] == "allocated"} | {row[0] for row in truth.big}
    assert {p for p, _ in live} == allocated
    spans = sorted((row[0], row[0] + row[5]) for row in truth.chunks)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # no two overlap
