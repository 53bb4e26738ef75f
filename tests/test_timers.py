"""Timers across long sleeps: KeSetTimerEx's periodic timers while the clock moves on."""

import struct
import time

import ntpool
from ntpool.routines.ke_sync import MAX_TIMER_EXPIRIES

MS = 10_000  # 100 ns units
NEVER_ENDING = (1 << 64) - 1


def machine_with_timer(period_ms: int, dpc: bool = True, due=-MS):
    """A machine with a periodic timer armed (first due 1 ms on) and the times its DPC ran."""
    k = ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20)
    ran: list[int] = []
    timer = k.ExAllocatePoolWithTag(0, 0x40, "Tmr ")
    k.KeInitializeTimerEx(timer, 0)
    dpc_object = 0
    if dpc:
        dpc_object = k.ExAllocatePoolWithTag(0, 0x40, "Dpc ")
        routine = k.code_address(lambda k, dpc, context, low, high: ran.append(high << 32 | low))
        k.KeInitializeDpc(dpc_object, routine, 0)
    k.KeSetTimerEx(timer, due & NEVER_ENDING, period_ms, dpc_object)
    return k, timer, ran


def sleep(k, units: int) -> None:
    interval = k.ExAllocatePoolWithTag(0, 8, "Wait")
    k.write(interval, struct.pack("<q", -units))
    assert k.KeDelayExecutionThread(0, 0, interval) == 0
    k.ExFreePoolWithTag(interval, "Wait")


def test_a_periodic_timer_runs_its_dpc_at_each_period_of_a_short_sleep():
    k, timer, ran = machine_with_timer(1)
    start = k.system_time
    sleep(k, 1000 * MS)  # a second: a thousand expiries, each DPC at its own time
    assert ran == [start + n * MS for n in range(1, 1001)]
    assert k.system_time == start + 1000 * MS and k.timers[timer] == start + 1001 * MS
    assert k.KeReadStateTimer(timer) == 1


def test_a_periodic_timer_across_a_sleep_of_years_returns_and_its_dpc_runs_late_once():
    """A 1 ms periodic timer across KeDelayExecutionThread of 2**62 units (14,600 years) ran
    its DPC every millisecond, about 4.6 * 10**14 times in Python: ntpool hung. Now the first
    MAX_TIMER_EXPIRIES run each at its own time and the rest of the sleep is one late clock
    tick: the DPC runs once more at its end (a DPC already queued is not queued again) and
    the timer is re-armed a period after it."""
    k, timer, ran = machine_with_timer(1)
    start, started = k.system_time, time.process_time()
    sleep(k, 1 << 62)
    assert time.process_time() - started < 10
    assert k.system_time == start + (1 << 62)
    assert ran[:-1] == [start + n * MS for n in range(1, MAX_TIMER_EXPIRIES + 1)]
    assert ran[-1] == k.system_time and len(ran) == MAX_TIMER_EXPIRIES + 1
    assert k.timers[timer] == k.system_time + MS
    sleep(k, 3 * MS)  # after it, the timer keeps its period
    assert ran[-3:] == [k.system_time - 2 * MS, k.system_time - MS, k.system_time]


def test_a_periodic_timer_with_no_dpc_crosses_years_exactly_and_moves_no_other_timer():
    """With no DPC, each expiry only signals the timer and re-arms it: its expiries are one,
    re-armed where every period's re-arm would have left it; a timer with a DPC due in the
    middle still runs at its own time."""
    k, timer, _ = machine_with_timer(3, dpc=False)
    start = k.system_time
    other, seen = k.ExAllocatePoolWithTag(0, 0x40, "Tmr2"), []
    other_dpc = k.ExAllocatePoolWithTag(0, 0x40, "Dpc2")
    k.KeInitializeTimerEx(other, 0)
    k.KeInitializeDpc(other_dpc, k.code_address(
        lambda k, dpc, context, low, high: seen.append((k.system_time, k.KeReadStateTimer(timer)))), 0)
    k.KeSetTimerEx(other, -500 * MS & NEVER_ENDING, 0, other_dpc)
    started = time.process_time()
    sleep(k, 1 << 62)
    assert time.process_time() - started < 10
    assert seen == [(start + 500 * MS, 1)]  # the clock was not moved on by the collapse
    expiries = ((1 << 62) - MS) // (3 * MS) + 1  # at 1 ms, 4 ms, 7 ms, ... up to the target
    assert k.timers[timer] == start + MS + expiries * 3 * MS > k.system_time
    assert k.KeReadStateTimer(timer) == 1
