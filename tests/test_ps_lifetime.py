"""Driver lifetime: run-down protection (EX_RUNDOWN_REF in the driver's memory) and driver
object extensions, from Python drivers and the compiled sample samples/wdm/lifetime.sys."""

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.errors import BugCheck, MachineHung
from ntpool.native import load_native_driver, unload_native_driver
from ntpool.native.machine import NativeError
from ntpool.routines import layouts as L
from ntpool.routines.io import IO_CLIENT_EXTENSION_SIZE, STATUS_OBJECT_NAME_COLLISION, TAG_DRIVER_EXTENSION
from ntpool.routines.ke_sync import WaitForever
from ntpool.routines.rundown import EX_RUNDOWN_ACTIVE, WAIT_BLOCK_COUNT
from ntpool.tags import display
from pooltags import tags_in_use

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "src" / "ntpool" / "samples" / "wdm"


def machine(windows="7"):
    return ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20, windows=windows)


def run_ref(k):
    address = k.ExAllocatePoolWithTag(0, 8, "Rund")
    k.write(address, b"\xAA" * 8)
    k.ExInitializeRundownProtection(address)
    return address


# --- run-down protection -----------------------------------------------------------------------

def test_protections_are_counted_above_the_active_bit_and_refused_once_run_down_begins():
    k = machine()
    ref = run_ref(k)
    assert k._get64(ref) == 0
    assert k.ExAcquireRundownProtection(ref) == 1 and k._get64(ref) == 2
    assert k.ExAcquireRundownProtectionEx(ref, 5) == 1 and k._get64(ref) == 12
    k.ExReleaseRundownProtectionEx(ref, 5)
    k.ExReleaseRundownProtection(ref)
    assert k._get64(ref) == 0
    k.ExWaitForRundownProtectionRelease(ref)  # none held: returns at once, run-down begun
    assert k._get64(ref) == EX_RUNDOWN_ACTIVE
    assert k.ExAcquireRundownProtection(ref) == 0 and k._get64(ref) == EX_RUNDOWN_ACTIVE
    k.ExWaitForRundownProtectionRelease(ref)  # a second wait: nothing changes
    k.ExRundownCompleted(ref)
    assert k._get64(ref) == EX_RUNDOWN_ACTIVE
    k.ExReInitializeRundownProtection(ref)
    assert k._get64(ref) == 0 and k.ExAcquireRundownProtection(ref) == 1


def test_a_wait_lets_a_work_item_release_the_last_protection_through_the_wait_block():
    k = machine()
    ref = run_ref(k)
    seen = []

    def release(k, parameter):
        value = k._get64(ref)
        seen.append((value & EX_RUNDOWN_ACTIVE, k._get64((value & ~1) + WAIT_BLOCK_COUNT)))
        k.ExReleaseRundownProtection(ref)

    assert k.ExAcquireRundownProtection(ref) and k.ExAcquireRundownProtection(ref)
    item = k.ExAllocatePoolWithTag(0, 0x20, "Item")
    k.initialize_work_item(item, k.code_address(release), 0)
    k.ExQueueWorkItem(item, 1)
    k.ExReleaseRundownProtection(ref)  # one left, the work item's to release
    k.ExWaitForRundownProtectionRelease(ref)
    # During the wait Count held the wait block's address with the active bit, one protection in it.
    assert seen == [(1, 1)]
    value = k._get64(ref)
    assert value & EX_RUNDOWN_ACTIVE and value != EX_RUNDOWN_ACTIVE  # the stale wait block
    assert k.ExAcquireRundownProtection(ref) == 0
    k.ExRundownCompleted(ref)
    assert k._get64(ref) == EX_RUNDOWN_ACTIVE


def test_a_wait_nothing_can_end_is_wait_forever_and_above_apc_level_is_0xa():
    k = machine()
    ref = run_ref(k)
    k.ExAcquireRundownProtection(ref)
    with pytest.raises(WaitForever, match="1 protection"):
        k.ExWaitForRundownProtectionRelease(ref)
    k = machine()
    ref = run_ref(k)
    k.KeRaiseIrql(2)
    with pytest.raises(BugCheck) as stop:
        k.ExWaitForRundownProtectionRelease(ref)
    assert stop.value.code == 0xA


