"""IRPs a driver builds for its own requests (IoBuildDeviceIoControlRequest,
IoBuildSynchronousFsdRequest, IoBuildAsynchronousFsdRequest, IoGetRelatedDeviceObject), sent to
the compiled ioctl.sys from Python and from the compiled sample samples/wdm/requester.sys:
their buffers per transfer method, and the I/O manager's side of their completion."""

import pathlib

import pytest

import ntpool
from ntpool.native import load_native_driver, unload_native_driver
from ntpool.routines import layouts as L
from ntpool.routines.io import ctl_code
from pooltags import tags_left

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "src" / "ntpool" / "samples" / "wdm"
ANSWER = b"This String is from Device Driver !!!\0"


def machine(windows="7"):
    return ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20, windows=windows)


def pool(k, size, tag="Test"):
    address = k.ExAllocatePoolWithTag(0, size, tag)
    k.write(address, bytes(size))
    return address


@pytest.mark.parametrize("method", (0, 1, 2))
def test_a_device_control_irp_is_built_per_method_and_completed_by_the_io_manager(method):
    k = machine()
    driver = load_native_driver(k, SAMPLES / "ioctl.sys")
    device = k.resolve_device("\\Device\\SIOCTL")
    code = ctl_code(40000, 0x903 if method == 0 else 0x900 + method - 1, method, 0)
    source, output, event, iosb = pool(k, 32), pool(k, 64), pool(k, 0x18), pool(k, 16)
    k.write(source, b"from python\0")
    k.KeInitializeEvent(event, 0, 0)
    before = tags_left(k)
    irp = k.IoBuildDeviceIoControlRequest(code, device, source, 12, output, 40, 0, event, iosb)
    assert irp
    stack = k.current_stack_location(irp) - L.IO_STACK_LOCATION.SIZE
    assert k.read(stack, 1)[0] == 0x0E and k._get32(stack + L.IO_STACK_LOCATION.IoControlCode) == code
    assert (k._get32(stack + L.IO_STACK_LOCATION.InputBufferLength),
            k._get32(stack + L.IO_STACK_LOCATION.OutputBufferLength)) == (12, 40)
    system = k._get64(irp + L.IRP.AssociatedIrp)
    flags = k._get32(irp + L.IRP.Flags)
    assert k.read(system, 12) == b"from python\0"
    assert flags & (L.IRP_BUFFERED_IO | L.IRP_DEALLOCATE_BUFFER) == L.IRP_BUFFERED_IO | L.IRP_DEALLOCATE_BUFFER
    if method == 0:
        assert flags & L.IRP_INPUT_OPERATION and k._get64(irp + L.IRP.UserBuffer) == output
        assert not k._get64(irp + L.IRP.MdlAddress)
    else:
        mdl = k._get64(irp + L.IRP.MdlAddress)
        assert mdl and k._get16(mdl + L.MDL.MdlFlags) & L.MDL_PAGES_LOCKED
    assert k.IofCallDriver(device, irp) == 0
    assert k.read(output, len(ANSWER)) == ANSWER
    assert k._get32(iosb) == 0 and k._get64(iosb + 8) == len(ANSWER)
    assert k.KeReadStateEvent(event) == 1
    assert tags_left(k) == before  # the IRP, its system buffer and MDL are gone
    unload_native_driver(k, driver)


def test_an_output_buffer_that_cannot_be_locked_is_null_with_nothing_left():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "ioctl.sys")
    device = k.resolve_device("\\Device\\SIOCTL")
    before = tags_left(k)
    code = ctl_code(40000, 0x901, 2, 0)
    assert k.IoBuildDeviceIoControlRequest(code, device, 0, 0, 0xFFFFF90000000000, 0x1000, 0, 0, 0) == 0
    assert tags_left(k) == before
    unload_native_driver(k, driver)


