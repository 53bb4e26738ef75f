"""DPCs, in-stack queued spin locks, interlocked lists, semaphores, guarded mutexes and the
other Ke/Ex synchronization routines WDM drivers import (routines/ke_dpc.py, ke_irql.py,
ke_sync.py), from Python drivers, on Windows 7 and 11."""

import struct

import pytest

import ntpool
from ntpool.errors import BugCheck, MachineHung, NtStatusError
from ntpool.routines.ke_dpc import KDPC_DPC_DATA, KDPC_IMPORTANCE, KDPC_NUMBER
from ntpool.routines.ke_sync import STATUS_TIMEOUT, WaitForever

WINDOWS = ("7", "11")


def machine(windows="7", processors=1):
    return ntpool.Kernel(nonpaged_pool_bytes=1 << 20, paged_pool_bytes=1 << 20, windows=windows,
                         processors=processors)


def allocate(k, size, tag="Test"):
    address = k.ExAllocatePoolWithTag(0, size, tag)
    k.write(address, bytes(size))
    return address


def dpc_recording(k, ran, context=0):
    """A KDPC whose routine records (context, arguments, IRQL, processor)."""
    dpc = allocate(k, 0x40, "Dpc ")
    routine = k.code_address(lambda k, d, c, a1, a2: ran.append((c, a1, a2, k.current_irql,
                                                                 k.current_processor)))
    k.KeInitializeDpc(dpc, routine, context)
    return dpc


# --- DPCs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_a_dpc_queued_below_dispatch_level_runs_at_once_at_dispatch_level(windows):
    k = machine(windows)
    ran = []
    dpc = dpc_recording(k, ran, 7)
    assert k.KeInsertQueueDpc(dpc, 1, 2) == 1
    assert ran == [(7, 1, 2, 2, 0)]
    assert k.current_irql == 0 and k._get64(dpc + KDPC_DPC_DATA) == 0


def test_a_dpc_queued_at_dispatch_level_waits_for_the_irql_to_drop():
    k = machine()
    ran = []
    dpc = dpc_recording(k, ran)
    old = k.KeRaiseIrql(2)
    assert k.KeInsertQueueDpc(dpc, 1, 2) == 1
    assert k._get64(dpc + KDPC_DPC_DATA) != 0  # queued: DpcData names the processor's queue
    assert k.KeInsertQueueDpc(dpc, 3, 4) == 0  # queued already: not queued again
    assert ran == []
    k.KeLowerIrql(old)
    assert ran == [(0, 1, 2, 2, 0)]  # the first insert's arguments


def test_a_spin_lock_release_runs_the_dpcs_queued_under_it_in_importance_order():
    k = machine()
    ran = []
    low, high = dpc_recording(k, ran, 1), dpc_recording(k, ran, 2)
    k.KeSetImportanceDpc(high, 2)
    assert k.read(high + KDPC_IMPORTANCE, 1) == b"\x02"
    lock = allocate(k, 8)
    old = k.KeAcquireSpinLock(lock)
    k.KeInsertQueueDpc(low, 0, 0)
    k.KeInsertQueueDpc(high, 0, 0)  # HighImportance: the head of the queue
    assert ran == []
    k.KeReleaseSpinLock(lock, old)
    assert [entry[0] for entry in ran] == [2, 1]
    assert [kind for kind, _ in k.deferred_log] == ["dpc", "dpc"]


def test_a_removed_dpc_never_runs():
    k = machine()
    ran = []
    dpc = dpc_recording(k, ran)
    old = k.KeRaiseIrql(2)
    k.KeInsertQueueDpc(dpc, 0, 0)
    assert k.KeRemoveQueueDpc(dpc) == 1
    assert k.KeRemoveQueueDpc(dpc) == 0
    k.KeLowerIrql(old)
    assert ran == []


def test_a_dpc_may_queue_itself_again_from_its_routine():
    k = machine()
    ran = []
    dpc = allocate(k, 0x40)

    def routine(k, d, context, a1, a2):
        ran.append(a1)
        if a1 < 3:
            assert k.KeInsertQueueDpc(d, a1 + 1, 0) == 1  # DpcData was cleared before the call
    k.KeInitializeDpc(dpc, k.code_address(routine), 0)
    k.KeInsertQueueDpc(dpc, 1, 0)
    assert ran == [1, 2, 3]


