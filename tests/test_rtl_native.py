"""rtl.sys (samples/wdm/rtl.c), a compiled driver using the run-time library as drivers do:
a slot map (an RTL_BITMAP over pool it allocates in DriverEntry) and every bitmap routine on
headers it is handed, through the native bridge."""

import os
import struct

import pytest

import ntpool
from ntpool.constants import BugCheckCode
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver
from ntpool.native.build import source_directory
from ntpool.routines.rtl_bitmap import NO_INDEX
from ntpool.tags import tag_value

RTL_SYS = os.path.join(source_directory("rtl"), "rtl.sys")
WINDOWS = ("7", "11")
(OP_INIT, OP_CLEAR_ALL, OP_SET_ALL, OP_CLEAR, OP_SET, OP_CLEAR_BIT, OP_SET_BIT, OP_TEST_BIT,
 OP_ARE_CLEAR, OP_ARE_SET, OP_FIND_CLEAR, OP_FIND_SET, OP_FIND_CLEAR_AND_SET,
 OP_FIND_SET_AND_CLEAR, OP_NUMBER_CLEAR, OP_NUMBER_SET, OP_FIRST_RUN_CLEAR,
 OP_NEXT_RUN_CLEAR) = range(18)


def loaded(windows="7"):
    k = ntpool.Kernel(windows=windows, nonpaged_pool_bytes=2 << 20, paged_pool_bytes=2 << 20)
    driver = load_native_driver(k, RTL_SYS)
    return k, driver


def source_line(text):
    with open(os.path.join(source_directory("rtl"), "rtl.c")) as source:
        return next(number for number, line in enumerate(source, 1) if text in line)


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_slot_map_hands_out_and_takes_back_runs(windows):
    k, driver = loaded(windows)
    assert driver.call("SlotsFree") == 256
    assert [driver.call("SlotsTake", 100, 0) for _ in range(3)] == [0, 100, NO_INDEX]
    assert driver.call("SlotsFree") == 56
    driver.call("SlotsGive", 10, 20)
    assert driver.call("SlotsTake", 15, 200) == 200  # from the hint
    assert driver.call("SlotsTake", 20, 240) == 10  # 16 after it: wraps to the start
    # The bits are in the driver's pool, under its tag, and go with it at unload.
    header = driver.call("SlotMap")
    size, buffer = int.from_bytes(k.read(header, 4), "little"), int.from_bytes(k.read(header + 8, 8), "little")
    assert size == 256 and k.read(buffer, 4) == b"\xff" * 4
    k.unload_driver(driver)
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[tag_value("BltR")]  # poolmon shows "RtlB"
    assert row.NonPagedAllocs == row.NonPagedFrees == 1


@pytest.mark.parametrize("windows", WINDOWS)
def test_every_bitmap_routine_through_the_bridge_matches_the_python_one(windows):
    k, driver = loaded(windows)
    header = k.ExAllocatePoolWithTag(0, 16, "BmpH")
    buffer = k.ExAllocatePoolWithTag(0, 16, "BmpB")
    index = k.ExAllocatePoolWithTag(0, 8, "BmpI")
    op = lambda code, a=0, b=0: driver.call("BitmapOp", code, header, a, b, index)  # noqa: E731
    op(OP_INIT, buffer, 100)
    assert k.read(header, 16) == (100).to_bytes(4, "little") + bytes(4) + buffer.to_bytes(8, "little")
    op(OP_SET_ALL)
    assert op(OP_NUMBER_SET) == 100 and op(OP_NUMBER_CLEAR) == 0
    op(OP_CLEAR_ALL)
    op(OP_SET, 3, 10)
    op(OP_SET_BIT, 99)
    op(OP_CLEAR_BIT, 5)
    assert k.read(buffer, 2) == bytes([0xD8, 0x1F])
    assert (op(OP_TEST_BIT, 99), op(OP_TEST_BIT, 5)) == (1, 0)
    assert (op(OP_ARE_SET, 6, 7), op(OP_ARE_SET, 5, 7), op(OP_ARE_CLEAR, 13, 86)) == (1, 0, 1)
    assert (op(OP_FIND_SET, 7, 0), op(OP_FIND_CLEAR, 50, 60), op(OP_FIND_CLEAR, 0, 13)) == (6, 13, 8)
    assert op(OP_FIND_CLEAR_AND_SET, 4, 0) == 13 and k.RtlAreBitsSet(header, 6, 11)
    assert op(OP_FIND_SET_AND_CLEAR, 11, 0) == 6 and k.RtlNumberOfSetBits(header) == 3
    op(OP_CLEAR, 0, 100)
    op(OP_SET, 0, 7)
    assert op(OP_FIRST_RUN_CLEAR) == 93 and k.read(index, 4) == (7).to_bytes(4, "little")
    op(OP_SET_BIT, 50)
    assert op(OP_NEXT_RUN_CLEAR, 60) == 40 and k.read(index, 4) == (60).to_bytes(4, "little")


