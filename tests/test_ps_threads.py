"""System threads (PsCreateSystemThread, PsTerminateSystemThread) in ntpool's one flow of
control, from Python drivers and the compiled sample samples/wdm/threads.sys: the thread
object in pool, when the start routine runs, the waits drivers make on it before they
unload, thread notify routines, and the thread a driver leaves behind at unload (0xCE)."""

import pathlib

import pytest

import ntpool
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver, unload_native_driver
from ntpool.native.machine import NativeError
from ntpool.routines.ke_sync import WaitForever
from pooltags import tags_in_use

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "src" / "ntpool" / "samples" / "wdm"
STATUS_INVALID_PARAMETER = 0xC000000D


def machine(windows="7"):
    return ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20, windows=windows)


def event(k):
    address = k.ExAllocatePoolWithTag(0, 0x18, "Evnt")
    k.KeInitializeEvent(address, 0, 0)
    return address


def test_a_thread_runs_when_its_creator_waits_and_its_object_goes_with_the_last_reference():
    k = machine()
    before = tags_in_use(k)
    done = event(k)
    ran = []

    def start(k, context):
        ran.append((context, k.current_irql, k.PsGetCurrentThread()))
        k.KeSetEvent(done, 0, 0)

    status, handle = k.PsCreateSystemThread(0x1FFFFF, 0, 0, 0, k.code_address(start), 0x77)
    assert status == 0 and ran == []
    assert tags_in_use(k)["Thre"] == before.get("Thre", 0) + 1
    thread = k.thread_of_handle(handle)
    assert k.PsIsSystemThread(thread) == 1
    assert k.KeWaitForSingleObject(done, 0, 0, 0, 0) == 0  # the thread runs during the wait
    assert ran == [(0x77, 0, thread)] and k.PsGetCurrentThread() != thread
    # What drivers do before they unload: reference, close, wait, dereference.
    status, referenced = k.ObReferenceObjectByHandle(handle, 0x100000, k.object_types["Thread"], 0, 0)
    assert status == 0 and referenced == thread
    assert k.ZwClose(handle) == 0
    assert k.KeWaitForSingleObject(thread, 0, 0, 0, 0) == 0  # ended: signalled
    assert k.system_threads[0].state == "ended" and k.system_threads[0].exit_status == 0
    k.ObfDereferenceObject(thread)
    assert tags_in_use(k).get("Thre", 0) == before.get("Thre", 0)


def test_waiting_on_the_thread_object_runs_it_and_terminate_ends_it_with_its_status():
    k = machine()
    ran = []

    def start(k, context):
        ran.append("start")
        k.PsTerminateSystemThread(0xC0000001)
        ran.append("after terminate")  # never reached

    _, handle = k.PsCreateSystemThread(0, 0, 0, 0, k.code_address(start), 0)
    thread = k.thread_of_handle(handle)
    assert k.KeWaitForSingleObject(thread, 0, 0, 0, 0) == 0
    assert ran == ["start"] and k.system_threads[0].exit_status == 0xC0000001
    assert k.PsTerminateSystemThread(0) == STATUS_INVALID_PARAMETER  # not a system thread of a driver
    k.ZwClose(handle)


def test_threads_run_when_the_top_level_call_returns_and_are_told_to_thread_notify_routines():
    k = machine()
    seen = []
    assert k.PsSetCreateThreadNotifyRoutine(k.code_address(lambda k, *a: seen.append(a))) == 0

    class Starter:
        def DriverEntry(self, k, path):
            start = k.code_address(lambda k, c: seen.append(("runs", c)), owner=k.current_driver)
            status, self.handle = k.PsCreateSystemThread(0, 0, 0, 0, start, 5)
            assert seen[-1][2] == 1  # told at creation, before it runs

    starter = Starter()
    k.load_driver(starter)
    tid = k.system_threads[0].thread_id
    assert seen == [(4, tid, 1), ("runs", 5), (4, tid, 0)]


def test_a_thread_that_waits_forever_is_wait_forever():
    k = machine()
    never = event(k)
    _, handle = k.PsCreateSystemThread(0, 0, 0, 0, k.code_address(
        lambda k, c: k.KeWaitForSingleObject(never, 0, 0, 0, 0)), 0)
    with pytest.raises(WaitForever):
        k.KeWaitForSingleObject(k.thread_of_handle(handle), 0, 0, 0, 0)


def test_a_thread_its_driver_leaves_unstarted_at_unload_is_0xce():
    k = machine()

    class Leaver:
        def DriverEntry(self, k, path):
            self.start = k.code_address(lambda k, c: None, owner=k.current_driver)

        def DriverUnload(self, k):
            status, handle = k.PsCreateSystemThread(0, 0, 0, 0, self.start, 0)
            k.ZwClose(handle)

    leaver = Leaver()
    k.load_driver(leaver)
    with pytest.raises(BugCheck) as stop:
        k.unload_driver(leaver)
    assert stop.value.code == 0xCE and stop.value.parameters == (leaver.start, 8, leaver.start, 0)


def test_creating_a_thread_above_passive_level_is_0xa_and_a_foreign_process_handle_is_refused():
    k = machine()
    assert k.PsCreateSystemThread(0, 0, 0x1234, 0, k.code_address(lambda k, c: None), 0) == (0xC0000008, 0)
    k.KeRaiseIrql(1)
    with pytest.raises(BugCheck) as stop:
        k.PsCreateSystemThread(0, 0, 0, 0, k.code_address(lambda k, c: None), 0)
    assert stop.value.code == 0xA


# --- the compiled sample -------------------------------------------------------------------------

@pytest.mark.parametrize("windows", ("7", "11"))
def test_the_threads_sample_runs_its_workers_while_it_waits_and_waits_for_them_at_unload(windows):
    k = machine(windows)
    before = tags_in_use(k)
    driver = load_native_driver(k, SAMPLES / "threads.sys")
    first, second = k.system_threads
    unload_native_driver(k, driver)
    lines = [line.removeprefix("threads: ").rstrip("\n") for line in k.debug_output]
    assert lines == [
        f"created thread {first.thread_id} of process 4",
        f"created thread {second.thread_id} of process 4",
        "waiting",
        "worker 0 runs at IRQL 0, a system thread: 1, not the creator: 1",
        "worker 0 returns",
        "worker 1 runs at IRQL 0, a system thread: 1, not the creator: 1",  # then terminates
        "wait returned 00000000",
        "reference 0: 00000000",
        "thread 0 waited: 00000000",
        "reference 1: 00000000",
        "thread 1 waited: 00000000",
    ]
    assert [t.state for t in k.system_threads] == ["ended", "ended"]
    assert tags_in_use(k).get("Thre", 0) == before.get("Thre", 0)


def test_the_threads_sample_leaving_a_thread_at_unload_is_0xce_and_terminate_outside_is_refused():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "threads.sys")
    assert driver.call("TerminateCaller") == STATUS_INVALID_PARAMETER
    driver.call("LeaveThreadRunning")
    with pytest.raises(BugCheck) as stop:
        unload_native_driver(k, driver)
    start = stop.value.parameters[0]
    assert stop.value.code == 0xCE and stop.value.parameters == (start, 8, start, 0)
    assert driver.image_base <= start < driver.image_base + driver.image_size
    assert NativeError