def test_a_targeted_dpc_runs_on_its_processor_when_that_processor_allows():
    k = machine(processors=2)
    ran = []
    dpc = dpc_recording(k, ran)
    k.KeSetTargetProcessorDpc(dpc, 1)
    assert k._get16(dpc + KDPC_NUMBER) == 64 + 1  # MAXIMUM_PROCESSORS + Number
    k.set_current_processor(1)
    old = k.KeRaiseIrql(2)
    k.set_current_processor(0)
    k.KeInsertQueueDpc(dpc, 0, 0)  # processor 1 is at DISPATCH_LEVEL: it waits
    assert ran == []
    k.KeFlushQueuedDpcs()  # waits for every processor's queue: it runs there now
    assert ran == [(0, 0, 0, 2, 1)]
    assert k.current_processor == 0 and k.current_irql == 0
    k.set_current_processor(1)
    k.KeLowerIrql(old)


def test_a_dpc_targeted_past_the_last_processor_is_0xc7():
    k = machine(processors=2)
    dpc = dpc_recording(k, [])
    k.KeSetTargetProcessorDpc(dpc, 5)
    with pytest.raises(BugCheck) as stop:
        k.KeInsertQueueDpc(dpc, 0, 0)
    assert stop.value.code == 0xC7 and stop.value.parameters == (3, dpc, 5, 2)


def test_flushing_dpcs_above_passive_level_is_0xa():
    k = machine()
    k.KeRaiseIrql(2)
    with pytest.raises(BugCheck) as stop:
        k.KeFlushQueuedDpcs()
    assert stop.value.code == 0xA and stop.value.parameters[1] == 2


class TimerDriver:
    """Arms a timer with a DPC and unloads without cancelling it."""

    def __init__(self):
        self.ran = []

    def DriverEntry(self, k, path):
        self.timer, self.dpc = allocate(k, 0x40, "Tmr "), allocate(k, 0x40, "Dpc ")
        k.KeInitializeTimer(self.timer)
        self.routine = k.code_address(lambda k, *args: self.ran.append(args), owner=k.current_driver)
        k.KeInitializeDpc(self.dpc, self.routine, 0)
        k.KeSetTimer(self.timer, (-10_000_000) & ((1 << 64) - 1), self.dpc)

    def DriverUnload(self, k):
        pass


def test_a_timer_left_armed_at_unload_is_0xd4_when_its_dpc_would_run():
    k = machine()
    driver = TimerDriver()
    k.load_driver(driver)
    k.unload_driver(driver)
    with pytest.raises(BugCheck) as stop:
        k.advance_time(2)
    assert stop.value.code == 0xD4
    assert stop.value.parameters == (driver.routine, 2, 8, driver.routine)
    assert driver.ran == []


def test_a_dpc_routine_that_leaves_a_critical_region_entered_is_0xc7():
    k = machine()
    dpc = allocate(k, 0x40)
    routine = k.code_address(lambda k, *args: k.KeEnterCriticalRegion())
    k.KeInitializeDpc(dpc, routine, 0)
    with pytest.raises(BugCheck) as stop:
        k.KeInsertQueueDpc(dpc, 0, 0)
    assert stop.value.code == 0xC7 and stop.value.parameters == (4, routine, 0, (1 << 64) - 1)

    k = machine()  # a timer's DPC: 5
    dpc, timer = allocate(k, 0x40), allocate(k, 0x40)
    routine = k.code_address(lambda k, *args: k.KeEnterCriticalRegion())
    k.KeInitializeDpc(dpc, routine, 0)
    k.KeInitializeTimer(timer)
    k.KeSetTimer(timer, (-10) & ((1 << 64) - 1), dpc)
    with pytest.raises(BugCheck) as stop:
        k.advance_clock(10)
    assert stop.value.code == 0xC7 and stop.value.parameters == (5, routine, 0, (1 << 64) - 1)