def test_a_run_ref_at_an_address_nothing_maps_is_a_page_fault_bug_check():
    k = machine()
    with pytest.raises(BugCheck) as stop:
        k.ExAcquireRundownProtection(0xFFFFF90000000000)
    assert stop.value.code == 0x50


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 1000)), max_size=30))
def test_the_count_is_the_protections_held_shifted_by_one(steps):
    k = machine()
    ref = run_ref(k)
    held = 0
    for acquire, count in steps:
        if acquire:
            assert k.ExAcquireRundownProtectionEx(ref, count) == 1
            held += count
        elif held >= count:
            k.ExReleaseRundownProtectionEx(ref, count)
            held -= count
        assert k._get64(ref) == held << 1
    if held:
        k.ExReleaseRundownProtectionEx(ref, held)
    k.ExWaitForRundownProtectionRelease(ref)
    assert k._get64(ref) == EX_RUNDOWN_ACTIVE


# --- driver object extensions ------------------------------------------------------------------

def test_driver_object_extensions_are_drve_pool_listed_on_the_driver_extension_and_freed_with_it():
    k = machine()
    before = tags_in_use(k)
    wdm = k.create_driver_object("ext.sys")
    driver = wdm.driver_object
    status, first = k.IoAllocateDriverObjectExtension(driver, 0x1111, 0x30)
    assert status == 0 and k.read(first, 0x30) == bytes(0x30)
    status, second = k.IoAllocateDriverObjectExtension(driver, 0x2222, 8)
    assert status == 0
    assert k.IoAllocateDriverObjectExtension(driver, 0x1111, 8) == (STATUS_OBJECT_NAME_COLLISION, 0)
    assert k.IoGetDriverObjectExtension(driver, 0x1111) == first
    assert k.IoGetDriverObjectExtension(driver, 0x2222) == second
    assert k.IoGetDriverObjectExtension(driver, 0x3333) == 0
    # IO_CLIENT_EXTENSION headers, newest first on DRIVER_EXTENSION.ClientDriverExtension.
    head = k._get64(driver + L.DRIVER_OBJECT.DriverExtension) + L.DRIVER_EXTENSION.ClientDriverExtension
    assert k._get64(head) == second - IO_CLIENT_EXTENSION_SIZE
    assert k._get64(second - IO_CLIENT_EXTENSION_SIZE) == first - IO_CLIENT_EXTENSION_SIZE
    assert k._get64(first - 8) == 0x1111
    assert display(TAG_DRIVER_EXTENSION) == "DRVE" and tags_in_use(k)["DRVE"] == 2
    k._put64(second - IO_CLIENT_EXTENSION_SIZE, 0)  # the driver cuts its list: nothing is lost
    k.delete_driver_object(wdm)
    assert "DRVE" not in tags_in_use(k) and tags_in_use(k) == before


def test_a_driver_extension_list_damaged_into_a_loop_hangs_as_windows_walks_it():
    k = machine()
    wdm = k.create_driver_object("loop.sys")
    _, extension = k.IoAllocateDriverObjectExtension(wdm.driver_object, 1, 8)
    block = extension - IO_CLIENT_EXTENSION_SIZE
    k._put64(block, block)
    with pytest.raises(MachineHung):
        k.IoGetDriverObjectExtension(wdm.driver_object, 2)


# --- the compiled sample -------------------------------------------------------------------------

@pytest.mark.parametrize("windows", ("7", "11"))
def test_the_lifetime_sample_guards_its_unload_with_run_down_and_frees_its_extension(windows):
    k = machine(windows)
    before = tags_in_use(k)
    driver = load_native_driver(k, SAMPLES / "lifetime.sys")
    assert tags_in_use(k)["DRVE"] == 1
    # Count after acquire (2), after 3 more (8), after releasing them all (0).
    assert driver.call("CountSteps") == 0x020800
    unload_native_driver(k, driver)
    lines = [line.removeprefix("lifetime: ").rstrip("\n") for line in k.debug_output]
    assert lines == [
        "second extension C0000035, NULL; found ours",
        "unload waits for run-down",
        "work item releases its protection (run-down begun)",  # while DriverUnload waits
        "run-down over after 1 use(s), count a wait block",
        "completed (count 1), acquire now 0",
    ]
    assert tags_in_use(k) == before


def test_the_lifetime_sample_unloading_with_a_protection_held_never_ends():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "lifetime.sys")
    driver.call("HoldProtection")
    with pytest.raises(NativeError, match="ExWaitForRundownProtectionRelease called from .*lifetime.c"):
        unload_native_driver(k, driver)
