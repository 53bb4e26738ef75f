"""The I/O manager, objects, strings, registry, security and sync routines, driven the way a
WDM driver drives them: structures in simulated memory, dispatch routines by address."""

import pytest

import ntpool
from ntpool.errors import BugCheck, NtStatusError
from ntpool.routines import layouts as L
from ntpool.routines.io import (IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL,
                                IRP_MJ_READ, IRP_MJ_WRITE, STATUS_INVALID_DEVICE_REQUEST, ctl_code)
from ntpool.routines.ke_sync import STATUS_TIMEOUT, WaitForever
from pooltags import tags_left

MiB = 1 << 20


class EchoDriver:
    """A WDM driver written against ntpool's routines: one device, a link, four IOCTLs
    (one per transfer method) that echo their input, buffered read/write."""

    def __init__(self, k, leak_mdl=False):
        self.k = k
        self.leak_mdl = leak_mdl
        self.calls = []
        self.stored = b""

    def entry(self, wdm):
        k = self.k
        name = k.unicode_string("\\Device\\Echo")
        status, device = k.IoCreateDevice(wdm.driver_object, 32, name, 0x22, L.FILE_DEVICE_SECURE_OPEN, 0)
        assert status == 0
        link = k.unicode_string("\\DosDevices\\Echo")
        assert k.IoCreateSymbolicLink(link, name) == 0
        k.free_unicode_string(name)
        k.free_unicode_string(link)
        k._put32(device + L.DEVICE_OBJECT.Flags,
                 (k._get32(device + L.DEVICE_OBJECT.Flags) | L.DO_BUFFERED_IO) & ~L.DO_DEVICE_INITIALIZING)
        for major, fn in ((IRP_MJ_CREATE, self.complete), (IRP_MJ_CLOSE, self.complete),
                          (IRP_MJ_CLEANUP, self.complete), (IRP_MJ_DEVICE_CONTROL, self.ioctl),
                          (IRP_MJ_READ, self.read), (IRP_MJ_WRITE, self.write)):
            address = k.code_address(fn)
            k._put64(wdm.driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * major, address)
        k._put64(wdm.driver_object + L.DRIVER_OBJECT.DriverUnload, k.code_address(self.unload))
        self.device = device
        return 0

    def finish(self, k, irp, status, information=0):
        k._put32(irp + L.IRP.IoStatus_Status, status)
        k._put64(irp + L.IRP.IoStatus_Information, information)
        k.IofCompleteRequest(irp, 0)
        return status

    def complete(self, k, device, irp):
        stack = k.current_stack_location(irp)
        self.calls.append(k.read(stack, 1)[0])
        return self.finish(k, irp, 0)

    def ioctl(self, k, device, irp):
        stack = k.current_stack_location(irp)
        out_len = k._get32(stack + L.IO_STACK_LOCATION.OutputBufferLength)
        in_len = k._get32(stack + L.IO_STACK_LOCATION.InputBufferLength)
        code = k._get32(stack + L.IO_STACK_LOCATION.IoControlCode)
        method = code & 3
        if method == 0:
            buffer = k._get64(irp + L.IRP.AssociatedIrp)
            data = k.read(buffer, in_len)
            k.write(buffer, data[::-1])
        elif method in (1, 2):
            data = k.read(k._get64(irp + L.IRP.AssociatedIrp), in_len)
            mdl = k._get64(irp + L.IRP.MdlAddress)
            target = k.system_address_for_mdl(mdl)
            k.write(target, data[::-1][:out_len])
            if self.leak_mdl:
                k.IoAllocateMdl(target, out_len, 0, 0, 0)
        else:
            source = k._get64(stack + L.IO_STACK_LOCATION.Type3InputBuffer)
            target = k._get64(irp + L.IRP.UserBuffer)
            try:
                k.ProbeForRead(source, in_len, 1)
                k.ProbeForWrite(target, out_len, 1)
            except NtStatusError as error:
                return self.finish(k, irp, error.status)
            k.write(target, k.read(source, in_len)[::-1][:out_len])
        return self.finish(k, irp, 0, min(in_len, out_len))

    def read(self, k, device, irp):
        stack = k.current_stack_location(irp)
        length = min(k._get32(stack + L.IO_STACK_LOCATION.Length), len(self.stored))
        k.write(k._get64(irp + L.IRP.AssociatedIrp), self.stored[:length])
        return self.finish(k, irp, 0, length)

    def write(self, k, device, irp):
        stack = k.current_stack_location(irp)
        length = k._get32(stack + L.IO_STACK_LOCATION.Length)
        self.stored = k.read(k._get64(irp + L.IRP.AssociatedIrp), length)
        return self.finish(k, irp, 0, length)

    def unload(self, k, driver_object):
        link = k.unicode_string("\\DosDevices\\Echo")
        assert k.IoDeleteSymbolicLink(link) == 0
        k.free_unicode_string(link)
        k.IoDeleteDevice(self.device)


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=4 * MiB, paged_pool_bytes=4 * MiB)


