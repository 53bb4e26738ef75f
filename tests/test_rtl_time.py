"""Time routines (routines/rtl_time.py) from Python drivers: TIME_FIELDS against Python's
calendar, the invalid fields RtlTimeFieldsToTime refuses, local time (UTC), the tick count
the shared page holds, RtlRandom's seed in the caller's memory."""

import datetime
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ntpool
from ntpool.constants import BugCheckCode
from ntpool.errors import BugCheck
from ntpool.routines.ke_sync import (CLOCK_END, EPOCH_2024, KUSER_INTERRUPT_TIME, KUSER_SHARED_DATA, KUSER_SYSTEM_TIME,
                                    KUSER_TICK_COUNT)
from ntpool.routines.rtl_time import MAXLONG, RANDOM_INCREMENT, RANDOM_MULTIPLIER

EPOCH = datetime.datetime(1601, 1, 1)
FIELDS = struct.Struct("<8h")
LATEST = (1 << 63) - 1  # 30828-09-14 02:48:05.4775807


@pytest.fixture
def k():
    return ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)


def cells(k):
    """(a LARGE_INTEGER cell, a TIME_FIELDS cell) in pool."""
    return k.ExAllocatePoolWithTag(0, 8, "Time"), k.ExAllocatePoolWithTag(0, 16, "Time")


def to_fields(k, value):
    time, fields = cells(k)
    k.write(time, struct.pack("<q", value))
    k.RtlTimeToTimeFields(time, fields)
    return FIELDS.unpack(k.read(fields, 16))


def to_time(k, *fields):
    time, cell = cells(k)
    k.write(time, b"\xee" * 8)
    k.write(cell, FIELDS.pack(*fields, 0))
    ok = k.RtlTimeFieldsToTime(cell, time)
    return ok, struct.unpack("<q", k.read(time, 8))[0]


def test_the_machines_boot_time_is_monday_the_first_of_january_2024(k):
    assert to_fields(k, EPOCH_2024) == (2024, 1, 1, 0, 0, 0, 0, 1)
    assert to_fields(k, 0) == (1601, 1, 1, 0, 0, 0, 0, 1)  # 1601-01-01 was a Monday too
    assert to_fields(k, LATEST) == (30828, 9, 14, 2, 48, 5, 477, 4)
    assert to_time(k, 2024, 1, 1, 0, 0, 0, 0) == (1, EPOCH_2024)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(0, 2650467743999999999))  # to 9999-12-31, Python's last year
