"""The dump reader and kd on hostile files: a clear DumpFormatError or sane output, never a crash.

Set NTPOOL_FUZZ_EXAMPLES (e.g. 5000) for a longer run on demand.
"""

import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ntpool
from ntpool.debugger.pooltag import PoolTagDatabase
from ntpool.debugger.session import KdSession
from ntpool.dump import DumpFormatError, DumpReader
from ntpool.tags import display

MiB = 1 << 20
EXAMPLES = int(os.environ.get("NTPOOL_FUZZ_EXAMPLES", "60"))
COMMANDS = ("!analyze -v; !poolused 1; !poolfind derF; !poolfind ?erF 1; !poolfind * 1; !pool {a:x}; "
            "!poolval {a:x}")
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _dump(kind: str) -> tuple[bytes, int]:
    k = ntpool.Kernel(nonpaged_pool_bytes=64 * 1024, paged_pool_bytes=64 * 1024,
                      physical_memory_bytes=1 * MiB)
    p = [k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 50 + 20 * i, "Fred") for i in range(6)]
    k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 5000, "Bigg")
    try:
        # A protected allocation freed with another tag (only protected tags are compared).
        protected = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 40, 0x80000000 | 0x4F6F7073)
        k.ExFreePoolWithTag(protected, "Fred")
    except ntpool.BugCheck:
        pass
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "d.dmp")
        k.write_dump(path, kind)
        return open(path, "rb").read(), p[1]


DUMPS = {kind: _dump(kind) for kind in ("kernel", "full")}
POOLTAGS = PoolTagDatabase.default(environ={})


def _exercise(path, address: int) -> None:
    try:
        reader = DumpReader(path)
    except DumpFormatError as error:
        assert "\n" not in str(error)
        return
    with reader:
        session = KdSession(reader, POOLTAGS)
        out = session.execute(COMMANDS.format(a=address))
        assert isinstance(out, str)
        assert all(isinstance(piece, str) for piece in session.stream("!poolfind *"))  # as kd prints


mutation = st.tuples(st.integers(min_value=0, max_value=1 << 24), st.binary(min_size=1, max_size=16))


@FUZZ
@given(kind=st.sampled_from(sorted(DUMPS)),
       header_edits=st.lists(st.tuples(st.integers(0, 0x2100), st.binary(min_size=1, max_size=8)), max_size=6),
       edits=st.lists(mutation, max_size=6),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 21)))
def test_mutated_dumps_never_crash_the_reader_or_kd(tmp_path_factory, kind, header_edits, edits, cut):
    data, address = DUMPS[kind]
    raw = bytearray(data)
    for offset, patch in header_edits + edits:
        offset %= len(raw)
        raw[offset:offset + len(patch)] = patch
    if cut is not None:
        raw = raw[:cut]
    path = tmp_path_factory.mktemp("fuzz") / "m.dmp"
    path.write_bytes(bytes(raw))
    _exercise(path, address)


LYING_FIELDS = [(0x088, 4), (0x090, 8), (0x098, 8), (0x0A0, 8), (0x010, 8), (0x080, 8),
                (0x2020, 8), (0x2028, 8), (0x2030, 8), (0xF98, 4)]


@FUZZ
@given(kind=st.sampled_from(sorted(DUMPS)), field=st.sampled_from(LYING_FIELDS),
       value=st.one_of(st.integers(0, 1 << 64 - 1), st.sampled_from([0, 1, 2 ** 32 - 1, 2 ** 64 - 1, 2 ** 40])))
