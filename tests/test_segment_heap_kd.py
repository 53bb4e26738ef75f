"""Dumps of Windows 10/11 machines say so, and kd reads their segment heap (VS headers
decoded with the heap key found in the dump)."""

import struct

import pytest

import ntpool
from ntpool.debugger.session import KdSession
from ntpool.dump import format as f
from ntpool.dump.reader import DumpReader
from ntpool.pool.segment_heap import layout as L
from ntpool.tags import display, tag_value

MiB = 1 << 20
NX = ntpool.PoolType.NonPagedPoolNx
PP = ntpool.PoolType.PagedPool


class Overrun:
    name = "overrun.sys"

    def DriverEntry(self, k, path):
        return 0

    def make(self, k, size):
        return k.ExAllocatePoolWithTag(NX, size, "Ovrn")

    def smash(self, k, p):
        k.write(p, b"A" * (k.pool.allocation_size(p) + 0x10))

    def free(self, k, p):
        k.ExFreePoolWithTag(p, "Ovrn")


def machine(windows, path=None):
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB, windows=windows,
                         crash_dump=None if path is None else str(path))


def dump_of(k, tmp_path, name="MEMORY.DMP"):
    path = tmp_path / name
    k.write_dump(path, "kernel")
    return DumpReader(path)


@pytest.mark.parametrize("windows, build, major", [("10", 19041, 10), ("11", 22621, 10), ("7", 7601, 6)])
def test_dump_says_which_windows(tmp_path, windows, build, major):
    reader = dump_of(machine(windows), tmp_path)
    with open(tmp_path / "MEMORY.DMP", "rb") as file:
        header = file.read(0x10)
    assert struct.unpack_from("<I", header, f.OFF_MINOR)[0] == build
    assert reader.windows.build == build and reader.segment_heap == (build != 7601)
    assert struct.unpack("<I", reader.read(f.KUSER_SHARED_DATA + f.KUSER_NT_BUILD_NUMBER, 4))[0] == build
    assert struct.unpack("<I", reader.read(f.KUSER_SHARED_DATA + f.KUSER_NT_MAJOR_VERSION, 4))[0] == major
    lab = reader.read(reader.debugger_data()["KernBase"] + 0x1100, 0x40).split(b"\0")[0].decode()
    assert lab.startswith(f"{build}.")


@pytest.mark.parametrize("windows, entry_size", [("10", 0x18), ("11", 0x20)])
def test_big_page_table_in_the_builds_format(tmp_path, windows, entry_size):
    k = machine(windows)
    k.set_current_process(k.create_process("app.exe"))
    va = k.ExAllocatePoolWithQuotaTag(PP, 5000, "Bigq")
    reader = dump_of(k, tmp_path)
    data = reader.debugger_data()
    assert data["BigPageEntrySize"] == entry_size
    raw = reader.read(data["PoolBigPageTable"], data["PoolBigPageTableSize"] * entry_size)
    slot = L.big_page_hash(va, data["PoolBigPageTableSize"] - 1)
    while struct.unpack_from("<Q", raw, slot * entry_size)[0] != va:
        slot += 1
    entry = raw[slot * entry_size:(slot + 1) * entry_size]
    _, key, type_field, length = struct.unpack_from("<QIIQ", entry)
    assert (key, length) == (tag_value("Bigq"), 5000)  # NumberOfBytes: what was asked
    assert L.big_page_type_of(type_field) & 1 == 1 and L.big_page_type_of(type_field) & L.POOL_TYPE_QUOTA
    if entry_size == 0x20:
        assert struct.unpack_from("<Q", entry, 0x18)[0] == k.current_process.address
    assert [b.Va for b in reader.big_pages()] == [va]


def test_tracker_table_has_64_bit_counters(tmp_path):
    k = machine("11")
    for _ in range(3):
        k.ExAllocatePoolWithTag(PP, 0x40, "Trk6")
    reader = dump_of(k, tmp_path)
    data = reader.debugger_data()
    raw = reader.read(data["PoolTrackTable"], data["PoolTrackTableSize"] * 0x38)
    rows = [struct.unpack_from("<I4xQQQQQQ", raw, o) for o in range(0, len(raw), 0x38)]
    row, = [r for r in rows if r[0] == tag_value("Trk6")]
    assert row[4:7] == (3 * 0x50, 3, 0)  # PagedBytes, PagedAllocs, PagedFrees
    used = KdSession(reader).execute("!poolused 1 " + display(tag_value("Trk6")))
    assert display(tag_value("Trk6")) in used and "240" in used


