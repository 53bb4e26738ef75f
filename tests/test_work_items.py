"""Work items (ExQueueWorkItem, IoAllocateWorkItem and the rest of the IoXxxWorkItem family)
for Python and compiled drivers: when they run in ntpool's one thread, what they allocate,
and Windows' answers to their misuse; the compiled sample samples/wdm/deferred.sys."""

import pathlib
import struct

import pytest

import ntpool
from ntpool.errors import BugCheck
from ntpool.native import load_native_driver, unload_native_driver
from ntpool.routines.ke_dpc import (IO_WORKITEM_IO_OBJECT, IO_WORKITEM_SIZE, IOP_PROCESS_WORK_ITEM,
                                    TAG_IO_WORKITEM, WORK_QUEUE_ITEM_WORKER_ROUTINE)
from ntpool.routines.ke_sync import WaitForever
from ntpool.tags import display
from pooltags import tags_in_use

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "src" / "ntpool" / "samples" / "wdm"
WINDOWS = ("7", "11")


def machine(windows="7"):
    return ntpool.Kernel(nonpaged_pool_bytes=4 << 20, paged_pool_bytes=4 << 20, windows=windows)


def allocate(k, size, tag="Test"):
    address = k.ExAllocatePoolWithTag(0, size, tag)
    k.write(address, bytes(size))
    return address


def make_device(k, name="dev"):
    """A device object as IoCreateDevice makes one (an object the I/O manager counts)."""
    status, device = k.IoCreateDevice(k.create_driver_object(name).driver_object, 0, 0, 0x22, 0, 0)
    assert status == 0
    return device


def test_io_allocate_work_item_takes_an_iowi_block_of_nonpaged_pool():
    k = machine()
    before = tags_in_use(k)
    item = k.IoAllocateWorkItem(0)
    assert tags_in_use(k).get("IOWI", 0) == before.get("IOWI", 0) + 1
    assert display(TAG_IO_WORKITEM) == "IOWI"
    assert k.IoSizeofWorkItem() == IO_WORKITEM_SIZE == 0x50
    # WorkItem.WorkerRoutine is IopProcessWorkItem's stand-in, its Parameter the item itself.
    assert k._get64(item + WORK_QUEUE_ITEM_WORKER_ROUTINE) == IOP_PROCESS_WORK_ITEM
    assert k._get64(item + 0x18) == item and k._get64(item) == 0
    k.IoFreeWorkItem(item)
    assert tags_in_use(k) == before


@pytest.mark.parametrize("windows", WINDOWS)
def test_queue_a_work_item_and_wait_for_the_event_it_sets(windows):
    """The pattern drivers use: the wait gives up the processor, the worker runs."""
    k = machine(windows)
    event = allocate(k, 0x18)
    k.KeInitializeEvent(event, 0, 0)
    seen = []

    def worker(k, device, context):
        seen.append((device, context, k.current_irql))
        k.KeSetEvent(event, 0, 0)
    device = make_device(k)
    item = k.IoAllocateWorkItem(device)
    k.IoQueueWorkItem(item, k.code_address(worker), 1, 0x1234)
    assert seen == [] and k.work_items_pending() == 1
    assert k.KeWaitForSingleObject(event, 0, 0, 0, 0) == 0
    assert seen == [(device, 0x1234, 0)]
    k.IoFreeWorkItem(item)


def test_io_queue_work_item_references_its_device_until_the_routine_returns():
    k = machine()
    device = make_device(k)
    before = k._pointer_count(device)
    counts = []
    item = k.IoAllocateWorkItem(device)
    k.IoQueueWorkItem(item, k.code_address(lambda k, d, c: counts.append(k._pointer_count(d))), 0, 0)
    assert k._pointer_count(device) == before + 1
    assert k.run_work_items() == 1
    assert counts == [before + 1] and k._pointer_count(device) == before
    k.IoFreeWorkItem(item)


