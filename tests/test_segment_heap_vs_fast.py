"""The segment heap's VS fast cases (SegmentHeapAllocator.allocate_vs / free_vs,
SegmentHeap.vs_take / vs_flush / _vs_merge): each takes the usual case of the
general code, checking first every header the general code reads, and leaves anything else
to it. Each test runs the same steps on two Windows 11 machines, one as drivers run it and
one whose fast paths call the general code in their place (allocate_plain, free_generic,
which call vs_allocate, vs_free, flush_delay_free, _vs_coalesce), and compares every
result, bug check, the heaps' indexes and lists, the tags' counts and the bytes of every
VS subsegment page."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.pool.segment_heap import allocator as allocator_module
from ntpool.pool.segment_heap.allocator import block_units
from ntpool.pool.segment_heap.heap import VsSubsegment
from two_ways import outcome, run_both

NP = int(ntpool.PoolType.NonPagedPool)
PAGED = int(ntpool.PoolType.PagedPool)
POOL2 = (int(ntpool.PoolFlags.POOL_FLAG_NON_PAGED), int(ntpool.PoolFlags.POOL_FLAG_PAGED))
TAGS = ("VsFa", "VsFb", "VsFc")
MiB = 1 << 20


def _machine(general: bool):
    k = ntpool.Kernel(windows="11", nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)
    if general:
        # The fast paths' calls of the VS fast cases go to the code they shortcut (the LFH's
        # fast paths stay: they differ from the generic ones in what they keep in Python).
        # The stand-ins are compiled as the allocator module's code, so a call-site lookup
        # made under them (a page fault's) walks out of them to the driver's frame as it
        # walks out of allocate_vs and free_vs.
        allocator = k.pool
        namespace = {"allocator": allocator}
        allocator.allocate_vs = eval(compile(
            "lambda heap, number_of_bytes, tag, site, row: "
            "allocator.allocate_plain(heap, number_of_bytes, tag, site)", allocator_module.__file__, "eval"), namespace)
        allocator.free_vs = eval(compile(
            "lambda heap, sub, address, tag: allocator.free_generic(address, tag)",
            allocator_module.__file__, "eval"), namespace)
    for tag in TAGS[:2]:  # tags already seen (the fast paths serve those; a new one: generic)
        k.pool.remember_tag(tag, ntpool.tags.tag_value(tag))
    k.live, k.freed = [], []
    return k, ()


def _page_bytes(heap) -> list:
    """(page index, its bytes) of every VS subsegment page, None for one paged out. (Not the
    LFH's: its fast paths keep FreeCount and FreeHint in Python till a dump, the generic
    paths write them.)"""
    pages = []
    for index, sub in enumerate(heap.page_subsegments):
        if type(sub) is VsSubsegment:
            frame = heap.tlb.get(heap.first_page + index)
            pages.append((index, None if frame is None else bytes(heap.mem[frame:frame + 0x1000])))
    return pages


def _state(k, regions=()):
    heaps = []
    for heap in k.pool.pools:
        heaps.append((
            list(heap.vs_sizes), [(size, list(heap.vs_free_chunks[size])) for size in heap.vs_sizes],
            list(heap.delay_free), heap.vs_subsegments, heap.vs_spare and heap.vs_spare.va,
            [(b.head, b.count, b.depth, b.allocates, b.misses, b.frees, b.enabled) for b in heap.lookaside],
            [(b.index, b.active, b.requests, b.live_elsewhere) for b in heap.lfh_buckets if b is not None],
            heap.pages_in_use, _page_bytes(heap)))
    counts = [k.pool.tracker.counts(ntpool.tags.tag_value(tag)) for tag in TAGS]
    return heaps, counts, k.pool._frees_since_pass, k.pool.balance_passes, k.live, k.freed, k.irql_by_processor[:]


def _pick(items, index):
    return items[index % len(items)] if items else None


def _allocate(k, pool, size, tag, pool2=False):
    body = (k.ExAllocatePool2(POOL2[pool], size, tag) if pool2 else
            k.ExAllocatePoolWithTag((NP, PAGED)[pool], size, tag))
    if body:
        k.live.append((body, size, tag))
    return body


def _free(k, index, how):
    picked = _pick(k.live, index)
    if picked is None:
        return None
    k.live.remove(picked)
    k.freed.append(picked)
    body, _, tag = picked
    if how == "ExFreePool":
        return k.ExFreePool(body)
    return k.ExFreePoolWithTag(body, tag if how == "own" else TAGS[tag == TAGS[0]])


def _free_inside(k, index, offset):
    picked = _pick(k.live, index)
    return None if picked is None else k.ExFreePoolWithTag(picked[0] + offset, picked[2])


def _free_again(k, index):
    picked = _pick(k.freed, index)
    return None if picked is None else k.ExFreePoolWithTag(picked[0], picked[2])


# Where a stray write lands, from a live block's body: its chunk's VS header, its POOL_HEADER,
# the next chunk's VS header (the block's 16-byte units end its chunk: a VS chunk's), the
# 16 bytes before its chunk (the chunk before's data, or its header).
WHERE = {"vs_header": lambda body, units: body - 32, "pool_header": lambda body, units: body - 16,
         "next_header": lambda body, units: body - 16 + units * 16, "before": lambda body, units: body - 48}


def _place(k, freed, index, where, offset):
    """The address a stray write or flip lands at (a live block's, or a freed one's), or None."""
    picked = _pick(k.freed if freed else k.live, index)
    if picked is None:
        return None
    body, size, _ = picked
    return WHERE[where](body, block_units(size)) + offset


def _stray(k, index, where, offset, data, freed=False):
    at = _place(k, freed, index, where, offset)
    return None if at is None else k.write(at, data)


def _flip(k, freed, index, where, offset, mask):
    """A byte XORed with ``mask``: a header's field changed in a few bits (a busy chunk that
    decodes free, a size one off), which random bytes seldom make."""
    at = _place(k, freed, index, where, offset)
    return None if at is None else k.write(at, bytes([k.read(at, 1)[0] ^ mask]))


def _page_out(k, index, freed=False):
    picked = _pick(k.freed if freed else k.live, index)
    return None if picked is None else k.page_out(picked[0] & ~0xFFF)


STEPS = {
    "alloc": _allocate,
    "burst": lambda k, pool, size, tag, count: [_allocate(k, pool, size, tag) for _ in range(count)],
    "free": _free,
    "free_again": _free_again,
    "free_inside": _free_inside,
    "free_all": lambda k, order: [_free(k, -1 if order else 0, "own") for _ in range(len(k.live))],
    "stray": _stray,
    "flip": _flip,
    "page_out": _page_out,
    "irql": lambda k, irql: k._set_irql(irql),
    "balance": lambda k: k.pool.balance_set_pass(),
}


def _apply(k, regions, step):
    what, *args = step
    return STEPS[what](k, *args)


# Sizes: the VS backend's (0x1F1..0xFE0: those up to 0xF70 are dynamic lookaside sizes, the
# rest not; under 0x3F0 a freed chunk waits in the delay-free list), and the LFH's before its
# bucket is enabled (1..0x1F0), at the edges that change the chunk's units.
SIZES = st.one_of(st.sampled_from([1, 100, 0x1E0, 0x1F0, 0x1F1, 0x200, 0x3D0, 0x3E0, 0x3F0, 1000,
                                   0x7F0, 0xF70, 0xF71, 0xFD0, 0xFE0]),
                  st.integers(1, 0xFE0))
POOL = st.integers(0, 1)
TAG = st.sampled_from(("VsFa", "VsFb", "VsFa", "VsFc"))
STEP = st.one_of(
    st.tuples(st.just("alloc"), POOL, SIZES, TAG),
    st.tuples(st.just("alloc"), POOL, SIZES, TAG, st.just(True)),
    st.tuples(st.just("burst"), POOL, SIZES, TAG, st.integers(1, 40)),
    st.tuples(st.just("free"), st.integers(0, 99), st.sampled_from(["own", "own", "other", "ExFreePool"])),
    st.tuples(st.just("free_again"), st.integers(0, 99)),
    st.tuples(st.just("free_inside"), st.integers(0, 99), st.sampled_from([8, 0x10, 0x20, 0x401])),
    st.tuples(st.just("free_all"), st.booleans()),
    st.tuples(st.just("stray"), st.integers(0, 99), st.sampled_from(sorted(WHERE)), st.integers(0, 15),
              st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("stray"), st.integers(0, 99), st.sampled_from(sorted(WHERE)), st.integers(0, 15),
              st.binary(min_size=1, max_size=8), st.just(True)),
    st.tuples(st.just("flip"), st.booleans(), st.integers(0, 99), st.sampled_from(sorted(WHERE)),
              st.integers(0, 15), st.sampled_from([1, 2, 0x80, 0xFF])),
    st.tuples(st.just("page_out"), st.integers(0, 99), st.booleans()),
    st.tuples(st.just("irql"), st.integers(0, 2)),
    st.tuples(st.just("balance")),
)


def _run_both(steps):
    run_both(_machine, _apply, _state, steps)


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, max_size=40))
def test_the_vs_fast_cases_end_as_the_general_code_ends(steps):
    _run_both(steps)


def _counting(k):
    """Count, on the machine as drivers run it, each fast case taken (its answer not "not
    the usual case"), so a scenario can say it went the fast way."""
    taken = {"vs_take": 0, "_vs_merge": 0, "vs_flush": 0, "free_vs": 0, "lookaside_take": 0}
    for heap in k.pool.pools:
        for name in ("vs_take", "_vs_merge", "vs_flush", "lookaside_take"):
            def counted(*args, _name=name, _method=getattr(heap, name)):
                answer = _method(*args)
                taken[_name] += bool(answer)
                return answer
            setattr(heap, name, counted)
    free_generic, free_vs = k.pool.free_generic, k.pool.free_vs

    def counted_free_vs(*args):
        generic_before = taken.setdefault("generic", 0)
        free_vs(*args)
        taken["free_vs"] += taken["generic"] == generic_before

    def counted_generic(*args):
        taken["generic"] = taken.get("generic", 0) + 1
        return free_generic(*args)
    k.pool.free_vs, k.pool.free_generic = counted_free_vs, counted_generic
    return taken


def _enabled(pool):
    return [("balance",), ("balance",), ("alloc", pool, 1000, "VsFa"), ("free", 0, "own"), ("balance",),
            ("burst", pool, 1000, "VsFa", 2), ("free_all", False)]


ENABLED, PAGED_ENABLED = _enabled(0), _enabled(1)
SCENARIOS = {
    # a 1,000-byte pair: split off the subsegment's free chunk, merged back whole (kept)
    "the pair": [("alloc", 0, 1000, "VsFa"), ("free", 0, "own")] * 3,
    # chunks side by side, freed out of order: merges with the free chunk after, before, both
    "neighbours": [("burst", 0, 0x500, "VsFa", 6), ("free", 1, "own"), ("free", 2, "own"),
                   ("free", 3, "ExFreePool"), ("free", 0, "own"), ("free_all", True)],
    # small chunks through the delay-free list, its flush merging them
    "delay-free": [("burst", 1, 100, "VsFb", 16), ("burst", 0, 0x300, "VsFa", 40), ("free_all", False),
                   ("burst", 0, 0x300, "VsFa", 33), ("free_all", True)],
    # two free chunks of the best-fitting size: the one freed first is taken
    "two free chunks of one size": [("burst", 0, 1000, "VsFa", 7), ("free", 1, "own"), ("free", 3, "own"),
                                    ("alloc", 0, 1000, "VsFb")],
    # an exact fit: the freed chunk taken whole, no remainder
    "exact fit": [("burst", 0, 0x500, "VsFa", 3), ("free", 1, "own"), ("alloc", 0, 0x500, "VsFb")],
    # the dynamic lookaside enabled: frees pushed (4, its depth; the others to the VS
    # backend), allocations popped
    "lookaside": [("balance",), ("balance",), ("alloc", 0, 1000, "VsFa"), ("free", 0, "own"), ("balance",),
                  ("burst", 0, 1000, "VsFa", 6), ("free_all", False), ("burst", 0, 1000, "VsFb", 3)],
    # the LFH's bucket enabled by its 17th live block, VS chunks of its size counted till then
    "LFH bucket": [("burst", 0, 100, "VsFa", 20), ("free_all", True), ("burst", 0, 100, "VsFa", 3)],
    # damage the fast cases leave to the general code, which bug-checks
    "next header overwritten": [("burst", 0, 0x500, "VsFa", 2), ("stray", 0, "next_header", 2, b"\x07"),
                                ("free", 0, "own")],
    "double free": [("burst", 0, 0x500, "VsFa", 2), ("free", 0, "own"), ("free_again", 0)],
    # a busy chunk after the freed one that decodes free (Allocated's bit flipped): not in the
    # free tree
    "next chunk decodes free": [("burst", 0, 0x500, "VsFa", 2), ("flip", False, 1, "vs_header", 6, 1),
                                ("free", 0, "own")],
    # the next chunk's UnsafePrevSize one off; the chunk's own one off (the chunk before
    # does not match); the freed chunk before's, merged into a subsegment made whole
    "next previous size off": [("burst", 0, 0x500, "VsFa", 2), ("flip", False, 0, "next_header", 4, 1),
                               ("free", 0, "own")],
    "own previous size off": [("burst", 0, 0x500, "VsFa", 2), ("flip", False, 1, "vs_header", 4, 1),
                              ("free", 1, "own")],
    # a free chunk split whose next chunk's header does not decode (its size overwritten),
    # or decodes free: the remainder's size told to it as the general code tells it
    # (three 1,000-byte chunks side by side on the subsegment's first page)
    "split before a damaged header": [("burst", 0, 1000, "VsFa", 3), ("free", 1, "own"),
                                      ("flip", False, 1, "vs_header", 3, 0xFF), ("alloc", 0, 0x300, "VsFb")],
    "split before a chunk that decodes free": [("burst", 0, 1000, "VsFa", 3), ("free", 1, "own"),
                                               ("flip", False, 1, "vs_header", 6, 1), ("alloc", 0, 0x300, "VsFb")],
    # frees past the Balance Set Manager's interval: the pass runs (the general code's way)
    "a Balance Set pass due": [("burst", 0, 1000, "VsFa", 40)] * 7 + [("free_all", False)],
    "a Balance Set pass due, small chunks": [("burst", 0, 0x200, "VsFa", 40)] * 7 + [("free_all", True)],
    # passes while the lookaside holds blocks (its depth grown by misses, then shrunk by
    # the passes: blocks dropped to the backend), frees past the interval
    "a Balance Set pass with blocks on the lookaside": ENABLED + [("burst", 0, 1000, "VsFa", 30), ("balance",),
                                                                  ("free_all", True)] + [("balance",)] * 12
    + [("burst", 0, 1000, "VsFb", 40)] * 7 + [("free_all", False)],
    # a free of an address inside a block, not its start
    "free of an address inside a block": [("burst", 0, 1000, "VsFa", 2), ("free_inside", 0, 8),
                                          ("free_inside", 1, 0x10)],
    # several subsegments emptied: one kept as the spare, the others' pages given back
    "subsegments emptied": [("burst", 0, 0xF00, "VsFa", 40), ("free_all", False)],
    # a chunk waiting in the delay-free list that decodes free when the list is flushed
    "delayed chunk decodes free": [("burst", 0, 0x200, "VsFa", 33), ("free", 0, "own"),
                                   ("flip", True, 0, "vs_header", 6, 1), ("free_all", False)],
    # the dynamic lookaside's bucket of 1,000-byte requests enabled (a free between the
    # second and third passes), two blocks kept on it, then damage to what a pop checks: the
    # link (misaligned; another block's), the VS header (decodes free), a page paged out
    # (the bucket's head: the block freed last)
    "lookaside link misaligned": ENABLED + [("flip", True, -1, "pool_header", 0, 1), ("burst", 0, 1000, "VsFa", 3)],
    "lookaside link moved": ENABLED + [("flip", True, -1, "pool_header", 1, 0x10), ("burst", 0, 1000, "VsFa", 3)],
    "lookaside entry decodes free": ENABLED + [("flip", True, -1, "vs_header", 6, 1), ("burst", 0, 1000, "VsFa", 3)],
    "lookaside entry paged out": PAGED_ENABLED + [("page_out", -1, True), ("burst", 1, 1000, "VsFa", 3)],
    "merged chunk before with a previous size": [
        ("burst", 0, 0x500, "VsFa", 2), ("free", 0, "own"), ("flip", True, 0, "vs_header", 4, 2),
        ("free", 0, "own")],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_ends_as_the_general_code_ends(name):
    _run_both(SCENARIOS[name])


@pytest.mark.parametrize("name, fast_cases", [
    ("the pair", {"vs_take", "_vs_merge", "free_vs"}),
    ("neighbours", {"vs_take", "_vs_merge", "free_vs"}),
    ("delay-free", {"vs_take", "_vs_merge", "vs_flush", "free_vs"}),
    ("exact fit", {"vs_take", "free_vs"}),
    ("lookaside", {"vs_take", "free_vs", "lookaside_take"}),
])
def test_the_scenarios_take_the_fast_cases(name, fast_cases):
    k, regions = _machine(False)
    taken = _counting(k)
    for step in SCENARIOS[name]:
        assert outcome(lambda: _apply(k, regions, step))[0] == "ok"
    assert {case for case in fast_cases if taken[case]} == fast_cases, taken


def test_the_lookaside_scenario_pops_and_pushes():
    k, regions = _machine(False)
    for step in SCENARIOS["lookaside"]:
        _apply(k, regions, step)
    bucket = k.pool.nonpaged.lookaside[32]  # 1,000 bytes: 1,024-byte blocks (64 units)
    assert bucket.enabled and bucket.count == 1 and bucket.allocates == 9 and bucket.misses == 6


def test_a_vs_subsegment_is_what_1000_bytes_come_from():
    k, _ = _machine(False)
    body = k.ExAllocatePoolWithTag(NP, 1000, "VsFa")
    assert type(k.pool.nonpaged.subsegment_of(body)) is VsSubsegment
