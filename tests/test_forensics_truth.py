"""The truth manifest: every chunk and big allocation, from the allocator's own state,
agreeing with the tracker's per-tag counts."""

import json
import random

import pytest

import ntpool
from ntpool import PoolType
from ntpool.dump import truth as t
from ntpool.pool.walk import lookaside_entries


def busy_machine(seed=3, windows="7"):
    k = ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20, windows=windows)
    rng = random.Random(seed)
    live = []
    tags = ["Aaaa", "Bbbb", "Cc", "Dddd", ntpool.tag("Prot").value | ntpool.PROTECTED_POOL]
    for step in range(3000):
        if live and rng.random() < 0.45:
            p, tag = live.pop(rng.randrange(len(live)))
            k.ExFreePoolWithTag(p, tag)
            continue
        tag = rng.choice(tags)
        kind = rng.choice((PoolType.NonPagedPool, PoolType.PagedPool))
        size = rng.choice((rng.randrange(1, 600), rng.randrange(600, 4000), rng.randrange(4000, 12000)))
        p = k.ExAllocatePoolWithTag(kind, size, tag)
        if p:
            live.append((p, tag))
    return k


def test_every_chunk_agrees_with_the_tracker_and_states_come_from_the_lists():
    k = busy_machine()
    paged_page = next(r[0] for r in t.manifest(k).chunks if r[2] == "PagedPool") & ~0xFFF
    assert k.page_out(paged_page) == 1
    truth = t.manifest(k)
    assert t.check_against_tracker(truth, k) == []
    states = {row[9] for row in truth.chunks}
    assert states >= {"allocated", "free", "lookaside"}
    assert truth.big and {row[2] for row in truth.big} == {"NonPagedPool", "PagedPool"}
    # Each chunk's header says what the manifest says; pages are covered exactly.
    by_page: dict = {}
    for row in truth.chunks:
        address, physical, pool, tag, shown, size, blocks, prev, ptype, state, out, _ = row
        by_page.setdefault(address & ~0xFFF, []).append((address, size))
        if out:
            assert physical is None and address & ~0xFFF == paged_page
            continue
        header = k.physical.read(physical, 8)
        assert header[2] == blocks and header[3] == ptype and int.from_bytes(header[4:], "little") == tag
        assert k.space.translate(address) == physical
        assert (ptype == 0) == (state == "free")
    for chunks in by_page.values():
        assert sum(size for _, size in chunks) == 4096
    assert truth.paged_out_pages == [paged_page]
    assert any(row[3] & ntpool.PROTECTED_POOL and row[4] == "torP" for row in truth.chunks + truth.big)
    # The lookaside chunks are exactly the ones on the lists.
    lookaside = {row[0] + 16 for row in truth.chunks if row[9] == "lookaside"}
    assert lookaside == lookaside_entries(k.nonpaged_pool) | lookaside_entries(k.paged_pool)


def test_a_page_a_driver_damaged_is_marked_corrupt():
    k = busy_machine()
    before = t.manifest(k)
    row = next(r for r in before.chunks if r[1] is not None and r[0] & 0xFFF and r[6] > 1)
    page = row[0] & ~0xFFF
    k.physical.write(row[1] + 2, b"\xff")  # BlockSize past the page
    after = t.manifest(k)
    assert after.corrupt_pages == [{"page": page, "pool": row[2], "how": after.corrupt_pages[0]["how"],
                                    "complete": False}]
    assert "runs past the page" in after.corrupt_pages[0]["how"]
    on_page = [r for r in after.chunks if r[0] & ~0xFFF == page]
    assert on_page and all(r[11] for r in on_page) and on_page[-1][0] < row[0]
    t.mark_corrupt(before, page, row[2], "BlockSize overwritten")
    assert all(r[11] == (r[0] & ~0xFFF == page) for r in before.chunks)


@pytest.mark.parametrize("windows, fields", [("7", t.CHUNK_FIELDS), ("11", t.SEGMENT_HEAP_CHUNK_FIELDS)])
def test_the_manifest_json_round_trips(tmp_path, windows, fields):
    k = busy_machine(5, windows)
    truth = t.manifest(k)
    path = t.write(truth, tmp_path / "truth.json")
    document = t.load(path)
    assert document["chunk_fields"] == list(fields)
    assert t.check_against_tracker(document, k) == []
    assert len(document["chunks"]) == len(truth.chunks)
    first = document["chunks"][0]
    assert int(first[0], 16) == truth.chunks[0][0] and first[2:] == truth.chunks[0][2:]
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a truth manifest"):
        t.load(tmp_path / "bad.json")


def test_pending_frees_are_their_own_state_and_not_live():
    k = ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20, delayed_frees=True)
    # Chunks too big for a lookaside go on the delayed-free list when freed.
    chunks = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 1000, "Pend") for _ in range(12)]
    for p in chunks[:6]:
        k.ExFreePoolWithTag(p, "Pend")
    truth = t.manifest(k)
    pending = {row[0] for row in truth.chunks if row[9] == "pending free"}
    assert pending == {body - 16 for body in k.nonpaged_pool.pending} and len(pending) == 6
    assert {p - 16 for p in chunks[:6]} == pending
    assert t.check_against_tracker(truth, k) == []


def test_a_lookaside_link_a_driver_overwrote_is_named_not_followed():
    k = ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)
    chunks = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x40, "Lkas") for _ in range(10)]
    for p in chunks:
        k.ExFreePoolWithTag(p, "Lkas")
    cached = lookaside_entries(k.nonpaged_pool)
    assert len(cached) > 2
    assert t.check_against_tracker(t.manifest(k), k) == []
    victim = sorted(cached)[0]
    k.write(victim, b"A" * 8)  # a write after free over the lookaside link in the body
    truth = t.manifest(k)
    page = next(c for c in truth.corrupt_pages if c["page"] == victim & ~0xFFF)
    assert f"{victim:#x}: its lookaside link is 0x4141414141414141, not a chunk of the pool" in page["how"]
    assert all(row[11] for row in truth.chunks if row[0] & ~0xFFF == victim & ~0xFFF)