def test_a_dpc_routine_that_enters_and_leaves_a_critical_region_is_fine():
    k = machine()
    dpc = allocate(k, 0x40)
    k.KeInitializeDpc(dpc, k.code_address(lambda k, *args: (k.KeEnterCriticalRegion(),
                                                            k.KeLeaveCriticalRegion())), 0)
    assert k.KeInsertQueueDpc(dpc, 0, 0) == 1


# --- in-stack queued spin locks ------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_an_in_stack_queued_spin_lock_holds_its_handle_and_restores_the_irql(windows):
    k = machine(windows)
    lock, handle = allocate(k, 8), allocate(k, 0x18)
    k.KeAcquireInStackQueuedSpinLock(lock, handle)
    assert k.current_irql == 2
    assert k._get64(lock) == handle  # the tail of the queue: the owner's KLOCK_QUEUE_HANDLE
    assert struct.unpack("<QQB", k.read(handle, 17)) == (0, lock, 0)  # Next, Lock, OldIrql
    k.KeReleaseInStackQueuedSpinLock(handle)
    assert k.current_irql == 0 and k._get64(lock) == 0


def test_the_dpc_level_forms_leave_the_irql_alone():
    k = machine()
    lock, handle = allocate(k, 8), allocate(k, 0x18)
    old = k.KeRaiseIrql(2)
    k.KeAcquireInStackQueuedSpinLockAtDpcLevel(lock, handle)
    assert k._get64(lock) == handle and k.current_irql == 2
    k.KeReleaseInStackQueuedSpinLockFromDpcLevel(handle)
    assert k._get64(lock) == 0 and k.current_irql == 2
    k.KeLowerIrql(old)


def test_queued_spin_lock_misuse_gets_the_spin_lock_bug_checks():
    k = machine()
    lock, handle, other = allocate(k, 8), allocate(k, 0x18), allocate(k, 0x18)
    with pytest.raises(BugCheck) as stop:
        k.KeAcquireInStackQueuedSpinLockAtDpcLevel(lock, handle)  # at PASSIVE_LEVEL
    assert stop.value.code == 0x9 and stop.value.parameters == (lock, 0, 0, 0)

    k = machine()
    lock, handle, other = allocate(k, 8), allocate(k, 0x18), allocate(k, 0x18)
    k.KeAcquireInStackQueuedSpinLock(lock, handle)
    with pytest.raises(BugCheck) as stop:
        k.KeAcquireInStackQueuedSpinLockAtDpcLevel(lock, other)  # held by this processor
    assert stop.value.code == 0xF and stop.value.parameters[0] == lock

    k = machine()
    lock, handle = allocate(k, 8), allocate(k, 0x18)
    k.KeAcquireInStackQueuedSpinLock(lock, handle)
    k.KeReleaseInStackQueuedSpinLock(handle)
    with pytest.raises(BugCheck) as stop:
        k.KeReleaseInStackQueuedSpinLock(handle)  # twice
    assert stop.value.code == 0x10 and stop.value.parameters[0] == lock


def test_a_queued_spin_lock_held_on_another_processor_would_spin_forever():
    k = machine(processors=2)
    lock, handle, other = allocate(k, 8), allocate(k, 0x18), allocate(k, 0x18)
    k.KeAcquireInStackQueuedSpinLock(lock, handle)
    k.set_current_processor(1)
    with pytest.raises(MachineHung, match="held by processor 0"):
        k.KeAcquireInStackQueuedSpinLock(lock, other)


# --- interlocked lists ---------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_interlocked_doubly_linked_lists(windows):
    k = machine(windows)
    lock, head = allocate(k, 8), allocate(k, 0x40)
    k.write(head, struct.pack("<QQ", head, head))
    a, b = head + 0x10, head + 0x20
    assert k.ExInterlockedInsertTailList(head, a, lock) == 0  # the list was empty
    assert k.ExInterlockedInsertHeadList(head, b, lock) == a  # the entry that was first
    assert struct.unpack("<QQ", k.read(head, 16)) == (b, a)
    assert k.ExInterlockedRemoveHeadList(head, lock) == b
    assert k.ExInterlockedRemoveHeadList(head, lock) == a
    assert k.ExInterlockedRemoveHeadList(head, lock) == 0
    assert struct.unpack("<QQ", k.read(head, 16)) == (head, head)
    assert k._get64(lock) == 0 and k.current_irql == 0


