"""Notify routines and callbacks (PsSetCreateProcessNotifyRoutine(Ex), thread and image
notify routines, CmRegisterCallback(Ex), ObRegisterCallbacks) from Python drivers and the
compiled sample samples/wdm/notify.sys: their blocks in pool, when they run, Windows' statuses,
and the callback a driver leaves registered when it unloads (0xCE when it would run)."""

import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.errors import BugCheck, NtStatusError
from ntpool.native import load_native_driver, unload_native_driver
from ntpool.native.machine import NativeError
from ntpool.routines import layouts as L
from ntpool.routines.ps_notify import (EX_ROUTINE, MAX_FAST_REFS, OB_FLT_REGISTRATION_VERSION,
                                       STATUS_ACCESS_DENIED, STATUS_CALLBACK_BYPASS,
                                       STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, STATUS_INVALID_PARAMETER,
                                       STATUS_PROCEDURE_NOT_FOUND)
from pooltags import tags_in_use

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "src" / "ntpool" / "samples" / "wdm"
STATUS_INSUFFICIENT_RESOURCES = 0xC000009A


def machine(windows="7"):
    return ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20, windows=windows)


class Watcher:
    """A Python driver that registers notify routines in DriverEntry."""

    def __init__(self, remove=True):
        self.seen, self.remove = [], remove

    def DriverEntry(self, k, path):
        owner = k.current_driver
        self.process = k.code_address(lambda k, *a: self.seen.append(("process", *a)), owner=owner)
        self.image = k.code_address(self.on_image, owner=owner)
        assert k.PsSetCreateProcessNotifyRoutine(self.process, 0) == 0
        assert k.PsSetLoadImageNotifyRoutine(self.image) == 0

    def on_image(self, k, name, process_id, info):
        properties, base, size = struct.unpack("<I4xQ8xQ", k.read(info, 0x20))
        self.seen.append(("image", k._unicode_string(name), process_id, properties, base, size))

    def DriverUnload(self, k):
        if self.remove:
            assert k.PsSetCreateProcessNotifyRoutine(self.process, 1) == 0
            assert k.PsRemoveLoadImageNotifyRoutine(self.image) == 0


class Quiet:
    def DriverEntry(self, k, path):
        return 0


def test_process_and_image_notify_routines_run_when_processes_and_drivers_are_made():
    k = machine()
    watcher = Watcher()
    k.load_driver(watcher)
    process = k.create_process("app.exe")
    assert watcher.seen == [("process", k.system_process.pid, process.pid, 1)]
    loaded = k.load_driver(Quiet())
    name, process_id, properties, base, size = watcher.seen[-1][1:]
    assert name == "\\SystemRoot\\system32\\drivers\\Quiet.sys" and process_id == 0
    assert properties == 3 | 1 << 8  # IMAGE_ADDRESSING_MODE_32BIT, SystemModeImage
    assert base == loaded.image_base and size > 0
    k.unload_driver(watcher)
    k.create_process("later.exe")
    assert len(watcher.seen) == 2


def test_callback_blocks_are_cbrb_pool_in_the_kernel_array_as_fast_references():
    for windows, paged in (("7", True), ("11", False)):
        k = machine(windows)
        before = tags_in_use(k)
        routine = k.code_address(lambda k, *a: None)
        assert k.PsSetCreateThreadNotifyRoutine(routine) == 0
        value = k._get64(k.notify_arrays["thread"])
        block = value & ~MAX_FAST_REFS
        assert value & MAX_FAST_REFS == MAX_FAST_REFS
        assert k._get64(block + 8) == routine
        row = {r.Tag: r for r in k.pool_tags()}["Cbrb"]
        assert (row.PagedAllocs, row.NonPagedAllocs) == ((1, 0) if paged else (0, 1))
        assert k.PsRemoveCreateThreadNotifyRoutine(routine) == 0
        assert k._get64(k.notify_arrays["thread"]) == 0 and tags_in_use(k) == before
        assert k.PsRemoveCreateThreadNotifyRoutine(routine) == STATUS_PROCEDURE_NOT_FOUND


