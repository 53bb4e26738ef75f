"""sysinfo.sys (samples/wdm/sysinfo.c), a compiled driver asking about the system as drivers do:
the pool tag table poolmon reads (sized by one ZwQuerySystemInformation, read by a second into
pool), the loaded modules, the version, the processors and per-processor work pinned with the
system affinity, the current thread."""

import os
import struct

import pytest

import ntpool
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver
from ntpool.native.build import source_directory
from ntpool.routines.sysinfo import STATUS_INFO_LENGTH_MISMATCH, STATUS_INVALID_INFO_CLASS
from ntpool.tags import tag_value

SYSINFO_SYS = os.path.join(source_directory("sysinfo"), "sysinfo.sys")
WINDOWS = ("7", "11")
POOLTAG = struct.Struct("<III4xQIIQ")


def loaded(windows="7", processors=1):
    k = ntpool.Kernel(windows=windows, processors=processors,
                      nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)
    return k, load_native_driver(k, SYSINFO_SYS)


def source_line(text):
    with open(os.path.join(source_directory("sysinfo"), "sysinfo.c")) as source:
        return next(number for number, line in enumerate(source, 1) if text in line)


def scratch(k, data=b""):
    buffer = k.ExAllocatePoolWithTag(0, 0x1000, "Scr ")
    k.write(buffer, data)
    return buffer


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_driver_imports_the_routines_and_loads(windows):
    k, driver = loaded(windows)
    imported = {entry.name for entry in driver.image.imports}
    assert {"ZwQuerySystemInformation", "RtlGetVersion", "PsGetVersion",
            "KeQueryActiveProcessorCount", "KeQueryActiveProcessorCountEx",
            "KeQueryMaximumProcessorCountEx", "KeGetCurrentProcessorNumberEx",
            "KeSetSystemAffinityThreadEx", "KeRevertToUserAffinityThreadEx", "PsGetCurrentThread",
            "ExGetPreviousMode", "PsIsSystemThread", "VerSetConditionMask",
            "RtlVerifyVersionInfo"} <= imported


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_driver_reads_a_tags_bytes_in_use_as_poolmon_does(windows):
    k, driver = loaded(windows)
    k.ExAllocatePoolWithTag(0, 0x100, "Test")
    k.ExAllocatePoolWithTag(1, 0x2000, "Test")
    counts = {row.TagUlong: row for row in k.pool.tracker.snapshot()}[tag_value("Test")]
    assert driver.call("TagBytesInUse", tag_value("Test"), 0) == counts.NonPagedUsed > 0
    assert driver.call("TagBytesInUse", tag_value("Test"), 1) == counts.PagedUsed >= 0x2000
    assert driver.call("TagBytesInUse", tag_value("None"), 0) == 0
    # Its query buffers are freed: nothing left under its tag.
    left = {row.TagUlong: row for row in k.pool.tracker.snapshot()}[tag_value("qSyS")]
    assert left.PagedAllocs == left.PagedFrees > 0


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_tag_table_through_the_native_bridge_is_the_trackers(windows):
    k, driver = loaded(windows)
    k.ExAllocatePoolWithTag(0, 0x80, "Nat1")
    out = scratch(k)
    returned = scratch(k)
    status = driver.call("CopyPoolTags", out, 0x1000, returned)
    snapshot = k.pool.tracker.snapshot()
    assert status == 0
    assert int.from_bytes(k.read(returned, 4), "little") == 8 + len(snapshot) * POOLTAG.size
    assert int.from_bytes(k.read(out, 4), "little") == len(snapshot)
    assert [POOLTAG.unpack(k.read(out + 8 + n * POOLTAG.size, POOLTAG.size))
            for n in range(len(snapshot))] == [tuple(row) for row in snapshot]
    # Short, NULL ReturnLength (_Out_opt_), unknown class.
    assert driver.call("CopyPoolTags", out, 8, 0) & 0xFFFFFFFF == STATUS_INFO_LENGTH_MISMATCH
    assert driver.call("Query", 1234, out, 0x100, returned) & 0xFFFFFFFF == STATUS_INVALID_INFO_CLASS


def test_a_query_into_an_unmapped_buffer_is_0x50_naming_the_driver():
    k, driver = loaded()
    with pytest.raises(BugCheck) as caught:
        driver.call("CopyPoolTags", 0xFFFFF80FFFF00000, 0x1000, 0)
    assert caught.value.code == 0x50 and caught.value.driver_name == "sysinfo.sys"
    assert f"(sysinfo.c:{source_line('Queries += 1;') - 1})" in caught.value.call_site


def test_the_driver_finds_ntoskrnl_and_itself_in_the_module_list():
    k, driver = loaded()
    assert driver.call("ModuleBase", scratch(k, b"ntoskrnl.exe\0")) == k.kernel_data.base
    assert driver.call("ModuleBase", scratch(k, b"sysinfo.sys\0")) == driver.loaded.image_base
    assert driver.call("ModuleBase", scratch(k, b"absent.sys\0")) == 0


@pytest.mark.parametrize("windows, numbers", [("7", (6, 1, 7601, 1, "S")), ("11", (10, 0, 22621, 0, ""))])
def test_the_driver_reads_the_version(windows, numbers):
    major, minor, build, service_pack, first = numbers
    k, driver = loaded(windows)
    out = scratch(k, b"\xff" * 8)
    assert driver.call("Version", out) == major << 48 | minor << 32 | build
    assert int.from_bytes(k.read(out, 2), "little") == service_pack
    assert driver.call("PsVersion", out) == major << 48 | minor << 32 | build
    assert k.read(out, 2).decode("utf-16-le").rstrip("\0") == first
    assert driver.call("IsAtLeast", 6, 1, 1) == 1  # Windows 7 SP1 or later
    assert driver.call("IsAtLeast", 6, 2, 0) == (0 if windows == "7" else 1)  # Windows 8 or later
    assert driver.call("IsAtLeast", 10, 0, 1) == 0  # no Windows 10 has a service pack


@pytest.mark.parametrize("windows", WINDOWS)
def test_per_processor_work_runs_on_each_processor_and_ends_where_it_began(windows):
    k, driver = loaded(windows, processors=3)
    k.set_current_processor(1)
    mask = scratch(k)
    assert driver.call("ActiveProcessors", mask) == 3 and k.read(mask, 8) == (7).to_bytes(8, "little")
    assert driver.call("ProcessorsInGroup", 0) == 3003 and driver.call("ProcessorsInGroup", 1) == 0
    out = scratch(k)
    assert driver.call("OnEachProcessor", out) == 1
    assert struct.unpack("<3I", k.read(out, 12)) == (0, 1, 2)
    assert k.current_processor == 1 and k.system_affinity == 0


def test_the_current_thread_is_a_system_thread_in_kernel_mode():
    k, driver = loaded()
    assert driver.call("ThreadFacts") == 7
