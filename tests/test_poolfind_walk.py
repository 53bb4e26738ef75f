"""A tag's ``!poolfind`` walks header chains in the regular-expression engine
(``poolscan.header_step_regex`` over a whole window, ``poolscan.header_walk_regex`` when a page's
chain is corrupt), many pages per call; it must find exactly what searching
each page on its own finds (the blocks whose tag matches, then the page's chain, or a corrupt
page's salvage), whatever the damage: a PreviousSize of 0 inside a page, a chunk running over
its page's end, a first header with a PreviousSize, a foreign PoolType, a tag planted in a
chunk's body. Set NTPOOL_FUZZ_EXAMPLES (e.g. 5000) for a longer run on demand."""

import os
import random
import re
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ntpool
from ntpool.debugger import poolscan
from ntpool.dump.reader import DumpFormatError, DumpReader

MiB = 1 << 20
PAGES = 6
EXAMPLES = int(os.environ.get("NTPOOL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PATTERNS = ["derF", "?ecR", "*R", "F*", "d?r*", "Zzzz"]


@pytest.fixture(scope="module")
def walk_dump(tmp_path_factory):
    """A full dump of a nonpaged pool of chunks of many sizes, some freed."""
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB)
    rng = random.Random(5)
    live = []
    for _ in range(3000):
        address = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, rng.randrange(1, 400),
                                          rng.choice(["Fred", "Recv", "Filt"]))
        if address:
            live.append(address)
        if live and rng.random() < 0.3:
            k.ExFreePool(live.pop(rng.randrange(len(live))))
    path = tmp_path_factory.mktemp("walk") / "walk.dmp"
    k.write_dump(path, "full")
    return path


@pytest.fixture(scope="module")
def window(walk_dump):
    """PAGES pages of a real nonpaged pool (bytes, address, finder) and their headers' offsets."""
    with DumpReader(walk_dump) as reader:
        pool = reader.pool_ranges()[0]
        finder = poolscan.PoolFinder(reader, pool, poolscan.BigPageIndex(reader.big_pages()))
        va, offset, count = next(run for run in finder.runs() if run[2] >= PAGES)
        data = bytearray(PAGES << 12)
        reader.read_file_into(offset, memoryview(data))
    headers = [(page << 12) + offset for page in range(PAGES)
               for offset in poolscan.valid_header_offsets(data, page << 12, pool.base_type) or ()]
    assert len(headers) > 10 * PAGES
    return Pages(bytes(data), va, finder, [offset >> 4 for offset in sorted(headers)])


class Pages(NamedTuple):
    data: bytes
    va: int
    finder: poolscan.PoolFinder
    headers: list  # block numbers of the headers of the pages' (valid) chains

    def __repr__(self):  # hypothesis prints the fixture beside a failing example
        return f"Pages({len(self.data)} bytes at {self.va:#x})"


def _found(pages):
    return [(page.va + (block << 4), page.salvaged) for page in pages for block in page.blocks]


damage = st.tuples(st.sampled_from(["header", "first", "any"]), st.integers(0, 10**6),
                   st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 11]),  # byte of the block
                   st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 0x20, 0x22, 0xFF])))