def test_io_queue_work_item_ex_passes_the_item_and_embedded_items_need_no_pool():
    k = machine()
    seen = []
    block = allocate(k, 0x10 + IO_WORKITEM_SIZE, "Ctxt")  # IoSizeofWorkItem inside the driver's
    item = block + 0x10
    k.IoInitializeWorkItem(0, item)
    assert k._get64(item + IO_WORKITEM_IO_OBJECT) == 0
    k.IoQueueWorkItemEx(item, k.code_address(lambda k, o, c, i: seen.append((o, c, i))), 0, 7)
    assert k.run_work_items() == 1
    assert seen == [(0, 7, item)]
    k.IoUninitializeWorkItem(item)
    k.ExFreePoolWithTag(block, "Ctxt")


def test_work_items_run_by_queue_priority_then_in_order_queued():
    k = machine()
    ran = []
    items = []
    for name, queue in (("delayed-1", 1), ("critical", 0), ("hyper", 2), ("delayed-2", 1)):
        item = allocate(k, 0x20)
        k.initialize_work_item(item, k.code_address(lambda k, p, name=name: ran.append(name)), 0)
        k.ExQueueWorkItem(item, queue)
        items.append(item)
    assert all(k._get64(item) for item in items)  # List.Flink: queued
    assert k.run_work_items() == 4
    assert ran == ["hyper", "critical", "delayed-1", "delayed-2"]
    assert not any(k._get64(item) for item in items)


def test_work_items_do_not_run_at_dispatch_level_and_a_sleep_runs_them():
    k = machine()
    ran = []
    item = allocate(k, 0x20)
    k.initialize_work_item(item, k.code_address(lambda k, p: ran.append(k.current_irql)), 0)
    k.ExQueueWorkItem(item, 1)
    old = k.KeRaiseIrql(2)
    assert k.run_work_items() == 0
    k.KeLowerIrql(old)
    interval = allocate(k, 8)
    k.write(interval, struct.pack("<q", -10))
    k.KeDelayExecutionThread(0, 0, interval)
    assert ran == [0]


def test_a_wait_at_apc_level_lets_the_worker_run_at_passive_level():
    k = machine()
    event, mutex = allocate(k, 0x18), allocate(k, 0x38)
    k.KeInitializeEvent(event, 1, 0)
    ran = []

    def worker(k, parameter):
        ran.append(k.current_irql)
        k.KeSetEvent(event, 0, 0)
    item = allocate(k, 0x20)
    k.initialize_work_item(item, k.code_address(worker), 0)
    k.ExQueueWorkItem(item, 0)
    k.KeRaiseIrql(1)
    assert k.KeWaitForSingleObject(event, 0, 0, 0, 0) == 0
    assert ran == [0] and k.current_irql == 1
    assert k.KeReadStateEvent(event) == 0  # a synchronization event: the wait took it
    with pytest.raises(WaitForever):
        k.KeWaitForSingleObject(event, 0, 0, 0, 0)  # no work item left to set it
    del mutex


class QueueingDriver:
    """Queues an executive work item in DriverEntry: it runs when DriverEntry returns."""

    def __init__(self, from_unload=False, io=False):
        self.ran, self.from_unload, self.io = [], from_unload, io

    def DriverEntry(self, k, path):
        self.routine = k.code_address(lambda k, *args: self.ran.append(k.current_irql),
                                      owner=k.current_driver)
        self.item = allocate(k, 0x20, "Item")
        if not self.from_unload:
            self._queue(k)
            assert self.ran == []

    def _queue(self, k):
        if self.io:
            self.io_item = k.IoAllocateWorkItem(0)
            k.IoQueueWorkItem(self.io_item, self.routine, 1, 0)
        else:
            k.initialize_work_item(self.item, self.routine, 0)
            k.ExQueueWorkItem(self.item, 1)

    def DriverUnload(self, k):
        if self.from_unload:
            self._queue(k)


