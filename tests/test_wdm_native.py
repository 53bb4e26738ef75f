"""Compiled WDM drivers through their whole life: Microsoft's wdm_test_x64.sys and the C
mirrors of the WDK samples in src/ntpool/samples/wdm (devices, IRPs of every transfer
method, a filter, timers and events, leaks caught by tag and site)."""

import pathlib
import struct

import pytest

import ntpool
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver, unload_native_driver
from ntpool.native.msvc import DEFAULT_SECURITY_COOKIE, security_cookie_rva
from ntpool.routines.io import IRP_MJ_DEVICE_CONTROL, IRP_MJ_NAMES
from ntpool.tags import display
from pooltags import tags_left

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "ntpool" / "samples" / "wdm"
MSVC_DRIVER = ROOT.parent / "shared" / "data" / "drivers" / "wdm_test_x64.sys"
STATUS_NOT_SUPPORTED = 0xC00000BB
ANSWER = b"This String is from Device Driver !!!\0"
IOCTL_IN_DIRECT, IOCTL_OUT_DIRECT, IOCTL_NEITHER, IOCTL_BUFFERED = \
    0x9C402401, 0x9C402406, 0x9C40240B, 0x9C40240C


def machine():
    return ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)


@pytest.mark.skipif(not MSVC_DRIVER.is_file(), reason="../shared/data/drivers is not beside the repository")
def test_the_msvc_driver_runs_its_whole_life_and_leaves_nothing():
    k = machine()
    driver = load_native_driver(k, MSVC_DRIVER)
    assert driver.entry_status == 0
    # The loader initialised the /GS cookie GsDriverEntry checks.
    cookie = k.read(driver.image_base + security_cookie_rva(driver.image), 8)
    assert int.from_bytes(cookie, "little") not in (0, DEFAULT_SECURITY_COOKIE)
    # INIT is gone after DriverEntry; .text is still there.
    init = next(s for s in driver.image.sections if s.name == "INIT")
    assert not k.is_resident(driver.image_base + init.rva) and k.is_resident(driver.image_base + 0x1000)
    live = tags_left(k)
    for tag in ("Devi", "Driv", "Symb", "Symt", "ObSc"):
        assert live.get(tag) == 1, tag
    device = k.resolve_device(r"\DosDevices\wdm_test")
    assert k.object_name(device) == r"\Device\wdm_test"
    assert k.object_security(device)  # the DACL wdmsec's fallback set with ZwSetSecurityObject
    assert k.registered_majors(driver.driver_object) == list(range(28))
    with driver.open() as handle:
        assert handle.create_result.status == 0
        assert handle.device_control(0x222000, b"abc", 8).status == 0
        for major in range(28):
            if major in (0, 2, 0x12):
                continue
            expected = 0 if major == IRP_MJ_DEVICE_CONTROL else STATUS_NOT_SUPPORTED
            assert handle.request(major).status == expected, IRP_MJ_NAMES[major]
    assert handle.cleanup_result.status == STATUS_NOT_SUPPORTED  # its default handler
    assert handle.close_result.status == 0
    assert k.debug_output[0] == "Inside IRP_MJ_CREATE handler"
    assert k.debug_output[-1] == "Inside IRP_MJ_CLOSE handler"
    unload_native_driver(k, driver)
    assert tags_left(k) == {}


@pytest.mark.skipif(not MSVC_DRIVER.is_file(), reason="../shared/data/drivers is not beside the repository")
def test_msvc_page_code_paged_out_is_0xd1_at_dispatch_level():
    k = machine()
    driver = load_native_driver(k, MSVC_DRIVER)
    page = next(s for s in driver.image.sections if s.name == "PAGE")
    assert k.page_out() >= 1 and not k.is_resident(driver.image_base + page.rva)
    k.KeRaiseIrql(2)
    with pytest.raises(BugCheck) as caught:
        driver.machine.call(driver.image_base + 0x606C, (0, 0, 0, 0), driver)  # IoCreateDeviceSecure
    assert caught.value.code == 0xD1
    assert caught.value.parameters[0] == driver.image_base + 0x606C


def test_the_ioctl_sample_answers_every_transfer_method():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "ioctl.sys")
    with k.open(r"\DosDevices\IoctlTest") as handle:
        for code in (IOCTL_IN_DIRECT, IOCTL_OUT_DIRECT, IOCTL_NEITHER, IOCTL_BUFFERED):
            result = handle.device_control(code, b"Hello", 64)
            assert (result.status, result.information, result.output) == (0, len(ANSWER), ANSWER)
        short = handle.device_control(IOCTL_BUFFERED, b"Hi", 4)
        assert short.output == ANSWER[:4]
        assert handle.device_control(IOCTL_BUFFERED, b"", 4).status == 0xC000000D
        # METHOD_NEITHER with a kernel address as the input: ProbeForRead raises inside the
        # driver's __try, and its __except returns the status.
        parameters = (8).to_bytes(8, "little") + (4).to_bytes(8, "little") + \
            IOCTL_NEITHER.to_bytes(8, "little") + (0xFFFFFA8000000000).to_bytes(8, "little")
        user = k.user_space.allocate(8)
        probe = handle.request(IRP_MJ_DEVICE_CONTROL, parameters=parameters, user_buffer=user)
        assert probe.status == 0xC0000005
    assert any("Exception while accessing inBuf 0XC0000005" in line for line in k.debug_output)
    unload_native_driver(k, driver)
    k.user_space.free(user)
    assert tags_left(k) == {}