def test_limits_and_duplicates_have_the_documented_statuses():
    k = machine("7")
    routines = [k.code_address(lambda k, *a: None) for _ in range(65)]
    for routine in routines[:8]:
        assert k.PsSetLoadImageNotifyRoutine(routine) == 0
    assert k.PsSetLoadImageNotifyRoutine(routines[8]) == STATUS_INSUFFICIENT_RESOURCES  # 8 on Windows 7
    for routine in routines[:64]:
        assert k.PsSetCreateProcessNotifyRoutine(routine, 0) == 0
    assert k.PsSetCreateProcessNotifyRoutine(routines[64], 0) == STATUS_INVALID_PARAMETER
    assert k.PsSetCreateProcessNotifyRoutine(routines[0], 0) == STATUS_INVALID_PARAMETER
    assert k.PsSetCreateProcessNotifyRoutine(routines[64], 1) == STATUS_PROCEDURE_NOT_FOUND
    k = machine("11")
    for routine in routines[:64]:
        assert k.PsSetLoadImageNotifyRoutine(routine) == 0  # 64 from Windows 8.1
    assert k.PsSetLoadImageNotifyRoutine(routines[64]) == STATUS_INSUFFICIENT_RESOURCES


def test_an_ex_process_routine_may_refuse_the_creation():
    k = machine()
    info_seen = []

    def refuse(k, process, pid, info):
        info_seen.append((k._get64(info), k._unicode_string(k._get64(info + 0x30))))
        k._put32(info + 0x40, STATUS_ACCESS_DENIED)

    routine = k.code_address(refuse)
    assert k.PsSetCreateProcessNotifyRoutineEx(routine, 0) == 0
    count = len(k.processes)
    with pytest.raises(NtStatusError) as refused:
        k.create_process("blocked.exe")
    assert refused.value.status == STATUS_ACCESS_DENIED and len(k.processes) == count
    assert info_seen == [(0x48, "blocked.exe")]
    # The Ex form is removed by the Ex form only.
    assert k.PsSetCreateProcessNotifyRoutine(routine, 1) == STATUS_PROCEDURE_NOT_FOUND
    assert k.PsSetCreateProcessNotifyRoutineEx(routine, 1) == 0


def test_an_ex_routine_outside_an_integrity_checked_image_is_access_denied():
    k = machine()
    pool = k.ExAllocatePoolWithTag(0, 16, "Code")
    assert k.PsSetCreateProcessNotifyRoutineEx(pool, 0) == STATUS_ACCESS_DENIED
    assert k.PsSetCreateProcessNotifyRoutine(pool, 0) == 0  # the plain form has no such check


def test_a_notify_routine_left_registered_at_unload_is_0xce_at_the_next_event():
    k = machine()
    watcher = Watcher(remove=False)
    k.load_driver(watcher)
    k.unload_driver(watcher)  # Windows checks nothing here
    with pytest.raises(BugCheck) as stop:
        k.create_process("next.exe")
    assert stop.value.code == 0xCE
    assert stop.value.parameters == (watcher.process, 8, watcher.process, 0)


def test_notify_routines_above_passive_level_are_0xa():
    k = machine()
    k.KeRaiseIrql(1)
    with pytest.raises(BugCheck) as stop:
        k.PsSetLoadImageNotifyRoutine(k.code_address(lambda k, *a: None))
    assert stop.value.code == 0xA


# --- registry callbacks ------------------------------------------------------------------------

def key_handle(k):
    path = k.unicode_string("\\Registry\\Machine\\Software\\Watched")
    attributes = k.ExAllocatePoolWithTag(1, L.OBJECT_ATTRIBUTES.SIZE, "ObjA")
    k.write(attributes, bytes(L.OBJECT_ATTRIBUTES.SIZE))
    k._put32(attributes, L.OBJECT_ATTRIBUTES.SIZE)
    k._put64(attributes + L.OBJECT_ATTRIBUTES.ObjectName, path)
    k._put32(attributes + L.OBJECT_ATTRIBUTES.Attributes, L.OBJ_KERNEL_HANDLE)
    k.registry_create("\\Registry\\Machine\\Software")
    status, handle, _ = k.ZwCreateKey(0xF003F, attributes, 0, 0, 0)
    assert status == 0
    return handle


def set_value(k, handle, name, value=7):
    data = k.ExAllocatePoolWithTag(1, 4, "Data")
    k._put32(data, value)
    return k.ZwSetValueKey(handle, k.unicode_string(name), 0, L.REG_DWORD, data, 4)


