"""Events, executive resources, fast mutexes, the system clock and the other small Ke/Ex/Mm
routines a driver's life touches, for the single thread ntpool runs.

There is one thread: a wait on an object that is signalled succeeds at once (and clears a
synchronization event), a wait with a timeout that is not signalled returns STATUS_TIMEOUT
and moves the clock on, and a wait with no timeout on an object nothing can signal is the
error ``WaitForever`` (on Windows the thread would hang there). Resources and fast mutexes
record their owner in the structures, where a dump shows them; acquiring one the thread
already holds exclusively deadlocks on Windows and is ``WaitForever`` here.

The clock is simulated: KeQuerySystemTime starts at 2024-01-01 00:00 UTC and moves only
when a wait times out or KeDelayExecutionThread sleeps, so runs are reproducible; it is
also written to KUSER_SHARED_DATA.SystemTime, where x64 drivers' inline KeQuerySystemTime
reads it.
"""

from __future__ import annotations

import struct

from ..constants import APC_LEVEL, DISPATCH_LEVEL, BugCheckCode, NtStatus
from ..packing import x64_struct
from . import layouts as L
from .registry import lookup, lookup_data, register_type, routine

STATUS_TIMEOUT = 0x00000102
STATUS_ALERTED = 0x00000101
EPOCH_2024 = 133485408000000000  # FILETIME of 2024-01-01 00:00:00 UTC
# The latest system time a LARGE_INTEGER holds (year 30828): the clock stops there. Sleeps
# of 2**63 units, which native code may pass, would otherwise carry it past what
# KUSER_SHARED_DATA's KSYSTEM_TIMEs and every 64-bit field that reports it can hold.
CLOCK_END = (1 << 63) - 1
KUSER_SHARED_DATA = 0xFFFFF78000000000
KUSER_INTERRUPT_TIME = 0x08
KUSER_SYSTEM_TIME = 0x14
KUSER_TICK_COUNT = 0x320
# InterruptTime then SystemTime, each a KSYSTEM_TIME (LowPart, High1Time, High2Time).
_TWO_KSYSTEM_TIMES = struct.Struct("<6I")
assert KUSER_SYSTEM_TIME == KUSER_INTERRUPT_TIME + 12
_TICK_COUNT = x64_struct("<Q")
PERFORMANCE_FREQUENCY = 10_000_000
RESOURCE_OWNED_EXCLUSIVE = 0x80
THREAD_STAND_IN = 0xFFFFFA8000FF0000  # what the one thread is called as an owner
_APC = int(APC_LEVEL)  # plain ints: the IRQL checks and the IRQL itself take them at once
_DISPATCH = int(DISPATCH_LEVEL)
_LOW_DWORD = 0xFFFFFFFF
_HIGH_DWORD = 0xFFFFFFFF00000000
# An ERESOURCE's usual acquire and release (ExAcquireResourceExclusiveLite...) as QWORDs:
# ActiveCount and Flag (two WORDs at +0x18), OwnerEntry's OwnerThread (+0x30) and OwnerCount
# (+0x38, the low DWORD), within the resource's first 0x40 bytes.
_STATE_WORD = L.ERESOURCE.ActiveCount // 8
_ACTIVE_COUNT = 0xFFFF  # ActiveCount, as the way through read and write takes it (unsigned)
_OWNED_EXCLUSIVE = RESOURCE_OWNED_EXCLUSIVE << 8 * (L.ERESOURCE.Flag - L.ERESOURCE.ActiveCount)
_OWNER_THREAD_WORD = L.ERESOURCE.OwnerEntry // 8
_OWNER_COUNT_WORD = _OWNER_THREAD_WORD + 1
_RESOURCE_FAST_BYTES = L.ERESOURCE.OwnerEntry + 16

for _name, _size, _signed, _pointer in (("EVENT_TYPE", 4, True, False), ("KPRIORITY", 4, True, False),
                                        ("PRKEVENT", 8, False, True), ("PFAST_MUTEX", 8, False, True),
                                        ("ERESOURCE_THREAD", 8, False, False),
                                        ("PKMUTEX", 8, False, True), ("PRKMUTEX", 8, False, True)):
    register_type(_name, _size, signed=_signed, pointer=_pointer)


class WaitForever(RuntimeError):
    """The one thread waits on an object nothing can signal: Windows would hang there."""


KTIMER_DUE_TIME = 0x18
KTIMER_DPC = 0x30
KTIMER_PERIOD = 0x3C
KTIMER_SIZE = 0x40
# KeSetTimerEx's inline stores: the KTIMER's QWORDs that hold its fields (SignalState and
# Period are the high DWORDs of theirs).
assert L.DISPATCHER_HEADER.SignalState == 4 and KTIMER_PERIOD % 8 == 4
_SIGNAL_STATE_WORD = L.DISPATCHER_HEADER.SignalState // 8
_DUE_TIME_WORD = KTIMER_DUE_TIME // 8
_DPC_WORD = KTIMER_DPC // 8
_PERIOD_WORD = KTIMER_PERIOD // 8
_QWORD_MASK = (1 << 64) - 1
KDPC_DEFERRED_ROUTINE = 0x18
KDPC_DEFERRED_CONTEXT = 0x20
KDPC_SYSTEM_ARGUMENT1 = 0x28
KDPC_SYSTEM_ARGUMENT2 = 0x30
TIMER_NOTIFICATION_OBJECT = 8
TIMER_SYNCHRONIZATION_OBJECT = 9
EVENT_MODIFY_STATE = 0x0002
STATUS_WAIT_0 = 0x00000000
STATUS_SEMAPHORE_LIMIT_EXCEEDED = 0xC0000047
SEMAPHORE_OBJECT = 5
KSEMAPHORE_LIMIT = 0x18
KSEMAPHORE_SIZE = 0x20
WAIT_ALL, WAIT_ANY = 0, 1
MAXIMUM_WAIT_OBJECTS = 64
THREAD_WAIT_OBJECTS = 3
# KGUARDED_MUTEX (Windows 7 x64, 0x38 bytes): Count (GM_LOCK_BIT set: free), Owner,
# Contention, Gate (a KGATE: a DISPATCHER_HEADER of type GateObject), the APC disable counts.
KGUARDED_MUTEX_COUNT = 0x00
KGUARDED_MUTEX_OWNER = 0x08
KGUARDED_MUTEX_CONTENTION = 0x10
KGUARDED_MUTEX_GATE = 0x18
KGUARDED_MUTEX_SIZE = 0x38
GM_LOCK_BIT = 1
GATE_OBJECT = 7
KGATE_SIZE = 0x18
MICROSECOND = 10  # 100 ns units

for _name in ("PKTIMER", "PKDPC", "PKDEFERRED_ROUTINE", "TIMER_TYPE", "PRKSEMAPHORE",
              "PKGUARDED_MUTEX", "WAIT_TYPE", "PKWAIT_BLOCK"):
    register_type(_name, 8 if _name.startswith("P") else 4, pointer=_name.startswith("P"))


