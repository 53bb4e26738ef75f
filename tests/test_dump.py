"""Crash dumps: the file format third-party readers open, the layout in memory, atomicity."""

import os
import struct
from types import SimpleNamespace

import pytest

import ntpool
from ntpool.dump import DumpReader, write_dump
from ntpool.dump import format as f
from ntpool.tags import from_display

MiB = 1 << 20
KINDS = ("full", "kernel")


def small_kernel(**kwargs):
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, **kwargs)


@pytest.fixture
def crashed(tmp_path):
    """A machine with small, big and paged allocations that bug-checked on a free of a user-mode
    address (0xC2/0x40; an unprotected tag mismatch is not checked on Windows 7)."""
    k = small_kernel()
    small = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 100, "Fred")
    paged = k.ExAllocatePoolWithTag(ntpool.PoolType.PagedPool, 300, "Pgd1")
    big = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 3 * 4096, "Bigg")
    k.write(small, b"hello pool")
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePoolWithTag(0x10000, "Barn")
    return SimpleNamespace(k=k, small=small, paged=paged, big=big, dir=tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_kdmp_parser_reads_a_live_allocation_header_and_tag(crashed, kind):
    kdmp_parser = pytest.importorskip("kdmp_parser")
    path = crashed.k.write_dump(crashed.dir / f"{kind}.dmp", kind)
    dump = kdmp_parser.KernelDumpParser(path)
    assert dump.type == (kdmp_parser.DumpType.FullDump if kind == "full" else kdmp_parser.DumpType.BMPDump)
    page = dump.read_virtual_page(crashed.small & ~0xFFF)
    offset = crashed.small & 0xFFF
    header = bytes(page[offset - 16:offset])
    assert header[4:8] == b"derF"
    assert header[2] == 8 and header[3] == 0x2  # BlockSize (100 + 31) // 16, nonpaged in use
    assert bytes(page[offset:offset + 10]) == b"hello pool"
    paged_page = dump.read_virtual_page(crashed.paged & ~0xFFF)
    assert bytes(paged_page[(crashed.paged & 0xFFF) - 12:(crashed.paged & 0xFFF) - 8]) == b"1dgP"
    assert dump.directory_table_base == crashed.k.space.cr3 << 12


def _volatility_layers(path):
    from volatility3.framework import contexts
    from volatility3.framework.layers import crash, intel, physical

    ctx = contexts.Context()
    ctx.config["file.location"] = "file://" + os.fspath(path)
    ctx.layers.add_layer(physical.FileLayer(ctx, "file", "file"))
    ctx.config["crash.base_layer"] = "file"
    layer = crash.WindowsCrashDump64Layer(ctx, "crash", "crash")
    ctx.layers.add_layer(layer)
    ctx.config["intel.memory_layer"] = "crash"
    ctx.config["intel.page_map_offset"] = layer.dtb
    virtual = intel.WindowsIntel32e(ctx, "intel", "intel", metadata={"os": "Windows"})
    ctx.layers.add_layer(virtual)
    return layer, virtual


@pytest.mark.parametrize("kind", KINDS)
def test_volatility_opens_the_dump_with_the_right_bug_check(crashed, kind):
    pytest.importorskip("volatility3")
    from volatility3.framework.automagic.windows import Intel64LayerCheck

    path = crashed.k.write_dump(crashed.dir / f"{kind}.dmp", kind)
    layer, virtual = _volatility_layers(path)
    header = layer.get_header()
    assert header.BugCheckCode == 0xC2
    assert list(header.BugCheckCodeParameter) == list(crashed.k.bugcheck.parameters)
    assert header.DumpType == (1 if kind == "full" else 5)
    assert virtual.read(crashed.small - 12, 4) == b"derF"
    assert Intel64LayerCheck.check(virtual)  # KUSER_SHARED_DATA is mapped with NtMajorVersion


def test_volatility_finds_the_directory_table_base_by_the_self_map(crashed):
    pytest.importorskip("volatility3")
    from volatility3.framework.automagic import windows

    path = crashed.k.write_dump(crashed.dir / "full.dmp", "full")
    layer, _ = _volatility_layers(path)
    hits = list(layer.scan(layer.context, windows.PageMapScanner([windows.DtbSelfRef64bitOldWindows()])))
    assert [offset for _, offset in hits] == [crashed.k.space.cr3 << 12]


@pytest.mark.parametrize("kind", KINDS)
def test_header_fields_and_debugger_data(crashed, kind):
    path = crashed.k.write_dump(crashed.dir / "d.dmp", kind)
    raw = open(path, "rb").read(f.HEADER_SIZE)
    assert raw[:8] == b"PAGEDU64"
    assert struct.unpack_from("<I", raw, f.OFF_BUGCHECK_CODE)[0] == 0xC2
    assert struct.unpack_from("<q", raw, f.OFF_REQUIRED_DUMP_SPACE)[0] == os.path.getsize(path)
    assert struct.unpack_from("<I", raw, f.OFF_CONTEXT_RECORD + f.CONTEXT_OFF_MXCSR) == \
        struct.unpack_from("<I", raw, f.OFF_CONTEXT_RECORD + f.CONTEXT_OFF_FLTSAVE_MXCSR)
    with DumpReader(path) as reader:
        kdbg = reader.read(reader.kd_debugger_data_block, f.KDDEBUGGER_DATA64_SIZE)
        assert kdbg[0x10:0x14] == b"KDBG"
        data = reader.debugger_data()
        assert data["MmNonPagedPoolStart"] == crashed.k.nonpaged_pool.base
        assert data["MmPagedPoolEnd"] == crashed.k.paged_pool.limit - 1
        assert data["NonPagedPoolListHeads"] == crashed.k.nonpaged_pool.list_heads_va
        assert reader.read(f.KUSER_SHARED_DATA + f.KUSER_NT_MAJOR_VERSION, 4) == b"\x06\0\0\0"


@pytest.mark.parametrize("kind", KINDS)
def test_tracker_and_big_page_tables_are_laid_out_in_memory(crashed, kind):
    path = crashed.k.write_dump(crashed.dir / "d.dmp", kind)
    with DumpReader(path) as reader:
        entries = {e.Key: e for e in reader.tracker_entries()}
        for row in crashed.k.pool_tags():
            entry = entries[row.TagUlong]
            assert (entry.NonPagedAllocs, entry.NonPagedFrees, entry.NonPagedBytes) == \
                (row.NonPagedAllocs, row.NonPagedFrees, row.NonPagedUsed)
            assert (entry.PagedAllocs, entry.PagedFrees, entry.PagedBytes) == \
                (row.PagedAllocs, row.PagedFrees, row.PagedUsed)
            assert reader.tracker_lookup(row.TagUlong) == entry  # at its hash slot, by probing
        assert len(entries) == len(crashed.k.pool_tags())
        big = reader.big_pages()
        assert [(b.Va, b.Key, b.PoolType, b.NumberOfBytes) for b in big] == \
            [(crashed.big, ntpool.tag("Bigg").value, 0, 3 * 4096)]
        mask = reader.debugger_data()["PoolBigPageTableSize"] - 1
        slot_va = reader.debugger_data()["PoolBigPageTable"] + f.big_page_hash(crashed.big, mask) * 0x18
        assert reader.read_u64(slot_va) == crashed.big


def test_kernel_dump_holds_exactly_the_frames_in_use(crashed):
    path = crashed.k.write_dump(crashed.dir / "k.dmp", "kernel")
    with DumpReader(path) as reader:
        assert reader.page_count == crashed.k.physical.frames_used
        assert os.path.getsize(path) < 2 * MiB  # not the 20 MiB of physical memory
        for run in reader.runs:
            assert all(crashed.k.physical.frame_in_use[run.first:run.first + run.count])


def test_full_dump_holds_every_page_it_promises(crashed):
    path = crashed.k.write_dump(crashed.dir / "f.dmp", "full")
    with DumpReader(path) as reader:
        assert reader.page_count == crashed.k.physical.frame_count
        assert os.path.getsize(path) == f.HEADER_SIZE + reader.page_count * 4096


def test_crash_dump_is_written_on_bug_check(tmp_path):
    path = tmp_path / "MEMORY.DMP"
    k = small_kernel(crash_dump=path)
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 64, "Fred")
    k.current_driver = SimpleNamespace(name="buggy.sys")
    with pytest.raises(ntpool.BugCheck):
        k.ExFreePoolWithTag(p + 8, "Fred")  # not the start of an allocation: 0xC2/0x99
    assert sorted(os.listdir(tmp_path)) == ["MEMORY.DMP", "symbols"]  # no temporary file left behind
    with DumpReader(path) as reader:
        assert reader.dump_type == f.DUMP_TYPE_BITMAP
        assert reader.bugcheck_code == 0xC2
        assert reader.bugcheck_parameters == k.bugcheck.parameters
        assert reader.bugcheck_context()["driver"] == "buggy.sys"