def test_a_null_header_from_native_code_is_0x1e_naming_the_driver():
    k, driver = loaded()
    with pytest.raises(BugCheck) as caught:
        driver.call("BitmapOp", OP_NUMBER_SET, 0, 0, 0, 0)
    assert caught.value.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    assert caught.value.driver_name == "rtl.sys"


def test_a_bitmap_over_freed_big_pool_is_0x50_at_the_drivers_line():
    k, driver = loaded()
    header = k.ExAllocatePoolWithTag(0, 16, "BmpH")
    buffer = k.ExAllocatePoolWithTag(0, 2 * 4096, "BmpB")
    driver.call("BitmapOp", OP_INIT, header, buffer, 2 * 4096 * 8, 0)
    k.ExFreePoolWithTag(buffer, "BmpB")
    with pytest.raises(BugCheck) as caught:
        driver.call("BitmapOp", OP_FIND_CLEAR_AND_SET, header, 8, 0, 0)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert caught.value.driver_name == "rtl.sys"
    assert f"(rtl.c:{source_line('case OP_FIND_CLEAR_AND_SET')})" in caught.value.call_site


# --- time --------------------------------------------------------------------------------------

FIELDS = struct.Struct("<8h")


@pytest.mark.parametrize("windows", WINDOWS)
def test_the_inline_tick_count_and_system_time_are_the_shared_pages(windows):
    k, driver = loaded(windows)
    k.advance_clock(5 * 10_000_000)
    assert driver.call("TickCount") == k.KeQueryTickCount() == 320
    fields = k.ExAllocatePoolWithTag(0, 16, "Time")
    assert driver.call("LocalNow", fields) == k.KeQuerySystemTime()
    assert FIELDS.unpack(k.read(fields, 16)) == (2024, 1, 1, 0, 0, 5, 0, 1)
    k.write(fields, FIELDS.pack(2024, 2, 29, 12, 30, 0, 250, 0))
    expected = k.KeQuerySystemTime() + (59 * 86400 + 12 * 3600 + 30 * 60 - 5) * 10_000_000 + 2_500_000
    assert driver.call("FieldsToSystemTime", fields) == expected
    k.write(fields, FIELDS.pack(2023, 2, 29, 12, 30, 0, 250, 0))
    assert driver.call("FieldsToSystemTime", fields) == (1 << 64) - 1


def test_random_numbers_through_the_bridge_follow_the_seed():
    k, driver = loaded()
    seed, out = k.ExAllocatePoolWithTag(0, 4, "Seed"), k.ExAllocatePoolWithTag(0, 16, "Rand")
    k.write(seed, (7).to_bytes(4, "little"))
    driver.call("Randoms", seed, out, 4, 1)
    values = struct.unpack("<4I", k.read(out, 16))
    k.write(seed, (7).to_bytes(4, "little"))
    assert [k.RtlRandomEx(seed) for _ in range(4)] == list(values)
    assert len(set(values)) == 4 and max(values) < 0x7FFFFFFF


def test_time_fields_into_unmapped_memory_is_0x50_at_the_drivers_line():
    k, driver = loaded()
    time = k.ExAllocatePoolWithTag(0, 8, "Time")
    with pytest.raises(BugCheck) as caught:
        driver.call("TimeToFields", time, 0xFFFFF80FFFF00000)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert f"(rtl.c:{source_line('RtlTimeToTimeFields(Time, Fields);')})" in caught.value.call_site


# --- the printf family -----------------------------------------------------------------------------

def text_at(k, address, data):
    k.write(address, data)
    return address