# Expiries of timers with a DPC that one advance of the clock runs one by one, each DPC at
# its own time (a minute of a 1 ms periodic timer; about a second of Python). Past them the
# rest of the advance is one late clock tick (advance_clock): a periodic timer across a sleep
# of years (KeDelayExecutionThread of 2**62 units, which native code may pass) ran its DPC
# every period, about 4.6 * 10**14 times, a hang in ntpool itself.
MAX_TIMER_EXPIRIES = 1 << 16


class SyncRoutines:
    critical_region = 0  # critical regions entered and not left (-KTHREAD.KernelApcDisable)

    def _init_sync(self) -> None:
        self.system_time = EPOCH_2024
        self.boot_time = EPOCH_2024
        self.timers: dict[int, int] = {}  # KTIMER address -> due system time (armed timers)
        self._publish_time()

    def _publish_time(self) -> None:
        """KUSER_SHARED_DATA's InterruptTime and SystemTime (adjacent KSYSTEM_TIMEs), written
        in one pack, and its TickCount: what the clock interrupt keeps there."""
        pa = self.space.translate(KUSER_SHARED_DATA)
        if pa is None:
            return
        system = self.system_time
        interrupt = system - self.boot_time
        _TWO_KSYSTEM_TIMES.pack_into(self.physical.buffer, pa + KUSER_INTERRUPT_TIME,
                                     interrupt & 0xFFFFFFFF, interrupt >> 32, interrupt >> 32,
                                     system & 0xFFFFFFFF, system >> 32, system >> 32)
        _TICK_COUNT.pack_into(self.physical.buffer, pa + KUSER_TICK_COUNT, interrupt // 156250)

    def advance_clock(self, hundred_ns: int) -> None:
        """Move the clock on; timers that fall due expire in order, their DPCs running at
        DISPATCH_LEVEL as the clock interrupt would run them."""
        seconds_before = (self.system_time - self.boot_time) // 10_000_000
        target = min(self.system_time + max(0, hundred_ns), CLOCK_END)
        expiries = 0
        late: set[int] = set()  # timers the late tick expired (see below): once each
        while self.timers:
            due = [(when, timer) for timer, when in self.timers.items()
                   if when <= target and timer not in late]
            if not due:
                break
            when, timer = min(due)
            if expiries >= MAX_TIMER_EXPIRIES:
                # The late tick: what is still due expires once, at the end of the advance,
                # as on a clock interrupt that comes late (Windows re-arms a periodic timer
                # relative to the time it is processed, and KeInsertQueueDpc does not queue
                # a DPC already queued, so the missed periods run its DPC once).
                when = target
                late.add(timer)
            expiries += 1
            self.system_time = max(self.system_time, when)
            self._publish_time()
            self._expire_timer(timer)
            period = self._get32(timer + KTIMER_PERIOD)
            if period and not self._get64(timer + KTIMER_DPC) and timer in self.timers:
                # A periodic timer with no DPC: each later expiry only signals it again (it
                # stays signalled) and re-arms it a period on, which nothing can tell from
                # one re-arm past the target: its expiries up to the target are this one.
                step = period * 10_000
                self.timers[timer] = when + ((target - when) // step + 1) * step
        self.system_time = target
        self._publish_time()
        # The balance set manager wakes once a second: ExAdjustLookasideDepth retunes the
        # drivers' lookaside lists and the pool's (routines.runtime, pool.lookaside).
        seconds = (self.system_time - self.boot_time) // 10_000_000 - seconds_before
        if seconds:
            for _ in range(self._lookaside_scans_that_matter(seconds)):
                self.adjust_lookaside_depth()

    def _lookaside_scans_that_matter(self, seconds: int) -> int:
        """How many of ``seconds`` once-a-second scans leave the lists as all of them would.
        Nothing runs between the scans of one advance, so every list is idle from its second
        visit on, and an idle list's Depth falls 10 a visit to the minimum, 4, then stays
        (pool.lookaside.target_depth): a driver's USHORT Depth settles within 6,556 visits
        (its lists are visited every 3 scans), the pool's (256 at most) within 28 (a set
        every 3 x (processors + 1) scans). Past that bound only the scans' rotation moves:
        the scans that matter are the bound plus the rest of a rotation. A sleep of years
        (KeDelayExecutionThread of 2**63 units, which native code may pass) ran ntpool for
        as many seconds' scans, a hang in ntpool itself."""
        rotation = 3 * (self.processors + 1)
        settled = max(3 * 6556, rotation * 28)
        bound = -(-settled // rotation) * rotation  # a whole number of rotations
        return seconds if seconds <= bound else bound + (seconds - bound) % rotation

    def advance_time(self, seconds) -> None:
        """Let ``seconds`` of simulated time pass (``advance_clock`` in seconds)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
                not 0 <= seconds < float("inf"):
            raise ValueError(f"seconds must be a non-negative finite number, got {seconds!r}")
        self.advance_clock(round(seconds * 10_000_000))

    def _expire_timer(self, timer: int) -> None:
        period = self._get32(timer + KTIMER_PERIOD)
        if period:
            self.timers[timer] = self.system_time + period * 10_000
        else:
            del self.timers[timer]
        self._put32(timer + L.DISPATCHER_HEADER.SignalState, 1)
        dpc = self._get64(timer + KTIMER_DPC)
        if dpc:
            # The clock interrupt queues the timer's DPC with the expiry time as its system
            # arguments (KiTimerExpiration): it runs at once below DISPATCH_LEVEL, else when
            # the IRQL drops; one still queued is not queued again.
            self.queue_dpc(dpc, self.system_time & 0xFFFFFFFF, self.system_time >> 32, timer=True)

    # --- timers and DPCs ---------------------------------------------------------------------

    @routine("VOID KeInitializeDpc(PKDPC Dpc, PKDEFERRED_ROUTINE DeferredRoutine, PVOID DeferredContext)")
    def KeInitializeDpc(self, Dpc, DeferredRoutine, DeferredContext) -> None:
        self.write(Dpc, bytes([0x13, 1]) + bytes(0x3E))  # DpcObject, MediumImportance
        self._put64(Dpc + KDPC_DEFERRED_ROUTINE, DeferredRoutine)
        self._put64(Dpc + KDPC_DEFERRED_CONTEXT, DeferredContext)

    @routine("VOID KeInitializeTimer(PKTIMER Timer)")
    def KeInitializeTimer(self, Timer) -> None:
        self.KeInitializeTimerEx(Timer, 0)

    @routine("VOID KeInitializeTimerEx(PKTIMER Timer, TIMER_TYPE Type)")
    def KeInitializeTimerEx(self, Timer, Type) -> None:
        kind = TIMER_SYNCHRONIZATION_OBJECT if Type else TIMER_NOTIFICATION_OBJECT
        self.write(Timer, bytes([kind, 0, KTIMER_SIZE // 4, 0]) + bytes(KTIMER_SIZE - 4))
        wait_list = Timer + L.DISPATCHER_HEADER.WaitListHead
        self._put64(wait_list, wait_list)
        self._put64(wait_list + 8, wait_list)
        self.timers.pop(Timer, None)

    @routine("BOOLEAN KeSetTimer(PKTIMER Timer, LARGE_INTEGER DueTime, PKDPC Dpc)")
    def KeSetTimer(self, Timer, DueTime, Dpc) -> int:
        return self.KeSetTimerEx(Timer, DueTime, 0, Dpc)

    @routine("BOOLEAN KeSetTimerEx(PKTIMER Timer, LARGE_INTEGER DueTime, LONG Period, PKDPC Dpc)")
    def KeSetTimerEx(self, Timer, DueTime, Period, Dpc) -> int:
        """Arm the timer (DueTime negative: relative, 100 ns units); TRUE if it was armed."""
        if self.irql_by_processor[self.current_processor] > _DISPATCH:
            self._check_irql_at_most(DISPATCH_LEVEL, "KeSetTimer")
        due = DueTime - (1 << 64) if DueTime >= 1 << 63 else DueTime
        when = self.system_time - due if due < 0 else max(due, self.system_time)
        was_armed = Timer in self.timers
        self.timers[Timer] = when
        # The usual timer, written inline: an aligned KTIMER whole on a present page, int
        # arguments, nobody listening for memory writes. The fields below as QWORDs of
        # ``_words`` (SignalState the high DWORD of the first, Period of the last), the
        # values ``_put32`` / ``_put64`` would store. Anything else: those, which fault and
        # publish as a driver's own store would.
        if type(Timer) is int and not Timer & 7 and Timer & 0xFFF <= 0x1000 - KTIMER_SIZE and \
                type(Dpc) is int and type(Period) is int and not self._writes_published:
            base = self._tlb.get(Timer >> 12)
            if base is not None:
                words = self._words
                word = (base + (Timer & 0xFFF)) >> 3
                words[word + _SIGNAL_STATE_WORD] &= _LOW_DWORD  # SignalState = 0
                words[word + _DUE_TIME_WORD] = (when - self.boot_time) & _QWORD_MASK
                words[word + _DPC_WORD] = Dpc & _QWORD_MASK
                words[word + _PERIOD_WORD] = words[word + _PERIOD_WORD] & _LOW_DWORD | \
                    (Period & _LOW_DWORD) << 32
                return int(was_armed)
        self._put32(Timer + L.DISPATCHER_HEADER.SignalState, 0)
        self._put64(Timer + KTIMER_DUE_TIME, when - self.boot_time)
        self._put64(Timer + KTIMER_DPC, Dpc)
        self._put32(Timer + KTIMER_PERIOD, Period & 0xFFFFFFFF)
        return int(was_armed)

    @routine("BOOLEAN KeCancelTimer(PKTIMER Timer)")
    def KeCancelTimer(self, Timer) -> int:
        return int(self.timers.pop(Timer, None) is not None)

    @routine("BOOLEAN KeReadStateTimer(PKTIMER Timer)")
    def KeReadStateTimer(self, Timer) -> int:
        return int(self._signal_state(Timer) > 0)

    def check_timers_at_unload(self, start: int, size: int) -> list[int]:
        """Armed timers or DPC routines inside [start, start+size): a driver that unloads
        with one armed would have the clock run code that is gone."""
        found = []
        for timer in self.timers:
            dpc = self._get64(timer + KTIMER_DPC)
            routine_address = self._get64(dpc + KDPC_DEFERRED_ROUTINE) if dpc else 0
            if start <= timer < start + size or start <= routine_address < start + size:
                found.append(timer)
        return found

    # --- event objects and handles to them ------------------------------------------------------

    def create_event(self, notification: bool = True, signalled: bool = False) -> int:
        """An event object as a user-mode caller makes one (CreateEvent): its handle."""
        event = self._ob_create("Event", L.KEVENT_SIZE, on_behalf=False)
        self.KeInitializeEvent(event, 0 if notification else 1, int(signalled))
        handle = self._ob_insert_handle(event, 0x1F0003, kernel=False)
        self._add_counts(event, -1, 0)  # the creation reference passes to the handle
        return handle

    def event_of(self, handle: int) -> int:
        return self._ob_handle_object(handle, "Event")

    @routine("NTSTATUS ObReferenceObjectByHandle(HANDLE Handle, ACCESS_MASK DesiredAccess, "
             "POBJECT_TYPE ObjectType, KPROCESSOR_MODE AccessMode, _Out_ PVOID *Object, "
             "POBJECT_HANDLE_INFORMATION HandleInformation)")
    def ObReferenceObjectByHandle(self, Handle, DesiredAccess, ObjectType, AccessMode,
                                  HandleInformation) -> tuple[int, int]:
        """(status, object) with one more reference; a handle of another type is
        STATUS_OBJECT_TYPE_MISMATCH, a kernel handle from user mode STATUS_INVALID_HANDLE."""
        entry = self.handles.get(Handle & 0xFFFFFFFFFFFFFFFF)
        if entry is None or (AccessMode == 1 and Handle & (1 << 63)):
            return 0xC0000008, 0
        body, granted = entry
        info = self.objects[body]
        if ObjectType and ObjectType != self.object_types.get(info.type_name):
            return 0xC0000024, 0
        if AccessMode == 1 and DesiredAccess & ~granted:
            return 0xC0000022, 0  # STATUS_ACCESS_DENIED
        self._add_counts(body, 1, 0)
        return NtStatus.STATUS_SUCCESS, body

    # --- the clock ---------------------------------------------------------------------------

    @routine("VOID KeQuerySystemTime(_Out_ PLARGE_INTEGER CurrentTime)")
    def KeQuerySystemTime(self) -> int:
        return self.system_time

    @routine("LARGE_INTEGER KeQueryPerformanceCounter(_Out_opt_ PLARGE_INTEGER PerformanceFrequency)")
    def KeQueryPerformanceCounter(self) -> tuple[int, int]:
        return self.system_time - self.boot_time, PERFORMANCE_FREQUENCY

    @routine("ULONG KeQueryTimeIncrement(VOID)")
    def KeQueryTimeIncrement(self) -> int:
        return 156250

    @routine("NTSTATUS KeDelayExecutionThread(KPROCESSOR_MODE WaitMode, BOOLEAN Alertable, PLARGE_INTEGER Interval)")
    def KeDelayExecutionThread(self, WaitMode, Alertable, Interval) -> int:
        """Sleep: the worker threads get the processor (queued work items run), the clock
        moves on, and work items that timer DPCs queued meanwhile run."""
        self.run_work_items()
        self._advance_by(Interval)
        self.run_work_items()
        return NtStatus.STATUS_SUCCESS

    def _advance_by(self, interval_va: int) -> None:
        value = int.from_bytes(self.read(interval_va, 8), "little", signed=True)
        # Negative: relative, in 100 ns units; positive: an absolute system time.
        self.advance_clock(-value if value < 0 else max(0, value - self.system_time))

    # --- events ------------------------------------------------------------------------------

    @routine("VOID KeInitializeEvent(PRKEVENT Event, EVENT_TYPE Type, BOOLEAN State)")
    def KeInitializeEvent(self, Event, Type, State) -> None:
        """DISPATCHER_HEADER: Type (0 notification, 1 synchronization), Size 6 ULONGs,
        SignalState, an empty wait list."""
        self.write(Event, bytes([Type & 0xFF, 0, L.KEVENT_SIZE // 4, 0]) +
                   (1 if State else 0).to_bytes(4, "little"))
        wait_list = Event + L.DISPATCHER_HEADER.WaitListHead
        self._put64(wait_list, wait_list)
        self._put64(wait_list + 8, wait_list)

    def _signal_state(self, dispatcher: int) -> int:
        return int.from_bytes(self.read(dispatcher + L.DISPATCHER_HEADER.SignalState, 4), "little", signed=True)

    @routine("LONG KeSetEvent(PRKEVENT Event, KPRIORITY Increment, BOOLEAN Wait)")
    def KeSetEvent(self, Event, Increment, Wait) -> int:
        # The usual call, inline: at most DISPATCH_LEVEL, the header's first QWORD (Type ..
        # SignalState) aligned on a present page, nobody listening for memory writes.
        base = self._tlb.get(Event >> 12) if type(Event) is int else None
        if base is not None and not Event & 7 and not self._writes_published and \
                self.irql_by_processor[self.current_processor] <= _DISPATCH:
            words = self._words
            word = (base + (Event & 0xFFF)) >> 3
            header = words[word]
            previous = header >> 32  # SignalState, a LONG
            words[word] = header & _LOW_DWORD | 1 << 32
            return previous - (1 << 32) if previous & 0x80000000 else previous
        self._check_irql_at_most(DISPATCH_LEVEL, "KeSetEvent")
        previous = self._signal_state(Event)
        self._put32(Event + L.DISPATCHER_HEADER.SignalState, 1)
        return previous

    @routine("LONG KeResetEvent(PRKEVENT Event)")
    def KeResetEvent(self, Event) -> int:
        # The usual call, inline (as KeSetEvent's), at any IRQL, as the way below.
        base = self._tlb.get(Event >> 12) if type(Event) is int else None
        if base is not None and not Event & 7 and not self._writes_published:
            words = self._words
            word = (base + (Event & 0xFFF)) >> 3
            header = words[word]
            previous = header >> 32  # SignalState, a LONG
            words[word] = header & _LOW_DWORD
            return previous - (1 << 32) if previous & 0x80000000 else previous
        previous = self._signal_state(Event)
        self._put32(Event + L.DISPATCHER_HEADER.SignalState, 0)
        return previous

    @routine("VOID KeClearEvent(PRKEVENT Event)")
    def KeClearEvent(self, Event) -> None:
        # The usual call, inline (as KeResetEvent's).
        base = self._tlb.get(Event >> 12) if type(Event) is int else None
        if base is not None and not Event & 7 and not self._writes_published:
            word = (base + (Event & 0xFFF)) >> 3
            self._words[word] &= _LOW_DWORD
            return
        self._put32(Event + L.DISPATCHER_HEADER.SignalState, 0)

    @routine("LONG KeReadStateEvent(PRKEVENT Event)")
    def KeReadStateEvent(self, Event) -> int:
        return self._signal_state(Event)

    @routine("NTSTATUS KeWaitForSingleObject(PVOID Object, KWAIT_REASON WaitReason, "
             "KPROCESSOR_MODE WaitMode, BOOLEAN Alertable, PLARGE_INTEGER Timeout)")
    def KeWaitForSingleObject(self, Object, WaitReason, WaitMode, Alertable, Timeout) -> int:
        """Signalled: STATUS_SUCCESS (a synchronization event or mutex is taken). Not
        signalled: the thread gives up the processor, so queued work items run (one may
        signal it); still not signalled, STATUS_TIMEOUT after the timeout, WaitForever
        without one."""
        # The usual wait, inline: no timeout, at most APC_LEVEL, a signalled event or
        # semaphore whose header's first QWORD is aligned on a present page, nobody listening
        # for memory writes: the same store ``_take_if_signalled`` makes. Anything else
        # (a mutant, not signalled, a timeout): the way below.
        if not Timeout and type(Object) is int and not Object & 7 and not self._writes_published \
                and self.irql_by_processor[self.current_processor] <= _APC:
            base = self._tlb.get(Object >> 12)
            if base is not None:
                words = self._words
                word = (base + (Object & 0xFFF)) >> 3
                header = words[word]
                kind = header & 0xFF
                if kind != 2 and 0 < header >> 32 < 0x80000000:  # SignalState > 0
                    if kind == 1:
                        words[word] = header & _LOW_DWORD
                    elif kind == SEMAPHORE_OBJECT:
                        words[word] = header - (1 << 32)
                    return NtStatus.STATUS_SUCCESS
        zero_timeout = Timeout and int.from_bytes(self.read(Timeout, 8), "little") == 0
        if not zero_timeout:
            self._check_irql_at_most(APC_LEVEL, "KeWaitForSingleObject with a non-zero timeout")
        if self._take_if_signalled(Object):
            return NtStatus.STATUS_SUCCESS
        if not zero_timeout and self.work_items_pending() and self.run_work_items() and \
                self._take_if_signalled(Object):
            return NtStatus.STATUS_SUCCESS
        if Timeout:
            self._advance_by(Timeout)
            return STATUS_TIMEOUT
        kind = self.read(Object, 1)[0]
        raise WaitForever(f"KeWaitForSingleObject on {Object:#x} (dispatcher type {kind}), which is "
                          f"not signalled, with no timeout: only another thread could signal it, "
                          f"and ntpool runs one thread")

    def _is_signalled(self, dispatcher: int) -> bool:
        kind = self.read(dispatcher, 1)[0]
        if kind == 2:  # a mutant: free when SignalState is 1, recursive for its owner
            return self._signal_state(dispatcher) > 0 or self._get64(dispatcher + 0x28) == THREAD_STAND_IN
        return self._signal_state(dispatcher) > 0

    def _take_if_signalled(self, dispatcher: int) -> bool:
        """Satisfy a wait on the object if it is signalled: a mutant is owned, a
        synchronization event cleared, a semaphore's count taken one."""
        if not self._is_signalled(dispatcher):
            return False
        kind = self.read(dispatcher, 1)[0]
        state = self._signal_state(dispatcher)
        if kind == 2:
            self._put32(dispatcher + L.DISPATCHER_HEADER.SignalState, state - 1)
            self._put64(dispatcher + 0x28, THREAD_STAND_IN)
        elif kind in (1, SEMAPHORE_OBJECT):
            self._put32(dispatcher + L.DISPATCHER_HEADER.SignalState, state - 1 if kind == SEMAPHORE_OBJECT else 0)
        return True

    @routine("NTSTATUS KeWaitForMultipleObjects(ULONG Count, PVOID *Object, WAIT_TYPE WaitType, "
             "KWAIT_REASON WaitReason, KPROCESSOR_MODE WaitMode, BOOLEAN Alertable, "
             "PLARGE_INTEGER Timeout, PKWAIT_BLOCK WaitBlockArray)")
    def KeWaitForMultipleObjects(self, Count, Object, WaitType, WaitReason, WaitMode, Alertable,
                                 Timeout, WaitBlockArray) -> int:
        """WaitAll: STATUS_SUCCESS when every object is signalled (each is then taken);
        WaitAny: STATUS_WAIT_0 + the index of the first signalled one (taken). Otherwise as
        KeWaitForSingleObject: work items run, then the timeout or WaitForever. More than
        MAXIMUM_WAIT_OBJECTS (64) objects, or more than THREAD_WAIT_OBJECTS (3) with no
        WaitBlockArray, is bug check 0xC MAXIMUM_WAIT_OBJECTS_EXCEEDED."""
        if Count > MAXIMUM_WAIT_OBJECTS or (not WaitBlockArray and Count > THREAD_WAIT_OBJECTS):
            self.KeBugCheckEx(BugCheckCode.MAXIMUM_WAIT_OBJECTS_EXCEEDED, 0, 0, 0, 0,
                              detail=f"KeWaitForMultipleObjects on {Count} objects "
                                     f"({'with' if WaitBlockArray else 'without'} a WaitBlockArray)")
        zero_timeout = Timeout and int.from_bytes(self.read(Timeout, 8), "little") == 0
        if not zero_timeout:
            self._check_irql_at_most(APC_LEVEL, "KeWaitForMultipleObjects with a non-zero timeout")
        objects = [self._get64(Object + 8 * index) for index in range(Count)]
        wait_all = WaitType & 0xFFFFFFFF == WAIT_ALL
        for attempt in range(2):
            if wait_all:
                if all(self._is_signalled(o) for o in objects):
                    for o in objects:
                        self._take_if_signalled(o)
                    return NtStatus.STATUS_SUCCESS
            else:
                for index, o in enumerate(objects):
                    if self._take_if_signalled(o):
                        return STATUS_WAIT_0 + index
            if attempt or zero_timeout or not (self.work_items_pending() and self.run_work_items()):
                break
        if Timeout:
            self._advance_by(Timeout)
            return STATUS_TIMEOUT
        raise WaitForever(f"KeWaitForMultipleObjects on {Count} objects "
                          f"({'WaitAll' if wait_all else 'WaitAny'}) not signalled, with "
                          f"no timeout: only another thread could signal them, and ntpool runs one thread")

    # --- semaphores (KSEMAPHORE: a DISPATCHER_HEADER of type 5, then Limit) -------------------

    @routine("VOID KeInitializeSemaphore(PRKSEMAPHORE Semaphore, LONG Count, LONG Limit)")
    def KeInitializeSemaphore(self, Semaphore, Count, Limit) -> None:
        self.write(Semaphore, bytes([SEMAPHORE_OBJECT, 0, KSEMAPHORE_SIZE // 4, 0]) +
                   (Count & 0xFFFFFFFF).to_bytes(4, "little"))
        wait_list = Semaphore + L.DISPATCHER_HEADER.WaitListHead
        self._put64(wait_list, wait_list)
        self._put64(wait_list + 8, wait_list)
        self._put32(Semaphore + KSEMAPHORE_LIMIT, Limit & 0xFFFFFFFF)

    @routine("LONG KeReleaseSemaphore(PRKSEMAPHORE Semaphore, KPRIORITY Increment, LONG Adjustment, "
             "BOOLEAN Wait)")
    def KeReleaseSemaphore(self, Semaphore, Increment, Adjustment, Wait) -> int:
        """Add Adjustment to the count; the previous count. Past the Limit (or an overflow)
        raises STATUS_SEMAPHORE_LIMIT_EXCEEDED, the count unchanged (ExRaiseStatus)."""
        self._check_irql_at_most(DISPATCH_LEVEL, "KeReleaseSemaphore")
        previous = self._signal_state(Semaphore)
        limit = int.from_bytes(self.read(Semaphore + KSEMAPHORE_LIMIT, 4), "little", signed=True)
        adjustment = Adjustment - (1 << 32) if Adjustment >= 1 << 31 else Adjustment
        count = previous + adjustment
        if adjustment <= 0 or count > limit or count > 0x7FFFFFFF:
            self.ExRaiseStatus(STATUS_SEMAPHORE_LIMIT_EXCEEDED)
        self._put32(Semaphore + L.DISPATCHER_HEADER.SignalState, count)
        return previous

    @routine("LONG KeReadStateSemaphore(PRKSEMAPHORE Semaphore)")
    def KeReadStateSemaphore(self, Semaphore) -> int:
        return self._signal_state(Semaphore)

    @routine("VOID KeInitializeMutex(PRKMUTEX Mutex, ULONG Level)")
    def KeInitializeMutex(self, Mutex, Level) -> None:
        self.write(Mutex, bytes([2, 0, L.KMUTANT_SIZE // 4, 0]) + (1).to_bytes(4, "little") +
                   bytes(L.KMUTANT_SIZE - 8))
        wait_list = Mutex + L.DISPATCHER_HEADER.WaitListHead
        self._put64(wait_list, wait_list)
        self._put64(wait_list + 8, wait_list)

    @routine("LONG KeReleaseMutex(PRKMUTEX Mutex, BOOLEAN Wait)")
    def KeReleaseMutex(self, Mutex, Wait) -> int:
        state = self._signal_state(Mutex)
        if state > 0 or self._get64(Mutex + 0x28) != THREAD_STAND_IN:
            self.KeBugCheckEx(BugCheckCode.THREAD_NOT_MUTEX_OWNER, Mutex, 0, 0, 0,
                              detail=f"KeReleaseMutex of {Mutex:#x}, which this thread does not own")
        state += 1
        self._put32(Mutex + L.DISPATCHER_HEADER.SignalState, state)
        if state == 1:
            self._put64(Mutex + 0x28, 0)
        return state - 1

    def _check_irql_at_most(self, level: int, what: str) -> None:
        irql = self.irql_by_processor[self.current_processor]
        if irql > level:
            self.KeBugCheckEx(BugCheckCode.IRQL_NOT_LESS_OR_EQUAL, 0, irql, 0, 0,
                              detail=f"{what} at IRQL {irql} (at most {level} allowed)")

    # --- executive resources -----------------------------------------------------------------

    @routine("NTSTATUS ExInitializeResourceLite(PERESOURCE Resource)")
    def ExInitializeResourceLite(self, Resource) -> int:
        self.write(Resource, bytes(L.ERESOURCE.SIZE))
        self.resources = getattr(self, "resources", set())
        self.resources.add(Resource)
        return NtStatus.STATUS_SUCCESS

    @routine("NTSTATUS ExDeleteResourceLite(PERESOURCE Resource)")
    def ExDeleteResourceLite(self, Resource) -> int:
        getattr(self, "resources", set()).discard(Resource)
        return NtStatus.STATUS_SUCCESS

    def _resource_state(self, resource: int) -> tuple[int, int]:
        return self._get16(resource + L.ERESOURCE.ActiveCount), self._get16(resource + L.ERESOURCE.Flag)

    def _resource_words(self, resource) -> int | None:
        """Where the usual acquire or release may read and write the ERESOURCE's QWORDs at
        once: the index in ``_words`` of its first QWORD when it is aligned, its fields up
        to OwnerEntry's OwnerCount are on one present page and nobody listens for memory
        writes; None otherwise (the way through ``read`` and ``write``)."""
        base = self._tlb.get(resource >> 12) if type(resource) is int else None
        if base is None or resource & 7 or resource & 0xFFF > 0x1000 - _RESOURCE_FAST_BYTES or \
                self._writes_published:
            return None
        return (base + (resource & 0xFFF)) >> 3

    # The usual acquires and releases, inline: the QWORD holding ActiveCount (its low WORD)
    # and Flag (the WORD above it), OwnerEntry's OwnerThread, and the QWORD whose low DWORD
    # is OwnerCount, each read and written once; the stores are those of the way below.

    @routine("BOOLEAN ExAcquireResourceExclusiveLite(PERESOURCE Resource, BOOLEAN Wait)")
    def ExAcquireResourceExclusiveLite(self, Resource, Wait) -> int:
        word = self._resource_words(Resource)
        if word is not None:
            words = self._words
            state = words[word + _STATE_WORD]
            if not state & _ACTIVE_COUNT or state & _OWNED_EXCLUSIVE:  # free, or ours exclusively
                words[word + _STATE_WORD] = state & ~_ACTIVE_COUNT | _OWNED_EXCLUSIVE | \
                    (state + 1) & _ACTIVE_COUNT
                words[word + _OWNER_THREAD_WORD] = THREAD_STAND_IN
                owners = words[word + _OWNER_COUNT_WORD]
                words[word + _OWNER_COUNT_WORD] = owners & _HIGH_DWORD | (owners + 1) & _LOW_DWORD
                return 1
        count, flag = self._resource_state(Resource)
        if count and not flag & RESOURCE_OWNED_EXCLUSIVE:
            if not Wait:
                return 0
            raise WaitForever(f"ExAcquireResourceExclusiveLite of {Resource:#x}, which this thread "
                              f"holds shared: it would wait for itself")
        self._put16(Resource + L.ERESOURCE.ActiveCount, count + 1)
        self._put16(Resource + L.ERESOURCE.Flag, flag | RESOURCE_OWNED_EXCLUSIVE)
        self._put64(Resource + L.ERESOURCE.OwnerEntry, THREAD_STAND_IN)
        self._put32(Resource + L.ERESOURCE.OwnerEntry + 8,
                    self._get32(Resource + L.ERESOURCE.OwnerEntry + 8) + 1)
        return 1

    @routine("BOOLEAN ExAcquireResourceSharedLite(PERESOURCE Resource, BOOLEAN Wait)")
    def ExAcquireResourceSharedLite(self, Resource, Wait) -> int:
        word = self._resource_words(Resource)
        if word is not None:
            words = self._words
            state = words[word + _STATE_WORD]
            words[word + _STATE_WORD] = state & ~_ACTIVE_COUNT | (state + 1) & _ACTIVE_COUNT
            words[word + _OWNER_THREAD_WORD] = THREAD_STAND_IN
            owners = words[word + _OWNER_COUNT_WORD]
            words[word + _OWNER_COUNT_WORD] = owners & _HIGH_DWORD | (owners + 1) & _LOW_DWORD
            return 1
        count, flag = self._resource_state(Resource)
        self._put16(Resource + L.ERESOURCE.ActiveCount, count + 1)
        self._put64(Resource + L.ERESOURCE.OwnerEntry, THREAD_STAND_IN)
        self._put32(Resource + L.ERESOURCE.OwnerEntry + 8,
                    self._get32(Resource + L.ERESOURCE.OwnerEntry + 8) + 1)
        return 1

    @routine("VOID ExReleaseResourceLite(PERESOURCE Resource)")
    def ExReleaseResourceLite(self, Resource) -> None:
        word = self._resource_words(Resource)
        if word is not None:
            words = self._words
            state = words[word + _STATE_WORD]
            count = (state & _ACTIVE_COUNT) - 1
            if count > 0:  # still held: ActiveCount and OwnerCount go down to the count
                words[word + _STATE_WORD] = state & ~_ACTIVE_COUNT | count
                words[word + _OWNER_COUNT_WORD] = words[word + _OWNER_COUNT_WORD] & _HIGH_DWORD | count
                return
            if count == 0:  # the last release: free, with no owner
                words[word + _STATE_WORD] = state & ~(_ACTIVE_COUNT | _OWNED_EXCLUSIVE)
                words[word + _OWNER_COUNT_WORD] &= _HIGH_DWORD
                words[word + _OWNER_THREAD_WORD] = 0
                return
        count, flag = self._resource_state(Resource)
        if count == 0:
            self.KeBugCheckEx(BugCheckCode.RESOURCE_NOT_OWNED, Resource, THREAD_STAND_IN, 0, 2,
                              detail=f"ExReleaseResourceLite of {Resource:#x}, which is not held")
        count -= 1
        self._put16(Resource + L.ERESOURCE.ActiveCount, count)
        self._put32(Resource + L.ERESOURCE.OwnerEntry + 8, count)
        if count == 0:
            self._put16(Resource + L.ERESOURCE.Flag, flag & ~RESOURCE_OWNED_EXCLUSIVE)
            self._put64(Resource + L.ERESOURCE.OwnerEntry, 0)

    @routine("VOID ExReleaseResourceForThreadLite(PERESOURCE Resource, ERESOURCE_THREAD ResourceThreadId)")
    def ExReleaseResourceForThreadLite(self, Resource, ResourceThreadId) -> None:
        self.ExReleaseResourceLite(Resource)

    @routine("BOOLEAN ExIsResourceAcquiredExclusiveLite(PERESOURCE Resource)")
    def ExIsResourceAcquiredExclusiveLite(self, Resource) -> int:
        word = self._resource_words(Resource)
        if word is not None:
            state = self._words[word + _STATE_WORD]
            return int(bool(state & _ACTIVE_COUNT and state & _OWNED_EXCLUSIVE))
        count, flag = self._resource_state(Resource)
        return int(bool(count and flag & RESOURCE_OWNED_EXCLUSIVE))

    @routine("ULONG ExIsResourceAcquiredSharedLite(PERESOURCE Resource)")
    def ExIsResourceAcquiredSharedLite(self, Resource) -> int:
        word = self._resource_words(Resource)
        if word is not None:
            return self._words[word + _STATE_WORD] & _ACTIVE_COUNT
        return self._resource_state(Resource)[0]

    @routine("VOID KeEnterCriticalRegion(VOID)")
    def KeEnterCriticalRegion(self) -> None:
        self.critical_region += 1

    @routine("VOID KeLeaveCriticalRegion(VOID)")
    def KeLeaveCriticalRegion(self) -> None:
        self.critical_region -= 1

    # --- fast mutexes (ExInitializeFastMutex is inline: Count 1, KeInitializeEvent) ------------

    def initialize_fast_mutex(self, FastMutex) -> None:
        """ExInitializeFastMutex (a wdm.h inline), for Python drivers."""
        self._put32(FastMutex + L.FAST_MUTEX.Count, 1)
        self._put64(FastMutex + L.FAST_MUTEX.Owner, 0)
        self._put32(FastMutex + L.FAST_MUTEX.Contention, 0)
        self.KeInitializeEvent(FastMutex + L.FAST_MUTEX.Event, 1, 0)

    @routine("VOID ExAcquireFastMutex(PFAST_MUTEX FastMutex)")
    def ExAcquireFastMutex(self, FastMutex) -> None:
        """Raise to APC_LEVEL and own the mutex (the old IRQL is kept in it)."""
        # The usual acquire, inline: at most APC_LEVEL, the FAST_MUTEX aligned on a present
        # page, free, nobody listening for memory writes; the stores of the way below, in its
        # order (Count, Owner, the IRQL, OldIrql), as QWORDs keeping the bytes around them.
        old = self.irql_by_processor[self.current_processor]
        base = self._tlb.get(FastMutex >> 12) if type(FastMutex) is int else None
        if base is not None and old <= _APC and not FastMutex & 7 and \
                FastMutex & 0xFFF <= 0x1000 - L.FAST_MUTEX.SIZE and not self._writes_published:
            words = self._words
            word = (base + (FastMutex & 0xFFF)) >> 3
            count = words[word]
            if count & _LOW_DWORD == 1:
                words[word] = count & _HIGH_DWORD  # Count 0
                words[word + 1] = THREAD_STAND_IN  # Owner
                self._set_irql(_APC)
                # The raise may have paged the mutex out (Driver Verifier's IRQL checking).
                base = self._tlb.get(FastMutex >> 12)
                if base is not None and not self._writes_published:
                    word = (base + (FastMutex & 0xFFF) + L.FAST_MUTEX.OldIrql) >> 3
                    words[word] = words[word] & _HIGH_DWORD | old
                else:
                    self._put32(FastMutex + L.FAST_MUTEX.OldIrql, old)
                return
        self._check_irql_at_most(APC_LEVEL, "ExAcquireFastMutex")
        old = self.irql_by_processor[self.current_processor]
        self._take_fast_mutex(FastMutex)
        self._set_irql(APC_LEVEL)
        self._put32(FastMutex + L.FAST_MUTEX.OldIrql, old)

    @routine("VOID ExReleaseFastMutex(PFAST_MUTEX FastMutex)")
    def ExReleaseFastMutex(self, FastMutex) -> None:
        # The usual release, inline (as the acquire's): an owned mutex, Count 1, Owner 0.
        base = self._tlb.get(FastMutex >> 12) if type(FastMutex) is int else None
        if base is not None and not FastMutex & 7 and \
                FastMutex & 0xFFF <= 0x1000 - L.FAST_MUTEX.SIZE and not self._writes_published:
            words = self._words
            word = (base + (FastMutex & 0xFFF)) >> 3
            old = words[word + L.FAST_MUTEX.OldIrql // 8] & _LOW_DWORD
            count = words[word]
            if not count & _LOW_DWORD:
                words[word] = count | 1  # Count 1
                words[word + 1] = 0  # Owner
                self._set_irql(old)
                return
        old = self._get32(FastMutex + L.FAST_MUTEX.OldIrql)
        self._drop_fast_mutex(FastMutex)
        self._set_irql(old)

    @routine("BOOLEAN ExTryToAcquireFastMutex(PFAST_MUTEX FastMutex)")
    def ExTryToAcquireFastMutex(self, FastMutex) -> int:
        if self._get32(FastMutex + L.FAST_MUTEX.Count) != 1:
            return 0
        self.ExAcquireFastMutex(FastMutex)
        return 1

    @routine("VOID ExAcquireFastMutexUnsafe(PFAST_MUTEX FastMutex)")
    def ExAcquireFastMutexUnsafe(self, FastMutex) -> None:
        self._take_fast_mutex(FastMutex)

    @routine("VOID ExReleaseFastMutexUnsafe(PFAST_MUTEX FastMutex)")
    def ExReleaseFastMutexUnsafe(self, FastMutex) -> None:
        self._drop_fast_mutex(FastMutex)

    def _take_fast_mutex(self, mutex: int) -> None:
        if self._get32(mutex + L.FAST_MUTEX.Count) != 1:
            raise WaitForever(f"fast mutex {mutex:#x} is already owned (by this thread: fast "
                              f"mutexes are not recursive)")
        self._put32(mutex + L.FAST_MUTEX.Count, 0)
        self._put64(mutex + L.FAST_MUTEX.Owner, THREAD_STAND_IN)

    def _drop_fast_mutex(self, mutex: int) -> None:
        if self._get32(mutex + L.FAST_MUTEX.Count) != 0:
            self.KeBugCheckEx(BugCheckCode.RESOURCE_NOT_OWNED, mutex, THREAD_STAND_IN, 0, 3,
                              detail=f"release of fast mutex {mutex:#x}, which is not owned")
        self._put32(mutex + L.FAST_MUTEX.Count, 1)
        self._put64(mutex + L.FAST_MUTEX.Owner, 0)

    # --- guarded mutexes (Windows 7: a guarded region, no IRQL change) --------------------------

    @routine("VOID KeInitializeGuardedMutex(PKGUARDED_MUTEX Mutex)")
    def KeInitializeGuardedMutex(self, Mutex) -> None:
        self.write(Mutex, bytes(KGUARDED_MUTEX_SIZE))
        self._put32(Mutex + KGUARDED_MUTEX_COUNT, GM_LOCK_BIT)
        gate = Mutex + KGUARDED_MUTEX_GATE
        self.write(gate, bytes([GATE_OBJECT, 0, KGATE_SIZE // 4, 0]))
        self._put64(gate + L.DISPATCHER_HEADER.WaitListHead, gate + L.DISPATCHER_HEADER.WaitListHead)
        self._put64(gate + L.DISPATCHER_HEADER.WaitListHead + 8, gate + L.DISPATCHER_HEADER.WaitListHead)

    @routine("VOID KeAcquireGuardedMutex(PKGUARDED_MUTEX Mutex)")
    def KeAcquireGuardedMutex(self, Mutex) -> None:
        """Own the mutex (at most APC_LEVEL); one this thread owns already would wait for
        itself (guarded mutexes are not recursive): WaitForever."""
        # The usual acquire, inline: at most APC_LEVEL, Count and Owner aligned on a present
        # page, the lock bit set (free), nobody listening for memory writes.
        base = self._tlb.get(Mutex >> 12) if type(Mutex) is int else None
        if base is not None and not Mutex & 7 and Mutex & 0xFFF <= 0xFF0 and \
                not self._writes_published and self.irql_by_processor[self.current_processor] <= _APC:
            words = self._words
            word = (base + (Mutex & 0xFFF)) >> 3
            count = words[word]
            if count & GM_LOCK_BIT:
                self.guarded_region = getattr(self, "guarded_region", 0) + 1  # KeEnterGuardedRegion
                words[word] = count ^ GM_LOCK_BIT
                words[word + 1] = THREAD_STAND_IN  # Owner
                return
        self._check_irql_at_most(APC_LEVEL, "KeAcquireGuardedMutex")
        if not self._get32(Mutex + KGUARDED_MUTEX_COUNT) & GM_LOCK_BIT:
            raise WaitForever(f"guarded mutex {Mutex:#x} is already owned (by this thread: guarded "
                              f"mutexes are not recursive)")
        self._take_guarded_mutex(Mutex)

    @routine("BOOLEAN KeTryToAcquireGuardedMutex(PKGUARDED_MUTEX Mutex)")
    def KeTryToAcquireGuardedMutex(self, Mutex) -> int:
        self._check_irql_at_most(APC_LEVEL, "KeTryToAcquireGuardedMutex")
        if not self._get32(Mutex + KGUARDED_MUTEX_COUNT) & GM_LOCK_BIT:
            return 0
        self._take_guarded_mutex(Mutex)
        return 1

    def _take_guarded_mutex(self, mutex: int) -> None:
        self.KeEnterGuardedRegion()
        self._put32(mutex + KGUARDED_MUTEX_COUNT, self._get32(mutex + KGUARDED_MUTEX_COUNT) & ~GM_LOCK_BIT)
        self._put64(mutex + KGUARDED_MUTEX_OWNER, THREAD_STAND_IN)

    @routine("VOID KeReleaseGuardedMutex(PKGUARDED_MUTEX Mutex)")
    def KeReleaseGuardedMutex(self, Mutex) -> None:
        """Release an owned mutex; one this thread does not own is 0xE3 RESOURCE_NOT_OWNED
        (mutex, thread, 0, 4), as for a fast mutex (departures)."""
        # The usual release, inline (as the acquire's): owned by this thread.
        base = self._tlb.get(Mutex >> 12) if type(Mutex) is int else None
        if base is not None and not Mutex & 7 and Mutex & 0xFFF <= 0xFF0 and \
                not self._writes_published:
            words = self._words
            word = (base + (Mutex & 0xFFF)) >> 3
            count = words[word]
            if not count & GM_LOCK_BIT and words[word + 1] == THREAD_STAND_IN:
                words[word + 1] = 0  # Owner
                words[word] = count | GM_LOCK_BIT
                self.guarded_region = getattr(self, "guarded_region", 0) - 1  # KeLeaveGuardedRegion
                return
        count = self._get32(Mutex + KGUARDED_MUTEX_COUNT)
        if count & GM_LOCK_BIT or self._get64(Mutex + KGUARDED_MUTEX_OWNER) != THREAD_STAND_IN:
            self.KeBugCheckEx(BugCheckCode.RESOURCE_NOT_OWNED, Mutex, THREAD_STAND_IN, 0, 4,
                              detail=f"KeReleaseGuardedMutex of {Mutex:#x}, which this thread does not own")
        self._put64(Mutex + KGUARDED_MUTEX_OWNER, 0)
        self._put32(Mutex + KGUARDED_MUTEX_COUNT, count | GM_LOCK_BIT)
        self.KeLeaveGuardedRegion()

    @routine("VOID KeEnterGuardedRegion(VOID)")
    def KeEnterGuardedRegion(self) -> None:
        self.guarded_region = getattr(self, "guarded_region", 0) + 1

    @routine("VOID KeLeaveGuardedRegion(VOID)")
    def KeLeaveGuardedRegion(self) -> None:
        self.guarded_region = getattr(self, "guarded_region", 0) - 1

    # --- stalls and interrupt time -----------------------------------------------------------

    @routine("VOID KeStallExecutionProcessor(ULONG MicroSeconds)", module="HAL.dll")
    def KeStallExecutionProcessor(self, MicroSeconds) -> None:
        """Busy-wait: the clock moves on MicroSeconds and timers that fall due expire; their
        DPCs run when the IRQL allows (at DISPATCH_LEVEL or above, when it drops)."""
        self.advance_clock((MicroSeconds & 0xFFFFFFFF) * MICROSECOND)

    @routine("ULONGLONG KeQueryInterruptTime(VOID)")
    def KeQueryInterruptTime(self) -> int:
        """100 ns units since boot (KUSER_SHARED_DATA.InterruptTime, which wdm.h's inline reads)."""
        return self.system_time - self.boot_time

    # --- system routine addresses ------------------------------------------------------------

    @routine("PVOID MmGetSystemRoutineAddress(PUNICODE_STRING SystemRoutineName)")
    def MmGetSystemRoutineAddress(self, SystemRoutineName) -> int:
        """The address of a routine or variable ntoskrnl.exe or HAL.dll exports, from the
        routine registry (NULL for what ntpool does not implement, as for what Windows 7
        does not export)."""
        name = self._unicode_string(SystemRoutineName)
        resolver = getattr(self, "system_routine_resolver", None)
        if resolver is not None:
            return resolver(name) or 0
        try:
            entry = lookup(name)
        except KeyError:
            try:
                entry = lookup_data(name)
            except KeyError:
                return 0
            return self._data_cell(entry)
        if entry.module not in ("ntoskrnl.exe", "HAL.dll"):
            return 0
        cells = self.__dict__.setdefault("_routine_code", {})
        address = cells.get(name)
        if address is None:
            function = entry.function
            address = cells[name] = self.code_address(lambda k, *args: function(k, *args))
        return address

    def _data_cell(self, entry) -> int:
        cells = self.__dict__.setdefault("_data_cells", {})
        cell = cells.get(entry.name)
        if cell is None:
            cell = cells[entry.name] = self.kernel_data.reserve(8, align=8)
            self._put64(cell, entry.value(self))
        return cell

    @routine("HANDLE PsGetCurrentProcessId(VOID)")
    def PsGetCurrentProcessId(self) -> int:
        return self.current_process.pid

    @routine("HANDLE PsGetCurrentThreadId(VOID)")
    def PsGetCurrentThreadId(self) -> int:
        """The current thread's Cid.UniqueThread (the one thread's is 8)."""
        return self._get64(self.current_thread + 0x3B8 + 8)

    @routine("PEPROCESS IoGetCurrentProcess(VOID)")
    def IoGetCurrentProcess(self) -> int:
        return self.current_process.address