def load(k, driver):
    wdm = k.create_driver_object("echo.sys")
    assert driver.entry(wdm) == 0
    k.driver_entry_returned(wdm)
    return wdm


def unload(k, wdm):
    k.call_code(k.driver_unload_routine(wdm), wdm.driver_object)
    k.delete_driver_object(wdm)


def test_a_driver_life_uses_windows_tags_and_leaves_nothing(k):
    driver = EchoDriver(k)
    wdm = load(k, driver)
    live = tags_left(k)
    assert live["Devi"] == 1 and live["Symb"] == 1 and live["Symt"] == 1 and live["Driv"] == 1
    assert live["ObNm"] >= 3  # the driver's, the device's and the link's names
    assert k.registry_value(wdm.service_key, "Start") == (L.REG_DWORD, (3).to_bytes(4, "little"))
    assert k.registered_majors(wdm.driver_object) == [0, 2, 3, 4, 14, 18]
    with k.open("\\DosDevices\\Echo") as handle:
        for method in range(4):
            code = ctl_code(0x22, 0x800 + method, method, 0)
            result = handle.device_control(code, b"hello", 5)
            assert (result.status, result.information, result.output) == (0, 5, b"olleh"), method
        assert handle.write(b"stored").information == 6
        assert handle.read(16).output == b"stored"
        unknown = handle.request(0x0A)  # IRP_MJ_QUERY_VOLUME_INFORMATION: not registered
        assert unknown.status == STATUS_INVALID_DEVICE_REQUEST
    assert driver.calls == [IRP_MJ_CREATE, IRP_MJ_CLEANUP, IRP_MJ_CLOSE]
    assert tags_left(k).get("Irp ", 0) == 0 and tags_left(k).get("Mdl ", 0) == 0
    unload(k, wdm)
    assert tags_left(k) == {}


def test_an_mdl_leaked_by_a_driver_is_named_by_tag_and_site(k):
    driver = EchoDriver(k, leak_mdl=True)
    wdm = load(k, driver)
    loaded = k.load_driver(type("Holder", (), {"name": "echo.sys", "DriverEntry": lambda s, k, p: 0})())
    k.python_code[k.major_function(wdm.driver_object, IRP_MJ_DEVICE_CONTROL)] = (driver.ioctl, loaded)
    with k.open("\\Device\\Echo") as handle:
        handle.device_control(ctl_code(0x22, 0x801, 2, 0), b"abc", 3)
    unload(k, wdm)
    assert tags_left(k) == {"Mdl ": 1}


def test_method_neither_probes_user_addresses(k):
    driver = EchoDriver(k)
    load(k, driver)
    handle = k.open("\\Device\\Echo")
    irp_status = handle.device_control(ctl_code(0x22, 0x803, 3, 0), b"xy", 2)
    assert irp_status.output == b"yx"
    with pytest.raises(NtStatusError) as caught:
        k.ProbeForRead(0xFFFFFA8000000000, 4, 1)
    assert caught.value.status == 0xC0000005
    with pytest.raises(NtStatusError):
        k.ProbeForWrite(0x10000, 4, 1)  # user space, but nothing is mapped there
    with pytest.raises(NtStatusError) as caught:
        k.ProbeForRead(0x10001, 4, 4)
    assert caught.value.status == 0x80000002
    handle.close()


