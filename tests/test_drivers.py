"""Drivers load and unload, and every allocation knows its driver and call site."""

import struct
from pathlib import Path
import sys
import types

import pytest

import ntpool
from ntpool.routines.ex import POOL_EXTENDED_PARAMETER

NP = ntpool.PoolType.NonPagedPool


class Recorder:
    name = "recorder.sys"

    def __init__(self):
        self.buffers = []

    def DriverEntry(self, k, RegistryPath):
        self.path = RegistryPath
        self.buffers.append(k.ExAllocatePoolWithTag(NP, 64, "RecD"))  # site: DriverEntry
        return 0

    def DriverUnload(self, k):
        for b in self.buffers:
            k.ExFreePoolWithTag(b, "RecD")

    def work(self, k):
        return self._helper(k)

    def _helper(self, k):
        return k.ExAllocatePoolWithTag(NP, 5000, "RecW")


def line_of(function, text):
    source_lines, start = __import__("inspect").getsourcelines(function)
    return start + next(i for i, line in enumerate(source_lines) if text in line)


def test_load_calls_driver_entry_and_unload_calls_driver_unload(k):
    d = Recorder()
    loaded = k.load_driver(d)
    assert loaded.name == "recorder.sys" and k.drivers == [loaded]
    assert d.path.endswith("\\Services\\recorder")
    assert k.current_driver is None
    k.unload_driver(d)
    assert k.drivers == []
    assert {r.Tag: r.NonPagedUsed for r in k.pool_tags()}["DceR"] == 0


def test_every_allocation_records_driver_and_line(k):
    d = Recorder()
    k.load_driver(d)
    site = k.allocation_site(d.buffers[0])
    assert k.call_sites.drivers[site.driver].name == "recorder.sys"
    assert site.lineno == line_of(Recorder.DriverEntry, '"RecD"')
    assert site.function == "Recorder.DriverEntry"
    big = d.work(k)  # outside DriverEntry: attributed by the code that ran
    assert k.allocation_driver(big).name == "recorder.sys"
    assert k.allocation_site(big).lineno == line_of(Recorder._helper, '"RecW"')


def test_allocation_by_code_that_is_no_driver_has_no_driver(k):
    p = k.ExAllocatePoolWithTag(NP, 64, "Test")
    assert k.allocation_driver(p) is None
    assert k.allocation_site(p).function.endswith("test_allocation_by_code_that_is_no_driver_has_no_driver")


def test_the_site_is_in_the_header_only_with_the_stack_trace_database(k):
    d = Recorder()
    k.load_driver(d)
    # By default header bytes 8-15 are ProcessBilled (0): the site is kept beside the header.
    assert k.read(d.buffers[0] - 8, 8) == bytes(8)
    assert k.pool.site_of(d.buffers[0]) and k.allocation_driver(d.buffers[0]).name == "recorder.sys"
    traced = ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20,
                           stack_trace_database=True)
    d = Recorder()
    traced.load_driver(d)
    index = struct.unpack("<H", traced.read(d.buffers[0] - 8, 2))[0]
    assert index and traced.call_sites.table[index] == traced.allocation_site(d.buffers[0])


def test_a_reused_lookaside_chunk_records_its_new_site(k):
    p = k.ExAllocatePoolWithTag(NP, 64, "Site")
    first = k.allocation_site(p)
    k.ExFreePoolWithTag(p, "Site")
    q = k.ExAllocatePoolWithTag(NP, 64, "Site")
    assert q == p and k.allocation_site(q).lineno == first.lineno + 3


def test_driver_name_is_in_kernel_memory_on_ps_loaded_module_list(k):
    loaded = k.load_driver(Recorder())
    flink = struct.unpack("<Q", k.read(k.loaded_module_list, 8))[0]
    assert flink == loaded.entry_va
    length, _, buffer = struct.unpack("<HHxxxxQ", k.read(loaded.name_va, 16))
    assert k.read(buffer, length).decode("utf-16-le") == "recorder.sys"


def test_module_drivers_work():
    module = types.ModuleType("modular")
    exec("import ntpool\n"
         "def DriverEntry(k, path):\n"
         "    global BUF\n"
         "    BUF = k.ExAllocatePoolWithTag(0, 32, 'Modu')\n"
         "    return 0\n"
         "def DriverUnload(k):\n"
         "    k.ExFreePoolWithTag(BUF, 'Modu')\n", module.__dict__)
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    loaded = k.load_driver(module)
    assert loaded.name == "modular.sys"
    assert k.allocation_driver(module.BUF) is loaded
    k.unload_driver(module)