def test_lying_counts_and_offsets(tmp_path_factory, kind, field, value):
    data, address = DUMPS[kind]
    offset, size = field
    raw = bytearray(data)
    raw[offset:offset + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    path = tmp_path_factory.mktemp("lie") / "m.dmp"
    path.write_bytes(bytes(raw))
    _exercise(path, address)


def test_unmodified_fuzz_seeds_open(tmp_path):
    # The seeds the fuzzers mutate must themselves be good dumps that kd reads back: the
    # chunk at the address the fuzzers aim at, and the bug check the machine stopped with.
    for kind, (data, address) in DUMPS.items():
        assert data[:8] == b"PAGEDU64"
        path = tmp_path / f"{kind}.dmp"
        path.write_bytes(data)
        with DumpReader(path) as reader:
            out = KdSession(reader, POOLTAGS).execute(f"!pool {address:x}; .bugcheck")
        assert f"*{address - 16:016x} size:   60 previous size:   70  (Allocated) *derF" in out
        assert "Bugcheck code 000000C2" in out
        assert "Arguments 00000000`0000000a" in out  # 0x0A: freed with the wrong tag


@pytest.mark.parametrize("kind", sorted(DUMPS))
def test_a_lying_page_count_is_refused(tmp_path, kind):
    data, _ = DUMPS[kind]
    raw = bytearray(data)
    if kind == "full":
        raw[0x0A0:0x0A8] = (10 ** 9).to_bytes(8, "little")  # Run[0].PageCount
    else:
        raw[0x2028:0x2030] = (10 ** 9).to_bytes(8, "little")  # present pages
    path = tmp_path / "m.dmp"
    path.write_bytes(bytes(raw))
    with pytest.raises(DumpFormatError, match="truncated|promise"):
        DumpReader(path)


def test_page_tables_that_point_at_themselves_do_not_hang(tmp_path):
    """Every PML4 entry made a self-reference and the pool range the whole kernel half."""
    data, _ = DUMPS["full"]
    raw = bytearray(data)
    header_end = 0x2000
    dtb = int.from_bytes(raw[0x10:0x18], "little")
    entry = (dtb | 0x3).to_bytes(8, "little")
    raw[header_end + dtb:header_end + dtb + 4096] = entry * 512
    path = tmp_path / "loop.dmp"
    path.write_bytes(bytes(raw))
    with DumpReader(path) as reader:
        pages = list(reader.mapped_pages(0xFFFF800000000000, 0xFFFFFFFFFFFFF000))
        assert len(pages) <= 512


@FUZZ
@given(compressed=st.one_of(st.binary(max_size=64),
                            st.builds(lambda raw, at, junk: _damaged(zlib.compress(raw), at, junk),
                                      st.binary(max_size=4096), st.integers(0, 1 << 12),
                                      st.binary(min_size=1, max_size=8))),
       blocks=st.integers(0, 1 << 12),
       reads=st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 600)), max_size=8))
def test_a_hostile_site_map_stream_gives_short_reads_or_zlib_error(compressed, blocks, reads):
    from ntpool.dump.reader import SiteMapStream

    stream = SiteMapStream(compressed, blocks)
    for first, count in reads:
        try:
            raw = stream.read(first, count)
        except zlib.error:
            continue
        assert len(raw) % 2 == 0 and len(raw) <= 2 * max(0, min(count, blocks - first))


@FUZZ
@given(compressed=st.one_of(st.binary(max_size=64),
                            st.builds(lambda raw, at, junk: _damaged(zlib.compress(raw), at, junk),
                                      st.binary(max_size=4096), st.integers(0, 1 << 12),
                                      st.binary(min_size=1, max_size=8))),
       units=st.integers(0, 1 << 12), width=st.sampled_from([1, 2]),
       reads=st.lists(st.tuples(st.integers(0, 1 << 13), st.integers(0, 600)), max_size=8))
def test_a_hostile_unit_site_map_gives_short_reads_or_zlib_error(compressed, units, width, reads):
    """NTA2's per-unit map (its CRC made right, as a forger would): reads by block are short
    or zlib.error, and a window's sites are whole or None, never anything else."""
    from ntpool.dump.reader import UnitSiteMapStream

    stream = UnitSiteMapStream(compressed, units, width, zlib.crc32(compressed))
    stream.check()
    for first, count in reads:
        try:
            raw = stream.read(first, count)
            sites = stream.sites(first, count)
        except zlib.error:
            continue
        assert len(raw) % 2 == 0 and len(raw) <= 2 * max(0, min(count, 2 * units - first))
        assert sites is None or len(sites) == count


@FUZZ
@given(header=st.binary(min_size=8, max_size=8), entries=st.binary(max_size=96), tail=st.binary(max_size=64),
       v2=st.booleans())
