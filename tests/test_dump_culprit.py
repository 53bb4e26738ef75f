"""A dump alone names the culprit: driver, allocating line and faulting line."""

import pytest

import ntpool
from ntpool.debugger.session import KdSession
from ntpool.dump.reader import DumpReader

NP = ntpool.PoolType.NonPagedPool
MiB = 1 << 20


class Overflow:
    name = "overflow.sys"

    def DriverEntry(self, k, path):
        return 0

    def DriverUnload(self, k):
        pass

    def make(self, k):
        return k.ExAllocatePoolWithTag(NP, 1000, "Ovfl")

    def smash(self, k, p):
        k.write(p, b"A" * 1012)

    def free_it(self, k, p):
        k.ExFreePoolWithTag(p, "Ovfl")


class Leaky(Overflow):
    name = "leaky.sys"

    def DriverEntry(self, k, path):
        self.kept = k.ExAllocatePoolWithTag(NP, 48, "Leky")
        return 0


def analyze(path) -> str:
    with DumpReader(path) as reader:
        return KdSession(reader).execute("!analyze -v")


def crash(k, call):
    with pytest.raises(ntpool.BugCheck) as info:
        call()
    return info.value


def test_overrun_found_at_free_names_the_allocating_line_and_the_freeing_driver(tmp_path):
    path = tmp_path / "MEMORY.DMP"
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, crash_dump=str(path))
    d = Overflow()
    k.load_driver(d)
    p = d.make(k)
    d.smash(k, p)
    error = crash(k, lambda: d.free_it(k, p))
    assert error.code == 0x19 and error.driver_name == "overflow.sys"
    text = analyze(path)
    assert "ALLOCATED_BY:  overflow.sys!Overflow.make" in text
    assert "DRIVER:  overflow.sys" in text and "Overflow.free_it" in text


def test_special_pool_overrun_names_the_faulting_line(tmp_path):
    path = tmp_path / "MEMORY.DMP"
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, crash_dump=str(path))
    d = Overflow()
    k.load_driver(d)
    k.verifier.enable("overflow.sys", special_pool=True)
    p = d.make(k)
    error = crash(k, lambda: d.smash(k, p))
    assert error.code == 0xD6
    text = analyze(path)
    assert "FAULTING_SOURCE:  overflow.sys!Overflow.smash" in text


def test_leak_at_unload_names_the_driver_from_the_dump(tmp_path):
    path = tmp_path / "MEMORY.DMP"
    k = ntpool.Kernel(nonpaged_pool_bytes=2 * MiB, paged_pool_bytes=2 * MiB, crash_dump=str(path))
    d = Leaky()
    k.verifier.enable("leaky.sys", pool_tracking=True)
    k.load_driver(d)
    crash(k, lambda: k.unload_driver(d))
    text = analyze(path)
    assert "LEAKING_DRIVER:  leaky.sys left 1 allocation(s) behind" in text
    with DumpReader(path) as reader:
        sites = reader.call_sites()
        assert any(s[0] == "leaky.sys" and s[3] == "Leaky.DriverEntry" for s in sites)
        assert ("leaky.sys" in [m[0] for m in reader.loaded_modules()])
        header_list = int.from_bytes(path.read_bytes()[0x20:0x28], "little")
        assert header_list == reader.debugger_data()["PsLoadedModuleList"] == k.loaded_module_list