def test_the_legacy_filter_sees_requests_pass_and_complete():
    k = machine()
    target = load_native_driver(k, SAMPLES / "ioctl.sys")
    filter_driver = load_native_driver(k, SAMPLES / "filter.sys")
    top = k.IoGetAttachedDevice(k.resolve_device(r"\Device\SIOCTL"))
    assert k.object_name(top) is None and top in k.devices_of(filter_driver.driver_object)
    with k.open(r"\DosDevices\IoctlTest") as handle:
        assert handle.device_control(IOCTL_BUFFERED, b"via", 8).output == ANSWER[:8]
    assert "filter: IOCTL completed with 00000000, 8 bytes" in k.debug_output
    unload_native_driver(k, filter_driver)
    assert "filter: 4 requests passed, 1 device controls completed" in k.debug_output
    unload_native_driver(k, target)
    assert tags_left(k) == {}


def test_the_event_sample_signals_and_completes_from_its_timer_dpc():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "event.sys")
    event = k.create_event()
    with k.open(r"\DosDevices\Event_Sample") as handle:
        queued = handle.device_control(0x222000, struct.pack("<IIQq", 1, 0, event, -10_000_000))
        assert queued.status == 0 and k.KeReadStateEvent(k.event_of(event)) == 0
        pending = handle.device_control(0x222000, struct.pack("<IIQq", 0, 0, 0, -20_000_000))
        assert pending.pending and pending.status == 0x103
        k.advance_clock(10_000_000)
        assert k.KeReadStateEvent(k.event_of(event)) == 1 and pending.pending
        k.advance_clock(10_000_000)
        assert pending.completed and pending.status == 0
        cancelled = handle.device_control(0x222000, struct.pack("<IIQq", 0, 0, 0, -20_000_000))
        assert cancelled.pending
    assert cancelled.status == 0xC0000120  # STATUS_CANCELLED at cleanup
    assert k.ZwClose(event) == 0
    unload_native_driver(k, driver)
    assert tags_left(k) == {}


def test_a_leaked_mdl_and_irp_are_named_by_tag_and_site_at_unload():
    k = machine()
    k.verifier.enable("io_leak.sys", pool_tracking=True)
    driver = load_native_driver(k, SAMPLES / "io_leak.sys")
    with driver.open() as handle:
        assert handle.device_control(0x222000).status == 0
        assert handle.device_control(0x222004).status == 0
    with pytest.raises(BugCheck) as caught:
        unload_native_driver(k, driver)  # DriverUnload ran; pool tracking found two left
    assert caught.value.code == 0xC4 and caught.value.parameters[0] == 0x62
    assert caught.value.parameters[3] == 2
    leaked = {display(row.tag): k.call_sites.describe(row.site)
              for row in k.verifier.tracking.outstanding_for("io_leak.sys")}
    assert set(leaked) == {"Mdl ", "Irp "}
    assert all(site.startswith("io_leak.sys io_leak.sys+0x") for site in leaked.values())


def test_ntpool_run_sends_ioctls_to_a_driver(capsys):
    from ntpool.cli.main import main
    code = main(["run", str(SAMPLES / "ioctl.sys"), "--ioctl", "9C40240C:48656c6c6f:64",
                 "--ioctl", "9C402401:41:4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "IRP_MJ_DEVICE_CONTROL 0x9c40240c (METHOD_BUFFERED)" in out
    assert "'This String is from Device Driver !!!.'" in out
    assert "IRP_MJ_DEVICE_CONTROL 0x9c402401 (METHOD_IN_DIRECT)" in out and "'This'" in out
    assert "DbgPrint: Called IOCTL_SIOCTL_METHOD_BUFFERED" in out
    assert "left no pool allocated" in out
    assert main(["run", str(SAMPLES / "ioctl.sys"), "--ioctl", "xyz"]) == 2
    assert "not hexadecimal" in capsys.readouterr().err
    leak = main(["run", str(SAMPLES / "io_leak.sys"), "--ioctl", "222000", "--verifier", "pool_tracking"])
    assert leak == 3 and "0x000000c4" in capsys.readouterr().out