def test_a_hostile_site_table_parses_or_is_refused(header, entries, tail, v2):
    """Any bytes as an allocation-site table (NTAS or NTA2 magic): parsed into streams that
    read safely, or refused with the errors the reader catches."""
    import struct

    from ntpool.dump import format as f
    from ntpool.dump.reader import _parse_site_tables

    raw = (f.ALLOCATION_SITES_V2_MAGIC if v2 else f.ALLOCATION_SITES_MAGIC) + header[4:] + entries + tail
    try:
        tables = _parse_site_tables(raw)
    except (struct.error, ValueError):
        return
    for _base, blocks, stream in tables:
        try:
            stream.check()
            stream.read(0, min(blocks, 1 << 12))
        except zlib.error:
            pass


def _damaged(data: bytes, at: int, junk: bytes) -> bytes:
    at %= max(len(data), 1)
    return data[:at] + junk + data[at + len(junk):]


def _table_entry(reader, kind: int, value: int) -> int:
    """A page-table entry: absent, a frame the dump holds (present or not), or anything."""
    if kind == 0:
        return 0
    if kind == 3:
        return value
    run = reader.runs[value % len(reader.runs)]
    if value & 2:
        pfn = run.first + (value >> 8) % (run.count + 2)  # now and then just past the run
    else:  # a stretch that may run over the run's end
        pfn = max(run.first, run.first + run.count - (value >> 8) % 40)
    return pfn << 12 | (0x63 if kind == 1 else 0x62) | (value & 1) << 63


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 64 - 1),
                          st.one_of(st.integers(1, 40), st.integers(100, 512))),  # long: a few stretches
                min_size=1, max_size=40), st.integers(0, 511), st.integers(1, 512))