def test_irps_complete_once_and_free_once(k):
    keeper = k.ExAllocatePoolWithTag(0, 64, "peeK")  # keeps the page mapped after the free
    irp = k.IoAllocateIrp(2, 0)
    assert tags_left(k) == {"Keep": 1, "Irp ": 1}
    assert keeper
    assert k.read(irp + L.IRP.CurrentLocation, 1)[0] == 3
    k.IoFreeIrp(irp)
    with pytest.raises(BugCheck) as caught:
        k.IoFreeIrp(irp)
    assert caught.value.code == 0x44


def test_completion_routines_run_upward_and_can_stop_completion(k):
    irp = k.IoAllocateIrp(2, 0)
    seen = []

    def on_complete(k, device, irp_, context):
        seen.append(context)
        return 0xC0000016  # STATUS_MORE_PROCESSING_REQUIRED: the IRP is ours again

    # As IoSetCompletionRoutine does: on the next (lower) stack location.
    k._put8(irp + L.IRP.CurrentLocation, 2)
    k._put64(irp + L.IRP.CurrentStackLocation, irp + L.IRP.SIZE + L.IO_STACK_LOCATION.SIZE)
    lower = irp + L.IRP.SIZE
    k._put64(lower + L.IO_STACK_LOCATION.CompletionRoutine, k.code_address(on_complete))
    k._put64(lower + L.IO_STACK_LOCATION.Context, 0x1234)
    k._put8(lower + L.IO_STACK_LOCATION.Control, L.SL_INVOKE_ON_SUCCESS)
    k._put8(irp + L.IRP.CurrentLocation, 1)
    k._put64(irp + L.IRP.CurrentStackLocation, lower)
    k.IofCompleteRequest(irp, 0)
    assert seen == [0x1234]
    k.IoFreeIrp(irp)


def test_mdls_describe_lock_and_map_pages(k):
    buffer = k.ExAllocatePoolWithTag(0, 6000, "MdlT")
    mdl = k.IoAllocateMdl(buffer, 6000, 0, 0, 0)
    assert k._get16(mdl + L.MDL.Size) == L.MDL.SIZE + 8 * ((buffer & 0xFFF) + 6000 + 0xFFF >> 12)
    k.MmBuildMdlForNonPagedPool(mdl)
    assert k.system_address_for_mdl(mdl) == buffer
    k.IoFreeMdl(mdl)
    user = k.user_space.allocate(100)
    k.write(user, b"user data")
    mdl = k.IoAllocateMdl(user, 100, 0, 0, 0)
    k.MmProbeAndLockPages(mdl, 1, 1)
    mapped = k.system_address_for_mdl(mdl)
    assert mapped != user and k.read(mapped, 9) == b"user data"
    k.MmUnlockPages(mdl)
    assert not k.is_resident(mapped)
    k.IoFreeMdl(mdl)
    k.ExFreePoolWithTag(buffer, "MdlT")
    kernel_mdl = k.IoAllocateMdl(0xFFFFFA8000000000, 8, 0, 0, 0)
    with pytest.raises(NtStatusError):
        k.MmProbeAndLockPages(kernel_mdl, 1, 0)  # a user-mode caller naming a kernel address
    k.IoFreeMdl(kernel_mdl)


def test_strings_allocate_strg_and_free(k):
    source = k.unicode_string("Hello Wörld")
    ansi = k.ExAllocatePoolWithTag(1, 16, "AnsS")
    assert k.RtlUnicodeStringToAnsiString(ansi, source, 1) == 0
    assert tags_left(k)["Strg"] == 2
    back = k.ExAllocatePoolWithTag(1, 16, "UniS")
    assert k.RtlAnsiStringToUnicodeString(back, ansi, 1) == 0
    assert k.string_text(back) == "Hello Wörld"
    assert k.RtlCompareUnicodeString(source, back, 0) == 0
    k.RtlFreeUnicodeString(back)
    k.RtlFreeAnsiString(ansi)
    assert tags_left(k)["Strg"] == 1
    buffer = k.ExAllocatePoolWithTag(1, 64, "Buf ")
    k.write(buffer, "abc".encode("utf-16-le") + b"\0\0")
    target = k.ExAllocatePoolWithTag(1, 16, "UniT")
    k.RtlInitUnicodeString(target, buffer)
    assert k._get16(target) == 6 and k._get16(target + 2) == 8
    k._put16(target + 2, 12)
    assert k.RtlAppendUnicodeToString(target, k.unicode_string("defg") + 16) == 0xC0000023
    assert k.wcschr(buffer, ord("b")) == buffer + 2 and k.wcslen(buffer) == 3