def test_interlocked_singly_linked_lists():
    k = machine()
    lock, head = allocate(k, 8), allocate(k, 0x30)
    a, b = head + 0x10, head + 0x20
    assert k.ExInterlockedPushEntryList(head, a, lock) == 0
    assert k.ExInterlockedPushEntryList(head, b, lock) == a
    assert k.ExInterlockedPopEntryList(head, lock) == b
    assert k.ExInterlockedPopEntryList(head, lock) == a
    assert k.ExInterlockedPopEntryList(head, lock) == 0


def test_a_corrupt_list_entry_is_0x139_from_windows_10_and_followed_on_windows_7():
    for windows, stops in (("7", False), ("11", True)):
        k = machine(windows)
        lock, head = allocate(k, 8), allocate(k, 0x40)
        k.write(head, struct.pack("<QQ", head, head))
        k.ExInterlockedInsertTailList(head, head + 0x10, lock)
        k.write(head + 0x18, struct.pack("<Q", head + 0x30))  # the entry's Blink overwritten
        if stops:
            with pytest.raises(BugCheck) as stop:
                k.ExInterlockedRemoveHeadList(head, lock)
            assert stop.value.code == 0x139 and stop.value.parameters[0] == 3
        else:
            assert k.ExInterlockedRemoveHeadList(head, lock) == head + 0x10


def test_an_interlocked_list_whose_lock_is_held_would_spin_forever():
    k = machine()
    lock, head = allocate(k, 8), allocate(k, 0x20)
    k.write(head, struct.pack("<QQ", head, head))
    old = k.KeAcquireSpinLock(lock)
    with pytest.raises(BugCheck) as stop:
        k.ExInterlockedInsertTailList(head, head + 0x10, lock)
    assert stop.value.code == 0xF  # this processor holds it already
    del old


# --- semaphores, guarded mutexes, waits ---------------------------------------------------------

def test_a_semaphore_counts_releases_and_waits():
    k = machine()
    semaphore = allocate(k, 0x20)
    k.KeInitializeSemaphore(semaphore, 0, 2)
    assert k.read(semaphore, 4) == bytes([5, 0, 8, 0])  # SemaphoreObject, 0x20 bytes
    assert k.KeReadStateSemaphore(semaphore) == 0
    assert k.KeReleaseSemaphore(semaphore, 0, 2, 0) == 0
    assert k.KeReadStateSemaphore(semaphore) == 2
    assert k.KeWaitForSingleObject(semaphore, 0, 0, 0, 0) == 0
    assert k.KeReadStateSemaphore(semaphore) == 1
    with pytest.raises(NtStatusError) as raised:
        k.KeReleaseSemaphore(semaphore, 0, 2, 0)  # 3 is past the limit
    assert raised.value.status == 0xC0000047  # STATUS_SEMAPHORE_LIMIT_EXCEEDED
    assert k.KeReadStateSemaphore(semaphore) == 1
    assert k.KeWaitForSingleObject(semaphore, 0, 0, 0, 0) == 0
    with pytest.raises(WaitForever):
        k.KeWaitForSingleObject(semaphore, 0, 0, 0, 0)


def test_a_guarded_mutex_is_owned_once_and_released_by_its_owner():
    k = machine()
    mutex = allocate(k, 0x38)
    k.KeInitializeGuardedMutex(mutex)
    assert k._get32(mutex) == 1  # GM_LOCK_BIT: free
    k.KeAcquireGuardedMutex(mutex)
    assert k._get32(mutex) == 0 and k._get64(mutex + 8) != 0 and k.current_irql == 0
    assert k.KeTryToAcquireGuardedMutex(mutex) == 0
    with pytest.raises(WaitForever):
        k.KeAcquireGuardedMutex(mutex)  # not recursive
    k.KeReleaseGuardedMutex(mutex)
    assert k._get32(mutex) == 1 and k._get64(mutex + 8) == 0
    assert k.KeTryToAcquireGuardedMutex(mutex) == 1
    k.KeReleaseGuardedMutex(mutex)
    with pytest.raises(BugCheck) as stop:
        k.KeReleaseGuardedMutex(mutex)
    assert stop.value.code == 0xE3 and stop.value.parameters[0] == mutex