def test_a_dump_that_cannot_be_written_does_not_hide_the_bug_check(tmp_path):
    k = small_kernel(crash_dump=tmp_path / "missing-directory" / "MEMORY.DMP")
    with pytest.raises(ntpool.BugCheck) as info:
        k.ExFreePool(0x10000)
    assert isinstance(k.crash_dump_error, OSError)
    assert info.value.dump_error is k.crash_dump_error


def test_writing_is_atomic(tmp_path, monkeypatch):
    k = small_kernel()
    path = tmp_path / "d.dmp"
    path.write_bytes(b"the previous dump")
    from ntpool.dump import writer

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_write_frames", broken)
    with pytest.raises(OSError, match="disk full"):
        k.write_dump(path, "full")
    assert path.read_bytes() == b"the previous dump"
    assert os.listdir(tmp_path) == ["d.dmp"]


def test_live_machine_dump_and_repeated_dumps(tmp_path):
    k = small_kernel()
    p = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 64, "Fred")
    write_dump(k, tmp_path / "a.dmp", "kernel")
    for i in range(40):  # more tags than before: the tables grow and move
        k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 64, f"T{i:03d}")
    write_dump(k, tmp_path / "b.dmp", "kernel")
    with DumpReader(tmp_path / "b.dmp") as reader:
        assert reader.bugcheck_code == 0
        assert len(reader.tracker_entries()) == 41
        assert reader.read(p - 12, 4) == b"derF"
    k.ExFreePoolWithTag(p, "Fred")  # dumping did not disturb the machine