@FUZZ
@given(st.lists(damage, max_size=6), st.sampled_from(PATTERNS), st.booleans(), st.sampled_from([1, 3, 1 << 14]))
def test_the_walk_finds_what_the_page_by_page_search_finds(window, damages, pattern, plant, batch):
    original, va, finder, headers = window
    data = bytearray(original)
    for kind, index, byte, value in damages:
        block = {"header": headers[index % len(headers)], "first": (index % PAGES) << 8,  # a page's first
                 "any": index % (PAGES << 8)}[kind]
        data[(block << 4) + byte] = value
    if plant:  # a tag in a chunk's body: not a header
        block = (headers[len(headers) // 2] + 1) % (PAGES << 8)
        data[(block << 4) + 4:(block << 4) + 8] = b"derF"
    view = memoryview(data)
    regex = poolscan.tag_bytes_regex(pattern)
    plan = poolscan.search_plan(pattern)
    walker = poolscan.header_walk_regex(finder._allowed, regex.pattern)
    expected_corrupt: list = []
    expected = [hits for page in range(PAGES)
                if (hits := finder._search_page(data, view, va, page, regex, plan, expected_corrupt))]
    default, poolscan.STEP_BATCH = poolscan.STEP_BATCH, batch  # the walk's steps, a batch at a time
    try:
        corrupt: list = []
        walked = finder._search_window(data, view, va, PAGES, regex, plan, walker, corrupt)
        assert (_found(walked), corrupt) == (_found(expected), expected_corrupt)
        corrupt = []
        stepper = poolscan.header_step_regex(finder._allowed, regex.pattern)
        stepped = finder._search_window(data, view, va, PAGES, regex, plan, walker, corrupt, stepper)
        assert (_found(stepped), corrupt) == (_found(expected), expected_corrupt)
        corrupt = []
        searched = finder._search_candidates(data, view, va, regex, plan, walker, corrupt)
        assert (_found(searched), corrupt) == (_found(expected), expected_corrupt)
    finally:
        poolscan.STEP_BATCH = default


def test_a_sound_window_is_walked_in_one_stretch(window):
    """The common case, timed by `ntpool bench-dump`: all the tag's headers of sound pages come
    from one walk, and they are the headers the chains hold with that tag."""
    original, va, finder, headers = window
    data = bytearray(original)
    regex = poolscan.tag_bytes_regex("derF")
    walker = poolscan.header_walk_regex(finder._allowed, regex.pattern)
    pages = finder._search_window(data, memoryview(data), va, PAGES, regex, None, walker, [])
    assert len(pages) == 1 and pages[0].va == va and not pages[0].salvaged
    assert pages[0].blocks == [block for block in headers if data[(block << 4) + 4:(block << 4) + 8] == b"derF"]
    assert len(pages[0].blocks) > PAGES


def test_the_window_walk_takes_a_sound_window_at_once(window):
    """The fast walk (``header_step_regex``) answers a sound window by itself: the headers of
    the tag the chains hold, page-first ones included."""
    original, va, finder, headers = window
    data = bytearray(original)
    first = headers[0]  # the first page's first header: make it one of the tag
    data[(first << 4) + 4:(first << 4) + 8] = b"derF"
    regex = poolscan.tag_bytes_regex("derF")
    stepper = poolscan.header_step_regex(finder._allowed, regex.pattern)
    blocks = poolscan._step_pages(stepper, data, PAGES << 12)
    assert blocks == [block for block in headers if data[(block << 4) + 4:(block << 4) + 8] == b"derF"]
    assert blocks[0] == 0 and len(blocks) > PAGES
    walked, lanes = poolscan._step_walk(stepper, data, PAGES << 12)  # the same blocks, as lanes too
    assert walked == blocks and poolscan.lanes_list(lanes, len(blocks)) == blocks


def test_lanes_work_on_every_value_at_once():
    """``ulong_lanes``: values as 32-bit lanes of one integer, read back by ``lanes_list``; a
    shift then a mask of every lane shifts every value; ``lane_ones`` is right for any count,
    before and after a larger one; ``lanes_of_ones`` makes each 1 a mask of ones."""
    values = [0, 1, 2, 0xFFF, 0x1000, 0xFFFF, 12345, 0x0FFFFFFF, 0x10000000, 0xFFFFFFFF]
    lanes, ones = poolscan.ulong_lanes(values)
    count = len(values)
    assert poolscan.lanes_list(lanes, count) == values
    assert poolscan.lanes_list((lanes >> 4) & (ones * 0x0FFFFFFF), count) == [value >> 4 for value in values]
    assert poolscan.lanes_list(lanes & (ones * 0xFFF), count) == [value & 0xFFF for value in values]
    assert poolscan.lanes_list(poolscan.lanes_of_ones(ones, 32), count) == [0xFFFFFFFF] * count
    assert poolscan.lanes_list(poolscan.lanes_of_ones(ones, 31), count) == [0x7FFFFFFF] * count
    for wanted in (1, 3, 1000, 2, 0):
        assert poolscan.lanes_list(poolscan.lane_ones(wanted), wanted) == [1] * wanted
        assert poolscan.lane_ones(wanted) >> (32 * wanted) == 0


# Pages made from scratch: chains of chunks of random sizes, PoolTypes and tags, bodies of random
# bytes that may hold header-like blocks (a tag of the patterns, a PreviousSize of 0 or of the
# chunk's size), then damage to any byte. Hypothesis draws the seed, the sizes and the damage.
TAGS = [b"derF", b"vceR", b"der\xc6", b"dxrF", b"tliF"]


@st.composite
def made_pages(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    sizes = draw(st.lists(st.sampled_from([1, 2, 3, 5, 8, 17, 40, 255]), min_size=1, max_size=40))
    pages = draw(st.integers(1, 4))
    data = bytearray()
    for _ in range(pages):
        page = bytearray()
        previous = 0
        left = 256
        while left:
            size = min(left, rng.choice(sizes))
            body = bytearray(rng.randbytes((size << 4) - 8))
            for _ in range(rng.choice([0, 0, 1, 3])):  # header-like blocks inside the body
                if size > 1:
                    at = 8 + (rng.randrange(size - 1) << 4)
                    body[at:at + 8] = bytes([rng.choice([0, size, 1]), 0, rng.randrange(1, 4), 0]) + rng.choice(TAGS)
            pool_type = rng.choice([0, 0, 2, 2, 0x22] * 8 + [1])  # 1: a paged pool type, not of this pool
            page += bytes([previous, 0, size, pool_type]) + rng.choice(TAGS) + body
            previous = size
            left -= size
        data += page
    for at, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=3)):
        data[at] = value
    return data


# Orders in which the step walk tries chunk sizes (see poolscan.common_sizes): none, a few
# sizes the made pages hold, all of them backwards (the slowest order), and sizes they never hold.
SIZE_ORDERS = [(), (17, 1, 255), (255, 40, 17, 8, 5, 3, 2, 1), (4, 6, 7, 200)]
_steppers: dict = {}


def _stepper(allowed, regex, sizes):
    key = (allowed, regex.pattern, sizes)
    if key not in _steppers:
        _steppers[key] = poolscan.header_step_regex(allowed, regex.pattern, sizes)
    return _steppers[key]


@FUZZ
@given(made_pages(), st.sampled_from(["derF", "d?r*", "*F", "Zzzz", "tliF"]), st.sampled_from(SIZE_ORDERS))
def test_the_window_walk_equals_the_plain_walk_on_made_pages(window, data, pattern, sizes):
    """Whatever the bytes, the fast walk never invents or misses a hit: where it answers, its
    hits are the plain walk's (each page's chain checked one header at a time, then the tags);
    where a page's chain is not valid it does not answer, and the search as a whole still equals
    the page-by-page search. The order the walk tries chunk sizes in changes nothing."""
    finder = window.finder
    pages = len(data) >> 12
    regex = poolscan.tag_bytes_regex(pattern)
    stepper = _stepper(finder._allowed, regex, sizes)
    chains = [poolscan.valid_header_offsets(data, page << 12, 0) for page in range(pages)]
    blocks = poolscan._step_pages(stepper, data, len(data))
    if None in chains:
        assert blocks is None
    else:
        plain = [((page << 12) + offset) >> 4 for page in range(pages) for offset in sorted(chains[page])
                 if poolscan.tag_display_matches(regex, int.from_bytes(
                     data[(page << 12) + offset + 4:(page << 12) + offset + 8], "little"))]
        assert blocks == plain
    view = memoryview(data)
    plan = poolscan.search_plan(pattern)
    walker = poolscan.header_walk_regex(finder._allowed, regex.pattern)
    expected_corrupt: list = []
    expected = [hits for page in range(pages)
                if (hits := finder._search_page(data, view, 0, page, regex, plan, expected_corrupt))]
    corrupt: list = []
    found = finder._search_window(data, view, 0, pages, regex, plan, walker, corrupt, stepper)
    assert (_found(found), corrupt) == (_found(expected), expected_corrupt)


def test_the_walk_tries_first_the_sizes_the_pool_holds_most(walk_dump):
    """``common_sizes``: the BlockSizes of the chains of the pool's first pages, most found
    first (ties: the smaller first), at most COMMON_SIZES, counted as the plain walk counts."""
    with DumpReader(walk_dump) as reader:
        pool = reader.pool_ranges()[0]
        finder = poolscan.PoolFinder(reader, pool, poolscan.BigPageIndex(reader.big_pages()))
        counts: dict = {}
        taken = 0
        for _va, offset, count in finder.runs():
            for page in range(min(count, poolscan.SIZE_SAMPLE_PAGES - taken)):
                data = reader.mapping[offset + (page << 12):offset + ((page + 1) << 12)]
                for header in poolscan.valid_header_offsets(data, 0, 0) or ():
                    counts[data[header + 2]] = counts.get(data[header + 2], 0) + 1
            taken += min(count, poolscan.SIZE_SAMPLE_PAGES - taken)
            if taken == poolscan.SIZE_SAMPLE_PAGES:
                break
        expected = sorted(counts, key=lambda size: (-counts[size], size))[:poolscan.COMMON_SIZES]
        assert finder.common_sizes() == tuple(expected) and len(expected) > 3
        assert finder.searchers("derF")[4] is poolscan._searchers(finder._allowed, "derF", tuple(expected))[4]


def test_a_dump_that_fails_while_sizes_are_counted_keeps_the_order(walk_dump, monkeypatch):
    """Counting the sizes is for speed only: a read that fails there leaves the walk's order as
    it is (the scan meets the error where it reads that page)."""

    def failing(offset, view):
        raise DumpFormatError("truncated")

    with DumpReader(walk_dump) as reader:
        finder = poolscan.PoolFinder(reader, reader.pool_ranges()[0], poolscan.BigPageIndex(reader.big_pages()))
        monkeypatch.setattr(reader, "read_file_into", failing)
        assert finder.common_sizes() == ()
        with pytest.raises(DumpFormatError):
            finder.find("derF")


def test_a_walk_is_compiled_only_when_a_scan_uses_it(walk_dump):
    """Compiling a walk's regex takes milliseconds: a tag found nowhere compiles neither walk,
    a sound pool's dense tag only the step walk; ``searchers`` (before forked workers share a
    scan) compiles both."""
    with DumpReader(walk_dump) as reader:
        pool = reader.pool_ranges()[0]
        finder = poolscan.PoolFinder(reader, pool, poolscan.BigPageIndex(reader.big_pages()))
        poolscan._lazy_searchers.cache_clear()
        poolscan._searchers.cache_clear()
        assert finder.find("Qqqq") == []
        _every, _regex, _plan, walker, stepper = poolscan._lazy_searchers(finder._allowed, "Qqqq", finder.common_sizes())
        assert walker.regex is None and stepper.regex is None
        assert len(finder.find("*ceR")) > 50  # no literal byte at one place: walked everywhere
        _every, _regex, _plan, walker, stepper = poolscan._lazy_searchers(finder._allowed, "*ceR", finder.common_sizes())
        assert stepper.regex is not None and walker.regex is None
        compiled = finder.searchers("Qqqq")
        assert compiled[3] is poolscan._lazy_searchers(finder._allowed, "Qqqq", finder.common_sizes())[3].regex
        assert isinstance(compiled[3], re.Pattern) and isinstance(compiled[4], re.Pattern)