@pytest.mark.parametrize("windows", WINDOWS)
def test_snprintf_and_snwprintf_from_compiled_code(windows):
    k, driver = loaded(windows)
    scratch = k.ExAllocatePoolWithTag(0, 0x400, "Scr ")
    buffer = k.ExAllocatePoolWithTag(0, 0x100, "Outp")
    fmt = text_at(k, scratch, b"%s=%08I64X %-4d|\0")
    name = text_at(k, scratch + 0x40, b"tag\0")
    assert driver.call("Format", buffer, 64, fmt, name, 0xABCDEF, 0xFFFFFFFE) == 18
    assert k.read(buffer, 19) == b"tag=00ABCDEF -2  |\0"
    # Too small: Count characters, no terminator, -1 (as an INT in eax).
    k.write(buffer, b"\xcc" * 16)
    assert driver.call("Format", buffer, 5, fmt, name, 1, 2) & 0xFFFFFFFF == 0xFFFFFFFF
    assert k.read(buffer, 6) == b"tag=0\xcc"
    wfmt = text_at(k, scratch + 0x80, "%ws:%u %S\0".encode("utf-16-le"))
    wname = text_at(k, scratch + 0x100, "Dévice\0".encode("utf-16-le"))
    assert driver.call("FormatWide", buffer, 32, wfmt, wname, 42, name) == 13
    assert k.read(buffer, 28).decode("utf-16-le") == "Dévice:42 tag\0"


def test_uncounted_and_va_list_forms():
    k, driver = loaded()
    scratch = k.ExAllocatePoolWithTag(0, 0x400, "Scr ")
    buffer = k.ExAllocatePoolWithTag(0, 0x100, "Outp")
    assert driver.call("FormatUncounted", buffer, text_at(k, scratch, b"<%5x>\0"), 0x1F, 0) == 7
    assert k.read(buffer, 8) == b"<   1f>\0"
    wide = text_at(k, scratch + 0x20, "<%d>\0".encode("utf-16-le"))
    assert driver.call("FormatUncounted", buffer, wide, 7, 1) == 3
    assert k.read(buffer, 8).decode("utf-16-le") == "<7>\0"
    fmt = text_at(k, scratch + 0x40, b"%u %I64u %s %S %x\0")
    narrow = text_at(k, scratch + 0x80, b"n\0")
    wname = text_at(k, scratch + 0xA0, "w\0".encode("utf-16-le"))
    expected = b"4294967295 18446744073709551615 n w beef"
    assert driver.call("FormatVa", buffer, 100, fmt, 0xFFFFFFFF, (1 << 64) - 1, narrow, wname, 0xBEEF) == len(expected)
    assert k.read(buffer, len(expected) + 1) == expected + b"\0"
    assert driver.call("FormatVa", buffer, 0, fmt, 1, 2, narrow, wname, 3) == 9  # vsprintf
    assert k.read(buffer, 10) == b"1 2 n w 3\0"


def test_ntstrsafe_printf_over_vsnwprintf_truncates_and_terminates():
    k, driver = loaded()
    buffer = k.ExAllocatePoolWithTag(0, 0x100, "Outp")
    name = k.ExAllocatePoolWithTag(0, 0x40, "Name")
    k.write(name + 16, "Disk0".encode("utf-16-le"))
    k.write(name, struct.pack("<HH4xQ", 10, 10, name + 16))
    assert driver.call("DescribeDevice", buffer, 0x100, name, 3, 0x20) == 0
    text = "\\Device\\Disk0-3 (0x00000020)"
    assert k.read(buffer, 2 * len(text) + 2).decode("utf-16-le") == text + "\0"
    assert driver.call("DescribeDevice", buffer, 20, name, 3, 0x20) == 0x80000005  # overflow
    assert k.read(buffer, 20).decode("utf-16-le") == text[:9] + "\0"


def test_a_bad_string_pointer_in_compiled_printf_is_0x50_naming_the_driver():
    k, driver = loaded()
    scratch = k.ExAllocatePoolWithTag(0, 0x100, "Scr ")
    fmt = text_at(k, scratch, b"%s\0")
    with pytest.raises(BugCheck) as caught:
        driver.call("Format", scratch + 0x40, 64, fmt, 0xFFFFF80FFFF00000, 0, 0)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert caught.value.driver_name == "rtl.sys"


