"""volatility3 analyses ntpool's dumps as Windows 7 SP1 x64 dumps: info, bigpools, modules,
poolscanner and ntpool's tag-scan plugin, on the demo's dump, in this process."""

import lzma
import json
import os

import pytest

import ntpool
from ntpool import PoolType
from ntpool.cli.main import main
from ntpool.dump import image, isf
from ntpool.dump.reader import DumpReader
from ntpool.machine.memory import canonical

pytest.importorskip("volatility3")
from ntpool.forensics.volatility import run_plugin  # noqa: E402


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    """run_plugin with a symbol cache of this module's own (others' runs rewrite the user's)."""
    cache = tmp_path_factory.mktemp("volatility-cache")
    return lambda *args, **kwargs: run_plugin(*args, cache=cache, **kwargs)


@pytest.fixture(scope="module")
def demo_dump(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--steps", "400", "--out", str(out), "--truth", str(out / "truth.json")]) == 0
    return out / "MEMORY.DMP"


class BigDriver:
    name = "bigdrv.sys"

    def DriverEntry(self, k, RegistryPath):
        self.small = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 40 + i, "Smal") for i in range(30)]
        self.big = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x1000 * n + 8, "BgNp") for n in (1, 3)]
        self.big.append(k.ExAllocatePoolWithTag(PoolType.PagedPool, 0x2400, "BgPg"))
        self.big.append(k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x1800,
                                                ntpool.tag("Prot").value | ntpool.PROTECTED_POOL))
        return 0


@pytest.fixture(scope="module")
def big_dump(tmp_path_factory):
    k = ntpool.Kernel(nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)
    k.load_driver(BigDriver())
    path = k.write_dump(tmp_path_factory.mktemp("big") / "big.dmp", "kernel")
    return k, path


def test_the_symbol_file_is_beside_the_dump_and_shipped_identical(demo_dump):
    beside = demo_dump.parent / "symbols" / isf.relative_path()
    shipped = os.path.join(isf.package_symbols_directory(), isf.relative_path())
    assert beside.read_bytes() == isf.compressed()
    # A layout change is a new GUID: regenerate with `ntpool symbols --install
    # src/ntpool/data/volatility3/symbols` (and delete the old file) when this fails.
    assert open(shipped, "rb").read() == isf.compressed(), "the shipped symbol file is stale"
    folder = os.path.dirname(shipped)  # Windows 7's, and one per segment-heap build
    assert sorted(os.listdir(folder)) == \
        sorted(os.path.basename(isf.relative_path(w)) for w in isf.every_windows())
    document = json.loads(lzma.decompress(beside.read_bytes()))
    assert document["metadata"]["windows"]["pdb"]["GUID"] == isf.guid()
    # Symbol addresses are the image's own RVAs, types the pool layouts the writer uses.
    assert document["symbols"]["PoolBigPageTable"]["address"] == image.GLOBALS["PoolBigPageTable"][0]
    header = document["user_types"]["_POOL_HEADER"]["fields"]
    assert header["PoolTag"]["offset"] == 4 and header["BlockSize"]["offset"] == 2


def test_the_image_at_kernbase_carries_the_guid(demo_dump):
    with DumpReader(demo_dump) as reader:
        base = reader.debugger_data()["KernBase"]
        assert reader.read(base, 2) == b"MZ"
        record = image.codeview_record(isf.guid_bytes())
        assert reader.read(base + image.CODEVIEW_RECORD, len(record)) == record
        assert reader.read(base + image.GLOBALS["PsLoadedModuleList"][0], 8) == \
            reader.read(reader.debugger_data()["PsLoadedModuleList"], 8)


