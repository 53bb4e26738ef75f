"""``!poolfind`` reads a pool a window at a time and prints as it goes: the text must not
depend on the window size, the streamed pieces must be the command's text, and the
allocation-site map is read forward in pieces exactly as a whole inflate reads it."""

import io
import random
import zlib

import pytest

import ntpool
from ntpool.cli.kd import run_script
from ntpool.debugger import poolscan
from ntpool.debugger.session import KdSession
from ntpool.dump import layout
from ntpool.dump.reader import DumpReader, SiteMapStream, UnitSiteMapStream

MiB = 1 << 20
NP, PP = ntpool.PoolType.NonPagedPool, ntpool.PoolType.PagedPool


def churned_kernel(seed: int) -> ntpool.Kernel:
    """A machine of 2 MiB pools after 6,000 steps of allocations of three tags (two in three
    nonpaged), four in ten followed by a free of a random live one, and a big allocation
    every 1,000: many pages of mixed chunks, free and in use, in both pools."""
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB)
    rng = random.Random(seed)
    live = []
    for step in range(6000):
        pool = NP if step % 3 else PP
        address = k.ExAllocatePoolWithTag(pool, rng.randrange(8, 900), rng.choice(["Fred", "Recv", "Filt"]))
        if address:
            live.append(address)
        if live and rng.random() < 0.4:
            k.ExFreePool(live.pop(rng.randrange(len(live))))
        if step % 1000 == 0:
            k.ExAllocatePoolWithTag(NP, 3 * 4096, "Bigg")
    return k


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    k = churned_kernel(7)
    folder = tmp_path_factory.mktemp("stream")
    path = folder / "stream.dmp"
    k.write_dump(path, "full")
    default, layout.SITE_TABLE_VERSION = layout.SITE_TABLE_VERSION, 1  # as dumps before NTA2
    try:
        k.write_dump(folder / "stream-v1.dmp", "full")
    finally:
        layout.SITE_TABLE_VERSION = default
    return path


@pytest.fixture(params=["NTA2", "NTAS"])
def either_dump(dump, request):
    """The same machine's dump with each version of the allocation-site table."""
    return dump if request.param == "NTA2" else dump.with_name("stream-v1.dmp")


COMMANDS = ["!poolfind * 0", "!poolfind * 1", "!poolfind derF 0", "!poolfind ?ec* 1", "!poolfind Filt"]


def test_the_text_does_not_depend_on_the_window(dump, monkeypatch):
    with DumpReader(dump) as reader:
        whole = {command: KdSession(reader).run_one(command) for command in COMMANDS}
    assert whole["!poolfind * 0"].count("Allocated by") > 1000  # many chunks, with their sites
    for pages in (1, 3):
        monkeypatch.setattr(poolscan, "WINDOW_PAGES", pages)
        with DumpReader(dump) as reader:
            session = KdSession(reader)
            for command in COMMANDS:
                pieces = list(session.stream(command))
                assert len(pieces) > 10  # printed as it goes, not at the end
                assert "".join(pieces) == whole[command] == session.run_one(command)


def chunk_lines(reader, session, chunks, corrupt_page: bool = False) -> list[str]:
    """The lines `!poolfind` should print for ``chunks``, made one chunk at a time with the
    reader's own per-chunk site lookup (``corrupt_page``: chunks salvaged from a page whose
    header chain is not sound, each line marked so)."""
    lines = []
    for chunk in chunks:
        state = f"({chunk.state})"
        mark = f"  (corrupt page: see !poolval {chunk.address:x})" if corrupt_page else ""
        lines.append(f"{chunk.address:016x} size: {chunk.size:4x} previous size: "
                     f"{chunk.previous_size << 4:4x}  {state:<12} {ntpool.tags.display(chunk.tag)}{mark}")
        if chunk.state == "Allocated" and not chunk.pool_type & 0x8:
            text = session._site_text(reader.allocation_site(chunk.address))
            if text:
                lines.append(f"\t\tAllocated by {text}")
    return lines