def test_failing_driver_entry_raises_and_does_not_stay_loaded(k):
    class Broken:
        name = "broken.sys"

        def DriverEntry(self, k, path):
            return ntpool.NtStatus.STATUS_INSUFFICIENT_RESOURCES

    with pytest.raises(ntpool.NtStatusError) as info:
        k.load_driver(Broken())
    assert info.value.status == 0xC000009A
    assert k.drivers == []


@pytest.mark.parametrize("thing", [object(), 42, "driver.sys"])
def test_loading_something_that_is_not_a_driver_is_a_plain_error(k, thing):
    with pytest.raises(TypeError, match="no DriverEntry"):
        k.load_driver(thing)


def test_loading_twice_and_unloading_unknown_are_plain_errors(k):
    d = Recorder()
    k.load_driver(d)
    with pytest.raises(ValueError, match="already loaded"):
        k.load_driver(Recorder())
    with pytest.raises(ValueError, match="not loaded"):
        k.unload_driver(object())


def test_site_recording_survives_the_site_cache_being_reset(k):
    p = k.ExAllocatePoolWithTag(NP, 64, "Rset")
    before = k.allocation_site(p)
    k.load_driver(Recorder())  # resets resolved sites
    q = k.ExAllocatePoolWithTag(NP, 64, "Rset")
    assert k.allocation_site(q).filename == before.filename == sys.modules[__name__].__file__


def test_call_site_table_round_trips(k):
    from ntpool.drivers import call_site_table, parse_call_site_table

    d = Recorder()
    loaded = k.load_driver(d)
    table = parse_call_site_table(call_site_table(k.call_sites))
    site = k.pool.site_of(d.buffers[0])
    ldr, address, line, function, filename = table[site]
    assert (ldr, line, function, filename) == (loaded.entry_va, k.allocation_site(d.buffers[0]).lineno,
                                               "Recorder.DriverEntry", __file__)
    assert address == k.allocation_site(d.buffers[0]).address


def test_call_site_table_parser_refuses_garbage():
    from hypothesis import given, settings, strategies as st

    from ntpool.drivers import parse_call_site_table

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def parse(data):
        try:
            parse_call_site_table(b"NTCS" + data)
        except ValueError:
            pass

    parse()


@pytest.mark.parametrize("routine", [
    lambda k: k.ExAllocatePoolWithTag(NP, 64, "Rout"),
    lambda k: k.ExAllocatePool(NP, 64),
    lambda k: k.ExAllocatePool2(0x40, 64, "Rout"),
    lambda k: k.ExAllocatePoolWithTagPriority(NP, 64, "Rout", 16),
    lambda k: k.FsRtlAllocatePool(NP, 64),
    lambda k: k.FsRtlAllocatePoolWithTag(NP, 6000, "Rout"),
    lambda k: k.NdisAllocateMemoryWithTag(64, "Rout")[1],
    lambda k: k.ExAllocatePoolWithTag(NP | 4, 64, "Rout"),  # cache aligned
    # Routines built on another, each making its usual call itself:
    lambda k: k.ExAllocatePoolWithQuota(NP, 64),
    lambda k: k.ExAllocatePoolQuotaZero(NP, 64, "Rout"),
    lambda k: k.ExAllocatePoolWithQuotaTag(NP, 64, "Rout"),
    lambda k: k.ExAllocatePoolZero(NP, 64, "Rout"),
    lambda k: k.ExAllocatePool3(0x40, 64, "Rout"),
    lambda k: k.ExAllocatePool3(0x40, 64, "Rout", [POOL_EXTENDED_PARAMETER(1, Priority=16)], 1),
    lambda k: k.FsRtlAllocatePoolWithQuota(NP, 64),
    lambda k: k.FsRtlAllocatePoolWithQuotaTag(NP, 64, "Rout"),
    lambda k: k.NdisAllocateMemory(64, 0, -1)[1],
])
def test_every_routine_records_the_drivers_line_not_its_own(k, routine):
    p = routine(k)
    site = k.allocation_site(p)
    assert site.filename == __file__ and site.function.startswith("<lambda>")


def test_call_site_addresses_do_not_depend_on_the_hash_seed(tmp_path):
    import os
    import subprocess

    script = ("import ntpool\n"
              "k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)\n"
              "def driver_line(k):\n"
              "    return k.ExAllocatePoolWithTag(0, 32, 'Seed')\n"
              "print(k.allocation_site(driver_line(k)).address)\n")
    path = tmp_path / "seeded.py"
    path.write_text(script)
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed,
                   PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        outputs.add(subprocess.run([sys.executable, str(path)], env=env, capture_output=True,
                                   text=True, check=True).stdout)
    assert len(outputs) == 1