def test_fields_are_pythons_calendar_and_convert_back(value):
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    moment = EPOCH + datetime.timedelta(microseconds=value // 10)
    fields = to_fields(k, value)
    assert fields == (moment.year, moment.month, moment.day, moment.hour, moment.minute,
                      moment.second, moment.microsecond // 1000, moment.isoweekday() % 7)
    assert to_time(k, *fields[:7]) == (1, value - value % 10_000)


@pytest.mark.parametrize("fields", [(2023, 2, 29, 0, 0, 0, 0), (2024, 13, 1, 0, 0, 0, 0),
                                    (2024, 0, 1, 0, 0, 0, 0), (2024, 4, 31, 0, 0, 0, 0),
                                    (1600, 12, 31, 23, 59, 59, 999), (2024, 1, 1, 24, 0, 0, 0),
                                    (2024, 1, 1, 0, 60, 0, 0), (2024, 1, 1, 0, 0, 60, 0),
                                    (2024, 1, 1, 0, 0, 0, 1000), (2024, 1, 1, 0, 0, 0, -1),
                                    (30828, 9, 14, 2, 48, 5, 478)])
def test_fields_out_of_range_are_false_and_leave_the_time_alone(k, fields):
    assert to_time(k, *fields) == (0, struct.unpack("<q", b"\xee" * 8)[0])


def test_leap_days_and_the_last_representable_millisecond(k):
    assert to_time(k, 2000, 2, 29, 0, 0, 0, 0)[0] == 1
    assert to_time(k, 1900, 2, 29, 0, 0, 0, 0)[0] == 0
    assert to_time(k, 30828, 9, 14, 2, 48, 5, 477) == (1, LATEST - LATEST % 10_000)


def test_local_time_is_system_time_in_utc(k):
    time, _ = cells(k)
    k.write(time, struct.pack("<q", EPOCH_2024 + 123))
    assert k.ExSystemTimeToLocalTime(time) == EPOCH_2024 + 123
    assert k.ExLocalTimeToSystemTime(time) == EPOCH_2024 + 123


def test_the_tick_count_is_the_shared_pages(k):
    assert k.KeQueryTickCount() == 0
    k.advance_clock(10 * 10_000_000)
    assert k.KeQueryTickCount() == 640  # 10 s of 15.625 ms ticks
    assert int.from_bytes(k.read(KUSER_SHARED_DATA + KUSER_TICK_COUNT, 8), "little") == 640


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 1 << 40), max_size=4))
def test_the_shared_page_holds_the_interrupt_and_system_time_as_ksystem_times(steps):
    k = ntpool.Kernel()
    for hundred_ns in steps:
        k.advance_clock(hundred_ns)
    interrupt, system = k.system_time - k.boot_time, k.system_time
    for offset, value in ((KUSER_INTERRUPT_TIME, interrupt), (KUSER_SYSTEM_TIME, system)):
        low, high1, high2 = struct.unpack("<IiI", k.read(KUSER_SHARED_DATA + offset, 12))
        assert (low, high1, high2) == (value & 0xFFFFFFFF, value >> 32, value >> 32)
    assert int.from_bytes(k.read(KUSER_SHARED_DATA + KUSER_TICK_COUNT, 8), "little") == interrupt // 156250
    assert k.KeQueryInterruptTime() == interrupt


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 1 << 64), min_size=1, max_size=4))
def test_the_clock_stops_at_the_latest_large_integer(steps):
    """Sleeps past what a LARGE_INTEGER holds (two of 2**63 units: a struct.error writing
    KUSER_SHARED_DATA) leave the clock at the latest system time, every field reporting it
    still in range: the shared page, KeQuerySystemTime and RtlTimeToTimeFields' year 30828."""
    k = ntpool.Kernel()
    delay = k.ExAllocatePoolWithTag(0, 8, "Wait")
    expected = k.system_time
    for hundred_ns in steps:
        k.write(delay, struct.pack("<q", -min(hundred_ns, 1 << 63)))
        assert k.KeDelayExecutionThread(0, 0, delay) == 0
        expected = min(expected + min(hundred_ns, 1 << 63), CLOCK_END)
        assert k.system_time == expected
    low, high1, high2 = struct.unpack("<IiI", k.read(KUSER_SHARED_DATA + KUSER_SYSTEM_TIME, 12))
    assert high1 == high2 >= 0 and (high1 << 32 | low) == expected
    assert k.KeQuerySystemTime() == expected
    if expected == CLOCK_END:
        assert to_fields(k, k.KeQuerySystemTime())[0] == 30828


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), -1, "1", True])
def test_advance_time_refuses_what_is_not_a_finite_duration(k, seconds):
    with pytest.raises(ValueError, match="finite"):
        k.advance_time(seconds)


def test_random_updates_the_callers_seed(k):
    seed = k.ExAllocatePoolWithTag(0, 4, "Seed")
    k.write(seed, (12345).to_bytes(4, "little"))
    expected = 12345
    for routine in (k.RtlRandom, k.RtlRandomEx, k.RtlRandomEx):
        expected = (RANDOM_MULTIPLIER * expected + RANDOM_INCREMENT) % MAXLONG
        value = routine(seed)
        assert value == expected < MAXLONG
        assert int.from_bytes(k.read(seed, 4), "little") == expected


def test_hostile_pointers_are_the_bug_check_of_the_access(k):
    with pytest.raises(BugCheck) as caught:
        k.RtlRandomEx(0)
    assert caught.value.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    with pytest.raises(BugCheck) as caught:
        k.RtlTimeToTimeFields(k.ExAllocatePoolWithTag(0, 8, "Time"), 0xFFFFF80FFFF00000)
    assert caught.value.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