def test_bad_arguments_to_write_dump(tmp_path):
    k = small_kernel()
    with pytest.raises(ValueError, match="kind"):
        k.write_dump(tmp_path / "x.dmp", "mini")
    with pytest.raises(ValueError, match="crash_dump_kind"):
        small_kernel(crash_dump_kind="mini")
    with pytest.raises(TypeError, match="crash_dump"):
        small_kernel(crash_dump=42)


def test_protected_tag_is_found_in_the_tracker_without_its_bit(tmp_path):
    k = small_kernel()
    k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 64, ntpool.tag("Prot").value | ntpool.PROTECTED_POOL)
    path = k.write_dump(tmp_path / "d.dmp", "kernel")
    with DumpReader(path) as reader:
        assert reader.tracker_lookup(from_display("torP")).NonPagedAllocs == 1


def _distinct_tags(count: int):
    """``count`` distinct printable tags."""
    return [bytes(33 + (i // 90 ** j) % 90 for j in range(4)).decode() for i in range(count)]


@pytest.mark.parametrize("windows", ["7", "11"])
def test_a_machine_with_more_tags_than_the_table_holds_writes_a_dump_its_reader_reads(tmp_path, windows):
    # The dump's PoolTrackTable stops at MAX_TRACKER_TABLE_SIZE slots (the most the reader
    # reads); kept half full, the tags past that are summed in the overflow slot, 'Ovfl', as
    # Windows does when its table cannot grow. Before, the writer doubled the table past what
    # the reader reads, and ntpool refused the dump it had written.
    k = ntpool.Kernel(nonpaged_pool_bytes=64 << 20, windows=windows)
    room = f.MAX_TRACKER_TABLE_SIZE // 2
    tags = _distinct_tags(room + 1000)
    for tag in tags:
        k.ExAllocatePoolWithTag(0, 16, tag)
    path = str(tmp_path / "many.dmp")
    k.write_dump(path, kind="kernel")
    with DumpReader(path) as reader:
        entries = {entry.Key: entry for entry in reader.tracker_entries()}
        machine_tags = {info.TagUlong for info in k.pool_tags()}
        hashed = [key for key in entries if key != f.OVERFLOW_TAG]
        assert len(hashed) == room and set(hashed) <= machine_tags
        overflow = entries[f.OVERFLOW_TAG]
        shown = sum(entry.NonPagedAllocs for entry in entries.values())
        assert shown == sum(info.NonPagedAllocs for info in k.pool_tags())
        assert overflow.NonPagedAllocs >= 1000
