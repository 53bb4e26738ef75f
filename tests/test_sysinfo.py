"""What a driver asks about the system (routines/sysinfo.py), from Python drivers, on Windows 7's
pool and Windows 11's segment heap: ZwQuerySystemInformation's classes and its short-buffer
answer, the version routines, processor counts and affinity, the current thread."""

import struct

import pytest

import ntpool
from ntpool.constants import DISPATCH_LEVEL, BugCheckCode
from ntpool.errors import BugCheck
from ntpool.routines.sysinfo import (RTL_OSVERSIONINFOEXW_SIZE, RTL_OSVERSIONINFOW_SIZE,
                                     STATUS_INFO_LENGTH_MISMATCH, STATUS_INVALID_INFO_CLASS,
                                     SystemBasicInformation, SystemBigPoolInformation,
                                     SystemModuleInformation, SystemPoolTagInformation)
from ntpool.tags import tag_value

PAGE = 4096
WINDOWS = ("7", "11")
POOLTAG = struct.Struct("<III4xQIIQ")
BIGPOOL = struct.Struct("<QQI4x")
MODULE = struct.Struct("<QQQIIHHHH256s")


def machine(windows="7", processors=1):
    return ntpool.Kernel(windows=windows, processors=processors,
                         nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20)


def query(k, information_class, slack=0x400):
    """(status, ReturnLength, buffer address): sized by a first call, read with a second."""
    status, needed = k.ZwQuerySystemInformation(information_class, 0, 0)
    assert status == STATUS_INFO_LENGTH_MISMATCH and needed > 0
    buffer = k.ExAllocatePoolWithTag(0, needed + slack, "Qury")
    status, returned = k.ZwQuerySystemInformation(information_class, buffer, needed + slack)
    return status, returned, buffer


def rows(k, buffer, entry):
    count = int.from_bytes(k.read(buffer, 4), "little")
    return [entry.unpack(k.read(buffer + 8 + n * entry.size, entry.size)) for n in range(count)]


@pytest.mark.parametrize("windows", WINDOWS)
def test_pool_tag_information_is_the_tag_trackers_table(windows):
    k = machine(windows)
    kept = [k.ExAllocatePoolWithTag(0, 0x30, "Keep"), k.ExAllocatePoolWithTag(1, 0x50, "Page"),
            k.ExAllocatePoolWithTag(0, 3 * PAGE, "BigA")]
    k.ExFreePoolWithTag(k.ExAllocatePoolWithTag(0, 0x20, "Gone"), "Gone")
    status, returned, buffer = query(k, SystemPoolTagInformation)
    snapshot = k.pool.tracker.snapshot()
    assert status == 0 and returned == 8 + len(snapshot) * POOLTAG.size
    assert rows(k, buffer, POOLTAG) == [tuple(row) for row in snapshot]
    by_tag = {row[0]: row for row in rows(k, buffer, POOLTAG)}
    assert by_tag[tag_value("Keep")][4:6] == (1, 0) and by_tag[tag_value("Page")][1:3] == (1, 0)
    assert by_tag[tag_value("Gone")][4:6] == (1, 1) and by_tag[tag_value("Gone")][6] == 0
    assert by_tag[tag_value("BigA")][6] >= 3 * PAGE
    assert all(kept)


@pytest.mark.parametrize("windows", WINDOWS)
def test_a_short_buffer_gets_the_entries_that_fit_and_the_length_needed(windows):
    k = machine(windows)
    for tag in ("Aaaa", "Bbbb", "Cccc"):
        k.ExAllocatePoolWithTag(0, 0x40, tag)
    buffer = k.ExAllocatePoolWithTag(0, 0x400, "Qury")
    k.write(buffer, b"\xee" * 0x400)
    count = len(k.pool.tracker.snapshot())
    status, needed = k.ZwQuerySystemInformation(SystemPoolTagInformation, buffer, 8 + 2 * POOLTAG.size)
    assert (status, needed) == (STATUS_INFO_LENGTH_MISMATCH, 8 + count * POOLTAG.size)
    assert int.from_bytes(k.read(buffer, 4), "little") == count  # Count says how many there are
    assert k.read(buffer + 8 + 2 * POOLTAG.size, 4) == b"\xee" * 4  # nothing past the buffer
    written = [POOLTAG.unpack(k.read(buffer + 8 + n * POOLTAG.size, POOLTAG.size)) for n in range(2)]
    assert written == [tuple(row) for row in k.pool.tracker.snapshot()[:2]]
    # A buffer too small for Count: nothing written.
    k.write(buffer, b"\xee" * 8)
    assert k.ZwQuerySystemInformation(SystemPoolTagInformation, buffer, 3)[0] == STATUS_INFO_LENGTH_MISMATCH
    assert k.read(buffer, 8) == b"\xee" * 8