def test_the_registry_keeps_values_and_counts_key_handles(k):
    path = k.unicode_string("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\demo\\Parameters")
    attributes = k.ExAllocatePoolWithTag(1, L.OBJECT_ATTRIBUTES.SIZE, "ObjA")
    k.write(attributes, bytes(L.OBJECT_ATTRIBUTES.SIZE))
    k._put32(attributes, L.OBJECT_ATTRIBUTES.SIZE)
    k._put64(attributes + L.OBJECT_ATTRIBUTES.ObjectName, path)
    k._put32(attributes + L.OBJECT_ATTRIBUTES.Attributes, L.OBJ_KERNEL_HANDLE | L.OBJ_CASE_INSENSITIVE)
    assert k.ZwOpenKey(0xF003F, attributes)[0] == 0xC0000034
    status, _, _ = k.ZwCreateKey(0xF003F, attributes, 0, 0, 0)
    assert status == 0xC0000034  # the parent key does not exist
    k.registry_create("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\demo")
    status, handle, disposition = k.ZwCreateKey(0xF003F, attributes, 0, 0, 0)
    assert status == 0 and disposition == L.REG_CREATED_NEW_KEY
    assert tags_left(k)["Key "] == 1
    name = k.unicode_string("Level")
    data = k.ExAllocatePoolWithTag(1, 4, "Data")
    k._put32(data, 7)
    assert k.ZwSetValueKey(handle, name, 0, L.REG_DWORD, data, 4) == 0
    out = k.ExAllocatePoolWithTag(1, 64, "Info")
    assert k.ZwQueryValueKey(handle, name, L.KeyValuePartialInformation, out, 8) == (0xC0000023, 16)
    assert k.ZwQueryValueKey(handle, name, L.KeyValuePartialInformation, out, 13) == (0x80000005, 16)
    assert k.ZwQueryValueKey(handle, name, L.KeyValuePartialInformation, out, 64) == (0, 16)
    assert k.read(out, 16) == (0).to_bytes(4, "little") + (4).to_bytes(4, "little") + \
        (4).to_bytes(4, "little") + (7).to_bytes(4, "little")
    assert k.ZwClose(handle) == 0
    assert "Key " not in tags_left(k)
    assert k.ZwClose(handle) == 0xC0000008


def test_security_descriptors_round_trip_through_the_self_relative_form(k):
    sd = k.ExAllocatePoolWithTag(1, L.SECURITY_DESCRIPTOR.SIZE, "SdAb")
    assert k.RtlCreateSecurityDescriptor(sd, 1) == 0
    system = k.well_known_sid(0x108)
    admins = k.well_known_sid(0x110)
    assert k.read(system, 12) == bytes([1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0])
    assert k.RtlLengthSid(admins) == 16
    acl_size = L.ACL.SIZE + 2 * (8 + 16)
    acl = k.ExAllocatePoolWithTag(1, acl_size, "Acl ")
    assert k.RtlCreateAcl(acl, acl_size, 2) == 0
    assert k.RtlAddAccessAllowedAce(acl, 2, 0x10000000, system) == 0
    assert k.RtlAddAccessAllowedAce(acl, 2, 0x10000000, admins) == 0
    assert k.RtlAddAccessAllowedAce(acl, 2, 0x10000000, admins) == 0xC0000099
    assert k.RtlSetDaclSecurityDescriptor(sd, 1, acl, 0) == 0
    assert k.RtlGetDaclSecurityDescriptor(sd) == (0, 1, acl, 0)
    length = k.RtlLengthSecurityDescriptor(sd)
    size_cell = k.ExAllocatePoolWithTag(1, 4, "Len ")
    k._put32(size_cell, 4)
    assert k.RtlAbsoluteToSelfRelativeSD(sd, 0, size_cell) == 0xC0000023
    needed = k._get32(size_cell)
    assert needed == length - L.SECURITY_DESCRIPTOR.SIZE + L.SECURITY_DESCRIPTOR.RELATIVE_SIZE
    relative = k.ExAllocatePoolWithTag(1, needed, "SdRe")
    assert k.RtlAbsoluteToSelfRelativeSD(sd, relative, size_cell) == 0
    status, present, dacl, _ = k.RtlGetDaclSecurityDescriptor(relative)
    assert present and k.read(dacl, acl_size) == k.read(acl, acl_size)
    assert k.RtlLengthSecurityDescriptor(relative) == needed
    status, captured = k.SeCaptureSecurityDescriptor(relative, 0, 1, 1)
    assert status == 0 and tags_left(k)["SeSc"] == 1
    k.SeReleaseSecurityDescriptor(captured, 0, 1)
    assert "SeSc" not in tags_left(k)