def test_registry_callbacks_see_set_value_before_and_after_and_may_refuse_it():
    k = machine()
    handle = key_handle(k)
    calls = []

    def callback(k, context, kind, info):
        if kind == 1:
            name = k._unicode_string(k._get64(info + 8))
            calls.append(("pre", context, name, k._get32(info + 0x20)))
            return STATUS_ACCESS_DENIED if name == "Locked" else 0
        calls.append(("post", context, k._get32(info + 8)))
        return 0

    before = tags_in_use(k)
    status, cookie = k.CmRegisterCallback(k.code_address(callback), 0x55)
    assert status == 0 and cookie == 1 and tags_in_use(k)["CMcb"] == before.get("CMcb", 0) + 1
    assert set_value(k, handle, "Open") == 0
    assert set_value(k, handle, "Locked") == STATUS_ACCESS_DENIED
    assert calls == [("pre", 0x55, "Open", 4), ("post", 0x55, 0), ("pre", 0x55, "Locked", 4)]
    path = "\\Registry\\Machine\\Software\\Watched"
    assert k.registry_value(path, "Open") is not None and k.registry_value(path, "Locked") is None
    assert k.CmUnRegisterCallback(cookie) == 0 and tags_in_use(k).get("CMcb", 0) == before.get("CMcb", 0)
    assert k.CmUnRegisterCallback(cookie) == STATUS_INVALID_PARAMETER
    assert set_value(k, handle, "Locked") == 0


def test_registry_callbacks_run_by_altitude_and_bypass_skips_the_write():
    k = machine()
    handle = key_handle(k)
    order = []

    def make(name, result=0):
        def callback(k, context, kind, info):
            if kind == 1:
                order.append(name)
                return result
            return 0
        return k.code_address(callback)

    def altitude(text):
        return k.unicode_string(text)

    assert k.CmRegisterCallbackEx(make("low"), altitude("1000"), 0, 0, 0)[0] == 0
    assert k.CmRegisterCallbackEx(make("high"), altitude("380000.5"), 0, 0, 0)[0] == 0
    assert k.CmRegisterCallbackEx(make("mid"), altitude("0320000"), 0, 0, 0)[0] == 0
    assert k.CmRegisterCallback(make("none"), 0)[0] == 0
    assert k.CmRegisterCallbackEx(make("x"), altitude("320000.000"), 0, 0, 0)[0] == \
        STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    for bad in ("", "12a", "1.2.3", ".5", "-1"):
        assert k.CmRegisterCallbackEx(make("x"), altitude(bad), 0, 0, 0)[0] == STATUS_INVALID_PARAMETER
    assert set_value(k, handle, "V") == 0
    assert order == ["none", "high", "mid", "low"]
    order.clear()
    assert k.CmRegisterCallbackEx(make("bypass", STATUS_CALLBACK_BYPASS), altitude("400000"), 0, 0, 0)[0] == 0
    assert set_value(k, handle, "Skipped") == 0
    assert order == ["none", "bypass"]
    assert k.registry_value("\\Registry\\Machine\\Software\\Watched", "Skipped") is None


# --- object callbacks: OB_CALLBACK_REGISTRATION from the driver's memory ------------------------

def registration(k, version=OB_FLT_REGISTRATION_VERSION, count=1, altitude="321000",
                 object_type=None, operations=1, pre=None, post=0):
    base = k.ExAllocatePoolWithTag(0, 0x200, "ObRg")
    k.write(base, bytes(0x200))
    cell = base + 0x180
    k._put64(cell, k.object_types["Process"] if object_type is None else object_type)
    text = altitude.encode("utf-16-le")
    k.write(base + 0x100, text)
    k.write(base, struct.pack("<HH4xHH4xQQQ", version, count, len(text), len(text), base + 0x100, 0,
                              base + 0x40))
    pre = k.code_address(lambda k, *a: 0) if pre is None else pre
    for index in range(max(count, 0) if count < 8 else 0):
        k.write(base + 0x40 + 0x20 * index, struct.pack("<QI4xQQ", cell, operations, pre, post))
    return base


def test_object_callbacks_register_with_their_block_and_unregister():
    k = machine()
    before = tags_in_use(k)
    status, handle = k.ObRegisterCallbacks(registration(k))
    assert status == 0 and handle
    assert tags_in_use(k)["ObCb"] == before.get("ObCb", 0) + 1
    [(object_type, operations, pre, post)] = k.ob_callbacks()
    assert object_type == k.object_types["Process"] and operations == 1 and post == 0
    assert k.ObRegisterCallbacks(registration(k))[0] == STATUS_FLT_INSTANCE_ALTITUDE_COLLISION
    k.ObUnRegisterCallbacks(handle)
    assert "ObCb" not in tags_in_use(k)
    with pytest.raises(ValueError):
        k.ObUnRegisterCallbacks(handle)