def test_an_unknown_class_is_invalid_info_class():
    k = machine()
    buffer = k.ExAllocatePoolWithTag(0, 0x100, "Qury")
    for information_class in (1, 5, 23, 67, 0x1000):
        assert k.ZwQuerySystemInformation(information_class, buffer, 0x100)[0] == STATUS_INVALID_INFO_CLASS
    assert k.NtQuerySystemInformation(SystemPoolTagInformation, 0, 0)[0] == STATUS_INFO_LENGTH_MISMATCH


def test_a_buffer_the_caller_cannot_write_is_0x50():
    k = machine()
    with pytest.raises(BugCheck) as caught:
        k.ZwQuerySystemInformation(SystemPoolTagInformation, 0xFFFFF80FFFF00000, 0x1000)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA


@pytest.mark.parametrize("windows", WINDOWS)
def test_big_pool_information_lists_the_big_allocations(windows):
    k = machine(windows)
    nonpaged = k.ExAllocatePoolWithTag(0, 2 * PAGE + 8, "BigN")
    paged = k.ExAllocatePoolWithTag(1, 5 * PAGE, "BigP")
    k.ExAllocatePoolWithTag(0, 0x20, "Smal")
    status, returned, buffer = query(k, SystemBigPoolInformation)
    entries = rows(k, buffer, BIGPOOL)
    assert status == 0 and returned == 8 + len(entries) * BIGPOOL.size
    by_va = {va & ~1: (va & 1, size, tag) for va, size, tag in entries}
    assert by_va[nonpaged] == (1, 3 * PAGE, tag_value("BigN"))
    assert by_va[paged] == (0, 5 * PAGE, tag_value("BigP"))
    assert tag_value("Smal") not in {tag for _, _, tag in by_va.values()}
    k.ExFreePoolWithTag(paged, "BigP")
    assert paged not in {va & ~1 for va, _, _ in k.big_pool_entries()}


def test_module_information_lists_ntoskrnl_first_then_the_drivers():
    k = machine()

    class Quiet:
        name = "quiet.sys"

        @staticmethod
        def DriverEntry(k, path):
            return 0

    k.load_driver(Quiet)
    status, returned, buffer = query(k, SystemModuleInformation)
    modules = rows(k, buffer, MODULE)
    assert status == 0 and returned == 8 + 2 * MODULE.size and len(modules) == 2
    names = [m[9].rstrip(b"\0") for m in modules]
    assert names == [b"\\SystemRoot\\system32\\ntoskrnl.exe", b"\\SystemRoot\\system32\\drivers\\quiet.sys"]
    assert [name[m[8]:] for name, m in zip(names, modules)] == [b"ntoskrnl.exe", b"quiet.sys"]
    assert modules[0][2] == k.kernel_data.base and modules[1][2] == k.drivers[0].image_base
    assert [m[5] for m in modules] == [0, 1]


@pytest.mark.parametrize("windows, processors", [("7", 1), ("11", 4)])
def test_basic_information_is_the_machines(windows, processors):
    k = machine(windows, processors)
    buffer = k.ExAllocatePoolWithTag(0, 0x100, "Qury")
    assert k.ZwQuerySystemInformation(SystemBasicInformation, buffer, 0x48) == (STATUS_INFO_LENGTH_MISMATCH, 0x40)
    assert k.ZwQuerySystemInformation(SystemBasicInformation, buffer, 0x40) == (0, 0x40)
    fields = struct.unpack("<7I4xQQQb7x", k.read(buffer, 0x40))
    assert fields[2] == PAGE and fields[3] == k.physical.frame_count
    assert fields[8] == 0x7FFFFFFEFFFF and fields[9] == (1 << processors) - 1 and fields[10] == processors


@pytest.mark.parametrize("windows, numbers", [("7", (6, 1, 7601, 1, "Service Pack 1")),
                                              ("10", (10, 0, 19041, 0, "")),
                                              ("11", (10, 0, 22621, 0, ""))])
