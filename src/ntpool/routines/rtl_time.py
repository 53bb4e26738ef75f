"""Time as drivers convert and count it: KeQueryTickCount, RtlTimeToTimeFields,
RtlTimeFieldsToTime, ExSystemTimeToLocalTime, ExLocalTimeToSystemTime; and RtlRandom /
RtlRandomEx.

Times are the kernel's: 100-nanosecond units since 1601-01-01 00:00 UTC (a LARGE_INTEGER in
the caller's memory), on the proleptic Gregorian calendar. TIME_FIELDS is the WDK's: eight
CSHORTs (Year, Month, Day, Hour, Minute, Second, Milliseconds, Weekday, Sunday 0). The
machine's time zone is UTC, so local time is system time (README, departures).

KeQueryTickCount is a macro over KUSER_SHARED_DATA.TickCount on x64 (wdm.h); compiled code
reads the shared page, which the clock keeps (``routines.ke_sync``), and Python drivers call
the routine, which answers the same count.

RtlRandom and RtlRandomEx update the caller's seed with the Lehmer-style generator their
documentation describes (a linear congruential step modulo MAXLONG) and return a value below
MAXLONG; Windows also mixes in a shuffle table that is not public (README, departures).
"""

from __future__ import annotations

import struct

from ..packing import x64_struct
from .registry import register_type, routine

register_type("CSHORT", 2, signed=True)
register_type("TIME_FIELDS", 16)
register_type("PTIME_FIELDS", 8, pointer=True, pointee="TIME_FIELDS")

TIME_FIELDS = struct.Struct("<8h")
LARGE_INTEGER = x64_struct("<q")
TICK = 156250  # KeQueryTimeIncrement: 15.625 ms in 100 ns units
UNITS_PER_MILLISECOND = 10_000
MILLISECONDS_PER_DAY = 86_400_000
DAYS_TO_1601 = 584_694  # days from 0000-03-01 (the civil algorithm's epoch) to 1601-01-01
MONDAY = 1  # 1601-01-01 was a Monday
MAXLONG = 0x7FFFFFFF
RANDOM_MULTIPLIER = 0x7FFFFFED
RANDOM_INCREMENT = 0x7FFFFFC3
LONGLONG_MAX = (1 << 63) - 1


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if _is_leap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count from 1601-01-01 (negative before it)."""
    z = days + DAYS_TO_1601
    era = z // 146097
    day_of_era = z - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (month <= 2)
    return year, month, day


def days_from_civil(year: int, month: int, day: int) -> int:
    """The day count from 1601-01-01 of a date."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - DAYS_TO_1601


def time_fields(time: int) -> tuple[int, ...]:
    """TIME_FIELDS of a time (Year ... Milliseconds, Weekday)."""
    milliseconds = time // UNITS_PER_MILLISECOND
    days, in_day = divmod(milliseconds, MILLISECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, millisecond = divmod(in_day, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return year, month, day, hour, minute, second, millisecond, (days + MONDAY) % 7


def _cshort(value: int) -> int:
    return (value + 0x8000 & 0xFFFF) - 0x8000


class TimeRoutines:
    @routine("VOID KeQueryTickCount(_Out_ PLARGE_INTEGER CurrentCount)")
    def KeQueryTickCount(self) -> int:
        """Clock interrupts since boot (KUSER_SHARED_DATA.TickCount, which wdm.h's x64 macro
        reads inline)."""
        return (self.system_time - self.boot_time) // TICK

    # The WDK declares TimeFields _Out_: the caller's structure, filled here (an in-parameter
    # to the registry, whose _Out_ values are returned).
    @routine("VOID RtlTimeToTimeFields(_In_ PLARGE_INTEGER Time, PTIME_FIELDS TimeFields)")
    def RtlTimeToTimeFields(self, Time, TimeFields) -> None:
        value = LARGE_INTEGER.unpack(self.read(Time, 8))[0]
        self.write(TimeFields, TIME_FIELDS.pack(*map(_cshort, time_fields(value))))

    # Time is written only when the fields are a valid time, so it is no _Out_ here either.
    @routine("BOOLEAN RtlTimeFieldsToTime(_In_ PTIME_FIELDS TimeFields, PLARGE_INTEGER Time)")
    def RtlTimeFieldsToTime(self, TimeFields, Time) -> int:
        """TRUE and the time in *Time for fields that name a moment from 1601 on (Weekday is
        ignored); FALSE, *Time untouched, for any field out of its range."""
        year, month, day, hour, minute, second, millisecond, _ = \
            TIME_FIELDS.unpack(self.read(TimeFields, TIME_FIELDS.size))
        if year < 1601 or not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month) \
                or not 0 <= hour <= 23 or not 0 <= minute <= 59 or not 0 <= second <= 59 \
                or not 0 <= millisecond <= 999:
            return 0
        milliseconds = days_from_civil(year, month, day) * MILLISECONDS_PER_DAY + \
            ((hour * 60 + minute) * 60 + second) * 1000 + millisecond
        value = milliseconds * UNITS_PER_MILLISECOND
        if value > LONGLONG_MAX:
            return 0
        self.write(Time, LARGE_INTEGER.pack(value))
        return 1

    @routine("VOID ExSystemTimeToLocalTime(_In_ PLARGE_INTEGER SystemTime, _Out_ PLARGE_INTEGER LocalTime)")
    def ExSystemTimeToLocalTime(self, SystemTime) -> int:
        """The machine's time zone is UTC: local time is system time."""
        return LARGE_INTEGER.unpack(self.read(SystemTime, 8))[0]

    @routine("VOID ExLocalTimeToSystemTime(_In_ PLARGE_INTEGER LocalTime, _Out_ PLARGE_INTEGER SystemTime)")
    def ExLocalTimeToSystemTime(self, LocalTime) -> int:
        return LARGE_INTEGER.unpack(self.read(LocalTime, 8))[0]

    # --- random numbers ------------------------------------------------------------------------

    def _random(self, seed_address: int) -> int:
        seed = int.from_bytes(self.read(seed_address, 4), "little")
        seed = (RANDOM_MULTIPLIER * seed + RANDOM_INCREMENT) % MAXLONG
        self.write(seed_address, seed.to_bytes(4, "little"))
        return seed

    @routine("ULONG RtlRandom(_Inout_ PULONG Seed)")
    def RtlRandom(self, Seed) -> int:
        """A number below MAXLONG; the next seed written to *Seed."""
        return self._random(Seed)

    @routine("ULONG RtlRandomEx(_Inout_ PULONG Seed)")
    def RtlRandomEx(self, Seed) -> int:
        return self._random(Seed)