def test_pool_lists_lfh_and_vs_blocks_decoding_headers_with_the_dumps_heap_key(tmp_path):
    k = machine("11")
    lfh = [k.ExAllocatePoolWithTag(NX, 0x60, "Lfhk") for _ in range(20)][-1]
    freed = k.ExAllocatePoolWithTag(NX, 0x60, "Lfhk")
    k.ExFreePoolWithTag(freed, "Lfhk")
    vs = k.ExAllocatePoolWithTag(NX, 0x600, "Vsk ")
    session = KdSession(dump_of(k, tmp_path))
    text = session.execute(f"!pool {lfh:x}")
    assert "NonPagedPoolNx (segment heap)" in text
    marked = [line for line in text.splitlines() if line.startswith("*")]
    assert marked == [line for line in marked if "(Allocated)" in line and "Lfh" in line]
    assert f"*{lfh - 16:016x}" in text
    assert "(Free)" in session.execute(f"!pool {freed:x}").split(f"{freed - 16:016x}")[1].splitlines()[0]
    text = session.execute(f"!pool {vs:x} 2")
    block = k.pool.allocation_size(vs) + 16  # 0x600 + POOL_HEADER, rounded to its lookaside bucket
    assert f"*{vs - 16:016x} size: {block:4x}" in text and display(tag_value("Vsk ")) in text and "Vs" in text


def test_poolfind_finds_lfh_vs_and_big_allocations(tmp_path):
    k = machine("10")
    tag = "Fndm"
    wanted = [k.ExAllocatePoolWithTag(PP, size, tag) for size in [0x30] * 20 + [0x400, 0x3000]]
    reader = dump_of(k, tmp_path)
    text = KdSession(reader).execute(f"!poolfind {display(tag_value(tag))} 1")
    for va in wanted[-3:]:
        assert (f"{va - 16:016x}" in text) or (f"*{va:016x} :large page allocation" in text)
    assert text.count(display(tag_value(tag))) >= 22


def test_analyze_names_the_block_before_a_vs_overrun(tmp_path):
    path = tmp_path / "MEMORY.DMP"
    k, d = machine("11", path), Overrun()
    k.load_driver(d)
    a = d.make(k, 0x500)
    b = d.make(k, 0x500)
    d.smash(k, a)
    with pytest.raises(ntpool.BugCheck):
        d.free(k, a)
    text = KdSession(DumpReader(path)).execute("!analyze -v")
    assert "KERNEL_MODE_HEAP_CORRUPTION (13a)" in text
    assert "Arg1: 0000000000000003, Type of corruption detected: Corrupt heap entry header" in text
    assert f"Arg3: {b - 0x20:016x}" in text
    culprit = [line for line in text.splitlines() if line.startswith("CORRUPTION_AFTER:")][0]
    assert f"{a - 16:016x}" in culprit and "(Allocated" in culprit and display(tag_value("Ovrn")) in culprit
    assert "overrun.sys!Overrun.make" in text
    assert "does not decode with the heap key" in text


# --- the demo and the page map on the segment heap --------------------------------------------