def test_a_guarded_mutex_above_apc_level_is_0xa():
    k = machine()
    mutex = allocate(k, 0x38)
    k.KeInitializeGuardedMutex(mutex)
    k.KeRaiseIrql(2)
    with pytest.raises(BugCheck) as stop:
        k.KeAcquireGuardedMutex(mutex)
    assert stop.value.code == 0xA


def events(k, *states):
    objects = []
    for state in states:
        event = allocate(k, 0x18)
        k.KeInitializeEvent(event, 1, state)  # synchronization events
        objects.append(event)
    array = allocate(k, 8 * len(objects))
    k.write(array, struct.pack(f"<{len(objects)}Q", *objects))
    return objects, array


def test_waiting_for_any_of_several_objects_takes_the_first_signalled():
    k = machine()
    (a, b, c), array = events(k, 0, 1, 1)
    assert k.KeWaitForMultipleObjects(3, array, 1, 0, 0, 0, 0, 0) == 1  # STATUS_WAIT_1
    assert [k.KeReadStateEvent(e) for e in (a, b, c)] == [0, 0, 1]


def test_waiting_for_all_takes_every_object_only_when_all_are_signalled():
    k = machine()
    (a, b), array = events(k, 1, 0)
    timeout = allocate(k, 8)
    k.write(timeout, struct.pack("<q", -10_000))
    before = k.system_time
    assert k.KeWaitForMultipleObjects(2, array, 0, 0, 0, 0, timeout, 0) == STATUS_TIMEOUT
    assert k.system_time == before + 10_000 and k.KeReadStateEvent(a) == 1  # nothing taken
    k.KeSetEvent(b, 0, 0)
    assert k.KeWaitForMultipleObjects(2, array, 0, 0, 0, 0, 0, 0) == 0
    assert (k.KeReadStateEvent(a), k.KeReadStateEvent(b)) == (0, 0)
    with pytest.raises(WaitForever):
        k.KeWaitForMultipleObjects(2, array, 1, 0, 0, 0, 0, 0)


def test_too_many_wait_objects_is_0xc():
    k = machine()
    _, array = events(k, 1, 1, 1, 1)
    with pytest.raises(BugCheck) as stop:
        k.KeWaitForMultipleObjects(4, array, 1, 0, 0, 0, 0, 0)  # no WaitBlockArray past 3
    assert stop.value.code == 0xC
    k = machine()
    _, array = events(k, 1, 1, 1, 1)
    blocks = allocate(k, 4 * 0x30)
    assert k.KeWaitForMultipleObjects(4, array, 0, 0, 0, 0, 0, blocks) == 0
    with pytest.raises(BugCheck) as stop:
        k.KeWaitForMultipleObjects(65, array, 0, 0, 0, 0, 0, blocks)
    assert stop.value.code == 0xC


# --- stalls and interrupt time -------------------------------------------------------------------

def test_a_stall_moves_the_interrupt_time_and_a_timer_dpc_waits_for_the_irql_to_drop():
    k = machine()
    assert k.KeQueryInterruptTime() == 0
    ran = []
    timer, dpc = allocate(k, 0x40), dpc_recording(k, ran)
    k.KeInitializeTimer(timer)
    k.KeSetTimer(timer, (-300) & ((1 << 64) - 1), dpc)  # 30 us on
    old = k.KeRaiseIrql(2)
    k.KeStallExecutionProcessor(50)
    assert k.KeQueryInterruptTime() == 500 and ran == []  # the timer's DPC waits for the IRQL
    assert k.KeReadStateTimer(timer) == 1  # the timer itself expired
    k.KeLowerIrql(old)
    assert len(ran) == 1 and ran[0][1:3] == ((k.boot_time + 300) & 0xFFFFFFFF, (k.boot_time + 300) >> 32)
    # KUSER_SHARED_DATA.InterruptTime, which wdm.h's inline KeQueryInterruptTime reads.
    assert k.KeQueryInterruptTime() == k.system_time - k.boot_time
    assert struct.unpack("<Q", k.read(0xFFFFF78000000008, 8))[0] & 0xFFFFFFFF == 500