def test_objects_are_referenced_opened_and_secured(k):
    wdm = k.create_driver_object("objs.sys")
    name = k.unicode_string("\\Device\\Objs")
    status, device = k.IoCreateDevice(wdm.driver_object, 0, name, 0x22, 0, 0)
    assert k.IoCreateDevice(wdm.driver_object, 0, name, 0x22, 0, 0)[0] == 0xC0000035
    device_type = k.object_types["Device"]
    assert k.ObReferenceObjectByPointer(device, 0, device_type, 0) == 0
    assert k.ObReferenceObjectByPointer(device, 0, k.object_types["File"], 0) == 0xC0000024
    status, handle = k.ObOpenObjectByPointer(device, L.OBJ_KERNEL_HANDLE, 0, 0x1F01FF, device_type, 0)
    assert status == 0 and handle >> 63
    sd = k.ExAllocatePoolWithTag(1, L.SECURITY_DESCRIPTOR.SIZE, "SdAb")
    k.RtlCreateSecurityDescriptor(sd, 1)
    k.RtlSetDaclSecurityDescriptor(sd, 1, 0, 0)
    assert k.ZwSetSecurityObject(handle, 4, sd) == 0
    assert k._get64(device + L.DEVICE_OBJECT.SecurityDescriptor) == k.object_security(device)
    assert k.ZwClose(handle) == 0
    k.ObfDereferenceObject(device)
    k.IoDeleteDevice(device)
    assert "Devi" not in tags_left(k) and "ObSc" not in tags_left(k)


def test_events_resources_and_fast_mutexes_in_one_thread(k):
    event = k.ExAllocatePoolWithTag(0, L.KEVENT_SIZE, "Evnt")
    k.KeInitializeEvent(event, 1, 0)
    timeout = k.ExAllocatePoolWithTag(0, 8, "Time")
    k.write(timeout, (-10_000_000).to_bytes(8, "little", signed=True))
    before = k.KeQuerySystemTime()
    assert k.KeWaitForSingleObject(event, 0, 0, 0, timeout) == STATUS_TIMEOUT
    assert k.KeQuerySystemTime() == before + 10_000_000
    assert k.KeSetEvent(event, 0, 0) == 0
    assert k.KeWaitForSingleObject(event, 0, 0, 0, 0) == 0
    assert k.KeReadStateEvent(event) == 0  # a synchronization event is taken by the wait
    with pytest.raises(WaitForever):
        k.KeWaitForSingleObject(event, 0, 0, 0, 0)
    resource = k.ExAllocatePoolWithTag(0, L.ERESOURCE.SIZE, "Rsrc")
    k.ExInitializeResourceLite(resource)
    assert k.ExAcquireResourceExclusiveLite(resource, 1) == 1
    assert k.ExIsResourceAcquiredExclusiveLite(resource) == 1
    k.ExReleaseResourceLite(resource)
    with pytest.raises(BugCheck):
        k.ExReleaseResourceLite(resource)