def test_the_version_routines_answer_the_machines_windows(windows, numbers):
    major, minor, build, service_pack, csd = numbers
    k = machine(windows)
    info = k.ExAllocatePoolWithTag(0, 0x200, "Vers")
    k.write(info, b"\xcc" * 0x200)
    k.write(info, RTL_OSVERSIONINFOEXW_SIZE.to_bytes(4, "little"))
    assert k.RtlGetVersion(info) == 0
    assert struct.unpack("<IIII", k.read(info + 4, 16)) == (major, minor, build, 2)
    assert k.read(info + 0x14, 256).decode("utf-16-le").rstrip("\0") == csd
    assert struct.unpack("<HHHBB", k.read(info + 0x114, 8)) == (service_pack, 0, 0x100, 1, 0)
    # The smaller structure: nothing written past it.
    k.write(info, b"\xcc" * 0x200)
    k.write(info, RTL_OSVERSIONINFOW_SIZE.to_bytes(4, "little"))
    assert k.RtlGetVersion(info) == 0 and k.read(info + 0x114, 8) == b"\xcc" * 8
    string = k.ExAllocatePoolWithTag(0, 0x10, "Vers")
    assert k.PsGetVersion(string) == (0, major, minor, build)
    length, maximum, text = struct.unpack("<HH4xQ", k.read(string, 16))
    assert length == 2 * len(csd) and maximum == length + 2
    assert k.read(text, length).decode("utf-16-le") == csd
    assert k.PsGetVersion(0) == (0, major, minor, build)


def test_processor_counts_are_the_machines_one_group():
    k = machine(processors=3)
    assert k.KeQueryActiveProcessorCount() == (3, 0b111)
    assert k.KeQueryActiveProcessorCountEx(0) == k.KeQueryActiveProcessorCountEx(0xFFFF) == 3
    assert k.KeQueryActiveProcessorCountEx(1) == k.KeQueryMaximumProcessorCountEx(1) == 0
    assert k.KeQueryMaximumProcessorCount() == k.KeQueryMaximumProcessorCountEx(0) == 3
    k.set_current_processor(2)
    assert k.KeGetCurrentProcessorNumberEx() == (2, 2 << 16)


@pytest.mark.parametrize("windows", WINDOWS)
def test_system_affinity_moves_the_thread_and_revert_moves_it_back(windows):
    k = machine(windows, processors=4)
    k.set_current_processor(1)
    assert k.KeSetSystemAffinityThreadEx(0b1100) == 0
    assert k.current_processor == 2
    if windows == "7":  # the processor's own lookaside lists serve allocations there
        assert k.nonpaged_pool.la is k.nonpaged_pool.per_processor[2]
    assert k.KeSetSystemAffinityThreadEx(0b1000) == 0b1100 and k.current_processor == 3
    k.KeRevertToUserAffinityThreadEx(0b1100)  # back to the earlier system affinity
    assert k.system_affinity == 0b1100 and k.current_processor == 3  # 3 is in it: it stays
    k.KeRevertToUserAffinityThreadEx(0)
    assert k.current_processor == 1 and k.system_affinity == 0
    k.KeRevertToUserAffinityThreadEx(0)  # nothing to revert: no effect
    assert k.current_processor == 1
    k.KeSetSystemAffinityThread(0b1)
    assert k.current_processor == 0
    k.KeRevertToUserAffinityThread()
    assert k.current_processor == 1


def test_an_affinity_naming_no_processor_of_the_machine_changes_nothing():
    k = machine(processors=2)
    for mask in (0, 0b100, 0b111):
        assert k.KeSetSystemAffinityThreadEx(mask) == 0
        assert k.current_processor == 0 and k.system_affinity == 0


def test_affinity_above_dispatch_level_is_0xa():
    k = machine(processors=2)
    k.KeRaiseIrql(DISPATCH_LEVEL + 1)
    with pytest.raises(BugCheck) as caught:
        k.KeSetSystemAffinityThreadEx(0b10)
    assert caught.value.code == BugCheckCode.IRQL_NOT_LESS_OR_EQUAL


def test_at_dispatch_level_the_affinity_is_kept_and_the_thread_stays():
    k = machine(processors=2)
    old = k.KeRaiseIrql(DISPATCH_LEVEL)
    assert k.KeSetSystemAffinityThreadEx(0b10) == 0
    assert k.current_processor == 0 and k.system_affinity == 0b10
    k.KeLowerIrql(old)


