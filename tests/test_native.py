"""Compiled drivers (.sys) on the machine: loader, CPU, calls, SEH, faults, attribution."""

import os
import struct

import pytest

import ntpool
from ntpool import BugCheck, PoolType
from ntpool.native import BadImage, MissingImports, load_native_driver, native_machine, parse_image
from ntpool.native.build import SOURCE_DIRECTORY

MiB = 1 << 20


def sys_path(name: str) -> str:
    return os.path.join(SOURCE_DIRECTORY, name + ".sys")


def sys_bytes(name: str) -> bytes:
    with open(sys_path(name), "rb") as handle:
        return handle.read()


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)


def test_image_is_mapped_as_machine_frames_with_section_protection(k):
    driver = load_native_driver(k, sys_path("faults"))
    image = driver.image
    assert driver.image_base % 0x10000 == 0 and driver.image_size == image.size_of_image
    # The bytes of .text are in the machine's own memory, at the image's base.
    text = next(s for s in image.sections if s.name == ".text")
    assert k.read(driver.image_base + text.rva, 64) == text.raw[:64]
    pte = k.space.pte(driver.image_base + text.rva)
    assert pte & 1 and not pte & 2 and not pte >> 63  # present, read-only, executable
    rdata = next(s for s in image.sections if s.name == ".rdata")
    pte = k.space.pte(driver.image_base + rdata.rva)
    assert pte & 1 and not pte & 2 and pte >> 63  # read-only, no-execute
    # The KLDR entry names the driver, its real base, entry point and SizeOfImage.
    entry = driver.loaded.entry_va
    base, entry_point, size = struct.unpack("<QQQ", k.read(entry + 0x30, 24))
    assert (base, entry_point, size) == (driver.image_base, driver.entry_point, image.size_of_image)


def test_imports_are_bound_and_calls_reach_the_pool(k):
    driver = load_native_driver(k, sys_path("fsfilter"))
    assert driver.entry_status == 0
    rows = {row.TagUlong: row for row in k.pool_tags()}
    assert rows[int.from_bytes(b"FltI", "little")].NonPagedUsed > 0
    assert k.debug_output[-1].startswith("fsfilter: loaded from \\Registry\\Machine")


def test_relocations_are_applied_when_the_image_moves(k):
    first = load_native_driver(k, sys_path("bench"))
    second = load_native_driver(k, sys_path("faults"))
    assert second.image_base != second.image.preferred_base
    assert second.image.relocations  # faults.sys has absolute pointers to rebase
    for rva in second.image.relocations:
        value = struct.unpack("<Q", k.read(second.image_base + rva, 8))[0]
        assert second.image_base <= value < second.image_base + second.image_size
    assert k.read(second.call("Message", 1), 6) == b"raise\0"
    assert first.call("Spin", 10) == 45


def _with_unknown_import() -> bytes:
    data = sys_bytes("fsfilter")
    assert data.count(b"\0DbgPrint\0") == 1
    return data.replace(b"\0DbgPrint\0", b"\0DbgPrinX\0")


def test_missing_imports_are_refused_with_the_list(k):
    with pytest.raises(MissingImports, match=r"ntoskrnl\.exe!DbgPrinX"):
        load_native_driver(k, _with_unknown_import(), name="fsfilter.sys")
    assert not k.drivers


def test_allow_missing_binds_a_stop_that_names_the_routine(k):
    from ntpool.native import UnimplementedRoutine
    with pytest.raises(UnimplementedRoutine, match=r"fsfilter\.sys\+0x[0-9a-f]+ .*called "
                                                   r"ntoskrnl\.exe!DbgPrinX"):
        load_native_driver(k, _with_unknown_import(), name="fsfilter.sys", allow_missing=True)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:100], "malformed|not a PE"),
    (lambda d: b"XX" + d[2:], "no MZ header"),
    (lambda d: d[:0x3C] + b"\xff\xff\x00\x00" + d[0x40:], "malformed"),
])
def test_malformed_images_are_one_clear_error(mutate, message):
    with pytest.raises(BadImage, match=message):
        parse_image(mutate(sys_bytes("faults")), "bad.sys")