def test_fast_mutex_raises_to_apc_level(k):
    mutex = k.ExAllocatePoolWithTag(0, L.FAST_MUTEX.SIZE, "FMtx")
    k.initialize_fast_mutex(mutex)
    k.ExAcquireFastMutex(mutex)
    assert k.KeGetCurrentIrql() == 1
    with pytest.raises(WaitForever):
        k.ExAcquireFastMutexUnsafe(mutex)
    k.ExReleaseFastMutex(mutex)
    assert k.KeGetCurrentIrql() == 0


def test_system_routine_addresses_come_from_the_registry(k):
    known = k.unicode_string("ExAllocatePoolWithTag")
    unknown = k.unicode_string("IoCreateDeviceSecure")  # wdmsec.lib's, not ntoskrnl's
    address = k.MmGetSystemRoutineAddress(known)
    assert address and k.MmGetSystemRoutineAddress(unknown) == 0
    va = k.call_code(address, 0, 32, ntpool.tags.tag_value("rsyS"))
    assert "Sysr" in tags_left(k)
    k.ExFreePoolWithTag(va, "rsyS")
    assert k.IoIsWdmVersionAvailable(1, 0x30) == 1 and k.IoIsWdmVersionAvailable(6, 2) == 0


def test_pageable_image_pages_page_out_and_back_with_their_protection(k):
    page = 0xFFFFF88005000000
    frame = k.physical.allocate_frame()
    k.space.map_page(page, frame, writable=False, executable=True)
    k.physical.write(frame << 12, b"\xc3")  # ret
    k.pageable_image_pages.add(page)
    assert k.page_out() >= 1 and not k.is_resident(page)
    assert k.read(page, 1) == b"\xc3"  # paged back in at PASSIVE_LEVEL
    pte = k.space.pte(page)
    assert not pte & 2 and not pte >> 63  # still read-only and executable
    assert k.page_out(page) == 1
    k.KeRaiseIrql(2)
    with pytest.raises(BugCheck) as caught:
        k.read(page, 1)
    assert caught.value.code == 0x0A


def test_ioctl_specs_parse_or_name_what_is_wrong():
    from ntpool.tools.requests import parse_ioctl
    request = parse_ioctl("9C40240C:48656c6c6f:0x40")
    assert (request.code, request.input, request.output_length, request.method) == \
        (0x9C40240C, b"Hello", 64, "METHOD_BUFFERED")
    assert parse_ioctl("0x222003").input == b"" and parse_ioctl("222003").method == "METHOD_NEITHER"
    for bad, message in (("", "CODE"), ("zz", "not hexadecimal"), ("1:abc", "not hex bytes"),
                         ("1::x", "not a number"), ("1::-1", "0 to"), ("1:2:3:4", "CODE"),
                         ("1ffffffff", "ULONG")):
        with pytest.raises(ValueError, match=message):
            parse_ioctl(bad)


@pytest.mark.parametrize("spec", ["", ":", "::", "0:00:0", "ffffffff:" + "ab" * 8 + ":4096"])
def test_ioctl_spec_parser_never_fails_otherwise(spec):
    from ntpool.tools.requests import parse_ioctl
    try:
        parse_ioctl(spec)
    except ValueError:
        pass


def test_requests_from_the_command_line_path_reach_the_driver(k):
    from ntpool.tools.requests import parse_ioctl, run_requests
    driver = EchoDriver(k)
    wdm = load(k, driver)
    lines = []
    target = type("Loaded", (), {"driver_object": wdm.driver_object, "name": "echo.sys"})()
    results = run_requests(k, target, [parse_ioctl("222000:616263:3"), parse_ioctl("222003:7879:2")],
                           lines.append)
    assert [r.output for _, r in results] == [b"", b"cba", b"yx", b"", b""]
    assert "IRP_MJ_DEVICE_CONTROL 0x00222000 (METHOD_BUFFERED)" in lines[1]
    assert "63 62 61  'cba'" in lines[1] and lines[-1].startswith("IRP_MJ_CLOSE")
    unload(k, wdm)
    assert tags_left(k) == {}