def test_the_current_thread_is_the_system_processes_system_thread():
    k = machine()
    thread = k.PsGetCurrentThread()
    assert thread == k.KeGetCurrentThread() and thread
    assert k.read(thread, 1) == b"\x06"  # ThreadObject
    assert int.from_bytes(k.read(thread + 0x210, 8), "little") == k.PsInitialSystemProcess
    assert k.PsIsSystemThread(thread) == 1 and k.ExGetPreviousMode() == 0
    other = k.ExAllocatePoolWithTag(0, 0x498, "Thre")
    k.write(other, bytes(0x498))
    assert k.PsIsSystemThread(other) == 0


VER_MINORVERSION, VER_MAJORVERSION, VER_BUILDNUMBER, VER_PLATFORMID = 0x1, 0x2, 0x4, 0x8
VER_SERVICEPACKMINOR, VER_SERVICEPACKMAJOR, VER_SUITENAME, VER_PRODUCT_TYPE = 0x10, 0x20, 0x40, 0x80
VER_EQUAL, VER_GREATER, VER_GREATER_EQUAL, VER_LESS, VER_LESS_EQUAL, VER_AND, VER_OR = range(1, 8)
STATUS_REVISION_MISMATCH = 0xC0000059


def version_info(k, major=0, minor=0, build=0, platform=0, sp_major=0, sp_minor=0, suite=0, product=0):
    info = k.ExAllocatePoolWithTag(0, RTL_OSVERSIONINFOEXW_SIZE, "Vers")
    k.write(info, struct.pack("<IIIII", RTL_OSVERSIONINFOEXW_SIZE, major, minor, build, platform) +
            bytes(256) + struct.pack("<HHHBB", sp_major, sp_minor, suite, product, 0))
    return info


def at_least(k, types, **numbers):
    mask = 0
    for bit in (VER_MAJORVERSION, VER_MINORVERSION, VER_SERVICEPACKMAJOR, VER_BUILDNUMBER):
        if types & bit:
            mask = k.VerSetConditionMask(mask, bit, VER_GREATER_EQUAL)
    return k.RtlVerifyVersionInfo(version_info(k, **numbers), types, mask)


def test_ver_set_condition_mask_puts_each_condition_in_its_types_three_bits():
    k = machine()
    assert k.VerSetConditionMask(0, VER_MINORVERSION, VER_EQUAL) == 0o1
    assert k.VerSetConditionMask(0, VER_MAJORVERSION, VER_GREATER_EQUAL) == 0o30
    assert k.VerSetConditionMask(0o30, VER_PRODUCT_TYPE, VER_LESS) == 0o40000030
    assert k.VerSetConditionMask(0, VER_SUITENAME, VER_AND | 0xF0) == VER_AND << 18
    # Several types: the most significant one takes the condition; none, or condition 0: unchanged.
    assert k.VerSetConditionMask(0, VER_MAJORVERSION | VER_MINORVERSION, VER_LESS) == VER_LESS << 3
    assert k.VerSetConditionMask(0o7, 0, VER_EQUAL) == 0o7 == k.VerSetConditionMask(0o7, VER_MINORVERSION, 0)


@pytest.mark.parametrize("windows", WINDOWS)
def test_verify_version_info_answers_at_least_questions_for_the_machines_windows(windows):
    k = machine(windows)
    seven, eleven = windows == "7", windows == "11"
    major_minor = VER_MAJORVERSION | VER_MINORVERSION
    assert at_least(k, major_minor, major=6, minor=1) == 0  # Windows 7 or later: both
    expected_8 = STATUS_REVISION_MISMATCH if seven else 0  # Windows 8 (6.2) or later
    assert at_least(k, major_minor, major=6, minor=2) == expected_8
    assert at_least(k, major_minor | VER_SERVICEPACKMAJOR, major=6, minor=1, sp_major=1) == 0
    assert at_least(k, major_minor | VER_SERVICEPACKMAJOR, major=6, minor=1, sp_major=2) == \
        (STATUS_REVISION_MISMATCH if seven else 0)  # 10.0 SP0 is later than 6.1 SP2
    assert at_least(k, VER_BUILDNUMBER, build=22000) == (0 if eleven else STATUS_REVISION_MISMATCH)
    assert at_least(k, VER_MAJORVERSION, major=10) == (STATUS_REVISION_MISMATCH if seven else 0)