def test_windows_info(demo_dump, vol):
    _, rows = vol(demo_dump, "windows.info")
    info = dict(rows)
    assert info["DTB"] == "0x187000"  # where Windows 7 x64 keeps its PML4
    assert info["Major/Minor"] == "15.7601" and info["NtMajorVersion"] == "6"
    assert info["NtMinorVersion"] == "1" and info["CSDVersion"] == "1"
    assert info["NTBuildLab"].startswith("7601.17514.amd64fre")
    assert info["PE TimeDateStamp"] == "Sat Nov 20 09:30:02 2010"  # Windows 7 SP1's ntoskrnl.exe
    assert info["KeNumberProcessors"] == "1" and info["NtSystemRoot"] == "C:\\Windows"
    assert info["Symbols"].endswith(isf.relative_path().replace(os.sep, "/"))


def test_windows_bigpools_agrees_with_the_machine(big_dump, vol):
    k, path = big_dump
    truth = sorted((va, tag, pool.name, pages * 4096) for pool in (k.nonpaged_pool, k.paged_pool)
                   for va, (tag, pages) in pool.big_pages.items())
    assert len(truth) == 4
    _, rows = vol(path, "windows.bigpools")
    seen = sorted((va, tag, kind, size) for va, tag, kind, size, status in rows if status == "Allocated")
    assert [(va, kind, size) for va, _, kind, size in seen] == \
        [(va, name, size) for va, _, name, size in truth]
    # volatility3 drops tag bytes outside 33..126: the protected bit, and spaces.
    assert [tag for _, tag, _, _ in seen] == \
        ["".join(chr(b) for b in t.to_bytes(4, "little") if 32 < b < 127) for _, t, _, _ in truth]
    assert "tor" in [tag for _, tag, _, _ in seen]  # the protected Prot


def test_windows_modules_agrees_with_ntpool(demo_dump, vol):
    with DumpReader(demo_dump) as reader:
        modules = [(name, base, size) for name, base, size in reader.loaded_modules()]
    _, rows = vol(demo_dump, "windows.modules")
    # volatility3 shows pointers without their sign extension.
    assert [(name, canonical(base), size) for _, base, size, name, _path, _ in rows] == modules
    assert [name for name, _, _ in modules] == ["ndisminiport.sys", "fsfilter.sys", "sloppy.sys"]


def test_windows_poolscanner_runs(demo_dump, vol):
    columns, _ = vol(demo_dump, "windows.poolscanner")
    assert columns == ["Tag", "Offset", "Layer", "Name"]


def test_the_tag_scan_plugin_finds_every_live_chunk_of_a_tag(demo_dump, vol):
    with DumpReader(demo_dump) as reader:
        _, rows = vol(demo_dump, "ntpool.tagscan", options={"tags": ["SlRq"]})
        found = {offset for tag, offset, *_ in rows if tag == "SlRq"}
        tracker = reader.tracker_lookup(int.from_bytes(b"SlRq", "little"))
        live = tracker.NonPagedAllocs - tracker.NonPagedFrees
        assert len(found) >= live > 10  # physical offsets; stale headers come on top
        for offset in list(found)[:20]:
            assert reader.read_physical(offset + 4, 4) == b"SlRq"


def test_poolfind_finds_every_chunk_of_the_demos_dump_the_damaged_page_included(demo_dump, tmp_path):
    from ntpool.debugger.session import KdSession
    from ntpool.dump import truth as t
    from ntpool.forensics.score import score_files

    document = t.load(demo_dump.parent / "truth.json")
    assert document["dump"] == {"file": "MEMORY.DMP", "kind": "kernel"}
    # The sloppy driver's overrun damaged a header: that page is corrupt, yet fully known.
    assert [c["complete"] for c in document["corrupt_pages"]] == [True]
    with DumpReader(demo_dump) as reader:
        assert t.check_against_tracker(document, reader.tracker_entries()) == []
        session = KdSession(reader)
        text = "\n".join(session.execute(f"!poolfind * {pool}") for pool in (0, 1))
        slnm = session.execute("!poolfind SlNm")
    assert "(corrupt page: see !poolval" in text and "(corrupt page: see !poolval" in slnm
    (tmp_path / "poolfind.txt").write_text(text)
    result = score_files(demo_dump.parent / "truth.json", [tmp_path / "poolfind.txt"])
    assert result["headers"]["recall"] == result["headers"]["precision"] == 1.0
