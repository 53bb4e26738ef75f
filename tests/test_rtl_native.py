"""rtl.sys (samples/wdm/rtl.c), a compiled driver using the run-time library as drivers do:
a slot map (an RTL_BITMAP over pool it allocates in DriverEntry) and every bitmap routine on
headers it is handed, through the native bridge."""

import os

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