def test_demo_on_windows_11_runs_and_its_dump_reads_in_kd(tmp_path, capsys):
    from ntpool.cli.main import main

    assert main(["demo", "--windows", "11", "--steps", "400", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # the console wraps long lines
    assert "Windows 11 (build 22621" in flat and "did not stop the machine" in flat
    assert "BAD_POOL_HEADER 0x19/0x20" in flat  # what Windows 7 does with the same bug
    assert "(segment heap)" in out and "SlNm" in out
    assert main(["kd", "-z", str(tmp_path / "MEMORY.DMP"), "-c", "!analyze -v; !poolused 2"]) == 0
    out = capsys.readouterr().out
    assert "written on demand" in out and "SlRq" in out  # the leak is still there after unload


def test_page_map_draws_lfh_and_vs_pages_live_and_from_a_dump(tmp_path):
    from ntpool.cli.dump_source import DumpSource
    from ntpool.tools.pictures import live_page_strips

    k = machine("11")
    [k.ExAllocatePoolWithTag(NX, 0x70, "Lfhp") for _ in range(20)]
    vs = k.ExAllocatePoolWithTag(NX, 0x900, "Vspg")
    big = k.ExAllocatePoolWithTag(PP, 0x2000, "Bigp")
    live = live_page_strips(k)
    k.write_dump(tmp_path / "MEMORY.DMP", "kernel")
    dumped = DumpSource(str(tmp_path / "MEMORY.DMP")).page_strips()
    for strips in (live, dumped):
        by_page = {strip.va: strip for strip in strips}
        tags = {segment.tag for strip in strips for segment in strip.segments}
        assert {display(tag_value(t)) for t in ("Lfhp", "Vspg", "Bigp")} <= tags
        page = by_page[vs & ~0xFFF]
        assert sum(segment.length for segment in page.segments) == 0x1000  # each page covered once
        assert by_page[big].note.startswith(display(tag_value("Bigp")))
    assert {s.va for s in live} == {s.va for s in dumped}


@pytest.mark.parametrize("argv", [["demo"], ["bench"], ["bench-dump"], ["run", "x.py"],
                                  ["poolmon"], ["poolsnap", "-o", "x.json"],
                                  ["picture", "pagemap", "-o", "x.png"], ["report", "-o", "x.html"],
                                  ["verify", "x.py"]])
def test_commands_that_boot_a_machine_take_windows(argv):
    from ntpool.cli.main import build_parser

    assert build_parser().parse_args(argv + ["--windows", "26100"]).windows == "26100"
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv + ["--windows", "95"])


def test_run_boots_the_windows_asked_for(tmp_path, capsys):
    from ntpool.cli.main import main

    seen = tmp_path / "seen.txt"
    scenario = tmp_path / "tiny.py"
    scenario.write_text(
        "class D:\n    name = 'tiny.sys'\n\n"
        "    def DriverEntry(self, k, path):\n        return 0\n\n"
        "    def DriverUnload(self, k):\n        pass\n\n"
        "DRIVERS = [D()]\n\n\n"
        "def workload(k, rng):\n"
        f"    open({str(seen)!r}, 'w').write(f'{{k.windows.build}} {{type(k.pool).__name__}}')\n")
    assert main(["run", str(scenario), "--windows", "10"]) == 0
    assert seen.read_text() == "19041 SegmentHeapAllocator"
    assert main(["run", str(scenario)]) == 0
    assert seen.read_text() == "7601 PoolAllocator"
    capsys.readouterr()


def test_verifier_lists_a_drivers_outstanding_blocks_from_a_segment_heap_dump(tmp_path):
    class Leaky:
        name = "leaky.sys"

        def DriverEntry(self, k, path):
            self.kept = [k.ExAllocatePoolWithTag(NX, size, "Leak") for size in (0x40, 0x600)]
            return 0

        def DriverUnload(self, k):
            pass

    k = machine("11")
    k.load_driver(Leaky())
    reader = dump_of(k, tmp_path)
    text = KdSession(reader).execute("!verifier 3 leaky.sys")
    assert text.count(display(tag_value("Leak"))) == 2, text


def test_a_big_allocation_in_a_vs_chunk_reads_as_big_in_kd(tmp_path):
    k = machine("11")
    small = k.ExAllocatePoolWithTag(NX, 0x600, "Smvs")
    big = k.ExAllocatePoolWithTag(NX, 0x1808, "Bgvs")
    assert k.nonpaged_pool_nx.big_in_vs(big)
    session = KdSession(dump_of(k, tmp_path))
    shown = display(tag_value("Bgvs"))
    # !pool on it: the big page table's entry, as for any big allocation.
    assert f"*{big:016x} : large page allocation, tag is {shown}, size is 0x1808 bytes" in \
        session.execute(f"!pool {big:x}")
    # Its subsegment's walk lists the VS chunk with the table's tag (no POOL_HEADER read).
    blocks, problems = session.segment_heap().around(small)
    block, = [b for b in blocks if b.body == big]
    assert (block.backend, block.tag, block.state, problems) == \
        ("Big", tag_value("Bgvs"), "Allocated", [])
    assert block.size == (0x1808 + 15) // 16 * 16
    text = session.execute(f"!pool {small:x} 2")
    assert "Bad" not in text and f"*{small - 16:016x}" in text
    # !poolfind lists it once, from the big page table.
    found = session.execute(f"!poolfind {shown} 0")
    assert found.count(f"{big:016x}") == 1 and ":large page allocation" in found


def test_poolval_validates_a_segment_heap_page_by_its_subsegment(tmp_path):
    """!poolval reads LFH and VS pages as !pool does (there is no Windows 7 header chain to
    walk on them): healthy pages are VALID; a VS header a driver overwrote makes its page
    __inVALID and is named."""
    k = machine("11")
    lfh = [k.ExAllocatePoolWithTag(NX, 0x60, "Lfhv") for _ in range(20)][-1]
    vs = [k.ExAllocatePoolWithTag(NX, 0x600, "Vsv ") for _ in range(3)]
    session = KdSession(dump_of(k, tmp_path))
    for address in (lfh, vs[0], vs[1]):
        text = session.execute(f"!poolval {address:x}")
        assert "NonPagedPoolNx (segment heap)" in text
        assert f"Pool page [ {address & ~0xFFF:016x} ] is VALID." in text, text
    k.write(vs[1] - 0x20, b"\xAA" * 8)  # the VS chunk header in front of its POOL_HEADER
    text = KdSession(dump_of(k, tmp_path, "b.dmp")).execute(f"!poolval {vs[1]:x}")
    assert "is __inVALID." in text and f"{vs[1] - 0x20:016x}: VS chunk header does not decode" in text
