"""volatility3 opens Windows 10 and 11 dumps with the build's own symbol file: windows.info
names the build, windows.bigpools reads the build's big page entries (0x18 bytes on 19041,
0x20 with ProcessBilled on 22621) and lists exactly what the machine allocated, and
windows.modules lists the drivers; all in this process, on real volatility3."""

import json
import lzma
import os
import time

import pytest

import ntpool
from ntpool import PoolType
from ntpool.dump import image, isf
from ntpool.dump.reader import DumpReader
from ntpool.machine.memory import canonical
from ntpool.windows import windows_version

pytest.importorskip("volatility3")
from ntpool.forensics.volatility import run_plugin  # noqa: E402

@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    cache = tmp_path_factory.mktemp("volatility-cache")
    return lambda *args, **kwargs: run_plugin(*args, cache=cache, **kwargs)


class BigDriver:
    name = "bigdrv.sys"

    def DriverEntry(self, k, RegistryPath):
        self.small = [k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 40 + i, "Smal") for i in range(30)]
        self.big = [k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 0x1000 * n + 8, "BgNp") for n in (1, 3)]
        self.big.append(k.ExAllocatePoolWithTag(PoolType.PagedPool, 0x2400, "BgPg"))
        self.big.append(k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 0x30000, "BgNx"))
        self.big.append(k.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 0x1800,
                                                ntpool.tag("Prot").value | ntpool.PROTECTED_POOL))
        freed = k.ExAllocatePoolWithTag(PoolType.PagedPool, 0x5000, "Gone")
        k.ExFreePoolWithTag(freed, "Gone")
        return 0


@pytest.fixture(scope="module", params=["10", "11"])
def dump(request, tmp_path_factory):
    k = ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20, windows=request.param)
    k.load_driver(BigDriver())
    process = k.create_process("app.exe")
    k.set_current_process(process)
    billed = k.ExAllocatePoolWithQuotaTag(PoolType.PagedPool, 0x3000, "Quot")
    path = tmp_path_factory.mktemp(f"w{request.param}") / "MEMORY.DMP"
    k.write_dump(path, "kernel")
    return k, path, process, billed


def machine_big_pages(k):
    """(Va, tag, POOL_TYPE, NumberOfBytes) of every live big allocation, from the model."""
    return sorted((va, tag, details[1], details[0])
                  for heap in (k.nonpaged_pool, k.nonpaged_pool_nx, k.paged_pool)
                  for va, (tag, _pages) in heap.big_pages.items()
                  for details in (heap.big_details[va],))


def vol_tag(tag: int) -> str:
    """volatility3 drops tag bytes outside 33..126 (the protected bit, spaces)."""
    return "".join(chr(b) for b in tag.to_bytes(4, "little") if 32 < b < 127)


def test_the_builds_symbol_file_is_beside_the_dump_and_shipped(dump):
    k, path, _, _ = dump
    relative = isf.relative_path(k.windows)
    assert relative != isf.relative_path()  # not Windows 7's
    beside = path.parent / "symbols" / relative
    assert beside.read_bytes() == isf.compressed(k.windows)
    shipped = os.path.join(isf.package_symbols_directory(), relative)
    assert open(shipped, "rb").read() == isf.compressed(k.windows), "the shipped symbol file is stale"
    document = json.loads(lzma.decompress(beside.read_bytes()))
    entry = document["user_types"]["_POOL_TRACKER_BIG_PAGES"]
    assert entry["size"] == k.windows.big_page_entry_size
    assert ("ProcessBilled" in entry["fields"]) == (k.windows.big_page_entry_size == 0x20)
    pool_type = entry["fields"]["PoolType"]["type"]
    assert (pool_type["kind"], pool_type["bit_position"], pool_type["bit_length"]) == ("bitfield", 8, 12)
    assert document["user_types"]["_POOL_TRACKER_TABLE"]["size"] == 0x38
    assert document["metadata"]["windows"]["pe"] == {"major": 10, "minor": 0,
                                                     "revision": k.windows.build, "build": 1}
    with DumpReader(path) as reader:  # the image's CodeView record names this file's GUID
        base = reader.debugger_data()["KernBase"]
        record = image.codeview_record(isf.guid_bytes(k.windows))
        assert reader.read(base + image.CODEVIEW_RECORD, len(record)) == record