def test_a_work_item_queued_in_driver_entry_runs_when_driver_entry_returns():
    k = machine()
    driver = QueueingDriver()
    k.load_driver(driver)
    assert driver.ran == [0]


def test_an_executive_work_item_queued_by_driver_unload_runs_after_the_image_is_gone_0xce():
    k = machine()
    driver = QueueingDriver(from_unload=True)
    k.load_driver(driver)
    with pytest.raises(BugCheck) as stop:
        k.unload_driver(driver)
    assert stop.value.code == 0xCE
    assert stop.value.parameters == (driver.routine, 8, driver.routine, 0)
    assert driver.ran == []


def test_an_io_work_item_queued_by_driver_unload_holds_the_image_until_it_has_run():
    k = machine()
    driver = QueueingDriver(from_unload=True, io=True)
    k.load_driver(driver)
    k.unload_driver(driver)
    assert driver.ran == [0]


def test_work_item_misuse_is_worker_invalid():
    k = machine()
    item = allocate(k, 0x20)
    k.initialize_work_item(item, 0, 0)
    with pytest.raises(BugCheck) as stop:
        k.ExQueueWorkItem(item, 1)  # no WorkerRoutine (WRK: at or below MmUserProbeAddress)
    assert stop.value.code == 0xE4 and stop.value.parameters == (1, item, 0, 0)

    k = machine()
    item = allocate(k, 0x20)
    k.initialize_work_item(item, k.code_address(lambda k, p: None), 0)
    k.ExQueueWorkItem(item, 1)
    with pytest.raises(BugCheck) as stop:
        k.ExQueueWorkItem(item, 1)  # queued twice
    assert stop.value.code == 0xE4 and stop.value.parameters[:2] == (0, item)

    k = machine()
    item = k.IoAllocateWorkItem(0)
    k.IoQueueWorkItem(item, k.code_address(lambda k, d, c: None), 1, 0)
    with pytest.raises(BugCheck) as stop:
        k.IoFreeWorkItem(item)  # still queued
    assert stop.value.code == 0xE4
    assert stop.value.parameters == (0, item, item, item + IO_WORKITEM_SIZE)


def test_queueing_a_work_item_above_dispatch_level_is_0xa():
    k = machine()
    item = allocate(k, 0x20)
    k.initialize_work_item(item, k.code_address(lambda k, p: None), 0)
    k.KeRaiseIrql(3)
    with pytest.raises(BugCheck) as stop:
        k.ExQueueWorkItem(item, 1)
    assert stop.value.code == 0xA and stop.value.parameters[1] == 3


# --- the compiled sample -------------------------------------------------------------------------

@pytest.mark.parametrize("windows", WINDOWS)
def test_the_deferred_sample_runs_its_work_item_dpc_and_lock_in_order_and_frees_everything(windows):
    k = machine(windows)
    before = tags_in_use(k)
    driver = load_native_driver(k, SAMPLES / "deferred.sys")
    assert driver.entry_status == 0
    lines = [line.removeprefix("deferred: ").rstrip("\n") for line in k.debug_output]
    assert lines == [
        "work item queued, waiting",
        "work item runs at IRQL 0 for device ours",  # while DriverEntry waits
        "wait returned 00000000 after 1 step(s)",
        "DPC queued: 1, at IRQL 2",  # under the in-stack queued spin lock: the DPC waits
        "DPC runs at IRQL 2 with 0000000000000011 0000000000000022",  # at the release
        "lock released at IRQL 0 after 2 step(s), record listed",
    ]
    kinds = [kind for kind, _ in k.deferred_log]
    assert kinds == ["work item", "dpc"]
    assert all(driver.image_base <= address < driver.image_base + driver.image_size
               for _, address in k.deferred_log)
    # Its context ("Defc") and the IO_WORKITEM ("IOWI") came and went.
    rows = {row.Tag: row for row in k.pool_tags()}
    assert rows["IOWI"].NonPagedAllocs == rows["IOWI"].NonPagedFrees == 1
    assert rows["Defc"].NonPagedAllocs == rows["Defc"].NonPagedFrees == 1
    unload_native_driver(k, driver)
    assert tags_in_use(k) == before