def test_verify_version_info_conditions_platform_suite_product_and_errors():
    k = machine("7")
    info = version_info(k, major=6, minor=1, build=7601, platform=2, suite=0x100, product=1)
    equal = k.VerSetConditionMask(0, VER_BUILDNUMBER, VER_EQUAL)
    assert k.RtlVerifyVersionInfo(info, VER_BUILDNUMBER, equal) == 0
    less = k.VerSetConditionMask(0, VER_BUILDNUMBER, VER_LESS)
    assert k.RtlVerifyVersionInfo(info, VER_BUILDNUMBER, less) == STATUS_REVISION_MISMATCH
    platform = k.VerSetConditionMask(0, VER_PLATFORMID, VER_EQUAL)
    assert k.RtlVerifyVersionInfo(info, VER_PLATFORMID, platform) == 0
    product = k.VerSetConditionMask(0, VER_PRODUCT_TYPE, VER_EQUAL)
    assert k.RtlVerifyVersionInfo(info, VER_PRODUCT_TYPE, product) == 0
    assert k.RtlVerifyVersionInfo(version_info(k, product=3), VER_PRODUCT_TYPE, product) == STATUS_REVISION_MISMATCH
    suite_and = k.VerSetConditionMask(0, VER_SUITENAME, VER_AND)
    suite_or = k.VerSetConditionMask(0, VER_SUITENAME, VER_OR)
    assert k.RtlVerifyVersionInfo(version_info(k, suite=0x100), VER_SUITENAME, suite_and) == 0
    assert k.RtlVerifyVersionInfo(version_info(k, suite=0x102), VER_SUITENAME, suite_and) == STATUS_REVISION_MISMATCH
    assert k.RtlVerifyVersionInfo(version_info(k, suite=0x102), VER_SUITENAME, suite_or) == 0
    # A type named with condition 0 fails; no type, or no condition at all, is invalid.
    assert k.RtlVerifyVersionInfo(info, VER_BUILDNUMBER, platform) == STATUS_REVISION_MISMATCH
    assert k.RtlVerifyVersionInfo(info, 0, equal) == 0xC000000D
    assert k.RtlVerifyVersionInfo(info, VER_BUILDNUMBER, 0) == 0xC000000D


def test_the_previous_mode_is_user_mode_while_a_driver_handles_a_user_request():
    from ntpool.routines import layouts as L
    from ntpool.routines.io import IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, ctl_code

    k = machine()
    seen = []

    def dispatch(k, device, irp):
        seen.append((k.ExGetPreviousMode(), k.read(irp + L.IRP.RequestorMode, 1)[0],
                     k._get64(irp + L.IRP.Thread)))
        k._put32(irp + L.IRP.IoStatus_Status, 0)
        k.IofCompleteRequest(irp, 0)
        return 0

    wdm = k.create_driver_object("mode.sys")
    name = k.unicode_string("\\Device\\Mode")
    status, device = k.IoCreateDevice(wdm.driver_object, 0, name, 0x22, 0, 0)
    assert status == 0
    k._put32(device + L.DEVICE_OBJECT.Flags, k._get32(device + L.DEVICE_OBJECT.Flags) & ~L.DO_DEVICE_INITIALIZING)
    for major in (IRP_MJ_CREATE, IRP_MJ_CLOSE, IRP_MJ_DEVICE_CONTROL, 0x12):
        k._put64(wdm.driver_object + L.DRIVER_OBJECT.MajorFunction + 8 * major, k.code_address(dispatch))
    k.driver_entry_returned(wdm)
    thread = k.PsGetCurrentThread()
    with k.open("\\Device\\Mode") as handle:
        handle.device_control(ctl_code(0x22, 0x800, 0, 0), b"", 0)
    assert seen[:2] == [(1, 1, thread), (1, 1, thread)]  # the create and the IOCTL
    assert k.ExGetPreviousMode() == 0
    seen.clear()
    with k.open("\\Device\\Mode", kernel_caller=True) as handle:
        handle.device_control(ctl_code(0x22, 0x800, 0, 0), b"", 0)
    assert seen[:2] == [(0, 0, thread), (0, 0, thread)]