def test_fsd_requests_follow_the_device_buffering_and_an_async_one_is_freed_by_its_routine():
    k = machine()

    class Target:
        def __init__(self):
            self.seen = []

        def DriverEntry(self, k, path):
            self.wdm = k.create_driver_object("target.sys")
            _, self.device = k.IoCreateDevice(self.wdm.driver_object, 0, 0, 0x22, 0, 0)
            k._put32(self.device + L.DEVICE_OBJECT.Flags, L.DO_BUFFERED_IO)
            k._put64(self.wdm.driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * 3, k.code_address(self.read))
            k._put64(self.wdm.driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * 4, k.code_address(self.read))

        def read(self, k, device, irp):
            stack = k.current_stack_location(irp)
            self.seen.append((k.read(stack, 1)[0], k._get32(stack + L.IO_STACK_LOCATION.Length),
                              k._get64(stack + L.IO_STACK_LOCATION.ByteOffset)))
            if k._get64(irp + L.IRP.AssociatedIrp):
                k.write(k._get64(irp + L.IRP.AssociatedIrp), b"DATA")
            k._put32(irp + L.IRP.IoStatus_Status, 0)
            k._put64(irp + L.IRP.IoStatus_Information, 4)
            k.IofCompleteRequest(irp, 0)
            return 0

    target = Target()
    k.load_driver(target)
    buffer, event, iosb, offset = pool(k, 16), pool(k, 0x18), pool(k, 16), pool(k, 8)
    k.KeInitializeEvent(event, 0, 0)
    k._put64(offset, 0x200)
    before = tags_left(k)
    irp = k.IoBuildSynchronousFsdRequest(3, target.device, buffer, 16, offset, event, iosb)
    assert k._get32(irp + L.IRP.Flags) & L.IRP_INPUT_OPERATION
    assert k.IofCallDriver(target.device, irp) == 0
    assert target.seen == [(3, 16, 0x200)] and k.read(buffer, 4) == b"DATA"
    assert k.KeReadStateEvent(event) == 1 and k._get64(iosb + 8) == 4
    assert tags_left(k) == before
    freed = []

    def free_it(k, device, irp, context):
        freed.append(irp)
        k.IoFreeIrp(irp)
        return 0xC0000016  # STATUS_MORE_PROCESSING_REQUIRED

    k._put32(target.device + L.DEVICE_OBJECT.Flags, 0)  # neither buffered nor direct: no buffers
    irp = k.IoBuildAsynchronousFsdRequest(4, target.device, buffer, 4, 0, iosb)
    assert k._get64(irp + L.IRP.UserBuffer) == buffer
    stack = k.current_stack_location(irp) - L.IO_STACK_LOCATION.SIZE
    k._put64(stack + L.IO_STACK_LOCATION.CompletionRoutine, k.code_address(free_it))
    k._put8(stack + L.IO_STACK_LOCATION.Control, 0xE0)
    k.IofCallDriver(target.device, irp)
    assert freed == [irp] and tags_left(k) == before


def test_the_requester_sample_asks_ioctl_sys_by_each_method_and_leaves_nothing():
    k = machine()
    ioctl = load_native_driver(k, SAMPLES / "ioctl.sys")
    requester = load_native_driver(k, SAMPLES / "requester.sys")
    before = tags_left(k)
    assert requester.call("Ask") == 0
    lines = [line.removeprefix("requester: ").rstrip("\n") for line in k.debug_output
             if line.startswith("requester:")]
    answer = ANSWER[:-1].decode()
    assert lines == [f"method 0: 00000000, 38 bytes: {answer}",
                     f"method 1: 00000000, 38 bytes: {answer}",
                     f"method 2: 00000000, 38 bytes: {answer}",
                     "write completed C0000010, freeing it",
                     "write sent: C0000010, freed 1"]
    assert tags_left(k) == before
    unload_native_driver(k, requester)
    unload_native_driver(k, ioctl)


def test_the_related_device_object_is_the_top_of_the_file_devices_stack():
    k = machine()
    ioctl = load_native_driver(k, SAMPLES / "ioctl.sys")
    with k.open("\\Device\\SIOCTL") as handle:
        assert k.IoGetRelatedDeviceObject(handle.file_object) == k.resolve_device("\\Device\\SIOCTL")
    unload_native_driver(k, ioctl)