def test_the_deferred_sample_leaving_an_executive_work_item_at_unload_is_0xce():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "deferred.sys")
    driver.call("LeaveWorkItem")
    with pytest.raises(BugCheck) as stop:
        unload_native_driver(k, driver)
    late = stop.value.parameters[0]
    assert stop.value.code == 0xCE and stop.value.parameters == (late, 8, late, 0)
    assert driver.image_base <= late < driver.image_base + driver.image_size
    assert stop.value.driver_name.lower() == "deferred.sys"


# --- with Driver Verifier on, a free may not take an active timer, DPC or work item with it -------

def verified_machine(windows="7"):
    k = machine(windows)
    k.verifier.enable("other.sys", pool_tracking=True)  # Verifier on: ExFreePool checks every free
    return k


@pytest.mark.parametrize("windows", WINDOWS)
def test_freeing_a_block_with_an_armed_timer_is_0xc7_with_verifier_on(windows):
    k = verified_machine(windows)
    block = allocate(k, 0x80, "Ctxt")
    k.KeInitializeTimer(block)
    k.KeSetTimer(block, (-10_000) & ((1 << 64) - 1), 0)
    end = block + k.pool.allocation_size(block)
    with pytest.raises(BugCheck) as stop:
        k.ExFreePoolWithTag(block, "Ctxt")
    assert stop.value.code == 0xC7 and stop.value.parameters == (0, block, block, end)


def test_freeing_a_block_with_a_queued_dpc_is_0xc7_and_with_a_queued_work_item_0xe4():
    k = verified_machine()
    block = allocate(k, 0x80, "Ctxt")
    k.KeInitializeDpc(block, k.code_address(lambda k, *args: None), 0)
    k.KeRaiseIrql(2)
    k.KeInsertQueueDpc(block, 0, 0)
    with pytest.raises(BugCheck) as stop:
        k.ExFreePoolWithTag(block, "Ctxt")
    assert stop.value.code == 0xC7 and stop.value.parameters[:3] == (1, block, block)

    k = verified_machine()
    block = allocate(k, 0x80, "Ctxt")
    k.initialize_work_item(block + 0x20, k.code_address(lambda k, p: None), 0)
    k.ExQueueWorkItem(block + 0x20, 1)
    with pytest.raises(BugCheck) as stop:
        k.ExFreePoolWithTag(block, "Ctxt")
    assert stop.value.code == 0xE4 and stop.value.parameters[:3] == (0, block + 0x20, block)


def test_without_verifier_such_a_free_goes_unnoticed_and_after_the_work_item_ran_it_is_fine():
    k = machine()
    block = allocate(k, 0x80, "Ctxt")
    k.KeInitializeTimer(block)
    k.KeSetTimer(block, (-10_000) & ((1 << 64) - 1), 0)
    k.ExFreePoolWithTag(block, "Ctxt")  # Windows 7 retail makes no such check
    k = verified_machine()
    block = allocate(k, 0x80, "Ctxt")
    k.initialize_work_item(block, k.code_address(lambda k, p: None), 0)
    k.ExQueueWorkItem(block, 1)
    assert k.run_work_items() == 1
    k.ExFreePoolWithTag(block, "Ctxt")


def test_a_dpc_queued_between_wdm_h_inline_raise_and_lower_runs_at_the_mov_to_cr8():
    k = machine()
    driver = load_native_driver(k, SAMPLES / "deferred.sys")
    assert driver.call("QueueAtDispatch") == 0x0000_0001  # none before the lowering, one after
    assert driver.call("QueueAtDispatch") == 0x0001_0002
    assert k.current_irql == 0
    unload_native_driver(k, driver)