def test_every_modelled_build_has_its_own_shipped_file():
    folder = os.path.join(isf.package_symbols_directory(), "windows", image.PDB_NAME)
    expected = {os.path.basename(isf.relative_path(w)) for w in isf.every_windows()}
    assert set(os.listdir(folder)) == expected
    assert len(expected) == len(isf.every_windows())  # one GUID per build
    assert isf.guid("7") == isf.guid() and isf.guid(windows_version("10")) == isf.guid("19041")
    for windows in isf.every_windows():
        with open(os.path.join(folder, os.path.basename(isf.relative_path(windows))), "rb") as file:
            assert file.read() == isf.compressed(windows), f"stale symbol file for {windows}"


def test_windows_info_names_the_build(dump, vol):
    k, path, _, _ = dump
    info = dict(vol(path, "windows.info")[1])
    assert info["Major/Minor"] == f"15.{k.windows.build}"
    assert (info["NtMajorVersion"], info["NtMinorVersion"]) == ("10", "0")
    assert info["NTBuildLab"].startswith(str(k.windows.build))
    assert info["CSDVersion"] == "0"  # no service pack since Windows 7's
    # The image's TimeDateStamp is the build's (a hash since Windows 10), not Windows 7's 2010 date.
    assert info["PE TimeDateStamp"] == time.asctime(time.gmtime(k.windows.time_date_stamp))
    assert k.windows.time_date_stamp != windows_version("7").time_date_stamp
    assert info["Symbols"].endswith(isf.relative_path(k.windows).replace(os.sep, "/"))


def test_windows_bigpools_agrees_with_the_machine(dump, vol):
    k, path, process, billed = dump
    truth = machine_big_pages(k)
    assert len(truth) == 6 and billed in {va for va, *_ in truth}
    _, rows = vol(path, "windows.bigpools")
    seen = sorted((va, tag, kind, size) for va, tag, kind, size, status in rows if status == "Allocated")
    names = {0x0: "NonPagedPool", 0x1: "PagedPool", 0x200: "NonPagedPoolNx"}
    # The quota-charged one carries the quota bit (0x8) as well: PagedPool | 0x8 is 9,
    # which volatility3's _POOL_TYPE names "Unknown choice 9".
    assert seen == [(va, vol_tag(tag), names.get(pool_type, f"Unknown choice {pool_type}"), size)
                    for va, tag, pool_type, size in truth]
    assert "tor" in [tag for _, tag, _, _ in seen]  # the protected Prot
    # NumberOfBytes is what was asked (0x1008), not whole pages.
    assert sorted(size for *_, size in seen) == [0x1008, 0x1800, 0x2400, 0x3000, 0x3008, 0x30000]
    with DumpReader(path) as reader:  # and the same as ntpool's own reading of the file
        assert sorted((b.Va, b.Key, b.PoolType, b.NumberOfBytes) for b in reader.big_pages()) == truth
    assert "enoG" not in [row[1] for row in rows]  # the freed one is not listed


def test_process_billed_of_a_0x20_entry(dump):
    k, path, process, billed = dump
    if k.windows.big_page_entry_size != 0x20:
        pytest.skip("0x18-byte entries have no ProcessBilled")
    from ntpool.pool.segment_heap import layout as L
    with DumpReader(path) as reader:
        data = reader.debugger_data()
        table, size = data["PoolBigPageTable"], data["PoolBigPageTableSize"]
        raw = reader.read(table, size * 0x20)
    found = [L.POOL_TRACKER_BIG_PAGES_20348.get(raw, offset, "ProcessBilled")
             for offset in range(0, len(raw), 0x20)
             if L.POOL_TRACKER_BIG_PAGES_20348.get(raw, offset, "Va") == billed]
    assert found == [process.address]


def test_windows_modules_agrees_with_ntpool(dump, vol):
    _, path, _, _ = dump
    with DumpReader(path) as reader:
        modules = reader.loaded_modules()
    _, rows = vol(path, "windows.modules")
    assert [(name, canonical(base), size) for _, base, size, name, _path, _ in rows] == modules
    assert [name for name, _, _ in modules] == ["bigdrv.sys"]