# --- generic tables ------------------------------------------------------------------------------

RECORD_TAG = tag_value("TltR")  # poolmon shows "RtlT"


@pytest.mark.parametrize("windows", WINDOWS)
def test_records_in_an_avl_table_call_the_drivers_own_routines(windows):
    k, driver = loaded(windows)
    table = driver.call("RecordsInit")
    new = k.ExAllocatePoolWithTag(0, 8, "New ")
    ids = [50, 20, 80, 10, 30, 70, 90, 25]
    for n in ids:
        element = driver.call("RecordInsert", n, n * 100, new)
        assert element and k.read(new, 1) == b"\x01"
    assert driver.call("RecordInsert", 30, 1, new) and k.read(new, 1) == b"\x00"  # already there
    facts = driver.call("RecordFacts")
    assert facts & 0xFFFF == len(ids) and not facts & 0x10000
    assert facts >> 32 == 0x20 + 16  # sizeof(RTL_BALANCED_LINKS) + sizeof(RECORD)
    assert driver.call("RecordValue", 70) == 7000 and driver.call("RecordValue", 71) == (1 << 64) - 1
    out = k.ExAllocatePoolWithTag(0, 64, "Ids ")
    for splaying in (1, 0):
        assert driver.call("RecordIds", out, 16, splaying) == len(ids)
        assert list(struct.unpack(f"<{len(ids)}I", k.read(out, 4 * len(ids)))) == sorted(ids)
    assert driver.call("RecordAt", 3) == 30 and driver.call("RecordAt", 8) == 0xFFFFFFFF
    assert driver.call("RecordDelete", 50) == 1 and driver.call("RecordDelete", 50) == 0
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[RECORD_TAG]
    assert (row.PagedAllocs, row.PagedFrees) == (len(ids), 1)
    # The table in the driver's image holds its routines' addresses, inside the image.
    compare = int.from_bytes(k.read(table + 0x48, 8), "little")
    assert driver.image_base <= compare < driver.image_base + driver.image_size
    driver.call("RecordsClear")
    assert driver.call("RecordFacts") & 0x1FFFF == 0x10000
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[RECORD_TAG]
    assert row.PagedAllocs == row.PagedFrees == len(ids)


def test_an_allocate_routine_returning_null_makes_the_insert_null():
    k, driver = loaded()
    driver.call("RecordsInit")
    driver.call("RecordSettings", 1, 0)
    assert driver.call("RecordInsert", 1, 1, 0) == 0
    assert driver.call("RecordFacts") & 0x1FFFF == 0x10000


def test_records_left_in_the_table_at_unload_are_the_drivers_leak():
    k, driver = loaded()
    driver.call("RecordsInit")
    for n in range(5):
        driver.call("RecordInsert", n, n, 0)
    k.unload_driver(driver)
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[RECORD_TAG]
    assert row.PagedAllocs - row.PagedFrees == 5


def test_ids_in_a_splay_table_through_the_bridge():
    k, driver = loaded()
    table = driver.call("IdsInit")
    assert [driver.call("IdsAdd", n) for n in (40, 10, 30, 10, 20)] == [1, 1, 1, 0, 1]
    assert driver.call("RecordFacts") >> 32 == 0x28 + 4  # RTL_SPLAY_LINKS + LIST_ENTRY + a ULONG
    assert driver.call("IdsHas", 30) == 1 and driver.call("IdsHas", 31) == 0
    assert [driver.call("IdsAt", i) for i in range(5)] == [40, 10, 30, 20, 0xFFFFFFFF]
    out = k.ExAllocatePoolWithTag(0, 32, "Ids ")
    assert driver.call("IdsSorted", out, 8) == 4
    assert struct.unpack("<4I", k.read(out, 16)) == (10, 20, 30, 40)
    assert driver.call("IdsRemove", 10) == 1 and driver.call("IdsRemove", 10) == 0
    assert [driver.call("IdsAt", i) for i in range(3)] == [40, 30, 20]
    assert int.from_bytes(k.read(table + 0x24, 4), "little") == 3  # NumberGenericTableElements
    row = {r.TagUlong: r for r in k.pool.tracker.snapshot()}[RECORD_TAG]
    assert (row.PagedAllocs, row.PagedFrees) == (4, 1)