def test_seh_catches_hardware_faults_and_raised_status(k):
    driver = load_native_driver(k, sys_path("faults"))
    assert driver.call("CaughtDivide", 7, 0) & 0xFFFFFFFF == 0xC0000094
    assert driver.call("CaughtReadAddress", 0x1000) & 0xFFFFFFFF == 0xC0000005
    assert driver.call("ProbeUserBuffer", 0x7FFFFFFFFFF0, 64) & 0xFFFFFFFF == 0xC0000005
    assert driver.call("ProbeUserBuffer", 0x1001, 4) & 0xFFFFFFFF == 0x80000002  # misaligned
    # ExRaiseStatus inside a __try/__finally inside a __try/__except with a filter.
    assert driver.call("CaughtRaise", 0xC000009A) & 0xFFFFFFFF == 0xC000009A
    assert driver.call("FinallyCount") == 1


def test_unhandled_exception_is_windows_bug_check(k):
    driver = load_native_driver(k, sys_path("faults"))
    with pytest.raises(BugCheck) as caught:
        driver.call("Divide", 1, 0)
    check = caught.value
    assert check.code == 0x1E and check.parameters[0] == 0xC0000094
    assert check.parameters[1] == driver.address_of("Divide") + 0xB or \
        driver.image_base <= check.parameters[1] < driver.image_base + driver.image_size
    assert "faults.sys+0x" in check.detail


def test_write_to_read_only_data_is_0xbe(k):
    driver = load_native_driver(k, sys_path("faults"))
    with pytest.raises(BugCheck) as caught:
        driver.call("WriteReadOnly")
    assert caught.value.code == 0xBE
    assert driver.image_base <= caught.value.parameters[0] < driver.image_base + driver.image_size


def test_irql_through_cr8_and_back(k):
    driver = load_native_driver(k, sys_path("faults"))
    assert driver.call("RaiseAndReport", 2) == 2
    assert k.current_irql == 0


def test_lookaside_list_allocate_and_free_paths(k):
    driver = load_native_driver(k, sys_path("faults"))
    result = driver.call("Lookaside", 5)
    total, misses = result >> 32, result & 0xFFFFFFFF
    assert total == 40
    # Depth 4: the first round misses 8 times, later rounds 4 (the list keeps 4).
    assert misses == 8 + 4 * 4
    rows = {row.TagUlong: row for row in k.pool_tags()}
    row = rows[int.from_bytes(b"Look", "little")]
    assert row.NonPagedAllocs == misses and row.NonPagedUsed == 0


def test_format_routines_follow_the_crt(k):
    driver = load_native_driver(k, sys_path("faults"))
    buffer = k.ExAllocatePoolWithTag(PoolType.NonPagedPool, 100, "Fmt ")
    length = driver.call("Format", buffer, 100)
    assert k.read(buffer, length) == b"n=-42 0beef wide 0000000000001234"


def test_ndis_miniport_registers_and_allocates(k):
    driver = load_native_driver(k, sys_path("ndisminiport"))
    assert driver.loaded.ndis_version == (5, 1)
    rows = {row.TagUlong: row for row in k.pool_tags()}
    assert rows[int.from_bytes(b"NmRx", "little")].NonPagedAllocs == 16
    assert driver.call("SendFrame", 60) == 0
    k.unload_driver(driver)
    rows = {row.TagUlong: row for row in k.pool_tags()}
    assert rows[int.from_bytes(b"NmRx", "little")].NonPagedUsed == 0


def test_python_and_compiled_drivers_share_one_machine(k):
    from ntpool.samples.sloppy import SloppyDriver
    python_driver = k.load_driver(SloppyDriver())
    native = load_native_driver(k, sys_path("fsfilter"))
    assert [d.name for d in k.drivers] == ["sloppy.sys", "fsfilter.sys"]
    assert native_machine(k).driver_at(native.entry_point) is native
    k.unload_driver(python_driver)
    k.unload_driver(native)


# --- hostile images ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(0, 8192))
def test_a_damaged_image_loads_or_is_one_clear_error(edits, cut):
    data = bytearray(sys_bytes("faults"))
    for offset, value in edits:
        data[offset % len(data)] = value
    data = bytes(data[:max(cut, 64)]) if cut < len(data) else bytes(data)
    k = ntpool.Kernel(nonpaged_pool_bytes=1 * MiB, paged_pool_bytes=1 * MiB)
    try:
        load_native_driver(k, data, name="damaged.sys", allow_missing=True, call_entry=False)
    except (BadImage, MissingImports):
        pass


def test_committed_drivers_are_what_the_sources_build():
    from ntpool.native import build
    if not build.compiler_available():
        pytest.skip("ziglang is not installed (pip install 'ntpool[build]')")
    assert build.main(["--check"]) == 0