def test_a_page_table_s_runs_are_its_present_entries_the_dump_holds(pieces, first, last):
    """The runs one page table yields, page by page, are exactly its present entries whose
    frame the dump holds, each at the offset frame_offset gives (stretches of entries that
    follow on, some running past what the dump holds, between others of any kind), whether
    the stretches are found from the table's bytes or cut entry by entry."""
    import struct

    data, _ = DUMPS["full"]
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "d.dmp")
        open(path, "wb").write(data)
        with DumpReader(path) as reader:
            entries = []
            for kind, value, length in pieces:
                entry = _table_entry(reader, kind, value)
                entries += [entry + (step << 12 if kind in (1, 2) else 0) for step in range(length)]
            entries = tuple((entries * (512 // len(entries) + 1))[:512])
            base = 0xFFFFFA8000000000
            start, end = base + (first << 12), base + (max(first + 1, last) << 12)
            runs = {raw: [(va + (page << 12), offset + (page << 12))
                          for va, offset, count in reader._page_table_runs(entries, base, first, start, end, raw)
                          for page in range(count)]
                    for raw in (b"", struct.pack("<512Q", *entries))}  # with the table's bytes: its stretches
            expected = []
            for index in range(first, max(first + 1, last)):
                entry = entries[index]
                offset = reader.frame_offset((entry & 0x000FFFFFFFFFF000) >> 12) if entry & 1 else None
                if offset is not None:
                    expected.append((base + (index << 12), offset))
            assert list(runs.values()) == [expected, expected]


# --- found by python -m ntpool.cli.dump_fuzz ---------------------------------------------------

def test_tab_completion_on_a_dump_without_debugger_data_offers_nothing(tmp_path):
    """kd's completion of a driver name reads the module list through KDBG: a dump whose
    KdDebuggerDataBlock leads nowhere offers no names (it raised DumpFormatError into the prompt)."""
    from ntpool.cli.kd import completion_words
    from ntpool.dump import format as f

    raw = bytearray(DUMPS["kernel"][0])
    raw[f.OFF_KD_DEBUGGER_DATA_BLOCK:f.OFF_KD_DEBUGGER_DATA_BLOCK + 8] = bytes(8)
    path = tmp_path / "m.dmp"
    path.write_bytes(bytes(raw))
    with DumpReader(path) as reader:
        session = KdSession(reader, POOLTAGS)
        for line in ("", "!verifier 3 ", "!poolfind ", "!poolused ", "!pool ", "dt "):
            assert isinstance(completion_words(session, line), list)
        assert completion_words(session, "!verifier 3 ") == []


def _forged(tmp_path, fields: dict, name: str = "forged.dmp"):
    """A 16 MiB full dump with a 1 GiB large page forged in its page tables (every frame from
    0 mapped at FORGED_VA, as a hostile file may map them) and ``fields`` of the NTPL block
    (offset -> value) rewritten: tables as large as the file could hold, all of them readable."""
    import struct

    path = tmp_path / name
    if not (tmp_path / "big.dmp").exists():
        k = ntpool.Kernel(nonpaged_pool_bytes=256 * 1024, paged_pool_bytes=256 * 1024,
                          physical_memory_bytes=16 * MiB)
        k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Fred")
        k.write_dump(tmp_path / "big.dmp", "full")
    raw = bytearray((tmp_path / "big.dmp").read_bytes())
    with DumpReader(tmp_path / "big.dmp") as reader:
        pml4 = reader.frame_offset(reader.directory_table_base >> 12)
        pxe = struct.unpack_from("<Q", raw, pml4 + ((FORGED_VA >> 39) & 0x1FF) * 8)[0]
        pdpt = reader.frame_offset((pxe & 0x000FFFFFFFFFF000) >> 12)
        edits = {pdpt + ((FORGED_VA >> 30) & 0x1FF) * 8: 0x83 | 0x63}  # present, writable, 1 GiB
        ntpl = struct.unpack("<Q", reader.read(reader.kd_debugger_data_block, 8))[0]
        for offset, value in fields.items():  # offsets of the NTPL block (format's NTPL_*)
            pa = reader.translate(ntpl + offset)
            edits[reader.frame_offset(pa >> 12) + (pa & 0xFFF)] = value
    for at, value in edits.items():
        raw[at:at + 8] = value.to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    return path


FORGED_VA = 0xFFFFF80040000000


@pytest.mark.parametrize("table", ["tracker", "big", "verifier", "call sites"])
def test_tables_claiming_more_than_a_kernel_keeps_are_refused(tmp_path, table):
    """Found by the dump fuzzer: each table's size was checked only against the file's size,
    so a 1 GiB dump (a forged large page making the whole file readable as the table) made kd
    build tens of millions of entries: 1.6 to 4.8 GB resident, 8 to 100 s. Here on 16 MiB."""
    from ntpool.dump import format as f

    size = 16 * MiB
    fields = {"tracker": {f.NTPL_POOL_TRACK_TABLE_SIZE: size // 0x28 - 64},
              "big": {f.NTPL_POOL_BIG_PAGE_TABLE: FORGED_VA, f.NTPL_POOL_BIG_PAGE_TABLE_SIZE: size // 0x18 - 64},
              "verifier": {f.NTPL_VERIFIER_TRACK_TABLE: FORGED_VA, f.NTPL_VERIFIER_TRACK_COUNT: size // 24 - 64},
              "call sites": {f.NTPL_CALL_SITE_TABLE: FORGED_VA, f.NTPL_CALL_SITE_TABLE_BYTES: size - 0x40000}}[table]
    path = _forged(tmp_path, fields)
    if table == "tracker":  # KDBG's PoolTrackTable is the one read: rewritten through the file
        import struct

        with DumpReader(path) as reader:
            pa = reader.translate(reader.kd_debugger_data_block + f.KDBG_POOL_TRACK_TABLE)
            at = reader.frame_offset(pa >> 12) + (pa & 0xFFF)
        raw = bytearray(path.read_bytes())
        raw[at:at + 8] = struct.pack("<Q", FORGED_VA)
        path.write_bytes(bytes(raw))
    with DumpReader(path) as reader:
        read = {"tracker": reader.tracker_entries, "big": reader.big_pages,
                "verifier": reader.verifier_tracking, "call sites": reader.call_sites}[table]
        with pytest.raises(DumpFormatError, match="ntpool reads"):
            read()
        out = KdSession(reader, POOLTAGS).execute("!poolused; !poolfind Fred; !verifier 3; lm")
        assert "ntpool reads" in out


def test_the_tracker_table_is_read_once(tmp_path):
    """!poolused, poolmon and kd's completion each ask for the tracker's entries: a table at
    the limit (65,537 slots) read anew for each took seconds apiece (found by the fuzzer)."""
    path = tmp_path / "d.dmp"
    path.write_bytes(DUMPS["kernel"][0])
    with DumpReader(path) as reader:
        entries = reader.tracker_entries()
        assert entries and reader.tracker_entries() is entries
        assert {display(e.Key) for e in entries} >= {"derF", "ggiB"}  # as kd shows a Python str tag


def test_a_zeroed_big_page_table_holds_no_allocations(tmp_path):
    """A big page table entry whose Va is 0 is no allocation (ntpool marks free slots with bit
    0; a zeroed table read as 512 allocations at address 0 before)."""
    from ntpool.dump import format as f

    path = _forged(tmp_path, {f.NTPL_POOL_BIG_PAGE_TABLE: FORGED_VA + 0x800000,
                              f.NTPL_POOL_BIG_PAGE_TABLE_SIZE: 512})
    with DumpReader(path) as reader:
        assert reader.read(FORGED_VA + 0x800000, 512 * 0x18) == bytes(512 * 0x18)  # frames the machine never used
        assert reader.big_pages() == []


def test_a_call_site_text_that_runs_on_is_refused_without_copying_the_table():
    """Each site's text was split off the table's whole tail (a copy per site): a table of
    many sites whose text runs on for megabytes took quadratic time and memory."""
    from ntpool.drivers import CALL_SITE_ENTRY, CALL_SITE_HEADER, CALL_SITE_TABLE_MAGIC, parse_call_site_table

    count = 4096
    text_at = CALL_SITE_HEADER.size + count * CALL_SITE_ENTRY.size
    table = CALL_SITE_HEADER.pack(CALL_SITE_TABLE_MAGIC, count, CALL_SITE_ENTRY.size, 0) + \
        b"".join(CALL_SITE_ENTRY.pack(0, i, i, text_at) for i in range(count)) + b"f" * (4 << 20) + b"\0x.c\0"
    with pytest.raises(ValueError, match="not terminated within"):
        parse_call_site_table(table)
    shared = table[:text_at] + b"Handler\0sloppy.c\0"
    sites = parse_call_site_table(shared)
    assert len(sites) == count and sites[5] == (0, 5, 5, "Handler", "sloppy.c")
    assert sites[0][3] is sites[1][3]  # one string for the sites that share a text


@FUZZ
@given(count=st.integers(0, 64), entries=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                                                          st.integers(0, 2**32 - 1), st.integers(0, 600)),
                                                max_size=64),
       text=st.binary(max_size=512), entry_size=st.sampled_from([24, 23, 0, 2**32 - 1]))
def test_any_call_site_table_parses_or_is_refused(count, entries, text, entry_size):
    """Any NTCS table: sites whose texts come from the table (each at most the window), or
    ValueError; never another error."""
    from ntpool.drivers import (CALL_SITE_ENTRY, CALL_SITE_HEADER, CALL_SITE_TABLE_MAGIC, CALL_SITE_TEXT_WINDOW,
                                parse_call_site_table)

    table = CALL_SITE_HEADER.pack(CALL_SITE_TABLE_MAGIC, count, entry_size, 0) + \
        b"".join(CALL_SITE_ENTRY.pack(*entry) for entry in entries) + text
    try:
        sites = parse_call_site_table(table)
    except ValueError:
        return
    assert len(sites) == count
    for _ldr, _address, _line, function, filename in sites:
        assert len(function.encode("utf-8", "replace")) <= 3 * CALL_SITE_TEXT_WINDOW
        assert len(filename) <= CALL_SITE_TEXT_WINDOW


def _peak_bytes(action) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_allocation_site_table_of_anything_else_costs_its_magic(tmp_path):
    """Found by the dump fuzzer: a table pointer and size (up to 64 MiB) aimed at anything
    were read whole before the magic was looked at (220 MiB resident on a 256 MiB dump)."""
    from ntpool.dump import format as f

    path = _forged(tmp_path, {f.NTPL_ALLOCATION_SITES: FORGED_VA, f.NTPL_ALLOCATION_SITES_BYTES: 12 * MiB})
    with DumpReader(path) as reader:
        assert _peak_bytes(reader.allocation_site_streams) < MiB
        assert reader.allocation_site_streams() == []