def test_each_chunk_line_is_what_the_chunk_says(dump):
    """Every line `!poolfind *` prints, rebuilt from the chunks PoolFinder.find returns and the
    reader's own per-chunk site lookup: the cached texts change nothing."""
    with DumpReader(dump) as reader:
        session = KdSession(reader)
        pool = reader.pool_ranges()[0]
        finder = poolscan.PoolFinder(reader, pool, session.big_pages())
        expected = chunk_lines(reader, session, finder.find("*"))
        text = session.run_one("!poolfind * 0")
        listed = text.split("for Tag: *\n\n", 2)[2].split("\n")
        assert listed == expected


@pytest.mark.parametrize("pattern", ["derF", "?ceR", "tli*"])
def test_each_line_of_a_tag_s_search_is_what_the_chunk_says(dump, pattern):
    """A tag's lines (made a stretch of pages at a time, see HitLines._stretch), rebuilt from
    the chunks of every chain with that tag and the reader's own per-chunk site lookup."""
    with DumpReader(dump) as reader:
        session = KdSession(reader)
        regex = poolscan.tag_bytes_regex(pattern)
        for pool_type, pool in enumerate(reader.pool_ranges()):
            finder = poolscan.PoolFinder(reader, pool, session.big_pages())
            expected = chunk_lines(reader, session, (chunk for chunk in finder.find("*")
                                                     if poolscan.tag_display_matches(regex, chunk.tag)))
            text = session.run_one(f"!poolfind {pattern} {pool_type}")
            listed = text.split(f"for Tag: {pattern}\n\n", 2)[2].split("\n")
            assert listed == expected and len(expected) > 100


def test_kd_writes_the_pieces_as_they_come(dump):
    with DumpReader(dump) as reader:
        session = KdSession(reader)
        out = io.StringIO()
        run_script(session, "!poolfind * 1; !poolused 2", out)
        assert out.getvalue() == session.run_one("!poolfind * 1") + "\n" + session.run_one("!poolused 2") + "\n"


def test_the_site_map_streams_forward_and_restarts_backward():
    rng = random.Random(3)
    raw = bytes(rng.choice([0, 0, 0, 5, 7, 200]) for _ in range(300_001))
    compressed = zlib.compress(raw)
    blocks = len(raw) // 2
    stream = SiteMapStream(compressed, blocks)
    stream.check()
    assert stream.read(0, blocks) == raw[:2 * blocks]
    for _ in range(300):
        first, count = rng.randrange(blocks + 10), rng.randrange(3000)
        assert stream.read(first, count) == raw[2 * first:2 * min(first + count, blocks)]
    short = SiteMapStream(compressed, blocks + 100)  # the map holds fewer than it declares
    assert short.read(blocks - 2, 50) == raw[2 * (blocks - 2):2 * blocks]
    with pytest.raises(zlib.error):
        SiteMapStream(compressed[:100] + b"\xff" * 64 + compressed[164:], blocks).check()


@pytest.mark.parametrize("pattern", ["?ceR", "??iF", "???F", "v*", "?l*", "*R", "d?r*"])
def test_wildcard_searches_find_what_the_walk_finds(dump, pattern):
    """Raw-byte searches led by a literal tag byte at any place, and the tags-only search
    (``*R``), keep exactly the headers the walk of every chain finds with that tag."""
    with DumpReader(dump) as reader:
        big = poolscan.BigPageIndex(reader.big_pages())
        regex = poolscan.tag_bytes_regex(pattern)
        for pool in reader.pool_ranges():
            every = poolscan.PoolFinder(reader, pool, big).find("*")
            found = poolscan.PoolFinder(reader, pool, big).find(pattern)
            assert found and found == [c for c in every if poolscan.tag_display_matches(regex, c.tag)]


def test_a_match_straddling_two_places_does_not_hide_a_tag():
    data = bytearray(64)
    data[1:8] = b"aaaaaaa"  # "aaaa" at 1 (not a tag) overlaps the tag at 4
    data[36:40] = b"aaaa"
    for pattern in ("aaaa", "?aaa", "*a"):
        plan = poolscan.search_plan(pattern)
        assert poolscan.tag_blocks(poolscan.tag_bytes_regex(pattern), data, plan) == [0, 2], pattern
    assert poolscan.search_plan("*a") is None  # the tags alone are searched