def test_object_callback_registrations_windows_refuses():
    k = machine()
    pool_code = k.ExAllocatePoolWithTag(0, 16, "Code")
    cases = [dict(version=0x200), dict(count=0), dict(altitude=""), dict(altitude="3x"),
             dict(object_type=k.object_types["Event"]), dict(operations=0), dict(operations=4),
             dict(pre=0, post=0)]
    for case in cases:
        assert k.ObRegisterCallbacks(registration(k, **case)) == (STATUS_INVALID_PARAMETER, 0), case
    assert k.ObRegisterCallbacks(registration(k, pre=pool_code)) == (STATUS_ACCESS_DENIED, 0)
    assert k.ObRegisterCallbacks(registration(k, object_type=k.object_types["Thread"]))[0] == 0


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0x28, max_size=0x28), st.binary(min_size=0x20, max_size=0x80))
def test_a_hostile_registration_is_a_status_or_a_bug_check_never_a_traceback(header, operations):
    k = machine()
    base = k.ExAllocatePoolWithTag(0, 0x100, "ObRg")
    k.write(base, header)
    k.write(base + 0x80, operations)
    if header[0x28 - 8] & 1:  # half the time, point OperationRegistration at the table
        k._put64(base + 0x20, base + 0x80)
    try:
        status, handle = k.ObRegisterCallbacks(base)
    except BugCheck as stop:
        assert stop.code == 0x50  # a pointer in it nothing maps, read by the kernel
        return
    assert status in (0, STATUS_INVALID_PARAMETER, STATUS_ACCESS_DENIED,
                      STATUS_FLT_INSTANCE_ALTITUDE_COLLISION)
    assert bool(handle) == (status == 0)


# --- the compiled sample -------------------------------------------------------------------------

@pytest.mark.parametrize("windows", ("7", "11"))
def test_the_notify_sample_registers_everything_sees_events_and_removes_it_all(windows):
    k = machine(windows)
    before = tags_in_use(k)
    driver = load_native_driver(k, SAMPLES / "notify.sys")
    process = k.create_process("app.exe")
    with pytest.raises(NtStatusError) as refused:
        k.create_process("blocked.exe")
    assert refused.value.status == STATUS_ACCESS_DENIED
    k.load_driver(Quiet())
    handle = key_handle(k)
    assert set_value(k, handle, "Open") == 0
    assert set_value(k, handle, "Locked") == STATUS_ACCESS_DENIED
    assert driver.call("Counts") == 2 << 16 | 1 << 8 | 1
    unload_native_driver(k, driver)
    lines = [line.removeprefix("notify: ").rstrip("\n") for line in k.debug_output]
    refused_pid = process.pid + 4
    assert lines == [
        "registering it again: C000000D",
        "Ex routine: 00000000",
        "thread routine: 00000000",
        "image routine: 00000000",
        "registry callback: 00000000, cookie 1",
        "same altitude: C01C0011",
        "object callbacks: 00000000",
        f"process {process.pid} created by {k.system_process.pid} (1)",
        f"process {refused_pid} created by {k.system_process.pid} (1)",
        f"refusing process {refused_pid}",
        "image \\SystemRoot\\system32\\drivers\\Quiet.sys in process 0, system 1, 1048576 bytes",
        "set value Open (4 bytes)",
        "value set, status 00000000",
        "set value Locked (4 bytes)",
        "removed; removing again: C000007A",
    ]
    assert {tag: n for tag, n in tags_in_use(k).items() if tag in ("Cbrb", "CMcb", "ObCb")} == \
        {tag: n for tag, n in before.items() if tag in ("Cbrb", "CMcb", "ObCb")}
    assert EX_ROUTINE == 1


def test_the_notify_sample_leaving_its_process_routine_is_0xce_at_the_next_process():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "notify.sys")
    driver.call("LeaveProcessNotify")
    unload_native_driver(k, driver)
    with pytest.raises(BugCheck) as stop:
        k.create_process("next.exe")
    routine = stop.value.parameters[0]
    assert stop.value.code == 0xCE and stop.value.parameters == (routine, 8, routine, 0)
    assert driver.image_base <= routine < driver.image_base + driver.image_size
    assert stop.value.driver_name.lower() == "notify.sys"


def test_an_unsigned_image_cannot_register_ex_routines():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "lifetime.sys")  # linked without /integritycheck
    assert k.PsSetCreateProcessNotifyRoutineEx(driver.entry_point, 0) == STATUS_ACCESS_DENIED
    assert NativeError  # (the sample's own registrations: test above)