def test_a_request_left_pending_is_finished_when_the_driver_completes_it(k):
    driver = EchoDriver(k)
    wdm = load(k, driver)
    held = []

    def pend(k, device, irp):
        stack = k.current_stack_location(irp)
        k._put8(stack + L.IO_STACK_LOCATION.Control, L.SL_PENDING_RETURNED)  # IoMarkIrpPending
        held.append(irp)
        return 0x103

    k._put64(wdm.driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * IRP_MJ_DEVICE_CONTROL,
             k.code_address(pend))
    with k.open("\\Device\\Echo") as handle:
        result = handle.device_control(ctl_code(0x22, 0x800, 0, 0), b"later", 5)
        assert result.pending and not result.completed and tags_left(k)["Irp "] == 1
        k.write(k._get64(held[0] + L.IRP.AssociatedIrp), b"done!")
        driver.finish(k, held[0], 0, 5)
        assert result.completed and result.output == b"done!" and "Irp " not in tags_left(k)
    unload(k, wdm)
    assert tags_left(k) == {}


@pytest.mark.parametrize("stack_size", [1, 2, 8, 9])
def test_ioinitializeirp_zeroes_the_packet_and_sets_its_fields(k, stack_size):
    """Every byte of the packet: the fields IoInitializeIrp sets, zeros elsewhere (whatever
    the memory held); IoAllocateIrp adds its AllocationFlags."""
    size = L.io_size_of_irp(stack_size)
    irp = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, size + 16, "Pkt ")
    k.write(irp, b"\xAA" * (size + 16))
    k.IoInitializeIrp(irp, size, stack_size)
    expected = bytearray(size)
    expected[L.IRP.Type:L.IRP.Type + 2] = L.IO_TYPE_IRP.to_bytes(2, "little")
    expected[L.IRP.Size:L.IRP.Size + 2] = size.to_bytes(2, "little")
    expected[L.IRP.StackCount] = stack_size
    expected[L.IRP.CurrentLocation] = stack_size + 1
    entry = (irp + L.IRP.ThreadListEntry).to_bytes(8, "little")
    expected[L.IRP.ThreadListEntry:L.IRP.ThreadListEntry + 16] = entry + entry
    stack = irp + L.IRP.SIZE + stack_size * L.IO_STACK_LOCATION.SIZE
    expected[L.IRP.CurrentStackLocation:L.IRP.CurrentStackLocation + 8] = stack.to_bytes(8, "little")
    assert k.read(irp, size + 16) == bytes(expected) + b"\xAA" * 16
    allocated = k.IoAllocateIrp(stack_size, False)
    # Fixed size (a lookaside list's) up to IopLargeIrpStackLocations, 8; past it, not.
    fixed = L.IRP_ALLOCATED_FIXED_SIZE if stack_size <= 8 else 0
    assert k.read(allocated + L.IRP.AllocationFlags, 1)[0] == fixed
    assert k.read(allocated, 4) == bytes(expected[:4])  # its Type and Size
    assert k.read(allocated + L.IRP.StackCount, 2) == bytes([stack_size, stack_size + 1])
    k.IoFreeIrp(allocated)
    k.ExFreePoolWithTag(irp, "Pkt ")


def test_ioallocatemdl_writes_the_whole_header(k):
    buffer = k.ExAllocatePoolWithTag(ntpool.PoolType.NonPagedPool, 9000, "Data")
    va, length = buffer + 100, 5000
    mdl = k.IoAllocateMdl(va, length, False, False, 0)
    pages = ((va & 0xFFF) + length + 0xFFF) >> 12
    expected = bytearray(L.MDL.SIZE)
    expected[L.MDL.Size:L.MDL.Size + 2] = (L.MDL.SIZE + 8 * pages).to_bytes(2, "little")
    expected[L.MDL.MdlFlags:L.MDL.MdlFlags + 2] = L.MDL_ALLOCATED_FIXED_SIZE.to_bytes(2, "little")
    expected[L.MDL.StartVa:L.MDL.StartVa + 8] = (va & ~0xFFF).to_bytes(8, "little")
    expected[L.MDL.ByteCount:L.MDL.ByteCount + 4] = length.to_bytes(4, "little")
    expected[L.MDL.ByteOffset:L.MDL.ByteOffset + 4] = (va & 0xFFF).to_bytes(4, "little")
    assert k.read(mdl, L.MDL.SIZE) == bytes(expected)
    k.IoFreeMdl(mdl)
    k.ExFreePoolWithTag(buffer, "Data")