def test_site_lookups_in_any_order_read_the_whole_map_s_values(either_dump):
    """allocation_site keeps only a piece of the map: lookups backwards and forwards, across
    pieces and tables, give what the whole inflated map says."""
    with DumpReader(either_dump) as reader:
        tables = reader.allocation_site_streams()
        whole = [(base, stream.copy().read(0, blocks)) for base, blocks, stream in tables]
        assert len(whole) == 2 and all(len(sites) > 2 * (1 << 14) for _, sites in whole)
        rng = random.Random(11)
        queries = [(base, rng.randrange(len(sites) // 2)) for base, sites in whole for _ in range(300)]
        rng.shuffle(queries)
        for base, index in queries:
            expected = dict(whole)[base][2 * index:2 * index + 2]
            assert reader.allocation_site(base + 16 * index) == int.from_bytes(expected, "little")
        assert reader.allocation_site(whole[0][0] - 16) is None


def test_both_versions_of_the_site_table_give_the_same_text(dump):
    """A dump written before the NTA2 table (NTAS: a USHORT per block) is read as before: every
    command's text, sites included, is the same from either version of the same machine."""
    texts = []
    for path in (dump, dump.with_name("stream-v1.dmp")):
        with DumpReader(path) as reader:
            magic = reader.read(reader.debugger_data()["AllocationSites"], 4)
            texts.append((magic, [KdSession(reader).run_one(command) for command in COMMANDS]))
    assert [magic for magic, _ in texts] == [b"NTA2", b"NTAS"]
    assert texts[0][1] == texts[1][1]
    assert texts[0][1][0].count("Allocated by") > 1000


def test_the_unit_map_reads_by_block_as_the_block_map_does():
    """NTA2's map (a site per 32-byte unit, a byte or a USHORT each) read by block, from any
    block and in any order, is NTAS's map of the same sites (each unit's site for both of its
    blocks); a stream shorter than it declares gives what it holds."""
    rng = random.Random(5)
    for width in (1, 2):
        units = [rng.choice([0, 0, 0, 5, 7, 200, 300 if width == 2 else 201]) for _ in range(100_001)]
        per_unit = b"".join(unit.to_bytes(width, "little") for unit in units)
        blocks = b"".join(unit.to_bytes(2, "little") * 2 for unit in units)
        compressed = zlib.compress(per_unit)
        stream = UnitSiteMapStream(compressed, len(units), width, zlib.crc32(compressed))
        stream.check()
        assert stream.read(0, 2 * len(units)) == blocks
        for _ in range(300):
            first, count = rng.randrange(2 * len(units) + 10), rng.randrange(3000)
            assert stream.read(first, count) == blocks[2 * first:2 * min(first + count, 2 * len(units))]
            sites = stream.sites(first, count)
            if first + count <= 2 * len(units):
                assert list(sites) == [int.from_bytes(blocks[2 * b:2 * b + 2], "little")
                                       for b in range(first, first + count)]
            else:
                assert sites is None
        short = UnitSiteMapStream(compressed, len(units) + 50, width, zlib.crc32(compressed))
        assert short.read(2 * len(units) - 4, 50) == blocks[-8:]
        with pytest.raises(zlib.error):  # damage is found by the CRC, without inflating
            UnitSiteMapStream(compressed[:100] + b"\xff" * 64 + compressed[164:], len(units), width,
                              zlib.crc32(compressed)).check()


def test_a_hostile_unit_map_costs_the_sites_not_the_reader(dump, tmp_path):
    """An NTA2 map whose CRC is right but whose stream is not zlib: no sites (the headers'
    AllocatorBackTraceIndex, here 0), and no exception, for the scan or a single lookup."""
    data = bytearray(dump.read_bytes())
    with DumpReader(dump) as reader:
        _, _, stream = reader.allocation_site_streams()[0]
        at = data.find(stream.compressed)
        first = reader.pool_ranges()[0].start
    assert at > 0
    garbage = bytes(random.Random(1).randrange(256) for _ in range(len(stream.compressed) - 64))
    forged = stream.compressed[:64] + garbage
    data[at:at + len(forged)] = forged
    entry = data.find(stream.crc.to_bytes(4, "little"), at - 4096, at)
    assert entry > 0
    data[entry:entry + 4] = zlib.crc32(forged).to_bytes(4, "little")
    path = tmp_path / "hostile.dmp"
    path.write_bytes(data)
    with DumpReader(path) as reader:
        session = KdSession(reader)
        text = session.run_one("!poolfind * 0")
        assert "size:" in text and "Traceback" not in text
        assert reader.allocation_site(first + 16 * 1000) in (None, 0)


@pytest.mark.parametrize("va", [0xFFFFFA8000000000, 0xFFFFFA80FFFFF000, 0xFFFFFA80FFFFE000, 0x1000, 0xFFFFFFFFFFFFE000])
def test_a_stretch_s_lines_have_every_address_s_sixteen_digits(dump, va):
    """A stretch's addresses are made from its top 8 hex digits and each chunk's low 8
    (``HitLines._stretch``); a stretch that crosses a multiple of 4 GiB is formatted whole.
    Either way each line is the address as 16 hex digits, then the chunk's text."""
    from ntpool.debugger.session import HitLines, _first_eight_bytes

    data = bytearray(3 * 4096)
    blocks = [0, 5, 255, 256, 300, 511, 512, 700]
    for number, block in enumerate(blocks):  # headers of three sizes, allocated and free
        data[block << 4:(block << 4) + 8] = bytes([1, 0, 1 + number % 3, 2 * (number % 2), *b"derF"])
    sites = bytes(unit % 7 for unit in range(len(data) >> 5))  # a few call-site numbers
    with DumpReader(dump) as reader:
        lines = HitLines(KdSession(reader))
        page = poolscan.PageHits(va, 0, blocks, False)
        text = lines._stretch(page, _first_eight_bytes(data), sites, 1)
        heads = _first_eight_bytes(data)
        expected = "".join(f"\n{va + (block << 4):016x}{lines.site_texts[sites[block >> 1]][heads[block]]}"
                           for block in blocks)
    assert text == expected and text.count("(Allocated)") == 4 and "Allocated by" in text


def test_a_long_read_is_the_pages_read_one_by_one(dump):
    """``DumpReader.read`` of many pages takes them a run at a time: the same bytes as page by
    page, from any offset; and where a page is not mapped, the same MemoryReadError, naming
    the first address it could not read."""
    from ntpool.dump.reader import BULK_READ_BYTES, MemoryReadError

    with DumpReader(dump) as reader:
        pool = reader.pool_ranges()[0]
        stretches = []  # [va, pages] mapped one after the other in memory (the file may hold them apart)
        for run_va, _offset, pages in reader.mapped_runs(pool.start, pool.end):
            if stretches and stretches[-1][0] + (stretches[-1][1] << 12) == run_va:
                stretches[-1][1] += pages
            else:
                stretches.append([run_va, pages])
        va, count = max(stretches, key=lambda stretch: stretch[1])
        assert count << 12 >= 2 * BULK_READ_BYTES
        for start, size in ((va, count << 12), (va + 0x123, BULK_READ_BYTES + 77), (va + 4096, BULK_READ_BYTES)):
            one_by_one = b"".join(reader.read(at, min(4096 - (at & 0xFFF), start + size - at))
                                  for at in sorted({start, *range((start | 0xFFF) + 1, start + size, 4096)}))
            assert reader.read(start, size) == one_by_one and len(one_by_one) == size
        last = stretches[-1][0] + (stretches[-1][1] << 12)  # past the pool's last mapped page
        with pytest.raises(MemoryReadError):
            reader.page(last)
        for start in (last - 8192, last - 4096 - 5):
            with pytest.raises(MemoryReadError) as error:
                reader.read(start, BULK_READ_BYTES)
            assert error.value.address == last
